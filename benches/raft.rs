//! The replicated store under load and after an outage, on three real managers.
//!
//! * `wire`: encoding and decoding one AppendEntries of ten 500 KiB secrets, JSON (the old
//!   encoding, the baseline) against postcard (today's), in process: bytes and time.
//! * `commits/s`: `SecretCreate` calls (small values) through the leader's Unix socket with 1,
//!   10 and 100 concurrent clients (one connection each). Each call is one Raft commit on a
//!   quorum of the three managers (fsync on each).
//! * `catch-up by log`: a follower is killed, `SKEP_BENCH_RAFT_MB` (default 50) MB of state is
//!   written as 500 KiB secrets, the follower restarts: time until it lists them all.
//! * `catch-up by snapshot`: the same with a swarm that snapshots every 20 entries and keeps
//!   2 behind each: the leader's log is purged far past the restarted follower's last entry,
//!   so the follower can only catch up by installing a snapshot.
//!
//! Run: `cargo bench --bench raft` (`SKEP_BENCH_RAFT_MB=10` for a quicker run).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, Daemon, wait_for};
use skep::api::v1::SecretCreateRequest;
use skep::cli::client::{Host, connect};

const SECRET: usize = 500 * 1024;

fn wire_baseline() {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use skep::store::TypeConfig;
    let entries: Vec<Entry<TypeConfig>> = (0..10u64)
        .map(|i| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i + 1),
            payload: EntryPayload::Normal(skep::store::model::Command::Audit(
                skep::audit::AuditEvent::now(
                    skep::audit::Actor::node("n"),
                    "bench",
                    "t",
                    skep::audit::Outcome::Ok,
                ),
            )),
        })
        .collect();
    // A secret's bytes as the log carries them: a byte string.
    let values: Vec<skep::secret::SecretBytes> = (0..10)
        .map(|i| skep::secret::SecretBytes::new(vec![i as u8 ^ 0xa5; SECRET]))
        .collect();
    let msg = (&entries, &values);
    let runs = 5;
    let t = Instant::now();
    let mut json_len = 0;
    for _ in 0..runs {
        let j = serde_json::to_vec(&msg).unwrap();
        json_len = j.len();
        let _: (Vec<Entry<TypeConfig>>, Vec<skep::secret::SecretBytes>) =
            serde_json::from_slice(&j).unwrap();
    }
    let json = t.elapsed() / runs;
    let t = Instant::now();
    let mut pc_len = 0;
    for _ in 0..runs {
        let p = skep::store::wire::encode(&msg).unwrap();
        pc_len = p.len();
        let _: (Vec<Entry<TypeConfig>>, Vec<skep::secret::SecretBytes>) =
            skep::store::wire::decode(&p).unwrap();
    }
    let pc = t.elapsed() / runs;
    println!(
        "wire, 10 x 500 KiB: json {json_len} bytes in {json:?}; postcard {pc_len} bytes in {pc:?}: {:.2}x the bytes, {:.1}x faster",
        pc_len as f64 / json_len as f64,
        json.as_secs_f64() / pc.as_secs_f64()
    );
}

fn swarm(root: &std::path::Path, base: &str, env: &[(&str, &str)]) -> Vec<Daemon> {
    let names = ["m1", "m2", "m3"];
    let mut ds: Vec<Daemon> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Daemon::start_with(root, n, &format!("{base}.{}:2377", i + 1), env))
        .collect();
    let first = &ds[0];
    first.init_swarm();
    let token = first
        .cli(&["join-token", "-q", "manager"])
        .trim()
        .to_string();
    let addr = first.addr.clone();
    for d in ds.iter_mut().skip(1) {
        d.cli(&["swarm", "join", "--token", &token, &addr]);
    }
    ds
}

fn host(d: &Daemon) -> Host {
    Host::parse(&format!("unix://{}", d.socket().display())).unwrap()
}

async fn commits(leader: &Host, clients: usize, per: usize, tag: &str) -> f64 {
    let mut apis = Vec::new();
    for _ in 0..clients {
        apis.push(connect(leader).await.unwrap());
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for (c, mut api) in apis.into_iter().enumerate() {
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            for i in 0..per {
                api.secret_create(SecretCreateRequest {
                    name: format!("{tag}-{c}-{i}"),
                    labels: Default::default(),
                    value: b"v".to_vec(),
                    config: false,
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (clients * per) as f64 / start.elapsed().as_secs_f64()
}

fn secret_count(d: &Daemon) -> Result<usize, String> {
    d.json(&["secret", "ls", "--format", "json"])
        .map(|v| v.len())
}

async fn write_big(leader: &Host, n: usize, tag: &str) {
    let mut api = connect(leader).await.unwrap();
    for i in 0..n {
        let value: Vec<u8> = (0..SECRET)
            .map(|b| (b as u8).wrapping_mul(7).wrapping_add(i as u8))
            .collect();
        api.secret_create(SecretCreateRequest {
            name: format!("{tag}{i}"),
            labels: Default::default(),
            value,
            config: false,
        })
        .await
        .unwrap();
    }
}

/// Kills the third manager, writes `mb` MB of secrets, restarts it and times its catch-up.
fn catch_up(rt: &tokio::runtime::Runtime, c: &mut Cluster, env: &[(&str, &str)], mb: usize) {
    let leader = host(&c.daemons[0]);
    let before = secret_count(&c.daemons[0]).unwrap();
    let mut down = c.daemons.remove(2);
    if let Some(mut child) = down.child.take() {
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let n = mb * 1024 * 1024 / SECRET;
    rt.block_on(write_big(&leader, n, "big"));
    let root = c.root.path().to_path_buf();
    let restarted = Instant::now();
    let d = Daemon::start_with(&root, &down.name, &down.addr, env);
    // Dropping it would kill every process mentioning its directory: the restarted daemon.
    std::mem::forget(down);
    let want = before + n;
    wait_for(
        Duration::from_secs(600),
        "the restarted manager to list every secret",
        || match secret_count(&d) {
            Ok(k) if k == want => Ok(()),
            Ok(k) => Err(format!("{k} of {want}")),
            Err(e) => Err(e),
        },
    );
    let took = restarted.elapsed();
    println!(
        "  {n} x 500 KiB ({mb} MB) written while down: caught up {took:.2?} after restart ({:.1} MB/s)",
        mb as f64 / took.as_secs_f64()
    );
    c.daemons.push(d);
}

fn main() {
    let mb: usize = std::env::var("SKEP_BENCH_RAFT_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let rt = tokio::runtime::Runtime::new().unwrap();
    wire_baseline();

    let log_env = [("SKEP_LOG", "info")];
    let root = tempfile::tempdir().unwrap();
    let daemons = swarm(root.path(), "127.0.98", &log_env);
    let mut c = Cluster { daemons, root };
    let leader = host(c.manager());
    let one = rt.block_on(commits(&leader, 1, 300, "c1"));
    let ten = rt.block_on(commits(&leader, 10, 60, "c10"));
    let hundred = rt.block_on(commits(&leader, 100, 10, "c100"));
    println!(
        "commits/s on 3 managers: 1 client {one:.0}; 10 clients {ten:.0} ({:.1}x); 100 clients {hundred:.0} ({:.1}x)",
        ten / one,
        hundred / one
    );
    println!("catch-up by log:");
    catch_up(&rt, &mut c, &log_env, mb);
    drop(c);

    let snap_env = [("SKEP_LOG", "info"), ("SKEP_RAFT_SNAPSHOT_LOGS", "20")];
    let root = tempfile::tempdir().unwrap();
    let daemons = swarm(root.path(), "127.0.99", &snap_env);
    let mut c = Cluster { daemons, root };
    println!("catch-up by snapshot (a snapshot every 20 entries):");
    catch_up(&rt, &mut c, &snap_env, mb);
}
