//! Adversary tests (see `mod.rs`): names.
