//! What the Control API sends of a task: the stored task and, while its node's agent is away,
//! why its state is unknown. The managers compute it ([`crate::manager::presence`]); the CLI
//! reads it. Serialized as the task's own fields plus `unknown`, so a client that only knows
//! a task still reads it.

use std::ops::{Deref, DerefMut};

use serde::{Deserialize, Serialize};

use crate::store::service::{Task, TaskState};

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
