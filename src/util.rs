//! Small helpers shared by every module.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The current UTC time in RFC 3339.
pub fn now_rfc3339() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

/// Formats a time in RFC 3339 (UTC, seconds precision).
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Parses an RFC 3339 time.
pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

pub use skep_init::text::{QUOTE_BYTES, prefix, quote};

/// A status with the chain of errors under it (a TLS alert sits a few levels down).
pub fn error_chain(s: &tonic::Status) -> String {
    let mut out = s.message().to_string();
    let mut next = std::error::Error::source(s);
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

/// For unit tests that need root (mounts, namespaces): whether to go on. Without root the
/// test fails, so CI never passes by skipping, unless `SKEP_IT_ALLOW_SKIP=1` says to skip and
/// `SKEP_IT_REQUIRE` does not name `exec` (the rule of `tests/it/harness/require.rs`).
#[cfg(test)]
pub(crate) fn root_or_skip() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let required = std::env::var("SKEP_IT_REQUIRE")
        .is_ok_and(|list| list.split(',').any(|n| n.trim() == "exec"));
    if !required && std::env::var_os("SKEP_IT_ALLOW_SKIP").is_some_and(|v| v == "1") {
        eprintln!("NOTICE: this test needs root: skipping (SKEP_IT_ALLOW_SKIP=1)");
        return false;
    }
    panic!("this test needs root (set SKEP_IT_ALLOW_SKIP=1 to skip it on purpose)");
}

/// For randomised unit tests: a generator from `SKEP_TEST_SEED`, or from a new seed, which
/// it prints (shown when the test fails) with how to repeat the run.
#[cfg(test)]
pub(crate) fn seeded_rng() -> (u64, rand::rngs::StdRng) {
    use rand::SeedableRng;
    let seed: u64 = std::env::var("SKEP_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed} (SKEP_TEST_SEED={seed} repeats it)");
    (seed, rand::rngs::StdRng::seed_from_u64(seed))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_prefix_is_cut_at_a_character_boundary() {
        assert_eq!(super::prefix("abc", 5), "abc");
        assert_eq!(super::prefix("abcdef", 3), "abc…");
        assert_eq!(super::prefix("ééé", 3), "é…");
    }

    #[test]
    fn a_quote_is_short_and_says_how_long_the_value_was() {
        assert_eq!(super::quote("web"), "\"web\"");
        let q = super::quote(&"x".repeat(120_000));
        assert!(q.len() < 100, "{q}");
        assert!(q.ends_with("(120000 bytes)"), "{q}");
    }
}
