//! Orchestration with real daemons: tasks are replaced when they die, move when their node
//! dies or drains, global services follow the nodes, and a start-first update never drops
//! below the declared count. Exec runtime (needs root, as the daemons run as root).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::harness::{Cluster, Node, json_lines, timeout, wait_for};

fn ps(node: &Node, service: &str) -> Vec<Value> {
    json_lines(&node.cli_ok(&["service", "ps", "--format", "json", service]))
}

/// A task's name without the history prefix of `service ps`.
fn name(t: &Value) -> &str {
    t["Name"].as_str().unwrap_or("").trim_start_matches(" \\_ ")
}

fn is_running(t: &Value) -> bool {
    t["DesiredState"] == "Running"
        && t["CurrentState"]
            .as_str()
            .is_some_and(|s| s.starts_with("Running"))
}

/// Running tasks of `service` per node host name.
fn running(node: &Node, service: &str) -> BTreeMap<String, usize> {
    let mut per = BTreeMap::new();
    for t in ps(node, service).iter().filter(|t| is_running(t)) {
        *per.entry(t["Node"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    per
}

fn describe(tasks: &[Value]) -> String {
    tasks
        .iter()
        .map(|t| {
            format!(
                "{} {} {} {} {}",
                t["ID"], t["Name"], t["Node"], t["DesiredState"], t["CurrentState"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until `service` has `n` running tasks spread as `check` wants; returns the spread.
fn wait_spread(
    node: &Node,
    service: &str,
    what: &str,
    check: impl Fn(&BTreeMap<String, usize>) -> bool,
) -> BTreeMap<String, usize> {
    wait_for(timeout(), what, || {
        let per = running(node, service);
        if check(&per) {
            Ok(per)
        } else {
            Err(describe(&ps(node, service)))
        }
    })
}

fn create(node: &Node, args: &[&str]) {
    let mut all = vec![
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        "--restart-delay",
        "0s",
    ];
    all.extend_from_slice(args);
    node.cli_ok(&all);
}

/// The PID of the init helper running a task (its command line names the task's directory).
fn task_pid(task_id: &str) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.contains("init-helper") && cmd.contains(task_id) && !cmd.contains("--stage2") {
            return Some(pid);
        }
    }
    None
}

#[test]
fn replicas_spread_evenly_and_a_killed_task_is_replaced() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let c = Cluster::init(1, 2);
    let m = c.first();
    create(
        m,
        &[
            "--name",
            "spread",
            "--replicas",
            "6",
            "--",
            "/bin/sleep",
            "1000",
        ],
    );
    let per = wait_spread(m, "spread", "6 running tasks, 2 per node", |p| {
        p.values().sum::<usize>() == 6 && p.len() == 3
    });
    assert!(per.values().all(|&n| n == 2), "not spread evenly: {per:?}");

    // Kill one task's process: the orchestrator replaces it.
    let victim = ps(m, "spread").into_iter().find(is_running).unwrap();
    let full_id =
        json_lines(&m.cli_ok(&["service", "ps", "--no-trunc", "--format", "json", "spread"]))
            .into_iter()
            .find(|t| name(t) == name(&victim) && is_running(t))
            .and_then(|t| t["ID"].as_str().map(str::to_string))
            .unwrap();
    let pid = wait_for(timeout(), "the victim's process", || {
        task_pid(&full_id).ok_or_else(|| "not found".to_string())
    });
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for(timeout(), "a replacement for the killed task", || {
        let tasks = ps(m, "spread");
        let replaced = tasks
            .iter()
            .any(|t| name(t) == name(&victim) && is_running(t) && t["ID"] != victim["ID"]);
        let failed = tasks
            .iter()
            .any(|t| t["ID"] == victim["ID"] && !is_running(t));
        if replaced && failed && tasks.iter().filter(|t| is_running(t)).count() == 6 {
            Ok(())
        } else {
            Err(describe(&tasks))
        }
    });
}

#[test]
fn tasks_leave_a_dead_node_and_a_drained_node() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let mut c = Cluster::init(1, 3);
    let m = c.first().name().to_string();
    create(
        c.first(),
        &[
            "--name",
            "mover",
            "--replicas",
            "4",
            "--",
            "/bin/sleep",
            "1000",
        ],
    );
    wait_spread(c.first(), "mover", "4 running on 4 nodes", |p| {
        p.values().sum::<usize>() == 4 && p.len() == 4
    });

    // Kill w1's daemon: within a few heartbeats its task runs elsewhere.
    let w1 = c.nodes.iter().position(|n| n.name() == "w1").unwrap();
    c.nodes[w1].kill();
    wait_spread(c.first(), "mover", "4 running without w1", |p| {
        p.values().sum::<usize>() == 4 && !p.contains_key("w1")
    });

    // Drain w2: its task moves too, and nothing new is placed there.
    c.first()
        .cli_ok(&["node", "update", "--availability", "drain", "w2"]);
    let per = wait_spread(c.first(), "mover", "4 running on m1 and w3 only", |p| {
        p.values().sum::<usize>() == 4 && p.keys().all(|h| *h == m || h == "w3")
    });
    assert_eq!(per.values().sum::<usize>(), 4);
    let audit = c.first().audit();
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "node.update" && r["details"]["availability"] == "Drain"),
        "the drain is not audited"
    );
}

#[test]
fn a_global_service_follows_nodes_joining() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let c = Cluster::init(1, 1);
    let m = c.first();
    create(
        m,
        &[
            "--name",
            "everywhere",
            "--mode",
            "global",
            "--",
            "/bin/sleep",
            "1000",
        ],
    );
    wait_spread(m, "everywhere", "one task on each of 2 nodes", |p| {
        p.len() == 2 && p.values().all(|&n| n == 1)
    });
    let token = m.cli_ok(&["join-token", "-q", "worker"]).trim().to_string();
    let late = Node::start("late");
    late.cli_ok(&["swarm", "join", "--token", &token, &m.addr()]);
    wait_spread(m, "everywhere", "one task on each of 3 nodes", |p| {
        p.len() == 3 && p.contains_key("late")
    });
}

#[test]
fn a_start_first_update_never_drops_below_the_declared_count() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let c = Cluster::init(1, 2);
    let m = c.first();
    create(
        m,
        &[
            "--name",
            "rolling",
            "--replicas",
            "3",
            "--update-order",
            "start-first",
            "--update-parallelism",
            "1",
            "--update-delay",
            "0s",
            "--",
            "/bin/sleep",
            "1000",
        ],
    );
    wait_spread(m, "rolling", "3 running", |p| {
        p.values().sum::<usize>() == 3
    });
    m.cli_ok(&[
        "service",
        "update",
        "--detach",
        "--env-add",
        "VERSION=2",
        "rolling",
    ]);
    // Watch until every running task is of the new version; never fewer than 3 running.
    // This samples the live cluster at each poll (a dip shorter than one poll could pass
    // unseen); the orchestrator unit tests check the invariant at every step of the update.
    let mut lowest = usize::MAX;
    wait_for(timeout(), "the update to finish", || {
        let tasks = ps(m, "rolling");
        let up = tasks.iter().filter(|t| is_running(t)).count();
        lowest = lowest.min(up);
        let svc: Value =
            serde_json::from_str(&m.cli_ok(&["service", "inspect", "rolling"])).unwrap();
        let done = svc[0]["update"]["phase"] == "completed";
        if done && up == 3 {
            Ok(())
        } else {
            Err(format!("{up} running, update {}", svc[0]["update"]))
        }
    });
    assert!(
        lowest >= 3,
        "only {lowest} tasks were running at one point of a start-first update"
    );
    // The audit shows who created and updated it.
    let audit = m.audit();
    for action in ["service.create", "service.update"] {
        assert!(
            audit.iter().any(|r| r["action"] == action
                && r["target"] == "rolling"
                && r["actor"]["kind"] == "local-admin"),
            "{action} not audited"
        );
    }
}

/// Stage-1 init helpers (one per running exec task) of the node whose directory is `dir`.
fn task_processes(dir: &std::path::Path) -> usize {
    let dir = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .filter(|c| {
            c.contains("init-helper")
                && c.contains(&dir)
                && !c.contains("--stage2")
                && !c.contains("--exec")
        })
        .count()
}

#[test]
fn tasks_survive_a_leader_change_without_loss_or_duplicates() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let mut c = Cluster::init(3, 1);
    let w1 = c.nodes.iter().position(|n| n.name() == "w1").unwrap();
    create(
        c.first(),
        &[
            "--name",
            "steady",
            "--replicas",
            "4",
            "--constraint",
            "node.role==worker",
            "--",
            "/bin/sleep",
            "1000",
        ],
    );
    wait_spread(c.first(), "steady", "4 running on w1", |p| {
        p.get("w1") == Some(&4)
    });
    let ids = |n: &Node| -> Vec<String> {
        let mut v: Vec<String> = ps(n, "steady")
            .iter()
            .filter(|t| is_running(t))
            .filter_map(|t| t["ID"].as_str().map(String::from))
            .collect();
        v.sort();
        v
    };
    let before = ids(c.first());
    assert_eq!(task_processes(&c.nodes[w1].data_dir()), 4);

    // The leader dies; another manager takes over and the worker's session follows it.
    let old_leader = c.first().id().to_string();
    c.nodes[0].kill();
    let survivor = 1;
    wait_for(timeout(), "a new leader", || {
        let nodes = c.nodes[survivor].try_node_ls()?;
        match crate::harness::leader_id(&nodes) {
            Some(l) if l != old_leader => Ok(()),
            other => Err(format!("leader {other:?}")),
        }
    });
    // The new leader dispatches: scaling through it adds exactly one task on w1.
    c.nodes[survivor].cli_ok(&["service", "scale", "--detach", "steady=5"]);
    wait_spread(&c.nodes[survivor], "steady", "5 running on w1", |p| {
        p.get("w1") == Some(&5)
    });
    let after = ids(&c.nodes[survivor]);
    assert!(
        before.iter().all(|id| after.contains(id)),
        "tasks were replaced: {before:?} -> {after:?}"
    );
    assert_eq!(after.len(), 5, "{after:?}");
    // Exactly one process per task: nothing lost, nothing started twice.
    wait_for(timeout(), "5 task processes on w1", || {
        let n = task_processes(&c.nodes[w1].data_dir());
        if n == 5 {
            Ok(())
        } else {
            Err(format!("{n} processes"))
        }
    });
}

#[test]
fn the_heartbeat_period_is_a_cluster_setting() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    assert_eq!(
        m.cli_ok(&["swarm", "update", "--dispatcher-heartbeat", "2s"])
            .trim(),
        "Swarm updated."
    );
    let audit = m.audit();
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "swarm.update" && r["details"]["ms"] == "2000"),
        "the change is not audited"
    );
    let out = m.cli(&["swarm", "update", "--dispatcher-heartbeat", "1ms"]);
    assert!(!out.status.success(), "a 1 ms heartbeat was accepted");
    // The node keeps heartbeating at the new period and stays Ready.
    c.wait_all_ready(0);
}

/// Every change to a service is on the audit chain with who made it: create, scale,
/// rollback and remove, each under its own action.
#[test]
fn scale_rollback_and_remove_are_audited_with_their_actor() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    create(m, &["--name", "audited", "--", "/bin/sleep", "1000"]);
    m.cli_ok(&[
        "service",
        "update",
        "--detach",
        "--env-add",
        "V=2",
        "audited",
    ]);
    m.cli_ok(&["service", "scale", "--detach", "audited=2"]);
    m.cli_ok(&["service", "rollback", "--detach", "audited"]);
    let svc: Value = serde_json::from_str(&m.cli_ok(&["service", "inspect", "audited"])).unwrap();
    assert!(
        !svc[0]["spec"]["task"]["env"].to_string().contains("V=2"),
        "the rollback did not go back: {svc}"
    );
    m.cli_ok(&["service", "rm", "audited"]);
    let audit = m.audit();
    let wrong: Vec<String> = [
        "service.create",
        "service.update",
        "service.scale",
        "service.rollback",
        "service.remove",
    ]
    .into_iter()
    .filter_map(|action| {
        let found: Vec<&Value> = audit
            .iter()
            .filter(|r| r["action"] == action && r["target"] == "audited")
            .collect();
        let ok = found.len() == 1
            && found[0]["actor"]["kind"] == "local-admin"
            && found[0]["outcome"] == "ok";
        (!ok).then(|| format!("{action}: {found:?}"))
    })
    .collect();
    assert!(
        wrong.is_empty(),
        "not audited as one ok record by the local admin:\n{}",
        wrong.join("\n")
    );
}
