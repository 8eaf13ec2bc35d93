//! What a test needs of the machine beyond the skep binary, and what happens when it is
//! missing.
//!
//! A test that needs a runtime declares it first: `if !require(Runtime::Exec) { return; }`.
//! A missing runtime fails the test, so CI never passes by skipping, unless
//! `SKEP_IT_ALLOW_SKIP=1` (a developer machine without Docker, say): then the test prints a
//! notice and returns. `SKEP_IT_REQUIRE=exec,docker` (set by `.ci/run`) names runtimes that must
//! be there: a test missing one of them fails even with `SKEP_IT_ALLOW_SKIP=1`.

use std::fmt;
use std::process::Command;

/// A task runtime a test needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// The exec runtime: root (namespaces, mounts, switching users) and the test program
    /// (`gcc`, a static libc).
    Exec,
    /// A reachable Docker Engine and the test image built from the test program.
    Docker,
}

impl Runtime {
    /// Its name in `SKEP_IT_REQUIRE`.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Exec => "exec",
            Runtime::Docker => "docker",
        }
    }

    /// Whether `SKEP_IT_REQUIRE` names it.
    fn required(self) -> bool {
        std::env::var("SKEP_IT_REQUIRE").is_ok_and(|list| self.listed_in(&list))
    }

    /// Whether `list` (comma-separated, as `SKEP_IT_REQUIRE`) names it.
    fn listed_in(self, list: &str) -> bool {
        list.split(',').any(|n| n.trim() == self.name())
    }
}

/// Whether `runtime` is available here; if not, the test cannot run (see the module comment):
/// it fails, or with `SKEP_IT_ALLOW_SKIP=1` prints a notice, and this returns `false` for the
/// caller to return.
pub fn require(runtime: Runtime) -> bool {
    let missing = match runtime {
        Runtime::Exec => {
            (!nix::unistd::geteuid().is_root()).then_some("the exec runtime needs root")
        }
        Runtime::Docker => (!docker_reachable()).then_some("Docker Engine not reachable"),
    };
    match missing {
        None => true,
        Some(reason) => {
            cannot_run_without(runtime, reason);
            false
        }
    }
}

/// Whether a Docker Engine answers the `docker` CLI.
pub fn docker_reachable() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A test that cannot run here for want of `runtime` (it is missing, or its test program or
/// image does not build): fails, or with `SKEP_IT_ALLOW_SKIP=1` (unless `SKEP_IT_REQUIRE` names
/// `runtime`) prints a notice and the caller returns.
pub fn cannot_run_without(runtime: Runtime, reason: impl fmt::Display) {
    if runtime.required() {
        panic!(
            "this test cannot run here: {reason} (SKEP_IT_REQUIRE names {})",
            runtime.name()
        );
    }
    cannot_run(reason);
}

/// A test that cannot run here for another reason (a tool or a baseline binary missing): fails,
/// so CI never passes by skipping; with `SKEP_IT_ALLOW_SKIP=1` it prints a notice and the
/// caller returns.
pub fn cannot_run(reason: impl fmt::Display) {
    if std::env::var_os("SKEP_IT_ALLOW_SKIP").is_some_and(|v| v == "1") {
        eprintln!("NOTICE: {reason}: skipping (SKEP_IT_ALLOW_SKIP=1)");
        return;
    }
    panic!("this test cannot run here: {reason} (set SKEP_IT_ALLOW_SKIP=1 to skip it on purpose)");
}

#[test]
fn skep_it_require_names_runtimes_in_a_comma_separated_list() {
    assert!(Runtime::Exec.listed_in("exec,docker"));
    assert!(Runtime::Docker.listed_in("exec, docker"));
    assert!(Runtime::Docker.listed_in("docker"));
    assert!(!Runtime::Exec.listed_in("docker"));
    assert!(!Runtime::Exec.listed_in(""));
    assert!(!Runtime::Exec.listed_in("executor"));
}
