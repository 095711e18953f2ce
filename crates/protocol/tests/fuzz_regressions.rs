//! Replays every input kept in `fuzz/regressions/protocol_decode/` through the property check
//! the fuzz target runs (`fuzz/checks/protocol_decode.rs`, included here), so an input that
//! once broke it stays fixed without cargo-fuzz.
//!
//! To keep a crash that `scripts/fuzz` found: copy the file it names from
//! `fuzz/artifacts/<target>/` into `fuzz/regressions/<target>/` under a name that says what
//! it is, and run `cargo test -p powerstrip-protocol --test fuzz_regressions`.

#[path = "../../../fuzz/checks/protocol_decode.rs"]
mod protocol_decode;

#[path = "../../../fuzz/checks/replay.rs"]
mod replay;

use replay::replay;

#[test]
fn protocol_decode_regressions() {
    replay("protocol_decode", protocol_decode::check);
}
