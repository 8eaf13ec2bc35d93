//! Encrypted at rest: plant marker values in the cluster's state and scan every byte of every
//! file each node wrote. Nothing secret or stored may appear in plaintext.

use skep::store::seal::Kek;

use crate::harness::{Node, contains, files_under, timeout, unlock_key, wait_until};

/// Asserts no file under any node's data directory contains any of `markers`.
fn assert_nowhere(nodes: &[&Node], markers: &[(&str, Vec<u8>)]) {
    let mut scanned = 0;
    for n in nodes {
        for f in files_under(&n.data_dir()) {
            let bytes = std::fs::read(&f).unwrap();
            scanned += bytes.len();
            for (what, m) in markers {
                assert!(
                    !contains(&bytes, m),
                    "{} holds {what} in plaintext",
                    f.display()
                );
            }
        }
    }
    assert!(
        scanned > 10_000,
        "too little was scanned ({scanned} bytes): is the data there?"
    );
}

/// A manager's KEK, from its `kek` file, or under autolock from its unlock key (and the
/// `kek.sealed` the unlock key opens, once there is one), as the daemon derives it.
fn kek_of(n: &Node, unlock_key: Option<&[u8]>) -> Kek {
    let dir = n.data_dir();
    let Some(raw) = unlock_key else {
        return Kek::from_bytes(&std::fs::read(dir.join("kek")).unwrap()).unwrap();
    };
    let derived = Kek::from_unlock_key(raw);
    match std::fs::read(dir.join("kek.sealed")) {
        Ok(sealed) => Kek::from_bytes(
            &derived
                .open_blob(skep::store::seal::RecordKind::WrappedKek, &sealed)
                .unwrap(),
        )
        .unwrap(),
        Err(_) => derived,
    }
}

/// The KEK and the store's data key (the DEK it wraps) of a manager, as markers: neither may
/// appear in any file, in any node's directory.
fn key_markers(n: &Node, unlock_key: Option<&[u8]>) -> Vec<(&'static str, Vec<u8>)> {
    let kek = kek_of(n, unlock_key);
    let dek = kek
        .unwrap(&std::fs::read(n.data_dir().join("dek.sealed")).unwrap())
        .unwrap();
    let mut out = vec![(
        "the store's data key (DEK)",
        dek.expose_bytes_for_tests().to_vec(),
    )];
    if unlock_key.is_some() {
        // Without autolock the KEK is in its own file by design; with it, nowhere.
        out.push(("the key-encryption key (KEK)", kek.expose_bytes().to_vec()));
    }
    out
}

fn secret_part(token: &str) -> String {
    token.rsplit('-').next().unwrap().to_string()
}

/// The private key of a node without autolock, opened as the node opens it.
fn node_key(n: &Node) -> Vec<u8> {
    let dir = n.data_dir();
    let kek = skep::store::seal::Kek::from_bytes(&std::fs::read(dir.join("kek")).unwrap()).unwrap();
    kek.open_blob(
        skep::store::seal::RecordKind::NodeKey,
        &std::fs::read(dir.join("node.key.sealed")).unwrap(),
    )
    .unwrap()
    .to_vec()
}

#[test]
fn no_data_directory_holds_a_secret_or_a_stored_value_in_plaintext() {
    // Host names are stored values: they live in the replicated node list and audit records.
    let m1 = Node::start("hostmarker-m1-q7zx");
    let m2 = Node::start("hostmarker-m2-q7zx");
    let w1 = Node::start("hostmarker-w1-q7zx");
    m1.cli_ok(&["swarm", "init", "--advertise-addr", &m1.addr()]);
    let wt = m1
        .cli_ok(&["join-token", "-q", "worker"])
        .trim()
        .to_string();
    let mt = m1
        .cli_ok(&["join-token", "-q", "manager"])
        .trim()
        .to_string();
    m2.cli_ok(&["swarm", "join", "--token", &mt, &m1.addr()]);
    w1.cli_ok(&["swarm", "join", "--token", &wt, &m1.addr()]);
    wait_until(timeout(), "m2 to replicate all three nodes", || {
        m2.try_node_ls().map(|l| l.len() == 3).unwrap_or(false)
    });
    let mut markers: Vec<(&str, Vec<u8>)> = vec![
        ("a host name", b"hostmarker".to_vec()),
        ("the worker token secret", secret_part(&wt).into_bytes()),
        ("the manager token secret", secret_part(&mt).into_bytes()),
        ("a PEM private key (the CA key)", b"PRIVATE KEY".to_vec()),
        ("an audit record", b"cluster.create".to_vec()),
        ("an audit record", b"token.use".to_vec()),
    ];
    // Each node's private key, and its 32-byte scalar inside the PKCS#8 structure.
    for n in [&m1, &m2, &w1] {
        let der = node_key(n);
        let scalar = der[der.len() - 32 - 70..der.len() - 70].to_vec();
        markers.push(("a node private key", der));
        markers.push(("a node private key scalar", scalar));
    }
    // The managers' data keys (each manager seals its store under its own).
    for n in [&m1, &m2] {
        markers.extend(key_markers(n, None));
    }
    assert_nowhere(&[&m1, &m2, &w1], &markers);
}

#[test]
fn with_autolock_the_data_directory_is_useless_without_the_unlock_key() {
    let mut m1 = Node::start("lockmarker-q7zx");
    let out = m1.cli_ok(&[
        "swarm",
        "init",
        "--autolock",
        "--advertise-addr",
        &m1.addr(),
    ]);
    let key = unlock_key(&out);
    let wt = m1
        .cli_ok(&["join-token", "-q", "worker"])
        .trim()
        .to_string();
    assert!(
        !m1.data_dir().join("kek").exists(),
        "an autolocked manager kept its KEK on disk"
    );
    let hex = key.trim_start_matches("SKEP-KEY-1-").to_string();
    let mut markers: Vec<(&str, Vec<u8>)> = vec![
        ("the unlock key", hex.clone().into_bytes()),
        ("the unlock key bytes", hex::decode(&hex).unwrap()),
        ("the worker token secret", secret_part(&wt).into_bytes()),
        ("a PEM private key", b"PRIVATE KEY".to_vec()),
        ("a host name", b"lockmarker".to_vec()),
    ];
    markers.extend(key_markers(&m1, Some(&hex::decode(&hex).unwrap())));
    m1.restart();
    assert_nowhere(&[&m1], &markers);
    m1.cli_err(&["node", "ls"]);
    m1.cli_stdin(&["swarm", "unlock"], &key);
    m1.cli_ok(&["node", "ls"]);
}
