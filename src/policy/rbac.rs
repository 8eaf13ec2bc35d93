//! Operator RBAC: which Control API calls an operator (a person with an operator certificate)
//! may make, decided by a Cedar policy set validated against `policies/rbac.cedarschema`.
//!
//! A request is `(Skep::Operator::"NAME" in Skep::Role::"ROLE", Skep::Action::"ACTION",
//! Skep::Resource::"KIND")`. The default set (`policies/rbac.cedar`) has three roles: admin
//! (everything), deployer (read, deploy) and auditor (read, the audit log). Evaluation fails
//! closed: a policy that errors denies.
//!
//! A service create or update is also decided on what its spec asks for ([`SpecFacts`], the
//! `Deploy` action's context: `runtime`, and `managers`, whether its tasks may land on a
//! manager), so a policy can say which runtimes and placements a role may use; and what it
//! mounts (`bind_mounts`, `bind_sources`, `volumes`, `volume_names`, `tmpfs`). Each bind mount
//! is also its own `BindMount` request (`context.source`, `context.read_only`), so a policy can
//! allow host paths by prefix (`context.source like "/srv/data/*"`): the default lets only
//! admins bind.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use cedar_policy::{
    Context, Decision as CedarDecision, Effect, Entities, Entity, EntityTypeName, PolicySet,
    Request, RestrictedExpression,
};

use super::cedar::{Loaded, PolicyError, digest, entity_type, loaded, uid};

/// The schema RBAC policies are validated against.
pub const SCHEMA: &str = include_str!("../../policies/rbac.cedarschema");
/// The RBAC policies in force until `policy set --rbac` replaces them.
pub const DEFAULT_POLICY: &str = include_str!("../../policies/rbac.cedar");

/// What an operator's call does, as the RBAC schema names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// List and inspect (not secret values, not tokens).
    Read,
    /// Read the audit log.
    ReadAudit,
    /// Read the cluster's events (`skep events`).
    ReadEvents,
    /// Manage services.
    Deploy,
    /// Create and remove secrets.
    ManageSecrets,
    /// Update, promote, demote, remove nodes.
    ManageNodes,
    /// Read and rotate join tokens.
    ManageTokens,
    /// Swarm settings, unlock key, root CA, policies.
    ManageSwarm,
    /// Sign and revoke operators.
    ManageOperators,
    /// Bind a path of the nodes' file system into a service's tasks (decided once per bind
    /// mount, with `context.source` and `context.read_only`): root-equivalent.
    BindMount,
}

impl Action {
    /// The Cedar action name.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Read => "Read",
            Action::ReadAudit => "ReadAudit",
            Action::ReadEvents => "ReadEvents",
            Action::Deploy => "Deploy",
            Action::ManageSecrets => "ManageSecrets",
            Action::ManageNodes => "ManageNodes",
            Action::ManageTokens => "ManageTokens",
            Action::ManageSwarm => "ManageSwarm",
            Action::ManageOperators => "ManageOperators",
            Action::BindMount => "BindMount",
        }
    }

    /// How a denial words it: "may not ...".
    pub fn describe(self) -> &'static str {
        match self {
            Action::Read => "read cluster state",
            Action::ReadAudit => "read the audit log",
            Action::ReadEvents => "read cluster events",
            Action::Deploy => "manage services",
            Action::ManageSecrets => "create or remove secrets",
            Action::ManageNodes => "change or remove nodes",
            Action::ManageTokens => "read or rotate join tokens",
            Action::ManageSwarm => "change swarm settings, keys or policies",
            Action::ManageOperators => "sign or revoke operators",
            Action::BindMount => "bind-mount this host path into tasks",
        }
    }
}

/// Who asks: an operator and the role the cluster state gives it.
#[derive(Clone, Debug)]
pub struct Principal<'a> {
    /// Operator name.
    pub name: &'a str,
    /// Its role.
    pub role: &'a str,
}

/// What a service spec asks for, as the `Deploy` action's context shows it to policies.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SpecFacts {
    /// `context.runtime`: "exec" or "docker".
    pub runtime: &'static str,
    /// `context.managers`: whether its placement constraints leave managers eligible (only
    /// `node.role==worker` or `node.role!=manager` rule them out).
    pub managers: bool,
    /// `context.secrets`: the names of the secrets its tasks would receive, sorted, once each.
    pub secrets: Vec<String>,
    /// `context.bind_mounts`: whether it binds any host path.
    pub bind_mounts: bool,
    /// `context.bind_sources`: the host paths it binds, sorted, once each.
    pub bind_sources: Vec<String>,
    /// `context.volumes`: whether it mounts named volumes.
    pub volumes: bool,
    /// `context.volume_names`: the names of those volumes, sorted, once each.
    pub volume_names: Vec<String>,
    /// `context.tmpfs`: whether it mounts a tmpfs.
    pub tmpfs: bool,
    /// `context.limit_memory_bytes`, `context.limit_nano_cpus`, `context.limit_pids`: its
    /// tasks' limits (`--limit-memory`, `--limit-cpu`, `--limit-pids`; 0: none).
    pub limits: crate::store::service::Limit,
    /// For the `BindMount` action only: the one bind mount asked about (its host path and
    /// whether it is read-only), which is then the whole context.
    pub bind: Option<(String, bool)>,
}

impl SpecFacts {
    /// The facts of `spec`.
    pub fn of(spec: &crate::store::service::ServiceSpec) -> SpecFacts {
        use crate::store::service::MountKind;
        let mut facts = SpecFacts::from_task(spec.task.runtime, &spec.task.constraints);
        facts.limits = spec.task.limits;
        let sorted = |it: &mut dyn Iterator<Item = String>| -> Vec<String> {
            it.collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        facts.secrets = sorted(&mut spec.task.secrets.iter().map(|s| s.secret_name.clone()));
        let of_kind = |k: MountKind| spec.task.mounts.iter().filter(move |m| m.kind == k);
        facts.bind_sources = sorted(&mut of_kind(MountKind::Bind).map(|m| m.source.clone()));
        facts.bind_mounts = !facts.bind_sources.is_empty();
        facts.volume_names = sorted(&mut of_kind(MountKind::Volume).map(|m| m.source.clone()));
        facts.volumes = !facts.volume_names.is_empty();
        facts.tmpfs = of_kind(MountKind::Tmpfs).next().is_some();
        facts
    }

    /// The facts of one bind mount, for the `BindMount` action.
    pub fn bind(source: &str, read_only: bool) -> SpecFacts {
        SpecFacts {
            bind: Some((source.to_string(), read_only)),
            ..SpecFacts::from_task(crate::store::service::Runtime::Docker, &[])
        }
    }

    /// The facts of a task with this runtime and these placement constraints.
    pub fn from_task(
        runtime: crate::store::service::Runtime,
        constraints: &[crate::store::service::Constraint],
    ) -> SpecFacts {
        use crate::store::service::ConstraintOp;
        let excludes_managers = constraints.iter().any(|c| {
            c.key == "node.role"
                && match c.op {
                    ConstraintOp::Eq => c.value != "manager",
                    ConstraintOp::Ne => c.value == "manager",
                }
        });
        SpecFacts {
            runtime: runtime.as_str(),
            managers: !excludes_managers,
            secrets: Vec::new(),
            bind_mounts: false,
            bind_sources: Vec::new(),
            volumes: false,
            volume_names: Vec::new(),
            tmpfs: false,
            limits: crate::store::service::Limit::default(),
            bind: None,
        }
    }

    fn context(&self) -> Result<Context, String> {
        let set = |v: &[String]| {
            RestrictedExpression::new_set(
                v.iter()
                    .map(|n| RestrictedExpression::new_string(n.clone())),
            )
        };
        // Cedar's numbers are i64: a larger limit is as good as none, and reads as the largest.
        let long = |n: u64| RestrictedExpression::new_long(i64::try_from(n).unwrap_or(i64::MAX));
        if let Some((source, read_only)) = &self.bind {
            return Context::from_pairs([
                (
                    "source".to_string(),
                    RestrictedExpression::new_string(source.clone()),
                ),
                (
                    "read_only".to_string(),
                    RestrictedExpression::new_bool(*read_only),
                ),
            ])
            .map_err(|e| e.to_string());
        }
        Context::from_pairs([
            (
                "bind_mounts".to_string(),
                RestrictedExpression::new_bool(self.bind_mounts),
            ),
            ("bind_sources".to_string(), set(&self.bind_sources)),
            (
                "volumes".to_string(),
                RestrictedExpression::new_bool(self.volumes),
            ),
            ("volume_names".to_string(), set(&self.volume_names)),
            (
                "tmpfs".to_string(),
                RestrictedExpression::new_bool(self.tmpfs),
            ),
            (
                "runtime".to_string(),
                RestrictedExpression::new_string(self.runtime.to_string()),
            ),
            (
                "managers".to_string(),
                RestrictedExpression::new_bool(self.managers),
            ),
            ("secrets".to_string(), set(&self.secrets)),
            (
                "limit_memory_bytes".to_string(),
                long(self.limits.memory_bytes),
            ),
            ("limit_nano_cpus".to_string(), long(self.limits.nano_cpus)),
            ("limit_pids".to_string(), long(self.limits.pids)),
        ])
        .map_err(|e| e.to_string())
    }
}

/// The answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Denied, and why (the policies that forbade it, or that none permitted it).
    Deny {
        /// Why.
        reason: String,
    },
}

/// The schema-derived pieces of the RBAC policies, built once per process.
struct Model {
    cedar: Loaded,
    operator: EntityTypeName,
    role: EntityTypeName,
    resource: EntityTypeName,
    action: EntityTypeName,
}

fn model() -> Result<&'static Model, PolicyError> {
    static MODEL: OnceLock<Result<Model, String>> = OnceLock::new();
    loaded(MODEL.get_or_init(|| {
        Ok(Model {
            cedar: Loaded::new(SCHEMA)?,
            operator: entity_type("Skep::Operator")?,
            role: entity_type("Skep::Role")?,
            resource: entity_type("Skep::Resource")?,
            action: entity_type("Skep::Action")?,
        })
    }))
}

/// A parsed, validated RBAC policy set.
pub struct RbacEngine {
    text: String,
    digest: String,
    policies: PolicySet,
    /// Decisions made, by (operator, role, action, resource, spec facts): they depend on
    /// nothing else.
    decisions: Mutex<std::collections::HashMap<DecisionKey, Decision>>,
}

type DecisionKey = (String, String, Action, String, Option<SpecFacts>);

/// How many decisions an engine remembers before starting over.
const DECISION_CACHE: usize = 4096;

impl fmt::Debug for RbacEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RbacEngine")
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl RbacEngine {
    /// Parses `text` and validates it strictly against [`SCHEMA`], with the same size and
    /// nesting limits as the secret policies.
    pub fn parse(text: &str) -> Result<RbacEngine, PolicyError> {
        let parsed = model()?
            .cedar
            .parse(text, "policy templates are not supported")?;
        Ok(RbacEngine {
            digest: digest(&parsed.text),
            text: parsed.text,
            policies: parsed.policies,
            decisions: Mutex::new(Default::default()),
        })
    }

    /// The text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Hex SHA-256 of the text.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// May `who` do `action` to objects of kind `resource`? Fails closed.
    pub fn authorize(&self, who: &Principal<'_>, action: Action, resource: &str) -> Decision {
        self.authorize_in(who, action, resource, None)
    }

    /// As [`RbacEngine::authorize`], with what a service spec asks for as the context.
    pub fn authorize_in(
        &self,
        who: &Principal<'_>,
        action: Action,
        resource: &str,
        facts: Option<&SpecFacts>,
    ) -> Decision {
        let key = (
            who.name.to_string(),
            who.role.to_string(),
            action,
            resource.to_string(),
            facts.cloned(),
        );
        let lock = || self.decisions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = lock().get(&key) {
            return d.clone();
        }
        let decision = self
            .evaluate(who, action, resource, facts)
            .unwrap_or_else(|why| Decision::Deny {
                reason: format!("the RBAC policy could not be evaluated, which denies: {why}"),
            });
        let mut cache = lock();
        if cache.len() >= DECISION_CACHE {
            cache.clear();
        }
        cache.insert(key, decision.clone());
        decision
    }

    fn evaluate(
        &self,
        who: &Principal<'_>,
        action: Action,
        resource: &str,
        facts: Option<&SpecFacts>,
    ) -> Result<Decision, String> {
        let model = model().map_err(|e| e.to_string())?;
        let role = uid(&model.role, who.role);
        let operator = Entity::new(
            uid(&model.operator, who.name),
            [
                (
                    "name".to_string(),
                    RestrictedExpression::new_string(who.name.to_string()),
                ),
                (
                    "role".to_string(),
                    RestrictedExpression::new_string(who.role.to_string()),
                ),
            ]
            .into_iter()
            .collect(),
            [role.clone()].into_iter().collect(),
        )
        .map_err(|e| e.to_string())?;
        let mut entities = vec![
            operator,
            Entity::new_no_attrs(role, Default::default()),
            Entity::new_no_attrs(uid(&model.resource, resource), Default::default()),
        ];
        entities.extend(model.cedar.actions.iter().cloned());
        let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
        let request = Request::new(
            uid(&model.operator, who.name),
            uid(&model.action, action.as_str()),
            uid(&model.resource, resource),
            match facts {
                Some(f) => f.context()?,
                None => Context::empty(),
            },
            Some(model.cedar.schema()),
        )
        .map_err(|e| e.to_string())?;
        let response = model
            .cedar
            .authorizer
            .is_authorized(&request, &self.policies, &entities);
        let errors = response.diagnostics().errors().count();
        if response.decision() == CedarDecision::Allow && errors == 0 {
            return Ok(Decision::Allow);
        }
        let mut forbids: Vec<String> = response
            .diagnostics()
            .reason()
            .filter_map(|id| self.policies.policy(id))
            .filter(|p| p.effect() == Effect::Forbid)
            .map(|p| {
                let name = p.annotation("id").unwrap_or(p.id().as_ref()).to_string();
                match p.annotation("reason").filter(|r| !r.is_empty()) {
                    Some(r) => format!("policy {name}: {r}"),
                    None => format!("policy {name} forbids it"),
                }
            })
            .collect();
        forbids.sort();
        let mut reason = if forbids.is_empty() {
            format!(
                "no RBAC policy permits role {} to {}",
                who.role,
                action.describe()
            )
        } else {
            forbids.join("; ")
        };
        if errors > 0 {
            reason.push_str(&format!(
                "; {errors} policy evaluation error(s), which deny to be safe"
            ));
        }
        Ok(Decision::Deny { reason })
    }
}

/// The engine for `text` (empty: the built-in default), parsed at most once while among the
/// last few used. Each engine remembers its decisions, so a steady stream of calls costs a
/// lookup, not a Cedar evaluation.
pub fn cached(text: &str) -> Result<Arc<RbacEngine>, PolicyError> {
    type Slot = (String, Result<Arc<RbacEngine>, PolicyError>);
    static CACHE: Mutex<VecDeque<Slot>> = Mutex::new(VecDeque::new());
    let text = if text.is_empty() {
        DEFAULT_POLICY
    } else {
        text
    };
    // Found by the text itself: comparing is cheaper than hashing it on every call.
    if let Some((_, r)) = CACHE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(k, _)| k == text)
    {
        return r.clone();
    }
    let result = RbacEngine::parse(text).map(Arc::new);
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    cache.push_front((text.to_string(), result.clone()));
    cache.truncate(4);
    result
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    // BindMount is asked with its own context (a host path): see the bind test below.
    const ALL: [Action; 9] = [
        Action::Read,
        Action::ReadAudit,
        Action::ReadEvents,
        Action::Deploy,
        Action::ManageSecrets,
        Action::ManageNodes,
        Action::ManageTokens,
        Action::ManageSwarm,
        Action::ManageOperators,
    ];

    #[test]
    fn the_default_roles_get_exactly_what_the_issue_says() {
        let engine = cached("").unwrap();
        let allowed = |role: &str| -> Vec<Action> {
            ALL.into_iter()
                .filter(|a| {
                    engine.authorize(&Principal { name: "x", role }, *a, "service")
                        == Decision::Allow
                })
                .collect()
        };
        assert_eq!(allowed("admin"), ALL.to_vec());
        assert_eq!(
            allowed("deployer"),
            vec![Action::Read, Action::ReadEvents, Action::Deploy]
        );
        assert_eq!(
            allowed("auditor"),
            vec![Action::Read, Action::ReadAudit, Action::ReadEvents]
        );
        assert!(allowed("intern").is_empty());
        let Decision::Deny { reason } = engine.authorize(
            &Principal {
                name: "alice",
                role: "deployer",
            },
            Action::ManageTokens,
            "token",
        ) else {
            panic!("allowed");
        };
        assert!(reason.contains("role deployer"), "{reason}");
    }

    #[test]
    fn spec_facts_say_the_runtime_and_whether_managers_are_eligible() {
        use crate::store::service::Runtime;
        let f = |r: &str, c: &[&str]| {
            let runtime = if r == "exec" {
                Runtime::Exec
            } else {
                Runtime::Docker
            };
            let cs: Vec<_> = c
                .iter()
                .map(|c| crate::spec::service::parse_constraint(c).unwrap())
                .collect();
            SpecFacts::from_task(runtime, &cs)
        };
        assert_eq!(
            f("exec", &[]),
            SpecFacts {
                runtime: "exec",
                managers: true,
                secrets: Vec::new(),
                ..SpecFacts::from_task(crate::store::service::Runtime::Docker, &[])
            }
        );
        assert!(f("exec", &["node.role==manager"]).managers);
        assert!(f("exec", &["node.hostname==m1"]).managers);
        assert!(!f("exec", &["node.role==worker"]).managers);
        assert!(!f("docker", &["node.role!=manager"]).managers);
        assert!(f("docker", &["node.role!=worker"]).managers);
        assert_eq!(f("docker", &[]).runtime, "docker");
    }

    /// The default set with an example added, a deployer and an admin.
    fn with_example(example: &str) -> (RbacEngine, Principal<'static>, Principal<'static>) {
        let engine = RbacEngine::parse(&format!("{DEFAULT_POLICY}\n{example}")).unwrap();
        let dep = Principal {
            name: "d",
            role: "deployer",
        };
        let admin = Principal {
            name: "a",
            role: "admin",
        };
        (engine, dep, admin)
    }

    #[test]
    fn a_policy_can_limit_the_secrets_a_role_attaches() {
        let (engine, dep, admin) = with_example(include_str!(
            "../../policies/examples/rbac-deployer-secrets.cedar"
        ));
        let facts = |names: &[&str]| SpecFacts {
            runtime: "docker",
            managers: true,
            secrets: names.iter().map(|n| n.to_string()).collect(),
            ..SpecFacts::from_task(crate::store::service::Runtime::Docker, &[])
        };
        for ok in [&[][..], &["db_password"], &["db_password", "web_tls"]] {
            assert_eq!(
                engine.authorize_in(&dep, Action::Deploy, "service", Some(&facts(ok))),
                Decision::Allow,
                "{ok:?}"
            );
        }
        let root = facts(&["db_password", "root_ca_key"]);
        let Decision::Deny { reason } =
            engine.authorize_in(&dep, Action::Deploy, "service", Some(&root))
        else {
            panic!("a deployer attached root_ca_key");
        };
        assert!(reason.contains("deployer-secrets"), "{reason}");
        assert_eq!(
            engine.authorize_in(&admin, Action::Deploy, "service", Some(&root)),
            Decision::Allow
        );
    }

    #[test]
    fn a_policy_can_require_limits_of_a_roles_exec_tasks() {
        let (engine, dep, admin) = with_example(include_str!(
            "../../policies/examples/rbac-deployer-limits.cedar"
        ));
        let mut spec = crate::store::fixtures::service("s1", "web").spec;
        let mut exec = |memory_bytes: u64, pids: u64| {
            spec.task.runtime = crate::store::service::Runtime::Exec;
            spec.task.limits = crate::store::service::Limit {
                memory_bytes,
                nano_cpus: 0,
                pids,
            };
            SpecFacts::of(&spec)
        };
        let decide = |who: &Principal, facts: &SpecFacts| {
            engine.authorize_in(who, Action::Deploy, "service", Some(facts))
        };
        for (memory, pids) in [
            (0, 0),
            (64 << 20, 0),
            (0, 100),
            (64 << 20, 1025),
            (u64::MAX, 0),
        ] {
            let facts = exec(memory, pids);
            let Decision::Deny { reason } = decide(&dep, &facts) else {
                panic!("allowed without limits: {memory} bytes, {pids} processes");
            };
            assert!(reason.contains("deployer-exec-limits"), "{reason}");
            assert_eq!(decide(&admin, &facts), Decision::Allow);
        }
        for (memory, pids) in [(64 << 20, 100), (64 << 20, 1024), (u64::MAX, 1)] {
            assert_eq!(
                decide(&dep, &exec(memory, pids)),
                Decision::Allow,
                "{memory} bytes, {pids} processes"
            );
        }
        let mut docker = exec(0, 0);
        docker.runtime = "docker";
        assert_eq!(decide(&dep, &docker), Decision::Allow);
        // Without a spec (remove, scale), the forbid does not apply.
        assert_eq!(
            engine.authorize(&dep, Action::Deploy, "service"),
            Decision::Allow
        );
    }

    #[test]
    fn a_policy_can_keep_a_role_off_the_managers_with_a_runtime() {
        let (engine, dep, admin) = with_example(include_str!(
            "../../policies/examples/rbac-exec-off-managers.cedar"
        ));
        let on_mgr = SpecFacts {
            runtime: "exec",
            managers: true,
            secrets: Vec::new(),
            ..SpecFacts::from_task(crate::store::service::Runtime::Docker, &[])
        };
        let on_workers = SpecFacts {
            runtime: "exec",
            managers: false,
            secrets: Vec::new(),
            ..SpecFacts::from_task(crate::store::service::Runtime::Docker, &[])
        };
        let docker = SpecFacts {
            runtime: "docker",
            managers: true,
            secrets: Vec::new(),
            ..SpecFacts::from_task(crate::store::service::Runtime::Docker, &[])
        };
        let d = engine.authorize_in(&dep, Action::Deploy, "service", Some(&on_mgr));
        let Decision::Deny { reason } = d else {
            panic!("allowed");
        };
        assert!(reason.contains("deployer-exec-off-managers"), "{reason}");
        for ok in [&on_workers, &docker] {
            assert_eq!(
                engine.authorize_in(&dep, Action::Deploy, "service", Some(ok)),
                Decision::Allow
            );
        }
        assert_eq!(
            engine.authorize_in(&admin, Action::Deploy, "service", Some(&on_mgr)),
            Decision::Allow
        );
        // Without a spec (remove, scale by the gate), the forbid does not apply.
        assert_eq!(
            engine.authorize(&dep, Action::Deploy, "service"),
            Decision::Allow
        );
        // The default set lets a deployer run exec tasks anywhere: they run unprivileged.
        assert_eq!(
            cached("")
                .unwrap()
                .authorize_in(&dep, Action::Deploy, "service", Some(&on_mgr)),
            Decision::Allow
        );
    }

    #[test]
    fn forbids_win_and_invalid_sets_are_refused() {
        let text = format!(
            "{DEFAULT_POLICY}\n@id(\"no-secrets-for-bob\") @reason(\"bob is on leave\")\nforbid (principal == Skep::Operator::\"bob\", action, resource);"
        );
        let engine = RbacEngine::parse(&text).unwrap();
        let d = engine.authorize(
            &Principal {
                name: "bob",
                role: "admin",
            },
            Action::Read,
            "service",
        );
        assert_eq!(
            d,
            Decision::Deny {
                reason: "policy no-secrets-for-bob: bob is on leave".into()
            }
        );
        assert!(
            RbacEngine::parse("permit (principal, action == Skep::Action::\"Fly\", resource);")
                .is_err()
        );
        assert!(RbacEngine::parse("permit (principal").is_err());
        assert!(RbacEngine::parse(&"(".repeat(100)).is_err());
    }

    #[test]
    fn binds_are_for_admins_unless_a_policy_allows_a_path() {
        let spec = |mounts: &[&str]| {
            let mut t = crate::store::service::TaskSpec::new(
                crate::store::service::Runtime::Docker,
                "redis",
                vec![],
            );
            t.mounts = mounts
                .iter()
                .map(|m| crate::spec::mount::parse(m).unwrap())
                .collect();
            crate::store::service::ServiceSpec::new("db", t)
        };
        let s = spec(&[
            "type=bind,source=/srv/data/db,target=/data",
            "source=cache,target=/cache",
            "type=tmpfs,target=/tmp",
        ]);
        let facts = SpecFacts::of(&s);
        assert!(facts.bind_mounts && facts.volumes && facts.tmpfs);
        assert_eq!(facts.bind_sources, vec!["/srv/data/db".to_string()]);
        assert_eq!(facts.volume_names, vec!["cache".to_string()]);
        let engine = cached("").unwrap();
        let ask = |e: &RbacEngine, role: &str, path: &str| {
            e.authorize_in(
                &Principal { name: "x", role },
                Action::BindMount,
                "service",
                Some(&SpecFacts::bind(path, false)),
            )
        };
        assert_eq!(
            ask(&engine, "admin", "/var/run/docker.sock"),
            Decision::Allow
        );
        assert!(matches!(
            ask(&engine, "deployer", "/srv/data/db"),
            Decision::Deny { .. }
        ));
        // Volumes and tmpfs are a deployer's to use.
        let deploy = |e: &RbacEngine, role: &str, f: &SpecFacts| {
            e.authorize_in(
                &Principal { name: "x", role },
                Action::Deploy,
                "service",
                Some(f),
            )
        };
        let no_bind = SpecFacts::of(&spec(&[
            "source=cache,target=/cache",
            "type=tmpfs,target=/t",
        ]));
        assert_eq!(deploy(&engine, "deployer", &no_bind), Decision::Allow);
        let example = format!(
            "{DEFAULT_POLICY}\n{}",
            include_str!("../../policies/examples/rbac-deployer-binds.cedar")
        );
        let e = RbacEngine::parse(&example).unwrap();
        assert_eq!(ask(&e, "deployer", "/srv/data/db"), Decision::Allow);
        assert_eq!(ask(&e, "deployer", "/srv/data/a/b"), Decision::Allow);
        for bad in [
            "/srv/data",
            "/srv/database",
            "/",
            "/var/run/docker.sock",
            "/srv/datax/y",
        ] {
            assert!(
                matches!(ask(&e, "deployer", bad), Decision::Deny { .. }),
                "{bad}"
            );
        }
        assert_eq!(deploy(&e, "deployer", &facts), Decision::Allow);
        assert_eq!(ask(&e, "admin", "/"), Decision::Allow);
    }
}
