//! Whole rollouts: promotion writing only traffic to the InferenceService, a fast rollback, a
//! realistic 30 s evaluation interval with a second runner, restarts, replay.

use std::time::{Duration, Instant};

use kube::api::Api;
use serde_json::{Value, json};

use crate::world::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_healthy_canary_is_promoted_and_only_traffic_is_written_to_the_inferenceservice() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let before = w.obj().await;
    let writes_before = w.isvc_writes();
    let traffic = w.record_traffic();
    // Credentials by reference: the token must never appear in logs, events or status.
    let text = policy("", STEPS, "", ON).replace(
        "timeout = 2s",
        "timeout = 2s\n    token_env = \"PROM_TOKEN\"",
    );
    let p = w.policy_file(&text);
    let secret = "s3cret-e2e-token-0123456789";
    let mut r = w.run(&p, &[], &[("PROM_TOKEN", secret), ("RUST_LOG", "debug")]);
    assert_eq!(r.exit(120).await, 0, "promoted; stderr:\n{}", r.stderr());
    let after = w.obj().await;
    // The one write: canaryTrafficPercent, once per traffic change, nothing else.
    assert_eq!(
        before.metadata.annotations, after.metadata.annotations,
        "annotations untouched"
    );
    assert_eq!(
        before.metadata.labels, after.metadata.labels,
        "labels untouched"
    );
    assert_eq!(
        before.data["status"]["components"]["predictor"]["latestCreatedRevision"],
        after.data["status"]["components"]["predictor"]["latestCreatedRevision"],
        "no revision created"
    );
    assert_eq!(
        traffic.values(),
        vec![10, 25, 50, 100],
        "every step in order"
    );
    let writes = w.isvc_writes() - writes_before;
    eprintln!("E2E InferenceService writes during the rollout: {writes}");
    assert_eq!(
        writes, 3,
        "one write per traffic change (10 was set by the user)"
    );
    assert_eq!(
        after.data["status"]["components"]["predictor"]["latestRolledoutRevision"],
        V2
    );
    // The ModelRollout tells the story.
    let mr = w.rollout().await;
    let st = mr.status.clone().expect("status");
    assert_eq!(st.phase.as_deref(), Some("promoted"));
    assert_eq!(st.canary_revision.as_deref(), Some(V2));
    assert_eq!(st.stable_revision.as_deref(), Some(V1));
    assert_eq!(st.canary_model_uri.as_deref(), Some("gs://m/2"));
    assert_eq!(st.step_progress.as_deref(), Some("7/7"));
    assert!(
        st.start_time
            .as_deref()
            .is_some_and(|t| t.ends_with('Z') && t.contains('T')),
        "RFC 3339"
    );
    assert_eq!(st.history.len(), 1);
    assert_eq!(
        (
            st.history[0].outcome.as_str(),
            st.history[0].canary_revision.as_str()
        ),
        ("promoted", V2)
    );
    assert_eq!(
        st.condition("Progressing").map(|c| c.reason.as_str()),
        Some("Promoted")
    );
    assert_eq!(
        st.condition("Preflight").map(|c| c.status.as_str()),
        Some("True")
    );
    assert_eq!(st.observed_generation, mr.metadata.generation);
    assert!(
        mr.metadata
            .owner_references
            .as_ref()
            .is_some_and(|o| o[0].kind == "InferenceService")
    );
    // Every step in order in the decisions, with rule values.
    let ds = r.decisions();
    assert!(
        ds.iter()
            .any(|d| d["rules"][0]["verdict"] == "pass"
                && d["rules"][0]["when"][0]["lhs"].is_number())
    );
    // Events about the ModelRollout.
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(w.client.clone(), "kserve-test");
    let list = events.list(&Default::default()).await.expect("events");
    let reasons: Vec<String> = list.items.iter().filter_map(|e| e.reason.clone()).collect();
    for r in [
        "RolloutStarted",
        "TrafficShifted",
        "HoldPassed",
        "Promoting",
        "Promoted",
    ] {
        assert!(
            reasons.iter().any(|x| x == r),
            "no {r} event in {reasons:?}"
        );
    }
    assert!(list.items.iter().all(|e| {
        e.regarding
            .as_ref()
            .is_some_and(|g| g.kind.as_deref() == Some("ModelRollout"))
    }));
    // The token is nowhere.
    let all = format!(
        "{}{}{}{}",
        r.stderr(),
        serde_json::to_string(&ds).unwrap_or_default(),
        serde_json::to_string(
            &list
                .items
                .iter()
                .map(|e| e.note.clone())
                .collect::<Vec<_>>()
        )
        .unwrap_or_default(),
        serde_json::to_string(&mr).unwrap_or_default()
    );
    assert!(!all.contains(secret), "the token leaked");
    // A restart after the end reports the recorded outcome and changes nothing.
    let writes_done = w.isvc_writes();
    let mut again = w.run(&p, &[], &[("PROM_TOKEN", secret)]);
    assert_eq!(again.exit(30).await, 0);
    assert!(again.stderr().contains("promoted"), "{}", again.stderr());
    assert_eq!(w.isvc_writes(), writes_done);
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_5xx_regression_at_10_percent_is_rolled_back_fast_and_not_rolled_out_again_without_retry()
{
    let w = world(60.0).await;
    let p = w.policy_file(&policy("", STEPS, "", ON));
    let (mut r, breach) = w.failing_at_10_percent(&p, Duration::ZERO).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let rolled_back_at = loop {
        if w.sandbox
            .isvc("kserve-test", "sklearn-iris")
            .is_some_and(|o| o["spec"]["predictor"]["canaryTrafficPercent"] == 0)
        {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "no rollback within 30s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(r.exit(60).await, 3, "rolled back");
    let latency = rolled_back_at - breach;
    let ds = r.decisions();
    let first_fail = ds
        .iter()
        .position(|d| d["rules"][0]["verdict"] == "fail")
        .expect("a failing evaluation");
    let acted = ds
        .iter()
        .position(|d| d["rules"][0]["acted"] == true)
        .expect("the rule acted");
    assert_eq!(
        first_fail, acted,
        "with `failures 1` the first failing evaluation acts"
    );
    assert!(
        ds.iter().all(|d| d["traffic"].as_i64().unwrap_or(0) <= 10),
        "never above 10%"
    );
    eprintln!(
        "E2E breach -> rollback patch latency: {:.2}s",
        latency.as_secs_f64()
    );
    assert!(
        latency < Duration::from_secs(6),
        "breach to rollback took {:.2}s",
        latency.as_secs_f64()
    );
    // The same canary is never rolled out again by a new run...
    let writes = w.isvc_writes();
    let mut again = w.run(&p, &[], &[]);
    assert_eq!(again.exit(30).await, 3, "reports the recorded rollback");
    assert!(
        again.stderr().contains("rolloutctl retry"),
        "{}",
        again.stderr()
    );
    assert!(again.decisions().is_empty(), "nothing decided");
    assert_eq!(w.isvc_writes(), writes, "nothing written");
    // ...unless the user says retry (say, once the cause is fixed): attempt 2 starts at step 1.
    w.sandbox.set_revision(
        V2,
        &rollout_sandbox::RevisionControl {
            error_rate: Some(0.005),
            ..Default::default()
        },
    );
    // (The 5 s windows must first hold only requests of the fixed canary.)
    tokio::time::sleep(Duration::from_secs(6)).await;
    let out = w.rolloutctl(&["retry", "sklearn-iris"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("attempt 2"), "{}", text(&out));
    let traffic = w.record_traffic();
    let retried = w.run(&p, &[], &[]);
    retried
        .until(30, "10% again", |d| {
            d["traffic"] == 10 && d["to"] == "holding"
        })
        .await;
    assert_eq!(
        spec_percent(&w.obj().await),
        Some(10),
        "attempt 2 at step 1"
    );
    drop(traffic);
    let st = w.rollout().await.status.expect("status");
    assert_eq!(st.attempt, Some(2));
    assert_eq!(
        st.history.first().map(|h| (h.outcome.as_str(), h.attempt)),
        Some(("rolled_back", 1))
    );
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_20s_interval_the_lease_is_renewed_and_a_second_runner_never_acts() {
    lease_outlives_the_interval(20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_a_30s_interval_the_lease_is_renewed_and_a_second_runner_never_acts() {
    lease_outlives_the_interval(30).await;
}

/// An evaluation interval longer than the Lease (15 s): renewed by its own task meanwhile.
async fn lease_outlives_the_interval(secs: u32) {
    let w = world(40.0).await;
    w.canary(json!({})).await;
    let steps = format!("    traffic 10%\n    hold {}s\n    promote", secs - 1);
    let p = w.policy_file(
        &policy("", &steps, "    passes = 1\n", ON)
            .replace("interval = 1s", &format!("interval = {secs}s"))
            .replace("window = 5s", "window = 20s")
            .replace("stale_after = 5s", "stale_after = 40s"),
    );
    let traffic = w.record_traffic();
    let mut a = w.run(&p, &[], &[]);
    a.until(30, "the hold", to("holding")).await;
    // Refused at once without --wait; with --wait, it waits and never acts while `a` lives.
    // (A runner of another policy for the same InferenceService is refused too.)
    let other = w.policy_file(&policy("", STEPS, "", ON));
    let spec = w.rollout().await.spec;
    let mut b = w.run(&other, &[], &[]);
    assert_eq!(b.exit(30).await, 5);
    assert!(b.stderr().contains("another rolloutctl"), "{}", b.stderr());
    assert_eq!(
        w.rollout().await.spec,
        spec,
        "a refused runner does not write the ModelRollout"
    );
    let c = w.run(&p, &["--wait"], &[]);
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(w.client.clone(), "kserve-test");
    let renew = |l: &k8s_openapi::api::coordination::v1::Lease| {
        l.spec
            .as_ref()
            .and_then(|s| s.renew_time.clone())
            .map(|t| t.0)
    };
    let first = renew(&leases.get("rolloutctl-sklearn-iris").await.expect("lease"));
    tokio::time::sleep(Duration::from_secs(12)).await;
    let later = leases.get("rolloutctl-sklearn-iris").await.expect("lease");
    assert_ne!(
        renew(&later),
        first,
        "renewed during a 30 s wait between evaluations"
    );
    assert!(
        later
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.clone())
            .is_some_and(|h| !h.is_empty())
    );
    assert!(
        c.decisions().is_empty(),
        "the waiting runner decided nothing while the first lives"
    );
    assert_eq!(a.exit(90).await, 0, "promoted; stderr:\n{}", a.stderr());
    assert_eq!(traffic.values(), vec![10, 100]);
    // After the first released the Lease, the waiting runner reports the outcome, writes nothing.
    let mut c = c;
    assert_eq!(c.exit(30).await, 0, "{}", c.stderr());
    assert_eq!(traffic.values(), vec![10, 100]);
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_and_restarted_ten_times_it_never_repeats_or_skips_a_step() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let steps = "    traffic 10%\n    hold 8s\n    traffic 25%\n    hold 8s\n    traffic 50%\n    hold 8s\n    promote";
    let p = w.policy_file(&policy("", steps, "", ON));
    let traffic = w.record_traffic();
    let mut kills = 0;
    let code = loop {
        // The same identity, as a restarted pod: it takes its own Lease back at once.
        let mut r = w.run(&p, &["--holder", "e2e-restarts"], &[]);
        if kills < 10 {
            tokio::time::sleep(Duration::from_millis(800 + fastrand::u64(..2000))).await;
            if r.child.try_wait().expect("wait").is_none() {
                r.signal("KILL");
                let _ = r.child.wait();
                kills += 1;
                continue;
            }
        }
        break r.exit(180).await;
    };
    assert!(kills >= 10, "only {kills} kills");
    assert_eq!(code, 0, "promoted in the end");
    assert_eq!(
        traffic.values(),
        vec![10, 25, 50, 100],
        "traffic given in order, no step repeated or skipped"
    );
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaying_a_bad_canary_from_prometheus_history_gives_the_same_decisions() {
    let w = world(60.0).await;
    let p = w.policy_file(&policy("", STEPS, "", ON));
    let (mut r, _) = w.failing_at_10_percent(&p, Duration::from_secs(4)).await;
    assert_eq!(r.exit(60).await, 3, "rolled back live");
    let live = r.decisions();
    let from = live
        .first()
        .and_then(|d| d["at"].as_u64())
        .expect("first decision");
    let live_rb = live
        .iter()
        .find(|d| d["action"] == "rollback")
        .and_then(|d| d["at"].as_u64())
        .expect("live rollback");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The revisions come from the ModelRollout's status.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rolloutctl"))
        .arg("replay")
        .arg(&p)
        .args([
            "--from",
            &format!("{:.3}", from as f64 / 1000.0),
            "--to",
            &format!("{:.3}", (live_rb + 10_000) as f64 / 1000.0),
        ])
        .args(["--prometheus-url", &w.prom, "--output", "json"])
        .arg("--kubeconfig")
        .arg(&w.sandbox.kubeconfig)
        .output()
        .expect("replay");
    assert_eq!(
        out.status.code(),
        Some(3),
        "replay rolls back too: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replayed: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let replay_rb = replayed
        .iter()
        .find(|d| d["action"] == "rollback")
        .and_then(|d| d["at"].as_u64())
        .expect("replay rollback");
    let diff = replay_rb.abs_diff(live_rb);
    eprintln!("REPLAY live rollback vs replayed rollback: {diff} ms apart");
    // Replay reads range-query samples at 1 s steps and ticks on its own clock.
    assert!(
        diff <= 3_000,
        "live rolled back at {live_rb}, replay at {replay_rb}"
    );
    let (mut same, mut total) = (0, 0);
    for d in live.iter().filter(|d| d["evaluated"] == true) {
        let at = d["at"].as_u64().unwrap_or(0);
        if let Some(e) = replayed
            .iter()
            .filter(|e| e["evaluated"] == true)
            .min_by_key(|e| e["at"].as_u64().unwrap_or(0).abs_diff(at))
            && e["at"].as_u64().unwrap_or(0).abs_diff(at) <= 1_000
        {
            total += 1;
            same += usize::from(e["rules"][0]["verdict"] == d["rules"][0]["verdict"]);
        }
    }
    eprintln!("REPLAY verdicts agreeing: {same} of {total}");
    assert!(
        total >= 4 && same * 10 >= total * 7,
        "only {same} of {total} verdicts agree"
    );
    w.sandbox.shutdown().await;
}
