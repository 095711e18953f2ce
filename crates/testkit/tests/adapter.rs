//! `FakeAdapter` does what its docs say, hit directly with `TestClient`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use powerstrip_protocol::{
    ClientRequest, HookCall, ServerResponse, decode_post_answer, decode_pre_answer, encode_call,
};
use powerstrip_testkit::{AdapterReply, ChannelBody, FakeAdapter, TestClient, TestResponse};
use serde_json::json;

fn pre(body: Option<&str>) -> HookCall {
    HookCall::PreHook {
        client_request: ClientRequest::new(
            "POST",
            "/v1.41/containers/create?name=web",
            body.map(str::to_owned),
        ),
    }
}

fn post(body: Option<&str>) -> HookCall {
    HookCall::PostHook {
        client_request: ClientRequest::new("POST", "/v1.41/containers/create", None),
        server_response: ServerResponse {
            content_type: "application/json".into(),
            body: body.map(str::to_owned),
            code: 201,
        },
    }
}

fn call_request(call: &HookCall) -> Request<Full<Bytes>> {
    Request::post("/hook")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(encode_call(call))))
        .expect("a valid request")
}

fn client(adapter: &FakeAdapter) -> TestClient {
    assert_eq!(adapter.url(), format!("http://{}/hook", adapter.addr()));
    TestClient::new(&format!("tcp://{}", adapter.addr()))
}

async fn call(adapter: &FakeAdapter, call: &HookCall) -> TestResponse {
    client(adapter).send(call_request(call)).await
}

#[tokio::test]
async fn echo_answers_with_what_it_was_given_and_records_calls() {
    let adapter = FakeAdapter::echo().await;
    let pre_call = pre(Some(r#"{"Image":"busybox"}"#));
    let answer = call(&adapter, &pre_call).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(
        decode_pre_answer(&answer.body).unwrap(),
        *pre_call.client_request().unwrap()
    );

    let post_call = post(None);
    let answer = call(&adapter, &post_call).await;
    let HookCall::PostHook {
        server_response, ..
    } = &post_call
    else {
        unreachable!()
    };
    assert_eq!(decode_post_answer(&answer.body).unwrap(), *server_response);

    assert_eq!(adapter.calls(), vec![pre_call, post_call]);
    assert_eq!(adapter.call_count(), 2);
    assert!(adapter.bad_calls().is_empty());
    let requests = adapter.requests();
    assert_eq!(requests[0].uri, "/hook");
    assert_eq!(requests[0].header("content-type"), Some("application/json"));
}

#[tokio::test]
async fn add_to_field_rewrites_pre_and_post_bodies() {
    let adapter = FakeAdapter::add_to_field("Counter", 2).await;

    let answer = call(&adapter, &pre(Some(r#"{"Counter":1,"Image":"busybox"}"#))).await;
    let request = decode_pre_answer(&answer.body).unwrap();
    assert_eq!(request.request, "/v1.41/containers/create?name=web");
    let body: serde_json::Value = serde_json::from_str(request.body.as_deref().unwrap()).unwrap();
    assert_eq!(body, json!({"Counter": 3, "Image": "busybox"}));

    let answer = call(&adapter, &post(Some(r#"{"Id":"abc"}"#))).await;
    let response = decode_post_answer(&answer.body).unwrap();
    assert_eq!(response.code, 201);
    let body: serde_json::Value = serde_json::from_str(response.body.as_deref().unwrap()).unwrap();
    assert_eq!(body, json!({"Id": "abc", "Counter": 2}));

    // Null bodies pass unchanged.
    let answer = call(&adapter, &pre(None)).await;
    assert_eq!(decode_pre_answer(&answer.body).unwrap().body, None);

    // A body it cannot add to is refused, with the reason.
    let answer = call(&adapter, &pre(Some("[1,2]"))).await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.text().contains("not a JSON object"),
        "{}",
        answer.text()
    );
}

#[tokio::test]
async fn refuse_answers_its_status_and_body_as_is() {
    let text = FakeAdapter::refuse(403, "no busybox here").await;
    let answer = call(&text, &pre(None)).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(answer.header("content-type"), Some("text/plain"));
    assert_eq!(answer.text(), "no busybox here");

    let docker_style = FakeAdapter::refuse(409, r#"{"message":"conflict"}"#).await;
    let answer = call(&docker_style, &post(None)).await;
    assert_eq!(answer.status, StatusCode::CONFLICT);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(answer.message(), "conflict");
    assert_eq!(docker_style.calls().len(), 1);
}

#[tokio::test]
async fn json_and_raw_replies_are_sent_verbatim() {
    let adapter = FakeAdapter::start(|call| match call {
        HookCall::PreHook { .. } => {
            AdapterReply::Json(200, json!({"PowerstripProtocolVersion": 2}))
        }
        _ => AdapterReply::raw(200, "", ""),
    })
    .await;
    let answer = call(&adapter, &pre(None)).await;
    assert_eq!(answer.json(), json!({"PowerstripProtocolVersion": 2}));
    let answer = call(&adapter, &post(None)).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type"), None);
    assert_eq!(answer.header("content-length"), Some("0"));
}

#[tokio::test]
async fn undecodable_calls_are_recorded_as_bad_calls() {
    let adapter = FakeAdapter::echo().await;
    let answer = client(&adapter)
        .send(
            Request::post("/hook")
                .body(Full::new(Bytes::from("<html>")))
                .unwrap(),
        )
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert!(
        answer
            .message()
            .starts_with("fake adapter: not a valid PowerstripProtocolVersion 1 document"),
        "{}",
        answer.text()
    );
    assert_eq!(adapter.bad_calls(), vec!["<html>".to_owned()]);
    assert!(adapter.calls().is_empty());
    assert_eq!(adapter.call_count(), 1);
}

#[tokio::test]
async fn close_mid_answer_breaks_the_response() {
    let adapter = FakeAdapter::start(|_| AdapterReply::CloseMidAnswer).await;
    let result = client(&adapter).try_send(call_request(&pre(None))).await;
    assert!(result.is_err(), "{result:?}");
    assert_eq!(adapter.calls().len(), 1);
}

#[tokio::test]
async fn hang_never_answers_and_delay_answers_late() {
    let hanging = FakeAdapter::start(|_| AdapterReply::Hang).await;
    let waited = tokio::time::timeout(Duration::from_millis(100), call(&hanging, &pre(None))).await;
    assert!(waited.is_err(), "hang answered: {waited:?}");
    assert_eq!(hanging.calls().len(), 1);

    let late = FakeAdapter::start(|call| {
        AdapterReply::delay(Duration::from_millis(80), AdapterReply::pass(call))
    })
    .await;
    let started = Instant::now();
    let answer = call(&late, &pre(None)).await;
    assert!(started.elapsed() >= Duration::from_millis(80));
    assert_eq!(answer.status, 200);
}

#[tokio::test]
async fn sequential_requests_share_one_keep_alive_connection_and_chunked_bodies_work() {
    let adapter = FakeAdapter::echo().await;
    let stream = tokio::net::TcpStream::connect(adapter.addr())
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);

    for body in ["1", "2"] {
        let call = pre(Some(body));
        let response = sender.send_request(call_request(&call)).await.unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            decode_pre_answer(&bytes).unwrap(),
            *call.client_request().unwrap()
        );
    }
    assert_eq!(adapter.connections(), 1);

    // A body without a length goes out chunked; the fake reads it all the same.
    let (tx, body) = ChannelBody::channel();
    let call = pre(Some("chunked"));
    let bytes = Bytes::from(encode_call(&call));
    let (a, b) = bytes.split_at(10);
    tx.send(Bytes::copy_from_slice(a)).await.unwrap();
    tx.send(Bytes::copy_from_slice(b)).await.unwrap();
    drop(tx);
    let response = client(&adapter)
        .request_streaming(Request::post("/hook").body(body).unwrap())
        .await;
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        decode_pre_answer(&bytes).unwrap(),
        *call.client_request().unwrap()
    );
    assert_eq!(
        adapter.requests()[2].header("transfer-encoding"),
        Some("chunked")
    );
}
