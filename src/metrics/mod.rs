//! The process's Prometheus metrics: one registry, the counters and histograms the code
//! updates where things happen, and the gauges computed from state at scrape time.
//!
//! ```text
//!  net::serve (RPC layer) ─┐ rpc(..), refused(..)
//!  store::sm (apply) ──────┤ raft_applied(..), snapshot(..)
//!  manager (propose) ──────┼─► Metrics (counters, histograms) ─┐
//!  dispatch (deliveries) ──┤                                   ├─► encode() ─► OpenMetrics text
//!  agent::mesh ────────────┘ mesh_*(..)                        │
//!  daemon: set_node_source / set_manager_source ─► NodeFacts, ManagerFacts (read per scrape)
//! ```
//!
//! The bottom of the building: it depends on nothing else of skep. Labels take values from
//! fixed sets only ([`Refusal`], [`Direction`], task states, and RPC methods the servers
//! route, capped by [`MAX_METHODS`]): never an ID or text a client chose. Nothing here holds a
//! secret value, a key or a token.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The most RPC method labels kept; calls to further methods are counted as `other`. The
/// servers route a fixed set far below it; this is the last bound on the label's values.
pub const MAX_METHODS: usize = 256;

/// The longest method label kept, in bytes.
const MAX_METHOD_LEN: usize = 96;

/// Why a call or a connection was refused (the `reason` label of `skep_refusals_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// A TLS handshake failed, timed out, or presented another cluster's certificate.
    TlsHandshake,
    /// The mTLS listener was full.
    ConnectionLimit,
    /// A source address held too many unidentified connections.
    RateLimited,
    /// The caller's node is revoked or left, or its certificate was replaced.
    Revoked,
    /// The caller's role may not make this call (a worker on a manager call, a demoted
    /// manager, an unknown node, no or the wrong kind of certificate).
    RoleDenied,
    /// An operator's RBAC policy refused the call.
    RbacDenied,
    /// A node asked for a secret, config or SVID it is not entitled to.
    NotEntitled,
}

impl Refusal {
    /// Every reason, in label order.
    pub const ALL: [Refusal; 7] = [
        Refusal::TlsHandshake,
        Refusal::ConnectionLimit,
        Refusal::RateLimited,
        Refusal::Revoked,
        Refusal::RoleDenied,
        Refusal::RbacDenied,
        Refusal::NotEntitled,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::TlsHandshake => "tls_handshake",
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::RateLimited => "rate_limited",
            Refusal::Revoked => "revoked",
            Refusal::RoleDenied => "role_denied",
            Refusal::RbacDenied => "rbac_denied",
            Refusal::NotEntitled => "not_entitled",
        }
    }
}

/// Which way bytes went through the routing mesh (the `direction` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the connecting client towards the task.
    In,
    /// From the task back to the client.
    Out,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// What every node reports about itself at scrape time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeFacts {
    /// Seconds until this node's certificate expires (negative once expired).
    pub cert_expiry_seconds: f64,
}

/// What a manager reports at scrape time, from its Raft metrics and replicated state.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ManagerFacts {
    /// The Raft term this manager is in.
    pub raft_term: u64,
    /// Whether this manager is the leader.
    pub is_leader: bool,
    /// Whether this manager knows a leader that a quorum confirmed lately.
    pub has_leader: bool,
    /// Raft voters in the membership.
    pub voters: u64,
    /// Voters this manager sees reachable (the leader included), as `node ls` shows them.
    pub reachable_voters: u64,
    /// Entries in the Raft log (after the last purge).
    pub log_entries: u64,
    /// The index of the last entry in the Raft log.
    pub last_log_index: u64,
    /// The index of the last entry applied to the state machine.
    pub applied_index: u64,
    /// Tasks by their observed state: every state, zeros included, in a fixed order.
    pub tasks_by_state: Vec<(&'static str, u64)>,
    /// Nodes and operators whose certificates are revoked.
    pub revoked: u64,
    /// Audit records kept in the chain.
    pub audit_records: u64,
    /// Whether the audit chain this manager holds verifies (hashes, links, checkpoints).
    pub audit_chain_verified: bool,
}

/// A source of facts, asked at each scrape (it may wait, e.g. for a quorum to confirm the
/// leader); `None` when it has nothing to say (a manager that stopped).
pub type Source<T> = Arc<dyn Fn() -> BoxFuture<Option<T>> + Send + Sync>;

/// What a [`Source`] returns.
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OriginLabels {
    origin: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The process's metrics (see the module documentation); [`metrics`] gives the one instance.
pub struct Metrics {
    registry: Registry,
    rpc_duration: HistogramFamily<MethodLabels>,
    methods: Mutex<BTreeSet<String>>,
    refusals: Family<ReasonLabels, Counter>,
    raft_commit: Histogram,
    raft_apply: Histogram,
    snapshots: Family<OriginLabels, Counter>,
    secret_deliveries: Counter,
    mesh_connections: Counter,
    mesh_active: Gauge,
    mesh_bytes: Family<DirectionLabels, Counter>,
    mesh_spliced: Counter,
    mesh_peer_connections: Counter,
    sources: Arc<Sources>,
    /// One scrape at a time: the facts a scrape gathered are the ones it encodes.
    scraping: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Latency buckets from 0.5 ms to about 16 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("skep");
        let rpc_duration: HistogramFamily<MethodLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "rpc_duration",
            "gRPC calls served, by method: time from the request to the response head",
            Unit::Seconds,
            rpc_duration.clone(),
        );
        let refusals = Family::<ReasonLabels, Counter>::default();
        for r in Refusal::ALL {
            // Every reason present from the start, so a rate() over it has a baseline.
            let _ = refusals.get_or_create(&ReasonLabels { reason: r.as_str() });
        }
        registry.register(
            "refusals",
            "Calls and connections refused, by reason",
            refusals.clone(),
        );
        let raft_commit = latency_histogram();
        registry.register_with_unit(
            "raft_commit_duration",
            "Proposals from this manager, from propose to committed and applied (forwarding to the leader included)",
            Unit::Seconds,
            raft_commit.clone(),
        );
        let raft_apply = latency_histogram();
        registry.register_with_unit(
            "raft_apply_duration",
            "Batches of committed Raft entries applied to this manager's state machine",
            Unit::Seconds,
            raft_apply.clone(),
        );
        let snapshots = Family::<OriginLabels, Counter>::default();
        for origin in ["built", "installed"] {
            let _ = snapshots.get_or_create(&OriginLabels { origin });
        }
        registry.register(
            "raft_snapshots",
            "Raft snapshots this manager built or installed from the leader",
            snapshots.clone(),
        );
        let secret_deliveries = Counter::default();
        registry.register(
            "secret_deliveries",
            "Secret values this manager sent to nodes, each after its secret.deliver audit record",
            secret_deliveries.clone(),
        );
        let mesh_connections = Counter::default();
        registry.register(
            "mesh_connections",
            "Connections the routing mesh accepted on published ports and service addresses",
            mesh_connections.clone(),
        );
        let mesh_active = Gauge::default();
        registry.register(
            "mesh_active_connections",
            "Routing-mesh connections open now",
            mesh_active.clone(),
        );
        let mesh_bytes = Family::<DirectionLabels, Counter>::default();
        for d in [Direction::In, Direction::Out] {
            let _ = mesh_bytes.get_or_create(&DirectionLabels {
                direction: d.as_str(),
            });
        }
        registry.register_with_unit(
            "mesh",
            "Bytes the routing mesh carried (in: client to task, out: task to client)",
            Unit::Bytes,
            mesh_bytes.clone(),
        );
        let mesh_spliced = Counter::default();
        registry.register_with_unit(
            "mesh_spliced",
            "Bytes the routing mesh moved between clients and this node's tasks in the kernel (splice), never copied through the daemon; also in skep_mesh_bytes_total",
            Unit::Bytes,
            mesh_spliced.clone(),
        );
        let mesh_peer_connections = Counter::default();
        registry.register(
            "mesh_peer_connections",
            "mTLS connections this node opened to other nodes for routing-mesh tunnels (one per peer while it lasts: tunnels are its HTTP/2 streams)",
            mesh_peer_connections.clone(),
        );
        let sources = Arc::new(Sources::default());
        registry.register_collector(Box::new(sources.clone()));
        Metrics {
            registry,
            rpc_duration,
            methods: Mutex::new(BTreeSet::new()),
            refusals,
            raft_commit,
            raft_apply,
            snapshots,
            secret_deliveries,
            mesh_connections,
            mesh_active,
            mesh_bytes,
            mesh_spliced,
            mesh_peer_connections,
            sources,
            scraping: tokio::sync::Mutex::new(()),
        }
    }

    /// Records a served gRPC call of `path` (`/package.Service/Method`) that took `took`.
    /// `routed` is false when no service answered it (an unknown path): it counts as
    /// `unknown`, so a client cannot mint labels.
    pub fn rpc(&self, path: &str, routed: bool, took: Duration) {
        let method = self.method_label(path, routed);
        self.rpc_duration
            .get_or_create(&MethodLabels { method })
            .observe(took.as_secs_f64());
    }

    fn method_label(&self, path: &str, routed: bool) -> String {
        let name = path.trim_start_matches('/');
        let plain = !name.is_empty()
            && name.len() <= MAX_METHOD_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'/');
        if !routed || !plain {
            return "unknown".into();
        }
        let mut known = lock(&self.methods);
        if known.contains(name) {
            return name.to_string();
        }
        if known.len() >= MAX_METHODS {
            return "other".into();
        }
        known.insert(name.to_string());
        name.to_string()
    }

    /// Counts a refusal.
    pub fn refused(&self, why: Refusal) {
        self.refusals
            .get_or_create(&ReasonLabels {
                reason: why.as_str(),
            })
            .inc();
    }

    /// Counts `n` refusals (a summary of connections refused at once).
    pub fn refused_n(&self, why: Refusal, n: u64) {
        if n > 0 {
            self.refusals
                .get_or_create(&ReasonLabels {
                    reason: why.as_str(),
                })
                .inc_by(n);
        }
    }

    /// Records a proposal committed (and applied) `took` after it was proposed.
    pub fn raft_committed(&self, took: Duration) {
        self.raft_commit.observe(took.as_secs_f64());
    }

    /// Records a batch of entries applied to the state machine in `took`.
    pub fn raft_applied(&self, took: Duration) {
        self.raft_apply.observe(took.as_secs_f64());
    }

    /// Counts a snapshot built here (`installed` false) or installed from the leader.
    pub fn snapshot(&self, installed: bool) {
        let origin = if installed { "installed" } else { "built" };
        self.snapshots.get_or_create(&OriginLabels { origin }).inc();
    }

    /// Counts `n` secret values sent to a node.
    pub fn secrets_delivered(&self, n: u64) {
        self.secret_deliveries.inc_by(n);
    }

    /// Counts a routing-mesh connection; it is active until the guard drops.
    pub fn mesh_connection(&self) -> MeshConnection {
        self.mesh_connections.inc();
        self.mesh_active.inc();
        MeshConnection(self.mesh_active.clone())
    }

    /// Counts bytes the routing mesh carried.
    pub fn mesh_bytes(&self, direction: Direction, n: u64) {
        if n > 0 {
            self.mesh_bytes
                .get_or_create(&DirectionLabels {
                    direction: direction.as_str(),
                })
                .inc_by(n);
        }
    }

    /// Counts bytes the routing mesh spliced in the kernel (also counted by
    /// [`Metrics::mesh_bytes`]).
    pub fn mesh_spliced(&self, n: u64) {
        self.mesh_spliced.inc_by(n);
    }

    /// Counts an mTLS connection opened to another node for tunnels.
    pub fn mesh_peer_connection(&self) {
        self.mesh_peer_connections.inc();
    }

    /// Sets (or clears) what every node reports about itself.
    pub fn set_node_source(&self, source: Option<Source<NodeFacts>>) {
        *lock(&self.sources.node_source) = source;
    }

    /// Sets (or clears, when the node stops being a manager) what a manager reports.
    pub fn set_manager_source(&self, source: Option<Source<ManagerFacts>>) {
        *lock(&self.sources.manager_source) = source;
    }

    /// Asks the sources for their facts, then encodes everything ([`Metrics::encode`]).
    pub async fn scrape(&self) -> String {
        let _one = self.scraping.lock().await;
        let node = lock(&self.sources.node_source).clone();
        let manager = lock(&self.sources.manager_source).clone();
        let node = match node {
            Some(f) => f().await,
            None => None,
        };
        let manager = match manager {
            Some(f) => f().await,
            None => None,
        };
        *lock(&self.sources.facts) = (node, manager);
        self.encode()
    }

    /// The whole exposition in the OpenMetrics text format, `# EOF` included, with the
    /// facts the last [`Metrics::scrape`] gathered.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            // Writing to a String does not fail; a collector could, and says so in the text.
            out.push_str(&format!("# encoding failed: {e}\n# EOF\n"));
        }
        out
    }
}

/// An open routing-mesh connection (see [`Metrics::mesh_connection`]).
#[derive(Debug)]
pub struct MeshConnection(Gauge);

impl Drop for MeshConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The gauges read from the node and manager at scrape time.
#[derive(Default)]
struct Sources {
    node_source: Mutex<Option<Source<NodeFacts>>>,
    manager_source: Mutex<Option<Source<ManagerFacts>>>,
    /// What the sources said at the last scrape.
    facts: Mutex<(Option<NodeFacts>, Option<ManagerFacts>)>,
}

impl fmt::Debug for Sources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sources").finish_non_exhaustive()
    }
}

fn gauge<V>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: V,
) -> Result<(), fmt::Error>
where
    ConstGauge<V>: EncodeMetric,
{
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?)
}

impl Collector for Sources {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let (node, manager) = lock(&self.facts).clone();
        if let Some(n) = node {
            gauge(
                &mut encoder,
                "node_certificate_expiry",
                "Seconds until this node's certificate expires",
                Some(&Unit::Seconds),
                n.cert_expiry_seconds,
            )?;
        }
        let Some(m) = manager else {
            return Ok(());
        };
        let b = |v: bool| i64::from(v);
        gauge(
            &mut encoder,
            "raft_term",
            "The Raft term this manager is in",
            None,
            m.raft_term,
        )?;
        gauge(
            &mut encoder,
            "raft_is_leader",
            "1 if this manager is the Raft leader",
            None,
            b(m.is_leader),
        )?;
        gauge(
            &mut encoder,
            "raft_has_leader",
            "1 if this manager knows a leader a quorum confirmed in the last 2 s",
            None,
            b(m.has_leader),
        )?;
        gauge(
            &mut encoder,
            "raft_voters",
            "Raft voters in the membership",
            None,
            m.voters,
        )?;
        gauge(
            &mut encoder,
            "raft_reachable_voters",
            "Voters this manager sees reachable, itself and the leader included (node ls)",
            None,
            m.reachable_voters,
        )?;
        gauge(
            &mut encoder,
            "raft_log_entries",
            "Entries in this manager's Raft log since its last purge",
            None,
            m.log_entries,
        )?;
        gauge(
            &mut encoder,
            "raft_last_log_index",
            "Index of the last entry in this manager's Raft log",
            None,
            m.last_log_index,
        )?;
        gauge(
            &mut encoder,
            "raft_applied_index",
            "Index of the last entry applied to this manager's state",
            None,
            m.applied_index,
        )?;
        {
            let mut family = encoder.encode_descriptor(
                "tasks",
                "Tasks in the replicated state, by observed state",
                None,
                MetricType::Gauge,
            )?;
            for (state, n) in &m.tasks_by_state {
                let labels = [("state", *state)];
                ConstGauge::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }
        gauge(
            &mut encoder,
            "revoked_certificates",
            "Nodes and operators whose certificates the swarm revoked",
            None,
            m.revoked,
        )?;
        gauge(
            &mut encoder,
            "audit_records",
            "Audit records kept in the chain",
            None,
            m.audit_records,
        )?;
        gauge(
            &mut encoder,
            "audit_chain_verified",
            "1 if the audit chain this manager holds verifies (hashes, links, checkpoint signatures)",
            None,
            b(m.audit_chain_verified),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
