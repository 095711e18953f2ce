//! [`TestClient`]: a small HTTP/1.1 client over a unix socket or TCP, one fresh connection
//! per request (simple, and nothing left behind).
//!
//! It is test support: connection failures panic with the address and request in the
//! message, except through [`TestClient::try_send`], for tests that expect a failure.
//! A `Host` header is added when the request has none (`docker` on unix sockets, the
//! `IP:PORT` on TCP), as Docker's Go server requires one.

use std::io;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;

use crate::net::{Address, connect};

/// The two-way byte stream of an upgraded (`101`) connection.
pub type UpgradedIo = TokioIo<Upgraded>;

/// A complete response, body read to its end.
#[derive(Clone, Debug)]
pub struct TestResponse {
    /// The status code.
    pub status: StatusCode,
    /// Every response header (to check `Content-Type`, `Content-Length`, hop-by-hop ones).
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl TestResponse {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics, quoting status and body, if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response {} body is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// The Docker-style error `message` field (what the docker CLI prints after
    /// `Error response from daemon:`); panics if the body has none.
    pub fn message(&self) -> String {
        match self.json().get("message") {
            Some(serde_json::Value::String(message)) => message.clone(),
            _ => panic!(
                "response {} has no string \"message\" field: {:?}",
                self.status,
                self.text()
            ),
        }
    }

    /// A header's value as text, if present and printable.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// An HTTP/1.1 client for one address; cheap to clone.
#[derive(Clone, Debug)]
pub struct TestClient {
    /// Where every request goes.
    address: Address,
}

impl TestClient {
    /// A client for `unix:///path/to.sock` or `tcp://127.0.0.1:PORT`; panics on anything
    /// else.
    pub fn new(address: &str) -> TestClient {
        let address = address
            .parse()
            .unwrap_or_else(|e| panic!("TestClient::new: {e}"));
        TestClient { address }
    }

    /// A client for an already parsed address.
    pub fn for_address(address: Address) -> TestClient {
        TestClient { address }
    }

    /// Where requests go.
    pub fn address(&self) -> &Address {
        &self.address
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> TestResponse {
        self.request(Method::GET, path).await
    }

    /// `method path` with no body (e.g. `POST /v1.41/containers/abc/start`).
    pub async fn request(&self, method: Method, path: &str) -> TestResponse {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Full::new(Bytes::new()))
            .unwrap_or_else(|e| panic!("building a request for {path:?}: {e}"));
        self.send(request).await
    }

    /// `POST path` with `body` as `application/json`.
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> TestResponse {
        let request = Request::post(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap_or_else(|e| panic!("building a request for {path:?}: {e}"));
        self.send(request).await
    }

    /// Sends any request and reads the whole response; panics if that fails.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> TestResponse {
        let what = format!("{} {}", request.method(), request.uri());
        self.try_send(request)
            .await
            .unwrap_or_else(|e| panic!("{what} to {}: {e}", self.address))
    }

    /// Like [`send`](Self::send), but returns connection and protocol failures (refused,
    /// reset, closed mid-answer, not HTTP) instead of panicking.
    pub async fn try_send(&self, request: Request<Full<Bytes>>) -> io::Result<TestResponse> {
        let response = self.try_request_streaming(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(io::Error::other)?.to_bytes();
        Ok(TestResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Sends a request (its body may stream, e.g. a [`ChannelBody`](crate::body::ChannelBody))
    /// and returns as soon as the response head arrives, so the test can read the body
    /// chunk by chunk (see [`next_chunk`](crate::body::next_chunk)). Panics if that fails.
    pub async fn request_streaming<B>(&self, request: Request<B>) -> Response<Incoming>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let what = format!("{} {}", request.method(), request.uri());
        self.try_request_streaming(request)
            .await
            .unwrap_or_else(|e| panic!("{what} to {}: {e}", self.address))
    }

    /// Like [`request_streaming`](Self::request_streaming), returning failures.
    pub async fn try_request_streaming<B>(
        &self,
        request: Request<B>,
    ) -> io::Result<Response<Incoming>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut sender = self.handshake(false).await?;
        sender
            .send_request(self.with_host(request))
            .await
            .map_err(io::Error::other)
    }

    /// Sends an upgrade request (adding `Connection: Upgrade` and `Upgrade: tcp` when
    /// absent), expects `101`, and returns the response head and the raw two-way stream.
    /// Panics on any other status, quoting the body.
    pub async fn upgrade(&self, request: Request<Full<Bytes>>) -> (TestResponse, UpgradedIo) {
        let what = format!("{} {}", request.method(), request.uri());
        let fail =
            |e: &dyn std::fmt::Display| -> ! { panic!("upgrade {what} to {}: {e}", self.address) };
        let mut request = self.with_host(request);
        let headers = request.headers_mut();
        if !headers.contains_key(header::CONNECTION) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        }
        if !headers.contains_key(header::UPGRADE) {
            headers.insert(header::UPGRADE, HeaderValue::from_static("tcp"));
        }
        let mut sender = self.handshake(true).await.unwrap_or_else(|e| fail(&e));
        let mut response = sender
            .send_request(request)
            .await
            .unwrap_or_else(|e| fail(&e));
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
                .unwrap_or_else(|e| format!("<body unreadable: {e}>"));
            fail(&format!("expected 101, got {status}: {body:?}"));
        }
        let upgraded = hyper::upgrade::on(&mut response)
            .await
            .unwrap_or_else(|e| fail(&e));
        let head = TestResponse {
            status: response.status(),
            headers: response.headers().clone(),
            body: Bytes::new(),
        };
        (head, TokioIo::new(upgraded))
    }

    /// Connects and performs the HTTP/1.1 handshake; the connection is driven by a task on
    /// the current runtime that ends when the request is done with.
    async fn handshake<B>(&self, upgrades: bool) -> io::Result<http1::SendRequest<B>>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let io = connect(&self.address).await?;
        let (sender, connection) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(async move {
            let result = if upgrades {
                connection.with_upgrades().await
            } else {
                connection.await
            };
            if let Err(error) = result {
                tracing::debug!(%error, "test client: connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn with_host<B>(&self, mut request: Request<B>) -> Request<B> {
        if !request.headers().contains_key(header::HOST) {
            let host = match &self.address {
                Address::Unix(_) => HeaderValue::from_static("docker"),
                Address::Tcp { host, port } => HeaderValue::from_str(&format!("{host}:{port}"))
                    .expect("a socket address is a valid header value"),
            };
            request.headers_mut().insert(header::HOST, host);
        }
        request
    }
}
