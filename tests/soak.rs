//! Soak: 200 clients at once through the `powerstrip` binary to the real dockerd for about
//! a minute — hooked creates and deletes, plain GETs, `logs -f` streams and interactive
//! `exec -i` sessions — checking every answer, and that the proxy's memory stays flat.
//!
//! Needs the real daemon (`scripts/ensure-docker`); under `CI=true` its absence fails.
//! Run with `--nocapture` for the summary (requests by kind, latencies, RSS samples).

#![allow(clippy::unwrap_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use powerstrip_testkit::{FakeAdapter, TestClient, TestResponse};
use serde_json::{Value, json};
use support::{Containers, IMAGE, ProxyProcess, require_docker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long the clients run.
const RUN_FOR: Duration = Duration::from_secs(60);
/// RSS samples before this are warm-up (pools, buffers and allocator arenas filling up).
const WARM_UP: Duration = Duration::from_secs(15);
/// The largest spread of the proxy's RSS after warm-up. With 200 clients the proxy's
/// working set is 200 client connections, their upstream connections and per-connection
/// buffers (tens of KiB each: ~10 MiB in all), and it is the same population all minute
/// long. A spread beyond 16 MiB after warm-up — more than that whole working set again,
/// over tens of thousands of requests — means memory grows with traffic.
const RSS_SPREAD_KIB: u64 = 16 * 1024;
/// Any single operation slower than this counts as a failure.
const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// The mix: 200 clients, creates a minority (dockerd on 2 cores is slow at creates).
const CREATORS: usize = 20;
const GETTERS: usize = 100;
const FOLLOWERS: usize = 40;
const EXECS: usize = 40;

/// What one client saw.
#[derive(Default)]
struct Stats {
    /// Latency of each successful operation, by kind.
    latencies: BTreeMap<&'static str, Vec<Duration>>,
    /// Failures (wrong status, bad body, garbled stream, timeout), by description.
    failures: Vec<String>,
    /// Log lines read, in order, by the followers.
    log_lines: u64,
    /// The fewest lines one follow read.
    min_lines_per_follow: Option<u64>,
    /// Lines echoed back by `cat` in exec sessions.
    echoed: u64,
}

impl Stats {
    fn ok(&mut self, kind: &'static str, took: Duration) {
        self.latencies.entry(kind).or_default().push(took);
    }

    fn fail(&mut self, what: String) {
        self.failures.push(what);
    }

    fn merge(&mut self, other: Stats) {
        for (kind, mut l) in other.latencies {
            self.latencies.entry(kind).or_default().append(&mut l);
        }
        self.failures.extend(other.failures);
        self.log_lines += other.log_lines;
        self.min_lines_per_follow = match (self.min_lines_per_follow, other.min_lines_per_follow) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.echoed += other.echoed;
    }
}

/// Runs `op` with [`OP_TIMEOUT`]; records its latency under `kind` or the failure.
async fn timed<F>(stats: &mut Stats, kind: &'static str, op: F) -> Option<F::Output>
where
    F: std::future::Future,
{
    let started = Instant::now();
    match tokio::time::timeout(OP_TIMEOUT, op).await {
        Ok(out) => {
            stats.ok(kind, started.elapsed());
            Some(out)
        }
        Err(_) => {
            stats.fail(format!("{kind}: no answer within {OP_TIMEOUT:?}"));
            None
        }
    }
}

/// Checks a complete answer: status, then `valid` on the body.
fn check(
    kind: &str,
    answer: std::io::Result<TestResponse>,
    status: StatusCode,
    valid: impl Fn(&TestResponse) -> bool,
) -> Result<TestResponse, String> {
    match answer {
        Err(e) => Err(format!("{kind}: {e}")),
        Ok(r) if r.status == status && valid(&r) => Ok(r),
        Ok(r) => Err(format!("{kind}: {} {:?}", r.status, r.text())),
    }
}

fn json_of(r: &TestResponse) -> Option<Value> {
    serde_json::from_slice(&r.body).ok()
}

fn empty(method: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn json_request(path: &str, body: &Value) -> Request<Full<Bytes>> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// Plain GETs, round-robin over four endpoints.
async fn getter(worker: usize, client: TestClient, deadline: Instant) -> Stats {
    let mut stats = Stats::default();
    let mut n = worker;
    while Instant::now() < deadline {
        n += 1;
        let (kind, path) = [
            ("GET /_ping", "/_ping"),
            ("GET /version", "/v1.41/version"),
            ("GET /info", "/v1.41/info"),
            ("GET /containers/json", "/v1.41/containers/json"),
        ][n % 4];
        let Some(answer) = timed(&mut stats, kind, client.try_send(empty("GET", path))).await
        else {
            continue;
        };
        let checked = check(kind, answer, StatusCode::OK, |r| match kind {
            "GET /_ping" => r.body.as_ref() == b"OK",
            "GET /version" => json_of(r).is_some_and(|v| v["ApiVersion"].is_string()),
            "GET /info" => json_of(r).is_some_and(|v| v["ID"].is_string()),
            _ => json_of(r).is_some_and(|v| {
                v.as_array()
                    .is_some_and(|a| a.iter().all(|c| c["Id"].is_string()))
            }),
        });
        if let Err(failure) = checked {
            stats.fail(failure);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stats
}

/// Hooked creates (`--network none`), checked by inspecting what Docker made of them,
/// then deleted.
async fn creator(
    worker: usize,
    client: TestClient,
    labels: Value,
    run: String,
    deadline: Instant,
) -> Stats {
    let mut stats = Stats::default();
    let mut n = 0;
    while Instant::now() < deadline {
        n += 1;
        let name = format!("soak-{run}-{worker}-{n}");
        let body = json!({
            "Image": IMAGE,
            "Cmd": ["true"],
            "Labels": labels,
            "HostConfig": {"NetworkMode": "none"},
        });
        let request = json_request(&format!("/v1.41/containers/create?name={name}"), &body);
        let Some(answer) = timed(
            &mut stats,
            "POST /containers/create",
            client.try_send(request),
        )
        .await
        else {
            continue;
        };
        let created = check("create", answer, StatusCode::CREATED, |r| {
            json_of(r).is_some_and(|v| {
                v["Id"]
                    .as_str()
                    .is_some_and(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            })
        });
        let id = match created {
            Ok(r) => r.json()["Id"].as_str().unwrap().to_owned(),
            Err(failure) => {
                stats.fail(failure);
                continue;
            }
        };
        // The hooks passed the body through unchanged: Docker made what was asked.
        let inspect = empty("GET", &format!("/v1.41/containers/{id}/json"));
        if let Some(answer) = timed(
            &mut stats,
            "GET /containers/ID/json",
            client.try_send(inspect),
        )
        .await
            && let Err(failure) = check("inspect", answer, StatusCode::OK, |r| {
                json_of(r).is_some_and(|v| {
                    v["Name"] == format!("/{name}")
                        && v["Config"]["Labels"] == labels
                        && v["HostConfig"]["NetworkMode"] == "none"
                })
            })
        {
            stats.fail(failure);
        }
        let delete = empty("DELETE", &format!("/v1.41/containers/{id}?force=1"));
        if let Some(answer) =
            timed(&mut stats, "DELETE /containers/ID", client.try_send(delete)).await
            && let Err(failure) = check("delete", answer, StatusCode::NO_CONTENT, |_| true)
        {
            stats.fail(failure);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stats
}

/// Reads Docker's multiplexed frames (8-byte header: stream, 0, 0, 0, big-endian size)
/// from `buffer`, appending stdout payloads to `text`; an error for a garbled header.
fn take_frames(buffer: &mut Vec<u8>, text: &mut Vec<u8>) -> Result<(), String> {
    loop {
        if buffer.len() < 8 {
            return Ok(());
        }
        if buffer[0] != 1 || buffer[1..4] != [0, 0, 0] {
            return Err(format!("garbled frame header {:?}", &buffer[..8]));
        }
        let size = u32::from_be_bytes([buffer[4], buffer[5], buffer[6], buffer[7]]) as usize;
        if buffer.len() < 8 + size {
            return Ok(());
        }
        text.extend_from_slice(&buffer[8..8 + size]);
        buffer.drain(..8 + size);
    }
}

/// `logs -f` on a container printing `line N` every 100 ms: read for 3 s, check the
/// frames are well-formed and the lines consecutive, drop, again.
async fn follower(worker: usize, client: TestClient, id: String, deadline: Instant) -> Stats {
    let mut stats = Stats::default();
    while Instant::now() < deadline {
        let path = format!("/v1.41/containers/{id}/logs?follow=1&stdout=1&stderr=1&tail=0");
        let Some(answer) = timed(
            &mut stats,
            "GET /containers/ID/logs?follow=1 (head)",
            client.try_request_streaming(empty("GET", &path)),
        )
        .await
        else {
            continue;
        };
        let response = match answer {
            Ok(r) if r.status() == StatusCode::OK => r,
            Ok(r) => {
                stats.fail(format!("logs -f: {}", r.status()));
                continue;
            }
            Err(e) => {
                stats.fail(format!("logs -f: {e}"));
                continue;
            }
        };
        let mut body = response.into_body();
        let (mut buffer, mut text) = (Vec::new(), Vec::new());
        let (mut last, mut lines) = (None::<u64>, 0u64);
        let until = Instant::now() + Duration::from_secs(3);
        let problem = loop {
            let frame = match tokio::time::timeout_at(until.into(), body.frame()).await {
                Err(_) => break None,
                Ok(None) => break Some("the stream ended".to_owned()),
                Ok(Some(Err(e))) => break Some(format!("the stream broke: {e}")),
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buffer.extend_from_slice(&data);
            if let Err(garbled) = take_frames(&mut buffer, &mut text) {
                break Some(garbled);
            }
            let mut bad = None;
            while let Some(end) = text.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = text.drain(..=end).collect();
                let number = std::str::from_utf8(&line)
                    .ok()
                    .and_then(|l| l.trim_end().strip_prefix("line "))
                    .and_then(|n| n.parse::<u64>().ok());
                match (number, last) {
                    (None, _) => bad = Some(format!("not a log line: {line:?}")),
                    (Some(n), Some(prev)) if n != prev + 1 => {
                        bad = Some(format!("line {n} after line {prev}"));
                    }
                    (Some(n), _) => {
                        last = Some(n);
                        lines += 1;
                    }
                }
            }
            if bad.is_some() {
                break bad;
            }
        };
        drop(body);
        match problem {
            Some(problem) => stats.fail(format!("logs -f (client {worker}): {problem}")),
            None if lines == 0 => stats.fail(format!("logs -f (client {worker}): no line in 3 s")),
            None => {
                stats.log_lines += lines;
                stats.min_lines_per_follow =
                    Some(stats.min_lines_per_follow.map_or(lines, |m| m.min(lines)));
            }
        }
    }
    stats
}

/// A small xorshift generator: the lines sent differ from session to session.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// `exec -i cat`: create, start with an upgrade, write a random line, read it back,
/// half-close, expect the end of the stream.
async fn exec_session(worker: usize, client: TestClient, id: String, deadline: Instant) -> Stats {
    let mut stats = Stats::default();
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        ^ ((worker as u64 + 1) << 32);
    while Instant::now() < deadline {
        let create = json_request(
            &format!("/v1.41/containers/{id}/exec"),
            &json!({"AttachStdin": true, "AttachStdout": true, "AttachStderr": true, "Cmd": ["cat"]}),
        );
        let Some(answer) = timed(
            &mut stats,
            "POST /containers/ID/exec",
            client.try_send(create),
        )
        .await
        else {
            continue;
        };
        let exec = match check("exec create", answer, StatusCode::CREATED, |r| {
            json_of(r).is_some_and(|v| v["Id"].is_string())
        }) {
            Ok(r) => r.json()["Id"].as_str().unwrap().to_owned(),
            Err(failure) => {
                stats.fail(failure);
                continue;
            }
        };
        let line = format!(
            "soak {worker} {:016x}{:016x}\n",
            next_random(&mut seed),
            next_random(&mut seed)
        );
        let session = async {
            let t0 = Instant::now();
            let start = Request::post(format!("/v1.41/exec/{exec}/start"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from_static(
                    br#"{"Detach":false,"Tty":false}"#,
                )))
                .unwrap();
            let (head, mut io) = client.upgrade(start).await;
            if head.status != StatusCode::SWITCHING_PROTOCOLS {
                return Err(format!("exec start: {}", head.status));
            }
            let t_upgraded = Instant::now();
            io.write_all(line.as_bytes())
                .await
                .map_err(|e| format!("writing to cat: {e}"))?;
            let (mut buffer, mut text) = (Vec::new(), Vec::new());
            let mut chunk = [0u8; 4096];
            while text.len() < line.len() {
                let n = io
                    .read(&mut chunk)
                    .await
                    .map_err(|e| format!("reading from cat: {e}"))?;
                if n == 0 {
                    return Err(format!("the session ended after {text:?}"));
                }
                buffer.extend_from_slice(&chunk[..n]);
                take_frames(&mut buffer, &mut text)?;
            }
            if text != line.as_bytes() {
                return Err(format!(
                    "cat answered {:?} to {line:?}",
                    String::from_utf8_lossy(&text)
                ));
            }
            let t_echoed = Instant::now();
            // Half-close: cat sees the end of its input, exits, and Docker ends the stream.
            io.shutdown()
                .await
                .map_err(|e| format!("half-closing: {e}"))?;
            let mut rest = Vec::new();
            io.read_to_end(&mut rest)
                .await
                .map_err(|e| format!("reading to the end: {e}"))?;
            if !rest.is_empty() {
                return Err(format!("more output after the echo: {rest:?}"));
            }
            Ok([t_upgraded - t0, t_echoed - t_upgraded, t_echoed.elapsed()])
        };
        match timed(&mut stats, "exec -i session", session).await {
            Some(Ok([upgrade, echo, eof])) => {
                stats.echoed += 1;
                stats.ok("  exec: start until 101", upgrade);
                stats.ok("  exec: line echoed", echo);
                stats.ok("  exec: half-close until EOF", eof);
            }
            Some(Err(failure)) => stats.fail(format!("exec (client {worker}): {failure}")),
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stats
}

/// CPU time (user + system) the process `pid` has used, from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after "PID (comm)": state is the 1st, utime the 12th, stime the 13th.
    let fields: Vec<u64> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default()
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|f| f.parse().ok())
        .collect();
    // The kernel counts in USER_HZ, 100 per second on Linux.
    Duration::from_millis(fields.iter().sum::<u64>() * 10)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_clients_for_a_minute_fail_nothing_and_memory_stays_flat() {
    if !require_docker() {
        return;
    }
    let containers = Containers::new("soak");
    let run = format!("{}", std::process::id());
    let echo = FakeAdapter::echo().await;
    let calls = tempfile::tempdir().unwrap();
    let calls_file = calls.path().join("calls.jsonl");
    let config = format!(
        "version = 1\n[adapters]\nlog = {{ builtin = \"logger\", file = {:?} }}\necho = {:?}\n\n[[endpoints]]\nmatch = \"POST /*/containers/create\"\npre = [\"log\", \"echo\"]\npost = [\"echo\", \"log\"]\n",
        calls_file.display().to_string(),
        echo.url()
    );
    let proxy = ProxyProcess::start(Some(&config));
    let client = TestClient::new(&proxy.host());

    // Long-running containers (started directly): 4 printing a numbered line every
    // 100 ms for the followers, 4 idle ones to exec `cat` in.
    let mut printers = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..4 {
        printers.push(
            containers
                .run_detached(&[
                    "--network",
                    "none",
                    IMAGE,
                    "sh",
                    "-c",
                    "i=0; while true; do echo \"line $i\"; i=$((i+1)); sleep 0.1; done",
                ])
                .await,
        );
        idle.push(
            containers
                .run_detached(&["--network", "none", IMAGE, "sleep", "3600"])
                .await,
        );
    }
    let fixtures = containers.count();

    let started = Instant::now();
    let deadline = started + RUN_FOR;
    let mut tasks = Vec::new();
    for i in 0..CREATORS {
        tasks.push(tokio::spawn(creator(
            i,
            client.clone(),
            containers.labels_json(),
            run.clone(),
            deadline,
        )));
    }
    for i in 0..GETTERS {
        tasks.push(tokio::spawn(getter(i, client.clone(), deadline)));
    }
    for i in 0..FOLLOWERS {
        let id = printers[i % printers.len()].clone();
        tasks.push(tokio::spawn(follower(i, client.clone(), id, deadline)));
    }
    for i in 0..EXECS {
        let id = idle[i % idle.len()].clone();
        tasks.push(tokio::spawn(exec_session(i, client.clone(), id, deadline)));
    }

    // The proxy's memory and descriptors, every 3 s.
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(3)).await;
        samples.push((
            started.elapsed(),
            proxy.memory_kib("VmRSS"),
            proxy.open_fds(),
        ));
    }
    let mut stats = Stats::default();
    for task in tasks {
        match tokio::time::timeout(OP_TIMEOUT + Duration::from_secs(10), task).await {
            Ok(Ok(s)) => stats.merge(s),
            Ok(Err(e)) => stats.fail(format!("a client died: {e}")),
            Err(_) => stats.fail("a client did not stop after the deadline".into()),
        }
    }
    let ran = started.elapsed();
    let peak = proxy.memory_kib("VmHWM");
    let cpu = cpu_time(proxy.pid());

    // --- Summary.
    let total: usize = stats.latencies.values().map(Vec::len).sum();
    println!(
        "soak: {} clients ({CREATORS} creators, {GETTERS} getters, {FOLLOWERS} log followers, \
         {EXECS} exec sessions) for {ran:?}: {total} operations, {} failures",
        CREATORS + GETTERS + FOLLOWERS + EXECS,
        stats.failures.len()
    );
    println!("{:<42} {:>7} {:>10} {:>10}", "kind", "count", "p50", "p99");
    for (kind, latencies) in &mut stats.latencies {
        latencies.sort_unstable();
        println!(
            "{kind:<42} {:>7} {:>10.1?} {:>10.1?}",
            latencies.len(),
            percentile(latencies, 0.50),
            percentile(latencies, 0.99)
        );
    }
    println!(
        "proxy CPU time: {cpu:?} ({:.0}% of one core)",
        100.0 * cpu.as_secs_f64() / ran.as_secs_f64()
    );
    println!(
        "log lines read in order: {} (fewest in one 3 s follow: {:?}); exec lines echoed: {}",
        stats.log_lines, stats.min_lines_per_follow, stats.echoed
    );
    println!("proxy RSS (KiB) and open fds, every 3 s; VmHWM {peak} KiB:");
    for (at, rss, fds) in &samples {
        println!("  {:>5.1}s  {rss:>8} KiB  {fds:>4} fds", at.as_secs_f64());
    }
    let steady: Vec<u64> = samples
        .iter()
        .filter(|(at, _, _)| *at >= WARM_UP)
        .map(|(_, rss, _)| *rss)
        .collect();
    let spread = steady.iter().max().unwrap_or(&0) - steady.iter().min().unwrap_or(&0);
    println!("RSS spread after {WARM_UP:?} warm-up: {spread} KiB (bound {RSS_SPREAD_KIB} KiB)");

    // --- What the operator checks.
    assert!(
        stats.failures.is_empty(),
        "{} failed or garbled answers (first 20): {:#?}",
        stats.failures.len(),
        &stats.failures[..stats.failures.len().min(20)]
    );
    for kind in [
        "POST /containers/create",
        "DELETE /containers/ID",
        "GET /_ping",
        "GET /info",
        "GET /containers/json",
        "exec -i session",
    ] {
        let n = stats.latencies.get(kind).map_or(0, Vec::len);
        assert!(n >= 20, "only {n} x {kind} in {ran:?}");
    }
    assert!(stats.log_lines >= 1000, "{} log lines", stats.log_lines);
    assert!(
        steady.len() >= 10,
        "{} RSS samples after warm-up",
        steady.len()
    );
    assert!(
        spread < RSS_SPREAD_KIB,
        "the proxy's RSS moved by {spread} KiB after warm-up: {samples:?}"
    );
    // Every create went through both hooks of both adapters, and every one was deleted.
    let creates = stats.latencies["POST /containers/create"].len();
    let logged = std::fs::read_to_string(&calls_file).unwrap();
    let logged_pre = logged
        .lines()
        .filter(|l| l.contains("\"pre-hook\"") && l.contains("/containers/create"))
        .count();
    let logged_post = logged
        .lines()
        .filter(|l| l.contains("\"post-hook\"") && l.contains("/containers/create"))
        .count();
    assert_eq!((logged_pre, logged_post), (creates, creates));
    assert_eq!(echo.call_count(), 2 * creates);
    assert_eq!(
        containers.count(),
        fixtures,
        "every created container was deleted"
    );
    assert!(proxy.is_running());
}
