//! What one X.509-SVID issuance costs the store as the records grow: applying its
//! `RecordSvid` (every manager does, in its state machine) and the leader's check of room for
//! it (`SvidRecords::unexpired`), with 0, 20,000 and 200,000 unexpired records kept (the last
//! is `MAX_SVID_RECORDS`, an hour of 55 issuances a second); and what the first heartbeat
//! after it costs a manager to tell whether the workload bundle changed
//! (`manager::workload::BundleCache`), with the records spread over 1,000 nodes and a tenth of
//! them revoked. Run it on two builds with criterion's `--save-baseline` / `--baseline` to
//! compare them.

// A benchmark whose setup fails has nothing to measure: aborting with the reason is right.
#![allow(clippy::expect_used)]

use std::hint::black_box;

use criterion::Criterion;
use skep::manager::workload::{BundleCache, new_keys};
use skep::store::fixtures;
use skep::store::model::{Command, Response, State};
use skep::store::service::TaskState;
use skep::store::workload::SvidRecord;
use time::OffsetDateTime;

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

/// A swarm with workload keys and 1,000 nodes holding `n` records, two per task: the tasks
/// of nine records in ten run on their node, the rest are gone (their SVIDs revoked).
fn swarm_with(n: usize, now: OffsetDateTime) -> State {
    let mut s = state_with(n);
    let mut c = fixtures::cluster();
    c.id = skep_pki::new_id();
    c.workload = Some(new_keys(&c.id, now).expect("workload keys"));
    s.cluster = Some(c);
    for i in 0..1_000 {
        let id = format!("node-{i:025}");
        s.nodes.insert(id.clone(), fixtures::node(&id));
    }
    for task in 0..=n / 2 + 1 {
        if task % 10 != 9 {
            put_task(&mut s, task);
        }
    }
    s
}

/// Task `task` of [`record_of`], running on its node.
fn put_task(s: &mut State, task: usize) {
    let r = record_of(task);
    let mut t = fixtures::task();
    t.id = r.task_id;
    t.node_id = r.node_id;
    t.status.state = TaskState::Running;
    s.tasks.insert(t.id.clone(), t);
}

/// This process's resident memory, bytes.
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .expect("rss")
        .parse()
        .expect("pages");
    pages * 4096
}

fn main() {
    // What the records hold in memory: 200,000 of them built and measured alone, first.
    let before = rss();
    let held = state_with(200_000);
    let after = rss();
    println!(
        "200,000 SVID records: {:.1} MB resident ({} bytes a record)",
        (after - before) as f64 / 1e6,
        (after - before) / 200_000
    );
    drop(held);
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

    let now = OffsetDateTime::from_unix_timestamp(1_780_000_000).expect("a time");
    let mut g = c.benchmark_group("svid_issuance_then_bundle_check");
    for n in [0, 20_000, 200_000] {
        let mut state = swarm_with(n, now);
        let cache = BundleCache::default();
        let mut index = 1;
        assert!(cache.get(&state, index, now).is_some());
        let mut next = n;
        g.bench_function(format!("apply_and_check_at_{n}"), |b| {
            b.iter(|| {
                // A running task's SVID renewed: the revoked set stays as it was.
                let mut serial = next % (n + 2);
                if (serial / 2) % 10 == 9 {
                    serial = (serial + 2) % (n + 2);
                }
                let cmd = Command::RecordSvid {
                    serial: format!("{serial:032x}"),
                    record: record_of(serial / 2),
                    now: 1,
                };
                next += 1;
                index += 1;
                black_box(state.apply(cmd));
                black_box(cache.get(&state, index, now))
            })
        });
    }
    g.finish();
    c.final_summary();
}
