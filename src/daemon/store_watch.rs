//! A manager's store failing (a full disk, an I/O error) and coming back: the manager is
//! marked failed at once and the daemon re-executes itself once the store can be written.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::audit::{Actor, AuditEvent, Outcome};
use crate::manager::Manager;
use crate::store::model::Command;

/// The environment variable that counts the daemon's re-executions after store failures
/// (for the back-off between them).
const REEXEC_ENV: &str = "SKEP_STORE_REEXECS";

/// Watches a manager's Raft for a fatal error (a storage failure: a full disk, an I/O error)
/// and makes it loud and safe: the manager is marked failed at once with the diagnosed cause
/// (it then claims no leadership, refuses reads and writes with the cause, and its heartbeats
/// tell the leader, so `node ls` shows it Unavailable), and recovers when the cause is gone.
///
/// Recovery re-executes the daemon (`/proc/self/exe`, same arguments, same PID) once a probe
/// write of a few MiB to the store directory succeeds, rather than re-opening the store and
/// swapping a new openraft instance into the running process. Why: openraft cannot be
/// restarted in place after a fatal error, and every part of a manager (its loops, the mTLS
/// services, the dispatcher's sessions, the `Arc<Manager>` they share) holds the dead
/// instance; swapping it safely would touch all of them. A fresh process rebuilds them all
/// from what is on disk through the path a restart after a crash takes, which the store
/// already makes safe: entries are acknowledged only after fsync (no acknowledged write is
/// lost), redb commits are atomic and every record is sealed (a torn write is never read
/// back), and the rollback anchor is checked again. Re-executions back off (1 s doubling to
/// about a minute, counted in `SKEP_STORE_REEXECS`) so a store that fails at once again does
/// not spin.
pub(super) async fn watch_store(mgr: Arc<Manager>, raft_dir: PathBuf) {
    let mut metrics = mgr.raft.metrics();
    let fatal = loop {
        match &metrics.borrow_and_update().running_state {
            Ok(()) => {}
            Err(openraft::error::Fatal::Stopped) => return,
            Err(e) => break e.to_string(),
        }
        if metrics.changed().await.is_err() {
            return;
        }
    };
    let mut cause = match probe_store(&raft_dir).await {
        Err(e) => e,
        Ok(()) if fatal.contains("No space left on device") => {
            format!("disk full on {}: {fatal}", raft_dir.display())
        }
        Ok(()) => fatal.clone(),
    };
    mgr.fail_store(cause.clone());
    tracing::error!(
        store = %raft_dir.display(),
        %cause,
        raft = %fatal,
        "this manager's store failed: it no longer acts as a manager (not leader, refuses reads and writes); \
         free space or fix the disk and it restarts itself"
    );
    let restarts: u32 = std::env::var(REEXEC_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let backoff = Duration::from_secs(1 << restarts.min(6));
    let since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        match probe_store(&raft_dir).await {
            Ok(()) if since.elapsed() >= backoff => break,
            Ok(()) => {}
            Err(now) => {
                if now != cause {
                    tracing::error!(store = %raft_dir.display(), cause = %now, "the store still cannot be written");
                    mgr.fail_store(now.clone());
                    cause = now;
                }
            }
        }
    }
    tracing::warn!(
        store = %raft_dir.display(),
        "the store directory can be written again: re-executing the daemon to reopen the store"
    );
    use std::os::unix::process::CommandExt;
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_else(|| "skep".into());
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(argv0)
        .args(args)
        .env(REEXEC_ENV, (restarts + 1).to_string())
        .exec();
    tracing::error!(error = %err, "cannot re-execute the daemon; restart it to reopen the store");
}

/// Writes, syncs and removes a probe file of a few MiB in the store directory: `Err` with
/// the cause as operators should read it ("disk full on DIR: ...") when that fails.
async fn probe_store(dir: &Path) -> Result<(), String> {
    let dir = dir.to_path_buf();
    let path = dir.join(".probe");
    let result = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let r = std::fs::File::create(&path).and_then(|mut f| {
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..4 {
                f.write_all(&chunk)?;
            }
            f.sync_all()
        });
        let _ = std::fs::remove_file(&path);
        r
    })
    .await
    .map_err(|e| e.to_string())?;
    result.map_err(|e| match e.raw_os_error() {
        Some(28) => format!("disk full on {}: {e}", dir.display()),
        Some(122) => format!("disk quota exceeded on {}: {e}", dir.display()),
        Some(30) => format!("read-only file system at {}: {e}", dir.display()),
        _ => format!("cannot write to {}: {e}", dir.display()),
    })
}

/// Appends the audit record of a start with `--force-rollback` that accepted an older store,
/// retrying until it is committed (the manager may wait for a leader).
pub(super) async fn audit_forced_rollback(mgr: Arc<Manager>, raft_dir: PathBuf, details: String) {
    let event = AuditEvent::now(
        Actor::local_admin(&mgr.node_id),
        "store.rollback.forced",
        &raft_dir.display().to_string(),
        Outcome::Ok,
    )
    .with("details", details);
    loop {
        match mgr.propose(Command::Audit(event.clone())).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot audit the forced rollback yet; retrying")
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
