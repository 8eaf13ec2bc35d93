//! Revocation latency: how long a removed node keeps its live connections to the manager.
//!
//! One real manager daemon (`swarm init`, address 127.0.95.1:2377). Each run joins a fresh
//! simulated worker in this process (a real join: `skep::identity::join::request_certificate`,
//! its own key and certificate), which opens [`CONNS`] separate mTLS connections to the
//! manager, each carrying an open task session (`Dispatcher.Session`, first message
//! received), and heartbeats until `node ls` shows it Ready. A task per connection then waits
//! on its session stream and records the instant the stream fails or ends. The bench runs
//! `skep node rm --force <node-id>` through the CLI, records when the CLI was spawned (`ts`)
//! and when it exited successfully (`t0`, taken right after `waitpid` returns), and waits
//! (30 s bound) for every connection to close. `tc` is the instant the last of them closed.
//!
//! Printed, over `SKEP_BENCH_REVOKE_RUNS` runs (default 50, after one warm-up run that is not
//! counted), each as p50 / p99 / min / max / mean (percentiles are nearest-rank, so with 50
//! runs p99 is the maximum):
//!
//! * `return -> last closed` = `tc - t0`: the revocation latency as seen by an operator, from
//!   `node rm --force` returning to the revoked node's last connection being closed. The
//!   manager cuts the connections when it applies the removal, which can precede the CLI's
//!   return; such runs count as 0 here and are counted separately (as are the individual
//!   connections that were closed before the CLI returned). The same, signed (negative: the
//!   last connection closed that long before the CLI returned), is printed on the next line.
//! * `spawn -> last closed` = `tc - ts`: the same, measured from just before the CLI is
//!   spawned (always positive; includes the CLI's own start-up and round trip).
//! * `node rm CLI` = `t0 - ts`: how long the `node rm --force` command took.
//! * `no-op CLI` : `skep node ls -q`, timed the same way in every run just before the
//!   removal: the cost of any CLI round trip (process start, connect, one unary call).
//!
//! Each run also checks that the manager's log says it cut the node's connections
//! ("closed the connections of revoked nodes connections=N") and reports the counts seen, and
//! lists how the streams ended (the errors the client saw).
//!
//! Run: `cargo bench --bench revocation` (`SKEP_BENCH_REVOKE_RUNS=200 cargo bench --bench
//! revocation` for more runs; `SKEP_LOG` sets the daemon's log level, default `info`, which
//! the log check needs). The daemon is killed and its directory removed on the way out, even
//! on panic.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, Daemon, strip_ansi};
use skep::api::v1::dispatcher_client::DispatcherClient;
use skep::api::v1::{HeartbeatRequest, SessionRequest};
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// The manager's address (join.rs uses 127.0.91.1, services.rs 127.0.92.x and 127.0.93.1,
/// secrets.rs 127.0.94.1).
const ADDR: &str = "127.0.95.1:2377";
/// Live connections (each with an open task session) per simulated node.
const CONNS: usize = 4;
/// Runs unless `SKEP_BENCH_REVOKE_RUNS` says otherwise.
const RUNS: usize = 50;
/// Runs before the measured ones, not counted.
const WARMUP: usize = 1;
/// Bound on every wait.
const WAIT: Duration = Duration::from_secs(30);
/// What the manager logs when it cuts connections.
const CUT_LOG: &str = "closed the connections of revoked nodes";

/// What one run measured.
struct Run {
    /// `tc - t0`, seconds, signed (negative: all closed before the CLI returned).
    from_return: f64,
    /// `tc - ts`.
    from_spawn: Duration,
    /// `t0 - ts`.
    cli: Duration,
    /// The no-op CLI call.
    noop: Duration,
    /// Connections closed before the CLI returned.
    closed_before: usize,
    /// `connections=N` of the manager's log line for this removal, if it was found.
    cut_logged: Option<usize>,
    /// How each stream ended.
    endings: Vec<String>,
}

/// A simulated node's connection: its channel (kept alive) and where its watcher reports
/// the instant the session ended and how.
struct Conn {
    channel: Channel,
    closed: oneshot::Receiver<(Instant, String)>,
}

/// Runs the CLI against `d` and times it: `(spawned, exited, output)`. The exit instant is
/// taken as soon as the process has been reaped (no polling).
fn timed_cli(d: &Daemon, args: &[&str]) -> (Instant, Instant, Result<String, String>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_skep"));
    cmd.arg("--host")
        .arg(format!("unix://{}", d.socket().display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawned = Instant::now();
    let out = cmd.spawn().and_then(|c| c.wait_with_output());
    let exited = Instant::now();
    let res = match out {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(format!(
            "{}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run the CLI: {e}")),
    };
    (spawned, exited, res)
}

/// `Status` of node `id` in `node ls --format json`, or why it is unknown.
fn node_status(m: &Daemon, id: &str) -> Result<String, String> {
    let nodes = m.json(&["node", "ls", "--format", "json"])?;
    nodes
        .iter()
        .find(|n| n["ID"] == id)
        .and_then(|n| n["Status"].as_str())
        .map(String::from)
        .ok_or_else(|| format!("{id} is not listed"))
}

/// `connections=N` of every cut line in the manager's log, in order.
fn cuts_logged(m: &Daemon) -> Vec<Option<usize>> {
    std::fs::read_to_string(m.log_path())
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(CUT_LOG))
        .map(strip_ansi)
        .map(|l| {
            l.split("connections=")
                .nth(1)
                .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|n| n.parse().ok())
        })
        .collect()
}

/// Opens one connection of the node and its task session, waits for the first message, then
/// leaves a task watching the stream. Returns once the watcher is waiting for the close.
async fn open_conn(addr: &str, tls: std::sync::Arc<rustls::ClientConfig>) -> Result<Conn, String> {
    let channel = skep::net::channel(addr, tls).map_err(|e| format!("channel: {e}"))?;
    let mut client = DispatcherClient::new(channel.clone());
    let deadline = Instant::now() + WAIT;
    // Refused ("not registered yet") until the join's node record is applied: retry.
    let mut stream = loop {
        let req = SessionRequest {
            runtimes: vec!["exec".into()],
            nano_cpus: 2_000_000_000,
            memory_bytes: 8 << 30,
            ..Default::default()
        };
        match client.session(req).await {
            Ok(s) => break s.into_inner(),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(format!("the session did not open within {WAIT:?}: {e}")),
        }
    };
    match tokio::time::timeout(WAIT, stream.message()).await {
        Ok(Ok(Some(_))) => {}
        Ok(other) => return Err(format!("the session's first message: {other:?}")),
        Err(_) => return Err(format!("no first session message within {WAIT:?}")),
    }
    let (armed_tx, armed_rx) = oneshot::channel();
    let (closed_tx, closed) = oneshot::channel();
    tokio::spawn(async move {
        let _ = armed_tx.send(());
        let how = loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => break "stream ended (no status)".to_string(),
                Err(s) => break format!("{:?}: {}", s.code(), s.message()),
            }
        };
        let _ = closed_tx.send((Instant::now(), how));
    });
    let _ = armed_rx.await;
    Ok(Conn { channel, closed })
}

/// Joins a fresh simulated node and opens its connections; returns its node ID, the
/// connections and a channel for heartbeats.
async fn sim_node(
    token: &skep_pki::JoinToken,
    addr: &str,
    hostname: &str,
) -> Result<(String, Vec<Conn>, Channel), String> {
    let joined = skep::identity::join::request_certificate(token, addr, hostname, "0.0.0.0:2377")
        .await
        .map_err(|e| format!("{hostname}: join: {e}"))?;
    let creds = skep::net::Credentials {
        cert_der: joined.cert_der.clone(),
        chain: Vec::new(),
        key_der: skep::secret::SecretBytes::new(joined.key.pkcs8_der().to_vec()),
        root_der: joined.root_der.clone(),
    };
    let tls = skep::net::client_config(&joined.root_der, Some(&creds))
        .map_err(|e| format!("{hostname}: tls: {e}"))?;
    let mut conns = Vec::with_capacity(CONNS);
    for i in 0..CONNS {
        conns.push(
            open_conn(addr, tls.clone())
                .await
                .map_err(|e| format!("{hostname}: connection {i}: {e}"))?,
        );
    }
    // Heartbeats go over the first connection (a tonic channel is one HTTP/2 connection).
    let hb = conns[0].channel.clone();
    Ok((joined.info.node_id, conns, hb))
}

async fn heartbeat(ch: &Channel, hostname: &str) -> Result<(), String> {
    DispatcherClient::new(ch.clone())
        .heartbeat(HeartbeatRequest {
            hostname: hostname.into(),
            addr: "0.0.0.0:2377".into(),
            ..HeartbeatRequest::default()
        })
        .await
        .map(|_| ())
        .map_err(|e| format!("heartbeat: {e}"))
}

fn one_run(
    rt: &tokio::runtime::Runtime,
    m: &Daemon,
    token: &skep_pki::JoinToken,
    hostname: &str,
) -> Run {
    let (node_id, conns, hb) = rt
        .block_on(sim_node(token, &m.addr, hostname))
        .unwrap_or_else(|e| panic!("{e}\n--- daemon log (tail) ---\n{}", m.log_tail()));

    // Ready: heartbeat (over the node's own connection) until `node ls` says so.
    let deadline = Instant::now() + WAIT;
    loop {
        rt.block_on(heartbeat(&hb, hostname))
            .unwrap_or_else(|e| panic!("{hostname}: {e}"));
        let status = node_status(m, &node_id);
        if status.as_deref() == Ok("Ready") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{hostname} ({node_id}) was not Ready within {WAIT:?}; last `node ls`: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(hb);

    // Baseline: a CLI round trip that changes nothing.
    let (ns, ne, out) = timed_cli(m, &["node", "ls", "-q"]);
    out.unwrap_or_else(|e| panic!("skep node ls -q: {e}"));
    let noop = ne - ns;

    let cuts_before = cuts_logged(m).len();
    let (ts, t0, out) = timed_cli(m, &["node", "rm", "--force", &node_id]);
    let said = out.unwrap_or_else(|e| {
        panic!(
            "skep node rm --force {node_id}: {e}\n--- daemon log (tail) ---\n{}",
            m.log_tail()
        )
    });
    assert!(
        said.contains("removed and its certificate revoked"),
        "unexpected `node rm` output: {said}"
    );

    let closes: Vec<(Instant, String)> = rt.block_on(async {
        let mut v = Vec::with_capacity(conns.len());
        for (i, c) in conns.into_iter().enumerate() {
            match tokio::time::timeout(WAIT, c.closed).await {
                Ok(Ok(x)) => v.push(x),
                Ok(Err(_)) => panic!("{hostname}: connection {i}: its watcher went away"),
                Err(_) => panic!(
                    "{hostname}: connection {i} was still open {WAIT:?} after `node rm --force {node_id}` returned\n--- daemon log (tail) ---\n{}",
                    m.log_tail()
                ),
            }
        }
        v
    });
    let tc = closes.iter().map(|(t, _)| *t).max().unwrap();
    let from_return = if tc >= t0 {
        (tc - t0).as_secs_f64()
    } else {
        -(t0 - tc).as_secs_f64()
    };
    let closed_before = closes.iter().filter(|(t, _)| *t < t0).count();

    // The manager logs the cut right after making it; give the line a moment to land.
    let deadline = Instant::now() + Duration::from_secs(2);
    let cut_logged = loop {
        let cuts = cuts_logged(m);
        if cuts.len() > cuts_before || Instant::now() >= deadline {
            break cuts.get(cuts_before).copied().flatten();
        }
        std::thread::sleep(Duration::from_millis(10));
    };

    Run {
        from_return,
        from_spawn: tc - ts,
        cli: t0 - ts,
        noop,
        closed_before,
        cut_logged,
        endings: closes.into_iter().map(|(_, how)| how).collect(),
    }
}

/// p50 / p99 / min / max / mean of `ms` (milliseconds), nearest-rank percentiles.
fn stats(ms: &[f64]) -> String {
    let mut v = ms.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    format!(
        "p50 {:8.3}  p99 {:8.3}  min {:8.3}  max {:8.3}  mean {:8.3}  ms",
        rank(0.50),
        rank(0.99),
        v[0],
        v[v.len() - 1],
        mean
    )
}

fn report(runs: &[Run]) {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let n = runs.len();
    let from_return: Vec<f64> = runs.iter().map(|r| r.from_return.max(0.0) * 1e3).collect();
    let signed: Vec<f64> = runs.iter().map(|r| r.from_return * 1e3).collect();
    let all_before = runs.iter().filter(|r| r.from_return < 0.0).count();
    let conns_before: usize = runs.iter().map(|r| r.closed_before).sum();
    let from_spawn: Vec<f64> = runs.iter().map(|r| ms(r.from_spawn)).collect();
    let cli: Vec<f64> = runs.iter().map(|r| ms(r.cli)).collect();
    let noop: Vec<f64> = runs.iter().map(|r| ms(r.noop)).collect();
    let mut cut_counts: BTreeMap<String, usize> = BTreeMap::new();
    for r in runs {
        let k = r
            .cut_logged
            .map_or_else(|| "no log line".to_string(), |c| c.to_string());
        *cut_counts.entry(k).or_default() += 1;
    }
    let mut endings: BTreeMap<&str, usize> = BTreeMap::new();
    for r in runs {
        for e in &r.endings {
            *endings.entry(e.as_str()).or_default() += 1;
        }
    }

    println!();
    println!(
        "revocation: {n} runs, each a fresh simulated node with {CONNS} live connections (task sessions), removed with `skep node rm --force`"
    );
    println!(
        "  return -> last closed (0 if before): {}",
        stats(&from_return)
    );
    println!("  return -> last closed (signed)     : {}", stats(&signed));
    println!(
        "  spawn  -> last closed              : {}",
        stats(&from_spawn)
    );
    println!("  node rm --force CLI (spawn->exit)  : {}", stats(&cli));
    println!("  no-op CLI `node ls -q`             : {}", stats(&noop));
    println!(
        "  closed before the CLI returned: all {CONNS} in {all_before} of {n} runs; {conns_before} of {} connections",
        n * CONNS
    );
    println!("  manager's cut log (connections=N: runs): {cut_counts:?}");
    println!("  how the streams ended (ending: connections): {endings:?}");
}

fn main() {
    let runs: usize = std::env::var("SKEP_BENCH_REVOKE_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(RUNS);
    let root = tempfile::Builder::new()
        .prefix("skep-bench-revocation-")
        .tempdir()
        .unwrap();
    // Dropped on the way out (even on panic): kills the daemon, removes the directory.
    let cluster = Cluster {
        daemons: vec![Daemon::start(root.path(), "revoke-m1", ADDR)],
        root,
    };
    let m = cluster.manager();
    m.init_swarm();
    let token = m.cli(&["join-token", "-q", "worker"]).trim().to_string();
    let token = skep_pki::JoinToken::parse(&token).unwrap_or_else(|e| panic!("token: {e}"));
    let rt = tokio::runtime::Runtime::new().unwrap();

    let started = Instant::now();
    let mut measured = Vec::with_capacity(runs);
    for i in 0..WARMUP + runs {
        let r = one_run(&rt, m, &token, &format!("revoke-sim-{i:03}"));
        let tag = if i < WARMUP {
            "warm-up".to_string()
        } else {
            format!("run {:3}", i - WARMUP + 1)
        };
        eprintln!(
            "{tag}: return->closed {:8.3} ms, spawn->closed {:8.3} ms, rm CLI {:8.3} ms, no-op CLI {:8.3} ms, closed before return {}/{CONNS}, cut logged {:?}",
            r.from_return * 1e3,
            r.from_spawn.as_secs_f64() * 1e3,
            r.cli.as_secs_f64() * 1e3,
            r.noop.as_secs_f64() * 1e3,
            r.closed_before,
            r.cut_logged
        );
        if i >= WARMUP {
            measured.push(r);
        }
    }
    eprintln!(
        "revocation: {} runs in {:?}",
        WARMUP + runs,
        started.elapsed()
    );
    if !measured.is_empty() {
        report(&measured);
    }
    drop(rt);
    drop(cluster);
}
