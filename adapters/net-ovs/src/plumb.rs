//! Puts a container on its networks, and takes it off: a veth pair per network, the host
//! end an access port of the network's VLAN tag on the bridge, the other end in the
//! container's namespace with its address. Every step is undone when a later one fails,
//! and doing it again on a container that is already plumbed changes nothing.

use std::sync::Arc;

use crate::link::{self, InNamespace, LinkError};
use crate::options::Options;
use crate::ovs::{Ovs, OvsError};
use crate::state::{Attachment, Network};

/// `external_ids` key naming the container a port belongs to.
pub const CONTAINER_ID: &str = "powerstrip-container";
/// `external_ids` key naming the network of a container's port.
pub const NETWORK: &str = "powerstrip-network";
/// `external_ids` key naming the peer node of a tunnel port.
pub const PEER: &str = "powerstrip-peer";
/// `external_ids` key holding the peer's underlay address on a tunnel port.
pub const PEER_ADDRESS: &str = "powerstrip-peer-address";

/// Why plumbing failed, and where.
#[derive(Debug, thiserror::Error)]
pub enum PlumbError {
    /// An OVS step failed.
    #[error("network {network}: {source}")]
    Ovs {
        /// The network being plumbed.
        network: String,
        /// What OVS said.
        source: OvsError,
    },
    /// An interface step failed.
    #[error("network {network}: {source}")]
    Link {
        /// The network being plumbed.
        network: String,
        /// The step and what went wrong.
        source: LinkError,
    },
}

/// The host end of container `id`'s veth for its `index`-th network (15 characters at
/// most, as interface names must be).
pub fn host_port(id: &str, index: usize) -> String {
    format!("psv{}{index}", &id[..id.len().min(8)])
}

fn peer_port(id: &str, index: usize) -> String {
    format!("psc{}{index}", &id[..id.len().min(8)])
}

/// Plumbs and unplumbs containers on one bridge.
#[derive(Clone, Debug)]
pub struct Plumber {
    /// The switch.
    pub ovs: Ovs,
    /// The adapter's options (bridge, MTU).
    pub options: Arc<Options>,
    /// Whether the bridge runs in the userspace datapath (offloads must go).
    pub netdev: bool,
}

impl Plumber {
    /// Attaches container `id`, running as process `pid`, to each of `networks` (its
    /// attachments in order). Already plumbed networks are left alone. Returns the
    /// interface names inside the container, when it configured them.
    pub async fn plumb(
        &self,
        id: &str,
        pid: u32,
        networks: &[(Attachment, Network)],
    ) -> Result<(), PlumbError> {
        let bridge = &self.options.bridge;
        let ports = self
            .ovs
            .ports(bridge)
            .await
            .map_err(|source| PlumbError::Ovs {
                network: networks
                    .first()
                    .map(|(a, _)| a.network.clone())
                    .unwrap_or_default(),
                source,
            })?;
        for (index, (attachment, network)) in networks.iter().enumerate() {
            let port = host_port(id, index);
            let plugged = ports.iter().any(|p| p.name == port && p.ofport >= 0);
            let link_error = |source| PlumbError::Link {
                network: network.name.clone(),
                source,
            };
            if plugged && link::exists(&port).await.map_err(link_error)? {
                continue;
            }
            if let Err(e) = self.attach(id, pid, index, attachment, network).await {
                // Undo: the veth (both ends, wherever the peer is) and the port.
                let _ = link::delete(&port).await;
                let _ = self.ovs.del_port(bridge, &port).await;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn attach(
        &self,
        id: &str,
        pid: u32,
        index: usize,
        attachment: &Attachment,
        network: &Network,
    ) -> Result<(), PlumbError> {
        let (host, peer) = (host_port(id, index), peer_port(id, index));
        let link_error = |source| PlumbError::Link {
            network: network.name.clone(),
            source,
        };
        let ovs_error = |source| PlumbError::Ovs {
            network: network.name.clone(),
            source,
        };
        // Leftovers of an attempt that was interrupted.
        link::delete(&host).await.map_err(link_error)?;
        link::delete(&peer).await.map_err(link_error)?;
        link::create_veth_into(&host, &peer, pid, self.options.mtu)
            .await
            .map_err(link_error)?;
        let address = attachment.address.to_string();
        // The switch port and the container's side are set up at once (each is a round
        // trip to a daemon or the kernel that waits on its own); the container's interface
        // comes up, announcing its address, once the port is there.
        let (ready, port_ready) = tokio::sync::oneshot::channel();
        let port = async {
            if self.netdev {
                // Before OVS opens it: the userspace datapath reads what offloads it sees.
                link::disable_offloads(&host, true)
                    .await
                    .map_err(link_error)?;
            }
            self.ovs
                .add_port(
                    &self.options.bridge,
                    &host,
                    Some(network.tag),
                    &[
                        (CONTAINER_ID, id),
                        (NETWORK, &network.name),
                        ("powerstrip-address", &address),
                    ],
                    &[],
                )
                .await
                .map_err(ovs_error)?;
            let _ = ready.send(());
            Ok::<(), PlumbError>(())
        };
        let inside = async {
            link::configure_in(
                pid,
                InNamespace {
                    from: peer,
                    to: None,
                    address: attachment.address,
                    prefix: network.subnet.prefix_len(),
                    mtu: self.options.mtu,
                    offloads_off: self.netdev,
                },
                port_ready,
            )
            .await
            .map_err(link_error)
        };
        let (port, inside) = tokio::join!(port, inside);
        port?;
        inside?;
        Ok(())
    }

    /// Removes container `id`'s ports and host interfaces (what a dead container leaves:
    /// its veth ends die with its namespace, its ports stay in OVS).
    pub async fn unplumb(&self, id: &str) -> Result<(), OvsError> {
        let bridge = &self.options.bridge;
        for port in self.ovs.ports(bridge).await? {
            if port.external_ids.get(CONTAINER_ID).is_some_and(|c| c == id) {
                self.ovs.del_port(bridge, &port.name).await?;
                let _ = link::delete(&port.name).await;
            }
        }
        Ok(())
    }
}
