//! Secret entitlement: may a task's service use its secrets on a given node? Decided by the
//! Cedar policy set in force ([`crate::policy`]); asked by the scheduler (where a task may
//! go), the orchestrator (whether a running task keeps its place when labels change), the
//! dispatcher (before a value leaves the leader) and `service create/update` (a service that
//! no node could ever serve is refused).
//!
//! Pure functions of the replicated state, so every manager decides alike.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::policy::{Decision, NodeFacts, PolicyEngine, SecretFacts, ServiceFacts};
use crate::store::model::{Node, NodeRole, State};
use crate::store::service::TaskSpec;

/// A refusal: which secret, and the policy's reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// Name of the secret refused.
    pub secret: String,
    /// Why, in the policy's words.
    pub reason: String,
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "secret {}: {}", self.secret, self.reason)
    }
}

/// The policy engine for the state's policy set. A stored set that no longer parses (it was
/// checked before it was committed, so only a parser change could cause this) denies every
/// use: failing closed, with the parser's message as the reason.
pub fn engine(state: &State) -> Result<Arc<PolicyEngine>, String> {
    match &state.policy {
        None => Ok(PolicyEngine::default_policy()),
        Some(doc) => crate::policy::cached(&doc.text).map_err(|e| {
            format!("the installed policy set cannot be used ({e}); install a valid one with `skep policy set`")
        }),
    }
}

/// Role name as policies see it.
pub fn role_name(role: NodeRole) -> &'static str {
    match role {
        NodeRole::Manager => "manager",
        NodeRole::Worker => "worker",
    }
}

/// The service asking: its ID, name and labels.
pub struct ServiceId<'a> {
    /// Service ID.
    pub id: &'a str,
    /// Service name.
    pub name: &'a str,
    /// Service labels.
    pub labels: &'a BTreeMap<String, String>,
}

/// Everything a decision depends on: the policy set, the service's facts (its secret set
/// included), each secret's facts and the node's. Equal keys give equal decisions, because
/// Cedar's evaluation is a pure function of them.
#[derive(Clone, PartialEq, Eq, Hash)]
struct DecisionKey {
    policy: String,
    service: (String, String, BTreeMap<String, String>),
    secrets: Vec<(String, String, BTreeMap<String, String>)>,
    node: (String, String, &'static str, BTreeMap<String, String>),
}

/// Decisions already taken, across passes: the orchestrator and the dispatcher ask again on
/// every change and tick, and evaluating Cedar dominates their cost otherwise. Bounded: cleared
/// when it grows past [`DECISION_CACHE`] entries.
static DECISIONS: std::sync::Mutex<Option<HashMap<DecisionKey, Result<(), Denial>>>> =
    std::sync::Mutex::new(None);
const DECISION_CACHE: usize = 16_384;

/// Whether the service may use every secret `spec` references on `node`;
/// the first refusal otherwise. A spec without secrets is always entitled.
pub fn check(
    engine: &Result<Arc<PolicyEngine>, String>,
    state: &State,
    service: &ServiceId<'_>,
    spec: &TaskSpec,
    node: &Node,
) -> Result<(), Denial> {
    if spec.secrets.is_empty() {
        return Ok(());
    }
    let engine = match engine {
        Ok(e) => e,
        Err(reason) => {
            return Err(Denial {
                secret: spec.secrets[0].secret_name.clone(),
                reason: reason.clone(),
            });
        }
    };
    let key = DecisionKey {
        policy: engine.digest().to_string(),
        service: (
            service.id.to_string(),
            service.name.to_string(),
            service.labels.clone(),
        ),
        secrets: spec
            .secrets
            .iter()
            .map(|r| match state.secrets.get(&r.secret_id) {
                Some(s) => (s.id.clone(), s.name.clone(), s.labels.clone()),
                None => (r.secret_id.clone(), String::new(), BTreeMap::new()),
            })
            .collect(),
        node: (
            node.id.clone(),
            node.hostname.clone(),
            role_name(node.role),
            node.labels.clone(),
        ),
    };
    let cache = || DECISIONS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = cache().as_ref().and_then(|c| c.get(&key)) {
        return r.clone();
    }
    let r = evaluate(engine, state, service, spec, node);
    let mut c = cache();
    let map = c.get_or_insert_with(HashMap::new);
    if map.len() >= DECISION_CACHE {
        map.clear();
    }
    map.insert(key, r.clone());
    r
}

fn evaluate(
    engine: &PolicyEngine,
    state: &State,
    service: &ServiceId<'_>,
    spec: &TaskSpec,
    node: &Node,
) -> Result<(), Denial> {
    let ids: Vec<&str> = spec.secrets.iter().map(|r| r.secret_id.as_str()).collect();
    let svc_facts = ServiceFacts {
        id: service.id,
        name: service.name,
        labels: service.labels,
        secret_ids: &ids,
    };
    let node_facts = NodeFacts {
        id: &node.id,
        hostname: &node.hostname,
        role: role_name(node.role),
        labels: &node.labels,
    };
    for r in &spec.secrets {
        let Some(sec) = state.secrets.get(&r.secret_id) else {
            return Err(Denial {
                secret: r.secret_name.clone(),
                reason: "the secret no longer exists".into(),
            });
        };
        let facts = SecretFacts {
            id: &sec.id,
            name: &sec.name,
            labels: &sec.labels,
        };
        if let Decision::Deny { reason } = engine.use_secret(&svc_facts, &facts, &node_facts) {
            return Err(Denial {
                secret: sec.name.clone(),
                reason,
            });
        }
    }
    Ok(())
}

/// Service ID, spec version, node ID.
type MemoKey = (String, u64, String);

/// Remembers decisions within one pass over the state (the scheduler asks once per task and
/// node; tasks of one service at one spec version share the answer).
pub struct Memo<'a> {
    state: &'a State,
    engine: Result<Arc<PolicyEngine>, String>,
    seen: std::cell::RefCell<HashMap<MemoKey, Result<(), Denial>>>,
}

impl<'a> Memo<'a> {
    /// A memo over `state` with its policy set.
    pub fn new(state: &'a State) -> Self {
        Memo {
            state,
            engine: engine(state),
            seen: std::cell::RefCell::new(HashMap::new()),
        }
    }

    /// As [`check`], remembered by service, spec version and node.
    pub fn check(
        &self,
        service_id: &str,
        service_name: &str,
        spec_version: u64,
        spec: &TaskSpec,
        node: &Node,
    ) -> Result<(), Denial> {
        if spec.secrets.is_empty() {
            return Ok(());
        }
        let key = (service_id.to_string(), spec_version, node.id.clone());
        if let Some(r) = self.seen.borrow().get(&key) {
            return r.clone();
        }
        let empty = BTreeMap::new();
        let labels = self
            .state
            .services
            .get(service_id)
            .map_or(&empty, |s| &s.spec.labels);
        let service = ServiceId {
            id: service_id,
            name: service_name,
            labels,
        };
        let r = check(&self.engine, self.state, &service, spec, node);
        self.seen.borrow_mut().insert(key, r.clone());
        r
    }
}

/// At `service create/update`: refuses a spec whose secrets no node of the cluster may use,
/// with the policy's reason for the first node asked. Nodes that are down count: the policy,
/// not the weather, decides.
pub fn check_any_node(
    state: &State,
    service: &ServiceId<'_>,
    spec: &TaskSpec,
) -> Result<(), Denial> {
    if spec.secrets.is_empty() {
        return Ok(());
    }
    let engine = engine(state);
    let mut first = None;
    for node in state.nodes.values() {
        match check(&engine, state, service, spec, node) {
            Ok(()) => return Ok(()),
            Err(d) => {
                first.get_or_insert(d);
            }
        }
    }
    Err(first.unwrap_or_else(|| Denial {
        secret: spec.secrets[0].secret_name.clone(),
        reason: "the swarm has no nodes".into(),
    }))
}
