//! A bench helper (run by `benches/e2e.py`, not a criterion bench): a null adapter served
//! over HTTP by the SDK — the trait's default methods, which answer every pre-hook and
//! post-hook with what they were given. `null_adapter --listen unix:///a.sock [--listen …]
//! --log warn` (the SDK's adapter `main`). `cargo bench` runs every bench target with
//! `--bench`: without `--listen` this binary says what it is and exits.

use std::process::ExitCode;

use powerstrip_adapter::Adapter;
use powerstrip_adapter::builtin::Builtin;

/// Passes everything through.
struct Null;

impl Adapter for Null {}

fn main() -> ExitCode {
    let listens = std::env::args().any(|a| a == "--listen" || a.starts_with("--listen="));
    if !listens {
        eprintln!(
            "null_adapter: a helper of benches/e2e.py (null_adapter --listen unix:///a.sock); nothing to run as a bench"
        );
        return ExitCode::SUCCESS;
    }
    powerstrip_adapter::cli::main(Builtin::from_adapter("null", Null))
}
