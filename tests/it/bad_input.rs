//! Hostile and malformed input at every door: helpers here, scenarios by topic below them.
//! A bad input must be refused with exit 1 and a message that names the cause, and must leave
//! the daemon running and its state unchanged.
// The helpers serve tests still to be written.
#![allow(dead_code)]

use crate::harness::{
    Cluster, Node, assert_error, credentials_of, csr, issue_raw, root_der, timeout, wait_until,
};

/// Asserts the CLI refused `args` on `node` with a message containing `needle`, and that the
/// daemon survived it and still answers.
pub fn assert_refused(node: &mut Node, args: &[&str], needle: &str) {
    let out = node.cli(args);
    assert_error(&out, needle);
    assert_daemon_alive(node);
}

/// Asserts the daemon process is alive and its socket answers a request.
pub fn assert_daemon_alive(node: &mut Node) {
    assert!(
        node.is_running(),
        "the daemon of {} died\n--- log ---\n{}",
        node.name(),
        node.log_tail()
    );
    let out = node.cli(&["node", "ls", "-q"]);
    // A node outside a swarm refuses `node ls`, but with a proper error, not a dead socket.
    assert!(
        out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("cannot connect"),
        "the daemon of {} stopped answering\n--- log ---\n{}",
        node.name(),
        node.log_tail()
    );
}

/// Join tokens that must all be refused, made from a valid one: each breaks one rule.
pub fn bad_tokens(valid: &str) -> Vec<(String, &'static str)> {
    let parts: Vec<&str> = valid.splitn(4, '-').collect();
    let (digest, secret) = match parts.as_slice() {
        ["SKEP", "1", digest, secret] => (*digest, *secret),
        _ => panic!("not a SKEP-1 token: {valid}"),
    };
    let flip = |s: &str| -> String {
        let mut c: Vec<char> = s.chars().collect();
        if let Some(last) = c.last_mut() {
            *last = if *last == 'A' { 'B' } else { 'A' };
        }
        c.into_iter().collect()
    };
    vec![
        (String::new(), "empty"),
        ("garbage".into(), "not a token"),
        (format!("SKEP-2-{digest}-{secret}"), "unknown version"),
        (
            format!("SKEP-1-{}-{secret}", flip(digest)),
            "wrong CA digest",
        ),
        (format!("SKEP-1-{digest}-{}", flip(secret)), "wrong secret"),
        (format!("SKEP-1-{digest}"), "no secret"),
        (
            format!("SKEP-1-{digest}-{}", &secret[..secret.len() / 2]),
            "short secret",
        ),
        (format!("SKEP-1-{digest}-{secret}x"), "long secret"),
        (valid.to_lowercase(), "lower case"),
        (format!("{valid}\n"), "trailing newline"),
        (
            format!("SKEP-1-{digest}-{}", "A".repeat(64 * 1024)),
            "huge secret",
        ),
    ]
}

/// `swarm join` remote addresses that must be refused before any connection is made.
pub fn bad_addrs() -> Vec<&'static str> {
    vec![
        "",
        "nohost",
        "127.0.0.1",
        "127.0.0.1:",
        ":2377",
        "127.0.0.1:0",
        "127.0.0.1:99999",
        "[::1",
        "a b:1",
    ]
}

/// Unlock keys that must be refused.
pub fn bad_unlock_keys() -> Vec<String> {
    vec![
        String::new(),
        "SKEP-KEY-1-".into(),
        format!("SKEP-KEY-1-{}", "0".repeat(63)),
        format!("SKEP-KEY-1-{}", "g".repeat(64)),
        format!("SKEP-KEY-2-{}", "0".repeat(64)),
        "x".repeat(1 << 20),
    ]
}

#[test]
fn bad_token_helper_breaks_each_rule_once() {
    let valid = "SKEP-1-ABCDEFGHIJKLMNOPQRSTUVWXYZ234567-SECRETSECRETSECRET";
    let bad = bad_tokens(valid);
    assert!(bad.iter().all(|(t, _)| t != valid));
    let mut seen = std::collections::HashSet::new();
    assert!(
        bad.iter().all(|(t, _)| seen.insert(t.clone())),
        "duplicates"
    );
}

// ------------------------------------------------------------------ scenarios

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;
use skep::api::v1::ca_client::CaClient;
use skep::api::v1::dispatcher_client::DispatcherClient;
use skep::api::v1::manager_client::ManagerClient;
use skep::api::v1::{Empty, HeartbeatRequest, IssueRequest, JoinRaftRequest, RaftMessage};
use skep::net::Credentials;
use skep::secret::SecretBytes;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("tokio runtime")
}

/// Audit records of `action` with `outcome` on `node`.
fn records<'a>(all: &'a [Value], action: &str, outcome: &str) -> Vec<&'a Value> {
    all.iter()
        .filter(|r| r["action"] == action && r["outcome"] == outcome)
        .collect()
}

/// A well-formed token for the right swarm whose secret is wrong (its first character changed).
/// A manager certificate of a CA made here for `cluster_id` (not the swarm's), presenting
/// `chain` after it and trusting that CA: what an impostor can make.
fn manager_of_own_ca(cluster_id: &str, chain: Vec<Vec<u8>>) -> Credentials {
    let now = time::OffsetDateTime::now_utc();
    let ca = skep_pki::RootCa::generate(cluster_id, time::Duration::days(1), now).unwrap();
    let key = skep_pki::NodeKey::generate().unwrap();
    let csr = skep_pki::Csr::from_der(&key.csr_der().unwrap()).unwrap();
    let cert = ca
        .issue(
            &csr,
            &skep_pki::new_id(),
            skep_pki::Role::Manager,
            time::Duration::hours(1),
            now,
        )
        .unwrap();
    Credentials {
        cert_der: cert.der,
        chain,
        key_der: SecretBytes::new(key.pkcs8_der().to_vec()),
        root_der: ca.cert_der().to_vec(),
    }
}

fn forged_token(valid: &str) -> String {
    let (head, secret) = valid.rsplit_once('-').unwrap();
    let first = if secret.starts_with('a') { 'b' } else { 'a' };
    format!("{head}-{first}{}", &secret[1..])
}

#[test]
fn every_malformed_or_forged_token_is_refused_and_the_daemons_keep_serving() {
    let c = Cluster::init(1, 0);
    let first = c.first();
    let valid = first
        .cli_ok(&["join-token", "-q", "worker"])
        .trim()
        .to_string();
    let mut joiner = Node::start("joiner");
    for (token, why) in bad_tokens(&valid) {
        let out = joiner.cli(&["swarm", "join", "--token", &token, &first.addr()]);
        assert!(!out.status.success(), "a token with {why} was accepted");
        let err = crate::harness::stderr(&out);
        assert!(err.starts_with("Error: "), "{why}: {err}");
        assert!(
            !err.contains(&valid[valid.len() - 26..]),
            "{why}: the error repeats the token secret: {err}"
        );
        assert_daemon_alive(&mut joiner);
    }
    // The forged secret reached the manager and was refused there, naming the cause.
    let out = joiner.cli(&[
        "swarm",
        "join",
        "--token",
        &forged_token(&valid),
        &first.addr(),
    ]);
    assert_error(&out, "does not match a current join token");
    let audit = first.audit();
    let denied = records(&audit, "token.use", "denied");
    assert!(!denied.is_empty(), "no token.use denial was audited");
    assert!(denied.iter().all(|r| {
        r["details"]["peer"]
            .as_str()
            .is_some_and(|p| p.contains(':'))
    }));
    // A valid token still works after all that.
    joiner.cli_ok(&["swarm", "join", "--token", &valid, &first.addr()]);
}

#[test]
fn a_token_of_another_swarm_is_refused_by_the_joiner_and_by_the_manager() {
    let a = Cluster::init(1, 0);
    let b = Cluster::init(1, 0);
    let b_token = b
        .first()
        .cli_ok(&["join-token", "-q", "manager"])
        .trim()
        .to_string();
    let mut joiner = Node::start("wrong-swarm");
    // The joiner sees that A presents no root CA with the token's digest, before sending anything.
    assert_refused(
        &mut joiner,
        &["swarm", "join", "--token", &b_token, &a.first().addr()],
        "no root CA matching the join token",
    );
    // Sent to A directly, bypassing that check, A refuses it and audits it.
    let err = rt()
        .block_on(issue_raw(
            &a.first().addr(),
            &root_der(a.first()),
            &b_token,
            csr(),
        ))
        .expect_err("A accepted B's token");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("another cluster"),
        "{}",
        err.message()
    );
    let audit = a.first().audit();
    assert!(
        records(&audit, "token.use", "denied")
            .iter()
            .any(|r| r["details"]["reason"]
                .as_str()
                .unwrap_or("")
                .contains("another cluster")),
        "the foreign token was not audited"
    );
}

#[test]
fn a_bad_csr_is_refused_and_audited() {
    let c = Cluster::init(1, 0);
    let first = c.first();
    let token = first
        .cli_ok(&["join-token", "-q", "worker"])
        .trim()
        .to_string();
    let root = root_der(first);
    let rt = rt();
    // A CSR whose signature does not match its key (one byte of the signature flipped).
    let mut forged = csr();
    let n = forged.len();
    forged[n - 3] ^= 0x55;
    for (bytes, why) in [
        (forged, "bad signature"),
        (b"garbage".to_vec(), "garbage"),
        (Vec::new(), "empty"),
        (csr()[..40].to_vec(), "truncated"),
    ] {
        let err = rt
            .block_on(issue_raw(&first.addr(), &root, &token, bytes))
            .expect_err(why);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{why}: {err:?}");
        assert!(
            err.message()
                .contains("certificate signing request refused"),
            "{why}: {}",
            err.message()
        );
    }
    assert_eq!(records(&first.audit(), "cert.issue", "denied").len(), 4);
    assert_eq!(first.node_ls().len(), 1, "a refused CSR added a node");
}

#[test]
fn a_client_certificate_from_a_foreign_ca_is_refused_at_the_handshake() {
    let mut c = Cluster::init(1, 0);
    let addr = c.first().addr();
    let root = root_der(c.first());
    // A CA that even claims this cluster's ID: the signature still does not chain to our root.
    let cluster_id = {
        let info = skep_pki::NodeCertInfo::from_der(
            &std::fs::read(c.first().data_dir().join("node.crt")).unwrap(),
        )
        .unwrap();
        info.cluster_id
    };
    let creds = manager_of_own_ca(&cluster_id, Vec::new());
    let creds = Credentials {
        root_der: root,
        ..creds
    };
    let tls = skep::net::client_config(&creds.root_der, Some(&creds)).unwrap();
    let rt = rt();
    let err = rt
        .block_on(async {
            let ch = skep::net::channel(&addr, tls).unwrap();
            ManagerClient::new(ch)
                .raft_vote(RaftMessage {
                    payload: b"{}".to_vec(),
                    format: skep::store::wire::LOG_FORMAT,
                })
                .await
        })
        .expect_err("a foreign certificate was accepted");
    assert_ne!(err.code(), tonic::Code::Ok);
    wait_until(timeout(), "the refused handshake in the audit log", || {
        c.first()
            .try_audit()
            .map(|a| !records(&a, "tls.handshake", "denied").is_empty())
            .unwrap_or(false)
    });
    assert_daemon_alive(&mut c.nodes[0]);
}

#[test]
fn a_worker_certificate_cannot_call_manager_rpcs() {
    let mut c = Cluster::init(1, 1);
    let addr = c.first().addr();
    let worker = &c.workers()[0];
    let worker_id = worker.id().to_string();
    let creds = credentials_of(worker);
    let tls = skep::net::client_config(&creds.root_der, Some(&creds)).unwrap();
    let rt = rt();
    rt.block_on(async {
        let ch = skep::net::channel(&addr, tls).unwrap();
        // The worker's identity is good for what workers do...
        DispatcherClient::new(ch.clone())
            .heartbeat(HeartbeatRequest {
                hostname: "w1".into(),
                addr: String::new(),
                ..HeartbeatRequest::default()
            })
            .await
            .expect("a worker may heartbeat");
        // ...and for nothing a manager does.
        let mut m = ManagerClient::new(ch.clone());
        let msg = || RaftMessage {
            payload: b"{}".to_vec(),
            format: skep::store::wire::LOG_FORMAT,
        };
        let calls = [
            m.raft_vote(msg()).await.map(|_| ()),
            m.raft_append(msg()).await.map(|_| ()),
            m.raft_snapshot(msg()).await.map(|_| ()),
            m.propose(msg()).await.map(|_| ()),
            m.join_raft(JoinRaftRequest {
                raft_id: 1,
                addr: "127.0.0.1:1".into(),
            })
            .await
            .map(|_| ()),
            m.leave_raft(Empty {}).await.map(|_| ()),
            m.read_index(Empty {}).await.map(|_| ()),
        ];
        for r in calls {
            let err = r.expect_err("a worker called a manager RPC");
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
            assert!(err.message().contains("managers only"), "{}", err.message());
        }
        // Nor can it get a second certificate with its first.
        let err = CaClient::new(ch)
            .issue_node_certificate(IssueRequest::default())
            .await
            .expect_err("issued with a node certificate");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    });
    let audit = c.first().audit();
    let denied: Vec<_> = audit
        .iter()
        .filter(|r| r["outcome"] == "denied" && r["actor"]["id"] == worker_id.as_str())
        .collect();
    assert_eq!(
        denied.len(),
        7,
        "each refused call is audited with the worker as actor"
    );
    assert_daemon_alive(&mut c.nodes[0]);
}

/// A TLS client that presents no certificate at all (as a joining node does for the issuance
/// RPC) gets nothing else: neither a worker's call nor a manager's.
#[test]
fn a_peer_without_a_certificate_gets_only_the_issuance_rpc() {
    let mut c = Cluster::init(1, 0);
    let addr = c.first().addr();
    let tls = skep::net::client_config(&root_der(c.first()), None).unwrap();
    rt().block_on(async {
        let ch = skep::net::channel(&addr, tls).unwrap();
        let beat = DispatcherClient::new(ch.clone())
            .heartbeat(HeartbeatRequest {
                hostname: "nobody".into(),
                addr: String::new(),
                ..HeartbeatRequest::default()
            })
            .await
            .map(|_| ());
        let vote = ManagerClient::new(ch.clone())
            .raft_vote(RaftMessage {
                payload: b"{}".to_vec(),
                format: skep::store::wire::LOG_FORMAT,
            })
            .await
            .map(|_| ());
        for (what, r) in [("heartbeat", beat), ("raft_vote", vote)] {
            let err = r.expect_err(&format!("{what} without a certificate answered"));
            assert_eq!(err.code(), tonic::Code::PermissionDenied, "{what}: {err:?}");
            assert!(
                err.message().contains("no client certificate"),
                "{what}: {}",
                err.message()
            );
        }
    });
    let audit = c.first().audit();
    for action in ["dispatcher.heartbeat", "raft.vote"] {
        let found = records(&audit, action, "denied");
        assert!(
            found.iter().any(|r| r["actor"]["kind"] == "anonymous"
                && r["details"]["reason"]
                    .as_str()
                    .is_some_and(|why| why.contains("no client certificate"))),
            "no denied anonymous {action} record: {found:?}"
        );
    }
    // The node list did not gain a node named `nobody`.
    assert!(
        !c.first()
            .node_ls()
            .iter()
            .any(|n| n.to_string().contains("nobody"))
    );
    assert_daemon_alive(&mut c.nodes[0]);
}

#[test]
fn garbage_and_truncated_frames_do_not_hurt_the_daemon() {
    let mut c = Cluster::init(1, 0);
    let addr = c.first().addr();
    let send = |bytes: &[u8]| {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    };
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    send(&garbage);
    // A TLS record header announcing a ClientHello, then nothing.
    send(&[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ]);
    // HTTP/2 preface in plaintext, as if TLS did not exist.
    send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    send(&[]);
    // A completed TLS handshake without a certificate, then garbage instead of HTTP/2.
    rt().block_on(async {
        let tls = skep::net::client_config(&root_der(c.first()), None).unwrap();
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from(skep_pki::MANAGER_SERVER_NAME).unwrap();
        let mut s = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let _ = s.write_all(&garbage).await;
        let _ = s.shutdown().await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut sink)).await;
    });
    assert_daemon_alive(&mut c.nodes[0]);
    wait_until(timeout(), "the refused handshakes in the audit log", || {
        c.first()
            .try_audit()
            .map(|a| records(&a, "tls.handshake", "denied").len() >= 2)
            .unwrap_or(false)
    });
    c.first().cli_ok(&["audit", "verify"]);
}

#[test]
fn failed_attempts_are_audited_at_most_ten_a_minute_per_source() {
    let c = Cluster::init(1, 0);
    let first = c.first();
    let root = root_der(first);
    let valid = first
        .cli_ok(&["join-token", "-q", "worker"])
        .trim()
        .to_string();
    let forged = forged_token(&valid);
    let rt = rt();
    for _ in 0..25 {
        let err = rt
            .block_on(issue_raw(&first.addr(), &root, &forged, csr()))
            .expect_err("a forged token was accepted");
        assert_eq!(err.code(), tonic::Code::PermissionDenied);
    }
    let audit = first.audit();
    assert_eq!(
        records(&audit, "token.use", "denied").len(),
        10,
        "the limit is 10 a minute per source"
    );
    // The daemon is still fine for honest users.
    let mut joiner = Node::start("honest");
    joiner.cli_ok(&["swarm", "join", "--token", &valid, &first.addr()]);
    assert_daemon_alive(&mut joiner);
}

/// Task logs come from a node's agent over mTLS, for managers only: a worker's own
/// certificate cannot read another node's task logs, and a manager can.
#[test]
fn only_a_manager_reads_task_logs_from_an_agent() {
    use skep::api::v1::TaskLogsRequest;
    use skep::api::v1::agent_client::AgentClient;
    let c = Cluster::init(1, 2);
    let (w1, w2) = (&c.workers()[0], &c.workers()[1]);
    let cluster_id =
        skep_pki::NodeCertInfo::from_der(&std::fs::read(w2.data_dir().join("node.crt")).unwrap())
            .unwrap()
            .cluster_id;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ask = |as_node: &Node| {
        let identity = skep::net::identity::LiveIdentity::new(credentials_of(as_node)).unwrap();
        let tls = skep::net::node::client_config_for_node(&identity, &cluster_id, w2.id()).unwrap();
        rt.block_on(async {
            let ch = skep::net::channel(&w2.addr(), tls).unwrap();
            AgentClient::new(ch)
                .task_logs(TaskLogsRequest {
                    task_ids: vec!["x".into()],
                    tail: 1,
                    since_nanos: 0,
                })
                .await
        })
    };
    let refused = ask(w1).unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("only managers"), "{refused:?}");
    assert!(ask(c.first()).is_ok(), "a manager could not read task logs");
}

/// A joiner sends its token only to a server that proves a certificate of the token's root
/// CA. That root is public: a man in the middle presenting it beside a certificate of its own
/// completes no handshake with the joiner, and the join fails at once, saying so.
#[test]
fn a_server_presenting_the_genuine_root_beside_its_own_certificate_gets_no_handshake_and_no_token()
{
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let c = Cluster::init(1, 0);
    let token = c
        .first()
        .cli_ok(&["join-token", "-q", "worker"])
        .trim()
        .to_string();
    // The impostor: its own CA's manager certificate, the swarm's root presented after it.
    let creds = manager_of_own_ca(&skep_pki::new_id(), vec![root_der(c.first())]);
    let identity = skep::net::identity::LiveIdentity::new(creds).unwrap();
    let config =
        skep::net::server_config(&identity, &skep::net::revoke::Revocations::new()).unwrap();
    let rt = rt();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (completed, tried) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    {
        let (completed, tried) = (completed.clone(), tried.clone());
        rt.spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            while let Ok((tcp, _)) = listener.accept().await {
                tried.fetch_add(1, Ordering::SeqCst);
                // TLS 1.3: the server's handshake ends only once the client accepted it.
                if acceptor.clone().accept(tcp).await.is_ok() {
                    completed.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
    }
    let mut joiner = Node::start("joiner");
    assert_refused(
        &mut joiner,
        &["swarm", "join", "--token", &token, &addr],
        "not a manager certificate it issued",
    );
    assert!(
        tried.load(Ordering::SeqCst) >= 1,
        "the joiner never tried the impostor"
    );
    assert_eq!(
        completed.load(Ordering::SeqCst),
        0,
        "the joiner completed a handshake with the impostor"
    );
}
