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

// ---------------------------------------------------------------- versions (issue 17)

/// `secret inspect NAME` as JSON (one object).
fn inspect(m: &Node, kind: &str, name: &str) -> serde_json::Value {
    let text = m.cli_ok(&[kind, "inspect", name]);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v[0].clone()
}

/// The entry of version `n` in an inspect's `Versions`.
fn version_of(info: &serde_json::Value, n: u64) -> Option<serde_json::Value> {
    info["Versions"]
        .as_array()?
        .iter()
        .find(|v| v["Version"] == n)
        .cloned()
}

fn has_service(v: &serde_json::Value, service: &str) -> bool {
    v["Services"]
        .as_array()
        .is_some_and(|s| s.iter().any(|x| x == service))
}

fn sleeper(m: &Node, name: &str, opts: &[&str]) {
    crate::harness::exec_service(m, name, opts, "exec /bin/sleep 1000");
}

fn wait_running(m: &Node, service: &str, n: usize) {
    crate::harness::wait_for(
        crate::harness::timeout(),
        &format!("{n} running tasks of {service}"),
        || {
            let on = crate::harness::running_hosts(m, service);
            if on.len() == n {
                Ok(())
            } else {
                Err(format!("running on {on:?}"))
            }
        },
    )
}

#[test]
fn secret_versions_are_listed_inspected_pinned_rolled_back_and_audited() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let c = Cluster::init(1, 0);
    let m = c.first();
    let mut seen = Seen(Vec::new());
    let v1 = "versioned-value-one-h5j8k2";
    let v2 = "versioned-value-two-w4e6r9";
    let out = m.cli_stdin(&["secret", "create", "db", "-"], v1);
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    sleeper(m, "follow", &["--secret", "db"]);
    sleeper(m, "pinned", &["--secret", "source=db@1,target=db_old"]);
    wait_running(m, "follow", 1);
    wait_running(m, "pinned", 1);

    // The pin and on-change show in service inspect --pretty.
    let p = seen.ok(m, &["service", "inspect", "--pretty", "pinned"]);
    assert!(p.contains("db@1 (pinned) -> /run/secrets/db_old"), "{p}");
    let p = seen.ok(m, &["service", "inspect", "--pretty", "follow"]);
    assert!(
        p.contains("db (current version) -> /run/secrets/db") && p.contains("on-change rotate"),
        "{p}"
    );

    // update: the version, and what follows it (the pinned service does not).
    let out = m.cli_stdin(&["secret", "update", "--detach", "db", "-"], v2);
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    let said = stdout(&out);
    seen.0.push(said.clone());
    assert_eq!(
        said,
        "db: version 2\nrolling out to 1 service, 1 task (on-change per attachment)\n"
    );

    // ls: VERSION 2; json carries it.
    let table = seen.ok(m, &["secret", "ls"]);
    let head = table.lines().next().unwrap_or_default().to_string();
    assert!(
        head.starts_with("ID") && head.contains("NAME  VERSION"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.contains(" db "))
        .unwrap_or_default();
    assert!(row.split_whitespace().nth(2) == Some("2"), "{table}");
    let listed = json_lines(&seen.ok(m, &["secret", "ls", "--format", "json"]));
    assert_eq!(listed[0]["Version"], 2, "{listed:?}");

    // inspect: both versions with digests; the pinned service under 1, the follower under 2
    // with its node once the rollout has moved its task.
    let info = crate::harness::wait_for(
        crate::harness::timeout(),
        "the follower's task on version 2",
        || {
            let info = inspect(m, "secret", "db");
            let two = version_of(&info, 2).unwrap_or_default();
            if two["Tasks"] == 1 && two["Nodes"].as_array().is_some_and(|n| n.len() == 1) {
                Ok(info)
            } else {
                Err(info.to_string())
            }
        },
    );
    seen.0.push(info.to_string());
    let one = version_of(&info, 1).unwrap();
    let two = version_of(&info, 2).unwrap();
    assert_eq!(one["Digest"], sha256_hex(v1.as_bytes()), "{info}");
    assert_eq!(two["Digest"], sha256_hex(v2.as_bytes()), "{info}");
    assert_eq!(
        (&one["Current"], &two["Current"]),
        (&false.into(), &true.into())
    );
    assert!(
        has_service(&one, "pinned") && !has_service(&one, "follow"),
        "{info}"
    );
    assert!(
        has_service(&two, "follow") && !has_service(&two, "pinned"),
        "{info}"
    );
    assert!(one["Tasks"].as_u64() >= Some(1), "{info}");
    assert_eq!(info["Rollout"]["To"], 2, "{info}");
    let pretty = seen.ok(m, &["secret", "inspect", "--pretty", "db"]);
    for want in [
        "Version:         2",
        "Versions:",
        &format!("sha256:{}", &sha256_hex(v1.as_bytes())[..12]),
        &format!("sha256:{}", &sha256_hex(v2.as_bytes())[..12]),
        "pinned",
        "follow",
        "Rollout:         db: version 1 -> 2",
    ] {
        assert!(pretty.contains(want), "{want}: {pretty}");
    }
    let status = seen.ok(m, &["secret", "rollout", "db"]);
    assert!(status.starts_with("db: version 1 -> 2 "), "{status}");

    // The same value again: refused, nothing changed.
    let out = m.cli_stdin(&["secret", "update", "db", "-"], v2);
    assert_error(&out, "already has this value");
    assert_eq!(inspect(m, "secret", "db")["Version"], 2);

    // rollback: version 1 current again, then nothing before it to go back to.
    let said = seen.ok(m, &["secret", "rollback", "--detach", "db"]);
    assert!(said.starts_with("db: version 1\n"), "{said}");
    let info = inspect(m, "secret", "db");
    assert_eq!(info["Version"], 1, "{info}");
    assert_eq!(info["Digest"], sha256_hex(v1.as_bytes()), "{info}");
    assert_eq!(info["Rollout"]["Rollback"], true, "{info}");
    seen.err(
        m,
        &["secret", "rollback", "db"],
        "no kept version before version 1",
    );
    assert_eq!(inspect(m, "secret", "db")["Version"], 1);

    // The story on the audit chain: create, update (version, digest), deliveries of version
    // 2 to the follower's node, rollback.
    let story = json_lines(&seen.ok(m, &["audit", "ls", "--json", "--target", "db"]));
    let find = |action: &str, version: &str| {
        story
            .iter()
            .find(|r| r["action"] == action && r["details"]["version"] == version)
            .unwrap_or_else(|| panic!("no {action} of version {version}: {story:#?}"))
    };
    find("secret.create", "1");
    let upd = find("secret.update", "2");
    assert_eq!(upd["details"]["digest"], sha256_hex(v2.as_bytes()), "{upd}");
    find("secret.deliver", "2");
    find("secret.rollback", "1");
    seen.0.push(m.cli_ok(&["audit", "ls", "--target", "db"]));

    // No value in any output, nor in the daemon's log.
    for out in &seen.0 {
        for v in [v1, v2] {
            assert!(!out.contains(v), "the value {v} was printed:\n{out}");
        }
    }
    let log = m.log();
    assert!(!log.contains(v1) && !log.contains(v2));
}

#[test]
fn a_rollout_pauses_continues_and_a_waiting_update_says_why_it_stopped() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let c = Cluster::init(1, 1);
    let m = c.first();
    let w = &c.workers()[0];
    // A worker frozen for a moment must not be taken for down.
    m.cli_ok(&["swarm", "update", "--dispatcher-heartbeat", "5s"]);
    let out = m.cli_stdin(&["secret", "create", "db", "-"], "pause-v1-a8s7d6");
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    sleeper(
        m,
        "many",
        &[
            "--replicas",
            "3",
            "--update-parallelism",
            "1",
            "--constraint",
            "node.role==worker",
            "--secret",
            "db",
        ],
    );
    wait_running(m, "many", 3);

    // The worker is frozen, so none of its tasks can confirm the new version: the rollout
    // cannot finish before the pause lands (and, paused, moves no second task after).
    w.pause();
    // A waiting update ends, non-zero and saying so, when the rollout is paused under it.
    std::thread::scope(|s| {
        let waiting = s.spawn(|| m.cli_stdin(&["secret", "update", "db", "-"], "pause-v2-f5g4h3"));
        crate::harness::wait_until(crate::harness::timeout(), "version 2 current", || {
            inspect(m, "secret", "db")["Version"] == 2
        });
        let said = m.cli_ok(&["secret", "rollout", "--pause", "db"]);
        assert!(said.contains("version 1 -> 2 paused"), "{said}");
        let out = waiting.join().unwrap();
        assert_error(&out, "the rollout of version 2 is paused");
        assert!(stdout(&out).starts_with("db: version 2\nrolling out to 1 service, 3 tasks"));
    });
    w.resume();
    // While paused, it stays paused and short of its total: watched for two seconds (an
    // invariant over time, not a wait for a condition).
    for _ in 0..10 {
        let r = inspect(m, "secret", "db")["Rollout"].clone();
        assert_eq!(r["State"], "paused", "{r}");
        assert!(r["Done"].as_u64() < r["Total"].as_u64(), "{r}");
        assert_eq!(r["Total"], 3, "{r}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let said = m.cli_ok(&["secret", "rollout", "--continue", "db"]);
    assert!(
        said.contains("version 1 -> 2 rolling") || said.contains("version 1 -> 2 completed"),
        "{said}"
    );
    // A waiting update ends when another version becomes current under it.
    std::thread::scope(|s| {
        let waiting = s.spawn(|| m.cli_stdin(&["secret", "update", "db", "-"], "pause-v3-j2k1l0"));
        crate::harness::wait_until(crate::harness::timeout(), "version 3 current", || {
            inspect(m, "secret", "db")["Version"] == 3
        });
        let said = m.cli_ok(&["secret", "rollback", "--detach", "db"]);
        assert!(said.starts_with("db: version 2\n"), "{said}");
        let out = waiting.join().unwrap();
        assert_error(&out, "version 2 became current");
    });
    // The rollout shown is the rollback's.
    let said = m.cli_ok(&["secret", "rollout", "db"]);
    assert!(said.starts_with("db: version 3 -> 2 (rollback)"), "{said}");
}

/// Needs the agent to report the versions its tasks hold (agent side of issue 17): until then
/// a rollout to running tasks never completes.
#[test]
fn secret_update_waits_with_a_bar_until_every_task_holds_the_new_version() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let c = Cluster::init(1, 0);
    let m = c.first();
    let out = m.cli_stdin(&["secret", "create", "db", "-"], "bar-v1-q1w2e3");
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    sleeper(
        m,
        "many",
        &[
            "--replicas",
            "3",
            "--update-parallelism",
            "1",
            "--secret",
            "db",
        ],
    );
    wait_running(m, "many", 3);
    let out = m.cli_stdin(&["secret", "update", "db", "-"], "bar-v2-r4t5y6");
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    assert!(
        stdout(&out).contains("] 3/3 tasks have version 2"),
        "{}",
        stdout(&out)
    );
    assert_eq!(inspect(m, "secret", "db")["Rollout"]["State"], "completed");
    let out = m.cli(&["secret", "rollback", "db"]);
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    assert!(
        stdout(&out).contains("] 3/3 tasks have version 1"),
        "{}",
        stdout(&out)
    );
    let story = m.cli_ok(&[
        "audit",
        "ls",
        "--json",
        "--target",
        "db",
        "--action",
        "secret.rollout",
    ]);
    assert!(story.contains("completed"), "{story}");
}

#[test]
fn bad_versions_pins_and_signals_are_refused_and_change_nothing() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    let out = m.cli_stdin(&["secret", "create", "db", "-"], "bad-v1-z9x8c7");
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    // A version that does not exist.
    let create = |spec: &str| {
        m.cli(&[
            "service",
            "create",
            "--detach",
            "--runtime",
            "exec",
            "--name",
            "web",
            "--secret",
            spec,
            "--",
            "/bin/sleep",
            "1000",
        ])
    };
    assert_error(&create("db@7"), "no version 7 (kept: 1");
    // A signal that does not exist, a version 0.
    assert_error(
        &create("source=db,on-change=signal:SIGNOPE"),
        "not a signal name",
    );
    assert_error(&create("db@0"), "not a number from 1");
    // A pin to a pruned version: keep one unused old version, make two more.
    m.cli_ok(&["swarm", "update", "--secret-history-limit", "1"]);
    for v in ["bad-v2-b6n5m4", "bad-v3-l3k2j1"] {
        let out = m.cli_stdin(&["secret", "update", "--detach", "db", "-"], v);
        assert!(out.status.success(), "{}", crate::harness::describe(&out));
    }
    crate::harness::wait_until(crate::harness::timeout(), "version 1 pruned", || {
        version_of(&inspect(m, "secret", "db"), 1).is_none()
    });
    assert_error(&create("db@1"), "no version 1 (kept: 2, 3");
    assert_eq!(m.cli_ok(&["service", "ls", "-q"]), "");
    // The kept one still pins.
    let out = create("db@2");
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    // The pins of the current spec (not the previous one a rollback would restore).
    let pins = || {
        let v: serde_json::Value =
            serde_json::from_str(&m.cli_ok(&["service", "inspect", "web"])).unwrap();
        v[0]["spec"]["task"]["secrets"]
            .as_array()
            .map(|l| l.iter().map(|r| r["pinned"].clone()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(pins(), [serde_json::json!(2)]);
    // --secret-rm NAME@N takes only the attachment pinned to N.
    let out = m.cli(&[
        "service",
        "update",
        "--detach",
        "--secret-rm",
        "db@3",
        "web",
    ]);
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    assert_eq!(
        pins(),
        [serde_json::json!(2)],
        "--secret-rm db@3 took the pin to 2"
    );
    m.cli_ok(&[
        "service",
        "update",
        "--detach",
        "--secret-rm",
        "db@2",
        "web",
    ]);
    assert!(pins().is_empty(), "--secret-rm db@2 left the pin to 2");
}
