//! The `h1_response` property, shared by the fuzz target `fuzz/fuzz_targets/h1_response.rs`
//! and the regression test `crates/core/tests/fuzz_regressions.rs` (both include this file
//! with `#[path]`).
//!
//! The lean HTTP/1.1 client (`crates/core/src/h1.rs`) reads bytes the proxy did not write:
//! Docker's answers and every HTTP adapter's. It must read any of them as hyper's client
//! (`hyper::client::conn::http1`, default settings, as the proxy uses it) does: both refuse
//! the answer, or both wait for more, or both give the same status, version, headers, body
//! bytes and end of body, and agree whether the connection can carry another request.
//! Where the lean client is stricter on purpose, [`stricter_on_purpose`] names the case;
//! `docs/h1-client.md` says why.
//!
//! An input is `FLAGS COUNT SIZES RESPONSE`:
//! - `FLAGS`, bit 0: the request is a `HEAD` (else a `GET`); bit 1: the peer closes the
//!   connection after the response (else it keeps it open and sends nothing more); bit 2:
//!   the read sizes repeat until the response is used up.
//! - `COUNT` (modulo 16) bytes of `SIZES`: the response arrives in reads of these sizes, in
//!   order (0: the read is not ready once, and the reader is woken at once), then the rest
//!   in one read (unless bit 2 repeats them).
//! - `RESPONSE`: the bytes the peer answers, once the request has been written.
//!
//! Both clients run on a current-thread runtime whose clock is paused: when nothing can make
//! progress the clock jumps to the next timer, so a client that waits for bytes that never
//! come times out at once, and waiting is an outcome like any other.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use powerstrip_core::fuzzing;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::timeout;

/// How long a client may wait for bytes (on the paused clock: no real time passes).
const WAIT: Duration = Duration::from_secs(3600);

/// The request both clients send.
const TARGET: &str = "/v1.47/containers/json?all=1";

/// The lean client's limits (`crates/core/src/h1.rs`) that hyper's client does not share.
const LEAN_MAX_HEAD: usize = 64 * 1024;
const LEAN_MAX_CHUNK_LINE: usize = 4096;

/// Checks one input; panics, naming the broken property, when one does not hold.
pub fn check(data: &[u8]) {
    let Some(input) = Input::parse(data) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let (lean, hyper) = runtime.block_on(async {
        let lean = lean(&input).await;
        let hyper = hyper(&input).await;
        (lean, hyper)
    });
    if lean.agrees_with(&hyper)
        || refused_sooner(&input, &lean, &hyper)
        || stricter_on_purpose(&input, &lean, &hyper)
    {
        return;
    }
    panic!(
        "the lean client and hyper disagree on a response to {}{}:\n  response: {}\n  lean:  {}\n  hyper: {}",
        input.method,
        if input.close { " (then EOF)" } else { "" },
        shorten(format!("{:?}", String::from_utf8_lossy(&input.response))),
        shorten(format!("{lean:?}")),
        shorten(format!("{hyper:?}")),
    );
}

/// At most a few hundred characters of `text`, for a report that stays readable.
fn shorten(text: String) -> String {
    const MAX: usize = 600;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}… ({} more bytes)", &text[..cut], text.len() - cut),
        None => text,
    }
}

/// The lean client refuses a malformed head as soon as the bad byte arrives; hyper, once a
/// read has left the head incomplete, parses it again only when the end of the head seems
/// to have arrived, and until then waits. Both parse with httparse, the same way: the
/// bytes hyper waits on are refused by httparse too, and hyper refuses them as well once
/// the head ends or the peer closes the connection.
fn refused_sooner(input: &Input, lean: &Outcome, hyper: &Outcome) -> bool {
    matches!(hyper, Outcome::Waiting)
        && lean.failed_with("invalid response")
        && head_is_malformed(&input.response)
}

/// httparse refuses the response head (after any interim `1xx` ones), as hyper's client
/// parses it.
fn head_is_malformed(mut bytes: &[u8]) -> bool {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(bytes) {
            Err(_) => return true,
            Ok(httparse::Status::Partial) => return false,
            Ok(httparse::Status::Complete(len)) => match response.code {
                Some(100 | 102..=199) => bytes = &bytes[len..],
                _ => return false,
            },
        }
    }
}

/// The cases where the lean client refuses what hyper accepts, each on purpose
/// (`docs/h1-client.md`, "Stricter than hyper").
fn stricter_on_purpose(input: &Input, lean: &Outcome, hyper: &Outcome) -> bool {
    // 1. A 101 to a request that did not ask to switch protocols: hyper hands it over as an
    //    upgrade; the lean client never asks for one, and refuses it.
    if let Outcome::Answer(answer) = hyper
        && answer.status == StatusCode::SWITCHING_PROTOCOLS
    {
        return lean.failed_with("switched protocols");
    }
    // 2. A response head larger than 64 KiB (hyper reads up to about 400 KiB).
    if input.response.len() > LEAN_MAX_HEAD && lean.failed_with("response head larger than") {
        return true;
    }
    // The rest are refusals of a body: the head must agree, and the body bytes read before
    // the lean client gave up must be what hyper read too.
    let (Outcome::Answer(lean_answer), Outcome::Answer(hyper_answer)) = (lean, hyper) else {
        return false;
    };
    let BodyEnd::Failed(reason) = &lean_answer.end else {
        return false;
    };
    if lean_answer.head() != hyper_answer.head()
        || !hyper_answer.body.starts_with(&lean_answer.body)
    {
        return false;
    }
    // 3. A chunk-size line longer than 4 KiB (hyper bounds only the extensions, 16 KiB for
    //    the whole body, and reads any amount of whitespace).
    if reason.contains("chunk size line longer than") {
        return input.response.len() > LEAN_MAX_CHUNK_LINE;
    }
    // 4. A bare LF in a trailer section: hyper takes it for a byte of the field or for the
    //    end of the line, depending on where it is.
    reason.contains("a line feed without a carriage return in the trailers")
}

/// One input, read.
#[derive(Debug)]
struct Input {
    method: Method,
    /// The peer closes the connection after the response.
    close: bool,
    reads: Vec<usize>,
    /// The read sizes repeat.
    cycle: bool,
    response: Vec<u8>,
}

impl Input {
    fn parse(data: &[u8]) -> Option<Input> {
        let (&flags, rest) = data.split_first()?;
        let (&count, rest) = rest.split_first()?;
        let count = usize::from(count % 16);
        if rest.len() < count {
            return None;
        }
        let (sizes, response) = rest.split_at(count);
        Some(Input {
            method: if flags & 1 == 1 {
                Method::HEAD
            } else {
                Method::GET
            },
            close: flags & 2 == 2,
            cycle: flags & 4 == 4 && sizes.iter().any(|&s| s > 0),
            reads: sizes.iter().map(|&s| usize::from(s)).collect(),
            response: response.to_vec(),
        })
    }

    /// The peer, as a stream for one client.
    fn peer(&self) -> Peer {
        let mut reads = VecDeque::new();
        let mut rest = &self.response[..];
        let mut sizes = self.reads.iter().copied().cycle().take(if self.cycle {
            usize::MAX
        } else {
            self.reads.len()
        });
        while !rest.is_empty() {
            match sizes.next() {
                Some(0) => reads.push_back(Read::NotReady),
                Some(size) => {
                    let (now, later) = rest.split_at(size.min(rest.len()));
                    reads.push_back(Read::Bytes(now.to_vec()));
                    rest = later;
                }
                None => {
                    reads.push_back(Read::Bytes(rest.to_vec()));
                    rest = &[];
                }
            }
        }
        Peer(Arc::new(Mutex::new(Script {
            reads,
            close: self.close,
            asked: false,
            wrote: false,
            reader: None,
        })))
    }

    fn request(&self) -> Request<Empty<Bytes>> {
        Request::builder()
            .method(self.method.clone())
            .uri(TARGET)
            .header(header::HOST, "docker")
            .body(Empty::new())
            .expect("a valid request")
    }
}

/// What a client made of the response.
#[derive(Debug)]
enum Outcome {
    /// It refused the response (why, for the report).
    Failed(String),
    /// It waits for more of the head.
    Waiting,
    Answer(Answer),
}

struct Answer {
    status: StatusCode,
    version: Version,
    /// In the order received, as `(name, value)`.
    headers: Vec<(String, Bytes)>,
    /// The body bytes read (to the end, or until the body failed or stalled).
    body: Vec<u8>,
    end: BodyEnd,
}

#[derive(Debug)]
enum BodyEnd {
    /// Read to its end; whether the connection can carry another request.
    Complete { reusable: bool },
    /// The body broke off (why, for the report).
    Failed(String),
    /// It waits for more of the body.
    Waiting,
}

impl Outcome {
    fn agrees_with(&self, other: &Outcome) -> bool {
        match (self, other) {
            (Outcome::Failed(_), Outcome::Failed(_)) | (Outcome::Waiting, Outcome::Waiting) => true,
            (Outcome::Answer(a), Outcome::Answer(b)) => {
                a.head() == b.head()
                    && a.body == b.body
                    && match (&a.end, &b.end) {
                        (BodyEnd::Complete { reusable: a }, BodyEnd::Complete { reusable: b }) => {
                            a == b
                        }
                        (BodyEnd::Failed(_), BodyEnd::Failed(_))
                        | (BodyEnd::Waiting, BodyEnd::Waiting) => true,
                        _ => false,
                    }
            }
            _ => false,
        }
    }

    fn failed_with(&self, reason: &str) -> bool {
        matches!(self, Outcome::Failed(why) if why.contains(reason))
    }
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<String> = self
            .headers
            .iter()
            .map(|(name, value)| format!("{name}: {}", String::from_utf8_lossy(value)))
            .collect();
        f.debug_struct("Answer")
            .field("status", &self.status.as_u16())
            .field("version", &self.version)
            .field("headers", &headers)
            .field("body", &String::from_utf8_lossy(&self.body))
            .field("end", &self.end)
            .finish()
    }
}

impl Answer {
    fn new(head: http::response::Parts) -> Self {
        let mut headers = head.headers;
        if headers.contains_key(header::TRANSFER_ENCODING) {
            // The lean client drops a Content-Length sent with a transfer coding, so that
            // the proxy never passes the contradiction on (RFC 9112 §6.3); hyper keeps it.
            // Both frame the body by the coding.
            headers.remove(header::CONTENT_LENGTH);
        }
        Answer {
            status: head.status,
            version: head.version,
            headers: list(&headers),
            body: Vec::new(),
            end: BodyEnd::Waiting,
        }
    }

    fn head(&self) -> (StatusCode, Version, &[(String, Bytes)]) {
        (self.status, self.version, &self.headers)
    }
}

fn list(headers: &HeaderMap) -> Vec<(String, Bytes)> {
    headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                Bytes::copy_from_slice(value.as_bytes()),
            )
        })
        .collect()
}

/// The lean client's reading of the response.
async fn lean(input: &Input) -> Outcome {
    let (head, _) = input.request().into_parts();
    let peer = input.peer();
    let (response, connection) =
        match timeout(WAIT, fuzzing::send(peer.clone(), &head, Bytes::new())).await {
            Err(_) => return Outcome::Waiting,
            Ok(Err(error)) => return Outcome::Failed(error.to_string()),
            Ok(Ok(sent)) => sent,
        };
    let (head, mut body) = response.into_parts();
    let mut answer = Answer::new(head);
    answer.end = loop {
        match timeout(WAIT, body.frame()).await {
            Err(_) => break BodyEnd::Waiting,
            Ok(None) => {
                peer.settle();
                break BodyEnd::Complete {
                    reusable: connection.reusable().await,
                };
            }
            Ok(Some(Err(error))) => break BodyEnd::Failed(error.to_string()),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    answer.body.extend_from_slice(&data);
                }
            }
        }
    };
    Outcome::Answer(answer)
}

/// hyper's client's reading of the response.
async fn hyper(input: &Input) -> Outcome {
    let handshake = hyper::client::conn::http1::handshake(TokioIo::new(input.peer()));
    let (mut sender, connection) = match handshake.await {
        Ok(handshake) => handshake,
        Err(error) => return Outcome::Failed(error.to_string()),
    };
    let connection = tokio::spawn(connection);
    let outcome = async {
        let response = match timeout(WAIT, sender.send_request(input.request())).await {
            Err(_) => return Outcome::Waiting,
            Ok(Err(error)) => return Outcome::Failed(error.to_string()),
            Ok(Ok(response)) => response,
        };
        let (head, mut body) = response.into_parts();
        let mut answer = Answer::new(head);
        answer.end = loop {
            match timeout(WAIT, body.frame()).await {
                Err(_) => break BodyEnd::Waiting,
                Ok(None) => {
                    // Let the connection's task go as far as it can (it reads on while
                    // idle: unasked bytes or the end of the connection close it), then ask
                    // whether it takes another request.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    let reusable = matches!(timeout(WAIT, sender.ready()).await, Ok(Ok(())));
                    break BodyEnd::Complete { reusable };
                }
                Ok(Some(Err(error))) => break BodyEnd::Failed(error.to_string()),
                Ok(Some(Ok(frame))) => {
                    // Trailers are not compared: the lean client checks and drops them.
                    if let Ok(data) = frame.into_data() {
                        answer.body.extend_from_slice(&data);
                    }
                }
            }
        };
        Outcome::Answer(answer)
    }
    .await;
    connection.abort();
    outcome
}

/// One read of the peer's.
#[derive(Debug)]
enum Read {
    Bytes(Vec<u8>),
    /// Not ready; the reader is woken at once.
    NotReady,
}

/// The peer: takes the request, then answers the scripted reads. A clone shares them.
#[derive(Clone)]
struct Peer(Arc<Mutex<Script>>);

struct Script {
    reads: VecDeque<Read>,
    close: bool,
    /// The request has been written and flushed: the answer may come.
    asked: bool,
    wrote: bool,
    /// Woken when the answer may come.
    reader: Option<Waker>,
}

impl Peer {
    fn script(&self) -> std::sync::MutexGuard<'_, Script> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A moment passes: whatever was not ready yet has arrived. (hyper's connection task
    /// reads on by itself when woken; the lean client looks only when it would reuse the
    /// connection, which is later.)
    fn settle(&self) {
        self.script()
            .reads
            .retain(|read| !matches!(read, Read::NotReady));
    }
}

impl AsyncRead for Peer {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut script = self.script();
        if !script.asked {
            script.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let close = script.close;
        match script.reads.front_mut() {
            None if close => Poll::Ready(Ok(())),
            // Open, and nothing more will come: nothing will wake the reader.
            None => Poll::Pending,
            Some(Read::NotReady) => {
                script.reads.pop_front();
                cx.waker().wake_by_ref();
                Poll::Pending
            }
            Some(Read::Bytes(bytes)) => {
                let n = bytes.len().min(buf.remaining());
                buf.put_slice(&bytes[..n]);
                bytes.drain(..n);
                if bytes.is_empty() {
                    script.reads.pop_front();
                }
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for Peer {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.script().wrote |= !buf.is_empty();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut script = self.script();
        if script.wrote && !script.asked {
            script.asked = true;
            if let Some(reader) = script.reader.take() {
                reader.wake();
            }
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
