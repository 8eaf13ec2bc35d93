//! What a manager that was made the single manager of its swarm writes first:
//! `swarm init --force-new-cluster` (from its own store) and `swarm restore` (from a backup).
//!
//! Every other manager is revoked and removed, as `node rm` would after a demotion: their
//! Raft votes are gone with the old membership, and their certificates are refused from the
//! recovery on, so a former manager that comes back cannot rejoin the Raft group or serve
//! workers until it is cleared and joined again. The recovery itself is one audit record,
//! in the same commit, naming what was removed and where the state came from.

use super::{Manager, ManagerError};
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::store::model::{Command, Node, NodeRole, NodeState, State};

/// How this manager came to be the only one.
#[derive(Clone, Debug)]
pub enum Recovery {
    /// `swarm init --force-new-cluster`: from its own store.
    ForceNewCluster {
        /// The last log index the old store held.
        last_index: u64,
        /// Entries applied that the old store had not applied (held but not known committed).
        replayed: u64,
    },
    /// `swarm restore`: from a backup file.
    Restore {
        /// The Raft index the backup's state was taken at.
        backup_index: u64,
        /// When the backup was made (RFC 3339).
        backup_created: String,
        /// The manager that made it.
        backup_node: String,
        /// The audit chain head the backup holds: seq and hash.
        head_seq: u64,
        /// Its hash.
        head_hash: String,
        /// SHA-256 of the backup file, hex.
        file_digest: String,
        /// The operator accepted that the backup is older than a checkpoint they verified.
        rollback: bool,
    },
}

/// The commands that make `me` (at `addr`) the only manager of `state`: every other manager
/// revoked and removed, `me` a ready manager at `addr`, and one audit record of the recovery.
/// `me` must be a node of `state` (a restore adds its node first).
pub fn commands(
    state: &State,
    me: &Node,
    actor: Actor,
    how: &Recovery,
    now: time::OffsetDateTime,
) -> Vec<Command> {
    let cert_expiry = state.cluster.as_ref().map_or(0, |c| c.cert_expiry_secs);
    let mut cmds = Vec::new();
    let mut removed = Vec::new();
    for n in state
        .nodes
        .values()
        .filter(|n| n.role == NodeRole::Manager && n.id != me.id)
    {
        removed.push(n.id.clone());
        cmds.push(Command::RevokeNode {
            id: n.id.clone(),
            entry: super::control::revocation(n, cert_expiry, now),
        });
        cmds.push(Command::RemoveNode { id: n.id.clone() });
    }
    let mut node = me.clone();
    node.role = NodeRole::Manager;
    node.state = NodeState::Ready;
    node.updated_at = crate::util::rfc3339(now);
    cmds.push(Command::PutNode(node));
    let cluster = state.cluster.as_ref().map_or("", |c| c.id.as_str());
    let head = state.audit.head();
    let event = match how {
        Recovery::ForceNewCluster {
            last_index,
            replayed,
        } => AuditEvent::now(actor, "cluster.force_new_cluster", cluster, Outcome::Ok)
            .with("last_index", last_index.to_string())
            .with("replayed_entries", replayed.to_string()),
        Recovery::Restore {
            backup_index,
            backup_created,
            backup_node,
            head_seq,
            head_hash,
            file_digest,
            rollback,
        } => AuditEvent::now(actor, "cluster.restore", cluster, Outcome::Ok)
            .with("backup_index", backup_index.to_string())
            .with("backup_created", backup_created.clone())
            .with("backup_node", backup_node.clone())
            .with("backup_head_seq", head_seq.to_string())
            .with("backup_head_hash", head_hash.clone())
            .with("backup_sha256", file_digest.clone())
            .with("rollback", rollback.to_string()),
    };
    let event = event
        .with("manager", me.id.clone())
        .with("addr", me.addr.clone())
        .with("removed_managers", removed.join(","))
        .with(
            "chain_head_seq",
            head.map_or_else(|| "0".to_string(), |h| h.seq.to_string()),
        );
    cmds.push(Command::Audit(event));
    cmds
}

impl Manager {
    /// Commits the recovery ([`commands`]) once this manager leads its cluster of one.
    pub async fn finish_recovery(&self, actor: Actor, how: &Recovery) -> Result<(), ManagerError> {
        let me = self
            .read(|s| s.nodes.get(&self.node_id).cloned())
            .ok_or_else(|| {
                ManagerError::Invalid(format!(
                    "this manager's node {} is not in the recovered state",
                    self.node_id
                ))
            })?;
        let mut me = me;
        me.addr = self.addr.clone();
        let cmds = self.read(|s| commands(s, &me, actor, how, time::OffsetDateTime::now_utc()));
        self.propose(Command::Batch(cmds)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures;

    fn node(id: &str, role: NodeRole) -> Node {
        Node {
            role,
            state: NodeState::Down,
            addr: format!("10.0.0.{}:2377", id.len()),
            cert_serial: format!("serial-{id}"),
            cert_not_after: "2999-01-01T00:00:00Z".into(),
            ..fixtures::node(id)
        }
    }

    fn state() -> State {
        let mut s = State::default();
        for (id, role) in [
            ("m1", NodeRole::Manager),
            ("m2", NodeRole::Manager),
            ("m3", NodeRole::Manager),
            ("w1", NodeRole::Worker),
        ] {
            let _ = s.apply(Command::PutNode(node(id, role)));
        }
        s
    }

    #[test]
    fn every_other_manager_is_revoked_and_removed_and_workers_are_kept() {
        let mut s = state();
        let mut me = s.nodes["m1"].clone();
        me.addr = "10.9.9.9:4242".into();
        let cmds = commands(
            &s,
            &me,
            Actor::system(),
            &Recovery::ForceNewCluster {
                last_index: 40,
                replayed: 2,
            },
            time::OffsetDateTime::now_utc(),
        );
        for c in cmds {
            let _ = s.apply(c);
        }
        let ids: Vec<&str> = s.nodes.keys().map(String::as_str).collect();
        assert_eq!(ids, ["m1", "w1"]);
        assert!(s.revoked.contains_key("m2") && s.revoked.contains_key("m3"));
        assert!(!s.revoked.contains_key("m1") && !s.revoked.contains_key("w1"));
        assert_eq!(s.nodes["m1"].state, NodeState::Ready);
        assert_eq!(s.nodes["m1"].addr, "10.9.9.9:4242");
        let head = s.audit.head().unwrap();
        assert_eq!(head.event.action, "cluster.force_new_cluster");
        assert_eq!(
            head.event
                .details
                .get("removed_managers")
                .map(String::as_str),
            Some("m2,m3")
        );
    }

    #[test]
    fn a_restore_records_where_the_state_came_from() {
        let mut s = state();
        let me = s.nodes["m2"].clone();
        let cmds = commands(
            &s,
            &me,
            Actor::system(),
            &Recovery::Restore {
                backup_index: 7,
                backup_created: "2026-12-01T00:00:00Z".into(),
                backup_node: "m1".into(),
                head_seq: 3,
                head_hash: "abc".into(),
                file_digest: "f00".into(),
                rollback: false,
            },
            time::OffsetDateTime::now_utc(),
        );
        for c in cmds {
            let _ = s.apply(c);
        }
        let head = s.audit.head().unwrap();
        assert_eq!(head.event.action, "cluster.restore");
        assert_eq!(
            head.event.details.get("backup_sha256").map(String::as_str),
            Some("f00")
        );
        assert_eq!(
            s.nodes.keys().map(String::as_str).collect::<Vec<_>>(),
            ["m2", "w1"]
        );
    }
}
