//! The gRPC API: generated from `proto/skep.proto` at build time.
#![allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used)]

/// Generated messages, clients and servers of `skep.v1`.
pub mod v1 {
    tonic::include_proto!("skep.v1");
}

pub mod view;

/// The request header by which a Control call asks to skip the linearizable read (`--stale`);
/// its value is [`STALE_VALUE`].
pub const STALE_HEADER: &str = "skep-read";
/// The value of [`STALE_HEADER`] that asks for a stale read.
pub const STALE_VALUE: &str = "stale";

/// What a locked manager's refusal of `swarm init --force-new-cluster` without its unlock key
/// says: the CLI asks for the key when it sees it.
pub const LOCKED_FOR_RECOVERY: &str = "this manager is locked";

impl std::fmt::Debug for v1::SecretCreateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCreateRequest")
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("value", &"..")
            .field("config", &self.config)
            .finish()
    }
}

impl std::fmt::Debug for v1::SecretUpdateRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretUpdateRequest")
            .field("secret", &self.secret)
            .field("value", &"..")
            .field("config", &self.config)
            .finish()
    }
}

impl std::fmt::Debug for v1::SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("value", &"..")
            .field("version", &self.version)
            .field("config", &self.config)
            .finish()
    }
}

impl std::fmt::Debug for v1::JwtSvidResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtSvidResponse")
            .field("token", &"..")
            .field("spiffe_id", &self.spiffe_id)
            .finish()
    }
}

impl std::fmt::Debug for v1::SwarmCaRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmCaRequest")
            .field("rotate", &self.rotate)
            .field("ca_cert_pem", &self.ca_cert_pem)
            .field("ca_key_pem", &"..")
            .field("cert_expiry_secs", &self.cert_expiry_secs)
            .finish()
    }
}

impl std::fmt::Debug for v1::SwarmInitRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmInitRequest")
            .field("advertise_addr", &self.advertise_addr)
            .field("cert_expiry_secs", &self.cert_expiry_secs)
            .field("autolock", &self.autolock)
            .field("force_new_cluster", &self.force_new_cluster)
            .field("unlock_key", &"..")
            .finish()
    }
}

impl std::fmt::Debug for v1::SwarmBackupRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmBackupRequest")
            .field("key", &"..")
            .finish()
    }
}

impl std::fmt::Debug for v1::SwarmBackupChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmBackupChunk")
            .field("data", &format_args!("{} bytes", self.data.len()))
            .field("generated_key", &"..")
            .field("summary", &self.summary)
            .finish()
    }
}

impl std::fmt::Debug for v1::SwarmRestoreChunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmRestoreChunk")
            .field("data", &format_args!("{} bytes", self.data.len()))
            .field("key", &"..")
            .field("advertise_addr", &self.advertise_addr)
            .field("rollback", &self.rollback)
            .field("expected_size", &self.expected_size)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn unlock_and_backup_keys_never_show_in_debug() {
        let key = "SKEPBKP-0123456789ABCDEF";
        let shown = [
            format!(
                "{:?}",
                super::v1::SwarmInitRequest {
                    unlock_key: key.into(),
                    ..Default::default()
                }
            ),
            format!("{:?}", super::v1::SwarmBackupRequest { key: key.into() }),
            format!(
                "{:?}",
                super::v1::SwarmBackupChunk {
                    generated_key: key.into(),
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                super::v1::SwarmRestoreChunk {
                    key: key.into(),
                    ..Default::default()
                }
            ),
        ];
        for s in shown {
            assert!(!s.contains("0123456789"), "{s}");
        }
    }

    #[test]
    fn a_secret_value_never_shows_in_debug() {
        let req = super::v1::SecretCreateRequest {
            name: "db".into(),
            value: b"hunter2".to_vec(),
            ..Default::default()
        };
        assert!(!format!("{req:?}").contains("hunter2"));
        assert!(!format!("{req:?}").contains("104, 117")); // nor as a byte list
        let upd = super::v1::SecretUpdateRequest {
            secret: "db".into(),
            value: b"hunter2".to_vec(),
            ..Default::default()
        };
        assert!(!format!("{upd:?}").contains("hunter2"));
        assert!(!format!("{upd:?}").contains("104, 117"));
        let msg = super::v1::Assignments {
            secrets: vec![super::v1::SecretValue {
                id: "i".into(),
                name: "db".into(),
                value: b"hunter2".to_vec(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(!format!("{msg:?}").contains("hunter2"));
        assert!(!format!("{msg:?}").contains("104, 117")); // nor as a byte list
        let ca = super::v1::SwarmCaRequest {
            rotate: true,
            ca_key_pem: "-----BEGIN PRIVATE KEY-----\nMIGH".into(),
            ..Default::default()
        };
        assert!(!format!("{ca:?}").contains("MIGH"));
    }
}
