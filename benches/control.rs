//! Control API calls per second, with RBAC policy evaluation (an operator over mTLS) and
//! without (the node's root administrator over the local Unix socket), in one run.
//!
//! One real manager (127.0.97.1:2377). An admin operator is enrolled the way an operator
//! would be (`operator csr`, `operator sign`). Each series makes `CALLS` `NodeList` calls,
//! sequentially and then 8 at a time, over one channel:
//!
//! * `unix socket, no policy`: the local administrator (no TLS, no RBAC);
//! * `mTLS operator, RBAC`: the operator (TLS channel reused, the gate authorizes every call
//!   with the Cedar RBAC policy and the operator registry);
//! * `RBAC decision alone`: `RbacEngine::authorize` in process, the policy's own share: a
//!   decision Cedar evaluates (a new operator), and one the engine remembers.
//!
//! Run: `cargo bench --bench control` (`SKEP_BENCH_CALLS=N`, default 2000).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Instant;

use common::{Cluster, Daemon};
use skep::api::v1::Empty;
use skep::cli::client::{Host, connect};

const CALLS: usize = 2000;

async fn series(host: &Host, calls: usize, parallel: usize) -> f64 {
    let api = connect(host).await.unwrap();
    let start = Instant::now();
    let per = calls / parallel;
    let mut tasks = Vec::new();
    for _ in 0..parallel {
        let mut api = api.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per {
                api.node_list(Empty {}).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (per * parallel) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let calls: usize = std::env::var("SKEP_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CALLS);
    let root = tempfile::tempdir().unwrap();
    let m = Daemon::start(root.path(), "m", "127.0.97.1:2377");
    let c = Cluster {
        daemons: vec![m],
        root,
    };
    let m = c.manager();
    m.init_swarm();
    let dir = c.root.path().join("op");
    let ok = Command::new(env!("CARGO_BIN_EXE_skep"))
        .args([
            "operator",
            "csr",
            "--name",
            "bench",
            "--out",
            dir.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(ok.status.success());
    let cert = m.cli(&[
        "operator",
        "sign",
        "--role",
        "admin",
        dir.join("bench.csr").to_str().unwrap(),
    ]);
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("ca.pem"), m.cli(&["swarm", "ca", "-q"])).unwrap();

    let unix = Host::Unix(m.socket());
    let tcp = Host::Tcp {
        addr: m.addr.clone(),
        cert_dir: Some(dir),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    println!("Control API NodeList calls per second, {calls} calls per series");
    for parallel in [1, 8] {
        // Warm-up, not counted.
        rt.block_on(series(&unix, 100, 1));
        rt.block_on(series(&tcp, 100, 1));
        let off = rt.block_on(series(&unix, calls, parallel));
        let on = rt.block_on(series(&tcp, calls, parallel));
        println!(
            "  {parallel} at a time: unix socket, no policy {off:>8.0}/s   mTLS operator, RBAC {on:>8.0}/s   ratio {:.2}",
            on / off
        );
    }
    let engine = skep::policy::rbac::cached("").unwrap();
    let who = skep::policy::rbac::Principal {
        name: "bench",
        role: "deployer",
    };
    let n = 4_000;
    let names: Vec<String> = (0..n).map(|i| format!("op{i}")).collect();
    let start = Instant::now();
    for name in &names {
        let who = skep::policy::rbac::Principal {
            name,
            role: "deployer",
        };
        std::hint::black_box(engine.authorize(&who, skep::policy::rbac::Action::Read, "node"));
    }
    let fresh = start.elapsed().as_secs_f64() / n as f64;
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(engine.authorize(&who, skep::policy::rbac::Action::Read, "node"));
    }
    let remembered = start.elapsed().as_secs_f64() / n as f64;
    println!(
        "  RBAC decision alone: {:.1} us evaluated by Cedar, {:.2} us remembered",
        fresh * 1e6,
        remembered * 1e6
    );
}
