//! What sealing costs the Raft log: append throughput of the real `LogStore` (redb, fsync per
//! batch) for batches of 64 entries of ~256-byte commands, sealed (XChaCha20-Poly1305) and
//! with the benchmark-only plaintext sealer, in the same run. Also the CPU-only cost of
//! sealing one batch, without the disk. Prints the sealed/plaintext ratios at the end.

// A benchmark whose setup fails has nothing to measure: aborting with the reason is right.
#![allow(clippy::expect_used)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use openraft::storage::RaftLogStorageExt;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use skep::store::model::{Availability, Command, Node, NodeRole, NodeState};
use skep::store::seal::{Dek, RecordKind, Sealer};
use skep::store::{LogStore, StateMachineStore, TypeConfig};

const BATCH: u64 = 64;

fn command(i: u64) -> Command {
    Command::PutNode(Node {
        id: format!("node-{i:020}"),
        hostname: format!("host-{i}-{}", "x".repeat(120)),
        role: NodeRole::Worker,
        availability: Availability::Active,
        state: NodeState::Ready,
        addr: "10.0.0.2:2377".into(),
        raft_id: None,
        cert_serial: "0123456789abcdef".into(),
        cert_not_after: "2030-01-01T00:00:00Z".into(),
        cert_issuer: String::new(),
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
        labels: BTreeMap::new(),
        runtimes: Vec::new(),
        resources: Default::default(),
        port_errors: Default::default(),
    })
}

fn batch(first: u64) -> Vec<Entry<TypeConfig>> {
    (first..first + BATCH)
        .map(|i| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
            payload: EntryPayload::Normal(command(i)),
        })
        .collect()
}

struct Bench {
    log: LogStore,
    _sm: StateMachineStore,
    next: u64,
    _dir: tempfile::TempDir,
}

impl Bench {
    async fn new(sealer: Sealer) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let (log, sm) = skep::store::open_with(dir.path().to_path_buf(), Arc::new(sealer))
            .await
            .expect("open store");
        Bench {
            log,
            _sm: sm,
            next: 1,
            _dir: dir,
        }
    }

    async fn append_batch(&mut self) {
        let entries = batch(self.next);
        self.next += BATCH;
        self.log.blocking_append(entries).await.expect("append");
    }

    /// Time for `n` batches.
    async fn run(&mut self, n: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..n {
            self.append_batch().await;
        }
        start.elapsed()
    }
}

fn seal_batch(sealer: &Sealer, entries: &[Entry<TypeConfig>]) -> usize {
    entries
        .iter()
        .map(|e| {
            let plain = postcard::to_allocvec(e).expect("encode");
            sealer
                .seal(RecordKind::LogEntry, e.log_id.index, &plain)
                .len()
        })
        .sum()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut sealed = rt.block_on(Bench::new(Sealer::new(&Dek::generate())));
    let mut plain = rt.block_on(Bench::new(Sealer::plaintext_for_bench()));
    let sample = batch(1);
    let bytes: usize = sample
        .iter()
        .map(|e| postcard::to_allocvec(e).expect("encode").len())
        .sum();
    println!(
        "batch: {BATCH} entries, {} bytes encoded ({} per entry)",
        bytes,
        bytes / BATCH as usize
    );

    let mut c = Criterion::default().configure_from_args();
    {
        let mut g = c.benchmark_group("log_append_64x256B");
        g.throughput(Throughput::Elements(BATCH));
        for (name, bench) in [("sealed", &mut sealed), ("plaintext", &mut plain)] {
            g.bench_function(name, |b| {
                b.iter_custom(|iters| rt.block_on(bench.run(iters)))
            });
        }
        g.finish();
    }
    {
        let key = Sealer::new(&Dek::generate());
        let none = Sealer::plaintext_for_bench();
        let mut g = c.benchmark_group("encode_and_seal_64x256B_cpu_only");
        g.throughput(Throughput::Elements(BATCH));
        g.bench_function("sealed", |b| {
            b.iter(|| seal_batch(&key, black_box(&sample)))
        });
        g.bench_function("plaintext", |b| {
            b.iter(|| seal_batch(&none, black_box(&sample)))
        });
        g.finish();
    }
    c.final_summary();

    // The ratio, measured interleaved so disk weather hits both alike.
    let rounds = 10;
    let per_round = 20;
    let (mut ts, mut tp) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        ts += rt.block_on(sealed.run(per_round));
        tp += rt.block_on(plain.run(per_round));
    }
    let n = f64::from(rounds * per_round as u32);
    let (s_ms, p_ms) = (ts.as_secs_f64() * 1e3 / n, tp.as_secs_f64() * 1e3 / n);
    println!(
        "append (fsync per batch): sealed {s_ms:.3} ms/batch ({:.0} entries/s), plaintext {p_ms:.3} ms/batch ({:.0} entries/s), ratio sealed/plaintext {:.3}",
        BATCH as f64 / (s_ms / 1e3),
        BATCH as f64 / (p_ms / 1e3),
        s_ms / p_ms
    );
    let key = Sealer::new(&Dek::generate());
    let none = Sealer::plaintext_for_bench();
    let time = |s: &Sealer| {
        let start = Instant::now();
        for _ in 0..2000 {
            black_box(seal_batch(s, black_box(&sample)));
        }
        start.elapsed().as_secs_f64() * 1e6 / 2000.0
    };
    let (cs, cp) = (time(&key), time(&none));
    let big = vec![7u8; 1 << 20];
    let start = Instant::now();
    for i in 0..200 {
        black_box(key.seal(RecordKind::Snapshot, i, black_box(&big)));
    }
    let gbs = 200.0 * big.len() as f64 / start.elapsed().as_secs_f64() / 1e9;
    let small = [7u8; 259];
    let start = Instant::now();
    for i in 0..100_000 {
        black_box(key.seal(RecordKind::LogEntry, i, black_box(&small)));
    }
    let per = start.elapsed().as_secs_f64() * 1e9 / 100_000.0;
    println!("seal alone: {gbs:.2} GB/s on 1 MiB records, {per:.0} ns per 259-byte record");
    println!(
        "encode+seal (cpu only): sealed {cs:.1} us/batch, plaintext {cp:.1} us/batch, ratio {:.2}",
        cs / cp
    );
}
