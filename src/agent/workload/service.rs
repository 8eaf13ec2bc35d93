//! The async shell of the Workload API: each RPC runs the pure checks of `check`, reads the
//! source, and renders with `render`; the streams follow the source's watches.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::api::spiffe::spiffe_workload_api_server::SpiffeWorkloadApi;
use crate::api::spiffe::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, WitBundlesRequest, WitBundlesResponse, WitsvidRequest,
    WitsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svidRequest, X509svidResponse,
};

use super::{SECURITY_HEADER, Source, WorkloadError, check, jwt, render};

/// How long FetchJWTSVID waits for the source (the managers) to issue a token.
const ISSUE_TIMEOUT: Duration = Duration::from_secs(30);

/// A response stream of the Workload API.
pub(super) type Messages<R> = Pin<Box<dyn Stream<Item = Result<R, Status>> + Send + 'static>>;

/// The Workload API of one socket.
pub(super) struct WorkloadService {
    pub(super) source: Arc<dyn Source>,
    /// Streams end when this turns true or its sender is dropped.
    pub(super) shutdown: watch::Receiver<bool>,
    /// One permit per open watch stream.
    pub(super) streams: Arc<Semaphore>,
}

/// Refuses a request without `workload.spiffe.io: true`, before its message is decoded.
pub(super) fn require_security_header(req: Request<()>) -> Result<Request<()>, Status> {
    let value = req.metadata().get(SECURITY_HEADER).map(|v| v.as_bytes());
    check::security_header(value)?;
    Ok(req)
}

impl WorkloadService {
    fn permit(&self) -> Result<OwnedSemaphorePermit, WorkloadError> {
        self.streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| WorkloadError::TooManyStreams(super::MAX_STREAMS))
    }

    /// A stream of `render(value)` for the watch's current value and each later one, or
    /// PermissionDenied at once when the source has closed it.
    fn follow<T, R>(
        &self,
        rx: watch::Receiver<Option<Arc<T>>>,
        render: fn(&T) -> R,
    ) -> Result<Response<Messages<R>>, Status>
    where
        T: Send + Sync + 'static,
        R: Send + 'static,
    {
        if rx.has_changed().is_err() {
            return Err(WorkloadError::NoIdentity.into());
        }
        let permit = self.permit()?;
        Ok(Response::new(follow(
            rx,
            self.shutdown.clone(),
            permit,
            render,
        )))
    }
}

/// What a watch stream carries between messages.
struct Following<T> {
    rx: watch::Receiver<Option<Arc<T>>>,
    shutdown: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
    first: bool,
    done: bool,
}

fn follow<T, R>(
    rx: watch::Receiver<Option<Arc<T>>>,
    shutdown: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
    render: fn(&T) -> R,
) -> Messages<R>
where
    T: Send + Sync + 'static,
    R: Send + 'static,
{
    let state = Following {
        rx,
        shutdown,
        _permit: permit,
        first: true,
        done: false,
    };
    Box::pin(futures_util::stream::unfold(
        state,
        move |mut st| async move {
            if st.done {
                return None;
            }
            loop {
                if !st.first {
                    tokio::select! {
                        changed = st.rx.changed() => if changed.is_err() {
                            st.done = true;
                            return Some((Err(WorkloadError::NoIdentity.into()), st));
                        },
                        () = stopped(&mut st.shutdown) => return None,
                    }
                }
                st.first = false;
                let current = st.rx.borrow_and_update().clone();
                if let Some(m) = current {
                    return Some((Ok(render(&m)), st));
                }
            }
        },
    ))
}

/// Returns once `shutdown` is true or its sender is gone.
pub(super) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadService {
    type FetchX509SVIDStream = Messages<X509svidResponse>;
    type FetchX509BundlesStream = Messages<X509BundlesResponse>;
    type FetchJWTBundlesStream = Messages<JwtBundlesResponse>;
    type FetchWITSVIDStream = Messages<WitsvidResponse>;
    type FetchWITBundlesStream = Messages<WitBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        _req: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        self.follow(self.source.x509(), render::x509_svid)
    }

    async fn fetch_x509_bundles(
        &self,
        _req: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        self.follow(self.source.x509(), render::x509_bundles)
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let req = req.into_inner();
        let audience = check::audiences(&req)?;
        let x509 = self.source.x509();
        if x509.has_changed().is_err() {
            return Err(WorkloadError::NoIdentity.into());
        }
        let ours = x509
            .borrow()
            .as_ref()
            .map(|m| m.spiffe_id.clone())
            .ok_or(WorkloadError::NotReady("identity"))?;
        check::requested_id(&req.spiffe_id, &ours)?;
        let token = tokio::time::timeout(ISSUE_TIMEOUT, self.source.jwt_svid(audience))
            .await
            .map_err(|_| WorkloadError::Issue("timed out".into()))?
            .map_err(|e| WorkloadError::Issue(crate::util::prefix(&e, 200)))?;
        Ok(Response::new(render::jwt_svid(&ours, &token)))
    }

    async fn fetch_jwt_bundles(
        &self,
        _req: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        self.follow(self.source.jwt_bundle(), render::jwt_bundles)
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        let req = req.into_inner();
        check::validate_request(&req)?;
        let bundles = self.source.jwt_bundle();
        if bundles.has_changed().is_err() {
            return Err(WorkloadError::NoIdentity.into());
        }
        let bundle = bundles
            .borrow()
            .clone()
            .ok_or(WorkloadError::NotReady("JWT bundle"))?;
        let v = jwt::verify(
            &req.svid,
            &bundle.jwks_json,
            &bundle.trust_domain,
            &req.audience,
            now_secs(),
        )?;
        Ok(Response::new(ValidateJwtsvidResponse {
            claims: Some(jwt::claims_struct(&v.claims)),
            spiffe_id: v.spiffe_id,
        }))
    }

    async fn fetch_witsvid(
        &self,
        _req: Request<WitsvidRequest>,
    ) -> Result<Response<Self::FetchWITSVIDStream>, Status> {
        Err(Status::unimplemented("skep does not issue WIT-SVIDs"))
    }

    async fn fetch_wit_bundles(
        &self,
        _req: Request<WitBundlesRequest>,
    ) -> Result<Response<Self::FetchWITBundlesStream>, Status> {
        Err(Status::unimplemented("skep does not issue WIT-SVIDs"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::workload::client_tests::{Fake, material};

    #[tokio::test]
    async fn streams_beyond_the_cap_are_refused_until_one_closes() {
        let (_stop, shutdown) = watch::channel(false);
        let svc = WorkloadService {
            source: Fake::new(Some(material(1))),
            shutdown,
            streams: Arc::new(Semaphore::new(2)),
        };
        let a = svc
            .fetch_x509svid(Request::new(X509svidRequest {}))
            .await
            .unwrap();
        let _b = svc
            .fetch_jwt_bundles(Request::new(JwtBundlesRequest {}))
            .await
            .unwrap();
        match svc
            .fetch_x509_bundles(Request::new(X509BundlesRequest {}))
            .await
        {
            Err(e) => assert_eq!(e.code(), tonic::Code::ResourceExhausted),
            Ok(_) => panic!("a third stream is refused"),
        }
        drop(a);
        assert!(
            svc.fetch_x509_bundles(Request::new(X509BundlesRequest {}))
                .await
                .is_ok()
        );
    }
}
