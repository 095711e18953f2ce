//! PowerstripProtocolVersion 1 encoding and decoding (what an HTTP adapter costs the proxy
//! per hook besides the round trip), and the SDK's lossless container create view
//! (`ContainerCreate::parse` / `to_body`), on the body the docker CLI really sends.

mod common;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use powerstrip_adapter::docker::ContainerCreate;
use powerstrip_protocol::{
    ClientRequest, HookCall, ServerResponse, decode_call, decode_post_answer, decode_pre_answer,
    encode_call, encode_post_answer, encode_pre_answer,
};

fn create_request() -> ClientRequest {
    ClientRequest::new(
        "POST",
        "/v1.41/containers/create?name=bench-capture",
        Some(common::CONTAINER_CREATE.to_owned()),
    )
}

fn version_response() -> ServerResponse {
    ServerResponse {
        content_type: "application/json".into(),
        body: Some(common::VERSION.to_owned()),
        code: 200,
    }
}

fn protocol(c: &mut Criterion) {
    let pre = HookCall::PreHook {
        client_request: create_request(),
    };
    let post = HookCall::PostHook {
        client_request: ClientRequest::new("GET", "/v1.41/version", None),
        server_response: version_response(),
    };
    let pre_bytes = encode_call(&pre);
    let post_bytes = encode_call(&post);
    let pre_answer = encode_pre_answer(&create_request());
    let post_answer = encode_post_answer(&version_response());
    assert!(decode_call(&pre_bytes).is_ok() && decode_call(&post_bytes).is_ok());
    assert!(decode_pre_answer(&pre_answer).is_ok() && decode_post_answer(&post_answer).is_ok());

    let mut group = c.benchmark_group("protocol");
    group.throughput(Throughput::Bytes(pre_bytes.len() as u64));
    group.bench_function("encode_call/pre-hook create", |b| {
        b.iter(|| encode_call(black_box(&pre)))
    });
    group.bench_function("decode_call/pre-hook create", |b| {
        b.iter(|| decode_call(black_box(&pre_bytes)))
    });
    group.throughput(Throughput::Bytes(pre_answer.len() as u64));
    group.bench_function("encode_pre_answer/create", |b| {
        let request = create_request();
        b.iter(|| encode_pre_answer(black_box(&request)))
    });
    group.bench_function("decode_pre_answer/create", |b| {
        b.iter(|| decode_pre_answer(black_box(&pre_answer)))
    });
    group.throughput(Throughput::Bytes(post_bytes.len() as u64));
    group.bench_function("encode_call/post-hook version", |b| {
        b.iter(|| encode_call(black_box(&post)))
    });
    group.bench_function("decode_call/post-hook version", |b| {
        b.iter(|| decode_call(black_box(&post_bytes)))
    });
    group.throughput(Throughput::Bytes(post_answer.len() as u64));
    group.bench_function("encode_post_answer/version", |b| {
        let response = version_response();
        b.iter(|| encode_post_answer(black_box(&response)))
    });
    group.bench_function("decode_post_answer/version", |b| {
        b.iter(|| decode_post_answer(black_box(&post_answer)))
    });
    group.finish();

    let body = common::CONTAINER_CREATE;
    let create = match ContainerCreate::parse(body) {
        Ok(create) => create,
        Err(err) => panic!("the captured create body is refused: {err}"),
    };
    assert_eq!(create.to_body(), body, "the view is not lossless");
    let mut group = c.benchmark_group("docker");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("ContainerCreate::parse", |b| {
        b.iter(|| ContainerCreate::parse(black_box(body)))
    });
    group.bench_function("ContainerCreate::to_body", |b| {
        b.iter(|| black_box(&create).to_body())
    });
    group.bench_function("ContainerCreate::parse+set_label+to_body", |b| {
        b.iter(|| {
            let Ok(mut create) = ContainerCreate::parse(black_box(body)) else {
                panic!("refused")
            };
            let _ = create.set_label("com.example.bench", "1");
            create.to_body()
        })
    });
    group.finish();
}

criterion_group!(benches, protocol);
criterion_main!(benches);
