//! Fuzz target `config_parse`: the property lives in `fuzz/checks/config_parse.rs`, shared with the
//! regression tests that replay `fuzz/regressions/config_parse/` under plain `cargo test`.
#![no_main]

#[path = "../checks/config_parse.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
