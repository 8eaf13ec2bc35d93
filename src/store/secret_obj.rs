//! Secrets and configs: small values (passwords, keys, configuration files) the operator hands
//! to services, each a series of immutable versions (`secret update` adds one).
//!
//! A secret's value lives only in the sealed Raft store. It is never logged, never returned
//! by the control API, and `Debug` does not show it; what is shown is its SHA-256 digest.
//! Configs are the same object in their own map (`State::configs`): not sensitive, but stored
//! and delivered the same way.
//!
//! The current version's digest, size, value and time are the object's own fields (so a store
//! written before versions existed reads as version 1); earlier or later versions still kept
//! are in `others`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::secret::SecretBytes;

/// Most versions one secret keeps, whatever the history limit: an update beyond it is refused
/// until versions are unused and pruned.
pub const MAX_VERSIONS: usize = 64;

fn one() -> u64 {
    1
}

/// A secret (or config) object (`secret create`, `secret update`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secret {
    /// Secret ID.
    pub id: String,
    /// Name, unique in the cluster.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Hex SHA-256 of the current version's value.
    pub digest: String,
    /// Size of the current version's value in bytes.
    pub size: u64,
    /// The current version's value. `SecretBytes` prints as `..`, so `Debug` does not show it.
    pub value: SecretBytes,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 time of the last change.
    pub updated_at: String,
    /// The current version's number (from 1).
    #[serde(default = "one")]
    pub version: u64,
    /// The other versions still kept, by ascending number.
    #[serde(default)]
    pub others: Vec<SecretVersion>,
    /// The last rollout of a new current version to the tasks that follow it.
    #[serde(default)]
    pub rollout: Option<Rollout>,
}

/// One kept version of a secret other than the current one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretVersion {
    /// Its number.
    pub version: u64,
    /// Hex SHA-256 of its value.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// The value (hidden from `Debug`).
    pub value: SecretBytes,
    /// RFC 3339 time it was added.
    pub created_at: String,
}

/// One version, current or not, as read from a [`Secret`].
#[derive(Clone, Copy, Debug)]
pub struct VersionRef<'a> {
    /// Its number.
    pub version: u64,
    /// Hex SHA-256 of its value.
    pub digest: &'a str,
    /// Size in bytes.
    pub size: u64,
    /// The value.
    pub value: &'a SecretBytes,
    /// RFC 3339 time it was added.
    pub created_at: &'a str,
}

/// Where a rollout of a new current version stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RolloutState {
    /// Tasks are being moved to the new version.
    Rolling,
    /// Stopped by the operator (`secret rollout pause`); no more tasks move until continued.
    Paused,
    /// Every task that follows the secret holds the new version.
    Completed,
}

impl RolloutState {
    /// The word the CLI shows.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Rolling => "rolling",
            RolloutState::Paused => "paused",
            RolloutState::Completed => "completed",
        }
    }
}

/// The rollout of version `to` (from `from`) to the tasks that follow the secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// The version current before.
    pub from: u64,
    /// The version being rolled out (the current one).
    pub to: u64,
    /// Where it stands.
    pub state: RolloutState,
    /// Whether it is a `secret rollback`.
    pub rollback: bool,
    /// RFC 3339 start.
    pub started_at: String,
    /// RFC 3339 time of the last change of state.
    pub updated_at: String,
}

impl Rollout {
    /// A rollout from `from` to `to` starting now.
    pub fn start(from: u64, to: u64, rollback: bool, at: &str) -> Self {
        Rollout {
            from,
            to,
            state: RolloutState::Rolling,
            rollback,
            started_at: at.to_string(),
            updated_at: at.to_string(),
        }
    }
}

impl Secret {
    /// A new secret at version 1.
    pub fn new(
        id: String,
        name: String,
        labels: BTreeMap<String, String>,
        value: SecretBytes,
        now: &str,
    ) -> Self {
        Secret {
            id,
            name,
            labels,
            digest: digest(value.expose()),
            size: value.expose().len() as u64,
            value,
            created_at: now.to_string(),
            updated_at: now.to_string(),
            version: 1,
            others: Vec::new(),
            rollout: None,
        }
    }

    /// The current version.
    pub fn current(&self) -> VersionRef<'_> {
        VersionRef {
            version: self.version,
            digest: &self.digest,
            size: self.size,
            value: &self.value,
            created_at: &self.updated_at,
        }
    }

    /// Version `n`, if it is kept.
    pub fn get(&self, n: u64) -> Option<VersionRef<'_>> {
        if n == self.version {
            return Some(self.current());
        }
        self.others
            .iter()
            .find(|v| v.version == n)
            .map(|v| VersionRef {
                version: v.version,
                digest: &v.digest,
                size: v.size,
                value: &v.value,
                created_at: &v.created_at,
            })
    }

    /// Every kept version, by ascending number.
    pub fn versions(&self) -> Vec<VersionRef<'_>> {
        let mut all: Vec<VersionRef<'_>> = self
            .others
            .iter()
            .filter_map(|v| self.get(v.version))
            .collect();
        all.push(self.current());
        all.sort_by_key(|v| v.version);
        all
    }

    /// The highest version number ever kept (the next update is one more).
    pub fn latest(&self) -> u64 {
        self.others
            .iter()
            .map(|v| v.version)
            .chain([self.version])
            .max()
            .unwrap_or(self.version)
    }

    /// The kept version just below the current one (what `secret rollback` returns to).
    pub fn previous(&self) -> Option<u64> {
        self.others
            .iter()
            .map(|v| v.version)
            .filter(|v| *v < self.version)
            .max()
    }

    /// Adds `value` as version `latest() + 1` and makes it current; the old current version is
    /// kept in `others`. Returns the new number.
    pub fn push(&mut self, value: SecretBytes, now: &str) -> u64 {
        let n = self.latest() + 1;
        let new = SecretVersion {
            version: n,
            digest: digest(value.expose()),
            size: value.expose().len() as u64,
            value,
            created_at: now.to_string(),
        };
        self.others.push(new);
        self.make_current(n);
        n
    }

    /// Makes kept version `n` the current one; false if it is not kept.
    pub fn make_current(&mut self, n: u64) -> bool {
        if n == self.version {
            return true;
        }
        let Some(i) = self.others.iter().position(|v| v.version == n) else {
            return false;
        };
        let new = self.others.remove(i);
        let old = SecretVersion {
            version: self.version,
            digest: std::mem::replace(&mut self.digest, new.digest),
            size: std::mem::replace(&mut self.size, new.size),
            value: std::mem::replace(&mut self.value, new.value),
            created_at: std::mem::replace(&mut self.updated_at, new.created_at),
        };
        self.version = n;
        self.others.push(old);
        self.others.sort_by_key(|v| v.version);
        true
    }

    /// Forgets the non-current versions `keep` refuses, except the newest `limit` of them.
    /// Returns the numbers pruned.
    pub fn prune(&mut self, limit: usize, in_use: impl Fn(u64) -> bool) -> Vec<u64> {
        let mut unused: Vec<u64> = self
            .others
            .iter()
            .map(|v| v.version)
            .filter(|v| !in_use(*v))
            .collect();
        unused.sort_unstable_by(|a, b| b.cmp(a));
        let gone: Vec<u64> = unused.into_iter().skip(limit).collect();
        self.others.retain(|v| !gone.contains(&v.version));
        gone
    }
}

/// Hex SHA-256 of a secret value.
pub fn digest(value: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sec() -> Secret {
        Secret::new(
            "i".into(),
            "n".into(),
            BTreeMap::new(),
            SecretBytes::new(b"hunter2".to_vec()),
            "t",
        )
    }

    #[test]
    fn debug_hides_the_value() {
        let mut s = sec();
        s.push(SecretBytes::new(b"swordfish".to_vec()), "t2");
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("swordfish"),
            "{shown}"
        );
        assert_eq!(
            s.get(1).map(|v| v.digest.to_string()),
            Some("f52fbd32b2b3b86ff88ef6c490628285f482af15ddcb29541f94bcf526a3f6c7".to_string())
        );
    }

    #[test]
    fn versions_push_roll_back_and_prune() {
        let mut s = sec();
        assert_eq!(s.push(SecretBytes::new(b"v2".to_vec()), "t2"), 2);
        assert_eq!(s.push(SecretBytes::new(b"v3".to_vec()), "t3"), 3);
        assert_eq!(s.current().value.expose(), b"v3");
        assert_eq!(s.previous(), Some(2));
        assert!(s.make_current(2));
        assert_eq!((s.version, s.current().value.expose()), (2, &b"v2"[..]));
        assert_eq!(s.latest(), 3);
        assert_eq!(s.previous(), Some(1));
        // A push after a rollback numbers past every version ever kept.
        assert_eq!(s.push(SecretBytes::new(b"v4".to_vec()), "t4"), 4);
        assert_eq!(
            s.versions().iter().map(|v| v.version).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        // Keep one unused other version besides those in use (1).
        let gone = s.prune(1, |v| v == 1);
        assert_eq!(gone, vec![2]);
        assert_eq!(
            s.versions().iter().map(|v| v.version).collect::<Vec<_>>(),
            vec![1, 3, 4]
        );
        assert!(!s.make_current(2));
    }

    #[test]
    fn a_secret_stored_before_versions_reads_as_version_one() {
        let old = r#"{"id":"i","name":"n","labels":{},"digest":"d","size":1,"value":[118],
            "created_at":"t","updated_at":"t"}"#;
        let s: Secret = serde_json::from_str(old).unwrap();
        assert_eq!(
            (s.version, s.others.len(), s.rollout.is_none()),
            (1, 0, true)
        );
    }
}
