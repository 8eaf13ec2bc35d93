//! Waiting: timeouts scaled for slow machines, and polls of a condition up to a deadline that
//! fail with what they last saw (no fixed sleeps stand in for waits).

use std::time::Duration;

use super::poll_for;

const POLL: Duration = Duration::from_millis(100);

/// How long a wait may take: 30 s, times `SKEP_IT_TIMEOUT_SCALE` (for slow machines).
pub fn timeout() -> Duration {
    scaled(Duration::from_secs(30))
}

/// How long one CLI command may take before the test fails: 60 s, scaled.
pub fn cli_timeout() -> Duration {
    scaled(Duration::from_secs(60))
}

fn scaled(d: Duration) -> Duration {
    let scale = std::env::var("SKEP_IT_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(1.0);
    d.mul_f64(scale)
}

/// Polls `cond` until it holds; panics after `within` naming `what`.
pub fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(within, what, || {
        if cond() {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
}

/// Polls `f` until it returns `Ok`; panics after `within` naming `what` and the last `Err`,
/// which should say what was seen instead.
pub fn wait_for<T>(within: Duration, what: &str, f: impl FnMut() -> Result<T, String>) -> T {
    try_wait_for(within, what, f).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`wait_for`], but returns the failure (naming `what` and the last `Err`) instead of
/// panicking: for a test that collects every failed check before it fails.
pub fn try_wait_for<T>(
    within: Duration,
    what: &str,
    f: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    poll_for(within, POLL, what, f)
}
