//! Tasks of a node whose agent is away: while the leader has the node Down, nobody knows
//! whether its tasks still run, so `service ls` does not count them and `service ps` and
//! `node ps` show them as unknown; once the node's daemon is back the service converges again.

use std::collections::BTreeMap;

use crate::harness::{
    Cluster, Node, create_sleepers_on_workers, find_node, json_lines, running_hosts, timeout,
    wait_for,
};

const REPLICAS: usize = 3;
/// How long a quick restart keeps a daemon away.
const OUTAGE: std::time::Duration = std::time::Duration::from_secs(3);

/// `service ls --format json` of `service`: its REPLICAS column.
fn replicas(m: &Node, service: &str) -> String {
    json_lines(&m.cli_ok(&["service", "ls", "--format", "json"]))
        .iter()
        .find(|s| s["Name"] == service)
        .and_then(|s| s["Replicas"].as_str().map(str::to_string))
        .unwrap_or_else(|| panic!("service {service} is not listed"))
}

/// The CURRENT STATE of each task placed on `host`, by task ID, from `args` (a `ps` command).
fn states_on(m: &Node, args: &[&str], host: &str) -> BTreeMap<String, String> {
    json_lines(&m.cli_ok(args))
        .iter()
        .filter(|t| t["Node"] == host)
        .map(|t| {
            (
                t["ID"].as_str().unwrap_or_default().to_string(),
                t["CurrentState"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Waits until all [`REPLICAS`] tasks of `service` run on `host` and `service ls` counts them.
fn wait_all_running_on(m: &Node, service: &str, host: &str) {
    let all = format!("{REPLICAS}/{REPLICAS}");
    wait_for(timeout(), "every task running on the worker", || {
        let on = running_hosts(m, service);
        if on == vec![host.to_string(); REPLICAS] && replicas(m, service) == all {
            Ok(())
        } else {
            Err(format!("{on:?}"))
        }
    });
}

#[test]
fn tasks_of_a_down_node_are_unknown_not_running_until_it_is_back() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let mut c = Cluster::init(1, 1);
    let w = c.workers()[0].name().to_string();
    let w_id = c.workers()[0].id().to_string();
    let m = c.first();
    create_sleepers_on_workers(m, "away", REPLICAS);
    let all = format!("{REPLICAS}/{REPLICAS}");
    wait_all_running_on(m, "away", &w);
    let ps = ["service", "ps", "--format", "json", "away"];
    let placed = states_on(m, &ps, &w);
    assert_eq!(placed.len(), REPLICAS, "{placed:?}");

    // A crash of the worker's daemon: its exec tasks live on as orphans, nobody reports them.
    c.nodes[1].kill();
    let m = c.first();
    eprintln!(
        "service ls right after the kill:\n{}",
        m.cli_ok(&["service", "ls"])
    );
    wait_for(timeout(), "the worker to be marked Down", || {
        let nodes = m.node_ls();
        match find_node(&nodes, &w_id).map(|n| n["Status"].clone()) {
            Some(s) if s == "Down" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let ls = m.cli_ok(&["service", "ls"]);
    eprintln!("service ls once the worker is Down:\n{ls}");
    let ps_text = m.cli_ok(&["service", "ps", "away"]);
    eprintln!("service ps once the worker is Down:\n{ps_text}");
    assert!(
        !ls.contains(&all),
        "service ls claims {all} while the node running the tasks is down:\n{ls}"
    );
    assert_ne!(replicas(m, "away"), all, "the JSON listing too");
    // Every task the worker had is unknown now, in `service ps` and in `node ps`.
    let now = states_on(m, &ps, &w);
    for id in placed.keys() {
        let state = now.get(id).map(String::as_str).unwrap_or("(not listed)");
        assert!(
            state.starts_with("Unknown") && state.ends_with("(node down)"),
            "task {id} on the down node shows {state:?}, not unknown:\n{ps_text}"
        );
    }
    let node_ps = states_on(m, &["node", "ps", "--format", "json", &w], &w);
    for id in placed.keys() {
        let state = node_ps
            .get(id)
            .map(String::as_str)
            .unwrap_or("(not listed)");
        assert!(
            state.starts_with("Unknown"),
            "node ps shows task {id} as {state:?}"
        );
    }

    // The worker's daemon comes back: the service converges to all replicas again.
    c.nodes[1].spawn();
    c.nodes[1].wait_up();
    let m = c.first();
    wait_for(timeout(), "the service back to all replicas", || {
        let on = running_hosts(m, "away");
        let r = replicas(m, "away");
        if on == vec![w.clone(); REPLICAS] && r == all {
            Ok(())
        } else {
            Err(format!("{r} running on {on:?}"))
        }
    });
    let ls = m.cli_ok(&["service", "ls"]);
    assert!(ls.contains(&all), "{ls}");
}

/// With the default heartbeat period (5 s: Down after 15-20 s of silence), a daemon restart of
/// [`OUTAGE`] does not get its node marked Down, so the orchestrator does not orphan and
/// replace its tasks (what the restarted agent then does with them is its own business).
#[test]
fn a_quick_daemon_restart_does_not_make_the_orchestrator_replace_tasks() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let mut c = Cluster::init(1, 1);
    let w = c.workers()[0].name().to_string();
    let m = c.first();
    m.cli_ok(&["swarm", "update", "--dispatcher-heartbeat", "5s"]);
    create_sleepers_on_workers(m, "quick", REPLICAS);
    let all = format!("{REPLICAS}/{REPLICAS}");
    wait_for(timeout(), "every task running on the worker", || {
        let on = running_hosts(m, "quick");
        if on == vec![w.clone(); REPLICAS] {
            Ok(())
        } else {
            Err(format!("{on:?}"))
        }
    });
    // The daemon stays away for OUTAGE (a restart, an upgrade of the binary), then comes back.
    let started = std::time::Instant::now();
    c.nodes[1].kill();
    crate::harness::wait_until(OUTAGE * 2, "the outage to last its time", || {
        started.elapsed() >= OUTAGE
    });
    c.nodes[1].spawn();
    c.nodes[1].wait_up();
    let took = started.elapsed();
    eprintln!("the worker's daemon was back after {took:?}");
    let m = c.first();
    wait_for(timeout(), "the service back to all replicas", || {
        let r = replicas(m, "quick");
        if r == all { Ok(()) } else { Err(r) }
    });
    let ps = m.cli_ok(&["service", "ps", "quick"]);
    assert!(
        !ps.contains("Orphaned") && !ps.contains("Unknown"),
        "a restart of {took:?} made the orchestrator give up on the node's tasks:\n{ps}"
    );
}

/// Before the node is marked Down (15-20 s at the default 5 s heartbeat), the leader notices
/// within seconds that the agent's task session ended: the node is Unknown and its tasks are
/// unknown ("agent away"), not counted as running, and kept; when the daemon is back they are
/// running again, the same tasks.
#[test]
fn tasks_of_an_agent_that_went_away_are_unknown_within_seconds_not_after_down() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let mut c = Cluster::init(1, 1);
    let w = c.workers()[0].name().to_string();
    let w_id = c.workers()[0].id().to_string();
    let m = c.first();
    m.cli_ok(&["swarm", "update", "--dispatcher-heartbeat", "5s"]);
    create_sleepers_on_workers(m, "gone", REPLICAS);
    let all = format!("{REPLICAS}/{REPLICAS}");
    wait_for(timeout(), "every task running on the worker", || {
        let r = replicas(m, "gone");
        if r == all { Ok(()) } else { Err(r) }
    });
    let ps = ["service", "ps", "--format", "json", "gone"];
    let placed = states_on(m, &ps, &w);
    let killed = std::time::Instant::now();
    c.nodes[1].kill();
    let m = c.first();
    wait_for(
        std::time::Duration::from_secs(10),
        "the service not counted as all running, within seconds",
        || {
            let r = replicas(m, "gone");
            if r == format!("0/{REPLICAS}") {
                Ok(())
            } else {
                Err(r)
            }
        },
    );
    eprintln!("agent away noticed after {:?}", killed.elapsed());
    let nodes = m.node_ls();
    let status = find_node(&nodes, &w_id).map(|n| n["Status"].clone());
    assert_eq!(status, Some("Unknown".into()), "not Down yet");
    // A node that may be restarting is not removed without --force.
    let refused = m.cli_err(&["node", "rm", &w_id]);
    assert!(refused.contains("is not down"), "{refused}");
    let now = states_on(m, &ps, &w);
    assert_eq!(now.len(), placed.len(), "{now:?}");
    for (id, state) in &now {
        assert!(
            placed.contains_key(id)
                && state.starts_with("Unknown")
                && state.ends_with("(agent away)"),
            "task {id}: {state:?}"
        );
    }
    c.nodes[1].spawn();
    c.nodes[1].wait_up();
    let m = c.first();
    wait_for(
        timeout(),
        "the node Ready and the service all running",
        || {
            let r = replicas(m, "gone");
            if r == all { Ok(()) } else { Err(r) }
        },
    );
}

/// A leader paused for longer than the grace (a frozen VM; a burst of task starts on its own
/// node that left it answering no heartbeat for seconds) heard no node meanwhile, which says
/// nothing of the nodes: when it resumes it marks none Down, and the orchestrator orphans and
/// replaces no task. A node that does go silent afterwards is still marked Down. (Before
/// `manager::liveness`, the leader marked the worker Down the moment it resumed and the
/// worker's tasks were orphaned and started again.)
#[test]
fn a_leader_paused_beyond_the_grace_marks_no_node_down_when_it_resumes() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    const PERIOD: std::time::Duration = std::time::Duration::from_millis(300);
    let c = Cluster::init_opts(1, 1, &[], &["--heartbeat-period", "300ms"]);
    let w = c.workers()[0].name().to_string();
    let w_id = c.workers()[0].id().to_string();
    let m = c.first();
    create_sleepers_on_workers(m, "paused", REPLICAS);
    let ps = ["service", "ps", "--format", "json", "paused"];
    wait_all_running_on(m, "paused", &w);
    let placed = states_on(m, &ps, &w);

    // Frozen for ten periods: more than three times the grace of three periods.
    m.pause();
    let paused = std::time::Instant::now();
    crate::harness::wait_until(PERIOD * 20, "the pause to last its time", || {
        paused.elapsed() >= PERIOD * 10
    });
    m.resume();
    // Watched for twenty periods after: the worker stays up, its tasks the same.
    let resumed = std::time::Instant::now();
    let mut watched = 0;
    crate::harness::wait_until(timeout(), "twenty periods after the resume", || {
        let nodes = m.node_ls();
        let status = find_node(&nodes, &w_id).map(|n| n["Status"].clone());
        assert_eq!(
            status.as_ref().and_then(|s| s.as_str()),
            Some("Ready"),
            "the worker was marked down after the leader's own pause ({:?} after the resume)",
            resumed.elapsed()
        );
        let now = states_on(m, &ps, &w);
        assert_eq!(
            now.keys().collect::<Vec<_>>(),
            placed.keys().collect::<Vec<_>>(),
            "the worker's tasks were replaced after the leader's own pause:\n{}",
            m.cli_ok(&["service", "ps", "paused"])
        );
        watched += 1;
        resumed.elapsed() >= PERIOD * 20 && watched >= 3
    });
    let text = m.cli_ok(&["service", "ps", "paused"]);
    assert!(!text.contains("Orphaned"), "{text}");
    assert!(
        !m.log().contains("marking it down"),
        "the leader marked a node down after its own pause"
    );

    // The rule still marks a node that is silent while the leader answers.
    let worker = &c.nodes[1];
    worker.pause();
    wait_for(timeout(), "the paused worker to be marked Down", || {
        let nodes = m.node_ls();
        match find_node(&nodes, &w_id).map(|n| n["Status"].clone()) {
            Some(s) if s == "Down" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    worker.resume();
}
