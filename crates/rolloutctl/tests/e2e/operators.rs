//! What operators do to a rollout from another process: approve, pause, resume, abort (also
//! with no runner alive), policy edits, revisions made outside the InferenceService, signals.

use std::time::Duration;

use serde_json::json;

use crate::world::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approval_gate_waits_for_rolloutctl_approve() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let p = w.policy_file(&policy(
        "",
        "    traffic 10%\n    hold 4s\n    approval\n    promote",
        "",
        ON,
    ));
    let mut r = w.run(&p, &[], &[]);
    r.until(30, "the gate", to("awaiting_approval")).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(r.child.try_wait().expect("wait").is_none(), "still waiting");
    assert_eq!(spec_percent(&w.obj().await), Some(10));
    let status = w.rolloutctl(&["status", "sklearn-iris"]);
    assert!(
        text(&status).contains("awaiting_approval") && text(&status).contains("holds the Lease"),
        "{}",
        text(&status)
    );
    let out = w.rolloutctl(&["approve", "sklearn-iris"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("approved step 3"), "{}", text(&out));
    assert_eq!(r.exit(30).await, 0, "promoted after approval");
    // The intent is in the spec, named for this canary, attempt and step.
    let mr = w.rollout().await;
    assert_eq!(mr.spec.approvals.len(), 1);
    assert_eq!(
        (
            mr.spec.approvals[0].revision.as_str(),
            mr.spec.approvals[0].attempt,
            mr.spec.approvals[0].step
        ),
        (V2, 1, 3)
    );
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_latency_regression_pauses_and_resume_and_abort_work_from_another_process() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let slower = "  rule CanarySlower {\n    when canary.latency_p95 > 2 * stable.latency_p95\n    require canary.requests >= 5\n    action pause\n  }\n";
    let p = w.policy_file(&policy(slower, STEPS, "", ON));
    let mut r = w.run(&p, &[], &[]);
    r.until(30, "the 10% hold", |d| d["to"] == "holding").await;
    w.sandbox.set_revision(
        V2,
        &rollout_sandbox::RevisionControl {
            latency_p50_ms: Some(400.0),
            latency_p95_ms: Some(900.0),
            ..Default::default()
        },
    );
    r.until(30, "a pause", to("paused")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = w.rollout().await.status.expect("status");
    assert_eq!(st.phase.as_deref(), Some("paused"));
    let paused = st.condition("Paused").expect("Paused condition");
    assert_eq!(
        (paused.status.as_str(), paused.reason.as_str()),
        ("True", "Rule")
    );
    assert!(
        paused.message.contains("rolloutctl resume"),
        "{}",
        paused.message
    );
    // Fixed; resume from another process.
    w.sandbox.set_revision(
        V2,
        &rollout_sandbox::RevisionControl {
            latency_p50_ms: Some(40.0),
            latency_p95_ms: Some(120.0),
            ..Default::default()
        },
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    let out = w.rolloutctl(&["resume", "sklearn-iris"]);
    assert!(
        out.status.success() && text(&out).contains("resumed the pause"),
        "{}",
        text(&out)
    );
    r.until(20, "resumed", |d| {
        d["from"] == "paused" && d["to"] != "paused"
    })
    .await;
    // Then abort from another process: rolled back, exit code 4.
    assert!(w.rolloutctl(&["abort", "sklearn-iris"]).status.success());
    assert_eq!(r.exit(30).await, 4, "aborted");
    assert_eq!(spec_percent(&w.obj().await), Some(0));
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn abort_with_no_runner_alive_rolls_back_itself_and_says_so() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let p = w.policy_file(&policy("", STEPS, "", ON));
    let r = w.run(&p, &[], &[]);
    r.until(40, "the 25% hold", |d| {
        d["to"] == "holding" && d["traffic"] == 25
    })
    .await;
    r.signal("KILL");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        spec_percent(&w.obj().await),
        Some(25),
        "the bad canary keeps its traffic with no runner"
    );
    // The Lease of the killed runner is still live: wait for it to expire (15 s), as an
    // operator would find it a while later.
    tokio::time::sleep(Duration::from_secs(16)).await;
    let status = w.rolloutctl(&["status", "sklearn-iris"]);
    assert!(
        text(&status).contains("no runner holds the Lease"),
        "{}",
        text(&status)
    );
    let out = w.rolloutctl(&["abort", "sklearn-iris"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("rolls back itself")
            && text(&out).contains("rolled back by this command"),
        "{}",
        text(&out)
    );
    assert_eq!(spec_percent(&w.obj().await), Some(0));
    let st = w.rollout().await.status.expect("status");
    assert_eq!(st.phase.as_deref(), Some("rolled_back"));
    assert_eq!(
        st.history.last().map(|h| h.outcome.as_str()),
        Some("aborted")
    );
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policy_edits_are_compared_by_meaning_and_an_earlier_step_change_pauses() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let steps = "    traffic 10%\n    hold 6s\n    traffic 25%\n    hold 20s\n    traffic 50%\n    hold 4s\n    promote";
    let original = policy("", steps, "", ON);
    let p = w.policy_file(&original);
    let traffic = w.record_traffic();
    let r = w.run(&p, &["--holder", "e2e-edits"], &[]);
    r.until(40, "the 25% hold", |d| {
        d["to"] == "holding" && d["traffic"] == 25
    })
    .await;
    r.signal("KILL");
    drop(r);
    // A comment and reformatting: the same rollout continues at the same step.
    std::fs::write(
        &p,
        format!(
            "# reviewed by the ML platform team\n{}",
            original.replace("    ", "  ")
        ),
    )
    .expect("write");
    let r = w.run(&p, &["--holder", "e2e-edits"], &[]);
    r.until(20, "resumed at the 25% hold", |d| {
        d["traffic"] == 25 && d["to"] == "holding"
    })
    .await;
    assert_eq!(traffic.values(), vec![10, 25], "not restarted");
    r.signal("KILL");
    drop(r);
    // An earlier step changed: the rollout pauses, with a condition that says how to go on.
    std::fs::write(&p, original.replace("traffic 10%", "traffic 5%")).expect("write");
    let mut r = w.run(&p, &["--holder", "e2e-edits"], &[]);
    r.until(20, "a pause", to("paused")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = w.rollout().await.status.expect("status");
    let c = st.condition("Paused").expect("Paused");
    assert_eq!(c.reason, "PolicyChanged", "{c:?}");
    assert!(
        c.message.contains("step 1 changed") && c.message.contains("rolloutctl resume"),
        "{}",
        c.message
    );
    assert_eq!(
        spec_percent(&w.obj().await),
        Some(25),
        "traffic stays where it is"
    );
    // Resume: the same step number (4, a hold) of the new policy, then on to the end.
    assert!(w.rolloutctl(&["resume", "sklearn-iris"]).status.success());
    assert_eq!(r.exit(90).await, 0, "promoted; {}", r.stderr());
    assert_eq!(traffic.values(), vec![10, 25, 50, 100]);
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revision_made_outside_the_inferenceservice_pauses_and_resume_judges_it() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let steps = "    traffic 10%\n    hold 10s\n    traffic 25%\n    hold 4s\n    promote";
    let p = w.policy_file(&policy("", steps, "", ON));
    let mut r = w.run(&p, &[], &[]);
    r.until(30, "the 10% hold", |d| {
        d["to"] == "holding" && d["traffic"] == 10
    })
    .await;
    // A ServingRuntime or KServe configuration change: revision 00003 takes the canary's share.
    assert!(w.sandbox.retemplate("kserve-test", "sklearn-iris"));
    r.until(20, "a pause", to("paused")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let st = w.rollout().await.status.expect("status");
    let c = st.condition("Paused").expect("Paused");
    assert_eq!(c.reason, "RevisionChanged");
    assert!(
        c.message.contains("sklearn-iris-predictor-00003")
            && c.message.contains("has not been measured"),
        "{}",
        c.message
    );
    assert_eq!(
        spec_percent(&w.obj().await),
        Some(10),
        "neither rolled back nor advanced"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(w.rolloutctl(&["resume", "sklearn-iris"]).status.success());
    assert_eq!(r.exit(60).await, 0, "promoted; {}", r.stderr());
    let st = w.rollout().await.status.expect("status");
    assert_eq!(
        st.canary_revision.as_deref(),
        Some("sklearn-iris-predictor-00003"),
        "the new revision was judged and promoted"
    );
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_and_sigint_persist_the_state_release_the_lease_and_exit_143_and_130() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let p = w.policy_file(&policy("", STEPS, "", ON));
    let mut r = w.run(&p, &[], &[]);
    r.until(30, "the 10% hold", |d| d["to"] == "holding").await;
    // A runner waiting for the Lease stops on SIGTERM too, having decided nothing.
    let mut waiting = w.run(&p, &["--wait"], &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    waiting.signal("TERM");
    assert_eq!(waiting.exit(20).await, 143, "{}", waiting.stderr());
    assert!(waiting.decisions().is_empty());
    r.signal("TERM");
    assert_eq!(r.exit(20).await, 143, "{}", r.stderr());
    assert!(r.stderr().contains("Lease is released"), "{}", r.stderr());
    let status = w.rolloutctl(&["status", "sklearn-iris"]);
    assert!(
        text(&status).contains("no runner holds the Lease"),
        "{}",
        text(&status)
    );
    // Another runner takes over at once; SIGINT stops it the same way, with 130.
    let mut next = w.run(&p, &[], &[]);
    next.until(30, "a hold", |d| d["to"] == "holding").await;
    next.signal("INT");
    assert_eq!(next.exit(20).await, 130, "{}", next.stderr());
    assert!(
        next.stderr().contains("Lease is released"),
        "{}",
        next.stderr()
    );
    let st = w.rollout().await.status.expect("status");
    assert!(st.state.is_some(), "the state was persisted");
    // A third takes over at once and finishes.
    let mut last = w.run(&p, &[], &[]);
    assert_eq!(last.exit(90).await, 0, "{}", last.stderr());
    w.sandbox.shutdown().await;
}
