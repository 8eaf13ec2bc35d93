//! The gRPC APIs: skep's own, generated from `proto/skep.proto` at build time, and the SPIFFE
//! Workload API (`proto/spiffe/workload.proto`) that tasks call.
#![allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used)]

/// Generated messages, clients and servers of `skep.v1`.
pub mod v1 {
    tonic::include_proto!("skep.v1");
}

/// The SPIFFE Workload API (service `SpiffeWorkloadAPI`, no proto package), served to tasks by
/// `crate::agent::workload`. The proto is a verbatim copy of
/// `proto/spiffe/workload/workload.proto` from spiffe/go-spiffe (Apache-2.0) at commit
/// e9973f6314a3fa0e36eb1f00fbfe37bdc1554b96.
pub mod spiffe {
    tonic::include_proto!("_");
}

pub mod assignments;
pub mod codec;
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

impl std::fmt::Debug for spiffe::X509svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509SVID")
            .field("spiffe_id", &self.spiffe_id)
            .field("x509_svid", &format_args!("{} bytes", self.x509_svid.len()))
            .field("x509_svid_key", &"..")
            .field("bundle", &format_args!("{} bytes", self.bundle.len()))
            .field("hint", &self.hint)
            .finish()
    }
}

impl std::fmt::Debug for spiffe::Jwtsvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JWTSVID")
            .field("spiffe_id", &self.spiffe_id)
            .field("svid", &"..")
            .field("hint", &self.hint)
            .finish()
    }
}

impl std::fmt::Debug for spiffe::ValidateJwtsvidRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValidateJWTSVIDRequest")
            .field("audience", &self.audience)
            .field("svid", &"..")
            .finish()
    }
}

impl std::fmt::Debug for spiffe::Witsvid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WITSVID")
            .field("spiffe_id", &self.spiffe_id)
            .field("wit_svid", &"..")
            .field("wit_svid_key", &"..")
            .field("hint", &self.hint)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn workload_api_keys_and_tokens_never_show_in_debug() {
        use super::spiffe::*;
        let key = b"PRIVATEKEY".to_vec();
        let token = "eyJhbGciOiJFUzI1NiJ9.SECRETCLAIMS.SIG".to_string();
        let shown = [
            format!(
                "{:?}",
                X509svidResponse {
                    svids: vec![X509svid {
                        spiffe_id: "spiffe://td/ns/default/svc/web".into(),
                        x509_svid_key: key.clone(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }
            ),
            format!(
                "{:?}",
                JwtsvidResponse {
                    svids: vec![Jwtsvid {
                        svid: token.clone(),
                        ..Default::default()
                    }],
                }
            ),
            format!(
                "{:?}",
                ValidateJwtsvidRequest {
                    audience: "db".into(),
                    svid: token.clone(),
                }
            ),
            format!(
                "{:?}",
                WitsvidResponse {
                    svids: vec![Witsvid {
                        wit_svid: token.clone(),
                        wit_svid_key: "PRIVATEKEY".into(),
                        ..Default::default()
                    }],
                }
            ),
        ];
        for s in shown {
            assert!(!s.contains("PRIVATEKEY"), "{s}");
            assert!(!s.contains("80, 82, 73"), "{s}"); // nor as a byte list
            assert!(!s.contains("SECRETCLAIMS"), "{s}");
        }
    }

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

/// The Control API version this build speaks (`skep version`): bumped when a message or a
/// method changes meaning. Fields and methods are only ever added, so a CLI can talk to any
/// daemon from [`MIN_API_VERSION`] on.
pub const API_VERSION: &str = "1.1";
/// The oldest Control API version this daemon still answers.
pub const MIN_API_VERSION: &str = "1.0";
