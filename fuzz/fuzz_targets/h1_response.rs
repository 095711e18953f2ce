//! Fuzz target `h1_response`: the property lives in `fuzz/checks/h1_response.rs`, shared with the
//! regression tests that replay `fuzz/regressions/h1_response/` under plain `cargo test`.
#![no_main]

#[path = "../checks/h1_response.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
