//! Fuzz target `h1_request`: the property lives in `fuzz/checks/h1_request.rs`, shared with the
//! regression tests that replay `fuzz/regressions/h1_request/` under plain `cargo test`.
#![no_main]

#[path = "../checks/h1_request.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
