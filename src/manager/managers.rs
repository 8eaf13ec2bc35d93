//! The managers as every node is told them on each heartbeat (their addresses, and their
//! certificates, which workers accept as servers' and no others): derived from the nodes once
//! per applied entry, not on every heartbeat. Each heartbeat scanned every node twice, so a
//! swarm of N nodes scanned N nodes N times a period.
//!
//! ```text
//!  heartbeat ─► ManagersCache::get(state, applied index) ─► same index: the list made for it
//!                                                        └► else: made again from the nodes
//! ```

use std::sync::{Arc, Mutex};

use crate::api::v1::ManagerCert;
use crate::store::model::{NodeRole, State};

/// The managers of one state.
#[derive(Debug, PartialEq)]
pub struct Managers {
    /// Their advertised addresses, in node ID order.
    pub addrs: Vec<String>,
    /// Their certificates as the swarm holds them.
    pub certs: Vec<ManagerCert>,
}

impl Managers {
    /// The managers among the state's nodes.
    pub fn of(s: &State) -> Managers {
        let managers = || s.nodes.values().filter(|n| n.role == NodeRole::Manager);
        Managers {
            addrs: managers().map(|n| n.addr.clone()).collect(),
            certs: managers()
                .map(|n| ManagerCert {
                    node_id: n.id.clone(),
                    serial: n.cert_serial.clone(),
                    not_after: crate::util::parse_rfc3339(&n.cert_not_after)
                        .map_or(i64::MAX, |t| t.unix_timestamp()),
                })
                .collect(),
        }
    }
}

/// The last [`Managers`] made, with the applied log index of the state it was made from.
#[derive(Default)]
pub struct ManagersCache(Mutex<Option<(u64, Arc<Managers>)>>);

impl ManagersCache {
    /// The managers of `state`, applied up to log index `index`: the list made for that index,
    /// or a new one. Every change to a node is an entry, so a list is never older than the
    /// state it is asked for.
    pub fn get(&self, state: &State, index: u64) -> Arc<Managers> {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, m)) = cache.as_ref()
            && *at == index
        {
            return m.clone();
        }
        let m = Arc::new(Managers::of(state));
        *cache = Some((index, m.clone()));
        m
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::fixtures;
    use crate::store::model::Node;

    fn node(id: &str, role: NodeRole) -> Node {
        Node {
            role,
            addr: format!("{id}:4242"),
            cert_serial: format!("{id}-serial"),
            ..fixtures::node(id)
        }
    }

    #[test]
    fn the_list_follows_every_applied_change_to_a_node_and_is_reused_until_then() {
        let mut s = State::default();
        for (id, role) in [("m1", NodeRole::Manager), ("w1", NodeRole::Worker)] {
            s.nodes.insert(id.into(), node(id, role));
        }
        let cache = ManagersCache::default();
        let first = cache.get(&s, 7);
        assert_eq!(first.addrs, vec!["m1:4242".to_string()]);
        assert_eq!(first.certs.len(), 1);
        assert!(
            Arc::ptr_eq(&first, &cache.get(&s, 7)),
            "made again for the same state"
        );

        // Promoted, demoted, given a new certificate, removed: each an entry, each seen at once.
        s.nodes.get_mut("w1").unwrap().role = NodeRole::Manager;
        let promoted = cache.get(&s, 8);
        assert_eq!(
            promoted.addrs,
            vec!["m1:4242".to_string(), "w1:4242".to_string()]
        );
        s.nodes.get_mut("m1").unwrap().role = NodeRole::Worker;
        let demoted = cache.get(&s, 9);
        assert_eq!(demoted.addrs, vec!["w1:4242".to_string()]);
        assert_eq!(demoted.certs[0].node_id, "w1");
        s.nodes.get_mut("w1").unwrap().cert_serial = "renewed".into();
        assert_eq!(cache.get(&s, 10).certs[0].serial, "renewed");
        assert_eq!(*cache.get(&s, 10), Managers::of(&s));
        // Removed: no longer a manager any worker accepts.
        s.nodes.remove("w1");
        let removed = cache.get(&s, 11);
        assert!(removed.addrs.is_empty() && removed.certs.is_empty());
    }
}
