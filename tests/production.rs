//! What running powerstrip in front of a production Docker host relies on
//! (docs/operations.md): unwinds when a request does not take effect, Docker events for
//! subscribed adapters, hot reload, metrics and the admin endpoints, limits, socket
//! permissions, refusing insecure TCP, and graceful shutdown.
//!
//! The proxy runs in-process ([`TestProxy`]) where a test needs in-process adapters or a
//! scripted event stream, and as the real binary (`support::ProxyProcess`) in front of a
//! [`FakeDocker`] where signals, flags, files and the admin listener matter. One test
//! needs the real daemon (`scripts/ensure-docker`); under `CI=true` its absence fails.

#![allow(clippy::unwrap_used)]

mod support;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use powerstrip_adapter::{Adapter, ClientRequest, DockerEvent, HookError, async_trait};
use powerstrip_protocol::HookCall;
use powerstrip_testkit::{
    AdapterReply, FakeAdapter, FakeDocker, FakeResponse, Responder, TestClient, TestProxy,
    next_chunk,
};
use serde_json::{Value, json};
use support::{IMAGE, ProxyProcess, direct, docker, eventually, metric, require_docker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

const CREATE: &str = "/v1.41/containers/create";

// ---------------------------------------------------------------------------------------
// Helpers

/// The answer adapters give to unwind and event calls (the body is ignored; 2xx counts).
fn acknowledgement() -> AdapterReply {
    AdapterReply::Json(200, json!({"PowerstripProtocolVersion": 1}))
}

/// An HTTP adapter that passes pre- and post-hooks through and acknowledges unwinds and
/// events, recording every call.
async fn recorder() -> FakeAdapter {
    FakeAdapter::start(|call| match call {
        HookCall::Unwind { .. } | HookCall::Event { .. } => acknowledgement(),
        other => AdapterReply::pass(other),
    })
    .await
}

/// An HTTP adapter whose pre-hook adds `"Marked": true` to the body (so the request it
/// leaves differs from the one it got), acknowledging unwinds.
async fn marking_recorder() -> FakeAdapter {
    FakeAdapter::start(|call| match call {
        HookCall::PreHook { client_request } => {
            let mut body: Value =
                serde_json::from_str(client_request.body.as_deref().unwrap_or("{}")).unwrap();
            body["Marked"] = json!(true);
            AdapterReply::Pre(ClientRequest::new(
                client_request.method.clone(),
                client_request.request.clone(),
                Some(body.to_string()),
            ))
        }
        HookCall::Unwind { .. } | HookCall::Event { .. } => acknowledgement(),
        other => AdapterReply::pass(other),
    })
    .await
}

/// The unwind calls an adapter received: (request, reason).
fn unwinds(adapter: &FakeAdapter) -> Vec<(ClientRequest, String)> {
    adapter
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            HookCall::Unwind {
                client_request,
                reason,
            } => Some((client_request, reason)),
            _ => None,
        })
        .collect()
}

/// The hook types of the calls an adapter received, in order.
fn call_types(adapter: &FakeAdapter) -> Vec<String> {
    adapter
        .calls()
        .iter()
        .map(|c| c.hook_type().to_string())
        .collect()
}

/// The events an HTTP adapter received, in order.
fn events_of(adapter: &FakeAdapter) -> Vec<DockerEvent> {
    adapter
        .calls()
        .into_iter()
        .filter_map(|call| match call {
            HookCall::Event { event } => Some(event),
            _ => None,
        })
        .collect()
}

/// A Docker answering creates `201` — or `409` for `?name=taken` — and `/_ping`.
async fn create_docker() -> FakeDocker {
    FakeDocker::builder()
        .route(
            "POST",
            "/*/containers/create",
            Responder::with(|request| {
                if request.query().is_some_and(|q| q.contains("name=taken")) {
                    FakeResponse::json(
                        409,
                        &json!({"message": "Conflict. The container name \"/taken\" is already in use"}),
                    )
                } else {
                    FakeResponse::json(201, &json!({"Id": "abc", "Warnings": []}))
                }
            }),
        )
        .route(
            "GET",
            "/_ping",
            Responder::raw(200, "text/plain; charset=utf-8", "OK"),
        )
        .start_unix()
        .await
}

fn create_body() -> Value {
    json!({"Image": "busybox", "Cmd": ["true"]})
}

/// The TOML of an adapter table entry for a fake HTTP adapter, with extra keys.
fn http_adapter(name: &str, adapter: &FakeAdapter, extra: &str) -> String {
    if extra.is_empty() {
        format!("{name} = {:?}\n", adapter.url())
    } else {
        format!("{name} = {{ url = {:?}, {extra} }}\n", adapter.url())
    }
}

/// A configuration: adapter entries, then `(pattern, pre)` endpoints.
fn config(adapters: &[String], endpoints: &[(&str, &[&str])]) -> String {
    let mut toml = String::from("version = 1\n[adapters]\n");
    for adapter in adapters {
        toml.push_str(adapter);
    }
    for (pattern, pre) in endpoints {
        toml.push_str(&format!(
            "\n[[endpoints]]\nmatch = {pattern:?}\npre = {pre:?}\n"
        ));
    }
    toml
}

// ---------------------------------------------------------------------------------------
// Unwind

#[tokio::test]
async fn a_later_refusal_unwinds_the_pre_hooks_that_ran_and_never_reaches_docker() {
    let docker = create_docker().await;
    let marker = marking_recorder().await;
    let refuser = FakeAdapter::refuse(403, r#"{"message":"quota exceeded"}"#).await;
    let proxy = TestProxy::start(
        &docker.address(),
        &config(
            &[
                http_adapter("marker", &marker, "unwind = true"),
                http_adapter("refuser", &refuser, "unwind = true"),
            ],
            &[("POST /*/containers/create", &["marker", "refuser"])],
        ),
    )
    .await;

    let r = proxy.client().post_json(CREATE, &create_body()).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text());
    assert_eq!(r.message(), "quota exceeded");
    assert!(docker.requests().is_empty(), "Docker must not be called");

    assert_eq!(call_types(&marker), ["pre-hook", "unwind"]);
    let unwound = unwinds(&marker);
    let (request, reason) = &unwound[0];
    // The request as the chain left it when it stopped: the marker's own rewrite.
    assert_eq!(request.request, CREATE);
    let body: Value = serde_json::from_str(request.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["Marked"], true, "{body}");
    assert!(
        reason.contains("\"refuser\"") && reason.contains("quota exceeded"),
        "the reason names the refusing adapter: {reason:?}"
    );
    // The adapter that refused took nothing: it is not unwound.
    assert_eq!(call_types(&refuser), ["pre-hook"]);
}

#[tokio::test]
async fn a_docker_error_unwinds_with_the_request_docker_received() {
    let docker = create_docker().await;
    let marker = marking_recorder().await;
    let proxy = TestProxy::start(
        &docker.address(),
        &config(
            &[http_adapter("marker", &marker, "unwind = true")],
            &[("POST /*/containers/create", &["marker"])],
        ),
    )
    .await;

    let r = proxy
        .client()
        .post_json(&format!("{CREATE}?name=taken"), &create_body())
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(
        r.message(),
        "Conflict. The container name \"/taken\" is already in use"
    );

    let received = &docker.requests()[0];
    let unwound = unwinds(&marker);
    assert_eq!(unwound.len(), 1, "{:?}", marker.calls());
    let (request, reason) = &unwound[0];
    assert_eq!(reason, "Docker answered 409 Conflict");
    assert_eq!(request.method, "POST");
    assert_eq!(request.request, received.uri);
    assert_eq!(request.body.as_deref(), Some(received.text().as_str()));
    assert_eq!(received.json()["Marked"], true);

    // A create that succeeds is not unwound.
    let r = proxy.client().post_json(CREATE, &create_body()).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(unwinds(&marker).len(), 1);
}

#[tokio::test]
async fn an_unreachable_docker_unwinds_with_a_reason_about_docker() {
    let dir = tempfile::tempdir().unwrap();
    let absent = format!("unix://{}", dir.path().join("absent.sock").display());
    let marker = recorder().await;
    let proxy = TestProxy::start(
        &absent,
        &config(
            &[http_adapter("marker", &marker, "unwind = true")],
            &[("POST /*/containers/create", &["marker"])],
        ),
    )
    .await;

    let r = proxy.client().post_json(CREATE, &create_body()).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        r.message(),
        format!("powerstrip: cannot reach Docker at {absent}")
    );
    let unwound = unwinds(&marker);
    assert_eq!(unwound.len(), 1, "{:?}", marker.calls());
    let (request, reason) = &unwound[0];
    assert_eq!(request.request, CREATE);
    assert!(
        reason.contains("cannot reach Docker") && reason.contains(&absent),
        "{reason:?}"
    );
}

#[tokio::test]
async fn http_adapters_without_unwind_true_never_receive_unwinds() {
    let docker = create_docker().await;
    let opted_in = recorder().await;
    let original = recorder().await;
    let refuser = FakeAdapter::refuse(403, "no").await;
    let proxy = TestProxy::start(
        &docker.address(),
        &config(
            &[
                http_adapter("opted_in", &opted_in, "unwind = true"),
                http_adapter("original", &original, ""),
                http_adapter("refuser", &refuser, ""),
            ],
            &[
                (
                    "POST /*/containers/create",
                    &["opted_in", "original", "refuser"],
                ),
                ("DELETE /*/containers/*", &["opted_in", "original"]),
            ],
        ),
    )
    .await;
    let refused = proxy.client().post_json(CREATE, &create_body()).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    // Docker's 404 for an unknown container.
    let failed = proxy
        .client()
        .request(Method::DELETE, "/v1.41/containers/nope")
        .await;
    assert_eq!(failed.status, StatusCode::NOT_FOUND);

    // Both failures did unwind (the adapter that opted in heard of both)...
    assert_eq!(
        call_types(&opted_in),
        ["pre-hook", "unwind", "pre-hook", "unwind"]
    );
    // ...but an original adapter would not understand the call: it gets none.
    assert_eq!(call_types(&original), ["pre-hook", "pre-hook"]);
    assert!(original.bad_calls().is_empty());
}

/// An in-process adapter that records its pre-hooks and unwinds in a shared log.
struct Recording {
    name: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    unwound: Arc<Mutex<Vec<ClientRequest>>>,
}

#[async_trait]
impl Adapter for Recording {
    async fn pre_hook(&self, request: ClientRequest) -> Result<ClientRequest, HookError> {
        self.log.lock().unwrap().push(format!("{} pre", self.name));
        Ok(request)
    }

    async fn unwind(&self, request: &ClientRequest, reason: &str) -> Result<(), HookError> {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} unwind: {reason}", self.name));
        self.unwound.lock().unwrap().push(request.clone());
        Ok(())
    }
}

#[tokio::test]
async fn in_process_adapters_are_unwound_last_first_and_only_on_failure() {
    let docker = create_docker().await;
    let log = Arc::new(Mutex::new(Vec::new()));
    let unwound = Arc::new(Mutex::new(Vec::new()));
    let adapter = |name| Recording {
        name,
        log: log.clone(),
        unwound: unwound.clone(),
    };
    let proxy = TestProxy::builder(&docker.address())
        .toml(
            "version = 1\n[adapters]\nfirst = { builtin = \"first\" }\nsecond = { builtin = \"second\" }\n\
             [[endpoints]]\nmatch = \"POST /*/containers/create\"\npre = [\"first\", \"second\"]\n",
        )
        .adapter("first", adapter("first"))
        .adapter("second", adapter("second"))
        .start()
        .await;

    let ok = proxy.client().post_json(CREATE, &create_body()).await;
    assert_eq!(ok.status, StatusCode::CREATED);
    assert_eq!(*log.lock().unwrap(), ["first pre", "second pre"]);

    log.lock().unwrap().clear();
    let taken = proxy
        .client()
        .post_json(&format!("{CREATE}?name=taken"), &create_body())
        .await;
    assert_eq!(taken.status, StatusCode::CONFLICT);
    assert_eq!(
        *log.lock().unwrap(),
        [
            "first pre",
            "second pre",
            "second unwind: Docker answered 409 Conflict",
            "first unwind: Docker answered 409 Conflict",
        ]
    );
    let unwound = unwound.lock().unwrap();
    assert!(
        unwound
            .iter()
            .all(|r| r.request == format!("{CREATE}?name=taken")),
        "{unwound:?}"
    );
}

/// An in-process adapter with a bug.
struct Panics;

#[async_trait]
impl Adapter for Panics {
    async fn pre_hook(&self, _: ClientRequest) -> Result<ClientRequest, HookError> {
        panic!("secret detail: token=hunter2");
    }
}

#[tokio::test]
async fn a_panicking_in_process_pre_hook_is_a_502_naming_it_and_the_proxy_keeps_serving() {
    let docker = create_docker().await;
    let proxy = TestProxy::builder(&docker.address())
        .toml(
            "version = 1\n[adapters]\nx = { builtin = \"x\" }\n\
             [[endpoints]]\nmatch = \"POST /*/containers/create\"\npre = [\"x\"]\n",
        )
        .adapter("x", Panics)
        .start()
        .await;
    for _ in 0..2 {
        let r = proxy.client().post_json(CREATE, &create_body()).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert_eq!(
            r.message(),
            "powerstrip: adapter \"x\" failed in pre-hook: internal error"
        );
        assert!(!r.text().contains("hunter2"), "{}", r.text());
    }
    assert!(docker.requests().is_empty());
    let ping = proxy.client().get("/_ping").await;
    assert_eq!(ping.status, StatusCode::OK, "{}", ping.text());
}

// ---------------------------------------------------------------------------------------
// Events

/// A Docker event as `/events` sends it.
fn event(kind: &str, action: &str, id: &str, nanos: i64) -> Value {
    json!({
        "Type": kind,
        "Action": action,
        "Actor": {"ID": id, "Attributes": {"name": format!("c-{id}")}},
        "scope": "local",
        "time": nanos / 1_000_000_000,
        "timeNano": nanos,
    })
}

fn line(event: &Value) -> Bytes {
    Bytes::from(format!("{event}\n"))
}

fn now_nanos() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap()
}

/// `since` as Docker takes it: `secs.nanos`.
fn since(nanos: i64) -> String {
    format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000)
}

fn since_nanos(query: &str) -> i64 {
    let value = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("since="))
        .unwrap_or_else(|| panic!("no since in {query:?}"));
    let (secs, nanos) = value.split_once('.').unwrap();
    secs.parse::<i64>().unwrap() * 1_000_000_000 + nanos.parse::<i64>().unwrap()
}

/// An in-process adapter that records the events it receives.
struct EventLog(Arc<Mutex<Vec<DockerEvent>>>);

#[async_trait]
impl Adapter for EventLog {
    async fn event(&self, event: &DockerEvent) -> Result<(), HookError> {
        self.0.lock().unwrap().push(event.clone());
        Ok(())
    }
}

fn as_events(values: &[&Value]) -> Vec<DockerEvent> {
    values
        .iter()
        .map(|v| serde_json::from_value((*v).clone()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribed_adapters_get_matching_events_in_order_and_none_twice_across_reconnects() {
    // Docker at a fixed path, so that a second daemon can take over the address.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let first = FakeDocker::builder()
        .route("GET", "/events", Responder::chunked("application/json", rx))
        .start_unix_at(&socket)
        .await;

    let watcher = recorder().await;
    let everything = recorder().await;
    let in_process = Arc::new(Mutex::new(Vec::new()));
    let before = now_nanos();
    let proxy = TestProxy::builder(&first.address())
        .toml(&format!(
            "version = 1\n[adapters]\n{}{}inproc = {{ builtin = \"inproc\", events = [\"die\", \"destroy\"] }}\n",
            http_adapter("watcher", &watcher, "events = [\"die\", \"destroy\"]"),
            http_adapter(
                "everything",
                &everything,
                "events = [\"container:*\", \"network:connect\"]"
            ),
        ))
        .adapter("inproc", EventLog(in_process.clone()))
        .start()
        .await;

    // The follower asks for events from when the proxy started: nothing older.
    let asked = eventually(Duration::from_secs(5), "the proxy follows /events", || {
        let requests = first.requests();
        async move { requests.first().map(|r| r.query().unwrap_or("").to_owned()) }
    })
    .await;
    let after = now_nanos();
    let asked_since = since_nanos(&asked);
    assert!(
        (before..=after).contains(&asked_since),
        "since={asked_since} for a proxy started between {before} and {after}"
    );

    let t0 = now_nanos();
    let die = event("container", "die", "abc", t0 + 1_000);
    let start = event("container", "start", "abc", t0 + 2_000);
    let destroy = event("container", "destroy", "abc", t0 + 3_000);
    let connect = event("network", "connect", "net1", t0 + 4_000);
    let die2 = event("container", "die", "def", t0 + 5_000);
    for e in [&die, &start, &destroy, &connect] {
        tx.send(line(e)).await.unwrap();
    }
    // One event split across two chunks.
    let text = line(&die2);
    tx.send(text.slice(..20)).await.unwrap();
    tx.send(text.slice(20..)).await.unwrap();

    let expected = as_events(&[&die, &destroy, &die2]);
    let all = as_events(&[&die, &start, &destroy, &connect, &die2]);
    eventually(
        Duration::from_secs(5),
        "the adapters got their events",
        || {
            let done = events_of(&watcher).len() >= 3
                && in_process.lock().unwrap().len() >= 3
                && events_of(&everything).len() >= 5;
            async move { done.then_some(()) }
        },
    )
    .await;
    assert_eq!(events_of(&watcher), expected);
    assert_eq!(*in_process.lock().unwrap(), expected);
    assert_eq!(
        events_of(&everything),
        all,
        "container:* and network:connect"
    );
    // The HTTP call is the documented document.
    let raw = watcher.requests()[0].json();
    assert_eq!(raw["PowerstripProtocolVersion"], 1);
    assert_eq!(raw["Type"], "event");
    assert_eq!(raw["Event"], die);

    // The stream ends: the follower reconnects from the last event it delivered.
    drop(tx);
    let reconnect = eventually(Duration::from_secs(5), "the follower reconnects", || {
        let requests = first.requests();
        async move { requests.get(1).map(|r| r.query().unwrap_or("").to_owned()) }
    })
    .await;
    assert_eq!(reconnect, format!("since={}", since(t0 + 5_000)));

    // Docker restarts at the same address and replays from `since`: the event at that
    // instant already delivered (die2), a new one at the same instant, then later ones.
    drop(first);
    let same_instant = event("container", "die", "ghi", t0 + 5_000);
    let later = event("container", "destroy", "def", t0 + 6_000);
    let last = event("container", "die", "jkl", t0 + 7_000);
    let history = [
        die.clone(),
        die2.clone(),
        same_instant.clone(),
        later.clone(),
        last.clone(),
    ];
    let counter = Arc::new(AtomicUsize::new(0));
    let second = FakeDocker::builder()
        .route(
            "GET",
            "/events",
            Responder::with(move |request| {
                // The last event only from the second answer on, so that when it arrives
                // every replay before it has been through the follower.
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let from = since_nanos(request.query().unwrap_or(""));
                let body: String = history
                    .iter()
                    .filter(|e| e["timeNano"].as_i64().unwrap() >= from)
                    .filter(|e| n > 0 || e["Actor"]["ID"] != "jkl")
                    .map(|e| format!("{e}\n"))
                    .collect();
                FakeResponse::new(200, "application/json", body)
            }),
        )
        .start_unix_at(&socket)
        .await;

    let expected = as_events(&[&die, &destroy, &die2, &same_instant, &later, &last]);
    eventually(
        Duration::from_secs(10),
        "the events after the restart",
        || {
            let done = events_of(&watcher).len() >= expected.len()
                && in_process.lock().unwrap().len() >= expected.len();
            async move { done.then_some(()) }
        },
    )
    .await;
    assert_eq!(events_of(&watcher), expected, "HTTP adapter");
    assert_eq!(*in_process.lock().unwrap(), expected, "in-process adapter");
    let replayed_from = since_nanos(second.requests()[0].query().unwrap_or(""));
    assert_eq!(replayed_from, t0 + 5_000);
    drop(proxy);
}

#[tokio::test]
async fn an_event_stream_that_ends_at_once_is_not_reconnected_in_a_busy_loop() {
    // Something answers /events and closes at once (a proxy in the way, a daemon going
    // down): the follower must retry, but not as fast as the CPU allows.
    let docker = FakeDocker::builder()
        .route(
            "GET",
            "/events",
            Responder::raw(200, "application/json", ""),
        )
        .start_unix()
        .await;
    let watcher = recorder().await;
    let _proxy = TestProxy::start(
        &docker.address(),
        &format!(
            "version = 1\n[adapters]\n{}",
            http_adapter("watcher", &watcher, "events = [\"die\"]")
        ),
    )
    .await;
    eventually(Duration::from_secs(5), "the proxy follows /events", || {
        let n = docker.requests().len();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    let first = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let per_second = docker.requests().len() as f64 / first.elapsed().as_secs_f64();
    assert!(
        per_second < 20.0,
        "the follower asked Docker for /events {per_second:.0} times a second"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_run_directly_is_reported_to_subscribers_as_die_then_destroy() {
    if !require_docker() {
        return;
    }
    let watcher = recorder().await;
    let proxy = ProxyProcess::start(Some(&format!(
        "version = 1\n[adapters]\n{}",
        http_adapter("watcher", &watcher, "events = [\"die\", \"destroy\"]")
    )));
    let dir = tempfile::tempdir().unwrap();
    let cidfile = dir.path().join("cid");
    let run = docker(
        &direct(),
        &[
            "run",
            "--rm",
            "--cidfile",
            cidfile.to_str().unwrap(),
            // The container's network is not the point (and spares the bridge).
            "--network",
            "none",
            IMAGE,
            "true",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "{run:?}");
    let id = std::fs::read_to_string(&cidfile).unwrap().trim().to_owned();

    let actions = eventually(Duration::from_secs(15), "die and destroy", || {
        let actions: Vec<String> = events_of(&watcher)
            .iter()
            .filter(|e| e.actor_id() == id)
            .map(|e| format!("{}:{}", e.kind(), e.action()))
            .collect();
        async move { (actions.len() >= 2).then_some(actions) }
    })
    .await;
    assert_eq!(
        actions,
        ["container:die", "container:destroy"],
        "{}",
        proxy.log()
    );
}

// ---------------------------------------------------------------------------------------
// Reload

/// Replaces a file atomically, as careful editors and config management do.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_applies_to_new_requests_while_one_in_flight_keeps_its_chains() {
    let docker = create_docker().await;
    // Slow only for bodies that ask for it, so that probing requests are quick.
    let slow = FakeAdapter::start(|call| match call {
        HookCall::PreHook { client_request }
            if client_request
                .body
                .as_deref()
                .is_some_and(|b| b.contains("Slow")) =>
        {
            AdapterReply::delay(Duration::from_secs(2), AdapterReply::pass(call))
        }
        other => AdapterReply::pass(other),
    })
    .await;
    let refuser = FakeAdapter::refuse(403, r#"{"message":"reloaded: refused"}"#).await;
    let adapters = [
        http_adapter("slow", &slow, ""),
        http_adapter("refuser", &refuser, ""),
    ];
    let proxy = ProxyProcess::options()
        .docker(&docker.address())
        .config(&config(
            &adapters,
            &[("POST /*/containers/create", &["slow"])],
        ))
        .args(["--config-poll", "100ms"])
        .log("info")
        .start();
    let client = TestClient::new(&proxy.host());

    let in_flight = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .post_json(CREATE, &json!({"Image": "busybox", "Slow": true}))
                .await
        }
    });
    eventually(
        Duration::from_secs(5),
        "the slow request is in its pre-hook",
        || {
            let n = slow.call_count();
            async move { (n >= 1).then_some(()) }
        },
    )
    .await;

    replace_file(
        &proxy.config_file(),
        &config(
            &adapters,
            &[("POST /*/containers/create", &["refuser", "slow"])],
        ),
    );
    eventually(
        Duration::from_secs(5),
        "new requests run the new chain",
        || {
            let client = client.clone();
            async move {
                let r = client.post_json(CREATE, &create_body()).await;
                (r.status == StatusCode::FORBIDDEN).then_some(())
            }
        },
    )
    .await;
    assert!(
        !in_flight.is_finished(),
        "the slow request must still be in flight after the reload for this test to mean anything"
    );

    let r = in_flight.await.unwrap();
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    let reached: Vec<Value> = docker.requests().iter().map(|r| r.json()).collect();
    assert!(reached.iter().any(|b| b["Slow"] == true), "{reached:?}");
    assert!(
        proxy.log().contains("configuration reloaded"),
        "{}",
        proxy.log()
    );
    let metrics = proxy.metrics().await;
    assert!(
        metric(
            &metrics,
            r#"powerstrip_config_reloads_total{outcome="applied"}"#
        ) >= Some(1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_on_sighup_is_rejected_and_the_old_chains_keep_serving() {
    let docker = FakeDocker::builder()
        .route("POST", "/*/containers/create", Responder::echo())
        .start_unix()
        .await;
    let adder = FakeAdapter::add_to_field("Number", 1).await;
    let good = config(
        &[http_adapter("adder", &adder, "")],
        &[("POST /*/containers/create", &["adder"])],
    );
    // Only SIGHUP reloads: the file is not polled during the test.
    let proxy = ProxyProcess::options()
        .docker(&docker.address())
        .config(&good)
        .args(["--config-poll", "1h"])
        .log("info")
        .start();
    let client = TestClient::new(&proxy.host());
    let number = |r: powerstrip_testkit::TestResponse| r.json()["Number"].clone();
    assert_eq!(
        number(client.post_json(CREATE, &json!({"Number": 1})).await),
        2
    );

    let file = proxy.config_file();
    replace_file(&file, "version = 1\n[adapters]\nadder = 3\n");
    proxy.signal("HUP");
    let log = eventually(Duration::from_secs(5), "the rejection is logged", || {
        let log = proxy.log();
        async move { log.contains("previous one keeps serving").then_some(log) }
    })
    .await;
    assert!(
        log.contains(&format!("{}:3: adapter \"adder\"", file.display())),
        "the log names file:line and the problem:\n{log}"
    );
    assert!(log.contains("SIGHUP"), "{log}");

    // Still the old chains, not pass-through.
    assert_eq!(
        number(client.post_json(CREATE, &json!({"Number": 1})).await),
        2
    );
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"powerstrip_config_reloads_total{outcome="rejected"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"powerstrip_config_reloads_total{outcome="applied"}"#
        ),
        None,
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------------
// Metrics and admin

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_hooks_failures_and_sessions() {
    let docker = FakeDocker::builder()
        .route(
            "POST",
            "/*/containers/create",
            Responder::json(201, json!({"Id": "abc"})),
        )
        .route("GET", "/*/version", Responder::json(200, json!({})))
        .route("GET", "/*/info", Responder::json(200, json!({})))
        .route("POST", "/*/containers/*/attach", Responder::upgrade_echo())
        .route("GET", "/_ping", Responder::raw(200, "text/plain", "OK"))
        .start_unix()
        .await;
    let null = recorder().await;
    let hanging = FakeAdapter::start(|_| AdapterReply::Hang).await;
    let broken = FakeAdapter::start(|_| AdapterReply::raw(500, "text/html", "<h1>oops</h1>")).await;
    let proxy = ProxyProcess::options()
        .docker(&docker.address())
        .config(&config(
            &[
                http_adapter("null", &null, ""),
                http_adapter("hanging", &hanging, "timeout = \"300ms\""),
                http_adapter("broken", &broken, "failure = \"ignore\""),
            ],
            &[
                ("POST /*/containers/create", &["null"]),
                ("GET /*/info", &["hanging"]),
                ("GET /*/version", &["broken"]),
            ],
        ))
        .start();
    let client = TestClient::new(&proxy.host());

    for _ in 0..3 {
        let r = client.post_json(CREATE, &create_body()).await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let timed_out = client.get("/v1.41/info").await;
    assert_eq!(timed_out.status, StatusCode::GATEWAY_TIMEOUT);
    let ignored = client.get("/v1.41/version").await;
    assert_eq!(ignored.status, StatusCode::OK, "{}", ignored.text());
    for _ in 0..2 {
        assert_eq!(client.get("/_ping").await.status, StatusCode::OK);
    }

    let text = proxy.metrics().await;
    for (series, value) in [
        (
            r#"powerstrip_requests_total{pattern="POST /*/containers/create",status="201"}"#,
            3.0,
        ),
        (
            r#"powerstrip_requests_total{pattern="GET /*/info",status="504"}"#,
            1.0,
        ),
        (
            r#"powerstrip_requests_total{pattern="GET /*/version",status="200"}"#,
            1.0,
        ),
        (
            r#"powerstrip_requests_total{pattern="(none)",status="200"}"#,
            2.0,
        ),
        (
            r#"powerstrip_hook_duration_seconds_count{adapter="null",hook="pre-hook"}"#,
            3.0,
        ),
        (
            r#"powerstrip_hook_errors_total{adapter="hanging",hook="pre-hook",outcome="timeout"}"#,
            1.0,
        ),
        (
            r#"powerstrip_hook_errors_total{adapter="broken",hook="pre-hook",outcome="ignored"}"#,
            1.0,
        ),
        ("powerstrip_upgraded_sessions", 0.0),
        ("powerstrip_upstream_connect_errors_total", 0.0),
    ] {
        assert_eq!(metric(&text, series), Some(value), "{series}\n{text}");
    }
    // Hook latencies are real durations: the hanging adapter was given up on after 300 ms.
    let waited = metric(
        &text,
        r#"powerstrip_hook_duration_seconds_sum{adapter="hanging",hook="pre-hook"}"#,
    )
    .unwrap_or_default();
    assert!((0.29..2.0).contains(&waited), "{waited} s\n{text}");

    // An attach session is counted while it is open.
    let (head, mut io) = client
        .upgrade(
            Request::post("/v1.41/containers/abc/attach?stream=1&stdin=1&stdout=1")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(head.status, StatusCode::SWITCHING_PROTOCOLS);
    let gauge = |want: f64| {
        let proxy = &proxy;
        async move {
            let text = proxy.metrics().await;
            (metric(&text, "powerstrip_upgraded_sessions") == Some(want)).then_some(())
        }
    };
    eventually(Duration::from_secs(5), "one session open", || gauge(1.0)).await;
    io.write_all(b"hi\n").await.unwrap();
    io.shutdown().await.unwrap();
    let mut echoed = Vec::new();
    io.read_to_end(&mut echoed).await.unwrap();
    assert_eq!(echoed, b"hi\neof\n");
    eventually(Duration::from_secs(5), "no session open", || gauge(0.0)).await;
    let text = proxy.metrics().await;
    assert_eq!(
        metric(&text, "powerstrip_upgraded_sessions_opened_total"),
        Some(1.0),
        "{text}"
    );

    let health = proxy.admin_get("/healthz").await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = proxy.admin_get("/readyz").await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_docker_makes_readyz_503_and_counts_connect_errors() {
    let dir = tempfile::tempdir().unwrap();
    let absent = format!("unix://{}", dir.path().join("absent.sock").display());
    let proxy = ProxyProcess::options().docker(&absent).start();
    let r = TestClient::new(&proxy.host()).get("/v1.41/version").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);

    let text = proxy.metrics().await;
    assert_eq!(
        metric(&text, "powerstrip_upstream_connect_errors_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        proxy.admin_get("/healthz").await.status,
        StatusCode::OK,
        "the process is up"
    );
    let ready = proxy.admin_get("/readyz").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.text().contains(&absent), "{}", ready.text());
}

// ---------------------------------------------------------------------------------------
// Limits and security

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_beyond_max_header_bytes_gets_431() {
    let docker = FakeDocker::builder()
        .route("GET", "/_ping", Responder::raw(200, "text/plain", "OK"))
        .start_unix()
        .await;
    let proxy = ProxyProcess::options()
        .docker(&docker.address())
        .args(["--max-header-bytes", "16384"])
        .start();
    let client = TestClient::new(&proxy.host());
    let with_header = |bytes: usize| {
        Request::get("/_ping")
            .header("X-Padding", "a".repeat(bytes))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let within = client.send(with_header(12_000)).await;
    assert_eq!(within.status, StatusCode::OK);
    let beyond = client.send(with_header(20_000)).await;
    assert_eq!(beyond.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(
        docker.requests().len(),
        1,
        "the big head never reached Docker"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_a_further_connection_until_one_closes() {
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let docker = FakeDocker::builder()
        .route(
            "GET",
            "/*/containers/*/logs",
            Responder::chunked("application/vnd.docker.raw-stream", rx),
        )
        .route("GET", "/*/hang", Responder::hang())
        .route("GET", "/_ping", Responder::raw(200, "text/plain", "OK"))
        .start_unix()
        .await;
    let proxy = ProxyProcess::options()
        .docker(&docker.address())
        .args(["--max-connections", "2"])
        .start();
    let client = TestClient::new(&proxy.host());

    let mut logs = client
        .request_streaming(
            Request::get("/v1.41/containers/abc/logs?follow=1")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(logs.status(), StatusCode::OK);
    let hanging = tokio::spawn({
        let client = client.clone();
        async move { client.get("/v1.41/hang").await }
    });
    eventually(
        Duration::from_secs(5),
        "both requests reached Docker",
        || {
            let n = docker.requests().len();
            async move { (n == 2).then_some(()) }
        },
    )
    .await;

    let mut third = tokio::spawn({
        let client = client.clone();
        async move { client.get("/_ping").await }
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut third)
            .await
            .is_err(),
        "a third connection was served beyond --max-connections 2"
    );
    assert_eq!(docker.requests().len(), 2);

    // The log stream ends; its connection closes and frees a slot.
    tx.send(Bytes::from_static(b"last line\n")).await.unwrap();
    drop(tx);
    let body = logs.body_mut();
    assert_eq!(
        next_chunk(body).await,
        Some(Bytes::from_static(b"last line\n"))
    );
    assert_eq!(next_chunk(body).await, None);
    drop(logs);
    let served = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the third connection is served once one closes")
        .unwrap();
    assert_eq!(served.status, StatusCode::OK);
    hanging.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unix_sockets_are_0660_and_given_to_the_socket_group() {
    let group = std::fs::read_to_string("/etc/group").unwrap();
    let gid: u32 = group
        .lines()
        .find_map(|l| l.strip_prefix("daemon:x:"))
        .and_then(|rest| rest.split(':').next())
        .and_then(|g| g.parse().ok())
        .expect("a daemon group in /etc/group");
    let plain = ProxyProcess::options().start();
    let meta = std::fs::metadata(plain.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);

    let grouped = ProxyProcess::options()
        .args(["--socket-group", "daemon"])
        .start();
    let meta = std::fs::metadata(grouped.socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid);

    let numeric = ProxyProcess::options()
        .args(["--socket-group", &gid.to_string()])
        .start();
    assert_eq!(std::fs::metadata(numeric.socket()).unwrap().gid(), gid);
}

#[test]
fn tcp_beyond_loopback_without_tls_is_refused_before_binding_anything() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("p.sock");
    let out = Command::new(env!("CARGO_BIN_EXE_powerstrip"))
        .args(["serve", "--listen"])
        .arg(format!("unix://{},tcp://0.0.0.0:0", socket.display()))
        .args(["--admin", "tcp://127.0.0.1:0", "--docker", &direct()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("--tlsverify") && stderr.contains("--insecure-tcp"),
        "{stderr}"
    );
    assert!(
        out.stdout.is_empty(),
        "nothing may be bound: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!socket.exists(), "nothing may be bound");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_tcp_starts_with_a_warning() {
    let docker = FakeDocker::builder()
        .route("GET", "/_ping", Responder::raw(200, "text/plain", "OK"))
        .start_unix()
        .await;
    let proxy = ProxyProcess::options()
        .docker(&docker.address())
        .listen("tcp://0.0.0.0:0")
        .args(["--insecure-tcp"])
        .start();
    let port = proxy.hosts[0].rsplit_once(':').unwrap().1.to_owned();
    let r = TestClient::new(&format!("tcp://127.0.0.1:{port}"))
        .get("/_ping")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let log = proxy.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("INSECURE")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_as_soon_as_the_proxy_is_up_reloads_and_never_kills_it() {
    let docker = create_docker().await;
    // `systemctl reload` (kill -HUP) may come as soon as the proxy printed DOCKER_HOST and
    // accepts connections. Several tries, as the window is short.
    for attempt in 1..=10 {
        let mut proxy = ProxyProcess::options()
            .docker(&docker.address())
            .config("version = 1\n")
            .args(["--config-poll", "1h"])
            .log("info")
            .start();
        proxy.signal("HUP");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = proxy.wait_exit(Duration::ZERO).await {
                panic!(
                    "attempt {attempt}: SIGHUP right after start ended the proxy ({status})\n{}",
                    proxy.log()
                );
            }
            if proxy.log().contains("configuration reloaded") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "attempt {attempt}: no reload after SIGHUP\n{}",
                proxy.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_as_soon_as_the_proxy_is_up_is_a_clean_exit() {
    let docker = create_docker().await;
    for attempt in 1..=10 {
        let mut proxy = ProxyProcess::options().docker(&docker.address()).start();
        proxy.signal("TERM");
        let status = proxy
            .wait_exit(Duration::from_secs(5))
            .await
            .unwrap_or_else(|| panic!("attempt {attempt}: still running after SIGTERM"));
        assert!(
            status.success(),
            "attempt {attempt}: SIGTERM right after start: {status}\n{}",
            proxy.log()
        );
        assert!(
            !proxy.socket().exists(),
            "attempt {attempt}: the socket file is left behind"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Graceful shutdown

async fn attach_docker() -> FakeDocker {
    FakeDocker::builder()
        .route("POST", "/*/containers/*/attach", Responder::upgrade_echo())
        .start_unix()
        .await
}

fn attach_request() -> Request<Full<Bytes>> {
    Request::post("/v1.41/containers/abc/attach?stream=1&stdin=1&stdout=1")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn echo(io: &mut powerstrip_testkit::UpgradedIo, text: &[u8]) {
    io.write_all(text).await.unwrap();
    let mut back = vec![0; text.len()];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut back))
        .await
        .expect("the session echoes")
        .unwrap();
    assert_eq!(back, text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_lets_an_attach_session_finish_then_exits_0() {
    let docker = attach_docker().await;
    let mut proxy = ProxyProcess::options()
        .docker(&docker.address())
        .args(["--grace", "10s"])
        .start();
    let (_, mut io) = TestClient::new(&proxy.host())
        .upgrade(attach_request())
        .await;
    echo(&mut io, b"before\n").await;

    proxy.signal("TERM");
    let socket = proxy.socket().to_owned();
    eventually(
        Duration::from_secs(5),
        "new connections are refused",
        || {
            let refused = std::os::unix::net::UnixStream::connect(&socket).is_err();
            async move { refused.then_some(()) }
        },
    )
    .await;
    echo(&mut io, b"after SIGTERM\n").await;
    assert!(
        proxy.wait_exit(Duration::ZERO).await.is_none(),
        "the process must wait for the open session"
    );

    // The client half-closes: the session ends, and so does the process, long before
    // the grace period.
    io.shutdown().await.unwrap();
    let mut rest = Vec::new();
    io.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"eof\n");
    let status = proxy
        .wait_exit(Duration::from_secs(3))
        .await
        .expect("the process exits once the last session ends");
    assert!(status.success(), "{status}\n{}", proxy.log());
    assert!(!socket.exists(), "the socket file is removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_session_that_never_ends_exits_after_the_grace_period() {
    let docker = attach_docker().await;
    let mut proxy = ProxyProcess::options()
        .docker(&docker.address())
        .args(["--grace", "1s"])
        .start();
    let (_, mut io) = TestClient::new(&proxy.host())
        .upgrade(attach_request())
        .await;
    echo(&mut io, b"open\n").await;

    let signalled = Instant::now();
    proxy.signal("TERM");
    let status = proxy
        .wait_exit(Duration::from_secs(4))
        .await
        .expect("the process exits after --grace 1s");
    let took = signalled.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "exited after {took:?}, before the grace period"
    );
    assert!(took < Duration::from_secs(3), "exited after {took:?}");
    assert!(status.success(), "{status}\n{}", proxy.log());
    drop(io);
}
