//! Workload identity in the replicated state: the keys that sign tasks' SVIDs, the record of
//! each X.509-SVID issued, and which of those are revoked (a pure function of the state).

use serde::{Deserialize, Serialize};

use crate::secret::SecretString;
use crate::store::model::State;
use crate::store::service::DesiredState;

/// SVID lifetime when `swarm update --svid-ttl` was never set: one hour.
pub const DEFAULT_SVID_TTL_SECS: u64 = 3600;
/// The shortest SVID lifetime accepted (renewal is at half of it).
pub const MIN_SVID_TTL_SECS: u64 = 10;
/// The longest SVID lifetime accepted: a day.
pub const MAX_SVID_TTL_SECS: u64 = 24 * 3600;
/// JWT-SVID lifetime: five minutes.
pub const JWT_SVID_TTL_SECS: u64 = 300;
/// The most SVID records kept; past it the oldest-expiring go first (they are only kept to
/// be revoked, and an expired SVID needs no revocation).
pub const MAX_SVID_RECORDS: usize = 200_000;

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

impl State {
    /// Serials (lower-case hex) of the unexpired SVIDs that must no longer be accepted: their
    /// task is gone or no longer to run, or their node was removed or revoked.
    pub fn revoked_svids(&self) -> Vec<&str> {
        self.svids
            .iter()
            .filter(|(_, r)| self.svid_revoked(r))
            .map(|(serial, _)| serial.as_str())
            .collect()
    }

    /// Whether the SVID `r` describes must no longer be accepted.
    fn svid_revoked(&self, r: &SvidRecord) -> bool {
        if !self.nodes.contains_key(&r.node_id) || self.revoked.contains_key(&r.node_id) {
            return true;
        }
        match self.tasks.get(&r.task_id) {
            None => true,
            Some(t) => {
                t.node_id != r.node_id
                    || t.desired != DesiredState::Running
                    || t.status.state.is_terminal()
            }
        }
    }

    /// Adds the record of an SVID issued at `now` (Unix seconds), dropping records that have
    /// expired and, past [`MAX_SVID_RECORDS`], those that expire first.
    pub(crate) fn record_svid(&mut self, serial: String, record: SvidRecord, now: i64) {
        self.svids.retain(|_, r| r.not_after > now);
        while self.svids.len() >= MAX_SVID_RECORDS {
            let Some(first) = self
                .svids
                .iter()
                .min_by_key(|(_, r)| r.not_after)
                .map(|(s, _)| s.clone())
            else {
                break;
            };
            self.svids.remove(&first);
        }
        self.svids.insert(serial, record);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::fixtures;
    use crate::store::service::TaskState;

    fn record(task: &str, node: &str, not_after: i64) -> SvidRecord {
        SvidRecord {
            task_id: task.into(),
            node_id: node.into(),
            not_after,
        }
    }

    /// An SVID is revoked once its task stops or goes, or its node is removed; expired
    /// records are dropped as new ones come.
    #[test]
    fn svids_are_revoked_with_their_task_or_node() {
        let mut s = State::default();
        let mut t = fixtures::task();
        t.status.state = TaskState::Running;
        s.tasks.insert("t1".into(), t.clone());
        s.nodes.insert("n1".into(), fixtures::node("n1"));
        s.record_svid("aa".into(), record("t1", "n1", 100), 0);
        s.record_svid("bb".into(), record("t1", "n2", 100), 0);
        s.record_svid("cc".into(), record("gone", "n1", 100), 0);
        assert_eq!(s.revoked_svids(), vec!["bb", "cc"]);
        s.tasks.get_mut("t1").unwrap().desired = DesiredState::Shutdown;
        assert_eq!(s.revoked_svids(), vec!["aa", "bb", "cc"]);
        s.tasks.insert("t1".into(), t);
        s.nodes.clear();
        assert_eq!(s.revoked_svids(), vec!["aa", "bb", "cc"]);
        s.record_svid("dd".into(), record("t1", "n1", 300), 200);
        assert_eq!(s.svids.len(), 1);
    }
}
