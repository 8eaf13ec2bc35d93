//! `skep events`: what changed in the cluster, in Docker's shape for swarm events. Pure: the
//! stream that sends them is [`super::event_stream`].
//!
//! ```text
//!  audit record (committed, outcome ok) ──from_record──► Event   service|secret|config|
//!                                                                network|node create/update/remove
//!  replicated state, before ─┐
//!  replicated state, after  ─┴──changes──────────────► Event   node state, service update state
//!                                                      (unaudited: the leader's liveness and
//!                                                       rollout writes)
//!  Event ──Selection::matches──► sent, or not (Docker's filter keys and rules)
//! ```
//!
//! An event names the object and what changed, never who changed it (that is the audit
//! log's, behind `ReadAudit`), and never a detail of the record it came from unless this
//! module lists it: a secret's digest, a reason or a peer address does not reach an event.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::audit::{AuditRecord, Outcome};
use crate::store::model::{NodeState, State};
use crate::store::service::UpdatePhase;

/// One event, as Docker's `events.Message` for swarm scope serialises it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// `service`, `node`, `secret`, `config` or `network`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// `create`, `update` or `remove`.
    #[serde(rename = "Action")]
    pub action: String,
    /// The object.
    #[serde(rename = "Actor")]
    pub actor: EventActor,
    /// Always `swarm`.
    pub scope: String,
    /// Unix seconds.
    pub time: i64,
    /// Unix nanoseconds.
    #[serde(rename = "timeNano")]
    pub time_nano: i64,
}

/// The object an event is about: its ID and attributes (`name`, `replicas.new`, ...).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventActor {
    /// The object's ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// What Docker shows beside it, sorted by key.
    #[serde(rename = "Attributes")]
    pub attributes: BTreeMap<String, String>,
}

impl Event {
    fn new(kind: &str, action: &str, id: &str, at: OffsetDateTime) -> Event {
        let nanos = at.unix_timestamp_nanos();
        Event {
            kind: kind.into(),
            action: action.into(),
            actor: EventActor {
                id: id.into(),
                attributes: BTreeMap::new(),
            },
            scope: "swarm".into(),
            time: at.unix_timestamp(),
            time_nano: i64::try_from(nanos).unwrap_or(i64::MAX),
        }
    }

    fn attr(mut self, key: &str, value: Option<impl AsRef<str>>) -> Event {
        if let Some(v) = value
            && !v.as_ref().is_empty()
        {
            self.actor.attributes.insert(key.into(), v.as_ref().into());
        }
        self
    }

    /// The event on the wire.
    pub fn to_wire(&self) -> crate::api::v1::EventMessage {
        crate::api::v1::EventMessage {
            r#type: self.kind.clone(),
            action: self.action.clone(),
            actor_id: self.actor.id.clone(),
            attributes: self.actor.attributes.clone().into_iter().collect(),
            scope: self.scope.clone(),
            time_nano: self.time_nano,
        }
    }

    /// The event from the wire.
    pub fn from_wire(m: crate::api::v1::EventMessage) -> Event {
        Event {
            kind: m.r#type,
            action: m.action,
            actor: EventActor {
                id: m.actor_id,
                attributes: m.attributes.into_iter().collect(),
            },
            scope: m.scope,
            time: m.time_nano.div_euclid(1_000_000_000),
            time_nano: m.time_nano,
        }
    }
}

/// The event a committed audit record stands for, if Docker would show one: the changes
/// operators make to services, secrets, configs, networks and nodes. `hostname` names a node
/// whose record does not (the state's host name for it).
pub fn from_record(r: &AuditRecord, hostname: impl Fn(&str) -> Option<String>) -> Option<Event> {
    let e = &r.event;
    if e.outcome != Outcome::Ok {
        return None;
    }
    let at = crate::util::parse_rfc3339(&e.time)?;
    let (kind, verb) = e.action.split_once('.')?;
    let detail = |k: &str| e.details.get(k).map(String::as_str);
    let named = |kind: &str, action: &str| {
        let id = detail(&format!("{kind}_id")).unwrap_or(&e.target);
        Event::new(kind, action, id, at).attr("name", Some(&e.target))
    };
    let node = |action: &str| {
        let name = detail("hostname")
            .map(String::from)
            .or_else(|| hostname(&e.target));
        Event::new("node", action, &e.target, at).attr("name", name.as_deref())
    };
    Some(match (kind, verb) {
        ("service", "create" | "remove") => named("service", verb),
        ("service", "update" | "scale" | "rollback") => {
            named("service", "update").attr("replicas.new", detail("replicas"))
        }
        ("secret" | "config", "create" | "remove") => named(kind, verb),
        ("secret" | "config", "update" | "rollback") => named(kind, "update"),
        ("network", "create" | "remove") => named("network", verb),
        ("node", "join") => node("create"),
        ("node", "remove") => node("remove"),
        // Docker's lower case (the record has `node ls`'s `Pause`).
        ("node", "update") => node("update").attr(
            "availability.new",
            detail("availability").map(str::to_lowercase),
        ),
        ("node", "promote" | "demote") => {
            node("update").attr("role.new", detail("role").map(str::to_lowercase))
        }
        _ => return None,
    })
}

/// What [`changes`] compares: the parts of the state that change without an audit record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Watched {
    nodes: BTreeMap<String, (String, NodeState)>,
    services: BTreeMap<String, (String, Option<UpdatePhase>)>,
}

impl Watched {
    /// Each node's host name and state, each service's name and update state.
    pub fn of(s: &State) -> Watched {
        Watched {
            nodes: s
                .nodes
                .values()
                .map(|n| (n.id.clone(), (n.hostname.clone(), n.state)))
                .collect(),
            services: s
                .services
                .values()
                .map(|v| {
                    let phase = v.update.as_ref().map(|u| u.phase);
                    (v.id.clone(), (v.spec.name.clone(), phase))
                })
                .collect(),
        }
    }
}

/// The events between two states of [`Watched`] things, stamped `at`, as Docker words them:
/// a node's state (`node update`, `state.old`/`state.new`) and a service's rolling update
/// (`service update`, `updatestate.old`/`updatestate.new`). Objects created or removed in
/// between are the audit records' to tell.
pub fn changes(old: &Watched, new: &Watched, at: OffsetDateTime) -> Vec<Event> {
    let mut out = Vec::new();
    for (id, (host, state)) in &new.nodes {
        if let Some((_, before)) = old.nodes.get(id)
            && before != state
        {
            out.push(
                Event::new("node", "update", id, at)
                    .attr("name", Some(host))
                    .attr("state.old", Some(&node_state(*before)))
                    .attr("state.new", Some(&node_state(*state))),
            );
        }
    }
    for (id, (name, phase)) in &new.services {
        if let Some((_, before)) = old.services.get(id)
            && before != phase
            && let Some(now) = phase
        {
            out.push(
                Event::new("service", "update", id, at)
                    .attr("name", Some(name))
                    .attr("updatestate.old", before.map(update_state))
                    .attr("updatestate.new", Some(update_state(*now))),
            );
        }
    }
    out
}

/// Docker's lower-case node state.
fn node_state(s: NodeState) -> String {
    s.as_str().to_lowercase()
}

/// Docker's update state names.
fn update_state(p: UpdatePhase) -> &'static str {
    match p {
        UpdatePhase::Updating => "updating",
        UpdatePhase::Paused => "paused",
        UpdatePhase::Completed => "completed",
        UpdatePhase::RollbackStarted => "rollback_started",
        UpdatePhase::RollbackPaused => "rollback_paused",
        UpdatePhase::RollbackCompleted => "rollback_completed",
    }
}

/// Why an events request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventsError {
    /// A time bound is not RFC 3339.
    #[error("{which}: {} is not an RFC 3339 time", crate::util::quote(.value))]
    Time {
        /// `since` or `until`.
        which: &'static str,
        /// What was given.
        value: String,
    },
    /// `since` after `until`.
    #[error("since time ({since}) cannot be after until time ({until})")]
    Order {
        /// The start.
        since: String,
        /// The end.
        until: String,
    },
    /// More filters than any use needs.
    #[error("at most {MAX_FILTERS} filters (this request has {0})")]
    TooMany(usize),
    /// A filter longer than any name.
    #[error("filter {}: at most {MAX_FILTER_BYTES} bytes", crate::util::quote(.0))]
    TooLong(String),
    /// Not `KEY=VALUE`.
    #[error("filter {}: not KEY=VALUE (e.g. type=service)", crate::util::quote(.0))]
    NotKeyValue(String),
    /// A key Docker's events do not have.
    #[error("invalid filter {}: use {}", crate::util::quote(.0), KEYS.join(", "))]
    UnknownKey(String),
    /// A value out of a closed set.
    #[error("invalid filter '{key}={}': use {}", crate::util::prefix(.value, 64), .allowed.join(", "))]
    Value {
        /// The key.
        key: &'static str,
        /// What was given.
        value: String,
        /// What it may be.
        allowed: &'static [&'static str],
    },
}

/// Filters one request may carry.
pub const MAX_FILTERS: usize = 64;
/// Bytes of one filter (`KEY=VALUE`).
pub const MAX_FILTER_BYTES: usize = 512;

/// Keys that match an event whose actor's ID or name starts with the value, whatever its
/// type (Docker's `fuzzyMatchName`).
const NAME_KEYS: [&str; 9] = [
    "config",
    "container",
    "daemon",
    "network",
    "node",
    "plugin",
    "secret",
    "service",
    "volume",
];
/// Every key accepted.
const KEYS: [&str; 13] = [
    "config",
    "container",
    "daemon",
    "event",
    "label",
    "network",
    "node",
    "plugin",
    "scope",
    "secret",
    "service",
    "type",
    "volume",
];
/// Docker's event types (skep sends the swarm-scoped ones).
const TYPES: &[&str] = &[
    "config",
    "container",
    "daemon",
    "image",
    "network",
    "node",
    "plugin",
    "secret",
    "service",
    "volume",
];
const SCOPES: &[&str] = &["local", "swarm"];

/// Which events a client asked for: a time range and Docker's filters (values of one key
/// OR, different keys AND; `label` values AND, as in Docker).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Events at or after this time; `None` with no `until`: only new ones.
    pub since: Option<OffsetDateTime>,
    /// Events at or before this time; `None`: follow until the client hangs up.
    pub until: Option<OffsetDateTime>,
    filters: BTreeMap<&'static str, BTreeSet<String>>,
}

impl Selection {
    /// Parses a request's strings (empty time: no bound). Sizes are bounded first.
    pub fn parse(since: &str, until: &str, filters: &[String]) -> Result<Selection, EventsError> {
        let time = |which: &'static str, v: &str| -> Result<Option<OffsetDateTime>, EventsError> {
            if v.is_empty() {
                return Ok(None);
            }
            crate::util::parse_rfc3339(v)
                .map(Some)
                .ok_or_else(|| EventsError::Time {
                    which,
                    value: v.to_string(),
                })
        };
        let (since, until) = (time("since", since)?, time("until", until)?);
        if let (Some(s), Some(u)) = (since, until)
            && s > u
        {
            return Err(EventsError::Order {
                since: crate::util::rfc3339(s),
                until: crate::util::rfc3339(u),
            });
        }
        if filters.len() > MAX_FILTERS {
            return Err(EventsError::TooMany(filters.len()));
        }
        let mut out: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();
        for f in filters {
            if f.len() > MAX_FILTER_BYTES {
                return Err(EventsError::TooLong(f.clone()));
            }
            let (k, v) = f
                .split_once('=')
                .ok_or_else(|| EventsError::NotKeyValue(f.clone()))?;
            let key = KEYS
                .iter()
                .copied()
                .find(|known| known.eq_ignore_ascii_case(k))
                .ok_or_else(|| EventsError::UnknownKey(k.to_string()))?;
            let allowed = match key {
                "type" => Some(TYPES),
                "scope" => Some(SCOPES),
                _ => None,
            };
            if let Some(allowed) = allowed
                && !allowed.contains(&v)
            {
                return Err(EventsError::Value {
                    key,
                    value: v.to_string(),
                    allowed,
                });
            }
            out.entry(key).or_default().insert(v.to_string());
        }
        Ok(Selection {
            since,
            until,
            filters: out,
        })
    }

    /// Whether `t` is within the time range.
    pub fn in_range(&self, t: OffsetDateTime) -> bool {
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u)
    }

    /// Whether `e` is within the time range and passes the filters.
    pub fn admits(&self, e: &Event) -> bool {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(e.time_nano))
            .is_ok_and(|t| self.in_range(t))
            && self.matches(e)
    }

    /// Whether the filters let `e` through (the time range is [`Self::in_range`]'s).
    pub fn matches(&self, e: &Event) -> bool {
        let exact = |key: &str, v: &str| self.filters.get(key).is_none_or(|set| set.contains(v));
        let name = e.actor.attributes.get("name").map_or("", String::as_str);
        let fuzzy = |key: &str| {
            self.filters.get(key).is_none_or(|set| {
                set.iter()
                    .any(|p| e.actor.id.starts_with(p.as_str()) || name.starts_with(p.as_str()))
            })
        };
        let labels = self.filters.get("label").is_none_or(|set| {
            set.iter().all(|l| match l.split_once('=') {
                Some((k, v)) => e.actor.attributes.get(k).is_some_and(|have| have == v),
                None => e.actor.attributes.contains_key(l),
            })
        });
        exact("type", &e.kind)
            && exact("event", &e.action)
            && exact("scope", &e.scope)
            && NAME_KEYS.iter().all(|k| fuzzy(k))
            && labels
    }
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
