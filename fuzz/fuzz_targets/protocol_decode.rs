//! Fuzz target `protocol_decode`: the property lives in `fuzz/checks/protocol_decode.rs`, shared with the
//! regression tests that replay `fuzz/regressions/protocol_decode/` under plain `cargo test`.
#![no_main]

#[path = "../checks/protocol_decode.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
