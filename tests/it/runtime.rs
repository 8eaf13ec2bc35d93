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
            ports: Vec::new(),
            networks: Vec::new(),
            healthcheck: None,
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
        crate::harness::cannot_run("exec runtime unavailable (not root)");
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
    let mut h = ex.start(&t, None).await.unwrap();
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
    let mut h = ex.start(&t, None).await.unwrap();
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
    let logs = ex.logs(&t, 0).await.unwrap();
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
    let new = Executors::detect_with(state.path(), helper()).await;
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
    let again = Executors::detect_with(state.path(), helper()).await;
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

const TEST_PROGRAM: &str = r#"
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <sys/socket.h>
#include <netinet/in.h>
static void on_term(int s) { (void)s; _exit(143); }
/* SHA-256 (FIPS 180-4), just enough to prove which secret a container read. */
static const uint32_t K[64] = {
0x428a2f98,0x71374491,0xb5c0fbcf,0xe9b5dba5,0x3956c25b,0x59f111f1,0x923f82a4,0xab1c5ed5,
0xd807aa98,0x12835b01,0x243185be,0x550c7dc3,0x72be5d74,0x80deb1fe,0x9bdc06a7,0xc19bf174,
0xe49b69c1,0xefbe4786,0x0fc19dc6,0x240ca1cc,0x2de92c6f,0x4a7484aa,0x5cb0a9dc,0x76f988da,
0x983e5152,0xa831c66d,0xb00327c8,0xbf597fc7,0xc6e00bf3,0xd5a79147,0x06ca6351,0x14292967,
0x27b70a85,0x2e1b2138,0x4d2c6dfc,0x53380d13,0x650a7354,0x766a0abb,0x81c2c92e,0x92722c85,
0xa2bfe8a1,0xa81a664b,0xc24b8b70,0xc76c51a3,0xd192e819,0xd6990624,0xf40e3585,0x106aa070,
0x19a4c116,0x1e376c08,0x2748774c,0x34b0bcb5,0x391c0cb3,0x4ed8aa4a,0x5b9cca4f,0x682e6ff3,
0x748f82ee,0x78a5636f,0x84c87814,0x8cc70208,0x90befffa,0xa4506ceb,0xbef9a3f7,0xc67178f2};
#define ROR(x,n) (((x)>>(n))|((x)<<(32-(n))))
static void block(uint32_t h[8], const unsigned char *p) {
    uint32_t w[64], a,b,c,d,e,f,g,k,t1,t2; int i;
    for (i = 0; i < 16; i++) w[i] = (uint32_t)p[4*i]<<24 | (uint32_t)p[4*i+1]<<16 | (uint32_t)p[4*i+2]<<8 | p[4*i+3];
    for (i = 16; i < 64; i++) w[i] = (ROR(w[i-2],17)^ROR(w[i-2],19)^(w[i-2]>>10)) + w[i-7] + (ROR(w[i-15],7)^ROR(w[i-15],18)^(w[i-15]>>3)) + w[i-16];
    a=h[0];b=h[1];c=h[2];d=h[3];e=h[4];f=h[5];g=h[6];k=h[7];
    for (i = 0; i < 64; i++) {
        t1 = k + (ROR(e,6)^ROR(e,11)^ROR(e,25)) + ((e&f)^(~e&g)) + K[i] + w[i];
        t2 = (ROR(a,2)^ROR(a,13)^ROR(a,22)) + ((a&b)^(a&c)^(b&c));
        k=g; g=f; f=e; e=d+t1; d=c; c=b; b=a; a=t1+t2;
    }
    h[0]+=a;h[1]+=b;h[2]+=c;h[3]+=d;h[4]+=e;h[5]+=f;h[6]+=g;h[7]+=k;
}
static int sha256_file(const char *path, char out[65]) {
    uint32_t h[8] = {0x6a09e667,0xbb67ae85,0x3c6ef372,0xa54ff53a,0x510e527f,0x9b05688c,0x1f83d9ab,0x5be0cd19};
    unsigned char buf[128]; size_t n, fill = 0; uint64_t len = 0; int i;
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    while ((n = fread(buf + fill, 1, 64 - fill, f)) > 0) {
        fill += n; len += n;
        if (fill == 64) { block(h, buf); fill = 0; }
    }
    fclose(f);
    buf[fill++] = 0x80;
    if (fill > 56) { memset(buf + fill, 0, 64 - fill); block(h, buf); fill = 0; }
    memset(buf + fill, 0, 56 - fill);
    for (i = 0; i < 8; i++) buf[56 + i] = (unsigned char)((len * 8) >> (56 - 8 * i));
    block(h, buf);
    for (i = 0; i < 8; i++) sprintf(out + 8 * i, "%08x", h[i]);
    return 0;
}
int main(int argc, char **argv) {
    int i;
    signal(SIGTERM, on_term);
    printf("out-line\n"); fflush(stdout);
    fprintf(stderr, "err-line\n"); fflush(stderr);
    if (argc > 1 && strcmp(argv[1], "sleep") == 0) { for (;;) pause(); }
    if (argc > 2 && strcmp(argv[1], "exit") == 0) return atoi(argv[2]);
    if (argc > 3 && strcmp(argv[1], "ask") == 0) {
        /* ask NAME PORT: resolve NAME in /etc/hosts (as a task on a network sees it), connect,
           print the answer; again every 300 ms until stopped. */
        for (;;) {
            char line[512], ip[64] = "", *tok; FILE *h = fopen("/etc/hosts", "r");
            while (h && fgets(line, sizeof line, h)) {
                char *addr = strtok(line, " \t\n");
                if (!addr || addr[0] == '#') continue;
                while ((tok = strtok(0, " \t\n")))
                    if (strcmp(tok, argv[2]) == 0 && strlen(addr) < sizeof ip) strcpy(ip, addr);
            }
            if (h) fclose(h);
            if (!ip[0]) { printf("via %s: unresolved\n", argv[2]); fflush(stdout); usleep(300000); continue; }
            struct sockaddr_in a; int s = socket(AF_INET, SOCK_STREAM, 0), n; char buf[256];
            memset(&a, 0, sizeof a);
            a.sin_family = AF_INET;
            a.sin_port = htons(atoi(argv[3]));
            unsigned b0, b1, b2, b3;
            if (sscanf(ip, "%u.%u.%u.%u", &b0, &b1, &b2, &b3) == 4)
                a.sin_addr.s_addr = htonl((b0 << 24) | (b1 << 16) | (b2 << 8) | b3);
            if (connect(s, (struct sockaddr *)&a, sizeof a) == 0 && (n = read(s, buf, sizeof buf - 1)) > 0) {
                buf[n] = 0;
                printf("via %s %s: %s", argv[2], ip, buf);
            } else {
                printf("via %s %s: no answer\n", argv[2], ip);
            }
            fflush(stdout);
            close(s);
            usleep(300000);
        }
    }
    if (argc > 1 && strcmp(argv[1], "serve") == 0) {
        /* serve: answer each TCP connection with the task's identity, then close; on
           127.0.0.1:$PORT (an exec task) or on port 80 of every address (a container). */
        const char *p = getenv("PORT"), *node = getenv("SKEP_NODE_ID"), *task = getenv("SKEP_TASK_ID");
        int s = socket(AF_INET, SOCK_STREAM, 0), one = 1, c, n;
        struct sockaddr_in a; char msg[256];
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_port = htons(p ? atoi(p) : 80);
        a.sin_addr.s_addr = htonl(p ? INADDR_LOOPBACK : INADDR_ANY);
        if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 64) != 0) { perror("serve"); return 2; }
        printf("serving\n"); fflush(stdout);
        for (;;) {
            c = accept(s, 0, 0);
            if (c < 0) continue;
            n = snprintf(msg, sizeof msg, "node=%s task=%s\n", node ? node : "?", task ? task : "?");
            if (write(c, msg, n) < 0) { }
            close(c);
        }
    }
    if (argc > 1 && strcmp(argv[1], "udp-echo") == 0) {
        /* udp-echo: answer each UDP datagram with "node=N task=T: " and the datagram, on
           127.0.0.1:$PORT (an exec task) or on port 53 of every address (a container). */
        const char *p = getenv("PORT"), *node = getenv("SKEP_NODE_ID"), *task = getenv("SKEP_TASK_ID");
        int s = socket(AF_INET, SOCK_DGRAM, 0), n, m;
        struct sockaddr_in a, from; socklen_t fl; char in[2048], out[4096];
        memset(&a, 0, sizeof a);
        a.sin_family = AF_INET;
        a.sin_port = htons(p ? atoi(p) : 53);
        a.sin_addr.s_addr = htonl(p ? INADDR_LOOPBACK : INADDR_ANY);
        if (bind(s, (struct sockaddr *)&a, sizeof a) != 0) { perror("udp-echo"); return 2; }
        printf("echoing\n"); fflush(stdout);
        for (;;) {
            fl = sizeof from;
            n = recvfrom(s, in, sizeof in, 0, (struct sockaddr *)&from, &fl);
            if (n < 0) continue;
            m = snprintf(out, sizeof out, "node=%s task=%s: ", node ? node : "?", task ? task : "?");
            if (m < 0 || m + n > (int)sizeof out) continue;
            memcpy(out + m, in, n);
            if (sendto(s, out, m + n, 0, (struct sockaddr *)&from, fl) < 0) { }
        }
    }
    if (argc > 1 && strcmp(argv[1], "secret") == 0) {
        /* secret PATH...: what the task sees of each file, then wait to be stopped. */
        struct statfs fs;
        if (statfs("/run/secrets", &fs) == 0)
            printf("fs=%s\n", fs.f_type == 0x01021994 ? "tmpfs" : "other");
        else
            printf("fs=none\n");
        for (i = 2; i < argc; i++) {
            struct stat st; char hex[65];
            if (stat(argv[i], &st) != 0 || sha256_file(argv[i], hex) != 0) {
                printf("%s unreadable\n", argv[i]);
                continue;
            }
            printf("%s uid=%u gid=%u mode=%o sha256=%s\n", argv[i], (unsigned)st.st_uid,
                   (unsigned)st.st_gid, (unsigned)(st.st_mode & 0777), hex);
        }
        fflush(stdout);
        for (;;) pause();
    }
    return 0;
}
"#;

const TEST_IMAGE: &str = "skep-test/prog:it5";

/// Docker tests share the engine: the cleanup test, which removes every skep container,
/// holds it alone.
static DOCKER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn run_tool(cmd: &mut std::process::Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// The test program, compiled (static) once per test process into a directory kept until
/// the process ends; exec tasks run it by this path.
pub(crate) fn test_program() -> Result<&'static Path, String> {
    static PROGRAM: OnceLock<Result<std::path::PathBuf, String>> = OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("skep-it-prog-")
                .tempdir()
                .map_err(|e| e.to_string())?
                .keep();
            // Exec tasks run as "nobody": the program must be reachable and executable by it.
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .map_err(|e| e.to_string())?;
            let src = dir.join("prog.c");
            std::fs::write(&src, TEST_PROGRAM).map_err(|e| e.to_string())?;
            run_tool(
                std::process::Command::new("gcc")
                    .args(["-static", "-O2", "-o"])
                    .arg(dir.join("prog"))
                    .arg(&src),
            )?;
            Ok(dir.join("prog"))
        })
        .as_deref()
        .map_err(Clone::clone)
}

/// Imports the test image once per test process; the error says why it could not be.
pub(crate) fn test_image() -> Result<&'static str, String> {
    static IMAGE: OnceLock<Result<&'static str, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let run = run_tool;
            std::fs::copy(test_program()?, dir.path().join("prog")).map_err(|e| e.to_string())?;
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
        crate::harness::cannot_run("Docker Engine not reachable");
        return None;
    }
    match test_image() {
        Ok(image) => Some((ex, image)),
        Err(e) => {
            crate::harness::cannot_run(format!("cannot build the test image ({e})"));
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
    let logs = ex.logs(&t, 0).await.unwrap();
    assert!(has(&logs, "stdout", "out-line"), "{logs:?}");
    assert!(has(&logs, "stderr", "err-line"), "{logs:?}");
    assert_eq!(ex.logs(&t, 1).await.unwrap().len(), 1);
    ex.remove(&t).await;
    assert!(ex.logs(&t, 0).await.unwrap().is_empty());

    // No command: the image's own.
    let t = task(Runtime::Docker, image, &[], &[]);
    let mut h = ex.start(&t, None).await.unwrap();
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
    let other = Executors::detect_with(state.path(), helper())
        .await
        .for_node("some-other-node");
    assert!(!other.recover().await.contains_key(&t.id));
    let new = Executors::detect_with(state.path(), helper())
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
    assert!(new.logs(&t, 0).await.unwrap().is_empty());
}
