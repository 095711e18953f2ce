//! # The Powerstrip adapter SDK
//!
//! An adapter extends Docker by hooking API calls: a **pre-hook** sees (and may rewrite or
//! refuse) a request before Docker does, a **post-hook** sees (and may rewrite) Docker's
//! answer before the client does. An adapter is one type implementing [`Adapter`]; both
//! methods default to passing through, so an adapter implements only the phase it needs.
//!
//! ## Layout
//! - [`Adapter`]: the trait. The proxy calls it directly for in-process adapters, and
//!   through its HTTP client for adapters served over PowerstripProtocolVersion 1.
//! - [`HookError`]: how a hook refuses a call (an HTTP status and a message the docker
//!   user reads as `Error response from daemon: <message>`) or reports that it failed.
//! - Re-exported wire types: [`ClientRequest`], [`ServerResponse`].
//! - [`docker`]: lossless views of the Docker bodies adapters most often touch
//!   ([`ContainerCreate`](docker::ContainerCreate): image, user, env, labels, cmd, binds,
//!   mounts, network mode) — everything not set survives the round trip.
//! - [`path`]: the request path split into API version, endpoint and ids, and query
//!   string helpers ([`RequestExt`](path::RequestExt)).
//! - [`builtin`]: [`Builtin`](builtin::Builtin), an adapter's name, options and factory, so
//!   the `powerstrip` binary can link it (`builtin = "..."`) and [`cli`] can serve it.
//! - [`context`]: what a factory is handed besides options: the cluster store, a Docker
//!   client for the real daemon, this node's identity, a state directory, background tasks.
//! - [`serve`]: the HTTP server for an adapter ([`serve::serve`], [`serve::answer`]).
//! - [`cli`]: a ready-made `main` for an adapter binary (`--listen`, `--set`, `--log`).
//! - [`tls`]: rustls configurations in Docker's model (server identity, client
//!   certificates required with `--tlsverify`; clients for `https://` adapters).
//! - [`net`]: addresses (`unix:///path`, `tcp://host:port`), listeners and the HTTP/1.1
//!   server loop the proxy shares.
//!
//! ```
//! use powerstrip_adapter::docker::{ContainerCreate, field};
//! use powerstrip_adapter::path::RequestExt as _;
//! use powerstrip_adapter::{async_trait, Adapter, ClientRequest, HookError};
//!
//! /// Refuses every privileged container.
//! struct NoPrivileged;
//!
//! #[async_trait]
//! impl Adapter for NoPrivileged {
//!     async fn pre_hook(&self, request: ClientRequest) -> Result<ClientRequest, HookError> {
//!         if request.docker_path().endpoint() == "/containers/create" {
//!             let create = ContainerCreate::from_request(&request)?;
//!             let privileged = create
//!                 .host_config()
//!                 .and_then(|hc| field(hc, "Privileged"))
//!                 .is_some_and(|v| v == true);
//!             if privileged {
//!                 return Err(HookError::forbidden("privileged containers are not allowed here"));
//!             }
//!         }
//!         Ok(request)
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let request = ClientRequest::new(
//!     "POST",
//!     "/v1.41/containers/create",
//!     Some(r#"{"Image":"busybox","HostConfig":{"Privileged": true}}"#.into()),
//! );
//! let refused = NoPrivileged.pre_hook(request).await.unwrap_err();
//! assert_eq!(refused.status(), 403);
//! # }
//! ```
#![forbid(unsafe_code)]

pub mod builtin;
pub mod cli;
pub mod context;
pub mod docker;
pub mod net;
pub mod path;
pub mod plugin;
pub mod serve;
pub mod tls;

pub use async_trait::async_trait;
pub use context::{Context, bollard};
pub use http::StatusCode;
pub use powerstrip_protocol::{ClientRequest, DockerEvent, ServerResponse, WithheldBody};
pub use powerstrip_store as store;

/// One adapter: a pre-hook and a post-hook, each defaulting to "pass through unchanged".
///
/// The proxy calls the same trait for adapters linked into its binary and for adapters
/// reached over HTTP, so chains mix both freely. Implementations must be cheap to call
/// concurrently: one value serves every request.
#[async_trait]
pub trait Adapter: Send + Sync + 'static {
    /// Runs before Docker sees the request. Return the request to send on (rewritten or
    /// not) or an error to refuse it; a refusal stops the chain and Docker is never called.
    ///
    /// The request's method and path must be returned unchanged: an adapter may rewrite
    /// the query string and the body, never move the request to another endpoint.
    async fn pre_hook(&self, request: ClientRequest) -> Result<ClientRequest, HookError> {
        Ok(request)
    }

    /// Runs after Docker answered (also when it answered with an error), before the client
    /// sees the response. `request` is the request as Docker received it.
    async fn post_hook(
        &self,
        request: &ClientRequest,
        response: ServerResponse,
    ) -> Result<ServerResponse, HookError> {
        let _ = request;
        Ok(response)
    }

    /// Runs when a request this adapter pre-hooked did not take effect: a later pre-hook
    /// refused it, Docker could not be reached, or Docker answered with an error. Release
    /// here what the pre-hook allocated (an IP address, a dataset lease). `request` is the
    /// request as the chain left it (the one Docker received, when Docker failed); `reason`
    /// says what happened. Best effort: an error is logged, and the client's answer is the
    /// original failure either way. An in-process adapter receives it when its
    /// [`Builtin`](builtin::Builtin) says so ([`with_unwind`](builtin::Builtin::with_unwind));
    /// an HTTP one when its configuration has `unwind = true`.
    async fn unwind(&self, request: &ClientRequest, reason: &str) -> Result<(), HookError> {
        let _ = (request, reason);
        Ok(())
    }

    /// Receives a Docker event this adapter subscribed to (`events = ["die", "destroy"]`
    /// in its configuration): how an adapter cleans up after a container that died or was
    /// removed without any API call through the proxy. Delivered in order, one at a time.
    async fn event(&self, event: &DockerEvent) -> Result<(), HookError> {
        let _ = event;
        Ok(())
    }
}

/// Why a hook did not return a request or response.
///
/// A **refusal** is the adapter's decision (a policy said no): its status and message go to
/// the client as they are. A **failure** means the adapter could not do its job (it is
/// down, timed out or answered nonsense): the proxy reports it as a Docker-style 502/504
/// naming the adapter, or skips the hook if the operator set `failure = "ignore"`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HookError {
    /// The HTTP status the client receives.
    status: StatusCode,
    /// The text the docker user reads after `Error response from daemon: `.
    message: String,
    /// Whether the adapter decided (refusal) or broke (failure); failure policies apply
    /// only to failures.
    kind: HookErrorKind,
    /// What only the operator should see (addresses, OS errors): logged, never sent to
    /// the client.
    detail: Option<String>,
}

/// Whether a [`HookError`] is the adapter's decision or its malfunction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HookErrorKind {
    /// The adapter refused the call on purpose.
    Refused,
    /// The adapter could not do its job.
    Failed,
    /// The adapter did not answer in time.
    TimedOut,
}

impl HookError {
    /// A refusal with any status (4xx or 5xx) and message.
    pub fn refuse(status: StatusCode, message: impl Into<String>) -> Self {
        HookError {
            status,
            message: message.into(),
            kind: HookErrorKind::Refused,
            detail: None,
        }
    }

    /// A `400 Bad Request` refusal: the request is malformed for this adapter.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::refuse(StatusCode::BAD_REQUEST, message)
    }

    /// A `403 Forbidden` refusal: a policy does not allow this request.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::refuse(StatusCode::FORBIDDEN, message)
    }

    /// The adapter could not do its job (`502 Bad Gateway` unless the operator ignores
    /// this adapter's failures).
    pub fn failed(message: impl Into<String>) -> Self {
        HookError {
            status: StatusCode::BAD_GATEWAY,
            message: message.into(),
            kind: HookErrorKind::Failed,
            detail: None,
        }
    }

    /// The adapter did not answer in time (`504 Gateway Timeout` unless ignored).
    pub fn timed_out(message: impl Into<String>) -> Self {
        HookError {
            status: StatusCode::GATEWAY_TIMEOUT,
            message: message.into(),
            kind: HookErrorKind::TimedOut,
            detail: None,
        }
    }

    /// The same error with another status, e.g. to keep the status an HTTP adapter
    /// answered with when it failed.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The same error with details for the operator's log only (the client sees the
    /// message alone).
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Details for the log, if any.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// The status the client receives.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message the client receives.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether this is a refusal, a failure or a timeout.
    pub fn kind(&self) -> HookErrorKind {
        self.kind
    }

    /// True for a deliberate refusal (which no failure policy skips).
    pub fn is_refusal(&self) -> bool {
        self.kind == HookErrorKind::Refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl Adapter for Nothing {}

    #[tokio::test]
    async fn defaults_pass_through() {
        let request = ClientRequest::new("POST", "/v1.41/containers/create", Some("{}".into()));
        assert_eq!(Nothing.pre_hook(request.clone()).await.unwrap(), request);
        let response = ServerResponse {
            content_type: "application/json".into(),
            body: Some(r#"{"Id":"abc"}"#.into()),
            code: 201,
        };
        assert_eq!(
            Nothing.post_hook(&request, response.clone()).await.unwrap(),
            response
        );
    }

    #[test]
    fn errors_carry_status_message_and_kind() {
        let refused = HookError::forbidden("image not allowed");
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert_eq!(refused.to_string(), "image not allowed");
        assert!(refused.is_refusal());
        assert_eq!(HookError::failed("down").status(), StatusCode::BAD_GATEWAY);
        assert_eq!(HookError::timed_out("slow").kind(), HookErrorKind::TimedOut);
        assert_eq!(
            HookError::timed_out("slow").status(),
            StatusCode::GATEWAY_TIMEOUT
        );
    }
}
