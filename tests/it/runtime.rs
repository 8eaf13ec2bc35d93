//! The task runtimes driven directly through `skep::agent::executor`, without a daemon.
//!
//! exec tests need root (namespaces) and the `skep` binary's hidden `init-helper` subcommand;
//! docker tests need a reachable Docker Engine and `gcc` (a static test program is imported as
//! an image with `docker import`: nothing is pulled). Missing either, a test prints a notice
//! and passes.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use skep::agent::executor::{ExecError, Executors};
use skep::store::service::{
    DesiredState, Resources, RestartPolicy, Runtime, Task, TaskSpec, TaskState, TaskStatus,
};

fn helper() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_skep"))
}

fn unique_id(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn task(runtime: Runtime, image: &str, command: &[&str], env: &[&str]) -> Task {
    Task {
        id: unique_id("t"),
        service_id: "svc1".into(),
        service_name: "rt-test".into(),
        slot: 1,
        node_id: String::new(),
        spec: TaskSpec {
            runtime,
            image: image.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|s| s.to_string()).collect(),
            restart: RestartPolicy::default(),
            constraints: vec![],
            reservations: Resources::default(),
            limits: Resources::default(),
            secrets: vec![],
        },
        spec_version: 1,
        desired: DesiredState::Running,
        status: TaskStatus {
            state: TaskState::Assigned,
            message: String::new(),
            err: String::new(),
            exit_code: None,
            timestamp: String::new(),
        },
        created_at: String::new(),
        not_before: String::new(),
        attempt: 0,
    }
}

fn sh(script: &str) -> Task {
    task(Runtime::Exec, "", &["/bin/sh", "-c", script], &[])
}

/// Executors with the exec runtime, or `None` (with a notice) when not root.
async fn exec_executors(state: &Path) -> Option<Executors> {
    let ex = Executors::detect_with(state, helper()).await;
    if ex.runtimes().contains(&Runtime::Exec) {
        Some(ex)
    } else {
        eprintln!("NOTICE: exec runtime unavailable (not root): skipping");
        None
    }
}

fn has(logs: &[(String, String)], stream: &str, line: &str) -> bool {
    logs.iter().any(|(s, l)| s == stream && l == line)
}

async fn wait_bounded(h: &mut skep::agent::executor::TaskHandle, secs: u64) -> i64 {
    tokio::time::timeout(Duration::from_secs(secs), h.wait())
        .await
        .expect("task did not end in time")
        .expect("wait failed")
}

#[tokio::test]
async fn exec_exit_code_logs_and_pid_namespace() {
    let state = tempfile::tempdir().unwrap();
    let Some(ex) = exec_executors(state.path()).await else {
        return;
    };
    let t = sh("echo hello; echo oops >&2; echo $$; exit 3");
    let mut h = ex.start(&t).await.unwrap();
    assert_eq!(wait_bounded(&mut h, 20).await, 3);
    // Waiting again gives the same answer.
    assert_eq!(h.wait().await.unwrap(), 3);
    assert_eq!(h.exit_code(), Some(3));

    let logs = ex.logs(&t, 0).await.unwrap();
    assert!(has(&logs, "stdout", "hello"), "{logs:?}");
    assert!(has(&logs, "stderr", "oops"), "{logs:?}");
    // A fresh PID namespace: its init (the helper's stage 2) is PID 1, so the command,
    // the first process it starts, is PID 2.
    let pid_line = logs
        .iter()
        .filter(|(s, _)| s == "stdout")
        .map(|(_, l)| l.as_str())
        .next_back()
        .unwrap();
    assert_eq!(pid_line, "2", "{logs:?}");
    let tail = ex.logs(&t, 1).await.unwrap();
    assert_eq!(tail.len(), 1);

    ex.remove(&t).await;
    assert!(!state.path().join("tasks").join(&t.id).exists());
    assert!(ex.logs(&t, 0).await.unwrap().is_empty());
}

#[tokio::test]
async fn exec_init_is_pid_1_and_env_is_given() {
    let state = tempfile::tempdir().unwrap();
    let Some(ex) = exec_executors(state.path()).await else {
        return;
    };
    let t = task(
        Runtime::Exec,
        "",
        &[
            "/bin/sh",
            "-c",
            "cat /proc/1/cmdline | tr '\\0' ' '; echo; echo \"foo=$FOO\"; echo \"path=$PATH\"; ls /proc | grep -c '^[0-9]'",
        ],
        &["FOO=bar baz"],
    );
    let mut h = ex.start(&t).await.unwrap();
    assert_eq!(wait_bounded(&mut h, 20).await, 0);
    let logs = ex.logs(&t, 0).await.unwrap();
    let out: Vec<&str> = logs.iter().map(|(_, l)| l.as_str()).collect();
    assert!(out[0].contains("init-helper --stage2"), "{out:?}");
    assert!(has(&logs, "stdout", "foo=bar baz"), "{logs:?}");
    assert!(
        out.iter().any(|l| l.starts_with("path=/usr/local/sbin:")),
        "{out:?}"
    );
    // Only the namespace's processes are visible: init, sh, ls, grep (and maybe a cat).
    let procs: usize = out.last().unwrap().parse().unwrap();
    assert!(procs <= 5, "{out:?}");
}

#[tokio::test]
async fn exec_stop_within_grace() {
    let state = tempfile::tempdir().unwrap();
    let Some(ex) = exec_executors(state.path()).await else {
        return;
    };
    let t = task(Runtime::Exec, "", &["sleep", "1000"], &[]);
    let mut h = ex.start(&t).await.unwrap();
    // Still running after a moment: wait is cancel safe, so a timed-out wait loses nothing.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), h.wait())
            .await
            .is_err()
    );
    let began = Instant::now();
    h.stop(Duration::from_secs(5)).await.unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(wait_bounded(&mut h, 5).await, 128 + 15);
    h.stop(Duration::from_secs(5)).await.unwrap();
    assert!(!state.path().join("tasks").join(&t.id).join("pid").exists());
}

#[tokio::test]
async fn exec_stop_kills_after_grace_when_term_is_ignored() {
    let state = tempfile::tempdir().unwrap();
    let Some(ex) = exec_executors(state.path()).await else {
        return;
    };
    // The shell ignores TERM; so does its child sleep (ignored signals are inherited).
    let t = sh("trap '' TERM; sleep 1000");
    let mut h = ex.start(&t).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let began = Instant::now();
    h.stop(Duration::from_millis(500)).await.unwrap();
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(wait_bounded(&mut h, 5).await, 128 + 9);
}

#[tokio::test]
async fn exec_stop_in_select_with_wait() {
    let state = tempfile::tempdir().unwrap();
    let Some(ex) = exec_executors(state.path()).await else {
        return;
    };
    let t = task(Runtime::Exec, "", &["sleep", "1000"], &[]);
    let mut h = ex.start(&t).await.unwrap();
    let (stop_tx, mut stop_rx) = tokio::sync::mpsc::channel::<()>(1);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = stop_tx.send(()).await;
    });
    let code = loop {
        tokio::select! {
            r = h.wait() => break r.unwrap(),
            Some(()) = stop_rx.recv() => h.stop(Duration::from_secs(5)).await.unwrap(),
        }
    };
    assert_eq!(code, 143);
}

#[tokio::test]
async fn exec_missing_program_is_a_start_error() {
    let state = tempfile::tempdir().unwrap();
    let Some(ex) = exec_executors(state.path()).await else {
        return;
    };
    let t = task(Runtime::Exec, "", &["/no/such/program", "x"], &[]);
    let err = ex.start(&t).await.err().expect("start must fail");
    assert!(matches!(err, ExecError::ProgramNotFound { .. }), "{err}");
    assert!(err.to_string().contains("/no/such/program"), "{err}");
    let t = task(Runtime::Exec, "", &["no-such-program-skep"], &[]);
    let err = ex.start(&t).await.err().expect("start must fail");
    assert!(err.to_string().contains("not found"), "{err}");
    let t = task(Runtime::Exec, "", &[], &[]);
    assert!(matches!(ex.start(&t).await, Err(ExecError::EmptyCommand)));
}

#[tokio::test]
async fn exec_mounts_stay_in_the_task() {
    let state = tempfile::tempdir().unwrap();
    let Some(ex) = exec_executors(state.path()).await else {
        return;
    };
    let target = tempfile::tempdir().unwrap();
    let dir = target.path().display().to_string();
    let t = sh(&format!(
        "mount -t tmpfs skeptest {dir} && touch {dir}/marker && grep -c skeptest /proc/self/mountinfo"
    ));
    let mut h = ex.start(&t).await.unwrap();
    let code = wait_bounded(&mut h, 20).await;
    let logs = ex.logs(&t, 0).await.unwrap();
    assert_eq!(code, 0, "{logs:?}");
    assert!(has(&logs, "stdout", "1"), "{logs:?}");
    assert!(!target.path().join("marker").exists());
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host.contains(&dir), "the task's mount leaked to the host");
}

#[tokio::test]
async fn exec_cleanup_stale_stops_leftovers() {
    let state = tempfile::tempdir().unwrap();
    let Some(old) = exec_executors(state.path()).await else {
        return;
    };
    let t = task(Runtime::Exec, "", &["sleep", "1000"], &[]);
    let mut h = old.start(&t).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A "restarted agent" on the same state directory.
    let new = Executors::detect_with(state.path(), helper()).await;
    let began = Instant::now();
    let stopped = new.cleanup_stale().await;
    assert!(stopped.contains(&t.id), "{stopped:?}");
    assert!(began.elapsed() < Duration::from_secs(5));
    assert_eq!(wait_bounded(&mut h, 5).await, 143);
    // Nothing left the second time.
    assert!(!new.cleanup_stale().await.contains(&t.id));
}

// ---------------------------------------------------------------------------------------
// docker

const TEST_PROGRAM: &str = r#"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static void on_term(int s) { (void)s; _exit(143); }
int main(int argc, char **argv) {
    signal(SIGTERM, on_term);
    printf("out-line\n"); fflush(stdout);
    fprintf(stderr, "err-line\n"); fflush(stderr);
    if (argc > 1 && strcmp(argv[1], "sleep") == 0) { for (;;) pause(); }
    if (argc > 2 && strcmp(argv[1], "exit") == 0) return atoi(argv[2]);
    return 0;
}
"#;

const TEST_IMAGE: &str = "skep-test/prog:it";

/// Docker tests share the engine: the cleanup test, which removes every skep container,
/// holds it alone.
static DOCKER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Imports the test image once per test process; the error says why it could not be.
pub(crate) fn test_image() -> Result<&'static str, String> {
    static IMAGE: OnceLock<Result<&'static str, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let src = dir.path().join("prog.c");
            std::fs::write(&src, TEST_PROGRAM).map_err(|e| e.to_string())?;
            let run = |cmd: &mut std::process::Command| -> Result<(), String> {
                let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)))
                }
            };
            run(std::process::Command::new("gcc")
                .args(["-static", "-O2", "-o"])
                .arg(dir.path().join("prog"))
                .arg(&src))?;
            run(std::process::Command::new("tar")
                .arg("-C")
                .arg(dir.path())
                .args(["-cf", "rootfs.tar", "prog"])
                .current_dir(dir.path()))?;
            run(std::process::Command::new("docker")
                .args(["import", "-c", r#"CMD ["/prog", "exit", "7"]"#])
                .arg(dir.path().join("rootfs.tar"))
                .arg(TEST_IMAGE))?;
            Ok(TEST_IMAGE)
        })
        .clone()
}

/// Executors with the docker runtime and the test image, or `None` with a notice.
async fn docker_executors(state: &Path) -> Option<(Executors, &'static str)> {
    let ex = Executors::detect_with(state, helper()).await;
    if !ex.runtimes().contains(&Runtime::Docker) {
        eprintln!("NOTICE: Docker Engine not reachable: skipping");
        return None;
    }
    match test_image() {
        Ok(image) => Some((ex, image)),
        Err(e) => {
            eprintln!("NOTICE: cannot build the test image ({e}): skipping");
            None
        }
    }
}

#[tokio::test]
async fn docker_exit_code_and_logs() {
    let _shared = DOCKER.read().await;
    let state = tempfile::tempdir().unwrap();
    let Some((ex, image)) = docker_executors(state.path()).await else {
        return;
    };
    let t = task(Runtime::Docker, image, &["/prog", "exit", "5"], &["A=1"]);
    let mut h = ex.start(&t).await.unwrap();
    assert_eq!(wait_bounded(&mut h, 30).await, 5);
    let logs = ex.logs(&t, 0).await.unwrap();
    assert!(has(&logs, "stdout", "out-line"), "{logs:?}");
    assert!(has(&logs, "stderr", "err-line"), "{logs:?}");
    assert_eq!(ex.logs(&t, 1).await.unwrap().len(), 1);
    ex.remove(&t).await;
    assert!(ex.logs(&t, 0).await.unwrap().is_empty());

    // No command: the image's own.
    let t = task(Runtime::Docker, image, &[], &[]);
    let mut h = ex.start(&t).await.unwrap();
    assert_eq!(wait_bounded(&mut h, 30).await, 7);
    ex.remove(&t).await;
}

#[tokio::test]
async fn docker_stop() {
    let _shared = DOCKER.read().await;
    let state = tempfile::tempdir().unwrap();
    let Some((ex, image)) = docker_executors(state.path()).await else {
        return;
    };
    let t = task(Runtime::Docker, image, &["/prog", "sleep"], &[]);
    let mut h = ex.start(&t).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), h.wait())
            .await
            .is_err()
    );
    let began = Instant::now();
    h.stop(Duration::from_secs(5)).await.unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(wait_bounded(&mut h, 10).await, 143);
    h.stop(Duration::from_secs(1)).await.unwrap();
    ex.remove(&t).await;
    // Stopping a removed container is fine too.
    h.stop(Duration::from_secs(1)).await.unwrap();
}

#[tokio::test]
async fn docker_missing_image_fails_clearly() {
    let _shared = DOCKER.read().await;
    let state = tempfile::tempdir().unwrap();
    let Some((ex, _)) = docker_executors(state.path()).await else {
        return;
    };
    let t = task(Runtime::Docker, "skep-test/missing:nope", &[], &[]);
    match tokio::time::timeout(Duration::from_secs(30), ex.start(&t)).await {
        Ok(Ok(_)) => panic!("a missing image started"),
        Ok(Err(e)) => {
            let msg = e.to_string();
            assert!(matches!(e, ExecError::Pull { .. }), "{msg}");
            assert!(msg.contains("skep-test/missing:nope"), "{msg}");
            assert!(msg.contains("pulling it failed"), "{msg}");
            eprintln!("missing image error: {msg}");
        }
        Err(_) => eprintln!("NOTICE: the pull of a missing image hung for 30 s (no network?)"),
    }
}

/// Removes every container labelled by skep on this engine, so it is opt-in:
/// `SKEP_TEST_DOCKER_CLEANUP=1`.
#[tokio::test]
async fn docker_cleanup_stale() {
    if std::env::var_os("SKEP_TEST_DOCKER_CLEANUP").is_none() {
        eprintln!("NOTICE: set SKEP_TEST_DOCKER_CLEANUP=1 to run (it removes all skep containers)");
        return;
    }
    let _alone = DOCKER.write().await;
    let state = tempfile::tempdir().unwrap();
    let Some((ex, image)) = docker_executors(state.path()).await else {
        return;
    };
    let t = task(Runtime::Docker, image, &["/prog", "sleep"], &[]);
    let mut h = ex.start(&t).await.unwrap();
    let new = Executors::detect_with(state.path(), helper()).await;
    let stopped = new.cleanup_stale().await;
    assert!(stopped.contains(&t.id), "{stopped:?}");
    // The watcher sees the container go.
    let _ = tokio::time::timeout(Duration::from_secs(15), h.wait())
        .await
        .unwrap();
    assert!(new.logs(&t, 0).await.unwrap().is_empty());
}
