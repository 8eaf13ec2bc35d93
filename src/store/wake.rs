//! Wake-ups after applied entries, by what they changed: a node's task session wakes when a
//! task or the record of its own node changed, or when something else it reads did (secrets,
//! configs, policies, services), not on every commit. With 1,000 sessions, a report of one
//! node's task wakes one session instead of 1,000, and so does a join.
//!
//! ```text
//!  apply(entries) ─► nodes whose tasks or records changed ─► that node's Notify
//!                 ├► any command beyond tasks and audit ─► `others` (orchestrator, revocations)
//!                 └► any command beyond tasks, node records and audit ─► `sessions` (every session)
//! ```
//!
//! A `Notify` keeps one permit when nobody waits, so a change made while a session works is
//! seen on its next wait: no wake-up is lost.
//!
//! It also gathers the IDs of the node records applied entries changed, for the one reader
//! that brings the table of current node certificates up to date ([`Wake::take_node_changes`]).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};

/// The wake-up registry of one state machine.
#[derive(Debug)]
pub struct Wake {
    nodes: Mutex<HashMap<String, Arc<Notify>>>,
    others: watch::Sender<u64>,
    sessions: watch::Sender<u64>,
    /// Node records changed since [`Wake::take_node_changes`] was last called; `None` for
    /// all of them (at first, after a whole new state, or when more than
    /// [`MAX_NODE_CHANGES`] piled up unread).
    node_records: Mutex<Option<HashSet<String>>>,
}

/// The most changed node IDs kept between two reads; past it, "all of them".
pub const MAX_NODE_CHANGES: usize = 65_536;

impl Default for Wake {
    fn default() -> Self {
        Wake {
            nodes: Mutex::new(HashMap::new()),
            others: watch::channel(0).0,
            sessions: watch::channel(0).0,
            node_records: Mutex::new(None),
        }
    }
}

impl Wake {
    /// The notification of a change to `node_id`'s tasks or record. Entries nobody holds any
    /// more are forgotten here, so the registry holds at most the sessions open now (and this
    /// one).
    pub fn node(&self, node_id: &str) -> Arc<Notify> {
        let mut nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
        nodes.retain(|_, n| Arc::strong_count(n) > 1);
        nodes
            .entry(node_id.to_string())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
    }

    /// A receiver that changes whenever an applied entry changed more than tasks.
    pub fn others(&self) -> watch::Receiver<u64> {
        self.others.subscribe()
    }

    /// A receiver that changes whenever an applied entry changed more than tasks and node
    /// records: what every task session reads besides its own node.
    pub fn sessions(&self) -> watch::Receiver<u64> {
        self.sessions.subscribe()
    }

    /// Records that the node records `ids` changed (call before [`Wake::publish`], so a reader
    /// woken by it finds them).
    pub fn nodes_changed(&self, ids: HashSet<String>) {
        if ids.is_empty() {
            return;
        }
        let mut records = self.node_records.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kept) = records.as_mut() {
            kept.extend(ids);
            if kept.len() > MAX_NODE_CHANGES {
                *records = None;
            }
        }
    }

    /// Records that every node record may have changed (a whole new state).
    pub fn all_nodes_changed(&self) {
        *self.node_records.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The node records changed since the last call (`None`: all of them, as on the first
    /// call).
    pub fn take_node_changes(&self) -> Option<HashSet<String>> {
        let mut records = self.node_records.lock().unwrap_or_else(|p| p.into_inner());
        records.replace(HashSet::new())
    }

    /// Wakes the sessions of `changed` nodes; the receivers of [`Wake::others`] when `others`,
    /// and of [`Wake::sessions`] (every session) when `sessions`.
    pub fn publish(&self, changed: HashSet<String>, others: bool, sessions: bool) {
        if !changed.is_empty() {
            let nodes = self.nodes.lock().unwrap_or_else(|p| p.into_inner());
            for id in &changed {
                if let Some(n) = nodes.get(id) {
                    n.notify_one();
                }
            }
        }
        if others {
            self.others.send_modify(|n| *n = n.wrapping_add(1));
        }
        if sessions {
            self.sessions.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn woken(n: &Notify) -> bool {
        tokio::time::timeout(Duration::from_millis(50), n.notified())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn only_the_changed_nodes_are_woken_and_a_wake_up_before_the_wait_is_kept() {
        let w = Wake::default();
        let a = w.node("a");
        let b = w.node("b");
        // Published while nobody waits: kept for the next wait.
        w.publish(HashSet::from(["a".to_string()]), false, false);
        assert!(woken(&a).await);
        assert!(!woken(&b).await);
        assert!(!woken(&a).await, "one change, one wake-up");
        // A change beyond tasks reaches every receiver.
        let mut others = w.others();
        let mut sessions = w.sessions();
        w.publish(HashSet::new(), true, true);
        assert!(others.has_changed().unwrap() && sessions.has_changed().unwrap());
        others.borrow_and_update();
        sessions.borrow_and_update();
        w.publish(HashSet::from(["b".to_string()]), false, false);
        assert!(!others.has_changed().unwrap() && !sessions.has_changed().unwrap());
        assert!(woken(&b).await);
        // A change of node records only: the orchestrator looks again, the sessions do not.
        w.publish(HashSet::from(["a".to_string()]), true, false);
        assert!(others.has_changed().unwrap());
        assert!(!sessions.has_changed().unwrap());
        assert!(woken(&a).await && !woken(&b).await);
    }

    #[test]
    fn changed_node_records_are_gathered_until_read_and_all_at_first_or_when_too_many() {
        let w = Wake::default();
        w.nodes_changed(HashSet::from(["a".to_string()]));
        assert_eq!(
            w.take_node_changes(),
            None,
            "the first read is of every node"
        );
        assert_eq!(w.take_node_changes(), Some(HashSet::new()));
        w.nodes_changed(HashSet::from(["a".to_string()]));
        w.nodes_changed(HashSet::from(["b".to_string(), "a".to_string()]));
        let both = HashSet::from(["a".to_string(), "b".to_string()]);
        assert_eq!(w.take_node_changes(), Some(both));
        w.all_nodes_changed();
        w.nodes_changed(HashSet::from(["c".to_string()]));
        assert_eq!(w.take_node_changes(), None);
        let many: HashSet<String> = (0..=MAX_NODE_CHANGES).map(|i| i.to_string()).collect();
        w.nodes_changed(many);
        assert_eq!(w.take_node_changes(), None, "too many to keep: all of them");
    }

    #[tokio::test]
    async fn entries_of_ended_sessions_are_forgotten() {
        let w = Wake::default();
        drop(w.node("gone"));
        let _kept = w.node("kept");
        let _again = w.node("other");
        let nodes = w.nodes.lock().unwrap();
        assert!(!nodes.contains_key("gone"));
        assert!(nodes.contains_key("kept") && nodes.contains_key("other"));
    }
}
