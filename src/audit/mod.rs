//! The audit chain: every security-relevant event, appended through Raft as a record whose
//! hash covers its own canonical encoding and the hash of the record before it.
//!
//! ```text
//!  event (proposed by a manager) ──raft──► state machine: seq = n+1, prev = hash(n),
//!                                            hash = SHA-256(canonical(record without hash))
//! ```
//!
//! The chain is a pure value: [`AuditChain::append`] and [`verify`] do no I/O, so the CLI can
//! check an exported chain without trusting the daemon that produced it.

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

impl AuditEvent {
    /// A new event stamped with the current time.
    pub fn now(actor: Actor, action: &str, target: &str, outcome: Outcome) -> Self {
        AuditEvent {
            time: crate::util::now_rfc3339(),
            actor,
            action: action.into(),
            target: target.into(),
            outcome,
            details: BTreeMap::new(),
        }
    }

    /// Adds a detail.
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Self {
        self.details.insert(key.into(), value.into());
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
/// sorted by key. Unambiguous, so two different records can never encode the same.
fn canonical(seq: u64, event: &AuditEvent, prev_hash: &str) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    let mut out = b"skep-audit-v1".to_vec();
    field(&mut out, &seq.to_be_bytes());
    field(&mut out, event.time.as_bytes());
    field(&mut out, event.actor.kind.as_bytes());
    field(&mut out, event.actor.id.as_bytes());
    field(&mut out, event.actor.authenticated_by.as_bytes());
    field(&mut out, event.action.as_bytes());
    field(&mut out, event.target.as_bytes());
    field(&mut out, event.outcome.as_str().as_bytes());
    field(&mut out, &(event.details.len() as u64).to_be_bytes());
    for (k, v) in &event.details {
        field(&mut out, k.as_bytes());
        field(&mut out, v.as_bytes());
    }
    field(&mut out, prev_hash.as_bytes());
    out
}

fn record_hash(seq: u64, event: &AuditEvent, prev_hash: &str) -> String {
    hex::encode(Sha256::digest(canonical(seq, event, prev_hash)))
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

    /// All records, oldest first.
    pub fn records(&self) -> &[AuditRecord] {
        &self.records
    }
}

/// Why a chain does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    /// A record's hash does not match its content.
    #[error("audit record {seq} was altered: its hash does not match its content")]
    HashMismatch {
        /// The first bad record.
        seq: u64,
    },
    /// A record does not point at the record before it.
    #[error("audit record {seq} does not follow record {prev}: prev_hash does not match")]
    BrokenLink {
        /// The first bad record.
        seq: u64,
        /// The record it should follow.
        prev: u64,
    },
    /// Records are missing, repeated or out of order.
    #[error(
        "audit record {seq} is out of sequence: expected {expected} (records missing or reordered)"
    )]
    BadSequence {
        /// The first bad record.
        seq: u64,
        /// The sequence number expected there.
        expected: u64,
    },
}

/// Walks `records` from `first_seq`'s predecessor hash and returns the first record that does
/// not fit. A chain that starts at seq 1 must start from [`GENESIS_HASH`].
pub fn verify(records: &[AuditRecord]) -> Result<(), ChainError> {
    let mut prev: Option<&AuditRecord> = None;
    for rec in records {
        match prev {
            None => {
                if rec.seq == 1 && rec.prev_hash != GENESIS_HASH {
                    return Err(ChainError::BrokenLink { seq: 1, prev: 0 });
                }
            }
            Some(p) => {
                if rec.seq != p.seq + 1 {
                    return Err(ChainError::BadSequence {
                        seq: rec.seq,
                        expected: p.seq + 1,
                    });
                }
                if rec.prev_hash != p.hash {
                    return Err(ChainError::BrokenLink {
                        seq: rec.seq,
                        prev: p.seq,
                    });
                }
            }
        }
        if record_hash(rec.seq, &rec.event, &rec.prev_hash) != rec.hash {
            return Err(ChainError::HashMismatch { seq: rec.seq });
        }
        prev = Some(rec);
    }
    Ok(())
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
