//! Join storm: the time for 1,000 nodes (`SKEP_BENCH_JOINERS` to change it) to join one
//! manager at once. The manager is a real `skep daemon` process, a new one for each storm
//! (started outside the timing); the joiners are simulated in this process, each running the
//! real join protocol (key + CSR, issuance over TLS pinned to the token's root digest in one
//! handshake, Raft commit of the node and its audit records on the manager).
//! `SKEP_BENCH_JOIN_FILLING=1` joins every storm to the same manager instead (a swarm growing
//! by 1,000 nodes a storm); `SKEP_BENCH_JOIN_SPREAD=1` prints when the joins finished.
//!
//! Each simulated node connects from a loopback address of its own (127.91.x.y), as nodes of a
//! real swarm do: the manager holds each source address to a share of anonymous connections
//! (`net::limit::MAX_ANONYMOUS_PER_SOURCE`) and sheds the rest. `SKEP_BENCH_JOIN_SOURCES=N`
//! spreads them over N addresses instead; `N = 1`: all from the one the system picks (a storm
//! from behind one NAT).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};

/// Nodes joining at once, unless `SKEP_BENCH_JOINERS` says otherwise.
const JOINERS: usize = 1000;

fn joiners() -> usize {
    std::env::var("SKEP_BENCH_JOINERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(JOINERS)
}

/// The source address of joiner `i` of `joiners`, spread over `SKEP_BENCH_JOIN_SOURCES`
/// addresses (default: one each); `None` when that is 1 (the system picks it).
fn source(i: usize, joiners: usize) -> Option<std::net::IpAddr> {
    let n: usize = std::env::var("SKEP_BENCH_JOIN_SOURCES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(joiners)
        .max(1);
    if n == 1 {
        return None;
    }
    let k = i % n;
    Some(std::net::IpAddr::V4(std::net::Ipv4Addr::new(
        127,
        91,
        u8::try_from(k / 250).unwrap_or(u8::MAX),
        u8::try_from(k % 250 + 1).unwrap_or(u8::MAX),
    )))
}

struct Manager {
    child: Child,
    socket: std::path::PathBuf,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Manager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli(socket: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_skep"))
        .arg("--host")
        .arg(format!("unix://{}", socket.display()))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running skep {args:?}: {e}"));
    assert!(
        out.status.success(),
        "skep {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn start_manager() -> Manager {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let socket = dir.path().join("skep.sock");
    let addr = "127.0.91.1:2377".to_string();
    let log =
        std::fs::File::create(dir.path().join("daemon.log")).unwrap_or_else(|e| panic!("log: {e}"));
    let child = Command::new(env!("CARGO_BIN_EXE_skep"))
        .args(["daemon", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--listen-addr",
            &addr,
            "--hostname",
            "bench-manager",
            "--socket",
        ])
        .arg(&socket)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning the daemon: {e}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "the daemon did not create its socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = Manager {
        child,
        socket,
        addr,
        _dir: dir,
    };
    cli(&m.socket, &["swarm", "init", "--advertise-addr", &m.addr]);
    static PRINTED: std::sync::Once = std::sync::Once::new();
    PRINTED.call_once(|| {
        let info = cli(&m.socket, &["info", "--format", "json"]);
        eprintln!("{}", common::security_settings("the manager", &info));
    });
    m
}

fn join_storm(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap_or_else(|e| panic!("runtime: {e}"));
    let mut group = c.benchmark_group("join");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(60));
    let joiners = joiners();
    // `SKEP_BENCH_JOIN_FILLING=1`: every storm joins the same manager, which the earlier ones
    // filled (a swarm growing by 1,000 nodes a round), instead of a new one.
    let filling = std::env::var_os("SKEP_BENCH_JOIN_FILLING").map(|_| start_manager());
    group.bench_function(format!("{joiners} nodes join one manager"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for round in 0..iters {
                // Each storm meets a new swarm: the goal is 1,000 nodes joining a manager,
                // not joining one that earlier rounds filled (started outside the timing).
                let fresh = filling.is_none().then(start_manager);
                let manager = filling.as_ref().or(fresh.as_ref()).expect("a manager");
                let token = cli(&manager.socket, &["join-token", "-q", "worker"]);
                let token =
                    skep_pki::JoinToken::parse(&token).unwrap_or_else(|e| panic!("token: {e}"));
                let start = Instant::now();
                rt.block_on(async {
                    let mut tasks = Vec::with_capacity(joiners);
                    for i in 0..joiners {
                        let token = token.clone();
                        let addr = manager.addr.clone();
                        let from = source(i, joiners);
                        tasks.push(tokio::spawn(async move {
                            let host = format!("sim-{round}-{i}");
                            skep::identity::join::request_certificate_from(
                                &token, &addr, &host, "", from,
                            )
                            .await
                                .map(|_| start.elapsed())
                        }));
                    }
                    let mut took = Vec::with_capacity(joiners);
                    for t in tasks {
                        match t.await {
                            Ok(Ok(d)) => took.push(d),
                            Ok(Err(e)) => panic!("a join failed: {e}"),
                            Err(e) => panic!("a joiner panicked: {e}"),
                        }
                    }
                    if std::env::var_os("SKEP_BENCH_JOIN_SPREAD").is_some() {
                        took.sort();
                        let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
                        eprintln!(
                            "join storm round {round}: joined by {:?} (p10) {:?} (p50) {:?} (p90) {:?} (last)",
                            at(0.1),
                            at(0.5),
                            at(0.9),
                            at(1.0)
                        );
                    }
                });
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, join_storm);
criterion_main!(benches);
