//! Linearizable reads: the one rule every Control read and every security decision goes
//! through before it looks at the replicated state ([`Manager::read_barrier`]).
//!
//! ```text
//!  leader:   get_read_log_id (openraft read-index: heartbeats confirm leadership with a
//!            quorum) ──► wait until this manager applied it ──► read
//!  follower: Manager.ReadIndex on the leader (which does the above) ──► wait applied ──► read
//!  neither:  no leader confirmed within READ_BARRIER_TIMEOUT ──► ReadError::NoQuorum
//! ```
//!
//! A read that skips the barrier (`--stale`) sees this manager's applied copy, which may be
//! behind; the agent's hot paths (heartbeats, the task session) read locally on the leader and
//! never pay for a round trip.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, RaftError};

use super::Manager;
use crate::api::v1::Empty;
use crate::store::model::{Node, NodeRole, NodeState};

/// How long a read waits for a quorum to confirm this manager's copy before failing.
pub const READ_BARRIER_TIMEOUT: Duration = Duration::from_secs(3);
/// A quorum confirmed more recently than this still counts for `node ls` status.
const QUORUM_FRESH: Duration = Duration::from_secs(2);
/// A follower whose replicated index trails the leader's log and has not moved for this long
/// is out of sync (not Reachable).
const SYNC_STALL: Duration = Duration::from_secs(2);

/// Why a linearizable read was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// No leader confirmed with a quorum that this manager's copy is current.
    #[error(
        "no quorum: this manager cannot confirm with a quorum of managers that its data is current ({detail}); the swarm has lost a majority of its managers, is electing a leader, or its leader is too busy to answer in time. Retry shortly, bring the missing managers back, or add --stale to read this manager's possibly out-of-date copy"
    )]
    NoQuorum {
        /// What the last attempt saw.
        detail: String,
    },
    /// The leader confirmed an index this manager has not applied in time.
    #[error(
        "this manager is catching up (it has applied the log up to {applied}, the leader is at {index}); retry shortly, ask another manager, or add --stale"
    )]
    Behind {
        /// The read index the leader gave.
        index: u64,
        /// What this manager has applied.
        applied: u64,
    },
    /// The store stopped while waiting.
    #[error("the cluster store of this manager stopped: {0}")]
    Stopped(String),
}

/// What the status column needs to remember between calls (see [`Manager::manager_status`]).
#[derive(Debug, Default)]
pub struct ReadState {
    /// When a quorum last confirmed this manager's reads.
    confirmed: Option<Instant>,
    /// Per follower (on the leader): its matched index when first seen at that value.
    matched: HashMap<u64, (Option<u64>, Instant)>,
}

impl Manager {
    /// Waits until reading this manager's state is linearizable: everything committed before
    /// the call is applied here. Fails with [`ReadError::NoQuorum`] when no leader confirms
    /// it with a quorum within [`READ_BARRIER_TIMEOUT`]. Returns the applied index read at.
    pub async fn read_barrier(&self) -> Result<u64, ReadError> {
        self.read_barrier_within(READ_BARRIER_TIMEOUT).await
    }

    /// [`Manager::read_barrier`] with a given deadline.
    pub async fn read_barrier_within(&self, within: Duration) -> Result<u64, ReadError> {
        let deadline = Instant::now() + within;
        loop {
            let detail = match self.read_index_once(deadline).await {
                Ok(index) => return self.wait_applied_until(index, deadline).await,
                Err(d) => d,
            };
            if Instant::now() >= deadline {
                return Err(ReadError::NoQuorum { detail });
            }
            // A new leader is followed at once; otherwise try again shortly.
            self.wait_leader_change(Duration::from_millis(100)).await;
        }
    }

    /// On the leader: openraft's read index (leadership confirmed by a quorum's answers to a
    /// heartbeat). An error says why not, for the caller's message.
    pub async fn local_read_index(&self, within: Duration) -> Result<u64, String> {
        match tokio::time::timeout(within, self.raft.get_read_log_id()).await {
            Ok(Ok((read, _))) => Ok(read.map_or(0, |l| l.index)),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_)))) => {
                Err("this manager is no longer the leader".into())
            }
            Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => Err(format!(
                "only {} of the managers in {} answered the leader",
                q.got.len(),
                q.cluster
            )),
            Ok(Err(RaftError::Fatal(f))) => Err(format!("raft stopped: {f}")),
            Err(_) => Err("the leader did not confirm a quorum in time".into()),
        }
    }

    async fn read_index_once(&self, deadline: Instant) -> Result<u64, String> {
        let left = deadline.saturating_duration_since(Instant::now());
        if self.is_leader() {
            return self.local_read_index(left).await;
        }
        let addr = self
            .leader_addr()
            .ok_or_else(|| "no leader is known".to_string())?;
        let mut client =
            crate::net::serve::manager_client(self.peer(&addr).map_err(|e| e.to_string())?);
        match tokio::time::timeout(left, client.read_index(Empty {})).await {
            Ok(Ok(r)) => Ok(r.into_inner().index),
            Ok(Err(s)) => Err(format!("the leader at {addr}: {}", s.message())),
            Err(_) => Err(format!("the leader at {addr} did not answer in time")),
        }
    }

    async fn wait_applied_until(&self, index: u64, deadline: Instant) -> Result<u64, ReadError> {
        let left = deadline.saturating_duration_since(Instant::now());
        // Give a manager that is just behind a moment even when the deadline has passed.
        let left = left.max(Duration::from_millis(500));
        match tokio::time::timeout(left, self.state().wait_applied(index)).await {
            Ok(Ok(applied)) => {
                self.reads_state().confirmed = Some(Instant::now());
                Ok(applied)
            }
            Ok(Err(e)) => Err(ReadError::Stopped(e.to_string())),
            Err(_) => Err(ReadError::Behind {
                index,
                applied: self.state().applied_index(),
            }),
        }
    }

    /// Waits until the Raft leader this manager knows of changes, at most `within`.
    pub(crate) async fn wait_leader_change(&self, within: Duration) {
        let mut rx = self.raft.metrics();
        let was = rx.borrow().current_leader;
        let _ = tokio::time::timeout(within, rx.wait_for(|m| m.current_leader != was)).await;
    }

    fn reads_state(&self) -> std::sync::MutexGuard<'_, ReadState> {
        self.read_state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a quorum confirmed this manager's reads within the last [`QUORUM_FRESH`].
    pub fn quorum_confirmed(&self) -> bool {
        self.reads_state()
            .confirmed
            .is_some_and(|t| t.elapsed() <= QUORUM_FRESH)
    }

    /// Manager status as `node ls` shows it. A manager that has not had its reads confirmed
    /// by a quorum lately claims no leader and calls every manager Unreachable; the leader
    /// calls a manager Reachable only if it heartbeats and its log keeps up; a follower
    /// trusts the state the leader committed (Down on missed heartbeats).
    pub fn manager_status(&self, node: &Node) -> &'static str {
        if node.role != NodeRole::Manager {
            return "";
        }
        if !self.quorum_confirmed() {
            return "Unreachable";
        }
        let m = self.raft.metrics().borrow().clone();
        if node.raft_id.is_some() && node.raft_id == m.current_leader {
            return "Leader";
        }
        if node.state != NodeState::Ready {
            return "Unreachable";
        }
        if m.current_leader != Some(self.raft_id) {
            return "Reachable";
        }
        let Some(raft_id) = node.raft_id else {
            return "Unreachable";
        };
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&raft_id).cloned())
            .map(|l| l.map(|l| l.index));
        let Some(matched) = matched else {
            return "Unreachable"; // not replicated to: not a member of the voters
        };
        let lagging = matched < m.last_log_index;
        let stalled = {
            let mut st = self.reads_state();
            let now = Instant::now();
            let entry = st.matched.entry(raft_id).or_insert((matched, now));
            if entry.0 != matched {
                *entry = (matched, now);
            }
            lagging && now.duration_since(entry.1) > SYNC_STALL
        };
        if stalled || !self.heard_from(&node.id) {
            "Unreachable"
        } else {
            "Reachable"
        }
    }
}
