//! Disaster recovery: a swarm that lost its Raft majority for good is brought back from a
//! survivor's own state (`swarm init --force-new-cluster`).

use std::time::Instant;

use crate::harness::*;

/// The running tasks of `service` with the node each runs on, sorted by task ID.
fn running(node: &Node, service: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> =
        json_lines(&node.cli_ok(&["service", "ps", "--no-trunc", "--format", "json", service]))
            .iter()
            .filter(|t| {
                t["CurrentState"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("Running"))
            })
            .map(|t| {
                (
                    t["ID"].as_str().unwrap_or_default().to_string(),
                    t["Node"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
    v.sort();
    v
}

fn secret_list(node: &Node) -> Vec<String> {
    let mut names: Vec<String> = json_lines(&node.cli_ok(&["secret", "ls", "--format", "json"]))
        .iter()
        .filter_map(|s| s["Name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

/// Three managers and two workers; two managers are lost for good (killed, their disks
/// gone). The survivor is made the single manager of the same swarm: every acknowledged object
/// is there, the workers' tasks ran throughout, the old managers are removed, the chain
/// verifies and records the recovery, and the swarm grows again by promotion. A removed
/// manager that comes back is refused.
#[test]
fn a_lost_majority_is_recovered_by_force_new_cluster_on_a_survivor() {
    let mut c = Cluster::init(3, 2);
    let m1 = &c.nodes[0];
    m1.cli_stdin(&["secret", "create", "before", "-"], "value-before");
    create_sleepers_on_workers(m1, "onworkers", 4);
    let tasks = wait_for(timeout(), "4 running tasks on the workers", || {
        let t = running(&c.nodes[0], "onworkers");
        if t.len() == 4 {
            Ok(t)
        } else {
            Err(format!("{t:?}"))
        }
    });
    let m3_id = c.nodes[2].id().to_string();
    let m2_id = c.nodes[1].id().to_string();
    // m2 is lost for good; m3 is lost, but its disk survives and it comes back later.
    c.nodes[1].kill();
    std::fs::remove_dir_all(c.nodes[1].data_dir()).unwrap();
    c.nodes[2].kill();

    let started = Instant::now();
    let said = c.nodes[0].cli_ok(&["swarm", "init", "--force-new-cluster"]);
    assert!(said.contains("is now the only manager"), "{said}");
    c.nodes[0].cli_stdin(&["secret", "create", "after", "-"], "value-after");
    eprintln!(
        "MEASURE force-new-cluster to a committed write: {} ms",
        started.elapsed().as_millis()
    );

    let m1 = &c.nodes[0];
    assert_eq!(secret_list(m1), ["after", "before"]);
    let nodes = m1.node_ls();
    let mut hosts: Vec<&str> = nodes
        .iter()
        .filter_map(|n| n["Hostname"].as_str())
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["m1", "w1", "w2"], "{}", summary(&nodes));
    // The workers' tasks were never replaced.
    assert_eq!(running(m1, "onworkers"), tasks);
    wait_for(timeout(), "both workers Ready", || {
        let nodes = m1.try_node_ls()?;
        let ready = nodes
            .iter()
            .filter(|n| n["Hostname"].as_str().is_some_and(|h| h.starts_with('w')))
            .filter(|n| n["Status"] == "Ready")
            .count();
        if ready == 2 {
            Ok(())
        } else {
            Err(summary(&nodes))
        }
    });
    let records = m1.audit();
    let recovery = records
        .iter()
        .find(|r| r["action"] == "cluster.force_new_cluster")
        .unwrap_or_else(|| panic!("no recovery record in the chain"));
    let removed = recovery["details"]["removed_managers"].as_str().unwrap();
    assert!(
        removed.contains(&m2_id) && removed.contains(&m3_id),
        "{recovery}"
    );
    m1.cli_ok(&["audit", "verify"]);

    // The old m3 comes back with its old state: m1 refuses it, and it never leads anyone.
    let before = c.nodes[0].audit().len();
    c.nodes[2].spawn();
    c.nodes[2].wait_up();
    wait_for(
        timeout(),
        "m1 refusing the removed m3's certificate",
        || {
            let audit = c.nodes[0].try_audit()?;
            let refused = audit[before.min(audit.len())..].iter().any(|r| {
                r["action"] == "tls.handshake"
                    && r["outcome"] == "denied"
                    && r["details"]["reason"]
                        .as_str()
                        .is_some_and(|s| s.to_lowercase().contains("revoked"))
            });
            if refused {
                Ok(())
            } else {
                Err("not yet".into())
            }
        },
    );
    let hosts: Vec<String> = c.nodes[0]
        .node_ls()
        .iter()
        .filter_map(|n| n["Hostname"].as_str().map(str::to_string))
        .collect();
    assert!(!hosts.iter().any(|h| h == "m3"), "{hosts:?}");
    assert_eq!(running(&c.nodes[0], "onworkers"), tasks);

    // The swarm grows again: a worker is promoted and becomes a voter.
    c.nodes[2].kill();
    c.nodes[0].cli_ok(&["node", "promote", "w1"]);
    wait_for(timeout(), "w1 reachable as a manager", || {
        let nodes = c.nodes[0].try_node_ls()?;
        let w1 = nodes.iter().find(|n| n["Hostname"] == "w1");
        match w1 {
            Some(n) if n["ManagerStatus"] == "Reachable" => Ok(()),
            _ => Err(summary(&nodes)),
        }
    });
    c.nodes[0].cli_stdin(&["secret", "create", "grown", "-"], "value-grown");
    c.nodes[3].cli_ok(&["audit", "verify"]);
}

/// With autolock, the locked survivor's recovery needs the unlock key, and a wrong one is
/// refused.
#[test]
fn a_locked_survivor_is_recovered_with_its_unlock_key() {
    let mut c = Cluster::init_with(3, 0, &["--autolock"]);
    let key = unlock_key(&c.init_output);
    c.nodes[0].cli_stdin(&["secret", "create", "kept", "-"], "value");
    c.kill_all();
    for n in &c.nodes[1..] {
        std::fs::remove_dir_all(n.data_dir()).unwrap();
    }
    c.nodes[0].spawn();
    c.nodes[0].wait_up();
    let m1 = &c.nodes[0];
    let wrong = m1.cli_stdin(
        &["swarm", "init", "--force-new-cluster"],
        "SKEP-KEY-1-0000000000000000000000000000000000000000000000000000000000000000",
    );
    assert_error(&wrong, "unlock key");
    let out = m1.cli_stdin(&["swarm", "init", "--force-new-cluster"], &key);
    assert!(out.status.success(), "{}", describe(&out));
    m1.cli_stdin(&["secret", "create", "new", "-"], "value");
    assert_eq!(secret_list(m1), ["kept", "new"]);
    m1.cli_ok(&["audit", "verify"]);
}

/// Outside a swarm, or on a worker, there is nothing to recover from; with a quorum, a
/// recovery would split the swarm and is refused.
#[test]
fn force_new_cluster_needs_a_managers_state_and_a_lost_quorum() {
    let c = Cluster::init(2, 1);
    let err = c.nodes[2].cli_err(&["swarm", "init", "--force-new-cluster"]);
    assert!(err.contains("worker"), "{err}");
    let err = c.nodes[0].cli_err(&["swarm", "init", "--force-new-cluster"]);
    assert!(err.contains("have a quorum now"), "{err}");
    assert_eq!(c.nodes[0].node_ls().len(), 3, "nothing was removed");
    c.nodes[1].cli_stdin(&["secret", "create", "still", "-"], "v");
    let mut lone = Node::start("lone");
    lone.wait_up();
    let err = lone.cli_err(&["swarm", "init", "--force-new-cluster"]);
    assert!(err.contains("not part of a swarm"), "{err}");
}
