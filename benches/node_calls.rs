//! Node RPCs per second on one manager: heartbeats and task reports from simulated nodes
//! (each a real join, with its own certificate and mTLS connection), which is where every
//! node call pays the manager's admission check (membership, revocation, the certificate's
//! serial).
//!
//! One run measures the daemon built with this bench and, if `SKEP_BENCH_BASELINE_BIN` names
//! another `skep` binary (an earlier build), that one too, each on its own fresh manager, and
//! prints both rates and their ratio. Each series: `NODES` nodes (`SKEP_BENCH_NODES`, default
//! 20) call in a loop for `SECS` seconds (`SKEP_BENCH_SECS`, default 5), all at once. Task
//! reports carry no status (the admission check and the RPC, not a Raft write).
//!
//! Run: `cargo build --release && cp target/release/skep /tmp/skep-before` on the old tree,
//! then `SKEP_BENCH_BASELINE_BIN=/tmp/skep-before cargo bench --bench node_calls` on the new.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, Daemon};
use skep::api::v1::dispatcher_client::DispatcherClient;
use skep::api::v1::{HeartbeatRequest, TaskReport};
use tonic::transport::Channel;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A joined simulated node's mTLS channel and host name.
async fn sim_node(token: &skep_pki::JoinToken, addr: &str, hostname: &str) -> Channel {
    let joined = skep::identity::join::request_certificate(token, addr, hostname, "0.0.0.0:2377")
        .await
        .unwrap_or_else(|e| panic!("{hostname}: join: {e}"));
    let creds = skep::net::Credentials {
        cert_der: joined.cert_der.clone(),
        chain: Vec::new(),
        key_der: skep::secret::SecretBytes::new(joined.key.pkcs8_der().to_vec()),
        root_der: joined.root_der.clone(),
    };
    let tls = skep::net::client_config(&joined.root_der, Some(&creds)).unwrap();
    skep::net::channel(addr, tls).unwrap()
}

#[derive(Clone, Copy)]
enum Call {
    Heartbeat,
    Report,
}

/// Calls per second of `call` from every node at once for `secs`.
async fn series(nodes: &[(Channel, String)], call: Call, secs: u64) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (ch, hostname) in nodes {
        let (ch, hostname, done) = (ch.clone(), hostname.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = DispatcherClient::new(ch);
            while Instant::now() < until {
                let r = match call {
                    Call::Heartbeat => client
                        .heartbeat(HeartbeatRequest {
                            hostname: hostname.clone(),
                            addr: "0.0.0.0:2377".into(),
                            ..Default::default()
                        })
                        .await
                        .map(|_| ()),
                    Call::Report => client.report_tasks(TaskReport::default()).await.map(|_| ()),
                };
                r.unwrap_or_else(|e| panic!("{hostname}: {e}"));
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// (heartbeats/s, reports/s) against a fresh manager of `bin`.
fn measure(bin: &str, addr: &str, nodes: u64, secs: u64) -> (f64, f64) {
    let root = tempfile::Builder::new()
        .prefix("skep-bench-node-calls-")
        .tempdir()
        .unwrap();
    let m = Daemon::start_bin(root.path(), "m", addr, bin, &[("SKEP_LOG", "warn")]);
    let c = Cluster {
        daemons: vec![m],
        root,
    };
    let m = c.manager();
    m.init_swarm();
    let token = m.cli(&["join-token", "-q", "worker"]);
    let token = skep_pki::JoinToken::parse(token.trim()).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let chans: Vec<(Channel, String)> = rt.block_on(async {
        let mut v = Vec::new();
        for i in 0..nodes {
            let h = format!("sim-{i}");
            v.push((sim_node(&token, &m.addr, &h).await, h));
        }
        v
    });
    // Warm up: every node's first calls (Ready, connection set-up) are not counted.
    rt.block_on(series(&chans, Call::Heartbeat, 1));
    let hb = rt.block_on(series(&chans, Call::Heartbeat, secs));
    let rep = rt.block_on(series(&chans, Call::Report, secs));
    (hb, rep)
}

fn main() {
    let nodes = env_or("SKEP_BENCH_NODES", 20);
    let secs = env_or("SKEP_BENCH_SECS", 5);
    let this = env!("CARGO_BIN_EXE_skep");
    println!("node calls: {nodes} simulated nodes, {secs} s per series, one manager");
    let (hb, rep) = measure(this, "127.0.95.1:2377", nodes, secs);
    println!("this build      heartbeats {hb:9.0}/s   task reports {rep:9.0}/s");
    if let Ok(base) = std::env::var("SKEP_BENCH_BASELINE_BIN") {
        let (bhb, brep) = measure(&base, "127.0.95.2:2377", nodes, secs);
        println!("baseline build  heartbeats {bhb:9.0}/s   task reports {brep:9.0}/s   ({base})");
        println!(
            "ratio this/baseline: heartbeats {:.3}, task reports {:.3}",
            hb / bhb,
            rep / brep
        );
    }
}
