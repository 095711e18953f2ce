//! A ready-made `main` for an adapter served over HTTP, so an adapter crate's binary is
//! one line:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use powerstrip_adapter::{builtin::Builtin, Adapter};
//! # struct Null;
//! # impl Adapter for Null {}
//! # fn builtin() -> Builtin { Builtin::new("null", "passes everything", |_, _| Ok(Arc::new(Null))) }
//! fn main() -> std::process::ExitCode {
//!     powerstrip_adapter::cli::main(builtin())
//! }
//! ```
//!
//! The binary then takes `--listen ADDR` (repeatable; `tcp://127.0.0.1:9000`,
//! `unix:///run/x.sock`), `--set KEY=VALUE` for each option (the value is read as JSON when
//! it parses, e.g. `--set 'allow=["busybox:*"]'`, else as a string), and `--log FILTER`.
//! It prints the URL to put in `adapters.toml` for each listener, then serves until SIGTERM
//! or SIGINT. Options are the same as in-process (`builtin = "..."`), built by the same
//! [`Builtin`], with the same [`Context`](crate::Context), made from `--store`, `--docker`,
//! `--state-dir`, `--node-name` and `--node-address` as `powerstrip serve` makes it.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Arg, ArgAction, Command};
use tracing::{info, warn};

use std::path::PathBuf;

use powerstrip_store::StoreOptions;

use crate::builtin::{Builtin, Options};
use crate::context::{Context, Settings};
use crate::net::{Address, Listener};

/// Exit status for bad flags or options (EX_USAGE).
const EXIT_USAGE: u8 = 64;

/// Runs `builtin` as an HTTP adapter server; returns when it has shut down.
pub fn main(builtin: Builtin) -> ExitCode {
    let matches = command(&builtin).get_matches();
    let filter = matches
        .get_one::<String>("log")
        .cloned()
        .unwrap_or_else(|| "info".to_owned());
    init_logging(&filter);

    let options = match parse_sets(matches.get_many::<String>("set").into_iter().flatten()) {
        Ok(options) => options,
        Err(err) => {
            eprintln!("{}: {err}", builtin.name());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let settings = match settings(&matches, builtin.name()) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("{}: {err}", builtin.name());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let addresses: Vec<Address> = matches
        .get_many::<Address>("listen")
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("{}: cannot start the runtime: {err}", builtin.name());
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        // Bad options are a usage error found before anything real is opened or created.
        let scratch = Context::in_memory();
        let checked = builtin.build(&options, &scratch);
        scratch.shutdown(std::time::Duration::from_secs(1)).await;
        if let Err(err) = checked {
            eprintln!("{}: bad options: {err}", builtin.name());
            return ExitCode::from(EXIT_USAGE);
        }
        let ctx = match Context::open(&settings).await {
            Ok(ctx) => ctx,
            Err(err) => {
                eprintln!("{}: {err}", builtin.name());
                return ExitCode::FAILURE;
            }
        };
        let ctx = ctx.for_adapter(builtin.name());
        let adapter = match builtin.build(&options, &ctx) {
            Ok(adapter) => adapter,
            Err(err) => {
                eprintln!("{}: bad options: {err}", builtin.name());
                return ExitCode::from(EXIT_USAGE);
            }
        };
        let code = run(builtin.name(), adapter, &addresses).await;
        ctx.shutdown(std::time::Duration::from_secs(5)).await;
        code
    })
}

/// The context's settings from the flags. A served adapter keeps its state apart from the
/// proxy's by default (`/var/lib/powerstrip/served/<name>`): an embedded store is one
/// process's file; share state through etcd.
fn settings(matches: &clap::ArgMatches, name: &str) -> Result<Settings, String> {
    let state_dir = matches
        .get_one::<PathBuf>("state-dir")
        .cloned()
        .unwrap_or_else(|| PathBuf::from("/var/lib/powerstrip/served").join(name));
    let spec = matches
        .get_one::<String>("store")
        .map_or("embedded", String::as_str);
    let mut store = store_spec(spec, &state_dir)?;
    if let StoreOptions::Etcd(etcd) = &mut store {
        if let Some(prefix) = matches.get_one::<String>("store-prefix") {
            etcd.prefix.clone_from(prefix);
        }
        etcd.ca = matches.get_one::<PathBuf>("store-ca").cloned();
        etcd.identity = match (
            matches.get_one::<PathBuf>("store-cert"),
            matches.get_one::<PathBuf>("store-key"),
        ) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            (None, None) => None,
            _ => return Err("--store-cert and --store-key go together".into()),
        };
        etcd.user = match (
            matches.get_one::<String>("store-user"),
            matches.get_one::<String>("store-password"),
        ) {
            (Some(user), Some(password)) => Some((user.clone(), password.clone())),
            (None, None) => None,
            _ => return Err("--store-user and --store-password go together".into()),
        };
    }
    Ok(Settings {
        store,
        docker: matches
            .get_one::<Address>("docker")
            .cloned()
            .unwrap_or_else(|| Address::Unix("/var/run/docker.sock".into())),
        state_dir,
        node_name: matches.get_one::<String>("node-name").cloned(),
        node_address: matches.get_one::<String>("node-address").cloned(),
        node_labels: Default::default(),
    })
}

/// A store named on the command line: `embedded` (the file `store.redb` in the state
/// directory), `embedded:/path/file.redb`, or `etcd:http://HOST:2379[,http://...]`.
pub fn store_spec(spec: &str, state_dir: &std::path::Path) -> Result<StoreOptions, String> {
    let timeout = powerstrip_store::DEFAULT_TIMEOUT;
    if spec == "embedded" {
        return Ok(StoreOptions::Embedded {
            path: powerstrip_store::embedded::default_path(state_dir),
            timeout,
        });
    }
    if let Some(path) = spec.strip_prefix("embedded:") {
        return Ok(StoreOptions::Embedded {
            path: PathBuf::from(path),
            timeout,
        });
    }
    if let Some(endpoints) = spec.strip_prefix("etcd:") {
        let endpoints: Vec<&str> = endpoints.split(',').filter(|e| !e.is_empty()).collect();
        if endpoints.is_empty()
            || !endpoints
                .iter()
                .all(|e| e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(format!(
                "--store {spec:?}: expected etcd:http://HOST:PORT[,http://HOST:PORT...]"
            ));
        }
        return Ok(StoreOptions::Etcd(powerstrip_store::EtcdOptions::new(
            endpoints,
        )));
    }
    Err(format!(
        "--store {spec:?}: expected embedded, embedded:/path/file.redb or etcd:http://HOST:PORT,..."
    ))
}

fn command(builtin: &Builtin) -> Command {
    let mut options_help = String::from("Options (--set KEY=VALUE):\n");
    for line in builtin.describe().lines().skip(1) {
        options_help.push_str(line);
        options_help.push('\n');
    }
    Command::new(builtin.name().to_owned())
        .about(format!(
            "{} — a Powerstrip adapter (PowerstripProtocolVersion 1 over HTTP)",
            builtin.summary()
        ))
        .after_help(options_help)
        .arg(
            Arg::new("listen")
                .long("listen")
                .short('l')
                .env("POWERSTRIP_ADAPTER_LISTEN")
                .value_delimiter(',')
                .required(true)
                .action(ArgAction::Append)
                .value_parser(clap::value_parser!(Address))
                .help("Where to listen: tcp://127.0.0.1:PORT (port 0 picks one) or unix:///path.sock; repeatable"),
        )
        .arg(
            Arg::new("set")
                .long("set")
                .value_name("KEY=VALUE")
                .action(ArgAction::Append)
                .help("Sets an option; VALUE is read as JSON if it parses (numbers, lists), else as text"),
        )
        .arg(
            Arg::new("store")
                .long("store")
                .env("POWERSTRIP_STORE")
                .value_name("STORE")
                .help("The cluster store: embedded, embedded:/path/file.redb, or etcd:http://HOST:2379[,...] [default: embedded, in the state directory]"),
        )
        .arg(Arg::new("store-prefix").long("store-prefix").value_name("PREFIX").help("etcd: the cluster's key prefix [default: /powerstrip/default/]"))
        .arg(Arg::new("store-ca").long("store-ca").value_name("PEM").value_parser(clap::value_parser!(PathBuf)).help("etcd: CA certificate of the members"))
        .arg(Arg::new("store-cert").long("store-cert").value_name("PEM").value_parser(clap::value_parser!(PathBuf)).help("etcd: client certificate"))
        .arg(Arg::new("store-key").long("store-key").value_name("PEM").value_parser(clap::value_parser!(PathBuf)).help("etcd: client key"))
        .arg(Arg::new("store-user").long("store-user").value_name("USER").help("etcd: user"))
        .arg(Arg::new("store-password").long("store-password").env("POWERSTRIP_STORE_PASSWORD").hide_env_values(true).value_name("PASSWORD").help("etcd: password"))
        .arg(
            Arg::new("docker")
                .long("docker")
                .env("POWERSTRIP_DOCKER")
                .value_name("ADDR")
                .value_parser(clap::value_parser!(Address))
                .help("The real Docker daemon the adapter may call [default: unix:///var/run/docker.sock]"),
        )
        .arg(Arg::new("state-dir").long("state-dir").env("POWERSTRIP_STATE_DIR").value_name("DIR").value_parser(clap::value_parser!(PathBuf)).help("The adapter's state directory [default: /var/lib/powerstrip/served/NAME]"))
        .arg(Arg::new("node-name").long("node-name").env("POWERSTRIP_NODE_NAME").value_name("NAME").help("This node's name [default: the host name]"))
        .arg(Arg::new("node-address").long("node-address").env("POWERSTRIP_NODE_ADDRESS").value_name("ADDR").help("Where peers reach this node [default: the host name's address]"))
        .arg(
            Arg::new("log")
                .long("log")
                .env("RUST_LOG")
                .value_name("FILTER")
                .help("Log filter, e.g. info or debug [default: info]"),
        )
}

/// Reads `KEY=VALUE` pairs into options.
fn parse_sets<'a>(sets: impl Iterator<Item = &'a String>) -> Result<Options, String> {
    let mut options = Options::new();
    for set in sets {
        let (key, value) = set
            .split_once('=')
            .ok_or_else(|| format!("--set {set:?}: expected KEY=VALUE"))?;
        let value = serde_json::from_str(value)
            .unwrap_or_else(|_| serde_json::Value::String(value.to_owned()));
        options.insert(key.trim().to_owned(), value);
    }
    Ok(options)
}

fn init_logging(filter: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

async fn run(name: &str, adapter: Arc<dyn crate::Adapter>, addresses: &[Address]) -> ExitCode {
    // Before anything is announced: a signal from now on is a clean shutdown.
    let shutdown = shutdown_signal();
    // SIGHUP (log rotation, a reload by habit) never kills a served adapter; adapters that
    // keep files watch it themselves and reopen them.
    log_hangups();
    let mut listeners = Vec::new();
    for address in addresses {
        match Listener::bind(address).await {
            Ok(listener) => listeners.push(listener),
            Err(err) => {
                eprintln!("{name}: {err}");
                return ExitCode::FAILURE;
            }
        }
    }
    for listener in &listeners {
        // The line operators put in adapters.toml.
        println!("{}", url(&listener.local_address()));
    }
    info!(adapter = name, "serving PowerstripProtocolVersion 1");
    crate::serve::serve_listeners(adapter, listeners, shutdown).await;
    ExitCode::SUCCESS
}

/// From now on, logs each SIGHUP instead of dying of it (its default action).
fn log_hangups() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut hangup) => {
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    info!("SIGHUP received");
                }
            });
        }
        Err(err) => warn!(error = %err, "cannot watch SIGHUP"),
    }
}

/// The adapter URL for a listener: `http://host:port/` or `unix:///path`.
fn url(address: &Address) -> String {
    match address {
        Address::Unix(path) => format!("unix://{}", path.display()),
        Address::Tcp { host, port } => format!("http://{}/", Address::tcp_target(host, *port)),
    }
}

/// Watches SIGTERM and SIGINT from the moment it is called (inside a runtime), so a
/// signal that arrives before the returned future is first polled still ends the server
/// cleanly rather than killing the process. The future resolves on the first of them.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => tokio::select! {
                _ = term.recv() => info!("SIGTERM received"),
                _ = int.recv() => info!("SIGINT received"),
            },
            (term, int) => {
                warn!(
                    sigterm = ?term.err(),
                    sigint = ?int.err(),
                    "cannot watch the shutdown signals; stopping on SIGINT only"
                );
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_json_when_they_parse() {
        let sets = [
            "delay=500ms".to_owned(),
            r#"allow=["busybox:*"]"#.to_owned(),
            "allow_root=true".to_owned(),
        ];
        let options = parse_sets(sets.iter()).unwrap();
        assert_eq!(options["delay"], "500ms");
        assert_eq!(options["allow"], serde_json::json!(["busybox:*"]));
        assert_eq!(options["allow_root"], true);
        assert!(parse_sets(["nokey".to_owned()].iter()).is_err());
    }

    #[test]
    fn urls_are_what_adapters_toml_takes() {
        assert_eq!(
            url(&"tcp://127.0.0.1:9000".parse().unwrap()),
            "http://127.0.0.1:9000/"
        );
        assert_eq!(
            url(&"unix:///run/a.sock".parse().unwrap()),
            "unix:///run/a.sock"
        );
    }

    #[test]
    fn command_is_well_formed() {
        struct Null;
        impl crate::Adapter for Null {}
        command(&Builtin::new("null", "passes", |_, _| Ok(Arc::new(Null)))).debug_assert();
    }
}
