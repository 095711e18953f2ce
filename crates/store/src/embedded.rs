//! The embedded backend: one crash-safe redb file on this host.
//!
//! redb was chosen because it is a maintained, pure-Rust embedded database with ACID
//! transactions that are durable when `commit` returns (copy-on-write B-trees with a
//! checksummed commit slot: a process killed at any point reopens at the last commit, with
//! no torn value), and because one writer process can share the file with read-only ones
//! (`powerstrip state ls` while the proxy runs).
//!
//! Writes go through one writer thread that commits whatever has queued up in one
//! transaction (group commit): each caller still gets its own answer once the commit that
//! holds its write is durable, and many concurrent writers share one `fsync`.
//!
//! What the file holds:
//! - `kv`: key → revisions, lease and value;
//! - `log`: revision → the change made at it, for watches that resume from a revision (the
//!   last [`LOG_KEEP`] changes are kept; older ones are compacted away);
//! - `leases`: lease → TTL and deadline (wall-clock, so that a lease whose holder died
//!   expires after its TTL even across a restart), and `lease_keys`: lease → its keys;
//! - `meta`: the current revision, the next lease id, the oldest revision in `log`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{
    Builder, ConcurrencyMode, Database, MultimapTableDefinition, ReadableDatabase,
    ReadableMultimapTable, ReadableTable, TableDefinition, WriteTransaction,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, warn};

use crate::{
    DEFAULT_TIMEOUT, Event, Expect, KeyValue, LeaseId, Listing, Revision, Store, StoreError, Swap,
    Watch, check_key,
};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<i64, &[u8]> = TableDefinition::new("log");
const LEASES: TableDefinition<i64, &[u8]> = TableDefinition::new("leases");
const LEASE_KEYS: MultimapTableDefinition<i64, &str> = MultimapTableDefinition::new("lease_keys");
const META: TableDefinition<&str, i64> = TableDefinition::new("meta");

/// How many changes the log keeps for watches that resume from a revision.
pub const LOG_KEEP: i64 = 100_000;
/// The most writes committed in one transaction.
const MAX_BATCH: usize = 1024;
/// How often leases are checked for expiry.
const EXPIRY_CHECK: Duration = Duration::from_millis(100);

/// The embedded store: one redb file, written by this process.
#[derive(Debug, Clone)]
pub struct Embedded {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Arc<Database>,
    describe: String,
    timeout: Duration,
    writes: std_mpsc::Sender<Request>,
    events: broadcast::Sender<Arc<Vec<Event>>>,
    /// The writer thread, joined by [`Embedded::close`].
    writer: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// One write, and where its answer goes.
struct Request {
    op: Op,
    reply: oneshot::Sender<Result<Answer, StoreError>>,
}

enum Op {
    Put {
        key: String,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Swap {
        key: String,
        expect: Expect,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
        at: Option<Revision>,
    },
    Grant {
        ttl: Duration,
    },
    KeepAlive {
        lease: LeaseId,
    },
    Revoke {
        lease: LeaseId,
    },
}

enum Answer {
    Revision(Revision),
    Swap(Swap),
    Deleted(bool),
    Lease(LeaseId),
    Done,
}

impl Embedded {
    /// Opens (or creates, with its directory) the store file at `path`, with the default
    /// timeout.
    pub fn open(path: &Path) -> Result<Embedded, StoreError> {
        Self::open_with(path, DEFAULT_TIMEOUT)
    }

    /// Opens (or creates) the store file at `path`; calls fail after `timeout`.
    pub fn open_with(path: &Path, timeout: Duration) -> Result<Embedded, StoreError> {
        let describe = format!("embedded {}", path.display());
        let failed = |reason: String| StoreError::Unavailable {
            store: describe.clone(),
            op: "open its file".into(),
            reason,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Builder::new()
            .set_concurrency_mode(ConcurrencyMode::SingleWriter)
            .create(path)
            .map_err(|e| failed(e.to_string()))?;
        Self::start(db, describe, timeout)
    }

    /// A store that lives in memory only, gone when dropped: for validating a
    /// configuration (`powerstrip check`) without touching the real one.
    pub fn in_memory() -> Result<Embedded, StoreError> {
        let describe = "embedded (in memory)".to_owned();
        let db = Builder::new()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(|e| StoreError::Unavailable {
                store: describe.clone(),
                op: "create it".into(),
                reason: e.to_string(),
            })?;
        Self::start(db, describe, DEFAULT_TIMEOUT)
    }

    /// Creates the tables and starts the writer thread.
    fn start(db: Database, describe: String, timeout: Duration) -> Result<Embedded, StoreError> {
        let failed = |reason: String| StoreError::Unavailable {
            store: describe.clone(),
            op: "open its file".into(),
            reason,
        };
        let txn = db.begin_write().map_err(|e| failed(e.to_string()))?;
        {
            let created = (|| -> Result<(), redb::Error> {
                txn.open_table(KV)?;
                txn.open_table(LOG)?;
                txn.open_table(LEASES)?;
                txn.open_multimap_table(LEASE_KEYS)?;
                let mut meta = txn.open_table(META)?;
                if meta.get("oldest")?.is_none() {
                    meta.insert("oldest", 1)?;
                }
                Ok(())
            })();
            created.map_err(|e| failed(e.to_string()))?;
        }
        txn.commit().map_err(|e| failed(e.to_string()))?;
        let db = Arc::new(db);
        let (writes, requests) = std_mpsc::channel();
        let (events, _) = broadcast::channel(1024);
        let writer = Writer {
            db: db.clone(),
            describe: describe.clone(),
            events: events.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer.run(&requests))
            .map_err(|e| failed(format!("cannot start its writer thread: {e}")))?;
        Ok(Embedded {
            inner: Arc::new(Inner {
                db,
                describe,
                timeout,
                writes,
                events,
                writer: std::sync::Mutex::new(Some(writer)),
            }),
        })
    }

    /// Closes the store and releases its file, once the writes already queued are
    /// committed. Other handles to the same store (clones, open watches) must be dropped
    /// first; otherwise the store stays open and this says so.
    pub fn close(self) -> Result<(), StoreError> {
        let inner = Arc::try_unwrap(self.inner).map_err(|inner| StoreError::Unavailable {
            store: inner.describe.clone(),
            op: "close".into(),
            reason: "other handles to the store are still open".into(),
        })?;
        let Inner {
            db, writes, writer, ..
        } = inner;
        drop(writes);
        let writer = writer
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(writer) = writer {
            let _ = writer.join();
        }
        drop(db);
        Ok(())
    }

    /// Every key under `prefix` in the store file at `path`, read without changing it —
    /// also while another process (the proxy) has it open as its store. A file that a
    /// crashed writer left in need of repair is repaired first when no process has it open.
    pub fn read_only_list(path: &Path, prefix: &str) -> Result<Listing, StoreError> {
        let describe = format!("embedded {}", path.display());
        let read_only = Builder::new()
            .set_concurrency_mode(ConcurrencyMode::SingleWriter)
            .open_read_only(path);
        match read_only {
            Ok(db) => read_list(&db, &describe, prefix),
            Err(read_only_error) => {
                // No live writer holds it: open it as one, which repairs it.
                let db = Builder::new()
                    .set_concurrency_mode(ConcurrencyMode::SingleWriter)
                    .open(path)
                    .map_err(|_| StoreError::Unavailable {
                        store: describe.clone(),
                        op: "open its file read-only".into(),
                        reason: read_only_error.to_string(),
                    })?;
                read_list(&db, &describe, prefix)
            }
        }
    }

    async fn write(&self, op: Op, what: impl Fn() -> String) -> Result<Answer, StoreError> {
        let (reply, answer) = oneshot::channel();
        let closed = || StoreError::Unavailable {
            store: self.inner.describe.clone(),
            op: what(),
            reason: "the store's writer has stopped".into(),
        };
        if self.inner.writes.send(Request { op, reply }).is_err() {
            return Err(closed());
        }
        match tokio::time::timeout(self.inner.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(closed()),
            Err(_) => Err(StoreError::Timeout {
                store: self.inner.describe.clone(),
                op: what(),
                after: self.inner.timeout,
            }),
        }
    }

    async fn read<T: Send + 'static>(
        &self,
        op: String,
        read: impl FnOnce(&Database, &str) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        let task = tokio::task::spawn_blocking(move || read(&inner.db, &inner.describe));
        match tokio::time::timeout(self.inner.timeout, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(StoreError::Unavailable {
                store: self.inner.describe.clone(),
                op,
                reason: e.to_string(),
            }),
            Err(_) => Err(StoreError::Timeout {
                store: self.inner.describe.clone(),
                op,
                after: self.inner.timeout,
            }),
        }
    }
}

fn lease_gone(lease: Option<LeaseId>) -> StoreError {
    StoreError::LeaseGone {
        lease: lease.unwrap_or_default(),
    }
}

fn unexpected(op: &str) -> StoreError {
    StoreError::Unavailable {
        store: "embedded".into(),
        op: op.into(),
        reason: "unexpected answer from the writer".into(),
    }
}

#[async_trait]
impl Store for Embedded {
    fn describe(&self) -> &str {
        &self.inner.describe
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        check_key(key)?;
        let owned = key.to_owned();
        self.read(format!("get {key}"), move |db, describe| {
            let read = || -> Result<Option<KeyValue>, redb::Error> {
                let txn = db.begin_read()?;
                let kv = txn.open_table(KV)?;
                let found = kv.get(owned.as_str())?;
                Ok(found.map(|v| decode_kv(&owned, v.value())))
            };
            read().map_err(storage(describe, &format!("get {owned}")))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let owned = prefix.to_owned();
        self.read(format!("list {prefix}"), move |db, describe| {
            read_list(db, describe, &owned)
        })
        .await
    }

    async fn put(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        check_key(key)?;
        let op = Op::Put {
            key: key.to_owned(),
            value: value.to_vec(),
            lease,
        };
        match self.write(op, || format!("put {key}")).await? {
            Answer::Revision(revision) => Ok(revision),
            _ => Err(unexpected("put")),
        }
    }

    async fn swap(
        &self,
        key: &str,
        expect: Expect,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Swap, StoreError> {
        check_key(key)?;
        let op = Op::Swap {
            key: key.to_owned(),
            expect,
            value: value.to_vec(),
            lease,
        };
        match self.write(op, || format!("swap {key}")).await? {
            Answer::Swap(swap) => Ok(swap),
            _ => Err(unexpected("swap")),
        }
    }

    async fn delete(&self, key: &str, at: Option<Revision>) -> Result<bool, StoreError> {
        check_key(key)?;
        let op = Op::Delete {
            key: key.to_owned(),
            at,
        };
        match self.write(op, || format!("delete {key}")).await? {
            Answer::Deleted(deleted) => Ok(deleted),
            _ => Err(unexpected("delete")),
        }
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch, StoreError> {
        // Subscribed before the backlog is read: nothing committed in between is missed.
        let mut live = self.inner.events.subscribe();
        let prefix_owned = prefix.to_owned();
        let start = self
            .read(format!("watch {prefix}"), move |db, describe| {
                let read = || -> Result<(Revision, Revision), redb::Error> {
                    let txn = db.begin_read()?;
                    let meta = txn.open_table(META)?;
                    Ok((
                        meta_value(&meta, "revision")?,
                        meta_value(&meta, "oldest")?.max(1),
                    ))
                };
                read().map_err(storage(describe, "watch"))
            })
            .await?;
        let (current, oldest) = start;
        let from = if from <= 0 { current + 1 } else { from };
        if from < oldest {
            return Err(StoreError::Compacted {
                store: self.inner.describe.clone(),
                requested: from,
                oldest,
            });
        }
        let (tx, rx) = mpsc::channel(256);
        let db = self.inner.db.clone();
        let describe = self.inner.describe.clone();
        let task = tokio::spawn(async move {
            // Everything before `next` has been delivered (or did not match).
            let mut next = from;
            loop {
                // Catch up from the log: what happened from `next` up to now.
                let db2 = db.clone();
                let (describe2, prefix2) = (describe.clone(), prefix_owned.clone());
                let backlog =
                    tokio::task::spawn_blocking(move || read_log(&db2, &describe2, &prefix2, next))
                        .await;
                let (events, upto) = match backlog {
                    Ok(Ok(found)) => found,
                    Ok(Err(err)) => {
                        let _ = tx.send(Err(err)).await;
                        return;
                    }
                    Err(_) => return,
                };
                for event in events {
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                next = next.max(upto + 1);
                // Then live, until the broadcast falls behind (read the log again).
                loop {
                    match live.recv().await {
                        Ok(batch) => {
                            for event in batch.iter() {
                                if event.revision() < next {
                                    continue;
                                }
                                next = event.revision() + 1;
                                if event.key().starts_with(&prefix_owned)
                                    && tx.send(Ok(event.clone())).await.is_err()
                                {
                                    return;
                                }
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        Ok(Watch::new(rx, task))
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        match self
            .write(Op::Grant { ttl }, || "grant a lease".into())
            .await?
        {
            Answer::Lease(lease) => Ok(lease),
            _ => Err(unexpected("grant")),
        }
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.write(Op::KeepAlive { lease }, || {
            format!("keep lease {lease} alive")
        })
        .await
        .map(|_| ())
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.write(Op::Revoke { lease }, || format!("revoke lease {lease}"))
            .await
            .map(|_| ())
    }
}

fn storage(describe: &str, op: &str) -> impl Fn(redb::Error) -> StoreError {
    let (describe, op) = (describe.to_owned(), op.to_owned());
    move |e| StoreError::Unavailable {
        store: describe.clone(),
        op: op.clone(),
        reason: e.to_string(),
    }
}

fn meta_value(
    meta: &impl ReadableTable<&'static str, i64>,
    name: &str,
) -> Result<i64, redb::StorageError> {
    Ok(meta.get(name)?.map_or(0, |v| v.value()))
}

fn read_list(
    db: &impl ReadableDatabase,
    describe: &str,
    prefix: &str,
) -> Result<Listing, StoreError> {
    let read = || -> Result<Listing, redb::Error> {
        let txn = db.begin_read()?;
        let kv = txn.open_table(KV)?;
        let meta = txn.open_table(META)?;
        let revision = meta_value(&meta, "revision")?;
        let mut kvs = Vec::new();
        for entry in kv.range(prefix..)? {
            let (key, value) = entry?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            kvs.push(decode_kv(key, value.value()));
        }
        Ok(Listing { kvs, revision })
    };
    read().map_err(storage(describe, &format!("list {prefix}")))
}

/// The changes under `prefix` from revision `from` on, and the revision read up to.
fn read_log(
    db: &Database,
    describe: &str,
    prefix: &str,
    from: Revision,
) -> Result<(Vec<Event>, Revision), StoreError> {
    let read = || -> Result<(Vec<Event>, Revision, Revision), redb::Error> {
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        let current = meta_value(&meta, "revision")?;
        let oldest = meta_value(&meta, "oldest")?.max(1);
        let mut events = Vec::new();
        if from >= oldest {
            let log = txn.open_table(LOG)?;
            for entry in log.range(from..)? {
                let (revision, change) = entry?;
                let event = decode_event(revision.value(), change.value());
                if event.key().starts_with(prefix) {
                    events.push(event);
                }
            }
        }
        Ok((events, current, oldest))
    };
    let (events, current, oldest) =
        read().map_err(storage(describe, &format!("watch {prefix}")))?;
    if from < oldest {
        return Err(StoreError::Compacted {
            store: describe.to_owned(),
            requested: from,
            oldest,
        });
    }
    Ok((events, current))
}

// ---------------------------------------------------------------------------------------
// Encoding

fn encode_kv(kv: &KeyValue) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + kv.value.len());
    out.extend_from_slice(&kv.create_revision.to_le_bytes());
    out.extend_from_slice(&kv.mod_revision.to_le_bytes());
    out.extend_from_slice(&kv.version.to_le_bytes());
    out.extend_from_slice(&kv.lease.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&kv.value);
    out
}

fn le(bytes: &[u8], at: usize) -> i64 {
    bytes
        .get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, i64::from_le_bytes)
}

fn decode_kv(key: &str, bytes: &[u8]) -> KeyValue {
    let lease = le(bytes, 24);
    KeyValue {
        key: key.to_owned(),
        create_revision: le(bytes, 0),
        mod_revision: le(bytes, 8),
        version: le(bytes, 16),
        lease: (lease != 0).then_some(lease),
        value: bytes.get(32..).unwrap_or_default().to_vec(),
    }
}

fn encode_event(event: &Event) -> Vec<u8> {
    let mut out = Vec::new();
    match event {
        Event::Put(kv) => {
            out.push(1);
            out.extend_from_slice(&(kv.key.len() as u32).to_le_bytes());
            out.extend_from_slice(kv.key.as_bytes());
            out.extend_from_slice(&encode_kv(kv));
        }
        Event::Delete { key, .. } => {
            out.push(2);
            out.extend_from_slice(&(key.len() as u32).to_le_bytes());
            out.extend_from_slice(key.as_bytes());
        }
    }
    out
}

fn decode_event(revision: Revision, bytes: &[u8]) -> Event {
    let len = bytes
        .get(1..5)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_le_bytes) as usize;
    let key = bytes
        .get(5..5 + len)
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    match bytes.first() {
        Some(1) => Event::Put(decode_kv(&key, bytes.get(5 + len..).unwrap_or_default())),
        _ => Event::Delete { key, revision },
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn encode_lease(ttl: Duration, deadline_ms: i64) -> Vec<u8> {
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let mut out = ttl_ms.to_le_bytes().to_vec();
    out.extend_from_slice(&deadline_ms.to_le_bytes());
    out
}

// ---------------------------------------------------------------------------------------
// The writer

struct Writer {
    db: Arc<Database>,
    describe: String,
    events: broadcast::Sender<Arc<Vec<Event>>>,
}

/// What a committed batch produced: each request's answer, and the changes to publish.
type Committed = (Vec<Result<Answer, StoreError>>, Vec<Event>);

/// One transaction's changes, as the writer applies them.
struct Txn<'a> {
    txn: &'a WriteTransaction,
    revision: Revision,
    events: Vec<Event>,
}

impl Writer {
    fn run(self, requests: &std_mpsc::Receiver<Request>) {
        let mut next_expiry = Instant::now();
        loop {
            let wait = next_expiry.saturating_duration_since(Instant::now());
            let mut batch = Vec::new();
            match requests.recv_timeout(wait) {
                Ok(first) => batch.push(first),
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
            }
            while batch.len() < MAX_BATCH {
                match requests.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            let expire = Instant::now() >= next_expiry;
            if expire {
                next_expiry = Instant::now() + EXPIRY_CHECK;
            }
            if batch.is_empty() && !expire {
                continue;
            }
            self.commit(batch, expire);
        }
        debug!(store = %self.describe, "store writer stopped");
    }

    /// Applies a batch of writes (and expires due leases) in one transaction, then answers
    /// each request and publishes the changes.
    fn commit(&self, batch: Vec<Request>, expire: bool) {
        let result = (|| -> Result<Committed, redb::Error> {
            let txn = self.db.begin_write()?;
            let (answers, events) = {
                let revision = {
                    let meta = txn.open_table(META)?;
                    meta_value(&meta, "revision")?
                };
                let mut t = Txn {
                    txn: &txn,
                    revision,
                    events: Vec::new(),
                };
                let mut answers = Vec::with_capacity(batch.len());
                for request in &batch {
                    answers.push(t.apply(&request.op, &self.describe));
                }
                if expire {
                    t.expire_due()?;
                }
                t.finish()?;
                (answers, t.events)
            };
            if events.is_empty() && batch.iter().all(|r| !changes_without_events(&r.op)) {
                txn.abort()?;
            } else {
                txn.commit()?;
            }
            Ok((answers, events))
        })()
        .map_err(storage(&self.describe, "commit"));
        match result {
            Ok((answers, events)) => {
                for (request, answer) in batch.into_iter().zip(answers) {
                    let _ = request.reply.send(answer);
                }
                if !events.is_empty() {
                    // No subscriber is fine: nobody watches.
                    let _ = self.events.send(Arc::new(events));
                }
            }
            Err(err) => {
                warn!(store = %self.describe, error = %err, "store commit failed");
                for request in batch {
                    let _ = request.reply.send(Err(err.clone()));
                }
            }
        }
    }
}

/// Whether an operation may change the file without a change event (leases).
fn changes_without_events(op: &Op) -> bool {
    !matches!(op, Op::Swap { .. } | Op::Delete { .. } | Op::Put { .. })
}

impl Txn<'_> {
    fn apply(&mut self, op: &Op, describe: &str) -> Result<Answer, StoreError> {
        match self.apply_inner(op) {
            Ok(answer) => answer,
            Err(e) => Err(storage(describe, "write")(e)),
        }
    }

    /// An operation's answer (`Err` inside for what the caller did wrong), or a storage
    /// failure.
    fn apply_inner(&mut self, op: &Op) -> Result<Result<Answer, StoreError>, redb::Error> {
        Ok(match op {
            Op::Put { key, value, lease } => {
                if !self.lease_exists(*lease)? {
                    return Ok(Err(lease_gone(*lease)));
                }
                let current = self.get(key)?;
                Ok(Answer::Revision(self.write(key, value, *lease, current)?))
            }
            Op::Swap {
                key,
                expect,
                value,
                lease,
            } => {
                let current = self.get(key)?;
                let holds = match (expect, &current) {
                    (Expect::Absent, None) => true,
                    (Expect::At(at), Some(kv)) => kv.mod_revision == *at,
                    _ => false,
                };
                if !holds {
                    Ok(Answer::Swap(Swap::Failed(current)))
                } else if !self.lease_exists(*lease)? {
                    Err(lease_gone(*lease))
                } else {
                    let revision = self.write(key, value, *lease, current)?;
                    Ok(Answer::Swap(Swap::Done(revision)))
                }
            }
            Op::Delete { key, at } => match self.get(key)? {
                Some(current) if at.is_none_or(|at| at == current.mod_revision) => {
                    self.remove(&current)?;
                    Ok(Answer::Deleted(true))
                }
                _ => Ok(Answer::Deleted(false)),
            },
            Op::Grant { ttl } => {
                let mut meta = self.txn.open_table(META)?;
                let id = meta_value(&meta, "lease_seq")? + 1;
                meta.insert("lease_seq", id)?;
                let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
                let mut leases = self.txn.open_table(LEASES)?;
                leases.insert(
                    id,
                    encode_lease(*ttl, now_ms().saturating_add(ttl_ms)).as_slice(),
                )?;
                Ok(Answer::Lease(id))
            }
            Op::KeepAlive { lease } => {
                let mut leases = self.txn.open_table(LEASES)?;
                let ttl_ms = match leases.get(*lease)? {
                    Some(found) => le(found.value(), 0),
                    None => return Ok(Err(StoreError::LeaseGone { lease: *lease })),
                };
                let ttl = Duration::from_millis(u64::try_from(ttl_ms).unwrap_or(0));
                let deadline = now_ms().saturating_add(ttl_ms);
                leases.insert(*lease, encode_lease(ttl, deadline).as_slice())?;
                Ok(Answer::Done)
            }
            Op::Revoke { lease } => {
                self.end_lease(*lease)?;
                Ok(Answer::Done)
            }
        })
    }

    fn lease_exists(&self, lease: Option<LeaseId>) -> Result<bool, redb::Error> {
        let Some(lease) = lease else { return Ok(true) };
        Ok(self.txn.open_table(LEASES)?.get(lease)?.is_some())
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, redb::Error> {
        let kv = self.txn.open_table(KV)?;
        let found = kv.get(key)?;
        Ok(found.map(|v| decode_kv(key, v.value())))
    }

    fn write(
        &mut self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
        current: Option<KeyValue>,
    ) -> Result<Revision, redb::Error> {
        self.revision += 1;
        let (create_revision, version) = match &current {
            Some(kv) => (kv.create_revision, kv.version + 1),
            None => (self.revision, 1),
        };
        let kv = KeyValue {
            key: key.to_owned(),
            value: value.to_vec(),
            create_revision,
            mod_revision: self.revision,
            version,
            lease,
        };
        self.txn
            .open_table(KV)?
            .insert(key, encode_kv(&kv).as_slice())?;
        let mut lease_keys = self.txn.open_multimap_table(LEASE_KEYS)?;
        if let Some(old) = current
            .and_then(|c| c.lease)
            .filter(|old| Some(*old) != lease)
        {
            lease_keys.remove(old, key)?;
        }
        if let Some(lease) = lease {
            lease_keys.insert(lease, key)?;
        }
        let event = Event::Put(kv);
        self.txn
            .open_table(LOG)?
            .insert(self.revision, encode_event(&event).as_slice())?;
        self.events.push(event);
        Ok(self.revision)
    }

    fn remove(&mut self, current: &KeyValue) -> Result<(), redb::Error> {
        self.revision += 1;
        self.txn.open_table(KV)?.remove(current.key.as_str())?;
        if let Some(lease) = current.lease {
            self.txn
                .open_multimap_table(LEASE_KEYS)?
                .remove(lease, current.key.as_str())?;
        }
        let event = Event::Delete {
            key: current.key.clone(),
            revision: self.revision,
        };
        self.txn
            .open_table(LOG)?
            .insert(self.revision, encode_event(&event).as_slice())?;
        self.events.push(event);
        Ok(())
    }

    /// Deletes a lease and every key under it.
    fn end_lease(&mut self, lease: LeaseId) -> Result<(), redb::Error> {
        let keys: Vec<String> = {
            let lease_keys = self.txn.open_multimap_table(LEASE_KEYS)?;
            let mut keys = Vec::new();
            for key in lease_keys.get(lease)? {
                keys.push(key?.value().to_owned());
            }
            keys
        };
        for key in keys {
            if let Some(current) = self.get(&key)? {
                self.remove(&current)?;
            }
        }
        self.txn
            .open_multimap_table(LEASE_KEYS)?
            .remove_all(lease)?;
        self.txn.open_table(LEASES)?.remove(lease)?;
        Ok(())
    }

    /// Ends every lease whose deadline has passed.
    fn expire_due(&mut self) -> Result<(), redb::Error> {
        let now = now_ms();
        let due: Vec<LeaseId> = {
            let leases = self.txn.open_table(LEASES)?;
            let mut due = Vec::new();
            for entry in leases.iter()? {
                let (id, lease) = entry?;
                if le(lease.value(), 8) <= now {
                    due.push(id.value());
                }
            }
            due
        };
        for lease in due {
            debug!(lease, "lease expired");
            self.end_lease(lease)?;
        }
        Ok(())
    }

    /// Records the new revision and compacts the log.
    fn finish(&mut self) -> Result<(), redb::Error> {
        let mut meta = self.txn.open_table(META)?;
        meta.insert("revision", self.revision)?;
        let oldest = meta_value(&meta, "oldest")?.max(1);
        if self.revision - oldest >= LOG_KEEP + LOG_KEEP / 10 {
            let keep_from = self.revision - LOG_KEEP + 1;
            let mut log = self.txn.open_table(LOG)?;
            log.retain_in(oldest..keep_from, |_, _| false)?;
            meta.insert("oldest", keep_from)?;
        }
        Ok(())
    }
}

/// Where the default store file lives under a state directory.
pub fn default_path(state_dir: &Path) -> PathBuf {
    state_dir.join("store.redb")
}
