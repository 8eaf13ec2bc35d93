//! Docker-runtime services with real daemons: tasks are containers of the local Docker Engine,
//! labelled with the service and task; `service ps|logs|scale|rm` see and drive them, and an
//! image that is neither local nor pullable fails its tasks with a clear error.
//!
//! Needs a reachable Docker Engine and `gcc`: the test image is a static program imported with
//! `docker import` (see `harness/programs.rs`), nothing is pulled. Missing either, a test fails, or
//! skips with a notice under `SKEP_IT_ALLOW_SKIP=1`. Containers are global on the engine, so every test uses its own service names
//! and removes the containers labelled with them even when it fails.

use serde_json::Value;

use crate::harness::{
    Cluster, ContainerGuard, Node, container_states, containers, describe, image_or_skip,
    json_lines, stdout, timeout, unique_name, wait_for,
};

fn ps(node: &Node, service: &str) -> Vec<Value> {
    json_lines(&node.cli_ok(&["service", "ps", "--no-trunc", "--format", "json", service]))
}

fn is_running(t: &Value) -> bool {
    t["DesiredState"] == "Running"
        && t["CurrentState"]
            .as_str()
            .is_some_and(|s| s.starts_with("Running"))
}

fn summary(tasks: &[Value]) -> String {
    tasks
        .iter()
        .map(|t| {
            format!(
                "{} {} on {:?}: {} / {} {}",
                t["ID"].as_str().unwrap_or("?"),
                t["Name"].as_str().unwrap_or("?"),
                t["Node"].as_str().unwrap_or("?"),
                t["DesiredState"].as_str().unwrap_or("?"),
                t["CurrentState"].as_str().unwrap_or("?"),
                t["Error"].as_str().unwrap_or(""),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until `service` has exactly `n` running tasks and exactly `n` running containers, the
/// containers being those tasks' (by their `skep.task.id` label); returns the task IDs.
fn wait_running(node: &Node, service: &str, n: usize) -> Vec<String> {
    wait_for(
        timeout(),
        &format!("{n} running tasks of {service}, each with its running container"),
        || {
            let tasks = ps(node, service);
            let mut running: Vec<String> = tasks
                .iter()
                .filter(|t| is_running(t))
                .filter_map(|t| t["ID"].as_str().map(String::from))
                .collect();
            running.sort();
            let mut labelled: Vec<String> = containers(service, false)
                .into_iter()
                .map(|(_, task)| task)
                .collect();
            labelled.sort();
            if running.len() == n && labelled == running {
                Ok(running)
            } else {
                Err(format!(
                    "tasks:\n{}\ncontainers' task IDs: {labelled:?}",
                    summary(&tasks)
                ))
            }
        },
    )
}

#[test]
fn a_docker_service_runs_containers_logs_scales_and_is_removed() {
    let Some(image) = image_or_skip() else {
        return;
    };
    let name = unique_name("dk");
    let _guard = ContainerGuard(name.clone());
    let c = Cluster::init(1, 1);
    let m = c.first();

    // The test program prints `out-line` (stdout) and `err-line` (stderr), then sleeps.
    let out = m.cli_ok(&[
        "service",
        "create",
        "--name",
        &name,
        "--replicas",
        "2",
        image,
        "/prog",
        "sleep",
    ]);
    assert!(
        out.trim_end().ends_with("verify: Service converged"),
        "not converged:\n{out}"
    );

    // ps: two Running tasks, one per node (both nodes use this engine), each with its
    // container labelled with the service and the task. (Waited for rather than read once:
    // any skep daemon starting on this engine, e.g. in a concurrent test, removes every
    // skep-labelled container, and the orchestrator then replaces the tasks.)
    wait_for(timeout(), "2 Running tasks, on m1 and w1", || {
        let tasks = ps(m, &name);
        let running: Vec<&Value> = tasks.iter().filter(|t| is_running(t)).collect();
        let mut hosts: Vec<&str> = running.iter().filter_map(|t| t["Node"].as_str()).collect();
        hosts.sort_unstable();
        if hosts == ["m1", "w1"] && running.iter().all(|t| t["Image"] == image) {
            Ok(())
        } else {
            Err(summary(&tasks))
        }
    });
    wait_running(m, &name, 2);

    // logs: the program's lines, prefixed with the task.
    let logs = wait_for(timeout(), "out-line in `service logs`", || {
        let out = m.cli(&["service", "logs", &name]);
        let text = stdout(&out);
        if out.status.success() && text.contains("out-line") {
            Ok(text)
        } else {
            Err(describe(&out))
        }
    });
    assert!(
        logs.lines()
            .any(|l| l.starts_with(&format!("{name}.")) && l.ends_with("| out-line")),
        "{logs}"
    );
    let out = m.cli(&["service", "logs", &name]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("err-line"),
        "{}",
        describe(&out)
    );

    // scale down: one container left running. The stopped task's container stays (exited)
    // for its logs, as Docker keeps a service's task history.
    let out = m.cli_ok(&["service", "scale", &format!("{name}=1")]);
    assert!(
        out.trim_end().ends_with("verify: Service converged"),
        "{out}"
    );
    wait_running(m, &name, 1);

    // rm: every container stops, then goes (as `docker service rm` removes them).
    assert_eq!(m.cli_ok(&["service", "rm", &name]), format!("{name}\n"));
    assert_eq!(m.cli_ok(&["service", "ls", "-q"]), "");
    wait_for(timeout(), "no running container after service rm", || {
        if containers(&name, false).is_empty() {
            Ok(())
        } else {
            Err(container_states(&name))
        }
    });
    wait_for(timeout(), "no container left after service rm", || {
        if containers(&name, true).is_empty() {
            Ok(())
        } else {
            Err(container_states(&name))
        }
    });
}

#[test]
fn a_docker_service_with_a_missing_image_fails_its_tasks_clearly() {
    if image_or_skip().is_none() {
        return;
    }
    let name = unique_name("dk-missing");
    let _guard = ContainerGuard(name.clone());
    let c = Cluster::init(1, 1);
    let m = c.first();
    let missing = "skep-test/missing:nope";

    m.cli_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        &name,
        "--replicas",
        "2",
        missing,
    ]);
    // The pull of an image no registry has fails (no such repository, or no network); the task
    // records why. A pull that hangs would fail this wait instead of hanging the test.
    let err = wait_for(timeout(), "a task failing on the missing image", || {
        let tasks = ps(m, &name);
        tasks
            .iter()
            .filter_map(|t| t["Error"].as_str())
            .find(|e| e.contains("pulling it failed"))
            .map(String::from)
            .ok_or_else(|| summary(&tasks))
    });
    assert!(err.contains(missing), "{err}");
    eprintln!("missing image error: {err}");
    assert!(
        containers(&name, true).is_empty(),
        "a container exists for a missing image: {:?}",
        containers(&name, true)
    );

    // The service is still listed and can be removed at once.
    let ls = json_lines(&m.cli_ok(&["service", "ls", "--format", "json"]));
    assert!(ls.iter().any(|s| s["Name"] == name.as_str()), "{ls:?}");
    assert_eq!(m.cli_ok(&["service", "rm", &name]), format!("{name}\n"));
    assert_eq!(m.cli_ok(&["service", "ls", "-q"]), "");
}
