//! Listeners and the accept loop: every connection is served by hyper's HTTP/1.1 server
//! with upgrades enabled, until the shutdown future resolves.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::addr::Address;
use crate::proxy::{Proxy, service};

/// The mode of a unix socket the proxy creates: owner and group may talk to Docker
/// through it, others may not (the docker group convention).
pub const SOCKET_MODE: u32 = 0o660;

/// A bound listening socket.
#[derive(Debug)]
pub enum Listener {
    /// A unix socket; its file is removed when the server stops.
    Unix {
        /// The listening socket.
        listener: UnixListener,
        /// Its path.
        path: PathBuf,
    },
    /// A TCP socket.
    Tcp(TcpListener),
}

/// Why a listener could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// Something already answers on that unix socket.
    #[error("{0} is in use by a running server; refusing to take it over")]
    InUse(String),
    /// Something that is not a socket is in the way; it is never removed.
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(String),
    /// The operating system refused.
    #[error("cannot listen on {address}: {source}")]
    Io {
        /// The address as given.
        address: String,
        /// The cause.
        source: io::Error,
    },
}

impl Listener {
    /// Binds `address`. A unix socket file left behind by a crashed process is replaced;
    /// one that a live server answers on is not.
    pub async fn bind(address: &Address) -> Result<Listener, BindError> {
        let io_err = |source| BindError::Io {
            address: address.to_string(),
            source,
        };
        match address {
            Address::Unix(path) => {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if !meta.file_type().is_socket() {
                        return Err(BindError::NotASocket(address.to_string()));
                    }
                    if UnixStream::connect(path).await.is_ok() {
                        return Err(BindError::InUse(address.to_string()));
                    }
                    std::fs::remove_file(path).map_err(io_err)?;
                }
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(io_err)?;
                }
                let listener = UnixListener::bind(path).map_err(io_err)?;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
                    .map_err(io_err)?;
                Ok(Listener::Unix {
                    listener,
                    path: path.clone(),
                })
            }
            Address::Tcp { host, port } => {
                let listener = TcpListener::bind(Address::tcp_target(host, *port))
                    .await
                    .map_err(io_err)?;
                Ok(Listener::Tcp(listener))
            }
        }
    }

    /// The address clients reach this listener at (with the real port for `tcp://...:0`).
    pub fn local_address(&self) -> Address {
        match self {
            Listener::Unix { path, .. } => Address::Unix(path.clone()),
            Listener::Tcp(listener) => match listener.local_addr() {
                Ok(addr) => Address::Tcp {
                    host: addr.ip().to_string(),
                    port: addr.port(),
                },
                Err(_) => Address::Tcp {
                    host: "?".into(),
                    port: 0,
                },
            },
        }
    }
}

/// How the server behaves at the edges.
#[derive(Clone, Copy, Debug)]
pub struct ServerOptions {
    /// How long in-flight requests may take to finish after shutdown begins.
    pub grace: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            grace: Duration::from_secs(10),
        }
    }
}

/// Serves `proxy` on every listener until `shutdown` resolves, then stops accepting and
/// lets in-flight requests finish for up to the grace period.
pub async fn serve(
    listeners: Vec<Listener>,
    proxy: Arc<Proxy>,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let tracker = TaskTracker::new();
    let mut sockets = Vec::new();
    for listener in listeners {
        info!(listen = %listener.local_address(), docker = proxy.docker_address(), "serving");
        if let Listener::Unix { path, .. } = &listener {
            sockets.push(path.clone());
        }
        tracker.spawn(accept_loop(
            listener,
            proxy.clone(),
            tracker.clone(),
            stop_rx.clone(),
        ));
    }
    shutdown.await;
    info!("shutting down: no new connections; finishing requests in flight");
    let _ = stop_tx.send(true);
    tracker.close();
    if tokio::time::timeout(options.grace, tracker.wait())
        .await
        .is_err()
    {
        warn!(grace = ?options.grace, "requests still in flight after the grace period; closing");
    }
    for path in sockets {
        remove_socket(&path);
    }
}

fn remove_socket(path: &Path) {
    if let Err(err) = std::fs::remove_file(path)
        && err.kind() != io::ErrorKind::NotFound
    {
        warn!(path = %path.display(), error = %err, "could not remove the socket file");
    }
}

async fn accept_loop(
    listener: Listener,
    proxy: Arc<Proxy>,
    tracker: TaskTracker,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            accepted = accept(&listener) => accepted,
        };
        match accepted {
            Ok((io, peer)) => {
                let span = info_span!("conn", peer = %peer);
                tracker.spawn(serve_connection(io, proxy.clone(), stop.clone()).instrument(span));
            }
            Err(err) => {
                // Out of file descriptors and the like: wait rather than spin.
                warn!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A connection of either kind, boxed once per connection.
type Conn = Box<dyn AsyncIo>;
trait AsyncIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> AsyncIo for T {}

async fn accept(listener: &Listener) -> io::Result<(Conn, String)> {
    match listener {
        Listener::Unix { listener, .. } => {
            let (stream, _) = listener.accept().await?;
            Ok((Box::new(stream), "unix".to_owned()))
        }
        Listener::Tcp(listener) => {
            let (stream, peer) = listener.accept().await?;
            stream.set_nodelay(true)?;
            Ok((Box::new(stream), peer.to_string()))
        }
    }
}

async fn serve_connection(io: Conn, proxy: Arc<Proxy>, mut stop: watch::Receiver<bool>) {
    let conn = http1::Builder::new()
        .serve_connection(
            TokioIo::new(io),
            service_fn(move |request| service(proxy.clone(), request)),
        )
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        debug!(error = %err, "connection ended with an error");
    }
}
