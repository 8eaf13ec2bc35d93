//! The sealed Raft log: openraft's [`RaftLogStorage`] on a redb file, every entry and every
//! pointer (vote, committed, last purged) sealed under the data key.
//!
//! ```text
//!  <dir>/raft.redb
//!    table "log":  index (u64) ──► seal(LogEntry, index, postcard(Entry))
//!    table "meta": "vote"        ──► seal(Vote, 0, postcard(Vote))
//!                  "committed"   ──► seal(Committed, 0, postcard(Option<LogId>))
//!                  "last_purged" ──► seal(LastPurged, 0, postcard(LogId))
//!                  "format"      ──► seal(Blob, 0, postcard(u32)): wire::LOG_FORMAT
//! ```
//!
//! A log records the format of its entries when it is made; opening one of another format
//! (or one from before formats were recorded) fails naming both, before any entry is read.
//!
//! redb is synchronous: every operation runs on the blocking pool and returns (or calls the
//! append callback) only after its transaction committed with `Durability::Immediate`, i.e.
//! after fsync. Writes are serialized because openraft awaits each call in turn.

// openraft's `StorageError` is large, and the storage traits fix it as the error type.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, Entry, ErrorSubject, ErrorVerb, OptionalSend, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::seal::{RecordKind, Sealer};
use super::{LogId, StoreError, TypeConfig};

/// Name of the log database in the store directory.
pub const LOG_FILE: &str = "raft.redb";

pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const LAST_PURGED_KEY: &str = "last_purged";
const FORMAT_KEY: &str = "format";
/// Set once the store has a rollback anchor (see [`super::anchor`]): a store carrying it but
/// no anchor file had its anchor deleted.
const ANCHORED_KEY: &str = "anchored";

type StorageResult<T> = Result<T, StorageError<u64>>;

/// The most memory redb may hold of the log file's pages, its read cache and write buffer
/// together. redb's default is 1 GiB, and every page a commit writes stays in its read cache
/// while that has room: a leader's memory grew with every entry it had ever written (89 MB of
/// a 1,000-node leader's heap after 10,000 tasks had been placed 11 times). Recent entries,
/// the ones replication reads, mostly fit in this; other pages come from the file (and the
/// system's page cache).
pub(crate) const CACHE_BYTES: usize = 4 << 20;

/// The sealed Raft log. Cheap to clone: clones share the database (the log reader is one).
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Database,
    sealer: Arc<Sealer>,
    path: PathBuf,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens or creates `<dir>/raft.redb` (mode 0600).
    pub(crate) async fn open(dir: &Path, sealer: Arc<Sealer>) -> Result<Self, StoreError> {
        let path = dir.join(LOG_FILE);
        let p = path.clone();
        let db = tokio::task::spawn_blocking(move || open_db(&p))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        let store = LogStore {
            inner: Arc::new(Inner { db, sealer, path }),
        };
        let path = store.inner.path.clone();
        let corrupt = |e: StorageError<u64>| StoreError::Corrupt {
            path: path.clone(),
            what: e.to_string(),
        };
        let found = store
            .blocking(|inner| inner.format())
            .await
            .map_err(corrupt)?;
        if found != Some(super::wire::LOG_FORMAT) {
            return Err(StoreError::Format { path, found });
        }
        Ok(store)
    }

    /// The last purged log id, as persisted.
    pub(crate) async fn last_purged(&self) -> Result<Option<LogId>, StoreError> {
        let path = self.inner.path.clone();
        self.blocking(|inner| inner.read_meta::<LogId>(LAST_PURGED_KEY, RecordKind::LastPurged))
            .await
            .map_err(|e| StoreError::Corrupt {
                path,
                what: e.to_string(),
            })
    }

    /// Whether this log was marked as having a rollback anchor.
    pub(crate) async fn is_anchored(&self) -> Result<bool, StoreError> {
        let path = self.inner.path.clone();
        self.blocking(|inner| {
            inner
                .read_meta::<()>(ANCHORED_KEY, RecordKind::Anchor)
                .map(|m| m.is_some())
        })
        .await
        .map_err(|e| StoreError::Corrupt {
            path,
            what: e.to_string(),
        })
    }

    /// Marks this log as having a rollback anchor (durably).
    pub(crate) async fn mark_anchored(&self) -> Result<(), StoreError> {
        let path = self.inner.path.clone();
        self.blocking(|inner| inner.write_meta(ANCHORED_KEY, RecordKind::Anchor, &()))
            .await
            .map_err(|e| StoreError::Task(format!("marking {} as anchored: {e}", path.display())))
    }

    /// Runs `f` on the blocking pool.
    async fn blocking<T, F>(&self, f: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> StorageResult<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| {
                StorageIOError::new(ErrorSubject::Store, ErrorVerb::Write, AnyError::new(&e))
            })?
    }
}

fn open_db(path: &Path) -> Result<Database, StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let db_err = |source: redb::Error| StoreError::Database {
        path: path.to_path_buf(),
        source,
    };
    // Create the file ourselves so it is 0600 from the first byte.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| StoreError::Io {
            what: "creating",
            path: path.to_path_buf(),
            source,
        })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        StoreError::Io {
            what: "restricting",
            path: path.to_path_buf(),
            source,
        }
    })?;
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)
        .map_err(|e| db_err(e.into()))?;
    let txn = db.begin_write().map_err(|e| db_err(e.into()))?;
    {
        txn.open_table(LOG).map_err(|e| db_err(e.into()))?;
        txn.open_table(META).map_err(|e| db_err(e.into()))?;
    }
    txn.commit().map_err(|e| db_err(e.into()))?;
    Ok(db)
}

fn io_err(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: impl std::error::Error + 'static,
) -> StorageError<u64> {
    StorageIOError::new(subject, verb, AnyError::new(&e)).into()
}

fn encode<T: Serialize>(value: &T) -> Result<zeroize::Zeroizing<Vec<u8>>, postcard::Error> {
    postcard::to_allocvec(value).map(zeroize::Zeroizing::new)
}

impl Inner {
    fn read_meta<T: DeserializeOwned>(
        &self,
        key: &str,
        kind: RecordKind,
    ) -> StorageResult<Option<T>> {
        let subject = || match kind {
            RecordKind::Vote => ErrorSubject::Vote,
            _ => ErrorSubject::Logs,
        };
        let txn = self
            .db
            .begin_read()
            .map_err(|e| io_err(subject(), ErrorVerb::Read, e))?;
        let table = txn
            .open_table(META)
            .map_err(|e| io_err(subject(), ErrorVerb::Read, e))?;
        let Some(sealed) = table
            .get(key)
            .map_err(|e| io_err(subject(), ErrorVerb::Read, e))?
        else {
            return Ok(None);
        };
        let plain = self
            .sealer
            .open(kind, 0, sealed.value())
            .map_err(|e| io_err(subject(), ErrorVerb::Read, e))?;
        postcard::from_bytes(&plain)
            .map(Some)
            .map_err(|e| io_err(subject(), ErrorVerb::Read, e))
    }

    fn write_meta<T: Serialize>(
        &self,
        key: &str,
        kind: RecordKind,
        value: &T,
    ) -> StorageResult<()> {
        let subject = || match kind {
            RecordKind::Vote => ErrorSubject::Vote,
            _ => ErrorSubject::Logs,
        };
        let plain = encode(value).map_err(|e| io_err(subject(), ErrorVerb::Write, e))?;
        let sealed = self.sealer.seal(kind, 0, &plain);
        let txn = self
            .db
            .begin_write()
            .map_err(|e| io_err(subject(), ErrorVerb::Write, e))?;
        {
            let mut table = txn
                .open_table(META)
                .map_err(|e| io_err(subject(), ErrorVerb::Write, e))?;
            table
                .insert(key, sealed.as_slice())
                .map_err(|e| io_err(subject(), ErrorVerb::Write, e))?;
        }
        txn.commit()
            .map_err(|e| io_err(subject(), ErrorVerb::Write, e))
    }

    /// The log's format, recording [`super::wire::LOG_FORMAT`] first in a log that holds
    /// nothing yet (no entry, vote or purge); `None` for a log from before formats were
    /// recorded.
    fn format(&self) -> StorageResult<Option<u32>> {
        if let Some(found) = self.read_meta::<u32>(FORMAT_KEY, RecordKind::Blob)? {
            return Ok(Some(found));
        }
        let r = |e: redb::Error| io_err(ErrorSubject::Logs, ErrorVerb::Read, e);
        let empty = {
            let txn = self.db.begin_read().map_err(|e| r(e.into()))?;
            let log = txn.open_table(LOG).map_err(|e| r(e.into()))?;
            let meta = txn.open_table(META).map_err(|e| r(e.into()))?;
            log.is_empty().map_err(|e| r(e.into()))?
                && meta.get(VOTE_KEY).map_err(|e| r(e.into()))?.is_none()
                && meta
                    .get(LAST_PURGED_KEY)
                    .map_err(|e| r(e.into()))?
                    .is_none()
        };
        if !empty {
            return Ok(None);
        }
        let format = super::wire::LOG_FORMAT;
        self.write_meta(FORMAT_KEY, RecordKind::Blob, &format)?;
        Ok(Some(format))
    }

    fn decode_entry(&self, index: u64, sealed: &[u8]) -> StorageResult<Entry<TypeConfig>> {
        let read_err = |e: &(dyn std::error::Error + 'static)| {
            StorageIOError::read_log_at_index(index, AnyError::from_dyn(e, None))
        };
        let plain = self
            .sealer
            .open(RecordKind::LogEntry, index, sealed)
            .map_err(|e| read_err(&e))?;
        let entry: Entry<TypeConfig> = postcard::from_bytes(&plain).map_err(|e| read_err(&e))?;
        if entry.log_id.index != index {
            let e = std::io::Error::other(format!(
                "entry stored at index {index} claims index {}",
                entry.log_id.index
            ));
            return Err(read_err(&e).into());
        }
        Ok(entry)
    }

    fn read_range(&self, range: (Bound<u64>, Bound<u64>)) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let txn = self
            .db
            .begin_read()
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let table = txn
            .open_table(LOG)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let iter = table
            .range::<u64>(range)
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item.map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            out.push(self.decode_entry(k.value(), v.value())?);
        }
        Ok(out)
    }

    fn log_state(&self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId> = self.read_meta(LAST_PURGED_KEY, RecordKind::LastPurged)?;
        let last = {
            let txn = self
                .db
                .begin_read()
                .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            let table = txn
                .open_table(LOG)
                .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?;
            match table
                .last()
                .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Read, e))?
            {
                Some((k, v)) => Some(self.decode_entry(k.value(), v.value())?.log_id),
                None => None,
            }
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    fn append(&self, entries: &[Entry<TypeConfig>]) -> StorageResult<()> {
        let txn = self
            .db
            .begin_write()
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
        {
            let mut table = txn
                .open_table(LOG)
                .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            for entry in entries {
                let index = entry.log_id.index;
                let write_err = |e: &(dyn std::error::Error + 'static)| {
                    StorageIOError::write_log_entry(entry.log_id, AnyError::from_dyn(e, None))
                };
                let plain = encode(entry).map_err(|e| write_err(&e))?;
                let sealed = self.sealer.seal(RecordKind::LogEntry, index, &plain);
                table
                    .insert(index, sealed.as_slice())
                    .map_err(|e| write_err(&e))?;
            }
        }
        txn.commit()
            .map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))
    }

    /// Deletes `range` from the log; with `purged`, records it as the last purged log id in the
    /// same transaction, so the pointer is never behind the deletion.
    fn delete(&self, range: (Bound<u64>, Bound<u64>), purged: Option<&LogId>) -> StorageResult<()> {
        let w = |e: redb::Error| io_err(ErrorSubject::Logs, ErrorVerb::Delete, e);
        let txn = self.db.begin_write().map_err(|e| w(e.into()))?;
        if let Some(purged) = purged {
            let plain =
                encode(purged).map_err(|e| io_err(ErrorSubject::Logs, ErrorVerb::Write, e))?;
            let sealed = self.sealer.seal(RecordKind::LastPurged, 0, &plain);
            let mut meta = txn.open_table(META).map_err(|e| w(e.into()))?;
            meta.insert(LAST_PURGED_KEY, sealed.as_slice())
                .map_err(|e| w(e.into()))?;
        }
        {
            let mut table = txn.open_table(LOG).map_err(|e| w(e.into()))?;
            table
                .retain_in::<u64, _>(range, |_, _| false)
                .map_err(|e| w(e.into()))?;
        }
        txn.commit().map_err(|e| w(e.into()))
    }
}

fn owned_bounds<RB: RangeBounds<u64>>(range: &RB) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let bounds = owned_bounds(&range);
        self.blocking(move |inner| inner.read_range(bounds)).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        self.blocking(|inner| inner.log_state()).await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StorageResult<()> {
        let vote = *vote;
        self.blocking(move |inner| inner.write_meta(VOTE_KEY, RecordKind::Vote, &vote))
            .await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        self.blocking(|inner| inner.read_meta(VOTE_KEY, RecordKind::Vote))
            .await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> StorageResult<()> {
        self.blocking(move |inner| {
            inner.write_meta(COMMITTED_KEY, RecordKind::Committed, &committed)
        })
        .await
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId>> {
        self.blocking(|inner| {
            Ok(inner
                .read_meta::<Option<LogId>>(COMMITTED_KEY, RecordKind::Committed)?
                .flatten())
        })
        .await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        // Returns only after the commit (fsync): the entries are readable and durable, so the
        // callback can report completion right away.
        self.blocking(move |inner| inner.append(&entries)).await?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> StorageResult<()> {
        tracing::debug!(%log_id, "truncating the raft log from this id, inclusive");
        self.blocking(move |inner| {
            inner.delete((Bound::Included(log_id.index), Bound::Unbounded), None)
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId) -> StorageResult<()> {
        tracing::debug!(%log_id, "purging the raft log up to this id, inclusive");
        self.blocking(move |inner| {
            inner.delete(
                (Bound::Unbounded, Bound::Included(log_id.index)),
                Some(&log_id),
            )
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::seal::Dek;
    use crate::store::wire::LOG_FORMAT;

    /// A new log records this build's format and opens again; one that holds entries of a
    /// build from before formats were recorded, or records another format, is refused before
    /// any entry is read, naming both formats and the way forward (backup and restore).
    #[tokio::test]
    async fn a_log_of_another_format_is_refused_naming_both() {
        let dir = tempfile::tempdir().unwrap();
        let sealer = Arc::new(Sealer::new(&Dek::generate()));
        let log = LogStore::open(dir.path(), sealer.clone()).await.unwrap();
        let found = log.blocking(|inner| inner.format()).await.unwrap();
        assert_eq!(found, Some(LOG_FORMAT));
        log.blocking(|inner| {
            let e = openraft::Entry::<TypeConfig> {
                log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), 1),
                payload: openraft::EntryPayload::Blank,
            };
            inner.append(&[e])
        })
        .await
        .unwrap();
        drop(log);
        let log = LogStore::open(dir.path(), sealer.clone()).await.unwrap();

        // A build from before formats were recorded: entries, no format.
        log.blocking(|inner| {
            let txn = inner.db.begin_write().unwrap();
            txn.open_table(META).unwrap().remove(FORMAT_KEY).unwrap();
            txn.commit().unwrap();
            Ok(())
        })
        .await
        .unwrap();
        drop(log);
        let e = LogStore::open(dir.path(), sealer.clone())
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Format { found: None, .. }), "{e}");
        let text = e.to_string();
        assert!(
            text.contains("log format 1 (from before formats were recorded)")
                && text.contains(&format!("reads format {LOG_FORMAT}"))
                && text.contains("swarm backup")
                && text.contains("swarm restore"),
            "{text}"
        );

        // Another format recorded.
        let db = open_db(&dir.path().join(LOG_FILE)).unwrap();
        let inner = Inner {
            db,
            sealer: sealer.clone(),
            path: dir.path().join(LOG_FILE),
        };
        inner
            .write_meta(FORMAT_KEY, RecordKind::Blob, &(LOG_FORMAT + 1))
            .unwrap();
        drop(inner);
        let e = LogStore::open(dir.path(), sealer).await.unwrap_err();
        assert!(
            matches!(e, StoreError::Format { found: Some(f), .. } if f == LOG_FORMAT + 1),
            "{e}"
        );
    }

    /// Written pages do not pile up in memory: after the log wrote three times
    /// [`CACHE_BYTES`], redb holds at most that (with its default 1 GiB cache it held every
    /// page written).
    #[test]
    fn the_log_keeps_at_most_its_cache_of_written_pages_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(&dir.path().join(LOG_FILE)).unwrap();
        let value = vec![7u8; 1 << 20];
        let entries = 3 * CACHE_BYTES / value.len();
        for index in 0..entries as u64 {
            let txn = db.begin_write().unwrap();
            txn.open_table(LOG)
                .unwrap()
                .insert(index, value.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let held = db.cache_stats().used_bytes();
        assert!(
            held > 0 && held <= CACHE_BYTES,
            "redb holds {held} bytes of the {entries} MiB written"
        );
    }
}
