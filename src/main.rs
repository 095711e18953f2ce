//! `powerstrip`: a hook framework for the Docker Engine API.
//!
//! The binary only parses flags and wires the libraries together: configuration from
//! `powerstrip-config`, the proxy from `powerstrip-core`.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use powerstrip_adapter::context::{Context, Settings};
use powerstrip_adapter::net::BindOptions;
use powerstrip_config::{AdapterKind, Config, StoreBackend, StoreSection};
use powerstrip_core::{
    Address, Builtins, ChainOptions, Chains, Limits, Listener, Proxy, ServerOptions, Upstream,
};
use powerstrip_store::StoreOptions;
use powerstrip_store::nodes::Registration;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Exit status for a configuration or usage error (EX_USAGE).
const EXIT_USAGE: u8 = 64;

/// A hook framework for the Docker Engine API.
///
/// powerstrip stands where clients expect Docker's socket and forwards every call to the
/// real daemon, running the adapter chains configured for matching calls before Docker
/// (pre-hooks: rewrite or refuse the request) and after it (post-hooks: rewrite the
/// response). Adapters speak PowerstripProtocolVersion 1 over HTTP or run in-process.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy in the foreground until SIGTERM or SIGINT.
    Serve(Box<ServeArgs>),
    /// Validate a configuration file and print each endpoint with its resolved chains.
    ///
    /// Reads TOML (adapters.toml) or the original Powerstrip YAML (adapters.yml), picked by
    /// extension or content. Exits 64 with `file:line: problem` on any error.
    Check {
        /// The configuration file.
        file: PathBuf,
    },
    /// List the adapters built into this binary (`builtin = "..."`) with their options.
    Adapters,
    /// List the live nodes of the cluster store a configuration names.
    Nodes {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Show what adapters keep in the cluster store (read-only).
    State {
        #[command(subcommand)]
        command: StateCommand,
    },
    /// The overlay networks of the networking adapter (net-ovs), from the cluster store.
    Net {
        #[command(subcommand)]
        command: NetCommand,
    },
    /// The datasets of the volumes adapter: list and inspect them (from the cluster store),
    /// snapshot, remove and move them (through this host's volumes adapter).
    Volumes {
        #[command(subcommand)]
        command: VolumesCommand,
    },
    /// The facts the placement adapter publishes for every live node (from the cluster
    /// store): `NAME=VALUE` lines under a header per node.
    Facts {
        /// Only this node (its name or id).
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Check an HTTP adapter (in any language) against PowerstripProtocolVersion 1.
    ///
    /// Calls it as the proxy does — pre- and post-hooks, null bodies, unknown fields,
    /// malformed calls — and prints one line per check and `N passed, N failed`. Exits 1
    /// when a check fails.
    Conformance {
        /// The adapter's URL: http://host:port/path or unix:///path/to.sock.
        url: String,
        /// How long each call may take.
        #[arg(long, default_value = "10s", value_parser = humantime_duration)]
        timeout: Duration,
    },
}

/// Where `nodes` and `state` find the store: the `[store]` section of a configuration, and
/// the state directory (for the embedded store's default file).
#[derive(Debug, clap::Args)]
struct StoreArgs {
    /// The configuration whose `[store]` to read (none: the embedded default).
    #[arg(long, short = 'c', env = "POWERSTRIP_CONFIG")]
    config: Option<PathBuf>,
    /// The state directory of the node (where the embedded store lives by default).
    #[arg(long, env = "POWERSTRIP_STATE_DIR", default_value = powerstrip_adapter::context::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum NetCommand {
    /// Every network: subnet, VNI, VLAN tag, addresses in use.
    Ls {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// One network and who holds each of its addresses.
    Inspect {
        /// The network.
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

/// Where `volumes snapshot|rm|move` find this host's volumes adapter.
#[derive(Debug, clap::Args)]
struct ControlArgs {
    /// The adapter's control socket (default: the `volumes.sock` under
    /// `<state dir>/adapters/*/`).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// The state directory of the node.
    #[arg(long, env = "POWERSTRIP_STATE_DIR", default_value = powerstrip_adapter::context::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// How long to wait for the answer (a move can take minutes).
    #[arg(long, default_value = "5m", value_parser = humantime_duration)]
    wait: Duration,
}

#[derive(Debug, Subcommand)]
enum VolumesCommand {
    /// Every dataset (profile, size, node, state) and snapshot.
    Ls {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// One dataset: where it is, who uses it, its move in progress, its snapshots.
    Inspect {
        /// The dataset.
        name: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Take a read-only snapshot of a dataset (on the node that holds it); prints its
    /// name, `snapshot-<id>`, for `-v copy@snapshot-<id>:/path`.
    Snapshot {
        /// The dataset.
        name: String,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Remove a dataset (refused while a container uses it), or a snapshot
    /// (`snapshot-<id or unique prefix>`).
    Rm {
        /// The dataset, or snapshot-<id>.
        name: String,
        #[command(flatten)]
        control: ControlArgs,
    },
    /// Move a dataset to another node (refused while a container uses it).
    Move {
        /// The dataset.
        name: String,
        /// The node (its name or id).
        #[arg(long)]
        to: String,
        #[command(flatten)]
        control: ControlArgs,
    },
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// List the keys under a prefix (all when none), with their revision and size.
    Ls {
        /// The key prefix, e.g. "nodes/".
        #[arg(default_value = "")]
        prefix: String,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print one key's value.
    Get {
        /// The key.
        key: String,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Where to listen: unix:///path/to.sock or tcp://host:port (repeatable). TCP binds
    /// exactly the host given; prefer a loopback address: the Docker API is root access.
    #[arg(
        long = "listen",
        short = 'l',
        env = "POWERSTRIP_LISTEN",
        value_delimiter = ',',
        default_value = "unix:///var/run/powerstrip.sock"
    )]
    listen: Vec<Address>,

    /// The Docker daemon to forward to: unix:///path/to.sock or tcp://host:port.
    #[arg(
        long,
        env = "POWERSTRIP_DOCKER",
        default_value = "unix:///var/run/docker.sock"
    )]
    docker: Address,

    /// The adapters and endpoints (adapters.toml, or the original adapters.yml). Without
    /// one, every call passes straight through.
    #[arg(long, short = 'c', env = "POWERSTRIP_CONFIG")]
    config: Option<PathBuf>,

    /// The largest JSON body, in bytes, collected to hand to hooks (requests beyond it get
    /// 413).
    #[arg(long, env = "POWERSTRIP_MAX_HOOK_BODY", default_value_t = powerstrip_core::proxy::DEFAULT_MAX_HOOK_BODY)]
    max_hook_body: usize,

    /// How long requests in flight and attach/exec sessions may take to finish after
    /// SIGTERM, e.g. "10s".
    #[arg(long, env = "POWERSTRIP_GRACE", default_value = "10s", value_parser = humantime_duration)]
    grace: Duration,

    /// The admin listener: /metrics (Prometheus), /healthz, /readyz; "none" to disable.
    #[arg(long, env = "POWERSTRIP_ADMIN", default_value = "tcp://127.0.0.1:9380")]
    admin: String,

    /// Give unix sockets to this group (name or gid), e.g. "docker"; their mode is 0660.
    #[arg(long, env = "POWERSTRIP_SOCKET_GROUP")]
    socket_group: Option<String>,

    /// Allow a TCP listener beyond loopback without --tlsverify. Anyone who reaches it
    /// controls Docker, i.e. is root on this host; a warning is logged at every start.
    #[arg(long, env = "POWERSTRIP_INSECURE_TCP")]
    insecure_tcp: bool,

    /// Serve TCP listeners over TLS (with --tlscert and --tlskey).
    #[arg(long, env = "POWERSTRIP_TLS")]
    tls: bool,

    /// Serve TCP listeners over TLS and require client certificates signed by --tlscacert
    /// (Docker's model: `docker --tlsverify -H tcp://host:2376`).
    #[arg(long, env = "POWERSTRIP_TLSVERIFY")]
    tlsverify: bool,

    /// The CA that signs client certificates (PEM), with --tlsverify.
    #[arg(long, env = "POWERSTRIP_TLSCACERT")]
    tlscacert: Option<PathBuf>,

    /// The server's certificate (PEM).
    #[arg(long, env = "POWERSTRIP_TLSCERT")]
    tlscert: Option<PathBuf>,

    /// The server's private key (PEM).
    #[arg(long, env = "POWERSTRIP_TLSKEY")]
    tlskey: Option<PathBuf>,

    /// The most client connections served at once per listener; further ones wait.
    #[arg(long, env = "POWERSTRIP_MAX_CONNECTIONS")]
    max_connections: Option<usize>,

    /// The largest request head (request line and headers) in bytes; beyond it, 431.
    #[arg(long, env = "POWERSTRIP_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    max_header_bytes: usize,

    /// Worker threads; default: the CPUs this process may run on (one means a single-
    /// threaded runtime).
    #[arg(long, env = "POWERSTRIP_THREADS")]
    threads: Option<usize>,

    /// How often the configuration file is checked for changes (SIGHUP reloads at once).
    #[arg(long, env = "POWERSTRIP_CONFIG_POLL", default_value = "1s", value_parser = humantime_duration)]
    config_poll: Duration,

    /// The node's state directory: the embedded store, the node's id, each adapter's
    /// directory.
    #[arg(long, env = "POWERSTRIP_STATE_DIR", default_value = powerstrip_adapter::context::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,

    /// This node's name in the cluster; default: the host name. Several proxies on one
    /// machine are several nodes.
    #[arg(long, env = "POWERSTRIP_NODE_NAME")]
    node_name: Option<String>,

    /// Where other nodes reach this one (an IP address or host name); default: the host
    /// name's address.
    #[arg(long, env = "POWERSTRIP_NODE_ADDRESS")]
    node_address: Option<String>,

    /// A label of this node, KEY=VALUE (repeatable).
    #[arg(long = "node-label", value_name = "KEY=VALUE", value_parser = key_value)]
    node_labels: Vec<(String, String)>,

    /// How long this node stays registered in the cluster after it stops renewing its
    /// registration (it crashed, or lost the store).
    #[arg(long, env = "POWERSTRIP_NODE_TTL", default_value = "10s", value_parser = humantime_duration)]
    node_ttl: Duration,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?}: expected KEY=VALUE"))
}

/// The store options a configuration's `[store]` section names, with the embedded file's
/// default under `state_dir`.
fn store_options(section: &StoreSection, state_dir: &Path) -> StoreOptions {
    let timeout = section.timeout.unwrap_or(powerstrip_store::DEFAULT_TIMEOUT);
    match &section.backend {
        StoreBackend::Embedded { path } => StoreOptions::Embedded {
            path: path
                .clone()
                .unwrap_or_else(|| powerstrip_store::embedded::default_path(state_dir)),
            timeout,
        },
        StoreBackend::Etcd {
            endpoints,
            prefix,
            ca,
            identity,
            user,
        } => StoreOptions::Etcd(powerstrip_store::EtcdOptions {
            endpoints: endpoints.clone(),
            prefix: prefix.clone(),
            user: user.clone(),
            ca: ca.clone(),
            identity: identity.clone(),
            timeout,
        }),
    }
}

/// A store in words, for `check` and the log.
fn describe_store(options: &StoreOptions) -> String {
    match options {
        StoreOptions::Embedded { path, .. } => format!("embedded {}", path.display()),
        StoreOptions::Etcd(etcd) => format!(
            "etcd {} prefix {}{}",
            etcd.endpoints.join(","),
            etcd.prefix,
            if etcd.ca.is_some() || etcd.identity.is_some() {
                ", TLS"
            } else {
                ""
            }
        ),
    }
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    s.parse::<humantime::Duration>()
        .map(Into::into)
        .map_err(|e| format!("{e} (e.g. 500ms, 10s)"))
}

/// The in-process adapters this binary links, by their `builtin = "..."` names.
fn builtins() -> Builtins {
    let mut builtins = Builtins::new();
    for builtin in powerstrip_examples::builtins() {
        builtins.register(builtin);
    }
    builtins.register(powerstrip_net_ovs::builtin());
    builtins.register(powerstrip_volumes::builtin());
    builtins.register(powerstrip_placement::builtin());
    builtins
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { file } => check(&file),
        Command::Conformance { url, timeout } => conformance(&url, timeout),
        Command::Nodes { store } => inspect(&store, Show::Nodes),
        Command::Net { command } => match command {
            NetCommand::Ls { store } => inspect(&store, Show::Networks),
            NetCommand::Inspect { name, store } => inspect(&store, Show::Network(name)),
        },
        Command::Facts { node, store } => inspect(&store, Show::Facts(node)),
        Command::Volumes { command } => match command {
            VolumesCommand::Ls { store } => inspect(&store, Show::Volumes),
            VolumesCommand::Inspect { name, store } => inspect(&store, Show::Volume(name)),
            VolumesCommand::Snapshot { name, control } => volumes_call(
                &control,
                "snapshot",
                &serde_json::json!({ "dataset": name }),
            ),
            VolumesCommand::Rm { name, control } => {
                volumes_call(&control, "rm", &serde_json::json!({ "name": name }))
            }
            VolumesCommand::Move { name, to, control } => volumes_call(
                &control,
                "move",
                &serde_json::json!({ "dataset": name, "to": to }),
            ),
        },
        Command::State { command } => match command {
            StateCommand::Ls { prefix, store } => inspect(&store, Show::Keys(prefix)),
            StateCommand::Get { key, store } => inspect(&store, Show::Key(key)),
        },
        Command::Adapters => {
            for builtin in builtins().iter() {
                println!("{}", builtin.describe());
            }
            ExitCode::SUCCESS
        }
        Command::Serve(args) => {
            init_logging();
            match run_serve(*args) {
                Ok(code) => code,
                Err(err) => {
                    eprintln!("powerstrip: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

/// Validates a configuration completely: its builtins are built (with their options) in a
/// context of their own — an in-memory store, background tasks stopped at once — so that
/// nothing real is touched.
#[tokio::main(flavor = "current_thread")]
async fn check(file: &Path) -> ExitCode {
    let options = ChainOptions {
        max_answer: powerstrip_core::proxy::DEFAULT_MAX_HOOK_BODY,
    };
    let validated = async {
        let config = powerstrip_config::load(file)?;
        let ctx = Context::in_memory();
        let built = Chains::build(&config, &builtins(), options, &ctx);
        ctx.shutdown(Duration::from_secs(1)).await;
        built.map(|_| config)
    };
    match validated.await {
        Ok(config) => {
            print!("{}", describe(&config));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// What `nodes` and `state` show.
enum Show {
    Nodes,
    Keys(String),
    Key(String),
    Networks,
    Network(String),
    Volumes,
    Volume(String),
    Facts(Option<String>),
}

/// `volumes snapshot|rm|move`: a call to this host's volumes adapter.
#[tokio::main(flavor = "current_thread")]
async fn volumes_call(args: &ControlArgs, call: &str, body: &serde_json::Value) -> ExitCode {
    let socket = match &args.socket {
        Some(socket) => socket.clone(),
        None => {
            let pattern = args.state_dir.join("adapters");
            let found = std::fs::read_dir(&pattern).ok().and_then(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| powerstrip_volumes::control::socket(&e.path()))
                    .find(|p| p.exists())
            });
            match found {
                Some(socket) => socket,
                None => {
                    eprintln!(
                        "powerstrip: no volumes adapter's socket under {}/*/ (is powerstrip serving with the volumes adapter here? --socket names it)",
                        pattern.display()
                    );
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    match powerstrip_volumes::control::call(&socket, call, body, args.wait).await {
        Ok(message) => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("powerstrip: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the store a configuration names, read-only: the embedded file (also while the
/// proxy has it open), or etcd.
#[tokio::main(flavor = "current_thread")]
async fn inspect(args: &StoreArgs, what: Show) -> ExitCode {
    let section = match &args.config {
        None => StoreSection::default(),
        Some(file) => match powerstrip_config::load(file) {
            Ok(config) => config.store,
            Err(errors) => {
                eprintln!("{errors}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
    };
    let options = store_options(&section, &args.state_dir);
    let prefix = match &what {
        Show::Nodes => powerstrip_store::nodes::PREFIX.to_owned(),
        Show::Keys(prefix) | Show::Key(prefix) => prefix.clone(),
        Show::Networks | Show::Network(_) => "net-ovs/".to_owned(),
        Show::Volumes | Show::Volume(_) => powerstrip_volumes::state::PREFIX.to_owned(),
        Show::Facts(_) => powerstrip_placement::adapter::FACTS_PREFIX.to_owned(),
    };
    let listing = match list(&options, &prefix).await {
        Ok(listing) => listing,
        Err(e) => {
            eprintln!("powerstrip: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Node names, for what shows node ids.
    let names = || async {
        list(&options, powerstrip_store::nodes::PREFIX)
            .await
            .map(|l| {
                l.kvs
                    .iter()
                    .filter_map(|kv| {
                        serde_json::from_slice::<powerstrip_store::nodes::Node>(&kv.value).ok()
                    })
                    .map(|n| (n.id, n.name))
                    .collect::<std::collections::BTreeMap<_, _>>()
            })
            .unwrap_or_default()
    };
    match what {
        Show::Facts(node) => {
            match powerstrip_placement::report::facts(&listing.kvs, node.as_deref()) {
                Some(text) => print!("{text}"),
                None => {
                    match node {
                        Some(node) => eprintln!(
                            "powerstrip: no live node {node:?} publishes facts in {}",
                            describe_store(&options)
                        ),
                        None => eprintln!(
                            "powerstrip: no live node publishes facts in {} (is the placement adapter running?)",
                            describe_store(&options)
                        ),
                    }
                    return ExitCode::FAILURE;
                }
            }
        }
        Show::Volumes => print!(
            "{}",
            powerstrip_volumes::report::ls(&listing.kvs, &names().await)
        ),
        Show::Volume(name) => {
            match powerstrip_volumes::report::inspect(&listing.kvs, &names().await, &name) {
                Some(text) => print!("{text}"),
                None => {
                    eprintln!(
                        "powerstrip: no dataset {name:?} in {}",
                        describe_store(&options)
                    );
                    return ExitCode::FAILURE;
                }
            }
        }
        Show::Networks => print!("{}", powerstrip_net_ovs::report::ls(&listing.kvs)),
        Show::Network(name) => match powerstrip_net_ovs::report::inspect(&listing.kvs, &name) {
            Some(text) => print!("{text}"),
            None => {
                eprintln!(
                    "powerstrip: no network {name:?} in {}",
                    describe_store(&options)
                );
                return ExitCode::FAILURE;
            }
        },
        Show::Nodes => {
            println!("{:<20} {:<34} {:<16} LABELS", "NAME", "ID", "ADDRESS");
            let mut nodes: Vec<powerstrip_store::nodes::Node> = listing
                .kvs
                .iter()
                .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
                .collect();
            nodes.sort_by(|a, b| a.name.cmp(&b.name));
            for node in nodes {
                let labels: Vec<String> = node
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                println!(
                    "{:<20} {:<34} {:<16} {}",
                    node.name,
                    node.id,
                    node.address,
                    labels.join(",")
                );
            }
        }
        Show::Keys(_) => {
            println!("{:<60} {:>10} {:>8} LEASE", "KEY", "REVISION", "BYTES");
            for kv in &listing.kvs {
                let lease = kv.lease.map_or_else(|| "-".to_owned(), |l| l.to_string());
                println!(
                    "{:<60} {:>10} {:>8} {lease}",
                    kv.key,
                    kv.mod_revision,
                    kv.value.len()
                );
            }
        }
        Show::Key(key) => match listing.kvs.iter().find(|kv| kv.key == key) {
            Some(kv) => match serde_json::from_slice::<serde_json::Value>(&kv.value) {
                Ok(json) => println!(
                    "{}",
                    serde_json::to_string_pretty(&json).unwrap_or_default()
                ),
                Err(_) => println!("{}", String::from_utf8_lossy(&kv.value)),
            },
            None => {
                eprintln!("powerstrip: no key {key:?} in {}", describe_store(&options));
                return ExitCode::FAILURE;
            }
        },
    }
    ExitCode::SUCCESS
}

/// The keys under `prefix`, read-only: the embedded file (also while the proxy has it
/// open), or etcd.
async fn list(
    options: &StoreOptions,
    prefix: &str,
) -> Result<powerstrip_store::Listing, powerstrip_store::StoreError> {
    match options {
        StoreOptions::Embedded { path, .. } => {
            powerstrip_store::Embedded::read_only_list(path, prefix)
        }
        StoreOptions::Etcd(etcd) => match powerstrip_store::Etcd::connect(etcd).await {
            Ok(store) => powerstrip_store::Store::list(&store, prefix).await,
            Err(e) => Err(e),
        },
    }
}

/// What `check` prints: each endpoint with its chains, then each adapter with its settings.
fn describe(config: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: ok, {} endpoint(s), {} adapter(s)",
        config.origin,
        config.endpoints.len(),
        config.adapters.len()
    );
    let store = store_options(
        &config.store,
        Path::new(powerstrip_adapter::context::DEFAULT_STATE_DIR),
    );
    let _ = writeln!(out, "store: {}", describe_store(&store));
    let chain = |names: &[String]| {
        if names.is_empty() {
            "(none)".to_owned()
        } else {
            names.join(" -> ")
        }
    };
    for endpoint in &config.endpoints {
        let _ = writeln!(out, "\n{}", endpoint.pattern);
        let _ = writeln!(out, "  pre:  {}", chain(&endpoint.pre));
        let _ = writeln!(out, "  post: {}", chain(&endpoint.post));
        if let Some(note) = streamed_post_hooks(endpoint) {
            let _ = writeln!(out, "  note: {note}");
        }
    }
    if !config.adapters.is_empty() {
        let _ = writeln!(out, "\nadapters:");
    }
    for adapter in &config.adapters {
        let kind = match &adapter.kind {
            AdapterKind::Http { url } => url.to_string(),
            AdapterKind::Builtin { builtin, .. } => format!("builtin {builtin}"),
        };
        let mut settings = format!(
            "timeout {}, failure {}",
            humantime::format_duration(adapter.timeout),
            adapter.failure
        );
        if adapter.unwind {
            settings.push_str(", unwind");
        }
        if let Some(ca) = &adapter.ca {
            let _ = write!(settings, ", ca {}", ca.display());
        }
        if !adapter.events.is_empty() {
            let events: Vec<String> = adapter.events.iter().map(ToString::to_string).collect();
            let _ = write!(settings, ", events {}", events.join(" "));
        }
        let _ = writeln!(out, "  {:<16} {kind}  ({settings})", adapter.name);
    }
    out
}

/// Why an endpoint's post-hooks will run only on Docker's error answers: every Docker
/// endpoint its pattern hooks streams its answer, which post-hooks never see.
fn streamed_post_hooks(endpoint: &powerstrip_config::Endpoint) -> Option<String> {
    if endpoint.post.is_empty() {
        return None;
    }
    let streamed = powerstrip_core::streaming::streamed_only(&endpoint.pattern)?;
    Some(format!(
        "post-hooks {} run only on Docker's error answers here: Docker streams the answer of \
         every endpoint this pattern hooks ({}), and streamed answers skip post-hooks",
        endpoint.post.join(", "),
        streamed.join(", ")
    ))
}

#[tokio::main(flavor = "current_thread")]
async fn conformance(url: &str, timeout: Duration) -> ExitCode {
    let options = powerstrip_testkit::conformance::Options { timeout };
    let report = powerstrip_testkit::conformance::check(url, &options).await;
    println!("{report}");
    if report.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs `serve` on a runtime with one worker per CPU this process may use (a current-thread
/// runtime when that is one: no work-stealing overhead when pinned to a core).
fn run_serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let threads = args
        .threads
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1)
        .max(1);
    let runtime = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(serve(args))
}

/// Everything `serve` checks before binding anything.
struct Plan {
    tls: Option<Arc<powerstrip_adapter::tls::ServerTls>>,
    group: Option<u32>,
    admin: Option<Address>,
}

fn plan(args: &ServeArgs) -> Result<Plan, String> {
    let tls = if args.tls || args.tlsverify {
        let (Some(cert), Some(key)) = (&args.tlscert, &args.tlskey) else {
            return Err("--tls and --tlsverify need --tlscert and --tlskey".into());
        };
        let client_ca =
            if args.tlsverify {
                Some(args.tlscacert.clone().ok_or(
                    "--tlsverify needs --tlscacert, the CA that signs client certificates",
                )?)
            } else {
                None
            };
        Some(Arc::new(powerstrip_adapter::tls::ServerTls {
            cert: cert.clone(),
            key: key.clone(),
            client_ca,
        }))
    } else {
        None
    };
    for address in &args.listen {
        if matches!(address, Address::Tcp { .. })
            && !address.is_loopback()
            && !args.tlsverify
            && !args.insecure_tcp
        {
            return Err(format!(
                "refusing to listen on {address} without --tlsverify: anyone who reaches it controls Docker, \
                 which is root on this host. Use --tlsverify with certificates, a loopback address, or \
                 --insecure-tcp if you really mean it"
            ));
        }
    }
    let group = match &args.socket_group {
        None => None,
        Some(group) => Some(match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => nix::unistd::Group::from_name(group)
                .map_err(|e| format!("--socket-group {group}: {e}"))?
                .ok_or_else(|| format!("--socket-group {group}: no such group"))?
                .gid
                .as_raw(),
        }),
    };
    let admin = match args.admin.as_str() {
        "none" | "" => None,
        text => Some(
            text.parse::<Address>()
                .map_err(|e| format!("--admin: {e}"))?,
        ),
    };
    Ok(Plan { tls, group, admin })
}

async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    // Signals are watched before anything is bound or announced: from the moment a client
    // could know of this process, SIGTERM is a clean exit and SIGHUP a reload, never the
    // default action (death).
    let shutdown_signal = powerstrip_adapter::cli::shutdown_signal();
    let mut hangup = powerstrip_core::reload::hangup_signal();
    let plan = match plan(&args) {
        Ok(plan) => plan,
        Err(problem) => {
            eprintln!("powerstrip: {problem}");
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let options = ChainOptions {
        max_answer: args.max_hook_body,
    };
    let config = match &args.config {
        Some(file) => match powerstrip_config::load(file) {
            Ok(config) => Some(config),
            Err(errors) => {
                eprintln!("{errors}");
                return Ok(ExitCode::from(EXIT_USAGE));
            }
        },
        None => None,
    };
    // The adapters' context: the cluster store, the real Docker, this node.
    let settings = Settings {
        store: store_options(
            config
                .as_ref()
                .map_or(&StoreSection::default(), |c| &c.store),
            &args.state_dir,
        ),
        docker: args.docker.clone(),
        state_dir: args.state_dir.clone(),
        node_name: args.node_name.clone(),
        node_address: args.node_address.clone(),
        node_labels: args.node_labels.iter().cloned().collect(),
    };
    let ctx = match Context::open(&settings).await {
        Ok(ctx) => ctx,
        Err(err) => {
            eprintln!("powerstrip: {err}");
            return Ok(ExitCode::FAILURE);
        }
    };
    info!(store = %describe_store(&settings.store), node = %ctx.node().name,
        id = %ctx.node().id, address = %ctx.node().address, "node");
    let chains = match &config {
        Some(config) => match Chains::build(config, &builtins(), options, &ctx) {
            Ok(chains) => {
                info!(config = %config.origin, endpoints = config.endpoints.len(),
                    adapters = config.adapters.len(), "configuration loaded");
                for endpoint in &config.endpoints {
                    if let Some(note) = streamed_post_hooks(endpoint) {
                        warn!(pattern = %endpoint.pattern, "{note}");
                    }
                }
                chains
            }
            Err(errors) => {
                eprintln!("{errors}");
                return Ok(ExitCode::from(EXIT_USAGE));
            }
        },
        None => {
            info!("no configuration: every call passes straight through");
            Chains::default()
        }
    };
    let server_tls = match &plan.tls {
        Some(files) => match powerstrip_adapter::tls::server_config(files) {
            Ok(config) => Some(config),
            Err(err) => {
                eprintln!("powerstrip: {err}");
                return Ok(ExitCode::from(EXIT_USAGE));
            }
        },
        None => None,
    };

    let bind = BindOptions { group: plan.group };
    let mut listeners = Vec::new();
    for address in &args.listen {
        let mut listener = Listener::bind_with(address, &bind).await?;
        if let Some(config) = &server_tls {
            listener = listener.with_tls(config.clone());
        }
        if matches!(address, Address::Tcp { .. }) && !address.is_loopback() && !listener.is_tls() {
            warn!(listen = %address, "INSECURE: TCP without TLS beyond loopback (--insecure-tcp): anyone who can reach this address controls Docker");
        } else if matches!(address, Address::Tcp { .. })
            && !address.is_loopback()
            && !args.tlsverify
        {
            warn!(listen = %address, "TLS without --tlsverify: clients are not authenticated; anyone who can reach this address controls Docker");
        }
        listeners.push(listener);
    }
    let admin = match &plan.admin {
        Some(address) => Some(Listener::bind(address).await?),
        None => None,
    };
    let proxy = Arc::new(Proxy::new(
        Upstream::new(&args.docker),
        chains,
        Limits {
            max_hook_body: args.max_hook_body,
        },
    ));
    // This node, alive in the cluster for as long as this process keeps its lease.
    let registration = match Registration::register(
        ctx.store().clone(),
        ctx.node().clone(),
        args.node_ttl,
    )
    .await
    {
        Ok(registration) => Some(registration),
        Err(err) => {
            warn!(error = %err, "cannot register this node; adapters that need the cluster will refuse calls until the store answers");
            None
        }
    };
    for listener in &listeners {
        // The line operators copy into their shell.
        println!("export DOCKER_HOST={}", listener.local_address());
    }
    if let Some(admin) = &admin {
        println!(
            "# metrics: http://{}/metrics",
            admin_authority(&admin.local_address())
        );
    }

    let stop = CancellationToken::new();
    let watcher = match args.config.clone() {
        Some(path) => {
            let builtins = builtins();
            let (ctx, store) = (ctx.clone(), settings.store.clone());
            let state_dir = args.state_dir.clone();
            tokio::spawn(powerstrip_core::reload::watch_config(
                proxy.clone(),
                path,
                args.config_poll,
                hangup,
                move |file: &Path| {
                    let config = powerstrip_config::load(file)?;
                    if store_options(&config.store, &state_dir) != store {
                        warn!("the [store] section changed; it takes effect at the next restart");
                    }
                    Chains::build(&config, &builtins, options, &ctx)
                },
            ))
        }
        // Nothing to reload, but SIGHUP must still not kill the proxy.
        None => tokio::spawn(async move {
            if let Some(hangup) = hangup.as_mut() {
                while hangup.recv().await.is_some() {
                    info!("SIGHUP received; no configuration file to reload");
                }
            }
        }),
    };
    let admin = admin.map(|listener| {
        tokio::spawn(powerstrip_core::admin::serve_admin(
            vec![listener],
            proxy.clone(),
            stop.clone().cancelled_owned(),
        ))
    });
    let server_options = ServerOptions {
        grace: args.grace,
        max_connections: args.max_connections,
        max_header_bytes: args.max_header_bytes,
        ..ServerOptions::default()
    };
    let shutdown = {
        let stop = stop.clone();
        async move {
            shutdown_signal.await;
            stop.cancel();
        }
    };
    powerstrip_core::serve(listeners, proxy.clone(), server_options, shutdown).await;
    stop.cancel();
    watcher.abort();
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    // The adapters' background work stops, then the node leaves the cluster at once
    // rather than when its lease runs out.
    proxy.replace_chains(Chains::default());
    ctx.shutdown(args.grace).await;
    if let Some(registration) = registration
        && let Err(err) = registration.deregister().await
    {
        warn!(error = %err, "cannot deregister this node; it expires with its lease");
    }
    Ok(ExitCode::SUCCESS)
}

/// `host:port` of a TCP address for a URL (unix admin sockets print their path).
fn admin_authority(address: &Address) -> String {
    match address {
        Address::Tcp { host, port } => Address::tcp_target(host, *port),
        Address::Unix(path) => path.display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_defaults_are_safe() {
        let cli = Cli::try_parse_from(["powerstrip", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.docker.to_string(), "unix:///var/run/docker.sock");
        assert!(args.listen.iter().all(Address::is_loopback));
    }

    #[test]
    fn listen_is_repeatable() {
        let cli = Cli::try_parse_from([
            "powerstrip",
            "serve",
            "--listen",
            "unix:///tmp/a.sock",
            "--listen",
            "tcp://127.0.0.1:2375",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.listen.len(), 2);
    }
}
