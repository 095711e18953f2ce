//! The matcher, on every request: `Config::matching` (the configuration's view) and
//! `Chains::matched` (what the proxy calls), with 1, 10 and 50 endpoint patterns, for a
//! request one pattern takes (hit) and one none takes (miss, the pass-through case).

mod common;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// Hooked by the last pattern of every configuration ([`common::patterns`]).
const HIT: (&str, &str) = ("POST", "/v1.41/containers/create");
/// Hooked by none: what most Docker traffic is.
const MISS: (&str, &str) = ("GET", "/v1.41/containers/json");

fn matcher(c: &mut Criterion) {
    let mut group = c.benchmark_group("matcher");
    for n in [1, 10, 50] {
        let config = common::config(&common::patterns(n), 3);
        let chains = common::chains(&config);
        for (case, (method, path)) in [("hit", HIT), ("miss", MISS)] {
            let expected = usize::from(case == "hit");
            assert_eq!(config.matching(method, path).count(), expected);
            assert_eq!(
                usize::from(chains.matched(method, path).label.is_some()),
                expected
            );

            group.bench_with_input(
                BenchmarkId::new(format!("Config::matching/{case}"), n),
                &(method, path),
                |b, (method, path)| {
                    b.iter(|| config.matching(black_box(method), black_box(path)).count())
                },
            );
            group.bench_with_input(
                BenchmarkId::new(format!("Chains::matched/{case}"), n),
                &(method, path),
                |b, (method, path)| b.iter(|| chains.matched(black_box(method), black_box(path))),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, matcher);
criterion_main!(benches);
