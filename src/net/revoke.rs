//! Revocation on the wire: the set of revoked node IDs and the certificate serial each node
//! holds now, a client-certificate verifier that refuses revoked nodes and replaced
//! certificates during the handshake (rustls sends the `certificate_revoked` alert, or
//! `bad_certificate` for a replaced one), and a kill switch on every live connection so a
//! revocation or a renewal also ends the connections made with what no longer counts.
//!
//! ```text
//!  state.revoked changes ─► Revocations::set(ids) ─► new handshakes: RevokingVerifier refuses
//!                                                 └► live connections of those nodes: killed
//!                                                    (their next read or write fails at once)
//!  a node's cert_serial changes ─► Revocations::sync_changed(the nodes entries changed)
//!                                  ─► the same, for connections made with an older
//!                                  certificate of that node (cut after RENEWAL_GRACE: the
//!                                  renewal's answer is on one)
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

/// The certificate the swarm's state holds for a node now (`Node.cert_serial`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Current {
    /// Serial number, lower-case hex.
    pub serial: String,
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

impl Current {
    /// The state's record of a certificate: its serial, and its end of validity in RFC 3339
    /// (unreadable: never ending, so no later certificate counts as a renewal of it).
    fn of(serial: &str, not_after: &str) -> Current {
        Current {
            serial: serial.to_string(),
            not_after: crate::util::parse_rfc3339(not_after)
                .map_or(i64::MAX, |t| t.unix_timestamp()),
        }
    }
}

/// Whether a node certificate (`serial`, ending at `not_after`, Unix seconds) has been
/// replaced by `current`: another serial that ends no earlier. A certificate ending later
/// than the one the state knows is a renewal this process has not applied yet (the state
/// learns a serial when the renewal commits, a lagging manager a moment later), not an old
/// one, so it is accepted; the state's serial unknown (empty) replaces nothing.
pub fn replaced(current: Option<&Current>, serial: &str, not_after: i64) -> bool {
    current.is_some_and(|c| !c.serial.is_empty() && c.serial != serial && not_after <= c.not_after)
}

/// How long connections made with a certificate a renewal replaced are kept after the state
/// learns the new serial: long enough for the renewal's answer to reach the node, which then
/// reconnects with its new certificate. New handshakes with the old one are refused at once.
pub const RENEWAL_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Why a node certificate with a valid chain is refused.
#[derive(thiserror::Error)]
pub enum Refusal {
    /// The node was removed (or left) and its identity revoked.
    #[error("node {0} has been removed from the swarm and its certificate revoked")]
    Revoked(String),
    /// Another certificate of the node has replaced this one.
    #[error(
        "node {node}'s certificate {serial} has been replaced by a renewal (the swarm holds {current}); only a node's current certificate is accepted"
    )]
    Replaced {
        /// The node.
        node: String,
        /// The presented certificate's serial.
        serial: String,
        /// The serial the swarm holds.
        current: String,
    },
}

/// As its message: rustls puts the `Debug` form of a verifier's error into the handshake
/// failure that the daemon audits.
impl std::fmt::Debug for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The revoked node IDs and current certificates this process enforces, and the live
/// connections it may have to cut.
#[derive(Default)]
pub struct Revocations {
    revoked: ArcSwap<HashSet<String>>,
    /// Changed in place, entry by entry ([`Revocations::sync_current`]): a swarm of
    /// thousands of nodes is not copied for each node that joins or renews.
    current: std::sync::RwLock<HashMap<String, Current>>,
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

    /// Why the certificate `serial` of `node_id`, ending at `not_after` (Unix seconds), is
    /// refused, if it is.
    pub fn refusal(&self, node_id: &str, serial: &str, not_after: i64) -> Option<Refusal> {
        if self.is_revoked(node_id) {
            return Some(Refusal::Revoked(node_id.to_string()));
        }
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        let now = current.get(node_id);
        replaced(now, serial, not_after).then(|| Refusal::Replaced {
            node: node_id.to_string(),
            serial: serial.to_string(),
            current: now.map(|c| c.serial.clone()).unwrap_or_default(),
        })
    }

    /// Brings the certificates nodes hold now up to `nodes` (node ID, serial, end of validity
    /// in RFC 3339), `count` of them, `has` saying whether a node is one of them. Only an entry
    /// whose serial differs is read and replaced (a renewal changes the serial: the end of
    /// validity is compared only then), and gone nodes are looked for only when the count
    /// differs, so a call that changes nothing costs one pass of comparisons and allocates
    /// nothing: the managers call it at start and after a whole new state, and
    /// [`Revocations::sync_changed`] for the nodes each entry changed. Returns the live
    /// connections made with a certificate one of them replaced, for
    /// [`Revocations::cut_replaced`] after [`RENEWAL_GRACE`]: the renewal's own answer travels
    /// on one of them.
    pub fn sync_current<'a>(
        &self,
        nodes: impl Iterator<Item = (&'a str, &'a str, &'a str)>,
        count: usize,
        has: impl Fn(&str) -> bool,
    ) -> Vec<Arc<Kill>> {
        let changed: Vec<(String, Current)> = {
            let known = self.current.read().unwrap_or_else(|p| p.into_inner());
            nodes
                .filter(|(id, serial, _)| known.get(*id).is_none_or(|c| c.serial != *serial))
                .map(|(id, serial, not_after)| (id.to_string(), Current::of(serial, not_after)))
                .collect()
        };
        {
            let mut known = self.current.write().unwrap_or_else(|p| p.into_inner());
            for (id, c) in &changed {
                known.insert(id.clone(), c.clone());
            }
            // Every node is in now: more entries than nodes are gone nodes'.
            if known.len() != count {
                known.retain(|id, _| has(id));
            }
        }
        let ids: Vec<String> = changed.into_iter().map(|(id, _)| id).collect();
        self.replaced_connections(&ids)
    }

    /// As [`Revocations::sync_current`], for the nodes of `changed` only (node ID, and the
    /// node's serial and end of validity in RFC 3339 if the state still holds it): what an
    /// entry changed costs what it changed, not a pass over every node.
    pub fn sync_changed<'a>(
        &self,
        changed: impl Iterator<Item = (&'a str, Option<(&'a str, &'a str)>)>,
    ) -> Vec<Arc<Kill>> {
        let mut replaced: Vec<String> = Vec::new();
        {
            let mut known = self.current.write().unwrap_or_else(|p| p.into_inner());
            for (id, now) in changed {
                match now {
                    None => {
                        known.remove(id);
                    }
                    Some((serial, _)) if known.get(id).is_some_and(|c| c.serial == serial) => {}
                    Some((serial, not_after)) => {
                        known.insert(id.to_string(), Current::of(serial, not_after));
                        replaced.push(id.to_string());
                    }
                }
            }
        }
        self.replaced_connections(&replaced)
    }

    /// The live connections of `nodes` whose certificate is refused now.
    fn replaced_connections(&self, nodes: &[String]) -> Vec<Arc<Kill>> {
        let candidates: Vec<Arc<Kill>> = {
            let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            nodes
                .iter()
                .flat_map(|id| live.get(id).into_iter().flatten())
                .filter_map(|(_, k)| k.upgrade())
                .collect()
        };
        candidates.into_iter().filter(|k| self.refuses(k)).collect()
    }

    /// Cuts those of `connections` whose certificate is (still) refused. Returns how many.
    pub fn cut_replaced(&self, connections: Vec<Arc<Kill>>) -> usize {
        let mut cut = 0;
        for k in connections {
            if self.refuses(&k) {
                k.kill();
                cut += 1;
            }
        }
        cut
    }

    fn refuses(&self, k: &Kill) -> bool {
        match &k.cert {
            Some((serial, not_after)) => self.refusal(&k.node_id, serial, *not_after).is_some(),
            None => self.is_revoked(&k.node_id),
        }
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

    /// Registers a live connection of `node_id` (made with the node certificate `cert`:
    /// serial, end of validity in Unix seconds); returns its kill switch, already thrown if
    /// the node is revoked or the certificate replaced. The registration ends when the switch
    /// is dropped.
    pub fn track(self: &Arc<Self>, node_id: &str, cert: Option<(&str, i64)>) -> Arc<Kill> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let kill = Arc::new(Kill {
            flag: AtomicBool::new(false),
            wakers: Mutex::new([None, None]),
            owner: Arc::downgrade(self),
            node_id: node_id.to_string(),
            cert: cert.map(|(s, n)| (s.to_string(), n)),
            id,
        });
        {
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            live.entry(node_id.to_string())
                .or_default()
                .push((id, Arc::downgrade(&kill)));
        }
        // Checked after registering: a revocation or renewal between the two is not missed.
        let refused = match cert {
            Some((serial, not_after)) => self.refusal(node_id, serial, not_after).is_some(),
            None => self.is_revoked(node_id),
        };
        if refused {
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
    /// The node certificate's serial and end of validity (Unix seconds), if it is one.
    cert: Option<(String, i64)>,
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
        let refusal = match NodeCertInfo::from_der(end_entity) {
            Ok(info) => self.revocations.refusal(
                &info.node_id,
                &info.serial,
                info.not_after.unix_timestamp(),
            ),
            Err(e) => match skep_pki::OperatorCertInfo::from_der(end_entity) {
                Ok(op) => {
                    let key = skep_pki::operator_revocation_key(&op.name);
                    self.revocations
                        .is_revoked(&key)
                        .then_some(Refusal::Revoked(key))
                }
                Err(_) => {
                    return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                        rustls::OtherError(Arc::new(e)),
                    )));
                }
            },
        };
        match refusal {
            None => Ok(ok),
            Some(Refusal::Revoked(_)) => {
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            }
            Some(r) => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(r)),
            ))),
        }
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

    fn cur(serial: &str, not_after: i64) -> Current {
        Current {
            serial: serial.into(),
            not_after,
        }
    }

    #[test]
    fn only_an_older_certificate_than_the_states_is_replaced() {
        let c = cur("0b", 100);
        assert!(!replaced(Some(&c), "0b", 100), "the current one");
        assert!(replaced(Some(&c), "0a", 90), "an older one");
        assert!(
            replaced(Some(&c), "0a", 100),
            "another one ending at the same time"
        );
        assert!(
            !replaced(Some(&c), "0c", 110),
            "a renewal not applied here yet"
        );
        assert!(
            !replaced(None, "0a", 90),
            "a node this process does not know"
        );
        assert!(
            !replaced(Some(&cur("", 100)), "0a", 90),
            "no serial on record"
        );
    }

    #[test]
    fn a_renewal_kills_the_connections_of_the_old_certificate_only() {
        let r = Revocations::new();
        let t100 = "1970-01-01T00:01:40Z";
        let t200 = "1970-01-01T00:03:20Z";
        r.sync_current([("a", "01", t100)].into_iter(), 1, |_| true);
        let old = r.track("a", Some(("01", 100)));
        let newer = r.track("a", Some(("02", 200)));
        assert!(!old.is_killed() && !newer.is_killed());
        let doomed = r.sync_current([("a", "02", t200)].into_iter(), 1, |_| true);
        assert_eq!(doomed.len(), 1);
        assert!(!old.is_killed(), "cut only after the grace");
        assert_eq!(r.cut_replaced(doomed), 1);
        assert!(old.is_killed() && !newer.is_killed());
        // A new connection with the old certificate is born killed.
        assert!(r.track("a", Some(("01", 100))).is_killed());
        assert!(matches!(
            r.refusal("a", "01", 100),
            Some(Refusal::Replaced { .. })
        ));
        assert!(r.refusal("a", "02", 200).is_none());
    }

    #[test]
    fn only_changed_entries_are_replaced_and_gone_nodes_are_dropped() {
        let r = Revocations::new();
        let (t100, t200) = ("1970-01-01T00:01:40Z", "1970-01-01T00:03:20Z");
        r.sync_current(
            [("a", "01", t100), ("b", "01", t100)].into_iter(),
            2,
            |_| true,
        );
        // The same serial with another end: not read again (a renewal changes the serial).
        r.sync_current(
            [("a", "01", t200), ("b", "01", t100)].into_iter(),
            2,
            |_| true,
        );
        assert!(r.refusal("a", "00", 100).is_some(), "a's end is still 100");
        assert!(r.refusal("a", "00", 150).is_none());
        // b is gone: its entry goes, and nothing of it is refused as replaced.
        r.sync_current([("a", "01", t100)].into_iter(), 1, |id| id == "a");
        assert!(
            r.refusal("b", "00", 50).is_none(),
            "b's entry is still there"
        );
        assert!(r.refusal("a", "00", 50).is_some());
        // One gone and one new at once (the count alone does not tell).
        r.sync_current([("c", "01", t100)].into_iter(), 1, |id| id == "c");
        assert!(
            r.refusal("a", "00", 50).is_none(),
            "a's entry is still there"
        );
        assert!(r.refusal("c", "00", 50).is_some());
    }

    #[test]
    fn the_nodes_an_entry_changed_are_brought_up_to_date_alone() {
        let r = Revocations::new();
        let (t100, t200) = ("1970-01-01T00:01:40Z", "1970-01-01T00:03:20Z");
        r.sync_current(
            [("a", "01", t100), ("b", "01", t100)].into_iter(),
            2,
            |_| true,
        );
        let old = r.track("a", Some(("01", 100)));
        let b = r.track("b", Some(("01", 100)));
        // a renewed: its old connection is doomed, b's is not looked at.
        let doomed = r.sync_changed([("a", Some(("02", t200)))].into_iter());
        assert_eq!(doomed.len(), 1);
        assert_eq!(r.cut_replaced(doomed), 1);
        assert!(old.is_killed() && !b.is_killed());
        assert!(r.track("a", Some(("01", 100))).is_killed());
        // The same serial again changes nothing.
        assert!(
            r.sync_changed([("a", Some(("02", t200)))].into_iter())
                .is_empty()
        );
        // b removed: its entry goes (nothing of it is refused as replaced any more); c joined.
        r.sync_changed([("b", None), ("c", Some(("01", t100)))].into_iter());
        assert!(r.refusal("b", "00", 50).is_none());
        assert!(r.refusal("c", "00", 50).is_some());
    }

    #[test]
    fn a_revocation_kills_live_connections_and_forgets_them() {
        let r = Revocations::new();
        let a1 = r.track("a", None);
        let a2 = r.track("a", Some(("01", 100)));
        let b = r.track("b", None);
        assert_eq!(r.live_connections("a"), 2);
        let waker = std::task::Waker::noop();
        assert!(a1.check(Side::Read, waker).is_ok());
        assert_eq!(r.set(HashSet::from(["a".to_string()])), 2);
        assert!(a1.is_killed() && a2.is_killed() && !b.is_killed());
        assert!(a1.check(Side::Write, waker).is_err());
        assert!(b.check(Side::Read, waker).is_ok());
        // A new connection of a revoked node is born killed.
        assert!(r.track("a", None).is_killed());
        drop(b);
        assert_eq!(r.live_connections("b"), 0);
        // Setting the same set again cuts nothing more.
        assert_eq!(r.set(HashSet::from(["a".to_string()])), 0);
    }
}
