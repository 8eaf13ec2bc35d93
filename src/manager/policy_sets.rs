//! Control API operations on the policy sets: the secret-entitlement policies and the
//! operator RBAC policies.

use super::{Manager, ManagerError};
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::store::model::Command;

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
