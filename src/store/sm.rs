//! The state machine: applies committed commands to the in-memory [`State`], and keeps its
//! latest snapshot sealed on disk.
//!
//! ```text
//!  committed entries ──apply──► Applied { State, last_applied, last_membership } ──► StateHandle
//!                                   │                                   (read, wait_applied)
//!  build_snapshot ──serialize──► plaintext (what Raft sends to a follower, over mTLS)
//!                     └──seal(Snapshot, last index)──► <dir>/snapshot.sealed (tmp, fsync, rename)
//!  install_snapshot ◄── plaintext from the leader: validated, sealed under our own key
//! ```
//!
//! The state is not persisted on every apply: on restart it is loaded from the snapshot and
//! Raft re-applies the committed log after it (the log store keeps the committed id).
//!
//! A snapshot file is `"SKEPSNAP" || last log index (u64, big endian) || sealed record`; the
//! index is in the associated data, and must match the metadata inside.

// openraft's `StorageError` is large, and the storage traits fix it as the error type.
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    AnyError, BasicNode, Entry, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageError,
    StorageIOError, StoredMembership,
};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use zeroize::Zeroizing;

use super::model::{Response, State};
use super::seal::{RecordKind, SealError, Sealer};
use super::{LogId, StoreError, TypeConfig};

/// Name of the sealed snapshot in the store directory.
pub const SNAPSHOT_FILE: &str = "snapshot.sealed";
const SNAPSHOT_TMP: &str = "snapshot.sealed.tmp";
const MAGIC: &[u8; 8] = b"SKEPSNAP";
const FILE_HEADER: usize = MAGIC.len() + 8;

type StorageResult<T> = Result<T, StorageError<u64>>;
type Meta = SnapshotMeta<u64, BasicNode>;

/// What the state machine has applied.
#[derive(Default)]
struct Applied {
    state: State,
    last_applied: Option<LogId>,
    last_membership: StoredMembership<u64, BasicNode>,
}

/// A snapshot's contents: what travels to followers, and what is sealed on disk.
#[derive(Serialize)]
struct PayloadRef<'a> {
    meta: &'a Meta,
    state: &'a State,
}

#[derive(Deserialize)]
struct Payload {
    meta: Meta,
    state: State,
}

/// A read handle on the applied state, for the components that read the store. Cheap to
/// clone.
#[derive(Clone)]
pub struct StateHandle {
    applied: Arc<RwLock<Applied>>,
    applied_rx: watch::Receiver<u64>,
    wake: Arc<super::wake::Wake>,
}

impl StateHandle {
    /// Reads the state as this manager has applied it. Keep `f` short: it holds a read lock
    /// that the state machine waits on.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&read_lock(&self.applied).state)
    }

    /// Reads the state together with the id of the last entry it includes (one lock: a
    /// consistent snapshot, e.g. for a backup).
    pub fn read_applied<T>(&self, f: impl FnOnce(&State, Option<LogId>) -> T) -> T {
        let a = read_lock(&self.applied);
        f(&a.state, a.last_applied)
    }

    /// The id of the last applied log entry.
    pub fn last_applied(&self) -> Option<LogId> {
        read_lock(&self.applied).last_applied
    }

    /// The index of the last applied log entry (0 before any).
    pub fn applied_index(&self) -> u64 {
        *self.applied_rx.borrow()
    }

    /// A receiver of the last applied index, updated after every applied batch and installed
    /// snapshot.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied_rx.clone()
    }

    /// Wake-ups by what applied entries changed: a node's tasks, or anything else
    /// ([`super::wake`]).
    pub fn wake(&self) -> &super::wake::Wake {
        &self.wake
    }

    /// Waits until the entry at `index` has been applied (e.g. the index a client write
    /// returned, before reading what it changed). Returns the applied index.
    pub async fn wait_applied(&self, index: u64) -> Result<u64, StoreError> {
        let mut rx = self.applied_rx.clone();
        let applied = rx
            .wait_for(|&a| a >= index)
            .await
            .map_err(|_| StoreError::Closed { index })?;
        Ok(*applied)
    }
}

impl std::fmt::Debug for StateHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateHandle")
            .field("applied_index", &self.applied_index())
            .finish_non_exhaustive()
    }
}

/// The state machine store. Cheap to clone: clones share the state (the snapshot builder is
/// one).
#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    sealer: Arc<Sealer>,
    applied: Arc<RwLock<Applied>>,
    applied_tx: watch::Sender<u64>,
    wake: Arc<super::wake::Wake>,
    /// Metadata of the snapshot in `snapshot.sealed`.
    current: Mutex<Option<Meta>>,
    /// Serializes snapshot file writes (a build and an install can overlap).
    write: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for StateMachineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachineStore")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl StateMachineStore {
    /// Opens the state machine in `dir`, starting from the sealed snapshot if there is one.
    pub(crate) async fn open(dir: &Path, sealer: Arc<Sealer>) -> Result<Self, StoreError> {
        let d = dir.to_path_buf();
        let s = sealer.clone();
        let loaded = tokio::task::spawn_blocking(move || load_snapshot(&d, &s))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        let (applied, current) = match loaded {
            Some(p) => (
                Applied {
                    state: p.state,
                    last_applied: p.meta.last_log_id,
                    last_membership: p.meta.last_membership.clone(),
                },
                Some(p.meta),
            ),
            None => (Applied::default(), None),
        };
        let (applied_tx, _) = watch::channel(applied.last_applied.map_or(0, |l| l.index));
        Ok(StateMachineStore {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                sealer,
                applied: Arc::new(RwLock::new(applied)),
                applied_tx,
                wake: Arc::default(),
                current: Mutex::new(current),
                write: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// A read handle on the applied state.
    pub fn state(&self) -> StateHandle {
        StateHandle {
            applied: self.inner.applied.clone(),
            applied_rx: self.inner.applied_tx.subscribe(),
            wake: self.inner.wake.clone(),
        }
    }

    /// A receiver of the last applied index.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.applied_tx.subscribe()
    }

    /// Waits until the entry at `index` has been applied.
    pub async fn wait_applied(&self, index: u64) -> Result<u64, StoreError> {
        self.state().wait_applied(index).await
    }

    /// Last log index covered by the snapshot on disk.
    pub(crate) fn snapshot_index(&self) -> Option<u64> {
        self.current_meta()
            .and_then(|m| m.last_log_id.map(|l| l.index))
    }

    fn current_meta(&self) -> Option<Meta> {
        self.inner
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_current_meta(&self, meta: Meta) {
        *self.inner.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(meta);
    }

    /// Seals `payload` and writes it as the current snapshot, unless a newer one is there
    /// already (`force` for an installed snapshot, which replaces whatever we had).
    async fn persist(&self, meta: &Meta, payload: &[u8], force: bool) -> StorageResult<()> {
        let _guard = self.inner.write.lock().await;
        if !force
            && self
                .current_meta()
                .is_some_and(|cur| cur.last_log_id >= meta.last_log_id)
        {
            return Ok(());
        }
        let position = position_of(meta);
        let mut file = Vec::with_capacity(FILE_HEADER + payload.len() + 64);
        file.extend_from_slice(MAGIC);
        file.extend_from_slice(&position.to_be_bytes());
        file.extend_from_slice(
            &self
                .inner
                .sealer
                .seal(RecordKind::Snapshot, position, payload),
        );
        let dir = self.inner.dir.clone();
        tokio::task::spawn_blocking(move || write_atomic(&dir, &file))
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e)))?
            .map_err(|e| {
                StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e))
            })?;
        self.set_current_meta(meta.clone());
        Ok(())
    }

    fn publish_applied(&self, last: Option<LogId>) {
        if let Some(last) = last {
            self.inner.applied_tx.send_replace(last.index);
        }
    }
}

fn read_lock(l: &RwLock<Applied>) -> RwLockReadGuard<'_, Applied> {
    // State::apply never panics, so a poisoned lock still holds a consistent state.
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write_lock(l: &RwLock<Applied>) -> RwLockWriteGuard<'_, Applied> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

fn position_of(meta: &Meta) -> u64 {
    meta.last_log_id.map_or(0, |l| l.index)
}

/// Writes `<dir>/snapshot.sealed` so that a crash leaves the old or the new file, never a mix:
/// write a 0600 temporary file, fsync it, rename it over, fsync the directory.
fn write_atomic(dir: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(SNAPSHOT_TMP);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(SNAPSHOT_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Reads, opens and checks the snapshot file, if there is one.
fn load_snapshot(dir: &Path, sealer: &Sealer) -> Result<Option<Payload>, StoreError> {
    let path = dir.join(SNAPSHOT_FILE);
    match std::fs::remove_file(dir.join(SNAPSHOT_TMP)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(StoreError::Io {
                what: "removing",
                path: dir.join(SNAPSHOT_TMP),
                source: e,
            });
        }
        _ => {}
    }
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StoreError::Io {
                what: "reading",
                path,
                source,
            });
        }
    };
    let plain = open_snapshot_file(sealer, &bytes).map_err(|e| match e {
        OpenError::Sealed(source) => StoreError::Sealed {
            path: path.clone(),
            source,
        },
        OpenError::Corrupt(what) => StoreError::Corrupt {
            path: path.clone(),
            what,
        },
    })?;
    let payload: Payload = serde_json::from_slice(&plain).map_err(|e| StoreError::Corrupt {
        path: path.clone(),
        what: format!("undecodable snapshot: {e}"),
    })?;
    if position_of(&payload.meta) != u64::from_be_bytes(header_position(&bytes)) {
        return Err(StoreError::Corrupt {
            path,
            what: "snapshot metadata does not match its file header".into(),
        });
    }
    Ok(Some(payload))
}

enum OpenError {
    Sealed(SealError),
    Corrupt(String),
}

fn header_position(file: &[u8]) -> [u8; 8] {
    let mut p = [0u8; 8];
    if let Some(b) = file.get(MAGIC.len()..FILE_HEADER) {
        p.copy_from_slice(b);
    }
    p
}

/// Opens a snapshot file's sealed record; returns the plaintext payload.
fn open_snapshot_file(sealer: &Sealer, file: &[u8]) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    if file.len() < FILE_HEADER || &file[..MAGIC.len()] != MAGIC {
        return Err(OpenError::Corrupt(
            "not a skep snapshot file (bad header)".into(),
        ));
    }
    let position = u64::from_be_bytes(header_position(file));
    sealer
        .open(RecordKind::Snapshot, position, &file[FILE_HEADER..])
        .map_err(OpenError::Sealed)
}

impl StateMachineStore {
    /// The current state as a snapshot: its metadata and plaintext payload.
    fn snapshot_payload(&self) -> StorageResult<(Meta, Zeroizing<Vec<u8>>)> {
        let mut nonce = [0u8; 8];
        rand::rng().fill_bytes(&mut nonce);
        let a = read_lock(&self.inner.applied);
        let snapshot_id = match a.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, hex::encode(nonce)),
            None => format!("--{}", hex::encode(nonce)),
        };
        let meta = Meta {
            last_log_id: a.last_applied,
            last_membership: a.last_membership.clone(),
            snapshot_id,
        };
        let payload = encode_payload(&meta, &a.state).map_err(|e| {
            StorageIOError::write_snapshot(Some(meta.signature()), AnyError::new(&e))
        })?;
        Ok((meta, payload))
    }
}

/// A snapshot's plaintext payload: `meta` and `state`, as [`StateMachineStore`] seals them
/// and sends them to followers.
pub(crate) fn encode_payload(meta: &Meta, state: &State) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    serde_json::to_vec(&PayloadRef { meta, state })
        .map(Zeroizing::new)
        .map_err(|e| StoreError::Task(format!("encoding a snapshot: {e}")))
}

impl StateMachineStore {
    /// Changes the applied state behind Raft's back and seals it as the current snapshot, so
    /// a restart starts from it. Only for tests that play an attacker holding the data key
    /// (see [`super::testing`]); never called by the daemon.
    #[doc(hidden)]
    pub async fn rewrite_state_for_test(
        &self,
        change: impl FnOnce(&mut State),
    ) -> Result<(), StoreError> {
        change(&mut write_lock(&self.inner.applied).state);
        self.inner.wake.all_nodes_changed();
        let (meta, payload) = self
            .snapshot_payload()
            .map_err(|e| StoreError::Task(e.to_string()))?;
        self.persist(&meta, &payload, true)
            .await
            .map_err(|e| StoreError::Task(e.to_string()))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (meta, payload) = self.snapshot_payload()?;
        self.persist(&meta, &payload, false).await?;
        tracing::info!(snapshot = %meta.snapshot_id, "built a state machine snapshot");
        crate::metrics::metrics().snapshot(false);
        // No copy of the state goes with it: openraft 0.9 keeps only the meta of a snapshot
        // it had built (`core::sm::worker`, `storage::helper`), and reads what it sends to
        // followers through `get_current_snapshot`. A copy was one more full-state buffer at
        // every build (tens of MiB at 10,000 tasks), and a plain one, never zeroized.
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(Vec::new())),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = StateMachineStore;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId>, StoredMembership<u64, BasicNode>)> {
        let a = read_lock(&self.inner.applied);
        Ok((a.last_applied, a.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Response>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut responses = Vec::new();
        let started = std::time::Instant::now();
        // Whether an entry changed more than tasks and the audit chain (the orchestrator and
        // the revocation loop look again), and whether it changed more than node records too
        // (every task session wakes then; otherwise only those of the nodes whose tasks or
        // records changed).
        let mut others = false;
        let mut sessions = false;
        let (last, mut changed, nodes) = {
            let mut a = write_lock(&self.inner.applied);
            for entry in entries {
                a.last_applied = Some(entry.log_id);
                let response = match entry.payload {
                    EntryPayload::Blank => Response::Ok,
                    EntryPayload::Normal(cmd) => {
                        others |= !cmd.changes_only_tasks();
                        sessions |= !cmd.changes_only_nodes_and_tasks();
                        a.state.apply(cmd)
                    }
                    EntryPayload::Membership(m) => {
                        others = true;
                        sessions = true;
                        a.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        Response::Ok
                    }
                };
                responses.push(response);
            }
            let nodes = a.state.nodes.take_changed();
            (a.last_applied, a.state.tasks.take_dirty(), nodes)
        };
        crate::metrics::metrics().raft_applied(started.elapsed());
        self.publish_applied(last);
        changed.extend(nodes.iter().cloned());
        self.inner.wake.nodes_changed(nodes);
        self.inner.wake.publish(changed, others, sessions);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let bytes = Zeroizing::new(snapshot.into_inner());
        let refuse = |what: String| {
            StorageIOError::read_snapshot(Some(meta.signature()), AnyError::error(what))
        };
        let payload: Payload = serde_json::from_slice(&bytes)
            .map_err(|e| refuse(format!("the snapshot from the leader does not decode: {e}")))?;
        if payload.meta != *meta {
            return Err(refuse(format!(
                "the snapshot from the leader describes {} but was announced as {}",
                payload.meta, meta
            ))
            .into());
        }
        self.persist(meta, &bytes, true).await?;
        {
            let mut a = write_lock(&self.inner.applied);
            *a = Applied {
                state: payload.state,
                last_applied: meta.last_log_id,
                last_membership: meta.last_membership.clone(),
            };
            a.state.tasks.take_dirty();
            a.state.nodes.take_changed();
        }
        self.publish_applied(meta.last_log_id);
        // A whole new state: every session looks again, and at every node.
        self.inner.wake.all_nodes_changed();
        self.inner.wake.publish(Default::default(), true, true);
        tracing::info!(snapshot = %meta.snapshot_id, "installed a snapshot from the leader");
        crate::metrics::metrics().snapshot(true);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let _guard = self.inner.write.lock().await;
        let Some(meta) = self.current_meta() else {
            return Ok(None);
        };
        let path = self.inner.dir.join(SNAPSHOT_FILE);
        let sig = meta.signature();
        let bytes = tokio::task::spawn_blocking(move || std::fs::read(path))
            .await
            .map_err(|e| StorageIOError::read_snapshot(Some(sig.clone()), AnyError::new(&e)))?
            .map_err(|e| StorageIOError::read_snapshot(Some(sig.clone()), AnyError::new(&e)))?;
        let plain = open_snapshot_file(&self.inner.sealer, &bytes).map_err(|e| {
            let e = match e {
                OpenError::Sealed(e) => AnyError::new(&e),
                OpenError::Corrupt(what) => AnyError::error(what),
            };
            StorageIOError::read_snapshot(Some(sig.clone()), e)
        })?;
        if u64::from_be_bytes(header_position(&bytes)) != position_of(&meta) {
            let e = AnyError::error(
                "the snapshot file does not match the snapshot this store recorded",
            );
            return Err(StorageIOError::read_snapshot(Some(sig), e).into());
        }
        // Moved, not copied: openraft's snapshot data is a plain `Vec`.
        let mut plain = plain;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(std::mem::take(&mut *plain))),
        }))
    }
}
