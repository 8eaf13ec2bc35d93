//! Adversary tests (see `mod.rs`): exec.
