//! The trust lifecycle with real daemons: join tokens rotate (the old one is refused at once,
//! nodes already joined are unaffected, the rotation is audited with its actor).

use crate::harness::{Cluster, Node, assert_error, timeout, wait_until};

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
