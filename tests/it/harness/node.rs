//! One `skep daemon` process ([`Node`]) on an address of its own, and the cleanup of what a
//! killed daemon leaves behind (its exec tasks, its mounts).

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use super::*;

/// The daemons' heartbeat period in tests: Down is noticed after about a second.
pub const HEARTBEAT: &str = "300ms";
/// The port every node listens on; nodes differ by address.
pub const PORT: u16 = 2377;
const LOG_TAIL_LINES: usize = 200;

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
        super::failure::remember_panics();
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
            .args(&self.extra_args);
        // A test giving `--log-level` gets that level: SKEP_LOG would replace it.
        if self.extra_args.iter().any(|a| a == "--log-level") {
            cmd.env_remove("SKEP_LOG");
        } else {
            cmd.env(
                "SKEP_LOG",
                std::env::var("SKEP_LOG").unwrap_or_else(|_| "info,skep=debug".into()),
            );
        }
        cmd.stdin(Stdio::null())
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
            if let Some(said) = super::failure::last_panic() {
                eprintln!("===== the test failed at {said}");
            }
        }
        self.kill();
        // Its agent's control groups, taken once the tasks in them are killed: the ones its
        // tasks are in, and by its node ID (the groups it made stay when no task is left).
        let mut groups = agent_groups_holding(&pids_mentioning(&self.dir, None));
        if let Some(id) = &self.id {
            groups.extend(agent_groups_named(id));
        }
        kill_processes_mentioning(&self.dir);
        remove_groups(&groups);
        unmount_under(&self.dir);
        // A daemon that panicked anywhere (a task of its runtime included, which it may
        // outlive) fails the test that ran it, whatever the test checked.
        let panicked = (!std::thread::panicking())
            .then(|| daemon_panic(&self.log()))
            .flatten();
        if std::env::var_os("SKEP_IT_KEEP").is_some()
            && let Some(root) = self.root.take()
        {
            eprintln!("kept {}", root.keep().display());
        }
        if let Some(p) = panicked {
            panic!("the daemon of {} panicked:\n{p}", self.name);
        }
    }
}

/// The first panic a daemon's log shows, with the lines after it.
fn daemon_panic(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("thread '") && l.contains(" panicked at "))?;
    Some(
        lines[at..]
            .iter()
            .take(6)
            .copied()
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("test paths are UTF-8")
}
