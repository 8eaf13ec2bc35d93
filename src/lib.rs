//! skep: a container orchestrator with Docker Swarm's workflow and a zero-trust security core.
//!
//! ```text
//!  skep CLI ──unix socket──► daemon (Control API)
//!                               │ init / join / leave / unlock
//!              ┌────────────────┴───────────────┐
//!           manager                           agent (every node)
//!   Raft (openraft, sealed store)          heartbeats over mTLS ──► leader's dispatcher
//!   CA service, dispatcher, audit chain
//!   all node-to-node traffic: gRPC over rustls TLS 1.3 with client certificates
//! ```
#![forbid(unsafe_code)]

pub mod agent;
pub mod api;
pub mod audit;
pub mod cli;
pub mod daemon;
pub mod identity;
pub mod logging;
pub mod manager;
pub mod metrics;
pub mod net;
pub mod policy;
pub mod secret;
pub mod spec;
pub mod stack;
pub mod store;
pub mod util;
