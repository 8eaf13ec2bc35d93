//! The routing mesh: every node listens on each service's published (ingress) ports, TCP and
//! UDP, and forwards each TCP connection, or each UDP flow, to a running task of the service,
//! in turn. A task on this node is reached directly, the two TCP connections spliced in the
//! kernel ([`crate::net::splice`]: the bytes never pass through the daemon); a task on another
//! node through a `Tunnel` stream of that node's Agent service, inside the mutually
//! authenticated TLS connection between the two nodes (the remote node's certificate is checked
//! to be that node's): bytes between nodes are never in plaintext. The node keeps one such
//! connection per peer ([`crate::net::tunnel_channel`]), so a tunnel is an HTTP/2 stream and
//! costs no handshake; its windows are sized for bulk transfers. A port published with
//! `identity=required` is not spliced: this node terminates the caller's TLS for the task
//! ([`super::mesh_identity`]). Host-mode ports are listened on only by nodes running a task,
//! for their own.
//!
//! ```text
//!  client ─tcp/udp─► node A :4000 ──(task on A)──► splice ─► 127.0.0.1:PORT / container:80
//!                              └──(task on B)──► mTLS Agent.Tunnel ─► node B ─► task
//! ```
//!
//! A UDP *flow* is the datagrams of one client address: its first datagram picks the task, its
//! later ones go to the same task, and the task's replies go back to the client from the
//! published port. Between nodes each flow is a tunnel of its own, one datagram a frame. A
//! flow without a datagram either way for [`UDP_IDLE`] is forgotten, and a published port keeps
//! at most [`UDP_FLOWS`] flows: datagrams that would start more are dropped, so a flood of
//! source addresses cannot exhaust memory (`Flows` is that bookkeeping, without I/O), and
//! its queues hold at most `UDP_BUDGET` bytes.
//!
//! Services on networks are also served by name: at their loopback address (127.77.X.Y) for
//! exec tasks and at their container-side address (198.18.X.Y, see [`super::vip`]) for this
//! node's containers on their networks, the peer's address checked against them.
//!
//! The routing table comes from any manager (`Dispatcher.Routes`) every second.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::ManagerList;
use super::endpoints::Endpoints;
use super::mesh_identity::{Denials, Identities};
use crate::api::v1::{Route, RouteTask, TunnelFrame};
use crate::net::identity::LiveIdentity;

/// How often the routing table is fetched.
const REFRESH: Duration = Duration::from_secs(1);
/// The most bytes of a TCP stream one tunnel frame carries: big enough that a bulk transfer
/// costs few frames, well under the Agent service's message limits
/// ([`crate::net::serve::AGENT_REQUEST_BYTES`]).
const CHUNK: usize = 256 * 1024;
/// Frames queued per tunnel and direction on their way into its HTTP/2 stream. With [`CHUNK`]
/// and the HTTP/2 windows ([`crate::net::serve::STREAM_WINDOW`]), this bounds what one TCP
/// tunnel holds in memory: at most `TUNNEL_QUEUE` × `CHUNK` (1 MiB) queued each way, plus a
/// stream window of received bytes each way.
const TUNNEL_QUEUE: usize = 4;
/// Frames queued per UDP tunnel and direction (each a datagram, at most [`MAX_DATAGRAM`]);
/// beyond, datagrams are dropped.
const UDP_TUNNEL_QUEUE: usize = 16;
/// How long a UDP flow lasts without a datagram either way. Long enough for request/answer
/// protocols (DNS, syslog, game and VoIP keep-alives every few seconds); a client silent for
/// longer starts a new flow, which may reach another task.
pub const UDP_IDLE: Duration = Duration::from_secs(30);
/// The most UDP flows one published port keeps; datagrams that would start another are dropped
/// (with a debug log) until some flow idles out.
pub const UDP_FLOWS: usize = 4096;
/// The largest datagram relayed: bigger tunnel frames are dropped.
const MAX_DATAGRAM: usize = 65_535;
/// Datagrams queued per flow and direction before new ones are dropped, as a full network
/// queue would: a relay never waits for a slow side.
const UDP_QUEUE: usize = 8;
/// The bytes of datagrams one published UDP port holds on their way to tasks (in its flows'
/// queues and tunnel queues) at once; datagrams beyond are dropped, as a full network queue
/// would. With the flow limit, this bounds what a flood (spoofed sources, large datagrams)
/// costs in memory.
const UDP_BUDGET: usize = 4 << 20;
/// How often a UDP listener forgets idle and ended flows.
const UDP_SWEEP: Duration = Duration::from_secs(1);

/// One node's mesh.
pub struct Mesh {
    /// This node's ID.
    pub node_id: String,
    /// The cluster ID (peers' certificates must carry it).
    pub cluster_id: String,
    /// The address published ports are listened on (the node's listen address).
    pub listen_ip: IpAddr,
    /// Where the node's tasks are reached, and the routing table it keeps.
    pub endpoints: Arc<Endpoints>,
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
    /// This node's tasks' SVIDs and the trust bundle, to answer for a task on a port
    /// published with `identity=required` ([`super::mesh_identity`]).
    pub identities: Identities,
    /// Where refused callers are reported.
    pub denials: Denials,
}

/// The transport of a published port or a tunnel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// A route's or a tunnel's protocol; empty is TCP (tunnels from nodes that predate UDP).
    fn parse(name: &str) -> Option<Proto> {
        match name {
            "" | "tcp" => Some(Proto::Tcp),
            "udp" => Some(Proto::Udp),
            _ => None,
        }
    }

    /// Frames queued per tunnel and direction.
    fn tunnel_queue(self) -> usize {
        match self {
            Proto::Tcp => TUNNEL_QUEUE,
            Proto::Udp => UDP_TUNNEL_QUEUE,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl std::fmt::Display for Proto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a node listens on: a TCP and a UDP port may share a number.
type ListenKey = (Proto, SocketAddr);

/// What a listener forwards to: the route's target port and the tasks to try, in turn.
struct Forward {
    target: u16,
    tasks: Vec<RouteTask>,
    /// The service's ID (for refusal reports).
    service_id: String,
    /// Callers must authenticate (`identity=required`): each task's `allowed_callers`.
    identity: bool,
    /// For a service's container-side address: the networks whose containers may use it
    /// (the peer's address must be one of this node's containers on one of them).
    only_from: Option<Vec<String>>,
}

struct Listening {
    handle: JoinHandle<()>,
    forward: Arc<ArcSwap<Forward>>,
}

impl Mesh {
    /// Keeps a listener per published port this node should serve, TCP and UDP, following the
    /// routing table. A port another process holds is reported in the log and retried.
    pub async fn run(self: Arc<Self>) {
        let mut listening: HashMap<ListenKey, Listening> = HashMap::new();
        let mut failed: HashMap<ListenKey, String> = HashMap::new();
        let mut channels: HashMap<String, Channel> = HashMap::new();
        // Only a node that runs containers takes their service addresses as its own.
        let containers = self.endpoints.runs_containers()
            && match super::vip::ensure_local_route().await {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(error = %e, "containers cannot reach services by name on this node");
                    false
                }
            };
        let mut held = None;
        loop {
            if let Some(table) = self.fetch(&mut channels, &mut held).await {
                let wanted = wanted(
                    &self.node_id,
                    self.listen_ip,
                    &table.routes,
                    &table.vips,
                    containers,
                );
                self.endpoints.set_table(table.routes, table.vips);
                failed.retain(|key, _| wanted.contains_key(key));
                listening.retain(|(proto, addr), l| {
                    let keep = wanted.contains_key(&(*proto, *addr));
                    if !keep {
                        l.handle.abort();
                        tracing::info!(%addr, %proto, "routing mesh: no longer served here");
                    }
                    keep
                });
                for (key, forward) in wanted {
                    if let Some(l) = listening.get(&key) {
                        l.forward.store(Arc::new(forward));
                        continue;
                    }
                    let (proto, addr) = key;
                    let forward = Arc::new(ArcSwap::from_pointee(forward));
                    let started = match proto {
                        Proto::Tcp => bind_tcp(addr)
                            .map(|l| tokio::spawn(self.clone().serve(l, forward.clone()))),
                        Proto::Udp => bind_udp(addr)
                            .map(|s| tokio::spawn(self.clone().serve_udp(s, forward.clone()))),
                    };
                    match started {
                        Ok(handle) => {
                            failed.remove(&key);
                            tracing::info!(%addr, %proto, "routing mesh: listening");
                            listening.insert(key, Listening { handle, forward });
                        }
                        Err(e) => {
                            let why = e.to_string();
                            if failed.get(&key) != Some(&why) {
                                tracing::warn!(%addr, %proto, error = %why, "routing mesh: cannot listen (taken on this node?)");
                                failed.insert(key, why);
                            }
                        }
                    }
                }
            }
            let report = port_report(&failed, self.listen_ip);
            if let Ok(mut e) = self.port_errors.lock()
                && *e != report
            {
                *e = report;
            }
            tokio::time::sleep(REFRESH).await;
        }
    }

    /// Whether `peer` may use a listener: anyone for published ports and loopback addresses;
    /// for a container-side address, only a container on one of its networks.
    async fn may_use(&self, f: &Forward, peer: IpAddr) -> bool {
        match &f.only_from {
            None => true,
            Some(networks) => self
                .endpoints
                .container_networks(peer)
                .await
                .is_some_and(|theirs| theirs.iter().any(|n| networks.contains(n))),
        }
    }

    /// The routing table from the first manager that answers. `held` is the last table
    /// received: the manager is told its digest, and an answer that it is `unchanged` gives it
    /// back (a manager from before digests sends the whole table every time).
    async fn fetch(
        &self,
        channels: &mut HashMap<String, Channel>,
        held: &mut Option<crate::api::v1::RoutesResponse>,
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
            let digest = held.as_ref().map(|t| t.digest.clone()).unwrap_or_default();
            match crate::net::serve::dispatcher_client(ch)
                .routes(crate::api::v1::RoutesRequest { digest })
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    if r.unchanged
                        && let Some(t) = held.as_ref().filter(|t| t.digest == r.digest)
                    {
                        return Some(t.clone());
                    }
                    if r.unchanged {
                        // Not the table held (a manager's mistake): ask again for all of it.
                        *held = None;
                        continue;
                    }
                    *held = Some(r.clone());
                    return Some(r);
                }
                Err(e) => tracing::debug!(%addr, error = %e.message(), "routing table unavailable"),
            }
        }
        None
    }

    async fn serve(self: Arc<Self>, listener: TcpListener, forward: Arc<ArcSwap<Forward>>) {
        let mut next = 0usize;
        loop {
            let Ok((conn, peer)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let _ = conn.set_nodelay(true);
            let mesh = self.clone();
            let forward = forward.load_full();
            let start = next;
            next = next.wrapping_add(1);
            tokio::spawn(async move {
                let _open = crate::metrics::metrics().mesh_connection();
                if !mesh.may_use(&forward, peer.ip()).await {
                    tracing::debug!(%peer, "routing mesh: refused a peer that is not a container of the service's networks");
                    return;
                }
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
                let Some(addr) = self.endpoints.endpoint(&task.task_id, f.target) else {
                    last = format!("task {} has no local endpoint", task.task_id);
                    continue;
                };
                if f.identity {
                    // The caller's TLS is for this task's SVID: no other task can take it.
                    return self.answer_for(conn, addr, f, task).await;
                }
                match TcpStream::connect(addr).await {
                    Ok(up) => {
                        relay_local(conn, up).await;
                        return Ok(());
                    }
                    Err(e) => last = format!("task {}: {e}", task.task_id),
                }
            } else {
                match self.open_tunnel(task, f.target, Proto::Tcp).await {
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

    /// Terminates the caller's TLS for `task` of this node (`identity=required`) and relays the
    /// plaintext to the task at `addr`; a refused caller is disconnected and reported.
    async fn answer_for(
        &self,
        conn: TcpStream,
        addr: SocketAddr,
        f: &Forward,
        task: &RouteTask,
    ) -> Result<(), String> {
        relay_authenticated(
            conn,
            addr,
            &self.identities,
            &self.denials,
            &f.service_id,
            &task.task_id,
            &task.allowed_callers,
            f.target,
        )
        .await
    }

    /// Serves a published UDP port: each client address is a flow, relayed by a task of its
    /// own ([`Mesh::udp_flow`]) that answers through this loop, which owns the socket and the
    /// flow table; dropping it (the port no longer served) ends every flow.
    async fn serve_udp(self: Arc<Self>, socket: UdpSocket, forward: Arc<ArcSwap<Forward>>) {
        let mut flows: Flows<UdpFlow> = Flows::new(UDP_FLOWS, UDP_IDLE);
        let (replies_tx, mut replies) = mpsc::channel::<(SocketAddr, Vec<u8>)>(256);
        let mut sweep = tokio::time::interval(UDP_SWEEP);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next = 0usize;
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let budget = Arc::new(AtomicUsize::new(0));
        loop {
            tokio::select! {
                got = socket.recv_from(&mut buf) => {
                    // Not expected on an unconnected socket: a pause rather than a spin.
                    let Ok((n, peer)) = got else {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    };
                    let Some(charge) = Charge::take(&budget, n) else {
                        tracing::debug!(%peer, budget = UDP_BUDGET, "routing mesh: UDP queues full, datagram dropped");
                        continue;
                    };
                    let mut datagram = (buf[..n].to_vec(), charge);
                    let now = Instant::now();
                    if let Some(flow) = flows.touch(peer, now) {
                        match flow.tx.try_send(datagram) {
                            Ok(()) | Err(TrySendError::Full(_)) => continue,
                            Err(TrySendError::Closed(d)) => {
                                // Its task gave up (or went): the datagram starts a new flow.
                                flows.remove(peer);
                                datagram = d;
                            }
                        }
                    }
                    let f = forward.load_full();
                    if f.tasks.is_empty() || !self.may_use(&f, peer.ip()).await {
                        continue;
                    }
                    if !flows.has_room() {
                        tracing::debug!(%peer, limit = UDP_FLOWS, "routing mesh: too many UDP flows, datagram dropped");
                        continue;
                    }
                    let (tx, rx) = mpsc::channel(UDP_QUEUE);
                    // The queue is empty: this cannot fail.
                    let _ = tx.try_send(datagram);
                    let start = next;
                    next = next.wrapping_add(1);
                    let task = tokio::spawn(self.clone().udp_flow(
                        peer,
                        forward.load_full(),
                        start,
                        rx,
                        replies_tx.clone(),
                    ));
                    flows.insert(peer, UdpFlow { tx, task: task.abort_handle() }, now);
                }
                Some((peer, datagram)) = replies.recv() => {
                    flows.touch(peer, Instant::now());
                    let _ = socket.send_to(&datagram, peer).await;
                }
                _ = sweep.tick() => {
                    flows.sweep(Instant::now(), |f| !f.tx.is_closed());
                }
            }
        }
    }

    /// One UDP flow: the first task, in turn from `start`, that takes it gets its datagrams,
    /// and the task's replies go to `replies` for `peer`. Ends when the task's side does, or
    /// when the listener drops the flow.
    async fn udp_flow(
        self: Arc<Self>,
        peer: SocketAddr,
        f: Arc<Forward>,
        start: usize,
        rx: mpsc::Receiver<Datagram>,
        replies: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    ) {
        let n = f.tasks.len();
        let mut last = String::from("no running task");
        for i in 0..n {
            let task = &f.tasks[(start + i) % n];
            if task.node_id == self.node_id {
                let Some(addr) = self.endpoints.endpoint(&task.task_id, f.target) else {
                    last = format!("task {} has no local endpoint", task.task_id);
                    continue;
                };
                match connect_udp(addr).await {
                    Ok(up) => {
                        let out = move |d: Vec<u8>| match replies.try_send((peer, d)) {
                            Err(TrySendError::Closed(_)) => Err(()),
                            _ => Ok(()),
                        };
                        // A datagram gives its share of the budget back as it is sent.
                        let input = tokio_stream::StreamExt::map(
                            tokio_stream::wrappers::ReceiverStream::new(rx),
                            |(d, _charge): Datagram| d,
                        );
                        return relay_udp(up, input, out).await;
                    }
                    Err(e) => last = format!("task {}: {e}", task.task_id),
                }
            } else {
                match self.open_tunnel(task, f.target, Proto::Udp).await {
                    Ok((tx, inbound)) => {
                        return udp_over_tunnel(peer, rx, replies, tx, inbound).await;
                    }
                    Err(e) => last = format!("node {}: {e}", task.node_id),
                }
            }
        }
        tracing::debug!(%peer, error = %last, "routing mesh: UDP flow not forwarded");
    }

    /// Opens a tunnel to `task` on its node: mTLS with this node's certificate, the peer
    /// checked to be that node.
    async fn open_tunnel(
        &self,
        task: &RouteTask,
        target: u16,
        proto: Proto,
    ) -> Result<
        (
            tokio::sync::mpsc::Sender<Outbound>,
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
                let ch = crate::net::tunnel_channel(&task.node_addr, tls, &task.node_id)
                    .map_err(|e| e.to_string())?;
                self.peers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(key.clone(), ch.clone());
                ch
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(proto.tunnel_queue());
        let first = TunnelFrame {
            task_id: task.task_id.clone(),
            target_port: u32::from(target),
            data: bytes::Bytes::new(),
            protocol: proto.as_str().into(),
        };
        tx.send((first, None)).await.map_err(|e| e.to_string())?;
        let resp = match crate::net::serve::agent_client(ch)
            .tunnel(tokio_stream::StreamExt::map(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                |(frame, _charge): Outbound| frame,
            ))
            .await
        {
            Ok(r) => r,
            Err(s) => {
                // A connection that failed is made again next time; a refusal or a task gone
                // (the peer answered) leaves the connection to the next tunnel.
                if s.code() == tonic::Code::Unavailable {
                    self.peers
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&key);
                }
                return Err(s.message().to_string());
            }
        };
        Ok((tx, resp.into_inner()))
    }
}

/// The addresses this node serves and where each forwards to: published ports on the node's
/// address, and each named service's ports (TCP and UDP) on its loopback address and, when
/// `containers` (the node takes 198.18.0.0/16 as its own), on its container-side address.
fn wanted(
    node_id: &str,
    listen_ip: IpAddr,
    routes: &[Route],
    vips: &[crate::api::v1::ServiceVip],
    containers: bool,
) -> HashMap<ListenKey, Forward> {
    let mut out = HashMap::new();
    // A target published with identity=required is guarded wherever the mesh reaches it,
    // also by name (the spec refuses publishing it otherwise as well).
    let guarded: HashMap<(&str, u32), &Route> = routes
        .iter()
        .filter(|r| r.identity_required)
        .map(|r| ((r.service_id.as_str(), r.target), r))
        .collect();
    for r in routes {
        let Some(proto) = Proto::parse(&r.protocol) else {
            continue;
        };
        let (Ok(published), Ok(target)) = (u16::try_from(r.published), u16::try_from(r.target))
        else {
            continue;
        };
        let tasks: Vec<RouteTask> = if r.mode == "host" {
            r.tasks
                .iter()
                .filter(|t| t.node_id == node_id)
                .cloned()
                .collect()
        } else {
            r.tasks.clone()
        };
        if r.mode == "host" && tasks.is_empty() {
            continue;
        }
        out.insert(
            (proto, SocketAddr::new(listen_ip, published)),
            Forward {
                target,
                tasks,
                service_id: r.service_id.clone(),
                identity: r.identity_required,
                only_from: None,
            },
        );
    }
    for v in vips {
        let Ok(ip) = v.vip.parse::<IpAddr>() else {
            continue;
        };
        if !ip.is_loopback() {
            continue;
        }
        let for_containers = super::vip::container_vip(ip).filter(|_| containers);
        for (proto, port) in vip_ports(v) {
            let guard = guarded
                .get(&(v.service_id.as_str(), u32::from(port)))
                .filter(|_| proto == Proto::Tcp);
            // A guarded port's tasks carry their allowed callers in the route.
            let tasks = guard.map_or_else(|| v.tasks.clone(), |r| r.tasks.clone());
            out.insert(
                (proto, SocketAddr::new(ip, port)),
                Forward {
                    target: port,
                    tasks: tasks.clone(),
                    service_id: v.service_id.clone(),
                    identity: guard.is_some(),
                    only_from: None,
                },
            );
            if let Some(cip) = for_containers {
                out.insert(
                    (proto, SocketAddr::new(cip, port)),
                    Forward {
                        target: port,
                        tasks,
                        service_id: v.service_id.clone(),
                        identity: guard.is_some(),
                        only_from: Some(v.networks.clone()),
                    },
                );
            }
        }
    }
    out
}

/// A service's ports by name: TCP and UDP.
fn vip_ports(v: &crate::api::v1::ServiceVip) -> impl Iterator<Item = (Proto, u16)> + '_ {
    let tcp = v.ports.iter().map(|p| (Proto::Tcp, *p));
    let udp = v.udp_ports.iter().map(|p| (Proto::Udp, *p));
    tcp.chain(udp)
        .filter_map(|(proto, p)| Some((proto, u16::try_from(p).ok()?)))
}

/// What the heartbeats report: each published port on the node's address that cannot be
/// served, and why; a UDP port's reason says so (the report is by port number, which a TCP
/// and a UDP port may share).
fn port_report(failed: &HashMap<ListenKey, String>, listen_ip: IpAddr) -> BTreeMap<u16, String> {
    let mut mine: Vec<(u16, Proto, &String)> = failed
        .iter()
        .filter(|((_, a), _)| a.ip() == listen_ip)
        .map(|((p, a), why)| (a.port(), *p, why))
        .collect();
    mine.sort();
    let mut out: BTreeMap<u16, String> = BTreeMap::new();
    for (port, proto, why) in mine {
        let why = match proto {
            Proto::Tcp => why.clone(),
            Proto::Udp => format!("udp: {why}"),
        };
        out.entry(port)
            .and_modify(|w| {
                w.push_str("; ");
                w.push_str(&why);
            })
            .or_insert(why);
    }
    out
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let l = std::net::TcpListener::bind(addr)?;
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = std::net::UdpSocket::bind(addr)?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

/// A UDP socket of its own, connected to a task's endpoint: the task's replies to it are the
/// flow's.
async fn connect_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let any: IpAddr = if addr.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let sock = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
    sock.connect(addr).await?;
    Ok(sock)
}

/// Relays datagrams between `input` and a socket connected to a task, the task's datagrams to
/// `out`, until `input` ends, `out` refuses (its receiver is gone), or [`UDP_IDLE`] passes
/// without a datagram either way. Datagrams larger than [`MAX_DATAGRAM`] are dropped.
async fn relay_udp<S, D>(sock: UdpSocket, input: S, out: impl Fn(Vec<u8>) -> Result<(), ()>)
where
    S: tokio_stream::Stream<Item = D>,
    D: AsRef<[u8]>,
{
    use tokio_stream::StreamExt as _;
    tokio::pin!(input);
    let idle = tokio::time::sleep(UDP_IDLE);
    tokio::pin!(idle);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            d = input.next() => {
                let Some(d) = d else { break };
                let d = d.as_ref();
                if d.len() <= MAX_DATAGRAM {
                    // A send error (the task not listening, yet or any more) loses the datagram,
                    // as UDP may.
                    let _ = sock.send(d).await;
                }
            }
            got = sock.recv(&mut buf) => {
                // An error is the ICMP answer to an earlier send: nothing to relay.
                let Ok(n) = got else { continue };
                if out(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
            () = &mut idle => break,
        }
        idle.as_mut().reset(tokio::time::Instant::now() + UDP_IDLE);
    }
}

/// A UDP flow to a task on another node: each datagram a frame of the flow's tunnel, each frame
/// back a reply for `peer`. Ends when either side does.
async fn udp_over_tunnel(
    peer: SocketAddr,
    mut rx: mpsc::Receiver<Datagram>,
    replies: mpsc::Sender<(SocketAddr, Vec<u8>)>,
    tx: mpsc::Sender<Outbound>,
    mut inbound: tonic::Streaming<TunnelFrame>,
) {
    loop {
        tokio::select! {
            d = rx.recv() => {
                let Some((data, charge)) = d else { break };
                let frame = TunnelFrame { data: data.into(), ..Default::default() };
                // The share of the budget goes with the frame until the tunnel takes it.
                if let Err(TrySendError::Closed(_)) = tx.try_send((frame, Some(charge))) {
                    break;
                }
            }
            m = inbound.message() => match m {
                Ok(Some(f)) => {
                    if f.data.len() <= MAX_DATAGRAM
                        && let Err(TrySendError::Closed(_)) = replies.try_send((peer, f.data.into()))
                    {
                        break;
                    }
                }
                Ok(None) | Err(_) => break,
            },
        }
    }
}

/// A share of a published UDP port's [`UDP_BUDGET`], given back when dropped.
struct Charge {
    budget: Arc<AtomicUsize>,
    bytes: usize,
}

impl Charge {
    /// `bytes` of the budget, if that many are left.
    fn take(budget: &Arc<AtomicUsize>, bytes: usize) -> Option<Charge> {
        budget
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                held.checked_add(bytes).filter(|t| *t <= UDP_BUDGET)
            })
            .ok()?;
        Some(Charge {
            budget: budget.clone(),
            bytes,
        })
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// A datagram on its way to a task, holding its share of the port's budget.
type Datagram = (Vec<u8>, Charge);

/// A frame on its way into a tunnel; a UDP datagram's holds its share of the budget until the
/// tunnel's stream takes it.
type Outbound = (TunnelFrame, Option<Charge>);

/// A UDP flow as the listener keeps it: dropping it ends the flow's task.
struct UdpFlow {
    tx: mpsc::Sender<Datagram>,
    task: tokio::task::AbortHandle,
}

impl Drop for UdpFlow {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The UDP flows of one published port, by client address: when each last saw a datagram
/// either way, so idle ones are forgotten, and how many there may be. No I/O: the listener
/// passes the time in.
struct Flows<T> {
    map: HashMap<SocketAddr, (Instant, T)>,
    limit: usize,
    idle: Duration,
}

impl<T> Flows<T> {
    fn new(limit: usize, idle: Duration) -> Flows<T> {
        Flows {
            map: HashMap::new(),
            limit,
            idle,
        }
    }

    /// The live flow of `peer`, its traffic counted at `now`. A flow idle for too long is
    /// forgotten here, so its client's next datagram starts a new one.
    fn touch(&mut self, peer: SocketAddr, now: Instant) -> Option<&T> {
        let idle = self.idle;
        if self
            .map
            .get(&peer)
            .is_some_and(|(last, _)| now.saturating_duration_since(*last) >= idle)
        {
            self.map.remove(&peer);
            return None;
        }
        let (last, flow) = self.map.get_mut(&peer)?;
        *last = now;
        Some(flow)
    }

    /// Whether another flow may start.
    fn has_room(&self) -> bool {
        self.map.len() < self.limit
    }

    /// Keeps `flow` for `peer` (replacing any it had), last seen at `now`.
    fn insert(&mut self, peer: SocketAddr, flow: T, now: Instant) {
        self.map.insert(peer, (now, flow));
    }

    fn remove(&mut self, peer: SocketAddr) -> Option<T> {
        self.map.remove(&peer).map(|(_, f)| f)
    }

    /// Forgets the flows idle at `now` and those `live` says have ended.
    fn sweep(&mut self, now: Instant, live: impl Fn(&T) -> bool) {
        let idle = self.idle;
        self.map
            .retain(|_, (last, f)| now.saturating_duration_since(*last) < idle && live(f));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Reads a connection into frames for `tx` until either ends.
async fn to_frames<T: Send + 'static>(
    mut rd: impl tokio::io::AsyncRead + Unpin,
    tx: tokio::sync::mpsc::Sender<T>,
    wrap: impl Fn(TunnelFrame) -> T,
) -> u64 {
    use bytes::BufMut as _;
    let mut buf = bytes::BytesMut::new();
    let mut total = 0u64;
    loop {
        // Read straight into the frame's own buffer: no copy on the way to the stream.
        buf.reserve(CHUNK);
        match rd.read_buf(&mut (&mut buf).limit(CHUNK)).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n as u64;
                let frame = TunnelFrame {
                    data: buf.split().freeze(),
                    ..Default::default()
                };
                if tx.send(wrap(frame)).await.is_err() {
                    break;
                }
            }
        }
    }
    total
}

/// Writes a tunnel's frames to a connection until either ends, then closes its write side.
async fn from_frames(
    mut inbound: tonic::Streaming<TunnelFrame>,
    mut wr: impl tokio::io::AsyncWrite + Unpin,
) -> u64 {
    let mut total = 0u64;
    while let Ok(Some(f)) = inbound.message().await {
        if wr.write_all(&f.data).await.is_err() {
            break;
        }
        total += f.data.len() as u64;
    }
    let _ = wr.shutdown().await;
    total
}

/// Copies a client connection into a tunnel and back until either side ends.
async fn pump(
    conn: TcpStream,
    tx: tokio::sync::mpsc::Sender<Outbound>,
    inbound: tonic::Streaming<TunnelFrame>,
) {
    let (rd, wr) = conn.into_split();
    let (sent, received) = tokio::join!(to_frames(rd, tx, |f| (f, None)), from_frames(inbound, wr));
    count_bytes(sent, received);
}

/// Relays a client's connection `conn` and a connection `up` to a task of this node until both
/// directions end: spliced in the kernel, or, when no pipe can be made (the daemon out of file
/// descriptors), copied through the daemon as before. What it carried is counted either way.
async fn relay_local(mut conn: TcpStream, mut up: TcpStream) {
    // As the client's side: the task's small writes go out at once.
    let _ = up.set_nodelay(true);
    match crate::net::splice::Pipes::new() {
        Ok(pipes) => {
            let r = crate::net::splice::splice_bidirectional(&conn, &up, pipes).await;
            count_bytes(r.a_to_b, r.b_to_a);
            crate::metrics::metrics().mesh_spliced(r.a_to_b + r.b_to_a);
        }
        Err(e) => {
            tracing::debug!(error = %e, "routing mesh: connection copied instead of spliced");
            if let Ok((sent, received)) = tokio::io::copy_bidirectional(&mut conn, &mut up).await {
                count_bytes(sent, received);
            }
        }
    }
}

/// Counts what a routing-mesh connection carried: `sent` from the client, `received` to it.
fn count_bytes(sent: u64, received: u64) {
    let m = crate::metrics::metrics();
    m.mesh_bytes(crate::metrics::Direction::In, sent);
    m.mesh_bytes(crate::metrics::Direction::Out, received);
}

/// The server side of a tunnel (on the task's node): connects to the local task and copies
/// frames to it and its bytes back; for UDP, each frame a datagram, until the stream ends or
/// [`UDP_IDLE`] passes without one.
pub async fn serve_tunnel(
    endpoints: &Endpoints,
    guard: (&Identities, &Denials),
    peer_node: &str,
    mut inbound: tonic::Streaming<TunnelFrame>,
) -> Result<tokio_stream::wrappers::ReceiverStream<Result<TunnelFrame, tonic::Status>>, tonic::Status>
{
    let first = inbound
        .message()
        .await?
        .ok_or_else(|| tonic::Status::invalid_argument("an empty tunnel"))?;
    let proto = tunnel_protocol(&first.protocol)?;
    let target = u16::try_from(first.target_port)
        .map_err(|_| tonic::Status::invalid_argument("the target port is not a port"))?;
    let not_here = || {
        tonic::Status::not_found(format!(
            "task {} does not run on this node or does not listen on port {target}",
            crate::util::prefix(&first.task_id, 64)
        ))
    };
    let addr = endpoints
        .endpoint(&first.task_id, target)
        .ok_or_else(not_here)?;
    let (service_id, networks) = endpoints
        .task_service(&first.task_id)
        .ok_or_else(not_here)?;
    if let Some(why) =
        tunnel_access(endpoints, peer_node, &service_id, &networks, target, proto).await
    {
        tracing::warn!(peer = %peer_node, task_id = %crate::util::prefix(&first.task_id, 64), target_port = target, protocol = %proto, reason = %why, "routing mesh: refused a routing-mesh tunnel");
        return Err(tonic::Status::permission_denied(format!(
            "permission denied: {why}"
        )));
    }
    let (tx, rx) = mpsc::channel(proto.tunnel_queue());
    let allowed = match proto {
        Proto::Tcp => guarded_callers(endpoints, &service_id, &first.task_id, target).await,
        Proto::Udp => None,
    };
    if let Some(allowed) = allowed {
        // identity=required: this node answers for its task; the caller's TLS bytes are the
        // tunnel's frames.
        tracing::debug!(peer = %peer_node, task_id = %first.task_id, target_port = target, "routing mesh: tunnel from another node over mTLS, caller to authenticate");
        let (ours, theirs) = tokio::io::duplex(2 * CHUNK);
        let (rd, mut wr) = tokio::io::split(theirs);
        if !first.data.is_empty() {
            let _ = wr.write_all(&first.data).await;
        }
        tokio::spawn(from_frames(inbound, wr));
        tokio::spawn(to_frames(rd, tx, Ok));
        let (ids, denials) = (guard.0.clone(), guard.1.clone());
        let task_id = first.task_id.clone();
        tokio::spawn(async move {
            if let Err(e) = relay_authenticated(
                ours,
                addr,
                &ids,
                &denials,
                &service_id,
                &task_id,
                &allowed,
                target,
            )
            .await
            {
                tracing::debug!(task_id = %task_id, error = %e, "routing mesh: tunnel not relayed");
            }
        });
        return Ok(tokio_stream::wrappers::ReceiverStream::new(rx));
    }
    match proto {
        Proto::Tcp => {
            let conn = TcpStream::connect(addr).await.map_err(|e| {
                tonic::Status::unavailable(format!("the task does not answer: {e}"))
            })?;
            tracing::debug!(peer = %peer_node, task_id = %first.task_id, target_port = target, protocol = %proto, "routing mesh: tunnel from another node over mTLS");
            let (rd, mut wr) = conn.into_split();
            if !first.data.is_empty() {
                let _ = wr.write_all(&first.data).await;
            }
            tokio::spawn(from_frames(inbound, wr));
            tokio::spawn(to_frames(rd, tx, Ok));
        }
        Proto::Udp => {
            use tokio_stream::StreamExt as _;
            let sock = connect_udp(addr)
                .await
                .map_err(|e| tonic::Status::unavailable(format!("cannot reach the task: {e}")))?;
            tracing::debug!(peer = %peer_node, task_id = %first.task_id, target_port = target, protocol = %proto, "routing mesh: tunnel from another node over mTLS");
            // The first frame's data, if any, is the flow's first datagram.
            let first_datagram = (!first.data.is_empty()).then_some(first.data);
            let input = tokio_stream::iter(first_datagram)
                .chain(inbound.map_while(Result::ok).map(|f| f.data));
            let out = move |data: Vec<u8>| {
                let frame = TunnelFrame {
                    data: data.into(),
                    ..Default::default()
                };
                match tx.try_send(Ok(frame)) {
                    Err(TrySendError::Closed(_)) => Err(()),
                    _ => Ok(()),
                }
            };
            tokio::spawn(relay_udp(sock, input, out));
        }
    }
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// The callers allowed to reach task `task_id` of service `service_id` on port `target` when
/// this node's routing table says the port is published with `identity=required`; `None` when
/// it is not. A task the table does not list yet (it started a moment ago) is looked up again
/// once the table is refreshed; still missing, it admits no one.
async fn guarded_callers(
    endpoints: &Endpoints,
    service_id: &str,
    task_id: &str,
    target: u16,
) -> Option<Vec<String>> {
    let lookup = || {
        let (routes, _) = endpoints.table();
        callers_of(&routes, service_id, task_id, target)
    };
    match lookup()? {
        Some(found) => Some(found),
        None => {
            let _ = tokio::time::timeout(REFRESH * 3, endpoints.table_refreshed()).await;
            Some(lookup().flatten().unwrap_or_default())
        }
    }
}

/// Whether port `target` of service `service_id` is published with `identity=required` (the
/// outer `Option`) and, if so, the callers allowed at task `task_id` if the routes list it.
fn callers_of(
    routes: &[Route],
    service_id: &str,
    task_id: &str,
    target: u16,
) -> Option<Option<Vec<String>>> {
    let guarded: Vec<&Route> = routes
        .iter()
        .filter(|r| {
            r.service_id == service_id
                && r.target == u32::from(target)
                && r.identity_required
                && Proto::parse(&r.protocol) == Some(Proto::Tcp)
        })
        .collect();
    if guarded.is_empty() {
        return None;
    }
    Some(
        guarded
            .iter()
            .flat_map(|r| r.tasks.iter())
            .find(|t| t.task_id == task_id)
            .map(|t| t.allowed_callers.clone()),
    )
}

/// Answers for task `task_id` at `addr` on a connection of a caller (`io`: a client's TCP
/// connection, or a tunnel's bytes): TLS with the task's SVID, the caller checked
/// ([`super::mesh_identity::accept`]), then the plaintext relayed to the task. A refusal is
/// reported and closes the connection.
#[allow(clippy::too_many_arguments)]
async fn relay_authenticated<IO>(
    io: IO,
    addr: SocketAddr,
    ids: &Identities,
    denials: &Denials,
    service_id: &str,
    task_id: &str,
    allowed: &[String],
    target: u16,
) -> Result<(), String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut tls, caller) = match super::mesh_identity::accept(io, ids, task_id, allowed).await {
        Ok(ok) => ok,
        Err(refusal) => {
            denials.report(&refusal, service_id, task_id, target);
            return Ok(());
        }
    };
    let mut up = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("task {task_id}: {e}"))?;
    tracing::debug!(task_id = %task_id, caller = %caller, "routing mesh: authenticated caller");
    if let Ok((sent, received)) = tokio::io::copy_bidirectional(&mut tls, &mut up).await {
        count_bytes(sent, received);
    }
    let _ = tls.shutdown().await;
    Ok(())
}

/// Why node `caller` may not tunnel to port `target` (`proto`) of a task of service
/// `service_id` on `networks`, by the routing table (`routes`, `vips`), if it may not. The
/// mesh carries only what it serves: a port the service publishes on the ingress (every node
/// listens on it), or a port of a service on a network the caller serves, that is, a network
/// one of the caller's running tasks is attached to (its tasks reach the service by name).
fn tunnel_refusal(
    caller: &str,
    service_id: &str,
    networks: &[String],
    target: u16,
    proto: Proto,
    routes: &[Route],
    vips: &[crate::api::v1::ServiceVip],
) -> Option<String> {
    let published = routes.iter().any(|r| {
        r.service_id == service_id
            && r.mode != "host"
            && r.target == u32::from(target)
            && Proto::parse(&r.protocol) == Some(proto)
    });
    let shares_network = vips.iter().any(|v| {
        v.networks.iter().any(|n| networks.contains(n))
            && v.tasks.iter().any(|t| t.node_id == caller)
    });
    if published || shares_network {
        return None;
    }
    Some(format!(
        "node {} runs no task on a network of service {} and the service does not publish port {target}/{proto}",
        crate::util::prefix(caller, 64),
        crate::util::prefix(service_id, 64)
    ))
}

/// [`tunnel_refusal`] with this node's routing table; a refusal is decided again once the
/// table is next refreshed (within a few seconds), so a tunnel from a node whose task started
/// a moment ago is not refused for this node's older table.
async fn tunnel_access(
    endpoints: &Endpoints,
    caller: &str,
    service_id: &str,
    networks: &[String],
    target: u16,
    proto: Proto,
) -> Option<String> {
    let decide = || {
        let (routes, vips) = endpoints.table();
        tunnel_refusal(caller, service_id, networks, target, proto, &routes, &vips)
    };
    decide()?;
    let _ = tokio::time::timeout(REFRESH * 3, endpoints.table_refreshed()).await;
    decide()
}

/// A tunnel's first frame's protocol; anything else is the caller's mistake, named (cut short).
fn tunnel_protocol(name: &str) -> Result<Proto, tonic::Status> {
    Proto::parse(name).ok_or_else(|| {
        tonic::Status::invalid_argument(format!(
            "protocol {:?} is not tcp or udp",
            name.chars().take(64).collect::<String>()
        ))
    })
}

#[cfg(test)]
#[path = "mesh_tests.rs"]
mod tests;
