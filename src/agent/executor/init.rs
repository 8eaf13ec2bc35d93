//! The exec runtime's init helper: the `skep init-helper` process that puts a task's command
//! in its own mount and PID namespaces without `unsafe` code (no work between `fork` and
//! `exec`: each namespace step is a whole process).
//!
//! ```text
//!  agent ─spawn─► stage 1: skep init-helper --task-dir DIR [--secrets SDIR] [--user U:G]
//!                             [--hide PATH]... -- CMD...
//!                   unshare(mount, PID); make "/" private (recursively)
//!                   bind SDIR read-only at /run/secrets; each --config SRC TARGET read-only
//!                   at TARGET (a file that exists on the host: nothing is created there);
//!                   hide the agent's tasks directory
//!                   (other tasks' logs and secrets) and each PATH (the data directory, the
//!                   socket's directory) under an empty read-only tmpfs
//!                   copies stage 2's stdout/stderr lines into DIR/{stdout,stderr,output}
//!                   forwards SIGTERM & co to stage 2, exits with its code
//!                 └─spawn─► stage 2: skep init-helper --stage2 --task-dir DIR -- CMD...
//!                             PID 1 of the new namespace: mounts a fresh /proc, runs CMD,
//!                             reaps every orphan, forwards signals to CMD, exits with CMD's
//!                             code (128 + signal if a signal killed it)
//!                           └─spawn─► skep init-helper --exec --user U:G -- CMD...:
//!                                       unblocks signals, sets no_new_privs, drops to U:G
//!                                       (no supplementary groups, so no capabilities), then
//!                                       becomes CMD (exec)
//! ```
//!
//! The command never runs as root: `--user` defaults to [`NOBODY`], and no_new_privs keeps
//! setuid programs (su, sudo) and file capabilities from giving privileges back.
//!
//! Signals are blocked and taken with `sigwait`, so neither stage needs a signal handler. A
//! PID namespace's init ignores signals it has no handler for unless they are blocked, which is
//! why stage 2 blocks them too. Stage 2 dies with stage 1 (`PR_SET_PDEATHSIG`), and the
//! kernel kills every process of the namespace when stage 2 ends.
//!
//! Call [`init_helper_main`] before any other thread starts (no async runtime yet): a signal
//! could otherwise be taken by a thread that does not block it.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, PipeWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// The task's standard output, as written.
pub(super) const STDOUT_FILE: &str = "stdout";
/// The task's standard error, as written.
pub(super) const STDERR_FILE: &str = "stderr";
/// Both streams interleaved in the order read, one line each, prefixed `O ` or `E `.
pub(super) const OUTPUT_FILE: &str = "output";
/// Stage 1's exit code, written as it ends: an agent that restarted while the task ran (and
/// so is not the helper's parent) learns the code from it.
pub(super) const EXIT_FILE: &str = "exit";

/// Exit code when the helper itself fails (as `docker run` does).
const EXIT_HELPER_FAILED: u8 = 125;
/// Exit code when the command exists but cannot be run.
const EXIT_CANNOT_RUN: u8 = 126;
/// Exit code when the command does not exist.
const EXIT_NOT_FOUND: u8 = 127;
/// Lines longer than this are split.
const MAX_LINE: u64 = 64 * 1024;
/// The uid and gid a task's command runs as unless told otherwise: "nobody".
pub(crate) const NOBODY: Ids = Ids {
    uid: 65534,
    gid: 65534,
};
/// How many paths `--hide` may name.
const MAX_HIDE: usize = 16;
/// How many `--config`s a task may have.
const MAX_CONFIGS: usize = crate::spec::config_target::MAX_CONFIGS;

/// A uid and gid, as `--user UID:GID` gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ids {
    /// User ID.
    pub uid: u32,
    /// Group ID.
    pub gid: u32,
}

impl Ids {
    /// Parses `UID:GID` (or `UID`, the gid then equal to it).
    fn parse(s: &str) -> Result<Ids, String> {
        let bad = || {
            format!(
                "--user wants UID[:GID] in numbers, got {:?}",
                crate::util::prefix(s, 32)
            )
        };
        let (u, g) = s.split_once(':').unwrap_or((s, s));
        Ok(Ids {
            uid: u.parse().map_err(|_| bad())?,
            gid: g.parse().map_err(|_| bad())?,
        })
    }
}

impl std::fmt::Display for Ids {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

/// Entry point of the hidden `skep init-helper` subcommand.
///
/// `args` are the arguments after `init-helper` (a leading program name and `init-helper`
/// are skipped if present): `--task-dir DIR -- CMD ARGS...` for stage 1,
/// `--stage2 --task-dir DIR -- CMD ARGS...` for stage 2, `--exec -- CMD ARGS...` for the
/// command's own process.
pub fn init_helper_main(args: Vec<String>) -> ExitCode {
    let code = match parse_args(&args) {
        Ok(HelperArgs {
            mode: Mode::Stage1,
            task_dir: Some(task_dir),
            secrets,
            configs,
            spiffe,
            user,
            hide,
            command,
        }) => {
            // Opened now: stage 1's own mount namespace hides the tasks directory later.
            let dir = File::open(&task_dir);
            let mounts = Mounts {
                secrets: secrets.as_deref(),
                configs: &configs,
                spiffe: spiffe.as_deref(),
            };
            let code = stage1(&task_dir, &mounts, user, &hide, &command);
            match dir {
                Ok(dir) => record_exit(&dir, code),
                Err(e) => eprintln!(
                    "skep-init: cannot open {} to record the exit code: {e}",
                    task_dir.display()
                ),
            }
            code
        }
        Ok(HelperArgs {
            mode: Mode::Stage1,
            task_dir: None,
            ..
        }) => {
            eprintln!("skep-init: missing --task-dir");
            EXIT_HELPER_FAILED
        }
        Ok(HelperArgs {
            mode: Mode::Stage2,
            user,
            command,
            ..
        }) => stage2(user, &command),
        Ok(HelperArgs {
            mode: Mode::Exec,
            user,
            command,
            ..
        }) => exec_command(user, &command),
        Err(e) => {
            eprintln!("skep-init: {e}");
            EXIT_HELPER_FAILED
        }
    };
    ExitCode::from(code)
}

#[derive(Debug, PartialEq)]
enum Mode {
    /// Outside the namespaces: creates them, keeps the logs.
    Stage1,
    /// PID 1 inside them.
    Stage2,
    /// The command's own process: unblocks signals and becomes the command. std does not
    /// reset the signal mask of the processes it starts, and changing it between `fork` and
    /// `exec` would need `unsafe`, so this one more `exec` does it.
    Exec,
}

#[derive(Debug, PartialEq)]
struct HelperArgs {
    mode: Mode,
    task_dir: Option<PathBuf>,
    secrets: Option<PathBuf>,
    /// Config files and the targets they are bound at.
    configs: Vec<(PathBuf, String)>,
    /// The identity directory, bound at `/run/spiffe`.
    spiffe: Option<PathBuf>,
    /// Who the command runs as.
    user: Ids,
    /// Host paths the task must not see.
    hide: Vec<PathBuf>,
    command: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<HelperArgs, String> {
    let start = args
        .iter()
        .position(|a| a == "init-helper")
        .map_or(0, |i| i + 1);
    let mut it = args[start..].iter();
    let mut mode = Mode::Stage1;
    let mut task_dir = None;
    let mut secrets = None;
    let mut configs = Vec::new();
    let mut spiffe = None;
    let mut user = NOBODY;
    let mut hide = Vec::new();
    loop {
        match it.next().map(String::as_str) {
            Some("--stage2") => mode = Mode::Stage2,
            Some("--exec") => mode = Mode::Exec,
            Some("--task-dir") => {
                task_dir = Some(PathBuf::from(it.next().ok_or("--task-dir needs a value")?))
            }
            Some("--secrets") => {
                secrets = Some(PathBuf::from(it.next().ok_or("--secrets needs a value")?))
            }
            Some("--spiffe") => {
                spiffe = Some(PathBuf::from(it.next().ok_or("--spiffe needs a value")?))
            }
            Some("--config") => {
                if configs.len() == MAX_CONFIGS {
                    return Err(format!("at most {MAX_CONFIGS} --config files"));
                }
                let source = it.next().ok_or("--config needs a file and a target")?;
                let target = it.next().ok_or("--config needs a file and a target")?;
                configs.push((PathBuf::from(source), target.clone()));
            }
            Some("--user") => user = Ids::parse(it.next().ok_or("--user needs a value")?)?,
            Some("--hide") => {
                if hide.len() == MAX_HIDE {
                    return Err(format!("at most {MAX_HIDE} --hide paths"));
                }
                hide.push(PathBuf::from(it.next().ok_or("--hide needs a value")?))
            }
            Some("--") => break,
            Some(other) => return Err(format!("unexpected argument {other:?}")),
            None => return Err("missing `-- COMMAND`".into()),
        }
    }
    let command: Vec<String> = it.cloned().collect();
    if command.is_empty() {
        return Err("no command given after `--`".into());
    }
    Ok(HelperArgs {
        mode,
        task_dir,
        secrets,
        configs,
        spiffe,
        user,
        hide,
        command,
    })
}

/// The signals passed on to the task.
pub(super) fn forwarded_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in crate::spec::secret::EXEC_SIGNALS {
        set.add(s);
    }
    set
}

/// Exit code of a process as a shell reports it.
pub(super) fn status_code(st: ExitStatus) -> i32 {
    match (st.code(), st.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => i32::from(EXIT_HELPER_FAILED),
    }
}

/// What stage 1 binds into the task's mount namespace.
struct Mounts<'a> {
    /// The directory seen as `/run/secrets`.
    secrets: Option<&'a Path>,
    /// Config files and their targets.
    configs: &'a [(PathBuf, String)],
    /// The directory seen as `/run/spiffe`.
    spiffe: Option<&'a Path>,
}

fn stage1(
    task_dir: &Path,
    mounts: &Mounts<'_>,
    user: Ids,
    hide: &[PathBuf],
    command: &[String],
) -> u8 {
    let log = match Log::open(task_dir) {
        Ok(l) => Arc::new(l),
        Err(e) => {
            eprintln!(
                "skep-init: cannot open the log files in {}: {e}",
                task_dir.display()
            );
            return EXIT_HELPER_FAILED;
        }
    };
    let mut signals = forwarded_signals();
    signals.add(Signal::SIGCHLD);
    // Before any thread: the readers inherit the mask, so only `sigwait` below takes them.
    if let Err(e) = signals.thread_block() {
        log.note(&format!("cannot block signals: {e}"));
        return EXIT_HELPER_FAILED;
    }
    // The pipes and their reader threads come before `unshare`: a process whose PID
    // namespace for children differs from its own cannot create threads.
    let mut readers = Vec::new();
    let mut writers = Vec::new();
    for stream in [Stream::Out, Stream::Err] {
        let (r, w) = match std::io::pipe() {
            Ok(p) => p,
            Err(e) => {
                log.note(&format!("cannot create a pipe: {e}"));
                return EXIT_HELPER_FAILED;
            }
        };
        let l = log.clone();
        match std::thread::Builder::new().spawn(move || copy_lines(r, stream, &l)) {
            Ok(t) => readers.push(t),
            Err(e) => {
                log.note(&format!("cannot start a log reader: {e}"));
                return EXIT_HELPER_FAILED;
            }
        }
        writers.push(w);
    }
    let (Some(err_w), Some(out_w)) = (writers.pop(), writers.pop()) else {
        return EXIT_HELPER_FAILED;
    };
    let launched = launch_stage2(task_dir, mounts, user, hide, command, &out_w, &err_w);
    if let Err(msg) = &launched {
        // Through the pipe, so the message is in order with the rest.
        let _ = writeln!(&err_w, "skep-init: {msg}");
    }
    // Only the namespace holds the write ends now, so the readers end with it.
    drop(out_w);
    drop(err_w);
    let mut child = match launched {
        Ok(c) => c,
        Err(_) => {
            join_all(readers);
            return EXIT_HELPER_FAILED;
        }
    };
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let code = loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => match child.try_wait() {
                Ok(Some(st)) => break status_code(st),
                Ok(None) => {}
                Err(e) => {
                    log.note(&format!("cannot wait for the namespace init: {e}"));
                    break i32::from(EXIT_HELPER_FAILED);
                }
            },
            Ok(sig) => {
                let _ = kill(pid, sig);
            }
            Err(e) => {
                log.note(&format!("waiting for signals failed: {e}"));
                break match child.wait() {
                    Ok(st) => status_code(st),
                    Err(_) => i32::from(EXIT_HELPER_FAILED),
                };
            }
        }
    };
    // The namespace is gone with its init, so every writer of the pipes is gone too.
    join_all(readers);
    code as u8
}

/// Writes the exit code to [`EXIT_FILE`] in the task directory `dir` (whole or not at all:
/// written aside, then renamed), through a descriptor of the directory opened before stage 1
/// hid it in its own mount namespace. Best effort: the agent that started the helper also
/// reaps it.
fn record_exit(dir: &File, code: u8) {
    use nix::fcntl::{OFlag, openat, renameat};
    use nix::sys::stat::Mode;
    const TMP: &str = ".exit.tmp";
    let written = openat(
        dir,
        TMP,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(std::io::Error::from)
    .and_then(|fd| writeln!(File::from(fd), "{code}"))
    .and_then(|()| renameat(dir, TMP, dir, EXIT_FILE).map_err(std::io::Error::from));
    if let Err(e) = written {
        eprintln!("skep-init: cannot record the exit code: {e}");
    }
}

fn join_all(threads: Vec<std::thread::JoinHandle<()>>) {
    for t in threads {
        let _ = t.join();
    }
}

/// Enters new mount and PID namespaces and starts stage 2 in them, its output on the pipes.
fn launch_stage2(
    task_dir: &Path,
    mounts: &Mounts<'_>,
    user: Ids,
    hide: &[PathBuf],
    command: &[String],
    out: &PipeWriter,
    err: &PipeWriter,
) -> Result<Child, String> {
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID).map_err(|e| {
        format!(
            "cannot create mount and PID namespaces: {e}; the exec runtime needs root (CAP_SYS_ADMIN)"
        )
    })?;
    // Nothing mounted by the task may propagate back to the host.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("cannot make the mounts private: {e}"))?;
    if let Some(dir) = mounts.secrets {
        expose_secrets(dir)?;
    }
    for (source, target) in mounts.configs {
        expose_config(source, target)?;
    }
    if let Some(dir) = mounts.spiffe {
        expose_dir(
            dir,
            Path::new(crate::agent::svid::TARGET_DIR),
            "the task's identity",
        )?;
    }
    expose_hosts(task_dir)?;
    hide_tasks_dir(task_dir)?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the skep binary: {e}"))?;
    let needed = [
        Path::new(crate::agent::secrets::TARGET_ROOT),
        Path::new(crate::agent::svid::TARGET_DIR),
        Path::new("/etc/hosts"),
        exe.as_path(),
    ];
    hide_paths(hide, &needed)?;
    let dup = |p: &PipeWriter| {
        p.try_clone()
            .map_err(|e| format!("cannot duplicate a pipe: {e}"))
    };
    Command::new(exe)
        .arg("init-helper")
        .arg("--stage2")
        .arg("--task-dir")
        .arg(task_dir)
        .arg("--user")
        .arg(user.to_string())
        .arg("--")
        .args(command)
        .stdin(Stdio::null())
        .stdout(dup(out)?)
        .stderr(dup(err)?)
        .spawn()
        .map_err(|e| format!("cannot start the namespace init: {e}"))
}

/// A task on a network has a `hosts` file in its task directory (the services it may reach by
/// name): bound read-only over `/etc/hosts` in this mount namespace. The agent rewrites the
/// file in place as services come and go.
fn expose_hosts(task_dir: &Path) -> Result<(), String> {
    let hosts = task_dir.join("hosts");
    if !hosts.exists() {
        return Ok(());
    }
    let target = Path::new("/etc/hosts");
    mount(
        Some(hosts.as_path()),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("cannot bind the task's hosts file at /etc/hosts: {e}"))?;
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(|e| format!("cannot make the task's /etc/hosts read-only: {e}"))
}

/// Binds a config file (on the task's tmpfs) read-only at `target`, in this mount namespace
/// only. An exec task sees the host's own file system, so the target must be a regular file
/// that exists there (not a link): a bind needs a file to cover, and creating one would leave
/// it on the host. The target is checked against the config rule again.
fn expose_config(source: &Path, target: &str) -> Result<(), String> {
    crate::spec::config_target::check(target)?;
    let shown = crate::util::quote(&crate::util::prefix(target, 64));
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_file() => {}
        Ok(_) => {
            return Err(format!(
                "config target {shown} is not a regular file on this node; an exec task sees the node's file system, where a config can only cover an existing file"
            ));
        }
        Err(e) => {
            return Err(format!(
                "config target {shown} does not exist on this node ({e}); an exec task sees the node's file system, where a config can only cover an existing file (skep creates nothing on the host): create it, or use the docker runtime"
            ));
        }
    }
    bind_read_only(source, Path::new(target), &format!("the config at {shown}"))
}

/// Binds the task's secrets directory (on its tmpfs) read-only at `/run/secrets`, in this
/// mount namespace only. `/run/secrets` is created on the host if missing (an empty directory).
fn expose_secrets(dir: &Path) -> Result<(), String> {
    expose_dir(
        dir,
        Path::new(crate::agent::secrets::TARGET_ROOT),
        "the task's secrets",
    )
}

/// Binds `dir` read-only at `target` in this mount namespace only, creating `target` on the
/// host if missing (an empty directory); `what` names it in an error.
fn expose_dir(dir: &Path, target: &Path, what: &str) -> Result<(), String> {
    std::fs::create_dir_all(target)
        .map_err(|e| format!("cannot create {}: {e}", target.display()))?;
    bind_read_only(dir, target, &format!("{what} at {}", target.display()))
}

/// Binds `source` at `target` in this mount namespace, read-only, nosuid, nodev and noexec;
/// `what` names it in an error.
fn bind_read_only(source: &Path, target: &Path, what: &str) -> Result<(), String> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("cannot bind {what}: {e}"))?;
    mount(
        None::<&str>,
        target,
        None::<&str>,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_RDONLY
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("cannot make {what} read-only: {e}"))
}

/// Covers the agent's tasks directory (every task's logs and secrets tmpfs) with an empty
/// read-only tmpfs, so the task cannot browse other tasks' files through the host tree.
/// The log files stay writable for stage 1 through descriptors opened before.
fn hide_tasks_dir(task_dir: &Path) -> Result<(), String> {
    match task_dir.parent() {
        Some(tasks) => hide_dir(tasks),
        None => Ok(()),
    }
}

/// Covers `dir` with an empty read-only tmpfs in this mount namespace.
fn hide_dir(dir: &Path) -> Result<(), String> {
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("size=4k,mode=0755"),
    )
    .map_err(|e| format!("cannot hide {}: {e}", dir.display()))
}

/// How to keep one host path out of a task's view.
#[derive(Debug, PartialEq, Eq)]
enum Cover {
    /// A directory: an empty read-only tmpfs over it.
    Dir,
    /// Anything else (a socket): `/dev/null` bound over it.
    File,
    /// Left alone: it holds something the task needs (its secrets, its hosts file, the
    /// helper), so a tmpfs over it would take that away too; or it does not exist.
    Keep,
}

/// How `path` is hidden, given whether it is a directory (`None`: missing) and what the task
/// needs to keep seeing.
fn cover_for(path: &Path, is_dir: Option<bool>, needed: &[&Path]) -> Cover {
    match is_dir {
        None => Cover::Keep,
        Some(false) => Cover::File,
        Some(true) if needed.iter().any(|n| n.starts_with(path)) => Cover::Keep,
        Some(true) => Cover::Dir,
    }
}

/// Hides each of `paths` in this mount namespace: directories first (under an empty read-only
/// tmpfs), then files not already gone with them (under `/dev/null`). Symbolic links are
/// followed (`/var/run` is `/run`).
fn hide_paths(paths: &[PathBuf], needed: &[&Path]) -> Result<(), String> {
    let kind = |p: &Path| std::fs::metadata(p).ok().map(|m| m.is_dir());
    let paths: Vec<PathBuf> = paths
        .iter()
        .filter_map(|p| std::fs::canonicalize(p).ok())
        .collect();
    for p in &paths {
        if cover_for(p, kind(p), needed) == Cover::Dir {
            hide_dir(p)?;
        }
    }
    for p in &paths {
        if cover_for(p, kind(p), needed) == Cover::File {
            mount(
                Some("/dev/null"),
                p.as_path(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(|e| format!("cannot hide {}: {e}", p.display()))?;
        }
    }
    Ok(())
}

fn stage2(user: Ids, command: &[String]) -> u8 {
    // If stage 1 dies (SIGKILL from the agent), so does this init, and with it the namespace.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let mut signals = forwarded_signals();
    signals.add(Signal::SIGCHLD);
    if let Err(e) = signals.thread_block() {
        eprintln!("skep-init: cannot block signals: {e}");
        return EXIT_HELPER_FAILED;
    }
    if let Err(e) = mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    ) {
        eprintln!("skep-init: cannot mount /proc for the new PID namespace: {e}");
        return EXIT_HELPER_FAILED;
    }
    let exe = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("skep-init: cannot find the skep binary: {e}");
            return EXIT_HELPER_FAILED;
        }
    };
    let child = match Command::new(exe)
        .arg("init-helper")
        .arg("--exec")
        .arg("--user")
        .arg(user.to_string())
        .arg("--")
        .args(command)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skep-init: cannot start the command: {e}");
            return EXIT_HELPER_FAILED;
        }
    };
    let main = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    loop {
        match signals.wait() {
            Ok(Signal::SIGCHLD) => {
                if let Some(code) = reap(main) {
                    return code as u8;
                }
            }
            Ok(sig) => {
                let _ = kill(main, sig);
            }
            Err(e) => {
                eprintln!("skep-init: waiting for signals failed: {e}");
                return EXIT_HELPER_FAILED;
            }
        }
    }
}

/// Replaces this process with the command, with no signal blocked, as `user`.
fn exec_command(user: Ids, command: &[String]) -> u8 {
    let Some((program, args)) = command.split_first() else {
        return EXIT_HELPER_FAILED;
    };
    if let Err(e) = SigSet::all().thread_unblock() {
        eprintln!("skep-init: cannot unblock signals: {e}");
        return EXIT_HELPER_FAILED;
    }
    if let Err(e) = drop_privileges(user) {
        eprintln!("skep-init: {e}");
        return EXIT_HELPER_FAILED;
    }
    let e = Command::new(program).args(args).exec();
    eprintln!("skep-init: cannot run {program:?}: {e}");
    if e.kind() == std::io::ErrorKind::NotFound {
        EXIT_NOT_FOUND
    } else {
        EXIT_CANNOT_RUN
    }
}

/// Becomes `user` for good: no_new_privs first (setuid programs and file capabilities then
/// give nothing back), no supplementary groups, then the gid and uid (real, effective and
/// saved). Leaving uid 0 this way clears every capability.
fn drop_privileges(user: Ids) -> Result<(), String> {
    use nix::unistd::{Gid, Uid, setgroups, setresgid, setresuid};
    nix::sys::prctl::set_no_new_privs().map_err(|e| format!("cannot set no_new_privs: {e}"))?;
    let (uid, gid) = (Uid::from_raw(user.uid), Gid::from_raw(user.gid));
    if Uid::effective().is_root() {
        setgroups(&[]).map_err(|e| format!("cannot drop supplementary groups: {e}"))?;
    }
    setresgid(gid, gid, gid).map_err(|e| format!("cannot become group {}: {e}", user.gid))?;
    setresuid(uid, uid, uid).map_err(|e| format!("cannot become user {}: {e}", user.uid))?;
    Ok(())
}

/// Reaps every ended child; returns the main command's exit code if it was among them.
fn reap(main: Pid) -> Option<i32> {
    let mut code = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, c)) if pid == main => code = Some(c),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == main => code = Some(128 + sig as i32),
            Ok(WaitStatus::StillAlive) | Err(_) => return code,
            Ok(_) => {}
        }
    }
}

#[derive(Clone, Copy)]
enum Stream {
    Out,
    Err,
}

/// The task's log files, opened for appending.
struct Log {
    out: Mutex<File>,
    err: Mutex<File>,
    output: Mutex<File>,
}

impl Log {
    fn open(dir: &Path) -> std::io::Result<Log> {
        let open = |name: &str| {
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(dir.join(name))
                .map(Mutex::new)
        };
        Ok(Log {
            out: open(STDOUT_FILE)?,
            err: open(STDERR_FILE)?,
            output: open(OUTPUT_FILE)?,
        })
    }

    /// Appends one line (without its newline) to its stream's file and to the combined file.
    fn line(&self, stream: Stream, line: &[u8]) {
        let (file, tag) = match stream {
            Stream::Out => (&self.out, 'o'),
            Stream::Err => (&self.err, 'e'),
        };
        let mut raw = Vec::with_capacity(line.len() + 1);
        raw.extend_from_slice(line);
        raw.push(b'\n');
        // Log writes are best effort: a full disk must not kill the task.
        if let Ok(mut f) = file.lock() {
            let _ = f.write_all(&raw);
        }
        // `o<unix ns> line`: the time lets `service logs --since/--timestamps/-f` work.
        let mut tagged = format!("{tag}{} ", super::now_nanos()).into_bytes();
        tagged.extend_from_slice(&raw);
        if let Ok(mut f) = self.output.lock() {
            let _ = f.write_all(&tagged);
        }
    }

    /// A message from the helper itself, on the task's stderr.
    fn note(&self, msg: &str) {
        self.line(Stream::Err, format!("skep-init: {msg}").as_bytes());
    }
}

/// Copies lines from a pipe into the log until the pipe closes.
fn copy_lines(pipe: impl Read, stream: Stream, log: &Log) {
    let mut r = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut r).take(MAX_LINE).read_until(b'\n', &mut buf) {
            Ok(0) => return,
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                }
                log.line(stream, &buf);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn args() {
        let want = HelperArgs {
            mode: Mode::Stage1,
            task_dir: Some("/d".into()),
            secrets: None,
            configs: Vec::new(),
            spiffe: None,
            user: NOBODY,
            hide: Vec::new(),
            command: s(&["sh", "-c", "x --y"]),
        };
        assert_eq!(
            parse_args(&s(&["--task-dir", "/d", "--", "sh", "-c", "x --y"])),
            Ok(want)
        );
        let with_secrets = parse_args(&s(&["--task-dir", "/d", "--secrets", "/d/s", "--", "a"]));
        assert_eq!(with_secrets.map(|a| a.secrets), Ok(Some("/d/s".into())));
        let with_configs = parse_args(&s(&[
            "--task-dir",
            "/d",
            "--config",
            "/d/secrets/configs/0",
            "/etc/app.conf",
            "--config",
            "/d/secrets/configs/1",
            "/etc/b.conf",
            "--",
            "a",
        ]))
        .unwrap();
        assert_eq!(
            with_configs.configs,
            vec![
                ("/d/secrets/configs/0".into(), "/etc/app.conf".to_string()),
                ("/d/secrets/configs/1".into(), "/etc/b.conf".to_string()),
            ]
        );
        assert!(parse_args(&s(&["--task-dir", "/d", "--config", "/x", "--"])).is_err());
        let full = parse_args(&s(&[
            "/bin/skep",
            "init-helper",
            "--stage2",
            "--task-dir",
            "/d",
            "--",
            "a",
        ]))
        .unwrap();
        assert_eq!(full.mode, Mode::Stage2);
        assert_eq!(full.command, s(&["a"]));
        let exec = parse_args(&s(&["--exec", "--", "a", "b"])).unwrap();
        assert_eq!((exec.mode, exec.task_dir), (Mode::Exec, None));
        assert!(parse_args(&s(&["--task-dir", "/d", "--"])).is_err());
        assert!(parse_args(&s(&["--task-dir", "/d", "a"])).is_err());
        assert!(parse_args(&s(&["--task-dir"])).is_err());

        let full = parse_args(&s(&[
            "--task-dir",
            "/d",
            "--user",
            "1000:100",
            "--hide",
            "/a",
            "--hide",
            "/b",
            "--",
            "x",
        ]))
        .unwrap();
        assert_eq!(
            full.user,
            Ids {
                uid: 1000,
                gid: 100
            }
        );
        assert_eq!(full.hide, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        let exec = parse_args(&s(&["--exec", "--user", "7", "--", "x"])).unwrap();
        assert_eq!(exec.user, Ids { uid: 7, gid: 7 });
        for bad in ["root", "1:x", "-1", "", "1:2:3"] {
            let e = parse_args(&s(&["--exec", "--user", bad, "--", "x"])).unwrap_err();
            assert!(e.contains("--user wants UID[:GID]"), "{e}");
        }
        let mut many = s(&["--task-dir", "/d"]);
        for _ in 0..=MAX_HIDE {
            many.extend(s(&["--hide", "/x"]));
        }
        many.extend(s(&["--", "x"]));
        assert!(parse_args(&many).unwrap_err().contains("at most"));
    }

    #[test]
    fn what_a_task_must_not_see_is_covered_unless_it_holds_what_the_task_needs() {
        let needed = [
            Path::new("/run/secrets"),
            Path::new("/etc/hosts"),
            Path::new("/usr/bin/skep"),
        ];
        let cover = |p: &str, d| cover_for(Path::new(p), d, &needed);
        assert_eq!(cover("/var/lib/skep", Some(true)), Cover::Dir);
        assert_eq!(cover("/run/skep", Some(true)), Cover::Dir);
        // The socket's directory is /run: only the socket itself can go.
        assert_eq!(cover("/run", Some(true)), Cover::Keep);
        assert_eq!(cover("/run/skep.sock", Some(false)), Cover::File);
        assert_eq!(cover("/", Some(true)), Cover::Keep);
        assert_eq!(cover("/usr/bin", Some(true)), Cover::Keep);
        assert_eq!(cover("/gone", None), Cover::Keep);
    }

    /// Nothing is mounted (or created) for a target the host lacks, or that is not a plain
    /// file: the error names the target and says what to do.
    #[test]
    fn a_config_target_must_be_an_existing_file_of_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("0");
        std::fs::write(&src, "x").unwrap();
        let missing = dir.path().join("nope.conf");
        let e = expose_config(&src, missing.to_str().unwrap()).unwrap_err();
        assert!(e.contains("does not exist on this node"), "{e}");
        assert!(e.contains("nope.conf"), "{e}");
        assert!(!missing.exists());
        let link = dir.path().join("link.conf");
        std::os::unix::fs::symlink(&src, &link).unwrap();
        let e = expose_config(&src, link.to_str().unwrap()).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
        let e = expose_config(&src, "/run/secrets/x").unwrap_err();
        assert!(e.contains("/run/secrets"), "{e}");
    }

    /// Needs root (fails without it). In a child process: the drop is for good.
    #[test]
    fn the_command_runs_as_nobody_with_no_new_privs() {
        if !crate::util::root_or_skip() {
            return;
        }
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "agent::executor::init::tests::drop_in_child",
                "--nocapture",
            ])
            .env("SKEP_TEST_DROP", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("dropped uid=65534 gid=65534 groups=0 nnp=true caps=0"),
            "{text}"
        );
    }

    #[test]
    fn drop_in_child() {
        if std::env::var_os("SKEP_TEST_DROP").is_none() {
            return;
        }
        drop_privileges(NOBODY).unwrap();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .unwrap_or("")
                .trim()
                .to_string()
        };
        let caps = ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"]
            .iter()
            .filter(|k| !field(k).trim_start_matches('0').is_empty())
            .count();
        println!(
            "dropped uid={} gid={} groups={} nnp={} caps={caps}",
            nix::unistd::getuid(),
            nix::unistd::getgid(),
            field("Groups:").split_whitespace().count(),
            nix::sys::prctl::get_no_new_privs().unwrap()
        );
    }

    #[test]
    fn lines_are_copied_in_order_and_split_when_long() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        copy_lines(&b"a\nb"[..], Stream::Out, &log);
        copy_lines(&b"c\n"[..], Stream::Err, &log);
        log.note("hi");
        let read = |n| std::fs::read_to_string(dir.path().join(n)).unwrap();
        assert_eq!(read(STDOUT_FILE), "a\nb\n");
        assert_eq!(read(STDERR_FILE), "c\nskep-init: hi\n");
        let tags: Vec<(char, String)> = read(OUTPUT_FILE)
            .lines()
            .map(|l| {
                let (head, text) = l.split_once(' ').unwrap();
                assert!(head[1..].parse::<i64>().unwrap() > 0, "{l:?} has no time");
                (head.chars().next().unwrap(), text.to_string())
            })
            .collect();
        let want = [('o', "a"), ('o', "b"), ('e', "c"), ('e', "skep-init: hi")];
        assert_eq!(tags, want.map(|(t, s)| (t, s.to_string())).to_vec());

        let long = vec![b'x'; MAX_LINE as usize + 10];
        copy_lines(&long[..], Stream::Out, &log);
        let out = read(STDOUT_FILE);
        assert_eq!(out.lines().count(), 4);
    }

    #[test]
    fn status_codes() {
        assert_eq!(status_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(status_code(ExitStatus::from_raw(9)), 137);
    }
}
