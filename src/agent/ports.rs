//! The ports a task listens on, chosen before it starts: an exec task shares the node's
//! network, so each port it is to listen on gets a free local port, given in its environment:
//! `PORT` (the first), `SKEP_PORT_<TARGET>` (each); with `SKEP_TASK_ID` and `SKEP_NODE_ID`.
//! Docker tasks listen on their own address. The task spec does not say whether a target is
//! TCP or UDP (a service may publish both on one target), so the port given is free for both.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::store::service::{Runtime, Task};

/// The task as it runs, with free local ports for an exec task, and its endpoints.
pub fn with_ports(task: Task) -> (Task, HashMap<u16, SocketAddr>) {
    let chosen: Vec<(u16, SocketAddr)> = if task.spec.runtime == Runtime::Exec {
        task.spec
            .ports
            .iter()
            .filter_map(|t| free_local_port().map(|a| (*t, a)))
            .collect()
    } else {
        Vec::new()
    };
    with_given_ports(task, &chosen)
}

/// The task as it runs with the local ports `chosen` (target, address; in order): the
/// environment [`with_ports`] gives, and the endpoints. An adopted exec task gets the ports
/// its helper recorded, so its health checks see the environment it was started with.
pub fn with_given_ports(
    mut task: Task,
    chosen: &[(u16, SocketAddr)],
) -> (Task, HashMap<u16, SocketAddr>) {
    let mut endpoints = HashMap::new();
    if task.spec.ports.is_empty() {
        return (task, endpoints);
    }
    task.spec.env.push(format!("SKEP_TASK_ID={}", task.id));
    task.spec.env.push(format!("SKEP_NODE_ID={}", task.node_id));
    for (i, (target, addr)) in chosen.iter().enumerate() {
        if i == 0 {
            task.spec.env.push(format!("PORT={}", addr.port()));
        }
        task.spec
            .env
            .push(format!("SKEP_PORT_{target}={}", addr.port()));
        endpoints.insert(*target, *addr);
    }
    (task, endpoints)
}

/// A loopback port free for TCP and for UDP when asked (the kernel picks the TCP one; a few
/// tries find one whose UDP twin is free too).
fn free_local_port() -> Option<SocketAddr> {
    for _ in 0..16 {
        let Ok(tcp) = std::net::TcpListener::bind(("127.0.0.1", 0)) else {
            continue;
        };
        let Ok(addr) = tcp.local_addr() else { continue };
        if std::net::UdpSocket::bind(addr).is_ok() {
            return Some(addr);
        }
    }
    None
}
