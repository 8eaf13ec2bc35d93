//! Root CA rotation time of a 10-node swarm.
//!
//! Ten real daemons (3 managers, 7 workers; addresses 127.0.96.1-10:2377, heartbeat period
//! 1 s as every bench daemon). Each run times, through the CLI on the first manager:
//!
//! * `swarm ca --rotate`: from spawning the command to its return, which happens when every
//!   node that is up holds a certificate of the new root and the leader has retired the old
//!   one (the command polls every 200 ms);
//! * `all nodes on new root`: from the same spawn until every node's `root.crt` holds only
//!   the new root and its `node.crt` verifies against it directly (files polled every 20 ms);
//! * baseline, in the same run: `join-token --rotate worker`, one Raft commit through the
//!   CLI, and the agents' heartbeat period (1 s), which paces how fast nodes learn of a
//!   rotation (two rounds at least: learn the new root and renew; learn the old one retired).
//!
//! Run: `cargo bench --bench ca_rotation` (`SKEP_BENCH_CA_RUNS=N` for N runs, default 5).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, Daemon, wait_for};

const NODES: usize = 10;
const MANAGERS: usize = 3;
const RUNS: usize = 5;
const HEARTBEAT: Duration = Duration::from_secs(1);

fn timed_cli(d: &Daemon, args: &[&str]) -> (Duration, String) {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_skep"))
        .arg("--host")
        .arg(format!("unix://{}", d.socket().display()))
        .args(args)
        .output()
        .unwrap();
    let took = start.elapsed();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (took, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .unwrap()
        .1
        .contents
}

/// Whether every node trusts only `root` and holds a certificate it issued.
fn all_moved(c: &Cluster, root: &[u8]) -> bool {
    let now = time::OffsetDateTime::now_utc();
    c.daemons.iter().all(|d| {
        let data = d.data_dir();
        let roots = std::fs::read(data.join("root.crt")).unwrap_or_default();
        let leaf = std::fs::read(data.join("node.crt")).unwrap_or_default();
        roots == root && skep_pki::verify_issued(root, &leaf, now).is_ok()
    })
}

fn stats(name: &str, xs: &mut [f64]) {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = xs.iter().sum::<f64>() / xs.len() as f64;
    println!(
        "{name:<28} median {:>8.1} ms   min {:>8.1} ms   max {:>8.1} ms   mean {:>8.1} ms",
        xs[xs.len() / 2] * 1e3,
        xs[0] * 1e3,
        xs[xs.len() - 1] * 1e3,
        mean * 1e3
    );
}

fn main() {
    let runs: usize = std::env::var("SKEP_BENCH_CA_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(RUNS);
    let root = tempfile::tempdir().unwrap();
    let daemons: Vec<Daemon> = (1..=NODES)
        .map(|i| Daemon::start(root.path(), &format!("n{i}"), &format!("127.0.96.{i}:2377")))
        .collect();
    let c = Cluster { daemons, root };
    let m = c.manager();
    m.init_swarm();
    let worker = m.cli(&["join-token", "-q", "worker"]).trim().to_string();
    let manager = m.cli(&["join-token", "-q", "manager"]).trim().to_string();
    for (i, d) in c.daemons.iter().enumerate().skip(1) {
        let token = if i < MANAGERS { &manager } else { &worker };
        d.cli(&["swarm", "join", "--token", token, &m.addr]);
    }
    wait_for(Duration::from_secs(60), "10 Ready nodes", || {
        let nodes = m.json(&["node", "ls", "--format", "json"])?;
        let ready = nodes.iter().filter(|n| n["Status"] == "Ready").count();
        if ready == NODES {
            Ok(())
        } else {
            Err(format!("{ready} ready"))
        }
    });
    println!(
        "root CA rotation of {NODES} nodes ({MANAGERS} managers), {runs} runs, heartbeat {HEARTBEAT:?}"
    );
    let (mut rotate, mut moved, mut commit) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let (took, _) = timed_cli(m, &["join-token", "--rotate", "-q", "worker"]);
        commit.push(took.as_secs_f64());
        let start = Instant::now();
        let (took, said) = timed_cli(m, &["swarm", "ca", "--rotate"]);
        rotate.push(took.as_secs_f64());
        assert!(said.contains(&format!("{NODES}/{NODES} nodes")), "{said}");
        let new_root = pem_to_der(&m.cli(&["swarm", "ca", "-q"]));
        loop {
            if all_moved(&c, &new_root) {
                moved.push(start.elapsed().as_secs_f64());
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "run {run}: nodes did not all move to the new root"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    stats("swarm ca --rotate (CLI)", &mut rotate);
    stats("all nodes on new root", &mut moved);
    stats("baseline: one commit (CLI)", &mut commit);
    let median = |xs: &[f64]| xs[xs.len() / 2];
    println!(
        "ratios (medians): rotation / heartbeat period = {:.2}; rotation / one commit = {:.1}",
        median(&rotate) / HEARTBEAT.as_secs_f64(),
        median(&rotate) / median(&commit)
    );
}
