//! A bench helper (run by `benches/e2e.py`, not a criterion bench): `powerstrip serve`
//! with one more in-process adapter, `null` (the `Adapter` trait's default methods), so
//! that the end-to-end bench can hook 3 in-process null adapters — the `powerstrip`
//! binary links only the example adapters, none of which is a no-op.
//!
//! Everything else is what `src/main.rs` does for `serve` with its defaults: the same
//! libraries, the same multi-threaded runtime, the same logging set-up (`RUST_LOG`), the
//! configuration watcher (1 s poll), the same server limits, the same flags
//! (`--listen unix://… --docker unix://… --config FILE`); no TLS, no admin listener.
//! Stops on SIGTERM or SIGINT.
//! `cargo bench` runs every bench target with `--bench`: without `serve` as its first
//! argument this binary says what it is and exits.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use powerstrip_adapter::Adapter;
use powerstrip_adapter::builtin::Builtin;
use powerstrip_core::{
    Address, Builtins, ChainOptions, Chains, Limits, Listener, Proxy, ServerOptions, Upstream,
};

/// Passes everything through.
struct Null;

impl Adapter for Null {}

/// `serve --listen ADDR --docker ADDR --config FILE`.
struct Args {
    listen: Address,
    docker: Address,
    config: PathBuf,
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut listen = None;
    let mut docker = None;
    let mut config = None;
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let value = rest.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse::<Address>().map_err(|e| e.to_string())?),
            "--docker" => docker = Some(value.parse::<Address>().map_err(|e| e.to_string())?),
            "--config" => config = Some(PathBuf::from(value)),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen is required")?,
        docker: docker.ok_or("--docker is required")?,
        config: config.ok_or("--config is required")?,
    })
}

/// The binary's builtins, and `null`.
fn builtins() -> Builtins {
    let mut builtins = Builtins::new();
    for builtin in powerstrip_examples::builtins() {
        builtins.register(builtin);
    }
    builtins.register(Builtin::from_adapter("null", Null));
    builtins
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(("serve", args)) = args.split_first().map(|(a, rest)| (a.as_str(), rest)) else {
        eprintln!(
            "proxy_null: a helper of benches/e2e.py (proxy_null serve --listen … --docker … --config …); nothing to run as a bench"
        );
        return ExitCode::SUCCESS;
    };
    let args = match parse_args(args) {
        Ok(args) => args,
        Err(err) => {
            eprintln!("proxy_null: {err}");
            return ExitCode::from(64);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();

    let linked = builtins();
    let options = ChainOptions {
        max_answer: powerstrip_core::proxy::DEFAULT_MAX_HOOK_BODY,
    };
    let chains = match powerstrip_config::load(&args.config)
        .and_then(|config| Chains::build(&config, &linked, options))
    {
        Ok(chains) => chains,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(64);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("proxy_null: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match Listener::bind(&args.listen).await {
            Ok(listener) => listener,
            Err(err) => {
                eprintln!("proxy_null: {err}");
                return ExitCode::FAILURE;
            }
        };
        let proxy = Arc::new(Proxy::new(
            Upstream::new(&args.docker),
            chains,
            Limits::default(),
        ));
        println!("export DOCKER_HOST={}", listener.local_address());
        let watcher = tokio::spawn(powerstrip_core::reload::watch_config(
            proxy.clone(),
            args.config.clone(),
            Duration::from_secs(1),
            powerstrip_core::reload::hangup_signal(),
            move |file: &Path| Chains::build(&powerstrip_config::load(file)?, &builtins(), options),
        ));
        let server_options = ServerOptions {
            max_header_bytes: 64 * 1024,
            ..ServerOptions::default()
        };
        powerstrip_core::serve(
            vec![listener],
            proxy,
            server_options,
            powerstrip_adapter::cli::shutdown_signal(),
        )
        .await;
        watcher.abort();
        ExitCode::SUCCESS
    })
}
