//! Moving a dataset's bytes between nodes: the target pulls a snapshot from the source.
//!
//! Every node runs [`serve`]. To move a dataset here, the adapter on the target node calls
//! [`fetch`] with the source node's endpoint and a [`SendRequest`]; the source snapshots the
//! dataset and streams the snapshot; the target feeds it to [`Backend::receive`].
//!
//! # The exchange
//!
//! ```text
//! POST /v1/send HTTP/1.1                     (target -> source)
//! Host: 10.0.0.11:9378
//! Content-Type: application/json
//! TE: trailers
//!
//! {"dataset":"demo","id":"d-5f2c","snapshot":"m-81aa","parent":"m-7c03","ticket":"..."}
//!
//! HTTP/1.1 200 OK                            (source -> target)
//! Content-Type: application/zstd
//! Transfer-Encoding: chunked
//! Trailer: powerstrip-xxh3, powerstrip-bytes
//! powerstrip-parent: m-7c03                  (only when the stream is an increment)
//!
//! <one zstd frame of the backend's send stream, in chunks>
//! 0
//! powerstrip-xxh3: <hex XXH3-128 of the uncompressed stream>
//! powerstrip-bytes: <length of the uncompressed stream>
//! ```
//!
//! - **The ticket.** The source hands its bytes only to a move the cluster agreed on: the
//!   adapter's [`Authorize`] checks the ticket against its cluster store (who may pull
//!   which dataset, now) before anything is done. A refusal comes back as a JSON error
//!   with the refusal's status (403, 409, ...). Ids (`id`, `snapshot`, `parent`) must be
//!   backend ids (`[a-z0-9-]`, at most 64 characters) or the request is refused with 400;
//!   `dataset` is the user-visible name, used in messages only. The request body is at
//!   most 64 KiB. Unknown fields are ignored, so nodes of neighbouring versions can talk.
//! - **The snapshot.** The source makes snapshot `snapshot` of dataset `id`, or uses it
//!   when it exists already (a retried move re-sends the same snapshot). It sends an
//!   increment against `parent` only when its backend sends increments and holds that
//!   snapshot, and says so in the `powerstrip-parent` header; otherwise it sends the whole
//!   snapshot and the header is absent. A target refuses an increment it did not ask for.
//! - **Compression.** The target says how it wants the stream ([`Compression`], the
//!   adapter's `compression` option): by default one zstd frame at level 1
//!   ([`ZSTD_LEVEL`]) — one core compresses about as fast as `btrfs send` produces, and
//!   mixed data shrinks to under half, which is what matters on a 1 Gb/s link; higher
//!   levels are several times slower for little gain, the negative ("fast") levels hardly
//!   faster. On links as fast as the CPUs (10 Gb/s and up, or two pools on one host)
//!   compressing only costs CPU: `none` sends the stream as it is
//!   (`application/octet-stream`). The response's content type says which it is.
//! - **The checksum.** XXH3-128 of the uncompressed stream: it guards against a stream
//!   damaged or cut on its way (as btrfs's own crc32c guards blocks on disk), at a cost
//!   that does not show next to `btrfs send` (sha256 cost a tenth of a move's throughput
//!   on two cores). Who may pull what is the ticket's business, not the checksum's.
//! - **The trailers.** The checksum and length of the *uncompressed* stream come after
//!   the last chunk, so the source can stream without knowing them beforehand. hyper only
//!   sends trailers to a request that says `TE: trailers`; a request without it is refused
//!   with 400 rather than answered with a stream nobody could verify.
//!
//! # Stages
//!
//! Each side runs its work as stages in tasks of their own, handing pieces of at most
//! 256 KiB through bounded channels (at most 8 MiB in flight per stage), so that the
//! backend's process, hashing, compression and the network overlap:
//!
//! ```text
//! source: btrfs send -> read + xxh3 -> zstd -> HTTP chunks
//! target: HTTP chunks -> zstd -d + xxh3 + check -> Backend::receive -> btrfs receive
//! ```
//!
//! # When something fails
//!
//! - Before streaming, the source answers with a Docker-style error, `{"message": "..."}`:
//!   400 a bad request, 403/409 (or whatever [`Refusal::status`] says) a refusal, 404 the
//!   dataset is not on that node, 413 a request body over 64 KiB, 500 a backend failure
//!   (the details stay in the source's log). [`fetch`] returns
//!   [`TransferError::Refused`].
//! - When the producer fails midway (`btrfs send` exits non-zero, [`SendStream::finish`]
//!   returns an error) the source aborts the connection: the chunked body never ends
//!   cleanly and never carries trailers, so a partial stream can never pass for a
//!   complete one.
//! - The target hashes what it decompresses as it feeds the backend. A stream that breaks
//!   off, cannot be decompressed, ends without its trailers, or does not match them makes
//!   the reader given to [`Backend::receive`] fail, so the backend discards what it
//!   received; should `receive` have returned `Ok` before the end of the stream, the
//!   target reads the rest, checks it, and deletes the snapshot on a mismatch.
//!   [`fetch`] returns [`TransferError::Broken`] and nothing is left behind.
//! - The target has no overall timeout of its own: the caller wraps [`fetch`] in
//!   `tokio::time::timeout`. Dropping the future closes the connection (the source then
//!   drops its send stream, killing `btrfs send`) and drops the backend's receive, whose
//!   `btrfs receive` child is killed on drop. A half-received snapshot is never in
//!   `snapshots/`: what is left in the pool's `incoming/` is the backend's to remove (on
//!   drop where it can, else by [`Backend::clean_incoming`] at the next start).
//! - When [`serve`] is stopped, it stops accepting and cuts off the sends in flight; their
//!   targets see a broken stream and discard it.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use async_compression::Level;
use async_compression::tokio::bufread::{ZstdDecoder, ZstdEncoder};
use async_trait::async_trait;
use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{CONTENT_TYPE, HOST, TE, TRAILER, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, Span, debug, field, info, info_span, warn};
use xxhash_rust::xxh3::Xxh3;

use crate::backend::{Backend, BackendError, SendStream};

/// The one endpoint: `POST` a [`SendRequest`] here.
pub const SEND_PATH: &str = "/v1/send";
/// Response header naming the parent of an incremental stream (absent for a full one).
pub const PARENT_HEADER: &str = "powerstrip-parent";
/// Trailer with the XXH3-128 of the uncompressed stream, in hexadecimal.
pub const CHECKSUM_TRAILER: &str = "powerstrip-xxh3";
/// Trailer with the length in bytes of the uncompressed stream.
pub const BYTES_TRAILER: &str = "powerstrip-bytes";
/// The zstd level the source compresses with. Measured on one core of a 2-core VM with
/// 1 GiB of mixed data (a quarter each random, text, zeros and low-entropy bytes),
/// compress and hash: level 1 640-700 MB/s (ratio 0.44), level 3 240 MB/s (0.44),
/// levels -1 to -10 470-790 MB/s (0.57); decompress and hash at level 1: 1.3-1.4 GB/s.
/// On the same VM, `btrfs send | btrfs receive` of that data ran at 500-540 MB/s, the
/// source side of a transfer (`btrfs send`, hash, zstd) at 480 MB/s.
pub const ZSTD_LEVEL: i32 = 1;
/// How long [`fetch`] waits for the TCP connection (name lookup included).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest request body [`serve`] reads.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// [`fetch`] calls its `progress` callback each time this many more bytes have arrived.
pub const PROGRESS_EVERY: u64 = 8 * 1024 * 1024;

/// How long [`serve`] waits for a request's head, and then for its body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The size of the chunks the source sends.
const CHUNK: usize = 128 * 1024;
/// The largest piece a stage of a transfer hands the next.
const PIECE: usize = 256 * 1024;
/// How many pieces a stage may be ahead of the next (at most 8 MiB in flight).
const DEPTH: usize = 32;
/// What a source sends back.
type ResponseBody = UnsyncBoxBody<Bytes, io::Error>;

/// What the target asks the source for: the body of `POST /v1/send`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRequest {
    /// The user-visible dataset name, for messages and logs only.
    pub dataset: String,
    /// The backend's id of the dataset to send.
    pub id: String,
    /// The id of the snapshot to make (or reuse) and send; the target receives it under
    /// the same id.
    pub snapshot: String,
    /// A snapshot the target holds, to send only the difference from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Proof that the cluster agreed to this move, checked by [`Authorize`].
    pub ticket: String,
    /// How the target wants the stream compressed (zstd when not said).
    #[serde(default)]
    pub compression: Compression,
}

/// How a stream crosses the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// One zstd frame at [`ZSTD_LEVEL`]: for links slower than the CPUs (1 Gb/s and
    /// below it halves the time of mixed data).
    #[default]
    Zstd,
    /// As it is: for links as fast as the CPUs (10 Gb/s and up, or two pools on one host),
    /// where compressing only costs CPU.
    None,
}

impl Compression {
    /// The response's content type for this compression.
    pub fn content_type(self) -> &'static str {
        match self {
            Compression::Zstd => "application/zstd",
            Compression::None => "application/octet-stream",
        }
    }
}

impl fmt::Debug for SendRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The ticket is a credential: never in logs.
        f.debug_struct("SendRequest")
            .field("dataset", &self.dataset)
            .field("id", &self.id)
            .field("snapshot", &self.snapshot)
            .field("parent", &self.parent)
            .field("compression", &self.compression)
            .field("ticket", &"<redacted>")
            .finish()
    }
}

/// Why a source will not send: an HTTP status and a message for the user.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// The status to answer with (4xx or 5xx; anything else becomes 500).
    pub status: u16,
    /// Why, in words a docker CLI user understands.
    pub message: String,
}

impl Refusal {
    /// 403: the ticket is not valid for this dataset.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self {
            status: 403,
            message: message.into(),
        }
    }

    /// 409: the move conflicts with the dataset's state (in use here, moved elsewhere).
    pub fn conflict(message: impl Into<String>) -> Self {
        Self {
            status: 409,
            message: message.into(),
        }
    }
}

/// Decides whether a source sends: the adapter checks the ticket against its cluster store.
#[async_trait]
pub trait Authorize: Send + Sync {
    /// `Ok` to send, or why not.
    async fn authorize(&self, request: &SendRequest) -> Result<(), Refusal>;
}

/// What [`fetch`] received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// Bytes of the (uncompressed) stream the backend received.
    pub raw_bytes: u64,
    /// Bytes that crossed the network (compressed).
    pub wire_bytes: u64,
    /// The parent the stream is an increment against; `None` for a full stream.
    pub parent: Option<String>,
    /// From the connect to the verified end.
    pub elapsed: Duration,
}

/// Why [`fetch`] failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// No answer: the connection could not be made, or broke before the source answered.
    #[error("node at {endpoint} is unreachable: {reason}")]
    Unreachable {
        /// The source's endpoint.
        endpoint: String,
        /// What happened: "connection refused", "no connection within 5s".
        reason: String,
    },
    /// The source answered with an error instead of a stream.
    #[error("the source node refused to send (HTTP {status}): {message}")]
    Refused {
        /// Its HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The stream broke off, was corrupt, or did not match its checksum (the source died
    /// or failed mid-move). Nothing was kept.
    #[error("node at {endpoint} {reason}")]
    Broken {
        /// The source's endpoint.
        endpoint: String,
        /// What happened, following "node at `endpoint`": "stopped sending after 312 MiB:
        /// connection reset".
        reason: String,
    },
    /// This node's backend failed to receive.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

// ---------------------------------------------------------------------------------------
// The source: serve
// ---------------------------------------------------------------------------------------

/// Serves `POST /v1/send` on `listener` until `stop` is cancelled, sending snapshots of
/// `backend` to the targets `authorize` lets through. On `stop` it stops accepting, cuts
/// off the connections still open and returns once they are gone (their producers'
/// tasks are aborted with them, which kills `btrfs send`).
pub async fn serve(
    listener: TcpListener,
    backend: Arc<dyn Backend>,
    authorize: Arc<dyn Authorize>,
    stop: CancellationToken,
) {
    let source = Arc::new(Source { backend, authorize });
    if let Ok(address) = listener.local_addr() {
        info!(%address, "transfer server listening");
    }
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection(source.clone(), stream, peer));
                }
                Err(e) => {
                    // Out of descriptors, most likely: give the sends in flight a moment.
                    warn!(error = %e, "transfer server cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    drop(listener);
    if !connections.is_empty() {
        info!(
            connections = connections.len(),
            "transfer server stopping: cutting off sends in flight"
        );
    }
    connections.shutdown().await;
}

/// What a connection needs.
struct Source {
    /// Where the snapshots come from.
    backend: Arc<dyn Backend>,
    /// Who may have them.
    authorize: Arc<dyn Authorize>,
}

/// Serves one connection (HTTP/1.1, keep-alive).
async fn connection(source: Arc<Source>, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |request| {
        let source = source.clone();
        async move { Ok::<_, Infallible>(handle(&source, peer, request).await) }
    });
    if let Err(e) = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        debug!(%peer, error = %e, "transfer connection ended with an error");
    }
}

/// Answers one request: a stream, or the error that prevented it.
async fn handle(
    source: &Source,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<ResponseBody> {
    let span = info_span!("send", %peer, dataset = field::Empty, snapshot = field::Empty);
    match answer(source, request, &span)
        .instrument(span.clone())
        .await
    {
        Ok(response) => response,
        Err(error) => span.in_scope(|| error.into_response()),
    }
}

/// Why a source did not start a stream; [`ServeError::into_response`] is the one place
/// that turns it into an answer.
#[derive(Debug)]
enum ServeError {
    /// Not `/v1/send`.
    NoSuchPath(String),
    /// `/v1/send`, but not `POST`.
    Method(Method),
    /// The request does not accept trailers.
    NoTrailers,
    /// The body could not be read or parsed, or names an invalid id.
    BadRequest(String),
    /// The body is over [`MAX_REQUEST_BYTES`].
    TooLarge,
    /// [`Authorize`] said no.
    Refused(Refusal),
    /// Neither the dataset nor the snapshot is here.
    Missing {
        /// The user-visible name.
        dataset: String,
    },
    /// The backend failed.
    Backend {
        /// The user-visible name.
        dataset: String,
        /// What was being done: "make a snapshot of".
        step: &'static str,
        /// What the backend said (logged, not sent).
        error: BackendError,
    },
}

impl ServeError {
    fn status(&self) -> StatusCode {
        match self {
            ServeError::NoSuchPath(_) | ServeError::Missing { .. } => StatusCode::NOT_FOUND,
            ServeError::Method(_) => StatusCode::METHOD_NOT_ALLOWED,
            ServeError::NoTrailers | ServeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServeError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ServeError::Refused(refusal) => StatusCode::from_u16(refusal.status)
                .ok()
                .filter(|status| status.is_client_error() || status.is_server_error())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            ServeError::Backend {
                error: BackendError::NotFound { .. },
                ..
            } => StatusCode::NOT_FOUND,
            ServeError::Backend { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn message(&self) -> String {
        match self {
            ServeError::NoSuchPath(path) => {
                format!("no such endpoint: {path} (the transfer API is POST {SEND_PATH})")
            }
            ServeError::Method(method) => {
                format!("{method} is not allowed on {SEND_PATH}: use POST")
            }
            ServeError::NoTrailers => format!(
                "the request must accept trailers (TE: trailers): they carry the stream's checksum ({CHECKSUM_TRAILER})"
            ),
            ServeError::BadRequest(why) => format!("bad send request: {why}"),
            ServeError::TooLarge => {
                format!("bad send request: the body is over {MAX_REQUEST_BYTES} bytes")
            }
            ServeError::Refused(refusal) => refusal.message.clone(),
            ServeError::Missing { dataset } => format!("dataset {dataset} is not on this node"),
            ServeError::Backend {
                dataset,
                step,
                error: BackendError::NotFound { .. },
            } => {
                format!("could not {step} dataset {dataset}: it is not on this node")
            }
            ServeError::Backend { dataset, step, .. } => {
                format!(
                    "could not {step} dataset {dataset} on the source node (its log has the details)"
                )
            }
        }
    }

    /// Logs the error (all of it) and answers with a Docker-style `{"message": ...}`.
    fn into_response(self) -> Response<ResponseBody> {
        let status = self.status();
        let message = self.message();
        match &self {
            ServeError::Backend { error, .. } => warn!(%status, %message, %error, "send failed"),
            ServeError::Refused(refusal) => {
                info!(%status, %message, asked = refusal.status, "send refused")
            }
            _ => info!(%status, %message, "send refused"),
        }
        let body = serde_json::json!({ "message": message }).to_string();
        let mut response = Response::new(full(Bytes::from(body)));
        *response.status_mut() = status;
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

/// A whole body, as a [`ResponseBody`].
fn full(bytes: Bytes) -> ResponseBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Checks the request, makes the snapshot and starts the stream.
async fn answer(
    source: &Source,
    request: Request<Incoming>,
    span: &Span,
) -> Result<Response<ResponseBody>, ServeError> {
    if request.uri().path() != SEND_PATH {
        return Err(ServeError::NoSuchPath(request.uri().path().to_owned()));
    }
    if request.method() != Method::POST {
        return Err(ServeError::Method(request.method().clone()));
    }
    if !accepts_trailers(request.headers()) {
        return Err(ServeError::NoTrailers);
    }
    let request = read_request(request.into_body()).await?;
    span.record("dataset", request.dataset.as_str());
    span.record("snapshot", request.snapshot.as_str());
    let backend = &source.backend;

    source
        .authorize
        .authorize(&request)
        .await
        .map_err(ServeError::Refused)?;

    let backend_error = |step: &'static str| {
        let dataset = request.dataset.clone();
        move |error| ServeError::Backend {
            dataset,
            step,
            error,
        }
    };
    let snapshots = backend
        .snapshots()
        .await
        .map_err(backend_error("list the snapshots of"))?;
    if !snapshots.contains(&request.snapshot) {
        let datasets = backend.datasets().await.map_err(backend_error("find"))?;
        if !datasets.contains(&request.id) {
            return Err(ServeError::Missing {
                dataset: request.dataset.clone(),
            });
        }
        backend
            .snapshot(&request.id, &request.snapshot)
            .await
            .map_err(backend_error("make a snapshot of"))?;
    }
    let parent = request.parent.clone().filter(|parent| {
        backend.incremental() && *parent != request.snapshot && snapshots.contains(parent)
    });
    let stream = backend
        .send(&request.snapshot, parent.as_deref())
        .await
        .map_err(backend_error("start sending"))?;

    info!(parent = parent.as_deref().unwrap_or("none"), "sending");
    let mut response = Response::new(
        SendBody::new(stream, parent.clone(), request.compression, span.clone()).boxed_unsync(),
    );
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(request.compression.content_type()),
    );
    headers.insert(
        TRAILER,
        HeaderValue::from_static("powerstrip-xxh3, powerstrip-bytes"),
    );
    if let Some(parent) = parent
        .as_deref()
        .and_then(|p| HeaderValue::from_str(p).ok())
    {
        headers.insert(PARENT_HEADER, parent);
    }
    Ok(response)
}

/// Whether a request's `TE` header lists `trailers` (what hyper needs to send them).
fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(TE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("trailers"))
}

/// Reads (at most [`MAX_REQUEST_BYTES`] of) the body, parses and checks it.
async fn read_request(body: Incoming) -> Result<SendRequest, ServeError> {
    let collected = tokio::time::timeout(
        REQUEST_TIMEOUT,
        Limited::new(body, MAX_REQUEST_BYTES).collect(),
    )
    .await
    .map_err(|_| {
        ServeError::BadRequest(format!(
            "the body did not arrive within {}s",
            REQUEST_TIMEOUT.as_secs()
        ))
    })?;
    let bytes = match collected {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(ServeError::TooLarge),
        Err(e) => {
            return Err(ServeError::BadRequest(format!(
                "could not read the body: {e}"
            )));
        }
    };
    let request: SendRequest =
        serde_json::from_slice(&bytes).map_err(|e| ServeError::BadRequest(e.to_string()))?;
    for (field, value) in [
        ("id", Some(&request.id)),
        ("snapshot", Some(&request.snapshot)),
        ("parent", request.parent.as_ref()),
    ] {
        if let Some(value) = value
            && !is_backend_id(value)
        {
            return Err(ServeError::BadRequest(format!(
                "{field} {value:?} is not a backend id ([a-z0-9-], at most 64 characters)"
            )));
        }
    }
    Ok(request)
}

/// Whether `id` looks like a backend id: `[a-z0-9-]{1,64}`. Ids end up in paths.
fn is_backend_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A piece of a stream, handed from one stage of a transfer to the next (each stage is a
/// task of its own, so that reading, hashing, compressing and writing overlap).
enum Piece {
    /// The next bytes.
    Data(Bytes),
    /// The end: the stream is complete (its checksum and length), or why it is not.
    End(Result<Summary, String>),
}

/// What a complete stream was.
#[derive(Clone, Debug)]
struct Summary {
    /// Hex XXH3-128 of the uncompressed stream.
    checksum: String,
    /// Its length.
    bytes: u64,
}

/// A channel of [`Piece`]s read as a byte stream that ends cleanly only at the end of a
/// complete stream: a failed one (or a stage that went away) ends it with an error.
struct PieceReader {
    /// From the previous stage.
    pieces: mpsc::Receiver<Piece>,
    /// What is left of the current piece.
    chunk: Bytes,
    /// The end, once it came.
    end: Option<Result<Summary, String>>,
}

impl PieceReader {
    fn new(pieces: mpsc::Receiver<Piece>) -> Self {
        Self {
            pieces,
            chunk: Bytes::new(),
            end: None,
        }
    }

    /// The complete stream's summary, once its end was read.
    fn summary(&self) -> Option<&Summary> {
        self.end.as_ref().and_then(|end| end.as_ref().ok())
    }
}

impl AsyncBufRead for PieceReader {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        while this.chunk.is_empty() {
            match &this.end {
                Some(Ok(_)) => break,
                Some(Err(reason)) => return Poll::Ready(Err(io::Error::other(reason.clone()))),
                None => {}
            }
            match ready!(this.pieces.poll_recv(cx)) {
                Some(Piece::Data(data)) => this.chunk = data,
                Some(Piece::End(end)) => this.end = Some(end),
                None => this.end = Some(Err("the stream stopped before its end".to_owned())),
            }
        }
        Poll::Ready(Ok(&this.chunk[..]))
    }

    fn consume(self: Pin<&mut Self>, amount: usize) {
        let this = self.get_mut();
        this.chunk.advance(amount.min(this.chunk.len()));
    }
}

impl AsyncRead for PieceReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let available = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = available.len().min(buf.remaining());
        buf.put_slice(&available[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

/// The source's first stage: reads the producer's stream into `pieces`, hashing it, and
/// ends it with its summary once the producer exited cleanly, or with why not. Reading
/// ahead of the compression lets `btrfs send` run on while a piece is compressed.
async fn produce(stream: SendStream, pieces: mpsc::Sender<Piece>, raw: Arc<AtomicU64>) {
    let SendStream {
        mut reader,
        mut done,
    } = stream;
    let mut hasher = Xxh3::new();
    let mut bytes = 0u64;
    let mut exited = false;
    // Pieces are split off one buffer (a pipe yields 64 KiB at a time), which is reused
    // once the pieces cut from it are gone.
    let mut buffer = BytesMut::new();
    let end = loop {
        if buffer.capacity() < PIECE / 4 {
            buffer.reserve(PIECE);
        }
        // Watch the producer all along, not only at the end of its stream: one that fails
        // early ends the stream at once.
        let read = tokio::select! {
            biased;
            result = &mut done, if !exited => match result {
                Ok(()) => {
                    exited = true;
                    continue;
                }
                Err(e) => break Err(e.to_string()),
            },
            read = reader.read_buf(&mut buffer) => read,
        };
        match read {
            Err(e) => break Err(format!("reading the send stream: {e}")),
            Ok(0) => {
                if !exited && let Err(e) = (&mut done).await {
                    break Err(e.to_string());
                }
                break Ok(Summary {
                    checksum: format!("{:032x}", hasher.digest128()),
                    bytes,
                });
            }
            Ok(n) => {
                let piece = buffer.split().freeze();
                hasher.update(&piece);
                bytes += n as u64;
                raw.store(bytes, Ordering::Relaxed);
                if pieces.send(Piece::Data(piece)).await.is_err() {
                    // The response is gone; dropping `reader` and `done` stops the producer.
                    return;
                }
            }
        }
    };
    let _ = pieces.send(Piece::End(end)).await;
}

/// The response body of a send: the stream, compressed and chunked, then the trailers; or
/// an error, which makes hyper abort the connection, when the producer fails.
struct SendBody {
    /// The producer's stream (from [`produce`]), compressed.
    encoder: Encoder,
    /// The [`produce`] task; aborted with the body, which kills the producer.
    _producer: AbortOnDrop<()>,
    /// Compressed bytes waiting to go out.
    buffer: BytesMut,
    /// Whether the trailers or an error were sent.
    ended: bool,
    /// Uncompressed bytes read from the producer so far (kept by [`produce`]).
    raw: Arc<AtomicU64>,
    /// Compressed bytes sent so far.
    wire: u64,
    /// The parent the stream is an increment against, for the log.
    parent: Option<String>,
    /// For the throughput in the log.
    started: Instant,
    /// The request's span: the body outlives the service call.
    span: Span,
}

impl SendBody {
    fn new(
        stream: SendStream,
        parent: Option<String>,
        compression: Compression,
        span: Span,
    ) -> Self {
        let (sender, pieces) = mpsc::channel(DEPTH);
        let raw = Arc::new(AtomicU64::new(0));
        let producer = tokio::spawn(produce(stream, sender, raw.clone()).instrument(span.clone()));
        Self {
            encoder: match compression {
                Compression::Zstd => Encoder::Zstd(ZstdEncoder::with_quality(
                    PieceReader::new(pieces),
                    Level::Precise(ZSTD_LEVEL),
                )),
                Compression::None => Encoder::Plain(PieceReader::new(pieces)),
            },
            _producer: AbortOnDrop(producer),
            buffer: BytesMut::new(),
            ended: false,
            raw,
            wire: 0,
            parent,
            started: Instant::now(),
            span,
        }
    }

    /// Ends the body with an error: hyper aborts the connection, so the target sees a
    /// stream without its end and trailers.
    fn fail(&mut self, reason: String) -> io::Error {
        self.ended = true;
        let _entered = self.span.enter();
        warn!(
            bytes = self.raw.load(Ordering::Relaxed),
            wire_bytes = self.wire,
            error = %reason,
            "send failed midway: aborting the connection"
        );
        io::Error::other(reason)
    }

    /// The trailers of a complete stream.
    fn finish(&mut self, summary: &Summary) -> HeaderMap {
        self.ended = true;
        let elapsed = self.started.elapsed();
        let _entered = self.span.enter();
        info!(
            bytes = summary.bytes,
            wire_bytes = self.wire,
            parent = self.parent.as_deref().unwrap_or("none"),
            elapsed = %humantime::format_duration(round_ms(elapsed)),
            mb_per_s = mb_per_s(summary.bytes, elapsed),
            "sent"
        );
        let mut trailers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(&summary.checksum) {
            trailers.insert(CHECKSUM_TRAILER, value);
        }
        trailers.insert(BYTES_TRAILER, HeaderValue::from(summary.bytes));
        trailers
    }
}

impl Body for SendBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        if this.buffer.capacity() < CHUNK {
            this.buffer = BytesMut::with_capacity(CHUNK);
        }
        match ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut this.encoder),
            cx,
            &mut this.buffer
        )) {
            Err(e) => Poll::Ready(Some(Err(this.fail(e.to_string())))),
            Ok(0) => match this.encoder.reader().summary().cloned() {
                Some(summary) => Poll::Ready(Some(Ok(Frame::trailers(this.finish(&summary))))),
                // Unreachable: the reader ends cleanly only with a summary.
                None => Poll::Ready(Some(Err(
                    this.fail("the stream ended without its end".to_owned())
                ))),
            },
            Ok(n) => {
                this.wire += n as u64;
                Poll::Ready(Some(Ok(Frame::data(this.buffer.split().freeze()))))
            }
        }
    }
}

/// The source's last stage before HTTP: the pieces, compressed or as they are.
enum Encoder {
    Zstd(ZstdEncoder<PieceReader>),
    Plain(PieceReader),
}

impl Encoder {
    fn reader(&self) -> &PieceReader {
        match self {
            Encoder::Zstd(encoder) => encoder.get_ref(),
            Encoder::Plain(reader) => reader,
        }
    }
}

impl AsyncRead for Encoder {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Encoder::Zstd(encoder) => Pin::new(encoder).poll_read(cx, buf),
            Encoder::Plain(reader) => Pin::new(reader).poll_read(cx, buf),
        }
    }
}

/// The target's first stage after HTTP: the body, decompressed or as it is.
enum Decoder {
    Zstd(ZstdDecoder<BodyReader>),
    Plain(BodyReader),
}

impl Decoder {
    fn body(&self) -> &BodyReader {
        match self {
            Decoder::Zstd(decoder) => decoder.get_ref(),
            Decoder::Plain(body) => body,
        }
    }

    fn body_mut(&mut self) -> &mut BodyReader {
        match self {
            Decoder::Zstd(decoder) => decoder.get_mut(),
            Decoder::Plain(body) => body,
        }
    }
}

impl AsyncRead for Decoder {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Decoder::Zstd(decoder) => Pin::new(decoder).poll_read(cx, buf),
            Decoder::Plain(body) => Pin::new(body).poll_read(cx, buf),
        }
    }
}

impl Drop for SendBody {
    fn drop(&mut self) {
        if !self.ended {
            let _entered = self.span.enter();
            info!(
                bytes = self.raw.load(Ordering::Relaxed),
                wire_bytes = self.wire,
                "send abandoned: the target went away (or the server stopped); stopping the producer"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The target: fetch
// ---------------------------------------------------------------------------------------

/// Pulls `request.snapshot` from the node at `endpoint` (`"http://10.0.0.11:9378"`) into
/// `backend`, verifying it, and calling `progress` with the bytes received so far every
/// [`PROGRESS_EVERY`] bytes and at the end.
///
/// Connecting times out after [`CONNECT_TIMEOUT`]; nothing else does: wrap the call in
/// `tokio::time::timeout`. Dropping the future stops the transfer and leaves nothing
/// behind (see the module's documentation).
pub async fn fetch(
    endpoint: &str,
    request: &SendRequest,
    backend: &dyn Backend,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Fetched, TransferError> {
    let started = Instant::now();
    let target = Target::parse(endpoint)?;
    let stream = target.connect().await?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| target.unreachable(describe(&e)))?;
    // The connection is driven by a task that is aborted when `fetch` returns or its
    // future is dropped, closing the socket: the source then drops its send stream.
    let _connection = AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "transfer connection ended with an error");
        }
    }));

    // Serializing strings cannot fail; were it to, the source answers an empty body 400.
    let body = serde_json::to_vec(request).unwrap_or_default();
    let http_request = Request::post(&target.path)
        .header(HOST, &target.authority)
        .header(CONTENT_TYPE, "application/json")
        .header(TE, "trailers")
        .header(
            USER_AGENT,
            concat!("powerstrip-volumes/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| target.unreachable(format!("cannot make a request to it: {e}")))?;
    let response = sender
        .send_request(http_request)
        .await
        .map_err(|e| target.unreachable(format!("no answer: {}", describe(&e))))?;
    let (head, body) = response.into_parts();
    if head.status != StatusCode::OK {
        return Err(refused(head.status, body).await);
    }
    let compression = match head
        .headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
    {
        Some("application/zstd") => Compression::Zstd,
        Some("application/octet-stream") => Compression::None,
        other => {
            return Err(target.broken(format!(
                "answered a stream of an unknown type {:?}",
                other.unwrap_or("(none)")
            )));
        }
    };
    let parent = head
        .headers
        .get(PARENT_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    if parent.is_some() && parent != request.parent {
        return Err(target.broken(format!(
            "offered an increment against {}, which was not asked for",
            parent.as_deref().unwrap_or_default()
        )));
    }
    info!(
        endpoint,
        dataset = %request.dataset,
        snapshot = %request.snapshot,
        parent = parent.as_deref().unwrap_or("none"),
        "receiving"
    );

    // Decompressing and hashing run in a task of their own, so that they overlap with the
    // backend's writes (into a 64 KiB pipe to `btrfs receive`). Dropping `fetch` aborts it
    // (and the connection's task); the backend's receive future is dropped with `fetch`:
    // its `btrfs receive` child is killed on drop (`kill_on_drop`), and what it left in
    // `incoming/` is removed by the backend (on drop, or by `clean_incoming` at the next
    // start). A backend that reads to the end of its stream (Btrfs does) commits nothing
    // before the stream is verified: the reader ends cleanly only after the check.
    let failure = Arc::new(OnceLock::new());
    let (pieces_sender, pieces) = mpsc::channel(DEPTH);
    let (progress_sender, mut progressed) = watch::channel(0u64);
    let mut decoding = AbortOnDrop(tokio::spawn(decode(
        body,
        compression,
        pieces_sender,
        failure.clone(),
        progress_sender,
    )));
    let received = {
        let mut receiving =
            std::pin::pin!(backend.receive(&request.snapshot, Box::pin(PieceReader::new(pieces))));
        let mut watching = true;
        loop {
            tokio::select! {
                result = &mut receiving => break result,
                changed = progressed.changed(), if watching => match changed {
                    Ok(()) => {
                        let raw = *progressed.borrow_and_update();
                        progress(raw);
                    }
                    Err(_) => watching = false,
                },
            }
        }
    };
    let verdict = match received {
        // `receive` may return before the end of the stream (at its own end marker): the
        // decoding task reads on and checks the rest all the same.
        Ok(()) => match (&mut decoding.0).await {
            Ok(Decoded {
                raw,
                wire,
                result: Ok(()),
            }) => Ok((raw, wire)),
            Ok(Decoded {
                result: Err(reason),
                ..
            }) => Err(reason),
            Err(e) => Err(format!("sent a stream this node failed to read: {e}")),
        },
        Err(error) => match failure.get() {
            // The reader failed the receive: the stream broke.
            Some(reason) => Err(reason.clone()),
            // The stream was fine as far as it went: this node's backend failed.
            None => return Err(TransferError::Backend(error)),
        },
    };
    let (raw_bytes, wire_bytes) = match verdict {
        Ok(counts) => counts,
        Err(reason) => {
            // Normally gone already (a receive that fails leaves nothing); this catches a
            // receive that returned `Ok` before the stream proved broken.
            let deleted = backend.delete_snapshot(&request.snapshot).await;
            let error = target.broken(reason);
            warn!(endpoint, snapshot = %request.snapshot, error = %error, "transfer broken");
            if let Err(e) = deleted {
                warn!(snapshot = %request.snapshot, error = %e, "cannot delete the broken snapshot");
            }
            return Err(error);
        }
    };
    progress(raw_bytes);
    let elapsed = started.elapsed();
    info!(
        endpoint,
        snapshot = %request.snapshot,
        bytes = raw_bytes,
        wire_bytes,
        elapsed = %humantime::format_duration(round_ms(elapsed)),
        mb_per_s = mb_per_s(raw_bytes, elapsed),
        "received"
    );
    Ok(Fetched {
        raw_bytes,
        wire_bytes,
        parent,
        elapsed,
    })
}

/// What the decoding stage of a fetch ends with.
struct Decoded {
    /// Uncompressed bytes.
    raw: u64,
    /// Compressed bytes.
    wire: u64,
    /// Whether the stream was complete and matched its trailers, or why not (following
    /// "node at `endpoint`").
    result: Result<(), String>,
}

/// The target's decoding stage: decompresses and hashes the body into `pieces` for the
/// backend, and checks it against the trailers at its end. A broken stream ends `pieces`
/// with an error (so the backend discards what it got), its reason set in `failure` first.
async fn decode(
    body: Incoming,
    compression: Compression,
    pieces: mpsc::Sender<Piece>,
    failure: Arc<OnceLock<String>>,
    progress: watch::Sender<u64>,
) -> Decoded {
    let mut decoder = match compression {
        Compression::Zstd => Decoder::Zstd(ZstdDecoder::new(BodyReader::new(body))),
        Compression::None => Decoder::Plain(BodyReader::new(body)),
    };
    let mut hasher = Xxh3::new();
    let mut raw = 0u64;
    let mut forwarding = true;
    let mut buffer = BytesMut::new();
    let result = loop {
        if buffer.capacity() < PIECE / 4 {
            buffer.reserve(PIECE);
        }
        match decoder.read_buf(&mut buffer).await {
            Err(e) => break Err(broken_by(decoder.body(), raw, &e)),
            Ok(0) => break end_of(&mut decoder, hasher, raw).await,
            Ok(n) => {
                let piece = buffer.split().freeze();
                hasher.update(&piece);
                let before = raw;
                raw += n as u64;
                if before / PROGRESS_EVERY != raw / PROGRESS_EVERY {
                    progress.send_replace(raw);
                }
                if forwarding && pieces.send(Piece::Data(piece)).await.is_err() {
                    // The backend stopped reading (at its own end marker): read on, to
                    // check the stream all the same.
                    forwarding = false;
                }
            }
        }
    };
    let wire = decoder.body().wire;
    let end = match &result {
        Ok(summary) => Ok(summary.clone()),
        Err(reason) => {
            let _ = failure.set(reason.clone());
            Err(reason.clone())
        }
    };
    if forwarding {
        let _ = pieces.send(Piece::End(end)).await;
    }
    Decoded {
        raw,
        wire,
        result: result.map(|_| ()),
    }
}

/// At the end of the zstd frame: nothing but the trailers may follow, and they must match.
async fn end_of(decoder: &mut Decoder, hasher: Xxh3, raw: u64) -> Result<Summary, String> {
    match decoder.body_mut().fill_buf().await {
        Ok([]) => {}
        Ok(_) => {
            return Err(format!(
                "sent data after the end of its stream (after {})",
                size(raw)
            ));
        }
        Err(e) => return Err(broken_by(decoder.body(), raw, &e)),
    }
    verify(decoder.body().trailers.as_ref(), hasher, raw)
}

/// Compares a stream with its trailers.
fn verify(trailers: Option<&HeaderMap>, hasher: Xxh3, raw: u64) -> Result<Summary, String> {
    let received = size(raw);
    let Some(trailers) = trailers else {
        return Err(format!(
            "ended its stream after {received} without the checksum that marks it complete"
        ));
    };
    let announced_checksum = trailers
        .get(CHECKSUM_TRAILER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let announced_bytes = trailers
        .get(BYTES_TRAILER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let (Some(announced_checksum), Some(announced_bytes)) = (announced_checksum, announced_bytes)
    else {
        return Err(format!(
            "ended its stream after {received} without a valid checksum"
        ));
    };
    if announced_bytes != raw {
        return Err(format!(
            "sent {raw} bytes ({received}) but announced {announced_bytes}: the stream is incomplete"
        ));
    }
    let computed = format!("{:032x}", hasher.digest128());
    if !announced_checksum.eq_ignore_ascii_case(&computed) {
        return Err(format!(
            "sent a stream ({received}) that does not match its checksum (XXH3-128 {computed}, announced {announced_checksum})"
        ));
    }
    Ok(Summary {
        checksum: computed,
        bytes: raw,
    })
}

/// Why a stream failed, given the error reading it.
fn broken_by(body: &BodyReader, raw: u64, error: &io::Error) -> String {
    let received = size(raw);
    if let Some(reason) = &body.error {
        format!("stopped sending after {received}: {reason}")
    } else if body.ended && body.trailers.is_none() {
        format!("stopped sending after {received}: the stream ended early, without its checksum")
    } else {
        format!("sent a corrupt stream (after {received}): {error}")
    }
}

/// The error answer of a source, as [`TransferError::Refused`].
async fn refused(status: StatusCode, body: Incoming) -> TransferError {
    let text = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    #[derive(Deserialize)]
    struct Message {
        message: String,
    }
    let message = match serde_json::from_slice::<Message>(&text) {
        Ok(parsed) => parsed.message,
        Err(_) if !text.is_empty() => String::from_utf8_lossy(&text).trim().to_owned(),
        Err(_) => status
            .canonical_reason()
            .unwrap_or("no reason given")
            .to_owned(),
    };
    TransferError::Refused {
        status: status.as_u16(),
        message,
    }
}

/// A source endpoint, parsed.
struct Target {
    /// As given, for messages.
    endpoint: String,
    /// Host (no brackets) to connect to.
    host: String,
    /// Port to connect to.
    port: u16,
    /// For the `Host` header.
    authority: String,
    /// The request's path: the endpoint's, then [`SEND_PATH`].
    path: String,
}

impl Target {
    fn parse(endpoint: &str) -> Result<Self, TransferError> {
        let bad = || TransferError::Unreachable {
            endpoint: endpoint.to_owned(),
            reason: "not an address of the form http://HOST:PORT".to_owned(),
        };
        let uri: http::Uri = endpoint.parse().map_err(|_| bad())?;
        if uri.scheme_str() != Some("http") {
            return Err(bad());
        }
        let authority = uri.authority().ok_or_else(bad)?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            endpoint: endpoint.to_owned(),
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(80),
            authority: authority.as_str().to_owned(),
            path: format!("{}{SEND_PATH}", uri.path().trim_end_matches('/')),
        })
    }

    async fn connect(&self) -> Result<TcpStream, TransferError> {
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(self.unreachable(describe_io(&e))),
            Err(_) => Err(self.unreachable(format!(
                "no connection within {}s",
                CONNECT_TIMEOUT.as_secs()
            ))),
        }
    }

    fn unreachable(&self, reason: String) -> TransferError {
        TransferError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason,
        }
    }

    fn broken(&self, reason: String) -> TransferError {
        TransferError::Broken {
            endpoint: self.endpoint.clone(),
            reason,
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The response body as a byte stream: data frames in order; the trailers kept aside.
struct BodyReader {
    /// The response body.
    body: Incoming,
    /// What is left of the current data frame.
    chunk: Bytes,
    /// Compressed bytes received so far.
    wire: u64,
    /// The trailers, once they came.
    trailers: Option<HeaderMap>,
    /// Whether the body ended (cleanly: with or without trailers).
    ended: bool,
    /// Why the body broke off, in words.
    error: Option<String>,
}

impl BodyReader {
    fn new(body: Incoming) -> Self {
        Self {
            body,
            chunk: Bytes::new(),
            wire: 0,
            trailers: None,
            ended: false,
            error: None,
        }
    }
}

impl AsyncRead for BodyReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let available = ready!(self.as_mut().poll_fill_buf(cx))?;
        let n = available.len().min(buf.remaining());
        buf.put_slice(&available[..n]);
        self.consume(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncBufRead for BodyReader {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        while this.chunk.is_empty() && !this.ended {
            if let Some(reason) = &this.error {
                return Poll::Ready(Err(io::Error::other(reason.clone())));
            }
            match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                None => this.ended = true,
                Some(Err(e)) => this.error = Some(describe(&e)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        this.wire += data.len() as u64;
                        this.chunk = data;
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            this.trailers = Some(trailers);
                        }
                    }
                },
            }
        }
        Poll::Ready(Ok(&this.chunk[..]))
    }

    fn consume(self: Pin<&mut Self>, amount: usize) {
        let this = self.get_mut();
        this.chunk.advance(amount.min(this.chunk.len()));
    }
}

/// A hyper error in words for a user: "connection reset", "the connection closed".
fn describe(error: &hyper::Error) -> String {
    if error.is_incomplete_message() {
        return "the connection closed".to_owned();
    }
    if error.is_timeout() {
        return "timed out".to_owned();
    }
    let mut innermost: &(dyn std::error::Error + 'static) = error;
    while let Some(source) = innermost.source() {
        innermost = source;
    }
    match innermost.downcast_ref::<io::Error>() {
        Some(io) => describe_io(io),
        None => innermost.to_string(),
    }
}

/// An I/O error in words for a user.
fn describe_io(error: &io::Error) -> String {
    match error.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused (nothing listens there)".to_owned(),
        io::ErrorKind::ConnectionReset => "connection reset".to_owned(),
        io::ErrorKind::ConnectionAborted => "connection aborted".to_owned(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof => {
            "the connection closed".to_owned()
        }
        io::ErrorKind::TimedOut => "timed out".to_owned(),
        _ => error.to_string(),
    }
}

/// A size for messages: "312 MiB".
fn size(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    const GIB: u64 = 1024 * MIB;
    match bytes {
        0..KIB => format!("{bytes} bytes"),
        KIB..MIB => format!("{} KiB", bytes / KIB),
        MIB..GIB => format!("{} MiB", bytes / MIB),
        _ => format!("{:.1} GiB", bytes as f64 / GIB as f64),
    }
}

/// Throughput for the log, in MB/s (10^6 bytes), one decimal.
fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64().max(1e-6);
    (bytes as f64 / 1e6 / seconds * 10.0).round() / 10.0
}

/// A duration rounded to milliseconds, for the log.
fn round_ms(elapsed: Duration) -> Duration {
    Duration::from_millis(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}
