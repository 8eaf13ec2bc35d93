//! Services on a running cluster: which tasks run where, the workers' sleep services, and
//! secret listings.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::*;

/// Host names of the nodes running `service`'s tasks that are to run and are Running, sorted
/// (a name appears once per task).
pub fn running_hosts(node: &Node, service: &str) -> Vec<String> {
    let mut on: Vec<String> =
        json_lines(&node.cli_ok(&["service", "ps", "--format", "json", service]))
            .iter()
            .filter(|t| {
                t["DesiredState"] == "Running"
                    && t["CurrentState"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("Running"))
            })
            .filter_map(|t| t["Node"].as_str().map(str::to_string))
            .collect();
    on.sort();
    on
}

/// IDs of the running tasks of `service` (`service ps` on `node`), sorted.
pub fn running_task_ids(node: &Node, service: &str) -> Vec<String> {
    let mut ids: Vec<String> =
        json_lines(&node.cli_ok(&["service", "ps", "--no-trunc", "--format", "json", service]))
            .iter()
            .filter(|t| {
                t["CurrentState"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("Running"))
            })
            .filter_map(|t| t["ID"].as_str().map(str::to_string))
            .collect();
    ids.sort();
    ids
}

/// Creates, through `node`, an exec service `name` of `replicas` tasks running `/bin/sleep
/// 1000` on the workers only (`node.role==worker`); does not wait for them.
pub fn create_sleepers_on_workers(node: &Node, name: &str, replicas: usize) {
    node.cli_ok(&[
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        "--replicas",
        &replicas.to_string(),
        "--constraint",
        "node.role==worker",
        "--name",
        name,
        "--",
        "/bin/sleep",
        "1000",
    ]);
}

/// Starts a global exec service `steady` (`sleep 1000` on every node) through `node` and
/// waits for its `count` tasks to run; their IDs, sorted.
pub fn start_steady_everywhere(node: &Node, count: usize) -> Vec<String> {
    node.cli_ok(&[
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        "--mode",
        "global",
        "--name",
        "steady",
        "--",
        "/bin/sleep",
        "1000",
    ]);
    wait_for(timeout(), "a running task on each node", || {
        let ids = running_task_ids(node, "steady");
        if ids.len() == count {
            Ok(ids)
        } else {
            Err(format!("{ids:?}"))
        }
    })
}

/// Secret names `secret ls` shows on `node` (default, linearizable read), or its error.
pub fn secret_names(node: &Node, extra: &[&str]) -> Result<Vec<String>, String> {
    let mut args = vec!["secret", "ls", "--format", "json"];
    args.extend_from_slice(extra);
    let out = node.cli(&args);
    if !out.status.success() {
        return Err(stderr(&out));
    }
    let mut names: Vec<String> = json_lines(&stdout(&out))
        .iter()
        .filter_map(|s| s["Name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

/// One request through `addr`: the `node=... task=...` line the task answers with.
pub fn ask(addr: SocketAddr) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    if out.starts_with("node=") {
        Ok(out.trim().to_string())
    } else {
        Err(format!("unexpected answer {out:?}"))
    }
}

/// `node`'s address with `port`.
pub fn on(node: &Node, port: u16) -> SocketAddr {
    format!("{}:{port}", node.addr().split(':').next().unwrap())
        .parse()
        .unwrap()
}

/// Waits until `port` answers through every node of `c`, each time (among ten requests) from
/// a task on some other node too.
pub fn answered_from_other_nodes(c: &Cluster, port: u16) {
    let ids = c.ids();
    for n in &c.nodes {
        wait_for(
            timeout(),
            &format!("answers from other nodes through {}", n.name()),
            || {
                let mut from = BTreeSet::new();
                for _ in 0..10 {
                    let a = ask(on(n, port))?;
                    let node = ids
                        .iter()
                        .find(|id| a.contains(&format!("node={id}")))
                        .ok_or(a.clone())?;
                    from.insert(node.clone());
                }
                from.remove(n.id());
                if from.is_empty() {
                    Err("only local answers".into())
                } else {
                    Ok(from)
                }
            },
        );
    }
}

/// `service create --detach --runtime exec --name NAME OPTS -- /bin/sh -c SCRIPT`.
pub fn exec_service(m: &Node, name: &str, opts: &[&str], script: &str) {
    let mut args = vec![
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        "--name",
        name,
    ];
    args.extend_from_slice(opts);
    args.extend_from_slice(&["--", "/bin/sh", "-c", script]);
    m.cli_ok(&args);
}
