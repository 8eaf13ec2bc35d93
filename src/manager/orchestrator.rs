//! The orchestrator: turns services into tasks. A pure function of the replicated state and
//! the time; the leader's shell runs it and commits the commands it returns.
//!
//! ```text
//!  sweep: tasks of removed services → Remove; tasks on lost nodes → Orphaned
//!    │
//!  per service: ended tasks → desired Shutdown; drained / scaled-away tasks → stopped
//!    │          update monitor: failure → pause or roll back
//!    │          per slot (replicated) or node (global): keep, restart per policy, or replace
//!    │          rolling update: the next batch of stale slots
//!    ▼
//!  PutService (update status) + one PutTasks + one RemoveTasks
//! ```
//!
//! Nothing is remembered between calls: every decision is derived from the tasks in the state
//! (their versions, states, timestamps and attempts) and the service's update status, so a new
//! leader picks up where the old one stopped.

use std::collections::{BTreeMap, BTreeSet};

use time::{Duration, OffsetDateTime};

use crate::manager::scheduler::{Placement, available, constraints_hold, not_before_passed, suits};
use crate::manager::working::Working;
use crate::store::model::{Availability, Command, NodeState, State};
use crate::store::service::{
    DesiredState, FailureAction, Mode, RestartCondition, Service, Task, TaskState, TaskStatus,
    UpdateOrder, UpdatePhase, UpdateStatus,
};
use crate::util::{parse_rfc3339, rfc3339};

/// The status message of a global task waiting for room on its node.
const NO_ROOM: &str = "insufficient resources on the node";

/// Ended tasks kept per slot (or per node, for global services) as `service ps` history.
pub const HISTORY: usize = 5;

/// Everything the orchestrator decides at `now`. `new_id` makes task IDs (the shell passes
/// `skep_pki::new_id`). Commit the result in order, ideally as one `Command::Batch`: a rollback
/// writes the service and its first new tasks together.
pub fn reconcile(
    state: &State,
    now: OffsetDateTime,
    new_id: &mut dyn FnMut() -> String,
) -> Vec<Command> {
    let mut round = Round {
        state,
        now,
        now_s: rfc3339(now),
        tasks: Working::new(&state.tasks),
        removed: BTreeSet::new(),
        services: Vec::new(),
        placement: Placement::new(state),
    };
    round.sweep();
    for svc in state.services.values() {
        round.service(svc, new_id);
    }
    round.finish()
}

/// Whether a round at a later time could decide differently from one now on the same state:
/// a task waits out its restart delay, or a service is in a rolling update or rollback (its
/// delay between batches and its monitor period run on the clock). When neither holds, a round
/// is a function of the state alone, and the leader need not run one until the state changes.
pub fn awaits_clock(state: &State, now: OffsetDateTime) -> bool {
    let updating = state.services.values().any(|s| {
        s.update.as_ref().is_some_and(|u| {
            matches!(
                u.phase,
                UpdatePhase::Updating | UpdatePhase::RollbackStarted
            )
        })
    });
    updating
        || state.tasks.values().any(|t| {
            !t.not_before.is_empty() && !t.status.state.is_terminal() && !not_before_passed(t, now)
        })
}

/// How a replacement task starts.
#[derive(Clone, Debug)]
struct Start {
    not_before: String,
    attempt: u64,
}

/// A slot (replicated) or node (global) whose live task runs an older version.
struct Stale {
    slot: u64,
    node: String,
    old: Vec<String>,
    start: Start,
    running: bool,
}

/// One reconciliation: a working copy of the tasks (copy-on-write), compared with the state at
/// the end.
struct Round<'a> {
    state: &'a State,
    now: OffsetDateTime,
    now_s: String,
    tasks: Working<'a>,
    removed: BTreeSet<String>,
    services: Vec<Service>,
    placement: Placement<'a>,
}

fn live(t: &Task) -> bool {
    t.desired == DesiredState::Running && !t.status.state.is_terminal()
}

/// Orders a slot's tasks from oldest to newest.
fn age(t: &Task) -> (u64, &str, u64, &str, &str) {
    (
        t.spec_version,
        &t.created_at,
        t.attempt,
        &t.status.timestamp,
        &t.id,
    )
}

fn after(t: OffsetDateTime, ms: u64) -> Option<OffsetDateTime> {
    t.checked_add(Duration::milliseconds(i64::try_from(ms).ok()?))
}

fn status(state: TaskState, message: &str, at: &str) -> TaskStatus {
    TaskStatus {
        state,
        message: message.into(),
        err: String::new(),
        exit_code: None,
        timestamp: at.into(),
        held: Default::default(),
    }
}

impl Round<'_> {
    /// Why a task's node can no longer run it, if it cannot.
    fn lost(&self, node_id: &str) -> Option<&'static str> {
        if node_id.is_empty() {
            return None;
        }
        match self.state.nodes.get(node_id).map(|n| n.state) {
            None => Some("node was removed from the swarm"),
            Some(NodeState::Down) => Some("node is down"),
            Some(NodeState::Disconnected) => Some("node left the swarm"),
            Some(NodeState::Ready | NodeState::Unknown) => None,
        }
    }

    /// Whether the task's node is drained, no longer satisfies the task's constraints, or is
    /// no longer entitled to the task's secrets (labels or the policy changed): the task is
    /// moved, which is no failure of the task. A runtime missing from the node's report does
    /// not move running tasks: a report may be incomplete.
    fn evicted(&self, t: &Task) -> bool {
        self.state.nodes.get(&t.node_id).is_some_and(|n| {
            n.availability == Availability::Drain
                || !constraints_hold(n, &t.spec)
                || !self.placement.entitled(n, t)
        })
    }

    fn set_status(&mut self, id: &str, state: TaskState, message: &str) {
        let at = self.now_s.clone();
        if let Some(t) = self.tasks.get_mut(id) {
            t.status = status(state, message, &at);
        }
    }

    /// Asks a task to stop. A task no agent has yet stops at once.
    fn stop(&mut self, id: &str) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        if t.desired == DesiredState::Running {
            t.desired = DesiredState::Shutdown;
        }
        if t.status.state <= TaskState::Pending {
            self.set_status(id, TaskState::Shutdown, "shut down before it started");
        }
    }

    fn remove(&mut self, id: &str) {
        self.tasks.remove(id);
        self.removed.insert(id.to_string());
    }

    /// Tasks of removed services, tasks on lost nodes, and unstarted tasks that are not wanted.
    fn sweep(&mut self) {
        // Only tasks one of the rules below applies to (the others are left as they are; no
        // copy of every ID per round).
        let ids: Vec<String> = self
            .tasks
            .values()
            .filter(|t| {
                (!t.status.state.is_terminal() && self.lost(&t.node_id).is_some())
                    || !self.state.services.contains_key(&t.service_id)
                    || (t.desired != DesiredState::Running && t.status.state <= TaskState::Pending)
                    || (t.desired == DesiredState::Remove && t.status.state.is_terminal())
            })
            .map(|t| t.id.clone())
            .collect();
        for id in ids {
            let Some(t) = self.tasks.get(&id) else {
                continue;
            };
            let orphan = (!t.status.state.is_terminal())
                .then(|| self.lost(&t.node_id))
                .flatten();
            let service_gone = !self.state.services.contains_key(&t.service_id);
            if let Some(reason) = orphan {
                self.set_status(&id, TaskState::Orphaned, reason);
            }
            if let Some(t) = self.tasks.get_mut(&id)
                && service_gone
            {
                t.desired = DesiredState::Remove;
            }
            let Some(t) = self.tasks.get(&id) else {
                continue;
            };
            if t.desired != DesiredState::Running && t.status.state <= TaskState::Pending {
                self.set_status(&id, TaskState::Shutdown, "shut down before it started");
            }
            if let Some(t) = self.tasks.get(&id)
                && t.desired == DesiredState::Remove
                && t.status.state.is_terminal()
            {
                self.remove(&id);
            }
        }
    }

    /// Whether and how a slot whose newest task is `prev` gets a new task.
    fn decide(&self, prev: Option<&Task>, version: u64) -> Option<Start> {
        let fresh = Start {
            not_before: String::new(),
            attempt: 0,
        };
        let Some(p) = prev else {
            return Some(fresh);
        };
        if p.spec_version != version {
            // A new spec (update, --force, rollback) gives the slot a fresh start.
            return Some(fresh);
        }
        if p.status.state == TaskState::Shutdown || self.evicted(p) {
            // Stopped on purpose (scale, drain, update): replaced at once, no restart counted.
            return Some(Start {
                not_before: String::new(),
                attempt: p.attempt,
            });
        }
        let policy = &p.spec.restart;
        let restart = match policy.condition {
            RestartCondition::None => false,
            RestartCondition::OnFailure => p.status.state != TaskState::Complete,
            RestartCondition::Any => true,
        };
        if !restart || (policy.max_attempts > 0 && p.attempt >= policy.max_attempts) {
            return None;
        }
        let ended = parse_rfc3339(&p.status.timestamp).unwrap_or(self.now);
        let not_before = match after(ended, policy.delay_ms) {
            Some(t) if t > self.now => {
                // Round up: the delay is a minimum, and times are kept to the second.
                let up = if t.nanosecond() > 0 {
                    t.checked_add(Duration::seconds(1)).unwrap_or(t)
                } else {
                    t
                };
                rfc3339(up)
            }
            _ => String::new(),
        };
        Some(Start {
            not_before,
            attempt: p.attempt + 1,
        })
    }

    fn create(
        &mut self,
        svc: &Service,
        slot: u64,
        node: &str,
        start: Start,
        new_id: &mut dyn FnMut() -> String,
    ) {
        let id = new_id();
        let t = Task {
            id: id.clone(),
            service_id: svc.id.clone(),
            service_name: svc.spec.name.clone(),
            slot,
            node_id: node.to_string(),
            spec: svc.spec.task.clone(),
            spec_version: svc.version,
            desired: DesiredState::Running,
            status: status(TaskState::Pending, "pending task scheduling", &self.now_s),
            created_at: self.now_s.clone(),
            not_before: start.not_before,
            attempt: start.attempt,
            versions: Default::default(),
        };
        self.tasks.insert(id.clone(), t);
        if !node.is_empty() {
            self.promote(&id);
        }
    }

    /// Assigns a global task pinned to its node once its delay is over and it fits there.
    fn promote(&mut self, id: &str) {
        let Some(t) = self.tasks.get(id) else {
            return;
        };
        if t.status.state != TaskState::Pending
            || t.node_id.is_empty()
            || t.desired != DesiredState::Running
            || !not_before_passed(t, self.now)
        {
            return;
        }
        let Some(node) = self.state.nodes.get(&t.node_id) else {
            return;
        };
        if !available(node) {
            return;
        }
        if self.placement.fits_on(node, t) {
            self.set_status(id, TaskState::Assigned, "scheduled");
            if let Some(t) = self.tasks.get(id) {
                self.placement.add(t);
            }
        } else if t.status.message != NO_ROOM
            && let Some(t) = self.tasks.get_mut(id)
        {
            t.status.message = NO_ROOM.into();
        }
    }

    fn service(&mut self, orig: &Service, new_id: &mut dyn FnMut() -> String) {
        let mut svc = orig.clone();
        let global = svc.spec.mode == Mode::Global;
        let replicas = match svc.spec.mode {
            Mode::Replicated { replicas } => replicas,
            Mode::Global => 0,
        };
        let ids: Vec<String> = self
            .tasks
            .values()
            .filter(|t| t.service_id == svc.id && t.desired != DesiredState::Remove)
            .map(|t| t.id.clone())
            .collect();

        // Ended tasks are no longer wanted; tasks out of place are stopped.
        for id in &ids {
            let Some(t) = self.tasks.get(id) else {
                continue;
            };
            if t.desired == DesiredState::Running && t.status.state.is_terminal() {
                if let Some(t) = self.tasks.get_mut(id) {
                    t.desired = DesiredState::Shutdown;
                }
                continue;
            }
            if !live(t) {
                continue;
            }
            let misplaced = if global {
                t.slot != 0
                    || self.state.nodes.get(&t.node_id).is_some_and(|n| {
                        n.availability == Availability::Drain
                            || !constraints_hold(n, &svc.spec.task)
                    })
            } else {
                t.slot == 0 || t.slot > replicas
            };
            if misplaced || self.evicted(t) {
                self.stop(id);
            }
        }

        self.monitor(&mut svc);

        // The groups: slots 1..=replicas, or eligible nodes plus nodes still running a task.
        let mut groups: BTreeMap<(u64, String), Vec<String>> = BTreeMap::new();
        let mut can_create: BTreeSet<(u64, String)> = BTreeSet::new();
        if global {
            for n in self.state.nodes.values() {
                if available(n)
                    && suits(n, &svc.spec.task)
                    && self.placement.service_entitled(n, &svc)
                {
                    groups.insert((0, n.id.clone()), Vec::new());
                    can_create.insert((0, n.id.clone()));
                }
            }
        } else {
            for slot in 1..=replicas {
                groups.insert((slot, String::new()), Vec::new());
                can_create.insert((slot, String::new()));
            }
        }
        for id in &ids {
            let Some(t) = self.tasks.get(id) else {
                continue;
            };
            let key = if global {
                (0, t.node_id.clone())
            } else {
                (t.slot, String::new())
            };
            if global && t.slot == 0 && live(t) {
                groups.entry(key.clone()).or_default();
            }
            if let Some(g) = groups.get_mut(&key) {
                g.push(id.clone());
            }
        }

        let mut stale = Vec::new();
        let mut in_progress = 0usize;
        for ((slot, node), members) in &groups {
            let tasks: Vec<&Task> = members.iter().filter_map(|id| self.tasks.get(id)).collect();
            let mut new: Vec<&Task> = tasks
                .iter()
                .copied()
                .filter(|t| live(t) && t.spec_version == svc.version)
                .collect();
            let old: Vec<String> = tasks
                .iter()
                .filter(|t| live(t) && t.spec_version != svc.version)
                .map(|t| t.id.clone())
                .collect();
            let old_running = tasks.iter().any(|t| {
                live(t) && t.spec_version != svc.version && t.status.state == TaskState::Running
            });
            let stopping = tasks
                .iter()
                .any(|t| t.desired != DesiredState::Running && !t.status.state.is_terminal());
            let newest_ended = tasks
                .iter()
                .copied()
                .filter(|t| t.status.state.is_terminal())
                .max_by(|a, b| age(a).cmp(&age(b)))
                .cloned();
            let creatable = can_create.contains(&(*slot, node.clone()));

            if !new.is_empty() {
                // Keep the most advanced (then newest) task; a slot runs one task.
                new.sort_by(|a, b| (b.status.state, age(b)).cmp(&(a.status.state, age(a))));
                let kept = new[0].id.clone();
                let extra: Vec<String> = new[1..].iter().map(|t| t.id.clone()).collect();
                let kept_running = new[0].status.state == TaskState::Running;
                for id in extra {
                    self.stop(&id);
                }
                if kept_running {
                    // Start-first: the old task goes once its replacement runs.
                    for id in &old {
                        self.stop(id);
                    }
                } else {
                    in_progress += 1;
                }
                self.promote(&kept);
            } else if !old.is_empty() {
                for id in &old {
                    self.promote(id);
                }
                if creatable {
                    let prev = newest_ended
                        .as_ref()
                        .filter(|p| p.spec_version == svc.version);
                    if let Some(start) = self.decide(prev, svc.version) {
                        stale.push(Stale {
                            slot: *slot,
                            node: node.clone(),
                            old,
                            start,
                            running: old_running,
                        });
                    }
                }
            } else if stopping {
                in_progress += 1;
            } else if creatable && let Some(start) = self.decide(newest_ended.as_ref(), svc.version)
            {
                self.create(&svc, *slot, node, start, new_id);
                in_progress += 1;
            }
        }

        self.update(&mut svc, stale, in_progress, new_id);
        self.prune(&svc.id);
        if svc != *orig {
            self.services.push(svc);
        }
    }

    /// The update monitor: a task of the new version that failed within the monitor period
    /// after it was created triggers the failure action.
    fn monitor(&mut self, svc: &mut Service) {
        let Some(status) = svc.update.clone() else {
            return;
        };
        let rolling_back = match status.phase {
            UpdatePhase::Updating => false,
            UpdatePhase::RollbackStarted => true,
            _ => return,
        };
        let cfg = if rolling_back {
            &svc.spec.rollback
        } else {
            &svc.spec.update
        };
        if cfg.failure_action == FailureAction::Continue {
            return;
        }
        let Some(started) = parse_rfc3339(&status.started_at) else {
            return;
        };
        let failed = self
            .tasks
            .values()
            .filter(|t| {
                t.service_id == svc.id
                    && t.spec_version == svc.version
                    && matches!(t.status.state, TaskState::Failed | TaskState::Rejected)
            })
            .find(|t| {
                let created = parse_rfc3339(&t.created_at);
                let ended = parse_rfc3339(&t.status.timestamp);
                match (created, ended) {
                    (Some(c), Some(e)) => {
                        c >= started && after(c, cfg.monitor_ms).is_none_or(|end| e <= end)
                    }
                    _ => false,
                }
            });
        let Some(failed) = failed else {
            return;
        };
        let id = failed.id.clone();
        let now = self.now_s.clone();
        let step = |phase, message: String| UpdateStatus {
            phase,
            started_at: status.started_at.clone(),
            last_step_at: now.clone(),
            message,
        };
        let action = cfg.failure_action;
        if !rolling_back
            && action == FailureAction::Rollback
            && let Some(previous) = svc.previous.take()
        {
            svc.previous = Some(std::mem::replace(&mut svc.spec, previous));
            svc.version += 1;
            svc.updated_at = now.clone();
            svc.update = Some(UpdateStatus {
                phase: UpdatePhase::RollbackStarted,
                started_at: now.clone(),
                last_step_at: now.clone(),
                message: format!(
                    "update rolled back due to failure or early termination of task {id}"
                ),
            });
        } else if rolling_back {
            svc.update = Some(step(
                UpdatePhase::RollbackPaused,
                format!("rollback paused due to failure or early termination of task {id}"),
            ));
        } else {
            svc.update = Some(step(
                UpdatePhase::Paused,
                format!("update paused due to failure or early termination of task {id}"),
            ));
        }
    }

    /// Starts, advances and completes a rolling update.
    fn update(
        &mut self,
        svc: &mut Service,
        mut stale: Vec<Stale>,
        in_progress: usize,
        new_id: &mut dyn FnMut() -> String,
    ) {
        let now = self.now_s.clone();
        if !stale.is_empty() {
            let begin = match &svc.update {
                None => true,
                Some(u) => match u.phase {
                    UpdatePhase::Completed | UpdatePhase::RollbackCompleted => true,
                    // A spec written after the pause is a new update.
                    UpdatePhase::Paused | UpdatePhase::RollbackPaused => {
                        match (
                            parse_rfc3339(&svc.updated_at),
                            parse_rfc3339(&u.last_step_at),
                        ) {
                            (Some(changed), Some(paused)) => changed > paused,
                            _ => false,
                        }
                    }
                    UpdatePhase::Updating | UpdatePhase::RollbackStarted => false,
                },
            };
            if begin {
                svc.update = Some(UpdateStatus {
                    phase: UpdatePhase::Updating,
                    started_at: now.clone(),
                    last_step_at: now.clone(),
                    message: "update in progress".into(),
                });
            }
        }
        let Some(status) = svc.update.clone() else {
            return;
        };
        let rolling_back = match status.phase {
            UpdatePhase::Updating => false,
            UpdatePhase::RollbackStarted => true,
            _ => return,
        };
        let cfg = if rolling_back {
            svc.spec.rollback.clone()
        } else {
            svc.spec.update.clone()
        };
        if in_progress > 0 {
            return;
        }
        let version = svc.version;
        let newest = |since: Option<OffsetDateTime>, pick: fn(&Task) -> &str| {
            self.tasks
                .values()
                .filter(|t| t.service_id == svc.id && t.spec_version == version)
                .filter(|t| {
                    let created = parse_rfc3339(&t.created_at);
                    matches!((created, since), (Some(c), Some(s)) if c >= s)
                })
                .filter_map(|t| parse_rfc3339(pick(t)))
                .max()
        };
        if stale.is_empty() {
            // Done once the last new task has been watched for the monitor period.
            let last = newest(parse_rfc3339(&status.started_at), |t| &t.created_at);
            if last.is_some_and(|c| after(c, cfg.monitor_ms).is_some_and(|end| end > self.now)) {
                return;
            }
            let (phase, message) = if rolling_back {
                (UpdatePhase::RollbackCompleted, "rollback completed")
            } else {
                (UpdatePhase::Completed, "update completed")
            };
            svc.update = Some(UpdateStatus {
                phase,
                started_at: status.started_at,
                last_step_at: now,
                message: message.into(),
            });
            return;
        }
        // The next batch waits `delay` after the last batch's tasks reached their state.
        if cfg.delay_ms > 0 {
            let settled = newest(parse_rfc3339(&status.last_step_at), |t| &t.status.timestamp);
            if settled.is_some_and(|s| after(s, cfg.delay_ms).is_none_or(|end| end > self.now)) {
                return;
            }
        }
        stale.sort_by_key(|s| (s.running, s.slot, s.node.clone()));
        let batch = match usize::try_from(cfg.parallelism) {
            Ok(0) | Err(_) => stale.len(),
            Ok(p) => p.min(stale.len()),
        };
        for s in stale.into_iter().take(batch) {
            match cfg.order {
                UpdateOrder::StartFirst => self.create(svc, s.slot, &s.node, s.start, new_id),
                UpdateOrder::StopFirst => {
                    for id in &s.old {
                        self.stop(id);
                    }
                    let stopped = s.old.iter().all(|id| {
                        self.tasks
                            .get(id)
                            .is_none_or(|t| t.status.state.is_terminal())
                    });
                    if stopped {
                        self.create(svc, s.slot, &s.node, s.start, new_id);
                    }
                }
            }
        }
        if let Some(u) = svc.update.as_mut() {
            u.last_step_at = now;
        }
    }

    /// Keeps the newest [`HISTORY`] ended tasks of each slot (or node) of a service.
    fn prune(&mut self, service_id: &str) {
        let mut slots: BTreeMap<(u64, &str), Vec<&Task>> = BTreeMap::new();
        for t in self.tasks.values() {
            if t.service_id == service_id
                && t.desired != DesiredState::Running
                && t.status.state.is_terminal()
            {
                let node = if t.slot == 0 { t.node_id.as_str() } else { "" };
                slots.entry((t.slot, node)).or_default().push(t);
            }
        }
        let mut drop = Vec::new();
        for ended in slots.values_mut() {
            ended.sort_by(|a, b| age(b).cmp(&age(a)));
            drop.extend(ended.iter().skip(HISTORY).map(|t| t.id.clone()));
        }
        for id in drop {
            self.remove(&id);
        }
    }

    fn finish(self) -> Vec<Command> {
        let mut out: Vec<Command> = self
            .services
            .into_iter()
            .map(|s| Command::PutService(Box::new(s)))
            .collect();
        let state = self.state;
        let removed: Vec<String> = self
            .removed
            .into_iter()
            .filter(|id| state.tasks.contains_key(id))
            .collect();
        let puts = self.tasks.into_puts();
        if !puts.is_empty() {
            out.push(Command::PutTasks(puts));
        }
        if !removed.is_empty() {
            out.push(Command::RemoveTasks(removed));
        }
        out
    }
}

#[cfg(test)]
#[path = "orchestrator_tests.rs"]
mod tests;
