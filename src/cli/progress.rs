//! Waiting for a service to converge after `service create|update|scale|rollback`, with
//! Docker's per-task progress:
//!
//! ```text
//! overall progress: 3 out of 5 tasks
//! 1/5: running   [==================================================>]
//! 2/5: starting  [============================================>      ]
//! verify: Service converged
//! ```
//!
//! The service is polled with `ServiceInspect`; each poll is reduced to a [`Snapshot`] by a
//! pure function. On a terminal the lines are redrawn in place; otherwise only lines that
//! changed are printed. Like Docker it waits as long as it takes; Ctrl-C stops the waiting,
//! not the update.

use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::client::status;
use super::print;
use super::tasks::{parse_service, parse_tasks, short_id};
use crate::api::v1::ServiceRef;
use crate::api::view::TaskView;
use crate::store::service::{
    DesiredState, Mode, Service, Task, TaskState, UpdatePhase, UpdateStatus,
};

const POLL: Duration = Duration::from_millis(300);
/// A global service with no task yet may be one the orchestrator has not looked at: it counts
/// as converged only after this long.
const EMPTY_GLOBAL_GRACE: Duration = Duration::from_secs(3);
const BAR_WIDTH: usize = 50;
/// Docker's longest state name in progress lines (`preparing`).
const STATE_WIDTH: usize = 9;

/// How far a state is on the way to running, out of [`STAGES`] (Docker's numbering).
fn stage(state: TaskState) -> usize {
    match state {
        TaskState::New => 1,
        TaskState::Pending => 3,
        TaskState::Assigned => 4,
        TaskState::Accepted => 5,
        TaskState::Preparing => 6,
        TaskState::Starting => 8,
        _ => STAGES,
    }
}
const STAGES: usize = 9;

/// `[=====>    ]` as Docker's progress bars draw it.
pub(super) fn bar(current: usize, total: usize) -> String {
    let filled = (current * BAR_WIDTH / total.max(1)).min(BAR_WIDTH);
    format!(
        "[{}>{}]",
        "=".repeat(filled),
        " ".repeat(BAR_WIDTH - filled)
    )
}

/// Where a wait is.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    Waiting,
    Converged,
    /// The update stopped (paused, or rolled back on failure): the message to fail with.
    Failed(String),
}

/// One poll, reduced to what is printed.
#[derive(Debug)]
pub(super) struct Snapshot {
    /// `overall progress: N out of M tasks`.
    pub overall: String,
    /// `(key, line)` per slot or node, in order.
    pub rows: Vec<(String, String)>,
    pub outcome: Outcome,
}

/// What a wait compares against.
#[derive(Debug, Default, Clone)]
pub(super) struct Baseline {
    /// The service's update status before the change: a status equal to it is old news.
    pub update: Option<UpdateStatus>,
    /// `--force`: tasks must have been made from the new version, not just the same spec.
    pub force_version: Option<u64>,
    /// Waiting for a rollback the user asked for (a rollback phase is then no failure).
    pub rollback: bool,
}

/// Whether a task is what the service wants now.
fn current(svc: &Service, base: &Baseline, t: &Task) -> bool {
    t.spec == svc.spec.task && base.force_version.is_none_or(|v| t.spec_version >= v)
}

/// The task a slot (or node) shows: the newest that should run, else the newest.
fn representative<'a>(tasks: &[&'a TaskView]) -> Option<&'a TaskView> {
    let newest = |it: &mut dyn Iterator<Item = &'a TaskView>| {
        it.max_by(|a, b| {
            a.created_at
                .cmp(&b.created_at)
                .then_with(|| a.status.timestamp.cmp(&b.status.timestamp))
        })
    };
    newest(
        &mut tasks
            .iter()
            .copied()
            .filter(|t| t.desired == DesiredState::Running),
    )
    .or_else(|| newest(&mut tasks.iter().copied()))
}

fn row_text(label: &str, t: &TaskView) -> String {
    if let Some(u) = &t.unknown {
        // Its node is down: no bar, since nobody knows how far it is.
        let name = format!("{:<w$}", "unknown", w = STATE_WIDTH);
        return format!("{label}: {name} {}", u.reason);
    }
    let state = t.status.state;
    let name = format!("{:<w$}", state.as_str(), w = STATE_WIDTH);
    let detail = if !t.status.err.is_empty() {
        t.status.err.as_str()
    } else if state == TaskState::Pending {
        t.status.message.as_str()
    } else {
        ""
    };
    if state.is_terminal() {
        // A task that ended shows why instead of a bar.
        let why = if detail.is_empty() {
            t.status.message.as_str()
        } else {
            detail
        };
        return format!("{label}: {name} {why}").trim_end().to_string();
    }
    let bar = bar(stage(state), STAGES);
    if detail.is_empty() {
        format!("{label}: {name} {bar}")
    } else {
        format!("{label}: {name} {bar} {detail}")
    }
}

/// Reduces one poll to its lines and outcome. `waited` is how long the wait has lasted.
pub(super) fn snapshot(
    svc: &Service,
    tasks: &[TaskView],
    base: &Baseline,
    waited: Duration,
) -> Snapshot {
    let tasks: Vec<&TaskView> = tasks.iter().filter(|t| t.service_id == svc.id).collect();
    // Known to run: a task of a node that is down is not counted (see `manager::presence`).
    let running_now = |t: &TaskView| {
        t.desired == DesiredState::Running && t.known_running() && current(svc, base, t)
    };
    let desired_running = tasks
        .iter()
        .filter(|t| t.desired == DesiredState::Running)
        .count();
    let (overall, rows, converged) = match svc.spec.mode {
        Mode::Replicated { replicas } => {
            let mut slots: BTreeMap<u64, Vec<&TaskView>> = BTreeMap::new();
            for t in &tasks {
                slots.entry(t.slot).or_default().push(t);
            }
            let mut rows = Vec::new();
            let mut running = 0u64;
            for (slot, group) in &slots {
                let Some(t) = representative(group) else {
                    continue;
                };
                // Slots scaled away keep only stopped history: not part of the progress.
                if t.desired != DesiredState::Running && *slot > replicas {
                    continue;
                }
                if running_now(t) {
                    running += 1;
                }
                let label = format!("{slot}/{replicas}");
                rows.push((label.clone(), row_text(&label, t)));
            }
            let converged = running == replicas && desired_running as u64 == replicas;
            (
                format!(
                    "overall progress: {} out of {replicas} tasks",
                    running.min(replicas)
                ),
                rows,
                converged,
            )
        }
        Mode::Global => {
            let mut nodes: BTreeMap<&str, Vec<&TaskView>> = BTreeMap::new();
            for t in &tasks {
                nodes.entry(t.node_id.as_str()).or_default().push(t);
            }
            let mut rows = Vec::new();
            let (mut running, mut total) = (0usize, 0usize);
            for (node, group) in &nodes {
                let Some(t) = representative(group) else {
                    continue;
                };
                if t.desired != DesiredState::Running {
                    continue;
                }
                total += 1;
                if running_now(t) {
                    running += 1;
                }
                let label = if node.is_empty() {
                    "pending".to_string()
                } else {
                    short_id(node).to_string()
                };
                rows.push((label.clone(), row_text(&label, t)));
            }
            let converged = running == total
                && desired_running == total
                && (total > 0 || waited >= EMPTY_GLOBAL_GRACE);
            (
                format!("overall progress: {running} out of {total} tasks"),
                rows,
                converged,
            )
        }
    };
    let outcome = match svc
        .update
        .as_ref()
        .filter(|u| Some(*u) != base.update.as_ref())
    {
        Some(u) if u.phase == UpdatePhase::Paused => Outcome::Failed(why("update paused", u)),
        Some(u) if u.phase == UpdatePhase::RollbackPaused => {
            Outcome::Failed(why("rollback paused", u))
        }
        Some(u)
            if !base.rollback
                && matches!(
                    u.phase,
                    UpdatePhase::RollbackStarted | UpdatePhase::RollbackCompleted
                ) =>
        {
            if converged || u.phase == UpdatePhase::RollbackCompleted {
                Outcome::Failed(why("update rolled back", u))
            } else {
                Outcome::Waiting
            }
        }
        _ if converged => Outcome::Converged,
        _ => Outcome::Waiting,
    };
    Snapshot {
        overall,
        rows,
        outcome,
    }
}

fn why(what: &str, u: &UpdateStatus) -> String {
    if u.message.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {}", u.message)
    }
}

/// Prints snapshots: redrawn in place on a terminal, changes only otherwise.
pub(super) struct Renderer {
    tty: bool,
    /// Lines drawn last time (terminal).
    drawn: usize,
    /// Last line printed per key (not a terminal).
    seen: HashMap<String, String>,
}

impl Renderer {
    pub fn new(tty: bool) -> Self {
        Renderer {
            tty,
            drawn: 0,
            seen: HashMap::new(),
        }
    }

    /// The text to print for this snapshot.
    pub fn frame(&mut self, s: &Snapshot) -> String {
        let mut lines = vec![("overall".to_string(), s.overall.clone())];
        lines.extend(s.rows.iter().cloned());
        let mut out = String::new();
        if self.tty {
            if self.drawn > 0 {
                out.push_str(&format!("\x1b[{}A", self.drawn));
            }
            for (_, line) in &lines {
                out.push_str("\x1b[2K");
                out.push_str(line);
                out.push('\n');
            }
            // Clear what a longer previous frame left below.
            out.push_str("\x1b[J");
            self.drawn = lines.len();
        } else {
            for (key, line) in lines {
                if self.seen.get(&key) != Some(&line) {
                    out.push_str(&line);
                    out.push('\n');
                    self.seen.insert(key, line);
                }
            }
        }
        out
    }
}

/// Waits until `service` converges, printing progress unless `quiet`.
pub(super) async fn wait(
    api: &mut super::client::Api,
    service: &str,
    base: Baseline,
    quiet: bool,
) -> anyhow::Result<()> {
    let mut renderer = Renderer::new(std::io::stdout().is_terminal());
    let started = Instant::now();
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let info = tokio::select! {
            r = api.service_inspect(ServiceRef { service: service.to_string() }) => r,
            _ = &mut interrupted => return stopped_waiting(service),
        };
        match info {
            Ok(resp) => {
                let info = resp.into_inner();
                let svc = parse_service(&info.service_json)?;
                let tasks = parse_tasks(&info.tasks_json)?;
                let snap = snapshot(&svc, &tasks, &base, started.elapsed());
                if !quiet {
                    print(&renderer.frame(&snap))?;
                }
                match snap.outcome {
                    Outcome::Converged => {
                        if !quiet {
                            print("verify: Service converged\n")?;
                        }
                        return Ok(());
                    }
                    Outcome::Failed(msg) => bail!("{msg}"),
                    Outcome::Waiting => {}
                }
            }
            // A leader change: ask again.
            Err(s) if s.code() == tonic::Code::Unavailable => {}
            Err(s) => return Err(status(s)),
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = &mut interrupted => return stopped_waiting(service),
        }
    }
}

/// One poll of a secret's (or config's) rollout of `version`, reduced to what is printed:
/// `[=====>   ] 10/14 tasks have version 2`. Completed converges; paused, or another version
/// current (a newer update or a rollback), ends the wait with a message.
pub(super) fn rollout_snapshot(
    r: &crate::api::v1::RolloutInfo,
    word: &str,
    version: u64,
) -> Snapshot {
    let name = &r.name;
    let line = format!(
        "  {} {}/{} tasks have version {}",
        bar(r.done as usize, r.total as usize),
        r.done,
        r.total,
        version
    );
    let outcome = if r.to != version {
        Outcome::Failed(format!(
            "{word} {name}: version {} became current (another update or a rollback) before \
             version {version} was rolled out; `skep {word} rollout {name}` shows its rollout",
            r.to
        ))
    } else {
        match r.state.as_str() {
            "completed" => Outcome::Converged,
            "paused" => Outcome::Failed(format!(
                "{word} {name}: the rollout of version {version} is paused at {}/{} tasks; \
                 `skep {word} rollout {name} --continue` resumes it",
                r.done, r.total
            )),
            _ => Outcome::Waiting,
        }
    };
    Snapshot {
        overall: line,
        rows: Vec::new(),
        outcome,
    }
}

/// Waits until the rollout of `version` of `name` completes, printing a bar unless `quiet`.
pub(super) async fn wait_rollout(
    api: &mut super::client::Api,
    config: bool,
    word: &str,
    name: &str,
    version: u64,
    quiet: bool,
) -> anyhow::Result<()> {
    let mut renderer = Renderer::new(std::io::stdout().is_terminal());
    let mut interrupted = std::pin::pin!(tokio::signal::ctrl_c());
    let stopped = || {
        eprintln!(
            "\nThe rollout continues in the background.\nUse `skep {word} rollout {name}` to check progress."
        );
        Ok(())
    };
    loop {
        let req = crate::api::v1::SecretRolloutRequest {
            secret: name.to_string(),
            config,
            action: String::new(),
        };
        let info = tokio::select! {
            r = api.secret_rollout(req) => r,
            _ = &mut interrupted => return stopped(),
        };
        match info {
            Ok(resp) => {
                let snap = rollout_snapshot(&resp.into_inner(), word, version);
                if !quiet {
                    print(&renderer.frame(&snap))?;
                }
                match snap.outcome {
                    Outcome::Converged => return Ok(()),
                    Outcome::Failed(msg) => bail!("{msg}"),
                    Outcome::Waiting => {}
                }
            }
            // A leader change: ask again.
            Err(s) if s.code() == tonic::Code::Unavailable => {}
            Err(s) => return Err(status(s)),
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = &mut interrupted => return stopped(),
        }
    }
}

fn stopped_waiting(service: &str) -> anyhow::Result<()> {
    eprintln!(
        "\nOperation continuing in background.\nUse `skep service ps {service}` to check progress."
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rollout_is_drawn_as_a_bar_and_ends_completed_paused_or_overtaken() {
        let mut r = crate::api::v1::RolloutInfo {
            from: 1,
            to: 2,
            state: "rolling".into(),
            total: 14,
            done: 10,
            name: "db".into(),
            ..Default::default()
        };
        let s = rollout_snapshot(&r, "secret", 2);
        assert_eq!(s.outcome, Outcome::Waiting);
        assert!(
            s.overall.ends_with("] 10/14 tasks have version 2"),
            "{}",
            s.overall
        );
        assert!(s.overall.contains("[===="), "{}", s.overall);
        r.state = "paused".into();
        let Outcome::Failed(m) = rollout_snapshot(&r, "secret", 2).outcome else {
            panic!("a paused rollout must end the wait");
        };
        assert!(
            m.contains("paused at 10/14") && m.contains("--continue"),
            "{m}"
        );
        r.state = "completed".into();
        assert_eq!(
            rollout_snapshot(&r, "secret", 2).outcome,
            Outcome::Converged
        );
        r.to = 3;
        let Outcome::Failed(m) = rollout_snapshot(&r, "config", 2).outcome else {
            panic!("another version current must end the wait");
        };
        assert!(m.contains("version 3 became current"), "{m}");
        // Nothing follows: an empty bar, not a division by zero.
        r.to = 2;
        r.total = 0;
        r.done = 0;
        assert!(rollout_snapshot(&r, "secret", 2).overall.contains("0/0"));
    }
    use crate::cli::tasks::tests::task;

    fn service(mode: Mode, t: &Task) -> Service {
        let mut s = crate::store::fixtures::service("web-id", "web");
        s.spec.mode = mode;
        s.spec.task = t.spec.clone();
        s
    }

    #[test]
    fn bars_match_docker() {
        assert_eq!(
            bar(9, 9),
            "[==================================================>]"
        );
        assert_eq!(
            bar(8, 9),
            "[============================================>      ]"
        );
        assert_eq!(bar(0, 9).len(), 53);
    }

    #[test]
    fn replicated_progress_lines() {
        let t1 = task("a", "web", 1, "n1", TaskState::Running);
        let t2 = task("b", "web", 2, "n2", TaskState::Starting);
        let mut t3 = task("c", "web", 3, "", TaskState::Pending);
        t3.status.message = "no suitable node".into();
        let svc = service(Mode::Replicated { replicas: 3 }, &t1);
        let s = snapshot(&svc, &[t1, t2, t3], &Baseline::default(), Duration::ZERO);
        assert_eq!(s.overall, "overall progress: 1 out of 3 tasks");
        let lines: Vec<&str> = s.rows.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(
            lines,
            [
                "1/3: running   [==================================================>]",
                "2/3: starting  [============================================>      ]",
                "3/3: pending   [================>                                  ] no suitable node",
            ]
        );
        assert_eq!(s.outcome, Outcome::Waiting);
    }

    #[test]
    fn a_task_of_a_down_node_is_not_progress() {
        let t1 = task("a", "web", 1, "n1", TaskState::Running);
        let mut t2 = task("b", "web", 2, "n2", TaskState::Running);
        t2.unknown = Some(crate::cli::tasks::tests::unknown_since(
            "2026-01-01T00:00:00Z",
        ));
        let svc = service(Mode::Replicated { replicas: 2 }, &t1);
        let s = snapshot(&svc, &[t1, t2], &Baseline::default(), Duration::ZERO);
        assert_eq!(s.overall, "overall progress: 1 out of 2 tasks");
        assert_eq!(s.rows[1].1, "2/2: unknown   node down");
        assert_eq!(s.outcome, Outcome::Waiting);
    }

    #[test]
    fn converges_when_every_slot_runs_the_current_spec() {
        let t1 = task("a", "web", 1, "n1", TaskState::Running);
        let mut t2 = task("b", "web", 2, "n2", TaskState::Running);
        let svc = service(Mode::Replicated { replicas: 2 }, &t1);
        let base = Baseline::default();
        let s = snapshot(&svc, &[t1.clone(), t2.clone()], &base, Duration::ZERO);
        assert_eq!(s.outcome, Outcome::Converged);
        assert_eq!(s.overall, "overall progress: 2 out of 2 tasks");
        // An old spec still running is not converged.
        t2.spec.command = vec!["/bin/true".into()];
        let s = snapshot(&svc, &[t1.clone(), t2.clone()], &base, Duration::ZERO);
        assert_eq!(s.outcome, Outcome::Waiting);
        // --force: the version counts too.
        let forced = Baseline {
            force_version: Some(2),
            ..Default::default()
        };
        let t2 = task("b", "web", 2, "n2", TaskState::Running);
        let s = snapshot(&svc, &[t1, t2], &forced, Duration::ZERO);
        assert_eq!(s.outcome, Outcome::Waiting);
    }

    #[test]
    fn scaled_down_slots_and_history_are_left_out() {
        let t1 = task("a", "web", 1, "n1", TaskState::Running);
        let mut old = task("old", "web", 1, "n1", TaskState::Failed);
        old.desired = DesiredState::Shutdown;
        old.created_at = "2025-01-01T00:00:00Z".into();
        let mut gone = task("g", "web", 2, "n2", TaskState::Shutdown);
        gone.desired = DesiredState::Shutdown;
        let svc = service(Mode::Replicated { replicas: 1 }, &t1);
        let s = snapshot(&svc, &[t1, old, gone], &Baseline::default(), Duration::ZERO);
        assert_eq!(s.rows.len(), 1);
        assert_eq!(s.outcome, Outcome::Converged);
    }

    #[test]
    fn failed_tasks_show_their_error() {
        let mut t = task("a", "web", 1, "n1", TaskState::Failed);
        t.desired = DesiredState::Shutdown;
        t.status.err = "starting /bin/nope: No such file or directory".into();
        let svc = service(Mode::Replicated { replicas: 1 }, &t);
        let s = snapshot(&svc, &[t], &Baseline::default(), Duration::ZERO);
        assert_eq!(
            s.rows[0].1,
            "1/1: failed    starting /bin/nope: No such file or directory"
        );
        assert_eq!(s.outcome, Outcome::Waiting);
    }

    #[test]
    fn global_counts_nodes_with_a_task() {
        let a = task("a", "web", 0, "nodeA", TaskState::Running);
        let b = task("b", "web", 0, "nodeB", TaskState::Assigned);
        let svc = service(Mode::Global, &a);
        let s = snapshot(&svc, &[a.clone(), b], &Baseline::default(), Duration::ZERO);
        assert_eq!(s.overall, "overall progress: 1 out of 2 tasks");
        assert!(
            s.rows[0].1.starts_with("nodeA: running   ["),
            "{:?}",
            s.rows
        );
        let s = snapshot(&svc, &[], &Baseline::default(), Duration::ZERO);
        assert_eq!(s.outcome, Outcome::Waiting);
        let s = snapshot(&svc, &[], &Baseline::default(), Duration::from_secs(5));
        assert_eq!(s.outcome, Outcome::Converged);
        let s = snapshot(&svc, &[a], &Baseline::default(), Duration::ZERO);
        assert_eq!(s.outcome, Outcome::Converged);
    }

    #[test]
    fn a_new_paused_update_fails_the_wait_an_old_one_does_not() {
        let t = task("a", "web", 1, "n1", TaskState::Running);
        let mut svc = service(Mode::Replicated { replicas: 1 }, &t);
        let paused = UpdateStatus {
            phase: UpdatePhase::Paused,
            started_at: "t0".into(),
            last_step_at: "t1".into(),
            message: "task a failed".into(),
        };
        svc.update = Some(paused.clone());
        let s = snapshot(
            &svc,
            std::slice::from_ref(&t),
            &Baseline::default(),
            Duration::ZERO,
        );
        assert_eq!(
            s.outcome,
            Outcome::Failed("update paused: task a failed".into())
        );
        let base = Baseline {
            update: Some(paused),
            ..Default::default()
        };
        let s = snapshot(&svc, std::slice::from_ref(&t), &base, Duration::ZERO);
        assert_eq!(s.outcome, Outcome::Converged);
        svc.update = Some(UpdateStatus {
            phase: UpdatePhase::RollbackCompleted,
            started_at: "t2".into(),
            last_step_at: "t3".into(),
            message: String::new(),
        });
        let s = snapshot(
            &svc,
            std::slice::from_ref(&t),
            &Baseline::default(),
            Duration::ZERO,
        );
        assert_eq!(s.outcome, Outcome::Failed("update rolled back".into()));
        let asked = Baseline {
            rollback: true,
            ..Default::default()
        };
        let s = snapshot(&svc, &[t], &asked, Duration::ZERO);
        assert_eq!(s.outcome, Outcome::Converged);
    }

    #[test]
    fn renderer_prints_changes_or_redraws() {
        let t1 = task("a", "web", 1, "n1", TaskState::Starting);
        let svc = service(Mode::Replicated { replicas: 1 }, &t1);
        let s1 = snapshot(
            &svc,
            std::slice::from_ref(&t1),
            &Baseline::default(),
            Duration::ZERO,
        );
        let mut plain = Renderer::new(false);
        assert_eq!(
            plain.frame(&s1),
            "overall progress: 0 out of 1 tasks\n\
             1/1: starting  [============================================>      ]\n"
        );
        assert_eq!(plain.frame(&s1), "");
        let mut t2 = t1;
        t2.status.state = TaskState::Running;
        let s2 = snapshot(&svc, &[t2], &Baseline::default(), Duration::ZERO);
        assert_eq!(
            plain.frame(&s2),
            "overall progress: 1 out of 1 tasks\n\
             1/1: running   [==================================================>]\n"
        );
        let mut tty = Renderer::new(true);
        let first = tty.frame(&s1);
        assert!(first.starts_with("\x1b[2Koverall progress"), "{first:?}");
        let second = tty.frame(&s2);
        assert!(
            second.starts_with("\x1b[2A\x1b[2Koverall progress: 1 out of 1"),
            "{second:?}"
        );
    }
}
