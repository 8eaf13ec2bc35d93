//! Where this node's tasks are reached: the narrow view the routing mesh and the tunnel
//! service read instead of the supervisor. It holds each live task's endpoints by target port
//! (a local port for an exec task, the container's address for a container) and container
//! address on its networks, and the routing table last fetched: its routes (who may tunnel
//! here) and service names (each task's hosts file, see [`super::hosts`]).
//!
//! ```text
//!  supervisor ─ admit(task) ─► Slot ─► runner: write_hosts, publish, withdraw; dropped at its end
//!  supervisor ─ remove(id) (no longer assigned, or deleted)
//!  mesh ─ set_table / endpoint / container_networks / runs_containers
//! ```

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use super::executor::Executors;
use crate::api::v1::{Route, ServiceVip};
use crate::store::service::{Runtime, Task};

/// Peer address → when the engine was asked, and the networks of its container (if any).
type PeerNetworks = Mutex<HashMap<IpAddr, (Instant, Option<Vec<String>>)>>;

/// A live task of this node.
struct Listed {
    /// Which admission this is (a task ID admitted again gets a new one).
    serial: u64,
    task: Task,
    /// Where the task listens, by target port, once it runs.
    endpoints: HashMap<u16, SocketAddr>,
    /// A running container's address, when its task is on a network (the mesh lets it use
    /// the container-side addresses of the services on its networks).
    container_ip: Option<IpAddr>,
}

/// This node's tasks as the mesh sees them, and the routing table.
pub struct Endpoints {
    execs: Arc<Executors>,
    tasks: Mutex<HashMap<String, Listed>>,
    serial: AtomicU64,
    /// What the engine said of peer addresses that are not this node's containers.
    peer_networks: PeerNetworks,
    /// Services reachable by name, from the routing table (see [`Endpoints::set_table`]).
    names: ArcSwap<Vec<ServiceVip>>,
    /// The routing table's routes (published ports), for deciding who may tunnel here.
    routes: ArcSwap<Vec<Route>>,
    /// Woken each time the routing table is taken.
    table_taken: tokio::sync::Notify,
}

/// One admitted task's place in [`Endpoints`], held by its runner; dropping it takes the task
/// out (it has ended).
pub struct Slot {
    endpoints: Arc<Endpoints>,
    id: String,
    serial: u64,
}

impl Endpoints {
    /// No tasks and an empty routing table, for the tasks `execs` runs.
    pub fn new(execs: Arc<Executors>) -> Arc<Self> {
        Arc::new(Endpoints {
            execs,
            tasks: Mutex::default(),
            serial: AtomicU64::new(0),
            peer_networks: Mutex::default(),
            names: Default::default(),
            routes: Default::default(),
            table_taken: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Listed>> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists `task` (taken by the supervisor, not yet reachable): from now on its hosts file
    /// follows the routing table.
    pub fn admit(self: &Arc<Self>, task: &Task) -> Slot {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            task.id.clone(),
            Listed {
                serial,
                task: task.clone(),
                endpoints: HashMap::new(),
                container_ip: None,
            },
        );
        Slot {
            endpoints: self.clone(),
            id: task.id.clone(),
            serial,
        }
    }

    /// Takes task `id` out (no longer assigned here, or deleted): unreachable at once.
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Where this node's running task `task_id` listens on `target` (the routing mesh's way
    /// in), if it runs here and publishes that port.
    pub fn endpoint(&self, task_id: &str, target: u16) -> Option<SocketAddr> {
        self.lock().get(task_id)?.endpoints.get(&target).copied()
    }

    /// The service and networks of a task running here.
    pub fn task_service(&self, task_id: &str) -> Option<(String, Vec<String>)> {
        let tasks = self.lock();
        let l = tasks.get(task_id)?;
        Some((l.task.service_id.clone(), l.task.spec.networks.clone()))
    }

    /// Whether this node runs containers (the docker runtime answered at start).
    pub fn runs_containers(&self) -> bool {
        self.execs.runtimes().contains(&Runtime::Docker)
    }

    /// The networks of the running container at `ip`: one of this node's, or else one that
    /// another node's agent started on the same engine (several nodes on one machine, as
    /// `skep dev` runs them, share its addresses and the one listener each address gets).
    pub async fn container_networks(&self, ip: IpAddr) -> Option<Vec<String>> {
        let local = self
            .lock()
            .values()
            .find(|l| l.container_ip == Some(ip))
            .map(|l| l.task.spec.networks.clone());
        if local.is_some() {
            return local;
        }
        // Asked of the engine at most once per address every few seconds, answers kept for
        // a bounded number of addresses: a flood of peers costs no flood of engine calls.
        const FRESH: Duration = Duration::from_secs(2);
        const KEEP: usize = 1024;
        let now = Instant::now();
        if let Some((at, n)) = self
            .peer_networks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ip)
            && now.duration_since(*at) < FRESH
        {
            return n.clone();
        }
        let found = self.execs.container_networks_at(ip).await;
        let mut cache = self.peer_networks.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= KEEP {
            cache.retain(|_, (at, _)| now.duration_since(*at) < FRESH);
            if cache.len() >= KEEP {
                cache.clear();
            }
        }
        cache.insert(ip, (now, found.clone()));
        found
    }

    /// Takes the latest routing table: its routes (who may tunnel here), then the service
    /// names; rewrites the hosts file of every live task on a network so that it resolves the
    /// services there.
    pub fn set_table(&self, routes: Vec<Route>, vips: Vec<ServiceVip>) {
        self.routes.store(Arc::new(routes));
        self.names.store(Arc::new(vips));
        let tasks: Vec<Task> = self.lock().values().map(|l| l.task.clone()).collect();
        for t in tasks {
            self.write_hosts(&t);
        }
        self.table_taken.notify_waiters();
    }

    /// The routing table last taken: routes and services by name.
    pub fn table(&self) -> (Arc<Vec<Route>>, Arc<Vec<ServiceVip>>) {
        (self.routes.load_full(), self.names.load_full())
    }

    /// Resolves when the routing table is next taken.
    pub async fn table_refreshed(&self) {
        self.table_taken.notified().await;
    }

    /// Writes the hosts file of `task`, if it is on a network, with the names last taken.
    fn write_hosts(&self, task: &Task) {
        if task.spec.networks.is_empty() {
            return;
        }
        let Ok(dir) = self.execs.task_dir(&task.id) else {
            return;
        };
        super::hosts::write(&dir, task, &self.names.load());
    }

    /// Runs `f` on the entry of this admission, if it is still listed.
    fn with_listed(&self, id: &str, serial: u64, f: impl FnOnce(&mut Listed)) {
        if let Some(l) = self.lock().get_mut(id).filter(|l| l.serial == serial) {
            f(l);
        }
    }
}

impl Slot {
    /// Writes the task's hosts file (see [`super::hosts`]), if it is on a network.
    pub fn write_hosts(&self, task: &Task) {
        self.endpoints.write_hosts(task);
    }

    /// Puts the running task into the mesh's rotation: where it listens, and its container's
    /// address on its networks.
    pub fn publish(&self, endpoints: HashMap<u16, SocketAddr>, container_ip: Option<IpAddr>) {
        self.endpoints.with_listed(&self.id, self.serial, |l| {
            l.endpoints = endpoints;
            l.container_ip = container_ip;
        });
    }

    /// Takes the task out of the rotation (it stops): new connections go to other tasks.
    pub fn withdraw(&self) {
        self.publish(HashMap::new(), None);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut tasks = self.endpoints.lock();
        if tasks.get(&self.id).is_some_and(|l| l.serial == self.serial) {
            tasks.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_network(id: &str, runtime: Runtime) -> Task {
        let mut t = crate::agent::executor::docker::tests::task();
        t.id = id.into();
        t.spec.runtime = runtime;
        t.spec.networks = vec!["front".into()];
        t
    }

    fn endpoints(dir: &std::path::Path) -> Arc<Endpoints> {
        Endpoints::new(Arc::new(Executors::without_runtimes(dir)))
    }

    #[test]
    fn a_task_is_reachable_from_publish_until_withdrawn_removed_or_ended() {
        let dir = tempfile::tempdir().unwrap();
        let e = endpoints(dir.path());
        let t = on_network("t1", Runtime::Exec);
        let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let at = || HashMap::from([(80, addr)]);
        let slot = e.admit(&t);
        assert_eq!(e.endpoint("t1", 80), None, "listed, not yet running");
        slot.publish(at(), None);
        assert_eq!(e.endpoint("t1", 80), Some(addr));
        assert_eq!(e.endpoint("t1", 81), None);
        assert_eq!(
            e.task_service("t1"),
            Some(("s1".to_string(), vec!["front".to_string()]))
        );
        slot.withdraw();
        assert_eq!(e.endpoint("t1", 80), None);
        slot.publish(at(), None);
        e.remove("t1");
        slot.publish(at(), None);
        assert_eq!(e.endpoint("t1", 80), None, "a removed task stays out");
        assert_eq!(e.task_service("t1"), None);
        // Admitted again: the end of the earlier runner does not take it out.
        let again = e.admit(&t);
        drop(slot);
        again.publish(at(), None);
        assert_eq!(e.endpoint("t1", 80), Some(addr));
        drop(again);
        assert_eq!(e.endpoint("t1", 80), None, "out once its runner ends");
    }

    #[tokio::test]
    async fn a_listed_container_answers_for_its_address_and_the_table_rewrites_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let e = endpoints(dir.path());
        let ip: IpAddr = "172.17.0.5".parse().unwrap();
        let slot = e.admit(&on_network("c1", Runtime::Docker));
        slot.publish(HashMap::new(), Some(ip));
        assert_eq!(
            e.container_networks(ip).await,
            Some(vec!["front".to_string()])
        );
        let _exec = e.admit(&on_network("x1", Runtime::Exec));
        let db = ServiceVip {
            names: vec!["db".into()],
            vip: "127.77.0.2".into(),
            networks: vec!["front".into()],
            ..Default::default()
        };
        e.set_table(Vec::new(), vec![db]);
        let hosts =
            |id: &str| std::fs::read_to_string(dir.path().join("tasks").join(id).join("hosts"));
        assert!(hosts("x1").unwrap().ends_with("127.77.0.2\tdb\n"));
        let container = hosts("c1").unwrap();
        assert!(!container.contains("127.77.0.2"), "{container}");
        drop(slot);
        assert_eq!(e.container_networks(ip).await, None, "asked of no engine");
        assert_eq!(e.table().1.len(), 1);
    }
}
