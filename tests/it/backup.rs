//! `swarm backup` and `swarm restore`: a swarm whose every manager is destroyed comes back
//! from a backup on a new machine; a damaged backup is refused, naming the damage; an old
//! backup is restored only as an explicit, audited rollback.

use std::path::{Path, PathBuf};

use crate::harness::*;

/// The generated key in `swarm backup` output: the `SKEPBKP-` line.
fn backup_key(said: &str) -> String {
    said.lines()
        .map(str::trim)
        .find(|l| l.starts_with("SKEPBKP-"))
        .unwrap_or_else(|| panic!("no SKEPBKP- key in:\n{said}"))
        .to_string()
}

fn secret_digests(node: &Node) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> =
        json_lines(&node.cli_ok(&["secret", "ls", "--format", "json"]))
            .iter()
            .map(|s| {
                (
                    s["Name"].as_str().unwrap_or_default().to_string(),
                    s["Digest"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
    v.sort();
    v
}

fn running_on(node: &Node, service: &str) -> Vec<String> {
    running_task_ids(node, service)
}

fn cli_dir(node: &Node) -> PathBuf {
    node.data_dir().parent().unwrap().join("cli-config")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Back up, destroy every manager (processes and disks), restore on a new machine that takes
/// a former manager's address: the worker follows it without re-joining, its task ran
/// throughout, services and secrets are intact, the chain verifies and records the restore,
/// the join tokens were rotated, and the new manager takes writes.
#[test]
fn a_swarm_whose_managers_are_all_destroyed_comes_back_from_a_backup() {
    let mut c = Cluster::init(3, 1);
    let m1 = &c.nodes[0];
    m1.cli_stdin(&["secret", "create", "db", "-"], "s3cret-value");
    create_sleepers_on_workers(m1, "web", 2);
    let tasks = wait_for(timeout(), "2 running tasks on the worker", || {
        let t = running_on(&c.nodes[0], "web");
        if t.len() == 2 {
            Ok(t)
        } else {
            Err(format!("{t:?}"))
        }
    });
    let secrets = secret_digests(m1);
    let old_token = m1.cli_ok(&["join-token", "-q", "worker"]);
    let file = m1.data_dir().parent().unwrap().join("swarm.backup");
    let file = file.to_str().unwrap();
    let started = std::time::Instant::now();
    let said = m1.cli_ok(&["swarm", "backup", "-o", file]);
    eprintln!(
        "MEASURE backup of a small swarm: {} ms",
        started.elapsed().as_millis()
    );
    let key = backup_key(&said);
    // The file is private, and the audit chain records that it was made.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(m1.audit().iter().any(|r| r["action"] == "swarm.backup"));
    // A second backup never replaces the file.
    let again = m1.cli_err(&["swarm", "backup", "-o", file]);
    assert!(again.contains("exists"), "{again}");

    let kept = std::env::temp_dir().join(format!("skep-it-backup-{}", std::process::id()));
    std::fs::copy(file, &kept).unwrap();
    let m2_addr: std::net::SocketAddr = c.nodes[1].addr().parse().unwrap();
    let m2_id = c.nodes[1].id().to_string();
    for i in 0..3 {
        c.nodes[i].kill();
        std::fs::remove_dir_all(c.nodes[i].data_dir()).unwrap();
    }
    let mut r = Node::new("r1", &[]).at(m2_addr);
    r.spawn();
    r.wait_up();
    let kept_s = kept.to_str().unwrap();
    let started = std::time::Instant::now();
    let out = r.cli_stdin(
        &[
            "swarm",
            "restore",
            kept_s,
            "--advertise-addr",
            &m2_addr.to_string(),
        ],
        &key,
    );
    assert!(out.status.success(), "{}", describe(&out));
    eprintln!(
        "MEASURE restore of a small swarm: {} ms",
        started.elapsed().as_millis()
    );
    let _ = std::fs::remove_file(&kept);
    assert!(
        stdout(&out).contains("is now the only manager"),
        "{}",
        describe(&out)
    );

    // The new machine took m2's identity (the address the worker knows).
    let nodes = r.node_ls();
    let me = nodes.iter().find(|n| n["Self"] == true).unwrap();
    assert_eq!(me["ID"], m2_id.as_str(), "{}", summary(&nodes));
    let mut hosts: Vec<&str> = nodes
        .iter()
        .filter_map(|n| n["Hostname"].as_str())
        .collect();
    hosts.sort();
    assert_eq!(hosts, ["r1", "w1"], "{}", summary(&nodes));
    assert_eq!(secret_digests(&r), secrets);
    wait_for(
        timeout(),
        "the worker Ready under the restored manager",
        || {
            let nodes = r.try_node_ls()?;
            match nodes.iter().find(|n| n["Hostname"] == "w1") {
                Some(w) if w["Status"] == "Ready" => Ok(()),
                _ => Err(summary(&nodes)),
            }
        },
    );
    assert_eq!(running_on(&r, "web"), tasks, "the worker's tasks were kept");
    let new_token = r.cli_ok(&["join-token", "-q", "worker"]);
    assert_ne!(new_token, old_token, "the join tokens are rotated");
    let records = r.audit();
    let restore = records
        .iter()
        .find(|x| x["action"] == "cluster.restore")
        .expect("the restore is audited");
    assert_eq!(restore["details"]["rollback"], "false");
    r.cli_ok(&["audit", "verify"]);
    r.cli_stdin(&["secret", "create", "after", "-"], "v");
    r.cli_ok(&["service", "scale", "web=3"]);
    wait_for(timeout(), "3 running tasks", || {
        let t = running_on(&r, "web");
        if t.len() == 3 {
            Ok(())
        } else {
            Err(format!("{t:?}"))
        }
    });
}

/// A truncated, altered or wrongly keyed backup is refused naming what is wrong, and leaves
/// the node outside any swarm, ready for a good one.
#[test]
fn a_damaged_backup_is_refused_naming_the_damage() {
    let c = Cluster::init(1, 0);
    let m = c.first();
    let dir = m.data_dir().parent().unwrap().to_path_buf();
    let pass = dir.join("pass");
    write_file(&pass, "correct horse battery staple\n");
    let file = dir.join("b.backup");
    let said = m.cli_ok(&[
        "swarm",
        "backup",
        "-o",
        file.to_str().unwrap(),
        "--key-file",
        pass.to_str().unwrap(),
    ]);
    assert!(
        !said.contains("SKEPBKP-"),
        "no key is made when one is given: {said}"
    );
    let good = std::fs::read(&file).unwrap();

    let r = Node::start("r");
    let rdir = r.data_dir().parent().unwrap().to_path_buf();
    let try_restore = |name: &str, bytes: &[u8], key: &str| {
        let f = rdir.join(name);
        std::fs::write(&f, bytes).unwrap();
        r.cli_stdin(&["swarm", "restore", f.to_str().unwrap()], key)
    };
    let truncated = try_restore(
        "t",
        &good[..good.len() - 100],
        "correct horse battery staple",
    );
    assert_error(&truncated, "truncated");
    let mut altered = good.clone();
    let mid = altered.len() / 2;
    altered[mid] ^= 1;
    let out = try_restore("a", &altered, "correct horse battery staple");
    assert_error(&out, "altered");
    let out = try_restore("w", &good, "the wrong passphrase, long enough");
    assert_error(&out, "key is wrong");
    let out = try_restore("j", b"not a backup at all", "correct horse battery staple");
    assert!(!out.status.success(), "{}", describe(&out));
    let out = try_restore("g", &good, "correct horse battery staple");
    assert!(out.status.success(), "{}", describe(&out));
    // A node in a swarm does not restore over it.
    let out = try_restore("g2", &good, "correct horse battery staple");
    assert_error(&out, "already part of a swarm");
}

/// A backup older than a checkpoint the operator's client verified is restored only with
/// --rollback, and the chain records it as one.
#[test]
fn restoring_an_older_backup_than_the_client_verified_is_an_explicit_rollback() {
    let c = Cluster::init_opts(1, 0, &[], &["--audit-checkpoint-records", "2"]);
    let m = c.first();
    let dir = m.data_dir().parent().unwrap().to_path_buf();
    let file = dir.join("old.backup");
    let at_backup = m.audit().len() as u64;
    let key = backup_key(&m.cli_ok(&["swarm", "backup", "-o", file.to_str().unwrap()]));
    for i in 0..6 {
        m.cli_stdin(&["secret", "create", &format!("later{i}"), "-"], "v");
    }
    // The operator's client verifies (and remembers) a checkpoint after the backup.
    let seen = cli_dir(m).join("audit-checkpoints.json");
    wait_until(timeout(), "a verified checkpoint after the backup", || {
        m.cli(&["audit", "verify"]);
        std::fs::read(&seen)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|v| {
                v["swarms"]
                    .as_object()
                    .and_then(|o| o.values().next().and_then(|s| s["seq"].as_u64()))
            })
            .is_some_and(|seq| seq > at_backup)
    });
    let r = Node::start("r");
    copy_dir(&cli_dir(m), &cli_dir(&r));
    let out = r.cli_stdin(&["swarm", "restore", file.to_str().unwrap()], &key);
    assert_error(&out, "--rollback");
    let out = r.cli_stdin(
        &["swarm", "restore", file.to_str().unwrap(), "--rollback"],
        &key,
    );
    assert!(out.status.success(), "{}", describe(&out));
    let restore = r
        .audit()
        .into_iter()
        .find(|x| x["action"] == "cluster.restore")
        .expect("the restore is audited");
    assert_eq!(restore["details"]["rollback"], "true");
    let names: Vec<String> = json_lines(&r.cli_ok(&["secret", "ls", "--format", "json"]))
        .iter()
        .filter_map(|s| s["Name"].as_str().map(str::to_string))
        .collect();
    assert!(
        names.is_empty(),
        "the later secrets are rolled back: {names:?}"
    );
}
