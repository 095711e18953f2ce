//! Sockets in Docker's `-H` notation, and the HTTP/1.1 server loop the proxy and served
//! adapters share.
//!
//! - [`Address`]: `unix:///path` or `tcp://host:port`.
//! - [`Listener`]: a bound socket; a unix socket is created with mode 0660, replaces a
//!   stale socket file a crash left behind, and never takes over a live one or a file
//!   that is not a socket.
//! - [`serve_http`]: accepts on every listener and serves each connection with hyper
//!   (upgrades enabled) until shutdown, then lets requests in flight finish.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

/// A socket address in Docker's `-H` notation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// A unix domain socket, `unix:///var/run/docker.sock`.
    Unix(PathBuf),
    /// A TCP `host:port`, `tcp://127.0.0.1:2375`.
    Tcp {
        /// A host name or IP address (IPv6 without brackets).
        host: String,
        /// The port.
        port: u16,
    },
}

/// Why an address could not be parsed.
#[derive(Debug, thiserror::Error)]
#[error("bad address {input:?}: {reason} (expected unix:///path/to.sock or tcp://host:port)")]
pub struct AddressError {
    input: String,
    reason: &'static str,
}

impl Address {
    /// True for a TCP address whose host is a loopback IP or `localhost`.
    pub fn is_loopback(&self) -> bool {
        match self {
            Address::Unix(_) => true,
            Address::Tcp { host, .. } => {
                host == "localhost"
                    || host
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
        }
    }

    /// `host:port` for a TCP address, in the form `tokio::net` resolves (IPv6 in brackets).
    pub fn tcp_target(host: &str, port: u16) -> String {
        if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| AddressError {
            input: input.to_owned(),
            reason,
        };
        if let Some(path) = input.strip_prefix("unix://") {
            if !path.starts_with('/') {
                return Err(err("a unix socket path must be absolute"));
            }
            return Ok(Address::Unix(PathBuf::from(path)));
        }
        let rest = input
            .strip_prefix("tcp://")
            .ok_or_else(|| err("unknown scheme"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| err("missing port"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.is_empty() {
            return Err(err("missing host"));
        }
        if host.contains('/') {
            return Err(err("a TCP address has no path"));
        }
        let port = port.parse().map_err(|_| err("bad port"))?;
        Ok(Address::Tcp {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => write!(f, "unix://{}", path.display()),
            Address::Tcp { host, port } => write!(f, "tcp://{}", Address::tcp_target(host, *port)),
        }
    }
}

/// The mode of a unix socket created here: owner and group may connect, others may not
/// (the docker group convention).
pub const SOCKET_MODE: u32 = 0o660;

/// A bound listening socket.
pub enum Listener {
    /// A unix socket; its file is removed when the server stops.
    Unix {
        /// The listening socket.
        listener: UnixListener,
        /// Its path.
        path: PathBuf,
    },
    /// A TCP socket, speaking TLS when it has a configuration.
    Tcp {
        /// The listening socket.
        listener: TcpListener,
        /// TLS for every connection, if set.
        tls: Option<TlsAcceptor>,
    },
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("address", &self.local_address().to_string())
            .field("tls", &self.is_tls())
            .finish()
    }
}

/// How unix sockets are created.
#[derive(Clone, Copy, Debug, Default)]
pub struct BindOptions {
    /// The group that owns the socket file (the `docker` group convention), if any.
    pub group: Option<u32>,
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
        Self::bind_with(address, &BindOptions::default()).await
    }

    /// Binds `address` as [`Listener::bind`] does, giving a unix socket file to
    /// `options.group`.
    pub async fn bind_with(
        address: &Address,
        options: &BindOptions,
    ) -> Result<Listener, BindError> {
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
                if let Some(gid) = options.group {
                    std::os::unix::fs::chown(path, None, Some(gid)).map_err(io_err)?;
                }
                Ok(Listener::Unix {
                    listener,
                    path: path.clone(),
                })
            }
            Address::Tcp { host, port } => {
                let listener = TcpListener::bind(Address::tcp_target(host, *port))
                    .await
                    .map_err(io_err)?;
                Ok(Listener::Tcp {
                    listener,
                    tls: None,
                })
            }
        }
    }

    /// Makes a TCP listener speak TLS; a unix listener is returned unchanged.
    pub fn with_tls(self, config: Arc<rustls::ServerConfig>) -> Listener {
        match self {
            Listener::Tcp { listener, .. } => Listener::Tcp {
                listener,
                tls: Some(TlsAcceptor::from(config)),
            },
            unix => unix,
        }
    }

    /// True for a TCP listener that speaks TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Listener::Tcp { tls: Some(_), .. })
    }

    /// The address clients reach this listener at (with the real port for `tcp://...:0`).
    pub fn local_address(&self) -> Address {
        match self {
            Listener::Unix { path, .. } => Address::Unix(path.clone()),
            Listener::Tcp { listener, .. } => match listener.local_addr() {
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
    /// The most connections served at once (per listener); beyond it, new connections
    /// wait in the kernel's accept queue. `None`: no limit.
    pub max_connections: Option<usize>,
    /// The largest request head (request line and headers) read; a bigger one gets
    /// `431`. At least 8192.
    pub max_header_bytes: usize,
    /// How long a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
}

/// hyper's default read buffer, which bounds a request head.
const DEFAULT_MAX_HEADER_BYTES: usize = 400 * 1024;

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            grace: Duration::from_secs(10),
            max_connections: None,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Serves every listener with `service` until `shutdown` resolves, then stops accepting and
/// lets requests in flight finish for up to the grace period. Each connection is HTTP/1.1
/// with upgrades enabled; unix socket files are removed at the end.
pub async fn serve_http<S, B>(
    listeners: Vec<Listener>,
    service: S,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    serve_http_with(listeners, move || service.clone(), options, shutdown).await;
}

/// Like [`serve_http`], with a service made for each connection by `make_service`, for
/// services that keep per-connection state.
pub async fn serve_http_with<M, S, B>(
    listeners: Vec<Listener>,
    make_service: M,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) where
    M: Fn() -> S + Send + Sync + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let make_service = Arc::new(make_service);
    let (stop_tx, stop_rx) = watch::channel(false);
    let tracker = TaskTracker::new();
    let mut sockets = Vec::new();
    for listener in listeners {
        info!(listen = %listener.local_address(), "listening");
        if let Listener::Unix { path, .. } = &listener {
            sockets.push(path.clone());
        }
        tracker.spawn(accept_loop(
            listener,
            make_service.clone(),
            options,
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

async fn accept_loop<M, S, B>(
    listener: Listener,
    make_service: Arc<M>,
    options: ServerOptions,
    tracker: TaskTracker,
    mut stop: watch::Receiver<bool>,
) where
    M: Fn() -> S + Send + Sync + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let limit = options.max_connections.map(|n| Arc::new(Semaphore::new(n)));
    loop {
        // At the limit, stop accepting until a connection ends.
        let permit = match &limit {
            Some(limit) => tokio::select! {
                _ = stop.changed() => return,
                permit = limit.clone().acquire_owned() => permit.ok(),
            },
            None => None,
        };
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((io, peer)) => {
                let span = info_span!("conn", peer = %peer);
                let tls = listener.tls().cloned();
                let (service, stop) = (make_service(), stop.clone());
                tracker.spawn(
                    async move {
                        let _permit = permit;
                        match tls {
                            None => serve_connection(io, service, options, stop).await,
                            Some(tls) => match tokio::time::timeout(
                                options.tls_handshake_timeout,
                                tls.accept(io),
                            )
                            .await
                            {
                                Ok(Ok(io)) => {
                                    serve_connection(Box::new(io), service, options, stop).await
                                }
                                Ok(Err(err)) => debug!(error = %err, "TLS handshake failed"),
                                Err(_) => debug!("TLS handshake timed out"),
                            },
                        }
                    }
                    .instrument(span),
                );
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

impl Listener {
    fn tls(&self) -> Option<&TlsAcceptor> {
        match self {
            Listener::Tcp { tls, .. } => tls.as_ref(),
            Listener::Unix { .. } => None,
        }
    }

    async fn accept(&self) -> io::Result<(Conn, String)> {
        match self {
            Listener::Unix { listener, .. } => {
                let (stream, _) = listener.accept().await?;
                Ok((Box::new(stream), "unix".to_owned()))
            }
            Listener::Tcp { listener, .. } => {
                let (stream, peer) = listener.accept().await?;
                stream.set_nodelay(true)?;
                Ok((Box::new(stream), peer.to_string()))
            }
        }
    }
}

async fn serve_connection<S, B>(
    io: Conn,
    service: S,
    options: ServerOptions,
    mut stop: watch::Receiver<bool>,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let conn = http1::Builder::new()
        .max_buf_size(options.max_header_bytes.max(8192))
        .writev(false)
        .serve_connection(TokioIo::new(io), service)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_style_addresses() {
        assert_eq!(
            "unix:///var/run/docker.sock".parse::<Address>().unwrap(),
            Address::Unix("/var/run/docker.sock".into())
        );
        assert_eq!(
            "tcp://127.0.0.1:2375".parse::<Address>().unwrap(),
            Address::Tcp {
                host: "127.0.0.1".into(),
                port: 2375
            }
        );
        let v6: Address = "tcp://[::1]:2375".parse().unwrap();
        assert_eq!(v6.to_string(), "tcp://[::1]:2375");
        assert!(v6.is_loopback());
        assert!(
            !"tcp://0.0.0.0:2375"
                .parse::<Address>()
                .unwrap()
                .is_loopback()
        );
    }

    #[test]
    fn refuses_what_is_not_an_address() {
        for bad in [
            "unix://relative.sock",
            "http://x:1",
            "tcp://host",
            "tcp://:1",
            "tcp://h:99999",
            "tcp://h:1/x/y:2",
        ] {
            let err = bad.parse::<Address>().unwrap_err().to_string();
            assert!(err.starts_with(&format!("bad address {bad:?}")), "{err}");
        }
    }
}
