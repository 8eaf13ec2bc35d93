//! Cleaning up after daemons that were killed: their exec tasks outlive them (as containers
//! outlive dockerd) and their tasks' secret mounts stay behind, and neither may outlive the test
//! or bench. Plain `std` and `nix`, nothing of the test crate: `benches/common` includes this
//! file too (`#[path]`).

use std::path::{Path, PathBuf};

/// Kills every process whose command line mentions `dir` (the exec tasks' init helpers name
/// their task directory; killing the namespace's init kills the task itself).
pub fn kill_processes_mentioning(dir: &Path) {
    for pid in pids_mentioning(dir, None) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Processes other than this one whose command line mentions `dir` (and `also`, if given).
pub fn pids_mentioning(dir: &Path, also: Option<&str>) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains(&needle) && also.is_none_or(|a| cmdline.contains(a)) {
            out.push(pid);
        }
    }
    out
}

/// Mount points (in this process's mount namespace) at `dir` or under it, such as the secrets
/// tmpfs of tasks.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let dir = dir.to_string_lossy().into_owned();
    let prefix = format!("{dir}/");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|mp| *mp == dir || mp.starts_with(&prefix))
        .map(PathBuf::from)
        .collect()
}

/// The node's secrets tmpfs under a node's data directory (`<data>/tasks/secrets`).
pub fn secrets_tmpfs(data_dir: &Path) -> PathBuf {
    data_dir.join("tasks").join(skep::agent::secrets::NODE_DIR)
}

/// What is left of tasks' secrets under a node's data directory: each task's directory on
/// the node's secrets tmpfs, and anything else mounted under the data directory (the tmpfs
/// itself and its private bind excepted).
pub fn secrets_left(data_dir: &Path) -> Vec<PathBuf> {
    let root = secrets_tmpfs(data_dir);
    let mut left: Vec<PathBuf> = mounts_under(data_dir)
        .into_iter()
        .filter(|m| *m != root)
        .collect();
    left.extend(
        std::fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path()),
    );
    left
}

/// Lazily unmounts everything mounted at `dir` or under it, deepest first (what a killed
/// daemon left), so the directory can be removed.
pub fn unmount_under(dir: &Path) {
    let mut mps = mounts_under(dir);
    mps.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for mp in mps {
        let _ = nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH);
    }
}
