//! `powerstrip-net-ovs`: the networking adapter served over HTTP.
fn main() -> std::process::ExitCode {
    powerstrip_adapter::cli::main(powerstrip_net_ovs::builtin())
}
