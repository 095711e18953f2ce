//! The one body type the proxy sends both ways: a stream passed through from the other
//! side, or bytes the proxy produced (a rewritten body, an error).

use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::h1::UpstreamBody;

/// A body the proxy forwards.
#[derive(Debug)]
pub enum ProxyBody {
    /// What a client or Docker is sending, streamed through hyper.
    Stream(Incoming),
    /// Docker's answer read straight from the Docker connection.
    Docker(UpstreamBody),
    /// Bytes produced by hooks or by the proxy itself.
    Bytes(Full<Bytes>),
}

/// The error of any [`ProxyBody`].
pub type BodyError = Box<dyn StdError + Send + Sync>;

/// A body made of these bytes.
pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    ProxyBody::Bytes(Full::new(bytes.into()))
}

/// An empty body.
pub(crate) fn empty() -> ProxyBody {
    ProxyBody::Bytes(Full::new(Bytes::new()))
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ProxyBody::Stream(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ProxyBody::Docker(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ProxyBody::Bytes(body) => Pin::new(body).poll_frame(cx).map_err(|e| match e {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Stream(body) => body.is_end_stream(),
            ProxyBody::Docker(body) => body.is_end_stream(),
            ProxyBody::Bytes(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Stream(body) => body.size_hint(),
            ProxyBody::Docker(body) => body.size_hint(),
            ProxyBody::Bytes(body) => body.size_hint(),
        }
    }
}

/// Why a body could not be collected.
pub(crate) enum Collect {
    /// It is longer than the limit.
    TooLarge,
    /// Reading it failed.
    Failed(BodyError),
}

/// Reads a whole body of at most `limit` bytes. A body that arrives in one piece (most
/// JSON documents) is returned as that piece, without copying.
pub(crate) async fn collect_bounded<B>(body: B, limit: usize) -> Result<Bytes, Collect>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    let mut body = body;
    let mut first: Option<Bytes> = None;
    let mut more: Vec<u8> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| Collect::Failed(e.into()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(data.len());
        if total > limit {
            return Err(Collect::TooLarge);
        }
        match first.take() {
            None if more.is_empty() => first = Some(data),
            None => more.extend_from_slice(&data),
            Some(head) => {
                more.reserve(total);
                more.extend_from_slice(&head);
                more.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(more)))
}
