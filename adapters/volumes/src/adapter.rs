//! The `volumes` adapter: the hooks, the moves, the reconciler, the event follower.
//!
//! - Create (pre): every volume source that is the adapter's (`demo@gold`,
//!   `copy@snapshot-f23c`, or a dataset the cluster knows) is made ready on this node —
//!   created, cloned from a snapshot, or moved here — and leased to the container being
//!   created; the create's `Binds`/`Mounts` are rewritten to bind mounts of the datasets'
//!   paths, and labels record which datasets the container uses. Anything that fails undoes
//!   what this create did. (post) The lease passes to the container's id.
//! - Start (pre): the container's datasets are leased again (moved back here first if one
//!   moved away while it was stopped).
//! - Leases end when a container dies or is removed (Docker's events, so also without any
//!   call through the proxy) and when the reconciler finds their holder gone.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use http::StatusCode;
use powerstrip_adapter::context::Stop;
use powerstrip_adapter::context::bollard::query_parameters::{
    EventsOptions, ListContainersOptions,
};
use powerstrip_adapter::docker::ContainerCreate;
use powerstrip_adapter::path::RequestExt as _;
use powerstrip_adapter::store::helpers::KeptLease;
use powerstrip_adapter::{Adapter, ClientRequest, Context, HookError, ServerResponse, async_trait};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::backend::{Backend, BackendError};
use crate::model::{Acquired, Conflict, Dataset, MoveStats, Snapshot, View, resolve_snapshot};
use crate::names::{self, Spec, Use};
use crate::options::{BackendChoice, Listen, Options, format_size};
use crate::state::{Outcome, Request, State, StateError, Ticket};
use crate::transfer::{self, Authorize, Refusal, SendRequest, TransferError};

/// The label listing the datasets a container uses, comma-separated.
pub const VOLUMES_LABEL: &str = "powerstrip.volumes";
/// The label holding the reservation made at create.
pub const RESERVATION_LABEL: &str = "powerstrip.volumes.reservation";
/// The label naming the node (by id) whose proxy created the container.
pub const NODE_LABEL: &str = "powerstrip.volumes.node";
/// A lease holder's prefix before the container exists.
pub const RESERVATION: &str = "reservation:";
/// The prefix of snapshots made for moves (user snapshots have none).
pub const MOVE_SNAPSHOT: &str = "m-";
/// How long a lease may wait for its container to run before the reconciler drops it.
const LEASE_GRACE: Duration = Duration::from_secs(300);
/// How long a hook waits for the pool to be ready at start-up.
const READY_WAIT: Duration = Duration::from_secs(30);

/// The volumes adapter.
#[derive(Clone, Debug)]
pub struct Volumes {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ctx: Context,
    options: Arc<Options>,
    state: State,
    /// The pool, once opened (or why it could not be).
    backend: watch::Receiver<Option<Result<Arc<dyn Backend>, String>>>,
    backend_tx: watch::Sender<Option<Result<Arc<dyn Backend>, String>>>,
    /// One operation at a time per dataset on this node (hooks, moves, the reconciler).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Dataset ids being made by a hook right now (not orphans, whatever the store says).
    making: Mutex<HashSet<String>>,
    /// Container ids resolved by a delete's pre-hook for its post-hook, by request target.
    deleting: Mutex<HashMap<String, String>>,
    /// Wakes the reconciler.
    kick: tokio::sync::Notify,
    /// One pass over operators' requests at a time.
    requests: tokio::sync::Mutex<()>,
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `bytes` random bytes in hexadecimal, from the kernel's generator. Tickets are
/// credentials: there is no fallback.
pub fn random_hex(bytes: usize) -> Result<String, HookError> {
    use std::io::Read as _;
    let mut buffer = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buffer))
        .map_err(|e| HookError::failed(format!("volumes: cannot read /dev/urandom: {e}")))?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}

impl Volumes {
    /// The adapter, with its pool opened, its transfer server, reconciler and event
    /// follower started in `ctx`.
    pub fn start(ctx: &Context, options: Options) -> Volumes {
        let (backend_tx, backend) = watch::channel(None);
        let adapter = Volumes {
            inner: Arc::new(Inner {
                ctx: ctx.clone(),
                options: Arc::new(options),
                state: State::new(ctx.store().clone()),
                backend,
                backend_tx,
                locks: Mutex::new(HashMap::new()),
                making: Mutex::new(HashSet::new()),
                deleting: Mutex::new(HashMap::new()),
                kick: tokio::sync::Notify::new(),
                requests: tokio::sync::Mutex::new(()),
            }),
        };
        if let Some(name) = adapter.inner.options.plugin.clone() {
            // At once, before the pool is ready: Docker must always find the socket.
            let plugin = adapter.clone();
            ctx.spawn("volumes plugin", |stop| async move {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                crate::plugin::serve(plugin, name, stop).await;
            });
        }
        let init = adapter.clone();
        ctx.spawn("volumes", |stop| async move {
            // A context that only validates options is stopped at once: touch nothing then.
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            init.run(stop).await;
        });
        adapter
    }

    /// The context the adapter runs in.
    pub fn context(&self) -> &Context {
        &self.inner.ctx
    }

    /// The adapter's options.
    pub fn options(&self) -> &Options {
        &self.inner.options
    }

    /// The adapter's view of the store.
    pub fn state(&self) -> &State {
        &self.inner.state
    }

    fn me(&self) -> &str {
        &self.inner.ctx.node().id
    }

    /// Marks dataset or snapshot `id` as being made until the guard drops: the
    /// reconciler leaves it alone though no record names it yet.
    fn making(&self, id: &str) -> Making {
        self.inner
            .making
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.to_owned());
        Making {
            adapter: self.clone(),
            id: id.to_owned(),
        }
    }

    fn lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// The pool's directory.
    pub fn pool_dir(&self) -> PathBuf {
        self.inner
            .options
            .pool
            .clone()
            .unwrap_or_else(|| self.inner.ctx.state_dir().join("pool"))
    }

    /// The backend, once the pool is open; a 503 saying why when it cannot be.
    pub async fn backend(&self) -> Result<Arc<dyn Backend>, HookError> {
        let mut ready = self.inner.backend.clone();
        let waited = tokio::time::timeout(READY_WAIT, ready.wait_for(Option::is_some)).await;
        let unavailable = |m: String| HookError::refuse(StatusCode::SERVICE_UNAVAILABLE, m);
        match waited {
            Ok(Ok(value)) => match value.as_ref() {
                Some(Ok(backend)) => Ok(backend.clone()),
                Some(Err(e)) => Err(unavailable(format!(
                    "volumes: the pool {} cannot be used: {e}",
                    self.pool_dir().display()
                ))),
                None => Err(unavailable("volumes: the pool is not open".into())),
            },
            Ok(Err(_)) => Err(unavailable("volumes: the adapter is shutting down".into())),
            Err(_) => Err(unavailable(format!(
                "volumes: the pool {} was not ready within {}s",
                self.pool_dir().display(),
                READY_WAIT.as_secs()
            ))),
        }
    }

    // -----------------------------------------------------------------------------------
    // start-up

    async fn run(&self, stop: Stop) {
        let backend = match self.open_pool().await {
            Ok(backend) => backend,
            Err(e) => {
                warn!(error = %e, pool = %self.pool_dir().display(), "the pool cannot be used");
                self.inner.backend_tx.send_replace(Some(Err(e)));
                return;
            }
        };
        info!(
            pool = %backend.pool().display(),
            backend = backend.kind(),
            "pool ready"
        );
        self.inner
            .backend_tx
            .send_replace(Some(Ok(backend.clone())));
        let server = self.clone();
        let server_stop = stop.clone();
        let backend_for_server = backend.clone();
        self.inner.ctx.spawn("volumes transfers", |_| async move {
            server
                .serve_transfers(backend_for_server, server_stop)
                .await;
        });
        let follower = self.clone();
        let follower_stop = stop.clone();
        self.inner.ctx.spawn("volumes events", |_| async move {
            follower.follow_events(follower_stop).await;
        });
        let control = self.clone();
        let control_stop = stop.clone();
        self.inner.ctx.spawn("volumes control", |_| async move {
            crate::control::serve(control, control_stop).await;
        });
        let watcher = self.clone();
        let watcher_stop = stop.clone();
        self.inner.ctx.spawn("volumes requests", |_| async move {
            watcher.watch_requests(watcher_stop).await;
        });
        self.reconcile_loop(stop).await;
    }

    async fn open_pool(&self) -> Result<Arc<dyn Backend>, String> {
        let dir = self.pool_dir();
        let options = &self.inner.options;
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
        if let Some(image) = &options.image {
            crate::backend::pool::ensure_image(&image.file, image.size, &dir)
                .await
                .map_err(|e| e.to_string())?;
        }
        let choice = match options.backend {
            BackendChoice::Auto => crate::backend::pool::Choice::Auto,
            BackendChoice::Btrfs => crate::backend::pool::Choice::Btrfs,
            BackendChoice::Directory => crate::backend::pool::Choice::Directory,
        };
        let backend = crate::backend::pool::open(&dir, choice)
            .await
            .map_err(|e| e.to_string())?;
        backend.prepare().await.map_err(|e| e.to_string())?;
        backend.clean_incoming().await.map_err(|e| e.to_string())?;
        Ok(backend)
    }

    // -----------------------------------------------------------------------------------
    // what the cluster looks like

    /// The live nodes: id → name.
    async fn nodes(&self) -> Result<BTreeMap<String, String>, HookError> {
        let nodes = self.inner.ctx.nodes().await?;
        Ok(nodes.into_iter().map(|n| (n.id, n.name)).collect())
    }

    /// Runs `f` with a [`View`] of the cluster as it is now.
    async fn with_view<T>(&self, f: impl FnOnce(&View<'_>) -> T) -> Result<T, HookError> {
        let nodes = self.nodes().await?;
        let me = self.me().to_owned();
        let live = |id: &str| id == me || nodes.contains_key(id);
        let name = |id: &str| nodes.get(id).cloned().unwrap_or_else(|| id.to_owned());
        let view = View {
            now: now(),
            live: &live,
            name: &name,
            move_timeout: self.inner.options.move_timeout.as_secs(),
        };
        Ok(f(&view))
    }

    /// Applies `change` to dataset `name` with the cluster's view, compare-and-swapped.
    async fn change<T>(
        &self,
        name: &str,
        mut change: impl FnMut(&mut Dataset, &View<'_>) -> Result<T, Conflict>,
    ) -> Result<(Dataset, T), HookError> {
        let nodes = self.nodes().await?;
        let me = self.me().to_owned();
        let live = |id: &str| id == me || nodes.contains_key(id);
        let label = |id: &str| nodes.get(id).cloned().unwrap_or_else(|| id.to_owned());
        let view = View {
            now: now(),
            live: &live,
            name: &label,
            move_timeout: self.inner.options.move_timeout.as_secs(),
        };
        self.inner
            .state
            .update(name, |d| change(d, &view))
            .await
            .map_err(state_error)
    }

    // -----------------------------------------------------------------------------------
    // create

    async fn create(&self, mut request: ClientRequest) -> Result<ClientRequest, HookError> {
        let mut create = ContainerCreate::from_request(&request)?;
        if create
            .host_config()
            .and_then(|hc| powerstrip_adapter::docker::field(hc, "VolumeDriver"))
            .and_then(|v| v.as_str())
            .is_some_and(|d| !d.is_empty() && d != "local")
        {
            // `--volume-driver`: Docker asks that driver (perhaps this adapter's plugin).
            return Ok(request);
        }
        let binds = create.binds()?;
        let mounts = create.mounts()?;
        let candidates = names::uses(&binds, &mounts)
            .map_err(|e| HookError::bad_request(format!("volumes: {e}")))?;
        if candidates.is_empty() {
            return Ok(request);
        }
        // Names without an `@` are ours only when the cluster knows them.
        let mut ours: Vec<Use> = Vec::new();
        for candidate in candidates {
            if candidate.spec.is_explicit()
                || self
                    .inner
                    .state
                    .dataset(candidate.spec.name())
                    .await
                    .map_err(state_error)?
                    .is_some()
            {
                ours.push(candidate);
            }
        }
        if ours.is_empty() {
            return Ok(request);
        }
        let backend = self.backend().await?;
        let token = random_hex(8)?;
        let holder = format!("{RESERVATION}{token}");
        let deadline = Instant::now() + self.inner.options.move_timeout;
        let mut done: Vec<Made> = Vec::new();
        let mut paths = Vec::new();
        for u in &ours {
            match self.ensure(&backend, u, &holder, deadline).await {
                Ok(made) => {
                    paths.push(backend.dataset_path(&made.id).display().to_string());
                    done.push(made);
                }
                Err(e) => {
                    self.undo(&backend, &done, &holder).await;
                    return Err(e);
                }
            }
        }
        let (new_binds, new_mounts) = match names::rewrite(&binds, &mounts, &ours, &paths) {
            Ok(rewritten) => rewritten,
            Err(e) => {
                self.undo(&backend, &done, &holder).await;
                return Err(HookError::bad_request(format!("volumes: {e}")));
            }
        };
        let names: Vec<&str> = done.iter().map(|m| m.name.as_str()).collect();
        let write = async {
            create.set_binds(new_binds)?;
            create.set_mounts(new_mounts)?;
            create.set_label(VOLUMES_LABEL, &names.join(","))?;
            create.set_label(RESERVATION_LABEL, &token)?;
            create.set_label(NODE_LABEL, self.me())?;
            Ok::<(), HookError>(())
        };
        if let Err(e) = write.await {
            self.undo(&backend, &done, &holder).await;
            return Err(e);
        }
        create.write_to(&mut request);
        info!(datasets = ?names, "datasets ready for the container");
        Ok(request)
    }

    /// Undoes what a create did before it failed: its leases released, the datasets it
    /// made removed.
    async fn undo(&self, backend: &Arc<dyn Backend>, done: &[Made], holder: &str) {
        for made in done {
            if made.created {
                if let Err(e) = self.inner.state.remove(&made.name, |_| Ok(())).await {
                    warn!(dataset = %made.name, error = %e, "could not forget a dataset this create made");
                }
                if let Err(e) = backend.destroy(&made.id).await {
                    warn!(dataset = %made.name, error = %e, "could not remove a dataset this create made");
                }
            } else if let Err(e) = self
                .inner
                .state
                .update(&made.name, |d| Ok::<_, Conflict>(d.release(holder)))
                .await
            {
                warn!(dataset = %made.name, error = %e, "could not release a lease");
            }
        }
    }

    /// Makes the dataset `u` asks for ready on this node, leased to `holder`.
    async fn ensure(
        &self,
        backend: &Arc<dyn Backend>,
        u: &Use,
        holder: &str,
        deadline: Instant,
    ) -> Result<Made, HookError> {
        let name = u.spec.name().to_owned();
        let lock = self.lock(&name);
        let _held = lock.lock().await;
        let existing = self.inner.state.dataset(&name).await.map_err(state_error)?;
        match (&u.spec, existing) {
            (Spec::WithProfile { profile, .. }, Some(d)) => {
                if d.profile.as_deref() != Some(profile.as_str()) {
                    return Err(HookError::refuse(
                        StatusCode::CONFLICT,
                        format!(
                            "volumes: {}: dataset {name} exists with {}; write -v {name}:{} to use it",
                            u.place,
                            d.profile.as_deref().map_or_else(
                                || "no profile".to_owned(),
                                |p| format!("profile {p}")
                            ),
                            u.target
                        ),
                    ));
                }
                self.acquire_here(backend, &name, holder, deadline).await
            }
            (Spec::WithProfile { profile, .. }, None) => {
                let limit = self
                    .inner
                    .options
                    .profile(profile)
                    .map_err(|e| HookError::bad_request(format!("volumes: {}: {e}", u.place)))?
                    .size;
                self.create_here(backend, &name, Some(profile), limit, None, holder, deadline)
                    .await
            }
            (Spec::FromSnapshot { snapshot, .. }, existing) => {
                let snapshots = self.inner.state.snapshots().await.map_err(state_error)?;
                let found = resolve(&snapshots, snapshot, &u.source)?;
                if let Some(d) = existing {
                    if d.origin.as_deref() == Some(found.id.as_str()) {
                        return self.acquire_here(backend, &name, holder, deadline).await;
                    }
                    return Err(HookError::refuse(
                        StatusCode::CONFLICT,
                        format!(
                            "volumes: {}: dataset {name} exists already; choose another name for the copy of snapshot {}",
                            u.place, found.id
                        ),
                    ));
                }
                let source = self
                    .inner
                    .state
                    .dataset(&found.dataset)
                    .await
                    .map_err(state_error)?;
                let (profile, limit) = source.map(|d| (d.profile, d.limit)).unwrap_or((None, None));
                self.create_here(
                    backend,
                    &name,
                    profile.as_deref(),
                    limit,
                    Some(found),
                    holder,
                    deadline,
                )
                .await
            }
            (Spec::Existing(_), Some(_)) => {
                self.acquire_here(backend, &name, holder, deadline).await
            }
            (Spec::Existing(_), None) => Err(HookError::bad_request(format!(
                "volumes: {}: dataset {name} does not exist",
                u.place
            ))),
        }
    }

    /// Leases dataset `name` to `holder` here, moving it here first when it lives on
    /// another node and nobody uses it there.
    async fn acquire_here(
        &self,
        backend: &Arc<dyn Backend>,
        name: &str,
        holder: &str,
        deadline: Instant,
    ) -> Result<Made, HookError> {
        let me = self.me().to_owned();
        for _ in 0..3 {
            let (dataset, acquired) = self
                .change(name, |d, view| d.acquire(holder, &me, view))
                .await?;
            match acquired {
                Acquired::Here => {
                    return Ok(Made {
                        name: name.to_owned(),
                        id: dataset.id,
                        created: false,
                    });
                }
                Acquired::Elsewhere { from } => {
                    self.move_here(backend, &dataset, &from, deadline).await?;
                }
            }
        }
        Err(HookError::refuse(
            StatusCode::CONFLICT,
            format!("volumes: dataset {name} kept moving away while this node moved it here"),
        ))
    }

    /// Makes a new dataset `name` here — empty, or a clone of `snapshot` — leased to
    /// `holder`.
    #[allow(clippy::too_many_arguments)]
    async fn create_here(
        &self,
        backend: &Arc<dyn Backend>,
        name: &str,
        profile: Option<&str>,
        limit: Option<u64>,
        snapshot: Option<&Snapshot>,
        holder: &str,
        deadline: Instant,
    ) -> Result<Made, HookError> {
        if let Some(limit) = limit
            && backend.limits_size()
        {
            let pool = backend.pool_usage().await.map_err(backend_error)?;
            if pool.available < limit {
                return Err(HookError::refuse(
                    StatusCode::INSUFFICIENT_STORAGE,
                    format!(
                        "volumes: pool {} is full: dataset {name} needs {}{}, {} is free",
                        backend.pool().display(),
                        format_size(limit),
                        profile
                            .map(|p| format!(" (profile {p})"))
                            .unwrap_or_default(),
                        format_size(pool.available)
                    ),
                ));
            }
        }
        let id = format!("d{}", random_hex(8)?);
        let making = self.making(&id);
        let result = self
            .make(
                backend, &id, name, profile, limit, snapshot, holder, deadline,
            )
            .await;
        drop(making);
        match result {
            Ok(Some(made)) => Ok(made),
            // Another node recorded the same name first: use theirs.
            Ok(None) => self.acquire_here(backend, name, holder, deadline).await,
            Err(e) => Err(e),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn make(
        &self,
        backend: &Arc<dyn Backend>,
        id: &str,
        name: &str,
        profile: Option<&str>,
        limit: Option<u64>,
        snapshot: Option<&Snapshot>,
        holder: &str,
        deadline: Instant,
    ) -> Result<Option<Made>, HookError> {
        match snapshot {
            None => {
                backend.create(id, limit).await.map_err(backend_error)?;
            }
            Some(snapshot) if snapshot.node == self.me() => {
                backend
                    .clone_snapshot(&snapshot.id, id, limit)
                    .await
                    .map_err(backend_error)?;
            }
            Some(snapshot) => {
                // The snapshot is on another node: fetch it, then clone it here.
                let _making = self.making(&snapshot.id);
                self.fetch_snapshot(backend, snapshot, deadline).await?;
                let cloned = backend.clone_snapshot(&snapshot.id, id, limit).await;
                // The fetched copy was only the way here.
                let _ = backend.delete_snapshot(&snapshot.id).await;
                cloned.map_err(backend_error)?;
            }
        }
        let mut dataset = Dataset::new(name, id, profile, limit, self.me(), now());
        dataset.origin = snapshot.map(|s| s.id.clone());
        let me = self.me().to_owned();
        let leased = self
            .with_view(|view| dataset.acquire(holder, &me, view))
            .await?;
        if let Err(e) = leased {
            let _ = backend.destroy(id).await;
            return Err(conflict(e));
        }
        match self.inner.state.create(&dataset).await {
            Ok(Ok(())) => {
                info!(dataset = name, id, profile, limit, origin = ?dataset.origin, "dataset created");
                Ok(Some(Made {
                    name: name.to_owned(),
                    id: id.to_owned(),
                    created: true,
                }))
            }
            Ok(Err(_)) => {
                let _ = backend.destroy(id).await;
                Ok(None)
            }
            Err(e) => {
                let _ = backend.destroy(id).await;
                Err(state_error(e))
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // moves

    /// Moves `dataset` from node `from` to this node: records the move, pulls a snapshot
    /// of it from `from`, makes the dataset from it, and switches the primary here. On
    /// failure the move is forgotten and `from` keeps the dataset.
    async fn move_here(
        &self,
        backend: &Arc<dyn Backend>,
        dataset: &Dataset,
        from: &str,
        deadline: Instant,
    ) -> Result<(), HookError> {
        let me = self.me().to_owned();
        let name = dataset.name.clone();
        let ticket = random_hex(16)?;
        let snapshot = format!("{MOVE_SNAPSHOT}{}", random_hex(8)?);
        let (dataset, moving) = self
            .change(&name, |d, view| d.begin_move(&me, &ticket, &snapshot, view))
            .await?;
        if !moving {
            return Ok(());
        }
        let started = Instant::now();
        let from_name = self.node_name(from).await;
        info!(dataset = %name, from = %from_name, "moving here");
        let result = self
            .pull(
                backend, &dataset, from, &from_name, &ticket, &snapshot, deadline,
            )
            .await;
        let _ = self.inner.state.delete_ticket(&ticket).await;
        match result {
            Ok(fetched) => {
                // The copy is complete here: make the dataset, then switch the primary.
                let made = async {
                    backend.destroy(&dataset.id).await?;
                    backend
                        .clone_snapshot(&snapshot, &dataset.id, dataset.limit)
                        .await
                }
                .await;
                if let Err(e) = made {
                    self.abandon(&name, &ticket, backend, &snapshot, &dataset.id)
                        .await;
                    return Err(backend_error(e));
                }
                let stats = MoveStats {
                    from: from.to_owned(),
                    to: me.clone(),
                    bytes: fetched.raw_bytes,
                    wire: fetched.wire_bytes,
                    incremental: fetched.parent.is_some(),
                    millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    at: now(),
                };
                match self
                    .change(&name, |d, _| d.finish_move(&ticket, Some(stats.clone())))
                    .await
                {
                    Ok(_) => {
                        info!(
                            dataset = %name,
                            from = %from_name,
                            bytes = fetched.raw_bytes,
                            wire = fetched.wire_bytes,
                            incremental = fetched.parent.is_some(),
                            seconds = started.elapsed().as_secs_f64(),
                            "moved here"
                        );
                        self.inner.kick.notify_one();
                        Ok(())
                    }
                    Err(e) => {
                        self.abandon(&name, &ticket, backend, &snapshot, &dataset.id)
                            .await;
                        Err(e)
                    }
                }
            }
            Err(e) => {
                self.abandon(&name, &ticket, backend, &snapshot, "").await;
                Err(e)
            }
        }
    }

    /// A move that failed: forgotten in the store, nothing of it kept here.
    async fn abandon(
        &self,
        name: &str,
        ticket: &str,
        backend: &Arc<dyn Backend>,
        snapshot: &str,
        dataset_id: &str,
    ) {
        if let Err(e) = self
            .inner
            .state
            .update(name, |d| Ok::<_, Conflict>(d.abort_move(ticket)))
            .await
        {
            warn!(dataset = name, error = %e, "could not record that the move failed");
        }
        if !dataset_id.is_empty() {
            // Only if this node is still not its primary (it never switched).
            if let Ok(Some(d)) = self.inner.state.dataset(name).await
                && d.primary != self.me()
            {
                let _ = backend.destroy(dataset_id).await;
            }
        }
        let _ = backend.delete_snapshot(snapshot).await;
    }

    #[allow(clippy::too_many_arguments)]
    async fn pull(
        &self,
        backend: &Arc<dyn Backend>,
        dataset: &Dataset,
        from: &str,
        from_name: &str,
        ticket: &str,
        snapshot: &str,
        deadline: Instant,
    ) -> Result<transfer::Fetched, HookError> {
        let me = self.me().to_owned();
        let expires = now() + self.inner.options.move_timeout.as_secs() + 60;
        self.inner
            .state
            .put_ticket(
                ticket,
                &Ticket {
                    dataset: dataset.name.clone(),
                    dataset_id: dataset.id.clone(),
                    snapshot: snapshot.to_owned(),
                    from: from.to_owned(),
                    to: me,
                    expires,
                },
            )
            .await
            .map_err(state_error)?;
        let local = backend.snapshots().await.map_err(backend_error)?;
        let parent = dataset
            .base_for(self.me())
            .filter(|base| local.iter().any(|s| s == base))
            .map(str::to_owned);
        let request = SendRequest {
            dataset: dataset.name.clone(),
            id: dataset.id.clone(),
            snapshot: snapshot.to_owned(),
            parent,
            ticket: ticket.to_owned(),
            compression: self.inner.options.compression,
        };
        let progress = Arc::new(AtomicU64::new(0));
        let reporter = {
            let progress = progress.clone();
            let state = self.inner.state.clone();
            let name = dataset.name.clone();
            let ticket = ticket.to_owned();
            tokio::spawn(async move {
                let mut last = 0;
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let bytes = progress.load(Ordering::Relaxed);
                    if bytes != last {
                        last = bytes;
                        let _ = state.update(&name, |d| d.progress(&ticket, bytes)).await;
                        debug!(dataset = %name, bytes, "move progress");
                    }
                }
            })
        };
        let fetched = self
            .fetch(
                backend,
                from,
                from_name,
                &request,
                &progress,
                deadline,
                &dataset.name,
            )
            .await;
        reporter.abort();
        fetched
    }

    #[allow(clippy::too_many_arguments)]
    async fn fetch(
        &self,
        backend: &Arc<dyn Backend>,
        from: &str,
        from_name: &str,
        request: &SendRequest,
        progress: &Arc<AtomicU64>,
        deadline: Instant,
        what: &str,
    ) -> Result<transfer::Fetched, HookError> {
        let unavailable = |m: String| HookError::refuse(StatusCode::SERVICE_UNAVAILABLE, m);
        let endpoint = self
            .inner
            .state
            .endpoint(from)
            .await
            .map_err(state_error)?
            .ok_or_else(|| {
                unavailable(format!(
                    "volumes: {what} is on node {from_name}, which serves no transfers (its volumes adapter is not running); nothing was moved"
                ))
            })?;
        let counter = progress.clone();
        let report = move |bytes: u64| counter.store(bytes, Ordering::Relaxed);
        let attempt = async {
            match transfer::fetch(&endpoint, request, &**backend, &report).await {
                // The source restarted (its old endpoint lingers until its lease ends): once
                // it publishes a new one, that is where it serves.
                Err(TransferError::Unreachable { .. }) => {
                    for _ in 0..20 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if let Ok(Some(now)) = self.inner.state.endpoint(from).await
                            && now != endpoint
                        {
                            debug!(old = %endpoint, new = %now, "the source serves elsewhere now");
                            return transfer::fetch(&now, request, &**backend, &report).await;
                        }
                    }
                    transfer::fetch(&endpoint, request, &**backend, &report).await
                }
                other => other,
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, attempt).await {
            Ok(Ok(fetched)) => Ok(fetched),
            Ok(Err(e)) => Err(match e {
                TransferError::Refused { status, message } => HookError::refuse(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                    format!("volumes: node {from_name} refused to send {what}: {message}"),
                ),
                TransferError::Backend(e) => backend_error(e),
                other => unavailable(format!(
                    "volumes: moving {what} from node {from_name} failed: {other}; nothing was lost on either node, and the move can be retried"
                )),
            }),
            Err(_) => Err(HookError::timed_out(format!(
                "volumes: moving {what} from node {from_name} did not finish within {}s ({} received); it was stopped, {from_name} keeps the dataset, and the move can be retried",
                self.inner.options.move_timeout.as_secs(),
                format_size(progress.load(Ordering::Relaxed))
            ))),
        }
    }

    /// Fetches user snapshot `snapshot` from the node holding it.
    async fn fetch_snapshot(
        &self,
        backend: &Arc<dyn Backend>,
        snapshot: &Snapshot,
        deadline: Instant,
    ) -> Result<(), HookError> {
        // Fetched already (an attempt whose answer was lost): nothing to fetch.
        if backend
            .snapshots()
            .await
            .map_err(backend_error)?
            .contains(&snapshot.id)
        {
            return Ok(());
        }
        let ticket = random_hex(16)?;
        let from_name = self.node_name(&snapshot.node).await;
        self.inner
            .state
            .put_ticket(
                &ticket,
                &Ticket {
                    dataset: snapshot.dataset.clone(),
                    dataset_id: snapshot.dataset_id.clone(),
                    snapshot: snapshot.id.clone(),
                    from: snapshot.node.clone(),
                    to: self.me().to_owned(),
                    expires: now() + self.inner.options.move_timeout.as_secs() + 60,
                },
            )
            .await
            .map_err(state_error)?;
        let request = SendRequest {
            dataset: snapshot.dataset.clone(),
            id: snapshot.dataset_id.clone(),
            snapshot: snapshot.id.clone(),
            parent: None,
            ticket: ticket.clone(),
            compression: self.inner.options.compression,
        };
        let progress = Arc::new(AtomicU64::new(0));
        let what = format!("snapshot {}", snapshot.id);
        let fetched = self
            .fetch(
                backend,
                &snapshot.node,
                &from_name,
                &request,
                &progress,
                deadline,
                &what,
            )
            .await;
        let _ = self.inner.state.delete_ticket(&ticket).await;
        fetched.map(|_| ())
    }

    async fn node_name(&self, id: &str) -> String {
        self.inner
            .ctx
            .nodes()
            .await
            .ok()
            .and_then(|nodes| nodes.into_iter().find(|n| n.id == id).map(|n| n.name))
            .unwrap_or_else(|| id.to_owned())
    }

    // -----------------------------------------------------------------------------------
    // the transfer server

    async fn serve_transfers(&self, backend: Arc<dyn Backend>, stop: Stop) {
        let address = match self.listen_address().await {
            Ok(address) => address,
            Err(e) => {
                warn!(error = %e, "moves will not be served from this node");
                return;
            }
        };
        let listener = match tokio::net::TcpListener::bind(address).await {
            Ok(listener) => listener,
            Err(e) => {
                warn!(%address, error = %e, "cannot listen for moves; moves from this node will fail");
                return;
            }
        };
        // Port 0 picks one: publish the one it picked.
        let address = listener.local_addr().unwrap_or(address);
        let endpoint = format!("http://{address}");
        let lease = loop {
            match KeptLease::grant(self.inner.state.store().clone(), Duration::from_secs(10)).await
            {
                Ok(lease) => break lease,
                Err(e) => {
                    debug!(error = %e, "cannot publish the transfer endpoint yet");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        if let Err(e) = self
            .inner
            .state
            .put_endpoint(self.me(), &endpoint, lease.id())
            .await
        {
            warn!(error = %e, "cannot publish the transfer endpoint");
        }
        info!(%endpoint, "serving moves");
        let authorize: Arc<dyn Authorize> = Arc::new(Tickets {
            state: self.inner.state.clone(),
            me: self.me().to_owned(),
            backend: backend.clone(),
        });
        transfer::serve(listener, backend, authorize, stop).await;
        let _ = lease.revoke().await;
    }

    async fn listen_address(&self) -> Result<std::net::SocketAddr, String> {
        match &self.inner.options.listen {
            Listen::At(address) => Ok(*address),
            Listen::NodeAddress(port) => {
                let host = self.inner.ctx.node().address.clone();
                let mut addresses = tokio::net::lookup_host((host.as_str(), *port))
                    .await
                    .map_err(|e| format!("the node address {host:?}: {e}"))?;
                addresses
                    .next()
                    .ok_or_else(|| format!("the node address {host:?} resolves to nothing"))
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // leases after the create

    async fn created(
        &self,
        request: &ClientRequest,
        response: &ServerResponse,
    ) -> Result<(), HookError> {
        let create = ContainerCreate::from_request(request)?;
        let Some(token) = create.label(RESERVATION_LABEL) else {
            return Ok(());
        };
        let holder = format!("{RESERVATION}{token}");
        let datasets = datasets_of(create.label(VOLUMES_LABEL));
        let id = response
            .body
            .as_deref()
            .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok())
            .and_then(|v| v["Id"].as_str().map(str::to_owned));
        for name in datasets {
            let result = match &id {
                Some(id) => {
                    self.inner
                        .state
                        .update(&name, |d| Ok::<_, Conflict>(d.rebind(&holder, id)))
                        .await
                }
                None => {
                    self.inner
                        .state
                        .update(&name, |d| Ok::<_, Conflict>(d.release(&holder)))
                        .await
                }
            };
            if let Err(e) = result {
                warn!(dataset = %name, error = %e, "could not hand the lease to the container");
            }
        }
        Ok(())
    }

    async fn release_reservation(&self, request: &ClientRequest) -> Result<(), HookError> {
        let create = ContainerCreate::from_request(request)?;
        if let Some(token) = create.label(RESERVATION_LABEL) {
            let holder = format!("{RESERVATION}{token}");
            for name in datasets_of(create.label(VOLUMES_LABEL)) {
                let _ = self
                    .inner
                    .state
                    .update(&name, |d| Ok::<_, Conflict>(d.release(&holder)))
                    .await;
            }
        }
        Ok(())
    }

    /// Leases container `id`'s datasets again before it starts (moving them here first
    /// when one moved away while it was stopped).
    async fn starting(&self, id: &str) -> Result<(), HookError> {
        let docker = self.inner.ctx.docker()?;
        let Ok(inspect) = docker.inspect_container(id, None).await else {
            // Docker answers for a container it does not know.
            return Ok(());
        };
        let labels = inspect
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default();
        let datasets = datasets_of(labels.get(VOLUMES_LABEL).map(String::as_str));
        if datasets.is_empty() {
            return Ok(());
        }
        let full = inspect.id.unwrap_or_else(|| id.to_owned());
        let backend = self.backend().await?;
        let deadline = Instant::now() + self.inner.options.move_timeout;
        for name in &datasets {
            if self
                .inner
                .state
                .dataset(name)
                .await
                .map_err(state_error)?
                .is_none()
            {
                return Err(HookError::refuse(
                    StatusCode::CONFLICT,
                    format!(
                        "volumes: container {} uses dataset {name}, which was removed",
                        short(&full)
                    ),
                ));
            }
            let lock = self.lock(name);
            let _held = lock.lock().await;
            self.acquire_here(&backend, name, &full, deadline).await?;
        }
        Ok(())
    }

    /// Drops every lease `holder` has.
    pub async fn release_holder(&self, holder: &str) -> Result<(), HookError> {
        let (datasets, _) = self.inner.state.datasets().await.map_err(state_error)?;
        for d in datasets.iter().filter(|d| d.leases.contains_key(holder)) {
            self.inner
                .state
                .update(&d.name, |d| Ok::<_, Conflict>(d.release(holder)))
                .await
                .map_err(state_error)?;
            debug!(dataset = %d.name, holder, "lease released");
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // events

    async fn follow_events(&self, stop: Stop) {
        loop {
            if stop.is_cancelled() {
                return;
            }
            let Ok(docker) = self.inner.ctx.docker() else {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            };
            let mut filters = HashMap::new();
            filters.insert("type".to_owned(), vec!["container".to_owned()]);
            filters.insert(
                "event".to_owned(),
                vec!["die".to_owned(), "destroy".to_owned()],
            );
            filters.insert(
                "label".to_owned(),
                vec![format!("{NODE_LABEL}={}", self.me())],
            );
            let mut events = docker.events(Some(EventsOptions {
                filters: Some(filters),
                ..Default::default()
            }));
            self.inner.kick.notify_one();
            loop {
                let event = tokio::select! {
                    () = stop.cancelled() => return,
                    event = events.next() => event,
                };
                let Some(Ok(event)) = event else { break };
                let id = event
                    .actor
                    .as_ref()
                    .and_then(|a| a.id.clone())
                    .unwrap_or_default();
                debug!(container = %id, action = ?event.action, "event");
                if let Err(e) = self.release_holder(&id).await {
                    warn!(container = %id, error = e.message(), "could not release its leases");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    // -----------------------------------------------------------------------------------
    // operators' requests

    async fn watch_requests(&self, stop: Stop) {
        loop {
            let mut watch = match self
                .inner
                .state
                .store()
                .watch(crate::state::REQUESTS, 0)
                .await
            {
                Ok(watch) => watch,
                Err(e) => {
                    debug!(error = %e, "cannot watch requests yet");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            self.handle_requests().await;
            loop {
                let event = tokio::select! {
                    () = stop.cancelled() => return,
                    event = watch.next() => event,
                };
                match event {
                    Some(Ok(powerstrip_adapter::store::Event::Put(_))) => {
                        self.handle_requests().await;
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
        }
    }

    /// Carries out the pending requests this node should.
    async fn handle_requests(&self) {
        let _one = self.inner.requests.lock().await;
        let Ok(requests) = self.inner.state.requests().await else {
            return;
        };
        for (key, request) in requests {
            if request.outcome.is_some() {
                continue;
            }
            let Some(result) = self.handle(&request).await else {
                continue;
            };
            let outcome = match result {
                Ok(message) => Outcome::Done { message },
                Err(e) => Outcome::Failed {
                    message: e.message().to_owned(),
                    status: e.status().as_u16(),
                },
            };
            if let Err(e) = self.inner.state.finish_request(&key, outcome).await {
                warn!(key, error = %e, "could not record a request's outcome");
            }
        }
    }

    /// `None` when another node should handle `request`.
    async fn handle(&self, request: &Request) -> Option<Result<String, HookError>> {
        use crate::state::Op;
        match &request.op {
            Op::Snapshot { dataset } | Op::Remove { dataset } => {
                match self.inner.state.dataset(dataset).await {
                    Ok(Some(d)) if d.primary == self.me() => {}
                    Ok(Some(_)) => return None,
                    Ok(None) => {
                        return Some(Err(HookError::refuse(
                            StatusCode::NOT_FOUND,
                            format!("dataset {dataset} does not exist"),
                        )));
                    }
                    Err(_) => return None,
                }
                Some(match &request.op {
                    Op::Snapshot { .. } => self.take_snapshot(dataset).await,
                    _ => self.remove_dataset(dataset).await,
                })
            }
            Op::RemoveSnapshot { snapshot } => {
                let snapshots = self.inner.state.snapshots().await.ok()?;
                let found = match resolve(&snapshots, snapshot, snapshot) {
                    Ok(found) => found.clone(),
                    Err(e) => return Some(Err(e)),
                };
                if found.node != self.me() {
                    return None;
                }
                Some(self.remove_snapshot(&found).await)
            }
            Op::Move { dataset, to } => {
                if to != self.me() {
                    return None;
                }
                Some(self.move_request(dataset).await)
            }
        }
    }

    /// Dataset `name`'s record; a 404 when there is none (operator calls only: a container
    /// create never answers 404, which the docker CLI reads as "no such image").
    async fn existing(&self, name: &str) -> Result<Dataset, HookError> {
        self.inner
            .state
            .dataset(name)
            .await
            .map_err(state_error)?
            .ok_or_else(|| {
                HookError::refuse(
                    StatusCode::NOT_FOUND,
                    format!("dataset {name} does not exist"),
                )
            })
    }

    /// Takes a snapshot of dataset `name` (on this node, its primary); its id.
    pub async fn take_snapshot(&self, name: &str) -> Result<String, HookError> {
        let backend = self.backend().await?;
        let lock = self.lock(name);
        let _held = lock.lock().await;
        let dataset = self.existing(name).await?;
        let id = random_hex(4)?;
        let _making = self.making(&id);
        backend
            .snapshot(&dataset.id, &id)
            .await
            .map_err(backend_error)?;
        let record = Snapshot {
            id: id.clone(),
            dataset: name.to_owned(),
            dataset_id: dataset.id,
            node: self.me().to_owned(),
            created: now(),
        };
        if let Err(e) = self.inner.state.put_snapshot(&record).await {
            let _ = backend.delete_snapshot(&id).await;
            return Err(state_error(e));
        }
        info!(dataset = name, snapshot = %id, "snapshot taken");
        Ok(id)
    }

    /// Removes dataset `name` (on this node, its primary), unless it is in use.
    pub async fn remove_dataset(&self, name: &str) -> Result<String, HookError> {
        let backend = self.backend().await?;
        let lock = self.lock(name);
        let _held = lock.lock().await;
        let nodes = self.nodes().await?;
        let me = self.me().to_owned();
        let live = |id: &str| id == me || nodes.contains_key(id);
        let label = |id: &str| nodes.get(id).cloned().unwrap_or_else(|| id.to_owned());
        let view = View {
            now: now(),
            live: &live,
            name: &label,
            move_timeout: self.inner.options.move_timeout.as_secs(),
        };
        let removed = self
            .inner
            .state
            .remove(name, |d| d.removable(&view))
            .await
            .map_err(state_error)?;
        backend.destroy(&removed.id).await.map_err(backend_error)?;
        info!(dataset = name, "dataset removed");
        Ok(format!("dataset {name} removed"))
    }

    async fn remove_snapshot(&self, snapshot: &Snapshot) -> Result<String, HookError> {
        let backend = self.backend().await?;
        backend
            .delete_snapshot(&snapshot.id)
            .await
            .map_err(backend_error)?;
        self.inner
            .state
            .delete_snapshot(&snapshot.id)
            .await
            .map_err(state_error)?;
        Ok(format!("snapshot {} removed", snapshot.id))
    }

    async fn move_request(&self, name: &str) -> Result<String, HookError> {
        let backend = self.backend().await?;
        let lock = self.lock(name);
        let _held = lock.lock().await;
        let started = Instant::now();
        let dataset = self.existing(name).await?;
        if dataset.primary == self.me() {
            return Ok(format!("dataset {name} is on this node already"));
        }
        let from = dataset.primary.clone();
        let deadline = Instant::now() + self.inner.options.move_timeout;
        self.move_here(&backend, &dataset, &from, deadline).await?;
        Ok(format!(
            "dataset {name} moved in {:.1}s",
            started.elapsed().as_secs_f64()
        ))
    }

    // -----------------------------------------------------------------------------------
    // for Docker's volume plugin API

    /// Makes dataset `name` on this node with `profile` (no lease); nothing when it exists.
    pub async fn make_dataset(&self, name: &str, profile: Option<&str>) -> Result<(), HookError> {
        let backend = self.backend().await?;
        let lock = self.lock(name);
        let _held = lock.lock().await;
        if let Some(d) = self.inner.state.dataset(name).await.map_err(state_error)? {
            if profile.is_some() && d.profile.as_deref() != profile {
                return Err(HookError::refuse(
                    StatusCode::CONFLICT,
                    format!(
                        "volumes: dataset {name} exists with {}",
                        d.profile
                            .as_deref()
                            .map_or_else(|| "no profile".to_owned(), |p| format!("profile {p}"))
                    ),
                ));
            }
            return Ok(());
        }
        let limit = match profile {
            Some(p) => {
                self.inner
                    .options
                    .profile(p)
                    .map_err(|e| HookError::bad_request(format!("volumes: {e}")))?
                    .size
            }
            None => None,
        };
        let holder = format!("{RESERVATION}{}", random_hex(8)?);
        let deadline = Instant::now() + self.inner.options.move_timeout;
        self.create_here(&backend, name, profile, limit, None, &holder, deadline)
            .await?;
        self.inner
            .state
            .update(name, |d| Ok::<_, Conflict>(d.release(&holder)))
            .await
            .map_err(state_error)?;
        Ok(())
    }

    /// Leases dataset `name` to `holder` on this node (moving it here first when it lives
    /// elsewhere and nobody uses it there); its path.
    pub async fn lease_here(&self, name: &str, holder: &str) -> Result<String, HookError> {
        let backend = self.backend().await?;
        let lock = self.lock(name);
        let _held = lock.lock().await;
        let deadline = Instant::now() + self.inner.options.move_timeout;
        let made = self.acquire_here(&backend, name, holder, deadline).await?;
        Ok(backend.dataset_path(&made.id).display().to_string())
    }

    /// Drops `holder`'s lease on dataset `name`.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), HookError> {
        match self
            .inner
            .state
            .update(name, |d| Ok::<_, Conflict>(d.release(holder)))
            .await
        {
            Ok(_) | Err(StateError::Missing(_)) => Ok(()),
            Err(e) => Err(state_error(e)),
        }
    }

    /// Removes dataset `name` wherever it lives: here directly, on its primary through a
    /// request that node's adapter carries out.
    pub async fn remove_anywhere(&self, name: &str) -> Result<String, HookError> {
        let d = self
            .inner
            .state
            .dataset(name)
            .await
            .map_err(state_error)?
            .ok_or_else(|| HookError::bad_request(format!("volumes: no such volume: {name}")))?;
        if d.primary == self.me() {
            return self.remove_dataset(name).await;
        }
        let key = self
            .inner
            .state
            .put_request(
                &random_hex(8)?,
                &Request {
                    op: crate::state::Op::Remove {
                        dataset: name.to_owned(),
                    },
                    created: now(),
                    outcome: None,
                },
            )
            .await
            .map_err(state_error)?;
        crate::plugin::wait_for(&self.inner.state, &key, crate::plugin::REQUEST_WAIT)
            .await
            .map_err(|(status, message)| {
                HookError::refuse(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                    format!("volumes: {message}"),
                )
            })
    }

    // -----------------------------------------------------------------------------------
    // for operators (the control socket)

    /// Carries out `op` here when this node should, otherwise through a request the right
    /// node's adapter carries out; waits up to `wait` for it.
    async fn anywhere(&self, op: crate::state::Op, wait: Duration) -> Result<String, HookError> {
        let request = Request {
            op,
            created: now(),
            outcome: None,
        };
        if let Some(result) = self.handle(&request).await {
            return result;
        }
        let key = self
            .inner
            .state
            .put_request(&random_hex(8)?, &request)
            .await
            .map_err(state_error)?;
        crate::plugin::wait_for(&self.inner.state, &key, wait)
            .await
            .map_err(|(status, message)| {
                HookError::refuse(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
                    message,
                )
            })
    }

    /// Takes a snapshot of dataset `name` on its primary; says its id.
    pub async fn snapshot_anywhere(&self, name: &str) -> Result<String, HookError> {
        let op = crate::state::Op::Snapshot {
            dataset: name.to_owned(),
        };
        let id = self.anywhere(op, crate::plugin::REQUEST_WAIT).await?;
        Ok(format!("snapshot-{id}"))
    }

    /// Removes a dataset, or a snapshot (`snapshot-<id or prefix>`), wherever it is.
    pub async fn remove_named(&self, name: &str) -> Result<String, HookError> {
        let op = match name.strip_prefix(crate::names::SNAPSHOT_PREFIX) {
            Some(snapshot) => crate::state::Op::RemoveSnapshot {
                snapshot: snapshot.to_owned(),
            },
            None => crate::state::Op::Remove {
                dataset: name.to_owned(),
            },
        };
        self.anywhere(op, crate::plugin::REQUEST_WAIT).await
    }

    /// Moves dataset `name` to node `to` (a name or an id).
    pub async fn move_to(&self, name: &str, to: &str) -> Result<String, HookError> {
        let nodes = self.inner.ctx.nodes().await?;
        let Some(node) = nodes.iter().find(|n| n.id == to || n.name == to) else {
            return Err(HookError::bad_request(format!(
                "no live node is called {to:?} (the nodes are {})",
                nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let op = crate::state::Op::Move {
            dataset: name.to_owned(),
            to: node.id.clone(),
        };
        let wait = self.inner.options.move_timeout + Duration::from_secs(30);
        self.anywhere(op, wait).await
    }

    // -----------------------------------------------------------------------------------
    // reconciling

    async fn reconcile_loop(&self, stop: Stop) {
        loop {
            if let Err(e) = self.reconcile().await {
                warn!(error = %e, "reconcile failed; retrying");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(self.inner.options.reconcile) => {}
                () = self.inner.kick.notified() => {}
            }
        }
    }

    /// One pass: leases whose holders are gone, copies of datasets that moved away, move
    /// snapshots no move needs, records of moves this node abandoned, expired tickets,
    /// datasets no record names.
    pub async fn reconcile(&self) -> Result<(), String> {
        let Some(Ok(backend)) = self.inner.backend.borrow().clone() else {
            return Ok(());
        };
        let me = self.me().to_owned();
        // The pool, then the datasets being made, then the store: a dataset in the pool is
        // either still being made (its id in `making`, which it leaves only once its record
        // is written) or recorded by the time the store is read — never an orphan by race.
        let local = backend.datasets().await.map_err(|e| e.to_string())?;
        let local_snapshots = backend.snapshots().await.map_err(|e| e.to_string())?;
        let making = self
            .inner
            .making
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let (datasets, _) = self
            .inner
            .state
            .datasets()
            .await
            .map_err(|e| e.to_string())?;
        let snapshots = self
            .inner
            .state
            .snapshots()
            .await
            .map_err(|e| e.to_string())?;
        // Docker after the store: a lease in what was read names a container that exists
        // by now (its id was recorded after Docker made it).
        let containers = self.containers().await;
        let now = now();
        for dataset in &datasets {
            // Leases of this node's holders that are gone: containers that no longer exist
            // at once, containers that do not run after a grace (they may be starting),
            // reservations whose create never finished after a longer one.
            let stale: Vec<String> = dataset
                .leases
                .iter()
                .filter(|(holder, lease)| {
                    let Some((existing, running)) = &containers else {
                        return false;
                    };
                    if lease.node != me || holder.starts_with("mount:") {
                        return false;
                    }
                    let age = now.saturating_sub(lease.since);
                    if holder.starts_with(RESERVATION) {
                        return age > LEASE_GRACE.as_secs();
                    }
                    !existing.contains(*holder) || (!running.contains(*holder) && age > 60)
                })
                .map(|(holder, _)| holder.clone())
                .collect();
            for holder in stale {
                let _ = self
                    .inner
                    .state
                    .update(&dataset.name, |d| Ok::<_, Conflict>(d.release(&holder)))
                    .await;
                info!(dataset = %dataset.name, holder, "released a lease whose holder is gone");
            }
            // A move to this node that no task here is doing (this process restarted).
            let lock = self.lock(&dataset.name);
            let Ok(_idle) = lock.try_lock() else {
                // A hook or a move is working on it: next pass.
                continue;
            };
            if let Some(m) = &dataset.moving
                && m.to == me
            {
                let ticket = m.ticket.clone();
                let _ = self
                    .inner
                    .state
                    .update(&dataset.name, |d| Ok::<_, Conflict>(d.abort_move(&ticket)))
                    .await;
                let _ = self.inner.state.delete_ticket(&ticket).await;
                info!(dataset = %dataset.name, "forgot a move this node had begun before it restarted");
            }
            // This node's copy of a dataset that moved away.
            let moving_here = dataset.moving.as_ref().is_some_and(|m| m.to == me);
            if dataset.primary != me && !moving_here && local.contains(&dataset.id) {
                info!(dataset = %dataset.name, "removing this node's copy: the dataset moved away");
                let _ = backend.destroy(&dataset.id).await;
            }
        }
        // Datasets no record names (a create that died before it recorded one).
        for id in &local {
            let named = datasets.iter().any(|d| &d.id == id);
            if !named && !making.contains(id) {
                info!(id, "removing a dataset no record names");
                let _ = backend.destroy(id).await;
            }
        }
        // Snapshots: user snapshots recorded on this node stay, move bases this node shares
        // and snapshots of moves in progress stay; the rest goes.
        for id in &local_snapshots {
            if making.contains(id) {
                continue;
            }
            let user = snapshots.iter().any(|s| &s.id == id && s.node == me);
            let base = datasets.iter().any(|d| {
                d.bases.get(&me) == Some(id) || d.moving.as_ref().is_some_and(|m| &m.snapshot == id)
            });
            if !user && !base {
                debug!(snapshot = %id, "removing a snapshot nothing needs");
                let _ = backend.delete_snapshot(id).await;
            }
        }
        // Tickets past their time.
        if let Ok(tickets) = self.inner.state.tickets().await {
            for (id, ticket) in tickets {
                if ticket.expires < now {
                    let _ = self.inner.state.delete_ticket(&id).await;
                }
            }
        }
        self.handle_requests().await;
        Ok(())
    }

    /// This node's containers (ids): those that exist, and those that run; `None` when
    /// Docker does not answer.
    async fn containers(&self) -> Option<(HashSet<String>, HashSet<String>)> {
        let docker = self.inner.ctx.docker().ok()?;
        let mut filters = HashMap::new();
        filters.insert(
            "label".to_owned(),
            vec![format!("{NODE_LABEL}={}", self.me())],
        );
        let containers = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .ok()?;
        let mut existing = HashSet::new();
        let mut running = HashSet::new();
        for container in containers {
            let Some(id) = container.id else { continue };
            if container.state.is_some_and(|s| s.to_string() == "running") {
                running.insert(id.clone());
            }
            existing.insert(id);
        }
        Some((existing, running))
    }
}

/// Keeps an id in [`Inner::making`] while it lives.
struct Making {
    adapter: Volumes,
    id: String,
}

impl Drop for Making {
    fn drop(&mut self) {
        self.adapter
            .inner
            .making
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

/// A dataset a create made ready: whether it made it.
#[derive(Debug)]
struct Made {
    name: String,
    id: String,
    created: bool,
}

/// The datasets a `powerstrip.volumes` label lists.
fn datasets_of(label: Option<&str>) -> Vec<String> {
    label
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Resolves a snapshot reference for a user: 400 when unknown, 409 listing the
/// candidates when ambiguous (never 404: on a create the docker CLI would pull).
fn resolve<'s>(
    snapshots: &'s [Snapshot],
    prefix: &str,
    written: &str,
) -> Result<&'s Snapshot, HookError> {
    match resolve_snapshot(snapshots, prefix) {
        Ok(Some(found)) => Ok(found),
        Ok(None) => Err(HookError::bad_request(format!(
            "volumes: {written}: no snapshot has an id starting with {prefix:?} (powerstrip volumes ls lists them)"
        ))),
        Err(candidates) => Err(HookError::refuse(
            StatusCode::CONFLICT,
            format!(
                "volumes: {written}: {prefix:?} could be any of {}; give more of the id",
                candidates
                    .iter()
                    .map(|s| format!("{} (of {})", s.id, s.dataset))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

fn conflict(e: Conflict) -> HookError {
    HookError::refuse(StatusCode::CONFLICT, format!("volumes: {e}"))
}

fn state_error(e: StateError) -> HookError {
    match e {
        StateError::Store(e) => {
            HookError::refuse(StatusCode::SERVICE_UNAVAILABLE, format!("volumes: {e}"))
        }
        StateError::Conflict(e) => conflict(e),
        StateError::Missing(name) => {
            HookError::bad_request(format!("volumes: dataset {name} does not exist"))
        }
        StateError::Contended(message) => {
            HookError::refuse(StatusCode::CONFLICT, format!("volumes: {message}"))
        }
        e @ StateError::Corrupt { .. } => HookError::failed(format!("volumes: {e}")),
    }
}

fn backend_error(e: BackendError) -> HookError {
    match e {
        e @ BackendError::Full { .. } => {
            HookError::refuse(StatusCode::INSUFFICIENT_STORAGE, format!("volumes: {e}"))
        }
        e => HookError::refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("volumes: {e}")),
    }
}

/// The source's check of a transfer request: the ticket the target wrote must exist,
/// name this node as the source and the same dataset and snapshot, and not have expired.
struct Tickets {
    state: State,
    me: String,
    backend: Arc<dyn Backend>,
}

#[async_trait]
impl Authorize for Tickets {
    async fn authorize(&self, request: &SendRequest) -> Result<(), Refusal> {
        let refuse = |status: u16, message: String| Refusal { status, message };
        let ticket = self
            .state
            .ticket(&request.ticket)
            .await
            .map_err(|e| refuse(503, e.to_string()))?
            .ok_or_else(|| {
                refuse(
                    403,
                    "no such ticket (it expired, or the move was abandoned)".into(),
                )
            })?;
        if ticket.from != self.me
            || ticket.dataset_id != request.id
            || ticket.snapshot != request.snapshot
        {
            return Err(refuse(403, "the ticket is for another transfer".into()));
        }
        if ticket.expires < now() {
            return Err(refuse(403, "the ticket has expired".into()));
        }
        if !request.snapshot.starts_with(MOVE_SNAPSHOT) {
            // A user snapshot is sent as it is, never made anew.
            let here = self
                .backend
                .snapshots()
                .await
                .map_err(|e| refuse(500, e.to_string()))?;
            if !here.contains(&request.snapshot) {
                return Err(refuse(
                    404,
                    format!("snapshot {} is not on this node", request.snapshot),
                ));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Adapter for Volumes {
    async fn pre_hook(&self, request: ClientRequest) -> Result<ClientRequest, HookError> {
        let path = request.docker_path();
        if request.method == "POST" && path.endpoint() == "/containers/create" {
            return self.create(request).await;
        }
        if request.method == "POST"
            && path.matches("/containers/*/start")
            && let Some(id) = path.container_id()
        {
            self.starting(&id).await?;
            return Ok(request);
        }
        if request.method == "DELETE"
            && path.matches("/containers/*")
            && let Some(id) = path.container_id()
            && let Ok(docker) = self.inner.ctx.docker()
            && let Ok(inspect) = docker.inspect_container(&id, None).await
            && let Some(full) = inspect.id
        {
            self.inner
                .deleting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(request.request.clone(), full);
        }
        Ok(request)
    }

    async fn post_hook(
        &self,
        request: &ClientRequest,
        response: ServerResponse,
    ) -> Result<ServerResponse, HookError> {
        let path = request.docker_path();
        let ok = (200..300).contains(&response.code);
        if request.method == "POST" && path.endpoint() == "/containers/create" {
            if ok {
                self.created(request, &response).await?;
            } else {
                self.release_reservation(request).await?;
            }
            return Ok(response);
        }
        if request.method == "POST"
            && path.matches("/containers/*/start")
            && !ok
            && response.code != 304
            && let Some(id) = path.container_id()
            && let Ok(docker) = self.inner.ctx.docker()
            && let Ok(inspect) = docker.inspect_container(&id, None).await
            && let Some(full) = inspect.id
            && !inspect.state.and_then(|s| s.running).unwrap_or(false)
        {
            self.release_holder(&full).await?;
            return Ok(response);
        }
        if request.method == "DELETE" && path.matches("/containers/*") {
            let id = self
                .inner
                .deleting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&request.request);
            if ok && let Some(id) = id {
                self.release_holder(&id).await?;
            }
        }
        Ok(response)
    }

    async fn unwind(&self, request: &ClientRequest, reason: &str) -> Result<(), HookError> {
        if request.method == "POST" && request.docker_path().endpoint() == "/containers/create" {
            debug!(reason, "create did not happen; its leases are released");
            self.release_reservation(request).await?;
        }
        Ok(())
    }
}
