//! The client side towards Docker over a unix socket or TCP.
//!
//! Proxied requests use one Docker connection per client connection ([`Affinity`]): an
//! HTTP/1.1 connection carries one request at a time, so the client's keep-alive
//! connection and its Docker connection move in step, with no pool to search or lock.
//! The proxy's own calls (the event follower, `/readyz`) use a small keep-alive pool.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower_service::Service as _;
use tracing::debug;

use crate::body::ProxyBody;
use crate::connect::{Connector, Target};
use crate::error::{ProxyError, root_cause};
use powerstrip_adapter::net::Address;

/// How long an idle pooled connection to Docker is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The HTTP/1.1 client for one Docker daemon.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// The pool for the proxy's own calls; its connector always dials `address`.
    client: Client<Connector, ProxyBody>,
    /// Dials Docker for connections kept by client connections.
    connector: Connector,
    /// Docker's address, for error messages.
    address: Arc<str>,
}

impl Upstream {
    /// A client for the daemon at `address` (nothing is dialled until the first request).
    pub fn new(address: &Address) -> Self {
        let target = match address {
            Address::Unix(path) => Target::Unix(Arc::new(path.clone())),
            Address::Tcp { host, port } => Target::Tcp(Address::tcp_target(host, *port).into()),
        };
        Upstream {
            client: pooled_client(Connector::new(target.clone())),
            connector: Connector::new(target),
            address: address.to_string().into(),
        }
    }

    /// Docker's address as configured.
    pub fn address(&self) -> &str {
        &self.address
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
        let kept = affinity.take();
        let sender = match kept {
            // Ready once the previous answer has been read to its end; an error means
            // Docker closed the connection while it was idle.
            Some(mut sender) => match sender.ready().await {
                Ok(()) => Some(sender),
                Err(_) => None,
            },
            None => None,
        };
        let (mut sender, fresh) = match sender {
            Some(sender) => (sender, false),
            None => (self.connect().await?, true),
        };
        let response = match sender.try_send_request(request).await {
            Ok(response) => response,
            Err(mut err) => match err.take_message() {
                // Not sent: the kept connection closed under us. Once more, on a new one.
                Some(request) if !fresh => {
                    sender = self.connect().await?;
                    sender
                        .send_request(request)
                        .await
                        .map_err(|e| self.unreachable(&e))?
                }
                _ => return Err(self.unreachable(err.error())),
            },
        };
        if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
            affinity.keep(sender);
        }
        Ok(response)
    }

    /// Opens a connection to Docker, served by its own task.
    async fn connect(&self) -> Result<SendRequest<ProxyBody>, ProxyError> {
        let io = self
            .connector
            .clone()
            .call(Uri::from_static("http://upstream/"))
            .await
            .map_err(|e| self.unreachable(&e))?;
        let (sender, connection) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| self.unreachable(&e))?;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                debug!(error = %err, "Docker connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn unreachable(&self, err: &(dyn std::error::Error + 'static)) -> ProxyError {
        ProxyError::DockerUnreachable {
            address: self.address.to_string(),
            reason: root_cause(err),
        }
    }

    /// Sends a request (its URI holds only the path and query) on a pooled connection and
    /// returns Docker's answer with the body still streaming.
    pub async fn send(
        &self,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        *request.uri_mut() = placeholder_uri(request.uri());
        self.client
            .request(request)
            .await
            .map_err(|err| ProxyError::DockerUnreachable {
                address: self.address.to_string(),
                reason: root_cause(&err),
            })
    }
}

/// The Docker connection a client connection keeps between its requests.
#[derive(Default)]
pub struct Affinity {
    /// Idle between requests, taken while one is sent.
    kept: Mutex<Option<SendRequest<ProxyBody>>>,
}

impl Affinity {
    /// None yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn take(&self) -> Option<SendRequest<ProxyBody>> {
        self.kept
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn keep(&self, sender: SendRequest<ProxyBody>) {
        *self.kept.lock().unwrap_or_else(PoisonError::into_inner) = Some(sender);
    }
}

impl std::fmt::Debug for Affinity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Affinity").finish_non_exhaustive()
    }
}

/// A keep-alive client that leaves the `Host` header as the caller set it.
pub(crate) fn pooled_client<B>(connector: Connector) -> Client<Connector, B>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
{
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .set_host(false)
        .build(connector)
}

/// The pool keys connections by scheme and authority; the connector ignores both.
pub(crate) fn placeholder_uri(uri: &Uri) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(http::uri::Authority::from_static("upstream"));
    // A clone of the parsed target (shared bytes), not a re-parse.
    parts.path_and_query = Some(
        uri.path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("http://upstream/"))
}
