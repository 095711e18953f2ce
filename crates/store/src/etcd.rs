//! The etcd v3 backend, for several hosts: every key lives under a prefix per cluster, and
//! etcd's own revisions, transactions, watches and leases do the work.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::{
    DEFAULT_TIMEOUT, Event, Expect, KeyValue, LeaseId, Listing, Revision, Store, StoreError, Swap,
    Watch, check_key,
};

/// How to reach an etcd cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdOptions {
    /// Client URLs of the members (`http://10.0.0.1:2379`, `https://...`).
    pub endpoints: Vec<String>,
    /// Every key is stored under this prefix (one per cluster), e.g. `/powerstrip/prod/`.
    pub prefix: String,
    /// User and password, when etcd has authentication on.
    pub user: Option<(String, String)>,
    /// A CA certificate (PEM) to verify the members with (`https://` endpoints).
    pub ca: Option<PathBuf>,
    /// A client certificate and key (PEM), when the members require one.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// How long a call may take.
    pub timeout: Duration,
}

impl EtcdOptions {
    /// Options for these endpoints, with the default prefix (`/powerstrip/`) and timeout.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        EtcdOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: "/powerstrip/".into(),
            user: None,
            ca: None,
            identity: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// The etcd store.
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    prefix: String,
    describe: String,
    timeout: Duration,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("describe", &self.describe)
            .finish_non_exhaustive()
    }
}

impl Etcd {
    /// Connects to the cluster `options` name.
    pub async fn connect(options: &EtcdOptions) -> Result<Etcd, StoreError> {
        let mut prefix = options.prefix.clone();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let describe = format!("etcd {} prefix {prefix}", options.endpoints.join(","));
        let failed = |reason: String| StoreError::Unavailable {
            store: describe.clone(),
            op: "connect".into(),
            reason,
        };
        let mut connect = ConnectOptions::new()
            .with_timeout(options.timeout)
            .with_connect_timeout(options.timeout)
            .with_keep_alive(Duration::from_secs(2), options.timeout);
        if let Some((user, password)) = &options.user {
            connect = connect.with_user(user, password);
        }
        if options.ca.is_some() || options.identity.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &options.ca {
                let pem = std::fs::read(ca)
                    .map_err(|e| failed(format!("cannot read {}: {e}", ca.display())))?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let Some((cert, key)) = &options.identity {
                let cert_pem = std::fs::read(cert)
                    .map_err(|e| failed(format!("cannot read {}: {e}", cert.display())))?;
                let key_pem = std::fs::read(key)
                    .map_err(|e| failed(format!("cannot read {}: {e}", key.display())))?;
                tls = tls.identity(Identity::from_pem(cert_pem, key_pem));
            }
            connect = connect.with_tls(tls);
        }
        let client = tokio::time::timeout(
            options.timeout,
            Client::connect(&options.endpoints, Some(connect)),
        )
        .await
        .map_err(|_| StoreError::Timeout {
            store: describe.clone(),
            op: "connect".into(),
            after: options.timeout,
        })?
        .map_err(|e| failed(e.to_string()))?;
        Ok(Etcd {
            client,
            prefix,
            describe,
            timeout: options.timeout,
        })
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// A key as adapters see it (without the prefix); `None` for keys outside it.
    fn relative(&self, key: &[u8]) -> Option<String> {
        let key = std::str::from_utf8(key).ok()?;
        key.strip_prefix(&self.prefix).map(str::to_owned)
    }

    fn kv(&self, kv: &etcd_client::KeyValue) -> Option<KeyValue> {
        Some(KeyValue {
            key: self.relative(kv.key())?,
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
            lease: (kv.lease() != 0).then_some(kv.lease()),
        })
    }

    /// Runs one call within the timeout, naming `op` in its error. A call that could not
    /// reach a member (one is down) never reached etcd, so it is made again — etcd's client
    /// spreads calls over every endpoint, dead ones included — until the timeout.
    async fn call<T, F, Fut>(&self, op: impl Fn() -> String, mut call: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            match tokio::time::timeout_at(deadline, call()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) if not_sent(&e) && tokio::time::Instant::now() < deadline => {
                    debug!(store = %self.describe, error = %e, "a member is unreachable; trying again");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(Err(e)) => {
                    return Err(StoreError::Unavailable {
                        store: self.describe.clone(),
                        op: op(),
                        reason: e.to_string(),
                    });
                }
                Err(_) => {
                    return Err(StoreError::Timeout {
                        store: self.describe.clone(),
                        op: op(),
                        after: self.timeout,
                    });
                }
            }
        }
    }

    fn revision_of(header: Option<&etcd_client::ResponseHeader>) -> Revision {
        header.map_or(0, etcd_client::ResponseHeader::revision)
    }
}

#[async_trait]
impl Store for Etcd {
    fn describe(&self) -> &str {
        &self.describe
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        check_key(key)?;
        let kv = self.client.kv_client();
        let response = self
            .call(
                || format!("get {key}"),
                || {
                    let mut kv = kv.clone();
                    let key = self.full(key);
                    async move { kv.get(key, None).await }
                },
            )
            .await?;
        Ok(response.kvs().first().and_then(|kv| self.kv(kv)))
    }

    async fn list(&self, prefix: &str) -> Result<Listing, StoreError> {
        let kv = self.client.kv_client();
        let response = self
            .call(
                || format!("list {prefix}"),
                || {
                    let mut kv = kv.clone();
                    let prefix = self.full(prefix);
                    async move { kv.get(prefix, Some(GetOptions::new().with_prefix())).await }
                },
            )
            .await?;
        let mut kvs: Vec<KeyValue> = response.kvs().iter().filter_map(|kv| self.kv(kv)).collect();
        kvs.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Listing {
            kvs,
            revision: Self::revision_of(response.header()),
        })
    }

    async fn put(
        &self,
        key: &str,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        check_key(key)?;
        let kv = self.client.kv_client();
        let options = lease.map(|lease| PutOptions::new().with_lease(lease));
        let response = self
            .call(
                || format!("put {key}"),
                || {
                    let mut kv = kv.clone();
                    let (key, value, options) = (self.full(key), value.to_vec(), options.clone());
                    async move { kv.put(key, value, options).await }
                },
            )
            .await
            .map_err(|e| lease_gone(e, lease))?;
        Ok(Self::revision_of(response.header()))
    }

    async fn swap(
        &self,
        key: &str,
        expect: Expect,
        value: &[u8],
        lease: Option<LeaseId>,
    ) -> Result<Swap, StoreError> {
        check_key(key)?;
        let full = self.full(key);
        let compare = match expect {
            Expect::Absent => Compare::create_revision(full.clone(), CompareOp::Equal, 0),
            Expect::At(revision) => Compare::mod_revision(full.clone(), CompareOp::Equal, revision),
        };
        let options = lease.map(|lease| PutOptions::new().with_lease(lease));
        let txn = Txn::new()
            .when(vec![compare])
            .and_then(vec![TxnOp::put(full.clone(), value.to_vec(), options)])
            .or_else(vec![TxnOp::get(full, None)]);
        let kv = self.client.kv_client();
        let response = self
            .call(
                || format!("swap {key}"),
                || {
                    let (mut kv, txn) = (kv.clone(), txn.clone());
                    async move { kv.txn(txn).await }
                },
            )
            .await
            .map_err(|e| lease_gone(e, lease))?;
        if response.succeeded() {
            return Ok(Swap::Done(Self::revision_of(response.header())));
        }
        let current = response.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(get) => get.kvs().first().and_then(|kv| self.kv(kv)),
            _ => None,
        });
        Ok(Swap::Failed(current))
    }

    async fn delete(&self, key: &str, at: Option<Revision>) -> Result<bool, StoreError> {
        check_key(key)?;
        let full = self.full(key);
        let kv = self.client.kv_client();
        let Some(at) = at else {
            let response = self
                .call(
                    || format!("delete {key}"),
                    || {
                        let (mut kv, full) = (kv.clone(), full.clone());
                        async move { kv.delete(full, None).await }
                    },
                )
                .await?;
            return Ok(response.deleted() > 0);
        };
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(
                full.clone(),
                CompareOp::Equal,
                at,
            )])
            .and_then(vec![TxnOp::delete(full, None)]);
        let response = self
            .call(
                || format!("delete {key}"),
                || {
                    let (mut kv, txn) = (kv.clone(), txn.clone());
                    async move { kv.txn(txn).await }
                },
            )
            .await?;
        Ok(response.succeeded()
            && response.op_responses().into_iter().any(|r| match r {
                TxnOpResponse::Delete(d) => d.deleted() > 0,
                _ => false,
            }))
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch, StoreError> {
        let mut next = from;
        if next <= 0 {
            // "From the next change": pin it to a revision, so a reconnect resumes there.
            let kv = self.client.kv_client();
            let now = self
                .call(
                    || format!("watch {prefix}"),
                    || {
                        let (mut kv, prefix) = (kv.clone(), self.full(prefix));
                        let options = GetOptions::new().with_prefix().with_count_only();
                        async move { kv.get(prefix, Some(options)).await }
                    },
                )
                .await?;
            next = Self::revision_of(now.header()) + 1;
        }
        let (tx, rx) = mpsc::channel(256);
        let store = self.clone();
        let prefix = prefix.to_owned();
        let task = tokio::spawn(async move {
            let mut backoff = Duration::from_millis(50);
            loop {
                let mut watch_client = store.client.watch_client();
                let options = WatchOptions::new().with_prefix().with_start_revision(next);
                let stream = tokio::time::timeout(
                    store.timeout,
                    watch_client.watch(store.full(&prefix), Some(options)),
                )
                .await;
                let mut stream = match stream {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        debug!(store = %store.describe, error = %e, "watch: reconnecting");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                        continue;
                    }
                    Err(_) => {
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                };
                loop {
                    match stream.message().await {
                        Ok(Some(response)) => {
                            backoff = Duration::from_millis(50);
                            if response.compact_revision() > 0 {
                                let _ = tx
                                    .send(Err(StoreError::Compacted {
                                        store: store.describe.clone(),
                                        requested: next,
                                        oldest: response.compact_revision(),
                                    }))
                                    .await;
                                return;
                            }
                            if response.canceled() {
                                warn!(store = %store.describe, reason = response.cancel_reason(),
                                    "watch canceled by etcd; resuming");
                                break;
                            }
                            for event in response.events() {
                                let Some(kv) = event.kv() else { continue };
                                let Some(key) = store.relative(kv.key()) else {
                                    continue;
                                };
                                let revision = kv.mod_revision();
                                let event = match event.event_type() {
                                    EventType::Put => match store.kv(kv) {
                                        Some(kv) => Event::Put(kv),
                                        None => continue,
                                    },
                                    EventType::Delete => Event::Delete { key, revision },
                                };
                                next = next.max(revision + 1);
                                if tx.send(Ok(event)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Ok(None) | Err(_) => {
                            debug!(store = %store.describe, "watch stream broke; resuming from {next}");
                            break;
                        }
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
        Ok(Watch::new(rx, task))
    }

    async fn grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let seconds = i64::try_from(ttl.as_millis().div_ceil(1000).max(1)).unwrap_or(i64::MAX);
        let lease = self.client.lease_client();
        let response = self
            .call(
                || "grant a lease".into(),
                || {
                    let mut lease = lease.clone();
                    async move { lease.grant(seconds, None).await }
                },
            )
            .await?;
        Ok(response.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let client = self.client.lease_client();
        let op = || format!("keep lease {lease} alive");
        let alive = self
            .call(op, || {
                let mut client = client.clone();
                async move {
                    let (mut keeper, mut stream) = client.keep_alive(lease).await?;
                    keeper.keep_alive().await?;
                    Ok(stream.message().await?.map_or(0, |r| r.ttl()))
                }
            })
            .await
            .map_err(|e| lease_gone(e, Some(lease)))?;
        if alive > 0 {
            Ok(())
        } else {
            Err(StoreError::LeaseGone { lease })
        }
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        let client = self.client.lease_client();
        match self
            .call(
                || format!("revoke lease {lease}"),
                || {
                    let mut client = client.clone();
                    async move { client.revoke(lease).await }
                },
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(StoreError::Unavailable { reason, .. }) if reason.contains("lease not found") => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// True when a call failed before it could reach etcd: nothing was applied.
fn not_sent(error: &etcd_client::Error) -> bool {
    let text = error.to_string().to_ascii_lowercase();
    text.contains("tcp connect error") || text.contains("connection refused")
}

/// etcd refuses a put under a lease that ended with "requested lease not found".
fn lease_gone(error: StoreError, lease: Option<LeaseId>) -> StoreError {
    match (&error, lease) {
        (StoreError::Unavailable { reason, .. }, Some(lease))
            if reason.contains("lease not found") =>
        {
            StoreError::LeaseGone { lease }
        }
        _ => error,
    }
}
