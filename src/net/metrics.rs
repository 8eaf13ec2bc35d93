//! The metrics endpoint (`skep daemon --metrics-addr`): plain HTTP/1.1 for Prometheus.
//!
//! ```text
//!  scraper ── TCP ──► serve: accept ─► connection slot (semaphore) ─► hyper http1
//!     GET /metrics ─► answer ─► crate::metrics::metrics().encode() (OpenMetrics text)
//!     another path: 404, another method: 405, a malformed request: 400 (hyper), a head
//!     over MAX_HEADER_BYTES: 431; request bodies are never read
//! ```
//!
//! No authentication: the page holds counts and states, no secret value, key or token
//! (SECURITY.md, "Metrics"). Whoever reaches the address reads it, so a non-loopback address
//! is warned about at start. Every resource a client can make the server spend is bounded:
//! connections by a semaphore, the request head by hyper's buffer, its arrival and the whole
//! connection by timeouts.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// The one path served.
pub const METRICS_PATH: &str = "/metrics";

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

const TEXT: &str = "text/plain; charset=utf-8";

/// Connections served at once; more wait in the listen backlog until a slot frees.
pub const MAX_CONNECTIONS: usize = 32;

/// How long a request head may take to arrive.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may live in all.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest request head read, in bytes (hyper's floor is 8 KiB); larger: 431.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// Why the metrics endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}; choose another --metrics-addr")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Whether serving at `addr` exposes the page beyond this machine (see the module docs).
pub fn exposed(addr: &SocketAddr) -> bool {
    !addr.ip().is_loopback()
}

/// The refusal of a request of `method` on `path` (status and text), or `None` when it
/// asks for the metrics.
pub fn refusal(method: &Method, path: &str) -> Option<(StatusCode, &'static str)> {
    if path != METRICS_PATH {
        return Some((
            StatusCode::NOT_FOUND,
            "not found: metrics are at /metrics\n",
        ));
    }
    if method != Method::GET && method != Method::HEAD {
        return Some((StatusCode::METHOD_NOT_ALLOWED, "only GET is served here\n"));
    }
    None
}

/// Binds `addr` and serves the metrics page there until the returned task is aborted
/// (logging a warning first when `addr` is not a loopback address).
pub async fn start(addr: SocketAddr) -> Result<tokio::task::JoinHandle<()>, MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })?;
    if exposed(&addr) {
        tracing::warn!(
            %addr,
            "serving metrics without authentication on a non-loopback address: anyone who can reach it reads the swarm's counts and states (no secrets); restrict it with a firewall or use 127.0.0.1"
        );
    }
    tracing::info!(%addr, "serving metrics at /metrics");
    Ok(tokio::spawn(serve(listener, MAX_CONNECTIONS)))
}

/// Serves `listener` with at most `max_connections` at once, forever.
pub async fn serve(listener: TcpListener, max_connections: usize) {
    let slots = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        // A slot first, then the connection: past the limit, clients wait in the backlog.
        let accepted = tokio::select! {
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = async {
                let slot = slots.clone().acquire_owned().await;
                (slot, listener.accept().await)
            } => accepted,
        };
        let (Ok(slot), accepted) = accepted else {
            return; // the semaphore is never closed
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "metrics listener could not accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        connections.spawn(async move {
            let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                // The body is never read: no resource takes one.
                let res = match refusal(req.method(), req.uri().path()) {
                    Some((status, text)) => response(status, TEXT, text.as_bytes().to_vec()),
                    None => {
                        let page = crate::metrics::metrics().scrape().await;
                        let body = if req.method() == Method::HEAD {
                            Vec::new()
                        } else {
                            page.into_bytes()
                        };
                        response(StatusCode::OK, CONTENT_TYPE, body)
                    }
                };
                Ok::<_, Infallible>(res)
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEADER_BYTES.max(8192))
                .serve_connection(TokioIo::new(tcp), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics connection ended"),
                Err(_) => tracing::debug!(%peer, "metrics connection timed out"),
            }
            drop(slot);
        });
    }
}

fn response(status: StatusCode, kind: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(kind));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
    }
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_of_the_metrics_path_is_answered() {
        let status = |m: Method, p: &str| refusal(&m, p).map(|r| r.0);
        assert_eq!(status(Method::GET, "/metrics"), None);
        assert_eq!(status(Method::HEAD, "/metrics"), None);
        assert_eq!(
            status(Method::POST, "/metrics"),
            Some(StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(status(Method::GET, "/"), Some(StatusCode::NOT_FOUND));
        assert_eq!(
            status(Method::GET, "/metrics/../x"),
            Some(StatusCode::NOT_FOUND)
        );
    }

    #[test]
    fn loopback_addresses_are_not_exposed() {
        assert!(!exposed(&"127.0.0.1:9477".parse().unwrap()));
        assert!(!exposed(&"[::1]:9477".parse().unwrap()));
        assert!(exposed(&"0.0.0.0:9477".parse().unwrap()));
        assert!(exposed(&"10.0.0.5:9477".parse().unwrap()));
    }

    #[tokio::test]
    async fn a_garbage_request_gets_400_and_the_server_goes_on() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, 4));
        let ask = |req: Vec<u8>| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(&req).await.unwrap();
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
            String::from_utf8_lossy(&out).into_owned()
        };
        let bad = ask(b"\x00\x01GARBAGE \xff\r\n\r\n".to_vec()).await;
        assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
        let long = ask(format!(
            "GET /metrics HTTP/1.1\r\nx: {}\r\n\r\n",
            "a".repeat(64 << 10)
        )
        .into_bytes())
        .await;
        assert!(long.starts_with("HTTP/1.1 431"), "{long}");
        let post =
            ask(b"POST /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec()).await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let ok =
            ask(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".to_vec()).await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("skep_refusals_total"), "{ok}");
        assert!(ok.trim_end().ends_with("# EOF"), "{ok}");
        server.abort();
    }
}
