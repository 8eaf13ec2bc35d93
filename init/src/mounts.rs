//! Stage 1's view of the host, set up in the task's new mount namespace: the secrets, configs
//! and identity bound read-only, the task's hosts file over `/etc/hosts`, and what the task must
//! not see (other tasks' directories, the daemon's data directory and socket) covered.

use std::path::{Path, PathBuf};

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

/// What stage 1 binds into the task's mount namespace.
pub(crate) struct Mounts<'a> {
    /// The directory seen as `/run/secrets`.
    pub secrets: Option<&'a Path>,
    /// Config files and their targets.
    pub configs: &'a [(PathBuf, String)],
    /// The directory seen as `/run/spiffe`.
    pub spiffe: Option<&'a Path>,
}

/// Enters new mount and PID namespaces (the PID one for the children to come) and sets up the
/// mount namespace for the task in `task_dir`; `exe` (this program, which stage 2 runs from)
/// stays visible whatever `hide` says.
pub(crate) fn enter(
    task_dir: &Path,
    mounts: &Mounts<'_>,
    hide: &[PathBuf],
    exe: &Path,
) -> Result<(), String> {
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
        expose_dir(dir, Path::new(crate::SPIFFE_DIR), "the task's identity")?;
    }
    expose_hosts(task_dir)?;
    hide_tasks_dir(task_dir)?;
    let needed = [
        Path::new(crate::SECRETS_DIR),
        Path::new(crate::SPIFFE_DIR),
        Path::new("/etc/hosts"),
        exe,
    ];
    hide_paths(hide, &needed)
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
    crate::config_target::check(target)?;
    let shown = crate::text::quote(&crate::text::prefix(target, 64));
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
    expose_dir(dir, Path::new(crate::SECRETS_DIR), "the task's secrets")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_task_must_not_see_is_covered_unless_it_holds_what_the_task_needs() {
        let needed = [
            Path::new("/run/secrets"),
            Path::new("/etc/hosts"),
            Path::new("/usr/bin/skep-init"),
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
}
