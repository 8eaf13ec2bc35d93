//! The trust lifecycle with real daemons: join tokens rotate (the old one is refused at once,
//! nodes already joined are unaffected, the rotation is audited with its actor).

use crate::harness::{Cluster, Node, assert_error, running_hosts, timeout, wait_until};

#[test]
fn a_rotated_join_token_stops_working_at_once_and_joined_nodes_stay() {
    let c = Cluster::init(1, 1);
    let m = c.first();
    let old_worker = m.cli_ok(&["join-token", "-q", "worker"]).trim().to_string();
    let old_manager = m
        .cli_ok(&["join-token", "-q", "manager"])
        .trim()
        .to_string();

    let said = m.cli_ok(&["join-token", "--rotate", "worker"]);
    assert!(
        said.starts_with("Successfully rotated worker join token."),
        "{said}"
    );
    let new_worker = m.cli_ok(&["join-token", "-q", "worker"]).trim().to_string();
    assert_ne!(new_worker, old_worker);
    assert!(said.contains(&new_worker), "{said}");
    // Same CA digest, new secret; the manager token is untouched.
    let prefix = |t: &str| t.rsplit_once('-').map(|(p, _)| p.to_string());
    assert_eq!(prefix(&new_worker), prefix(&old_worker));
    assert_eq!(
        m.cli_ok(&["join-token", "-q", "manager"]).trim(),
        old_manager
    );

    // The old token is refused; the new one works.
    let late = Node::start("late");
    assert_error(
        &late.cli(&["swarm", "join", "--token", &old_worker, &m.addr()]),
        "rotated",
    );
    late.cli_ok(&["swarm", "join", "--token", &new_worker, &m.addr()]);

    // -q prints only the new token, and the manager token rotates on its own.
    let rotated = m
        .cli_ok(&["join-token", "--rotate", "-q", "manager"])
        .trim()
        .to_string();
    assert_ne!(rotated, old_manager);
    assert_eq!(m.cli_ok(&["join-token", "-q", "manager"]).trim(), rotated);

    // The worker that joined before the rotation is still Ready.
    let w1 = c.workers()[0].id().to_string();
    wait_until(timeout(), "w1 and the late node Ready", || {
        let nodes = m.node_ls();
        nodes.len() == 3
            && nodes.iter().all(|n| n["Status"] == "Ready")
            && nodes.iter().any(|n| n["ID"] == w1.as_str())
    });
    // A member's renewal with a bad CSR is refused, audited, and changes nothing.
    let creds = crate::harness::credentials_of(&c.workers()[0]);
    let tls = skep::net::client_config(&creds.root_der, Some(&creds)).unwrap();
    let err = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let ch = skep::net::channel(&m.addr(), tls).unwrap();
        skep::api::v1::ca_client::CaClient::new(ch)
            .renew_node_certificate(skep::api::v1::RenewRequest {
                csr_der: b"not a CSR".to_vec(),
            })
            .await
            .expect_err("a garbage CSR was renewed")
    });
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    wait_until(timeout(), "the refused renewal audited", || {
        m.audit()
            .iter()
            .any(|r| r["action"] == "cert.renew" && r["outcome"] == "denied")
    });

    // Removing nothing, or the manager itself, is a clear error and changes nothing.
    assert_error(
        &m.cli(&["node", "rm", "--force", "no-such-node"]),
        "no-such-node",
    );
    assert_error(&m.cli(&["node", "rm", "--force", m.name()]), "swarm leave");
    assert_eq!(m.node_ls().len(), 3);
    let audit = m.audit();
    let rotations: Vec<_> = audit
        .iter()
        .filter(|r| r["action"] == "token.rotate")
        .collect();
    assert_eq!(rotations.len(), 2);
    assert_eq!(rotations[0]["target"], "worker");
    assert_eq!(rotations[1]["target"], "manager");
    assert!(
        rotations
            .iter()
            .all(|r| r["actor"]["kind"] == "local-admin"),
        "{rotations:?}"
    );
    // And the refused join is on the record too.
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "token.use" && r["outcome"] == "denied"),
        "the refused join is audited"
    );
}

#[test]
fn a_removed_node_is_cut_off_at_once_and_its_kept_identity_is_refused_everywhere() {
    use skep::api::v1::ca_client::CaClient;
    use skep::api::v1::dispatcher_client::DispatcherClient;
    use skep::api::v1::manager_client::ManagerClient;
    use skep::api::v1::{
        Empty, HeartbeatRequest, IssueRequest, RaftMessage, SecretRequest, SessionRequest,
        TaskReport,
    };
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let mut c = Cluster::init(1, 2);
    let addr = c.first().addr();
    let (w1_name, w2_name) = (
        c.workers()[0].name().to_string(),
        c.workers()[1].name().to_string(),
    );
    {
        let m = c.first();
        let out = m.cli_stdin(
            &["secret", "create", "db", "-"],
            "revoked-node-secret-c5v6b7",
        );
        assert!(out.status.success());
        m.cli_ok(&[
            "service",
            "create",
            "--detach",
            "--runtime",
            "exec",
            "--name",
            "s",
            "--replicas",
            "2",
            "--constraint",
            "node.role==worker",
            "--secret",
            "db",
            "--",
            "/bin/sleep",
            "1000",
        ]);
        crate::harness::wait_for(timeout(), "one task on each worker", || {
            let on = running_hosts(m, "s");
            if on == [w1_name.clone(), w2_name.clone()] {
                Ok(())
            } else {
                Err(format!("{on:?}"))
            }
        });
    }
    // What a thief of w1's disk (or w1 itself) keeps after the removal.
    let creds = crate::harness::credentials_of(&c.workers()[0]);
    let tls = skep::net::client_config(&creds.root_der, Some(&creds)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A live task session with that identity, open before the removal.
    let mut live = rt.block_on(async {
        let ch = skep::net::channel(&addr, tls.clone()).unwrap();
        DispatcherClient::new(ch)
            .session(SessionRequest::default())
            .await
            .expect("the session opens before the removal")
            .into_inner()
    });
    rt.block_on(async { live.message().await })
        .expect("first message");

    assert_error(&c.first().cli(&["node", "rm", &w1_name]), "is not down");
    // w1's daemon stops first, so its own retries do not share the audit rate limit (10 a
    // minute per source address: every test client here is 127.0.0.1) with the calls below;
    // the session opened above stands for its live connections.
    c.nodes[1].kill();
    let m = c.first();
    let said = m.cli_ok(&["node", "rm", "--force", &w1_name]);
    assert!(
        said.contains(&format!(
            "Node {w1_name} removed and its certificate revoked."
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "Secrets that were delivered to {w1_name} and should be rotated: db"
        )),
        "{said}"
    );
    // The open session ends (the connection is cut), well within the test's deadline.
    let ended = rt.block_on(async {
        tokio::time::timeout(timeout(), async {
            loop {
                match live.message().await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return "ended".to_string(),
                    Err(e) => return e.to_string(),
                }
            }
        })
        .await
    });
    assert!(ended.is_ok(), "the revoked node's session stayed open");
    // Its task moves to w2.
    crate::harness::wait_for(timeout(), "both tasks on w2", || {
        let on = running_hosts(m, "s");
        if on == [w2_name.clone(), w2_name.clone()] {
            Ok(())
        } else {
            Err(format!("{on:?}"))
        }
    });
    let before = m.audit().len();

    // Every RPC with the kept identity is refused, each on a fresh connection.
    let errors: Vec<String> = rt.block_on(async {
        let ch = || skep::net::channel(&addr, tls.clone()).unwrap();
        let msg = || RaftMessage {
            payload: b"{}".to_vec(),
            format: skep::store::wire::LOG_FORMAT,
        };
        vec![
            DispatcherClient::new(ch())
                .heartbeat(HeartbeatRequest::default())
                .await
                .map(|_| ()),
            DispatcherClient::new(ch())
                .session(SessionRequest::default())
                .await
                .map(|_| ()),
            DispatcherClient::new(ch())
                .report_tasks(TaskReport::default())
                .await
                .map(|_| ()),
            DispatcherClient::new(ch())
                .get_secret(SecretRequest::default())
                .await
                .map(|_| ()),
            DispatcherClient::new(ch())
                .leave(Empty {})
                .await
                .map(|_| ()),
            CaClient::new(ch())
                .issue_node_certificate(IssueRequest::default())
                .await
                .map(|_| ()),
            ManagerClient::new(ch()).raft_vote(msg()).await.map(|_| ()),
            ManagerClient::new(ch()).propose(msg()).await.map(|_| ()),
        ]
        .into_iter()
        .map(|r| match r {
            Ok(()) => panic!("a revoked identity was served"),
            Err(e) => format!("{e:?}"),
        })
        .collect()
    });
    assert_eq!(errors.len(), 8);
    crate::harness::wait_for(timeout(), "each refusal audited", || {
        let audit = m.audit();
        let refused = audit[before..]
            .iter()
            .filter(|r| {
                r["action"] == "tls.handshake"
                    && r["outcome"] == "denied"
                    && r["details"]["reason"]
                        .as_str()
                        .is_some_and(|s| s.to_lowercase().contains("revoked"))
            })
            .count();
        if refused == 8 {
            Ok(())
        } else {
            Err(format!(
                "{refused} refusals: {:#?}\nerrors: {errors:#?}",
                &audit[before..]
            ))
        }
    });
    let audit = m.audit();
    let removal = audit
        .iter()
        .find(|r| r["action"] == "node.remove")
        .expect("the removal is audited");
    assert_eq!(removal["details"]["secrets_delivered"], "db");

    // Restarted, w1 cannot come back: it is never listed again.
    c.nodes[1].restart();
    let w1_id = c.nodes[1].id().to_string();
    wait_until(timeout(), "w1's daemon to try and fail", || {
        c.nodes[1].log().to_lowercase().contains("revoked")
    });
    assert!(
        !c.first()
            .node_ls()
            .iter()
            .any(|n| n["ID"] == w1_id.as_str()),
        "a revoked node reappeared"
    );
}

/// `(serial, not after)` of a node's certificate, from `node inspect`.
fn cert_of(m: &Node, node: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(&m.cli_ok(&["node", "inspect", node])).unwrap();
    let c = &v[0]["Description"]["Certificate"];
    (
        c["Serial"].as_str().unwrap_or("").to_string(),
        c["NotAfter"].as_str().unwrap_or("").to_string(),
    )
}

fn rfc3339(s: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap()
}

#[test]
fn short_lived_certificates_renew_on_their_own_and_tasks_keep_running() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let mut c = Cluster::init_with(1, 1, &["--cert-expiry", "10s"]);
    let (m_name, w_name) = (
        c.first().name().to_string(),
        c.workers()[0].name().to_string(),
    );
    {
        let m = c.first();
        m.cli_ok(&[
            "service",
            "create",
            "--detach",
            "--runtime",
            "exec",
            "--name",
            "steady",
            "--replicas",
            "2",
            "--",
            "/bin/sleep",
            "1000",
        ]);
    }
    let task_ids = |m: &Node| crate::harness::running_task_ids(m, "steady");
    let first = crate::harness::wait_for(timeout(), "2 running tasks", || {
        let ids = task_ids(c.first());
        if ids.len() == 2 {
            Ok(ids)
        } else {
            Err(format!("{ids:?}"))
        }
    });
    // Three renewals of each node (a 10 s certificate renews every 5-8 s).
    let mut seen: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    crate::harness::wait_for(
        std::time::Duration::from_secs(90),
        "3 renewals per node",
        || {
            for n in [&m_name, &w_name] {
                let (serial, _) = cert_of(c.first(), n);
                seen.entry(n.clone()).or_default().insert(serial);
            }
            if seen.values().all(|s| s.len() >= 4) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    );
    // Nothing was disturbed: the same tasks run, every node is Ready.
    assert_eq!(
        task_ids(c.first()),
        first,
        "tasks were replaced during renewals"
    );
    assert!(c.first().node_ls().iter().all(|n| n["Status"] == "Ready"));
    let audit = c.first().audit();
    let renewals: Vec<_> = audit
        .iter()
        .filter(|r| r["action"] == "cert.renew")
        .collect();
    assert!(renewals.len() >= 6, "{}", renewals.len());
    assert!(
        renewals
            .iter()
            .all(|r| r["details"]["old_serial"] != r["details"]["serial"])
    );

    // A longer validity applies to the next renewals.
    c.first()
        .cli_ok(&["swarm", "update", "--cert-expiry", "40s"]);
    crate::harness::wait_for(timeout(), "a 40 s certificate on the worker", || {
        let (_, not_after) = cert_of(c.first(), &w_name);
        let left = rfc3339(&not_after) - time::OffsetDateTime::now_utc();
        if left > time::Duration::seconds(15) {
            Ok(())
        } else {
            Err(format!("{left}"))
        }
    });

    // A node offline past its certificate's expiry is told to join again.
    let (_, not_after) = cert_of(c.first(), &w_name);
    c.nodes[1].kill();
    let expired_at = rfc3339(&not_after);
    crate::harness::wait_until(
        std::time::Duration::from_secs(60),
        "the worker's certificate to expire",
        || time::OffsetDateTime::now_utc() > expired_at + time::Duration::seconds(1),
    );
    c.nodes[1].restart();
    wait_until(
        timeout(),
        "the expired node to say it must join again",
        || c.nodes[1].log().contains("certificate expired"),
    );
    // ...and can, with a token.
    let token = c
        .first()
        .cli_ok(&["join-token", "-q", "worker"])
        .trim()
        .to_string();
    let addr = c.first().addr();
    let said = c.nodes[1].cli_ok(&["swarm", "join", "--token", &token, &addr]);
    assert_eq!(said.trim(), "This node joined a swarm as a worker.");
}

/// Restarts `n` and unlocks it with `key`; the result of the unlock.
fn restart_and_unlock(n: &mut Node, key: &str) -> std::process::Output {
    n.restart();
    let err = n.cli_err(&["node", "ls"]);
    assert!(
        err.contains("locked"),
        "a restarted autolocked manager is locked: {err}"
    );
    n.cli_stdin(&["swarm", "unlock"], &format!("{key}\n"))
}

/// Waits until `path` exists with contents other than `old`.
fn wait_rewritten(path: &std::path::Path, old: Option<Vec<u8>>) -> Vec<u8> {
    crate::harness::wait_for(timeout(), &format!("{} rewritten", path.display()), || {
        match std::fs::read(path) {
            Ok(b) if Some(&b) != old.as_ref() => Ok(b),
            _ => Err("not yet".to_string()),
        }
    })
}

#[test]
fn the_unlock_key_rotates_and_autolock_turns_off_and_on_without_rewriting_data() {
    let mut c = Cluster::init_with(3, 0, &["--autolock"]);
    let old = crate::harness::unlock_key(&c.init_output);
    assert_eq!(c.first().cli_ok(&["swarm", "unlock-key", "-q"]).trim(), old);
    let m3_sealed = c.nodes[2].data_dir().join("kek.sealed");
    wait_rewritten(&m3_sealed, None);
    let dek_before = std::fs::read(c.nodes[0].data_dir().join("dek.sealed")).unwrap();

    // m3 is down while the key rotates.
    c.nodes[2].kill();
    let said = c.first().cli_ok(&["swarm", "unlock-key", "--rotate"]);
    assert!(
        said.starts_with("Successfully rotated manager unlock key."),
        "{said}"
    );
    let new = c
        .first()
        .cli_ok(&["swarm", "unlock-key", "-q"])
        .trim()
        .to_string();
    assert_ne!(new, old);
    assert!(said.contains(&new));
    // The data key file is untouched: only the KEK is re-wrapped.
    wait_rewritten(&c.nodes[0].data_dir().join("kek.sealed"), None);
    assert_eq!(
        std::fs::read(c.nodes[0].data_dir().join("dek.sealed")).unwrap(),
        dek_before
    );

    // m1 opens with the new key only.
    let out = restart_and_unlock(&mut c.nodes[0], &old);
    assert_error(&out, "unlock key");
    let out = c.nodes[0].cli_stdin(&["swarm", "unlock"], &format!("{new}\n"));
    assert!(out.status.success(), "{}", crate::harness::describe(&out));

    // m3 missed the rotation: its old key still opens it, and it catches up.
    let out = restart_and_unlock(&mut c.nodes[2], &old);
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    let opens_with = |key: &str| {
        let raw = hex::decode(key.trim_start_matches("SKEP-KEY-1-")).unwrap();
        let sealed = std::fs::read(&m3_sealed).unwrap_or_default();
        skep::store::seal::Kek::from_unlock_key(&raw)
            .open_blob(skep::store::seal::RecordKind::WrappedKek, &sealed)
            .is_ok()
    };
    wait_until(timeout(), "m3's KEK re-wrapped under the new key", || {
        opens_with(&new)
    });
    let out = restart_and_unlock(&mut c.nodes[2], &old);
    assert_error(&out, "unlock key");
    let out = c.nodes[2].cli_stdin(&["swarm", "unlock"], &format!("{new}\n"));
    assert!(out.status.success(), "{}", crate::harness::describe(&out));

    // Autolock off: the KEK goes back to its 0600 file and a restart needs no key.
    wait_until(timeout(), "node ls on m1", || {
        c.first().try_node_ls().is_ok()
    });
    c.first().cli_ok(&["swarm", "update", "--autolock=false"]);
    assert_error(&c.first().cli(&["swarm", "unlock-key"]), "autolock is off");
    let kek = c.nodes[1].data_dir().join("kek");
    wait_until(timeout(), "m2's plain KEK file back", || {
        kek.exists() && !c.nodes[1].data_dir().join("kek.sealed").exists()
    });
    c.nodes[1].restart();
    wait_until(timeout(), "m2 serving without a key", || {
        c.nodes[1].try_node_ls().is_ok()
    });

    // And on again: a new key is printed once, and needed after a restart.
    wait_until(timeout(), "node ls on m1", || {
        c.first().try_node_ls().is_ok()
    });
    let said = c.first().cli_ok(&["swarm", "update", "--autolock=true"]);
    let again = crate::harness::unlock_key(&said);
    assert!(again != new && again != old);
    wait_until(timeout(), "m2's KEK sealed again", || {
        !kek.exists() && c.nodes[1].data_dir().join("kek.sealed").exists()
    });
    let out = restart_and_unlock(&mut c.nodes[1], &again);
    assert!(out.status.success(), "{}", crate::harness::describe(&out));

    let audit = c.first().audit();
    let actions: Vec<&str> = audit.iter().filter_map(|r| r["action"].as_str()).collect();
    assert!(actions.contains(&"unlock_key.read"));
    assert!(actions.contains(&"unlock_key.rotate"));
    assert_eq!(
        audit
            .iter()
            .filter(|r| r["action"] == "swarm.update" && r["target"] == "autolock")
            .count(),
        2
    );
}

/// A heartbeat answer leaves out the trust material (revoked node IDs, roots, managers'
/// certificates, workload bundle) a node says it holds, and carries all of it again once any
/// part changes: a node holding the material from before a removal learns the removed node's
/// ID on its next heartbeat. Any other digest (none, a stale or made-up one) gets all of it.
#[test]
fn a_heartbeat_leaves_out_the_trust_material_a_node_holds_until_a_removal_changes_it() {
    use skep::api::v1::{HeartbeatRequest, HeartbeatResponse};
    let c = Cluster::init(1, 2);
    let (m, w1, w2) = (c.first(), &c.workers()[0], &c.workers()[1]);
    let beat = |digest: &[u8]| -> HeartbeatResponse {
        let req = HeartbeatRequest {
            hostname: w1.name().to_string(),
            trust_digest: digest.to_vec(),
            ..HeartbeatRequest::default()
        };
        crate::harness::dispatcher_as(w1, m, |mut d| async move {
            d.heartbeat(req).await.expect("a heartbeat").into_inner()
        })
    };
    let first = beat(&[]);
    assert!(!first.trust_unchanged);
    assert_eq!(first.trust_digest.len(), 32, "{first:?}");
    assert!(!first.trust_roots.is_empty() && !first.managers.is_empty());

    let held = beat(&first.trust_digest);
    assert!(held.trust_unchanged, "{held:?}");
    assert_eq!(held.trust_digest, first.trust_digest);
    assert!(held.revoked.is_empty() && held.trust_roots.is_empty());
    assert!(held.managers.is_empty() && held.workload.is_none());
    assert!(held.is_leader && !held.manager_addrs.is_empty());
    for other in [vec![0u8; 32], first.trust_digest[..31].to_vec()] {
        let full = beat(&other);
        assert!(!full.trust_unchanged);
        assert_eq!(full.trust_roots, first.trust_roots);
    }

    let w2_id = w2.id().to_string();
    m.cli_ok(&["node", "rm", "--force", w2.name()]);
    let after = crate::harness::wait_for(timeout(), "w2 revoked in w1's next answer", || {
        let a = beat(&first.trust_digest);
        if a.revoked.contains(&w2_id) {
            Ok(a)
        } else {
            Err(format!(
                "unchanged {}, revoked {:?}",
                a.trust_unchanged, a.revoked
            ))
        }
    });
    assert!(!after.trust_unchanged);
    assert_ne!(after.trust_digest, first.trust_digest);
    assert_eq!(after.trust_roots, first.trust_roots);
    assert!(beat(&after.trust_digest).trust_unchanged);
}
