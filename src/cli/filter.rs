//! `--filter KEY=VALUE`, with Docker's keys and rules: several values of one key match if
//! any does, different keys must all match. Each listing names the keys it takes; the
//! matching itself is a pure function of the listed objects.

use std::collections::{BTreeMap, HashMap};

use crate::api::v1::NodeInfo;
use crate::api::view::TaskView;
use crate::store::service::{DesiredState, Mode, Service};

/// Most `--filter` flags one command takes.
const MAX_FILTERS: usize = 64;
/// Longest `--filter` value.
const MAX_FILTER_LEN: usize = 1024;

/// A `--filter` that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    /// Not `KEY=VALUE`.
    #[error("bad format of filter {0:?} (expected name=value)")]
    Format(String),
    /// A key this command has no filter for.
    #[error("invalid filter {key:?}: this command filters on {allowed}")]
    Key {
        /// The key given.
        key: String,
        /// The keys the command knows.
        allowed: String,
    },
    /// Too many or too long.
    #[error(
        "too many or too long --filter values (at most {MAX_FILTERS} of {MAX_FILTER_LEN} bytes)"
    )]
    TooBig,
    /// A value outside the key's choices.
    #[error("invalid filter value {value:?} for {key}: expected one of {allowed}")]
    Value {
        /// The key.
        key: String,
        /// The value given (a short prefix).
        value: String,
        /// The values the key takes.
        allowed: String,
    },
}

/// Parsed `--filter` flags: key → the values given for it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filters(BTreeMap<String, Vec<String>>);

impl Filters {
    /// Parses `KEY=VALUE` flags, refusing keys outside `allowed`.
    pub fn parse(args: &[String], allowed: &[&str]) -> Result<Filters, FilterError> {
        if args.len() > MAX_FILTERS || args.iter().any(|a| a.len() > MAX_FILTER_LEN) {
            return Err(FilterError::TooBig);
        }
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for a in args {
            let Some((k, v)) = a.split_once('=') else {
                return Err(FilterError::Format(a.chars().take(64).collect()));
            };
            let key = k.trim().to_ascii_lowercase();
            if !allowed.contains(&key.as_str()) {
                return Err(FilterError::Key {
                    key: key.chars().take(64).collect(),
                    allowed: allowed.join(", "),
                });
            }
            map.entry(key).or_default().push(v.to_string());
        }
        Ok(Filters(map))
    }

    /// Whether `key`'s values (if any were given) include one `test` accepts.
    fn any(&self, key: &str, test: impl Fn(&str) -> bool) -> bool {
        self.0.get(key).is_none_or(|vs| vs.iter().any(|v| test(v)))
    }

    /// Checks `key`'s values are among `choices`.
    fn check_choices(&self, key: &str, choices: &[&str]) -> Result<(), FilterError> {
        for v in self.0.get(key).into_iter().flatten() {
            if !choices.contains(&v.as_str()) {
                return Err(FilterError::Value {
                    key: key.to_string(),
                    value: v.chars().take(64).collect(),
                    allowed: choices.join(", "),
                });
            }
        }
        Ok(())
    }
}

/// `label=KEY` (has the label) or `label=KEY=VALUE` (has it with that value).
fn label_matches(labels: &BTreeMap<String, String>, want: &str) -> bool {
    match want.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
        None => labels.contains_key(want),
    }
}

/// Keys of `service ls` and `stack services`.
pub const SERVICE_KEYS: &[&str] = &["id", "label", "mode", "name"];

/// `service ls --filter`: ID prefix, name prefix, label, mode.
pub fn services<T>(f: &Filters, list: &mut Vec<(Service, T)>) -> Result<(), FilterError> {
    f.check_choices("mode", &["replicated", "global"])?;
    list.retain(|(s, _)| {
        f.any("id", |v| s.id.starts_with(v))
            && f.any("name", |v| s.spec.name.starts_with(v))
            && f.any("label", |v| label_matches(&s.spec.labels, v))
            && f.any("mode", |v| match s.spec.mode {
                Mode::Replicated { .. } => v == "replicated",
                Mode::Global => v == "global",
            })
    });
    Ok(())
}

/// Keys of `service ps`, `node ps` and `stack ps`.
pub const TASK_KEYS: &[&str] = &["desired-state", "id", "name", "node"];

/// Task filters: `desired-state=running|shutdown|accepted`, ID prefix, task name prefix
/// (`web.1`), node (ID, ID prefix or host name).
pub fn tasks(
    f: &Filters,
    list: &mut Vec<TaskView>,
    hosts: &HashMap<String, String>,
) -> Result<(), FilterError> {
    f.check_choices("desired-state", &["running", "shutdown", "accepted"])?;
    list.retain(|t| {
        let desired = match t.task.desired {
            DesiredState::Running => "running",
            // skep has no task accepted but not yet asked to run: `accepted` matches none.
            DesiredState::Shutdown | DesiredState::Remove => "shutdown",
        };
        let host = hosts.get(&t.task.node_id).map(String::as_str);
        f.any("desired-state", |v| v == desired)
            && f.any("id", |v| t.task.id.starts_with(v))
            && f.any("name", |v| t.task.name().starts_with(v))
            && f.any("node", |v| {
                (!t.task.node_id.is_empty() && t.task.node_id.starts_with(v)) || host == Some(v)
            })
    });
    Ok(())
}

/// Keys of `node ls`.
pub const NODE_KEYS: &[&str] = &["id", "label", "node.label", "membership", "name", "role"];

/// `node ls --filter`: ID prefix, host name prefix, `role=manager|worker`,
/// `membership=accepted|pending`, `node.label` (and `label`: skep has no engine labels, so
/// it reads the node's labels too).
pub fn nodes(f: &Filters, list: &mut Vec<NodeInfo>) -> Result<(), FilterError> {
    f.check_choices("role", &["manager", "worker"])?;
    f.check_choices("membership", &["accepted", "pending"])?;
    list.retain(|n| {
        let labels: BTreeMap<String, String> = n.labels.clone().into_iter().collect();
        f.any("id", |v| n.id.starts_with(v))
            && f.any("name", |v| n.hostname.starts_with(v))
            && f.any("role", |v| n.role == v)
            // A node is in `node ls` once it holds a certificate: accepted.
            && f.any("membership", |v| v == "accepted")
            && f.any("node.label", |v| label_matches(&labels, v))
            && f.any("label", |v| label_matches(&labels, v))
    });
    Ok(())
}

/// Keys of `secret ls` and `config ls`.
pub const OBJECT_KEYS: &[&str] = &["id", "label", "name"];

/// `secret ls`/`config ls --filter`: ID prefix, name prefix, label.
pub fn objects(f: &Filters, id: &str, name: &str, labels: &BTreeMap<String, String>) -> bool {
    f.any("id", |v| id.starts_with(v))
        && f.any("name", |v| name.starts_with(v))
        && f.any("label", |v| label_matches(labels, v))
}

/// Keys of `network ls`.
pub const NETWORK_KEYS: &[&str] = &["driver", "id", "label", "name", "scope"];

/// `network ls --filter`: as [`objects`], plus the driver, and `scope=swarm` (every skep
/// network is swarm-scoped).
pub fn network(
    f: &Filters,
    id: &str,
    name: &str,
    labels: &BTreeMap<String, String>,
    driver: &str,
) -> bool {
    objects(f, id, name, labels)
        && f.any("driver", |v| v == driver)
        && f.any("scope", |v| v == "swarm")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures;

    fn parse(args: &[&str], keys: &[&str]) -> Result<Filters, FilterError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Filters::parse(&args, keys)
    }

    #[test]
    fn parses_as_docker_and_refuses_the_rest() {
        assert_eq!(parse(&[], SERVICE_KEYS).unwrap(), Filters::default());
        assert!(parse(&["name=web", "name=db", "mode=global"], SERVICE_KEYS).is_ok());
        assert!(matches!(
            parse(&["name"], SERVICE_KEYS),
            Err(FilterError::Format(_))
        ));
        let e = parse(&["colour=red"], SERVICE_KEYS).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid filter \"colour\": this command filters on id, label, mode, name"
        );
        let many: Vec<String> = (0..=MAX_FILTERS).map(|i| format!("name={i}")).collect();
        assert_eq!(
            Filters::parse(&many, SERVICE_KEYS),
            Err(FilterError::TooBig)
        );
    }

    fn svc(id: &str, name: &str, global: bool, label: Option<(&str, &str)>) -> Service {
        let mut s = fixtures::service(id, name);
        if global {
            s.spec.mode = Mode::Global;
        }
        if let Some((k, v)) = label {
            s.spec.labels.insert(k.into(), v.into());
        }
        s
    }

    #[test]
    fn same_key_ors_different_keys_and() {
        let all = vec![
            (svc("a1", "web", false, Some(("tier", "front"))), vec![]),
            (svc("b2", "db", false, Some(("tier", "back"))), vec![]),
            (svc("c3", "webhook", true, None), vec![]),
        ];
        let names = |args: &[&str]| {
            let mut l = all.clone();
            services::<Vec<TaskView>>(&parse(args, SERVICE_KEYS).unwrap(), &mut l).unwrap();
            l.iter()
                .map(|(s, _)| s.spec.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&["name=web"]), ["web", "webhook"]);
        assert_eq!(names(&["name=web", "name=db"]), ["web", "db", "webhook"]);
        assert_eq!(names(&["name=web", "mode=global"]), ["webhook"]);
        assert_eq!(names(&["label=tier"]), ["web", "db"]);
        assert_eq!(names(&["label=tier=back"]), ["db"]);
        assert_eq!(names(&["id=b"]), ["db"]);
        let mut l = all.clone();
        assert!(services(&parse(&["mode=both"], SERVICE_KEYS).unwrap(), &mut l).is_err());
    }
}
