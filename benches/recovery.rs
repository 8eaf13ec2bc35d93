//! Disaster recovery on one manager holding ~50 MB of state (`SKEP_BENCH_STATE_MB`, default
//! 50, as 500 KiB secrets): `swarm backup`, `swarm restore` on a fresh daemon, and
//! `swarm init --force-new-cluster` until a write commits.
//!
//! Baselines measured in the same run: copying the manager's data directory (the raw I/O a
//! backup and a restore cannot avoid: the sealed store is about the state's size), and one
//! ordinary committed write (`secret create` of a small value) on the healthy manager.
//!
//! Run: `cargo bench --bench recovery` (release build).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Daemon};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    let ok = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(ok.success());
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let mb = env_or("SKEP_BENCH_STATE_MB", 50);
    let root = tempfile::tempdir().unwrap();
    let m = Daemon::start(root.path(), "m", "127.0.98.1:2377");
    let r = Daemon::start(root.path(), "r", "127.0.98.2:2377");
    let c = Cluster {
        daemons: vec![m, r],
        root,
    };
    let (m, r) = (&c.daemons[0], &c.daemons[1]);
    m.init_swarm();
    let secrets = mb * 2;
    let fill = Instant::now();
    for i in 0..secrets {
        let value: Vec<u8> = (0..500 * 1024u32)
            .map(|j| (j.wrapping_mul(31).wrapping_add(u32::try_from(i).unwrap()) % 251) as u8)
            .collect();
        m.cli_stdin(&["secret", "create", &format!("s{i}"), "-"], Some(&value));
    }
    println!(
        "state: {secrets} secrets of 500 KiB ({mb} MB) created in {:.1} s",
        fill.elapsed().as_secs_f64()
    );

    let start = Instant::now();
    m.cli_stdin(&["secret", "create", "small", "-"], Some(b"v"));
    let write = start.elapsed();

    let copy_to = c.root.path().join("copy");
    let start = Instant::now();
    copy_dir(&m.data_dir(), &copy_to);
    let copy = start.elapsed();

    let file = c.root.path().join("swarm.backup");
    let pass = c.root.path().join("pass");
    std::fs::write(&pass, "a passphrase for the benchmark").unwrap();
    let start = Instant::now();
    m.cli(&[
        "swarm",
        "backup",
        "-o",
        file.to_str().unwrap(),
        "--key-file",
        pass.to_str().unwrap(),
    ]);
    let backup = start.elapsed();
    let size = std::fs::metadata(&file).unwrap().len();

    let start = Instant::now();
    r.cli(&[
        "swarm",
        "restore",
        file.to_str().unwrap(),
        "--key-file",
        pass.to_str().unwrap(),
        "--advertise-addr",
        &r.addr,
    ]);
    let restore = start.elapsed();
    let listed = r.json(&["secret", "ls", "--format", "json"]).unwrap().len() as u64;
    assert_eq!(listed, secrets + 1, "every secret is restored");

    let start = Instant::now();
    m.cli(&["swarm", "init", "--force-new-cluster"]);
    m.cli_stdin(&["secret", "create", "after", "-"], Some(b"v"));
    let forced = start.elapsed();

    println!("backup file: {:.1} MB", size as f64 / 1e6);
    println!(
        "baseline: copy of the data directory {:.0} ms; one committed write {:.1} ms",
        ms(copy),
        ms(write)
    );
    println!(
        "backup {:.0} ms ({:.1}x the copy); restore {:.0} ms ({:.1}x the copy)",
        ms(backup),
        ms(backup) / ms(copy),
        ms(restore),
        ms(restore) / ms(copy)
    );
    println!(
        "force-new-cluster until a write committed: {:.0} ms ({:.0}x one write)",
        ms(forced),
        ms(forced) / ms(write)
    );
}
