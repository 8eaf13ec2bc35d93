//! Polling a condition up to a deadline, failing with what was last seen. Plain `std`, nothing
//! of the test crate: `benches/common` includes this file too (`#[path]`), each with its own
//! interval.

use std::time::{Duration, Instant};

/// Calls `f` every `every` until it returns `Ok`; after `within`, the failure naming `what` and
/// the last `Err` (which should say what was seen instead).
pub fn poll_for<T>(
    within: Duration,
    every: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + within;
    loop {
        let last = match f() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "timed out after {within:?} waiting for {what}; last seen: {last}"
            ));
        }
        std::thread::sleep(every);
    }
}
