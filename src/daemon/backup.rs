//! `swarm backup` and `swarm restore` on a node; the file itself is
//! [`crate::store::backup`].
//!
//! A backup is the state as this manager applied it, after a read barrier (so it holds every
//! write acknowledged before it began), sealed under the operator's key and signed by the
//! swarm's audit key; handing it out is audited first. A restore runs on a node outside any
//! swarm: it checks the file, takes over the identity of one former manager (the one at the
//! address it is given, else the one that made the backup) with a fresh key and certificate
//! from the swarm's CA, writes a store of one manager holding the backup's state
//! ([`crate::store::recover`]), starts, and commits the recovery as `--force-new-cluster`
//! does; the join tokens are then rotated, since the backup holds them.

use std::collections::BTreeMap;
use std::time::Duration;

use tonic::Status;
use zeroize::Zeroizing;

use super::files::{Identity, NodeFile};
use super::lifecycle::locked;
use super::{Daemon, Phase};
use crate::api::v1::{
    SwarmBackupChunk, SwarmBackupRequest, SwarmRestoreChunk, SwarmRestoreResponse,
};
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::manager::recovery::Recovery;
use crate::manager::{raft_id_of, to_status};
use crate::store::backup::{self, BackupError, BackupHeader, BackupKey};
use crate::store::model::{Availability, Command, Node, NodeRole, NodeState, State};
use crate::store::seal::{Dek, Kek, Sealer};

/// Bytes of backup per stream message.
const CHUNK: usize = 1 << 20;
/// How long a backup waits for a quorum to confirm this manager is up to date.
const BARRIER: Duration = Duration::from_secs(5);
/// The largest backup file a restore takes.
const MAX_FILE: u64 = backup::MAX_STATE + backup::MAX_HEADER + 1024;

fn refused(e: BackupError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn internal(what: &str, e: &dyn std::fmt::Display) -> Status {
    Status::internal(format!("{what}: {e}"))
}

/// The key for a new backup: made here (returned as text, once) when the operator gave
/// none, their `SKEPBKP-` key, or a key stretched from their passphrase.
fn backup_key(given: &str) -> Result<(BackupKey, Option<crate::secret::SecretString>), Status> {
    if given.is_empty() {
        let (key, text) = BackupKey::generate().map_err(refused)?;
        return Ok((key, Some(text)));
    }
    let key = if given.starts_with(backup::key::KEY_TEXT_PREFIX) {
        BackupKey::parse_text(given)
    } else {
        BackupKey::from_passphrase(given)
    };
    key.map(|k| (k, None)).map_err(refused)
}

impl Daemon {
    /// `swarm backup`: the backup file, in chunks; the first carries a summary and, if the
    /// key was made here, the key.
    pub(super) async fn backup(
        &self,
        req: SwarmBackupRequest,
    ) -> Result<Vec<SwarmBackupChunk>, Status> {
        let given = Zeroizing::new(req.key);
        let (mgr, node_id) = match &*self.phase.lock().await {
            Phase::Active(r) => match &r.manager {
                Some(m) => (m.clone(), r.file.node_id.clone()),
                None => {
                    return Err(Status::failed_precondition(
                        "this node is a worker: run `skep swarm backup` on a manager",
                    ));
                }
            },
            Phase::Locked(_) => return Err(locked()),
            Phase::Inactive => {
                return Err(Status::failed_precondition(
                    "this node is not part of a swarm: there is nothing to back up",
                ));
            }
        };
        mgr.read_barrier_within(BARRIER).await.map_err(|e| {
            Status::unavailable(format!(
                "cannot confirm this manager holds every acknowledged write: {e}. A backup needs \
                 a quorum; if the majority is lost for good, run `skep swarm init \
                 --force-new-cluster` on this manager first"
            ))
        })?;
        let now = crate::util::now_rfc3339();
        let node_id_copy = node_id.clone();
        // A copy under the lock (the state machine waits on it), encoded outside it.
        let (state, last) = mgr.read_applied(|s, last| (s.clone(), last));
        let (bytes, generated, header) = tokio::task::spawn_blocking(move || {
            let header =
                BackupHeader::for_state(&state, last, &node_id_copy, now).map_err(refused)?;
            let signer = state
                .cluster
                .as_ref()
                .and_then(|c| c.audit_key.clone())
                .ok_or(BackupError::NoAuditKey)
                .map_err(refused)?;
            let plain = backup::encode_state(&state).map_err(refused)?;
            drop(state);
            let (key, generated) = backup_key(&given)?;
            let bytes = backup::seal(&plain, header, &key, &signer).map_err(refused)?;
            let header = backup::read_header(&bytes).map_err(refused)?;
            Ok::<_, Status>((bytes, generated, header))
        })
        .await
        .map_err(|e| internal("making the backup", &e))??;
        let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes));
        // Handed out only once the chain records it.
        mgr.propose(Command::Audit(
            AuditEvent::now(
                Actor::local_admin(&node_id),
                "swarm.backup",
                &header.cluster_id,
                Outcome::Ok,
            )
            .with("sha256", digest.clone())
            .with("bytes", bytes.len().to_string())
            .with("log_index", header.log_index.to_string())
            .with("audit_seq", header.audit_seq.to_string())
            .with("key", header.key.kind().to_string()),
        ))
        .await
        .map_err(to_status)?;
        let summary = format!(
            "swarm {}, Raft index {}, audit record {}, made {} by node {} (sha256 {digest})",
            header.cluster_id, header.log_index, header.audit_seq, header.created_at, node_id
        );
        let mut chunks: Vec<SwarmBackupChunk> = bytes
            .chunks(CHUNK)
            .map(|c| SwarmBackupChunk {
                data: c.to_vec(),
                ..Default::default()
            })
            .collect();
        if chunks.is_empty() {
            chunks.push(SwarmBackupChunk::default());
        }
        chunks[0].summary = summary;
        chunks[0].generated_key = generated
            .map(|t| t.expose().to_string())
            .unwrap_or_default();
        Ok(chunks)
    }

    /// `swarm restore`: the first chunk carries the key and options.
    pub(super) async fn restore(
        &self,
        mut chunks: tonic::Streaming<SwarmRestoreChunk>,
    ) -> Result<SwarmRestoreResponse, Status> {
        let mut phase = self.phase.lock().await;
        if !matches!(*phase, Phase::Inactive) {
            return Err(Status::failed_precondition(
                "this node is already part of a swarm: restore on a node outside any swarm (a new \
                 machine, or one whose data directory was cleared)",
            ));
        }
        let mut first = chunks
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("no backup was sent"))?;
        let secret = Zeroizing::new(std::mem::take(&mut first.key));
        if first.expected_size > MAX_FILE {
            return Err(Status::invalid_argument(format!(
                "the backup is {} bytes; at most {MAX_FILE} are restored",
                first.expected_size
            )));
        }
        let mut bytes = Zeroizing::new(Vec::with_capacity(
            usize::try_from(first.expected_size).unwrap_or(0),
        ));
        bytes.extend_from_slice(&first.data);
        while let Some(c) = chunks.message().await? {
            if (bytes.len() + c.data.len()) as u64 > first.expected_size {
                return Err(Status::invalid_argument(
                    "more backup bytes arrived than announced",
                ));
            }
            bytes.extend_from_slice(&c.data);
        }
        if bytes.len() as u64 != first.expected_size {
            return Err(Status::invalid_argument(format!(
                "the upload was cut: {} of {} bytes arrived",
                bytes.len(),
                first.expected_size
            )));
        }
        let advertise = self.advertise_addr(&first.advertise_addr)?;
        let file_digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, &bytes));
        let opened = tokio::task::spawn_blocking(move || {
            let header = backup::read_header(&bytes)?;
            let key = backup::key_for(&header, &secret)?;
            let opened = backup::open(&bytes, &key)?;
            let state = opened.state()?;
            Ok::<_, BackupError>((header, state))
        })
        .await
        .map_err(|e| internal("opening the backup", &e))?;
        let (header, state) = opened.map_err(refused)?;
        let made = self
            .install(&header, &state, &advertise)
            .await
            .map_err(|e| internal("installing the backup", &e))?;
        let running = self
            .start(made.file.clone(), &made.kek)
            .await
            .map_err(|e| internal("starting the restored manager", &e))?;
        let mgr = running
            .manager
            .clone()
            .ok_or_else(|| Status::internal("the restored manager did not start"))?;
        *phase = Phase::Active(running);
        drop(phase);
        let actor = Actor::local_admin(&made.file.node_id);
        mgr.finish_recovery(
            actor.clone(),
            &Recovery::Restore {
                backup_index: header.log_index,
                backup_created: header.created_at.clone(),
                backup_node: header.node_id.clone(),
                head_seq: header.audit_seq,
                head_hash: header.audit_hash.clone(),
                file_digest,
                rollback: first.rollback,
            },
        )
        .await
        .map_err(to_status)?;
        // The backup holds the join tokens: whoever read it could join nodes.
        for role in [NodeRole::Worker, NodeRole::Manager] {
            mgr.rotate_token(actor.clone(), role)
                .await
                .map_err(to_status)?;
        }
        let worker_token = mgr.read(|s| {
            s.cluster
                .as_ref()
                .map(|c| c.worker_token.expose().to_string())
                .unwrap_or_default()
        });
        Ok(SwarmRestoreResponse {
            node_id: made.file.node_id,
            advertise_addr: advertise,
            worker_token,
            summary: format!(
                "swarm {}, Raft index {}, audit record {}, made {} by node {}",
                header.cluster_id,
                header.log_index,
                header.audit_seq,
                header.created_at,
                header.node_id
            ),
        })
    }

    /// Writes this node's identity and a store of one manager holding `state`.
    async fn install(
        &self,
        header: &BackupHeader,
        state: &State,
        advertise: &str,
    ) -> Result<Installed, String> {
        let cluster = state
            .cluster
            .as_ref()
            .ok_or("the backup holds no cluster")?;
        let node_id = state
            .nodes
            .values()
            .find(|n| n.role == NodeRole::Manager && n.addr == advertise)
            .map_or_else(|| header.node_id.clone(), |n| n.id.clone());
        let ca = skep_pki::RootCa::from_pem(&cluster.ca_cert_pem, cluster.ca_key_pem.expose())
            .map_err(|e| format!("the backup's root CA: {e}"))?;
        let key = skep_pki::NodeKey::generate().map_err(|e| e.to_string())?;
        let csr = skep_pki::Csr::from_der(&key.csr_der().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let now = time::OffsetDateTime::now_utc();
        let validity = time::Duration::seconds(
            i64::try_from(
                cluster
                    .cert_expiry_secs
                    .max(crate::manager::control::MIN_CERT_EXPIRY.as_secs()),
            )
            .unwrap_or(i64::MAX),
        );
        let cert = ca
            .issue(&csr, &node_id, skep_pki::Role::Manager, validity, now)
            .map_err(|e| e.to_string())?;
        let mut roots = ca.cert_der().to_vec();
        if let Some(r) = &cluster.ca_rotation {
            let new = skep_pki::RootCa::from_pem(&r.cert_pem, r.key_pem.expose())
                .map_err(|e| format!("the backup's new root CA: {e}"))?;
            roots.extend_from_slice(new.cert_der());
        }
        let (kek, store_kek) = match &cluster.unlock_key {
            Some(text) if cluster.autolock => {
                let raw = crate::store::seal::parse_unlock_key(text.expose())
                    .map_err(|e| e.to_string())?;
                (Kek::from_unlock_key(&raw), false)
            }
            _ => (Kek::generate(), true),
        };
        let dek = Dek::generate();
        let file = NodeFile {
            node_id: node_id.clone(),
            role: NodeRole::Manager,
            cluster_id: cluster.id.clone(),
            advertise_addr: advertise.to_string(),
            managers: vec![advertise.to_string()],
            autolock: !store_kek,
        };
        let stamp = crate::util::rfc3339(now);
        let mut state = state.clone();
        let node = state.nodes.get(&node_id).cloned().unwrap_or_else(|| Node {
            id: node_id.clone(),
            hostname: self.hostname.clone(),
            role: NodeRole::Manager,
            availability: Availability::Active,
            state: NodeState::Ready,
            addr: advertise.to_string(),
            raft_id: None,
            cert_serial: String::new(),
            cert_not_after: String::new(),
            cert_issuer: String::new(),
            created_at: stamp.clone(),
            updated_at: stamp.clone(),
            labels: BTreeMap::new(),
            runtimes: Vec::new(),
            resources: Default::default(),
            port_errors: BTreeMap::new(),
        });
        // This node's certificate is the one the swarm admits from now on.
        state.nodes.insert(
            node_id.clone(),
            Node {
                hostname: self.hostname.clone(),
                role: NodeRole::Manager,
                state: NodeState::Ready,
                addr: advertise.to_string(),
                raft_id: Some(raft_id_of(&node_id)),
                cert_serial: cert.serial.clone(),
                cert_not_after: crate::util::rfc3339(cert.not_after),
                cert_issuer: ca.digest().to_string(),
                updated_at: stamp,
                ..node
            },
        );
        self.save_identity(Identity {
            file: &file,
            kek: &kek,
            store_kek,
            dek: Some(&dek),
            key: &key,
            cert_der: &cert.der,
            chain: &[],
            root_der: &roots,
        })
        .map_err(|e| e.to_string())?;
        let last = crate::store::LogId::new(
            openraft::CommittedLeaderId::new(header.log_term, 0),
            header.log_index,
        );
        let sealer = std::sync::Arc::new(Sealer::new(&dek));
        let written = crate::store::recover::write_single(
            &self.paths().raft(),
            sealer,
            &state,
            last,
            header.log_term,
            raft_id_of(&node_id),
            advertise,
        )
        .await;
        if let Err(e) = written {
            let _ = self.wipe();
            return Err(e.to_string());
        }
        Ok(Installed { file, kek })
    }
}

/// What [`Daemon::install`] wrote.
struct Installed {
    file: NodeFile,
    kek: Kek,
}
