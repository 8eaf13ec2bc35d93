//! A node's identity from join to renewal to role switch. [`join`] gets the first
//! certificate with a join token; then one task ([`Certify`]) holds the node's key: it renews
//! the certificate, takes the swarm's new trusted roots and publishes the current credentials
//! and role through a `tokio::sync::watch`. The agent tells it what the leader said
//! ([`Handle::learnt`]); the daemon's role switcher and whoever needs the credentials read the
//! watch; the rustls side is [`crate::net::identity::LiveIdentity`], which the task keeps up
//! to date.
//!
//! ```text
//!  agent ──Learnt (roots, renew, address)──► Certify ──swap──► LiveIdentity (every TLS config)
//!                                     │  └──keep──► the node's files (daemon)
//!                                     └──watch: Current (credentials, role, address)──► role switcher
//! ```

mod certify;
pub mod join;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

pub use certify::Certify;

use crate::net::Credentials;
use crate::store::model::NodeRole;

/// Why the identity task could not renew or keep the node's credentials.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// No manager issued a certificate (the last one's answer).
    #[error("{0}")]
    Unavailable(String),
    /// A certificate was issued but refused, or a fresh key could not be made.
    #[error("{0}")]
    Refused(String),
    /// The new credentials could not be used or kept.
    #[error("{0}")]
    Keep(String),
}

/// The node's identity as it is now.
#[derive(Clone)]
pub struct Current {
    /// The credentials every TLS config uses.
    pub creds: Arc<Credentials>,
    /// The role the certificate gives.
    pub role: NodeRole,
    /// Where the swarm reaches this node, as the leader last said (empty until it has).
    pub addr: String,
}

/// What the agent learnt from the leader for the identity task to act on.
#[derive(Debug, Default)]
pub struct Learnt {
    /// Roots to trust from now on (concatenated DER, the issuing root first).
    pub roots: Option<Vec<u8>>,
    /// Renew the certificate now (another role, or another issuing root).
    pub renew: bool,
    /// Where the leader says the swarm reaches this node.
    pub addr: Option<String>,
}

impl Learnt {
    /// Adds what was learnt later: a renewal stays asked for, the latest roots and address
    /// win.
    fn merge(&mut self, later: Learnt) {
        self.renew |= later.renew;
        if later.roots.is_some() {
            self.roots = later.roots;
        }
        if later.addr.is_some() {
            self.addr = later.addr;
        }
    }
}

/// Where the identity task keeps what it changes (the node's files, owned by the daemon).
pub trait Keep: Send + Sync + 'static {
    /// Saves the roots the node trusts from now on.
    fn roots(&self, der: &[u8]) -> Result<(), IdentityError>;
    /// Saves a renewed certificate and its key so that a crash at any point leaves a pair
    /// the node can start with.
    fn credentials(&self, creds: &Credentials) -> Result<(), IdentityError>;
}

/// The way to the identity task: tell it what was learnt, read what it publishes.
#[derive(Clone)]
pub struct Handle {
    learnt: mpsc::UnboundedSender<Learnt>,
    current: watch::Receiver<Current>,
}

impl Handle {
    /// Hands the task what the leader said (it acts at once).
    pub fn learnt(&self, learnt: Learnt) {
        let _ = self.learnt.send(learnt);
    }

    /// The node's identity now.
    pub fn current(&self) -> Current {
        self.current.borrow().clone()
    }

    /// Follows the node's identity: the receiver sees every renewal and change of roots.
    pub fn subscribe(&self) -> watch::Receiver<Current> {
        self.current.clone()
    }
}

/// The role a certificate gives.
pub fn node_role(r: skep_pki::Role) -> NodeRole {
    match r {
        skep_pki::Role::Manager => NodeRole::Manager,
        skep_pki::Role::Worker => NodeRole::Worker,
    }
}

#[cfg(test)]
mod tests {
    use super::Learnt;

    /// Messages queued while the task was busy add up: a renewal asked for once stays asked
    /// for, and the roots and address the leader sent last win.
    #[test]
    fn what_was_learnt_adds_up() {
        let mut l = Learnt {
            roots: Some(vec![1]),
            renew: true,
            addr: Some("10.0.0.1:2377".into()),
        };
        l.merge(Learnt {
            roots: Some(vec![2]),
            renew: false,
            addr: Some("10.0.0.2:2377".into()),
        });
        l.merge(Learnt::default());
        assert!(l.renew);
        assert_eq!(l.roots, Some(vec![2]));
        assert_eq!(l.addr.as_deref(), Some("10.0.0.2:2377"));
    }
}
