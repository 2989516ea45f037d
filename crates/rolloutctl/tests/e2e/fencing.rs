//! Fencing and state: a stale runner never acts, a corrupt stored state is never acted on,
//! conflict storms back off, traffic set by someone else is restored at once, and an outage
//! breaks a run of passing evaluations.

use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use rollout_api::ModelRollout;
use serde_json::json;

use crate::world::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_runner_stopped_past_its_lease_never_writes_after_another_finished() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let p = w.policy_file(&policy("", STEPS, "", ON));
    let traffic = w.record_traffic();
    let mut stale = w.run(&p, &["--holder", "e2e-stale"], &[]);
    stale
        .until(30, "the 10% hold", |d| {
            d["to"] == "holding" && d["traffic"] == 10
        })
        .await;
    stale.signal("STOP");
    // The second runner waits out the stopped one's Lease (15 s), then finishes the rollout.
    let mut fresh = w.run(&p, &["--wait", "--holder", "e2e-fresh"], &[]);
    assert_eq!(fresh.exit(120).await, 0, "{}", fresh.stderr());
    assert_eq!(traffic.values(), vec![10, 25, 50, 100]);
    let writes = w.isvc_writes();
    // The stale runner wakes with its in-memory state of the 10% hold and a Lease it can take
    // again (the other released it): it must read the rollout again and write nothing.
    stale.signal("CONT");
    let code = stale.exit(60).await;
    let err = stale.stderr();
    assert!(
        code == 0 || code == 5,
        "reports the recorded promotion or the lost Lease, got {code}:\n{err}"
    );
    assert_eq!(w.isvc_writes(), writes, "no write after waking:\n{err}");
    assert_eq!(traffic.values(), vec![10, 25, 50, 100], "{err}");
    let st = w.rollout().await.status.expect("status");
    assert_eq!(st.phase.as_deref(), Some("promoted"), "{err}");
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_or_out_of_range_stored_state_stops_and_leaves_traffic_where_it_is() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let p = w.policy_file(&policy("", STEPS, "", ON));
    let mut r = w.run(&p, &["--holder", "e2e-corrupt"], &[]);
    r.until(40, "the 25% hold", |d| {
        d["to"] == "holding" && d["traffic"] == 25
    })
    .await;
    r.signal("KILL");
    let _ = r.exit(10).await;
    let api: Api<ModelRollout> = Api::namespaced(w.client.clone(), "kserve-test");
    let corruptions = [
        json!({"status": {"state": {"step": 99}}}),
        // (Not a string: the CRD's schema refuses one with a 422, as a real API server does.)
        json!({"status": {"state": {"phase": {"no_such_phase": 1}, "step": "x"}}}),
    ];
    for bad in corruptions {
        api.patch_status(
            "sklearn-iris",
            &PatchParams::default(),
            &Patch::Merge(bad.clone()),
        )
        .await
        .expect("patch status");
        let writes = w.isvc_writes();
        let mut again = w.run(&p, &["--holder", "e2e-corrupt"], &[]);
        assert_eq!(again.exit(30).await, 5, "{bad}: {}", again.stderr());
        let err = again.stderr();
        assert!(
            err.contains("stored state")
                && err.contains("invalid")
                && err.contains("rolloutctl retry"),
            "{bad}: {err}"
        );
        assert_eq!(w.isvc_writes(), writes, "{bad}: nothing written");
        assert_eq!(spec_percent(&w.obj().await), Some(25), "{bad}");
        let st = w.rollout().await.status.expect("status");
        assert!(
            st.conditions
                .iter()
                .any(|c| c.reason == "InvalidState" && c.status == "False"),
            "{bad}: {:?}",
            st.conditions
        );
    }
    // Only an explicit retry starts over, from step 1.
    let out = w.rolloutctl(&["retry", "sklearn-iris"]);
    assert!(out.status.success(), "{}", text(&out));
    let retried = w.run(&p, &["--holder", "e2e-corrupt"], &[]);
    retried
        .until(30, "10% again", |d| {
            d["to"] == "holding" && d["traffic"] == 10
        })
        .await;
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_conflict_storm_backs_off_and_reuses_its_measurements() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let p = w.policy_file(&policy("", STEPS, "", ON));
    let traffic = w.record_traffic();
    let mut r = w.run(&p, &[], &[]);
    r.until(30, "the 10% hold", |d| {
        d["to"] == "holding" && d["traffic"] == 10
    })
    .await;
    let queries_before = prometheus_queries(&w.prom).await;
    let decisions_before = r.decisions().len();
    // Every status write of the rollout is refused with 409 for 10 s.
    w.sandbox.set_faults(rollout_sandbox::Faults {
        fail_next: 20_000,
        fail_code: 409,
        fail_path: Some("modelrollouts/sklearn-iris/status".into()),
        ..Default::default()
    });
    let storm = Instant::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let conflicts = w.sandbox.failed();
    w.sandbox.set_faults(rollout_sandbox::Faults::default());
    let secs = storm.elapsed().as_secs_f64();
    let queries = prometheus_queries(&w.prom).await - queries_before;
    let decisions = r.decisions().len() - decisions_before;
    eprintln!(
        "E2E conflict storm over {secs:.1}s: {conflicts} status writes refused ({:.1}/s), {queries} Prometheus queries ({:.1}/s), {decisions} decisions ({:.1}/s)",
        conflicts as f64 / secs,
        queries as f64 / secs,
        decisions as f64 / secs
    );
    assert!(conflicts >= 3, "the storm was met ({conflicts})");
    assert!(
        (conflicts as f64) / secs <= 5.0,
        "{conflicts} writes in {secs:.1}s"
    );
    assert!(
        (queries as f64) / secs <= 10.0,
        "{queries} queries in {secs:.1}s"
    );
    assert!(
        (decisions as f64) / secs <= 5.0,
        "{decisions} decisions in {secs:.1}s"
    );
    assert_eq!(
        r.exit(90).await,
        0,
        "promoted after the storm; {}",
        r.stderr()
    );
    assert_eq!(traffic.values(), vec![10, 25, 50, 100]);
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn traffic_set_out_of_band_is_restored_at_once_and_the_event_names_the_writer() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let steps = "    traffic 10%\n    hold 20s\n    traffic 25%\n    hold 6s\n    promote";
    let p = w.policy_file(&policy("", steps, "", ON));
    let traffic = w.record_traffic();
    let mut r = w.run(&p, &[], &[]);
    r.until(30, "the 10% hold", |d| {
        d["to"] == "holding" && d["traffic"] == 10
    })
    .await;
    // Reads follow the watch and the engine's wake-ups: about one per evaluation.
    let quiet = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let reads = w
        .sandbox
        .requests_since(quiet)
        .iter()
        .filter(|q| {
            q.method == "GET" && !q.watch && q.path.ends_with("inferenceservices/sklearn-iris")
        })
        .count();
    let per_s = reads as f64 / quiet.elapsed().as_secs_f64();
    eprintln!("E2E InferenceService reads during a hold: {per_s:.1}/s");
    assert!(per_s <= 4.0, "{reads} reads in 4 s");
    // Someone sets the unjudged canary to 100%.
    let restored = w.set_by_hand_until_restored("ops-by-hand", 100, 10).await;
    eprintln!(
        "E2E out-of-band 100% restored to 10% in {:.2}s",
        restored.as_secs_f64()
    );
    assert!(restored < Duration::from_secs(3), "{restored:?}");
    let note = w.out_of_band_note().await;
    assert!(
        note.contains("ops-by-hand") && note.contains("100") && note.contains("10%"),
        "{note}"
    );
    assert_eq!(r.exit(90).await, 0, "{}", r.stderr());
    assert_eq!(traffic.values(), vec![10, 100, 10, 25, 100]);
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn passing_evaluations_on_both_sides_of_an_outage_are_not_consecutive() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let steps = "    traffic 10%\n    hold 3s\n    promote";
    let p = w.policy_file(&policy("", steps, "    passes = 3\n", ON));
    let mut r = w.run(&p, &[], &[]);
    r.until(30, "two passing evaluations", |d| {
        d["traffic"] == 10 && d["passes"] == 2
    })
    .await;
    // Every request to the InferenceService fails for 6 s: no evaluation can be made.
    w.sandbox.set_faults(rollout_sandbox::Faults {
        fail_next: 1_000_000,
        fail_code: 500,
        fail_path: Some("inferenceservices/sklearn-iris".into()),
        ..Default::default()
    });
    tokio::time::sleep(Duration::from_secs(6)).await;
    let before = r.decisions().len();
    w.sandbox.set_faults(rollout_sandbox::Faults::default());
    assert_eq!(r.exit(60).await, 0, "{}", r.stderr());
    let after: Vec<_> = r.decisions().into_iter().skip(before).collect();
    let first = after
        .iter()
        .find(|d| d["evaluated"] == true)
        .expect("an evaluation after the outage");
    assert_eq!(
        first["passes"], 1,
        "the run of passes starts over after the outage: {first}"
    );
    w.sandbox.shutdown().await;
}
