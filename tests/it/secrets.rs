//! Secrets through the CLI: created from stdin or a file, listed and inspected by digest and
//! never by value, refused when duplicated, oversized or in use, resolved when a service names
//! them, audited without the value, and sealed at rest.

use crate::harness::{
    Cluster, Node, assert_error, contains, files_under, json_lines, stdout, write_file,
};

/// Every CLI output of the test, checked at the end for the plaintext.
struct Seen(Vec<String>);

impl Seen {
    fn ok(&mut self, n: &Node, args: &[&str]) -> String {
        let out = n.cli_ok(args);
        self.0.push(out.clone());
        out
    }
    fn err(&mut self, n: &Node, args: &[&str], needle: &str) {
        let out = n.cli(args);
        assert_error(&out, needle);
        self.0.push(stdout(&out));
        self.0.push(crate::harness::stderr(&out));
    }
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

#[test]
fn secrets_are_stored_sealed_shown_by_digest_and_guarded_while_used() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    let mut seen = Seen(Vec::new());
    let stdin_value = "stdin-secret-value-k9q2x7";
    let file_value = "file-secret-value-p3w8z1";

    // From stdin.
    let out = m.cli_stdin(&["secret", "create", "db_password", "-"], stdin_value);
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    let id1 = stdout(&out).trim().to_string();
    assert!(!id1.is_empty());
    seen.0.push(stdout(&out));

    // From a file, with a label.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("api_key");
    write_file(&file, file_value);
    let id2 = seen
        .ok(
            m,
            &[
                "secret",
                "create",
                "--label",
                "env=prod",
                "api_key",
                file.to_str().unwrap(),
            ],
        )
        .trim()
        .to_string();
    assert_ne!(id1, id2);

    // ls: both, by name; -q: IDs; json: digests.
    let table = seen.ok(m, &["secret", "ls"]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID"), "{table}");
    assert!(
        lines[0].contains("NAME") && lines[0].contains("CREATED") && lines[0].contains("UPDATED")
    );
    assert_eq!(lines.len(), 3, "{table}");
    assert!(
        lines[1].contains("api_key") && lines[2].contains("db_password"),
        "{table}"
    );
    let quiet = seen.ok(m, &["secret", "ls", "-q"]);
    assert!(quiet.contains(&id1) && quiet.contains(&id2), "{quiet}");
    let listed = json_lines(&seen.ok(m, &["secret", "ls", "--format", "json"]));
    let db = listed.iter().find(|s| s["Name"] == "db_password").unwrap();
    assert_eq!(db["Digest"], sha256_hex(stdin_value.as_bytes()));

    // inspect: digest, size and labels, no value.
    let inspected: serde_json::Value =
        serde_json::from_str(&seen.ok(m, &["secret", "inspect", "api_key", &id1])).unwrap();
    assert_eq!(inspected[0]["Digest"], sha256_hex(file_value.as_bytes()));
    assert_eq!(inspected[0]["Size"], file_value.len());
    assert_eq!(inspected[0]["Spec"]["Labels"]["env"], "prod");
    assert_eq!(inspected[1]["ID"], id1.as_str());
    let pretty = seen.ok(m, &["secret", "inspect", "--pretty", "db_password"]);
    assert!(pretty.contains("Digest:"), "{pretty}");

    // Duplicate name, oversized, empty, bad name: refused.
    let out = m.cli_stdin(&["secret", "create", "db_password", "-"], "other");
    assert_error(&out, "already exists");
    let big = dir.path().join("big");
    write_file(&big, &"x".repeat(500 * 1024 + 1));
    seen.err(
        m,
        &["secret", "create", "big", big.to_str().unwrap()],
        "500 KiB",
    );
    seen.err(
        m,
        &["secret", "create", "bad/name", "-"],
        "not a valid secret name",
    );
    assert_eq!(seen.ok(m, &["secret", "ls", "-q"]).lines().count(), 2);

    // A service naming an unknown secret: refused, nothing stored.
    seen.err(
        m,
        &[
            "service", "create", "--detach", "--name", "web", "--secret", "db_pass", "redis",
        ],
        "secret: unknown secret db_pass",
    );
    assert_eq!(seen.ok(m, &["service", "ls", "-q"]), "");
    // A target outside /run/secrets: refused.
    seen.err(
        m,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "web",
            "--secret",
            "source=db_password,target=/etc/passwd",
            "redis",
        ],
        "/run/secrets",
    );
    assert_eq!(seen.ok(m, &["service", "ls", "-q"]), "");

    // A known one: accepted, its ID filled in.
    seen.ok(
        m,
        &[
            "service",
            "create",
            "--detach",
            "--name",
            "web",
            "--secret",
            "db_password",
            "redis",
        ],
    );
    let svc: serde_json::Value =
        serde_json::from_str(&seen.ok(m, &["service", "inspect", "web"])).unwrap();
    let text = svc.to_string();
    assert!(
        text.contains(&id1),
        "the secret ID was not resolved: {text}"
    );
    assert!(text.contains("/run/secrets/db_password"), "{text}");

    // In use: refused naming the service; after service rm: allowed.
    seen.err(m, &["secret", "rm", "db_password"], "in use by service web");
    assert!(seen.ok(m, &["secret", "ls", "-q"]).contains(&id1));
    seen.ok(m, &["service", "rm", "web"]);
    seen.ok(m, &["secret", "rm", "db_password"]);
    let left = seen.ok(m, &["secret", "ls", "-q"]);
    assert!(!left.contains(&id1) && left.contains(&id2), "{left}");

    // Audited with name, ID and digest; never the value.
    let audit = m.audit();
    let raw = seen.ok(m, &["audit", "ls", "--json"]);
    for action in ["secret.create", "secret.remove"] {
        let r = audit
            .iter()
            .find(|r| r["action"] == action && r["target"] == "db_password")
            .unwrap_or_else(|| panic!("no {action} record: {raw}"));
        assert_eq!(r["details"]["secret_id"], id1.as_str(), "{r}");
        assert_eq!(
            r["details"]["digest"],
            sha256_hex(stdin_value.as_bytes()),
            "{r}"
        );
    }

    // The plaintext appeared in no output.
    seen.0.push(m.cli_ok(&["audit", "ls"]));
    for out in &seen.0 {
        for v in [stdin_value, file_value] {
            assert!(!out.contains(v), "the value {v} was printed:\n{out}");
        }
    }
    // Nor in the daemon's log.
    let log = m.log();
    assert!(!log.contains(stdin_value) && !log.contains(file_value));
}

#[test]
fn no_data_directory_holds_a_secret_value_in_plaintext() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    let marker = "secretmarker-v4l7e-q8r2t-z0x9";
    let out = m.cli_stdin(&["secret", "create", "marked", "-"], marker);
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    // Make sure the write is in the log (the create returned after commit) and survives.
    assert!(m.cli_ok(&["secret", "ls"]).contains("marked"));
    let mut scanned = 0;
    for f in files_under(&m.data_dir()) {
        let bytes = std::fs::read(&f).unwrap();
        scanned += bytes.len();
        assert!(
            !contains(&bytes, marker.as_bytes()),
            "{} holds the secret value in plaintext",
            f.display()
        );
    }
    assert!(scanned > 10_000, "too little was scanned ({scanned} bytes)");
}
