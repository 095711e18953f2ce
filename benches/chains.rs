//! Chain bookkeeping: `run_pre` and `run_post` with 3 in-process null adapters (the
//! trait's default methods), i.e. what the proxy itself spends around hooks that do
//! nothing — the timeout per hook, the fallback clone, the rewrite checks, the log calls,
//! the per-hook metrics.
//! Measured on a current-thread runtime, on a realistic container create.

mod common;

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use powerstrip_adapter::{ClientRequest, ServerResponse};
use powerstrip_core::chains::{run_post, run_pre};

const CREATE: (&str, &str) = ("POST", "/v1.41/containers/create");

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => panic!("cannot start a tokio runtime: {err}"),
    }
}

fn request() -> ClientRequest {
    ClientRequest::new(
        "POST",
        "/v1.41/containers/create?name=bench-capture",
        Some(common::CONTAINER_CREATE.to_owned()),
    )
}

fn response() -> ServerResponse {
    ServerResponse {
        content_type: "application/json".into(),
        body: Some(
            r#"{"Id":"38d3b4c06f1b313d0885a02c146f272433b42fbdf2afc856d8cfd44e1e7ae35f","Warnings":[]}"#
                .into(),
        ),
        code: 201,
    }
}

fn chains(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("chains");
    let metrics = powerstrip_core::metrics::Metrics::default();
    let metrics = &metrics;
    for hooks in [1, 3] {
        let config = common::config(&common::patterns(1), hooks);
        let chains = common::chains(&config);
        let matched = chains.matched(CREATE.0, CREATE.1);
        assert_eq!(matched.pre.len(), hooks);
        assert_eq!(matched.post.len(), hooks);

        group.bench_function(BenchmarkId::new("run_pre", hooks), |b| {
            b.to_async(&rt).iter_batched(
                request,
                |request| async {
                    let out = run_pre(&matched.pre, request, metrics).await;
                    black_box(out.is_ok())
                },
                BatchSize::SmallInput,
            )
        });
        let sent = request();
        group.bench_function(BenchmarkId::new("run_post", hooks), |b| {
            b.to_async(&rt).iter_batched(
                response,
                |response| async {
                    let out = run_post(&matched.post, &sent, response, metrics).await;
                    black_box(out.is_ok())
                },
                BatchSize::SmallInput,
            )
        });
        // What a hooked create costs the proxy outside I/O: match, pre chain, post chain.
        group.bench_function(BenchmarkId::new("matched+pre+post", hooks), |b| {
            b.to_async(&rt).iter_batched(
                || (request(), response()),
                |(request, response)| async {
                    let matched = chains.matched(black_box(CREATE.0), black_box(CREATE.1));
                    let Ok(sent) = run_pre(&matched.pre, request, metrics).await else {
                        panic!("a null pre-hook refused")
                    };
                    let out = run_post(&matched.post, &sent, response, metrics).await;
                    black_box(out.is_ok())
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, chains);
criterion_main!(benches);
