//! Daemon-process helpers shared by the benches that run real `skep daemon`s
//! (`benches/services.rs`, `benches/secrets.rs`): start a daemon in its own directory, talk to
//! it through the CLI, wait with a bound, and on the way out (even on panic) kill every daemon
//! and task process and unmount whatever was left mounted under the temporary root.

// Each bench uses a different part of this module.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Every wait gives up after this long: 300 s, or `SKEP_BENCH_WAIT_SECS`.
pub fn wait_limit() -> Duration {
    Duration::from_secs(
        std::env::var("SKEP_BENCH_WAIT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300),
    )
}

/// How often [`wait_for`] polls.
pub const POLL: Duration = Duration::from_millis(200);

// ------------------------------------------------------------------ processes and mounts

/// Killing what daemons leave running and unmounting what they leave mounted: the integration
/// tests' own file, shared as it is (it needs nothing of the test crate).
#[path = "../../tests/it/harness/cleanup.rs"]
mod cleanup;
/// Polling up to a deadline: the integration tests' own file too.
#[path = "../../tests/it/harness/poll.rs"]
mod poll;
/// Daemons' log text: the integration tests' own file too.
#[path = "../../tests/it/harness/text.rs"]
mod text;
#[allow(unused_imports)] // each bench uses a different part
pub use cleanup::{
    agent_groups_holding, kill_processes_mentioning, mounts_under, pids_mentioning, remove_groups,
    unmount_under,
};
#[allow(unused_imports)] // not every bench reads logs
pub use text::strip_ansi;

// ------------------------------------------------------------------ a daemon

/// One `skep daemon` process with its own directory under a shared root.
pub struct Daemon {
    pub name: String,
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub addr: String,
    /// The skep binary it runs (and its CLI calls use).
    pub bin: String,
}

impl Daemon {
    /// Starts a daemon logging at `SKEP_LOG` (default `info`).
    pub fn start(root: &Path, name: &str, addr: &str) -> Daemon {
        let log = std::env::var("SKEP_LOG").unwrap_or_else(|_| "info".into());
        Daemon::start_with(root, name, addr, &[("SKEP_LOG", &log)])
    }

    /// Starts a daemon with these extra environment variables, of this build's `skep`, or of
    /// the binary `SKEP_BENCH_BIN` names (another build to compare against in the same run;
    /// its `skep-init` beside it).
    pub fn start_with(root: &Path, name: &str, addr: &str, env: &[(&str, &str)]) -> Daemon {
        let bin = std::env::var("SKEP_BENCH_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_skep").to_string());
        Daemon::start_bin(root, name, addr, &bin, env)
    }

    /// Starts a daemon of the skep binary `bin` (another build, to compare against), with
    /// these extra environment variables; its CLI calls use the same binary.
    pub fn start_bin(
        root: &Path,
        name: &str,
        addr: &str,
        bin: &str,
        env: &[(&str, &str)],
    ) -> Daemon {
        if let Ok(sock) = addr.parse::<std::net::SocketAddr>() {
            assert!(
                std::net::TcpListener::bind(sock).is_ok(),
                "{addr} is taken: is another benchmark or a stray daemon running?"
            );
        }
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let log = std::fs::File::create(dir.join("daemon.log")).unwrap();
        let child = Command::new(bin)
            .arg("daemon")
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--socket")
            .arg(dir.join("skep.sock"))
            .args([
                "--listen-addr",
                addr,
                "--advertise-addr",
                addr,
                "--hostname",
                name,
                "--heartbeat-period",
                "1s",
            ])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning the daemon {name}: {e}"));
        let d = Daemon {
            name: name.into(),
            child: Some(child),
            dir,
            addr: addr.into(),
            bin: bin.into(),
        };
        let socket = d.socket();
        wait_for(Duration::from_secs(30), &format!("{name}'s socket"), || {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                Ok(())
            } else {
                Err(d.log_tail())
            }
        });
        d
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("skep.sock")
    }

    /// The daemon's `--data-dir`.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Its log (stderr).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `skep --host unix://<socket> args`; panics (with the daemon's log) unless it succeeds.
    pub fn cli(&self, args: &[&str]) -> String {
        self.cli_stdin(args, None)
    }

    /// [`Daemon::cli`] with `input` on the CLI's standard input.
    pub fn cli_stdin(&self, args: &[&str], input: Option<&[u8]>) -> String {
        match self.try_cli_stdin(args, input) {
            Ok(out) => out,
            Err(e) => panic!(
                "skep {} on {}: {e}\n--- daemon log (tail) ---\n{}",
                args.join(" "),
                self.name,
                self.log_tail()
            ),
        }
    }

    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        self.try_cli_stdin(args, None)
    }

    pub fn try_cli_stdin(&self, args: &[&str], input: Option<&[u8]>) -> Result<String, String> {
        let mut child = Command::new(&self.bin)
            .arg("--host")
            .arg(format!("unix://{}", self.socket().display()))
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run the CLI: {e}"))?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            // Dropping `stdin` closes it: the CLI sees the end of its input.
            let _ = stdin.write_all(input);
        }
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            match child.try_wait() {
                Ok(Some(st)) => break st,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err("the CLI did not finish within 120 s".into());
                }
            }
        };
        let out = out.join().unwrap_or_default();
        let err = err.join().unwrap_or_default();
        if status.success() {
            Ok(out)
        } else {
            Err(format!("{status}: {}", err.trim()))
        }
    }

    /// `swarm init` on this daemon, then (once per bench process) the security settings the
    /// swarm runs with, as its `info` says, on stderr: what every figure printed after was
    /// measured under.
    pub fn init_swarm(&self) {
        self.cli(&["swarm", "init", "--advertise-addr", &self.addr]);
        static PRINTED: std::sync::Once = std::sync::Once::new();
        PRINTED.call_once(|| eprintln!("{}", self.security_settings()));
    }

    /// One line stating the swarm's security settings, read from `info` on this manager.
    pub fn security_settings(&self) -> String {
        match self.try_cli(&["info", "--format", "json"]) {
            Ok(json) => security_settings(&self.name, &json),
            Err(e) => format!("security settings: `info` failed: {e}"),
        }
    }

    pub fn json(&self, args: &[&str]) -> Result<Vec<Value>, String> {
        let out = self.try_cli(args)?;
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| format!("not JSON ({e}): {l}")))
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "===== log of {} (tail) =====\n{}",
                self.name,
                self.log_tail()
            );
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // The agent's control groups its tasks are in go once the tasks are killed.
        let groups = agent_groups_holding(&pids_mentioning(&self.dir, None));
        kill_processes_mentioning(&self.dir);
        remove_groups(&groups);
    }
}

/// A set of daemons in one temporary root; dropping it kills them and every process that
/// mentions the root (task helpers), unmounts what they left mounted under it, then removes
/// the root.
pub struct Cluster {
    pub daemons: Vec<Daemon>,
    pub root: tempfile::TempDir,
}

impl Cluster {
    pub fn manager(&self) -> &Daemon {
        &self.daemons[0]
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.daemons.clear();
        kill_processes_mentioning(self.root.path());
        unmount_under(self.root.path());
    }
}

/// One line stating a swarm's security settings from `skep info --format json` of its
/// manager `name`: what the figures a bench prints were measured under.
pub fn security_settings(name: &str, info_json: &str) -> String {
    let info: Value = match serde_json::from_str(info_json.trim()) {
        Ok(v) => v,
        Err(e) => return format!("security settings: `info` of {name} is not JSON ({e})"),
    };
    let cluster = &info["Swarm"]["Cluster"];
    let expiry = cluster["Spec"]["CAConfig"]["NodeCertExpiry"]
        .as_u64()
        .unwrap_or(0);
    format!(
        "security settings (the swarm as `swarm init` made it; certificate validity, autolock \
         and trust domain from `skep info` of {name}): every call between nodes over mutual \
         TLS 1.3 (rustls) with node certificates of the swarm's CA, valid {} h; Raft log and \
         snapshots sealed at rest; every change on the hash-chained audit log; the default \
         Cedar policies; autolock {}{}",
        expiry / 3_600_000_000_000,
        if cluster["Spec"]["EncryptionConfig"]["AutoLockManagers"] == true {
            "on"
        } else {
            "off"
        },
        match cluster["TrustDomain"].as_str() {
            Some(td) if !td.is_empty() => format!("; workload trust domain {td}"),
            _ => String::new(),
        },
    )
}

/// Polls `f` (every `POLL`) until it returns `Ok`; panics after `within` with the last error.
pub fn wait_for<T>(within: Duration, what: &str, f: impl FnMut() -> Result<T, String>) -> T {
    poll::poll_for(within, POLL, what, f).unwrap_or_else(|e| panic!("{e}"))
}

// ------------------------------------------------------------------ small clusters and programs

/// Sets `p`'s mode.
pub fn chmod(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Compiles the C program `src` statically (gcc, here: nothing is pulled) into `dir/name`,
/// runnable by exec tasks' uid.
pub fn build_static_c(dir: &Path, name: &str, src: &str) -> PathBuf {
    let source = dir.join(format!("{name}.c"));
    let bin = dir.join(name);
    std::fs::write(&source, src).unwrap();
    let st = Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&bin)
        .arg(&source)
        .status()
        .unwrap_or_else(|e| panic!("gcc ({name} is built locally): {e}"));
    assert!(st.success(), "building {name} failed");
    chmod(&bin, 0o755);
    bin
}

/// A swarm of one daemon per address under a new temporary root (`prefix`), named
/// `<name>-<i>`: the first inits it, the others join as workers; returns once all are Ready.
pub fn swarm(prefix: &str, name: &str, addrs: &[&str]) -> Cluster {
    let root = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
    let daemons = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| Daemon::start(root.path(), &format!("{name}-{i}"), addr))
        .collect();
    let cluster = Cluster { daemons, root };
    let m = cluster.manager();
    m.init_swarm();
    let token = m.cli(&["join-token", "-q", "worker"]).trim().to_string();
    for w in &cluster.daemons[1..] {
        w.cli(&["swarm", "join", "--token", &token, &m.addr]);
    }
    let want = addrs.len();
    wait_for(wait_limit(), &format!("{want} Ready nodes"), || {
        let nodes = m.json(&["node", "ls", "--format", "json"])?;
        let ready = nodes.iter().filter(|n| n["Status"] == "Ready").count();
        if ready == want {
            Ok(())
        } else {
            Err(format!("{ready} Ready"))
        }
    });
    cluster
}

/// Seconds of a `Duration`'s `Debug` form, as the daemon logs one (`6.2s`, `950ms`, `12µs`).
pub fn parse_debug_duration(v: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix("µs") {
        (n, 1e-6)
    } else if let Some(n) = v.strip_suffix("ns") {
        (n, 1e-9)
    } else {
        (v.strip_suffix('s')?, 1.0)
    };
    num.parse::<f64>().ok().map(|n| n * scale)
}
