//! The client side towards Docker over a unix socket or TCP.
//!
//! Proxied requests use one Docker connection per client connection ([`Affinity`]): an
//! HTTP/1.1 connection carries one request at a time, so the client's keep-alive
//! connection and its Docker connection move in step, with nothing to search or share.
//! A request whose body is in memory or small (nearly all of Docker's API) is exchanged by
//! the lean client in `h1`, by the task serving the client; uploads of unknown or large
//! size, upgrades (attach, exec) and the endpoints Docker answers with a stream (logs,
//! events, archives, image transfers) by hyper's client, which writes a body while it
//! reads the answer and reads large bodies into one adaptive buffer. The proxy's own calls (the event follower, `/readyz`) use a small pool.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use http_body::Body as _;
use hyper::body::Incoming;
use powerstrip_adapter::net::Address;

use crate::body::{Collect, ProxyBody, collect_bounded};
use crate::connect::{Connector, Pool, SendError, Target};
use crate::error::{ProxyError, root_cause};
use crate::h1::{self, H1Error, Idle};
use crate::headers::is_upgrade;
use crate::streaming::is_streaming_endpoint;

/// The largest request body read into memory before it is sent, so that the request goes
/// through the lean client; bigger uploads stream through hyper's.
const MAX_BUFFERED_UPLOAD: u64 = 64 * 1024;

/// Idle connections kept for the proxy's own calls.
const OWN_IDLE: usize = 4;

/// The HTTP/1.1 client for one Docker daemon.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// Dials Docker.
    connector: Connector,
    /// Connections for the proxy's own calls.
    own: Arc<Pool<ProxyBody>>,
    /// Docker's address, for error messages.
    address: Arc<str>,
}

/// The Docker connections a client connection keeps between its requests: one for the
/// lean client, one for hyper's (used only by uploads).
#[derive(Debug)]
pub struct Affinity {
    lean: Arc<Idle>,
    streaming: Pool<ProxyBody>,
}

impl Upstream {
    /// A client for the daemon at `address` (nothing is dialled until the first request).
    pub fn new(address: &Address) -> Self {
        let target = match address {
            Address::Unix(path) => Target::Unix(Arc::new(path.clone())),
            Address::Tcp { host, port } => Target::Tcp(Address::tcp_target(host, *port).into()),
        };
        let connector = Connector::new(target);
        Upstream {
            own: Arc::new(Pool::new(connector.clone(), OWN_IDLE)),
            connector,
            address: address.to_string().into(),
        }
    }

    /// Docker's address as configured.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A new, empty affinity for a client connection.
    pub fn affinity(&self) -> Affinity {
        Affinity {
            lean: Arc::new(Idle::new(1)),
            streaming: Pool::new(self.connector.clone(), 1),
        }
    }

    /// Sends a request on the Docker connection of the client connection that carries it
    /// (opening one if it has none, or if Docker closed it), and returns Docker's answer
    /// with the body still streaming. A connection that switches protocols (attach, exec)
    /// leaves the affinity; the next request opens a new one.
    pub async fn send_on(
        &self,
        affinity: &Affinity,
        request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (parts, body) = request.into_parts();
        let in_memory = match &body {
            ProxyBody::Bytes(_) => true,
            ProxyBody::Stream(body) => body
                .size_hint()
                .exact()
                .is_some_and(|n| n <= MAX_BUFFERED_UPLOAD),
            ProxyBody::Docker(_) => false,
        };
        // Uploads of unknown or large size, upgrades (attach, exec) and the endpoints
        // Docker answers with a stream (logs, events, archives, images: hyper's client reads
        // them into one reused, adaptive buffer) go through hyper's client.
        if !in_memory
            || is_upgrade(&parts.headers)
            || is_streaming_endpoint(&parts.method, parts.uri.path())
        {
            return self
                .send_streaming(affinity, Request::from_parts(parts, body))
                .await;
        }
        // At most MAX_BUFFERED_UPLOAD bytes from the client, or what the proxy produced.
        let body = match collect_bounded(body, usize::MAX).await {
            Ok(bytes) => bytes,
            Err(Collect::Failed(err)) => {
                return Err(ProxyError::BadRequestBody(format!(
                    "could not read it: {}",
                    root_cause(err.as_ref())
                )));
            }
            // There is no limit here: checked above for the client's body.
            Err(Collect::TooLarge) => {
                return Err(ProxyError::RequestTooLarge { limit: usize::MAX });
            }
        };
        let response = h1::send(&affinity.lean, &self.connector, &parts, body)
            .await
            .map_err(|e| self.lean_failed(&e))?;
        Ok(response.map(ProxyBody::Docker))
    }

    /// Sends a request through hyper's client, which streams the body while it reads the
    /// answer, and handles upgrades.
    async fn send_streaming(
        &self,
        affinity: &Affinity,
        request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (response, sender) = affinity
            .streaming
            .send(request)
            .await
            .map_err(|e| self.unreachable(&e))?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            // Ready again once this answer has been read: the next request waits for that.
            affinity.streaming.release(sender);
        }
        Ok(response.map(ProxyBody::Stream))
    }

    /// Sends one of the proxy's own requests (its URI holds only the path and query) and
    /// returns Docker's answer with the body still streaming. The connection is not reused.
    pub async fn send(
        &self,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let (response, _) = self
            .own
            .send(request)
            .await
            .map_err(|e| self.unreachable(&e))?;
        Ok(response)
    }

    fn lean_failed(&self, err: &H1Error) -> ProxyError {
        ProxyError::DockerUnreachable {
            address: self.address.to_string(),
            reason: root_cause(err),
        }
    }

    fn unreachable(&self, err: &SendError) -> ProxyError {
        ProxyError::DockerUnreachable {
            address: self.address.to_string(),
            reason: root_cause(err),
        }
    }
}
