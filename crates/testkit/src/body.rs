//! [`ChannelBody`]: an HTTP body fed chunk by chunk from a channel, for streams that must
//! arrive as they are produced (a fake `docker events`, a streamed `build` context).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use tokio::sync::mpsc;

/// A body whose data frames are the [`Bytes`] received from a channel, each sent as soon as
/// it arrives; the body ends when every sender is dropped.
///
/// With no length known in advance, hyper sends it with `Transfer-Encoding: chunked`, one
/// chunk per received [`Bytes`].
#[derive(Debug)]
pub struct ChannelBody {
    /// Where the chunks come from.
    rx: mpsc::Receiver<Bytes>,
}

impl ChannelBody {
    /// A body fed from `rx`.
    pub fn new(rx: mpsc::Receiver<Bytes>) -> ChannelBody {
        ChannelBody { rx }
    }

    /// A sender and the body it feeds (the channel holds up to 16 chunks).
    pub fn channel() -> (mpsc::Sender<Bytes>, ChannelBody) {
        let (tx, rx) = mpsc::channel(16);
        (tx, ChannelBody::new(rx))
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(Frame::data(data))))
    }
}

/// The next data chunk of `body` as it arrives (trailers are skipped), or `None` at its end.
///
/// Panics if the body fails (the peer reset the stream): it is test support.
pub async fn next_chunk<B>(body: &mut B) -> Option<Bytes>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    loop {
        let frame = body.frame().await?;
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    return Some(data);
                }
            }
            Err(error) => panic!("reading a response body chunk failed: {error}"),
        }
    }
}
