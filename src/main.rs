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
use powerstrip_config::{AdapterKind, Config, ConfigErrors};
use powerstrip_core::{
    Address, Builtins, ChainOptions, Chains, Limits, Listener, Proxy, ServerOptions, Upstream,
};
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
    Serve(ServeArgs),
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

    /// How long requests in flight may take to finish after SIGTERM, e.g. "10s".
    #[arg(long, env = "POWERSTRIP_GRACE", default_value = "10s", value_parser = humantime_duration)]
    grace: Duration,
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
    builtins
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { file } => check(&file),
        Command::Conformance { url, timeout } => conformance(&url, timeout),
        Command::Adapters => {
            for builtin in builtins().iter() {
                println!("{}", builtin.describe());
            }
            ExitCode::SUCCESS
        }
        Command::Serve(args) => {
            init_logging();
            match serve(args) {
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

/// Loads a configuration and builds its chains: everything is validated before any port
/// is bound.
fn load(file: &Path, options: ChainOptions) -> Result<(Config, Chains), ConfigErrors> {
    let config = powerstrip_config::load(file)?;
    let chains = Chains::build(&config, &builtins(), options)?;
    Ok((config, chains))
}

fn check(file: &Path) -> ExitCode {
    let options = ChainOptions {
        max_answer: powerstrip_core::proxy::DEFAULT_MAX_HOOK_BODY,
    };
    match load(file, options) {
        Ok((config, _)) => {
            print!("{}", describe(&config));
            ExitCode::SUCCESS
        }
        Err(errors) => {
            eprintln!("{errors}");
            ExitCode::from(EXIT_USAGE)
        }
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
    }
    if !config.adapters.is_empty() {
        let _ = writeln!(out, "\nadapters:");
    }
    for adapter in &config.adapters {
        let kind = match &adapter.kind {
            AdapterKind::Http { url } => url.to_string(),
            AdapterKind::Builtin { builtin, .. } => format!("builtin {builtin}"),
        };
        let _ = writeln!(
            out,
            "  {:<16} {kind}  (timeout {}, failure {})",
            adapter.name,
            humantime::format_duration(adapter.timeout),
            adapter.failure
        );
    }
    out
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

#[tokio::main]
async fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let options = ChainOptions {
        max_answer: args.max_hook_body,
    };
    let chains = match &args.config {
        Some(file) => match load(file, options) {
            Ok((config, chains)) => {
                info!(config = %file.display(), endpoints = config.endpoints.len(),
                    adapters = config.adapters.len(), "configuration loaded");
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

    let mut listeners = Vec::new();
    for address in &args.listen {
        if !address.is_loopback() {
            warn!(listen = %address, "listening beyond loopback: anyone who can reach this address controls Docker");
        }
        listeners.push(Listener::bind(address).await?);
    }
    let proxy = Arc::new(Proxy::new(
        Upstream::new(&args.docker),
        chains,
        Limits {
            max_hook_body: args.max_hook_body,
        },
    ));
    for listener in &listeners {
        // The line operators copy into their shell.
        println!("export DOCKER_HOST={}", listener.local_address());
    }
    powerstrip_core::serve(
        listeners,
        proxy,
        ServerOptions { grace: args.grace },
        powerstrip_adapter::cli::shutdown_signal(),
    )
    .await;
    Ok(ExitCode::SUCCESS)
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
