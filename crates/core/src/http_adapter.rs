//! Adapters reached over HTTP: the proxy's side of PowerstripProtocolVersion 1.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::StatusCode;
use powerstrip_adapter::{Adapter, ClientRequest, DockerEvent, HookError, ServerResponse};
use powerstrip_config::AdapterUrl;
use powerstrip_protocol::{
    HookCall, ProtocolError, decode_post_answer, decode_pre_answer, encode_call,
};

use crate::body::{Collect, collect_bounded};
use crate::connect::{Connector, Target};
use crate::error::root_cause;
use crate::h1::{self, Idle, Retry};
use powerstrip_adapter::tls::client_config;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;

/// Idle connections kept per adapter.
const MAX_IDLE: usize = 64;

/// The longest refusal text passed on to the client from an adapter's non-JSON answer.
const MAX_MESSAGE_CHARS: usize = 1024;

/// An adapter served over HTTP (by anyone, in any language), called through a pooled
/// client. Timeouts and failure policies are applied by the chain runner, as for every
/// adapter.
#[derive(Debug)]
pub struct HttpAdapter {
    /// The URL as configured, for messages.
    url: String,
    /// Dials the adapter.
    connector: Connector,
    /// Every call's request line and headers up to the `Content-Length` value.
    head: Vec<u8>,
    /// Keep-alive connections to this adapter alone.
    idle: Arc<Idle>,
    /// The largest answer read from the adapter.
    max_answer: usize,
}

/// Why an [`HttpAdapter`] could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpAdapterError(String);

impl HttpAdapter {
    /// A client for the adapter at `url`. An `https://` adapter's certificate must be
    /// signed by `ca` (PEM), or by a system root without one. `max_answer` bounds the
    /// answers it reads.
    pub fn new(
        url: &AdapterUrl,
        ca: Option<&Path>,
        max_answer: usize,
    ) -> Result<Self, HttpAdapterError> {
        let (target, path, host) = match url {
            AdapterUrl::Tcp {
                https,
                host,
                port,
                path_and_query,
            } => {
                let authority = powerstrip_adapter::net::Address::tcp_target(host, *port);
                let target = if *https {
                    let config = client_config(ca).map_err(|e| HttpAdapterError(e.to_string()))?;
                    let server_name = ServerName::try_from(host.clone())
                        .map_err(|e| HttpAdapterError(format!("bad adapter URL {url}: {e}")))?;
                    Target::Tls {
                        address: authority.clone().into(),
                        server_name,
                        connector: TlsConnector::from(config),
                    }
                } else {
                    Target::Tcp(authority.clone().into())
                };
                (target, path_and_query.clone(), authority)
            }
            AdapterUrl::Unix { socket } => (
                Target::Unix(Arc::new(socket.clone())),
                "/".to_owned(),
                "localhost".to_owned(),
            ),
        };
        // Both are written into every call as they are: refuse what would break the
        // request line or the Host header.
        let path: http::uri::PathAndQuery = path
            .parse()
            .map_err(|e| HttpAdapterError(format!("bad adapter URL {url}: {e}")))?;
        http::HeaderValue::from_str(&host)
            .map_err(|e| HttpAdapterError(format!("bad adapter URL {url}: {e}")))?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: "
        )
        .into_bytes();
        Ok(HttpAdapter {
            url: url.to_string(),
            connector: Connector::new(target),
            head,
            idle: Arc::new(Idle::new(MAX_IDLE)),
            max_answer,
        })
    }

    /// POSTs one call and returns the body of a 2xx answer; any other answer becomes the
    /// matching [`HookError`].
    ///
    /// A call that a reused connection could not carry (the adapter had closed it: nothing
    /// could be written, or not one byte of an answer came back) is made once more on a new
    /// connection.
    async fn call(&self, call: &HookCall) -> Result<Bytes, HookError> {
        let body = encode_call(call);
        let response = h1::send_with(
            &self.idle,
            &self.connector,
            false,
            Retry::Unanswered,
            |out| {
                out.reserve(self.head.len() + 32 + body.len());
                out.extend_from_slice(&self.head);
                out.extend_from_slice(body.len().to_string().as_bytes());
                out.extend_from_slice(b"\r\n\r\n");
                out.extend_from_slice(&body);
            },
        )
        .await
        .map_err(|err| {
            HookError::failed("could not be reached").with_detail(format!(
                "cannot reach {}: {}",
                self.url,
                root_cause(&err)
            ))
        })?;
        let status = response.status();
        let body = match collect_bounded(response.into_body(), self.max_answer).await {
            Ok(body) => body,
            Err(Collect::TooLarge) => {
                return Err(
                    HookError::failed("broke off its answer").with_detail(format!(
                        "the answer from {} is longer than {} bytes",
                        self.url, self.max_answer
                    )),
                );
            }
            Err(Collect::Failed(err)) => {
                return Err(
                    HookError::failed("broke off its answer").with_detail(format!(
                        "could not read the answer from {}: {}",
                        self.url,
                        root_cause(err.as_ref())
                    )),
                );
            }
        };
        if status.is_success() {
            Ok(body)
        } else {
            Err(refusal(status, &body))
        }
    }

    fn invalid(&self, err: ProtocolError) -> HookError {
        HookError::failed(format!("answered an invalid document: {err}"))
            .with_detail(format!("from {}", self.url))
    }
}

/// Turns a non-2xx answer into an error carrying the adapter's status and message. A 4xx
/// is a refusal (the adapter said no); a 5xx is a failure, which failure policies may skip.
fn refusal(status: StatusCode, body: &[u8]) -> HookError {
    let message = docker_message(body).unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() {
            format!("adapter answered {status} with no message")
        } else {
            text.chars().take(MAX_MESSAGE_CHARS).collect()
        }
    });
    if status.is_server_error() {
        HookError::failed(message).with_status(status)
    } else {
        HookError::refuse(status, message)
    }
}

/// The `message` of a Docker-style JSON error body.
fn docker_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("message")?.as_str().map(str::to_owned)
}

#[async_trait]
impl Adapter for HttpAdapter {
    async fn pre_hook(&self, request: ClientRequest) -> Result<ClientRequest, HookError> {
        let answer = self
            .call(&HookCall::PreHook {
                client_request: request,
            })
            .await?;
        decode_pre_answer(&answer).map_err(|e| self.invalid(e))
    }

    async fn post_hook(
        &self,
        request: &ClientRequest,
        response: ServerResponse,
    ) -> Result<ServerResponse, HookError> {
        let answer = self
            .call(&HookCall::PostHook {
                client_request: request.clone(),
                server_response: response,
            })
            .await?;
        decode_post_answer(&answer).map_err(|e| self.invalid(e))
    }

    async fn unwind(&self, request: &ClientRequest, reason: &str) -> Result<(), HookError> {
        let call = HookCall::Unwind {
            client_request: request.clone(),
            reason: reason.to_owned(),
        };
        self.call(&call).await.map(drop)
    }

    async fn event(&self, event: &DockerEvent) -> Result<(), HookError> {
        let call = HookCall::Event {
            event: event.clone(),
        };
        self.call(&call).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use powerstrip_adapter::HookErrorKind;

    #[test]
    fn refusals_keep_status_and_docker_message() {
        let err = refusal(
            StatusCode::FORBIDDEN,
            br#"{"message":"no root containers"}"#,
        );
        assert_eq!(err.status(), StatusCode::FORBIDDEN);
        assert_eq!(err.message(), "no root containers");
        assert!(err.is_refusal());
    }

    #[test]
    fn plain_text_and_empty_refusals_are_worded() {
        let err = refusal(StatusCode::CONFLICT, b"  quota exceeded\n");
        assert_eq!(err.message(), "quota exceeded");
        let err = refusal(StatusCode::BAD_REQUEST, b"");
        assert_eq!(
            err.message(),
            "adapter answered 400 Bad Request with no message"
        );
    }

    #[test]
    fn server_errors_are_failures_with_their_status() {
        let err = refusal(StatusCode::INTERNAL_SERVER_ERROR, b"<html>Traceback</html>");
        assert_eq!(err.kind(), HookErrorKind::Failed);
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
