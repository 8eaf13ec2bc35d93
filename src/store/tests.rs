//! Tests of the sealed store: openraft's conformance suite, sealing at rest, restarts, and a
//! single-node Raft over the real store.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    AnyError, BasicNode, CommittedLeaderId, Entry, EntryPayload, Membership, RaftLogReader,
    RaftSnapshotBuilder, StorageError, StorageIOError, Vote,
};
use redb::{Database, ReadableTable};
use tempfile::TempDir;

use super::log::LOG;
use super::model::{Command, Node, NodeState, Response};
use super::seal::{Dek, Sealer};
use super::sm::SNAPSHOT_FILE;
use super::*;
use crate::audit::{Actor, AuditEvent, Outcome};

const MARKER: &str = "MARKER-PLAINTEXT-1234";

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachineStore), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        let (log, sm) = open(dir.path(), Dek::generate())
            .await
            .map_err(|e| StorageIOError::write(AnyError::new(&e)))?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_conformance() {
    Suite::test_all(Builder).unwrap();
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn node(id: &str, hostname: &str) -> Node {
    Node {
        hostname: hostname.into(),
        state: NodeState::Unknown,
        addr: "10.0.0.2:2377".into(),
        ..fixtures::node(id)
    }
}

fn entry(index: u64, cmd: Command) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Normal(cmd),
    }
}

fn membership_entry(index: u64) -> Entry<TypeConfig> {
    let nodes = BTreeMap::from([(
        1u64,
        BasicNode {
            addr: "10.0.0.1:2377".into(),
        },
    )]);
    let m = Membership::new(vec![BTreeSet::from([1u64])], nodes);
    Entry {
        log_id: log_id(1, index),
        payload: EntryPayload::Membership(m),
    }
}

/// Entries 1..=n: a membership entry, then nodes and audit records.
fn entries(n: u64) -> Vec<Entry<TypeConfig>> {
    (1..=n)
        .map(|i| match i {
            1 => membership_entry(1),
            i if i % 2 == 0 => entry(i, Command::PutNode(node(&format!("n{i}"), MARKER))),
            i => entry(
                i,
                Command::Audit(
                    AuditEvent::now(Actor::system(), "node.join", &format!("n{i}"), Outcome::Ok)
                        .with("host", MARKER),
                ),
            ),
        })
        .collect()
}

fn all_file_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(all_file_bytes(&p));
        } else {
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn restart_reads_back_entries_vote_and_committed() {
    let dir = tempfile::tempdir().unwrap();
    let dek = Dek::generate();
    {
        let (mut log, _sm) = open(dir.path(), dek.clone()).await.unwrap();
        log.blocking_append(entries(10)).await.unwrap();
        log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
        log.save_committed(Some(log_id(1, 8))).await.unwrap();
    }
    let (mut log, _sm) = open(dir.path(), dek.clone()).await.unwrap();
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new_committed(1, 1))
    );
    assert_eq!(log.read_committed().await.unwrap(), Some(log_id(1, 8)));
    let got = log.try_get_log_entries(1..=10).await.unwrap();
    assert_eq!(got.len(), 10);
    assert_eq!(
        got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_log_id, Some(log_id(1, 10)));
    drop(log);
    drop(_sm);
    // The wrong key opens nothing: the log's first record (its format) does not authenticate.
    let Err(err) = open(dir.path(), Dek::generate()).await else {
        panic!("the log opened under another key");
    };
    assert!(err.to_string().contains("failed authentication"), "{err}");
}

#[tokio::test]
async fn open_refuses_a_log_purged_past_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let dek = Dek::generate();
    {
        let (mut log, _sm) = open(dir.path(), dek.clone()).await.unwrap();
        log.blocking_append(entries(4)).await.unwrap();
        log.purge(log_id(1, 2)).await.unwrap();
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(log_id(1, 2)));
        assert!(log.try_get_log_entries(0..3).await.unwrap().is_empty());
    }
    let err = open(dir.path(), dek).await.unwrap_err();
    assert!(err.to_string().contains("purged up to index 2"), "{err}");
}

#[tokio::test]
async fn swapped_and_tampered_log_records_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dek = Dek::generate();
    {
        let (mut log, _sm) = open(dir.path(), dek.clone()).await.unwrap();
        log.blocking_append(entries(4)).await.unwrap();
    }
    {
        let db = Database::create(dir.path().join(log::LOG_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(LOG).unwrap();
            let r2 = t.get(2).unwrap().unwrap().value().to_vec();
            let r3 = t.get(3).unwrap().unwrap().value().to_vec();
            t.insert(2, r3.as_slice()).unwrap();
            t.insert(3, r2.as_slice()).unwrap();
            let mut r4 = t.get(4).unwrap().unwrap().value().to_vec();
            let last = r4.len() - 1;
            r4[last] ^= 1;
            t.insert(4, r4.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let (mut log, _sm) = open(dir.path(), dek).await.unwrap();
    assert_eq!(log.try_get_log_entries(1..2).await.unwrap().len(), 1);
    for i in 2..=4 {
        let err = log.try_get_log_entries(i..i + 1).await.unwrap_err();
        assert!(
            err.to_string().contains(&format!(
                "sealed record at log index {i} failed authentication"
            )),
            "{err}"
        );
    }
    assert!(
        log.get_log_state().await.is_err(),
        "the last entry is damaged"
    );
}

async fn apply_all(sm: &mut StateMachineStore, es: Vec<Entry<TypeConfig>>) -> Vec<Response> {
    sm.apply(es).await.unwrap()
}

#[tokio::test]
async fn snapshot_survives_restart_and_transfers() {
    let dir = tempfile::tempdir().unwrap();
    let dek = Dek::generate();
    let built = {
        let (_log, mut sm) = open(dir.path(), dek.clone()).await.unwrap();
        let resp = apply_all(&mut sm, entries(6)).await;
        assert!(resp.iter().all(|r| *r == Response::Ok));
        assert_eq!(sm.state().read(|s| s.audit.records().len()), 2);
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
    };
    let (_log, mut sm) = open(dir.path(), dek.clone()).await.unwrap();
    let handle = sm.state();
    assert_eq!(handle.last_applied(), Some(log_id(1, 6)));
    assert_eq!(handle.applied_index(), 6);
    assert_eq!(handle.read(|s| s.nodes.len()), 3);
    assert_eq!(handle.read(|s| s.audit.records().len()), 2);
    assert_eq!(handle.read(|s| s.nodes["n4"].hostname.clone()), MARKER);
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id(1, 6)));
    assert_eq!(*membership.log_id(), Some(log_id(1, 1)));
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, built.meta);
    // Building hands openraft the meta only (no copy of the state); the data comes from
    // the sealed file.
    assert!(built.snapshot.get_ref().is_empty());
    let payload: serde_json::Value = serde_json::from_slice(current.snapshot.get_ref()).unwrap();
    assert_eq!(payload["state"]["nodes"]["n4"]["hostname"], MARKER);

    // A follower with its own key installs the leader's snapshot and seals it itself.
    let fdir = tempfile::tempdir().unwrap();
    let fdek = Dek::generate();
    {
        let (_flog, mut fsm) = open(fdir.path(), fdek.clone()).await.unwrap();
        let mut rx = fsm.subscribe();
        fsm.install_snapshot(&current.meta, current.snapshot)
            .await
            .unwrap();
        assert_eq!(*rx.borrow_and_update(), 6);
        assert_eq!(fsm.state().read(|s| s.nodes.len()), 3);
    }
    let (_flog, fsm) = open(fdir.path(), fdek).await.unwrap();
    assert_eq!(fsm.state().read(|s| s.audit.records().len()), 2);
    // Only the follower's key opens the follower's snapshot.
    drop((_flog, fsm));
    assert!(open(fdir.path(), dek).await.is_err());
}

#[tokio::test]
async fn tampered_snapshots_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dek = Dek::generate();
    let snap = {
        let (_log, mut sm) = open(dir.path(), dek.clone()).await.unwrap();
        apply_all(&mut sm, entries(3)).await;
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap()
    };
    let path = dir.path().join(SNAPSHOT_FILE);
    let good = std::fs::read(&path).unwrap();
    for i in [0, 9, 15, 16, 40, good.len() - 1] {
        let mut bad = good.clone();
        bad[i] ^= 0x04;
        std::fs::write(&path, &bad).unwrap();
        let err = open(dir.path(), dek.clone()).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Sealed { .. } | StoreError::Corrupt { .. }),
            "byte {i}: {err}"
        );
    }
    std::fs::write(&path, &good[..good.len() / 2]).unwrap();
    assert!(open(dir.path(), dek.clone()).await.is_err());
    std::fs::write(&path, &good).unwrap();
    let (_log, mut sm) = open(dir.path(), dek).await.unwrap();

    // Garbage or mislabelled snapshot data from a leader is refused, and changes nothing.
    let mut meta = snap.meta.clone();
    assert!(
        sm.install_snapshot(&meta, Box::new(Cursor::new(b"\x00junk".to_vec())))
            .await
            .is_err()
    );
    meta.last_log_id = Some(log_id(1, 99));
    assert!(sm.install_snapshot(&meta, snap.snapshot).await.is_err());
    assert_eq!(sm.state().applied_index(), 3);
}

#[tokio::test]
async fn no_plaintext_reaches_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let dek = Dek::generate();
    {
        let (mut log, mut sm) = open(dir.path(), dek.clone()).await.unwrap();
        let es = entries(20);
        log.blocking_append(es.clone()).await.unwrap();
        log.save_vote(&Vote::new(2, 1)).await.unwrap();
        log.save_committed(Some(log_id(1, 20))).await.unwrap();
        apply_all(&mut sm, es).await;
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        // The snapshot data (what travels over mTLS) does hold the marker: the test can see it.
        let snap = sm.get_current_snapshot().await.unwrap().unwrap();
        assert!(contains(snap.snapshot.get_ref(), MARKER.as_bytes()));
        log.purge(log_id(1, 10)).await.unwrap();
        log.truncate(log_id(1, 18)).await.unwrap();
    }
    let files = all_file_bytes(dir.path());
    assert!(files.iter().any(|(p, _)| p.ends_with(SNAPSHOT_FILE)));
    assert!(files.iter().any(|(p, _)| p.ends_with(log::LOG_FILE)));
    for (path, bytes) in &files {
        assert!(
            !contains(bytes, MARKER.as_bytes()),
            "{path} holds plaintext"
        );
        assert!(!contains(bytes, b"node.join"), "{path} holds plaintext");
    }
    // And everything is still there for the right key.
    let (mut log, sm) = open(dir.path(), dek).await.unwrap();
    assert_eq!(log.try_get_log_entries(11..).await.unwrap().len(), 7);
    assert_eq!(sm.state().read(|s| s.nodes["n2"].hostname.clone()), MARKER);
}

#[tokio::test]
async fn files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("raft");
    let (_log, mut sm) = open(&dir, Dek::generate()).await.unwrap();
    apply_all(&mut sm, entries(2)).await;
    sm.get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(log::LOG_FILE)), 0o600);
    assert_eq!(mode(&dir.join(SNAPSHOT_FILE)), 0o600);
}

#[tokio::test]
async fn wait_applied_wakes_on_apply() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open(dir.path(), Dek::generate()).await.unwrap();
    let handle = sm.state();
    let waiter = tokio::spawn(async move { handle.wait_applied(3).await });
    tokio::task::yield_now().await;
    apply_all(&mut sm, entries(2)).await;
    assert!(!waiter.is_finished());
    apply_all(
        &mut sm,
        vec![entry(3, Command::RemoveNode { id: "n2".into() })],
    )
    .await;
    assert_eq!(
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        3
    );
    // A closed store wakes waiters with an error instead of hanging.
    let handle = sm.state();
    drop(sm);
    drop(_log);
    assert!(matches!(
        handle.wait_applied(100).await,
        Err(StoreError::Closed { index: 100 })
    ));
}

#[tokio::test]
async fn a_task_or_node_change_wakes_that_nodes_session_only_and_other_changes_wake_all() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open(dir.path(), Dek::generate()).await.unwrap();
    let handle = sm.state();
    let (n1, n2) = (handle.wake().node("n1"), handle.wake().node("n2"));
    let mut others = handle.wake().others();
    let sessions = handle.wake().sessions();
    let woken = |n: std::sync::Arc<tokio::sync::Notify>| async move {
        tokio::time::timeout(Duration::from_millis(100), n.notified())
            .await
            .is_ok()
    };
    let task = |id: &str, node: &str| super::service::Task {
        id: id.into(),
        node_id: node.into(),
        ..fixtures::task()
    };
    // A task stored on n1 and an audit record: n1's session only.
    let record = AuditEvent::now(Actor::system(), "test", "t", Outcome::Ok);
    apply_all(
        &mut sm,
        vec![
            entry(1, Command::PutTasks(vec![task("t1", "n1")])),
            entry(2, Command::Audit(record)),
        ],
    )
    .await;
    assert!(woken(n1.clone()).await, "n1's task changed");
    assert!(!woken(n2.clone()).await, "n2's did not");
    assert!(!others.has_changed().unwrap());
    // Moved to n2: both.
    let mut moved = task("t1", "n2");
    moved.desired = super::service::DesiredState::Shutdown;
    apply_all(&mut sm, vec![entry(3, Command::PutTasks(vec![moved]))]).await;
    assert!(woken(n1.clone()).await && woken(n2.clone()).await);
    // Another node joins and n2's labels change: the orchestrator looks again; of the
    // sessions, only n2's wakes (a session reads no other node's record).
    apply_all(
        &mut sm,
        vec![
            entry(4, Command::PutNode(fixtures::node("n9"))),
            entry(5, Command::PutNode(fixtures::node("n2"))),
            entry(
                6,
                Command::UpdateNode {
                    id: "n2".into(),
                    availability: None,
                    labels: BTreeMap::from([("zone".into(), "a".into())]),
                    at: "t".into(),
                },
            ),
        ],
    )
    .await;
    assert!(others.has_changed().unwrap());
    others.borrow_and_update();
    assert!(
        !sessions.has_changed().unwrap(),
        "a join woke every session"
    );
    assert!(woken(n2.clone()).await, "n2's own record changed");
    assert!(!woken(n1.clone()).await, "no task nor record of n1 changed");
    // A change beyond tasks and node records (a service): every session.
    apply_all(
        &mut sm,
        vec![entry(
            7,
            Command::PutService(Box::new(fixtures::service("s1", "web"))),
        )],
    )
    .await;
    assert!(others.has_changed().unwrap() && sessions.has_changed().unwrap());
    assert!(!woken(n1).await, "no task changed");
}

#[tokio::test]
async fn the_node_records_applied_entries_changed_are_handed_to_the_certificate_table() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, mut sm) = open(dir.path(), Dek::generate()).await.unwrap();
    let handle = sm.state();
    assert_eq!(
        handle.wake().take_node_changes(),
        None,
        "every node at first"
    );
    apply_all(
        &mut sm,
        vec![
            entry(1, Command::PutNode(node("n1", "h1"))),
            entry(2, Command::PutNode(node("n2", "h2"))),
        ],
    )
    .await;
    let both = std::collections::HashSet::from(["n1".to_string(), "n2".to_string()]);
    assert_eq!(handle.wake().take_node_changes(), Some(both));
    // A renewal of n1, and a task write that changes no node record.
    let renewal = Command::UpdateNodeCert {
        id: "n1".into(),
        serial: "0b".into(),
        not_after: "2031-01-01T00:00:00Z".into(),
        issuer: String::new(),
    };
    let task = Command::PutTasks(vec![fixtures::task()]);
    apply_all(&mut sm, vec![entry(3, renewal), entry(4, task)]).await;
    let n1 = std::collections::HashSet::from(["n1".to_string()]);
    assert_eq!(handle.wake().take_node_changes(), Some(n1));
    apply_all(
        &mut sm,
        vec![entry(5, Command::RemoveNode { id: "n2".into() })],
    )
    .await;
    let n2 = std::collections::HashSet::from(["n2".to_string()]);
    assert_eq!(handle.wake().take_node_changes(), Some(n2));
}

#[tokio::test]
async fn plaintext_sealer_round_trips_for_the_bench() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _sm) = open_with(
        dir.path().to_path_buf(),
        Arc::new(Sealer::plaintext_for_bench()),
    )
    .await
    .unwrap();
    log.blocking_append(entries(3)).await.unwrap();
    assert_eq!(log.try_get_log_entries(..).await.unwrap().len(), 3);
}

/// A network for a single-node Raft: there is nobody to call.
struct NoPeers;

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeers;
    async fn new_client(&mut self, _target: u64, _node: &BasicNode) -> NoPeers {
        NoPeers
    }
}

fn unreachable<E: std::error::Error>() -> RPCError<u64, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&AnyError::error("single-node test")))
}

impl RaftNetwork<TypeConfig> for NoPeers {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(unreachable())
    }
}

async fn start_raft(dir: &Path, dek: Dek) -> (Raft, StateHandle) {
    let (log, sm) = open(dir, dek).await.unwrap();
    let state = sm.state();
    let config = openraft::Config {
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(5),
        max_in_snapshot_log_to_keep: 0,
        ..Default::default()
    };
    let raft = Raft::new(1, Arc::new(config.validate().unwrap()), NoPeers, log, sm)
        .await
        .unwrap();
    (raft, state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_raft_writes_snapshots_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let dek = Dek::generate();
    {
        let (raft, state) = start_raft(dir.path(), dek.clone()).await;
        raft.initialize(BTreeMap::from([(
            1u64,
            BasicNode {
                addr: "127.0.0.1:2377".into(),
            },
        )]))
        .await
        .unwrap();
        raft.wait(Some(Duration::from_secs(10)))
            .current_leader(1, "single node leads")
            .await
            .unwrap();
        let mut last = 0;
        for i in 0..12 {
            let w = raft
                .client_write(Command::PutNode(node(&format!("n{i}"), MARKER)))
                .await
                .unwrap();
            assert_eq!(w.data, Response::Ok);
            last = w.log_id.index;
        }
        state.wait_applied(last).await.unwrap();
        assert_eq!(state.read(|s| s.nodes.len()), 12);
        // The policy snapshots every 5 logs and purges behind it.
        tokio::time::timeout(Duration::from_secs(10), async {
            while raft.metrics().borrow().purged.is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
        let w = raft
            .client_write(Command::RemoveNode { id: "n0".into() })
            .await
            .unwrap();
        state.wait_applied(w.log_id.index).await.unwrap();
        // A snapshot of everything, awaited: a build still running when openraft shuts down
        // could replace the file under the restarted store below (two stores on one directory
        // in one process, which a daemon never has: it exits or re-executes itself).
        raft.trigger().snapshot().await.unwrap();
        let last = w.log_id.index;
        raft.wait(Some(Duration::from_secs(10)))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= last),
                "a snapshot of the last write",
            )
            .await
            .unwrap();
        raft.shutdown().await.unwrap();
    }
    // Restart: the snapshot plus the committed log bring the state back.
    let (raft, state) = start_raft(dir.path(), dek).await;
    tokio::time::timeout(Duration::from_secs(10), state.wait_applied(14))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.read(|s| s.nodes.len()), 11);
    assert!(state.read(|s| !s.nodes.contains_key("n0")));
    raft.shutdown().await.unwrap();
    for (path, bytes) in all_file_bytes(dir.path()) {
        assert!(
            !contains(&bytes, MARKER.as_bytes()),
            "{path} holds plaintext"
        );
    }
}

// ------------------------------------------------------------------ rollback anchor

/// Opens `<root>/raft` against `<root>/raft.anchor`.
async fn open_at(root: &Path, dek: &Dek, policy: RollbackPolicy) -> Result<Anchored, StoreError> {
    open_anchored(
        &root.join("raft"),
        &root.join(anchor::ANCHOR_FILE),
        dek.clone(),
        policy,
    )
    .await
}

/// A store with a vote at term 2 and 10 entries, 8 committed; its anchor refreshed.
async fn anchored_store(root: &Path, dek: &Dek) {
    let mut a = open_at(root, dek, RollbackPolicy::Refuse).await.unwrap();
    a.log.blocking_append(entries(10)).await.unwrap();
    a.log.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
    a.log.save_committed(Some(log_id(1, 8))).await.unwrap();
    assert!(a.keeper.refresh().await.unwrap());
    // Nothing moved: no rewrite.
    assert!(!a.keeper.refresh().await.unwrap());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[tokio::test]
async fn an_anchored_store_reopens_and_a_fresh_one_is_anchored() {
    let root = tempfile::tempdir().unwrap();
    let dek = Dek::generate();
    anchored_store(root.path(), &dek).await;
    let a = open_at(root.path(), &dek, RollbackPolicy::Refuse)
        .await
        .unwrap();
    assert!(a.rolled_back.is_none());
    assert!(a.log.is_anchored().await.unwrap());
    let sealer = Sealer::new(&dek);
    let anchor = anchor::read(&root.path().join(anchor::ANCHOR_FILE), &sealer)
        .unwrap()
        .unwrap();
    assert_eq!((anchor.vote_term, anchor.committed), (2, 8));
    assert!(anchor.generation >= 3, "{anchor:?}");
}

#[tokio::test]
async fn a_deleted_or_emptied_log_is_refused_unless_forced() {
    for empty in [false, true] {
        let root = tempfile::tempdir().unwrap();
        let dek = Dek::generate();
        anchored_store(root.path(), &dek).await;
        let db = root.path().join("raft").join(log::LOG_FILE);
        if empty {
            std::fs::File::create(&db).unwrap();
        } else {
            std::fs::remove_file(&db).unwrap();
        }
        let err = open_at(root.path(), &dek, RollbackPolicy::Refuse)
            .await
            .err()
            .expect("a store without its log opened");
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Rollback { .. }), "{msg}");
        for needle in [
            "refusing to start",
            "raft.anchor",
            "term 0",
            "index 8",
            "--force-rollback",
        ] {
            assert!(msg.contains(needle), "{needle:?} not in {msg}");
        }
        // Forced: opens, says what went back, and the anchor now matches.
        let a = open_at(root.path(), &dek, RollbackPolicy::Accept)
            .await
            .unwrap();
        assert!(a.rolled_back.as_deref().unwrap_or("").contains("term 0"));
        drop(a);
        assert!(
            open_at(root.path(), &dek, RollbackPolicy::Refuse)
                .await
                .is_ok()
        );
    }
}

#[tokio::test]
async fn an_older_copy_of_the_store_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dek = Dek::generate();
    anchored_store(root.path(), &dek).await;
    let saved = tempfile::tempdir().unwrap();
    copy_dir(&root.path().join("raft"), saved.path());
    {
        let mut a = open_at(root.path(), &dek, RollbackPolicy::Refuse)
            .await
            .unwrap();
        let more: Vec<_> = (11..=20)
            .map(|i| entry(i, Command::RemoveNode { id: "x".into() }))
            .collect();
        a.log.blocking_append(more).await.unwrap();
        a.log.save_committed(Some(log_id(1, 20))).await.unwrap();
        assert!(a.keeper.refresh().await.unwrap());
    }
    std::fs::remove_dir_all(root.path().join("raft")).unwrap();
    copy_dir(saved.path(), &root.path().join("raft"));
    let err = open_at(root.path(), &dek, RollbackPolicy::Refuse)
        .await
        .err()
        .expect("an older copy opened");
    assert!(
        err.to_string()
            .contains("end at index 10 but index 20 was committed"),
        "{err}"
    );
}

#[tokio::test]
async fn a_deleted_anchor_of_an_anchored_store_is_refused_and_a_foreign_one_too() {
    let root = tempfile::tempdir().unwrap();
    let dek = Dek::generate();
    anchored_store(root.path(), &dek).await;
    let anchor_path = root.path().join(anchor::ANCHOR_FILE);
    let kept = std::fs::read(&anchor_path).unwrap();
    std::fs::remove_file(&anchor_path).unwrap();
    let err = open_at(root.path(), &dek, RollbackPolicy::Refuse)
        .await
        .err()
        .expect("a store without its anchor opened");
    assert!(err.to_string().contains("anchor file is missing"), "{err}");
    // Another store's anchor, sealed under another data key, does not open: refused, never a
    // panic.
    let other = tempfile::tempdir().unwrap();
    anchored_store(other.path(), &Dek::generate()).await;
    std::fs::copy(other.path().join(anchor::ANCHOR_FILE), &anchor_path).unwrap();
    let err = open_at(root.path(), &dek, RollbackPolicy::Refuse)
        .await
        .err()
        .expect("an anchor under another key opened");
    assert!(matches!(err, StoreError::Anchor(_)), "{err}");
    // Its own anchor still opens it.
    std::fs::write(&anchor_path, &kept).unwrap();
    open_at(root.path(), &dek, RollbackPolicy::Refuse)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_store_from_before_anchors_is_anchored_on_first_open() {
    let root = tempfile::tempdir().unwrap();
    let dek = Dek::generate();
    {
        let (mut log, _sm) = open(&root.path().join("raft"), dek.clone()).await.unwrap();
        log.blocking_append(entries(5)).await.unwrap();
        log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
    }
    let a = open_at(root.path(), &dek, RollbackPolicy::Refuse)
        .await
        .unwrap();
    assert!(a.rolled_back.is_none());
    assert!(a.log.is_anchored().await.unwrap());
    assert!(root.path().join(anchor::ANCHOR_FILE).exists());
}

#[tokio::test]
async fn an_older_snapshot_file_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dek = Dek::generate();
    let snap = root.path().join("raft").join(SNAPSHOT_FILE);
    let all = entries(12);
    let older = {
        let mut a = open_at(root.path(), &dek, RollbackPolicy::Refuse)
            .await
            .unwrap();
        a.log.blocking_append(all.clone()).await.unwrap();
        a.log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
        a.log.save_committed(Some(log_id(1, 12))).await.unwrap();
        apply_all(&mut a.sm, all[..6].to_vec()).await;
        a.sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let older = std::fs::read(&snap).unwrap();
        apply_all(&mut a.sm, all[6..].to_vec()).await;
        a.sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert!(a.keeper.refresh().await.unwrap());
        older
    };
    std::fs::write(&snap, older).unwrap();
    let err = open_at(root.path(), &dek, RollbackPolicy::Refuse)
        .await
        .err()
        .expect("an older snapshot opened");
    assert!(
        err.to_string()
            .contains("the snapshot is at index 6 but one at index 12 was written"),
        "{err}"
    );
}

#[tokio::test]
async fn a_snapshot_with_no_log_and_no_vote_is_refused_unless_forced() {
    // The log and the anchor both deleted: nothing says this store was ever anchored, but a
    // snapshot without any log or vote cannot be a store that was just made.
    let root = tempfile::tempdir().unwrap();
    let dek = Dek::generate();
    {
        let mut a = open_at(root.path(), &dek, RollbackPolicy::Refuse)
            .await
            .unwrap();
        let all = entries(12);
        a.log.blocking_append(all.clone()).await.unwrap();
        a.log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
        a.log.save_committed(Some(log_id(1, 12))).await.unwrap();
        apply_all(&mut a.sm, all).await;
        a.sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        assert!(a.keeper.refresh().await.unwrap());
    }
    std::fs::remove_file(root.path().join("raft").join(log::LOG_FILE)).unwrap();
    std::fs::remove_file(root.path().join(anchor::ANCHOR_FILE)).unwrap();
    let err = open_at(root.path(), &dek, RollbackPolicy::Refuse)
        .await
        .err()
        .expect("a snapshot with no log and no vote opened");
    assert!(matches!(err, StoreError::Rollback { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("there is a snapshot at index 12 but no log and no vote"),
        "{err}"
    );
    let a = open_at(root.path(), &dek, RollbackPolicy::Accept)
        .await
        .unwrap();
    assert!(
        a.rolled_back
            .as_deref()
            .unwrap_or("")
            .contains("no log and no vote")
    );
}

/// `--force-new-cluster`: a survivor of a three-voter cluster holds entries it never saw
/// committed; the rebuilt store holds all of them, has this manager as its only voter, elects
/// it alone and takes writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivors_store_is_rebuilt_as_a_cluster_of_one_with_every_entry_it_held() {
    let old = tempfile::tempdir().unwrap();
    let dek = Dek::generate();
    let sealer = Arc::new(Sealer::new(&dek));
    {
        let (mut log, _sm) = open(old.path(), dek.clone()).await.unwrap();
        let three = Membership::new(
            vec![BTreeSet::from([1u64, 2, 3])],
            BTreeMap::from([1u64, 2, 3].map(|i| (i, BasicNode::new(format!("10.0.0.{i}:2377"))))),
        );
        let mut all = vec![Entry {
            log_id: log_id(1, 1),
            payload: EntryPayload::Membership(three),
        }];
        all.extend((2..=9).map(|i| entry(i, Command::PutNode(node(&format!("n{i}"), MARKER)))));
        log.blocking_append(all).await.unwrap();
        log.save_vote(&Vote::new(4, 2)).await.unwrap();
        // Only entries up to 5 were known committed here.
        log.save_committed(Some(log_id(1, 5))).await.unwrap();
    }
    let got = recover::read_all(old.path(), sealer.clone()).await.unwrap();
    assert_eq!(got.last, log_id(1, 9));
    assert_eq!(got.term, 4);
    assert_eq!(got.replayed, 9);
    assert_eq!(
        got.state.nodes.len(),
        8,
        "every entry held, committed or not"
    );

    let new = tempfile::tempdir().unwrap();
    recover::write_single(
        new.path(),
        sealer,
        &got.state,
        got.last,
        got.term,
        1,
        "127.0.0.1:2377",
    )
    .await
    .unwrap();
    let (raft, state) = start_raft(new.path(), dek).await;
    raft.wait(Some(Duration::from_secs(10)))
        .current_leader(1, "the survivor leads alone")
        .await
        .unwrap();
    let voters: Vec<u64> = raft
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    assert_eq!(voters, vec![1]);
    let w = raft
        .client_write(Command::RemoveNode { id: "n9".into() })
        .await
        .unwrap();
    assert!(w.log_id.index > 9);
    state.wait_applied(w.log_id.index).await.unwrap();
    assert_eq!(state.read(|s| s.nodes.len()), 7);
    raft.shutdown().await.unwrap();
}
