//! Test-only access to a stopped manager's store, for integration tests that play an attacker
//! who holds the data key: they change what the daemon will read on restart, and check that
//! `audit verify` notices. Nothing here is reachable from the daemon or the CLI; whoever can
//! call it needs the manager's KEK, with which the same could be done in a few lines anyway.

use std::path::Path;

use openraft::storage::{RaftLogReader as _, RaftLogStorage as _, RaftStateMachine as _};

use super::model::State;
use super::seal::Kek;
use super::{StoreError, open};
use crate::audit::AuditRecord;

/// Replays the committed log of the stopped manager in `data_dir` (KEK `kek`, the bytes of its
/// `kek` file) over its snapshot, applies `change` to the state, and seals the result as the
/// snapshot at the last committed entry, so that after a restart the state machine holds the
/// changed state. The daemon must not be running.
#[doc(hidden)]
pub async fn rewrite_state(
    data_dir: &Path,
    kek: &[u8],
    change: impl FnOnce(&mut State),
) -> Result<(), StoreError> {
    let corrupt = |what: String| StoreError::Corrupt {
        path: data_dir.to_path_buf(),
        what,
    };
    let kek = Kek::from_bytes(kek).map_err(|e| corrupt(e.to_string()))?;
    let dek_path = data_dir.join("dek.sealed");
    let wrapped = std::fs::read(&dek_path).map_err(|source| StoreError::Io {
        what: "reading",
        path: dek_path,
        source,
    })?;
    let dek = kek.unwrap(&wrapped).map_err(|e| corrupt(e.to_string()))?;
    let (mut log, mut sm) = open(&data_dir.join("raft"), dek).await?;
    let storage = |e: openraft::StorageError<u64>| corrupt(e.to_string());
    let committed = log.read_committed().await.map_err(storage)?;
    let (applied, _) = sm.applied_state().await.map_err(storage)?;
    if let Some(committed) = committed {
        let from = applied.map_or(0, |l| l.index + 1);
        if from <= committed.index {
            let entries = log
                .get_log_reader()
                .await
                .try_get_log_entries(from..=committed.index)
                .await
                .map_err(storage)?;
            sm.apply(entries).await.map_err(storage)?;
        }
    }
    sm.rewrite_state_for_test(change).await
}

/// Changes the audit record `seq` as it sits in the stopped manager's store, without
/// re-hashing it (an edit `audit verify` must name). See [`rewrite_state`].
#[doc(hidden)]
pub async fn tamper_audit_record(
    data_dir: &Path,
    kek: &[u8],
    seq: u64,
    change: impl FnOnce(&mut AuditRecord),
) -> Result<(), StoreError> {
    let mut found = false;
    rewrite_state(data_dir, kek, |s| {
        if let Some(r) = s.audit.get_mut(seq) {
            change(r);
            found = true;
        }
    })
    .await?;
    if found {
        Ok(())
    } else {
        Err(StoreError::Corrupt {
            path: data_dir.to_path_buf(),
            what: format!("no audit record {seq} to tamper with"),
        })
    }
}
