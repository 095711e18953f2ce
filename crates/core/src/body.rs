//! The one body type the proxy sends both ways: a stream passed through from the other
//! side, or bytes the proxy produced (a rewritten body, an error).

use std::error::Error as StdError;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
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
