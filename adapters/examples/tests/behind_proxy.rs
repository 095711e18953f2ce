//! Each example in-process behind the real proxy, in front of a scripted Docker — the way
//! an adapter author tests with `powerstrip-testkit`.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use powerstrip_examples::image_policy::ImagePolicy;
use powerstrip_examples::logger::Logger;
use powerstrip_examples::slowreq::SlowReq;
use powerstrip_testkit::{FakeAdapter, FakeDocker, Responder, TestProxy};
use serde_json::json;

const CREATE: &str = "/v1.41/containers/create";

async fn docker() -> FakeDocker {
    FakeDocker::builder()
        .route(
            "POST",
            "/*/containers/create",
            Responder::json(201, json!({"Id": "abc", "Warnings": []})),
        )
        .start_unix()
        .await
}

fn hooked(name: &str, pre: bool, post: bool) -> String {
    let chain = |on: bool| {
        if on {
            format!("[{name:?}]")
        } else {
            "[]".to_owned()
        }
    };
    format!(
        "[adapters]\n{name} = {{ builtin = {name:?} }}\n[[endpoints]]\nmatch = \"POST /*/containers/create\"\npre = {}\npost = {}\n",
        chain(pre),
        chain(post)
    )
}

#[tokio::test]
async fn image_policy_refuses_before_docker_sees_anything() {
    let docker = docker().await;
    let proxy = TestProxy::builder(&docker.address())
        .adapter(
            "policy",
            ImagePolicy::new(&["busybox:*".into()], false).unwrap(),
        )
        .toml(&hooked("policy", true, false))
        .start()
        .await;
    let refused = proxy
        .client()
        .post_json(CREATE, &json!({"Image": "nginx", "User": "1000"}))
        .await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.message(),
        "image-policy: image \"nginx\" is not allowed here (allowed: busybox:*)"
    );
    let root = proxy
        .client()
        .post_json(CREATE, &json!({"Image": "busybox:local"}))
        .await;
    assert_eq!(root.status, 403);
    assert!(
        docker.requests().is_empty(),
        "Docker never saw a refused request"
    );

    let body = json!({"Image": "busybox:local", "User": "1000", "XUnknown": {"kept": true}});
    let allowed = proxy.client().post_json(CREATE, &body).await;
    assert_eq!(allowed.status, 201);
    assert_eq!(
        docker.requests()[0].json(),
        body,
        "an allowed request reaches Docker unchanged"
    );
}

#[tokio::test]
async fn slowreq_delays_the_request_by_its_option() {
    let docker = docker().await;
    let proxy = TestProxy::builder(&docker.address())
        .builtin(powerstrip_examples::slowreq::builtin())
        .toml("[adapters]\nslow = { builtin = \"slowreq\", delay = \"300ms\" }\n[[endpoints]]\nmatch = \"POST /*/containers/create\"\npre = [\"slow\"]\n")
        .start()
        .await;
    let started = Instant::now();
    let r = proxy
        .client()
        .post_json(CREATE, &json!({"Image": "busybox"}))
        .await;
    assert_eq!(r.status, 201);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    // Calls the endpoint does not match are not delayed.
    let started = Instant::now();
    let r = proxy.client().get("/_ping").await;
    assert_eq!(r.status, 404, "the fake Docker has no /_ping route");
    assert!(
        started.elapsed() < Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    // The same adapter, used directly, is just as slow.
    let started = Instant::now();
    let request = powerstrip_adapter::ClientRequest::new("GET", "/_ping", None);
    powerstrip_adapter::Adapter::pre_hook(&SlowReq::new(Duration::from_millis(50)), request)
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[tokio::test]
async fn logger_records_pre_and_post_with_the_code() {
    let docker = docker().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("calls.jsonl");
    let proxy = TestProxy::builder(&docker.address())
        .adapter("logger", Logger::new().with_file(&file).unwrap())
        .toml(&hooked("logger", true, true))
        .start()
        .await;
    let r = proxy
        .client()
        .post_json(CREATE, &json!({"Image": "busybox"}))
        .await;
    assert_eq!(r.status, 201);
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2);
    assert_eq!(
        (records[0]["hook"].as_str(), records[0]["method"].as_str()),
        (Some("pre-hook"), Some("POST"))
    );
    assert_eq!(
        (records[1]["hook"].as_str(), records[1]["code"].as_u64()),
        (Some("post-hook"), Some(201))
    );
    assert!(records[1]["elapsed_ms"].is_number());
}

#[tokio::test]
async fn in_process_and_http_adapters_mix_in_one_chain() {
    let docker = FakeDocker::builder()
        .route("POST", "/*/containers/create", Responder::echo())
        .start_unix()
        .await;
    let remote = FakeAdapter::add_to_field("Number", 10).await;
    let toml = format!(
        "[adapters]\npolicy = {{ builtin = \"policy\" }}\nremote = {:?}\n[[endpoints]]\nmatch = \"POST /*/containers/create\"\npre = [\"remote\", \"policy\", \"remote\"]\n",
        remote.url()
    );
    let proxy = TestProxy::builder(&docker.address())
        .adapter(
            "policy",
            ImagePolicy::new(&["busybox:*".into()], true).unwrap(),
        )
        .toml(&toml)
        .start()
        .await;
    let r = proxy
        .client()
        .post_json(CREATE, &json!({"Image": "busybox", "Number": 1}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(docker.requests()[0].json()["Number"], 21);
    // The policy between the two HTTP calls still refuses.
    let refused = proxy
        .client()
        .post_json(CREATE, &json!({"Image": "nginx", "Number": 1}))
        .await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        remote.call_count(),
        3,
        "the second remote call never happens after a refusal"
    );
}
