//! # powerstrip-testenv: real components for tests
//!
//! Tests that claim etcd behaviour run against a real etcd. This crate starts one — a
//! single member or a cluster of several, on loopback ports of its own, with its data in a
//! temporary directory — and removes it when the test is done, also when the test fails or
//! the test binary exits without dropping it (a watchdog beside each member kills it when
//! the process that started it is gone).
//!
//! A component that is missing makes [`require`] skip the test with a note, except under
//! `CI=true`, where it fails it.
//!
//! ## Layout
//! - [`btrfs`]: [`btrfs::TestPool`], a btrfs filesystem of a test's own on a loop file.
//! - [`etcd`]: [`etcd::EtcdCluster`], and [`etcd::shared`], one member per test binary.
//! - [`host`]: another "host": a network namespace with an underlay veth, its own Open
//!   vSwitch and its own Docker daemon.
//! - [`ovs`]: the host's Open vSwitch ([`ovs::require`]) and bridges of a test's own.
#![forbid(unsafe_code)]

pub mod btrfs;
pub mod etcd;
pub mod host;
pub mod ovs;

use std::process::Command;

/// True when this run must not skip anything (`CI=true`).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Whether `program` can be run here. When it cannot, a test should return early: this
/// prints why — or, under `CI=true`, panics, so that a missing component fails the run.
pub fn require(program: &str, install_hint: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|out| out.status.success());
    if found {
        return true;
    }
    let problem = format!("{program} is not installed ({install_hint})");
    if in_ci() {
        panic!("{problem}; CI=true: missing components fail here");
    }
    eprintln!("SKIPPED: {problem}");
    false
}

/// A free TCP port on 127.0.0.1 (bound and released: good enough for test processes that
/// bind it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"))
}
