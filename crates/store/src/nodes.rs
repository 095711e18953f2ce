//! The node registry: each proxy registers its node (id, name, address for peers, labels)
//! under `nodes/<id>`, under a lease it keeps alive, so every node sees which nodes are
//! alive. A node that dies disappears within its lease's TTL.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::helpers::{AbortOnDrop, KeptLease};
use crate::{Store, StoreError};

/// Where nodes are registered.
pub const PREFIX: &str = "nodes/";

/// How long a node stays registered after its proxy stops keeping it alive, by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// One node of the cluster: a proxy and the adapters it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// A stable id, kept in the node's state directory across restarts.
    pub id: String,
    /// Its name (the host name unless set): what operators and placement rules use.
    pub name: String,
    /// Where its peers reach its adapters' peer endpoints (an IP address or host name).
    pub address: String,
    /// Free-form labels (the placement adapter publishes facts separately).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Node {
    /// The key this node is registered under.
    pub fn key(&self) -> String {
        format!("{PREFIX}{}", self.id)
    }
}

/// Every live node, sorted by name.
pub async fn list(store: &dyn Store) -> Result<Vec<Node>, StoreError> {
    let listing = store.list(PREFIX).await?;
    let mut nodes: Vec<Node> = listing
        .kvs
        .iter()
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    Ok(nodes)
}

/// A node's registration, kept alive — and renewed under a new lease if the store ever
/// lets the old one go — until it is dropped or [`Registration::deregister`]ed.
#[derive(Debug)]
pub struct Registration {
    node: Node,
    store: Arc<dyn Store>,
    /// The lease the registration lives under now.
    lease: watch::Receiver<i64>,
    _keeper: AbortOnDrop,
}

impl Registration {
    /// Registers `node` under a lease of `ttl`, and keeps it registered.
    pub async fn register(
        store: Arc<dyn Store>,
        node: Node,
        ttl: Duration,
    ) -> Result<Registration, StoreError> {
        let value = serde_json::to_vec(&node).unwrap_or_default();
        let first = put_under_new_lease(store.clone(), &node.key(), &value, ttl).await?;
        let (lease_tx, lease) = watch::channel(first.id());
        let (task_store, key) = (store.clone(), node.key());
        let keeper = tokio::spawn(async move {
            let mut current = first;
            loop {
                current.lost().await;
                warn!(key, "node registration lost; registering again");
                loop {
                    match put_under_new_lease(task_store.clone(), &key, &value, ttl).await {
                        Ok(renewed) => {
                            let _ = lease_tx.send(renewed.id());
                            current = renewed;
                            info!(key, "node registered again");
                            break;
                        }
                        Err(e) => {
                            warn!(key, error = %e, "cannot register the node; retrying");
                            tokio::time::sleep(ttl / 3).await;
                        }
                    }
                }
            }
        });
        Ok(Registration {
            node,
            store,
            lease,
            _keeper: AbortOnDrop(keeper),
        })
    }

    /// The registered node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Removes the registration now (a clean shutdown), rather than after the TTL.
    pub async fn deregister(self) -> Result<(), StoreError> {
        let lease = *self.lease.borrow();
        self.store.revoke(lease).await
    }
}

async fn put_under_new_lease(
    store: Arc<dyn Store>,
    key: &str,
    value: &[u8],
    ttl: Duration,
) -> Result<KeptLease, StoreError> {
    let lease = KeptLease::grant(store.clone(), ttl).await?;
    store.put(key, value, Some(lease.id())).await?;
    Ok(lease)
}
