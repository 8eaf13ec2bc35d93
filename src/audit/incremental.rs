//! Verifying a chain that grows, a piece at a time: the first check walks the whole chain
//! (from record 1 or a signed checkpoint, checkpoints against the swarm's key); later checks
//! walk only what was appended since, from the last record verified. A metrics scrape asks
//! this on every manager, so a scrape costs the new records, not the whole chain.
//!
//! What it does not re-check: a record already verified that changed in memory without its
//! stored hash changing (the process's own memory is trusted). The chain read from disk at
//! start is verified in full by the first check.

use super::{AuditChain, ChainError, VerifyOptions, verify_with};

/// The state of an incremental verification (see the module documentation).
#[derive(Debug, Default)]
pub struct Incremental {
    /// The last record verified: its seq and hash.
    verified: Option<(u64, String)>,
    /// The key the verified part was checked against.
    key: Option<String>,
    /// The error of the last check, kept until the chain changes.
    failed: Option<(Option<u64>, ChainError)>,
}

impl Incremental {
    /// Verifies what `chain` holds beyond what an earlier call verified, against the swarm's
    /// audit public key `key` (hex) when it has one. `Ok` when the whole chain verifies.
    pub fn check(&mut self, chain: &AuditChain, key: Option<&str>) -> Result<(), ChainError> {
        let head = chain.head().map(|r| r.seq);
        if let Some((at, e)) = &self.failed
            && *at == head
        {
            return Err(e.clone());
        }
        if self.key.as_deref() != key {
            self.verified = None;
            self.key = key.map(str::to_string);
        }
        // From the last verified record (its hash recomputed, every link after it checked),
        // if the chain still holds it unchanged; else the whole chain, anchored.
        let resume = self
            .verified
            .as_ref()
            .filter(|(seq, hash)| chain.get(*seq).is_some_and(|r| r.hash == *hash))
            .map(|(seq, _)| *seq);
        let (records, require_anchor) = match resume {
            Some(seq) => (chain.since(seq), false),
            None => (chain.records(), true),
        };
        let opts = VerifyOptions {
            public_key: key,
            gaps_allowed: false,
            require_anchor,
        };
        match verify_with(records, &opts) {
            Ok(report) => {
                self.failed = None;
                if let Some(last) = report.last_seq.zip(report.last_hash) {
                    self.verified = Some(last);
                }
                Ok(())
            }
            Err(e) => {
                self.verified = None;
                self.failed = Some((head, e.clone()));
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Actor, AuditEvent, Outcome};

    fn event(i: usize) -> AuditEvent {
        AuditEvent::now(Actor::system(), "test.event", &format!("t{i}"), Outcome::Ok)
    }

    #[test]
    fn a_growing_chain_verifies_piece_by_piece() {
        let mut chain = AuditChain::default();
        let mut v = Incremental::default();
        assert_eq!(v.check(&chain, None), Ok(()));
        for i in 0..5 {
            chain.append(event(i));
        }
        assert_eq!(v.check(&chain, None), Ok(()));
        assert_eq!(v.verified.as_ref().map(|v| v.0), Some(5));
        for i in 5..8 {
            chain.append(event(i));
        }
        assert_eq!(v.check(&chain, None), Ok(()));
        assert_eq!(v.verified.as_ref().map(|v| v.0), Some(8));
    }

    #[test]
    fn a_record_altered_after_the_last_check_is_caught() {
        let mut chain = AuditChain::default();
        let mut v = Incremental::default();
        for i in 0..5 {
            chain.append(event(i));
        }
        assert_eq!(v.check(&chain, None), Ok(()));
        for i in 5..8 {
            chain.append(event(i));
        }
        chain.get_mut(7).expect("record 7").event.target = "forged".into();
        assert_eq!(
            v.check(&chain, None),
            Err(ChainError::HashMismatch { seq: 7 })
        );
        // Still failing on the next check, without walking again.
        assert!(v.check(&chain, None).is_err());
    }

    #[test]
    fn a_verified_record_rewritten_with_its_hash_is_caught_from_scratch() {
        let mut chain = AuditChain::default();
        let mut v = Incremental::default();
        for i in 0..5 {
            chain.append(event(i));
        }
        assert_eq!(v.check(&chain, None), Ok(()));
        // The last verified record's stored hash changes: the check starts over.
        let r = chain.get_mut(5).expect("record 5");
        r.event.target = "forged".into();
        r.hash = crate::audit::hash_of(r);
        chain.append(event(5));
        assert_eq!(
            v.check(&chain, None),
            Ok(()),
            "a rehashed head is a valid chain"
        );
        chain.get_mut(2).expect("record 2").event.target = "forged".into();
        let r = chain.get_mut(6).expect("record 6");
        r.hash = "0".repeat(64);
        assert_eq!(
            v.check(&chain, None),
            Err(ChainError::HashMismatch { seq: 2 })
        );
    }

    #[test]
    fn a_chain_missing_its_start_does_not_verify() {
        let mut chain = AuditChain::default();
        for i in 0..5 {
            chain.append(event(i));
        }
        chain.trim_before(3);
        let mut v = Incremental::default();
        assert_eq!(
            v.check(&chain, None),
            Err(ChainError::Unanchored { seq: 3 })
        );
    }
}
