//! Adversary tests (see `mod.rs`): identity.
