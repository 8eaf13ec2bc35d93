//! `stack rm --volumes` on the managers: the request (audited), which node removes which
//! stack's volumes now (a pure function of the state, sent with heartbeats), the agents'
//! reports (recorded and audited), and the progress the CLI waits on. The mechanism is in
//! [`crate::store::volumes`].

use crate::api::v1::{NodeVolumes, StackVolumesStatus, VolumesRemoved};
use crate::audit::{Actor, AuditEvent, Outcome};
use crate::store::model::{Command, NodeState, State};
use crate::store::service::Runtime;
use crate::store::volumes::{MAX_REPORTED, NAMESPACE_LABEL};

use super::{Manager, ManagerError};

/// Whether a service of `stack` is still in the state (its tasks may still use the volumes).
fn stack_has_services(s: &State, stack: &str) -> bool {
    s.services
        .values()
        .any(|svc| svc.spec.labels.get(NAMESPACE_LABEL).map(String::as_str) == Some(stack))
}

/// The stacks whose volumes `node_id` is to remove now: requested, no service of the stack
/// left, and not yet reported by that node.
pub fn work_for(s: &State, node_id: &str) -> Vec<String> {
    s.volume_removals
        .iter()
        .filter(|(stack, r)| !r.done.contains_key(node_id) && !stack_has_services(s, stack))
        .map(|(stack, _)| stack.clone())
        .collect()
}

/// Where the request for `stack` stands.
pub fn progress(s: &State, stack: &str) -> StackVolumesStatus {
    let Some(r) = s.volume_removals.get(stack) else {
        return StackVolumesStatus::default();
    };
    let host = |id: &str| {
        s.nodes
            .get(id)
            .map_or(id.to_string(), |n| n.hostname.clone())
    };
    let mut out = StackVolumesStatus {
        requested: true,
        waiting_for_services: stack_has_services(s, stack),
        done: r
            .done
            .iter()
            .map(|(id, names)| NodeVolumes {
                node: host(id),
                names: names.clone(),
            })
            .collect(),
        ..Default::default()
    };
    for n in s.nodes.values() {
        if r.done.contains_key(&n.id) || !n.runtimes.contains(&Runtime::Docker) {
            continue;
        }
        match n.state {
            NodeState::Ready | NodeState::Unknown => out.pending.push(n.hostname.clone()),
            NodeState::Down => out.down.push(n.hostname.clone()),
            NodeState::Disconnected => {}
        }
    }
    out
}

/// A stack name as `stack rm` takes it (the name rule, at most 64 bytes).
fn check_stack(stack: &str) -> Result<(), ManagerError> {
    if crate::spec::name::is_valid(stack, 64) {
        Ok(())
    } else {
        Err(ManagerError::Invalid(format!(
            "stack: {} is not a stack name",
            crate::util::quote(&crate::util::prefix(stack, 64))
        )))
    }
}

impl Manager {
    /// `stack rm --volumes`: records the request with its audit record.
    pub async fn request_volume_removal(
        &self,
        actor: Actor,
        stack: &str,
    ) -> Result<StackVolumesStatus, ManagerError> {
        check_stack(stack)?;
        let record = AuditEvent::now(actor, "stack.volumes.rm", stack, Outcome::Ok);
        self.propose(Command::Batch(vec![
            Command::RequestVolumeRemoval {
                stack: stack.to_string(),
                at: crate::util::now_rfc3339(),
            },
            Command::Audit(record),
        ]))
        .await?;
        Ok(self.read(|s| progress(s, stack)))
    }

    /// Where `stack rm --volumes` of `stack` stands.
    pub fn volume_removal_progress(&self, stack: &str) -> Result<StackVolumesStatus, ManagerError> {
        check_stack(stack)?;
        Ok(self.read(|s| progress(s, stack)))
    }

    /// The leader's answer to a heartbeat: which stacks' volumes the node removes now.
    pub fn volume_work(&self, node_id: &str) -> Vec<String> {
        self.read(|s| work_for(s, node_id))
    }

    /// Records (with an audit record naming the node) the removals a node's heartbeat
    /// reports, once each: reports for stacks without a pending request, or already recorded
    /// for that node, are dropped. Bounded: at most 64 reports of [`MAX_REPORTED`] names.
    pub fn volume_reports(&self, node_id: &str, reports: &[VolumesRemoved]) -> Vec<Command> {
        self.read(|s| {
            let mut cmds = Vec::new();
            for r in reports.iter().take(64) {
                let pending = s
                    .volume_removals
                    .get(&r.stack)
                    .is_some_and(|x| !x.done.contains_key(node_id));
                if !pending {
                    continue;
                }
                let names: Vec<String> = r
                    .names
                    .iter()
                    .take(MAX_REPORTED)
                    .map(|n| crate::util::prefix(n, 128))
                    .collect();
                let record =
                    AuditEvent::now(Actor::node(node_id), "volume.rm", &r.stack, Outcome::Ok)
                        .with("volumes", names.join(","));
                cmds.push(Command::Batch(vec![
                    Command::VolumesRemoved {
                        stack: r.stack.clone(),
                        node_id: node_id.to_string(),
                        names,
                    },
                    Command::Audit(record),
                ]));
            }
            cmds
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures;
    use crate::store::service::{Service, ServiceSpec, TaskSpec};

    fn state() -> State {
        let mut s = State::default();
        for (id, host, st) in [
            ("n1", "one", NodeState::Ready),
            ("n2", "two", NodeState::Ready),
            ("n3", "three", NodeState::Down),
        ] {
            let mut n = fixtures::node(id);
            n.hostname = host.into();
            n.state = st;
            n.runtimes = vec![Runtime::Docker];
            s.nodes.insert(id.into(), n);
        }
        s
    }

    fn service(stack: &str) -> Command {
        let mut spec = ServiceSpec::new(
            format!("{stack}_redis"),
            TaskSpec::new(Runtime::Docker, "redis", vec![]),
        );
        spec.labels.insert(NAMESPACE_LABEL.into(), stack.into());
        Command::PutService(Box::new(Service {
            id: format!("s-{stack}"),
            spec,
            version: 1,
            previous: None,
            update: None,
            revision: 1,
            vip: None,
            created_at: String::new(),
            updated_at: String::new(),
        }))
    }

    #[test]
    fn nodes_remove_a_stacks_volumes_once_its_services_are_gone_and_a_redeploy_cancels() {
        let mut s = state();
        s.apply(service("app"));
        s.apply(Command::RequestVolumeRemoval {
            stack: "app".into(),
            at: crate::util::now_rfc3339(),
        });
        // Its service is still there: no node removes anything yet.
        assert!(work_for(&s, "n1").is_empty());
        assert!(progress(&s, "app").waiting_for_services);
        s.apply(Command::RemoveService { id: "s-app".into() });
        assert_eq!(work_for(&s, "n1"), vec!["app".to_string()]);
        s.apply(Command::VolumesRemoved {
            stack: "app".into(),
            node_id: "n1".into(),
            names: vec!["app_data".into()],
        });
        assert!(work_for(&s, "n1").is_empty());
        assert_eq!(work_for(&s, "n2"), vec!["app".to_string()]);
        let p = progress(&s, "app");
        assert_eq!(
            (p.pending, p.down),
            (vec!["two".to_string()], vec!["three".to_string()])
        );
        assert_eq!(p.done[0].node, "one");
        assert_eq!(p.done[0].names, vec!["app_data".to_string()]);
        // Deploying the stack again cancels the request: its new tasks use the volumes.
        s.apply(service("app"));
        assert!(!progress(&s, "app").requested);
        assert!(work_for(&s, "n2").is_empty());
        // A report without a request changes nothing.
        s.apply(Command::VolumesRemoved {
            stack: "app".into(),
            node_id: "n2".into(),
            names: vec!["x".into()],
        });
        assert!(s.volume_removals.is_empty());
    }

    #[test]
    fn requests_are_bounded_and_expire() {
        let mut s = state();
        s.apply(Command::RequestVolumeRemoval {
            stack: "old".into(),
            at: "2020-01-01T00:00:00Z".into(),
        });
        s.apply(Command::RequestVolumeRemoval {
            stack: "new".into(),
            at: crate::util::now_rfc3339(),
        });
        assert_eq!(s.volume_removals.keys().collect::<Vec<_>>(), ["new"]);
        for i in 0..(crate::store::volumes::MAX_REQUESTS + 10) {
            s.apply(Command::RequestVolumeRemoval {
                stack: format!("s{i}"),
                at: crate::util::now_rfc3339(),
            });
        }
        assert_eq!(s.volume_removals.len(), crate::store::volumes::MAX_REQUESTS);
    }
}
