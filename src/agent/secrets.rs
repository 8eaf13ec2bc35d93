//! Secrets on a node: the values the dispatcher sent for the tasks assigned here (in memory,
//! zeroized when dropped), and each task's memory-backed secrets directory.
//!
//! ```text
//!  Assignments{secrets} ─► SecretStore (values, while an assigned task references them)
//!  first task ─► bind <state>/secrets onto itself, mark it private (so what is mounted on it
//!                never propagates to other mount namespaces of the host), mount one tmpfs
//!                there for the node (0700, nosuid,nodev,noexec)
//!  task start ─► <state>/secrets/<task id>/ (0700, root)
//!                 ├─ files/<target under /run/secrets>  (each at its mode, uid, gid)
//!                 ├─ configs/<n>  (the task's n-th config, at its mode, uid, gid; bound
//!                 │               file by file at its absolute target)
//!                 ├─ spiffe/  (the task's workload identity, seen as /run/spiffe)
//!                 ├─ .stage/  (root only, never seen by the task: where a new version is
//!                 │            written whole before it is renamed over its target)
//!                 └─ held.json (the version of each secret written: what an adopting agent
//!                              reports)
//!             ─► exec: bound read-only at /run/secrets in the task's mount namespace
//!                docker: read-only bind mount at /run/secrets
//!  rotation   ─► .stage/swap (mode, uid, gid set) ─rename(2)─► files/<target>: a reader
//!                opens the old file or the new one, never a part of either
//!  task end   ─► the task's directory removed (the values leave memory with the files)
//! ```
//!
//! One tmpfs for the node, not one per task: an exec task's mount namespace starts as a copy
//! of the host's, so with a mount per task each new namespace copied every running task's
//! mount, and each mount, unmount and removal of a mount point had more namespaces to visit:
//! kernel memory and time under the kernel's one mount lock grew with the square of the tasks
//! (3,000 exec tasks with an identity each took minutes, `docs/performance.md`).
//!
//! There is no fallback to disk: if the tmpfs cannot be mounted, the task fails.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::secret::SecretBytes;
use crate::store::secret_obj::digest;
use crate::store::service::SecretRef;

/// Where secrets appear inside a task.
pub const TARGET_ROOT: &str = crate::spec::secret_target::SECRETS_DIR;
/// The node's tmpfs, under the agent's state directory: one directory per task.
pub const NODE_DIR: &str = "secrets";
/// Where a version of skep before the node tmpfs mounted a task's own tmpfs, inside the
/// task's directory (unmounted if found after an upgrade).
const LEGACY_MOUNT_DIR: &str = "secrets";
/// The directory inside the tmpfs that the task sees as `/run/secrets`.
pub const FILES_DIR: &str = "files";
/// The directory inside the tmpfs, beside [`FILES_DIR`] (so never under `/run/secrets`), that
/// holds the task's configs, one file each, named by its position in the task's spec.
pub const CONFIGS_DIR: &str = "configs";
/// The directory inside the tmpfs, beside [`FILES_DIR`], where a new version is written
/// before it replaces the old one: outside what the task sees, on the same file system (so
/// the rename is atomic).
pub const STAGE_DIR: &str = ".stage";
/// The directory inside the tmpfs, beside [`FILES_DIR`], that holds the task's workload
/// identity (`svid.pem`, `svid.key`, `bundle.pem`, the Workload API socket) and that the task
/// sees as `/run/spiffe`.
pub const SPIFFE_DIR: &str = "spiffe";
/// The file inside the tmpfs recording which version of each secret is mounted.
const HELD_FILE: &str = "held.json";

/// What went wrong while preparing a task's secrets. Shown as the task's error.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The node has not been sent the value (and could not get it).
    #[error("secret {name} was not delivered to this node: {reason}")]
    NotDelivered {
        /// Secret name.
        name: String,
        /// Why.
        reason: String,
    },
    /// The node's tmpfs could not be mounted. Nothing is written to disk instead.
    #[error(
        "cannot mount the node's tmpfs for task secrets at {}: {source}; secrets are never written to disk, so the task cannot start (the agent needs CAP_SYS_ADMIN to mount tmpfs)",
        path.display()
    )]
    Mount {
        /// Mount point.
        path: PathBuf,
        /// The cause.
        #[source]
        source: nix::Error,
    },
    /// Not a task ID: it could name a directory outside the node's tmpfs.
    #[error("not a task ID: {}", crate::util::quote(&crate::util::prefix(.0, 64)))]
    BadTaskId(String),
    /// The node's tmpfs or the task's directory on it could not be made.
    #[error("cannot create {}: {source}", path.display())]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A target breaks the rule of [`crate::store::secret_target`] (the managers enforce it
    /// too; checked again before anything is mounted).
    #[error("secret {name}: {reason}")]
    BadTarget {
        /// Secret name.
        name: String,
        /// Which rule the target broke, quoting at most a prefix of it.
        reason: String,
    },
    /// Writing a file or directory inside the tmpfs failed.
    #[error("cannot write secret {name} into the task's tmpfs: {source}")]
    Write {
        /// Secret name.
        name: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A secret held by the agent: its ID and version.
type Key = (String, u64);

/// One secret value held by the agent.
struct Held {
    name: String,
    value: SecretBytes,
}

/// A secret this node has received, as the agent remembers it (never the value).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Received {
    /// Secret ID.
    pub id: String,
    /// Secret name.
    pub name: String,
    /// Its version.
    #[serde(default)]
    pub version: u64,
    /// Hex SHA-256 of the value received.
    pub digest: String,
    /// RFC 3339 time it arrived.
    pub at: String,
    /// Whether the agent still holds the value.
    pub held: bool,
}

/// How many receipts the agent remembers.
const LEDGER: usize = 4096;

/// The secret values the agent holds, by secret ID and version, and a ledger of every value received
/// since the agent started (ID, name, digest and time: what `skep agent secrets` shows).
#[derive(Default)]
pub struct SecretStore {
    values: Mutex<HashMap<Key, Held>>,
    ledger: Mutex<std::collections::VecDeque<Received>>,
}

impl SecretStore {
    fn values(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Held>> {
        self.values.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a value the dispatcher sent.
    pub fn insert(&self, id: String, version: u64, name: String, value: SecretBytes) {
        let rec = Received {
            id: id.clone(),
            name: name.clone(),
            version,
            digest: digest(value.expose()),
            at: crate::util::now_rfc3339(),
            held: true,
        };
        self.values().insert((id, version), Held { name, value });
        let mut ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        ledger.push_back(rec);
        if ledger.len() > LEDGER {
            ledger.pop_front();
        }
    }

    /// Drops every value no (ID, version) in `keep` names; returns the names dropped.
    pub fn retain(&self, keep: &BTreeSet<(&str, u64)>) -> Vec<String> {
        let mut dropped = Vec::new();
        self.values().retain(|(id, v), h| {
            let k = keep.contains(&(id.as_str(), *v));
            if !k {
                dropped.push(h.name.clone());
            }
            k
        });
        dropped
    }

    /// Whether version `version` of secret `id` is held.
    #[cfg(test)]
    fn has(&self, id: &str, version: u64) -> bool {
        self.values().contains_key(&(id.to_string(), version))
    }

    /// A copy of version `version` of secret `id` (zeroized when dropped).
    pub fn get(&self, id: &str, version: u64) -> Option<SecretBytes> {
        self.values()
            .get(&(id.to_string(), version))
            .map(|h| SecretBytes::new(h.value.expose().to_vec()))
    }

    /// Every value received since the agent started, oldest first, marked held or dropped.
    pub fn received(&self) -> Vec<Received> {
        let held: BTreeSet<Key> = self.values().keys().cloned().collect();
        let ledger = self.ledger.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Received> = ledger.iter().cloned().collect();
        // Only the latest receipt of a held ID counts as holding it.
        let mut seen = BTreeSet::new();
        for r in out.iter_mut().rev() {
            let key = (r.id.clone(), r.version);
            r.held = held.contains(&key) && seen.insert(key);
        }
        out
    }
}

/// The node's tmpfs for every task's secrets, configs and identity (see the module's
/// documentation): mounted at `<state>/secrets` on first use, kept across agent restarts
/// (adopted tasks keep their files), unmounted when the node leaves.
#[derive(Debug)]
pub struct NodeTmpfs {
    root: PathBuf,
    /// Held while checking and mounting, so two first tasks do not stack two mounts.
    mounting: Mutex<()>,
}

impl NodeTmpfs {
    /// The node tmpfs of the agent whose state directory is `state_dir` (nothing is mounted
    /// until a task needs it).
    pub fn new(state_dir: &Path) -> NodeTmpfs {
        NodeTmpfs {
            root: state_dir.join(NODE_DIR),
            mounting: Mutex::new(()),
        }
    }

    /// Where it is mounted.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Mounts the tmpfs unless it is there (mounted before, or left by a previous run of the
    /// agent). Checked for every task, not remembered: if someone unmounted it, the next
    /// task's values must not land on the disk under it.
    fn ensure(&self) -> Result<(), SecretsError> {
        let _mounting = self.mounting.lock().unwrap_or_else(|p| p.into_inner());
        if is_tmpfs_mount(&self.root) {
            return Ok(());
        }
        let root = &self.root;
        let mount_err = |source| SecretsError::Mount {
            path: root.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|source| SecretsError::Dir {
                path: root.clone(),
                source,
            })?;
        make_private(root).map_err(|source| {
            unmount_dir(root);
            mount_err(source)
        })?;
        mount(
            Some("tmpfs"),
            root,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some("mode=0700"),
        )
        .map_err(|source| {
            unmount_dir(root);
            mount_err(source)
        })
    }

    /// Task `task_id`'s directory on the tmpfs; refused unless the ID is a plain name
    /// ([`crate::agent::task_id`]).
    fn task_dir(&self, task_id: &str) -> Result<PathBuf, SecretsError> {
        if crate::agent::task_id::is_valid(task_id) {
            Ok(self.root.join(task_id))
        } else {
            Err(SecretsError::BadTaskId(task_id.to_string()))
        }
    }

    /// As [`NodeTmpfs::mount_task_files`], with secrets only.
    pub fn mount_task_secrets(
        &self,
        task_id: &str,
        refs: &[SecretRef],
        values: &HashMap<String, SecretBytes>,
    ) -> Result<TaskSecrets, SecretsError> {
        self.mount_task_files(
            task_id,
            &Contents {
                secrets: refs,
                secret_values: values,
                configs: &[],
                config_values: &HashMap::new(),
            },
        )
    }

    /// Makes task `task_id`'s directory on the tmpfs (mounting the tmpfs if needed) and
    /// writes each secret under `files/` at its target, mode, uid and gid, and each config
    /// under `configs/` (by its position in the spec), for the runtime to bind at its target.
    /// Every value must be in the contents; every target is checked before anything is
    /// written. On any failure the task's directory is removed again.
    pub fn mount_task_files(
        &self,
        task_id: &str,
        c: &Contents<'_>,
    ) -> Result<TaskSecrets, SecretsError> {
        let (refs, values) = (c.secrets, c.secret_values);
        crate::spec::config_target::check_refs(c.configs).map_err(|reason| {
            SecretsError::BadTarget {
                name: c
                    .configs
                    .first()
                    .map(|r| r.secret_name.clone())
                    .unwrap_or_default(),
                reason,
            }
        })?;
        let mut config_plan = Vec::with_capacity(c.configs.len());
        for (i, r) in c.configs.iter().enumerate() {
            crate::spec::config_target::check(&r.target).map_err(|reason| {
                SecretsError::BadTarget {
                    name: r.secret_name.clone(),
                    reason,
                }
            })?;
            let value =
                c.config_values
                    .get(&r.secret_id)
                    .ok_or_else(|| SecretsError::NotDelivered {
                        name: r.secret_name.clone(),
                        reason: "the agent does not hold its value".into(),
                    })?;
            config_plan.push((r, PathBuf::from(i.to_string()), value));
        }
        // Check everything before mounting anything.
        crate::spec::secret_target::check_refs(refs).map_err(|reason| SecretsError::BadTarget {
            name: refs
                .first()
                .map(|r| r.secret_name.clone())
                .unwrap_or_default(),
            reason,
        })?;
        let mut plan = Vec::with_capacity(refs.len());
        for r in refs {
            let rel = relative_target(r)?;
            let value = values
                .get(&r.secret_id)
                .ok_or_else(|| SecretsError::NotDelivered {
                    name: r.secret_name.clone(),
                    reason: "the agent does not hold its value".into(),
                })?;
            plan.push((r, rel, value));
        }
        let dir = self.task_dir(task_id)?;
        self.ensure()?;
        let dir_err = |source| SecretsError::Dir {
            path: dir.clone(),
            source,
        };
        // What an attempt that failed half-way (or an agent that crashed) left.
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(dir_err(e)),
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(dir_err)?;
        let made = TaskSecrets { dir };
        // Unmounted between the check and here: nothing may be written on what is under it.
        if !on_tmpfs(&made.dir) {
            made.remove();
            return Err(SecretsError::Mount {
                path: self.root.clone(),
                source: nix::Error::ENOENT,
            });
        }
        let written = write_files(&made.files_dir(), &plan).and_then(|()| {
            if config_plan.is_empty() {
                Ok(())
            } else {
                write_files(&made.dir.join(CONFIGS_DIR), &config_plan)
            }
        });
        match written {
            Ok(()) => Ok(made),
            Err(e) => {
                made.remove();
                Err(e)
            }
        }
    }

    /// The directory a previous run of the agent made for task `task_id` (adopted with the
    /// task), and the versions it recorded there; `None` if it has none.
    pub fn adopt(&self, task_id: &str) -> Option<(TaskSecrets, HeldVersions)> {
        let dir = self.task_dir(task_id).ok()?;
        if !is_tmpfs_mount(&self.root) || !dir.join(FILES_DIR).is_dir() {
            return None;
        }
        let held = std::fs::read(dir.join(HELD_FILE))
            .ok()
            .filter(|b| b.len() <= 64 * 1024)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Some((TaskSecrets { dir }, held))
    }

    /// After an agent restart: removes every task directory a previous run left, except
    /// those of the tasks in `keep` (adopted: they still run), and unmounts the per-task
    /// tmpfs an older version left under `tasks_dir/*/secrets`. Returns how many it removed.
    pub fn cleanup_stale(&self, tasks_dir: &Path, keep: &std::collections::HashSet<&str>) -> usize {
        let mut n = 0;
        if let Ok(entries) = std::fs::read_dir(tasks_dir) {
            for e in entries.flatten() {
                let legacy = e.path().join(LEGACY_MOUNT_DIR);
                if !e.file_name().to_str().is_some_and(|id| keep.contains(id)) && legacy.is_dir() {
                    unmount_dir(&legacy);
                    n += 1;
                }
            }
        }
        if !is_tmpfs_mount(&self.root) {
            return n;
        }
        if let Ok(entries) = std::fs::read_dir(&self.root) {
            for e in entries.flatten() {
                if e.file_name().to_str().is_some_and(|id| keep.contains(id)) {
                    continue;
                }
                TaskSecrets { dir: e.path() }.remove();
                n += 1;
            }
        }
        n
    }

    /// Removes task `task_id`'s directory, if it has one; whether it had.
    pub fn release(&self, task_id: &str) -> bool {
        let Ok(dir) = self.task_dir(task_id) else {
            return false;
        };
        let had = dir.is_dir();
        if had {
            TaskSecrets { dir }.remove();
        }
        had
    }

    /// Unmounts the tmpfs and removes its mount point (the node leaves: every task is gone).
    pub fn unmount(&self) {
        let _mounting = self.mounting.lock().unwrap_or_else(|p| p.into_inner());
        unmount_dir(&self.root);
    }
}

/// Whether `dir` is a tmpfs mounted there (not merely a directory on a tmpfs).
fn is_tmpfs_mount(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dev = |p: &Path| std::fs::metadata(p).map(|m| m.dev()).ok();
    on_tmpfs(dir) && dir.parent().is_some_and(|parent| dev(dir) != dev(parent))
}

/// Whether `path` is on a tmpfs.
fn on_tmpfs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// A task's directory on the node's tmpfs. Remove it with [`TaskSecrets::remove`]; dropping
/// it removes nothing (the agent removes it once the task's process is gone).
#[derive(Debug)]
pub struct TaskSecrets {
    dir: PathBuf,
}

/// The version of each secret (by ID) a task holds.
pub type HeldVersions = std::collections::BTreeMap<String, u64>;

impl TaskSecrets {
    /// The directory the task sees as `/run/secrets`.
    pub fn files_dir(&self) -> PathBuf {
        self.dir.join(FILES_DIR)
    }

    /// Where each of `configs` (the task's, in its spec's order) was written, and the target
    /// it is to be bound at.
    pub fn config_files(&self, configs: &[SecretRef]) -> Vec<ConfigFile> {
        configs
            .iter()
            .enumerate()
            .map(|(i, r)| ConfigFile {
                source: self.dir.join(CONFIGS_DIR).join(i.to_string()),
                target: r.target.clone(),
            })
            .collect()
    }

    /// Records which version of each secret the tmpfs holds (best effort: only an agent that
    /// adopts the task after a restart reads it).
    pub fn record_held(&self, held: &HeldVersions) {
        let path = self.dir.join(HELD_FILE);
        let written = serde_json::to_vec(held)
            .map_err(std::io::Error::other)
            .and_then(|json| {
                let tmp = self.stage_dir()?.join(HELD_FILE);
                let _ = std::fs::remove_file(&tmp);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(&tmp)?;
                f.write_all(&json)?;
                std::fs::rename(&tmp, &path)
            });
        if let Err(e) = written {
            tracing::debug!(dir = %self.dir.display(), error = %e, "cannot record the versions of a task's secrets");
        }
    }

    /// Replaces the file of attachment `r` with `value`, atomically: the value is written
    /// whole to a staging file outside the directory the task sees, given `r`'s mode, uid and
    /// gid, then renamed over the target, so a reader opens either the old file or the new
    /// one.
    pub fn swap(&self, r: &SecretRef, value: &SecretBytes) -> Result<(), SecretsError> {
        let rel = relative_target(r)?;
        let err = |source| SecretsError::Write {
            name: r.secret_name.clone(),
            source,
        };
        let stage = self.stage_dir().map_err(err)?.join("swap");
        // A file left by a swap that failed half-way.
        match std::fs::remove_file(&stage) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let target = self.files_dir().join(&rel);
        let written = (|| {
            let f = write_value(&stage, r, value)?;
            drop(f);
            if let Some(parent) = target.parent() {
                std::fs::DirBuilder::new()
                    .mode(0o755)
                    .recursive(true)
                    .create(parent)?;
            }
            std::fs::rename(&stage, &target)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&stage);
        }
        written.map_err(err)
    }

    /// The staging directory (root only, beside what the task sees), made if missing.
    fn stage_dir(&self) -> std::io::Result<PathBuf> {
        let dir = self.dir.join(STAGE_DIR);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(dir),
            Err(e) => Err(e),
        }
    }

    /// A second handle on the same directory, for writing the task's identity files; only the
    /// runner's own handle is ever removed.
    pub fn handle(&self) -> TaskSecrets {
        TaskSecrets {
            dir: self.dir.clone(),
        }
    }

    /// The directory of the task's workload identity (its SVID files and Workload API
    /// socket), seen by the task as `/run/spiffe`; made (0755) if missing.
    pub fn spiffe_dir(&self) -> std::io::Result<PathBuf> {
        let dir = self.dir.join(SPIFFE_DIR);
        match std::fs::DirBuilder::new().mode(0o755).create(&dir) {
            Ok(()) => Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(dir),
            Err(e) => Err(e),
        }
    }

    /// Writes `bytes` as file `name` of the identity directory (mode `mode`, root-owned),
    /// atomically: staged whole outside what the task sees, then renamed over the old one.
    pub fn put_identity_file(
        &self,
        name: &str,
        bytes: &[u8],
        mode: u32,
    ) -> Result<(), SecretsError> {
        let err = |source| SecretsError::Write {
            name: format!("identity file {name}"),
            source,
        };
        let dir = self.spiffe_dir().map_err(err)?;
        let stage = self
            .stage_dir()
            .map_err(err)?
            .join(format!("identity-{name}"));
        let _ = std::fs::remove_file(&stage);
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(&stage)?;
            f.write_all(bytes)?;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            drop(f);
            std::fs::rename(&stage, dir.join(name))
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&stage);
        }
        written.map_err(err)
    }

    /// Removes the task's directory and everything in it: the values leave memory (a
    /// process still holding one of the files open keeps that file until it closes it).
    /// Best effort; failures are logged.
    pub fn remove(self) {
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove a task's secrets");
        }
    }
}

/// A config written on a task's tmpfs, and the absolute path it is bound at in the task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigFile {
    /// The file on the tmpfs.
    pub source: PathBuf,
    /// Where the task sees it (checked by [`crate::spec::config_target::check`]).
    pub target: String,
}

/// The most mounts stacked on the node tmpfs's mount point: the private bind and the tmpfs
/// (and, after a crash between the two, a second bind).
const STACKED: usize = 3;

/// Unmounts a secrets tmpfs and the private bind under it, and removes the mount point (which
/// also detaches any copy of the bind another mount namespace got before it was private).
fn unmount_dir(dir: &Path) {
    for _ in 0..STACKED {
        match umount2(dir, MntFlags::MNT_DETACH) {
            Ok(()) => {}
            Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => break,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot unmount a secrets tmpfs");
                break;
            }
        }
    }
    if let Err(e) = std::fs::remove_dir(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a secrets tmpfs's mount point");
    }
}

/// What a task's tmpfs is to hold: its secrets and its configs, each with the values by ID.
pub struct Contents<'a> {
    /// The secrets' attachments.
    pub secrets: &'a [SecretRef],
    /// Their values, by secret ID.
    pub secret_values: &'a HashMap<String, SecretBytes>,
    /// The configs' attachments.
    pub configs: &'a [SecretRef],
    /// Their values, by config ID.
    pub config_values: &'a HashMap<String, SecretBytes>,
}

/// The path of `target` relative to `/run/secrets`, if it is one the managers accept.
fn relative_target(r: &SecretRef) -> Result<PathBuf, SecretsError> {
    crate::spec::secret_target::relative(&r.target)
        .map(PathBuf::from)
        .map_err(|reason| SecretsError::BadTarget {
            name: r.secret_name.clone(),
            reason,
        })
}

/// Makes `dir` a private mount point of its own (a bind onto itself, then `MS_PRIVATE`), so a
/// tmpfs mounted on it stays in this mount namespace. On a host whose `/` is shared (systemd),
/// a tmpfs mounted on a plain directory would appear in every peer and slave namespace
/// (other services, containers), values and all. Only the empty bind itself propagates, and
/// removing the mount point detaches those copies.
fn make_private(dir: &Path) -> Result<(), nix::Error> {
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
}

fn write_files(
    files: &Path,
    plan: &[(&SecretRef, PathBuf, &SecretBytes)],
) -> Result<(), SecretsError> {
    let dirs = |recursive: bool| {
        let mut b = std::fs::DirBuilder::new();
        b.mode(0o755).recursive(recursive);
        b
    };
    dirs(false)
        .create(files)
        .map_err(|source| SecretsError::Dir {
            path: files.to_path_buf(),
            source,
        })?;
    for (r, rel, value) in plan {
        let err = |source| SecretsError::Write {
            name: r.secret_name.clone(),
            source,
        };
        let path = files.join(rel);
        if let Some(parent) = path.parent()
            && parent != files
        {
            dirs(true).create(parent).map_err(err)?;
        }
        write_value(&path, r, value).map_err(err)?;
    }
    Ok(())
}

/// Writes `value` into a new file at `path` (never following a link, never replacing a
/// file), then gives it `r`'s owner and mode.
fn write_value(path: &Path, r: &SecretRef, value: &SecretBytes) -> std::io::Result<std::fs::File> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    f.write_all(value.expose())?;
    std::os::unix::fs::fchown(&f, Some(r.uid), Some(r.gid))?;
    f.set_permissions(std::fs::Permissions::from_mode(r.mode & 0o777))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn r(name: &str, target: &str, uid: u32, gid: u32, mode: u32) -> SecretRef {
        SecretRef {
            secret_id: format!("id-{name}"),
            secret_name: name.into(),
            target: target.into(),
            uid,
            gid,
            mode,
            ..SecretRef::new(name)
        }
    }

    #[test]
    fn targets_must_be_plain_paths_under_run_secrets() {
        assert_eq!(
            relative_target(&r("a", "/run/secrets/a", 0, 0, 0o444)).ok(),
            Some(PathBuf::from("a"))
        );
        assert_eq!(
            relative_target(&r("a", "/run/secrets/d/a", 0, 0, 0o444)).ok(),
            Some(PathBuf::from("d/a"))
        );
        for bad in [
            "/run/secrets",
            "/run/secrets/",
            "/run/secretsx/a",
            "/etc/passwd",
            "/run/secrets/../x",
            "/run/secrets/a//b",
            "/run/secrets/./a",
        ] {
            assert!(relative_target(&r("a", bad, 0, 0, 0)).is_err(), "{bad}");
        }
    }

    #[test]
    fn store_keeps_values_while_referenced_and_remembers_digests() {
        let s = SecretStore::default();
        s.insert(
            "i1".into(),
            1,
            "db".into(),
            SecretBytes::new(b"hunter2".to_vec()),
        );
        s.insert(
            "i2".into(),
            1,
            "tls".into(),
            SecretBytes::new(b"k".to_vec()),
        );
        assert!(s.has("i1", 1));
        let dropped = s.retain(&BTreeSet::from([("i2", 1)]));
        assert_eq!(dropped, vec!["db".to_string()]);
        assert!(!s.has("i1", 1));
        assert_eq!(
            s.get("i2", 1).map(|v| v.expose().to_vec()),
            Some(b"k".to_vec())
        );
        let rec = s.received();
        assert_eq!(rec.len(), 2);
        assert_eq!(rec[0].digest, digest(b"hunter2"));
        assert!(!rec[0].held);
        assert!(rec[1].held);
        assert!(!format!("{rec:?}").contains("hunter2"));
    }

    /// A node tmpfs under a temporary state directory, unmounted when dropped.
    struct Scratch {
        t: NodeTmpfs,
        _dir: tempfile::TempDir,
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            self.t.unmount();
        }
    }

    fn scratch() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        Scratch {
            t: NodeTmpfs::new(dir.path()),
            _dir: dir,
        }
    }

    /// Needs root (mounting tmpfs); skipped otherwise.
    #[test]
    fn one_private_tmpfs_holds_each_tasks_files_at_their_modes_until_removed() {
        if !crate::util::root_or_skip() {
            return;
        }
        let s = scratch();
        let refs = vec![
            r("db", "/run/secrets/db", 0, 0, 0o444),
            r("key", "/run/secrets/tls/server.key", 999, 998, 0o400),
        ];
        let values = HashMap::from([
            ("id-db".to_string(), SecretBytes::new(b"hunter2".to_vec())),
            ("id-key".to_string(), SecretBytes::new(b"KEY".to_vec())),
        ]);
        let m = s.t.mount_task_secrets("t1", &refs, &values).unwrap();
        let other = s.t.mount_task_secrets("t2", &refs[..1], &values).unwrap();
        let mp = s.t.root().to_path_buf();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let tmpfs: Vec<&str> = mounts
            .lines()
            .filter(|l| l.contains(&*mp.to_string_lossy()) && l.contains(" - tmpfs "))
            .collect();
        assert_eq!(tmpfs.len(), 1, "one tmpfs for both tasks: {tmpfs:?}");
        // Private: no "shared:N" or "master:N" propagation tag before the separator.
        let tags = tmpfs[0].split(" - ").next().unwrap();
        assert!(
            !tags.contains("shared:") && !tags.contains("master:"),
            "{}",
            tmpfs[0]
        );
        for opt in ["nosuid", "nodev", "noexec"] {
            assert!(tmpfs[0].contains(opt), "{opt} missing: {}", tmpfs[0]);
        }
        assert_eq!(std::fs::metadata(&mp).unwrap().mode() & 0o777, 0o700);
        assert_eq!(
            std::fs::metadata(mp.join("t1")).unwrap().mode() & 0o777,
            0o700
        );
        let files = m.files_dir();
        assert_eq!(std::fs::read(files.join("db")).unwrap(), b"hunter2");
        let meta = std::fs::metadata(files.join("tls/server.key")).unwrap();
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (999, 998, 0o400)
        );
        assert_eq!(
            std::fs::metadata(files.join("db")).unwrap().mode() & 0o777,
            0o444
        );
        m.remove();
        assert!(!mp.join("t1").exists());
        assert_eq!(
            std::fs::read(other.files_dir().join("db")).unwrap(),
            b"hunter2"
        );
        // A second agent (a restart) finds the tmpfs mounted and does not stack another.
        let again = NodeTmpfs::new(mp.parent().unwrap());
        again.mount_task_secrets("t3", &refs, &values).unwrap();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert_eq!(
            mounts
                .lines()
                .filter(|l| l.contains(&*mp.to_string_lossy()))
                .count(),
            2,
            "the private bind and the tmpfs, once: {mounts}"
        );
        // Adopted tasks keep their directories; the others are removed.
        let n = again.cleanup_stale(&mp.join("no-such-tasks-dir"), &["t2"].into());
        assert_eq!(n, 1);
        assert!(again.adopt("t2").is_some() && again.adopt("t3").is_none());
        s.t.unmount();
        assert!(!mp.exists());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(&*mp.to_string_lossy()));
    }

    /// Needs root (mounting tmpfs); skipped otherwise.
    #[test]
    fn a_tmpfs_unmounted_behind_the_agents_back_is_mounted_again_before_the_next_task() {
        if !crate::util::root_or_skip() {
            return;
        }
        let s = scratch();
        let refs = vec![r("db", "/run/secrets/db", 0, 0, 0o444)];
        let values = HashMap::from([("id-db".to_string(), SecretBytes::new(b"v".to_vec()))]);
        s.t.mount_task_secrets("t1", &refs, &values).unwrap();
        for _ in 0..STACKED {
            let _ = umount2(s.t.root(), MntFlags::MNT_DETACH);
        }
        assert!(!is_tmpfs_mount(s.t.root()));
        let m = s.t.mount_task_secrets("t2", &refs, &values).unwrap();
        assert!(
            on_tmpfs(&m.files_dir().join("db")),
            "written to the disk under it"
        );
        assert!(is_tmpfs_mount(s.t.root()));
    }

    /// Every path under `dir`, relative to it.
    fn tree(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let p = e.path();
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
                if e.file_type().unwrap().is_dir() {
                    todo.push(p);
                }
            }
        }
        out.sort();
        out
    }

    /// Needs root (mounting tmpfs); skipped otherwise.
    #[test]
    fn a_swap_replaces_the_file_whole_at_its_mode_and_owner_and_leaves_nothing_staged() {
        if !crate::util::root_or_skip() {
            return;
        }
        let s = scratch();
        let refs = vec![
            r("db", "/run/secrets/db", 999, 998, 0o440),
            r("key", "/run/secrets/tls/server.key", 7, 8, 0o400),
        ];
        let values = HashMap::from([
            ("id-db".to_string(), SecretBytes::new(b"old-db".to_vec())),
            ("id-key".to_string(), SecretBytes::new(b"old-key".to_vec())),
        ]);
        let m = s.t.mount_task_secrets("t1", &refs, &values).unwrap();
        m.record_held(&HeldVersions::from([("id-db".to_string(), 1)]));
        assert_eq!(s.t.adopt("t1").unwrap().1.get("id-db"), Some(&1));
        let files = m.files_dir();
        // A reader holding the old file keeps reading the old value whole.
        let mut before = std::fs::File::open(files.join("db")).unwrap();
        let ino = std::fs::metadata(files.join("db")).unwrap().ino();
        m.swap(&refs[0], &SecretBytes::new(b"new-db-value-longer".to_vec()))
            .unwrap();
        m.swap(&refs[1], &SecretBytes::new(b"K2".to_vec())).unwrap();
        m.record_held(&HeldVersions::from([("id-db".to_string(), 2)]));
        assert_eq!(
            std::fs::read(files.join("db")).unwrap(),
            b"new-db-value-longer"
        );
        assert_eq!(std::fs::read(files.join("tls/server.key")).unwrap(), b"K2");
        let mut old = Vec::new();
        std::io::Read::read_to_end(&mut before, &mut old).unwrap();
        assert_eq!(old, b"old-db");
        let meta = std::fs::metadata(files.join("db")).unwrap();
        assert_ne!(
            meta.ino(),
            ino,
            "replaced by a rename, not rewritten in place"
        );
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (999, 998, 0o440)
        );
        let meta = std::fs::metadata(files.join("tls/server.key")).unwrap();
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (7, 8, 0o400));
        // What the task sees holds only its files; the staging directory is beside it, empty.
        assert_eq!(tree(&files), vec!["db", "tls", "tls/server.key"]);
        let mp = s.t.root().join("t1");
        assert!(tree(&mp.join(STAGE_DIR)).is_empty());
        assert_eq!(
            std::fs::metadata(mp.join(STAGE_DIR)).unwrap().mode() & 0o777,
            0o700
        );
        let (_, held) = s.t.adopt("t1").unwrap();
        assert_eq!(held.get("id-db"), Some(&2));
        m.remove();
        assert!(!mp.exists());
    }

    /// Needs root (mounting tmpfs); skipped otherwise.
    #[test]
    fn configs_are_written_beside_the_secrets_never_under_run_secrets() {
        if !crate::util::root_or_skip() {
            return;
        }
        let s = scratch();
        let mut conf = r("app", "/etc/app.conf", 5, 6, 0o440);
        conf.secret_id = "cfg-app".into();
        conf.on_change = crate::store::service::OnChange::Restart;
        let configs = vec![conf];
        let config_values = HashMap::from([(
            "cfg-app".to_string(),
            SecretBytes::new(b"listen 80;".to_vec()),
        )]);
        let m =
            s.t.mount_task_files(
                "t1",
                &Contents {
                    secrets: &[],
                    secret_values: &HashMap::new(),
                    configs: &configs,
                    config_values: &config_values,
                },
            )
            .unwrap();
        let files = m.config_files(&configs);
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].target, "/etc/app.conf");
        assert!(!files[0].source.starts_with(m.files_dir()));
        assert_eq!(std::fs::read(&files[0].source).unwrap(), b"listen 80;");
        let meta = std::fs::metadata(&files[0].source).unwrap();
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (5, 6, 0o440));
        assert!(tree(&m.files_dir()).is_empty());
        m.remove();

        // A target the rule refuses is refused before anything is mounted.
        let mut bad = r("bad", "/run/secrets/x", 0, 0, 0o444);
        bad.secret_id = "cfg-app".into();
        bad.on_change = crate::store::service::OnChange::Restart;
        let e =
            s.t.mount_task_files(
                "t2",
                &Contents {
                    secrets: &[],
                    secret_values: &HashMap::new(),
                    configs: &[bad],
                    config_values: &config_values,
                },
            )
            .unwrap_err();
        assert!(matches!(e, SecretsError::BadTarget { .. }), "{e}");
        assert!(!s.t.root().join("t2").exists());
    }

    #[test]
    fn an_id_that_is_not_a_plain_name_is_refused_before_anything_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let t = NodeTmpfs::new(&dir.path().join("state"));
        for bad in ["../escape", "a/b", ".hidden", ""] {
            let e = t.mount_task_secrets(bad, &[], &HashMap::new()).unwrap_err();
            assert!(matches!(e, SecretsError::BadTaskId(_)), "{bad:?}: {e}");
            assert!(t.adopt(bad).is_none() && !t.release(bad));
        }
        assert!(!dir.path().join("escape").exists() && !t.root().exists());
    }

    #[test]
    fn a_missing_value_fails_before_anything_is_mounted() {
        let dir = tempfile::tempdir().unwrap();
        let t = NodeTmpfs::new(dir.path());
        let refs = vec![r("db", "/run/secrets/db", 0, 0, 0o444)];
        let e = t
            .mount_task_secrets("t1", &refs, &HashMap::new())
            .unwrap_err();
        assert!(e.to_string().contains("secret db was not delivered"), "{e}");
        assert!(!t.root().exists(), "nothing mounted");
    }
}
