//! The replicated store: object model, Raft commands, sealed log and snapshot storage.
pub mod model;
