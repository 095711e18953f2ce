//! Everything that can go wrong with one request, and the one place that turns it into
//! the Docker-shaped answer (`{"message": "..."}`) the client receives.

use std::error::Error as StdError;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};
use powerstrip_adapter::{HookError, HookErrorKind};
use powerstrip_protocol::HookType;

use crate::body::{ProxyBody, full};

/// Why the proxy answered a request itself instead of relaying Docker's answer. Each
/// variant records which side failed: the client, an adapter (by name), or Docker.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The client's JSON body is larger than the limit for bodies handed to hooks.
    #[error("request body exceeds the {limit}-byte limit for hooked requests")]
    RequestTooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// The client's body could not be read, or is not what its `Content-Type` says.
    #[error("bad request body: {0}")]
    BadRequestBody(String),
    /// The request's path is one Docker would route differently from how it reads: hooks
    /// could not be trusted to see it, so it is refused.
    #[error("refused the request path {path:?}: {reason}")]
    BadPath {
        /// The path as the client sent it (shortened if long).
        path: String,
        /// What is wrong with it.
        reason: crate::target::PathError,
    },
    /// An adapter refused the call, failed, or timed out.
    #[error("adapter {adapter:?} {hook}: {error}")]
    Adapter {
        /// The adapter's name in the configuration.
        adapter: String,
        /// Which hook was running.
        hook: HookType,
        /// What the adapter (or the call to it) produced.
        error: HookError,
    },
    /// Docker could not be reached (or the connection broke before an answer).
    #[error("cannot reach Docker at {address}: {reason}")]
    DockerUnreachable {
        /// Docker's address as configured.
        address: String,
        /// The underlying cause, for the client and the log.
        reason: String,
    },
    /// Docker's answer could not be read while collecting it for post-hooks.
    #[error("error reading Docker's response: {0}")]
    DockerBody(String),
    /// Docker's answer is larger than the limit for bodies handed to post-hooks.
    #[error("Docker's response exceeds the {limit}-byte limit for post-hooks")]
    ResponseTooLarge {
        /// The configured limit in bytes.
        limit: usize,
    },
    /// Docker's answer cannot be handed to post-hooks as text.
    #[error("Docker's response cannot be handed to post-hooks: {0}")]
    ResponseNotText(String),
}

impl ProxyError {
    /// The status the client receives.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::RequestTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BadRequestBody(_) | ProxyError::BadPath { .. } => StatusCode::BAD_REQUEST,
            ProxyError::Adapter { error, .. } => error.status(),
            ProxyError::DockerUnreachable { .. }
            | ProxyError::DockerBody(_)
            | ProxyError::ResponseTooLarge { .. }
            | ProxyError::ResponseNotText(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The message the client receives. An adapter's refusal reaches the docker user as
    /// the adapter wrote it; every other failure names what failed and where.
    pub fn client_message(&self) -> String {
        match self {
            ProxyError::Adapter { error, .. } if error.kind() == HookErrorKind::Refused => {
                error.message().to_owned()
            }
            ProxyError::Adapter {
                adapter,
                hook,
                error,
            } => format!(
                "powerstrip: adapter {adapter:?} failed in {hook}: {}",
                error.message()
            ),
            ProxyError::DockerUnreachable { address, .. } => {
                format!("powerstrip: cannot reach Docker at {address}")
            }
            ProxyError::DockerBody(_) => "powerstrip: error reading Docker's response".to_owned(),
            other => format!("powerstrip: {other}"),
        }
    }

    /// A short account for logs and unwind reasons: `refused: <message>`,
    /// `failed in pre-hook: <message>`, or the error itself.
    pub fn summary(&self) -> String {
        match self {
            ProxyError::Adapter { error, .. } if error.is_refusal() => {
                format!("refused the request: {}", error.message())
            }
            ProxyError::Adapter { hook, error, .. } => {
                format!("failed in {hook}: {}", error.message())
            }
            other => other.to_string(),
        }
    }

    /// The Docker-shaped response for this error.
    pub fn into_response(self) -> Response<ProxyBody> {
        error_response(self.status(), &self.client_message())
    }
}

/// A Docker-style error: `{"message": "..."}` with this status.
pub(crate) fn error_response(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The innermost cause of an error, which is what a person can act on
/// ("Connection refused (os error 111)" rather than "client error (Connect)").
pub(crate) fn root_cause(err: &(dyn StdError + 'static)) -> String {
    let mut cause = err;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// A duration as an operator wrote it (`500ms`, `2s`).
pub(crate) fn humanize(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_pass_through_failures_name_the_adapter() {
        let refused = ProxyError::Adapter {
            adapter: "policy".into(),
            hook: HookType::PreHook,
            error: HookError::forbidden("image busybox:evil is not allowed"),
        };
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            refused.client_message(),
            "image busybox:evil is not allowed"
        );

        let timeout = ProxyError::Adapter {
            adapter: "weave".into(),
            hook: HookType::PostHook,
            error: HookError::timed_out(format!(
                "no answer within {}",
                humanize(Duration::from_millis(500))
            )),
        };
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            timeout.client_message(),
            "powerstrip: adapter \"weave\" failed in post-hook: no answer within 500ms"
        );
    }

    #[test]
    fn docker_errors_are_502_with_the_address() {
        let err = ProxyError::DockerUnreachable {
            address: "unix:///var/run/docker.sock".into(),
            reason: "Connection refused (os error 111)".into(),
        };
        assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
        // The address is the operator's configuration; the OS error goes to the log only.
        assert_eq!(
            err.client_message(),
            "powerstrip: cannot reach Docker at unix:///var/run/docker.sock"
        );
        assert!(
            err.to_string()
                .ends_with("Connection refused (os error 111)")
        );
    }
}
