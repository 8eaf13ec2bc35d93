//! The rollback anchor: a small sealed record kept OUTSIDE the `raft/` directory that says how
//! far this manager's durable store had come, so that a store which went back in time (a
//! deleted or emptied log, an older snapshot, the whole directory replaced by an older copy)
//! is refused at start instead of silently serving old state.
//!
//! ```text
//!  <data-dir>/raft.anchor = "SKEPANCH" || seal(Anchor, 0, postcard(Anchor))
//!      Anchor { generation, vote_term, committed, snapshot }
//!  <data-dir>/raft/raft.redb  meta "anchored" = seal(Anchor, 0, empty)  (set once anchored)
//! ```
//!
//! - Written atomically (temporary file, fsync, rename, fsync of the directory), under the
//!   store's data key, with associated data binding the record kind, so it cannot be forged
//!   or swapped with another sealed file without the key.
//! - Written only from values that are already durable (the vote and committed pointer read
//!   back from the log database, the applied index, the snapshot on disk), so it is never
//!   ahead of the store: at open the store's durable values must be at least the anchor's.
//! - Refreshed by [`Keeper::run`] whenever the store moves (at most about twice a second),
//!   and on a clean stop; the generation counts the writes.
//!
//! What it cannot see: the anchor and `raft/` replaced together by an older copy of both
//! (e.g. a whole-disk restore) on a lone manager; see SECURITY.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use serde::{Deserialize, Serialize};

use super::seal::{RecordKind, SealError, Sealer};
use super::{LogStore, StateMachineStore};

/// Name of the anchor file in the node's data directory (beside `node.json`).
pub const ANCHOR_FILE: &str = "raft.anchor";
const MAGIC: &[u8; 8] = b"SKEPANCH";

/// How far the durable store had come, as last recorded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// Counts the anchor's writes (1 for the first).
    pub generation: u64,
    /// The term of the durable vote.
    pub vote_term: u64,
    /// The highest log index known committed and durable here.
    pub committed: u64,
    /// The last log index covered by the snapshot on disk.
    pub snapshot: u64,
}

/// What the store holds durably now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Durable {
    /// The term of the saved vote (0: none).
    pub vote_term: u64,
    /// The committed index: the saved committed pointer or the applied index, whichever is
    /// higher (both only ever cover entries this store holds durably).
    pub committed: u64,
    /// The last index the log or the snapshot covers.
    pub last_index: u64,
    /// The last index the snapshot covers (0: none).
    pub snapshot: u64,
}

impl Durable {
    /// Reads the durable values of an open store.
    pub(crate) async fn read(log: &LogStore, sm: &StateMachineStore) -> Result<Self, AnchorError> {
        let e = |what: &str, err: openraft::StorageError<u64>| AnchorError::Store {
            what: format!("{what}: {err}"),
        };
        let mut log = log.clone();
        let vote = log
            .read_vote()
            .await
            .map_err(|x| e("reading the vote", x))?;
        let state = log
            .get_log_state()
            .await
            .map_err(|x| e("reading the log state", x))?;
        let committed = log
            .read_committed()
            .await
            .map_err(|x| e("reading the committed pointer", x))?;
        let mut sm = sm.clone();
        let (applied, _) = sm
            .applied_state()
            .await
            .map_err(|x| e("reading the applied state", x))?;
        let snapshot = sm.snapshot_index().unwrap_or(0);
        let index = |l: Option<super::LogId>| l.map_or(0, |l| l.index);
        Ok(Durable {
            vote_term: vote.map_or(0, |v| v.leader_id().term),
            committed: index(committed).max(index(applied)),
            last_index: index(state.last_log_id).max(snapshot),
            snapshot,
        })
    }

    /// Nothing at all: a store that was never used.
    pub fn is_empty(&self) -> bool {
        *self == Durable::default()
    }

    /// The anchor recording these values, as write number `generation`.
    pub fn anchor(&self, generation: u64) -> Anchor {
        Anchor {
            generation,
            vote_term: self.vote_term,
            committed: self.committed,
            snapshot: self.snapshot,
        }
    }
}

/// What went back, compared with the anchor: empty when the store is at least as far.
pub fn regressions(anchor: &Anchor, now: &Durable) -> Vec<String> {
    let mut out = Vec::new();
    if now.vote_term < anchor.vote_term {
        out.push(format!(
            "the saved vote is at term {} but term {} was recorded",
            now.vote_term, anchor.vote_term
        ));
    }
    if now.last_index < anchor.committed {
        out.push(format!(
            "the log and snapshot end at index {} but index {} was committed",
            now.last_index, anchor.committed
        ));
    }
    if now.snapshot < anchor.snapshot {
        out.push(format!(
            "the snapshot is at index {} but one at index {} was written",
            now.snapshot, anchor.snapshot
        ));
    }
    out
}

/// Why the anchor could not be read, written or checked.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// The file could not be read or written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The record did not open (another data key, or altered).
    #[error(
        "{path}: {source}; if this node got a new data key (re-joined), remove this file; otherwise it was altered"
    )]
    Sealed {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: SealError,
    },
    /// The record opened but is not an anchor.
    #[error("{path}: not a skep store anchor: {what}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The store's durable values could not be read.
    #[error("reading the store for its anchor: {what}")]
    Store {
        /// What failed.
        what: String,
    },
}

/// Reads and opens the anchor at `path`; `None` if there is no file.
pub fn read(path: &Path, sealer: &Sealer) -> Result<Option<Anchor>, AnchorError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(AnchorError::Io {
                what: "reading",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    decode(path, sealer, &bytes).map(Some)
}

fn decode(path: &Path, sealer: &Sealer, bytes: &[u8]) -> Result<Anchor, AnchorError> {
    let corrupt = |what: String| AnchorError::Corrupt {
        path: path.to_path_buf(),
        what,
    };
    let Some(sealed) = bytes.strip_prefix(MAGIC.as_slice()) else {
        return Err(corrupt("bad header".into()));
    };
    let plain = sealer
        .open(RecordKind::Anchor, 0, sealed)
        .map_err(|source| AnchorError::Sealed {
            path: path.to_path_buf(),
            source,
        })?;
    postcard::from_bytes(&plain).map_err(|e| corrupt(e.to_string()))
}

fn encode(sealer: &Sealer, anchor: &Anchor) -> Vec<u8> {
    // Four u64 fields: postcard cannot fail on them.
    let plain = zeroize::Zeroizing::new(postcard::to_allocvec(anchor).unwrap_or_default());
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&sealer.seal(RecordKind::Anchor, 0, &plain));
    out
}

/// Writes the anchor atomically: a crash leaves the old or the new record, never a mix.
pub fn write(path: &Path, sealer: &Sealer, anchor: &Anchor) -> Result<(), AnchorError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |what, path: &Path, source| AnchorError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("anchor.tmp");
    let bytes = encode(sealer, anchor);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("creating", &tmp, e))?;
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io("writing", &tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| io("renaming into place", path, e))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("syncing", dir, e))
}

/// Keeps the anchor of an open store up to date.
pub struct Keeper {
    path: PathBuf,
    sealer: Arc<Sealer>,
    log: LogStore,
    sm: StateMachineStore,
    last: tokio::sync::Mutex<Anchor>,
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keeper")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Keeper {
    /// The open store this keeper watches, and its sealer: how a recovery reads the store
    /// once Raft is stopped (a second open of the same log would fail on its lock).
    pub fn store(&self) -> (LogStore, StateMachineStore, Arc<Sealer>) {
        (self.log.clone(), self.sm.clone(), self.sealer.clone())
    }

    pub(crate) fn new(
        path: PathBuf,
        sealer: Arc<Sealer>,
        log: LogStore,
        sm: StateMachineStore,
        last: Anchor,
    ) -> Self {
        Keeper {
            path,
            sealer,
            log,
            sm,
            last: tokio::sync::Mutex::new(last),
        }
    }

    /// The anchor file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records what the store holds durably now, if it moved since the last write. Returns
    /// whether it wrote.
    pub async fn refresh(&self) -> Result<bool, AnchorError> {
        let mut last = self.last.lock().await;
        let now = Durable::read(&self.log, &self.sm).await?;
        let next = now.anchor(last.generation + 1);
        let same = Anchor {
            generation: next.generation,
            ..*last
        };
        if last.generation > 0 && next == same {
            return Ok(false);
        }
        let (path, sealer) = (self.path.clone(), self.sealer.clone());
        tokio::task::spawn_blocking(move || write(&path, &sealer, &next))
            .await
            .map_err(|e| AnchorError::Store {
                what: e.to_string(),
            })??;
        *last = next;
        Ok(true)
    }

    /// Refreshes the anchor whenever the store applies something, at most about twice a
    /// second, and at least every few seconds (votes move without applying). A failed write
    /// (a full disk) is logged once per distinct cause; the old anchor stays, which is safe.
    pub async fn run(self: Arc<Self>) {
        let mut applied = self.sm.subscribe();
        let mut said: Option<String> = None;
        loop {
            let _ = tokio::time::timeout(Duration::from_secs(3), applied.changed()).await;
            match self.refresh().await {
                Ok(_) => said = None,
                Err(e) => {
                    let msg = e.to_string();
                    if said.as_deref() != Some(msg.as_str()) {
                        tracing::warn!(anchor = %self.path.display(), error = %msg, "cannot refresh the store anchor; the previous one stays");
                        said = Some(msg);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::seal::Dek;

    fn durable(vote_term: u64, committed: u64, last_index: u64, snapshot: u64) -> Durable {
        Durable {
            vote_term,
            committed,
            last_index,
            snapshot,
        }
    }

    #[test]
    fn a_store_at_or_past_its_anchor_passes() {
        let a = durable(3, 40, 42, 20).anchor(7);
        assert!(regressions(&a, &durable(3, 40, 42, 20)).is_empty());
        assert!(regressions(&a, &durable(4, 50, 55, 50)).is_empty());
        // Uncommitted entries may be truncated: only the committed index counts.
        assert!(regressions(&a, &durable(3, 40, 40, 20)).is_empty());
        assert!(regressions(&Anchor::default(), &Durable::default()).is_empty());
    }

    #[test]
    fn every_way_back_is_named() {
        let a = durable(3, 40, 42, 20).anchor(7);
        // raft.redb deleted or emptied: no vote, no log; the snapshot alone.
        let r = regressions(&a, &durable(0, 20, 20, 20));
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r[0].contains("term 0") && r[0].contains("term 3"));
        assert!(r[1].contains("end at index 20") && r[1].contains("index 40"));
        // An older copy of the whole directory.
        let r = regressions(&a, &durable(3, 30, 31, 10));
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r[1].contains("snapshot is at index 10"));
        // An older snapshot alone.
        assert_eq!(regressions(&a, &durable(3, 40, 42, 0)).len(), 1);
    }

    #[test]
    fn the_anchor_round_trips_sealed_and_refuses_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(ANCHOR_FILE);
        let sealer = Sealer::new(&Dek::generate());
        assert_eq!(read(&path, &sealer).unwrap(), None);
        let a = durable(2, 9, 9, 0).anchor(1);
        write(&path, &sealer, &a).unwrap();
        assert_eq!(read(&path, &sealer).unwrap(), Some(a));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Another key (a re-joined node), a flipped byte, a truncation, junk: errors, no panic.
        let other = Sealer::new(&Dek::generate());
        assert!(matches!(
            read(&path, &other),
            Err(AnchorError::Sealed { .. })
        ));
        let bytes = std::fs::read(&path).unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 1;
            assert!(
                decode(&path, &sealer, &bad).is_err(),
                "flip at {i} accepted"
            );
        }
        for n in 0..bytes.len() {
            assert!(decode(&path, &sealer, &bytes[..n]).is_err());
        }
        // A record of another kind under the same key is not an anchor.
        let mut moved = MAGIC.to_vec();
        moved.extend_from_slice(&sealer.seal(
            RecordKind::Vote,
            0,
            &postcard::to_allocvec(&a).unwrap(),
        ));
        assert!(decode(&path, &sealer, &moved).is_err());
    }
}
