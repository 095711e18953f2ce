//! The host's part of the overlay: the bridge containers attach to, the underlay (for the
//! userspace datapath: the underlay interface on an OVS bridge of its own, its addresses on
//! that bridge's interface, a tunnel route, TX checksum offload off), and one VXLAN port per
//! live peer and network — all converged to what the store says, again and again.

use std::net::Ipv4Addr;

use powerstrip_adapter::store::nodes::Node;
use tracing::{info, warn};

use crate::link;
use crate::options::{Datapath, Options};
use crate::ovs::{Ovs, OvsError};
use crate::plumb::{NETWORK, PEER, PEER_ADDRESS};
use crate::state::Network;

/// The OVS bridge that holds the underlay interface in the userspace datapath, by default.
pub const UNDERLAY_BRIDGE: &str = "psul0";

/// Why the fabric could not be converged.
#[derive(Debug, thiserror::Error)]
pub enum FabricError {
    /// OVS failed.
    #[error(transparent)]
    Ovs(#[from] OvsError),
    /// An interface step failed.
    #[error(transparent)]
    Link(#[from] link::LinkError),
}

/// The datapath to use: the kernel's where its `openvswitch` module is loaded.
pub fn resolve(datapath: Datapath) -> &'static str {
    match datapath {
        Datapath::System => "system",
        Datapath::Netdev => "netdev",
        Datapath::Auto if std::path::Path::new("/sys/module/openvswitch").exists() => "system",
        Datapath::Auto => "netdev",
    }
}

/// The name of the tunnel port to `peer` for `network` (15 characters at most).
pub fn tunnel_port(peer: &Node, network: &Network) -> String {
    let id: String = peer
        .id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(6)
        .collect();
    format!("vx{id}t{}", network.tag)
}

/// Creates the containers' bridge if it is missing.
pub async fn ensure_bridge(
    ovs: &Ovs,
    options: &Options,
    datapath: &str,
) -> Result<(), FabricError> {
    ovs.ensure_bridge(&options.bridge, datapath).await?;
    Ok(())
}

/// For the userspace datapath: puts the underlay interface on OVS bridge `bridge`, moves
/// its addresses to the bridge's own interface, routes tunnel traffic through it, and turns
/// TX checksum offload off on it. Idempotent.
pub async fn ensure_underlay(ovs: &Ovs, interface: &str, bridge: &str) -> Result<(), FabricError> {
    let underlay_bridge = bridge;
    ovs.ensure_bridge(underlay_bridge, "netdev").await?;
    let on_bridge = ovs
        .ports(underlay_bridge)
        .await?
        .iter()
        .any(|p| p.name == interface);
    let mut addresses = link::ipv4_addresses(interface).await?;
    if !on_bridge {
        info!(
            interface,
            bridge = underlay_bridge,
            "moving the underlay onto OVS"
        );
        ovs.add_port(underlay_bridge, interface, None, &[], &[])
            .await?;
    }
    link::disable_offloads(interface, false).await?;
    link::up(interface, 1500).await?;
    if !addresses.is_empty() {
        link::flush_ipv4(interface).await?;
    }
    addresses.extend(
        link::ipv4_addresses(underlay_bridge)
            .await
            .unwrap_or_default(),
    );
    for (address, prefix) in &addresses {
        link::add_address(underlay_bridge, *address, *prefix).await?;
    }
    link::up(underlay_bridge, 1500).await?;
    for (address, prefix) in &addresses {
        let net = ipnet::Ipv4Net::new(*address, *prefix)
            .map(|n| n.trunc())
            .map_err(|e| OvsError::Refused {
                what: "ovs/route/add".into(),
                reason: e.to_string(),
            })?;
        ovs.route_add(&net.to_string(), underlay_bridge).await?;
    }
    Ok(())
}

/// Converges the tunnel ports of `bridge` to one per live peer (every node but `me` with
/// an address) and network: missing ones added, ones to nodes that left removed.
pub async fn ensure_tunnels(
    ovs: &Ovs,
    bridge: &str,
    me: &Node,
    nodes: &[Node],
    networks: &[Network],
) -> Result<(), FabricError> {
    let mut wanted: Vec<(String, &Node, &Network)> = Vec::new();
    for peer in nodes.iter().filter(|n| n.id != me.id) {
        if peer.address.parse::<Ipv4Addr>().is_err() {
            warn!(node = %peer.name, address = %peer.address, "peer without an IPv4 underlay address; no tunnel");
            continue;
        }
        for network in networks {
            wanted.push((tunnel_port(peer, network), peer, network));
        }
    }
    let ports = ovs.ports(bridge).await?;
    for port in ports.iter().filter(|p| p.external_ids.contains_key(PEER)) {
        let current = wanted.iter().any(|(name, peer, _)| {
            *name == port.name && port.external_ids.get(PEER_ADDRESS) == Some(&peer.address)
        });
        if !current {
            info!(port = %port.name, peer = ?port.external_ids.get(PEER), "removing a tunnel");
            ovs.del_port(bridge, &port.name).await?;
        }
    }
    for (name, peer, network) in wanted {
        let present = ports
            .iter()
            .any(|p| p.name == name && p.external_ids.get(PEER_ADDRESS) == Some(&peer.address));
        if present {
            continue;
        }
        info!(port = %name, peer = %peer.name, network = %network.name, vni = network.vni, "adding a tunnel");
        let key = network.vni.to_string();
        ovs.add_port(
            bridge,
            &name,
            Some(network.tag),
            &[
                (PEER, &peer.id),
                (PEER_ADDRESS, &peer.address),
                (NETWORK, &network.name),
            ],
            &[
                ("type", "vxlan"),
                ("options:remote_ip", &peer.address),
                ("options:key", &key),
            ],
        )
        .await?;
    }
    Ok(())
}
