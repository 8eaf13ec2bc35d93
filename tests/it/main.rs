//! skep's integration tests: real `skep daemon` processes on loopback addresses, driven through
//! the `skep` CLI as an operator would. One test binary (fast to build, as ripgrep does it);
//! a module per topic, with the shared helpers in `harness/` (topic modules import only from it,
//! never from each other).
//!
//! Every node gets its own address (`127.X.Y.Z:2377`), data directory and socket, so the tests
//! run in parallel; every daemon is killed when its test ends, even when it fails, and a failing
//! test prints the daemons' logs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod harness;

mod adversary;
mod at_rest;
mod audit_review;
mod away;
mod backup;
mod bad_input;
mod ca_rotation;
mod cli;
mod cluster;
mod configs;
mod daemon_logs;
mod docker_services;
mod events;
mod everyday_cli;
mod faults;
mod health;
mod lifecycle;
mod limits;
mod manual;
mod mesh;
mod mesh_identity;
mod metrics;
mod oom;
mod operators;
mod raft_traffic;
mod reads;
mod recovery;
mod restart;
mod roles;
mod rollout;
mod rotation;
mod runtime;
mod secret_delivery;
mod secrets;
mod service_cli;
mod services;
mod spiffe_clients;
mod stacks;
mod store_faults;
mod tutorial;
mod volumes;
mod workload_identity;
