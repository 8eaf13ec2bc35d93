//! One task's path through the agent, one way: each step is a module of its own, and none
//! calls back into the supervisor, which starts a runner per task and only hears of it
//! through its end.
//!
//! ```text
//!  run:   secrets (deliver) ─► hosts ─► ports ─► Executors::start ─┐
//!  adopt: (no start: recorded ports or container address) ─► hosts ─┤
//!                                                                   ▼
//!  supervise: endpoints (publish) ─► health (Watch) ─► wait | stop | unhealthy
//!  every status ─► reports
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::deliver::mount_secrets;
use super::endpoints::Slot;
use super::executor::health::{Health, Watch};
use super::executor::{ExecError, Executors, Recovered, TaskHandle};
use super::managers::Managers;
use super::ports::{with_given_ports, with_ports};
use super::reports::{Reports, status};
use super::secrets::{SecretStore, TaskSecrets};
use crate::store::service::{Runtime, Task, TaskState, TaskStatus};

/// How long a stopped task gets between SIGTERM and SIGKILL (Docker's default).
pub const STOP_GRACE: Duration = Duration::from_secs(10);

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
}

/// Runs one task to its end: secrets, start, wait or stop, report; then unmounts its
/// secrets, so their values are gone from the node with the task.
pub async fn run(cx: Context, task: Task, slot: Slot, mut stop: watch::Receiver<bool>) {
    let report = |st: TaskStatus| cx.reports.send(&task.id, st);
    report(status(TaskState::Preparing, "preparing", "", None));
    // Not raced with a stop: a mount abandoned half-way would leave a tmpfs no one unmounts.
    let secrets = match mount_secrets(&task, &cx.secrets, &cx.managers, &cx.execs).await {
        Ok(s) => s,
        Err(e) => {
            report(status(TaskState::Rejected, "secrets unavailable", &e, None));
            return;
        }
    };
    if *stop.borrow() {
        if let Some(s) = secrets {
            let _ = tokio::task::spawn_blocking(move || s.unmount()).await;
        }
        report(status(
            TaskState::Shutdown,
            "shutdown before start",
            "",
            None,
        ));
        return;
    }
    slot.write_hosts(&task);
    let (to_run, endpoints) = with_ports(task.clone());
    run_started(&cx, &slot, &to_run, endpoints, secrets.as_ref(), &mut stop).await;
    if let Some(s) = secrets {
        let _ = tokio::task::spawn_blocking(move || s.unmount()).await;
    }
}

async fn run_started(
    cx: &Context,
    slot: &Slot,
    task: &Task,
    endpoints: HashMap<u16, SocketAddr>,
    secrets: Option<&TaskSecrets>,
    stop: &mut watch::Receiver<bool>,
) {
    let report = |st: TaskStatus| cx.reports.send(&task.id, st);
    let files = secrets.map(TaskSecrets::files_dir);
    let start = tokio::select! {
        r = cx.execs.start(task, files.as_deref()) => r,
        _ = stopped(stop) => {
            report(status(TaskState::Shutdown, "shutdown before start", "", None));
            return;
        }
    };
    let handle = match start {
        Ok(h) => h,
        Err(e) => {
            report(status(
                TaskState::Failed,
                "failed to start",
                &e.to_string(),
                None,
            ));
            return;
        }
    };
    supervise(cx, slot, task, handle, endpoints, false, stop).await;
}

/// Adopts a task a previous run of this agent started (see [`Executors::recover`]): no
/// start; its recorded ports (exec) or container address (docker) go back into the mesh, its
/// health is followed again, and it is watched and stopped like a task started here. Its
/// secrets stay mounted until it ends.
pub async fn adopt(
    cx: Context,
    task: Task,
    found: Recovered,
    slot: Slot,
    mut stop: watch::Receiver<bool>,
) {
    tracing::info!(task = %task.id, "adopted a task a previous run of this agent started");
    let ports: Vec<(u16, SocketAddr)> = found
        .ports
        .iter()
        .map(|(t, p)| (*t, SocketAddr::from(([127, 0, 0, 1], *p))))
        .collect();
    let (to_run, endpoints) = with_given_ports(task.clone(), &ports);
    slot.write_hosts(&task);
    supervise(
        &cx,
        &slot,
        &to_run,
        found.handle,
        endpoints,
        true,
        &mut stop,
    )
    .await;
    cx.execs.release_secrets(&task.id);
}

/// Follows a running task to its end: publishes its endpoints, follows its health, and stops
/// it when asked. `adopted`: it ran before this agent did (reported running at once; a
/// health check keeps it running until it fails).
async fn supervise(
    cx: &Context,
    slot: &Slot,
    task: &Task,
    mut handle: TaskHandle,
    mut endpoints: HashMap<u16, SocketAddr>,
    adopted: bool,
    stop: &mut watch::Receiver<bool>,
) {
    let execs = &cx.execs;
    let report = |st: TaskStatus| cx.reports.send(&task.id, st);
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
    if adopted {
        report(status(
            TaskState::Running,
            "adopted after an agent restart",
            "",
            None,
        ));
    } else if running {
        report(status(TaskState::Running, "started", "", None));
    } else {
        report(status(
            TaskState::Starting,
            "starting (health: starting)",
            "",
            None,
        ));
    }
    loop {
        tokio::select! {
            code = handle.wait() => return report(ended(code)),
            _ = stopped(stop) => {
                // Out of the rotation first: new connections go to other tasks while it stops.
                slot.withdraw();
                if let Err(e) = handle.stop(STOP_GRACE).await {
                    tracing::warn!(task = %task.id, error = %e, "stopping the task");
                }
                return report(status(TaskState::Shutdown, "shutdown", "", None));
            }
            h = health.next(execs, task) => match h {
                Health::Healthy if !running => {
                    running = true;
                    report(status(TaskState::Running, "started (healthy)", "", None));
                }
                Health::Unhealthy(why) => {
                    tracing::warn!(task = %task.id, reason = %why, "the task is unhealthy; stopping it");
                    slot.withdraw();
                    if let Err(e) = handle.stop(STOP_GRACE).await {
                        tracing::warn!(task = %task.id, error = %e, "stopping the task");
                    }
                    return report(status(
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
