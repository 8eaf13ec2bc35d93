//! Policies, decided with [Cedar](https://www.cedarpolicy.com/):
//!
//! - [`cedar`]: the machinery both policy sets share: schema loading, the one parse path with
//!   its size and complexity limits, entity helpers, diagnostics;
//! - [`secrets`]: the secret-entitlement engine (may a service have a secret on a node?);
//! - [`connect`]: service-to-service decisions of the routing mesh (may `web` call `db`?);
//! - [`rbac`]: operator RBAC (which Control API calls an operator may make).
//!
//! The secret engine's items are re-exported here, where callers have always found them.

pub mod cedar;
pub mod connect;
pub mod rbac;
pub mod secrets;

pub use cedar::{MAX_NESTING, MAX_OPERATORS_PER_POLICY, MAX_POLICY_BYTES, PolicyError, digest};
pub use secrets::{
    DEFAULT_POLICY, Decision, NodeFacts, PolicyEngine, SCHEMA, SecretFacts, ServiceFacts, cached,
};
