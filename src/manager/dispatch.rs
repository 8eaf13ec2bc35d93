//! The dispatcher's task sessions: each node holds one stream from the leader that carries
//! the tasks assigned to it (the whole set first, then only changes), and reports task states
//! back. Also the leader's orchestration loop, which runs the pure orchestrator and scheduler
//! on every change of the replicated state.
//!
//! ```text
//!  state change ─► loop on leader: reconcile() ─► schedule_over(its result) ─► propose
//!  state change ─► each session: diff(assigned set) ─► Assignments{changes} ─► agent
//!  agent ─► ReportTasks ─► reports.rs: one entry for the reports waiting ─► state change ─► ...
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Manager;
use super::scheduler::Decision;
use crate::api::assignments::Encoder;
use crate::api::v1::{Assignments, SecretValue};
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::store::model::{Command, Node, State};
use crate::store::service::{DesiredState, SecretRef, Task};

/// What a session last told its node about one task.
#[derive(Clone, PartialEq, Eq)]
struct Sent {
    desired: DesiredState,
    spec_version: u64,
    versions: BTreeMap<String, u64>,
}

/// A value a node holds for its tasks: config (or secret), object ID, version.
type Value = (bool, String, u64);

/// In one pass over the node's tasks (the state's index by node, not every task): those it
/// must know about (not ended, including those the orchestrator wants stopped), and the IDs of
/// all tasks placed on it, history included. Borrowed: nothing is copied for a task that did
/// not change.
fn assigned<'a>(state: &'a State, node_id: &str) -> (Vec<&'a Task>, HashSet<&'a str>) {
    let mut active = Vec::new();
    let mut all = HashSet::new();
    for t in state.tasks.on_node(node_id) {
        all.insert(t.id.as_str());
        if !t.status.state.is_terminal() {
            active.push(t);
        }
    }
    (active, all)
}

impl Sent {
    fn of(t: &Task) -> Sent {
        Sent {
            desired: t.desired,
            spec_version: t.spec_version,
            versions: t.versions.clone(),
        }
    }

    /// Whether the node was told all it needs of `t` (compared without copying).
    fn covers(&self, t: &Task) -> bool {
        self.desired == t.desired
            && self.spec_version == t.spec_version
            && self.versions == t.versions
    }
}

/// What changed since a node was last told: the tasks to send, encoded, and the IDs of those
/// it no longer runs.
#[derive(Default)]
struct Changes {
    tasks_json: Vec<String>,
    specs_json: Vec<String>,
    removed: Vec<String>,
}

/// The change from what was sent to what is assigned now; updates `sent`. Encodes only the
/// tasks the node has not been told about as they are, straight from the state (run under its
/// read lock, so no task is copied to be encoded later). A task that cannot be encoded is not
/// marked as sent, so it is tried again. With `shared`, each distinct spec is encoded once
/// ([`crate::api::assignments`]).
fn diff(sent: &mut HashMap<String, Sent>, now: &[&Task], complete: bool, shared: bool) -> Changes {
    let mut out = Changes::default();
    let mut encoder = Encoder::new(shared);
    let here: HashSet<&str> = now.iter().map(|t| t.id.as_str()).collect();
    sent.retain(|id, _| {
        let keep = here.contains(id.as_str());
        if !keep {
            out.removed.push(id.clone());
        }
        keep
    });
    for task in now {
        if !complete && sent.get(&task.id).is_some_and(|m| m.covers(task)) {
            continue;
        }
        match encoder.task(task) {
            Ok(json) => {
                out.tasks_json.push(json);
                match sent.get_mut(&task.id) {
                    Some(m) => *m = Sent::of(task),
                    None => {
                        sent.insert(task.id.clone(), Sent::of(task));
                    }
                }
            }
            Err(e) => {
                tracing::error!(task_id = %task.id, error = %e, "cannot encode a task");
                sent.remove(&task.id);
            }
        }
    }
    out.specs_json = encoder.specs_json();
    out
}

/// The message carrying `changes` (`None` when there are none and it is not the complete
/// first one).
fn message(changes: Changes, complete: bool) -> Option<Assignments> {
    let msg = Assignments {
        complete,
        removed: changes.removed,
        tasks_json: changes.tasks_json,
        specs_json: changes.specs_json,
        ..Default::default()
    };
    (complete || !msg.tasks_json.is_empty() || !msg.removed.is_empty()).then_some(msg)
}

/// One message of a task session on its way to the node's stream, boxed: a channel's queue
/// is blocks of 32 slots whatever its bound, and each open session keeps one or two, so with
/// the message inline (104 bytes) a thousand sessions held ≈ 7 MB of mostly empty slots.
pub type SessionItem = Box<Result<Assignments, tonic::Status>>;

/// Streams a node's assignments until the node goes away or this manager stops leading;
/// `shared_specs` as the node asked ([`crate::api::assignments`]).
pub fn session(
    mgr: Arc<Manager>,
    node_id: String,
    shared_specs: bool,
) -> mpsc::Receiver<SessionItem> {
    let (tx, rx) = mpsc::channel(16);
    let number = mgr.session_started(&node_id);
    tokio::spawn(async move {
        serve_session(&mgr, &node_id, shared_specs, tx).await;
        mgr.session_ended(node_id, number);
    });
    rx
}

/// Sends `node_id` its assignments until it hangs up or this manager stops leading.
async fn serve_session(
    mgr: &Arc<Manager>,
    node_id: &str,
    shared_specs: bool,
    tx: mpsc::Sender<SessionItem>,
) {
    let node_id = node_id.to_string();
    {
        // Woken when this node's tasks or record change, or anything else the session reads
        // does (not another node's record).
        let wake_node = mgr.state().wake().node(&node_id);
        let mut others = mgr.state().wake().sessions();
        let mut sent: HashMap<String, Sent> = HashMap::new();
        let mut known: HashSet<String> = HashSet::new();
        // Secret and config versions this session has sent to the node and the node still
        // needs.
        let mut held: HashSet<Value> = HashSet::new();
        let mut complete = true;
        // The generation of the node's tasks last diffed, and the IDs of those it runs.
        let mut seen = 0u64;
        let mut now_ids: Vec<String> = Vec::new();
        // Whether the secrets pass is to run: something it reads may have changed (the node's
        // tasks or record, or an entry that changes more than tasks and node records), or a
        // delivery is to be tried again. A session woken only by its timer skips it.
        let mut secrets_stale = true;
        loop {
            if !mgr.is_leader() {
                let _ = tx
                    .send(Box::new(Err(tonic::Status::unavailable(format!(
                        "this manager is no longer the leader; the leader is at {}",
                        mgr.leader_addr().unwrap_or_default()
                    )))))
                    .await;
                return;
            }
            // The node's tasks are diffed only when one of them changed since the last pass
            // (their generation moved): a commit elsewhere costs this session nothing more.
            let generation = mgr.read(|s| s.tasks.generation(&node_id));
            let msg = if complete || generation != seen {
                seen = generation;
                secrets_stale = true;
                let (changes, deleted) = mgr.read(|s| {
                    let (now, all) = assigned(s, &node_id);
                    let mut deleted = Vec::new();
                    known.retain(|id| {
                        let keep = all.contains(id.as_str());
                        if !keep {
                            deleted.push(id.clone());
                        }
                        keep
                    });
                    for id in all {
                        if !known.contains(id) {
                            known.insert(id.to_string());
                        }
                    }
                    (diff(&mut sent, &now, complete, shared_specs), deleted)
                });
                match (message(changes, complete), deleted) {
                    (Some(mut m), deleted) => {
                        m.deleted = deleted;
                        // The tasks it runs changed (or were updated): their IDs again.
                        now_ids = sent.keys().cloned().collect();
                        Some(m)
                    }
                    (None, deleted) if !deleted.is_empty() => Some(Assignments {
                        deleted,
                        ..Default::default()
                    }),
                    (None, _) => None,
                }
            } else {
                None
            };
            let due = if std::mem::take(&mut secrets_stale) {
                mgr.read(|s| secrets_due(s, &node_id, &now_ids, &mut held))
            } else {
                None
            };
            let msg = match due {
                Some(due) if due.values.is_empty() => msg,
                Some(due) => {
                    // The record first: a value leaves the leader only once its delivery is
                    // on the audit chain. If that fails, it is tried again on the next pass.
                    // Boxed: the proposal's future is large, and inline it would be part of
                    // every open session's task for the session's whole life.
                    if let Err(e) = Box::pin(mgr.propose(Command::Batch(due.audit))).await {
                        tracing::warn!(node = %node_id, error = %e, "cannot record secret deliveries; holding the values back");
                        for v in &due.values {
                            held.remove(&(v.config, v.id.clone(), v.version));
                        }
                        secrets_stale = true;
                        msg
                    } else {
                        let secrets = due.values.iter().filter(|v| !v.config).count();
                        crate::metrics::metrics().secrets_delivered(secrets as u64);
                        let mut m = msg.unwrap_or_default();
                        m.secrets = due.values;
                        Some(m)
                    }
                }
                None => msg,
            };
            if let Some(msg) = msg
                && tx.send(Box::new(Ok(msg))).await.is_err()
            {
                return; // the node hung up
            }
            complete = false;
            // Wake when the node's tasks or anything else it is sent changed, and now and then
            // to notice a lost leadership.
            tokio::select! {
                // Its own record (labels, role) decides what it is entitled to.
                _ = wake_node.notified() => secrets_stale = true,
                _ = others.changed() => secrets_stale = true,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if tx.is_closed() {
                return;
            }
        }
    }
}

/// Secret values to send with the next message, and the audit records of their delivery.
struct Due {
    values: Vec<SecretValue>,
    audit: Vec<Command>,
}

/// The secret and config versions a task is to hold.
fn values_of(t: &Task) -> impl Iterator<Item = (bool, &SecretRef, u64)> {
    [(false, &t.spec.secrets), (true, &t.spec.configs)]
        .into_iter()
        .flat_map(|(config, refs)| refs.iter().map(move |r| (config, r)))
        .filter_map(|(config, r)| t.versions.get(&r.secret_id).map(|v| (config, r, *v)))
}

/// The secret and config versions the node must be sent now: those a task assigned to it that
/// is to run is to hold, entitled by the policy on this node (secrets), not sent yet. Forgets
/// (in `held`) the versions no assigned task is to hold any more: the agent drops those values
/// too, by the same rule. `None` when no assigned task uses a secret or config.
fn secrets_due(
    state: &State,
    node_id: &str,
    tasks: &[String],
    held: &mut HashSet<Value>,
) -> Option<Due> {
    let referenced: HashSet<Value> = tasks
        .iter()
        .filter_map(|id| state.tasks.get(id))
        .flat_map(|t| values_of(t).map(|(c, r, v)| (c, r.secret_id.clone(), v)))
        .collect();
    held.retain(|v| referenced.contains(v));
    if referenced.is_empty() {
        return None;
    }
    let node = state.nodes.get(node_id)?;
    let memo = super::entitle::Memo::new(state);
    // Value -> the tasks it goes to.
    let mut wanted: BTreeMap<Value, Vec<&str>> = BTreeMap::new();
    for t in tasks.iter().filter_map(|id| state.tasks.get(id)) {
        if t.desired != DesiredState::Running || t.versions.is_empty() {
            continue;
        }
        let entitled = t.spec.secrets.is_empty()
            || memo
                .check(
                    &t.service_id,
                    &t.service_name,
                    t.spec_version,
                    &t.spec,
                    node,
                )
                .is_ok();
        for (config, r, v) in values_of(t) {
            // A secret the task is not entitled to here (any more) is not sent: the
            // orchestrator moves the task; if its agent asks for the value anyway, GetSecret
            // refuses and audits. Configs are not subject to the policy.
            if !config && !entitled {
                continue;
            }
            let key = (config, r.secret_id.clone(), v);
            if !held.contains(&key) {
                wanted.entry(key).or_default().push(&t.id);
            }
        }
    }
    let mut due = Due {
        values: Vec::new(),
        audit: Vec::new(),
    };
    for ((config, id, version), task_ids) in wanted {
        let Some(sec) = state.objects(config).get(&id) else {
            continue;
        };
        let Some(v) = sec.get(version) else {
            continue;
        };
        due.values.push(SecretValue {
            id: sec.id.clone(),
            name: sec.name.clone(),
            value: v.value.expose().to_vec(),
            version,
            config,
        });
        due.audit.push(Command::Audit(delivery_record(
            node,
            Delivered {
                config,
                name: &sec.name,
                id: &sec.id,
                version,
                digest: v.digest,
            },
            &task_ids,
            "session",
        )));
        held.insert((config, id, version));
    }
    Some(due)
}

/// What was delivered: one version of a secret or config.
pub(crate) struct Delivered<'a> {
    /// A config rather than a secret.
    pub config: bool,
    /// Its name.
    pub name: &'a str,
    /// Its ID.
    pub id: &'a str,
    /// The version.
    pub version: u64,
    /// Hex SHA-256 of the value.
    pub digest: &'a str,
}

/// The audit record of a secret (`secret.deliver`) or config (`config.deliver`) value sent to
/// a node.
pub(crate) fn delivery_record(
    node: &Node,
    what: Delivered<'_>,
    task_ids: &[&str],
    via: &str,
) -> AuditEvent {
    let kind = crate::store::model::kind(what.config);
    AuditEvent::now(
        Actor::system(),
        &format!("{kind}.deliver"),
        what.name,
        Outcome::Ok,
    )
    .with(&format!("{kind}_id"), what.id.to_string())
    .with("version", what.version.to_string())
    .with("digest", what.digest.to_string())
    .with("node", node.id.clone())
    .with("tasks", task_ids.join(","))
    .with("via", via.to_string())
}

/// What a node asks for (`Dispatcher.GetSecret`): one version of a secret or config for one
/// of its tasks.
pub(crate) struct Request<'a> {
    /// The task.
    pub task_id: &'a str,
    /// The secret or config ID.
    pub id: &'a str,
    /// The version the task is to hold.
    pub version: u64,
    /// A config rather than a secret.
    pub config: bool,
}

/// Answers a node's request for one secret or config value (`Dispatcher.GetSecret`): only for
/// a task assigned to that node, to run, referencing it, for the version the task is to hold,
/// and (secrets) with the policy's consent. The refusal does not say whether a task or secret
/// exists on another node.
pub(crate) fn requested_secret(
    state: &State,
    node_id: &str,
    req: &Request<'_>,
) -> Result<(SecretValue, AuditEvent), String> {
    let what = crate::store::model::kind(req.config);
    let not_yours = || {
        format!(
            "task {} is not assigned to node {node_id}",
            crate::util::quote(req.task_id)
        )
    };
    let task = state
        .tasks
        .get(req.task_id)
        .filter(|t| t.node_id == node_id)
        .ok_or_else(not_yours)?;
    if task.desired != DesiredState::Running || task.status.state.is_terminal() {
        return Err(format!("task {} is not to run any more", req.task_id));
    }
    let refs = if req.config {
        &task.spec.configs
    } else {
        &task.spec.secrets
    };
    let Some(r) = refs.iter().find(|r| r.secret_id == req.id) else {
        return Err(format!(
            "task {} does not use {what} {}",
            crate::util::quote(req.task_id),
            crate::util::quote(req.id)
        ));
    };
    let due = task.versions.get(req.id).copied().unwrap_or(0);
    if due != req.version {
        return Err(format!(
            "task {} is to hold version {due} of {what} {}, not version {}",
            crate::util::quote(req.task_id),
            r.secret_name,
            req.version
        ));
    }
    let node = state.nodes.get(node_id).ok_or_else(not_yours)?;
    if !req.config {
        let engine = super::entitle::engine(state);
        let labels = state
            .services
            .get(&task.service_id)
            .map(|s| s.spec.labels.clone())
            .unwrap_or_default();
        let svc = super::entitle::ServiceId {
            id: &task.service_id,
            name: &task.service_name,
            labels: &labels,
        };
        super::entitle::check(&engine, state, &svc, &task.spec, node)
            .map_err(|d| format!("the policy denies it: {d}"))?;
    }
    let sec = state
        .objects(req.config)
        .get(req.id)
        .ok_or_else(|| format!("{what} {} no longer exists", r.secret_name))?;
    let v = sec.get(req.version).ok_or_else(|| {
        format!(
            "{what} {} no longer keeps version {}",
            sec.name, req.version
        )
    })?;
    let record = delivery_record(
        node,
        Delivered {
            config: req.config,
            name: &sec.name,
            id: &sec.id,
            version: req.version,
            digest: v.digest,
        },
        &[req.task_id],
        "request",
    );
    Ok((
        SecretValue {
            id: sec.id.clone(),
            name: sec.name.clone(),
            value: v.value.expose().to_vec(),
            version: req.version,
            config: req.config,
        },
        record,
    ))
}

/// One round: reconcile, then place what is pending as the reconciliation leaves the tasks
/// (the tasks it created among them), committed together: a new service's tasks are created
/// and assigned in one round and one commit, not in two rounds with a rest between them.
fn decide(
    s: &State,
    now: time::OffsetDateTime,
    new_id: &mut dyn FnMut() -> String,
) -> Vec<Command> {
    let mut cmds = super::orchestrator::reconcile(s, now, new_id);
    let placed = {
        let view = RoundView::of(s, &cmds);
        super::scheduler::schedule_over(s, view.tasks(), now)
    };
    merge_placed(s, &mut cmds, placed);
    cmds
}

/// The tasks as they will be once a round's commands are applied (tasks put replace the
/// state's, tasks removed are gone), without copying any.
struct RoundView<'a> {
    state: &'a State,
    put: Vec<&'a Task>,
    replaced: HashSet<&'a str>,
}

impl<'a> RoundView<'a> {
    fn of(state: &'a State, cmds: &'a [Command]) -> Self {
        let mut put = Vec::new();
        let mut replaced = HashSet::new();
        for c in cmds {
            match c {
                Command::PutTasks(tasks) => {
                    for t in tasks {
                        replaced.insert(t.id.as_str());
                        put.push(t);
                    }
                }
                Command::RemoveTasks(ids) => replaced.extend(ids.iter().map(String::as_str)),
                _ => {}
            }
        }
        RoundView {
            state,
            put,
            replaced,
        }
    }

    fn tasks(&self) -> impl Iterator<Item = &'a Task> + Clone + '_ {
        let kept = self
            .state
            .tasks
            .values()
            .filter(|t| !self.replaced.contains(t.id.as_str()));
        kept.chain(self.put.iter().copied())
    }
}

/// Writes the scheduler's decisions into the round's commands: over the reconciliation's own
/// copy of a task where it has one, else over a copy of the state's (a task pending from an
/// earlier round), added in ID order.
fn merge_placed(s: &State, cmds: &mut Vec<Command>, placed: Vec<(String, Decision)>) {
    if placed.is_empty() {
        return;
    }
    let mut placed: HashMap<String, Decision> = placed.into_iter().collect();
    for c in cmds.iter_mut() {
        if let Command::PutTasks(tasks) = c {
            for t in tasks.iter_mut() {
                if let Some(d) = placed.remove(&t.id) {
                    d.apply(t);
                }
            }
        }
    }
    if !placed.is_empty() {
        let mut rest: Vec<Task> = placed
            .into_iter()
            .filter_map(|(id, d)| d.applied_to(s, &id))
            .collect();
        rest.sort_by(|a, b| a.id.cmp(&b.id));
        cmds.push(Command::PutTasks(rest));
    }
}

/// The encoded size the orchestrator's tasks take in one proposal: half a Raft entry's bound
/// ([`crate::store::wire::MAX_COMMAND_BYTES`]), the rest for the other commands of the batch.
const BATCH_BYTES: usize = crate::store::wire::MAX_COMMAND_BYTES / 2;

/// The orchestrator's commands cut into batches whose tasks take at most `budget` encoded
/// bytes each (one task over it goes alone): the first batch holds every other command with
/// the first tasks (a service and its first new tasks stay together), each next one more of
/// the tasks, in order, and the last the removals.
fn bounded(cmds: Vec<Command>, budget: usize) -> Vec<Vec<Command>> {
    let mut first = Vec::new();
    let mut chunks: Vec<Vec<Task>> = vec![Vec::new()];
    let mut used = 0usize;
    let mut removals = Vec::new();
    for c in cmds {
        match c {
            Command::PutTasks(tasks) => {
                for t in tasks {
                    let size = crate::store::wire::size_of(&t).unwrap_or(budget);
                    if used + size > budget && chunks.last().is_some_and(|c| !c.is_empty()) {
                        chunks.push(Vec::new());
                        used = 0;
                    }
                    used += size;
                    if let Some(c) = chunks.last_mut() {
                        c.push(t);
                    }
                }
            }
            Command::RemoveTasks(ids) => removals.extend(ids),
            other => first.push(other),
        }
    }
    let mut out: Vec<Vec<Command>> = Vec::new();
    for (i, tasks) in chunks.into_iter().enumerate() {
        let mut batch = if i == 0 {
            std::mem::take(&mut first)
        } else {
            Vec::new()
        };
        if !tasks.is_empty() {
            batch.push(Command::PutTasks(tasks));
        }
        if !batch.is_empty() {
            out.push(batch);
        }
    }
    if !removals.is_empty() {
        match out.last_mut() {
            Some(last) => last.push(Command::RemoveTasks(removals)),
            None => out.push(vec![Command::RemoveTasks(removals)]),
        }
    }
    out
}

/// How long the orchestrator rests after a round that took `cost`: twice its cost, so that
/// rounds take at most a third of a core however fast changes come in (with 10,000 tasks a
/// round costs tens of milliseconds, and a round per committed report left Raft no CPU: writes
/// went unconfirmed for 15 s). Rounds under a millisecond do not rest; none rests over
/// [`MAX_REST`].
fn rest_after(cost: Duration) -> Duration {
    let rest = cost.saturating_mul(2).min(MAX_REST);
    if rest < Duration::from_millis(2) {
        Duration::ZERO
    } else {
        rest
    }
}

/// How often the orchestrator runs a round without a change while one could decide
/// differently with time ([`super::orchestrator::awaits_clock`]).
const CLOCK_TICK: Duration = Duration::from_millis(500);

/// How often it runs one on a settled swarm with no change at all: a backstop only.
const IDLE_TICK: Duration = Duration::from_secs(10);

/// The longest rest between orchestrator rounds.
const MAX_REST: Duration = Duration::from_millis(500);

/// What operators last asked of the services: a digest of each service's ID and revision.
/// The revision moves with every operator change (create, update, scale, rollback) and
/// removal drops the ID, while the orchestrator's own writes (rollout progress) leave it, so
/// the digest moves only when an operator acted.
fn operator_mark(s: &State) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    for (id, svc) in &s.services {
        id.hash(&mut h);
        svc.revision.hash(&mut h);
    }
    h.finish()
}

/// Rests `rest` after a round, or less when an operator changes a service meanwhile: the
/// pacing is there for floods of task reports, and a `service create` or `scale` arriving
/// during it is decided at once, not after the last report round's rest. `mark` is
/// [`operator_mark`] of the state the round decided on.
async fn pause(
    mgr: &Manager,
    others: &mut tokio::sync::watch::Receiver<u64>,
    mark: u64,
    rest: Duration,
) {
    let until = tokio::time::Instant::now() + rest;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(until) => return,
            changed = others.changed() => {
                if changed.is_err() {
                    tokio::time::sleep_until(until).await;
                    return;
                }
                if mgr.read(operator_mark) != mark {
                    return;
                }
            }
        }
    }
}

/// The leader's orchestration loop: reconcile and schedule ([`decide`]) on every change (paced by
/// [`rest_after`], cut short by an operator's change: [`pause`]).
pub async fn run_orchestrator(mgr: Arc<Manager>) {
    let mut applied = mgr.state().subscribe();
    // Entries that change more than tasks (an operator's change among them).
    let mut others = mgr.state().wake().others();
    // A large service's IDs come from a few draws of the system's random bits, not one each.
    let mut ids = skep_pki::Ids::new();
    let mut new_id = || ids.id();
    let mut rest = Duration::ZERO;
    let mut mark = 0;
    // Whether the last round's state awaits the clock (a follower ticks as before).
    let mut clock = true;
    loop {
        if !rest.is_zero() {
            pause(&mgr, &mut others, mark, rest).await;
        }
        if mgr.is_leader() {
            let now = time::OffsetDateTime::now_utc();
            let started = std::time::Instant::now();
            // Seen before the read: a change applied after it wakes the next pause.
            others.borrow_and_update();
            let cmds = mgr.read(|s| {
                mark = operator_mark(s);
                clock = super::orchestrator::awaits_clock(s, now);
                decide(s, now, &mut new_id)
            });
            rest = rest_after(started.elapsed());
            if !cmds.is_empty() {
                // In proposals each well within a Raft entry's bound: the tasks of a large
                // service do not fit in one. A later one failing leaves the earlier ones
                // committed, which the next round takes as its starting point.
                for batch in bounded(cmds, BATCH_BYTES) {
                    if let Err(e) = mgr.propose(Command::Batch(batch)).await {
                        tracing::warn!(error = %e, "orchestrator could not commit its decisions");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        break;
                    }
                }
                continue;
            }
        } else {
            clock = true;
        }
        // Restart delays and update delays need a clock tick even when nothing changes; a
        // settled swarm waits for a change (a round over 10,000 tasks costs tens of
        // milliseconds, and ticking every half second kept an idle leader busy).
        let tick = if clock { CLOCK_TICK } else { IDLE_TICK };
        let _ = tokio::time::timeout(tick, applied.changed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures;
    use crate::store::service::*;

    fn task(id: &str, desired: DesiredState) -> Task {
        Task {
            id: id.into(),
            spec: TaskSpec {
                command: vec!["/bin/true".into()],
                ..fixtures::task_spec()
            },
            desired,
            ..fixtures::task()
        }
    }

    #[test]
    fn a_session_message_waits_in_its_channel_as_one_pointer() {
        // Every open session keeps a block or two of 32 slots: the leader of 1,000 nodes held
        // 7 MB of them with the message inline (heaptrack, docs/performance.md).
        assert_eq!(size_of::<SessionItem>(), size_of::<usize>());
    }

    #[test]
    fn an_orchestrator_round_rests_twice_its_cost_within_bounds() {
        assert_eq!(rest_after(Duration::from_micros(300)), Duration::ZERO);
        assert_eq!(
            rest_after(Duration::from_millis(40)),
            Duration::from_millis(80)
        );
        assert_eq!(rest_after(Duration::from_secs(3)), MAX_REST);
    }

    #[test]
    fn the_operator_mark_moves_with_an_operators_change_to_a_service_only() {
        let mut s = State::default();
        s.services
            .insert("s1".into(), fixtures::service("s1", "web"));
        let at_first = operator_mark(&s);
        // The orchestrator's own writes (an automatic rollback's new version, its time) and
        // task changes leave the mark.
        if let Some(svc) = s.services.get_mut("s1") {
            svc.updated_at = "2026-12-06T21:00:00Z".into();
            svc.version += 1;
        }
        s.tasks
            .insert("t1".into(), task("t1", DesiredState::Running));
        assert_eq!(operator_mark(&s), at_first);
        // An operator's scale or update bumps the revision; a create or removal changes the set.
        if let Some(svc) = s.services.get_mut("s1") {
            svc.revision += 1;
        }
        let scaled = operator_mark(&s);
        assert_ne!(scaled, at_first);
        s.services
            .insert("s2".into(), fixtures::service("s2", "api"));
        let created = operator_mark(&s);
        assert_ne!(created, scaled);
        s.services.remove("s2");
        assert_eq!(operator_mark(&s), scaled);
        s.services.remove("s1");
        assert_ne!(operator_mark(&s), scaled);
    }

    /// Three nodes with room for two tasks of a CPU each (n3 for one); service `web` running
    /// one task on n1, an older task of `web` still pending, and service `api` of five replicas
    /// just created (no task yet).
    fn placement_state() -> (State, time::OffsetDateTime) {
        let mut s = State::default();
        for (id, cpus) in [("n1", 2), ("n2", 2), ("n3", 1)] {
            let mut n = fixtures::node(id);
            n.runtimes = vec![Runtime::Exec];
            n.resources = Resources {
                nano_cpus: cpus * 1_000_000_000,
                memory_bytes: 0,
            };
            s.nodes.insert(id.into(), n);
        }
        let cpu = Resources {
            nano_cpus: 1_000_000_000,
            memory_bytes: 0,
        };
        let mut web = fixtures::service("s", "web");
        web.spec.mode = Mode::Replicated { replicas: 2 };
        web.spec.task.reservations = cpu;
        let mut running = Task {
            spec: web.spec.task.clone(),
            status: fixtures::task_status(TaskState::Running),
            created_at: "2026-01-01T00:00:00Z".into(),
            ..fixtures::task()
        };
        running.id = "w1".into();
        let pending = Task {
            id: "w2".into(),
            slot: 2,
            node_id: String::new(),
            status: fixtures::task_status(TaskState::Pending),
            ..running.clone()
        };
        let mut api = fixtures::service("a", "api");
        api.spec.mode = Mode::Replicated { replicas: 5 };
        api.spec.task.reservations = cpu;
        s.services.insert("s".into(), web);
        s.services.insert("a".into(), api);
        s.tasks.insert("w1".into(), running);
        s.tasks.insert("w2".into(), pending);
        let now = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("valid time");
        (s, now)
    }

    fn ids() -> impl FnMut() -> String {
        let mut n = 0;
        move || {
            n += 1;
            format!("t{n:03}")
        }
    }

    fn placed(s: &State) -> BTreeMap<String, (String, TaskState, String)> {
        s.tasks
            .values()
            .map(|t| {
                let st = &t.status;
                (
                    t.id.clone(),
                    (t.node_id.clone(), st.state, st.message.clone()),
                )
            })
            .collect()
    }

    #[test]
    fn a_round_creates_and_places_tasks_as_a_reconcile_and_a_schedule_round_would() {
        let (s, now) = placement_state();
        let mut one = s.clone();
        for c in decide(&s, now, &mut ids()) {
            assert_eq!(one.apply(c), crate::store::model::Response::Ok);
        }
        // The two rounds of before: reconcile, commit, schedule, commit.
        let mut two = s.clone();
        for c in super::super::orchestrator::reconcile(&s, now, &mut ids()) {
            assert_eq!(two.apply(c), crate::store::model::Response::Ok);
        }
        for c in super::super::scheduler::schedule(&two, now) {
            assert_eq!(two.apply(c), crate::store::model::Response::Ok);
        }
        assert_eq!(placed(&one), placed(&two));
        // Room for four more tasks of a CPU: the older pending task first, then three of the
        // five new ones; the other two wait, saying why.
        let assigned = |st: &State| {
            st.tasks
                .values()
                .filter(|t| t.status.state == TaskState::Assigned)
                .count()
        };
        assert_eq!(assigned(&one), 4);
        assert_eq!(one.tasks["w2"].status.state, TaskState::Assigned);
        let waiting: Vec<&Task> = one
            .tasks
            .values()
            .filter(|t| t.status.state == TaskState::Pending)
            .collect();
        assert_eq!(waiting.len(), 2);
        assert!(
            waiting[0].status.message.starts_with("no suitable node"),
            "{}",
            waiting[0].status.message
        );
        assert!(
            decide(&one, now, &mut ids()).is_empty(),
            "nothing is left for a second round"
        );
    }

    #[test]
    fn a_large_service_is_committed_in_batches_each_within_a_raft_entry() {
        let mut big = crate::store::fixtures::task();
        big.spec.env = (0..20)
            .map(|i| format!("VARIABLE_{i}=some value {i}"))
            .collect();
        let tasks: Vec<Task> = (0..10_000)
            .map(|i| Task {
                id: format!("task-{i:05}"),
                ..big.clone()
            })
            .collect();
        let cmds = vec![
            Command::PutService(Box::new(crate::store::fixtures::service("s", "web"))),
            Command::PutTasks(tasks.clone()),
            Command::RemoveTasks(vec!["old".into()]),
        ];
        // As one batch it could never be committed: that is what stalled a 10,000-task create.
        assert!(crate::store::wire::check_command(&Command::Batch(cmds.clone())).is_err());
        let batches = bounded(cmds, BATCH_BYTES);
        assert!(batches.len() > 1);
        let mut seen = Vec::new();
        for (i, b) in batches.iter().enumerate() {
            let batch = Command::Batch(b.clone());
            assert!(
                crate::store::wire::check_command(&batch).is_ok(),
                "batch {i} too large"
            );
            for c in b {
                match c {
                    Command::PutService(_) => assert_eq!(i, 0, "the service goes first"),
                    Command::PutTasks(t) => seen.extend(t.iter().map(|t| t.id.clone())),
                    Command::RemoveTasks(_) => assert_eq!(i, batches.len() - 1),
                    _ => panic!("an unexpected command"),
                }
            }
        }
        let want: Vec<String> = tasks.iter().map(|t| t.id.clone()).collect();
        assert_eq!(seen, want, "every task once, in order");
        assert_eq!(bounded(Vec::new(), BATCH_BYTES).len(), 0);
    }

    #[test]
    fn sends_everything_first_then_only_changes() {
        for shared in [false, true] {
            let mut sent = HashMap::new();
            let a = task("a", DesiredState::Running);
            let b = task("b", DesiredState::Running);
            let mut pass = |now: &[&Task], complete| {
                let changes = diff(&mut sent, now, complete, shared);
                message(changes, complete)
            };
            let first = pass(&[&a, &b], true).unwrap();
            assert!(first.complete);
            let tasks = crate::api::assignments::decode(&first.specs_json, &first.tasks_json);
            let tasks: Vec<Task> = tasks.into_iter().collect::<Result<_, _>>().unwrap();
            assert_eq!(tasks, vec![a.clone(), b.clone()]);
            assert_eq!(
                first.specs_json.len(),
                usize::from(shared),
                "one spec, shared"
            );
            assert!(pass(&[&a, &b], false).is_none(), "no change, no message");
            let mut b2 = b;
            b2.desired = DesiredState::Shutdown;
            let next = pass(&[&b2], false).unwrap();
            assert_eq!(next.removed, vec!["a".to_string()]);
            assert_eq!(next.tasks_json.len(), 1);
            assert!(next.tasks_json[0].contains("shutdown"));
        }
    }

    fn cluster_state() -> State {
        use crate::store::model::Node;
        let mut s = State::default();
        for id in ["n1", "n2"] {
            s.nodes.insert(
                id.into(),
                Node {
                    hostname: id.into(),
                    addr: String::new(),
                    cert_serial: String::new(),
                    cert_not_after: String::new(),
                    created_at: String::new(),
                    updated_at: String::new(),
                    ..fixtures::node(id)
                },
            );
        }
        s.secrets.insert(
            "sec1".into(),
            crate::store::secret_obj::Secret::new(
                "sec1".into(),
                "db".into(),
                [("tier".to_string(), "prod".to_string())].into(),
                crate::secret::SecretBytes::new(b"hunter2".to_vec()),
                "",
            ),
        );
        let mut t = task("a", DesiredState::Running);
        t.spec.secrets = vec![SecretRef {
            secret_id: "sec1".into(),
            ..SecretRef::new("db")
        }];
        t.versions.insert("sec1".into(), 1);
        s.tasks.insert("a".into(), t);
        s
    }

    /// The example policy: secrets labelled tier=prod only on nodes labelled secure=true.
    fn prod_secrets_on_secure_nodes() -> Option<crate::store::model::PolicyDoc> {
        Some(crate::store::model::PolicyDoc {
            text: include_str!("../../policies/examples/prod-secrets-on-secure-nodes.cedar").into(),
            digest: String::new(),
            updated_at: String::new(),
        })
    }

    /// Version 2 of `sec1`, "swordfish".
    fn push_swordfish() -> Command {
        Command::PushVersion {
            config: false,
            id: "sec1".into(),
            version: 2,
            value: crate::secret::SecretBytes::new(b"swordfish".to_vec()),
            at: "t".into(),
        }
    }

    /// The rollout step that moves task `a` to `version` of `sec1`.
    fn move_a_to(version: u64) -> Command {
        Command::AdvanceVersions {
            id: "sec1".into(),
            version,
            tasks: vec!["a".into()],
        }
    }

    /// Version 1 of `id` for task `task` on `node`.
    fn ask(
        s: &State,
        node: &str,
        task: &str,
        id: &str,
    ) -> Result<(SecretValue, AuditEvent), String> {
        ask_version(s, node, task, id, 1)
    }

    fn ask_version(
        s: &State,
        node: &str,
        task: &str,
        id: &str,
        version: u64,
    ) -> Result<(SecretValue, AuditEvent), String> {
        requested_secret(
            s,
            node,
            &Request {
                task_id: task,
                id,
                version,
                config: false,
            },
        )
    }

    #[test]
    fn a_new_version_goes_out_once_the_task_is_to_hold_it_and_only_that_version_is_answered() {
        let mut s = cluster_state();
        let mut held = HashSet::new();
        secrets_due(&s, "n1", &["a".to_string()], &mut held).unwrap();
        s.apply(push_swordfish());
        // Not moved yet: nothing new is sent, and version 2 is refused.
        assert!(
            secrets_due(&s, "n1", &["a".to_string()], &mut held)
                .unwrap()
                .values
                .is_empty()
        );
        let e = ask_version(&s, "n1", "a", "sec1", 2).unwrap_err();
        assert!(
            e.contains("is to hold version 1 of secret db, not version 2"),
            "{e}"
        );
        s.apply(move_a_to(2));
        let due = secrets_due(&s, "n1", &["a".to_string()], &mut held).unwrap();
        assert_eq!(due.values.len(), 1);
        assert_eq!(
            (due.values[0].version, &due.values[0].value[..]),
            (2, &b"swordfish"[..])
        );
        let Command::Audit(rec) = &due.audit[0] else {
            panic!("not an audit record")
        };
        assert_eq!(rec.details["version"], "2");
        assert!(ask_version(&s, "n1", "a", "sec1", 1).is_err());
        assert!(ask_version(&s, "n1", "a", "sec1", 2).is_ok());
        // Version 1 is forgotten by the session: no task is to hold it.
        assert!(!held.contains(&(false, "sec1".to_string(), 1)));
    }

    #[test]
    fn a_policy_change_in_the_middle_of_a_rollout_holds_back_the_versions_still_to_go() {
        let mut s = cluster_state();
        let mut held = HashSet::new();
        secrets_due(&s, "n1", &["a".to_string()], &mut held).unwrap();
        s.apply(push_swordfish());
        // The policy changes between the update and the step that moves the task.
        s.policy = prod_secrets_on_secure_nodes();
        s.apply(move_a_to(2));
        let due = secrets_due(&s, "n1", &["a".to_string()], &mut held).unwrap();
        assert!(
            due.values.is_empty(),
            "version 2 went to a node no longer entitled"
        );
        assert!(
            ask_version(&s, "n1", "a", "sec1", 2)
                .unwrap_err()
                .contains("policy denies")
        );
    }

    #[test]
    fn a_config_goes_to_its_tasks_node_whatever_the_secret_policy() {
        let mut s = cluster_state();
        s.policy = prod_secrets_on_secure_nodes();
        s.configs.insert(
            "cfg1".into(),
            crate::store::secret_obj::Secret::new(
                "cfg1".into(),
                "app_conf".into(),
                Default::default(),
                crate::secret::SecretBytes::new(b"listen 80;".to_vec()),
                "",
            ),
        );
        if let Some(mut t) = s.tasks.get_mut("a") {
            t.spec.configs = vec![SecretRef {
                secret_id: "cfg1".into(),
                target: "/etc/app.conf".into(),
                on_change: OnChange::Restart,
                ..SecretRef::new("app_conf")
            }];
            t.versions.insert("cfg1".into(), 1);
        }
        let due = secrets_due(&s, "n1", &["a".to_string()], &mut HashSet::new()).unwrap();
        assert_eq!(
            due.values.len(),
            1,
            "the config only: the secret is not entitled"
        );
        assert!(due.values[0].config);
        let Command::Audit(rec) = &due.audit[0] else {
            panic!("not an audit record")
        };
        assert_eq!(rec.action, "config.deliver");
    }

    #[test]
    fn a_secret_goes_once_to_the_node_of_a_task_using_it_and_is_forgotten_after() {
        let s = cluster_state();
        let mut held = HashSet::new();
        let due = secrets_due(&s, "n1", &["a".to_string()], &mut held).unwrap();
        assert_eq!(due.values.len(), 1);
        assert_eq!(due.values[0].value, b"hunter2");
        let Command::Audit(rec) = &due.audit[0] else {
            panic!("not an audit record")
        };
        assert_eq!(rec.action, "secret.deliver");
        assert_eq!(rec.details["node"], "n1");
        assert_eq!(rec.details["tasks"], "a");
        // Once held, not sent again; other nodes with no such task get nothing.
        let again = secrets_due(&s, "n1", &["a".to_string()], &mut held).unwrap();
        assert!(again.values.is_empty());
        assert!(secrets_due(&s, "n2", &[], &mut HashSet::new()).is_none());
        // No task uses it any more: forgotten, so a later task gets it again.
        assert!(secrets_due(&s, "n1", &[], &mut held).is_none());
        assert!(held.is_empty());
    }

    #[test]
    fn no_value_for_a_task_that_is_stopping_or_not_entitled() {
        let mut s = cluster_state();
        if let Some(mut t) = s.tasks.get_mut("a") {
            t.desired = DesiredState::Shutdown;
        }
        let due = secrets_due(&s, "n1", &["a".to_string()], &mut HashSet::new()).unwrap();
        assert!(due.values.is_empty());
        // Entitlement: prod secrets only on secure nodes.
        let mut s = cluster_state();
        s.policy = prod_secrets_on_secure_nodes();
        let due = secrets_due(&s, "n1", &["a".to_string()], &mut HashSet::new()).unwrap();
        assert!(
            due.values.is_empty(),
            "sent to a node the policy does not entitle"
        );
        let e = ask(&s, "n1", "a", "sec1").unwrap_err();
        assert!(e.contains("policy denies"), "{e}");
        if let Some(n) = s.nodes.get_mut("n1") {
            n.labels.insert("secure".into(), "true".into());
        }
        let due = secrets_due(&s, "n1", &["a".to_string()], &mut HashSet::new()).unwrap();
        assert_eq!(due.values.len(), 1);
    }

    #[test]
    fn a_request_is_answered_only_for_the_callers_own_task_and_its_secrets() {
        let s = cluster_state();
        let (v, rec) = ask(&s, "n1", "a", "sec1").unwrap();
        assert_eq!(v.value, b"hunter2");
        assert_eq!(rec.details["via"], "request");
        let other = ask(&s, "n2", "a", "sec1").unwrap_err();
        let missing = ask(&s, "n2", "zzz", "sec1").unwrap_err();
        assert!(other.contains("not assigned to node n2"), "{other}");
        // A missing task and another node's task read the same.
        assert_eq!(other.replace("\"a\"", "X"), missing.replace("\"zzz\"", "X"));
        let e = ask(&s, "n1", "a", "sec2").unwrap_err();
        assert!(e.contains("does not use"), "{e}");
    }

    #[test]
    fn no_secret_is_answered_for_a_task_told_to_stop() {
        // The orchestrator wants it stopped; it has not stopped yet.
        let mut stopping = cluster_state();
        if let Some(mut t) = stopping.tasks.get_mut("a") {
            t.desired = DesiredState::Shutdown;
            t.status.state = TaskState::Running;
        }
        let e = ask(&stopping, "n1", "a", "sec1").unwrap_err();
        assert!(e.contains("not to run any more"), "{e}");
    }

    #[test]
    fn no_secret_is_answered_for_a_task_that_ended() {
        // Still desired running (it is about to be replaced), but ended.
        for end in [TaskState::Complete, TaskState::Shutdown, TaskState::Failed] {
            let mut ended = cluster_state();
            if let Some(mut t) = ended.tasks.get_mut("a") {
                t.status.state = end;
            }
            let e = ask(&ended, "n1", "a", "sec1").unwrap_err();
            assert!(e.contains("not to run any more"), "{end:?}: {e}");
        }
    }

    #[test]
    fn a_session_carries_only_the_tasks_placed_on_its_own_node() {
        let mut s = State::default();
        let mut other = task("b", DesiredState::Running);
        other.node_id = "n2".into();
        let mut ended = task("c", DesiredState::Running);
        ended.status.state = TaskState::Failed;
        for t in [task("a", DesiredState::Running), other, ended] {
            s.tasks.insert(t.id.clone(), t);
        }
        let ids = |v: Vec<&Task>| v.iter().map(|t| t.id.clone()).collect::<Vec<_>>();
        let (active, all) = assigned(&s, "n1");
        assert_eq!(ids(active), ["a"], "n1 is sent n2's task or an ended one");
        assert_eq!(all, HashSet::from(["a", "c"]));
        let (active, all) = assigned(&s, "n2");
        assert_eq!(ids(active), ["b"]);
        assert_eq!(all, HashSet::from(["b"]));
        assert!(assigned(&s, "n3").1.is_empty());
    }

    fn status(state: TaskState) -> TaskStatus {
        TaskStatus {
            state,
            message: String::new(),
            err: String::new(),
            exit_code: None,
            timestamp: String::new(),
            held: Default::default(),
        }
    }

    fn report(s: &mut State, node: &str, state: TaskState) {
        let _ = s.apply(Command::ReportTasks {
            node_id: node.into(),
            updates: vec![("a".into(), status(state))],
        });
    }

    /// A state holding n1's task `a`.
    fn with_task() -> State {
        let mut s = State::default();
        s.tasks.insert("a".into(), task("a", DesiredState::Running));
        s
    }

    #[test]
    fn a_task_report_from_another_node_changes_nothing() {
        let mut s = with_task();
        report(&mut s, "n2", TaskState::Running);
        assert_eq!(s.tasks["a"].status.state, TaskState::Assigned);
        report(&mut s, "n2", TaskState::Failed);
        assert_eq!(s.tasks["a"].status.state, TaskState::Assigned);
        // Its own node's report counts.
        report(&mut s, "n1", TaskState::Running);
        assert_eq!(s.tasks["a"].status.state, TaskState::Running);
    }

    #[test]
    fn a_task_report_never_moves_a_task_backwards() {
        let mut s = with_task();
        report(&mut s, "n1", TaskState::Running);
        report(&mut s, "n1", TaskState::Starting);
        assert_eq!(s.tasks["a"].status.state, TaskState::Running);
    }

    #[test]
    fn an_ended_task_stays_ended_whatever_is_reported_later() {
        let mut s = with_task();
        report(&mut s, "n1", TaskState::Complete);
        assert_eq!(s.tasks["a"].status.state, TaskState::Complete);
        report(&mut s, "n1", TaskState::Failed);
        assert_eq!(s.tasks["a"].status.state, TaskState::Complete);
    }
}
