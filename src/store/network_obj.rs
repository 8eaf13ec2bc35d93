//! Networks: named objects services attach to (`network create`, compose `networks:`).
//!
//! skep records networks and which services are attached to them; it does not (yet) give
//! tasks an overlay network of their own, so the driver is always `overlay` by name only.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The only driver skep knows, as Docker names the swarm-scoped one.
pub const DRIVER_OVERLAY: &str = "overlay";

/// A network object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Network ID.
    pub id: String,
    /// Name, unique in the cluster.
    pub name: String,
    /// Labels (`com.docker.stack.namespace` for networks a stack made).
    pub labels: BTreeMap<String, String>,
    /// Driver name (`overlay`).
    pub driver: String,
    /// RFC 3339 creation time.
    pub created_at: String,
}
