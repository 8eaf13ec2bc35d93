//! Reviewing the audit log (issue 6): filters applied by the manager, `--follow`, the SIEM
//! export and its offline verification, signed checkpoints (a forged one is caught offline),
//! a record altered in a stopped manager's sealed store, and retention that trims at a
//! checkpoint so the rest still verifies.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

use serde_json::Value;

use crate::harness::{
    Cluster, Node, assert_error, json_lines, skep, skep_bin, stderr, stdout, timeout, wait_for,
    write_file,
};

/// Daemon flags that make checkpoints frequent: after every 4 records.
const CHECKPOINT_EVERY_4: &[&str] = &["--audit-checkpoint-records", "4"];

fn seqs(records: &[Value]) -> Vec<u64> {
    records.iter().map(|r| r["seq"].as_u64().unwrap()).collect()
}

/// Runs `audit ls --json <filter>` and checks it returns exactly the records `pred` selects
/// from a full listing taken just before (records appended since must match `pred` too).
fn assert_filter(node: &Node, filter: &[&str], pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let all = node.audit();
    let last = all.last().unwrap()["seq"].as_u64().unwrap();
    let mut args = vec!["audit", "ls", "--json"];
    args.extend_from_slice(filter);
    let got = json_lines(&node.cli_ok(&args));
    for r in &got {
        assert!(pred(r), "{filter:?} returned a record it should not: {r}");
    }
    let expected: Vec<u64> = seqs(&all.iter().filter(|r| pred(r)).cloned().collect::<Vec<_>>());
    let got_old: Vec<u64> = seqs(&got).into_iter().filter(|s| *s <= last).collect();
    assert_eq!(
        got_old, expected,
        "{filter:?} did not return exactly its records"
    );
    got
}

/// A join attempt with a token whose secret is wrong: the manager audits a denied token.use.
fn denied_join(c: &Cluster) {
    let token = c.first().cli_ok(&["join-token", "-q", "worker"]);
    let token = token.trim();
    // A character well inside the secret: every one there carries five bits (the last one
    // partly carries padding, and changing it can make a token that does not even parse, which
    // the joiner refuses before any manager sees it).
    let at = token.len() - 10;
    let ch = token.as_bytes()[at] as char;
    let forged = format!(
        "{}{}{}",
        &token[..at],
        if ch == 'a' { 'b' } else { 'a' },
        &token[at + 1..]
    );
    let stranger = Node::start("x1");
    let out = stranger.cli(&["swarm", "join", "--token", &forged, &c.first().addr()]);
    assert!(!out.status.success(), "a forged token joined");
}

#[test]
fn audit_ls_filters_return_exactly_the_matching_records() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    let id = c.ids()[0].clone();
    denied_join(&c);
    wait_for(timeout(), "a denied token.use record", || {
        let n = m
            .try_audit()?
            .iter()
            .filter(|r| r["action"] == "token.use" && r["outcome"] == "denied")
            .count();
        if n > 0 { Ok(()) } else { Err("none".into()) }
    });

    let denied = assert_filter(m, &["--outcome", "denied"], |r| r["outcome"] == "denied");
    assert!(denied.iter().any(|r| r["action"] == "token.use"));
    let by_admin = assert_filter(m, &["--actor", &format!("local-admin:{id}")], |r| {
        r["actor"]["kind"] == "local-admin" && r["actor"]["id"] == id.as_str()
    });
    assert!(by_admin.iter().any(|r| r["action"] == "cluster.create"));
    // A bare ID matches every kind of actor with that ID (the node, and its local admin).
    let by_id = assert_filter(m, &["--actor", &id], |r| r["actor"]["id"] == id.as_str());
    assert!(by_id.len() > by_admin.len(), "{by_id:?}");
    assert_filter(m, &["--action", "token.*"], |r| {
        r["action"].as_str().unwrap().starts_with("token.")
    });
    assert_filter(m, &["--action", "token.use", "--outcome", "denied"], |r| {
        r["action"] == "token.use" && r["outcome"] == "denied"
    });
    assert_filter(m, &["--target", "worker"], |r| r["target"] == "worker");

    // --since: an RFC 3339 time, a duration ago, a date.
    let all = m.audit();
    let mid = all[all.len() / 2]["time"].as_str().unwrap().to_string();
    assert_filter(m, &["--since", &mid], |r| {
        r["time"].as_str().unwrap() >= mid.as_str()
    });
    assert_filter(m, &["--since", "1h"], |_| true);
    let none = m.cli_ok(&["audit", "ls", "--json", "--until", "2000-01-01"]);
    assert_eq!(none.trim(), "", "records before 2000: {none}");
    assert_error(
        &m.cli(&["audit", "ls", "--since", "last tuesday"]),
        "is not a duration",
    );

    // The table shows the same selection.
    let table = m.cli_ok(&["audit", "ls", "--outcome", "denied"]);
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert!(table.starts_with("SEQ"), "{table}");
    assert!(
        rows.iter().all(|l| l.trim_end().ends_with("denied")),
        "{table}"
    );
    assert!(rows.len() >= denied.len(), "{table}");

    // Each read is audited once, with its filters; repeated identical polls are coalesced.
    wait_for(timeout(), "an audit.read record naming the filter", || {
        let reads: Vec<Value> = m
            .try_audit()?
            .into_iter()
            .filter(|r| r["action"] == "audit.read")
            .collect();
        let named = reads
            .iter()
            .any(|r| r["details"]["action"] == "token.*" && r["target"] == "ls");
        // The harness polled `audit ls --json` dozens of times by now.
        if named && reads.len() < 30 {
            Ok(())
        } else {
            Err(format!("{} reads: {reads:?}", reads.len()))
        }
    });
}

#[test]
fn audit_ls_follow_sees_a_record_committed_after_it_started() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    let mut child = Command::new(skep_bin())
        .args([
            "--host",
            &m.host(),
            "audit",
            "ls",
            "--follow",
            "--json",
            "--action",
            "token.*",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen: Vec<Value> = Vec::new();
    let next = |what: &str, pred: &dyn Fn(&Value) -> bool, seen: &mut Vec<Value>| {
        let deadline = Instant::now() + timeout();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let v: Value = serde_json::from_str(&line).unwrap();
                    assert!(v["action"].as_str().unwrap().starts_with("token."), "{v}");
                    seen.push(v.clone());
                    if pred(&v) {
                        return;
                    }
                }
                Err(_) => panic!("no {what} from `audit ls --follow`; saw {seen:?}"),
            }
        }
    };
    // The records from before it started come first (Cluster::init read the tokens).
    next(
        "token.read record",
        &|v| v["action"] == "token.read",
        &mut seen,
    );
    m.cli_ok(&["join-token", "--rotate", "-q", "worker"]);
    next(
        "token.rotate record",
        &|v| v["action"] == "token.rotate",
        &mut seen,
    );
    let _ = child.kill();
    let _ = child.wait();
    reader.join().unwrap();
    // The daemon noticed the client leave and keeps serving; the stream made one read record.
    m.cli_ok(&["node", "ls"]);
    wait_for(timeout(), "one audit.read record for the follow", || {
        let follows = m
            .try_audit()?
            .into_iter()
            .filter(|r| r["action"] == "audit.read" && r["target"] == "follow")
            .count();
        if follows == 1 {
            Ok(())
        } else {
            Err(format!("{follows}"))
        }
    });
}

/// Waits until the chain holds at least `n` checkpoints; returns them.
fn wait_checkpoints(m: &Node, n: usize) -> Vec<Value> {
    wait_for(timeout(), &format!("{n} audit checkpoints"), || {
        // Records that need checkpoints: token reads are never coalesced.
        m.cli(&["join-token", "-q", "worker"]);
        let out = m.cli(&["audit", "ls", "--json", "--action", "audit.checkpoint"]);
        let cps = json_lines(&stdout(&out));
        if cps.len() >= n {
            Ok(cps)
        } else {
            Err(format!("{} checkpoints", cps.len()))
        }
    })
}

#[test]
fn an_export_round_trips_through_verify_and_a_forged_checkpoint_is_caught_offline() {
    let c = Cluster::init_opts(1, 0, &[], CHECKPOINT_EVERY_4);
    let m = c.first();
    let cps = wait_checkpoints(m, 2);
    assert_eq!(cps[0]["details"]["algorithm"], "ed25519");
    let said = m.cli_ok(&["audit", "verify"]);
    assert!(
        said.contains("signed checkpoints verify against the swarm's audit key"),
        "{said}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let path = file.to_str().unwrap();
    m.cli_ok(&["audit", "export", "--format", "jsonl", "--output", path]);
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let header: Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(header["skep_audit_export"], 1);
    let key = header["public_key"].as_str().unwrap().to_string();
    assert_eq!(key.len(), 64, "{header}");
    assert_eq!(cps[0]["details"]["public_key"], key.as_str());
    // The records are exactly the daemon's JSON: the same as `audit ls --json` gives.
    let listed = m.cli_ok(&["audit", "ls", "--json"]);
    assert!(listed.starts_with(&(lines[1..].join("\n") + "\n")));

    // Offline, no daemon: with the header's key, and with the key pinned.
    let ok = skep(&["audit", "verify", "--file", path]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    assert!(
        stdout(&ok).contains("The audit chain is whole"),
        "{}",
        stdout(&ok)
    );
    let ok = skep(&["audit", "verify", "--file", path, "--public-key", &key]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let other = "ab".repeat(32);
    assert_error(
        &skep(&["audit", "verify", "--file", path, "--public-key", &other]),
        "not the swarm's audit key",
    );

    // Flip one hex digit of a checkpoint's signature.
    let at = lines
        .iter()
        .position(|l| l.contains("\"audit.checkpoint\""))
        .unwrap();
    let mut rec: Value = serde_json::from_str(&lines[at]).unwrap();
    let seq = rec["seq"].as_u64().unwrap();
    let sig = rec["details"]["signature"].as_str().unwrap().to_string();
    let flipped = if sig.starts_with('0') { "1" } else { "0" };
    rec["details"]["signature"] = Value::from(format!("{flipped}{}", &sig[1..]));
    lines[at] = serde_json::to_string(&rec).unwrap();
    write_file(&file, &(lines.join("\n") + "\n"));
    let out = skep(&["audit", "verify", "--file", path, "--public-key", &key]);
    assert_error(&out, &format!("bad signature at seq {seq}"));
}

#[test]
fn a_record_altered_in_a_stopped_managers_store_is_named_by_verify() {
    let mut c = Cluster::init(1, 0);
    c.first().cli_ok(&["audit", "verify"]);
    let node = &mut c.nodes[0];
    let before = node.audit();
    let victim = before[1]["seq"].as_u64().unwrap();
    node.kill();

    // An attacker with the data key edits record 2 where the daemon will read it.
    let dir = node.data_dir();
    let kek = std::fs::read(dir.join("kek")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(skep::store::testing::tamper_audit_record(
        &dir,
        &kek,
        victim,
        |r| r.event.target = "nothing-to-see".into(),
    ))
    .unwrap();

    node.spawn();
    node.wait_up();
    let after = wait_for(timeout(), "the restarted manager to serve", || {
        node.try_audit()
    });
    let altered = after
        .iter()
        .find(|r| r["seq"].as_u64() == Some(victim))
        .unwrap();
    assert_eq!(
        altered["target"], "nothing-to-see",
        "the state holds the edit"
    );
    assert_eq!(
        altered["hash"], before[1]["hash"],
        "the edit was not re-hashed"
    );
    let out = node.cli(&["audit", "verify"]);
    assert_error(&out, &format!("hash mismatch at seq {victim}"));
}

#[test]
fn retention_trims_at_a_checkpoint_and_the_rest_still_verifies() {
    let c = Cluster::init_opts(1, 0, &[], CHECKPOINT_EVERY_4);
    let m = c.first();
    m.cli_ok(&["swarm", "update", "--audit-retention", "6"]);
    let setting = json_lines(&m.cli_ok(&["audit", "ls", "--json", "--target", "audit-retention"]));
    assert_eq!(setting.len(), 1, "{setting:?}");
    assert_eq!(setting[0]["details"]["keep"], "6");

    let trimmed = wait_for(timeout(), "the chain trimmed to a checkpoint", || {
        m.cli(&["join-token", "-q", "worker"]);
        let all = m.try_audit()?;
        match all.first() {
            Some(f) if f["seq"].as_u64() > Some(1) => Ok(all),
            _ => Err(format!("{} records from 1", all.len())),
        }
    });
    assert_eq!(trimmed[0]["action"], "audit.checkpoint", "{:?}", trimmed[0]);
    assert!(
        trimmed.len() >= 6,
        "fewer records kept than asked: {}",
        trimmed.len()
    );
    assert!(
        trimmed.iter().any(|r| r["action"] == "audit.trim"),
        "the trim is audited"
    );
    let said = m.cli_ok(&["audit", "verify"]);
    assert!(said.contains("starts at checkpoint"), "{said}");

    // A trimmed export verifies offline too; cutting its first record is refused.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("audit.jsonl");
    let path = file.to_str().unwrap();
    m.cli_ok(&["audit", "export", "-o", path]);
    let ok = skep(&["audit", "verify", "--file", path]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let text = std::fs::read_to_string(&file).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let first: Value = serde_json::from_str(lines[1]).unwrap();
    lines.remove(1);
    write_file(&file, &(lines.join("\n") + "\n"));
    assert_error(
        &skep(&["audit", "verify", "--file", path]),
        &format!(
            "audit record {} starts the chain",
            first["seq"].as_u64().unwrap() + 1
        ),
    );
}

/// Audit is fail-closed, proven with a quorum present: a manager whose records of these
/// actions cannot commit (`SKEP_FAIL_AUDIT`, a test fault that can only refuse) shows no
/// token, no unlock key, no audit record and delivers no secret value.
#[test]
fn audited_reads_and_deliveries_fail_closed_when_their_record_cannot_commit() {
    let mut m = crate::harness::Node::new("m1", &[]).wrapped(&[
        "env",
        "SKEP_FAIL_AUDIT=token.read,unlock_key.read,audit.read,secret.deliver",
    ]);
    m.spawn();
    m.wait_up();
    let addr = m.addr();
    let init = m.cli_ok(&["swarm", "init", "--autolock", "--advertise-addr", &addr]);
    assert!(init.contains("SKEP-KEY-1-"), "{init}");
    for (args, secret, action) in [
        (&["join-token", "worker"][..], "SKEP-1-", "token.read"),
        (
            &["join-token", "-q", "manager"][..],
            "SKEP-1-",
            "token.read",
        ),
        (
            &["swarm", "unlock-key"][..],
            "SKEP-KEY-1-",
            "unlock_key.read",
        ),
        (&["audit", "ls"][..], "swarm.init", "audit.read"),
        (&["audit", "export"][..], "swarm.init", "audit.read"),
    ] {
        let out = m.cli(args);
        let said = crate::harness::describe(&out);
        assert!(!out.status.success(), "{args:?} answered: {said}");
        assert!(!said.contains(secret), "{args:?} showed {secret}: {said}");
        let refused = format!("the audit record {action} was not committed");
        assert!(
            m.log().contains(&refused),
            "{args:?} failed, but not for its record: {said}"
        );
    }
    // A task that needs a secret does not get it: its delivery record cannot commit.
    m.cli_stdin(&["secret", "create", "db", "-"], "s3cret-value");
    m.cli_ok(&[
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        "--name",
        "needs-db",
        "--secret",
        "db",
        "--",
        "sleep",
        "600",
    ]);
    crate::harness::wait_until(
        crate::harness::timeout(),
        "the delivery was refused",
        || m.log().contains("secret.deliver was not committed"),
    );
    let received = m.cli_ok(&["agent", "secrets", "--format", "json"]);
    assert!(
        !received.contains("db"),
        "the agent received a secret whose delivery was not audited: {received}"
    );
    assert!(
        crate::harness::running_task_ids(&m, "needs-db").is_empty(),
        "a task runs without its secret"
    );
}
