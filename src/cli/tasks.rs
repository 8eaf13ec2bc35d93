//! Tasks as `service ps` and `node ps` print them, laid out like Docker's:
//!
//! ```text
//! ID            NAME        IMAGE        NODE  DESIRED STATE  CURRENT STATE           ERROR
//! 8xrx1wgqa1oc  web.1       nginx:1.25   w1    Running        Running 5 minutes ago
//! k0bfu3ybm6ln   \_ web.1   nginx:1.24   w1    Shutdown       Shutdown 5 minutes ago
//! ```
//!
//! Tasks are grouped by slot (global services: by node), newest first; older tasks of a slot
//! are its history, indented with ` \_ `. A task whose node the managers have marked Down
//! shows `Unknown 12 seconds ago (node down)`: the managers send that with the task (see
//! `manager::presence`), since its last report may no longer hold.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::output::Table;
use crate::api::view::TaskView;
use crate::store::service::{DesiredState, Runtime, Service, Task, TaskSpec, TaskState};
use crate::util::parse_rfc3339;

/// Docker shows 12 characters of an ID.
pub(super) fn short_id(id: &str) -> &str {
    match id.char_indices().nth(12) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

/// Truncates to `max` characters with an ellipsis, as Docker's tables do.
pub(super) fn ellipsis(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut s: String = text.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
}

/// What the IMAGE column shows: the image, or for an exec task its command.
pub(super) fn image_of(spec: &TaskSpec, trunc: bool) -> String {
    match spec.runtime {
        Runtime::Docker => {
            // Docker hides the digest a pinned image carries.
            let image = spec.image.split('@').next().unwrap_or_default();
            image.to_string()
        }
        Runtime::Exec => {
            let cmd = spec.command.join(" ");
            if trunc { ellipsis(&cmd, 30) } else { cmd }
        }
    }
}

/// `Running`, `Shutdown`, `Remove`.
pub(super) fn desired_text(d: DesiredState) -> &'static str {
    match d {
        DesiredState::Running => "Running",
        DesiredState::Shutdown => "Shutdown",
        DesiredState::Remove => "Remove",
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Go's `units.HumanDuration`, which Docker uses for ages.
pub(super) fn human_duration(d: Duration) -> String {
    let seconds = d.as_secs();
    let minutes = seconds / 60;
    let hours = (d.as_secs_f64() / 3600.0 + 0.5) as u64;
    if seconds < 1 {
        "Less than a second".into()
    } else if seconds == 1 {
        "1 second".into()
    } else if seconds < 60 {
        format!("{seconds} seconds")
    } else if minutes == 1 {
        "About a minute".into()
    } else if minutes < 60 {
        format!("{minutes} minutes")
    } else if hours == 1 {
        "About an hour".into()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", seconds / 3600 / 24 / 365)
    }
}

/// `Running 5 seconds ago`: the state, and how long ago the node reported it; for a task
/// whose node is down, `Unknown 12 seconds ago (node down)`: since when nobody knows.
pub(super) fn current_state(task: &TaskView, now: OffsetDateTime) -> String {
    if let Some(u) = &task.unknown {
        return match ago(&u.since, now) {
            Some(age) => format!("Unknown {age} ({})", u.reason),
            None => format!("Unknown ({})", u.reason),
        };
    }
    let state = capitalised(task.status.state.as_str());
    match ago(&task.status.timestamp, now) {
        Some(age) => format!("{state} {age}"),
        None => state,
    }
}

/// `5 seconds ago`, for an RFC 3339 time; `None` if it does not parse.
fn ago(at: &str, now: OffsetDateTime) -> Option<String> {
    let at = parse_rfc3339(at)?;
    let age = (now - at).max(time::Duration::ZERO);
    let age = Duration::try_from(age).unwrap_or_default();
    Some(format!("{} ago", human_duration(age).to_lowercase()))
}

/// The ERROR column: the task's error, or why a pending task waits.
pub(super) fn error_text(task: &Task) -> &str {
    if !task.status.err.is_empty() {
        &task.status.err
    } else if task.status.state == TaskState::Pending {
        &task.status.message
    } else {
        ""
    }
}

/// One printed task.
#[derive(Debug)]
pub(super) struct TaskLine<'a> {
    pub task: &'a TaskView,
    /// `web.1`, or ` \_ web.1` for history.
    pub name: String,
    pub node: String,
}

/// The order of `service ps`: by service, then slot (global: node), newest task first.
pub(super) fn lines<'a>(
    tasks: &'a [TaskView],
    hostnames: &HashMap<String, String>,
) -> Vec<TaskLine<'a>> {
    let host = |id: &str| -> String {
        if id.is_empty() {
            String::new()
        } else {
            hostnames
                .get(id)
                .cloned()
                .unwrap_or_else(|| short_id(id).to_string())
        }
    };
    // (service name, slot, node hostname) → tasks.
    let mut groups: BTreeMap<(String, u64, String), Vec<&TaskView>> = BTreeMap::new();
    for t in tasks {
        let node_key = if t.slot == 0 {
            host(&t.node_id)
        } else {
            String::new()
        };
        groups
            .entry((t.service_name.clone(), t.slot, node_key))
            .or_default()
            .push(t);
    }
    let mut out = Vec::new();
    for (_, mut group) in groups {
        // The task meant to run first, then newest first: `attempt` orders replacements
        // made within the same second, which `created_at` cannot.
        group.sort_by(|a, b| {
            let current = |t: &TaskView| t.desired == DesiredState::Running;
            current(b)
                .cmp(&current(a))
                .then_with(|| b.attempt.cmp(&a.attempt))
                .then_with(|| b.created_at.cmp(&a.created_at))
                .then_with(|| b.status.timestamp.cmp(&a.status.timestamp))
                .then_with(|| a.id.cmp(&b.id))
        });
        for (i, t) in group.into_iter().enumerate() {
            let name = if t.slot > 0 {
                format!("{}.{}", t.service_name, t.slot)
            } else {
                format!("{}.{}", t.service_name, short_id(&t.node_id))
            };
            out.push(TaskLine {
                task: t,
                name: if i == 0 { name } else { format!(" \\_ {name}") },
                node: host(&t.node_id),
            });
        }
    }
    out
}

/// The `ps` table.
pub(super) fn table(lines: &[TaskLine<'_>], now: OffsetDateTime, no_trunc: bool) -> String {
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "IMAGE",
        "NODE",
        "DESIRED STATE",
        "CURRENT STATE",
        "ERROR",
    ]);
    for l in lines {
        let task = l.task;
        let err = error_text(task);
        let err = if err.is_empty() {
            String::new()
        } else if no_trunc {
            format!("{err:?}")
        } else {
            format!("{:?}", ellipsis(err, 30))
        };
        t.row(vec![
            if no_trunc {
                task.id.clone()
            } else {
                short_id(&task.id).to_string()
            },
            l.name.clone(),
            image_of(&task.spec, !no_trunc),
            l.node.clone(),
            desired_text(task.desired).into(),
            current_state(task, now),
            err,
        ]);
    }
    t.render()
}

/// One line of `ps --format json`: Docker's keys.
pub(super) fn json_of(l: &TaskLine<'_>, now: OffsetDateTime) -> Value {
    let task = l.task;
    json!({
        "ID": task.id,
        "Name": l.name,
        "Image": image_of(&task.spec, false),
        "Node": l.node,
        "DesiredState": desired_text(task.desired),
        "CurrentState": current_state(task, now),
        "Error": error_text(task),
        "Ports": "",
    })
}

/// Parses the daemon's task JSON (an older daemon's tasks carry no `unknown`: read as known).
pub(super) fn parse_tasks(texts: &[String]) -> anyhow::Result<Vec<TaskView>> {
    texts
        .iter()
        .map(|t| serde_json::from_str(t).context("the daemon sent a task this CLI cannot read"))
        .collect()
}

/// Parses the daemon's service JSON.
pub(super) fn parse_service(text: &str) -> anyhow::Result<Service> {
    serde_json::from_str(text).context("the daemon sent a service this CLI cannot read")
}

/// Node ID → host name; empty if the nodes cannot be listed (IDs are shown instead).
pub(super) async fn hostnames(api: &mut super::client::Api) -> HashMap<String, String> {
    match api.node_list(crate::api::v1::Empty {}).await {
        Ok(resp) => resp
            .into_inner()
            .nodes
            .into_iter()
            .map(|n| (n.id, n.hostname))
            .collect(),
        Err(_) => HashMap::new(),
    }
}

/// An enum as its serde name (`OnFailure` → `on-failure`), as `inspect` shows it.
pub(super) fn lower<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::fixtures;
    use crate::store::service::TaskStatus;

    pub(in crate::cli) fn task(
        id: &str,
        svc: &str,
        slot: u64,
        node: &str,
        state: TaskState,
    ) -> TaskView {
        TaskView::from(Task {
            id: id.into(),
            service_id: format!("{svc}-id"),
            service_name: svc.into(),
            slot,
            node_id: node.into(),
            status: TaskStatus {
                timestamp: "2026-01-01T00:00:00Z".into(),
                ..fixtures::task_status(state)
            },
            created_at: "2026-01-01T00:00:00Z".into(),
            ..fixtures::task()
        })
    }

    fn now() -> OffsetDateTime {
        parse_rfc3339("2026-01-01T00:00:05Z").unwrap()
    }

    #[test]
    fn human_durations_like_go() {
        let s = Duration::from_secs;
        assert_eq!(
            human_duration(Duration::from_millis(300)),
            "Less than a second"
        );
        assert_eq!(human_duration(s(1)), "1 second");
        assert_eq!(human_duration(s(59)), "59 seconds");
        assert_eq!(human_duration(s(60)), "About a minute");
        assert_eq!(human_duration(s(119)), "About a minute");
        assert_eq!(human_duration(s(120)), "2 minutes");
        assert_eq!(human_duration(s(3599)), "59 minutes");
        assert_eq!(human_duration(s(3600)), "About an hour");
        assert_eq!(human_duration(s(5 * 3600)), "5 hours");
        assert_eq!(human_duration(s(3 * 86_400)), "3 days");
        assert_eq!(human_duration(s(21 * 86_400)), "3 weeks");
        assert_eq!(human_duration(s(90 * 86_400)), "3 months");
        assert_eq!(human_duration(s(800 * 86_400)), "2 years");
    }

    #[test]
    fn ps_groups_history_under_the_newest_task() {
        let mut old = task("oldtask00000000000", "web", 1, "n1id", TaskState::Shutdown);
        old.desired = DesiredState::Shutdown;
        old.status.err = "task: non-zero exit (1): something went badly wrong".into();
        old.status.state = TaskState::Failed;
        let mut new = task("newtask00000000000", "web", 1, "n1id", TaskState::Running);
        new.created_at = "2026-01-01T00:00:03Z".into();
        new.status.timestamp = "2026-01-01T00:00:04Z".into();
        let mut pending = task("pend0000000000000", "web", 2, "", TaskState::Pending);
        pending.status.message = "no suitable node (1 node not available)".into();
        let tasks = vec![pending, old, new];
        let hosts = HashMap::from([("n1id".to_string(), "w1".to_string())]);
        let ls = lines(&tasks, &hosts);
        assert_eq!(
            table(&ls, now(), false),
            "ID            NAME       IMAGE            NODE  DESIRED STATE  CURRENT STATE          ERROR\n\
             newtask00000  web.1      /bin/sleep 1000  w1    Running        Running 1 second ago\n\
             oldtask00000   \\_ web.1  /bin/sleep 1000  w1    Shutdown       Failed 5 seconds ago   \"task: non-zero exit (1): some…\"\n\
             pend00000000  web.2      /bin/sleep 1000        Running        Pending 5 seconds ago  \"no suitable node (1 node not …\"\n"
        );
        let j = json_of(&ls[1], now());
        assert_eq!(j["Name"], " \\_ web.1");
        assert_eq!(j["ID"], "oldtask00000000000");
        assert_eq!(j["CurrentState"], "Failed 5 seconds ago");
        assert_eq!(j["DesiredState"], "Shutdown");
        assert_eq!(j["Node"], "w1");
    }

    #[test]
    fn global_tasks_are_named_by_node() {
        let tasks = vec![
            task("b", "mon", 0, "nodeB0000000000000", TaskState::Running),
            task("a", "mon", 0, "nodeA0000000000000", TaskState::Running),
        ];
        let hosts = HashMap::from([
            ("nodeA0000000000000".to_string(), "w2".to_string()),
            ("nodeB0000000000000".to_string(), "w1".to_string()),
        ]);
        let ls = lines(&tasks, &hosts);
        assert_eq!(ls[0].name, "mon.nodeB0000000");
        assert_eq!(ls[0].node, "w1");
        assert_eq!(ls[1].node, "w2");
    }

    #[test]
    fn images_and_ids() {
        let mut t = task("x", "s", 1, "", TaskState::New);
        t.spec.runtime = Runtime::Docker;
        t.spec.image = "redis:7@sha256:abcd".into();
        assert_eq!(image_of(&t.spec, true), "redis:7");
        t.spec.runtime = Runtime::Exec;
        t.spec.command = vec![
            "/usr/bin/python3".into(),
            "-m".into(),
            "http.server".into(),
            "8080".into(),
        ];
        assert_eq!(image_of(&t.spec, true), "/usr/bin/python3 -m http.serv…");
        assert_eq!(image_of(&t.spec, true).chars().count(), 30);
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
    }

    /// The unknown mark the managers send with a task of a down node.
    pub(in crate::cli) fn unknown_since(since: &str) -> crate::api::view::Unknown {
        crate::api::view::Unknown {
            since: since.into(),
            reason: crate::api::view::NODE_DOWN.into(),
        }
    }

    #[test]
    fn a_task_of_a_down_node_shows_unknown_since_the_node_went_down() {
        let mut t = task("awaytask000000000", "web", 1, "n1id", TaskState::Running);
        t.unknown = Some(unknown_since("2026-01-01T00:00:02Z"));
        let mut orphan = task("orphan00000000000", "web", 2, "n1id", TaskState::Orphaned);
        orphan.desired = DesiredState::Shutdown;
        orphan.unknown = Some(unknown_since("2026-01-01T00:00:02Z"));
        let tasks = vec![t, orphan];
        let hosts = HashMap::from([("n1id".to_string(), "w1".to_string())]);
        let ls = lines(&tasks, &hosts);
        assert_eq!(
            table(&ls, now(), false),
            "ID            NAME   IMAGE            NODE  DESIRED STATE  CURRENT STATE                      ERROR\n\
             awaytask0000  web.1  /bin/sleep 1000  w1    Running        Unknown 3 seconds ago (node down)\n\
             orphan000000  web.2  /bin/sleep 1000  w1    Shutdown       Unknown 3 seconds ago (node down)\n"
        );
        assert_eq!(
            json_of(&ls[0], now())["CurrentState"],
            "Unknown 3 seconds ago (node down)"
        );
        let mut bad = task("x", "web", 1, "n1id", TaskState::Running);
        bad.unknown = Some(unknown_since("not a time"));
        assert_eq!(current_state(&bad, now()), "Unknown (node down)");
    }
}
