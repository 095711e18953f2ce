//! A ready-made `main` for an adapter served over HTTP, so an adapter crate's binary is
//! one line:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use powerstrip_adapter::{builtin::Builtin, Adapter};
//! # struct Null;
//! # impl Adapter for Null {}
//! # fn builtin() -> Builtin { Builtin::new("null", "passes everything", |_| Ok(Arc::new(Null))) }
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
//! [`Builtin`].

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Arg, ArgAction, Command};
use tracing::{info, warn};

use crate::builtin::{Builtin, Options};
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
    let adapter = match builtin.build(&options) {
        Ok(adapter) => adapter,
        Err(err) => {
            eprintln!("{}: bad options: {err}", builtin.name());
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
    runtime.block_on(run(builtin.name(), adapter, &addresses))
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
        command(&Builtin::new("null", "passes", |_| Ok(Arc::new(Null)))).debug_assert();
    }
}
