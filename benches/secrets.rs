//! Secret delivery on a node: the time from a task's assignment to its secret files being
//! readable, and how it grows with 1, 10 and 100 secrets per task, against a baseline (the
//! same task with no secret) measured in the same run. Two parts:
//!
//! * `micro` (in process, no daemon): `skep::agent::secrets::NodeTmpfs::mount_task_secrets`
//!   (make the task's directory on the node's tmpfs, mounted once before the runs, and write
//!   each file at its mode) and then `TaskSecrets::remove`, timed
//!   separately, for 1, 10 and 100 secrets of 64 bytes and 100 of 4 KiB, each
//!   `SKEP_BENCH_SECRETS_MICRO_RUNS` times (default 200) after a few warm-up runs.
//! * `e2e`: one real `skep daemon` (`swarm init`: a one-node swarm, the node is manager and
//!   runs the tasks), 100 secrets of 64 bytes (`secret-000` .. `secret-099`) created once.
//!   For N in 0, 1, 10, 100, `SKEP_BENCH_SECRETS_RUNS` times (default 10; the Ns take turns so
//!   drift hits them alike): `skep service create --detach --runtime exec --secret secret-000
//!   ... (the first N) -- /bin/sleep 100000`. t0 is taken just before the CLI is spawned; the
//!   bench then polls the node's data directory every ~1 ms (60 s bound per task) for: the
//!   new task's directory, its first and last secret files holding the right bytes
//!   (`<state>/secrets/<task id>/files/<name>`, on the node's tmpfs), and the task's `output` file
//!   (made by the exec init helper once it runs: "task started"). The daemon logs at debug
//!   for the agent's supervisor, so its "secret value received" lines give the moment the
//!   agent got the values with the assignment. Then `service rm`, and the next run waits
//!   until the task's secrets directory is gone, its processes are gone and the agent holds no value
//!   (`skep agent secrets`), so every task's values are sent afresh (the audit chain's count
//!   of `secret.deliver` records, printed at the end, checks it). A warm-up task first checks
//!   the layout on disk and prints it, then one task of each N runs untimed.
//!
//! It prints a table per part (the columns are explained under the e2e tables) and one line
//! per e2e run. Polling costs up to ~1 ms per time; the machine's other load shows up in
//! the max columns, so compare the Ns within one run.
//!
//! Run: `cargo bench --bench secrets` (both parts), or `cargo bench --bench secrets -- micro`
//! (or `-- e2e`) for one. Both need root (tmpfs mounts, exec tasks); without it the bench
//! prints a notice and measures nothing. Daemons, task processes and any mount left under the
//! temporary directories are cleaned up on the way out, even on panic.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::{Cluster, Daemon, mounts_under, pids_mentioning, strip_ansi, unmount_under, wait_for};
use serde_json::Value;
use skep::agent::secrets::{FILES_DIR, NODE_DIR, NodeTmpfs};
use skep::secret::SecretBytes;
use skep::store::service::SecretRef;

/// Secrets per task in the end-to-end part; 0 is the baseline.
const COUNTS: [usize; 4] = [0, 1, 10, 100];
/// Secrets created in the end-to-end part.
const SECRETS: usize = 100;
/// Bytes per secret value in the end-to-end part.
const VALUE_LEN: usize = 64;
/// The micro part's cases: (secrets, bytes each).
const MICRO_CASES: [(usize, usize); 4] = [(1, 64), (10, 64), (100, 64), (100, 4096)];
/// Untimed micro runs before each case.
const MICRO_WARMUP: usize = 10;
/// How long one task may take to show its secrets and start, or to be cleaned up.
const TASK_WAIT: Duration = Duration::from_secs(60);
/// Polling period of the end-to-end part.
const TICK: Duration = Duration::from_millis(1);
/// The daemon's address (join.rs uses 127.0.91.1, services.rs 127.0.92.x and 127.0.93.1,
/// revocation.rs 127.0.95.1).
const ADDR: &str = "127.0.94.1:2377";
/// The exec task's file that exists once its init helper runs.
const OUTPUT_FILE: &str = "output";

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
        .max(1)
}

fn main() {
    // `cargo bench` passes `--bench`; other arguments choose the parts to run.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |part: &str| filters.is_empty() || filters.iter().any(|f| part.contains(f));
    if !nix::unistd::geteuid().is_root() {
        println!(
            "NOTICE: the secrets bench needs root (tmpfs mounts, exec tasks): skipping, nothing measured"
        );
        return;
    }
    if want("micro") {
        micro();
    }
    if want("e2e") {
        e2e();
    }
}

// ------------------------------------------------------------------ statistics

#[derive(Clone, Copy)]
struct Stats {
    p50: f64,
    mean: f64,
    p99: f64,
    max: f64,
}

/// Nearest-rank percentiles, mean and max; `None` for no sample.
fn stats(xs: impl IntoIterator<Item = f64>) -> Option<Stats> {
    let mut v: Vec<f64> = xs.into_iter().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    Some(Stats {
        p50: rank(0.50),
        mean: v.iter().sum::<f64>() / v.len() as f64,
        p99: rank(0.99),
        max: v[v.len() - 1],
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `x` right-aligned in `w` columns with one decimal, or `-`.
fn num(x: Option<f64>, w: usize) -> String {
    match x {
        Some(x) => format!("{x:>w$.1}"),
        None => format!("{:>w$}", "-"),
    }
}

// ------------------------------------------------------------------ secrets

fn secret_name(i: usize) -> String {
    format!("secret-{i:03}")
}

/// The value of secret `i`: `len` bytes, different for every secret.
fn secret_value(i: usize, len: usize) -> Vec<u8> {
    let head = format!("value-of-{}-", secret_name(i));
    head.bytes()
        .chain((0..).map(|k| b'a' + ((i + k) % 26) as u8))
        .take(len)
        .collect()
}

// ------------------------------------------------------------------ micro

/// Unmounts whatever is still mounted under a directory when dropped (even on panic).
struct UnmountOnDrop(PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        unmount_under(&self.0);
    }
}

fn micro() {
    let runs = env_usize("SKEP_BENCH_SECRETS_MICRO_RUNS", 200);
    let dir = tempfile::Builder::new()
        .prefix("skep-bench-secrets-micro-")
        .tempdir()
        .unwrap();
    // Declared after `dir`, so dropped before it: the tmpfs goes before the directory.
    let _unmount = UnmountOnDrop(dir.path().to_path_buf());
    let tmpfs = NodeTmpfs::new(dir.path());
    let mut rows = Vec::new();
    for (n, size) in MICRO_CASES {
        let refs: Vec<SecretRef> = (0..n)
            .map(|i| SecretRef {
                secret_id: format!("id-{i:03}"),
                ..SecretRef::new(&secret_name(i))
            })
            .collect();
        let values: HashMap<String, SecretBytes> = (0..n)
            .map(|i| {
                (
                    format!("id-{i:03}"),
                    SecretBytes::new(secret_value(i, size)),
                )
            })
            .collect();
        let last = PathBuf::from(FILES_DIR).join(secret_name(n - 1));
        let mut mount = Vec::with_capacity(runs);
        let mut unmount = Vec::with_capacity(runs);
        for k in 0..MICRO_WARMUP + runs {
            let t = Instant::now();
            let m = tmpfs
                .mount_task_secrets("task", &refs, &values)
                .unwrap_or_else(|e| panic!("mount_task_secrets with {n} secrets: {e}"));
            let mounted = t.elapsed();
            // Outside the timing: the last file is there with its bytes.
            let got = std::fs::read(tmpfs.root().join("task").join(&last)).unwrap();
            assert_eq!(got, secret_value(n - 1, size), "{}", last.display());
            let t = Instant::now();
            m.remove();
            let unmounted = t.elapsed();
            if k >= MICRO_WARMUP {
                mount.push(us(mounted));
                unmount.push(us(unmounted));
            }
        }
        assert!(
            list_dir(tmpfs.root()).is_empty(),
            "a task directory is left under {}",
            tmpfs.root().display()
        );
        rows.push((n, size, stats(mount), stats(unmount)));
    }
    println!();
    println!(
        "== micro: NodeTmpfs::mount_task_secrets (the task's directory + its files) and TaskSecrets::remove, in process, {runs} runs per row (after {MICRO_WARMUP} warm-up), microseconds"
    );
    println!(
        "{:>16} | {:>8} {:>8} {:>8} {:>8} | {:>10} | {:>8} {:>8} {:>8} {:>8}",
        "secrets x bytes",
        "mnt p50",
        "mean",
        "p99",
        "max",
        "mean/secr",
        "umnt p50",
        "mean",
        "p99",
        "max"
    );
    for (n, size, m, u) in rows {
        let (Some(m), Some(u)) = (m, u) else { continue };
        println!(
            "{:>16} | {} {} {} {} | {} | {} {} {} {}",
            format!("{n} x {size}"),
            num(Some(m.p50), 8),
            num(Some(m.mean), 8),
            num(Some(m.p99), 8),
            num(Some(m.max), 8),
            num(Some(m.mean / n as f64), 10),
            num(Some(u.p50), 8),
            num(Some(u.mean), 8),
            num(Some(u.p99), 8),
            num(Some(u.max), 8),
        );
    }
}

// ------------------------------------------------------------------ end to end

/// One end-to-end run; times in ms from t0 (just before `service create` is spawned).
struct Run {
    /// `service create --detach` returned.
    cli: f64,
    /// The task's directory appeared under the agent's tasks directory.
    dir: f64,
    /// First "secret value received" log line of this task's secrets (the agent got the
    /// values with the assignment); N > 0 only, and only if the values came that way.
    recv: Option<f64>,
    /// `secret-000` readable with its bytes (N > 0).
    first: Option<f64>,
    /// The last of the N secrets readable with its bytes (N > 0).
    readable: Option<f64>,
    /// The task's `output` file exists: its init helper runs.
    started: f64,
    /// From `service rm` until the task's tmpfs is unmounted and its processes are gone.
    clean: f64,
}

/// The node's daemon, in a [`Cluster`] so that dropping it kills the daemon and every task
/// process and unmounts what is left under the temporary root.
fn start_node() -> Cluster {
    let root = tempfile::Builder::new()
        .prefix("skep-bench-secrets-")
        .tempdir()
        .unwrap();
    let d = Daemon::start_with(
        root.path(),
        "secrets-m1",
        ADDR,
        &[
            ("SKEP_LOG", "info,skep::agent::supervisor=debug"),
            ("NO_COLOR", "1"),
        ],
    );
    let cluster = Cluster {
        daemons: vec![d],
        root,
    };
    let m = cluster.manager();
    m.init_swarm();
    cluster
}

fn service_args(name: &str, n: usize) -> Vec<String> {
    let mut args: Vec<String> = [
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        "--name",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(name.into());
    for i in 0..n {
        args.push("--secret".into());
        args.push(secret_name(i));
    }
    args.extend(["--", "/bin/sleep", "100000"].map(String::from));
    args
}

/// `service ps --no-trunc --format json name`.
fn tasks_of(m: &Daemon, name: &str) -> Result<Vec<Value>, String> {
    m.json(&["service", "ps", "--no-trunc", "--format", "json", name])
}

/// A directory named `name` at most `depth` levels under `dir`, not on the node's secrets
/// tmpfs (where the task has a directory of the same name).
fn find_dir(dir: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut subdirs = Vec::new();
    for e in entries.flatten() {
        if !e.file_type().is_ok_and(|t| t.is_dir()) || e.file_name() == NODE_DIR {
            continue;
        }
        if e.file_name().to_string_lossy() == name {
            return Some(e.path());
        }
        subdirs.push(e.path());
    }
    if depth == 0 {
        return None;
    }
    subdirs.iter().find_map(|d| find_dir(d, name, depth - 1))
}

fn list_dir(dir: &Path) -> HashSet<OsString> {
    std::fs::read_dir(dir)
        .map(|es| es.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default()
}

/// The directory of the task whose directory on disk is `task_dir` on the node's tmpfs
/// (`<state>/tasks/<id>` → `<state>/secrets/<id>`).
fn secrets_dir(task_dir: &Path) -> PathBuf {
    let state = task_dir.parent().and_then(Path::parent).unwrap();
    state.join(NODE_DIR).join(task_dir.file_name().unwrap())
}

/// Waits until nothing is mounted under `task_dir`, its secrets directory is gone and no
/// process mentions it.
fn wait_clean(task_dir: &Path, what: &str) {
    let deadline = Instant::now() + TASK_WAIT;
    loop {
        let mut mounts = mounts_under(task_dir);
        mounts.extend(Some(secrets_dir(task_dir)).filter(|d| d.exists()));
        let pids = pids_mentioning(task_dir, None);
        if mounts.is_empty() && pids.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {TASK_WAIT:?} after `service rm`, {} still has mounts {mounts:?} and processes {pids:?}",
            task_dir.display()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until the node's agent holds no secret value (`skep agent secrets`): the removed
/// task is gone on both sides, so the next task's values must be sent again (a task still
/// assigned with desired state Shutdown keeps its values on the node and in the dispatcher's
/// record of what the node holds, and a next task would get them for free).
fn wait_no_values(m: &Daemon, what: &str) {
    let deadline = Instant::now() + TASK_WAIT;
    loop {
        let held: Vec<String> = match m.json(&["agent", "secrets", "--format", "json"]) {
            Ok(rs) => rs
                .iter()
                .filter(|r| r["held"] == true)
                .map(|r| r["name"].as_str().unwrap_or("?").to_string())
                .collect(),
            Err(e) => vec![format!("(agent secrets failed: {e})")],
        };
        if held.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {TASK_WAIT:?} after `service rm`, the node still holds {} values: {held:?}",
            held.len()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A warm-up task with one secret, not counted: finds where the agent keeps tasks (checking
/// the layout the measured runs rely on) and returns that directory.
fn discover_layout(m: &Daemon) -> PathBuf {
    let name = "secrets-warmup";
    let args = service_args(name, 1);
    m.cli(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let id = wait_for(TASK_WAIT, "the warm-up task to run", || {
        let tasks = tasks_of(m, name)?;
        let t = tasks.first().ok_or("no task yet")?;
        let state = t["CurrentState"].as_str().unwrap_or("");
        match t["ID"].as_str() {
            Some(id) if state.starts_with("Running") => Ok(id.to_string()),
            _ => Err(format!("{t}")),
        }
    });
    let data = m.data_dir();
    let task_dir = find_dir(&data, &id, 4).unwrap_or_else(|| {
        panic!(
            "no directory named after task {id} under {}",
            data.display()
        )
    });
    let tasks_dir = task_dir.parent().unwrap().to_path_buf();
    let mount_point = tasks_dir.parent().unwrap().join(NODE_DIR);
    let file = secrets_dir(&task_dir).join(FILES_DIR).join(secret_name(0));
    let got = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(got, secret_value(0, VALUE_LEN), "{}", file.display());
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    // The last mount there is the one seen: the agent binds the node's directory onto itself
    // (to make it private) and mounts the tmpfs over that.
    let line = mountinfo
        .lines()
        .rfind(|l| l.split(' ').nth(4) == Some(&*mount_point.to_string_lossy()))
        .unwrap_or_else(|| panic!("{} is not a mount point", mount_point.display()));
    assert!(line.contains("tmpfs"), "not a tmpfs: {line}");
    assert!(
        task_dir.join(OUTPUT_FILE).exists(),
        "a running exec task has no {}",
        task_dir.join(OUTPUT_FILE).display()
    );
    let rel = |p: &Path| {
        p.strip_prefix(&data)
            .map(|r| format!("<data-dir>/{}", r.display()))
            .unwrap_or_else(|_| p.display().to_string())
    };
    eprintln!(
        "layout (checked on a warm-up task): task dir {}; secret file {} on a tmpfs; started marker {}",
        rel(&task_dir),
        rel(&file),
        rel(&task_dir.join(OUTPUT_FILE))
    );
    m.cli(&["service", "rm", name]);
    wait_clean(&task_dir, "warm-up");
    wait_no_values(m, "warm-up");
    tasks_dir
}

/// Milliseconds from `wall0` to the first "secret value received" line (from byte `offset` of
/// the daemon's log) for one of `names`.
fn received_at(log: &Path, offset: u64, wall0: SystemTime, names: &HashSet<String>) -> Option<f64> {
    let bytes = std::fs::read(log).ok()?;
    let text = String::from_utf8_lossy(bytes.get(offset as usize..)?);
    let t0 = time::OffsetDateTime::from(wall0);
    text.lines()
        .filter(|l| l.contains("secret value received"))
        .filter_map(|l| {
            let l = strip_ansi(l);
            let name = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("secret="))?;
            if !names.contains(name) {
                return None;
            }
            let ts = l.split_whitespace().next()?;
            let at =
                time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339)
                    .ok()?;
            Some((at - t0).as_seconds_f64() * 1e3)
        })
        .reduce(f64::min)
}

/// `Some(elapsed ms)` if the file holds exactly `want`.
fn readable(path: &Path, want: &[u8], t0: Instant) -> Option<f64> {
    match std::fs::read(path) {
        Ok(b) if b == want => Some(ms(t0.elapsed())),
        _ => None,
    }
}

/// `skep --host unix://<socket> args`, watched every 0.1 ms (the shared `Daemon::try_cli`
/// looks every 5 ms): its result and the ms from `t0` to its exit being seen.
fn timed_cli(m: &Daemon, args: &[&str], t0: Instant) -> (Result<(), String>, f64) {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_skep"))
        .arg("--host")
        .arg(format!("unix://{}", m.socket().display()))
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return (Err(format!("cannot run the CLI: {e}")), ms(t0.elapsed())),
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Ok(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_micros(100)),
            Ok(None) => break Err("the CLI did not finish within 120 s".to_string()),
            Err(e) => break Err(format!("waiting for the CLI: {e}")),
        }
    };
    let at = ms(t0.elapsed());
    let status = match status {
        Ok(st) => st,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return (Err(e), at);
        }
    };
    if status.success() {
        return (Ok(()), at);
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    (Err(format!("{status}: {}", err.trim())), at)
}

/// One measured task: create a service with the first `n` secrets, time its delivery and
/// start, remove it and wait until the node is clean.
fn measure(m: &Daemon, tasks_dir: &Path, name: &str, n: usize) -> Run {
    let before = list_dir(tasks_dir);
    let log = m.log_path();
    let log_offset = std::fs::metadata(&log).map(|md| md.len()).unwrap_or(0);
    let args = service_args(name, n);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let first_want = secret_value(0, VALUE_LEN);
    let last_want = secret_value(n.saturating_sub(1), VALUE_LEN);
    let last_name = secret_name(n.saturating_sub(1));

    let wall0 = SystemTime::now();
    let t0 = Instant::now();
    let (cli, dir, first, last, started) = std::thread::scope(|s| {
        let mut handle = Some(s.spawn(|| timed_cli(m, &args, t0)));
        let mut cli = None;
        let mut dir: Option<(PathBuf, f64)> = None;
        let (mut first, mut last, mut started) = (None, None, None);
        let deadline = t0 + TASK_WAIT;
        loop {
            if handle.as_ref().is_some_and(|h| h.is_finished())
                && let Some(h) = handle.take()
            {
                let (r, at) = h.join().unwrap();
                if let Err(e) = r {
                    panic!("skep service create ({name}, {n} secrets): {e}");
                }
                cli = Some(at);
            }
            if dir.is_none()
                && let Some(new) = list_dir(tasks_dir)
                    .into_iter()
                    .find(|e| !before.contains(e))
            {
                dir = Some((tasks_dir.join(new), ms(t0.elapsed())));
            }
            if let Some((d, _)) = &dir {
                let files = secrets_dir(d).join(FILES_DIR);
                if n > 0 && first.is_none() {
                    first = readable(&files.join(secret_name(0)), &first_want, t0);
                }
                if n > 0 && last.is_none() {
                    last = readable(&files.join(&last_name), &last_want, t0);
                }
                if started.is_none() && d.join(OUTPUT_FILE).exists() {
                    started = Some(ms(t0.elapsed()));
                }
            }
            if cli.is_some() && started.is_some() && (n == 0 || last.is_some()) {
                break;
            }
            if Instant::now() >= deadline {
                let seen = dir.as_ref().map(|(d, _)| {
                    let files = list_dir(&secrets_dir(d).join(FILES_DIR)).len();
                    format!(
                        "task dir {} ({files} secret files, output {})",
                        d.display(),
                        d.join(OUTPUT_FILE).exists()
                    )
                });
                panic!(
                    "{name}: within {TASK_WAIT:?} of `service create` with {n} secrets: CLI returned {cli:?}, {}, last secret readable {last:?}, started {started:?}; tasks: {:?}",
                    seen.unwrap_or_else(|| format!("no new directory in {}", tasks_dir.display())),
                    tasks_of(m, name)
                );
            }
            std::thread::sleep(TICK);
        }
        (cli, dir, first, last, started)
    });
    let (task_dir, dir_at) = dir.unwrap();

    // The new directory is this service's task.
    let id = task_dir.file_name().unwrap().to_string_lossy().into_owned();
    let tasks = tasks_of(m, name).unwrap_or_else(|e| panic!("service ps {name}: {e}"));
    assert!(
        tasks.iter().any(|t| t["ID"] == id.as_str()),
        "{} is not a task of {name}: {tasks:?}",
        task_dir.display()
    );

    let names: HashSet<String> = (0..n).map(secret_name).collect();
    let recv = received_at(&log, log_offset, wall0, &names);

    let rm = Instant::now();
    m.cli(&["service", "rm", name]);
    wait_clean(&task_dir, name);
    let clean = ms(rm.elapsed());
    wait_no_values(m, name);
    Run {
        cli: cli.unwrap(),
        dir: dir_at,
        recv,
        first,
        readable: last,
        started: started.unwrap(),
        clean,
    }
}

fn e2e() {
    let runs = env_usize("SKEP_BENCH_SECRETS_RUNS", 10);
    let cluster = start_node();
    let m = cluster.manager();
    let t = Instant::now();
    for i in 0..SECRETS {
        let value = secret_value(i, VALUE_LEN);
        m.cli_stdin(&["secret", "create", &secret_name(i), "-"], Some(&value));
    }
    eprintln!(
        "e2e: {SECRETS} secrets of {VALUE_LEN} bytes created in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let tasks_dir = discover_layout(m);
    // One untimed task of each size first: the first tasks pay for cold caches.
    for n in COUNTS {
        measure(m, &tasks_dir, &format!("secrets{n}-warmup"), n);
    }

    let mut by_n: BTreeMap<usize, Vec<Run>> = BTreeMap::new();
    for r in 0..runs {
        for n in COUNTS {
            let run = measure(m, &tasks_dir, &format!("secrets{n}-{r}"), n);
            eprintln!(
                "e2e N={n:>3} run {:>2}/{runs}: cli {} dir {} recv {} first {} last {} started {} | rm->clean {} (ms)",
                r + 1,
                num(Some(run.cli), 6),
                num(Some(run.dir), 6),
                num(run.recv, 6),
                num(run.first, 6),
                num(run.readable, 6),
                num(Some(run.started), 6),
                num(Some(run.clean), 6),
            );
            by_n.entry(n).or_default().push(run);
        }
    }
    report(&by_n, runs);
    deliveries(m, runs);
    drop(cluster);
}

/// How the values reached the node, from the audit chain: with the assignment (`via=session`)
/// or asked for by the agent (`via=request`, `GetSecret`), against what every task needed.
fn deliveries(m: &Daemon, runs: usize) {
    let records = match m.json(&["audit", "ls", "--json"]) {
        Ok(r) => r,
        Err(e) => {
            println!("(cannot read the audit chain: {e})");
            return;
        }
    };
    let mut via: BTreeMap<String, usize> = BTreeMap::new();
    for r in records.iter().filter(|r| r["action"] == "secret.deliver") {
        let v = r["details"]["via"].as_str().unwrap_or("?").to_string();
        *via.entry(v).or_default() += 1;
    }
    // The layout check's task, one untimed task per N, then `runs` of each.
    let needed = 1 + COUNTS.iter().sum::<usize>() * (1 + runs);
    println!(
        "secret deliveries on the audit chain: {via:?}; the tasks of this run needed {needed} values"
    );
}

fn report(by_n: &BTreeMap<usize, Vec<Run>>, runs: usize) {
    let col = |runs: &[Run], f: &dyn Fn(&Run) -> Option<f64>| stats(runs.iter().filter_map(f));
    let base = by_n
        .get(&0)
        .and_then(|r| col(r, &|r: &Run| Some(r.started)));

    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!(
        "== e2e: one node (manager + worker) on {cpus} CPUs, exec task `/bin/sleep`, {VALUE_LEN}-byte secrets, {runs} runs per N (after 1 untimed); ms from t0 = just before `skep service create --detach` is spawned"
    );
    println!(
        "{:>4} | {:>26} | {:>26} | {:>24}",
        "N", "last secret readable", "task started", "started vs N=0 baseline"
    );
    println!(
        "{:>4} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>7} {:>7} {:>8}",
        "", "p50", "mean", "max", "p50", "mean", "max", "p50 x", "mean x", "p50 +ms"
    );
    for (n, rs) in by_n {
        let rd = col(rs, &|r: &Run| r.readable);
        let st = col(rs, &|r: &Run| Some(r.started));
        let (ratio50, ratio_mean, plus) = match (st, base) {
            (Some(s), Some(b)) => (
                Some(s.p50 / b.p50),
                Some(s.mean / b.mean),
                Some(s.p50 - b.p50),
            ),
            _ => (None, None, None),
        };
        let ratio = |x: Option<f64>| match x {
            Some(x) => format!("{x:>7.2}"),
            None => format!("{:>7}", "-"),
        };
        println!(
            "{n:>4} | {} {} {} | {} {} {} | {} {} {}",
            num(rd.map(|s| s.p50), 8),
            num(rd.map(|s| s.mean), 8),
            num(rd.map(|s| s.max), 8),
            num(st.map(|s| s.p50), 8),
            num(st.map(|s| s.mean), 8),
            num(st.map(|s| s.max), 8),
            ratio(ratio50),
            ratio(ratio_mean),
            num(plus, 8),
        );
    }

    println!();
    println!(
        "== e2e breakdown, p50 over the runs, ms: the first six columns from t0, the next four differences within each run, the last from `skep service rm`"
    );
    println!(
        "{:>4} | {:>8} {:>8} {:>8} {:>8} {:>9} {:>8} | {:>9} {:>9} {:>9} {:>10} | {:>9}",
        "N",
        "CLI done",
        "task dir",
        "received",
        "1st file",
        "last file",
        "started",
        "CLI>dir",
        "recv>last",
        "1st>last",
        "last>start",
        "rm>clean"
    );
    for (n, rs) in by_n {
        let p50 = |f: &dyn Fn(&Run) -> Option<f64>| col(rs, f).map(|s| s.p50);
        println!(
            "{n:>4} | {} {} {} {} {} {} | {} {} {} {} | {}",
            num(p50(&|r| Some(r.cli)), 8),
            num(p50(&|r| Some(r.dir)), 8),
            num(p50(&|r| r.recv), 8),
            num(p50(&|r| r.first), 8),
            num(p50(&|r| r.readable), 9),
            num(p50(&|r| Some(r.started)), 8),
            num(p50(&|r| Some(r.dir - r.cli)), 9),
            num(p50(&|r| Some(r.readable? - r.recv?)), 9),
            num(p50(&|r| Some(r.readable? - r.first?)), 9),
            num(p50(&|r| r.readable.map(|l| r.started - l)), 10),
            num(p50(&|r| Some(r.clean)), 9),
        );
    }
    let samples: usize = by_n.values().map(Vec::len).sum();
    let n_runs = by_n.values().map(|r| r.len()).max().unwrap_or(0);
    println!(
        "({samples} measured tasks, up to {n_runs} per N; polling every {TICK:?}, so each time is late by up to ~1 ms plus the poll's own cost; p50 is the nearest-rank median)"
    );
    for (n, rs) in by_n.iter().filter(|(n, _)| **n > 0) {
        let missing = rs.iter().filter(|r| r.recv.is_none()).count();
        if missing > 0 {
            println!(
                "N={n}: {missing} of {} runs had no \"secret value received\" line: the values did not come with the assignment (the audit count below says how they came: via=request is the agent asking with GetSecret)",
                rs.len()
            );
        }
    }
    println!(
        "columns: CLI done = `service create --detach` returned (the service is committed); \
         task dir = the task's directory appeared in <data-dir>/tasks/tasks (N=0: the exec runtime \
         is about to spawn the init helper; N>0: the agent holds the values and is about to mount \
         the tmpfs); received = first \"secret value received\" debug line of the daemon (the \
         dispatcher sends a task and its values in one message, so this is the agent receiving \
         the assignment); 1st/last file = secret-000 / the N-th secret readable on the node with \
         its bytes; started = the exec init helper created the task's `output` file; \
         CLI>dir = orchestrate, schedule, audit the deliveries (N>0), send, agent receipt; \
         recv>last = the agent's mount + writes as seen from outside; rm>clean = `service rm` \
         until the tmpfs is unmounted and the task's processes are gone."
    );
}
