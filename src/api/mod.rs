//! The gRPC API: generated from `proto/skep.proto` at build time.
#![allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used)]

/// Generated messages, clients and servers of `skep.v1`.
pub mod v1 {
    tonic::include_proto!("skep.v1");
}
