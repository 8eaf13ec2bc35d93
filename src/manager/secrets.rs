//! Control API operations on secrets. A secret's value goes into the sealed store and nowhere
//! else: not into errors, audit records or anything the API returns.

use std::collections::BTreeMap;

use super::lookup::find;
use super::{Manager, ManagerError};
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::secret::SecretBytes;
use crate::spec::secret::{validate_name, validate_value};
use crate::store::model::{Command, State};
use crate::store::secret_obj::{Secret, digest};
use crate::store::service::SecretRef;

pub(super) fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > 64 {
        return Err("labels: at most 64 labels".into());
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > 128 || k.contains('=') || v.len() > 1024 {
            return Err(format!(
                "labels: {} is not a valid KEY=VALUE label (key 1 to 128 bytes without '=', \
                 value at most 1024 bytes)",
                crate::util::quote(k)
            ));
        }
    }
    Ok(())
}

/// Resolves the secret references of a task spec against the state: every entry must name an
/// existing secret (its ID is filled in); targets must pass
/// [`crate::spec::secret_target::check_refs`] (valid, distinct, none inside another).
pub fn resolve_refs(state: &State, refs: &mut [SecretRef]) -> Result<(), String> {
    crate::spec::secret_target::check_refs(refs)?;
    for r in refs.iter_mut() {
        let found = state
            .secrets
            .values()
            .find(|s| s.name == r.secret_name)
            .or_else(|| {
                (r.secret_name.is_empty() && !r.secret_id.is_empty())
                    .then(|| state.secrets.get(&r.secret_id))
                    .flatten()
            });
        let Some(sec) = found else {
            return Err(format!(
                "secret: unknown secret {}",
                crate::util::prefix(&r.secret_name, 64)
            ));
        };
        r.secret_id = sec.id.clone();
        r.secret_name = sec.name.clone();
    }
    Ok(())
}

impl Manager {
    /// Every secret, by name.
    pub fn secrets(&self) -> Vec<Secret> {
        let mut all: Vec<Secret> = self.read(|s| s.secrets.values().cloned().collect());
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The secret with this ID, name or ID prefix.
    pub fn secret(&self, want: &str) -> Result<Secret, ManagerError> {
        self.read(|s| find(s.secrets.values(), want, |x| &x.id, |x| &x.name, "secret").cloned())
    }

    /// `secret create`: stores the value in the sealed store; returns the new ID.
    pub async fn create_secret(
        &self,
        actor: Actor,
        name: &str,
        labels: BTreeMap<String, String>,
        value: SecretBytes,
    ) -> Result<String, ManagerError> {
        validate_name(name).map_err(ManagerError::Invalid)?;
        validate_value(value.expose()).map_err(ManagerError::Invalid)?;
        validate_labels(&labels).map_err(ManagerError::Invalid)?;
        if self.read(|s| s.secrets.values().any(|x| x.name == name)) {
            return Err(ManagerError::Invalid(format!(
                "secret {name} already exists"
            )));
        }
        let now = crate::util::now_rfc3339();
        let id = skep_pki::new_id();
        let sum = digest(value.expose());
        let audit = AuditEvent::now(actor, "secret.create", name, Outcome::Ok)
            .with("secret_id", id.clone())
            .with("digest", sum.clone());
        let secret = Secret {
            id: id.clone(),
            name: name.to_string(),
            labels,
            digest: sum,
            size: value.expose().len() as u64,
            value,
            created_at: now.clone(),
            updated_at: now,
        };
        self.propose(Command::Batch(vec![
            Command::PutSecret(Box::new(secret)),
            Command::Audit(audit),
        ]))
        .await?;
        Ok(id)
    }

    /// `secret rm`: refused while a service uses the secret.
    pub async fn remove_secret(&self, actor: Actor, want: &str) -> Result<String, ManagerError> {
        let sec = self.secret(want)?;
        let users: Vec<String> = self.read(|s| {
            s.services
                .values()
                .filter(|svc| {
                    svc.spec.task.secrets.iter().any(|r| r.secret_id == sec.id)
                        || svc
                            .previous
                            .as_ref()
                            .is_some_and(|p| p.task.secrets.iter().any(|r| r.secret_id == sec.id))
                })
                .map(|svc| svc.spec.name.clone())
                .collect()
        });
        if !users.is_empty() {
            return Err(ManagerError::Precondition(format!(
                "secret {} is in use by service {}; remove it from the service first (service update --secret-rm)",
                sec.name,
                users.join(", ")
            )));
        }
        let audit = AuditEvent::now(actor, "secret.remove", &sec.name, Outcome::Ok)
            .with("secret_id", sec.id.clone())
            .with("digest", sec.digest.clone());
        self.propose(Command::Batch(vec![
            Command::RemoveSecret { id: sec.id.clone() },
            Command::Audit(audit),
        ]))
        .await?;
        Ok(sec.name)
    }
}

/// The policy set in force: its text, digest, whether it is the built-in default, and when
/// it was installed.
pub struct PolicyView {
    /// Cedar text.
    pub text: String,
    /// Hex SHA-256 of the text.
    pub digest: String,
    /// The built-in default is in force.
    pub is_default: bool,
    /// RFC 3339 time of installation ("" for the default).
    pub updated_at: String,
}

impl Manager {
    /// `policy get`.
    pub fn policy(&self) -> PolicyView {
        self.policy_of(PolicyKind::Secrets)
    }

    /// The policy set of `kind` in force.
    pub fn policy_of(&self, kind: PolicyKind) -> PolicyView {
        let default = kind.default_text();
        self.read(|s| match kind.doc(s) {
            Some(doc) => PolicyView {
                text: doc.text.clone(),
                digest: doc.digest.clone(),
                is_default: false,
                updated_at: doc.updated_at.clone(),
            },
            None => PolicyView {
                text: default.to_string(),
                digest: crate::policy::digest(default),
                is_default: true,
                updated_at: String::new(),
            },
        })
    }

    /// `policy set [--rbac]` (`None`: back to the default). The text is parsed and validated
    /// against the kind's schema first; an invalid set is refused with Cedar's message and the
    /// old one stays. Audited either way, with the old and new digests.
    pub async fn set_policy(
        &self,
        actor: Actor,
        text: Option<String>,
        kind: PolicyKind,
    ) -> Result<PolicyView, ManagerError> {
        let old = self.policy_of(kind).digest;
        let new_digest = crate::policy::digest(text.as_deref().unwrap_or(kind.default_text()));
        let target = kind.name();
        if let Some(t) = &text
            && let Err(e) = kind.validate(t)
        {
            // Refused either way; `audit` logs a failure to record it.
            let _ = self
                .audit(
                    AuditEvent::now(actor, "policy.set", target, Outcome::Error)
                        .with("old_digest", old)
                        .with("new_digest", new_digest)
                        .with("reason", e.to_string()),
                )
                .await;
            return Err(ManagerError::Invalid(format!(
                "policy refused, the policy in force is unchanged: {e}"
            )));
        }
        let doc = text.map(|t| crate::store::model::PolicyDoc {
            text: t,
            digest: new_digest.clone(),
            updated_at: crate::util::now_rfc3339(),
        });
        let action = if doc.is_some() {
            "policy.set"
        } else {
            "policy.reset"
        };
        let record = AuditEvent::now(actor, action, target, Outcome::Ok)
            .with("old_digest", old)
            .with("new_digest", new_digest);
        let set = match kind {
            PolicyKind::Secrets => Command::SetPolicy(doc),
            PolicyKind::Rbac => Command::SetRbacPolicy(doc),
        };
        self.propose(Command::Batch(vec![set, Command::Audit(record)]))
            .await?;
        Ok(self.policy_of(kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::model::State;

    fn state_with(names: &[&str]) -> State {
        let mut st = State::default();
        for n in names {
            let id = format!("id-{n}");
            st.secrets.insert(
                id.clone(),
                Secret {
                    id,
                    name: n.to_string(),
                    labels: BTreeMap::new(),
                    digest: digest(b"v"),
                    size: 1,
                    value: SecretBytes::new(b"v".to_vec()),
                    created_at: "t".into(),
                    updated_at: "t".into(),
                },
            );
        }
        st
    }

    #[test]
    fn labels_are_checked() {
        let mut l = BTreeMap::new();
        l.insert("a".to_string(), "b".to_string());
        assert!(validate_labels(&l).is_ok());
        l.insert(String::new(), "b".to_string());
        assert!(validate_labels(&l).is_err());
    }

    #[test]
    fn refs_resolve_by_name() {
        let st = state_with(&["db", "api"]);
        let mut refs = vec![SecretRef::new("db")];
        resolve_refs(&st, &mut refs).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(refs[0].secret_id, "id-db");

        let mut refs = vec![SecretRef::new("db_pass")];
        assert_eq!(
            resolve_refs(&st, &mut refs).unwrap_err(),
            "secret: unknown secret db_pass"
        );
    }

    #[test]
    fn targets_are_checked() {
        let st = state_with(&["db", "api"]);
        for bad in [
            "/etc/passwd",
            "/run/secrets",
            "/run/secrets/",
            "/run/secrets/../x",
            "/run/secrets/a//b",
            "/run/secretsx/a",
            "relative",
        ] {
            let mut r = SecretRef::new("db");
            r.target = bad.into();
            assert!(resolve_refs(&st, &mut [r]).is_err(), "{bad}");
        }
        let mut a = SecretRef::new("db");
        let mut b = SecretRef::new("api");
        a.target = "/run/secrets/x".into();
        b.target = "/run/secrets/x".into();
        let e = resolve_refs(&st, &mut [a.clone(), b.clone()]).unwrap_err();
        assert!(e.contains("clashes with"), "{e}");
        b.target = "/run/secrets/x/y".into();
        assert!(resolve_refs(&st, &mut [a, b]).is_err());
        let mut m = SecretRef::new("db");
        m.mode = 0o4755;
        assert!(resolve_refs(&st, &mut [m]).is_err());
    }
}

/// Which policy set: the secret-entitlement policies or the operator RBAC policies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyKind {
    /// `policies/schema.cedarschema`: which services may use which secrets where.
    Secrets,
    /// `policies/rbac.cedarschema`: which operators may make which Control API calls.
    Rbac,
}

impl PolicyKind {
    fn name(self) -> &'static str {
        match self {
            PolicyKind::Secrets => "secrets",
            PolicyKind::Rbac => "rbac",
        }
    }

    fn default_text(self) -> &'static str {
        match self {
            PolicyKind::Secrets => crate::policy::DEFAULT_POLICY,
            PolicyKind::Rbac => crate::policy::rbac::DEFAULT_POLICY,
        }
    }

    fn doc(self, s: &crate::store::model::State) -> Option<&crate::store::model::PolicyDoc> {
        match self {
            PolicyKind::Secrets => s.policy.as_ref(),
            PolicyKind::Rbac => s.rbac.as_ref(),
        }
    }

    fn validate(self, text: &str) -> Result<(), crate::policy::PolicyError> {
        match self {
            PolicyKind::Secrets => crate::policy::PolicyEngine::parse(text).map(|_| ()),
            PolicyKind::Rbac => crate::policy::rbac::RbacEngine::parse(text).map(|_| ()),
        }
    }
}
