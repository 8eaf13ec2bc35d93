//! Driving the task runtimes directly (`skep::agent::executor`), without a daemon: the exec
//! runtime's executors, unique task IDs, bounded waits.

use std::path::{Path, PathBuf};
use std::time::Duration;

use skep::agent::executor::{Executors, TaskHandle};
use skep::store::service::Runtime;

/// The exec runtime's init program, as built with the tests.
pub fn init_program() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_skep-init"))
}

/// A task ID no other test or run uses: `PREFIX-PID-NANOS`.
pub fn unique_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Executors with the exec runtime, its task directories under `state`; `None` (with a
/// notice) when it is unavailable (not root) and skipping is allowed, else the test fails.
pub async fn exec_executors(state: &Path) -> Option<Executors> {
    let ex = Executors::detect_with(state, init_program()).await;
    if ex.runtimes().contains(&Runtime::Exec) {
        Some(ex)
    } else {
        super::cannot_run_without(super::Runtime::Exec, "exec runtime unavailable (not root)");
        None
    }
}

/// The task's exit code, waiting at most `secs` seconds.
pub async fn wait_bounded(h: &mut TaskHandle, secs: u64) -> i64 {
    tokio::time::timeout(Duration::from_secs(secs), h.wait())
        .await
        .expect("task did not end in time")
        .expect("wait failed")
}
