//! What `net-ovs` keeps in the cluster store, and the operations on it. Every decision two
//! nodes could race on is a create-if-absent or a compare-and-swap, so the store decides.
//!
//! | key | value |
//! |---|---|
//! | `net-ovs/networks/<name>` | a network: subnet, VNI, VLAN tag (cluster-wide facts) |
//! | `net-ovs/indexes/<n>` | which network holds VNI/tag number `n` |
//! | `net-ovs/subnets/<a.b.c.d_len>` | which network holds a subnet carved from the pool |
//! | `net-ovs/addresses/<network>/<ip>` | who holds an address: a container id, or a reservation made at create |
//! | `net-ovs/containers/<id>` | a container's attachments (network, address, interface) |

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ipnet::Ipv4Net;
use powerstrip_adapter::store::{Expect, KeyValue, Store, StoreError, Swap};
use serde::{Deserialize, Serialize};

use crate::ipam::{self, IpamError};
use crate::options::Options;

/// The first VNI; a network's VNI is this plus its index.
pub const VNI_BASE: u32 = 10_000;
/// The most networks a cluster holds (VLAN tags 1..=4094 on the bridge).
pub const MAX_NETWORKS: u16 = 4094;
/// A reservation holder's prefix: `reservation:<token>`, until the container exists.
pub const RESERVATION: &str = "reservation:";

/// A network: cluster-wide facts every node agrees on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// Its name (`blue`).
    pub name: String,
    /// Its subnet.
    pub subnet: Ipv4Net,
    /// Its VXLAN network identifier between hosts.
    pub vni: u32,
    /// Its VLAN tag on each host's bridge.
    pub tag: u16,
}

/// Who holds an address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// A container id, or `reservation:<token>` between create's pre-hook and its answer.
    pub holder: String,
    /// The container's name, when it has one (for messages).
    #[serde(default)]
    pub name: Option<String>,
    /// The node that allocated it.
    pub node: String,
    /// When (seconds since the epoch).
    pub since: u64,
}

/// One network a container is attached to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The network.
    pub network: String,
    /// The container's address on it.
    pub address: Ipv4Addr,
}

/// A container's record: where it runs and what it is attached to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Its name, when it has one.
    #[serde(default)]
    pub name: Option<String>,
    /// The node it runs on.
    pub node: String,
    /// Its networks and addresses, in the order of its `powerstrip.network` label.
    pub attachments: Vec<Attachment>,
}

/// Why a store operation of `net-ovs` did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such network, and no pool to create it from.
    #[error("network {0:?} does not exist and no pool is configured to create it from")]
    UnknownNetwork(String),
    /// The address is not usable in the network.
    #[error("{network}: {source}")]
    Address {
        /// The network.
        network: String,
        /// What is wrong with the address.
        source: IpamError,
    },
    /// The address is held by another container.
    #[error("address {address} on {network} is in use by {holder}")]
    InUse {
        /// The network.
        network: String,
        /// The address.
        address: Ipv4Addr,
        /// Who holds it (a container name or id).
        holder: String,
    },
    /// No free address left.
    #[error("network {network} ({subnet}) has no free address left")]
    Exhausted {
        /// The network.
        network: String,
        /// Its subnet.
        subnet: Ipv4Net,
    },
    /// No subnet, tag or VNI left for a new network.
    #[error("cannot create network {network}: {reason}")]
    NoRoom {
        /// The network.
        network: String,
        /// What ran out.
        reason: String,
    },
    /// A record in the store could not be read.
    #[error("the record at {key} is not valid: {reason}")]
    Corrupt {
        /// Its key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// `net-ovs`'s view of the store.
#[derive(Clone, Debug)]
pub struct State {
    store: Arc<dyn Store>,
    options: Arc<Options>,
    node: String,
}

/// The key of network `name`.
pub fn network_key(name: &str) -> String {
    format!("net-ovs/networks/{name}")
}

/// The key of `address` on `network`.
pub fn address_key(network: &str, address: Ipv4Addr) -> String {
    format!("net-ovs/addresses/{network}/{address}")
}

/// The key of container `id`'s attachments.
pub fn container_key(id: &str) -> String {
    format!("net-ovs/containers/{id}")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn decode<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<T, StateError> {
    serde_json::from_slice(&kv.value).map_err(|e| StateError::Corrupt {
        key: kv.key.clone(),
        reason: e.to_string(),
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

impl State {
    /// The state of `node`'s adapter, in `store`.
    pub fn new(store: Arc<dyn Store>, options: Arc<Options>, node: &str) -> State {
        State {
            store,
            options,
            node: node.to_owned(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Network `name` as the cluster knows it, if it exists.
    pub async fn find_network(&self, name: &str) -> Result<Option<Network>, StateError> {
        match self.store.get(&network_key(name)).await? {
            Some(kv) => Ok(Some(decode(&kv)?)),
            None => Ok(None),
        }
    }

    /// Every network of the cluster, by name.
    pub async fn networks(&self) -> Result<Vec<Network>, StateError> {
        let listing = self.store.list("net-ovs/networks/").await?;
        listing.kvs.iter().map(decode).collect()
    }

    /// Network `name`: as the cluster knows it, or created now from the configuration (its
    /// subnet) or the pool (the next free subnet), with the next free VNI and tag.
    pub async fn network(&self, name: &str) -> Result<Network, StateError> {
        if let Some(network) = self.find_network(name).await? {
            return Ok(network);
        }
        let configured = self.options.networks.get(name).copied();
        if configured.is_none() && self.options.pool.is_none() {
            return Err(StateError::UnknownNetwork(name.to_owned()));
        }
        let no_room = |reason: String| StateError::NoRoom {
            network: name.to_owned(),
            reason,
        };
        // A tag and VNI: the lowest index nobody holds.
        let mut index = None;
        for n in 1..=MAX_NETWORKS {
            match self
                .store
                .swap(
                    &format!("net-ovs/indexes/{n}"),
                    Expect::Absent,
                    name.as_bytes(),
                    None,
                )
                .await?
            {
                Swap::Done(_) => {
                    index = Some(n);
                    break;
                }
                Swap::Failed(Some(kv)) if kv.value == name.as_bytes() => {
                    // Claimed by an earlier attempt for this network that did not finish.
                    index = Some(n);
                    break;
                }
                Swap::Failed(_) => {}
            }
        }
        let index = index.ok_or_else(|| no_room(format!("all {MAX_NETWORKS} tags are taken")))?;
        let subnet = match configured {
            Some(subnet) => subnet,
            None => self.claim_subnet(name).await?,
        };
        let network = Network {
            name: name.to_owned(),
            subnet,
            vni: VNI_BASE + u32::from(index),
            tag: index,
        };
        match self
            .store
            .swap(&network_key(name), Expect::Absent, &encode(&network), None)
            .await?
        {
            Swap::Done(_) => Ok(network),
            // Another node created it at the same time: theirs stands; give ours back.
            Swap::Failed(Some(theirs)) => {
                let theirs: Network = decode(&theirs)?;
                if theirs.tag != index {
                    let _ = self
                        .store
                        .delete(&format!("net-ovs/indexes/{index}"), None)
                        .await;
                }
                if configured.is_none() && theirs.subnet != subnet {
                    let _ = self.store.delete(&subnet_key(subnet), None).await;
                }
                Ok(theirs)
            }
            Swap::Failed(None) => Err(no_room("the network record vanished".into())),
        }
    }

    /// Claims the next free subnet of the pool for `name`.
    async fn claim_subnet(&self, name: &str) -> Result<Ipv4Net, StateError> {
        let pool = self
            .options
            .pool
            .ok_or_else(|| StateError::UnknownNetwork(name.to_owned()))?;
        let mut taken: Vec<Ipv4Net> = self.options.networks.values().copied().collect();
        taken.extend(self.networks().await?.iter().map(|n| n.subnet));
        loop {
            let Some(subnet) = ipam::next_subnet(pool, self.options.pool_prefix, &taken) else {
                return Err(StateError::NoRoom {
                    network: name.to_owned(),
                    reason: format!(
                        "the pool {pool} has no free /{} left",
                        self.options.pool_prefix
                    ),
                });
            };
            match self
                .store
                .swap(&subnet_key(subnet), Expect::Absent, name.as_bytes(), None)
                .await?
            {
                Swap::Done(_) => return Ok(subnet),
                Swap::Failed(Some(kv)) if kv.value == name.as_bytes() => return Ok(subnet),
                Swap::Failed(_) => taken.push(subnet),
            }
        }
    }

    /// Reserves an address on `network` for `holder`: `fixed` if given (and free), else the
    /// lowest free one.
    pub async fn reserve(
        &self,
        network: &Network,
        fixed: Option<Ipv4Addr>,
        holder: &str,
        name: Option<&str>,
    ) -> Result<Ipv4Addr, StateError> {
        let allocation = Allocation {
            holder: holder.to_owned(),
            name: name.map(str::to_owned),
            node: self.node.clone(),
            since: now(),
        };
        let value = encode(&allocation);
        if let Some(address) = fixed {
            ipam::check_address(network.subnet, address).map_err(|source| StateError::Address {
                network: network.name.clone(),
                source,
            })?;
            return match self
                .store
                .swap(
                    &address_key(&network.name, address),
                    Expect::Absent,
                    &value,
                    None,
                )
                .await?
            {
                Swap::Done(_) => Ok(address),
                Swap::Failed(Some(kv)) => {
                    let current: Allocation = decode(&kv)?;
                    if current.holder == holder {
                        return Ok(address);
                    }
                    Err(StateError::InUse {
                        network: network.name.clone(),
                        address,
                        holder: current.name.unwrap_or(current.holder),
                    })
                }
                Swap::Failed(None) => Err(StateError::Corrupt {
                    key: address_key(&network.name, address),
                    reason: "vanished while being claimed".into(),
                }),
            };
        }
        let mut used: BTreeSet<Ipv4Addr> = self
            .allocations(&network.name)
            .await?
            .into_iter()
            .map(|(address, _)| address)
            .collect();
        loop {
            let Some(address) = ipam::first_free(network.subnet, &used) else {
                return Err(StateError::Exhausted {
                    network: network.name.clone(),
                    subnet: network.subnet,
                });
            };
            match self
                .store
                .swap(
                    &address_key(&network.name, address),
                    Expect::Absent,
                    &value,
                    None,
                )
                .await?
            {
                Swap::Done(_) => return Ok(address),
                Swap::Failed(_) => {
                    used.insert(address);
                }
            }
        }
    }

    /// Every allocated address of `network`, with who holds it.
    pub async fn allocations(
        &self,
        network: &str,
    ) -> Result<Vec<(Ipv4Addr, Allocation)>, StateError> {
        let prefix = format!("net-ovs/addresses/{network}/");
        let listing = self.store.list(&prefix).await?;
        let mut out = Vec::new();
        for kv in &listing.kvs {
            let Some(address) = kv
                .key
                .strip_prefix(&prefix)
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            out.push((address, decode(kv)?));
        }
        Ok(out)
    }

    /// Every allocation of every network, with its key and revision.
    pub async fn all_allocations(&self) -> Result<Vec<(KeyValue, Allocation)>, StateError> {
        let listing = self.store.list("net-ovs/addresses/").await?;
        listing
            .kvs
            .into_iter()
            .map(|kv| {
                let allocation = decode(&kv)?;
                Ok((kv, allocation))
            })
            .collect()
    }

    /// Releases every address `holder` holds (only while it still holds it).
    pub async fn release(&self, holder: &str) -> Result<usize, StateError> {
        let mut released = 0;
        for (kv, allocation) in self.all_allocations().await? {
            if allocation.holder == holder
                && self.store.delete(&kv.key, Some(kv.mod_revision)).await?
            {
                released += 1;
            }
        }
        Ok(released)
    }

    /// Gives the addresses reserved under `token` to container `id` (named `name`).
    pub async fn bind(&self, token: &str, id: &str, name: Option<&str>) -> Result<(), StateError> {
        let reservation = format!("{RESERVATION}{token}");
        for (kv, mut allocation) in self.all_allocations().await? {
            if allocation.holder != reservation {
                continue;
            }
            allocation.holder = id.to_owned();
            allocation.name = name.map(str::to_owned).or(allocation.name);
            // Only this node's create answer binds this token: a lost race is impossible,
            // but a vanished key (released meanwhile) is not an error.
            let _ = self
                .store
                .swap(
                    &kv.key,
                    Expect::At(kv.mod_revision),
                    &encode(&allocation),
                    None,
                )
                .await?;
        }
        Ok(())
    }

    /// Container `id`'s record, if any.
    pub async fn record(&self, id: &str) -> Result<Option<Record>, StateError> {
        match self.store.get(&container_key(id)).await? {
            Some(kv) => Ok(Some(decode(&kv)?)),
            None => Ok(None),
        }
    }

    /// Every container record, by container id.
    pub async fn records(&self) -> Result<Vec<(String, Record)>, StateError> {
        let listing = self.store.list("net-ovs/containers/").await?;
        let mut out = Vec::new();
        for kv in &listing.kvs {
            let id = kv.key.trim_start_matches("net-ovs/containers/").to_owned();
            out.push((id, decode(kv)?));
        }
        Ok(out)
    }

    /// Records container `id` (on this node) and its attachments.
    pub async fn set_record(
        &self,
        id: &str,
        name: Option<&str>,
        attachments: Vec<Attachment>,
    ) -> Result<(), StateError> {
        let record = Record {
            name: name.map(str::to_owned),
            node: self.node.clone(),
            attachments,
        };
        self.store
            .put(&container_key(id), &encode(&record), None)
            .await?;
        Ok(())
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Forgets container `id`: its record and its addresses.
    pub async fn forget(&self, id: &str) -> Result<(), StateError> {
        self.release(id).await?;
        self.store.delete(&container_key(id), None).await?;
        Ok(())
    }
}

/// The key a subnet carved from the pool is claimed under.
fn subnet_key(subnet: Ipv4Net) -> String {
    format!(
        "net-ovs/subnets/{}_{}",
        subnet.network(),
        subnet.prefix_len()
    )
}
