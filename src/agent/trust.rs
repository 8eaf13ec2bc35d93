//! The trust material a node holds from the managers' heartbeat answers (revoked node IDs,
//! roots, managers' certificates, the workload bundle), so that a manager need not send it
//! again while it is unchanged (`manager::trust_answer`).
//!
//! ```text
//!  answer ─► Held::complete ─► full (with a digest): kept, and its digest echoed from now on
//!                          ├► trust_unchanged, digest held: the held material filled in
//!                          └► trust_unchanged, digest not held: None (nothing applied; the
//!                             next heartbeat echoes no digest and gets all of it)
//! ```

use crate::api::v1::HeartbeatResponse;

/// The material of the last answer that carried it, and that answer's digest.
#[derive(Default)]
pub struct Held(Option<(Vec<u8>, HeartbeatResponse)>);

impl Held {
    /// The digest to echo in the next heartbeat (empty: send all of it).
    pub fn digest(&self) -> Vec<u8> {
        self.0.as_ref().map(|(d, _)| d.clone()).unwrap_or_default()
    }

    /// `resp` with its trust material: as sent, or filled in from what is held when the
    /// manager left it out. `None` when it was left out for a digest this node does not hold
    /// (then nothing of it may be taken as the swarm's: an empty revoked list would clear the
    /// node's).
    pub fn complete(&mut self, mut resp: HeartbeatResponse) -> Option<HeartbeatResponse> {
        if resp.trust_unchanged {
            let Some((_, held)) = self.0.as_ref().filter(|(d, _)| *d == resp.trust_digest) else {
                self.0 = None;
                return None;
            };
            resp.revoked.clone_from(&held.revoked);
            resp.trust_roots.clone_from(&held.trust_roots);
            resp.managers.clone_from(&held.managers);
            resp.workload.clone_from(&held.workload);
            return Some(resp);
        }
        self.0 = (!resp.trust_digest.is_empty()).then(|| {
            let material = HeartbeatResponse {
                revoked: resp.revoked.clone(),
                trust_roots: resp.trust_roots.clone(),
                managers: resp.managers.clone(),
                workload: resp.workload.clone(),
                ..HeartbeatResponse::default()
            };
            (resp.trust_digest.clone(), material)
        });
        Some(resp)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn full(digest: &[u8], revoked: &str) -> HeartbeatResponse {
        HeartbeatResponse {
            is_leader: true,
            trust_digest: digest.to_vec(),
            revoked: vec![revoked.to_string()],
            trust_roots: b"root".to_vec(),
            ..HeartbeatResponse::default()
        }
    }

    fn unchanged(digest: &[u8]) -> HeartbeatResponse {
        HeartbeatResponse {
            is_leader: true,
            trust_digest: digest.to_vec(),
            trust_unchanged: true,
            ..HeartbeatResponse::default()
        }
    }

    /// A full answer is kept and its digest echoed; an unchanged one is filled in from it; a
    /// newer full answer replaces it.
    #[test]
    fn held_material_fills_in_unchanged_answers() {
        let mut held = Held::default();
        assert!(held.digest().is_empty());
        held.complete(full(b"d1", "gone")).unwrap();
        assert_eq!(held.digest(), b"d1");
        let filled = held.complete(unchanged(b"d1")).unwrap();
        assert_eq!(filled.revoked, vec!["gone".to_string()]);
        assert_eq!(filled.trust_roots, b"root");
        assert!(filled.is_leader);
        held.complete(full(b"d2", "also-gone")).unwrap();
        assert_eq!(held.digest(), b"d2");
        assert_eq!(
            held.complete(unchanged(b"d2")).unwrap().revoked,
            vec!["also-gone".to_string()]
        );
    }

    /// "Unchanged" for a digest not held (another manager's, or after a restart) applies
    /// nothing and makes the next heartbeat ask for all of it; a manager that sends no digest
    /// (an older one) is taken in full every time.
    #[test]
    fn unchanged_for_a_digest_not_held_applies_nothing() {
        let mut held = Held::default();
        assert!(held.complete(unchanged(b"d1")).is_none());
        held.complete(full(b"d1", "gone")).unwrap();
        assert!(held.complete(unchanged(b"other")).is_none());
        assert!(held.digest().is_empty());
        let old = held.complete(full(b"", "gone")).unwrap();
        assert_eq!(old.revoked, vec!["gone".to_string()]);
        assert!(held.digest().is_empty());
    }
}
