//! Raft traffic is bounded and compact: a manager that was down catches up across large
//! entries, a new manager joins through a snapshot of a large state, and a manager that cannot
//! take the log is never made a voter.

use std::path::Path;
use std::process::Command;

use crate::harness::{Cluster, Node, secret_names, timeout, wait_for};

const BIG: usize = 500 * 1024;

/// Writes a 500 KiB secret value unique to `seed` (bytes of every value, not just ASCII).
fn big_value(dir: &Path, seed: u8) -> std::path::PathBuf {
    let path = dir.join(format!("big-{seed}"));
    let v: Vec<u8> = (0..BIG)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    std::fs::write(&path, v).unwrap();
    path
}

fn create_big(node: &Node, dir: &Path, name: &str, seed: u8) {
    let path = big_value(dir, seed);
    node.cli_ok(&["secret", "create", name, path.to_str().unwrap()]);
}

fn wait_secrets(node: &Node, want: &[String]) {
    wait_for(
        timeout(),
        &format!("{} to list {} secrets", node.name(), want.len()),
        || {
            let got = secret_names(node, &[])?;
            if got == want {
                Ok(())
            } else {
                Err(format!("it lists {got:?}"))
            }
        },
    );
}

#[test]
fn a_manager_that_was_down_catches_up_across_large_secrets() {
    let mut c = Cluster::init(3, 0);
    let tmp = tempfile::tempdir().unwrap();
    c.nodes[2].kill();
    let mut want: Vec<String> = (0..10u8).map(|i| format!("big{i}")).collect();
    for (i, name) in want.iter().enumerate() {
        create_big(&c.nodes[0], tmp.path(), name, i as u8);
    }
    want.sort();
    c.nodes[2].spawn();
    c.nodes[2].wait_up();
    // Through the restarted manager: it lists what it has applied (or the leader's answer
    // once it has caught up); either way all ten, which it holds only once replicated.
    wait_secrets(&c.nodes[2], &want);
    let log = c.nodes[0].log();
    assert!(
        !log.contains("decoded message length too large"),
        "the leader hit the message limit"
    );
    // And it holds them itself: with the other two stopped, its own copy lists all ten.
    c.nodes[0].kill();
    c.nodes[1].kill();
    assert_eq!(secret_names(&c.nodes[2], &["--stale"]).unwrap(), want);
}

/// A single-manager swarm with a large state that snapshots every 10 entries, so a new
/// manager can only get it through a snapshot.
fn swarm_with_large_state(tmp: &Path) -> (Cluster, Vec<String>) {
    let c = Cluster::init_opts(1, 0, &[], &["--raft-snapshot-logs", "10"]);
    let mut want = Vec::new();
    for i in 0..3u8 {
        let name = format!("big{i}");
        create_big(c.first(), tmp, &name, i);
        want.push(name);
    }
    for i in 0..25 {
        let name = format!("small{i:02}");
        c.first()
            .cli_stdin(&["secret", "create", &name, "-"], "v")
            .status
            .success()
            .then_some(())
            .unwrap();
        want.push(name);
    }
    want.sort();
    // The snapshot is built in the background; once it is on disk the log behind it is gone.
    let snapshot = c.first().data_dir().join("raft/snapshot.sealed");
    wait_for(timeout(), "the manager's first snapshot", || {
        if snapshot.exists() {
            Ok(())
        } else {
            Err("no snapshot.sealed yet".into())
        }
    });
    (c, want)
}

fn manager_token(node: &Node) -> String {
    node.cli_ok(&["join-token", "-q", "manager"])
        .trim()
        .to_string()
}

#[test]
fn a_new_manager_joins_through_a_snapshot_of_a_large_state() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, want) = swarm_with_large_state(tmp.path());
    let mut m2 = Node::new("m2", &["--raft-snapshot-logs", "10"]);
    m2.spawn();
    m2.wait_up();
    let token = manager_token(c.first());
    let said = m2.cli_ok(&["swarm", "join", "--token", &token, &c.first().addr()]);
    assert_eq!(said.trim(), "This node joined a swarm as a manager.");
    wait_secrets(&m2, &want);
    assert!(
        m2.data_dir().join("raft/snapshot.sealed").exists(),
        "the new manager got its state through a snapshot"
    );
}

fn mount_tmpfs(dir: &Path, size: &str) {
    let out = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "skep-it-small",
        ])
        .arg(dir)
        .output()
        .expect("running mount");
    assert!(
        out.status.success(),
        "mounting a tmpfs on {} (the test needs root): {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_manager_that_cannot_take_the_state_is_never_made_a_voter() {
    let tmp = tempfile::tempdir().unwrap();
    let (c, mut want) = swarm_with_large_state(tmp.path());
    // The new manager's disk holds its keys and certificates but not the 1.5 MB state.
    let mut m2 = Node::new("m2", &["--raft-snapshot-logs", "10"]);
    mount_tmpfs(&m2.data_dir(), "768k");
    m2.spawn();
    m2.wait_up();
    let token = manager_token(c.first());
    let out = m2.cli(&["swarm", "join", "--token", &token, &c.first().addr()]);
    assert!(
        !out.status.success(),
        "the join must fail: {}",
        crate::harness::describe(&out)
    );
    // The voters are unchanged: the lone manager still commits on its own. Had the new
    // manager been made a voter, no write could reach a quorum of two.
    let out = c
        .first()
        .cli_stdin(&["secret", "create", "after", "-"], "v");
    assert!(
        out.status.success(),
        "a write after the failed join: {}",
        crate::harness::describe(&out)
    );
    want.push("after".into());
    want.sort();
    assert_eq!(secret_names(c.first(), &[]).unwrap(), want);
}
