//! The hooks, and the reconciler that keeps this host's plumbing equal to what the store and
//! Docker say.
//!
//! - **create** (pre): read the networks asked for (`powerstrip.network` label or
//!   `POWERSTRIP_NETWORK`), check OVS, reserve an address on each (create-if-absent in the
//!   store), record them as labels. **unwind**: a create that did not happen releases them.
//!   **create** (post): the reservation becomes the container's.
//! - **start** / **restart** (post): plumb (see [`crate::plumb`]); a failure undoes what it
//!   did and answers an error naming the step, the addresses stay reserved for a retry.
//! - **delete** (pre: which container; post: release its addresses).
//! - Docker's events (start, die, destroy), followed with the context's Docker client, and a
//!   periodic pass, heal whatever happened without a call through the proxy: restart
//!   policies, `docker rm` on the daemon's own socket, a crash of the proxy at any step.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt as _;
use http::StatusCode;
use powerstrip_adapter::context::Stop;
use powerstrip_adapter::context::bollard::query_parameters::{
    EventsOptions, ListContainersOptions,
};
use powerstrip_adapter::docker::ContainerCreate;
use powerstrip_adapter::path::RequestExt as _;
use powerstrip_adapter::{Adapter, ClientRequest, Context, HookError, ServerResponse, async_trait};
use tracing::{debug, info, warn};

use crate::fabric;
use crate::ipam;
use crate::options::{Options, check_name};
use crate::ovs::{Ovs, OvsError};
use crate::plumb::{CONTAINER_ID, PlumbError, Plumber};
use crate::state::{Attachment, Network, RESERVATION, State, StateError};

/// The label (or, as an environment variable, `POWERSTRIP_NETWORK`) naming a container's
/// networks, comma-separated.
pub const NETWORK_LABEL: &str = "powerstrip.network";
/// The environment variable naming a container's networks.
pub const NETWORK_ENV: &str = "POWERSTRIP_NETWORK";
/// The label (or `POWERSTRIP_IP`) asking for a fixed address.
pub const IP_LABEL: &str = "powerstrip.ip";
/// The environment variable asking for a fixed address.
pub const IP_ENV: &str = "POWERSTRIP_IP";
/// The label holding the reservation made at create.
pub const RESERVATION_LABEL: &str = "powerstrip.network.reservation";
/// The label naming the node (by id) whose adapter plumbs the container: the one whose
/// proxy created it.
pub const NODE_LABEL: &str = "powerstrip.network.node";
/// How long a reservation may wait for its container before the reconciler releases it.
const RESERVATION_TTL: Duration = Duration::from_secs(300);

/// The label holding a container's address on `network`.
pub fn ip_label(network: &str) -> String {
    format!("powerstrip.network.{network}.ip")
}

/// The networking adapter.
#[derive(Clone, Debug)]
pub struct NetOvs {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ctx: Context,
    options: Arc<Options>,
    state: State,
    plumber: Plumber,
    datapath: &'static str,
    /// One plumbing operation at a time per container (hooks and events race).
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Container ids resolved by a delete's pre-hook for its post-hook, by request target.
    deleting: Mutex<HashMap<String, String>>,
    /// Wakes the reconciler.
    kick: tokio::sync::Notify,
}

/// What a create asks for.
#[derive(Debug, Default)]
struct Wanted {
    /// Where it was asked (`label powerstrip.network`, `environment variable ...`).
    source: String,
    /// The networks, in order.
    networks: Vec<String>,
    /// Fixed addresses by network.
    fixed: BTreeMap<String, Ipv4Addr>,
    /// A fixed address not yet tied to a network (`powerstrip.ip` with several networks).
    loose: Option<(String, Ipv4Addr)>,
}

impl NetOvs {
    /// The adapter, with its reconciler and event follower started in `ctx`.
    pub fn start(ctx: &Context, options: Options) -> NetOvs {
        let options = Arc::new(options);
        let ovs = Ovs::new(options.ovsdb.clone(), options.vswitchd.clone());
        let datapath = fabric::resolve(options.datapath);
        let state = State::new(ctx.store().clone(), options.clone(), &ctx.node().name);
        let plumber = Plumber {
            ovs,
            options: options.clone(),
            netdev: datapath == "netdev",
        };
        let adapter = NetOvs {
            inner: Arc::new(Inner {
                ctx: ctx.clone(),
                options,
                state,
                plumber,
                datapath,
                locks: Mutex::new(HashMap::new()),
                deleting: Mutex::new(HashMap::new()),
                kick: tokio::sync::Notify::new(),
            }),
        };
        let reconciler = adapter.clone();
        ctx.spawn("net-ovs reconciler", |stop| async move {
            reconciler.reconcile_loop(stop).await;
        });
        let follower = adapter.clone();
        ctx.spawn("net-ovs events", |stop| async move {
            follower.follow_events(stop).await;
        });
        let watcher = adapter.clone();
        ctx.spawn("net-ovs peers", |stop| async move {
            watcher.watch_peers(stop).await;
        });
        if let Some(name) = adapter.inner.options.plugin.clone() {
            let plugin = adapter.clone();
            ctx.spawn("net-ovs plugin", |stop| async move {
                // A context that only validates options is stopped at once.
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                crate::plugin::serve(plugin, name, stop).await;
            });
        }
        adapter
    }

    /// The context the adapter runs in.
    pub fn context(&self) -> &Context {
        &self.inner.ctx
    }

    /// The plumber (OVS, options).
    pub fn plumber(&self) -> &Plumber {
        &self.inner.plumber
    }

    /// The adapter's view of the store.
    pub fn state(&self) -> &State {
        &self.inner.state
    }

    /// The label filter of this node's containers.
    fn node_filter(&self) -> String {
        format!("{NODE_LABEL}={}", self.inner.ctx.node().id)
    }

    fn lock(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    // -----------------------------------------------------------------------------------
    // create

    async fn create(&self, mut request: ClientRequest) -> Result<ClientRequest, HookError> {
        let mut create = ContainerCreate::from_request(&request)?;
        let Some(wanted) = wanted(&create)? else {
            return Ok(request);
        };
        self.check_ovs().await?;
        let name = request.query_param("name");
        let token = random_token();
        let holder = format!("{RESERVATION}{token}");
        let mut reserved: Vec<(String, Ipv4Addr)> = Vec::new();
        let result = async {
            let mut loose = wanted.loose;
            for net in &wanted.networks {
                let network = self
                    .inner
                    .state
                    .network(net)
                    .await
                    .map_err(|e| refusal(e, &wanted.source, net))?;
                let mut fixed = wanted.fixed.get(net).copied();
                if fixed.is_none()
                    && let Some((_, address)) = &loose
                    && network.subnet.contains(address)
                {
                    fixed = Some(*address);
                    loose = None;
                }
                let address = self
                    .inner
                    .state
                    .reserve(&network, fixed, &holder, name.as_deref())
                    .await
                    .map_err(|e| refusal(e, &wanted.source, net))?;
                reserved.push((net.clone(), address));
            }
            if let Some((source, address)) = loose {
                return Err(HookError::bad_request(format!(
                    "net-ovs: {source}={address}: the address is in none of the networks asked for ({})",
                    wanted.networks.join(", ")
                )));
            }
            Ok(())
        }
        .await;
        if let Err(refused) = result {
            // Nothing half-applied: what this create reserved is released.
            if let Err(e) = self.inner.state.release(&holder).await {
                warn!(error = %e, "could not release a refused create's reservations");
            }
            return Err(refused);
        }
        let set =
            |create: &mut ContainerCreate, key: &str, value: &str| create.set_label(key, value);
        set(&mut create, NETWORK_LABEL, &wanted.networks.join(","))?;
        for (net, address) in &reserved {
            set(&mut create, &ip_label(net), &address.to_string())?;
        }
        set(&mut create, RESERVATION_LABEL, &token)?;
        set(&mut create, NODE_LABEL, &self.inner.ctx.node().id)?;
        create.write_to(&mut request);
        info!(networks = ?reserved, name = ?name, "addresses reserved");
        Ok(request)
    }

    /// OVS must answer and the bridge must exist (made now if it is missing) before
    /// anything is reserved.
    async fn check_ovs(&self) -> Result<(), HookError> {
        let bridge = &self.inner.options.bridge;
        let ovs = &self.inner.plumber.ovs;
        let unavailable =
            |message: String| HookError::refuse(StatusCode::SERVICE_UNAVAILABLE, message);
        match ovs.bridge_exists(bridge).await {
            Ok(true) => Ok(()),
            Ok(false) => fabric::ensure_bridge(ovs, &self.inner.options, self.inner.datapath)
                .await
                .map_err(|e| {
                    unavailable(format!(
                        "net-ovs: the Open vSwitch bridge {bridge} is missing and cannot be made: {e}"
                    ))
                }),
            Err(e) => Err(unavailable(format!("net-ovs: {e}"))),
        }
    }

    async fn created(
        &self,
        request: &ClientRequest,
        response: &ServerResponse,
    ) -> Result<(), HookError> {
        let create = ContainerCreate::from_request(request)?;
        let Some(token) = create.label(RESERVATION_LABEL) else {
            return Ok(());
        };
        let id = response
            .body
            .as_deref()
            .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok())
            .and_then(|v| v["Id"].as_str().map(str::to_owned));
        let Some(id) = id else {
            return Ok(());
        };
        let name = request.query_param("name");
        self.inner.state.bind(token, &id, name.as_deref()).await?;
        let attachments = attachments_of(&create.labels());
        self.inner
            .state
            .set_record(&id, name.as_deref(), attachments)
            .await?;
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // plumbing

    /// Plumbs container `id` if it runs, on the networks its labels name.
    pub async fn plumb(&self, id: &str) -> Result<(), HookError> {
        let docker = self.inner.ctx.docker()?;
        let inspect = docker.inspect_container(id, None).await.map_err(|e| {
            HookError::failed(format!("net-ovs: cannot inspect container {id}: {e}"))
        })?;
        let id = inspect.id.clone().unwrap_or_else(|| id.to_owned());
        let labels: Vec<(String, String)> = inspect
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        let label_refs: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let mine = label_refs
            .iter()
            .any(|(k, v)| *k == NODE_LABEL && *v == self.inner.ctx.node().id);
        let attachments = attachments_of(&label_refs);
        if attachments.is_empty() || !mine {
            return Ok(());
        }
        let state = inspect.state.as_ref();
        let running = state.and_then(|s| s.running).unwrap_or(false);
        let pid = state.and_then(|s| s.pid).unwrap_or(0);
        if !running || pid <= 0 {
            return Ok(());
        }
        let lock = self.lock(&id);
        let _held = lock.lock().await;
        let mut pairs: Vec<(Attachment, Network)> = Vec::new();
        for attachment in attachments {
            let network = self
                .inner
                .state
                .find_network(&attachment.network)
                .await?
                .ok_or_else(|| {
                    HookError::failed(format!(
                        "net-ovs: container {id} is labelled for network {}, which the cluster does not know",
                        attachment.network
                    ))
                })?;
            pairs.push((attachment, network));
        }
        let name = inspect
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned();
        let plumbed = self
            .inner
            .plumber
            .plumb(&id, u32::try_from(pid).unwrap_or(0), &pairs)
            .await;
        if let Err(error) = plumbed {
            // A container that has already exited (`docker run ... true`) has no namespace
            // left to plumb: nothing failed, its next start plumbs it. Take off whatever
            // the attempt left in the switch.
            if !self.still_running(&docker, &id, pid).await {
                debug!(container = %id, %error, "exited before it could be plumbed");
                let _ = self.inner.plumber.unplumb(&id).await;
                return Ok(());
            }
            return Err(plumb_failure(&id, &name, &pairs, error));
        }
        debug!(container = %id, "plumbed");
        Ok(())
    }

    /// Whether container `id` still runs as process `pid` (an inspect that fails counts as
    /// running: the failure stands).
    async fn still_running(
        &self,
        docker: &powerstrip_adapter::context::bollard::Docker,
        id: &str,
        pid: i64,
    ) -> bool {
        match docker.inspect_container(id, None).await {
            Ok(inspect) => inspect
                .state
                .is_some_and(|s| s.running == Some(true) && s.pid == Some(pid)),
            Err(
                powerstrip_adapter::context::bollard::errors::Error::DockerResponseServerError {
                    status_code: 404,
                    ..
                },
            ) => false,
            Err(_) => true,
        }
    }

    // -----------------------------------------------------------------------------------
    // reconciling

    async fn reconcile_loop(&self, stop: Stop) {
        // A context that only validates options is stopped at once: touch nothing then.
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
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

    /// One pass: the bridge, the underlay, the tunnels, then every container.
    pub async fn reconcile(&self) -> Result<(), String> {
        let inner = &self.inner;
        let ovs = &inner.plumber.ovs;
        fabric::ensure_bridge(ovs, &inner.options, inner.datapath)
            .await
            .map_err(|e| e.to_string())?;
        if inner.datapath == "netdev"
            && let Some(underlay) = &inner.options.underlay
        {
            fabric::ensure_underlay(ovs, &underlay.interface, &underlay.bridge)
                .await
                .map_err(|e| e.to_string())?;
        }
        let nodes = inner.ctx.nodes().await.map_err(|e| e.to_string())?;
        let networks = inner.state.networks().await.map_err(|e| e.to_string())?;
        fabric::ensure_tunnels(
            ovs,
            &inner.options.bridge,
            inner.ctx.node(),
            &nodes,
            &networks,
        )
        .await
        .map_err(|e| e.to_string())?;
        self.reconcile_containers().await
    }

    async fn reconcile_containers(&self) -> Result<(), String> {
        let inner = &self.inner;
        let docker = inner.ctx.docker().map_err(|e| e.to_string())?;
        // Read what may be stale before asking Docker what exists: a port, an allocation or
        // a record made after Docker answered cannot then be taken for a leftover.
        let ports = inner
            .plumber
            .ovs
            .ports(&inner.options.bridge)
            .await
            .map_err(|e| e.to_string())?;
        let allocations = inner
            .state
            .all_allocations()
            .await
            .map_err(|e| e.to_string())?;
        let records = inner.state.records().await.map_err(|e| e.to_string())?;
        let mut filters = HashMap::new();
        filters.insert("label".to_owned(), vec![self.node_filter()]);
        let containers = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(|e| format!("listing containers: {e}"))?;
        let endpoints = self.live_endpoints().await?;
        let mut existing = HashSet::new();
        let mut running = HashSet::new();
        let mut tokens = HashMap::new();
        for container in &containers {
            let Some(id) = container.id.clone() else {
                continue;
            };
            if let Some(token) = container
                .labels
                .as_ref()
                .and_then(|l| l.get(RESERVATION_LABEL))
            {
                tokens.insert(token.clone(), id.clone());
            }
            let is_running = container
                .state
                .as_ref()
                .is_some_and(|s| format!("{s:?}").to_ascii_lowercase().contains("running"));
            if is_running {
                running.insert(id.clone());
                if let Err(e) = self.plumb(&id).await {
                    warn!(container = %id, error = e.message(), "plumbing failed");
                }
            }
            existing.insert(id);
        }
        // Ports of containers that no longer run, and of endpoints that are gone.
        for port in ports {
            if let (Some(endpoints), Some(endpoint)) =
                (&endpoints, port.external_ids.get(crate::plugin::ENDPOINT))
                && !endpoints.contains(endpoint)
            {
                let _ = inner
                    .plumber
                    .ovs
                    .del_port(&inner.options.bridge, &port.name)
                    .await;
                let _ = crate::link::delete(&port.name).await;
                continue;
            }
            if let Some(id) = port.external_ids.get(CONTAINER_ID)
                && !running.contains(id)
            {
                let lock = self.lock(id);
                let _held = lock.lock().await;
                // It may have started since: only a container that is not running loses them.
                if !self.is_running(id).await {
                    let _ = inner.plumber.unplumb(id).await;
                }
            }
        }
        // Addresses and records of containers that are gone, and reservations that never
        // became a container.
        let now = now();
        for (kv, allocation) in allocations {
            if allocation.node != inner.state.node() {
                continue;
            }
            if let Some(endpoint) = allocation
                .holder
                .strip_prefix(crate::plugin::ENDPOINT_HOLDER)
            {
                // Docker shows an endpoint only once its driver made it: a young one is
                // left alone.
                let gone = endpoints.as_ref().is_some_and(|e| !e.contains(endpoint))
                    && now.saturating_sub(allocation.since) > 60;
                if gone {
                    info!(key = %kv.key, endpoint, "releasing the address of an endpoint that is gone");
                    let _ = inner
                        .state
                        .store()
                        .delete(&kv.key, Some(kv.mod_revision))
                        .await;
                    let _ = inner
                        .state
                        .store()
                        .delete(&crate::plugin::endpoint_key(endpoint), None)
                        .await;
                }
                continue;
            }
            let stale = match allocation.holder.strip_prefix(RESERVATION) {
                Some(token) => match tokens.get(token) {
                    Some(id) => {
                        let _ = inner
                            .state
                            .bind(token, id, allocation.name.as_deref())
                            .await;
                        false
                    }
                    None => now.saturating_sub(allocation.since) > RESERVATION_TTL.as_secs(),
                },
                None => !existing.contains(&allocation.holder),
            };
            if stale {
                info!(key = %kv.key, holder = %allocation.holder, "releasing an address nobody holds");
                let _ = inner
                    .state
                    .store()
                    .delete(&kv.key, Some(kv.mod_revision))
                    .await;
            }
        }
        for (id, record) in records {
            if record.node == inner.state.node() && !existing.contains(&id) {
                let _ = inner.state.forget(&id).await;
            }
        }
        Ok(())
    }

    /// The endpoints of this plugin's Docker networks, when the plugin is served.
    async fn live_endpoints(&self) -> Result<Option<HashSet<String>>, String> {
        use powerstrip_adapter::context::bollard::query_parameters::ListNetworksOptions;
        let Some(driver) = &self.inner.options.plugin else {
            return Ok(None);
        };
        let docker = self.inner.ctx.docker().map_err(|e| e.to_string())?;
        let mut filters = HashMap::new();
        filters.insert("driver".to_owned(), vec![driver.clone()]);
        let networks = docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(|e| format!("listing networks: {e}"))?;
        let mut endpoints = HashSet::new();
        for network in networks {
            let Some(id) = network.id else { continue };
            let inspect = docker
                .inspect_network(&id, None)
                .await
                .map_err(|e| format!("inspecting network {id}: {e}"))?;
            for container in inspect.containers.unwrap_or_default().values() {
                if let Some(endpoint) = &container.endpoint_id {
                    endpoints.insert(endpoint.clone());
                }
            }
        }
        Ok(Some(endpoints))
    }

    /// Whether container `id` may be running: false only when Docker says it is not, or
    /// that it does not exist (a Docker that does not answer changes nothing).
    async fn is_running(&self, id: &str) -> bool {
        use powerstrip_adapter::bollard::errors::Error;
        let Ok(docker) = self.inner.ctx.docker() else {
            return true;
        };
        match docker.inspect_container(id, None).await {
            Ok(inspect) => inspect.state.and_then(|s| s.running).unwrap_or(false),
            Err(Error::DockerResponseServerError {
                status_code: 404, ..
            }) => false,
            Err(_) => true,
        }
    }

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
                vec!["start".to_owned(), "die".to_owned(), "destroy".to_owned()],
            );
            filters.insert("label".to_owned(), vec![self.node_filter()]);
            let mut events = docker.events(Some(EventsOptions {
                filters: Some(filters),
                ..Default::default()
            }));
            // Whatever happened while the stream was down is caught up by one pass.
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
                let action = event.action.clone().unwrap_or_default();
                debug!(container = %id, action, "event");
                match action.as_str() {
                    "start" => {
                        if let Err(e) = self.plumb(&id).await {
                            warn!(container = %id, error = e.message(), "plumbing failed");
                        }
                    }
                    "die" => {
                        let lock = self.lock(&id);
                        let _held = lock.lock().await;
                        let _ = self.inner.plumber.unplumb(&id).await;
                    }
                    "destroy" => {
                        let _ = self.inner.plumber.unplumb(&id).await;
                        if let Err(e) = self.inner.state.forget(&id).await {
                            warn!(container = %id, error = %e, "could not release its addresses");
                        }
                    }
                    _ => {}
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Reconciles as soon as a node joins or leaves, or a network appears.
    async fn watch_peers(&self, stop: Stop) {
        loop {
            let store = self.inner.state.store().clone();
            let watches = tokio::try_join!(
                store.watch("nodes/", 0),
                store.watch("net-ovs/networks/", 0)
            );
            let (mut nodes, mut networks) = match watches {
                Ok(pair) => pair,
                Err(e) => {
                    debug!(error = %e, "cannot watch peers yet");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                let changed = tokio::select! {
                    () = stop.cancelled() => return,
                    event = nodes.next() => event,
                    event = networks.next() => event,
                };
                match changed {
                    Some(Ok(_)) => self.inner.kick.notify_one(),
                    _ => break,
                }
            }
        }
    }
}

#[async_trait]
impl Adapter for NetOvs {
    async fn pre_hook(&self, request: ClientRequest) -> Result<ClientRequest, HookError> {
        let path = request.docker_path();
        if request.method == "POST" && path.endpoint() == "/containers/create" {
            return self.create(request).await;
        }
        if request.method == "DELETE"
            && path.matches("/containers/*")
            && let Some(id) = path.container_id()
        {
            // Which container it is, before it is gone (the path may name it).
            if let Ok(docker) = self.inner.ctx.docker()
                && let Ok(inspect) = docker.inspect_container(&id, None).await
                && let Some(full) = inspect.id
            {
                self.inner
                    .deleting
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(request.request.clone(), full);
            }
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
            }
            return Ok(response);
        }
        if request.method == "POST"
            && (path.matches("/containers/*/start") || path.matches("/containers/*/restart"))
            && (ok || response.code == 304)
            && let Some(id) = path.container_id()
        {
            self.plumb(&id).await?;
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
                let _ = self.inner.plumber.unplumb(&id).await;
                self.inner.state.forget(&id).await?;
                info!(container = %id, "addresses released");
            }
        }
        Ok(response)
    }

    async fn unwind(&self, request: &ClientRequest, reason: &str) -> Result<(), HookError> {
        if request.method == "POST" && request.docker_path().endpoint() == "/containers/create" {
            let create = ContainerCreate::from_request(request)?;
            if let Some(token) = create.label(RESERVATION_LABEL) {
                let released = self
                    .inner
                    .state
                    .release(&format!("{RESERVATION}{token}"))
                    .await?;
                info!(
                    released,
                    reason, "create did not happen; its addresses are released"
                );
            }
        }
        Ok(())
    }
}

/// The networks a create asks for, from its labels or environment.
fn wanted(create: &ContainerCreate) -> Result<Option<Wanted>, HookError> {
    let (source, value) = match (create.label(NETWORK_LABEL), create.env_var(NETWORK_ENV)) {
        (Some(value), _) => (format!("label {NETWORK_LABEL}"), value.to_owned()),
        (None, Some(value)) => (
            format!("environment variable {NETWORK_ENV}"),
            value.to_owned(),
        ),
        (None, None) => return Ok(None),
    };
    let mut wanted = Wanted {
        source: source.clone(),
        ..Wanted::default()
    };
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        check_name(name)
            .map_err(|e| HookError::bad_request(format!("net-ovs: {source}={value:?}: {e}")))?;
        if !wanted.networks.iter().any(|n| n == name) {
            wanted.networks.push(name.to_owned());
        }
    }
    if wanted.networks.is_empty() {
        return Err(HookError::bad_request(format!(
            "net-ovs: {source} is empty; name one or more networks, e.g. {NETWORK_LABEL}=blue"
        )));
    }
    for network in &wanted.networks {
        if let Some(text) = create.label(&ip_label(network)) {
            let address = ipam::parse_address(text).map_err(|e| {
                HookError::bad_request(format!(
                    "net-ovs: label {}={text:?}: {e}",
                    ip_label(network)
                ))
            })?;
            wanted.fixed.insert(network.clone(), address);
        }
    }
    let fixed = match (create.label(IP_LABEL), create.env_var(IP_ENV)) {
        (Some(text), _) => Some((format!("label {IP_LABEL}"), text.to_owned())),
        (None, Some(text)) => Some((format!("environment variable {IP_ENV}"), text.to_owned())),
        (None, None) => None,
    };
    if let Some((source, text)) = fixed {
        let address = ipam::parse_address(&text)
            .map_err(|e| HookError::bad_request(format!("net-ovs: {source}={text:?}: {e}")))?;
        if wanted.networks.len() == 1 {
            wanted
                .fixed
                .entry(wanted.networks[0].clone())
                .or_insert(address);
        } else {
            wanted.loose = Some((source, address));
        }
    }
    Ok(Some(wanted))
}

/// A container's attachments, from its labels: the networks of `powerstrip.network`, in
/// order, each with its `powerstrip.network.<name>.ip`.
fn attachments_of(labels: &[(&str, &str)]) -> Vec<Attachment> {
    let get = |key: &str| labels.iter().find(|(k, _)| *k == key).map(|(_, v)| *v);
    let Some(networks) = get(NETWORK_LABEL) else {
        return Vec::new();
    };
    networks
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .filter_map(|network| {
            let address = get(&ip_label(network))?.parse().ok()?;
            Some(Attachment {
                network: network.to_owned(),
                address,
            })
        })
        .collect()
}

/// A refused create, in the user's terms: which label or variable, which value, and what
/// would be accepted. Never a 404 (the docker CLI would try to pull the image).
fn refusal(error: StateError, source: &str, network: &str) -> HookError {
    match error {
        StateError::UnknownNetwork(_) => HookError::bad_request(format!(
            "net-ovs: {source}: network {network:?} does not exist and no pool is configured to create it from"
        )),
        StateError::Address { source: e, .. } => {
            HookError::bad_request(format!("net-ovs: {source}: network {network}: {e}"))
        }
        e @ (StateError::InUse { .. }
        | StateError::Exhausted { .. }
        | StateError::NoRoom { .. }) => {
            HookError::refuse(StatusCode::CONFLICT, format!("net-ovs: {e}"))
        }
        StateError::Store(e) => {
            HookError::refuse(StatusCode::SERVICE_UNAVAILABLE, format!("net-ovs: {e}"))
        }
        e @ StateError::Corrupt { .. } => HookError::failed(format!("net-ovs: {e}")),
    }
}

impl From<StateError> for HookError {
    fn from(error: StateError) -> Self {
        match error {
            StateError::Store(e) => e.into(),
            other => HookError::failed(format!("net-ovs: {other}")),
        }
    }
}

/// A start whose plumbing failed: which container, which step, and that its addresses
/// stay reserved for a retry.
fn plumb_failure(
    id: &str,
    name: &str,
    pairs: &[(Attachment, Network)],
    error: PlumbError,
) -> HookError {
    let what = if name.is_empty() {
        id.get(..12).unwrap_or(id).to_owned()
    } else {
        name.to_owned()
    };
    let addresses: Vec<String> = pairs
        .iter()
        .map(|(a, _)| format!("{} on {}", a.address, a.network))
        .collect();
    let status = match &error {
        PlumbError::Ovs {
            source: OvsError::Unreachable { .. },
            ..
        } => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    HookError::refuse(
        status,
        format!(
            "net-ovs: container {what} started, but attaching it failed: {error}; nothing was left half-plumbed, \
             and its addresses ({}) stay reserved: `docker restart {what}` tries again",
            addresses.join(", ")
        ),
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// 64 random bits in hexadecimal, for a reservation.
fn random_token() -> String {
    use std::io::Read as _;
    let mut bytes = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_err()
    {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (nanos as u64).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(body: serde_json::Value) -> ContainerCreate {
        ContainerCreate::parse(&body.to_string()).unwrap()
    }

    #[test]
    fn networks_come_from_the_label_or_the_environment() {
        let w = wanted(&create(
            serde_json::json!({"Labels": {"powerstrip.network": "blue, red,blue"}}),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(w.networks, ["blue", "red"]);
        assert_eq!(w.source, "label powerstrip.network");
        let w = wanted(&create(
            serde_json::json!({"Env": ["POWERSTRIP_NETWORK=blue", "POWERSTRIP_IP=10.50.0.12"]}),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(w.networks, ["blue"]);
        assert_eq!(w.fixed["blue"], "10.50.0.12".parse::<Ipv4Addr>().unwrap());
        assert!(
            wanted(&create(serde_json::json!({"Image": "busybox"})))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn bad_requests_name_the_label_and_value() {
        let err = wanted(&create(
            serde_json::json!({"Labels": {"powerstrip.network": "bl ue"}}),
        ))
        .unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(
            err.message().contains("label powerstrip.network=\"bl ue\""),
            "{}",
            err.message()
        );
        let err = wanted(&create(serde_json::json!({"Labels": {"powerstrip.network": "blue", "powerstrip.ip": "10.50.0"}})))
            .unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(
            err.message().contains("label powerstrip.ip=\"10.50.0\""),
            "{}",
            err.message()
        );
        let err = wanted(&create(
            serde_json::json!({"Labels": {"powerstrip.network": " , "}}),
        ))
        .unwrap_err();
        assert!(err.message().contains("is empty"));
    }

    #[test]
    fn attachments_follow_the_labels_in_order() {
        let labels = [
            ("powerstrip.network", "red,blue"),
            ("powerstrip.network.blue.ip", "10.50.0.2"),
            ("powerstrip.network.red.ip", "10.51.0.9"),
        ];
        let attachments = attachments_of(&labels);
        assert_eq!(attachments.len(), 2);
        assert_eq!(attachments[0].network, "red");
        assert_eq!(
            attachments[1].address,
            "10.50.0.2".parse::<Ipv4Addr>().unwrap()
        );
    }
}
