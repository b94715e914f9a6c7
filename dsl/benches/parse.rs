//! Parse + lower + check of the largest real spec (Qwen3-30B-A3B: 48 MoE layers).
//!
//! `cargo bench -p modelspec-dsl --bench parse`

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn parse_largest(c: &mut Criterion) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../specs/qwen3-30b-a3b.mspec");
    let src = std::fs::read_to_string(path).expect("specs/qwen3-30b-a3b.mspec exists");
    c.bench_function("parse+lower+check qwen3-30b-a3b", |b| {
        b.iter(|| modelspec_dsl::mspec::parse(black_box(&src), "qwen3-30b-a3b.mspec"))
    });
    let spec = modelspec_dsl::mspec::parse(&src, "x").expect("valid spec");
    c.bench_function("check qwen3-30b-a3b", |b| {
        b.iter(|| modelspec_dsl::check::check(black_box(&spec)))
    });
    c.bench_function("print qwen3-30b-a3b", |b| {
        b.iter(|| modelspec_dsl::mspec::print(black_box(&spec)))
    });
}

criterion_group!(benches, parse_largest);
criterion_main!(benches);
