//! Replays every input kept in `fuzz/regressions/config_parse/` and `fuzz/regressions/matcher/`
//! through the property checks the fuzz targets run (`fuzz/checks/*.rs`, included here), so
//! an input that once broke them stays fixed without cargo-fuzz.
//!
//! To keep a crash that `scripts/fuzz` found: copy the file it names from
//! `fuzz/artifacts/<target>/` into `fuzz/regressions/<target>/` under a name that says what
//! it is, and run `cargo test -p powerstrip-config --test fuzz_regressions`.

#[path = "../../../fuzz/checks/config_parse.rs"]
mod config_parse;
#[path = "../../../fuzz/checks/matcher.rs"]
mod matcher;

#[path = "../../../fuzz/checks/replay.rs"]
mod replay;

use replay::replay;

#[test]
fn config_parse_regressions() {
    replay("config_parse", config_parse::check);
}

#[test]
fn matcher_regressions() {
    replay("matcher", matcher::check);
}
