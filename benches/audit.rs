//! How fast `skep audit verify` checks a chain: records per second of
//! `skep::audit::verify_with` (SHA-256 of each record's canonical encoding, the hash links,
//! and an Ed25519 signature check of every checkpoint against a pinned key) on a chain of one
//! million records with a signed checkpoint after every 256, built in memory. Records look
//! like real ones (an actor, a dotted action, a target, three details). Also times parsing
//! the same chain from its JSON-lines export, the other half of `verify --file`.
//!
//! Run: `cargo bench --bench audit` (`SKEP_BENCH_AUDIT_RECORDS=100000` for a smaller chain).

// A benchmark whose setup fails has nothing to measure: aborting with the reason is right.
#![allow(clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use skep::audit::checkpoint::{AuditKey, Checkpoint};
use skep::audit::{Actor, AuditChain, AuditEvent, Outcome, VerifyOptions, verify_with};

const EVERY: u64 = 256;
const RUNS: usize = 3;

fn main() {
    let n: u64 = std::env::var("SKEP_BENCH_AUDIT_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let key = AuditKey::generate().expect("key");
    let started = Instant::now();
    let mut chain = AuditChain::default();
    let mut since = 0;
    while (chain.records().len() as u64) < n {
        let i = chain.records().len();
        chain.append(
            AuditEvent::now(
                Actor::node(&format!("node-{:020}", i % 97)),
                "secret.deliver",
                &format!("task-{i:012}"),
                Outcome::Ok,
            )
            .with("secret", "db-password")
            .with(
                "digest",
                "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
            )
            .with("service", "web"),
        );
        since += 1;
        if since == EVERY && (chain.records().len() as u64) < n {
            let cp = Checkpoint::sign(&key, "manager-1", skep::util::now_rfc3339(), &chain)
                .expect("sign");
            chain.append(cp.to_event());
            since = 0;
        }
    }
    let records = chain.records();
    println!(
        "chain: {} records ({} checkpoints), built in {:.2?}",
        records.len(),
        records.len() as u64 / (EVERY + 1),
        started.elapsed()
    );
    let opts = VerifyOptions {
        public_key: Some(key.public_key()),
        gaps_allowed: false,
        require_anchor: true,
    };
    let mut best = f64::INFINITY;
    for run in 1..=RUNS {
        let t = Instant::now();
        let report = verify_with(black_box(records), &opts).expect("the chain verifies");
        let secs = t.elapsed().as_secs_f64();
        best = best.min(secs);
        println!(
            "verify run {run}: {:.3} s, {:.0} records/s ({} checkpoints checked)",
            secs,
            records.len() as f64 / secs,
            report.checkpoints
        );
    }
    println!(
        "verify best: {:.0} records/s ({:.3} s for {} records)",
        records.len() as f64 / best,
        best,
        records.len()
    );

    let text: String = records
        .iter()
        .map(|r| serde_json::to_string(r).expect("encode") + "\n")
        .collect();
    let t = Instant::now();
    let parsed = skep::audit::export::parse(black_box(&text)).expect("parses");
    let secs = t.elapsed().as_secs_f64();
    println!(
        "parse export ({} MB): {:.3} s, {:.0} records/s",
        text.len() / 1_000_000,
        secs,
        parsed.records.len() as f64 / secs
    );
}
