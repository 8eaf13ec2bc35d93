//! Task status reports, the last step of a task's path: the supervisor and each task's runner
//! put every status into one queue ([`Reports`]); the [`reporter`] sends the latest per task,
//! batched, to a manager (`ReportTasks`), retrying until one takes it. A status something
//! waits for (a rotation's confirmation: the rollout's next step waits on it) goes without
//! the batching window; those queued while a report is on its way still go together.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;

use super::managers::Managers;
use crate::api::v1::TaskReport;
use crate::store::service::{TaskState, TaskStatus};

/// A status stamped now.
pub fn status(state: TaskState, message: &str, err: &str, exit_code: Option<i64>) -> TaskStatus {
    TaskStatus {
        state,
        message: message.into(),
        err: err.into(),
        exit_code,
        timestamp: crate::util::now_rfc3339(),
        held: Default::default(),
    }
}

/// One status on its way: task ID, status, and whether it skips the batching window.
type Item = (String, TaskStatus, bool);

/// The statuses on their way to the reporter.
pub type Queue = mpsc::UnboundedReceiver<Item>;

/// Where statuses are given (cheap to clone).
#[derive(Clone)]
pub struct Reports(mpsc::UnboundedSender<Item>);

impl Reports {
    /// A sender and the queue its statuses go to.
    pub fn channel() -> (Reports, Queue) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Reports(tx), rx)
    }

    /// Gives task `id`'s latest status.
    pub fn send(&self, id: &str, st: TaskStatus) {
        let _ = self.0.send((id.to_string(), st, false));
    }

    /// Gives task `id`'s latest status, to go without waiting for others to batch with it.
    pub fn send_now(&self, id: &str, st: TaskStatus) {
        let _ = self.0.send((id.to_string(), st, true));
    }
}

/// How long the reporter waits for more statuses to send with the first one.
const BATCH_WINDOW: Duration = Duration::from_millis(50);

/// Sends the latest status of each task, batched, retrying until a manager takes it.
pub async fn reporter(managers: std::sync::Arc<Managers>, mut rx: Queue) {
    let mut pending: HashMap<String, TaskStatus> = HashMap::new();
    loop {
        let mut now = false;
        if pending.is_empty() {
            match rx.recv().await {
                Some((id, st, urgent)) => {
                    pending.insert(id, st);
                    now = urgent;
                }
                None => return,
            }
        }
        // Gather what arrives in a short window into one report (unless something waits for
        // this one); what is queued already goes with it either way.
        if !now {
            tokio::time::sleep(BATCH_WINDOW).await;
        }
        while let Ok((id, st, _)) = rx.try_recv() {
            pending.insert(id, st);
        }
        let statuses_json: HashMap<String, String> = pending
            .iter()
            .filter_map(|(id, st)| serde_json::to_string(st).ok().map(|j| (id.clone(), j)))
            .collect();
        let mut sent = false;
        for addr in managers.candidates() {
            let Some(mut client) = managers.client(&addr) else {
                continue;
            };
            match client
                .report_tasks(TaskReport {
                    statuses_json: statuses_json.clone(),
                })
                .await
            {
                Ok(_) => {
                    sent = true;
                    break;
                }
                Err(s) => tracing::debug!(%addr, error = %s.message(), "task report refused"),
            }
        }
        if sent {
            pending.clear();
        } else {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}
