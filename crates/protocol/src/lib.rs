//! # PowerstripProtocolVersion 1
//!
//! The wire contract between the proxy and its adapters, as the original Powerstrip
//! (ClusterHQ, 2015) defined it, so that adapters written for it in any language work
//! unchanged. This crate holds the types and their JSON encoding and nothing else: it knows
//! no HTTP, no sockets and no runtime.
//!
//! ## Layout
//! - [`ClientRequest`] and [`ServerResponse`]: the two documents adapters read and rewrite.
//! - [`HookCall`]: what the proxy POSTs to an adapter (a pre-hook or a post-hook call).
//! - [`encode_call`] / [`decode_call`]: the call, for proxies and adapter servers.
//! - [`encode_pre_answer`] / [`decode_pre_answer`] and [`encode_post_answer`] /
//!   [`decode_post_answer`]: the adapter's answer (`ModifiedClientRequest` /
//!   `ModifiedServerResponse`).
//! - [`ProtocolError`]: why a document was refused, worded for the person who has to fix
//!   the adapter.
//!
//! Field names and casing on the wire are exact (`PowerstripProtocolVersion`, `Type`,
//! `ClientRequest`, `Method`, `Request`, `Body`, `ServerResponse`, `ContentType`, `Code`).
//! Every field is required; `Body` may be `null`. Unknown fields are ignored.
//!
//! ```
//! use powerstrip_protocol::{decode_pre_answer, encode_call, ClientRequest, HookCall};
//!
//! let request = ClientRequest::new("POST", "/v1.41/containers/create?name=web", Some(r#"{"Image":"busybox"}"#.into()));
//! let call = encode_call(&HookCall::PreHook { client_request: request.clone() });
//! assert!(String::from_utf8_lossy(&call).contains(r#""Type":"pre-hook""#));
//!
//! // A pass-through adapter answers with the request it was given.
//! let answer = br#"{"PowerstripProtocolVersion": 1, "ModifiedClientRequest":
//!     {"Method": "POST", "Request": "/v1.41/containers/create?name=web", "Body": "{\"Image\":\"busybox\"}"}}"#;
//! assert_eq!(decode_pre_answer(answer).unwrap(), request);
//! ```
#![forbid(unsafe_code)]

use serde::{Deserialize, Deserializer, Serialize};

/// The protocol version this crate speaks; every call and answer carries it.
pub const PROTOCOL_VERSION: u64 = 1;

/// The `Type` of a hook call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HookType {
    /// Before the request reaches Docker; the adapter may rewrite or refuse the request.
    #[serde(rename = "pre-hook")]
    PreHook,
    /// After Docker answered; the adapter may rewrite the response.
    #[serde(rename = "post-hook")]
    PostHook,
    /// After a request the adapter pre-hooked did not take effect (a later pre-hook
    /// refused it, or Docker failed): the adapter may release what it allocated. An
    /// extension of the original protocol, sent only to adapters that opted in.
    #[serde(rename = "unwind")]
    Unwind,
    /// A Docker event the adapter subscribed to. An extension of the original protocol,
    /// sent only to adapters that subscribed.
    #[serde(rename = "event")]
    Event,
}

impl HookType {
    /// The name on the wire (`pre-hook`, `post-hook`).
    pub fn as_str(self) -> &'static str {
        match self {
            HookType::PreHook => "pre-hook",
            HookType::PostHook => "post-hook",
            HookType::Unwind => "unwind",
            HookType::Event => "event",
        }
    }
}

impl std::fmt::Display for HookType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Docker API request as adapters see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    /// The HTTP method, e.g. `POST`.
    #[serde(rename = "Method")]
    pub method: String,
    /// The request target: the path *with* its query string, e.g.
    /// `/v1.41/containers/create?name=web`.
    #[serde(rename = "Request")]
    pub request: String,
    /// The request body as text (Docker bodies are JSON), or `None` when there is none or
    /// when it was withheld (see [`ClientRequest::withheld`]).
    #[serde(rename = "Body", deserialize_with = "required_nullable")]
    pub body: Option<String>,
    /// Present when the request has a body that is not JSON (a build context, an archive):
    /// the proxy streams it to Docker unchanged and never shows it to hooks, so `Body` is
    /// `null`. A hook may refuse such a request or rewrite its query string, but may not
    /// return a body for it. An extension of the original protocol (`BodyWithheld` on the
    /// wire, absent otherwise), which adapters written for the original ignore.
    #[serde(
        rename = "BodyWithheld",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub withheld: Option<WithheldBody>,
}

/// What hooks are told about a request body the proxy streams to Docker without showing
/// it to them (`BodyWithheld`): enough to decide on the request without reading it.
///
/// ```
/// use powerstrip_protocol::{ClientRequest, WithheldBody};
///
/// let upload = ClientRequest::new("PUT", "/v1.41/containers/web/archive?path=/tmp", None)
///     .with_withheld_body(WithheldBody {
///         content_type: "application/x-tar".into(),
///         content_length: Some(10240),
///     });
/// let json = serde_json::to_value(&upload).unwrap();
/// assert_eq!(json["Body"], serde_json::Value::Null);
/// assert_eq!(json["BodyWithheld"]["ContentType"], "application/x-tar");
/// assert_eq!(json["BodyWithheld"]["ContentLength"], 10240);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WithheldBody {
    /// The body's `Content-Type` as the client sent it, or the empty string when it sent
    /// none.
    #[serde(rename = "ContentType", default)]
    pub content_type: String,
    /// The body's length in bytes when the client declared it (`Content-Length`), `None`
    /// when it streams with no declared length (chunked).
    #[serde(rename = "ContentLength", default)]
    pub content_length: Option<u64>,
}

impl ClientRequest {
    /// A request from its three parts.
    pub fn new(
        method: impl Into<String>,
        request: impl Into<String>,
        body: Option<String>,
    ) -> Self {
        ClientRequest {
            method: method.into(),
            request: request.into(),
            body,
            withheld: None,
        }
    }

    /// The same request, marked as having a body that streams to Docker unseen.
    pub fn with_withheld_body(mut self, withheld: WithheldBody) -> Self {
        self.withheld = Some(withheld);
        self
    }

    /// The path part of [`ClientRequest::request`], without the query string.
    pub fn path(&self) -> &str {
        self.request
            .split_once('?')
            .map_or(self.request.as_str(), |(path, _)| path)
    }

    /// The query string of [`ClientRequest::request`] (without the `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.request.split_once('?').map(|(_, query)| query)
    }
}

/// Docker's answer as adapters see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerResponse {
    /// The response's `Content-Type`, or the empty string when Docker sent none.
    #[serde(rename = "ContentType")]
    pub content_type: String,
    /// The response body as text, or `None` when there is none.
    #[serde(rename = "Body", deserialize_with = "required_nullable")]
    pub body: Option<String>,
    /// The HTTP status code.
    #[serde(rename = "Code")]
    pub code: u16,
}

/// One call from the proxy to an adapter.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HookCall {
    /// A pre-hook call: the adapter answers with a `ModifiedClientRequest`.
    PreHook {
        /// The request as the previous pre-hook left it (or as the client sent it).
        client_request: ClientRequest,
    },
    /// A post-hook call: the adapter answers with a `ModifiedServerResponse`.
    PostHook {
        /// The request as Docker received it, after every pre-hook.
        client_request: ClientRequest,
        /// The response as the previous post-hook left it (or as Docker sent it).
        server_response: ServerResponse,
    },
    /// An unwind call: the request did not take effect. The answer's body is ignored.
    Unwind {
        /// The request as the chain left it when it stopped (the one Docker received, when
        /// Docker failed).
        client_request: ClientRequest,
        /// Why it did not take effect, for the adapter's log.
        reason: String,
    },
    /// An event call: one Docker event. The answer's body is ignored.
    Event {
        /// The event as Docker's `/events` stream reported it.
        event: DockerEvent,
    },
}

impl HookCall {
    /// The call's `Type`.
    pub fn hook_type(&self) -> HookType {
        match self {
            HookCall::PreHook { .. } => HookType::PreHook,
            HookCall::PostHook { .. } => HookType::PostHook,
            HookCall::Unwind { .. } => HookType::Unwind,
            HookCall::Event { .. } => HookType::Event,
        }
    }

    /// The request carried by the call (event calls carry none).
    pub fn client_request(&self) -> Option<&ClientRequest> {
        match self {
            HookCall::PreHook { client_request }
            | HookCall::PostHook { client_request, .. }
            | HookCall::Unwind { client_request, .. } => Some(client_request),
            HookCall::Event { .. } => None,
        }
    }
}

/// A Docker event (`GET /events`), kept whole, with accessors for the fields adapters use.
///
/// ```
/// use powerstrip_protocol::DockerEvent;
///
/// let event: DockerEvent = serde_json::from_str(r#"{"Type":"container","Action":"die",
///     "Actor":{"ID":"abc","Attributes":{"exitCode":"0","name":"web"}},"time":1,"timeNano":1000000001}"#).unwrap();
/// assert_eq!((event.kind(), event.action(), event.actor_id()), ("container", "die", "abc"));
/// assert_eq!(event.attribute("name"), Some("web"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DockerEvent(pub serde_json::Map<String, serde_json::Value>);

impl DockerEvent {
    fn text(&self, key: &str) -> &str {
        self.0.get(key).and_then(|v| v.as_str()).unwrap_or_default()
    }

    /// `Type`: `container`, `network`, `image`, ...
    pub fn kind(&self) -> &str {
        self.text("Type")
    }

    /// `Action`: `create`, `start`, `die`, `destroy`, ...
    pub fn action(&self) -> &str {
        self.text("Action")
    }

    /// `Actor.ID`: the container (network, image...) the event is about.
    pub fn actor_id(&self) -> &str {
        self.0
            .get("Actor")
            .and_then(|a| a.get("ID"))
            .and_then(|v| v.as_str())
            .unwrap_or_default()
    }

    /// One of `Actor.Attributes` (`name`, `image`, `exitCode`, labels...).
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.0.get("Actor")?.get("Attributes")?.get(key)?.as_str()
    }

    /// `timeNano`: when it happened, in nanoseconds since the epoch (0 if absent).
    pub fn time_nano(&self) -> i64 {
        self.0
            .get("timeNano")
            .and_then(|v| v.as_i64())
            .unwrap_or_default()
    }
}

/// Why a call or an answer was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The document is not JSON, or a field has the wrong type.
    #[error("not a valid PowerstripProtocolVersion 1 document: {0}")]
    Json(#[from] serde_json::Error),
    /// `PowerstripProtocolVersion` is absent.
    #[error("missing field PowerstripProtocolVersion")]
    MissingVersion,
    /// `PowerstripProtocolVersion` is not 1.
    #[error("unsupported PowerstripProtocolVersion {found} (this side speaks {PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The version the document declared.
        found: u64,
    },
    /// A required field is absent.
    #[error("missing field {0}")]
    MissingField(&'static str),
}

/// A field that must be present but may be `null`.
fn required_nullable<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Option::<String>::deserialize(d)
}

#[derive(Serialize)]
struct CallOut<'a> {
    #[serde(rename = "PowerstripProtocolVersion")]
    version: u64,
    #[serde(rename = "Type")]
    hook_type: HookType,
    #[serde(rename = "ClientRequest", skip_serializing_if = "Option::is_none")]
    client_request: Option<&'a ClientRequest>,
    #[serde(rename = "ServerResponse", skip_serializing_if = "Option::is_none")]
    server_response: Option<&'a ServerResponse>,
    #[serde(rename = "UnwindReason", skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
    #[serde(rename = "Event", skip_serializing_if = "Option::is_none")]
    event: Option<&'a DockerEvent>,
}

#[derive(Deserialize)]
struct CallIn {
    #[serde(rename = "PowerstripProtocolVersion")]
    version: Option<u64>,
    #[serde(rename = "Type")]
    hook_type: Option<HookType>,
    #[serde(rename = "ClientRequest")]
    client_request: Option<ClientRequest>,
    #[serde(rename = "ServerResponse")]
    server_response: Option<ServerResponse>,
    #[serde(rename = "UnwindReason")]
    reason: Option<String>,
    #[serde(rename = "Event")]
    event: Option<DockerEvent>,
}

#[derive(Serialize)]
struct PreAnswerOut<'a> {
    #[serde(rename = "PowerstripProtocolVersion")]
    version: u64,
    #[serde(rename = "ModifiedClientRequest")]
    request: &'a ClientRequest,
}

#[derive(Deserialize)]
struct PreAnswerIn {
    #[serde(rename = "PowerstripProtocolVersion")]
    version: Option<u64>,
    #[serde(rename = "ModifiedClientRequest")]
    request: Option<ClientRequest>,
}

#[derive(Serialize)]
struct PostAnswerOut<'a> {
    #[serde(rename = "PowerstripProtocolVersion")]
    version: u64,
    #[serde(rename = "ModifiedServerResponse")]
    response: &'a ServerResponse,
}

#[derive(Deserialize)]
struct PostAnswerIn {
    #[serde(rename = "PowerstripProtocolVersion")]
    version: Option<u64>,
    #[serde(rename = "ModifiedServerResponse")]
    response: Option<ServerResponse>,
}

fn check_version(version: Option<u64>) -> Result<(), ProtocolError> {
    match version {
        None => Err(ProtocolError::MissingVersion),
        Some(PROTOCOL_VERSION) => Ok(()),
        Some(found) => Err(ProtocolError::UnsupportedVersion { found }),
    }
}

fn to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these types cannot fail: every field is a string, a number, an
    // enum with unit variants or an option of those.
    serde_json::to_vec(value).unwrap_or_default()
}

/// Encodes a call as the proxy sends it.
pub fn encode_call(call: &HookCall) -> Vec<u8> {
    let mut out = CallOut {
        version: PROTOCOL_VERSION,
        hook_type: call.hook_type(),
        client_request: call.client_request(),
        server_response: None,
        reason: None,
        event: None,
    };
    match call {
        HookCall::PreHook { .. } => {}
        HookCall::PostHook {
            server_response, ..
        } => out.server_response = Some(server_response),
        HookCall::Unwind { reason, .. } => out.reason = Some(reason),
        HookCall::Event { event } => out.event = Some(event),
    }
    to_vec(&out)
}

/// Decodes a call, checking the version and that every field the `Type` needs is present.
pub fn decode_call(bytes: &[u8]) -> Result<HookCall, ProtocolError> {
    let call: CallIn = serde_json::from_slice(bytes)?;
    check_version(call.version)?;
    let hook_type = call.hook_type.ok_or(ProtocolError::MissingField("Type"))?;
    if hook_type == HookType::Event {
        let event = call.event.ok_or(ProtocolError::MissingField("Event"))?;
        return Ok(HookCall::Event { event });
    }
    let client_request = call
        .client_request
        .ok_or(ProtocolError::MissingField("ClientRequest"))?;
    match hook_type {
        HookType::PreHook => Ok(HookCall::PreHook { client_request }),
        HookType::PostHook => Ok(HookCall::PostHook {
            client_request,
            server_response: call
                .server_response
                .ok_or(ProtocolError::MissingField("ServerResponse"))?,
        }),
        HookType::Unwind | HookType::Event => Ok(HookCall::Unwind {
            client_request,
            reason: call.reason.unwrap_or_default(),
        }),
    }
}

/// Encodes a pre-hook answer (`ModifiedClientRequest`).
pub fn encode_pre_answer(request: &ClientRequest) -> Vec<u8> {
    to_vec(&PreAnswerOut {
        version: PROTOCOL_VERSION,
        request,
    })
}

/// Decodes a pre-hook answer, returning its `ModifiedClientRequest`.
pub fn decode_pre_answer(bytes: &[u8]) -> Result<ClientRequest, ProtocolError> {
    let answer: PreAnswerIn = serde_json::from_slice(bytes)?;
    check_version(answer.version)?;
    answer
        .request
        .ok_or(ProtocolError::MissingField("ModifiedClientRequest"))
}

/// Encodes a post-hook answer (`ModifiedServerResponse`).
pub fn encode_post_answer(response: &ServerResponse) -> Vec<u8> {
    to_vec(&PostAnswerOut {
        version: PROTOCOL_VERSION,
        response,
    })
}

/// Decodes a post-hook answer, returning its `ModifiedServerResponse`.
pub fn decode_post_answer(bytes: &[u8]) -> Result<ServerResponse, ProtocolError> {
    let answer: PostAnswerIn = serde_json::from_slice(bytes)?;
    check_version(answer.version)?;
    answer
        .response
        .ok_or(ProtocolError::MissingField("ModifiedServerResponse"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create() -> ClientRequest {
        ClientRequest::new(
            "POST",
            "/v1.16/containers/create?name=web",
            Some(r#"{"Image":"busybox"}"#.into()),
        )
    }

    #[test]
    fn pre_hook_call_matches_the_documented_shape() {
        let bytes = encode_call(&HookCall::PreHook {
            client_request: create(),
        });
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            value,
            serde_json::json!({
                "PowerstripProtocolVersion": 1,
                "Type": "pre-hook",
                "ClientRequest": {
                    "Method": "POST",
                    "Request": "/v1.16/containers/create?name=web",
                    "Body": "{\"Image\":\"busybox\"}"
                }
            })
        );
    }

    #[test]
    fn post_hook_call_round_trips_with_null_bodies() {
        let call = HookCall::PostHook {
            client_request: ClientRequest::new("POST", "/v1.41/containers/abc/start", None),
            server_response: ServerResponse {
                content_type: String::new(),
                body: None,
                code: 204,
            },
        };
        let bytes = encode_call(&call);
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["ServerResponse"]["Body"], serde_json::Value::Null);
        assert_eq!(value["ClientRequest"]["Body"], serde_json::Value::Null);
        assert_eq!(decode_call(&bytes).unwrap(), call);
    }

    #[test]
    fn answers_round_trip() {
        let request = create();
        assert_eq!(
            decode_pre_answer(&encode_pre_answer(&request)).unwrap(),
            request
        );
        let response = ServerResponse {
            content_type: "application/json".into(),
            body: Some(r#"{"Id":"abc"}"#.into()),
            code: 201,
        };
        assert_eq!(
            decode_post_answer(&encode_post_answer(&response)).unwrap(),
            response
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let answer = br#"{"PowerstripProtocolVersion":1,"Extra":true,
            "ModifiedClientRequest":{"Method":"GET","Request":"/_ping","Body":null,"More":1}}"#;
        assert_eq!(decode_pre_answer(answer).unwrap().request, "/_ping");
    }

    #[test]
    fn wrong_or_missing_version_is_refused() {
        let wrong = br#"{"PowerstripProtocolVersion":2,"ModifiedClientRequest":{"Method":"GET","Request":"/","Body":null}}"#;
        let err = decode_pre_answer(wrong).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::UnsupportedVersion { found: 2 }
        ));
        assert_eq!(
            err.to_string(),
            "unsupported PowerstripProtocolVersion 2 (this side speaks 1)"
        );
        let missing = br#"{"ModifiedClientRequest":{"Method":"GET","Request":"/","Body":null}}"#;
        assert!(matches!(
            decode_pre_answer(missing).unwrap_err(),
            ProtocolError::MissingVersion
        ));
    }

    #[test]
    fn missing_fields_are_named() {
        let err = decode_post_answer(br#"{"PowerstripProtocolVersion":1}"#).unwrap_err();
        assert_eq!(err.to_string(), "missing field ModifiedServerResponse");
        // `Body` must be present even though it may be null: an adapter that forgets it
        // would otherwise silently drop Docker's body.
        let err = decode_pre_answer(
            br#"{"PowerstripProtocolVersion":1,"ModifiedClientRequest":{"Method":"GET","Request":"/"}}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("missing field `Body`"), "{err}");
        let err = decode_call(br#"{"PowerstripProtocolVersion":1,"Type":"post-hook","ClientRequest":{"Method":"GET","Request":"/","Body":null}}"#).unwrap_err();
        assert_eq!(err.to_string(), "missing field ServerResponse");
    }

    #[test]
    fn non_json_and_wrong_types_are_refused() {
        assert!(matches!(
            decode_pre_answer(b"<html>oops</html>").unwrap_err(),
            ProtocolError::Json(_)
        ));
        assert!(matches!(
            decode_pre_answer(b"").unwrap_err(),
            ProtocolError::Json(_)
        ));
        // A body must be a string (JSON-encoded), not an object.
        let err = decode_pre_answer(
            br#"{"PowerstripProtocolVersion":1,"ModifiedClientRequest":{"Method":"POST","Request":"/","Body":{"Image":"x"}}}"#,
        )
        .unwrap_err();
        assert!(matches!(err, ProtocolError::Json(_)), "{err}");
    }

    #[test]
    fn unwind_and_event_calls_round_trip() {
        let unwind = HookCall::Unwind {
            client_request: create(),
            reason: "adapter \"policy\" refused the request".into(),
        };
        let bytes = encode_call(&unwind);
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["Type"], "unwind");
        assert_eq!(
            value["UnwindReason"],
            "adapter \"policy\" refused the request"
        );
        assert_eq!(decode_call(&bytes).unwrap(), unwind);

        let event: DockerEvent = serde_json::from_value(serde_json::json!({
            "Type": "container", "Action": "die", "Actor": {"ID": "abc", "Attributes": {"exitCode": "3"}},
            "time": 1700000000, "timeNano": 1700000000123456789_i64, "scope": "local"
        }))
        .unwrap();
        let call = HookCall::Event {
            event: event.clone(),
        };
        let bytes = encode_call(&call);
        let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value["Type"], "event");
        assert!(value.get("ClientRequest").is_none());
        assert_eq!(value["Event"]["Actor"]["Attributes"]["exitCode"], "3");
        assert_eq!(decode_call(&bytes).unwrap(), call);
        assert_eq!(event.time_nano(), 1700000000123456789);
        let err = decode_call(br#"{"PowerstripProtocolVersion":1,"Type":"event"}"#).unwrap_err();
        assert_eq!(err.to_string(), "missing field Event");
    }

    #[test]
    fn request_splits_into_path_and_query() {
        let request = create();
        assert_eq!(request.path(), "/v1.16/containers/create");
        assert_eq!(request.query(), Some("name=web"));
        let plain = ClientRequest::new("GET", "/_ping", None);
        assert_eq!(plain.path(), "/_ping");
        assert_eq!(plain.query(), None);
    }
}
