//! A node whose exec tasks want every CPU: how quickly its daemon still answers. One real
//! manager (127.0.88.1:2377, default security settings, heartbeat period 1 s) runs, in turn:
//!
//! * `quiet`: no task;
//! * `busy`: `SKEP_BENCH_NOISY_TASKS` exec tasks (default 8, `--identity=false`), each a shell
//!   busy loop with no limit (four times the cores of the machine this was written on);
//! * `busy, --limit-cpu 0.1`: the same tasks, each limited to a tenth of a CPU.
//!
//! In each, sequentially over the node's Unix socket: `SKEP_BENCH_NOISY_CALLS` (default 300)
//! `NodeList` calls (a read the daemon answers from its state) and a tenth as many
//! `SecretCreate` calls (a write: sealed, committed to the Raft log, audited), each timed; then
//! the agent's late heartbeats while the series ran (its log's "no heartbeat was answered"
//! warnings). Printed: p50, p99 and the highest, and the ratio of each to `quiet`.
//!
//! Run: `cargo bench --bench noisy`. `SKEP_BENCH_BIN=path/to/skep` runs another build's
//! daemon (a build from before exec tasks ran in control groups shows what grouping changes).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Daemon, wait_for, wait_limit};
use skep::api::v1::{Empty, SecretCreateRequest};
use skep::cli::client::{Host, connect};

const ADDR: &str = "127.0.88.1:2377";
/// Each task's command.
const LOOP: &str = "while :; do :; done";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// p50, p99 and the highest of `v`, in milliseconds.
fn summary(mut v: Vec<Duration>) -> [f64; 3] {
    v.sort();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    [at(0.5), at(0.99), at(1.0)]
}

async fn series(host: &Host, calls: usize, tag: &str) -> (Vec<Duration>, Vec<Duration>) {
    let mut api = connect(host).await.unwrap();
    let mut reads = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        api.node_list(Empty {}).await.unwrap();
        reads.push(t.elapsed());
    }
    let mut writes = Vec::new();
    for i in 0..calls.div_ceil(10) {
        let t = Instant::now();
        api.secret_create(SecretCreateRequest {
            name: format!("noisy-{tag}-{i}"),
            value: b"0123456789abcdef".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap();
        writes.push(t.elapsed());
    }
    (reads, writes)
}

/// The agent's late-heartbeat warnings in the log after byte `from`, and the longest gap.
fn late_heartbeats(m: &Daemon, from: usize) -> (usize, f64) {
    let log = std::fs::read_to_string(m.log_path()).unwrap_or_default();
    let lines: Vec<&str> = log
        .get(from..)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("no heartbeat was answered"))
        .collect();
    let longest = lines
        .iter()
        .filter_map(|l| {
            let v = l.split("since_last=").nth(1)?.split_whitespace().next()?;
            common::parse_debug_duration(v)
        })
        .fold(0.0, f64::max);
    (lines.len(), longest)
}

fn log_len(m: &Daemon) -> usize {
    std::fs::metadata(m.log_path()).map_or(0, |md| md.len() as usize)
}

fn running(m: &Daemon, service: &str) -> usize {
    m.json(&["service", "ps", "--format", "json", service])
        .unwrap_or_default()
        .iter()
        .filter(|t| {
            t["CurrentState"]
                .as_str()
                .is_some_and(|s| s.starts_with("Running"))
        })
        .count()
}

/// How many of the busy loops run on this machine.
fn loops() -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| c.ends_with(format!("{LOOP}\0").as_bytes()))
        })
        .count()
}

fn main() {
    let tasks = env_or("SKEP_BENCH_NOISY_TASKS", 8);
    let calls = env_or("SKEP_BENCH_NOISY_CALLS", 300).max(1);
    let root = tempfile::tempdir().unwrap();
    let c = Cluster {
        daemons: vec![Daemon::start(root.path(), "m", ADDR)],
        root,
    };
    let m = c.manager();
    m.init_swarm();
    println!("{}", m.security_settings());
    let host = Host::Unix(m.socket());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(series(&host, 50, "warm-up"));

    let mut quiet = None;
    for (name, limit) in [
        ("quiet", None),
        ("busy", Some(None)),
        ("busy, --limit-cpu 0.1", Some(Some("0.1"))),
    ] {
        let service = format!("burn{}", name.len());
        if let Some(limit) = limit {
            let mut args = vec![
                "service".to_string(),
                "create".into(),
                "--detach".into(),
                "--runtime".into(),
                "exec".into(),
                "--identity=false".into(),
                "--name".into(),
                service.clone(),
                "--replicas".into(),
                tasks.to_string(),
            ];
            if let Some(l) = limit {
                args.extend(["--limit-cpu".into(), l.into()]);
            }
            args.extend(["--", "/bin/sh", "-c", LOOP].map(String::from));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            m.cli(&args);
            wait_for(
                wait_limit(),
                &format!("{tasks} tasks of {service}"),
                || match running(m, &service) {
                    n if n == tasks => Ok(()),
                    n => Err(format!("{n} running")),
                },
            );
        }
        let from = log_len(m);
        let (reads, writes) = rt.block_on(series(&host, calls, &service));
        let (late, longest) = late_heartbeats(m, from);
        let (r, w) = (summary(reads), summary(writes));
        let base = *quiet.get_or_insert((r, w));
        println!(
            "{name:<24} NodeList p50 {:>7.2} ms ({:>5.1}x) p99 {:>7.2} ms ({:>5.1}x) max {:>7.2} ms | SecretCreate p50 {:>7.2} ms ({:>5.1}x) p99 {:>7.2} ms ({:>5.1}x) max {:>7.2} ms | late heartbeats {late}, longest {longest:.1} s",
            r[0],
            r[0] / base.0[0],
            r[1],
            r[1] / base.0[1],
            r[2],
            w[0],
            w[0] / base.1[0],
            w[1],
            w[1] / base.1[1],
            w[2],
        );
        if limit.is_some() {
            m.cli(&["service", "rm", &service]);
            wait_for(
                wait_limit(),
                &format!("{service}'s tasks to stop"),
                || match loops() {
                    0 => Ok(()),
                    n => Err(format!("{n} loops still run")),
                },
            );
        }
    }
}
