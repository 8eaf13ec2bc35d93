//! How fast the CA turns CSRs into certificates: the work of a join storm or a renewal wave.

#![allow(clippy::unwrap_used, missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use skep_pki::{Csr, NodeKey, Role, RootCa, new_id};
use time::{Duration, OffsetDateTime};

fn issue(c: &mut Criterion) {
    let now = OffsetDateTime::now_utc();
    let ca = RootCa::generate(&new_id(), Duration::days(3650), now).unwrap();
    let csr_der = NodeKey::generate().unwrap().csr_der().unwrap();
    let node_id = new_id();

    let mut group = c.benchmark_group("pki");
    group.throughput(Throughput::Elements(1));
    group.bench_function("csr_check", |b| {
        b.iter(|| Csr::from_der(black_box(&csr_der)).unwrap())
    });
    group.bench_function("csr_check_and_issue", |b| {
        b.iter(|| {
            let csr = Csr::from_der(black_box(&csr_der)).unwrap();
            ca.issue(&csr, &node_id, Role::Worker, Duration::hours(24), now)
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, issue);
criterion_main!(benches);
