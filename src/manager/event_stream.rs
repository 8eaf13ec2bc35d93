//! The `Events` stream on a manager: the selected past events from the audit chain, then new
//! ones as this manager applies them, until the client hangs up or `until` passes.
//!
//! ```text
//!  applied-state watch ──wake──► scan the chain from the cursor (SCAN records a lock)
//!                                 ├─ records → events::from_record → Selection::admits
//!                                 └─ at the head: events::changes(previous, now)
//!                               ──► Outbox (QUEUE messages) ──► tonic ──► client
//! ```
//!
//! Bounded: the stream keeps a cursor (a record seq) and the last [`Watched`] state, never
//! a backlog of events. A client that leaves a full queue unread for [`PATIENCE`] is
//! disconnected with an error saying so, and one whose cursor falls behind the audit
//! chain's retention is told what it missed.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::Manager;
use super::events::{Event, Selection, Watched, changes, from_record};
use crate::api::v1::EventsResponse;
use crate::store::model::State;

/// Most events one message carries.
const BATCH: usize = 256;
/// Most audit records read under one lock of the state.
const SCAN: usize = 1024;
/// Messages waiting for the client here (beyond them, HTTP/2's flow-control window).
const QUEUE: usize = 8;
/// How long a client may leave a full queue unread before it is disconnected.
pub const PATIENCE: Duration = Duration::from_secs(30);
/// How long after `until` the stream waits for records stamped before it to commit.
const GRACE: Duration = Duration::from_secs(1);

/// One message of the stream, or the error that ends it.
pub type Item = Result<EventsResponse, tonic::Status>;

/// Starts the stream of `sel` (see the module documentation).
pub fn stream(mgr: Arc<Manager>, sel: Selection) -> mpsc::Receiver<Item> {
    let (tx, rx) = mpsc::channel(QUEUE);
    let out = Outbox {
        tx,
        patience: PATIENCE,
    };
    tokio::spawn(run(mgr, sel, out));
    rx
}

async fn run(mgr: Arc<Manager>, sel: Selection, out: Outbox) {
    let mut applied = mgr.state().subscribe();
    let backlog = sel.since.is_some() || sel.until.is_some();
    let (mut next, mut watched) = mgr.read(|s| {
        let start = match (backlog, s.audit.head()) {
            (true, _) => s.audit.records().first().map_or(1, |r| r.seq),
            (false, Some(head)) => head.seq + 1,
            (false, None) => 1,
        };
        (start, Watched::of(s))
    });
    loop {
        let step = mgr.read(|s| scan(s, next, &sel));
        if let Some(first) = step.lost {
            out.fail(tonic::Status::data_loss(format!(
                "events from audit record {next} to {} were trimmed (audit retention) before they were sent; run `skep events --since TIME` again",
                first - 1
            )));
            return;
        }
        next = step.next;
        let mut batch = step.events;
        let at_head = step.head.is_some();
        if let Some(now_watched) = step.head {
            let now = OffsetDateTime::now_utc();
            batch.extend(
                changes(&watched, &now_watched, now)
                    .into_iter()
                    .filter(|e| sel.admits(e)),
            );
            watched = now_watched;
        }
        if !batch.is_empty() && out.send(batch).await.is_err() {
            return;
        }
        if !at_head {
            continue;
        }
        // At the head: the stream ends once `until` (and the grace for records stamped
        // before it) has passed.
        let left = sel.until.map(|u| {
            let end = u + GRACE;
            Duration::try_from(end - OffsetDateTime::now_utc()).unwrap_or_default()
        });
        if left.is_some_and(|d| d.is_zero()) {
            return;
        }
        let wait = left.unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            changed = applied.changed() => {
                if changed.is_err() {
                    return; // the manager stopped; the stream ends
                }
            }
            () = tokio::time::sleep(wait) => {}
            () = out.tx.closed() => return,
        }
    }
}

/// One read of the chain from `next`.
struct Scan {
    /// The selected events of the records read.
    events: Vec<Event>,
    /// The seq to read from next time.
    next: u64,
    /// The watched state, when the read reached the head (read under the same lock).
    head: Option<Watched>,
    /// The first seq kept, when records from `next` on were trimmed before they were read.
    lost: Option<u64>,
}

fn scan(s: &State, next: u64, sel: &Selection) -> Scan {
    let first = s.audit.records().first().map_or(next, |r| r.seq);
    if first > next {
        return Scan {
            events: Vec::new(),
            next,
            head: None,
            lost: Some(first),
        };
    }
    let hostname = |id: &str| s.nodes.get(id).map(|n| n.hostname.clone());
    let mut events = Vec::new();
    let mut cursor = next;
    for r in s.audit.since(next).iter().take(SCAN) {
        cursor = r.seq + 1;
        if let Some(e) = from_record(r, hostname).filter(|e| sel.admits(e)) {
            events.push(e);
            if events.len() == BATCH {
                break;
            }
        }
    }
    let at_head = s.audit.head().is_none_or(|h| cursor > h.seq);
    Scan {
        events,
        next: cursor,
        head: at_head.then(|| Watched::of(s)),
        lost: None,
    }
}

/// The stream's side of the queue to the client.
struct Outbox {
    tx: mpsc::Sender<Item>,
    patience: Duration,
}

/// The client went away, or was disconnected.
#[derive(Debug)]
struct Gone;

impl Outbox {
    /// Queues one message. A slot is always left free, so that the error ending the stream
    /// of a client that stopped reading can still be queued.
    async fn send(&self, events: Vec<Event>) -> Result<(), Gone> {
        let msg = EventsResponse {
            events: events.iter().map(Event::to_wire).collect(),
        };
        match tokio::time::timeout(self.patience, self.tx.reserve_many(2)).await {
            Ok(Ok(mut permits)) => {
                if let Some(p) = permits.next() {
                    p.send(Ok(msg));
                }
                Ok(())
            }
            Ok(Err(_)) => Err(Gone),
            Err(_) => {
                self.fail(tonic::Status::resource_exhausted(format!(
                    "events: this client read nothing for {}s while events waited, and was disconnected (the manager keeps no unbounded backlog); resume with `skep events --since TIME`",
                    self.patience.as_secs()
                )));
                Err(Gone)
            }
        }
    }

    /// Ends the stream with `status` (the free slot [`Self::send`] keeps takes it).
    fn fail(&self, status: tonic::Status) {
        let _ = self.tx.try_send(Err(status));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Actor, AuditEvent, Outcome};

    /// A chain of `n` records, every `every`-th a secret creation (none for 0), the others
    /// deliveries.
    fn chain(n: usize, every: usize) -> State {
        let mut s = State::default();
        for i in 0..n {
            let e = if every > 0 && i % every == 0 {
                AuditEvent::now(Actor::local_admin("n1"), "secret.create", "db", Outcome::Ok)
                    .with("secret_id", format!("x{i}"))
            } else {
                AuditEvent::now(Actor::node("n1"), "secret.deliver", "db", Outcome::Ok)
            };
            s.audit.append(e);
        }
        s
    }

    #[test]
    fn a_scan_reads_in_bounded_steps_and_stops_at_the_head() {
        // Records that make no event: read SCAN at a time.
        let s = chain(2 * SCAN, 0);
        let sel = Selection::default();
        let first = scan(&s, 1, &sel);
        assert!(first.events.is_empty() && first.head.is_none());
        assert_eq!(first.next, SCAN as u64 + 1);
        let second = scan(&s, first.next, &sel);
        assert_eq!(second.next, 2 * SCAN as u64 + 1);
        assert!(second.head.is_some(), "the head was reached");
        let idle = scan(&s, second.next, &sel);
        assert!(idle.events.is_empty() && idle.head.is_some());
        assert_eq!(idle.next, second.next);
        // Events: at most BATCH a step, none lost between steps.
        let s = chain(4 * SCAN, 2);
        let only = Selection::parse("", "", &["type=secret".into()]).unwrap();
        let (mut next, mut total, mut steps) = (1, 0, 0);
        loop {
            let step = scan(&s, next, &only);
            assert!(step.events.len() <= BATCH);
            assert!(step.next - next <= SCAN as u64);
            total += step.events.len();
            steps += 1;
            next = step.next;
            if step.head.is_some() {
                break;
            }
        }
        assert_eq!(total, 2 * SCAN);
        assert!(steps >= 2 * SCAN / BATCH, "{steps}");
    }

    #[test]
    fn a_cursor_behind_the_retention_is_told() {
        let mut s = chain(8, 1);
        s.audit.trim_before(5);
        assert_eq!(scan(&s, 3, &Selection::default()).lost, Some(5));
        assert_eq!(scan(&s, 5, &Selection::default()).lost, None);
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_disconnected_with_a_reason() {
        let (tx, mut rx) = mpsc::channel(4);
        let out = Outbox {
            tx,
            patience: Duration::from_millis(50),
        };
        let mut sent = 0;
        while out.send(Vec::new()).await.is_ok() {
            sent += 1;
            assert!(sent < 10, "the queue grew without bound");
        }
        assert_eq!(sent, 3, "one slot stays free for the error");
        for _ in 0..sent {
            assert!(matches!(rx.recv().await, Some(Ok(_))));
        }
        let Some(Err(status)) = rx.recv().await else {
            panic!("no error ended the stream");
        };
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().contains("read nothing for"), "{status}");
    }

    #[tokio::test]
    async fn a_client_that_hung_up_ends_the_stream() {
        let (tx, rx) = mpsc::channel(4);
        drop(rx);
        let out = Outbox {
            tx,
            patience: Duration::from_secs(5),
        };
        assert!(out.send(Vec::new()).await.is_err());
    }
}
