//! [`TestProxy`]: the real proxy, in-process, in front of whatever Docker a test points it
//! at (usually a [`FakeDocker`](crate::FakeDocker)), listening on a unix socket in its own
//! temporary directory and on `127.0.0.1:0`.

use std::sync::Arc;
use std::time::Duration;

use powerstrip_adapter::builtin::Builtin;
use powerstrip_adapter::{Adapter, Context};
use powerstrip_config::{Config, Format};
use powerstrip_core::{
    Address, Builtins, ChainOptions, Chains, Limits, Listener, Proxy, ServerOptions, Upstream,
};
use tempfile::TempDir;
use tokio::sync::oneshot;

use crate::client::TestClient;

/// A running in-process proxy; it stops when dropped.
#[derive(Debug)]
pub struct TestProxy {
    /// The unix socket clients reach it at.
    unix: Address,
    /// The TCP address clients reach it at.
    tcp: Address,
    /// What the proxy counts (the admin listener's `/metrics`).
    metrics: Arc<powerstrip_core::metrics::Metrics>,
    /// The context its in-process adapters were built with.
    context: Context,
    /// Resolving it starts a graceful shutdown.
    stop: Option<oneshot::Sender<()>>,
    /// Holds the socket's directory for the proxy's lifetime.
    _dir: TempDir,
}

/// Configures a [`TestProxy`] before it starts.
#[must_use]
pub struct TestProxyBuilder {
    /// Where Docker (real or fake) listens.
    docker: Address,
    /// The configuration text and its format; none means pass-through only.
    config: Option<(String, Format)>,
    /// In-process adapters the configuration may name.
    builtins: Builtins,
    /// Bounds on buffering.
    limits: Limits,
    /// The store adapters get; an embedded one in the proxy's directory when `None`.
    store: Option<Arc<dyn powerstrip_store::Store>>,
}

impl TestProxy {
    /// A proxy in front of `docker` (`unix:///...` or `tcp://...`).
    pub fn builder(docker: &str) -> TestProxyBuilder {
        TestProxyBuilder {
            docker: docker
                .parse()
                .unwrap_or_else(|e| panic!("TestProxy: docker address: {e}")),
            config: None,
            builtins: Builtins::new(),
            limits: Limits::default(),
            store: None,
        }
    }

    /// A proxy in front of `docker` running the chains of a TOML configuration.
    pub async fn start(docker: &str, toml: &str) -> TestProxy {
        Self::builder(docker).toml(toml).start().await
    }

    /// The unix socket address, e.g. for `DOCKER_HOST`.
    pub fn address(&self) -> String {
        self.unix.to_string()
    }

    /// The TCP address (`tcp://127.0.0.1:PORT`).
    pub fn tcp_address(&self) -> String {
        self.tcp.to_string()
    }

    /// A client talking to the proxy over its unix socket.
    pub fn client(&self) -> TestClient {
        TestClient::for_address(self.unix.clone())
    }

    /// A client talking to the proxy over TCP.
    pub fn tcp_client(&self) -> TestClient {
        TestClient::for_address(self.tcp.clone())
    }

    /// The proxy's metrics now, in Prometheus' text format (what `/metrics` serves).
    pub fn metrics(&self) -> String {
        self.metrics.encode()
    }

    /// The context its in-process adapters were built with (its store, its Docker client).
    pub fn context(&self) -> &Context {
        &self.context
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl TestProxyBuilder {
    /// Runs the chains of this TOML configuration.
    pub fn toml(mut self, text: &str) -> Self {
        self.config = Some((text.to_owned(), Format::Toml));
        self
    }

    /// Runs the chains of this configuration in the original Powerstrip YAML.
    pub fn yaml(mut self, text: &str) -> Self {
        self.config = Some((text.to_owned(), Format::Yaml));
        self
    }

    /// Makes an in-process adapter available as `builtin = "<its name>"`.
    pub fn builtin(mut self, builtin: Builtin) -> Self {
        self.builtins.register(builtin);
        self
    }

    /// Makes this adapter instance available as `builtin = "name"` (it takes no options).
    pub fn adapter(self, name: &str, adapter: impl Adapter) -> Self {
        self.builtin(Builtin::from_adapter(name, adapter))
    }

    /// Sets the largest body handed to hooks.
    pub fn max_hook_body(mut self, bytes: usize) -> Self {
        self.limits.max_hook_body = bytes;
        self
    }

    /// The store in-process adapters get (instead of an embedded one in the proxy's
    /// directory).
    pub fn store(mut self, store: Arc<dyn powerstrip_store::Store>) -> Self {
        self.store = Some(store);
        self
    }

    /// Validates the configuration (panicking with its errors), binds and starts serving.
    pub async fn start(self) -> TestProxy {
        let config = match &self.config {
            Some((text, format)) => powerstrip_config::parse(text, "<test config>", *format)
                .unwrap_or_else(|e| panic!("TestProxy: invalid configuration:\n{e}")),
            None => Config::empty(),
        };
        let dir = tempfile::tempdir().expect("TestProxy: a temporary directory");
        // The adapters' context: an embedded store in the proxy's directory, and a Docker
        // client for the Docker the proxy forwards to.
        let store: Arc<dyn powerstrip_store::Store> = match self.store.clone() {
            Some(store) => store,
            None => Arc::new(
                powerstrip_store::Embedded::open(&dir.path().join("state/store.redb"))
                    .unwrap_or_else(|e| panic!("TestProxy: {e}")),
            ),
        };
        let node = powerstrip_store::nodes::Node {
            id: "test-proxy".into(),
            name: "test-proxy".into(),
            address: "127.0.0.1".into(),
            labels: Default::default(),
        };
        let ctx = Context::from_parts(store, &self.docker, node, &dir.path().join("state"))
            .unwrap_or_else(|e| panic!("TestProxy: {e}"));
        let chains = Chains::build(
            &config,
            &self.builtins,
            ChainOptions {
                max_answer: self.limits.max_hook_body,
            },
            &ctx,
        )
        .unwrap_or_else(|e| panic!("TestProxy: invalid configuration:\n{e}"));
        let unix = Listener::bind(&Address::Unix(dir.path().join("proxy.sock")))
            .await
            .expect("TestProxy: binding its unix socket");
        let tcp = Listener::bind(&Address::Tcp {
            host: "127.0.0.1".into(),
            port: 0,
        })
        .await
        .expect("TestProxy: binding 127.0.0.1:0");
        let (unix_address, tcp_address) = (unix.local_address(), tcp.local_address());
        let proxy = Arc::new(Proxy::new(Upstream::new(&self.docker), chains, self.limits));
        let metrics = proxy.metrics().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(powerstrip_core::serve(
            vec![unix, tcp],
            proxy,
            ServerOptions {
                grace: Duration::from_secs(1),
                ..ServerOptions::default()
            },
            async move {
                let _ = stopped.await;
            },
        ));
        TestProxy {
            unix: unix_address,
            tcp: tcp_address,
            metrics,
            context: ctx,
            stop: Some(stop),
            _dir: dir,
        }
    }
}
