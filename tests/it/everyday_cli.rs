//! The commands a Swarm user types every day, against real daemons: `version`, `info`,
//! `--filter`, Go-template `--format` and `-q` on listings and `inspect`, and `service logs
//! -f -t --since`; and the same templates giving the same values as Docker's own swarm mode
//! for the same service, on this machine's Docker Engine.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::harness::{
    Cluster, Node, assert_error, describe, docker, image_or_skip, skep, skep_bin, stdout, timeout,
    unique_name, wait_until,
};

/// `cli_ok` of a template, trimmed.
fn fmt(n: &Node, args: &[&str]) -> String {
    n.cli_ok(args).trim().to_string()
}

fn exec_service(m: &Node, name: &str, extra: &[&str], script: &str) {
    let mut args = vec!["service", "create", "--runtime", "exec", "--name", name];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "/bin/sh", "-c", script]);
    m.cli_ok(&args);
}

#[test]
fn version_info_filters_and_templates_on_real_daemons() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let c = Cluster::init(1, 1);
    let m = c.first();
    let w = &c.workers()[0];

    // version: client and daemon; the template reads Docker's field names.
    let v = m.cli_ok(&["version"]);
    assert!(
        v.starts_with("Client:\n Version:") && v.contains("\nServer: skep\n"),
        "{v}"
    );
    assert_eq!(
        fmt(m, &["version", "--format", "{{.Server.Version}}"]),
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        fmt(
            m,
            &[
                "version",
                "--format",
                "{{.Client.ApiVersion}} {{.Server.ApiVersion}}"
            ]
        ),
        format!("{0} {0}", skep::api::API_VERSION)
    );
    // No daemon: the client's part, then the error, exit 1 (as Docker).
    let dead = skep(&["--host", "unix:///nonexistent/skep.sock", "version"]);
    assert_eq!(dead.status.code(), Some(1), "{}", describe(&dead));
    assert!(stdout(&dead).starts_with("Client:"), "{}", describe(&dead));

    // info: Docker's Swarm section.
    let info = m.cli_ok(&["info"]);
    for want in [
        " Swarm: active\n",
        &format!("  NodeID: {}\n", m.id()),
        "  Is Manager: true\n",
        "  Managers: 1\n",
        "  Nodes: 2\n",
        "  Autolock Managers: false\n",
        "   Heartbeat Period:",
        "   Root CA Expires:",
        "  Node Certificate Expires:",
    ] {
        assert!(info.contains(want), "{want:?} missing:\n{info}");
    }
    assert_eq!(
        fmt(
            m,
            &[
                "info",
                "--format",
                "{{.Swarm.NodeID}} {{.Swarm.ControlAvailable}}"
            ]
        ),
        format!("{} true", m.id())
    );
    assert!(
        fmt(m, &["info", "--format", "{{.Swarm.Raft.Term}}"])
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let winfo = w.cli_ok(&["info"]);
    assert!(
        winfo.contains("  Is Manager: false\n") && !winfo.contains("ClusterID"),
        "{winfo}"
    );

    exec_service(
        m,
        "web",
        &["--replicas", "2", "--label", "tier=front"],
        "echo up; sleep 1d",
    );
    exec_service(m, "webhook", &["--mode", "global"], "sleep 1d");
    exec_service(m, "db", &["--label", "tier=back"], "sleep 1d");

    // service ls: filters (same key ORs, keys AND), -q, templates, `table` templates.
    let names = |args: &[&str]| {
        let mut a = vec!["service", "ls", "--format", "{{.Name}}"];
        a.extend_from_slice(args);
        m.cli_ok(&a).lines().map(str::to_string).collect::<Vec<_>>()
    };
    assert_eq!(names(&[]), ["db", "web", "webhook"]);
    assert_eq!(names(&["--filter", "name=web"]), ["web", "webhook"]);
    assert_eq!(
        names(&["-f", "name=web", "-f", "name=db"]),
        ["db", "web", "webhook"]
    );
    assert_eq!(names(&["-f", "name=web", "-f", "mode=global"]), ["webhook"]);
    assert_eq!(names(&["-f", "label=tier"]), ["db", "web"]);
    assert_eq!(names(&["-f", "label=tier=front"]), ["web"]);
    let web_id = fmt(m, &["service", "inspect", "--format", "{{.ID}}", "web"]);
    let q = fmt(m, &["service", "ls", "-q", "--filter", "label=tier=front"]);
    assert!(web_id.starts_with(&q) && q.len() == 12, "{q} vs {web_id}");
    let table = m.cli_ok(&[
        "service",
        "ls",
        "--format",
        "table {{.Name}}\\t{{.Mode}}",
        "-f",
        "name=db",
    ]);
    assert_eq!(table, "NAME      MODE\ndb        replicated\n");
    assert_eq!(
        fmt(
            m,
            &[
                "service",
                "inspect",
                "--format",
                "{{.Spec.Name}} {{.Spec.Mode.Replicated.Replicas}} {{index .Spec.Labels \"tier\"}}",
                "web"
            ]
        ),
        "web 2 front"
    );
    // A key Docker does not have, a bad value, a template that does not parse: refused.
    assert_error(
        &m.cli(&["service", "ls", "--filter", "colour=red"]),
        "invalid filter \"colour\"",
    );
    assert_error(
        &m.cli(&["service", "ls", "--filter", "mode=both"]),
        "invalid filter value",
    );
    let bad = m.cli(&["service", "ls", "--format", "{{.Name"]);
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));

    // service ps / node ps / node ls filters.
    wait_until(timeout(), "web's two tasks run", || {
        m.cli_ok(&[
            "service",
            "ps",
            "web",
            "--filter",
            "desired-state=running",
            "--format",
            "{{.CurrentState}}",
        ])
        .lines()
        .filter(|l| l.starts_with("Running"))
        .count()
            == 2
    });
    let mut task_names: Vec<String> = m
        .cli_ok(&[
            "service",
            "ps",
            "web",
            "-f",
            "desired-state=running",
            "--format",
            "{{.Name}}",
        ])
        .lines()
        .map(str::to_string)
        .collect();
    task_names.sort();
    assert_eq!(task_names, ["web.1", "web.2"]);
    assert_eq!(
        m.cli_ok(&["service", "ps", "web", "-f", "name=web.2", "-q"])
            .lines()
            .count(),
        1
    );
    let on_worker = m.cli_ok(&["node", "ps", w.name(), "--format", "{{.Name}} {{.Node}}"]);
    assert!(
        on_worker.lines().all(|l| l.ends_with(w.name())),
        "{on_worker}"
    );
    assert_eq!(
        fmt(
            m,
            &[
                "node",
                "ls",
                "--filter",
                "role=manager",
                "--format",
                "{{.Hostname}}"
            ]
        ),
        m.name()
    );
    assert_eq!(
        fmt(m, &["node", "ls", "-q", "--filter", "role=worker"]),
        w.id()
    );
    assert_eq!(
        fmt(
            m,
            &[
                "node",
                "inspect",
                "--format",
                "{{.Description.Hostname}}",
                "self"
            ]
        ),
        m.name()
    );
}

#[test]
fn service_logs_follow_every_line_once_with_times() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let c = Cluster::init(1, 0);
    let m = c.first();
    exec_service(
        m,
        "ticker",
        &[],
        "i=0; while true; do i=$((i+1)); echo line-$i; sleep 0.1; done",
    );
    wait_until(timeout(), "the ticker logs", || {
        m.cli_ok(&["service", "logs", "--raw", "ticker"])
            .lines()
            .count()
            >= 3
    });

    // -f -t --tail 2: two old lines, then each new one once, in order, with its time.
    let mut child = Command::new(skep_bin())
        .args([
            "--host",
            &m.host(),
            "service",
            "logs",
            "-f",
            "-t",
            "--tail",
            "2",
            "ticker",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    let deadline = Instant::now() + timeout();
    let mut got = Vec::new();
    while got.len() < 30 && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            got.push(l);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        got.len() >= 30,
        "only {} lines followed: {got:#?}",
        got.len()
    );
    let mut numbers = Vec::new();
    let mut last_time = String::new();
    for l in &got {
        // `2026-12-05T10:00:00.123456789Z ticker.1.xxxxxxxxxxxx@m1    | line-N`
        let (time, rest) = l.split_once(' ').unwrap();
        assert!(time.len() == 30 && time.ends_with('Z'), "{l:?}");
        assert!(time >= last_time.as_str(), "times go back: {got:#?}");
        last_time = time.to_string();
        assert!(rest.starts_with("ticker.1."), "{l:?}");
        let n: u64 = rest.rsplit_once("| line-").unwrap().1.parse().unwrap();
        numbers.push(n);
    }
    for pair in numbers.windows(2) {
        assert_eq!(
            pair[1],
            pair[0] + 1,
            "a line lost or printed twice: {numbers:?}"
        );
    }

    // --since: only lines from then on.
    let before = m
        .cli_ok(&["service", "logs", "--raw", "ticker"])
        .lines()
        .count();
    let now = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let since = m.cli_ok(&["service", "logs", "--raw", "--since", &now, "ticker"]);
    assert!(since.lines().count() < before, "{since}");
    let rel = m.cli_ok(&["service", "logs", "--raw", "--since", "1h", "ticker"]);
    assert!(rel.lines().count() >= before, "{rel}");
}

/// Leaves the engine's swarm mode when the test ends, if the test turned it on.
struct SwarmModeGuard(bool);

impl Drop for SwarmModeGuard {
    fn drop(&mut self) {
        if self.0 {
            let _ = docker(&["swarm", "leave", "--force"]);
            let _ = docker(&["network", "rm", "docker_gwbridge"]);
        }
    }
}

/// It turns the shared Docker Engine's swarm mode on and off, which rewrites the engine's
/// networking (iptables, the gateway bridge) under other tests' containers: `.ci/run` runs it
/// alone, after the suite (`-- --ignored --exact` by name).
#[test]
#[ignore = "changes the shared Docker Engine's networking: .ci/run runs it alone, after the suite"]
fn the_same_template_reads_the_same_values_as_docker_swarm() {
    let Some(image) = image_or_skip() else {
        return;
    };
    let c = Cluster::init(1, 0);
    let m = c.first();
    // Docker's own swarm mode on this engine, for a service of the same spec: listening on
    // a loopback port of its own, not 0.0.0.0:2377, which the test daemons use.
    let state = stdout(&docker(&["info", "--format", "{{.Swarm.LocalNodeState}}"]));
    let _guard = if state.trim() == "inactive" {
        let init = docker(&[
            "swarm",
            "init",
            "--advertise-addr",
            "127.0.0.1:42377",
            "--listen-addr",
            "127.0.0.1:42377",
        ]);
        assert!(
            init.status.success(),
            "docker swarm init: {}",
            describe(&init)
        );
        SwarmModeGuard(true)
    } else {
        SwarmModeGuard(false)
    };
    let name = unique_name("fmtcmp");
    let create = |cli: &dyn Fn(&[&str]) -> std::process::Output, extra: &[&str]| {
        let mut args = vec!["service", "create", "--detach", "--name", &name];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[
            "--replicas",
            "2",
            "--label",
            "tier=front",
            "--env",
            "A=1",
            image,
            "/prog",
            "serve",
        ]);
        let out = cli(&args);
        assert!(out.status.success(), "{}", describe(&out));
    };
    create(&|a| docker(a), &["--no-resolve-image"]);
    let _rm = DockerService(name.clone());
    create(&|a| m.cli(a), &[]);

    let ls = "{{.Name}} {{.Mode}} {{.Replicas}} {{.Image}}";
    let inspect = "{{.Spec.Name}} {{.Spec.Mode.Replicated.Replicas}} {{index .Spec.Labels \"tier\"}} \
                   {{.Spec.TaskTemplate.ContainerSpec.Image}} {{json .Spec.TaskTemplate.ContainerSpec.Args}} \
                   {{json .Spec.TaskTemplate.ContainerSpec.Env}} {{.Spec.TaskTemplate.RestartPolicy.Condition}}";
    let ps = "{{.Name}} {{.DesiredState}}";
    let filter = format!("name={name}");
    let both = |args: &[&str]| {
        let d = docker(args);
        assert!(d.status.success(), "docker: {}", describe(&d));
        let s = m.cli(args);
        assert!(s.status.success(), "skep: {}", describe(&s));
        let sorted = |t: String| {
            let mut l: Vec<String> = t.lines().map(str::to_string).collect();
            l.sort();
            l
        };
        (sorted(stdout(&d)), sorted(stdout(&s)))
    };
    wait_until(timeout(), "both services run 2/2", || {
        let (d, s) = both(&[
            "service",
            "ls",
            "--filter",
            &filter,
            "--format",
            "{{.Replicas}}",
        ]);
        d == ["2/2"] && s == ["2/2"]
    });
    let (d, s) = both(&["service", "ls", "--filter", &filter, "--format", ls]);
    assert_eq!(s, d, "service ls");
    let (d, s) = both(&["service", "inspect", "--format", inspect, &name]);
    assert_eq!(s, d, "service inspect");
    let (d, s) = both(&[
        "service",
        "ps",
        "--filter",
        "desired-state=running",
        "--format",
        ps,
        &name,
    ]);
    assert_eq!(s, d, "service ps");
    let (d, s) = both(&["service", "ls", "-q", "--filter", &filter]);
    assert_eq!((d.len(), s.len()), (1, 1));
    assert_eq!(d[0].len(), s[0].len(), "short IDs of the same length");
}

/// Removes a service of Docker's swarm mode when the test ends.
struct DockerService(String);

impl Drop for DockerService {
    fn drop(&mut self) {
        let _ = docker(&["service", "rm", &self.0]);
    }
}

/// `service logs -f` asks again at each poll, so an operator whose role stops allowing reads
/// while following is refused at the next poll and the command ends with the refusal.
#[test]
fn a_followed_log_ends_when_the_policy_stops_allowing_reads() {
    use crate::harness::operators::enrol;
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let c = Cluster::init(1, 0);
    let m = c.first();
    exec_service(m, "tick", &[], "while true; do echo tick; sleep 0.1; done");
    let tmp = tempfile::tempdir().unwrap();
    let default = m.cli_ok(&["policy", "get", "--rbac"]);
    let with_viewer = format!(
        "{default}\npermit (principal in Skep::Role::\"viewer\", action == Skep::Action::\"Read\", resource);\n"
    );
    let file = tmp.path().join("rbac.cedar");
    std::fs::write(&file, with_viewer).unwrap();
    m.cli_ok(&["policy", "set", "--rbac", file.to_str().unwrap()]);
    let dir = enrol(m, tmp.path(), "vic", "viewer", &[]);

    let mut child = Command::new(skep_bin())
        .env_remove("SKEP_HOST")
        .env("SKEP_CONFIG", dir.join("config"))
        .args(["--host", &format!("tcp://{}", m.addr())])
        .args(["--cert-path", dir.to_str().unwrap()])
        .args(["service", "logs", "-f", "--raw", "tick"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                return;
            }
        }
    });
    // Following: lines keep coming.
    let first = rx.recv_timeout(timeout());
    assert!(
        matches!(&first, Ok(l) if l == "tick"),
        "not following: {first:?}"
    );

    // The policy no longer lets viewers read: the next poll is refused and the follow ends.
    std::fs::write(&file, &default).unwrap();
    m.cli_ok(&["policy", "set", "--rbac", file.to_str().unwrap()]);
    let changed = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if changed.elapsed() > timeout() {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50)); // polling the child, with a deadline
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the follow went on after the policy stopped allowing reads");
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "the follow ended as if cleanly: {err}");
    assert!(err.contains("may not read cluster state"), "{err}");
}
