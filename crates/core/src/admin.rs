//! The admin listener (loopback by default): `/metrics` (Prometheus), `/healthz` (the
//! process is up) and `/readyz` (Docker answers and a configuration is loaded).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use powerstrip_adapter::net::{Listener, ServerOptions, serve_http};

use crate::body::empty;
use crate::proxy::Proxy;

/// How long `/readyz` waits for Docker's `/_ping`.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Serves the admin endpoints for `proxy` until `shutdown` resolves.
pub async fn serve_admin(
    listeners: Vec<Listener>,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
) {
    let service = service_fn(move |request| answer(proxy.clone(), request));
    serve_http(listeners, service, ServerOptions::default(), shutdown).await;
}

async fn answer(
    proxy: Arc<Proxy>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => text(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            proxy.metrics().encode(),
        ),
        (&Method::GET, "/healthz") => {
            text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into())
        }
        (&Method::GET, "/readyz") => match docker_ready(&proxy).await {
            Ok(()) => text(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "ready: Docker answers; configuration loaded\n".into(),
            ),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain; charset=utf-8",
                format!("not ready: {reason}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: GET /metrics, /healthz or /readyz\n".into(),
        ),
    };
    Ok(response)
}

/// Docker answers `GET /_ping` with 200 within [`PING_TIMEOUT`].
async fn docker_ready(proxy: &Proxy) -> Result<(), String> {
    let request = Request::builder()
        .method(Method::GET)
        .uri("/_ping")
        .header(header::HOST, "docker")
        .body(empty())
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(PING_TIMEOUT, proxy.upstream().send(request)).await {
        Err(_) => Err(format!(
            "Docker at {} did not answer within {PING_TIMEOUT:?}",
            proxy.docker_address()
        )),
        Ok(Err(err)) => Err(err.to_string()),
        Ok(Ok(response)) if response.status().is_success() => Ok(()),
        Ok(Ok(response)) => Err(format!("Docker answered /_ping with {}", response.status())),
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
