//! A task's workload identity on its node. The agent attests by construction: it started the
//! task, so the task's identity is the one its service gives, and the caller of the Workload
//! API is whoever can reach the socket that exists only inside that task.
//!
//! ```text
//!  task start ─► fresh P-256 key (never leaves the node, never enters Raft)
//!             ─► CSR ─► Dispatcher.IssueSvid (leader: task here, to run, identity on)
//!             ─► <tmpfs>/spiffe/{svid.pem, svid.key, bundle.pem} (staged, renamed)
//!             ─► Workload API on <tmpfs>/spiffe/workload@skep.sock; the task sees the directory
//!                as /run/spiffe, with SPIFFE_ENDPOINT_SOCKET pointing at the socket
//!  half life  ─► new key, new SVID, files replaced, streams updated
//!  heartbeat  ─► bundle (workload CA, JWKS, CRL) ─► bundle.pem and streams updated
//!  task end   ─► server and renewal stop; the tmpfs goes with the task; the leader's CRL
//!                revokes the SVID
//! ```

use std::sync::Arc;
use std::time::Duration;

use skep_pki::NodeKey;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;
use zeroize::Zeroizing;

use super::managers::Managers;
use super::secrets::TaskSecrets;
use super::workload::{JwtBundleMaterial, Source, X509Material};
use crate::api::v1::{JwtSvidRequest, SvidRequest, WorkloadBundle};
use crate::store::service::Task;

/// Where a task sees its identity directory.
pub const TARGET_DIR: &str = skep_init::SPIFFE_DIR;
/// The variable every SPIFFE client reads, as the task sees it.
pub const ENDPOINT_ENV: &str = "SPIFFE_ENDPOINT_SOCKET=unix:///run/spiffe/workload@skep.sock";
/// The Workload API socket's name in the identity directory.
///
/// The `@` is for gRPC's C core (Python, Ruby, C++ clients, py-spiffe among them): since 1.57
/// it sends the socket's path, percent-encoded, as the HTTP/2 `:authority`
/// (`%2Frun%2Fspiffe%2Fworkload@skep.sock`). The server's HTTP/2 library refuses a `%` in a
/// host name but not in user information, and the `@` makes everything before it user
/// information, leaving `skep.sock` as the host: without it those clients get PROTOCOL_ERROR
/// (grpc/grpc#38142, hyperium/h2#487).
pub const SOCKET: &str = "workload@skep.sock";
/// The longest wait between two tries at a renewal that failed.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The latest bundle the leader sent with a heartbeat, for every task of the node.
#[derive(Clone)]
pub struct BundleFeed(Arc<watch::Sender<Option<Arc<WorkloadBundle>>>>);

impl Default for BundleFeed {
    fn default() -> Self {
        Self(Arc::new(watch::channel(None).0))
    }
}

impl BundleFeed {
    /// Takes a bundle from a heartbeat; tasks hear of it only if it changed. Its revoked
    /// serials are read from its CRL ([`with_revoked`]) only then.
    pub fn set(&self, b: WorkloadBundle) {
        self.0.send_if_modified(|cur| {
            if cur.as_deref().is_some_and(|c| same_bundle(c, &b)) {
                return false;
            }
            *cur = Some(Arc::new(with_revoked(b)));
            true
        });
    }

    /// The latest bundle, if a heartbeat brought one (the routing mesh checks callers
    /// against it).
    pub fn current(&self) -> Option<Arc<WorkloadBundle>> {
        self.0.borrow().clone()
    }

    fn subscribe(&self) -> watch::Receiver<Option<Arc<WorkloadBundle>>> {
        self.0.subscribe()
    }
}

/// Whether `held` (revoked serials filled in) is the bundle `sent` (as a manager sent it,
/// without them, or from a build that sent them): the feed's against a heartbeat's, and a
/// task's renewal against the feed's (an issuance's bundle is not read for serials: only the
/// feed's are checked against, by the mesh).
fn same_bundle(held: &WorkloadBundle, sent: &WorkloadBundle) -> bool {
    held.trust_domain == sent.trust_domain
        && held.ca == sent.ca
        && held.jwks == sent.jwks
        && held.crl == sent.crl
        && (sent.revoked.is_empty() || held.revoked == sent.revoked)
}

/// `b` with its revoked serials, read from its CRL when the manager left them out (managers
/// send them once, in the CRL: `manager::workload`). A CRL that cannot be read leaves none,
/// and the routing mesh, which reads it again as a CRL, then refuses every caller of a port
/// that requires identity rather than accept a revoked one.
fn with_revoked(mut b: WorkloadBundle) -> WorkloadBundle {
    if b.revoked.is_empty() && !b.crl.is_empty() {
        match skep_pki::crl_serials(&b.crl) {
            Ok(serials) => b.revoked = serials,
            Err(e) => tracing::error!(error = %e, "cannot read the workload bundle's CRL"),
        }
    }
    b
}

/// The X.509-SVID of each running task of this node with identity on, by task ID: what the
/// routing mesh presents when it authenticates callers on a task's behalf
/// (`identity=required`).
#[derive(Clone, Default)]
pub struct Registry(Arc<std::sync::Mutex<std::collections::HashMap<String, X509Watch>>>);

/// A task's current X.509-SVID as it changes.
type X509Watch = watch::Receiver<Option<Arc<X509Material>>>;

impl Registry {
    /// Task `task_id`'s current SVID, if it has one here.
    pub fn get(&self, task_id: &str) -> Option<Arc<X509Material>> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(task_id).and_then(|rx| rx.borrow().clone())
    }

    fn insert(&self, task_id: &str, rx: watch::Receiver<Option<Arc<X509Material>>>) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(task_id.to_string(), rx);
    }

    fn remove(&self, task_id: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(task_id);
    }
}

/// Why a task's identity could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    /// The leader refused: the task is not to run here, or its service has identity off.
    #[error("no workload identity for the task: {0}")]
    Denied(String),
    /// No manager answered, or the answer was not an SVID for the task.
    #[error("no workload identity for the task: {0}")]
    Refused(String),
    /// A key or request could not be made.
    #[error("cannot make the task's key: {0}")]
    Key(String),
    /// The files could not be written on the task's tmpfs.
    #[error("cannot write the task's identity files: {0}")]
    Write(String),
}

/// A running task's identity: stops its renewal and its Workload API when dropped.
pub struct TaskIdentity {
    task_id: String,
    registry: Registry,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for TaskIdentity {
    fn drop(&mut self) {
        self.registry.remove(&self.task_id);
        let _ = self.shutdown.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// One SVID as the node holds it.
struct Held {
    key: NodeKey,
    cert_der: Vec<u8>,
    spiffe_id: String,
    not_after: time::OffsetDateTime,
}

/// Sets up `task`'s identity on its tmpfs `secrets`: its first SVID (the task does not
/// start without it), the files, the Workload API, renewal at half life.
pub async fn start(
    task: &Task,
    secrets: &TaskSecrets,
    managers: Arc<Managers>,
    feed: &BundleFeed,
    registry: &Registry,
) -> Result<TaskIdentity, SvidError> {
    let (held, bundle) = issue(&task.id, &managers).await?;
    let bundle = match bundle {
        Some(b) => Arc::new(b),
        None => feed
            .subscribe()
            .borrow()
            .clone()
            .ok_or_else(|| SvidError::Refused("the leader sent no trust bundle".into()))?,
    };
    let files = Files {
        secrets: secrets.handle(),
    };
    files.write_svid(&held)?;
    files.write_bundle(&bundle)?;
    let (x509_tx, x509_rx) = watch::channel(Some(material(&held, &bundle)));
    let x509_rx_for_registry = x509_rx.clone();
    let (jwt_tx, jwt_rx) = watch::channel(Some(jwt_material(&bundle)));
    let (shutdown, shutdown_rx) = watch::channel(false);
    // Bound before the task starts, so the socket is there when the task first looks.
    let socket = secrets
        .spiffe_dir()
        .map_err(|e| SvidError::Write(e.to_string()))?
        .join(SOCKET);
    let socket = super::workload::bind(&socket).map_err(|e| SvidError::Write(e.to_string()))?;
    let source = Arc::new(TaskSource {
        task_id: task.id.clone(),
        managers: managers.clone(),
        x509: x509_rx,
        jwt: jwt_rx,
    });
    let serve = {
        let shutdown = shutdown_rx.clone();
        let task_id = task.id.clone();
        tokio::spawn(async move {
            if let Err(e) = super::workload::serve_bound(socket, source, shutdown).await {
                tracing::warn!(task_id = %task_id, error = %e, "the task's Workload API stopped");
            }
        }.in_current_span())
    };
    let renew = tokio::spawn(
        Renewal {
            task_id: task.id.clone(),
            managers,
            files,
            held,
            bundle,
            feed: feed.subscribe(),
            x509: x509_tx,
            jwt: jwt_tx,
        }
        .run(shutdown_rx)
        .in_current_span(),
    );
    registry.insert(&task.id, x509_rx_for_registry);
    Ok(TaskIdentity {
        task_id: task.id.clone(),
        registry: registry.clone(),
        shutdown,
        tasks: vec![serve, renew],
    })
}

/// Asks the managers, leader first, for an SVID for a fresh key of task `task_id`.
async fn issue(
    task_id: &str,
    managers: &Managers,
) -> Result<(Held, Option<WorkloadBundle>), SvidError> {
    let key = NodeKey::generate().map_err(|e| SvidError::Key(e.to_string()))?;
    let csr = key.csr_der().map_err(|e| SvidError::Key(e.to_string()))?;
    let mut last = "no manager could be reached".to_string();
    for addr in managers.candidates() {
        let Some(mut client) = managers.client(&addr) else {
            continue;
        };
        let req = SvidRequest {
            task_id: task_id.to_string(),
            csr: csr.clone(),
        };
        match client.issue_svid(req).await {
            Ok(resp) => {
                let resp = resp.into_inner();
                let info = skep_pki::SvidInfo::from_der(&resp.cert)
                    .map_err(|e| SvidError::Refused(format!("the SVID sent is not one: {e}")))?;
                if info.task_id != task_id {
                    return Err(SvidError::Refused(
                        "the SVID sent names another task".into(),
                    ));
                }
                let held = Held {
                    key,
                    cert_der: resp.cert,
                    spiffe_id: info.spiffe_id,
                    not_after: info.not_after,
                };
                return Ok((held, resp.bundle));
            }
            Err(s) if s.code() == tonic::Code::PermissionDenied => {
                return Err(SvidError::Denied(s.message().to_string()));
            }
            Err(s) => last = s.message().to_string(),
        }
    }
    Err(SvidError::Refused(last))
}

/// The identity files of one task, on its tmpfs.
struct Files {
    secrets: TaskSecrets,
}

impl Files {
    fn write_svid(&self, held: &Held) -> Result<(), SvidError> {
        let cert = pem::encode(&pem::Pem::new("CERTIFICATE", held.cert_der.clone()));
        let key = held.key.pkcs8_pem();
        // The key first: a reader that sees the new certificate finds its key.
        self.put("svid.key", key.as_bytes())?;
        self.put("svid.pem", cert.as_bytes())
    }

    fn write_bundle(&self, b: &WorkloadBundle) -> Result<(), SvidError> {
        let certs = skep_pki::split_der_certs(&b.ca).unwrap_or_default();
        let text: String = certs
            .into_iter()
            .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der)))
            .collect();
        self.put("bundle.pem", text.as_bytes())
    }

    /// Every file is readable by the task's user (exec tasks run as nobody; a container's
    /// user is its image's): the directory is seen by that one task only.
    fn put(&self, name: &str, bytes: &[u8]) -> Result<(), SvidError> {
        self.secrets
            .put_identity_file(name, bytes, 0o444)
            .map_err(|e| SvidError::Write(e.to_string()))
    }
}

fn material(held: &Held, b: &WorkloadBundle) -> Arc<X509Material> {
    Arc::new(X509Material {
        spiffe_id: held.spiffe_id.clone(),
        cert_der: held.cert_der.clone(),
        key_pkcs8: held.key.pkcs8_der(),
        bundle_der: b.ca.clone(),
        crl_der: b.crl.clone(),
        trust_domain: b.trust_domain.clone(),
    })
}

fn jwt_material(b: &WorkloadBundle) -> Arc<JwtBundleMaterial> {
    Arc::new(JwtBundleMaterial {
        trust_domain: b.trust_domain.clone(),
        jwks_json: b.jwks.clone(),
    })
}

/// Keeps one task's SVID fresh and its bundle current.
struct Renewal {
    task_id: String,
    managers: Arc<Managers>,
    files: Files,
    held: Held,
    bundle: Arc<WorkloadBundle>,
    feed: watch::Receiver<Option<Arc<WorkloadBundle>>>,
    x509: watch::Sender<Option<Arc<X509Material>>>,
    jwt: watch::Sender<Option<Arc<JwtBundleMaterial>>>,
}

impl Renewal {
    async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut retry = Duration::from_secs(1);
        let mut due = renew_at(&self.held);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep_until(due) => {
                    match issue(&self.task_id, &self.managers).await {
                        Ok((held, bundle)) => {
                            if let Some(b) = bundle {
                                self.bundle = Arc::new(b);
                            }
                            self.held = held;
                            self.publish(true);
                            retry = Duration::from_secs(1);
                            due = renew_at(&self.held);
                        }
                        Err(SvidError::Denied(why)) => {
                            // The task is stopping or was stopped: no renewal after that.
                            tracing::info!(task_id = %self.task_id, reason = %why, "the task's SVID is not renewed");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(task_id = %self.task_id, error = %e, "cannot renew the task's SVID; retrying");
                            due = tokio::time::Instant::now() + retry;
                            retry = (retry * 2).min(RETRY_MAX);
                        }
                    }
                }
                r = self.feed.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let latest = self.feed.borrow_and_update().clone();
                    if let Some(b) = latest
                        && !same_bundle(&b, &self.bundle)
                    {
                        self.bundle = b;
                        self.publish(false);
                    }
                }
            }
        }
    }

    /// Writes the files and tells the streams: the SVID too if `svid` (a renewal).
    fn publish(&self, svid: bool) {
        let written = if svid {
            self.files.write_svid(&self.held)
        } else {
            Ok(())
        }
        .and_then(|()| self.files.write_bundle(&self.bundle));
        if let Err(e) = written {
            tracing::warn!(task_id = %self.task_id, error = %e, "cannot replace the task's identity files");
        }
        self.x509
            .send_replace(Some(material(&self.held, &self.bundle)));
        let jwks_changed = self
            .jwt
            .borrow()
            .as_ref()
            .is_none_or(|j| j.jwks_json != self.bundle.jwks);
        if jwks_changed {
            self.jwt.send_replace(Some(jwt_material(&self.bundle)));
        }
    }
}

/// Half-way between now and the SVID's end.
fn renew_at(held: &Held) -> tokio::time::Instant {
    let left = held.not_after - time::OffsetDateTime::now_utc();
    let half = Duration::try_from(left / 2).unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + half.max(Duration::from_secs(1))
}

/// The Workload API's view of one task.
struct TaskSource {
    task_id: String,
    managers: Arc<Managers>,
    x509: watch::Receiver<Option<Arc<X509Material>>>,
    jwt: watch::Receiver<Option<Arc<JwtBundleMaterial>>>,
}

#[tonic::async_trait]
impl Source for TaskSource {
    fn x509(&self) -> watch::Receiver<Option<Arc<X509Material>>> {
        self.x509.clone()
    }

    fn jwt_bundle(&self) -> watch::Receiver<Option<Arc<JwtBundleMaterial>>> {
        self.jwt.clone()
    }

    async fn jwt_svid(&self, audience: Vec<String>) -> Result<Zeroizing<String>, String> {
        let mut last = "no manager could be reached".to_string();
        for addr in self.managers.candidates() {
            let Some(mut client) = self.managers.client(&addr) else {
                continue;
            };
            let req = JwtSvidRequest {
                task_id: self.task_id.clone(),
                audience: audience.clone(),
            };
            match client.issue_jwt_svid(req).await {
                Ok(resp) => {
                    let mut resp = resp.into_inner();
                    return Ok(Zeroizing::new(std::mem::take(&mut resp.token)));
                }
                Err(s) if s.code() == tonic::Code::PermissionDenied => {
                    return Err(s.message().to_string());
                }
                Err(s) => last = s.message().to_string(),
            }
        }
        Err(last)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn crl(serials: &[&str]) -> Vec<u8> {
        let now = time::OffsetDateTime::now_utc();
        let ca = skep_pki::WorkloadCa::generate(&skep_pki::new_id(), time::Duration::days(1), now)
            .unwrap();
        ca.crl(serials, 1, now, now + time::Duration::hours(1))
            .unwrap()
    }

    /// A bundle sent without its revoked serials gets them from its CRL, once: the same
    /// bundle again tells no task; a new CRL does. One sent with them keeps them.
    #[test]
    fn the_feed_reads_revoked_serials_from_the_crl_once_per_bundle() {
        let feed = BundleFeed::default();
        let mut rx = feed.subscribe();
        let sent = WorkloadBundle {
            trust_domain: "td".into(),
            crl: crl(&["0a1b", "7f02"]),
            ..WorkloadBundle::default()
        };
        feed.set(sent.clone());
        assert!(rx.has_changed().unwrap());
        assert_eq!(feed.current().unwrap().revoked, vec!["0a1b", "7f02"]);
        rx.borrow_and_update();
        feed.set(sent.clone());
        assert!(!rx.has_changed().unwrap());
        feed.set(WorkloadBundle {
            crl: crl(&["0a1b"]),
            ..sent.clone()
        });
        assert!(rx.has_changed().unwrap());
        assert_eq!(feed.current().unwrap().revoked, vec!["0a1b"]);
        let listed = WorkloadBundle {
            revoked: vec!["beef".into()],
            ..sent
        };
        assert_eq!(with_revoked(listed).revoked, vec!["beef"]);
    }

    /// A CRL that cannot be read gives no serials (the mesh then refuses callers: it reads
    /// the CRL itself and cannot).
    #[test]
    fn an_unreadable_crl_gives_no_serials() {
        let b = with_revoked(WorkloadBundle {
            crl: b"not a crl".to_vec(),
            ..WorkloadBundle::default()
        });
        assert!(b.revoked.is_empty());
    }
}
