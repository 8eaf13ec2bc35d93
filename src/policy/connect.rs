//! Service-to-service decisions: may one service (the caller, known by the X.509-SVID its task
//! presented to the routing mesh) connect to a port of another that is published with
//! `identity=required`? Decided by the same policy set and parse path as secrets
//! ([`super::secrets`], [`super::cedar`]):
//!
//! ```text
//!  principal  Skep::Service::"<caller name>"   attrs id, name, secrets; tags: labels
//!  action     Skep::Action::"Connect"
//!  resource   Skep::Service::"<callee name>"   attrs id, name, secrets; tags: labels
//!  context    { node: Skep::Node::"<id>" }     the node of the callee's task, which checks
//!                                             the caller (attrs id, role; tags: labels)
//! ```
//!
//! Entity IDs are service **names** here (IDs in `UseSecret`), so that a policy can say
//! `Skep::Service::"web"` may connect to `Skep::Service::"db"`: a name is what an operator
//! knows, and it is unique in the cluster at any moment. A service removed and created again
//! under the same name is, to a Connect policy, the same service.

use std::collections::BTreeMap;

use cedar_policy::{Context, Entities, Entity, Request, RestrictedExpression};

use super::cedar::uid;
use super::secrets::{Decision, NodeFacts, PolicyEngine, ServiceFacts, model};

impl PolicyEngine {
    /// May `caller` connect through the routing mesh to a task of `callee` on `node`?
    ///
    /// Denies, with a reason, when a `forbid` applies, when no `permit` does, when any policy
    /// fails to evaluate, and when the facts cannot be turned into a Cedar request.
    pub fn connect(
        &self,
        caller: &ServiceFacts<'_>,
        callee: &ServiceFacts<'_>,
        node: &NodeFacts<'_>,
    ) -> Decision {
        if let Some(reason) = &self.broken {
            return Decision::Deny {
                reason: reason.clone(),
            };
        }
        self.evaluate_connect(caller, callee, node)
            .unwrap_or_else(|why| Decision::Deny {
                reason: format!(
                    "could not check the connect policy for service {} calling service {}, so \
                     it is denied: {why}",
                    caller.name, callee.name
                ),
            })
    }

    fn evaluate_connect(
        &self,
        caller: &ServiceFacts<'_>,
        callee: &ServiceFacts<'_>,
        node: &NodeFacts<'_>,
    ) -> Result<Decision, String> {
        let model = model().map_err(|e| e.to_string())?;
        let mut entities = vec![service_entity(caller)?];
        // A service calling itself is one entity (Cedar refuses a UID given twice).
        if callee.name != caller.name {
            entities.push(service_entity(callee)?);
        }
        entities.push(super::secrets::node_entity(model, node)?);
        entities.extend(model.cedar.actions.iter().cloned());
        let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
        let context = Context::from_pairs([(
            "node".to_string(),
            RestrictedExpression::new_entity_uid(uid(model.node(), node.id)),
        )])
        .map_err(|e| e.to_string())?;
        let request = Request::new(
            uid(&model.service, caller.name),
            model.connect.clone(),
            uid(&model.service, callee.name),
            context,
            Some(model.schema()),
        )
        .map_err(|e| e.to_string())?;
        Ok(self.decide(model, &request, &entities, || {
            format!(
                "no policy permits service {} to connect to service {}",
                caller.name, callee.name
            )
        }))
    }
}

/// A service as a Connect request sees it: entity ID its name, with its ID, name, referenced
/// secrets (bare) and labels.
fn service_entity(s: &ServiceFacts<'_>) -> Result<Entity, String> {
    let model = model().map_err(|e| e.to_string())?;
    let string = |v: &str| RestrictedExpression::new_string(v.to_string());
    let tags = |labels: &BTreeMap<String, String>| {
        labels
            .iter()
            .map(|(k, v)| (k.clone(), RestrictedExpression::new_string(v.clone())))
            .collect::<Vec<_>>()
    };
    Entity::new_with_tags(
        uid(&model.service, s.name),
        [
            ("id".to_string(), string(s.id)),
            ("name".to_string(), string(s.name)),
            (
                "secrets".to_string(),
                RestrictedExpression::new_set(
                    s.secret_ids
                        .iter()
                        .map(|id| RestrictedExpression::new_entity_uid(uid(model.secret(), id))),
                ),
            ),
        ],
        [],
        tags(s.labels),
    )
    .map_err(|e| format!("service {}: {e}", s.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn svc<'a>(id: &'a str, name: &'a str, l: &'a BTreeMap<String, String>) -> ServiceFacts<'a> {
        ServiceFacts {
            id,
            name,
            labels: l,
            secret_ids: &[],
        }
    }

    fn node(l: &BTreeMap<String, String>) -> NodeFacts<'_> {
        NodeFacts {
            id: "node-1",
            hostname: "h1",
            role: "worker",
            labels: l,
        }
    }

    const EXAMPLE: &str = include_str!("../../policies/examples/web-connects-to-db.cedar");

    #[test]
    fn the_default_lets_every_service_connect() {
        let none = BTreeMap::new();
        let e = PolicyEngine::default_policy();
        assert!(
            e.connect(
                &svc("s1", "web", &none),
                &svc("s2", "db", &none),
                &node(&none)
            )
            .is_allowed()
        );
        assert!(
            e.connect(
                &svc("s2", "db", &none),
                &svc("s2", "db", &none),
                &node(&none)
            )
            .is_allowed()
        );
    }

    #[test]
    fn the_example_names_services_and_a_forbid_wins() {
        let none = BTreeMap::new();
        let public = labels(&[("zone", "public")]);
        let private = labels(&[("zone", "private")]);
        let e = PolicyEngine::parse(EXAMPLE).unwrap();
        let web = svc("id-w", "web", &none);
        let api = svc("id-a", "api", &none);
        let db = svc("id-d", "db", &none);
        assert!(e.connect(&web, &db, &node(&none)).is_allowed());
        assert!(e.connect(&web, &api, &node(&none)).is_allowed());
        assert!(e.connect(&api, &web, &node(&none)).is_allowed());
        match e.connect(&api, &db, &node(&none)) {
            Decision::Deny { reason } => assert_eq!(
                reason,
                "no policy permits service api to connect to service db"
            ),
            d => panic!("{d:?}"),
        }
        // The entity ID is the name, not the ID: a service whose *ID* is "web" is not web.
        assert!(
            !e.connect(&svc("web", "other", &none), &db, &node(&none))
                .is_allowed()
        );
        match e.connect(
            &svc("id-p", "pub", &public),
            &svc("id-q", "priv", &private),
            &node(&none),
        ) {
            Decision::Deny { reason } => assert_eq!(
                reason,
                "policy public-never-reaches-private: services labelled zone=public may not \
                 call services labelled zone=private"
            ),
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn a_forbid_of_web_to_db_denies_only_that_pair() {
        let text = format!(
            "{}\n@id(\"no-web-to-db\")\n@reason(\"web must not call db\")\nforbid (principal == \
             Skep::Service::\"web\", action == Skep::Action::\"Connect\", resource == \
             Skep::Service::\"db\");\n",
            super::super::DEFAULT_POLICY
        );
        let none = BTreeMap::new();
        let e = PolicyEngine::parse(&text).unwrap();
        let (web, db, api) = (
            svc("1", "web", &none),
            svc("2", "db", &none),
            svc("3", "api", &none),
        );
        assert_eq!(
            e.connect(&web, &db, &node(&none)),
            Decision::Deny {
                reason: "policy no-web-to-db: web must not call db".into()
            }
        );
        assert!(e.connect(&api, &db, &node(&none)).is_allowed());
        assert!(e.connect(&db, &web, &node(&none)).is_allowed());
    }

    #[test]
    fn a_policy_without_connect_permits_denies_and_odd_names_do_not_panic() {
        let only_secrets = "permit (principal, action == Skep::Action::\"UseSecret\", resource);";
        let e = PolicyEngine::parse(only_secrets).unwrap();
        let none = BTreeMap::new();
        assert!(
            !e.connect(
                &svc("1", "web", &none),
                &svc("2", "db", &none),
                &node(&none)
            )
            .is_allowed()
        );
        let odd = labels(&[("", "\u{0}"), ("k\"", "v\n")]);
        let none = odd.clone();
        let long = "n".repeat(10_000);
        let d = PolicyEngine::default_policy().connect(
            &svc("\"", &long, &odd),
            &svc("x", "\u{0}\"", &odd),
            &node(&none),
        );
        assert!(d.is_allowed(), "{d:?}");
    }

    #[test]
    fn a_policy_may_rest_on_the_node_that_checks_the_caller() {
        let text = format!(
            "{}\n@id(\"db-on-secure-nodes\")\nforbid (principal, action == Skep::Action::\"Connect\", \
             resource == Skep::Service::\"db\") unless {{ context.node.hasTag(\"secure\") }};\n",
            super::super::DEFAULT_POLICY
        );
        let e = PolicyEngine::parse(&text).unwrap();
        let none = BTreeMap::new();
        let secure = labels(&[("secure", "yes")]);
        let (web, db) = (svc("1", "web", &none), svc("2", "db", &none));
        assert!(e.connect(&web, &db, &node(&secure)).is_allowed());
        assert_eq!(
            e.connect(&web, &db, &node(&none)),
            Decision::Deny {
                reason: "policy db-on-secure-nodes forbids it".into()
            }
        );
    }
}
