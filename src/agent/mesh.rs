//! The routing mesh: every node listens on each service's published (ingress) ports and
//! forwards each connection to a running task of the service, in turn. A task on this node is
//! reached directly; a task on another node through a `Tunnel` stream of that node's Agent
//! service, inside the mutually authenticated TLS connection between the two nodes (the
//! remote node's certificate is checked to be that node's): bytes between nodes are never in
//! plaintext. Host-mode ports are listened on only by nodes running a task, for their own.
//!
//! ```text
//!  client ─tcp─► node A :4000 ──(task on A)──► 127.0.0.1:PORT / container:80
//!                          └──(task on B)──► mTLS Agent.Tunnel ─► node B ─► task
//! ```
//!
//! The routing table comes from any manager (`Dispatcher.Routes`) every second.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::ManagerList;
use super::supervisor::Supervisor;
use crate::api::v1::agent_client::AgentClient;
use crate::api::v1::dispatcher_client::DispatcherClient;
use crate::api::v1::{Empty, Route, RouteTask, TunnelFrame};
use crate::net::identity::LiveIdentity;

/// How often the routing table is fetched.
const REFRESH: Duration = Duration::from_secs(1);
/// Bytes per tunnel frame.
const CHUNK: usize = 16 * 1024;

/// One node's mesh.
pub struct Mesh {
    /// This node's ID.
    pub node_id: String,
    /// The cluster ID (peers' certificates must carry it).
    pub cluster_id: String,
    /// The address published ports are listened on (the node's listen address).
    pub listen_ip: IpAddr,
    /// The node's tasks, for local endpoints.
    pub supervisor: Arc<Supervisor>,
    /// Managers to ask for routes.
    pub managers: ManagerList,
    /// mTLS to managers.
    pub tls: Arc<ClientConfig>,
    /// The node's identity, for mTLS to other nodes.
    pub identity: Arc<LiveIdentity>,
    /// Where the ports it cannot listen on are reported (the agent's heartbeats carry them).
    pub port_errors: super::PortErrors,
    /// One mTLS channel per peer node, shared by its tunnels (HTTP/2 streams).
    pub peers: std::sync::Mutex<HashMap<String, Channel>>,
}

/// What a listener forwards to: the route's target port and the tasks to try, in turn.
struct Forward {
    target: u16,
    tasks: Vec<RouteTask>,
}

struct Listening {
    handle: JoinHandle<()>,
    forward: Arc<ArcSwap<Forward>>,
}

impl Mesh {
    /// Keeps a listener per published TCP port this node should serve, following the routing
    /// table. A port another process holds is reported in the log and retried.
    pub async fn run(self: Arc<Self>) {
        let mut listening: HashMap<SocketAddr, Listening> = HashMap::new();
        let mut failed: HashMap<SocketAddr, String> = HashMap::new();
        let mut channels: HashMap<String, Channel> = HashMap::new();
        loop {
            if let Some(table) = self.fetch(&mut channels).await {
                let wanted = self.wanted(&table.routes, &table.vips);
                self.supervisor.set_names(table.vips);
                failed.retain(|addr, _| wanted.contains_key(addr));
                listening.retain(|addr, l| {
                    let keep = wanted.contains_key(addr);
                    if !keep {
                        l.handle.abort();
                        tracing::info!(%addr, "routing mesh: no longer served here");
                    }
                    keep
                });
                for (addr, forward) in wanted {
                    if let Some(l) = listening.get(&addr) {
                        l.forward.store(Arc::new(forward));
                        continue;
                    }
                    match std::net::TcpListener::bind(addr).and_then(|l| {
                        l.set_nonblocking(true)?;
                        TcpListener::from_std(l)
                    }) {
                        Ok(listener) => {
                            failed.remove(&addr);
                            tracing::info!(%addr, "routing mesh: listening");
                            let forward = Arc::new(ArcSwap::from_pointee(forward));
                            let handle =
                                tokio::spawn(self.clone().serve(listener, forward.clone()));
                            listening.insert(addr, Listening { handle, forward });
                        }
                        Err(e) => {
                            let why = e.to_string();
                            if failed.get(&addr) != Some(&why) {
                                tracing::warn!(%addr, error = %why, "routing mesh: cannot listen (taken on this node?)");
                                failed.insert(addr, why);
                            }
                        }
                    }
                }
            }
            // Published ports (on the node's address) that cannot be served are reported.
            let report: std::collections::BTreeMap<u16, String> = failed
                .iter()
                .filter(|(a, _)| a.ip() == self.listen_ip)
                .map(|(a, w)| (a.port(), w.clone()))
                .collect();
            if let Ok(mut e) = self.port_errors.lock()
                && *e != report
            {
                *e = report;
            }
            tokio::time::sleep(REFRESH).await;
        }
    }

    async fn fetch(
        &self,
        channels: &mut HashMap<String, Channel>,
    ) -> Option<crate::api::v1::RoutesResponse> {
        let managers = self.managers.lock().map(|m| m.clone()).unwrap_or_default();
        for addr in managers {
            let ch = match channels.get(&addr) {
                Some(c) => c.clone(),
                None => {
                    let Ok(c) = crate::net::channel(&addr, self.tls.clone()) else {
                        continue;
                    };
                    channels.insert(addr.clone(), c.clone());
                    c
                }
            };
            match DispatcherClient::new(ch).routes(Empty {}).await {
                Ok(r) => return Some(r.into_inner()),
                Err(e) => tracing::debug!(%addr, error = %e.message(), "routing table unavailable"),
            }
        }
        None
    }

    /// The addresses this node serves and where each forwards to: published ports on the
    /// node's address, and each named service's ports on its loopback address.
    fn wanted(
        &self,
        routes: &[Route],
        vips: &[crate::api::v1::ServiceVip],
    ) -> HashMap<SocketAddr, Forward> {
        let mut out = HashMap::new();
        for r in routes {
            if r.protocol != "tcp" {
                continue;
            }
            let (Ok(published), Ok(target)) = (u16::try_from(r.published), u16::try_from(r.target))
            else {
                continue;
            };
            let tasks: Vec<RouteTask> = if r.mode == "host" {
                r.tasks
                    .iter()
                    .filter(|t| t.node_id == self.node_id)
                    .cloned()
                    .collect()
            } else {
                r.tasks.clone()
            };
            if r.mode == "host" && tasks.is_empty() {
                continue;
            }
            out.insert(
                SocketAddr::new(self.listen_ip, published),
                Forward { target, tasks },
            );
        }
        for v in vips {
            let Ok(ip) = v.vip.parse::<IpAddr>() else {
                continue;
            };
            if !ip.is_loopback() {
                continue;
            }
            for port in &v.ports {
                let Ok(port) = u16::try_from(*port) else {
                    continue;
                };
                out.insert(
                    SocketAddr::new(ip, port),
                    Forward {
                        target: port,
                        tasks: v.tasks.clone(),
                    },
                );
            }
        }
        out
    }

    async fn serve(self: Arc<Self>, listener: TcpListener, forward: Arc<ArcSwap<Forward>>) {
        let next = Arc::new(AtomicUsize::new(0));
        loop {
            let Ok((conn, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = conn.set_nodelay(true);
            let mesh = self.clone();
            let forward = forward.load_full();
            let start = next.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                if let Err(e) = mesh.forward(conn, &forward, start).await {
                    tracing::debug!(%peer, error = %e, "routing mesh: connection not forwarded");
                }
            });
        }
    }

    /// Tries the tasks in turn from `start` until one takes the connection.
    async fn forward(&self, conn: TcpStream, f: &Forward, start: usize) -> Result<(), String> {
        let n = f.tasks.len();
        if n == 0 {
            return Err("no running task".into());
        }
        let mut last = String::new();
        for i in 0..n {
            let task = &f.tasks[(start + i) % n];
            if task.node_id == self.node_id {
                let Some(addr) = self.supervisor.endpoint(&task.task_id, f.target) else {
                    last = format!("task {} has no local endpoint", task.task_id);
                    continue;
                };
                match TcpStream::connect(addr).await {
                    Ok(mut up) => {
                        let mut conn = conn;
                        let _ = tokio::io::copy_bidirectional(&mut conn, &mut up).await;
                        return Ok(());
                    }
                    Err(e) => last = format!("task {}: {e}", task.task_id),
                }
            } else {
                match self.open_tunnel(task, f.target).await {
                    Ok((tx, inbound)) => {
                        pump(conn, tx, inbound).await;
                        return Ok(());
                    }
                    Err(e) => last = format!("node {}: {e}", task.node_id),
                }
            }
        }
        Err(last)
    }

    /// Opens a tunnel to `task` on its node: mTLS with this node's certificate, the peer
    /// checked to be that node.
    async fn open_tunnel(
        &self,
        task: &RouteTask,
        target: u16,
    ) -> Result<
        (
            tokio::sync::mpsc::Sender<TunnelFrame>,
            tonic::Streaming<TunnelFrame>,
        ),
        String,
    > {
        let key = format!("{}@{}", task.node_id, task.node_addr);
        let cached = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        let ch = match cached {
            Some(ch) => ch,
            None => {
                let tls = crate::net::node::client_config_for_node(
                    &self.identity,
                    &self.cluster_id,
                    &task.node_id,
                )
                .map_err(|e| e.to_string())?;
                let ch = crate::net::channel_with_timeout(&task.node_addr, tls, None)
                    .map_err(|e| e.to_string())?;
                self.peers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key.clone(), ch.clone());
                ch
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tx.send(TunnelFrame {
            task_id: task.task_id.clone(),
            target_port: u32::from(target),
            data: Vec::new(),
        })
        .await
        .map_err(|e| e.to_string())?;
        let resp = match AgentClient::new(ch)
            .tunnel(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
        {
            Ok(r) => r,
            Err(s) => {
                // A broken connection is made again next time.
                self.peers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
                return Err(s.message().to_string());
            }
        };
        Ok((tx, resp.into_inner()))
    }
}

/// Reads a connection into frames for `tx` until either ends.
async fn to_frames<T: Send + 'static>(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    tx: tokio::sync::mpsc::Sender<T>,
    wrap: impl Fn(TunnelFrame) -> T,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let frame = TunnelFrame {
                    data: buf[..n].to_vec(),
                    ..Default::default()
                };
                if tx.send(wrap(frame)).await.is_err() {
                    break;
                }
            }
        }
    }
}

/// Writes a tunnel's frames to a connection until either ends, then closes its write side.
async fn from_frames(
    mut inbound: tonic::Streaming<TunnelFrame>,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
) {
    while let Ok(Some(f)) = inbound.message().await {
        if wr.write_all(&f.data).await.is_err() {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

/// Copies a client connection into a tunnel and back until either side ends.
async fn pump(
    conn: TcpStream,
    tx: tokio::sync::mpsc::Sender<TunnelFrame>,
    inbound: tonic::Streaming<TunnelFrame>,
) {
    let (rd, wr) = conn.into_split();
    tokio::join!(to_frames(rd, tx, |f| f), from_frames(inbound, wr));
}

/// The server side of a tunnel (on the task's node): connects to the local task and copies
/// frames to it and its bytes back.
pub async fn serve_tunnel(
    supervisor: &Supervisor,
    peer_node: &str,
    mut inbound: tonic::Streaming<TunnelFrame>,
) -> Result<tokio_stream::wrappers::ReceiverStream<Result<TunnelFrame, tonic::Status>>, tonic::Status>
{
    let first = inbound
        .message()
        .await?
        .ok_or_else(|| tonic::Status::invalid_argument("an empty tunnel"))?;
    let target = u16::try_from(first.target_port)
        .map_err(|_| tonic::Status::invalid_argument("the target port is not a port"))?;
    let addr = supervisor.endpoint(&first.task_id, target).ok_or_else(|| {
        tonic::Status::not_found(format!(
            "task {} does not run on this node or does not listen on port {target}",
            first.task_id.chars().take(64).collect::<String>()
        ))
    })?;
    let conn = TcpStream::connect(addr)
        .await
        .map_err(|e| tonic::Status::unavailable(format!("the task does not answer: {e}")))?;
    tracing::info!(peer = %peer_node, task = %first.task_id, target, "routing mesh: tunnel from another node over mTLS");
    let (rd, mut wr) = conn.into_split();
    if !first.data.is_empty() {
        let _ = wr.write_all(&first.data).await;
    }
    tokio::spawn(from_frames(inbound, wr));
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(to_frames(rd, tx, Ok));
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}
