//! Reads under faults: a paused or cut-off manager never answers from a stale copy unless
//! asked to (`--stale`), status does not call dead managers Reachable, an audited read whose
//! record cannot be committed is refused, and a joined node is Ready when `swarm join` returns.
//! Also the failover measurement (ignored by default: it reports numbers, it asserts none).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    Cluster, Node, json_lines, leader_id, running_hosts, secret_names, stderr, stdout, summary,
    timeout, wait_for, wait_until,
};

/// Creates secret `name` through `node`, retrying while the cluster elects a leader.
fn create_secret_eventually(node: &Node, name: &str) {
    wait_for(timeout(), &format!("secret {name} created"), || {
        let out = node.cli_stdin(&["secret", "create", name, "-"], "value");
        if out.status.success() {
            Ok(())
        } else {
            Err(stderr(&out))
        }
    });
}

fn leader_index(c: &Cluster) -> usize {
    let nodes = wait_for(timeout(), "a leader", || {
        let nodes = c.first().try_node_ls()?;
        leader_id(&nodes)
            .map(|_| nodes.clone())
            .ok_or(summary(&nodes))
    });
    c.index_of(&leader_id(&nodes).unwrap())
}

#[test]
fn a_paused_leader_answers_with_the_writes_made_meanwhile_or_not_at_all() {
    let c = Cluster::init(3, 0);
    let old = leader_index(&c);
    create_secret_eventually(&c.nodes[old], "before");
    let others: Vec<usize> = (0..3).filter(|i| *i != old).collect();

    c.nodes[old].pause();
    for (k, name) in ["during_a", "during_b"].iter().enumerate() {
        create_secret_eventually(&c.nodes[others[k % others.len()]], name);
    }
    c.nodes[old].resume();

    // At once, on the manager that was leader: the new writes, or a refusal; never the old list.
    let seen = secret_names(&c.nodes[old], &[]);
    if let Ok(names) = &seen {
        assert_eq!(
            names,
            &["before", "during_a", "during_b"],
            "the resumed old leader answered from its stale copy"
        );
    }
    // And once it has caught up, it answers normally.
    wait_for(
        timeout(),
        "the old leader lists every secret",
        || match secret_names(&c.nodes[old], &[])? {
            n if n.len() == 3 => Ok(()),
            n => Err(format!("{n:?}")),
        },
    );
}

#[test]
fn without_quorum_reads_fail_clearly_status_is_truthful_and_tokens_stay_hidden() {
    let mut c = Cluster::init(3, 0);
    c.first().cli_stdin(&["secret", "create", "kept", "-"], "v");
    let survivor_id = c.first().id().to_string();
    c.nodes[1].kill();
    c.nodes[2].kill();
    let survivor = c.first();

    // A default read cannot be confirmed by a quorum: it fails, saying why.
    for args in [
        &["node", "ls"][..],
        &["secret", "ls"][..],
        &["service", "ls"][..],
    ] {
        let err = survivor.cli_err(args);
        assert!(
            err.contains("quorum"),
            "`{}` should fail with a quorum error: {err}",
            args.join(" ")
        );
    }

    // The token is not shown, also with --stale: an audited read confirms a quorum first,
    // since its record needs one. (That a read is refused when its record alone fails is
    // `audit_review::audited_reads_and_deliveries_fail_closed_when_their_record_cannot_commit`.)
    for args in [
        &["join-token", "worker"][..],
        &["--stale", "join-token", "worker"][..],
    ] {
        let out = survivor.cli(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "`{}` without quorum",
            args.join(" ")
        );
        assert!(
            !stdout(&out).contains("SKEP-1-") && !stderr(&out).contains("SKEP-1-"),
            "`{}` printed a token without its audit record: {}",
            args.join(" "),
            stdout(&out)
        );
    }

    // `--stale` shows this manager's copy; the dead managers are not Reachable, and no one
    // is Leader (this manager has no quorum).
    let nodes: Vec<Value> = wait_for(
        timeout(),
        "dead managers not Reachable and no Leader in `node ls --stale`",
        || {
            let out = survivor.cli(&["node", "ls", "--stale", "--format", "json"]);
            if !out.status.success() {
                return Err(stderr(&out));
            }
            let nodes = json_lines(&stdout(&out));
            let bad = nodes.iter().any(|n| {
                n["ManagerStatus"] == "Leader"
                    || (n["ID"] != survivor_id.as_str() && n["ManagerStatus"] == "Reachable")
            });
            if bad { Err(summary(&nodes)) } else { Ok(nodes) }
        },
    );
    assert_eq!(nodes.len(), 3, "{}", summary(&nodes));
    assert_eq!(
        secret_names(survivor, &["--stale"]).unwrap(),
        ["kept"],
        "--stale reads the local copy"
    );
}

#[test]
fn a_joined_node_is_ready_when_join_returns_and_gets_its_share_of_tasks() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    let token = m.cli_ok(&["join-token", "-q", "worker"]).trim().to_string();
    let w = Node::start("w1");
    w.cli_ok(&["swarm", "join", "--token", &token, &m.addr()]);

    // No wait: Ready as soon as the join returned.
    let nodes = m.node_ls();
    let w1 = nodes
        .iter()
        .find(|n| n["Hostname"] == "w1")
        .unwrap_or_else(|| panic!("w1 is not listed: {}", summary(&nodes)));
    assert_eq!(w1["Status"], "Ready", "{}", summary(&nodes));

    m.cli_ok(&[
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        "--replicas",
        "4",
        "--name",
        "spread",
        "--",
        "/bin/sleep",
        "1000",
    ]);
    let hosts = wait_for(timeout(), "4 running tasks of spread", || {
        let hosts = running_hosts(m, "spread");
        if hosts.len() == 4 {
            Ok(hosts)
        } else {
            Err(format!("{hosts:?}"))
        }
    });
    assert_eq!(
        hosts.iter().filter(|h| *h == "w1").count(),
        2,
        "the tasks should be spread over both nodes: {hosts:?}"
    );
}

#[test]
fn a_returning_follower_does_not_depose_a_healthy_leader() {
    let c = Cluster::init(3, 0);
    let leader = leader_index(&c);
    let leader_node = c.nodes[leader].id().to_string();
    let follower = (leader + 1) % 3;
    let follower_id = c.nodes[follower].id().to_string();

    // Paused long enough for its election timer to run out (the leader sees it Unreachable).
    c.nodes[follower].pause();
    let paused_at = Instant::now();
    wait_for(timeout(), "the paused follower shown Unreachable", || {
        let nodes = c.nodes[leader].try_node_ls()?;
        let f = nodes.iter().find(|n| n["ID"] == follower_id.as_str());
        if f.is_some_and(|f| f["ManagerStatus"] == "Unreachable") {
            Ok(())
        } else {
            Err(summary(&nodes))
        }
    });
    // Writes go on without it until the pause has outlasted its election timer (at most
    // 1.4 s: lease 0.7 s + timeout 0.35-0.7 s) with room to spare.
    let mut n = 0;
    wait_until(
        timeout(),
        "the pause to outlast an election timeout",
        || {
            create_secret_eventually(&c.nodes[leader], &format!("paused{n}"));
            n += 1;
            paused_at.elapsed() > Duration::from_millis(2500)
        },
    );
    create_secret_eventually(&c.nodes[leader], "while_paused");
    c.nodes[follower].resume();

    // It catches up under the same leader.
    wait_for(
        timeout(),
        "the resumed follower lists the new secret",
        || match secret_names(&c.nodes[follower], &[])? {
            n if n.contains(&"while_paused".to_string()) => Ok(()),
            n => Err(format!("{n:?}")),
        },
    );
    let nodes = c.nodes[follower].node_ls();
    assert_eq!(
        leader_id(&nodes).as_deref(),
        Some(leader_node.as_str()),
        "the returning follower deposed the leader: {}",
        summary(&nodes)
    );
}

/// Kills the leader of 3 managers `SKEP_FAILOVER_KILLS` times (default 12) and prints the time
/// from the kill to a write committed through a survivor: p50, p99, max. A measurement, not
/// an assertion: `cargo test --test it failover_is_measured -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement: run it by name with --ignored --nocapture"]
fn failover_is_measured() {
    let kills: usize = std::env::var("SKEP_FAILOVER_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let mut c = Cluster::init(3, 0);
    let mut times = Vec::new();
    for round in 0..kills {
        let old = leader_index(&c);
        let via = (old + 1) % 3;
        // The cluster is settled: a write goes through now.
        create_secret_eventually(&c.nodes[via], &format!("warm{round}"));
        c.nodes[old].kill();
        let start = Instant::now();
        let name = format!("after{round}");
        loop {
            let out = c.nodes[via].cli_stdin(&["secret", "create", &name, "-"], "v");
            if out.status.success() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no write within 60 s: {}",
                stderr(&out)
            );
        }
        let took = start.elapsed();
        eprintln!("failover round {round}: {took:?}");
        times.push(took);
        c.nodes[old].spawn();
        c.nodes[old].wait_up();
        c.wait_all_ready(via);
        // Let the restarted manager catch up before the next kill.
        wait_for(
            timeout(),
            "the restarted manager to read the last write",
            || {
                let names = secret_names(&c.nodes[old], &[])?;
                if names.contains(&name) {
                    Ok(())
                } else {
                    Err(format!("{names:?}"))
                }
            },
        );
    }
    // Elections won, from openraft's log line in every manager's daemon log: one for the
    // swarm's start and one per kill; any more is a leader change nobody caused (flapping).
    let elections: usize = c
        .managers()
        .iter()
        .map(|m| m.log().matches("a quorum granted my vote").count())
        .sum();
    eprintln!(
        "FAILOVER elections={elections} expected={} (1 + one per kill; more is flapping)",
        kills + 1
    );
    times.sort();
    let pct = |p: f64| {
        let i = ((times.len() as f64 - 1.0) * p).round() as usize;
        times[i]
    };
    eprintln!(
        "FAILOVER kills={} p50={:?} p99={:?} max={:?} min={:?}",
        times.len(),
        pct(0.5),
        pct(0.99),
        times[times.len() - 1],
        times[0]
    );
}

/// A security decision on a follower reads the current state, not its own copy: a follower
/// that slept through a join-token rotation refuses the old token in its very first request
/// after waking, and no node joins with it.
#[test]
fn a_follower_that_slept_through_a_token_rotation_refuses_the_old_token() {
    let c = Cluster::init(3, 0);
    let leader = leader_index(&c);
    let f = (leader + 1) % 3;
    let old = c.nodes[leader]
        .cli_ok(&["join-token", "-q", "worker"])
        .trim()
        .to_string();
    let root = crate::harness::root_der(&c.nodes[f]);
    let addr = c.nodes[f].addr();

    c.nodes[f].pause();
    let before = connections_to(&addr);
    let rotated = c.nodes[leader].cli_ok(&["join-token", "--rotate", "-q", "worker"]);
    assert!(!rotated.contains(&old), "{rotated}");
    // The request waits at the sleeping follower's door (the kernel accepts the connection),
    // so it is the first thing the follower handles when it wakes, before it hears from the
    // leader again.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let asked = {
        let (addr, old) = (addr.clone(), old.clone());
        rt.spawn(async move {
            crate::harness::issue_raw(&addr, &root, &old, crate::harness::csr()).await
        })
    };
    wait_until(
        timeout(),
        "the request's connection to the sleeping follower",
        || connections_to(&addr) > before,
    );
    c.nodes[f].resume();
    let answer = rt.block_on(asked).unwrap();
    let err = answer.expect_err("the sleeping follower accepted a rotated-out token");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    // And it never joined, as seen by every manager once they agree again.
    for n in &c.nodes {
        let nodes = wait_for(timeout(), "node ls", || n.try_node_ls());
        assert_eq!(nodes.len(), 3, "{}", summary(&nodes));
        assert!(
            !nodes.iter().any(|x| x["Hostname"] == "intruder"),
            "{}",
            summary(&nodes)
        );
    }
}

/// Established TCP connections from this host to `addr` (client ends, from /proc/net/tcp).
fn connections_to(addr: &str) -> usize {
    let addr: std::net::SocketAddrV4 = addr.parse().unwrap();
    // As the kernel prints it: the IPv4 address in host (little-endian) order, the port.
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(addr.ip().octets()),
        addr.port()
    );
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2] == want && f[3] == "01"
        })
        .count()
}
