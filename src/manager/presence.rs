//! What operators are told of a task whose node's agent is away. The replicated state keeps
//! each task's last reported status; once the leader's liveness loop has marked the task's
//! node Down, nobody knows whether the task still runs (a crashed or restarting daemon leaves
//! its processes running), so the Control API shows the task as unknown instead of repeating
//! its last report, and `service ls` does not count it.
//!
//! ```text
//!  replicated state: task.status (last report) ──┐
//!                    node.state (liveness loop) ─┴─► unknown(task, node) ─► TaskView ─► Control API
//! ```
//!
//! A join at read time: nothing is written per task when a node goes down, and no scheduling
//! or orchestration decision reads it. Every manager computes the same view from the same
//! committed state, so every client sees the same truth.

use crate::store::model::{Node, NodeState, State};
use crate::store::service::{Task, TaskState};
use crate::util::parse_rfc3339;

pub use crate::api::view::{AGENT_AWAY, NODE_DOWN, TaskView, Unknown};

/// The view of `task` in `state`: the task, and whether its node's agent is away.
pub fn view(state: &State, task: &Task) -> TaskView {
    TaskView {
        unknown: unknown(task, state.nodes.get(&task.node_id)),
        task: task.clone(),
    }
}

/// Whether, and since when, `task`'s state is unknown, given its node (`None`: not in the
/// state). Unknown: the node is Down and the task's last status says an agent has it (from
/// Assigned to Running), or the orchestrator ended it as orphaned when the node went down (it
/// does so at once; the process may still run). A removed or departed node's tasks are not
/// unknown: that node is not coming back to report them.
pub fn unknown(task: &Task, node: Option<&Node>) -> Option<Unknown> {
    let node = node.filter(|n| n.id == task.node_id && !task.node_id.is_empty())?;
    let with_agent = (TaskState::Assigned..=TaskState::Running).contains(&task.status.state);
    let (held, reason) = match node.state {
        NodeState::Down => (
            with_agent
                || (task.status.state == TaskState::Orphaned
                    && orphaned_since(task, &node.updated_at)),
            NODE_DOWN,
        ),
        // A node whose session ended is Unknown until it is back or Down; a node that never
        // had a session holds no task.
        NodeState::Unknown => (with_agent, AGENT_AWAY),
        NodeState::Ready | NodeState::Disconnected => (false, ""),
    };
    held.then(|| Unknown {
        since: node.updated_at.clone(),
        reason: reason.into(),
    })
}

/// Whether an orphaned task was orphaned at or after `down_at` (this time the node went down,
/// not an earlier one: its agent stopped it when it came back). Unreadable times: not unknown.
fn orphaned_since(task: &Task, down_at: &str) -> bool {
    match (
        parse_rfc3339(&task.status.timestamp),
        parse_rfc3339(down_at),
    ) {
        (Some(at), Some(down)) => at >= down,
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::store::fixtures;
    use crate::store::service::{Runtime, TaskStatus};

    const DOWN_AT: &str = "2026-01-01T00:00:10Z";

    fn node(state: NodeState) -> Node {
        Node {
            hostname: "w1".into(),
            state,
            updated_at: DOWN_AT.into(),
            runtimes: vec![Runtime::Exec],
            ..fixtures::node("n1")
        }
    }

    fn task(state: TaskState, at: &str) -> Task {
        Task {
            status: TaskStatus {
                timestamp: at.into(),
                ..fixtures::task_status(state)
            },
            created_at: "2026-01-01T00:00:00Z".into(),
            ..fixtures::task()
        }
    }

    const BEFORE: &str = "2026-01-01T00:00:05Z";

    #[test]
    fn a_running_task_of_a_down_node_is_unknown_since_the_node_went_down() {
        let down = node(NodeState::Down);
        let u = unknown(&task(TaskState::Running, BEFORE), Some(&down)).unwrap();
        assert_eq!(u.since, DOWN_AT);
        assert_eq!(u.reason, "node down");
        // Every state in which an agent holds the task.
        for s in [
            TaskState::Assigned,
            TaskState::Accepted,
            TaskState::Preparing,
            TaskState::Starting,
        ] {
            assert!(unknown(&task(s, BEFORE), Some(&down)).is_some(), "{s:?}");
        }
    }

    #[test]
    fn a_running_task_of_a_node_whose_agent_went_away_is_unknown_before_down() {
        let away = node(NodeState::Unknown);
        let u = unknown(&task(TaskState::Running, BEFORE), Some(&away)).unwrap();
        assert_eq!(u.reason, "agent away");
        assert_eq!(u.since, DOWN_AT);
        // Ended tasks stay as they are.
        assert_eq!(
            unknown(&task(TaskState::Complete, BEFORE), Some(&away)),
            None
        );
    }

    #[test]
    fn the_same_task_of_a_live_node_is_what_it_reported() {
        for state in [NodeState::Ready, NodeState::Disconnected] {
            let n = node(state);
            assert_eq!(
                unknown(&task(TaskState::Running, BEFORE), Some(&n)),
                None,
                "{state:?}"
            );
        }
    }

    #[test]
    fn ended_and_unplaced_tasks_stay_as_they_are() {
        let down = node(NodeState::Down);
        for s in [
            TaskState::New,
            TaskState::Pending,
            TaskState::Complete,
            TaskState::Shutdown,
            TaskState::Failed,
            TaskState::Rejected,
        ] {
            assert_eq!(unknown(&task(s, BEFORE), Some(&down)), None, "{s:?}");
        }
        // A task placed on no node, or on another node than the one given.
        let mut t = task(TaskState::Running, BEFORE);
        t.node_id = String::new();
        assert_eq!(unknown(&t, Some(&down)), None);
        t.node_id = "n2".into();
        assert_eq!(unknown(&t, Some(&down)), None);
        // A node removed from the swarm is not coming back to report.
        assert_eq!(unknown(&task(TaskState::Running, BEFORE), None), None);
    }

    #[test]
    fn orphaned_when_the_node_went_down_is_unknown_but_an_older_orphan_is_not() {
        let down = node(NodeState::Down);
        // The orchestrator orphans a down node's tasks at once, in the same second or later.
        for at in [DOWN_AT, "2026-01-01T00:00:11Z"] {
            let u = unknown(&task(TaskState::Orphaned, at), Some(&down));
            assert_eq!(u.map(|u| u.since), Some(DOWN_AT.to_string()), "{at}");
        }
        // Orphaned in an earlier outage: the agent stopped it when it came back.
        assert_eq!(
            unknown(&task(TaskState::Orphaned, BEFORE), Some(&down)),
            None
        );
        assert_eq!(
            unknown(&task(TaskState::Orphaned, "garbage"), Some(&down)),
            None
        );
        // Orphaned on a node that is Ready again: what it says.
        let ready = node(NodeState::Ready);
        assert_eq!(
            unknown(&task(TaskState::Orphaned, DOWN_AT), Some(&ready)),
            None
        );
    }

    #[test]
    fn views_join_the_state_and_count_only_known_running_tasks() {
        let mut state = State::default();
        state.nodes.insert("n1".into(), node(NodeState::Down));
        let t = task(TaskState::Running, BEFORE);
        let v = view(&state, &t);
        assert!(v.unknown.is_some());
        assert!(!v.known_running());
        state.nodes.insert("n1".into(), node(NodeState::Ready));
        let v = view(&state, &t);
        assert_eq!(v.unknown, None);
        assert!(v.known_running());
    }

    #[test]
    fn a_view_is_the_task_json_plus_unknown_and_reads_back_as_either() {
        let mut state = State::default();
        state.nodes.insert("n1".into(), node(NodeState::Down));
        let t = task(TaskState::Running, BEFORE);
        let json = serde_json::to_string(&view(&state, &t)).unwrap();
        let back: TaskView = serde_json::from_str(&json).unwrap();
        assert_eq!(back.task, t);
        assert_eq!(back.unknown.unwrap().reason, "node down");
        // A client that knows only tasks still reads it.
        let old: Task = serde_json::from_str(&json).unwrap();
        assert_eq!(old, t);
        // A known task carries no `unknown` key; a task's JSON reads as a view.
        let known = serde_json::to_string(&TaskView::from(t.clone())).unwrap();
        assert!(!known.contains("unknown"), "{known}");
        let v: TaskView = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!(v, TaskView::from(t));
    }
}
