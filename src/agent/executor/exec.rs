//! The exec runtime, agent side: runs a task's command through the init helper (the
//! `skep-init` binary beside `skep`, see [`skep_init`]) in its own mount and PID namespaces,
//! as the unprivileged user [`NOBODY`] with no_new_privs, the daemon's own files (data
//! directory, socket) hidden, with its output in `<state_dir>/tasks/<task_id>/{stdout,stderr,
//! output}` and the helper's record (PID, start time, binary, ports: see [`super::adopt`]) in
//! `.../helper.json`, which is how a restarted agent adopts the task instead of killing it.
//! Each task runs in control groups of its own kind ([`super::cgroup`]): its limits enforced,
//! all tasks together weighed against the daemon.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::sync::watch;
use tracing::Instrument as _;

use super::adopt::{self, HelperRecord};
use super::cgroup::{self, Groups, Layout, Limits};
use super::spawn;
use super::{ExecError, ExitSlot, LogEntry, Stopper, TaskHandle, ended_within, parse_env};
use crate::agent::secrets::ConfigFile;
use crate::store::service::Task;
use skep_init::{HELPER_ARG, NOBODY, OUTPUT_FILE, STDERR_FILE, status_code};

/// `PATH` given to a task whose environment has none.
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The helper's PID, as a skep from before adoption recorded it (only read, to stop those).
const LEGACY_PID_FILE: &str = "pid";
/// How often an adopted helper (not the agent's child, so not waitable) is looked at.
const ADOPTED_POLL: Duration = Duration::from_millis(100);
/// How long a process that got SIGKILL may take to be gone before stop reports an error.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// Grace given to leftovers of a previous agent run.
const STALE_GRACE: Duration = Duration::from_secs(2);

/// Runs exec tasks.
pub(crate) struct ExecRuntime {
    tasks_dir: PathBuf,
    helper: PathBuf,
    /// Host paths no task may see: the node's secrets tmpfs (every task's files; a task gets
    /// its own bound before this is covered), then what the daemon names (its data directory,
    /// its socket).
    hide: Vec<PathBuf>,
    /// Where its tasks' control groups go (the host's layout, read once, and this agent's
    /// own group).
    cgroups: Arc<Groups>,
    /// What all exec tasks together may hold.
    caps: cgroup::Caps,
}

impl ExecRuntime {
    pub(crate) fn new(state_dir: &Path, helper: PathBuf) -> ExecRuntime {
        ExecRuntime {
            tasks_dir: state_dir.join("tasks"),
            helper,
            hide: vec![state_dir.join(crate::agent::secrets::NODE_DIR)],
            cgroups: Arc::new(Groups::new(Layout::detect(), &local_scope(state_dir))),
            caps: cgroup::Caps {
                pids: cgroup::default_pids_max(),
                memory_bytes: cgroup::default_memory_max(super::Executors::capacity().memory_bytes),
            },
        }
    }

    /// The control groups task `task` runs in, which its health checks join too: those its
    /// start planned that exist (none for a task that runs ungrouped, whose groups could not
    /// be made; a check joining a missing group would fail).
    pub(crate) fn groups_of(&self, task: &Task) -> Vec<PathBuf> {
        self.cgroups
            .plan(&task.id, limits_of(task), self.caps)
            .map(|p| p.join.into_iter().filter(|d| d.is_dir()).collect())
            .unwrap_or_default()
    }

    /// The cgroup version its tasks' limits use (`1`, `2` or `none`) and the caps on their
    /// process IDs and memory in force (0: none, or no controller to hold it).
    pub(crate) fn isolation(&self) -> (&'static str, u64, u64) {
        let pids = if self.cgroups.has_pids() {
            self.caps.pids
        } else {
            0
        };
        let memory = if self.cgroups.has_memory() {
            self.caps.memory_bytes
        } else {
            0
        };
        (self.cgroups.version(), pids, memory)
    }

    /// Puts this agent's task groups under `skep/<node_id>` (by default `skep/local-<digest
    /// of the state directory>`).
    pub(crate) fn set_scope(&mut self, node_id: &str) {
        self.cgroups = Arc::new(self.cgroups.with_scope(node_id));
    }

    /// Removes this agent's own control groups that no task holds any more (the daemon stops
    /// or leaves; see [`Groups::remove_agent`]).
    pub(crate) async fn release_groups(&self, settling: bool) {
        let groups = self.cgroups.clone();
        let _ = tokio::task::spawn_blocking(move || groups.remove_agent(settling)).await;
    }

    /// Caps the process IDs all exec tasks together may hold (0: no cap) from the next start
    /// on (see [`super::Executors::exec_pids_max`]).
    pub(crate) fn set_pids_max(&mut self, n: u64) {
        self.caps.pids = n;
    }

    /// Caps the memory all exec tasks together may use (0: no cap) from the next start on
    /// (see [`super::Executors::exec_memory_max`]).
    pub(crate) fn set_memory_max(&mut self, bytes: u64) {
        self.caps.memory_bytes = bytes;
    }

    /// Hides `paths` from every task from now on (see [`super::Executors::hiding`]).
    pub(crate) fn hide(&mut self, paths: Vec<PathBuf>) {
        // The tmpfs first: once a directory above it is covered, it cannot be named.
        self.hide.truncate(1);
        self.hide.extend(paths);
    }

    /// The helper binary (health checks run through it too).
    pub(crate) fn helper(&self) -> &Path {
        &self.helper
    }

    fn task_dir(&self, task_id: &str) -> PathBuf {
        self.tasks_dir.join(task_id)
    }

    pub(crate) async fn start(
        &self,
        task: &Task,
        secrets: Option<&Path>,
        configs: &[ConfigFile],
        spiffe: Option<&Path>,
    ) -> Result<TaskHandle, ExecError> {
        let command = &task.spec.command;
        let program = command.first().ok_or(ExecError::EmptyCommand)?;
        let mut env = parse_env(&task.spec.env);
        if spiffe.is_some() {
            env.extend(parse_env(&[crate::agent::svid::ENDPOINT_ENV.to_string()]));
        }
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        let path_var = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map_or(DEFAULT_PATH, |(_, v)| v.as_str());
        if resolve_program(program, path_var).is_none() {
            return Err(ExecError::ProgramNotFound {
                program: program.clone(),
            });
        }

        let cgroups = self.cgroups.plan(&task.id, limits_of(task), self.caps)?;

        let dir = self.task_dir(&task.id);
        let mut helper = tokio::process::Command::new(&self.helper);
        helper.arg(HELPER_ARG).arg("--task-dir").arg(&dir);
        if let Some(s) = secrets {
            helper.arg("--secrets").arg(s);
        }
        for c in configs {
            helper.arg("--config").arg(&c.source).arg(&c.target);
        }
        if let Some(dir) = spiffe {
            helper.arg("--spiffe").arg(dir);
        }
        helper.arg("--user").arg(NOBODY.to_string());
        for p in &self.hide {
            helper.arg("--hide").arg(p);
        }
        helper
            .env_clear()
            .envs(env)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            // Its own process group: a Ctrl-C meant for a foreground agent does not reach tasks.
            .process_group(0)
            .kill_on_drop(false);
        // The task directory, the spawn and the record all block (file creation alone took
        // milliseconds each on ext4 during a burst): done on a start thread, so the runtime
        // keeps answering heartbeats. Cancelled here (a `select!` with a stop request), the
        // child is killed (`spawn::Owned`); no await follows.
        let job = StartJob {
            dir: dir.clone(),
            helper,
            command: command.clone(),
            cgroups,
            helper_path: self.helper.clone(),
            task_id: task.id.clone(),
            ports: adopt::ports_from_env(&task.spec.env),
        };
        let spawn_err = |source| ExecError::Spawn {
            helper: self.helper.clone(),
            source,
        };
        let (owned, pid) = spawn::run(move || job.run()).await.map_err(spawn_err)??;
        let mut child = owned.claim().map_err(spawn_err)?;

        let (tx, rx) = watch::channel::<ExitSlot>(None);
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (layout, task_id, gone) = (self.cgroups.clone(), task.id.clone(), ended.clone());
        tokio::spawn(
            async move {
                let r = match child.wait().await {
                    Ok(st) => Ok(i64::from(status_code(st))),
                    Err(e) => Err(format!("waiting for the init helper failed: {e}")),
                };
                gone.store(true, std::sync::atomic::Ordering::Release);
                adopt::forget_record(&dir);
                release_cgroups(layout, task_id).await;
                tx.send_replace(Some(r));
            }
            .in_current_span(),
        );
        Ok(TaskHandle {
            exit: rx,
            ended,
            stopper: Stopper::Exec(ExecStopper { pid, adopted: None }),
        })
    }

    /// After an agent restart: the tasks a previous run started, by task ID, with a handle on
    /// each (running or ended while no agent watched) and the ports it was given. Nothing is
    /// stopped here, except helpers of an older skep that wrote no record (found through
    /// their pid files) which cannot be adopted safely.
    pub(crate) async fn recover(&self) -> Vec<(String, TaskHandle, Vec<(u16, u16)>)> {
        let mut found = Vec::new();
        let Ok(mut entries) = tokio::fs::read_dir(&self.tasks_dir).await else {
            return found;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let Ok(id) = entry.file_name().into_string() else {
                continue;
            };
            if super::check_task_id(&id).is_err() {
                continue;
            }
            let dir = self.task_dir(&id);
            if self.kill_legacy(&id).await {
                tracing::info!(task_id = %id, "stopped a task an older skep left (it cannot be adopted)");
            }
            let Some(rec) = adopt::read_record(&dir, &id) else {
                continue;
            };
            let ports = rec.ports.clone();
            let handle = adopted_handle(dir, rec, self.cgroups.clone());
            found.push((id, handle, ports));
        }
        found
    }

    /// Kills the helper of task `id` if it still runs (a task to be removed); true if it
    /// did. The record goes either way.
    async fn kill_leftover(&self, id: &str) -> bool {
        let dir = self.task_dir(id);
        let legacy = self.kill_legacy(id).await;
        let Some(rec) = adopt::read_record(&dir, id) else {
            return legacy;
        };
        let handle = adopted_handle(dir.clone(), rec, self.cgroups.clone());
        let running = handle.exit_code().is_none();
        if running {
            tracing::info!(task_id = %id, "stopping a task left by a previous run");
            if let Err(e) = handle.stop(STALE_GRACE).await {
                tracing::warn!(task_id = %id, error = %e, "a leftover task did not stop");
            }
        }
        adopt::forget_record(&dir);
        running || legacy
    }

    /// Kills a helper recorded only in a pid file (written by a skep from before adoption) if
    /// its command line is still the helper's; true if it was running. The file goes.
    async fn kill_legacy(&self, id: &str) -> bool {
        let dir = self.task_dir(id);
        let pid_file = dir.join(LEGACY_PID_FILE);
        let Ok(text) = tokio::fs::read_to_string(&pid_file).await else {
            return false;
        };
        let _ = tokio::fs::remove_file(&pid_file).await;
        let Some(pid) = text.trim().parse::<i32>().ok().filter(|p| *p > 1) else {
            return false;
        };
        let pid = Pid::from_raw(pid);
        if !is_helper_of(pid, &dir).await {
            return false;
        }
        let _ = kill(pid, Signal::SIGTERM);
        if gone_within(pid, &dir, STALE_GRACE).await {
            return true;
        }
        let _ = kill(pid, Signal::SIGKILL);
        if !gone_within(pid, &dir, KILL_WAIT).await {
            tracing::warn!(task_id = %id, %pid, "a leftover task process did not die after SIGKILL");
        }
        true
    }

    pub(crate) async fn logs(&self, task: &Task) -> Result<Vec<LogEntry>, ExecError> {
        let path = self.task_dir(&task.id).join(OUTPUT_FILE);
        match tokio::fs::read(&path).await {
            Ok(bytes) => Ok(parse_output(&bytes)),
            // Never started, or already removed: no output.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(ExecError::Logs { path, source }),
        }
    }

    pub(crate) async fn remove(&self, task: &Task) {
        self.kill_leftover(&task.id).await;
        // Gone with its task already, unless the task ended while no agent watched.
        release_cgroups(self.cgroups.clone(), task.id.clone()).await;
        let dir = self.task_dir(&task.id);
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(task_id = %task.id, dir = %dir.display(), error = %e, "cannot remove the task directory");
        }
    }
}

/// Removes a task's own control groups (once its processes are gone) on a start thread, and
/// says so if the kernel killed it for its memory limit.
async fn release_cgroups(groups: Arc<Groups>, task_id: String) {
    let _ = spawn::run(move || {
        if groups.was_out_of_memory(&task_id) {
            tracing::warn!(task_id = %task_id, "the task reached its memory limit (--limit-memory) and the kernel killed it");
        }
        groups.remove(&task_id);
    })
    .await;
}

/// The scope of an agent without a node ID (tests driving the runtime directly): unique to
/// its state directory, so two never share a cap.
fn local_scope(state_dir: &Path) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        state_dir.as_os_str().as_encoded_bytes(),
    );
    let hex: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("local-{hex}")
}

/// Whether a task was already started ungrouped because the node's control groups could not
/// be set up (said once).
/// The limits of `task`'s spec, as its control groups take them.
fn limits_of(task: &Task) -> Limits {
    let l = task.spec.limits;
    Limits {
        memory_bytes: l.memory_bytes,
        nano_cpus: l.nano_cpus,
        pids: l.pids,
    }
}

static UNGROUPED: AtomicBool = AtomicBool::new(false);

/// The blocking part of an exec task's start, run on a start thread ([`spawn::run`]).
struct StartJob {
    dir: PathBuf,
    /// The helper's command line up to the task's command.
    helper: tokio::process::Command,
    /// The task's command.
    command: Vec<String>,
    /// Its control groups.
    cgroups: cgroup::Plan,
    helper_path: PathBuf,
    task_id: String,
    ports: Vec<(u16, u16)>,
}

impl StartJob {
    /// Sets up the task's control groups, makes the task directory, starts the helper (its
    /// own early failures, before it opens the logs, land in the task's stderr) and writes the
    /// record a restarted agent adopts the task by.
    fn run(mut self) -> Result<(spawn::Owned, Option<Pid>), ExecError> {
        match cgroup::apply(&self.cgroups) {
            Ok(()) => {
                for dir in &self.cgroups.join {
                    self.helper.arg("--cgroup").arg(dir);
                }
            }
            Err(e) if self.cgroups.required => return Err(e.into()),
            Err(e) => {
                if !UNGROUPED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "exec tasks without limits run outside skep's control groups: no cap on their process IDs (--exec-pids-max), and they compete with the daemon for CPU one by one");
                }
            }
        }
        self.helper.arg("--").args(&self.command);
        let dir = &self.dir;
        let dir_err = |source| ExecError::TaskDir {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        let helper_stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(STDERR_FILE))
            .map_err(dir_err)?;
        let child = self
            .helper
            .stderr(helper_stderr)
            .spawn()
            .map_err(|source| ExecError::Spawn {
                helper: self.helper_path.clone(),
                source,
            })?;
        let child = spawn::Owned::new(child);
        let pid = child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .map(Pid::from_raw);
        // Read before the watcher can reap the helper, so the PID is still the helper's (at
        // worst a zombie).
        if let Some(pid) = pid {
            let start = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| adopt::parse_stat(&s));
            let rec = start.map(|(_, start_ticks)| HelperRecord {
                task_id: self.task_id.clone(),
                pid: pid.as_raw(),
                start_ticks,
                exe: self.helper_path.clone(),
                ports: self.ports,
            });
            let written = match rec {
                Some(rec) => adopt::write_record(dir, &rec),
                None => Err(std::io::Error::other("cannot read its start time")),
            };
            if let Err(e) = written {
                tracing::warn!(task_id = %self.task_id, error = %e, "cannot record the task's init helper; a restarted agent will not adopt the task");
            }
        }
        Ok((child, pid))
    }
}

/// Stops an exec task's helper.
pub(crate) struct ExecStopper {
    pid: Option<Pid>,
    /// For a helper a previous agent run started: its record and task directory, checked
    /// before each signal (it is not this agent's child, so its PID could be reused once it
    /// ends).
    adopted: Option<(HelperRecord, PathBuf)>,
}

impl ExecStopper {
    #[cfg(test)]
    pub(crate) fn for_test() -> ExecStopper {
        ExecStopper {
            pid: None,
            adopted: None,
        }
    }

    /// Sends `sig` unless the process is no longer the helper.
    fn signal(&self, pid: Pid, sig: Signal) {
        if let Some((rec, dir)) = &self.adopted
            && adopt::check_live(rec, dir).is_err()
        {
            return;
        }
        let _ = kill(pid, sig);
    }

    /// Sends `sig` (by name) to the helper, which forwards it to the command: only the
    /// signals the helper forwards (any other would end the helper, and with it the task).
    pub(crate) fn send(&self, sig: &str) -> Result<(), ExecError> {
        let err = |reason: String| ExecError::Signal {
            signal: sig.to_string(),
            reason,
        };
        let signal: Signal = sig
            .parse()
            .map_err(|_| err("not a signal name".to_string()))?;
        if !skep_init::forwarded_signals().contains(signal) {
            return Err(err(
                "the exec runtime passes on only SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1 and SIGUSR2"
                    .to_string(),
            ));
        }
        let pid = self
            .pid
            .ok_or_else(|| err("the task's process is not known".to_string()))?;
        if let Some((rec, dir)) = &self.adopted {
            adopt::check_live(rec, dir)
                .map_err(|e| err(format!("the task's helper is gone: {e}")))?;
        }
        kill(pid, signal).map_err(|e| err(e.to_string()))
    }

    pub(crate) async fn stop(
        &self,
        exit: watch::Receiver<ExitSlot>,
        grace: Duration,
    ) -> Result<(), ExecError> {
        let Some(pid) = self.pid else {
            return Ok(());
        };
        // A child is reaped by the watcher, so while it has not reported, the PID is still
        // ours; an adopted helper is checked before each signal.
        // Stage 1 forwards SIGTERM to the namespace's init, which forwards it to the command.
        if exit.borrow().is_some() {
            return Ok(());
        }
        self.signal(pid, Signal::SIGTERM);
        if ended_within(exit.clone(), grace).await {
            return Ok(());
        }
        // Stage 2 dies with stage 1 (parent-death signal), and the namespace with stage 2.
        if exit.borrow().is_none() {
            self.signal(pid, Signal::SIGKILL);
        }
        if ended_within(exit, KILL_WAIT).await {
            Ok(())
        } else {
            Err(ExecError::Stop(format!(
                "process {pid} is still running {}s after SIGKILL",
                KILL_WAIT.as_secs()
            )))
        }
    }
}

/// A handle on a helper a previous agent run started: its end is seen by polling the process
/// (checked against the record each time), its code read from the exit file stage 1 writes.
/// The record goes once the end is seen.
fn adopted_handle(dir: PathBuf, rec: HelperRecord, cgroups: Arc<Groups>) -> TaskHandle {
    let pid = Pid::from_raw(rec.pid);
    let (tx, rx) = watch::channel::<ExitSlot>(None);
    let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ended = |dir: &Path| {
        adopt::read_exit(dir).ok_or_else(|| {
            "the task's init helper ended without recording an exit code (it was killed, or ended with the node)".to_string()
        })
    };
    match adopt::check_live(&rec, &dir) {
        Ok(()) => {
            let (rec2, dir2, gone2) = (rec.clone(), dir.clone(), gone.clone());
            tokio::spawn(
                async move {
                    while adopt::check_live(&rec2, &dir2).is_ok() {
                        if tx.is_closed() {
                            // Nobody watches any more (the agent is stopping): leave the record.
                            return;
                        }
                        tokio::time::sleep(ADOPTED_POLL).await;
                    }
                    gone2.store(true, std::sync::atomic::Ordering::Release);
                    let r = ended(&dir2);
                    adopt::forget_record(&dir2);
                    release_cgroups(cgroups, rec2.task_id.clone()).await;
                    tx.send_replace(Some(r));
                }
                .in_current_span(),
            );
        }
        Err(_) => {
            tx.send_replace(Some(ended(&dir)));
            adopt::forget_record(&dir);
            tokio::spawn(release_cgroups(cgroups, rec.task_id.clone()).in_current_span());
        }
    }
    TaskHandle {
        exit: rx,
        ended: gone,
        stopper: Stopper::Exec(ExecStopper {
            pid: Some(pid),
            adopted: Some((rec, dir)),
        }),
    }
}

/// Finds a program as `execvp` would: a path if it has a `/`, else the first executable file
/// of that name in `path_var`.
fn resolve_program(program: &str, path_var: &str) -> Option<PathBuf> {
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        let p = PathBuf::from(program);
        return is_executable(&p).then_some(p);
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(program))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Whether `pid` is the stage 1 init helper of the task in `dir`.
async fn is_helper_of(pid: Pid, dir: &Path) -> bool {
    match tokio::fs::read(format!("/proc/{pid}/cmdline")).await {
        Ok(cmdline) => adopt::cmdline_is_helper_of(&cmdline, dir),
        Err(_) => false,
    }
}

/// Polls until `pid` is no longer the helper of `dir` (exited, reaped or a zombie).
async fn gone_within(pid: Pid, dir: &Path, timeout: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if !is_helper_of(pid, dir).await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Parses the combined output file: `O line` or `E line`; anything else counts as stdout.
fn parse_output(bytes: &[u8]) -> Vec<LogEntry> {
    let text = String::from_utf8_lossy(bytes);
    text.lines().map(parse_output_line).collect()
}

/// One line of the combined output file: `o<ns> text` / `e<ns> text` (stdout or stderr,
/// written at Unix nanoseconds `ns`), or, from a helper of before times were kept,
/// `O text` / `E text`.
fn parse_output_line(l: &str) -> LogEntry {
    let entry = |stream: &str, line: &str, nanos: i64| LogEntry {
        stream: stream.to_string(),
        line: line.to_string(),
        nanos,
    };
    let stream = |tag: char| {
        if tag == 'e' || tag == 'E' {
            "stderr"
        } else {
            "stdout"
        }
    };
    let mut chars = l.chars();
    match chars.next() {
        Some(tag @ ('o' | 'e')) => {
            let rest = chars.as_str();
            if let Some((ns, text)) = rest.split_once(' ')
                && let Ok(nanos) = ns.parse::<i64>()
            {
                return entry(stream(tag), text, nanos);
            }
            entry("stdout", l, 0)
        }
        Some(tag @ ('O' | 'E')) if l.as_bytes().get(1) == Some(&b' ') => {
            entry(stream(tag), &l[2..], 0)
        }
        _ => entry("stdout", l, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shell around `Groups::plan` and `apply` fails closed: a task with a limit the node
    /// cannot enforce (no controller; a group that cannot be made) does not start, and the
    /// helper (absent here, so a start that went on would fail differently) is never run.
    #[tokio::test]
    async fn a_limit_the_node_cannot_enforce_fails_the_start() {
        let state = tempfile::tempdir().unwrap();
        let mut task = crate::store::fixtures::task();
        task.id = "t-limits".into();
        task.spec.command = vec!["/bin/sh".into(), "-c".into(), "true".into()];
        task.spec.limits.memory_bytes = 32 << 20;
        let no_helper = state.path().join("no-such-helper");
        let unusable = [
            Layout::None,
            Layout::V1 {
                cpu: None,
                memory: Some(state.path().join("not-a-cgroup-fs").join("x")),
                pids: None,
            },
        ];
        for layout in unusable {
            let mut rt = ExecRuntime::new(state.path(), no_helper.clone());
            rt.cgroups = Arc::new(Groups::new(layout.clone(), "n1"));
            match rt.start(&task, None, &[], None).await {
                Err(ExecError::Limits(e)) => assert!(
                    e.to_string().contains("--limit-memory")
                        || e.to_string().contains("not-a-cgroup-fs"),
                    "{e}"
                ),
                Err(other) => panic!("{layout:?}: started past the limit check: {other}"),
                Ok(_) => panic!("{layout:?}: started without its limit"),
            }
            assert!(!state.path().join("tasks").join(&task.id).exists());
        }
    }

    /// A task that runs ungrouped (its groups could not be made) has its health checks run
    /// ungrouped too, rather than fail joining groups that are not there; a grouped one's
    /// checks join its groups.
    #[test]
    fn health_checks_join_only_the_groups_that_exist() {
        let state = tempfile::tempdir().unwrap();
        let task = crate::store::fixtures::task();
        let cpu = state.path().join("cpu");
        let mut rt = ExecRuntime::new(state.path(), state.path().join("helper"));
        rt.cgroups = Arc::new(Groups::new(
            Layout::V1 {
                cpu: Some(cpu.clone()),
                memory: None,
                pids: None,
            },
            "n1",
        ));
        assert!(rt.groups_of(&task).is_empty());
        let shared = cpu.join("skep").join("n1").join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        assert_eq!(rt.groups_of(&task), vec![shared]);
    }

    #[test]
    fn programs_are_resolved_like_execvp() {
        assert!(resolve_program("sh", "/nonexistent:/bin:/usr/bin").is_some());
        assert!(resolve_program("/bin/sh", "").is_some());
        assert!(resolve_program("no-such-program-here", DEFAULT_PATH).is_none());
        assert!(resolve_program("/etc/passwd", DEFAULT_PATH).is_none());
        assert!(resolve_program("/bin", DEFAULT_PATH).is_none());
        assert!(resolve_program("", DEFAULT_PATH).is_none());
    }

    #[test]
    fn output_parsing() {
        let v = parse_output(b"O hello\nE oops\nO \nweird\nE \xff\no17 new\ne18 err x\no1x y\n");
        let got: Vec<(&str, &str, i64)> = v
            .iter()
            .map(|e| (e.stream.as_str(), e.line.as_str(), e.nanos))
            .collect();
        assert_eq!(
            got,
            vec![
                ("stdout", "hello", 0),
                ("stderr", "oops", 0),
                ("stdout", "", 0),
                ("stdout", "weird", 0),
                ("stderr", "\u{fffd}", 0),
                ("stdout", "new", 17),
                ("stderr", "err x", 18),
                ("stdout", "o1x y", 0),
            ]
        );
    }
}
