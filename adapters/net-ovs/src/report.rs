//! What `powerstrip net ls` and `powerstrip net inspect NAME` print, from what the store
//! holds under `net-ovs/` (read by the caller, read-only).

use std::fmt::Write as _;

use powerstrip_adapter::store::KeyValue;

use crate::ipam;
use crate::state::{Allocation, Network};

fn networks(kvs: &[KeyValue]) -> Vec<Network> {
    kvs.iter()
        .filter(|kv| kv.key.starts_with("net-ovs/networks/"))
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect()
}

fn allocations<'a>(kvs: &'a [KeyValue], network: &str) -> Vec<(&'a str, Allocation)> {
    let prefix = format!("net-ovs/addresses/{network}/");
    kvs.iter()
        .filter_map(|kv| {
            let address = kv.key.strip_prefix(&prefix)?;
            Some((address, serde_json::from_slice(&kv.value).ok()?))
        })
        .collect()
}

/// One line per network: name, subnet, VNI, tag, addresses in use of those available.
pub fn ls(kvs: &[KeyValue]) -> String {
    let mut out = format!(
        "{:<16} {:<18} {:>6} {:>5} {:>10}\n",
        "NETWORK", "SUBNET", "VNI", "TAG", "ADDRESSES"
    );
    for network in networks(kvs) {
        let used = allocations(kvs, &network.name).len();
        let _ = writeln!(
            out,
            "{:<16} {:<18} {:>6} {:>5} {:>10}",
            network.name,
            network.subnet.to_string(),
            network.vni,
            network.tag,
            format!("{used}/{}", ipam::capacity(network.subnet))
        );
    }
    out
}

/// A network and who holds each of its addresses; `None` when there is no such network.
pub fn inspect(kvs: &[KeyValue], name: &str) -> Option<String> {
    let network = networks(kvs).into_iter().find(|n| n.name == name)?;
    let mut out = format!(
        "network {}\n  subnet {}  vni {}  tag {}\n",
        network.name, network.subnet, network.vni, network.tag
    );
    let mut held = allocations(kvs, name);
    held.sort_by_key(|(a, _)| a.parse::<std::net::Ipv4Addr>().ok());
    let _ = writeln!(
        out,
        "  {:<15} {:<24} {:<16} HOLDER",
        "ADDRESS", "CONTAINER", "NODE"
    );
    for (address, allocation) in held {
        let _ = writeln!(
            out,
            "  {:<15} {:<24} {:<16} {}",
            address,
            allocation.name.as_deref().unwrap_or("-"),
            allocation.node,
            allocation.holder
        );
    }
    Some(out)
}
