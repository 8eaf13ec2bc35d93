//! The daemon's standing with the kernel's out-of-memory killer: a node whose memory runs out
//! to its exec tasks loses a task, not the daemon that supervises all of them. Needs root, the
//! exec runtime and cgroup v1's `memory` hierarchy (where the exec tasks' groups are under
//! the daemon's own memory group, as this host has it); fails without them.

use std::path::{Path, PathBuf};

use crate::harness::{Node, exec_service, json_lines, timeout, unique_id, wait_for};

const MIB: u64 = 1 << 20;

/// A memory control group of the test's own, at the top of the `memory` hierarchy: its
/// processes are killed and it is removed (with what the agent made inside) when dropped.
struct MemoryGroup {
    dir: PathBuf,
}

impl MemoryGroup {
    fn new() -> MemoryGroup {
        let root = crate::limits::host_dir("0:memory:/").unwrap_or_else(|| {
            panic!("this test needs cgroup v1's memory hierarchy (exec tasks' groups are under the daemon's there); none is mounted")
        });
        let dir = root.join(unique_id("skep-it-oom"));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("making {}: {e}", dir.display()));
        MemoryGroup { dir }
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file))
            .unwrap_or_else(|e| panic!("reading {file}: {e}"))
    }

    /// This group and every group under it (the agent's, its tasks').
    fn tree(&self) -> Vec<PathBuf> {
        let mut all = vec![self.dir.clone()];
        let mut i = 0;
        while i < all.len() {
            if let Ok(entries) = std::fs::read_dir(&all[i]) {
                all.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            i += 1;
        }
        all
    }

    /// The processes in this group and the groups under it.
    fn procs(&self) -> Vec<u32> {
        self.tree()
            .iter()
            .flat_map(|d| {
                std::fs::read_to_string(d.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect()
    }

    /// The processes the kernel killed for this group's limit: the `oom_kill` counts of
    /// `memory.oom_control` in it and under it (v1 counts a kill in the victim's group).
    fn oom_kills(&self) -> u64 {
        self.tree()
            .iter()
            .map(|d| {
                let text =
                    std::fs::read_to_string(d.join("memory.oom_control")).unwrap_or_default();
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum()
    }
}

impl Drop for MemoryGroup {
    fn drop(&mut self) {
        fn remove(dir: &Path) {
            for _ in 0..100 {
                if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
                if let Ok(entries) = std::fs::read_dir(dir) {
                    for e in entries.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            remove(&e.path());
                        }
                    }
                }
                if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        remove(&self.dir);
    }
}

fn proc_field(pid: u32, file: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_else(|e| panic!("reading /proc/{pid}/{file}: {e}"))
}

/// Break it: a node's exec tasks without memory limits (their groups are under the daemon's
/// memory group) eat past what that group may hold, each holding less than the daemon. The
/// kernel must kill tasks, not the daemon: a task's command stands 500 above the daemon with
/// the OOM killer. Without that, every process has the daemon's standing and the kernel kills
/// the largest one: the daemon.
#[test]
fn the_oom_killer_takes_a_task_that_eats_memory_not_the_daemon() {
    let group = MemoryGroup::new();
    let enter = format!(
        "echo $$ > {}/cgroup.procs && exec \"$@\"",
        group.dir.display()
    );
    let mut m = Node::new("oom", &[]).wrapped(&["sh", "-c", &enter, "sh"]);
    m.spawn();
    m.wait_up();
    m.cli_ok(&["swarm", "init", "--advertise-addr", &m.addr()]);
    let pid = m.pid().expect("the daemon runs");
    let daemon_adj: i32 = proc_field(pid, "oom_score_adj").trim().parse().unwrap();
    // Room for the daemon as it is and 128 MiB more; hogs of a third of its resident memory
    // (a shell's string may briefly take twice its size as it grows), enough of them to need
    // more than that room.
    let rss_kib: u64 = proc_field(pid, "status")
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix(" kB")?
                .trim()
                .parse()
                .ok()
        })
        .expect("the daemon's VmRSS");
    let hog = rss_kib * 1024 / 3;
    let used: u64 = group.read("memory.usage_in_bytes").trim().parse().unwrap();
    let room = 128 * MIB;
    std::fs::write(
        group.dir.join("memory.limit_in_bytes"),
        (used + room).to_string(),
    )
    .expect("setting the group's memory limit");
    let replicas = (room / hog + 4).to_string();
    eprintln!(
        "daemon: {rss_kib} KiB resident; {replicas} tasks of {} KiB each in {} MiB of room",
        hog / 1024,
        room / MIB
    );
    exec_service(
        &m,
        "hogs",
        &["--restart-condition", "none", "--replicas", &replicas],
        &format!("x=$(head -c {hog} /dev/zero | tr '\\0' x); sleep 600"),
    );
    // A task's command (its shell, which holds the memory) stands 500 above the daemon.
    let marker = format!("head -c {hog} ");
    let adj: i32 = wait_for(timeout(), "a task's command to run", || {
        group
            .procs()
            .into_iter()
            .find(|p| {
                let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                cmdline.starts_with(b"/bin/sh\0")
                    && String::from_utf8_lossy(&cmdline).contains(&marker)
            })
            .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/oom_score_adj")).ok())
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| "no task's command in the group yet".to_string())
    });
    assert_eq!(
        adj,
        (daemon_adj + 500).clamp(0, 1000),
        "the daemon's is {daemon_adj}"
    );
    wait_for(
        timeout(),
        "the kernel to kill a process of the group",
        || match group.oom_kills() {
            0 => Err("no kill yet".to_string()),
            n => Ok(n),
        },
    );
    assert!(
        m.is_running(),
        "the kernel killed the daemon: {}",
        m.last_start_log()
    );
    m.cli_ok(&["node", "ls"]);
    // What it killed was a task's command: the task ended as one killed by SIGKILL.
    let killed = wait_for(timeout(), "a task to end killed", || {
        let tasks =
            json_lines(&m.cli_ok(&["service", "ps", "--no-trunc", "--format", "json", "hogs"]));
        tasks
            .iter()
            .find(|t| {
                t["CurrentState"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("Failed"))
                    && t["Error"].as_str().is_some_and(|e| e.contains("(137)"))
            })
            .cloned()
            .ok_or_else(|| format!("{tasks:?}"))
    });
    eprintln!("killed: {killed}");
    assert!(m.is_running(), "the daemon ended: {}", m.last_start_log());
    m.cli_ok(&["service", "rm", "hogs"]);
    drop(m);
}
