//! Docker events for adapters that subscribed (`events = ["die", "destroy"]`).
//!
//! One follower per proxy reads Docker's `/events` stream and hands each event to every
//! subscribed adapter whose filter matches, in order, through a bounded queue per adapter
//! (a slow adapter delays only itself; when its queue is full, events for it are dropped
//! and counted). When the stream breaks — Docker restarted, the socket went away — the
//! follower reconnects with `since` set to the last event it saw, so nothing that happened
//! in between is lost, and skips the events at that instant it already delivered.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use http::{Method, Request, header};
use http_body_util::BodyExt;
use powerstrip_adapter::DockerEvent;
use powerstrip_protocol::HookType;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::body::empty;
use crate::chains::{Hook, count_error};
use crate::metrics::EventLabels;
use crate::proxy::Proxy;

/// Events waiting for one adapter before further ones are dropped.
const QUEUE: usize = 1024;
/// The first wait before reconnecting.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between reconnection attempts. Docker replays only its last 256
/// events to a reconnecting follower, so a busy daemon must be rejoined quickly.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Follows Docker's events for as long as the future runs (the server drops it at
/// shutdown). Idle while no adapter subscribes; picks up subscriptions after a reload.
pub async fn follow_events(proxy: Arc<Proxy>) {
    let mut cursor = Cursor::starting_now();
    let mut workers = Workers::default();
    let mut backoff = MIN_BACKOFF;
    loop {
        if proxy.chains().subscribers().is_empty() {
            workers.clear();
            proxy.chains_replaced().await;
            continue;
        }
        let started = Instant::now();
        match follow_once(&proxy, &mut cursor, &mut workers).await {
            Ok(()) => debug!(retry_in = ?backoff, "Docker closed the event stream; reconnecting"),
            Err(reason) => {
                warn!(%reason, retry_in = ?backoff, "cannot follow Docker's events; retrying");
            }
        }
        // A stream that lasted is a normal end: reconnect soon. One that ends at once,
        // again and again, backs off (up to a second) rather than spinning.
        if started.elapsed() > MAX_BACKOFF {
            backoff = MIN_BACKOFF;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = proxy.chains_replaced() => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Reads the stream until it ends, an error, or a reload changes the subscriptions.
async fn follow_once(
    proxy: &Arc<Proxy>,
    cursor: &mut Cursor,
    workers: &mut Workers,
) -> Result<(), String> {
    let request = Request::builder()
        .method(Method::GET)
        .uri(format!("/events?since={}", cursor.since()))
        .header(header::HOST, "docker")
        .body(empty())
        .map_err(|e| e.to_string())?;
    let response = proxy
        .upstream()
        .send(request)
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!(
            "Docker answered {} to GET /events",
            response.status()
        ));
    }
    info!(since = %cursor.since(), "following Docker's events");
    let mut body = response.into_body();
    let mut buffer = BytesMut::new();
    loop {
        let frame = tokio::select! {
            frame = body.frame() => frame,
            _ = proxy.chains_replaced() => {
                if proxy.chains().subscribers().is_empty() {
                    return Ok(());
                }
                continue;
            }
        };
        let Some(frame) = frame else { return Ok(()) };
        let frame = frame.map_err(|e| format!("the event stream broke: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buffer.extend_from_slice(&data);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line = buffer.split_to(end + 1);
            let line = &line[..end];
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<DockerEvent>(line) {
                Ok(event) if cursor.advance(&event) => {
                    // The subscriptions in force now, whatever reloads happened meanwhile.
                    let chains = proxy.chains();
                    for hook in chains.subscribers() {
                        if hook.wants_event(event.kind(), event.action()) {
                            workers.send(proxy, hook, event.clone());
                        }
                    }
                }
                Ok(_) => debug!("event already delivered before reconnecting; skipped"),
                Err(err) => warn!(error = %err, "Docker sent an event that is not JSON; skipped"),
            }
        }
    }
}

/// Where the stream is: the time of the last event seen, and the events seen at that
/// exact time (a reconnect with `since` replays them).
struct Cursor {
    last_nano: i64,
    seen_at_last: HashSet<(String, String, String)>,
}

impl Cursor {
    fn starting_now() -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
            .unwrap_or_default();
        Cursor {
            last_nano: now,
            seen_at_last: HashSet::new(),
        }
    }

    /// `since` as Docker takes it: seconds and nanoseconds.
    fn since(&self) -> String {
        format!(
            "{}.{:09}",
            self.last_nano / 1_000_000_000,
            self.last_nano % 1_000_000_000
        )
    }

    /// Records an event; false when it was already delivered. Docker stamps events before
    /// queueing them, so concurrent ones can arrive slightly out of order: an event older
    /// than the latest seen is new (a reconnect asks only for events from the latest on),
    /// and only one at exactly that instant can be a replay.
    fn advance(&mut self, event: &DockerEvent) -> bool {
        let at = event.time_nano();
        let key = (
            event.kind().to_owned(),
            event.action().to_owned(),
            event.actor_id().to_owned(),
        );
        if at > self.last_nano {
            self.last_nano = at;
            self.seen_at_last.clear();
            self.seen_at_last.insert(key);
            true
        } else if at == self.last_nano {
            self.seen_at_last.insert(key)
        } else {
            true
        }
    }
}

/// One delivery task per subscribed adapter (per configuration generation).
#[derive(Default)]
struct Workers {
    queues: HashMap<usize, mpsc::Sender<DockerEvent>>,
}

impl Workers {
    fn clear(&mut self) {
        self.queues.clear();
    }

    fn send(&mut self, proxy: &Arc<Proxy>, hook: &Arc<Hook>, event: DockerEvent) {
        let key = Arc::as_ptr(hook) as usize;
        let queue = self
            .queues
            .entry(key)
            .or_insert_with(|| spawn_worker(proxy.clone(), hook.clone()));
        if queue.try_send(event).is_err() {
            proxy
                .metrics()
                .events
                .get_or_create(&EventLabels {
                    adapter: hook.name().to_owned(),
                    outcome: "dropped",
                })
                .inc();
            warn!(adapter = hook.name(), "event queue full; event dropped");
        }
    }
}

fn spawn_worker(proxy: Arc<Proxy>, hook: Arc<Hook>) -> mpsc::Sender<DockerEvent> {
    let (tx, mut rx) = mpsc::channel::<DockerEvent>(QUEUE);
    tokio::spawn(async move {
        while let Some(event) = rx.recv().await {
            let outcome = match hook.deliver(&event).await {
                Ok(()) => {
                    debug!(
                        adapter = hook.name(),
                        kind = event.kind(),
                        action = event.action(),
                        id = event.actor_id(),
                        "event delivered"
                    );
                    "delivered"
                }
                Err(error) => {
                    count_error(&hook, HookType::Event, "failed", proxy.metrics());
                    warn!(
                        adapter = hook.name(),
                        kind = event.kind(),
                        action = event.action(),
                        error = error.message(),
                        detail = error.detail(),
                        "event delivery failed"
                    );
                    "failed"
                }
            };
            proxy
                .metrics()
                .events
                .get_or_create(&EventLabels {
                    adapter: hook.name().to_owned(),
                    outcome,
                })
                .inc();
        }
    });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(at: i64, action: &str, id: &str) -> DockerEvent {
        serde_json::from_value(serde_json::json!({
            "Type": "container", "Action": action, "Actor": {"ID": id}, "timeNano": at
        }))
        .unwrap()
    }

    #[test]
    fn a_reconnect_skips_what_was_delivered_at_the_last_instant() {
        let mut cursor = Cursor {
            last_nano: 10,
            seen_at_last: HashSet::new(),
        };
        assert!(cursor.advance(&event(20, "die", "a")));
        assert!(cursor.advance(&event(20, "destroy", "a")));
        assert_eq!(cursor.since(), "0.000000020");
        // Replayed after reconnecting with since=20:
        assert!(!cursor.advance(&event(20, "die", "a")));
        assert!(!cursor.advance(&event(20, "destroy", "a")));
        assert!(
            cursor.advance(&event(20, "die", "b")),
            "new at the same instant"
        );
        assert!(cursor.advance(&event(30, "die", "a")));
        assert_eq!(cursor.since(), "0.000000030");
    }
}
