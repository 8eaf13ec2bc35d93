//! The policy engine: decides, with [Cedar](https://www.cedarpolicy.com/) policies, whether a
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
//! [`MAX_NESTING`] or puts more than [`MAX_OPERATORS_PER_POLICY`] operators in one policy:
//! Cedar 4 has no depth limit of its own, and a hundred or so nested parentheses overflow its
//! parser's stack, which aborts the process.
//!
//! Callers that evaluate on every state change use [`cached`], which keeps the last few parsed
//! texts keyed by their SHA-256 [`digest`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use cedar_policy::ffi::DetailedError;
use cedar_policy::{
    AuthorizationError, Authorizer, Context, Decision as CedarDecision, Effect, Entities, Entity,
    EntityId, EntityTypeName, EntityUid, PolicyId, PolicySet, Request, RestrictedExpression,
    Schema, ValidationMode, Validator,
};
use sha2::{Digest, Sha256};

pub mod rbac;

/// The Cedar schema every policy is validated against (`policies/schema.cedarschema`).
pub const SCHEMA: &str = include_str!("../../policies/schema.cedarschema");

/// The built-in policy, in force until an operator installs another (`policies/default.cedar`):
/// a service may use the secrets it references.
pub const DEFAULT_POLICY: &str = include_str!("../../policies/default.cedar");

/// The largest policy text accepted, in bytes (1 MiB).
pub const MAX_POLICY_BYTES: usize = 1024 * 1024;

/// The deepest brackets (`(`, `[`, `{`, counting the policy's own `(` and `{`) may nest.
pub const MAX_NESTING: usize = 32;

/// The most operators one policy may contain (`.`, `!`, `-`, `+`, `*`, comparisons, `&&`, `||`,
/// `in`, `has`, `like`, `is`, `if`). A chain of binary operators nests as deeply as it is long,
/// and Cedar's evaluator needs stack for every level: at this limit an accepted policy still
/// evaluates on a 2 MiB thread (a tokio worker's) in release builds, with room to spare.
/// (Beyond its stack, Cedar stops with a "recursion limit" error, which denies.)
pub const MAX_OPERATORS_PER_POLICY: usize = 200;

/// Stack for the parser thread: ample for [`MAX_NESTING`] and [`MAX_OPERATORS_PER_POLICY`] even
/// in debug builds; only the pages touched are ever committed.
const PARSE_STACK_BYTES: usize = 64 * 1024 * 1024;

/// How many parsed policy texts [`cached`] keeps.
const CACHE_SLOTS: usize = 4;

/// Why a policy text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The text is larger than [`MAX_POLICY_BYTES`].
    #[error(
        "policy text is {size} bytes, over the {limit}-byte limit; remove unused rules or merge \
         similar ones"
    )]
    TooLarge {
        /// Size of the refused text in bytes.
        size: usize,
        /// The limit, [`MAX_POLICY_BYTES`].
        limit: usize,
    },
    /// The text nests too deeply or packs too many operators into one policy, which could
    /// exhaust the stack of the Cedar parser or evaluator.
    #[error("policy is too complex: {message}")]
    TooComplex {
        /// What limit was hit, where, and how to restructure the policy.
        message: String,
    },
    /// The text is not valid Cedar.
    #[error(
        "policy does not parse: {message}; fix the text and check it with `skep policy validate FILE`"
    )]
    Parse {
        /// Cedar's errors, each prefixed with its line:column.
        message: String,
    },
    /// The text parses but does not type-check strictly against [`SCHEMA`], or uses a feature
    /// skep does not support (templates).
    #[error(
        "policy is not valid for skep's schema: {message}; see policies/README.md for the entity \
         model and check the file with `skep policy validate FILE`"
    )]
    Invalid {
        /// Cedar's validation errors, each prefixed with its line:column.
        message: String,
    },
    /// The built-in schema itself failed to load: a bug in skep, not in the policy.
    #[error(
        "skep's built-in policy schema failed to load ({message}); this is a bug in skep, please report it"
    )]
    Schema {
        /// Cedar's error.
        message: String,
    },
}

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

/// The schema-derived pieces shared by every engine, built once per process.
struct Model {
    validator: Validator,
    authorizer: Authorizer,
    service: EntityTypeName,
    secret: EntityTypeName,
    node: EntityTypeName,
    use_secret: EntityUid,
    /// The schema's action entities, added to every request's entity store.
    actions: Vec<Entity>,
}

impl Model {
    fn build() -> Result<Self, String> {
        let (schema, _warnings) = Schema::from_cedarschema_str(SCHEMA)
            .map_err(|e| render_diagnostic(&DetailedError::from(&e), SCHEMA))?;
        let ty = |name: &str| {
            EntityTypeName::from_str(name).map_err(|e| format!("entity type {name}: {e}"))
        };
        let action =
            EntityUid::from_type_name_and_id(ty("Skep::Action")?, EntityId::new("UseSecret"));
        let actions = schema
            .action_entities()
            .map_err(|e| format!("action entities: {e}"))?
            .iter()
            .cloned()
            .collect();
        Ok(Model {
            validator: Validator::new(schema),
            authorizer: Authorizer::new(),
            service: ty("Skep::Service")?,
            secret: ty("Skep::Secret")?,
            node: ty("Skep::Node")?,
            use_secret: action,
            actions,
        })
    }

    fn schema(&self) -> &Schema {
        self.validator.schema()
    }
}

/// The process-wide [`Model`], or why the built-in schema failed to load.
fn model() -> Result<&'static Model, PolicyError> {
    static MODEL: OnceLock<Result<Model, String>> = OnceLock::new();
    MODEL
        .get_or_init(Model::build)
        .as_ref()
        .map_err(|message| PolicyError::Schema {
            message: message.clone(),
        })
}

/// A parsed, validated policy set, ready to answer [`PolicyEngine::use_secret`].
pub struct PolicyEngine {
    text: String,
    digest: String,
    policies: PolicySet,
    warnings: Vec<String>,
    /// When set, the engine could not be built and denies everything with this reason.
    broken: Option<String>,
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
        let model = model()?;
        parse_bounded(text, move |t| PolicyEngine::parse_on_this_thread(t, model))
    }

    fn parse_on_this_thread(text: String, model: &Model) -> Result<PolicyEngine, PolicyError> {
        let policies = PolicySet::from_str(&text).map_err(|errors| PolicyError::Parse {
            message: render_all(errors.iter().map(DetailedError::from), &text),
        })?;
        if policies.templates().next().is_some() {
            return Err(PolicyError::Invalid {
                message: "policy templates (`?principal` / `?resource` slots) are not supported; \
                          name the entities in the policy itself or use `is` and `when`"
                    .to_string(),
            });
        }
        let result = model.validator.validate(&policies, ValidationMode::Strict);
        if !result.validation_passed() {
            return Err(PolicyError::Invalid {
                message: render_all(result.validation_errors().map(DetailedError::from), &text),
            });
        }
        let warnings = result
            .validation_warnings()
            .map(|w| render_diagnostic(&DetailedError::from(w), &text))
            .collect();
        Ok(PolicyEngine {
            digest: digest(&text),
            text,
            policies,
            warnings,
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
        entities.extend(model.actions.iter().cloned());
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

        let response = model
            .authorizer
            .is_authorized(&request, &self.policies, &entities);
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
            return Ok(if errors.is_empty() {
                Decision::Allow
            } else {
                Decision::Deny {
                    reason: errors_note(),
                }
            });
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
            format!(
                "no policy permits service {} to use secret {} on node {}",
                service.name, secret.name, node.hostname
            )
        } else {
            forbids.join("; ")
        };
        if !errors.is_empty() {
            reason.push_str("; ");
            reason.push_str(&errors_note());
        }
        Ok(Decision::Deny { reason })
    }
}

/// Parses a policy text within skep's limits: at most [`MAX_POLICY_BYTES`], nesting and
/// operators bounded ([`check_complexity`]), and the Cedar parse itself ([`on_big_stack`])
/// on a thread whose stack covers the deepest text let through: Cedar's parser recurses once
/// per nesting level with large frames (tens of KiB per bracket in debug builds).
fn parse_bounded<T: Send + 'static>(
    text: &str,
    parse: impl Fn(String) -> Result<T, PolicyError> + Clone + Send + 'static,
) -> Result<T, PolicyError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::TooLarge {
            size: text.len(),
            limit: MAX_POLICY_BYTES,
        });
    }
    check_complexity(text)?;
    let owned = text.to_string();
    let on_thread = parse.clone();
    on_big_stack(move || on_thread(owned)).unwrap_or_else(|| parse(text.to_string()))
}

/// Runs a Cedar parse on a thread whose stack comfortably covers the deepest text
/// [`check_complexity`] lets through. `None` if no thread could be had (resource exhaustion:
/// the nesting limits keep the parse within an ordinary stack in release builds, so the caller
/// parses on its own thread then); a panic in the parser becomes a parse error.
fn on_big_stack<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, PolicyError> + Send + 'static,
) -> Option<Result<T, PolicyError>> {
    let handle = std::thread::Builder::new()
        .name("skep-policy-parse".to_string())
        .stack_size(PARSE_STACK_BYTES)
        .spawn(f)
        .ok()?;
    Some(handle.join().unwrap_or_else(|_| {
        Err(PolicyError::Parse {
            message: "the Cedar parser failed unexpectedly on this text (please report it as a \
                      bug in skep, with the text)"
                .to_string(),
        })
    }))
}

/// `Type::"id"`.
fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
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

    let mut entities = Vec::with_capacity(referenced.len() + 3 + model.actions.len());
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
    entities.push(
        Entity::new_with_tags(
            uid(&model.node, node.id),
            [
                ("id".to_string(), string(node.id)),
                ("role".to_string(), string(node.role)),
            ],
            [],
            tags(node.labels),
        )
        .map_err(|e| format!("node {}: {e}", node.hostname))?,
    );
    Ok(entities)
}

/// Hex SHA-256 of `text`: the identity of a policy text in the cluster state and the cache.
pub fn digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
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

/// Refuses text whose brackets nest deeper than [`MAX_NESTING`] or one of whose policies has
/// more than [`MAX_OPERATORS_PER_POLICY`] operators, before Cedar sees it: Cedar (4.14) has no
/// depth limit of its own and recurses once per nesting level when parsing and dropping a
/// policy, so deep enough text would overflow the stack and abort the process.
///
/// A light lexer is enough: it skips `//` comments and string literals and counts brackets and
/// operator tokens; policies end at a `;` outside brackets.
fn check_complexity(text: &str) -> Result<(), PolicyError> {
    let bytes = text.as_bytes();
    let too_complex = |at: usize, what: String| PolicyError::TooComplex {
        message: {
            let (line, column) = line_column(text, at);
            format!("{line}:{column}: {what}")
        },
    };
    let mut depth = 0usize;
    let mut operators = 0usize;
    let mut policy_start = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let next = bytes.get(i + 1).copied();
        let mut width = 1;
        let mut operator = false;
        match b {
            b'/' if next == Some(b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
                continue;
            }
            b'"' => {
                policy_start.get_or_insert(i);
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                continue;
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(too_complex(
                        i,
                        format!(
                            "brackets nest more than {MAX_NESTING} deep; flatten the condition \
                             (e.g. `a && b` instead of nested `if`s or parentheses) or split it \
                             into several policies"
                        ),
                    ));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b';' if depth == 0 => {
                operators = 0;
                policy_start = None;
                i += 1;
                continue;
            }
            b'&' | b'|' | b'=' | b'!' | b'<' | b'>' => {
                operator = true;
                if next == Some(b'=') || (matches!(b, b'&' | b'|') && next == Some(b)) {
                    width = 2;
                }
            }
            b'.' | b'+' | b'-' | b'*' => operator = true,
            _ if b.is_ascii_alphabetic() || b == b'_' => {
                while i + width < bytes.len()
                    && (bytes[i + width].is_ascii_alphanumeric() || bytes[i + width] == b'_')
                {
                    width += 1;
                }
                operator = matches!(
                    &bytes[i..i + width],
                    b"if" | b"in" | b"has" | b"like" | b"is"
                );
            }
            _ => {}
        }
        if !b.is_ascii_whitespace() {
            policy_start.get_or_insert(i);
        }
        if operator {
            operators += 1;
            if operators > MAX_OPERATORS_PER_POLICY {
                return Err(too_complex(
                    policy_start.unwrap_or(i),
                    format!(
                        "this policy has more than {MAX_OPERATORS_PER_POLICY} operators; split it \
                         into several policies (any applicable forbid denies, any applicable \
                         permit allows) or test set membership with `[..].contains(x)`"
                    ),
                ));
            }
        }
        i += width;
    }
    Ok(())
}

/// Renders several Cedar diagnostics (and their related ones) as `line:col: message` joined
/// with "; ".
fn render_all(errors: impl Iterator<Item = DetailedError>, text: &str) -> String {
    let mut out = Vec::new();
    for error in errors {
        push_rendered(&error, text, &mut out);
    }
    if out.is_empty() {
        out.push("unknown error".to_string());
    }
    out.join("; ")
}

fn push_rendered(error: &DetailedError, text: &str, out: &mut Vec<String>) {
    let rendered = render_diagnostic(error, text);
    if !out.contains(&rendered) {
        out.push(rendered);
    }
    for related in &error.related {
        push_rendered(related, text, out);
    }
}

/// One Cedar diagnostic as `line:col: message (help)`, quoting the text it points at.
fn render_diagnostic(error: &DetailedError, text: &str) -> String {
    let mut s = String::new();
    if let Some(label) = error.source_locations.first() {
        let (line, column) = line_column(text, label.loc.start);
        s.push_str(&format!("{line}:{column}: "));
        s.push_str(&error.message);
        let snippet = text
            .get(label.loc.start..label.loc.end.min(text.len()))
            .unwrap_or("")
            .trim();
        if !snippet.is_empty()
            && !snippet.contains('\n')
            && snippet.chars().count() <= 60
            && !error.message.contains(&format!("`{snippet}`"))
        {
            s.push_str(&format!(" (at `{snippet}`)"));
        }
    } else {
        s.push_str(&error.message);
    }
    if let Some(help) = &error.help {
        s.push_str(&format!(" (help: {help})"));
    }
    s
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
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
        assert_eq!(default.policy_count(), 1);
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
            "policy no-workers forbids it; policy policy2 forbids it"
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
            "policy policy1: odd"
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
    fn line_column_handles_unicode_and_bounds() {
        assert_eq!(line_column("ab\ncé\nx", 0), (1, 1));
        assert_eq!(line_column("ab\ncé\nx", 3), (2, 1));
        assert_eq!(line_column("ab\ncé\nx", 6), (2, 3));
        assert_eq!(line_column("ab\ncé\nx", 5), (2, 2)); // inside é: clamps back
        assert_eq!(line_column("ab", 99), (1, 3));
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
        // Located at the start of the offending policy, after the default's 12 lines and a
        // blank one.
        assert!(
            message.starts_with(&format!(
                "14:1: this policy has more than {MAX_OPERATORS_PER_POLICY} operators"
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
