//! `FakeDocker` does what its docs say, hit directly with `TestClient`.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use powerstrip_testkit::{FakeDocker, FakeResponse, Responder, TestClient, next_chunk};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

#[tokio::test]
async fn json_routes_answer_and_every_request_is_recorded() {
    let docker = FakeDocker::builder()
        .route(
            "POST",
            "/*/containers/create",
            Responder::json(201, json!({"Id": "abc", "Warnings": []})),
        )
        .start_unix()
        .await;
    assert!(docker.address().starts_with("unix://"));
    assert!(docker.socket_path().unwrap().exists());
    assert_eq!(docker.tcp_addr(), None);

    let response = docker
        .client()
        .post_json(
            "/v1.41/containers/create?name=web",
            &json!({"Image": "busybox"}),
        )
        .await;
    assert_eq!(response.status, StatusCode::CREATED);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(
        response.header("content-length"),
        Some(response.body.len().to_string().as_str())
    );
    assert_eq!(response.json(), json!({"Id": "abc", "Warnings": []}));

    let requests = docker.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request.method, Method::POST);
    assert_eq!(request.uri, "/v1.41/containers/create?name=web");
    assert_eq!(request.path(), "/v1.41/containers/create");
    assert_eq!(request.query(), Some("name=web"));
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.json(), json!({"Image": "busybox"}));
}

#[tokio::test]
async fn unmatched_requests_get_dockers_404_and_the_first_match_wins() {
    let docker = FakeDocker::builder()
        .route(
            "GET",
            "/*/info",
            Responder::json(200, json!({"first": true})),
        )
        .route(
            "GET",
            "/v1.41/info",
            Responder::json(200, json!({"first": false})),
        )
        .route("*", "/_ping", Responder::raw(200, "text/plain", "OK"))
        .start_tcp()
        .await;
    assert!(docker.address().starts_with("tcp://127.0.0.1:"));
    assert_eq!(docker.socket_path(), None);
    let client = docker.client();

    assert_eq!(client.get("/v1.41/info").await.json()["first"], true);
    assert_eq!(client.request(Method::HEAD, "/_ping").await.status, 200);
    let missing = client.get("/v1.41/nope?x=1").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.message(), "page not found");
    // The method is part of the match.
    assert_eq!(
        client.request(Method::DELETE, "/v1.41/info").await.status,
        404
    );
    assert_eq!(docker.requests().len(), 4);
}

#[tokio::test]
async fn raw_echo_and_custom_responders() {
    let docker = FakeDocker::builder()
        .route("POST", "/*/containers/*/start", Responder::raw(204, "", ""))
        .route("POST", "/*/echo", Responder::echo())
        .route(
            "*",
            "/*/custom",
            Responder::with(|req| FakeResponse::json(418, &json!({"saw": req.uri}))),
        )
        .start_unix()
        .await;
    let client = docker.client();

    let started = client
        .request(Method::POST, "/v1.41/containers/abc/start")
        .await;
    assert_eq!(started.status, StatusCode::NO_CONTENT);
    assert_eq!(started.header("content-type"), None);
    assert!(started.body.is_empty());

    let echoed = client
        .send(
            Request::post("/v1.41/echo")
                .header("content-type", "text/plain")
                .body(Full::new(Bytes::from_static(b"exactly this")))
                .unwrap(),
        )
        .await;
    assert_eq!(echoed.status, 200);
    assert_eq!(echoed.header("content-type"), Some("application/json"));
    assert_eq!(echoed.text(), "exactly this");

    let custom = client.get("/v1.41/custom?q=1").await;
    assert_eq!(custom.status.as_u16(), 418);
    assert_eq!(custom.json(), json!({"saw": "/v1.41/custom?q=1"}));
}

#[tokio::test]
async fn chunked_responses_arrive_chunk_by_chunk_and_only_once() {
    let (tx, rx) = mpsc::channel(4);
    let docker = FakeDocker::builder()
        .route(
            "GET",
            "/*/events",
            Responder::chunked("application/json", rx),
        )
        .start_unix()
        .await;
    let client = docker.client();

    let response = client
        .request_streaming(
            Request::get("/v1.41/events")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    // Headers come before any chunk.
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["transfer-encoding"], "chunked");
    let mut body = response.into_body();

    tx.send(Bytes::from_static(b"{\"n\":1}\n")).await.unwrap();
    assert_eq!(next_chunk(&mut body).await.unwrap(), "{\"n\":1}\n");
    // Nothing more until the next chunk is sent.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), next_chunk(&mut body))
            .await
            .is_err()
    );
    tx.send(Bytes::from_static(b"{\"n\":2}\n")).await.unwrap();
    assert_eq!(next_chunk(&mut body).await.unwrap(), "{\"n\":2}\n");
    drop(tx);
    assert_eq!(next_chunk(&mut body).await, None);

    let again = client.get("/v1.41/events").await;
    assert_eq!(again.status, 500);
    assert!(
        again.message().contains("already used"),
        "{}",
        again.message()
    );
}

async fn check_upgrade_echo(docker: &FakeDocker) {
    let (head, mut io) = docker
        .client()
        .upgrade(
            Request::post("/v1.41/containers/abc/attach?stream=1&stdin=1")
                .body(Full::new(Bytes::new()))
                .expect("a valid request"),
        )
        .await;
    assert_eq!(head.status, StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(head.header("upgrade"), Some("tcp"));
    assert_eq!(head.header("connection"), Some("Upgrade"));
    assert_eq!(
        head.header("content-type"),
        Some("application/vnd.docker.raw-stream")
    );

    io.write_all(b"hello\n")
        .await
        .expect("writing to the upgraded stream");
    let mut buf = [0u8; 6];
    io.read_exact(&mut buf).await.expect("reading the echo");
    assert_eq!(&buf, b"hello\n");

    // Half-close: the fake sees EOF, says so, and closes its side.
    io.write_all(b"bye\n")
        .await
        .expect("writing before half-close");
    io.shutdown().await.expect("half-closing");
    let mut rest = Vec::new();
    io.read_to_end(&mut rest).await.expect("reading to EOF");
    assert_eq!(rest, b"bye\neof\n");

    let requests = docker.requests();
    assert_eq!(requests[0].header("upgrade"), Some("tcp"));
    assert_eq!(
        requests[0].uri,
        "/v1.41/containers/abc/attach?stream=1&stdin=1"
    );
}

#[tokio::test]
async fn upgrade_echo_echoes_and_reports_half_close_over_unix_and_tcp() {
    let route =
        || FakeDocker::builder().route("POST", "/*/containers/*/attach", Responder::upgrade_echo());
    check_upgrade_echo(&route().start_unix().await).await;
    check_upgrade_echo(&route().start_tcp().await).await;

    // Without an Upgrade header there is nothing to hijack.
    let docker = route().start_unix().await;
    let plain = docker
        .client()
        .request(Method::POST, "/v1.41/containers/abc/attach")
        .await;
    assert_eq!(plain.status, 400);
}

#[tokio::test]
async fn hang_never_answers_but_records_the_request() {
    let docker = FakeDocker::builder()
        .route("GET", "/*/info", Responder::hang())
        .start_unix()
        .await;
    let client = docker.client();
    let waited = tokio::time::timeout(Duration::from_millis(100), client.get("/v1.41/info")).await;
    assert!(waited.is_err(), "hang answered: {waited:?}");
    assert_eq!(docker.requests().len(), 1);
}

#[tokio::test]
async fn connections_are_counted_and_dropping_stops_the_server() {
    let docker = FakeDocker::builder()
        .route("GET", "/_ping", Responder::raw(200, "text/plain", "OK"))
        .route("GET", "/hang", Responder::hang())
        .start_unix()
        .await;
    let client = docker.client();
    assert_eq!(docker.connections(), 0);
    client.get("/_ping").await;
    client.get("/_ping").await;
    assert_eq!(docker.connections(), 2);

    // A request held by a hanging route is cut when the server goes.
    let hanging = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .try_send(Request::get("/hang").body(Full::new(Bytes::new())).unwrap())
                .await
        }
    });
    while docker.requests().len() < 3 {
        tokio::task::yield_now().await;
    }
    let path = docker.socket_path().unwrap().to_owned();
    drop(docker);
    assert!(!path.exists(), "socket left behind at {}", path.display());
    let cut = tokio::time::timeout(Duration::from_secs(1), hanging)
        .await
        .expect("the hanging request ends when the server is dropped")
        .unwrap();
    assert!(cut.is_err(), "{cut:?}");
    assert!(
        client
            .try_send(
                Request::get("/_ping")
                    .body(Full::new(Bytes::new()))
                    .unwrap()
            )
            .await
            .is_err()
    );
}

#[tokio::test]
async fn garbage_server_writes_its_bytes_and_closes() {
    let docker = FakeDocker::garbage(&b"NOT HTTP\r\n\r\n"[..]).await;
    assert!(docker.address().starts_with("unix://"));
    let client = TestClient::new(&docker.address());
    let failed = client
        .try_send(
            Request::get("/_ping")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(docker.connections(), 1);

    // At the byte level: whatever we send, those exact bytes come back, then EOF.
    let mut io = powerstrip_testkit::connect(docker.addr()).await.unwrap();
    io.write_all(b"GET /_ping HTTP/1.1\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    io.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"NOT HTTP\r\n\r\n");
    assert!(docker.requests().is_empty());
}
