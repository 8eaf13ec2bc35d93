//! The daemons' own logs, as a log collector reads them: with `--log-format json` every line
//! is one JSON object; once a node has an ID every line names it (`node_id`), and lines about
//! a task name it (`task_id`, `service_id`); and, at trace level, through init with autolock,
//! joins, a secret delivered to tasks on every node and rotated, join-token and unlock-key
//! rotation, an operator's certificate, a backup with a generated key, and a locked restart
//! and its unlock, no secret value, join token, unlock key, backup key or operator key appears
//! in any daemon's log, in clear or encoded.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use serde_json::Value;

use crate::harness::{
    Cluster, Node, exec_service, json_lines, run, skep_bin, stderr, stdout, timeout, unlock_key,
    wait_for, wait_until,
};

/// Every line, libraries' wire-level ones included: what might carry a secret is logged.
const JSON_TRACE: [&str; 4] = ["--log-format", "json", "--log-level", "trace"];

#[test]
fn json_logs_name_the_node_and_task_and_never_hold_a_secret() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let mut c = Cluster::init_opts(2, 1, &["--autolock"], &JSON_TRACE);
    let mut needles = Needles::default();
    let key = unlock_key(&c.init_output);
    needles.unlock_key("unlock key", &key);
    let m = &c.nodes[0];
    for role in ["worker", "manager"] {
        let token = m.cli_ok(&["join-token", "-q", role]).trim().to_string();
        needles.token(&format!("{role} join token"), &token);
    }

    // A secret with a random value, used by a task on every node, then rotated.
    let v1 = random_value();
    let v2 = random_value();
    needles.value("secret value v1", v1.as_bytes());
    needles.value("secret value v2", v2.as_bytes());
    let out = m.cli_stdin(&["secret", "create", "db", "-"], &v1);
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    exec_service(
        m,
        "reader",
        &["--mode", "global", "--secret", "db"],
        "test -s /run/secrets/db && exec sleep 1000",
    );
    let tasks = wait_for(timeout(), "a reader task running on each node", || {
        let tasks = running_tasks(m, "reader");
        if tasks.len() == c.nodes.len() {
            Ok(tasks)
        } else {
            Err(format!("{tasks:?}"))
        }
    });
    let inspected: Value = serde_json::from_str(&m.cli_ok(&["service", "inspect", "reader"]))
        .expect("service inspect prints JSON");
    let service_id = ["ID", "id"]
        .iter()
        .find_map(|k| inspected[0][k].as_str())
        .unwrap_or_else(|| panic!("no service ID in {inspected}"))
        .to_string();
    let out = m.cli_stdin(&["secret", "update", "db", "-"], &v2);
    assert!(out.status.success(), "{}", crate::harness::describe(&out));

    // Credentials rotated and used: a new worker token, a new unlock key that opens m1 after
    // a restart, an operator's certificate used over mTLS, a backup's generated key.
    let rotated = m
        .cli_ok(&["join-token", "--rotate", "-q", "worker"])
        .trim()
        .to_string();
    needles.token("rotated worker join token", &rotated);
    m.cli_ok(&["swarm", "unlock-key", "--rotate"]);
    let key2 = m.cli_ok(&["swarm", "unlock-key", "-q"]).trim().to_string();
    needles.unlock_key("rotated unlock key", &key2);
    let ops = tempfile::tempdir().unwrap();
    let op_dir = enrol_operator(m, ops.path());
    needles.pem("operator key", &op_dir.join("key.pem"));
    let listed = run(
        Command::new(skep_bin())
            .args(["--host", &format!("tcp://{}", m.addr())])
            .arg("--cert-path")
            .arg(&op_dir)
            .args(["node", "ls", "-q"]),
        None,
    );
    assert!(
        listed.status.success(),
        "{}",
        crate::harness::describe(&listed)
    );
    let backup = ops.path().join("swarm.bkp");
    let said = m.cli_ok(&["swarm", "backup", "-o", backup.to_str().unwrap()]);
    let backup_key = said
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("SKEPBKP-"))
        .unwrap_or_else(|| panic!("no backup key in:\n{said}"));
    needles.backup_key("backup key", backup_key);
    let sealed = c.nodes[0].data_dir().join("kek.sealed");
    let raw2 = hex::decode(key2.trim_start_matches("SKEP-KEY-1-")).unwrap();
    wait_until(
        timeout(),
        "m1's key wrapped under the new unlock key",
        || {
            let b = std::fs::read(&sealed).unwrap_or_default();
            skep::store::seal::Kek::from_unlock_key(&raw2)
                .open_blob(skep::store::seal::RecordKind::WrappedKek, &b)
                .is_ok()
        },
    );
    c.nodes[0].restart();
    let out = c.nodes[0].cli_stdin(&["swarm", "unlock"], &format!("{key2}\n"));
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    c.wait_all_ready(0);
    // The restarted m1 logs about the tasks it adopted before the scan.
    wait_until(
        timeout(),
        "m1's task running again after the unlock",
        || running_tasks(&c.nodes[0], "reader").len() == c.nodes.len(),
    );

    let mut task_lines = 0;
    for n in &c.nodes {
        let lines = log_lines(n);
        assert!(
            lines.iter().any(|l| l["level"] == "TRACE"),
            "{}: --log-level trace logged no trace line",
            n.name()
        );
        check_node_ids(n, &lines);
        task_lines += check_task_ids(n, &lines, &tasks, &service_id);
        needles.assert_absent(n.name(), &n.log());
    }
    assert!(task_lines > 0, "no line names a reader task: {tasks:?}");
}

#[test]
fn a_bad_skep_log_filter_stops_the_daemon_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(
        Command::new(skep_bin())
            .env("SKEP_LOG", "info,skep=loud")
            .args(["daemon", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--socket")
            .arg(dir.path().join("skep.sock")),
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        crate::harness::describe(&out)
    );
    let err = stderr(&out);
    assert!(
        err.contains("SKEP_LOG=\"info,skep=loud\" is not a log filter"),
        "{err}"
    );
    let out = run(
        Command::new(skep_bin()).args(["daemon", "--data-dir", "d", "--log-level", "loud"]),
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        crate::harness::describe(&out)
    );
}

/// Every line of `n`'s log that the daemon wrote (not the harness's markers), parsed; panics
/// on a line that is not one JSON object.
fn log_lines(n: &Node) -> Vec<serde_json::Map<String, Value>> {
    n.log()
        .lines()
        .filter(|l| !l.starts_with("===== harness:"))
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(Value::Object(o)) => o,
            _ => panic!("{}: a log line is not a JSON object: {l:?}", n.name()),
        })
        .collect()
}

/// From the first line naming the node on, every line names it, with its ID.
fn check_node_ids(n: &Node, lines: &[serde_json::Map<String, Value>]) {
    let first = lines
        .iter()
        .position(|l| l.contains_key("node_id"))
        .unwrap_or_else(|| panic!("{}: no line names the node", n.name()));
    for l in &lines[first..] {
        assert_eq!(
            l.get("node_id").and_then(Value::as_str),
            Some(n.id()),
            "{}: a line after the node got its ID does not carry it: {l:?}",
            n.name()
        );
    }
}

/// Lines of skep's agent that mention a task of `tasks` carry its `task_id`, and those about
/// running it its `service_id`; how many lines carry one of the tasks' IDs.
fn check_task_ids(
    n: &Node,
    lines: &[serde_json::Map<String, Value>],
    tasks: &[String],
    service_id: &str,
) -> usize {
    let mut count = 0;
    for l in lines {
        let skep_agent = l["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("skep::agent"));
        let text = Value::Object(l.clone()).to_string();
        let Some(task) = tasks.iter().find(|t| text.contains(t.as_str())) else {
            continue;
        };
        if skep_agent {
            assert_eq!(
                l.get("task_id").and_then(Value::as_str),
                Some(task.as_str()),
                "{}: a line about task {task} has no task_id field: {l:?}",
                n.name()
            );
        }
        if l.get("task_id").and_then(Value::as_str) == Some(task.as_str()) {
            count += 1;
            if l.contains_key("service_id") {
                assert_eq!(l["service_id"], service_id, "{l:?}");
            }
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l.get("service_id").and_then(Value::as_str) == Some(service_id)),
        "{}: no line names the service {service_id}",
        n.name()
    );
    count
}

/// IDs of the running tasks of `service`.
fn running_tasks(m: &Node, service: &str) -> Vec<String> {
    let out = m.cli(&["service", "ps", "--no-trunc", "--format", "json", service]);
    if !out.status.success() {
        return Vec::new();
    }
    json_lines(&stdout(&out))
        .iter()
        .filter(|t| {
            t["CurrentState"]
                .as_str()
                .is_some_and(|s| s.starts_with("Running"))
        })
        .filter_map(|t| t["ID"].as_str().map(str::to_string))
        .collect()
}

/// 32 random letters and digits, a value found nowhere else by chance.
fn random_value() -> String {
    use rand::Rng as _;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect()
}

/// An operator's directory (key.pem, cert.pem, ca.pem): the key made by `operator csr` on
/// this machine, the certificate signed by `m`.
fn enrol_operator(m: &Node, root: &Path) -> std::path::PathBuf {
    let dir = root.join("alice");
    let out = run(
        Command::new(skep_bin())
            .args(["operator", "csr", "--name", "alice", "--out"])
            .arg(&dir),
        None,
    );
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    let csr = dir.join("alice.csr");
    let cert = m.cli_ok(&["operator", "sign", "--role", "admin", csr.to_str().unwrap()]);
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("ca.pem"), m.cli_ok(&["swarm", "ca", "-q"])).unwrap();
    dir
}

/// What must appear in no log: each secret in every form a log line could carry it.
#[derive(Default)]
struct Needles(BTreeMap<String, String>);

impl Needles {
    /// `bytes` as text, hex, base64 (standard and URL-safe, at any alignment inside a longer
    /// encoding) and as Rust's `Debug` of a byte slice.
    fn value(&mut self, what: &str, bytes: &[u8]) {
        let mut add = |form: &str, s: String| {
            assert!(
                s.len() >= 12,
                "{what} {form} is too short to search for: {s:?}"
            );
            self.0.insert(s, format!("{what} ({form})"));
        };
        if let Ok(text) = std::str::from_utf8(bytes) {
            add("text", text.to_string());
        }
        add("hex", hex::encode(bytes));
        add("HEX", hex::encode_upper(bytes));
        for (name, engine) in [
            ("base64", base64::engine::general_purpose::STANDARD_NO_PAD),
            (
                "base64url",
                base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ),
        ] {
            for offset in 0..3 {
                let mut shifted = vec![0u8; offset];
                shifted.extend_from_slice(bytes);
                let enc = engine.encode(&shifted);
                // The characters made of `bytes`' bits alone.
                let from = (8 * offset).div_ceil(6);
                let to = 8 * (offset + bytes.len()) / 6;
                add(
                    &format!("{name} at offset {offset}"),
                    enc[from..to].to_string(),
                );
            }
        }
        let debug = format!("{bytes:?}");
        add("Debug bytes", debug.trim_matches(['[', ']']).to_string());
    }

    /// A join token: the whole text, and its secret part (as text and as the raw bytes).
    fn token(&mut self, what: &str, token: &str) {
        assert!(token.starts_with("SKEP-1-"), "{token}");
        let secret = token.rsplit('-').next().unwrap();
        self.value(&format!("{what}, whole"), token.as_bytes());
        self.value(&format!("{what}, secret part"), secret.as_bytes());
        self.value(
            &format!("{what}, secret bytes"),
            &base32_decode(RFC4648, secret),
        );
    }

    /// An unlock key: its text, and its 32 raw bytes.
    fn unlock_key(&mut self, what: &str, key: &str) {
        let hex_part = key
            .strip_prefix("SKEP-KEY-1-")
            .unwrap_or_else(|| panic!("{key}"));
        self.value(what, key.as_bytes());
        self.value(&format!("{what}, bytes"), &hex::decode(hex_part).unwrap());
    }

    /// A generated backup key: its text, and its 32 key bytes.
    fn backup_key(&mut self, what: &str, key: &str) {
        let encoded = key
            .strip_prefix("SKEPBKP-")
            .unwrap_or_else(|| panic!("{key}"));
        self.value(what, key.as_bytes());
        let raw = base32_decode(CROCKFORD, encoded);
        // Decoded right: the 4 bytes after the key are its checksum (src/store/backup/key.rs).
        use sha2::Digest as _;
        let sum = sha2::Sha256::new()
            .chain_update(b"skep-backup-key-checksum-v1")
            .chain_update(&raw[..32])
            .finalize();
        assert_eq!(raw[32..36], sum[..4], "{what} did not decode");
        self.value(&format!("{what}, bytes"), &raw[..32]);
    }

    /// A PEM private key file: its base64 body's lines and the DER bytes.
    fn pem(&mut self, what: &str, path: &Path) {
        let text = std::fs::read_to_string(path).unwrap();
        let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        for line in text
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        {
            self.0
                .insert(line.to_string(), format!("{what} (PEM line)"));
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .unwrap();
        // The key's secret scalar sits inside the DER: all of it would be found through it.
        self.value(&format!("{what}, DER"), &der);
    }

    fn assert_absent(&self, node: &str, log: &str) {
        assert!(self.0.len() > 20, "too few needles: {}", self.0.len());
        for (needle, what) in &self.0 {
            if let Some(at) = log.find(needle.as_str()) {
                let line = log[..at].lines().count();
                panic!("{node}'s log holds the {what} at line {line}");
            }
        }
    }
}

/// RFC 4648's base32 alphabet, lower case (a join token's secret).
const RFC4648: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
/// Crockford's base32 alphabet (a generated backup key).
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Base32 in `alphabet`, without padding.
fn base32_decode(alphabet: &[u8; 32], text: &str) -> Vec<u8> {
    let (mut bits, mut acc, mut out) = (0u32, 0u32, Vec::new());
    for c in text.bytes() {
        let v = alphabet
            .iter()
            .position(|&a| a == c)
            .unwrap_or_else(|| panic!("{:?} is not base32", char::from(c)));
        acc = (acc << 5) | u32::try_from(v).unwrap();
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).unwrap());
        }
    }
    out
}

#[test]
fn needles_find_a_value_inside_longer_encodings() {
    let mut n = Needles::default();
    n.value("v", b"0123456789abcdef-the-value");
    let hay = |s: String| n.0.keys().any(|k| s.contains(k.as_str()));
    for prefix in 0..3 {
        let mut blob = vec![7u8; prefix];
        blob.extend_from_slice(b"0123456789abcdef-the-value");
        blob.extend_from_slice(b"tail");
        assert!(
            hay(base64::engine::general_purpose::STANDARD.encode(&blob)),
            "{prefix}"
        );
        assert!(
            hay(base64::engine::general_purpose::URL_SAFE.encode(&blob)),
            "{prefix}"
        );
        assert!(hay(hex::encode(&blob)), "{prefix}");
        assert!(hay(format!("{blob:?}")), "{prefix}");
    }
    assert_eq!(base32_decode(RFC4648, "mzxw6ytboi"), b"foobar");
}
