//! `powerstrip-volumes`: the volumes adapter served over HTTP.
fn main() -> std::process::ExitCode {
    powerstrip_adapter::cli::main(powerstrip_volumes::builtin())
}
