//! Addresses in Docker's `-H` form (`unix:///path`, `tcp://127.0.0.1:PORT`), connecting to
//! them, and the accept loop every fake server in this crate runs.
//!
//! Servers here bind `127.0.0.1:0` or a unix socket inside their own [`tempfile::TempDir`],
//! run on the caller's tokio runtime, and stop when their handle is dropped: the handle owns
//! a guard whose drop aborts the accept task, which owns every connection task, so a hung
//! connection goes with it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::task::{JoinHandle, JoinSet};

pub use powerstrip_core::Address;

/// A connected byte stream of either kind (unix or TCP), as one type.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// A boxed [`Io`]: what [`connect`] returns and what the fake servers' handlers receive.
pub type BoxedIo = Box<dyn Io>;

/// Opens a connection to `address`.
pub async fn connect(address: &Address) -> std::io::Result<BoxedIo> {
    Ok(match address {
        Address::Unix(path) => Box::new(UnixStream::connect(path).await?),
        Address::Tcp { host, port } => {
            let stream = TcpStream::connect((host.as_str(), *port)).await?;
            // Tests send small requests and wait for the answer; Nagle only adds latency.
            stream.set_nodelay(true)?;
            Box::new(stream)
        }
    })
}

/// A bound listening socket of either kind.
pub(crate) enum Listener {
    /// Listening on a unix socket.
    Unix(UnixListener),
    /// Listening on TCP.
    Tcp(TcpListener),
}

impl Listener {
    /// Binds a unix socket at `path` (whose directory the caller owns).
    pub(crate) fn unix(path: &Path) -> Listener {
        Listener::Unix(
            UnixListener::bind(path)
                .unwrap_or_else(|e| panic!("binding unix socket {}: {e}", path.display())),
        )
    }

    /// Binds `127.0.0.1:0`.
    pub(crate) async fn tcp() -> Listener {
        Listener::Tcp(
            TcpListener::bind("127.0.0.1:0")
                .await
                .expect("binding 127.0.0.1:0 for a test server"),
        )
    }

    /// The local TCP address, for a TCP listener.
    pub(crate) fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Unix(_) => None,
            Listener::Tcp(listener) => Some(
                listener
                    .local_addr()
                    .expect("a bound TCP listener has a local address"),
            ),
        }
    }

    async fn accept(&self) -> std::io::Result<BoxedIo> {
        Ok(match self {
            Listener::Unix(listener) => Box::new(listener.accept().await?.0),
            Listener::Tcp(listener) => {
                let (stream, _) = listener.accept().await?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
        })
    }
}

/// The accept task of a fake server; dropping it stops the server and every connection.
#[derive(Debug)]
pub(crate) struct ServerTask {
    /// The accept loop; it owns the [`JoinSet`] of connection tasks, so aborting it aborts
    /// them too.
    accept: JoinHandle<()>,
}

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Spawns an accept loop on the current runtime: each accepted connection bumps
/// `connections` and runs `serve(io)` in its own task.
pub(crate) fn spawn_server<F, Fut>(
    listener: Listener,
    connections: Arc<AtomicUsize>,
    serve: F,
) -> ServerTask
where
    F: Fn(BoxedIo) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let accept = tokio::spawn(async move {
        let mut tasks = JoinSet::new();
        loop {
            match listener.accept().await {
                Ok(io) => {
                    connections.fetch_add(1, Ordering::SeqCst);
                    tasks.spawn(serve(io));
                }
                Err(error) => {
                    // E.g. EMFILE: back off rather than spin.
                    tracing::warn!(%error, "test server: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            while let Some(done) = tasks.try_join_next() {
                if let Err(error) = done {
                    tracing::error!(%error, "test server: a connection task failed");
                }
            }
        }
    });
    ServerTask { accept }
}
