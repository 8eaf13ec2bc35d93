//! The newest audit checkpoint this client verified, per swarm, kept in the CLI's state
//! directory (`SKEP_CONFIG` or `~/.skep`, file `audit-checkpoints.json`): a later `audit
//! verify` whose chain ends before it, or disagrees with it, fails ([`crate::audit::trust`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::audit::trust::Seen;

/// Swarms remembered at most; the least recently verified are forgotten first.
const MAX_SWARMS: usize = 256;
const FILE: &str = "audit-checkpoints.json";

/// What the file holds: cluster ID (or `key:HEX` for a chain of unknown swarm) → checkpoint.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct SeenCheckpoints {
    #[serde(default)]
    swarms: BTreeMap<String, Seen>,
}

/// Where the file is: in the CLI's state directory.
pub(super) fn path() -> anyhow::Result<PathBuf> {
    Ok(super::operator::config_dir()?.join(FILE))
}

impl SeenCheckpoints {
    /// Reads the file; none yet is empty. A file that does not parse is an error: silently
    /// forgetting what was seen would let a cut chain pass.
    pub(super) fn load(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| {
                format!(
                    "{} is corrupt: remove it to start over (the audit checkpoints it remembered are then forgotten)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// The checkpoint remembered for the swarm `cluster_id`, or for a chain signed by `key`.
    pub(super) fn get(&self, cluster_id: Option<&str>, key: &str) -> Option<&Seen> {
        cluster_id.and_then(|c| self.swarms.get(c)).or_else(|| {
            self.swarms
                .values()
                .filter(|s| s.public_key.eq_ignore_ascii_case(key))
                .max_by_key(|s| s.seq)
        })
    }

    /// Remembers `seen` unless an equal or newer checkpoint is remembered for the swarm.
    /// Returns whether anything changed.
    pub(super) fn remember(&mut self, cluster_id: Option<&str>, seen: Seen) -> bool {
        let name = cluster_id.map_or_else(|| format!("key:{}", seen.public_key), str::to_string);
        if self.swarms.get(&name).is_some_and(|s| s.seq >= seen.seq) {
            return false;
        }
        self.swarms.insert(name, seen);
        while self.swarms.len() > MAX_SWARMS {
            let oldest = self
                .swarms
                .iter()
                .min_by(|a, b| a.1.seen_at.cmp(&b.1.seen_at))
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.swarms.remove(&k),
                None => break,
            };
        }
        true
    }

    /// Writes the file (owner-only, replaced atomically).
    pub(super) fn save(&self, path: &Path) -> anyhow::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = path.parent().context("the state file has no directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(format!("{FILE}.{}.tmp", std::process::id()));
        let bytes = serde_json::to_vec_pretty(self).context("encoding the checkpoints")?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(seq: u64, key: &str, at: &str) -> Seen {
        Seen {
            seq,
            hash: format!("h{seq}"),
            public_key: key.into(),
            seen_at: at.into(),
        }
    }

    #[test]
    fn the_newest_checkpoint_per_swarm_is_kept_and_found_by_cluster_or_key() {
        let mut s = SeenCheckpoints::default();
        assert!(s.remember(Some("c1"), seen(10, "k1", "2026-01-01T00:00:00Z")));
        assert!(!s.remember(Some("c1"), seen(5, "k1", "2026-01-02T00:00:00Z")));
        assert!(s.remember(Some("c1"), seen(20, "k1", "2026-01-03T00:00:00Z")));
        assert_eq!(s.get(Some("c1"), "zz").map(|x| x.seq), Some(20));
        // A header-less file: found by its key.
        assert_eq!(s.get(None, "K1").map(|x| x.seq), Some(20));
        assert!(s.get(Some("c2"), "k2").is_none());
        for i in 0..MAX_SWARMS + 5 {
            s.remember(
                Some(&format!("x{i}")),
                seen(1, "kx", &format!("2027-01-01T00:00:{:02}Z", i % 60)),
            );
        }
        assert_eq!(s.swarms.len(), MAX_SWARMS);
        // The least recently verified swarm was forgotten.
        assert!(s.get(Some("c1"), "k1").is_none());
    }
}
