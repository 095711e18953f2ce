//! `powerstrip-logger`: the logger example adapter served over HTTP.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    powerstrip_adapter::cli::main(powerstrip_examples::logger::builtin())
}
