//! Who may call whom through the routing mesh: for a port published with
//! `identity=required`, the SPIFFE IDs of the services the Cedar `Connect` policy lets call a
//! task of the service on its node ([`crate::policy::connect`]). The managers send the list
//! with each task of the routing table; the node running the task admits a caller only if the
//! SPIFFE ID of the SVID it presented is on it.
//!
//! ```text
//!  state ─► engine (the policy in force) ─► every service × (callee, node) ─► allowed SPIFFE IDs
//! ```
//!
//! Pure functions of the replicated state, so every manager answers alike; decisions are
//! cached across routing-table requests (nodes ask every second), as [`super::entitle`] does.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::policy::{NodeFacts, PolicyEngine, ServiceFacts};
use crate::store::model::{Node, State};
use crate::store::service::Service;

/// The SPIFFE ID of `svc`'s tasks (`spiffe://<td>/ns/<stack or default>/svc/<name>`, the name
/// without its stack's prefix), as the managers put it in the SVIDs they issue; `None` without
/// a cluster record or for a name that makes no valid ID.
pub fn service_spiffe_id(state: &State, svc: &Service) -> Option<String> {
    super::workload::service_spiffe_id(state, &svc.spec.name, &svc.spec.labels).ok()
}

/// One side of a decision as the cache keys it: ID, name, labels, referenced secret IDs.
type Facts = (String, String, BTreeMap<String, String>, Vec<String>);

/// Everything a Connect decision depends on. Equal keys give equal decisions.
#[derive(Clone, PartialEq, Eq, Hash)]
struct DecisionKey {
    policy: String,
    caller: Facts,
    callee: Facts,
    node: (String, &'static str, BTreeMap<String, String>),
}

/// Decisions already taken, across routing-table requests. Bounded: cleared when it grows past
/// [`DECISION_CACHE`] entries.
static DECISIONS: std::sync::Mutex<Option<HashMap<DecisionKey, bool>>> =
    std::sync::Mutex::new(None);
const DECISION_CACHE: usize = 16_384;

fn facts(svc: &Service) -> Facts {
    (
        svc.id.clone(),
        svc.spec.name.clone(),
        svc.spec.labels.clone(),
        svc.spec
            .task
            .secrets
            .iter()
            .map(|r| r.secret_id.clone())
            .collect(),
    )
}

/// Whether the policy lets `caller` connect to a task of `callee` on `node`.
fn permitted(engine: &PolicyEngine, caller: &Service, callee: &Service, node: &Node) -> bool {
    let key = DecisionKey {
        policy: engine.digest().to_string(),
        caller: facts(caller),
        callee: facts(callee),
        node: (
            node.id.clone(),
            super::entitle::role_name(node.role),
            node.labels.clone(),
        ),
    };
    let cache = || DECISIONS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = cache().as_ref().and_then(|c| c.get(&key)) {
        return *r;
    }
    fn ids(f: &Facts) -> Vec<&str> {
        f.3.iter().map(String::as_str).collect()
    }
    let (caller_secrets, callee_secrets) = (ids(&key.caller), ids(&key.callee));
    fn side<'a>(s: &'a Service, secret_ids: &'a [&'a str]) -> ServiceFacts<'a> {
        ServiceFacts {
            id: &s.id,
            name: &s.spec.name,
            labels: &s.spec.labels,
            secret_ids,
        }
    }
    let node_facts = NodeFacts {
        id: &node.id,
        hostname: &node.hostname,
        role: key.node.1,
        labels: &node.labels,
    };
    let decision = engine.connect(
        &side(caller, &caller_secrets),
        &side(callee, &callee_secrets),
        &node_facts,
    );
    let allowed = decision.is_allowed();
    let mut c = cache();
    let map = c.get_or_insert_with(HashMap::new);
    if map.len() >= DECISION_CACHE {
        map.clear();
    }
    map.insert(key, allowed);
    allowed
}

/// The SPIFFE IDs of the services the policy in force lets call a task of `callee` on `node`,
/// sorted. Only services with workload identity are callers (the others hold no SVID). An ID
/// that several services share is allowed only when the policy allows every one of them, so a
/// look-alike cannot borrow another service's permit. A policy set that cannot be used allows
/// no one (fail closed).
pub fn allowed_callers(
    engine: &Result<Arc<PolicyEngine>, String>,
    state: &State,
    callee: &Service,
    node: &Node,
) -> Vec<String> {
    let Ok(engine) = engine else {
        return Vec::new();
    };
    let mut verdicts: BTreeMap<String, bool> = BTreeMap::new();
    for caller in state.services.values().filter(|s| s.spec.task.identity) {
        let Some(id) = service_spiffe_id(state, caller) else {
            continue;
        };
        let ok = permitted(engine, caller, callee, node);
        verdicts.entry(id).and_modify(|v| *v &= ok).or_insert(ok);
    }
    verdicts
        .into_iter()
        .filter(|(_, ok)| *ok)
        .map(|(id, _)| id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The most bytes of each field of a node's report that reach the audit chain.
const REPORT_FIELD: usize = 256;

/// The audit record of a connection node `node_id` reports its mesh refused: `mesh.connect`,
/// denied, with the target service, the caller and the reason, each cut to
/// [`REPORT_FIELD`] bytes (a node's report is not trusted to be small). `service_name` is the
/// callee's name if the state knows the service.
pub fn denial_record(
    node_id: &str,
    d: &crate::api::v1::MeshDenial,
    peer: std::net::SocketAddr,
    service_name: Option<&str>,
) -> crate::audit::AuditEvent {
    use crate::util::prefix;
    let mut record = super::event(
        crate::audit::Actor::node(node_id),
        "mesh.connect",
        &prefix(&d.service_id, REPORT_FIELD),
        crate::audit::Outcome::Denied,
    )
    .with("caller", prefix(&d.caller, REPORT_FIELD))
    .with("task", prefix(&d.task_id, REPORT_FIELD))
    .with("port", d.target_port.to_string())
    .with("reason", prefix(&d.reason, REPORT_FIELD))
    .with("peer", peer.to_string());
    if let Some(name) = service_name {
        record = record.with("service", name);
    }
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures;
    use crate::store::model::PolicyDoc;

    fn state() -> State {
        let mut s = State {
            cluster: Some(crate::store::model::Cluster {
                trust_domain: "example.org".into(),
                ..fixtures::cluster()
            }),
            ..Default::default()
        };
        for (id, name) in [("s-web", "web"), ("s-db", "db"), ("s-api", "api")] {
            s.services.insert(id.into(), fixtures::service(id, name));
        }
        s.nodes.insert("n1".into(), fixtures::node("n1"));
        s
    }

    fn with_policy(s: &mut State, text: &str) {
        s.policy = Some(PolicyDoc {
            text: text.into(),
            digest: crate::policy::digest(text),
            updated_at: String::new(),
        });
    }

    #[test]
    fn the_default_allows_every_service_with_identity() {
        let mut s = state();
        s.services.get_mut("s-api").unwrap().spec.task.identity = false;
        let engine = super::super::entitle::engine(&s);
        let got = allowed_callers(&engine, &s, &s.services["s-db"], &s.nodes["n1"]);
        assert_eq!(
            got,
            vec![
                "spiffe://example.org/ns/default/svc/db".to_string(),
                "spiffe://example.org/ns/default/svc/web".to_string(),
            ]
        );
    }

    #[test]
    fn a_forbid_removes_the_caller_and_a_stack_names_its_namespace() {
        let mut s = state();
        let api = s.services.get_mut("s-api").unwrap();
        api.spec.name = "shop_api".into();
        api.spec
            .labels
            .insert(crate::manager::workload::STACK_LABEL.into(), "shop".into());
        with_policy(
            &mut s,
            &format!(
                "{}\nforbid (principal == Skep::Service::\"web\", action == \
                 Skep::Action::\"Connect\", resource == Skep::Service::\"db\");",
                crate::policy::DEFAULT_POLICY
            ),
        );
        let engine = super::super::entitle::engine(&s);
        let got = allowed_callers(&engine, &s, &s.services["s-db"], &s.nodes["n1"]);
        assert_eq!(
            got,
            vec![
                "spiffe://example.org/ns/default/svc/db".to_string(),
                "spiffe://example.org/ns/shop/svc/api".to_string(),
            ]
        );
        // web may still call api.
        let got = allowed_callers(&engine, &s, &s.services["s-api"], &s.nodes["n1"]);
        assert!(got.contains(&"spiffe://example.org/ns/default/svc/web".to_string()));
    }

    #[test]
    fn a_shared_spiffe_id_is_allowed_only_if_every_holder_is() {
        let mut s = state();
        // `default_web` of stack `default` has web's SPIFFE ID.
        let mut twin = fixtures::service("s-twin", "default_web");
        twin.spec.labels.insert(
            crate::manager::workload::STACK_LABEL.into(),
            "default".into(),
        );
        s.services.insert("s-twin".into(), twin);
        with_policy(
            &mut s,
            "permit (principal == Skep::Service::\"web\", action == Skep::Action::\"Connect\", \
             resource);",
        );
        let engine = super::super::entitle::engine(&s);
        let got = allowed_callers(&engine, &s, &s.services["s-db"], &s.nodes["n1"]);
        assert!(got.is_empty(), "{got:?}");
    }

    #[test]
    fn an_unusable_policy_allows_no_one() {
        let s = state();
        let engine = Err("broken".to_string());
        assert!(allowed_callers(&engine, &s, &s.services["s-db"], &s.nodes["n1"]).is_empty());
    }

    #[test]
    fn a_denial_report_is_recorded_cut_short() {
        let d = crate::api::v1::MeshDenial {
            caller: "c".repeat(100_000),
            service_id: "s".repeat(100_000),
            task_id: "t1".into(),
            target_port: 443,
            reason: "r".repeat(100_000),
        };
        let peer = "10.0.0.1:4000".parse().unwrap();
        let ev = denial_record("n1", &d, peer, Some("db"));
        let text = serde_json::to_string(&ev).unwrap();
        assert!(text.len() < 2_000, "{} bytes", text.len());
        assert!(
            text.contains("mesh.connect") && text.contains("\"db\""),
            "{text}"
        );
    }
}
