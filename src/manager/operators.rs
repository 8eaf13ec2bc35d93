//! Operators: people who use the Control API from their own machines with an operator
//! certificate. A manager signs an operator's CSR (the key stays on the operator's machine)
//! for a name and a role; the role lives in the state, so RBAC decisions and revocation follow
//! the state at once. Every call an operator makes is authorized here against the RBAC
//! policies (`src/policy/rbac.rs`) and audited when refused.

use super::{Manager, ManagerError};
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::policy::rbac::{Action, Decision, Principal};
use crate::store::model::{Command, Operator, Revoked, operator_key};

/// The default and the longest lifetime of an operator certificate.
pub const DEFAULT_EXPIRY: time::Duration = time::Duration::hours(12);
const MAX_EXPIRY: time::Duration = time::Duration::days(30);
const MIN_EXPIRY: time::Duration = time::Duration::seconds(10);

/// A signed operator certificate.
pub struct Signed {
    /// The certificate, then its chain, PEM.
    pub cert_pem: String,
    /// The root to trust, PEM.
    pub ca_pem: String,
    /// The operator as recorded.
    pub operator: Operator,
}

/// Whether `role` is a well-formed role name (the policies decide what it may do).
fn valid_role(role: &str) -> bool {
    let mut c = role.chars();
    matches!(c.next(), Some(f) if f.is_ascii_lowercase())
        && role.len() <= 32
        && c.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl Manager {
    /// `operator sign`: a certificate for the key in `csr_der`, for `name` with `role`.
    /// Refuses a name in use (or revoked and not yet expired), a malformed role, an expiry
    /// out of bounds, a bad CSR. Audited.
    pub async fn sign_operator(
        &self,
        actor: Actor,
        csr_der: &[u8],
        name: &str,
        role: &str,
        expiry: Option<time::Duration>,
    ) -> Result<Signed, ManagerError> {
        if !skep_pki::is_valid_operator_name(name) {
            return Err(ManagerError::Invalid(
                skep_pki::PkiError::InvalidOperatorName.to_string(),
            ));
        }
        if !valid_role(role) {
            return Err(ManagerError::Invalid(format!(
                "invalid role {:?}: use admin, deployer, auditor or a role the RBAC policy names (1 to 32 lower-case letters, digits, '-' or '_')",
                role.chars().take(40).collect::<String>()
            )));
        }
        let expiry = expiry.unwrap_or(DEFAULT_EXPIRY);
        if !(MIN_EXPIRY..=MAX_EXPIRY).contains(&expiry) {
            return Err(ManagerError::Invalid(format!(
                "--expiry must be between {MIN_EXPIRY} and {MAX_EXPIRY}"
            )));
        }
        let (exists, revoked) = self.read(|s| {
            (
                s.operators.contains_key(name),
                s.revoked.get(&operator_key(name)).map(|r| r.until.clone()),
            )
        });
        if exists {
            return Err(ManagerError::Precondition(format!(
                "operator {name} already exists; revoke it first (`skep operator revoke {name}`) or pick another name"
            )));
        }
        if let Some(until) = revoked {
            return Err(ManagerError::Precondition(format!(
                "operator {name} was revoked; the name can be used again after {until}, when its last certificate expires"
            )));
        }
        let csr = skep_pki::Csr::from_der(csr_der).map_err(|e| {
            ManagerError::Invalid(format!("certificate signing request refused: {e}"))
        })?;
        let signer = self.signer()?;
        let now = time::OffsetDateTime::now_utc();
        let cert = signer
            .ca
            .issue_operator(&csr, name, expiry, now)
            .map_err(|e| ManagerError::Invalid(format!("cannot issue the certificate: {e}")))?;
        let operator = Operator {
            name: name.to_string(),
            role: role.to_string(),
            serial: cert.serial.clone(),
            not_after: crate::util::rfc3339(cert.not_after),
            created_at: crate::util::rfc3339(now),
            created_by: format!("{}:{}", actor.kind, actor.id),
        };
        let record = AuditEvent::now(actor, "operator.sign", name, Outcome::Ok)
            .with("role", role)
            .with("serial", cert.serial.clone())
            .with("not_after", operator.not_after.clone());
        self.propose(Command::Batch(vec![
            Command::PutOperator(operator.clone()),
            Command::Audit(record),
        ]))
        .await?;
        let mut cert_pem = cert.pem;
        for der in &signer.chain {
            cert_pem.push_str(&pem_of(der));
        }
        Ok(Signed {
            cert_pem,
            ca_pem: self.ca()?.cert_pem(),
            operator,
        })
    }

    /// `operator ls`.
    pub fn operators(&self) -> Vec<Operator> {
        self.read(|s| s.operators.values().cloned().collect())
    }

    /// `operator revoke`: forgets the operator and puts its name on the revocation list
    /// until its certificate would have expired; its connections are cut at once.
    pub async fn revoke_operator(&self, actor: Actor, name: &str) -> Result<(), ManagerError> {
        let op = self
            .read(|s| s.operators.get(name).cloned())
            .ok_or_else(|| ManagerError::NotFound(format!("operator {name} not found")))?;
        let entry = Revoked {
            hostname: name.to_string(),
            at: crate::util::now_rfc3339(),
            until: op.not_after.clone(),
        };
        let record = AuditEvent::now(actor, "operator.revoke", name, Outcome::Ok)
            .with("serial", op.serial.clone())
            .with("role", op.role.clone());
        self.propose(Command::Batch(vec![
            Command::RemoveOperator {
                name: name.to_string(),
            },
            Command::RevokeNode {
                id: operator_key(name),
                entry,
            },
            Command::Audit(record),
        ]))
        .await
    }

    /// Whether the operator presenting `cert` may do `action` on `resource`: the operator must
    /// be in the state with this certificate's serial, and the RBAC policy must allow it.
    /// Returns the actor to record; refusals are audited (rate-limited per source).
    pub async fn authorize_operator(
        &self,
        cert: &skep_pki::OperatorCertInfo,
        peer: std::net::SocketAddr,
        method: &str,
        action: Action,
        resource: &str,
    ) -> Result<Actor, ManagerError> {
        self.authorize_operator_in(cert, peer, method, action, resource, None)
            .await
    }

    /// As [`Manager::authorize_operator`], deciding on what a service spec asks for too.
    pub async fn authorize_operator_in(
        &self,
        cert: &skep_pki::OperatorCertInfo,
        peer: std::net::SocketAddr,
        method: &str,
        action: Action,
        resource: &str,
        facts: Option<&crate::policy::rbac::SpecFacts>,
    ) -> Result<Actor, ManagerError> {
        let actor = Actor::operator(&cert.name);
        let (op, rbac) = self.read(|s| {
            (
                s.operators.get(&cert.name).cloned(),
                s.rbac.as_ref().map(|d| d.text.clone()).unwrap_or_default(),
            )
        });
        use crate::metrics::Refusal;
        let denied = match op {
            None => Some((
                Refusal::Revoked,
                format!(
                    "operator {} is not known to this swarm (revoked?)",
                    cert.name
                ),
            )),
            Some(op) if op.serial != cert.serial => Some((
                Refusal::Revoked,
                format!(
                    "operator {}'s certificate {} has been replaced",
                    cert.name, cert.serial
                ),
            )),
            Some(op) => {
                let decision = match crate::policy::rbac::cached(&rbac) {
                    Ok(engine) => engine.authorize_in(
                        &Principal {
                            name: &op.name,
                            role: &op.role,
                        },
                        action,
                        resource,
                        facts,
                    ),
                    Err(e) => Decision::Deny {
                        reason: format!("the RBAC policy does not load: {e}"),
                    },
                };
                match decision {
                    Decision::Allow => None,
                    Decision::Deny { reason } => Some((
                        Refusal::RbacDenied,
                        format!(
                            "operator {} ({}) may not {} ({reason})",
                            op.name,
                            op.role,
                            action.describe()
                        ),
                    )),
                }
            }
        };
        let Some((why, reason)) = denied else {
            return Ok(actor);
        };
        crate::metrics::metrics().refused(why);
        let mut event = AuditEvent::now(actor, method, resource, Outcome::Denied)
            .with("reason", reason.clone())
            .with("action", action.as_str())
            .with("peer", peer.to_string());
        if let Some((source, _)) = facts.and_then(|f| f.bind.as_ref()) {
            event = event.with("bind_source", crate::util::prefix(source, 256));
        }
        self.audit_failure(peer.ip(), event).await;
        Err(ManagerError::Denied(reason))
    }
}

/// PEM of a DER certificate.
fn pem_of(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_names() {
        for ok in ["admin", "deployer", "auditor", "on-call_2"] {
            assert!(valid_role(ok), "{ok}");
        }
        for bad in ["", "Admin", "9", "a b", "a\"b", &"a".repeat(33)] {
            assert!(!valid_role(bad), "{bad}");
        }
    }
}
