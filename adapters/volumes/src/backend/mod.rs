//! Where a node keeps its datasets' bytes: one trait, two backends.
//!
//! - [`btrfs::Btrfs`]: a dataset is a subvolume, a size limit a qgroup limit, a snapshot a
//!   read-only snapshot, a clone a writable snapshot of one, a transfer `btrfs send`
//!   (incremental against a parent both sides hold) into `btrfs receive`.
//! - [`directory::Directory`]: plain directories, for hosts without btrfs: no size limit,
//!   snapshots by copy (reflink where the filesystem has it), transfers as tar streams.
//!
//! A pool's layout, the same for both:
//!
//! ```text
//! <pool>/datasets/<id>     writable datasets (what containers mount)
//! <pool>/snapshots/<id>    read-only snapshots (user snapshots and transfer bases)
//! <pool>/incoming/<n>/     receives in progress; renamed into snapshots/ when complete
//! ```
//!
//! Ids are the adapter's (`[a-z0-9-]`, at most 64 characters), never user input. Every
//! operation is idempotent where it can be (creating what exists, deleting what does not
//! is nothing) and leaves nothing behind when it fails: a failed receive removes what it
//! received, a failed create removes what it made.

use std::fmt;
use std::path::PathBuf;
use std::pin::Pin;

use async_trait::async_trait;
use tokio::io::AsyncRead;

pub mod btrfs;
pub mod directory;
pub mod pool;

/// A stream of a snapshot's bytes for [`Backend::receive`] on another node, and the
/// process producing it (if any), awaited by [`SendStream::finish`].
pub struct SendStream {
    /// The bytes.
    pub reader: Pin<Box<dyn AsyncRead + Send>>,
    /// Completes when the producer has exited; its error if it failed (a `btrfs send` that
    /// exits non-zero after writing part of the stream).
    pub done: Pin<Box<dyn std::future::Future<Output = Result<(), BackendError>> + Send>>,
}

impl SendStream {
    /// Waits for the producer to finish.
    pub async fn finish(self) -> Result<(), BackendError> {
        self.done.await
    }
}

impl fmt::Debug for SendStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendStream").finish_non_exhaustive()
    }
}

/// Space in a pool, and in a dataset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes used (a dataset: its exclusive and shared data as the backend counts it).
    pub used: u64,
    /// Bytes still available (a pool: free space; a dataset: its limit minus what it
    /// uses, or the pool's free space when it has no limit).
    pub available: u64,
    /// The limit, when there is one.
    pub limit: Option<u64>,
}

/// Why a backend operation failed: what was being done, and what went wrong.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The pool has no room (ENOSPC, or less free space than asked for).
    #[error("pool {pool} is full: {reason}")]
    Full {
        /// The pool's path.
        pool: String,
        /// What was being done and what the filesystem said.
        reason: String,
    },
    /// What was asked for does not exist.
    #[error("{what} does not exist")]
    NotFound {
        /// The dataset or snapshot.
        what: String,
    },
    /// A tool or a system call failed.
    #[error("{step}: {reason}")]
    Failed {
        /// What was being done: "creating subvolume /pool/datasets/x".
        step: String,
        /// What went wrong (a tool's stderr, an OS error).
        reason: String,
    },
}

/// A node's dataset storage.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// `"btrfs"` or `"directory"`.
    fn kind(&self) -> &'static str;

    /// The pool's root.
    fn pool(&self) -> PathBuf;

    /// Whether sizes are enforced ([`Backend::create`]'s `limit`).
    fn limits_size(&self) -> bool;

    /// Whether [`Backend::send`] with a parent sends only the difference.
    fn incremental(&self) -> bool;

    /// Where dataset `id` is, to bind-mount into containers (whether or not it exists):
    /// `<pool>/datasets/<id>`, the layout every backend shares.
    fn dataset_path(&self, id: &str) -> PathBuf {
        self.pool().join("datasets").join(id)
    }

    /// Where snapshot `id` is (whether or not it exists): `<pool>/snapshots/<id>`.
    fn snapshot_path(&self, id: &str) -> PathBuf {
        self.pool().join("snapshots").join(id)
    }

    /// Prepares the pool (directories, quotas on); idempotent.
    async fn prepare(&self) -> Result<(), BackendError>;

    /// Creates an empty writable dataset `id` with at most `limit` bytes (ignored where
    /// sizes are not enforced). Nothing when it exists (its limit is set again).
    async fn create(&self, id: &str, limit: Option<u64>) -> Result<PathBuf, BackendError>;

    /// Sets or clears dataset `id`'s limit.
    async fn set_limit(&self, id: &str, limit: Option<u64>) -> Result<(), BackendError>;

    /// Deletes dataset `id` (nothing when it does not exist).
    async fn destroy(&self, id: &str) -> Result<(), BackendError>;

    /// Makes read-only snapshot `snapshot` of dataset `id` as it is now. Nothing when the
    /// snapshot exists.
    async fn snapshot(&self, id: &str, snapshot: &str) -> Result<(), BackendError>;

    /// Makes writable dataset `id` from snapshot `snapshot` (the two independent from then
    /// on), with at most `limit` bytes. Nothing when the dataset exists.
    async fn clone_snapshot(
        &self,
        snapshot: &str,
        id: &str,
        limit: Option<u64>,
    ) -> Result<PathBuf, BackendError>;

    /// Deletes snapshot `snapshot` (nothing when it does not exist).
    async fn delete_snapshot(&self, snapshot: &str) -> Result<(), BackendError>;

    /// The ids of the datasets in the pool.
    async fn datasets(&self) -> Result<Vec<String>, BackendError>;

    /// The ids of the snapshots in the pool (complete ones only, not receives in
    /// progress).
    async fn snapshots(&self) -> Result<Vec<String>, BackendError>;

    /// A stream of snapshot `snapshot`, relative to `parent` (a snapshot the receiving side
    /// also holds) when given and the backend sends increments.
    async fn send(&self, snapshot: &str, parent: Option<&str>) -> Result<SendStream, BackendError>;

    /// Receives a stream made by [`Backend::send`] on another node as read-only snapshot
    /// `snapshot`. Until it returns `Ok`, `snapshot` does not exist: a stream that ends
    /// early or is refused leaves nothing. A parent the stream names must be here.
    async fn receive(
        &self,
        snapshot: &str,
        stream: Pin<Box<dyn AsyncRead + Send>>,
    ) -> Result<(), BackendError>;

    /// Space in the pool.
    async fn pool_usage(&self) -> Result<Usage, BackendError>;

    /// Space in dataset `id`.
    async fn usage(&self, id: &str) -> Result<Usage, BackendError>;

    /// Removes receives left in progress by a process that died (at start).
    async fn clean_incoming(&self) -> Result<(), BackendError>;
}
