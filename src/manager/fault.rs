//! Fault injection for tests: `SKEP_FAIL_AUDIT=ACTION[,ACTION...]` in a manager's environment
//! makes every proposal carrying an audit record of one of those actions fail before it
//! reaches Raft, as a lost quorum or a full disk would. With it, a test proves with a quorum
//! present that an audited read or delivery is refused when its record cannot commit (the
//! fail-closed rule). It can only refuse, never let anything through; read once at start.

use std::sync::OnceLock;

use crate::store::model::Command;

/// The environment variable.
pub const FAIL_AUDIT_ENV: &str = "SKEP_FAIL_AUDIT";

fn refused_actions() -> &'static [String] {
    static ACTIONS: OnceLock<Vec<String>> = OnceLock::new();
    ACTIONS.get_or_init(|| {
        let actions: Vec<String> = std::env::var(FAIL_AUDIT_ENV)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect();
        if !actions.is_empty() {
            tracing::warn!(
                ?actions,
                "{FAIL_AUDIT_ENV}: audit records of these actions will fail (a test fault)"
            );
        }
        actions
    })
}

/// The action of the first audit record in `cmd` that [`FAIL_AUDIT_ENV`] says must fail.
pub fn refused_record(cmd: &Command) -> Option<String> {
    first_refused(cmd, refused_actions())
}

fn first_refused(cmd: &Command, refused: &[String]) -> Option<String> {
    if refused.is_empty() {
        return None;
    }
    match cmd {
        Command::Once { cmd, .. } => first_refused(cmd, refused),
        Command::Batch(cmds) => cmds.iter().find_map(|c| first_refused(c, refused)),
        Command::Audit(e) if refused.contains(&e.action) => Some(e.action.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Actor, AuditEvent, Outcome};

    #[test]
    fn finds_a_refused_record_at_any_depth() {
        let rec = |a: &str| Command::Audit(AuditEvent::now(Actor::system(), a, "", Outcome::Ok));
        let refused = vec!["token.read".to_string()];
        let nested = Command::Once {
            id: "p1".into(),
            cmd: std::sync::Arc::new(Command::Batch(vec![rec("x"), rec("token.read")])),
        };
        assert_eq!(
            first_refused(&nested, &refused).as_deref(),
            Some("token.read")
        );
        assert_eq!(first_refused(&rec("token.rotate"), &refused), None);
        assert_eq!(first_refused(&nested, &[]), None);
    }
}
