//! Task health checks, as Docker's `HEALTHCHECK`: a task with a check is `starting` until a
//! check passes, then `running` (and only then in the routing mesh's rotation); `retries`
//! failed checks in a row make it unhealthy, and the task's runner stops it and reports it failed
//! so that its restart policy replaces it. Failures within `start_period` of the start do not
//! count.
//!
//! Docker tasks are checked by their engine (the task's check, or the image's own); the agent
//! reads the engine's verdict. Exec tasks are checked by the agent: the check runs on the node
//! with the task's environment (`PORT`, `SKEP_PORT_<n>`, ...) and no stdin, killed at its
//! timeout. The check is the deployer's command, so it runs as the task does: through the init
//! helper as the unprivileged user "nobody" with no_new_privs, never as the agent (root).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::Executors;
use crate::store::service::{HealthCheck, Runtime, Task};
use skep_init::NOBODY;

/// Where a task's health stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// No check has passed yet.
    Starting,
    /// The last check passed (or too few have failed since).
    Healthy,
    /// `retries` checks in a row failed; the last one's output.
    Unhealthy(String),
}

/// The most of a check's output kept for the task's error: its last non-empty line, at most
/// 200 characters, control characters dropped.
pub fn clip(output: &str) -> String {
    let line = output
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    line.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// Counts check results the way Docker does.
#[derive(Debug)]
pub struct Tracker {
    retries: u32,
    start_period: Duration,
    started: Instant,
    failures: u32,
    state: Health,
}

impl Tracker {
    /// A task started at `started`, with the check's retries and start period.
    pub fn new(check: &HealthCheck, started: Instant) -> Self {
        Tracker {
            retries: check.retries.max(1),
            start_period: Duration::from_millis(check.start_period_ms),
            started,
            failures: 0,
            state: Health::Starting,
        }
    }

    /// Takes one check's result (at `now`) and returns the health it leaves.
    pub fn record(&mut self, passed: bool, output: &str, now: Instant) -> Health {
        if passed {
            self.failures = 0;
            self.state = Health::Healthy;
        } else if self.state == Health::Starting
            && now.saturating_duration_since(self.started) < self.start_period
        {
            // Still starting: failures do not count yet.
        } else {
            self.failures += 1;
            if self.failures >= self.retries {
                self.state = Health::Unhealthy(format!(
                    "{} health checks in a row failed; the last said: {}",
                    self.failures,
                    if output.is_empty() {
                        "nothing".to_string()
                    } else {
                        clip(output)
                    }
                ));
            }
        }
        self.state.clone()
    }
}

/// How a running task's health is followed.
pub enum Watch {
    /// It has no check.
    None,
    /// The agent runs an exec task's check.
    Exec {
        /// The check.
        check: HealthCheck,
        /// The task's environment.
        env: Vec<String>,
        /// How the check is run.
        runner: Runner,
        /// The results so far.
        tracker: Tracker,
    },
    /// The engine checks a container; the agent reads its verdict this often.
    Docker(Duration),
}

impl Watch {
    /// How to follow `task`, which has just started: an exec task by its spec's check; a
    /// docker task when its engine reports a health (the task's check or the image's).
    pub async fn for_task(execs: &Executors, task: &Task) -> Watch {
        let check = task.spec.healthcheck.clone();
        match task.spec.runtime {
            Runtime::Exec => match (check, execs.exec_helper()) {
                (Some(c), Some(helper)) if !c.is_disabled() => Watch::Exec {
                    tracker: Tracker::new(&c, Instant::now()),
                    env: task.spec.env.clone(),
                    runner: Runner::Helper {
                        helper: helper.to_path_buf(),
                        cgroups: execs.exec_groups(task),
                    },
                    check: c,
                },
                _ => Watch::None,
            },
            Runtime::Docker => {
                // The task's own check is known; the image's shows in the engine's report.
                let own = check.filter(|c| !c.is_disabled());
                if own.is_none() && execs.docker_health(task).await.is_none() {
                    return Watch::None;
                }
                let every = own.map_or(Duration::from_secs(1), |c| {
                    Duration::from_millis(c.interval_ms / 2)
                });
                Watch::Docker(every.clamp(Duration::from_millis(100), Duration::from_secs(1)))
            }
        }
    }

    /// Whether the task has a check (it starts as `starting`).
    pub fn is_some(&self) -> bool {
        !matches!(self, Watch::None)
    }

    /// The health after the next check; never resolves without a check.
    pub async fn next(&mut self, execs: &Executors, task: &Task) -> Health {
        match self {
            Watch::None => std::future::pending().await,
            Watch::Exec {
                check,
                env,
                runner,
                tracker,
            } => {
                tokio::time::sleep(Duration::from_millis(check.interval_ms)).await;
                let (passed, output) = run_check(check, env, runner).await;
                tracker.record(passed, &output, Instant::now())
            }
            Watch::Docker(every) => loop {
                tokio::time::sleep(*every).await;
                if let Some(h) = execs.docker_health(task).await {
                    return h;
                }
            },
        }
    }
}

/// How an exec task's check is started.
pub enum Runner {
    /// `HELPER init-helper --exec --user NOBODY [--cgroup DIR]... -- CHECK...`: unprivileged,
    /// no_new_privs, in the task's control groups (counted against its limits and the node's
    /// cap on process IDs, as the task's own processes are).
    Helper {
        /// The init program.
        helper: PathBuf,
        /// The task's control groups.
        cgroups: Vec<PathBuf>,
    },
    /// Directly, as the caller (unit tests of the check logic only).
    #[cfg(test)]
    Direct,
}

/// The program and arguments of a check: `CMD prog args...` or `CMD-SHELL "line"`.
fn check_argv(check: &HealthCheck) -> Option<Vec<&str>> {
    match check.test.first().map(String::as_str) {
        Some("CMD") if check.test.len() > 1 => {
            Some(check.test[1..].iter().map(String::as_str).collect())
        }
        Some("CMD-SHELL") if check.test.len() == 2 => Some(vec!["/bin/sh", "-c", &check.test[1]]),
        _ => None,
    }
}

/// The command that runs `argv` the way `runner` says.
fn check_command(argv: &[&str], runner: &Runner) -> tokio::process::Command {
    match runner {
        Runner::Helper { helper, cgroups } => {
            let mut c = tokio::process::Command::new(helper);
            c.args(["init-helper", "--exec", "--user"])
                .arg(NOBODY.to_string());
            for dir in cgroups {
                c.arg("--cgroup").arg(dir);
            }
            c.arg("--").args(argv);
            c
        }
        #[cfg(test)]
        Runner::Direct => {
            let mut c = tokio::process::Command::new(argv[0]);
            c.args(&argv[1..]);
            c
        }
    }
}

/// Runs an exec task's check once: whether it passed (exit 0 within the timeout) and what it
/// printed.
async fn run_check(check: &HealthCheck, env: &[String], runner: &Runner) -> (bool, String) {
    let Some(argv) = check_argv(check).filter(|a| !a.is_empty()) else {
        return (false, "the check is not CMD or CMD-SHELL".into());
    };
    let mut cmd = check_command(&argv, runner);
    cmd.current_dir(Path::new("/"))
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .envs(env.iter().filter_map(|e| e.split_once('=')))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let timeout = Duration::from_millis(check.timeout_ms);
    // Started off the runtime's threads (see `super::spawn`); killed if the timeout drops it.
    let run = async { super::spawn::spawn(cmd).await?.wait_with_output().await };
    match tokio::time::timeout(timeout, run).await {
        Err(_) => (
            false,
            format!("the check took longer than its timeout ({timeout:?})"),
        ),
        Ok(Err(e)) => (false, format!("cannot run the check: {e}")),
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push('\n');
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            let text = clip(&text);
            if out.status.success() {
                (true, text)
            } else if text.is_empty() {
                (false, out.status.to_string())
            } else {
                (false, text)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(retries: u32, start_period_ms: u64) -> HealthCheck {
        HealthCheck {
            retries,
            start_period_ms,
            ..HealthCheck::new(vec!["CMD".into(), "true".into()])
        }
    }

    #[test]
    fn a_pass_makes_it_healthy_and_retries_failures_in_a_row_unhealthy() {
        let t0 = Instant::now();
        let mut t = Tracker::new(&check(3, 0), t0);
        assert_eq!(t.record(false, "no", t0), Health::Starting);
        assert_eq!(t.record(true, "", t0), Health::Healthy);
        assert_eq!(t.record(false, "a", t0), Health::Healthy);
        assert_eq!(t.record(false, "b", t0), Health::Healthy);
        // A pass in between starts the count again.
        assert_eq!(t.record(true, "", t0), Health::Healthy);
        assert_eq!(t.record(false, "a", t0), Health::Healthy);
        assert_eq!(t.record(false, "b", t0), Health::Healthy);
        match t.record(false, "connection refused\n", t0) {
            Health::Unhealthy(why) => {
                assert!(why.contains("3 health checks in a row"), "{why}");
                assert!(why.ends_with("connection refused"), "{why}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn failures_in_the_start_period_do_not_count() {
        let t0 = Instant::now();
        let mut t = Tracker::new(&check(1, 10_000), t0);
        for _ in 0..5 {
            assert_eq!(t.record(false, "", t0), Health::Starting);
        }
        // After the period, one failure (retries 1) is enough.
        let later = t0 + Duration::from_secs(11);
        assert!(matches!(t.record(false, "", later), Health::Unhealthy(_)));
        // Within the period but once healthy, failures count.
        let mut t = Tracker::new(&check(1, 10_000), t0);
        assert_eq!(t.record(true, "", t0), Health::Healthy);
        assert!(matches!(t.record(false, "x", t0), Health::Unhealthy(_)));
    }

    #[test]
    fn clip_keeps_the_last_line_without_control_characters() {
        assert_eq!(clip("first\nlast \x1b[31mred\n\n"), "last [31mred");
        assert_eq!(clip(&"x".repeat(500)).len(), 200);
        assert_eq!(clip(""), "");
    }

    #[test]
    fn checks_go_through_the_helper_unprivileged() {
        let c = HealthCheck::new(vec!["CMD-SHELL".into(), "cat /etc/x".into()]);
        let argv = check_argv(&c).unwrap();
        assert_eq!(argv, ["/bin/sh", "-c", "cat /etc/x"]);
        let cmd = check_command(
            &argv,
            &Runner::Helper {
                helper: "/usr/bin/skep".into(),
                cgroups: vec!["/cg/pids/skep/n1/t1".into()],
            },
        );
        let std = cmd.as_std();
        assert_eq!(std.get_program(), "/usr/bin/skep");
        let args: Vec<_> = std
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "init-helper",
                "--exec",
                "--user",
                "65534:65534",
                "--cgroup",
                "/cg/pids/skep/n1/t1",
                "--",
                "/bin/sh",
                "-c",
                "cat /etc/x"
            ]
        );
        let cmd = HealthCheck::new(vec!["CMD".into(), "true".into(), "x".into()]);
        assert_eq!(check_argv(&cmd).unwrap(), ["true", "x"]);
        assert!(check_argv(&HealthCheck::new(vec!["NONE".into()])).is_none());
    }

    #[tokio::test]
    async fn exec_checks_run_with_the_task_environment_and_time_out() {
        let mut c = HealthCheck::new(vec![
            "CMD-SHELL".into(),
            "test \"$PORT\" = 4242 && echo ok".into(),
        ]);
        assert_eq!(
            run_check(&c, &["PORT=4242".into()], &Runner::Direct).await,
            (true, "ok".into())
        );
        let (passed, out) = run_check(&c, &["PORT=1".into()], &Runner::Direct).await;
        assert!(!passed);
        assert_eq!(out, "exit status: 1");
        c.test = vec!["CMD".into(), "sleep".into(), "5".into()];
        c.timeout_ms = 100;
        let (passed, out) = run_check(&c, &[], &Runner::Direct).await;
        assert!(!passed);
        assert!(out.contains("timeout"), "{out}");
        c.test = vec!["CMD".into(), "/nonexistent/check".into()];
        let (passed, out) = run_check(&c, &[], &Runner::Direct).await;
        assert!(!passed);
        assert!(out.starts_with("cannot run the check"), "{out}");
    }
}
