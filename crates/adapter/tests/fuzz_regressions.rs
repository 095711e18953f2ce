//! Replays every input kept in `fuzz/regressions/container_create/` through the property
//! check the fuzz target runs (`fuzz/checks/container_create.rs`, included here), so an
//! input that once broke it stays fixed without cargo-fuzz.

#[path = "../../../fuzz/checks/container_create.rs"]
mod container_create;
#[path = "../../../fuzz/checks/replay.rs"]
mod replay;

#[test]
fn container_create_regressions() {
    replay::replay("container_create", container_create::check);
}
