//! Services at scale, two measurements:
//!
//! * `convergence`: a real 3-node cluster (3 `skep daemon` processes: 1 manager, 2 workers,
//!   all running exec tasks as root). Time from `skep service create --detach --runtime exec
//!   --replicas N -- /bin/sleep 100000` to `skep service ls` reporting `N/N`, for N = 100 and
//!   N = 1000 (override the large one with `SKEP_BENCH_CONV_REPLICAS`, a comma-separated list:
//!   `1000,3000`). Between iterations the service is removed and every task process must be
//!   gone. At N/N it prints the host memory per task (the init helpers' PSS and page tables,
//!   the command's apart, the host's `PageTables` growth), the load average, and how late
//!   each daemon's heartbeats were answered (its agent's warnings);
//!   `SKEP_BENCH_CONV_ONCE=1` runs one round per size and only prints that;
//!   `SKEP_BENCH_CONV_IDENTITY=false` gives the tasks no workload identity;
//!   `SKEP_BENCH_BIN=path/to/skep` runs another build's daemons (to compare in one run).
//! * `placement`: the manager side alone. One real manager daemon; 100 worker nodes simulated
//!   in this process, each with its own certificate (real join), its own mTLS connection,
//!   heartbeats, a task session, and Running reports for every task it is given (no process is
//!   started). Times from `service create --replicas 2000` until the simulated nodes have
//!   received all 2000 assignments (placed + committed through Raft + dispatched), and,
//!   printed beside criterion's report, until `service ls` says 2000/2000 (the reports too),
//!   and the manager's resident memory with every task running (the highest seen at N/N, and
//!   once 15 s later, settled). `SKEP_BENCH_SIM_NODES=1000
//!   SKEP_BENCH_PLACE_REPLICAS=10000` is the 1,000-node, 10,000-task case;
//!   `SKEP_BENCH_SHARED_SPECS=0` has the nodes ask for whole tasks, each with its own copy of
//!   the spec, as agents before `api::assignments` did (the baseline of that change);
//!   `SKEP_BENCH_PLACE_ENV=10` gives the service's spec ten environment variables;
//!   `SKEP_BENCH_TRUST_DIGEST=0` has the nodes echo no trust digest, so every heartbeat
//!   answer carries the whole trust material, as before `manager::trust_answer`.
//!
//! Run one alone with `cargo bench --bench services -- convergence` (or `-- placement`).
//! Every wait is bounded (5 minutes); a wait that runs out fails the bench with what it last
//! saw. Every daemon and task process started here is killed on the way out, even on failure.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::process::Child;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, Daemon, POLL, pids_mentioning, wait_for, wait_limit};
use criterion::{Criterion, SamplingMode, criterion_group, criterion_main};

use skep::api::assignments::decode;
use skep::api::v1::dispatcher_client::DispatcherClient;
use skep::api::v1::{HeartbeatRequest, SessionRequest, TaskReport};
use skep::store::service::{DesiredState, Task, TaskState, TaskStatus};

/// The small convergence case.
const CONV_SMALL: u64 = 100;
/// The large convergence case, unless `SKEP_BENCH_CONV_REPLICAS` says otherwise.
const CONV_LARGE: u64 = 1000;
/// Simulated nodes of the placement bench.
const SIM_NODES: usize = 100;
/// How long the placement bench waits after its last round before it samples the manager's
/// memory again.
const SETTLE: Duration = Duration::from_secs(15);

/// Replicas of the placement bench, unless `SKEP_BENCH_PLACE_REPLICAS` says otherwise.
const PLACE_REPLICAS: u64 = 2000;

fn ready_count(m: &Daemon, prefix: &str) -> Result<usize, String> {
    let nodes = m.json(&["node", "ls", "--format", "json"])?;
    Ok(nodes
        .iter()
        .filter(|n| {
            n["Status"] == "Ready"
                && n["Hostname"]
                    .as_str()
                    .is_some_and(|h| h.starts_with(prefix))
        })
        .count())
}

/// `Replicas` of service `name` in `service ls --format json`.
fn replicas_of(m: &Daemon, name: &str) -> Result<String, String> {
    let services = m.json(&["service", "ls", "--format", "json"])?;
    services
        .iter()
        .find(|s| s["Name"] == name)
        .and_then(|s| s["Replicas"].as_str())
        .map(String::from)
        .ok_or_else(|| format!("{name} is not listed"))
}

/// Tasks of `name` by current state and error, for a failure message.
fn task_summary(m: &Daemon, name: &str) -> String {
    let Ok(tasks) = m.json(&["service", "ps", name, "--format", "json"]) else {
        return "(service ps failed)".into();
    };
    let mut counts: HashMap<String, usize> = HashMap::new();
    for t in &tasks {
        let state = t["CurrentState"]
            .as_str()
            .unwrap_or("?")
            .split_whitespace()
            .next()
            .unwrap_or("?")
            .to_string();
        let err = t["Error"].as_str().unwrap_or("");
        *counts.entry(format!("{state} {err}")).or_default() += 1;
    }
    format!("{} tasks: {counts:?}", tasks.len())
}

/// Waits until `service ls` shows `want/want` for `name`; panics with the tasks' states if it
/// does not within [`wait_limit`].
fn wait_converged(m: &Daemon, name: &str, want: u64) {
    let target = format!("{want}/{want}");
    let deadline = Instant::now() + wait_limit();
    loop {
        let last = match replicas_of(m, name) {
            Ok(r) if r == target => return,
            Ok(r) => r,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            panic!(
                "{name} did not reach {target} within {:?}; last `service ls`: {last}; {}",
                wait_limit(),
                task_summary(m, name)
            );
        }
        std::thread::sleep(POLL);
    }
}

fn wait_no_services(m: &Daemon) {
    wait_for(wait_limit(), "`service ls` to be empty", || {
        let s = m.json(&["service", "ls", "--format", "json"])?;
        if s.is_empty() {
            Ok(())
        } else {
            Err(format!("{} services", s.len()))
        }
    });
}

/// A process's `/proc/PID/status`, empty if unreadable.
fn status_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default()
}

/// A size field of a `/proc/PID/status` (`VmRSS:`, `RssAnon:`...) in MiB, 0 if absent.
fn status_mib(status: &str, field: &str) -> f64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A process's resident set size in MiB (`VmRSS`), 0 if unreadable.
fn rss_mib(pid: u32) -> f64 {
    status_mib(&status_of(pid), "VmRSS:")
}

/// A process's resident memory split as /proc/PID/status does (anonymous, file-backed), for
/// the settled samples: the binary's own pages are the file-backed part.
fn rss_parts(pid: u32) -> String {
    let status = status_of(pid);
    format!(
        "anonymous {:.1} MiB, file {:.1} MiB",
        status_mib(&status, "RssAnon:"),
        status_mib(&status, "RssFile:")
    )
}

/// Whether the simulated nodes ask for shared specs (`SKEP_BENCH_SHARED_SPECS`, default yes).
fn shared_specs() -> bool {
    std::env::var("SKEP_BENCH_SHARED_SPECS").map_or(true, |v| v != "0")
}

/// Whether the simulated nodes echo the trust digest of their last heartbeat answer
/// (`SKEP_BENCH_TRUST_DIGEST`, default yes), as agents do.
fn trust_digest() -> bool {
    std::env::var("SKEP_BENCH_TRUST_DIGEST").map_or(true, |v| v != "0")
}

/// Simulated nodes of the placement bench (`SKEP_BENCH_SIM_NODES`, default [`SIM_NODES`]).
fn sim_nodes() -> usize {
    std::env::var("SKEP_BENCH_SIM_NODES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SIM_NODES)
}

/// CPU time (user + system) a process has used so far, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    // After the comm: state is field 3; utime and stime are fields 14 and 15.
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (ticks(11) + ticks(12)) as f64 / 100.0
}

impl Cluster {
    /// CPU seconds used so far by each daemon.
    fn cpu(&self) -> Vec<f64> {
        self.daemons
            .iter()
            .map(|d| d.child.as_ref().map_or(0.0, |c| cpu_secs(c.id())))
            .collect()
    }
}

fn summary(label: &str, times: &[Duration], tasks: u64) {
    if times.is_empty() {
        return;
    }
    let secs: Vec<f64> = times.iter().map(Duration::as_secs_f64).collect();
    let mean = secs.iter().sum::<f64>() / secs.len() as f64;
    let min = secs.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = secs.iter().cloned().fold(0.0, f64::max);
    eprintln!(
        "{label}: n={} mean {mean:.3} s (min {min:.3}, max {max:.3}) = {:.0} tasks/s",
        secs.len(),
        tasks as f64 / mean
    );
}

// ------------------------------------------------------------------ convergence

fn start_real_cluster() -> Cluster {
    let root = tempfile::Builder::new()
        .prefix("skep-bench-services-")
        .tempdir()
        .unwrap();
    let mut daemons = Vec::new();
    for (i, name) in ["conv-m1", "conv-w1", "conv-w2"].iter().enumerate() {
        daemons.push(Daemon::start(
            root.path(),
            name,
            &format!("127.0.92.{}:2377", i + 1),
        ));
    }
    let cluster = Cluster { daemons, root };
    let m = cluster.manager();
    m.init_swarm();
    let token = m.cli(&["join-token", "-q", "worker"]).trim().to_string();
    for w in &cluster.daemons[1..] {
        w.cli(&["swarm", "join", "--token", &token, &m.addr]);
    }
    wait_for(wait_limit(), "3 Ready nodes", || {
        match ready_count(m, "conv-")? {
            3 => Ok(()),
            n => Err(format!("{n} Ready")),
        }
    });
    cluster
}

/// Number of task init helpers still running under the cluster's root.
fn task_processes(c: &Cluster) -> usize {
    pids_mentioning(c.root.path(), Some("init-helper")).len()
}

fn ppid_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn pss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Pss:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A `kB` field of `/proc/PID/status` (`VmPTE:`: the process's page tables), 0 if unreadable.
fn status_kib(pid: i32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The host's page tables (`PageTables:` in /proc/meminfo), in KiB.
fn host_page_tables_kib() -> u64 {
    meminfo_kib("PageTables:")
}

/// The kernel's slab (kernel objects, mounts among them), in KiB.
fn host_slab_kib() -> u64 {
    meminfo_kib("Slab:")
}

/// A field of `/proc/meminfo`, in KiB (0 if it cannot be read).
fn meminfo_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The 1-minute load average.
fn load_1min() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// What actually runs once `service ls` says N/N: the init helpers (stage 1 outside the task's
/// namespaces, stage 2 its PID 1), the task commands under them, and the host memory they take:
/// PSS and page tables (`VmPTE`) per task, helpers and commands apart, beside the growth of the
/// host's `PageTables` and kernel slab since `before` (everything the burst added, the daemons'
/// included) and the load average right after the burst.
fn task_census(c: &Cluster, replicas: u64, before: (u64, u64)) -> String {
    let (page_tables_before, slab_before) = before;
    let load = load_1min();
    let helpers = pids_mentioning(c.root.path(), Some("init-helper"));
    let stage2: HashSet<i32> = pids_mentioning(c.root.path(), Some("--stage2"))
        .into_iter()
        .collect();
    let mut commands = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if ppid_of(pid).is_some_and(|pp| stage2.contains(&pp)) {
                commands.push(pid);
            }
        }
    }
    let binaries: HashSet<String> = helpers
        .iter()
        .filter_map(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let sum = |pids: &[i32], f: &dyn Fn(i32) -> u64| pids.iter().map(|p| f(*p)).sum::<u64>();
    let pte = |p| status_kib(p, "VmPTE:");
    let (h_pss, h_pte) = (sum(&helpers, &pss_kib), sum(&helpers, &pte));
    let (c_pss, c_pte) = (sum(&commands, &pss_kib), sum(&commands, &pte));
    let host_pte = host_page_tables_kib().saturating_sub(page_tables_before);
    let slab = host_slab_kib().saturating_sub(slab_before);
    let each: Vec<u64> = c
        .daemons
        .iter()
        .filter_map(|d| d.child.as_ref().map(|ch| pss_kib(ch.id() as i32)))
        .collect();
    let daemons: u64 = each.iter().sum();
    let each: Vec<String> = each.iter().map(|k| (k / 1024).to_string()).collect();
    let n = replicas.max(1);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{} init helpers ({} stage 2; binary {binaries:?}), {} task commands under them\n  \
         per task: helpers PSS {} KiB + page tables {} KiB = {} KiB host memory; the command: \
         PSS {} KiB + page tables {} KiB\n  host PageTables +{} MiB over the burst ({} KiB per \
         task); kernel slab +{} MiB ({} KiB per task); daemons PSS {} MiB ({} MiB each); load \
         average (1 min) {load:.1} right after, {cores} cores",
        helpers.len(),
        stage2.len(),
        commands.len(),
        h_pss / n,
        h_pte / n,
        (h_pss + h_pte) / n,
        c_pss / n,
        c_pte / n,
        host_pte / 1024,
        host_pte / n,
        slab / 1024,
        slab / n,
        daemons / 1024,
        each.join(" + ")
    )
}

/// How late the leader answered heartbeats so far: per daemon (m1, w1, w2), how many times
/// its agent warned that none was answered for more than two periods, and the longest gap it
/// named. The leader (m1) starts a third of the tasks itself: a runtime busy starting them
/// shows here first.
fn late_heartbeats(c: &Cluster) -> String {
    const WARNING: &str = "no heartbeat was answered for more than two periods";
    let each: Vec<String> = c
        .daemons
        .iter()
        .map(|d| {
            let log = std::fs::read_to_string(d.log_path()).unwrap_or_default();
            let gaps: Vec<f64> = log
                .lines()
                .filter(|l| l.contains(WARNING))
                .filter_map(|l| {
                    let v = l.split("since_last=").nth(1)?.split_whitespace().next()?;
                    common::parse_debug_duration(v)
                })
                .collect();
            let longest = gaps.iter().copied().fold(0.0, f64::max);
            format!("{} {} (longest {longest:.1} s)", d.name, gaps.len())
        })
        .collect();
    format!(
        "heartbeats answered more than two periods late, so far: {}",
        each.join(", ")
    )
}

/// The convergence sizes: 100, then `SKEP_BENCH_CONV_REPLICAS` (one number or a
/// comma-separated list, `1000,3000`), default [`CONV_LARGE`].
fn conv_sizes() -> Vec<u64> {
    let mut sizes = vec![CONV_SMALL];
    match std::env::var("SKEP_BENCH_CONV_REPLICAS") {
        Ok(list) => sizes.extend(list.split(',').filter_map(|s| s.trim().parse::<u64>().ok())),
        Err(_) => sizes.push(CONV_LARGE),
    }
    sizes
}

/// One round: create `replicas` exec tasks, wait for N/N, print the census if `census`, then
/// remove the service and wait for every task process to end. The time to N/N, and the
/// daemons' CPU seconds then ([`Cluster::cpu`]).
fn conv_round(cl: &Cluster, name: &str, replicas: u64, census: bool) -> (Duration, Vec<f64>) {
    let m = cl.manager();
    let n = replicas.to_string();
    let before = (host_page_tables_kib(), host_slab_kib());
    // `SKEP_BENCH_CONV_IDENTITY=false`: tasks without a workload identity (no directory on the
    // node's tmpfs, no Workload API server, no SVID per task), to see what identity costs.
    let identity = format!(
        "--identity={}",
        std::env::var("SKEP_BENCH_CONV_IDENTITY").unwrap_or_else(|_| "true".into())
    );
    let start = Instant::now();
    m.cli(&[
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        &identity,
        "--name",
        name,
        "--replicas",
        &n,
        "--",
        "/bin/sleep",
        "100000",
    ]);
    wait_converged(m, name, replicas);
    let took = start.elapsed();
    let cpu = cl.cpu();
    if census {
        eprintln!(
            "\n{name} at {replicas}/{replicas} in {:.1} s: {}\n  {}",
            took.as_secs_f64(),
            task_census(cl, replicas, before),
            late_heartbeats(cl)
        );
    }
    m.cli(&["service", "rm", name]);
    wait_no_services(m);
    wait_for(
        wait_limit(),
        "every task process to end",
        || match task_processes(cl) {
            0 => Ok(()),
            n => Err(format!("{n} init helpers left")),
        },
    );
    (took, cpu)
}

fn convergence(c: &mut Criterion) {
    let mut cluster: Option<Cluster> = None;
    let mut round = 0u64;
    // `SKEP_BENCH_CONV_ONCE=1`: one round per size, census printed, no statistics (a
    // 3,000-task round takes a while).
    if std::env::var_os("SKEP_BENCH_CONV_ONCE").is_some() {
        for replicas in conv_sizes() {
            let cl = cluster.get_or_insert_with(start_real_cluster);
            round += 1;
            conv_round(cl, &format!("conv{replicas}-{round}"), replicas, true);
        }
        return;
    }
    let mut group = c.benchmark_group("convergence");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_secs(1));
    for replicas in conv_sizes() {
        let mut times = Vec::new();
        let mut cpu: Vec<f64> = Vec::new();
        group.bench_function(format!("{replicas} exec replicas on 3 nodes"), |b| {
            b.iter_custom(|iters| {
                let cl = cluster.get_or_insert_with(start_real_cluster);
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    round += 1;
                    let name = format!("conv{replicas}-{round}");
                    let cpu0 = cl.cpu();
                    let (took, cpu1) = conv_round(cl, &name, replicas, times.is_empty());
                    total += took;
                    times.push(took);
                    cpu.resize(cpu1.len(), 0.0);
                    for (i, (a, b)) in cpu0.iter().zip(&cpu1).enumerate() {
                        cpu[i] += b - a;
                    }
                }
                total
            })
        });
        summary(
            &format!("convergence {replicas} replicas (create -> N/N)"),
            &times,
            replicas,
        );
        if !times.is_empty() {
            let per: Vec<String> = cpu
                .iter()
                .map(|c| format!("{:.2}", c / times.len() as f64))
                .collect();
            eprintln!(
                "  daemon CPU s per iteration while converging (m1, w1, w2): {}",
                per.join(", ")
            );
        }
    }
    group.finish();
    drop(cluster);
}

// ------------------------------------------------------------------ placement

/// What the simulated nodes have seen, summed over all of them.
#[derive(Default)]
struct Counters {
    /// Task assignments with desired Running received (each task counted once).
    received: AtomicU64,
    /// Tasks a node holds with desired Running (received, not yet told to stop).
    live: AtomicI64,
    /// Tasks in the nodes' assignment sets (live plus those stopping).
    held: AtomicI64,
    /// Reports that failed.
    report_errors: AtomicU64,
    /// Sessions that ended or could not open.
    session_errors: AtomicU64,
    /// Of those, sessions refused when opened (the node not yet known to the leader, while
    /// the nodes join); the rest are open sessions that ended.
    session_refused: AtomicU64,
}

fn status(state: TaskState, message: &str) -> String {
    serde_json::to_string(&TaskStatus {
        state,
        message: message.into(),
        err: String::new(),
        exit_code: None,
        timestamp: skep::util::now_rfc3339(),
        held: Default::default(),
    })
    .unwrap()
}

/// One simulated worker: a real join, then heartbeats, a task session and batched reports over
/// one mTLS connection, for as long as the runtime lives.
async fn sim_node(
    token: skep_pki::JoinToken,
    addr: String,
    hostname: String,
    counters: Arc<Counters>,
) -> Result<(), String> {
    let joined =
        skep::identity::join::request_certificate(&token, &addr, &hostname, "0.0.0.0:2377")
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
    let ch = skep::net::channel(&addr, tls).map_err(|e| format!("{hostname}: channel: {e}"))?;

    // Heartbeats, at the period the manager asks for.
    let mut hb = DispatcherClient::new(ch.clone());
    let host = hostname.clone();
    tokio::spawn(async move {
        let mut period = Duration::from_secs(1);
        let mut digest = Vec::new();
        let echo = trust_digest();
        loop {
            let req = HeartbeatRequest {
                hostname: host.clone(),
                addr: "0.0.0.0:2377".into(),
                trust_digest: digest.clone(),
                ..HeartbeatRequest::default()
            };
            if let Ok(r) = hb.heartbeat(req).await {
                let r = r.into_inner();
                if echo {
                    digest = r.trust_digest;
                }
                let ms = r.period_ms;
                if ms > 0 {
                    period = Duration::from_millis(ms).min(Duration::from_secs(1));
                }
            }
            tokio::time::sleep(period).await;
        }
    });

    // Reports, batched every 50 ms.
    let pending: Arc<std::sync::Mutex<HashMap<String, String>>> = Arc::default();
    let mut rep = DispatcherClient::new(ch.clone());
    let queue = pending.clone();
    let c = counters.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let batch = std::mem::take(&mut *queue.lock().unwrap());
            if batch.is_empty() {
                continue;
            }
            let req = TaskReport {
                statuses_json: batch.clone(),
            };
            if rep.report_tasks(req).await.is_err() {
                c.report_errors.fetch_add(1, Ordering::Relaxed);
                let mut q = queue.lock().unwrap();
                for (k, v) in batch {
                    q.entry(k).or_insert(v);
                }
            }
        }
    });

    // The task session: reopened whenever it ends (it is refused until the node is known).
    let mut sess = DispatcherClient::new(ch);
    tokio::spawn(async move {
        // Task ID -> whether its desired state is still Running.
        let mut held: HashMap<String, bool> = HashMap::new();
        let mut counted: HashSet<String> = HashSet::new();
        loop {
            let req = SessionRequest {
                runtimes: vec!["exec".into()],
                nano_cpus: 2_000_000_000,
                memory_bytes: 8 << 30,
                shared_specs: shared_specs(),
            };
            let mut stream = match sess.session(req).await {
                Ok(s) => s.into_inner(),
                Err(_) => {
                    counters.session_errors.fetch_add(1, Ordering::Relaxed);
                    counters.session_refused.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            loop {
                let msg = match stream.message().await {
                    Ok(Some(m)) => m,
                    Ok(None) | Err(_) => {
                        counters.session_errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                };
                let tasks: Vec<Task> = decode(&msg.specs_json, &msg.tasks_json)
                    .into_iter()
                    .filter_map(Result::ok)
                    .collect();
                let mut drop_ids: Vec<String> = msg.removed.clone();
                if msg.complete {
                    let keep: HashSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
                    drop_ids.extend(
                        held.keys()
                            .filter(|id| !keep.contains(id.as_str()))
                            .cloned(),
                    );
                }
                for id in drop_ids {
                    if let Some(running) = held.remove(&id) {
                        counters.held.fetch_sub(1, Ordering::Relaxed);
                        if running {
                            counters.live.fetch_sub(1, Ordering::Relaxed);
                        }
                    }
                }
                let mut reports = Vec::new();
                for t in tasks {
                    let want_running = t.desired == DesiredState::Running;
                    match held.get_mut(&t.id) {
                        None => {
                            held.insert(t.id.clone(), want_running);
                            counters.held.fetch_add(1, Ordering::Relaxed);
                            if want_running {
                                counters.live.fetch_add(1, Ordering::Relaxed);
                                if counted.insert(t.id.clone()) {
                                    counters.received.fetch_add(1, Ordering::Relaxed);
                                }
                                reports.push((t.id, status(TaskState::Running, "started")));
                            } else {
                                reports.push((t.id, status(TaskState::Shutdown, "shutdown")));
                            }
                        }
                        Some(running) => {
                            if *running && !want_running {
                                *running = false;
                                counters.live.fetch_sub(1, Ordering::Relaxed);
                                reports.push((t.id, status(TaskState::Shutdown, "shutdown")));
                            }
                        }
                    }
                }
                if !reports.is_empty() {
                    pending.lock().unwrap().extend(reports);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    Ok(())
}

/// `service create` of `replicas` exec tasks named `name` on the simulated workers.
fn create_placed(m: &Daemon, name: &str, replicas: &str) {
    let mut args: Vec<String> = [
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        "--constraint",
        "node.role==worker",
        "--name",
        name,
        "--replicas",
        replicas,
    ]
    .map(String::from)
    .to_vec();
    for i in 0..place_env() {
        args.push("--env".into());
        args.push(format!("WEB_SETTING_{i}=value-of-setting-{i}"));
    }
    args.extend(["--", "/bin/sleep", "1000"].map(String::from));
    m.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

/// Environment variables each placed service's spec carries (`SKEP_BENCH_PLACE_ENV`, default
/// none): a spec closer to what operators write, about 35 bytes of JSON each.
fn place_env() -> usize {
    std::env::var("SKEP_BENCH_PLACE_ENV")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// Waits until `service ls` says `name` runs all `replicas`, failing after `deadline`.
fn wait_all_running(m: &Daemon, name: &str, replicas: u64, deadline: Instant, context: &str) {
    let target = format!("{replicas}/{replicas}");
    loop {
        let r = match replicas_of(m, name) {
            Ok(r) if r == target => return,
            Ok(r) => r,
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "{name} did not reach {target} in time ({context}); last `service ls`: {r}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Removes service `name` and waits until the simulated nodes hold none of its tasks.
fn remove_placed(m: &Daemon, name: &str, k: &Counters) {
    m.cli(&["service", "rm", name]);
    wait_no_services(m);
    wait_for(
        wait_limit(),
        "the simulated nodes to hold no task",
        || match k.held.load(Ordering::SeqCst) {
            0 => Ok(()),
            n => Err(format!(
                "{n} held, {} live, {} report errors, {} session errors",
                k.live.load(Ordering::SeqCst),
                k.report_errors.load(Ordering::SeqCst),
                k.session_errors.load(Ordering::SeqCst)
            )),
        },
    );
}

struct Placement {
    cluster: Cluster,
    counters: Arc<Counters>,
    // Dropped after the cluster's daemons would be fine too; it owns the simulated nodes.
    _rt: tokio::runtime::Runtime,
}

fn start_placement() -> Placement {
    let root = tempfile::Builder::new()
        .prefix("skep-bench-placement-")
        .tempdir()
        .unwrap();
    let m = Daemon::start(root.path(), "place-m1", "127.0.93.1:2377");
    let cluster = Cluster {
        daemons: vec![m],
        root,
    };
    let m = cluster.manager();
    m.init_swarm();
    let token = m.cli(&["join-token", "-q", "worker"]).trim().to_string();
    let token = skep_pki::JoinToken::parse(&token).unwrap_or_else(|e| panic!("token: {e}"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let counters = Arc::new(Counters::default());
    let started = Instant::now();
    rt.block_on(async {
        let mut joins = Vec::new();
        for i in 0..sim_nodes() {
            joins.push(tokio::spawn(sim_node(
                token.clone(),
                m.addr.clone(),
                format!("sim-{i:04}"),
                counters.clone(),
            )));
        }
        for j in joins {
            j.await.unwrap().unwrap_or_else(|e| panic!("{e}"));
        }
    });
    eprintln!(
        "placement: {} nodes joined in {:?} (mTLS 1.3 to the manager, sealed store, audited; \
         the nodes ask for {}; {} environment variables in the spec; {})",
        sim_nodes(),
        started.elapsed(),
        if shared_specs() {
            "shared specs"
        } else {
            "whole tasks (SKEP_BENCH_SHARED_SPECS=0)"
        },
        place_env(),
        if trust_digest() {
            "heartbeats echo the trust digest"
        } else {
            "heartbeats echo no trust digest (SKEP_BENCH_TRUST_DIGEST=0)"
        }
    );
    wait_for(
        wait_limit(),
        &format!("{} Ready simulated nodes", sim_nodes()),
        || match ready_count(m, "sim-")? {
            n if n == sim_nodes() => Ok(()),
            n => Err(format!("{n} Ready")),
        },
    );
    eprintln!(
        "placement: {} nodes Ready {:?} after the first join; manager RSS {:.1} MiB with no task; \
         session errors so far {} ({} refused at open)",
        sim_nodes(),
        started.elapsed(),
        rss_mib(m.child.as_ref().map_or(0, Child::id)),
        counters.session_errors.load(Ordering::SeqCst),
        counters.session_refused.load(Ordering::SeqCst)
    );
    Placement {
        cluster,
        counters,
        _rt: rt,
    }
}

fn placement(c: &mut Criterion) {
    let replicas: u64 = std::env::var("SKEP_BENCH_PLACE_REPLICAS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(PLACE_REPLICAS);
    let mut setup: Option<Placement> = None;
    let mut round = 0u64;
    let mut running_times = Vec::new();
    let mut dispatch_times = Vec::new();
    // Manager CPU seconds (dispatch phase, report phase) and this process's (the simulated
    // nodes and the CLI polling).
    let mut cpu = [0.0f64; 3];
    // The manager's resident memory with every task running, the highest seen.
    let mut peak_rss = 0.0f64;
    let mut settled_rss: Option<(f64, String)> = None;
    let mut ls_times: Vec<Duration> = Vec::new();
    let mut group = c.benchmark_group("placement");
    group.sample_size(10);
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_secs(1));
    group.bench_function(
        format!("{replicas} tasks on {} simulated nodes: dispatched", sim_nodes()),
        |b| {
            b.iter_custom(|iters| {
                let p = setup.get_or_insert_with(start_placement);
                let m = p.cluster.manager();
                let k = &p.counters;
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    round += 1;
                    let name = format!("place-{round}");
                    let n = replicas.to_string();
                    let base = k.received.load(Ordering::SeqCst);
                    let mpid = m.child.as_ref().map_or(0, Child::id);
                    let me = std::process::id();
                    let (m0, s0) = (cpu_secs(mpid), cpu_secs(me));
                    let start = Instant::now();
                    create_placed(m, &name, &n);
                    let deadline = start + wait_limit();
                    while k.received.load(Ordering::SeqCst) < base + replicas {
                        assert!(
                            Instant::now() < deadline,
                            "only {} of {replicas} tasks reached the simulated nodes within {:?}; {}",
                            k.received.load(Ordering::SeqCst) - base,
                            wait_limit(),
                            task_summary(m, &name)
                        );
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    let dispatched = start.elapsed();
                    total += dispatched;
                    dispatch_times.push(dispatched);
                    let m1 = cpu_secs(mpid);
                    wait_all_running(m, &name, replicas, deadline, &format!("all {replicas} were dispatched after {dispatched:?}"));
                    running_times.push(start.elapsed());
                    peak_rss = peak_rss.max(rss_mib(mpid));
                    // `service ls` (a whole CLI process) with every task running.
                    for _ in 0..5 {
                        let t = Instant::now();
                        m.cli(&["service", "ls"]);
                        ls_times.push(t.elapsed());
                    }
                    let (m2, s2) = (cpu_secs(mpid), cpu_secs(me));
                    cpu[0] += m1 - m0;
                    cpu[1] += m2 - m1;
                    cpu[2] += s2 - s0;
                    // The peak is sampled at N/N, while what the burst freed may still be held
                    // by the allocator: once, the same tasks left running a while.
                    if settled_rss.is_none() {
                        std::thread::sleep(SETTLE);
                        settled_rss = Some((rss_mib(mpid), rss_parts(mpid)));
                    }
                    remove_placed(m, &name, k);
                }
                total
            })
        },
    );
    group.finish();
    summary(
        &format!("placement {replicas} tasks, create -> all dispatched"),
        &dispatch_times,
        replicas,
    );
    summary(
        &format!("placement {replicas} tasks, create -> service ls N/N running"),
        &running_times,
        replicas,
    );
    if !running_times.is_empty() {
        let n = running_times.len() as f64;
        eprintln!(
            "placement: CPU s per iteration: manager {:.3} until dispatched + {:.3} until N/N; bench process (simulated nodes) {:.3}",
            cpu[0] / n,
            cpu[1] / n,
            cpu[2] / n
        );
        eprintln!(
            "placement: manager RSS with {replicas} tasks running on {} nodes: {peak_rss:.1} MiB (highest seen)",
            sim_nodes()
        );
        if let Some((settled, parts)) = settled_rss {
            eprintln!(
                "placement: manager RSS {settled:.1} MiB ({parts}) {SETTLE:?} after N/N with the same {replicas} tasks running (first round)"
            );
        }
        // Once more after every round: a leader whose log all those rounds have grown.
        if let Some(p) = &setup {
            let m = p.cluster.manager();
            let name = format!("place-{}", round + 1);
            create_placed(m, &name, &replicas.to_string());
            let deadline = Instant::now() + wait_limit();
            wait_all_running(m, &name, replicas, deadline, "after the measured rounds");
            // The leader's CPU while nothing changes (the nodes' heartbeats go on): over the
            // last two thirds of the settling time, once the last reports are committed.
            let mpid = m.child.as_ref().map_or(0, Child::id);
            std::thread::sleep(SETTLE / 3);
            let idle_from = cpu_secs(mpid);
            std::thread::sleep(SETTLE - SETTLE / 3);
            let idle = cpu_secs(mpid) - idle_from;
            let idle_over = (SETTLE - SETTLE / 3).as_secs_f64();
            eprintln!(
                "placement: manager CPU while settled with {replicas} tasks running: {:.1} % of a core ({idle:.2} s over {idle_over:.0} s)",
                idle / idle_over * 100.0
            );
            eprintln!(
                "placement: manager RSS {:.1} MiB ({}) {SETTLE:?} after N/N with {replicas} tasks running, after {round} earlier rounds",
                rss_mib(mpid),
                rss_parts(mpid)
            );
            remove_placed(m, &name, &p.counters);
        }
        ls_times.sort();
        let version = {
            let t = Instant::now();
            setup
                .as_ref()
                .map(|p| p.cluster.manager().cli(&["version"]));
            t.elapsed()
        };
        eprintln!(
            "placement: `service ls` with {replicas} tasks running: median {:?} (fastest {:?}); `skep version`, the CLI process alone against the same daemon: {version:?}",
            ls_times[ls_times.len() / 2],
            ls_times[0]
        );
    }
    if let Some(p) = &setup {
        eprintln!(
            "placement: report errors {}, session errors {} ({} refused at open)",
            p.counters.report_errors.load(Ordering::SeqCst),
            p.counters.session_errors.load(Ordering::SeqCst),
            p.counters.session_refused.load(Ordering::SeqCst)
        );
    }
    drop(setup);
}

criterion_group!(benches, convergence, placement);
criterion_main!(benches);
