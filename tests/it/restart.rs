//! A restarted agent adopts its running tasks: exec tasks keep their init helpers (same PID,
//! same start time) and containers keep their IDs across `kill -9` of the daemon and restart,
//! across a binary upgrade (a restart from another binary file), and across SIGTERM, which
//! leaves tasks running unless the daemon runs with `--stop-tasks-on-exit`. What the manager
//! stopped while the agent was down is stopped after the restart, not adopted.
//!
//! The nodes heartbeat every 3 s here: the leader marks a node Down (and replaces its tasks)
//! after three missed periods, and a restart on a loaded machine may take longer than the 0.9 s
//! the harness's 300 ms period would give.
//!
//! Exec tests need root; docker tests need a Docker Engine (see `docker_services.rs`).
//! `task_downtime_across_a_daemon_restart` (ignored) measures downtime against a baseline
//! binary: `SKEP_BENCH_BASELINE_BIN=/path/to/old/skep cargo test --test it -- --ignored
//! restart::task_downtime --nocapture`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::harness::{
    Cluster, ContainerGuard, Node, containers, describe, image_or_skip, running_task_ids, skep_bin,
    stdout, timeout, unique_name, wait_for,
};

/// Daemon flags of every node here (see the module comment).
const SLOW_HEARTBEAT: &[&str] = &["--heartbeat-period", "3s"];

/// Task ID → (PID, start time in ticks) of the stage 1 init helpers of `node`'s exec tasks.
fn helpers(node: &Node) -> BTreeMap<String, (i32, u64)> {
    let prefix = format!("{}/", node.data_dir().display());
    let mut found = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .take_while(|a| a != "--")
            .collect();
        if !args.iter().any(|a| a == "init-helper")
            || args.iter().any(|a| a == "--stage2" || a == "--exec")
        {
            continue;
        }
        let Some(dir) = args
            .windows(2)
            .find(|w| w[0] == "--task-dir")
            .map(|w| w[1].clone())
        else {
            continue;
        };
        if !dir.starts_with(&prefix) {
            continue;
        }
        let Some((state, start)) = std::fs::read_to_string(e.path().join("stat"))
            .ok()
            .and_then(|s| stat_fields(&s))
        else {
            continue;
        };
        if state == 'Z' {
            continue;
        }
        let id = Path::new(&dir)
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        found.insert(id, (pid, start));
    }
    found
}

/// State letter and start time of a `/proc/PID/stat` line.
fn stat_fields(stat: &str) -> Option<(char, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut f = rest.split_whitespace();
    let state = f.next()?.chars().next()?;
    Some((state, f.nth(18)?.parse().ok()?))
}

/// The helpers of `service`'s running tasks (by `service ps` on `m`).
fn service_helpers(m: &Node, w: &Node, service: &str) -> BTreeMap<String, (i32, u64)> {
    let ids = running_task_ids(m, service);
    helpers(w)
        .into_iter()
        .filter(|(id, _)| ids.contains(id))
        .collect()
}

/// A 1-manager, 1-worker swarm whose nodes heartbeat slowly (see the module comment).
fn swarm() -> Cluster {
    Cluster::init_opts(1, 1, &[], SLOW_HEARTBEAT)
}

/// Creates a service placed on the worker only.
fn create_on_worker(m: &Node, args: &[&str]) {
    let mut all = vec![
        "service",
        "create",
        "--detach",
        "--constraint",
        "node.role==worker",
    ];
    all.extend_from_slice(args);
    m.cli_ok(&all);
}

/// Waits until `service` has `n` running tasks whose helpers run on `w`; returns the helpers.
fn wait_exec_running(m: &Node, w: &Node, service: &str, n: usize) -> BTreeMap<String, (i32, u64)> {
    wait_for(
        timeout(),
        &format!("{n} running tasks of {service}, each with its init helper"),
        || {
            let ids = running_task_ids(m, service);
            let h = service_helpers(m, w, service);
            if ids.len() == n && h.len() == n {
                Ok(h)
            } else {
                Err(format!("tasks {ids:?}, helpers {h:?}"))
            }
        },
    )
}

/// After a restart of `w`'s daemon: waits until its task session is open and it adopted
/// `n` tasks, checking all along that `same` still holds (the tasks were never replaced).
fn wait_adopted(w: &Node, n: usize, what: &str, same: impl Fn() -> Result<(), String>) {
    wait_for(timeout(), &format!("{what}: {n} tasks adopted"), || {
        same()?;
        let log = w.last_start_log();
        let adopted = log
            .matches("adopted a task a previous run of this agent started")
            .count();
        if log.contains("task session open") && adopted >= n {
            Ok(())
        } else {
            Err(format!(
                "session open: {}, adopted: {adopted}",
                log.contains("task session open")
            ))
        }
    });
    // Once more, after the first complete assignment set was applied.
    if let Err(e) = same() {
        panic!("{what}: {e}\n--- worker log ---\n{}", w.log_tail());
    }
}

/// A copy of the `skep` binary at another path: an "upgraded" skep.
fn upgraded_binary(dir: &Path) -> PathBuf {
    let to = dir.join("skep-upgraded");
    std::fs::copy(skep_bin(), &to).expect("copying the skep binary");
    // Installed together, as the README says: the daemon runs the init from its directory.
    std::fs::copy(env!("CARGO_BIN_EXE_skep-init"), dir.join("skep-init"))
        .expect("copying the skep-init binary");
    to
}

#[test]
fn exec_tasks_are_adopted_across_crash_upgrade_and_sigterm() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let mut c = swarm();
    let svc = "adopt-exec";
    create_on_worker(
        &c.nodes[0],
        &[
            "--runtime",
            "exec",
            "--replicas",
            "6",
            "--name",
            svc,
            "--",
            "/bin/sh",
            "-c",
            "echo adopt-hello; exec sleep 1000",
        ],
    );
    let before = wait_exec_running(&c.nodes[0], &c.nodes[1], svc, 6);
    let ids = running_task_ids(&c.nodes[0], svc);

    let same = |m: &Node, w: &Node| {
        let now = service_helpers(m, w, svc);
        let all = helpers(w);
        if now == before && running_task_ids(m, svc) == ids {
            Ok(())
        } else {
            Err(format!(
                "the tasks' processes changed: before {before:?}, now {now:?} (all helpers {all:?})"
            ))
        }
    };

    // 1. kill -9 and restart.
    c.nodes[1].restart();
    let (m, w) = (&c.nodes[0], &c.nodes[1]);
    wait_adopted(w, 6, "after kill -9 and restart", || same(m, w));

    // Their logs are still read from the adopted tasks' files.
    let logs = stdout(&m.cli(&["service", "logs", svc]));
    assert_eq!(
        logs.matches("adopt-hello").count(),
        6,
        "logs of the adopted tasks:\n{logs}"
    );

    // 2. An upgrade: a restart from another binary file.
    let dir = tempfile::tempdir().unwrap();
    let new_bin = upgraded_binary(dir.path());
    c.nodes[1].set_bin(&new_bin);
    c.nodes[1].restart();
    let (m, w) = (&c.nodes[0], &c.nodes[1]);
    let exe = std::fs::read_link(format!("/proc/{}/exe", w.pid().unwrap())).unwrap();
    assert_eq!(exe, new_bin, "the daemon runs the upgraded binary");
    wait_adopted(w, 6, "after an upgrade", || same(m, w));

    // 3. SIGTERM leaves the tasks running by default; the next start adopts them.
    c.nodes[1].terminate();
    assert_eq!(same(&c.nodes[0], &c.nodes[1]), Ok(()), "after SIGTERM");
    c.nodes[1].spawn();
    c.nodes[1].wait_up();
    let (m, w) = (&c.nodes[0], &c.nodes[1]);
    wait_adopted(w, 6, "after SIGTERM and a start", || same(m, w));

    // 4. Scaled down while the worker's daemon is dead: the 3 tasks no longer wanted are
    // stopped after the restart, the other 3 adopted.
    c.nodes[1].kill();
    c.nodes[0].cli_ok(&["service", "scale", "--detach", &format!("{svc}=3")]);
    c.nodes[1].spawn();
    c.nodes[1].wait_up();
    let (m, w) = (&c.nodes[0], &c.nodes[1]);
    let kept = wait_for(timeout(), "3 tasks left, the same processes", || {
        let now = helpers(w);
        let mut ids = running_task_ids(m, svc);
        ids.sort();
        let all_old = now.iter().all(|(id, p)| before.get(id) == Some(p));
        if now.len() == 3 && ids.len() == 3 && all_old && ids.iter().all(|i| now.contains_key(i)) {
            Ok(now)
        } else {
            Err(format!("helpers {now:?}, running {ids:?}"))
        }
    });
    assert!(w.last_start_log().contains("no longer assigned here"));

    // 5. Removing the service stops the adopted processes.
    m.cli_ok(&["service", "rm", svc]);
    wait_for(timeout(), "no helper left after service rm", || {
        let now = helpers(w);
        if now.is_empty() {
            Ok(())
        } else {
            Err(format!("{now:?} (adopted were {kept:?})"))
        }
    });

    // 6. With --stop-tasks-on-exit, SIGTERM stops the tasks.
    let svc2 = "adopt-exec-stop";
    create_on_worker(
        m,
        &[
            "--runtime",
            "exec",
            "--replicas",
            "2",
            "--name",
            svc2,
            "--",
            "/bin/sleep",
            "1000",
        ],
    );
    wait_exec_running(m, w, svc2, 2);
    let mut flags: Vec<&str> = SLOW_HEARTBEAT.to_vec();
    flags.push("--stop-tasks-on-exit");
    c.nodes[1].set_extra_args(&flags);
    c.nodes[1].restart();
    let (m, w) = (&c.nodes[0], &c.nodes[1]);
    let adopted = wait_exec_running(m, w, svc2, 2);
    wait_adopted(w, 2, "with --stop-tasks-on-exit", || {
        let now = service_helpers(m, w, svc2);
        if now == adopted {
            Ok(())
        } else {
            Err(format!("{now:?}, were {adopted:?}"))
        }
    });
    c.nodes[1].terminate();
    let left = helpers(&c.nodes[1]);
    assert!(
        left.is_empty(),
        "--stop-tasks-on-exit left {left:?} running (were {adopted:?})"
    );
}

#[test]
fn containers_are_adopted_across_crash_and_upgrade_and_removed_if_gone() {
    let Some(image) = image_or_skip() else {
        return;
    };
    let svc = unique_name("adopt-dk");
    let _guard = ContainerGuard(svc.clone());
    let mut c = swarm();
    create_on_worker(
        &c.nodes[0],
        &["--replicas", "6", "--name", &svc, image, "/prog", "sleep"],
    );
    let running = |m: &Node| {
        let mut cs = containers(&svc, false);
        cs.sort();
        let mut ids = running_task_ids(m, &svc);
        ids.sort();
        (cs, ids)
    };
    let before = wait_for(timeout(), "6 running containers", || {
        let (cs, ids) = running(&c.nodes[0]);
        let mut labelled: Vec<String> = cs.iter().map(|(_, t)| t.clone()).collect();
        labelled.sort();
        if cs.len() == 6 && labelled == ids {
            Ok(cs)
        } else {
            Err(format!("containers {cs:?}, running tasks {ids:?}"))
        }
    });
    let same = |m: &Node| {
        let (cs, ids) = running(m);
        let want: Vec<String> = {
            let mut v: Vec<String> = before.iter().map(|(_, t)| t.clone()).collect();
            v.sort();
            v
        };
        if cs == before && ids == want {
            Ok(())
        } else {
            Err(format!(
                "the containers changed: before {before:?}, now {cs:?}; running tasks {ids:?}"
            ))
        }
    };

    c.nodes[1].restart();
    wait_adopted(&c.nodes[1], 6, "after kill -9 and restart", || {
        same(&c.nodes[0])
    });

    let dir = tempfile::tempdir().unwrap();
    let new_bin = upgraded_binary(dir.path());
    c.nodes[1].set_bin(&new_bin);
    c.nodes[1].restart();
    wait_adopted(&c.nodes[1], 6, "after an upgrade", || same(&c.nodes[0]));

    // Removed while the worker's daemon is dead: its containers go after the restart.
    c.nodes[1].kill();
    let out = c.nodes[0].cli(&["service", "rm", &svc]);
    assert!(out.status.success(), "{}", describe(&out));
    c.nodes[1].spawn();
    c.nodes[1].wait_up();
    wait_for(timeout(), "no container left after the restart", || {
        let left = containers(&svc, true);
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
}

/// An adopted exec task keeps its published port: the restarted agent puts the local port
/// the task was given (recorded at its start) back into the routing mesh.
#[test]
fn an_adopted_exec_task_keeps_serving_its_published_port() {
    let Some(prog) = crate::harness::serving_program() else {
        return;
    };
    let mut c = swarm();
    let svc = "adopt-web";
    create_on_worker(
        &c.nodes[0],
        &[
            "--runtime",
            "exec",
            "--name",
            svc,
            "--publish",
            "4100:80",
            "--",
            &prog,
            "serve",
        ],
    );
    let before = wait_exec_running(&c.nodes[0], &c.nodes[1], svc, 1);
    let addr: std::net::SocketAddr =
        format!("{}:4100", c.nodes[1].addr().split(':').next().unwrap())
            .parse()
            .unwrap();
    let answer = wait_for(timeout(), "an answer on the published port", || {
        crate::harness::ask(addr)
    });
    let task = before.keys().next().unwrap().clone();
    assert!(answer.contains(&format!("task={task}")), "{answer}");

    c.nodes[1].restart();
    let (m, w) = (&c.nodes[0], &c.nodes[1]);
    wait_adopted(w, 1, "after kill -9 and restart", || {
        let now = service_helpers(m, w, svc);
        if now == before {
            Ok(())
        } else {
            Err(format!("the task's process changed: {before:?} -> {now:?}"))
        }
    });
    let again = wait_for(timeout(), "the adopted task answering again", || {
        crate::harness::ask(addr)
    });
    assert_eq!(again, answer, "another task answered");
}

/// An adopted exec task keeps its secrets tmpfs mounted (it still reads its secret after the
/// restart), and the mount goes when the task is removed.
#[test]
fn an_adopted_task_keeps_its_secrets_until_it_ends() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let mut c = swarm();
    let out = c.nodes[0].cli_stdin(&["secret", "create", "adopt-secret", "-"], "s3cret-value");
    assert!(out.status.success(), "{}", describe(&out));
    let svc = "adopt-secrets";
    // Prints the secret once a second: its lines after the restart show it is still there.
    create_on_worker(
        &c.nodes[0],
        &[
            "--runtime",
            "exec",
            "--name",
            svc,
            "--secret",
            "adopt-secret",
            "--",
            "/bin/sh",
            "-c",
            "while true; do echo \"read $(cat /run/secrets/adopt-secret)\"; sleep 1; done",
        ],
    );
    let before = wait_exec_running(&c.nodes[0], &c.nodes[1], svc, 1);
    let mounts = crate::harness::secrets_left(&c.nodes[1].data_dir());
    assert!(!mounts.is_empty(), "no secrets of the task on the worker");

    c.nodes[1].restart();
    let (m, w) = (&c.nodes[0], &c.nodes[1]);
    wait_adopted(w, 1, "after kill -9 and restart", || {
        let now = service_helpers(m, w, svc);
        if now == before {
            Ok(())
        } else {
            Err(format!("the task's process changed: {before:?} -> {now:?}"))
        }
    });
    assert_eq!(
        crate::harness::secrets_left(&w.data_dir()),
        mounts,
        "the adopted task's secrets changed"
    );
    let reads = |m: &Node| {
        stdout(&m.cli(&["service", "logs", svc]))
            .matches("read s3cret-value")
            .count()
    };
    let seen = reads(m);
    wait_for(
        timeout(),
        "the adopted task reading its secret again",
        || {
            let now = reads(m);
            if now >= seen + 2 {
                Ok(())
            } else {
                Err(format!("{now} reads, {seen} before"))
            }
        },
    );

    m.cli_ok(&["service", "rm", svc]);
    wait_for(timeout(), "the secrets gone with the task", || {
        let left = crate::harness::secrets_left(&w.data_dir());
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    });
}

/// The baseline binary: `SKEP_BENCH_BASELINE_BIN`, else `/work/skep-before/skep`.
fn baseline_bin() -> Option<PathBuf> {
    std::env::var_os("SKEP_BENCH_BASELINE_BIN")
        .map(PathBuf::from)
        .or_else(|| Some(PathBuf::from("/work/skep-before/skep")))
        .filter(|p| p.is_file())
}

/// Downtime of a one-task exec service across `kill -9` of its node's daemon and restart:
/// the longest time no process of the task ran, polled every 10 ms, and the time until
/// `service ps` shows a running task again. For `bin`'s daemons; `rounds` restarts.
fn downtime(bin: &Path, rounds: usize) -> Vec<(Duration, Duration)> {
    let nodes: Vec<Node> = ["m1", "w1"]
        .iter()
        .map(|n| {
            let mut node = Node::new(n, SLOW_HEARTBEAT);
            node.set_bin(bin);
            node
        })
        .collect();
    let mut c = Cluster::form(nodes, 1, &[]);
    let svc = "downtime";
    create_on_worker(
        &c.nodes[0],
        &[
            "--runtime",
            "exec",
            "--name",
            svc,
            "--",
            "/bin/sleep",
            "1000",
        ],
    );
    wait_exec_running(&c.nodes[0], &c.nodes[1], svc, 1);
    let mut out = Vec::new();
    for _ in 0..rounds {
        let old = helpers(&c.nodes[1]);
        let killed = Instant::now();
        c.nodes[1].kill();
        c.nodes[1].spawn();
        // Poll every 10 ms until a task process runs and the manager lists it running, and
        // the restarted agent's session is open (before it, the old process may not have
        // been killed yet).
        let mut gap = Duration::ZERO;
        let mut down_since: Option<Instant> = None;
        let mut listed = None;
        let mut polls = 0u32;
        loop {
            let now = helpers(&c.nodes[1]);
            let at = Instant::now();
            match (now.is_empty(), down_since) {
                (true, None) => down_since = Some(at),
                (false, Some(since)) => {
                    gap = gap.max(at - since);
                    down_since = None;
                }
                _ => {}
            }
            polls += 1;
            if polls.is_multiple_of(20)
                && listed.is_none()
                && c.nodes[1].last_start_log().contains("task session open")
            {
                let ids = running_task_ids(&c.nodes[0], svc);
                let alive: Vec<&String> = ids.iter().filter(|i| now.contains_key(*i)).collect();
                if !alive.is_empty() {
                    listed = Some(killed.elapsed());
                }
            }
            if listed.is_some() && !now.is_empty() {
                break;
            }
            assert!(
                killed.elapsed() < timeout(),
                "the task did not come back: {now:?} (was {old:?})"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        c.nodes[1].wait_up();
        out.push((gap, listed.unwrap_or_default()));
    }
    out
}

#[test]
#[ignore = "a measurement: needs a baseline binary (SKEP_BENCH_BASELINE_BIN) and root"]
fn task_downtime_across_a_daemon_restart() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let Some(baseline) = baseline_bin() else {
        crate::harness::cannot_run("no baseline binary: set SKEP_BENCH_BASELINE_BIN");
        return;
    };
    let rounds = 3;
    let before = downtime(&baseline, rounds);
    let after = downtime(Path::new(skep_bin()), rounds);
    let mean = |v: &[(Duration, Duration)], f: fn(&(Duration, Duration)) -> Duration| {
        v.iter().map(f).sum::<Duration>() / u32::try_from(v.len()).unwrap()
    };
    let (gap_b, gap_a) = (mean(&before, |x| x.0), mean(&after, |x| x.0));
    let (back_b, back_a) = (mean(&before, |x| x.1), mean(&after, |x| x.1));
    println!("restart downtime over {rounds} kill -9 + restart rounds each (same run):");
    println!("  no task process:        before {gap_b:?}  after {gap_a:?}  {before:?} / {after:?}");
    println!("  until listed running:   before {back_b:?}  after {back_a:?}");
    println!(
        "  ratio after/before (no process): {:.3}",
        gap_a.as_secs_f64() / gap_b.as_secs_f64().max(1e-9)
    );
    assert!(gap_a < gap_b, "adoption did not shorten the downtime");
    assert_eq!(
        gap_a,
        Duration::ZERO,
        "an adopted task's process never stops"
    );
}
