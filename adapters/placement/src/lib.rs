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
#![forbid(unsafe_code)]

pub mod expr;
pub mod facts;
