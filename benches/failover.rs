//! Leader failover on three real managers (127.0.89.1-3:2377; default security settings: mTLS
//! between the managers, the Raft log sealed at rest, every write audited): the leader is
//! killed with SIGKILL, and the time is taken until a write (`secret create`, one Raft commit
//! on a quorum) succeeds through a surviving manager. Baseline in the same run: the same write
//! on the healthy cluster. After each round the killed manager is started again on its data
//! directory and must be back as a reachable manager before the next.
//!
//! Run: `cargo bench --bench failover` (`SKEP_BENCH_FAILOVER_ROUNDS=N`, default 5).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Daemon, wait_for, wait_limit};

const ADDRS: [&str; 3] = ["127.0.89.1:2377", "127.0.89.2:2377", "127.0.89.3:2377"];

fn rounds() -> usize {
    std::env::var("SKEP_BENCH_FAILOVER_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5)
}

/// Index of the daemon `node ls` (asked of `via`) calls the leader, and how many managers it
/// says are reachable (the leader included).
fn leader(c: &Cluster, via: usize) -> Result<(usize, usize), String> {
    let nodes = c.daemons[via].json(&["node", "ls", "--format", "json"])?;
    let status = |n: &serde_json::Value| n["ManagerStatus"].as_str().unwrap_or("").to_string();
    let reachable = nodes
        .iter()
        .filter(|n| matches!(status(n).as_str(), "Leader" | "Reachable"))
        .count();
    let name = nodes
        .iter()
        .find(|n| status(n) == "Leader")
        .and_then(|n| n["Hostname"].as_str().map(str::to_string))
        .ok_or("no leader yet")?;
    let i = c
        .daemons
        .iter()
        .position(|d| d.name == name)
        .ok_or(format!("leader {name} is not one of ours"))?;
    Ok((i, reachable))
}

fn secret(d: &Daemon, name: &str) -> Result<String, String> {
    d.try_cli_stdin(&["secret", "create", name, "-"], Some(b"v"))
}

fn main() {
    let root = tempfile::Builder::new()
        .prefix("skep-bench-failover-")
        .tempdir()
        .unwrap();
    let daemons = ADDRS
        .iter()
        .enumerate()
        .map(|(i, a)| Daemon::start(root.path(), &format!("fo-{i}"), a))
        .collect();
    let mut c = Cluster { daemons, root };
    let m = &c.daemons[0];
    m.init_swarm();
    let token = m.cli(&["join-token", "-q", "manager"]).trim().to_string();
    for d in &c.daemons[1..] {
        d.cli(&["swarm", "join", "--token", &token, &m.addr]);
    }
    wait_for(wait_limit(), "3 reachable managers", || {
        match leader(&c, 0)? {
            (_, 3) => Ok(()),
            (_, n) => Err(format!("{n} reachable")),
        }
    });
    let mut healthy = Vec::new();
    let mut failover = Vec::new();
    for round in 0..rounds() {
        let (l, _) = wait_for(wait_limit(), "a leader", || leader(&c, 0));
        let other = (l + 1) % 3;
        let t = Instant::now();
        secret(&c.daemons[other], &format!("healthy-{round}")).unwrap();
        healthy.push(t.elapsed());

        let name = c.daemons[l].name.clone();
        let addr = c.daemons[l].addr.clone();
        let mut child = c.daemons[l].child.take().unwrap();
        let start = Instant::now();
        child.kill().unwrap();
        child.wait().unwrap();
        let mut tries = 0;
        wait_for(wait_limit(), "a write after the leader's death", || {
            tries += 1;
            secret(&c.daemons[other], &format!("after-{round}-{tries}")).map(|_| ())
        });
        let took = start.elapsed();
        failover.push(took);
        eprintln!("failover: round {round}: {name} killed, a write committed after {took:?}");

        // Back on its data directory, then reachable again.
        // The old handle goes first: dropping it kills every process that mentions its
        // directory, which the new daemon does.
        drop(c.daemons.remove(l));
        let again = Daemon::start(c.root.path(), &name, &addr);
        c.daemons.insert(l, again);
        wait_for(
            wait_limit(),
            "3 reachable managers again",
            || match leader(&c, other)? {
                (_, 3) => Ok(()),
                (_, n) => Err(format!("{n} reachable")),
            },
        );
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let (h, f) = (median(&mut healthy), median(&mut failover));
    eprintln!(
        "failover: leader killed -> a write commits: median {f:?} (fastest {:?}, slowest {:?}) over {} rounds; a write on the healthy cluster: median {h:?}; ratio {:.0}x",
        failover[0],
        failover[failover.len() - 1],
        failover.len(),
        f.as_secs_f64() / h.as_secs_f64()
    );
}
