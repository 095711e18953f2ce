//! The `placement` adapter: facts gathered in the background and published to the store,
//! container creates checked against this node, service creates and updates translated
//! into Swarm mode's placement constraints, and (on one elected manager) every node's facts
//! kept as Swarm node labels.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt as _;
use http::StatusCode;
use powerstrip_adapter::context::Stop;
use powerstrip_adapter::context::bollard;
use powerstrip_adapter::context::bollard::query_parameters::{
    ListContainersOptions, ListImagesOptions, ListNodesOptions, UpdateNodeOptions,
};
use powerstrip_adapter::docker::ContainerCreate;
use powerstrip_adapter::path::RequestExt as _;
use powerstrip_adapter::store::helpers::{KeptLease, campaign};
use powerstrip_adapter::{Adapter, ClientRequest, Context, HookError, async_trait};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::expr::{self, Container, Expr, Image, Kind, Node};
use crate::facts::{Facts, Gatherer};
use crate::options::Options;

/// Where a node's facts are published: `placement/facts/<node id>`.
pub const FACTS_PREFIX: &str = "placement/facts/";
/// The role of the one node per cluster that keeps Swarm node labels.
pub const LABELS_ROLE: &str = "placement-swarm-labels";
/// How long a hook waits for the first facts after the adapter started.
const READY_WAIT: Duration = Duration::from_secs(30);

/// What a node publishes: its facts, and where it stands in Swarm mode.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The node's name.
    pub name: String,
    /// Its Swarm mode node id, when its engine is in a swarm.
    #[serde(default)]
    pub swarm_node_id: Option<String>,
    /// Whether its engine manages the swarm.
    #[serde(default)]
    pub manager: bool,
    /// Since when these exact values have been published (seconds since the epoch): the
    /// node puts its record again only when something in it changes.
    pub since: u64,
    /// The facts.
    pub facts: Facts,
}

/// The placement adapter.
#[derive(Clone, Debug)]
pub struct Placement {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ctx: Context,
    options: Options,
    /// This node's latest facts, once gathered.
    facts: watch::Receiver<Option<Arc<Published>>>,
    facts_tx: watch::Sender<Option<Arc<Published>>>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Placement {
    /// The adapter, its facts gatherer and label publisher started in `ctx`.
    pub fn start(ctx: &Context, options: Options) -> Placement {
        let (facts_tx, facts) = watch::channel(None);
        let adapter = Placement {
            inner: Arc::new(Inner {
                ctx: ctx.clone(),
                options,
                facts,
                facts_tx,
            }),
        };
        let gatherer = adapter.clone();
        ctx.spawn("placement facts", |stop| async move {
            // A context that only validates options is stopped at once: touch nothing then.
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            gatherer.gather_loop(stop).await;
        });
        if adapter.inner.options.swarm_labels {
            let publisher = adapter.clone();
            ctx.spawn("placement swarm labels", |stop| async move {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                publisher.labels_loop(stop).await;
            });
        }
        adapter
    }

    /// This node's facts, once gathered; a 503 when they are not there in time.
    pub async fn facts(&self) -> Result<Arc<Published>, HookError> {
        let mut ready = self.inner.facts.clone();
        match tokio::time::timeout(READY_WAIT, ready.wait_for(Option::is_some)).await {
            Ok(Ok(value)) => value.clone().ok_or_else(|| {
                HookError::refuse(StatusCode::SERVICE_UNAVAILABLE, "placement: no facts yet")
            }),
            _ => Err(HookError::refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "placement: this node's facts were not gathered within {}s",
                    READY_WAIT.as_secs()
                ),
            )),
        }
    }

    // -----------------------------------------------------------------------------------
    // facts

    async fn gather_loop(&self, stop: Stop) {
        let mut gatherer = Gatherer::new(self.inner.options.facts.clone());
        let refresh = self.inner.options.facts.refresh;
        let ttl = (refresh * 3).max(Duration::from_secs(10));
        let mut lease: Option<KeptLease> = None;
        let mut published_ok = false;
        loop {
            let docker = self.inner.ctx.docker().ok();
            let facts = gatherer.refresh_with_docker(docker.as_ref()).await;
            let (swarm_node_id, manager) = match &docker {
                Some(docker) => swarm_of(docker).await,
                None => (None, false),
            };
            let published = Arc::new(Published {
                name: self.inner.ctx.node().name.clone(),
                swarm_node_id,
                manager,
                since: now(),
                facts,
            });
            let unchanged = self.inner.facts_tx.borrow().as_ref().is_some_and(|last| {
                last.name == published.name
                    && last.swarm_node_id == published.swarm_node_id
                    && last.manager == published.manager
                    && last.facts == published.facts
            });
            let lease_lost = lease.as_ref().is_none_or(KeptLease::is_lost);
            if !unchanged || lease_lost || !published_ok {
                self.inner.facts_tx.send_replace(Some(published.clone()));
                published_ok = match self.publish(&published, &mut lease, ttl).await {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(error = %e, "could not publish this node's facts");
                        false
                    }
                };
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(refresh) => {}
            }
        }
        if let Some(lease) = lease {
            let _ = lease.revoke().await;
        }
    }

    /// Puts this node's facts in the store under a lease of its own (they go when the node
    /// stops renewing it).
    async fn publish(
        &self,
        published: &Published,
        lease: &mut Option<KeptLease>,
        ttl: Duration,
    ) -> Result<(), powerstrip_adapter::store::StoreError> {
        let store = self.inner.ctx.store().clone();
        if lease.as_ref().is_none_or(KeptLease::is_lost) {
            *lease = Some(KeptLease::grant(store.clone(), ttl).await?);
        }
        let Some(id) = lease.as_ref().map(KeptLease::id) else {
            return Ok(());
        };
        let key = format!("{FACTS_PREFIX}{}", self.inner.ctx.node().id);
        let value = serde_json::to_vec(published).unwrap_or_default();
        store.put(&key, &value, Some(id)).await?;
        debug!(facts = published.facts.len(), "facts published");
        Ok(())
    }

    /// Every live node's published facts, by node id.
    async fn cluster(&self) -> Result<BTreeMap<String, Published>, HookError> {
        let listing = self.inner.ctx.store().list(FACTS_PREFIX).await?;
        Ok(listing
            .kvs
            .iter()
            .filter_map(|kv| {
                let id = kv.key.strip_prefix(FACTS_PREFIX)?.to_owned();
                Some((id, serde_json::from_slice(&kv.value).ok()?))
            })
            .collect())
    }

    // -----------------------------------------------------------------------------------
    // containers on this node

    async fn create(&self, mut request: ClientRequest) -> Result<ClientRequest, HookError> {
        let mut create = ContainerCreate::from_request(&request)?;
        let env = raw_env(create.as_json())?;
        let labels: Vec<(String, String)> = create
            .labels()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let (exprs, rest) = parse_all(&env, &labels)?;
        if exprs.is_empty() {
            return Ok(request);
        }
        let published = self.facts().await?;
        let (containers, images) = if exprs.iter().any(|e| e.kind() == Kind::Affinity) {
            self.local_objects().await?
        } else {
            (Vec::new(), Vec::new())
        };
        let me = self.inner.ctx.node();
        let node = Node {
            id: &me.id,
            name: &me.name,
            facts: &published.facts,
            containers: &containers,
            images: &images,
        };
        let nodes = [node];
        let selection = expr::select(&exprs, &nodes);
        if let Some(failed) = selection.unsatisfied {
            return Err(self.refusal(failed, &nodes[0]).await);
        }
        for dropped in &selection.dropped {
            info!(expression = %dropped, value = %dropped.value_on(&nodes[0]), "soft expression does not hold here; ignored");
        }
        if env.len() != rest.len() {
            set_env(create.as_json_mut(), rest);
        }
        for (key, value) in expr::to_labels(&exprs) {
            create.set_label(&key, &value)?;
        }
        create.write_to(&mut request);
        debug!(expressions = exprs.len(), "placement holds on this node");
        Ok(request)
    }

    /// This node's containers and images, for affinities.
    async fn local_objects(&self) -> Result<(Vec<Container>, Vec<Image>), HookError> {
        let docker = self.inner.ctx.docker()?;
        let unavailable = |e: bollard::errors::Error| {
            HookError::refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("placement: cannot list this node's containers and images: {e}"),
            )
        };
        let (containers, images) = tokio::try_join!(
            docker.list_containers(Some(ListContainersOptions {
                all: false,
                ..Default::default()
            })),
            docker.list_images(Some(ListImagesOptions::default())),
        )
        .map_err(unavailable)?;
        let containers = containers
            .into_iter()
            .map(|c| Container {
                id: c.id.unwrap_or_default(),
                names: c.names.unwrap_or_default(),
                labels: c.labels.unwrap_or_default().into_iter().collect(),
            })
            .collect();
        let images = images
            .into_iter()
            .map(|i| Image {
                id: i.id,
                repo_tags: i.repo_tags,
            })
            .collect();
        Ok((containers, images))
    }

    /// A 409 naming the expression, this node's value, and the live nodes whose facts
    /// would satisfy it.
    async fn refusal(&self, failed: &Expr, here: &Node<'_>) -> HookError {
        let value = failed.value_on(here);
        let elsewhere = match failed.kind() {
            Kind::Affinity => "other nodes' containers and images are not known here".to_owned(),
            Kind::Constraint => match self.cluster().await {
                Ok(cluster) => {
                    let holding: Vec<&str> = cluster
                        .iter()
                        .filter(|(id, _)| *id != &self.inner.ctx.node().id)
                        .filter(|(id, p)| {
                            failed.matches(&Node {
                                id,
                                name: &p.name,
                                facts: &p.facts,
                                containers: &[],
                                images: &[],
                            })
                        })
                        .map(|(_, p)| p.name.as_str())
                        .collect();
                    let shown = holding
                        .iter()
                        .take(10)
                        .copied()
                        .collect::<Vec<_>>()
                        .join(", ");
                    match holding.len() {
                        0 => "it holds on no other live node".to_owned(),
                        1..=10 => format!("it holds on {shown}"),
                        n => format!("it holds on {shown} and {} more", n - 10),
                    }
                }
                Err(_) => "the other nodes' facts cannot be read".to_owned(),
            },
        };
        let here_is = match failed.kind() {
            Kind::Constraint => format!("{}: {} is {value}", here.name, failed.key()),
            Kind::Affinity => format!("{} has {value}", here.name),
        };
        HookError::refuse(
            StatusCode::CONFLICT,
            format!("placement: {failed} does not hold on this node ({here_is}); {elsewhere}"),
        )
    }

    // -----------------------------------------------------------------------------------
    // services (Swarm mode)

    async fn service(&self, mut request: ClientRequest) -> Result<ClientRequest, HookError> {
        let Some(body) = request.body.as_deref() else {
            return Ok(request);
        };
        let mut spec: Map<String, Value> = match serde_json::from_str(body) {
            Ok(Value::Object(spec)) => spec,
            _ => {
                return Err(HookError::bad_request(
                    "placement: the service spec is not a JSON object",
                ));
            }
        };
        let container = spec
            .get("TaskTemplate")
            .and_then(|t| t.get("ContainerSpec"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        let env = raw_env(&container)?;
        let labels: Vec<(String, String)> = container
            .get("Labels")
            .and_then(Value::as_object)
            .map(|l| {
                l.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        let (exprs, rest) = parse_all(&env, &labels)?;
        if exprs.is_empty() {
            return Ok(request);
        }
        if let Some(affinity) = exprs.iter().find(|e| e.kind() == Kind::Affinity) {
            return Err(HookError::bad_request(format!(
                "placement: {affinity}: a service's tasks have no containers to be near; Swarm mode services take constraints only"
            )));
        }
        let constraints = self.translate(&exprs).await?;
        // Write back: the constraints appended, the env entries gone, the labels recorded.
        let template = object_at(&mut spec, "TaskTemplate");
        let placement = object_at(template, "Placement");
        let list = placement
            .entry("Constraints")
            .or_insert_with(|| Value::Array(Vec::new()));
        if !list.is_array() {
            *list = Value::Array(Vec::new());
        }
        if let Value::Array(list) = list {
            for c in &constraints {
                if !list.iter().any(|v| v.as_str() == Some(c)) {
                    list.push(Value::String(c.clone()));
                }
            }
        }
        let container = object_at(template, "ContainerSpec");
        if env.len() != rest.len() {
            set_env(container, rest);
        }
        let labels = object_at(container, "Labels");
        for (key, value) in expr::to_labels(&exprs) {
            labels.insert(key, Value::String(value));
        }
        request.body = Some(Value::Object(spec).to_string());
        info!(?constraints, "service placement translated");
        Ok(request)
    }

    /// Swarm mode constraints for `exprs`: what Swarm checks itself (literals on facts, as
    /// `node.labels.fact.*`), and the rest resolved over every node's facts into node ids.
    async fn translate(&self, exprs: &[Expr]) -> Result<Vec<String>, HookError> {
        let mut out = Vec::new();
        let mut resolve: Vec<&Expr> = Vec::new();
        for e in exprs {
            match expr::swarm_constraint(e) {
                Some(c) => out.push(c),
                None => resolve.push(e),
            }
        }
        if resolve.is_empty() {
            return Ok(out);
        }
        let docker = self.inner.ctx.docker()?;
        let swarm_nodes = docker
            .list_nodes(None::<ListNodesOptions>)
            .await
            .map_err(|e| {
                HookError::refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "placement: cannot list the swarm's nodes (is this engine a manager?): {e}"
                    ),
                )
            })?;
        let all: Vec<String> = swarm_nodes.iter().filter_map(|n| n.id.clone()).collect();
        let cluster = self.cluster().await?;
        // Only nodes that publish facts can qualify; by their Swarm node ids.
        let known: Vec<(&String, &Published)> = cluster
            .values()
            .filter_map(|p| Some((p.swarm_node_id.as_ref()?, p)))
            .filter(|(id, _)| all.contains(id))
            .collect();
        let nodes: Vec<Node<'_>> = known
            .iter()
            .map(|(id, p)| Node {
                id,
                name: &p.name,
                facts: &p.facts,
                containers: &[],
                images: &[],
            })
            .collect();
        for e in resolve {
            let selection = expr::select(std::slice::from_ref(e), &nodes);
            if selection.unsatisfied.is_some() {
                return Err(HookError::refuse(
                    StatusCode::CONFLICT,
                    format!(
                        "placement: {e} holds on no node of the swarm ({})",
                        describe_values(e, &nodes)
                    ),
                ));
            }
            if !selection.dropped.is_empty() {
                info!(expression = %e, "soft expression holds on no node of the swarm; ignored");
                continue;
            }
            let chosen: Vec<&str> = selection.nodes.iter().map(|n| n.id).collect();
            if let [only] = chosen.as_slice() {
                out.push(format!("node.id=={only}"));
            } else {
                for id in &all {
                    if !chosen.contains(&id.as_str()) {
                        out.push(format!("node.id!={id}"));
                    }
                }
            }
        }
        Ok(out)
    }

    // -----------------------------------------------------------------------------------
    // Swarm node labels

    async fn labels_loop(&self, stop: Stop) {
        loop {
            // Only a manager can change nodes: wait until this engine is one.
            let manager = self
                .inner
                .facts
                .borrow()
                .as_ref()
                .is_some_and(|p| p.manager);
            if !manager {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
            let store = self.inner.ctx.store().clone();
            let holder = self.inner.ctx.node().name.clone();
            let leadership = tokio::select! {
                () = stop.cancelled() => return,
                won = campaign(store, LABELS_ROLE, &holder, Duration::from_secs(10)) => won,
            };
            let leadership = match leadership {
                Ok(leadership) => leadership,
                Err(e) => {
                    debug!(error = %e, "cannot campaign for the label publisher's role yet");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            info!("publishing the swarm's fact labels");
            // Any node's facts changing is seen at once; the timer also repairs labels
            // someone changed by hand, and covers a watch that broke.
            let mut changes = self
                .inner
                .ctx
                .store()
                .watch(FACTS_PREFIX, 0)
                .await
                .map_err(|e| debug!(error = %e, "cannot watch the published facts; polling"))
                .ok();
            loop {
                if let Err(e) = self.sync_labels().await {
                    warn!(error = %e, "could not update the swarm's fact labels");
                }
                let changed = async {
                    match changes.as_mut() {
                        Some(watch) => watch.next().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = stop.cancelled() => {
                        let _ = leadership.resign().await;
                        return;
                    }
                    () = leadership.lost() => break,
                    event = changed => {
                        if matches!(event, Some(Ok(_))) {
                            // Several nodes often change together (a load fact): one sync.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            while let Some(watch) = changes.as_mut() {
                                match watch.next().now_or_never() {
                                    Some(Some(Ok(_))) => {}
                                    Some(_) => changes = None,
                                    None => break,
                                }
                            }
                        } else {
                            changes = None;
                        }
                    }
                    () = tokio::time::sleep(self.inner.options.facts.refresh) => {}
                }
            }
        }
    }

    /// Makes every swarm node's `fact.*` labels what its published facts say (none for a
    /// node that publishes none); other labels are left alone.
    async fn sync_labels(&self) -> Result<(), String> {
        let docker = self.inner.ctx.docker().map_err(|e| e.to_string())?;
        let cluster = self.cluster().await.map_err(|e| e.message().to_owned())?;
        let by_swarm_id: HashMap<&str, &Published> = cluster
            .values()
            .filter_map(|p| Some((p.swarm_node_id.as_deref()?, p)))
            .collect();
        let nodes = docker
            .list_nodes(None::<ListNodesOptions>)
            .await
            .map_err(|e| format!("listing the swarm's nodes: {e}"))?;
        for node in nodes {
            let (Some(id), Some(mut spec), Some(version)) = (
                node.id.clone(),
                node.spec.clone(),
                node.version.as_ref().and_then(|v| v.index),
            ) else {
                continue;
            };
            let current = spec.labels.clone().unwrap_or_default();
            let mut wanted: HashMap<String, String> = current
                .iter()
                .filter(|(k, _)| !k.starts_with(expr::SWARM_FACT_LABEL_PREFIX))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            if let Some(published) = by_swarm_id.get(id.as_str()) {
                for (k, v) in &published.facts {
                    wanted.insert(format!("{}{k}", expr::SWARM_FACT_LABEL_PREFIX), v.clone());
                }
            }
            if wanted == current {
                continue;
            }
            spec.labels = Some(wanted);
            let version = i64::try_from(version).unwrap_or(i64::MAX);
            docker
                .update_node(&id, spec, UpdateNodeOptions { version })
                .await
                .map_err(|e| format!("updating node {id}: {e}"))?;
            debug!(node = %id, "fact labels updated");
        }
        Ok(())
    }
}

/// This engine's Swarm mode node id and whether it manages the swarm.
async fn swarm_of(docker: &bollard::Docker) -> (Option<String>, bool) {
    match tokio::time::timeout(Duration::from_secs(10), docker.info()).await {
        Ok(Ok(info)) => {
            let swarm = info.swarm.unwrap_or_default();
            let id = swarm.node_id.filter(|id| !id.is_empty());
            (id, swarm.control_available.unwrap_or(false))
        }
        _ => (None, false),
    }
}

/// A create's or container spec's `Env`, as the strings sent.
fn raw_env(object: &Map<String, Value>) -> Result<Vec<String>, HookError> {
    match object.get("Env") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(entries)) => entries
            .iter()
            .map(|e| {
                e.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| HookError::bad_request("placement: Env entries must be strings"))
            })
            .collect(),
        Some(_) => Err(HookError::bad_request("placement: Env must be a list")),
    }
}

fn set_env(object: &mut Map<String, Value>, env: Vec<String>) {
    object.insert(
        "Env".into(),
        Value::Array(env.into_iter().map(Value::String).collect()),
    );
}

/// The object at `key` of `object`, made (or replaced when not an object) if needed.
fn object_at<'m>(object: &'m mut Map<String, Value>, key: &str) -> &'m mut Map<String, Value> {
    let slot = object
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    match slot {
        Value::Object(map) => map,
        // Made an object just above.
        _ => unreachable!("an object was put there"),
    }
}

/// The expressions of labels (first, as Swarm classic read them) and env, and the env
/// without its expression entries; a 400 naming a malformed one.
fn parse_all(
    env: &[String],
    labels: &[(String, String)],
) -> Result<(Vec<Expr>, Vec<String>), HookError> {
    let bad = |e: expr::ExprError| HookError::bad_request(format!("placement: {e}"));
    let mut exprs =
        expr::from_labels(labels.iter().map(|(k, v)| (k.as_str(), v.as_str()))).map_err(bad)?;
    let (from_env, rest) = expr::from_env(env).map_err(bad)?;
    for e in from_env {
        if !exprs.contains(&e) {
            exprs.push(e);
        }
    }
    Ok((exprs, rest))
}

/// What the nodes have for an expression's key, for a refusal: `a: x86_64, b: aarch64`.
fn describe_values(e: &Expr, nodes: &[Node<'_>]) -> String {
    if nodes.is_empty() {
        return "no node publishes facts".into();
    }
    // A message, not a report: ten nodes say enough.
    let shown: Vec<String> = nodes
        .iter()
        .take(10)
        .map(|n| format!("{}: {}", n.name, e.value_on(n)))
        .collect();
    match nodes.len().saturating_sub(shown.len()) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

#[async_trait]
impl Adapter for Placement {
    async fn pre_hook(&self, request: ClientRequest) -> Result<ClientRequest, HookError> {
        let path = request.docker_path();
        if request.method != "POST" {
            return Ok(request);
        }
        if path.endpoint() == "/containers/create" {
            return self.create(request).await;
        }
        if path.endpoint() == "/services/create" || path.matches("/services/*/update") {
            return self.service(request).await;
        }
        Ok(request)
    }
}
