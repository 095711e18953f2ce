//! [`FakeDocker`]: a scriptable Docker daemon that records what reached it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use powerstrip_testkit::docker::{FakeDocker, Responder};
//! use serde_json::json;
//!
//! let docker = FakeDocker::builder()
//!     .route("POST", "/*/containers/create", Responder::json(201, json!({"Id": "abc", "Warnings": []})))
//!     .route("POST", "/*/containers/*/attach", Responder::upgrade_echo())
//!     .start_unix()
//!     .await;
//! let created = docker.client().post_json("/v1.41/containers/create", &json!({"Image": "busybox"})).await;
//! assert_eq!(created.status, 201);
//! assert_eq!(docker.requests()[0].json()["Image"], "busybox");
//! # }
//! ```
//!
//! Routes match on the method (`"*"` for any) and the path without its query string; in a
//! path pattern `*` matches any run of characters, `/` included. The first matching route
//! answers; anything unmatched gets Docker's own `404 {"message":"page not found"}`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::body::ChannelBody;
use crate::client::TestClient;
use crate::net::{Address, BoxedIo, Listener, ServerTask, spawn_server};

/// One request as the fake daemon received it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// The method, to tell `POST /containers/x/start` from `DELETE /containers/x`.
    pub method: Method,
    /// The request target as received: path plus `?query`, so tests can check what the
    /// proxy forwarded (e.g. a query string an adapter rewrote).
    pub uri: String,
    /// Every header as received (e.g. to check a recomputed `Content-Length`).
    pub headers: HeaderMap,
    /// The whole body as received (after any pre-hooks, when behind the proxy).
    pub body: Bytes,
}

impl RecordedRequest {
    /// The path, without the query string.
    pub fn path(&self) -> &str {
        self.uri
            .split_once('?')
            .map_or(self.uri.as_str(), |(p, _)| p)
    }

    /// The query string (without `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.uri.split_once('?').map(|(_, q)| q)
    }

    /// A header's value as text, if present and printable.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics, quoting the body, if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {}: body is not JSON ({e}): {:?}",
                self.method,
                self.uri,
                self.text()
            )
        })
    }
}

/// A complete (non-streaming) answer, as returned by a [`Responder::with`] closure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FakeResponse {
    /// The HTTP status code (an invalid one is answered as 500 with an explanation).
    pub status: u16,
    /// The `Content-Type`; empty means no `Content-Type` header at all.
    pub content_type: String,
    /// The body, sent with a `Content-Length`.
    pub body: Bytes,
}

impl FakeResponse {
    /// A response from its three parts.
    pub fn new(status: u16, content_type: &str, body: impl Into<Bytes>) -> FakeResponse {
        FakeResponse {
            status,
            content_type: content_type.into(),
            body: body.into(),
        }
    }

    /// An `application/json` response.
    pub fn json(status: u16, value: &serde_json::Value) -> FakeResponse {
        FakeResponse::new(status, "application/json", value.to_string())
    }
}

/// How a route answers. Build one with the constructor functions.
pub struct Responder {
    /// What to do; private so new behaviours can be added without breaking callers.
    kind: Kind,
}

/// A custom responder's closure.
type Handler = Box<dyn Fn(&RecordedRequest) -> FakeResponse + Send + Sync>;

enum Kind {
    Fixed(FakeResponse),
    Echo,
    With(Handler),
    Chunked {
        content_type: String,
        /// Taken by the first request; later ones get a 500.
        rx: Mutex<Option<mpsc::Receiver<Bytes>>>,
    },
    UpgradeEcho,
    Hang,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match &self.kind {
            Kind::Fixed(r) => return f.debug_tuple("Responder::Fixed").field(r).finish(),
            Kind::Echo => "echo",
            Kind::With(_) => "with",
            Kind::Chunked { .. } => "chunked",
            Kind::UpgradeEcho => "upgrade_echo",
            Kind::Hang => "hang",
        };
        write!(f, "Responder::{name}")
    }
}

impl Responder {
    /// Answers `status` with `value` as `application/json` (with a `Content-Length`).
    pub fn json(status: u16, value: serde_json::Value) -> Responder {
        Responder::fixed(FakeResponse::json(valid(status), &value))
    }

    /// Answers `status` with `body` as is; an empty `content_type` sends no `Content-Type`
    /// (as Docker does for `204`).
    pub fn raw(status: u16, content_type: &str, body: impl Into<Bytes>) -> Responder {
        Responder::fixed(FakeResponse::new(valid(status), content_type, body))
    }

    /// Answers `200 application/json` with exactly the request body received, so a test can
    /// see what reached Docker.
    pub fn echo() -> Responder {
        Responder { kind: Kind::Echo }
    }

    /// Answers with whatever `f` makes of the request.
    pub fn with<F>(f: F) -> Responder
    where
        F: Fn(&RecordedRequest) -> FakeResponse + Send + Sync + 'static,
    {
        Responder {
            kind: Kind::With(Box::new(f)),
        }
    }

    /// Answers `200` with `content_type` at once, then streams each [`Bytes`] received on
    /// `rx` as its own chunk as it arrives; the response ends when the sender is dropped.
    ///
    /// Usable once: the first matching request takes the receiver, later ones get a 500.
    pub fn chunked(content_type: &str, rx: mpsc::Receiver<Bytes>) -> Responder {
        Responder {
            kind: Kind::Chunked {
                content_type: content_type.into(),
                rx: Mutex::new(Some(rx)),
            },
        }
    }

    /// Answers `101` with `Upgrade: tcp`, `Connection: Upgrade` and
    /// `Content-Type: application/vnd.docker.raw-stream`, as dockerd does for
    /// attach/exec, then echoes every byte back. When the client half-closes, it writes a
    /// last line `eof\n` and shuts down its own write side, so a test can prove the
    /// half-close went through. A request without an `Upgrade` header gets a 400.
    pub fn upgrade_echo() -> Responder {
        Responder {
            kind: Kind::UpgradeEcho,
        }
    }

    /// Never answers, holding the connection open until the fake daemon is dropped.
    pub fn hang() -> Responder {
        Responder { kind: Kind::Hang }
    }

    fn fixed(response: FakeResponse) -> Responder {
        Responder {
            kind: Kind::Fixed(response),
        }
    }
}

fn valid(status: u16) -> u16 {
    StatusCode::from_u16(status).unwrap_or_else(|_| panic!("{status} is not an HTTP status code"));
    status
}

/// One scripted route.
#[derive(Debug)]
struct Route {
    /// The method to match, or `*` for any.
    method: String,
    /// The path pattern (`*` matches any run of characters).
    pattern: String,
    /// How to answer.
    responder: Responder,
}

/// Collects routes for a [`FakeDocker`]; start it with [`start_unix`](Self::start_unix) or
/// [`start_tcp`](Self::start_tcp).
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until started"]
pub struct FakeDockerBuilder {
    /// Routes in the order given: the first match answers.
    routes: Vec<Route>,
}

impl FakeDockerBuilder {
    /// Adds a route: `method` (`"*"` for any) and a path `pattern` matched against the path
    /// without its query string, where `*` matches any run of characters (`/` included).
    pub fn route(mut self, method: &str, pattern: &str, responder: Responder) -> Self {
        self.routes.push(Route {
            method: method.into(),
            pattern: pattern.into(),
            responder,
        });
        self
    }

    /// Starts listening on `docker.sock` in a fresh temporary directory.
    pub async fn start_unix(self) -> FakeDocker {
        let dir = socket_dir();
        let path = dir.path().join("docker.sock");
        let listener = Listener::unix(&path);
        self.start(listener, Address::Unix(path), Some(dir))
    }

    /// Starts listening on a unix socket at `path` in a directory the caller owns,
    /// replacing a socket file a stopped daemon left there. Lets a test stop a daemon and
    /// bring another up at the same address.
    pub async fn start_unix_at(self, path: &Path) -> FakeDocker {
        let _ = std::fs::remove_file(path);
        let listener = Listener::unix(path);
        self.start(listener, Address::Unix(path.to_owned()), None)
    }

    /// Starts listening on `127.0.0.1:0`.
    pub async fn start_tcp(self) -> FakeDocker {
        let listener = Listener::tcp().await;
        let addr = listener.tcp_addr().expect("a TCP listener");
        self.start(
            listener,
            Address::Tcp {
                host: addr.ip().to_string(),
                port: addr.port(),
            },
            None,
        )
    }

    fn start(self, listener: Listener, address: Address, dir: Option<TempDir>) -> FakeDocker {
        let state = Arc::new(DockerState {
            routes: self.routes,
            requests: Mutex::new(Vec::new()),
        });
        let connections = Arc::new(AtomicUsize::new(0));
        let served = state.clone();
        let server = spawn_server(listener, connections.clone(), move |io| {
            serve_connection(io, served.clone())
        });
        FakeDocker {
            address,
            state,
            connections,
            _server: server,
            _dir: dir,
        }
    }
}

fn socket_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("fake-docker")
        .tempdir()
        .expect("creating a temporary directory for a test socket")
}

/// What the connection tasks share with the handle.
struct DockerState {
    /// The script.
    routes: Vec<Route>,
    /// Every request received, in order.
    requests: Mutex<Vec<RecordedRequest>>,
}

impl DockerState {
    fn requests(&self) -> MutexGuard<'_, Vec<RecordedRequest>> {
        // A panic in a `Responder::with` closure must not hide the requests from the test.
        self.requests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running fake Docker daemon; dropping it stops it and removes its socket.
pub struct FakeDocker {
    /// Where it listens.
    address: Address,
    /// The script and the record of requests.
    state: Arc<DockerState>,
    /// Connections accepted so far (lets tests check pooling and leaks).
    connections: Arc<AtomicUsize>,
    /// The accept task; dropping it stops the server and its connections.
    _server: ServerTask,
    /// The directory holding the unix socket, removed on drop.
    _dir: Option<TempDir>,
}

impl std::fmt::Debug for FakeDocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeDocker")
            .field("address", &self.address.to_string())
            .finish_non_exhaustive()
    }
}

impl FakeDocker {
    /// Starts scripting a fake daemon.
    pub fn builder() -> FakeDockerBuilder {
        FakeDockerBuilder::default()
    }

    /// A server for what hyper cannot produce: on a unix socket, for each connection it
    /// reads once (a little), writes `bytes` as they are (e.g. `b"NOT HTTP\r\n\r\n"`) and
    /// closes. Its [`requests`](Self::requests) stay empty.
    pub async fn garbage(bytes: impl Into<Bytes>) -> FakeDocker {
        let bytes: Bytes = bytes.into();
        let dir = socket_dir();
        let path = dir.path().join("docker.sock");
        let listener = Listener::unix(&path);
        let connections = Arc::new(AtomicUsize::new(0));
        let server = spawn_server(listener, connections.clone(), move |mut io| {
            let bytes = bytes.clone();
            async move {
                let mut buf = [0u8; 4096];
                let _ = io.read(&mut buf).await;
                let _ = io.write_all(&bytes).await;
                let _ = io.shutdown().await;
            }
        });
        FakeDocker {
            address: Address::Unix(path),
            state: Arc::new(DockerState {
                routes: Vec::new(),
                requests: Mutex::new(Vec::new()),
            }),
            connections,
            _server: server,
            _dir: Some(dir),
        }
    }

    /// Where it listens: `unix:///tmp/…/docker.sock` or `tcp://127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        self.address.to_string()
    }

    /// Where it listens, parsed.
    pub fn addr(&self) -> &Address {
        &self.address
    }

    /// The unix socket's path, when listening on one.
    pub fn socket_path(&self) -> Option<&Path> {
        match &self.address {
            Address::Unix(path) => Some(path),
            Address::Tcp { .. } => None,
        }
    }

    /// The TCP address, when listening on TCP.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match &self.address {
            Address::Unix(_) => None,
            Address::Tcp { host, port } => host.parse().ok().map(|ip| SocketAddr::new(ip, *port)),
        }
    }

    /// Every request received so far, in order of arrival (recorded once its body was read,
    /// before answering).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests().clone()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// A [`TestClient`] talking straight to this daemon (no proxy).
    pub fn client(&self) -> TestClient {
        TestClient::new(&self.address())
    }
}

type FakeBody = BoxBody<Bytes, Infallible>;

async fn serve_connection(io: BoxedIo, state: Arc<DockerState>) {
    // A `101` answer leaves its pending upgrade here; hyper hands the socket over when the
    // connection future completes, and the echo then runs in this same task (not a
    // detached one), so that dropping the server ends it too.
    let (upgrades_tx, mut upgrades_rx) = mpsc::unbounded_channel::<OnUpgrade>();
    let service = service_fn(move |req| {
        let state = state.clone();
        let upgrades = upgrades_tx.clone();
        async move { Ok::<_, Infallible>(answer(req, state, upgrades).await) }
    });
    let served = http1::Builder::new()
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades()
        .await;
    if let Err(error) = served {
        tracing::debug!(%error, "fake docker: connection ended with an error");
    }
    if let Ok(on_upgrade) = upgrades_rx.try_recv() {
        match on_upgrade.await {
            Ok(upgraded) => echo_until_eof(TokioIo::new(upgraded)).await,
            Err(error) => tracing::debug!(%error, "fake docker: upgrade failed"),
        }
    }
}

async fn echo_until_eof(mut io: TokioIo<hyper::upgrade::Upgraded>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match io.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let _ = io.write_all(b"eof\n").await;
    let _ = io.shutdown().await;
}

async fn answer(
    mut req: Request<Incoming>,
    state: Arc<DockerState>,
    upgrades: mpsc::UnboundedSender<OnUpgrade>,
) -> Response<FakeBody> {
    // An index, not a reference, is held across the awaits below.
    let route = state.routes.iter().position(|route| {
        (route.method == "*" || route.method == req.method().as_str())
            && glob_match(&route.pattern, req.uri().path())
    });
    let wants_upgrade = route
        .is_some_and(|i| matches!(state.routes[i].responder.kind, Kind::UpgradeEcho))
        && req.headers().contains_key(header::UPGRADE);
    let on_upgrade = wants_upgrade.then(|| hyper::upgrade::on(&mut req));

    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            tracing::debug!(%error, "fake docker: reading a request body failed");
            return fixed(&FakeResponse::json(
                400,
                &serde_json::json!({"message": format!("fake docker: reading the body failed: {error}")}),
            ));
        }
    };
    let recorded = RecordedRequest {
        method: parts.method,
        uri: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.to_string(), |pq| pq.as_str().to_owned()),
        headers: parts.headers,
        body,
    };
    state.requests().push(recorded.clone());

    let response = match route {
        None => Some(fixed(&FakeResponse::json(
            404,
            &serde_json::json!({"message": "page not found"}),
        ))),
        Some(i) => respond(&state.routes[i].responder, recorded, on_upgrade, &upgrades),
    };
    match response {
        Some(response) => response,
        // `Responder::hang`: hold the connection until the server is dropped.
        None => std::future::pending().await,
    }
}

/// What `responder` answers to `recorded`; `None` for "never answer".
fn respond(
    responder: &Responder,
    recorded: RecordedRequest,
    on_upgrade: Option<OnUpgrade>,
    upgrades: &mpsc::UnboundedSender<OnUpgrade>,
) -> Option<Response<FakeBody>> {
    Some(match &responder.kind {
        Kind::Fixed(response) => fixed(response),
        Kind::Echo => fixed(&FakeResponse::new(200, "application/json", recorded.body)),
        Kind::With(f) => fixed(&f(&recorded)),
        Kind::Chunked { content_type, rx } => {
            let taken = rx
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            match taken {
                Some(rx) => {
                    let mut response = Response::new(ChannelBody::new(rx).boxed());
                    set_content_type(response.headers_mut(), content_type);
                    response
                }
                None => fixed(&FakeResponse::json(
                    500,
                    &serde_json::json!({"message": "fake docker: this chunked responder was already used"}),
                )),
            }
        }
        Kind::UpgradeEcho => match on_upgrade {
            Some(on_upgrade) => {
                // The connection task picks this up and echoes once hyper hands the
                // socket over (after the 101 is written).
                let _ = upgrades.send(on_upgrade);
                let mut response = Response::new(Full::new(Bytes::new()).boxed());
                *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                let headers = response.headers_mut();
                headers.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
                headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
                set_content_type(headers, "application/vnd.docker.raw-stream");
                response
            }
            None => fixed(&FakeResponse::json(
                400,
                &serde_json::json!({"message": "fake docker: upgrade_echo needs a request with an Upgrade header"}),
            )),
        },
        Kind::Hang => return None,
    })
}

fn set_content_type(headers: &mut HeaderMap, content_type: &str) {
    if content_type.is_empty() {
        return;
    }
    match HeaderValue::from_str(content_type) {
        Ok(value) => {
            headers.insert(header::CONTENT_TYPE, value);
        }
        Err(_) => tracing::warn!(content_type, "fake docker: unusable content type, not sent"),
    }
}

fn fixed(response: &FakeResponse) -> Response<FakeBody> {
    let Ok(status) = StatusCode::from_u16(response.status) else {
        return fixed(&FakeResponse::json(
            500,
            &serde_json::json!({"message": format!("fake docker: {} is not an HTTP status code", response.status)}),
        ));
    };
    let mut out = Response::new(Full::new(response.body.clone()).boxed());
    *out.status_mut() = status;
    set_content_type(out.headers_mut(), &response.content_type);
    out
}

/// Shell-style match where `*` matches any run of characters (`/` included) and every
/// other character matches itself.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and how much of the text it has swallowed so far.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            // Let the last `*` swallow one more character and retry from there.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn glob_matches_exact_paths_and_stars_across_slashes() {
        assert!(glob_match("/_ping", "/_ping"));
        assert!(!glob_match("/_ping", "/_pingx"));
        assert!(glob_match(
            "/*/containers/create",
            "/v1.41/containers/create"
        ));
        assert!(glob_match(
            "/*/containers/*/attach",
            "/v1.41/containers/abc/attach"
        ));
        assert!(glob_match(
            "/*/containers/*/attach",
            "/a/b/containers/c/d/attach"
        ));
        assert!(!glob_match("/*/containers/create", "/containers/create"));
        assert!(glob_match("*", ""));
        assert!(glob_match("/v1*", "/v1.41/info"));
        assert!(glob_match("*a*b", "xxaxxbxxb"));
        assert!(!glob_match("*a*b", "xxaxxbxxc"));
        assert!(!glob_match("/x", ""));
    }
}
