//! One task's path through the agent, one way: each step is a module of its own, and none
//! calls back into the supervisor, which starts a runner per task and only hears of it
//! through its end.
//!
//! ```text
//!  run:   secrets (deliver) ─► hosts ─► ports ─► Executors::start ─┐
//!  adopt: (no start: recorded ports or container address) ─► hosts ─┤
//!                                                                   ▼
//!  supervise: endpoints (publish) ─► health (Watch) ─► wait | stop | unhealthy
//!             | versions moved (a rollout) ─► rotate: swap each in-place follower's file
//!               (secrets.rs), signal once per on-change=signal:SIG ─► report (held)
//!  every status ─► reports, with the version of each secret and config held
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::deliver::{mount_secrets, value_of};
use super::endpoints::Slot;
use super::executor::health::{Health, Watch};
use super::executor::{ExecError, Executors, Recovered, TaskHandle};
use super::managers::Managers;
use super::ports::{with_given_ports, with_ports};
use super::reports::{Reports, status};
use super::secrets::{HeldVersions, SecretStore, TaskSecrets};
use crate::store::service::{OnChange, Runtime, SecretRef, Task, TaskState, TaskStatus};

/// How long a stopped task gets between SIGTERM and SIGKILL (Docker's default).
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// The span of everything done for `task`: its log lines carry `task_id` and `service_id`.
/// At error level, so that it is on whatever the log level (a span's level only decides
/// whether it exists; the lines in it keep their own).
pub fn span(task: &Task) -> tracing::Span {
    tracing::error_span!("task", task_id = %task.id, service_id = %task.service_id)
}

/// The same for work on a task known by its ID alone (one a previous run left).
pub fn span_of(id: &str) -> tracing::Span {
    tracing::error_span!("task", task_id = %id)
}

/// Removes a task's secrets on a blocking thread, in the task's span.
async fn remove_secrets(s: TaskSecrets) {
    let span = tracing::Span::current();
    let _ = tokio::task::spawn_blocking(move || span.in_scope(|| s.remove())).await;
}

/// What a task's runner works with.
#[derive(Clone)]
pub struct Context {
    /// The node's runtimes.
    pub execs: Arc<Executors>,
    /// The secret values the agent holds.
    pub secrets: Arc<SecretStore>,
    /// Where secrets are asked for.
    pub managers: Arc<Managers>,
    /// Where statuses go.
    pub reports: Reports,
    /// The trust bundle heartbeats bring, for tasks' identities.
    pub bundles: super::svid::BundleFeed,
    /// The SVIDs of this node's tasks, for the routing mesh.
    pub identities: super::svid::Registry,
}

impl Context {
    /// Gives task `id`'s status, with the versions of the secrets it holds.
    fn report(&self, id: &str, held: &HeldVersions, mut st: TaskStatus) {
        st.held = held.clone();
        self.reports.send(id, st);
    }

    /// The same for a status a rollout waits for: it goes without the batching window.
    fn report_now(&self, id: &str, held: &HeldVersions, mut st: TaskStatus) {
        st.held = held.clone();
        self.reports.send_now(id, st);
    }
}

/// Runs one task to its end: secrets, start, wait or stop, report; then removes its
/// secrets, so their values are gone from the node with the task. `versions`: the version of
/// each secret the leader wants the task to hold (a rollout moves it while the task runs).
pub async fn run(
    cx: Context,
    task: Task,
    slot: Slot,
    mut stop: watch::Receiver<bool>,
    mut versions: watch::Receiver<HeldVersions>,
) {
    let mut task = task;
    let mut held = HeldVersions::new();
    cx.report(
        &task.id,
        &held,
        status(TaskState::Preparing, "preparing", "", None),
    );
    // Not raced with a stop: files abandoned half-way would leave a directory no one removes.
    // The versions are read as the leader says now; if a rollout moved them while the values
    // were fetched (the old one may be gone from the node), the files are written again.
    let mut tries = 0;
    let secrets = loop {
        task.versions = versions.borrow_and_update().clone();
        match mount_secrets(&task, &cx.secrets, &cx.managers, &cx.execs).await {
            Ok(s) => break s,
            Err(_) if tries < 3 && versions.has_changed().unwrap_or(false) => tries += 1,
            Err(e) => {
                cx.report(
                    &task.id,
                    &held,
                    status(TaskState::Rejected, "secrets unavailable", &e, None),
                );
                return;
            }
        }
    };
    if let Some(s) = &secrets {
        held = mounted_versions(&task);
        s.record_held(&held);
    }
    if *stop.borrow() {
        if let Some(s) = secrets {
            remove_secrets(s).await;
        }
        cx.report(
            &task.id,
            &held,
            status(TaskState::Shutdown, "shutdown before start", "", None),
        );
        return;
    }
    // The identity before the start: a task with identity on never runs without its SVID.
    let identity = match (&secrets, task.spec.identity) {
        (Some(s), true) => {
            match super::svid::start(&task, s, cx.managers.clone(), &cx.bundles, &cx.identities)
                .await
            {
                Ok(i) => Some(i),
                Err(e) => {
                    if let Some(s) = secrets {
                        remove_secrets(s).await;
                    }
                    cx.report(
                        &task.id,
                        &held,
                        status(
                            TaskState::Rejected,
                            "identity unavailable",
                            &e.to_string(),
                            None,
                        ),
                    );
                    return;
                }
            }
        }
        _ => None,
    };
    slot.write_hosts(&task);
    let (to_run, endpoints) = with_ports(task.clone());
    let mut run = Run {
        secrets: secrets.as_ref(),
        versions: &mut versions,
        held,
    };
    run_started(&cx, &slot, &to_run, endpoints, &mut run, &mut stop).await;
    drop(identity);
    if let Some(s) = secrets {
        remove_secrets(s).await;
    }
}

/// The version of each secret and config of `task` as mounted: those `task.versions` names.
fn mounted_versions(task: &Task) -> HeldVersions {
    task.spec
        .secrets
        .iter()
        .chain(&task.spec.configs)
        .filter_map(|r| Some((r.secret_id.clone(), *task.versions.get(&r.secret_id)?)))
        .collect()
}

/// A started task's secrets: the tmpfs, the versions the leader wants, those held.
struct Run<'a> {
    secrets: Option<&'a TaskSecrets>,
    versions: &'a mut watch::Receiver<HeldVersions>,
    held: HeldVersions,
}

async fn run_started(
    cx: &Context,
    slot: &Slot,
    task: &Task,
    endpoints: HashMap<u16, SocketAddr>,
    run: &mut Run<'_>,
    stop: &mut watch::Receiver<bool>,
) {
    // /run/secrets only for a task with secrets; configs bound one by one at their targets.
    let files = run
        .secrets
        .filter(|_| !task.spec.secrets.is_empty())
        .map(TaskSecrets::files_dir);
    let configs = run
        .secrets
        .map(|s| s.config_files(&task.spec.configs))
        .unwrap_or_default();
    let spiffe = run
        .secrets
        .filter(|_| task.spec.identity)
        .and_then(|s| s.spiffe_dir().ok());
    let mounts = super::executor::Mounts {
        secrets: files.as_deref(),
        configs: &configs,
        spiffe: spiffe.as_deref(),
    };
    let start = tokio::select! {
        r = cx.execs.start_with(task, &mounts) => r,
        _ = stopped(stop) => {
            cx.report(&task.id, &run.held, status(TaskState::Shutdown, "shutdown before start", "", None));
            return;
        }
    };
    let handle = match start {
        Ok(h) => h,
        Err(e) => {
            cx.report(
                &task.id,
                &run.held,
                status(TaskState::Failed, "failed to start", &e.to_string(), None),
            );
            return;
        }
    };
    supervise(cx, slot, task, handle, endpoints, false, run, stop).await;
}

/// Adopts a task a previous run of this agent started (see [`Executors::recover`]): no
/// start; its recorded ports (exec) or container address (docker) go back into the mesh, its
/// health is followed again, and it is watched and stopped like a task started here. Its
/// secrets stay mounted (and are rotated like those of a task started here) until it ends.
pub async fn adopt(
    cx: Context,
    task: Task,
    found: Recovered,
    slot: Slot,
    mut stop: watch::Receiver<bool>,
    mut versions: watch::Receiver<HeldVersions>,
) {
    tracing::info!(task_id = %task.id, "adopted a task a previous run of this agent started");
    let ports: Vec<(u16, SocketAddr)> = found
        .ports
        .iter()
        .map(|(t, p)| (*t, SocketAddr::from(([127, 0, 0, 1], *p))))
        .collect();
    let (to_run, endpoints) = with_given_ports(task.clone(), &ports);
    slot.write_hosts(&task);
    let (secrets, held) = match cx.execs.tmpfs().adopt(&task.id) {
        Some((s, h)) => (Some(s), h),
        None => (None, HeldVersions::new()),
    };
    // A fresh SVID and Workload API for an adopted task: the previous agent's went with it.
    let identity = match (&secrets, task.spec.identity) {
        (Some(s), true) => {
            match super::svid::start(&task, s, cx.managers.clone(), &cx.bundles, &cx.identities)
                .await
            {
                Ok(i) => Some(i),
                Err(e) => {
                    tracing::warn!(task_id = %task.id, error = %e, "cannot renew an adopted task's identity");
                    None
                }
            }
        }
        _ => None,
    };
    let mut run = Run {
        secrets: secrets.as_ref(),
        versions: &mut versions,
        held,
    };
    supervise(
        &cx,
        &slot,
        &to_run,
        found.handle,
        endpoints,
        true,
        &mut run,
        &mut stop,
    )
    .await;
    drop(identity);
    cx.execs.release_secrets(&task.id);
}

/// Follows a running task to its end: publishes its endpoints, follows its health, and stops
/// it when asked. `adopted`: it ran before this agent did (reported running at once; a
/// health check keeps it running until it fails).
#[allow(clippy::too_many_arguments)]
async fn supervise(
    cx: &Context,
    slot: &Slot,
    task: &Task,
    mut handle: TaskHandle,
    mut endpoints: HashMap<u16, SocketAddr>,
    adopted: bool,
    run: &mut Run<'_>,
    stop: &mut watch::Receiver<bool>,
) {
    let execs = &cx.execs;
    let report = |held: &HeldVersions, st: TaskStatus| cx.report(&task.id, held, st);
    // A container is reached on its own address; on a network, that address also tells the
    // mesh which services' container-side addresses it may use.
    let container_ip = if task.spec.runtime == Runtime::Docker
        && !(task.spec.ports.is_empty() && task.spec.networks.is_empty())
    {
        execs.container_ip(task).await
    } else {
        None
    };
    if let Some(ip) = container_ip {
        for target in &task.spec.ports {
            endpoints.insert(*target, SocketAddr::new(ip, *target));
        }
    }
    let on_network = container_ip.filter(|_| !task.spec.networks.is_empty());
    slot.publish(endpoints, on_network);
    // With a health check the task is `starting` (out of the mesh's rotation) until a check
    // passes; unhealthy, it is stopped and fails, for its restart policy to replace.
    let mut health = Watch::for_task(execs, task).await;
    let mut running = adopted || !health.is_some();
    let held = &run.held;
    if adopted {
        report(
            held,
            status(
                TaskState::Running,
                "adopted after an agent restart",
                "",
                None,
            ),
        );
    } else if running {
        report(held, status(TaskState::Running, "started", "", None));
    } else {
        report(
            held,
            status(TaskState::Starting, "starting (health: starting)", "", None),
        );
    }
    // A rollout may have moved the versions while the task started: swap those in first.
    let mut retry = rotate_and_report(cx, task, &handle, run, running).await;
    let mut following = true;
    loop {
        let held = &run.held;
        tokio::select! {
            code = handle.wait() => {
                let mut st = ended(code);
                if let Some(why) = helper_failure(cx, task, &st).await {
                    st.err = why;
                }
                return report(held, st);
            }
            _ = stopped(stop) => {
                // Out of the rotation first: new connections go to other tasks while it stops.
                slot.withdraw();
                if let Err(e) = handle.stop(STOP_GRACE).await {
                    tracing::warn!(task_id = %task.id, error = %e, "stopping the task");
                }
                return report(held, status(TaskState::Shutdown, "shutdown", "", None));
            }
            // A new version also cuts a wait to try again: the one that failed may be gone.
            changed = run.versions.changed(), if following => {
                if changed.is_err() {
                    // The supervisor is gone (the daemon exits): no more rollouts to follow.
                    following = false;
                    continue;
                }
                retry = rotate_and_report(cx, task, &handle, run, running).await;
            }
            _ = sleep_until_some(retry) => {
                retry = rotate_and_report(cx, task, &handle, run, running).await;
            }
            h = health.next(execs, task) => match h {
                Health::Healthy if !running => {
                    running = true;
                    report(held, status(TaskState::Running, "started (healthy)", "", None));
                }
                // A check that failed because the task had just ended (its groups gone with
                // it) says nothing of its health: its exit decides, at the next turn.
                Health::Unhealthy(_) if handle.has_ended() => continue,
                Health::Unhealthy(why) => {
                    tracing::warn!(task_id = %task.id, reason = %why, "the task is unhealthy; stopping it");
                    slot.withdraw();
                    if let Err(e) = handle.stop(STOP_GRACE).await {
                        tracing::warn!(task_id = %task.id, error = %e, "stopping the task");
                    }
                    return report(held, status(
                        TaskState::Failed,
                        "unhealthy",
                        &format!("unhealthy container: {why}"),
                        handle.exit_code(),
                    ));
                }
                Health::Healthy | Health::Starting => {}
            },
        }
    }
}

/// How long a rotation that failed waits before it is tried again.
const ROTATE_RETRY: Duration = Duration::from_secs(2);

/// Swaps in the versions the leader now wants the task to hold (see [`rotate`]) and reports
/// the task's status again with what it holds; returns when to try again if a swap failed.
async fn rotate_and_report(
    cx: &Context,
    task: &Task,
    handle: &TaskHandle,
    run: &mut Run<'_>,
    running: bool,
) -> Option<tokio::time::Instant> {
    let want = run.versions.borrow_and_update().clone();
    let outcome = rotate(cx, task, handle, run.secrets, &want, &mut run.held).await?;
    let state = if running {
        TaskState::Running
    } else {
        TaskState::Starting
    };
    let (message, retry) = match outcome {
        Ok(msg) => (msg, None),
        Err(msg) => (
            format!("{msg}; trying again"),
            Some(tokio::time::Instant::now() + ROTATE_RETRY),
        ),
    };
    tracing::info!(task_id = %task.id, outcome = %message, "secret rotation");
    cx.report_now(&task.id, &run.held, status(state, &message, "", None));
    retry
}

/// Swaps, in the task's tmpfs, the file of every secret the task follows in place
/// (`on-change=rotate` or `signal:SIG`, unpinned) whose version in `want` differs from the one
/// held, then sends each `on-change=signal:SIG` signal once. `None` when there is nothing to
/// swap; else what was done (`Err` if some swap failed: those keep their old version in
/// `held`, to be tried again).
async fn rotate(
    cx: &Context,
    task: &Task,
    handle: &TaskHandle,
    secrets: Option<&TaskSecrets>,
    want: &HeldVersions,
    held: &mut HeldVersions,
) -> Option<Result<String, String>> {
    let secrets = secrets?;
    let due = due(&task.spec.secrets, want, held);
    if due.is_empty() {
        return None;
    }
    let mut swapped: BTreeMap<&str, (&str, u64)> = BTreeMap::new();
    let mut failed: BTreeSet<&str> = BTreeSet::new();
    let mut errors = Vec::new();
    let mut signals = BTreeSet::new();
    for (r, v) in due {
        let done = match value_of(task, r, false, v, &cx.secrets, &cx.managers).await {
            // On the tmpfs: a page-sized write and a rename, or a remount.
            Ok(value) => secrets.swap(r, &value),
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => {
                swapped.insert(&r.secret_id, (&r.secret_name, v));
                if let OnChange::Signal(sig) = &r.on_change {
                    signals.insert(sig.as_str());
                }
            }
            Err(e) => {
                failed.insert(&r.secret_id);
                errors.push(e.to_string());
            }
        }
    }
    let mut parts = Vec::new();
    for (id, (name, v)) in &swapped {
        if !failed.contains(id) {
            held.insert(id.to_string(), *v);
            parts.push(format!("{name} to version {v}"));
        }
    }
    if !parts.is_empty() {
        secrets.record_held(held);
    }
    for sig in signals {
        match handle.signal(sig).await {
            Ok(()) => parts.push(format!("sent {sig}")),
            Err(e) => parts.push(e.to_string()),
        }
    }
    let mut msg = String::new();
    if !parts.is_empty() {
        msg = format!("secrets rotated: {}", parts.join(", "));
    }
    if errors.is_empty() {
        Some(Ok(msg))
    } else {
        if !msg.is_empty() {
            msg.push_str("; ");
        }
        msg.push_str(&format!("cannot rotate: {}", errors.join("; ")));
        Some(Err(msg))
    }
}

/// The attachments whose file is to be swapped, with the version to swap in: those that
/// follow in place (unpinned, `on-change=rotate` or `signal:SIG`) whose version in `want`
/// is not the one held.
fn due<'a>(
    refs: &'a [SecretRef],
    want: &HeldVersions,
    held: &HeldVersions,
) -> Vec<(&'a SecretRef, u64)> {
    refs.iter()
        .filter(|r| r.follows_in_place())
        .filter_map(|r| {
            let v = *want.get(&r.secret_id)?;
            (held.get(&r.secret_id) != Some(&v)).then_some((r, v))
        })
        .collect()
}

/// Resolves at `at`, never when `None`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Resolves when a stop is requested (or the supervisor is gone). Holds no borrow of the
/// watch value, so the select branches after it may await.
/// Resolves when the supervisor asks the task to stop (it always sends `true`). A dropped
/// sender is no request: the supervisor goes away when the daemon exits, and an exiting
/// daemon leaves its tasks running for the next one to adopt.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Why an exec task's init helper failed before its command ran (it exits 125, as Docker's
/// own failures do, and says why in the task's log): the error `service ps` shows instead of
/// a bare exit code.
async fn helper_failure(cx: &Context, task: &Task, st: &TaskStatus) -> Option<String> {
    if task.spec.runtime != Runtime::Exec || st.exit_code != Some(EXIT_HELPER_FAILED) {
        return None;
    }
    let lines = cx.execs.logs(task, 8, 0).await.ok()?;
    let last = lines
        .iter()
        .rev()
        .find(|e| e.stream == "stderr" && e.line.starts_with("skep-init: "))?;
    Some(format!(
        "task: the exec runtime could not start it: {}",
        last.line.trim_start_matches("skep-init: ")
    ))
}

/// The exit code of an exec task whose init helper failed before the command ran.
const EXIT_HELPER_FAILED: i64 = 125;

fn ended(code: Result<i64, ExecError>) -> TaskStatus {
    match code {
        Ok(0) => status(TaskState::Complete, "finished", "", Some(0)),
        Ok(c) => status(
            TaskState::Failed,
            "exited",
            &format!("task: non-zero exit ({c})"),
            Some(c),
        ),
        Err(e) => status(TaskState::Failed, "lost", &e.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unpinned_rotate_and_signal_attachments_whose_version_moved_are_swapped() {
        let at = |name: &str, on_change: OnChange, pinned: Option<u64>| SecretRef {
            secret_id: format!("id-{name}"),
            on_change,
            pinned,
            ..SecretRef::new(name)
        };
        let refs = vec![
            at("rot", OnChange::Rotate, None),
            at("hup", OnChange::Signal("SIGHUP".into()), None),
            at("pin", OnChange::Rotate, Some(1)),
            at("rst", OnChange::Restart, None),
            at("non", OnChange::None, None),
            at("same", OnChange::Rotate, None),
            at("gone", OnChange::Rotate, None),
        ];
        let v = |pairs: &[(&str, u64)]| -> HeldVersions {
            pairs.iter().map(|(k, v)| (format!("id-{k}"), *v)).collect()
        };
        let held = v(&[
            ("rot", 1),
            ("hup", 1),
            ("pin", 1),
            ("rst", 1),
            ("non", 1),
            ("same", 2),
            ("gone", 1),
        ]);
        let want = v(&[
            ("rot", 2),
            ("hup", 3),
            ("pin", 2),
            ("rst", 2),
            ("non", 2),
            ("same", 2),
        ]);
        let got: Vec<(&str, u64)> = due(&refs, &want, &held)
            .into_iter()
            .map(|(r, v)| (r.secret_name.as_str(), v))
            .collect();
        assert_eq!(got, vec![("rot", 2), ("hup", 3)]);
    }

    /// An exiting daemon drops its supervisor and with it every stop sender: a runner woken by
    /// that must not take it for a stop request and kill the task it leaves running (this
    /// killed one of six tasks on SIGTERM under load).
    #[tokio::test]
    async fn a_dropped_stop_sender_is_no_stop_request() {
        let (tx, mut rx) = watch::channel(false);
        drop(tx);
        let waited =
            tokio::time::timeout(std::time::Duration::from_millis(200), stopped(&mut rx)).await;
        assert!(waited.is_err(), "stopped() resolved on a dropped sender");
        let (tx, mut rx) = watch::channel(false);
        tx.send(true).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(1), stopped(&mut rx))
            .await
            .unwrap();
    }
}
