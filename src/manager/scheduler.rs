//! The scheduler: places pending tasks on nodes. A pure function of the replicated state and
//! the time; the leader's shell commits what it returns.
//!
//! ```text
//!  pending tasks ─► filters (available, runtime, constraints, policy, resources) ─► spread ─► PutTasks
//!                      └─ none fits: "no suitable node (...)" in the task's status message
//! ```
//!
//! Spread is Swarm's: the node with the fewest live tasks of the task's service first, then
//! the fewest live tasks overall, then the lowest node ID, so the result is deterministic.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use crate::manager::entitle::{Denial, Memo};
use crate::spec::service::constraint_text;
use crate::store::model::{Availability, Command, Node, NodeRole, NodeState, State};
use crate::store::service::{
    Constraint, ConstraintOp, DesiredState, Resources, Service, Task, TaskSpec, TaskState,
    TaskStatus,
};
use crate::util::{parse_rfc3339, rfc3339};

/// Places pending tasks (desired Running, state Pending, node_id empty, `not_before` passed) on
/// nodes, and records why the others fit nowhere. Returns at most one `PutTasks`.
pub fn schedule(state: &State, now: OffsetDateTime) -> Vec<Command> {
    let mut placement = Placement::new(state);
    let mut pending: Vec<&Task> = state
        .tasks
        .values()
        .filter(|t| {
            t.desired == DesiredState::Running
                && matches!(t.status.state, TaskState::New | TaskState::Pending)
                && t.node_id.is_empty()
                && state.services.contains_key(&t.service_id)
                && not_before_passed(t, now)
        })
        .collect();
    pending.sort_by(|a, b| {
        (&a.created_at, &a.service_id, a.slot, &a.id).cmp(&(
            &b.created_at,
            &b.service_id,
            b.slot,
            &b.id,
        ))
    });
    let mut out = Vec::new();
    for task in pending {
        match placement.pick(task) {
            Some(node_id) => {
                let mut t = task.clone();
                t.node_id = node_id;
                t.status = TaskStatus {
                    state: TaskState::Assigned,
                    message: "scheduled".into(),
                    err: String::new(),
                    exit_code: None,
                    timestamp: rfc3339(now),
                    held: Default::default(),
                };
                placement.add(&t);
                out.push(t);
            }
            None => {
                let message = placement.explain(task);
                if message != task.status.message {
                    let mut t = task.clone();
                    t.status.message = message;
                    out.push(t);
                }
            }
        }
    }
    if out.is_empty() {
        Vec::new()
    } else {
        vec![Command::PutTasks(out)]
    }
}

/// Why `task` fits no node, in Swarm's words: "no suitable node (3 nodes not available for new
/// tasks; 1 node not satisfying constraint node.role==worker)". Each node is counted once, under
/// the first filter it fails (availability, runtime, constraints in order, resources). Empty
/// when some node fits.
pub fn explain_unschedulable(state: &State, task: &Task) -> String {
    Placement::new(state).explain(task)
}

/// Whether the node takes new tasks at all (`Ready` and `Active`).
pub(crate) fn available(node: &Node) -> bool {
    node.state == NodeState::Ready && node.availability == Availability::Active
}

/// Whether one placement constraint holds on a node. Values compare case-insensitively, as in
/// Swarm; a `!=` label constraint holds when the label is absent; an unknown key never holds.
pub(crate) fn constraint_holds(node: &Node, c: &Constraint) -> bool {
    const LABELS: &str = "node.labels.";
    let actual: Option<&str> = match c.key.as_str() {
        "node.id" => Some(&node.id),
        "node.hostname" => Some(&node.hostname),
        "node.role" => Some(match node.role {
            NodeRole::Manager => "manager",
            NodeRole::Worker => "worker",
        }),
        k if k.starts_with(LABELS) => node.labels.get(&k[LABELS.len()..]).map(String::as_str),
        _ => return false,
    };
    let equal = actual.is_some_and(|a| a.eq_ignore_ascii_case(&c.value));
    match c.op {
        ConstraintOp::Eq => equal,
        ConstraintOp::Ne => !equal,
    }
}

/// Whether every constraint of a task spec holds on a node.
pub(crate) fn constraints_hold(node: &Node, spec: &TaskSpec) -> bool {
    spec.constraints.iter().all(|c| constraint_holds(node, c))
}

/// Whether a node suits a task spec: it has the runtime and satisfies every constraint.
/// (Availability, liveness and resources are the caller's business.)
pub(crate) fn suits(node: &Node, spec: &TaskSpec) -> bool {
    node.runtimes.contains(&spec.runtime)
        && spec.constraints.iter().all(|c| constraint_holds(node, c))
}

/// A task that holds a place on its node: placed, wanted, not ended.
pub(crate) fn occupies(t: &Task) -> bool {
    !t.node_id.is_empty()
        && t.desired == DesiredState::Running
        && !t.status.state.is_terminal()
        && t.status.state >= TaskState::Assigned
}

/// Whether the task's restart delay (if any) is over. An unreadable time counts as passed.
pub(crate) fn not_before_passed(t: &Task, now: OffsetDateTime) -> bool {
    t.not_before.is_empty() || parse_rfc3339(&t.not_before).is_none_or(|nb| nb <= now)
}

/// Whether `want` fits in what is left of `capacity` after `used`. A node reporting no
/// capacity in a dimension has none to give, except to tasks that reserve nothing there.
pub(crate) fn fits(capacity: Resources, used: Resources, want: Resources) -> bool {
    let dim = |cap: u64, used: u64, want: u64| want == 0 || used.saturating_add(want) <= cap;
    dim(capacity.nano_cpus, used.nano_cpus, want.nano_cpus)
        && dim(capacity.memory_bytes, used.memory_bytes, want.memory_bytes)
}

#[derive(Default, Clone)]
struct Load {
    used: Resources,
    total: usize,
    per_service: BTreeMap<String, usize>,
}

/// Nodes with what is placed on them, updated as tasks are placed within one call.
pub(crate) struct Placement<'a> {
    nodes: &'a BTreeMap<String, Node>,
    load: BTreeMap<String, Load>,
    policy: Memo<'a>,
}

/// The first filter a node fails for a task.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Refusal {
    Unavailable,
    Runtime,
    Constraint(usize),
    Policy,
    Resources,
}

impl<'a> Placement<'a> {
    pub(crate) fn new(state: &'a State) -> Self {
        let mut p = Placement {
            nodes: &state.nodes,
            load: BTreeMap::new(),
            policy: Memo::new(state),
        };
        for t in state.tasks.values() {
            p.add(t);
        }
        p
    }

    /// Counts a task on its node, if it occupies one.
    pub(crate) fn add(&mut self, t: &Task) {
        if !occupies(t) {
            return;
        }
        let l = self.load.entry(t.node_id.clone()).or_default();
        l.used.nano_cpus = l
            .used
            .nano_cpus
            .saturating_add(t.spec.reservations.nano_cpus);
        l.used.memory_bytes = l
            .used
            .memory_bytes
            .saturating_add(t.spec.reservations.memory_bytes);
        l.total += 1;
        *l.per_service.entry(t.service_id.clone()).or_default() += 1;
    }

    /// Whether the task's reservations fit on the node as it is loaded now.
    pub(crate) fn fits_on(&self, node: &Node, task: &Task) -> bool {
        let used = self.load.get(&node.id).map(|l| l.used).unwrap_or_default();
        fits(node.resources, used, task.spec.reservations)
    }

    fn check(&self, node: &Node, task: &Task) -> Result<(), Refusal> {
        if !available(node) {
            return Err(Refusal::Unavailable);
        }
        if !node.runtimes.contains(&task.spec.runtime) {
            return Err(Refusal::Runtime);
        }
        if let Some(i) = task
            .spec
            .constraints
            .iter()
            .position(|c| !constraint_holds(node, c))
        {
            return Err(Refusal::Constraint(i));
        }
        if !self.entitled(node, task) {
            return Err(Refusal::Policy);
        }
        if !self.fits_on(node, task) {
            return Err(Refusal::Resources);
        }
        Ok(())
    }

    /// Whether the policy lets the task's service use its secrets on the node.
    pub(crate) fn entitled(&self, node: &Node, task: &Task) -> bool {
        self.denial(node, task).is_none()
    }

    /// As [`Placement::entitled`], for a service's current spec (global services).
    pub(crate) fn service_entitled(&self, node: &Node, svc: &Service) -> bool {
        self.policy
            .check(&svc.id, &svc.spec.name, svc.version, &svc.spec.task, node)
            .is_ok()
    }

    fn denial(&self, node: &Node, task: &Task) -> Option<Denial> {
        self.policy
            .check(
                &task.service_id,
                &task.service_name,
                task.spec_version,
                &task.spec,
                node,
            )
            .err()
    }

    fn pick(&self, task: &Task) -> Option<String> {
        self.nodes
            .values()
            .filter(|n| self.check(n, task).is_ok())
            .min_by_key(|n| {
                let l = self.load.get(&n.id);
                let mine = l
                    .and_then(|l| l.per_service.get(&task.service_id))
                    .copied()
                    .unwrap_or(0);
                (mine, l.map_or(0, |l| l.total), &n.id)
            })
            .map(|n| n.id.clone())
    }

    fn explain(&self, task: &Task) -> String {
        if self.nodes.is_empty() {
            return "no suitable node (the swarm has no nodes)".into();
        }
        let mut counts: BTreeMap<Refusal, usize> = BTreeMap::new();
        let mut denial = None;
        for n in self.nodes.values() {
            match self.check(n, task) {
                Ok(()) => return String::new(),
                Err(r) => {
                    if r == Refusal::Policy && denial.is_none() {
                        denial = self.denial(n, task);
                    }
                    *counts.entry(r).or_default() += 1
                }
            }
        }
        let nodes = |n: usize| {
            if n == 1 {
                "1 node".to_string()
            } else {
                format!("{n} nodes")
            }
        };
        let parts: Vec<String> = counts
            .into_iter()
            .map(|(r, n)| match r {
                Refusal::Unavailable => format!("{} not available for new tasks", nodes(n)),
                Refusal::Runtime => format!(
                    "{} without the {} runtime",
                    nodes(n),
                    task.spec.runtime.as_str()
                ),
                Refusal::Constraint(i) => format!(
                    "{} not satisfying constraint {}",
                    nodes(n),
                    task.spec
                        .constraints
                        .get(i)
                        .map(constraint_text)
                        .unwrap_or_default()
                ),
                Refusal::Policy => format!(
                    "{} where the policy denies {}",
                    nodes(n),
                    denial.as_ref().map(ToString::to_string).unwrap_or_default()
                ),
                Refusal::Resources => format!("insufficient resources on {}", nodes(n)),
            })
            .collect();
        format!("no suitable node ({})", parts.join("; "))
    }
}
