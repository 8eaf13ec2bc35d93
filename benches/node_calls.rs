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
//! Heartbeats run twice: the nodes echoing no trust digest, so every answer carries the whole
//! trust material (revoked node IDs, roots, managers, workload bundle), and echoing the digest
//! of the last answer, as agents do, so unchanged material is left out
//! (`manager::trust_answer`). `SKEP_BENCH_REVOKED=N` first joins and removes N more nodes, so
//! the revoked list is as after N removals within the certificates' lifetime.
//! `SKEP_BENCH_REVOKED_SVIDS=N` first has the simulated nodes take an X.509-SVID for each of
//! N tasks placed on them, then removes their service, so the workload bundle's CRL lists N
//! revoked SVIDs, as after a rolling update of N tasks within the SVID lifetime (1 h).
//!
//! A last series, `churn`, runs the heartbeats echoing the digest while the swarm changes
//! (another process labels one node again and again, one Raft entry each, as a busy swarm's
//! task reports and updates do): what the manager pays per entry for material that did not
//! change, printed as its CPU time per entry.
//!
//! `SKEP_BENCH_ROUTE_TASKS=N` adds a series of routing-table calls (what every node's mesh
//! asks for once a second) with a service of N running exec tasks (on the manager's own node)
//! publishing a port: the nodes echoing no digest, then the digest of their last table (as
//! agents do), with the bytes of each answer and the manager's CPU per call. Exec tasks need
//! `skep-init` beside the daemon's binary: copy it next to a baseline binary too.
//!
//! Run: `cargo build --release && cp target/release/skep /tmp/skep-before` on the old tree,
//! then `SKEP_BENCH_BASELINE_BIN=/tmp/skep-before cargo bench --bench node_calls` on the new.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, Daemon, wait_for, wait_limit};
use skep::api::v1::dispatcher_client::DispatcherClient;
use skep::api::v1::{HeartbeatRequest, RoutesRequest, TaskReport};
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
    /// A heartbeat; `echo`: with the trust digest of the node's last answer.
    Heartbeat {
        echo: bool,
    },
    Report,
    /// A routing-table call; `echo`: with the digest of the node's last table.
    Routes {
        echo: bool,
    },
}

/// Bytes of the heartbeat answers a node gets with no digest and with the last one's.
async fn answer_bytes(ch: &Channel, hostname: &str) -> (usize, usize) {
    use prost::Message;
    let mut client = DispatcherClient::new(ch.clone());
    let mut sizes = Vec::new();
    let mut digest = Vec::new();
    for _ in 0..2 {
        let req = HeartbeatRequest {
            hostname: hostname.to_string(),
            trust_digest: digest.clone(),
            ..Default::default()
        };
        let answer = client.heartbeat(req).await.unwrap().into_inner();
        digest.clone_from(&answer.trust_digest);
        sizes.push(answer.encoded_len());
    }
    (sizes[0], sizes[1])
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
            let mut digest = Vec::new();
            while Instant::now() < until {
                let r = match call {
                    Call::Heartbeat { echo } => client
                        .heartbeat(HeartbeatRequest {
                            hostname: hostname.clone(),
                            addr: "0.0.0.0:2377".into(),
                            trust_digest: digest.clone(),
                            ..Default::default()
                        })
                        .await
                        .map(|r| {
                            if echo {
                                digest = r.into_inner().trust_digest;
                            }
                        }),
                    Call::Report => client.report_tasks(TaskReport::default()).await.map(|_| ()),
                    Call::Routes { echo } => client
                        .routes(RoutesRequest {
                            digest: digest.clone(),
                        })
                        .await
                        .map(|r| {
                            if echo {
                                digest = r.into_inner().digest;
                            }
                        }),
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

/// N SVIDs of tasks placed on the simulated nodes, then revoked by removing their service.
fn revoke_svids(m: &Daemon, rt: &tokio::runtime::Runtime, chans: &[(Channel, String)], n: u64) {
    use skep::api::v1::SvidRequest;
    if n == 0 {
        return;
    }
    // The nodes stay Ready meanwhile, each with a task session open (tasks go only to nodes
    // that heartbeat and take assignments).
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut sessions = Vec::new();
    for (ch, _) in chans {
        let mut client = DispatcherClient::new(ch.clone());
        sessions.push(rt.spawn(async move {
            let req = skep::api::v1::SessionRequest {
                runtimes: vec!["exec".into()],
                nano_cpus: 2_000_000_000,
                memory_bytes: 8 << 30,
                shared_specs: true,
            };
            if let Ok(s) = client.session(req).await {
                let mut s = s.into_inner();
                while let Ok(Some(_)) = s.message().await {}
            }
        }));
    }
    for (ch, host) in chans {
        let (ch, host, stop) = (ch.clone(), host.clone(), stop.clone());
        rt.spawn(async move {
            let mut client = DispatcherClient::new(ch);
            while !stop.load(Ordering::Relaxed) {
                let req = HeartbeatRequest {
                    hostname: host.clone(),
                    addr: "0.0.0.0:2377".into(),
                    ..Default::default()
                };
                let _ = client.heartbeat(req).await;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
    }
    m.cli(&[
        "service",
        "create",
        "--detach",
        "--name",
        "gone",
        "--replicas",
        &n.to_string(),
        "--constraint",
        "node.role==worker",
        "--runtime",
        "exec",
        "--",
        "/bin/sleep",
        "1000",
    ]);
    let placed: Vec<(String, String)> = wait_for(wait_limit(), "the tasks placed", || {
        let all = m.json(&["service", "ps", "--no-trunc", "--format", "json", "gone"])?;
        let placed: Vec<(String, String)> = all
            .iter()
            .filter_map(|t| {
                Some((
                    t["Node"].as_str()?.to_string(),
                    t["ID"].as_str()?.to_string(),
                ))
            })
            .filter(|(node, _)| node.starts_with("sim-"))
            .collect();
        if placed.len() as u64 == n {
            Ok(placed)
        } else {
            Err(format!(
                "{} of {n} placed; first {:?}",
                placed.len(),
                all.first()
            ))
        }
    });
    let csr = skep_pki::NodeKey::generate().unwrap().csr_der().unwrap();
    rt.block_on(async {
        let mut joins = Vec::new();
        for (ch, host) in chans {
            let mine: Vec<String> = placed
                .iter()
                .filter(|(node, _)| node == host)
                .map(|(_, id)| id.clone())
                .collect();
            let (ch, csr) = (ch.clone(), csr.clone());
            joins.push(tokio::spawn(async move {
                let mut client = DispatcherClient::new(ch);
                for task_id in mine {
                    let req = SvidRequest {
                        task_id,
                        csr: csr.clone(),
                    };
                    client.issue_svid(req).await.unwrap();
                }
            }));
        }
        for j in joins {
            j.await.unwrap();
        }
    });
    m.cli(&["service", "rm", "gone"]);
    stop.store(true, Ordering::Relaxed);
    for s in sessions {
        s.abort();
    }
}

/// A service of `n` running exec tasks on the manager's own node, publishing port `port`
/// (each manager of a run its own: the tasks of the one before may still hold theirs while
/// they end), so that the routing table lists `n` tasks.
fn routed_service(m: &Daemon, n: u64, port: u16) {
    let publish = format!("{port}:8080");
    m.cli(&[
        "service",
        "create",
        "--detach",
        "--name",
        "routed",
        "--replicas",
        &n.to_string(),
        "--publish",
        &publish,
        "--constraint",
        "node.role==manager",
        "--runtime",
        "exec",
        "--",
        "/bin/sleep",
        "1000",
    ]);
    wait_for(wait_limit(), "the routed tasks running", || {
        let all = m.json(&["service", "ps", "--format", "json", "routed"])?;
        let running = all
            .iter()
            .filter(|t| {
                t["CurrentState"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("Running"))
            })
            .count() as u64;
        if running == n {
            Ok(())
        } else {
            Err(format!("{running} of {n} running; first {:?}", all.first()))
        }
    });
}

/// Routing-table calls/s from every node, echoing no digest and echoing it; the bytes of
/// an answer of each; the manager's CPU per call of each, in microseconds.
fn routes(
    m: &Daemon,
    rt: &tokio::runtime::Runtime,
    chans: &[(Channel, String)],
    secs: u64,
) -> RouteRates {
    use prost::Message;
    let pid = m.child.as_ref().unwrap().id();
    let mut client = DispatcherClient::new(chans[0].0.clone());
    let first = rt
        .block_on(client.routes(RoutesRequest::default()))
        .unwrap()
        .into_inner();
    let again = rt
        .block_on(client.routes(RoutesRequest {
            digest: first.digest.clone(),
        }))
        .unwrap()
        .into_inner();
    let rate = |echo| {
        let cpu = cpu_secs(pid);
        let calls = rt.block_on(series(chans, Call::Routes { echo }, secs));
        let cpu = cpu_secs(pid) - cpu;
        (calls, cpu * 1e6 / (calls * secs as f64))
    };
    let (full, full_cpu) = rate(false);
    let (held, held_cpu) = rate(true);
    RouteRates {
        full,
        held,
        bytes: (first.encoded_len(), again.encoded_len()),
        cpu_us: (full_cpu, held_cpu),
    }
}

/// Routing-table calls: with no digest and echoing it.
struct RouteRates {
    full: f64,
    held: f64,
    bytes: (usize, usize),
    cpu_us: (f64, f64),
}

/// CPU seconds the process `pid` has used (user and system).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

/// Heartbeats/s echoing the digest while another process labels a node again and again; the
/// entries made and the manager's CPU seconds meanwhile.
fn churn(
    m: &Daemon,
    rt: &tokio::runtime::Runtime,
    chans: &[(Channel, String)],
    secs: u64,
) -> (f64, u64, f64) {
    let pid = m.child.as_ref().unwrap().id();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let entries = Arc::new(AtomicU64::new(0));
    let labeller = {
        let (stop, entries) = (stop.clone(), entries.clone());
        let (bin, sock) = (m.bin.clone(), m.socket());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let ok = std::process::Command::new(&bin)
                    .arg("--host")
                    .arg(format!("unix://{}", sock.display()))
                    .args([
                        "node",
                        "update",
                        "--label-add",
                        &format!("churn={i}"),
                        "sim-0",
                    ])
                    .output()
                    .is_ok_and(|o| o.status.success());
                if ok {
                    entries.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        })
    };
    let cpu = cpu_secs(pid);
    let rate = rt.block_on(series(chans, Call::Heartbeat { echo: true }, secs));
    let cpu = cpu_secs(pid) - cpu;
    stop.store(true, Ordering::Relaxed);
    labeller.join().unwrap();
    (rate, entries.load(Ordering::Relaxed), cpu)
}

/// What one manager served.
struct Rates {
    /// Heartbeats/s, the nodes echoing no digest.
    full: f64,
    /// Heartbeats/s, the nodes echoing their last answer's digest.
    held: f64,
    /// Task reports/s.
    reports: f64,
    /// Bytes of one answer with no digest and with the current one.
    bytes: (usize, usize),
    /// Heartbeats/s echoing the digest while the swarm changed; the entries; the manager's
    /// CPU seconds meanwhile.
    churn: (f64, u64, f64),
    /// With `SKEP_BENCH_ROUTE_TASKS`.
    routes: Option<RouteRates>,
}

/// What a fresh manager of `bin` serves, after `revoked` more nodes joined and were removed.
fn measure(
    bin: &str,
    addr: &str,
    nodes: u64,
    secs: u64,
    revoked: u64,
    svids: u64,
    routed: u64,
) -> Rates {
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
    for i in 0..revoked {
        let h = format!("gone-{i}");
        rt.block_on(sim_node(&token, &m.addr, &h));
        m.cli(&["node", "rm", "--force", &h]);
    }
    // Warm up: every node's first calls (Ready, connection set-up) are not counted.
    rt.block_on(series(&chans, Call::Heartbeat { echo: true }, 1));
    revoke_svids(m, &rt, &chans, svids);
    let full = rt.block_on(series(&chans, Call::Heartbeat { echo: false }, secs));
    let held = rt.block_on(series(&chans, Call::Heartbeat { echo: true }, secs));
    let reports = rt.block_on(series(&chans, Call::Report, secs));
    let bytes = rt.block_on(answer_bytes(&chans[0].0, &chans[0].1));
    let churn = churn(m, &rt, &chans, secs);
    let routes = (routed > 0).then(|| {
        routed_service(
            m,
            routed,
            if addr.ends_with(".1:2377") {
                30080
            } else {
                30081
            },
        );
        routes(m, &rt, &chans, secs)
    });
    Rates {
        full,
        held,
        reports,
        bytes,
        churn,
        routes,
    }
}

fn print(who: &str, r: &Rates) {
    println!(
        "{who:<15} heartbeats {:9.0}/s with all the trust material ({} bytes an answer), \
         {:9.0}/s echoing its digest ({} bytes; {:.3}x the rate)   task reports {:9.0}/s",
        r.full,
        r.bytes.0,
        r.held,
        r.bytes.1,
        r.held / r.full,
        r.reports
    );
    let (rate, entries, cpu) = r.churn;
    println!(
        "{who:<15} churn: heartbeats {rate:9.0}/s echoing the digest while {entries} entries were \
         made; the manager's CPU {cpu:.2} s ({:.2} ms an entry)",
        cpu * 1000.0 / entries.max(1) as f64
    );
    if let Some(r) = &r.routes {
        println!(
            "{who:<15} routes: {:9.0}/s echoing no digest ({} bytes an answer, the manager's CPU \
             {:.1} us a call), {:9.0}/s echoing it ({} bytes, {:.1} us a call)",
            r.full, r.bytes.0, r.cpu_us.0, r.held, r.bytes.1, r.cpu_us.1
        );
    }
}

fn main() {
    let nodes = env_or("SKEP_BENCH_NODES", 20);
    let secs = env_or("SKEP_BENCH_SECS", 5);
    let this = env!("CARGO_BIN_EXE_skep");
    let revoked = env_or("SKEP_BENCH_REVOKED", 0);
    let svids = env_or("SKEP_BENCH_REVOKED_SVIDS", 0);
    let routed = env_or("SKEP_BENCH_ROUTE_TASKS", 0);
    println!(
        "node calls: {nodes} simulated nodes, {secs} s per series, one manager, \
         {revoked} nodes removed and {svids} task SVIDs revoked first"
    );
    let this_run = measure(this, "127.0.95.1:2377", nodes, secs, revoked, svids, routed);
    print("this build", &this_run);
    if let Ok(base) = std::env::var("SKEP_BENCH_BASELINE_BIN") {
        let b = measure(
            &base,
            "127.0.95.2:2377",
            nodes,
            secs,
            revoked,
            svids,
            routed,
        );
        print("baseline build", &b);
        println!(
            "ratio this/baseline: heartbeats {:.3} (with the material), task reports {:.3}   ({base})",
            this_run.full / b.full,
            this_run.reports / b.reports
        );
    }
}
