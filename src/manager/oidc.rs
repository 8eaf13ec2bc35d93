//! The managers' OIDC discovery endpoint: how verifiers outside the cluster (a cloud provider's
//! identity federation, Vault, a service behind a gateway) find the keys that sign JWT-SVIDs.
//!
//! ```text
//!  verifier ── TLS (http/1.1) ──► serve: accept ─► connection slot (semaphore) ─► hyper http1
//!     GET /.well-known/openid-configuration ─► answer ─► {issuer, jwks_uri = issuer/keys, ..}
//!     GET /keys ──────────────────────────────► answer ─► the JWKS of the source (503 if none)
//!     anything else: 404, a method other than GET: 405; request bodies are never read
//! ```
//!
//! The server is public by design (it publishes public keys), so every resource it spends on
//! a peer is bounded: connections by a semaphore, the request head by hyper's buffer limit,
//! the head's arrival by a timeout, and the whole connection (handshake and every request on
//! it) by another. [`answer`] is the whole of the HTTP logic, a pure function under unit test.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

/// Where the server gets the JWKS document it publishes: the current one, or `None` while the
/// cluster has no JWT key yet.
pub type JwksSource = Arc<dyn Fn() -> Option<Vec<u8>> + Send + Sync>;

/// The discovery document's path.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

/// The JWKS path; the discovery document names it as `jwks_uri`.
pub const KEYS_PATH: &str = "/keys";

/// Connections served at once; more wait in the listen backlog until a slot frees.
pub const MAX_CONNECTIONS: usize = 256;

/// How long a connection may take for its TLS handshake, and for each request head to arrive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may live in all: handshake and every request on it.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest request head (request line and headers) read, in bytes; a larger one is
/// answered 431 and the connection closed. (hyper's floor is 8 KiB.)
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// The longest issuer accepted, in bytes.
pub const MAX_ISSUER_LEN: usize = 256;

/// The bounds of one server; [`Limits::default`] holds the constants above.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: usize,
    /// TLS handshake and request-head timeout.
    pub header_timeout: Duration,
    /// The whole of a connection.
    pub connection_timeout: Duration,
    /// The largest request head, in bytes (at least 8 KiB whatever is asked).
    pub max_header_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
            connection_timeout: CONNECTION_TIMEOUT,
            max_header_bytes: MAX_HEADER_BYTES,
        }
    }
}

/// What can go wrong in the OIDC server.
#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The issuer is not an `https://host[:port]` URL.
    #[error(
        "invalid OIDC issuer {}: {reason}; give https://HOST[:PORT], the address verifiers reach the managers at",
        crate::util::quote(.found)
    )]
    Issuer {
        /// The issuer given.
        found: String,
        /// What was wrong.
        reason: &'static str,
    },
    /// A TLS handshake failed.
    #[error("TLS handshake with an OIDC client failed: {0}")]
    Handshake(#[source] io::Error),
    /// hyper gave up on a connection (a malformed or oversized request, a reset).
    #[error("HTTP connection with an OIDC client failed: {0}")]
    Http(#[source] hyper::Error),
    /// A connection outlived its handshake or connection timeout.
    #[error("an OIDC client took too long; its connection was closed")]
    Timeout,
}

/// Checks an issuer: `https://` and a host with an optional port, nothing after it (the
/// discovery document lives at the issuer's root, which is where this server answers).
pub fn check_issuer(issuer: &str) -> Result<(), OidcError> {
    let refuse = |reason| {
        Err(OidcError::Issuer {
            found: issuer.to_string(),
            reason,
        })
    };
    if issuer.len() > MAX_ISSUER_LEN {
        return refuse("it is longer than 256 bytes");
    }
    let Some(authority) = issuer.strip_prefix("https://") else {
        return refuse("it must start with https://");
    };
    if authority.is_empty() {
        return refuse("it names no host");
    }
    if !authority
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
    {
        return refuse("only a host and a port may follow https://, with no path, query or user");
    }
    Ok(())
}

/// The response to a request: the status and the JSON body.
///
/// `GET` [`DISCOVERY_PATH`] gives the discovery document, `GET` [`KEYS_PATH`] the JWKS of
/// `jwks` (503 while it has none); any other path 404 and any other method 405.
pub fn answer(
    method: &Method,
    path: &str,
    issuer: &str,
    jwks: &dyn Fn() -> Option<Vec<u8>>,
) -> (StatusCode, Vec<u8>) {
    let error = |status: StatusCode, text: &str| {
        let body = serde_json::json!({ "error": text })
            .to_string()
            .into_bytes();
        (status, body)
    };
    if method != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "only GET is served here");
    }
    match path {
        DISCOVERY_PATH => {
            let doc = serde_json::json!({
                "issuer": issuer,
                "jwks_uri": format!("{issuer}{KEYS_PATH}"),
                "id_token_signing_alg_values_supported": [skep_pki::jwt::JWT_ALG],
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public"],
            });
            (StatusCode::OK, doc.to_string().into_bytes())
        }
        KEYS_PATH => match jwks() {
            Some(doc) => (StatusCode::OK, doc),
            None => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the cluster has no JWT signing key yet; retry later",
            ),
        },
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Serves the discovery document and the JWKS on `listener` over TLS until `shutdown` turns
/// true (or its sender is dropped), with the default [`Limits`].
///
/// `tls` supplies the certificate (and whatever client-certificate policy it has); its ALPN
/// list is replaced by `http/1.1`, the only protocol this server speaks. `issuer` must pass
/// [`check_issuer`]. Open connections are closed when the server stops.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    issuer: String,
    jwks: JwksSource,
    shutdown: watch::Receiver<bool>,
) -> Result<(), OidcError> {
    serve_with_limits(listener, tls, issuer, jwks, shutdown, Limits::default()).await
}

/// [`serve`] with other bounds.
pub async fn serve_with_limits(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    issuer: String,
    jwks: JwksSource,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
) -> Result<(), OidcError> {
    check_issuer(&issuer)?;
    let mut config = (*tls).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let issuer: Arc<str> = issuer.into();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        // A slot first, then the connection: past the limit, clients wait in the backlog.
        let accepted = tokio::select! {
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
                continue;
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = async {
                let slot = slots.clone().acquire_owned().await;
                (slot, listener.accept().await)
            } => accepted,
        };
        let (Ok(slot), accepted) = accepted else {
            break; // the semaphore is never closed
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors or a connection reset before accept: wait a little
                // rather than spin, and go on.
                tracing::warn!(error = %e, "OIDC listener could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let issuer = issuer.clone();
        let jwks = jwks.clone();
        connections.spawn(async move {
            let result = tokio::time::timeout(
                limits.connection_timeout,
                connection(tcp, acceptor, issuer, jwks, limits),
            )
            .await
            .unwrap_or(Err(OidcError::Timeout));
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "OIDC connection ended");
            }
            drop(slot);
        });
    }
    connections.shutdown().await;
    Ok(())
}

/// One connection: the TLS handshake, then HTTP/1.1 requests until the client closes it.
async fn connection(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    issuer: Arc<str>,
    jwks: JwksSource,
    limits: Limits,
) -> Result<(), OidcError> {
    // Small answers: send them at once.
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp))
        .await
        .map_err(|_| OidcError::Timeout)?
        .map_err(OidcError::Handshake)?;
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        // The body is never read: no resource takes one.
        let (status, body) = answer(req.method(), req.uri().path(), &issuer, &*jwks);
        std::future::ready(Ok::<_, Infallible>(response(status, body)))
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .serve_connection(TokioIo::new(tls), service)
        .await
        .map_err(OidcError::Http)
}

fn response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(header::ALLOW, header::HeaderValue::from_static("GET"));
    }
    res
}

#[cfg(test)]
mod tests;
