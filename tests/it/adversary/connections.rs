//! Adversary tests (see `mod.rs`): connections.
