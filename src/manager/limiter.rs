//! Rate limit for audit records of failed attempts, per source address, so a flood of bad
//! tokens or handshakes cannot flood the audit log (or Raft). Pure: the caller passes the time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Records kept per source per window.
pub const MAX_PER_WINDOW: u32 = 10;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Sources remembered at most; the oldest windows are forgotten first.
const MAX_SOURCES: usize = 4096;

/// What to do with one more failure from a source.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Audit it. `suppressed` failures of this source were dropped in its previous window and
    /// should be mentioned in this record.
    Record {
        /// Failures not audited since the last record.
        suppressed: u64,
    },
    /// Over the limit: count it, do not audit it.
    Suppress,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    recorded: u32,
    suppressed: u64,
}

/// Per-source failure counter.
#[derive(Debug, Default)]
pub struct FailureLimiter {
    sources: HashMap<IpAddr, Window>,
}

impl FailureLimiter {
    /// Decides whether one more failure from `source` at `now` is audited.
    pub fn admit(&mut self, source: IpAddr, now: Instant) -> Admit {
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&source) {
            self.sources
                .retain(|_, w| now.duration_since(w.start) < WINDOW);
            if self.sources.len() >= MAX_SOURCES {
                return Admit::Suppress;
            }
        }
        let w = self.sources.entry(source).or_insert(Window {
            start: now,
            recorded: 0,
            suppressed: 0,
        });
        if now.duration_since(w.start) >= WINDOW {
            w.start = now;
            w.recorded = 0;
        }
        if w.recorded < MAX_PER_WINDOW {
            w.recorded += 1;
            let suppressed = std::mem::take(&mut w.suppressed);
            Admit::Record { suppressed }
        } else {
            w.suppressed += 1;
            Admit::Suppress
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_source_and_reports_suppressed() {
        let mut l = FailureLimiter::default();
        let a: IpAddr = [127, 0, 0, 9].into();
        let b: IpAddr = [127, 0, 0, 10].into();
        let t0 = Instant::now();
        for _ in 0..MAX_PER_WINDOW {
            assert_eq!(l.admit(a, t0), Admit::Record { suppressed: 0 });
        }
        assert_eq!(l.admit(a, t0), Admit::Suppress);
        assert_eq!(l.admit(a, t0), Admit::Suppress);
        assert_eq!(l.admit(b, t0), Admit::Record { suppressed: 0 });
        assert_eq!(l.admit(a, t0 + WINDOW), Admit::Record { suppressed: 2 });
    }
}
