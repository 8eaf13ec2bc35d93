//! Which records an operator asked for (`audit ls|export` filters). Applied on the manager, so
//! a big log is not shipped whole to be filtered by the client.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use super::{AuditRecord, Outcome};

/// Why a filter did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    /// A time bound is not RFC 3339.
    #[error(
        "{which}: {} is not an RFC 3339 time (e.g. 2026-11-01T00:00:00Z)",
        crate::util::quote(.value)
    )]
    Time {
        /// `since` or `until`.
        which: &'static str,
        /// What was given.
        value: String,
    },
    /// The outcome is not one of ours.
    #[error("outcome: {} is not ok, denied or error", crate::util::quote(.0))]
    Outcome(String),
    /// A condition longer than any actor, action or target can be.
    #[error("{which}: at most {MAX_FILTER_BYTES} bytes (this one has {len})")]
    TooLong {
        /// `actor`, `action` or `target`.
        which: &'static str,
        /// Its length.
        len: usize,
    },
}

/// Bytes of one filter condition (a target is at most
/// [`super::MAX_TARGET_BYTES`]).
pub const MAX_FILTER_BYTES: usize = super::MAX_TARGET_BYTES;

/// A conjunction of conditions on records; an empty filter matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only records at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only records at or before this time.
    pub until: Option<OffsetDateTime>,
    /// The actor's ID, or `kind:id`.
    pub actor: Option<String>,
    /// An exact action, or a prefix ending in `.` or `*` (`secret.*`).
    pub action: Option<String>,
    /// The exact target.
    pub target: Option<String>,
    /// The outcome.
    pub outcome: Option<Outcome>,
    /// Only records with this seq or later.
    pub from_seq: u64,
}

impl AuditFilter {
    /// Builds a filter from the wire's strings (empty = no condition).
    pub fn parse(
        since: &str,
        until: &str,
        actor: &str,
        action: &str,
        target: &str,
        outcome: &str,
        from_seq: u64,
    ) -> Result<Self, FilterError> {
        let time = |which: &'static str, v: &str| -> Result<Option<OffsetDateTime>, FilterError> {
            if v.is_empty() {
                return Ok(None);
            }
            crate::util::parse_rfc3339(v)
                .map(Some)
                .ok_or_else(|| FilterError::Time {
                    which,
                    value: v.to_string(),
                })
        };
        for (which, v) in [("actor", actor), ("action", action), ("target", target)] {
            if v.len() > MAX_FILTER_BYTES {
                return Err(FilterError::TooLong {
                    which,
                    len: v.len(),
                });
            }
        }
        let some = |v: &str| (!v.is_empty()).then(|| v.to_string());
        let outcome = match outcome {
            "" => None,
            "ok" => Some(Outcome::Ok),
            "denied" => Some(Outcome::Denied),
            "error" => Some(Outcome::Error),
            other => return Err(FilterError::Outcome(other.to_string())),
        };
        Ok(AuditFilter {
            since: time("since", since)?,
            until: time("until", until)?,
            actor: some(actor),
            action: some(action),
            target: some(target),
            outcome,
            from_seq,
        })
    }

    /// Whether it selects records by their content (not just a starting seq): the result is
    /// then not a contiguous chain.
    pub fn is_selective(&self) -> bool {
        self.since.is_some()
            || self.until.is_some()
            || self.actor.is_some()
            || self.action.is_some()
            || self.target.is_some()
            || self.outcome.is_some()
    }

    /// Whether `r` passes.
    pub fn matches(&self, r: &AuditRecord) -> bool {
        let e = &r.event;
        if r.seq < self.from_seq {
            return false;
        }
        if let Some(a) = &self.actor
            && *a != e.actor.id
            && a.strip_prefix(e.actor.kind.as_str())
                .and_then(|rest| rest.strip_prefix(':'))
                != Some(e.actor.id.as_str())
        {
            return false;
        }
        if let Some(want) = &self.action {
            let hit = match want.strip_suffix('*') {
                Some(prefix) => e.action.starts_with(prefix),
                None if want.ends_with('.') => e.action.starts_with(want.as_str()),
                None => e.action == *want,
            };
            if !hit {
                return false;
            }
        }
        if self.target.as_ref().is_some_and(|t| *t != e.target)
            || self.outcome.is_some_and(|o| o != e.outcome)
        {
            return false;
        }
        if self.since.is_some() || self.until.is_some() {
            let Some(t) = crate::util::parse_rfc3339(&e.time) else {
                return false;
            };
            if self.since.is_some_and(|s| t < s) || self.until.is_some_and(|u| t > u) {
                return false;
            }
        }
        true
    }

    /// The conditions as audit details (`audit.read` records name what was read).
    pub fn details(&self) -> BTreeMap<String, String> {
        let mut d = BTreeMap::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                d.insert(k.to_string(), v);
            }
        };
        put("since", self.since.map(crate::util::rfc3339));
        put("until", self.until.map(crate::util::rfc3339));
        put("actor", self.actor.clone());
        put("action", self.action.clone());
        put("target", self.target.clone());
        put("outcome", self.outcome.map(|o| o.as_str().to_string()));
        put(
            "from_seq",
            (self.from_seq > 0).then(|| self.from_seq.to_string()),
        );
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Actor, AuditChain, AuditEvent};

    fn chain() -> AuditChain {
        let mut c = AuditChain::default();
        let mut e = |actor: Actor, action: &str, target: &str, o: Outcome, time: &str| {
            let mut ev = AuditEvent::now(actor, action, target, o);
            ev.time = time.into();
            c.append(ev);
        };
        e(
            Actor::local_admin("n1"),
            "secret.create",
            "db",
            Outcome::Ok,
            "2026-01-01T10:00:00Z",
        );
        e(
            Actor::node("n2"),
            "secret.deliver",
            "db",
            Outcome::Ok,
            "2026-01-01T11:00:00Z",
        );
        e(
            Actor::anonymous("1.2.3.4:5"),
            "token.use",
            "worker",
            Outcome::Denied,
            "2026-01-02T00:00:00Z",
        );
        e(
            Actor::node("n1"),
            "secrets.x",
            "y",
            Outcome::Error,
            "2026-01-03T00:00:00Z",
        );
        c
    }

    fn seqs(f: &AuditFilter) -> Vec<u64> {
        chain()
            .records()
            .iter()
            .filter(|r| f.matches(r))
            .map(|r| r.seq)
            .collect()
    }

    fn parse(since: &str, actor: &str, action: &str, outcome: &str) -> AuditFilter {
        AuditFilter::parse(since, "", actor, action, "", outcome, 0).unwrap()
    }

    #[test]
    fn a_condition_longer_than_any_target_is_refused() {
        let big = "t".repeat(100 * 1024);
        let e = AuditFilter::parse("", "", "", "", &big, "", 0).unwrap_err();
        assert_eq!(
            e,
            FilterError::TooLong {
                which: "target",
                len: big.len()
            }
        );
        assert!(e.to_string().len() < 100, "{e}");
    }

    #[test]
    fn each_condition_selects_exactly_its_records() {
        assert_eq!(seqs(&AuditFilter::default()), [1, 2, 3, 4]);
        assert_eq!(seqs(&parse("", "n1", "", "")), [1, 4]);
        assert_eq!(seqs(&parse("", "node:n1", "", "")), [4]);
        assert_eq!(seqs(&parse("", "local-admin:n1", "", "")), [1]);
        assert_eq!(seqs(&parse("", "node:", "", "")), Vec::<u64>::new());
        assert_eq!(seqs(&parse("", "", "secret.*", "")), [1, 2]);
        assert_eq!(seqs(&parse("", "", "secret.", "")), [1, 2]);
        assert_eq!(seqs(&parse("", "", "secret*", "")), [1, 2, 4]);
        assert_eq!(seqs(&parse("", "", "secret", "")), Vec::<u64>::new());
        assert_eq!(seqs(&parse("", "", "token.use", "denied")), [3]);
        assert_eq!(seqs(&parse("", "", "", "error")), [4]);
        assert_eq!(seqs(&parse("2026-01-01T11:00:00Z", "", "", "")), [2, 3, 4]);
        let until = AuditFilter::parse("", "2026-01-02T00:00:00Z", "", "", "db", "", 2).unwrap();
        assert_eq!(seqs(&until), [2]);
        assert!(until.is_selective());
        assert!(
            !AuditFilter::parse("", "", "", "", "", "", 3)
                .unwrap()
                .is_selective()
        );
    }

    #[test]
    fn bad_values_are_named() {
        assert_eq!(
            AuditFilter::parse("yesterday", "", "", "", "", "", 0),
            Err(FilterError::Time {
                which: "since",
                value: "yesterday".into()
            })
        );
        assert!(matches!(
            AuditFilter::parse("", "", "", "", "", "fine", 0),
            Err(FilterError::Outcome(_))
        ));
    }

    #[test]
    fn details_name_the_conditions() {
        let f = parse("2026-01-01T11:00:00Z", "n1", "secret.*", "ok");
        let d = f.details();
        assert_eq!(d["since"], "2026-01-01T11:00:00Z");
        assert_eq!(d["action"], "secret.*");
        assert_eq!(d.len(), 4);
    }
}
