//! What the proxy counts, in Prometheus' text format (`GET /metrics` on the admin listener).
//!
//! | metric | labels |
//! |---|---|
//! | `powerstrip_requests_total` | `pattern` (the matching endpoint patterns, or `(none)`), `status` |
//! | `powerstrip_requests_in_flight` | |
//! | `powerstrip_hook_duration_seconds` (histogram) | `adapter`, `hook` |
//! | `powerstrip_hook_errors_total` | `adapter`, `hook`, `outcome` (`refused`, `failed`, `timeout`, `ignored`) |
//! | `powerstrip_hooks_skipped_total` | `adapter`, `hook` (`post-hook`), `reason` (`upgraded`, `streamed`, `binary`, `untyped`) |
//! | `powerstrip_upgraded_sessions` / `powerstrip_upgraded_sessions_opened_total` | |
//! | `powerstrip_upstream_connect_errors_total` | |
//! | `powerstrip_events_total` | `adapter`, `outcome` (`delivered`, `failed`, `dropped`) |
//! | `powerstrip_config_reloads_total` | `outcome` (`applied`, `rejected`) |

use std::fmt;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of `powerstrip_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The endpoint patterns that matched, comma-separated, or `(none)`.
    pub pattern: Arc<String>,
    /// The status the client received.
    pub status: u16,
}

/// Labels naming one adapter's hook.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    /// The adapter's configured name.
    pub adapter: String,
    /// `pre-hook`, `post-hook`, `unwind`, `event`.
    pub hook: &'static str,
}

/// Labels of `powerstrip_hook_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookOutcomeLabels {
    /// The adapter's configured name.
    pub adapter: String,
    /// `pre-hook`, `post-hook`, `unwind`, `event`.
    pub hook: &'static str,
    /// `refused`, `failed`, `timeout`, `ignored`.
    pub outcome: &'static str,
}

/// Labels of `powerstrip_hooks_skipped_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabels {
    /// The adapter's configured name.
    pub adapter: String,
    /// `post-hook`.
    pub hook: &'static str,
    /// `upgraded` (the connection switched protocols), `streamed` (Docker streams the
    /// endpoint's answer), `binary` (the answer is not JSON or text), `untyped` (the
    /// answer has a body but no content type).
    pub reason: &'static str,
}

/// Labels of `powerstrip_events_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// The adapter's configured name.
    pub adapter: String,
    /// `delivered`, `failed`, `dropped`.
    pub outcome: &'static str,
}

/// Labels with only an outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// What happened.
    pub outcome: &'static str,
}

/// Every metric the proxy keeps, registered in one registry.
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by pattern and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Requests being answered now.
    pub in_flight: Gauge,
    /// Time spent in each adapter call.
    pub hook_duration: Family<HookLabels, Histogram>,
    /// Adapter calls that did not return a document.
    pub hook_errors: Family<HookOutcomeLabels, Counter>,
    /// Configured hooks that did not run for a request, by reason.
    pub hooks_skipped: Family<SkipLabels, Counter>,
    /// Upgraded (attach, exec) sessions open now.
    pub sessions: Gauge,
    /// Upgraded sessions opened since start.
    pub sessions_total: Counter,
    /// Requests that could not reach Docker.
    pub upstream_connect_errors: Counter,
    /// Docker events handed to adapters.
    pub events: Family<EventLabels, Counter>,
    /// Configuration reloads.
    pub reloads: Family<OutcomeLabels, Counter>,
    /// `requests` of unhooked requests by status, resolved once: the hot path.
    unhooked: Box<[OnceLock<Counter>]>,
    /// The `(none)` label.
    none: Arc<String>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("powerstrip");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by endpoint pattern and status",
            requests.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Requests being answered now",
            in_flight.clone(),
        );
        let hook_duration = Family::<HookLabels, Histogram>::new_with_constructor(|| {
            // 100 µs .. ~26 s
            Histogram::new(exponential_buckets(0.0001, 4.0, 10))
        });
        registry.register(
            "hook_duration_seconds",
            "Time spent in adapter calls",
            hook_duration.clone(),
        );
        let hook_errors = Family::<HookOutcomeLabels, Counter>::default();
        registry.register(
            "hook_errors",
            "Adapter calls that refused, failed, timed out or were ignored",
            hook_errors.clone(),
        );
        let hooks_skipped = Family::<SkipLabels, Counter>::default();
        registry.register(
            "hooks_skipped",
            "Configured hooks that did not run for a request (a streamed, binary or upgraded answer)",
            hooks_skipped.clone(),
        );
        let sessions = Gauge::default();
        registry.register(
            "upgraded_sessions",
            "Upgraded (attach, exec) sessions open now",
            sessions.clone(),
        );
        let sessions_total = Counter::default();
        registry.register(
            "upgraded_sessions_opened",
            "Upgraded sessions opened",
            sessions_total.clone(),
        );
        let upstream_connect_errors = Counter::default();
        registry.register(
            "upstream_connect_errors",
            "Requests that could not reach Docker",
            upstream_connect_errors.clone(),
        );
        let events = Family::<EventLabels, Counter>::default();
        registry.register(
            "events",
            "Docker events handed to adapters, by outcome",
            events.clone(),
        );
        let reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads, applied or rejected",
            reloads.clone(),
        );
        Metrics {
            registry,
            requests,
            in_flight,
            hook_duration,
            hook_errors,
            hooks_skipped,
            sessions,
            sessions_total,
            upstream_connect_errors,
            events,
            reloads,
            unhooked: (0..1000).map(|_| OnceLock::new()).collect(),
            none: Arc::new("(none)".to_owned()),
        }
    }
}

impl Metrics {
    /// Counts one answered request under the patterns that matched (`None`: no hook).
    pub fn count_request(&self, pattern: Option<Arc<String>>, status: u16) {
        let labels = |pattern| RequestLabels { pattern, status };
        match pattern {
            Some(pattern) => self.requests.get_or_create(&labels(pattern)).inc(),
            None => match self.unhooked.get(usize::from(status)) {
                Some(slot) => slot
                    .get_or_init(|| {
                        self.requests
                            .get_or_create(&labels(self.none.clone()))
                            .clone()
                    })
                    .inc(),
                None => self
                    .requests
                    .get_or_create(&labels(self.none.clone()))
                    .inc(),
            },
        };
    }

    /// Everything, in Prometheus' text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_in_the_text_format() {
        let metrics = Metrics::default();
        metrics.count_request(Some(Arc::new("* *".to_owned())), 200);
        metrics.count_request(None, 204);
        metrics.count_request(None, 204);
        metrics
            .hook_duration
            .get_or_create(&HookLabels {
                adapter: "null".into(),
                hook: "pre-hook",
            })
            .observe(0.002);
        metrics.sessions_total.inc();
        let text = metrics.encode();
        assert!(
            text.contains(r#"powerstrip_requests_total{pattern="* *",status="200"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"powerstrip_hook_duration_seconds_count{adapter="null",hook="pre-hook"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains("powerstrip_upgraded_sessions_opened_total 1"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE powerstrip_requests_in_flight gauge"),
            "{text}"
        );
    }
}
