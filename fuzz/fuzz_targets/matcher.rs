//! Fuzz target `matcher`: the property lives in `fuzz/checks/matcher.rs`, shared with the
//! regression tests that replay `fuzz/regressions/matcher/` under plain `cargo test`.
#![no_main]

#[path = "../checks/matcher.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
