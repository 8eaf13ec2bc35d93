//! Secrets delivered to tasks, end to end with real daemons: a task reads its secret on a
//! tmpfs at its target with the owner and mode asked for; another task on the same node
//! cannot; nodes with no entitled task receive nothing (their agents' ledgers stay empty and
//! every delivery on the audit chain names the entitled node); a node asking for a secret it
//! is not entitled to is refused and audited; rotation swaps the value and the old one leaves
//! the node; Cedar policies refuse a service at create time and move a task when a label
//! change takes its entitlement away; without tmpfs a task fails rather than touching disk;
//! and afterwards no byte of any value is in any file the nodes wrote.

use serde_json::Value;

use crate::harness::{
    Cluster, Node, assert_error, assert_no_plaintext, exec_service, json_lines, mounts_under,
    running_hosts, secrets_left, secrets_tmpfs, timeout, wait_for, wait_until, write_file,
};

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

fn create_secret(m: &Node, name: &str, value: &str, extra: &[&str]) -> String {
    let mut args = vec!["secret", "create"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[name, "-"]);
    let out = m.cli_stdin(&args, value);
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    crate::harness::stdout(&out).trim().to_string()
}

/// `skep agent secrets` of a node: what its agent has received.
fn received(n: &Node) -> Vec<Value> {
    json_lines(&n.cli_ok(&["agent", "secrets", "--format", "json"]))
}

fn held(n: &Node) -> Vec<String> {
    received(n)
        .iter()
        .filter(|r| r["held"] == true)
        .filter_map(|r| r["name"].as_str().map(str::to_string))
        .collect()
}

fn tasks(m: &Node, service: &str) -> Vec<Value> {
    json_lines(&m.cli_ok(&["service", "ps", "--no-trunc", "--format", "json", service]))
}

fn wait_running_on(m: &Node, service: &str, host: &str) {
    wait_for(timeout(), &format!("{service} running on {host}"), || {
        let on = running_hosts(m, service);
        if on == [host.to_string()] {
            Ok(())
        } else {
            Err(format!("running on {on:?}: {:#?}", tasks(m, service)))
        }
    })
}

fn logs(m: &Node, service: &str) -> String {
    m.cli_ok(&["service", "logs", service])
}

fn wait_logs(m: &Node, service: &str, needle: &str) -> String {
    wait_for(
        timeout(),
        &format!("{needle:?} in the logs of {service}"),
        || {
            let l = logs(m, service);
            if l.contains(needle) { Ok(l) } else { Err(l) }
        },
    )
}

fn audit_of<'a>(all: &'a [Value], action: &str) -> Vec<&'a Value> {
    all.iter().filter(|r| r["action"] == action).collect()
}

#[test]
fn exec_tasks_read_their_secrets_on_tmpfs_and_only_entitled_nodes_receive_them() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let c = Cluster::init(1, 2);
    let m = c.first();
    let (w1, w2) = (&c.workers()[0], &c.workers()[1]);
    let v1 = "exec-secret-v1-q8w3e5r7";
    let v2 = "exec-secret-v2-z7x1c4v9";
    let key = "exec-key-material-m2n4b6";
    create_secret(m, "db", v1, &[]);
    create_secret(m, "db_v2", v2, &[]);
    create_secret(m, "tls", key, &[]);

    let on_w1 = format!("node.hostname=={}", w1.name());
    exec_service(
        m,
        "reader",
        &[
            "--constraint",
            &on_w1,
            "--secret",
            "db",
            "--secret",
            "source=tls,target=/run/secrets/app/key,uid=999,gid=998,mode=0400",
        ],
        "sha256sum /run/secrets/db; stat -c 'key %u:%g:%a' /run/secrets/app/key; \
         stat -f -c 'fs %T' /run/secrets; exec sleep 1000",
    );
    wait_running_on(m, "reader", w1.name());
    let out = wait_logs(m, "reader", &sha256_hex(v1.as_bytes()));
    assert!(out.contains("key 999:998:400"), "{out}");
    assert!(out.contains("fs tmpfs"), "{out}");

    // On the node: the node's one tmpfs (on a private bind of its own mount point, so the
    // path is listed twice), the task's directory on it.
    let mut mounts = mounts_under(&w1.data_dir());
    mounts.dedup();
    assert_eq!(mounts, vec![secrets_tmpfs(&w1.data_dir())]);
    assert_eq!(
        secrets_left(&w1.data_dir()).len(),
        1,
        "the task's directory"
    );

    // Another task on the same node sees neither /run/secrets/db nor the agent's task tree.
    exec_service(
        m,
        "snoop",
        &["--constraint", &on_w1],
        &format!(
            "cat /run/secrets/db 2>/dev/null || echo snoop-no-run-secrets; \
             f=$(find {} -path '*/files/db' 2>/dev/null | head -n 1); \
             if [ -n \"$f\" ]; then cat \"$f\"; else echo snoop-no-task-tree; fi; exec sleep 1000",
            w1.data_dir().display()
        ),
    );
    let snooped = wait_logs(m, "snoop", "snoop-no-task-tree");
    assert!(snooped.contains("snoop-no-run-secrets"), "{snooped}");
    assert!(!snooped.contains(v1), "{snooped}");

    // Only w1 received anything; the manager's and w2's agents got nothing.
    let mut got: Vec<String> = received(w1)
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_string))
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec!["db".to_string(), "tls".to_string()],
        "w1 received"
    );
    let digests: Vec<String> = received(w1)
        .iter()
        .filter_map(|r| r["digest"].as_str().map(str::to_string))
        .collect();
    assert!(digests.contains(&sha256_hex(v1.as_bytes())));
    assert!(received(m).is_empty(), "the manager received secrets");
    assert!(received(w2).is_empty(), "w2 received secrets");
    let audit = m.audit();
    let deliveries = audit_of(&audit, "secret.deliver");
    assert_eq!(deliveries.len(), 2, "{deliveries:#?}");
    for d in &deliveries {
        assert_eq!(d["details"]["node"], w1.id(), "{d}");
        assert!(!d["details"]["tasks"].as_str().unwrap_or("").is_empty());
    }
    let mut attached: Vec<&str> = audit_of(&audit, "secret.attach")
        .iter()
        .filter_map(|r| r["target"].as_str())
        .collect();
    attached.sort();
    assert_eq!(attached, vec!["db", "tls"]);

    // In use: not removable.
    assert_error(&m.cli(&["secret", "rm", "db"]), "reader");

    // Rotation: a new secret at the same target; the old value leaves the node.
    m.cli_ok(&[
        "service",
        "update",
        "--detach",
        "--secret-rm",
        "db",
        "--secret-add",
        "source=db_v2,target=/run/secrets/db",
        "reader",
    ]);
    wait_logs(m, "reader", &sha256_hex(v2.as_bytes()));
    wait_until(timeout(), "w1 to drop db and hold db_v2", || {
        let h = held(w1);
        h.contains(&"db_v2".to_string()) && !h.contains(&"db".to_string())
    });
    let audit = m.audit();
    assert_eq!(audit_of(&audit, "secret.detach").len(), 1);
    // Still refused: the previous spec, which `service rollback` would restore, uses it.
    assert_error(&m.cli(&["secret", "rm", "db"]), "reader");

    // Gone with the services: no tmpfs, no value held.
    m.cli_ok(&["service", "rm", "reader", "snoop"]);
    m.cli_ok(&["secret", "rm", "db"]);
    wait_until(timeout(), "w1's secrets unmounted and dropped", || {
        secrets_left(&w1.data_dir()).is_empty() && held(w1).is_empty()
    });
    assert!(received(w2).is_empty() && received(m).is_empty());
    assert_no_plaintext(&[m, w1, w2], &[v1, v2, key]);
}

#[test]
fn a_node_asking_for_a_secret_it_is_not_entitled_to_is_refused_and_audited() {
    use skep::api::v1::SecretRequest;
    use skep::api::v1::dispatcher_client::DispatcherClient;
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let c = Cluster::init(1, 2);
    let m = c.first();
    let (w1, w2) = (&c.workers()[0], &c.workers()[1]);
    let value = "asked-for-secret-h5j8k2";
    let db_id = create_secret(m, "db", value, &[]);
    let other_id = create_secret(m, "other", "other-value-x1y2z3", &[]);
    let on_w1 = format!("node.hostname=={}", w1.name());
    exec_service(
        m,
        "holder",
        &["--constraint", &on_w1, "--secret", "db"],
        "exec sleep 1000",
    );
    wait_running_on(m, "holder", w1.name());
    let task_id = tasks(m, "holder")[0]["ID"].as_str().unwrap().to_string();

    let ask_version = |n: &Node, task: &str, secret: &str, version: u64| {
        let creds = crate::harness::credentials_of(n);
        let tls = skep::net::client_config(&creds.root_der, Some(&creds)).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let ch = skep::net::channel(&m.addr(), tls).unwrap();
            DispatcherClient::new(ch)
                .get_secret(SecretRequest {
                    task_id: task.into(),
                    secret_id: secret.into(),
                    version,
                    config: false,
                })
                .await
                .map(|r| r.into_inner().value)
        })
    };
    let ask = |n: &Node, task: &str, secret: &str| ask_version(n, task, secret, 1);
    // w2 runs no task of holder: refused, whatever it names.
    let e = ask(w2, &task_id, &db_id).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("is not assigned to node"),
        "{}",
        e.message()
    );
    // w1 runs the task, but the task does not use `other`.
    let e = ask(w1, &task_id, &other_id).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("does not use"), "{}", e.message());
    // A task that does not exist reads the same as another node's.
    let e = ask(w1, "no-such-task", &db_id).unwrap_err();
    assert!(
        e.message().contains("is not assigned to node"),
        "{}",
        e.message()
    );
    // The entitled request succeeds, for the version the task is to hold only.
    assert_eq!(ask(w1, &task_id, &db_id).unwrap(), value.as_bytes());
    let e = ask_version(w1, &task_id, &db_id, 2).unwrap_err();
    assert!(
        e.message().contains("is to hold version 1"),
        "{}",
        e.message()
    );

    let audit = m.audit();
    let denied: Vec<&Value> = audit
        .iter()
        .filter(|r| r["action"] == "secret.get" && r["outcome"] == "denied")
        .collect();
    assert_eq!(denied.len(), 4, "{denied:#?}");
    assert_eq!(denied[3]["details"]["version"], "2");
    assert_eq!(denied[0]["actor"]["id"], w2.id());
    assert_eq!(denied[1]["actor"]["id"], w1.id());
    assert!(denied.iter().all(|r| r["details"]["reason"].is_string()));
    let by_request: Vec<&Value> = audit_of(&audit, "secret.deliver")
        .into_iter()
        .filter(|r| r["details"]["via"] == "request")
        .collect();
    assert_eq!(by_request.len(), 1);
    assert_eq!(by_request[0]["details"]["node"], w1.id());
    assert!(received(w2).is_empty());

    // Once the task is not to run any more (scaled away: it stays as history, still on w1
    // and still naming the secret), its own node is refused too.
    m.cli_ok(&["service", "scale", "--detach", "holder=0"]);
    wait_for(timeout(), "the holder task to be told to stop", || {
        let all = tasks(m, "holder");
        let t = all.iter().find(|t| t["ID"] == task_id.as_str());
        match t {
            Some(t) if t["DesiredState"] != "Running" => Ok(()),
            _ => Err(format!("{all:?}")),
        }
    });
    let e = ask(w1, &task_id, &db_id).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("is not to run any more"),
        "{}",
        e.message()
    );
    let denied = m
        .audit()
        .into_iter()
        .filter(|r| r["action"] == "secret.get" && r["outcome"] == "denied")
        .count();
    assert_eq!(denied, 5, "the refusal for the stopped task is not audited");
}

#[test]
fn policies_refuse_at_create_and_move_a_task_whose_node_loses_its_entitlement() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let c = Cluster::init(1, 2);
    let m = c.first();
    let (w1, w2) = (&c.workers()[0], &c.workers()[1]);
    let dir = tempfile::tempdir().unwrap();
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/policies/examples/prod-secrets-on-secure-nodes.cedar"
    );

    // validate works without a daemon; bad policies are refused with Cedar's words.
    let ok = crate::harness::skep(&["policy", "validate", example]);
    assert!(ok.status.success(), "{}", crate::harness::describe(&ok));
    assert!(crate::harness::stdout(&ok).contains("valid"));
    let bad = dir.path().join("bad.cedar");
    write_file(
        &bad,
        "permit(principal, action, resource) when { principal.nosuch == 1 };\n",
    );
    let garbage = dir.path().join("garbage.cedar");
    write_file(&garbage, "permit(principal action resource);\n");
    for f in [&bad, &garbage] {
        let out = crate::harness::skep(&["policy", "validate", f.to_str().unwrap()]);
        assert!(!out.status.success());
    }

    // The default is in force; an invalid set is refused and changes nothing.
    let default_digest = m.cli_ok(&["policy", "get", "--digest"]).trim().to_string();
    assert!(
        m.cli_ok(&["policy", "get"])
            .contains("services-use-their-secrets")
    );
    assert_error(
        &m.cli(&["policy", "set", garbage.to_str().unwrap()]),
        "policy refused",
    );
    assert_eq!(
        m.cli_ok(&["policy", "get", "--digest"]).trim(),
        default_digest
    );

    m.cli_ok(&["policy", "set", example]);
    let new_digest = m.cli_ok(&["policy", "get", "--digest"]).trim().to_string();
    assert_ne!(new_digest, default_digest);
    let audit = m.audit();
    let set = audit_of(&audit, "policy.set");
    assert_eq!(set.len(), 2, "{set:#?}"); // the refused attempt, then the change
    assert_eq!(set[0]["outcome"], "error");
    assert_eq!(set[1]["details"]["old_digest"], default_digest.as_str());
    assert_eq!(set[1]["details"]["new_digest"], new_digest.as_str());

    // No node is secure: a service using a prod secret is refused with the policy's reason.
    let value = "prod-only-secret-t6y9u1";
    create_secret(m, "prod_key", value, &["--label", "tier=prod"]);
    let create = [
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        "--name",
        "vault",
        "--secret",
        "prod_key",
        "--",
        "/bin/sh",
        "-c",
        "cat /run/secrets/prod_key >/dev/null && echo read-ok; exec sleep 1000",
    ];
    assert_error(&m.cli(&create), "secure=true");
    let audit = m.audit();
    assert!(
        audit_of(&audit, "secret.attach")
            .iter()
            .any(|r| r["outcome"] == "denied" && r["target"] == "prod_key"),
        "the refusal is audited"
    );
    // A secret that is not prod is fine anywhere.
    create_secret(m, "plain", "plain-value-a1s2d3", &[]);

    // w1 becomes secure: the service is accepted and runs there, and only there.
    m.cli_ok(&["node", "update", "--label-add", "secure=true", w1.name()]);
    m.cli_ok(&create);
    wait_running_on(m, "vault", w1.name());
    wait_logs(m, "vault", "read-ok");
    assert_eq!(held(w1), vec!["prod_key".to_string()]);

    // w1 loses the label: the task leaves it, and so do the value and the tmpfs. With no
    // entitled node, the task waits and says why.
    m.cli_ok(&["node", "update", "--label-rm", "secure", w1.name()]);
    wait_until(timeout(), "vault off w1, its value and tmpfs gone", || {
        running_hosts(m, "vault").is_empty()
            && held(w1).is_empty()
            && secrets_left(&w1.data_dir()).is_empty()
    });
    wait_for(timeout(), "the pending task to name the policy", || {
        let t = tasks(m, "vault");
        t.iter()
            .find(|t| t["DesiredState"] == "Running")
            .and_then(|t| t["CurrentState"].as_str().map(str::to_string))
            .filter(|_| {
                t.iter().any(|t| {
                    t["Error"]
                        .as_str()
                        .or(t["Message"].as_str())
                        .is_some_and(|e| e.contains("policy denies"))
                })
            })
            .ok_or_else(|| format!("{t:#?}"))
    });

    // w2 becomes secure: the task runs there.
    m.cli_ok(&["node", "update", "--label-add", "secure=true", w2.name()]);
    wait_running_on(m, "vault", w2.name());
    assert_eq!(held(w2), vec!["prod_key".to_string()]);
    m.cli_ok(&["service", "rm", "vault"]);
    wait_until(timeout(), "w2's secrets unmounted and dropped", || {
        secrets_left(&w2.data_dir()).is_empty() && held(w2).is_empty()
    });
    assert_no_plaintext(&[m, w1, w2], &[value]);
}

#[test]
fn docker_tasks_see_their_secret_read_only_on_tmpfs_and_others_do_not() {
    let Some(image) = crate::harness::image_or_skip() else {
        return;
    };
    let c = Cluster::init(1, 0);
    let m = c.first();
    let name = crate::harness::unique_name("sdk");
    let snoop = crate::harness::unique_name("sdk-snoop");
    let _g1 = crate::harness::ContainerGuard(name.clone());
    let _g2 = crate::harness::ContainerGuard(snoop.clone());
    let value = "docker-secret-value-p0o9i8";
    create_secret(m, "dk", value, &[]);
    m.cli_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        &name,
        "--secret",
        "source=dk,target=/run/secrets/dk,uid=1234,gid=5678,mode=0440",
        image,
        "/prog",
        "secret",
        "/run/secrets/dk",
    ]);
    let out = wait_logs(m, &name, "sha256=");
    assert!(out.contains("fs=tmpfs"), "{out}");
    let want = format!(
        "/run/secrets/dk uid=1234 gid=5678 mode=440 sha256={}",
        sha256_hex(value.as_bytes())
    );
    assert!(out.contains(&want), "{out}");
    m.cli_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        &snoop,
        image,
        "/prog",
        "secret",
        "/run/secrets/dk",
    ]);
    let out = wait_logs(m, &snoop, "/run/secrets/dk unreadable");
    assert!(out.contains("fs=none"), "{out}");

    // Read-only: the container cannot write into its secrets.
    let container = wait_for(timeout(), "the container", || {
        let out = crate::harness::run(
            std::process::Command::new("docker").args([
                "ps",
                "-q",
                "--filter",
                &format!("label=skep.service.name={name}"),
            ]),
            None,
        );
        let id = crate::harness::stdout(&out).trim().to_string();
        if id.is_empty() {
            Err("none yet".to_string())
        } else {
            Ok(id)
        }
    });
    let inspect = crate::harness::stdout(&crate::harness::run(
        std::process::Command::new("docker").args([
            "inspect",
            "--format",
            "{{range .Mounts}}{{.Destination}} {{.RW}};{{end}}",
            &container,
        ]),
        None,
    ));
    assert!(inspect.contains("/run/secrets false"), "{inspect}");

    m.cli_ok(&["service", "rm", &name, &snoop]);
    wait_until(timeout(), "the task's secrets removed", || {
        secrets_left(&m.data_dir()).is_empty()
    });
    assert_no_plaintext(&[m], &[value]);
}

#[test]
fn without_tmpfs_a_task_with_secrets_fails_and_nothing_reaches_the_disk() {
    let Some(image) = crate::harness::image_or_skip() else {
        return;
    };
    if std::process::Command::new("setpriv")
        .arg("--version")
        .output()
        .is_err()
    {
        crate::harness::cannot_run("setpriv missing");
        return;
    }
    let c = Cluster::init(1, 0);
    let m = c.first();
    // A worker whose daemon may not mount anything (no CAP_SYS_ADMIN).
    let mut w = Node::new("nocap", &[]).wrapped(&[
        "setpriv",
        "--bounding-set",
        "-sys_admin",
        "--inh-caps",
        "-sys_admin",
        "--",
    ]);
    w.spawn();
    w.wait_up();
    let token = m.cli_ok(&["join-token", "-q", "worker"]).trim().to_string();
    w.cli_ok(&["swarm", "join", "--token", &token, &m.addr()]);
    let name = crate::harness::unique_name("nocap");
    let _g = crate::harness::ContainerGuard(name.clone());
    let value = "never-on-disk-value-l4k3j2";
    create_secret(m, "nd", value, &[]);
    m.cli_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        &name,
        "--constraint",
        "node.hostname==nocap",
        "--secret",
        "nd",
        image,
        "/prog",
        "secret",
        "/run/secrets/nd",
    ]);
    let err = wait_for(timeout(), "the task failing on the tmpfs", || {
        tasks(m, &name)
            .iter()
            .filter_map(|t| t["Error"].as_str().map(str::to_string))
            .find(|e| e.contains("cannot mount the node's tmpfs"))
            .ok_or_else(|| format!("{:#?}", tasks(m, &name)))
    });
    assert!(err.contains("never written to disk"), "{err}");
    assert!(mounts_under(&w.data_dir()).is_empty());
    m.cli_ok(&["service", "rm", &name]);
    assert_no_plaintext(&[m, &w], &[value]);
}
