//! Which node certificates a manager's node services serve: a certificate is worth what the
//! replicated state says about its node now, not what it says about itself. The decision as
//! a function of the state; `Services::require` is its shell (audit, status).
//!
//! - revoked (`node rm`), or a manager that left (`swarm leave`): nothing;
//! - a manager certificate of a node the state makes a worker: no manager call, unless the
//!   node is still a Raft voter (it votes until the leader has taken it out);
//! - a node the state does not list: manager calls only. Every way out of the node list
//!   leaves a revocation behind, so an unknown, unrevoked certificate is of a node that joined
//!   after this manager's copy of the state: a joining manager answers Raft traffic before the
//!   state naming its peers reaches it, and a lagging one must hear a leader that joined after
//!   its copy. Other calls wait until the state lists the node (once this manager has a state).
//!
//! A demoted node is certified (and told it is) a worker only once it is out of the voters
//! ([`certificate_role`]).
//!
//! A certificate a renewal replaced is refused at the handshake (`net::revoke`, the one home
//! of serial binding), its open connections cut after a short grace.

use skep_pki::{NodeCertInfo, Role};

use crate::store::model::{NodeRole, State, left_key};

/// Why the node presenting `cert` may not make a call (`manager_only`: Raft, proposals,
/// membership), if it may not. `is_voter` says whether the node is a Raft voter here.
pub fn refusal(
    s: &State,
    cert: &NodeCertInfo,
    manager_only: bool,
    is_voter: impl FnOnce() -> bool,
) -> Option<String> {
    let id = &cert.node_id;
    if manager_only && cert.role != Role::Manager {
        return Some(format!(
            "node {id} is a {}; this call is for managers only",
            cert.role
        ));
    }
    if s.revoked.contains_key(id) {
        return Some(format!(
            "node {id} has been removed from the swarm and its certificate revoked"
        ));
    }
    let Some(node) = s.nodes.get(id) else {
        // A manager that left is no longer listed (checked only then: no allocation on the
        // heartbeat path).
        if s.revoked.contains_key(&left_key(id)) {
            return Some(format!(
                "node {id} left the swarm; its certificate is no longer accepted"
            ));
        }
        if manager_only || s.cluster.is_none() {
            return None;
        }
        return Some(format!("node {id} is not a member of this swarm"));
    };
    if manager_only && node.role != NodeRole::Manager && !is_voter() {
        return Some(format!(
            "node {id} was demoted to worker; its manager certificate is no longer accepted"
        ));
    }
    None
}

/// The role the leader tells a node's agent (which renews for it when its certificate says
/// otherwise), and the role a renewal certifies: the state's role, except that a demoted node
/// is still a manager while it is a Raft voter here (`is_voter`); a renewal that would
/// certify such a node is refused instead (`Services::renew`), so it stays on the manager
/// certificate it has. A demotion records the role before the membership change that takes
/// the node out; a node certified a worker stops its Raft node, and one that stopped
/// mid-change could leave the other voters a joint membership needing its vote, with no
/// leader possible. Out of the voters here means the joint membership committed and the one
/// without the node appended: the others elect a leader without it.
pub fn certificate_role(role: NodeRole, is_voter: impl FnOnce() -> bool) -> Role {
    match role {
        NodeRole::Manager => Role::Manager,
        NodeRole::Worker if is_voter() => Role::Manager,
        NodeRole::Worker => Role::Worker,
    }
}

/// How a refusal of [`refusal`] counts in the metrics: a revoked node (or one that left), or
/// a role that may not make the call.
pub fn refusal_kind(s: &State, node_id: &str) -> crate::metrics::Refusal {
    if s.revoked.contains_key(node_id) || s.revoked.contains_key(&left_key(node_id)) {
        crate::metrics::Refusal::Revoked
    } else {
        crate::metrics::Refusal::RoleDenied
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretString;
    use crate::store::fixtures;
    use crate::store::model::{Cluster, Node, Revoked};

    fn node(id: &str, role: NodeRole, serial: &str) -> Node {
        Node {
            hostname: id.into(),
            role,
            addr: String::new(),
            cert_serial: serial.into(),
            created_at: String::new(),
            updated_at: String::new(),
            ..fixtures::node(id)
        }
    }

    fn cert(id: &str, role: Role, serial: &str, not_after: &str) -> NodeCertInfo {
        NodeCertInfo {
            node_id: id.into(),
            role,
            cluster_id: "c".into(),
            serial: serial.into(),
            not_before: crate::util::parse_rfc3339("2026-01-01T00:00:00Z").unwrap(),
            not_after: crate::util::parse_rfc3339(not_after).unwrap(),
            public_key_der: vec![],
        }
    }

    fn state() -> State {
        let mut s = State {
            cluster: Some(Cluster {
                id: "c".into(),
                created_at: String::new(),
                ca_cert_pem: String::new(),
                ca_key_pem: SecretString::new(""),
                worker_token: SecretString::new(""),
                manager_token: SecretString::new(""),
                cert_expiry_secs: 60,
                autolock: false,
                unlock_key: None,
                heartbeat_period_ms: 0,
                ca_rotation: None,
                audit_key: None,
                audit_retention: 0,
                secret_history: 0,
                trust_domain: String::new(),
                workload: None,
                svid_ttl_secs: 0,
                oidc_issuer: String::new(),
            }),
            ..Default::default()
        };
        s.nodes
            .insert("m".into(), node("m", NodeRole::Manager, "0a"));
        s.nodes
            .insert("d".into(), node("d", NodeRole::Worker, "0b"));
        s
    }

    const AT: &str = "2030-01-01T00:00:00Z";

    #[test]
    fn a_managers_certificate_is_served() {
        let s = state();
        assert_eq!(
            refusal(&s, &cert("m", Role::Manager, "0a", AT), true, || false),
            None
        );
    }

    #[test]
    fn a_demoted_managers_certificate_makes_no_manager_call_once_out_of_the_voters() {
        let s = state();
        let kept = cert("d", Role::Manager, "0b", AT);
        assert!(
            refusal(&s, &kept, true, || false)
                .unwrap()
                .contains("demoted")
        );
        assert_eq!(refusal(&s, &kept, true, || true), None, "still a voter");
        let worker = cert("d", Role::Worker, "0b", AT);
        assert!(
            refusal(&s, &worker, true, || true)
                .unwrap()
                .contains("managers only")
        );
        assert_eq!(refusal(&s, &worker, false, || false), None);
    }

    #[test]
    fn a_demoted_node_is_certified_a_worker_only_once_out_of_the_voters() {
        assert_eq!(certificate_role(NodeRole::Worker, || true), Role::Manager);
        assert_eq!(certificate_role(NodeRole::Worker, || false), Role::Worker);
        assert_eq!(certificate_role(NodeRole::Manager, || false), Role::Manager);
    }

    #[test]
    fn a_revoked_node_gets_nothing_and_an_unknown_one_only_manager_calls() {
        let mut s = state();
        s.revoked.insert(
            "gone".into(),
            Revoked {
                hostname: "gone".into(),
                at: AT.into(),
                until: AT.into(),
            },
        );
        let gone = cert("gone", Role::Manager, "01", AT);
        assert!(
            refusal(&s, &gone, true, || true)
                .unwrap()
                .contains("revoked")
        );
        s.revoked.insert(
            left_key("left"),
            Revoked {
                hostname: "left".into(),
                at: AT.into(),
                until: AT.into(),
            },
        );
        let left = cert("left", Role::Manager, "01", AT);
        for manager_only in [true, false] {
            let r = refusal(&s, &left, manager_only, || true).unwrap();
            assert!(r.contains("left the swarm"), "{r}");
        }
        let new = cert("new", Role::Manager, "01", AT);
        assert_eq!(refusal(&s, &new, true, || false), None);
        assert!(
            refusal(&s, &new, false, || false)
                .unwrap()
                .contains("not a member")
        );
        s.cluster = None;
        assert_eq!(refusal(&s, &new, false, || false), None, "no state yet");
    }
}
