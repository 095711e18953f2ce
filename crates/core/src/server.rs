//! Serving the proxy: the SDK's HTTP/1.1 server loop (with upgrades) in front of [`Proxy`],
//! the Docker event follower, and a shutdown that waits for upgraded sessions.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use powerstrip_adapter::net::{Listener, ServerOptions, serve_http_with};
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::events::follow_events;
use crate::proxy::{ConnectionService, Proxy};

/// Serves `proxy` on every listener until `shutdown` resolves, then stops accepting and
/// lets requests in flight — and upgraded sessions (attach, exec) — finish for up to the
/// grace period.
pub async fn serve(
    listeners: Vec<Listener>,
    proxy: Arc<Proxy>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) {
    info!(docker = proxy.docker_address(), "forwarding to Docker");
    let events = tokio::spawn(follow_events(proxy.clone()));
    let (began_tx, began_rx) = oneshot::channel();
    let shutdown = async move {
        shutdown.await;
        let _ = began_tx.send(Instant::now());
    };
    let handler = proxy.clone();
    serve_http_with(
        listeners,
        move || ConnectionService::new(handler.clone()),
        options,
        shutdown,
    )
    .await;
    events.abort();

    let began = began_rx.await.unwrap_or_else(|_| Instant::now());
    let sessions = proxy.sessions();
    sessions.close();
    if !sessions.is_empty() {
        info!(
            sessions = sessions.len(),
            "waiting for upgraded sessions to end"
        );
        let left = options.grace.saturating_sub(began.elapsed());
        if tokio::time::timeout(left, sessions.wait()).await.is_err() {
            warn!(
                sessions = sessions.len(),
                "upgraded sessions still open after the grace period; closing"
            );
        }
    }
}
