//! Fuzz target `container_create`: the property lives in `fuzz/checks/container_create.rs`, shared with the
//! regression tests that replay `fuzz/regressions/container_create/` under plain `cargo test`.
#![no_main]

#[path = "../checks/container_create.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
