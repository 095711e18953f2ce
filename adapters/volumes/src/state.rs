//! What `volumes` keeps in the cluster store, and the operations on it. Every change to a
//! dataset is a read, a decision in [`crate::model`], and a compare-and-swap: two nodes
//! racing get one winner, and the loser sees the winner's record.
//!
//! | key | value |
//! |---|---|
//! | `volumes/datasets/<name>` | a dataset: id, profile, limit, primary node, leases, move in progress, move bases |
//! | `volumes/snapshots/<id>` | a user's snapshot: dataset, node |
//! | `volumes/tickets/<ticket>` | a transfer the source may serve: what, from, to, until when |
//! | `volumes/endpoints/<node id>` | where a node serves transfers (`http://addr:port`), under the node's lease |
//! | `volumes/requests/<id>` | an operator's request (`powerstrip volumes snapshot|rm|move`) and its outcome |

use std::sync::Arc;

use powerstrip_adapter::store::helpers::{Change, UpdateError, update};
use powerstrip_adapter::store::{Expect, KeyValue, LeaseId, Store, StoreError, Swap};
use serde::{Deserialize, Serialize};

use crate::model::{Conflict, Dataset, Snapshot};

/// The prefix of every key.
pub const PREFIX: &str = "volumes/";
/// Datasets, by name.
pub const DATASETS: &str = "volumes/datasets/";
/// Snapshots, by id.
pub const SNAPSHOTS: &str = "volumes/snapshots/";
/// Transfer tickets.
pub const TICKETS: &str = "volumes/tickets/";
/// Transfer endpoints, by node id.
pub const ENDPOINTS: &str = "volumes/endpoints/";
/// Operators' requests.
pub const REQUESTS: &str = "volumes/requests/";

/// Why a state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The decision refused the change.
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// The dataset does not exist.
    #[error("dataset {0} does not exist")]
    Missing(String),
    /// A record that does not parse (written by a newer version, or damaged).
    #[error("the record at {key} cannot be read: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// Other writers kept changing the record.
    #[error("{0}")]
    Contended(String),
}

/// A transfer the source may serve: the target wrote it before asking.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The dataset's name (for messages).
    pub dataset: String,
    /// The dataset's id.
    pub dataset_id: String,
    /// The snapshot to send.
    pub snapshot: String,
    /// The node that sends.
    pub from: String,
    /// The node that receives.
    pub to: String,
    /// Until when it may be used (seconds since the epoch).
    pub expires: u64,
}

/// What an operator asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    /// Take a snapshot of a dataset (its primary does).
    Snapshot {
        /// The dataset.
        dataset: String,
    },
    /// Remove a dataset (its primary does).
    Remove {
        /// The dataset.
        dataset: String,
    },
    /// Remove a snapshot (its node does).
    RemoveSnapshot {
        /// The snapshot id (or a unique prefix).
        snapshot: String,
    },
    /// Move a dataset to a node (that node does).
    Move {
        /// The dataset.
        dataset: String,
        /// The node's id.
        to: String,
    },
}

/// An operator's request and how it went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// What.
    #[serde(flatten)]
    pub op: Op,
    /// When it was made (seconds since the epoch).
    pub created: u64,
    /// `None` while pending; then what happened.
    #[serde(default)]
    pub outcome: Option<Outcome>,
}

/// How a request went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum Outcome {
    /// Done; what to tell the operator.
    Done {
        /// The result (a snapshot's id, "removed", "moved in 3.2s").
        message: String,
    },
    /// Failed; why.
    Failed {
        /// Why, and the HTTP-style status that goes with it.
        message: String,
        /// 400, 404, 409, 503, 504...
        status: u16,
    },
}

/// Typed access to the adapter's keys.
#[derive(Clone, Debug)]
pub struct State {
    store: Arc<dyn Store>,
}

fn decode<T: for<'de> Deserialize<'de>>(kv: &KeyValue) -> Result<T, StateError> {
    serde_json::from_slice(&kv.value).map_err(|e| StateError::Corrupt {
        key: kv.key.clone(),
        reason: e.to_string(),
    })
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain structs of strings, numbers and maps with string keys: serialising cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

impl State {
    /// The adapter's state in `store`.
    pub fn new(store: Arc<dyn Store>) -> State {
        State { store }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Dataset `name`, if it exists.
    pub async fn dataset(&self, name: &str) -> Result<Option<Dataset>, StateError> {
        match self.store.get(&format!("{DATASETS}{name}")).await? {
            Some(kv) => Ok(Some(decode(&kv)?)),
            None => Ok(None),
        }
    }

    /// Every dataset (records that do not parse are skipped, with their keys returned).
    pub async fn datasets(&self) -> Result<(Vec<Dataset>, Vec<String>), StateError> {
        let listing = self.store.list(DATASETS).await?;
        let mut out = Vec::new();
        let mut bad = Vec::new();
        for kv in &listing.kvs {
            match decode(kv) {
                Ok(d) => out.push(d),
                Err(_) => bad.push(kv.key.clone()),
            }
        }
        Ok((out, bad))
    }

    /// Records `dataset` unless one of its name exists; `Ok(Err(existing))` then.
    pub async fn create(&self, dataset: &Dataset) -> Result<Result<(), Dataset>, StateError> {
        let key = format!("{DATASETS}{}", dataset.name);
        match self
            .store
            .swap(&key, Expect::Absent, &encode(dataset), None)
            .await?
        {
            Swap::Done(_) => Ok(Ok(())),
            Swap::Failed(Some(kv)) => Ok(Err(decode(&kv)?)),
            // Deleted in between: the caller may try again.
            Swap::Failed(None) => Err(StateError::Contended(format!(
                "dataset {} was created and removed while this node created it",
                dataset.name
            ))),
        }
    }

    /// Reads dataset `name`, lets `change` decide (it may refuse), and writes the result
    /// with a compare-and-swap, retrying when another node wrote in between. Returns the
    /// dataset as written and what `change` returned.
    pub async fn update<T, F>(&self, name: &str, mut change: F) -> Result<(Dataset, T), StateError>
    where
        F: FnMut(&mut Dataset) -> Result<T, Conflict>,
    {
        let key = format!("{DATASETS}{name}");
        let mut result: Option<(Dataset, T)> = None;
        let outcome = update(&*self.store, &key, None, |kv| {
            let Some(kv) = kv else {
                return Err(StateError::Missing(name.to_owned()));
            };
            let mut dataset: Dataset = decode(kv)?;
            let value = change(&mut dataset)?;
            let bytes = encode(&dataset);
            let unchanged = bytes == kv.value;
            result = Some((dataset, value));
            Ok(if unchanged {
                Change::Keep
            } else {
                Change::Put(bytes)
            })
        })
        .await;
        match outcome {
            Ok(_) => result.ok_or_else(|| StateError::Missing(name.to_owned())),
            Err(UpdateError::Store(e)) => Err(e.into()),
            Err(UpdateError::Refused(e)) => Err(e),
            Err(e @ UpdateError::Contended { .. }) => Err(StateError::Contended(e.to_string())),
        }
    }

    /// Deletes dataset `name`'s record if `check` allows it as it is now.
    pub async fn remove<F>(&self, name: &str, mut check: F) -> Result<Dataset, StateError>
    where
        F: FnMut(&Dataset) -> Result<(), Conflict>,
    {
        let key = format!("{DATASETS}{name}");
        let mut removed = None;
        let outcome = update(&*self.store, &key, None, |kv| {
            let Some(kv) = kv else {
                return Err(StateError::Missing(name.to_owned()));
            };
            let dataset: Dataset = decode(kv)?;
            check(&dataset)?;
            removed = Some(dataset);
            Ok(Change::Delete)
        })
        .await;
        match outcome {
            Ok(_) => removed.ok_or_else(|| StateError::Missing(name.to_owned())),
            Err(UpdateError::Store(e)) => Err(e.into()),
            Err(UpdateError::Refused(e)) => Err(e),
            Err(e @ UpdateError::Contended { .. }) => Err(StateError::Contended(e.to_string())),
        }
    }

    /// Every snapshot.
    pub async fn snapshots(&self) -> Result<Vec<Snapshot>, StateError> {
        let listing = self.store.list(SNAPSHOTS).await?;
        Ok(listing
            .kvs
            .iter()
            .filter_map(|kv| decode(kv).ok())
            .collect())
    }

    /// Records a snapshot.
    pub async fn put_snapshot(&self, snapshot: &Snapshot) -> Result<(), StateError> {
        self.store
            .put(
                &format!("{SNAPSHOTS}{}", snapshot.id),
                &encode(snapshot),
                None,
            )
            .await?;
        Ok(())
    }

    /// Forgets a snapshot.
    pub async fn delete_snapshot(&self, id: &str) -> Result<(), StateError> {
        self.store.delete(&format!("{SNAPSHOTS}{id}"), None).await?;
        Ok(())
    }

    /// Writes a ticket.
    pub async fn put_ticket(&self, id: &str, ticket: &Ticket) -> Result<(), StateError> {
        self.store
            .put(&format!("{TICKETS}{id}"), &encode(ticket), None)
            .await?;
        Ok(())
    }

    /// Ticket `id`, if it exists.
    pub async fn ticket(&self, id: &str) -> Result<Option<Ticket>, StateError> {
        match self.store.get(&format!("{TICKETS}{id}")).await? {
            Some(kv) => Ok(Some(decode(&kv)?)),
            None => Ok(None),
        }
    }

    /// Every ticket, by id.
    pub async fn tickets(&self) -> Result<Vec<(String, Ticket)>, StateError> {
        let listing = self.store.list(TICKETS).await?;
        Ok(listing
            .kvs
            .iter()
            .filter_map(|kv| {
                let id = kv.key.strip_prefix(TICKETS)?.to_owned();
                Some((id, decode(kv).ok()?))
            })
            .collect())
    }

    /// Deletes ticket `id`.
    pub async fn delete_ticket(&self, id: &str) -> Result<(), StateError> {
        self.store.delete(&format!("{TICKETS}{id}"), None).await?;
        Ok(())
    }

    /// Publishes where `node` serves transfers, under `lease`.
    pub async fn put_endpoint(
        &self,
        node: &str,
        endpoint: &str,
        lease: LeaseId,
    ) -> Result<(), StateError> {
        self.store
            .put(
                &format!("{ENDPOINTS}{node}"),
                endpoint.as_bytes(),
                Some(lease),
            )
            .await?;
        Ok(())
    }

    /// Where `node` serves transfers, if it does.
    pub async fn endpoint(&self, node: &str) -> Result<Option<String>, StateError> {
        Ok(self
            .store
            .get(&format!("{ENDPOINTS}{node}"))
            .await?
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
    }

    /// Records an operator's request; its key.
    pub async fn put_request(&self, id: &str, request: &Request) -> Result<String, StateError> {
        let key = format!("{REQUESTS}{id}");
        self.store.put(&key, &encode(request), None).await?;
        Ok(key)
    }

    /// Every pending or finished request, by key.
    pub async fn requests(&self) -> Result<Vec<(String, Request)>, StateError> {
        let listing = self.store.list(REQUESTS).await?;
        Ok(listing
            .kvs
            .iter()
            .filter_map(|kv| Some((kv.key.clone(), decode(kv).ok()?)))
            .collect())
    }

    /// Request at `key`, if it exists.
    pub async fn request(&self, key: &str) -> Result<Option<Request>, StateError> {
        match self.store.get(key).await? {
            Some(kv) => Ok(Some(decode(&kv)?)),
            None => Ok(None),
        }
    }

    /// Sets the outcome of the request at `key`, if it is still pending and still there.
    pub async fn finish_request(&self, key: &str, outcome: Outcome) -> Result<(), StateError> {
        let outcome = update(&*self.store, key, None, |kv| {
            let Some(kv) = kv else {
                return Ok::<_, StateError>(Change::Keep);
            };
            let mut request: Request = decode(kv)?;
            if request.outcome.is_some() {
                return Ok(Change::Keep);
            }
            request.outcome = Some(outcome.clone());
            Ok(Change::Put(encode(&request)))
        })
        .await;
        match outcome {
            Ok(_) => Ok(()),
            Err(UpdateError::Store(e)) => Err(e.into()),
            Err(UpdateError::Refused(e)) => Err(e),
            Err(e @ UpdateError::Contended { .. }) => Err(StateError::Contended(e.to_string())),
        }
    }
}
