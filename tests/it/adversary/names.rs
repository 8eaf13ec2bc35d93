//! Adversary tests (see `mod.rs`): names.
//!
//! A worker-token holder chooses its own host name: it joins as `w1` beside the real `w1`, or
//! as the ID prefix an operator would type for another node, and no command that takes a node
//! may then act on the impostor by mistake (Docker: "node w1 is ambiguous"); no Cedar policy
//! may rest on the self-chosen name. Secret targets are operator input the agents must be able
//! to honour: clashing or unmountable targets are refused at create and update (CLI and
//! Compose), not after every task fails. Service addresses come from the replicated state, one
//! per service.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::harness::{Cluster, Node, assert_error, timeout, wait_for, write_file};

/// Joins `node` (already running) to the swarm of `m` with the worker token.
fn join_as_worker(m: &Node, node: &Node) {
    let token = m.cli_ok(&["join-token", "-q", "worker"]).trim().to_string();
    node.cli_ok(&["swarm", "join", "--token", &token, &m.addr()]);
}

/// The IDs of the Ready nodes `node ls` lists under `hostname`.
fn ready_ids(m: &Node, hostname: &str) -> Vec<String> {
    m.node_ls()
        .iter()
        .filter(|n| n["Hostname"] == hostname && n["Status"] == "Ready")
        .filter_map(|n| n["ID"].as_str().map(str::to_string))
        .collect()
}

fn labels(m: &Node, id: &str) -> Value {
    let v: Value = serde_json::from_str(&m.cli_ok(&["node", "inspect", id])).unwrap();
    v[0]["Spec"]["Labels"].clone()
}

#[test]
fn a_self_chosen_hostname_never_selects_a_node() {
    let c = Cluster::init(1, 1);
    let m = c.first();
    let real = c.workers()[0].id().to_string();

    // The impostor takes the real worker's name.
    let twin = Node::start("w1");
    join_as_worker(m, &twin);
    let both = wait_for(timeout(), "two Ready nodes named w1", || {
        let ids = ready_ids(m, "w1");
        if ids.len() == 2 {
            Ok(ids)
        } else {
            Err(format!("{ids:?}"))
        }
    });
    let fake = both.into_iter().find(|id| *id != real).unwrap();

    // Every command that takes a node refuses the ambiguous name and changes nothing.
    for args in [
        &["node", "update", "--label-add", "secure=true", "w1"][..],
        &["node", "inspect", "w1"],
        &["node", "ps", "w1"],
        &["node", "promote", "w1"],
        &["node", "demote", "w1"],
        &["node", "rm", "--force", "w1"],
    ] {
        assert_error(&m.cli(args), "node w1 is ambiguous (2 matches found)");
    }
    for id in [&real, &fake] {
        assert!(
            labels(m, id).get("secure").is_none(),
            "{id}: {}",
            labels(m, id)
        );
    }
    assert_eq!(
        ready_ids(m, "w1").len(),
        2,
        "a refused `node rm` removed a node"
    );

    // The full ID, or a unique ID prefix, still selects exactly one node.
    m.cli_ok(&["node", "update", "--label-add", "secure=true", &real]);
    m.cli_ok(&["node", "update", "--label-add", "zone=a", &real[..12]]);
    let l = labels(m, &real);
    assert_eq!((&l["secure"], &l["zone"]), (&"true".into(), &"a".into()));
    assert!(labels(m, &fake).get("secure").is_none());

    // A host name equal to the ID prefix an operator would type for the real node does not
    // capture that reference either.
    let prefix = &real[..8];
    let mimic = Node::start(prefix);
    join_as_worker(m, &mimic);
    wait_for(timeout(), "the mimic is Ready", || {
        let ids = ready_ids(m, prefix);
        if ids.len() == 1 {
            Ok(())
        } else {
            Err(format!("{ids:?}"))
        }
    });
    assert_error(
        &m.cli(&["node", "update", "--label-add", "tier=prod", prefix]),
        &format!("node {prefix} is ambiguous (2 matches found)"),
    );
    let mimic_id = ready_ids(m, prefix).remove(0);
    assert!(labels(m, &mimic_id).get("tier").is_none());
    assert!(labels(m, &real).get("tier").is_none());

    // No secret policy can rest on the name a node chose for itself.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("by-hostname.cedar");
    write_file(
        &policy,
        "permit (principal, action == Skep::Action::\"UseSecret\", resource)\n\
         when { [\"w1\"].contains(context.node.hostname) };\n",
    );
    assert_error(
        &m.cli(&["policy", "validate", policy.to_str().unwrap()]),
        "hostname",
    );
    assert_error(
        &m.cli(&["policy", "set", policy.to_str().unwrap()]),
        "hostname",
    );
}

fn secret(m: &Node, name: &str) {
    let out = m.cli_stdin(
        &["secret", "create", name, "-"],
        &format!("value-of-{name}"),
    );
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
}

/// `service create --detach` of an exec service with these extra flags.
fn create(m: &Node, name: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "service",
        "create",
        "--detach",
        "--runtime",
        "exec",
        "--replicas",
        "0",
        "--name",
        name,
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "/bin/sleep", "1000"]);
    m.cli(&args)
}

/// The (secret name, target) pairs of a service as stored.
fn targets(m: &Node, service: &str) -> Vec<(String, String)> {
    let v: Value = serde_json::from_str(&m.cli_ok(&["service", "inspect", service])).unwrap();
    v[0]["spec"]["task"]["secrets"]
        .as_array()
        .unwrap_or_else(|| panic!("no secrets in {v}"))
        .iter()
        .map(|r| {
            (
                r["secret_name"].as_str().unwrap().to_string(),
                r["target"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn secret_targets_are_checked_for_clashes_and_for_what_agents_accept() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    secret(m, "s1");
    secret(m, "s2");

    // Two secrets at one target: refused, not silently the second.
    let out = create(
        m,
        "same",
        &[
            "--secret",
            "source=s1,target=same",
            "--secret",
            "source=s2,target=same",
        ],
    );
    assert_error(&out, "clashes");
    // The same secret twice.
    assert_error(
        &create(m, "twice", &["--secret", "s1", "--secret", "s1"]),
        "clashes",
    );
    // A target no agent can create (a file name over 255 bytes): refused up front, quoting only
    // a prefix of it.
    let long = "x".repeat(300);
    let out = create(
        m,
        "long",
        &["--secret", &format!("source=s1,target={long}")],
    );
    assert_error(&out, "target");
    assert!(
        !crate::harness::stderr(&out).contains(&long),
        "{}",
        crate::harness::stderr(&out)
    );
    // A control character in a target.
    assert_error(
        &create(m, "ctl", &["--secret", "source=s1,target=a\tb"]),
        "target",
    );
    let ls = m.cli_ok(&["service", "ls", "-q"]);
    assert!(ls.trim().is_empty(), "refused services were created: {ls}");

    // Update: adding s2 at s1's target does not drop s1.
    create(m, "app", &["--secret", "s1"]);
    assert_error(
        &m.cli(&[
            "service",
            "update",
            "--detach",
            "--secret-add",
            "source=s2,target=s1",
            "app",
        ]),
        "clashes",
    );
    assert_error(
        &m.cli(&["service", "update", "--detach", "--secret-add", "s1", "app"]),
        "clashes",
    );
    assert_eq!(targets(m, "app"), [("s1".into(), "/run/secrets/s1".into())]);
    // Replacing it is explicit.
    m.cli_ok(&[
        "service",
        "update",
        "--detach",
        "--secret-rm",
        "s1",
        "--secret-add",
        "source=s2,target=s1",
        "app",
    ]);
    assert_eq!(targets(m, "app"), [("s2".into(), "/run/secrets/s1".into())]);

    // Compose goes through the same check.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("clash.yml");
    write_file(
        &file,
        "services:\n  app:\n    x-skep-runtime: exec\n    command: /bin/sleep 1000\n    \
         secrets:\n      - source: s1\n        target: same\n      - source: s2\n        \
         target: same\nsecrets:\n  s1:\n    external: true\n  s2:\n    external: true\n",
    );
    assert_error(
        &m.cli(&["stack", "deploy", "-c", file.to_str().unwrap(), "clash"]),
        "clashes",
    );
    let ls = m.cli_ok(&["service", "ls", "-q"]);
    assert_eq!(ls.lines().count(), 1, "a clashing stack was deployed: {ls}");
}

/// The address `service inspect` on `on` reports for `service`.
fn address(on: &Node, service: &str) -> String {
    let v: Value = serde_json::from_str(&on.cli_ok(&["service", "inspect", service])).unwrap();
    v[0]["vip"]
        .as_str()
        .unwrap_or_else(|| panic!("service {service} has no address in the state: {v}"))
        .to_string()
}

#[test]
fn service_addresses_come_from_the_replicated_state_one_per_service() {
    let c = Cluster::init(2, 0);
    let (m, other) = (&c.managers()[0], &c.managers()[1]);
    let names: Vec<String> = (0..12).map(|i| format!("svc{i}")).collect();
    for n in &names {
        let out = create(m, n, &[]);
        assert!(out.status.success(), "{}", crate::harness::describe(&out));
    }
    let addrs: Vec<String> = names.iter().map(|n| address(m, n)).collect();
    let distinct: BTreeSet<&String> = addrs.iter().collect();
    assert_eq!(distinct.len(), addrs.len(), "{addrs:?}");
    for a in &addrs {
        assert!(a.starts_with("127.77."), "{a}");
    }
    // The other manager's copy of the state holds the same addresses.
    wait_for(timeout(), "the same addresses on the other manager", || {
        let theirs: Vec<String> = names.iter().map(|n| address(other, n)).collect();
        if theirs == addrs {
            Ok(())
        } else {
            Err(format!("{theirs:?} vs {addrs:?}"))
        }
    });
    // An update keeps the address; a removed service's address is not handed to the next one.
    m.cli_ok(&[
        "service",
        "update",
        "--detach",
        "--label-add",
        "x=y",
        "svc0",
    ]);
    assert_eq!(address(m, "svc0"), addrs[0]);
    m.cli_ok(&["service", "rm", "svc1"]);
    let out = create(m, "later", &[]);
    assert!(out.status.success(), "{}", crate::harness::describe(&out));
    let later = address(m, "later");
    assert!(!addrs.contains(&later), "{later} reused at once: {addrs:?}");
}
