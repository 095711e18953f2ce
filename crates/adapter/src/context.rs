//! What an adapter gets besides its options: the cluster [`Store`], a Docker client for the
//! **real** daemon (never through the proxy: no loops), this node's identity, a state
//! directory of its own, and background tasks that stop cleanly on shutdown and reload.
//!
//! The same [`Context`] is handed to an adapter linked into the `powerstrip` binary and to
//! one served on its own by [`crate::cli`], built from the same settings ([`Settings`]:
//! `--store`, `--docker`, `--node-name`, `--state-dir`), so an adapter runs identically
//! either way.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use powerstrip_adapter::builtin::Builtin;
//! use powerstrip_adapter::context::Context;
//! use powerstrip_adapter::{async_trait, Adapter, ClientRequest, HookError};
//! use powerstrip_store::Store;
//!
//! /// Counts the containers created through this node, in the cluster store.
//! struct CreateCounter {
//!     ctx: Context,
//! }
//!
//! #[async_trait]
//! impl Adapter for CreateCounter {
//!     async fn pre_hook(&self, request: ClientRequest) -> Result<ClientRequest, HookError> {
//!         let key = format!("counter/{}", self.ctx.node().name);
//!         powerstrip_store::helpers::update(self.ctx.store().as_ref(), &key, None, |kv| {
//!             let n: u64 = kv.map_or(0, |kv| String::from_utf8_lossy(&kv.value).parse().unwrap_or(0));
//!             Ok::<_, HookError>(powerstrip_store::helpers::Change::Put((n + 1).to_string().into_bytes()))
//!         })
//!         .await
//!         .map_err(|e| HookError::refuse(http::StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
//!         Ok(request)
//!     }
//! }
//!
//! let builtin = Builtin::new("create-counter", "counts creates per node", |_options, ctx| {
//!     // Work of its own beside the hooks: stops when the proxy reloads or shuts down.
//!     ctx.spawn("heartbeat", |stop| async move {
//!         stop.cancelled().await;
//!     });
//!     Ok(Arc::new(CreateCounter { ctx: ctx.clone() }))
//! });
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let ctx = Context::for_tests(dir.path());
//! let adapter = builtin.build(&Default::default(), &ctx).unwrap();
//! let create = ClientRequest::new("POST", "/v1.41/containers/create", Some("{}".into()));
//! adapter.pre_hook(create.clone()).await.unwrap();
//! adapter.pre_hook(create).await.unwrap();
//! let counted = ctx.store().get("counter/test-node").await.unwrap().unwrap();
//! assert_eq!(counted.value, b"2");
//! ctx.shutdown(Duration::from_secs(1)).await;
//! # });
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use powerstrip_store::nodes::Node;
use powerstrip_store::{Store, StoreError, StoreOptions};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info_span};

use crate::net::Address;

pub use bollard;
pub use tokio_util::sync::CancellationToken as Stop;

/// The default state directory: the embedded store, the node's id and every adapter's
/// own directory live under it.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/powerstrip/state";

/// The Docker API version the context's client speaks: the newest that Docker 20.10
/// (Debian 12's) understands; later daemons understand it too.
pub const DOCKER_API_VERSION: bollard::ClientVersion = bollard::ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// How long one call of the context's Docker client may take.
pub const DOCKER_TIMEOUT: Duration = Duration::from_secs(30);

/// What an adapter gets from the proxy (or from [`crate::cli`] when served on its own).
/// Cheap to clone; clones share everything.
#[derive(Clone, Debug)]
pub struct Context {
    /// The cluster store adapters share.
    store: Arc<dyn Store>,
    /// The real Docker daemon's address.
    docker_address: Address,
    /// Its client, made on first use: a daemon that is down when the proxy starts is no
    /// reason not to start.
    docker: Arc<std::sync::OnceLock<bollard::Docker>>,
    /// This node.
    node: Arc<Node>,
    /// This adapter's own directory (the node's state directory before
    /// [`Context::for_adapter`]).
    state_dir: Arc<Path>,
    /// Background tasks: tracked, and told to stop through `stop`.
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// The settings a context is built from: flags of `powerstrip serve` and of every served
/// adapter, and the `[store]` section of `adapters.toml`.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The store to open.
    pub store: StoreOptions,
    /// The real Docker daemon (`unix:///var/run/docker.sock`).
    pub docker: Address,
    /// The node's state directory ([`DEFAULT_STATE_DIR`]).
    pub state_dir: PathBuf,
    /// The node's name; the host name when `None`.
    pub node_name: Option<String>,
    /// Where peers reach this node; found from the host name when `None`.
    pub node_address: Option<String>,
    /// The node's labels.
    pub node_labels: BTreeMap<String, String>,
}

/// Why a context could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The state directory or the node's id could not be read or written.
    #[error("state directory {path}: {reason}")]
    StateDir {
        /// The path concerned.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The Docker client could not be made.
    #[error("Docker at {address}: {reason}")]
    Docker {
        /// Docker's address.
        address: String,
        /// What went wrong.
        reason: String,
    },
}

impl Context {
    /// Opens the store, makes the Docker client and works out this node's identity (its
    /// id is kept in `<state dir>/node-id`, created on first use).
    pub async fn open(settings: &Settings) -> Result<Context, ContextError> {
        let node = node_identity(settings)?;
        let store = powerstrip_store::open(&settings.store).await?;
        Self::from_parts(store, &settings.docker, node, &settings.state_dir)
    }

    /// A context from its parts (the store already open).
    pub fn from_parts(
        store: Arc<dyn Store>,
        docker: &Address,
        node: Node,
        state_dir: &Path,
    ) -> Result<Context, ContextError> {
        Ok(Context {
            store,
            docker_address: docker.clone(),
            docker: Arc::new(std::sync::OnceLock::new()),
            node: Arc::new(node),
            state_dir: state_dir.into(),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        })
    }

    /// A context for tests and examples: an embedded store and the node's files under
    /// `dir`, a node named `test-node`, Docker at `/var/run/docker.sock` (contacted only
    /// when used).
    pub fn for_tests(dir: &Path) -> Context {
        let store = powerstrip_store::Embedded::open(&dir.join("store.redb"))
            .unwrap_or_else(|e| panic!("Context::for_tests: {e}"));
        let node = Node {
            id: "test-node-id".into(),
            name: "test-node".into(),
            address: "127.0.0.1".into(),
            labels: BTreeMap::new(),
        };
        Self::from_parts(
            Arc::new(store),
            &Address::Unix("/var/run/docker.sock".into()),
            node,
            dir,
        )
        .unwrap_or_else(|e| panic!("Context::for_tests: {e}"))
    }

    /// A context whose store lives in memory only (gone when dropped), for validating
    /// configurations and for tests: a node named `test-node`, Docker at
    /// `/var/run/docker.sock` (contacted only when used), a state directory under the
    /// system's temporary directory that nothing creates unless an adapter writes there.
    pub fn in_memory() -> Context {
        let store = powerstrip_store::Embedded::in_memory()
            .unwrap_or_else(|e| panic!("Context::in_memory: {e}"));
        let node = Node {
            id: "test-node-id".into(),
            name: "test-node".into(),
            address: "127.0.0.1".into(),
            labels: BTreeMap::new(),
        };
        let dir = std::env::temp_dir().join("powerstrip-scratch");
        Self::from_parts(
            Arc::new(store),
            &Address::Unix("/var/run/docker.sock".into()),
            node,
            &dir,
        )
        .unwrap_or_else(|e| panic!("Context::in_memory: {e}"))
    }

    /// The cluster store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// A client for the real Docker daemon (the one the proxy forwards to; calls made
    /// with it never pass through the proxy's hooks). Fails only while the daemon's
    /// socket does not exist; cheap to call (the client is made once and shared).
    pub fn docker(&self) -> Result<bollard::Docker, ContextError> {
        if let Some(client) = self.docker.get() {
            return Ok(client.clone());
        }
        let timeout = DOCKER_TIMEOUT.as_secs();
        let client = match &self.docker_address {
            Address::Unix(path) => bollard::Docker::connect_with_unix(
                &path.to_string_lossy(),
                timeout,
                &DOCKER_API_VERSION,
            ),
            Address::Tcp { host, port } => bollard::Docker::connect_with_http(
                &format!("http://{}", Address::tcp_target(host, *port)),
                timeout,
                &DOCKER_API_VERSION,
            ),
        }
        .map_err(|e| ContextError::Docker {
            address: self.docker_address.to_string(),
            reason: e.to_string(),
        })?;
        Ok(self.docker.get_or_init(|| client).clone())
    }

    /// The real Docker daemon's address.
    pub fn docker_address(&self) -> &Address {
        &self.docker_address
    }

    /// This node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// This adapter's own state directory (created on first use by whoever writes there).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// The live nodes of the cluster, sorted by name.
    pub async fn nodes(&self) -> Result<Vec<Node>, StoreError> {
        powerstrip_store::nodes::list(self.store.as_ref()).await
    }

    /// The same context for adapter `name`: its state directory is
    /// `<node state dir>/adapters/<name>`.
    pub fn for_adapter(&self, name: &str) -> Context {
        let mut ctx = self.clone();
        ctx.state_dir = self.state_dir.join("adapters").join(name).into();
        ctx
    }

    /// A context whose background tasks stop when the returned [`Scope`] is dropped (the
    /// proxy gives each configuration it loads a scope of its own: a reload stops the old
    /// adapters' tasks), and also when this context's tasks are told to stop.
    pub fn scope(&self) -> (Context, Scope) {
        let mut ctx = self.clone();
        ctx.stop = self.stop.child_token();
        let scope = Scope(ctx.stop.clone());
        (ctx, scope)
    }

    /// Runs `task` in the background until it returns; it is handed a token that is
    /// cancelled when it must stop (shutdown, or the reload that replaced its adapter)
    /// and should return soon after. Its log lines carry `task = name`.
    pub fn spawn<F, Fut>(&self, name: &str, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        let span = info_span!("task", task = name, node = %self.node.name);
        self.tasks.spawn(task(stop).instrument(span));
    }

    /// Tells every background task to stop, and waits for them for at most `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            debug!(
                left = self.tasks.len(),
                "background tasks still running after the grace period"
            );
        }
    }
}

/// Stops the background tasks of a [`Context::scope`] when dropped.
#[derive(Debug)]
pub struct Scope(CancellationToken);

impl Drop for Scope {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// This node's identity from `settings`: its id from `<state dir>/node-id` (created with a
/// new random id the first time), its name and address as given or found.
pub fn node_identity(settings: &Settings) -> Result<Node, ContextError> {
    let state_error = |path: &Path, e: std::io::Error| ContextError::StateDir {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(&settings.state_dir)
        .map_err(|e| state_error(&settings.state_dir, e))?;
    let id_file = settings.state_dir.join("node-id");
    let id = match std::fs::read_to_string(&id_file) {
        Ok(id) if !id.trim().is_empty() => id.trim().to_owned(),
        _ => {
            let id = random_id().map_err(|e| state_error(Path::new("/dev/urandom"), e))?;
            std::fs::write(&id_file, format!("{id}\n")).map_err(|e| state_error(&id_file, e))?;
            id
        }
    };
    let name = settings.node_name.clone().unwrap_or_else(host_name);
    let address = settings
        .node_address
        .clone()
        .unwrap_or_else(|| address_of(&name));
    Ok(Node {
        id,
        name,
        address,
        labels: settings.node_labels.clone(),
    })
}

/// 128 random bits, in hexadecimal.
fn random_id() -> std::io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The host name, as the kernel knows it.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The first address `name` resolves to that is not loopback, else 127.0.0.1.
fn address_of(name: &str) -> String {
    use std::net::ToSocketAddrs as _;
    (name, 0)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.find(|a| !a.ip().is_loopback()))
        .map_or_else(|| "127.0.0.1".to_owned(), |a| a.ip().to_string())
}

impl From<ContextError> for crate::HookError {
    /// What the context cannot provide (Docker's socket is gone) refuses the Docker
    /// request with `503`, naming what is missing.
    fn from(error: ContextError) -> Self {
        crate::HookError::refuse(http::StatusCode::SERVICE_UNAVAILABLE, error.to_string())
    }
}

impl From<StoreError> for crate::HookError {
    /// A store that cannot do what a hook needs refuses the Docker request with `503`,
    /// naming the store and what it could not do. Nothing was applied.
    fn from(error: StoreError) -> Self {
        crate::HookError::refuse(http::StatusCode::SERVICE_UNAVAILABLE, error.to_string())
    }
}
