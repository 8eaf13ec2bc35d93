//! The trust material of a heartbeat answer (the revoked node IDs, the roots to trust, the
//! managers' certificates and the workload bundle): made once per state, and left out of the
//! answer to a node that says it holds it already.
//!
//! ```text
//!  heartbeat(trust_digest) ─► TrustCache::get(index, leader?, bundle) ─► Material + digest
//!                                                    node's digest is it ├► digest, trust_unchanged
//!                                                                  else └► the material, digest
//! ```
//!
//! Each answer carried all of it to every node every period, though it changes seldom and
//! grows: the revoked list by every node removed while its certificate would still be valid,
//! the workload bundle's CRL by every SVID of a task that ended within the SVID lifetime. A
//! node echoes the digest of the material it holds (`HeartbeatRequest.trust_digest`); a
//! manager whose material has that digest sends only the digest. A change of any part
//! changes the digest, so the next answer to every node carries the new material in full.

use std::sync::{Arc, Mutex};

use prost::Message;
use sha2::{Digest, Sha256};

use crate::api::v1::{HeartbeatResponse, ManagerCert, WorkloadBundle};

use super::workload::Bundle;

/// One answer's trust material and its digest.
#[derive(Debug)]
pub struct Material {
    /// A heartbeat answer with only the trust fields set.
    fields: HeartbeatResponse,
    /// SHA-256 of `fields` as encoded.
    digest: Vec<u8>,
}

impl Material {
    /// The material of an answer: a non-leader's has no roots and no workload bundle.
    pub fn new(
        revoked: Vec<String>,
        trust_roots: Vec<u8>,
        managers: Vec<ManagerCert>,
        workload: Option<WorkloadBundle>,
    ) -> Material {
        let fields = HeartbeatResponse {
            revoked,
            trust_roots,
            managers,
            workload,
            ..HeartbeatResponse::default()
        };
        let digest = Sha256::digest(fields.encode_to_vec()).to_vec();
        Material { fields, digest }
    }

    /// Its digest, which nodes echo.
    pub fn digest(&self) -> &[u8] {
        &self.digest
    }

    /// Whether it was made of `parts` (and a workload bundle the caller compares).
    fn holds(&self, parts: &Parts) -> bool {
        self.fields.revoked == parts.revoked
            && self.fields.trust_roots == parts.trust_roots
            && self.fields.managers == parts.managers
    }

    /// Writes the material into `resp`, or, when `known` (what the node echoed) is its
    /// digest, only the digest and `trust_unchanged`.
    pub fn answer(&self, known: &[u8], resp: &mut HeartbeatResponse) {
        resp.trust_digest.clone_from(&self.digest);
        if known == self.digest.as_slice() {
            resp.trust_unchanged = true;
            return;
        }
        resp.revoked.clone_from(&self.fields.revoked);
        resp.trust_roots.clone_from(&self.fields.trust_roots);
        resp.managers.clone_from(&self.fields.managers);
        resp.workload.clone_from(&self.fields.workload);
    }
}

/// The parts of a [`Material`] read from the state, all but the workload bundle: a few
/// hundred bytes to compare, where making the material encodes and hashes all of it, CRL
/// included (hundreds of kilobytes after a rolling update of thousands of tasks).
pub struct Parts {
    /// The revoked node IDs.
    pub revoked: Vec<String>,
    /// The roots to trust (none from a manager that does not lead).
    pub trust_roots: Vec<u8>,
    /// The managers' certificates.
    pub managers: Vec<ManagerCert>,
}

/// What a [`Material`] was made from: the applied state, whether this manager led, and the
/// workload bundle (whose CRL is signed again with time, not only with entries).
struct Key {
    index: u64,
    leader: bool,
    workload: Option<Arc<Bundle>>,
}

impl Key {
    fn same(&self, other: &Key) -> bool {
        self.index == other.index && self.same_but_index(other)
    }

    /// The same leadership and the same workload bundle (by pointer).
    fn same_but_index(&self, other: &Key) -> bool {
        self.leader == other.leader
            && match (&self.workload, &other.workload) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            }
    }
}

/// The last [`Material`] made, and what from.
#[derive(Default)]
pub struct TrustCache(Mutex<Option<(Key, Arc<Material>)>>);

impl TrustCache {
    /// The material for the state applied up to `index`, this manager leading or not, and
    /// the workload bundle `workload`: the one made for them, or, at a new index, the one
    /// made before if `parts` (read from that state) and the bundle are what it was made of;
    /// else a new one. Every change to the revoked list, the roots or the managers is an
    /// entry, so a material is never older than the state it is asked for; and an entry that
    /// changed none of them (most: task reports, updates) costs a comparison of the parts,
    /// not a new material.
    pub fn get(
        &self,
        index: u64,
        leader: bool,
        workload: Option<Arc<Bundle>>,
        parts: impl FnOnce() -> Parts,
    ) -> Arc<Material> {
        let key = Key {
            index,
            leader,
            workload,
        };
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, m)) = cache.as_ref()
            && at.same(&key)
        {
            return m.clone();
        }
        let parts = parts();
        if let Some((at, m)) = cache.as_mut()
            && at.same_but_index(&key)
            && m.holds(&parts)
        {
            at.index = index;
            return m.clone();
        }
        let m = Arc::new(Material::new(
            parts.revoked,
            parts.trust_roots,
            parts.managers,
            key.workload.as_deref().map(Into::into),
        ));
        *cache = Some((key, m.clone()));
        m
    }
}

impl super::Manager {
    /// The trust material of this manager's heartbeat answers now ([`TrustCache`]).
    pub fn trust_material(&self, leader: bool) -> Arc<Material> {
        let index = self
            .state
            .read_applied(|_, applied| applied.map_or(0, |l| l.index));
        let workload = if leader { self.workload_bundle() } else { None };
        self.trust.get(index, leader, workload, || Parts {
            revoked: self.read(|s| s.revoked.keys().cloned().collect()),
            trust_roots: if leader {
                self.trust_bundle().unwrap_or_default()
            } else {
                Vec::new()
            },
            managers: self.managers().certs.clone(),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn material(revoked: &[&str]) -> Material {
        Material::new(
            revoked.iter().map(|s| (*s).to_string()).collect(),
            b"root".to_vec(),
            vec![ManagerCert {
                node_id: "m1".into(),
                serial: "01".into(),
                not_after: 1,
            }],
            None,
        )
    }

    /// A node that echoes the digest gets the digest alone; any other echo (none, an old
    /// digest, a bad one) gets all of it.
    #[test]
    fn a_node_holding_the_material_gets_only_its_digest() {
        let m = material(&["gone"]);
        let mut held = HeartbeatResponse::default();
        m.answer(m.digest(), &mut held);
        assert!(held.trust_unchanged);
        assert_eq!(held.trust_digest, m.digest());
        assert!(held.revoked.is_empty() && held.trust_roots.is_empty());
        assert!(held.managers.is_empty());

        for known in [&b""[..], &[0u8; 32][..], b"short"] {
            let mut full = HeartbeatResponse::default();
            m.answer(known, &mut full);
            assert!(!full.trust_unchanged);
            assert_eq!(full.trust_digest, m.digest());
            assert_eq!(full.revoked, vec!["gone".to_string()]);
            assert_eq!(full.trust_roots, b"root");
            assert_eq!(full.managers.len(), 1);
        }
    }

    /// Any change to any part is a new digest: a node holding the old material gets the new
    /// one in full.
    #[test]
    fn every_part_is_in_the_digest() {
        let base = material(&["gone"]);
        let changed = [
            material(&["gone", "also-gone"]),
            material(&[]),
            Material::new(
                vec!["gone".into()],
                b"root2".to_vec(),
                base.fields.managers.clone(),
                None,
            ),
            Material::new(vec!["gone".into()], b"root".to_vec(), Vec::new(), None),
            Material::new(
                vec!["gone".into()],
                b"root".to_vec(),
                base.fields.managers.clone(),
                Some(WorkloadBundle {
                    crl: b"crl".to_vec(),
                    ..WorkloadBundle::default()
                }),
            ),
        ];
        for m in &changed {
            assert_ne!(m.digest(), base.digest());
            let mut resp = HeartbeatResponse::default();
            m.answer(base.digest(), &mut resp);
            assert!(!resp.trust_unchanged);
            assert_eq!(resp.revoked, m.fields.revoked);
            assert_eq!(resp.workload, m.fields.workload);
        }
        assert_eq!(material(&["gone"]).digest(), base.digest());
    }

    /// The cache reads the parts again at a new index and makes a new material only when
    /// they, the leadership or the workload bundle (a CRL signed again, with no entry)
    /// changed; at the same index it reads nothing.
    #[test]
    fn the_cache_makes_a_material_only_when_what_it_holds_changed() {
        let cache = TrustCache::default();
        let read = std::cell::Cell::new(0);
        let get = |index, leader, workload: Option<Arc<Bundle>>, revoked: &[&str]| {
            cache.get(index, leader, workload, || {
                read.set(read.get() + 1);
                Parts {
                    revoked: revoked.iter().map(|s| (*s).to_string()).collect(),
                    trust_roots: b"root".to_vec(),
                    managers: Vec::new(),
                }
            })
        };
        let bundle = Arc::new(Bundle::default());
        let first = get(1, true, Some(bundle.clone()), &[]);
        assert!(Arc::ptr_eq(
            &first,
            &get(1, true, Some(bundle.clone()), &[])
        ));
        assert_eq!(read.get(), 1);
        // A new index whose parts are the same: read, and the same material.
        let second = get(2, true, Some(bundle.clone()), &[]);
        assert_eq!(read.get(), 2);
        assert!(Arc::ptr_eq(&first, &second));
        // A node revoked: a new material, with it.
        let third = get(3, true, Some(bundle.clone()), &["gone"]);
        assert!(!Arc::ptr_eq(&second, &third));
        assert_eq!(third.fields.revoked, vec!["gone".to_string()]);
        assert_ne!(third.digest(), second.digest());
        // Leadership lost, then a bundle signed again with equal content: new each time.
        let follower = get(3, false, None, &["gone"]);
        assert!(!Arc::ptr_eq(&third, &follower));
        let resigned = get(3, true, Some(Arc::new(Bundle::default())), &["gone"]);
        assert!(!Arc::ptr_eq(&follower, &resigned));
        assert!(!Arc::ptr_eq(&third, &resigned));
    }
}
