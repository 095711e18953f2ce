//! What adapters do over and over on top of [`Store`]: read-modify-CAS with retry, a lease
//! kept alive in the background, and one holder of a named role per cluster.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, warn};

use crate::{Event, Expect, KeyValue, LeaseId, Revision, Store, StoreError, Swap};

/// Aborts a task when dropped.
#[derive(Debug)]
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What [`update`]'s function decides for the key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Write this value.
    Put(Vec<u8>),
    /// Delete the key.
    Delete,
    /// Leave it as it is.
    Keep,
}

/// Why [`update`] failed.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError<E> {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The function refused the value it was given.
    #[error("{0}")]
    Refused(E),
    /// Other writers kept changing the key: every attempt lost its race.
    #[error("key {key:?} kept changing under {attempts} attempts to update it")]
    Contended {
        /// The key.
        key: String,
        /// How many attempts were made.
        attempts: usize,
    },
}

/// How many times [`update`] tries before giving up.
pub const UPDATE_ATTEMPTS: usize = 64;

/// Reads `key`, asks `change` what to make of it, and writes that with a compare-and-swap
/// on the revision read; when another writer got there first, reads again and retries (up
/// to [`UPDATE_ATTEMPTS`] times, with a short, growing pause). Returns the key as it was
/// written (`None` when deleted or absent and kept so).
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use powerstrip_store::Embedded;
/// use powerstrip_store::helpers::{Change, update};
///
/// let dir = tempfile::tempdir().unwrap();
/// let store = Embedded::open(&dir.path().join("state.redb")).unwrap();
/// let count = |kv: Option<&powerstrip_store::KeyValue>| -> Result<Change, std::convert::Infallible> {
///     let n: u64 = kv.map_or(0, |kv| String::from_utf8_lossy(&kv.value).parse().unwrap_or(0));
///     Ok(Change::Put((n + 1).to_string().into_bytes()))
/// };
/// update(&store, "counter", None, count).await.unwrap();
/// let kv = update(&store, "counter", None, count).await.unwrap().unwrap();
/// assert_eq!(kv.value, b"2");
/// # });
/// ```
pub async fn update<E, F>(
    store: &dyn Store,
    key: &str,
    lease: Option<LeaseId>,
    mut change: F,
) -> Result<Option<KeyValue>, UpdateError<E>>
where
    F: FnMut(Option<&KeyValue>) -> Result<Change, E>,
{
    let mut current = store.get(key).await?;
    for attempt in 0..UPDATE_ATTEMPTS {
        let expect = current
            .as_ref()
            .map_or(Expect::Absent, |kv| Expect::At(kv.mod_revision));
        match change(current.as_ref()).map_err(UpdateError::Refused)? {
            Change::Keep => return Ok(current),
            Change::Put(value) => match store.swap(key, expect, &value, lease).await? {
                Swap::Done(revision) => {
                    let (create_revision, version) = current
                        .as_ref()
                        .map_or((revision, 1), |kv| (kv.create_revision, kv.version + 1));
                    return Ok(Some(KeyValue {
                        key: key.to_owned(),
                        value,
                        create_revision,
                        mod_revision: revision,
                        version,
                        lease,
                    }));
                }
                Swap::Failed(now) => current = now,
            },
            Change::Delete => match current.as_ref() {
                None => return Ok(None),
                Some(kv) => {
                    if store.delete(key, Some(kv.mod_revision)).await? {
                        return Ok(None);
                    }
                    current = store.get(key).await?;
                }
            },
        }
        // Losing a race repeatedly means many writers: step aside a little, more each time.
        let pause = Duration::from_micros(50 << attempt.min(10));
        tokio::time::sleep(pause).await;
    }
    Err(UpdateError::Contended {
        key: key.to_owned(),
        attempts: UPDATE_ATTEMPTS,
    })
}

/// A lease kept alive by a background task (every third of its TTL) until it is dropped or
/// revoked. If the store loses it (this process was partitioned from etcd for longer than
/// the TTL), [`KeptLease::lost`] resolves: whatever was put under it is gone.
#[derive(Debug)]
pub struct KeptLease {
    id: LeaseId,
    store: Arc<dyn Store>,
    lost: watch::Receiver<bool>,
    _keeper: AbortOnDrop,
}

impl KeptLease {
    /// Grants a lease of `ttl` and starts keeping it alive.
    pub async fn grant(store: Arc<dyn Store>, ttl: Duration) -> Result<KeptLease, StoreError> {
        let id = store.grant(ttl).await?;
        let (lost_tx, lost) = watch::channel(false);
        let keeper_store = store.clone();
        let every = (ttl / 3).max(Duration::from_millis(100));
        let keeper = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                match keeper_store.keep_alive(id).await {
                    Ok(()) => {}
                    Err(StoreError::LeaseGone { .. }) => {
                        warn!(lease = id, store = keeper_store.describe(), "lease lost");
                        let _ = lost_tx.send(true);
                        return;
                    }
                    // A missed keep-alive is retried at the next tick; the TTL leaves room
                    // for two more.
                    Err(e) => debug!(lease = id, error = %e, "keep-alive failed"),
                }
            }
        });
        Ok(KeptLease {
            id,
            store,
            lost,
            _keeper: AbortOnDrop(keeper),
        })
    }

    /// The lease.
    pub fn id(&self) -> LeaseId {
        self.id
    }

    /// Resolves when the store has let the lease go (it was not kept alive in time).
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        let _ = lost.wait_for(|lost| *lost).await;
    }

    /// True once the lease was lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Stops keeping the lease alive and ends it now, deleting its keys.
    pub async fn revoke(self) -> Result<(), StoreError> {
        self.store.revoke(self.id).await
    }
}

/// The key under which the holder of `role` is recorded.
pub fn role_key(role: &str) -> String {
    format!("roles/{role}")
}

/// This process holds a role: [`campaign`] returned. The role is held as long as this value
/// lives and its lease is kept alive; [`Leadership::lost`] resolves if the lease is lost.
#[derive(Debug)]
pub struct Leadership {
    role: String,
    lease: KeptLease,
}

impl Leadership {
    /// The role held.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// Resolves when the role was lost (the lease behind it expired).
    pub async fn lost(&self) {
        self.lease.lost().await;
    }

    /// Gives the role up now, so another candidate can take it at once.
    pub async fn resign(self) -> Result<(), StoreError> {
        self.lease.revoke().await
    }
}

/// Waits until this process holds `role` — one holder per cluster, the others waiting —
/// recording `holder` (a node name) as the role's value under a lease of `ttl`. When the
/// holder dies, its lease ends within `ttl` and the next candidate takes over.
pub async fn campaign(
    store: Arc<dyn Store>,
    role: &str,
    holder: &str,
    ttl: Duration,
) -> Result<Leadership, StoreError> {
    let key = role_key(role);
    loop {
        let lease = KeptLease::grant(store.clone(), ttl).await?;
        match store
            .swap(&key, Expect::Absent, holder.as_bytes(), Some(lease.id()))
            .await?
        {
            Swap::Done(_) => {
                debug!(role, holder, "role taken");
                return Ok(Leadership {
                    role: role.to_owned(),
                    lease,
                });
            }
            Swap::Failed(current) => {
                // Not ours: give the lease back and wait for the holder's key to go.
                let _ = lease.revoke().await;
                let since: Revision = current.map_or(0, |kv| kv.mod_revision + 1);
                wait_deleted(store.as_ref(), &key, since).await?;
            }
        }
    }
}

/// The holder of `role` now, if any.
pub async fn holder(store: &dyn Store, role: &str) -> Result<Option<String>, StoreError> {
    Ok(store
        .get(&role_key(role))
        .await?
        .map(|kv| String::from_utf8_lossy(&kv.value).into_owned()))
}

/// Waits until `key` is deleted at or after revision `from` (returns at once if it is
/// already gone).
async fn wait_deleted(store: &dyn Store, key: &str, from: Revision) -> Result<(), StoreError> {
    let mut watch = store.watch(key, from).await?;
    if store.get(key).await?.is_none() {
        return Ok(());
    }
    while let Some(event) = watch.next().await {
        if matches!(event?, Event::Delete { key: ref k, .. } if k == key) {
            return Ok(());
        }
    }
    Ok(())
}
