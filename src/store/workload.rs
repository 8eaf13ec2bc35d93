//! Workload identity in the replicated state: the keys that sign tasks' SVIDs and the record
//! of each X.509-SVID issued.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::secret::SecretString;

/// SVID lifetime when `swarm update --svid-ttl` was never set: one hour.
pub const DEFAULT_SVID_TTL_SECS: u64 = 3600;
/// The shortest SVID lifetime accepted (renewal is at half of it).
pub const MIN_SVID_TTL_SECS: u64 = 10;
/// The longest SVID lifetime accepted: a day.
pub const MAX_SVID_TTL_SECS: u64 = 24 * 3600;
/// JWT-SVID lifetime: five minutes.
pub const JWT_SVID_TTL_SECS: u64 = 300;
/// The most unexpired X.509-SVIDs the swarm keeps records of. A record is kept until its SVID
/// expires (it is kept to be revoked, and an expired SVID needs no revocation) and never
/// dropped before: a record dropped is a revocation lost. So the bound is kept where SVIDs
/// are issued: past it the leader refuses new ones (`manager::workload::room_for_svid`).
pub const MAX_SVID_RECORDS: usize = 200_000;
/// The most unexpired X.509-SVIDs one task may hold: its agent renews at half life, so it
/// holds two at most while it runs; the rest is room for retries.
pub const MAX_SVIDS_PER_TASK: usize = 8;

/// The keys of workload identity, made at `swarm init` (or by the leader on first need in a
/// swarm created before). Lives only inside the sealed store.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkloadKeys {
    /// The workload CA certificate, PEM (the X.509 bundle every task trusts).
    pub ca_cert_pem: String,
    /// The workload CA key, PKCS#8 PEM.
    pub ca_key_pem: SecretString,
    /// The JWT-SVID signing key, PKCS#8 PEM.
    pub jwt_key_pem: SecretString,
}

impl std::fmt::Debug for WorkloadKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadKeys")
            .field("ca_key_pem", &"..")
            .field("jwt_key_pem", &"..")
            .finish()
    }
}

/// One X.509-SVID issued: to which task on which node, until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SvidRecord {
    /// The task it was issued for.
    pub task_id: String,
    /// The node that asked.
    pub node_id: String,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

/// The X.509-SVIDs issued and not yet expired, by serial (lower-case hex): what a CRL can
/// revoke. Which of them are revoked is the managers' rule
/// (`manager::workload::revoked_svids`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SvidRecords {
    records: BTreeMap<String, SvidRecord>,
    /// A number that changes with every change of the records, unique in the process (as the
    /// tasks' generations are), so that a reader can tell they are the same without comparing
    /// them. Neither serialized nor compared.
    #[serde(skip, default = "super::tasks::next_generation")]
    generation: u64,
}

impl PartialEq for SvidRecords {
    fn eq(&self, other: &Self) -> bool {
        self.records == other.records
    }
}

impl Eq for SvidRecords {}

impl SvidRecords {
    /// Each record, by serial.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &SvidRecord)> {
        self.records.iter()
    }

    /// How many records are kept.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// A number that changes whenever the records do (see the field).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// How many records are of SVIDs unexpired at `now` (Unix seconds): in all, and of task
    /// `task_id`.
    pub fn unexpired(&self, task_id: &str, now: i64) -> (usize, usize) {
        self.records
            .values()
            .filter(|r| r.not_after > now)
            .fold((0, 0), |(all, its), r| {
                (all + 1, its + usize::from(r.task_id == task_id))
            })
    }

    /// Adds the record of an SVID issued at `now` (Unix seconds), dropping records that have
    /// expired, and no other: an unexpired SVID whose record went could not be revoked. The
    /// leader keeps the count bounded by refusing to issue past [`MAX_SVID_RECORDS`].
    pub(crate) fn record(&mut self, serial: String, record: SvidRecord, now: i64) {
        self.records.retain(|_, r| r.not_after > now);
        self.records.insert(serial, record);
        self.generation = super::tasks::next_generation();
    }
}

impl FromIterator<(String, SvidRecord)> for SvidRecords {
    fn from_iter<I: IntoIterator<Item = (String, SvidRecord)>>(records: I) -> Self {
        Self {
            records: records.into_iter().collect(),
            generation: super::tasks::next_generation(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Expired records go as new ones come, and the count stays bounded.
    #[test]
    fn expired_records_go_as_new_ones_come() {
        let mut r = SvidRecords::default();
        let rec = |not_after| SvidRecord {
            task_id: "t".into(),
            node_id: "n".into(),
            not_after,
        };
        r.record("aa".into(), rec(100), 0);
        r.record("bb".into(), rec(300), 0);
        assert_eq!(r.len(), 2);
        r.record("cc".into(), rec(400), 200);
        let kept: Vec<&String> = r.iter().map(|(s, _)| s).collect();
        assert_eq!(kept, vec!["bb", "cc"]);
        assert_eq!(r.unexpired("t", 200), (2, 2));
        assert_eq!(r.unexpired("other", 350), (1, 0));
    }

    /// Every change moves the generation; a decoded copy has its own and compares equal.
    #[test]
    fn the_generation_moves_with_every_change_and_is_not_encoded() {
        let mut r = SvidRecords::default();
        let rec = SvidRecord {
            task_id: "t".into(),
            node_id: "n".into(),
            not_after: 100,
        };
        let before = r.generation();
        r.record("aa".into(), rec.clone(), 0);
        let once = r.generation();
        assert_ne!(once, before);
        r.record("aa".into(), rec, 0);
        assert_ne!(r.generation(), once);
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains("generation"), "{json}");
        let back: SvidRecords = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        assert_ne!(back.generation(), r.generation());
    }

    /// However many records come, none of an unexpired SVID is dropped for them: it would no
    /// longer be revoked. (The leader refuses SVIDs past the bound instead.)
    #[test]
    fn an_unexpired_record_is_never_dropped_for_room() {
        let mut r = SvidRecords::default();
        let rec = |task: &str, not_after| SvidRecord {
            task_id: task.into(),
            node_id: "n".into(),
            not_after,
        };
        r.record("first".into(), rec("stolen", 1_000), 0);
        for i in 0..MAX_SVID_RECORDS - 1 {
            r.records.insert(format!("{i:08x}"), rec("flood", 2_000));
        }
        r.record("last".into(), rec("flood", 2_000), 1);
        assert_eq!(r.len(), MAX_SVID_RECORDS + 1);
        assert!(r.iter().any(|(s, _)| s == "first"));
        assert_eq!(r.unexpired("stolen", 1), (MAX_SVID_RECORDS + 1, 1));
    }
}
