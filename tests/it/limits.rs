//! Exec tasks' resource limits, on this host's real control groups: `--limit-memory` gets a
//! task killed by the kernel, not the node's memory eaten; `--limit-cpu` throttles it; the
//! node's cap on exec tasks' process IDs stops a fork bomb; a task cannot leave its group or
//! raise its limits; its groups go when it ends; a task's own `--limit-pids` stops its fork
//! bomb alone; the node's cap on exec tasks' memory holds one without a limit. Needs root (the exec runtime) and a cgroup
//! file system with the `cpu`, `memory` and `pids` controllers (v1 or v2).

use std::path::{Path, PathBuf};
use std::time::Duration;

use skep::agent::executor::LogEntry;
use skep::store::fixtures;
use skep::store::service::{Limit, Runtime, Task, TaskSpec};

use crate::harness::{
    Cluster, exec_executors, exec_service, json_lines, timeout, unique_id, wait_bounded, wait_for,
};

/// Reads 200 MB into one line `tail` must keep whole: 200 MB of memory, then exit 0.
const HOG: &str = "head -c 200000000 /dev/zero | tail >/dev/null";
const MIB: u64 = 1 << 20;

fn limited(script: &str, memory_bytes: u64, nano_cpus: u64) -> Task {
    Task {
        id: unique_id("lim"),
        service_id: "svc1".into(),
        service_name: "limits-test".into(),
        node_id: String::new(),
        spec: TaskSpec {
            runtime: Runtime::Exec,
            image: String::new(),
            command: ["/bin/sh", "-c", script].map(String::from).to_vec(),
            limits: Limit {
                memory_bytes,
                nano_cpus,
                pids: 0,
            },
            ..fixtures::task_spec()
        },
        ..fixtures::task()
    }
}

fn stdout(logs: &[LogEntry]) -> Vec<&str> {
    logs.iter()
        .filter(|e| e.stream == "stdout")
        .map(|e| e.line.as_str())
        .collect()
}

/// The host directory of a `/proc/PID/cgroup` line (the harness's, which removes a killed
/// daemon's groups).
pub(crate) use crate::harness::cgroup_dir as host_dir;

/// The task's own groups as its `cat /proc/self/cgroup` printed them: the lines ending in
/// `/skep/<agent's scope>/<task ID>`.
fn own_groups<'a>(lines: &[&'a str], task_id: &str) -> Vec<&'a str> {
    let suffix = format!("/{task_id}");
    lines
        .iter()
        .copied()
        .filter(|l| l.ends_with(&suffix) && l.contains("/skep/"))
        .collect()
}

/// The host directories of the groups of its own that task `id` (run by executors whose state
/// is in `state`) printed first (`cat /proc/self/cgroup`), once it has.
fn printed_groups(state: &Path, id: &str) -> Vec<PathBuf> {
    let output = state.join("tasks").join(id).join("output");
    wait_for(timeout(), "the task to print its groups", || {
        // The output file as the task's init writes it: `o<ns> line` for stdout.
        let text = std::fs::read_to_string(&output).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix('o')?.split_once(' ').map(|(_, line)| line))
            .collect();
        let dirs: Vec<PathBuf> = own_groups(&lines, id)
            .into_iter()
            .filter_map(host_dir)
            .collect();
        if dirs.is_empty() {
            Err(format!("no group of its own yet: {lines:?}"))
        } else {
            Ok(dirs)
        }
    })
}

/// Waits until task `id` (run by executors whose state is in `state`) has printed `line`.
fn wait_printed(state: &Path, id: &str, line: &str) {
    let output = state.join("tasks").join(id).join("output");
    let wanted = format!(" {line}");
    wait_for(timeout(), &format!("task {id} to print {line:?}"), || {
        let text = std::fs::read_to_string(&output).unwrap_or_default();
        if text.contains(&wanted) {
            Ok(())
        } else {
            Err(text)
        }
    });
}

/// The task behind `h` ends as a shell that could not fork does (exit 2, "Cannot fork"),
/// without having printed `unreached`.
async fn assert_could_not_fork(
    ex: &skep::agent::executor::Executors,
    h: &mut skep::agent::executor::TaskHandle,
    t: &Task,
    unreached: &str,
) {
    assert_eq!(wait_bounded(h, 30).await, 2, "its shell could not fork");
    let logs = ex.logs(t, 0, 0).await.unwrap();
    assert!(
        logs.iter().any(|e| e.line.contains("Cannot fork")),
        "{logs:?}"
    );
    assert!(!logs.iter().any(|e| e.line == unreached), "{logs:?}");
}

/// The first value of `key` in a `cpu.stat` text.
fn stat(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Break it: a task that needs 200 MB runs under a 32 MiB limit. Without the limit enforced it
/// finishes (exit 0, as the same command without a limit shows); with it the kernel kills it
/// (137, SIGKILL) and the node's memory is untouched. Its group is gone once it has ended.
#[tokio::test]
async fn exec_memory_limit_has_the_kernel_kill_the_task() {
    let state = tempfile::tempdir().unwrap();
    let Some(ex) = exec_executors(state.path()).await else {
        return;
    };
    let free = limited(HOG, 0, 0);
    let mut h = ex.start(&free, None).await.unwrap();
    assert_eq!(
        wait_bounded(&mut h, 60).await,
        0,
        "the hog needs no limit to finish"
    );

    let t = limited(&format!("cat /proc/self/cgroup; {HOG}"), 32 * MIB, 0);
    let mut h = ex.start(&t, None).await.unwrap();
    assert_eq!(
        wait_bounded(&mut h, 60).await,
        128 + 9,
        "killed for its limit"
    );
    let logs = ex.logs(&t, 0, 0).await.unwrap();
    let lines = stdout(&logs);
    let groups = own_groups(&lines, &t.id);
    assert!(!groups.is_empty(), "not in a group of its own: {lines:?}");
    for g in groups {
        let dir = host_dir(g).unwrap_or_else(|| panic!("no mount for {g}"));
        assert!(
            !dir.exists(),
            "{} is left after the task ended",
            dir.display()
        );
    }
    ex.remove(&free).await;
    ex.remove(&t).await;
}

/// Break it: a busy loop limited to a tenth of a CPU. Its group has that quota, and the kernel
/// throttles it (`nr_throttled` counts up); the group goes when the task is stopped.
#[tokio::test]
async fn exec_cpu_limit_throttles_the_task() {
    let state = tempfile::tempdir().unwrap();
    let Some(ex) = exec_executors(state.path()).await else {
        return;
    };
    // Bounded, so a failed run leaves no loop behind for long.
    let t = limited(
        "cat /proc/self/cgroup; exec timeout 120 /bin/sh -c 'while :; do :; done'",
        0,
        100_000_000,
    );
    let mut h = ex.start(&t, None).await.unwrap();
    let cpu_dir = printed_groups(state.path(), &t.id)
        .into_iter()
        .find(|d| d.join("cpu.stat").exists())
        .expect("a cpu group of its own");
    let quota = std::fs::read_to_string(cpu_dir.join("cpu.cfs_quota_us"))
        .or_else(|_| std::fs::read_to_string(cpu_dir.join("cpu.max")))
        .unwrap();
    assert!(
        quota.trim() == "10000" || quota.starts_with("10000 100000"),
        "{quota}"
    );
    wait_for(timeout(), "the kernel to throttle the task", || {
        let text = std::fs::read_to_string(cpu_dir.join("cpu.stat")).map_err(|e| e.to_string())?;
        match stat(&text, "nr_throttled") {
            Some(n) if n > 0 => Ok(()),
            _ => Err(text),
        }
    });
    h.stop(Duration::from_secs(5)).await.unwrap();
    wait_bounded(&mut h, 10).await;
    assert!(!cpu_dir.exists(), "{} is left", cpu_dir.display());
    ex.remove(&t).await;
}

/// A task that ignores SIGTERM is killed with its init after the grace; its processes die
/// with the namespace a moment later, and its groups still go.
#[tokio::test]
async fn a_killed_tasks_groups_are_removed() {
    let state = tempfile::tempdir().unwrap();
    let Some(ex) = exec_executors(state.path()).await else {
        return;
    };
    let t = limited(
        "cat /proc/self/cgroup; trap '' TERM; for i in $(seq 50); do sleep 120 & done; wait",
        16 * MIB,
        500_000_000,
    );
    let mut h = ex.start(&t, None).await.unwrap();
    let dirs = printed_groups(state.path(), &t.id);
    h.stop(Duration::from_millis(200)).await.unwrap();
    assert_eq!(wait_bounded(&mut h, 10).await, 128 + 9);
    for d in &dirs {
        assert!(!d.exists(), "{} is left after the kill", d.display());
    }
    ex.remove(&t).await;
}

/// Break it: a task (as nobody) tries to move itself out of its group, into the root group or
/// the unlimited tasks' one, and to raise its own memory limit. Each write is refused (the
/// files are root's) and it is still in its group afterwards.
#[tokio::test]
async fn an_exec_task_cannot_leave_its_group_or_raise_its_limits() {
    let state = tempfile::tempdir().unwrap();
    let Some(ex) = exec_executors(state.path()).await else {
        return;
    };
    let id = unique_id("esc");
    // For each group of its own (`N:CONTROLLERS:/…/skep/NODE/ID` in /proc/self/cgroup, under the
    // hierarchy's mount, /sys/fs/cgroup/CONTROLLERS with v1 and /sys/fs/cgroup with v2):
    // the groups above it, the unlimited tasks' group, its own limit files.
    let script = format!(
        "cat /proc/self/cgroup; \
         for f in /sys/fs/cgroup/*/cgroup.procs /sys/fs/cgroup/cgroup.procs; do \
           [ -e \"$f\" ] && echo $$ 2>/dev/null >\"$f\" && echo \"moved to $f\"; \
         done; \
         grep '/{id}$' /proc/self/cgroup | while IFS=: read -r n c p; do \
           d=/sys/fs/cgroup/$c$p; [ -d \"$d\" ] || d=/sys/fs/cgroup$p; \
           for f in $d/../cgroup.procs $d/../shared/cgroup.procs $d/../../cgroup.procs; do \
             [ -e \"$f\" ] && echo $$ 2>/dev/null >\"$f\" && echo \"moved to $f\"; \
           done; \
           for f in $d/memory.limit_in_bytes $d/memory.max $d/cpu.cfs_quota_us $d/cpu.max; do \
             [ -e \"$f\" ] && echo \"tried $f\" && echo -1 2>/dev/null >\"$f\" && echo \"raised $f\"; \
           done; \
           mkdir $d/escape 2>/dev/null && echo \"made $d/escape\"; \
         done; \
         echo after; cat /proc/self/cgroup"
    );
    let mut t = limited(&script, 64 * MIB, 0);
    t.id = id.clone();
    let mut h = ex.start(&t, None).await.unwrap();
    wait_bounded(&mut h, 30).await;
    let logs = ex.logs(&t, 0, 0).await.unwrap();
    let lines = stdout(&logs);
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("moved") || l.starts_with("raised") || l.starts_with("made")),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("tried")),
        "the limit file was not there to try: {lines:?}"
    );
    let after = lines.iter().position(|l| *l == "after").unwrap();
    let before = own_groups(&lines[..after], &id);
    assert!(!before.is_empty(), "{lines:?}");
    assert_eq!(own_groups(&lines[after..], &id), before, "{lines:?}");
    ex.remove(&t).await;
}

/// Break it: a fork bomb. With the node's cap on exec tasks' process IDs at 40, a task that
/// holds 30 sleeps leaves a second task too few to start 20 more: the second's shell cannot
/// fork (exit 2, "Cannot fork"), while the first still holds its 30. Without the cap both
/// finish their loops.
#[tokio::test]
async fn exec_tasks_together_stop_at_the_nodes_cap_on_process_ids() {
    let state = tempfile::tempdir().unwrap();
    let Some(ex) = exec_executors(state.path()).await else {
        return;
    };
    let ex = ex.exec_pids_max(40);
    let holder = limited(
        "for i in $(seq 30); do sleep 120 & done; echo holding; wait",
        0,
        0,
    );
    let mut h1 = ex.start(&holder, None).await.unwrap();
    wait_printed(state.path(), &holder.id, "holding");
    let bomb = limited(
        "for i in $(seq 20); do sleep 120 & done; echo all-started",
        0,
        0,
    );
    let mut h2 = ex.start(&bomb, None).await.unwrap();
    assert_could_not_fork(&ex, &mut h2, &bomb, "all-started").await;
    assert_eq!(h1.exit_code(), None, "the first task still runs");
    h1.stop(Duration::from_secs(2)).await.unwrap();
    wait_bounded(&mut h1, 10).await;
    ex.remove(&holder).await;
    ex.remove(&bomb).await;
}

/// Break it: a fork bomb in a task with its own `--limit-pids 20`. Its shell cannot fork the
/// 40 sleeps it wants (exit 2, "Cannot fork") while a task without a limit beside it holds
/// its 40, and the node's cap (default) is far from reached: one task's bomb no longer takes
/// what the node's other exec tasks need. Without the task's limit both hold 40.
#[tokio::test]
async fn a_tasks_own_limit_on_process_ids_stops_its_fork_bomb_alone() {
    let state = tempfile::tempdir().unwrap();
    let Some(ex) = exec_executors(state.path()).await else {
        return;
    };
    let script =
        "cat /proc/self/cgroup; for i in $(seq 40); do sleep 120 & done; echo holding; wait";
    let free = limited(script, 0, 0);
    let mut h1 = ex.start(&free, None).await.unwrap();
    wait_printed(state.path(), &free.id, "holding");
    let mut bomb = limited(script, 0, 0);
    bomb.spec.limits.pids = 20;
    let mut h2 = ex.start(&bomb, None).await.unwrap();
    assert_could_not_fork(&ex, &mut h2, &bomb, "holding").await;
    assert_eq!(h1.exit_code(), None, "the free task still runs");
    let dirs = printed_groups(state.path(), &bomb.id);
    h1.stop(Duration::from_secs(2)).await.unwrap();
    wait_bounded(&mut h1, 10).await;
    ex.remove(&free).await;
    ex.remove(&bomb).await;
    for d in dirs {
        assert!(!d.exists(), "{} is left after the task ended", d.display());
    }
}

/// `--limit-pids 5` gives the command's own processes 5, as a container's `PidsLimit` does
/// (skep's init, the task's PID 1, is not counted against them): a shell holding four sleeps
/// is five, and a sixth cannot be forked.
#[tokio::test]
async fn a_limit_on_process_ids_counts_the_commands_processes_as_docker_does() {
    let state = tempfile::tempdir().unwrap();
    let Some(ex) = exec_executors(state.path()).await else {
        return;
    };
    let mut t = limited(
        "sleep 60 & sleep 60 & sleep 60 & sleep 60 & echo held-5; sleep 60 & echo held-6; wait",
        0,
        0,
    );
    t.spec.limits.pids = 5;
    let mut h = ex.start(&t, None).await.unwrap();
    assert_eq!(wait_bounded(&mut h, 30).await, 2, "the sixth fork failed");
    let logs = ex.logs(&t, 0, 0).await.unwrap();
    let lines = stdout(&logs);
    assert!(lines.contains(&"held-5"), "{logs:?}");
    assert!(!lines.contains(&"held-6"), "{logs:?}");
    ex.remove(&t).await;
}

/// End to end: `skep daemon --exec-pids-max 40`: a service forking 60 processes fails as its
/// shell cannot fork, the daemon keeps answering, a service forking 10 then completes (the
/// cap is the node's, so the two run one after the other: side by side, whichever forks
/// first may take the other's share), and `skep info` shows the cap.
#[test]
fn a_nodes_cap_on_exec_process_ids_holds_end_to_end() {
    let c = Cluster::init_opts(1, 0, &[], &["--exec-pids-max", "40"]);
    let m = c.first();
    let forks = |n: usize| format!("for i in $(seq {n}); do sleep 5 & done; wait");
    exec_service(m, "forks-60", &["--restart-condition", "none"], &forks(60));
    let bomb = ended(m, "forks-60");
    assert_failed_with(&bomb, 2);
    exec_service(m, "forks-10", &["--restart-condition", "none"], &forks(10));
    let small = ended(m, "forks-10");
    assert!(small.starts_with("Complete"), "{small}");
    m.cli_ok(&["node", "ls"]);
    // The operator sees what holds the node's exec tasks, as `docker info` shows its cgroups.
    let info = m.cli_ok(&["info"]);
    assert!(info.contains(" Exec Tasks PIDs Limit: 40\n"), "{info}");
    assert!(
        info.contains(" Cgroup Version: 1\n") || info.contains(" Cgroup Version: 2\n"),
        "{info}"
    );
}

/// Break it: the node's exec tasks without limits of their own could take all of the node's
/// memory from the daemon and the host. Under `--exec-memory-max` a task wanting more than
/// the cap is killed by the kernel (`non-zero exit (137)`, where the same command completes
/// without the cap: `an_exec_services_memory_limit_holds_end_to_end`), a task within it
/// completes, and the daemon keeps serving. `skep info` shows the cap.
#[test]
fn a_nodes_cap_on_exec_memory_holds_end_to_end() {
    let c = Cluster::init_opts(1, 0, &[], &["--exec-memory-max", "64MiB"]);
    let m = c.first();
    exec_service(m, "hog-capped", &["--restart-condition", "none"], HOG);
    let hog = ended(m, "hog-capped");
    assert_failed_with(&hog, 137);
    exec_service(
        m,
        "small",
        &["--restart-condition", "none"],
        "head -c 8000000 /dev/zero | tail >/dev/null",
    );
    let small = ended(m, "small");
    assert!(small.starts_with("Complete"), "{small}");
    let info = m.cli_ok(&["info"]);
    assert!(info.contains(" Exec Tasks Memory Limit: 64MiB\n"), "{info}");
}

/// `end` (from [`ended`]) is a task that failed with exit code `code`, as Swarm shows it.
fn assert_failed_with(end: &str, code: u8) {
    assert!(
        end.starts_with("Failed") && end.contains(&format!("non-zero exit ({code})")),
        "{end}"
    );
}

/// The state and error of `service`'s task once it has ended (`Complete ...` or
/// `Failed ... task: non-zero exit (N)`).
fn ended(m: &crate::harness::Node, service: &str) -> String {
    wait_for(timeout(), &format!("{service}'s task to end"), || {
        let tasks =
            json_lines(&m.cli_ok(&["service", "ps", "--no-trunc", "--format", "json", service]));
        tasks
            .iter()
            .find_map(|t| {
                let state = t["CurrentState"].as_str()?;
                (state.starts_with("Failed") || state.starts_with("Complete"))
                    .then(|| format!("{state} {}", t["Error"].as_str().unwrap_or_default()))
            })
            .ok_or_else(|| format!("{tasks:?}"))
    })
}

/// End to end: `service create --runtime exec --limit-pids 20` through a real daemon: a task
/// forking 40 fails (`non-zero exit (2)`), one forking 10 under the same limit completes, and
/// `service inspect` shows the limit as Docker does (`PIDs:` in `--pretty`,
/// `.Spec.TaskTemplate.Resources.Limits.Pids`).
#[test]
fn an_exec_services_limit_on_process_ids_holds_end_to_end() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    let forks = |n: usize| format!("for i in $(seq {n}); do sleep 5 & done; wait");
    let flags = ["--restart-condition", "none", "--limit-pids", "20"];
    exec_service(m, "pids-10", &flags, &forks(10));
    exec_service(m, "pids-40", &flags, &forks(40));
    let small = ended(m, "pids-10");
    assert!(small.starts_with("Complete"), "{small}");
    let bomb = ended(m, "pids-40");
    assert_failed_with(&bomb, 2);
    let pretty = m.cli_ok(&["service", "inspect", "--pretty", "pids-40"]);
    assert!(
        pretty.contains(" Limits:\n") && pretty.contains("  PIDs:"),
        "{pretty}"
    );
    let pids = m.cli_ok(&[
        "service",
        "inspect",
        "--format",
        "{{.Spec.TaskTemplate.Resources.Limits.Pids}}",
        "pids-40",
    ]);
    assert_eq!(pids.trim(), "20");
}

/// Break it: a deployer's health check is a command of its choosing too. It runs in the
/// task's control groups, so a fork bomb there stops at the task's limits and the node's cap
/// like the task's own: a check that passes only inside a skep group keeps the task healthy
/// until it completes. Before, checks ran in the daemon's group, outside every limit (the
/// check failed, and the task with it).
#[test]
fn an_exec_tasks_health_check_runs_in_the_tasks_groups() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    exec_service(
        m,
        "checked",
        &[
            "--restart-condition",
            "none",
            "--limit-pids",
            "50",
            "--health-cmd",
            "grep -q /skep/ /proc/self/cgroup",
            "--health-interval",
            "200ms",
            "--health-retries",
            "1",
        ],
        "sleep 3",
    );
    let end = ended(m, "checked");
    assert!(end.starts_with("Complete"), "{end}");
}

/// End to end: `service create --runtime exec --limit-memory` through a real daemon. The task
/// fails as Docker Swarm's would (`non-zero exit (137)`); the same service without the limit
/// completes.
#[test]
fn an_exec_services_memory_limit_holds_end_to_end() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    exec_service(m, "hog-free", &["--restart-condition", "none"], HOG);
    exec_service(
        m,
        "hog-limited",
        &["--restart-condition", "none", "--limit-memory", "32MiB"],
        HOG,
    );
    let free = ended(m, "hog-free");
    assert!(free.starts_with("Complete"), "{free}");
    let limited = ended(m, "hog-limited");
    assert_failed_with(&limited, 137);
}

/// The host directories of the agent's own groups (`skep/<node ID>` and its `shared`, in each
/// hierarchy) that a running task of service `service` printed (`cat /proc/self/cgroup`).
fn agent_groups_of(m: &crate::harness::Node, service: &str) -> Vec<PathBuf> {
    wait_for(timeout(), "the task to print its groups", || {
        let logs = m.cli_ok(&["service", "logs", service]);
        let shared: Vec<PathBuf> = logs
            .lines()
            .filter_map(|l| l.rsplit_once("| ").map_or(Some(l), |(_, line)| Some(line)))
            .filter(|l| l.ends_with("/shared") && l.contains("/skep/"))
            .filter_map(host_dir)
            .collect();
        if shared.is_empty() {
            return Err(logs);
        }
        let agent = shared
            .iter()
            .filter_map(|d| d.parent().map(Path::to_path_buf));
        Ok(shared.iter().cloned().chain(agent).collect())
    })
}

/// Break it: a test daemon killed with an exec task running (the way every test's daemons
/// end) left its `skep/<node ID>` groups behind: a host that ran the tests kept a set for
/// every node it ever ran. Dropping the harness's node removes them once its tasks are killed.
#[test]
fn a_killed_test_daemon_leaves_no_groups_behind() {
    let m = crate::harness::Node::start("killed-groups");
    m.cli_ok(&["swarm", "init", "--advertise-addr", &m.addr()]);
    exec_service(&m, "holder", &[], "cat /proc/self/cgroup; sleep 600");
    let dirs = agent_groups_of(&m, "holder");
    drop(m);
    let left: Vec<&PathBuf> = dirs.iter().filter(|d| d.exists()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Break it: a daemon that stopped kept its `skep/<node ID>` groups (and their `shared`) in
/// every hierarchy for good, so a host kept a set for every node ID it ever ran. Stopping
/// with a task left running (for the next start to adopt) keeps the groups that hold it;
/// stopping with none removes them.
#[test]
fn a_stopped_daemon_removes_its_own_groups_unless_a_task_holds_them() {
    let mut m = crate::harness::Node::start("groups");
    m.cli_ok(&["swarm", "init", "--advertise-addr", &m.addr()]);
    exec_service(&m, "holder", &[], "cat /proc/self/cgroup; sleep 600");
    let dirs = agent_groups_of(&m, "holder");
    m.terminate();
    let missing: Vec<&PathBuf> = dirs.iter().filter(|d| !d.is_dir()).collect();
    assert!(
        missing.is_empty(),
        "removed while a task is in them: {missing:?}"
    );
    m.spawn();
    m.wait_up();
    m.cli_ok(&["service", "rm", "holder"]);
    // Until the agent is done with the task (its directory goes last): the daemon keeps its
    // groups while a task of its may still be starting.
    let tasks_dir = m.data_dir().join("tasks").join("tasks");
    wait_for(timeout(), "the agent to be done with the task", || {
        let procs: String = dirs
            .iter()
            .map(|d| std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default())
            .collect();
        let left = std::fs::read_dir(&tasks_dir).map_or(0, |d| d.count());
        if procs.trim().is_empty() && left == 0 {
            Ok(())
        } else {
            Err(format!("processes {procs:?}, {left} task directories"))
        }
    });
    m.terminate();
    let kept: Vec<&PathBuf> = dirs.iter().filter(|d| d.exists()).collect();
    assert!(
        kept.is_empty(),
        "the stopped daemon left its groups: {kept:?}"
    );
}
