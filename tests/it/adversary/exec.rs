//! Adversary tests (see `mod.rs`): exec.
//!
//! A deployer (an operator certificate with the `deployer` role) starts exec tasks and health
//! checks on a manager and tries, from them, to become the node: read every file under the
//! data directory (the key-encryption key, the node key), use the local root socket, and
//! escalate through setuid programs. A task's secrets tmpfs must not show up in other mount
//! namespaces of the host (a slave namespace, as systemd services and containers have).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::harness::operators::{as_operator, enrol};
use crate::harness::{Cluster, Node, json_lines, run, skep_bin, timeout, wait_for, wait_until};

/// `service create --detach --runtime exec --name NAME FLAGS... -- CMD...` as the operator
/// whose credentials are in `dir`.
fn create_exec(m: &Node, dir: &Path, name: &str, flags: &[&str], cmd: &[&str]) -> Output {
    let mut args = vec![
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        "--name",
        name,
    ];
    args.extend_from_slice(flags);
    args.push("--");
    args.extend_from_slice(cmd);
    as_operator(m, dir, &args, None)
}

fn logs(m: &Node, service: &str) -> String {
    m.cli_ok(&["service", "logs", service])
}

/// Single-quotes `s` for `sh`.
fn sq(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A directory any uid may write into (where health checks leave their findings).
fn open_dir() -> tempfile::TempDir {
    let d = tempfile::Builder::new()
        .prefix("skep-it-adv-exec-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    d
}

#[test]
fn a_deployers_exec_task_cannot_read_the_managers_keys_or_use_its_socket() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let ops = tempfile::tempdir().unwrap();
    let (c, deployer) = with_deployer(ops.path());
    let m = c.first();
    // The admin gives the deployer a secret to attach; the task must still read it.
    let own = "own-secret-value-k3j5h7";
    let out = m.cli_stdin(&["secret", "create", "own", "-"], own);
    assert!(out.status.success(), "{}", crate::harness::describe(&out));

    // Every file of the manager, listed from outside: the task tries each one.
    let files = crate::harness::files_under(&m.data_dir());
    assert!(
        files.iter().any(|f| f.ends_with("kek")),
        "no kek under the data dir: {files:?}"
    );
    let mut script = String::from("echo UID=$(id -u); ");
    for f in &files {
        let f = sq(&f.to_string_lossy());
        script.push_str(&format!(
            "if head -c 1 {f} >/dev/null 2>&1; then echo READ {f}; fi; "
        ));
    }
    let data = sq(&m.data_dir().to_string_lossy());
    let node_dir = sq(&m.data_dir().parent().unwrap().to_string_lossy());
    let bin = sq(skep_bin());
    let sock = sq(&format!("unix://{}", m.socket().display()));
    script.push_str(&format!(
        "if [ -n \"$(ls -A {data} 2>/dev/null)\" ]; then echo LISTED data; fi; \
         if [ -n \"$(ls -A {node_dir} 2>/dev/null)\" ]; then echo LISTED node dir; fi; \
         if {bin} --host {sock} node ls >/dev/null 2>&1; then echo SOCKET-OK; fi; \
         if {bin} --host {sock} join-token -q manager 2>/dev/null; then echo TOKEN-OK; fi; \
         echo OWN=$(cat /run/secrets/own 2>&1); \
         echo PROBE-DONE; exec sleep 1000"
    ));
    let out = create_exec(
        m,
        &deployer,
        "escape",
        &["--constraint", "node.role==manager", "--secret", "own"],
        &["/bin/sh", "-c", &script],
    );
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    let seen = wait_for(timeout(), "the probe task to finish its checks", || {
        let l = logs(m, "escape");
        if l.contains("PROBE-DONE") {
            Ok(l)
        } else {
            Err(l)
        }
    });
    let breaches: Vec<&str> = seen
        .lines()
        .filter(|l| {
            ["READ ", "LISTED", "SOCKET-OK", "TOKEN-OK", "SWMTKN"]
                .iter()
                .any(|b| l.contains(b))
        })
        .collect();
    assert!(
        breaches.is_empty(),
        "a deployer's task reached the manager's keys or socket:\n{}",
        breaches.join("\n")
    );
    assert!(!seen.contains("UID=0"), "the task ran as root:\n{seen}");
    assert!(
        seen.contains(&format!("OWN={own}")),
        "the task lost its own secret:\n{seen}"
    );
}

/// A manager and a deployer's certificate directory (in `ops`).
fn with_deployer(ops: &Path) -> (Cluster, PathBuf) {
    let c = Cluster::init(1, 0);
    let deployer = enrol(c.first(), ops, "dep", "deployer", &[]);
    (c, deployer)
}

/// [`with_deployer`], with the default RBAC policies and `example` added installed.
fn with_deployer_under(ops: &Path, example: &str) -> (Cluster, PathBuf) {
    let (c, deployer) = with_deployer(ops);
    crate::harness::set_rbac_with(c.first(), ops, example);
    (c, deployer)
}

/// A health check is the deployer's command too: the agent runs it, and must not run it as
/// the node.
#[test]
fn a_deployers_health_check_does_not_run_as_the_node() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let ops = tempfile::tempdir().unwrap();
    let (c, deployer) = with_deployer(ops.path());
    let m = c.first();
    let findings = open_dir();
    let kek = sq(&m.data_dir().join("kek").to_string_lossy());
    let report = sq(&findings.path().join("health").to_string_lossy());
    let check = format!(
        "if head -c 1 {kek} >/dev/null 2>&1; then echo READ-KEK > {report}; \
         else echo denied uid=$(id -u) > {report}; fi"
    );
    let out = create_exec(
        m,
        &deployer,
        "checker",
        &[
            "--constraint",
            "node.role==manager",
            "--health-cmd",
            &check,
            "--health-interval",
            "200ms",
        ],
        &["/bin/sleep", "1000"],
    );
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    let report = findings.path().join("health");
    let said = wait_for(timeout(), "the health check to report", || {
        std::fs::read_to_string(&report).map_err(|e| e.to_string())
    });
    assert!(
        !said.contains("READ-KEK") && !said.contains("uid=0"),
        "a deployer's health check ran as the node: {said}"
    );
}

/// The second wall is policy: runtime and placement are part of the Deploy decision, so an
/// admin can keep deployers' exec tasks off the managers altogether.
#[test]
fn a_policy_can_keep_a_deployers_exec_tasks_off_the_managers() {
    let ops = tempfile::tempdir().unwrap();
    let (c, deployer) = with_deployer_under(
        ops.path(),
        include_str!("../../../policies/examples/rbac-exec-off-managers.cedar"),
    );
    let m = c.first();
    let create =
        |name: &str, extra: &[&str]| create_exec(m, &deployer, name, extra, &["/bin/true"]);
    crate::harness::assert_refused_and_audited(
        m,
        &create("on-managers", &[]),
        "deployer-exec-off-managers",
    );
    let out = create("on-workers", &["--constraint", "node.role==worker"]);
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
}

/// A deployer with one foothold could start an exec task without limits and take a node's
/// memory or process IDs: with the example policy, the Deploy decision sees the spec's limits
/// and refuses such a service (create and update alike, audited); with `--limit-memory` and
/// `--limit-pids` it runs.
#[test]
fn a_policy_can_require_limits_of_a_deployers_exec_tasks() {
    let ops = tempfile::tempdir().unwrap();
    let (c, deployer) = with_deployer_under(
        ops.path(),
        include_str!("../../../policies/examples/rbac-deployer-limits.cedar"),
    );
    let m = c.first();
    let create =
        |name: &str, extra: &[&str]| create_exec(m, &deployer, name, extra, &["/bin/true"]);
    for (name, flags) in [
        ("unlimited", &[][..]),
        ("no-pids", &["--limit-memory", "64MiB"][..]),
        (
            "too-many",
            &["--limit-memory", "64MiB", "--limit-pids", "5000"][..],
        ),
    ] {
        crate::harness::assert_refused_and_audited(m, &create(name, flags), "deployer-exec-limits");
    }
    let out = create(
        "limited",
        &["--limit-memory", "64MiB", "--limit-pids", "100"],
    );
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    // An update that lifts a limit is decided the same way.
    let out = as_operator(
        m,
        &deployer,
        &[
            "service",
            "update",
            "--detach",
            "--limit-pids",
            "0",
            "limited",
        ],
        None,
    );
    crate::harness::assert_error(&out, "deployer-exec-limits");
    let spec = m.cli_ok(&[
        "service",
        "inspect",
        "--format",
        "{{.Spec.TaskTemplate.Resources.Limits.Pids}}",
        "limited",
    ]);
    assert_eq!(spec.trim(), "100", "the refused update changed the service");
}

/// A deployer can read every secret its tasks receive, so which secrets it may attach is a
/// decision on the spec: with the example policy, a secret outside its list is refused.
#[test]
fn a_policy_can_limit_which_secrets_a_deployer_attaches() {
    let ops = tempfile::tempdir().unwrap();
    let (c, deployer) = with_deployer(ops.path());
    let m = c.first();
    for name in ["db_password", "root_ca_key"] {
        let out = m.cli_stdin(&["secret", "create", name, "-"], "value");
        assert!(out.status.success(), "{}", crate::harness::describe(&out));
    }
    let create = |name: &str, secret: &str| {
        create_exec(m, &deployer, name, &["--secret", secret], &["/bin/true"])
    };
    // The default policies let a deployer attach any secret.
    let out = create("before", "root_ca_key");
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    crate::harness::set_rbac_with(
        m,
        ops.path(),
        include_str!("../../../policies/examples/rbac-deployer-secrets.cedar"),
    );
    crate::harness::assert_refused_and_audited(
        m,
        &create("root-reader", "root_ca_key"),
        "deployer-secrets",
    );
    let out = create("app", "db_password");
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    // An update that adds the secret is decided the same way.
    let out = as_operator(
        m,
        &deployer,
        &[
            "service",
            "update",
            "--detach",
            "--secret-add",
            "root_ca_key",
            "app",
        ],
        None,
    );
    crate::harness::assert_error(&out, "deployer-secrets");
}

/// A process in a slave mount namespace of the host (as systemd services and containers
/// have): it sees what the host mounts after it started, unless the mount is private.
struct Sleeper(std::process::Child);

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_tasks_secret_tmpfs_does_not_propagate_into_other_mount_namespaces() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    // The node's data directory on a shared mount, as `/` is on a systemd host.
    let c = Cluster::init_prepared(1, 0, &[], &[], |n| {
        let data = n.data_dir();
        let data = data.to_str().unwrap();
        for args in [&["--bind", data, data][..], &["--make-shared", data][..]] {
            let out = run(Command::new("mount").args(args), None);
            assert!(out.status.success(), "{}", crate::harness::describe(&out));
        }
    });
    let m = c.first();
    let data = m.data_dir();
    let sleeper = Sleeper(
        Command::new("unshare")
            .args(["-m", "--propagation", "slave", "sleep", "600"])
            .spawn()
            .unwrap(),
    );
    let pid = sleeper.0.id();
    wait_until(
        timeout(),
        "the sleeper to be in its own mount namespace",
        || {
            let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).ok();
            ns(&pid.to_string()).is_some() && ns(&pid.to_string()) != ns("self")
        },
    );

    let value = "propagated-secret-v8b6n4";
    let out = m.cli_stdin(&["secret", "create", "prop", "-"], value);
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    m.cli_ok(&[
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        "--name",
        "holder",
        "--secret",
        "prop",
        "--",
        "/bin/sh",
        "-c",
        "cat /run/secrets/prop >/dev/null && echo HOLDING; exec sleep 1000",
    ]);
    wait_for(timeout(), "the task to hold its secret", || {
        let l = logs(m, "holder");
        if l.contains("HOLDING") {
            Ok(())
        } else {
            Err(l)
        }
    });
    let task =
        json_lines(&m.cli_ok(&["service", "ps", "--no-trunc", "--format", "json", "holder"]))
            .into_iter()
            .find_map(|t| t["ID"].as_str().map(str::to_string))
            .expect("a task");

    // In the host's namespace the tmpfs is there with the task's files (the agent and
    // dockerd use it) ...
    let tmpfs = crate::harness::secrets_tmpfs(&data);
    let here = crate::harness::mounts_under(&data);
    assert!(
        here.contains(&tmpfs) && tmpfs.join(&task).is_dir(),
        "no secrets of task {task} on the host's tmpfs: {here:?}"
    );
    // ... but not in the slave namespace, neither listed nor readable through it.
    let theirs = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let leaked: Vec<&str> = theirs
        .lines()
        .filter(|l| l.contains(&*tmpfs.to_string_lossy()) && l.contains("tmpfs"))
        .collect();
    let through = PathBuf::from(format!("/proc/{pid}/root"))
        .join(tmpfs.strip_prefix("/").unwrap())
        .join(&task)
        .join("files/prop");
    let readable =
        std::fs::read(&through).is_ok_and(|b| crate::harness::contains(&b, value.as_bytes()));
    assert!(
        leaked.is_empty() && !readable,
        "the secrets tmpfs of task {task} propagated into another mount namespace:\n{}\nreadable at {}: {readable}",
        leaked.join("\n"),
        through.display()
    );
}

/// The host process (not the init helper) whose command line is exactly `args`.
fn pid_running(args: &[&str]) -> Option<u32> {
    let want = args.join("\0") + "\0";
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        (cmd == want.as_bytes()).then_some(pid)
    })
}

#[test]
fn a_later_exec_tasks_mount_namespace_copies_no_mount_of_other_tasks_nor_keeps_their_secrets() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    // Exec task `later` starts while three `holder` tasks hold a secret, so its mount
    // namespace begins as a copy of the host's. It must copy no mount of theirs (a mount per
    // task made every new namespace grow with the tasks already running, and the mount lock
    // be held longer each time), and once they are gone nothing of their secrets may stay
    // reachable through it.
    let c = Cluster::init(1, 0);
    let m = c.first();
    let value = "outliving-secret-q3z7k1";
    let out = m.cli_stdin(&["secret", "create", "kept", "-"], value);
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    crate::harness::exec_service(
        m,
        "holder",
        &["--secret", "kept", "--replicas", "3"],
        "cat /run/secrets/kept >/dev/null && echo HOLDING; exec sleep 1001",
    );
    wait_for(timeout(), "the holders to read their secret", || {
        let l = logs(m, "holder");
        if l.matches("HOLDING").count() == 3 {
            Ok(())
        } else {
            Err(l)
        }
    });
    let holders: Vec<String> =
        json_lines(&m.cli_ok(&["service", "ps", "--no-trunc", "--format", "json", "holder"]))
            .into_iter()
            .filter_map(|t| t["ID"].as_str().map(str::to_string))
            .collect();
    assert_eq!(holders.len(), 3, "{holders:?}");
    crate::harness::exec_service(m, "later", &[], "echo UP; exec sleep 1002");
    let mut later = None;
    wait_until(timeout(), "the later task's process", || {
        later = pid_running(&["sleep", "1002"]);
        later.is_some()
    });
    let later = later.unwrap();
    let theirs = || std::fs::read_to_string(format!("/proc/{later}/mountinfo")).unwrap();
    let copied: Vec<String> = theirs()
        .lines()
        .filter(|l| holders.iter().any(|h| l.contains(h.as_str())))
        .map(str::to_string)
        .collect();
    assert!(
        copied.is_empty(),
        "task later's mount namespace holds the holders' mounts:\n{}",
        copied.join("\n")
    );

    m.cli_ok(&["service", "rm", "holder"]);
    wait_until(timeout(), "the holders' processes gone", || {
        pid_running(&["sleep", "1001"]).is_none()
    });
    wait_for(timeout(), "the holders' secrets removed", || {
        let left: Vec<PathBuf> = crate::harness::secrets_left(&m.data_dir())
            .into_iter()
            .filter(|p| {
                holders
                    .iter()
                    .any(|h| p.to_string_lossy().contains(h.as_str()))
            })
            .collect();
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
    // Not readable through the later task's view of the node either.
    let root = PathBuf::from(format!("/proc/{later}/root"));
    let data = m.data_dir();
    let through = root.join(data.strip_prefix("/").unwrap());
    let found: Vec<PathBuf> = if through.is_dir() {
        crate::harness::files_under(&through)
            .into_iter()
            .filter(|p| {
                std::fs::read(p).is_ok_and(|b| crate::harness::contains(&b, value.as_bytes()))
            })
            .collect()
    } else {
        Vec::new()
    };
    assert!(found.is_empty(), "the secret is readable at {found:?}");
    let nodes = [m];
    crate::harness::assert_no_plaintext(&nodes, &[value]);
}
