//! The first step of a task's path: its secrets. The values come from those the agent holds
//! (sent with the assignments) or are asked of the leader (`GetSecret`, which refuses unless
//! the task is entitled to them here), then mounted on the task's tmpfs
//! ([`super::secrets::NodeTmpfs::mount_task_files`]).

use std::collections::HashMap;
use std::sync::Arc;

use super::executor::Executors;
use super::managers::Managers;
use super::secrets::{Contents, SecretStore, SecretsError, TaskSecrets};
use crate::api::v1::SecretRequest;
use crate::secret::SecretBytes;
use crate::store::service::{SecretRef, Task};

/// Writes the task's directory on the node's tmpfs, if it has secrets, configs or a workload
/// identity.
pub async fn mount_secrets(
    task: &Task,
    store: &SecretStore,
    managers: &Managers,
    execs: &Arc<Executors>,
) -> Result<Option<TaskSecrets>, String> {
    if task.spec.secrets.is_empty() && task.spec.configs.is_empty() && !task.spec.identity {
        return Ok(None);
    }
    let values = secret_values(task, false, store, managers)
        .await
        .map_err(|e| e.to_string())?;
    let config_values = secret_values(task, true, store, managers)
        .await
        .map_err(|e| e.to_string())?;
    let (refs, configs) = (task.spec.secrets.clone(), task.spec.configs.clone());
    let (execs, id) = (execs.clone(), task.id.clone());
    tokio::task::spawn_blocking(move || {
        execs.tmpfs().mount_task_files(
            &id,
            &Contents {
                secrets: &refs,
                secret_values: &values,
                configs: &configs,
                config_values: &config_values,
            },
        )
    })
    .await
    .map_err(|e| format!("mounting the secrets failed: {e}"))?
    .map(Some)
    .map_err(|e| e.to_string())
}

/// The values of a task's secrets (`config`: its configs): those held, and the others asked
/// of the leader.
async fn secret_values(
    task: &Task,
    config: bool,
    store: &SecretStore,
    managers: &Managers,
) -> Result<HashMap<String, SecretBytes>, SecretsError> {
    let mut out = HashMap::new();
    let refs = if config {
        &task.spec.configs
    } else {
        &task.spec.secrets
    };
    for r in refs {
        if out.contains_key(&r.secret_id) {
            continue;
        }
        let version = task.versions.get(&r.secret_id).copied().unwrap_or(0);
        let v = value_of(task, r, config, version, store, managers).await?;
        out.insert(r.secret_id.clone(), v);
    }
    Ok(out)
}

/// Version `version` of the secret (`config`: config) of attachment `r` of `task`: held, or
/// asked of the leader (which answers only for the version the task is to hold).
pub async fn value_of(
    task: &Task,
    r: &SecretRef,
    config: bool,
    version: u64,
    store: &SecretStore,
    managers: &Managers,
) -> Result<SecretBytes, SecretsError> {
    match store.get(&r.secret_id, version) {
        Some(v) => Ok(v),
        None => fetch_secret(task, r, config, version, store, managers).await,
    }
}

/// Asks the managers, leader first, for secret `id` of `task`; keeps the value it gets.
async fn fetch_secret(
    task: &Task,
    r: &SecretRef,
    config: bool,
    version: u64,
    store: &SecretStore,
    managers: &Managers,
) -> Result<SecretBytes, SecretsError> {
    let (id, name) = (r.secret_id.as_str(), r.secret_name.as_str());
    let mut last = "no manager could be reached".to_string();
    for addr in managers.candidates() {
        let Some(mut client) = managers.client(&addr) else {
            continue;
        };
        let req = SecretRequest {
            task_id: task.id.clone(),
            secret_id: id.to_string(),
            version,
            config,
        };
        match client.get_secret(req).await {
            Ok(resp) => {
                let mut v = resp.into_inner();
                let value = SecretBytes::new(std::mem::take(&mut v.value));
                store.insert(v.id, v.version, v.name, value);
                if let Some(v) = store.get(id, version) {
                    return Ok(v);
                }
            }
            Err(s) if s.code() == tonic::Code::PermissionDenied => {
                return Err(SecretsError::NotDelivered {
                    name: name.to_string(),
                    reason: s.message().to_string(),
                });
            }
            Err(s) => last = s.message().to_string(),
        }
    }
    Err(SecretsError::NotDelivered {
        name: name.to_string(),
        reason: last,
    })
}
