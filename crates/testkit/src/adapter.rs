//! [`FakeAdapter`]: a scriptable HTTP adapter speaking PowerstripProtocolVersion 1 that
//! records every call it gets.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use powerstrip_protocol::{ClientRequest, HookCall, encode_call};
//! use powerstrip_testkit::adapter::{AdapterReply, FakeAdapter};
//! use powerstrip_testkit::client::TestClient;
//!
//! // Pass pre-hooks through, refuse post-hooks with an HTML page.
//! let adapter = FakeAdapter::start(|call| match call {
//!     HookCall::PreHook { .. } => AdapterReply::pass(call),
//!     _ => AdapterReply::raw(500, "text/html", "<html>oops</html>"),
//! })
//! .await;
//! // A proxy configured with `adapter.url()` would POST this:
//! let call = HookCall::PreHook { client_request: ClientRequest::new("GET", "/_ping", None) };
//! let request = http::Request::post("/hook").body(encode_call(&call).into()).unwrap();
//! let answer = TestClient::new(&format!("tcp://{}", adapter.addr())).send(request).await;
//! assert_eq!(answer.status, 200);
//! assert_eq!(adapter.calls(), vec![call]);
//! # }
//! ```
//!
//! The server is a small hand-rolled HTTP/1.1 reader on a `TcpStream` (hyper cannot close
//! a connection half-way through an answer, which [`AdapterReply::CloseMidAnswer`] needs):
//! it reads the head up to `\r\n\r\n`, then a `Content-Length` or chunked body, answers, and
//! serves the next request on the same connection unless asked to close.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use powerstrip_protocol::{
    ClientRequest, HookCall, ServerResponse, decode_call, encode_post_answer, encode_pre_answer,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::docker::RecordedRequest;
use crate::net::{BoxedIo, Listener, ServerTask, spawn_server};

/// What a [`FakeAdapter`] answers to one call.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum AdapterReply {
    /// `200` with a pre-hook answer carrying this `ModifiedClientRequest`.
    Pre(ClientRequest),
    /// `200` with a post-hook answer carrying this `ModifiedServerResponse`.
    Post(ServerResponse),
    /// This status with arbitrary JSON (wrong version, missing field, Docker-style error).
    Json(u16, serde_json::Value),
    /// Anything at all: an HTML error page, an empty `200`. An empty `content_type` sends
    /// no `Content-Type` header.
    Raw {
        /// The status code, written as is.
        status: u16,
        /// The `Content-Type`, or empty for none.
        content_type: String,
        /// The body, with a `Content-Length`.
        body: Bytes,
    },
    /// Never answers; the connection stays open until the adapter is dropped.
    Hang,
    /// Writes the status line and part of the headers, then closes the connection.
    CloseMidAnswer,
    /// Waits, then answers as the inner reply says.
    Delay(Duration, Box<AdapterReply>),
}

impl AdapterReply {
    /// The null answer: the call's own request (pre-hook) or response (post-hook),
    /// unchanged; unwind and event calls are acknowledged.
    pub fn pass(call: &HookCall) -> AdapterReply {
        match call {
            HookCall::PreHook { client_request } => AdapterReply::Pre(client_request.clone()),
            HookCall::PostHook {
                server_response, ..
            } => AdapterReply::Post(server_response.clone()),
            // Unwind and event calls carry nothing back: acknowledge them.
            HookCall::Unwind { .. } | HookCall::Event { .. } => {
                AdapterReply::Json(200, serde_json::json!({"PowerstripProtocolVersion": 1}))
            }
            _ => AdapterReply::Json(
                500,
                serde_json::json!({"message": "fake adapter: unknown hook type"}),
            ),
        }
    }

    /// [`AdapterReply::Raw`] from borrowed parts.
    pub fn raw(status: u16, content_type: &str, body: impl Into<Bytes>) -> AdapterReply {
        AdapterReply::Raw {
            status,
            content_type: content_type.into(),
            body: body.into(),
        }
    }

    /// [`AdapterReply::Delay`] without the `Box::new`.
    pub fn delay(delay: Duration, then: AdapterReply) -> AdapterReply {
        AdapterReply::Delay(delay, Box::new(then))
    }
}

/// The adapter's behaviour: one reply per decoded call.
type Behaviour = Box<dyn Fn(&HookCall) -> AdapterReply + Send + Sync>;

/// What the connection tasks share with the handle.
struct AdapterState {
    /// How to answer.
    behaviour: Behaviour,
    /// Every HTTP request received, decodable or not, in order.
    requests: Mutex<Vec<RecordedRequest>>,
    /// The decoded calls, in order.
    calls: Mutex<Vec<HookCall>>,
    /// The raw text of bodies that were not valid calls, in order.
    bad_calls: Mutex<Vec<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking behaviour closure must not hide the record from the test.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running fake adapter on `127.0.0.1:0`; dropping it stops it.
pub struct FakeAdapter {
    /// Where it listens.
    addr: SocketAddr,
    /// The behaviour and the record of calls.
    state: Arc<AdapterState>,
    /// Connections accepted so far (to check the proxy's pooling).
    connections: Arc<AtomicUsize>,
    /// The accept task; dropping it stops the server and its connections.
    _server: ServerTask,
}

impl std::fmt::Debug for FakeAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeAdapter")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

impl FakeAdapter {
    /// Starts an adapter answering each call with `behaviour(call)`. Bodies that are not a
    /// valid call are recorded in [`bad_calls`](Self::bad_calls) and answered `400` with a
    /// Docker-style `{"message": "..."}` saying why.
    pub async fn start<F>(behaviour: F) -> FakeAdapter
    where
        F: Fn(&HookCall) -> AdapterReply + Send + Sync + 'static,
    {
        let listener = Listener::tcp().await;
        let addr = listener.tcp_addr().expect("a TCP listener");
        let state = Arc::new(AdapterState {
            behaviour: Box::new(behaviour),
            requests: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
            bad_calls: Mutex::new(Vec::new()),
        });
        let connections = Arc::new(AtomicUsize::new(0));
        let served = state.clone();
        let server = spawn_server(listener, connections.clone(), move |io| {
            serve_connection(io, served.clone())
        });
        FakeAdapter {
            addr,
            state,
            connections,
            _server: server,
        }
    }

    /// The null adapter: answers every call with exactly what it was given.
    pub async fn echo() -> FakeAdapter {
        FakeAdapter::start(AdapterReply::pass).await
    }

    /// Adds `n` to the integer at top-level `field` of the JSON object body (a missing
    /// field counts as 0): the `ClientRequest` body for pre-hooks, the `ServerResponse`
    /// body for post-hooks. `null` bodies pass unchanged; a body that is not a JSON object,
    /// or a field that is not an integer, is answered `400` with the reason.
    pub async fn add_to_field(field: &str, n: i64) -> FakeAdapter {
        let field = field.to_owned();
        FakeAdapter::start(move |call| {
            let result = match call {
                HookCall::PreHook { client_request } => {
                    add_to_body(client_request.body.as_deref(), &field, n).map(|body| {
                        AdapterReply::Pre(ClientRequest {
                            body,
                            ..client_request.clone()
                        })
                    })
                }
                HookCall::PostHook {
                    server_response, ..
                } => add_to_body(server_response.body.as_deref(), &field, n).map(|body| {
                    AdapterReply::Post(ServerResponse {
                        body,
                        ..server_response.clone()
                    })
                }),
                _ => return AdapterReply::pass(call),
            };
            result.unwrap_or_else(|reason| {
                AdapterReply::raw(400, "text/plain", format!("fake adapter: {reason}"))
            })
        })
        .await
    }

    /// Rewrites every pre-hook's request with `f`; post-hooks pass through.
    pub async fn rewrite_pre<F>(f: F) -> FakeAdapter
    where
        F: Fn(&ClientRequest) -> ClientRequest + Send + Sync + 'static,
    {
        FakeAdapter::start(move |call| match call {
            HookCall::PreHook { client_request } => AdapterReply::Pre(f(client_request)),
            other => AdapterReply::pass(other),
        })
        .await
    }

    /// Rewrites every post-hook's response with `f`; pre-hooks pass through.
    pub async fn rewrite_post<F>(f: F) -> FakeAdapter
    where
        F: Fn(&ServerResponse) -> ServerResponse + Send + Sync + 'static,
    {
        FakeAdapter::start(move |call| match call {
            HookCall::PostHook {
                server_response, ..
            } => AdapterReply::Post(f(server_response)),
            other => AdapterReply::pass(other),
        })
        .await
    }

    /// Refuses every call with `status` and `body` as is: `application/json` when the body
    /// is a JSON object or array, `text/plain` otherwise.
    pub async fn refuse(status: u16, body: &str) -> FakeAdapter {
        let looks_like_json = matches!(
            serde_json::from_str::<serde_json::Value>(body),
            Ok(serde_json::Value::Object(_) | serde_json::Value::Array(_))
        );
        let content_type = if looks_like_json {
            "application/json"
        } else {
            "text/plain"
        };
        let reply = AdapterReply::raw(status, content_type, body.to_owned());
        FakeAdapter::start(move |_| reply.clone()).await
    }

    /// The URL to configure the proxy with: `http://127.0.0.1:PORT/hook` (any path works).
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The decoded calls received so far, in order.
    pub fn calls(&self) -> Vec<HookCall> {
        lock(&self.state.calls).clone()
    }

    /// The raw text of every request body that was not a valid PowerstripProtocolVersion 1
    /// call, in order.
    pub fn bad_calls(&self) -> Vec<String> {
        lock(&self.state.bad_calls).clone()
    }

    /// How many HTTP requests it received, valid calls or not.
    pub fn call_count(&self) -> usize {
        lock(&self.state.requests).len()
    }

    /// Every HTTP request received (method, target, headers, body), in order: to check
    /// what the proxy sent besides the call itself, e.g. its `Content-Type`.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// `add_to_field` on one body.
fn add_to_body(body: Option<&str>, field: &str, n: i64) -> Result<Option<String>, String> {
    let Some(text) = body else {
        return Ok(None);
    };
    let mut value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("body is not JSON ({e}): {text:?}"))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| format!("body is not a JSON object: {text:?}"))?;
    let old = match object.get(field) {
        None => 0,
        Some(v) => v
            .as_i64()
            .ok_or_else(|| format!("field {field:?} is not an integer: {v}"))?,
    };
    object.insert(field.to_owned(), (old + n).into());
    Ok(Some(value.to_string()))
}

/// Serves sequential requests on one connection until the peer closes or asks to.
async fn serve_connection(io: BoxedIo, state: Arc<AdapterState>) {
    let mut conn = Conn {
        io,
        buf: Vec::new(),
    };
    loop {
        let request = match conn.read_request().await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(error) => {
                tracing::debug!(%error, "fake adapter: bad request");
                let _ = conn
                    .write_answer(400, "text/plain", error.to_string().as_bytes(), true)
                    .await;
                return;
            }
        };
        let keep_alive = request.keep_alive;
        lock(&state.requests).push(request.recorded.clone());
        let mut reply = match decode_call(&request.recorded.body) {
            Ok(call) => {
                lock(&state.calls).push(call.clone());
                (state.behaviour)(&call)
            }
            Err(error) => {
                lock(&state.bad_calls).push(request.recorded.text());
                // Docker-style, as the conformance suite expects of every adapter.
                AdapterReply::Json(
                    400,
                    serde_json::json!({"message": format!("fake adapter: {error}")}),
                )
            }
        };
        let written = loop {
            match reply {
                AdapterReply::Pre(request) => {
                    break conn
                        .write_answer(
                            200,
                            "application/json",
                            &encode_pre_answer(&request),
                            !keep_alive,
                        )
                        .await;
                }
                AdapterReply::Post(response) => {
                    break conn
                        .write_answer(
                            200,
                            "application/json",
                            &encode_post_answer(&response),
                            !keep_alive,
                        )
                        .await;
                }
                AdapterReply::Json(status, value) => {
                    break conn
                        .write_answer(
                            status,
                            "application/json",
                            value.to_string().as_bytes(),
                            !keep_alive,
                        )
                        .await;
                }
                AdapterReply::Raw {
                    status,
                    content_type,
                    body,
                } => {
                    break conn
                        .write_answer(status, &content_type, &body, !keep_alive)
                        .await;
                }
                AdapterReply::Hang => std::future::pending().await,
                AdapterReply::CloseMidAnswer => {
                    let _ = conn
                        .io
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: applic")
                        .await;
                    let _ = conn.io.shutdown().await;
                    return;
                }
                AdapterReply::Delay(delay, then) => {
                    tokio::time::sleep(delay).await;
                    reply = *then;
                }
            }
        };
        if written.is_err() || !keep_alive {
            let _ = conn.io.shutdown().await;
            return;
        }
    }
}

/// One request read off the wire.
struct RawRequest {
    /// The request as recorded.
    recorded: RecordedRequest,
    /// Whether the connection stays open after the answer.
    keep_alive: bool,
}

/// A connection and the bytes read from it but not consumed yet.
struct Conn {
    /// The socket.
    io: BoxedIo,
    /// Read ahead: the rest of a read that went past the current request.
    buf: Vec<u8>,
}

/// Heads larger than this are refused, so a runaway peer cannot eat memory.
const MAX_HEAD: usize = 64 * 1024;

fn invalid(message: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.into())
}

impl Conn {
    /// Reads more bytes into the buffer; `false` at end of stream.
    async fn fill(&mut self) -> std::io::Result<bool> {
        let mut chunk = [0u8; 8192];
        let n = self.io.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Takes the first `n` buffered bytes, reading more as needed.
    async fn take(&mut self, n: usize) -> std::io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Err(invalid("connection closed in the middle of a body"));
            }
        }
        let rest = self.buf.split_off(n);
        Ok(std::mem::replace(&mut self.buf, rest))
    }

    /// Takes one `\r\n`-terminated line (without the terminator).
    async fn line(&mut self) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let mut line = self.take(end + 2).await?;
                line.truncate(end);
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("line too long"));
            }
            if !self.fill().await? {
                return Err(invalid("connection closed in the middle of a line"));
            }
        }
    }

    /// Reads one request; `None` when the peer closed cleanly between requests.
    async fn read_request(&mut self) -> std::io::Result<Option<RawRequest>> {
        let head_end = loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(invalid("request head too large"));
            }
            if !self.fill().await? {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(invalid("connection closed in the middle of a request head"));
            }
        };
        let head = self.take(head_end + 4).await?;
        let head = std::str::from_utf8(&head[..head_end])
            .map_err(|_| invalid("request head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default();
        let mut parts = request_line.split(' ');
        let (Some(method), Some(target), Some(version), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid(format!("bad request line {request_line:?}")));
        };
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|_| invalid(format!("bad method {method:?}")))?;
        let mut headers = HeaderMap::new();
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| invalid(format!("bad header name {name:?}")))?;
            let value = HeaderValue::from_str(value.trim())
                .map_err(|_| invalid(format!("bad header value {value:?}")))?;
            headers.append(name, value);
        }
        let has_token = |name: &str, token: &str| {
            headers.get_all(name).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            })
        };
        let keep_alive = if version == "HTTP/1.0" {
            has_token("connection", "keep-alive")
        } else {
            !has_token("connection", "close")
        };
        if has_token("expect", "100-continue") {
            // curl asks before sending bodies over 1 KiB; say yes rather than stall it.
            self.io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
        }
        let body = if has_token("transfer-encoding", "chunked") {
            self.read_chunked().await?
        } else {
            let length = match headers.get("content-length") {
                None => 0,
                Some(v) => v
                    .to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| invalid(format!("bad Content-Length {v:?}")))?,
            };
            self.take(length).await?
        };
        Ok(Some(RawRequest {
            recorded: RecordedRequest {
                method,
                uri: target.to_owned(),
                headers,
                body: Bytes::from(body),
            },
            keep_alive,
        }))
    }

    /// Reads a `Transfer-Encoding: chunked` body (trailers are read and dropped).
    async fn read_chunked(&mut self) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.line().await?;
            let line = String::from_utf8_lossy(&line);
            let size = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16)
                .map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                while !self.line().await?.is_empty() {}
                return Ok(body);
            }
            body.extend_from_slice(&self.take(size).await?);
            if !self.line().await?.is_empty() {
                return Err(invalid("chunk not followed by CRLF"));
            }
        }
    }

    /// Writes a complete answer with a `Content-Length`.
    async fn write_answer(
        &mut self,
        status: u16,
        content_type: &str,
        body: &[u8],
        close: bool,
    ) -> std::io::Result<()> {
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Unknown");
        let mut out = format!("HTTP/1.1 {status} {reason}\r\n");
        if !content_type.is_empty() {
            out.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        if close {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(body);
        self.io.write_all(&bytes).await?;
        self.io.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::add_to_body;

    #[test]
    fn add_to_body_adds_keeps_other_fields_and_explains_refusals() {
        let out = add_to_body(Some(r#"{"n":1,"Image":"busybox"}"#), "n", 2)
            .unwrap()
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value, serde_json::json!({"n": 3, "Image": "busybox"}));
        assert_eq!(
            add_to_body(Some("{}"), "n", -4).unwrap().unwrap(),
            r#"{"n":-4}"#
        );
        assert_eq!(add_to_body(None, "n", 1).unwrap(), None);
        assert!(
            add_to_body(Some("[1]"), "n", 1)
                .unwrap_err()
                .contains("not a JSON object")
        );
        assert!(
            add_to_body(Some(r#"{"n":"x"}"#), "n", 1)
                .unwrap_err()
                .contains("not an integer")
        );
        assert!(
            add_to_body(Some("nope"), "n", 1)
                .unwrap_err()
                .contains("not JSON")
        );
    }
}
