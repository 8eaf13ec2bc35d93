//! Orchestrator and scheduler driven together over hand-built states: each round applies the
//! returned commands, then a simulated agent reports task states, until nothing changes.

use std::collections::BTreeMap;

use time::{Duration, OffsetDateTime};

use super::*;
use crate::manager::scheduler::{explain_unschedulable, schedule};
use crate::spec::service::parse_constraint;
use crate::store::fixtures;
use crate::store::model::{Availability, Node, NodeRole, NodeState, Response};
use crate::store::service::{
    Resources, RestartCondition, RestartPolicy, Runtime, ServiceSpec, TaskSpec, UpdateConfig,
};

fn node(id: &str) -> Node {
    Node {
        runtimes: vec![Runtime::Exec, Runtime::Docker],
        resources: Resources {
            nano_cpus: 4_000_000_000,
            memory_bytes: 8 << 30,
        },
        ..fixtures::node(id)
    }
}

fn spec(name: &str, mode: Mode) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        labels: BTreeMap::new(),
        mode,
        task: TaskSpec {
            restart: RestartPolicy {
                condition: RestartCondition::Any,
                delay_ms: 0,
                max_attempts: 0,
            },
            ..fixtures::task_spec()
        },
        update: UpdateConfig::default(),
        rollback: UpdateConfig::default(),
        ports: Vec::new(),
        networks: Vec::new(),
        expose: Vec::new(),
        expose_udp: Vec::new(),
    }
}

struct Sim {
    state: State,
    now: OffsetDateTime,
    next: u64,
    /// Tasks whose command starts with "fail" fail as soon as they are assigned.
    failing: bool,
}

impl Sim {
    fn new(nodes: &[&str]) -> Sim {
        let mut state = State::default();
        for n in nodes {
            state.apply(Command::PutNode(node(n)));
        }
        Sim {
            state,
            now: OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("valid time"),
            next: 0,
            failing: true,
        }
    }

    fn apply(&mut self, cmds: Vec<Command>) {
        for c in cmds {
            assert_eq!(self.state.apply(c), Response::Ok);
        }
    }

    fn put_node(&mut self, n: Node) {
        self.apply(vec![Command::PutNode(n)]);
    }

    fn edit_node(&mut self, id: &str, f: impl FnOnce(&mut Node)) {
        let mut n = self.state.nodes[id].clone();
        f(&mut n);
        self.put_node(n);
    }

    fn add_service(&mut self, id: &str, spec: ServiceSpec) {
        let now = rfc3339(self.now);
        self.apply(vec![Command::PutService(Box::new(Service {
            id: id.into(),
            spec,
            version: 1,
            previous: None,
            update: None,
            revision: 0,
            vip: None,
            created_at: now.clone(),
            updated_at: now,
        }))]);
    }

    /// What the control API does on `service update`: new spec, old one kept, version bumped.
    fn update_service(&mut self, id: &str, f: impl FnOnce(&mut ServiceSpec)) {
        let mut svc = self.state.services[id].clone();
        svc.previous = Some(svc.spec.clone());
        f(&mut svc.spec);
        svc.version += 1;
        svc.updated_at = rfc3339(self.now);
        self.apply(vec![Command::PutService(Box::new(svc))]);
    }

    fn reconcile(&mut self) -> Vec<Command> {
        let mut n = self.next;
        let cmds = reconcile(&self.state, self.now, &mut || {
            n += 1;
            format!("t{n:05}")
        });
        self.next = n;
        cmds
    }

    fn orchestrate(&mut self) -> bool {
        let cmds = self.reconcile();
        let changed = !cmds.is_empty();
        self.apply(cmds);
        changed
    }

    fn place(&mut self) -> bool {
        let cmds = schedule(&self.state, self.now);
        let changed = !cmds.is_empty();
        self.apply(cmds);
        changed
    }

    /// The agents: start assigned tasks (or fail the failing ones), stop unwanted ones.
    fn agents(&mut self) -> bool {
        let mut by_node: BTreeMap<String, Vec<(String, TaskStatus)>> = BTreeMap::new();
        let at = rfc3339(self.now);
        for t in self.state.tasks.values() {
            if t.node_id.is_empty() || t.status.state.is_terminal() {
                continue;
            }
            let Some(n) = self.state.nodes.get(&t.node_id) else {
                continue;
            };
            if n.state != NodeState::Ready {
                continue;
            }
            let next = if t.desired != DesiredState::Running {
                Some(TaskState::Shutdown)
            } else if t.status.state >= TaskState::Assigned && t.status.state < TaskState::Running {
                if self.failing && t.spec.command.first().is_some_and(|c| c == "fail") {
                    Some(TaskState::Failed)
                } else {
                    Some(TaskState::Running)
                }
            } else {
                None
            };
            if let Some(s) = next {
                by_node
                    .entry(t.node_id.clone())
                    .or_default()
                    .push((t.id.clone(), status(s, s.as_str(), &at)));
            }
        }
        let changed = !by_node.is_empty();
        for (node_id, updates) in by_node {
            self.apply(vec![Command::ReportTasks { node_id, updates }]);
        }
        changed
    }

    /// Ends one task as its agent would report it.
    fn end(&mut self, id: &str, state: TaskState) {
        let t = &self.state.tasks[id];
        let mut st = status(state, state.as_str(), &rfc3339(self.now));
        st.exit_code = Some(if state == TaskState::Complete { 0 } else { 1 });
        self.apply(vec![Command::ReportTasks {
            node_id: t.node_id.clone(),
            updates: vec![(id.into(), st)],
        }]);
    }

    fn tick(&mut self, secs: i64) {
        self.now += Duration::seconds(secs);
    }

    /// One round: orchestrator, scheduler, agents, one second passes.
    fn step(&mut self) -> bool {
        let a = self.orchestrate();
        let b = self.place();
        let c = self.agents();
        self.tick(1);
        a || b || c
    }

    /// Rounds until nothing changes, then checks both cores have nothing to do.
    fn settle(&mut self) {
        for _ in 0..200 {
            if !self.step() {
                self.assert_fixed_point();
                return;
            }
        }
        panic!("no fixed point after 200 rounds");
    }

    /// Runs `n` rounds whatever happens, checking `check` after every change.
    fn run(&mut self, n: usize, mut check: impl FnMut(&Sim)) {
        for _ in 0..n {
            self.orchestrate();
            check(self);
            self.place();
            check(self);
            self.agents();
            check(self);
            self.tick(1);
        }
    }

    fn assert_fixed_point(&mut self) {
        let cmds = self.reconcile();
        assert!(cmds.is_empty(), "reconcile not idle: {cmds:?}");
        assert!(
            schedule(&self.state, self.now).is_empty(),
            "schedule not idle"
        );
        // A fixed point the clock cannot move is one the leader does not revisit until the
        // state changes (`awaits_clock`): rounds a minute and a day later decide nothing.
        if !awaits_clock(&self.state, self.now) {
            for later in [Duration::minutes(1), Duration::days(1)] {
                let at = self.now + later;
                let mut n = self.next;
                let cmds = reconcile(&self.state, at, &mut || {
                    n += 1;
                    format!("t{n:05}")
                });
                assert!(
                    cmds.is_empty(),
                    "reconcile {later} later not idle: {cmds:?}"
                );
                assert!(
                    schedule(&self.state, at).is_empty(),
                    "schedule {later} later not idle"
                );
            }
        }
    }

    fn live(&self, svc: &str) -> Vec<&Task> {
        self.state
            .tasks
            .values()
            .filter(|t| t.service_id == svc && live(t))
            .collect()
    }

    fn running(&self, svc: &str) -> usize {
        self.live(svc)
            .iter()
            .filter(|t| t.status.state == TaskState::Running)
            .count()
    }

    fn per_node(&self, svc: &str) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for t in self.live(svc) {
            *m.entry(t.node_id.clone()).or_default() += 1;
        }
        m
    }

    fn slot_tasks(&self, svc: &str, slot: u64) -> Vec<&Task> {
        self.state
            .tasks
            .values()
            .filter(|t| t.service_id == svc && t.slot == slot)
            .collect()
    }
}

fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

#[test]
fn six_replicas_spread_two_per_node() {
    let mut sim = Sim::new(&["n1", "n2", "n3"]);
    sim.add_service("s", spec("web", Mode::Replicated { replicas: 6 }));
    // One reconcile and one schedule place all six, spread within the one call.
    assert!(sim.orchestrate());
    let cmds = schedule(&sim.state, sim.now);
    assert_eq!(cmds.len(), 1);
    sim.apply(cmds);
    assert_eq!(
        sim.per_node("s"),
        counts(&[("n1", 2), ("n2", 2), ("n3", 2)])
    );
    sim.settle();
    assert_eq!(sim.running("s"), 6);
    let mut slots: Vec<u64> = sim.live("s").iter().map(|t| t.slot).collect();
    slots.sort();
    assert_eq!(slots, vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn scale_down_stops_the_highest_slots() {
    let mut sim = Sim::new(&["n1", "n2", "n3"]);
    sim.add_service("s", spec("web", Mode::Replicated { replicas: 6 }));
    sim.settle();
    let mut svc = sim.state.services["s"].clone();
    svc.spec.mode = Mode::Replicated { replicas: 2 };
    sim.apply(vec![Command::PutService(Box::new(svc))]);
    let cmds = sim.reconcile();
    let Some(Command::PutTasks(tasks)) = cmds.first() else {
        panic!("expected PutTasks, got {cmds:?}");
    };
    let mut stopped: Vec<u64> = tasks
        .iter()
        .filter(|t| t.desired == DesiredState::Shutdown)
        .map(|t| t.slot)
        .collect();
    stopped.sort();
    assert_eq!(stopped, vec![3, 4, 5, 6]);
    sim.apply(cmds);
    sim.settle();
    let mut slots: Vec<u64> = sim.live("s").iter().map(|t| t.slot).collect();
    slots.sort();
    assert_eq!(slots, vec![1, 2]);
    assert_eq!(sim.running("s"), 2);
    // The stopped tasks stay as history.
    assert_eq!(sim.slot_tasks("s", 6)[0].status.state, TaskState::Shutdown);
}

fn one_task_service(sim: &mut Sim, condition: RestartCondition, max_attempts: u64) -> String {
    let mut sp = spec("job", Mode::Replicated { replicas: 1 });
    sp.task.restart.condition = condition;
    sp.task.restart.max_attempts = max_attempts;
    sim.add_service("s", sp);
    sim.settle();
    let live = sim.live("s");
    assert_eq!(live.len(), 1);
    live[0].id.clone()
}

#[test]
fn restart_condition_any_replaces_completed_tasks() {
    let mut sim = Sim::new(&["n1"]);
    let first = one_task_service(&mut sim, RestartCondition::Any, 0);
    sim.end(&first, TaskState::Complete);
    sim.settle();
    let live = sim.live("s");
    assert_eq!(live.len(), 1);
    assert_ne!(live[0].id, first);
    assert_eq!(live[0].attempt, 1);
    assert_eq!(sim.state.tasks[&first].desired, DesiredState::Shutdown);
}

#[test]
fn restart_condition_on_failure() {
    let mut sim = Sim::new(&["n1"]);
    let first = one_task_service(&mut sim, RestartCondition::OnFailure, 0);
    sim.end(&first, TaskState::Failed);
    sim.settle();
    let second = sim.live("s")[0].id.clone();
    assert_ne!(second, first);
    sim.end(&second, TaskState::Complete);
    sim.settle();
    assert!(
        sim.live("s").is_empty(),
        "a completed task is not restarted"
    );
    assert_eq!(sim.state.tasks[&second].desired, DesiredState::Shutdown);
}

#[test]
fn restart_condition_none_leaves_the_slot_empty() {
    let mut sim = Sim::new(&["n1"]);
    let first = one_task_service(&mut sim, RestartCondition::None, 0);
    sim.end(&first, TaskState::Failed);
    sim.settle();
    assert!(sim.live("s").is_empty());
    assert_eq!(sim.state.tasks[&first].desired, DesiredState::Shutdown);
    // A new spec gives the slot a new start.
    sim.update_service("s", |s| s.task.env = vec!["A=1".into()]);
    sim.settle();
    assert_eq!(sim.running("s"), 1);
}

#[test]
fn max_attempts_stops_restarting() {
    let mut sim = Sim::new(&["n1"]);
    let mut id = one_task_service(&mut sim, RestartCondition::Any, 2);
    for attempt in 0..=2 {
        assert_eq!(sim.state.tasks[&id].attempt, attempt);
        sim.end(&id, TaskState::Failed);
        sim.settle();
        match sim.live("s").first() {
            Some(t) => id = t.id.clone(),
            None => break,
        }
    }
    assert!(sim.live("s").is_empty());
    assert_eq!(sim.slot_tasks("s", 1).len(), 3, "attempts 0, 1 and 2");
}

#[test]
fn restart_delay_holds_the_replacement() {
    let mut sim = Sim::new(&["n1"]);
    let mut sp = spec("web", Mode::Replicated { replicas: 1 });
    sp.task.restart.delay_ms = 10_000;
    sim.add_service("s", sp);
    sim.settle();
    assert!(!awaits_clock(&sim.state, sim.now), "settled");
    let first = sim.live("s")[0].id.clone();
    let ended = sim.now;
    sim.end(&first, TaskState::Failed);
    sim.orchestrate();
    let repl = sim.live("s")[0].clone();
    assert_eq!(repl.not_before, rfc3339(ended + Duration::seconds(10)));
    assert_eq!(repl.status.state, TaskState::Pending);
    for _ in 0..9 {
        // Only the clock moves this state on: the leader keeps ticking.
        assert!(awaits_clock(&sim.state, sim.now));
        sim.tick(1);
        assert!(
            schedule(&sim.state, sim.now).is_empty(),
            "placed before its delay"
        );
        assert!(sim.reconcile().is_empty());
    }
    sim.tick(1);
    assert!(!awaits_clock(&sim.state, sim.now), "the delay is over");
    assert!(sim.place());
    assert_eq!(sim.state.tasks[&repl.id].status.state, TaskState::Assigned);
    sim.settle();
    assert!(!awaits_clock(&sim.state, sim.now));
}

#[test]
fn tasks_leave_a_down_node() {
    let mut sim = Sim::new(&["n1", "n2", "n3"]);
    sim.add_service("s", spec("web", Mode::Replicated { replicas: 6 }));
    sim.settle();
    let on_n1: Vec<String> = sim
        .live("s")
        .iter()
        .filter(|t| t.node_id == "n1")
        .map(|t| t.id.clone())
        .collect();
    sim.edit_node("n1", |n| n.state = NodeState::Down);
    sim.settle();
    for id in &on_n1 {
        let t = &sim.state.tasks[id];
        assert_eq!(t.status.state, TaskState::Orphaned);
        assert_eq!(t.desired, DesiredState::Shutdown);
    }
    assert_eq!(sim.running("s"), 6);
    assert_eq!(sim.per_node("s"), counts(&[("n2", 3), ("n3", 3)]));
    // A node removed from the state is as gone as a down one.
    sim.apply(vec![Command::RemoveNode { id: "n2".into() }]);
    sim.settle();
    assert_eq!(sim.per_node("s"), counts(&[("n3", 6)]));
}

#[test]
fn drain_moves_tasks_and_pause_places_nothing_new() {
    let mut sim = Sim::new(&["n1", "n2", "n3"]);
    sim.add_service("s", spec("web", Mode::Replicated { replicas: 6 }));
    sim.settle();
    sim.edit_node("n1", |n| n.availability = Availability::Drain);
    sim.settle();
    assert_eq!(sim.per_node("s"), counts(&[("n2", 3), ("n3", 3)]));
    assert_eq!(sim.running("s"), 6);

    sim.edit_node("n2", |n| n.availability = Availability::Pause);
    sim.edit_node("n1", |n| n.availability = Availability::Active);
    let mut svc = sim.state.services["s"].clone();
    svc.spec.mode = Mode::Replicated { replicas: 12 };
    sim.apply(vec![Command::PutService(Box::new(svc))]);
    sim.settle();
    // The paused node keeps its tasks and gets no new one.
    assert_eq!(
        sim.per_node("s"),
        counts(&[("n1", 5), ("n2", 3), ("n3", 4)])
    );
}

#[test]
fn global_follows_nodes() {
    let mut sim = Sim::new(&["n1", "n2"]);
    sim.add_service("g", spec("agent", Mode::Global));
    // Global tasks are assigned by the orchestrator, not the scheduler.
    sim.orchestrate();
    assert!(
        sim.live("g")
            .iter()
            .all(|t| t.status.state == TaskState::Assigned && t.slot == 0)
    );
    assert!(schedule(&sim.state, sim.now).is_empty());
    sim.settle();
    assert_eq!(sim.per_node("g"), counts(&[("n1", 1), ("n2", 1)]));
    sim.put_node(node("n3"));
    sim.settle();
    assert_eq!(
        sim.per_node("g"),
        counts(&[("n1", 1), ("n2", 1), ("n3", 1)])
    );
    sim.edit_node("n2", |n| n.availability = Availability::Drain);
    sim.settle();
    assert_eq!(sim.per_node("g"), counts(&[("n1", 1), ("n3", 1)]));
    assert_eq!(sim.running("g"), 2);
    // Constraints apply to global services too.
    sim.update_service("g", |s| {
        s.task.constraints = vec![parse_constraint("node.hostname!=host-n3").expect("parses")];
    });
    sim.settle();
    assert_eq!(sim.per_node("g"), counts(&[("n1", 1)]));
}

#[test]
fn constraints_and_runtimes_filter_nodes() {
    let mut sim = Sim::new(&[]);
    let mut m = node("m1");
    m.role = NodeRole::Manager;
    sim.put_node(m);
    let mut w1 = node("w1");
    w1.labels.insert("zone".into(), "eu".into());
    sim.put_node(w1);
    let mut w2 = node("w2");
    w2.labels.insert("zone".into(), "us".into());
    sim.put_node(w2);
    let mut w3 = node("w3");
    w3.runtimes = vec![Runtime::Docker];
    sim.put_node(w3);

    let cases: &[(&str, &[&str])] = &[
        ("node.role==worker", &["w1", "w2"]),
        ("node.role!=worker", &["m1"]),
        ("node.labels.zone==eu", &["w1"]),
        ("node.labels.zone!=eu", &["m1", "w2"]),
        ("node.hostname==host-w2", &["w2"]),
        ("node.id!=w1", &["m1", "w2"]),
    ];
    for (i, (c, want)) in cases.iter().enumerate() {
        let mut sp = spec(&format!("s{i}"), Mode::Replicated { replicas: 6 });
        sp.task.constraints = vec![parse_constraint(c).expect("parses")];
        let id = format!("s{i}");
        sim.add_service(&id, sp);
        sim.settle();
        let nodes: Vec<String> = sim.per_node(&id).into_keys().collect();
        assert_eq!(nodes, *want, "{c}");
        assert_eq!(sim.running(&id), 6, "{c}");
    }
}

#[test]
fn reservations_limit_placement() {
    let mut sim = Sim::new(&[]);
    let mut n = node("n1");
    n.resources = Resources {
        nano_cpus: 2_000_000_000,
        memory_bytes: 1 << 30,
    };
    sim.put_node(n);
    let mut empty = node("n0");
    empty.resources = Resources::default();
    sim.put_node(empty);
    let mut sp = spec("big", Mode::Replicated { replicas: 3 });
    sp.task.reservations.nano_cpus = 1_000_000_000;
    sim.add_service("s", sp);
    sim.settle();
    assert_eq!(sim.per_node("s"), counts(&[("", 1), ("n1", 2)]));
    let pending: Vec<&Task> = sim
        .live("s")
        .into_iter()
        .filter(|t| t.status.state == TaskState::Pending)
        .collect();
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[0].status.message,
        "no suitable node (insufficient resources on 2 nodes)"
    );
    // A task that reserves nothing goes even on a node reporting no capacity.
    sim.add_service("t", spec("small", Mode::Replicated { replicas: 2 }));
    sim.settle();
    assert_eq!(sim.per_node("t"), counts(&[("n0", 1), ("n1", 1)]));
}

#[test]
fn unschedulable_message_counts_nodes_per_reason() {
    let mut sim = Sim::new(&[]);
    for id in ["d1", "d2", "d3"] {
        let mut n = node(id);
        n.state = NodeState::Down;
        sim.put_node(n);
    }
    let mut m = node("m1");
    m.role = NodeRole::Manager;
    sim.put_node(m);
    let mut sp = spec("web", Mode::Replicated { replicas: 1 });
    sp.task.constraints = vec![parse_constraint("node.role==worker").expect("parses")];
    sim.add_service("s", sp);
    sim.settle();
    let t = sim.live("s")[0].clone();
    let want = "no suitable node (3 nodes not available for new tasks; 1 node not satisfying \
                constraint node.role==worker)";
    assert_eq!(t.status.message, want);
    assert_eq!(explain_unschedulable(&sim.state, &t), want);
    // Unchanged reasons write nothing.
    assert!(schedule(&sim.state, sim.now).is_empty());

    let mut t2 = t.clone();
    t2.spec.runtime = Runtime::Docker;
    sim.edit_node("m1", |n| n.runtimes = vec![Runtime::Exec]);
    assert_eq!(
        explain_unschedulable(&sim.state, &t2),
        "no suitable node (3 nodes not available for new tasks; 1 node without the docker \
         runtime)"
    );
}

#[test]
fn stop_first_update_goes_in_batches() {
    let mut sim = Sim::new(&["n1", "n2", "n3"]);
    let mut sp = spec("web", Mode::Replicated { replicas: 6 });
    sp.update.parallelism = 2;
    sp.update.monitor_ms = 0;
    sim.add_service("s", sp);
    sim.settle();
    sim.update_service("s", |s| s.task.env = vec!["V=2".into()]);
    let mut max_in_flight = 0;
    sim.run(40, |sim| {
        let old_running = sim
            .live("s")
            .iter()
            .filter(|t| t.spec_version == 1 && t.status.state == TaskState::Running)
            .count();
        let new_running = sim
            .live("s")
            .iter()
            .filter(|t| t.spec_version == 2 && t.status.state == TaskState::Running)
            .count();
        max_in_flight = max_in_flight.max(6 - old_running - new_running);
    });
    assert_eq!(max_in_flight, 2, "two slots at a time");
    assert!(sim.live("s").iter().all(|t| t.spec_version == 2));
    assert_eq!(sim.running("s"), 6);
    let status = sim.state.services["s"]
        .update
        .clone()
        .expect("update status");
    assert_eq!(status.phase, UpdatePhase::Completed);
    sim.settle();
}

#[test]
fn update_delay_waits_between_batches() {
    let mut sim = Sim::new(&["n1"]);
    let mut sp = spec("web", Mode::Replicated { replicas: 2 });
    sp.update.delay_ms = 10_000;
    sp.update.monitor_ms = 0;
    sim.add_service("s", sp);
    sim.settle();
    sim.update_service("s", |s| s.task.env = vec!["V=2".into()]);
    let start = sim.now;
    let mut second_batch_at = None;
    sim.run(30, |sim| {
        let new = sim.live("s").iter().filter(|t| t.spec_version == 2).count();
        if new == 2 && second_batch_at.is_none() {
            second_batch_at = Some(sim.now);
        }
        // Between batches only the clock moves the update on: the leader keeps ticking.
        let updating = sim.state.services["s"]
            .update
            .as_ref()
            .is_some_and(|u| u.phase == UpdatePhase::Updating);
        assert_eq!(awaits_clock(&sim.state, sim.now), updating);
    });
    let at = second_batch_at.expect("second batch started");
    assert!(at - start >= Duration::seconds(10), "{}", at - start);
    assert_eq!(
        sim.state.services["s"].update.as_ref().map(|u| u.phase),
        Some(UpdatePhase::Completed)
    );
    sim.settle();
    assert!(!awaits_clock(&sim.state, sim.now));
}

#[test]
fn start_first_update_never_drops_below_replicas() {
    let mut sim = Sim::new(&["n1", "n2", "n3"]);
    let mut sp = spec("web", Mode::Replicated { replicas: 6 });
    sp.update.parallelism = 2;
    sp.update.order = UpdateOrder::StartFirst;
    sim.add_service("s", sp);
    sim.settle();
    sim.update_service("s", |s| s.task.env = vec!["V=2".into()]);
    let mut peak = 0;
    sim.run(60, |sim| {
        let running = sim.running("s");
        assert!(running >= 6, "only {running} running");
        peak = peak.max(sim.live("s").len());
    });
    assert!(peak > 6 && peak <= 8, "peak {peak}");
    assert!(sim.live("s").iter().all(|t| t.spec_version == 2));
    assert_eq!(sim.running("s"), 6);
    assert_eq!(
        sim.state.services["s"].update.as_ref().map(|u| u.phase),
        Some(UpdatePhase::Completed)
    );
    sim.settle();
}

#[test]
fn failure_action_rollback_restores_the_previous_spec() {
    let mut sim = Sim::new(&["n1", "n2"]);
    let mut sp = spec("web", Mode::Replicated { replicas: 4 });
    sp.update.failure_action = FailureAction::Rollback;
    sp.rollback.parallelism = 0;
    sp.rollback.monitor_ms = 0;
    sim.add_service("s", sp.clone());
    sim.settle();
    sim.update_service("s", |s| s.task.command = vec!["fail".into()]);
    sim.run(30, |_| {});
    let svc = &sim.state.services["s"];
    assert_eq!(svc.version, 3);
    assert_eq!(svc.spec, sp);
    assert_eq!(
        svc.previous.as_ref().map(|p| p.task.command.clone()),
        Some(vec!["fail".to_string()])
    );
    let status = svc.update.clone().expect("status");
    assert_eq!(status.phase, UpdatePhase::RollbackCompleted);
    assert!(
        sim.live("s")
            .iter()
            .all(|t| t.spec.command == sp.task.command)
    );
    assert_eq!(sim.running("s"), 4);
    sim.settle();
}

#[test]
fn failure_action_pause_stops_the_update() {
    let mut sim = Sim::new(&["n1", "n2"]);
    let mut sp = spec("web", Mode::Replicated { replicas: 4 });
    sp.task.restart.max_attempts = 1;
    sim.add_service("s", sp);
    sim.settle();
    sim.update_service("s", |s| s.task.command = vec!["fail".into()]);
    sim.run(20, |_| {});
    let status = sim.state.services["s"].update.clone().expect("status");
    assert_eq!(status.phase, UpdatePhase::Paused);
    assert!(status.message.starts_with("update paused due to failure"));
    // One slot was tried; the other three still run version 1.
    let old = sim
        .live("s")
        .iter()
        .filter(|t| t.spec_version == 1 && t.status.state == TaskState::Running)
        .count();
    assert_eq!(old, 3);
    sim.settle();
    // A new spec resumes.
    sim.tick(2);
    sim.update_service("s", |s| s.task.command = vec!["/bin/true".into()]);
    sim.run(30, |_| {});
    assert_eq!(
        sim.state.services["s"].update.as_ref().map(|u| u.phase),
        Some(UpdatePhase::Completed)
    );
    assert!(sim.live("s").iter().all(|t| t.spec_version == 3));
}

#[test]
fn removed_service_tasks_are_removed() {
    let mut sim = Sim::new(&["n1", "n2"]);
    sim.add_service("s", spec("web", Mode::Replicated { replicas: 3 }));
    sim.add_service("k", spec("keep", Mode::Replicated { replicas: 1 }));
    sim.settle();
    sim.apply(vec![Command::RemoveService { id: "s".into() }]);
    sim.orchestrate();
    assert!(
        sim.state
            .tasks
            .values()
            .filter(|t| t.service_id == "s")
            .all(|t| t.desired == DesiredState::Remove)
    );
    sim.settle();
    assert!(sim.state.tasks.values().all(|t| t.service_id == "k"));
    assert_eq!(sim.running("k"), 1);
}

#[test]
fn history_is_bounded_per_slot() {
    let mut sim = Sim::new(&["n1"]);
    let mut id = one_task_service(&mut sim, RestartCondition::Any, 0);
    for _ in 0..12 {
        sim.end(&id, TaskState::Failed);
        sim.settle();
        id = sim.live("s")[0].id.clone();
    }
    assert_eq!(sim.slot_tasks("s", 1).len(), HISTORY + 1);
    assert_eq!(sim.live("s")[0].attempt, 12);
}

#[test]
fn an_empty_or_settled_state_needs_nothing() {
    let mut sim = Sim::new(&["n1"]);
    sim.assert_fixed_point();
    sim.add_service("s", spec("web", Mode::Replicated { replicas: 2 }));
    sim.add_service("g", spec("agent", Mode::Global));
    sim.settle();
    sim.tick(3600);
    sim.assert_fixed_point();
}

#[test]
fn a_node_that_stops_satisfying_constraints_loses_its_tasks() {
    let mut sim = Sim::new(&["n1", "n2"]);
    for id in ["n1", "n2"] {
        sim.edit_node(id, |n| {
            n.labels.insert("disk".into(), "ssd".into());
        });
    }
    let mut sp = spec("db", Mode::Replicated { replicas: 4 });
    sp.task.constraints = vec![parse_constraint("node.labels.disk==ssd").expect("parses")];
    sim.add_service("s", sp);
    sim.settle();
    assert_eq!(sim.per_node("s"), counts(&[("n1", 2), ("n2", 2)]));
    sim.edit_node("n2", |n| {
        n.labels.clear();
    });
    sim.settle();
    assert_eq!(sim.per_node("s"), counts(&[("n1", 4)]));
    // Moved, not failed: no restart was counted.
    assert!(sim.live("s").iter().all(|t| t.attempt == 0));
}

#[test]
fn a_global_task_comes_back_with_its_node() {
    let mut sim = Sim::new(&["n1", "n2"]);
    sim.add_service("g", spec("agent", Mode::Global));
    sim.settle();
    sim.edit_node("n2", |n| n.state = NodeState::Down);
    sim.settle();
    assert_eq!(sim.per_node("g"), counts(&[("n1", 1)]));
    sim.edit_node("n2", |n| n.state = NodeState::Ready);
    sim.settle();
    assert_eq!(sim.per_node("g"), counts(&[("n1", 1), ("n2", 1)]));
    assert_eq!(sim.running("g"), 2);
}
