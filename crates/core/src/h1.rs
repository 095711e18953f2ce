//! A lean HTTP/1.1 client for the common exchange with Docker: a request whose body is in
//! memory (none, a small upload, or what the pre-hooks produced), sent on the Docker
//! connection its client connection keeps, and an answer read from that connection as the
//! client reads it.
//!
//! hyper's client runs each connection as a task of its own and talks to it through
//! channels; for a request that takes a few microseconds end to end, that hand-off costs
//! more than the parsing. Here the request is written and the answer read by the task that
//! serves the client. Uploads of unknown or large size and upgrades (attach, exec) still go
//! through hyper's client, which writes a body and reads an answer at the same time.

use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode, Version};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio_util::io::poll_read_buf;
use tracing::debug;

use crate::connect::{Connector, Stream};

/// The largest response head read (status line and headers; each interim `1xx` head on its
/// own).
const MAX_HEAD: usize = 64 * 1024;
/// The most response headers parsed, and the most trailer fields (hyper's default too).
const MAX_HEADERS: usize = 100;
/// The longest chunk-size line (size, extensions, CRLF) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// A body's chunk extensions, all chunks together, must be shorter than this (hyper's
/// limit too): they are read and ignored.
const CHUNK_EXTENSIONS_LIMIT: u64 = 16 * 1024;
/// A trailer section must be shorter than this (hyper's limit too).
const TRAILERS_LIMIT: usize = 16 * 1024;
/// The largest `Content-Length` accepted (hyper's too: it keeps two values for itself).
const MAX_CONTENT_LENGTH: u64 = u64::MAX - 2;
/// The read buffer's first size: a whole small answer in one read.
const FIRST_READ: usize = 8 * 1024;
/// The largest request buffer kept for the next request.
const MAX_KEPT_OUT: usize = 16 * 1024;
/// Body pieces up to this size are copied out of the read buffer (see `take`).
const COPY_OUT: usize = 4 * 1024;
/// The most read at once while a large body streams.
const STREAM_READ: usize = 64 * 1024;

/// Why an exchange with Docker failed.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// Reading or writing the connection failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Docker closed the connection before a complete answer.
    #[error("the connection closed before a complete response")]
    Closed,
    /// Docker's answer is not valid HTTP/1.1.
    #[error("invalid response: {0}")]
    Invalid(String),
}

/// One connection to Docker with the bytes read from it but not yet used.
pub(crate) struct Conn {
    io: Stream,
    /// Read from Docker, not used yet.
    buf: BytesMut,
    /// The request being written, kept between requests for its capacity.
    out: Vec<u8>,
}

impl Conn {
    /// A new connection, nothing read from it yet.
    pub(crate) fn new(io: Stream) -> Self {
        Conn {
            io,
            buf: BytesMut::with_capacity(FIRST_READ),
            out: Vec::new(),
        }
    }

    /// Writes the next request into the output buffer, kept from the last one.
    pub(crate) fn encode(&mut self, encode: impl Fn(&mut Vec<u8>)) {
        self.out.clear();
        if self.out.capacity() > MAX_KEPT_OUT {
            self.out = Vec::new();
        }
        encode(&mut self.out);
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Conn")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

/// Idle connections to one peer, reused last-in first-out: one for a client connection's
/// Docker connection, a few for an HTTP adapter.
#[derive(Debug)]
pub(crate) struct Idle {
    conns: Mutex<Vec<Conn>>,
    /// The most kept; more are closed.
    max: usize,
}

impl Idle {
    /// Keeps up to `max` idle connections.
    pub(crate) fn new(max: usize) -> Self {
        Idle {
            conns: Mutex::new(Vec::new()),
            max,
        }
    }

    pub(crate) fn take(&self) -> Option<Conn> {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    fn put(&self, conn: Conn) {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        if conns.len() < self.max {
            conns.push(conn);
        }
    }
}

/// When a request that a reused connection failed to carry is sent again on a new one.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Retry {
    /// Only when it could not be written (the peer had closed the connection).
    Unsent,
    /// Also when not one byte of an answer came back: safe for requests that may be
    /// repeated.
    Unanswered,
}

/// Sends a request whose body is `body` on an idle connection (or a new one) and returns
/// the answer, its body still to read. The connection goes back to `idle` once the body has
/// been read to its end, if Docker keeps it open.
///
/// A request that an idle connection could not carry because Docker had closed it (the
/// write failed, or — for `GET` and `HEAD` — it ended before any answer) is sent once more
/// on a new connection.
pub(crate) async fn send(
    idle: &Arc<Idle>,
    connector: &Connector,
    head: &http::request::Parts,
    body: Bytes,
) -> Result<Response<UpstreamBody>, H1Error> {
    let retry = if head.method == Method::GET || head.method == Method::HEAD {
        Retry::Unanswered
    } else {
        Retry::Unsent
    };
    send_with(idle, connector, head.method == Method::HEAD, retry, |out| {
        encode_request(head, &body, out);
    })
    .await
}

/// Writes a whole request: its head (see [`encode_head`]) and `body`.
pub(crate) fn encode_request(head: &http::request::Parts, body: &[u8], out: &mut Vec<u8>) {
    out.reserve(256 + body.len());
    encode_head(head, body.len(), out);
    out.extend_from_slice(body);
}

/// Sends the request `encode` writes (a complete HTTP/1.1 request) on an idle connection
/// (or a new one); see [`send`]. `head_only`: the request is a `HEAD`.
pub(crate) async fn send_with(
    idle: &Arc<Idle>,
    connector: &Connector,
    head_only: bool,
    retry: Retry,
    encode: impl Fn(&mut Vec<u8>),
) -> Result<Response<UpstreamBody>, H1Error> {
    while let Some(mut conn) = idle.take() {
        if !still_idle(&mut conn).await {
            debug!("idle connection was closed or sent bytes unasked; dropping it");
            continue;
        }
        conn.encode(&encode);
        match exchange(conn, head_only).await {
            Ok((response, reading)) => return Ok(respond(response, reading, idle)),
            Err(failure)
                if failure.nothing_sent
                    || (failure.nothing_read && matches!(retry, Retry::Unanswered)) =>
            {
                debug!(error = %failure.error, "idle connection was closed; opening a new one");
                break;
            }
            Err(failure) => return Err(failure.error),
        }
    }
    let mut conn = Conn::new(connector.connect().await?);
    conn.encode(&encode);
    match exchange(conn, head_only).await {
        Ok((response, reading)) => Ok(respond(response, reading, idle)),
        Err(failure) => Err(failure.error),
    }
}

/// Whether an idle connection can carry another request: the peer has neither closed it
/// nor sent anything since the last answer ended. Bytes sent unasked would be read as the
/// start of the next answer (hyper's client refuses them too, and closes the connection).
///
/// It tries one read, which must find nothing. That costs no more than before: the read
/// right after the request is written would otherwise be the one to find nothing (Docker
/// has not answered yet), and now waits for the answer at once.
pub(crate) async fn still_idle(conn: &mut Conn) -> bool {
    std::future::poll_fn(|cx| {
        conn.buf.reserve(1);
        match poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf) {
            // Bytes, the end of the connection, or an error.
            Poll::Ready(_) => Poll::Ready(false),
            Poll::Pending => Poll::Ready(true),
        }
    })
    .await
}

/// The answer with its body to read; the connection goes back to `idle` once it has been.
pub(crate) fn respond(
    response: Response<()>,
    reading: Reading,
    idle: &Arc<Idle>,
) -> Response<UpstreamBody> {
    let mut body = UpstreamBody {
        reading: Some(reading),
        idle: idle.clone(),
    };
    if body.reading.as_ref().is_some_and(Reading::done) {
        body.finish();
    }
    response.map(|()| body)
}

/// An exchange that failed, and how far it got.
pub(crate) struct Failure {
    pub(crate) error: H1Error,
    /// The request could not be written.
    nothing_sent: bool,
    /// Not one byte of an answer arrived.
    nothing_read: bool,
}

impl Failure {
    /// Failed after the request was written, having read something or not.
    fn after_sending(error: H1Error, read_any: bool) -> Self {
        Failure {
            error,
            nothing_sent: false,
            nothing_read: !read_any,
        }
    }
}

/// Writes the request and reads the answer's head.
pub(crate) async fn exchange(
    mut conn: Conn,
    head_only: bool,
) -> Result<(Response<()>, Reading), Failure> {
    let written = async {
        conn.io.write_all(&conn.out).await?;
        conn.io.flush().await
    };
    if let Err(error) = written.await {
        return Err(Failure {
            error: error.into(),
            nothing_sent: true,
            nothing_read: true,
        });
    }
    let mut read_any = !conn.buf.is_empty();
    loop {
        match parse_head(&mut conn.buf, head_only) {
            Ok(Some((response, framing, keep_alive))) => {
                let reading = Reading {
                    conn,
                    framing,
                    keep_alive,
                    extensions: 0,
                };
                return Ok((response, reading));
            }
            Ok(None) if conn.buf.len() >= MAX_HEAD => {
                return Err(Failure::after_sending(head_too_large(), true));
            }
            Ok(None) => {}
            Err(error) => return Err(Failure::after_sending(error, true)),
        }
        conn.buf.reserve(FIRST_READ);
        match tokio_util::io::read_buf(&mut conn.io, &mut conn.buf).await {
            Ok(0) => return Err(Failure::after_sending(H1Error::Closed, read_any)),
            Ok(_) => read_any = true,
            Err(error) => return Err(Failure::after_sending(error.into(), read_any)),
        }
    }
}

/// Writes the request line and headers. The body is in memory, so its length is known:
/// `Content-Length` is set to it (added only when there is a body or the client sent one),
/// and it is the only framing the request carries: a `Transfer-Encoding` would contradict
/// it (RFC 9112 §6.3: the recipient would read the body as chunks and the rest as another
/// request), so none is written. The proxy strips it before it gets here anyway, with the
/// other hop-by-hop headers.
///
/// An empty path is sent as `/` (RFC 9112 §3.2.1): a target of `""` or `"?query"` goes out
/// as `/` or `/?query`, which the recipient reads as the same resource.
fn encode_head(head: &http::request::Parts, body_len: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(head.method.as_str().as_bytes());
    out.push(b' ');
    let target = head.uri.path_and_query().map_or("", |pq| pq.as_str());
    if target.is_empty() || target.starts_with('?') {
        out.push(b'/');
    }
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut length_sent = false;
    for (name, value) in &head.headers {
        if name == header::CONTENT_LENGTH {
            if length_sent {
                continue;
            }
            length_sent = true;
            write_length(body_len, out);
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !length_sent && body_len > 0 {
        write_length(body_len, out);
    }
    out.extend_from_slice(b"\r\n");
}

fn write_length(len: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(len.to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// How the answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    /// Chunked transfer coding, at this point of a chunk.
    Chunked(Chunk),
    /// Until Docker closes the connection.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// A chunk-size line is next.
    Size,
    /// This many bytes of chunk data are left.
    Data(u64),
    /// The CRLF after a chunk's data is next.
    DataEnd,
    /// The trailer section: lines up to an empty one. So far it holds `fields` complete
    /// lines, and its first `checked` bytes are well formed.
    Trailers { checked: usize, fields: usize },
}

/// Parses a complete response head at the start of `buf` (skipping interim `1xx` answers)
/// and consumes it; `None` when more bytes are needed.
#[allow(clippy::type_complexity)]
fn parse_head(
    buf: &mut BytesMut,
    head_only: bool,
) -> Result<Option<(Response<()>, Framing, bool)>, H1Error> {
    loop {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            buf,
            &mut slots,
        ) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(err) => return Err(H1Error::Invalid(err.to_string())),
        };
        if len > MAX_HEAD {
            return Err(head_too_large());
        }
        let code = parsed.code.unwrap_or_default();
        let status = StatusCode::from_u16(code)
            .map_err(|_| H1Error::Invalid(format!("status code {code}")))?;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(H1Error::Invalid(
                "Docker switched protocols on a request that did not ask to".into(),
            ));
        }
        if status.is_informational() {
            buf.advance(len);
            continue;
        }
        let http10 = parsed.version == Some(0);
        // The values are slices of one copy of the head: one allocation for all of them.
        let head = Bytes::copy_from_slice(&buf[..len]);
        let base = buf.as_ptr() as usize;
        let mut map = HeaderMap::with_capacity(parsed.headers.len());
        for h in parsed.headers.iter() {
            let name = header_name(h.name)
                .map_err(|_| H1Error::Invalid(format!("header name {:?}", h.name)))?;
            // httparse's value is a slice of `buf`: the same bytes in `head`.
            let start = h.value.as_ptr() as usize - base;
            let value = HeaderValue::from_maybe_shared(head.slice(start..start + h.value.len()))
                .map_err(|_| H1Error::Invalid(format!("value of header {:?}", h.name)))?;
            map.append(name, value);
        }
        buf.advance(len);
        // A `close` anywhere wins, whatever else the header lists, and in any order.
        let mut keep_alive = !http10;
        let mut close = false;
        for value in map.get_all(header::CONNECTION) {
            for token in value.to_str().unwrap_or_default().split(',') {
                let token = token.trim();
                if token.eq_ignore_ascii_case("close") {
                    close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
        keep_alive &= !close;
        let framing = framing(status, http10, &map, head_only)?;
        if map.contains_key(header::TRANSFER_ENCODING) {
            // A length next to a transfer coding is wrong and must not be passed on
            // (RFC 9112 §6.3): the client would wait for bytes that never come.
            map.remove(header::CONTENT_LENGTH);
        }
        if framing == Framing::Close {
            keep_alive = false;
        }
        let mut response = Response::new(());
        *response.status_mut() = status;
        *response.version_mut() = if http10 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        *response.headers_mut() = map;
        return Ok(Some((response, framing, keep_alive)));
    }
}

/// Header names Docker sends that `http` does not know: named without an allocation.
const DOCKER_HEADERS: [&str; 5] = [
    "api-version",
    "docker-experimental",
    "ostype",
    "builder-version",
    "swarm",
];

fn header_name(name: &str) -> Result<HeaderName, http::header::InvalidHeaderName> {
    for known in DOCKER_HEADERS {
        if name.eq_ignore_ascii_case(known) {
            return Ok(HeaderName::from_static(known));
        }
    }
    HeaderName::from_bytes(name.as_bytes())
}

/// The body's framing (RFC 9112 §6.3).
fn framing(
    status: StatusCode,
    http10: bool,
    headers: &HeaderMap,
    head_only: bool,
) -> Result<Framing, H1Error> {
    if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok(Framing::Length(0));
    }
    if let Some(last) = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .next_back()
    {
        if http10 {
            // HTTP/1.0 has no transfer codings: the framing is faulty (RFC 9112 §6.1), and
            // where the body ends is anyone's guess.
            return Err(H1Error::Invalid(
                "Transfer-Encoding in an HTTP/1.0 response".into(),
            ));
        }
        let chunked_last = last
            .to_str()
            .ok()
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked"));
        return Ok(if chunked_last {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::Close
        });
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.to_str().unwrap_or("x").split(',') {
            let n = decimal(part.trim())
                .filter(|n| *n <= MAX_CONTENT_LENGTH)
                .ok_or_else(|| H1Error::Invalid(format!("Content-Length {value:?}")))?;
            if length.is_some_and(|l| l != n) {
                return Err(H1Error::Invalid("conflicting Content-Length values".into()));
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Framing::Close, Framing::Length))
}

/// A number of one or more decimal digits and nothing else (no sign: `u64::from_str`
/// would take `+5`, which other parsers refuse).
fn decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

fn head_too_large() -> H1Error {
    H1Error::Invalid(format!("response head larger than {MAX_HEAD} bytes"))
}

/// The state of an answer's body being read.
pub(crate) struct Reading {
    conn: Conn,
    framing: Framing,
    keep_alive: bool,
    /// Chunk-extension bytes read so far (see [`CHUNK_EXTENSIONS_LIMIT`]).
    extensions: u64,
}

impl Reading {
    fn done(&self) -> bool {
        self.framing == Framing::Length(0)
    }

    /// Reads more into the buffer; `Ok(false)` at the end of the connection.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: u64) -> Poll<io::Result<bool>> {
        let want = usize::try_from(want).unwrap_or(STREAM_READ);
        if self.conn.buf.capacity() - self.conn.buf.len() < want.min(FIRST_READ) {
            self.conn.buf.reserve(want.clamp(FIRST_READ, STREAM_READ));
        }
        let n = ready!(poll_read_buf(
            Pin::new(&mut self.conn.io),
            cx,
            &mut self.conn.buf
        ))?;
        Poll::Ready(Ok(n > 0))
    }

    /// The next data frame, `None` at the end of the body.
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, H1Error>>> {
        loop {
            match self.framing {
                Framing::Length(0) => return Poll::Ready(None),
                Framing::Length(left) => {
                    if let Some(data) = take(&mut self.conn.buf, left) {
                        self.framing = Framing::Length(left - data.len() as u64);
                        return Poll::Ready(Some(Ok(data)));
                    }
                    if !ready!(self.poll_fill(cx, left))? {
                        return Poll::Ready(Some(Err(H1Error::Closed)));
                    }
                }
                Framing::Close => {
                    if let Some(data) = take(&mut self.conn.buf, u64::MAX) {
                        return Poll::Ready(Some(Ok(data)));
                    }
                    if !ready!(self.poll_fill(cx, STREAM_READ as u64))? {
                        self.framing = Framing::Length(0);
                        return Poll::Ready(None);
                    }
                }
                Framing::Chunked(Chunk::Data(left)) => {
                    if let Some(data) = take(&mut self.conn.buf, left) {
                        let left = left - data.len() as u64;
                        self.framing = Framing::Chunked(if left == 0 {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(left)
                        });
                        return Poll::Ready(Some(Ok(data)));
                    }
                    if !ready!(self.poll_fill(cx, left))? {
                        return Poll::Ready(Some(Err(H1Error::Closed)));
                    }
                }
                Framing::Chunked(chunk) => {
                    let buf = &self.conn.buf[..];
                    let step = match chunk {
                        Chunk::Size => match parse_chunk_line(buf) {
                            Ok(line) => {
                                if self.extensions + line.extensions >= CHUNK_EXTENSIONS_LIMIT {
                                    return Poll::Ready(Some(Err(H1Error::Invalid(
                                        "too many chunk extensions".into(),
                                    ))));
                                }
                                let used = line.complete.map_or(buf.len(), |(used, _)| used);
                                if used > MAX_CHUNK_LINE {
                                    return Poll::Ready(Some(Err(H1Error::Invalid(format!(
                                        "chunk size line longer than {MAX_CHUNK_LINE} bytes"
                                    )))));
                                }
                                line.complete.map(|(used, size)| {
                                    self.extensions += line.extensions;
                                    let next = if size == 0 {
                                        Chunk::Trailers {
                                            checked: 0,
                                            fields: 0,
                                        }
                                    } else {
                                        Chunk::Data(size)
                                    };
                                    (used, next)
                                })
                            }
                            Err(error) => return Poll::Ready(Some(Err(error))),
                        },
                        Chunk::DataEnd => match buf {
                            [b'\r', b'\n', ..] => Some((2, Chunk::Size)),
                            [] | [b'\r'] => None,
                            _ => {
                                return Poll::Ready(Some(Err(H1Error::Invalid(
                                    "chunk data longer than its size".into(),
                                ))));
                            }
                        },
                        Chunk::Trailers { checked, fields } => {
                            match scan_trailers(buf, checked, fields) {
                                // The empty line ends the body; trailer fields are dropped.
                                Ok(Trailers::End(len)) => {
                                    if let Err(error) = check_trailers(&buf[..len]) {
                                        return Poll::Ready(Some(Err(error)));
                                    }
                                    self.conn.buf.advance(len);
                                    self.framing = Framing::Length(0);
                                    return Poll::Ready(None);
                                }
                                Ok(Trailers::More { checked, fields }) => {
                                    if checked >= TRAILERS_LIMIT {
                                        return Poll::Ready(Some(Err(H1Error::Invalid(
                                            "trailer section too large".into(),
                                        ))));
                                    }
                                    self.framing =
                                        Framing::Chunked(Chunk::Trailers { checked, fields });
                                    None
                                }
                                Err(error) => return Poll::Ready(Some(Err(error))),
                            }
                        }
                        Chunk::Data(_) => None,
                    };
                    match step {
                        Some((used, next)) => {
                            self.conn.buf.advance(used);
                            self.framing = Framing::Chunked(next);
                        }
                        None => {
                            if !ready!(self.poll_fill(cx, FIRST_READ as u64))? {
                                return Poll::Ready(Some(Err(H1Error::Closed)));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A chunk-size line read so far.
struct ChunkLine {
    /// The bytes it takes, CRLF included, and the chunk's size: `None` while incomplete.
    complete: Option<(usize, u64)>,
    /// Extension bytes in it (so far).
    extensions: u64,
}

/// Reads the chunk-size line at the start of `buf` (RFC 9112 §7.1): the size in hex, then
/// optional whitespace and extensions (ignored), then CRLF; the grammar hyper reads. A bad
/// byte is an error as soon as it arrives, not once the line is complete.
fn parse_chunk_line(buf: &[u8]) -> Result<ChunkLine, H1Error> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Size,
        Space,
        Extension,
        LineFeed,
    }
    let invalid = |what: &str| Err(H1Error::Invalid(format!("chunk size line: {what}")));
    let mut state = State::Size;
    let mut size: u64 = 0;
    let mut extensions = 0;
    for (i, &byte) in buf.iter().enumerate() {
        state = match (state, byte) {
            (State::Size, _) if byte.is_ascii_hexdigit() => {
                let digit = (byte as char).to_digit(16).map_or(0, u64::from);
                size = match size.checked_mul(16).and_then(|s| s.checked_add(digit)) {
                    Some(size) => size,
                    None => return invalid("the size overflows"),
                };
                State::Size
            }
            (State::Size, _) if i == 0 => return invalid("no size"),
            (State::Size | State::Space, b' ' | b'\t') => State::Space,
            (State::Size | State::Space, b';') => State::Extension,
            (State::Size | State::Space | State::Extension, b'\r') => State::LineFeed,
            (State::Size | State::Space, _) => return invalid("a bad byte after the size"),
            (State::Extension, b'\n') => return invalid("a line feed in an extension"),
            (State::Extension, _) => {
                extensions += 1;
                State::Extension
            }
            (State::LineFeed, b'\n') => {
                return Ok(ChunkLine {
                    complete: Some((i + 1, size)),
                    extensions,
                });
            }
            (State::LineFeed, _) => return invalid("a carriage return without a line feed"),
        };
    }
    Ok(ChunkLine {
        complete: None,
        extensions,
    })
}

/// How far a trailer section has been read.
enum Trailers {
    /// It ends after this many bytes (the empty line included).
    End(usize),
    /// Incomplete: its first `checked` bytes hold `fields` complete lines.
    More { checked: usize, fields: usize },
}

/// Reads on in the trailer section at the start of `buf`, from byte `checked` (a line
/// start, or inside a line), which follows `fields` complete lines. Lines end with CRLF;
/// a CR or LF anywhere else is refused (a bare LF, which some parsers take for a line end
/// and others for a byte of the field, most of all).
fn scan_trailers(buf: &[u8], mut checked: usize, mut fields: usize) -> Result<Trailers, H1Error> {
    while let Some(&byte) = buf.get(checked) {
        match byte {
            b'\r' => match buf.get(checked + 1) {
                None => break,
                Some(b'\n') if checked == 0 || buf[..checked].ends_with(b"\r\n") => {
                    return Ok(Trailers::End(checked + 2));
                }
                Some(b'\n') => {
                    if fields == MAX_HEADERS {
                        return Err(H1Error::Invalid("too many trailer fields".into()));
                    }
                    fields += 1;
                    checked += 2;
                }
                Some(_) => {
                    return Err(H1Error::Invalid(
                        "a carriage return without a line feed in the trailers".into(),
                    ));
                }
            },
            b'\n' => {
                return Err(H1Error::Invalid(
                    "a line feed without a carriage return in the trailers".into(),
                ));
            }
            _ => checked += 1,
        }
    }
    Ok(Trailers::More { checked, fields })
}

/// A complete trailer section must hold well-formed fields (they are dropped: nothing
/// the proxy passes on depends on them, but a peer that sends bad ones is not trusted
/// with the rest).
fn check_trailers(section: &[u8]) -> Result<(), H1Error> {
    if section.len() >= TRAILERS_LIMIT {
        return Err(H1Error::Invalid("trailer section too large".into()));
    }
    if section == b"\r\n" {
        return Ok(());
    }
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let invalid = || H1Error::Invalid("malformed trailer field".into());
    match httparse::parse_headers(section, &mut fields) {
        Ok(httparse::Status::Complete((_, fields))) => {
            for field in fields.iter() {
                HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| invalid())?;
                HeaderValue::from_bytes(field.value).map_err(|_| invalid())?;
            }
            Ok(())
        }
        _ => Err(invalid()),
    }
}

/// Up to `max` buffered bytes, `None` when nothing is buffered. A small piece is copied
/// out, so that the read buffer stays unshared and is reused for the next answer instead
/// of being reallocated; a large one is split off without copying.
fn take(buf: &mut BytesMut, max: u64) -> Option<Bytes> {
    if buf.is_empty() {
        return None;
    }
    let n = usize::try_from(max).map_or(buf.len(), |max| max.min(buf.len()));
    if n <= COPY_OUT {
        let piece = Bytes::copy_from_slice(&buf[..n]);
        buf.advance(n);
        return Some(piece);
    }
    Some(buf.split_to(n).freeze())
}

/// The body of an answer from Docker, read from the connection as it is polled. Once read
/// to its end, the connection returns to the idle ones it came from (for a proxied request:
/// its client connection's) for the next request; dropped before that, it closes the
/// connection.
pub struct UpstreamBody {
    reading: Option<Reading>,
    idle: Arc<Idle>,
}

impl fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamBody")
            .field("framing", &self.reading.as_ref().map(|r| r.framing))
            .finish_non_exhaustive()
    }
}

impl UpstreamBody {
    /// The body is complete: keep the connection if it can carry the next request.
    fn finish(&mut self) {
        if let Some(reading) = self.reading.take()
            && reading.keep_alive
            && reading.conn.buf.is_empty()
        {
            self.idle.put(reading.conn);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = self.get_mut();
        let Some(reading) = this.reading.as_mut() else {
            return Poll::Ready(None);
        };
        match ready!(reading.poll_data(cx)) {
            Some(Ok(data)) => {
                if reading.done() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Some(Err(err)) => {
                this.reading = None;
                Poll::Ready(Some(Err(err)))
            }
            None => {
                this.finish();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.reading.as_ref().is_none_or(Reading::done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.reading.as_ref().map(|r| r.framing) {
            None => SizeHint::with_exact(0),
            Some(Framing::Length(left)) => SizeHint::with_exact(left),
            Some(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> Result<Option<(Response<()>, Framing, bool)>, H1Error> {
        parse_head(&mut BytesMut::from(bytes), false)
    }

    #[test]
    fn framing_follows_the_rfc() {
        let (r, f, k) = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((r.status().as_u16(), f, k), (200, Framing::Length(5), true));
        let (_, f, _) =
            head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(f, Framing::Chunked(Chunk::Size));
        let (_, f, k) = head(b"HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!((f, k), (Framing::Close, false));
        let (_, f, k) = head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((f, k), (Framing::Length(0), false));
        let (_, _, k) = head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!k);
        let (r, f, _) = head(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((r.status().as_u16(), f), (204, Framing::Length(0)));
        assert!(
            head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n")
                .unwrap()
                .is_none()
        );
        assert!(head(b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n").is_err());
        assert!(head(b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n").is_err());
        assert!(head(b"NOT HTTP AT ALL\r\n\r\n").is_err());
        assert!(head(b"HTTP/1.1 101 Switching Protocols\r\n\r\n").is_err());
    }

    #[test]
    fn request_heads_carry_the_real_length() {
        let (mut parts, ()) = http::Request::post("/v1.41/containers/create?name=x")
            .header("host", "docker")
            .header("content-length", "999")
            .body(())
            .unwrap()
            .into_parts();
        let mut out = Vec::new();
        encode_head(&parts, 12, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /v1.41/containers/create?name=x HTTP/1.1\r\nhost: docker\r\ncontent-length: 12\r\n\r\n"
        );
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.method = Method::GET;
        let mut out = Vec::new();
        encode_head(&parts, 0, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /v1.41/containers/create?name=x HTTP/1.1\r\nhost: docker\r\n\r\n"
        );
    }

    #[test]
    fn framing_refuses_what_other_parsers_read_differently() {
        // A sign, an HTTP/1.0 transfer coding, a length no one can count to.
        assert!(head(b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n").is_err());
        assert!(head(b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(head(b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n").is_err());
        // A 204 has no body, whatever its headers say.
        let (_, f, _) = head(b"HTTP/1.0 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(f, Framing::Length(0));
        // `close` wins over `keep-alive`, in any order.
        for connection in ["close, keep-alive", "keep-alive\r\nConnection: close"] {
            let text =
                format!("HTTP/1.0 200 OK\r\nConnection: {connection}\r\nContent-Length: 0\r\n\r\n");
            let (_, _, k) = head(text.as_bytes()).unwrap().unwrap();
            assert!(!k, "{connection:?}");
        }
        let (_, _, k) =
            head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(k);
    }

    #[test]
    fn chunk_size_lines() {
        let complete = |line: &[u8]| parse_chunk_line(line).ok().and_then(|l| l.complete);
        assert_eq!(complete(b"1a\r\n"), Some((4, 26)));
        assert_eq!(complete(b"0;name=value\r\n"), Some((14, 0)));
        assert_eq!(complete(b"5 \t;x\r\nhello"), Some((7, 5)));
        assert_eq!(complete(b"0000000000000000000002\r\n"), Some((24, 2)));
        assert_eq!(parse_chunk_line(b"5;ab").unwrap().extensions, 2);
        assert!(parse_chunk_line(b"5;ab").unwrap().complete.is_none());
        for bad in [
            &b"\r\n"[..],
            b";x\r\n",
            b"x\r\n",
            b"5 5\r\n",
            b"5\n",
            b"5;a\nb\r\n",
            b"5\rx",
            b"10000000000000000\r\n",
        ] {
            assert!(parse_chunk_line(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn trailer_sections() {
        let end = |section: &[u8]| match scan_trailers(section, 0, 0) {
            Ok(Trailers::End(len)) => Some(len),
            _ => None,
        };
        assert_eq!(end(b"\r\n"), Some(2));
        assert_eq!(end(b"X-Sum: 1\r\nX-More: 2\r\n\r\nnext"), Some(23));
        assert!(matches!(
            scan_trailers(b"X-Sum: 1\r\nX-Mo", 0, 0),
            Ok(Trailers::More {
                checked: 14,
                fields: 1
            })
        ));
        assert!(matches!(
            scan_trailers(b"X-Sum: 1\r", 0, 0),
            Ok(Trailers::More { checked: 8, .. })
        ));
        assert!(scan_trailers(b"X-Sum: 1\n\r\n", 0, 0).is_err());
        assert!(scan_trailers(b"X-Sum: 1\rX", 0, 0).is_err());
        assert!(scan_trailers(b"\rX", 0, 0).is_err());
        assert!(check_trailers(b"X-Sum: 1\r\n\r\n").is_ok());
        assert!(check_trailers(b"not a field\r\n\r\n").is_err());
        assert!(check_trailers(b" X: folded\r\n\r\n").is_err());
    }

    #[test]
    fn request_heads_never_carry_a_second_framing() {
        let (parts, ()) = http::Request::post("/v1.41/build")
            .header("transfer-encoding", "chunked")
            .header("content-type", "application/json")
            .body(())
            .unwrap()
            .into_parts();
        let mut out = Vec::new();
        encode_request(&parts, b"{}", &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /v1.41/build HTTP/1.1\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
        );
    }

    #[test]
    fn request_targets_without_a_path_get_one() {
        for (target, written) in [("?all=1", "/?all=1"), ("/x?y", "/x?y"), ("*", "*")] {
            let mut uri = http::uri::Parts::default();
            uri.path_and_query = Some(target.parse().unwrap());
            let (parts, ()) = http::Request::get(http::Uri::from_parts(uri).unwrap())
                .body(())
                .unwrap()
                .into_parts();
            let mut out = Vec::new();
            encode_head(&parts, 0, &mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                format!("GET {written} HTTP/1.1\r\n\r\n")
            );
        }
    }

    /// A connection that Docker wrote to unasked, after its answer, is not reused: the
    /// next request goes on a new connection and gets its own answer.
    #[tokio::test]
    async fn stray_bytes_on_an_idle_connection_are_not_read_as_the_next_answer() {
        use http_body_util::BodyExt;
        use tokio::io::AsyncReadExt;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let (stray_sent, stray) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (mut first, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 1024];
            let _ = first.read(&mut request).await.unwrap();
            first
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
                .await
                .unwrap();
            // Read in full by the client; then an answer nobody asked for.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            first
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstale")
                .await
                .unwrap();
            stray_sent.send(()).unwrap();
            let (mut second, _) = listener.accept().await.unwrap();
            let _ = second.read(&mut request).await.unwrap();
            second
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")
                .await
                .unwrap();
            // Keep both open until the client is done.
            let _ = second.read(&mut request).await;
            drop(first);
        });
        let idle = Arc::new(Idle::new(1));
        let connector = Connector::new(crate::connect::Target::Unix(Arc::new(path)));
        let (head, ()) = http::Request::get("/v1.47/version")
            .body(())
            .unwrap()
            .into_parts();
        let mut bodies = Vec::new();
        let response = send(&idle, &connector, &head, Bytes::new()).await.unwrap();
        bodies.push(response.into_body().collect().await.unwrap().to_bytes());
        stray.await.unwrap();
        // Let the stray answer arrive.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let response = send(&idle, &connector, &head, Bytes::new()).await.unwrap();
        bodies.push(response.into_body().collect().await.unwrap().to_bytes());
        assert_eq!(bodies, [&b"first"[..], &b"second"[..]]);
        drop(idle);
        server.await.unwrap();
    }

    /// An idle connection is reused when nothing has arrived on it, and dropped when the
    /// peer has closed it.
    #[tokio::test]
    async fn idle_connections_are_checked_before_reuse() {
        let (ours, mut theirs) = tokio::net::UnixStream::pair().unwrap();
        let mut conn = Conn::new(Stream::Unix(ours));
        assert!(still_idle(&mut conn).await);
        // What arrives is seen once the runtime has polled for events, as it always has
        // between two requests.
        let settle = || tokio::time::sleep(std::time::Duration::from_millis(10));
        theirs.write_all(b"x").await.unwrap();
        settle().await;
        assert!(!still_idle(&mut conn).await);
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let mut conn = Conn::new(Stream::Unix(ours));
        assert!(still_idle(&mut conn).await);
        drop(theirs);
        settle().await;
        assert!(!still_idle(&mut conn).await);
    }
}
