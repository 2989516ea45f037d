//! Lint throughput: parse + check over a generated corpus of realistic policies.
//!
//! Run with `cargo bench -p rollout-policy --bench lint_throughput`. Results go in
//! `docs/performance.md`.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rollout_diagnostics::SourceFile;

/// The policies in `policies/` and `examples/`, each repeated under new names.
fn corpus(n: usize) -> Vec<SourceFile> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let mut seeds = Vec::new();
    for dir in ["policies", "examples"] {
        let mut paths: Vec<_> = std::fs::read_dir(format!("{root}/{dir}"))
            .expect("dir")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "rollout"))
            .collect();
        paths.sort();
        for p in paths {
            seeds.push(std::fs::read_to_string(p).expect("read"));
        }
    }
    (0..n)
        .map(|i| {
            let text =
                seeds[i % seeds.len()].replacen("rollout \"", &format!("rollout \"gen-{i}-"), 1);
            SourceFile::new(format!("gen-{i}.rollout"), text)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let files = corpus(1000);
    let bytes: usize = files.iter().map(|f| f.text().len()).sum();
    for f in &files {
        assert!(
            rollout_policy::check_source(f).diagnostics.is_empty(),
            "{} is not clean",
            f.name()
        );
    }
    let mut g = c.benchmark_group("lint");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("parse_only_1000_files", |b| {
        b.iter(|| {
            for f in &files {
                black_box(rollout_syntax::parse(f).is_ok());
            }
        })
    });
    g.bench_function("parse_and_check_1000_files", |b| {
        b.iter(|| {
            for f in &files {
                black_box(rollout_policy::check_source(f).policy.is_some());
            }
        })
    });
    g.throughput(Throughput::Elements(files.len() as u64));
    g.bench_function("files_per_second", |b| {
        b.iter(|| {
            for f in &files {
                black_box(rollout_policy::check_source(f).policy.is_some());
            }
        })
    });
    g.finish();

    // One ~10 KB file: the seed policy with many extra rules.
    let seed = &files[0];
    let mut big = seed.text().to_string();
    let mut extra = String::new();
    let mut i = 0;
    while big.len() + extra.len() < 10 * 1024 {
        extra.push_str(&format!(
            "\n  rule Extra{i} {{\n    when canary.latency_p99 > 1.2 * stable.latency_p99 and canary.error_rate > stable.error_rate + 1%\n    require canary.requests >= 100\n    for 1m\n    action pause\n  }}\n"
        ));
        i += 1;
    }
    let at = big.find("  on no_data").unwrap_or(big.len() - 2);
    big.insert_str(at, &extra);
    let big = SourceFile::new("big.rollout", big);
    let checked = rollout_policy::check_source(&big);
    assert!(!checked.has_errors(), "{:?}", checked.diagnostics);
    let mut g = c.benchmark_group("lint_10kb_file");
    g.throughput(Throughput::Bytes(big.text().len() as u64));
    g.bench_function("parse_and_check", |b| {
        b.iter(|| black_box(rollout_policy::check_source(&big).policy.is_some()))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
