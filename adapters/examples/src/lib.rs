//! # Example adapters
//!
//! Three small adapters, each a model of the SDK's use and each usable two ways: linked
//! into `powerstrip` (`builtin = "slowreq"` in `adapters.toml`) or served over HTTP by its
//! own binary (`powerstrip-slowreq --listen tcp://127.0.0.1:9000`), built from the same
//! options either way.
//!
//! ## Layout
//! - [`null`]: passes everything — the template, and what the benchmarks hook to measure
//!   a chain's own cost.
//! - [`slowreq`]: delays the requests it hooks (pre-hook only) — the smallest adapter.
//! - [`logger`]: records every call it sees and how long Docker took (pre and post).
//! - [`image_policy`]: refuses containers from images outside an allow-list, or that run
//!   as root, with a `403` the docker user reads — a policy in a pre-hook.
//! - [`builtins`]: all three, for a binary to register.
#![forbid(unsafe_code)]

pub mod image_policy;
pub mod logger;
pub mod null;
pub mod slowreq;

use powerstrip_adapter::builtin::Builtin;

/// Every example adapter, for a binary to link.
pub fn builtins() -> Vec<Builtin> {
    vec![
        image_policy::builtin(),
        logger::builtin(),
        null::builtin(),
        slowreq::builtin(),
    ]
}
