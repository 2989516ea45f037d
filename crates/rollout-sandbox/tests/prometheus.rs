//! The sandbox scraped by a real Prometheus (the Debian package). Fails loudly when Prometheus is
//! not installed: `scripts/test` installs it.

mod common;

use std::time::Duration;

use common::*;
use rollout_sandbox::{Config, Sandbox};
use serde_json::Value;

async fn query(prom: &str, q: &str) -> Option<f64> {
    let url = format!("{prom}/api/v1/query");
    let resp = reqwest::Client::new()
        .post(&url)
        .form(&[("query", q)])
        .send()
        .await
        .ok()?;
    let v: Value = resp.json().await.ok()?;
    let s = v["data"]["result"][0]["value"][1].as_str()?;
    s.parse::<f64>().ok().filter(|x| x.is_finite())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_revision_error_rate_and_p95_match_the_configured_behaviour() {
    assert!(
        rollout_sandbox::prometheus::which("prometheus").is_some(),
        "Prometheus is required for this test: {}",
        rollout_sandbox::prometheus::INSTALL_HINT
    );
    let s = Sandbox::start(Config {
        rps: 400.0,
        ready_delay: Duration::from_millis(200),
        ..Config::default()
    })
    .await
    .expect("sandbox");
    let prom = s
        .prometheus
        .as_ref()
        .map(|p| p.url.clone())
        .unwrap_or_else(|| panic!("Prometheus did not start: {:?}", s.prometheus_note));
    let k = Kubectl::new(&s);
    k.ok(&["apply", "-f", "examples/kserve/sklearn-iris-v1.yaml"]);
    k.ok(&[
        "wait",
        "--for=condition=Ready",
        "isvc/sklearn-iris",
        "--timeout=20s",
    ]);
    // v2 at 10% with 5% errors and a slower P95.
    let v2 = std::fs::read_to_string(root().join("examples/kserve/sklearn-iris-v2.yaml"))
        .expect("v2")
        .replace("error-rate: \"0.5%\"", "error-rate: \"5%\"\n    sandbox.rolloutctl.io/latency-p50-ms: \"80\"\n    sandbox.rolloutctl.io/latency-p95-ms: \"300\"");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("v2.yaml");
    std::fs::write(&path, v2).expect("write");
    k.ok(&["apply", "-f", path.to_str().expect("path")]);
    let canary = "sklearn-iris-predictor-00002";
    let stable = "sklearn-iris-predictor-00001";
    let err = |rev: &str| {
        format!(
            "sum(rate(revision_app_request_count{{namespace_name=\"kserve-test\",revision_name=\"{rev}\",response_code_class=\"5xx\"}}[30s])) / sum(rate(revision_app_request_count{{namespace_name=\"kserve-test\",revision_name=\"{rev}\"}}[30s]))"
        )
    };
    let p95 = |rev: &str| {
        format!(
            "histogram_quantile(0.95, sum by (le) (rate(revision_app_request_latencies_bucket{{namespace_name=\"kserve-test\",revision_name=\"{rev}\"}}[30s])))"
        )
    };
    // Within 60 s (scrape 1 s + a 30 s window), the values settle near the configured behaviour.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    tokio::time::sleep(Duration::from_secs(32)).await;
    let (mut ce, mut se, mut cp, mut sp) = (None, None, None, None);
    while tokio::time::Instant::now() < deadline {
        ce = query(&prom, &err(canary)).await;
        se = query(&prom, &err(stable)).await;
        cp = query(&prom, &p95(canary)).await;
        sp = query(&prom, &p95(stable)).await;
        if let (Some(a), Some(b), Some(c), Some(d)) = (ce, se, cp, sp) {
            // Tolerances: ±2.5 points on the error ratio (≈1,200 canary requests per window),
            // ±35% on P95 (histogram buckets are 50-100 ms wide there, with linear interpolation).
            if (a - 0.05).abs() < 0.025
                && (b - 0.005).abs() < 0.01
                && (c / 300.0 - 1.0).abs() < 0.35
                && (d / 120.0 - 1.0).abs() < 0.35
            {
                s.shutdown().await;
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    panic!(
        "values did not match within 60s: canary errors {ce:?} (want 0.05), stable errors {se:?} (0.005), canary P95 {cp:?} ms (300), stable P95 {sp:?} ms (120)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stopped_exporter_makes_the_target_down_and_series_stale() {
    assert!(
        rollout_sandbox::prometheus::which("prometheus").is_some(),
        "Prometheus is required: {}",
        rollout_sandbox::prometheus::INSTALL_HINT
    );
    let s = Sandbox::start(Config {
        rps: 100.0,
        ready_delay: Duration::from_millis(200),
        ..Config::default()
    })
    .await
    .expect("sandbox");
    let prom = s
        .prometheus
        .as_ref()
        .map(|p| p.url.clone())
        .expect("Prometheus started");
    let k = Kubectl::new(&s);
    k.ok(&["apply", "-f", "examples/kserve/sklearn-iris-v1.yaml"]);
    let up = || async { query(&prom, "up{job=\"rolloutctl-sandbox\"}").await };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while up().await != Some(1.0) {
        assert!(tokio::time::Instant::now() < deadline, "target never up");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s.set_faults(rollout_sandbox::Faults {
        exporter_down: true,
        ..Default::default()
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while up().await != Some(0.0) {
        assert!(tokio::time::Instant::now() < deadline, "target never down");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Series are marked stale at once: an instant query finds nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        query(&prom, "count(revision_app_request_count)").await,
        None
    );
    s.set_faults(rollout_sandbox::Faults::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while up().await != Some(1.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "target never back up"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s.shutdown().await;
}
