//! # powerstrip-placement: Facter facts and Swarm-classic constraints
//!
//! `docker run -e constraint:architecture==x86_64 -e affinity:container==db ...` through the
//! proxy is refused (409) unless this node's facts and containers satisfy every
//! expression; on a Swarm mode cluster, the same expressions on `docker service create`
//! become Swarm's own placement constraints, over every node's facts.
//!
//! ## Layout
//! - [`expr`]: the constraint and affinity language (Swarm classic's), parsed and
//!   evaluated; pure.
//! - [`facts`]: a node's facts: Facter, external facts directories, built-in facts.
//! - [`options`]: the adapter's options.
//! - [`adapter`]: the hooks (container creates, service creates and updates), the facts
//!   published to the store, the Swarm node labels.
//! - [`report`]: what `powerstrip facts` prints.
#![forbid(unsafe_code)]

use std::sync::Arc;

use powerstrip_adapter::builtin::Builtin;

pub mod adapter;
pub mod expr;
pub mod facts;
pub mod options;
pub mod report;

pub use adapter::Placement;

/// `placement` as a builtin (`{ builtin = "placement", external_facts = ["/etc/facter/facts.d"] }`)
/// and as the `powerstrip-placement` binary.
pub fn builtin() -> Builtin {
    Builtin::new(
        "placement",
        "Facter facts and Swarm-classic constraints (-e constraint:KEY==VALUE, -e affinity:container==NAME)",
        |options, ctx| {
            let options = options::Options::parse(options)?;
            Ok(Arc::new(Placement::start(ctx, options)))
        },
    )
    .option("facter", "path or false", Some("facter"), "the Facter program, or false for built-in and external facts only")
    .option("external_facts", "list of directories", Some("none"), "facts.d directories: key=value .txt, .json, .yaml, executables")
    .option("refresh", "duration", Some("30s"), "how often facts are gathered and published")
    .option("swarm_labels", "true or false", Some("true"), "on a Swarm mode manager: keep every node's facts as fact.* node labels (one publisher per cluster)")
}
