//! What a task session's message costs to build and read: ten tasks of one service for one
//! node, each task carrying its own spec (whole tasks, the baseline) against each distinct spec
//! sent once (`api::assignments`), for the placement bench's spec (`/bin/sleep 1000` with one
//! constraint) and for a service as operators write one (an image by digest, ten environment
//! variables, a secret, a port, two networks, a health check). Prints the bytes of each
//! message and the shared/whole ratios at the end. `cargo bench --bench assignments`.

#![allow(missing_docs, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use skep::api::assignments::{Encoder, decode};
use skep::store::service::{
    Constraint, DesiredState, HealthCheck, Runtime, SecretRef, Task, TaskSpec, TaskStatus,
};

const TASKS: u64 = 10;

fn constraint(json: &str) -> Constraint {
    serde_json::from_str(json).expect("a constraint")
}

fn small_spec() -> TaskSpec {
    let mut spec = TaskSpec::new(Runtime::Exec, "", vec!["/bin/sleep".into(), "1000".into()]);
    spec.constraints.push(constraint(
        r#"{"key":"node.role","op":"Eq","value":"worker"}"#,
    ));
    spec
}

fn operator_spec() -> TaskSpec {
    let mut spec = TaskSpec::new(
        Runtime::Docker,
        "registry.example.com/team/web:1.4.2@sha256:\
         2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
        vec![
            "/usr/local/bin/web".into(),
            "--listen".into(),
            ":8080".into(),
        ],
    );
    spec.env = (0..10)
        .map(|i| format!("WEB_SETTING_{i}=value-of-setting-{i}"))
        .collect();
    spec.constraints.push(constraint(
        r#"{"key":"node.labels.zone","op":"Eq","value":"eu-west-1a"}"#,
    ));
    spec.secrets = vec![SecretRef {
        secret_id: "sec4h5j6k7l8m9n0p1q2r3s4t5".into(),
        ..SecretRef::new("db_password")
    }];
    spec.ports = vec![8080];
    spec.networks = vec!["frontend".into(), "backend".into()];
    spec.healthcheck = Some(HealthCheck::new(vec![
        "CMD".into(),
        "/usr/local/bin/web".into(),
        "--check".into(),
    ]));
    spec
}

fn tasks(spec: &TaskSpec) -> Vec<Task> {
    let status: TaskStatus = serde_json::from_str(
        r#"{"state":"assigned","message":"assigned","err":"","exit_code":null,
            "timestamp":"2026-12-07T04:00:00.123456Z","held":{}}"#,
    )
    .expect("a status");
    (0..TASKS)
        .map(|i| Task {
            id: format!("x3k4h5j6k7l8m9n0p1q2r3s{i:03}"),
            service_id: "svc4h5j6k7l8m9n0p1q2r3s4t5".into(),
            service_name: "web".into(),
            slot: i + 1,
            node_id: "nod4h5j6k7l8m9n0p1q2r3s4t5".into(),
            spec: spec.clone(),
            spec_version: 1,
            desired: DesiredState::Running,
            status: status.clone(),
            created_at: "2026-12-07T04:00:00.123456Z".into(),
            not_before: String::new(),
            attempt: 0,
            versions: Default::default(),
        })
        .collect()
}

/// The message's specs and tasks as JSON.
fn encode(tasks: &[Task], shared: bool) -> (Vec<String>, Vec<String>) {
    let mut enc = Encoder::new(shared);
    let json = tasks
        .iter()
        .map(|t| enc.task(t).expect("a task encodes"))
        .collect();
    (enc.specs_json(), json)
}

/// Mean time of `f` over `n` calls.
fn mean(n: u32, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed() / n
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(3));
    let mut summary = Vec::new();
    for (name, spec) in [
        ("placement bench's spec", small_spec()),
        ("operator's spec", operator_spec()),
    ] {
        let tasks = tasks(&spec);
        let mut row = Vec::new();
        for shared in [false, true] {
            let form = if shared {
                "shared specs"
            } else {
                "whole tasks"
            };
            let msg = encode(&tasks, shared);
            let decoded: Vec<Task> = decode(&msg.0, &msg.1)
                .into_iter()
                .collect::<Result<_, _>>()
                .expect("the message decodes");
            assert_eq!(decoded, tasks, "the message reads back as sent");
            let bytes: usize = msg.0.iter().chain(&msg.1).map(String::len).sum();
            c.bench_function(&format!("encode {TASKS} tasks, {name}, {form}"), |b| {
                b.iter(|| encode(black_box(&tasks), shared))
            });
            c.bench_function(&format!("decode {TASKS} tasks, {name}, {form}"), |b| {
                b.iter(|| decode(black_box(&msg.0), black_box(&msg.1)))
            });
            let enc = mean(20_000, || {
                black_box(encode(black_box(&tasks), shared));
            });
            let dec = mean(20_000, || {
                black_box(decode(black_box(&msg.0), black_box(&msg.1)));
            });
            row.push((bytes, enc, dec));
        }
        summary.push((name, row));
    }
    println!(
        "\nassignments: one message of {TASKS} tasks of one service (mean of 20,000 in this run)"
    );
    for (name, row) in summary {
        let [(b0, e0, d0), (b1, e1, d1)] = [row[0], row[1]];
        println!(
            "  {name}: bytes {b0} -> {b1} ({:.2}x), encode {e0:?} -> {e1:?} ({:.2}x), \
             decode {d0:?} -> {d1:?} ({:.2}x)",
            b1 as f64 / b0 as f64,
            e1.as_secs_f64() / e0.as_secs_f64(),
            d1.as_secs_f64() / d0.as_secs_f64(),
        );
    }
}
