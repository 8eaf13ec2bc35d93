//! Revocation on the wire: the set of revoked node IDs, a client-certificate verifier that
//! refuses them during the handshake (rustls sends the `certificate_revoked` alert), and a
//! kill switch on every live connection so a revocation also ends the connections a node
//! already has.
//!
//! ```text
//!  state.revoked changes ─► Revocations::set(ids) ─► new handshakes: RevokingVerifier refuses
//!                                                 └► live connections of those nodes: killed
//!                                                    (their next read or write fails at once)
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Waker;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use skep_pki::NodeCertInfo;

/// A live connection: its number and kill switch.
type Tracked = (u64, Weak<Kill>);

/// The revoked node IDs this process enforces, and the live connections it may have to cut.
#[derive(Default)]
pub struct Revocations {
    revoked: ArcSwap<HashSet<String>>,
    live: Mutex<HashMap<String, Vec<Tracked>>>,
    next: AtomicU64,
}

impl std::fmt::Debug for Revocations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Revocations")
            .field("revoked", &self.revoked.load().len())
            .finish()
    }
}

impl Revocations {
    /// An empty list.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Whether `node_id` is revoked.
    pub fn is_revoked(&self, node_id: &str) -> bool {
        self.revoked.load().contains(node_id)
    }

    /// Replaces the revoked set and kills every live connection of a node in it. Returns how
    /// many connections were cut.
    pub fn set(&self, ids: HashSet<String>) -> usize {
        let added: Vec<String> = {
            let old = self.revoked.load();
            ids.difference(&old).cloned().collect()
        };
        self.revoked.store(Arc::new(ids));
        let doomed: Vec<Tracked> = {
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            added
                .iter()
                .flat_map(|id| live.remove(id).unwrap_or_default())
                .collect()
        };
        kill_tracked(doomed)
    }

    /// Cuts every live connection this process tracks (revoked or not), so that peers
    /// reconnect to whatever now serves this address (a node that changed role). Returns how
    /// many were cut.
    pub fn cut_all(&self) -> usize {
        let doomed: Vec<Tracked> = {
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            live.drain().flat_map(|(_, v)| v).collect()
        };
        kill_tracked(doomed)
    }

    /// Registers a live connection of `node_id`; returns its kill switch, already thrown if
    /// the node is revoked. The registration ends when the switch is dropped.
    pub fn track(self: &Arc<Self>, node_id: &str) -> Arc<Kill> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let kill = Arc::new(Kill {
            flag: AtomicBool::new(false),
            wakers: Mutex::new([None, None]),
            owner: Arc::downgrade(self),
            node_id: node_id.to_string(),
            id,
        });
        {
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            live.entry(node_id.to_string())
                .or_default()
                .push((id, Arc::downgrade(&kill)));
        }
        // Checked after registering: a revocation between the two is not missed.
        if self.is_revoked(node_id) {
            kill.kill();
        }
        kill
    }

    /// Number of live connections tracked for `node_id`.
    #[cfg(test)]
    fn live_connections(&self, node_id: &str) -> usize {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node_id)
            .map_or(0, |v| {
                v.iter().filter(|(_, k)| k.strong_count() > 0).count()
            })
    }
}

/// A connection's kill switch: once thrown, reads and writes fail and the tasks waiting on
/// them are woken.
pub struct Kill {
    flag: AtomicBool,
    /// Wakers of the last read and the last write poll.
    wakers: Mutex<[Option<Waker>; 2]>,
    owner: Weak<Revocations>,
    node_id: String,
    id: u64,
}

impl std::fmt::Debug for Kill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kill")
            .field("node_id", &self.node_id)
            .field("killed", &self.is_killed())
            .finish()
    }
}

/// Which side of a stream a waker belongs to.
#[derive(Clone, Copy)]
pub enum Side {
    /// `poll_read`.
    Read = 0,
    /// `poll_write`, `poll_flush`, `poll_shutdown`.
    Write = 1,
}

impl Kill {
    /// Throws the switch.
    pub fn kill(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|p| p.into_inner()));
        for w in wakers.into_iter().flatten() {
            w.wake();
        }
    }

    /// Whether it was thrown.
    pub fn is_killed(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Called at the start of each poll: an error if killed, else remembers the waker so a
    /// kill wakes the poller.
    pub fn check(&self, side: Side, waker: &Waker) -> std::io::Result<()> {
        if self.is_killed() {
            return Err(revoked_error());
        }
        let mut w = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut w[side as usize];
        if !slot.as_ref().is_some_and(|old| old.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
        drop(w);
        // A kill between the first check and storing the waker would be missed otherwise.
        if self.is_killed() {
            return Err(revoked_error());
        }
        Ok(())
    }
}

/// Throws the switches of connections no longer registered; outside the registry's lock,
/// since dropping the last reference to a switch takes that lock.
fn kill_tracked(doomed: Vec<Tracked>) -> usize {
    let mut cut = 0;
    for (_, k) in doomed {
        if let Some(k) = k.upgrade() {
            k.kill();
            cut += 1;
        }
    }
    cut
}

impl Drop for Kill {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.upgrade() {
            let mut live = owner.live.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(v) = live.get_mut(&self.node_id) {
                v.retain(|(id, _)| *id != self.id);
                if v.is_empty() {
                    live.remove(&self.node_id);
                }
            }
        }
    }
}

fn revoked_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "the peer's certificate was revoked",
    )
}

/// A client-certificate verifier that refuses revoked nodes after the usual chain checks.
#[derive(Debug)]
pub struct RevokingVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revocations: Arc<Revocations>,
}

impl RevokingVerifier {
    /// Wraps `inner` (the cluster-root verifier).
    pub fn new(inner: Arc<dyn ClientCertVerifier>, revocations: Arc<Revocations>) -> Self {
        RevokingVerifier { inner, revocations }
    }
}

impl ClientCertVerifier for RevokingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let key = match NodeCertInfo::from_der(end_entity) {
            Ok(info) => info.node_id,
            Err(e) => match skep_pki::OperatorCertInfo::from_der(end_entity) {
                Ok(op) => crate::store::model::operator_key(&op.name),
                Err(_) => {
                    return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                        rustls::OtherError(Arc::new(e)),
                    )));
                }
            },
        };
        if self.revocations.is_revoked(&key) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_kills_live_connections_and_forgets_them() {
        let r = Revocations::new();
        let a1 = r.track("a");
        let a2 = r.track("a");
        let b = r.track("b");
        assert_eq!(r.live_connections("a"), 2);
        let waker = std::task::Waker::noop();
        assert!(a1.check(Side::Read, waker).is_ok());
        assert_eq!(r.set(HashSet::from(["a".to_string()])), 2);
        assert!(a1.is_killed() && a2.is_killed() && !b.is_killed());
        assert!(a1.check(Side::Write, waker).is_err());
        assert!(b.check(Side::Read, waker).is_ok());
        // A new connection of a revoked node is born killed.
        assert!(r.track("a").is_killed());
        drop(b);
        assert_eq!(r.live_connections("b"), 0);
        // Setting the same set again cuts nothing more.
        assert_eq!(r.set(HashSet::from(["a".to_string()])), 0);
    }
}
