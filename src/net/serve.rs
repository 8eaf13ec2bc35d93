//! How every gRPC server of a daemon is built (the mTLS listener and the local socket alike):
//! keepalive, error messages bounded at the edge, and the message sizes each service accepts
//! and sends, each a named constant used by the server and by its clients.
//!
//! ```text
//!  server() ─► tonic Server: HTTP/2 keepalive (dead peers closed), RpcMetrics (latency by
//!              method: crate::metrics), MapResponse(bound_status)
//!  control_server(..) / ca_server(..) / … ─► the generated server with its two size limits
//!  control_client(..) / ca_client(..) / … ─► the generated client with the mirrored limits
//! ```

use std::time::Duration;

use tonic::transport::Channel;

use crate::api::v1::agent_client::AgentClient;
use crate::api::v1::agent_server::{Agent, AgentServer};
use crate::api::v1::ca_client::CaClient;
use crate::api::v1::ca_server::{Ca, CaServer};
use crate::api::v1::control_server::{Control, ControlServer};
use crate::api::v1::dispatcher_client::DispatcherClient;
use crate::api::v1::dispatcher_server::{Dispatcher, DispatcherServer};
use crate::api::v1::manager_client::ManagerClient;
use crate::api::v1::manager_server::{Manager, ManagerServer};

/// Control requests: the largest is a policy ([`crate::policy::MAX_POLICY_BYTES`], 1 MiB) or a
/// secret (500 KiB); 4 MiB leaves room for their framing and no more.
pub const CONTROL_REQUEST_BYTES: usize = 4 << 20;
/// Control responses: an audit export or a long `node ls` of a big swarm, read by the CLI.
pub const CONTROL_RESPONSE_BYTES: usize = 256 << 20;
/// CA requests: a join token and a CSR are a few KiB, and anyone can call the CA.
pub const CA_REQUEST_BYTES: usize = 64 << 10;
/// CA responses: a certificate and the root bundle (two roots during a rotation).
pub const CA_RESPONSE_BYTES: usize = 1 << 20;
/// Dispatcher requests: a node's task reports (each status text bounded, see
/// [`crate::store::service::MAX_STATUS_TEXT_BYTES`]) and heartbeats.
pub const DISPATCHER_REQUEST_BYTES: usize = 4 << 20;
/// Dispatcher responses: the assignments of every task on a node, with their secrets
/// (500 KiB each at most); also the most a message's tasks may make once their shared specs
/// are filled in ([`crate::api::assignments::MAX_MESSAGE_BYTES`]).
pub const DISPATCHER_RESPONSE_BYTES: usize = crate::api::assignments::MAX_MESSAGE_BYTES;
/// Agent requests: log queries and mesh tunnel frames (chunks of at most 256 KiB).
pub const AGENT_REQUEST_BYTES: usize = 1 << 20;
/// Agent responses: a task's log tail and tunnel frames.
pub const AGENT_RESPONSE_BYTES: usize = 16 << 20;
/// Manager (Raft) messages, both ways: the append budget and one command
/// ([`crate::store::wire::MAX_MESSAGE_BYTES`]).
pub const MANAGER_MESSAGE_BYTES: usize = crate::store::wire::MAX_MESSAGE_BYTES;

/// The longest status message a server sends, in bytes: a longer one (a handler quoting what
/// it was sent) is cut, so no client sees a header too large to read.
pub const MAX_STATUS_MESSAGE_BYTES: usize = 1024;

/// How often an idle connection is pinged, and how long the ping may go unanswered before the
/// connection is closed: a peer that vanished stops holding a slot within a minute.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// HTTP/2 flow control between nodes, granted by this server and by the routing mesh's tunnel
/// channels ([`super::tunnel_channel`]) alike: a peer may send `STREAM_WINDOW` bytes on one
/// stream (a tunnel, a Raft append) and `CONNECTION_WINDOW` on one connection before this
/// side has read them, enough to keep a bulk tunnel moving between acknowledgements. A window
/// is a buffer: what a peer sent and the service has not read yet stays in memory, at most
/// `CONNECTION_WINDOW` per connection whatever its streams, so at most
/// [`super::limit::MAX_CONNECTIONS`] × `CONNECTION_WINDOW` in all (hyper's default server
/// windows are 1 MiB each).
pub const STREAM_WINDOW: u32 = 2 << 20;
/// See [`STREAM_WINDOW`].
pub const CONNECTION_WINDOW: u32 = 4 << 20;
/// The largest HTTP/2 frame a peer may send (the protocol's default is 16 KiB): a tunnel's
/// chunk goes in fewer frames. The reader of a connection holds at most one frame.
pub const MAX_FRAME_BYTES: u32 = 64 << 10;

/// What [`server`] puts in front of the services.
pub type BoundStatus = fn(http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body>;

/// A server builder with the daemon's transport settings.
pub type Builder = tonic::transport::Server<
    tower::layer::util::Stack<
        RpcMetricsLayer,
        tower::layer::util::Stack<
            tower::util::MapResponseLayer<BoundStatus>,
            tower::layer::util::Identity,
        >,
    >,
>;

/// The builder every daemon server starts from.
pub fn server() -> Builder {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_BYTES)
        .layer(tower::util::MapResponseLayer::new(
            bound_status as BoundStatus,
        ))
        .layer(RpcMetricsLayer)
}

/// Times every call to its response head into `skep_rpc_duration_seconds` by method (for a
/// stream, the time until it opened). A path no service routes (answered `Unimplemented`)
/// counts as `unknown`: a client cannot add label values.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcMetricsLayer;

impl<S> tower::Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;
    fn layer(&self, inner: S) -> RpcMetrics<S> {
        RpcMetrics { inner }
    }
}

/// The service [`RpcMetricsLayer`] makes.
#[derive(Clone, Debug)]
pub struct RpcMetrics<S> {
    inner: S,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for RpcMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + 'static,
    S::Future: Send + 'static,
    B: 'static,
    R: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().to_string();
        let start = std::time::Instant::now();
        let call = self.inner.call(req);
        Box::pin(async move {
            let res = call.await;
            let routed = res.as_ref().is_ok_and(|r| {
                r.headers()
                    .get(tonic::Status::GRPC_STATUS)
                    .map(|v| v.as_bytes())
                    != Some(b"12".as_slice())
            });
            crate::metrics::metrics().rpc(&path, routed, start.elapsed());
            res
        })
    }
}

/// Cuts a too-long `grpc-message` of an error response to [`MAX_STATUS_MESSAGE_BYTES`]: the
/// last line of defence for errors that quote their input.
pub fn bound_status<B>(mut res: http::Response<B>) -> http::Response<B> {
    let long = res
        .headers()
        .get(tonic::Status::GRPC_MESSAGE)
        .is_some_and(|v| v.len() > MAX_STATUS_MESSAGE_BYTES);
    if !long {
        return res;
    }
    let Some(status) = tonic::Status::from_header_map(res.headers()) else {
        return res;
    };
    let short = tonic::Status::new(
        status.code(),
        // Percent-encoding takes at most 3 bytes per byte, "…" included.
        crate::util::prefix(status.message(), MAX_STATUS_MESSAGE_BYTES / 3 - 3),
    );
    let headers = res.headers_mut();
    headers.remove(tonic::Status::GRPC_MESSAGE);
    headers.remove("grpc-status-details-bin");
    if short.add_header(headers).is_err() {
        headers.remove(tonic::Status::GRPC_MESSAGE);
    }
    res
}

/// The Control server with its size limits.
pub fn control_server<T: Control>(svc: T) -> ControlServer<T> {
    ControlServer::new(svc)
        .max_decoding_message_size(CONTROL_REQUEST_BYTES)
        .max_encoding_message_size(CONTROL_RESPONSE_BYTES)
}

/// The CA server with its size limits.
pub fn ca_server<T: Ca>(svc: T) -> CaServer<T> {
    CaServer::new(svc)
        .max_decoding_message_size(CA_REQUEST_BYTES)
        .max_encoding_message_size(CA_RESPONSE_BYTES)
}

/// The dispatcher server with its size limits.
pub fn dispatcher_server<T: Dispatcher>(svc: T) -> DispatcherServer<T> {
    DispatcherServer::new(svc)
        .max_decoding_message_size(DISPATCHER_REQUEST_BYTES)
        .max_encoding_message_size(DISPATCHER_RESPONSE_BYTES)
}

/// The agent server with its size limits.
pub fn agent_server<T: Agent>(svc: T) -> AgentServer<T> {
    AgentServer::new(svc)
        .max_decoding_message_size(AGENT_REQUEST_BYTES)
        .max_encoding_message_size(AGENT_RESPONSE_BYTES)
}

/// The manager (Raft) server with its size limits.
pub fn manager_server<T: Manager>(svc: T) -> ManagerServer<T> {
    ManagerServer::new(svc)
        .max_decoding_message_size(MANAGER_MESSAGE_BYTES)
        .max_encoding_message_size(MANAGER_MESSAGE_BYTES)
}

/// A CA client with the mirrored limits.
pub fn ca_client(ch: Channel) -> CaClient<Channel> {
    CaClient::new(ch)
        .max_encoding_message_size(CA_REQUEST_BYTES)
        .max_decoding_message_size(CA_RESPONSE_BYTES)
}

/// A dispatcher client with the mirrored limits.
pub fn dispatcher_client(ch: Channel) -> DispatcherClient<Channel> {
    DispatcherClient::new(ch)
        .max_encoding_message_size(DISPATCHER_REQUEST_BYTES)
        .max_decoding_message_size(DISPATCHER_RESPONSE_BYTES)
}

/// An agent client with the mirrored limits.
pub fn agent_client(ch: Channel) -> AgentClient<Channel> {
    AgentClient::new(ch)
        .max_encoding_message_size(AGENT_REQUEST_BYTES)
        .max_decoding_message_size(AGENT_RESPONSE_BYTES)
}

/// A manager (Raft) client with the mirrored limits.
pub fn manager_client(ch: Channel) -> ManagerClient<Channel> {
    ManagerClient::new(ch)
        .max_encoding_message_size(MANAGER_MESSAGE_BYTES)
        .max_decoding_message_size(MANAGER_MESSAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_status_message_is_cut_and_a_short_one_kept() {
        let long = tonic::Status::invalid_argument(format!("name: {}", "x".repeat(120_000)));
        let res = bound_status(long.into_http::<()>());
        let v = res
            .headers()
            .get(tonic::Status::GRPC_MESSAGE)
            .expect("a message");
        assert!(v.len() <= MAX_STATUS_MESSAGE_BYTES, "{} bytes", v.len());
        let back = tonic::Status::from_header_map(res.headers()).expect("a status");
        assert_eq!(back.code(), tonic::Code::InvalidArgument);
        assert!(
            back.message().starts_with("name: xxx"),
            "{}",
            back.message()
        );

        let short = tonic::Status::not_found("no such service \"web\"");
        let res = bound_status(short.into_http::<()>());
        let back = tonic::Status::from_header_map(res.headers()).expect("a status");
        assert_eq!(back.message(), "no such service \"web\"");
    }

    #[test]
    fn multibyte_text_is_cut_at_a_character_boundary_within_the_bound() {
        let long = tonic::Status::invalid_argument("é".repeat(50_000));
        let res = bound_status(long.into_http::<()>());
        let v = res
            .headers()
            .get(tonic::Status::GRPC_MESSAGE)
            .expect("a message");
        // Percent-encoded: 6 bytes per 'é'; the cut keeps the header within the bound.
        assert!(v.len() <= 2 * MAX_STATUS_MESSAGE_BYTES, "{} bytes", v.len());
    }
}
