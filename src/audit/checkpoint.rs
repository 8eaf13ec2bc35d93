//! Signed checkpoints: the leader's Ed25519 signature over the chain head, so that a chain
//! rewritten by someone without the managers' audit key no longer verifies, and a chain
//! trimmed by retention still starts at something that vouches for what came before.
//!
//! ```text
//!  ... record n (hash H) ──► checkpoint n+1: prev_hash = H,
//!                              details { covers_seq: n, covers_hash: H,
//!                                        public_key, signature = Ed25519(key, msg(n, H)) }
//! ```
//!
//! The state machine accepts a checkpoint only when it covers the head at the moment it is
//! applied, so a checkpoint always covers exactly the record before it. Signing and
//! verification are `ring`'s; nothing here is home-made crypto.

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use super::{Actor, AuditChain, AuditEvent, AuditRecord, ChainError, GENESIS_HASH, Outcome};
use crate::secret::SecretBytes;

/// The action of a checkpoint record.
pub const CHECKPOINT_ACTION: &str = "audit.checkpoint";
/// Signature algorithm named in checkpoint records.
pub const ALGORITHM: &str = "ed25519";
/// Default: a checkpoint after this many records without one.
pub const DEFAULT_EVERY_RECORDS: u64 = 256;
/// Default: a checkpoint when the oldest record without one is this old (seconds).
pub const DEFAULT_EVERY_SECS: u64 = 60;

/// Why a key could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The system random source failed.
    #[error("cannot generate the audit signing key: the system random source failed")]
    Random,
    /// The stored key does not parse.
    #[error("the swarm's audit signing key is unusable: {0}")]
    BadKey(String),
}

/// The managers' audit signing key: an Ed25519 key pair made at `swarm init` (or by the
/// leader on first need in an older swarm), kept only inside the sealed Raft state.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditKey {
    /// PKCS#8 v2 document of the key pair.
    pkcs8: SecretBytes,
    /// The public key, hex.
    public_key: String,
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditKey")
            .field("public_key", &self.public_key)
            .field("pkcs8", &"..")
            .finish()
    }
}

impl AuditKey {
    /// A fresh key pair.
    pub fn generate() -> Result<Self, CheckpointError> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| CheckpointError::Random)?;
        let pkcs8 = SecretBytes::new(doc.as_ref().to_vec());
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.expose())
            .map_err(|e| CheckpointError::BadKey(e.to_string()))?;
        Ok(AuditKey {
            public_key: hex::encode(pair.public_key().as_ref()),
            pkcs8,
        })
    }

    /// The public key, hex: what `audit verify` checks checkpoints against.
    pub fn public_key(&self) -> &str {
        &self.public_key
    }

    /// Signs the head `(covers_seq, covers_hash)`; returns the hex signature.
    fn sign(&self, covers_seq: u64, covers_hash: &str) -> Result<String, CheckpointError> {
        let pair = Ed25519KeyPair::from_pkcs8(self.pkcs8.expose())
            .map_err(|e| CheckpointError::BadKey(e.to_string()))?;
        Ok(hex::encode(
            pair.sign(&signed_message(covers_seq, covers_hash)).as_ref(),
        ))
    }
}

impl AuditKey {
    /// Signs a backup file's bytes (`store::backup`) under the backup domain tag, so a
    /// backup signature can never pass for a checkpoint's or the reverse. Returns the raw
    /// 64-byte Ed25519 signature.
    pub fn sign_backup(&self, msg: &[u8]) -> Result<[u8; BACKUP_SIGNATURE_LEN], CheckpointError> {
        let pair = Ed25519KeyPair::from_pkcs8(self.pkcs8.expose())
            .map_err(|e| CheckpointError::BadKey(e.to_string()))?;
        let sig = pair.sign(&backup_message(msg));
        <[u8; BACKUP_SIGNATURE_LEN]>::try_from(sig.as_ref())
            .map_err(|_| CheckpointError::BadKey("the signature is not 64 bytes".into()))
    }

    /// Whether `sig` is the signature [`AuditKey::sign_backup`] makes over `msg` with the key
    /// whose public half is `public_key_hex`. A key that is not hex, or not an Ed25519 public
    /// key, verifies nothing.
    pub fn verify_backup(public_key_hex: &str, msg: &[u8], sig: &[u8]) -> bool {
        let Ok(public_key) = hex::decode(public_key_hex) else {
            return false;
        };
        UnparsedPublicKey::new(&ED25519, &public_key)
            .verify(&backup_message(msg), sig)
            .is_ok()
    }
}

/// Length of a backup signature (Ed25519).
pub const BACKUP_SIGNATURE_LEN: usize = 64;

/// What a backup signature signs: its own domain tag (the checkpoint tag differs from its
/// sixth byte on, so neither message can pass for the other), then the SHA-256 of the file's
/// bytes: a backup may be a gigabyte, and signing its digest spares a copy of it.
fn backup_message(msg: &[u8]) -> Vec<u8> {
    let digest = ring::digest::digest(&ring::digest::SHA256, msg);
    let mut m = Vec::with_capacity(BACKUP_DOMAIN.len() + digest.as_ref().len());
    m.extend_from_slice(BACKUP_DOMAIN);
    m.extend_from_slice(digest.as_ref());
    m
}

const BACKUP_DOMAIN: &[u8] = b"skep-backup-v1";

/// What a checkpoint signs: a domain tag, then the covered seq and hash, length-prefixed.
fn signed_message(covers_seq: u64, covers_hash: &str) -> Vec<u8> {
    let mut m = b"skep-audit-checkpoint-v1".to_vec();
    for field in [&covers_seq.to_be_bytes()[..], covers_hash.as_bytes()] {
        m.extend_from_slice(&(field.len() as u64).to_be_bytes());
        m.extend_from_slice(field);
    }
    m
}

/// A checkpoint as the leader proposes it (`Command::AuditCheckpoint`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// RFC 3339 time of signing.
    pub time: String,
    /// The node ID of the leader that signed.
    pub signer: String,
    /// The seq of the record it covers (the head when it was signed).
    pub covers_seq: u64,
    /// The hash of that record.
    pub covers_hash: String,
    /// The signing public key, hex.
    pub public_key: String,
    /// Ed25519 signature over the covered seq and hash, hex.
    pub signature: String,
}

impl Checkpoint {
    /// Signs the current head of `chain` (an empty chain: seq 0 and [`GENESIS_HASH`]).
    pub fn sign(
        key: &AuditKey,
        signer: &str,
        time: String,
        chain: &AuditChain,
    ) -> Result<Self, CheckpointError> {
        let (covers_seq, covers_hash) = chain
            .head()
            .map_or((0, GENESIS_HASH.to_string()), |h| (h.seq, h.hash.clone()));
        Ok(Checkpoint {
            time,
            signer: signer.to_string(),
            signature: key.sign(covers_seq, &covers_hash)?,
            covers_seq,
            covers_hash,
            public_key: key.public_key().to_string(),
        })
    }

    /// Whether it covers the head of `chain` as it is now (the state machine refuses a
    /// checkpoint that a concurrent append made stale).
    pub fn covers_head_of(&self, chain: &AuditChain) -> bool {
        match chain.head() {
            Some(h) => h.seq == self.covers_seq && h.hash == self.covers_hash,
            None => self.covers_seq == 0 && self.covers_hash == GENESIS_HASH,
        }
    }

    /// The record's event.
    pub fn to_event(&self) -> AuditEvent {
        AuditEvent {
            time: self.time.clone(),
            actor: Actor::node(&self.signer),
            action: CHECKPOINT_ACTION.into(),
            target: self.covers_seq.to_string(),
            outcome: Outcome::Ok,
            details: [
                ("algorithm", ALGORITHM.to_string()),
                ("covers_hash", self.covers_hash.clone()),
                ("covers_seq", self.covers_seq.to_string()),
                ("public_key", self.public_key.clone()),
                ("signature", self.signature.clone()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        }
    }
}

/// Checks a checkpoint record: it covers exactly the record before it, names the expected key
/// (if one is given), and its signature verifies.
pub(super) fn verify_record(
    rec: &AuditRecord,
    expected_key: Option<&str>,
) -> Result<(), ChainError> {
    let bad = |reason: &str| ChainError::BadCheckpoint {
        seq: rec.seq,
        reason: reason.to_string(),
    };
    let detail = |k: &str| rec.event.details.get(k).map(String::as_str);
    let covers_seq: u64 = detail("covers_seq")
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("covers_seq is missing or not a number"))?;
    let covers_hash = detail("covers_hash").ok_or_else(|| bad("covers_hash is missing"))?;
    if detail("algorithm") != Some(ALGORITHM) {
        return Err(bad("the algorithm is not ed25519"));
    }
    if covers_seq.checked_add(1) != Some(rec.seq) || covers_hash != rec.prev_hash {
        return Err(bad("it does not cover the record before it"));
    }
    let found = detail("public_key").ok_or_else(|| bad("public_key is missing"))?;
    if let Some(expected) = expected_key
        && !found.eq_ignore_ascii_case(expected)
    {
        return Err(ChainError::UnknownKey {
            seq: rec.seq,
            found: found.to_string(),
            expected: expected.to_string(),
        });
    }
    let public_key = hex::decode(found).map_err(|_| bad("public_key is not hex"))?;
    let signature = detail("signature")
        .and_then(|s| hex::decode(s).ok())
        .ok_or_else(|| bad("signature is missing or not hex"))?;
    UnparsedPublicKey::new(&ED25519, &public_key)
        .verify(&signed_message(covers_seq, covers_hash), &signature)
        .map_err(|_| ChainError::BadSignature { seq: rec.seq })
}

/// When the leader appends a checkpoint: after `every_records` records without one, or when
/// the oldest record without one is `every_secs` old, whichever comes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// Records between checkpoints.
    pub every_records: u64,
    /// Seconds between checkpoints (while there are records to cover).
    pub every_secs: u64,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            every_records: DEFAULT_EVERY_RECORDS,
            every_secs: DEFAULT_EVERY_SECS,
        }
    }
}

impl CheckpointPolicy {
    /// Whether a checkpoint is due on `chain` at `now`. Never for an empty chain or one whose
    /// head is a checkpoint already: an idle chain does not grow.
    pub fn due(&self, chain: &AuditChain, now: time::OffsetDateTime) -> bool {
        let recs = chain.records();
        let since = recs
            .iter()
            .rposition(|r| r.event.action == CHECKPOINT_ACTION)
            .map_or(0, |i| i + 1);
        let pending = &recs[since..];
        let Some(oldest) = pending.first() else {
            return false;
        };
        if pending.len() as u64 >= self.every_records.max(1) {
            return true;
        }
        crate::util::parse_rfc3339(&oldest.event.time).is_none_or(|t| {
            now - t >= time::Duration::seconds(i64::try_from(self.every_secs).unwrap_or(i64::MAX))
        })
    }
}

/// Retention: where to cut a chain so that at least `keep` records remain and the new first
/// record is a checkpoint (whose signature vouches for the head it covers). `None` when
/// nothing is to be trimmed (`keep` 0 means unlimited).
pub fn trim_point(chain: &AuditChain, keep: u64) -> Option<u64> {
    let recs = chain.records();
    let (first, last) = (recs.first()?.seq, recs.last()?.seq);
    if keep == 0 || (recs.len() as u64) <= keep {
        return None;
    }
    // The oldest seq that must be kept, and its index (seqs are contiguous): the search walks
    // back from there to the nearest checkpoint, not over the whole chain.
    let oldest_kept = last.saturating_sub(keep - 1);
    let idx = usize::try_from(oldest_kept.checked_sub(first)?).ok()?;
    recs.get(1..=idx)?
        .iter()
        .rev()
        .find(|r| r.event.action == CHECKPOINT_ACTION)
        .map(|r| r.seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Anchor, VerifyOptions, verify_with};

    fn ev(i: usize) -> AuditEvent {
        AuditEvent::now(Actor::system(), "test.event", &format!("t{i}"), Outcome::Ok)
    }

    /// `n` records with a checkpoint after every `every`.
    fn chain(key: &AuditKey, n: usize, every: usize) -> AuditChain {
        let mut c = AuditChain::default();
        for i in 0..n {
            c.append(ev(i));
            if (i + 1) % every == 0 {
                let cp = Checkpoint::sign(key, "m1", crate::util::now_rfc3339(), &c).unwrap();
                assert!(cp.covers_head_of(&c));
                c.append(cp.to_event());
            }
        }
        c
    }

    fn pinned(key: &AuditKey) -> VerifyOptions<'_> {
        VerifyOptions {
            public_key: Some(key.public_key()),
            require_anchor: true,
            gaps_allowed: false,
        }
    }

    #[test]
    fn a_chain_with_checkpoints_verifies_against_its_key() {
        let key = AuditKey::generate().unwrap();
        let c = chain(&key, 20, 4);
        let r = verify_with(c.records(), &pinned(&key)).unwrap();
        assert_eq!(r.checkpoints, 5);
        assert_eq!(r.anchor, Anchor::Genesis);
        assert_eq!(r.last_checkpoint, Some(25));
    }

    #[test]
    fn a_forged_signature_is_named_even_when_rehashed() {
        let key = AuditKey::generate().unwrap();
        let recs = chain(&key, 8, 4).records().to_vec();
        // Rebuild the chain consistently with one checkpoint's signature changed: the hash
        // links all hold, only the signature can tell.
        let mut forged = AuditChain::default();
        for r in &recs {
            let mut e = r.event.clone();
            if r.seq == 5 {
                let sig = e.details.get_mut("signature").unwrap();
                let flipped = if sig.starts_with('0') { "1" } else { "0" };
                sig.replace_range(0..1, flipped);
            }
            forged.append(e);
        }
        assert_eq!(
            verify_with(forged.records(), &pinned(&key)),
            Err(ChainError::BadSignature { seq: 5 })
        );
    }

    /// The attack a checkpoint exists for: a covered record edited and every hash after it
    /// recomputed. Left as signed, the checkpoint no longer covers the record before it;
    /// patched to cover the new hash, its signature no longer verifies.
    #[test]
    fn an_edited_covered_record_is_caught_even_when_the_chain_and_checkpoint_are_rewritten() {
        let key = AuditKey::generate().unwrap();
        let recs = chain(&key, 8, 4).records().to_vec();
        for patch_checkpoint in [false, true] {
            let mut forged = AuditChain::default();
            for r in &recs {
                let mut e = r.event.clone();
                if r.seq == 2 {
                    e.target = "forged".into();
                }
                if r.seq == 5 && patch_checkpoint {
                    let head = forged.head().unwrap().hash.clone();
                    e.details.insert("covers_hash".into(), head);
                }
                forged.append(e);
            }
            let got = verify_with(forged.records(), &pinned(&key));
            if patch_checkpoint {
                assert_eq!(got, Err(ChainError::BadSignature { seq: 5 }));
            } else {
                assert!(
                    matches!(got, Err(ChainError::BadCheckpoint { seq: 5, .. })),
                    "{got:?}"
                );
            }
        }
    }

    #[test]
    fn a_checkpoint_by_another_key_is_refused_when_the_key_is_pinned() {
        let key = AuditKey::generate().unwrap();
        let thief = AuditKey::generate().unwrap();
        let c = chain(&thief, 4, 4);
        assert!(matches!(
            verify_with(c.records(), &pinned(&key)),
            Err(ChainError::UnknownKey { seq: 5, .. })
        ));
        // Unpinned, it is only checked against the key it names.
        assert!(verify_with(c.records(), &VerifyOptions::default()).is_ok());
    }

    #[test]
    fn a_backup_signature_is_bound_to_its_key_message_and_domain() {
        let key = AuditKey::generate().unwrap();
        let other = AuditKey::generate().unwrap();
        let sig = key.sign_backup(b"backup bytes").unwrap();
        assert!(AuditKey::verify_backup(
            key.public_key(),
            b"backup bytes",
            &sig
        ));
        assert!(!AuditKey::verify_backup(
            other.public_key(),
            b"backup bytes",
            &sig
        ));
        assert!(!AuditKey::verify_backup(
            key.public_key(),
            b"backup bytez",
            &sig
        ));
        assert!(!AuditKey::verify_backup("not hex", b"backup bytes", &sig));
        // Domain separation: neither the plain message nor a checkpoint message verifies
        // under the backup signature, and a checkpoint signature is no backup signature.
        let pair = Ed25519KeyPair::from_pkcs8(key.pkcs8.expose()).unwrap();
        let pk = UnparsedPublicKey::new(&ED25519, pair.public_key().as_ref().to_vec());
        assert!(pk.verify(b"backup bytes", &sig).is_err());
        let cp = hex::decode(key.sign(1, GENESIS_HASH).unwrap()).unwrap();
        let msg = signed_message(1, GENESIS_HASH);
        assert!(pk.verify(&msg, &cp).is_ok());
        assert!(!AuditKey::verify_backup(key.public_key(), &msg, &cp));
    }

    #[test]
    fn a_checkpoint_must_cover_the_record_before_it() {
        let key = AuditKey::generate().unwrap();
        let mut c = chain(&key, 4, 4);
        let stale = Checkpoint::sign(&key, "m1", crate::util::now_rfc3339(), &c).unwrap();
        c.append(ev(99));
        assert!(!stale.covers_head_of(&c));
        c.append(stale.to_event());
        assert!(matches!(
            verify_with(c.records(), &pinned(&key)),
            Err(ChainError::BadCheckpoint { seq: 7, .. })
        ));
    }

    #[test]
    fn a_trimmed_chain_starts_at_a_checkpoint_and_verifies() {
        let key = AuditKey::generate().unwrap();
        let mut c = chain(&key, 20, 4);
        // 25 records (20 + 5 checkpoints); keep at least 7: the newest checkpoint at or before
        // seq 19 is 15.
        assert_eq!(trim_point(&c, 7), Some(15));
        assert_eq!(trim_point(&c, 0), None);
        assert_eq!(trim_point(&c, 25), None);
        assert_eq!(c.trim_before(15), 14);
        assert_eq!(c.records()[0].seq, 15);
        let r = verify_with(c.records(), &pinned(&key)).unwrap();
        assert_eq!(r.anchor, Anchor::Checkpoint(15));
        // Cutting one more record leaves no anchor.
        let rest = &c.records()[1..];
        assert_eq!(
            verify_with(rest, &pinned(&key)),
            Err(ChainError::Unanchored { seq: 16 })
        );
        // Appending continues the seqs.
        assert_eq!(c.append(ev(0)).seq, 26);
        assert_eq!(c.since(24).len(), 3);
        assert_eq!(c.get(15).map(|r| r.seq), Some(15));
        assert!(c.get(3).is_none());
    }

    #[test]
    fn checkpoints_fall_due_by_count_or_age_never_on_an_idle_chain() {
        let key = AuditKey::generate().unwrap();
        let p = CheckpointPolicy {
            every_records: 3,
            every_secs: 60,
        };
        let now = time::OffsetDateTime::now_utc();
        let mut c = AuditChain::default();
        assert!(!p.due(&c, now));
        c.append(ev(0));
        assert!(!p.due(&c, now));
        assert!(p.due(&c, now + time::Duration::seconds(61)));
        c.append(ev(1));
        c.append(ev(2));
        assert!(p.due(&c, now));
        let cp = Checkpoint::sign(&key, "m1", crate::util::now_rfc3339(), &c).unwrap();
        c.append(cp.to_event());
        assert!(!p.due(&c, now + time::Duration::days(1)));
    }

    #[test]
    fn debug_hides_the_private_key() {
        let key = AuditKey::generate().unwrap();
        let shown = format!("{key:?}");
        assert!(shown.contains(key.public_key()));
        assert!(!shown.contains(&hex::encode(key.pkcs8.expose())));
        assert!(!shown.contains("SecretBytes"));
    }
}
