//! The tasks of a task session's message (`Assignments`) as they travel: each task as JSON,
//! and each distinct spec once. A node's tasks are mostly replicas of a few services, each with
//! its own copy of the same spec (about half of a task's JSON), so a task names its spec by its
//! place in the message's `specs_json` instead of carrying it.
//!
//! ```text
//!  Assignments { specs_json: [S0, S1], tasks_json: [{..., "spec": 0}, {..., "spec": 1}, ...] }
//!  Assignments { specs_json: [],       tasks_json: [{..., "spec": {...}}, ...] }   (whole tasks)
//! ```
//!
//! A node asks for the first form (`SessionRequest.shared_specs`); a manager that does not
//! know it sends the second, which every agent still reads. Each message stands alone: a spec
//! index refers to that message's list only.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::store::service::{DesiredState, Task, TaskSpec, TaskStatus};

/// The most one session message carries (`net::serve::DISPATCHER_RESPONSE_BYTES`), and the
/// most its tasks may make once each has its spec again: a message of whole tasks could hold
/// no more, so shared specs never let a message grow in the node's memory beyond that.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Longest part of a parse error kept in [`AssignmentError`] (it may quote the input).
const MAX_ERROR_BYTES: usize = 160;

/// A task of a message that could not be read.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum AssignmentError {
    /// A spec of the message is not a task spec.
    #[error("malformed spec {index} in the dispatcher's message: {reason}")]
    Spec {
        /// Its place in `specs_json`.
        index: usize,
        /// The parser's error, cut short.
        reason: String,
    },
    /// A task is not a task.
    #[error("malformed task from the dispatcher: {reason}")]
    Task {
        /// The parser's error, cut short.
        reason: String,
    },
    /// The message's tasks with their specs filled in would pass [`MAX_MESSAGE_BYTES`].
    #[error(
        "task {task_id} and those after it are refused: with their specs the dispatcher's \
         message would pass {limit} bytes"
    )]
    TooLarge {
        /// The first task refused, its ID cut short.
        task_id: String,
        /// [`MAX_MESSAGE_BYTES`].
        limit: usize,
    },
    /// A task names a spec the message does not hold (or one that was malformed).
    #[error("task {task_id} names spec {index}, but the dispatcher's message has {count} readable")]
    NoSpec {
        /// The task's ID, cut short.
        task_id: String,
        /// The spec index it named.
        index: u32,
        /// How many specs the message held.
        count: usize,
    },
}

/// A task as it travels in the first form: every field of [`Task`] but its spec, which is an
/// index into the message's specs.
#[derive(Serialize, Deserialize)]
struct Shared<'a> {
    id: Cow<'a, str>,
    service_id: Cow<'a, str>,
    service_name: Cow<'a, str>,
    slot: u64,
    node_id: Cow<'a, str>,
    spec: u32,
    spec_version: u64,
    desired: DesiredState,
    status: Cow<'a, TaskStatus>,
    created_at: Cow<'a, str>,
    not_before: Cow<'a, str>,
    attempt: u64,
    #[serde(default)]
    versions: Cow<'a, BTreeMap<String, u64>>,
}

impl<'a> Shared<'a> {
    /// `t` naming spec `spec` (every field listed, so a field added to [`Task`] is a compile
    /// error here, not a field the nodes silently lose).
    fn of(t: &'a Task, spec: u32) -> Self {
        let Task {
            id,
            service_id,
            service_name,
            slot,
            node_id,
            spec: _,
            spec_version,
            desired,
            status,
            created_at,
            not_before,
            attempt,
            versions,
        } = t;
        Shared {
            id: Cow::Borrowed(id),
            service_id: Cow::Borrowed(service_id),
            service_name: Cow::Borrowed(service_name),
            slot: *slot,
            node_id: Cow::Borrowed(node_id),
            spec,
            spec_version: *spec_version,
            desired: *desired,
            status: Cow::Borrowed(status),
            created_at: Cow::Borrowed(created_at),
            not_before: Cow::Borrowed(not_before),
            attempt: *attempt,
            versions: Cow::Borrowed(versions),
        }
    }

    fn into_task(self, spec: TaskSpec) -> Task {
        Task {
            id: self.id.into_owned(),
            service_id: self.service_id.into_owned(),
            service_name: self.service_name.into_owned(),
            slot: self.slot,
            node_id: self.node_id.into_owned(),
            spec,
            spec_version: self.spec_version,
            desired: self.desired,
            status: self.status.into_owned(),
            created_at: self.created_at.into_owned(),
            not_before: self.not_before.into_owned(),
            attempt: self.attempt,
            versions: self.versions.into_owned(),
        }
    }
}

/// Specs a message holds before they are found by an index rather than in order.
const SCANNED: usize = 8;

/// A service and one of its versions.
type Key<'a> = (&'a str, u64);

/// Encodes the tasks of one message. With `shared`, each distinct spec goes once into
/// [`Encoder::specs_json`]; without, every task carries its own.
pub struct Encoder<'a> {
    shared: bool,
    /// The specs sent so far, in order, each with the service and version of the first task
    /// that named it.
    specs: Vec<(Key<'a>, &'a TaskSpec)>,
    /// Their places by the service and version of the first task that named each, made once
    /// a message holds more than [`SCANNED`] specs (empty until then). Replicas of one version
    /// normally share one spec, but each task holds its own copy, so a spec is reused only if
    /// it is equal. The spec last used is tried first: a run of one service's replicas costs
    /// one comparison each, and a message of many services one lookup per task, never a scan
    /// of every spec.
    index: HashMap<Key<'a>, Vec<usize>>,
    last: usize,
    specs_json: Vec<String>,
}

impl<'a> Encoder<'a> {
    /// An encoder for one message; `shared` as the node asked.
    pub fn new(shared: bool) -> Self {
        Encoder {
            shared,
            specs: Vec::new(),
            index: HashMap::new(),
            last: 0,
            specs_json: Vec::new(),
        }
    }

    /// The place of `t`'s spec among those sent, if it is there.
    fn find(&mut self, t: &Task) -> Option<usize> {
        let key = (t.service_id.as_str(), t.spec_version);
        let specs = &self.specs;
        let fits = |i: usize| specs[i].0 == key && specs[i].1 == &t.spec;
        if self.last < specs.len() && fits(self.last) {
            return Some(self.last);
        }
        if specs.len() <= SCANNED {
            return (0..specs.len()).find(|&i| fits(i));
        }
        if self.index.is_empty() {
            for (i, (k, _)) in specs.iter().enumerate() {
                self.index.entry(*k).or_default().push(i);
            }
        }
        self.index.get(&key)?.iter().copied().find(|&i| fits(i))
    }

    /// The JSON of `t` for `tasks_json`; its spec is added to the message's specs if it is not
    /// there yet. On an error nothing is added.
    pub fn task(&mut self, t: &'a Task) -> Result<String, serde_json::Error> {
        if !self.shared {
            return serde_json::to_string(t);
        }
        let found = self.find(t);
        let place = found.unwrap_or(self.specs.len());
        let index = u32::try_from(place).map_err(|_| {
            <serde_json::Error as serde::ser::Error>::custom("more specs than one message holds")
        })?;
        let json = serde_json::to_string(&Shared::of(t, index))?;
        if found.is_none() {
            self.specs_json.push(serde_json::to_string(&t.spec)?);
            let key = (t.service_id.as_str(), t.spec_version);
            self.specs.push((key, &t.spec));
            if !self.index.is_empty() {
                self.index.entry(key).or_default().push(place);
            }
        }
        self.last = place;
        Ok(json)
    }

    /// The specs the tasks encoded so far name (empty without `shared`).
    pub fn specs_json(self) -> Vec<String> {
        self.specs_json
    }
}

/// The tasks of a message, in order, each read or refused. `specs_json` empty: every task
/// carries its own spec (a manager that does not share them). Tasks are refused once, with
/// their specs, they would make more than [`MAX_MESSAGE_BYTES`].
pub fn decode(specs_json: &[String], tasks_json: &[String]) -> Vec<Result<Task, AssignmentError>> {
    let cut = |e: serde_json::Error| crate::util::prefix(&e.to_string(), MAX_ERROR_BYTES);
    if specs_json.is_empty() {
        return tasks_json
            .iter()
            .map(|j| {
                serde_json::from_str::<Task>(j)
                    .map_err(|e| AssignmentError::Task { reason: cut(e) })
            })
            .collect();
    }
    let specs: Vec<Result<TaskSpec, AssignmentError>> = specs_json
        .iter()
        .enumerate()
        .map(|(index, j)| {
            serde_json::from_str::<TaskSpec>(j).map_err(|e| AssignmentError::Spec {
                index,
                reason: cut(e),
            })
        })
        .collect();
    let mut expanded = 0usize;
    tasks_json
        .iter()
        .map(|j| {
            let shared: Shared<'_> =
                serde_json::from_str(j).map_err(|e| AssignmentError::Task { reason: cut(e) })?;
            let index = shared.spec as usize;
            expanded = expanded
                .saturating_add(j.len())
                .saturating_add(specs_json.get(index).map_or(0, String::len));
            if expanded > MAX_MESSAGE_BYTES {
                return Err(AssignmentError::TooLarge {
                    task_id: crate::util::prefix(&shared.id, 64),
                    limit: MAX_MESSAGE_BYTES,
                });
            }
            match specs.get(index) {
                Some(Ok(spec)) => Ok(shared.into_task(spec.clone())),
                Some(Err(e)) => Err(e.clone()),
                None => Err(AssignmentError::NoSpec {
                    task_id: crate::util::prefix(&shared.id, 64),
                    index: shared.spec,
                    count: specs.len(),
                }),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::service::{Runtime, TaskState};

    fn task(id: &str, service: &str, version: u64, command: &str) -> Task {
        let mut versions = BTreeMap::new();
        versions.insert("sec1".to_string(), 3);
        Task {
            id: id.into(),
            service_id: service.into(),
            service_name: format!("{service}-name"),
            slot: 4,
            node_id: "node1".into(),
            spec: TaskSpec::new(Runtime::Exec, "", vec!["/bin/sleep".into(), command.into()]),
            spec_version: version,
            desired: DesiredState::Running,
            status: TaskStatus {
                state: TaskState::Running,
                message: "started".into(),
                err: String::new(),
                exit_code: Some(0),
                timestamp: "2026-12-07T04:00:00Z".into(),
                held: versions.clone(),
            },
            created_at: "2026-12-07T03:59:00Z".into(),
            not_before: String::new(),
            attempt: 2,
            versions,
        }
    }

    fn encode(tasks: &[Task], shared: bool) -> (Vec<String>, Vec<String>) {
        let mut enc = Encoder::new(shared);
        let json = tasks.iter().map(|t| enc.task(t).unwrap()).collect();
        (enc.specs_json(), json)
    }

    /// Every task of a message, each read.
    fn read(specs: &[String], json: &[String]) -> Vec<Task> {
        decode(specs, json)
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn bytes(parts: &(Vec<String>, Vec<String>)) -> usize {
        parts.0.iter().chain(&parts.1).map(String::len).sum()
    }

    #[test]
    fn a_message_carries_each_distinct_spec_once_and_its_tasks_come_back_whole() {
        let mut tasks: Vec<Task> = (0..10)
            .map(|i| task(&format!("t{i}"), "web", 2, "1000"))
            .collect();
        tasks.push(task("u1", "db", 1, "1000"));
        // Same service and version, another spec (a task's copy is its own): not confused.
        tasks.push(task("u2", "db", 1, "2000"));
        let shared = encode(&tasks, true);
        assert_eq!(
            shared.0.len(),
            3,
            "one spec per distinct spec: {:?}",
            shared.0
        );
        let decoded = read(&shared.0, &shared.1);
        assert_eq!(decoded, tasks);
        let whole = encode(&tasks, false);
        assert!(whole.0.is_empty());
        assert!(
            bytes(&shared) * 10 < bytes(&whole) * 7,
            "shared {} bytes, whole {} bytes",
            bytes(&shared),
            bytes(&whole)
        );
    }

    #[test]
    fn many_services_interleaved_each_spec_once_in_order_of_first_use() {
        // A node's complete message with the replicas of 1,000 services, interleaved: every
        // spec once, each task back with its own.
        let mut tasks = Vec::new();
        for round in 0..2 {
            for s in 0..1000 {
                tasks.push(task(
                    &format!("t{s}-{round}"),
                    &format!("svc{s}"),
                    1,
                    &s.to_string(),
                ));
            }
        }
        // Same service and version as others, another spec, found through the index.
        tasks.push(task("odd", "svc5", 1, "other"));
        let (specs, json) = encode(&tasks, true);
        assert_eq!(specs.len(), 1001);
        assert!(
            specs[7].contains("\"7\""),
            "in order of first use: {}",
            specs[7]
        );
        let decoded = read(&specs, &json);
        assert_eq!(decoded, tasks);
    }

    #[test]
    fn a_message_whose_tasks_would_grow_past_the_message_limit_is_refused_past_it() {
        // One spec of 1 MiB named by 70 tasks: 70 MiB once filled in, from a message of 1 MiB
        // and 70 small tasks. A node keeps what fits in a message of whole tasks.
        let mut big = task("t0", "web", 1, "1000");
        big.spec.env = vec![format!("BIG={}", "x".repeat(1 << 20))];
        let tasks: Vec<Task> = (0..70)
            .map(|i| Task {
                id: format!("t{i}"),
                ..big.clone()
            })
            .collect();
        let (specs, json) = encode(&tasks, true);
        assert_eq!(specs.len(), 1);
        let out = decode(&specs, &json);
        let kept = out.iter().take_while(|r| r.is_ok()).count();
        assert!((60..64).contains(&kept), "{kept} tasks kept");
        assert_eq!(
            out[kept],
            Err(AssignmentError::TooLarge {
                task_id: format!("t{kept}"),
                limit: MAX_MESSAGE_BYTES
            })
        );
        assert!(out[kept..].iter().all(Result::is_err));
    }

    #[test]
    fn whole_tasks_from_a_manager_that_does_not_share_specs_are_read() {
        let tasks = vec![task("t1", "web", 1, "1000"), task("t2", "web", 1, "1000")];
        let whole = encode(&tasks, false);
        let decoded = read(&whole.0, &whole.1);
        assert_eq!(decoded, tasks);
    }

    #[test]
    fn a_bad_spec_or_index_refuses_only_the_tasks_that_name_it_quoting_a_short_prefix() {
        let tasks = vec![task("t1", "web", 1, "1000"), task("t2", "db", 1, "1000")];
        let (mut specs, mut json) = encode(&tasks, true);
        specs[1] = format!("{{\"runtime\": \"{}\"}}", "x".repeat(100_000));
        json.push(json[0].replace("\"spec\":0", "\"spec\":7"));
        json.push(format!("{{\"id\": {}", "y".repeat(100_000)));
        let out = decode(&specs, &json);
        assert_eq!(out[0].as_ref().unwrap(), &tasks[0]);
        assert!(
            matches!(out[1], Err(AssignmentError::Spec { index: 1, .. })),
            "{:?}",
            out[1]
        );
        assert_eq!(
            out[2],
            Err(AssignmentError::NoSpec {
                task_id: "t1".into(),
                index: 7,
                count: 2
            })
        );
        assert!(matches!(out[3], Err(AssignmentError::Task { .. })));
        for e in out.iter().skip(1) {
            let text = e.as_ref().unwrap_err().to_string();
            assert!(text.len() < 300, "{} bytes: {}", text.len(), &text[..100]);
        }
    }
}
