//! skep: a container orchestrator with Docker Swarm's workflow and a zero-trust security core.
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
pub mod daemon;
pub mod secret;
pub mod store;
pub mod util;
