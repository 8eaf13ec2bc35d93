//! openraft's network over skep's mTLS gRPC: each Raft RPC is a postcard payload in a
//! `RaftMessage` (see [`crate::store::wire`] for the encoding and the budgets), sent with
//! this manager's own certificate to the peer's `Manager` service.
//!
//! AppendEntries is cut by bytes here: openraft 0.9 batches by entry count only, so when its
//! batch is over the peer's budget (at most [`wire::APPEND_BUDGET_BYTES`], halved whenever
//! openraft's per-call deadline of one heartbeat interval cut a call short) the front that
//! fits is sent and reported as a partial success; openraft sends the rest next. A peer that cannot take what it is sent is
//! recorded in [`SyncProblems`] (shown by `node ls`) and logged once per distinct reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use rustls::ClientConfig;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::Channel;

use crate::api::v1::RaftMessage;
use crate::api::v1::manager_client::ManagerClient;
use crate::store::TypeConfig;
use crate::store::wire;

/// A Raft message of this build's log format ([`wire::LOG_FORMAT`]).
pub(crate) fn raft_message(payload: Vec<u8>) -> RaftMessage {
    RaftMessage {
        payload,
        format: wire::LOG_FORMAT,
    }
}

/// The payload of a Raft message, refused if its sender's log format is not this build's: a
/// peer of another build would misread entries or have its own misread.
pub(crate) fn payload_of(msg: RaftMessage) -> Result<Vec<u8>, wire::WireError> {
    wire::check_format(msg.format)?;
    Ok(msg.payload)
}

/// Why replication to a peer fails now, by Raft ID (empty when every peer takes what it is
/// sent). Shared between the Raft network and the status the leader shows.
#[derive(Clone, Default)]
pub struct SyncProblems(Arc<Mutex<HashMap<u64, String>>>);

impl SyncProblems {
    /// The reason replication to `raft_id` fails, if it does.
    pub fn get(&self, raft_id: u64) -> Option<String> {
        self.lock().get(&raft_id).cloned()
    }

    /// Records the outcome of a call to `raft_id`, logging only when the reason changes. The
    /// reason may quote the peer's own error text: it is kept to a short prefix.
    fn record(&self, raft_id: u64, problem: Option<String>) {
        let problem = problem.map(|p| crate::util::prefix(&p, MAX_REASON_BYTES));
        let mut map = self.lock();
        match problem {
            Some(p) => {
                if map.get(&raft_id) != Some(&p) {
                    tracing::warn!(peer = raft_id, reason = %p, "raft peer is out of sync");
                    map.insert(raft_id, p);
                }
            }
            None => {
                if map.remove(&raft_id).is_some() {
                    tracing::info!(peer = raft_id, "raft peer takes replication again");
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How much of a replication failure's reason is kept and logged.
const MAX_REASON_BYTES: usize = 300;

/// A client for a manager's `Manager` service with the agreed message budget both ways.
pub fn manager_client(ch: Channel) -> ManagerClient<Channel> {
    crate::net::serve::manager_client(ch)
}

/// Builds a client per Raft peer.
#[derive(Clone)]
pub struct NetworkFactory {
    tls: Arc<ClientConfig>,
    problems: SyncProblems,
}

impl NetworkFactory {
    /// Peers are reached with this TLS client config (the manager's own identity); failures
    /// to replicate are recorded in `problems`.
    pub fn new(tls: Arc<ClientConfig>, problems: SyncProblems) -> Self {
        NetworkFactory { tls, problems }
    }
}

/// One peer.
pub struct PeerClient {
    target: u64,
    client: Option<ManagerClient<Channel>>,
    error: Option<String>,
    problems: SyncProblems,
    /// Bytes of entries the next AppendEntries may carry: halved each time openraft gave up
    /// on one (its deadline is a heartbeat interval), grown back after each that completes,
    /// so a slow link or a loaded peer still moves the log forward, one entry at least.
    budget: usize,
    /// An AppendEntries began and has not finished: if the next one finds this set, openraft
    /// dropped it at its deadline.
    in_flight: bool,
}

/// The smallest AppendEntries budget (one entry is sent whatever its size).
const MIN_APPEND_BUDGET: usize = 64 << 10;

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        let (client, error) = match crate::net::channel(&node.addr, self.tls.clone()) {
            Ok(ch) => (Some(manager_client(ch)), None),
            Err(e) => (None, Some(e.to_string())),
        };
        PeerClient {
            target,
            client,
            error,
            problems: self.problems.clone(),
            budget: wire::APPEND_BUDGET_BYTES,
            in_flight: false,
        }
    }
}

type RpcErr<E> = RPCError<u64, BasicNode, E>;

fn unreachable<E: std::error::Error>(msg: String) -> RpcErr<E> {
    RPCError::Unreachable(Unreachable::new(&std::io::Error::other(msg)))
}

impl PeerClient {
    async fn call<Req, Resp, E>(&mut self, kind: Kind, req: &Req) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            return Err(unreachable(self.error.clone().unwrap_or_default()));
        };
        let payload = wire::encode(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        if payload.len() > wire::MAX_MESSAGE_BYTES {
            // Only a log entry written before the command limit existed can get here.
            let why = format!(
                "a {} message of {} bytes is over the {} byte budget",
                kind.name(),
                payload.len(),
                wire::MAX_MESSAGE_BYTES
            );
            self.problems.record(self.target, Some(why.clone()));
            return Err(unreachable(why));
        }
        let msg = raft_message(payload);
        let resp = match kind {
            Kind::Append => client.raft_append(msg).await,
            Kind::Vote => client.raft_vote(msg).await,
            Kind::Snapshot => client.raft_snapshot(msg).await,
        };
        let resp = match resp {
            Ok(r) => r,
            Err(s) => {
                let why = format!("{} refused or failed: {}", kind.name(), s.message());
                // Votes go to every peer, reachable or not: only replication sets the status.
                if !matches!(kind, Kind::Vote) {
                    self.problems.record(self.target, Some(why.clone()));
                }
                return Err(unreachable(why));
            }
        };
        if !matches!(kind, Kind::Vote) {
            self.problems.record(self.target, None);
        }
        let payload =
            payload_of(resp.into_inner()).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let result: Result<Resp, E> =
            wire::decode(&payload).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Append,
    Vote,
    Snapshot,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Append => "append-entries",
            Kind::Vote => "vote",
            Kind::Snapshot => "install-snapshot",
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr<RaftError<u64>>> {
        if std::mem::replace(&mut self.in_flight, true) {
            self.budget = (self.budget / 2).max(MIN_APPEND_BUDGET);
            self.problems.record(
                self.target,
                Some(format!(
                    "append-entries did not finish within openraft's deadline; now sending at most {} KiB at a time",
                    self.budget >> 10
                )),
            );
        }
        let fit = wire::cut_entries(&rpc.entries, self.budget)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let cut = fit < rpc.entries.len();
        rpc.entries.truncate(fit);
        let sent_up_to = rpc.entries.last().map(|e| e.log_id);
        let resp = self.call(Kind::Append, &rpc).await;
        self.in_flight = false;
        if resp.is_ok() {
            self.budget = (self.budget * 2).min(wire::APPEND_BUDGET_BYTES);
        }
        match resp? {
            AppendEntriesResponse::Success if cut => {
                Ok(AppendEntriesResponse::PartialSuccess(sent_up_to))
            }
            other => Ok(other),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<RaftError<u64, InstallSnapshotError>>> {
        self.call(Kind::Snapshot, &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcErr<RaftError<u64>>> {
        self.call(Kind::Vote, &rpc).await
    }
}
