//! Task reports committed together (group commit). Agents send `ReportTasks` as their tasks
//! change; each used to be a Raft entry of its own. Now the reports that arrive while one
//! entry is being committed wait and go together into the next:
//!
//! ```text
//!  ReportTasks (node A) ─┐
//!  ReportTasks (node B) ─┼─► queue ─► one Batch[ReportTasks A, ReportTasks B, …] ─► propose
//!  ReportTasks (node C) ─┘            (up to half an entry's bound)          each caller answered
//! ```
//!
//! Each report stays its own `ReportTasks` command for its own node, so the state machine
//! applies it as before (a report names its node; nothing in one report can refuse another's:
//! `ReportTasks` has no check that fails). Every caller whose report was in an entry gets that
//! entry's outcome.

use std::sync::Weak;

use tokio::sync::{mpsc, oneshot};

use super::Manager;
use crate::store::model::Command;

/// Reports that may wait at once; callers beyond wait for room.
const QUEUE: usize = 1024;

/// The encoded bytes of reports in one entry (a Raft entry may hold 4 MiB): entries of up to
/// 2 MiB raised the leader's peak memory at 10,000 tasks by a third for no more speed.
const BUDGET: usize = 256 << 10;

/// One report waiting for its entry.
struct Pending {
    cmd: Command,
    size: usize,
    done: oneshot::Sender<Result<(), tonic::Status>>,
}

/// The queue of one manager's reports; the committing task ends with the manager.
#[derive(Clone)]
pub struct Reports {
    tx: mpsc::Sender<Pending>,
}

impl Reports {
    /// Starts committing the reports given to `mgr`.
    pub fn start(mgr: Weak<Manager>) -> Reports {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(mgr, rx));
        Reports { tx }
    }

    /// Commits `cmd` (a `ReportTasks`) with whatever other reports are waiting; returns once
    /// the entry holding it is committed, or with why it was not.
    pub async fn commit(&self, cmd: Command) -> Result<(), tonic::Status> {
        let stopping = || tonic::Status::unavailable("this manager is stopping; try another");
        let size = crate::store::wire::size_of(&cmd).unwrap_or(BUDGET);
        let (done, outcome) = oneshot::channel();
        self.tx
            .send(Pending { cmd, size, done })
            .await
            .map_err(|_| stopping())?;
        outcome.await.map_err(|_| stopping())?
    }
}

/// Commits the queued reports, one entry at a time, until the manager or the queue is gone.
async fn run(mgr: Weak<Manager>, mut rx: mpsc::Receiver<Pending>) {
    let mut carried = None;
    loop {
        let first = match carried.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let (batch, next) = take(first, || rx.try_recv().ok(), BUDGET);
        carried = next;
        let Some(mgr) = mgr.upgrade() else {
            return;
        };
        let (mut cmds, dones): (Vec<Command>, Vec<_>) =
            batch.into_iter().map(|p| (p.cmd, p.done)).unzip();
        let cmd = match cmds.len() {
            1 => cmds.remove(0),
            _ => Command::Batch(cmds),
        };
        let outcome = mgr.propose(cmd).await.map_err(super::to_status);
        drop(mgr);
        for done in dones {
            let _ = done.send(outcome.clone());
        }
    }
}

/// The reports of the next entry: `first`, then as many of those `next` gives as fit in
/// `budget` encoded bytes with it, in order; the first that does not fit is handed back for
/// the entry after.
fn take(
    first: Pending,
    mut next: impl FnMut() -> Option<Pending>,
    budget: usize,
) -> (Vec<Pending>, Option<Pending>) {
    let mut used = first.size;
    let mut batch = vec![first];
    while let Some(p) = next() {
        if used + p.size > budget {
            return (batch, Some(p));
        }
        used += p.size;
        batch.push(p);
    }
    (batch, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(n: usize, size: usize) -> Pending {
        Pending {
            cmd: Command::ReportTasks {
                node_id: format!("n{n}"),
                updates: Vec::new(),
            },
            size,
            done: oneshot::channel().0,
        }
    }

    fn nodes(batch: &[Pending]) -> Vec<String> {
        batch
            .iter()
            .map(|p| match &p.cmd {
                Command::ReportTasks { node_id, .. } => node_id.clone(),
                _ => String::new(),
            })
            .collect()
    }

    #[test]
    fn waiting_reports_share_an_entry_up_to_the_budget_in_order() {
        let mut queue = (1..=5).map(|n| pending(n, 10));
        let (batch, carried) = take(pending(0, 10), || queue.next(), 35);
        assert_eq!(nodes(&batch), ["n0", "n1", "n2"]);
        let carried = carried.expect("the one that did not fit is kept");
        let (batch, carried) = take(carried, || queue.next(), 35);
        assert_eq!(nodes(&batch), ["n3", "n4", "n5"]);
        assert!(carried.is_none());
    }

    #[test]
    fn a_report_over_the_budget_goes_alone_wherever_it_arrives() {
        // First in line: alone, the next one carried.
        let mut queue = std::iter::once(pending(1, 1));
        let (batch, carried) = take(pending(0, 100), || queue.next(), 35);
        assert_eq!(nodes(&batch), ["n0"]);
        assert_eq!(nodes(&[carried.unwrap()]), ["n1"]);
        // Behind others: they go without it, and it goes without those after it, so a node
        // sending reports too large to commit fails only its own.
        let mut queue = [pending(1, 10), pending(2, 100), pending(3, 10)].into_iter();
        let (batch, carried) = take(pending(0, 10), || queue.next(), 35);
        assert_eq!(nodes(&batch), ["n0", "n1"]);
        let (batch, carried) = take(carried.unwrap(), || queue.next(), 35);
        assert_eq!(nodes(&batch), ["n2"]);
        assert_eq!(nodes(&[carried.unwrap()]), ["n3"]);
    }
}
