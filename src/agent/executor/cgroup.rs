//! Exec tasks' control groups: where a task's `--limit-memory`, `--limit-cpu` and `--limit-pids`
//! are enforced,
//! and what keeps the node's exec tasks, together, from starving the daemon of CPU or
//! exhausting the node's process IDs (a fork bomb stops at the group's `pids.max`) or its
//! memory (the kernel kills a task's process at the group's memory limit).
//!
//! Every exec task runs in a control group under `skep/<node ID>` (the agent's own, so
//! daemons sharing a host keep apart): with cgroup v1, in each hierarchy skep uses, under the
//! daemon's own group there (so whatever holds the daemon, a systemd unit's memory limit say,
//! holds its tasks too); with cgroup v2, at the top of the tree (a v2 group that hands
//! controllers to children may hold no process, and the daemon's holds it). A task with
//! limits is in `.../<task ID>` with them written, a task without in `.../shared`. The agent's
//! group has a `pids.max` (`skep daemon --exec-pids-max`, by default half the kernel's limit)
//! and a memory limit (`--exec-memory-max`, by default all but a tenth of the node's memory,
//! at least 1 GiB, kept for the daemon and the host) that all its exec tasks share. The
//! daemon stays where it was started, so all exec tasks together weigh as one group against
//! the daemon's threads when the CPUs are contended. The agent makes the directories and
//! writes the limits (as root; the files stay root's, so a task running as `nobody` cannot
//! raise them); the task's init joins them before its command starts (`skep-init
//! --cgroup`), so every process of the task is inside. A task's own groups go when it ends;
//! the agent's go when the daemon stops with no task running, or leaves.
//!
//! A task with limits never runs without them: if the node cannot enforce a limit (no
//! controller, a read-only cgroup file system), its start fails naming what is missing. A task
//! without limits that cannot be grouped runs ungrouped (logged once).
//!
//! [`Groups::plan`] decides, from the node's [`Layout`], the agent's scope and the task's
//! [`Limits`], what to make, write and join; [`apply`] and [`Groups::remove`] do it (blocking
//! calls: the start thread runs them).

use std::path::{Path, PathBuf};

/// The group every exec task is under (see the module documentation for where).
pub(crate) const GROUP: &str = "skep";
/// The group of the tasks without limits, in [`GROUP`].
const SHARED: &str = "shared";
/// The CFS period a CPU limit is a share of (Docker's: 100 ms).
pub(crate) const CPU_PERIOD_US: u64 = 100_000;
/// The smallest CFS quota the kernel takes.
const MIN_QUOTA_US: u64 = 1_000;

/// Why a task's control groups could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The node has no hierarchy with the controller a limit needs.
    #[error(
        "{what} needs the cgroup {controller} controller, which this node does not mount (run the task on a node that has it, or remove the limit)"
    )]
    NoController {
        /// The limit, as the CLI names it.
        what: &'static str,
        /// The controller it needs.
        controller: &'static str,
    },
    /// A directory or file of a control group could not be made or written.
    #[error("cannot set up the task's control group at {}: {source}", path.display())]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// How the node's control groups are mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Layout {
    /// cgroup v1: a hierarchy per controller; in those skep uses, the directory of the
    /// daemon's own group.
    V1 {
        /// In the `cpu` controller's hierarchy.
        cpu: Option<PathBuf>,
        /// In the `memory` controller's hierarchy.
        memory: Option<PathBuf>,
        /// In the `pids` controller's hierarchy.
        pids: Option<PathBuf>,
    },
    /// cgroup v2: one hierarchy, and whether its root offers each controller.
    V2 {
        /// Its mount point.
        root: PathBuf,
        /// `cpu` is among the root's controllers.
        cpu: bool,
        /// `memory` is among the root's controllers.
        memory: bool,
        /// `pids` is among the root's controllers.
        pids: bool,
    },
    /// No cgroup file system is mounted.
    None,
}

impl Layout {
    /// The layout described by `mountinfo` (as `/proc/self/mountinfo` reads) and `own` (the
    /// daemon's groups, as `/proc/self/cgroup` reads): cgroup v1 when a `cpu` or `memory`
    /// hierarchy is mounted (a host in "hybrid" mode keeps them there, its v2 tree then offers
    /// neither), else the cgroup v2 mount, whose root's controllers `controllers` reads (the
    /// text of its `cgroup.controllers`).
    pub(crate) fn parse(
        mountinfo: &str,
        own: &str,
        controllers: impl Fn(&Path) -> Option<String>,
    ) -> Layout {
        // `ID:CONTROLLERS:PATH`; the path of the group holding the daemon in the hierarchy
        // whose controllers include `c` ("/" if not listed).
        let own_path = |c: &str| {
            own.lines()
                .filter_map(|l| {
                    let mut f = l.splitn(3, ':');
                    Some((f.nth(1)?, f.next()?))
                })
                .find(|(cs, _)| cs.split(',').any(|x| x == c))
                .map_or("", |(_, path)| path.trim_start_matches('/'))
                .to_string()
        };
        let (mut cpu, mut memory, mut pids, mut v2) = (None, None, None, None);
        for line in mountinfo.lines() {
            // ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let (Some(mount_point), mut fs) = (left.split(' ').nth(4), right.split(' ')) else {
                continue;
            };
            let mount_point = PathBuf::from(unescape(mount_point));
            match (fs.next(), fs.nth(1)) {
                (Some("cgroup"), Some(options)) => {
                    let has = |c: &str| options.split(',').any(|o| o == c);
                    if has("cpu") && cpu.is_none() {
                        cpu = Some(mount_point.join(own_path("cpu")));
                    }
                    if has("memory") && memory.is_none() {
                        memory = Some(mount_point.join(own_path("memory")));
                    }
                    if has("pids") && pids.is_none() {
                        pids = Some(mount_point.join(own_path("pids")));
                    }
                }
                (Some("cgroup2"), _) if v2.is_none() => v2 = Some(mount_point),
                _ => {}
            }
        }
        if cpu.is_some() || memory.is_some() || pids.is_some() {
            return Layout::V1 { cpu, memory, pids };
        }
        match v2 {
            Some(root) => {
                let offered = controllers(&root).unwrap_or_default();
                let has = |c: &str| offered.split_whitespace().any(|o| o == c);
                Layout::V2 {
                    cpu: has("cpu"),
                    memory: has("memory"),
                    pids: has("pids"),
                    root,
                }
            }
            None => Layout::None,
        }
    }

    /// This host's layout.
    pub(crate) fn detect() -> Layout {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        Layout::parse(&mountinfo, &own, |root| {
            std::fs::read_to_string(root.join("cgroup.controllers")).ok()
        })
    }
}

/// `\040` and the like, as mountinfo escapes spaces, tabs, newlines and backslashes.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let code = rest
            .get(i + 1..i + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(char::from(c));
                rest = &rest[i + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[i + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// What all exec tasks of an agent together may hold (0: no cap), in the agent's own group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Caps {
    /// Processes and threads (`skep daemon --exec-pids-max`).
    pub pids: u64,
    /// Memory, in bytes (`skep daemon --exec-memory-max`).
    pub memory_bytes: u64,
}

/// A task's limits, as its spec gives them (0: none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Limits {
    /// The most memory its processes may use, in bytes.
    pub memory_bytes: u64,
    /// The most CPU it may use, in billionths of a CPU.
    pub nano_cpus: u64,
    /// The most processes and threads it may hold at once.
    pub pids: u64,
}

impl Limits {
    fn any(self) -> bool {
        self.memory_bytes > 0 || self.nano_cpus > 0 || self.pids > 0
    }
}

/// What the host needs for one task, in order: directories to make (parents first, each made
/// if missing), files to write, and the groups the task's init joins.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Directories, parents first.
    pub make: Vec<PathBuf>,
    /// Files and what to write to each, after `make`.
    pub write: Vec<(PathBuf, String)>,
    /// The groups the task joins (`skep-init --cgroup`).
    pub join: Vec<PathBuf>,
    /// The task has limits: a failure to apply this plan fails its start.
    pub required: bool,
}

/// The CFS quota for `nano_cpus` per [`CPU_PERIOD_US`], as Docker computes it.
pub(crate) fn cpu_quota_us(nano_cpus: u64) -> u64 {
    (nano_cpus / (1_000_000_000 / CPU_PERIOD_US)).max(MIN_QUOTA_US)
}

/// The default of `skep daemon --exec-pids-max`: half of what the kernel allows
/// (`kernel/pid_max` and `kernel/threads-max`, the smaller; threads count as PIDs), so the
/// daemon and the rest of the host keep the other half whatever the tasks do.
pub(crate) fn default_pids_max() -> u64 {
    let read = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
    };
    let limit = [read("pid_max"), read("threads-max")]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(32_768);
    (limit / 2).max(1)
}

/// The default of `skep daemon --exec-memory-max` on a node of `total` bytes of memory: all
/// but a reserve for the daemon and the rest of the host, a tenth of the memory and at least
/// 1 GiB, and never less than half of it (a small node's tasks keep room to run).
pub(crate) fn default_memory_max(total: u64) -> u64 {
    let reserve = (total / 10).max(1 << 30);
    total.saturating_sub(reserve).max(total / 2)
}

/// What the agent's memory limit file says for a cap of `n` bytes, with cgroup v1
/// (`memory.limit_in_bytes`: `-1` for none) or v2 (`memory.max`: `max`): written all the same,
/// so a cap an earlier run set does not outlive `--exec-memory-max 0`.
fn memory_cap(n: u64, v1: bool) -> String {
    match (n, v1) {
        (0, true) => "-1".to_string(),
        (0, false) => "max".to_string(),
        _ => n.to_string(),
    }
}

/// What `pids.max` says for a cap of `n` process IDs: `max` for 0 (none), written all the
/// same, so a cap an earlier run set does not outlive `--exec-pids-max 0`.
fn pids_cap(n: u64) -> String {
    if n == 0 {
        "max".to_string()
    } else {
        n.to_string()
    }
}

/// What a task's own `pids.max` says for `--limit-pids n`: one more than `n`, since skep's
/// init (the task's PID 1, which joins the group to start the command) counts there too, so
/// the command's processes get the `n` the operator gave, as in a container (Docker counts
/// only the container's own).
fn task_pids_max(n: u64) -> String {
    n.saturating_add(1).to_string()
}

/// Where one agent's exec tasks go: the host's [`Layout`], and the agent's own group under
/// [`GROUP`] (`skep/<scope>`, the node's ID), so that several daemons on one host (tests, a
/// lab) keep their tasks and their caps apart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Groups {
    layout: Layout,
    scope: String,
}

impl Groups {
    /// The groups of scope `scope`, which must be one path component of letters, digits,
    /// `-` and `_` (a node ID is); anything else is replaced by `local`.
    pub(crate) fn new(layout: Layout, scope: &str) -> Groups {
        let safe = !scope.is_empty()
            && scope.len() <= 64
            && scope
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        Groups {
            layout,
            scope: if safe { scope } else { "local" }.to_string(),
        }
    }

    /// The cgroup version of the host's layout, as `docker info` names it: `1`, `2`, or
    /// `none`.
    pub(crate) fn version(&self) -> &'static str {
        match self.layout {
            Layout::V1 { .. } => "1",
            Layout::V2 { .. } => "2",
            Layout::None => "none",
        }
    }

    /// Whether the host has a `pids` controller for the exec tasks' cap.
    pub(crate) fn has_pids(&self) -> bool {
        match &self.layout {
            Layout::V1 { pids, .. } => pids.is_some(),
            Layout::V2 { pids, .. } => *pids,
            Layout::None => false,
        }
    }

    /// Whether the host has a `memory` controller for the exec tasks' cap.
    pub(crate) fn has_memory(&self) -> bool {
        match &self.layout {
            Layout::V1 { memory, .. } => memory.is_some(),
            Layout::V2 { memory, .. } => *memory,
            Layout::None => false,
        }
    }

    /// The same layout with another scope.
    pub(crate) fn with_scope(&self, scope: &str) -> Groups {
        Groups::new(self.layout.clone(), scope)
    }

    /// The agent's group in the hierarchy mounted (or, with v1, entered) at `at`.
    fn base(&self, at: &Path) -> PathBuf {
        at.join(GROUP).join(&self.scope)
    }

    /// What task `task_id` (a checked task ID: one path component) needs, under `caps` for
    /// all of this agent's exec tasks together.
    pub(crate) fn plan(
        &self,
        task_id: &str,
        limits: Limits,
        caps: Caps,
    ) -> Result<Plan, CgroupError> {
        let leaf = if limits.any() { task_id } else { SHARED };
        let missing = |what, controller| CgroupError::NoController { what, controller };
        let mut p = Plan {
            required: limits.any(),
            ..Plan::default()
        };
        match &self.layout {
            Layout::V1 { cpu, memory, pids } => {
                if limits.memory_bytes > 0 && memory.is_none() {
                    return Err(missing("--limit-memory", "memory"));
                }
                if limits.nano_cpus > 0 && cpu.is_none() {
                    return Err(missing("--limit-cpu", "cpu"));
                }
                if limits.pids > 0 && pids.is_none() {
                    return Err(missing("--limit-pids", "pids"));
                }
                // Every task is grouped for CPU and counted against the caps on process IDs
                // and memory.
                if let Some(cpu) = cpu {
                    let dir = self.base(cpu).join(leaf);
                    p.make
                        .extend([cpu.join(GROUP), self.base(cpu), dir.clone()]);
                    if limits.nano_cpus > 0 {
                        p.write.extend([
                            (dir.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string()),
                            (
                                dir.join("cpu.cfs_quota_us"),
                                cpu_quota_us(limits.nano_cpus).to_string(),
                            ),
                        ]);
                    }
                    p.join.push(dir);
                }
                if let Some(pids) = pids {
                    let dir = self.base(pids).join(leaf);
                    p.make
                        .extend([pids.join(GROUP), self.base(pids), dir.clone()]);
                    p.write
                        .push((self.base(pids).join("pids.max"), pids_cap(caps.pids)));
                    if limits.pids > 0 {
                        // Under the agent's: the node's cap still holds the task.
                        p.write
                            .push((dir.join("pids.max"), task_pids_max(limits.pids)));
                    }
                    p.join.push(dir);
                }
                if let Some(memory) = memory {
                    let dir = self.base(memory).join(leaf);
                    p.make
                        .extend([memory.join(GROUP), self.base(memory), dir.clone()]);
                    p.write.push((
                        self.base(memory).join("memory.limit_in_bytes"),
                        memory_cap(caps.memory_bytes, true),
                    ));
                    if limits.memory_bytes > 0 {
                        p.write.push((
                            dir.join("memory.limit_in_bytes"),
                            limits.memory_bytes.to_string(),
                        ));
                    }
                    p.join.push(dir);
                }
            }
            Layout::V2 {
                root,
                cpu,
                memory,
                pids,
            } => {
                if limits.memory_bytes > 0 && !memory {
                    return Err(missing("--limit-memory", "memory"));
                }
                if limits.nano_cpus > 0 && !cpu {
                    return Err(missing("--limit-cpu", "cpu"));
                }
                if limits.pids > 0 && !pids {
                    return Err(missing("--limit-pids", "pids"));
                }
                // A v2 group that hands controllers to its children holds no process
                // itself: the tasks are in the leaves, and each level above hands them down.
                let enable: Vec<&str> = [(*cpu, "+cpu"), (*memory, "+memory"), (*pids, "+pids")]
                    .into_iter()
                    .filter_map(|(on, c)| on.then_some(c))
                    .collect();
                let (group, base) = (root.join(GROUP), self.base(root));
                let dir = base.join(leaf);
                p.make.extend([group.clone(), base.clone(), dir.clone()]);
                if !enable.is_empty() {
                    let enable = enable.join(" ");
                    for level in [root, &group, &base] {
                        p.write
                            .push((level.join("cgroup.subtree_control"), enable.clone()));
                    }
                }
                if *pids {
                    p.write.push((base.join("pids.max"), pids_cap(caps.pids)));
                }
                if *memory {
                    p.write.push((
                        base.join("memory.max"),
                        memory_cap(caps.memory_bytes, false),
                    ));
                }
                if limits.nano_cpus > 0 {
                    p.write.push((
                        dir.join("cpu.max"),
                        format!("{} {CPU_PERIOD_US}", cpu_quota_us(limits.nano_cpus)),
                    ));
                }
                if limits.memory_bytes > 0 {
                    p.write
                        .push((dir.join("memory.max"), limits.memory_bytes.to_string()));
                }
                if limits.pids > 0 {
                    p.write
                        .push((dir.join("pids.max"), task_pids_max(limits.pids)));
                }
                p.join.push(dir);
            }
            Layout::None if limits.any() => {
                let what = if limits.memory_bytes > 0 {
                    ("--limit-memory", "memory")
                } else if limits.nano_cpus > 0 {
                    ("--limit-cpu", "cpu")
                } else {
                    ("--limit-pids", "pids")
                };
                return Err(missing(what.0, what.1));
            }
            Layout::None => {}
        }
        Ok(p)
    }

    /// The groups of task `task_id` that are its own (to remove when it has ended).
    pub(crate) fn own_dirs(&self, task_id: &str) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V1 { cpu, memory, pids } => [cpu, memory, pids]
                .into_iter()
                .flatten()
                .map(|m| self.base(m).join(task_id))
                .collect(),
            Layout::V2 { root, .. } => vec![self.base(root).join(task_id)],
            Layout::None => Vec::new(),
        }
    }

    /// Removes task `task_id`'s own groups once its processes are gone; a group not there is
    /// fine. Blocking: a task killed with its init may still have processes dying for a
    /// moment (the kernel refuses with EBUSY), so it tries again for up to
    /// [`REMOVE_WAIT`]; a group still busy then stays, logged (the task's removal tries
    /// again).
    pub(crate) fn remove(&self, task_id: &str) {
        let deadline = std::time::Instant::now() + REMOVE_WAIT;
        for dir in self.own_dirs(task_id) {
            loop {
                match std::fs::remove_dir(&dir) {
                    Err(e)
                        if e.raw_os_error() == Some(nix::libc::EBUSY)
                            && std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        tracing::warn!(task_id, dir = %dir.display(), error = %e, "cannot remove the task's control group");
                        break;
                    }
                    _ => break,
                }
            }
        }
    }

    /// This agent's own groups, in the order they can be removed: `shared` before the
    /// agent's `skep/<scope>` in each hierarchy (never [`GROUP`] itself, which other agents
    /// of the host share).
    pub(crate) fn agent_dirs(&self) -> Vec<PathBuf> {
        let mounts: Vec<&PathBuf> = match &self.layout {
            Layout::V1 { cpu, memory, pids } => [cpu, memory, pids].into_iter().flatten().collect(),
            Layout::V2 { root, .. } => vec![root],
            Layout::None => Vec::new(),
        };
        let shared = mounts.iter().map(|m| self.base(m).join(SHARED));
        let own = mounts.iter().map(|m| self.base(m));
        shared.chain(own).collect()
    }

    /// Removes this agent's own groups ([`Groups::agent_dirs`]) when the daemon stops or
    /// leaves, so a host does not keep one empty group per node it ever ran. A group that
    /// still holds a task stays, as do the agent's groups above it; the next start finds or
    /// makes them again. With `settling`
    /// (its tasks were just stopped) a busy group is tried again for up to
    /// [`REMOVE_WAIT`], while the tasks' own groups go. Blocking.
    pub(crate) fn remove_agent(&self, settling: bool) -> usize {
        let deadline = std::time::Instant::now() + REMOVE_WAIT;
        let mut removed = 0;
        for dir in self.agent_dirs() {
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => {
                        removed += 1;
                        break;
                    }
                    Err(e)
                        if settling
                            && matches!(
                                e.raw_os_error(),
                                Some(nix::libc::EBUSY | nix::libc::ENOTEMPTY)
                            )
                            && std::time::Instant::now() < deadline =>
                    {
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                    Err(e) => {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            tracing::debug!(dir = %dir.display(), error = %e, "the agent's control group stays");
                        }
                        break;
                    }
                }
            }
        }
        removed
    }

    /// Whether the kernel killed a process of task `task_id` for its memory limit (the count
    /// in its memory group's events). False when there is no such group or it cannot be read.
    pub(crate) fn was_out_of_memory(&self, task_id: &str) -> bool {
        let events = match &self.layout {
            Layout::V1 {
                memory: Some(m), ..
            } => self.base(m).join(task_id).join("memory.oom_control"),
            Layout::V2 { root, .. } => self.base(root).join(task_id).join("memory.events"),
            _ => return false,
        };
        std::fs::read_to_string(events).is_ok_and(|t| oom_kills(&t) > 0)
    }
}

/// How long [`Groups::remove`] waits for the last processes of a killed task to leave its
/// group.
const REMOVE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Makes and writes what `plan` says. Blocking.
pub(crate) fn apply(plan: &Plan) -> Result<(), CgroupError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CgroupError::Io { path, source }
    };
    for dir in &plan.make {
        match std::fs::create_dir(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io(dir)(e)),
            _ => {}
        }
    }
    for (file, value) in &plan.write {
        std::fs::write(file, value).map_err(io(file))?;
    }
    Ok(())
}

/// The `oom_kill N` count of a `memory.oom_control` (v1) or `memory.events` (v2) text.
fn oom_kills(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .find_map(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 1 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
28 25 0:25 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
29 28 0:26 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw
32 28 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
33 28 0:30 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
34 28 0:31 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,pids
";
    const UNIFIED: &str = "\
25 1 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
28 25 0:25 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
";

    fn v1() -> Layout {
        Layout::V1 {
            cpu: Some("/cg/cpu".into()),
            memory: Some("/cg/memory".into()),
            pids: Some("/cg/pids".into()),
        }
    }

    fn v2() -> Layout {
        Layout::V2 {
            root: "/cg".into(),
            cpu: true,
            memory: true,
            pids: true,
        }
    }

    /// The exec tasks' caps in these tests: 1,000 process IDs, 4 GiB.
    const CAPS: Caps = Caps {
        pids: 1000,
        memory_bytes: 4 << 30,
    };
    const NO_CAPS: Caps = Caps {
        pids: 0,
        memory_bytes: 0,
    };

    fn g1() -> Groups {
        Groups::new(v1(), "n1")
    }

    fn g2() -> Groups {
        Groups::new(v2(), "n1")
    }

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn layouts_are_read_from_mountinfo() {
        let none = |_: &Path| -> Option<String> { panic!("v1 reads no v2 controllers") };
        assert_eq!(
            Layout::parse(HYBRID, "", none),
            Layout::V1 {
                cpu: Some(p("/sys/fs/cgroup/cpu,cpuacct")),
                memory: Some(p("/sys/fs/cgroup/memory")),
                pids: Some(p("/sys/fs/cgroup/pids")),
            }
        );
        // v1: under the daemon's own group in each hierarchy.
        let own = "12:pids:/x\n4:memory:/system.slice/skep.service\n3:cpu,cpuacct:/\n0::/\n";
        assert_eq!(
            Layout::parse(HYBRID, own, none),
            Layout::V1 {
                cpu: Some(p("/sys/fs/cgroup/cpu,cpuacct")),
                memory: Some(p("/sys/fs/cgroup/memory/system.slice/skep.service")),
                pids: Some(p("/sys/fs/cgroup/pids/x")),
            }
        );
        assert_eq!(
            Layout::parse(UNIFIED, "0::/system.slice/skep.service\n", |root| {
                assert_eq!(root, Path::new("/sys/fs/cgroup"));
                Some("cpuset cpu io memory hugetlb pids rdma misc\n".into())
            }),
            Layout::V2 {
                root: p("/sys/fs/cgroup"),
                cpu: true,
                memory: true,
                pids: true,
            }
        );
        assert_eq!(
            Layout::parse(UNIFIED, "", |_| Some("cpuset io".into())),
            Layout::V2 {
                root: p("/sys/fs/cgroup"),
                cpu: false,
                memory: false,
                pids: false,
            }
        );
        // `cpuacct` alone is not `cpu`; a cpuset mount is not either.
        let only_cpuacct =
            "40 28 0:40 / /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct\n".to_string();
        assert_eq!(Layout::parse(&only_cpuacct, "", |_| None), Layout::None);
        assert_eq!(Layout::parse("", "", |_| None), Layout::None);
        assert_eq!(
            Layout::parse("garbage\n1 2 3\n - \n", "::\n:\nx", |_| None),
            Layout::None
        );
        let spaced = "40 28 0:40 / /cg\\040x rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            Layout::parse(spaced, "", |_| None),
            Layout::V1 {
                cpu: None,
                memory: Some(p("/cg x")),
                pids: None,
            }
        );
    }

    #[test]
    fn the_agents_own_groups_go_shared_first_and_never_the_hosts() {
        assert_eq!(
            g1().agent_dirs(),
            [
                "/cg/cpu/skep/n1/shared",
                "/cg/memory/skep/n1/shared",
                "/cg/pids/skep/n1/shared",
                "/cg/cpu/skep/n1",
                "/cg/memory/skep/n1",
                "/cg/pids/skep/n1",
            ]
            .map(PathBuf::from)
        );
        assert_eq!(
            g2().agent_dirs(),
            ["/cg/skep/n1/shared", "/cg/skep/n1"].map(PathBuf::from)
        );
        assert!(Groups::new(Layout::None, "n1").agent_dirs().is_empty());
    }

    /// On a plain directory tree standing in for a hierarchy: a group that still holds another
    /// (a task left running for the next start) stays with what is above it; empty ones go,
    /// and [`GROUP`] itself always stays.
    #[test]
    fn removing_the_agents_groups_keeps_what_still_holds_a_task() {
        let root = tempfile::tempdir().unwrap();
        let layout = Layout::V2 {
            root: root.path().to_path_buf(),
            cpu: true,
            memory: true,
            pids: true,
        };
        let g = Groups::new(layout, "n1");
        let base = root.path().join(GROUP).join("n1");
        std::fs::create_dir_all(base.join(SHARED)).unwrap();
        std::fs::create_dir_all(base.join("task1")).unwrap();
        assert_eq!(g.remove_agent(false), 1);
        assert!(!base.join(SHARED).exists() && base.join("task1").is_dir());
        std::fs::remove_dir(base.join("task1")).unwrap();
        assert_eq!(g.remove_agent(false), 1);
        assert!(!base.exists() && root.path().join(GROUP).is_dir());
        // Nothing left to remove is not an error.
        assert_eq!(g.remove_agent(true), 0);
    }

    #[test]
    fn a_task_without_limits_joins_the_shared_groups_under_the_nodes_caps() {
        let plan = g1().plan("t1", Limits::default(), CAPS).unwrap();
        assert_eq!(
            plan,
            Plan {
                make: vec![
                    p("/cg/cpu/skep"),
                    p("/cg/cpu/skep/n1"),
                    p("/cg/cpu/skep/n1/shared"),
                    p("/cg/pids/skep"),
                    p("/cg/pids/skep/n1"),
                    p("/cg/pids/skep/n1/shared"),
                    p("/cg/memory/skep"),
                    p("/cg/memory/skep/n1"),
                    p("/cg/memory/skep/n1/shared"),
                ],
                write: vec![
                    (p("/cg/pids/skep/n1/pids.max"), "1000".into()),
                    (
                        p("/cg/memory/skep/n1/memory.limit_in_bytes"),
                        "4294967296".into()
                    ),
                ],
                join: vec![
                    p("/cg/cpu/skep/n1/shared"),
                    p("/cg/pids/skep/n1/shared"),
                    p("/cg/memory/skep/n1/shared")
                ],
                required: false,
            }
        );
        let v2 = g2().plan("t1", Limits::default(), CAPS).unwrap();
        assert_eq!(v2.join, vec![p("/cg/skep/n1/shared")]);
        for cap in [
            (p("/cg/skep/n1/pids.max"), "1000".to_string()),
            (p("/cg/skep/n1/memory.max"), "4294967296".to_string()),
        ] {
            assert!(v2.write.contains(&cap), "{cap:?}");
        }
        // No cap asked for: `max` (`-1` for v1's memory) written, so an earlier run's cap does
        // not stay.
        let uncapped = g1().plan("t1", Limits::default(), NO_CAPS).unwrap();
        assert_eq!(
            uncapped.write,
            vec![
                (p("/cg/pids/skep/n1/pids.max"), "max".into()),
                (p("/cg/memory/skep/n1/memory.limit_in_bytes"), "-1".into())
            ]
        );
        let uncapped = g2().plan("t1", Limits::default(), NO_CAPS).unwrap();
        for cap in [
            (p("/cg/skep/n1/pids.max"), "max".to_string()),
            (p("/cg/skep/n1/memory.max"), "max".to_string()),
        ] {
            assert!(uncapped.write.contains(&cap), "{cap:?}");
        }
        let none = Groups::new(Layout::None, "n1")
            .plan("t1", Limits::default(), CAPS)
            .unwrap();
        assert_eq!(none, Plan::default());
    }

    #[test]
    fn the_default_memory_cap_keeps_a_tenth_and_at_least_a_gibibyte_for_the_host() {
        const G: u64 = 1 << 30;
        assert_eq!(default_memory_max(24 * G), 24 * G - 24 * G / 10);
        assert_eq!(default_memory_max(8 * G), 7 * G);
        assert_eq!(default_memory_max(2 * G), G);
        // A small node keeps half for its tasks.
        assert_eq!(default_memory_max(G), G / 2);
        assert_eq!(default_memory_max(0), 0);
    }

    #[test]
    fn limits_are_written_to_the_tasks_own_groups_v1() {
        let limits = Limits {
            memory_bytes: 32 << 20,
            nano_cpus: 250_000_000,
            pids: 0,
        };
        assert_eq!(
            g1().plan("t1", limits, CAPS).unwrap(),
            Plan {
                make: vec![
                    p("/cg/cpu/skep"),
                    p("/cg/cpu/skep/n1"),
                    p("/cg/cpu/skep/n1/t1"),
                    p("/cg/pids/skep"),
                    p("/cg/pids/skep/n1"),
                    p("/cg/pids/skep/n1/t1"),
                    p("/cg/memory/skep"),
                    p("/cg/memory/skep/n1"),
                    p("/cg/memory/skep/n1/t1"),
                ],
                write: vec![
                    (p("/cg/cpu/skep/n1/t1/cpu.cfs_period_us"), "100000".into()),
                    (p("/cg/cpu/skep/n1/t1/cpu.cfs_quota_us"), "25000".into()),
                    (p("/cg/pids/skep/n1/pids.max"), "1000".into()),
                    (
                        p("/cg/memory/skep/n1/memory.limit_in_bytes"),
                        "4294967296".into()
                    ),
                    (
                        p("/cg/memory/skep/n1/t1/memory.limit_in_bytes"),
                        "33554432".into()
                    ),
                ],
                join: vec![
                    p("/cg/cpu/skep/n1/t1"),
                    p("/cg/pids/skep/n1/t1"),
                    p("/cg/memory/skep/n1/t1")
                ],
                required: true,
            }
        );
        // A memory limit alone still gives the task its own CPU group (no quota in it).
        let mem_only = g1()
            .plan(
                "t1",
                Limits {
                    memory_bytes: 8 << 20,
                    ..Limits::default()
                },
                NO_CAPS,
            )
            .unwrap();
        assert_eq!(
            mem_only.write,
            vec![
                (p("/cg/pids/skep/n1/pids.max"), "max".into()),
                (p("/cg/memory/skep/n1/memory.limit_in_bytes"), "-1".into()),
                (
                    p("/cg/memory/skep/n1/t1/memory.limit_in_bytes"),
                    "8388608".into()
                )
            ]
        );
        // A limit on process IDs alone: the task's own pids group, under the agent's cap, with
        // one more for skep's init.
        let pids_only = g1()
            .plan(
                "t1",
                Limits {
                    pids: 50,
                    ..Limits::default()
                },
                CAPS,
            )
            .unwrap();
        assert!(pids_only.required);
        assert_eq!(
            pids_only.write,
            vec![
                (p("/cg/pids/skep/n1/pids.max"), "1000".into()),
                (p("/cg/pids/skep/n1/t1/pids.max"), "51".into()),
                (
                    p("/cg/memory/skep/n1/memory.limit_in_bytes"),
                    "4294967296".into()
                ),
            ]
        );
        assert_eq!(
            pids_only.join,
            vec![
                p("/cg/cpu/skep/n1/t1"),
                p("/cg/pids/skep/n1/t1"),
                p("/cg/memory/skep/n1/t1")
            ]
        );
        assert_eq!(
            g1().own_dirs("t1"),
            vec![
                p("/cg/cpu/skep/n1/t1"),
                p("/cg/memory/skep/n1/t1"),
                p("/cg/pids/skep/n1/t1")
            ]
        );
    }

    #[test]
    fn limits_are_written_to_the_tasks_own_group_v2() {
        let limits = Limits {
            memory_bytes: 64 << 20,
            nano_cpus: 1_500_000_000,
            pids: 64,
        };
        assert_eq!(
            g2().plan("t1", limits, CAPS).unwrap(),
            Plan {
                make: vec![p("/cg/skep"), p("/cg/skep/n1"), p("/cg/skep/n1/t1")],
                write: vec![
                    (p("/cg/cgroup.subtree_control"), "+cpu +memory +pids".into()),
                    (
                        p("/cg/skep/cgroup.subtree_control"),
                        "+cpu +memory +pids".into()
                    ),
                    (
                        p("/cg/skep/n1/cgroup.subtree_control"),
                        "+cpu +memory +pids".into()
                    ),
                    (p("/cg/skep/n1/pids.max"), "1000".into()),
                    (p("/cg/skep/n1/memory.max"), "4294967296".into()),
                    (p("/cg/skep/n1/t1/cpu.max"), "150000 100000".into()),
                    (p("/cg/skep/n1/t1/memory.max"), "67108864".into()),
                    (p("/cg/skep/n1/t1/pids.max"), "65".into()),
                ],
                join: vec![p("/cg/skep/n1/t1")],
                required: true,
            }
        );
        assert_eq!(g2().own_dirs("t1"), vec![p("/cg/skep/n1/t1")]);
    }

    #[test]
    fn a_limit_the_node_cannot_enforce_is_refused_not_dropped() {
        let mem = Limits {
            memory_bytes: 32 << 20,
            ..Limits::default()
        };
        let cpu = Limits {
            nano_cpus: 1_000_000_000,
            ..Limits::default()
        };
        let pids = Limits {
            pids: 100,
            ..Limits::default()
        };
        let no_memory = Layout::V1 {
            cpu: Some("/cg/cpu".into()),
            memory: None,
            pids: None,
        };
        let e = Groups::new(no_memory.clone(), "n1")
            .plan("t1", mem, CAPS)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--limit-memory") && e.contains("memory controller"),
            "{e}"
        );
        let no_cpu = Layout::V2 {
            root: "/cg".into(),
            cpu: false,
            memory: true,
            pids: true,
        };
        let e = Groups::new(no_cpu.clone(), "n1")
            .plan("t1", cpu, CAPS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--limit-cpu"), "{e}");
        // No pids controller: a task's own cap cannot be enforced, so it does not start.
        for layout in [
            no_memory.clone(),
            Layout::V2 {
                root: "/cg".into(),
                cpu: true,
                memory: true,
                pids: false,
            },
            Layout::None,
        ] {
            let e = Groups::new(layout, "n1")
                .plan("t1", pids, CAPS)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("--limit-pids") && e.contains("pids controller"),
                "{e}"
            );
        }
        assert!(
            Groups::new(Layout::None, "n1")
                .plan("t1", mem, CAPS)
                .is_err()
        );
        assert!(
            Groups::new(Layout::None, "n1")
                .plan("t1", cpu, CAPS)
                .is_err()
        );
        // Without limits the same nodes run the task (grouped where they can); the cap on
        // process IDs is the node's, not the task's: without a pids controller it is not
        // enforced, and the task still runs.
        assert!(
            Groups::new(no_memory.clone(), "n1")
                .plan("t1", Limits::default(), CAPS)
                .is_ok()
        );
        assert!(
            Groups::new(no_cpu.clone(), "n1")
                .plan("t1", Limits::default(), CAPS)
                .is_ok()
        );
    }

    #[test]
    fn each_agent_has_a_group_of_its_own_and_a_scope_is_one_safe_name() {
        let other = Groups::new(v1(), "n2")
            .plan("t1", Limits::default(), CAPS)
            .unwrap();
        assert_eq!(
            other.join,
            vec![
                p("/cg/cpu/skep/n2/shared"),
                p("/cg/pids/skep/n2/shared"),
                p("/cg/memory/skep/n2/shared")
            ]
        );
        assert!(
            other
                .write
                .contains(&(p("/cg/pids/skep/n2/pids.max"), "1000".into()))
        );
        for bad in ["", "..", "a/b", "../../x", "x y", &"n".repeat(65)] {
            let g = Groups::new(v1(), bad);
            assert_eq!(g.own_dirs("t1")[0], p("/cg/cpu/skep/local/t1"), "{bad:?}");
        }
        assert_eq!(
            g1().with_scope("n9").own_dirs("t1")[0],
            p("/cg/cpu/skep/n9/t1")
        );
    }

    #[test]
    fn cpu_quotas_follow_docker() {
        assert_eq!(cpu_quota_us(1_000_000_000), 100_000);
        assert_eq!(cpu_quota_us(500_000_000), 50_000);
        assert_eq!(cpu_quota_us(2_000_000_000), 200_000);
        // The kernel's floor: 1 ms.
        assert_eq!(cpu_quota_us(1_000_000), MIN_QUOTA_US);
    }

    /// On this host's control groups (root): a group whose last process is still running
    /// when the task's end is seen (a killed task's processes die a moment after its init) is
    /// removed once that process has gone, not left behind.
    #[test]
    fn a_group_is_removed_once_its_last_process_has_gone() {
        if !crate::util::root_or_skip() {
            return;
        }
        let groups = Groups::new(Layout::detect(), "unit-tests");
        let id = format!("unit-remove-{}", std::process::id());
        let limits = Limits {
            memory_bytes: 64 << 20,
            nano_cpus: 100_000_000,
            pids: 0,
        };
        let plan = groups
            .plan(&id, limits, NO_CAPS)
            .expect("this host mounts cpu and memory");
        apply(&plan).unwrap();
        let procs: Vec<String> = plan
            .join
            .iter()
            .map(|d| d.join("cgroup.procs").display().to_string())
            .collect();
        // Joins every group, then is `sleep` for a moment more.
        let script = format!(
            "for f in {}; do echo $$ > $f || exit 1; done; exec sleep 0.5",
            procs.join(" ")
        );
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", &script])
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while procs.iter().any(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .trim()
                .is_empty()
        }) {
            assert!(std::time::Instant::now() < deadline, "never joined");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        groups.remove(&id);
        let left: Vec<PathBuf> = groups
            .own_dirs(&id)
            .into_iter()
            .filter(|d| d.exists())
            .collect();
        child.wait().unwrap();
        for d in &left {
            let _ = std::fs::remove_dir(d);
        }
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn oom_kills_are_counted_from_either_file() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        let v2 = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(oom_kills(v1), 2);
        assert_eq!(oom_kills(v2), 1);
        assert_eq!(oom_kills("oom_kill_disable 0\nunder_oom 0\n"), 0);
        assert_eq!(oom_kills(""), 0);
    }
}
