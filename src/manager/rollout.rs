//! Rollouts of a secret's (or config's) new current version to the tasks that follow it, and
//! the pruning of versions nothing uses any more.
//!
//! ```text
//!  secret update ─► PushVersion (rollout Rolling) + services with on-change=restart get a new
//!                   version (their tasks are replaced by the orchestrator's rolling update)
//!  leader loop  ─► step(state): per service, up to `update.parallelism` tasks that follow in
//!                  place (rotate, signal) and have not confirmed the new version yet are moved
//!                  to it (AdvanceVersions) ─► dispatcher sends the task and the value ─► the
//!                  agent swaps the file, signals, reports `held` ─► the next batch
//!               ─► every follower holds the new version: Completed (audited)
//!               ─► versions no spec, task or rollout uses beyond the history limit: pruned
//! ```
//!
//! [`step`] is pure: a function of the state. A paused rollout moves no task; tasks made while
//! it is paused get the current version (as `on-change=none` does).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::Manager;
use super::secrets::{live, refs_of, usage};
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::store::model::{Command, State, kind};
use crate::store::secret_obj::{RolloutState, Secret};
use crate::store::service::{OnChange, Task, TaskState};

/// How far a rollout has come.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Live tasks that follow the object (in place or by restart).
    pub total: u64,
    /// Of those, the ones whose node reports holding the rollout's version.
    pub done: u64,
    /// Of those, old tasks being replaced (on-change=restart).
    pub restarting: u64,
}

/// How a task follows a new version: its file swapped in place (rotate, signal), or the task
/// replaced (restart).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Follow {
    InPlace,
    Restart,
}

/// How a live task follows object `id`: `None` if it does not (pinned, on-change=none, or not
/// attached).
fn follows(t: &Task, config: bool, id: &str) -> Option<Follow> {
    let mut how = None;
    for r in refs_of(&t.spec, config)
        .iter()
        .filter(|r| r.secret_id == id && r.pinned.is_none())
    {
        match r.on_change {
            OnChange::Rotate | OnChange::Signal(_) => return Some(Follow::InPlace),
            OnChange::Restart => how = Some(Follow::Restart),
            OnChange::None => {}
        }
    }
    how
}

/// Whether a task's process has not started yet: it mounts the version it is to hold when it
/// does, so moving it is not a step that needs confirming (and a task that never starts, with
/// no node to run on, cannot hold a rollout up).
fn not_started(t: &Task) -> bool {
    t.status.state < TaskState::Starting
}

/// The progress of the rollout of `sec`'s current version. A task that has not started yet
/// counts as done once it is to hold the version.
pub fn progress(state: &State, config: bool, sec: &Secret) -> Progress {
    let mut p = Progress::default();
    for t in state.tasks.values().filter(|t| live(t)) {
        let Some(how) = follows(t, config, &sec.id) else {
            continue;
        };
        p.total += 1;
        let to_hold = t.versions.get(&sec.id) == Some(&sec.version);
        if t.status.held.get(&sec.id) == Some(&sec.version) || to_hold && not_started(t) {
            p.done += 1;
        } else if how == Follow::Restart && t.versions.get(&sec.id) != Some(&sec.version) {
            p.restarting += 1;
        }
    }
    p
}

/// The commands that move every rolling rollout one step, complete finished ones, and prune
/// unused versions beyond the cluster's history limit.
pub fn step(state: &State, now: &str) -> Vec<Command> {
    let mut out = Vec::new();
    let history = state
        .cluster
        .as_ref()
        .map(|c| c.secret_history())
        .unwrap_or(crate::store::model::DEFAULT_SECRET_HISTORY);
    for config in [false, true] {
        for sec in state.objects(config).values() {
            if let Some(r) = &sec.rollout
                && r.to == sec.version
                && r.state == RolloutState::Rolling
            {
                out.extend(advance(state, config, sec));
                let p = progress(state, config, sec);
                if p.done == p.total {
                    out.push(Command::SetRolloutState {
                        config,
                        id: sec.id.clone(),
                        to: r.to,
                        state: RolloutState::Completed,
                        at: now.to_string(),
                    });
                    out.push(Command::Audit(
                        AuditEvent::now(
                            Actor::system(),
                            &format!("{}.rollout", kind(config)),
                            &sec.name,
                            Outcome::Ok,
                        )
                        .with("version", r.to.to_string())
                        .with("state", "completed")
                        .with("tasks", p.total.to_string()),
                    ));
                }
            }
            out.extend(prune(state, config, sec, history));
        }
    }
    out
}

/// The next batch of in-place followers of `sec`, per service: up to its update parallelism
/// (0: all) minus the tasks moved already whose node has not confirmed yet; and every
/// follower that has not started yet.
fn advance(state: &State, config: bool, sec: &Secret) -> Vec<Command> {
    let to = sec.version;
    let mut tasks = Vec::new();
    // Service ID -> (moved but unconfirmed, still to move).
    let mut by_service: BTreeMap<&str, (u64, Vec<&Task>)> = BTreeMap::new();
    for t in state.tasks.values().filter(|t| live(t)) {
        if follows(t, config, &sec.id) != Some(Follow::InPlace) {
            continue;
        }
        if not_started(t) {
            if t.versions.get(&sec.id) != Some(&to) {
                tasks.push(t.id.clone());
            }
            continue;
        }
        let e = by_service.entry(&t.service_id).or_default();
        if t.versions.get(&sec.id) == Some(&to) {
            if t.status.held.get(&sec.id) != Some(&to) {
                e.0 += 1;
            }
        } else {
            e.1.push(t);
        }
    }
    for (svc, (in_flight, mut todo)) in by_service {
        let parallelism = state
            .services
            .get(svc)
            .map(|s| s.spec.update.parallelism)
            .unwrap_or(0);
        let room = if parallelism == 0 {
            todo.len() as u64
        } else {
            parallelism.saturating_sub(in_flight)
        };
        todo.sort_by(|a, b| (a.slot, &a.id).cmp(&(b.slot, &b.id)));
        tasks.extend(todo.into_iter().take(room as usize).map(|t| t.id.clone()));
    }
    if tasks.is_empty() {
        return Vec::new();
    }
    vec![Command::AdvanceVersions {
        id: sec.id.clone(),
        version: to,
        tasks,
    }]
}

/// Prunes the versions of `sec` nothing uses ([`usage`]) beyond the newest `history`.
fn prune(state: &State, config: bool, sec: &Secret, history: u64) -> Vec<Command> {
    if sec.others.len() as u64 <= history {
        return Vec::new();
    }
    let used = usage(state, config, &sec.id);
    let from = sec.rollout.as_ref().map(|r| r.from);
    let mut copy = sec.clone();
    let gone = copy.prune(history as usize, |v| {
        let rolling_from = Some(v) == from
            && sec
                .rollout
                .as_ref()
                .is_some_and(|r| r.state != RolloutState::Completed);
        used.contains_key(&v) || rolling_from
    });
    if gone.is_empty() {
        return Vec::new();
    }
    let list = gone
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    vec![
        Command::PruneVersions {
            config,
            id: sec.id.clone(),
            versions: gone,
        },
        Command::Audit(
            AuditEvent::now(
                Actor::system(),
                &format!("{}.prune", kind(config)),
                &sec.name,
                Outcome::Ok,
            )
            .with("versions", list),
        ),
    ]
}

impl Manager {
    /// `swarm update --secret-history-limit`: how many unused versions of each secret and
    /// config to keep (0: the default), audited.
    pub async fn set_secret_history(
        &self,
        actor: Actor,
        keep: u64,
    ) -> Result<(), super::ManagerError> {
        if keep > crate::store::secret_obj::MAX_VERSIONS as u64 {
            return Err(super::ManagerError::Invalid(format!(
                "secret-history-limit: at most {} versions are kept",
                crate::store::secret_obj::MAX_VERSIONS
            )));
        }
        let audit = AuditEvent::now(actor, "swarm.update", "secret-history-limit", Outcome::Ok)
            .with("keep", keep.to_string());
        self.propose(Command::Batch(vec![
            Command::SetSecretHistory { keep },
            Command::Audit(audit),
        ]))
        .await
    }

    /// The progress of object `id`'s last rollout.
    pub fn rollout_progress(&self, config: bool, sec: &Secret) -> Progress {
        self.read(|s| progress(s, config, sec))
    }

    /// `secret rollout pause|continue`: stops or restarts the moving of tasks (audited).
    pub async fn set_rollout(
        &self,
        actor: Actor,
        config: bool,
        want: &str,
        pause: bool,
    ) -> Result<Secret, super::ManagerError> {
        let sec = self.object(config, want)?;
        let what = kind(config);
        let Some(r) = sec.rollout.as_ref().filter(|r| r.to == sec.version) else {
            return Err(super::ManagerError::Precondition(format!(
                "{what} {} has no rollout to {}",
                sec.name,
                if pause { "pause" } else { "continue" }
            )));
        };
        let (from, to) = if pause {
            (RolloutState::Rolling, RolloutState::Paused)
        } else {
            (RolloutState::Paused, RolloutState::Rolling)
        };
        if r.state != from {
            return Err(super::ManagerError::Precondition(format!(
                "the rollout of {what} {} version {} is {}, not {}",
                sec.name,
                r.to,
                r.state.as_str(),
                from.as_str()
            )));
        }
        let audit = AuditEvent::now(actor, &format!("{what}.rollout"), &sec.name, Outcome::Ok)
            .with("version", r.to.to_string())
            .with("state", to.as_str());
        self.propose(Command::Batch(vec![
            Command::SetRolloutState {
                config,
                id: sec.id.clone(),
                to: r.to,
                state: to,
                at: crate::util::now_rfc3339(),
            },
            Command::Audit(audit),
        ]))
        .await?;
        self.object(config, &sec.id)
    }

    /// The leader's rollout loop: on every applied change (and at least every second), moves
    /// rollouts on ([`step`]).
    pub async fn run_rollouts(self: Arc<Self>) {
        let mut applied = self.state().subscribe();
        loop {
            if self.is_leader() {
                let cmds = self.read(|s| step(s, &crate::util::now_rfc3339()));
                if !cmds.is_empty()
                    && let Err(e) = self.propose(Command::Batch(cmds)).await
                {
                    tracing::debug!(error = %e, "a rollout step was not committed; retrying");
                }
            }
            if let Ok(Err(_)) =
                tokio::time::timeout(Duration::from_secs(1), applied.changed()).await
            {
                return; // the state machine stopped: so has this manager
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SecretBytes;
    use crate::store::fixtures;
    use crate::store::service::{SecretRef, TaskState};

    /// Secret `db` at version 2 rolling from 1; service `s1` (parallelism 1) with three
    /// running tasks following it with `on_change`, each to hold and holding version 1.
    fn state(on_change: OnChange) -> State {
        let mut st = State::default();
        let mut sec = Secret::new(
            "sid".into(),
            "db".into(),
            BTreeMap::new(),
            SecretBytes::new(b"one".to_vec()),
            "t",
        );
        sec.push(SecretBytes::new(b"two".to_vec()), "t2");
        sec.rollout = Some(crate::store::secret_obj::Rollout::start(1, 2, false, "t2"));
        st.secrets.insert("sid".into(), sec);
        let mut svc = fixtures::service("s1", "web");
        svc.spec.update.parallelism = 1;
        svc.spec.task.secrets = vec![SecretRef {
            secret_id: "sid".into(),
            on_change,
            ..SecretRef::new("db")
        }];
        for i in 1..=3 {
            let mut t = fixtures::task();
            t.id = format!("t{i}");
            t.slot = i;
            t.service_id = "s1".into();
            t.node_id = "n1".into();
            t.spec = svc.spec.task.clone();
            t.status.state = TaskState::Running;
            t.versions.insert("sid".into(), 1);
            t.status.held.insert("sid".into(), 1);
            st.tasks.insert(t.id.clone(), t);
        }
        st.services.insert("s1".into(), svc);
        st
    }

    /// Applies one step.
    fn run(st: &mut State) {
        for c in step(st, "now") {
            st.apply(c);
        }
    }

    /// The running tasks' nodes report what they were moved to.
    fn confirm(st: &mut State) {
        let ids: Vec<String> = st.tasks.keys().cloned().collect();
        for id in ids {
            if let Some(mut t) = st.tasks.get_mut(&id)
                && t.status.state == TaskState::Running
                && let Some(v) = t.versions.get("sid").copied()
            {
                t.status.held.insert("sid".into(), v);
            }
        }
    }

    #[test]
    fn in_place_followers_move_one_batch_at_a_time_and_the_rollout_completes() {
        let mut st = state(OnChange::Rotate);
        let moved = |st: &State| st.tasks.values().filter(|t| t.versions["sid"] == 2).count();
        run(&mut st);
        assert_eq!(moved(&st), 1, "parallelism 1");
        // Not confirmed: nothing more moves.
        run(&mut st);
        assert_eq!(moved(&st), 1);
        confirm(&mut st);
        run(&mut st);
        assert_eq!(moved(&st), 2);
        assert_eq!(
            progress(&st, false, &st.secrets["sid"]),
            Progress {
                total: 3,
                done: 1,
                restarting: 0
            }
        );
        confirm(&mut st);
        run(&mut st);
        confirm(&mut st);
        run(&mut st);
        assert_eq!(moved(&st), 3);
        let r = st.secrets["sid"].rollout.clone().unwrap();
        assert_eq!(r.state, RolloutState::Completed);
        assert!(
            st.audit
                .records()
                .iter()
                .any(|r| r.event.action == "secret.rollout")
        );
    }

    #[test]
    fn a_paused_rollout_moves_nothing_and_pinned_or_none_never_move() {
        let mut st = state(OnChange::Rotate);
        st.secrets
            .get_mut("sid")
            .unwrap()
            .rollout
            .as_mut()
            .unwrap()
            .state = RolloutState::Paused;
        assert!(step(&st, "now").is_empty());
        for (how, pin) in [(OnChange::None, None), (OnChange::Rotate, Some(1))] {
            let mut st = state(how.clone());
            let ids: Vec<String> = st.tasks.keys().cloned().collect();
            for id in ids {
                if let Some(mut t) = st.tasks.get_mut(&id) {
                    t.spec.secrets[0].pinned = pin;
                }
            }
            run(&mut st);
            assert!(st.tasks.values().all(|t| t.versions["sid"] == 1), "{how:?}");
            // Nobody follows: the rollout is complete at once.
            assert_eq!(
                st.secrets["sid"].rollout.as_ref().map(|r| r.state),
                Some(RolloutState::Completed)
            );
        }
    }

    #[test]
    fn a_task_that_has_not_started_moves_at_once_and_cannot_hold_the_rollout_up() {
        let mut st = state(OnChange::Rotate);
        // t3 waits for a node that never comes.
        if let Some(mut t) = st.tasks.get_mut("t3") {
            t.status.state = TaskState::Pending;
            t.node_id.clear();
            t.status.held.clear();
        }
        run(&mut st);
        // t1 (the first batch, parallelism 1) and t3 (not started) move together.
        assert_eq!(st.tasks["t1"].versions["sid"], 2);
        assert_eq!(st.tasks["t2"].versions["sid"], 1);
        assert_eq!(st.tasks["t3"].versions["sid"], 2);
        for _ in 0..3 {
            confirm(&mut st);
            run(&mut st);
        }
        assert_eq!(
            st.secrets["sid"].rollout.as_ref().map(|r| r.state),
            Some(RolloutState::Completed),
            "the pending task does not hold the rollout up"
        );
    }

    #[test]
    fn restart_followers_count_as_restarting_until_replaced() {
        let st = state(OnChange::Restart);
        assert!(
            step(&st, "now")
                .iter()
                .all(|c| !matches!(c, Command::AdvanceVersions { .. }))
        );
        assert_eq!(progress(&st, false, &st.secrets["sid"]).restarting, 3);
    }

    #[test]
    fn unused_versions_beyond_the_history_are_pruned_and_used_ones_kept() {
        let mut st = state(OnChange::Rotate);
        // Versions 3 and 4; the tasks still hold 1; history 1 keeps only the newest unused (3).
        {
            let s = st.secrets.get_mut("sid").unwrap();
            s.push(SecretBytes::new(b"three".to_vec()), "t3");
            s.push(SecretBytes::new(b"four".to_vec()), "t4");
            s.rollout = None;
        }
        let mut c = fixtures::cluster();
        c.secret_history = 1;
        st.cluster = Some(c);
        run(&mut st);
        let kept: Vec<u64> = st.secrets["sid"]
            .versions()
            .iter()
            .map(|v| v.version)
            .collect();
        assert_eq!(kept, vec![1, 3, 4]);
        assert!(
            st.audit
                .records()
                .iter()
                .any(|r| r.event.action == "secret.prune")
        );
    }
}
