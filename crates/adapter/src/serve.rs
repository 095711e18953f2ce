//! Serving an [`Adapter`] over HTTP: the adapter side of PowerstripProtocolVersion 1.
//!
//! One URL takes both hook types (any path; the call's `Type` picks the method), so the
//! proxy's configuration names one URL per adapter. `GET /healthz` answers `200` for
//! liveness probes. A call that is not a valid PowerstripProtocolVersion 1 document gets a
//! `400` with a Docker-style `{"message": "..."}` saying what is wrong; a [`HookError`]
//! becomes its status and message.
//!
//! ```no_run
//! use powerstrip_adapter::{serve, Adapter, net::Address};
//!
//! struct Null;
//! impl Adapter for Null {}
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let address: Address = "tcp://127.0.0.1:9000".parse()?;
//! serve::serve(Null, &[address], std::future::pending()).await?;
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use powerstrip_protocol::{HookCall, HookType, decode_call, encode_post_answer, encode_pre_answer};
use tracing::{Instrument, debug, info_span, warn};

use crate::net::{Address, BindError, Listener, ServerOptions, serve_http};
use crate::{Adapter, HookError};

/// The largest call read (a hooked Docker body plus the envelope).
pub const MAX_CALL_BYTES: usize = 64 << 20;

/// Binds every address and serves `adapter` on them until `shutdown` resolves.
pub async fn serve(
    adapter: impl Adapter,
    addresses: &[Address],
    shutdown: impl Future<Output = ()>,
) -> Result<(), BindError> {
    let mut listeners = Vec::new();
    for address in addresses {
        listeners.push(Listener::bind(address).await?);
    }
    serve_listeners(Arc::new(adapter), listeners, shutdown).await;
    Ok(())
}

/// Serves `adapter` on listeners already bound (so a caller can bind port 0 and learn the
/// real address first).
pub async fn serve_listeners(
    adapter: Arc<dyn Adapter>,
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()>,
) {
    let service = service_fn(move |request| handle(adapter.clone(), request));
    serve_http(listeners, service, ServerOptions::default(), shutdown).await;
}

async fn handle(
    adapter: Arc<dyn Adapter>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let span = info_span!("call", method = %request.method(), path = %request.uri().path());
    async move {
        let response = match (request.method(), request.uri().path()) {
            (&Method::GET | &Method::HEAD, "/healthz") => {
                json(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())
            }
            (&Method::POST, _) => match Limited::new(request.into_body(), MAX_CALL_BYTES)
                .collect()
                .await
            {
                Ok(body) => {
                    let (status, answer) = answer(adapter.as_ref(), &body.to_bytes()).await;
                    json(status, answer)
                }
                Err(err) => error(
                    StatusCode::BAD_REQUEST,
                    &format!("could not read the call: {err}"),
                ),
            },
            (method, path) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("{method} {path}: POST hook calls here, or GET /healthz"),
            ),
        };
        Ok(response)
    }
    .instrument(span)
    .await
}

/// Answers one call as the adapter's HTTP server does: the status and the JSON body.
/// Needs no socket, so an adapter's HTTP behaviour can be tested directly.
///
/// ```
/// use powerstrip_adapter::{serve::answer, Adapter};
///
/// struct Null;
/// impl Adapter for Null {}
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let call = br#"{"PowerstripProtocolVersion": 1, "Type": "pre-hook",
///     "ClientRequest": {"Method": "GET", "Request": "/_ping", "Body": null}}"#;
/// let (status, body) = answer(&Null, call).await;
/// assert_eq!(status, 200);
/// assert!(String::from_utf8_lossy(&body).contains(r#""ModifiedClientRequest""#));
///
/// let (status, body) = answer(&Null, b"not json").await;
/// assert_eq!(status, 400);
/// assert!(String::from_utf8_lossy(&body).starts_with(r#"{"message":"#));
/// # }
/// ```
pub async fn answer(adapter: &dyn Adapter, call: &[u8]) -> (StatusCode, Vec<u8>) {
    let call = match decode_call(call) {
        Ok(call) => call,
        Err(err) => {
            debug!(error = %err, "malformed call");
            return (
                StatusCode::BAD_REQUEST,
                message(&format!("malformed hook call: {err}")),
            );
        }
    };
    let hook = call.hook_type();
    let result = match call {
        HookCall::PreHook { client_request } => adapter
            .pre_hook(client_request)
            .await
            .map(|request| encode_pre_answer(&request)),
        HookCall::PostHook {
            client_request,
            server_response,
        } => adapter
            .post_hook(&client_request, server_response)
            .await
            .map(|response| encode_post_answer(&response)),
        HookCall::Unwind {
            client_request,
            reason,
        } => adapter
            .unwind(&client_request, &reason)
            .await
            .map(|()| acknowledgement()),
        HookCall::Event { event } => adapter.event(&event).await.map(|()| acknowledgement()),
        _ => Err(HookError::bad_request(format!(
            "unsupported hook type {hook}"
        ))),
    };
    match result {
        Ok(body) => (StatusCode::OK, body),
        Err(err) => {
            log_refusal(hook, &err);
            (err.status(), message(err.message()))
        }
    }
}

fn log_refusal(hook: HookType, err: &HookError) {
    if err.is_refusal() {
        debug!(%hook, status = err.status().as_u16(), message = err.message(), "refused");
    } else {
        warn!(%hook, status = err.status().as_u16(), message = err.message(), "failed");
    }
}

/// The answer to calls whose answer carries nothing (unwind, event).
fn acknowledgement() -> Vec<u8> {
    format!(
        r#"{{"PowerstripProtocolVersion":{}}}"#,
        powerstrip_protocol::PROTOCOL_VERSION
    )
    .into_bytes()
}

fn message(text: &str) -> Vec<u8> {
    serde_json::json!({ "message": text })
        .to_string()
        .into_bytes()
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    json(status, message(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientRequest, ServerResponse};

    struct Refuser;

    #[async_trait::async_trait]
    impl Adapter for Refuser {
        async fn pre_hook(&self, _: ClientRequest) -> Result<ClientRequest, HookError> {
            Err(HookError::forbidden("no containers today"))
        }
        async fn post_hook(
            &self,
            _: &ClientRequest,
            _: ServerResponse,
        ) -> Result<ServerResponse, HookError> {
            Err(HookError::failed("backend down"))
        }
    }

    fn value(body: &[u8]) -> serde_json::Value {
        serde_json::from_slice(body).unwrap()
    }

    #[tokio::test]
    async fn refusals_and_failures_are_docker_style() {
        let pre = br#"{"PowerstripProtocolVersion":1,"Type":"pre-hook","ClientRequest":{"Method":"POST","Request":"/v1.41/containers/create","Body":"{}"}}"#;
        let (status, body) = answer(&Refuser, pre).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(
            value(&body),
            serde_json::json!({"message": "no containers today"})
        );
        let post = br#"{"PowerstripProtocolVersion":1,"Type":"post-hook","ClientRequest":{"Method":"GET","Request":"/x","Body":null},"ServerResponse":{"ContentType":"","Body":null,"Code":204}}"#;
        let (status, body) = answer(&Refuser, post).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY);
        assert_eq!(value(&body)["message"], "backend down");
    }

    #[tokio::test]
    async fn malformed_calls_say_what_is_wrong() {
        let (status, body) = answer(&Refuser, br#"{"PowerstripProtocolVersion":2}"#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            value(&body)["message"],
            "malformed hook call: unsupported PowerstripProtocolVersion 2 (this side speaks 1)"
        );
        let (_, body) = answer(
            &Refuser,
            br#"{"PowerstripProtocolVersion":1,"Type":"pre-hook"}"#,
        )
        .await;
        assert_eq!(
            value(&body)["message"],
            "malformed hook call: missing field ClientRequest"
        );
        let (_, body) = answer(
            &Refuser,
            br#"{"PowerstripProtocolVersion":1,"Type":"sideways","ClientRequest":{}}"#,
        )
        .await;
        assert!(
            value(&body)["message"]
                .as_str()
                .unwrap()
                .contains("unknown variant `sideways`")
        );
    }
}
