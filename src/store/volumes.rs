//! Requests to remove a stack's named volumes from the nodes (`stack rm --volumes`).
//!
//! Volumes live on the nodes, in each node's Docker Engine, so the removal is a request in the
//! replicated state that each node's agent carries out: the leader hands it to an agent with
//! its heartbeats once no service of the stack is left, the agent removes the volumes labelled
//! with the stack's namespace and skep's volume label that no container uses, and reports what
//! it removed; the report is recorded here. A new service of the stack cancels the request, so
//! a volume a redeployed stack uses is never removed under it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The label Docker puts on every object of a stack (re-exported as
/// `crate::stack::NAMESPACE_LABEL`).
pub const NAMESPACE_LABEL: &str = "com.docker.stack.namespace";

/// Most pending requests kept (the oldest goes first).
pub const MAX_REQUESTS: usize = 256;
/// Most volume names one node's report may hold.
pub const MAX_REPORTED: usize = 256;
/// A request older than this (seconds) is dropped when a new one is made: nodes that never came
/// back in a day are not waited for.
pub const REQUEST_TTL_SECS: i64 = 24 * 3600;

/// One stack's request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeRemoval {
    /// RFC 3339 time of the request.
    pub requested_at: String,
    /// What each node that has done it removed (node ID → volume names).
    pub done: BTreeMap<String, Vec<String>>,
}

/// The requests, by stack name.
pub type VolumeRemovals = BTreeMap<String, VolumeRemoval>;

/// A new request for `stack` at `at`: any earlier one is replaced (its reports cleared), old
/// ones are dropped, and the map stays bounded.
pub fn request(map: &mut VolumeRemovals, stack: String, at: String) {
    if let Some(now) = crate::util::parse_rfc3339(&at) {
        map.retain(|_, r| {
            crate::util::parse_rfc3339(&r.requested_at)
                .is_some_and(|t| (now - t).whole_seconds() < REQUEST_TTL_SECS)
        });
    }
    map.insert(
        stack,
        VolumeRemoval {
            requested_at: at,
            done: BTreeMap::new(),
        },
    );
    while map.len() > MAX_REQUESTS {
        let oldest = map
            .iter()
            .min_by(|a, b| a.1.requested_at.cmp(&b.1.requested_at))
            .map(|(k, _)| k.clone());
        match oldest {
            Some(k) => map.remove(&k),
            None => break,
        };
    }
}

/// Records that `node_id` removed `names` for `stack` (ignored without a pending request).
pub fn removed(map: &mut VolumeRemovals, stack: &str, node_id: String, mut names: Vec<String>) {
    if let Some(r) = map.get_mut(stack) {
        names.truncate(MAX_REPORTED);
        r.done.insert(node_id, names);
    }
}
