//! Rotating a secret under running tasks, against the same change made Swarm's way, in one
//! run on one real 3-node cluster (3 `skep daemon` processes: 1 manager, 2 workers, every node
//! running tasks; exec runtime, default security settings: mTLS, sealed store, audited
//! deliveries, Cedar default policy).
//!
//! Each task runs a small static watcher (built here with gcc, never pulled) that reads
//! `/run/secrets/db` and, whenever the content differs from what it last read, appends the
//! wall-clock time and the content to its own file in a shared directory. A run measures,
//! for every task, the time from the CLI returning to that task reading the new value:
//!
//! * `rotate`: `secret update --detach`; the files change in place (parallelism 0: every
//!   task at once; and with the default update parallelism 1). Watchers poll every 5 ms.
//! * `signal`: `secret update --detach` with `on-change=signal:SIGHUP`; watchers read only
//!   when signalled (as a program that reloads on SIGHUP does).
//! * `swarm-way`: a new secret, `service update --detach --secret-rm old --secret-add
//!   source=new,target=/run/secrets/db`, every task replaced (parallelism 1, Swarm's default,
//!   and 0).
//!
//! In-place runs also check that no task was restarted: the same task IDs and watcher
//! processes before and after. `SKEP_BENCH_ROTATION_TASKS` (default 100) sets the number of
//! tasks; `cargo bench --bench rotation -- rotate` runs only the parts whose name contains an
//! argument.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{Daemon, build_static_c, chmod, swarm, wait_for, wait_limit};

const ADDRS: [&str; 3] = ["127.0.93.1:2377", "127.0.93.2:2377", "127.0.93.3:2377"];

const WATCHER_C: &str = r#"
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static volatile sig_atomic_t hup = 0;
static void on_hup(int s) { (void)s; hup = 1; }
static void on_term(int s) { (void)s; _exit(0); }
int main(int argc, char **argv) {
    if (argc < 4) return 2;
    int sig = strcmp(argv[1], "signal") == 0;
    struct sigaction sa; memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term; sigaction(SIGTERM, &sa, 0);
    sa.sa_handler = on_hup; sigaction(SIGHUP, &sa, 0);
    sigset_t block, old; sigemptyset(&block); sigaddset(&block, SIGHUP);
    sigprocmask(SIG_BLOCK, &block, &old);
    struct timespec ts; clock_gettime(CLOCK_REALTIME, &ts);
    unsigned r = 0; int u = open("/dev/urandom", O_RDONLY);
    if (u >= 0) { if (read(u, &r, sizeof r) < 0) r = 0; close(u); }
    char name[512];
    snprintf(name, sizeof name, "%s/w-%ld%09ld-%08x", argv[3], (long)ts.tv_sec, ts.tv_nsec, r);
    int out = open(name, O_WRONLY | O_CREAT | O_EXCL | O_APPEND, 0666);
    if (out < 0) return 3;
    dprintf(out, "pid %d\n", (int)getpid());
    char last[128] = "";
    for (;;) {
        char buf[128]; ssize_t n = -1;
        int fd = open(argv[2], O_RDONLY);
        if (fd >= 0) { n = read(fd, buf, sizeof buf - 1); close(fd); }
        if (n > 0) {
            buf[n] = 0;
            if (strcmp(buf, last) != 0) {
                clock_gettime(CLOCK_REALTIME, &ts);
                dprintf(out, "%ld%09ld %s\n", (long)ts.tv_sec, ts.tv_nsec, buf);
                strcpy(last, buf);
            }
        }
        if (sig) { while (!hup) sigsuspend(&old); hup = 0; }
        else { struct timespec d = {0, 5000000}; nanosleep(&d, 0); }
    }
}
"#;

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |part: &str| filters.is_empty() || filters.iter().any(|f| part.contains(f));
    if !nix::unistd::geteuid().is_root() {
        println!("NOTICE: the rotation bench needs root (exec tasks, tmpfs): skipping");
        return;
    }
    let tasks: usize = std::env::var("SKEP_BENCH_ROTATION_TASKS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    // Outside the cluster's root (0700, and hidden from exec tasks): the watcher and the
    // directory its reads go to, reachable by exec tasks' uid 65534.
    let shared = tempfile::Builder::new()
        .prefix("skep-bench-rotation-shared-")
        .tempdir()
        .unwrap();
    chmod(shared.path(), 0o755);
    let watcher = build_static_c(shared.path(), "watcher", WATCHER_C);
    let c = swarm("skep-bench-rotation-", "rot", &ADDRS);
    let m = c.manager();
    let mut rows: Vec<(String, Row)> = Vec::new();
    let mut n = 0;
    let mut run = |label: &str, how: How, parallelism: u64| {
        n += 1;
        let out = shared.path().join(format!("reads-{n}"));
        std::fs::create_dir(&out).unwrap();
        chmod(&out, 0o777);
        let row = measure(m, &watcher, &out, tasks, n, how, parallelism);
        println!("{label:<34} {}", row.line());
        rows.push((label.to_string(), row));
    };
    println!();
    println!(
        "== rotation: {tasks} exec tasks on 3 nodes (1 manager + 2 workers); ms from the CLI returning to each task reading the new value"
    );
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "how", "p50", "p99", "max", "restarts", "same pid"
    );
    if want("rotate") {
        run("rotate, parallelism 0", How::Rotate, 0);
        run("rotate, parallelism 1 (default)", How::Rotate, 1);
    }
    if want("signal") {
        run("signal:SIGHUP, parallelism 0", How::Signal, 0);
    }
    if want("swarm") {
        run("swarm way, parallelism 0", How::Replace, 0);
        run("swarm way, parallelism 1 (default)", How::Replace, 1);
    }
    let base = rows
        .iter()
        .find(|(l, _)| l.starts_with("swarm way, parallelism 1"))
        .map(|(_, r)| r.max);
    if let Some(base) = base {
        println!();
        println!("ratios of the time to 100% against the swarm way at parallelism 1 (same run):");
        for (label, r) in &rows {
            println!("  {label:<34} {:.3}x", r.max / base);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum How {
    Rotate,
    Signal,
    Replace,
}

struct Row {
    p50: f64,
    p99: f64,
    max: f64,
    restarts: usize,
    /// Every task that read the new value is a process that read the old one (in place);
    /// `None` for the swarm way, where every task is new.
    same_pids: Option<bool>,
}

impl Row {
    fn line(&self) -> String {
        format!(
            "{:>8.1} {:>8.1} {:>8.1} {:>9} {:>9}",
            self.p50,
            self.p99,
            self.max,
            self.restarts,
            self.same_pids.map_or("-".to_string(), |b| b.to_string())
        )
    }
}

/// What each watcher file says: its process and every value it read with the time.
struct Reads {
    pid: String,
    values: Vec<(u128, String)>,
}

fn read_all(dir: &Path) -> BTreeMap<PathBuf, Reads> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let mut reads = Reads {
            pid: String::new(),
            values: Vec::new(),
        };
        for line in text.lines() {
            if let Some(p) = line.strip_prefix("pid ") {
                reads.pid = p.to_string();
            } else if let Some((t, v)) = line.split_once(' ')
                && let Ok(t) = t.parse::<u128>()
            {
                reads.values.push((t, v.to_string()));
            }
        }
        out.insert(e.path(), reads);
    }
    out
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn task_ids(m: &Daemon, service: &str) -> BTreeSet<String> {
    m.json(&["service", "ps", "--no-trunc", "--format", "json", service])
        .unwrap_or_default()
        .iter()
        .filter(|t| t["DesiredState"] == "Running")
        .filter_map(|t| t["ID"].as_str().map(str::to_string))
        .collect()
}

fn measure(
    m: &Daemon,
    watcher: &Path,
    out: &Path,
    tasks: usize,
    n: usize,
    how: How,
    parallelism: u64,
) -> Row {
    let (old, new) = ("A".repeat(32), "B".repeat(32));
    let secret = format!("rot{n}");
    let service = format!("rot{n}");
    m.cli_stdin(&["secret", "create", &secret, "-"], Some(old.as_bytes()));
    let on_change = match how {
        How::Signal => "signal:SIGHUP",
        _ => "rotate",
    };
    let reference = format!("source={secret},target=/run/secrets/db,on-change={on_change}");
    let mode = if how == How::Signal { "signal" } else { "poll" };
    let replicas = tasks.to_string();
    let par = parallelism.to_string();
    let out_s = out.to_str().unwrap();
    m.cli(&[
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        "--name",
        &service,
        "--replicas",
        &replicas,
        "--update-parallelism",
        &par,
        "--update-monitor",
        "1s",
        "--secret",
        &reference,
        "--",
        watcher.to_str().unwrap(),
        mode,
        "/run/secrets/db",
        out_s,
    ]);
    wait_for(wait_limit(), "every watcher read the first value", || {
        let r = read_all(out);
        let ok = r
            .values()
            .filter(|x| x.values.iter().any(|(_, v)| *v == old))
            .count();
        if ok >= tasks {
            Ok(())
        } else {
            Err(format!("{ok}/{tasks}"))
        }
    });
    let before_ids = task_ids(m, &service);
    let before_pids: BTreeSet<String> = read_all(out).values().map(|r| r.pid.clone()).collect();
    let t0 = if how == How::Replace {
        let next = format!("{secret}-next");
        m.cli_stdin(&["secret", "create", &next, "-"], Some(new.as_bytes()));
        let add = format!("source={next},target=/run/secrets/db");
        m.cli(&[
            "service",
            "update",
            "--detach",
            "--secret-rm",
            &secret,
            "--secret-add",
            &add,
            &service,
        ]);
        now_ns()
    } else {
        m.cli_stdin(
            &["secret", "update", "--detach", &secret, "-"],
            Some(new.as_bytes()),
        );
        now_ns()
    };
    let started = Instant::now();
    let lat: Vec<f64> = wait_for(wait_limit(), "every task read the new value", || {
        let r = read_all(out);
        let got: Vec<f64> = r
            .values()
            .filter_map(|x| x.values.iter().find(|(_, v)| *v == new))
            .map(|(t, _)| t.saturating_sub(t0) as f64 / 1e6)
            .collect();
        if got.len() >= tasks {
            Ok(got)
        } else {
            Err(format!(
                "{}/{tasks} after {:?}",
                got.len(),
                started.elapsed()
            ))
        }
    });
    let after_ids = task_ids(m, &service);
    let after_pids: BTreeSet<String> = read_all(out)
        .values()
        .filter(|r| r.values.iter().any(|(_, v)| *v == new))
        .map(|r| r.pid.clone())
        .collect();
    let restarts = after_ids.difference(&before_ids).count();
    let mut v = lat;
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    let row = Row {
        p50: rank(0.5),
        p99: rank(0.99),
        max: v[v.len() - 1],
        restarts,
        same_pids: (how != How::Replace).then(|| after_pids.is_subset(&before_pids)),
    };
    m.cli(&["service", "rm", &service]);
    wait_for(wait_limit(), "the service's tasks gone", || {
        if task_ids(m, &service).is_empty() {
            Ok(())
        } else {
            Err("still there".into())
        }
    });
    // Let the removal settle before the next run (its secret is in use until then).
    let deadline = Instant::now() + Duration::from_secs(60);
    while m.try_cli(&["secret", "rm", &secret]).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    row
}
