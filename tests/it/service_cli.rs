//! Services through the CLI as an operator drives them: `service create` waits with its own
//! progress display, `service ps|ls` show the tasks, `service scale` spreads them, `service rm`
//! removes them; bad specs are refused naming the field, with nothing stored.
//!
//! The exec runtime needs root (namespaces), as in `runtime.rs`.

use std::collections::BTreeMap;

use serde_json::Value;
use skep::api::v1::{ServiceSpecRequest, ServiceUpdateRequest};
use skep::cli::client::Host;
use skep::store::service::{Mode, Runtime, ServiceSpec};

use crate::harness::{
    Cluster, Node, assert_error, describe, json_lines, skep, stderr, timeout, wait_for,
};

/// `service ps --format json SERVICE`.
fn ps(node: &Node, service: &str) -> Vec<Value> {
    json_lines(&node.cli_ok(&["service", "ps", "--format", "json", service]))
}

/// `service ls --format json`.
fn ls(node: &Node) -> Vec<Value> {
    json_lines(&node.cli_ok(&["service", "ls", "--format", "json"]))
}

/// Tasks that should run and do, counted per node host name.
fn running_per_node(tasks: &[Value]) -> BTreeMap<String, usize> {
    let mut per = BTreeMap::new();
    for t in tasks {
        let running = t["DesiredState"] == "Running"
            && t["CurrentState"]
                .as_str()
                .is_some_and(|s| s.starts_with("Running"));
        if running {
            *per.entry(t["Node"].as_str().unwrap_or("").to_string())
                .or_insert(0) += 1;
        }
    }
    per
}

fn summary(tasks: &[Value]) -> String {
    tasks
        .iter()
        .map(|t| {
            format!(
                "{} {} on {:?}: {} / {} {}",
                t["ID"].as_str().unwrap_or("?"),
                t["Name"].as_str().unwrap_or("?"),
                t["Node"].as_str().unwrap_or("?"),
                t["DesiredState"].as_str().unwrap_or("?"),
                t["CurrentState"].as_str().unwrap_or("?"),
                t["Error"].as_str().unwrap_or(""),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn an_exec_service_converges_scales_and_is_removed() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let c = Cluster::init(1, 2);
    let m = c.first();

    // Create: the ID first, then the CLI waits until every replica runs.
    let out = m.cli_ok(&[
        "service",
        "create",
        "--runtime",
        "exec",
        "--name",
        "t1",
        "--replicas",
        "3",
        "--",
        "/bin/sleep",
        "1000",
    ]);
    let id = out.lines().next().unwrap_or_default().trim().to_string();
    assert!(!id.is_empty(), "no service ID first:\n{out}");
    assert!(
        out.contains("overall progress: 3 out of 3 tasks"),
        "no final progress:\n{out}"
    );
    assert!(
        out.trim_end().ends_with("verify: Service converged"),
        "not converged:\n{out}"
    );

    // ps: three Running tasks, one per node.
    let tasks = ps(m, "t1");
    let per = running_per_node(&tasks);
    assert_eq!(
        per.values().copied().collect::<Vec<_>>(),
        [1, 1, 1],
        "{}",
        summary(&tasks)
    );
    let hosts: Vec<&str> = per.keys().map(String::as_str).collect();
    assert_eq!(hosts, ["m1", "w1", "w2"], "{}", summary(&tasks));
    let mut names: Vec<&str> = tasks.iter().filter_map(|t| t["Name"].as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["t1.1", "t1.2", "t1.3"], "{}", summary(&tasks));
    assert!(
        tasks.iter().all(|t| t["Image"] == "/bin/sleep 1000"),
        "{}",
        summary(&tasks)
    );

    // The table form has Docker's columns.
    let table = m.cli_ok(&["service", "ps", "t1"]);
    assert!(
        table.starts_with("ID  ") && table.lines().next().unwrap_or("").contains("DESIRED STATE"),
        "{table}"
    );

    // ls: 3/3, by the ID create printed.
    let services = ls(m);
    assert_eq!(services.len(), 1, "{services:?}");
    let s = &services[0];
    assert_eq!(s["Name"], "t1");
    assert_eq!(s["Mode"], "replicated");
    assert_eq!(s["Replicas"], "3/3");
    assert!(
        id.starts_with(s["ID"].as_str().unwrap_or("?")),
        "{id} vs {s}"
    );
    let table = m.cli_ok(&["service", "ls"]);
    assert!(
        table.lines().any(|l| l.contains("t1") && l.contains("3/3")),
        "{table}"
    );

    // Scale to 6: two per node.
    let out = m.cli_ok(&["service", "scale", "t1=6"]);
    assert!(out.starts_with("t1 scaled to 6\n"), "{out}");
    assert!(
        out.trim_end().ends_with("verify: Service converged"),
        "{out}"
    );
    let tasks = ps(m, "t1");
    let per = running_per_node(&tasks);
    assert_eq!(
        per.values().copied().collect::<Vec<_>>(),
        [2, 2, 2],
        "{}",
        summary(&tasks)
    );
    assert_eq!(ls(m)[0]["Replicas"], "6/6");

    // node ps on a worker lists its two tasks.
    let w1 = &c.workers()[0];
    let on_w1 = json_lines(&m.cli_ok(&["node", "ps", "--format", "json", w1.id()]));
    assert_eq!(
        running_per_node(&on_w1).get("w1"),
        Some(&2),
        "{}",
        summary(&on_w1)
    );

    // rm prints the name; nothing is left.
    assert_eq!(m.cli_ok(&["service", "rm", "t1"]), "t1\n");
    assert_eq!(m.cli_ok(&["service", "ls", "-q"]), "");
    wait_for(timeout(), "t1's tasks gone from w1", || {
        let left = json_lines(&m.cli_ok(&["node", "ps", "--format", "json", w1.id()]));
        let running = running_per_node(&left);
        if running.is_empty() {
            Ok(())
        } else {
            Err(summary(&left))
        }
    });
}

#[test]
fn bad_specs_are_refused_naming_the_field_and_nothing_is_stored() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    for (args, field) in [
        (
            &["--mode", "global", "--replicas", "2", "redis"][..],
            "--replicas",
        ),
        (
            &["--restart-condition", "sometimes", "redis"][..],
            "--restart-condition",
        ),
        (
            &["--constraint", "node.rol==x", "redis"][..],
            "--constraint",
        ),
        (&["UPPER:case"][..], "image"),
        (
            &["--reserve-memory", "lots", "redis"][..],
            "--reserve-memory",
        ),
        (&["--runtime", "exec", "--", ""][..], "COMMAND"),
    ] {
        let mut full = vec!["service", "create", "--name", "bad"];
        full.extend_from_slice(args);
        let out = m.cli(&full);
        assert!(
            !out.status.success(),
            "`skep {}` succeeded\n{}",
            full.join(" "),
            describe(&out)
        );
        assert!(
            stderr(&out).contains(field),
            "`skep {}` does not name {field}\n{}",
            full.join(" "),
            describe(&out)
        );
        assert_eq!(
            m.cli_ok(&["service", "ls", "-q"]),
            "",
            "`skep {}` stored something",
            full.join(" ")
        );
    }
}

#[test]
fn bad_specs_are_refused_before_any_daemon_is_asked() {
    let dir = tempfile::tempdir().unwrap();
    let host = format!("unix://{}", dir.path().join("none.sock").display());
    for (args, needle) in [
        (
            &["--mode", "global", "--replicas", "2", "redis"][..],
            "--replicas can only be used with replicated mode",
        ),
        (
            &["--constraint", "node.rol==x", "redis"][..],
            "invalid --constraint",
        ),
        (&["UPPER:case"][..], "repository name must be lowercase"),
    ] {
        let mut full = vec!["--host", &host, "service", "create", "--name", "bad"];
        full.extend_from_slice(args);
        assert_error(&skep(&full), needle);
    }
    let out = skep(&["--host", &host, "service", "scale", "web"]);
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    assert!(
        stderr(&out).contains("SERVICE=REPLICAS"),
        "{}",
        describe(&out)
    );
}

/// A spec the CLI would never send, each breaking one rule, with the field the refusal names.
fn broken_specs(base: &ServiceSpec) -> Vec<(&'static str, ServiceSpec)> {
    let with = |f: &dyn Fn(&mut ServiceSpec)| {
        let mut s = base.clone();
        f(&mut s);
        s
    };
    vec![
        (
            "replicas:",
            with(&|s| s.mode = Mode::Replicated { replicas: 1 << 40 }),
        ),
        ("image:", with(&|s| s.task.image = "redis".into())),
        (
            "image:",
            with(&|s| {
                s.task.runtime = Runtime::Docker;
                s.task.image = "UPPER:case".into();
            }),
        ),
        ("env:", with(&|s| s.task.env = vec!["NO_EQUALS".into()])),
        (
            "labels:",
            with(&|s| {
                s.labels.insert("a key".into(), "x".into());
            }),
        ),
        (
            "command:",
            with(&|s| s.task.command = vec!["/bin/sleep".into(), "1\u{0}".into()]),
        ),
        (
            "restart.delay_ms",
            with(&|s| s.task.restart.delay_ms = u64::MAX),
        ),
    ]
}

/// The manager checks every spec itself: a client that skips the CLI's checks and sends a
/// bad spec straight to the Control API is refused naming the field, and nothing changes.
#[test]
fn the_manager_refuses_a_bad_spec_sent_around_the_cli() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    m.cli_ok(&[
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        "--name",
        "good",
        "--",
        "/bin/sleep",
        "1000",
    ]);
    let listed = m.cli_ok(&["service", "ls", "-q"]);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    let inspect = || -> Value {
        let all: Value = serde_json::from_str(&m.cli_ok(&["service", "inspect", "good"])).unwrap();
        all[0].clone()
    };
    let before = inspect();
    let base: ServiceSpec = serde_json::from_value(before["spec"].clone()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut api = rt
        .block_on(skep::cli::client::connect(&Host::Unix(m.socket())))
        .unwrap();
    let mut renamed = base.clone();
    renamed.name = "bad".into();
    for (field, spec) in broken_specs(&renamed) {
        let err = rt
            .block_on(api.service_create(ServiceSpecRequest {
                spec_json: serde_json::to_string(&spec).unwrap(),
            }))
            .expect_err(&format!("created a spec breaking {field}"));
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
        assert_eq!(
            m.cli_ok(&["service", "ls", "-q"]),
            listed,
            "a spec breaking {field} was stored"
        );
    }
    for (field, spec) in broken_specs(&base) {
        let err = rt
            .block_on(api.service_update(ServiceUpdateRequest {
                service: "good".into(),
                spec_json: serde_json::to_string(&spec).unwrap(),
                rollback: false,
                force: false,
            }))
            .expect_err(&format!("updated to a spec breaking {field}"));
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
        let now = inspect();
        assert_eq!(
            (&now["version"], &now["spec"]),
            (&before["version"], &before["spec"]),
            "an update breaking {field} was stored"
        );
    }
}
