//! A bench helper (run by `benches/e2e.py`, not a criterion bench): a fast fake Docker
//! daemon on a unix socket, so that the end-to-end bench measures the proxy and not
//! dockerd. A plain hyper HTTP/1.1 server (the SDK's server loop) on one thread:
//!
//! - `GET /_ping` → `OK`, `GET /version` (any API version prefix) → dockerd 20.10's JSON;
//! - `POST /containers/create` → `201` and a small JSON (the body is read and dropped);
//! - `PUT|POST /containers/{id}/archive` → the body is read and dropped; `200` with
//!   `X-Bench-Received: <bytes>` (the upload sink);
//! - `GET /containers/{id}/archive?size=N[&chunked=1]` → N bytes of `application/x-tar`,
//!   with `Content-Length` or chunked (the download source);
//! - anything else → Docker's `404 {"message":"page not found"}`.
//!
//! `fake_docker --listen unix:///path.sock`; stops on SIGTERM or SIGINT. `cargo bench`
//! runs every bench target with `--bench`: without `--listen` this binary says what it is
//! and exits.

use std::convert::Infallible;
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use powerstrip_adapter::net::{Address, Listener, ServerOptions, serve_http};

const VERSION: &str = include_str!("data/version.json");
const CREATED: &str =
    r#"{"Id":"38d3b4c06f1b313d0885a02c146f272433b42fbdf2afc856d8cfd44e1e7ae35f","Warnings":[]}"#;
const NOT_FOUND: &str = r#"{"message":"page not found"}"#;

/// The size of each frame of a download.
const FRAME: usize = 256 << 10;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let address = match args.as_slice() {
        [flag, address] if flag == "--listen" => address.clone(),
        _ => {
            eprintln!(
                "fake_docker: a helper of benches/e2e.py (fake_docker --listen unix:///path.sock); nothing to run as a bench"
            );
            return ExitCode::SUCCESS;
        }
    };
    let address: Address = match address.parse() {
        Ok(address) => address,
        Err(err) => {
            eprintln!("fake_docker: {err}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("fake_docker: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match Listener::bind(&address).await {
            Ok(listener) => listener,
            Err(err) => {
                eprintln!("fake_docker: {err}");
                return ExitCode::FAILURE;
            }
        };
        println!("{}", listener.local_address());
        let service = service_fn(|request| async { Ok::<_, Infallible>(answer(request).await) });
        serve_http(
            vec![listener],
            service,
            ServerOptions::default(),
            powerstrip_adapter::cli::shutdown_signal(),
        )
        .await;
        ExitCode::SUCCESS
    })
}

/// The path without an API version prefix (`/v1.41/version` → `/version`).
fn endpoint(path: &str) -> &str {
    match path.strip_prefix("/v") {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => {
            rest.find('/').map_or(path, |i| &rest[i..])
        }
        _ => path,
    }
}

fn query_value<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find_map(|(k, v)| (k == key).then_some(v))
}

async fn answer(request: Request<Incoming>) -> Response<Reply> {
    let path = endpoint(request.uri().path());
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let method = request.method().clone();
    match (method, segments.as_slice()) {
        (Method::GET | Method::HEAD, ["_ping"]) => reply(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            Reply::text("OK"),
        ),
        (Method::GET, ["version"]) => {
            reply(StatusCode::OK, "application/json", Reply::text(VERSION))
        }
        (Method::POST, ["containers", "create"]) => {
            let _ = drain(request.into_body()).await;
            reply(
                StatusCode::CREATED,
                "application/json",
                Reply::text(CREATED),
            )
        }
        (Method::PUT | Method::POST, ["containers", _, "archive"]) => {
            let received = drain(request.into_body()).await;
            let mut response = reply(StatusCode::OK, "", Reply::text(""));
            response
                .headers_mut()
                .insert("x-bench-received", HeaderValue::from(received));
            response
        }
        (Method::GET, ["containers", _, "archive"]) => {
            let query = request.uri().query().unwrap_or_default();
            let size = query_value(query, "size")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let chunked = query_value(query, "chunked") == Some("1");
            reply(
                StatusCode::OK,
                "application/x-tar",
                Reply::source(size, !chunked),
            )
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "application/json",
            Reply::text(NOT_FOUND),
        ),
    }
}

/// Reads a request body to its end; returns how many bytes it had.
async fn drain(mut body: Incoming) -> u64 {
    let mut received = 0;
    while let Some(Ok(frame)) = body.frame().await {
        if let Some(data) = frame.data_ref() {
            received += data.len() as u64;
        }
    }
    received
}

/// A response with dockerd's usual headers.
fn reply(status: StatusCode, content_type: &'static str, body: Reply) -> Response<Reply> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert("api-version", HeaderValue::from_static("1.41"));
    if !content_type.is_empty() {
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    headers.insert("docker-experimental", HeaderValue::from_static("false"));
    headers.insert("ostype", HeaderValue::from_static("linux"));
    headers.insert(
        header::SERVER,
        HeaderValue::from_static("Docker/20.10.24+dfsg1 (linux)"),
    );
    response
}

/// A body of `remaining` bytes served from one shared buffer: a small answer (the buffer
/// is the answer), or a large download (the buffer repeated), with an exact size (hyper
/// sends `Content-Length`) or not (chunked).
struct Reply {
    chunk: Bytes,
    remaining: u64,
    exact: bool,
}

impl Reply {
    fn text(text: &'static str) -> Self {
        Reply {
            chunk: Bytes::from_static(text.as_bytes()),
            remaining: text.len() as u64,
            exact: true,
        }
    }

    fn source(size: u64, exact: bool) -> Self {
        static FILL: [u8; FRAME] = [0x5a; FRAME];
        Reply {
            chunk: Bytes::from_static(&FILL),
            remaining: size,
            exact,
        }
    }
}

impl Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}
