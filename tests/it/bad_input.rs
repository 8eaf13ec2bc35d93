//! Hostile and malformed input at every door: helpers here, scenarios by topic below them.
//! A bad input must be refused with exit 1 and a message that names the cause, and must leave
//! the daemon running and its state unchanged.
// The helpers serve tests still to be written.
#![allow(dead_code)]

use crate::harness::{Node, assert_error};

/// Asserts the CLI refused `args` on `node` with a message containing `needle`, and that the
/// daemon survived it and still answers.
pub fn assert_refused(node: &mut Node, args: &[&str], needle: &str) {
    let out = node.cli(args);
    assert_error(&out, needle);
    assert_daemon_alive(node);
}

/// Asserts the daemon process is alive and its socket answers a request.
pub fn assert_daemon_alive(node: &mut Node) {
    assert!(
        node.is_running(),
        "the daemon of {} died\n--- log ---\n{}",
        node.name(),
        node.log_tail()
    );
    let out = node.cli(&["node", "ls", "-q"]);
    // A node outside a swarm refuses `node ls`, but with a proper error, not a dead socket.
    assert!(
        out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("cannot connect"),
        "the daemon of {} stopped answering\n--- log ---\n{}",
        node.name(),
        node.log_tail()
    );
}

/// Join tokens that must all be refused, made from a valid one: each breaks one rule.
pub fn bad_tokens(valid: &str) -> Vec<(String, &'static str)> {
    let parts: Vec<&str> = valid.splitn(4, '-').collect();
    let (digest, secret) = match parts.as_slice() {
        ["SKEP", "1", digest, secret] => (*digest, *secret),
        _ => panic!("not a SKEP-1 token: {valid}"),
    };
    let flip = |s: &str| -> String {
        let mut c: Vec<char> = s.chars().collect();
        if let Some(last) = c.last_mut() {
            *last = if *last == 'A' { 'B' } else { 'A' };
        }
        c.into_iter().collect()
    };
    vec![
        (String::new(), "empty"),
        ("garbage".into(), "not a token"),
        (format!("SKEP-2-{digest}-{secret}"), "unknown version"),
        (
            format!("SKEP-1-{}-{secret}", flip(digest)),
            "wrong CA digest",
        ),
        (format!("SKEP-1-{digest}-{}", flip(secret)), "wrong secret"),
        (format!("SKEP-1-{digest}"), "no secret"),
        (
            format!("SKEP-1-{digest}-{}", &secret[..secret.len() / 2]),
            "short secret",
        ),
        (format!("SKEP-1-{digest}-{secret}x"), "long secret"),
        (valid.to_lowercase(), "lower case"),
        (format!("{valid}\n"), "trailing newline"),
        (
            format!("SKEP-1-{digest}-{}", "A".repeat(64 * 1024)),
            "huge secret",
        ),
    ]
}

/// `swarm join` remote addresses that must be refused before any connection is made.
pub fn bad_addrs() -> Vec<&'static str> {
    vec![
        "",
        "nohost",
        "127.0.0.1",
        "127.0.0.1:",
        ":2377",
        "127.0.0.1:0",
        "127.0.0.1:99999",
        "[::1",
        "a b:1",
    ]
}

/// Unlock keys that must be refused.
pub fn bad_unlock_keys() -> Vec<String> {
    vec![
        String::new(),
        "SKEP-KEY-1-".into(),
        format!("SKEP-KEY-1-{}", "0".repeat(63)),
        format!("SKEP-KEY-1-{}", "g".repeat(64)),
        format!("SKEP-KEY-2-{}", "0".repeat(64)),
        "x".repeat(1 << 20),
    ]
}

#[test]
fn bad_token_helper_breaks_each_rule_once() {
    let valid = "SKEP-1-ABCDEFGHIJKLMNOPQRSTUVWXYZ234567-SECRETSECRETSECRET";
    let bad = bad_tokens(valid);
    assert!(bad.iter().all(|(t, _)| t != valid));
    let mut seen = std::collections::HashSet::new();
    assert!(
        bad.iter().all(|(t, _)| seen.insert(t.clone())),
        "duplicates"
    );
}
