//! Each serving stack's metrics, as the sandbox exports them after the upstream code: the
//! preset made for a stack promotes a healthy canary and rolls back a slow one on it, and a
//! preset pointed at another stack is refused at preflight, before any traffic moves, with the
//! preset that would match named (by the runner and by `rolloutctl doctor`).

use std::time::Duration;

use rollout_sandbox::exporter::Stack;
use serde_json::json;

use crate::world::*;

/// The e2e policy on `preset`, with a latency rule (seconds on Knative ≥ 1.19, ms elsewhere:
/// the threshold is a duration either way).
pub fn policy_on(preset: &str) -> String {
    policy(
        "  rule Slow {\n    when canary.latency_p95 > 2 * stable.latency_p95 and canary.latency_p95 > 500ms\n    require canary.requests >= 5\n    for 2s\n    action rollback\n  }\n",
        STEPS,
        "",
        ON,
    )
    .replace("  use knative\n", &format!("  use {preset}\n"))
}

async fn healthy_then_slow(stack: Stack, preset: &str) {
    let w = world_on(60.0, stack).await;
    w.canary(json!({})).await;
    let p = w.policy_file(&policy_on(preset));
    let mut r = w.run(&p, &[], &[]);
    assert_eq!(
        r.exit(120).await,
        0,
        "{preset} on {}: healthy promoted\n{}",
        stack.name(),
        r.stderr()
    );
    w.sandbox.shutdown().await;

    let w = world_on(60.0, stack).await;
    w.canary(json!({"sandbox.rolloutctl.io/latency-p50-ms": "1500", "sandbox.rolloutctl.io/latency-p95-ms": "3000"}))
        .await;
    let p = w.policy_file(&policy_on(preset));
    let mut r = w.run(&p, &[], &[]);
    assert_eq!(
        r.exit(120).await,
        3,
        "{preset} on {}: slow rolled back\n{}",
        stack.name(),
        r.stderr()
    );
    let slow = r.decisions().iter().any(|d| {
        d["rules"].as_array().is_some_and(|rs| {
            rs.iter()
                .any(|x| x["rule"] == "Slow" && x["verdict"] == "fail")
        })
    });
    assert!(slow, "the latency rule judged it:\n{}", r.stderr());
    assert_eq!(spec_percent(&w.obj().await), Some(0));
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn knative_1_18_metrics_promote_a_healthy_canary_and_roll_back_a_slow_one() {
    healthy_then_slow(Stack::Knative118, "knative_1_18").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn otlp_pushed_knative_metrics_promote_a_healthy_canary_and_roll_back_a_slow_one() {
    healthy_then_slow(Stack::Knative121Otlp, "knative_otlp").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn knative_1_21_metrics_roll_back_a_slow_canary_on_seconds() {
    // The default stack; healthy promotion and 5xx rollbacks on it are in `rollouts`.
    let w = world(60.0).await;
    w.canary(json!({"sandbox.rolloutctl.io/latency-p50-ms": "1500", "sandbox.rolloutctl.io/latency-p95-ms": "3000"}))
        .await;
    let p = w.policy_file(&policy_on("knative"));
    let mut r = w.run(&p, &[], &[]);
    assert_eq!(r.exit(120).await, 3, "slow rolled back\n{}", r.stderr());
    w.sandbox.shutdown().await;
}

/// A canary at 0% (as a user leaves it for rolloutctl), and a policy on `preset`, which does not
/// match the sandbox's `stack`: refused before any traffic moves, naming `want`.
async fn refused(stack: Stack, preset: &str, want: &str) {
    let w = world_on(60.0, stack).await;
    w.apply(isvc_obj("gs://m/1", None, json!({}))).await;
    w.wait_settled(100).await;
    w.apply(isvc_obj("gs://m/2", Some(0), json!({}))).await;
    w.wait_settled(0).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let p = w.policy_file(&policy_on(preset));
    // rolloutctl doctor says the same, and changes nothing.
    let writes = w.isvc_writes();
    let (code, out) = w.doctor(&p);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("`use {want}`")) && out.contains("error"),
        "{out}"
    );
    let mut r = w.run(&p, &[], &[]);
    assert_eq!(r.exit(30).await, 5, "{}", r.stderr());
    let err = r.stderr();
    assert!(
        err.contains("preflight refused") && err.contains(&format!("`use {want}`")),
        "{preset} on {}: {err}",
        stack.name()
    );
    assert_eq!(w.isvc_writes(), writes, "no traffic moved");
    assert_eq!(spec_percent(&w.obj().await), Some(0));
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_preset_for_another_stack_is_refused_at_preflight_with_the_preset_that_matches() {
    // The old names on the Knative KServe installs today, and the other way round.
    refused(Stack::Knative121, "knative_1_18", "knative").await;
    refused(Stack::Knative118, "knative", "knative_1_18").await;
}
