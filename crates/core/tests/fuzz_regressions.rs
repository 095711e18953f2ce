//! Replays every input kept in `fuzz/regressions/h1_response/` and
//! `fuzz/regressions/h1_request/` through the property checks the fuzz targets run
//! (`fuzz/checks/*.rs`, included here), so an input that once broke them stays fixed
//! without cargo-fuzz. The checks reach the lean HTTP/1.1 client through
//! `powerstrip_core::fuzzing`, which this crate's dev-dependency on itself enables.
//!
//! To keep a crash that `scripts/fuzz` found: copy the file it names from
//! `fuzz/artifacts/<target>/` into `fuzz/regressions/<target>/` under a name that says what
//! it is, and run `cargo test -p powerstrip-core --test fuzz_regressions`.

#[path = "../../../fuzz/checks/h1_request.rs"]
mod h1_request;
#[path = "../../../fuzz/checks/h1_response.rs"]
mod h1_response;

#[path = "../../../fuzz/checks/replay.rs"]
mod replay;

use replay::replay;

#[test]
fn h1_response_regressions() {
    replay("h1_response", h1_response::check);
}

#[test]
fn h1_request_regressions() {
    replay("h1_request", h1_request::check);
}
