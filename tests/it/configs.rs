//! Configs through the CLI (issue 17): created from a file or stdin, listed apart from secrets
//! with their version, inspected with their data (base64 in JSON, text with --pretty) and
//! every kept version, attached to a service with Docker's `--config` syntax, refused while in
//! use, updated to a new version and rolled back; bad targets and on-change modes refused with
//! nothing changed.
//!
//! And delivered: an exec task reads its config at its target (covering a file of the node in
//! its own mount namespace only; a target missing on the node fails the task, creating
//! nothing), a docker task at its target with its owner and mode.

use serde_json::Value;

use crate::harness::{Cluster, Node, assert_error, json_lines, stdout, write_file};

fn inspect(m: &Node, name: &str) -> Value {
    let v: Value = serde_json::from_str(&m.cli_ok(&["config", "inspect", name])).unwrap();
    v[0].clone()
}

fn create_web(m: &Node, configs: &[&str]) -> std::process::Output {
    let mut args = vec![
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        "--name",
        "web",
    ];
    for c in configs {
        args.extend_from_slice(&["--config", c]);
    }
    args.extend_from_slice(&["--", "/bin/sleep", "1000"]);
    m.cli(&args)
}

#[test]
fn configs_are_created_listed_inspected_attached_updated_and_guarded_while_used() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("nginx.conf");
    let text = "worker_processes 4;\n";
    write_file(&file, text);
    let id = m
        .cli_ok(&[
            "config",
            "create",
            "-l",
            "app=web",
            "nginx_conf",
            file.to_str().unwrap(),
        ])
        .trim()
        .to_string();
    assert!(!id.is_empty());
    // From stdin too; a bad name is refused before anything is sent.
    let out = m.cli_stdin(&["config", "create", "motd", "-"], "hello\n");
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    assert_error(
        &m.cli(&["config", "create", "bad/name", "-"]),
        "not a valid config name",
    );

    // ls: configs only, with their version; secrets are another namespace.
    let table = m.cli_ok(&["config", "ls"]);
    assert!(
        table.starts_with("ID") && table.contains("VERSION"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 3, "{table}");
    assert_eq!(m.cli_ok(&["secret", "ls", "-q"]), "");
    let listed = json_lines(&m.cli_ok(&["config", "ls", "--format", "json"]));
    assert!(listed.iter().all(|c| c["Version"] == 1), "{listed:?}");

    // inspect: Docker's Spec.Data in base64, the text with --pretty.
    let info = inspect(m, "nginx_conf");
    assert_eq!(info["ID"], id.as_str());
    assert_eq!(
        info["Spec"]["Data"], "d29ya2VyX3Byb2Nlc3NlcyA0Owo=",
        "{info}"
    );
    assert_eq!(info["Spec"]["Labels"]["app"], "web");
    assert_eq!(info["Versions"][0]["Version"], 1, "{info}");
    let pretty = m.cli_ok(&["config", "inspect", "--pretty", "nginx_conf"]);
    assert!(pretty.ends_with("Data:\nworker_processes 4;\n"), "{pretty}");

    // Bad attachments: refused, nothing created.
    for (spec, says) in [
        (
            "source=nginx_conf,target=/etc/n.conf,on-change=rotate",
            "on-change=rotate",
        ),
        ("source=nginx_conf,target=/proc/n.conf", "lies in /proc"),
        ("source=nginx_conf,target=/sys/n.conf", "lies in /sys"),
        (
            "source=nginx_conf,target=/run/secrets/n.conf",
            "lies in /run/secrets",
        ),
        ("source=nginx_conf@4,target=/etc/n.conf", "no version 4"),
        ("source=nope,target=/etc/n.conf", "unknown config nope"),
    ] {
        assert_error(&create_web(m, &[spec]), says);
    }
    assert_error(
        &create_web(
            m,
            &[
                "source=nginx_conf,target=/etc/x",
                "source=motd,target=/etc/x",
            ],
        ),
        "clashes",
    );
    assert_eq!(m.cli_ok(&["service", "ls", "-q"]), "");

    // A good one: the spec carries it; rm is refused while it is used.
    let out = create_web(
        m,
        &["source=nginx_conf,target=/etc/nginx/nginx.conf,mode=0440"],
    );
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    let svc = m.cli_ok(&["service", "inspect", "--pretty", "web"]);
    assert!(
        svc.contains(" Configs:")
            && svc.contains(
                "nginx_conf (current version) -> /etc/nginx/nginx.conf (uid 0, gid 0, mode 0440, on-change restart)"
            ),
        "{svc}"
    );
    assert_error(
        &m.cli(&["config", "rm", "nginx_conf"]),
        "in use by service web",
    );
    // --config-add / --config-rm.
    m.cli_ok(&[
        "service",
        "update",
        "--detach",
        "--config-add",
        "source=motd,target=/etc/motd",
        "web",
    ]);
    let svc = m.cli_ok(&["service", "inspect", "--pretty", "web"]);
    assert!(svc.contains("motd (current version) -> /etc/motd"), "{svc}");
    m.cli_ok(&[
        "service",
        "update",
        "--detach",
        "--config-rm",
        "motd",
        "web",
    ]);
    let svc = m.cli_ok(&["service", "inspect", "--pretty", "web"]);
    assert!(!svc.contains("/etc/motd"), "{svc}");

    // update: a new version; the same data again is refused; rollback goes back.
    let out = m.cli_stdin(
        &["config", "update", "--detach", "nginx_conf", "-"],
        "worker_processes 8;\n",
    );
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    assert!(
        stdout(&out).starts_with("nginx_conf: version 2\nrolling out to 1 service"),
        "{}",
        stdout(&out)
    );
    let info = inspect(m, "nginx_conf");
    assert_eq!(info["Version"], 2, "{info}");
    assert_eq!(
        info["Spec"]["Data"], "d29ya2VyX3Byb2Nlc3NlcyA4Owo=",
        "{info}"
    );
    assert_error(
        &m.cli_stdin(
            &["config", "update", "nginx_conf", "-"],
            "worker_processes 8;\n",
        ),
        "already has this value",
    );
    let said = m.cli_ok(&["config", "rollback", "--detach", "nginx_conf"]);
    assert!(said.starts_with("nginx_conf: version 1\n"), "{said}");
    assert_eq!(
        inspect(m, "nginx_conf")["Spec"]["Data"],
        "d29ya2VyX3Byb2Nlc3NlcyA0Owo="
    );
    let status = m.cli_ok(&["config", "rollout", "nginx_conf"]);
    assert!(
        status.starts_with("nginx_conf: version 2 -> 1 (rollback)"),
        "{status}"
    );

    // Audited as config operations.
    let story = m.cli_ok(&["audit", "ls", "--json", "--target", "nginx_conf"]);
    for action in ["config.create", "config.update", "config.rollback"] {
        assert!(story.contains(action), "{action}: {story}");
    }

    // Once no service uses it: removed.
    m.cli_ok(&["service", "rm", "web"]);
    crate::harness::wait_until(
        crate::harness::timeout(),
        "config rm after service rm",
        || m.cli(&["config", "rm", "nginx_conf"]).status.success(),
    );
    let left = m.cli_ok(&["config", "ls", "-q"]);
    assert!(!left.contains(&id) && left.lines().count() == 1, "{left}");
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

fn wait_logs(m: &Node, service: &str, needle: &str) -> String {
    crate::harness::wait_for(
        crate::harness::timeout(),
        &format!("{needle:?} in the logs of {service}"),
        || {
            let l = m.cli_ok(&["service", "logs", service]);
            if l.contains(needle) { Ok(l) } else { Err(l) }
        },
    )
}

#[test]
fn an_exec_task_reads_its_config_at_its_target_and_the_nodes_file_is_untouched() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let c = Cluster::init(1, 0);
    let m = c.first();
    let dir = tempfile::tempdir().unwrap();
    // An exec task sees the node's file system: the config covers an existing file there, in
    // the task's own mount namespace only.
    let target = dir.path().join("app.conf");
    write_file(&target, "the node's own file\n");
    let target = target.to_str().unwrap().to_string();
    let out = m.cli_stdin(&["config", "create", "app_conf", "-"], "level = 7\n");
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    crate::harness::exec_service(
        m,
        "reader",
        &[
            "--config",
            &format!("source=app_conf,target={target},mode=0444"),
        ],
        &format!("echo \"read: $(cat {target})\"; exec sleep 1000"),
    );
    wait_logs(m, "reader", "read: level = 7");
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "the node's own file\n"
    );
    // A target that does not exist on the node: the task fails, saying why, and nothing is
    // created there.
    let missing = dir.path().join("missing.conf");
    crate::harness::exec_service(
        m,
        "nowhere",
        &[
            "--config",
            &format!("source=app_conf,target={}", missing.display()),
        ],
        "exec sleep 1000",
    );
    // The init helper fails before the command runs, and `service ps` says why.
    crate::harness::wait_for(crate::harness::timeout(), "nowhere's task refused", || {
        let ps = m.cli_ok(&["service", "ps", "--no-trunc", "nowhere"]);
        if ps.contains("does not exist on this node") {
            Ok(())
        } else {
            Err(ps)
        }
    });
    assert!(!missing.exists());
}

#[test]
fn a_docker_task_reads_its_config_at_its_target_with_its_owner_and_mode() {
    let Some(image) = crate::harness::image_or_skip() else {
        return;
    };
    let c = Cluster::init(1, 0);
    let m = c.first();
    let name = crate::harness::unique_name("cfg");
    let _g = crate::harness::ContainerGuard(name.clone());
    let value = "worker_processes 2;\n";
    let out = m.cli_stdin(&["config", "create", "nginx_conf", "-"], value);
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    m.cli_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        &name,
        "--config",
        "source=nginx_conf,target=/etc/nginx/nginx.conf,uid=1234,gid=5678,mode=0440",
        image,
        "/prog",
        "secret",
        "/etc/nginx/nginx.conf",
    ]);
    let out = wait_logs(m, &name, "sha256=");
    let want = format!(
        "/etc/nginx/nginx.conf uid=1234 gid=5678 mode=440 sha256={}",
        sha256_hex(value.as_bytes())
    );
    assert!(out.contains(&want), "{out}");
}
