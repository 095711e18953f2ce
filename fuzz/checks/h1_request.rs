//! The `h1_request` property, shared by the fuzz target `fuzz/fuzz_targets/h1_request.rs`
//! and the regression test `crates/core/tests/fuzz_regressions.rs` (both include this file
//! with `#[path]`).
//!
//! The lean HTTP/1.1 client (`crates/core/src/h1.rs`) writes the requests the proxy sends
//! Docker, with what pre-hooks produced: the client's method, a request target an adapter
//! may have rewritten (anything `http::uri::PathAndQuery` accepts), the client's headers
//! less the hop-by-hop ones, and a body. Whatever those are, the bytes it writes must read
//! back through hyper's server (`hyper::server::conn::http1`) as exactly that one request:
//! the same method, target, headers (but `Content-Length`, which the client sets to the
//! body's length) and body, and nothing after it.
//!
//! An input is up to four fields separated by the byte `0xFF`: `METHOD`, `TARGET`, `HEADERS`
//! (lines separated by `\n`, each `name:value`) and `BODY`. A method or target that `http`
//! does not accept makes the input uninteresting (the proxy never holds one); a header line
//! it does not accept is left out.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, header,
};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use powerstrip_core::fuzzing;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::timeout;

/// Separates the fields of an input.
pub const SEPARATOR: u8 = 0xFF;

/// How long the server may wait for bytes (on the paused clock: no real time passes).
const WAIT: Duration = Duration::from_secs(3600);

/// The most header fields hyper's server reads. The proxy's listeners are hyper's servers
/// with this limit, so no request the proxy forwards has more.
const MAX_HEADERS: usize = 100;

/// Checks one input; panics, naming the broken property, when one does not hold.
pub fn check(data: &[u8]) {
    let mut fields = data.splitn(4, |&b| b == SEPARATOR);
    let method = fields.next().unwrap_or_default();
    let target = fields
        .next()
        .unwrap_or(b"/v1.47/containers/create?name=web");
    let lines = fields.next().unwrap_or_default();
    let body = Bytes::copy_from_slice(fields.next().unwrap_or_default());

    let Ok(method) = Method::from_bytes(method) else {
        return;
    };
    let Ok(target) = PathAndQuery::try_from(target) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for line in lines.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            headers.append(name, value);
        }
    }
    fuzzing::strip_hop_by_hop(&mut headers);
    let sends_length = !body.is_empty() || headers.contains_key(header::CONTENT_LENGTH);
    let written = headers.len() - headers.get_all(header::CONTENT_LENGTH).iter().count()
        + usize::from(sends_length);
    if written > MAX_HEADERS {
        return;
    }

    let mut uri = http::uri::Parts::default();
    uri.path_and_query = Some(target.clone());
    let uri = Uri::from_parts(uri).expect("a path and query is a URI");
    let mut request = Request::builder()
        .method(method.clone())
        .uri(uri)
        .body(())
        .expect("a valid request");
    *request.headers_mut() = headers.clone();
    let (head, ()) = request.into_parts();
    let bytes = fuzzing::encode_request(&head, &body);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let (served, seen) = runtime.block_on(serve(bytes.clone()));
    let shown = String::from_utf8_lossy(&bytes);
    match served {
        Some(Ok(())) => {}
        Some(Err(error)) => panic!("hyper's server refused {shown:?}: {error}"),
        None => panic!("hyper's server waits for more after {shown:?}"),
    }
    let [seen] = &seen[..] else {
        panic!("hyper's server read {} requests in {shown:?}", seen.len());
    };

    assert_eq!(seen.method, method, "the method of {shown:?}");
    // An empty path goes out as "/" (RFC 9112 §3.2.1): "" and "?q" are "/" and "/?q".
    let expected = match target.as_str() {
        t if t.is_empty() || t.starts_with('?') => format!("/{t}"),
        t => t.to_owned(),
    };
    assert_eq!(seen.target, expected, "the target of {shown:?}");
    assert_eq!(
        seen.version,
        http::Version::HTTP_11,
        "the version of {shown:?}"
    );
    assert_eq!(seen.body, body, "the body of {shown:?}");

    let lengths: Vec<&HeaderValue> = seen
        .headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .collect();
    if sends_length {
        assert_eq!(
            lengths,
            [&HeaderValue::from(body.len())],
            "the Content-Length of {shown:?}"
        );
    } else {
        assert!(lengths.is_empty(), "a Content-Length in {shown:?}");
    }
    assert_eq!(
        fields_of(&seen.headers),
        fields_of(&headers),
        "the headers of {shown:?}"
    );
}

/// The header fields but `Content-Length`, in order, each value without the whitespace
/// around it: a value may start or end with spaces (`HeaderValue` takes them), but they
/// are not part of it on the wire (RFC 9110 §5.5), and parsers drop them.
fn fields_of(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    headers
        .iter()
        .filter(|(name, _)| *name != header::CONTENT_LENGTH)
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.as_bytes().trim_ascii().to_vec(),
            )
        })
        .collect()
}

/// A request as hyper's server read it.
struct Seen {
    method: Method,
    target: String,
    version: http::Version,
    headers: HeaderMap,
    body: Bytes,
}

/// Serves one connection whose peer sends `bytes`, then closes its side; returns how the
/// connection ended (`None`: it still waits) and the requests read.
async fn serve(bytes: Vec<u8>) -> (Option<Result<(), hyper::Error>>, Vec<Seen>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let record = record.clone();
        async move {
            let (head, body) = request.into_parts();
            let body = body.collect().await?.to_bytes();
            record
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Seen {
                    method: head.method,
                    target: head.uri.to_string(),
                    version: head.version,
                    headers: head.headers,
                    body,
                });
            // Not a 2xx: a CONNECT stays plain HTTP, and anything after it would be read
            // as the next request.
            let mut response = Response::new(Empty::<Bytes>::new());
            *response.status_mut() = StatusCode::NOT_FOUND;
            Ok::<_, hyper::Error>(response)
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        // The peer closes its side once it has sent the request: answer it all the same.
        .half_close(true)
        .serve_connection(TokioIo::new(Client { bytes: Some(bytes) }), service);
    let served = timeout(WAIT, connection).await.ok();
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(PoisonError::into_inner));
    (served, seen)
}

/// The client side: sends its bytes, then closes its side; takes any answer.
struct Client {
    bytes: Option<Vec<u8>>,
}

impl AsyncRead for Client {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(bytes) = self.bytes.as_mut() {
            let n = bytes.len().min(buf.remaining());
            buf.put_slice(&bytes[..n]);
            bytes.drain(..n);
            if bytes.is_empty() {
                self.bytes = None;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Client {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
