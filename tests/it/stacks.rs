//! Stacks from Compose files, as the "Swarms" tutorial drives them: `stack deploy` makes the
//! network, the secret and the services; a re-deploy updates in place; `--prune` removes a
//! service dropped from the file; `stack rm` removes the stack's objects and nothing else.
//! Bad files are refused before anything changes, or warned about.
//!
//! The exec runtime needs root (namespaces), as in `runtime.rs`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::harness::{Cluster, Node, assert_error, json_lines, stderr, timeout, wait_for};

/// The tutorial's file, adapted: the exec runtime instead of an image, and a second service
/// (`extra`) to prune later.
fn seed(replicas: u32, with_extra: bool) -> String {
    let extra = if with_extra {
        r#"
  extra:
    x-skep-runtime: exec
    command: /bin/sleep 1000
    deploy:
      replicas: 1
    secrets: [api_key]
"#
    } else {
        ""
    };
    format!(
        r#"version: "3"
services:
  web:
    image: username/repo:tag
    x-skep-runtime: exec
    command: ["/bin/sleep", "1000"]
    deploy:
      replicas: {replicas}
      resources:
        limits:
          cpus: "0.1"
          memory: 50M
      restart_policy:
        condition: on-failure
    ports:
      - "4000:80"
    secrets:
      - db_password
    networks:
      - webnet
{extra}
networks:
  webnet:
secrets:
  db_password:
    external: true
  api_key:
    file: ./api_key.txt
"#
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn service_id(m: &Node, name: &str) -> String {
    let v: Value = serde_json::from_str(&m.cli_ok(&["service", "inspect", name])).unwrap();
    v[0]["id"].as_str().unwrap().to_string()
}

fn names(listing: &[Value], key: &str) -> Vec<String> {
    let mut n: Vec<String> = listing
        .iter()
        .filter_map(|v| v[key].as_str().map(String::from))
        .collect();
    n.sort();
    n
}

/// Tasks of the stack that should run and do, by host name.
fn running_hosts(m: &Node, stack: &str) -> Vec<String> {
    let mut hosts: Vec<String> = json_lines(&m.cli_ok(&["stack", "ps", "--format", "json", stack]))
        .iter()
        .filter(|t| {
            t["DesiredState"] == "Running"
                && t["CurrentState"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("Running"))
                && t["Name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(&format!("{stack}_web.")))
        })
        .filter_map(|t| t["Node"].as_str().map(String::from))
        .collect();
    hosts.sort();
    hosts
}

#[test]
fn the_tutorial_stack_deploys_updates_prunes_and_is_removed() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let c = Cluster::init(1, 2);
    let m = c.first();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "api_key.txt", "k3y");
    let out = m.cli_stdin(&["secret", "create", "db_password", "-"], "hunter2");
    assert!(out.status.success(), "{}", stderr(&out));

    // Another stack first: it must come through everything below untouched.
    let other = write(
        dir.path(),
        "other.yml",
        "services:\n  app:\n    x-skep-runtime: exec\n    command: /bin/sleep 1000\n    secrets: [k]\nsecrets:\n  k:\n    file: ./api_key.txt\n",
    );
    m.cli_ok(&["stack", "deploy", "-c", path(&other), "other"]);

    // Deploy: the network, the file secret, the services; then it waits for convergence.
    let file = write(dir.path(), "docker-compose.yml", &seed(5, true));
    let out = m.cli_ok(&["stack", "deploy", "-c", path(&file), "getstartedlab"]);
    for line in [
        "Creating network getstartedlab_webnet",
        "Creating secret getstartedlab_api_key",
        "Creating service getstartedlab_web",
        "Creating service getstartedlab_extra",
        "verify: Service converged",
    ] {
        assert!(out.contains(line), "missing {line:?}:\n{out}");
    }
    let hosts = running_hosts(m, "getstartedlab");
    assert_eq!(hosts.len(), 5, "{hosts:?}");
    let mut distinct = hosts.clone();
    distinct.dedup();
    assert_eq!(distinct, ["m1", "w1", "w2"], "tasks not spread: {hosts:?}");

    // ls / services / ps.
    let stacks = json_lines(&m.cli_ok(&["stack", "ls", "--format", "json"]));
    assert_eq!(names(&stacks, "Name"), ["getstartedlab", "other"]);
    let gs = stacks
        .iter()
        .find(|s| s["Name"] == "getstartedlab")
        .unwrap();
    assert_eq!(gs["Services"], "2");
    let table = m.cli_ok(&["stack", "ls"]);
    assert!(
        table.starts_with("NAME") && table.contains("SERVICES"),
        "{table}"
    );
    let services =
        json_lines(&m.cli_ok(&["stack", "services", "--format", "json", "getstartedlab"]));
    assert_eq!(
        names(&services, "Name"),
        ["getstartedlab_extra", "getstartedlab_web"]
    );
    let web = services
        .iter()
        .find(|s| s["Name"] == "getstartedlab_web")
        .unwrap();
    assert_eq!(web["Replicas"], "5/5");
    let ps = m.cli_ok(&["stack", "ps", "getstartedlab"]);
    assert!(ps.contains("getstartedlab_web.5"), "{ps}");

    // The network is an object with the stack's label and its services.
    let nets = json_lines(&m.cli_ok(&["network", "ls", "--format", "json"]));
    assert!(
        names(&nets, "Name").contains(&"getstartedlab_webnet".to_string()),
        "{nets:?}"
    );
    let inspect: Value =
        serde_json::from_str(&m.cli_ok(&["network", "inspect", "getstartedlab_webnet"])).unwrap();
    assert_eq!(
        inspect[0]["Labels"]["com.docker.stack.namespace"],
        "getstartedlab"
    );
    assert_eq!(inspect[0]["Services"][0], "getstartedlab_web");

    // Edit and redeploy without --prune: web is updated in place, extra stays.
    let id = service_id(m, "getstartedlab_web");
    write(dir.path(), "docker-compose.yml", &seed(3, false));
    let out = m.cli_ok(&["stack", "deploy", "-c", path(&file), "getstartedlab"]);
    assert!(out.contains("Updating service getstartedlab_web"), "{out}");
    assert_eq!(service_id(m, "getstartedlab_web"), id);
    wait_for(timeout(), "web scaled to 3", || {
        let h = running_hosts(m, "getstartedlab");
        if h.len() == 3 {
            Ok(())
        } else {
            Err(format!("{h:?}"))
        }
    });
    let v: Value =
        serde_json::from_str(&m.cli_ok(&["service", "inspect", "getstartedlab_web"])).unwrap();
    assert_eq!(v[0]["spec"]["mode"]["Replicated"]["replicas"], 3);
    assert!(
        m.cli(&["service", "inspect", "getstartedlab_extra"])
            .status
            .success()
    );

    // With --prune, the service dropped from the file goes.
    let out = m.cli_ok(&[
        "stack",
        "deploy",
        "--prune",
        "-c",
        path(&file),
        "getstartedlab",
    ]);
    assert!(
        out.contains("Removing service getstartedlab_extra"),
        "{out}"
    );
    assert!(
        !m.cli(&["service", "inspect", "getstartedlab_extra"])
            .status
            .success()
    );

    // rm: services, the stack's secret and network; never the external secret or the other
    // stack's objects.
    let out = m.cli_ok(&["stack", "rm", "getstartedlab"]);
    for line in [
        "Removing service getstartedlab_web",
        "Removing secret getstartedlab_api_key",
        "Removing network getstartedlab_webnet",
    ] {
        assert!(out.contains(line), "missing {line:?}:\n{out}");
    }
    let services = json_lines(&m.cli_ok(&["service", "ls", "--format", "json"]));
    assert_eq!(names(&services, "Name"), ["other_app"]);
    let secrets = names(
        &json_lines(&m.cli_ok(&["secret", "ls", "--format", "json"])),
        "Name",
    );
    assert!(secrets.contains(&"db_password".to_string()), "{secrets:?}");
    assert!(secrets.contains(&"other_k".to_string()), "{secrets:?}");
    assert!(
        !secrets.iter().any(|s| s.starts_with("getstartedlab")),
        "{secrets:?}"
    );
    let nets = json_lines(&m.cli_ok(&["network", "ls", "--format", "json"]));
    assert_eq!(names(&nets, "Name"), ["other_default"]);
    let out = m.cli(&["stack", "ps", "getstartedlab"]);
    assert_error(&out, "Nothing found in stack: getstartedlab");

    // One audit record per command, besides the records of each change.
    let actions: Vec<String> = m
        .audit()
        .iter()
        .filter(|r| r["target"] == "getstartedlab")
        .filter_map(|r| r["action"].as_str().map(String::from))
        .collect();
    assert_eq!(
        actions,
        ["stack.deploy", "stack.deploy", "stack.deploy", "stack.rm"],
        "{actions:?}"
    );
}

#[test]
fn bad_compose_files_are_refused_clearly_or_warned() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    let dir = tempfile::tempdir().unwrap();
    let deploy = |name: &str, text: &str| {
        let p = write(dir.path(), name, text);
        m.cli(&["stack", "deploy", "-d", "-c", path(&p), "bad"])
    };

    // A billion laughs: refused by the YAML budget, quickly, not expanded.
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let mut prev = "a".to_string();
    for n in ["b", "c", "d", "e", "f", "g", "h", "i"] {
        let refs = vec![format!("*{prev}"); 9].join(",");
        bomb.push_str(&format!("{n}: &{n} [{refs}]\n"));
        prev = n.to_string();
    }
    bomb.push_str("services:\n  web:\n    image: nginx\n    command: *i\n");
    let started = std::time::Instant::now();
    assert_error(&deploy("bomb.yml", &bomb), "not valid YAML");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));

    // An unknown version, and a syntax error with its line.
    assert_error(
        &deploy(
            "v1.yml",
            "version: \"1\"\nservices:\n  web:\n    image: nginx\n",
        ),
        "unsupported Compose file version \"1\"",
    );
    assert_error(
        &deploy(
            "syntax.yml",
            "services:\n  web:\n    image: nginx\n    ports: [\"80:80\"\n",
        ),
        "line ",
    );

    // An external secret that does not exist: refused before anything is created.
    assert_error(
        &deploy(
            "secret.yml",
            "services:\n  web:\n    image: nginx\n    secrets: [nope]\nsecrets:\n  nope:\n    external: true\n",
        ),
        "secret not found: nope",
    );
    assert_error(
        &deploy(
            "undeclared.yml",
            "services:\n  web:\n    image: nginx\n    secrets: [nope]\n",
        ),
        "not declared",
    );
    let services = json_lines(&m.cli_ok(&["service", "ls", "--format", "json"]));
    assert!(services.is_empty(), "{services:?}");
    let nets = json_lines(&m.cli_ok(&["network", "ls", "--format", "json"]));
    assert!(nets.is_empty(), "{nets:?}");

    // An unknown key under deploy: a warning, and the deploy goes on.
    let out = deploy(
        "warn.yml",
        "services:\n  web:\n    image: nginx\n    deploy:\n      replicas: 1\n      frobnicate: yes\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(
            "Warning: service web: key `deploy.frobnicate` is not supported by skep and is ignored"
        ),
        "{err}"
    );
    let services = json_lines(&m.cli_ok(&["stack", "services", "--format", "json", "bad"]));
    assert_eq!(names(&services, "Name"), ["bad_web"]);
    m.cli_ok(&["stack", "rm", "bad"]);
}

/// A stack is checked whole before anything is sent: one service breaking a rule the manager
/// would also refuse (a label key with a space) stops the deploy before its network or its
/// valid sibling is created.
#[test]
fn nothing_is_created_until_the_whole_file_checks_out() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "half.yml",
        "services:\n  aaa:\n    image: nginx\n    networks: [front]\n    secrets: [pw]\n  bad:\n    image: nginx\n    networks: [front]\n    deploy:\n      labels:\n        \"a key\": x\n  zzz:\n    image: nginx\n    networks: [front]\nnetworks:\n  front: {}\nsecrets:\n  pw:\n    environment: HALF_STACK_PW\n",
    );
    let out = crate::harness::run(
        std::process::Command::new(crate::harness::skep_bin())
            .env("HALF_STACK_PW", "half-stack-value")
            .args(["--host", &m.host()])
            .args(["stack", "deploy", "-d", "-c", path(&file), "half"]),
        None,
    );
    assert_error(&out, "labels");
    assert!(stderr(&out).contains("bad"), "{}", stderr(&out));
    let services = json_lines(&m.cli_ok(&["service", "ls", "--format", "json"]));
    assert!(services.is_empty(), "{services:?}");
    let nets = json_lines(&m.cli_ok(&["network", "ls", "--format", "json"]));
    assert!(nets.is_empty(), "{nets:?}");
    let secrets = json_lines(&m.cli_ok(&["secret", "ls", "--format", "json"]));
    assert!(secrets.is_empty(), "{secrets:?}");
}

/// `secret inspect` or `config inspect` of one object, as JSON.
fn inspect_object(m: &Node, kind: &str, name: &str) -> Value {
    let v: Value = serde_json::from_str(&m.cli_ok(&[kind, "inspect", name])).unwrap();
    v[0].clone()
}

#[test]
fn a_changed_file_secret_or_config_becomes_a_new_version_on_redeploy() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let c = Cluster::init(1, 0);
    let m = c.first();
    let dir = tempfile::tempdir().unwrap();
    // An exec task sees the node's file system, where a config can only cover a file that
    // exists (skep creates nothing on the host): the target is an empty file made here.
    let target = write(dir.path(), "app.conf.target", "");
    let compose = write(
        dir.path(),
        "app.yml",
        &format!(
            r#"services:
  web:
    x-skep-runtime: exec
    command: ["/bin/sleep", "1000"]
    secrets:
      - source: db
        x-skep-on-change: rotate
    configs:
      - source: conf
        target: {}
configs:
  conf:
    file: ./app.conf
secrets:
  db:
    file: ./db.txt
"#,
            path(&target)
        ),
    );
    write(dir.path(), "db.txt", "stack-db-v1-p0o9i8");
    write(dir.path(), "app.conf", "level = 1\n");
    let deploy = || m.cli_ok(&["stack", "deploy", "--detach", "-c", path(&compose), "app"]);
    let said = deploy();
    assert!(
        said.contains("Creating secret app_db") && said.contains("Creating config app_conf"),
        "{said}"
    );
    assert_eq!(inspect_object(m, "secret", "app_db")["Version"], 1);
    assert_eq!(inspect_object(m, "config", "app_conf")["Version"], 1);
    let svc = m.cli_ok(&["service", "inspect", "--pretty", "app_web"]);
    assert!(
        svc.contains(&format!("app_conf (current version) -> {}", path(&target))),
        "{svc}"
    );
    wait_for(timeout(), "app_web running", || {
        let on = crate::harness::running_hosts(m, "app_web");
        if on.len() == 1 {
            Ok(())
        } else {
            Err(format!("{on:?}"))
        }
    });

    // Unchanged files: nothing new.
    let said = deploy();
    assert!(
        !said.contains("secret") && !said.contains("config"),
        "{said}"
    );
    assert_eq!(inspect_object(m, "secret", "app_db")["Version"], 1);

    // A changed secret file: version 2 of the same secret, and the task is moved to it.
    write(dir.path(), "db.txt", "stack-db-v2-u7y6t5");
    let said = deploy();
    assert!(said.contains("Updating secret app_db (version 2"), "{said}");
    assert!(!said.contains("config"), "{said}");
    let names = m.cli_ok(&["secret", "ls", "-q"]);
    assert_eq!(names.lines().count(), 1, "no renamed copy: {names}");
    let info = wait_for(timeout(), "app_web's task on version 2", || {
        let info = inspect_object(m, "secret", "app_db");
        let two = info["Versions"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["Version"] == 2).cloned())
            .unwrap_or_default();
        if info["Version"] == 2 && two["Tasks"] == 1 {
            Ok(info)
        } else {
            Err(info.to_string())
        }
    });
    let two = &info["Versions"][1];
    assert_eq!(two["Services"][0], "app_web", "{info}");

    // A changed config file: version 2 of the config.
    write(dir.path(), "app.conf", "level = 2\n");
    let said = deploy();
    assert!(
        said.contains("Updating config app_conf (version 2"),
        "{said}"
    );
    let conf = inspect_object(m, "config", "app_conf");
    assert_eq!(conf["Version"], 2, "{conf}");
    assert_eq!(conf["Spec"]["Data"], "bGV2ZWwgPSAyCg==", "{conf}");

    // The stack's own deploy record says what it updated; stack rm removes both objects.
    let audit = m.cli_ok(&["audit", "ls", "--json", "--target", "app_db"]);
    assert!(audit.contains("secret.update"), "{audit}");
    m.cli_ok(&["stack", "rm", "app"]);
    wait_for(timeout(), "the stack's secret and config removed", || {
        let left = format!(
            "{}{}",
            m.cli_ok(&["secret", "ls", "-q"]),
            m.cli_ok(&["config", "ls", "-q"])
        );
        if left.is_empty() {
            Ok(())
        } else {
            // The service's tasks may still be stopping: rm again.
            let _ = m.cli(&["stack", "rm", "app"]);
            Err(left)
        }
    });
}

#[test]
fn a_changed_file_for_an_object_another_stack_owns_is_refused() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    let dir = tempfile::tempdir().unwrap();
    let out = m.cli_stdin(&["secret", "create", "shared_db", "-"], "by-hand-q2w3e4");
    assert!(out.status.success(), "{}", stderr(&out));
    let compose = write(
        dir.path(),
        "app.yml",
        r#"services:
  web:
    x-skep-runtime: exec
    command: ["/bin/sleep", "1000"]
    secrets: [db]
secrets:
  db:
    name: shared_db
    file: ./db.txt
"#,
    );
    write(dir.path(), "db.txt", "from-file-r5t6y7");
    let out = m.cli(&["stack", "deploy", "--detach", "-c", path(&compose), "app"]);
    assert_error(&out, "does not belong to stack app");
    assert_eq!(m.cli_ok(&["service", "ls", "-q"]), "");
    assert_eq!(inspect_object(m, "secret", "shared_db")["Version"], 1);
}
