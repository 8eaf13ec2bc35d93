//! The audit chain's life on a manager: reads (filtered here, and themselves audited,
//! coalesced so polling does not flood the chain), following new records as they are
//! applied, and on the leader signed checkpoints, the signing key of older swarms, and
//! retention.
//!
//! ```text
//!  applied-state watch ──► leader: checkpoint due? ──sign head──► Command::AuditCheckpoint
//!                                  retention?      ──────────────► AuditTrim at a checkpoint
//!                     └──► follow streams: records after the last one sent, filtered
//! ```

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{Manager, ManagerError};
use crate::api::v1::AuditFollowResponse;
use crate::audit::checkpoint::{AuditKey, Checkpoint, CheckpointPolicy, trim_point};
use crate::audit::filter::AuditFilter;
use crate::audit::{Actor, AuditEvent, AuditRecord, Outcome};
use crate::store::model::Command;

/// Identical reads by one actor within this window make one `audit.read` record.
pub const READ_COALESCE_WINDOW: Duration = Duration::from_secs(10);
/// Most records one follow message carries.
const FOLLOW_BATCH: usize = 512;

/// Decides which audit reads are recorded: the first of a kind (actor, what, filters), then
/// none of that kind for [`READ_COALESCE_WINDOW`]; the next record says how many it stands
/// for. Pure: the caller passes the time.
#[derive(Debug, Default)]
pub struct ReadCoalescer {
    last: HashMap<String, (Instant, u64)>,
}

impl ReadCoalescer {
    /// Forgets a kind of read whose record could not be committed: the next one is recorded.
    pub fn forget(&mut self, key: &str) {
        self.last.remove(key);
    }

    /// `Some(n)`: record this read, saying `n` identical reads were coalesced before it;
    /// `None`: count it and record nothing.
    pub fn admit(&mut self, key: &str, now: Instant) -> Option<u64> {
        if self.last.len() > 1024 {
            self.last
                .retain(|_, (t, _)| now.duration_since(*t) < READ_COALESCE_WINDOW);
        }
        match self.last.get_mut(key) {
            Some((t, n)) if now.duration_since(*t) < READ_COALESCE_WINDOW => {
                *n += 1;
                None
            }
            _ => {
                let before = self
                    .last
                    .insert(key.to_string(), (now, 0))
                    .map_or(0, |(_, n)| n);
                Some(before)
            }
        }
    }
}

impl Manager {
    /// The swarm's audit public key (hex), once it has one.
    pub fn audit_public_key(&self) -> Option<String> {
        self.read(|s| {
            s.cluster
                .as_ref()
                .and_then(|c| c.audit_key.as_ref().map(|k| k.public_key().to_string()))
        })
    }

    /// The records `filter` selects, oldest first.
    pub fn audit_records(&self, filter: &AuditFilter) -> Vec<AuditRecord> {
        self.read(|s| {
            s.audit
                .since(filter.from_seq)
                .iter()
                .filter(|r| filter.matches(r))
                .cloned()
                .collect()
        })
    }

    /// Records that `actor` read the audit log (`how`: ls, follow, export, verify), with the
    /// filters as details; identical reads within [`READ_COALESCE_WINDOW`] make one record.
    /// Fail-closed: the record is committed before the read is served, and a read whose
    /// record cannot be committed is refused (and not counted as coalesced).
    pub async fn audit_read(
        self: &Arc<Self>,
        actor: Actor,
        how: &str,
        filter: &AuditFilter,
    ) -> Result<(), ManagerError> {
        let details = filter.details();
        let key = format!("{}:{}|{how}|{details:?}", actor.kind, actor.id);
        let admitted = self
            .reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(&key, Instant::now());
        let Some(coalesced) = admitted else {
            return Ok(());
        };
        // The record needs a quorum, `--stale` or not: fail fast, saying so, without one.
        if let Err(e) = self.read_barrier().await {
            self.reads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .forget(&key);
            return Err(e.into());
        }
        let mut event = AuditEvent::now(actor, "audit.read", how, Outcome::Ok);
        event.details = details;
        if coalesced > 0 {
            event = event.with("coalesced_before", coalesced.to_string());
        }
        let done = self.audit(event).await;
        if done.is_err() {
            self.reads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .forget(&key);
        }
        done
    }

    /// `swarm update --audit-retention`: keep at least `keep` records (0: all), audited.
    pub async fn set_audit_retention(&self, actor: Actor, keep: u64) -> Result<(), ManagerError> {
        let audit = AuditEvent::now(actor, "swarm.update", "audit-retention", Outcome::Ok)
            .with("keep", keep.to_string());
        self.propose(Command::Batch(vec![
            Command::SetAuditRetention { keep },
            Command::Audit(audit),
        ]))
        .await
    }

    /// The leader's checkpoint loop: on every applied change (and at least every second),
    /// appends a signed checkpoint when one is due, makes the signing key of a swarm that
    /// has none, and trims the chain to its retention at a checkpoint.
    pub async fn run_audit_checkpoints(self: Arc<Self>, policy: CheckpointPolicy) {
        let mut applied = self.state().subscribe();
        loop {
            if self.is_leader() {
                self.checkpoint_once(&policy).await;
            }
            if let Ok(Err(_)) =
                tokio::time::timeout(Duration::from_secs(1), applied.changed()).await
            {
                return; // the state machine stopped: so has this manager
            }
        }
    }

    async fn checkpoint_once(&self, policy: &CheckpointPolicy) {
        let now = time::OffsetDateTime::now_utc();
        let Some((key, due, trim)) = self.read(|s| {
            s.cluster.as_ref().map(|c| {
                (
                    c.audit_key.clone(),
                    policy.due(&s.audit, now),
                    trim_point(&s.audit, c.audit_retention)
                        .and_then(|seq| Some((seq, s.audit.records().first()?.seq))),
                )
            })
        }) else {
            return;
        };
        let Some(key) = key else {
            self.create_audit_key().await;
            return;
        };
        if due {
            let cp = self.read(|s| {
                Checkpoint::sign(&key, &self.node_id, crate::util::rfc3339(now), &s.audit)
            });
            match cp {
                Ok(cp) => match self.propose(Command::AuditCheckpoint(cp)).await {
                    Ok(()) => {}
                    // A record landed between signing and applying: signed again next pass.
                    Err(ManagerError::Rejected(r)) => {
                        tracing::debug!(reason = %r, "audit checkpoint not applied")
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot append an audit checkpoint"),
                },
                Err(e) => tracing::error!(error = %e, "cannot sign an audit checkpoint"),
            }
        }
        if let Some((first_seq, old_first)) = trim {
            let event = AuditEvent::now(
                Actor::node(&self.node_id),
                "audit.trim",
                &first_seq.to_string(),
                Outcome::Ok,
            )
            .with("removed_from", old_first.to_string())
            .with("removed_to", (first_seq - 1).to_string());
            let cmd = Command::Batch(vec![
                Command::AuditTrim { first_seq },
                Command::Audit(event),
            ]);
            if let Err(e) = self.propose(cmd).await {
                tracing::warn!(error = %e, "cannot trim the audit chain");
            }
        }
    }

    /// A swarm created before checkpoints existed gets its signing key from the leader.
    async fn create_audit_key(&self) {
        let key = match AuditKey::generate() {
            Ok(k) => k,
            Err(e) => {
                tracing::error!(error = %e, "cannot make the audit signing key");
                return;
            }
        };
        let event = AuditEvent::now(
            Actor::node(&self.node_id),
            "audit.key.create",
            "audit",
            Outcome::Ok,
        )
        .with("public_key", key.public_key());
        let cmd = Command::Batch(vec![Command::SetAuditKey(key), Command::Audit(event)]);
        match self.propose(cmd).await {
            Ok(()) => tracing::info!("made the swarm's audit signing key"),
            Err(e) => tracing::warn!(error = %e, "cannot store the audit signing key"),
        }
    }
}

/// `audit ls --follow`: the records `filter` selects now, then each new one as it is applied
/// here. Ends when the client goes away or the manager stops.
pub fn follow(
    mgr: Arc<Manager>,
    filter: AuditFilter,
) -> mpsc::Receiver<Result<AuditFollowResponse, tonic::Status>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut applied = mgr.state().subscribe();
        let mut next = filter.from_seq;
        loop {
            let (batch, head) = mgr.read(|s| {
                let batch: Vec<String> = s
                    .audit
                    .since(next)
                    .iter()
                    .filter(|r| filter.matches(r))
                    .take(FOLLOW_BATCH)
                    .filter_map(|r| serde_json::to_string(r).ok().map(|j| (r.seq, j)))
                    .map(|(seq, j)| {
                        next = seq + 1;
                        j
                    })
                    .collect();
                (batch, s.audit.head().map_or(0, |h| h.seq))
            });
            let full = batch.len() == FOLLOW_BATCH;
            if !full {
                // Nothing more matches up to the head: start after it next time.
                next = next.max(head + 1);
            }
            if !batch.is_empty() {
                let msg = AuditFollowResponse {
                    records_json: batch,
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return; // the client went away
                }
            }
            if full {
                continue;
            }
            tokio::select! {
                changed = applied.changed() => {
                    if changed.is_err() {
                        return; // the manager stopped; the stream ends
                    }
                }
                () = tx.closed() => return,
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_reads_are_coalesced_within_the_window() {
        let mut c = ReadCoalescer::default();
        let t0 = Instant::now();
        assert_eq!(c.admit("a", t0), Some(0));
        assert_eq!(c.admit("a", t0 + Duration::from_secs(1)), None);
        assert_eq!(c.admit("a", t0 + Duration::from_secs(2)), None);
        // Another kind of read is recorded at once.
        assert_eq!(c.admit("b", t0 + Duration::from_secs(2)), Some(0));
        // After the window, one record that stands for the two coalesced.
        assert_eq!(c.admit("a", t0 + READ_COALESCE_WINDOW), Some(2));
        assert_eq!(c.admit("a", t0 + READ_COALESCE_WINDOW), None);
    }

    #[test]
    fn a_read_whose_record_failed_is_not_coalesced() {
        let mut c = ReadCoalescer::default();
        let t0 = Instant::now();
        assert_eq!(c.admit("a", t0), Some(0));
        // Its record could not be committed (the read was refused): the next one is recorded.
        c.forget("a");
        assert_eq!(c.admit("a", t0 + Duration::from_secs(1)), Some(0));
    }
}
