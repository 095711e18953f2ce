//! # powerstrip-volumes: portable datasets with profiles, snapshots and moves between hosts
//!
//! `docker run -v demo@gold:/data ...` creates dataset `demo` with profile `gold` (a size
//! limit) on this host and mounts it; `-v demo:/data` uses it wherever it is, moving it to
//! this host first when it lives on another and nothing uses it there.
//!
//! ## Layout
//! - [`names`]: what users write (`demo@gold`, `copy@snapshot-f23c`) and the create's
//!   `Binds`/`Mounts` that carry it, read and rewritten; pure.
//! - [`model`]: datasets, leases, snapshots and moves as a state machine; pure.
//! - [`options`]: the adapter's options (pool, profiles, moves).
//! - [`state`]: what is kept in the cluster store, read and compare-and-swapped.
//! - [`adapter`]: the hooks, the moves, the reconciler, the event follower.
//! - [`plugin`]: Docker's volume plugin API on the same datasets.
//! - [`control`]: the operator's socket (`powerstrip volumes snapshot|rm|move`).
//! - [`report`]: what `powerstrip volumes ls|inspect` print.
//! - [`transfer`]: a snapshot streamed from the node that has it to the node that pulls it
//!   (moves and clones across hosts): the protocol, both ends.
//! - [`backend`]: where a node keeps datasets' bytes (btrfs subvolumes, or directories),
//!   and the pool they live in.
#![forbid(unsafe_code)]

use std::sync::Arc;

use powerstrip_adapter::builtin::Builtin;

pub mod adapter;
pub mod backend;
pub mod control;
pub mod model;
pub mod names;
pub mod options;
pub mod plugin;
pub mod report;
pub mod state;
pub mod transfer;

pub use adapter::Volumes;

/// `volumes` as a builtin (`{ builtin = "volumes", profiles = { gold = { size = "1G" } } }`)
/// and as the `powerstrip-volumes` binary.
pub fn builtin() -> Builtin {
    Builtin::new(
        "volumes",
        "portable datasets with profiles, snapshots and moves between hosts (-v NAME@PROFILE:/path)",
        |options, ctx| {
            let options = options::Options::parse(options)?;
            Ok(Arc::new(Volumes::start(ctx, options)))
        },
    )
    .with_unwind()
    .option("profiles", "table of name = { size = \"1G\" }", Some("none"), "what NAME@PROFILE gives a new dataset, e.g. { gold = { size = \"1G\" } }")
    .option("default_profile", "profile name", Some("none"), "the profile of datasets made without one (docker volume create)")
    .option("pool", "path", Some("<state dir>/pool"), "where datasets live: a btrfs mount, or any directory")
    .option("backend", "auto, btrfs or directory", Some("auto"), "btrfs when the pool is on btrfs, plain directories otherwise")
    .option("image", "{ file = PATH, size = \"10G\" }", Some("none"), "make the pool a btrfs filesystem on this loop file when it is not one")
    .option("listen", "HOST:PORT or :PORT", Some(":9378 on the node address"), "where this node serves moves to its peers")
    .option("move_timeout", "duration", Some("4m"), "how long a move may take before the request waiting on it gets a 504")
    .option("compression", "zstd or none", Some("zstd"), "how streams this node pulls are sent: zstd for links slower than the CPUs, none for 10 Gb/s and up")
    .option("reconcile", "duration", Some("10s"), "how often leases, copies and snapshots are checked, besides Docker's events")
    .option("plugin", "driver name", Some("none"), "also serve Docker's volume plugin API as this driver (docker volume create -d NAME)")
}
