//! The validated model: what the proxy runs from.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::pattern::{Pattern, Request};
use crate::url::AdapterUrl;

/// A validated configuration: endpoints in file order, adapters in file order.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where it came from (a path, or e.g. `<inline>`), for log lines.
    pub origin: String,
    /// The hooked endpoints, in the order they appear in the file: their chains run in this order.
    pub endpoints: Vec<Endpoint>,
    /// Every adapter defined, in file order; each endpoint's chains name only these.
    pub adapters: Vec<AdapterDef>,
    /// Where adapters keep their cluster state (`[store]`); the embedded default when the
    /// file has no such section.
    pub store: StoreSection,
}

impl Config {
    /// No endpoints and no adapters: every request passes straight through.
    pub fn empty() -> Config {
        Config {
            origin: "<empty>".to_owned(),
            endpoints: Vec::new(),
            adapters: Vec::new(),
            store: StoreSection::default(),
        }
    }

    /// The adapter defined under this name, if any.
    pub fn adapter(&self, name: &str) -> Option<&AdapterDef> {
        self.adapters.iter().find(|a| a.name == name)
    }

    /// Endpoints whose pattern matches, in file order. `path` has no query string.
    ///
    /// ```
    /// use powerstrip_config::{parse, Format};
    ///
    /// let config = parse(r#"
    /// [adapters]
    /// weave = "http://weave/extension"
    ///
    /// [[endpoints]]
    /// match = "POST /*/containers/create"
    /// pre = ["weave"]
    ///
    /// [[endpoints]]
    /// match = "* *"
    /// post = []
    /// "#, "<inline>", Format::Toml).unwrap();
    ///
    /// let hooked: Vec<_> = config.matching("POST", "/v1.41/containers/create")
    ///     .map(|e| e.pattern.as_str())
    ///     .collect();
    /// assert_eq!(hooked, ["POST /*/containers/create", "* *"]);
    /// assert_eq!(config.matching("GET", "/_ping").count(), 1);
    /// ```
    pub fn matching<'a>(
        &'a self,
        method: &'a str,
        path: &'a str,
    ) -> impl Iterator<Item = &'a Endpoint> + 'a {
        let request = Request::new(method, path);
        self.endpoints
            .iter()
            .filter(move |e| e.pattern.matches_request(&request))
    }
}

/// The `[store]` section: the cluster state adapters share.
///
/// ```toml
/// [store]                          # the default: one file on this host
/// backend = "embedded"
/// path = "/var/lib/powerstrip/state/store.redb"   # default: store.redb in the state directory
///
/// [store]                          # several hosts: etcd v3
/// backend = "etcd"
/// endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379", "https://10.0.0.3:2379"]
/// prefix = "/powerstrip/prod/"     # default "/powerstrip/default/"
/// ca = "ca.pem"                    # TLS: the members' CA; cert and key: a client certificate
/// cert = "client.pem"
/// key = "client-key.pem"
/// user = "powerstrip"              # etcd authentication
/// password = "..."
/// timeout = "5s"                   # any call; default 5s
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoreSection {
    /// Which backend, and its settings.
    pub backend: StoreBackend,
    /// How long one call may take; `None` for the default (5 s).
    pub timeout: Option<Duration>,
    /// Line of `[store]` in the file (0 when absent).
    pub line: usize,
}

/// A store backend and its settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreBackend {
    /// One crash-safe file on this host.
    Embedded {
        /// The file; `None` for `store.redb` in the node's state directory.
        path: Option<PathBuf>,
    },
    /// An etcd v3 cluster.
    Etcd {
        /// Client URLs of the members.
        endpoints: Vec<String>,
        /// Key prefix of this cluster.
        prefix: String,
        /// CA certificate (PEM) for `https://` members.
        ca: Option<PathBuf>,
        /// Client certificate and key (PEM).
        identity: Option<(PathBuf, PathBuf)>,
        /// User and password.
        user: Option<(String, String)>,
    },
}

impl Default for StoreBackend {
    fn default() -> Self {
        StoreBackend::Embedded { path: None }
    }
}

/// The etcd key prefix when `[store]` names none.
pub const DEFAULT_ETCD_PREFIX: &str = "/powerstrip/default/";

/// A hooked endpoint: a pattern and the adapters to call around Docker.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The `METHOD PATH` glob.
    pub pattern: Pattern,
    /// Adapter names called before Docker, in order; may be empty.
    pub pre: Vec<String>,
    /// Adapter names called after Docker, in order; may be empty.
    pub post: Vec<String>,
    /// Line of the pattern in the file (the YAML key, the TOML `match` value), for logs.
    pub line: usize,
}

/// A defined adapter.
#[derive(Clone, Debug)]
pub struct AdapterDef {
    /// The name chains use.
    pub name: String,
    /// How to reach it.
    pub kind: AdapterKind,
    /// How long one call may take before it counts as failed.
    pub timeout: Duration,
    /// What a failed call does to the request.
    pub failure: FailurePolicy,
    /// For an HTTP adapter: whether it receives `unwind` calls (an extension the original
    /// protocol lacks, so off unless the operator says the adapter understands it).
    /// In-process adapters always receive them.
    pub unwind: bool,
    /// Docker events delivered to the adapter: `die`, `destroy` (container actions) or
    /// `type:action` (`network:connect`); empty means none.
    pub events: Vec<EventFilter>,
    /// For an `https://` adapter: the CA certificate (PEM) that signs its certificate,
    /// instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// Line of its name in the file, for logs.
    pub line: usize,
}

/// One entry of an adapter's `events` list: which Docker events it receives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFilter {
    /// The event's `Type` (`container`, `network`, ...).
    pub kind: String,
    /// The event's `Action` (`die`, `destroy`, `connect`, ...), or `*` for any.
    pub action: String,
}

impl EventFilter {
    /// The Docker object types that have events.
    pub const KINDS: [&'static str; 10] = [
        "container",
        "image",
        "volume",
        "network",
        "daemon",
        "plugin",
        "service",
        "node",
        "secret",
        "config",
    ];

    /// Parses `action` (a container action) or `type:action`; `*` is any action.
    pub fn parse(text: &str) -> Result<EventFilter, String> {
        let (kind, action) = text.split_once(':').unwrap_or(("container", text));
        if !Self::KINDS.contains(&kind) {
            return Err(format!(
                "unknown event type {kind:?} (expected one of {})",
                Self::KINDS.join(", ")
            ));
        }
        if action.is_empty() || action.contains(char::is_whitespace) {
            return Err(format!("bad event action {action:?}"));
        }
        Ok(EventFilter {
            kind: kind.to_owned(),
            action: action.to_owned(),
        })
    }

    /// True when an event of this type and action matches. Docker reports some actions
    /// with details after a colon (`exec_start: sh -c ...`, `health_status: healthy`);
    /// the filter matches the part before it.
    pub fn matches(&self, kind: &str, action: &str) -> bool {
        let action = action.split(':').next().unwrap_or(action).trim();
        self.kind == kind && (self.action == "*" || self.action == action)
    }
}

impl fmt::Display for EventFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.action)
    }
}

/// How an adapter is reached.
#[derive(Clone, Debug)]
pub enum AdapterKind {
    /// A PowerstripProtocolVersion 1 server reached over HTTP.
    Http {
        /// Where hooks are POSTed.
        url: AdapterUrl,
    },
    /// An adapter compiled into the binary; its name is checked there, not here.
    Builtin {
        /// The built-in's name, e.g. `image-policy`.
        builtin: String,
        /// Every other key of its table except `timeout` and `failure`, as JSON.
        options: serde_json::Map<String, serde_json::Value>,
    },
}

/// What happens when an adapter cannot be reached, times out or answers nonsense.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Refuse the request and tell the client which adapter failed.
    #[default]
    Fail,
    /// Log it and carry on as if the adapter had passed the document through.
    Ignore,
}

impl fmt::Display for FailurePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailurePolicy::Fail => "fail",
            FailurePolicy::Ignore => "ignore",
        })
    }
}
