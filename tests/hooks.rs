//! Hook semantics (PROTOCOL.md) and bad input, through the real proxy in-process, against
//! a scripted Docker and scripted HTTP adapters: the cases a real daemon cannot produce
//! on demand (errors at chosen moments, hangs, garbage) or where what reached Docker must
//! be inspected byte for byte.

// Test helpers panic on purpose: a failed expectation is a failed test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::Full;
use powerstrip_protocol::{ClientRequest, HookCall, ServerResponse, WithheldBody};
use powerstrip_testkit::{
    AdapterReply, ChannelBody, FakeAdapter, FakeDocker, Responder, TestProxy, next_chunk,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CREATE: &str = "/v1.41/containers/create";

/// A Docker that echoes every create body back, so a test sees what reached it.
async fn echo_docker() -> FakeDocker {
    FakeDocker::builder()
        .route("POST", "*/containers/create", Responder::echo())
        .route(
            "GET",
            "/_ping",
            Responder::raw(200, "text/plain; charset=utf-8", "OK"),
        )
        .start_unix()
        .await
}

/// A configuration with these adapters and these `(pattern, pre, post)` endpoints.
fn config(adapters: &[(&str, &FakeAdapter)], endpoints: &[Endpoint]) -> String {
    let mut toml = String::from("version = 1\n[adapters]\n");
    for (name, adapter) in adapters {
        toml.push_str(&format!("{name} = {:?}\n", adapter.url()));
    }
    for (pattern, pre, post) in endpoints {
        toml.push_str(&format!(
            "[[endpoints]]\nmatch = {pattern:?}\npre = {pre:?}\npost = {post:?}\n"
        ));
    }
    toml
}

/// An endpoint: its pattern, pre chain and post chain.
type Endpoint<'a> = (&'a str, &'a [&'a str], &'a [&'a str]);

/// The proxy in front of `docker` running this configuration.
async fn proxy(
    docker: &FakeDocker,
    adapters: &[(&str, &FakeAdapter)],
    endpoints: &[Endpoint<'_>],
) -> TestProxy {
    TestProxy::start(&docker.address(), &config(adapters, endpoints)).await
}

/// The proxy still answers an ordinary call after whatever a test did to it.
async fn assert_still_serving(proxy: &TestProxy) {
    let r = proxy.client().get("/_ping").await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the proxy stopped serving: {}",
        r.text()
    );
}

// ---------------------------------------------------------------------------------------
// Pass-through

async fn assert_passes_through(docker: &FakeDocker, proxy: &TestProxy) {
    let body = json!({"Image": "busybox", "Number": 1, "Unknown": {"kept": [1, 2]}});
    for client in [proxy.client(), proxy.tcp_client()] {
        let r = client
            .send(
                Request::post(format!("{CREATE}?name=web"))
                    .header(header::CONTENT_TYPE, "application/json")
                    .header("X-Registry-Auth", "e30=")
                    .body(Full::new(Bytes::from(body.to_string())))
                    .unwrap(),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json(), body);
    }
    let seen = docker.requests();
    assert_eq!(seen.len(), 2);
    for request in seen {
        assert_eq!(request.uri, format!("{CREATE}?name=web"));
        assert_eq!(request.header("x-registry-auth"), Some("e30="));
        assert_eq!(request.json(), body);
    }
}

#[tokio::test]
async fn empty_config_passes_through_to_a_unix_docker() {
    let docker = echo_docker().await;
    let proxy = TestProxy::start(&docker.address(), "version = 1").await;
    assert_passes_through(&docker, &proxy).await;
}

#[tokio::test]
async fn empty_config_passes_through_to_a_tcp_docker() {
    let docker = FakeDocker::builder()
        .route("POST", "/*/containers/create", Responder::echo())
        .start_tcp()
        .await;
    let proxy = TestProxy::start(&docker.address(), "").await;
    assert_passes_through(&docker, &proxy).await;
}

#[tokio::test]
async fn endpoint_with_empty_chains_passes_through() {
    let docker = echo_docker().await;
    let proxy = proxy(&docker, &[], &[("* *", &[], &[])]).await;
    assert_passes_through(&docker, &proxy).await;
}

#[tokio::test]
async fn original_yaml_configuration_runs_its_hooks() {
    let docker = echo_docker().await;
    let adder = FakeAdapter::add_to_field("Number", 1).await;
    let yaml = format!(
        "version: 1\nendpoints:\n  \"POST /*/containers/create\":\n    pre: [adder]\nadapters:\n  adder: {}\n",
        adder.url()
    );
    let proxy = TestProxy::builder(&docker.address())
        .yaml(&yaml)
        .start()
        .await;
    let r = proxy
        .client()
        .post_json(CREATE, &json!({"Number": 1}))
        .await;
    assert_eq!(r.json()["Number"], 2);
}

// ---------------------------------------------------------------------------------------
// Pre-hooks

async fn number_after_pre_hooks(
    adapters: &[(&str, &FakeAdapter)],
    chain: &[&str],
) -> (Value, Value) {
    let docker = echo_docker().await;
    let proxy = proxy(
        &docker,
        adapters,
        &[("POST /*/containers/create", chain, &[])],
    )
    .await;
    let r = proxy
        .client()
        .post_json(CREATE, &json!({"Number": 1, "Image": "busybox"}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let reached_docker = docker.requests()[0].json();
    (reached_docker, r.json())
}

#[tokio::test]
async fn one_pre_hook_adder_adds_one() {
    let one = FakeAdapter::add_to_field("Number", 1).await;
    let (docker, client) = number_after_pre_hooks(&[("one", &one)], &["one"]).await;
    assert_eq!(docker, json!({"Number": 2, "Image": "busybox"}));
    assert_eq!(client["Number"], 2);
    assert_eq!(one.call_count(), 1);
}

#[tokio::test]
async fn the_same_adder_twice_adds_two() {
    let one = FakeAdapter::add_to_field("Number", 1).await;
    let (docker, _) = number_after_pre_hooks(&[("one", &one)], &["one", "one"]).await;
    assert_eq!(docker["Number"], 3);
    assert_eq!(one.call_count(), 2);
}

#[tokio::test]
async fn two_different_adders_add_three() {
    let one = FakeAdapter::add_to_field("Number", 1).await;
    let two = FakeAdapter::add_to_field("Number", 2).await;
    let (docker, _) =
        number_after_pre_hooks(&[("one", &one), ("two", &two)], &["one", "two"]).await;
    assert_eq!(docker["Number"], 4);
}

#[tokio::test]
async fn the_second_pre_hook_sees_the_first_ones_request() {
    let docker = echo_docker().await;
    let rewriter = FakeAdapter::rewrite_pre(|request| {
        ClientRequest::new(
            request.method.clone(),
            format!("{}?name=rewritten", request.path()),
            Some(r#"{"Image":"busybox","Rewritten":true}"#.into()),
        )
    })
    .await;
    let recorder = FakeAdapter::echo().await;
    let proxy = proxy(
        &docker,
        &[("rewriter", &rewriter), ("recorder", &recorder)],
        &[("POST /*/containers/create", &["rewriter", "recorder"], &[])],
    )
    .await;
    proxy
        .client()
        .post_json(
            &format!("{CREATE}?name=original"),
            &json!({"Image": "busybox"}),
        )
        .await;
    let seen = recorder.calls()[0].client_request().unwrap().clone();
    assert_eq!(seen.request, format!("{CREATE}?name=rewritten"));
    assert_eq!(
        seen.body.as_deref(),
        Some(r#"{"Image":"busybox","Rewritten":true}"#)
    );
    // The rewritten query string is applied, not only the body.
    let reached = &docker.requests()[0];
    assert_eq!(reached.uri, format!("{CREATE}?name=rewritten"));
    assert_eq!(
        reached.json(),
        json!({"Image": "busybox", "Rewritten": true})
    );
}

#[tokio::test]
async fn a_get_with_query_args_is_hooked_and_the_query_ignored_for_matching() {
    let docker = FakeDocker::builder()
        .route("GET", "/*/containers/json", Responder::json(200, json!([])))
        .start_unix()
        .await;
    let recorder = FakeAdapter::echo().await;
    let proxy = proxy(
        &docker,
        &[("recorder", &recorder)],
        &[("GET /*/containers/json", &["recorder"], &["recorder"])],
    )
    .await;
    let path = "/v1.41/containers/json?all=1&filters=%7B%22label%22%3A%5B%22a%3Db%22%5D%7D";
    let r = proxy.client().get(path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!([]));
    assert_eq!(docker.requests()[0].uri, path);
    let calls = recorder.calls();
    assert_eq!(calls.len(), 2, "pre and post");
    assert_eq!(calls[0].client_request().unwrap().request, path);
    assert_eq!(
        calls[0].client_request().unwrap().body,
        None,
        "a GET has a null Body"
    );
}

#[tokio::test]
async fn glob_variants_match() {
    for pattern in [
        "POST /v1*/containers/create",
        "* /*/containers/create",
        "POST /*/*/create",
        "POST /v[12]*/containers/create",
        "POST /*/containers/create",
    ] {
        let one = FakeAdapter::add_to_field("Number", 1).await;
        let docker = echo_docker().await;
        let proxy = proxy(&docker, &[("one", &one)], &[(pattern, &["one"], &[])]).await;
        let r = proxy
            .client()
            .post_json("/v1.16/containers/create", &json!({"Number": 0}))
            .await;
        assert_eq!(
            r.json()["Number"],
            1,
            "{pattern} should hook POST /v1.16/containers/create"
        );
        // Requests without a version prefix are hooked by the same patterns (unless the
        // pattern names a version).
        let r = proxy
            .client()
            .post_json("/containers/create", &json!({"Number": 0}))
            .await;
        let expected = if pattern.contains("/v") { 0 } else { 1 };
        assert_eq!(
            r.json()["Number"],
            expected,
            "{pattern} on /containers/create"
        );
    }
}

#[tokio::test]
async fn a_pattern_that_does_not_match_calls_nothing() {
    let one = FakeAdapter::add_to_field("Number", 1).await;
    let docker = echo_docker().await;
    let proxy = proxy(
        &docker,
        &[("one", &one)],
        &[("POST /v[2-9]*/containers/create", &["one"], &[])],
    )
    .await;
    let r = proxy
        .client()
        .post_json(CREATE, &json!({"Number": 0}))
        .await;
    assert_eq!(r.json()["Number"], 0);
    assert_eq!(one.call_count(), 0);
}

/// An adapter that appends its name to the `Order` list in the request body.
async fn appender(name: &'static str) -> FakeAdapter {
    FakeAdapter::rewrite_pre(move |request| {
        let mut body: Value =
            serde_json::from_str(request.body.as_deref().unwrap_or("{}")).unwrap();
        body["Order"].as_array_mut().unwrap().push(json!(name));
        ClientRequest {
            body: Some(body.to_string()),
            ..request.clone()
        }
    })
    .await
}

#[tokio::test]
async fn several_matching_patterns_run_in_file_order() {
    let (a, b, c) = (
        appender("a").await,
        appender("b").await,
        appender("c").await,
    );
    let docker = echo_docker().await;
    let proxy = proxy(
        &docker,
        &[("a", &a), ("b", &b), ("c", &c)],
        &[
            ("* *", &["c"], &[]),
            ("POST /*/containers/create", &["a", "b"], &[]),
            ("GET /*", &["a"], &[]),
            ("POST /*/containers/*", &["b"], &[]),
        ],
    )
    .await;
    let r = proxy
        .client()
        .post_json(CREATE, &json!({"Order": []}))
        .await;
    assert_eq!(r.json()["Order"], json!(["c", "a", "b", "b"]));
}

#[tokio::test]
async fn json_with_parameters_counts_as_json() {
    let one = FakeAdapter::add_to_field("Number", 1).await;
    let docker = echo_docker().await;
    let proxy = proxy(
        &docker,
        &[("one", &one)],
        &[("POST /*/containers/create", &["one"], &[])],
    )
    .await;
    let r = proxy
        .client()
        .send(
            Request::post(CREATE)
                .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
                .body(Full::new(Bytes::from(r#"{"Number":5}"#)))
                .unwrap(),
        )
        .await;
    assert_eq!(r.json()["Number"], 6);
}

#[tokio::test]
async fn non_json_request_bodies_stream_untouched_and_their_pre_hooks_see_them_withheld() {
    let docker = FakeDocker::builder()
        .route(
            "POST",
            "/*/build",
            Responder::with(|req| {
                powerstrip_testkit::FakeResponse::json(200, &json!({"received": req.body.len()}))
            }),
        )
        .start_unix()
        .await;
    let recorder = FakeAdapter::echo().await;
    let proxy = proxy(
        &docker,
        &[("recorder", &recorder)],
        &[("* *", &["recorder"], &["recorder"])],
    )
    .await;
    // A binary "tar" body, sent in chunks, with bytes that are not UTF-8.
    let (tx, body) = ChannelBody::channel();
    let client = proxy.client();
    let request = tokio::spawn(async move {
        let response = client
            .request_streaming(
                Request::post("/v1.41/build?t=web")
                    .header(header::CONTENT_TYPE, "application/x-tar")
                    .body(body)
                    .unwrap(),
            )
            .await;
        http_body_util::BodyExt::collect(response.into_body())
            .await
            .unwrap()
            .to_bytes()
    });
    let chunk: Vec<u8> = (0..=255u8).cycle().take(64 * 1024).collect();
    for _ in 0..16 {
        tx.send(Bytes::from(chunk.clone())).await.unwrap();
    }
    drop(tx);
    let answer: Value = serde_json::from_slice(&request.await.unwrap()).unwrap();
    assert_eq!(answer["received"], 16 * 64 * 1024);
    assert_eq!(docker.requests()[0].body, chunk.repeat(16));
    let calls = recorder.calls();
    // Docker streams build output: the post-hook is skipped.
    let [HookCall::PreHook { client_request }] = calls.as_slice() else {
        panic!("one pre-hook call expected: {calls:?}");
    };
    assert_eq!(client_request.request, "/v1.41/build?t=web");
    assert_eq!(
        client_request.body, None,
        "the body is never shown to hooks"
    );
    assert_eq!(
        client_request.withheld,
        Some(WithheldBody {
            content_type: "application/x-tar".into(),
            content_length: None,
        }),
        "the pre-hook is told a body streams unseen"
    );
    let raw = &recorder.requests()[0];
    assert!(
        raw.text().contains(
            r#""Body":null,"BodyWithheld":{"ContentType":"application/x-tar","ContentLength":null}"#
        ),
        "{}",
        raw.text()
    );
}

/// A Docker that records archive uploads and answers 200.
async fn archive_docker() -> FakeDocker {
    FakeDocker::builder()
        .route(
            "PUT",
            "/*/containers/*/archive",
            Responder::raw(200, "", ""),
        )
        .route("GET", "/_ping", Responder::raw(200, "text/plain", "OK"))
        .start_unix()
        .await
}

/// Uploads `body` as an archive into container `abc` with a declared length.
async fn put_archive(proxy: &TestProxy, body: &'static [u8]) -> powerstrip_testkit::TestResponse {
    proxy
        .client()
        .send(
            Request::put("/v1.41/containers/abc/archive?path=%2Ftmp")
                .header(header::CONTENT_TYPE, "application/x-tar")
                .body(Full::new(Bytes::from_static(body)))
                .unwrap(),
        )
        .await
}

#[tokio::test]
async fn a_pre_hook_may_rewrite_the_query_of_a_request_whose_body_is_withheld() {
    let docker = archive_docker().await;
    let rewriter = FakeAdapter::rewrite_pre(|request| ClientRequest {
        request: format!("{}&noOverwriteDirNonDir=true", request.request),
        ..request.clone()
    })
    .await;
    let recorder = FakeAdapter::echo().await;
    let proxy = proxy(
        &docker,
        &[("rewriter", &rewriter), ("recorder", &recorder)],
        &[("PUT /*/containers/*/archive", &["rewriter"], &["recorder"])],
    )
    .await;
    let r = put_archive(&proxy, b"not json at all \xff\x00").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let seen = docker.requests();
    assert_eq!(
        seen[0].uri, "/v1.41/containers/abc/archive?path=%2Ftmp&noOverwriteDirNonDir=true",
        "the rewritten query is applied"
    );
    assert_eq!(
        &seen[0].body[..],
        b"not json at all \xff\x00",
        "the body is untouched"
    );
    let calls = rewriter.calls();
    let Some(HookCall::PreHook { client_request }) = calls.first() else {
        panic!("{calls:?}");
    };
    let withheld = Some(WithheldBody {
        content_type: "application/x-tar".into(),
        content_length: Some(18),
    });
    assert_eq!(client_request.withheld, withheld);
    let calls = recorder.calls();
    let Some(HookCall::PostHook { client_request, .. }) = calls.first() else {
        panic!("{calls:?}");
    };
    assert_eq!(
        client_request.request, seen[0].uri,
        "the post-hook sees the request as Docker received it"
    );
    assert_eq!(client_request.withheld, withheld, "with its body withheld");
}

#[tokio::test]
async fn a_pre_hook_that_returns_a_body_for_a_withheld_one_is_a_502_naming_it() {
    let docker = archive_docker().await;
    let inventor = FakeAdapter::rewrite_pre(|request| ClientRequest {
        body: Some("{}".into()),
        ..request.clone()
    })
    .await;
    let proxy = proxy(
        &docker,
        &[("inventor", &inventor)],
        &[("PUT /*/containers/*/archive", &["inventor"], &[])],
    )
    .await;
    let r = put_archive(&proxy, b"tar bytes").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    let message = r.message();
    assert!(message.contains("\"inventor\""), "{message}");
    assert!(
        message.contains("answered a Body for a request whose body was withheld"),
        "{message}"
    );
    assert!(docker.requests().is_empty(), "Docker was called");
    assert_still_serving(&proxy).await;
}

#[tokio::test]
async fn a_refused_upload_never_reaches_docker_and_the_client_reads_the_refusal() {
    let docker = archive_docker().await;
    let policy = FakeAdapter::refuse(403, r#"{"message": "no uploads here"}"#).await;
    let proxy = proxy(
        &docker,
        &[("policy", &policy)],
        &[("PUT /*/containers/*/archive", &["policy"], &[])],
    )
    .await;
    // A client that keeps sending its (unbounded, chunked) body while it waits.
    let (tx, body) = ChannelBody::channel();
    let client = proxy.client();
    let response = tokio::spawn(async move {
        client
            .request_streaming(
                Request::put("/v1.41/containers/abc/archive?path=/")
                    .header(header::CONTENT_TYPE, "application/x-tar")
                    .body(body)
                    .unwrap(),
            )
            .await
    });
    let feeder = tokio::spawn(async move {
        let chunk = Bytes::from(vec![7u8; 64 * 1024]);
        let mut sent = 0usize;
        while tx.send(chunk.clone()).await.is_ok() && sent < 1 << 30 {
            sent += chunk.len();
        }
        sent
    });
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("the refusal comes while the client is still sending")
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["message"],
        "no uploads here"
    );
    let sent = tokio::time::timeout(Duration::from_secs(10), feeder)
        .await
        .expect("the proxy stops reading a refused body")
        .unwrap();
    assert!(sent < 1 << 30, "the proxy read the whole refused body");
    assert!(docker.requests().is_empty(), "Docker was called");
    assert_still_serving(&proxy).await;
}

#[tokio::test]
async fn hooks_and_docker_get_the_path_docker_routes_in_one_spelling() {
    let docker = FakeDocker::builder()
        .route(
            "GET",
            "/*/images/*/json",
            Responder::raw(200, "application/json", "{}"),
        )
        .start_unix()
        .await;
    let recorder = FakeAdapter::echo().await;
    let proxy = proxy(
        &docker,
        &[("recorder", &recorder)],
        &[("GET /*/images/*/json", &["recorder"], &[])],
    )
    .await;
    // As docker-py sends a digest, with an escaped letter besides; the query stays as sent.
    let r = proxy
        .client()
        .get("/v1.41/images/busybox%40sha256%3Aab%63/json?x=%41")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let expected = "/v1.41/images/busybox@sha256:abc/json?x=%41";
    let calls = recorder.calls();
    let Some(HookCall::PreHook { client_request }) = calls.first() else {
        panic!("the hook did not run: {calls:?}");
    };
    assert_eq!(client_request.request, expected);
    assert_eq!(docker.requests()[0].uri, expected);
}

#[tokio::test]
async fn a_path_docker_would_read_another_way_is_a_400_naming_it() {
    let docker = echo_docker().await;
    let recorder = FakeAdapter::echo().await;
    let proxy = proxy(
        &docker,
        &[("recorder", &recorder)],
        &[("POST /*/containers/create", &["recorder"], &[])],
    )
    .await;
    for (path, reason) in [
        ("/v1.41/x/%2e%2E/containers/create", "a \"..\" segment"),
        ("/v1.41//containers/create", "an empty segment"),
        ("/v1.41/containers/cre%00ate", "the control character '\\0'"),
        (
            "/v1.41/containers/%zzcreate",
            "an invalid percent-escape at byte 18",
        ),
        ("/v1.41/containers/%ffcreate", "not UTF-8"),
    ] {
        let r = proxy
            .client()
            .post_json(path, &json!({"Image": "busybox"}))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{path}: {}", r.text());
        let message = r.message();
        assert!(
            message.starts_with(&format!("powerstrip: refused the request path {path:?}: ")),
            "{message}"
        );
        assert!(message.contains(reason), "{path}: {message}");
    }
    assert!(docker.requests().is_empty(), "Docker was called");
    assert_eq!(recorder.call_count(), 0);
    assert_still_serving(&proxy).await;
}

#[tokio::test]
async fn without_endpoints_every_path_passes_exactly_as_sent() {
    let docker = FakeDocker::builder()
        .route("GET", "*", Responder::raw(200, "text/plain", "OK"))
        .start_unix()
        .await;
    let proxy = TestProxy::start(&docker.address(), "version = 1").await;
    let r = proxy.client().get("/v1.41//containers/%6Ason").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(docker.requests()[0].uri, "/v1.41//containers/%6Ason");
}

#[tokio::test]
async fn an_adapter_that_changes_the_path_or_method_or_adds_a_fragment_is_refused_by_name() {
    let mover = FakeAdapter::rewrite_pre(|request| ClientRequest {
        request: "/v1.41/containers/other/start".into(),
        ..request.clone()
    })
    .await;
    let method_changer = FakeAdapter::rewrite_pre(|request| ClientRequest {
        method: "DELETE".into(),
        ..request.clone()
    })
    .await;
    // Text after `#` would be dropped on the way to Docker, while later hooks saw it.
    let fragment = FakeAdapter::rewrite_pre(|request| ClientRequest {
        request: format!("{}?name=a#b c", request.path()),
        ..request.clone()
    })
    .await;
    for (name, adapter, what) in [
        ("mover", &mover, "changed the path"),
        ("deleter", &method_changer, "changed the method"),
        ("fragment", &fragment, "with a fragment ('#')"),
    ] {
        let docker = echo_docker().await;
        let proxy = proxy(
            &docker,
            &[(name, adapter)],
            &[("POST /*/containers/create", &[name], &[])],
        )
        .await;
        let r = proxy.client().post_json(CREATE, &json!({})).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
        assert!(
            r.message().contains(&format!("adapter \"{name}\"")),
            "{}",
            r.message()
        );
        assert!(r.message().contains(what), "{}", r.message());
        assert!(docker.requests().is_empty(), "Docker must not be called");
    }
}

#[tokio::test]
async fn a_hooked_body_beyond_the_limit_gets_413() {
    let docker = echo_docker().await;
    let recorder = FakeAdapter::echo().await;
    let proxy = TestProxy::builder(&docker.address())
        .toml(&config(
            &[("recorder", &recorder)],
            &[("* *", &["recorder"], &[])],
        ))
        .max_hook_body(1024)
        .start()
        .await;
    let big = json!({"Env": ["X".repeat(2000)]});
    let r = proxy.client().post_json(CREATE, &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.message().contains("1024-byte limit"), "{}", r.message());
    assert!(docker.requests().is_empty());
    assert_eq!(recorder.call_count(), 0);
    assert_still_serving(&proxy).await;
}

// ---------------------------------------------------------------------------------------
// Refusals and errors in chains

#[tokio::test]
async fn a_pre_hook_refusal_never_reaches_docker_and_stops_the_chain() {
    let docker = echo_docker().await;
    let refuser = FakeAdapter::refuse(403, "image busybox is not allowed here").await;
    let after = FakeAdapter::echo().await;
    let proxy = proxy(
        &docker,
        &[("refuser", &refuser), ("after", &after)],
        &[(
            "POST /*/containers/create",
            &["refuser", "after"],
            &["after"],
        )],
    )
    .await;
    let r = proxy
        .client()
        .post_json(CREATE, &json!({"Image": "busybox"}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"message": "image busybox is not allowed here"})
    );
    assert!(docker.requests().is_empty(), "Docker must not be called");
    assert_eq!(after.call_count(), 0, "the chain stops at the refusal");
}

#[tokio::test]
async fn a_docker_style_refusal_keeps_its_message() {
    let docker = echo_docker().await;
    let refuser = FakeAdapter::refuse(409, r#"{"message": "quota exceeded"}"#).await;
    let proxy = proxy(
        &docker,
        &[("quota", &refuser)],
        &[("POST /*/containers/create", &["quota"], &[])],
    )
    .await;
    let r = proxy.client().post_json(CREATE, &json!({})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.message(), "quota exceeded");
}

#[tokio::test]
async fn a_post_hook_error_stops_the_chain_and_reaches_the_client() {
    let docker = echo_docker().await;
    let refuser = FakeAdapter::refuse(409, "post-hook says no").await;
    let after = FakeAdapter::echo().await;
    let proxy = proxy(
        &docker,
        &[("refuser", &refuser), ("after", &after)],
        &[("POST /*/containers/create", &[], &["refuser", "after"])],
    )
    .await;
    let r = proxy.client().post_json(CREATE, &json!({})).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.message(), "post-hook says no");
    assert_eq!(
        docker.requests().len(),
        1,
        "Docker was called before the post-hook"
    );
    assert_eq!(after.call_count(), 0);
}

#[tokio::test]
async fn a_post_hook_adder_rewrites_the_response() {
    let docker = FakeDocker::builder()
        .route(
            "POST",
            "/*/containers/create",
            Responder::json(201, json!({"Id": "abc", "Number": 1})),
        )
        .start_unix()
        .await;
    let one = FakeAdapter::add_to_field("Number", 1).await;
    let proxy = proxy(
        &docker,
        &[("one", &one)],
        &[("POST /*/containers/create", &[], &["one"])],
    )
    .await;
    let r = proxy
        .client()
        .post_json(CREATE, &json!({"Image": "busybox"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.json(), json!({"Id": "abc", "Number": 2}));
    // The post-hook saw the request as Docker received it.
    let HookCall::PostHook {
        client_request,
        server_response,
    } = &one.calls()[0]
    else {
        panic!("expected a post-hook call")
    };
    assert_eq!(
        client_request.body.as_deref(),
        Some(r#"{"Image":"busybox"}"#)
    );
    assert_eq!(server_response.code, 201);
    assert_eq!(server_response.content_type, "application/json");
}

#[tokio::test]
async fn nine_post_hooks_that_grow_the_body_keep_content_length_right() {
    let docker = FakeDocker::builder()
        .route("GET", "/*/info", Responder::json(200, json!({"Number": 0})))
        .start_unix()
        .await;
    let growers = [
        1,
        10,
        100,
        1_000,
        10_000,
        100_000,
        1_000_000,
        10_000_000,
        100_000_000,
    ];
    let mut adapters = Vec::new();
    for n in growers {
        adapters.push(FakeAdapter::add_to_field("Number", n).await);
    }
    let names: Vec<String> = (0..adapters.len()).map(|i| format!("grow{i}")).collect();
    let defs: Vec<(&str, &FakeAdapter)> = names.iter().map(String::as_str).zip(&adapters).collect();
    let chain: Vec<&str> = names.iter().map(String::as_str).collect();
    let proxy = proxy(&docker, &defs, &[("GET /*/info", &[], &chain)]).await;
    let r = proxy.client().get("/v1.41/info").await;
    assert_eq!(r.json(), json!({"Number": 111_111_111}));
    let length: usize = r.header("content-length").unwrap().parse().unwrap();
    assert_eq!(length, r.body.len());
}

#[tokio::test]
async fn the_second_post_hook_sees_the_first_ones_code_and_content_type() {
    let docker = FakeDocker::builder()
        .route(
            "POST",
            "/*/containers/create",
            Responder::json(201, json!({"Id": "abc"})),
        )
        .start_unix()
        .await;
    let changer = FakeAdapter::rewrite_post(|response| ServerResponse {
        content_type: "application/json; charset=utf-8".into(),
        body: response.body.clone(),
        code: 202,
    })
    .await;
    let recorder = FakeAdapter::echo().await;
    let proxy = proxy(
        &docker,
        &[("changer", &changer), ("recorder", &recorder)],
        &[("POST /*/containers/create", &[], &["changer", "recorder"])],
    )
    .await;
    let r = proxy.client().post_json(CREATE, &json!({})).await;
    let HookCall::PostHook {
        server_response, ..
    } = &recorder.calls()[0]
    else {
        panic!("expected a post-hook call")
    };
    assert_eq!(server_response.code, 202);
    assert_eq!(
        server_response.content_type,
        "application/json; charset=utf-8"
    );
    // The final Code and ContentType are what the client gets.
    assert_eq!(r.status, StatusCode::ACCEPTED);
    assert_eq!(
        r.header("content-type"),
        Some("application/json; charset=utf-8")
    );
}

#[tokio::test]
async fn docker_errors_still_run_post_hooks_which_may_turn_them_into_success() {
    let docker = FakeDocker::builder()
        .route(
            "GET",
            "/*/containers/*/json",
            Responder::json(404, json!({"message": "No such container: web"})),
        )
        .start_unix()
        .await;
    let healer = FakeAdapter::start(|call| match call {
        HookCall::PostHook {
            server_response, ..
        } if server_response.code == 404 => AdapterReply::Post(ServerResponse {
            content_type: "application/json".into(),
            body: Some(r#"{"Id":"placeholder"}"#.into()),
            code: 200,
        }),
        other => AdapterReply::pass(other),
    })
    .await;
    let proxy = proxy(
        &docker,
        &[("healer", &healer)],
        &[("GET /*/containers/*/json", &[], &["healer"])],
    )
    .await;
    let r = proxy.client().get("/v1.41/containers/web/json").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json(), json!({"Id": "placeholder"}));
    assert_eq!(healer.call_count(), 1);
}

#[tokio::test]
async fn a_response_without_body_reaches_post_hooks_as_null() {
    let docker = FakeDocker::builder()
        .route("POST", "/*/containers/*/start", Responder::raw(204, "", ""))
        .start_unix()
        .await;
    let recorder = FakeAdapter::echo().await;
    let proxy = proxy(
        &docker,
        &[("recorder", &recorder)],
        &[("* *", &["recorder"], &["recorder"])],
    )
    .await;
    let r = proxy
        .client()
        .request(Method::POST, "/v1.41/containers/abc/start")
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert!(r.body.is_empty());
    let HookCall::PostHook {
        server_response,
        client_request,
    } = &recorder.calls()[1]
    else {
        panic!("expected a post-hook call")
    };
    assert_eq!(server_response.body, None);
    assert_eq!(server_response.code, 204);
    assert_eq!(client_request.body, None);
}

// ---------------------------------------------------------------------------------------
// Streams

#[tokio::test]
async fn a_hijacked_stream_passes_with_a_post_hook_configured_which_is_never_called() {
    let docker = FakeDocker::builder()
        .route("POST", "/*/containers/*/attach", Responder::upgrade_echo())
        .start_unix()
        .await;
    let recorder = FakeAdapter::echo().await;
    let proxy = proxy(
        &docker,
        &[("recorder", &recorder)],
        &[("POST /*/containers/*/attach", &[], &["recorder"])],
    )
    .await;
    let (response, mut io) = proxy
        .client()
        .upgrade(
            Request::post("/v1.41/containers/abc/attach?stream=1&stdin=1&stdout=1")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(response.status, StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(
        response.header("content-type"),
        Some("application/vnd.docker.raw-stream")
    );
    io.write_all(b"hello through the proxy\n").await.unwrap();
    let mut echoed = vec![0; 24];
    io.read_exact(&mut echoed).await.unwrap();
    assert_eq!(echoed, b"hello through the proxy\n");
    // Half-close: our EOF reaches Docker, which still answers on its side.
    io.shutdown().await.unwrap();
    let mut rest = Vec::new();
    io.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"eof\n");
    assert_eq!(
        recorder.call_count(),
        0,
        "post-hooks never see an upgraded stream"
    );
}

#[tokio::test]
async fn chunked_responses_stream_with_hooks_configured() {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let docker = FakeDocker::builder()
        .route(
            "GET",
            "/*/events",
            Responder::chunked("application/json", rx),
        )
        .start_unix()
        .await;
    let recorder = FakeAdapter::echo().await;
    let proxy = proxy(
        &docker,
        &[("recorder", &recorder)],
        &[("* *", &["recorder"], &["recorder"])],
    )
    .await;
    let mut response = proxy
        .client()
        .request_streaming(
            Request::get("/v1.41/events")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    tx.send(Bytes::from_static(b"{\"status\":\"start\"}\n"))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), next_chunk(response.body_mut()))
        .await
        .expect("the first event reaches the client before the stream ends");
    assert_eq!(
        first.unwrap(),
        Bytes::from_static(b"{\"status\":\"start\"}\n")
    );
    tx.send(Bytes::from_static(b"{\"status\":\"die\"}\n"))
        .await
        .unwrap();
    drop(tx);
    let second = next_chunk(response.body_mut()).await.unwrap();
    assert_eq!(second, Bytes::from_static(b"{\"status\":\"die\"}\n"));
    assert_eq!(next_chunk(response.body_mut()).await, None);
    assert_eq!(
        recorder.call_count(),
        1,
        "the pre-hook ran; the post-hook was skipped"
    );
}

#[tokio::test]
async fn an_error_answer_from_a_streaming_endpoint_is_a_document_for_post_hooks() {
    let docker = FakeDocker::builder()
        .route(
            "POST",
            "/*/plugins/pull",
            Responder::with(|req| {
                if req.uri.contains("remote=missing") {
                    powerstrip_testkit::FakeResponse::json(
                        404,
                        &json!({"message": "plugin missing not found"}),
                    )
                } else {
                    powerstrip_testkit::FakeResponse::new(
                        200,
                        "application/json",
                        "{\"status\":\"Downloading\"}\n",
                    )
                }
            }),
        )
        .start_unix()
        .await;
    let enricher = FakeAdapter::rewrite_post(|response| ServerResponse {
        body: response
            .body
            .as_deref()
            .map(|b| b.replace("not found", "not found (try the registry mirror)")),
        ..response.clone()
    })
    .await;
    let proxy = proxy(
        &docker,
        &[("enricher", &enricher)],
        &[("POST /*/plugins/pull", &[], &["enricher"])],
    )
    .await;
    for _ in 0..3 {
        let r = proxy
            .client()
            .request(Method::POST, "/v1.41/plugins/pull?remote=missing")
            .await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(
            r.message(),
            "plugin missing not found (try the registry mirror)"
        );
    }
    assert_eq!(
        enricher.call_count(),
        3,
        "every error answer reached the post-hook"
    );
    // A pull that succeeds streams: its post-hook is skipped, and counted as such.
    let r = proxy
        .client()
        .request(Method::POST, "/v1.41/plugins/pull?remote=present")
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "{\"status\":\"Downloading\"}\n");
    assert_eq!(enricher.call_count(), 3);
    let metrics = proxy.metrics();
    assert!(
        metrics.contains(
            r#"powerstrip_hooks_skipped_total{adapter="enricher",hook="post-hook",reason="streamed"} 1"#
        ),
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------------
// Broken adapters, clients and daemons

async fn failure_with(reply: AdapterReply, timeout: Option<&str>) -> (StatusCode, String) {
    let docker = echo_docker().await;
    let broken = FakeAdapter::start(move |_| reply.clone()).await;
    let definition = match timeout {
        Some(t) => format!("{{ url = {:?}, timeout = {t:?} }}", broken.url()),
        None => format!("{:?}", broken.url()),
    };
    let toml = format!(
        "[adapters]\nbroken = {definition}\n[[endpoints]]\nmatch = \"POST /*/containers/create\"\npre = [\"broken\"]\n"
    );
    let proxy = TestProxy::start(&docker.address(), &toml).await;
    let r = proxy.client().post_json(CREATE, &json!({})).await;
    assert!(docker.requests().is_empty(), "Docker must not be called");
    assert_still_serving(&proxy).await;
    (r.status, r.message())
}

#[tokio::test]
async fn an_adapter_answering_non_json_is_a_502_naming_it() {
    let (status, message) = failure_with(
        AdapterReply::raw(200, "text/html", "<html>Welcome to nginx</html>"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        message.starts_with(
            "powerstrip: adapter \"broken\" failed in pre-hook: answered an invalid document: "
        ),
        "{message}"
    );
    assert!(
        !message.contains("127.0.0.1"),
        "the adapter's address stays in the log: {message}"
    );
    assert!(
        message.contains("not a valid PowerstripProtocolVersion 1 document"),
        "{message}"
    );
}

#[tokio::test]
async fn an_empty_200_is_a_502() {
    let (status, message) = failure_with(AdapterReply::raw(200, "", ""), None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(message.contains("\"broken\""), "{message}");
}

#[tokio::test]
async fn an_adapter_answering_the_wrong_version_is_a_502() {
    let answer = json!({"PowerstripProtocolVersion": 2, "ModifiedClientRequest": {"Method": "POST", "Request": CREATE, "Body": "{}"}});
    let (status, message) = failure_with(AdapterReply::Json(200, answer), None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        message.contains("unsupported PowerstripProtocolVersion 2"),
        "{message}"
    );
}

#[tokio::test]
async fn an_adapter_answer_lacking_a_field_is_a_502() {
    let (status, message) = failure_with(
        AdapterReply::Json(200, json!({"PowerstripProtocolVersion": 1})),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        message.contains("missing field ModifiedClientRequest"),
        "{message}"
    );
    let no_body = json!({"PowerstripProtocolVersion": 1, "ModifiedClientRequest": {"Method": "POST", "Request": CREATE}});
    let (status, message) = failure_with(AdapterReply::Json(200, no_body), None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(message.contains("missing field `Body`"), "{message}");
}

#[tokio::test]
async fn an_adapter_that_closes_mid_answer_is_a_502() {
    let (status, message) = failure_with(AdapterReply::CloseMidAnswer, None).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(message.contains("\"broken\""), "{message}");
}

#[tokio::test]
async fn a_hanging_adapter_times_out_as_configured() {
    let started = std::time::Instant::now();
    let (status, message) = failure_with(AdapterReply::Hang, Some("300ms")).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        message,
        "powerstrip: adapter \"broken\" failed in pre-hook: no answer within 300ms"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn an_unreachable_adapter_is_a_502_naming_it() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let docker = echo_docker().await;
    let toml = format!(
        "[adapters]\ngone = \"http://127.0.0.1:{port}/hook\"\n[[endpoints]]\nmatch = \"* *\"\npost = [\"gone\"]\n"
    );
    let proxy = TestProxy::start(&docker.address(), &toml).await;
    let r = proxy.client().post_json(CREATE, &json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    // The adapter's address and the OS error go to the log, not to the client.
    assert_eq!(
        r.message(),
        "powerstrip: adapter \"gone\" failed in post-hook: could not be reached"
    );
}

#[tokio::test]
async fn an_ignored_failure_skips_the_hook() {
    let docker = echo_docker().await;
    let one = FakeAdapter::add_to_field("Number", 1).await;
    let broken = FakeAdapter::start(|_| AdapterReply::raw(200, "text/html", "oops")).await;
    let toml = format!(
        "[adapters]\nbroken = {{ url = {:?}, failure = \"ignore\" }}\none = {:?}\n[[endpoints]]\nmatch = \"POST /*/containers/create\"\npre = [\"one\", \"broken\", \"one\"]\n",
        broken.url(),
        one.url()
    );
    let proxy = TestProxy::start(&docker.address(), &toml).await;
    let r = proxy
        .client()
        .post_json(CREATE, &json!({"Number": 0}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["Number"], 2);
    assert_eq!(broken.call_count(), 1);
}

#[tokio::test]
async fn malformed_http_from_a_client_gets_400_and_the_proxy_keeps_serving() {
    let docker = echo_docker().await;
    let proxy = TestProxy::start(&docker.address(), "").await;
    let path = proxy.address().trim_start_matches("unix://").to_owned();
    let mut raw = tokio::net::UnixStream::connect(&path).await.unwrap();
    raw.write_all(b"THIS IS NOT HTTP\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut answer))
        .await
        .expect("the proxy answers and closes")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request"), "{answer}");
    assert_still_serving(&proxy).await;
    assert!(docker.requests().iter().all(|r| r.path() == "/_ping"));
}

#[tokio::test]
async fn docker_down_is_a_prompt_502_and_the_proxy_recovers_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("docker.sock");
    let ping = || Responder::raw(200, "text/plain", "OK");
    let docker = FakeDocker::builder()
        .route("GET", "/_ping", ping())
        .start_unix_at(&socket)
        .await;
    let proxy = TestProxy::start(&format!("unix://{}", socket.display()), "").await;
    assert_eq!(proxy.client().get("/_ping").await.status, StatusCode::OK);

    drop(docker);
    let started = std::time::Instant::now();
    let r = proxy.client().get("/_ping").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a dead Docker must fail fast"
    );
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(
        r.message(),
        format!(
            "powerstrip: cannot reach Docker at unix://{}",
            socket.display()
        )
    );

    let _docker = FakeDocker::builder()
        .route("GET", "/_ping", ping())
        .start_unix_at(&socket)
        .await;
    let r = proxy.client().get("/_ping").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.text(), "OK");
}

#[tokio::test]
async fn a_daemon_sending_garbage_is_a_502() {
    let docker = FakeDocker::garbage(Bytes::from_static(b"NOT HTTP AT ALL\r\n\r\n")).await;
    let proxy = TestProxy::start(&docker.address(), "").await;
    let r = proxy.client().get("/v1.41/info").await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(
        r.message().contains("cannot reach Docker"),
        "{}",
        r.message()
    );
}

/// Answers in every framing HTTP/1.1 allows, written byte by byte as a daemon might
/// (each connection answers once and closes, though the answer offers keep-alive).
const FRAMINGS: [(&str, &[u8], &str); 6] = [
    (
        "chunked, with a chunk extension and a trailer",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\nX-Trailer: y\r\n\r\n",
        r#"{"a":1}"#,
    ),
    (
        "delimited by the end of the connection",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"until\":\"close\"}",
        r#"{"until":"close"}"#,
    ),
    (
        "HTTP/1.0 with a length",
        b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n{\"v\":10}",
        r#"{"v":10}"#,
    ),
    (
        "an interim 100 Continue first",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        "{}",
    ),
    (
        "chunked and a length: chunked wins",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n",
        "[]",
    ),
    (
        "a length of zero",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n",
        "",
    ),
];

#[tokio::test]
async fn docker_answers_in_every_framing_reach_the_client_whole() {
    for (what, raw, body) in FRAMINGS {
        let docker = FakeDocker::garbage(Bytes::from_static(raw)).await;
        let proxy = TestProxy::start(&docker.address(), "").await;
        let r = proxy.client().get("/v1.41/info").await;
        assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text());
        assert_eq!(r.text(), body, "{what}");
        // Post-hooks receive the same complete body.
        let seen = FakeAdapter::rewrite_post(|response| response.clone()).await;
        let hooked = proxy_with_post(&docker, &seen).await;
        let r = hooked.client().get("/v1.41/info").await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{what}, post-hooked: {}",
            r.text()
        );
        assert_eq!(r.text(), body, "{what}, post-hooked");
        let Some(HookCall::PostHook {
            server_response, ..
        }) = seen.calls().pop()
        else {
            panic!("{what}: the post-hook was not called");
        };
        assert_eq!(server_response.body.unwrap_or_default(), body, "{what}");
    }
}

async fn proxy_with_post(docker: &FakeDocker, adapter: &FakeAdapter) -> TestProxy {
    proxy(
        docker,
        &[("seen", adapter)],
        &[("GET /*/info", &[], &["seen"])],
    )
    .await
}

#[tokio::test]
async fn broken_docker_framing_is_a_502_or_a_cut_stream_never_a_short_answer() {
    // Broken before the body: the client gets a Docker-shaped 502.
    for raw in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\nContent-Le",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: tcp\r\n\r\n",
    ] {
        let docker = FakeDocker::garbage(Bytes::from_static(raw)).await;
        let proxy = TestProxy::start(&docker.address(), "").await;
        let r = proxy.client().get("/v1.41/info").await;
        assert_eq!(
            r.status,
            StatusCode::BAD_GATEWAY,
            "{}",
            String::from_utf8_lossy(raw)
        );
        assert!(r.message().contains("Docker"), "{}", r.message());
        assert_still_serving_through(&proxy).await;
    }
    // Broken within the body: the client must not take what arrived for the whole.
    for raw in [
        &b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n[1,"[..],
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n[1,\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n[1,",
    ] {
        let docker = FakeDocker::garbage(Bytes::from_static(raw)).await;
        let proxy = TestProxy::start(&docker.address(), "").await;
        let request = Request::get("/v1.41/info").body(Full::new(Bytes::new())).unwrap();
        let result = proxy.client().try_send(request).await;
        assert!(
            result.is_err(),
            "{}: the client got a complete answer: {:?}",
            String::from_utf8_lossy(raw),
            result.map(|r| r.text())
        );
        // And with a post-hook, whose body would be cut: a 502.
        let seen = FakeAdapter::rewrite_post(|response| response.clone()).await;
        let hooked = proxy_with_post(&docker, &seen).await;
        let r = hooked.client().get("/v1.41/info").await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", String::from_utf8_lossy(raw));
        assert_eq!(seen.call_count(), 0);
    }
}

/// A request to an endpoint the garbage daemon of a test answers in any case.
async fn assert_still_serving_through(proxy: &TestProxy) {
    let r = proxy.client().get("/v1.41/version").await;
    assert!(
        r.status.is_server_error() || r.status.is_success(),
        "{}",
        r.status
    );
}

#[tokio::test]
async fn a_docker_connection_closed_while_idle_is_replaced_unseen() {
    // The daemon closes every connection after one answer, though each answer offers
    // keep-alive: as dockerd's connections do when it restarts between two requests of one
    // client connection.
    let docker = FakeDocker::garbage(Bytes::from_static(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    ))
    .await;
    let proxy = TestProxy::start(&docker.address(), "").await;
    let path = proxy.address().trim_start_matches("unix://").to_owned();
    let mut client = tokio::net::UnixStream::connect(&path).await.unwrap();
    for (i, request) in [
        "GET /v1.41/info HTTP/1.1\r\nHost: docker\r\n\r\n",
        "GET /v1.41/info HTTP/1.1\r\nHost: docker\r\n\r\n",
        "HEAD /v1.41/info HTTP/1.1\r\nHost: docker\r\n\r\n",
        "POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    ]
    .into_iter()
    .enumerate()
    {
        // Let the daemon's close arrive before the next request.
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        let head_end = loop {
            let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("request {i}: no answer"))
                .unwrap();
            assert!(n > 0, "request {i}: the proxy closed the client connection");
            answer.extend_from_slice(&buf[..n]);
            if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
        };
        let text = String::from_utf8_lossy(&answer).to_string();
        assert!(text.starts_with("HTTP/1.1 200"), "request {i}: {text}");
        if !request.starts_with("HEAD") {
            while answer.len() < head_end + 2 {
                let n = client.read(&mut buf).await.unwrap();
                assert!(n > 0, "request {i}: body cut");
                answer.extend_from_slice(&buf[..n]);
            }
            assert_eq!(&answer[head_end..], b"{}", "request {i}");
        }
    }
    // Every request took a new Docker connection: the idle ones were found closed.
    assert_eq!(docker.connections(), 4);
}

/// An adapter that answers one call per connection and then closes it, though its answer
/// offers keep-alive (as an adapter restarted between two calls, or one with a short idle
/// timeout): every pre-hook sets `Number` to 2.
async fn one_call_per_connection_adapter() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut io, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                // The head, then as many body bytes as it announces.
                loop {
                    let Ok(n) = io.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&request).to_lowercase();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length: usize = text
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if request.len() >= end + 4 + length {
                            break;
                        }
                    }
                }
                let answer = json!({
                    "PowerstripProtocolVersion": 1,
                    "ModifiedClientRequest": {
                        "Method": "POST",
                        "Request": CREATE,
                        "Body": "{\"Number\":2}"
                    }
                })
                .to_string();
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{answer}",
                    answer.len()
                );
                let _ = io.write_all(response.as_bytes()).await;
                let _ = io.shutdown().await;
            });
        }
    });
    (url, connections)
}

#[tokio::test]
async fn an_adapter_connection_closed_while_idle_is_replaced_unseen() {
    let docker = echo_docker().await;
    let (url, connections) = one_call_per_connection_adapter().await;
    let toml = format!(
        "version = 1\n[adapters]\nsetter = {url:?}\n[[endpoints]]\nmatch = \"POST /*/containers/create\"\npre = [\"setter\"]\n"
    );
    let proxy = TestProxy::start(&docker.address(), &toml).await;
    for i in 0..3 {
        // Let the adapter's close arrive before the next call.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = proxy
            .client()
            .post_json(CREATE, &json!({"Number": 1}))
            .await;
        assert_eq!(r.status, StatusCode::OK, "call {i}: {}", r.text());
        assert_eq!(r.json()["Number"], 2, "call {i}");
    }
    assert_eq!(connections.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn an_adapter_served_on_a_unix_socket_is_reachable() {
    use powerstrip_adapter::net::{Address, Listener};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("adapter.sock");
    let listener = Listener::bind(&Address::Unix(socket.clone()))
        .await
        .unwrap();
    struct Stamp;
    #[powerstrip_adapter::async_trait]
    impl powerstrip_adapter::Adapter for Stamp {
        async fn pre_hook(
            &self,
            mut request: ClientRequest,
        ) -> Result<ClientRequest, powerstrip_adapter::HookError> {
            request.body = Some(r#"{"Stamped":true}"#.into());
            Ok(request)
        }
    }
    tokio::spawn(powerstrip_adapter::serve::serve_listeners(
        std::sync::Arc::new(Stamp),
        vec![listener],
        std::future::pending(),
    ));
    let docker = echo_docker().await;
    let toml = format!(
        "[adapters]\nstamp = \"unix://{}\"\n[[endpoints]]\nmatch = \"POST /*/containers/create\"\npre = [\"stamp\"]\n",
        socket.display()
    );
    let proxy = TestProxy::start(&docker.address(), &toml).await;
    let r = proxy.client().post_json(CREATE, &json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(docker.requests()[0].json(), json!({"Stamped": true}));
}
