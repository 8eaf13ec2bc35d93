//! Adversary tests (see `mod.rs`): audit. Refusals that leave no trace, a failed-attempt flood
//! from many sources, `audit verify` on a chain that was emptied, stripped of its checkpoints
//! or cut short, and records that name the wrong actor or are missing.

use std::path::Path;
use std::process::{Command as Proc, Output};
use std::time::Duration;

use serde_json::Value;
use skep::api::v1::ca_client::CaClient;
use skep::api::v1::manager_client::ManagerClient;
use skep::api::v1::{IssueRequest, RaftMessage};
use skep::audit::{AuditChain, AuditRecord};
use skep::store::model::{Command, Response};

use crate::harness::{
    Cluster, Node, json_lines, run, skep_bin, stderr, stdout, timeout, wait_for, write_file,
};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("tokio runtime")
}

/// Records of `action` with `outcome`.
fn records<'a>(all: &'a [Value], action: &str, outcome: &str) -> Vec<&'a Value> {
    all.iter()
        .filter(|r| r["action"] == action && r["outcome"] == outcome)
        .collect()
}

/// Calls the issuance RPC directly (no client-side checks) with a valid token.
fn issue_raw(node: &Node, token: &str, hostname: &str, advertise: &str) -> tonic::Status {
    let root = std::fs::read(node.data_dir().join("root.crt")).unwrap();
    let csr = skep_pki::NodeKey::generate().unwrap().csr_der().unwrap();
    rt().block_on(async {
        let tls = skep::net::client_config(&root, None).unwrap();
        let ch = skep::net::channel(&node.addr(), tls).unwrap();
        CaClient::new(ch)
            .issue_node_certificate(IssueRequest {
                token: token.into(),
                csr_der: csr,
                hostname: hostname.into(),
                advertise_addr: advertise.into(),
            })
            .await
            .expect_err("the join was accepted")
    })
}

#[test]
fn a_join_with_a_valid_token_refused_for_its_hostname_or_address_is_audited() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    let worker = m.cli_ok(&["join-token", "-q", "worker"]).trim().to_string();
    let manager = m
        .cli_ok(&["join-token", "-q", "manager"])
        .trim()
        .to_string();
    let long_host = format!("bad host {}", "x".repeat(5000));
    let cases: [(&str, &str, &str, &str); 3] = [
        (&worker, &long_host, "", "host name"),
        (&worker, "w-ok", "not-an-address-at-all", "not-an-address"),
        (&manager, "m-ok", "0.0.0.0:2377", "specific address"),
    ];
    for (token, host, addr, why) in cases {
        let err = issue_raw(m, token, host, addr);
        assert!(
            err.message().len() < 600,
            "the refusal echoes the input: {} bytes",
            err.message().len()
        );
        let found = wait_for(
            Duration::from_secs(10),
            &format!("a denied node.join record for the refusal ({why})"),
            || {
                let all = m.try_audit()?;
                let hit = all
                    .iter()
                    .filter(|r| r["action"] == "node.join" && r["outcome"] == "denied")
                    .find(|r| r["details"]["reason"].as_str().unwrap_or("").contains(why))
                    .cloned();
                hit.ok_or_else(|| {
                    let denied: Vec<_> = all
                        .iter()
                        .filter(|r| r["outcome"] == "denied")
                        .map(|r| format!("{} {}", r["action"], r["details"]["reason"]))
                        .collect();
                    format!(
                        "denied records: {denied:?}; the refusal said: {}",
                        err.message()
                    )
                })
            },
        );
        let peer = found["details"]["peer"].as_str().unwrap_or("");
        assert!(peer.starts_with("127."), "no peer address: {found}");
        let text = found.to_string();
        assert!(
            text.len() < 1200,
            "the record quotes all of the bad value: {} bytes",
            text.len()
        );
    }
}

/// Opens `per_source` TCP connections from each of `sources` loopback source addresses
/// (127.251.X.Y) to `addr`, sends bytes that are not TLS, and waits for each to be closed.
fn flood_not_tls(addr: &str, sources: u16, per_source: u16) {
    let target: std::net::SocketAddr = addr.parse().unwrap();
    rt().block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for s in 0..sources {
            let src = std::net::Ipv4Addr::new(127, 251, (s / 250) as u8, (s % 250) as u8 + 1);
            tasks.spawn(async move {
                use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
                for _ in 0..per_source {
                    let sock = tokio::net::TcpSocket::new_v4().unwrap();
                    sock.bind((src, 0).into()).unwrap();
                    let Ok(mut tcp) = sock.connect(target).await else {
                        continue;
                    };
                    let _ = tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
                    let mut buf = [0u8; 256];
                    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf)).await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    });
}

#[test]
fn failed_attempts_from_many_sources_are_capped_across_all_of_them() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    // 200 sources, 12 attempts each: each source stays near its own limit (10 a minute).
    flood_not_tls(&m.addr(), 200, 12);
    let from_flood = |all: &[Value]| {
        all.iter()
            .filter(|r| r["outcome"] == "denied")
            .filter(|r| {
                r["details"]["peer"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("127.251."))
            })
            .count()
    };
    let all = wait_for(
        timeout(),
        "the record saying failed attempts are capped",
        || {
            let all = m.try_audit()?;
            if !records(&all, "audit.failures.capped", "denied").is_empty() {
                Ok(all)
            } else {
                Err(format!(
                    "{} records of failures from the 200 flooding sources, none saying the rest are capped",
                    from_flood(&all)
                ))
            }
        },
    );
    // The cap across all sources, and the record saying it was reached.
    let n = from_flood(&all);
    let cap = skep::manager::limiter::GLOBAL_MAX_PER_WINDOW as usize + 1;
    assert!(n <= cap, "{n} records of the flood, more than {cap}");
    // The daemon still serves, and still records its own operators' actions.
    m.cli_ok(&["join-token", "-q", "worker"]);
    wait_for(timeout(), "the token read recorded after the flood", || {
        let all = m.try_audit()?;
        let last = all.last().cloned().unwrap_or_default();
        if all
            .iter()
            .rev()
            .take(5)
            .any(|r| r["action"] == "token.read")
        {
            Ok(())
        } else {
            Err(format!("last record: {last}"))
        }
    });
}

/// `skep <args>` with its state directory (`SKEP_CONFIG`) at `config`.
fn cli_with_config(config: &Path, args: &[&str]) -> Output {
    run(
        Proc::new(skep_bin()).env("SKEP_CONFIG", config).args(args),
        None,
    )
}

/// The export's records rebuilt without any checkpoint, re-hashed so every link holds: what
/// someone who can write the export (or the store) but not sign makes of it.
fn strip_checkpoints(records: &[AuditRecord]) -> Vec<AuditRecord> {
    let mut chain = AuditChain::default();
    for r in records {
        if r.event.action != "audit.checkpoint" {
            chain.append(r.event.clone());
        }
    }
    chain.records().to_vec()
}

fn lines_of(header: &str, records: &[AuditRecord]) -> String {
    let mut out = format!("{header}\n");
    for r in records {
        out.push_str(&serde_json::to_string(r).unwrap());
        out.push('\n');
    }
    out
}

#[test]
fn verify_refuses_an_empty_stripped_or_cut_chain_and_remembers_the_newest_checkpoint() {
    let c = Cluster::init_opts(1, 0, &[], &["--audit-checkpoint-records", "4"]);
    let m = c.first();
    let config = tempfile::tempdir().unwrap();
    let cfg = config.path().join("skep");
    wait_for(timeout(), "three audit checkpoints", || {
        m.cli(&["join-token", "-q", "worker"]);
        let out = m.cli(&["audit", "ls", "--json", "--action", "audit.checkpoint"]);
        let n = json_lines(&stdout(&out)).len();
        if n >= 3 { Ok(()) } else { Err(format!("{n}")) }
    });
    // The client verifies the chain online: it remembers the newest checkpoint.
    let online = cli_with_config(&cfg, &["--host", &m.host(), "audit", "verify"]);
    assert!(online.status.success(), "{}", stderr(&online));
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.jsonl");
    m.cli_ok(&[
        "audit",
        "export",
        "--format",
        "jsonl",
        "-o",
        full.to_str().unwrap(),
    ]);
    let text = std::fs::read_to_string(&full).unwrap();
    let header = text.lines().next().unwrap().to_string();
    let key = serde_json::from_str::<Value>(&header).unwrap()["public_key"]
        .as_str()
        .unwrap()
        .to_string();
    let export = skep::audit::export::parse(&text).unwrap();
    let verify = |file: &Path| {
        cli_with_config(
            &cfg,
            &[
                "audit",
                "verify",
                "--file",
                file.to_str().unwrap(),
                "--public-key",
                &key,
            ],
        )
    };

    // Each attack is tried; every one that passes is named at the end.
    let mut passed = Vec::new();
    let mut expect_refusal = |what: &str, out: &Output, needle: &str| {
        let err = stderr(out);
        if out.status.success() || !err.contains(needle) {
            passed.push(format!(
                "{what}: exit {:?}, stdout {:?}, stderr {:?} (expected an error saying {needle:?})",
                out.status.code(),
                stdout(out).trim(),
                err.trim()
            ));
        }
    };

    // An export with no records at all vouches for nothing.
    let empty = dir.path().join("empty.jsonl");
    write_file(&empty, &format!("{header}\n"));
    expect_refusal("an empty export", &verify(&empty), "no records");

    // The whole export, made after that, verifies; its newest checkpoint is remembered.
    let ok = verify(&full);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let newest = export
        .records
        .iter()
        .rev()
        .find(|r| r.event.action == "audit.checkpoint")
        .unwrap()
        .seq;

    // Every checkpoint stripped and the rest re-hashed: it disagrees with what was seen.
    let stripped = dir.path().join("stripped.jsonl");
    write_file(
        &stripped,
        &lines_of(&header, &strip_checkpoints(&export.records)),
    );
    let needle = format!("checkpoint {newest}");
    expect_refusal("checkpoints stripped", &verify(&stripped), &needle);

    // The tail cut off just before the newest checkpoint: a chain that ends before it.
    let cut = dir.path().join("cut.jsonl");
    let kept: Vec<AuditRecord> = export
        .records
        .iter()
        .filter(|r| r.seq < newest)
        .cloned()
        .collect();
    write_file(&cut, &lines_of(&header, &kept));
    expect_refusal("the tail cut", &verify(&cut), "cut off its tail");
    assert!(
        passed.is_empty(),
        "verify vouched for:\n{}",
        passed.join("\n")
    );
    // Online, the daemon's chain still reaches it.
    let online = cli_with_config(&cfg, &["--host", &m.host(), "audit", "verify"]);
    assert!(online.status.success(), "{}", stderr(&online));
}

#[test]
fn an_operators_token_read_and_rotation_name_the_operator() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    let tmp = tempfile::tempdir().unwrap();
    let dir = crate::harness::operators::enrol(m, tmp.path(), "tok-admin", "admin", &[]);
    let as_op = |args: &[&str]| {
        run(
            Proc::new(skep_bin())
                .env_remove("SKEP_HOST")
                .env("SKEP_CONFIG", dir.join("config"))
                .args(["--host", &format!("tcp://{}", m.addr()), "--cert-path"])
                .arg(&dir)
                .args(args),
            None,
        )
    };
    for args in [
        &["join-token", "-q", "worker"][..],
        &["join-token", "-q", "--rotate", "manager"][..],
    ] {
        let out = as_op(args);
        assert!(out.status.success(), "{}", crate::harness::describe(&out));
    }
    let all = m.audit();
    let by: Vec<String> = all
        .iter()
        .filter(|r| r["action"] == "token.read" || r["action"] == "token.rotate")
        .map(|r| {
            format!(
                "{}:{}:{}",
                r["action"], r["actor"]["kind"], r["actor"]["id"]
            )
        })
        .collect();
    for action in ["token.read", "token.rotate"] {
        assert!(
            by.contains(&format!("\"{action}\":\"operator\":\"tok-admin\"")),
            "{action} not recorded as the operator: {by:?}"
        );
    }
}

/// `Manager.Propose` called with a manager's own kept certificate (a thief with its data dir).
fn propose_as(node: &Node, via: &Node, cmd: &Command) -> Result<Response, tonic::Status> {
    let creds = crate::harness::credentials_of(node);
    let tls = skep::net::client_config(&creds.root_der, Some(&creds)).unwrap();
    let payload = skep::store::wire::encode(cmd).unwrap();
    rt().block_on(async {
        let ch = skep::net::channel(&via.addr(), tls).unwrap();
        let r = ManagerClient::new(ch)
            .propose(RaftMessage {
                payload,
                format: skep::store::wire::LOG_FORMAT,
            })
            .await?;
        Ok(skep::store::wire::decode::<Response>(&r.into_inner().payload).unwrap())
    })
}

/// A manager of another skep build sends Raft messages whose entries this build would misread
/// (postcard has no field names): a message of another log format is refused before it is
/// decoded, naming both formats, and nothing of it is applied.
#[test]
fn a_raft_message_of_another_log_format_is_refused_naming_both() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    let creds = crate::harness::credentials_of(m);
    let tls = skep::net::client_config(&creds.root_der, Some(&creds)).unwrap();
    let record = skep::audit::AuditEvent::now(
        skep::audit::Actor::node(&c.ids()[0]),
        "from.another.build",
        "x",
        skep::audit::Outcome::Ok,
    );
    let payload = skep::store::wire::encode(&Command::Audit(record)).unwrap();
    let err = rt()
        .block_on(async {
            let ch = skep::net::channel(&m.addr(), tls).unwrap();
            ManagerClient::new(ch)
                .propose(RaftMessage { payload, format: 0 })
                .await
        })
        .expect_err("a message of another log format was taken");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
    let text = err.message();
    assert!(
        text.contains("format 0")
            && text.contains(&format!("format {}", skep::store::wire::LOG_FORMAT))
            && text.contains("same skep build"),
        "{text}"
    );
    assert!(
        !m.audit()
            .iter()
            .any(|r| r["action"] == "from.another.build"),
        "the message of another format was applied"
    );
}

#[test]
fn a_proposal_that_changes_state_without_a_record_is_refused_and_audited() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    let id = c.ids()[0].clone();
    let labels =
        |v: &str| std::collections::BTreeMap::from([("secure".to_string(), v.to_string())]);
    // A label that entitlement may rest on, set silently.
    let silent = Command::UpdateNode {
        id: id.clone(),
        availability: None,
        labels: labels("true"),
        at: skep::util::now_rfc3339(),
    };
    let answer = propose_as(m, m, &silent);
    let inspect = m.cli_ok(&["node", "inspect", &id]);
    assert!(
        !inspect.contains("\"secure\""),
        "the unaudited change was applied ({answer:?}): {inspect}"
    );
    assert!(
        !matches!(answer, Ok(Response::Ok)),
        "the unaudited change was accepted"
    );
    wait_for(timeout(), "the refused proposal in the audit log", || {
        let all = m.try_audit()?;
        let hit = records(&all, "raft.propose", "denied")
            .into_iter()
            .any(|r| r["actor"]["id"] == id.as_str() && r["actor"]["kind"] == "node");
        if hit {
            Ok(())
        } else {
            Err(format!("{} records", all.len()))
        }
    });

    // With a made-up record that names someone else, the record also names the proposer.
    let disguised = Command::Batch(vec![
        Command::UpdateNode {
            id: id.clone(),
            availability: None,
            labels: labels("maybe"),
            at: skep::util::now_rfc3339(),
        },
        Command::Audit(skep::audit::AuditEvent::now(
            skep::audit::Actor::local_admin("someone-else"),
            "node.update",
            &id,
            skep::audit::Outcome::Ok,
        )),
    ]);
    let answer = propose_as(m, m, &disguised);
    assert!(matches!(answer, Ok(Response::Ok)), "{answer:?}");
    let all = m.audit();
    let rec = all
        .iter()
        .rev()
        .find(|r| r["action"] == "node.update" && r["actor"]["id"] == "someone-else")
        .expect("the disguised record");
    assert_eq!(rec["details"]["proposed_by"], id.as_str(), "{rec}");
}

#[test]
fn raft_voter_changes_are_audited() {
    let c = Cluster::init(2, 0);
    let m = c.first();
    let second = c.ids()[1].clone();
    let voter = |action: &str| {
        let action = action.to_string();
        let second = second.clone();
        move || -> Result<(), String> {
            let all = m.try_audit()?;
            let hit = all
                .iter()
                .any(|r| r["action"] == action.as_str() && r["target"] == second.as_str());
            if hit {
                Ok(())
            } else {
                let raft: Vec<_> = all
                    .iter()
                    .filter(|r| r["action"].as_str().unwrap_or("").starts_with("raft."))
                    .map(|r| format!("{} {}", r["action"], r["target"]))
                    .collect();
                Err(format!("raft records: {raft:?}"))
            }
        }
    };
    wait_for(
        timeout(),
        "a raft.voter.add record for the second manager",
        voter("raft.voter.add"),
    );
    m.cli_ok(&["node", "demote", &second]);
    wait_for(
        timeout(),
        "a raft.voter.remove record for the demoted manager",
        voter("raft.voter.remove"),
    );
}
