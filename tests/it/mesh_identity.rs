//! Services authenticating each other through the routing mesh (`identity=required`), with
//! real daemons: a `web` exec task calls `db`'s published port with `openssl s_client` and its
//! own SVID from /run/spiffe, gets db's answer, and sees a server certificate naming db's
//! SPIFFE ID; a caller without a client certificate is refused; after a Cedar forbid of
//! web → db, web is refused; every refusal is on the audit chain (`mesh.connect`, denied); and
//! a caller on one node reaches db's task on another through the nodes' tunnel, the task's
//! node answering for it.

use std::process::Command;

use serde_json::Value;

use crate::harness::{Cluster, Node, exec_service, serving_program, timeout, wait_for};

/// db's published port (each test cluster has its own addresses).
const PORT: u16 = 8443;

/// The node's address without its port.
fn ip_of(n: &Node) -> String {
    let addr = n.addr();
    addr.rsplit_once(':')
        .map_or(addr.clone(), |(ip, _)| ip.to_string())
}

/// The cluster ID, from the node's plaintext file (the default trust domain).
fn cluster_id(n: &Node) -> String {
    let file: Value =
        serde_json::from_slice(&std::fs::read(n.data_dir().join("node.json")).unwrap()).unwrap();
    file["cluster_id"].as_str().unwrap().to_string()
}

/// A `db` service whose task answers each connection with `node=N task=T` on a port published
/// with identity=required.
fn create_db(m: &Node, prog: &str, opts: &[&str]) {
    let publish = format!("published={PORT},target=80,identity=required");
    let mut args = vec![
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        "--name",
        "db",
        "--publish",
        &publish,
    ];
    args.extend_from_slice(opts);
    args.extend_from_slice(&["--", prog, "serve"]);
    m.cli_ok(&args);
}

/// A `web` service whose task calls `target` every second with its SVID, printing one line
/// per attempt: `attempt N ok node=.. task=.. san=<server's SPIFFE ID>` or `attempt N refused`.
fn create_web(m: &Node, target: &str, opts: &[&str]) {
    let script = format!(
        "i=0; while :; do i=$((i+1)); \
         out=$(timeout 10 openssl s_client -connect {target} -cert /run/spiffe/svid.pem \
           -key /run/spiffe/svid.key -CAfile /run/spiffe/bundle.pem -verify_return_error \
           -ign_eof </dev/null 2>&1); \
         ans=$(printf '%s\\n' \"$out\" | grep -o 'node=[^ ]* task=[^ ]*' | head -n 1); \
         san=$(printf '%s\\n' \"$out\" | openssl x509 -noout -ext subjectAltName 2>/dev/null \
           | grep -o 'spiffe://[^ ,]*' | head -n 1); \
         if [ -n \"$ans\" ]; then echo \"attempt $i ok $ans san=$san\"; \
         else echo \"attempt $i refused\"; fi; sleep 1; done"
    );
    exec_service(m, "web", opts, &script);
}

/// web's attempt lines so far.
fn attempts(m: &Node) -> Vec<String> {
    m.cli_ok(&["service", "logs", "--raw", "web"])
        .lines()
        .filter_map(|l| l.find("attempt ").map(|i| l[i..].to_string()))
        .collect()
}

/// Waits for web's first answered attempt; returns it.
fn answered(m: &Node) -> String {
    wait_for(timeout(), "web's call answered through the mesh", || {
        let all = attempts(m);
        all.iter()
            .find(|l| l.contains(" ok node="))
            .cloned()
            .ok_or_else(|| format!("{all:?}"))
    })
}

/// The `mesh.connect` refusals on the audit chain.
fn refusals(m: &Node) -> Vec<Value> {
    m.audit()
        .into_iter()
        .filter(|r| r["action"] == "mesh.connect" && r["outcome"] == "denied")
        .collect()
}

/// An openssl client without a certificate, from the test: what it read, or its errors.
fn call_without_certificate(target: &str) -> String {
    let out = Command::new("timeout")
        .args(["10", "openssl", "s_client", "-connect", target, "-ign_eof"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn web_calls_db_with_its_svid_and_the_policy_and_a_missing_certificate_shut_callers_out() {
    let Some(prog) = serving_program() else {
        return;
    };
    let c = Cluster::init(1, 0);
    let m = c.first();
    let td = cluster_id(m);
    let target = format!("{}:{PORT}", ip_of(m));
    create_db(m, &prog, &[]);
    let inspect = m.cli_ok(&["service", "inspect", "--pretty", "db"]);
    assert!(inspect.contains("Identity = required"), "{inspect}");
    create_web(m, &target, &[]);

    // web gets db's answer, and the certificate it verified names db.
    let ok = answered(m);
    assert!(
        ok.ends_with(&format!("san=spiffe://{td}/ns/default/svc/db")),
        "{ok}"
    );

    // Without a client certificate: no answer, and the refusal is audited.
    let seen = call_without_certificate(&target);
    assert!(!seen.contains("node="), "{seen}");
    let no_cert = wait_for(
        timeout(),
        "the refusal of a caller without a certificate on the audit chain",
        || {
            let all = refusals(m);
            all.iter()
                .find(|r| r["details"]["caller"] == "no client certificate")
                .cloned()
                .ok_or_else(|| format!("{all:?}"))
        },
    );
    assert_eq!(no_cert["details"]["service"], "db", "{no_cert}");
    assert_eq!(no_cert["actor"]["id"], m.id(), "{no_cert}");

    // A forbid of web → db (the default's permits kept): web is refused, and audited by name.
    let policy = m.data_dir().join("no-web-to-db.cedar");
    let text = format!(
        "{}\n@id(\"no-web-to-db\")\n@reason(\"web must not call db\")\nforbid (principal == \
         Skep::Service::\"web\", action == Skep::Action::\"Connect\", resource == \
         Skep::Service::\"db\");\n",
        m.cli_ok(&["policy", "get"]).trim_end()
    );
    std::fs::write(&policy, text).unwrap();
    m.cli_ok(&["policy", "set", policy.to_str().unwrap()]);
    let before = attempts(m).len();
    wait_for(timeout(), "web refused after the forbid", || {
        let all = attempts(m);
        match all.last() {
            Some(l) if all.len() > before && l.ends_with(" refused") => Ok(()),
            _ => Err(format!("{:?}", &all[before.min(all.len())..])),
        }
    });
    let web_id = format!("spiffe://{td}/ns/default/svc/web");
    let denied = wait_for(timeout(), "web's refusal on the audit chain", || {
        let all = refusals(m);
        all.iter()
            .find(|r| r["details"]["caller"] == web_id.as_str())
            .cloned()
            .ok_or_else(|| format!("{all:?}"))
    });
    let reason = denied["details"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("policy does not let"), "{denied}");
    assert_eq!(denied["target"].as_str().map(str::is_empty), Some(false));
}

#[test]
fn a_caller_on_another_node_reaches_db_through_the_tunnel_and_db_s_node_answers_for_it() {
    let Some(prog) = serving_program() else {
        return;
    };
    let c = Cluster::init(1, 1);
    let m = c.first();
    let w = &c.workers()[0];
    let td = cluster_id(m);
    create_db(m, &prog, &["--constraint", "node.role==worker"]);
    // web runs on the manager and calls the manager's address: db's task is on the worker,
    // so the manager tunnels the caller's TLS to it and the worker terminates it.
    create_web(
        m,
        &format!("{}:{PORT}", ip_of(m)),
        &["--constraint", "node.role==manager"],
    );
    let ok = answered(m);
    assert!(ok.contains(&format!("node={}", w.id())), "{ok}");
    assert!(
        ok.ends_with(&format!("san=spiffe://{td}/ns/default/svc/db")),
        "{ok}"
    );

    // A caller without a certificate through the same tunnel: refused by the worker.
    let seen = call_without_certificate(&format!("{}:{PORT}", ip_of(m)));
    assert!(!seen.contains("node="), "{seen}");
    let no_cert = wait_for(timeout(), "the worker's refusal on the audit chain", || {
        let all = refusals(m);
        all.iter()
            .find(|r| r["details"]["caller"] == "no client certificate")
            .cloned()
            .ok_or_else(|| format!("{all:?}"))
    });
    assert_eq!(no_cert["actor"]["id"], w.id(), "{no_cert}");
}

/// A kept copy of a task's SVID and key (what a thief of the task, or of its node, has), taken
/// from the node's tmpfs while the task runs: (svid.pem, svid.key) in a directory of the test.
fn keep_svid(
    n: &Node,
    task: &str,
    into: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = wait_for(timeout(), "the task's identity directory", || {
        crate::harness::files_under(&n.data_dir())
            .into_iter()
            .find(|p| p.ends_with("spiffe/svid.key") && p.to_string_lossy().contains(task))
            .and_then(|p| p.parent().map(|d| d.to_path_buf()))
            .ok_or_else(|| "not yet".to_string())
    });
    let (cert, key) = (
        into.join(format!("{task}.pem")),
        into.join(format!("{task}.key")),
    );
    std::fs::copy(dir.join("svid.pem"), &cert).unwrap();
    std::fs::copy(dir.join("svid.key"), &key).unwrap();
    (cert, key)
}

/// An openssl client presenting `cert`/`key` to `target`: whether db answered.
fn answered_with(target: &str, cert: &std::path::Path, key: &std::path::Path) -> bool {
    let out = Command::new("timeout")
        .args([
            "10", "openssl", "s_client", "-connect", target, "-ign_eof", "-cert",
        ])
        .arg(cert)
        .arg("-key")
        .arg(key)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains("node=")
}

#[test]
fn a_stopped_tasks_or_removed_nodes_kept_svid_is_refused_by_the_mesh() {
    let Some(prog) = serving_program() else {
        return;
    };
    let c = Cluster::init(1, 1);
    let m = c.first();
    let w = &c.workers()[0];
    let target = format!("{}:{PORT}", ip_of(m));
    let on_m = format!("node.hostname=={}", m.name());
    let on_w = format!("node.hostname=={}", w.name());
    create_db(m, &prog, &["--constraint", &on_m]);
    // Two callers that only sleep: their SVIDs are what a thief would keep.
    exec_service(m, "stopper", &["--constraint", &on_m], "exec sleep 1000");
    exec_service(m, "remote", &["--constraint", &on_w], "exec sleep 1000");
    let task_of = |svc: &str| {
        wait_for(timeout(), &format!("{svc} running"), || {
            let all = crate::harness::json_lines(&m.cli_ok(&[
                "service",
                "ps",
                "--no-trunc",
                "--format",
                "json",
                svc,
            ]));
            all.iter()
                .find(|t| {
                    t["CurrentState"]
                        .as_str()
                        .is_some_and(|s| s.starts_with("Running"))
                })
                .and_then(|t| t["ID"].as_str().map(str::to_string))
                .ok_or_else(|| format!("{all:?}"))
        })
    };
    let (stopper, remote) = (task_of("stopper"), task_of("remote"));
    let kept = tempfile::tempdir().unwrap();
    let (s_cert, s_key) = keep_svid(m, &stopper, kept.path());
    let (r_cert, r_key) = keep_svid(w, &remote, kept.path());
    // While their tasks run, both are let through.
    wait_for(
        timeout(),
        "both kept SVIDs answered while their tasks run",
        || {
            if answered_with(&target, &s_cert, &s_key) && answered_with(&target, &r_cert, &r_key) {
                Ok(())
            } else {
                Err("not yet".into())
            }
        },
    );
    // The task stops: its SVID is refused, long before it would expire.
    m.cli_ok(&["service", "scale", "--detach", "stopper=0"]);
    wait_for(timeout(), "the stopped task's SVID refused", || {
        if answered_with(&target, &s_cert, &s_key) {
            Err("still answered".into())
        } else {
            Ok(())
        }
    });
    // The node is removed: the SVIDs of its tasks are refused too.
    assert!(answered_with(&target, &r_cert, &r_key));
    m.cli_ok(&["node", "rm", "--force", w.id()]);
    wait_for(timeout(), "the removed node's task SVID refused", || {
        if answered_with(&target, &r_cert, &r_key) {
            Err("still answered".into())
        } else {
            Ok(())
        }
    });
}
