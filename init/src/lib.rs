//! `skep-init`: the exec runtime's init, a program of its own (std and nix only) that puts a
//! task's command in its own mount and PID namespaces without `unsafe` code (no work between
//! `fork` and `exec`: each namespace step is a whole process). It stays small on purpose: two
//! of its processes run beside every exec task, so each page it maps is paid for per task.
//!
//! ```text
//!  agent ─spawn─► stage 1: skep-init init-helper --task-dir DIR [--secrets SDIR] [--user U:G]
//!                             [--config SRC TARGET]... [--spiffe IDIR] [--hide PATH]...
//!                             [--cgroup CGDIR]... -- CMD...
//!                   unshare(mount, PID); make "/" private (recursively)
//!                   bind SDIR read-only at /run/secrets; each --config SRC TARGET read-only
//!                   at TARGET (a file that exists on the host: nothing is created there);
//!                   hide the agent's tasks directory
//!                   (other tasks' logs and secrets) and each PATH (the data directory, the
//!                   socket's directory) under an empty read-only tmpfs
//!                   one thread, one poll(2) loop: copies stage 2's stdout/stderr lines into
//!                   DIR/{stdout,stderr,output}, forwards SIGTERM & co to stage 2, exits with
//!                   its code and leaves it in DIR/exit
//!                 └─spawn─► stage 2: skep-init init-helper --stage2 --task-dir DIR
//!                             [--cgroup CGDIR]... -- CMD...
//!                             PID 1 of the new namespace: joins each CGDIR (the task's
//!                             control groups, made by the agent with its limits; stage 1
//!                             stays outside, so the logs outlive an out-of-memory kill),
//!                             mounts a fresh /proc, runs CMD,
//!                             reaps every orphan, forwards signals to CMD, exits with CMD's
//!                             code (128 + signal if a signal killed it)
//!                           └─spawn─► skep-init init-helper --exec --user U:G -- CMD...:
//!                                       unblocks signals, raises its OOM score adjustment
//!                                       above the daemon's (stages 1 and 2 keep the
//!                                       daemon's), sets no_new_privs, drops to U:G
//!                                       (no supplementary groups, so no capabilities), then
//!                                       becomes CMD (exec)
//!  agent ─spawn─► a health check: skep-init init-helper --exec --user U:G [--cgroup CGDIR]...
//!                   -- CHECK...: the same, in the task's control groups first
//! ```
//!
//! The `init-helper` word keeps the command lines those of the helper before it was its own
//! program (`skep init-helper`, which still runs this same code): one rule recognises both
//! when a restarted agent adopts its tasks.
//!
//! The command never runs as root: `--user` defaults to [`NOBODY`], and no_new_privs keeps
//! setuid programs (su, sudo) and file capabilities from giving privileges back.
//!
//! Signals are blocked and taken with a signalfd (stage 1) or `sigwait` (stage 2), so neither
//! stage needs a signal handler. A PID namespace's init ignores signals it has no handler for
//! unless they are blocked, which is why stage 2 blocks them too. Stage 2 dies with stage 1
//! (`PR_SET_PDEATHSIG`), and the kernel kills every process of the namespace when stage 2
//! ends. Neither stage starts a thread, and the memory each holds is bounded whatever the
//! task prints (see [`log`]).

use std::fs::File;
use std::io::{PipeReader, PipeWriter, Write};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};

use nix::mount::{MsFlags, mount};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

pub mod config_target;
mod log;
mod mounts;
pub mod text;

use log::{Lines, Log, Stream};
use mounts::Mounts;

/// The program's file name: the agent runs it from the directory of its own binary.
pub const PROGRAM: &str = "skep-init";
/// The first argument of every helper command line (see the module documentation).
pub const HELPER_ARG: &str = "init-helper";
/// The task's standard output, as written.
pub const STDOUT_FILE: &str = "stdout";
/// The task's standard error, as written.
pub const STDERR_FILE: &str = "stderr";
/// Both streams interleaved in the order read, one line each, prefixed `o<unix ns> ` or
/// `e<unix ns> ` (`O `/`E ` from helpers of before times were kept).
pub const OUTPUT_FILE: &str = "output";
/// Stage 1's exit code, written as it ends: an agent that restarted while the task ran (and
/// so is not the helper's parent) learns the code from it.
pub const EXIT_FILE: &str = "exit";
/// Where a task sees its secrets.
pub const SECRETS_DIR: &str = "/run/secrets";
/// Where a task sees its identity directory.
pub const SPIFFE_DIR: &str = "/run/spiffe";

/// The signals passed on to the task (any other would end the helper, and the task with it):
/// the only ones `on-change=signal:SIG` may name for an exec task.
pub const EXEC_SIGNALS: [Signal; 6] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// Exit code when the helper itself fails (as `docker run` does).
const EXIT_HELPER_FAILED: u8 = 125;
/// Exit code when the command exists but cannot be run.
const EXIT_CANNOT_RUN: u8 = 126;
/// Exit code when the command does not exist.
const EXIT_NOT_FOUND: u8 = 127;
/// The uid and gid a task's command runs as unless told otherwise: "nobody".
pub const NOBODY: Ids = Ids {
    uid: 65534,
    gid: 65534,
};
/// How many paths `--hide` may name.
const MAX_HIDE: usize = 16;
/// How many control groups `--cgroup` may name (cgroup v1 has one hierarchy per controller).
const MAX_CGROUPS: usize = 4;

/// A uid and gid, as `--user UID:GID` gives them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ids {
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
                text::prefix(s, 32)
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

/// The signals passed on to the task, as a set.
pub fn forwarded_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in EXEC_SIGNALS {
        set.add(s);
    }
    set
}

/// Exit code of a process as a shell reports it.
pub fn status_code(st: ExitStatus) -> i32 {
    match (st.code(), st.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        (None, None) => i32::from(EXIT_HELPER_FAILED),
    }
}

/// Nanoseconds since the Unix epoch.
fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The entry point of `skep-init` (and of the `skep init-helper` subcommand).
///
/// `args` are the arguments after the program name; a leading `init-helper` is skipped:
/// `--task-dir DIR -- CMD ARGS...` for stage 1, `--stage2 --task-dir DIR -- CMD ARGS...` for
/// stage 2, `--exec -- CMD ARGS...` for the command's own process. Call it before any other
/// thread starts (no async runtime yet): a signal could otherwise be taken by a thread that
/// does not block it.
pub fn main(args: &[String]) -> ExitCode {
    let code = match parse_args(args) {
        Ok(HelperArgs {
            mode: Mode::Stage1,
            task_dir: Some(task_dir),
            secrets,
            configs,
            spiffe,
            user,
            hide,
            cgroups,
            command,
        }) => {
            // Opened now: stage 1's own mount namespace hides the tasks directory later.
            let dir = File::open(&task_dir);
            let mounts = Mounts {
                secrets: secrets.as_deref(),
                configs: &configs,
                spiffe: spiffe.as_deref(),
            };
            let run = Run {
                user,
                cgroups: &cgroups,
                command: &command,
            };
            let code = stage1(&task_dir, &mounts, &hide, &run);
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
            cgroups,
            command,
            ..
        }) => stage2(&Run {
            user,
            cgroups: &cgroups,
            command: &command,
        }),
        Ok(HelperArgs {
            mode: Mode::Exec,
            user,
            cgroups,
            command,
            ..
        }) => exec_command(user, &cgroups, &command),
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
    /// Control groups (directories in a cgroup file system) stage 2 joins before the command
    /// starts.
    cgroups: Vec<PathBuf>,
    command: Vec<String>,
}

fn parse_args(args: &[String]) -> Result<HelperArgs, String> {
    let start = usize::from(args.first().is_some_and(|a| a == HELPER_ARG));
    let mut it = args[start..].iter();
    let mut mode = Mode::Stage1;
    let mut task_dir = None;
    let mut secrets = None;
    let mut configs = Vec::new();
    let mut spiffe = None;
    let mut user = NOBODY;
    let mut hide = Vec::new();
    let mut cgroups = Vec::new();
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
                if configs.len() == config_target::MAX_CONFIGS {
                    return Err(format!(
                        "at most {} --config files",
                        config_target::MAX_CONFIGS
                    ));
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
            Some("--cgroup") => {
                if cgroups.len() == MAX_CGROUPS {
                    return Err(format!("at most {MAX_CGROUPS} --cgroup directories"));
                }
                let dir = PathBuf::from(it.next().ok_or("--cgroup needs a value")?);
                if !dir.is_absolute() {
                    return Err("--cgroup wants an absolute path".into());
                }
                cgroups.push(dir)
            }
            Some("--") => break,
            Some(other) => {
                return Err(format!("unexpected argument {:?}", text::prefix(other, 64)));
            }
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
        cgroups,
        command,
    })
}

/// What stage 2 runs, and as whom and where.
struct Run<'a> {
    user: Ids,
    /// The control groups it joins first.
    cgroups: &'a [PathBuf],
    command: &'a [String],
}

fn stage1(task_dir: &Path, mounts: &Mounts<'_>, hide: &[PathBuf], run: &Run<'_>) -> u8 {
    let mut log = match Log::open(task_dir) {
        Ok(l) => l,
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
    // Blocked before stage 2 exists: its end is then never missed, only queued for the fd.
    if let Err(e) = signals.thread_block() {
        log.note(&format!("cannot block signals: {e}"));
        return EXIT_HELPER_FAILED;
    }
    let sigfd = match SignalFd::with_flags(&signals, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
    {
        Ok(fd) => fd,
        Err(e) => {
            log.note(&format!("cannot take signals through a signalfd: {e}"));
            return EXIT_HELPER_FAILED;
        }
    };
    let pipes = std::io::pipe().and_then(|out| Ok((out, std::io::pipe()?)));
    let ((out_r, out_w), (err_r, err_w)) = match pipes {
        Ok(p) => p,
        Err(e) => {
            log.note(&format!("cannot create a pipe: {e}"));
            return EXIT_HELPER_FAILED;
        }
    };
    let launched = launch_stage2(task_dir, mounts, hide, run, &out_w, &err_w);
    // Only the namespace holds the write ends now, so the pipes end with it.
    drop(out_w);
    drop(err_w);
    let mut child = match launched {
        Ok(c) => c,
        Err(msg) => {
            log.note(&msg);
            return EXIT_HELPER_FAILED;
        }
    };
    let code = relay(&mut child, &sigfd, [out_r, err_r], &mut log);
    u8::try_from(code & 0xff).unwrap_or(EXIT_HELPER_FAILED)
}

/// Stage 1's loop: copies the output lines, passes signals on to stage 2 and waits for its
/// end and for the end of both pipes. Stage 2's exit code.
fn relay(child: &mut Child, sigfd: &SignalFd, pipes: [PipeReader; 2], log: &mut Log) -> i32 {
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
    let [out, err] = pipes;
    let mut streams = [
        Some(Lines::new(out, Stream::Out)),
        Some(Lines::new(err, Stream::Err)),
    ];
    let mut code = None;
    loop {
        if let Some(c) = code
            && streams.iter().all(Option::is_none)
        {
            return c;
        }
        let (sig_ready, ready) = {
            let mut fds = vec![PollFd::new(sigfd.as_fd(), PollFlags::POLLIN)];
            for s in streams.iter().flatten() {
                fds.push(PollFd::new(s.pipe.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    log.note(&format!("waiting for the task failed: {e}"));
                    return match child.wait() {
                        Ok(st) => status_code(st),
                        Err(_) => i32::from(EXIT_HELPER_FAILED),
                    };
                }
            }
            let is_ready = |f: &PollFd| f.any().unwrap_or(true);
            let mut ready = [false; 2];
            let mut rest = fds[1..].iter();
            for (i, s) in streams.iter().enumerate() {
                if s.is_some() {
                    ready[i] = rest.next().is_some_and(is_ready);
                }
            }
            (is_ready(&fds[0]), ready)
        };
        for (slot, ready) in streams.iter_mut().zip(ready) {
            if ready
                && let Some(lines) = slot.as_mut()
                && !lines.read_some(log)
            {
                *slot = None;
            }
        }
        if !sig_ready {
            continue;
        }
        while let Ok(Some(info)) = sigfd.read_signal() {
            match Signal::try_from(i32::try_from(info.ssi_signo).unwrap_or(0)) {
                Ok(Signal::SIGCHLD) => match child.try_wait() {
                    Ok(Some(st)) => code = Some(status_code(st)),
                    Ok(None) => {}
                    Err(e) => {
                        log.note(&format!("cannot wait for the namespace init: {e}"));
                        code = Some(i32::from(EXIT_HELPER_FAILED));
                    }
                },
                Ok(sig) => {
                    let _ = kill(pid, sig);
                }
                Err(_) => {}
            }
        }
    }
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

/// Enters new mount and PID namespaces and starts stage 2 in them, its output on the pipes.
fn launch_stage2(
    task_dir: &Path,
    mounts: &Mounts<'_>,
    hide: &[PathBuf],
    run: &Run<'_>,
    out: &PipeWriter,
    err: &PipeWriter,
) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find {PROGRAM}: {e}"))?;
    mounts::enter(task_dir, mounts, hide, &exe)?;
    let dup = |p: &PipeWriter| {
        p.try_clone()
            .map_err(|e| format!("cannot duplicate a pipe: {e}"))
    };
    let mut stage2 = Command::new(exe);
    stage2
        .arg(HELPER_ARG)
        .arg("--stage2")
        .arg("--task-dir")
        .arg(task_dir)
        .arg("--user")
        .arg(run.user.to_string());
    for dir in run.cgroups {
        stage2.arg("--cgroup").arg(dir);
    }
    stage2
        .arg("--")
        .args(run.command)
        .stdin(Stdio::null())
        .stdout(dup(out)?)
        .stderr(dup(err)?)
        .spawn()
        .map_err(|e| format!("cannot start the namespace init: {e}"))
}

fn stage2(run: &Run<'_>) -> u8 {
    let (user, command) = (run.user, run.command);
    // If stage 1 dies (SIGKILL from the agent), so does this init, and with it the namespace.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // Before anything else starts: every process of the task is then in them.
    for dir in run.cgroups {
        if let Err(e) = join_cgroup(dir) {
            eprintln!("skep-init: {e}");
            return EXIT_HELPER_FAILED;
        }
    }
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
            eprintln!("skep-init: cannot find {PROGRAM}: {e}");
            return EXIT_HELPER_FAILED;
        }
    };
    let child = match Command::new(exe)
        .arg(HELPER_ARG)
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
                    return u8::try_from(code & 0xff).unwrap_or(EXIT_HELPER_FAILED);
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

/// Moves this process into the control group `dir` (its children follow it).
fn join_cgroup(dir: &Path) -> Result<(), String> {
    // "0" is the writing process, whatever PID namespace it is in.
    std::fs::write(dir.join("cgroup.procs"), "0").map_err(|e| {
        format!(
            "cannot join the task's control group {}: {e}",
            dir.display()
        )
    })
}

/// Replaces this process with the command, with no signal blocked, as `user`, in each of
/// `cgroups` (a health check joins its task's groups, so its processes count against the
/// task's limits and the node's cap as the task's own do).
fn exec_command(user: Ids, cgroups: &[PathBuf], command: &[String]) -> u8 {
    let Some((program, args)) = command.split_first() else {
        return EXIT_HELPER_FAILED;
    };
    for dir in cgroups {
        if let Err(e) = join_cgroup(dir) {
            eprintln!("skep-init: {e}");
            return EXIT_HELPER_FAILED;
        }
    }
    if let Err(e) = SigSet::all().thread_unblock() {
        eprintln!("skep-init: cannot unblock signals: {e}");
        return EXIT_HELPER_FAILED;
    }
    if let Err(e) = raise_oom_score_above_the_daemon() {
        eprintln!("skep-init: {e}");
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

/// How far above the daemon's standing with the kernel's out-of-memory killer a task's command
/// stands (see [`task_oom_score_adj`]).
pub const OOM_MARGIN: i32 = 500;

/// The OOM score adjustment of a task's command when the daemon's (which stages 1 and 2
/// inherit and keep) is `daemon`: [`OOM_MARGIN`] above it, so that where the memory runs out
/// the kernel kills a task's command before the daemon unless the daemon holds more than
/// half the memory in question more than the task; at least 0 (a container's value, which a
/// daemon unit's `OOMScoreAdjust=-500` gives, as Docker's does), at most 1000 (the kernel's
/// most).
pub fn task_oom_score_adj(daemon: i32) -> i32 {
    daemon.saturating_add(OOM_MARGIN).clamp(0, 1000)
}

/// Sets this process's (the command's, before it execs) OOM score adjustment to
/// [`task_oom_score_adj`] of the one it inherited from the daemon. Only ever raised, so it
/// needs no privilege (lowering needs `CAP_SYS_RESOURCE`); a command that cannot have it
/// does not start.
fn raise_oom_score_above_the_daemon() -> Result<(), String> {
    const FILE: &str = "/proc/self/oom_score_adj";
    let inherited = std::fs::read_to_string(FILE)
        .map_err(|e| format!("cannot read the command's OOM score adjustment ({FILE}): {e}"))?;
    let inherited: i32 = inherited
        .trim()
        .parse()
        .map_err(|e| format!("cannot read the command's OOM score adjustment ({FILE}): {e}"))?;
    let wanted = task_oom_score_adj(inherited);
    if wanted == inherited {
        return Ok(());
    }
    std::fs::write(FILE, wanted.to_string()).map_err(|e| {
        format!("cannot set the command's OOM score adjustment to {wanted} ({FILE}): {e}")
    })
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
            cgroups: Vec::new(),
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
        // Only a leading `init-helper` is the marker: the command may say it too.
        let marker_in_command = parse_args(&s(&["--exec", "--", "echo", "init-helper"])).unwrap();
        assert_eq!(marker_in_command.command, s(&["echo", "init-helper"]));
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

        let joined = parse_args(&s(&[
            "--stage2",
            "--cgroup",
            "/sys/fs/cgroup/memory/skep/t1",
            "--cgroup",
            "/sys/fs/cgroup/cpu/skep/t1",
            "--",
            "x",
        ]))
        .unwrap();
        assert_eq!(
            joined.cgroups,
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/skep/t1"),
                PathBuf::from("/sys/fs/cgroup/cpu/skep/t1")
            ]
        );
        let e = parse_args(&s(&["--stage2", "--cgroup", "skep/t1", "--", "x"])).unwrap_err();
        assert!(e.contains("absolute"), "{e}");
        let mut many = s(&["--stage2"]);
        for _ in 0..=MAX_CGROUPS {
            many.extend(s(&["--cgroup", "/x"]));
        }
        many.extend(s(&["--", "x"]));
        assert!(parse_args(&many).unwrap_err().contains("at most"));
    }

    #[test]
    fn a_tasks_command_stands_above_the_daemon_within_the_kernels_range() {
        // A daemon as started by hand (0), or by a unit with Docker's -500, or lower.
        assert_eq!(task_oom_score_adj(0), 500);
        assert_eq!(task_oom_score_adj(-500), 0);
        assert_eq!(task_oom_score_adj(-1000), 0);
        assert_eq!(task_oom_score_adj(-200), 300);
        assert_eq!(task_oom_score_adj(700), 1000);
        assert_eq!(task_oom_score_adj(1000), 1000);
        // Never below what it inherited: raising needs no privilege.
        for d in [-1000, -501, -500, -1, 0, 1, 499, 500, 999, 1000] {
            assert!(task_oom_score_adj(d) >= d, "{d}");
        }
    }

    /// Needs root (fails without it). In a child process: the drop is for good.
    #[test]
    fn the_command_runs_as_nobody_with_no_new_privs() {
        if !root_or_skip() {
            return;
        }
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tests::drop_in_child", "--nocapture"])
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

    /// As skep's `util::root_or_skip`: root, or a notice under `SKEP_IT_ALLOW_SKIP=1` (unless
    /// `SKEP_IT_REQUIRE` names exec), or a failure.
    fn root_or_skip() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        let required = std::env::var("SKEP_IT_REQUIRE")
            .is_ok_and(|list| list.split(',').any(|n| n.trim() == "exec"));
        if !required && std::env::var_os("SKEP_IT_ALLOW_SKIP").is_some_and(|v| v == "1") {
            eprintln!("NOTICE: this test needs root: skipping (SKEP_IT_ALLOW_SKIP=1)");
            return false;
        }
        panic!("this test needs root (set SKEP_IT_ALLOW_SKIP=1 to skip it on purpose)");
    }

    #[test]
    fn status_codes() {
        assert_eq!(status_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(status_code(ExitStatus::from_raw(9)), 137);
    }
}
