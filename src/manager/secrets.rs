//! Control API operations on secrets and configs: create, update (a new version), rollback,
//! remove, and what each version is used by. A secret's value goes into the sealed store and
//! nowhere else: not into errors, audit records or anything the API returns. Configs are the
//! same objects in their own map (`config: true`); only their values may be shown.

use std::collections::{BTreeMap, BTreeSet};

use super::lookup::find;
use super::{Manager, ManagerError};
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::secret::SecretBytes;
use crate::spec::secret::{validate_name, validate_value};
use crate::store::model::{Command, State, kind};
use crate::store::secret_obj::{Secret, digest};
use crate::store::service::{OnChange, SecretRef, Task};

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

/// Resolves the secret (`config: false`) or config references of a task spec against the
/// state: every entry must name an existing object (its ID is filled in), a pinned version
/// must be kept; targets must pass [`crate::spec::secret_target::check_refs`] or
/// [`crate::spec::config_target::check_refs`].
pub fn resolve_refs(state: &State, refs: &mut [SecretRef], config: bool) -> Result<(), String> {
    if config {
        crate::spec::config_target::check_refs(refs)?;
    } else {
        crate::spec::secret_target::check_refs(refs)?;
    }
    let what = kind(config);
    for r in refs.iter_mut() {
        let objects = state.objects(config);
        let found = objects
            .values()
            .find(|s| s.name == r.secret_name)
            .or_else(|| {
                (r.secret_name.is_empty() && !r.secret_id.is_empty())
                    .then(|| objects.get(&r.secret_id))
                    .flatten()
            });
        let Some(sec) = found else {
            return Err(format!(
                "{what}: unknown {what} {}",
                crate::util::prefix(&r.secret_name, 64)
            ));
        };
        if let Some(n) = r.pinned
            && sec.get(n).is_none()
        {
            return Err(format!(
                "{what} {}: no version {n} (kept: {}; unused old versions are pruned)",
                sec.name,
                kept(sec)
            ));
        }
        r.secret_id = sec.id.clone();
        r.secret_name = sec.name.clone();
    }
    Ok(())
}

fn kept(sec: &Secret) -> String {
    sec.versions()
        .iter()
        .map(|v| v.version.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The references of `config` kind in a task spec.
pub fn refs_of(spec: &crate::store::service::TaskSpec, config: bool) -> &[SecretRef] {
    if config { &spec.configs } else { &spec.secrets }
}

/// Whether a task has not ended and is to run: it holds (or is about to hold) its versions.
pub fn live(t: &Task) -> bool {
    !t.status.state.is_terminal() && t.desired == crate::store::service::DesiredState::Running
}

/// Who uses one version: services whose spec pins or follows it, nodes and live tasks that are
/// to hold it or still hold it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Service names.
    pub services: BTreeSet<String>,
    /// Node IDs.
    pub nodes: BTreeSet<String>,
    /// Live tasks.
    pub tasks: u64,
}

/// Who uses each version of object `id`. A version is in use while anything here names it:
/// it is never pruned, and the object cannot be removed.
pub fn usage(state: &State, config: bool, id: &str) -> BTreeMap<u64, Usage> {
    let mut out: BTreeMap<u64, Usage> = BTreeMap::new();
    let Some(sec) = state.objects(config).get(id) else {
        return out;
    };
    for svc in state.services.values() {
        let specs = std::iter::once(&svc.spec.task).chain(svc.previous.as_ref().map(|p| &p.task));
        for spec in specs {
            for r in refs_of(spec, config).iter().filter(|r| r.secret_id == id) {
                out.entry(r.pinned.unwrap_or(sec.version))
                    .or_default()
                    .services
                    .insert(svc.spec.name.clone());
            }
        }
    }
    // A removed service's tasks count no more: the orchestrator's next round marks them for
    // removal (after which they are not live), so `stack rm`'s secret removal right after its
    // service removal is not refused for the moment in between.
    let live_tasks = state
        .tasks
        .values()
        .filter(|t| live(t) && state.services.contains_key(&t.service_id));
    for t in live_tasks {
        let to = t.versions.get(id);
        let held = t.status.held.get(id);
        for v in to.into_iter().chain(held.filter(|h| Some(*h) != to)) {
            let u = out.entry(*v).or_default();
            u.tasks += 1;
            if !t.node_id.is_empty() {
                u.nodes.insert(t.node_id.clone());
            }
        }
    }
    out
}

/// What `secret update` and `secret rollback` tell the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateOutcome {
    /// The object's name.
    pub name: String,
    /// The version now current.
    pub version: u64,
    /// Services that follow the object.
    pub services: u64,
    /// Live tasks of those services that follow it.
    pub tasks: u64,
}

/// The commands that start the rollout of a new current version beyond the object itself:
/// each service with an attachment that follows it with `on-change=restart` gets a new
/// version (its tasks are replaced by its update policy, as by `service update --force`, but
/// the spec `service rollback` would restore is kept).
/// Returns them with the number of services and live tasks that follow the object.
fn restart_followers(state: &State, config: bool, id: &str, now: &str) -> (Vec<Command>, u64, u64) {
    let mut cmds = Vec::new();
    let mut services = 0;
    for svc in state.services.values() {
        let follows: Vec<&SecretRef> = refs_of(&svc.spec.task, config)
            .iter()
            .filter(|r| r.secret_id == id && r.pinned.is_none())
            .collect();
        if follows.is_empty() {
            continue;
        }
        services += 1;
        if follows.iter().any(|r| r.on_change == OnChange::Restart) {
            // The spec is unchanged, so `previous` (what `service rollback` restores) is kept.
            let mut s = svc.clone();
            s.version += 1;
            s.revision += 1;
            s.updated_at = now.to_string();
            cmds.push(Command::PutService(Box::new(s)));
        }
    }
    let tasks = state
        .tasks
        .values()
        .filter(|t| {
            live(t)
                && refs_of(&t.spec, config)
                    .iter()
                    .any(|r| r.secret_id == id && r.pinned.is_none())
        })
        .count() as u64;
    (cmds, services, tasks)
}

impl Manager {
    /// Every secret (or config), by name.
    pub fn objects(&self, config: bool) -> Vec<Secret> {
        let mut all: Vec<Secret> = self.read(|s| s.objects(config).values().cloned().collect());
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The secret (or config) with this ID, name or ID prefix.
    pub fn object(&self, config: bool, want: &str) -> Result<Secret, ManagerError> {
        self.read(|s| {
            find(
                s.objects(config).values(),
                want,
                |x| &x.id,
                |x| &x.name,
                kind(config),
            )
            .cloned()
        })
    }

    /// Who uses each kept version of object `id` ([`usage`]).
    pub fn object_usage(&self, config: bool, id: &str) -> BTreeMap<u64, Usage> {
        self.read(|s| usage(s, config, id))
    }

    /// `secret create` / `config create`: stores the value in the sealed store as version 1;
    /// returns the new ID.
    pub async fn create_object(
        &self,
        actor: Actor,
        config: bool,
        name: &str,
        labels: BTreeMap<String, String>,
        value: SecretBytes,
    ) -> Result<String, ManagerError> {
        if config {
            crate::spec::config_target::validate_name(name).map_err(ManagerError::Invalid)?;
        } else {
            validate_name(name).map_err(ManagerError::Invalid)?;
        }
        validate_value(value.expose()).map_err(ManagerError::Invalid)?;
        validate_labels(&labels).map_err(ManagerError::Invalid)?;
        let what = kind(config);
        if self.read(|s| s.objects(config).values().any(|x| x.name == name)) {
            return Err(ManagerError::Invalid(format!(
                "{what} {name} already exists; `{what} update {name} FILE` adds a version"
            )));
        }
        let now = crate::util::now_rfc3339();
        let id = skep_pki::new_id();
        let sec = Secret::new(id.clone(), name.to_string(), labels, value, &now);
        let audit = AuditEvent::now(actor, &format!("{what}.create"), name, Outcome::Ok)
            .with(&format!("{what}_id"), id.clone())
            .with("version", "1")
            .with("digest", sec.digest.clone());
        let put = if config {
            Command::PutConfig(Box::new(sec))
        } else {
            Command::PutSecret(Box::new(sec))
        };
        self.propose(Command::Batch(vec![put, Command::Audit(audit)]))
            .await?;
        Ok(id)
    }

    /// `secret update NAME FILE`: adds `value` as a new version, makes it current and starts
    /// its rollout (audited with the version and digest, never the value).
    pub async fn update_object(
        &self,
        actor: Actor,
        config: bool,
        want: &str,
        value: SecretBytes,
    ) -> Result<UpdateOutcome, ManagerError> {
        validate_value(value.expose()).map_err(ManagerError::Invalid)?;
        let sec = self.object(config, want)?;
        let what = kind(config);
        let sum = digest(value.expose());
        if sum == sec.digest {
            return Err(ManagerError::Precondition(format!(
                "{what} {}: version {} already has this value (SHA-256 {}); nothing changed",
                sec.name,
                sec.version,
                &sum[..12]
            )));
        }
        let version = sec.latest() + 1;
        let now = crate::util::now_rfc3339();
        let change = Command::PushVersion {
            config,
            id: sec.id.clone(),
            version,
            value,
            at: now.clone(),
        };
        self.start_rollout(actor, config, &sec, version, (change, "update", sum), now)
            .await
    }

    /// `secret rollback NAME`: makes the kept version below the current one current again,
    /// rolled out as an update is.
    pub async fn rollback_object(
        &self,
        actor: Actor,
        config: bool,
        want: &str,
    ) -> Result<UpdateOutcome, ManagerError> {
        let sec = self.object(config, want)?;
        let Some(version) = sec.previous() else {
            return Err(ManagerError::Precondition(format!(
                "{} {} has no kept version before version {} to roll back to",
                kind(config),
                sec.name,
                sec.version
            )));
        };
        let now = crate::util::now_rfc3339();
        let sum = sec
            .get(version)
            .map(|v| v.digest.to_string())
            .unwrap_or_default();
        let change = Command::SetCurrentVersion {
            config,
            id: sec.id.clone(),
            version,
            at: now.clone(),
        };
        self.start_rollout(actor, config, &sec, version, (change, "rollback", sum), now)
            .await
    }

    /// Commits `change` (which makes `version` of `sec` current and starts its rollout) with
    /// its audit record (`secret.<action>`, with the version, the one before and the digest)
    /// and the new versions of the services that follow with `on-change=restart`.
    async fn start_rollout(
        &self,
        actor: Actor,
        config: bool,
        sec: &Secret,
        version: u64,
        (change, action, digest): (Command, &str, String),
        now: String,
    ) -> Result<UpdateOutcome, ManagerError> {
        let what = kind(config);
        let (restarts, services, tasks) =
            self.read(|s| restart_followers(s, config, &sec.id, &now));
        let audit = AuditEvent::now(actor, &format!("{what}.{action}"), &sec.name, Outcome::Ok)
            .with(&format!("{what}_id"), sec.id.clone())
            .with("version", version.to_string())
            .with("from", sec.version.to_string())
            .with("digest", digest)
            .with("services", services.to_string())
            .with("tasks", tasks.to_string());
        let mut cmds = vec![change, Command::Audit(audit)];
        cmds.extend(restarts);
        self.propose(Command::Batch(cmds)).await?;
        Ok(UpdateOutcome {
            name: sec.name.clone(),
            version,
            services,
            tasks,
        })
    }

    /// `secret rm`: refused while a service's spec (or its previous one) uses any version, or
    /// a live task still holds one.
    pub async fn remove_object(
        &self,
        actor: Actor,
        config: bool,
        want: &str,
    ) -> Result<String, ManagerError> {
        let sec = self.object(config, want)?;
        let what = kind(config);
        let used = self.object_usage(config, &sec.id);
        let services: BTreeSet<String> = used
            .values()
            .flat_map(|u| u.services.iter().cloned())
            .collect();
        if !services.is_empty() {
            return Err(ManagerError::Precondition(format!(
                "{what} {} is in use by service {}; remove it from the service first (service update --{what}-rm)",
                sec.name,
                services.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        let tasks: u64 = used.values().map(|u| u.tasks).sum();
        if tasks > 0 {
            return Err(ManagerError::Precondition(format!(
                "{what} {} is still held by {tasks} task(s) that are stopping; try again once they have stopped",
                sec.name
            )));
        }
        let audit = AuditEvent::now(actor, &format!("{what}.remove"), &sec.name, Outcome::Ok)
            .with(&format!("{what}_id"), sec.id.clone())
            .with("digest", sec.digest.clone());
        let rm = if config {
            Command::RemoveConfig { id: sec.id.clone() }
        } else {
            Command::RemoveSecret { id: sec.id.clone() }
        };
        self.propose(Command::Batch(vec![rm, Command::Audit(audit)]))
            .await?;
        Ok(sec.name)
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
                Secret::new(
                    id,
                    n.to_string(),
                    BTreeMap::new(),
                    SecretBytes::new(b"v".to_vec()),
                    "t",
                ),
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
    fn refs_resolve_by_name_and_pins_must_be_kept() {
        let mut st = state_with(&["db", "api"]);
        let mut refs = vec![SecretRef::new("db")];
        resolve_refs(&st, &mut refs, false).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(refs[0].secret_id, "id-db");

        let mut refs = vec![SecretRef::new("db_pass")];
        assert_eq!(
            resolve_refs(&st, &mut refs, false).unwrap_err(),
            "secret: unknown secret db_pass"
        );
        // A config of that name is not a secret.
        let mut refs = vec![SecretRef::new("db")];
        assert!(resolve_refs(&st, &mut refs, true).is_err());

        let mut pinned = SecretRef::new("db");
        pinned.pinned = Some(2);
        let e = resolve_refs(&st, &mut [pinned.clone()], false).unwrap_err();
        assert!(e.contains("no version 2 (kept: 1"), "{e}");
        st.secrets
            .get_mut("id-db")
            .map(|s| s.push(SecretBytes::new(b"w".to_vec()), "t2"));
        assert!(resolve_refs(&st, &mut [pinned], false).is_ok());
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
            assert!(resolve_refs(&st, &mut [r], false).is_err(), "{bad}");
        }
        let mut a = SecretRef::new("db");
        let mut b = SecretRef::new("api");
        a.target = "/run/secrets/x".into();
        b.target = "/run/secrets/x".into();
        let e = resolve_refs(&st, &mut [a.clone(), b.clone()], false).unwrap_err();
        assert!(e.contains("clashes with"), "{e}");
        b.target = "/run/secrets/x/y".into();
        assert!(resolve_refs(&st, &mut [a, b], false).is_err());
        let mut m = SecretRef::new("db");
        m.mode = 0o4755;
        assert!(resolve_refs(&st, &mut [m], false).is_err());
    }

    #[test]
    fn usage_counts_specs_and_live_tasks_by_version() {
        let mut st = state_with(&["db"]);
        let mut svc = crate::store::fixtures::service("s1", "web");
        svc.spec.task.secrets = vec![SecretRef {
            secret_id: "id-db".into(),
            ..SecretRef::new("db")
        }];
        st.services.insert("s1".into(), svc.clone());
        let mut t = crate::store::fixtures::task();
        t.service_id = "s1".into();
        t.node_id = "n1".into();
        t.spec = svc.spec.task.clone();
        t.versions.insert("id-db".into(), 2);
        t.status.held.insert("id-db".into(), 1);
        st.tasks.insert(t.id.clone(), t);
        let u = usage(&st, false, "id-db");
        assert_eq!(u[&1].services.len(), 1);
        assert_eq!((u[&1].tasks, u[&2].tasks), (1, 1));
        assert!(u[&2].nodes.contains("n1"));
    }

    /// `service rm` then `secret rm` at once (`stack rm`): the removed service's task, not yet
    /// marked for removal by the orchestrator, holds the secret no more.
    #[test]
    fn a_removed_services_task_holds_no_secret_before_the_orchestrator_sweeps_it() {
        let mut st = state_with(&["db"]);
        let mut t = crate::store::fixtures::task();
        t.versions.insert("id-db".into(), 1);
        st.tasks.insert(t.id.clone(), t.clone());
        assert!(usage(&st, false, "id-db").is_empty(), "service s is gone");
        st.services
            .insert("s".into(), crate::store::fixtures::service("s", "web"));
        assert_eq!(usage(&st, false, "id-db")[&1].tasks, 1, "while it exists");
    }
}
