//! The test harness: [`Node`] is one real `skep daemon` process, [`Cluster`] a swarm of them.
//!
//! ```text
//!  Node ── spawns ──► skep daemon --data-dir <tmp>/data --socket <tmp>/skep.sock
//!   │                   --listen-addr 127.X.Y.Z:2377 --hostname <name> --heartbeat-period 300ms
//!   │                   (stderr and stdout appended to <tmp>/daemon.log)
//!   └── cli(args) ──► skep --host unix://<tmp>/skep.sock <args>   (with a timeout)
//! ```
//!
//! Waits poll a condition with a short interval up to a deadline and fail with what they last
//! saw; there are no fixed sleeps standing in for waits.
//!
//! A file a job, every name re-exported here (topic modules import `crate::harness::...` and
//! never each other): [`require`] (what a test needs: `SKEP_IT_REQUIRE`, `SKEP_IT_ALLOW_SKIP`),
//! [`wait`] (over [`poll`], shared with `benches/common`), [`cli`] (running commands, reading their output), [`node`], [`cleanup`] (what
//! killed daemons leave; shared with `benches/common`), [`cluster`],
//! [`services`] (tasks, published ports), [`files`], [`programs`] (the test program and image), [`redis`] (a redis image for the volume tests), [`spiffe_images`] (the real SPIFFE
//! clients and their images),
//! [`docker`], [`credentials`] (a node's keys as a thief has them), [`operators`] (operator certificates and the CLI as an operator), [`netns`] (a private network
//! for fault injection).
// Helpers for every topic module; not each of them uses every helper.
#![allow(dead_code)]

pub mod cleanup;
pub mod cli;
pub mod cluster;
pub mod credentials;
pub mod docker;
pub mod executors;
pub mod failure;
pub mod files;
pub mod netns;
pub mod node;
pub mod operators;
pub mod poll;
pub mod programs;
pub mod redis;
pub mod require;
pub mod services;
pub mod spiffe_images;
pub mod text;
pub mod wait;

pub use cleanup::*;
pub use cli::*;
pub use cluster::*;
pub use credentials::*;
pub use docker::*;
pub use executors::*;
pub use files::*;
pub use netns::Net;
pub use node::*;
pub use operators::*;
pub use poll::*;
pub use programs::*;
pub use redis::*;
pub use require::*;
pub use services::*;
pub use spiffe_images::*;
pub use wait::*;
