//! Rebuilding a store for a single manager: `swarm init --force-new-cluster` (from this
//! manager's own store) and `swarm restore` (from a backup).
//!
//! Raft cannot change its membership without a quorum, so a lost majority is recovered
//! outside it: [`read_all`] applies every entry the old log holds (committed or not: an
//! entry the lost leader acknowledged may not have been marked committed here yet) to the
//! snapshot, and [`write_single`] writes a new store whose snapshot is that state with a
//! membership of this manager alone, its vote and committed pointer at the snapshot, and
//! the log purged up to it. openraft starts such a store as a one-voter cluster that elects
//! itself; the store's rollback anchor sees nothing go back.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{BasicNode, Membership, RaftLogReader, SnapshotMeta, StoredMembership, Vote};

use super::model::State;
use super::seal::Sealer;
use super::{LogId, LogStore, StateMachineStore, StoreError};

/// What an old store held, every entry of its log applied.
pub struct Recovered {
    /// The state.
    pub state: State,
    /// The id of the last entry applied (the last in the log, or the snapshot's).
    pub last: LogId,
    /// The highest term the store had seen (its vote's or its last entry's).
    pub term: u64,
    /// How many entries were applied beyond what the old store had applied.
    pub replayed: u64,
}

impl std::fmt::Debug for Recovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovered")
            .field("last", &self.last)
            .field("term", &self.term)
            .field("replayed", &self.replayed)
            .finish_non_exhaustive()
    }
}

fn storage(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Task(format!("{what}: {e}"))
}

/// Opens the store in `dir` (without starting Raft) and applies every entry its log holds
/// after the snapshot, committed or not. Refuses an empty store.
pub async fn read_all(dir: &Path, sealer: Arc<Sealer>) -> Result<Recovered, StoreError> {
    let (log, sm) = super::open_with(dir.to_path_buf(), sealer).await?;
    read_all_open(dir, log, sm).await
}

/// [`read_all`] on a store that is open already, whose Raft is stopped (`dir` names it in
/// errors). The state machine is advanced in place.
pub async fn read_all_open(
    dir: &Path,
    mut log: LogStore,
    mut sm: StateMachineStore,
) -> Result<Recovered, StoreError> {
    let vote = log
        .read_vote()
        .await
        .map_err(|e| storage("reading the vote", e))?;
    let state = log
        .get_log_state()
        .await
        .map_err(|e| storage("reading the log state", e))?;
    let (applied, _) = sm
        .applied_state()
        .await
        .map_err(|e| storage("reading the applied state", e))?;
    let from = applied.map_or(0, |l| l.index + 1);
    let to = state.last_log_id.map_or(0, |l| l.index);
    let mut replayed = 0;
    // In slices, so a long log is not held in memory twice.
    let mut next = from;
    while next <= to && state.last_log_id.is_some() {
        let end = to.min(next.saturating_add(1023));
        let entries = log
            .try_get_log_entries(next..=end)
            .await
            .map_err(|e| storage("reading the log", e))?;
        if entries.is_empty() {
            break;
        }
        replayed += entries.len() as u64;
        sm.apply(entries)
            .await
            .map_err(|e| storage("applying the log", e))?;
        next = end + 1;
    }
    let (last, _) = sm
        .applied_state()
        .await
        .map_err(|e| storage("reading the applied state", e))?;
    let Some(last) = last else {
        return Err(StoreError::Corrupt {
            path: dir.to_path_buf(),
            what: "the store holds no state to recover".into(),
        });
    };
    let term = vote
        .map_or(0, |v| v.leader_id().term)
        .max(last.leader_id.term);
    let state = sm.state().read(Clone::clone);
    Ok(Recovered {
        state,
        last,
        term,
        replayed,
    })
}

/// The membership of a cluster of one: `raft_id` at `addr`.
pub fn single_membership(raft_id: u64, addr: &str) -> Membership<u64, BasicNode> {
    Membership::new(
        vec![BTreeSet::from([raft_id])],
        BTreeMap::from([(raft_id, BasicNode::new(addr))]),
    )
}

/// Writes a new store in `dir` (which must not hold one) whose snapshot is `state` at `last`,
/// with `raft_id` at `addr` its only voter, a vote for it in `term`, and everything up to
/// `last` committed.
pub async fn write_single(
    dir: &Path,
    sealer: Arc<Sealer>,
    state: &State,
    last: LogId,
    term: u64,
    raft_id: u64,
    addr: &str,
) -> Result<(), StoreError> {
    if dir.join(super::log::LOG_FILE).exists() || dir.join(super::sm::SNAPSHOT_FILE).exists() {
        return Err(StoreError::Corrupt {
            path: dir.to_path_buf(),
            what: "a store is already there; the new one is written to an empty directory".into(),
        });
    }
    let (mut log, mut sm) = super::open_with(dir.to_path_buf(), sealer).await?;
    let membership = StoredMembership::new(Some(last), single_membership(raft_id, addr));
    let meta = SnapshotMeta {
        last_log_id: Some(last),
        last_membership: membership,
        snapshot_id: format!("recovered-{}-{}", last.leader_id, last.index),
    };
    let payload = super::sm::encode_payload(&meta, state)?;
    sm.install_snapshot(&meta, Box::new(Cursor::new(payload.to_vec())))
        .await
        .map_err(|e| storage("writing the snapshot", e))?;
    log.save_vote(&Vote::new(term.max(last.leader_id.term), raft_id))
        .await
        .map_err(|e| storage("saving the vote", e))?;
    log.save_committed(Some(last))
        .await
        .map_err(|e| storage("saving the committed pointer", e))?;
    log.purge(last)
        .await
        .map_err(|e| storage("marking the log purged up to the snapshot", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Actor, AuditEvent, Outcome};
    use crate::store::model::Command;
    use crate::store::seal::Dek;

    fn sealer() -> Arc<Sealer> {
        Arc::new(Sealer::new(&Dek::generate()))
    }

    #[tokio::test]
    async fn an_empty_store_has_nothing_to_recover() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_all(dir.path(), sealer()).await.unwrap_err();
        assert!(e.to_string().contains("no state to recover"), "{e}");
    }

    #[tokio::test]
    async fn a_store_is_not_written_over_another() {
        let dir = tempfile::tempdir().unwrap();
        let s = sealer();
        let last = LogId::new(openraft::CommittedLeaderId::new(3, 1), 7);
        write_single(dir.path(), s.clone(), &State::default(), last, 3, 1, "a:1")
            .await
            .unwrap();
        let e = write_single(dir.path(), s, &State::default(), last, 3, 1, "a:1")
            .await
            .unwrap_err();
        assert!(e.to_string().contains("already there"), "{e}");
    }

    #[tokio::test]
    async fn a_written_store_reads_back_as_the_same_state_at_the_same_index() {
        let dir = tempfile::tempdir().unwrap();
        let s = sealer();
        let mut state = State::default();
        let _ = state.apply(Command::Audit(AuditEvent::now(
            Actor::system(),
            "test.event",
            "x",
            Outcome::Ok,
        )));
        let last = LogId::new(openraft::CommittedLeaderId::new(4, 9), 42);
        write_single(dir.path(), s.clone(), &state, last, 5, 9, "10.0.0.1:4242")
            .await
            .unwrap();
        let back = read_all(dir.path(), s.clone()).await.unwrap();
        assert_eq!(back.last, last);
        assert_eq!(back.term, 5);
        assert_eq!(back.replayed, 0);
        assert_eq!(back.state.audit.head().map(|h| h.seq), Some(1));
        let (mut log, mut sm) = crate::store::open_with(dir.path().to_path_buf(), s)
            .await
            .unwrap();
        let ls = log.get_log_state().await.unwrap();
        assert_eq!(ls.last_purged_log_id, Some(last));
        assert_eq!(log.read_committed().await.unwrap(), Some(last));
        let (_, m) = sm.applied_state().await.unwrap();
        assert_eq!(m.voter_ids().collect::<Vec<_>>(), vec![9]);
    }
}
