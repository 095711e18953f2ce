//! Docker's plugin API for adapters that also serve Docker as a plugin (a volume driver, a
//! network driver): JSON calls `POST /<Interface>.<Method>` on a unix socket under
//! `/run/docker/plugins/`, where the daemon looks for it.
//!
//! Once Docker has used a plugin it keeps asking it (about every named volume, for
//! instance), and while the socket is missing each call waits up to ~15 s. So the socket is
//! put in place in one step and handed over without a gap: [`serve`] binds a file of its own
//! and renames it over the old one; on the way out it removes the file only if it is still
//! its own (a reload's new server may have put its own in place already).

use std::convert::Infallible;
use std::future::Future;
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::context::Stop;

/// Where Docker looks for plugin `name`: `/run/docker/plugins/<name>.sock`.
pub fn socket(name: &str) -> PathBuf {
    PathBuf::from("/run/docker/plugins").join(format!("{name}.sock"))
}

/// How a plugin answers a call it refuses: Docker reads `{"Err": "..."}` with either
/// status; volume drivers conventionally answer 200, network drivers 500.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errors(pub StatusCode);

/// Serves the plugin API on [`socket`]`(name)` until `stop`: each call's path (`/Plugin.Activate`,
/// `/VolumeDriver.Mount`, ...) and JSON body (`null` when it is not JSON) go to `handle`;
/// its `Ok` value is the answer, its `Err` message becomes `{"Err": message}` with
/// `errors`' status. `what` names the plugin in logs ("volume plugin").
pub async fn serve<H, F>(name: &str, what: &'static str, errors: Errors, stop: Stop, handle: H)
where
    H: Fn(String, Value) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<Value, String>> + Send + 'static,
{
    let path = socket(name);
    if let Some(dir) = path.parent()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        warn!(path = %dir.display(), error = %e, "cannot create the plugin directory");
        return;
    }
    // Bind a file of our own, then put it in place in one step.
    let fresh = path.with_extension(format!("sock.{}", std::process::id()));
    let _ = std::fs::remove_file(&fresh);
    let listener = match tokio::net::UnixListener::bind(&fresh) {
        Ok(listener) => listener,
        Err(e) => {
            warn!(path = %fresh.display(), error = %e, "cannot serve the {what}");
            return;
        }
    };
    let ours = std::fs::metadata(&fresh).map(|m| m.ino()).ok();
    if let Err(e) = std::fs::rename(&fresh, &path) {
        warn!(path = %path.display(), error = %e, "cannot serve the {what}");
        let _ = std::fs::remove_file(&fresh);
        return;
    }
    info!(driver = %name, socket = %path.display(), "{what} listening");
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    debug!(error = %e, "plugin accept failed");
                    continue;
                }
            },
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(answer(what, errors, request, handle).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    // Only our own file: a newer server may have put its own in place.
    if std::fs::metadata(&path).map(|m| m.ino()).ok() == ours {
        let _ = std::fs::remove_file(&path);
    }
}

/// One call: decoded, handled, encoded.
async fn answer<H, F>(
    what: &str,
    errors: Errors,
    request: Request<Incoming>,
    handle: H,
) -> Response<Full<Bytes>>
where
    H: Fn(String, Value) -> F,
    F: Future<Output = Result<Value, String>>,
{
    let call = request.uri().path().to_owned();
    let body = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    debug!(%call, "{what}");
    let (status, value) = match handle(call.clone(), body).await {
        Ok(value) => (StatusCode::OK, value),
        Err(message) => {
            if errors.0.is_server_error() {
                warn!(%call, error = %message, "{what} call failed");
            } else {
                debug!(%call, error = %message, "{what} call refused");
            }
            (errors.0, json!({ "Err": message }))
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/vnd.docker.plugins.v1.2+json"),
    );
    response
}
