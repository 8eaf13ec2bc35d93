//! Workload identity, measured on one real 3-node cluster (3 `skep daemon` processes: 1
//! manager, 2 workers, every node running tasks; exec runtime; default security settings:
//! mTLS between nodes, sealed store, every SVID issuance committed with its audit record,
//! Cedar default policy):
//!
//! * `start`: N exec tasks with identity on, then N with `--identity=false`, each created with
//!   `service create --detach` (N replicas). Each task runs a small static program (built here
//!   with gcc) that writes the wall-clock time it started and, with identity on, the time it
//!   first read `/run/spiffe/svid.pem` whole. Printed: ms from the CLI returning to each task
//!   started (off) / holding its SVID (on), p50 and p99, and the ratio on/off.
//! * `issue`: X.509-SVIDs issued per second by the leader: a worker's own credentials ask
//!   `Dispatcher.IssueSvid` for its 100 running tasks in turn (a task may hold 8 unexpired),
//!   16 requests at a time, each for a fresh key (every one checked, signed, recorded and
//!   audited through Raft).
//! * `revoke`: time from `service scale S=0` returning (the task stops) and from `node rm
//!   --force` returning, to a kept copy of that task's SVID and key being refused by the
//!   routing mesh on a port published with `identity=required` (openssl as the caller).
//!
//! `SKEP_BENCH_IDENTITY_TASKS` (default 100) sets N; `cargo bench --bench identity -- start`
//! runs only the parts whose name contains an argument.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use common::{Cluster, Daemon, build_static_c, chmod, swarm, wait_for, wait_limit};

const ADDRS: [&str; 3] = ["127.0.94.1:2377", "127.0.94.2:2377", "127.0.94.3:2377"];

const PROBE_C: &str = r#"
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
static void on_term(int s) { (void)s; _exit(0); }
static long long now(void) {
    struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
static int serve(void) {
    const char *p = getenv("PORT");
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a; memset(&a, 0, sizeof a);
    a.sin_family = AF_INET; a.sin_port = htons(p ? atoi(p) : 80);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 64) < 0) return 4;
    for (;;) {
        int c = accept(s, 0, 0);
        if (c < 0) continue;
        if (write(c, "answer\n", 7) < 0) {}
        close(c);
    }
}
int main(int argc, char **argv) {
    if (argc >= 2 && strcmp(argv[1], "serve") == 0) return serve();
    if (argc < 3) return 2;
    signal(SIGTERM, on_term);
    long long started = now();
    unsigned r = 0; int u = open("/dev/urandom", O_RDONLY);
    if (u >= 0) { if (read(u, &r, sizeof r) < 0) r = 0; close(u); }
    char name[512];
    snprintf(name, sizeof name, "%s/p-%lld-%08x", argv[1], started, r);
    int out = open(name, O_WRONLY | O_CREAT | O_EXCL | O_APPEND, 0666);
    if (out < 0) return 3;
    dprintf(out, "start %lld\n", started);
    if (strcmp(argv[2], "on") == 0) {
        for (;;) {
            char buf[8192]; ssize_t n = -1;
            int fd = open("/run/spiffe/svid.pem", O_RDONLY);
            if (fd >= 0) { n = read(fd, buf, sizeof buf - 1); close(fd); }
            if (n > 0) { buf[n] = 0; if (strstr(buf, "END CERTIFICATE")) break; }
            struct timespec d = {0, 1000000}; nanosleep(&d, 0);
        }
        dprintf(out, "svid %lld\n", now());
    }
    for (;;) pause();
}
"#;

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |part: &str| filters.is_empty() || filters.iter().any(|f| part.contains(f));
    if !nix::unistd::geteuid().is_root() {
        println!("NOTICE: the identity bench needs root (exec tasks, tmpfs): skipping");
        return;
    }
    let tasks: usize = std::env::var("SKEP_BENCH_IDENTITY_TASKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let shared = tempfile::Builder::new()
        .prefix("skep-bench-identity-shared-")
        .tempdir()
        .unwrap();
    chmod(shared.path(), 0o755);
    let probe = build_static_c(shared.path(), "probe", PROBE_C);
    let c = swarm("skep-bench-identity-", "id", &ADDRS);
    let m = c.manager();
    println!();
    if want("start") {
        println!(
            "== task start with identity on and off: {tasks} exec tasks on 3 nodes; ms from the CLI returning"
        );
        println!("{:<44} {:>8} {:>8} {:>8}", "", "p50", "p99", "max");
        let on = start_run(m, &probe, shared.path(), tasks, "on");
        let off = start_run(m, &probe, shared.path(), tasks, "off");
        println!("{:<44} {}", "identity off: task started", off.line());
        println!("{:<44} {}", "identity on: task holds its SVID", on.line());
        println!(
            "ratio on/off (same run): p50 {:.2}x, p99 {:.2}x",
            on.p50 / off.p50,
            on.p99 / off.p99
        );
    }
    if want("issue") {
        issue_rate(&c);
    }
    if want("revoke") {
        revoke_times(&c, &probe, shared.path());
    }
}

struct Row {
    p50: f64,
    p99: f64,
    max: f64,
}

impl Row {
    fn of(mut ms: Vec<f64>) -> Row {
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
        Row {
            p50: at(0.5),
            p99: at(0.99),
            max: *ms.last().unwrap(),
        }
    }

    fn line(&self) -> String {
        format!("{:>8.1} {:>8.1} {:>8.1}", self.p50, self.p99, self.max)
    }
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// The times (ns) each probe file in `dir` recorded under `key`.
fn recorded(dir: &Path, key: &str) -> Vec<i128> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse::<i128>().ok())
        })
        .collect()
}

fn start_run(m: &Daemon, probe: &Path, shared: &Path, tasks: usize, mode: &str) -> Row {
    let out = shared.join(format!("start-{mode}"));
    std::fs::create_dir(&out).unwrap();
    chmod(&out, 0o777);
    let service = format!("start-{mode}");
    let identity = format!("--identity={}", mode == "on");
    let replicas = tasks.to_string();
    let began = now_ns();
    m.cli(&[
        "service",
        "create",
        "--detach",
        "--name",
        &service,
        "--replicas",
        &replicas,
        &identity,
        "--runtime",
        "exec",
        "--",
        probe.to_str().unwrap(),
        out.to_str().unwrap(),
        mode,
    ]);
    let returned = now_ns();
    let key = if mode == "on" { "svid " } else { "start " };
    let times = wait_for(
        wait_limit() * 4,
        &format!("{tasks} probes ({mode})"),
        || {
            let t = recorded(&out, key);
            if t.len() >= tasks {
                Ok(t)
            } else {
                Err(format!("{} of {tasks}", t.len()))
            }
        },
    );
    let _ = began;
    let row = Row::of(times.iter().map(|t| (t - returned) as f64 / 1e6).collect());
    m.cli(&["service", "rm", &service]);
    row
}

/// A node's own credentials from its data directory (the node's key is sealed under its KEK).
fn credentials_of(d: &Daemon) -> skep::net::Credentials {
    let dir = d.data_dir();
    let kek = skep::store::seal::Kek::from_bytes(&std::fs::read(dir.join("kek")).unwrap()).unwrap();
    let key = kek
        .open_blob(
            skep::store::seal::RecordKind::NodeKey,
            &std::fs::read(dir.join("node.key.sealed")).unwrap(),
        )
        .unwrap();
    skep::net::Credentials {
        cert_der: std::fs::read(dir.join("node.crt")).unwrap(),
        chain: std::fs::read(dir.join("node.chain"))
            .map(|b| skep_pki::split_der_certs(&b).unwrap())
            .unwrap_or_default(),
        key_der: skep::secret::SecretBytes::from(key),
        root_der: std::fs::read(dir.join("root.crt")).unwrap(),
    }
}

/// A running task of `service` on the node with hostname `host`.
fn task_on(m: &Daemon, service: &str, host: &str) -> String {
    tasks_on(m, service, host, 1).remove(0)
}

/// `n` running tasks of `service` on `host`, once there are.
fn tasks_on(m: &Daemon, service: &str, host: &str, n: usize) -> Vec<String> {
    wait_for(
        wait_limit(),
        &format!("{n} running tasks of {service} on {host}"),
        || {
            let all = m.json(&["service", "ps", "--no-trunc", "--format", "json", service])?;
            let ids: Vec<String> = all
                .iter()
                .filter(|t| {
                    t["Node"] == host
                        && t["CurrentState"]
                            .as_str()
                            .is_some_and(|s| s.starts_with("Running"))
                })
                .filter_map(|t| t["ID"].as_str().map(str::to_string))
                .collect();
            if ids.len() >= n {
                Ok(ids)
            } else {
                Err(format!("{} of {n}", ids.len()))
            }
        },
    )
}

/// The daemons start with their name as host name.
fn hostname_of(d: &Daemon) -> String {
    d.name.clone()
}

/// Tasks the issuance series asks SVIDs for: room for its 400 requests.
const ISSUER_TASKS: usize = 100;

fn issue_rate(c: &Cluster) {
    use skep::api::v1::SvidRequest;
    use skep::api::v1::dispatcher_client::DispatcherClient;
    let m = c.manager();
    let w = &c.daemons[1];
    let host = hostname_of(w);
    let constraint = format!("node.hostname=={host}");
    m.cli(&[
        "service",
        "create",
        "--detach",
        "--name",
        "issuer",
        "--replicas",
        &ISSUER_TASKS.to_string(),
        "--constraint",
        &constraint,
        "--runtime",
        "exec",
        "--",
        "/bin/sleep",
        "100000",
    ]);
    // A task holds at most `MAX_SVIDS_PER_TASK` unexpired SVIDs (its agent holds one): the
    // requests go round the tasks.
    let tasks = tasks_on(m, "issuer", &host, ISSUER_TASKS);
    let creds = credentials_of(w);
    let tls = skep::net::client_config(&creds.root_der, Some(&creds)).unwrap();
    let total = 400usize;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let elapsed = rt.block_on(async {
        let ch = skep::net::channel(&m.addr, tls).unwrap();
        let keys: Vec<Vec<u8>> = (0..total)
            .map(|_| skep_pki::NodeKey::generate().unwrap().csr_der().unwrap())
            .collect();
        let start = Instant::now();
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
        let mut joins = Vec::new();
        for (i, csr) in keys.into_iter().enumerate() {
            let permit = sem.clone().acquire_owned().await.unwrap();
            let mut client = DispatcherClient::new(ch.clone());
            let task = tasks[i % tasks.len()].clone();
            joins.push(tokio::spawn(async move {
                let r = client.issue_svid(SvidRequest { task_id: task, csr }).await;
                drop(permit);
                r.is_ok()
            }));
        }
        let mut ok = 0;
        for j in joins {
            if j.await.unwrap() {
                ok += 1;
            }
        }
        assert_eq!(ok, total, "every request was answered with an SVID");
        start.elapsed()
    });
    println!();
    println!(
        "== issuance: {total} X.509-SVIDs, 16 at a time, one worker asking the leader: {:.0} per second ({:.2} ms each on average)",
        total as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / total as f64
    );
    m.cli(&["service", "rm", "issuer"]);
}

/// Copies of the SVID and key task `task` holds on node `d` (what a thief of the task keeps).
fn keep_svid(d: &Daemon, task: &str, into: &Path) -> (PathBuf, PathBuf) {
    let dir = d.data_dir().join("tasks").join(task).join("secrets/spiffe");
    let dir = wait_for(wait_limit(), "the task's identity files", || {
        // The tasks directory layout: find the task's identity directory under the data dir.
        if dir.join("svid.key").exists() {
            return Ok(dir.clone());
        }
        find_dir(&d.data_dir(), task).ok_or_else(|| "not yet".to_string())
    });
    let (cert, key) = (
        into.join(format!("{task}.pem")),
        into.join(format!("{task}.key")),
    );
    std::fs::copy(dir.join("svid.pem"), &cert).unwrap();
    std::fs::copy(dir.join("svid.key"), &key).unwrap();
    (cert, key)
}

/// The identity directory of `task` somewhere under `root`.
fn find_dir(root: &Path, task: &str) -> Option<PathBuf> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.ends_with("spiffe")
                && p.to_string_lossy().contains(task)
                && p.join("svid.key").exists()
            {
                return Some(p);
            }
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    None
}

/// Whether the mesh at `target` lets a caller presenting `cert`/`key` through to the service.
fn answered_with(target: &str, cert: &Path, key: &Path) -> bool {
    let out = std::process::Command::new("timeout")
        .args([
            "5", "openssl", "s_client", "-connect", target, "-ign_eof", "-cert",
        ])
        .arg(cert)
        .arg("-key")
        .arg(key)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("answer")
}

/// Milliseconds from now until `target` refuses the caller `cert`/`key`.
fn until_refused(target: &str, cert: &Path, key: &Path) -> f64 {
    let start = Instant::now();
    wait_for(wait_limit(), "the kept SVID refused by the mesh", || {
        if answered_with(target, cert, key) {
            Err("still answered".into())
        } else {
            Ok(())
        }
    });
    start.elapsed().as_secs_f64() * 1000.0
}

fn revoke_times(c: &Cluster, probe: &Path, shared: &Path) {
    let m = c.manager();
    let (w1, w2) = (&c.daemons[1], &c.daemons[2]);
    let (h1, h2) = (hostname_of(w1), hostname_of(w2));
    let kept = shared.join("kept");
    std::fs::create_dir_all(&kept).unwrap();
    let on_m = format!("node.hostname=={}", m.name);
    m.cli(&[
        "service",
        "create",
        "--detach",
        "--name",
        "db",
        "--constraint",
        &on_m,
        "--publish",
        "published=18443,target=80,identity=required",
        "--runtime",
        "exec",
        "--",
        probe.to_str().unwrap(),
        "serve",
    ]);
    let sleeper = |name: &str, host: &str| {
        let constraint = format!("node.hostname=={host}");
        m.cli(&[
            "service",
            "create",
            "--detach",
            "--name",
            name,
            "--constraint",
            &constraint,
            "--runtime",
            "exec",
            "--",
            "/bin/sleep",
            "100000",
        ]);
    };
    sleeper("stopper", &h1);
    sleeper("gone", &h2);
    let stopper = task_on(m, "stopper", &h1);
    let gone = task_on(m, "gone", &h2);
    let (s_cert, s_key) = keep_svid(w1, &stopper, &kept);
    let (g_cert, g_key) = keep_svid(w2, &gone, &kept);
    let target = format!("{}:18443", m.addr.rsplit_once(':').unwrap().0);
    wait_for(
        wait_limit(),
        "both kept SVIDs answered while their tasks run",
        || {
            if answered_with(&target, &s_cert, &s_key) && answered_with(&target, &g_cert, &g_key) {
                Ok(())
            } else {
                Err("not yet".into())
            }
        },
    );
    println!();
    println!(
        "== revocation: ms from the CLI returning to a kept copy of the task's SVID refused by the mesh (identity=required port; heartbeat period 1s)"
    );
    m.cli(&["service", "scale", "--detach", "stopper=0"]);
    println!(
        "  task stopped (service scale S=0): {:.0} ms",
        until_refused(&target, &s_cert, &s_key)
    );
    let id2 = m
        .json(&["node", "ls", "--format", "json"])
        .unwrap()
        .iter()
        .find(|n| n["Hostname"] == h2.as_str())
        .and_then(|n| n["ID"].as_str().map(str::to_string))
        .expect("the node to remove");
    m.cli(&["node", "rm", "--force", &id2]);
    println!(
        "  node removed (node rm --force): {:.0} ms",
        until_refused(&target, &g_cert, &g_key)
    );
}
