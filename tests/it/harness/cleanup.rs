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

/// The directory of the control group a `/proc/PID/cgroup` line names
/// (`N:cpu,cpuacct:/skep/NODE/ID` with cgroup v1, `0::/skep/NODE/ID` with v2): the mount of
/// that hierarchy, read from this process's mountinfo, joined with the path.
pub fn cgroup_dir(line: &str) -> Option<PathBuf> {
    let mut parts = line.splitn(3, ':');
    let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
    let mount = cgroup_mounts()
        .into_iter()
        .find_map(|(point, fstype, options)| {
            let wanted = if controllers.is_empty() {
                fstype == "cgroup2"
            } else {
                fstype == "cgroup"
                    && options
                        .split(',')
                        .any(|o| controllers.split(',').any(|c| c == o))
            };
            wanted.then_some(point)
        })?;
    Some(mount.join(path.trim_start_matches('/')))
}

/// This process's control-group mounts: (mount point, `cgroup` or `cgroup2`, options).
fn cgroup_mounts() -> Vec<(PathBuf, String, String)> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            let mut fs = right.split(' ');
            let (fstype, options) = (fs.next()?, fs.nth(1)?);
            matches!(fstype, "cgroup" | "cgroup2").then(|| {
                (
                    PathBuf::from(point),
                    fstype.to_string(),
                    options.to_string(),
                )
            })
        })
        .collect()
}

/// The groups of the agent of node `node_id` (`skep/<node ID>`, in every hierarchy, wherever
/// the daemon's own group put it: at most four levels under the mount).
pub fn agent_groups_named(node_id: &str) -> Vec<PathBuf> {
    let one_name = !node_id.is_empty()
        && node_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !one_name {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (mount, _, _) in cgroup_mounts() {
        let mut level = vec![mount];
        // `skep` one to four levels under the mount.
        for _ in 0..4 {
            let mut next = Vec::new();
            for dir in &level {
                for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                    if !e.file_type().is_ok_and(|t| t.is_dir()) {
                        continue;
                    }
                    let path = e.path();
                    if e.file_name() == "skep" {
                        let agent = path.join(node_id);
                        if agent.is_dir() && !out.contains(&agent) {
                            out.push(agent);
                        }
                    } else {
                        next.push(path);
                    }
                }
            }
            level = next;
        }
    }
    out
}

/// The agents' groups (`skep/<node ID>`, in every hierarchy) that processes `pids` are in,
/// read before they are killed, for [`remove_groups`] after.
pub fn agent_groups_holding(pids: &[i32]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for pid in pids {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        for dir in text.lines().filter_map(cgroup_dir) {
            // .../skep/<node ID>/<task ID, or shared>
            let Some(agent) = dir.parent() else {
                continue;
            };
            let under_skep = agent.parent().and_then(Path::file_name) == Some("skep".as_ref());
            if under_skep && !out.iter().any(|o: &PathBuf| o == agent) {
                out.push(agent.to_path_buf());
            }
        }
    }
    out
}

/// Removes control groups `dirs`, each after the groups in it, once the processes in them
/// have gone (killed ones take a moment): a killed daemon leaves its agent's groups behind,
/// and a host that runs the tests would keep a set for every node ID it ever ran. Only empty
/// groups can be removed (`rmdir`), so a group something still runs in stays; gives up after
/// 5 s.
pub fn remove_groups(dirs: &[PathBuf]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    for dir in dirs {
        while !remove_group(dir) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

/// Removes group `dir` after the groups in it; true once it is gone.
fn remove_group(dir: &Path) -> bool {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_group(&e.path());
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}
