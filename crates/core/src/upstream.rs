//! The client side towards Docker over a unix socket or TCP.
//!
//! Proxied requests use one Docker connection per client connection ([`Affinity`]): an
//! HTTP/1.1 connection carries one request at a time, so the client's keep-alive
//! connection and its Docker connection move in step, with nothing to search or share.
//! The proxy's own calls (the event follower, `/readyz`) use a small pool.

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use powerstrip_adapter::net::Address;

use crate::body::ProxyBody;
use crate::connect::{Connector, Pool, SendError, Target};
use crate::error::{ProxyError, root_cause};

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

/// The Docker connection a client connection keeps between its requests.
#[derive(Debug)]
pub struct Affinity(Pool<ProxyBody>);

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
        Affinity(Pool::new(self.connector.clone(), 1))
    }

    /// Sends a request on the Docker connection of the client connection that carries it
    /// (opening one if it has none, or if Docker closed it), and returns Docker's answer
    /// with the body still streaming. A connection that switches protocols (attach, exec)
    /// leaves the affinity; the next request opens a new one.
    pub async fn send_on(
        &self,
        affinity: &Affinity,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let (response, sender) = affinity
            .0
            .send(request)
            .await
            .map_err(|e| self.unreachable(&e))?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            // Ready again once this answer has been read: the next request waits for that.
            affinity.0.release(sender);
        }
        Ok(response)
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

    fn unreachable(&self, err: &SendError) -> ProxyError {
        ProxyError::DockerUnreachable {
            address: self.address.to_string(),
            reason: root_cause(err),
        }
    }
}
