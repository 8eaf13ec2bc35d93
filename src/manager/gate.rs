//! The Control API over mTLS, for operators: a tower service in front of the generated
//! `ControlServer` that lets through only operator certificates, refuses the calls that only
//! make sense on the node itself (init, join, leave, unlock), authorizes every other call with
//! the RBAC policies, and runs the call with the operator as its actor ([`caller`]).

use std::sync::Arc;
use std::task::{Context, Poll};

use crate::api::{STALE_HEADER, STALE_VALUE};
use crate::audit::Actor;
use crate::net::PeerInfo;
use crate::policy::rbac::Action;

use super::Manager;

tokio::task_local! {
    static CALLER: Actor;
    static STALE: bool;
}

/// Whether the current Control call asked for this manager's copy as it is (`--stale`).
pub fn stale_requested() -> bool {
    STALE.try_with(|s| *s).unwrap_or(false)
}

/// Runs the Control server `inner` with the read mode of each request ([`stale_requested`]).
#[derive(Clone)]
pub struct ReadMode<S> {
    inner: S,
}

impl<S> ReadMode<S> {
    /// Wraps `inner` (the Control server).
    pub fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for ReadMode<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for ReadMode<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let stale = req
            .headers()
            .get(STALE_HEADER)
            .is_some_and(|v| v.as_bytes() == STALE_VALUE.as_bytes());
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(STALE.scope(stale, inner.call(req)))
    }
}

/// The operator making the current Control call over mTLS, if it is one (`None` on the
/// local Unix socket, whose caller is the node's root administrator).
pub fn caller() -> Option<Actor> {
    CALLER.try_with(Clone::clone).ok()
}

/// What a Control method does, for RBAC: the action and the kind of resource, or `None` for
/// a method that only the node's own administrator may call.
pub fn classify(method: &str) -> Option<(Action, &'static str)> {
    use Action::*;
    Some(match method {
        "SwarmInit" | "SwarmJoin" | "SwarmLeave" | "SwarmUnlock" | "SwarmBackup"
        | "SwarmRestore" => return None,
        "Info" | "Version" => (Read, "swarm"),
        "SwarmCa" => (Read, "swarm"),
        "JoinToken" => (ManageTokens, "token"),
        "NodeList" | "NodeInspect" | "NodeTasks" | "AgentSecrets" => (Read, "node"),
        "NodeUpdate" | "NodeRemove" => (ManageNodes, "node"),
        "AuditList" | "AuditFollow" | "AuditExport" | "AuditVerify" => (ReadAudit, "audit"),
        "SwarmUpdate" | "UnlockKey" => (ManageSwarm, "swarm"),
        "ServiceCreate" | "ServiceUpdate" | "ServiceRemove" => (Deploy, "service"),
        "ServiceList" | "ServiceInspect" | "ServiceLogs" => (Read, "service"),
        // Configs use the same methods (and the same actions) as secrets.
        "SecretCreate" | "SecretRemove" | "SecretUpdate" | "SecretRollback" => {
            (ManageSecrets, "secret")
        }
        // A rollout's progress is a read; pausing or continuing it is checked as
        // ManageSecrets by the handler.
        "SecretList" | "SecretInspect" | "SecretRollout" => (Read, "secret"),
        "NetworkCreate" | "NetworkRemove" => (Deploy, "network"),
        "StackAudit" | "StackVolumesRemove" => (Deploy, "stack"),
        "StackVolumesProgress" => (Read, "stack"),
        "Events" => (ReadEvents, "event"),
        "NetworkList" | "NetworkInspect" => (Read, "network"),
        "PolicyGet" => (Read, "policy"),
        "PolicySet" => (ManageSwarm, "policy"),
        "OperatorSign" | "OperatorRevoke" => (ManageOperators, "operator"),
        "OperatorList" => (Read, "operator"),
        // A method added without a decision here is refused to operators.
        _ => return None,
    })
}

/// Checks, for an operator making the current call, a decision that depends on the request
/// body (e.g. `swarm ca --rotate` is more than a read). The local administrator passes.
pub async fn require(
    mgr: &Manager,
    method: &str,
    action: Action,
    resource: &str,
) -> Result<(), tonic::Status> {
    let Some(op) = OPERATOR.try_with(Clone::clone).ok() else {
        return Ok(());
    };
    mgr.authorize_operator(&op.0, op.1, method, action, resource)
        .await
        .map(|_| ())
        .map_err(super::to_status)
}

/// Checks, for an operator's service create or update, that the RBAC policy lets it deploy
/// what `spec` asks for (its runtime, whether managers may run it, what it mounts: see
/// [`crate::policy::rbac::SpecFacts`]), and each of its bind mounts (`BindMount`, with the
/// host path). Refusals are audited. The local administrator passes.
pub async fn require_spec(
    mgr: &Manager,
    method: &str,
    spec: &crate::store::service::ServiceSpec,
) -> Result<(), tonic::Status> {
    let Some(op) = OPERATOR.try_with(Clone::clone).ok() else {
        return Ok(());
    };
    let facts = crate::policy::rbac::SpecFacts::of(spec);
    mgr.authorize_operator_in(&op.0, op.1, method, Action::Deploy, "service", Some(&facts))
        .await
        .map_err(super::to_status)?;
    // Each bind mount is a decision of its own: host paths are allowed by name or prefix.
    for m in &spec.task.mounts {
        if m.kind == crate::store::service::MountKind::Bind {
            let bind = crate::policy::rbac::SpecFacts::bind(&m.source, m.read_only);
            mgr.authorize_operator_in(
                &op.0,
                op.1,
                method,
                Action::BindMount,
                "service",
                Some(&bind),
            )
            .await
            .map_err(super::to_status)?;
        }
    }
    Ok(())
}

tokio::task_local! {
    static OPERATOR: (Arc<skep_pki::OperatorCertInfo>, std::net::SocketAddr);
}

/// The gate (see the module documentation).
#[derive(Clone)]
pub struct OperatorGate<S> {
    inner: S,
    mgr: Arc<Manager>,
}

impl<S> OperatorGate<S> {
    /// Wraps `inner` (the Control server) for manager `mgr`.
    pub fn new(inner: S, mgr: Arc<Manager>) -> Self {
        Self { inner, mgr }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for OperatorGate<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for OperatorGate<S>
where
    S: tower::Service<
            http::Request<B>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // The clone is not ready; the one polled ready is used (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let mgr = self.mgr.clone();
        Box::pin(async move {
            let method = req
                .uri()
                .path()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            let peer = req.extensions().get::<PeerInfo>().cloned();
            let refuse = |s: tonic::Status| Ok(s.into_http());
            let Some(peer) = peer else {
                return refuse(tonic::Status::unauthenticated(
                    "connection carries no TLS peer information",
                ));
            };
            let role_denied = || {
                crate::metrics::metrics().refused(crate::metrics::Refusal::RoleDenied);
            };
            let Some(op) = peer.operator.clone() else {
                role_denied();
                return refuse(tonic::Status::permission_denied(
                    "permission denied: the Control API over the network is for operator certificates (`skep operator sign`); nodes use the node services",
                ));
            };
            let Some((action, resource)) = classify(&method) else {
                role_denied();
                return refuse(tonic::Status::permission_denied(format!(
                    "permission denied: {method} can only be run on the node itself, over its local socket"
                )));
            };
            // Who the operator is and what it may do is a security decision: read
            // linearizably, whatever the call asked for.
            if let Err(e) = mgr.read_barrier().await {
                return refuse(super::to_status(e.into()));
            }
            let actor = match mgr
                .authorize_operator(&op, peer.addr, &method, action, resource)
                .await
            {
                Ok(a) => a,
                Err(e) => return refuse(super::to_status(e)),
            };
            CALLER
                .scope(actor, OPERATOR.scope((op, peer.addr), inner.call(req)))
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_local_calls_are_not_for_operators_and_every_rpc_is_classified() {
        for m in [
            "SwarmInit",
            "SwarmJoin",
            "SwarmLeave",
            "SwarmUnlock",
            "SwarmBackup",
            "SwarmRestore",
            "Nope",
        ] {
            assert!(classify(m).is_none(), "{m}");
        }
        let proto = include_str!("../api/proto/skep.proto");
        let control = proto
            .split("service Control {")
            .nth(1)
            .and_then(|s| s.split("\n}").next())
            .unwrap_or_default();
        let rpcs: Vec<&str> = control
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .filter_map(|l| l.split('(').next())
            .collect();
        assert!(rpcs.len() > 20, "{rpcs:?}");
        for rpc in rpcs {
            let local = [
                "SwarmInit",
                "SwarmJoin",
                "SwarmLeave",
                "SwarmUnlock",
                "SwarmBackup",
                "SwarmRestore",
            ]
            .contains(&rpc);
            assert_eq!(classify(rpc).is_none(), local, "{rpc} has no RBAC decision");
        }
    }
}
