//! Bringing a swarm back after its managers are lost: `swarm init --force-new-cluster` on a
//! surviving manager, from its own sealed store. The store is rebuilt as a cluster of one
//! ([`crate::store::recover`]) with Raft stopped, Raft starts again on it, and the manager
//! commits the recovery ([`crate::manager::recovery`]). The node's tasks keep running.

use std::sync::Arc;
use std::time::Instant;

use tonic::Status;

use super::files::{Paths, read, update_node_file};
use super::{Daemon, Phase};
use crate::api::LOCKED_FOR_RECOVERY;
use crate::api::v1::{SwarmInitRequest, SwarmInitResponse};
use crate::audit::Actor;
use crate::manager::recovery::Recovery;
use crate::manager::{raft_id_of, to_status};
use crate::store::model::NodeRole;
use crate::store::seal::{Kek, Sealer};
use crate::store::{LogStore, StateMachineStore};

/// How long `--force-new-cluster` tries to reach a quorum before it believes none is left.
const QUORUM_CHECK: std::time::Duration = std::time::Duration::from_secs(3);

/// What the rebuilt store was made from.
struct Rebuilt {
    last_index: u64,
    replayed: u64,
}

impl Daemon {
    /// `swarm init --force-new-cluster`.
    pub(super) async fn force_new_cluster(
        &self,
        req: SwarmInitRequest,
    ) -> Result<SwarmInitResponse, Status> {
        let started = Instant::now();
        let mut phase = self.phase.lock().await;
        let (mut file, kek) = match &*phase {
            Phase::Inactive => {
                return Err(Status::failed_precondition(
                    "this node is not part of a swarm: --force-new-cluster recovers a manager from its \
                     own state; to bring a swarm back on a new machine, use `skep swarm restore FILE`",
                ));
            }
            Phase::Locked(f) => {
                if req.unlock_key.is_empty() {
                    return Err(Status::failed_precondition(format!(
                        "{LOCKED_FOR_RECOVERY}: give its unlock key (the CLI reads it from stdin)"
                    )));
                }
                let key = zeroize::Zeroizing::new(req.unlock_key.clone());
                (f.clone(), self.open_kek(&key)?)
            }
            Phase::Active(r) => (r.file.clone(), r.kek.clone()),
        };
        if file.role != NodeRole::Manager {
            return Err(Status::failed_precondition(
                "this node is a worker: run `skep swarm init --force-new-cluster` on a surviving manager",
            ));
        }
        if !req.advertise_addr.is_empty() {
            file.advertise_addr = self.advertise_addr(&req.advertise_addr)?;
        }
        // With a quorum, this would split the swarm in two: refuse.
        if let Phase::Active(r) = &*phase
            && let Some(m) = &r.manager
            && m.voters().len() > 1
            && m.read_barrier_within(QUORUM_CHECK).await.is_ok()
        {
            return Err(Status::failed_precondition(format!(
                "the swarm's {} managers have a quorum now: --force-new-cluster would split the \
                 swarm in two. It is for a majority lost for good; to take managers out, demote \
                 them (`skep node demote`)",
                m.voters().len()
            )));
        }
        // The store open under the running manager, if there is one: read through its
        // handles once Raft is stopped (its log is locked against a second open).
        let mut open = None;
        if let Phase::Active(r) = &mut *phase {
            for t in r.role_tasks.drain(..) {
                t.abort();
                let _ = t.await;
            }
            if let Some(m) = r.manager.take() {
                if let Err(e) = m.raft.shutdown().await {
                    tracing::warn!(error = %e, "raft shutdown");
                }
                if let Some(k) = m.anchor_keeper() {
                    if let Err(e) = k.refresh().await {
                        tracing::warn!(error = %e, "cannot refresh the store anchor");
                    }
                    open = Some(k.store());
                }
            }
            // Peers reconnect to what serves this address now.
            r.link.revocations.cut_all();
        }
        let rebuilt = rebuild_store(
            &self.paths(),
            &kek,
            open,
            &file.node_id,
            &file.advertise_addr,
        )
        .await;
        // Whatever happened, the node serves again: on the new store, or on the old one.
        let addr = file.advertise_addr.clone();
        if rebuilt.is_ok() {
            update_node_file(&self.paths().node(), |f| {
                f.advertise_addr = addr;
            })
            .map_err(|e| Status::internal(e.to_string()))?;
        } else if let Phase::Active(r) = &*phase {
            file = r.file.clone();
        }
        let mgr = match &mut *phase {
            Phase::Active(r) => {
                let (manager, tasks) = self
                    .start_role(&file, &r.kek, &r.identity, &r.supervisor, &r.link)
                    .await
                    .map_err(|e| {
                        let why = rebuilt
                            .as_ref()
                            .err()
                            .map_or_else(String::new, |s| format!("{}; then ", s.message()));
                        Status::internal(format!(
                            "{why}restarting the manager failed: {e}; restart the daemon"
                        ))
                    })?;
                r.file = file.clone();
                r.manager = manager.clone();
                r.role_tasks = tasks;
                manager
            }
            _ if rebuilt.is_err() => None,
            _ => {
                let running = self
                    .start(file.clone(), &kek)
                    .await
                    .map_err(|e| Status::internal(e.to_string()))?;
                let m = running.manager.clone();
                *phase = Phase::Active(running);
                m
            }
        };
        drop(phase);
        let rebuilt = rebuilt?;
        let mgr = mgr.ok_or_else(|| Status::internal("the manager did not start"))?;
        mgr.finish_recovery(
            Actor::local_admin(&file.node_id),
            &Recovery::ForceNewCluster {
                last_index: rebuilt.last_index,
                replayed: rebuilt.replayed,
            },
        )
        .await
        .map_err(to_status)?;
        tracing::warn!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            last_index = rebuilt.last_index,
            replayed = rebuilt.replayed,
            "this manager is now the only manager of its swarm (--force-new-cluster)"
        );
        let worker_token = mgr.read(|s| {
            s.cluster
                .as_ref()
                .map(|c| c.worker_token.expose().to_string())
                .unwrap_or_default()
        });
        Ok(SwarmInitResponse {
            node_id: file.node_id,
            worker_token,
            manager_token: String::new(),
            advertise_addr: file.advertise_addr,
            unlock_key: String::new(),
        })
    }
}

/// Replaces the Raft store in `p` by one holding everything it held, with `node_id` at
/// `addr` its only voter. The old store is read whole and the new one written beside it
/// before either is renamed, so a failure before the swap leaves the old store in place.
async fn rebuild_store(
    p: &Paths,
    kek: &Kek,
    open: Option<(LogStore, StateMachineStore, Arc<Sealer>)>,
    node_id: &str,
    addr: &str,
) -> Result<Rebuilt, Status> {
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Status::internal(format!("recovering the store: {what}: {e}"))
    };
    let old = match open {
        Some((log, sm, sealer)) => crate::store::recover::read_all_open(&p.raft(), log, sm)
            .await
            .map(|r| (r, sealer)),
        None => {
            let dek = kek
                .unwrap(&read(&p.dek()).map_err(|e| fail("reading the data key", &e))?)
                .map_err(|e| fail("opening the data key", &e))?;
            let sealer = Arc::new(Sealer::new(&dek));
            drop(dek);
            crate::store::recover::read_all(&p.raft(), sealer.clone())
                .await
                .map(|r| (r, sealer))
        }
    };
    let (old, sealer) = old.map_err(|e| fail("reading this manager's store", &e))?;
    let fresh = p.0.join("raft.recovered");
    let replaced = p.0.join("raft.replaced");
    for dir in [&fresh, &replaced] {
        remove_dir(dir).map_err(|e| fail("clearing a leftover directory", &e))?;
    }
    crate::store::recover::write_single(
        &fresh,
        sealer,
        &old.state,
        old.last,
        old.term,
        raft_id_of(node_id),
        addr,
    )
    .await
    .map_err(|e| fail("writing the new store", &e))?;
    let swap = || -> std::io::Result<()> {
        std::fs::rename(p.raft(), &replaced)?;
        std::fs::rename(&fresh, p.raft())?;
        std::fs::File::open(&p.0)?.sync_all()?;
        remove_dir(&replaced)
    };
    swap().map_err(|e| fail("replacing the store", &e))?;
    Ok(Rebuilt {
        last_index: old.last.index,
        replayed: old.replayed,
    })
}

fn remove_dir(dir: &std::path::Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
