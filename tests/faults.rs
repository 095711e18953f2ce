//! The fault matrix: what an operator sees when the things around the proxy fail — an
//! adapter that is down, a Docker daemon that stops and comes back under load, clients
//! that vanish mid-upload and mid-stream, and broken configuration files reloaded under
//! load. Each fault is its own test, against the real `powerstrip` binary and a real
//! dockerd. (Adapters that hang, close mid-answer or answer garbage: tests/hooks.rs.)
//!
//! Needs the real daemon (`scripts/ensure-docker`); the restart test also starts a second,
//! independent dockerd (`support::SecondDocker`). Under `CI=true` their absence fails.

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::Full;
use powerstrip_protocol::HookCall;
use powerstrip_testkit::{
    AdapterReply, ChannelBody, FakeAdapter, TestClient, TestResponse, next_chunk,
};
use serde_json::{Value, json};
use support::{
    Containers, IMAGE, ProxyProcess, SecondDocker, direct, docker, eventually, metric,
    require_docker,
};

/// A series of `/metrics`, 0 when the proxy has not counted anything under it yet.
fn value(metrics: &str, series: &str) -> f64 {
    metric(metrics, series).unwrap_or(0.0)
}

/// An HTTP adapter that passes hooks through and acknowledges event calls (2xx).
async fn acknowledging_echo() -> FakeAdapter {
    FakeAdapter::start(|call| match call {
        HookCall::Event { .. } | HookCall::Unwind { .. } => {
            AdapterReply::Json(200, json!({"PowerstripProtocolVersion": 1}))
        }
        other => AdapterReply::pass(other),
    })
    .await
}

// ---------------------------------------------------------------------------------------
// 1. An adapter that is down, with failure = "ignore"

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ignored_adapter_that_is_down_lets_docker_run_succeed_and_is_counted() {
    if !require_docker() {
        return;
    }
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!(
        "version = 1\n[adapters]\ndown = {{ url = \"http://127.0.0.1:{port}/hook\", timeout = \"2s\", failure = \"ignore\" }}\n\n[[endpoints]]\nmatch = \"POST /*/containers/create\"\npre = [\"down\"]\npost = [\"down\"]\n"
    );
    let proxy = ProxyProcess::options().config(&config).start();

    let started = Instant::now();
    let run = docker(&proxy.host(), &["run", "--rm", IMAGE, "echo", "ok"], None).await;
    let took = started.elapsed();
    assert_eq!(run.code, 0, "docker run through the proxy: {run:?}");
    assert_eq!(run.out(), "ok\n", "{run:?}");

    let metrics = proxy.metrics().await;
    let ignored = |hook: &str| {
        value(
            &metrics,
            &format!(
                r#"powerstrip_hook_errors_total{{adapter="down",hook="{hook}",outcome="ignored"}}"#
            ),
        )
    };
    assert!(ignored("pre-hook") >= 1.0, "{metrics}");
    assert!(ignored("post-hook") >= 1.0, "{metrics}");
    assert!(
        value(
            &metrics,
            r#"powerstrip_requests_total{pattern="POST /*/containers/create",status="201"}"#
        ) >= 1.0,
        "the create itself succeeded: {metrics}"
    );
    let log = proxy.log();
    assert!(
        log.contains("skipped") && log.contains("adapter=down"),
        "the skipped adapter is named in the log:\n{log}"
    );
    println!(
        "adapter down, failure=ignore: docker run took {took:?}; ignored pre {} post {}",
        ignored("pre-hook"),
        ignored("post-hook")
    );
}

// ---------------------------------------------------------------------------------------
// 2. Docker stopped and restarted under load, the proxy left running

/// What one request of the load was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Ping,
    Version,
    List,
    Create,
    Delete,
}

/// How it ended.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    /// Docker's success.
    Ok,
    /// The proxy's `502 {"message":"powerstrip: cannot reach Docker at unix://..."}`.
    Unreachable,
    /// Anything else: a failure of the test.
    Other(String),
}

/// Docker's own Docker-style error (not the proxy's, which starts with `powerstrip:`).
fn is_docker_error(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Other(what)
        if what.contains("{\"message\":") && !what.contains("powerstrip:"))
}

#[derive(Clone, Debug)]
struct Sample {
    kind: Kind,
    started: Instant,
    elapsed: Duration,
    outcome: Outcome,
}

/// Classifies an answer: the expected success (checked by `valid`), the proxy's 502 for
/// an unreachable Docker, or anything else.
fn classify(
    answer: Result<std::io::Result<TestResponse>, tokio::time::error::Elapsed>,
    expected: StatusCode,
    unreachable: &str,
    valid: impl Fn(&TestResponse) -> bool,
) -> (Outcome, Option<TestResponse>) {
    match answer {
        Err(_) => (Outcome::Other("no answer within 10 s".into()), None),
        Ok(Err(e)) => (Outcome::Other(format!("connection failed: {e}")), None),
        Ok(Ok(response)) => {
            let outcome = if response.status == expected && valid(&response) {
                Outcome::Ok
            } else if response.status == StatusCode::BAD_GATEWAY
                && response.header("content-type") == Some("application/json")
                && serde_json::from_slice::<Value>(&response.body).ok()
                    == Some(json!({ "message": unreachable }))
            {
                Outcome::Unreachable
            } else {
                Outcome::Other(format!("{}: {}", response.status, response.text()))
            };
            (outcome, Some(response))
        }
    }
}

/// One client of the load: GET /_ping, /version, /containers/json, and a hooked create
/// followed by a delete, until `stop`.
async fn load_loop(
    worker: usize,
    client: TestClient,
    unreachable: String,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
) {
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let record = |kind, started: Instant, outcome| {
            samples.lock().unwrap().push(Sample {
                kind,
                started,
                elapsed: started.elapsed(),
                outcome,
            });
        };
        let limit = Duration::from_secs(10);
        let started = Instant::now();
        match n % 4 {
            0 => {
                let answer = tokio::time::timeout(limit, client.try_send(get("/_ping"))).await;
                let (outcome, _) = classify(answer, StatusCode::OK, &unreachable, |r| {
                    r.body.as_ref() == b"OK"
                });
                record(Kind::Ping, started, outcome);
            }
            1 => {
                let answer =
                    tokio::time::timeout(limit, client.try_send(get("/v1.41/version"))).await;
                let (outcome, _) = classify(answer, StatusCode::OK, &unreachable, |r| {
                    serde_json::from_slice::<Value>(&r.body)
                        .is_ok_and(|v| v["ApiVersion"].is_string())
                });
                record(Kind::Version, started, outcome);
            }
            2 => {
                let answer = tokio::time::timeout(
                    limit,
                    client.try_send(get("/v1.41/containers/json?all=1")),
                )
                .await;
                let (outcome, _) = classify(answer, StatusCode::OK, &unreachable, |r| {
                    serde_json::from_slice::<Value>(&r.body).is_ok_and(|v| v.is_array())
                });
                record(Kind::List, started, outcome);
            }
            _ => {
                let body = json!({
                    "Image": IMAGE,
                    "Cmd": ["true"],
                    "HostConfig": {"NetworkMode": "none"},
                });
                let request = Request::post(format!(
                    "/v1.41/containers/create?name=fault-load-{worker}-{n}"
                ))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap();
                let answer = tokio::time::timeout(limit, client.try_send(request)).await;
                let (outcome, response) =
                    classify(answer, StatusCode::CREATED, &unreachable, |r| {
                        serde_json::from_slice::<Value>(&r.body)
                            .is_ok_and(|v| v["Id"].as_str().is_some_and(|id| id.len() == 64))
                    });
                let created = outcome == Outcome::Ok;
                record(Kind::Create, started, outcome);
                if created {
                    let id = response.unwrap().json()["Id"].as_str().unwrap().to_owned();
                    let started = Instant::now();
                    let request = Request::delete(format!("/v1.41/containers/{id}?force=1"))
                        .body(Full::new(Bytes::new()))
                        .unwrap();
                    let answer = tokio::time::timeout(limit, client.try_send(request)).await;
                    let (outcome, _) =
                        classify(answer, StatusCode::NO_CONTENT, &unreachable, |_| true);
                    record(Kind::Delete, started, outcome);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).body(Full::new(Bytes::new())).unwrap()
}

/// How many times the proxy (logging at `info`) connected to Docker's event stream.
fn follower_connections(proxy: &ProxyProcess) -> usize {
    proxy.log().matches("following Docker's events").count()
}

/// The `retry_in=` of the event follower's last "cannot follow Docker's events" warning.
fn last_retry_in(log: &str) -> Option<Duration> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("cannot follow Docker's events"))?;
    let value = line.split("retry_in=").nth(1)?.split_whitespace().next()?;
    if let Some(ms) = value.strip_suffix("ms") {
        ms.parse().ok().map(Duration::from_millis)
    } else {
        value
            .strip_suffix('s')?
            .parse()
            .ok()
            .map(Duration::from_secs_f64)
    }
}

/// Whether `adapter` received a `die` event for the container named `name`.
fn got_die(adapter: &FakeAdapter, name: &str) -> bool {
    adapter.calls().iter().any(|call| match call {
        HookCall::Event { event } => {
            event.action() == "die" && event.attribute("name") == Some(name)
        }
        _ => false,
    })
}

/// Runs a container directly on `host` that exits at once; returns when it has exited.
async fn run_to_exit(host: &str, name: &str) {
    let run = docker(
        host,
        &[
            "run",
            "--rm",
            "--name",
            name,
            "--network",
            "none",
            IMAGE,
            "true",
        ],
        None,
    )
    .await;
    assert_eq!(run.code, 0, "docker run {name}: {run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_stopped_and_restarted_under_load_heals_without_restarting_the_proxy() {
    if !require_docker() {
        return;
    }
    let Some(mut second) = tokio::task::block_in_place(SecondDocker::start) else {
        return;
    };
    let null = acknowledging_echo().await;
    let watcher = acknowledging_echo().await;
    let config = format!(
        "version = 1\n[adapters]\nnull = {:?}\nwatcher = {{ url = {:?}, events = [\"die\"] }}\n\n[[endpoints]]\nmatch = \"POST /*/containers/create\"\npre = [\"null\"]\npost = [\"null\"]\n",
        null.url(),
        watcher.url()
    );
    let proxy = ProxyProcess::options()
        .docker(&second.host())
        .config(&config)
        .log("info")
        .start();
    let pid = proxy.pid();
    let client = TestClient::new(&proxy.host());
    let unreachable = format!("powerstrip: cannot reach Docker at {}", second.host());

    // Before anything fails: the follower is connected and delivers die events.
    eventually(
        Duration::from_secs(10),
        "the event follower connects",
        || {
            let n = follower_connections(&proxy);
            async move { (n >= 1).then_some(()) }
        },
    )
    .await;
    run_to_exit(&second.host(), "fault-die-before").await;
    eventually(Duration::from_secs(10), "die of fault-die-before", || {
        let got = got_die(&watcher, "fault-die-before");
        async move { got.then_some(()) }
    })
    .await;

    // The load: 8 clients.
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            tokio::spawn(load_loop(
                worker,
                client.clone(),
                unreachable.clone(),
                stop.clone(),
                samples.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Stop the daemon. Leave it down (2.5 to 8 s) until the event follower has just
    // failed a reconnection and announced its next try a second away, its longest wait
    // (`... retrying ... retry_in=1s`): that leaves a window after the restart in which
    // Docker runs but the proxy does not follow its events yet.
    let t_stop = Instant::now();
    let stop_took = tokio::task::block_in_place(|| second.stop());
    let t_down = Instant::now();
    let reconnects_before = follower_connections(&proxy);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let waited = t_down.elapsed();
        let backed_off = last_retry_in(&proxy.log()) >= Some(Duration::from_secs(1));
        if waited >= Duration::from_secs(8) || (waited >= Duration::from_millis(2500) && backed_off)
        {
            break;
        }
    }
    let t_restart = Instant::now();
    tokio::task::block_in_place(|| second.restart());
    let t_up = Instant::now();

    // A container that dies at once, while the follower is (almost surely) still waiting
    // out its backoff: it reconnects asking for events `since` the last one it saw, so the
    // die must be delivered anyway.
    let reconnects_at_up = follower_connections(&proxy);
    run_to_exit(&second.host(), "fault-die-window").await;
    let reconnects_after_window = follower_connections(&proxy);
    let died_in_window = reconnects_after_window == reconnects_before;

    // Keep the load on until 4 s of nothing but successes (at most 20 s after restart).
    let recovered_at = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let samples = samples.lock().unwrap().clone();
        let last_failure_end = samples
            .iter()
            .filter(|s| s.outcome != Outcome::Ok)
            .map(|s| s.started + s.elapsed)
            .max()
            .unwrap_or(t_up)
            .max(t_up);
        if last_failure_end.elapsed() >= Duration::from_secs(4) {
            break last_failure_end;
        }
        assert!(
            t_up.elapsed() < Duration::from_secs(20),
            "requests through the proxy still fail 20 s after Docker came back"
        );
    };
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(15), worker)
            .await
            .expect("a load client stops")
            .unwrap();
    }
    run_to_exit(&second.host(), "fault-die-after").await;
    eventually(
        Duration::from_secs(10),
        "die events of fault-die-window and fault-die-after reach the adapter",
        || {
            let got = got_die(&watcher, "fault-die-window") && got_die(&watcher, "fault-die-after");
            async move { got.then_some(()) }
        },
    )
    .await;

    // --- What the operator checks.
    let samples = samples.lock().unwrap().clone();
    let mut counts: BTreeMap<(Kind, &str), usize> = BTreeMap::new();
    for s in &samples {
        let outcome = match s.outcome {
            Outcome::Ok => "ok",
            Outcome::Unreachable => "502",
            Outcome::Other(_) => "other",
        };
        *counts.entry((s.kind, outcome)).or_default() += 1;
    }
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.started >= t_down && s.started + s.elapsed <= t_restart)
        .collect();
    let slowest_502 = during.iter().map(|s| s.elapsed).max().unwrap_or_default();
    let after_recovery = samples.iter().filter(|s| s.started >= recovered_at).count();
    println!(
        "docker restart under load: stop took {stop_took:?}, down for {:?}, back up in {:?}; \
         recovered {:?} after Docker answered again; {} requests: {counts:?}; \
         {} during the outage, slowest 502 {slowest_502:?}; {after_recovery} after recovery; \
         follower connections: before outage {reconnects_before}, at restart {reconnects_at_up}, \
         after the window container {reconnects_after_window}; the window container died \
         {} the follower reconnected",
        t_restart - t_down,
        t_up - t_restart,
        recovered_at.saturating_duration_since(t_up),
        samples.len(),
        during.len(),
        if died_in_window { "before" } else { "after" },
    );
    // A request Docker was already handling when it was told to stop may get Docker's own
    // error (a create cut off mid-way): that is Docker's answer, relayed. Anything else
    // is not.
    let others: Vec<String> = samples
        .iter()
        .filter(|s| {
            !(s.started < t_down && s.started + s.elapsed >= t_stop && is_docker_error(&s.outcome))
        })
        .filter_map(|s| match &s.outcome {
            Outcome::Other(what) => Some(format!(
                "{:?} at {:?} after the stop: {what}",
                s.kind,
                s.started.saturating_duration_since(t_stop)
            )),
            _ => None,
        })
        .collect();
    assert!(
        others.is_empty(),
        "{} responses were neither success nor the proxy's 502 (first 10): {:#?}",
        others.len(),
        &others[..others.len().min(10)]
    );
    assert!(
        during.len() >= 8,
        "the load kept asking during the outage: {}",
        during.len()
    );
    for s in &during {
        assert_eq!(
            s.outcome,
            Outcome::Unreachable,
            "{:?} during the outage",
            s.kind
        );
        assert!(
            s.elapsed < Duration::from_secs(1),
            "a 502 during the outage took {:?} ({:?})",
            s.elapsed,
            s.kind
        );
    }
    for kind in [Kind::Ping, Kind::Version, Kind::List, Kind::Create] {
        assert!(
            samples
                .iter()
                .any(|s| s.kind == kind && s.started >= t_up && s.outcome == Outcome::Ok),
            "{kind:?} succeeds again after the restart"
        );
    }
    assert!(
        recovered_at.saturating_duration_since(t_up) < Duration::from_secs(10),
        "the proxy healed {:?} after Docker answered again",
        recovered_at.saturating_duration_since(t_up)
    );
    assert!(
        after_recovery >= 20,
        "{after_recovery} requests after recovery"
    );
    assert!(
        proxy.is_running() && proxy.pid() == pid,
        "the same proxy process"
    );
    let metrics = proxy.metrics().await;
    assert!(
        value(&metrics, "powerstrip_upstream_connect_errors_total") >= during.len() as f64,
        "{metrics}"
    );
    assert!(
        value(
            &metrics,
            r#"powerstrip_events_total{adapter="watcher",outcome="delivered"}"#
        ) >= 3.0,
        "{metrics}"
    );
    if !died_in_window {
        println!(
            "NOTE: this run the window container died after the follower had reconnected, \
             so its delivery does not prove the catch-up across a reconnect"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 3. Clients that disconnect mid-upload and mid-stream leave nothing behind

/// A ustar header for one regular file of `size` bytes, so that Docker keeps reading the
/// build context (a context of zeros would end at once: two zero blocks end an archive).
fn tar_header(name: &str, size: u64) -> Bytes {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let mut put = |at: usize, text: &str| h[at..at + text.len()].copy_from_slice(text.as_bytes());
    put(100, "0000644\0");
    put(108, "0000000\0");
    put(116, "0000000\0");
    put(124, &format!("{size:011o}\0"));
    put(136, "00000000000\0");
    put(156, "0");
    put(257, "ustar\0");
    put(263, "00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    Bytes::copy_from_slice(&h)
}

/// What the leak check looks at.
async fn leak_figures(proxy: &ProxyProcess) -> (usize, f64, f64) {
    let metrics = proxy.metrics().await;
    (
        proxy.open_fds(),
        value(&metrics, "powerstrip_requests_in_flight"),
        value(&metrics, "powerstrip_upgraded_sessions"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_vanish_mid_upload_and_mid_stream_leak_nothing() {
    if !require_docker() {
        return;
    }
    let containers = Containers::new("faults-vanish");
    let chatty = containers
        .run_detached(&[
            "--network",
            "none",
            IMAGE,
            "sh",
            "-c",
            "while true; do echo tick; sleep 0.1; done",
        ])
        .await;
    let proxy = ProxyProcess::start(None);
    let client = TestClient::new(&proxy.host());
    let docker_client = TestClient::new(&direct());

    // Warm up (the pool keeps this connection to Docker idle) and take the baseline.
    assert_eq!(client.get("/_ping").await.status, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (fds_before, in_flight_before, sessions_before) = leak_figures(&proxy).await;
    assert_eq!((in_flight_before, sessions_before), (0.0, 0.0));

    // 20 uploads (a build context streamed in chunks), dropped half-way. The senders are
    // kept so that no body ever ends cleanly: each upload ends by its connection closing.
    let mut senders = Vec::new();
    let mut peak_in_flight = 0.0f64;
    for i in 0..20 {
        let (tx, body) = ChannelBody::channel();
        let request = Request::post(format!("/v1.41/build?t=powerstrip-faults-never-{i}"))
            .header(header::CONTENT_TYPE, "application/x-tar")
            .body(body)
            .unwrap();
        let upload = {
            let client = client.clone();
            tokio::spawn(async move { client.try_request_streaming(request).await.map(|_| ()) })
        };
        tx.send(tar_header("big", 64 << 20)).await.unwrap();
        for _ in 0..4 {
            tx.send(Bytes::from(vec![b'x'; 32 << 10])).await.unwrap();
        }
        if i == 0 {
            peak_in_flight = eventually(Duration::from_secs(5), "the upload is in flight", || {
                let proxy = &proxy;
                async move {
                    let metrics = proxy.metrics().await;
                    let n = value(&metrics, "powerstrip_requests_in_flight");
                    (n >= 1.0).then_some(n)
                }
            })
            .await;
        } else {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        assert!(!upload.is_finished(), "Docker answered a build mid-upload");
        upload.abort();
        senders.push(tx);
    }

    // 40 streams dropped mid-way: 20 events (10 unfiltered, 10 filtered so that nothing
    // ever arrives — the proxy must notice the client left without writing to it) and
    // 20 logs -f.
    for i in 0..40 {
        let path = match i % 4 {
            0 => "/v1.41/events".to_owned(),
            1 => "/v1.41/events?filters=%7B%22label%22%3A%5B%22powerstrip-never%3D1%22%5D%7D"
                .to_owned(),
            _ => format!("/v1.41/containers/{chatty}/logs?follow=1&stdout=1&stderr=1&tail=1"),
        };
        let response = client.request_streaming(get(&path)).await;
        assert_eq!(response.status(), 200, "GET {path}");
        let mut body = response.into_body();
        if path.contains("/logs") {
            let chunk = tokio::time::timeout(Duration::from_secs(5), next_chunk(&mut body))
                .await
                .expect("logs -f streams");
            assert!(chunk.is_some(), "logs -f ended");
        } else {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(body);
    }

    // 10 upgraded sessions dropped: exec `cat` with stdin (Docker sees stdin end) and
    // attach to the chatty container without stdin (the proxy must notice when it writes).
    for i in 0..10 {
        let request = if i % 2 == 0 {
            let exec = docker_client
                .post_json(
                    &format!("/v1.41/containers/{chatty}/exec"),
                    &json!({"AttachStdin": true, "AttachStdout": true, "AttachStderr": true, "Cmd": ["cat"]}),
                )
                .await;
            assert_eq!(exec.status, 201, "{}", exec.text());
            let id = exec.json()["Id"].as_str().unwrap().to_owned();
            Request::post(format!("/v1.41/exec/{id}/start"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from_static(
                    br#"{"Detach":false,"Tty":false}"#,
                )))
                .unwrap()
        } else {
            Request::post(format!(
                "/v1.41/containers/{chatty}/attach?stream=1&stdout=1&stderr=1"
            ))
            .body(Full::new(Bytes::new()))
            .unwrap()
        };
        let (head, io) = client.upgrade(request).await;
        assert_eq!(head.status, 101);
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(io);
    }
    let (fds_peak, in_flight_peak, sessions_peak) = leak_figures(&proxy).await;

    // Everything the proxy held for those clients goes away. Bound: the baseline plus 2 —
    // the pool may keep idle keep-alive connections to Docker that a completed request
    // left (only the warm-up and baseline requests completed normally, both before the
    // baseline), and the admin connection of the previous /metrics scrape, which the proxy
    // closes asynchronously.
    let bound = fds_before + 2;
    let settled = Instant::now();
    let (fds_after, in_flight_after, sessions_after) = eventually(
        Duration::from_secs(15),
        "the proxy lets go of vanished clients",
        || {
            let proxy = &proxy;
            async move {
                let figures = leak_figures(proxy).await;
                (figures.0 <= bound && figures.1 == 0.0 && figures.2 == 0.0).then_some(figures)
            }
        },
    )
    .await;
    println!(
        "vanishing clients: fds baseline {fds_before}, right after the drops {fds_peak} \
         (in flight {in_flight_peak}, sessions {sessions_peak}), settled to {fds_after} in {:?} \
         (bound {bound}); in flight during the first upload {peak_in_flight}; \
         in flight after {in_flight_after}, sessions after {sessions_after}",
        settled.elapsed()
    );
    drop(senders);
    let metrics = proxy.metrics().await;
    assert!(
        value(&metrics, "powerstrip_upgraded_sessions_opened_total") >= 10.0,
        "{metrics}"
    );
    assert_eq!(
        client.get("/_ping").await.status,
        200,
        "the proxy still serves"
    );
}

// ---------------------------------------------------------------------------------------
// 4. SIGHUP with broken files, under load

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_alternating_broken_and_valid_files_under_load_fails_no_request() {
    if !require_docker() {
        return;
    }
    let first = FakeAdapter::echo().await;
    let second = FakeAdapter::echo().await;
    let valid = |adapter: &FakeAdapter| {
        format!(
            "version = 1\n[adapters]\nlog = {{ builtin = \"logger\" }}\nnull = {:?}\n\n[[endpoints]]\nmatch = \"* *\"\npre = [\"log\", \"null\"]\npost = [\"null\", \"log\"]\n",
            adapter.url()
        )
    };
    let broken = [
        // Not TOML at all.
        "version = 1\n[adapters\nlog = { builtin = \"logger\" }\n".to_owned(),
        // TOML, but an endpoint names an adapter that does not exist.
        "version = 1\n[adapters]\nlog = { builtin = \"logger\" }\n\n[[endpoints]]\nmatch = \"* *\"\npre = [\"log\", \"missing\"]\n".to_owned(),
    ];
    // Only SIGHUP reloads: the file is not polled during the test.
    let proxy = ProxyProcess::options()
        .config(&valid(&first))
        .args(["--config-poll", "1h"])
        .start();
    let client = TestClient::new(&proxy.host());

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let loads: Vec<_> = (0..4)
        .map(|i| {
            let (client, stop, failures) = (client.clone(), stop.clone(), failures.clone());
            tokio::spawn(async move {
                let paths = ["/_ping", "/v1.41/version", "/v1.41/containers/json"];
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let path = paths[(i + n) % paths.len()];
                    n += 1;
                    let failure = match client.try_send(get(path)).await {
                        Ok(r)
                            if r.status == 200
                                && (path == "/_ping"
                                    || serde_json::from_slice::<Value>(&r.body).is_ok()) =>
                        {
                            None
                        }
                        Ok(r) => Some(format!("GET {path}: {} {}", r.status, r.text())),
                        Err(e) => Some(format!("GET {path}: {e}")),
                    };
                    if let Some(failure) = failure {
                        failures.lock().unwrap().push(failure);
                        // A dead proxy fails at once: do not spin (nor fill memory).
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                n
            })
        })
        .collect();

    let reloads = |outcome: &'static str| {
        let proxy = &proxy;
        async move {
            value(
                &proxy.metrics().await,
                &format!(r#"powerstrip_config_reloads_total{{outcome="{outcome}"}}"#),
            )
        }
    };
    let started = Instant::now();
    for round in 1..=10u32 {
        proxy.write_config(&broken[round as usize % 2]);
        proxy.signal("HUP");
        eventually(
            Duration::from_secs(5),
            "the broken file is rejected",
            || async { (reloads("rejected").await >= f64::from(round)).then_some(()) },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(150)).await;
        let adapter = if round % 2 == 1 { &second } else { &first };
        proxy.write_config(&valid(adapter));
        proxy.signal("HUP");
        eventually(
            Duration::from_secs(5),
            "the valid file is applied",
            || async { (reloads("applied").await >= f64::from(round)).then_some(()) },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let took = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let mut requests = 0;
    for load in loads {
        requests += load.await.unwrap();
    }

    let failures = failures.lock().unwrap().clone();
    let metrics = proxy.metrics().await;
    let (applied, rejected) = (reloads("applied").await, reloads("rejected").await);
    println!(
        "SIGHUP under load: 10 broken + 10 valid reloads in {took:?}; {requests} requests, \
         {} failed; reloads applied {applied}, rejected {rejected}; adapter calls: first {}, second {}",
        failures.len(),
        first.call_count(),
        second.call_count()
    );
    assert!(
        failures.is_empty(),
        "{} failed requests (first 10): {:#?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(proxy.is_running(), "SIGHUP never stops the proxy");
    assert!(requests >= 100, "the load ran: {requests} requests");
    assert_eq!((applied, rejected), (10.0, 10.0), "{metrics}");
    // Both configurations served while they were in force (the broken ones never did:
    // no request failed), and the last one serves now.
    assert!(first.call_count() > 0 && second.call_count() > 0);
    let before = first.call_count();
    assert_eq!(client.get("/_ping").await.status, 200);
    assert_eq!(
        first.call_count(),
        before + 2,
        "the last valid file (adapter `first`, pre and post) serves"
    );
    assert!(proxy.log().contains("previous one keeps serving"));
}
