//! The secret-entitlement engine: decides, with [Cedar](https://www.cedarpolicy.com/) policies, whether a
//! service may have a secret delivered to one of its tasks on a given node.
//!
//! # Model
//!
//! Every decision is one Cedar request against the schema in [`SCHEMA`]
//! (`policies/schema.cedarschema`):
//!
//! ```text
//!  principal  Skep::Service::"<id>"   attrs id, name, secrets: Set<Skep::Secret>; tags: labels
//!  action     Skep::Action::"UseSecret"
//!  resource   Skep::Secret::"<id>"    attrs id, name;                             tags: labels
//!  context    { node: Skep::Node::"<id>" }
//!             Skep::Node              attrs id, role (no host name: self-chosen); tags: labels
//! ```
//!
//! Labels are entity *tags*, so a policy reads them with `hasTag` / `getTag` (strict validation
//! insists on the `hasTag` check first). `secrets` holds every secret the service spec
//! references. Only the requested secret carries its labels; the others are bare (their ID
//! stands in for their name), since a policy can test membership of a set but not iterate it.
//!
//! # Decisions
//!
//! Cedar denies by default: a request is allowed only when some `permit` applies and no
//! `forbid` does. An empty policy set is therefore valid and denies every secret. With no
//! policy installed the cluster runs [`DEFAULT_POLICY`], which reproduces Docker Swarm: a
//! service may use exactly the secrets it references.
//!
//! skep fails closed: if any policy fails to *evaluate* for a request (Cedar skips such a policy,
//! which could let a broken `forbid` turn into an allow), the request is denied and the
//! evaluation errors are quoted in the reason. Every other failure — an odd label that Cedar
//! refuses, a broken built-in schema — is also a [`Decision::Deny`] with a reason, never a panic.
//!
//! # Installing policies
//!
//! [`PolicyEngine::parse`] refuses text that is too large, does not parse, uses policy templates
//! or does not type-check strictly against the schema, with Cedar's own message and the
//! line:column it points at. It also refuses text that nests brackets deeper than
//! [`MAX_NESTING`] or puts more than [`MAX_OPERATORS_PER_POLICY`] operators in one policy (see
//! [`super::cedar`], the parse path it shares with RBAC).
//!
//! Callers that evaluate on every state change use [`cached`], which keeps the last few parsed
//! texts keyed by their SHA-256 [`digest`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use cedar_policy::{
    AuthorizationError, Context, Decision as CedarDecision, Effect, Entities, Entity, EntityId,
    EntityTypeName, EntityUid, PolicyId, PolicySet, Request, RestrictedExpression, Schema,
};

use super::cedar::{Loaded, MAX_POLICY_BYTES, PolicyError, digest, entity_type, loaded, uid};
#[cfg(any(doc, test))]
use super::cedar::{MAX_NESTING, MAX_OPERATORS_PER_POLICY};

/// The Cedar schema every policy is validated against (`policies/schema.cedarschema`).
pub const SCHEMA: &str = include_str!("../../policies/schema.cedarschema");

/// The built-in policy, in force until an operator installs another (`policies/default.cedar`):
/// a service may use the secrets it references.
pub const DEFAULT_POLICY: &str = include_str!("../../policies/default.cedar");

/// How many parsed policy texts [`cached`] keeps.
const CACHE_SLOTS: usize = 4;

/// What a policy sees of a node.
#[derive(Debug, Clone, Copy)]
pub struct NodeFacts<'a> {
    /// Node ID (the entity ID of `Skep::Node`).
    pub id: &'a str,
    /// Host name, as the node reported it: for messages only, never an entity attribute
    /// (a joining node chooses it, so no policy may rest on it).
    pub hostname: &'a str,
    /// `manager` or `worker`.
    pub role: &'a str,
    /// Node labels (`skep node update --label-add`), visible as tags.
    pub labels: &'a BTreeMap<String, String>,
}

/// What a policy sees of a secret.
#[derive(Debug, Clone, Copy)]
pub struct SecretFacts<'a> {
    /// Secret ID (the entity ID of `Skep::Secret`).
    pub id: &'a str,
    /// Secret name.
    pub name: &'a str,
    /// Secret labels (`skep secret create --label`), visible as tags.
    pub labels: &'a BTreeMap<String, String>,
}

/// What a policy sees of a service.
#[derive(Debug, Clone, Copy)]
pub struct ServiceFacts<'a> {
    /// Service ID (the entity ID of `Skep::Service`).
    pub id: &'a str,
    /// Service name.
    pub name: &'a str,
    /// Service labels (`skep service create --label`), visible as tags.
    pub labels: &'a BTreeMap<String, String>,
    /// IDs of the secrets the service spec references (its `secrets` attribute).
    pub secret_ids: &'a [&'a str],
}

/// The outcome of a policy check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The request is allowed.
    Allow,
    /// The request is denied.
    Deny {
        /// Why, in words an operator can act on: the forbidding policies' `@reason`s, or that no
        /// policy permits the request, plus any evaluation errors.
        reason: String,
    },
}

impl Decision {
    /// Whether this is [`Decision::Allow`].
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow)
    }
}

/// The schema-derived pieces of the secret policies, built once per process.
pub(super) struct Model {
    pub(super) cedar: Loaded,
    pub(super) service: EntityTypeName,
    secret: EntityTypeName,
    node: EntityTypeName,
    use_secret: EntityUid,
    pub(super) connect: EntityUid,
}

impl Model {
    fn build() -> Result<Self, String> {
        let cedar = Loaded::new(SCHEMA)?;
        let action = EntityUid::from_type_name_and_id(
            entity_type("Skep::Action")?,
            EntityId::new("UseSecret"),
        );
        let connect = EntityUid::from_type_name_and_id(
            entity_type("Skep::Action")?,
            EntityId::new("Connect"),
        );
        Ok(Model {
            cedar,
            service: entity_type("Skep::Service")?,
            secret: entity_type("Skep::Secret")?,
            node: entity_type("Skep::Node")?,
            use_secret: action,
            connect,
        })
    }

    pub(super) fn node(&self) -> &EntityTypeName {
        &self.node
    }

    pub(super) fn secret(&self) -> &EntityTypeName {
        &self.secret
    }

    pub(super) fn schema(&self) -> &Schema {
        self.cedar.schema()
    }
}

/// The process-wide [`Model`], or why the built-in schema failed to load.
pub(super) fn model() -> Result<&'static Model, PolicyError> {
    static MODEL: OnceLock<Result<Model, String>> = OnceLock::new();
    loaded(MODEL.get_or_init(Model::build))
}

/// A parsed, validated policy set, ready to answer [`PolicyEngine::use_secret`].
pub struct PolicyEngine {
    text: String,
    digest: String,
    policies: PolicySet,
    warnings: Vec<String>,
    /// When set, the engine could not be built and denies everything with this reason.
    pub(super) broken: Option<String>,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("digest", &self.digest)
            .field("bytes", &self.text.len())
            .field("policies", &self.policies.num_of_policies())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl PolicyEngine {
    /// Parses `text` and validates it strictly against [`SCHEMA`].
    ///
    /// Refuses text over [`MAX_POLICY_BYTES`], syntax errors, policy templates and anything the
    /// strict validator rejects; the error quotes Cedar with line:column. An empty text (or one
    /// with only comments) is a valid, empty policy set that denies every request.
    pub fn parse(text: &str) -> Result<PolicyEngine, PolicyError> {
        let parsed = model()?.cedar.parse(
            text,
            "policy templates (`?principal` / `?resource` slots) are not supported; name the \
             entities in the policy itself or use `is` and `when`",
        )?;
        Ok(PolicyEngine {
            digest: digest(&parsed.text),
            text: parsed.text,
            policies: parsed.policies,
            warnings: parsed.warnings,
            broken: None,
        })
    }

    /// The built-in [`DEFAULT_POLICY`], parsed once per process.
    ///
    /// Never panics: should the built-in text or schema ever fail to load, the returned engine
    /// denies every request with a reason that says so.
    pub fn default_policy() -> Arc<PolicyEngine> {
        static DEFAULT: OnceLock<Arc<PolicyEngine>> = OnceLock::new();
        DEFAULT
            .get_or_init(|| {
                Arc::new(PolicyEngine::parse(DEFAULT_POLICY).unwrap_or_else(|e| PolicyEngine {
                    text: DEFAULT_POLICY.to_string(),
                    digest: digest(DEFAULT_POLICY),
                    policies: PolicySet::new(),
                    warnings: Vec::new(),
                    broken: Some(format!(
                        "skep's built-in default secret policy failed to load, so every secret is \
                         denied ({e}); this is a bug in skep, please report it"
                    )),
                }))
            })
            .clone()
    }

    /// Hex SHA-256 of the policy text (see [`digest`]).
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The policy text exactly as given.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Number of policies (`permit` and `forbid` statements) in the set.
    pub fn policy_count(&self) -> usize {
        self.policies.num_of_policies()
    }

    /// The strict validator's warnings (e.g. a policy that can never apply), each with its
    /// line:column; they do not stop the policy from being installed.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// May `service` have `secret` delivered to one of its tasks on `node`?
    ///
    /// Denies, with a reason, when a `forbid` applies, when no `permit` does, when any policy
    /// fails to evaluate, and when the facts cannot be turned into a Cedar request.
    pub fn use_secret(
        &self,
        service: &ServiceFacts<'_>,
        secret: &SecretFacts<'_>,
        node: &NodeFacts<'_>,
    ) -> Decision {
        if let Some(reason) = &self.broken {
            return Decision::Deny {
                reason: reason.clone(),
            };
        }
        self.evaluate(service, secret, node)
            .unwrap_or_else(|why| Decision::Deny {
                reason: format!(
                    "could not check the secret policy for service {} using secret {} on node {}, \
                     so it is denied: {why}",
                    service.name, secret.name, node.hostname
                ),
            })
    }

    /// A policy's `@id` annotation, or Cedar's positional ID (`policy0`, ...) without one.
    fn policy_name(&self, id: &PolicyId) -> String {
        self.policies
            .policy(id)
            .and_then(|p| p.annotation("id"))
            .filter(|name| !name.is_empty())
            .map_or_else(|| id.to_string(), str::to_string)
    }

    fn evaluate(
        &self,
        service: &ServiceFacts<'_>,
        secret: &SecretFacts<'_>,
        node: &NodeFacts<'_>,
    ) -> Result<Decision, String> {
        let model = model().map_err(|e| e.to_string())?;
        let mut entities = request_entities(model, service, secret, node)?;
        entities.extend(model.cedar.actions.iter().cloned());
        // No schema here: the entities are built to the schema's shape (a test checks it), and
        // re-checking them on every call would double the cost of a decision.
        let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
        let node_uid = uid(&model.node, node.id);
        let context = Context::from_pairs([(
            "node".to_string(),
            RestrictedExpression::new_entity_uid(node_uid),
        )])
        .map_err(|e| e.to_string())?;
        let request = Request::new(
            uid(&model.service, service.id),
            model.use_secret.clone(),
            uid(&model.secret, secret.id),
            context,
            Some(model.schema()),
        )
        .map_err(|e| e.to_string())?;

        Ok(self.decide(model, &request, &entities, || {
            format!(
                "no policy permits service {} to use secret {} on node {}",
                service.name, secret.name, node.hostname
            )
        }))
    }

    /// Cedar's answer to `request`, as a [`Decision`]: denied when a `forbid` applies (its
    /// `@reason`s), when nothing permits it (`nothing_permits`), and when any policy fails to
    /// evaluate (fail closed).
    pub(super) fn decide(
        &self,
        model: &Model,
        request: &Request,
        entities: &Entities,
        nothing_permits: impl FnOnce() -> String,
    ) -> Decision {
        let response = model
            .cedar
            .authorizer
            .is_authorized(request, &self.policies, entities);
        // Sorted, like the forbids below: every manager must word a decision alike.
        let mut errors: Vec<String> = response
            .diagnostics()
            .errors()
            .map(|error| match error {
                AuthorizationError::PolicyEvaluationError(e) => {
                    format!("policy {}: {}", self.policy_name(e.policy_id()), e.inner())
                }
            })
            .collect();
        errors.sort();
        let errors_note = || {
            format!(
                "policy evaluation failed, which denies to be safe: {}",
                errors.join("; ")
            )
        };
        if response.decision() == CedarDecision::Allow {
            return if errors.is_empty() {
                Decision::Allow
            } else {
                Decision::Deny {
                    reason: errors_note(),
                }
            };
        }
        let mut forbids: Vec<String> = response
            .diagnostics()
            .reason()
            .filter_map(|id| self.policies.policy(id))
            .filter(|p| p.effect() == Effect::Forbid)
            .map(|p| match p.annotation("reason").filter(|r| !r.is_empty()) {
                Some(reason) => format!("policy {}: {reason}", self.policy_name(p.id())),
                None => format!("policy {} forbids it", self.policy_name(p.id())),
            })
            .collect();
        forbids.sort();
        let mut reason = if forbids.is_empty() {
            nothing_permits()
        } else {
            forbids.join("; ")
        };
        if !errors.is_empty() {
            reason.push_str("; ");
            reason.push_str(&errors_note());
        }
        Decision::Deny { reason }
    }
}

/// The entities one `UseSecret` request needs: the service, the requested secret with its
/// labels, the other secrets the service references, and the node.
fn request_entities(
    model: &Model,
    service: &ServiceFacts<'_>,
    secret: &SecretFacts<'_>,
    node: &NodeFacts<'_>,
) -> Result<Vec<Entity>, String> {
    let string = |s: &str| RestrictedExpression::new_string(s.to_string());
    let tags = |labels: &BTreeMap<String, String>| {
        labels
            .iter()
            .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone())))
            .collect::<Vec<_>>()
    };
    let referenced: BTreeSet<&str> = service.secret_ids.iter().copied().collect();

    let mut entities = Vec::with_capacity(referenced.len() + 3 + model.cedar.actions.len());
    entities.push(
        Entity::new_with_tags(
            uid(&model.service, service.id),
            [
                ("id".to_string(), string(service.id)),
                ("name".to_string(), string(service.name)),
                (
                    "secrets".to_string(),
                    RestrictedExpression::new_set(
                        referenced
                            .iter()
                            .map(|id| RestrictedExpression::new_entity_uid(uid(&model.secret, id))),
                    ),
                ),
            ],
            [],
            tags(service.labels),
        )
        .map_err(|e| format!("service {}: {e}", service.name))?,
    );
    entities.push(
        Entity::new_with_tags(
            uid(&model.secret, secret.id),
            [
                ("id".to_string(), string(secret.id)),
                ("name".to_string(), string(secret.name)),
            ],
            [],
            tags(secret.labels),
        )
        .map_err(|e| format!("secret {}: {e}", secret.name))?,
    );
    // Policies reach the other referenced secrets only through `principal.secrets`, which
    // Cedar can test but not iterate, so they are bare: their ID stands in for their name
    // and they carry no labels.
    for id in referenced.iter().filter(|id| **id != secret.id) {
        entities.push(
            Entity::new_with_tags(
                uid(&model.secret, id),
                [
                    ("id".to_string(), string(id)),
                    ("name".to_string(), string(id)),
                ],
                [],
                [],
            )
            .map_err(|e| format!("secret {id}: {e}"))?,
        );
    }
    entities.push(node_entity(model, node)?);
    Ok(entities)
}

/// A node as requests see it: its ID and role, its labels as tags.
pub(super) fn node_entity(model: &Model, node: &NodeFacts<'_>) -> Result<Entity, String> {
    Entity::new_with_tags(
        uid(&model.node, node.id),
        [
            (
                "id".to_string(),
                RestrictedExpression::new_string(node.id.to_string()),
            ),
            (
                "role".to_string(),
                RestrictedExpression::new_string(node.role.to_string()),
            ),
        ],
        [],
        node.labels
            .iter()
            .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone()))),
    )
    .map_err(|e| format!("node {}: {e}", node.hostname))
}

/// The engine for `text`, parsed at most once while it stays among the last few texts used
/// (errors are remembered too). An empty text means the built-in [`DEFAULT_POLICY`].
pub fn cached(text: &str) -> Result<Arc<PolicyEngine>, PolicyError> {
    type Slot = (String, Result<Arc<PolicyEngine>, PolicyError>);
    static CACHE: Mutex<VecDeque<Slot>> = Mutex::new(VecDeque::new());

    if text.is_empty() {
        return Ok(PolicyEngine::default_policy());
    }
    if text.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge {
            size: text.len(),
            limit: MAX_POLICY_BYTES,
        });
    }
    let key = digest(text);
    {
        let mut cache = CACHE
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(at) = cache.iter().position(|(k, _)| *k == key) {
            let slot = cache.remove(at);
            if let Some(slot) = slot {
                let result = slot.1.clone();
                cache.push_front(slot);
                return result;
            }
        }
    }
    // Parse outside the lock so a large policy does not stall other callers.
    let result = PolicyEngine::parse(text).map(Arc::new);
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !cache.iter().any(|(k, _)| *k == key) {
        cache.push_front((key, result.clone()));
        cache.truncate(CACHE_SLOTS);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str =
        include_str!("../../policies/examples/prod-secrets-on-secure-nodes.cedar");

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// Evaluates `engine` for service "web" (referencing `refs`) using secret "s1" labelled
    /// `secret_labels` on node "n1" labelled `node_labels`.
    fn check(
        engine: &PolicyEngine,
        refs: &[&str],
        secret_labels: &BTreeMap<String, String>,
        node_labels: &BTreeMap<String, String>,
    ) -> Decision {
        let none = BTreeMap::new();
        engine.use_secret(
            &ServiceFacts {
                id: "svc1",
                name: "web",
                labels: &none,
                secret_ids: refs,
            },
            &SecretFacts {
                id: "s1",
                name: "db-password",
                labels: secret_labels,
            },
            &NodeFacts {
                id: "n1",
                hostname: "node-1",
                role: "worker",
                labels: node_labels,
            },
        )
    }

    fn deny_reason(d: Decision) -> String {
        match d {
            Decision::Deny { reason } => reason,
            Decision::Allow => panic!("expected a deny"),
        }
    }

    #[test]
    fn builtin_files_parse() {
        assert!(model().is_ok());
        let default = PolicyEngine::parse(DEFAULT_POLICY).unwrap();
        // Services use their secrets; services connect to services.
        assert_eq!(default.policy_count(), 2);
        assert!(default.warnings().is_empty(), "{:?}", default.warnings());
        let example = PolicyEngine::parse(EXAMPLE).unwrap();
        assert_eq!(example.policy_count(), 2);
        assert!(example.warnings().is_empty(), "{:?}", example.warnings());
        assert!(PolicyEngine::default_policy().broken.is_none());
    }

    #[test]
    fn default_allows_referenced_and_denies_unreferenced() {
        let engine = PolicyEngine::default_policy();
        let none = BTreeMap::new();
        assert_eq!(check(&engine, &["s0", "s1"], &none, &none), Decision::Allow);
        assert_eq!(check(&engine, &["s1", "s1"], &none, &none), Decision::Allow);
        let reason = deny_reason(check(&engine, &["s0", "s2"], &none, &none));
        assert_eq!(
            reason,
            "no policy permits service web to use secret db-password on node node-1"
        );
        assert!(!check(&engine, &[], &none, &none).is_allowed());
    }

    #[test]
    fn example_keeps_prod_secrets_on_secure_nodes() {
        let engine = PolicyEngine::parse(EXAMPLE).unwrap();
        let prod = labels(&[("tier", "prod")]);
        let secure = labels(&[("secure", "true"), ("zone", "a")]);
        let insecure = labels(&[("secure", "false")]);
        let none = BTreeMap::new();

        let reason = deny_reason(check(&engine, &["s1"], &prod, &none));
        assert_eq!(
            reason,
            "policy prod-secrets-on-secure-nodes: secrets labelled tier=prod may only be used on \
             nodes labelled secure=true"
        );
        assert!(!check(&engine, &["s1"], &prod, &insecure).is_allowed());
        assert_eq!(check(&engine, &["s1"], &prod, &secure), Decision::Allow);
        // Non-prod secrets go anywhere their service references them.
        let dev = labels(&[("tier", "dev")]);
        assert_eq!(check(&engine, &["s1"], &dev, &none), Decision::Allow);
        assert_eq!(check(&engine, &["s1"], &none, &insecure), Decision::Allow);
        // The forbid does not create permits.
        assert!(!check(&engine, &["s2"], &dev, &secure).is_allowed());
    }

    #[test]
    fn no_policy_can_rest_on_a_self_chosen_host_name() {
        let text = format!(
            "{DEFAULT_POLICY}\nforbid (principal, action, resource) unless \
             {{ [\"node-1\"].contains(context.node.hostname) }};"
        );
        let e = PolicyEngine::parse(&text).expect_err("refused").to_string();
        assert!(e.contains("hostname"), "{e}");
    }

    #[test]
    fn forbid_without_reason_is_named_by_id() {
        let text = format!(
            "{DEFAULT_POLICY}\n@id(\"no-workers\") forbid (principal, action, resource) when \
             {{ context.node.role == \"worker\" }};\n\
             forbid (principal, action, resource) when {{ context.node.id == \"n1\" }};"
        );
        let engine = PolicyEngine::parse(&text).unwrap();
        let none = BTreeMap::new();
        let reason = deny_reason(check(&engine, &["s1"], &none, &none));
        assert_eq!(
            reason,
            // The default's two policies are policy0 and policy1.
            "policy no-workers forbids it; policy policy3 forbids it"
        );
    }

    #[test]
    fn syntax_error_is_refused_with_location() {
        let err = PolicyEngine::parse("permit (principal, action, resource)\nwhen { principal. };")
            .unwrap_err();
        let PolicyError::Parse { message } = &err else {
            panic!("expected a parse error, got {err:?}");
        };
        assert!(message.starts_with("2:"), "{message}");
        assert!(err.to_string().contains("skep policy validate"), "{err}");

        let err =
            PolicyEngine::parse("permit (principal, action, resource) when { true }").unwrap_err();
        assert!(matches!(err, PolicyError::Parse { .. }), "{err:?}");
    }

    #[test]
    fn ill_typed_policy_is_invalid() {
        let err = PolicyEngine::parse(
            "permit (principal is Skep::Service, action == Skep::Action::\"UseSecret\", \
             resource)\nwhen { principal.nosuch == 1 };",
        )
        .unwrap_err();
        let PolicyError::Invalid { message } = &err else {
            panic!("expected invalid, got {err:?}");
        };
        assert!(message.starts_with("2:8: "), "{message}");
        assert!(message.contains("nosuch"), "{message}");

        // getTag without hasTag, an unknown action and an unknown entity type are refused too.
        for text in [
            "permit (principal, action, resource) when { resource.getTag(\"tier\") == \"x\" };",
            "permit (principal, action == Skep::Action::\"Nope\", resource);",
            "permit (principal is Skep::Operator, action, resource);",
            "permit (principal == ?principal, action, resource);",
        ] {
            let err = PolicyEngine::parse(text).unwrap_err();
            assert!(
                matches!(err, PolicyError::Invalid { .. }),
                "{text}: {err:?}"
            );
        }
    }

    #[test]
    fn empty_policy_denies_and_cached_empty_is_default() {
        let empty = PolicyEngine::parse("// nothing here\n").unwrap();
        assert_eq!(empty.policy_count(), 0);
        let none = BTreeMap::new();
        assert!(!check(&empty, &["s1"], &none, &none).is_allowed());

        let default = cached("").unwrap();
        assert!(Arc::ptr_eq(&default, &PolicyEngine::default_policy()));
        assert_eq!(default.digest(), digest(DEFAULT_POLICY));
        assert_eq!(default.text(), DEFAULT_POLICY);
    }

    #[test]
    fn cache_reuses_parsed_engines() {
        let a = cached(EXAMPLE).unwrap();
        let b = cached(EXAMPLE).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.digest(), digest(EXAMPLE));
        assert!(cached("permit (").is_err());
        assert!(cached("permit (").is_err());
        // Push it out with other texts, then it is parsed again (a new Arc).
        for i in 0..CACHE_SLOTS + 2 {
            cached(&format!("// filler {i}\n{DEFAULT_POLICY}")).unwrap();
        }
        let c = cached(EXAMPLE).unwrap();
        assert_eq!(c.digest(), a.digest());
    }

    #[test]
    fn oversize_text_is_refused() {
        let text = format!("{DEFAULT_POLICY}{}", " ".repeat(MAX_POLICY_BYTES));
        assert!(matches!(
            PolicyEngine::parse(&text),
            Err(PolicyError::TooLarge {
                limit: MAX_POLICY_BYTES,
                ..
            })
        ));
        assert!(matches!(cached(&text), Err(PolicyError::TooLarge { .. })));
    }

    #[test]
    fn odd_labels_and_ids_work() {
        let text = format!(
            "{DEFAULT_POLICY}\n@reason(\"odd\") forbid (principal, action, resource) when \
             {{ resource.hasTag(\"we\\\"ird\\nkey\") && resource.getTag(\"we\\\"ird\\nkey\") == \
             \"v\\u{{e9}} \\\"q\\\"\\n\\u{{1f600}}\" }};"
        );
        let engine = PolicyEngine::parse(&text).unwrap();
        let node = labels(&[("", ""), ("a\0b", "\u{202e}rtl"), ("ключ", "значение")]);
        let odd = labels(&[("we\"ird\nkey", "v\u{e9} \"q\"\n\u{1f600}")]);
        let none = BTreeMap::new();
        assert_eq!(
            deny_reason(check(&engine, &["s1"], &odd, &node)),
            "policy policy2: odd"
        );
        assert_eq!(check(&engine, &["s1"], &none, &node), Decision::Allow);

        // IDs and names with quotes, newlines and `::` are just strings to Cedar.
        let engine = PolicyEngine::default_policy();
        let weird = "a\"b::\n\u{1f600}";
        let decision = engine.use_secret(
            &ServiceFacts {
                id: weird,
                name: weird,
                labels: &node,
                secret_ids: &[weird, "", "other"],
            },
            &SecretFacts {
                id: weird,
                name: weird,
                labels: &odd,
            },
            &NodeFacts {
                id: weird,
                hostname: weird,
                role: weird,
                labels: &node,
            },
        );
        assert_eq!(decision, Decision::Allow);
    }

    #[test]
    fn debug_does_not_dump_the_policy() {
        let engine = PolicyEngine::default_policy();
        let debug = format!("{engine:?}");
        assert!(debug.contains(engine.digest()));
        assert!(!debug.contains("permit"));
    }

    #[test]
    fn deep_or_long_policies_are_refused_before_cedar_sees_them() {
        let head = "permit (principal, action, resource) when { ";
        // `{` of the condition is level 1, so 31 parentheses reach the limit.
        let nested = |n: usize| format!("{head}{}true{} }};", "(".repeat(n), ")".repeat(n));
        assert!(PolicyEngine::parse(&nested(MAX_NESTING - 1)).is_ok());
        let err = PolicyEngine::parse(&nested(MAX_NESTING)).unwrap_err();
        let PolicyError::TooComplex { message } = &err else {
            panic!("expected too complex, got {err:?}");
        };
        assert!(
            message.starts_with("1:76: brackets nest more than 32 deep"),
            "{message}"
        );
        // Hostile depth is refused quickly, not by overflowing the stack.
        let hostile = nested(200_000);
        assert!(matches!(
            PolicyEngine::parse(&hostile),
            Err(PolicyError::TooComplex { .. })
        ));

        let sum = |n: usize| format!("{head}1{} == {} }};", " + 1".repeat(n), n + 1);
        assert!(PolicyEngine::parse(&sum(MAX_OPERATORS_PER_POLICY - 1)).is_ok());
        let err = PolicyEngine::parse(&format!(
            "{DEFAULT_POLICY}\n{}",
            sum(MAX_OPERATORS_PER_POLICY)
        ))
        .unwrap_err();
        let PolicyError::TooComplex { message } = &err else {
            panic!("expected too complex, got {err:?}");
        };
        // Located at the start of the offending policy, after the default's lines and a
        // blank one.
        let line = DEFAULT_POLICY.lines().count() + 2;
        assert!(
            message.starts_with(&format!(
                "{line}:1: this policy has more than {MAX_OPERATORS_PER_POLICY} operators"
            )),
            "{message}"
        );

        // The limit is per policy, and brackets and operators in strings and comments do not
        // count.
        let many = (0..4)
            .map(|_| sum(MAX_OPERATORS_PER_POLICY - 20))
            .collect::<String>();
        assert_eq!(PolicyEngine::parse(&many).unwrap().policy_count(), 4);
        let quiet = format!(
            "// {}\n@note(\"{} \\\" {}\")\n{DEFAULT_POLICY}",
            "((((+".repeat(2000),
            "[[[[-".repeat(2000),
            "{{{{.".repeat(2000)
        );
        PolicyEngine::parse(&quiet).unwrap();
    }

    #[test]
    fn deepest_accepted_policies_evaluate_on_a_small_stack() {
        let head = "permit (principal, action, resource) when { ";
        let deep = format!(
            "{head}{}1{} == {}{} }};",
            "(".repeat(MAX_NESTING - 1),
            " + 1".repeat(MAX_OPERATORS_PER_POLICY - 1),
            MAX_OPERATORS_PER_POLICY,
            ")".repeat(MAX_NESTING - 1)
        );
        let ifs = format!(
            "{head}{}true{} }};",
            "if true then ".repeat(MAX_OPERATORS_PER_POLICY),
            " else false".repeat(MAX_OPERATORS_PER_POLICY)
        );
        for text in [deep, ifs] {
            let engine = PolicyEngine::parse(&text).unwrap();
            // Evaluate and drop on a thread no bigger than a tokio worker's (debug builds use
            // about ten times more stack per level).
            let stack = if cfg!(debug_assertions) { 32 } else { 2 } * 1024 * 1024;
            let decision = std::thread::Builder::new()
                .stack_size(stack)
                .spawn(move || {
                    let none = BTreeMap::new();
                    let decision = check(&engine, &["s1"], &none, &none);
                    drop(engine);
                    decision
                })
                .unwrap()
                .join()
                .unwrap();
            assert_eq!(decision, Decision::Allow);
        }
    }

    #[test]
    fn request_entities_conform_to_the_schema() {
        let model = model().unwrap();
        let odd = labels(&[("tier", "prod"), ("we\"ird\n", "\u{1f600}")]);
        let entities = request_entities(
            model,
            &ServiceFacts {
                id: "svc1",
                name: "web",
                labels: &odd,
                secret_ids: &["s0", "s1", "s0", "s2"],
            },
            &SecretFacts {
                id: "s1",
                name: "db-password",
                labels: &odd,
            },
            &NodeFacts {
                id: "n1",
                hostname: "node-1",
                role: "manager",
                labels: &odd,
            },
        )
        .unwrap();
        // Service, the requested secret, the two other referenced secrets and the node.
        assert_eq!(entities.len(), 5);
        Entities::from_entities(entities, Some(model.schema())).unwrap();
    }

    #[test]
    fn evaluation_errors_fail_closed() {
        // Cedar skips a policy that errors; a forbid that errors must not turn into an allow.
        let text = format!(
            "{DEFAULT_POLICY}\n@id(\"overflowing-forbid\")\nforbid (principal, action, resource) \
             when {{ 9223372036854775807 + 1 == 0 }};"
        );
        let engine = PolicyEngine::parse(&text).unwrap();
        let none = BTreeMap::new();
        let reason = deny_reason(check(&engine, &["s1"], &none, &none));
        assert!(
            reason.starts_with(
                "policy evaluation failed, which denies to be safe: policy overflowing-forbid: \
                 integer overflow"
            ),
            "{reason}"
        );
        // Unreferenced: no permit, and the error is reported too.
        let reason = deny_reason(check(&engine, &["s2"], &none, &none));
        assert!(
            reason.starts_with(
                "no policy permits service web to use secret db-password on node node-1; policy \
                 evaluation failed"
            ),
            "{reason}"
        );
    }
}
