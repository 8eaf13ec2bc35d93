//! Operators with real daemons and real operator certificates: each default role tries each
//! kind of Control call over mTLS and gets exactly what `policies/rbac.cedar` says; denials
//! name the operator and are audited; revocation, a foreign certificate, an expired one, a
//! taken name and an invalid RBAC policy are refused; contexts pick the manager.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::{
    Cluster, as_operator, assert_error, enrol, run, skep_bin, stdout, timeout, wait_until,
};

#[test]
fn each_default_role_gets_exactly_what_the_rbac_policy_says() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    let tmp = tempfile::tempdir().unwrap();
    let roles = ["admin", "deployer", "auditor"];
    let dirs: Vec<PathBuf> = roles
        .iter()
        .map(|r| enrol(m, tmp.path(), &format!("op-{r}"), r, &[]))
        .collect();

    // (what, the command, the roles that may run it)
    type Case<'a> = (&'a str, Vec<String>, Option<&'a str>, &'a [&'a str]);
    let cases = |r: &str| -> Vec<Case<'static>> {
        vec![
            (
                "read nodes",
                vec!["node".into(), "ls".into()],
                None,
                &["admin", "deployer", "auditor"],
            ),
            (
                "list operators",
                vec!["operator".into(), "ls".into()],
                None,
                &["admin", "deployer", "auditor"],
            ),
            (
                "deploy a service",
                [
                    "service",
                    "create",
                    "--detach",
                    "--runtime",
                    "exec",
                    "--name",
                ]
                .iter()
                .map(|s| s.to_string())
                .chain([format!("svc-{r}"), "--".into(), "/bin/true".into()])
                .collect(),
                None,
                &["admin", "deployer"],
            ),
            (
                "create a secret",
                vec![
                    "secret".into(),
                    "create".into(),
                    format!("sec-{r}"),
                    "-".into(),
                ],
                Some("s3cret"),
                &["admin"],
            ),
            (
                "read a join token",
                vec!["join-token".into(), "-q".into(), "worker".into()],
                None,
                &["admin"],
            ),
            (
                "read the audit log",
                vec!["audit".into(), "ls".into(), "--json".into()],
                None,
                &["admin", "auditor"],
            ),
            (
                "change swarm settings",
                vec![
                    "swarm".into(),
                    "update".into(),
                    "--cert-expiry".into(),
                    "2h".into(),
                ],
                None,
                &["admin"],
            ),
            (
                "sign operators",
                vec!["operator".into(), "revoke".into(), "nobody".into()],
                None,
                &["admin"],
            ),
        ]
    };
    let mut report = Vec::new();
    for (role, dir) in roles.iter().zip(&dirs) {
        for (what, args, stdin, allowed) in cases(role) {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = as_operator(m, dir, &args, stdin);
            let err = crate::harness::stderr(&out);
            let denied = err.contains("permission denied");
            let may = allowed.contains(role);
            // "sign operators" by an admin reaches the handler: `nobody` is not found.
            let ok = if may {
                !denied && (out.status.success() || err.contains("not found"))
            } else {
                denied && err.contains(&format!("operator op-{role} ({role}) may not"))
            };
            if !ok {
                report.push(format!(
                    "{role} / {what}: expected {}, got: {}",
                    if may { "allowed" } else { "denied" },
                    crate::harness::describe(&out)
                ));
            }
        }
    }
    assert!(report.is_empty(), "{}", report.join("\n"));

    // Calls only the node itself may make are refused over the network, even to an admin.
    assert_error(
        &as_operator(m, &dirs[0], &["swarm", "leave", "--force"], None),
        "local socket",
    );
    // The local socket stays the node's root administrator; operators' actions are audited
    // with their names, denials too.
    let audit = m.audit();
    assert!(
        audit.iter().any(|r| r["actor"]["kind"] == "operator"
            && r["actor"]["id"] == "op-admin"
            && r["action"] == "secret.create"),
        "no audited operator write"
    );
    assert!(
        audit
            .iter()
            .any(|r| r["actor"]["kind"] == "operator" && r["outcome"] == "denied"),
        "no audited denial"
    );
    assert!(
        audit
            .iter()
            .any(|r| r["action"] == "operator.sign" && r["target"] == "op-auditor")
    );
    // `operator ls` shows them, with roles.
    let listed = m.cli_ok(&["operator", "ls"]);
    for r in roles {
        assert!(
            listed.contains(&format!("op-{r}")) && listed.contains(r),
            "{listed}"
        );
    }

    // Revocation: the deployer is cut off at once, and audited.
    m.cli_ok(&["operator", "revoke", "op-deployer"]);
    let out = as_operator(m, &dirs[1], &["node", "ls"], None);
    assert!(
        !out.status.success(),
        "a revoked operator still works: {}",
        stdout(&out)
    );
    assert!(
        m.audit()
            .iter()
            .any(|r| r["action"] == "operator.revoke" && r["target"] == "op-deployer")
    );
    // Its name cannot be signed again while its certificate lives.
    let again = m.cli(&[
        "operator",
        "sign",
        "--role",
        "admin",
        "--name",
        "op-deployer",
        dirs[1].join("op-deployer.csr").to_str().unwrap(),
    ]);
    assert_error(&again, "was revoked");
    // A taken name is refused, nothing changed.
    let taken = m.cli(&[
        "operator",
        "sign",
        "--role",
        "admin",
        "--name",
        "op-auditor",
        dirs[2].join("op-auditor.csr").to_str().unwrap(),
    ]);
    assert_error(&taken, "already exists");

    // Contexts: the same manager, without flags.
    let cfg = tmp.path().join("ctx");
    let ctx = |args: &[&str]| {
        run(
            Command::new(skep_bin())
                .env_remove("SKEP_HOST")
                .env_remove("SKEP_CERT_PATH")
                .env("SKEP_CONFIG", &cfg)
                .args(args),
            None,
        )
    };
    let host = format!("tcp://{}", m.addr());
    let made = ctx(&[
        "context",
        "create",
        "prod",
        "--host",
        &host,
        "--cert-dir",
        dirs[2].to_str().unwrap(),
    ]);
    assert!(made.status.success(), "{}", crate::harness::describe(&made));
    assert!(ctx(&["context", "use", "prod"]).status.success());
    let ls = ctx(&["node", "ls", "--format", "json"]);
    assert!(ls.status.success(), "{}", crate::harness::describe(&ls));
    assert!(stdout(&ctx(&["context", "ls"])).contains("prod *"));
    // An auditor through the context is still an auditor.
    assert_error(
        &ctx(&["join-token", "worker"]),
        "may not read or rotate join tokens",
    );
}

#[test]
fn foreign_expired_and_bad_operator_credentials_and_policies_are_refused() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    let tmp = tempfile::tempdir().unwrap();

    // A certificate from another CA that claims this cluster: refused at the handshake.
    let good = enrol(m, tmp.path(), "short", "admin", &["--expiry", "10s"]);
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    let cluster =
        skep_pki::NodeCertInfo::from_der(&std::fs::read(m.data_dir().join("node.crt")).unwrap())
            .unwrap()
            .cluster_id;
    let now = time::OffsetDateTime::now_utc();
    let other = skep_pki::RootCa::generate(&cluster, time::Duration::days(1), now).unwrap();
    let key = skep_pki::NodeKey::generate().unwrap();
    let csr = skep_pki::Csr::from_der(&key.csr_der().unwrap()).unwrap();
    let cert = other
        .issue_operator(&csr, "mallory", time::Duration::hours(1), now)
        .unwrap();
    std::fs::write(foreign.join("cert.pem"), cert.pem).unwrap();
    std::fs::write(foreign.join("key.pem"), key.pkcs8_pem().as_str()).unwrap();
    std::fs::copy(good.join("ca.pem"), foreign.join("ca.pem")).unwrap();
    let out = as_operator(m, &foreign, &["node", "ls"], None);
    assert!(
        !out.status.success(),
        "a foreign operator certificate was accepted"
    );

    // A valid one works until it expires, then is refused.
    assert!(
        as_operator(m, &good, &["node", "ls"], None)
            .status
            .success()
    );
    let not_after = skep_pki::OperatorCertInfo::from_der(
        &pem::parse(std::fs::read(good.join("cert.pem")).unwrap())
            .unwrap()
            .into_contents(),
    )
    .unwrap()
    .not_after;
    wait_until(timeout(), "the operator certificate to expire", || {
        time::OffsetDateTime::now_utc() > not_after + time::Duration::seconds(1)
    });
    assert!(
        !as_operator(m, &good, &["node", "ls"], None)
            .status
            .success(),
        "an expired operator certificate was accepted"
    );

    // Bad sign requests: a bad role, a bad name, a garbage CSR, an expiry out of bounds.
    let csr_file = good.join("short.csr");
    let csr_arg = csr_file.to_str().unwrap();
    assert_error(
        &m.cli(&[
            "operator", "sign", "--role", "Boss!", "--name", "x1", csr_arg,
        ]),
        "invalid role",
    );
    assert_error(
        &m.cli(&[
            "operator", "sign", "--role", "admin", "--name", "Bad Name", csr_arg,
        ]),
        "invalid operator name",
    );
    assert_error(
        &m.cli(&[
            "operator", "sign", "--role", "admin", "--name", "x2", "--expiry", "90d", csr_arg,
        ]),
        "--expiry",
    );
    let garbage = tmp.path().join("garbage.csr");
    std::fs::write(&garbage, b"not a csr").unwrap();
    assert_error(
        &m.cli(&[
            "operator",
            "sign",
            "--role",
            "admin",
            garbage.to_str().unwrap(),
        ]),
        "certificate signing request",
    );

    // An invalid RBAC policy is refused, the old one stays.
    let before = m.cli_ok(&["policy", "get", "--rbac", "--digest"]);
    let bad = tmp.path().join("bad.cedar");
    std::fs::write(
        &bad,
        "permit (principal, action == Skep::Action::\"Fly\", resource);",
    )
    .unwrap();
    assert_error(
        &m.cli(&["policy", "set", "--rbac", bad.to_str().unwrap()]),
        "policy refused",
    );
    assert_eq!(m.cli_ok(&["policy", "get", "--rbac", "--digest"]), before);
    // A valid one replaces it: auditors may now read tokens too.
    let text = format!(
        "{}\npermit (principal in Skep::Role::\"auditor\", action == Skep::Action::\"ManageTokens\", resource);\n",
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/rbac.cedar"))
            .unwrap()
    );
    let newer = tmp.path().join("new.cedar");
    std::fs::write(&newer, text).unwrap();
    m.cli_ok(&["policy", "set", "--rbac", newer.to_str().unwrap()]);
    let auditor = enrol(m, tmp.path(), "aud", "auditor", &[]);
    let out = as_operator(m, &auditor, &["join-token", "-q", "worker"], None);
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
}

/// `swarm ca` is a read for every role, but `--rotate` is for admins only: the deployer and
/// the auditor are refused before the handler looks at the key; the admin reaches it and is
/// refused only for the mismatched key. The root never changes.
#[test]
fn only_an_admin_may_rotate_the_root_ca() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    let tmp = tempfile::tempdir().unwrap();
    let cluster =
        skep_pki::NodeCertInfo::from_der(&std::fs::read(m.data_dir().join("node.crt")).unwrap())
            .unwrap()
            .cluster_id;
    let now = time::OffsetDateTime::now_utc();
    let external = skep_pki::RootCa::generate(&cluster, time::Duration::days(30), now).unwrap();
    let other = skep_pki::RootCa::generate(&cluster, time::Duration::days(30), now).unwrap();
    let cert = tmp.path().join("new-ca.pem");
    let wrong_key = tmp.path().join("other.key");
    std::fs::write(&cert, external.cert_pem()).unwrap();
    std::fs::write(&wrong_key, other.key_pem().as_str()).unwrap();
    let root = m.cli_ok(&["swarm", "ca", "-q"]);
    let rotate = [
        "swarm",
        "ca",
        "--rotate",
        "--ca-cert",
        cert.to_str().unwrap(),
        "--ca-key",
        wrong_key.to_str().unwrap(),
    ];
    for role in ["admin", "deployer", "auditor"] {
        let dir = enrol(m, tmp.path(), &format!("ca-{role}"), role, &[]);
        // Reading the root is for everyone.
        let read = as_operator(m, &dir, &["swarm", "ca", "-q"], None);
        assert_eq!(
            stdout(&read),
            root,
            "{role}: {}",
            crate::harness::describe(&read)
        );
        let out = as_operator(m, &dir, &rotate, None);
        if role == "admin" {
            assert_error(&out, "does not belong");
        } else {
            assert_error(&out, &format!("operator ca-{role} ({role}) may not"));
        }
        assert_eq!(
            m.cli_ok(&["swarm", "ca", "-q"]),
            root,
            "{role} moved the root"
        );
    }
    let audit = m.audit();
    assert!(
        !audit
            .iter()
            .any(|r| r["action"] == "ca.rotate" && r["outcome"] == "ok"),
        "a rotation was recorded"
    );
    for role in ["deployer", "auditor"] {
        assert!(
            audit
                .iter()
                .any(|r| r["actor"]["id"] == format!("ca-{role}").as_str()
                    && r["outcome"] == "denied"),
            "the {role}'s refused rotation is not audited"
        );
    }
}

/// The local socket makes its caller the node's root administrator, so only the daemon's own
/// user may connect: mode 0600, and another user (`nobody`) is refused by the kernel, though
/// it can reach the socket's directory.
#[test]
fn only_the_daemons_user_may_use_the_local_socket() {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let c = Cluster::init(1, 0);
    let m = c.first();
    let meta = std::fs::metadata(m.socket()).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "the admin socket's mode"
    );
    // No leftover of how it was made.
    let dir = m.socket().parent().unwrap().to_path_buf();
    let stray: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".skep-"))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");
    // Switching to another user needs root, as the exec runtime does.
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    // Only the socket's own mode stands in the way: its directory may be entered.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let as_nobody = || {
        run(
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(skep_bin())
                .env_remove("SKEP_HOST")
                .env("SKEP_CONFIG", "/nonexistent/skep-config")
                .args(["--host", &m.host(), "node", "ls", "-q"]),
            None,
        )
    };
    let out = as_nobody();
    assert!(
        !out.status.success(),
        "another user used the admin socket: {}",
        crate::harness::describe(&out)
    );
    assert_error(&out, "ermission denied");
    // The same command works once the socket lets everyone in (so the refusal above was the
    // socket's mode, not the setup).
    std::fs::set_permissions(m.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let control = as_nobody();
    std::fs::set_permissions(m.socket(), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(
        control.status.success(),
        "the control run failed: {}",
        crate::harness::describe(&control)
    );
}

/// Revocation cuts an operator's live connections, not just its next ones: a `--follow`
/// stream held open ends at once, and the next connection is refused at the handshake, with
/// the refusal on the audit chain.
#[test]
fn revoking_an_operator_ends_its_open_stream() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};
    let c = Cluster::init(1, 0);
    let m = c.first();
    let tmp = tempfile::tempdir().unwrap();
    let dir = enrol(m, tmp.path(), "watcher", "auditor", &[]);
    let mut child = Command::new(skep_bin())
        .env_remove("SKEP_HOST")
        .env("SKEP_CONFIG", dir.join("config"))
        .args(["--host", &format!("tcp://{}", m.addr())])
        .args(["--cert-path", dir.to_str().unwrap()])
        .args(["audit", "ls", "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The header is printed once the stream is open.
    let header = rx.recv_timeout(timeout());
    assert!(
        matches!(&header, Ok(Ok(_))),
        "the follow stream did not open: {header:?}"
    );
    m.cli_ok(&["operator", "revoke", "watcher"]);
    let revoked_at = Instant::now();
    let deadline = Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if revoked_at.elapsed() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(20)); // polling the child, with a deadline
    };
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the revoked operator's follow stream was still open after {deadline:?}");
    };
    assert!(
        !status.success(),
        "the follow ended as if cleanly: {status}"
    );

    // Its next connection is refused at the handshake, and that is audited.
    let out = as_operator(m, &dir, &["audit", "ls"], None);
    assert!(!out.status.success(), "{}", crate::harness::describe(&out));
    wait_until(
        timeout(),
        "a denied handshake record naming the revocation",
        || {
            m.audit().iter().any(|r| {
                r["action"] == "tls.handshake"
                    && r["outcome"] == "denied"
                    && r["details"]["reason"]
                        .as_str()
                        .is_some_and(|why| why.to_lowercase().contains("revoked"))
            })
        },
    );
}
