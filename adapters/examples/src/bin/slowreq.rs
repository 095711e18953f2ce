//! `powerstrip-slowreq`: the slowreq example adapter served over HTTP.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    powerstrip_adapter::cli::main(powerstrip_examples::slowreq::builtin())
}
