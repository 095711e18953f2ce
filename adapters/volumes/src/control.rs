//! The operator's way in: `powerstrip volumes snapshot|rm|move` talk to the adapter of
//! their own host over a unix socket in its state directory (`volumes.sock`, mode 0600:
//! root only), and the adapter carries the request out — itself when the dataset lives
//! here, otherwise through a request in the cluster store that the right node's adapter
//! carries out and answers.
//!
//! `POST /v1/snapshot {"dataset"}`, `POST /v1/rm {"name"}` (a dataset, or
//! `snapshot-<id>`), `POST /v1/move {"dataset", "to"}` (a node's name or id). Answers
//! `{"message": ...}` with 200, or with the status of the refusal.

use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use powerstrip_adapter::HookError;
use powerstrip_adapter::context::Stop;
use serde_json::{Value, json};
use tracing::{debug, info, warn};

use crate::adapter::Volumes;

/// The socket's file name in the adapter's state directory.
pub const SOCKET: &str = "volumes.sock";

/// The control socket of an adapter whose state directory is `dir`.
pub fn socket(dir: &Path) -> PathBuf {
    dir.join(SOCKET)
}

/// Serves the control API until `stop`.
pub async fn serve(adapter: Volumes, stop: Stop) {
    let path = socket(adapter.context().state_dir());
    if let Some(dir) = path.parent()
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        warn!(path = %dir.display(), error = %e, "cannot create the control socket's directory");
        return;
    }
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(listener) => listener,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot serve the control socket");
            return;
        }
    };
    if let Err(e) = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)) {
        warn!(path = %path.display(), error = %e, "cannot restrict the control socket");
        let _ = std::fs::remove_file(&path);
        return;
    }
    debug!(socket = %path.display(), "control socket listening");
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let adapter = adapter.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let adapter = adapter.clone();
                async move { Ok::<_, Infallible>(handle(&adapter, request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
    let _ = std::fs::remove_file(&path);
}

async fn handle(adapter: &Volumes, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let post = request.method() == http::Method::POST;
    let body = Limited::new(request.into_body(), 64 << 10)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let text = |field: &str| {
        body[field]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| HookError::bad_request(format!("the request has no {field}")))
    };
    let result = match (post, path.as_str()) {
        (true, "/v1/snapshot") => match text("dataset") {
            Ok(dataset) => adapter.snapshot_anywhere(&dataset).await,
            Err(e) => Err(e),
        },
        (true, "/v1/rm") => match text("name") {
            Ok(name) => adapter.remove_named(&name).await,
            Err(e) => Err(e),
        },
        (true, "/v1/move") => match (text("dataset"), text("to")) {
            (Ok(dataset), Ok(to)) => adapter.move_to(&dataset, &to).await,
            (Err(e), _) | (_, Err(e)) => Err(e),
        },
        _ => Err(HookError::refuse(
            StatusCode::NOT_FOUND,
            format!("no such call: {path}"),
        )),
    };
    let (status, message) = match result {
        Ok(message) => {
            info!(call = %path, %message, "operator request");
            (StatusCode::OK, message)
        }
        Err(e) => (e.status(), e.message().to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(
        json!({ "message": message }).to_string(),
    )));
    *response.status_mut() = status;
    response
}

/// Why a control call failed, for the CLI.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No adapter answers on the socket.
    #[error(
        "no volumes adapter answers on {socket}: {reason} (is powerstrip serving with the volumes adapter on this host?)"
    )]
    Unreachable {
        /// The socket.
        socket: String,
        /// Why.
        reason: String,
    },
    /// The adapter refused or failed; its message.
    #[error("{message}")]
    Refused {
        /// The status.
        status: u16,
        /// The message.
        message: String,
    },
}

/// Calls the adapter at `socket`: `call` is `snapshot`, `rm` or `move`, `body` its JSON.
/// Waits up to `wait`. Its message.
pub async fn call(
    socket: &Path,
    call: &str,
    body: &Value,
    wait: Duration,
) -> Result<String, ControlError> {
    let unreachable = |reason: String| ControlError::Unreachable {
        socket: socket.display().to_string(),
        reason,
    };
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
    tokio::spawn(connection);
    let request = Request::post(format!("/v1/{call}"))
        .header(http::header::HOST, "volumes")
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| unreachable(e.to_string()))?;
    let answer = tokio::time::timeout(wait, async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        Ok::<_, ControlError>((status, bytes))
    })
    .await
    .map_err(|_| ControlError::Refused {
        status: 504,
        message: format!("no answer within {}s", wait.as_secs()),
    })??;
    let (status, bytes) = answer;
    let message = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    if status.is_success() {
        Ok(message)
    } else {
        Err(ControlError::Refused {
            status: status.as_u16(),
            message,
        })
    }
}
