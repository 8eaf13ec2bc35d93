//! Docker's JSON shapes of skep's objects, for `inspect --format` templates: a Swarm user's
//! `{{.Spec.Name}}`, `{{.Spec.Mode.Replicated.Replicas}}` or
//! `{{.Spec.TaskTemplate.ContainerSpec.Image}}` reads the same fields as with Docker. The
//! object also keeps skep's own fields (lower case, as `inspect` prints them), so a template
//! can use either.

use serde_json::{Value, json};

use super::spec::constraint_text;
use super::tasks::lower;
use crate::store::service::{Mode, RestartCondition, Service};

/// `service inspect`'s object for templates: skep's service with Docker's keys added.
pub(super) fn service(s: &Service) -> Value {
    let t = &s.spec.task;
    let mode = match s.spec.mode {
        Mode::Replicated { replicas } => json!({ "Replicated": { "Replicas": replicas } }),
        Mode::Global => json!({ "Global": {} }),
    };
    // Docker's secret and config references: the same file fields, named by kind.
    let refs = |list: &[crate::store::service::SecretRef], kind: &str| -> Vec<Value> {
        list.iter()
            .map(|r| {
                json!({
                    format!("{kind}ID"): r.secret_id,
                    format!("{kind}Name"): r.secret_name,
                    "File": {"Name": r.target, "UID": r.uid.to_string(),
                             "GID": r.gid.to_string(), "Mode": r.mode},
                })
            })
            .collect()
    };
    let (secrets, configs) = (refs(&t.secrets, "Secret"), refs(&t.configs, "Config"));
    let ports: Vec<Value> = s
        .spec
        .ports
        .iter()
        .map(|p| {
            json!({"Protocol": lower(&p.protocol), "TargetPort": p.target,
                   "PublishedPort": p.published, "PublishMode": lower(&p.mode)})
        })
        .collect();
    let condition = match t.restart.condition {
        RestartCondition::None => "none",
        RestartCondition::OnFailure => "on-failure",
        RestartCondition::Any => "any",
    };
    // Docker leaves out a zero `Pids`.
    let mut limit = json!({"NanoCPUs": t.limits.nano_cpus, "MemoryBytes": t.limits.memory_bytes});
    if t.limits.pids > 0 {
        limit["Pids"] = t.limits.pids.into();
    }
    let docker = json!({
        "ID": s.id,
        "Version": { "Index": s.version },
        "CreatedAt": s.created_at,
        "UpdatedAt": s.updated_at,
        "Spec": {
            "Name": s.spec.name,
            "Labels": s.spec.labels,
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": t.image,
                    "Args": t.command,
                    "Env": t.env,
                    "Secrets": secrets,
                    "Configs": configs,
                },
                "Resources": {
                    "Limits": limit,
                    "Reservations": {"NanoCPUs": t.reservations.nano_cpus,
                                     "MemoryBytes": t.reservations.memory_bytes},
                },
                "RestartPolicy": {
                    "Condition": condition,
                    "Delay": t.restart.delay_ms * 1_000_000,
                    "MaxAttempts": t.restart.max_attempts,
                },
                "Placement": {
                    "Constraints": t.constraints.iter().map(constraint_text).collect::<Vec<_>>(),
                },
                "Runtime": lower(&t.runtime),
            },
            "Mode": mode,
            "EndpointSpec": { "Ports": ports },
        },
        "Endpoint": {
            "VirtualIPs": s.vip.map(|ip| vec![json!({"Addr": ip.to_string()})]).unwrap_or_default(),
        },
    });
    let mut out = serde_json::to_value(s).unwrap_or_else(|_| json!({}));
    if let (Some(o), Value::Object(d)) = (out.as_object_mut(), docker) {
        o.extend(d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::template::Compiled;
    use crate::store::fixtures;

    #[test]
    fn dockers_fields_and_skeps_both_read() {
        let mut s = fixtures::service("abc123", "web");
        s.spec.labels.insert("tier".into(), "front".into());
        let v = service(&s);
        let t = Compiled::new(
            "{{.ID}} {{.Spec.Name}} {{.Spec.Mode.Replicated.Replicas}} \
             {{.Spec.TaskTemplate.ContainerSpec.Image}} {{index .Spec.Labels \"tier\"}} {{.spec.name}}",
        )
        .unwrap();
        assert_eq!(
            t.render(&v).unwrap(),
            format!("abc123 web 1 {} front web", s.spec.task.image)
        );
    }
}
