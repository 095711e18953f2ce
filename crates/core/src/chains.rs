//! Adapter chains: built once from a validated configuration, resolved per request, and
//! run in order with timeouts and failure policies.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, OnceLock};

use prometheus_client::metrics::histogram::Histogram;
use std::time::Duration;

use quanta::Instant;

use powerstrip_adapter::builtin::Builtin;
use powerstrip_adapter::context::{Context, Scope};
use powerstrip_adapter::{Adapter, ClientRequest, HookError, HookErrorKind, ServerResponse};
use powerstrip_config::{
    AdapterKind, Config, ConfigError, ConfigErrors, EventFilter, FailurePolicy, Pattern, PatternSet,
};
use powerstrip_protocol::HookType;
use tracing::{info, warn};

use crate::error::{ProxyError, humanize};
use crate::http_adapter::HttpAdapter;
use crate::metrics::{HookLabels, HookOutcomeLabels, Metrics};

/// The in-process adapters a binary links, by the name configs use in `builtin = "..."`.
/// The proxy knows no adapter by name: whoever embeds it registers them here.
#[derive(Clone, Debug, Default)]
pub struct Builtins {
    /// By name.
    builtins: BTreeMap<String, Builtin>,
}

impl Builtins {
    /// No builtins.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a builtin adapter under its name.
    pub fn register(&mut self, builtin: Builtin) -> &mut Self {
        self.builtins.insert(builtin.name().to_owned(), builtin);
        self
    }

    /// The registered builtins, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &Builtin> {
        self.builtins.values()
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.builtins.keys().map(String::as_str)
    }
}

/// One configured adapter, ready to call.
pub struct Hook {
    /// The adapter's name in the configuration (what logs and errors show).
    name: Arc<str>,
    /// The adapter itself: in-process, or the HTTP client for a remote one.
    adapter: Arc<dyn Adapter>,
    /// How long one call may take.
    timeout: Duration,
    /// What a failure (not a refusal) does to the request.
    failure: FailurePolicy,
    /// Whether it is told when a request it pre-hooked did not take effect.
    unwind: bool,
    /// The Docker events it receives.
    events: Vec<EventFilter>,
    /// Its `powerstrip_hook_duration_seconds` series (pre, post, unwind, event), resolved
    /// on first use.
    histograms: OnceLock<[Histogram; 4]>,
}

impl Hook {
    /// The adapter's configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether this adapter is told when a request it pre-hooked did not take effect.
    pub fn unwinds(&self) -> bool {
        self.unwind
    }

    /// The Docker events this adapter subscribed to.
    pub fn events(&self) -> &[EventFilter] {
        &self.events
    }

    /// True when this adapter wants events of this type and action.
    pub fn wants_event(&self, kind: &str, action: &str) -> bool {
        self.events.iter().any(|f| f.matches(kind, action))
    }

    /// Hands one Docker event to the adapter, within its timeout.
    pub async fn deliver(&self, event: &powerstrip_adapter::DockerEvent) -> Result<(), HookError> {
        call(self, self.adapter.event(event)).await
    }
}

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hook")
            .field("name", &self.name)
            .field("timeout", &self.timeout)
            .field("failure", &self.failure)
            .finish_non_exhaustive()
    }
}

/// The chains of one endpoint pattern.
#[derive(Debug)]
struct Route {
    /// The pattern as written: the `pattern` label of the request metric.
    label: Arc<String>,
    pre: Vec<Arc<Hook>>,
    post: Vec<Arc<Hook>>,
}

/// Every endpoint's chains, in file order.
#[derive(Debug, Default)]
pub struct Chains {
    /// Every endpoint's pattern, compiled together; indices are positions in `routes`.
    set: PatternSet,
    routes: Vec<Route>,
    /// Adapters that subscribed to Docker events, whether or not an endpoint uses them.
    subscribers: Vec<Arc<Hook>>,
    /// The background tasks of the in-process adapters built for these chains: they stop
    /// when the chains are dropped (replaced by a reload, once the requests that started
    /// under them are done).
    _scope: Option<Scope>,
}

/// Limits that apply while building chains.
#[derive(Clone, Copy, Debug)]
pub struct ChainOptions {
    /// The largest answer read from an HTTP adapter.
    pub max_answer: usize,
}

/// What one request runs: the chains of every matching pattern, concatenated in file order
/// (borrowed as they are when a single pattern matches).
#[derive(Debug, Default)]
pub struct Matched<'a> {
    /// The patterns that matched, comma-separated, in file order; `None` when none did.
    pub label: Option<Arc<String>>,
    /// The pre-hooks to run, in order.
    pub pre: Cow<'a, [Arc<Hook>]>,
    /// The post-hooks to run, in order.
    pub post: Cow<'a, [Arc<Hook>]>,
}

impl Matched<'_> {
    /// True when no hook runs for this request.
    pub fn is_empty(&self) -> bool {
        self.pre.is_empty() && self.post.is_empty()
    }
}

impl Chains {
    /// Builds every adapter of `config` once and the chains that use them. In-process
    /// adapters are handed `ctx` (each with a state directory of its own, and background
    /// tasks that stop when these chains are dropped). Unknown builtins, bad builtin
    /// options and unsupported URLs are reported as configuration errors with their line.
    pub fn build(
        config: &Config,
        builtins: &Builtins,
        options: ChainOptions,
        ctx: &Context,
    ) -> Result<Chains, ConfigErrors> {
        let (ctx, scope) = ctx.scope();
        let mut errors = Vec::new();
        let mut hooks: HashMap<&str, Arc<Hook>> = HashMap::new();
        for def in &config.adapters {
            let error = |message: String| ConfigError {
                origin: config.origin.clone(),
                line: Some(def.line),
                message,
            };
            let adapter: Arc<dyn Adapter> = match &def.kind {
                AdapterKind::Http { url } => {
                    match HttpAdapter::new(url, def.ca.as_deref(), options.max_answer) {
                        Ok(adapter) => Arc::new(adapter),
                        Err(e) => {
                            errors.push(error(format!("adapter {:?}: {e}", def.name)));
                            continue;
                        }
                    }
                }
                AdapterKind::Builtin { builtin, options } => {
                    let Some(factory) = builtins.builtins.get(builtin) else {
                        let known: Vec<&str> = builtins.names().collect();
                        errors.push(error(format!(
                            "adapter {:?}: unknown builtin {builtin:?} (this build has: {})",
                            def.name,
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.join(", ")
                            }
                        )));
                        continue;
                    };
                    match factory.build(options, &ctx.for_adapter(&def.name)) {
                        Ok(adapter) => adapter,
                        Err(e) => {
                            errors.push(error(format!("adapter {:?} ({builtin}): {e}", def.name)));
                            continue;
                        }
                    }
                }
            };
            let unwind = match &def.kind {
                AdapterKind::Http { .. } => def.unwind,
                AdapterKind::Builtin { builtin, .. } => {
                    builtins.builtins.get(builtin).is_some_and(Builtin::unwinds)
                }
            };
            hooks.insert(
                &def.name,
                Arc::new(Hook {
                    name: def.name.as_str().into(),
                    adapter,
                    timeout: def.timeout,
                    failure: def.failure,
                    unwind,
                    events: def.events.clone(),
                    histograms: OnceLock::new(),
                }),
            );
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        // The configuration is validated: every name in a chain is defined.
        let resolve = |names: &[String]| -> Vec<Arc<Hook>> {
            names
                .iter()
                .filter_map(|n| hooks.get(n.as_str()).cloned())
                .collect()
        };
        let routes = config
            .endpoints
            .iter()
            .map(|e| Route {
                label: Arc::new(e.pattern.as_str().to_owned()),
                pre: resolve(&e.pre),
                post: resolve(&e.post),
            })
            .collect();
        let patterns: Vec<Pattern> = config.endpoints.iter().map(|e| e.pattern.clone()).collect();
        let subscribers = config
            .adapters
            .iter()
            .filter_map(|def| hooks.get(def.name.as_str()))
            .filter(|hook| !hook.events.is_empty())
            .cloned()
            .collect();
        Ok(Chains {
            set: PatternSet::new(&patterns),
            routes,
            subscribers,
            _scope: Some(scope),
        })
    }

    /// The adapters that subscribed to Docker events.
    pub fn subscribers(&self) -> &[Arc<Hook>] {
        &self.subscribers
    }

    /// True when no endpoint is configured: every request passes straight through.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The hooks a request runs. `path` excludes the query string.
    pub fn matched(&self, method: &str, path: &str) -> Matched<'_> {
        if self.routes.is_empty() {
            return Matched::default();
        }
        let mut hits = Vec::new();
        self.set.matching(method, path, &mut hits);
        match hits.as_slice() {
            [] => Matched::default(),
            [one] => {
                let route = &self.routes[*one];
                Matched {
                    label: Some(route.label.clone()),
                    pre: Cow::Borrowed(&route.pre),
                    post: Cow::Borrowed(&route.post),
                }
            }
            many => {
                let routes = many.iter().map(|&i| &self.routes[i]);
                let label = routes
                    .clone()
                    .map(|r| r.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                Matched {
                    label: Some(Arc::new(label)),
                    pre: Cow::Owned(routes.clone().flat_map(|r| r.pre.iter().cloned()).collect()),
                    post: Cow::Owned(routes.flat_map(|r| r.post.iter().cloned()).collect()),
                }
            }
        }
    }
}

/// Runs the pre-hooks in order; each receives the previous one's request. Refusals and
/// failures (after the failure policy) end the chain as a [`ProxyError`], and the hooks
/// that had already run are unwound (see [`unwind`]).
pub async fn run_pre(
    hooks: &[Arc<Hook>],
    request: ClientRequest,
    metrics: &Metrics,
) -> Result<ClientRequest, ProxyError> {
    let method = request.method.clone();
    let target = request.request.clone();
    run_pre_as(hooks, request, &method, &target, metrics).await
}

/// [`run_pre`] for a request the client sent as `method` and `target` (which every adapter
/// must leave as they are, but for the query string).
pub(crate) async fn run_pre_as(
    hooks: &[Arc<Hook>],
    mut request: ClientRequest,
    method: &str,
    target: &str,
    metrics: &Metrics,
) -> Result<ClientRequest, ProxyError> {
    // A body withheld from the hooks stays withheld, whatever an adapter answers.
    let withheld = request.withheld.clone();
    // One clock read per call: each call starts when the previous one was timed.
    let mut clock = Instant::now();
    for (i, hook) in hooks.iter().enumerate() {
        // The request before this hook: what unwinds receive if the chain stops here,
        // and what an ignored failure passes on.
        let unwinding = hooks[..i].iter().any(|h| h.unwind);
        let before = (unwinding || hook.failure == FailurePolicy::Ignore).then(|| request.clone());
        let fallback = if hook.failure == FailurePolicy::Ignore {
            before.clone()
        } else {
            None
        };
        let result = call(hook, hook.adapter.pre_hook(request))
            .await
            .and_then(|mut modified| {
                check_rewrite(method, target, withheld.is_some(), &modified)?;
                modified.withheld.clone_from(&withheld);
                Ok(modified)
            });
        match finish(
            hook,
            HookType::PreHook,
            &mut clock,
            result,
            fallback,
            metrics,
        ) {
            Ok(modified) => request = modified,
            Err(error) => {
                if let Some(before) = before.filter(|_| unwinding) {
                    let reason = format!("adapter {:?} {}", hook.name, error.summary());
                    unwind(&hooks[..i], &before, &reason, metrics).await;
                }
                return Err(error);
            }
        }
    }
    Ok(request)
}

/// Runs the post-hooks in order; each receives the previous one's response.
pub async fn run_post(
    hooks: &[Arc<Hook>],
    request: &ClientRequest,
    mut response: ServerResponse,
    metrics: &Metrics,
) -> Result<ServerResponse, ProxyError> {
    let mut clock = Instant::now();
    for hook in hooks {
        let fallback = (hook.failure == FailurePolicy::Ignore).then(|| response.clone());
        let result = call(hook, hook.adapter.post_hook(request, response))
            .await
            .and_then(|modified| check_response(&modified).map(|()| modified));
        response = finish(
            hook,
            HookType::PostHook,
            &mut clock,
            result,
            fallback,
            metrics,
        )?;
    }
    Ok(response)
}

/// Tells the hooks that want it, last first, that `request` did not take effect. Best
/// effort: each call is bounded by its adapter's timeout; failures are logged and counted.
pub async fn unwind(hooks: &[Arc<Hook>], request: &ClientRequest, reason: &str, metrics: &Metrics) {
    for hook in hooks.iter().rev().filter(|h| h.unwind) {
        let mut clock = Instant::now();
        let result = call(hook, hook.adapter.unwind(request, reason)).await;
        observe(hook, HookType::Unwind, &mut clock, metrics);
        match result {
            Ok(()) => info!(adapter = %hook.name, hook = "unwind", reason, outcome = "ok", "hook"),
            Err(error) => {
                count_error(hook, HookType::Unwind, outcome_of(&error), metrics);
                warn!(adapter = %hook.name, hook = "unwind", reason, error = error.message(),
                    detail = error.detail(), "unwind failed");
            }
        }
    }
}

/// Calls an adapter within its timeout; a panic in an in-process adapter is its failure,
/// not the proxy's.
pub(crate) async fn call<T>(
    hook: &Hook,
    future: impl std::future::Future<Output = Result<T, HookError>>,
) -> Result<T, HookError> {
    use futures_util::FutureExt as _;
    let mut future = std::pin::pin!(std::panic::AssertUnwindSafe(future).catch_unwind());
    // An in-process adapter that answers without waiting needs no timer: poll it once
    // before arming one.
    let outcome = match futures_util::poll!(future.as_mut()) {
        std::task::Poll::Ready(outcome) => outcome,
        std::task::Poll::Pending => match tokio::time::timeout(hook.timeout, future).await {
            Ok(outcome) => outcome,
            Err(_) => {
                return Err(HookError::timed_out(format!(
                    "no answer within {}",
                    humanize(hook.timeout)
                )));
            }
        },
    };
    outcome.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(HookError::failed("internal error")
            .with_detail(format!("the adapter panicked: {what}")))
    })
}

fn outcome_of(error: &HookError) -> &'static str {
    match error.kind() {
        HookErrorKind::Refused => "refused",
        HookErrorKind::TimedOut => "timeout",
        _ => "failed",
    }
}

/// Records how long a call that started at `clock` took, returns it in seconds and moves
/// `clock` to now (one clock read).
fn observe(hook: &Hook, kind: HookType, clock: &mut Instant, metrics: &Metrics) -> f64 {
    let now = Instant::now();
    let elapsed = now.duration_since(*clock).as_secs_f64();
    *clock = now;
    // The histogram handles are resolved once per hook: no label allocation per call.
    let histograms = hook.histograms.get_or_init(|| {
        let get = |kind: HookType| {
            metrics
                .hook_duration
                .get_or_create(&HookLabels {
                    adapter: hook.name.to_string(),
                    hook: kind.as_str(),
                })
                .clone()
        };
        [
            get(HookType::PreHook),
            get(HookType::PostHook),
            get(HookType::Unwind),
            get(HookType::Event),
        ]
    });
    let index = match kind {
        HookType::PreHook => 0,
        HookType::PostHook => 1,
        HookType::Unwind => 2,
        _ => 3,
    };
    histograms[index].observe(elapsed);
    elapsed
}

pub(crate) fn count_error(hook: &Hook, kind: HookType, outcome: &'static str, metrics: &Metrics) {
    metrics
        .hook_errors
        .get_or_create(&HookOutcomeLabels {
            adapter: hook.name.to_string(),
            hook: kind.as_str(),
            outcome,
        })
        .inc();
}

/// Logs and counts one hook call and applies the failure policy: a failure of an adapter
/// whose policy is `ignore` yields the input unchanged; anything else ends the chain.
fn finish<T>(
    hook: &Hook,
    kind: HookType,
    clock: &mut Instant,
    result: Result<T, HookError>,
    fallback: Option<T>,
    metrics: &Metrics,
) -> Result<T, ProxyError> {
    let elapsed_ms = observe(hook, kind, clock, metrics) * 1e3;
    match result {
        Ok(value) => {
            info!(adapter = %hook.name, hook = %kind, elapsed_ms, outcome = "ok", "hook");
            Ok(value)
        }
        Err(error) if error.is_refusal() => {
            count_error(hook, kind, "refused", metrics);
            info!(adapter = %hook.name, hook = %kind, elapsed_ms, outcome = "refused",
                status = error.status().as_u16(), message = error.message(), "hook");
            Err(adapter_error(hook, kind, error))
        }
        Err(error) => {
            count_error(hook, kind, outcome_of(&error), metrics);
            match fallback {
                Some(unchanged) => {
                    count_error(hook, kind, "ignored", metrics);
                    warn!(adapter = %hook.name, hook = %kind, elapsed_ms, outcome = "ignored",
                        error = error.message(), detail = error.detail(),
                        "hook failed; skipped (failure = \"ignore\")");
                    Ok(unchanged)
                }
                None => {
                    warn!(adapter = %hook.name, hook = %kind, elapsed_ms, outcome = outcome_of(&error),
                        error = error.message(), detail = error.detail(), "hook");
                    Err(adapter_error(hook, kind, error))
                }
            }
        }
    }
}

fn adapter_error(hook: &Hook, kind: HookType, error: HookError) -> ProxyError {
    ProxyError::Adapter {
        adapter: hook.name.to_string(),
        hook: kind,
        error,
    }
}

/// An adapter may rewrite the query string and the body, never the method or the path:
/// moving a request to another endpoint would bypass the chains configured for it. A
/// request whose body streams to Docker unseen (`withheld`) cannot be given a body.
fn check_rewrite(
    method: &str,
    target: &str,
    withheld: bool,
    after: &ClientRequest,
) -> Result<(), HookError> {
    if withheld && after.body.is_some() {
        return Err(HookError::failed(
            "answered a Body for a request whose body was withheld (it is not JSON and streams \
             to Docker unchanged); adapters may only refuse such a request or rewrite its query string",
        ));
    }
    // The common case: the adapter left the target alone.
    if after.method == method && after.request == target {
        return Ok(());
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if after.method != method {
        return Err(HookError::failed(format!(
            "changed the method from {method} to {}; adapters may rewrite only the query string and the body",
            after.method
        )));
    }
    if after.path() != path {
        return Err(HookError::failed(format!(
            "changed the path from {path} to {}; adapters may rewrite only the query string and the body",
            after.path()
        )));
    }
    if after.request.contains('#') {
        return Err(HookError::failed(format!(
            "answered a Request with a fragment ('#'), which never reaches Docker: {:?}",
            after.request
        )));
    }
    // What is sent is what the adapter wrote, byte for byte, or nothing: a target the URI
    // parser would read differently is refused, not quietly changed.
    match after.request.parse::<http::uri::PathAndQuery>() {
        Ok(parsed) if parsed.as_str() == after.request => Ok(()),
        _ => Err(HookError::failed(format!(
            "answered an invalid Request {:?}",
            after.request
        ))),
    }
}

/// A post-hook's `Code` must be an HTTP status and its `ContentType` a header value.
fn check_response(response: &ServerResponse) -> Result<(), HookError> {
    if !(100..=599).contains(&response.code) {
        return Err(HookError::failed(format!(
            "answered an invalid Code {}",
            response.code
        )));
    }
    if !is_header_value(&response.content_type) {
        return Err(HookError::failed(format!(
            "answered an invalid ContentType {:?}",
            response.content_type
        )));
    }
    Ok(())
}

/// True when `text` may be a header value as it is (what `HeaderValue::from_str` accepts:
/// visible ASCII, spaces and tabs), checked without building one.
pub(crate) fn is_header_value(text: &str) -> bool {
    text.bytes()
        .all(|b| (b' '..0x7f).contains(&b) || b == b'\t')
}
