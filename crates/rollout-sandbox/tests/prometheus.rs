//! The sandbox scraped by a real Prometheus (the Debian package). Fails loudly when Prometheus is
//! not installed: `scripts/test` installs it.

mod common;

use std::time::Duration;

use common::*;
use rollout_sandbox::exporter::Stack;
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

/// One stack's queries, written from the upstream shape (not from rolloutctl's presets): the
/// 5xx share and the P95 in ms of revision `rev` over 30 s.
fn queries(stack: Stack, rev: &str) -> (String, String) {
    let join = format!(
        r#" * on (job, instance) group_left (kn_revision_name) target_info{{k8s_namespace_name="kserve-test",kn_revision_name="{rev}"}}"#
    );
    let otel = |family: &str, sel: &str, join: &str| {
        let s = |extra: &str| {
            let m = [sel, extra]
                .iter()
                .filter(|x| !x.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join(",");
            if m.is_empty() {
                String::new()
            } else {
                format!("{{{m}}}")
            }
        };
        (
            format!(
                r#"sum(rate({family}_count{}[30s]){join}) / sum(rate({family}_count{}[30s]){join})"#,
                s(r#"http_response_status_code=~"5..""#),
                s("")
            ),
            format!(
                "histogram_quantile(0.95, sum by (le) (rate({family}_bucket{}[30s]){join})) * 1000",
                s("")
            ),
        )
    };
    match stack {
        Stack::Knative121 => otel("kn_serving_invocation_duration_seconds", "", &join),
        Stack::Knative119 => otel("kn_queueproxy_app_duration_seconds", "", &join),
        Stack::Knative121Otlp => otel(
            "kn_serving_invocation_duration_seconds",
            &format!(r#"k8s_namespace_name="kserve-test",kn_revision_name="{rev}""#),
            "",
        ),
        Stack::Knative118 => {
            let sel = format!(r#"namespace_name="kserve-test",revision_name="{rev}""#);
            (
                format!(
                    r#"sum(rate(revision_app_request_count{{{sel},response_code_class="5xx"}}[30s])) / sum(rate(revision_app_request_count{{{sel}}}[30s]))"#
                ),
                format!(
                    "histogram_quantile(0.95, sum by (le) (rate(revision_app_request_latencies_bucket{{{sel}}}[30s])))"
                ),
            )
        }
        Stack::Istio => {
            let sel = format!(
                r#"reporter="destination",destination_workload_namespace="kserve-test",destination_workload="{rev}-deployment""#
            );
            (
                format!(
                    r#"sum(rate(istio_requests_total{{{sel},response_code=~"5.."}}[30s])) / sum(rate(istio_requests_total{{{sel}}}[30s]))"#
                ),
                format!(
                    "histogram_quantile(0.95, sum by (le) (rate(istio_request_duration_milliseconds_bucket{{{sel}}}[30s])))"
                ),
            )
        }
    }
}

/// The bucket of `stack` that holds `ms`: the P95 Prometheus interpolates lies in it.
fn bucket_around(stack: Stack, ms: f64) -> (f64, f64) {
    let b = stack.bounds_ms();
    let hi = b.iter().position(|x| *x >= ms).unwrap_or(b.len() - 1);
    (if hi == 0 { 0.0 } else { b[hi - 1] }, b[hi])
}

/// One stack: v1 at 0.5% errors and P95 120 ms, v2 at 10% with 5% errors and P95 300 ms.
/// Counted analytically (five sandboxes and Prometheis share two cores; that the analytic
/// counters are what sampling converges to is `dataplane`'s unit test).
async fn stack_matches_the_configured_behaviour(stack: Stack) -> Result<(), String> {
    let s = Sandbox::start(Config {
        rps: 300.0,
        ready_delay: Duration::from_millis(200),
        analytic: true,
        tick: Duration::from_millis(500),
        metrics: stack,
        ..Config::default()
    })
    .await
    .map_err(|e| format!("sandbox: {e}"))?;
    let prom = s
        .prometheus
        .as_ref()
        .map(|p| p.url.clone())
        .ok_or_else(|| format!("Prometheus did not start: {:?}", s.prometheus_note))?;
    let k = Kubectl::new(&s);
    // kubectl blocks: off the worker, whose queued tasks (the API server's) would otherwise
    // wait for it.
    let kubectl = |args: &[&str]| tokio::task::block_in_place(|| k.ok(args));
    kubectl(&["apply", "-f", "examples/kserve/sklearn-iris-v1.yaml"]);
    kubectl(&[
        "wait",
        "--for=condition=Ready",
        "isvc/sklearn-iris",
        "--timeout=20s",
    ]);
    let v2 = std::fs::read_to_string(root().join("examples/kserve/sklearn-iris-v2.yaml"))
        .expect("v2")
        .replace("error-rate: \"0.5%\"", "error-rate: \"5%\"\n    sandbox.rolloutctl.io/latency-p50-ms: \"80\"\n    sandbox.rolloutctl.io/latency-p95-ms: \"300\"");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("v2.yaml");
    std::fs::write(&path, v2).expect("write");
    kubectl(&["apply", "-f", path.to_str().expect("path")]);
    let (canary, stable) = (
        "sklearn-iris-predictor-00002",
        "sklearn-iris-predictor-00001",
    );
    let (ce_q, cp_q) = queries(stack, canary);
    let (se_q, sp_q) = queries(stack, stable);
    // Whole seconds (Knative 1.19.0-1.19.7, 1.20.0): every request under a second is 0 s, so
    // the P95 is in the first bucket.
    let (c_lo, c_hi, s_lo, s_hi) = if stack == Stack::Knative119 {
        let b = bucket_around(stack, 0.0);
        (b.0, b.1, b.0, b.1)
    } else {
        let c = bucket_around(stack, 300.0);
        let s = bucket_around(stack, 120.0);
        (c.0, c.1, s.0, s.1)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(70);
    tokio::time::sleep(Duration::from_secs(32)).await;
    let (mut ce, mut se, mut cp, mut sp) = (None, None, None, None);
    while tokio::time::Instant::now() < deadline {
        ce = query(&prom, &ce_q).await;
        se = query(&prom, &se_q).await;
        cp = query(&prom, &cp_q).await;
        sp = query(&prom, &sp_q).await;
        if let (Some(a), Some(b), Some(c), Some(d)) = (ce, se, cp, sp) {
            // ±2.5 points on the canary's error ratio (≈900 canary requests per window).
            if (a - 0.05).abs() < 0.025
                && (b - 0.005).abs() < 0.01
                && (c_lo..=c_hi).contains(&c)
                && (s_lo..=s_hi).contains(&d)
            {
                s.shutdown().await;
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    s.shutdown().await;
    Err(format!(
        "{}: values did not match within 70s: canary errors {ce:?} (want 0.05), stable errors {se:?} (0.005), canary P95 {cp:?} ms (in {c_lo}..{c_hi}), stable P95 {sp:?} ms (in {s_lo}..{s_hi})\n  {ce_q}\n  {cp_q}",
        stack.name()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_revision_error_rate_and_p95_match_the_configured_behaviour_in_every_stack() {
    assert!(
        rollout_sandbox::prometheus::which("prometheus").is_some(),
        "Prometheus is required for this test: {}",
        rollout_sandbox::prometheus::INSTALL_HINT
    );
    let runs = rollout_sandbox::exporter::STACK_NAMES
        .iter()
        .filter_map(|n| Stack::parse(n))
        .map(|stack| tokio::spawn(stack_matches_the_configured_behaviour(stack)));
    let mut failed = Vec::new();
    for r in futures_join(runs.collect()).await {
        if let Err(e) = r {
            failed.push(e);
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

async fn futures_join(
    handles: Vec<tokio::task::JoinHandle<Result<(), String>>>,
) -> Vec<Result<(), String>> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap_or_else(|e| Err(format!("task: {e}"))));
    }
    out
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
        query(&prom, "count(kn_serving_invocation_duration_seconds_count)").await,
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
