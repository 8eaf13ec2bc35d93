//! The `Agent` gRPC service every node serves on its mTLS listener: managers read task logs
//! here (from the supervisor), and other nodes open routing-mesh tunnels into this node's
//! tasks (served by the mesh from the [`Endpoints`](super::endpoints::Endpoints) view).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::supervisor::Supervisor;
use crate::api::v1::agent_server::Agent as AgentRpc;
use crate::api::v1::{LogsResponse, TaskLogsRequest};
use crate::net::PeerInfo;

/// The Agent service every node serves: managers fetch task logs here.
pub struct AgentService(pub Arc<Supervisor>);

#[tonic::async_trait]
impl AgentRpc for AgentService {
    type TunnelStream =
        tokio_stream::wrappers::ReceiverStream<Result<crate::api::v1::TunnelFrame, Status>>;

    /// The routing mesh's way into this node's tasks: only member nodes (their certificates
    /// verified, revoked ones refused at the handshake) may open one.
    async fn tunnel(
        &self,
        req: Request<tonic::Streaming<crate::api::v1::TunnelFrame>>,
    ) -> Result<Response<Self::TunnelStream>, Status> {
        let Some(peer) = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.identity.clone())
        else {
            return Err(Status::permission_denied(
                "permission denied: only swarm nodes may open routing-mesh tunnels",
            ));
        };
        let ids = super::mesh_identity::Identities {
            registry: self.0.identities(),
            bundles: self.0.bundles(),
        };
        let denials = super::mesh_identity::Denials::shared(|| self.0.managers());
        let stream = super::mesh::serve_tunnel(
            &self.0.endpoints(),
            (&ids, &denials),
            peer.node_id(),
            req.into_inner(),
        )
        .await?;
        Ok(Response::new(stream))
    }

    async fn task_logs(
        &self,
        req: Request<TaskLogsRequest>,
    ) -> Result<Response<LogsResponse>, Status> {
        let is_manager = req
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.identity.as_ref())
            .is_some_and(|id| id.role() == skep_pki::Role::Manager);
        if !is_manager {
            return Err(Status::permission_denied(
                "permission denied: only managers may read task logs",
            ));
        }
        let body = req.into_inner();
        let tail = usize::try_from(body.tail).unwrap_or(usize::MAX);
        let lines = self.0.logs(&body.task_ids, tail, body.since_nanos).await;
        Ok(Response::new(LogsResponse { lines }))
    }
}
