//! Starting a task's processes without stalling the daemon: the start (its files and its
//! `fork`/`exec`) happens on threads of its own, never on the async runtime's.
//!
//! A start blocks its thread: `posix_spawn` until the child has called `exec`, and the task's
//! directory and files on the file system's inode allocation. Each is microseconds on a quiet
//! node and milliseconds while a thousand tasks start (ext4 creating files in a directory where
//! thousands were just deleted, children waiting for a CPU); on the runtime's threads, a burst
//! of starts kept a leader from answering any heartbeat for the whole burst
//! (`docs/performance.md`). Here the runtime only queues a start and awaits its result, while
//! up to [`THREADS`] run at once (on tokio's blocking pool the runtime's threads instead queued
//! behind the pool making hundreds of threads under its lock).
//!
//! A start whose caller has gone (its future dropped, e.g. a task stopped while starting) kills
//! the child it made ([`Owned`]): nothing is left running that no handle watches.

use std::io;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::process::{Child, Command};
use tokio::sync::oneshot;

/// How many starts run at once: they mostly wait on the kernel; with two instead of eight, a
/// burst of 3,000 tasks took 1.4× as long (`docs/performance.md`).
pub(crate) const THREADS: usize = 8;
/// Stack of each start thread: `Command::spawn` needs little (its buffers are on the heap).
const STACK: usize = 256 * 1024;

type Job = Box<dyn FnOnce() + Send>;

/// The process-wide pool of start threads, made on first use.
fn pool() -> &'static mpsc::Sender<Job> {
    static POOL: OnceLock<mpsc::Sender<Job>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..THREADS {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new()
                .name(format!("skep-spawn-{i}"))
                .stack_size(STACK)
                .spawn(move || {
                    loop {
                        // Only these threads take this lock, one waiting in `recv` at a time.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            // A job that panics loses its result (its caller gets an error),
                            // not the thread.
                            Ok(job) => {
                                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                            }
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start a process-start thread; fewer starts run at once");
            }
        }
        tx
    })
}

/// A child made on a start thread, not yet handed to its caller: killed if dropped before
/// [`Owned::claim`] (the caller gave up, or the result never reached it).
pub(crate) struct Owned(Option<Child>);

impl Owned {
    pub(crate) fn new(child: Child) -> Owned {
        Owned(Some(child))
    }

    /// The child, now the caller's to watch.
    pub(crate) fn claim(mut self) -> io::Result<Child> {
        self.0
            .take()
            .ok_or_else(|| io::Error::other("the started process was already handed over"))
    }

    /// The child's PID while it has not been waited for.
    pub(crate) fn id(&self) -> Option<u32> {
        self.0.as_ref().and_then(Child::id)
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            // SIGKILL; the runtime's orphan reaper collects it once it has ended.
            let _ = child.start_kill();
        }
    }
}

/// Runs `job` (a process start and the file work around it) on a start thread, in the calling
/// runtime's context (a child it makes is waited for by that runtime). A job's children are
/// to be [`Owned`] in its result, so that a caller that gives up kills them. Must be called
/// within a tokio runtime.
pub(crate) async fn run<T: Send + 'static>(
    job: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let handle = tokio::runtime::Handle::current();
    let (tx, rx) = oneshot::channel::<T>();
    let job: Job = Box::new(move || {
        let _in_runtime = handle.enter();
        // If the receiver is gone, `send` hands the result back and dropping it kills what it
        // owns; if it goes after this, dropping the unreceived value does the same.
        let _ = tx.send(job());
    });
    if pool().send(job).is_err() {
        return Err(io::Error::other(
            "no process-start thread is running; restart the daemon",
        ));
    }
    rx.await
        .map_err(|_| io::Error::other("the process-start thread ended before starting"))
}

/// Starts `command` on a start thread (see [`run`]) and returns the child.
pub(crate) async fn spawn(mut command: Command) -> io::Result<Child> {
    run(move || command.spawn().map(Owned::new)).await??.claim()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;
    use std::task::Poll;
    use std::time::Duration;

    /// The thread that made `pid`, by name: each thread's children are listed apart in
    /// `/proc/self/task/<tid>/children`.
    fn parent_thread_name(pid: u32) -> Option<String> {
        for t in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
            let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            if children.split_whitespace().any(|c| c == pid.to_string()) {
                return std::fs::read_to_string(t.path().join("comm"))
                    .ok()
                    .map(|n| n.trim().to_string());
            }
        }
        None
    }

    /// The runtime's thread never makes the child (so never waits for its `exec`): a start
    /// thread does, and the child is still the runtime's to wait for.
    #[tokio::test(flavor = "current_thread")]
    async fn a_process_is_started_by_a_start_thread_not_by_the_runtime() {
        let mut c = Command::new("/bin/sleep");
        c.arg("30")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let child = spawn(c).await.expect("started");
        let pid = child.id().expect("running");
        let made_by = parent_thread_name(pid).expect("the child is one of this process's threads'");
        assert!(
            made_by.starts_with("skep-spawn-"),
            "the child was made by thread {made_by:?}, not by a start thread"
        );
    }

    /// Whether a live (not zombie) process runs with exactly `cmdline` (NUL-separated).
    fn running_with(cmdline: &[u8]) -> bool {
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return false;
        };
        procs.flatten().any(|p| {
            std::fs::read(p.path().join("cmdline")).is_ok_and(|c| c == cmdline)
                && std::fs::read_to_string(p.path().join("stat")).is_ok_and(|s| {
                    s.rsplit_once(") ")
                        .is_some_and(|(_, r)| !r.starts_with('Z'))
                })
        })
    }

    /// A caller that gives up before the start is handed over leaves no process behind.
    #[tokio::test(flavor = "current_thread")]
    async fn a_start_whose_caller_gave_up_kills_its_child() {
        // A duration no other process uses: it names this test's child in /proc.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let secs = format!("3000.{nanos:09}");
        // Polled once (the start is queued, not yet done), then dropped. A start thread may,
        // rarely, finish between the queueing and that poll (this thread preempted): then
        // that child is killed here and it is tried again; an inline start is done every time.
        let abandoned = 'tries: {
            for _ in 0..5 {
                let mut c = Command::new("/bin/sleep");
                c.arg(&secs)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    // As the exec runtime's helpers: dropping the child does not kill it.
                    .kill_on_drop(false);
                let mut start = Box::pin(spawn(c));
                match std::future::poll_fn(|cx| Poll::Ready(start.as_mut().poll(cx))).await {
                    Poll::Pending => break 'tries true,
                    Poll::Ready(Ok(mut done)) => {
                        let _ = done.start_kill();
                    }
                    Poll::Ready(Err(e)) => panic!("cannot start sleep: {e}"),
                }
            }
            false
        };
        assert!(
            abandoned,
            "the start was done at its first poll five times: it did not wait on a start thread"
        );
        let cmdline = format!("/bin/sleep\0{secs}\0").into_bytes();
        // Watched for at least a second (the start thread runs the queued start either way;
        // without the kill its child would still run then) and at most ten for it to go.
        let since = std::time::Instant::now();
        let (window, deadline) = (Duration::from_secs(1), Duration::from_secs(10));
        while running_with(&cmdline) || since.elapsed() < window {
            assert!(
                since.elapsed() < deadline,
                "the child of an abandoned start still runs {deadline:?} later"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_started_process_is_handed_over_and_waited_for_by_the_runtime() {
        let mut c = Command::new("/bin/sh");
        c.args(["-c", "exit 7"]).stdin(Stdio::null());
        let mut child = spawn(c).await.expect("started");
        let st = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("ended within 10 s")
            .expect("waited");
        assert_eq!(st.code(), Some(7));
    }

    /// A job that panics fails its caller, and the threads stay: more panics than there are
    /// threads, then a start still runs.
    #[tokio::test(flavor = "current_thread")]
    async fn a_panicking_job_fails_its_caller_and_keeps_the_thread() {
        for _ in 0..=THREADS {
            let r = run(|| -> u8 { panic!("a job that panics (expected by this test)") }).await;
            assert!(r.is_err(), "a panicked job gave a result");
        }
        let mut c = Command::new("/bin/true");
        c.stdin(Stdio::null());
        let mut child = spawn(c).await.expect("a start after the panics");
        let st = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("ended within 10 s")
            .expect("waited");
        assert!(st.success());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_start_that_fails_says_why() {
        let err = spawn(Command::new("/nonexistent/skep-test-program"))
            .await
            .expect_err("no such program");
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
