//! Secrets: small sensitive values (passwords, keys) the operator hands to services.
//!
//! A secret's value lives only in the sealed Raft store. It is never logged, never returned
//! by the control API, and `Debug` does not show it; what is shown is its SHA-256 digest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::secret::SecretBytes;

/// A secret object (`secret create`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    /// Secret ID.
    pub id: String,
    /// Name, unique in the cluster.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Hex SHA-256 of the value.
    pub digest: String,
    /// Size of the value in bytes.
    pub size: u64,
    /// The value. `SecretBytes` prints as `..`, so deriving `Debug` does not show it.
    pub value: SecretBytes,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 time of the last change.
    pub updated_at: String,
}

/// Hex SHA-256 of a secret value.
pub fn digest(value: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_value() {
        let s = Secret {
            id: "i".into(),
            name: "n".into(),
            labels: BTreeMap::new(),
            digest: digest(b"hunter2"),
            size: 7,
            value: SecretBytes::new(b"hunter2".to_vec()),
            created_at: "t".into(),
            updated_at: "t".into(),
        };
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(
            s.digest,
            "f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7"
        );
    }
}
