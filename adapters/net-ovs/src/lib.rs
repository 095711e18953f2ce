//! # powerstrip-net-ovs: containers on isolated VXLAN overlays through Open vSwitch
//!
//! `docker run --label powerstrip.network=blue ...` (or `-e POWERSTRIP_NETWORK=blue`;
//! several networks comma-separated) gives the container an extra interface (`eth1`, ...)
//! on overlay network `blue`, with an address from blue's subnet, beside Docker's own
//! networking. Containers on one network reach each other on this host and on every other
//! host of the cluster; different networks are isolated (a VLAN tag per network on each
//! host's bridge, a VXLAN network identifier per network between hosts).
//!
//! A network's subnet, tag and VNI are cluster-wide facts in the store; so is every
//! address's holder. Plumbing is level-triggered: the hooks do it at once, Docker's events
//! and a periodic pass redo whatever is missing or stale, so a crash at any step heals.
//!
//! ## Layout
//! - [`ipam`]: addresses and subnets, pure.
//! - [`options`]: the adapter's options.
//! - [`state`]: what is kept in the store (networks, addresses, containers) and the
//!   compare-and-swap operations on it.
//! - [`ovs`]: Open vSwitch through `ovs-vsctl` / `ovs-appctl`.
//! - [`link`]: interfaces through netlink, inside containers' namespaces too.
//! - [`plumb`]: attaching and detaching a container, undone on failure.
//! - [`fabric`]: the bridge, the underlay and the tunnels to peers.
//! - [`adapter`]: the hooks, the reconciler, the event follower.
//! - [`report`]: what `powerstrip net ls|inspect` prints.
//! - [`plugin`]: Docker's network plugin API (`docker network create -d ...`), on the
//!   same overlays and addresses.
#![forbid(unsafe_code)]

use std::sync::Arc;

use powerstrip_adapter::builtin::Builtin;

pub mod adapter;
pub mod fabric;
pub mod ipam;
pub mod link;
pub mod options;
pub mod ovs;
pub mod plugin;
pub mod plumb;
pub mod report;
pub mod state;

pub use adapter::NetOvs;

/// `net-ovs` as a builtin (`{ builtin = "net-ovs", networks = { blue = "10.50.0.0/24" } }`)
/// and as the `powerstrip-net-ovs` binary.
pub fn builtin() -> Builtin {
    Builtin::new(
        "net-ovs",
        "puts containers on VXLAN overlay networks through Open vSwitch (label powerstrip.network=NAME)",
        |options, ctx| {
            let options = options::Options::parse(options)?;
            Ok(Arc::new(NetOvs::start(ctx, options)))
        },
    )
    .with_unwind()
    .option("networks", "table of name = subnet", Some("none"), "networks with a fixed subnet, e.g. { blue = \"10.50.0.0/24\" }")
    .option("pool", "subnet", Some("none"), "where networks created on first use get their subnet, e.g. \"10.60.0.0/16\"")
    .option("pool_prefix", "number", Some("24"), "the size of a subnet taken from the pool")
    .option("bridge", "name", Some("powerstrip0"), "the Open vSwitch bridge containers are attached to")
    .option("mtu", "number", Some("1450"), "the MTU of the overlay interfaces (the underlay's minus 50 for VXLAN)")
    .option("datapath", "auto, system or netdev", Some("auto"), "the kernel datapath where its module is loaded, else userspace")
    .option("underlay", "{ interface = NAME }", Some("none"), "the interface that carries tunnels to other hosts")
    .option("ovsdb", "unix:/path", Some("the default socket"), "the OVSDB of the Open vSwitch to use")
    .option("vswitchd", "path", Some("the default"), "ovs-vswitchd's control socket (ovs-appctl -t)")
    .option("reconcile", "duration", Some("10s"), "how often everything is checked, besides Docker's events")
    .option("plugin", "driver name", Some("none"), "also serve Docker's network plugin API as this driver (docker network create -d NAME --ipam-driver null)")
}
