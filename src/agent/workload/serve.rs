//! The socket: bound (its directory made if missing, a stale socket replaced, mode 0666: the
//! directory around it, bound into one task only, is what restricts who reaches it), served
//! with at most [`MAX_CONNECTIONS`] connections at once, and removed on shutdown.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_stream::Stream;
use tonic::service::interceptor::InterceptedService;

use crate::api::spiffe::spiffe_workload_api_server::SpiffeWorkloadApiServer;

use super::service::{WorkloadService, require_security_header, stopped};
use super::{
    MAX_CONNECTIONS, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, MAX_STREAMS,
    MAX_STREAMS_PER_CONNECTION, Source, WorkloadError,
};

/// How long open calls get to finish once shutdown is asked before the server is dropped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long accepting pauses after an error (out of file descriptors): no busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves the Workload API of one task on `socket` until `shutdown` turns true (or its sender
/// is dropped), then removes the socket.
pub async fn serve(
    socket: PathBuf,
    source: Arc<dyn Source>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), WorkloadError> {
    serve_bound(bind(&socket)?, source, shutdown).await
}

/// A socket bound (and made reachable) but not served yet: a caller binds first, so the socket
/// exists before the task that uses it starts, then serves it.
pub struct BoundSocket {
    listener: UnixListener,
    bound: Bound,
    path: PathBuf,
}

/// As [`serve`], on a socket [`bind`] already bound.
pub async fn serve_bound(
    socket: BoundSocket,
    source: Arc<dyn Source>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), WorkloadError> {
    let BoundSocket {
        listener,
        bound,
        path: socket,
    } = socket;
    let svc = WorkloadService {
        source,
        shutdown: shutdown.clone(),
        streams: Arc::new(Semaphore::new(MAX_STREAMS)),
    };
    let api = SpiffeWorkloadApiServer::new(svc)
        .max_decoding_message_size(MAX_REQUEST_BYTES)
        .max_encoding_message_size(MAX_RESPONSE_BYTES);
    let api = InterceptedService::new(
        api,
        require_security_header
            as fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
    );
    let incoming = capped(listener, Arc::new(Semaphore::new(MAX_CONNECTIONS)));
    let mut signal = shutdown.clone();
    let server = crate::net::serve::server()
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .add_service(api)
        .serve_with_incoming_shutdown(incoming, async move { stopped(&mut signal).await });
    let mut late = shutdown;
    let result = tokio::select! {
        r = server => r.map_err(WorkloadError::Serve),
        () = async { stopped(&mut late).await; tokio::time::sleep(SHUTDOWN_GRACE).await } => Ok(()),
    };
    remove_if_ours(&socket, bound);
    result
}

/// (device, inode) of the socket this server bound, so shutdown removes only its own.
type Bound = (u64, u64);

/// Binds the Workload API socket at `path`: its directory made if missing, a stale socket
/// replaced (anything else there refused), mode 0666.
pub fn bind(path: &Path) -> Result<BoundSocket, WorkloadError> {
    let io = |what, source| WorkloadError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| io("creating the directory of", e))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| io("removing the stale socket", e))?;
        }
        Ok(_) => return Err(WorkloadError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("inspecting", e)),
    }
    let listener = bind_long(path).map_err(|e| io("binding", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666))
        .map_err(|e| io("setting mode 0666 on", e))?;
    let m = std::fs::symlink_metadata(path).map_err(|e| io("inspecting", e))?;
    Ok(BoundSocket {
        listener,
        bound: (m.dev(), m.ino()),
        path: path.to_path_buf(),
    })
}

/// Binds a Unix socket at `path` even when the path is longer than a socket address holds
/// (108 bytes; a node's data directory can be deep): through its directory's file descriptor
/// (`/proc/self/fd/N/NAME`), which the kernel resolves to the same place.
fn bind_long(path: &Path) -> std::io::Result<UnixListener> {
    const SUN_PATH: usize = 100;
    if path.as_os_str().len() < SUN_PATH {
        return UnixListener::bind(path);
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return UnixListener::bind(path);
    };
    let dir = std::fs::File::open(dir)?;
    let short = Path::new("/proc/self/fd")
        .join(std::os::fd::AsRawFd::as_raw_fd(&dir).to_string())
        .join(name);
    let listener = UnixListener::bind(&short);
    drop(dir);
    listener
}

fn remove_if_ours(path: &Path, bound: Bound) {
    if let Ok(m) = std::fs::symlink_metadata(path)
        && (m.dev(), m.ino()) == bound
        && let Err(e) = std::fs::remove_file(path)
    {
        tracing::warn!(socket = %path.display(), error = %e, "cannot remove the workload API socket");
    }
}

/// Accepted connections, each holding one of `slots`: when none is free, accepting waits.
fn capped(
    listener: UnixListener,
    slots: Arc<Semaphore>,
) -> impl Stream<Item = Result<Capped, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold((listener, slots), |(listener, slots)| async move {
        let permit = slots.clone().acquire_owned().await.ok()?;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let conn = Capped {
                        stream,
                        _permit: permit,
                    };
                    return Some((Ok(conn), (listener, slots)));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "workload API socket: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    })
}

/// A connection holding its slot until it closes.
pub(super) struct Capped {
    stream: UnixStream,
    _permit: OwnedSemaphorePermit,
}

impl tonic::transport::server::Connected for Capped {
    type ConnectInfo = <UnixStream as tonic::transport::server::Connected>::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Capped {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Capped {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_makes_the_directory_replaces_a_stale_socket_and_sets_0666() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/workload.sock");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let first = bind(&path).unwrap();
            drop(first); // leaves a stale socket file behind
            assert!(path.exists());
            let second = bind(&path).unwrap();
            let m = std::fs::metadata(&path).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o666);
            remove_if_ours(&path, second.bound);
            assert!(!path.exists());
        });
    }

    /// A socket deep in a long data directory (past the 108 bytes of a socket address) is
    /// bound all the same, at its real path.
    #[test]
    fn a_socket_path_longer_than_a_socket_address_is_bound() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("d".repeat(60)).join("e".repeat(60));
        let path = deep.join("workload@skep.sock");
        assert!(path.as_os_str().len() > 120);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let bound = bind(&path).unwrap();
            let m = std::fs::symlink_metadata(&path).unwrap();
            assert!(m.file_type().is_socket());
            remove_if_ours(&path, bound.bound);
        });
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("workload.sock");
        std::fs::write(&path, b"keep me").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt.block_on(async { bind(&path).map(|_| ()) }).unwrap_err();
        assert!(matches!(e, WorkloadError::NotASocket(_)), "{e}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    }

    #[tokio::test]
    async fn a_connection_past_the_cap_waits_for_a_free_slot() {
        use tokio_stream::StreamExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let incoming = capped(listener, Arc::new(Semaphore::new(1)));
        tokio::pin!(incoming);
        let _c1 = UnixStream::connect(&path).await.unwrap();
        let first = incoming.next().await.unwrap().unwrap();
        let _c2 = UnixStream::connect(&path).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(200), incoming.next()).await;
        assert!(
            waiting.is_err(),
            "a second connection is not taken while the slot is held"
        );
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(10), incoming.next()).await;
        assert!(matches!(second, Ok(Some(Ok(_)))));
    }
}
