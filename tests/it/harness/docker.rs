//! The local Docker Engine: running `docker`, the test image, and finding or removing the
//! containers of a test's services (labelled with the service and task).

use std::process::{Command, Output};

use super::*;

const LABEL_SERVICE_NAME: &str = "skep.service.name";
const LABEL_TASK_ID: &str = "skep.task.id";

/// Runs `docker` with these arguments (killed after the CLI timeout).
pub fn docker(args: &[&str]) -> Output {
    run(Command::new("docker").args(args), None)
}

/// The test image, or `None` with a notice when Docker or the image is unavailable.
pub fn image_or_skip() -> Option<&'static str> {
    if !require(Runtime::Docker) {
        return None;
    }
    match test_image() {
        Ok(image) => Some(image),
        Err(e) => {
            cannot_run_without(
                Runtime::Docker,
                format!("cannot build the test image ({e})"),
            );
            None
        }
    }
}

/// A service name no other test (of this run or a concurrent one) uses.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

/// `(container ID, skep.task.id)` of the containers labelled with this service name;
/// `all` includes stopped ones.
pub fn containers(service: &str, all: bool) -> Vec<(String, String)> {
    let filter = format!("label={LABEL_SERVICE_NAME}={service}");
    let format = format!("{{{{.ID}}}} {{{{.Label \"{LABEL_TASK_ID}\"}}}}");
    let mut args = vec!["ps", "--no-trunc", "--filter", &filter, "--format", &format];
    if all {
        args.insert(1, "-a");
    }
    let out = docker(&args);
    assert!(out.status.success(), "docker ps failed\n{}", describe(&out));
    stdout(&out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (id, task) = l.split_once(' ').unwrap_or((l, ""));
            (id.to_string(), task.trim().to_string())
        })
        .collect()
}

/// `docker ps -a` of the service's containers with their state, for failure messages.
pub fn container_states(service: &str) -> String {
    let filter = format!("label={LABEL_SERVICE_NAME}={service}");
    stdout(&docker(&[
        "ps",
        "-a",
        "--filter",
        &filter,
        "--format",
        "{{.Names}} {{.Status}}",
    ]))
}

/// Removes the containers labelled with a service name when dropped, even when the test fails.
/// Declare it before the cluster: locals drop in reverse order, so the daemons are gone by then
/// and cannot start new containers.
pub struct ContainerGuard(pub String);

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let filter = format!("label={LABEL_SERVICE_NAME}={}", self.0);
        let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .output();
        }
    }
}
