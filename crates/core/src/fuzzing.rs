//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`, off by default):
//! the lean HTTP/1.1 client of `h1` over any in-memory stream, the request bytes it writes,
//! and the header cleaning the proxy does before it. Not part of the crate's API: nothing
//! here is stable, and no binary enables the feature.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Response};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::connect::Stream;
use crate::h1::{self, Conn, H1Error, Idle, UpstreamBody};

/// Sends a request whose body is `body` with the lean client on `io` (a new connection, as
/// if just dialled: no retry), exactly as the proxy sends one to Docker, and returns the
/// answer with its body still to read, and the connection's fate once it has been read.
pub async fn send<S>(
    io: S,
    head: &http::request::Parts,
    body: Bytes,
) -> Result<(Response<UpstreamBody>, Connection), H1Error>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let idle = Arc::new(Idle::new(1));
    let mut conn = Conn::new(Stream::Memory(Box::new(io)));
    conn.encode(|out| h1::encode_request(head, &body, out));
    let (response, reading) = h1::exchange(conn, head.method == Method::HEAD)
        .await
        .map_err(|failure| failure.error)?;
    Ok((h1::respond(response, reading, &idle), Connection { idle }))
}

/// The connection a [`send`] used, once its answer has been read.
#[derive(Debug)]
pub struct Connection {
    idle: Arc<Idle>,
}

impl Connection {
    /// Whether the lean client would send its next request on this connection: the
    /// answer's body was read to its end, the answer let the connection stay open, and
    /// the peer has neither closed it nor sent anything more since (the check made before
    /// an idle connection is reused).
    pub async fn reusable(&self) -> bool {
        match self.idle.take() {
            Some(mut conn) => h1::still_idle(&mut conn).await,
            None => false,
        }
    }
}

/// The bytes the lean client writes for a request whose body is `body`.
pub fn encode_request(head: &http::request::Parts, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    h1::encode_request(head, body, &mut out);
    out
}

/// Removes the hop-by-hop headers, as the proxy does to a request (one that does not
/// upgrade) before it forwards it.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    crate::headers::strip_hop_by_hop(headers, false);
}
