//! What `skep info` and `skep version` show of this daemon: its build, and a manager's view
//! of the swarm (as `docker info`'s Swarm section).

use crate::api::v1::{InfoResponse, VersionResponse};
use crate::manager::Manager;
use crate::store::model::NodeRole;

/// This build's version, the Control API it speaks, and the platform.
pub(super) fn version() -> VersionResponse {
    VersionResponse {
        version: env!("CARGO_PKG_VERSION").into(),
        api_version: crate::api::API_VERSION.into(),
        min_api_version: crate::api::MIN_API_VERSION.into(),
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
    }
}

/// A manager's part of `info`: the swarm from its own copy of the state (no read barrier:
/// `info` must answer on a manager that lost its quorum, and says what Raft knows).
pub(super) fn fill_manager(resp: &mut InfoResponse, m: &Manager) {
    m.read(|s| {
        resp.nodes = u32::try_from(s.nodes.len()).unwrap_or(u32::MAX);
        resp.managers = u32::try_from(
            s.nodes
                .values()
                .filter(|n| n.role == NodeRole::Manager)
                .count(),
        )
        .unwrap_or(u32::MAX);
        if let Some(c) = &s.cluster {
            resp.autolock = c.autolock;
            resp.cert_expiry_secs = c.cert_expiry_secs;
            resp.heartbeat_period_ms = c.heartbeat_period_ms;
            resp.ca_rotation_in_progress = c.ca_rotation.is_some();
            resp.trust_domain = c.trust_domain.clone();
            resp.created_at = c.created_at.clone();
            resp.ca_not_after = not_after_of_pem(&c.ca_cert_pem);
        }
    });
    let metrics = m.raft.metrics().borrow().clone();
    resp.raft_term = metrics.current_term;
    resp.raft_leader = metrics.current_leader.unwrap_or(0);
    resp.raft_last_log_index = metrics.last_log_index.unwrap_or(0);
    resp.raft_applied_index = metrics.last_applied.map(|l| l.index).unwrap_or(0);
    resp.raft_id = m.raft_id;
    resp.manager_addrs = m.manager_addrs();
    resp.leader_addr = m.leader_addr().unwrap_or_default();
}

/// The end of validity of the first certificate of a PEM text, RFC 3339 ("" if unreadable).
fn not_after_of_pem(pem: &str) -> String {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .ok()
        .and_then(|(_, p)| {
            p.parse_x509()
                .ok()
                .map(|c| crate::util::rfc3339(c.validity().not_after.to_datetime()))
        })
        .unwrap_or_default()
}
