//! `rolloutctl controller`: many rollouts in one process, leader election with a standby
//! replica, `rolloutctl apply`, the operator verbs against it, and never two drivers for one
//! rollout (a `run` and the controller).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::json;

use crate::world::*;

/// The policy of `STEPS` for the InferenceService `name`, with `extra_rules`.
fn policy_for(name: &str, extra_rules: &str, steps: &str) -> String {
    policy(extra_rules, steps, "", ON)
        .replace("name = \"sklearn-iris\"", &format!("name = \"{name}\""))
}

/// Slow: a p95 of three times the stable's and above 1 s (the slow canaries here have 2 s).
/// A p95 from a few dozen requests is noisy: a healthy canary's measured 0.26-0.31 s against
/// the stable's 0.13 s here, so a bare ratio would roll healthy canaries back by chance.
const SLOW_RULE: &str = "\n  rule Slow {\n    when canary.latency_p95 > 3 * stable.latency_p95 and canary.latency_p95 > 1s\n    require canary.requests >= 10\n    action rollback\n  }\n";

/// Who holds the leader Lease now.
async fn leader(w: &World) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(w.client.clone(), "kserve-test");
    leases
        .get_opt("rolloutctl-controller")
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

/// Waits for `phase` like [`World::until_phase`]; on a timeout, says what the controllers
/// decided for that rollout.
async fn until_phase_explained(w: &World, name: &str, phase: &str, secs: u64, cs: &[&Runner]) {
    let api: Api<rollout_api::ModelRollout> = Api::namespaced(w.client.clone(), "kserve-test");
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got = api
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|m| m.status)
            .and_then(|s| s.phase);
        if got.as_deref() == Some(phase) {
            return;
        }
        if Instant::now() > deadline {
            let key = format!("kserve-test/{name}");
            let said: Vec<String> = cs
                .iter()
                .flat_map(|c| c.decisions())
                .filter(|d| d["rollout"] == key.as_str())
                .map(|d| d.to_string())
                .collect();
            let tail = &said[said.len().saturating_sub(4)..];
            panic!(
                "{name} not {phase} within {secs}s (now {got:?}); last decisions:\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The metrics address a controller printed.
async fn metrics_url(c: &Runner) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let err = c.stderr();
        let url = err
            .lines()
            .find(|l| l.starts_with("serving /metrics"))
            .and_then(|l| l.split_whitespace().last());
        if let Some(url) = url {
            return url.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no metrics address: {}",
            c.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn apply(w: &World, paths: &[&std::path::Path], extra: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rolloutctl"));
    cmd.arg("apply")
        .args(paths)
        .args(extra)
        .arg("--kubeconfig")
        .arg(&w.sandbox.kubeconfig);
    cmd.output().expect("rolloutctl apply")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_controller_drives_ten_rollouts_at_once_healthy_bad_slow_and_waiting_for_approval() {
    let w = world(30.0).await;
    // Ten InferenceServices: four healthy, two failing, two slow, two behind an approval gate.
    let kinds: Vec<(String, &str)> = (0..10)
        .map(|i| {
            let kind = match i {
                0..=3 => "healthy",
                4 | 5 => "bad",
                6 | 7 => "slow",
                _ => "gated",
            };
            (format!("model-{i}"), kind)
        })
        .collect();
    // Canaries that should pass make no errors: this test is about who drives what, and the
    // gated ones are evaluated every second for a minute (a 0.5% error rate would trip the
    // test policy's `> 5%` on 20 requests by chance; docs/decision-quality.md).
    let ann = |kind: &str| match kind {
        "bad" => json!({"sandbox.rolloutctl.io/error-rate": "30%"}),
        "slow" => {
            json!({"sandbox.rolloutctl.io/error-rate": "0%", "sandbox.rolloutctl.io/latency-p50-ms": "900", "sandbox.rolloutctl.io/latency-p95-ms": "2000"})
        }
        _ => json!({"sandbox.rolloutctl.io/error-rate": "0%"}),
    };
    futures_util::future::join_all(kinds.iter().map(|(n, k)| w.canary_of(n, ann(k)))).await;
    let files: Vec<std::path::PathBuf> = kinds
        .iter()
        .map(|(n, k)| {
            let steps = if *k == "gated" {
                "    traffic 10%\n    hold 4s\n    approval\n    promote"
            } else {
                STEPS
            };
            let p = w.dir.path().join(format!("{n}.rollout"));
            std::fs::write(&p, policy_for(n, SLOW_RULE, steps)).expect("write");
            p
        })
        .collect();
    let traffic: Vec<TrafficLog> = kinds.iter().map(|(n, _)| w.record_traffic_of(n)).collect();
    // An invalid file among them: nothing is applied.
    let bad = w.policy_file("rollout \"x\" {\n  steps {\n    traffic 200%\n  }\n}\n");
    let mut with_bad: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
    with_bad.push(&bad);
    let out = apply(&w, &with_bad, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("nothing was applied"), "{}", text(&out));
    let mros: Api<rollout_api::ModelRollout> = Api::namespaced(w.client.clone(), "kserve-test");
    assert!(
        mros.list(&Default::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
    // A dry run says what would be created and creates nothing.
    let paths: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
    let out = apply(&w, &paths, &["--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        text(&out).matches("created (dry run)").count(),
        10,
        "{}",
        text(&out)
    );
    assert!(
        mros.list(&Default::default())
            .await
            .expect("list")
            .items
            .is_empty()
    );
    let out = apply(&w, &paths, &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(text(&out).matches(" created").count(), 10, "{}", text(&out));
    // Two replicas: one leads, the other stands by.
    let a = w.controller("ctl-a", &[]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = w.controller("ctl-b", &[]);
    for (n, k) in &kinds {
        let phase = match *k {
            "healthy" => "promoted",
            "bad" | "slow" => "rolled_back",
            _ => "awaiting_approval",
        };
        until_phase_explained(&w, n, phase, 120, &[&a, &b]).await;
    }
    let (lead, standby) = if leader(&w).await.as_deref() == Some("ctl-a") {
        (&a, &b)
    } else {
        (&b, &a)
    };
    assert!(
        standby.decisions().is_empty(),
        "the standby decided nothing"
    );
    // The operator verbs act through the controller.
    for (n, _) in kinds.iter().filter(|(_, k)| *k == "gated") {
        let out = w.rolloutctl(&["approve", n]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains("the rolloutctl controller"),
            "{}",
            text(&out)
        );
    }
    for (n, _) in kinds.iter().filter(|(_, k)| *k == "gated") {
        w.until_phase(n, "promoted", 60).await;
    }
    for ((n, k), t) in kinds.iter().zip(&traffic) {
        let expected: Vec<i64> = match *k {
            "healthy" => vec![10, 25, 50, 100],
            "bad" | "slow" => vec![10, 0],
            _ => vec![10, 100],
        };
        assert_eq!(t.values(), expected, "{n} ({k})");
    }
    // Its own metrics, with stable label names.
    let url = metrics_url(lead).await;
    let m = http_get(&format!("{url}/metrics")).await;
    assert!(m.contains("rolloutctl_promotions_total 6"), "{m}");
    assert!(
        m.contains("rolloutctl_rollbacks_total{reason=\"CanaryErrors\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("rolloutctl_rollbacks_total{reason=\"Slow\"} 2"),
        "{m}"
    );
    assert!(
        m.contains("rolloutctl_rollout_info{namespace=\"kserve-test\",modelrollout=\"model-0\",inferenceservice=\"model-0\",canary_revision=\"model-0-predictor-00002\",stable_revision=\"model-0-predictor-00001\",phase=\"promoted\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("rolloutctl_rollout_traffic_percent{namespace=\"kserve-test\",modelrollout=\"model-4\"} 0"),
        "{m}"
    );
    assert!(
        m.contains("rolloutctl_decisions_total{rule=\"CanaryErrors\",verdict=\"pass\"}"),
        "{m}"
    );
    assert!(
        m.contains("rolloutctl_prometheus_query_duration_seconds_count"),
        "{m}"
    );
    assert!(m.contains("rolloutctl_leader 1"), "{m}");
    assert!(m.contains("rolloutctl_rollouts 10"), "{m}");
    assert!(http_get(&format!("{url}/healthz")).await.starts_with("ok"));
    assert!(http_get(&format!("{url}/readyz")).await.starts_with("ok"));
    let sm = http_get(&format!("{}/metrics", metrics_url(standby).await)).await;
    assert!(sm.contains("rolloutctl_leader 0"), "{sm}");
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_leader_ten_times_loses_nothing() {
    let w = world(40.0).await;
    let names = ["model-a", "model-b"];
    futures_util::future::join_all(names.iter().map(|n| w.canary_of(n, json!({})))).await;
    let steps = "    traffic 10%\n    hold 15s\n    traffic 25%\n    hold 15s\n    traffic 50%\n    hold 15s\n    promote";
    let files: Vec<std::path::PathBuf> = names
        .iter()
        .map(|n| {
            let p = w.dir.path().join(format!("{n}.rollout"));
            std::fs::write(&p, policy_for(n, "", steps)).expect("write");
            p
        })
        .collect();
    let traffic: Vec<TrafficLog> = names.iter().map(|n| w.record_traffic_of(n)).collect();
    let paths: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
    assert!(apply(&w, &paths, &[]).status.success());
    // A short Lease, so that ten takeovers fit in one rollout.
    let args = ["--lease-duration", "4"];
    let mut replicas: Vec<(String, Runner)> = (0..2)
        .map(|i| {
            let h = format!("ctl-{i}");
            let r = w.controller(&h, &args);
            (h, r)
        })
        .collect();
    let mut next = 2;
    let mut takeovers = Vec::new();
    while takeovers.len() < 10 {
        tokio::time::sleep(Duration::from_millis(1500 + fastrand::u64(..2500))).await;
        let Some(lead) = leader(&w).await else {
            continue;
        };
        let Some(i) = replicas.iter().position(|(h, _)| *h == lead) else {
            continue;
        };
        let killed = Instant::now();
        replicas[i].1.signal("KILL");
        let _ = replicas[i].1.exit(10).await;
        // A new pod replaces it, as a Deployment would.
        let h = format!("ctl-{next}");
        next += 1;
        replicas[i] = (h.clone(), w.controller(&h, &args));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(l) = leader(&w).await
                && l != lead
            {
                takeovers.push(killed.elapsed().as_secs_f64());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no takeover after killing {lead}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(takeovers.len(), 10, "ten leaders killed");
    for n in names {
        w.until_phase(n, "promoted", 120).await;
    }
    for (n, t) in names.iter().zip(&traffic) {
        assert_eq!(
            t.values(),
            vec![10, 25, 50, 100],
            "{n}: no step repeated or skipped"
        );
        let st = w.rollout_of(n).await.status.expect("status");
        assert_eq!(st.attempt, Some(1));
    }
    let worst = takeovers.iter().copied().fold(0.0, f64::max);
    println!("takeovers after SIGKILL (s): {takeovers:?}; worst {worst:.2}");
    assert!(
        worst < 4.0 + 1.0,
        "a standby takes over within the Lease duration (+1 s): {worst}"
    );
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_and_the_controller_never_drive_one_rollout_together() {
    let w = world(40.0).await;
    futures_util::future::join_all([
        w.canary_of("sklearn-iris", json!({})),
        w.canary_of("second", json!({})),
    ])
    .await;
    let steps = "    traffic 10%\n    hold 8s\n    traffic 25%\n    hold 8s\n    traffic 50%\n    hold 4s\n    promote";
    let first = w.policy_file(&policy_for("sklearn-iris", "", steps));
    let traffic = w.record_traffic();
    let mut run = w.run(&first, &[], &[]);
    run.until(30, "the 10% hold", to("holding")).await;
    let controller = w.controller("ctl", &[]);
    // The controller leaves the rollout a live `run` holds alone.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        controller
            .decisions()
            .iter()
            .all(|d| d["rollout"] != "kserve-test/sklearn-iris"),
        "the controller decided nothing for the run's rollout"
    );
    // The run stops (SIGTERM releases its Lease): the controller takes over where it was.
    run.signal("TERM");
    assert_eq!(run.exit(20).await, 143);
    w.until_phase("sklearn-iris", "promoted", 90).await;
    assert_eq!(
        traffic.values(),
        vec![10, 25, 50, 100],
        "no step repeated or skipped"
    );
    assert!(
        controller
            .decisions()
            .iter()
            .any(|d| d["rollout"] == "kserve-test/sklearn-iris"),
        "the controller finished it"
    );
    // A rollout the controller drives: `run` refuses it and changes nothing.
    let second = w.dir.path().join("second.rollout");
    std::fs::write(&second, policy_for("second", "", steps)).expect("write");
    assert!(apply(&w, &[&second], &[]).status.success());
    let api: Api<rollout_api::ModelRollout> = Api::namespaced(w.client.clone(), "kserve-test");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !controller
        .decisions()
        .iter()
        .any(|d| d["rollout"] == "kserve-test/second" && d["to"] == "holding")
    {
        assert!(
            Instant::now() < deadline,
            "the controller did not start `second`"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spec = api.get("second").await.expect("mr").spec;
    let other = w.policy_file(&policy_for("second", "", STEPS));
    let mut refused = w.run(&other, &[], &[]);
    assert_eq!(refused.exit(30).await, 5, "{}", refused.stderr());
    assert!(
        refused.stderr().contains("the rolloutctl controller ctl")
            && refused.stderr().contains("drives this rollout"),
        "{}",
        refused.stderr()
    );
    assert_eq!(
        api.get("second").await.expect("mr").spec,
        spec,
        "nothing written"
    );
    // `run --watch` follows it instead, writing nothing, and ends with its outcome.
    let mut follower = w.run(&other, &["--watch"], &[]);
    follower
        .until(30, "the follower's first line", |d| d["phase"] == "holding")
        .await;
    assert!(
        follower.stderr().contains("following it (`--watch`)"),
        "{}",
        follower.stderr()
    );
    assert_eq!(
        api.get("second").await.expect("mr").spec,
        spec,
        "a follower writes nothing"
    );
    // An operator's abort goes through the controller.
    let out = w.rolloutctl(&["abort", "second"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("the rolloutctl controller"),
        "{}",
        text(&out)
    );
    w.until_phase("second", "rolled_back", 30).await;
    let st = w.rollout_of("second").await.status.expect("status");
    assert_eq!(
        st.history.last().map(|h| h.outcome.as_str()),
        Some("aborted")
    );
    assert_eq!(
        follower.exit(30).await,
        4,
        "the follower ends with the outcome: {}",
        follower.stderr()
    );
    assert!(
        follower.stderr().contains("rollout aborted"),
        "{}",
        follower.stderr()
    );
    w.sandbox.shutdown().await;
}

/// A Prometheus that accepts connections and never answers.
async fn black_hole() -> (String, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (format!("http://{addr}"), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prometheus_that_never_answers_one_rollout_does_not_delay_the_others() {
    let w = world(40.0).await;
    futures_util::future::join_all([
        w.canary_of("healthy", json!({"sandbox.rolloutctl.io/error-rate": "0%"})),
        w.canary_of("stuck", json!({"sandbox.rolloutctl.io/error-rate": "0%"})),
    ])
    .await;
    let (hole, task) = black_hole().await;
    let with_url = |name: &str, url: &str| {
        policy_for(name, "", STEPS)
            .replace("url = \"http://127.0.0.1:1\"", &format!("url = \"{url}\""))
    };
    let healthy = w.dir.path().join("healthy.rollout");
    std::fs::write(&healthy, with_url("healthy", &w.prom)).expect("write");
    let stuck = w.dir.path().join("stuck.rollout");
    std::fs::write(&stuck, with_url("stuck", &hole)).expect("write");
    let traffic = w.record_traffic_of("healthy");
    let stuck_traffic = w.record_traffic_of("stuck");
    assert!(apply(&w, &[&healthy, &stuck], &[]).status.success());
    // No override: each policy's own Prometheus; `stuck`'s never answers (2 s timeout).
    let c = w.controller_via(None, "ctl", &[]);
    until_phase_explained(&w, "healthy", "promoted", 60, &[&c]).await;
    assert_eq!(traffic.values(), vec![10, 25, 50, 100]);
    // `healthy` was evaluated every second while `stuck`'s queries hung: no gap between two
    // of its decisions while it held reaches the 2 s query timeout.
    let evaluated: Vec<(i64, i64)> = c
        .decisions()
        .iter()
        .filter(|d| d["rollout"] == "kserve-test/healthy" && d["evaluated"] == true)
        .filter_map(|d| Some((d["step"].as_i64()?, d["at"].as_i64()?)))
        .collect();
    assert!(evaluated.len() >= 10, "{} evaluations", evaluated.len());
    let worst = evaluated
        .windows(2)
        .filter(|p| p[0].0 == p[1].0)
        .map(|p| p[1].1 - p[0].1)
        .max()
        .unwrap_or(0);
    assert!(
        worst < 2000,
        "healthy waited {worst} ms between two evaluations"
    );
    // `stuck` never passed a check on a Prometheus that never answered.
    let stuck_said: Vec<serde_json::Value> = c
        .decisions()
        .into_iter()
        .filter(|d| d["rollout"] == "kserve-test/stuck")
        .collect();
    assert!(
        stuck_said
            .iter()
            .flat_map(|d| d["rules"].as_array().cloned().unwrap_or_default())
            .all(|r| r["verdict"] != "pass"),
        "no pass without an answer"
    );
    assert!(
        stuck_traffic.values().iter().all(|p| *p <= 10),
        "stuck never went past 10%: {:?}",
        stuck_traffic.values()
    );
    task.abort();
    w.sandbox.shutdown().await;
}

/// Realistic settings: a 30 s evaluation interval and the default 15 s leader Lease, with a
/// standby waiting. The leader must keep its Lease between evaluations twice as long as it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_a_30s_interval_with_the_default_lease_the_leader_keeps_leading() {
    let w = world(40.0).await;
    w.canary_of(
        "slow-paced",
        json!({"sandbox.rolloutctl.io/error-rate": "0%"}),
    )
    .await;
    let text = policy_for(
        "slow-paced",
        "",
        "    traffic 10%\n    hold 61s\n    promote",
    )
    .replace("interval = 1s", "interval = 30s")
    .replace("window = 5s", "window = 30s")
    .replace("stale_after = 5s", "stale_after = 60s");
    let file = w.dir.path().join("slow-paced.rollout");
    std::fs::write(&file, text).expect("write");
    let traffic = w.record_traffic_of("slow-paced");
    assert!(apply(&w, &[&file], &[]).status.success());
    let a = w.controller("ctl-a", &[]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b = w.controller("ctl-b", &[]);
    until_phase_explained(&w, "slow-paced", "promoted", 150, &[&a, &b]).await;
    assert_eq!(traffic.values(), vec![10, 100]);
    assert_eq!(leader(&w).await.as_deref(), Some("ctl-a"), "no takeover");
    assert!(b.decisions().is_empty(), "the standby decided nothing");
    let evaluated: Vec<i64> = a
        .decisions()
        .iter()
        .filter(|d| d["evaluated"] == true)
        .filter_map(|d| d["at"].as_i64())
        .collect();
    assert!(evaluated.len() >= 2, "{evaluated:?}");
    for p in evaluated.windows(2) {
        assert!(
            p[1] - p[0] <= 33_000,
            "each interval honoured, none skipped: {evaluated:?}"
        );
    }
    let leases: Api<Lease> = Api::namespaced(w.client.clone(), "kserve-test");
    let l = leases.get("rolloutctl-controller").await.expect("lease");
    assert_eq!(
        l.spec.and_then(|s| s.lease_transitions),
        Some(0),
        "the leader Lease never changed hands"
    );
    w.sandbox.shutdown().await;
}

/// The controller reads InferenceServices from its watch (no GET per evaluation) and its
/// cached copies carry no managedFields: traffic set by hand is still restored at once, and
/// the Event still names who set it (the copy that does not fit is read again from the API
/// server before anything is written).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_controller_reads_from_its_watch_and_still_restores_traffic_set_by_hand() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let steps = "    traffic 10%\n    hold 20s\n    traffic 25%\n    hold 6s\n    promote";
    let file = w.dir.path().join("sklearn-iris.rollout");
    std::fs::write(&file, policy_for("sklearn-iris", "", steps)).expect("write");
    let traffic = w.record_traffic();
    assert!(apply(&w, &[&file], &[]).status.success());
    let c = w.controller("ctl-a", &[]);
    c.until(40, "the 10% hold", |d| {
        d["to"] == "holding" && d["traffic"] == 10
    })
    .await;
    let quiet = Instant::now();
    let before = c
        .decisions()
        .iter()
        .filter(|d| d["evaluated"] == true)
        .count();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let evaluated = c
        .decisions()
        .iter()
        .filter(|d| d["evaluated"] == true)
        .count()
        - before;
    let reads = w
        .sandbox
        .requests_since(quiet)
        .iter()
        .filter(|q| {
            q.method == "GET"
                && !q.watch
                && q.agent.contains("controller")
                && q.path.ends_with("inferenceservices/sklearn-iris")
        })
        .count();
    eprintln!("E2E controller: {evaluated} evaluations, {reads} InferenceService GETs in 4 s");
    assert!(
        evaluated >= 3,
        "{evaluated} evaluations in 4 s at a 1 s interval"
    );
    assert_eq!(reads, 0, "evaluations read the watch's copy");
    let restored = w.set_by_hand_until_restored("ops-by-hand", 100, 10).await;
    eprintln!(
        "E2E controller: 100% by hand restored to 10% in {:.2}s",
        restored.as_secs_f64()
    );
    assert!(restored < Duration::from_secs(3), "{restored:?}");
    let note = w.out_of_band_note().await;
    assert!(
        note.contains("ops-by-hand"),
        "the Event names the writer: {note}"
    );
    until_phase_explained(&w, "sklearn-iris", "promoted", 90, &[&c]).await;
    assert_eq!(traffic.values(), vec![10, 100, 10, 25, 100]);
    w.sandbox.shutdown().await;
}
