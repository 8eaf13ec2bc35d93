//! Workload identity in the replicated state: the keys that sign tasks' SVIDs and the record
//! of each X.509-SVID issued.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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
/// The part of [`MAX_SVID_RECORDS`] kept for renewals: a task's first SVID is refused once the
/// swarm holds `MAX_SVID_RECORDS - RENEWAL_ROOM`, an SVID for a task that holds one only at
/// the bound. Every restart of a crash-looping service is a new task asking for its first SVID,
/// and each ended task's record stays until its SVID expires: without this room such a loop
/// fills the bound, and then running tasks cannot renew. A task renews at half life, so
/// running tasks need about one record each above what they hold: room for 20,000 renewing
/// at once. A task whose SVIDs have all expired (its node was away) asks as a new one.
pub const RENEWAL_ROOM: usize = MAX_SVID_RECORDS / 10;
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
///
/// Encoded as the map of records alone. Three indexes are derived from it (rebuilt when
/// decoded, neither encoded nor compared), so that an issuance costs the same with 200,000
/// records as with none: the records by expiry (the expired go from the front), each task's
/// expiries (its count of unexpired SVIDs, [`MAX_SVIDS_PER_TASK`] at most while it runs), and
/// each node's serials with a generation of their own (a manager looks again at the revoked
/// SVIDs of the nodes whose records or tasks changed, not at all of them). The map and the
/// indexes share each serial (`Arc<str>`), and the tasks are indexed by a hash of their ID:
/// two tasks whose IDs collide (random IDs, 64 bits) would share one task's room, no more.
#[derive(Clone, Debug, Default)]
pub struct SvidRecords {
    records: BTreeMap<Arc<str>, SvidRecord>,
    /// `(not_after, serial)` of every record.
    by_expiry: BTreeSet<(i64, Arc<str>)>,
    /// The `not_after` of each of a task's records, by a hash of the task's ID.
    by_task: HashMap<u64, Vec<i64>>,
    /// Hashes task IDs for `by_task` (its own keys, made anew with every decoded copy).
    task_hasher: RandomState,
    /// Each node's records.
    by_node: HashMap<String, NodeSvids>,
    /// A number that changes with every change of the records, unique in the process (as the
    /// tasks' generations are), so that a reader can tell they are the same without comparing
    /// them.
    generation: u64,
}

/// One node's records in the index: their serials, and a generation that moves with them.
#[derive(Clone, Debug, Default)]
struct NodeSvids {
    serials: BTreeSet<Arc<str>>,
    generation: u64,
}

impl PartialEq for SvidRecords {
    fn eq(&self, other: &Self) -> bool {
        self.records == other.records
    }
}

impl Eq for SvidRecords {}

impl Serialize for SvidRecords {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.records.iter().map(|(serial, r)| (&**serial, r)))
    }
}

impl<'de> Deserialize<'de> for SvidRecords {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::<String, SvidRecord>::deserialize(deserializer).map(Self::from_iter)
    }
}

impl SvidRecords {
    /// Each record, by serial.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &SvidRecord)> {
        self.records.iter().map(|(serial, r)| (&**serial, r))
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

    /// The nodes the records name, each with a number that changes whenever its records do
    /// (unique in the process, like [`Self::generation`]).
    pub fn nodes(&self) -> impl Iterator<Item = (&str, u64)> {
        self.by_node
            .iter()
            .map(|(id, n)| (id.as_str(), n.generation))
    }

    /// Whether some record names node `node_id`.
    pub fn names_node(&self, node_id: &str) -> bool {
        self.by_node.contains_key(node_id)
    }

    /// The records of node `node_id`, by serial.
    pub fn of_node(&self, node_id: &str) -> impl Iterator<Item = (&str, &SvidRecord)> {
        self.by_node
            .get(node_id)
            .into_iter()
            .flat_map(|n| n.serials.iter())
            .filter_map(|serial| self.records.get(serial).map(|r| (&**serial, r)))
    }

    /// How many records are of SVIDs unexpired at `now` (Unix seconds): in all, and of task
    /// `task_id`. Costs the expired records not yet dropped, not all of them.
    pub fn unexpired(&self, task_id: &str, now: i64) -> (usize, usize) {
        let expired = match now.checked_add(1) {
            Some(next) => self.by_expiry.range(..(next, Arc::from(""))).count(),
            None => self.by_expiry.len(),
        };
        let its = self
            .by_task
            .get(&self.task_hasher.hash_one(task_id))
            .map_or(0, |ends| ends.iter().filter(|&&end| end > now).count());
        (self.records.len() - expired, its)
    }

    /// Adds the record of an SVID issued at `now` (Unix seconds), dropping records that have
    /// expired, and no other: an unexpired SVID whose record went could not be revoked. The
    /// leader keeps the count bounded by refusing to issue past [`MAX_SVID_RECORDS`].
    pub(crate) fn record(&mut self, serial: String, record: SvidRecord, now: i64) {
        while let Some((end, _)) = self.by_expiry.first()
            && *end <= now
        {
            if let Some((_, serial)) = self.by_expiry.pop_first() {
                self.forget(&serial);
            }
        }
        self.insert(serial, record);
        self.generation = super::tasks::next_generation();
    }

    /// Stores `serial`'s record (replacing the one of that serial) and indexes it.
    fn insert(&mut self, serial: String, record: SvidRecord) {
        self.forget(&serial);
        let serial: Arc<str> = Arc::from(serial);
        self.by_expiry.insert((record.not_after, serial.clone()));
        self.by_task
            .entry(self.task_hasher.hash_one(&record.task_id))
            .or_default()
            .push(record.not_after);
        let node = self.by_node.entry(record.node_id.clone()).or_default();
        node.serials.insert(serial.clone());
        node.generation = super::tasks::next_generation();
        self.records.insert(serial, record);
    }

    /// Drops `serial`'s record, from the map and the indexes, if there is one.
    fn forget(&mut self, serial: &str) {
        let Some((serial, old)) = self.records.remove_entry(serial) else {
            return;
        };
        self.by_expiry.remove(&(old.not_after, serial.clone()));
        let task = self.task_hasher.hash_one(&old.task_id);
        if let Some(ends) = self.by_task.get_mut(&task) {
            if let Some(at) = ends.iter().position(|&end| end == old.not_after) {
                ends.swap_remove(at);
            }
            if ends.is_empty() {
                self.by_task.remove(&task);
            }
        }
        if let Some(node) = self.by_node.get_mut(&old.node_id) {
            node.serials.remove(&serial);
            node.generation = super::tasks::next_generation();
            if node.serials.is_empty() {
                self.by_node.remove(&old.node_id);
            }
        }
    }
}

impl FromIterator<(String, SvidRecord)> for SvidRecords {
    fn from_iter<I: IntoIterator<Item = (String, SvidRecord)>>(records: I) -> Self {
        let mut out = Self {
            generation: super::tasks::next_generation(),
            ..Self::default()
        };
        for (serial, record) in records {
            out.insert(serial, record);
        }
        out
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
        let kept: Vec<&str> = r.iter().map(|(s, _)| s).collect();
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
        let flood = (0..MAX_SVID_RECORDS - 1).map(|i| (format!("{i:08x}"), rec("flood", 2_000)));
        let mut r: SvidRecords = r
            .iter()
            .map(|(s, r)| (s.to_string(), r.clone()))
            .chain(flood)
            .collect();
        r.record("last".into(), rec("flood", 2_000), 1);
        assert_eq!(r.len(), MAX_SVID_RECORDS + 1);
        assert!(r.iter().any(|(s, _)| s == "first"));
        assert_eq!(r.unexpired("stolen", 1), (MAX_SVID_RECORDS + 1, 1));
    }

    /// The indexes answer as a pass over every record would, through random issuances,
    /// replacements, expiries and a decode (`SKEP_TEST_SEED` repeats a run).
    #[test]
    fn the_indexes_count_as_a_pass_over_every_record_would() {
        use rand::Rng;
        let (seed, mut rng) = crate::util::seeded_rng();
        let mut r = SvidRecords::default();
        let mut now = 0;
        let naive = |r: &SvidRecords, task: &str, now: i64| {
            r.iter()
                .filter(|(_, x)| x.not_after > now)
                .fold((0, 0), |(all, its), (_, x)| {
                    (all + 1, its + usize::from(x.task_id == task))
                })
        };
        for step in 0..3_000 {
            now += rng.random_range(0..3);
            let task = format!("t{}", rng.random_range(0..20));
            let record = SvidRecord {
                task_id: task.clone(),
                node_id: format!("n{}", rng.random_range(0..5)),
                not_after: now + rng.random_range(1..40),
            };
            // Serials repeat now and then: a record replaced keeps one entry in each index.
            r.record(format!("{:x}", rng.random_range(0..400)), record, now);
            if step % 500 == 0 {
                r = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
            }
            let at = now + rng.random_range(0..20);
            for t in [task.as_str(), "t0", "none"] {
                assert_eq!(
                    r.unexpired(t, at),
                    naive(&r, t, at),
                    "seed {seed}, step {step}, task {t}"
                );
            }
            assert!(
                r.iter().all(|(_, x)| x.not_after > now),
                "seed {seed}: an expired record kept"
            );
            let indexed: usize = r.by_task.values().map(Vec::len).sum();
            assert_eq!(
                (r.by_expiry.len(), indexed),
                (r.len(), r.len()),
                "seed {seed}, step {step}"
            );
        }
    }

    /// A node's generation moves when one of its records comes or goes, and not for another
    /// node's; a node with no record left is no longer named.
    #[test]
    fn a_nodes_generation_moves_with_its_own_records() {
        let rec = |node: &str, not_after| SvidRecord {
            task_id: "t".into(),
            node_id: node.into(),
            not_after,
        };
        let mut r = SvidRecords::default();
        r.record("aa".into(), rec("n1", 100), 0);
        r.record("bb".into(), rec("n2", 300), 0);
        let of = |r: &SvidRecords, n: &str| r.nodes().find(|(id, _)| *id == n).map(|(_, g)| g);
        let (n1, n2) = (of(&r, "n1").unwrap(), of(&r, "n2").unwrap());
        r.record("cc".into(), rec("n2", 300), 0);
        assert_eq!(of(&r, "n1"), Some(n1));
        assert_ne!(of(&r, "n2"), Some(n2));
        let serials: Vec<&str> = r.of_node("n2").map(|(s, _)| s).collect();
        assert_eq!(serials, vec!["bb", "cc"]);
        // n1's one record expires as another comes: n1 is no longer named.
        r.record("dd".into(), rec("n2", 300), 200);
        assert!(!r.names_node("n1") && of(&r, "n1").is_none());
        assert_eq!(r.of_node("n1").count(), 0);
    }
}
