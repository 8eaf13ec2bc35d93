//! The replicated store: object model, Raft commands, sealed log and snapshot storage.
//!
//! ```text
//!  Raft (openraft) ──append/vote/purge──► LogStore ──sealed records──► <dir>/raft.redb
//!        │
//!        └──apply committed──► StateMachineStore ──State::apply──► State (memory)
//!                                   │                                  ▲
//!                                   ├── build/install snapshot ──► <dir>/snapshot.sealed
//!                                   └── StateHandle (read, wait_applied) ── other components
//! ```
//!
//! Every byte this module writes is sealed under the data key ([`seal::Dek`]); see
//! [`seal`] for the record format. Snapshots travel between managers in plaintext over mTLS
//! (each manager has its own data key) and are sealed again by the receiver.

pub mod anchor;
pub mod backup;
#[doc(hidden)]
pub mod fixtures;
pub mod log;
pub mod marked;
pub mod model;
pub mod network_obj;
pub mod recover;
pub mod seal;
pub mod secret_obj;
pub mod service;
pub mod sm;
pub mod tasks;
pub mod testing;
pub mod vip;
pub mod volumes;
pub mod wake;
pub mod wire;
pub mod workload;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use log::LogStore;
pub use sm::{StateHandle, StateMachineStore};

use seal::{Dek, SealError, Sealer};

openraft::declare_raft_types!(
    /// The openraft type configuration of skep's managers. A node's `addr` is the manager's
    /// `IP:PORT`.
    pub TypeConfig:
        D = model::Command,
        R = model::Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft instance over the sealed store.
pub type Raft = openraft::Raft<TypeConfig>;

/// Log id of this store's Raft.
pub type LogId = openraft::LogId<u64>;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory could not be created, read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The log database could not be opened.
    #[error(
        "opening the raft log database {path}: {source}; if another skep daemon uses this directory, stop it"
    )]
    Database {
        /// The database file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: redb::Error,
    },
    /// A sealed record did not open.
    #[error("{path}: {source}")]
    Sealed {
        /// The file it came from.
        path: PathBuf,
        /// The cause.
        #[source]
        source: SealError,
    },
    /// A record opened but its contents do not make sense.
    #[error(
        "{path}: {what}: the store is damaged; restore it from a backup or remove this manager and re-join it"
    )]
    Corrupt {
        /// The file it came from.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The Raft log was written by a skep build whose encoding this one cannot read
    /// ([`wire::LOG_FORMAT`]).
    #[error(
        "{}: this Raft log was written by a skep build of log format {}, and this skep reads format {}: start the build that wrote it, or move the swarm to this build with `skep swarm backup` (run by that build) and `skep swarm restore` (by this one, on an empty data directory)",
        path.display(),
        found.map_or_else(|| "1 (from before formats were recorded)".to_string(), |f| f.to_string()),
        wire::LOG_FORMAT
    )]
    Format {
        /// The log file.
        path: PathBuf,
        /// The format it records, `None` for a log from before formats were recorded.
        found: Option<u32>,
    },
    /// The state machine stopped (Raft shut down) before the awaited index was applied.
    #[error("the store closed before log index {index} was applied: raft stopped")]
    Closed {
        /// The awaited index.
        index: u64,
    },
    /// A blocking task failed.
    #[error("store task failed: {0}")]
    Task(String),
    /// The store is older than its anchor: it went back in time.
    #[error(
        "refusing to start: the Raft store in {dir} is older than this manager's anchor {anchor}: {details}. \
         It was deleted, emptied or replaced by an older copy, and serving it could bring back removed \
         nodes and revoked access and hide lost audit records. Safe recovery: from another manager run \
         `skep node rm --force <this node's ID>`, then clear this node's data directory and join it \
         again. If this is the only manager and you accept losing what came after that copy, start \
         the daemon once with --force-rollback (the choice is audited)"
    )]
    Rollback {
        /// The Raft store directory.
        dir: PathBuf,
        /// The anchor file.
        anchor: PathBuf,
        /// What went back.
        details: String,
    },
    /// The anchor could not be read or written.
    #[error("{0}")]
    Anchor(#[from] anchor::AnchorError),
}

/// What to do with a store older than its anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RollbackPolicy {
    /// Refuse to open it ([`StoreError::Rollback`]).
    #[default]
    Refuse,
    /// Open it anyway (`--force-rollback`): the operator accepts the older state.
    Accept,
}

/// A store opened against its rollback anchor.
pub struct Anchored {
    /// The log.
    pub log: LogStore,
    /// The state machine.
    pub sm: StateMachineStore,
    /// Keeps the anchor up to date: run [`anchor::Keeper::run`], and refresh on a clean stop.
    pub keeper: Arc<anchor::Keeper>,
    /// What went back, when the policy accepted a rollback.
    pub rolled_back: Option<String>,
}

/// Opens the sealed store in `dir` like [`open`], and checks it against the rollback anchor
/// at `anchor_path` (outside `dir`): a store whose durable vote, committed index or snapshot
/// is behind what the anchor recorded, or that lost its anchor after having one, or that has
/// a snapshot but no log at all, is refused ([`StoreError::Rollback`]) unless `policy`
/// accepts it. Then records the store's current values as the next anchor generation.
pub async fn open_anchored(
    dir: &Path,
    anchor_path: &Path,
    dek: Dek,
    policy: RollbackPolicy,
) -> Result<Anchored, StoreError> {
    let sealer = Arc::new(Sealer::new(&dek));
    drop(dek);
    let (log, sm) = open_with(dir.to_path_buf(), sealer.clone()).await?;
    let now = anchor::Durable::read(&log, &sm).await?;
    let marked = log.is_anchored().await?;
    let found = match anchor::read(anchor_path, &sealer) {
        Ok(a) => a,
        Err(e) if policy == RollbackPolicy::Accept => {
            tracing::error!(error = %e, "the store anchor is unreadable; --force-rollback replaces it");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let mut problems = match &found {
        Some(a) => anchor::regressions(a, &now),
        None if marked => vec![format!(
            "the anchor file is missing although this store was anchored (log, vote term {}, committed index {})",
            now.vote_term, now.committed
        )],
        None => Vec::new(),
    };
    if problems.is_empty() && now.vote_term == 0 && now.snapshot > 0 {
        problems.push(format!(
            "there is a snapshot at index {} but no log and no vote",
            now.snapshot
        ));
    }
    let rolled_back = if problems.is_empty() {
        None
    } else {
        let details = problems.join("; ");
        if policy == RollbackPolicy::Refuse {
            return Err(StoreError::Rollback {
                dir: dir.to_path_buf(),
                anchor: anchor_path.to_path_buf(),
                details,
            });
        }
        tracing::error!(store = %dir.display(), %details, "starting from a store older than its anchor, as --force-rollback asks");
        Some(details)
    };
    if found.is_none() && !marked && !now.is_empty() {
        tracing::warn!(store = %dir.display(), anchor = %anchor_path.display(), "this store had no rollback anchor (written by an older skep): anchoring it now");
    }
    let generation = found.map_or(0, |a| a.generation);
    let first = now.anchor(generation + 1);
    let (p, s) = (anchor_path.to_path_buf(), sealer.clone());
    tokio::task::spawn_blocking(move || anchor::write(&p, &s, &first))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
    if !marked {
        log.mark_anchored().await?;
    }
    let keeper = Arc::new(anchor::Keeper::new(
        anchor_path.to_path_buf(),
        sealer,
        log.clone(),
        sm.clone(),
        first,
    ));
    Ok(Anchored {
        log,
        sm,
        keeper,
        rolled_back,
    })
}

/// Opens (or creates) the sealed store in `dir`: the log in `<dir>/raft.redb`, the latest
/// snapshot in `<dir>/snapshot.sealed`. The directory is created with mode 0700. The state
/// machine starts from the snapshot; Raft re-applies the committed log after it.
pub async fn open(dir: &Path, dek: Dek) -> Result<(LogStore, StateMachineStore), StoreError> {
    let dir = dir.to_path_buf();
    let sealer = Arc::new(Sealer::new(&dek));
    drop(dek);
    open_with(dir, sealer).await
}

/// [`open`] with any sealer (the benchmark passes the plaintext one).
#[doc(hidden)]
pub async fn open_with(
    dir: PathBuf,
    sealer: Arc<Sealer>,
) -> Result<(LogStore, StateMachineStore), StoreError> {
    let d = dir.clone();
    tokio::task::spawn_blocking(move || create_private_dir(&d))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
    let log = LogStore::open(&dir, sealer.clone()).await?;
    let sm = StateMachineStore::open(&dir, sealer).await?;
    if let Some(purged) = log.last_purged().await? {
        let snap = sm.snapshot_index();
        if snap.is_none_or(|i| i < purged.index) {
            return Err(StoreError::Corrupt {
                path: dir.join(sm::SNAPSHOT_FILE),
                what: format!(
                    "the log is purged up to index {} but the snapshot ends at {}",
                    purged.index,
                    snap.map_or_else(|| "none".to_string(), |i| i.to_string())
                ),
            });
        }
    }
    Ok((log, sm))
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |what, source| StoreError::Io {
        what,
        path: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io("creating", e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io("restricting", e))
}

#[cfg(test)]
mod tests;
