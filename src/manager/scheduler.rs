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

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

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
    let out: Vec<Task> = schedule_over(state, state.tasks.values(), now)
        .into_iter()
        .filter_map(|(id, d)| d.applied_to(state, &id))
        .collect();
    if out.is_empty() {
        Vec::new()
    } else {
        vec![Command::PutTasks(out)]
    }
}

/// What the scheduler decided for one pending task: written over the task by
/// [`Decision::apply`]. The scheduler hands out decisions rather than copies of the tasks, so
/// the orchestrator's round writes them into its own copies and no task is copied twice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Placed on the node: the task is `Assigned` there.
    Assigned {
        /// The node's ID.
        node_id: String,
        /// Its new status.
        status: TaskStatus,
    },
    /// It fits no node, for a reason other than the one its status gives.
    Unplaced {
        /// Why, in Swarm's words ([`explain_unschedulable`]).
        message: String,
    },
}

impl Decision {
    /// A copy of the state's task `id` with the decision written over it (`None` if the state
    /// has no such task).
    pub fn applied_to(self, state: &State, id: &str) -> Option<Task> {
        let mut t = state.tasks.get(id)?.clone();
        self.apply(&mut t);
        Some(t)
    }

    /// Writes the decision over the task it was made for.
    pub fn apply(self, t: &mut Task) {
        match self {
            Decision::Assigned { node_id, status } => {
                t.node_id = node_id;
                t.status = status;
            }
            Decision::Unplaced { message } => t.status.message = message,
        }
    }
}

/// As [`schedule`], over `tasks` instead of the state's own (every task of the swarm, as a
/// round that has not been committed yet would leave them; the state gives the nodes, services
/// and policies): for each task placed, or whose reason for fitting nowhere changed, its ID and
/// what was decided, in the order decided.
pub fn schedule_over<'t>(
    state: &State,
    tasks: impl Iterator<Item = &'t Task> + Clone,
    now: OffsetDateTime,
) -> Vec<(String, Decision)> {
    let mut pending: Vec<&Task> = tasks
        .clone()
        .filter(|t| {
            t.desired == DesiredState::Running
                && matches!(t.status.state, TaskState::New | TaskState::Pending)
                && t.node_id.is_empty()
                && state.services.contains_key(&t.service_id)
                && not_before_passed(t, now)
        })
        .collect();
    if pending.is_empty() {
        return Vec::new();
    }
    let mut placement = Placement::over(state, tasks);
    pending.sort_by(|a, b| oldest_first(a, b));
    let mut out = Vec::new();
    let at = rfc3339(now);
    // Runs of tasks of one service and spec: the same nodes suit each of them, so the nodes are
    // filtered once per run and each task costs a heap operation, not a pass over the nodes.
    for run in pending.chunk_by(|a, b| a.service_id == b.service_id && a.spec == b.spec) {
        placement.place_run(run, &at, &mut out);
    }
    out
}

/// The order pending tasks are placed in: oldest first, then by service, slot and ID.
fn oldest_first(a: &Task, b: &Task) -> std::cmp::Ordering {
    (&a.created_at, &a.service_id, a.slot, &a.id).cmp(&(
        &b.created_at,
        &b.service_id,
        b.slot,
        &b.id,
    ))
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

/// A node's place in Swarm's spread order: (tasks of the service, tasks, node ID).
type Rank<'a> = (usize, usize, &'a str);

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
        Self::over(state, state.tasks.values())
    }

    /// The nodes of `state` loaded with `tasks` (the state's, or a round's view of them).
    fn over<'t>(state: &'a State, tasks: impl Iterator<Item = &'t Task>) -> Self {
        let mut p = Placement {
            nodes: &state.nodes,
            load: BTreeMap::new(),
            policy: Memo::new(state),
        };
        for t in tasks {
            p.add(t);
        }
        p
    }

    /// Counts a task on its node, if it occupies one.
    pub(crate) fn add(&mut self, t: &Task) {
        if occupies(t) {
            self.count_on(&t.node_id, t);
        }
    }

    /// Counts `t` on the node `node_id` (where it is, or where it is being placed).
    fn count_on(&mut self, node_id: &str, t: &Task) {
        // Looked up before inserting: a node or service already counted costs no allocation.
        if !self.load.contains_key(node_id) {
            self.load.insert(node_id.to_string(), Load::default());
        }
        let Some(l) = self.load.get_mut(node_id) else {
            return;
        };
        l.used.nano_cpus = l
            .used
            .nano_cpus
            .saturating_add(t.spec.reservations.nano_cpus);
        l.used.memory_bytes = l
            .used
            .memory_bytes
            .saturating_add(t.spec.reservations.memory_bytes);
        l.total += 1;
        match l.per_service.get_mut(&t.service_id) {
            Some(n) => *n += 1,
            None => {
                l.per_service.insert(t.service_id.clone(), 1);
            }
        }
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

    /// Places a run of pending tasks of one service and spec as [`Placement::pick`] would one
    /// by one (the same nodes, in the same order), pushing each placed task, and each task
    /// that fits nowhere with its new reason, to `out`. A node that suits the run is kept in a
    /// heap by Swarm's spread order; one its reservations no longer fit leaves it for the rest
    /// of the run (the run only fills nodes up).
    fn place_run(&mut self, run: &[&Task], at: &str, out: &mut Vec<(String, Decision)>) {
        let Some(first) = run.first() else {
            return;
        };
        let nodes: &'a BTreeMap<String, Node> = self.nodes;
        let mut heap: BinaryHeap<Reverse<Rank<'a>>> = nodes
            .values()
            .filter(|n| self.suits_except_room(n, first))
            .map(|n| Reverse(self.rank(n, first)))
            .collect();
        let mut unplaced: Option<String> = None;
        for task in run {
            let picked = loop {
                let Some(Reverse(r)) = heap.pop() else {
                    break None;
                };
                if let Some(node) = nodes.get(r.2)
                    && self.fits_on(node, task)
                {
                    break Some(node);
                }
            };
            match picked {
                Some(node) => {
                    self.count_on(&node.id, task);
                    let status = TaskStatus {
                        state: TaskState::Assigned,
                        message: "scheduled".into(),
                        err: String::new(),
                        exit_code: None,
                        timestamp: at.to_string(),
                        held: Default::default(),
                    };
                    let node_id = node.id.clone();
                    out.push((task.id.clone(), Decision::Assigned { node_id, status }));
                    heap.push(Reverse(self.rank(node, task)));
                }
                None => {
                    // Nothing changes for the rest of the run: one reason for all of them.
                    let message = unplaced.get_or_insert_with(|| self.explain(task));
                    if *message != task.status.message {
                        let message = message.clone();
                        out.push((task.id.clone(), Decision::Unplaced { message }));
                    }
                }
            }
        }
    }

    /// Swarm's spread order of a node for a task: fewest tasks of its service, then fewest
    /// tasks, then the lowest node ID.
    fn rank(&self, node: &'a Node, task: &Task) -> Rank<'a> {
        let l = self.load.get(&node.id);
        let mine = l
            .and_then(|l| l.per_service.get(&task.service_id))
            .copied()
            .unwrap_or(0);
        (mine, l.map_or(0, |l| l.total), &node.id)
    }

    /// Whether the node passes every filter but the room left on it.
    fn suits_except_room(&self, node: &Node, task: &Task) -> bool {
        matches!(self.check(node, task), Ok(()) | Err(Refusal::Resources))
    }

    #[cfg(test)]
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

#[cfg(test)]
mod tests {
    use rand::Rng as _;
    use rand::rngs::StdRng;

    use super::*;
    use crate::store::fixtures;
    use crate::store::service::{Constraint, Runtime};

    /// The old one-task-at-a-time placement: every node checked for every task.
    fn one_by_one(state: &State, now: OffsetDateTime) -> Vec<Task> {
        let mut placement = Placement::new(state);
        let mut pending: Vec<&Task> = state
            .tasks
            .values()
            .filter(|t| t.node_id.is_empty() && t.desired == DesiredState::Running)
            .collect();
        pending.sort_by(|a, b| oldest_first(a, b));
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
        out
    }

    fn random_state(rng: &mut StdRng) -> State {
        let mut s = State::default();
        let gib = 1u64 << 30;
        for i in 0..rng.random_range(0..40) {
            let mut n = fixtures::node(&format!("n{i:02}"));
            n.runtimes = vec![Runtime::Exec];
            if rng.random_bool(0.8) {
                n.runtimes.push(Runtime::Docker);
            }
            n.resources = Resources {
                nano_cpus: rng.random_range(0..4) * 1_000_000_000,
                memory_bytes: rng.random_range(0..8) * gib,
            };
            if rng.random_bool(0.1) {
                n.availability = Availability::Drain;
            }
            if rng.random_bool(0.1) {
                n.state = NodeState::Down;
            }
            let zone = if rng.random_bool(0.5) { "a" } else { "b" };
            n.labels.insert("zone".into(), zone.into());
            s.nodes.insert(n.id.clone(), n);
        }
        let node_ids: Vec<String> = s.nodes.keys().cloned().collect();
        for svc in 0..rng.random_range(1..5) {
            let service = fixtures::service(&format!("s{svc}"), &format!("web{svc}"));
            let mut spec = fixtures::task_spec();
            spec.runtime = if rng.random_bool(0.5) {
                Runtime::Exec
            } else {
                Runtime::Docker
            };
            if rng.random_bool(0.3) {
                spec.constraints.push(Constraint {
                    key: "node.labels.zone".into(),
                    op: if rng.random_bool(0.5) {
                        ConstraintOp::Eq
                    } else {
                        ConstraintOp::Ne
                    },
                    value: "a".into(),
                });
            }
            if rng.random_bool(0.5) {
                spec.reservations = Resources {
                    nano_cpus: rng.random_range(0..2) * 500_000_000,
                    memory_bytes: rng.random_range(0..3) * gib / 2,
                };
            }
            for slot in 0..rng.random_range(0..60u64) {
                let mut t = fixtures::task();
                t.id = format!("t{svc}-{slot}");
                t.service_id = service.id.clone();
                t.service_name = service.spec.name.clone();
                t.slot = slot;
                t.spec = spec.clone();
                // Some already run somewhere; the rest wait for a node.
                if !node_ids.is_empty() && rng.random_bool(0.3) {
                    t.node_id = node_ids[rng.random_range(0..node_ids.len())].clone();
                    t.status.state = TaskState::Running;
                } else {
                    t.node_id = String::new();
                    t.status.state = TaskState::Pending;
                    t.created_at = format!("2026-01-01T00:00:0{}Z", rng.random_range(0..3));
                }
                s.tasks.insert(t.id.clone(), t);
            }
            s.services.insert(service.id.clone(), service);
        }
        s
    }

    #[test]
    fn runs_place_every_task_where_one_by_one_placement_would() {
        let (seed, mut rng) = crate::util::seeded_rng();
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("a valid time");
        for round in 0..300 {
            let s = random_state(&mut rng);
            let got = match schedule(&s, now).pop() {
                Some(Command::PutTasks(t)) => t,
                None => Vec::new(),
                Some(_) => panic!("the scheduler returned something other than PutTasks"),
            };
            let want = one_by_one(&s, now);
            assert!(
                got == want,
                "seed {seed}, round {round}: placements differ\n got {:?}\nwant {:?}",
                got.iter().map(|t| (&t.id, &t.node_id)).collect::<Vec<_>>(),
                want.iter().map(|t| (&t.id, &t.node_id)).collect::<Vec<_>>()
            );
        }
    }
}
