//! What a chain that verified against a trusted key must also show before `audit verify`
//! vouches for it: hash links and signatures say nothing about records that were cut off, or
//! a chain rebuilt without its checkpoints (hashes are not keyed: anyone can re-hash).
//!
//! ```text
//!  records ── verify_with ──► report ── signed_enough: not empty; unsigned tail within 2× the
//!                                        │              checkpoint interval (records or age)
//!                                        └─ reaches: ends at or after the newest checkpoint
//!                                                    this client verified before, and agrees
//! ```
//!
//! Pure: the caller passes the reference time and what it remembers ([`Seen`]).

use serde::{Deserialize, Serialize};

use super::checkpoint::{CHECKPOINT_ACTION, CheckpointPolicy};
use super::{AuditRecord, VerifyReport};

/// The newest checkpoint a client verified, remembered per swarm.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    /// The checkpoint record's seq.
    pub seq: u64,
    /// Its hash.
    pub hash: String,
    /// The key it verified against (hex).
    pub public_key: String,
    /// RFC 3339 time this client verified it.
    pub seen_at: String,
}

/// Why a chain whose links and signatures hold is still not vouched for.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TrustError {
    /// No records at all.
    #[error(
        "there are no records to verify: a swarm's chain is never empty (`swarm init` records its creation), so this chain was emptied or is not the swarm's"
    )]
    Empty,
    /// Too many records, or too old ones, after the last checkpoint.
    #[error(
        "{count} records after the last checkpoint ({last}) are unsigned, the oldest from {oldest}: the leader signs a checkpoint every {every_records} records or {every_secs} s, so checkpoints were stripped or the records after them were added later; verify a complete export, or the chain on a manager"
    )]
    UnsignedTail {
        /// Unsigned records.
        count: usize,
        /// The last checkpoint's seq, or "none".
        last: String,
        /// The oldest unsigned record's time.
        oldest: String,
        /// The interval in records.
        every_records: u64,
        /// The interval in seconds.
        every_secs: u64,
    },
    /// The chain ends before a checkpoint the client verified.
    #[error(
        "the chain ends at record {last}, before checkpoint {seq} that this client verified at {seen_at}: records were cut off its tail (or this manager is behind: try another)"
    )]
    EndsBefore {
        /// The remembered checkpoint.
        seq: u64,
        /// The chain's last seq (0: none).
        last: u64,
        /// When it was verified.
        seen_at: String,
    },
    /// The record at a remembered checkpoint's seq is another record.
    #[error(
        "record {seq} is not checkpoint {seq} that this client verified at {seen_at}: the chain was rewritten (its checkpoints stripped, or records removed and re-hashed)"
    )]
    Disagrees {
        /// The remembered checkpoint.
        seq: u64,
        /// When it was verified.
        seen_at: String,
    },
}

/// Checks that `records` (verified into `report`) are not empty and that their unsigned tail
/// is within twice `policy`'s interval, by count and by age at `reference` (the export's time,
/// or now for a daemon's chain).
pub fn signed_enough(
    records: &[AuditRecord],
    report: &VerifyReport,
    policy: &CheckpointPolicy,
    reference: time::OffsetDateTime,
) -> Result<(), TrustError> {
    if records.is_empty() {
        return Err(TrustError::Empty);
    }
    let since = report.last_checkpoint.map_or(0, |cp| {
        records
            .iter()
            .position(|r| r.seq == cp)
            .map_or(0, |i| i + 1)
    });
    let unsigned = &records[since..];
    let Some(oldest) = unsigned.first() else {
        return Ok(());
    };
    let max_age = time::Duration::seconds(
        i64::try_from(policy.every_secs.saturating_mul(2)).unwrap_or(i64::MAX),
    );
    // A time that does not parse is as good as too old.
    let too_old =
        crate::util::parse_rfc3339(&oldest.event.time).is_none_or(|t| reference - t > max_age);
    let too_many = unsigned.len() as u64 > policy.every_records.saturating_mul(2);
    if too_old || too_many {
        return Err(TrustError::UnsignedTail {
            count: unsigned.len(),
            last: report
                .last_checkpoint
                .map_or_else(|| "none".to_string(), |s| s.to_string()),
            oldest: crate::util::prefix(&oldest.event.time, 40),
            every_records: policy.every_records,
            every_secs: policy.every_secs,
        });
    }
    Ok(())
}

/// Checks that `records` reach the checkpoint `seen` and hold it unchanged. A chain trimmed
/// past it (retention) passes: its first checkpoint is signed.
pub fn reaches(records: &[AuditRecord], seen: &Seen) -> Result<(), TrustError> {
    let last = records.last().map_or(0, |r| r.seq);
    if last < seen.seq {
        return Err(TrustError::EndsBefore {
            seq: seen.seq,
            last,
            seen_at: seen.seen_at.clone(),
        });
    }
    let first = records.first().map_or(0, |r| r.seq);
    if first > seen.seq {
        return Ok(());
    }
    let at = usize::try_from(seen.seq - first)
        .ok()
        .and_then(|i| records.get(i));
    match at {
        Some(r) if r.seq == seen.seq && r.hash == seen.hash => Ok(()),
        _ => Err(TrustError::Disagrees {
            seq: seen.seq,
            seen_at: seen.seen_at.clone(),
        }),
    }
}

/// The newest checkpoint of verified `records`, to remember.
pub fn newest(records: &[AuditRecord], public_key: &str, now: &str) -> Option<Seen> {
    records
        .iter()
        .rev()
        .find(|r| r.event.action == CHECKPOINT_ACTION)
        .map(|r| Seen {
            seq: r.seq,
            hash: r.hash.clone(),
            public_key: public_key.to_string(),
            seen_at: now.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::checkpoint::{AuditKey, Checkpoint};
    use crate::audit::{Actor, AuditChain, AuditEvent, Outcome, VerifyOptions, verify_with};

    fn policy() -> CheckpointPolicy {
        CheckpointPolicy {
            every_records: 4,
            every_secs: 60,
        }
    }

    fn ev(i: usize, time: &str) -> AuditEvent {
        let mut e = AuditEvent::now(Actor::system(), "t.e", &format!("t{i}"), Outcome::Ok);
        e.time = time.into();
        e
    }

    /// `n` records at `time` with a checkpoint after every 4.
    fn chain(key: &AuditKey, n: usize, time: &str) -> AuditChain {
        let mut c = AuditChain::default();
        for i in 0..n {
            c.append(ev(i, time));
            if (i + 1) % 4 == 0 {
                let cp = Checkpoint::sign(key, "m1", time.into(), &c).unwrap();
                c.append(cp.to_event());
            }
        }
        c
    }

    fn check(
        key: &AuditKey,
        recs: &[AuditRecord],
        reference: &str,
    ) -> Result<VerifyReport, TrustError> {
        let opts = VerifyOptions {
            public_key: Some(key.public_key()),
            require_anchor: true,
            gaps_allowed: false,
        };
        let report = verify_with(recs, &opts).expect("the links and signatures hold");
        let at = crate::util::parse_rfc3339(reference).unwrap();
        signed_enough(recs, &report, &policy(), at).map(|()| report)
    }

    const T0: &str = "2026-11-02T12:00:00Z";

    #[test]
    fn an_empty_chain_is_not_vouched_for() {
        let key = AuditKey::generate().unwrap();
        assert_eq!(check(&key, &[], T0).unwrap_err(), TrustError::Empty);
    }

    #[test]
    fn a_chain_stripped_of_its_checkpoints_fails_by_count_or_age() {
        let key = AuditKey::generate().unwrap();
        let whole = chain(&key, 20, T0);
        check(&key, whole.records(), "2026-11-02T13:00:00Z").unwrap();
        let mut stripped = AuditChain::default();
        for r in whole.records() {
            if r.event.action != CHECKPOINT_ACTION {
                stripped.append(r.event.clone());
            }
        }
        // 20 unsigned records: more than twice 4.
        let e = check(&key, stripped.records(), T0).unwrap_err();
        assert!(
            matches!(e, TrustError::UnsignedTail { count: 20, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("checkpoints were stripped"), "{e}");
        // Three unsigned records, but older than twice 60 s at the export's time.
        let few = &stripped.records()[..3];
        check(&key, few, "2026-11-02T12:01:59Z").unwrap();
        let e = check(&key, few, "2026-11-02T12:02:01Z").unwrap_err();
        assert!(
            matches!(e, TrustError::UnsignedTail { count: 3, .. }),
            "{e}"
        );
    }

    #[test]
    fn a_young_unsigned_tail_passes() {
        let key = AuditKey::generate().unwrap();
        let mut c = chain(&key, 8, T0);
        for i in 0..3 {
            c.append(ev(i, T0));
        }
        let r = check(&key, c.records(), "2026-11-02T12:01:00Z").unwrap();
        assert_eq!(r.last_checkpoint, Some(10));
    }

    #[test]
    fn a_cut_or_rewritten_tail_is_caught_against_the_newest_checkpoint_seen() {
        let key = AuditKey::generate().unwrap();
        let c = chain(&key, 12, T0);
        let seen = newest(c.records(), key.public_key(), T0).unwrap();
        assert_eq!(seen.seq, 15);
        reaches(c.records(), &seen).unwrap();
        // Cut just before it.
        let e = reaches(&c.records()[..14], &seen).unwrap_err();
        assert_eq!(
            e,
            TrustError::EndsBefore {
                seq: 15,
                last: 14,
                seen_at: T0.into()
            }
        );
        assert!(e.to_string().contains("cut off its tail"), "{e}");
        // Rebuilt without checkpoints: record 15 is another record, or there is none.
        let strip = |c: &AuditChain| {
            let mut out = AuditChain::default();
            for r in c.records() {
                if r.event.action != CHECKPOINT_ACTION {
                    out.append(r.event.clone());
                }
            }
            out
        };
        let longer = chain(&key, 20, T0);
        assert!(matches!(
            reaches(strip(&longer).records(), &seen),
            Err(TrustError::Disagrees { seq: 15, .. })
        ));
        assert!(matches!(
            reaches(strip(&c).records(), &seen),
            Err(TrustError::EndsBefore {
                seq: 15,
                last: 12,
                ..
            })
        ));
        // The same chain grown, then trimmed past it by retention: the anchor is signed.
        reaches(longer.records(), &seen).unwrap();
        reaches(&longer.records()[15..], &seen).unwrap();
        assert!(matches!(
            reaches(&[], &seen),
            Err(TrustError::EndsBefore { last: 0, .. })
        ));
    }
}
