//! openraft's network over skep's mTLS gRPC: each Raft RPC is a JSON payload in a
//! `RaftMessage`, sent with this manager's own certificate to the peer's `Manager` service.

use std::sync::Arc;

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

/// Builds a client per Raft peer.
#[derive(Clone)]
pub struct NetworkFactory {
    tls: Arc<ClientConfig>,
}

impl NetworkFactory {
    /// Peers are reached with this TLS client config (the manager's own identity).
    pub fn new(tls: Arc<ClientConfig>) -> Self {
        NetworkFactory { tls }
    }
}

/// One peer.
pub struct PeerClient {
    target: u64,
    client: Option<ManagerClient<Channel>>,
    error: Option<String>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        match crate::net::channel(&node.addr, self.tls.clone()) {
            Ok(ch) => PeerClient {
                target,
                client: Some(ManagerClient::new(ch)),
                error: None,
            },
            Err(e) => PeerClient {
                target,
                client: None,
                error: Some(e.to_string()),
            },
        }
    }
}

type RpcErr<E> = RPCError<u64, BasicNode, E>;

impl PeerClient {
    async fn call<Req, Resp, E>(&mut self, kind: Kind, req: &Req) -> Result<Resp, RpcErr<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(client) = self.client.as_mut() else {
            let msg = self.error.clone().unwrap_or_default();
            return Err(RPCError::Unreachable(Unreachable::new(
                &std::io::Error::other(msg),
            )));
        };
        let payload =
            serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let msg = RaftMessage { payload };
        let resp = match kind {
            Kind::Append => client.raft_append(msg).await,
            Kind::Vote => client.raft_vote(msg).await,
            Kind::Snapshot => client.raft_snapshot(msg).await,
        }
        .map_err(|s| {
            RPCError::Unreachable(Unreachable::new(&std::io::Error::other(
                s.message().to_string(),
            )))
        })?;
        let result: Result<Resp, E> = serde_json::from_slice(&resp.into_inner().payload)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr<RaftError<u64>>> {
        self.call(Kind::Append, &rpc).await
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
