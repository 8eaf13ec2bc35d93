//! The SPIFFE Workload API a task calls to learn who it is: the standard gRPC service
//! (`SpiffeWorkloadAPI`, proto in `crate::api::spiffe`) on a Unix socket that exists only
//! inside that one task, so the caller's identity is the socket it used (no pid or cgroup
//! parsing). What it serves comes from a [`Source`], which the agent's per-task identity
//! implements; this room only checks requests and moves bytes.
//!
//! ```text
//!  task ──unix socket──► serve.rs: bind (0666, parent dir restricts), ≤ MAX_CONNECTIONS
//!                        │ interceptor: `workload.spiffe.io: true` or InvalidArgument
//!                        ▼
//!                        service.rs: thin async shell, ≤ MAX_STREAMS open watch streams
//!                        │  check.rs  pure request checks (audiences, IDs, sizes)
//!                        │  render.rs pure material → response messages
//!                        │  jwt.rs    ES256 JWT-SVID verification against the JWKS
//!                        ▼
//!                        Source: x509() / jwt_bundle() watches, jwt_svid(audience)
//! ```
//!
//! The streams (FetchX509SVID, FetchX509Bundles, FetchJWTBundles) send the current value at
//! once (or wait until there is one) and again whenever the source's watch changes; when the
//! source closes its watch (identity off, task gone) a stream ends with PermissionDenied.

pub mod check;
pub mod jwt;
pub mod render;
mod serve;
mod service;

#[cfg(test)]
mod client_tests;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

pub use serve::{BoundSocket, bind, serve, serve_bound};

/// The largest request message the server decodes: Workload API requests are a few short
/// strings (16 audiences of 256 bytes, one token of 8 KiB at most).
pub const MAX_REQUEST_BYTES: usize = 64 << 10;
/// The largest response message the server encodes: an SVID, its key and the bundle, or a
/// JWKS, with room for a CRL of many serials.
pub const MAX_RESPONSE_BYTES: usize = 4 << 20;
/// How many connections one socket holds at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// How many HTTP/2 streams (calls) one connection may have open at once.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 16;
/// How many watch streams (FetchX509SVID, FetchX509Bundles, FetchJWTBundles) one socket
/// keeps open at once; one more is refused with ResourceExhausted.
pub const MAX_STREAMS: usize = 64;
/// The metadata header every Workload API request must carry, with the value
/// [`SECURITY_HEADER_VALUE`] (as SPIRE requires): a browser or a proxy tricked into calling
/// the socket cannot set it.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";
/// The value of [`SECURITY_HEADER`].
pub const SECURITY_HEADER_VALUE: &str = "true";

/// What one task's Workload API serves as its X.509 identity.
pub struct X509Material {
    /// The task's SPIFFE ID (`spiffe://<td>/ns/<ns>/svc/<svc>`).
    pub spiffe_id: String,
    /// The leaf certificate (DER).
    pub cert_der: Vec<u8>,
    /// The leaf's private key (PKCS#8 DER).
    pub key_pkcs8: zeroize::Zeroizing<Vec<u8>>,
    /// The workload CA certificate(s), concatenated DER.
    pub bundle_der: Vec<u8>,
    /// The workload CA's revocation list (DER); may be empty.
    pub crl_der: Vec<u8>,
    /// The trust domain's name (no `spiffe://`).
    pub trust_domain: String,
}

impl std::fmt::Debug for X509Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X509Material")
            .field("spiffe_id", &self.spiffe_id)
            .field("cert_der", &format_args!("{} bytes", self.cert_der.len()))
            .field("key_pkcs8", &"..")
            .field(
                "bundle_der",
                &format_args!("{} bytes", self.bundle_der.len()),
            )
            .field("crl_der", &format_args!("{} bytes", self.crl_der.len()))
            .field("trust_domain", &self.trust_domain)
            .finish()
    }
}

/// What one task's Workload API serves as the JWT bundle of its trust domain.
#[derive(Debug)]
pub struct JwtBundleMaterial {
    /// The trust domain's name (no `spiffe://`).
    pub trust_domain: String,
    /// The JWKS (`{"keys":[..]}`) that verifies the trust domain's JWT-SVIDs.
    pub jwks_json: Vec<u8>,
}

/// What one task's Workload API serves (the agent's per-task identity implements it).
///
/// A watch holding `None` means "not yet": streams wait for a value. A watch whose sender is
/// gone means the task has no identity (turned off, or the task stopped): calls are refused
/// with PermissionDenied.
#[tonic::async_trait]
pub trait Source: Send + Sync + 'static {
    /// The task's current X.509-SVID and bundle.
    fn x509(&self) -> watch::Receiver<Option<Arc<X509Material>>>;
    /// The trust domain's current JWT bundle.
    fn jwt_bundle(&self) -> watch::Receiver<Option<Arc<JwtBundleMaterial>>>;
    /// A JWT-SVID for `audience` (already checked for count and size).
    async fn jwt_svid(&self, audience: Vec<String>) -> Result<zeroize::Zeroizing<String>, String>;
}

/// What went wrong serving the Workload API or with one request. The message is what the
/// caller (the task) reads; [`WorkloadError::status`] maps it to a gRPC status in one place.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// A file operation on the socket failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The socket or its directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Something that is not a socket is where the socket goes: it is left alone.
    #[error("{} exists and is not a socket; remove it or choose another path", .0.display())]
    NotASocket(PathBuf),
    /// The gRPC server failed.
    #[error("the workload API server failed: {0}")]
    Serve(#[source] tonic::transport::Error),
    /// The request lacks `workload.spiffe.io: true`.
    #[error("security header missing")]
    SecurityHeaderMissing,
    /// FetchJWTSVID without an audience.
    #[error("audience is required: name at least one")]
    NoAudience,
    /// FetchJWTSVID with too many audiences.
    #[error("too many audiences: {count} given, at most {max}")]
    TooManyAudiences {
        /// How many were sent.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An audience that is empty or too long.
    #[error("audience {index} is {problem}: {quoted}")]
    BadAudience {
        /// Its position in the request.
        index: usize,
        /// What is wrong with it.
        problem: &'static str,
        /// A short prefix of it.
        quoted: String,
    },
    /// FetchJWTSVID asked for a SPIFFE ID this task does not have.
    #[error("this workload is not entitled to {quoted}")]
    ForeignSpiffeId {
        /// A short prefix of the requested ID.
        quoted: String,
    },
    /// A token to validate that is empty or too long.
    #[error("svid is {problem}")]
    BadToken {
        /// What is wrong with it.
        problem: String,
    },
    /// A token that did not validate.
    #[error("the JWT-SVID is not valid: {0}")]
    InvalidToken(String),
    /// The source closed its watch: this task has no identity.
    #[error("no identity for this workload")]
    NoIdentity,
    /// The source has no value yet for a call that cannot wait.
    #[error("this workload's {0} is not ready yet; retry shortly")]
    NotReady(&'static str),
    /// The source could not issue a JWT-SVID.
    #[error("cannot issue a JWT-SVID: {0}")]
    Issue(String),
    /// Too many open streams on this socket.
    #[error("too many open streams on this socket (at most {0}); close some and retry")]
    TooManyStreams(usize),
}

impl WorkloadError {
    /// The gRPC status the caller gets: the one place errors become statuses.
    pub fn status(&self) -> tonic::Status {
        use tonic::Code;
        let code = match self {
            WorkloadError::SecurityHeaderMissing
            | WorkloadError::NoAudience
            | WorkloadError::TooManyAudiences { .. }
            | WorkloadError::BadAudience { .. }
            | WorkloadError::BadToken { .. }
            | WorkloadError::InvalidToken(_) => Code::InvalidArgument,
            WorkloadError::ForeignSpiffeId { .. } | WorkloadError::NoIdentity => {
                Code::PermissionDenied
            }
            WorkloadError::NotReady(_) | WorkloadError::Issue(_) => Code::Unavailable,
            WorkloadError::TooManyStreams(_) => Code::ResourceExhausted,
            WorkloadError::Io { .. } | WorkloadError::NotASocket(_) | WorkloadError::Serve(_) => {
                Code::Internal
            }
        };
        // Every message is bounded: the inputs it quotes are cut by `check` and `jwt`.
        tonic::Status::new(code, crate::util::prefix(&self.to_string(), 512))
    }
}

impl From<WorkloadError> for tonic::Status {
    fn from(e: WorkloadError) -> Self {
        e.status()
    }
}
