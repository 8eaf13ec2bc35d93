//! What a manager reports to a metrics scrape: Raft's view (term, leader, voters, log) and
//! gauges computed from the replicated state (tasks by state, revocations, the audit chain).
//!
//! ```text
//!  scrape ─► Manager::metric_facts(verifier) ─► state_facts(&State) (pure) + Raft metrics
//!                                                + node ls statuses + audit::Incremental
//! ```
//!
//! Computed when asked, so nothing is updated on the paths that change the state.

use crate::audit::incremental::Incremental;
use crate::metrics::ManagerFacts;
use crate::store::model::{NodeRole, State};
use crate::store::service::TaskState;

use super::Manager;

/// Every task state, in the order the metrics list them.
pub const TASK_STATES: [TaskState; 12] = [
    TaskState::New,
    TaskState::Pending,
    TaskState::Assigned,
    TaskState::Accepted,
    TaskState::Preparing,
    TaskState::Starting,
    TaskState::Running,
    TaskState::Complete,
    TaskState::Shutdown,
    TaskState::Failed,
    TaskState::Rejected,
    TaskState::Orphaned,
];

/// The position of `s` in [`TASK_STATES`] (a new state fails to compile here until listed).
fn index(s: TaskState) -> usize {
    match s {
        TaskState::New => 0,
        TaskState::Pending => 1,
        TaskState::Assigned => 2,
        TaskState::Accepted => 3,
        TaskState::Preparing => 4,
        TaskState::Starting => 5,
        TaskState::Running => 6,
        TaskState::Complete => 7,
        TaskState::Shutdown => 8,
        TaskState::Failed => 9,
        TaskState::Rejected => 10,
        TaskState::Orphaned => 11,
    }
}

/// The facts that are a function of the replicated state alone: tasks by observed state
/// (every state, zeros included), revoked identities, audit records kept.
pub fn state_facts(s: &State) -> ManagerFacts {
    let mut counts = [0u64; TASK_STATES.len()];
    for t in s.tasks.values() {
        counts[index(t.status.state)] += 1;
    }
    ManagerFacts {
        tasks_by_state: TASK_STATES
            .iter()
            .zip(counts)
            .map(|(st, n)| (st.as_str(), n))
            .collect(),
        revoked: s.revoked.len() as u64,
        audit_records: s.audit.records().len() as u64,
        ..ManagerFacts::default()
    }
}

impl Manager {
    /// This manager's facts for a scrape. `verifier` carries the audit chain's verification
    /// from one scrape to the next (only new records are checked).
    ///
    /// Reachability is `node ls`'s: call after a read barrier, or every manager looks
    /// Unreachable once the last quorum confirmation is older than 2 s.
    pub fn metric_facts(&self, verifier: &mut Incremental) -> ManagerFacts {
        let raft = self.raft.metrics().borrow().clone();
        let voters = self.voters();
        let (mut facts, managers, verified) = self.read(|s| {
            let key = s
                .cluster
                .as_ref()
                .and_then(|c| c.audit_key.as_ref())
                .map(|k| k.public_key().to_string());
            let verified = verifier.check(&s.audit, key.as_deref());
            if let Err(e) = &verified {
                tracing::error!(error = %e, "the audit chain does not verify");
            }
            let managers: Vec<_> = s
                .nodes
                .values()
                .filter(|n| n.role == NodeRole::Manager)
                .filter(|n| n.raft_id.is_some_and(|id| voters.contains(&id)))
                .cloned()
                .collect();
            (state_facts(s), managers, verified.is_ok())
        });
        let reachable = managers
            .iter()
            .filter(|n| matches!(self.manager_status(n), "Leader" | "Reachable"))
            .count();
        facts.raft_term = raft.current_term;
        facts.is_leader = self.is_leader();
        facts.has_leader = self.leader_id().is_some() && self.quorum_confirmed();
        facts.voters = voters.len() as u64;
        facts.reachable_voters = reachable as u64;
        let last = raft.last_log_index.unwrap_or(0);
        let purged = raft.purged.map_or(0, |p| p.index);
        facts.last_log_index = last;
        facts.log_entries = last.saturating_sub(purged);
        facts.applied_index = raft.last_applied.map_or(0, |l| l.index);
        facts.audit_chain_verified = verified;
        facts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures;

    #[test]
    fn tasks_are_counted_by_state_with_every_state_listed() {
        let mut s = State::default();
        for (id, state) in [
            ("t1", TaskState::Running),
            ("t2", TaskState::Running),
            ("t3", TaskState::Failed),
        ] {
            let t = crate::store::service::Task {
                id: id.into(),
                status: fixtures::task_status(state),
                ..fixtures::task()
            };
            s.tasks.insert(id.into(), t);
        }
        let f = state_facts(&s);
        assert_eq!(f.tasks_by_state.len(), TASK_STATES.len());
        let n = |st: &str| {
            f.tasks_by_state
                .iter()
                .find(|(name, _)| *name == st)
                .map(|(_, n)| *n)
        };
        assert_eq!(n("running"), Some(2));
        assert_eq!(n("failed"), Some(1));
        assert_eq!(n("pending"), Some(0));
        for (i, st) in TASK_STATES.iter().enumerate() {
            assert_eq!(index(*st), i);
        }
    }
}
