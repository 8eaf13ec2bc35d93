//! `skep events` against real daemons: a follow stream shows what operators change (services,
//! secrets, nodes) and what the cluster does on its own (a node going away) in Docker's JSON
//! shape; a range prints and exits; filters select; only roles the RBAC policy allows read
//! events, and refusals are audited.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Instant;

use serde_json::Value;

use crate::harness::{
    Cluster, as_operator, assert_error, describe, enrol, json_lines, skep_bin, stdout, timeout,
};

/// Docker's keys of an `events.Message` in swarm scope (`docker events --format json`):
/// moby `api/types/events.Message` without the deprecated container-only `status`, `id`,
/// `from`.
const DOCKER_KEYS: [&str; 6] = ["Action", "Actor", "Type", "scope", "time", "timeNano"];

/// The attributes skep's events carry (Docker's names).
const ATTRIBUTES: [&str; 8] = [
    "name",
    "replicas.new",
    "availability.new",
    "role.new",
    "state.old",
    "state.new",
    "updatestate.old",
    "updatestate.new",
];

/// A `skep events` process whose stdout lines arrive on a channel; killed when dropped.
struct Stream {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<Value>,
}

impl Stream {
    fn start(host: &str, args: &[&str]) -> Stream {
        let mut child = Command::new(skep_bin())
            .env_remove("SKEP_HOST")
            .args(["--host", host, "events"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Stream {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads events until one satisfies `want`; panics at the deadline with what it saw.
    fn until(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let v: Value = serde_json::from_str(&line)
                        .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                    self.seen.push(v.clone());
                    if want(&v) {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no event {what} within {:?}; saw:\n{}",
                        timeout(),
                        self.log()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().unwrap();
                    panic!(
                        "the stream ended ({status}) before {what}; saw:\n{}",
                        self.log()
                    )
                }
            }
        }
    }

    fn log(&self) -> String {
        self.seen.iter().map(|v| format!("{v}\n")).collect()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (Type, Action, name) of an event.
fn tan(e: &Value) -> (String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        s(&e["Type"]),
        s(&e["Action"]),
        s(&e["Actor"]["Attributes"]["name"]),
    )
}

fn is(kind: &str, action: &str, name: &str) -> impl Fn(&Value) -> bool {
    let want = (kind.to_string(), action.to_string(), name.to_string());
    move |e| tan(e) == want
}

/// The event has exactly Docker's keys, and times that agree.
fn docker_shaped(e: &Value) {
    let keys: BTreeSet<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, DOCKER_KEYS.into_iter().collect(), "{e}");
    let actor: BTreeSet<&str> = e["Actor"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(actor, ["Attributes", "ID"].into_iter().collect(), "{e}");
    assert!(!e["Actor"]["ID"].as_str().unwrap().is_empty(), "{e}");
    // Only the attributes Docker shows: no detail of an audit record (a digest, an ID, the
    // actor) rides along.
    for k in e["Actor"]["Attributes"].as_object().unwrap().keys() {
        assert!(ATTRIBUTES.contains(&k.as_str()), "attribute {k}: {e}");
    }
    assert_eq!(e["scope"], "swarm", "{e}");
    let (t, ns) = (e["time"].as_i64().unwrap(), e["timeNano"].as_i64().unwrap());
    assert_eq!(ns.div_euclid(1_000_000_000), t, "{e}");
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// What the operators did in `events_follow_what_changed_and_a_range_prints_and_exits`.
fn expected() -> Vec<(String, String, String)> {
    [
        ("service", "create", "web"),
        ("service", "update", "web"),
        ("secret", "create", "s1"),
        ("secret", "remove", "s1"),
        ("node", "update", "m1"),
        ("service", "remove", "web"),
    ]
    .into_iter()
    .map(|(a, b, c)| (a.into(), b.into(), c.into()))
    .collect()
}

/// `expected` in order within `seen` (other events may come between).
fn in_order(seen: &[(String, String, String)], expected: &[(String, String, String)]) -> bool {
    let mut want = expected.iter().peekable();
    for s in seen {
        if want.peek() == Some(&s) {
            want.next();
        }
    }
    want.peek().is_none()
}

#[test]
fn events_follow_what_changed_and_a_range_prints_and_exits() {
    let mut c = Cluster::init(1, 1);
    let m = c.first();
    let since = (unix_now() - 1).to_string();
    m.cli_ok(&[
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        "--name",
        "web",
        "--",
        "sleep",
        "600",
    ]);

    // The stream starts with what happened since --since, then follows.
    let mut s = Stream::start(&m.host(), &["--since", since.as_str(), "--format", "json"]);
    let created = s.until("service create web", is("service", "create", "web"));
    docker_shaped(&created);
    m.cli_ok(&["service", "update", "--detach", "--env-add", "A=1", "web"]);
    s.until("service update web", is("service", "update", "web"));
    m.cli_stdin(&["secret", "create", "s1", "-"], "t0p-s3cret-value");
    s.until("secret create s1", is("secret", "create", "s1"));
    m.cli_ok(&["secret", "rm", "s1"]);
    s.until("secret remove s1", is("secret", "remove", "s1"));
    m.cli_ok(&["node", "update", "--availability", "pause", "m1"]);
    let paused = s.until("node update m1 to pause", |e| {
        is("node", "update", "m1")(e) && e["Actor"]["Attributes"]["availability.new"] == "pause"
    });
    assert_eq!(paused["Actor"]["ID"], m.id());
    m.cli_ok(&["service", "rm", "web"]);
    s.until("service remove web", is("service", "remove", "web"));

    // What the cluster does on its own: a worker that goes away.
    let w1_id = c.nodes[1].id().to_string();
    c.nodes[1].kill();
    let gone = s.until("node update w1 with its new state", |e| {
        is("node", "update", "w1")(e) && e["Actor"]["Attributes"]["state.new"].is_string()
    });
    assert_eq!(gone["Actor"]["ID"], w1_id.as_str());
    assert_eq!(gone["Actor"]["Attributes"]["state.old"], "ready", "{gone}");
    for e in &s.seen {
        docker_shaped(e);
        let text = e.to_string();
        assert!(!text.contains("t0p-s3cret-value"), "a secret value: {e}");
        assert!(!text.contains("sha256"), "a digest: {e}");
        assert!(!text.contains("local-admin"), "who did it: {e}");
    }
    let seen: Vec<_> = s.seen.iter().map(tan).collect();
    assert!(in_order(&seen, &expected()), "{seen:?}");
    drop(s);

    // A range prints what happened in it and exits 0.
    let m = c.first();
    let until = (unix_now() + 1).to_string();
    let in_range = |extra: &[&str]| -> String {
        let mut args = vec![
            "events",
            "--since",
            since.as_str(),
            "--until",
            until.as_str(),
        ];
        args.extend_from_slice(extra);
        m.cli_ok(&args)
    };
    let seen: Vec<_> = json_lines(&in_range(&["--format", "json"]))
        .iter()
        .map(tan)
        .collect();
    assert!(in_order(&seen, &expected()), "{seen:?}");

    // Filters: one key's values OR, different keys AND.
    let only = |filters: &[&str]| -> Vec<(String, String, String)> {
        let mut args = vec!["--format", "json"];
        for f in filters {
            args.extend(["--filter", *f]);
        }
        json_lines(&in_range(&args)).iter().map(tan).collect()
    };
    let secret = |a: &str| ("secret".to_string(), a.to_string(), "s1".to_string());
    assert_eq!(only(&["type=secret"]), [secret("create"), secret("remove")]);
    assert_eq!(only(&["type=secret", "event=remove"]), [secret("remove")]);
    let two = only(&["type=secret", "type=node"]);
    assert!(
        two.contains(&secret("create")) && two.iter().any(|e| e.0 == "node"),
        "{two:?}"
    );
    assert!(two.iter().all(|e| e.0 != "service"), "{two:?}");
    assert!(only(&["service=web"]).iter().all(|e| e.2 == "web"));

    // Docker's text line and a Go template.
    let text = in_range(&["-f", "type=secret"]);
    let first = text.lines().next().unwrap_or_default();
    let (at, rest) = first.split_once(' ').unwrap();
    assert!(
        at.ends_with('Z') && at.len() == "2026-12-05T10:00:00.000000000Z".len(),
        "{first}"
    );
    assert!(
        rest.starts_with("secret create ") && rest.ends_with(" (name=s1)"),
        "{first}"
    );
    let templated = in_range(&[
        "--filter",
        "type=secret",
        "--format",
        "{{.Type}} {{.Action}} {{.Actor.Attributes.name}}",
    ]);
    assert_eq!(templated, "secret create s1\nsecret remove s1\n");

    // Bad requests are refused, naming what was wrong.
    assert_error(
        &m.cli(&[
            "events",
            "--until",
            until.as_str(),
            "--filter",
            "colour=red",
        ]),
        "invalid filter \"colour\"",
    );
    assert_error(&m.cli(&["events", "--since", "yesterday"]), "--since");
}

#[test]
fn only_roles_the_rbac_policy_allows_read_events() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    let tmp = tempfile::tempdir().unwrap();
    // The default policy, and a `viewer` role that may read the state but not its events.
    let mut policy = m.cli_ok(&["policy", "get", "--rbac"]);
    policy.push_str(
        "\npermit (principal in Skep::Role::\"viewer\", action == Skep::Action::\"Read\", resource);\n",
    );
    let file = tmp.path().join("rbac.cedar");
    std::fs::write(&file, policy).unwrap();
    m.cli_ok(&["policy", "set", "--rbac", file.to_str().unwrap()]);
    let viewer = enrol(m, tmp.path(), "vera", "viewer", &[]);
    let deployer = enrol(m, tmp.path(), "dora", "deployer", &[]);

    let since = (unix_now() - 1).to_string();
    m.cli_stdin(&["secret", "create", "s1", "-"], "t0p-s3cret-value");
    let until = (unix_now() + 1).to_string();
    let range = [
        "events",
        "--since",
        since.as_str(),
        "--until",
        until.as_str(),
        "--format",
        "json",
    ];

    // The viewer reads the state, but not its events; the refusal is audited.
    let out = as_operator(m, &viewer, &["node", "ls"], None);
    assert!(out.status.success(), "{}", describe(&out));
    assert_error(
        &as_operator(m, &viewer, &range, None),
        "operator vera (viewer) may not read cluster events",
    );
    let audit = m.audit();
    assert!(
        audit.iter().any(|r| r["action"] == "Events"
            && r["outcome"] == "denied"
            && r["actor"]["id"] == "vera"),
        "no audited refusal"
    );

    // A deployer reads them: the secret's name, never its value or who created it.
    let out = as_operator(m, &deployer, &range, None);
    assert!(out.status.success(), "{}", describe(&out));
    let events = json_lines(&stdout(&out));
    assert!(
        events.iter().any(is("secret", "create", "s1")),
        "{}",
        stdout(&out)
    );
    let text = stdout(&out);
    assert!(
        !text.contains("t0p-s3cret-value") && !text.contains("local-admin"),
        "{text}"
    );
}
