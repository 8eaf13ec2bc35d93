//! The routing table every node's mesh asks for once a second (`Dispatcher.Routes`): every
//! published port with its service's running tasks and their nodes' addresses, and the
//! services reached by name. Made once per applied log index and shared by every call
//! ([`RoutesCache`]), not once per call; left out of the answer to a node that holds it
//! already ([`answer`]: the node echoes the table's digest). Made per call and sent whole, it
//! cost every manager a pass over every task per service with a port or a network, for each
//! node, every second.
//!
//! ```text
//!  node ─► Routes { digest held } ─► RoutesCache::get (per applied index: route_table +
//!          service_vips, SHA-256) ─► answer: `unchanged` if the digests match, else the table
//! ```

use std::sync::{Arc, Mutex};

use prost::Message as _;

use super::workload::STACK_LABEL;
use crate::api::v1::RoutesResponse;
use crate::store::model::State;

/// A service's address on every node's loopback (127.77.X.Y), where the node's routing mesh
/// listens for the tasks that reach the service by name: the one the state machine gave it
/// ([`crate::store::vip`]). A service stored before addresses were allocated has none until
/// its next update, and keeps the address derived from its ID until then.
pub fn service_vip(svc: &crate::store::service::Service) -> std::net::Ipv4Addr {
    svc.vip.unwrap_or_else(|| {
        use sha2::Digest as _;
        let d = sha2::Sha256::digest(svc.id.as_bytes());
        std::net::Ipv4Addr::new(127, 77, d[0], 1 + d[1] % 254)
    })
}

/// The targets a service's tasks take `proto` on: of its published ports and its `expose`
/// list, sorted, once each.
fn vip_ports(
    spec: &crate::store::service::ServiceSpec,
    proto: crate::store::service::PortProtocol,
) -> Vec<u32> {
    use crate::store::service::PortProtocol;
    let exposed = match proto {
        PortProtocol::Tcp => &spec.expose,
        PortProtocol::Udp => &spec.expose_udp,
    };
    let mut out: Vec<u32> = spec
        .ports
        .iter()
        .filter(|p| p.protocol == proto)
        .map(|p| p.target)
        .chain(exposed.iter().copied())
        .filter(|p| *p > 0)
        .map(u32::from)
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The published ports of the routing table, each with its service's running tasks and their
/// nodes' addresses; for a port with `identity=required`, each task with the SPIFFE IDs the
/// policy lets call it there ([`super::mesh::allowed_callers`], decided once per service and
/// node).
fn route_table(s: &crate::store::model::State) -> Vec<crate::api::v1::Route> {
    use crate::store::service::{PortIdentity, PortProtocol, PublishMode, TaskState};
    let engine = super::entitle::engine(s);
    let mut routes = Vec::new();
    for svc in s.services.values().filter(|svc| !svc.spec.ports.is_empty()) {
        let needs_identity = svc
            .spec
            .ports
            .iter()
            .any(|p| p.identity == PortIdentity::Required);
        let mut callers: std::collections::HashMap<&str, Vec<String>> = Default::default();
        let tasks: Vec<crate::api::v1::RouteTask> = s
            .tasks
            .values()
            .filter(|t| t.service_id == svc.id && t.status.state == TaskState::Running)
            .filter_map(|t| {
                let node = s.nodes.get(&t.node_id)?;
                let allowed_callers = if needs_identity {
                    callers
                        .entry(node.id.as_str())
                        .or_insert_with(|| super::mesh::allowed_callers(&engine, s, svc, node))
                        .clone()
                } else {
                    Vec::new()
                };
                Some(crate::api::v1::RouteTask {
                    task_id: t.id.clone(),
                    node_id: t.node_id.clone(),
                    node_addr: node.addr.clone(),
                    allowed_callers,
                })
            })
            .collect();
        for p in &svc.spec.ports {
            let identity_required = p.identity == PortIdentity::Required;
            let mut tasks = tasks.clone();
            if !identity_required {
                tasks.iter_mut().for_each(|t| t.allowed_callers.clear());
            }
            routes.push(crate::api::v1::Route {
                service_id: svc.id.clone(),
                service_name: svc.spec.name.clone(),
                published: u32::from(p.published),
                target: u32::from(p.target),
                protocol: match p.protocol {
                    PortProtocol::Tcp => "tcp",
                    PortProtocol::Udp => "udp",
                }
                .into(),
                mode: match p.mode {
                    PublishMode::Ingress => "ingress",
                    PublishMode::Host => "host",
                }
                .into(),
                tasks,
                identity_required,
            });
        }
    }
    routes
}

/// The services attached to networks, reached by name: each with its names, its address on
/// every node's loopback, its ports and its running tasks.
fn service_vips(s: &State) -> Vec<crate::api::v1::ServiceVip> {
    use crate::store::service::{PortProtocol, TaskState};
    s.services
        .values()
        .filter(|svc| !svc.spec.networks.is_empty())
        .map(|svc| {
            let mut names = vec![svc.spec.name.clone()];
            if let Some(short) = svc
                .spec
                .labels
                .get(STACK_LABEL)
                .and_then(|stack| svc.spec.name.strip_prefix(&format!("{stack}_")))
            {
                names.push(short.to_string());
            }
            crate::api::v1::ServiceVip {
                service_id: svc.id.clone(),
                names,
                vip: service_vip(svc).to_string(),
                ports: vip_ports(&svc.spec, PortProtocol::Tcp),
                udp_ports: vip_ports(&svc.spec, PortProtocol::Udp),
                networks: svc.spec.networks.clone(),
                tasks: s
                    .tasks
                    .values()
                    .filter(|t| t.service_id == svc.id && t.status.state == TaskState::Running)
                    .filter_map(|t| {
                        let node = s.nodes.get(&t.node_id)?;
                        Some(crate::api::v1::RouteTask {
                            task_id: t.id.clone(),
                            node_id: t.node_id.clone(),
                            node_addr: node.addr.clone(),
                            allowed_callers: Vec::new(),
                        })
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The whole table of `state`, its digest set.
pub fn table(state: &State) -> RoutesResponse {
    use sha2::Digest as _;
    let mut t = RoutesResponse {
        routes: route_table(state),
        vips: service_vips(state),
        digest: Vec::new(),
        unchanged: false,
    };
    t.digest = sha2::Sha256::digest(t.encode_to_vec()).to_vec();
    t
}

/// The answer to a node holding the table of digest `held` (empty: none).
pub fn answer(table: &RoutesResponse, held: &[u8]) -> RoutesResponse {
    if !held.is_empty() && held == table.digest.as_slice() {
        RoutesResponse {
            digest: table.digest.clone(),
            unchanged: true,
            ..RoutesResponse::default()
        }
    } else {
        table.clone()
    }
}

/// The table made for the last applied index asked about.
#[derive(Default)]
pub struct RoutesCache(Mutex<Option<(u64, Arc<RoutesResponse>)>>);

impl RoutesCache {
    /// The table of the state applied up to `index`: the cached one for that index, else
    /// `make` (under the cache's lock: callers at a new index wait for one table, they do not
    /// each make one). A table with the digest of the one before is the same `Arc`.
    pub fn get(&self, index: u64, make: impl FnOnce() -> RoutesResponse) -> Arc<RoutesResponse> {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, t)) = cache.as_ref()
            && *at == index
        {
            return t.clone();
        }
        let made = make();
        let t = match cache.take() {
            Some((_, old)) if old.digest == made.digest => old,
            _ => Arc::new(made),
        };
        *cache = Some((index, t.clone()));
        t
    }
}

impl super::Manager {
    /// The routing table of the state applied now (see [`RoutesCache`]).
    pub fn routes_table(&self) -> Arc<RoutesResponse> {
        self.read_applied(|s, applied| {
            let index = applied.map_or(0, |l| l.index);
            self.routes.get(index, || table(s))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::fixtures;
    use crate::store::service::{PortConfig, TaskState};

    /// A swarm with service `web` publishing port 8080 and `n` running tasks of it on n1.
    fn swarm(n: usize) -> State {
        let mut s = State::default();
        s.nodes.insert("n1".into(), fixtures::node("n1"));
        let mut svc = fixtures::service("web", "web");
        svc.spec.ports = vec![PortConfig {
            published: 8080,
            target: 80,
            protocol: Default::default(),
            mode: Default::default(),
            identity: Default::default(),
        }];
        s.services.insert("web".into(), svc);
        for i in 0..n {
            let mut t = fixtures::task();
            t.id = format!("t{i}");
            t.service_id = "web".into();
            t.node_id = "n1".into();
            t.status.state = TaskState::Running;
            s.tasks.insert(t.id.clone(), t);
        }
        s
    }

    /// A node holding the table gets `unchanged` and nothing else; a node holding another
    /// table, or none, gets all of it. The digest is of the table's encoding.
    #[test]
    fn a_node_holding_the_table_gets_only_its_digest() {
        let t = table(&swarm(3));
        assert_eq!(t.routes.len(), 1);
        assert_eq!(t.routes[0].tasks.len(), 3);
        let bare = RoutesResponse {
            digest: Vec::new(),
            ..t.clone()
        };
        use sha2::Digest as _;
        assert_eq!(
            t.digest,
            sha2::Sha256::digest(bare.encode_to_vec()).to_vec()
        );
        let same = answer(&t, &t.digest);
        assert!(same.unchanged && same.routes.is_empty() && same.vips.is_empty());
        assert_eq!(same.digest, t.digest);
        for held in [Vec::new(), vec![0u8; 32], t.digest[..31].to_vec()] {
            assert_eq!(answer(&t, &held), t, "held {held:?}");
        }
        // One more running task: another digest.
        assert_ne!(table(&swarm(4)).digest, t.digest);
    }

    /// The table is made once per applied index, whoever asks; a new index whose table is
    /// the same keeps the same `Arc`, a changed one makes a new one.
    #[test]
    fn the_table_is_made_once_per_index() {
        let cache = RoutesCache::default();
        let made = std::cell::Cell::new(0);
        let make = |s: &State| {
            made.set(made.get() + 1);
            table(s)
        };
        let s = swarm(2);
        let first = cache.get(1, || make(&s));
        for _ in 0..100 {
            assert!(Arc::ptr_eq(&cache.get(1, || make(&s)), &first));
        }
        assert_eq!(made.get(), 1);
        assert!(Arc::ptr_eq(&cache.get(2, || make(&s)), &first));
        let changed = cache.get(3, || make(&swarm(5)));
        assert_eq!(changed.routes[0].tasks.len(), 5);
        assert_eq!(made.get(), 3);
    }
}
