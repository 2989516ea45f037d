//! Engine benchmarks: the cost of one evaluation tick, and simulation speed.
//!
//! `cargo bench -p rollout-engine --bench engine`. Results go in `docs/performance.md`.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use rollout_diagnostics::SourceFile;
use rollout_engine::scenario::Scenario;
use rollout_engine::{Cluster, Input, Machine, Observations, Sample, sim};

fn machine(text: &str) -> Machine {
    let checked = rollout_policy::check_source(&SourceFile::new("bench", text.to_string()));
    match checked.policy {
        Some(p) => Machine::compile(p),
        None => panic!("invalid policy: {:?}", checked.diagnostics),
    }
}

/// The seed's two rules as fixed rules.
const SEED: &str = include_str!("../../../tests/promtool/seed.rollout");
/// The shipped headline policy: the error rule judged by the sequential tests (`detect`).
const HEADLINE: &str = include_str!("../../../policies/sklearn-iris-canary.rollout");

fn cluster(pct: u8) -> Cluster {
    Cluster {
        canary_percent: pct,
        canary_revision: "iris-00002".into(),
        stable_revision: Some("iris-00001".into()),
        ready: true,
        observed: true,
    }
}

/// Ticks of a machine holding at 10% with fresh healthy observations, one evaluation per tick.
fn tick_bench(c: &mut Criterion, name: &str, text: &str) {
    let m = machine(
        &text
            .replace("hold 5m", "hold 24h")
            .replace("max 2h", "max 48h")
            .replace("max 1h", "max 48h")
            .replace("deadline = 2h", "deadline = 72h")
            .replace("deadline = 8h", "deadline = 72h"),
    );
    let mut state = m.initial_state();
    // Start, shift to 10%, settle: now holding.
    m.step(
        &mut state,
        &Input {
            now: 0,
            cluster: Some(cluster(0)),
            ..Input::default()
        },
    );
    m.step(
        &mut state,
        &Input {
            now: 1000,
            cluster: Some(cluster(10)),
            ..Input::default()
        },
    );
    let interval = m.policy().evaluation.interval.as_millis() as u64;
    // Two evaluations to get past the first one; then every benchmarked call is one due
    // evaluation from the same state.
    let mut now = 1000u64;
    let input = |state: &rollout_engine::State, now: u64| {
        let mut obs = Observations::default();
        for k in m.queries(state, now) {
            let name = &m.policy().metrics[k.metric].name;
            let value = match name.as_str() {
                "requests" => 5000.0,
                "errors" => 20.0,
                _ => 100.0,
            };
            obs.push(k, Sample::Value { value, at: now });
        }
        Input {
            now,
            cluster: Some(cluster(10)),
            observations: obs,
            operator: vec![],
        }
    };
    for _ in 0..2 {
        now += interval;
        let i = input(&state, now);
        m.step(&mut state, &i);
    }
    now += interval;
    let tick = input(&state, now);
    let mut check = state.clone();
    let out = m.step(&mut check, &tick);
    assert!(out.decision.evaluated, "the benchmarked call must evaluate");
    assert!(
        matches!(check.phase, rollout_engine::Phase::Holding { .. }),
        "{:?}",
        check.phase
    );
    c.bench_function(name, |b| {
        b.iter_batched(
            || state.clone(),
            |mut s| black_box(m.step(&mut s, &tick)),
            BatchSize::SmallInput,
        )
    });
}

fn bench(c: &mut Criterion) {
    tick_bench(c, "tick/seed_policy_2_rules", SEED);
    let stat = SEED.replace(
        "when canary.error_rate > 1.5 * stable.error_rate\n    require canary.requests >= 100",
        "when canary.error_rate > 1.5 * stable.error_rate with confidence 95%",
    );
    tick_bench(c, "tick/statistical_rule", &stat);
    tick_bench(c, "tick/sequential_detect_rule", HEADLINE);

    // 1,000 rollouts x 1 h of virtual time at 10 s ticks.
    let policy = SEED
        .replace("interval = 30s", "interval = 10s")
        .replace("hold 5m", "hold 20m")
        .replace("hold 10m", "hold 20m")
        .replace("deadline = 2h", "deadline = 3h");
    let m = machine(&policy);
    let scenario =
        Scenario::from_yaml("seed: 1\nduration: 1h\nrps: 1000\nstable: {error_rate: 0.5%}\n")
            .expect("scenario");
    let one = sim::run_one(&m, &scenario);
    assert!(
        one.end >= 3_500_000,
        "a run should last about an hour, lasted {} ms",
        one.end
    );
    let mut g = c.benchmark_group("simulate");
    g.sample_size(10);
    g.bench_function("1000_rollouts_x_1h_at_10s_ticks", |b| {
        b.iter(|| black_box(sim::run_batch(&m, &scenario, 1000)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
