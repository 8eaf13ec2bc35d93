//! What one X.509-SVID issuance costs the store as the records grow: applying its
//! `RecordSvid` (every manager does, in its state machine) and the leader's check of room for
//! it (`SvidRecords::unexpired`), with 0, 20,000 and 200,000 unexpired records kept (the last
//! is `MAX_SVID_RECORDS`, an hour of 55 issuances a second). Run it on two builds with
//! criterion's `--save-baseline` / `--baseline` to compare them.

// A benchmark whose setup fails has nothing to measure: aborting with the reason is right.
#![allow(clippy::expect_used)]

use std::hint::black_box;

use criterion::Criterion;
use skep::store::model::{Command, Response, State};
use skep::store::workload::SvidRecord;

/// Every record's SVID ends after this (Unix seconds); the bench's clock stays before it.
const NOT_AFTER: i64 = 10_000;

fn record_of(task: usize) -> SvidRecord {
    SvidRecord {
        task_id: format!("task-{task:025}"),
        node_id: format!("node-{:025}", task % 1_000),
        not_after: NOT_AFTER,
    }
}

/// A state holding `n` unexpired records, two per task (an agent holds two at renewal).
fn state_with(n: usize) -> State {
    let mut s = State::default();
    for i in 0..n {
        let cmd = Command::RecordSvid {
            serial: format!("{i:032x}"),
            record: record_of(i / 2),
            now: 0,
        };
        assert_eq!(s.apply(cmd), Response::Ok);
    }
    s
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("svid_issuance_in_the_store");
    for n in [0, 20_000, 200_000] {
        let mut state = state_with(n);
        let mut next = n;
        g.bench_function(format!("check_and_apply_at_{n}"), |b| {
            b.iter(|| {
                // The leader's check, then the entry applied. Each SVID replaces the one made
                // two before it, so the count stays at `n` + 2 whatever the iterations.
                let task = record_of(next / 2);
                black_box(state.svids.unexpired(&task.task_id, 1));
                let cmd = Command::RecordSvid {
                    serial: format!("{:032x}", next % (n + 2)),
                    record: task,
                    now: 1,
                };
                next += 1;
                black_box(state.apply(cmd))
            })
        });
    }
    g.finish();
    c.final_summary();
}
