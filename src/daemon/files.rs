//! The node's files and keys in its data directory: where each lives (`Paths`), who the node
//! is (`node.json`), writing them privately and atomically, and opening its identity again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skep_pki::NodeKey;

use super::{Daemon, DaemonError};
use crate::agent::ManagerList;
use crate::identity::IdentityError;
use crate::net::{self, Credentials};
use crate::secret::SecretBytes;
use crate::store::model::NodeRole;
use crate::store::seal::{Dek, Kek, RecordKind};

/// Who this node is. Nothing secret: kept in plaintext as `node.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(super) struct NodeFile {
    pub(super) node_id: String,
    pub(super) role: NodeRole,
    pub(super) cluster_id: String,
    pub(super) advertise_addr: String,
    pub(super) managers: Vec<String>,
    pub(super) autolock: bool,
}

pub(super) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DaemonError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |what, source| DaemonError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    // A temporary name of its own for every write: `with_extension` once gave `node.json`
    // and `node.chain` (and `kek`, `kek.sealed`) the same one, and a role switch saving one
    // while a renewal saved the other moved the wrong file into place or failed.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io("creating", e))?;
    f.write_all(bytes).map_err(|e| io("writing", e))?;
    f.sync_all().map_err(|e| io("syncing", e))?;
    std::fs::rename(&tmp, path).map_err(|e| io("renaming into place", e))
}

pub(super) fn read(path: &Path) -> Result<Vec<u8>, DaemonError> {
    std::fs::read(path).map_err(|source| DaemonError::Io {
        what: "reading",
        path: path.to_path_buf(),
        source,
    })
}

#[derive(Clone)]
pub(super) struct Paths(pub(super) PathBuf);

impl Paths {
    /// A renewed certificate waiting to replace `node.crt` (see [`NodeKeys`]).
    pub(super) fn next_cert(&self) -> PathBuf {
        self.0.join("node.crt.next")
    }
    pub(super) fn node(&self) -> PathBuf {
        self.0.join("node.json")
    }
    pub(super) fn kek(&self) -> PathBuf {
        self.0.join("kek")
    }
    /// The node's KEK sealed under the key derived from the current unlock key (autolock,
    /// after the unlock key was rotated or autolock turned on).
    pub(super) fn sealed_kek(&self) -> PathBuf {
        self.0.join("kek.sealed")
    }
    pub(super) fn dek(&self) -> PathBuf {
        self.0.join("dek.sealed")
    }
    pub(super) fn key(&self) -> PathBuf {
        self.0.join("node.key.sealed")
    }
    pub(super) fn chain(&self) -> PathBuf {
        self.0.join("node.chain")
    }
    pub(super) fn cert(&self) -> PathBuf {
        self.0.join("node.crt")
    }
    pub(super) fn root(&self) -> PathBuf {
        self.0.join("root.crt")
    }
    pub(super) fn raft(&self) -> PathBuf {
        self.0.join("raft")
    }
    /// The rollback anchor of `raft/`, outside it (see [`crate::store::anchor`]).
    pub(super) fn anchor(&self) -> PathBuf {
        self.0.join(crate::store::anchor::ANCHOR_FILE)
    }
    pub(super) fn tasks(&self) -> PathBuf {
        self.0.join("tasks")
    }
}

/// Everything a node writes when it gets an identity.
pub(super) struct Identity<'a> {
    pub(super) file: &'a NodeFile,
    pub(super) kek: &'a Kek,
    pub(super) store_kek: bool,
    pub(super) dek: Option<&'a Dek>,
    pub(super) key: &'a NodeKey,
    pub(super) cert_der: &'a [u8],
    pub(super) chain: &'a [Vec<u8>],
    pub(super) root_der: &'a [u8],
}

impl Daemon {
    pub(super) fn save_identity(&self, id: Identity<'_>) -> Result<(), DaemonError> {
        let p = self.paths();
        if id.store_kek {
            write_private(&p.kek(), id.kek.expose_bytes())?;
        } else if p.kek().exists() {
            std::fs::remove_file(p.kek()).map_err(|source| DaemonError::Io {
                what: "removing",
                path: p.kek(),
                source,
            })?;
        }
        if let Some(dek) = id.dek {
            write_private(&p.dek(), &id.kek.wrap(dek))?;
        }
        write_private(
            &p.key(),
            &id.kek.seal_blob(RecordKind::NodeKey, &id.key.pkcs8_der()),
        )?;
        write_private(&p.chain(), &id.chain.concat())?;
        write_private(&p.cert(), id.cert_der)?;
        write_private(&p.root(), id.root_der)?;
        self.save_file(id.file)
    }

    pub(super) fn save_file(&self, file: &NodeFile) -> Result<(), DaemonError> {
        let bytes =
            serde_json::to_vec_pretty(file).map_err(|e| DaemonError::Start(e.to_string()))?;
        write_private(&self.paths().node(), &bytes)
    }
}

/// The node's identity from its files. A renewal interrupted between writing the new key and
/// moving the new certificate into place is finished here: `node.crt.next` is used if it is
/// the one that matches the key, and dropped otherwise.
pub(super) fn open_identity(
    p: &Paths,
    key_der: SecretBytes,
    root_der: Vec<u8>,
) -> Result<Arc<net::identity::LiveIdentity>, DaemonError> {
    let chain = match std::fs::read(p.chain()) {
        Ok(bytes) => skep_pki::split_der_certs(&bytes)
            .map_err(|e| DaemonError::Corrupt(p.chain(), e.to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(DaemonError::Io {
                what: "reading",
                path: p.chain(),
                source,
            });
        }
    };
    let creds = |cert_der| Credentials {
        cert_der,
        chain: chain.clone(),
        key_der: key_der.clone(),
        root_der: root_der.clone(),
    };
    let next = p.next_cert();
    if next.exists() {
        if let Ok(id) = net::identity::LiveIdentity::new(creds(read(&next)?)) {
            std::fs::rename(&next, p.cert()).map_err(|source| DaemonError::Io {
                what: "finishing a certificate renewal: renaming",
                path: next.clone(),
                source,
            })?;
            return Ok(id);
        }
        let _ = std::fs::remove_file(&next);
    }
    net::identity::LiveIdentity::new(creds(read(&p.cert())?))
        .map_err(|e| DaemonError::Corrupt(p.cert(), e.to_string()))
}

/// The node's key, certificate and roots on disk, as the identity task changes them.
pub(super) struct NodeKeys {
    pub(super) paths: Paths,
    pub(super) kek: Kek,
}

impl crate::identity::Keep for NodeKeys {
    fn roots(&self, der: &[u8]) -> Result<(), IdentityError> {
        write_private(&self.paths.root(), der).map_err(|e| IdentityError::Keep(e.to_string()))
    }

    /// New certificate to `node.crt.next`, new key (sealed) into place, then the certificate:
    /// a crash at any point leaves a pair that [`open_identity`] can use.
    fn credentials(&self, creds: &Credentials) -> Result<(), IdentityError> {
        let keep = |e: DaemonError| IdentityError::Keep(e.to_string());
        let next = self.paths.next_cert();
        write_private(&next, &creds.cert_der).map_err(keep)?;
        write_private(&self.paths.chain(), &creds.chain.concat()).map_err(keep)?;
        let sealed = self
            .kek
            .seal_blob(RecordKind::NodeKey, creds.key_der.expose());
        write_private(&self.paths.key(), &sealed).map_err(keep)?;
        std::fs::rename(&next, self.paths.cert()).map_err(|source| {
            keep(DaemonError::Io {
                what: "renaming into place",
                path: next,
                source,
            })
        })
    }
}

/// Reads, changes and writes `node.json` (other fields as they are on disk now). One writer
/// at a time, so concurrent changes (the manager list, the autolock flag) are not lost.
pub(super) fn update_node_file(
    path: &Path,
    change: impl FnOnce(&mut NodeFile),
) -> Result<(), DaemonError> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _one = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let mut file: NodeFile = serde_json::from_slice(&read(path)?)
        .map_err(|e| DaemonError::Corrupt(path.to_path_buf(), e.to_string()))?;
    change(&mut file);
    let bytes = serde_json::to_vec_pretty(&file).map_err(|e| DaemonError::Start(e.to_string()))?;
    write_private(path, &bytes)
}

/// Saves the manager list the agent learns, so a restarted node finds the swarm again. Reads
/// the file each time so it never undoes another change (such as adopting autolock).
pub(super) async fn persist_managers(path: PathBuf, list: ManagerList) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let now = list.lock().map(|l| l.clone()).unwrap_or_default();
        if now.is_empty() {
            continue;
        }
        let unchanged = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<NodeFile>(&b).ok())
            .is_some_and(|f| f.managers == now);
        if unchanged {
            continue;
        }
        if let Err(e) = update_node_file(&path, |f| f.managers = now) {
            tracing::warn!(error = %e, "could not save the manager list");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    /// Two files whose names differ only after the first dot (`node.json`, `node.chain`)
    /// written at once, as a role switch and a renewal do: each write lands whole in its own
    /// file.
    #[test]
    fn concurrent_writes_of_sibling_files_never_cross() {
        let dir = tempfile::tempdir().unwrap();
        let paths = [dir.path().join("node.json"), dir.path().join("node.chain")];
        std::thread::scope(|s| {
            for (i, path) in paths.iter().enumerate() {
                s.spawn(move || {
                    for round in 0..300u32 {
                        let bytes = format!("{i}:{round}").repeat(100);
                        super::write_private(path, bytes.as_bytes()).unwrap();
                        let back = std::fs::read_to_string(path).unwrap();
                        assert!(
                            back.starts_with(&format!("{i}:")),
                            "{path:?} holds {back:.20}"
                        );
                    }
                });
            }
        });
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 2, "temporary files left behind: {left:?}");
    }
}
