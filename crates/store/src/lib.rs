//! # powerstrip-store: the cluster state adapters share
//!
//! Adapters that plumb hosts keep state that must survive restarts and be shared between
//! hosts: IP allocations, dataset owners and leases, every node's facts, tunnel peers. This
//! crate gives them one async trait, [`Store`], with what they need — get, put,
//! create-if-absent and compare-and-swap on a key's revision, delete, list by prefix, watch a
//! prefix from a revision, and leases — and two backends behind it:
//!
//! - [`Embedded`], the default: one crash-safe file (redb) under a state directory, for a
//!   single host. Revisions, watches and leases behave as in etcd; a lease whose holder died
//!   expires after its TTL, also across a restart.
//! - [`Etcd`]: etcd v3 for several hosts (several endpoints, TLS, user/password, a key
//!   prefix per cluster). No consensus of our own anywhere.
//!
//! Every call is bounded by a timeout: a store that does not answer is a
//! [`StoreError::Timeout`] naming the store and what it could not do, never a hang.
//!
//! ## Layout
//! - this file: keys, values, revisions, events, [`Store`], [`StoreError`], [`open`].
//! - [`embedded`]: the redb backend.
//! - [`etcd`]: the etcd v3 backend.
//! - [`helpers`]: what adapters do over and over on top of the trait: read-modify-CAS with
//!   retry ([`helpers::update`]), a lease kept alive in the background
//!   ([`helpers::KeptLease`]), one holder of a named role per cluster
//!   ([`helpers::campaign`]).
//! - [`nodes`]: the node registry: each proxy registers itself under a lease.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use powerstrip_store::{Embedded, Expect, Store, Swap};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = Embedded::open(&dir.path().join("state.redb")).unwrap();
//! let first = store.swap("ipam/blue/10.50.0.2", Expect::Absent, b"web", None).await.unwrap();
//! assert!(matches!(first, Swap::Done(_)));
//! // A second claim of the same address loses, and learns who holds it.
//! let second = store.swap("ipam/blue/10.50.0.2", Expect::Absent, b"db", None).await.unwrap();
//! assert!(matches!(second, Swap::Failed(Some(kv)) if kv.value == b"web"));
//! # });
//! ```
#![forbid(unsafe_code)]

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

pub mod embedded;
pub mod etcd;
pub mod helpers;
pub mod nodes;

pub use embedded::Embedded;
pub use etcd::{Etcd, EtcdOptions};

/// A point in the store's history. Every change gets the next one, store-wide, as in etcd.
pub type Revision = i64;

/// A lease: keys put under it disappear when it ends (revoked, or not kept alive within
/// its TTL).
pub type LeaseId = i64;

/// How long a call may take before it fails with [`StoreError::Timeout`], by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// One key and its value, with the revisions that describe its history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key, relative to the store's prefix.
    pub key: String,
    /// The value, as put.
    pub value: Vec<u8>,
    /// When the key was created (since it last did not exist).
    pub create_revision: Revision,
    /// When the key was last changed: what [`Expect::At`] compares.
    pub mod_revision: Revision,
    /// How many times it was put since it was created (1 after the first put).
    pub version: i64,
    /// The lease it lives under, if any.
    pub lease: Option<LeaseId>,
}

/// A change to a watched key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The key was put; its new value and revisions.
    Put(KeyValue),
    /// The key was deleted (directly, or because its lease ended) at this revision.
    Delete {
        /// The key, relative to the store's prefix.
        key: String,
        /// The revision of the deletion.
        revision: Revision,
    },
}

impl Event {
    /// The revision at which this change happened.
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put(kv) => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }

    /// The key that changed.
    pub fn key(&self) -> &str {
        match self {
            Event::Put(kv) => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }
}

/// What a compare-and-swap expects of the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The key does not exist (create-if-absent).
    Absent,
    /// The key exists and was last changed at this revision ([`KeyValue::mod_revision`]).
    At(Revision),
}

/// The outcome of a compare-and-swap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Swap {
    /// The expectation held; the value was written at this revision.
    Done(Revision),
    /// The expectation did not hold; nothing was written. The key as it is now (`None`: it
    /// does not exist).
    Failed(Option<KeyValue>),
}

/// A prefix's keys at one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listing {
    /// The keys, sorted.
    pub kvs: Vec<KeyValue>,
    /// The store's revision when they were read: watching from `revision + 1` continues
    /// from exactly this state, with nothing missed and nothing repeated.
    pub revision: Revision,
}

/// Why a store call failed. Every variant names the store and what it could not do, so an
/// adapter can pass the message on to the Docker user.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store did not answer in time.
    #[error("the cluster store ({store}) did not answer within {after:?} when asked to {op}")]
    Timeout {
        /// The store, e.g. `etcd http://127.0.0.1:2379`.
        store: String,
        /// What was asked, e.g. `put ipam/blue/10.50.0.2`.
        op: String,
        /// The timeout.
        after: Duration,
    },
    /// The store could not be reached, or failed.
    #[error("the cluster store ({store}) could not {op}: {reason}")]
    Unavailable {
        /// The store.
        store: String,
        /// What was asked.
        op: String,
        /// Why it failed.
        reason: String,
    },
    /// A watch asked for history the store no longer keeps.
    #[error(
        "the cluster store ({store}) no longer keeps revision {requested}; its history starts at {oldest}"
    )]
    Compacted {
        /// The store.
        store: String,
        /// The revision asked for.
        requested: Revision,
        /// The oldest revision still kept.
        oldest: Revision,
    },
    /// The lease does not exist (it expired, was revoked, or never was).
    #[error("lease {lease} has expired or was revoked")]
    LeaseGone {
        /// The lease.
        lease: LeaseId,
    },
    /// A key that cannot be stored (empty, or with a NUL byte).
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// Why.
        reason: &'static str,
    },
}

/// Changes to a prefix, in revision order, from the revision the watch started at. A
/// backend resumes a broken connection by itself from the last revision delivered, so the
/// stream has no gap and no duplicate; it ends (`None`) only when the store is closed, and
/// yields an error only when it cannot go on (the history it needs was compacted).
#[derive(Debug)]
pub struct Watch {
    events: mpsc::Receiver<Result<Event, StoreError>>,
    /// Stops the task feeding `events` when the watch is dropped.
    _stop: helpers::AbortOnDrop,
}

impl Watch {
    /// A watch fed by `task` through `events`.
    pub(crate) fn new(
        events: mpsc::Receiver<Result<Event, StoreError>>,
        task: tokio::task::JoinHandle<()>,
    ) -> Self {
        Watch {
            events,
            _stop: helpers::AbortOnDrop(task),
        }
    }

    /// The next change; `None` when the store was closed.
    pub async fn next(&mut self) -> Option<Result<Event, StoreError>> {
        self.events.recv().await
    }
}

/// The cluster state adapters share. Keys are UTF-8 paths such as `ipam/blue/10.50.0.2`,
/// relative to the store's prefix; values are bytes (adapters usually put JSON).
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// What this store is, for messages: `embedded /var/lib/powerstrip/state/store.redb`,
    /// `etcd http://10.0.0.1:2379,http://10.0.0.2:2379 prefix /powerstrip/prod/`.
    fn describe(&self) -> &str;

    /// The key's value and revisions, if it exists.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Every key under `prefix` (`""` for all), sorted, and the revision they were read at.
    async fn list(&self, prefix: &str) -> Result<Listing, StoreError>;

    /// Writes the key unconditionally, under `lease` if given; the revision of the write.
    async fn put(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError>;

    /// Writes the key only if `expect` holds (compare-and-swap on its revision, or
    /// create-if-absent).
    async fn swap(
        &self,
        key: &str,
        expect: Expect,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Swap, StoreError>;

    /// Deletes the key — only if it was last changed at `at`, when given. True when a key
    /// was deleted.
    async fn delete(&self, key: &str, at: Option<Revision>) -> Result<bool, StoreError>;

    /// Changes under `prefix` from revision `from` on (`0`: from the next change).
    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch, StoreError>;

    /// A new lease that ends `ttl` after its last keep-alive.
    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError>;

    /// Restarts the lease's TTL; [`StoreError::LeaseGone`] when it already ended.
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError>;

    /// Ends the lease now, deleting its keys. Revoking a lease that is gone is not an error.
    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError>;
}

/// Which backend to open, and how: the `[store]` section of `adapters.toml`, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreOptions {
    /// One file on this host.
    Embedded {
        /// The file (created if absent, with its directory).
        path: std::path::PathBuf,
        /// How long a call may take.
        timeout: Duration,
    },
    /// An etcd v3 cluster.
    Etcd(EtcdOptions),
}

/// Opens the store `options` describe.
pub async fn open(options: &StoreOptions) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    Ok(match options {
        StoreOptions::Embedded { path, timeout } => {
            std::sync::Arc::new(Embedded::open_with(path, *timeout)?)
        }
        StoreOptions::Etcd(options) => std::sync::Arc::new(Etcd::connect(options).await?),
    })
}

/// Refuses keys no backend can hold the same way.
pub(crate) fn check_key(key: &str) -> Result<(), StoreError> {
    let reason = if key.is_empty() {
        "a key may not be empty"
    } else if key.contains('\0') {
        "a key may not hold a NUL byte"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidKey {
        key: key.to_owned(),
        reason,
    })
}
