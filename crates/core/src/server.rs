//! Serving the proxy: the SDK's HTTP/1.1 server loop (with upgrades) in front of [`Proxy`].

use std::future::Future;
use std::sync::Arc;

use hyper::service::service_fn;
use powerstrip_adapter::net::{Listener, ServerOptions, serve_http};
use tracing::info;

use crate::proxy::{Proxy, service};

/// Serves `proxy` on every listener until `shutdown` resolves, then stops accepting and
/// lets requests in flight finish for up to the grace period.
pub async fn serve(
    listeners: Vec<Listener>,
    proxy: Arc<Proxy>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) {
    info!(docker = proxy.docker_address(), "forwarding to Docker");
    let service = service_fn(move |request| service(proxy.clone(), request));
    serve_http(listeners, service, options, shutdown).await;
}
