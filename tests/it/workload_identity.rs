//! Workload identity, end to end with real daemons: every task with identity on finds its own
//! X.509-SVID, key and trust bundle at /run/spiffe and the Workload API socket named by
//! SPIFFE_ENDPOINT_SOCKET; the SVID names the task's service and chains to the workload CA
//! (not the node root); a service with `--identity=false` gets none; and a node asking for an
//! SVID it is not entitled to (another node's task, a stopped task, a bad or oversized CSR)
//! is refused and audited while the daemon keeps serving.

use serde_json::Value;

use crate::harness::{Cluster, Node, exec_service, json_lines, timeout, wait_for};

fn tasks(m: &Node, service: &str) -> Vec<Value> {
    json_lines(&m.cli_ok(&["service", "ps", "--no-trunc", "--format", "json", service]))
}

fn running_task(m: &Node, service: &str) -> Value {
    wait_for(timeout(), &format!("{service} running"), || {
        let all = tasks(m, service);
        all.iter()
            .find(|t| {
                t["CurrentState"]
                    .as_str()
                    .is_some_and(|s| s.starts_with("Running"))
            })
            .cloned()
            .ok_or_else(|| format!("{all:?}"))
    })
}

/// The PEM blocks of `label` a service's logs hold, in order.
fn pem_blocks(m: &Node, service: &str, label: &str) -> Vec<Vec<u8>> {
    let logs = m.cli_ok(&["service", "logs", "--raw", service]);
    let text: String = logs
        .lines()
        .map(|l| l.rsplit_once("| ").map_or(l, |(_, r)| r))
        .collect::<Vec<_>>()
        .join("\n");
    pem::parse_many(text.as_bytes())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.tag() == label)
        .map(|p| p.into_contents())
        .collect()
}

/// The cluster ID, from the node's plaintext file.
fn cluster_id(n: &Node) -> String {
    let file: Value =
        serde_json::from_slice(&std::fs::read(n.data_dir().join("node.json")).unwrap()).unwrap();
    file["cluster_id"].as_str().unwrap().to_string()
}

/// A service whose one task prints its identity files and environment, then sleeps.
fn show_identity(m: &Node, name: &str, opts: &[&str]) {
    exec_service(
        m,
        name,
        opts,
        "echo \"endpoint=$SPIFFE_ENDPOINT_SOCKET\"; test -S /run/spiffe/workload@skep.sock && echo socket=yes; cat /run/spiffe/svid.pem /run/spiffe/bundle.pem; test -r /run/spiffe/svid.key && echo key=yes; exec sleep 1000",
    );
}

#[test]
fn each_task_holds_an_svid_for_its_own_service_and_nothing_else() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let c = Cluster::init(1, 1);
    let m = c.first();
    let cluster_id = cluster_id(m);
    show_identity(m, "web", &["--replicas", "2"]);
    show_identity(m, "plain", &["--identity=false"]);
    let web = running_task(m, "web");
    let _ = running_task(m, "plain");
    let task_ids: Vec<String> = tasks(m, "web")
        .iter()
        .filter_map(|t| t["ID"].as_str().map(str::to_string))
        .collect();
    assert_eq!(task_ids.len(), 2, "{web:?}");

    let certs = wait_for(timeout(), "both web tasks printed their SVID", || {
        let certs = pem_blocks(m, "web", "CERTIFICATE");
        // Each task: its SVID, then the bundle (one CA).
        if certs.len() >= 4 {
            Ok(certs)
        } else {
            Err(format!("{} certificates", certs.len()))
        }
    });
    let logs = m.cli_ok(&["service", "logs", "web"]);
    assert!(
        logs.contains("endpoint=unix:///run/spiffe/workload@skep.sock"),
        "{logs}"
    );
    assert!(
        logs.contains("socket=yes") && logs.contains("key=yes"),
        "{logs}"
    );
    let svids: Vec<skep_pki::SvidInfo> = certs
        .iter()
        .filter_map(|der| skep_pki::SvidInfo::from_der(der).ok())
        .collect();
    assert_eq!(
        svids.len(),
        2,
        "two SVIDs among {} certificates",
        certs.len()
    );
    let want = format!("spiffe://{cluster_id}/ns/default/svc/web");
    for s in &svids {
        assert_eq!(s.spiffe_id, want);
        assert!(
            task_ids.contains(&s.task_id),
            "{s:?} not one of {task_ids:?}"
        );
    }
    assert_ne!(svids[0].task_id, svids[1].task_id, "each task has its own");
    assert_ne!(svids[0].serial, svids[1].serial);

    // The bundle is the workload CA, not the node root: node certificates do not chain to
    // it, and the SVIDs do not chain to the node root.
    let bundle: Vec<&Vec<u8>> = certs
        .iter()
        .filter(|der| skep_pki::SvidInfo::from_der(der).is_err())
        .collect();
    let root = std::fs::read(m.data_dir().join("root.crt")).unwrap();
    assert!(
        bundle.iter().all(|b| **b != root),
        "the bundle is not the node root"
    );

    // identity=false: no files, no socket, no variable.
    let plain = m.cli_ok(&["service", "logs", "plain"]);
    assert!(
        plain.contains("endpoint=\n")
            || plain.contains("endpoint=\r")
            || plain.lines().any(|l| l.ends_with("endpoint=")),
        "{plain}"
    );
    assert!(
        !plain.contains("socket=yes") && !plain.contains("BEGIN CERTIFICATE"),
        "{plain}"
    );

    // Every issuance is on the audit chain, naming the task and the SPIFFE ID.
    let audit = m.audit();
    let issued: Vec<&Value> = audit
        .iter()
        .filter(|r| r["action"] == "svid.issue" && r["outcome"] == "ok")
        .collect();
    assert!(issued.len() >= 2, "{issued:#?}");
    assert!(issued.iter().all(|r| r["target"] == want.as_str()));

    // The tasks' keys live on their tmpfs only: once the services are gone, no file any node
    // wrote (store, logs, state) holds a byte of them.
    let keys: Vec<String> = c
        .managers()
        .iter()
        .chain(c.workers())
        .flat_map(|n| crate::harness::files_under(&n.data_dir()))
        .filter(|p| p.ends_with("spiffe/svid.key"))
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .filter_map(|pem| pem.lines().nth(1).map(str::to_string))
        .collect();
    assert_eq!(keys.len(), 2, "each web task's key, read from its tmpfs");
    m.cli_ok(&["service", "rm", "web", "plain"]);
    for n in c.managers().iter().chain(c.workers()) {
        wait_for(timeout(), "the tasks' identity files removed", || {
            let left = crate::harness::secrets_left(&n.data_dir());
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        });
    }
    let nodes: Vec<&Node> = c.managers().iter().chain(c.workers()).collect();
    let lines: Vec<&str> = keys.iter().map(String::as_str).collect();
    crate::harness::assert_no_plaintext(&nodes, &lines);
}

#[test]
fn a_node_asking_for_an_svid_it_is_not_entitled_to_is_refused_and_audited() {
    use skep::api::v1::SvidRequest;
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let c = Cluster::init(1, 2);
    let m = c.first();
    let (w1, w2) = (&c.workers()[0], &c.workers()[1]);
    let on_w1 = format!("node.hostname=={}", w1.name());
    exec_service(m, "holder", &["--constraint", &on_w1], "exec sleep 1000");
    exec_service(
        m,
        "anon",
        &["--constraint", &on_w1, "--identity=false"],
        "exec sleep 1000",
    );
    let task_id = running_task(m, "holder")["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let anon_id = running_task(m, "anon")["ID"].as_str().unwrap().to_string();
    let csr = skep_pki::NodeKey::generate().unwrap().csr_der().unwrap();

    let ask = |n: &Node, task: &str, csr: Vec<u8>| {
        crate::harness::dispatcher_as(n, m, |mut d| async move {
            d.issue_svid(SvidRequest {
                task_id: task.into(),
                csr,
            })
            .await
            .map(|r| r.into_inner())
        })
    };
    // w2 runs no task of holder: refused.
    let e = ask(w2, &task_id, csr.clone()).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("is not assigned to node"),
        "{}",
        e.message()
    );
    // A service with identity off.
    let e = ask(w1, &anon_id, csr.clone()).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("identity turned off"),
        "{}",
        e.message()
    );
    // An oversized CSR and garbage: refused as bad requests, quoting nothing of them.
    let e = ask(w1, &task_id, vec![0x30; 64 * 1024]).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().len() < 300, "{}", e.message());
    let e = ask(w1, &task_id, b"not a csr".to_vec()).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // The entitled request succeeds: an SVID for that task's service, for the key asked.
    let ok = ask(w1, &task_id, csr.clone()).unwrap();
    let info = skep_pki::SvidInfo::from_der(&ok.cert).unwrap();
    assert_eq!(info.task_id, task_id);
    assert!(
        ok.spiffe_id.ends_with("/ns/default/svc/holder"),
        "{}",
        ok.spiffe_id
    );
    assert!(ok.bundle.is_some());

    // Once the task is not to run any more, its own node is refused too.
    m.cli_ok(&["service", "scale", "--detach", "holder=0"]);
    wait_for(timeout(), "the holder task to be told to stop", || {
        let all = tasks(m, "holder");
        match all.iter().find(|t| t["ID"] == task_id.as_str()) {
            Some(t) if t["DesiredState"] != "Running" => Ok(()),
            _ => Err(format!("{all:?}")),
        }
    });
    let e = ask(w1, &task_id, csr).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(
        e.message().contains("not to run any more"),
        "{}",
        e.message()
    );

    let audit = m.audit();
    let denied: Vec<&Value> = audit
        .iter()
        .filter(|r| r["action"] == "svid.issue" && r["outcome"] == "denied")
        .collect();
    assert_eq!(denied.len(), 5, "{denied:#?}");
    assert_eq!(denied[0]["actor"]["id"], w2.id());
    assert!(denied.iter().all(|r| r["details"]["reason"].is_string()));
    // The daemon kept serving throughout.
    m.cli_ok(&["node", "ls"]);
}

/// A node that asks again and again for an SVID of its own running task (a worker an
/// attacker holds) is held to a few unexpired SVIDs for that task: past
/// `MAX_SVIDS_PER_TASK` it is refused, each refusal audited, so it cannot grow the swarm's
/// SVID records (every one kept until it expires, so that it can be revoked) without bound.
/// A revoked SVID of another task stays on the CRL throughout.
#[test]
fn a_node_asking_again_and_again_for_its_tasks_svid_is_held_to_a_few() {
    use skep::api::v1::SvidRequest;
    use skep::store::workload::MAX_SVIDS_PER_TASK;
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let c = Cluster::init(1, 1);
    let m = c.first();
    let w = &c.workers()[0];
    let on_w = format!("node.hostname=={}", w.name());
    exec_service(m, "gone", &["--constraint", &on_w], "exec sleep 1000");
    exec_service(m, "flood", &["--constraint", &on_w], "exec sleep 1000");
    let gone = running_task(m, "gone")["ID"].as_str().unwrap().to_string();
    let flood = running_task(m, "flood")["ID"].as_str().unwrap().to_string();
    let csr = skep_pki::NodeKey::generate().unwrap().csr_der().unwrap();
    let ask = |task: String, times: usize| {
        let csr = csr.clone();
        crate::harness::dispatcher_as(w, m, |mut d| async move {
            let mut answers = Vec::new();
            for _ in 0..times {
                let req = SvidRequest {
                    task_id: task.clone(),
                    csr: csr.clone(),
                };
                answers.push(d.issue_svid(req).await.map(|r| r.into_inner()));
            }
            answers
        })
    };
    // An SVID of `gone`, then the service removed: the SVID is revoked.
    let kept = ask(gone.clone(), 1).pop().unwrap().unwrap();
    let kept = skep_pki::SvidInfo::from_der(&kept.cert).unwrap().serial;
    m.cli_ok(&["service", "rm", "gone"]);

    let answers = ask(flood.clone(), 2 * MAX_SVIDS_PER_TASK);
    let granted: Vec<_> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
    let refused: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    // The agent holds one of the task's SVIDs already (perhaps two, if it retried).
    assert!(
        !granted.is_empty() && granted.len() < MAX_SVIDS_PER_TASK,
        "granted {} of {} asked: {refused:?}",
        granted.len(),
        answers.len()
    );
    for e in &refused {
        assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("unexpired SVIDs"), "{}", e.message());
        assert!(e.message().len() < 300, "{}", e.message());
    }
    // Every grant came after the removal, and each bundle revokes the removed task's SVID.
    for g in &granted {
        let revoked = skep_pki::crl_serials(&g.bundle.as_ref().unwrap().crl).unwrap();
        assert!(revoked.contains(&kept), "{kept} not in {revoked:?}");
    }
    let audit = m.audit();
    let denied = audit
        .iter()
        .filter(|r| {
            r["action"] == "svid.issue"
                && r["outcome"] == "denied"
                && r["details"]["task"] == flood.as_str()
        })
        .count();
    assert!(
        denied >= refused.len(),
        "{denied} audited of {}",
        refused.len()
    );
    m.cli_ok(&["node", "ls"]);
}

/// GET `path` over HTTPS from `addr`, trusting `root_der` for the managers' server name; the
/// body.
fn https_get(addr: std::net::SocketAddr, root_der: &[u8], path: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(root_der.to_vec()))
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(skep_pki::MANAGER_SERVER_NAME).unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let sock = std::net::TcpStream::connect(addr).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, sock);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: skep\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

#[test]
fn jwt_svids_verify_against_the_jwks_the_managers_publish() {
    use skep::api::v1::JwtSvidRequest;
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let oidc = crate::harness::fresh_addr();
    let oidc_arg = oidc.to_string();
    let c = Cluster::form(
        vec![
            Node::new("m1", &["--oidc-addr", &oidc_arg]),
            Node::new("w1", &[]),
        ],
        1,
        &["--trust-domain", "prod.example"],
    );
    let m = c.first();
    let w1 = &c.workers()[0];
    let issuer = format!("https://{oidc}");
    m.cli_ok(&["swarm", "update", "--oidc-issuer", &issuer]);
    let on_w1 = format!("node.hostname=={}", w1.name());
    exec_service(m, "api", &["--constraint", &on_w1], "exec sleep 1000");
    let task_id = running_task(m, "api")["ID"].as_str().unwrap().to_string();

    let ask = |n: &Node, audience: Vec<String>| {
        let task_id = task_id.clone();
        crate::harness::dispatcher_as(n, m, |mut d| async move {
            d.issue_jwt_svid(JwtSvidRequest { task_id, audience })
                .await
                .map(|r| r.into_inner())
        })
    };
    let token = ask(w1, vec!["vault".into()]).unwrap();
    assert_eq!(token.spiffe_id, "spiffe://prod.example/ns/default/svc/api");
    // The manager's own node runs no task of api.
    let e = ask(m, vec!["vault".into()]).unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    // 10,000 audiences: refused before anything is signed, quoting little of it.
    let many: Vec<String> = (0..10_000).map(|i| format!("aud-{i}")).collect();
    let e = ask(w1, many).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().len() < 300, "{}", e.message());

    // An external verifier: discovery, then the JWKS, over HTTPS with the cluster root.
    let root = std::fs::read(m.data_dir().join("root.crt")).unwrap();
    let root = skep_pki::split_der_certs(&root).unwrap().remove(0);
    let discovery: Value =
        serde_json::from_str(&https_get(oidc, &root, "/.well-known/openid-configuration")).unwrap();
    assert_eq!(discovery["issuer"], issuer.as_str());
    assert_eq!(discovery["jwks_uri"], format!("{issuer}/keys").as_str());
    let jwks = https_get(oidc, &root, "/keys");
    let now = time::OffsetDateTime::now_utc();
    let claims = skep_pki::jwt::verify(&token.token, jwks.as_bytes(), "vault", now).unwrap();
    assert_eq!(claims.sub, token.spiffe_id);
    assert_eq!(claims.iss.as_deref(), Some(issuer.as_str()));
    assert!(claims.exp <= now + time::Duration::seconds(305));
    // Not for another audience.
    assert!(skep_pki::jwt::verify(&token.token, jwks.as_bytes(), "other", now).is_err());

    let audit = m.audit();
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "svid.jwt.issue" && r["outcome"] == "ok"),
        "issuance audited"
    );
    let denied = audit
        .iter()
        .filter(|r| r["action"] == "svid.jwt" && r["outcome"] == "denied")
        .count();
    assert_eq!(denied, 2);
}

#[test]
fn an_svid_is_renewed_at_half_life_for_a_fresh_key() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let c = Cluster::init(1, 1);
    let m = c.first();
    m.cli_ok(&["swarm", "update", "--svid-ttl", "10s"]);
    exec_service(
        m,
        "renewing",
        &[],
        "while true; do cat /run/spiffe/svid.pem; sleep 1; done",
    );
    let task = running_task(m, "renewing")["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let svids = wait_for(timeout(), "a renewed SVID", || {
        let mut seen: Vec<skep_pki::SvidInfo> = Vec::new();
        for der in pem_blocks(m, "renewing", "CERTIFICATE") {
            if let Ok(info) = skep_pki::SvidInfo::from_der(&der)
                && !seen.iter().any(|s| s.serial == info.serial)
            {
                seen.push(info);
            }
        }
        if seen.len() >= 2 {
            Ok(seen)
        } else {
            Err(format!("{} SVIDs seen", seen.len()))
        }
    });
    for s in &svids {
        assert_eq!(s.task_id, task);
    }
    // Each lives the swarm's lifetime; the next came before the first ran out.
    let (a, b) = (&svids[0], &svids[1]);
    assert!(b.not_after > a.not_after);
    assert!(b.not_after - a.not_after < time::Duration::seconds(10));
    let issued = m
        .audit()
        .iter()
        .filter(|r| r["action"] == "svid.issue" && r["details"]["task"] == task.as_str())
        .count();
    assert!(issued >= 2, "each renewal is audited");
}
