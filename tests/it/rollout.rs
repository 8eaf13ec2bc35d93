//! Rollouts of a new secret version, as the managers drive them, with real daemons: tasks that
//! follow with `on-change=restart` are replaced by their service's update policy (one at a
//! time with parallelism 1), and a task that fails on the new value triggers the policy's
//! failure action; a node with no entitled task never receives a version, and a node that
//! loses its entitlement receives no later one.

use serde_json::Value;

use crate::harness::{Cluster, Node, exec_service, json_lines, timeout, wait_for};

fn secret(m: &Node, args: &[&str], value: &str) {
    let out = m.cli_stdin(args, value);
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
}

fn tasks(m: &Node, service: &str) -> Vec<Value> {
    json_lines(&m.cli_ok(&["service", "ps", "--no-trunc", "--format", "json", service]))
}

/// The first object of an `inspect`'s JSON array.
fn inspect(m: &Node, args: &[&str]) -> Value {
    let text = m.cli_ok(args);
    let all: Vec<Value> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    all.into_iter().next().unwrap_or_default()
}

fn service(m: &Node, name: &str) -> Value {
    inspect(m, &["service", "inspect", name])
}

fn inspect_secret(m: &Node, name: &str) -> Value {
    inspect(m, &["secret", "inspect", name])
}

/// Deliveries of `name` on the audit chain: (version, node).
fn deliveries(m: &Node, name: &str) -> Vec<(String, String)> {
    m.audit()
        .iter()
        .filter(|r| r["action"] == "secret.deliver" && r["target"] == name)
        .map(|r| {
            (
                r["details"]["version"].as_str().unwrap_or("").to_string(),
                r["details"]["node"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn running(t: &Value) -> bool {
    t["CurrentState"]
        .as_str()
        .is_some_and(|s| s.starts_with("Running"))
}

/// Live tasks of `service` (desired running, not ended) with their IDs and state.
fn live(m: &Node, service: &str) -> Vec<Value> {
    tasks(m, service)
        .into_iter()
        .filter(|t| t["DesiredState"] == "Running")
        .collect()
}

#[test]
fn restart_mode_replaces_tasks_by_the_update_policy_and_a_failing_task_pauses_it() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let c = Cluster::init(1, 1);
    let m = c.first();
    secret(m, &["secret", "create", "db", "-"], "good-1");
    // Reads its value once at start; exits 1 if it is "bad".
    exec_service(
        m,
        "api",
        &[
            "--replicas",
            "3",
            "--update-parallelism",
            "1",
            "--update-failure-action",
            "pause",
            "--update-monitor",
            "3s",
            // As in Docker, a batch starts once the last one's tasks run: without a delay the
            // second bad task could start in the moment the first ran before it failed.
            "--update-delay",
            "2s",
            "--secret",
            "source=db,on-change=restart",
        ],
        "v=$(cat /run/secrets/db); echo \"read $v\"; [ \"$v\" != bad ] || exit 1; exec sleep 1000",
    );
    let first: Vec<String> = wait_for(timeout(), "three api tasks running", || {
        let l = live(m, "api");
        let running: Vec<String> = l
            .iter()
            .filter(|t| running(t))
            .map(|t| t["ID"].as_str().unwrap_or("").to_string())
            .collect();
        if running.len() == 3 {
            Ok(running)
        } else {
            Err(format!("{l:#?}"))
        }
    });

    // A good new value: every task is replaced, and the update went one task at a time.
    secret(m, &["secret", "update", "--detach", "db", "-"], "good-2");
    wait_for(timeout(), "api's tasks replaced, reading good-2", || {
        let l = live(m, "api");
        let fresh = l
            .iter()
            .filter(|t| running(t))
            .filter(|t| !first.iter().any(|id| t["ID"] == id.as_str()))
            .count();
        let logs = m.cli_ok(&["service", "logs", "api"]);
        if fresh == 3 && logs.matches("read good-2").count() == 3 {
            Ok(())
        } else {
            Err(format!("{fresh} new running; logs {logs}"))
        }
    });
    wait_for(timeout(), "api's update completed", || {
        let svc = service(m, "api");
        if svc["update"]["phase"] == "completed" {
            Ok(())
        } else {
            Err(format!("{:#}", svc["update"]))
        }
    });
    // The old tasks were shut down by the update, never failed.
    let all = tasks(m, "api");
    let old_ended: Vec<&Value> = all
        .iter()
        .filter(|t| first.iter().any(|id| t["ID"] == id.as_str()))
        .collect();
    assert!(
        old_ended.iter().all(|t| t["CurrentState"]
            .as_str()
            .is_some_and(|s| s.starts_with("Shutdown"))),
        "{old_ended:#?}"
    );

    // A bad value: the first replacement fails, and the update pauses as its failure action
    // says, leaving the other two old tasks running.
    secret(m, &["secret", "update", "--detach", "db", "-"], "bad");
    wait_for(timeout(), "api's update paused by a failing task", || {
        let svc = service(m, "api");
        if svc["update"]["phase"] == "paused" {
            Ok(())
        } else {
            Err(format!("{:#}", svc["update"]))
        }
    });
    let still_good = live(m, "api").iter().filter(|t| running(t)).count();
    assert!(still_good >= 2, "{:#?}", tasks(m, "api"));
    let audit = m.audit();
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "secret.update" && r["details"]["version"] == "3"),
        "the update is audited with its version"
    );
}

#[test]
fn a_node_never_entitled_receives_no_version_and_one_that_loses_entitlement_no_later_one() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let c = Cluster::init(1, 2);
    let m = c.first();
    let (w1, w2) = (&c.workers()[0], &c.workers()[1]);
    m.cli_ok(&["node", "update", "--label-add", "secure=true", w1.id()]);
    // Prod secrets only on secure nodes.
    m.cli_ok(&[
        "policy",
        "set",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/policies/examples/prod-secrets-on-secure-nodes.cedar"
        ),
    ]);
    secret(
        m,
        &["secret", "create", "--label", "tier=prod", "db", "-"],
        "prod-value-1",
    );
    // Two replicas: one lands on the secure w1; the not entitled w2 gets no task of it
    // (the scheduler places only where the policy entitles), a plain service runs there.
    exec_service(
        m,
        "holder",
        &[
            "--replicas",
            "2",
            "--constraint",
            "node.role==worker",
            "--secret",
            "db",
        ],
        "exec sleep 1000",
    );
    exec_service(m, "plain", &["--mode", "global"], "exec sleep 1000");
    wait_for(timeout(), "holder running on w1 only", || {
        let on = crate::harness::running_hosts(m, "holder");
        if !on.is_empty() && on.iter().all(|h| h == w1.name()) {
            Ok(())
        } else {
            Err(format!("{on:?}"))
        }
    });

    // Version 2 rolls out: only w1 receives it.
    secret(
        m,
        &["secret", "update", "--detach", "db", "-"],
        "prod-value-2",
    );
    let got = wait_for(timeout(), "version 2 delivered", || {
        let got = deliveries(m, "db");
        if got.iter().any(|(v, _)| v == "2") {
            Ok(got)
        } else {
            Err(format!("{got:?}"))
        }
    });
    assert!(
        got.contains(&("2".to_string(), w1.id().to_string())),
        "{got:?}"
    );
    assert!(got.iter().all(|(_, n)| n == w1.id()), "{got:?}");

    // Take w1's entitlement away, then roll out version 3: it never reaches w1 (the task is
    // moved off it, as on any loss of entitlement), nor any other node.
    m.cli_ok(&["node", "update", "--label-rm", "secure", w1.id()]);
    secret(
        m,
        &["secret", "update", "--detach", "db", "-"],
        "prod-value-3",
    );
    wait_for(timeout(), "holder off w1", || {
        let on = crate::harness::running_hosts(m, "holder");
        if on.is_empty() {
            Ok(())
        } else {
            Err(format!("{on:?}"))
        }
    });
    let after = deliveries(m, "db");
    assert!(
        after.iter().all(|(v, _)| v != "3"),
        "version 3 went out to a node the policy does not entitle: {after:?}"
    );
    // w2 never received any version; its agent never held the value.
    let received = json_lines(&w2.cli_ok(&["agent", "secrets", "--format", "json"]));
    assert!(received.is_empty(), "{received:#?}");
    let info = inspect_secret(m, "db");
    assert!(info.to_string().find("prod-value").is_none(), "{info:#}");
    // No file any node wrote holds any version's value: w2 never had one, and the others keep
    // theirs sealed or on tmpfs only.
    crate::harness::assert_no_plaintext(
        &[m, w1, w2],
        &["prod-value-1", "prod-value-2", "prod-value-3"],
    );
}
