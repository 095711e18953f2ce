//! The client side towards Docker: a keep-alive pool over a unix socket or TCP.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::body::ProxyBody;
use crate::connect::{Connector, Target};
use crate::error::{ProxyError, root_cause};
use powerstrip_adapter::net::Address;

/// How long an idle pooled connection to Docker is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// A pooled HTTP/1.1 client for one Docker daemon.
#[derive(Clone, Debug)]
pub struct Upstream {
    /// The pool; its connector always dials `address`.
    client: Client<Connector, ProxyBody>,
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
            client: pooled_client(Connector::new(target)),
            address: address.to_string().into(),
        }
    }

    /// Docker's address as configured.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Sends a request (its URI holds only the path and query) and returns Docker's
    /// answer with the body still streaming.
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
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(http::uri::Authority::from_static("upstream"));
    parts.path_and_query = path.parse().ok();
    Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("http://upstream/"))
}
