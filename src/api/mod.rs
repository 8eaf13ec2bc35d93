//! The gRPC API: generated from `proto/skep.proto` at build time.
#![allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used)]

/// Generated messages, clients and servers of `skep.v1`.
pub mod v1 {
    tonic::include_proto!("skep.v1");
}

impl std::fmt::Debug for v1::SecretCreateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCreateRequest")
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("value", &"..")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_secret_value_never_shows_in_debug() {
        let req = super::v1::SecretCreateRequest {
            name: "db".into(),
            value: b"hunter2".to_vec(),
            ..Default::default()
        };
        assert!(!format!("{req:?}").contains("hunter2"));
    }
}
