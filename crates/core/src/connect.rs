//! Outbound connections (to Docker and to HTTP adapters) over unix sockets, TCP or TLS, and
//! the small pool of idle HTTP/1.1 connections they are reused from.

use std::error::Error as StdError;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tracing::debug;
/// Where connections go.
#[derive(Clone)]
pub(crate) enum Target {
    Unix(Arc<PathBuf>),
    Tcp(Arc<str>),
    /// TCP to `address`, then TLS verifying the certificate for `server_name`.
    Tls {
        address: Arc<str>,
        server_name: ServerName<'static>,
        connector: TlsConnector,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(path) => write!(f, "unix://{}", path.display()),
            Target::Tcp(address) => write!(f, "tcp://{address}"),
            Target::Tls { address, .. } => write!(f, "tls://{address}"),
        }
    }
}

/// Opens connections to its [`Target`].
#[derive(Clone, Debug)]
pub(crate) struct Connector {
    target: Target,
}

impl Connector {
    pub(crate) fn new(target: Target) -> Self {
        Connector { target }
    }

    /// A new connection to the target.
    pub(crate) async fn connect(&self) -> io::Result<Stream> {
        Ok(match &self.target {
            Target::Unix(path) => Stream::Unix(UnixStream::connect(path.as_path()).await?),
            Target::Tcp(address) => {
                let stream = TcpStream::connect(&**address).await?;
                stream.set_nodelay(true)?;
                Stream::Tcp(stream)
            }
            Target::Tls {
                address,
                server_name,
                connector,
            } => {
                let stream = TcpStream::connect(&**address).await?;
                stream.set_nodelay(true)?;
                Stream::Tls(Box::new(
                    connector.connect(server_name.clone(), stream).await?,
                ))
            }
        })
    }
}

/// A connected stream of any kind.
pub(crate) enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Any in-memory stream, through which the fuzz targets feed scripted bytes to the
    /// lean client (`crate::fuzzing`). Absent from normal builds.
    #[cfg(feature = "fuzzing")]
    Memory(Box<dyn MemoryIo>),
}

/// What an in-memory [`Stream`] must be.
#[cfg(feature = "fuzzing")]
pub(crate) trait MemoryIo: AsyncRead + AsyncWrite + Send + Unpin {}

#[cfg(feature = "fuzzing")]
impl<T: AsyncRead + AsyncWrite + Send + Unpin> MemoryIo for T {}

/// Why a request could not be sent.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// No connection could be opened.
    #[error("{0}")]
    Connect(#[from] io::Error),
    /// The connection failed before an answer.
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// Idle HTTP/1.1 connections to one target, reused last-in first-out. An HTTP/1.1
/// connection carries one request at a time: a connection is taken for a request and given
/// back once its answer has been read.
pub(crate) struct Pool<B> {
    connector: Connector,
    idle: Mutex<Vec<SendRequest<B>>>,
    /// The most idle connections kept; more are closed.
    max_idle: usize,
}

impl<B> Pool<B>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    pub(crate) fn new(connector: Connector, max_idle: usize) -> Self {
        Pool {
            connector,
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    /// Sends `request` on an idle connection, or a new one, and returns the answer (its
    /// body still to read) with the connection, for [`Pool::release`]. A request that a
    /// reused connection could not send (the peer closed it while idle) is sent once more
    /// on a new connection.
    pub(crate) async fn send(
        &self,
        request: Request<B>,
    ) -> Result<(Response<Incoming>, SendRequest<B>), SendError> {
        let mut reused = None;
        while let Some(mut sender) = self.take() {
            // Ready once the previous answer has been read; an error: closed while idle.
            if sender.ready().await.is_ok() {
                reused = Some(sender);
                break;
            }
        }
        let (mut sender, fresh) = match reused {
            Some(sender) => (sender, false),
            None => (self.connect().await?, true),
        };
        match sender.try_send_request(request).await {
            Ok(response) => Ok((response, sender)),
            Err(mut err) => match err.take_message() {
                Some(request) if !fresh => {
                    let mut sender = self.connect().await?;
                    let response = sender.send_request(request).await?;
                    Ok((response, sender))
                }
                _ => Err(SendError::Http(err.into_error())),
            },
        }
    }

    /// Gives a connection back for the next request (closed if it cannot serve one).
    pub(crate) fn release(&self, sender: SendRequest<B>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_idle {
            idle.push(sender);
        }
    }

    fn take(&self) -> Option<SendRequest<B>> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    /// Opens a connection, served by its own task (upgrades allowed).
    async fn connect(&self) -> Result<SendRequest<B>, SendError> {
        let io = TokioIo::new(self.connector.connect().await?);
        let (sender, connection) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            if let Err(err) = connection.with_upgrades().await {
                debug!(error = %err, "connection ended with an error");
            }
        });
        Ok(sender)
    }
}

impl<B> std::fmt::Debug for Pool<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("target", &self.connector.target)
            .field("max_idle", &self.max_idle)
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            #[cfg(feature = "fuzzing")]
            Stream::Memory(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            #[cfg(feature = "fuzzing")]
            Stream::Memory(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            #[cfg(feature = "fuzzing")]
            Stream::Memory(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Unix(s) => s.is_write_vectored(),
            Stream::Tcp(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
            #[cfg(feature = "fuzzing")]
            Stream::Memory(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            #[cfg(feature = "fuzzing")]
            Stream::Memory(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            #[cfg(feature = "fuzzing")]
            Stream::Memory(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
