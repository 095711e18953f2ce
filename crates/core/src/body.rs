//! The one body type the proxy sends both ways: a stream passed through from the other
//! side, or bytes the proxy produced (a rewritten body, an error).

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;

/// A body the proxy forwards: [`Either::Left`] streams what the other side is sending,
/// [`Either::Right`] holds bytes produced by hooks or by the proxy itself.
pub type ProxyBody = Either<Incoming, Full<Bytes>>;

/// A body made of these bytes.
pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Either::Right(Full::new(bytes.into()))
}

/// An empty body.
pub(crate) fn empty() -> ProxyBody {
    Either::Right(Full::new(Bytes::new()))
}
