//! Shared queries against the real Prometheus: one query per (Prometheus, template, window,
//! namespace) answers every revision, with the values each revision's own query gives.

use std::sync::Arc;
use std::time::Duration;

use rollout_engine::Sample;
use rollout_policy::template::{Template, Vars};
use rollout_runner::fanout::Fanout;
use rollout_runner::metrics::{Credentials, Prom, Tls};
use rollout_runner::share;
use rollout_runner::telemetry::Telemetry;
use serde_json::json;

use crate::world::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_shared_query_answers_every_revision_as_its_own_query_would() {
    let w = world(40.0).await;
    let names = ["model-0", "model-1", "model-2"];
    futures_util::future::join_all(names.iter().map(|n| w.canary_of(n, json!({})))).await;
    let revisions: Vec<String> = names
        .iter()
        .flat_map(|n| {
            [
                format!("{n}-predictor-00001"),
                format!("{n}-predictor-00002"),
            ]
        })
        .collect();
    let prom = Prom::new(
        &w.prom,
        Credentials::default(),
        &Tls::default(),
        Duration::from_secs(5),
    )
    .expect("client");
    // A time Prometheus has scraped past, so that every query below sees the same data.
    let now = rollout_runner::now_ms() / 1000 * 1000 - 2000;
    let metrics = rollout_policy::presets::preset("knative").expect("preset");
    let mut compared = 0;
    for (m, def) in metrics.iter().filter(|(m, _)| !m.derived) {
        let t = Template::parse(def).expect("template");
        let render = |r: &str| {
            t.render(&Vars {
                mode: Default::default(),
                revision: r,
                namespace: "kserve-test",
                name: "ignored",
                component: "predictor",
                window: Duration::from_secs(20),
            })
        };
        let fanout = Fanout::new(Duration::from_secs(60));
        let plan = fanout
            .plan(&render(share::SENTINEL))
            .expect("a preset query is shared");
        let telemetry = Arc::new(Telemetry::new());
        let before = prometheus_queries(&w.prom).await;
        // Fifty asks for each of six revisions (both arms of three rollouts), at once.
        let asks = revisions
            .iter()
            .flat_map(|r| std::iter::repeat_n(r, 50))
            .map(|r| {
                let (fanout, prom, plan, telemetry) =
                    (&fanout, &prom, plan.clone(), telemetry.clone());
                async move {
                    (
                        r.clone(),
                        fanout
                            .sample(prom, &plan, r, now, 60_000, Some(&telemetry))
                            .await,
                    )
                }
            });
        let shared = futures_util::future::join_all(asks).await;
        // Prometheus counts a request once it has answered it.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = prometheus_queries(&w.prom).await;
        assert_eq!(
            after - before,
            1,
            "{}: 300 asks, one query to Prometheus",
            m.name
        );
        assert!(
            telemetry
                .encode()
                .contains("rolloutctl_prometheus_query_duration_seconds_count 1\n"),
            "{}: {}",
            m.name,
            telemetry.encode()
        );
        for r in &revisions {
            let own = prom.query(&render(r), now).await;
            for (asked, s) in shared.iter().filter(|(a, _)| a == r) {
                match (&own, s) {
                    (Sample::Value { value: a, .. }, Sample::Value { value: b, .. }) => {
                        assert!(
                            (a - b).abs() <= 1e-9 * a.abs().max(1.0),
                            "{} of {asked}: own {a}, shared {b}",
                            m.name
                        );
                        compared += 1;
                    }
                    (a, b) => assert_eq!(a, b, "{} of {asked}", m.name),
                }
            }
        }
    }
    // Every revision had traffic: requests, errors, three latency quantiles and rps compared.
    assert!(compared >= 6 * 50 * 5, "compared {compared} values");
    // A revision that does not exist has no data in the shared answer (never 0).
    let t = Template::parse(&metrics[0].1).expect("template");
    let fanout = Fanout::new(Duration::from_secs(60));
    let plan = fanout
        .plan(&t.render(&Vars {
            mode: Default::default(),
            revision: share::SENTINEL,
            namespace: "kserve-test",
            name: "x",
            component: "predictor",
            window: Duration::from_secs(20),
        }))
        .expect("shared");
    let none = fanout
        .sample(&prom, &plan, "model-9-predictor-00001", now, 60_000, None)
        .await;
    assert_eq!(none, Sample::NoData);
    w.sandbox.shutdown().await;
}
