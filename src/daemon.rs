//! Wires a node together according to its state: not in a swarm, locked, worker or manager.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How to run a node (`skep daemon` flags).
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// Where the node keeps its sealed state.
    pub data_dir: PathBuf,
    /// Where node-to-node mTLS is served (default 0.0.0.0:2377).
    pub listen_addr: SocketAddr,
    /// The address other nodes reach this node at; default: the listen address.
    pub advertise_addr: Option<SocketAddr>,
    /// The local admin Unix socket (mode 0600).
    pub socket: PathBuf,
    /// Host name shown in `node ls`; default: the system host name.
    pub hostname: Option<String>,
    /// How often agents heartbeat; the leader marks a node Down after 3 missed periods.
    pub heartbeat_period: Duration,
}

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Anything, for now.
    #[error("{0}")]
    Other(String),
}

/// Runs the daemon until it is told to stop (SIGINT/SIGTERM).
pub async fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    let _ = config;
    Err(DaemonError::Other("not yet".into()))
}
