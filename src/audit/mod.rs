//! The audit chain: every security-relevant event, appended through Raft as a record whose
//! hash covers its own canonical encoding and the hash of the record before it.
//!
//! ```text
//!  event (proposed by a manager) ──raft──► state machine: seq = n+1, prev = hash(n),
//!                                            hash = SHA-256(canonical(record without hash))
//! ```
//!
//! The chain is a pure value: [`AuditChain::append`] and [`verify_with`] do no I/O, so the CLI
//! can check an exported chain without trusting the daemon that produced it.
//!
//! Every so often the leader appends a signed checkpoint ([`checkpoint`]): an Ed25519
//! signature, by a key only managers hold, over the seq and hash of the record before it. A
//! chain trimmed by retention starts at such a checkpoint, whose signature vouches for the
//! head it covers.

pub mod checkpoint;
pub mod export;
pub mod filter;
pub mod incremental;
pub mod trust;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Who did something.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// `node`, `local-admin`, `operator`, `anonymous` or `system`.
    pub kind: String,
    /// The node ID, operator name, or peer address of an unauthenticated caller.
    pub id: String,
    /// How the actor was authenticated: `mtls`, `unix-socket`, `join-token`, `none`.
    pub authenticated_by: String,
}

impl Actor {
    /// The cluster itself (leader decisions such as marking a node down).
    pub fn system() -> Self {
        Actor {
            kind: "system".into(),
            id: "skep".into(),
            authenticated_by: "none".into(),
        }
    }
    /// The root administrator of a node, speaking over its Unix socket.
    pub fn local_admin(node_id: &str) -> Self {
        Actor {
            kind: "local-admin".into(),
            id: node_id.into(),
            authenticated_by: "unix-socket".into(),
        }
    }
    /// A node authenticated by its certificate.
    pub fn node(node_id: &str) -> Self {
        Actor {
            kind: "node".into(),
            id: node_id.into(),
            authenticated_by: "mtls".into(),
        }
    }
    /// An operator authenticated by its operator certificate.
    pub fn operator(name: &str) -> Self {
        Actor {
            kind: "operator".into(),
            id: name.into(),
            authenticated_by: "mtls".into(),
        }
    }
    /// A peer without a certificate, named by its address.
    pub fn anonymous(peer: &str) -> Self {
        Actor {
            kind: "anonymous".into(),
            id: peer.into(),
            authenticated_by: "none".into(),
        }
    }
}

/// The result of the audited action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The action was carried out.
    Ok,
    /// The action was refused by authentication or authorization.
    Denied,
    /// The action failed.
    Error,
}

impl Outcome {
    /// Lower-case name, as shown in `audit ls`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }
}

/// An event before it joins the chain. Secret values never go in here: name a secret by its
/// name, ID and digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// RFC 3339 UTC time at which the proposing manager saw the event.
    pub time: String,
    /// Who acted.
    pub actor: Actor,
    /// Dotted action name, e.g. `cluster.create`, `token.use`, `cert.issue`, `node.join`.
    pub action: String,
    /// What was acted on (node ID, token role, ...).
    pub target: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Free-form key/value details (peer address, reason, serial).
    pub details: BTreeMap<String, String>,
}

/// Bytes of an event's target kept (IDs and names are far shorter).
pub const MAX_TARGET_BYTES: usize = 1024;
/// Bytes of one detail kept (lists of IDs of a large swarm fit).
pub const MAX_DETAIL_BYTES: usize = 16 * 1024;

impl AuditEvent {
    /// A new event stamped with the current time.
    /// The target is cut to [`MAX_TARGET_BYTES`]: it may be what a refused caller sent.
    pub fn now(actor: Actor, action: &str, target: &str, outcome: Outcome) -> Self {
        AuditEvent {
            time: crate::util::now_rfc3339(),
            actor,
            action: action.into(),
            target: crate::util::prefix(target, MAX_TARGET_BYTES),
            outcome,
            details: BTreeMap::new(),
        }
    }

    /// Adds a detail, cut to [`MAX_DETAIL_BYTES`] (a reason may quote what a caller sent).
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        let value = value.into();
        let value = if value.len() > MAX_DETAIL_BYTES {
            crate::util::prefix(&value, MAX_DETAIL_BYTES)
        } else {
            value
        };
        self.details.insert(key.into(), value);
        self
    }
}

/// A record of the chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
    /// Hex SHA-256 of the previous record (64 zeros for the first).
    pub prev_hash: String,
    /// Hex SHA-256 over the canonical encoding of this record without `hash`.
    pub hash: String,
}

/// The hash that precedes the first record.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Canonical encoding: every field length-prefixed (u64 big endian) in a fixed order, details
/// sorted by key. Unambiguous, so two different records can never encode the same. Fed
/// straight into the hash: verifying a million records allocates nothing per record.
fn feed_canonical(h: &mut Sha256, seq: u64, event: &AuditEvent, prev_hash: &str) {
    fn field(h: &mut Sha256, bytes: &[u8]) {
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(bytes);
    }
    h.update(b"skep-audit-v1");
    field(h, &seq.to_be_bytes());
    field(h, event.time.as_bytes());
    field(h, event.actor.kind.as_bytes());
    field(h, event.actor.id.as_bytes());
    field(h, event.actor.authenticated_by.as_bytes());
    field(h, event.action.as_bytes());
    field(h, event.target.as_bytes());
    field(h, event.outcome.as_str().as_bytes());
    field(h, &(event.details.len() as u64).to_be_bytes());
    for (k, v) in &event.details {
        field(h, k.as_bytes());
        field(h, v.as_bytes());
    }
    field(h, prev_hash.as_bytes());
}

/// The hash of a record as lower-case hex, without allocating.
fn record_hash_hex(seq: u64, event: &AuditEvent, prev_hash: &str) -> [u8; 64] {
    let mut h = Sha256::new();
    feed_canonical(&mut h, seq, event, prev_hash);
    let mut out = [0u8; 64];
    // 32 bytes always fit 64 hex digits.
    let _ = hex::encode_to_slice(h.finalize(), &mut out);
    out
}

fn record_hash(seq: u64, event: &AuditEvent, prev_hash: &str) -> String {
    String::from_utf8_lossy(&record_hash_hex(seq, event, prev_hash)).into_owned()
}

/// Recomputes a record's hash from its content (for tools that rebuild or test chains).
pub fn hash_of(record: &AuditRecord) -> String {
    record_hash(record.seq, &record.event, &record.prev_hash)
}

/// The chain as held by the state machine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditChain {
    records: Vec<AuditRecord>,
}

impl AuditChain {
    /// Appends an event, computing its place and hash.
    pub fn append(&mut self, event: AuditEvent) -> &AuditRecord {
        let (seq, prev_hash) = match self.records.last() {
            Some(last) => (last.seq + 1, last.hash.clone()),
            None => (1, GENESIS_HASH.to_string()),
        };
        let hash = record_hash(seq, &event, &prev_hash);
        self.records.push(AuditRecord {
            seq,
            event,
            prev_hash,
            hash,
        });
        &self.records[self.records.len() - 1]
    }

    /// All records kept, oldest first.
    pub fn records(&self) -> &[AuditRecord] {
        &self.records
    }

    /// The newest record.
    pub fn head(&self) -> Option<&AuditRecord> {
        self.records.last()
    }

    /// The records from `seq` on (all of them if `seq` was trimmed already). Seqs are
    /// contiguous, so this is an index, not a search.
    pub fn since(&self, seq: u64) -> &[AuditRecord] {
        let first = self.records.first().map_or(1, |r| r.seq);
        let skip = usize::try_from(seq.saturating_sub(first)).unwrap_or(usize::MAX);
        self.records.get(skip..).unwrap_or(&[])
    }

    /// The record with this seq, if it is kept.
    pub fn get(&self, seq: u64) -> Option<&AuditRecord> {
        self.since(seq).first().filter(|r| r.seq == seq)
    }

    /// The record with this seq, to change it in place: only for tests that tamper with a
    /// stored chain (`store::testing`).
    #[doc(hidden)]
    pub fn get_mut(&mut self, seq: u64) -> Option<&mut AuditRecord> {
        let first = self.records.first().map_or(1, |r| r.seq);
        let i = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.records.get_mut(i).filter(|r| r.seq == seq)
    }

    /// Drops every record before `first_seq` (retention); returns how many were dropped.
    pub fn trim_before(&mut self, first_seq: u64) -> usize {
        let first = self.records.first().map_or(1, |r| r.seq);
        let n = usize::try_from(first_seq.saturating_sub(first))
            .unwrap_or(usize::MAX)
            .min(self.records.len());
        self.records.drain(..n);
        n
    }
}

/// Why a chain does not verify. Each names the first record that does not fit.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// A record's hash does not match its content.
    #[error(
        "audit record {seq} was altered: hash mismatch at seq {seq} (its hash does not match its content)"
    )]
    HashMismatch {
        /// The first bad record.
        seq: u64,
    },
    /// A record does not point at the record before it.
    #[error(
        "audit record {seq} does not follow record {prev}: prev-hash mismatch at seq {seq} (a record was removed, inserted or rewritten before it)"
    )]
    BrokenLink {
        /// The first bad record.
        seq: u64,
        /// The record it should follow.
        prev: u64,
    },
    /// Records are missing, repeated or out of order.
    #[error(
        "audit record {seq} is out of sequence: expected {expected} (seq gap at {seq}: records missing or reordered)"
    )]
    BadSequence {
        /// The first bad record.
        seq: u64,
        /// The sequence number expected there.
        expected: u64,
    },
    /// A checkpoint does not cover the record before it, or does not parse.
    #[error("audit checkpoint {seq} is malformed: {reason}")]
    BadCheckpoint {
        /// The checkpoint's seq.
        seq: u64,
        /// What is wrong.
        reason: String,
    },
    /// A checkpoint's signature does not verify.
    #[error("audit checkpoint {seq} has a bad signature at seq {seq}: it was forged or altered")]
    BadSignature {
        /// The checkpoint's seq.
        seq: u64,
    },
    /// A checkpoint is signed by a key other than the swarm's.
    #[error(
        "audit checkpoint {seq} is signed by key {found}, not the swarm's audit key {expected}: it was forged"
    )]
    UnknownKey {
        /// The checkpoint's seq.
        seq: u64,
        /// The key the checkpoint names (hex).
        found: String,
        /// The key it should name (hex).
        expected: String,
    },
    /// The chain starts neither at its first record nor at a signed checkpoint.
    #[error(
        "audit record {seq} starts the chain, but a chain must start at record 1 or at a signed checkpoint: records before it were removed"
    )]
    Unanchored {
        /// The first record given.
        seq: u64,
    },
}

/// What [`verify_with`] checks besides the hash links.
#[derive(Clone, Copy, Debug, Default)]
pub struct VerifyOptions<'a> {
    /// The swarm's audit public key (hex). With it, every checkpoint must be signed by it;
    /// without it, a checkpoint's signature is checked against the key it names, which
    /// catches damage but not a forger who signs with a key of their own.
    pub public_key: Option<&'a str>,
    /// The records are a filtered selection: a seq gap is not an error (records between
    /// non-adjacent ones cannot be linked), but each record's own hash and every checkpoint
    /// still are checked.
    pub gaps_allowed: bool,
    /// The first record must be record 1 or a checkpoint (a whole chain, possibly trimmed).
    pub require_anchor: bool,
}

/// What the first record of a verified chain rests on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Anchor {
    /// No records.
    Empty,
    /// Record 1, which follows [`GENESIS_HASH`].
    Genesis,
    /// A signed checkpoint at this seq (the chain was trimmed before it).
    Checkpoint(u64),
    /// Neither: verification started mid-chain at this seq (`verify --from`, a filtered export).
    Unanchored(u64),
}

/// What a successful verification covered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records checked.
    pub records: usize,
    /// The first record's seq.
    pub first_seq: Option<u64>,
    /// The last record's seq.
    pub last_seq: Option<u64>,
    /// The last record's hash.
    pub last_hash: Option<String>,
    /// Checkpoints whose signatures verified.
    pub checkpoints: usize,
    /// The seq of the newest checkpoint.
    pub last_checkpoint: Option<u64>,
    /// What the first record rests on.
    pub anchor: Anchor,
    /// Whether checkpoints were checked against a key given by the caller.
    pub key_pinned: bool,
}

/// Walks `records` and returns the first record that does not fit: a hash that does not
/// match its content, a link to the wrong predecessor, a seq gap, or a checkpoint that is
/// malformed, signed by another key, or whose signature does not verify.
pub fn verify_with(
    records: &[AuditRecord],
    opts: &VerifyOptions<'_>,
) -> Result<VerifyReport, ChainError> {
    let mut report = VerifyReport {
        records: records.len(),
        first_seq: records.first().map(|r| r.seq),
        last_seq: records.last().map(|r| r.seq),
        last_hash: records.last().map(|r| r.hash.clone()),
        checkpoints: 0,
        last_checkpoint: None,
        anchor: Anchor::Empty,
        key_pinned: opts.public_key.is_some(),
    };
    let mut prev: Option<&AuditRecord> = None;
    for rec in records {
        let is_checkpoint = rec.event.action == checkpoint::CHECKPOINT_ACTION;
        match prev {
            None => {
                report.anchor = if rec.seq == 1 {
                    if rec.prev_hash != GENESIS_HASH {
                        return Err(ChainError::BrokenLink { seq: 1, prev: 0 });
                    }
                    Anchor::Genesis
                } else if is_checkpoint {
                    Anchor::Checkpoint(rec.seq)
                } else if opts.require_anchor {
                    return Err(ChainError::Unanchored { seq: rec.seq });
                } else {
                    Anchor::Unanchored(rec.seq)
                };
            }
            Some(p) => {
                let adjacent = rec.seq == p.seq.wrapping_add(1);
                let allowed_gap = opts.gaps_allowed && rec.seq > p.seq;
                if !(adjacent || allowed_gap) {
                    return Err(ChainError::BadSequence {
                        seq: rec.seq,
                        expected: p.seq.wrapping_add(1),
                    });
                }
                if adjacent && rec.prev_hash != p.hash {
                    return Err(ChainError::BrokenLink {
                        seq: rec.seq,
                        prev: p.seq,
                    });
                }
            }
        }
        if is_checkpoint {
            checkpoint::verify_record(rec, opts.public_key)?;
            report.checkpoints += 1;
            report.last_checkpoint = Some(rec.seq);
        }
        if record_hash_hex(rec.seq, &rec.event, &rec.prev_hash) != rec.hash.as_bytes() {
            return Err(ChainError::HashMismatch { seq: rec.seq });
        }
        prev = Some(rec);
    }
    Ok(report)
}

/// [`verify_with`] for a contiguous run of records, checking checkpoints against the keys they
/// name.
pub fn verify(records: &[AuditRecord]) -> Result<(), ChainError> {
    verify_with(records, &VerifyOptions::default()).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> AuditChain {
        let mut c = AuditChain::default();
        for i in 0..n {
            c.append(
                AuditEvent::now(Actor::system(), "test.event", &format!("t{i}"), Outcome::Ok)
                    .with("i", i.to_string()),
            );
        }
        c
    }

    #[test]
    fn intact_chain_verifies() {
        let c = chain(5);
        assert_eq!(c.records()[0].prev_hash, GENESIS_HASH);
        assert_eq!(verify(c.records()), Ok(()));
    }

    #[test]
    fn edited_record_is_named() {
        let mut recs = chain(5).records().to_vec();
        recs[2].event.target = "forged".into();
        assert_eq!(verify(&recs), Err(ChainError::HashMismatch { seq: 3 }));
    }

    #[test]
    fn edited_and_rehashed_record_breaks_the_next_link() {
        let mut recs = chain(5).records().to_vec();
        recs[2].event.outcome = Outcome::Denied;
        recs[2].hash = record_hash(3, &recs[2].event, &recs[2].prev_hash);
        assert_eq!(
            verify(&recs),
            Err(ChainError::BrokenLink { seq: 4, prev: 3 })
        );
    }

    #[test]
    fn deleted_record_is_named() {
        let mut recs = chain(5).records().to_vec();
        recs.remove(1);
        assert_eq!(
            verify(&recs),
            Err(ChainError::BadSequence {
                seq: 3,
                expected: 2
            })
        );
    }

    #[test]
    fn the_hash_covers_every_field() {
        let base = chain(1).records()[0].clone();
        assert_eq!(hash_of(&base), base.hash);
        type Edit = fn(&mut AuditRecord);
        let edits: Vec<(&str, Edit)> = vec![
            ("seq", |r| r.seq += 1),
            ("time", |r| r.event.time.push('0')),
            ("actor.kind", |r| r.event.actor.kind = "operator".into()),
            ("actor.id", |r| r.event.actor.id.push('x')),
            ("actor.authenticated_by", |r| {
                r.event.actor.authenticated_by.push('x')
            }),
            ("action", |r| r.event.action.push('x')),
            ("target", |r| r.event.target.push('x')),
            ("outcome", |r| r.event.outcome = Outcome::Denied),
            ("detail value", |r| {
                r.event.details.insert("i".into(), "9".into());
            }),
            ("detail added", |r| {
                r.event.details.insert("j".into(), String::new());
            }),
            ("detail removed", |r| r.event.details.clear()),
            ("prev_hash", |r| r.prev_hash = "1".repeat(64)),
        ];
        for (field, edit) in edits {
            let mut r = base.clone();
            edit(&mut r);
            assert_ne!(hash_of(&r), base.hash, "{field} is not covered by the hash");
        }
    }

    #[test]
    fn detail_boundaries_are_unambiguous() {
        let a = AuditEvent::now(Actor::system(), "x", "y", Outcome::Ok).with("ab", "c");
        let mut b = a.clone();
        b.details = BTreeMap::from([("a".to_string(), "bc".to_string())]);
        assert_ne!(
            record_hash(1, &a, GENESIS_HASH),
            record_hash(1, &b, GENESIS_HASH)
        );
    }
}
