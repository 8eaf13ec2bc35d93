//! The test harness: [`Node`] is one real `skep daemon` process, [`Cluster`] a swarm of them.
//!
//! ```text
//!  Node ── spawns ──► skep daemon --data-dir <tmp>/data --socket <tmp>/skep.sock
//!   │                   --listen-addr 127.X.Y.Z:2377 --hostname <name> --heartbeat-period 300ms
//!   │                   (stderr and stdout appended to <tmp>/daemon.log)
//!   └── cli(args) ──► skep --host unix://<tmp>/skep.sock <args>   (with a timeout)
//! ```
//!
//! Waits poll a condition with a short interval up to a deadline and fail with what they last
//! saw; there are no fixed sleeps standing in for waits.
// Helpers for every topic module; not each of them uses every helper.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// The daemons' heartbeat period in tests: Down is noticed after about a second.
pub const HEARTBEAT: &str = "300ms";
/// The port every node listens on; nodes differ by address.
pub const PORT: u16 = 2377;
const POLL: Duration = Duration::from_millis(100);
const LOG_TAIL_LINES: usize = 200;

/// How long a wait may take: 30 s, times `SKEP_IT_TIMEOUT_SCALE` (for slow machines).
pub fn timeout() -> Duration {
    scaled(Duration::from_secs(30))
}

/// How long one CLI command may take before the test fails: 60 s, scaled.
pub fn cli_timeout() -> Duration {
    scaled(Duration::from_secs(60))
}

fn scaled(d: Duration) -> Duration {
    let scale = std::env::var("SKEP_IT_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| *s > 0.0)
        .unwrap_or(1.0);
    d.mul_f64(scale)
}

/// The `skep` binary under test.
pub fn skep_bin() -> &'static str {
    env!("CARGO_BIN_EXE_skep")
}

/// A test that cannot run here (no root for the exec runtime, no Docker Engine, a test
/// program that does not build): fails, so CI never passes by skipping; with
/// `SKEP_IT_ALLOW_SKIP=1` (a developer machine without Docker, say) it prints a notice and the
/// caller returns.
pub fn cannot_run(reason: impl std::fmt::Display) {
    if std::env::var_os("SKEP_IT_ALLOW_SKIP").is_some_and(|v| v == "1") {
        eprintln!("NOTICE: {reason}: skipping (SKEP_IT_ALLOW_SKIP=1)");
        return;
    }
    panic!("this test cannot run here: {reason} (set SKEP_IT_ALLOW_SKIP=1 to skip it on purpose)");
}

// ------------------------------------------------------------------ waiting

/// Polls `cond` until it holds; panics after `within` naming `what`.
pub fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(within, what, || {
        if cond() {
            Ok(())
        } else {
            Err("not yet".into())
        }
    })
}

/// Polls `f` until it returns `Ok`; panics after `within` naming `what` and the last `Err`,
/// which should say what was seen instead.
pub fn wait_for<T>(within: Duration, what: &str, f: impl FnMut() -> Result<T, String>) -> T {
    try_wait_for(within, what, f).unwrap_or_else(|e| panic!("{e}"))
}

/// Like [`wait_for`], but returns the failure (naming `what` and the last `Err`) instead of
/// panicking: for a test that collects every failed check before it fails.
pub fn try_wait_for<T>(
    within: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let deadline = Instant::now() + within;
    loop {
        let last = match f() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "timed out after {within:?} waiting for {what}; last seen: {last}"
            ));
        }
        std::thread::sleep(POLL);
    }
}

// ------------------------------------------------------------------ running the CLI

/// Runs `skep` with these arguments and no daemon behind it unless `--host` names one.
pub fn skep(args: &[&str]) -> Output {
    run(Command::new(skep_bin()).args(args), None)
}

/// Runs `skep` with `stdin` piped in.
pub fn skep_stdin(args: &[&str], stdin: &str) -> Output {
    run(Command::new(skep_bin()).args(args), Some(stdin))
}

/// Runs a command to completion, feeding `stdin`, killing it after [`cli_timeout`].
pub fn run(cmd: &mut Command, stdin: Option<&str>) -> Output {
    let what = format!("{cmd:?}");
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A command that exits without reading its input closes the pipe: not our failure.
        let _ = pipe.write_all(input.as_bytes());
    }
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + cli_timeout();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not finish within {:?}", cli_timeout());
            }
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    };
    Output {
        status,
        stdout: join(out),
        stderr: join(err),
    }
}

fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    })
}

fn join(h: std::thread::JoinHandle<Vec<u8>>) -> Vec<u8> {
    h.join().unwrap_or_default()
}

/// The stdout of a command as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The stderr of a command as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A command's outcome for a panic message.
pub fn describe(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status,
        stdout(out),
        stderr(out)
    )
}

/// Asserts the CLI failed the way a refused or failed command does: exit 1 and a one-line
/// `Error: ...` on stderr that contains `needle`, with no panic and no gRPC debug output.
pub fn assert_error(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit 1\n{}",
        describe(out)
    );
    assert!(
        err.starts_with("Error: "),
        "stderr should start with `Error: `\n{}",
        describe(out)
    );
    assert!(
        err.contains(needle),
        "stderr should contain {needle:?}\n{}",
        describe(out)
    );
    assert!(
        !err.contains("panicked"),
        "the CLI panicked\n{}",
        describe(out)
    );
    assert!(
        !err.contains("Status {"),
        "a tonic::Status debug leaked\n{}",
        describe(out)
    );
}

/// Asserts clap refused the arguments: exit 2 and clap's `error: ...` message.
pub fn assert_usage_error(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected a usage error (exit 2)\n{}",
        describe(out)
    );
    assert!(
        stderr(out).starts_with("error: "),
        "expected clap's message\n{}",
        describe(out)
    );
}

/// Parses JSON lines (`node ls --format json`, `audit ls --json`).
pub fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

// ------------------------------------------------------------------ addresses

static NEXT_ADDR: AtomicU32 = AtomicU32::new(0);

/// A loopback address no other node of this test run has: `127.X.Y.Z`, X from the process ID
/// (so concurrent test runs tend to differ) and Y.Z from a counter (so nodes of one run never
/// collide). An address whose port is taken (another run, a stray daemon) is skipped.
pub fn fresh_addr() -> SocketAddr {
    let x = 10 + u8::try_from(std::process::id() % 200).unwrap();
    for _ in 0..1000 {
        let n = NEXT_ADDR.fetch_add(1, Ordering::SeqCst);
        assert!(n < 250 * 250, "out of loopback addresses");
        let y = u8::try_from(n / 250).unwrap();
        let z = u8::try_from(n % 250).unwrap() + 1;
        let addr = SocketAddr::from((Ipv4Addr::new(127, x, y, z), PORT));
        if TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("port {PORT} is taken on every address tried: is a daemon listening on 0.0.0.0:{PORT}?")
}

// ------------------------------------------------------------------ a node

/// One `skep daemon` process with its own directory (data, socket, log) and address. Dropping it
/// kills and reaps the daemon; if the test is failing, it prints the tail of the daemon's log.
/// Set `SKEP_IT_KEEP=1` to keep the directories.
pub struct Node {
    name: String,
    root: Option<TempDir>,
    dir: PathBuf,
    addr: SocketAddr,
    /// Where other nodes are told to reach it, when not `addr` (a test's proxy).
    advertise: Option<SocketAddr>,
    extra_args: Vec<String>,
    wrapper: Vec<String>,
    /// The `skep` binary the daemon runs, when not the one under test (an upgrade test).
    bin: Option<PathBuf>,
    child: Option<Child>,
    id: Option<String>,
}

impl Node {
    /// Starts a daemon named `name` (its host name) and waits until its socket answers.
    pub fn start(name: &str) -> Node {
        Node::start_with(name, &[])
    }

    /// Like [`Node::start`], with extra `skep daemon` flags (kept for restarts).
    pub fn start_with(name: &str, extra_args: &[&str]) -> Node {
        let mut node = Node::new(name, extra_args);
        node.spawn();
        node.wait_up();
        node
    }

    /// A node that is not running yet: call [`Node::spawn`] and [`Node::wait_up`].
    pub fn new(name: &str, extra_args: &[&str]) -> Node {
        let root = tempfile::Builder::new()
            .prefix(&format!("skep-it-{name}-"))
            .tempdir()
            .expect("creating the node's directory");
        let dir = root.path().to_path_buf();
        std::fs::create_dir_all(dir.join("data")).expect("creating the data directory");
        Node {
            name: name.to_string(),
            root: Some(root),
            dir,
            addr: fresh_addr(),
            advertise: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            wrapper: Vec::new(),
            bin: None,
            child: None,
            id: None,
        }
    }

    /// Has the daemon advertise `addr` (e.g. a recording proxy in front of it) instead of the
    /// address it listens at.
    pub fn advertising(mut self, addr: SocketAddr) -> Node {
        self.advertise = Some(addr);
        self
    }

    /// Listens and advertises at `addr` instead of a fresh loopback address (a node in a
    /// network namespace of its own, at an address the test gave that namespace).
    pub fn at(mut self, addr: SocketAddr) -> Node {
        self.addr = addr;
        self
    }

    /// Runs the daemon through `wrapper` (a program and its arguments, e.g. `setpriv ...`),
    /// which is given `skep daemon ...` as the rest of its command line.
    pub fn wrapped(mut self, wrapper: &[&str]) -> Node {
        self.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Runs the daemon from `bin` from the next start on (an upgraded binary), instead of the
    /// `skep` under test (or `SKEP_IT_DAEMON_BIN`).
    pub fn set_bin(&mut self, bin: &Path) {
        self.bin = Some(bin.to_path_buf());
    }

    /// The binary the daemon runs: [`Node::set_bin`]'s, else `SKEP_IT_DAEMON_BIN` (to run a
    /// test against another build's daemon, e.g. to see it fail before a fix), else the `skep`
    /// under test.
    pub fn daemon_bin(&self) -> PathBuf {
        self.bin
            .clone()
            .or_else(|| std::env::var_os("SKEP_IT_DAEMON_BIN").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(skep_bin()))
    }

    /// Replaces the extra `skep daemon` flags used from the next start on.
    pub fn set_extra_args(&mut self, extra_args: &[&str]) {
        self.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
    }

    /// The host name (and test name) of the node.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// `IP:PORT` the node listens and advertises at.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }
    /// The node's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
    /// The admin socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("skep.sock")
    }
    /// `--host` for this node.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }
    /// The daemon's log (stdout and stderr of every start).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }
    /// The daemon's whole log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
    /// The last lines of the daemon's log.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        let from = lines.len().saturating_sub(LOG_TAIL_LINES);
        lines[from..].join("\n")
    }

    /// The node's ID, once known (set by [`Cluster`] or [`Node::learn_id`]).
    pub fn id(&self) -> &str {
        self.id
            .as_deref()
            .unwrap_or_else(|| panic!("the ID of {} is not known yet", self.name))
    }

    /// Records the node's ID.
    pub fn set_id(&mut self, id: &str) {
        self.id = Some(id.to_string());
    }

    /// Learns the node's ID from its own `node ls` (managers only).
    pub fn learn_id(&mut self) -> String {
        let me = self
            .node_ls()
            .into_iter()
            .find(|n| n["Self"] == true)
            .unwrap_or_else(|| panic!("{} does not list itself", self.name));
        let id = me["ID"].as_str().unwrap().to_string();
        self.id = Some(id.clone());
        id
    }

    /// Starts the daemon process (appending to its log); does not wait.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("opening the daemon log");
        let _ = writeln!(
            log,
            "===== harness: starting {} at {} =====",
            self.name, self.addr
        );
        let log_out = log.try_clone().expect("cloning the log handle");
        let data_dir = self.data_dir();
        let socket = self.socket();
        let addr = self.addr();
        let advertised = self
            .advertise
            .map_or_else(|| addr.clone(), |a| a.to_string());
        let bin = self.daemon_bin();
        let mut cmd = match self.wrapper.split_first() {
            Some((prog, args)) => {
                let mut c = Command::new(prog);
                c.args(args).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        // A test may run its nodes with another heartbeat period (in its extra flags).
        let heartbeat: &[&str] = if self.extra_args.iter().any(|a| a == "--heartbeat-period") {
            &[]
        } else {
            &["--heartbeat-period", HEARTBEAT]
        };
        cmd.arg("daemon")
            .args([
                "--data-dir",
                path_str(&data_dir),
                "--socket",
                path_str(&socket),
                "--listen-addr",
                &addr,
                "--advertise-addr",
                &advertised,
                "--hostname",
                &self.name,
            ])
            .args(heartbeat)
            .args(&self.extra_args)
            .env(
                "SKEP_LOG",
                std::env::var("SKEP_LOG").unwrap_or_else(|_| "info,skep=debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(log_out))
            .stderr(Stdio::from(log));
        self.child = Some(cmd.spawn().expect("starting skep daemon"));
    }

    /// Waits until the daemon's socket accepts connections; panics with the log if the daemon
    /// exits or does not come up in time.
    pub fn wait_up(&mut self) {
        let socket = self.socket();
        let deadline = Instant::now() + timeout();
        loop {
            if let Some(status) = self.exited() {
                panic!(
                    "the daemon of {} exited ({status}) before opening its socket\n--- log ---\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            if UnixStream::connect(&socket).is_ok() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "the daemon of {} did not open {} within {:?}\n--- log ---\n{}",
                    self.name,
                    socket.display(),
                    timeout(),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's process ID while it runs (a wrapper that execs, such as
    /// `ip netns exec`, keeps the ID).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the daemon process is alive.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.exited().is_none()
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// How the daemon exited, once it has (None while it runs or if it was never started).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.exited()
    }

    /// The log of the daemon's latest start only.
    pub fn last_start_log(&self) -> String {
        let log = self.log();
        let from = log.rfind("===== harness: starting").unwrap_or(0);
        log[from..].to_string()
    }

    /// Kills the daemon (SIGKILL, like a crash or power loss) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the daemon as an init system does (SIGTERM) and waits until it exits; panics if
    /// it does not within the timeout.
    pub fn terminate(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + timeout();
        while self.exited().is_none() {
            assert!(
                Instant::now() < deadline,
                "the daemon of {} did not exit within {:?} of SIGTERM\n--- log ---\n{}",
                self.name,
                timeout(),
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = None;
    }

    /// Pauses the daemon (SIGSTOP: a long GC pause, a frozen VM); [`Node::resume`] continues it.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    /// Continues a paused daemon (SIGCONT).
    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let child = self
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.name));
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
        nix::sys::signal::kill(pid, sig)
            .unwrap_or_else(|e| panic!("sending {sig} to {}: {e}", self.name));
    }

    /// Kills the daemon, starts it again with the same directory and address, and waits until
    /// its socket answers.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
        self.wait_up();
    }

    /// Runs `skep --host unix://<socket> <args>`, with the CLI's state directory (`SKEP_CONFIG`:
    /// contexts, the newest audit checkpoint verified) in the node's own directory.
    pub fn cli(&self, args: &[&str]) -> Output {
        run(
            Command::new(skep_bin())
                .env("SKEP_CONFIG", self.dir.join("cli-config"))
                .arg("--host")
                .arg(self.host())
                .args(args),
            None,
        )
    }

    /// Runs the CLI against this node with `stdin` piped in (its state directory, as for
    /// [`Node::cli`], is the node's own).
    pub fn cli_stdin(&self, args: &[&str], stdin: &str) -> Output {
        run(
            Command::new(skep_bin())
                .env("SKEP_CONFIG", self.dir.join("cli-config"))
                .arg("--host")
                .arg(self.host())
                .args(args),
            Some(stdin),
        )
    }

    /// Runs the CLI against this node, asserts success, returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        if !out.status.success() {
            panic!("{}", self.failure(args, &out, "should have succeeded"));
        }
        stdout(&out)
    }

    /// Runs the CLI against this node, asserts it failed with exit 1, returns stderr.
    pub fn cli_err(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        if out.status.code() != Some(1) {
            panic!(
                "{}",
                self.failure(args, &out, "should have failed with exit 1")
            );
        }
        stderr(&out)
    }

    fn failure(&self, args: &[&str], out: &Output, what: &str) -> String {
        format!(
            "`skep {}` on {} {what}\n{}--- daemon log of {} (tail) ---\n{}",
            args.join(" "),
            self.name,
            describe(out),
            self.name,
            self.log_tail()
        )
    }

    /// `node ls --format json` on this node, parsed; panics if the command fails.
    pub fn node_ls(&self) -> Vec<Value> {
        json_lines(&self.cli_ok(&["node", "ls", "--format", "json"]))
    }

    /// `node ls --format json`, or the error text: for polling while a cluster settles.
    pub fn try_node_ls(&self) -> Result<Vec<Value>, String> {
        let out = self.cli(&["node", "ls", "--format", "json"]);
        if out.status.success() {
            Ok(json_lines(&stdout(&out)))
        } else {
            Err(format!(
                "node ls on {} failed: {}",
                self.name,
                stderr(&out).trim()
            ))
        }
    }

    /// `audit ls --json` on this node, parsed.
    pub fn audit(&self) -> Vec<Value> {
        json_lines(&self.cli_ok(&["audit", "ls", "--json"]))
    }

    /// `audit ls --json`, or the error text.
    pub fn try_audit(&self) -> Result<Vec<Value>, String> {
        let out = self.cli(&["audit", "ls", "--json"]);
        if out.status.success() {
            Ok(json_lines(&stdout(&out)))
        } else {
            Err(format!(
                "audit ls on {} failed: {}",
                self.name,
                stderr(&out).trim()
            ))
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "===== daemon log of {} ({}, tail) =====\n{}\n===== end of {} =====",
                self.name,
                self.log_path().display(),
                self.log_tail(),
                self.name
            );
        }
        self.kill();
        kill_processes_mentioning(&self.dir);
        unmount_under(&self.dir);
        if std::env::var_os("SKEP_IT_KEEP").is_some()
            && let Some(root) = self.root.take()
        {
            eprintln!("kept {}", root.keep().display());
        }
    }
}

/// Kills every process whose command line mentions `dir`: the exec tasks of a node whose
/// daemon was killed outlive it (as containers outlive dockerd), and must not outlive the test.
pub fn kill_processes_mentioning(dir: &Path) {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Host names of the nodes running `service`'s tasks that are to run and are Running, sorted
/// (a name appears once per task).
pub fn running_hosts(node: &Node, service: &str) -> Vec<String> {
    let mut on: Vec<String> =
        json_lines(&node.cli_ok(&["service", "ps", "--format", "json", service]))
            .iter()
            .filter(|t| {
                t["DesiredState"] == "Running"
                    && t["CurrentState"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("Running"))
            })
            .filter_map(|t| t["Node"].as_str().map(str::to_string))
            .collect();
    on.sort();
    on
}

/// Mount points under `dir` (secrets tmpfs of tasks), from this process's mount table.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let prefix = format!("{}/", dir.to_string_lossy());
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| mp.starts_with(&prefix))
        .map(PathBuf::from)
        .collect()
}

/// Unmounts whatever a killed daemon left mounted under `dir`, so the directory can go.
pub fn unmount_under(dir: &Path) {
    for mp in mounts_under(dir) {
        let _ = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}

/// A node of a `node ls --format json` listing with this ID.
pub fn find_node<'a>(nodes: &'a [Value], id: &str) -> Option<&'a Value> {
    nodes.iter().find(|n| n["ID"] == id)
}

/// The ID of the node listed as Leader.
pub fn leader_id(nodes: &[Value]) -> Option<String> {
    nodes
        .iter()
        .find(|n| n["ManagerStatus"] == "Leader")
        .and_then(|n| n["ID"].as_str())
        .map(String::from)
}

/// A one-line summary of a listing for wait messages.
pub fn summary(nodes: &[Value]) -> String {
    nodes
        .iter()
        .map(|n| {
            format!(
                "{}({}) {} {}",
                n["Hostname"].as_str().unwrap_or("?"),
                n["ID"].as_str().unwrap_or("?"),
                n["Status"].as_str().unwrap_or("?"),
                n["ManagerStatus"].as_str().unwrap_or("")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes `text` to `path`.
pub fn write_file(path: &Path, text: &str) {
    File::create(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

// ------------------------------------------------------------------ a swarm

/// A swarm of [`Node`]s: `nodes[0]` ran `swarm init`, then come the other managers, then the
/// workers. Host names are `m1`, `m2`, ... and `w1`, `w2`, ...
pub struct Cluster {
    /// Every node, managers first.
    pub nodes: Vec<Node>,
    managers: usize,
    /// What `swarm init` printed.
    pub init_output: String,
}

impl Cluster {
    /// A swarm of `managers` managers (at least 1) and `workers` workers, all Ready.
    pub fn init(managers: usize, workers: usize) -> Cluster {
        Cluster::init_with(managers, workers, &[])
    }

    /// Like [`Cluster::init`], with extra `swarm init` flags (`--autolock`, `--cert-expiry`).
    pub fn init_with(managers: usize, workers: usize, init_args: &[&str]) -> Cluster {
        Cluster::init_opts(managers, workers, init_args, &[])
    }

    /// Like [`Cluster::init_with`], with extra `skep daemon` flags for every node (kept for
    /// restarts), e.g. `--audit-checkpoint-records 4`.
    pub fn init_opts(
        managers: usize,
        workers: usize,
        init_args: &[&str],
        daemon_args: &[&str],
    ) -> Cluster {
        Cluster::init_prepared(managers, workers, init_args, daemon_args, |_| {})
    }

    /// Like [`Cluster::init_opts`], calling `prepare` on each node before its daemon starts
    /// (e.g. to mount a small tmpfs on its data directory).
    pub fn init_prepared(
        managers: usize,
        workers: usize,
        init_args: &[&str],
        daemon_args: &[&str],
        mut prepare: impl FnMut(&Node),
    ) -> Cluster {
        let nodes: Vec<Node> = (1..=managers)
            .map(|i| Node::new(&format!("m{i}"), daemon_args))
            .chain((1..=workers).map(|i| Node::new(&format!("w{i}"), daemon_args)))
            .collect();
        for n in &nodes {
            prepare(n);
        }
        Cluster::form(nodes, managers, init_args)
    }

    /// Starts `nodes` (not running yet; managers first, then workers) and forms a swarm of
    /// them: `nodes[0]` runs `swarm init` with `init_args`, the next `managers - 1` join as
    /// managers and the rest as workers; waits until all are Ready.
    pub fn form(mut nodes: Vec<Node>, managers: usize, init_args: &[&str]) -> Cluster {
        assert!(managers >= 1, "a swarm needs a manager");
        for n in &mut nodes {
            n.spawn();
        }
        for n in &mut nodes {
            n.wait_up();
        }
        let first = &nodes[0];
        let addr = first.addr();
        let mut args = vec!["swarm", "init", "--advertise-addr", &addr];
        args.extend_from_slice(init_args);
        let init_output = first.cli_ok(&args);
        let worker_token = first
            .cli_ok(&["join-token", "-q", "worker"])
            .trim()
            .to_string();
        let manager_token = first
            .cli_ok(&["join-token", "-q", "manager"])
            .trim()
            .to_string();
        for (i, n) in nodes.iter().enumerate().skip(1) {
            let token = if i < managers {
                &manager_token
            } else {
                &worker_token
            };
            let said = n.cli_ok(&["swarm", "join", "--token", token, &addr]);
            let role = if i < managers { "manager" } else { "worker" };
            assert_eq!(
                said.trim(),
                format!("This node joined a swarm as a {role}.")
            );
        }
        let mut cluster = Cluster {
            nodes,
            managers,
            init_output,
        };
        let listed = cluster.wait_all_ready(0);
        for n in &mut cluster.nodes {
            let entry = listed
                .iter()
                .find(|e| e["Hostname"] == n.name())
                .unwrap_or_else(|| panic!("{} is not listed: {}", n.name(), summary(&listed)));
            n.set_id(entry["ID"].as_str().unwrap());
        }
        cluster
    }

    /// The node that ran `swarm init`.
    pub fn first(&self) -> &Node {
        &self.nodes[0]
    }

    /// The managers.
    pub fn managers(&self) -> &[Node] {
        &self.nodes[..self.managers]
    }

    /// The workers.
    pub fn workers(&self) -> &[Node] {
        &self.nodes[self.managers..]
    }

    /// Every node's ID, in `nodes` order.
    pub fn ids(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.id().to_string()).collect()
    }

    /// The index in `nodes` of the node with this ID.
    pub fn index_of(&self, id: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id() == id)
            .unwrap_or_else(|| panic!("no node of this cluster has ID {id}"))
    }

    /// Waits until `node ls` on `nodes[via]` lists every node of the cluster as Ready with one
    /// Leader; returns that listing.
    pub fn wait_all_ready(&self, via: usize) -> Vec<Value> {
        let n = self.nodes.len();
        let node = &self.nodes[via];
        wait_for(
            timeout(),
            &format!("{n} Ready nodes in `node ls` on {}", node.name()),
            || {
                let nodes = node.try_node_ls()?;
                let ready = nodes.iter().filter(|x| x["Status"] == "Ready").count();
                if nodes.len() == n && ready == n && leader_id(&nodes).is_some() {
                    Ok(nodes)
                } else {
                    Err(summary(&nodes))
                }
            },
        )
    }

    /// Kills every daemon.
    pub fn kill_all(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }

    /// Starts every daemon again (all at once: managers need each other for a quorum) and waits
    /// until their sockets answer.
    pub fn start_all(&mut self) {
        for n in &mut self.nodes {
            n.spawn();
        }
        for n in &mut self.nodes {
            n.wait_up();
        }
    }
}

/// The unlock key in `swarm init --autolock` output: the `SKEP-KEY-` line after the
/// "To unlock a swarm manager after it restarts" paragraph.
pub fn unlock_key(init_output: &str) -> String {
    let mut lines = init_output.lines().skip_while(|l| {
        !l.starts_with("To unlock a swarm manager after it restarts, run the `skep swarm unlock`")
    });
    assert!(
        lines.next().is_some(),
        "no unlock instructions in:\n{init_output}"
    );
    lines
        .map(str::trim)
        .find(|l| l.starts_with("SKEP-KEY-"))
        .unwrap_or_else(|| panic!("no SKEP-KEY- line in:\n{init_output}"))
        .to_string()
}

/// IDs of the running tasks of `service` (`service ps` on `node`), sorted.
pub fn running_task_ids(node: &Node, service: &str) -> Vec<String> {
    let mut ids: Vec<String> =
        json_lines(&node.cli_ok(&["service", "ps", "--no-trunc", "--format", "json", service]))
            .iter()
            .filter(|t| {
                t["CurrentState"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("Running"))
            })
            .filter_map(|t| t["ID"].as_str().map(str::to_string))
            .collect();
    ids.sort();
    ids
}

/// Creates, through `node`, an exec service `name` of `replicas` tasks running `/bin/sleep
/// 1000` on the workers only (`node.role==worker`); does not wait for them.
pub fn create_sleepers_on_workers(node: &Node, name: &str, replicas: usize) {
    node.cli_ok(&[
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        "--replicas",
        &replicas.to_string(),
        "--constraint",
        "node.role==worker",
        "--name",
        name,
        "--",
        "/bin/sleep",
        "1000",
    ]);
}

/// Starts a global exec service `steady` (`sleep 1000` on every node) through `node` and
/// waits for its `count` tasks to run; their IDs, sorted.
pub fn start_steady_everywhere(node: &Node, count: usize) -> Vec<String> {
    node.cli_ok(&[
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        "--mode",
        "global",
        "--name",
        "steady",
        "--",
        "/bin/sleep",
        "1000",
    ]);
    wait_for(timeout(), "a running task on each node", || {
        let ids = running_task_ids(node, "steady");
        if ids.len() == count {
            Ok(ids)
        } else {
            Err(format!("{ids:?}"))
        }
    })
}

/// Secret names `secret ls` shows on `node` (default, linearizable read), or its error.
pub fn secret_names(node: &Node, extra: &[&str]) -> Result<Vec<String>, String> {
    let mut args = vec!["secret", "ls", "--format", "json"];
    args.extend_from_slice(extra);
    let out = node.cli(&args);
    if !out.status.success() {
        return Err(stderr(&out));
    }
    let mut names: Vec<String> = json_lines(&stdout(&out))
        .iter()
        .filter_map(|s| s["Name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}
