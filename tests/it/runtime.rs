//! The task runtimes driven directly through `skep::agent::executor`, without a daemon.
//!
//! exec tests need root (namespaces) and the `skep-init` binary (the exec runtime's init);
//! docker tests need a reachable Docker Engine and `gcc` (a static test program is imported as
//! an image with `docker import`: nothing is pulled). Missing either, a test fails, or skips
//! with a notice under `SKEP_IT_ALLOW_SKIP=1` (see `harness::require`).

use std::path::Path;
use std::time::{Duration, Instant};

use skep::agent::executor::{ExecError, Executors, LogEntry};
use skep::store::fixtures;
use skep::store::service::{Runtime, Task, TaskSpec};

use crate::harness::{exec_executors, init_program, test_image, unique_id, wait_bounded};

fn task(runtime: Runtime, image: &str, command: &[&str], env: &[&str]) -> Task {
    Task {
        id: unique_id("t"),
        service_id: "svc1".into(),
        service_name: "rt-test".into(),
        node_id: String::new(),
        spec: TaskSpec {
            runtime,
            image: image.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|s| s.to_string()).collect(),
            ..fixtures::task_spec()
        },
        ..fixtures::task()
    }
}

fn sh(script: &str) -> Task {
    task(Runtime::Exec, "", &["/bin/sh", "-c", script], &[])
}

fn has(logs: &[LogEntry], stream: &str, line: &str) -> bool {
    logs.iter().any(|e| e.stream == stream && e.line == line)
}

#[tokio::test]
async fn exec_exit_code_logs_and_pid_namespace() {
    let state = tempfile::tempdir().unwrap();
    let Some(ex) = exec_executors(state.path()).await else {
        return;
    };
    let t = sh("echo hello; echo oops >&2; echo $$; exit 3");
    let mut h = ex.start(&t, None).await.unwrap();
    assert_eq!(wait_bounded(&mut h, 20).await, 3);
    // Waiting again gives the same answer.
    assert_eq!(h.wait().await.unwrap(), 3);
    assert_eq!(h.exit_code(), Some(3));

    let logs = ex.logs(&t, 0, 0).await.unwrap();
    assert!(has(&logs, "stdout", "hello"), "{logs:?}");
    assert!(has(&logs, "stderr", "oops"), "{logs:?}");
    // A fresh PID namespace: its init (the helper's stage 2) is PID 1, so the command,
    // the first process it starts, is PID 2.
    let pid_line = logs
        .iter()
        .filter(|e| e.stream == "stdout")
        .map(|e| e.line.as_str())
        .next_back()
        .unwrap();
    assert_eq!(pid_line, "2", "{logs:?}");
    let tail = ex.logs(&t, 1, 0).await.unwrap();
    assert_eq!(tail.len(), 1);
    // Every line has the time it was written; `since` keeps the lines from then on.
    assert!(logs.iter().all(|e| e.nanos > 0), "{logs:?}");
    let last = logs.last().unwrap().nanos;
    let since = ex.logs(&t, 0, last).await.unwrap();
    assert!(
        !since.is_empty() && since.iter().all(|e| e.nanos >= last),
        "{since:?}"
    );
    assert!(since.len() < logs.len(), "{since:?}");

    ex.remove(&t).await;
    assert!(!state.path().join("tasks").join(&t.id).exists());
    assert!(ex.logs(&t, 0, 0).await.unwrap().is_empty());
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
    let mut h = ex.start(&t, None).await.unwrap();
    assert_eq!(wait_bounded(&mut h, 20).await, 0);
    let logs = ex.logs(&t, 0, 0).await.unwrap();
    let out: Vec<&str> = logs.iter().map(|e| e.line.as_str()).collect();
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
    let mut h = ex.start(&t, None).await.unwrap();
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

/// A `kB` field of `/proc/PID/status` (`RssAnon:`), or `Threads:` as is.
fn proc_status(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The children of process `pid`.
fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The processes a running exec task costs the host beside its command are the small
/// `skep-init` program, not the skep binary (whose text, page tables and threads were paid
/// twice per task): the recorded helper (stage 1) and its child (stage 2, the namespace's
/// PID 1) run `skep-init`, one thread each, and the memory only they hold (anonymous resident
/// pages: heap, stack, relocated data; file pages are shared by every task) stays under 1 MiB
/// together. The skep binary's two processes hold about 2 MiB of it (release build), and its
/// stage 1 three threads.
#[tokio::test]
async fn exec_helpers_are_the_small_init_program() {
    let state = tempfile::tempdir().unwrap();
    let Some(ex) = exec_executors(state.path()).await else {
        return;
    };
    let t = task(Runtime::Exec, "", &["sleep", "1000"], &[]);
    let mut h = ex.start(&t, None).await.unwrap();
    let record = state.path().join("tasks").join(&t.id).join("helper.json");
    let stage1 = crate::harness::wait_for(Duration::from_secs(20), "the helper's record", || {
        let rec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&record).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        rec["pid"]
            .as_i64()
            .map(|p| p as i32)
            .ok_or_else(|| format!("no pid in {rec}"))
    });
    // Stage 2 under stage 1, the command (once it has become `sleep`) under stage 2.
    let exe = |pid: i32| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let stage2 = crate::harness::wait_for(Duration::from_secs(20), "the task's command", || {
        let s2 = *children(stage1).first().ok_or("stage 1 has no child yet")?;
        let cmd = *children(s2).first().ok_or("stage 2 has no child yet")?;
        match exe(cmd).file_name().and_then(|n| n.to_str()) {
            Some("sleep") => Ok(s2),
            other => Err(format!("the command runs {other:?} so far")),
        }
    });
    let init = init_program().canonicalize().unwrap();
    let mut anon_kib = 0;
    for (stage, pid) in [("stage 1", stage1), ("stage 2", stage2)] {
        assert_eq!(exe(pid), init, "{stage} (PID {pid}) runs another binary");
        assert_eq!(proc_status(pid, "Threads:"), 1, "{stage} (PID {pid})");
        anon_kib += proc_status(pid, "RssAnon:");
    }
    assert!(anon_kib > 0);
    assert!(
        anon_kib < 1024,
        "the two helper processes of one task hold {anon_kib} KiB of their own"
    );
    h.stop(Duration::from_secs(5)).await.unwrap();
    assert_eq!(wait_bounded(&mut h, 5).await, 128 + 15);
}

/// Without `skep-init` beside it, an exec task fails to start with an error that names the
/// missing file and says how to install it.
#[tokio::test]
async fn exec_without_the_init_program_fails_naming_it() {
    let state = tempfile::tempdir().unwrap();
    if exec_executors(state.path()).await.is_none() {
        return;
    }
    let missing = state.path().join("bin").join("skep-init");
    let ex = Executors::detect_with(state.path(), missing.clone()).await;
    let e = ex
        .start(&task(Runtime::Exec, "", &["true"], &[]), None)
        .await
        .err()
        .expect("a task started without its init program")
        .to_string();
    assert!(e.contains(&missing.display().to_string()), "{e}");
    assert!(
        e.contains("install skep-init beside the skep binary"),
        "{e}"
    );
}

#[tokio::test]
async fn exec_stop_kills_after_grace_when_term_is_ignored() {
    let state = tempfile::tempdir().unwrap();
    let Some(ex) = exec_executors(state.path()).await else {
        return;
    };
    // The shell ignores TERM; so does its child sleep (ignored signals are inherited).
    let t = sh("trap '' TERM; sleep 1000");
    let mut h = ex.start(&t, None).await.unwrap();
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
    let mut h = ex.start(&t, None).await.unwrap();
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
    let err = ex.start(&t, None).await.err().expect("start must fail");
    assert!(matches!(err, ExecError::ProgramNotFound { .. }), "{err}");
    assert!(err.to_string().contains("/no/such/program"), "{err}");
    let t = task(Runtime::Exec, "", &["no-such-program-skep"], &[]);
    let err = ex.start(&t, None).await.err().expect("start must fail");
    assert!(err.to_string().contains("not found"), "{err}");
    let t = task(Runtime::Exec, "", &[], &[]);
    assert!(matches!(
        ex.start(&t, None).await,
        Err(ExecError::EmptyCommand)
    ));
}

/// The task runs as "nobody" with no_new_privs: it cannot mount (and so nothing it mounts can
/// reach the host), and it is not root.
#[tokio::test]
async fn exec_tasks_are_unprivileged_and_cannot_mount() {
    let state = tempfile::tempdir().unwrap();
    let Some(ex) = exec_executors(state.path()).await else {
        return;
    };
    let target = tempfile::tempdir().unwrap();
    let dir = target.path().display().to_string();
    let t = sh(&format!(
        "mount -t tmpfs skeptest {dir} 2>/dev/null && touch {dir}/marker; \
         echo id=$(id -u):$(id -g); grep NoNewPrivs /proc/self/status"
    ));
    let mut h = ex.start(&t, None).await.unwrap();
    let code = wait_bounded(&mut h, 20).await;
    let logs = ex.logs(&t, 0, 0).await.unwrap();
    assert_eq!(code, 0, "{logs:?}");
    assert!(has(&logs, "stdout", "id=65534:65534"), "{logs:?}");
    assert!(has(&logs, "stdout", "NoNewPrivs:\t1"), "{logs:?}");
    assert!(!target.path().join("marker").exists());
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!host.contains(&dir), "the task's mount leaked to the host");
}

/// A "restarted agent" (new executors on the same state directory) finds a running helper
/// and one that ended while no agent watched (with its exit code), stops nothing by itself,
/// and stops a discarded one.
#[tokio::test]
async fn exec_recover_adopts_helpers_and_discard_stops_them() {
    let state = tempfile::tempdir().unwrap();
    let Some(old) = exec_executors(state.path()).await else {
        return;
    };
    let long = task(Runtime::Exec, "", &["sleep", "1000"], &[]);
    let mut long_h = old.start(&long, None).await.unwrap();
    let short = sh("sleep 1; exit 7");
    let _short_h = old.start(&short, None).await.unwrap();
    let new = Executors::detect_with(state.path(), init_program()).await;
    let mut found = new.recover().await;
    let mut adopted_long = found.remove(&long.id).expect("the running helper is found");
    assert_eq!(adopted_long.handle.exit_code(), None);
    let mut adopted_short = found.remove(&short.id).expect("the short helper is found");
    // Its exit code comes from the file stage 1 writes, not from a wait (not our child).
    assert_eq!(wait_bounded(&mut adopted_short.handle, 10).await, 7);
    // Recovering stopped nothing.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), long_h.wait())
            .await
            .is_err()
    );
    // Stopping through the adopted handle reaches the helper.
    adopted_long
        .handle
        .stop(Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(wait_bounded(&mut adopted_long.handle, 5).await, 143);
    assert_eq!(wait_bounded(&mut long_h, 5).await, 143);
    // Once seen ended, nothing is left to recover.
    let again = Executors::detect_with(state.path(), init_program()).await;
    let left = again.recover().await;
    assert!(!left.contains_key(&long.id) && !left.contains_key(&short.id));
}

/// A record naming a process that is not the task's helper (a PID reused by another
/// program) adopts nothing, and discarding it signals no one.
#[tokio::test]
async fn exec_recover_does_not_trust_a_reused_pid() {
    let state = tempfile::tempdir().unwrap();
    let Some(ex) = exec_executors(state.path()).await else {
        return;
    };
    let mut other = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let pid = other.id();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let start: u64 = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let id = unique_id("t");
    let dir = state.path().join("tasks").join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    let record = serde_json::json!({
        "task_id": id, "pid": pid, "start_ticks": start, "exe": exe, "ports": []
    });
    std::fs::write(dir.join("helper.json"), record.to_string()).unwrap();
    let mut found = ex.recover().await;
    let mut r = found.remove(&id).expect("the record is read");
    let seen = tokio::time::timeout(Duration::from_secs(2), r.handle.wait())
        .await
        .expect("not adopted as running");
    assert!(seen.is_err(), "{seen:?}");
    ex.discard(&id, r).await;
    assert!(
        other.try_wait().unwrap().is_none(),
        "the other process was signalled"
    );
    other.kill().unwrap();
    let _ = other.wait();
}

// ---------------------------------------------------------------------------------------
// docker

/// Docker tests share the engine: the cleanup test, which removes every skep container,
/// holds it alone.
static DOCKER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Executors with the docker runtime and the test image, or `None` with a notice.
async fn docker_executors(state: &Path) -> Option<(Executors, &'static str)> {
    let ex = Executors::detect_with(state, init_program()).await;
    if !ex.runtimes().contains(&Runtime::Docker) {
        crate::harness::cannot_run_without(
            crate::harness::Runtime::Docker,
            "Docker Engine not reachable",
        );
        return None;
    }
    match test_image() {
        Ok(image) => Some((ex, image)),
        Err(e) => {
            crate::harness::cannot_run_without(
                crate::harness::Runtime::Docker,
                format!("cannot build the test image ({e})"),
            );
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
    let mut h = ex.start(&t, None).await.unwrap();
    assert_eq!(wait_bounded(&mut h, 30).await, 5);
    let logs = ex.logs(&t, 0, 0).await.unwrap();
    assert!(has(&logs, "stdout", "out-line"), "{logs:?}");
    assert!(has(&logs, "stderr", "err-line"), "{logs:?}");
    assert_eq!(ex.logs(&t, 1, 0).await.unwrap().len(), 1);
    // The engine's times come with each line.
    assert!(logs.iter().all(|e| e.nanos > 0), "{logs:?}");
    let in_future = ex.logs(&t, 0, logs[0].nanos + 3_600_000_000_000).await;
    assert!(in_future.unwrap().is_empty());
    ex.remove(&t).await;
    assert!(ex.logs(&t, 0, 0).await.unwrap().is_empty());

    // No command: the image's own.
    let t = task(Runtime::Docker, image, &[], &[]);
    let mut h = ex.start(&t, None).await.unwrap();
    assert_eq!(wait_bounded(&mut h, 30).await, 7);
    ex.remove(&t).await;
}

/// The limits reach the engine as Docker Swarm hands them over: the container's `HostConfig`
/// has the task's CPU, memory and process limits (the engine enforces them).
#[tokio::test]
async fn docker_containers_get_the_tasks_limits() {
    let _shared = DOCKER.read().await;
    let state = tempfile::tempdir().unwrap();
    let Some((ex, image)) = docker_executors(state.path()).await else {
        return;
    };
    let mut t = task(Runtime::Docker, image, &["/prog", "sleep"], &[]);
    t.spec.limits = skep::store::service::Limit {
        nano_cpus: 500_000_000,
        memory_bytes: 64 << 20,
        pids: 20,
    };
    let mut h = ex.start(&t, None).await.unwrap();
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!(
                "label={}={}",
                skep::agent::executor::docker::LABEL_TASK_ID,
                t.id
            ),
        ])
        .output()
        .unwrap();
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(!id.is_empty(), "no container for {}", t.id);
    let out = std::process::Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{.HostConfig.NanoCpus}} {{.HostConfig.Memory}} {{.HostConfig.PidsLimit}}",
            &id,
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "500000000 67108864 20",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    h.stop(Duration::from_secs(2)).await.unwrap();
    wait_bounded(&mut h, 30).await;
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
    let mut h = ex.start(&t, None).await.unwrap();
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
    match tokio::time::timeout(Duration::from_secs(30), ex.start(&t, None)).await {
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

/// A restarted agent finds its node's containers by their labels, running, and leaves
/// another node's alone (several nodes may share an engine); discarding stops one.
#[tokio::test]
async fn docker_recover_finds_only_this_nodes_containers() {
    let _shared = DOCKER.read().await;
    let state = tempfile::tempdir().unwrap();
    let Some((ex, image)) = docker_executors(state.path()).await else {
        return;
    };
    let node = unique_id("node");
    let mut t = task(Runtime::Docker, image, &["/prog", "sleep"], &[]);
    t.node_id = node.clone();
    let mut h = ex.start(&t, None).await.unwrap();
    let other = Executors::detect_with(state.path(), init_program())
        .await
        .for_node("some-other-node");
    assert!(!other.recover().await.contains_key(&t.id));
    let new = Executors::detect_with(state.path(), init_program())
        .await
        .for_node(&node);
    let mut found = new.recover().await;
    let r = found.remove(&t.id).expect("this node's container is found");
    assert_eq!(r.handle.exit_code(), None);
    assert!(r.container.is_some());
    new.discard(&t.id, r).await;
    // The first watcher sees the container go.
    let _ = tokio::time::timeout(Duration::from_secs(15), h.wait())
        .await
        .unwrap();
    assert!(new.logs(&t, 0, 0).await.unwrap().is_empty());
}
