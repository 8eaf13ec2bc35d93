//! Health checks with real daemons: a task with a check stays `starting`, out of the routing
//! mesh's rotation, until a check passes; a task whose checks fail is stopped, fails as
//! unhealthy, leaves the rotation and is replaced.

use std::collections::BTreeSet;
use std::net::SocketAddr;

use serde_json::Value;

use crate::harness::{
    Cluster, Node, ask, json_lines, serving_program, timeout, wait_for, wait_until,
};

/// The service's tasks as `service ps` shows them (newest first per slot).
fn tasks(m: &Node, service: &str) -> Vec<Value> {
    json_lines(&m.cli_ok(&["service", "ps", "--no-trunc", "--format", "json", service]))
}

fn ids_in(tasks: &[Value], state: &str) -> BTreeSet<String> {
    tasks
        .iter()
        .filter(|t| {
            t["CurrentState"]
                .as_str()
                .is_some_and(|s| s.starts_with(state))
        })
        .filter_map(|t| t["ID"].as_str().map(str::to_string))
        .collect()
}

/// Waits for a failed task of `service` and returns its error.
fn failed_error(m: &Node, service: &str) -> String {
    wait_for(timeout(), &format!("a failed task of {service}"), || {
        let t = tasks(m, service);
        t.iter()
            .find(|x| {
                x["CurrentState"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("Failed"))
            })
            .and_then(|x| x["Error"].as_str().map(str::to_string))
            .ok_or_else(|| format!("{t:?}"))
    })
}

/// The task IDs that answer a few requests through `addr`.
fn answering(addr: SocketAddr) -> Result<BTreeSet<String>, String> {
    let mut seen = BTreeSet::new();
    for _ in 0..6 {
        let a = ask(addr)?;
        let task = a
            .split("task=")
            .nth(1)
            .unwrap_or_default()
            .trim()
            .to_string();
        seen.insert(task);
    }
    Ok(seen)
}

#[test]
fn only_healthy_tasks_are_in_the_rotation_and_unhealthy_ones_are_replaced() {
    let Some(prog) = serving_program() else {
        return;
    };
    let c = Cluster::init(1, 1);
    let m = c.first();
    // Checks run as "nobody", who cannot enter the node's directories: the marks live apart.
    let marks_dir = tempfile::Builder::new()
        .prefix("skep-it-marks-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(
        marks_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let marks = marks_dir.path().to_path_buf();
    let port = 4100;
    let check = format!("test -e {}/ok-$SKEP_TASK_ID", marks.display());
    m.cli_ok(&[
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        "--name",
        "web",
        "--replicas",
        "2",
        "--publish",
        &format!("{port}:80"),
        "--health-cmd",
        &check,
        "--health-interval",
        "200ms",
        "--health-retries",
        "2",
        // Failures before the first pass do not count for this long (the second task must
        // stay starting); once a task has passed, they do.
        "--health-start-period",
        "10m",
        "--",
        &prog,
        "serve",
    ]);
    let addr: SocketAddr = format!("{}:{port}", m.addr().split(':').next().unwrap())
        .parse()
        .unwrap();
    // Both tasks run their program but no check has passed: starting, and nobody answers.
    let starting = wait_for(timeout(), "2 starting tasks", || {
        let t = tasks(m, "web");
        let ids = ids_in(&t, "Starting");
        if ids.len() == 2 {
            Ok(ids)
        } else {
            Err(format!("{t:?}"))
        }
    });
    let mut ids = starting.iter();
    let (a, b) = (ids.next().unwrap().clone(), ids.next().unwrap().clone());
    assert!(ask(addr).is_err(), "a task answered before it was healthy");
    assert!(ids_in(&tasks(m, "web"), "Running").is_empty());

    // One passes its check: it runs, and it alone answers.
    std::fs::write(marks.join(format!("ok-{a}")), "").unwrap();
    wait_for(timeout(), "only the healthy task answers", || {
        let seen = answering(addr)?;
        if seen == BTreeSet::from([a.clone()]) {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });
    assert_eq!(
        ids_in(&tasks(m, "web"), "Starting"),
        BTreeSet::from([b.clone()])
    );

    // Both healthy: both answer.
    std::fs::write(marks.join(format!("ok-{b}")), "").unwrap();
    wait_for(timeout(), "both tasks answer", || {
        let seen = answering(addr)?;
        if seen.len() == 2 {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });

    // One fails its checks: it is stopped and fails as unhealthy, leaves the rotation, and a
    // new task (starting, since its own check cannot pass) takes its slot.
    std::fs::remove_file(marks.join(format!("ok-{a}"))).unwrap();
    wait_until(
        timeout(),
        "the unhealthy task failed and was replaced",
        || {
            let t = tasks(m, "web");
            let failed = t.iter().any(|x| {
                x["ID"].as_str() == Some(a.as_str())
                    && x["CurrentState"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("Failed"))
                    && x["Error"]
                        .as_str()
                        .is_some_and(|e| e.contains("unhealthy container"))
            });
            let replacement = ids_in(&t, "Starting").iter().any(|id| *id != a && *id != b);
            failed && replacement
        },
    );
    wait_for(timeout(), "only the healthy task answers again", || {
        let seen = answering(addr)?;
        if seen == BTreeSet::from([b.clone()]) {
            Ok(())
        } else {
            Err(format!("{seen:?}"))
        }
    });
    assert!(
        c.nodes
            .iter()
            .any(|n| n.log().contains("the task is unhealthy; stopping it")),
        "the agent logs why it stopped the task"
    );
}

/// A Compose `healthcheck` reaches the Docker Engine: a container whose check passes runs; one
/// whose check fails is stopped and its task fails as unhealthy.
#[test]
fn docker_health_checks_from_a_compose_file_gate_running() {
    let Some(image) = crate::harness::image_or_skip() else {
        return;
    };
    let stack = crate::harness::unique_name("hc");
    let _good = crate::harness::ContainerGuard(format!("{stack}_good"));
    let _bad = crate::harness::ContainerGuard(format!("{stack}_bad"));
    let c = Cluster::init(1, 0);
    let m = c.first();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docker-compose.yml");
    std::fs::write(
        &file,
        format!(
            r#"services:
  good:
    image: {image}
    command: ["/prog", "sleep"]
    healthcheck:
      test: ["CMD", "/prog", "exit", "0"]
      interval: 200ms
      retries: 2
  bad:
    image: {image}
    command: ["/prog", "sleep"]
    healthcheck:
      test: ["CMD", "/prog", "exit", "1"]
      interval: 200ms
      retries: 2
    deploy:
      restart_policy:
        condition: none
"#
        ),
    )
    .unwrap();
    m.cli_ok(&[
        "stack",
        "deploy",
        "--detach",
        "-c",
        file.to_str().unwrap(),
        &stack,
    ]);
    let inspect = m.cli_ok(&["service", "inspect", "--pretty", &format!("{stack}_good")]);
    assert!(inspect.contains("Healthcheck"), "{inspect}");
    wait_until(timeout(), "the healthy container runs", || {
        !ids_in(&tasks(m, &format!("{stack}_good")), "Running").is_empty()
    });
    let err = failed_error(m, &format!("{stack}_bad"));
    assert!(err.contains("unhealthy container"), "{err}");
    // It never ran: it went from starting to failed.
    assert!(ids_in(&tasks(m, &format!("{stack}_bad")), "Running").is_empty());
    m.cli_ok(&["stack", "rm", &stack]);
}

/// An image of the test program whose own `HEALTHCHECK` always fails (built locally from the
/// test image, never pulled), or `None` with a notice when it cannot be built.
fn image_failing_its_own_check(base: &str) -> Option<String> {
    static IMAGE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let dir = tempfile::tempdir().ok()?;
            std::fs::write(
                dir.path().join("Dockerfile"),
                format!(
                    "FROM {base}\nHEALTHCHECK --interval=200ms --retries=2 CMD [\"/prog\", \"exit\", \"1\"]\n"
                ),
            )
            .ok()?;
            let tag = format!("{base}-hc");
            let out = std::process::Command::new("docker")
                .args(["build", "-q", "-t", &tag])
                .arg(dir.path())
                .output()
                .ok()?;
            if out.status.success() {
                Some(tag)
            } else {
                crate::harness::cannot_run_without(crate::harness::Runtime::Docker, format!(
                    "cannot build an image with a HEALTHCHECK: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
                None
            }
        })
        .clone()
}

/// An image's own `HEALTHCHECK` counts as in Docker (its task fails as unhealthy), and
/// `--no-healthcheck` turns it off (the task runs).
#[test]
fn an_images_own_health_check_counts_unless_turned_off() {
    let Some(base) = crate::harness::image_or_skip() else {
        return;
    };
    let Some(image) = image_failing_its_own_check(base) else {
        return;
    };
    let (sick, quiet) = (
        crate::harness::unique_name("hc-image"),
        crate::harness::unique_name("hc-off"),
    );
    let _guards = [
        crate::harness::ContainerGuard(sick.clone()),
        crate::harness::ContainerGuard(quiet.clone()),
    ];
    let c = Cluster::init(1, 0);
    let m = c.first();
    for (name, extra) in [(&sick, None), (&quiet, Some("--no-healthcheck"))] {
        let mut args = vec![
            "service",
            "create",
            "--detach",
            "--name",
            name,
            "--restart-condition",
            "none",
        ];
        args.extend(extra);
        args.extend([image.as_str(), "/prog", "sleep"]);
        m.cli_ok(&args);
    }
    let err = failed_error(m, &sick);
    assert!(err.contains("unhealthy container"), "{err}");
    wait_until(timeout(), "the task without checks running", || {
        !ids_in(&tasks(m, &quiet), "Running").is_empty()
    });
    // The engine runs no check for it at all, and it is still running after the other task,
    // started beside it, failed its.
    let (id, _) = crate::harness::containers(&quiet, false)
        .pop()
        .expect("the task's running container");
    let health = crate::harness::docker(&["inspect", "-f", "{{json .State.Health}}", &id]);
    assert_eq!(String::from_utf8_lossy(&health.stdout).trim(), "null");
    assert!(ids_in(&tasks(m, &quiet), "Failed").is_empty());
    assert!(!ids_in(&tasks(m, &quiet), "Running").is_empty());
}
