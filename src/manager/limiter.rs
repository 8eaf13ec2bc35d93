//! Rate limit for audit records of failed attempts, so a flood of bad tokens or handshakes
//! cannot flood the audit log (or Raft): at most [`MAX_PER_WINDOW`] records per source
//! address and [`GLOBAL_MAX_PER_WINDOW`] across all sources per [`WINDOW`]. Reaching the global
//! cap is itself recorded once per window, and what it suppressed is counted in one record
//! when the window ends. Pure: the caller passes the time.
//!
//! The windows live in memory only: a restarted manager starts them afresh, so a restart lets
//! at most one more window's worth (the global cap) through.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Records kept per source per window.
pub const MAX_PER_WINDOW: u32 = 10;
/// Records kept across all sources per window.
pub const GLOBAL_MAX_PER_WINDOW: u32 = 100;
/// The window.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Sources remembered at most; the oldest windows are forgotten first.
const MAX_SOURCES: usize = 4096;

/// What to do with one more failure from a source.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Audit it. `suppressed` failures of this source were dropped since its last record and
    /// should be mentioned in this record.
    Record {
        /// Failures not audited since the last record.
        suppressed: u64,
    },
    /// This failure reached the global cap: record that failures are suppressed from now to
    /// the end of the window, instead of this one.
    Capped,
    /// Over a limit: count it, do not audit it.
    Suppress,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    recorded: u32,
    suppressed: u64,
}

impl Window {
    fn new(now: Instant) -> Self {
        Window {
            start: now,
            recorded: 0,
            suppressed: 0,
        }
    }

    /// Starts a new window if this one is over; returns the suppressed count it ended with.
    fn roll(&mut self, now: Instant) -> u64 {
        if now.duration_since(self.start) < WINDOW {
            return 0;
        }
        self.start = now;
        self.recorded = 0;
        std::mem::take(&mut self.suppressed)
    }
}

/// Per-source and global failure counters.
#[derive(Debug)]
pub struct FailureLimiter {
    sources: HashMap<IpAddr, Window>,
    global: Window,
    /// Failures the global cap suppressed in windows that have ended, not yet reported.
    unreported: u64,
}

impl Default for FailureLimiter {
    fn default() -> Self {
        FailureLimiter {
            sources: HashMap::new(),
            global: Window::new(Instant::now()),
            unreported: 0,
        }
    }
}

impl FailureLimiter {
    /// Decides whether one more failure from `source` at `now` is audited.
    pub fn admit(&mut self, source: IpAddr, now: Instant) -> Admit {
        self.unreported += self.global.roll(now);
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&source) {
            self.sources
                .retain(|_, w| now.duration_since(w.start) < WINDOW);
            if self.sources.len() >= MAX_SOURCES {
                return self.suppress_globally();
            }
        }
        let w = self
            .sources
            .entry(source)
            .or_insert_with(|| Window::new(now));
        if now.duration_since(w.start) >= WINDOW {
            w.start = now;
            w.recorded = 0;
        }
        if w.recorded >= MAX_PER_WINDOW {
            w.suppressed += 1;
            return Admit::Suppress;
        }
        if self.global.recorded >= GLOBAL_MAX_PER_WINDOW {
            // Counted for the source too: its next record says what it missed.
            w.suppressed += 1;
            return self.suppress_globally();
        }
        w.recorded += 1;
        self.global.recorded += 1;
        Admit::Record {
            suppressed: std::mem::take(&mut w.suppressed),
        }
    }

    fn suppress_globally(&mut self) -> Admit {
        self.global.suppressed += 1;
        if self.global.suppressed == 1 {
            Admit::Capped
        } else {
            Admit::Suppress
        }
    }

    /// How many failures the global cap suppressed in windows that ended by `now`, once:
    /// the caller records that count (called on every failure and periodically).
    pub fn take_summary(&mut self, now: Instant) -> Option<u64> {
        self.unreported += self.global.roll(now);
        Some(std::mem::take(&mut self.unreported)).filter(|n| *n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(i: u32) -> IpAddr {
        std::net::Ipv4Addr::from(0x7f00_0000 + i).into()
    }

    #[test]
    fn limits_per_source_and_reports_suppressed() {
        let mut l = FailureLimiter::default();
        let (a, b) = (ip(9), ip(10));
        let t0 = Instant::now();
        for _ in 0..MAX_PER_WINDOW {
            assert_eq!(l.admit(a, t0), Admit::Record { suppressed: 0 });
        }
        assert_eq!(l.admit(a, t0), Admit::Suppress);
        assert_eq!(l.admit(a, t0), Admit::Suppress);
        assert_eq!(l.admit(b, t0), Admit::Record { suppressed: 0 });
        assert_eq!(l.admit(a, t0 + WINDOW), Admit::Record { suppressed: 2 });
        assert_eq!(l.take_summary(t0 + WINDOW), None);
    }

    #[test]
    fn many_sources_share_one_cap_said_once_and_counted_when_the_window_ends() {
        let mut l = FailureLimiter::default();
        let t0 = Instant::now();
        let mut recorded = 0;
        let mut capped = 0;
        // 200 sources, 12 failures each: per source they would make 2,000 records.
        for round in 0..12 {
            for s in 0..200 {
                match l.admit(ip(s), t0 + Duration::from_millis(round)) {
                    Admit::Record { .. } => recorded += 1,
                    Admit::Capped => capped += 1,
                    Admit::Suppress => {}
                }
            }
        }
        assert_eq!(recorded, GLOBAL_MAX_PER_WINDOW);
        assert_eq!(capped, 1);
        assert_eq!(l.take_summary(t0 + Duration::from_secs(1)), None);
        let total = 12 * 200 - u64::from(GLOBAL_MAX_PER_WINDOW);
        assert_eq!(l.take_summary(t0 + WINDOW), Some(total));
        assert_eq!(l.take_summary(t0 + WINDOW), None);
        // The next window records again, and a source learns what it missed.
        assert_eq!(
            l.admit(ip(150), t0 + WINDOW),
            Admit::Record { suppressed: 12 }
        );
    }

    #[test]
    fn a_window_that_ends_during_a_flood_is_counted_at_the_next_failure() {
        let mut l = FailureLimiter::default();
        let t0 = Instant::now();
        for s in 0..=GLOBAL_MAX_PER_WINDOW + 5 {
            l.admit(ip(s), t0);
        }
        // Suppressed: the cap marker's failure and 5 more.
        assert_eq!(
            l.admit(ip(1000), t0 + WINDOW),
            Admit::Record { suppressed: 0 }
        );
        assert_eq!(l.take_summary(t0 + WINDOW), Some(6));
    }
}
