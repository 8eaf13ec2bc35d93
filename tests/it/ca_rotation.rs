//! Root CA rotation with real daemons: `swarm ca --rotate` moves every node to a new root
//! (cross-signed by the old one while nodes move) without stopping tasks; the old root is
//! retired, join tokens change digest, an old-token join fails, and an operator's own root is
//! checked before anything changes.

use crate::harness::{Cluster, Node, assert_error, timeout, wait_for};

/// The DER certificates in a node's file (`root.crt` holds the trusted roots).
fn certs_in(n: &Node, file: &str) -> Vec<Vec<u8>> {
    std::fs::read(n.data_dir().join(file))
        .map(|b| skep_pki::split_der_certs(&b).unwrap())
        .unwrap_or_default()
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    p.contents
}

/// Waits until every node trusts only `root` and holds a certificate it issued directly.
fn wait_moved(c: &Cluster, root: &[u8]) {
    for n in &c.nodes {
        wait_for(timeout(), &format!("{} on the new root", n.name()), || {
            let roots = certs_in(n, "root.crt");
            let leaf = std::fs::read(n.data_dir().join("node.crt")).unwrap_or_default();
            let issued = skep_pki::verify_issued(root, &leaf, time::OffsetDateTime::now_utc());
            if roots == vec![root.to_vec()] && issued.is_ok() {
                Ok(())
            } else {
                Err(format!("{} roots, leaf: {issued:?}", roots.len()))
            }
        });
    }
}

#[test]
fn swarm_ca_rotate_moves_every_node_to_a_new_root_without_stopping_tasks() {
    if !crate::harness::require(crate::harness::Runtime::Exec) {
        return;
    }
    let c = Cluster::init(2, 2);
    let m = c.first();
    let tasks = crate::harness::start_steady_everywhere(m, 4);
    let old_root = pem_to_der(&m.cli_ok(&["swarm", "ca", "-q"]));
    assert_eq!(certs_in(m, "root.crt"), vec![old_root.clone()]);
    let old_worker = m.cli_ok(&["join-token", "-q", "worker"]).trim().to_string();

    // Bad input first: a key that is not the certificate's, or half a pair, changes nothing.
    let dir = tempfile::tempdir().unwrap();
    let cluster_id =
        skep_pki::NodeCertInfo::from_der(&std::fs::read(m.data_dir().join("node.crt")).unwrap())
            .unwrap()
            .cluster_id;
    let now = time::OffsetDateTime::now_utc();
    let external = skep_pki::RootCa::generate(&cluster_id, time::Duration::days(30), now).unwrap();
    let other = skep_pki::RootCa::generate(&cluster_id, time::Duration::days(30), now).unwrap();
    let cert_file = dir.path().join("ca.pem");
    let key_file = dir.path().join("ca.key");
    let wrong_key = dir.path().join("other.key");
    std::fs::write(&cert_file, external.cert_pem()).unwrap();
    std::fs::write(&key_file, external.key_pem().as_str()).unwrap();
    std::fs::write(&wrong_key, other.key_pem().as_str()).unwrap();
    let (cert_arg, key_arg, wrong_arg) = (
        cert_file.to_str().unwrap(),
        key_file.to_str().unwrap(),
        wrong_key.to_str().unwrap(),
    );
    assert_error(
        &m.cli(&[
            "swarm",
            "ca",
            "--rotate",
            "--ca-cert",
            cert_arg,
            "--ca-key",
            wrong_arg,
        ]),
        "does not belong",
    );
    crate::harness::assert_usage_error(&m.cli(&["swarm", "ca", "--rotate", "--ca-cert", cert_arg]));
    assert_eq!(pem_to_der(&m.cli_ok(&["swarm", "ca", "-q"])), old_root);

    // Rotate to a root skep makes: progress, then the new tokens and the new root.
    let said = m.cli_ok(&["swarm", "ca", "--rotate"]);
    assert!(said.contains("rotated TLS certificates:"), "{said}");
    assert!(said.contains("4/4 nodes"), "{said}");
    assert!(said.contains("Root CA rotated to"), "{said}");
    let new_root = pem_to_der(&m.cli_ok(&["swarm", "ca", "-q"]));
    assert_ne!(new_root, old_root);
    wait_moved(&c, &new_root);

    // Tokens: same secret, new digest; printed by the rotation.
    let new_worker = m.cli_ok(&["join-token", "-q", "worker"]).trim().to_string();
    assert!(said.contains(&new_worker), "{said}");
    let secret = |t: &str| t.rsplit_once('-').map(|(_, s)| s.to_string());
    assert_eq!(secret(&new_worker), secret(&old_worker));
    assert_ne!(new_worker, old_worker);

    // Nothing was disturbed: every node Ready, the same tasks.
    c.wait_all_ready(0);
    assert_eq!(
        crate::harness::running_task_ids(m, "steady"),
        tasks,
        "tasks were replaced during the rotation"
    );

    // An old-token join fails; a new-token join works and lands on the new root.
    let late = Node::start("late");
    assert_error(
        &late.cli(&["swarm", "join", "--token", &old_worker, &m.addr()]),
        "root CA rotation",
    );
    late.cli_ok(&["swarm", "join", "--token", &new_worker, &m.addr()]);
    assert_eq!(certs_in(&late, "root.crt"), vec![new_root.clone()]);

    // Rotate again, to the operator's own root: it works the same way.
    let said = m.cli_ok(&[
        "swarm",
        "ca",
        "--rotate",
        "--ca-cert",
        cert_arg,
        "--ca-key",
        key_arg,
    ]);
    assert!(said.contains("5/5 nodes"), "{said}");
    assert_eq!(
        pem_to_der(&m.cli_ok(&["swarm", "ca", "-q"])),
        external.cert_der()
    );
    wait_moved(&c, external.cert_der());

    let audit = m.audit();
    let rotations = audit.iter().filter(|r| r["action"] == "ca.rotate").count();
    let done = audit
        .iter()
        .filter(|r| r["action"] == "ca.rotate.done")
        .count();
    assert_eq!(
        (rotations, done),
        (2, 2),
        "ca.rotate / ca.rotate.done records"
    );
}
