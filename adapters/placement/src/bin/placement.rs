//! `powerstrip-placement`: the placement adapter served over HTTP.
fn main() -> std::process::ExitCode {
    powerstrip_adapter::cli::main(powerstrip_placement::builtin())
}
