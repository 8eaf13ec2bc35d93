//! Live rotation of secrets, end to end with real daemons, for both runtimes: `secret update`
//! swaps the file of every task that follows the secret in place, atomically (a task reading
//! it in a tight loop sees only whole values that were written), without replacing the task
//! (same process, same container), sends `on-change=signal:SIG` once per rotation, leaves a
//! pinned attachment at its version, and the old value leaves the node (the task's tmpfs and
//! the agent's memory); the rollout completes because the agent reports what it holds.
//!
//! The tasks run the test program's `watch FILE` mode (`harness/prog.c`): it reads the file
//! whole in a loop and prints `seen C LEN` when the value changes, `BAD ...` for a read that
//! is not one byte repeated, `hup N` after each SIGHUP, and `pid N` once.
//!
//! The nodes heartbeat every 3 s here, as in `restart.rs`: with the harness's 300 ms the leader
//! marks a node Down, and replaces its tasks at once, after 0.9 s without a heartbeat, which a
//! loaded machine can miss in the time a hundred rotations take; these tests are about
//! rotation not replacing tasks, not about liveness (once in CI: two reader tasks at the end).

use serde_json::Value;

use crate::harness::{
    Cluster, ContainerGuard, Node, containers, contains, files_under, image_or_skip, json_lines,
    serving_program, timeout, unique_name, wait_for,
};

/// Daemon flags of every node here (see the module comment).
const SLOW_HEARTBEAT: &[&str] = &["--heartbeat-period", "3s"];

/// How many rotations the readers live through.
const ROTATIONS: usize = 100;

/// The value of version `v` (1 = the first): one letter repeated, 1000 or 3000 times in turn,
/// so a partial or mixed read shows.
fn value(v: usize) -> (char, usize) {
    let letter = (b'A' + ((v - 1) % 26) as u8) as char;
    let len = if v % 2 == 1 { 1000 } else { 3000 };
    (letter, len)
}

fn text(v: usize) -> String {
    let (c, n) = value(v);
    c.to_string().repeat(n)
}

#[derive(Clone, Copy, PartialEq)]
enum Rt {
    Exec,
    Docker,
}

/// Creates a service of one task on `on` that watches `file`, with these `--secret`s.
fn watcher(m: &Node, rt: Rt, prog: &str, name: &str, on: &Node, secret: &str, file: &str) {
    let constraint = format!("node.hostname=={}", on.name());
    let mut args = vec![
        "service",
        "create",
        "--detach",
        "--name",
        name,
        "--constraint",
        &constraint,
        "--secret",
        secret,
    ];
    match rt {
        Rt::Exec => args.extend_from_slice(&["--runtime", "exec", "--", prog, "watch", file]),
        Rt::Docker => args.extend_from_slice(&[prog, "/prog", "watch", file]),
    }
    m.cli_ok(&args);
}

/// What a watcher printed, one line each, without the log prefix.
fn watch_lines(m: &Node, service: &str) -> Vec<String> {
    m.cli_ok(&["service", "logs", service])
        .lines()
        .filter_map(|l| {
            ["seen ", "BAD", "hup ", "pid "]
                .iter()
                .filter_map(|k| l.find(k).map(|i| l[i..].trim().to_string()))
                .next()
        })
        .collect()
}

fn wait_line(m: &Node, service: &str, want: &str) -> Vec<String> {
    wait_for(timeout(), &format!("{want:?} from {service}"), || {
        let lines = watch_lines(m, service);
        if lines.iter().any(|l| l == want) {
            Ok(lines)
        } else {
            Err(format!("{lines:?}"))
        }
    })
}

fn tasks(m: &Node, service: &str) -> Vec<Value> {
    json_lines(&m.cli_ok(&["service", "ps", "--no-trunc", "--format", "json", service]))
}

fn task_ids(m: &Node, service: &str) -> Vec<String> {
    tasks(m, service)
        .iter()
        .filter_map(|t| t["ID"].as_str().map(str::to_string))
        .collect()
}

/// Asserts `service` still has exactly the tasks `before`; if not, says what each task is and
/// what the two nodes' logs say of them, so a replacement seen once can be explained.
fn assert_same_tasks(m: &Node, w: &Node, service: &str, before: &[String]) {
    let now = tasks(m, service);
    let ids: Vec<String> = now
        .iter()
        .filter_map(|t| t["ID"].as_str().map(str::to_string))
        .collect();
    if ids == before {
        return;
    }
    let about = |log: String| {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(service) || ids.iter().any(|id| l.contains(id.as_str())))
            .collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    };
    panic!(
        "{service} had tasks {before:?} and now has {ids:?}:\n{}\n--- manager log about them:\n{}\n--- worker log about them:\n{}",
        now.iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
        about(m.log()),
        about(w.log())
    );
}

/// `skep secret update NAME -`, waiting for the rollout to complete.
fn update(m: &Node, name: &str, value: &str) {
    let out = m.cli_stdin(&["secret", "update", name, "-"], value);
    assert!(
        out.status.success(),
        "secret update {name}: {}\n{}",
        crate::harness::describe(&out),
        m.log_tail()
    );
}

/// The versions of secret `name` the agent of `n` holds now.
fn held_versions(n: &Node, name: &str) -> Vec<u64> {
    let mut v: Vec<u64> = json_lines(&n.cli_ok(&["agent", "secrets", "--format", "json"]))
        .iter()
        .filter(|r| r["name"] == name && r["held"] == true)
        .filter_map(|r| r["version"].as_u64())
        .collect();
    v.sort();
    v
}

fn rotations(rt: Rt) {
    let prog = match rt {
        Rt::Exec => match serving_program() {
            Some(p) => p,
            None => return,
        },
        Rt::Docker => match image_or_skip() {
            Some(i) => i.to_string(),
            None => return,
        },
    };
    let (reader, hupper, pinned) = (
        unique_name("rot-reader"),
        unique_name("rot-hupper"),
        unique_name("rot-pinned"),
    );
    let _guards = [
        ContainerGuard(reader.clone()),
        ContainerGuard(hupper.clone()),
        ContainerGuard(pinned.clone()),
    ];
    let c = Cluster::init_opts(1, 1, &[], SLOW_HEARTBEAT);
    let m = c.first();
    let w = &c.workers()[0];
    let out = m.cli_stdin(&["secret", "create", "x", "-"], &text(1));
    assert!(out.status.success(), "{}", crate::harness::describe(&out));

    watcher(m, rt, &prog, &reader, w, "x", "/run/secrets/x");
    watcher(
        m,
        rt,
        &prog,
        &hupper,
        w,
        "source=x,target=/run/secrets/h,on-change=signal:SIGHUP",
        "/run/secrets/h",
    );
    watcher(
        m,
        rt,
        &prog,
        &pinned,
        w,
        "source=x@1,target=/run/secrets/p",
        "/run/secrets/p",
    );
    let first = format!("seen A {}", value(1).1);
    for s in [&reader, &hupper, &pinned] {
        wait_line(m, s, &first);
    }
    let reader_task = task_ids(m, &reader);
    let hupper_task = task_ids(m, &hupper);
    assert_eq!((reader_task.len(), hupper_task.len()), (1, 1));
    let reader_containers = containers(&reader, false);

    // Each rotation is waited for: the rollout completes only once the agent reports the
    // task holds the new version. The first few: exactly one SIGHUP each.
    for v in 2..=ROTATIONS + 1 {
        update(m, "x", &text(v));
        if v <= 4 {
            let (c, n) = value(v);
            wait_line(m, &reader, &format!("seen {c} {n}"));
            wait_line(m, &hupper, &format!("hup {}", v - 1));
        }
    }
    let last = ROTATIONS + 1;
    let (c, n) = value(last);
    let lines = wait_line(m, &reader, &format!("seen {c} {n}"));

    // Only whole values that were written, in order of versions, never a partial or mixed one.
    let written: Vec<String> = (1..=last)
        .map(|v| format!("seen {} {}", value(v).0, value(v).1))
        .collect();
    let mut at = 0;
    for l in lines
        .iter()
        .filter(|l| l.starts_with("seen ") || l.starts_with("BAD"))
    {
        let pos = written[at..].iter().position(|w| w == l);
        assert!(
            pos.is_some(),
            "the reader saw {l:?}, not a written value after {:?}: {lines:?}",
            written[at]
        );
        at += pos.unwrap_or(0);
    }
    // One process throughout, the same task (and container): not replaced.
    let pids: Vec<&String> = lines.iter().filter(|l| l.starts_with("pid ")).collect();
    assert_eq!(pids.len(), 1, "{lines:?}");
    assert_same_tasks(m, w, &reader, &reader_task);
    assert_same_tasks(m, w, &hupper, &hupper_task);
    if rt == Rt::Docker {
        assert_eq!(containers(&reader, false), reader_containers);
    }

    // One SIGHUP per rotation.
    let hups = wait_line(m, &hupper, &format!("hup {ROTATIONS}"));
    assert!(
        !hups.iter().any(|l| l == &format!("hup {}", ROTATIONS + 1)),
        "{hups:?}"
    );
    assert!(!hups.iter().any(|l| l.starts_with("BAD")), "{hups:?}");

    // The pinned task still reads version 1, and saw nothing else.
    let p = watch_lines(m, &pinned);
    let seen: Vec<&String> = p.iter().filter(|l| !l.starts_with("pid ")).collect();
    assert_eq!(seen, vec![&first], "{p:?}");

    // The previous value is gone from the node: from every file under the worker's task
    // directories (the tmpfs of each task) and from the agent, which holds only the pinned
    // version and the current one.
    let previous = text(last - 1);
    let tasks_dir = w.data_dir().join("tasks");
    let files = files_under(&tasks_dir);
    assert!(!files.is_empty());
    let mut read_current = false;
    for f in &files {
        let Ok(bytes) = std::fs::read(f) else {
            continue;
        };
        assert!(
            !contains(&bytes, previous.as_bytes()),
            "{} still holds the previous version",
            f.display()
        );
        read_current |= bytes == text(last).as_bytes();
    }
    assert!(
        read_current,
        "no task file holds the current value: {files:?}"
    );
    wait_for(
        timeout(),
        "the agent to hold versions 1 and the current only",
        || {
            let held = held_versions(w, "x");
            if held == vec![1, last as u64] {
                Ok(())
            } else {
                Err(format!("{held:?}"))
            }
        },
    );
}

#[test]
fn exec_tasks_see_whole_values_through_rotations_in_place() {
    rotations(Rt::Exec);
}

#[test]
fn docker_tasks_see_whole_values_through_rotations_in_place() {
    rotations(Rt::Docker);
}

/// A task an agent adopted after a crash and restart is rotated like one it started: the
/// versions it holds were recorded on its tmpfs, the swap reaches the same process, and the
/// rollout completes on the adopting agent's report.
#[test]
fn an_adopted_exec_task_is_rotated_in_place() {
    let Some(prog) = serving_program() else {
        return;
    };
    let mut c = Cluster::init_opts(1, 1, &[], SLOW_HEARTBEAT);
    let out = c.nodes[0].cli_stdin(&["secret", "create", "x", "-"], &text(1));
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    let reader = "adopted-reader";
    watcher(
        &c.nodes[0],
        Rt::Exec,
        &prog,
        reader,
        &c.nodes[1],
        "x",
        "/run/secrets/x",
    );
    wait_line(&c.nodes[0], reader, &format!("seen A {}", value(1).1));
    let before = task_ids(&c.nodes[0], reader);

    c.nodes[1].restart();
    let (m, w) = (&c.nodes[0], &c.nodes[1]);
    wait_for(timeout(), "the worker to adopt the task", || {
        let log = w.last_start_log();
        if log.contains("task session open")
            && log.contains("adopted a task a previous run of this agent started")
        {
            Ok(())
        } else {
            Err(w.log_tail())
        }
    });
    update(m, "x", &text(2));
    let (c2, n2) = value(2);
    let lines = wait_line(m, reader, &format!("seen {c2} {n2}"));
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("pid ")).count(),
        1,
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.starts_with("BAD")), "{lines:?}");
    assert_eq!(task_ids(m, reader), before);
}
