//! Adversary tests (see `mod.rs`): audit.
