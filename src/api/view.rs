//! What the Control API sends of a task: the stored task and, while its node's agent is away,
//! why its state is unknown. The managers compute it ([`crate::manager::presence`]); the CLI
//! reads it. Serialized as the task's own fields plus `unknown`, so a client that only knows
//! a task still reads it.

use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Serialize};

use crate::store::service::{DesiredState, Mode, Task, TaskState};

/// What `service ps` says after "Unknown" for a task of a node marked Down.
pub const NODE_DOWN: &str = "node down";
/// What `service ps` says after "Unknown" for a task of a node whose agent closed its task
/// session and has not come back yet (not Down yet: its tasks are kept for it).
pub const AGENT_AWAY: &str = "agent away";

/// Why the manager cannot vouch for a task's last reported state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unknown {
    /// RFC 3339 time since when: the node's last change of state (when it was marked Down).
    pub since: String,
    /// Why, for operators ([`NODE_DOWN`]).
    pub reason: String,
}

/// A task as the Control API shows it: the stored task and, while its node's agent is away,
/// why its state is unknown. Serialized as the task's own fields plus `unknown` when set, so a
/// client that only knows [`Task`] still reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// The task as stored.
    #[serde(flatten)]
    pub task: Task,
    /// Set when the task's node is away: its last reported state may no longer hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown: Option<Unknown>,
}

impl TaskView {
    /// Whether the task is known to run: reported Running by an agent that is not away.
    pub fn known_running(&self) -> bool {
        self.task.status.state == TaskState::Running && self.unknown.is_none()
    }
}

/// `service ls`'s REPLICAS of a service: its tasks known to run (desired Running, reported
/// Running by an agent that is not away) over those wanted (the replicas, or for a global
/// service its tasks desired Running). One rule for the managers' summary and the CLI.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replicas {
    /// Tasks known to run.
    pub running: u64,
    /// Tasks wanted.
    pub desired: u64,
}

impl Replicas {
    /// Counts a service's tasks, each as (desired state, known to run).
    pub fn count(mode: &Mode, tasks: impl IntoIterator<Item = (DesiredState, bool)>) -> Self {
        let mut r = Replicas::default();
        for (desired, known_running) in tasks {
            if desired == DesiredState::Running {
                r.desired += 1;
                r.running += u64::from(known_running);
            }
        }
        if let Mode::Replicated { replicas } = mode {
            r.desired = *replicas;
        }
        r
    }

    /// From views of a service's tasks.
    pub fn of(mode: &Mode, tasks: &[TaskView]) -> Self {
        Replicas::count(mode, tasks.iter().map(|t| (t.desired, t.known_running())))
    }
}

impl std::fmt::Display for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.running, self.desired)
    }
}

/// A view is read as its task (`view.status`, `view.desired`): only `unknown` is added.
impl Deref for TaskView {
    type Target = Task;
    fn deref(&self) -> &Task {
        &self.task
    }
}

impl DerefMut for TaskView {
    fn deref_mut(&mut self) -> &mut Task {
        &mut self.task
    }
}

impl From<Task> for TaskView {
    /// A view with nothing unknown (tests, and tasks of no node).
    fn from(task: Task) -> TaskView {
        TaskView {
            task,
            unknown: None,
        }
    }
}
