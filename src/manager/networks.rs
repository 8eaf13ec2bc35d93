//! Control API operations on networks. A network is a named object services attach to; the
//! manager keeps names unique and refuses to remove a network a service is attached to.

use std::collections::BTreeMap;

use super::lookup::find;
use super::{Manager, ManagerError};
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::store::model::{Command, State};
use crate::store::network_obj::{DRIVER_OVERLAY, Network};

/// Refuses a spec attached to a network that does not exist.
pub fn check_attached(state: &State, networks: &[String]) -> Result<(), String> {
    for name in networks {
        if !state.networks.values().any(|n| &n.name == name) {
            return Err(format!(
                "network {name} not found: create it first (`skep network create {name}`)"
            ));
        }
    }
    Ok(())
}

impl Manager {
    /// Every network, by name.
    pub fn networks(&self) -> Vec<Network> {
        let mut all: Vec<Network> = self.read(|s| s.networks.values().cloned().collect());
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The network with this ID, name or ID prefix.
    pub fn network(&self, want: &str) -> Result<Network, ManagerError> {
        self.read(|s| find(s.networks.values(), want, |x| &x.id, |x| &x.name, "network").cloned())
    }

    /// Names of the services attached to a network.
    pub fn network_users(&self, name: &str) -> Vec<String> {
        self.read(|s| {
            s.services
                .values()
                .filter(|svc| svc.spec.networks.iter().any(|n| n == name))
                .map(|svc| svc.spec.name.clone())
                .collect()
        })
    }

    /// `network create`: returns the new ID.
    pub async fn create_network(
        &self,
        actor: Actor,
        name: &str,
        driver: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<String, ManagerError> {
        crate::spec::secret::validate_name(name)
            .map_err(|e| ManagerError::Invalid(e.replace("secret name", "network name")))?;
        super::secrets::validate_labels(&labels).map_err(ManagerError::Invalid)?;
        if !driver.is_empty() && driver != DRIVER_OVERLAY {
            return Err(ManagerError::Invalid(format!(
                "driver: {driver:?} is not supported (skep networks are `overlay`)"
            )));
        }
        if self.read(|s| s.networks.values().any(|n| n.name == name)) {
            return Err(ManagerError::Invalid(format!(
                "network {name} already exists"
            )));
        }
        let id = skep_pki::new_id();
        let audit = AuditEvent::now(actor, "network.create", name, Outcome::Ok)
            .with("network_id", id.clone());
        let net = Network {
            id: id.clone(),
            name: name.to_string(),
            labels,
            driver: DRIVER_OVERLAY.to_string(),
            created_at: crate::util::now_rfc3339(),
        };
        self.propose(Command::Batch(vec![
            Command::PutNetwork(net),
            Command::Audit(audit),
        ]))
        .await?;
        Ok(id)
    }

    /// `network rm`: refused while a service is attached to the network.
    pub async fn remove_network(&self, actor: Actor, want: &str) -> Result<String, ManagerError> {
        let net = self.network(want)?;
        let users = self.network_users(&net.name);
        if !users.is_empty() {
            return Err(ManagerError::Precondition(format!(
                "network {} is in use by service {}; remove the service first",
                net.name,
                users.join(", ")
            )));
        }
        let audit = AuditEvent::now(actor, "network.remove", &net.name, Outcome::Ok)
            .with("network_id", net.id.clone());
        self.propose(Command::Batch(vec![
            Command::RemoveNetwork { id: net.id.clone() },
            Command::Audit(audit),
        ]))
        .await?;
        Ok(net.name)
    }

    /// Records one `stack deploy` or `stack rm` as the CLI ran it: the individual service,
    /// secret and network changes have their own records; this one ties them to the stack.
    pub async fn stack_audit(
        &self,
        actor: Actor,
        stack: &str,
        action: &str,
        outcome: Outcome,
        details: BTreeMap<String, String>,
    ) -> Result<(), ManagerError> {
        let action = match action {
            "deploy" => "stack.deploy",
            "rm" => "stack.rm",
            other => {
                return Err(ManagerError::Invalid(format!(
                    "action: {other:?} is not deploy or rm"
                )));
            }
        };
        if stack.is_empty()
            || stack.len() > 64
            || details.len() > 16
            || details.keys().any(|k| k.is_empty() || k.len() > 64)
        {
            return Err(ManagerError::Invalid(
                "stack: a name of 1 to 64 characters and at most 16 details".into(),
            ));
        }
        let mut record = AuditEvent::now(actor, action, stack, outcome);
        for (k, v) in details {
            record = record.with(&k, v.chars().take(4096).collect::<String>());
        }
        self.propose(Command::Audit(record)).await
    }
}
