//! Which proposals must carry an audit record: every command that changes state commits in
//! one batch with a [`Command::Audit`] record, except a short list of high-volume or derived
//! commands ([`decision`], one exhaustive match: a command added without a decision does not
//! compile). Checked on every proposal ([`check`]). A proposal another manager forwards
//! (`Manager.Propose`) meets the same rule, its records are stamped with the forwarding node
//! ([`stamp`]), and a leader-only command in it without a record gets one naming that node
//! ([`untraced`]): a manager's certificate cannot change state unseen or under another
//! actor's name, and a deposed leader's last liveness or orchestrator write still commits.
//!
//! | exempt | why |
//! |---|---|
//! | `ReportTasks` | task status reports from agents (high volume) |
//! | `Audit`, `AuditCheckpoint` | they are records (a checkpoint is signed and checked) |
//! | `SetNodeState`, `DescribeNode`, `SetNodePortErrors`, `SetNodeStoreError` | the leader's liveness and what agents say of themselves (high volume); leader only |
//! | `PutService`, `PutTasks`, `RemoveTasks` | the leader's orchestrator and scheduler carrying out audited changes; leader only |

use crate::audit::AuditEvent;
use crate::store::model::Command;

/// What a command needs to be proposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// An audit record in the same proposal.
    Record,
    /// Nothing: it is a record, or a high-volume report (the reason).
    Exempt(&'static str),
    /// Nothing when this manager proposes it (the reason); from a peer, the leader adds a
    /// record naming it.
    LocalExempt(&'static str),
    /// A container: its members decide.
    Container,
}

/// The decision for one command (see the module table).
pub fn decision(cmd: &Command) -> Decision {
    use Decision::*;
    match cmd {
        Command::Batch(_) | Command::Once { .. } => Container,
        Command::Audit(_) => Exempt("an audit record"),
        Command::AuditCheckpoint(_) => Exempt("a signed audit checkpoint"),
        Command::ReportTasks { .. } => Exempt("task status reports from agents (high volume)"),
        Command::SetNodeState { .. } => LocalExempt("node liveness from heartbeats (high volume)"),
        Command::DescribeNode { .. } => LocalExempt("an agent's runtimes and capacity"),
        Command::SetNodePortErrors { .. } => LocalExempt("ports a node reports it cannot bind"),
        Command::SetNodeStoreError { .. } => LocalExempt("a manager's store failure it reports"),
        Command::PutService(_) => LocalExempt("rollout progress of an audited service change"),
        Command::PutTasks(_) | Command::RemoveTasks(_) => {
            LocalExempt("orchestrator and scheduler decisions")
        }
        Command::AdvanceVersions { .. } => LocalExempt(
            "rollout steps of an audited secret update (each value sent is audited as it goes)",
        ),
        Command::InitCluster(_)
        | Command::PutNode(_)
        | Command::RemoveNode { .. }
        | Command::UpdateNode { .. }
        | Command::SetHeartbeatPeriod { .. }
        | Command::RemoveService { .. }
        | Command::PutSecret(_)
        | Command::RemoveSecret { .. }
        | Command::SetPolicy(_)
        | Command::RevokeNode { .. }
        | Command::PruneRevocations { .. }
        | Command::UpdateNodeCert { .. }
        | Command::PutOperator(_)
        | Command::RemoveOperator { .. }
        | Command::SetRbacPolicy(_)
        | Command::StartRootRotation(_)
        | Command::FinishRootRotation { .. }
        | Command::SetNodeRole { .. }
        | Command::SetCertExpiry { .. }
        | Command::SetAutolock { .. }
        | Command::SetAuditKey(_)
        | Command::SetWorkloadKeys(_)
        | Command::RecordSvid { .. }
        | Command::SetSvidTtl { .. }
        | Command::SetOidcIssuer { .. }
        | Command::AuditTrim { .. }
        | Command::SetAuditRetention { .. }
        | Command::RotateToken { .. }
        | Command::PutNetwork(_)
        | Command::RemoveNetwork { .. }
        | Command::PutConfig(_)
        | Command::RemoveConfig { .. }
        | Command::PushVersion { .. }
        | Command::SetCurrentVersion { .. }
        | Command::SetRolloutState { .. }
        | Command::PruneVersions { .. }
        | Command::SetSecretHistory { .. }
        | Command::RequestVolumeRemoval { .. }
        | Command::VolumesRemoved { .. } => Record,
    }
}

/// A proposal that changes state without an audit record.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "the proposal changes state without an audit record ({command}); every state change is committed with its record"
)]
pub struct Unaudited {
    /// The first command that needs a record (its variant name).
    pub command: &'static str,
}

/// Checks a proposal as a whole: if any command in it needs a record, some command in it
/// must be an audit record.
pub fn check(cmd: &Command) -> Result<(), Unaudited> {
    let (needs, has_record) = scan(cmd, |d| d == Decision::Record);
    match needs {
        Some(command) if !has_record => Err(Unaudited { command }),
        _ => Ok(()),
    }
}

/// In a peer's proposal without any audit record: the first leader-only command (its name),
/// for which the leader records the proposal itself.
pub fn untraced(cmd: &Command) -> Option<&'static str> {
    let (first, has_record) = scan(cmd, |d| matches!(d, Decision::LocalExempt(_)));
    first.filter(|_| !has_record)
}

/// The first command whose decision `pick` selects, and whether the proposal holds a record.
fn scan(cmd: &Command, pick: impl Fn(Decision) -> bool) -> (Option<&'static str>, bool) {
    let mut first = None;
    let mut has_record = false;
    walk(cmd, &mut |c| {
        has_record |= matches!(c, Command::Audit(_));
        if pick(decision(c)) {
            first.get_or_insert(name(c));
        }
    });
    (first, has_record)
}

/// `cmd` with `record` committed in the same batch (inside its [`Command::Once`], if any).
pub fn with_record(cmd: Command, record: AuditEvent) -> Command {
    match cmd {
        Command::Once { id, cmd } => Command::Once {
            id,
            cmd: std::sync::Arc::new(with_record(std::sync::Arc::unwrap_or_clone(cmd), record)),
        },
        Command::Batch(mut cmds) => {
            cmds.push(Command::Audit(record));
            Command::Batch(cmds)
        }
        c => Command::Batch(vec![c, Command::Audit(record)]),
    }
}

/// Adds `proposed_by` (the forwarding node) to every audit record in a peer's proposal.
pub fn stamp(cmd: &mut Command, node_id: &str) {
    match cmd {
        Command::Once { cmd, .. } => stamp(std::sync::Arc::make_mut(cmd), node_id),
        Command::Batch(cmds) => cmds.iter_mut().for_each(|c| stamp(c, node_id)),
        Command::Audit(AuditEvent { details, .. }) => {
            details.insert("proposed_by".into(), node_id.into());
        }
        _ => {}
    }
}

fn walk(cmd: &Command, f: &mut impl FnMut(&Command)) {
    match cmd {
        Command::Once { cmd, .. } => walk(cmd, f),
        Command::Batch(cmds) => cmds.iter().for_each(|c| walk(c, f)),
        c => f(c),
    }
}

/// The variant's name, for errors.
fn name(cmd: &Command) -> &'static str {
    macro_rules! names {
        ($($v:ident),* $(,)?) => {
            match cmd {
                $(Command::$v { .. } => stringify!($v),)*
            }
        };
    }
    names!(
        InitCluster,
        PutNode,
        SetNodeState,
        RemoveNode,
        Audit,
        UpdateNode,
        DescribeNode,
        SetHeartbeatPeriod,
        PutService,
        RemoveService,
        PutTasks,
        RemoveTasks,
        ReportTasks,
        PutSecret,
        RemoveSecret,
        Batch,
        SetPolicy,
        RevokeNode,
        PruneRevocations,
        UpdateNodeCert,
        PutOperator,
        RemoveOperator,
        SetRbacPolicy,
        StartRootRotation,
        FinishRootRotation,
        SetNodePortErrors,
        SetNodeRole,
        SetCertExpiry,
        SetAutolock,
        SetAuditKey,
        SetWorkloadKeys,
        RecordSvid,
        SetSvidTtl,
        SetOidcIssuer,
        AuditCheckpoint,
        AuditTrim,
        SetAuditRetention,
        RotateToken,
        PutNetwork,
        RemoveNetwork,
        SetNodeStoreError,
        PutConfig,
        RemoveConfig,
        PushVersion,
        SetCurrentVersion,
        SetRolloutState,
        AdvanceVersions,
        PruneVersions,
        SetSecretHistory,
        Once,
        RequestVolumeRemoval,
        VolumesRemoved,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Actor, Outcome};

    fn record() -> Command {
        Command::Audit(AuditEvent::now(Actor::system(), "x.y", "t", Outcome::Ok))
    }

    fn labels() -> Command {
        Command::UpdateNode {
            id: "n1".into(),
            availability: None,
            labels: Default::default(),
            at: String::new(),
        }
    }

    fn once(c: Command) -> Command {
        Command::Once {
            id: "p1".into(),
            cmd: std::sync::Arc::new(c),
        }
    }

    #[test]
    fn a_state_change_needs_its_record_in_the_same_proposal() {
        assert_eq!(
            check(&labels()),
            Err(Unaudited {
                command: "UpdateNode"
            })
        );
        assert_eq!(
            check(&once(Command::Batch(vec![labels()]))),
            Err(Unaudited {
                command: "UpdateNode"
            })
        );
        assert_eq!(
            check(&once(Command::Batch(vec![labels(), record()]))),
            Ok(())
        );
        let prune = Command::PruneRevocations { now: String::new() };
        assert!(check(&prune).is_err());
        let msg = check(&prune).unwrap_err().to_string();
        assert!(
            msg.contains("without an audit record (PruneRevocations)"),
            "{msg}"
        );
    }

    #[test]
    fn exempt_commands_pass_and_a_peers_leader_only_ones_get_a_record() {
        let report = Command::ReportTasks {
            node_id: "n1".into(),
            updates: Vec::new(),
        };
        let tasks = once(Command::Batch(vec![Command::PutTasks(Vec::new())]));
        for c in [&report, &record(), &tasks, &Command::Batch(Vec::new())] {
            assert_eq!(check(c), Ok(()));
        }
        assert_eq!(untraced(&report), None);
        assert_eq!(untraced(&tasks), Some("PutTasks"));
        let traced = with_record(
            tasks,
            AuditEvent::now(Actor::node("m2"), "raft.propose", "PutTasks", Outcome::Ok),
        );
        assert_eq!(untraced(&traced), None);
        let Command::Once { id, cmd } = traced else {
            panic!("the proposal ID was lost")
        };
        assert_eq!(id, "p1");
        assert!(matches!(&*cmd, Command::Batch(c) if c.len() == 2));
        let alone = with_record(
            labels(),
            AuditEvent::now(Actor::system(), "a", "b", Outcome::Ok),
        );
        assert_eq!(check(&alone), Ok(()));
    }

    #[test]
    fn a_peers_records_are_stamped_with_the_forwarding_node() {
        let mut c = once(Command::Batch(vec![labels(), record()]));
        stamp(&mut c, "m2");
        let Command::Once { cmd, .. } = c else {
            panic!()
        };
        let Command::Batch(cmds) = std::sync::Arc::unwrap_or_clone(cmd) else {
            panic!()
        };
        let Command::Audit(e) = &cmds[1] else {
            panic!()
        };
        assert_eq!(e.details.get("proposed_by").map(String::as_str), Some("m2"));
    }
}
