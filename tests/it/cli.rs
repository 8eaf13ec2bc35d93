//! The CLI on its own: flags, `--host` handling and offline commands, with no daemon behind it.

use crate::harness::{
    assert_error, assert_usage_error, skep, skep_bin, stderr, stdout, write_file,
};

#[test]
fn help_and_version_succeed() {
    let out = skep(&["--help"]);
    assert!(out.status.success());
    for cmd in ["daemon", "swarm", "join-token", "node", "audit", "dev"] {
        assert!(stdout(&out).contains(cmd), "--help does not list {cmd}");
    }
    let out = skep(&["--version"]);
    assert!(out.status.success());
    assert!(stdout(&out).starts_with("skep "), "{}", stdout(&out));
}

#[test]
fn the_heartbeat_flag_is_hidden() {
    let out = skep(&["daemon", "--help"]);
    assert!(out.status.success());
    assert!(!stdout(&out).contains("heartbeat"), "{}", stdout(&out));
    assert!(stdout(&out).contains("--data-dir"));
}

#[test]
fn usage_errors_exit_2() {
    assert_usage_error(&skep(&["no-such-command"]));
    assert_usage_error(&skep(&["swarm", "init", "--cert-expiry", "soon"]));
    assert_usage_error(&skep(&["swarm", "init", "--cert-expiry", "90"]));
    assert_usage_error(&skep(&["join-token", "admin"]));
    assert_usage_error(&skep(&["swarm", "join", "127.0.0.1:2377"]));
    assert_usage_error(&skep(&["node", "ls", "--format", "{{.ID"]));
    assert_usage_error(&skep(&["daemon"]));
    assert_usage_error(&skep(&[
        "daemon",
        "--data-dir",
        "/tmp/x",
        "--listen-addr",
        "nowhere",
    ]));
    assert_usage_error(&skep(&["dev", "--nodes", "0"]));
}

#[test]
fn a_missing_daemon_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("skep.sock");
    let host = format!("unix://{}", sock.display());
    let out = skep(&["--host", &host, "node", "ls"]);
    assert_error(
        &out,
        &format!("cannot connect to the skep daemon at {host}"),
    );
    assert!(
        stderr(&out).contains("is `skep daemon` running?"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn skep_host_is_read_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let host = format!("unix://{}/env.sock", dir.path().display());
    let out = crate::harness::run(
        std::process::Command::new(skep_bin())
            .env("SKEP_HOST", &host)
            .args(["node", "ls"]),
        None,
    );
    assert_error(&out, &host);
}

#[test]
fn a_tcp_host_needs_an_operator_certificate() {
    let out = crate::harness::run(
        std::process::Command::new(skep_bin())
            .env_remove("SKEP_CERT_PATH")
            .env("SKEP_CONFIG", "/nonexistent-skep-config")
            .args(["--host", "tcp://127.0.0.1:2376", "node", "ls"]),
        None,
    );
    assert_error(&out, "needs an operator certificate");
    let out = skep(&["--host", "http://x", "node", "ls"]);
    assert_error(&out, "invalid --host");
}

#[test]
fn audit_verify_file_needs_no_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("empty.jsonl");
    write_file(&file, "");
    let path = file.to_str().unwrap();
    let out = skep(&[
        "--host",
        "unix:///nonexistent/skep.sock",
        "audit",
        "verify",
        "--file",
        path,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));

    write_file(&file, "{\"seq\": 1}\n");
    assert_error(&skep(&["audit", "verify", "--file", path]), "line 1 of");
    let missing = dir.path().join("missing.jsonl");
    assert_error(
        &skep(&["audit", "verify", "--file", missing.to_str().unwrap()]),
        "reading the audit export",
    );
}
