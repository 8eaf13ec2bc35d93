//! Adversary tests (see `mod.rs`): identity. A node's certificate is worth exactly what the
//! swarm's state says about that node now: a kept certificate of a demoted, departed or
//! renewed node, or a node with no task on a service's networks, gets nothing.

use std::time::Duration;

use skep::api::v1::agent_client::AgentClient;
use skep::api::v1::dispatcher_client::DispatcherClient;
use skep::api::v1::manager_client::ManagerClient;
use skep::api::v1::{Empty, HeartbeatRequest, JoinRaftRequest, RaftMessage, TunnelFrame};
use skep::net::Credentials;

use crate::harness::{Cluster, Node, credentials_of, timeout, wait_for};

/// What a call came to: `Ok(())`, or the status's code and message.
type Outcome = Result<(), String>;

fn outcome<T>(r: Result<T, tonic::Status>) -> Outcome {
    r.map(|_| ())
        .map_err(|s| format!("{:?}: {} ({s:?})", s.code(), s.message()))
}

/// Whether an outcome is a refusal of the identity (not a failure after it was accepted):
/// `PermissionDenied`, or a handshake the server refused (in TLS 1.3 the client may learn
/// that only as the connection closing under its first call; the audit checks say why).
fn refused(o: &Outcome) -> bool {
    match o {
        Ok(()) => false,
        Err(e) => {
            e.starts_with("PermissionDenied")
                || (!e.starts_with("InvalidArgument")
                    && !e.starts_with("FailedPrecondition")
                    && !e.starts_with("NotFound")
                    && (e.contains("transport error")
                        || e.contains("alert")
                        || e.contains("BadCertificate")
                        || e.contains("CertificateRevoked")
                        || e.contains("connection closed")))
        }
    }
}

/// The serial of the certificate a node holds now.
fn serial_of(n: &Node) -> String {
    let der = std::fs::read(n.data_dir().join("node.crt")).unwrap();
    skep_pki::NodeCertInfo::from_der(&der).unwrap().serial
}

fn role_of(n: &Node) -> skep_pki::Role {
    let der = std::fs::read(n.data_dir().join("node.crt")).unwrap();
    skep_pki::NodeCertInfo::from_der(&der).unwrap().role
}

fn tls(creds: &Credentials) -> std::sync::Arc<rustls::ClientConfig> {
    skep::net::client_config(&creds.root_der, Some(creds)).unwrap()
}

/// A `Propose` body that would put a forged record on the audit chain.
fn forged_proposal(node_id: &str) -> RaftMessage {
    let ev = skep::audit::AuditEvent::now(
        skep::audit::Actor::node(node_id),
        "forged.by.kept.certificate",
        "x",
        skep::audit::Outcome::Ok,
    );
    RaftMessage {
        payload: skep::store::wire::encode(&skep::store::model::Command::Audit(ev)).unwrap(),
        format: skep::store::wire::LOG_FORMAT,
    }
}

fn garbage() -> RaftMessage {
    RaftMessage {
        payload: b"{}".to_vec(),
        format: skep::store::wire::LOG_FORMAT,
    }
}

/// Every manager-only call, each on a fresh connection, with `creds` of node `node_id`.
async fn manager_calls(addr: &str, creds: &Credentials, node_id: &str) -> Vec<(String, Outcome)> {
    let ch = || skep::net::channel(addr, tls(creds)).unwrap();
    vec![
        (
            "RaftVote".into(),
            outcome(ManagerClient::new(ch()).raft_vote(garbage()).await),
        ),
        (
            "RaftAppend".into(),
            outcome(ManagerClient::new(ch()).raft_append(garbage()).await),
        ),
        (
            "RaftSnapshot".into(),
            outcome(ManagerClient::new(ch()).raft_snapshot(garbage()).await),
        ),
        (
            "Propose".into(),
            outcome(
                ManagerClient::new(ch())
                    .propose(forged_proposal(node_id))
                    .await,
            ),
        ),
        (
            "JoinRaft".into(),
            outcome(
                ManagerClient::new(ch())
                    .join_raft(JoinRaftRequest {
                        raft_id: skep::manager::raft_id_of(node_id),
                        addr: "127.0.0.1:1".into(),
                    })
                    .await,
            ),
        ),
    ]
}

fn assert_all_refused(what: &str, calls: &[(String, Outcome)]) {
    let served: Vec<&(String, Outcome)> = calls.iter().filter(|(_, o)| !refused(o)).collect();
    assert!(
        served.is_empty(),
        "{what}: calls not refused: {served:#?}\nall: {calls:#?}"
    );
}

fn no_forged_record(m: &Node) {
    assert!(
        !m.audit()
            .iter()
            .any(|r| r["action"] == "forged.by.kept.certificate"),
        "a kept certificate wrote to the audit chain"
    );
}

/// Audit records after `before` that deny node `id`: in a handler (the node is the actor or
/// named), or at the handshake for a revoked or replaced certificate (a handshake record names
/// only the peer's address; this test is the only client refused there).
fn denials_of(m: &Node, before: usize, id: &str) -> usize {
    m.audit()[before..]
        .iter()
        .filter(|r| r["outcome"] == "denied")
        .filter(|r| {
            let reason = r["details"]["reason"].as_str().unwrap_or("");
            r["actor"]["id"] == id
                || reason.contains(id)
                || (r["action"] == "tls.handshake"
                    && (reason.to_lowercase().contains("revoked") || reason.contains("replaced")))
        })
        .count()
}

#[test]
fn a_demoted_managers_kept_certificate_gets_no_manager_call_and_cannot_leave_for_the_node() {
    let c = Cluster::init(3, 0);
    let leader = c.first();
    let m3 = &c.managers()[2];
    let id = m3.id().to_string();
    // What a thief of m3's disk (or m3 itself) keeps from before its demotion.
    let kept = credentials_of(m3);
    leader.cli_ok(&["node", "demote", m3.name()]);
    wait_for(timeout(), "m3 renewed to a worker certificate", || {
        if role_of(m3) == skep_pki::Role::Worker {
            Ok(())
        } else {
            Err(format!("{:?}", role_of(m3)))
        }
    });
    let before = leader.audit().len();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let addr = leader.addr();
    let mut calls = rt.block_on(manager_calls(&addr, &kept, &id));
    // Leave as the node, with the manager certificate it no longer holds.
    let leave = rt.block_on(async {
        let ch = skep::net::channel(&addr, tls(&kept)).unwrap();
        outcome(DispatcherClient::new(ch).leave(Empty {}).await)
    });
    calls.push(("Leave".into(), leave));
    assert_all_refused("demoted manager's kept certificate", &calls);
    no_forged_record(leader);
    assert!(
        leader.node_ls().iter().any(|n| n["ID"] == id.as_str()),
        "the kept certificate took the demoted node out of the swarm"
    );
    wait_for(timeout(), "each refusal audited", || {
        let n = denials_of(leader, before, &id);
        if n >= calls.len() {
            Ok(())
        } else {
            Err(format!("{n} denials: {:#?}", &leader.audit()[before..]))
        }
    });
}

#[test]
fn a_departed_managers_kept_certificate_cannot_propose_or_rejoin_raft() {
    let mut c = Cluster::init(3, 0);
    let id = c.managers()[2].id().to_string();
    let kept = credentials_of(&c.managers()[2]);
    // m3 leaves as `swarm leave` makes it (its daemon stopped first so it does not retry).
    c.nodes[2].kill();
    let addr = c.first().addr();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let left = rt.block_on(async {
        let ch = skep::net::channel(&addr, tls(&kept)).unwrap();
        outcome(DispatcherClient::new(ch).leave(Empty {}).await)
    });
    assert_eq!(left, Ok(()), "the manager could not leave");
    let leader = c.first();
    wait_for(timeout(), "m3 out of the node list", || {
        let nodes = leader.node_ls();
        if nodes.iter().any(|n| n["ID"] == id.as_str()) {
            Err(crate::harness::summary(&nodes))
        } else {
            Ok(())
        }
    });
    let before = leader.audit().len();
    let calls = rt.block_on(manager_calls(&addr, &kept, &id));
    assert_all_refused("departed manager's kept certificate", &calls);
    no_forged_record(leader);
    wait_for(timeout(), "each refusal audited", || {
        let n = denials_of(leader, before, &id);
        if n >= calls.len() {
            Ok(())
        } else {
            Err(format!("{n} denials: {:#?}", &leader.audit()[before..]))
        }
    });
}

#[test]
fn a_renewed_nodes_previous_certificate_is_refused_and_its_live_connection_cut() {
    let c = Cluster::init_with(1, 1, &["--cert-expiry", "40s"]);
    let m = c.first();
    let w = &c.workers()[0];
    let addr = m.addr();
    let (m_id, w_id) = (m.id().to_string(), w.id().to_string());
    let (m_kept, w_kept) = (credentials_of(m), credentials_of(w));
    let (m_serial, w_serial) = (serial_of(m), serial_of(w));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_rt = rt.enter();
    // A connection opened with the worker's certificate before its renewal.
    let live = skep::net::channel(&addr, tls(&w_kept)).unwrap();
    let first = rt.block_on(async {
        DispatcherClient::new(live.clone())
            .heartbeat(HeartbeatRequest::default())
            .await
    });
    assert!(first.is_ok(), "{first:?}");
    let before = m.audit().len();
    // Each node renews at 50-80 % of its 40 s: its previous certificate is still unexpired
    // for at least 8 s after; each is tried on a new connection the moment its node's serial
    // changes.
    let mut results: Vec<(String, Outcome)> = Vec::new();
    let (mut m_done, mut w_done) = (false, false);
    wait_for(
        Duration::from_secs(90),
        "both nodes renewed and their old certificates tried",
        || {
            if !w_done && serial_of(w) != w_serial {
                w_done = true;
                rt.block_on(async {
                    let ch = skep::net::channel(&addr, tls(&w_kept)).unwrap();
                    results.push((
                        "worker heartbeat, new connection".into(),
                        outcome(
                            DispatcherClient::new(ch)
                                .heartbeat(HeartbeatRequest::default())
                                .await,
                        ),
                    ));
                });
            }
            if !m_done && serial_of(m) != m_serial {
                m_done = true;
                rt.block_on(async {
                    let ch = skep::net::channel(&addr, tls(&m_kept)).unwrap();
                    results.push((
                        "manager propose".into(),
                        outcome(ManagerClient::new(ch).propose(forged_proposal(&m_id)).await),
                    ));
                });
            }
            if m_done && w_done {
                Ok(())
            } else {
                Err(format!(
                    "worker renewed: {w_done}, manager renewed: {m_done}"
                ))
            }
        },
    );
    // The connection made before the renewal is cut within its grace (2 s): its next call
    // fails, and so does the reconnection with the old certificate.
    let cut = wait_for(
        Duration::from_secs(10),
        "the connection from before the renewal cut",
        || {
            let o = rt.block_on(async {
                outcome(
                    DispatcherClient::new(live.clone())
                        .heartbeat(HeartbeatRequest::default())
                        .await,
                )
            });
            if refused(&o) {
                Ok(o)
            } else {
                Err(format!("{o:?}"))
            }
        },
    );
    results.push((
        "worker heartbeat, connection from before the renewal".into(),
        cut,
    ));
    assert_all_refused("a renewed node's previous certificate", &results);
    no_forged_record(m);
    wait_for(timeout(), "the refusals audited", || {
        let (wn, mn) = (denials_of(m, before, &w_id), denials_of(m, before, &m_id));
        if wn >= 1 && mn >= 1 {
            Ok(())
        } else {
            Err(format!("{wn}/{mn}: {:#?}", &m.audit()[before..]))
        }
    });
    // The nodes themselves carry on with their new certificates: both Ready.
    wait_for(timeout(), "both nodes Ready", || {
        let nodes = m.node_ls();
        if nodes.iter().all(|n| n["Status"] == "Ready") {
            Ok(())
        } else {
            Err(crate::harness::summary(&nodes))
        }
    });
}

#[test]
fn a_node_with_no_task_on_a_services_networks_cannot_tunnel_to_its_exposed_port() {
    let Some(prog) = crate::harness::serving_program() else {
        return;
    };
    let c = Cluster::init(1, 2);
    let m = c.first();
    let (w1, w2) = (&c.workers()[0], &c.workers()[1]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docker-compose.yml");
    std::fs::write(
        &file,
        format!(
            r#"version: "3"
services:
  cache:
    x-skep-runtime: exec
    command: ["{prog}", "serve"]
    expose: ["6379"]
    networks: [backend]
    deploy:
      placement:
        constraints: ["node.hostname=={w1}"]
  reader:
    x-skep-runtime: exec
    command: ["/bin/sleep", "1000"]
    networks: [backend]
    deploy:
      placement:
        constraints: ["node.hostname=={m}"]
networks:
  backend:
"#,
            w1 = w1.name(),
            m = m.name(),
        ),
    )
    .unwrap();
    m.cli_ok(&["stack", "deploy", "-c", file.to_str().unwrap(), "tun"]);
    let task = wait_for(timeout(), "cache and reader running", || {
        let cache = crate::harness::running_task_ids(m, "tun_cache");
        let reader = crate::harness::running_task_ids(m, "tun_reader");
        if cache.len() == 1 && reader.len() == 1 {
            Ok(cache[0].clone())
        } else {
            Err(format!("{cache:?} {reader:?}"))
        }
    });
    let cluster_id = skep_pki::NodeCertInfo::from_der(&credentials_of(m).cert_der)
        .unwrap()
        .cluster_id;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let _in_rt = rt.enter();
    // A tunnel to the cache's exposed port on w1, as `from` would open it.
    let tunnel = |from: &Node| -> Result<String, String> {
        let creds = credentials_of(from);
        let identity = skep::net::identity::LiveIdentity::new(creds).unwrap();
        let tls = skep::net::node::client_config_for_node(&identity, &cluster_id, w1.id()).unwrap();
        let ch = skep::net::channel_with_timeout(&w1.addr(), tls, Some(Duration::from_secs(10)))
            .unwrap();
        let first = TunnelFrame {
            task_id: task.clone(),
            target_port: 6379,
            data: Default::default(),
            protocol: "tcp".into(),
        };
        rt.block_on(async {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(first).await.unwrap();
            let mut inbound = AgentClient::new(ch)
                .tunnel(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                .into_inner();
            let mut got = Vec::new();
            while let Ok(Some(f)) = inbound.message().await {
                got.extend(f.data);
                if got.contains(&b'\n') {
                    break;
                }
            }
            drop(tx);
            Ok(String::from_utf8_lossy(&got).into_owned())
        })
    };
    // The manager runs the reader, on the cache's network: the mesh carries it.
    let answer = wait_for(timeout(), "a tunnel from a node on the network", || {
        tunnel(m).and_then(|a| if a.contains("node=") { Ok(a) } else { Err(a) })
    });
    assert!(answer.contains(&format!("task={task}")), "{answer}");
    // w2 runs nothing on that network: refused, and never answered by the task.
    let stolen = tunnel(w2);
    assert!(
        matches!(&stolen, Err(e) if e.starts_with("PermissionDenied")),
        "a node with no task on the service's networks tunnelled to its exposed port: {stolen:?}"
    );
    assert!(
        w1.log().contains("refused a routing-mesh tunnel"),
        "the refusal is not in w1's log"
    );
}

#[test]
fn a_worker_refuses_a_man_in_the_middle_presenting_a_demoted_managers_kept_certificate() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let mut c = Cluster::init(3, 1);
    let m3 = &c.managers()[2];
    // What a thief of m3's disk keeps from before its demotion: a manager certificate.
    let kept = credentials_of(m3);
    c.first().cli_ok(&["node", "demote", m3.name()]);
    wait_for(timeout(), "m3 renewed to a worker certificate", || {
        if role_of(&c.managers()[2]) == skep_pki::Role::Worker {
            Ok(())
        } else {
            Err("still manager".into())
        }
    });
    // A heartbeat answer tells the worker the managers now (m1, m2), with their addresses,
    // which it saves in node.json.
    let m3_addr = c.managers()[2].addr();
    wait_for(
        timeout(),
        "the worker to learn that m3 is no manager",
        || {
            let file = std::fs::read_to_string(c.workers()[0].data_dir().join("node.json"))
                .map_err(|e| e.to_string())?;
            if file.contains(&m3_addr) {
                Err(file)
            } else {
                Ok(())
            }
        },
    );
    // m2 goes away; the man in the middle takes its address with m3's kept certificate.
    let m2_addr = c.nodes[1].addr();
    c.nodes[1].kill();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (trusted, refused) = (
        std::sync::Arc::new(AtomicUsize::new(0)),
        std::sync::Arc::new(AtomicUsize::new(0)),
    );
    let identity = skep::net::identity::LiveIdentity::new(kept).unwrap();
    let config =
        skep::net::server_config(&identity, &skep::net::revoke::Revocations::new()).unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&m2_addr))
        .unwrap();
    {
        let (trusted, refused) = (trusted.clone(), refused.clone());
        rt.spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let (trusted, refused) = (trusted.clone(), refused.clone());
                tokio::spawn(async move {
                    // TLS 1.3: the server's handshake ends only when the client has accepted
                    // the server's certificate.
                    match acceptor.accept(tcp).await {
                        Ok(_) => trusted.fetch_add(1, Ordering::SeqCst),
                        Err(_) => refused.fetch_add(1, Ordering::SeqCst),
                    };
                });
            }
        });
    }
    // The leader stops answering: the worker turns to the other manager it knows.
    c.nodes[0].pause();
    // Every node that lost the leader tries the man in the middle: the demoted m3 too, whose
    // refusals are in its own log. Counting handshakes alone let m3's three refusals end the
    // wait before the worker had tried once; the wait ends when the worker says it refused.
    let seen = crate::harness::try_wait_for(
        Duration::from_secs(90),
        "the worker to refuse the man in the middle, saying why",
        || {
            let (t, r) = (
                trusted.load(Ordering::SeqCst),
                refused.load(Ordering::SeqCst),
            );
            let said = c.workers()[0]
                .log()
                .contains("which is not a manager of the swarm now");
            if t > 0 || (said && r > 0) {
                Ok((t, r))
            } else {
                Err(format!(
                    "{t} trusted, {r} refused, the worker said why: {said}"
                ))
            }
        },
    );
    c.nodes[0].resume();
    let (t, r) = seen.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        t, 0,
        "a node completed {t} handshakes with a demoted manager's kept certificate ({r} refused)"
    );
}
