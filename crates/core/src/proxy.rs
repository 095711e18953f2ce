//! One request's path through the proxy:
//! match → pre chain → Docker → post chain → respond, with the streaming bypasses.
//!
//! - With endpoints configured, the path is matched as Docker routes it (percent-decoded,
//!   see [`crate::target`]) and respelled canonically for hooks and Docker; a path Docker
//!   would read another way is refused with `400`.
//! - No hook matches: headers are cleaned of hop-by-hop fields and both bodies stream.
//! - A request body that is not JSON (a build context, an archive) streams to Docker
//!   untouched; its pre-hooks still run, told that the body was withheld (they may refuse
//!   the request or rewrite its query string). A JSON body (or none) is collected, bounded,
//!   for the hooks.
//! - An upgrade (`101`: attach, exec, BuildKit sessions) becomes a two-way byte pipe with
//!   half-close; post-hooks are skipped.
//! - A streamed response (events, logs, build, pull, wait...) or a binary one streams
//!   through; post-hooks are skipped (counted in `powerstrip_hooks_skipped_total`). An
//!   error document from a streaming endpoint is not a stream: post-hooks see it.
//! - Otherwise Docker's answer is collected, bounded, and handed to the post-hooks, whose
//!   final `Code`, `ContentType` and `Body` the client receives.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use powerstrip_adapter::{ClientRequest, ServerResponse, WithheldBody};
use powerstrip_protocol::HookType;
use tokio::sync::Notify;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, Span, debug, field, info, info_span, warn};

use crate::body::{Collect, ProxyBody, collect_bounded, empty, full};
use crate::chains::{Chains, Hook, Matched, run_post, run_pre_as, unwind};
use crate::error::{ProxyError, root_cause};
use crate::headers::{
    is_json, is_text, is_upgrade, media_type, set_content_length, strip_hop_by_hop,
};
use crate::metrics::{Metrics, SkipLabels};
use crate::streaming::is_streaming_endpoint;
use crate::target;
use crate::upstream::{Affinity, Upstream};

/// The largest body handed to hooks by default (request or response), 32 MiB.
pub const DEFAULT_MAX_HOOK_BODY: usize = 32 << 20;

/// Bounds on what the proxy buffers.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The largest JSON body collected for hooks: a bigger request gets `413`, a bigger
    /// Docker answer on a post-hooked endpoint gets `502`.
    pub max_hook_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_hook_body: DEFAULT_MAX_HOOK_BODY,
        }
    }
}

/// The proxy: Docker's address, the adapter chains and the limits. One value serves every
/// connection.
#[derive(Debug)]
pub struct Proxy {
    /// The client to Docker.
    upstream: Upstream,
    /// The chains, built from the configuration; replaced whole on reload, so a request
    /// runs entirely under the configuration it started with.
    chains: ArcSwap<Chains>,
    /// Wakes whoever follows the configuration (the event follower) after a reload.
    reloaded: Notify,
    /// Bounds on buffering.
    limits: Limits,
    /// Numbers requests for the logs.
    next_id: AtomicU64,
    /// Upgraded sessions (attach, exec), which outlive their HTTP exchange: shutdown
    /// waits for them.
    sessions: TaskTracker,
    /// What is counted.
    metrics: Arc<Metrics>,
}

/// What a request body is, as far as hooks are concerned.
enum RequestBody {
    /// No body: hooks see `"Body": null`.
    Empty,
    /// A JSON body: collected and handed to hooks.
    Json,
    /// Anything else: streamed untouched; pre-hooks see `"Body": null` and `BodyWithheld`.
    Opaque,
}

impl Proxy {
    /// A proxy in front of `upstream` running `chains`.
    pub fn new(upstream: Upstream, chains: Chains, limits: Limits) -> Self {
        Proxy {
            upstream,
            chains: ArcSwap::from_pointee(chains),
            reloaded: Notify::new(),
            limits,
            next_id: AtomicU64::new(1),
            sessions: TaskTracker::new(),
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// Docker's address.
    pub fn docker_address(&self) -> &str {
        self.upstream.address()
    }

    /// The client to Docker.
    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// The chains requests run now.
    pub fn chains(&self) -> Arc<Chains> {
        self.chains.load_full()
    }

    /// Applies new chains to requests from now on; requests in flight finish under the
    /// chains they started with.
    pub fn replace_chains(&self, chains: Chains) {
        self.chains.store(Arc::new(chains));
        self.reloaded.notify_waiters();
    }

    /// Resolves at the next [`Proxy::replace_chains`].
    pub async fn chains_replaced(&self) {
        self.reloaded.notified().await;
    }

    /// What the proxy counts.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The upgraded sessions still open (shutdown waits for them).
    pub fn sessions(&self) -> &TaskTracker {
        &self.sessions
    }

    /// Answers one request that arrived on a client connection holding `affinity` (its
    /// Docker connection). Never fails: every error becomes a Docker-shaped response.
    pub async fn handle(
        &self,
        mut request: Request<Incoming>,
        affinity: &Affinity,
    ) -> Response<ProxyBody> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let span = info_span!(
            "request",
            id,
            method = %request.method(),
            path = %request.uri().path(),
            patterns = field::Empty,
            status = field::Empty,
        );
        // The clock is read only when the final log line will be written.
        let started = tracing::enabled!(tracing::Level::INFO).then(Instant::now);
        let recorder = span.clone();
        let metrics = &self.metrics;
        // Counted down on drop, also when the client goes away mid-request.
        let in_flight = InFlight::enter(&metrics.in_flight);
        async move {
            let chains = self.chains.load_full();
            let (matched, refused) = match route(&chains, &mut request) {
                Ok(matched) => (matched, None),
                Err(err) => (Matched::default(), Some(err)),
            };
            let hooked = !matched.is_empty();
            let label = matched.label.clone();
            if let Some(label) = &label {
                recorder.record("patterns", field::display(label));
            }
            let forwarded = match refused {
                Some(err) => Err(err),
                None => self.forward(request, &matched, affinity).await,
            };
            let response = match forwarded {
                Ok(response) => response,
                Err(err) => {
                    if matches!(err, ProxyError::DockerUnreachable { .. }) {
                        metrics.upstream_connect_errors.inc();
                    }
                    warn!(error = %err, "request failed");
                    err.into_response()
                }
            };
            let status = response.status().as_u16();
            recorder.record("status", status);
            metrics.count_request(label, status);
            drop(in_flight);
            if let Some(started) = started {
                let elapsed_ms = started.elapsed().as_secs_f64() * 1e3;
                if hooked {
                    info!(elapsed_ms, "done");
                } else {
                    debug!(elapsed_ms, "done");
                }
            }
            response
        }
        .instrument(span)
        .await
    }

    async fn forward(
        &self,
        mut request: Request<Incoming>,
        matched: &Matched<'_>,
        affinity: &Affinity,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let upgrade = is_upgrade(request.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        strip_hop_by_hop(&mut parts.headers, upgrade);
        if matched.is_empty() {
            // The common path stays small; the hooked one lives in its own allocation.
            let request = Request::from_parts(parts, ProxyBody::Stream(body));
            let response = self.upstream.send_on(affinity, request).await?;
            return self.relay(response, client_upgrade);
        }
        Box::pin(self.forward_hooked(parts, body, client_upgrade, matched, affinity)).await
    }

    /// Docker's answer as it is: an upgrade spliced both ways, anything else streamed.
    fn relay(
        &self,
        mut response: Response<ProxyBody>,
        client_upgrade: Option<OnUpgrade>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let Some(client_upgrade) = client_upgrade else {
                return Err(ProxyError::DockerBody(
                    "Docker switched protocols on a request that did not ask to".into(),
                ));
            };
            let docker_upgrade = hyper::upgrade::on(&mut response);
            let metrics = self.metrics.clone();
            self.sessions.spawn(
                async move {
                    metrics.sessions.inc();
                    metrics.sessions_total.inc();
                    splice(client_upgrade, docker_upgrade).await;
                    metrics.sessions.dec();
                }
                .instrument(Span::current()),
            );
            let (mut parts, _) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers, true);
            return Ok(Response::from_parts(parts, empty()));
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        Ok(Response::from_parts(parts, body))
    }

    /// A request with hooks: its JSON body through the pre-hooks, Docker's complete answer
    /// through the post-hooks, unwinds when it fails.
    async fn forward_hooked(
        &self,
        mut parts: http::request::Parts,
        body: Incoming,
        client_upgrade: Option<OnUpgrade>,
        matched: &Matched<'_>,
        affinity: &Affinity,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let upgrade = client_upgrade.is_some();
        // The request as Docker receives it, kept for the post-hooks.
        let mut docker_request: Option<ClientRequest> = None;
        // Pre-hooks that ran and want to hear if the request fails.
        let mut unwinders: &[Arc<Hook>] = &[];
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let method = parts.method.as_str();
        // A body that is not JSON streams to Docker unseen; the hooks are told it exists.
        let (original, stream) = match classify(&parts.headers, &body) {
            RequestBody::Opaque => {
                let withheld = withheld_body(&parts.headers);
                let request = ClientRequest::new(method, target, None).with_withheld_body(withheld);
                (request, Some(body))
            }
            RequestBody::Json => {
                let text = self.collect_request(&parts.headers, body).await?;
                (ClientRequest::new(method, target, Some(text)), None)
            }
            RequestBody::Empty => (ClientRequest::new(method, target, None), None),
        };
        let modified = if matched.pre.is_empty() {
            original
        } else {
            let refused =
                match run_pre_as(&matched.pre, original, method, target, &self.metrics).await {
                    Ok(modified) => apply_request(&mut parts.uri, &mut parts.headers, &modified)
                        .map(|()| modified),
                    Err(err) => Err(err),
                };
            let modified = match refused {
                Ok(modified) => modified,
                Err(err) => {
                    if let Some(stream) = stream {
                        discard(stream);
                    }
                    return Err(err);
                }
            };
            if matched.pre.iter().any(|h| h.unwinds()) {
                unwinders = &matched.pre;
            }
            modified
        };
        // Post-hooks and unwinds need the request as Docker receives it.
        let keep = !matched.post.is_empty() || !unwinders.is_empty();
        let body: ProxyBody = match stream {
            Some(stream) => {
                docker_request = keep.then_some(modified);
                ProxyBody::Stream(stream)
            }
            None => {
                let bytes = if keep {
                    let bytes = modified
                        .body
                        .as_deref()
                        .map(|t| Bytes::copy_from_slice(t.as_bytes()));
                    docker_request = Some(modified);
                    bytes.unwrap_or_default()
                } else {
                    Bytes::from(modified.body.unwrap_or_default())
                };
                if upgrade {
                    // hyper's client sends it as it is; the lean client (everything else)
                    // writes the length of what it sends.
                    set_content_length(&mut parts.headers, bytes.len());
                }
                full(bytes)
            }
        };

        // Post-hooks never see an answer Docker streams.
        let streams = is_streaming_endpoint(&parts.method, parts.uri.path());
        let response = match self
            .upstream
            .send_on(affinity, Request::from_parts(parts, body))
            .await
        {
            Ok(response) => response,
            Err(err) => {
                if let Some(request) = docker_request.as_ref().filter(|_| !unwinders.is_empty()) {
                    unwind(unwinders, request, &err.summary(), &self.metrics).await;
                }
                return Err(err);
            }
        };
        if response.status().as_u16() >= 400
            && let Some(request) = docker_request.as_ref().filter(|_| !unwinders.is_empty())
        {
            let reason = format!("Docker answered {}", response.status());
            unwind(unwinders, request, &reason, &self.metrics).await;
        }

        let Some(post_request) = docker_request.filter(|_| !matched.post.is_empty()) else {
            return self.relay(response, client_upgrade);
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            self.skipped(&matched.post, Skip::Upgraded);
            return self.relay(response, client_upgrade);
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers, false);
        if let Err(skip) = post_hookable(streams, parts.status, &parts.headers, &body) {
            self.skipped(&matched.post, skip);
            return Ok(Response::from_parts(parts, body));
        }

        let server_response = ServerResponse {
            content_type: parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            body: self.collect_response(body).await?,
            code: parts.status.as_u16(),
        };
        let modified =
            run_post(&matched.post, &post_request, server_response, &self.metrics).await?;
        Ok(apply_response(parts, modified))
    }

    /// Logs and counts post-hooks that cannot run on this answer.
    fn skipped(&self, hooks: &[Arc<Hook>], skip: Skip) {
        debug!("post-hooks skipped: {}", skip.explain());
        for hook in hooks {
            self.metrics
                .hooks_skipped
                .get_or_create(&SkipLabels {
                    adapter: hook.name().to_owned(),
                    hook: HookType::PostHook.as_str(),
                    reason: skip.as_str(),
                })
                .inc();
        }
    }

    /// Collects a JSON request body for the hooks, refusing it beyond the limit.
    async fn collect_request(
        &self,
        headers: &HeaderMap,
        body: Incoming,
    ) -> Result<String, ProxyError> {
        let limit = self.limits.max_hook_body;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(ProxyError::RequestTooLarge { limit });
        }
        let bytes = match collect_bounded(body, limit).await {
            Ok(bytes) => bytes,
            Err(Collect::TooLarge) => return Err(ProxyError::RequestTooLarge { limit }),
            Err(Collect::Failed(err)) => {
                return Err(ProxyError::BadRequestBody(format!(
                    "could not read it: {}",
                    root_cause(err.as_ref())
                )));
            }
        };
        String::from_utf8(bytes.into()).map_err(|_| {
            ProxyError::BadRequestBody("it is declared as JSON but is not valid UTF-8".into())
        })
    }

    /// Collects Docker's answer for the post-hooks (`None` when it has no body).
    async fn collect_response(&self, body: ProxyBody) -> Result<Option<String>, ProxyError> {
        let limit = self.limits.max_hook_body;
        let bytes = match collect_bounded(body, limit).await {
            Ok(bytes) => bytes,
            Err(Collect::TooLarge) => return Err(ProxyError::ResponseTooLarge { limit }),
            Err(Collect::Failed(err)) => {
                return Err(ProxyError::DockerBody(root_cause(err.as_ref())));
            }
        };
        if bytes.is_empty() {
            return Ok(None);
        }
        String::from_utf8(bytes.into())
            .map(Some)
            .map_err(|_| ProxyError::ResponseNotText("its body is not valid UTF-8".into()))
    }
}

/// One request in `powerstrip_requests_in_flight`, for as long as it lives.
struct InFlight<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a prometheus_client::metrics::gauge::Gauge) -> Self {
        gauge.inc();
        InFlight(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The service one client connection is served by: the proxy, and the Docker connection
/// this client connection keeps between its requests.
pub(crate) struct ConnectionService {
    proxy: Arc<Proxy>,
    affinity: Arc<Affinity>,
}

impl ConnectionService {
    pub(crate) fn new(proxy: Arc<Proxy>) -> Self {
        let affinity = Arc::new(proxy.upstream().affinity());
        ConnectionService { proxy, affinity }
    }
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ProxyBody>, Infallible>> + Send>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let (proxy, affinity) = (self.proxy.clone(), self.affinity.clone());
        Box::pin(async move { Ok(proxy.handle(request, &affinity).await) })
    }
}

/// The hooks a request runs, matched against the path Docker will route (see
/// [`crate::target`]); a path spelled otherwise than canonically is respelled in the
/// request, so hooks and Docker see what was matched. With no endpoint configured, every
/// request passes exactly as sent.
fn route<'c>(
    chains: &'c Chains,
    request: &mut Request<Incoming>,
) -> Result<Matched<'c>, ProxyError> {
    if chains.is_empty() {
        return Ok(Matched::default());
    }
    let (matched, respelled) = {
        let uri = request.uri();
        let canonical = target::canonical(uri.path()).map_err(|reason| ProxyError::BadPath {
            path: shorten(uri.path()),
            reason,
        })?;
        let matched = chains.matched(request.method().as_str(), &canonical.routed);
        let respelled = match canonical.path {
            Cow::Borrowed(_) => None,
            Cow::Owned(path) => Some(match uri.query() {
                Some(query) => format!("{path}?{query}"),
                None => path,
            }),
        };
        (matched, respelled)
    };
    if let Some(target) = respelled {
        let mut parts = request.uri().clone().into_parts();
        // Only characters a request target may hold: canonical() escaped the others.
        parts.path_and_query = Some(target.parse().map_err(|e| {
            ProxyError::BadRequestBody(format!("respelled request target {target:?}: {e}"))
        })?);
        *request.uri_mut() = Uri::from_parts(parts).map_err(|e| {
            ProxyError::BadRequestBody(format!("respelled request target {target:?}: {e}"))
        })?;
    }
    Ok(matched)
}

/// A client's text for a message: at most 200 characters.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

fn classify(headers: &HeaderMap, body: &Incoming) -> RequestBody {
    if body.is_end_stream() {
        return RequestBody::Empty;
    }
    match media_type(headers) {
        Some(media) if is_json(media) => RequestBody::Json,
        _ => RequestBody::Opaque,
    }
}

/// Applies a rewritten query string and sets a JSON content type for a body the client
/// did not send.
fn apply_request(
    uri: &mut Uri,
    headers: &mut HeaderMap,
    modified: &ClientRequest,
) -> Result<(), ProxyError> {
    if uri.path_and_query().map(|pq| pq.as_str()) != Some(modified.request.as_str()) {
        // run_pre checked that the path is unchanged and the target parses.
        *uri = modified
            .request
            .parse()
            .map_err(|e| ProxyError::BadRequestBody(format!("rewritten request target: {e}")))?;
    }
    if modified.body.is_some() && !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    Ok(())
}

/// Why post-hooks did not run on an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Skip {
    /// The connection switched protocols (attach, exec).
    Upgraded,
    /// Docker streams this endpoint's answer (and it is not an error document).
    Streamed,
    /// The answer is not JSON or text.
    Binary,
    /// The answer has a body but no content type.
    Untyped,
}

impl Skip {
    /// The `reason` label of `powerstrip_hooks_skipped_total`.
    fn as_str(self) -> &'static str {
        match self {
            Skip::Upgraded => "upgraded",
            Skip::Streamed => "streamed",
            Skip::Binary => "binary",
            Skip::Untyped => "untyped",
        }
    }

    fn explain(self) -> &'static str {
        match self {
            Skip::Upgraded => "the connection was upgraded",
            Skip::Streamed => "Docker streams this endpoint's response",
            Skip::Binary => "the response body is not JSON or text",
            Skip::Untyped => "the response has a body but no content type",
        }
    }
}

/// Whether Docker's answer can be handed to post-hooks: a complete JSON or text document
/// (or no body at all) from an endpoint that does not stream. An error answer (a status of
/// 400 or more with a JSON body) is a document whatever the endpoint: Docker refuses a
/// streaming call before it starts streaming.
fn post_hookable(
    streams: bool,
    status: StatusCode,
    headers: &HeaderMap,
    body: &ProxyBody,
) -> Result<(), Skip> {
    let media = media_type(headers);
    let json = media.is_some_and(is_json);
    if streams && !(status.as_u16() >= 400 && json) {
        return Err(Skip::Streamed);
    }
    match media {
        None if body.is_end_stream() => Ok(()),
        None => Err(Skip::Untyped),
        Some(media) if json || is_text(media) => Ok(()),
        Some(_) => Err(Skip::Binary),
    }
}

/// The most of a refused request's body read (and dropped) while its answer goes out.
const DISCARD_MAX_BYTES: usize = 8 << 20;
/// The longest a refused request's body is read (and dropped) while its answer goes out.
const DISCARD_MAX_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads and drops what the client still sends of a body the proxy answered without
/// forwarding (a refused upload), up to a bound in bytes and time. A client that writes
/// its body before it reads (the docker CLI streaming a build context) then reads the
/// refusal instead of failing on a closed connection; beyond the bound the connection
/// closes. Go's server does the same with a refused request's body. Nothing read is kept.
fn discard(body: Incoming) {
    use http_body_util::BodyExt as _;
    tokio::spawn(async move {
        let mut body = body;
        let mut left = DISCARD_MAX_BYTES;
        let drain = async {
            while let Some(Ok(frame)) = body.frame().await {
                let Some(data) = frame.data_ref() else {
                    continue;
                };
                match left.checked_sub(data.len()) {
                    Some(rest) if rest > 0 => left = rest,
                    _ => break,
                }
            }
        };
        let _ = tokio::time::timeout(DISCARD_MAX_TIME, drain).await;
    });
}

/// What hooks are told about a request body that streams to Docker unseen.
fn withheld_body(headers: &HeaderMap) -> WithheldBody {
    WithheldBody {
        content_type: headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned(),
        content_length: headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok()),
    }
}

/// Builds the client's response from the last post-hook's `Code`, `ContentType` and `Body`,
/// keeping Docker's other headers.
fn apply_response(
    mut parts: http::response::Parts,
    modified: ServerResponse,
) -> Response<ProxyBody> {
    // run_post checked that Code is a status and ContentType a header value.
    parts.status = StatusCode::from_u16(modified.code).unwrap_or(StatusCode::BAD_GATEWAY);
    let unchanged = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == modified.content_type.as_bytes());
    if !unchanged {
        parts.headers.remove(header::CONTENT_TYPE);
        if !modified.content_type.is_empty()
            && let Ok(value) = HeaderValue::from_str(&modified.content_type)
        {
            parts.headers.insert(header::CONTENT_TYPE, value);
        }
    }
    let bytes = Bytes::from(modified.body.unwrap_or_default());
    let bodyless = parts.status.is_informational()
        || parts.status == StatusCode::NO_CONTENT
        || parts.status == StatusCode::NOT_MODIFIED;
    if bodyless {
        parts.headers.remove(header::CONTENT_LENGTH);
    } else {
        set_content_length(&mut parts.headers, bytes.len());
    }
    Response::from_parts(parts, full(bytes))
}

/// Pipes an upgraded client connection and Docker's both ways until both sides are done;
/// an EOF from either side is passed on as a half-close (so `docker run -i` sees stdin end).
async fn splice(client: OnUpgrade, docker: OnUpgrade) {
    let (client, docker) = match tokio::try_join!(client, docker) {
        Ok(pair) => pair,
        Err(err) => {
            warn!(error = %err, "upgrade failed");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut docker = TokioIo::new(docker);
    match tokio::io::copy_bidirectional(&mut client, &mut docker).await {
        Ok((to_docker, to_client)) => debug!(to_docker, to_client, "upgraded session ended"),
        Err(err) => debug!(error = %err, "upgraded session ended with an error"),
    }
}
