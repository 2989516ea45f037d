//! End-to-end: `rolloutctl run` (the real binary, as a separate process) against the sandbox and
//! a real Prometheus. Each test is bounded in time and talks only to 127.0.0.1.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use rollout_runner::cluster::{self, Isvc};
use rollout_sandbox::{Config, RevisionControl, Sandbox};
use serde_json::{Value, json};

const V1: &str = "sklearn-iris-predictor-00001";
const V2: &str = "sklearn-iris-predictor-00002";

/// A fast policy for the sandbox: 1 s scrapes and evaluations, 5 s windows, 6 s holds.
fn policy(extra_rules: &str, steps: &str, evaluation_extra: &str, on: &str) -> String {
    format!(
        r#"rollout "e2e" {{
  target {{
    name = "sklearn-iris"
    namespace = "kserve-test"
  }}

  prometheus {{
    url = "http://127.0.0.1:1"
    scrape_interval = 1s
    timeout = 2s
  }}

  evaluation {{
    interval = 1s
    window = 5s
    deadline = 10m
    stale_after = 5s
    settle_timeout = 20s
{evaluation_extra}  }}

  use knative

  rule CanaryErrors {{
    when canary.error_rate > 5%
    require canary.requests >= 5
    action rollback
  }}
{extra_rules}
{on}
  steps {{
{steps}
  }}
}}
"#
    )
}

const STEPS: &str = "    traffic 10%\n    hold 6s\n    traffic 25%\n    hold 6s\n    traffic 50%\n    hold 6s\n    promote";
const ON: &str = "  on no_data hold 5s then rollback\n  on stale_data hold 5s then rollback\n  on query_error hold 5s then rollback\n  on inconclusive hold 20s then rollback\n";

struct World {
    sandbox: Sandbox,
    prom: String,
    client: kube::Client,
    isvc: Isvc,
    dir: tempfile::TempDir,
}

async fn world(rps: f64) -> World {
    assert!(
        rollout_sandbox::prometheus::which("prometheus").is_some(),
        "Prometheus is required: {}",
        rollout_sandbox::prometheus::INSTALL_HINT
    );
    let sandbox = Sandbox::start(Config {
        rps,
        ready_delay: Duration::from_millis(300),
        ..Config::default()
    })
    .await
    .expect("sandbox");
    let prom = sandbox
        .prometheus
        .as_ref()
        .map(|p| p.url.clone())
        .expect("Prometheus started");
    let client = rollout_runner::client(Some(&sandbox.kubeconfig), None)
        .await
        .expect("client");
    let isvc = Isvc::new(client.clone(), "kserve-test", "sklearn-iris");
    World {
        sandbox,
        prom,
        client,
        isvc,
        dir: tempfile::tempdir().expect("dir"),
    }
}

fn isvc_obj(uri: &str, canary: Option<u8>, annotations: Value) -> Value {
    let mut predictor = json!({"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}});
    if let Some(p) = canary {
        predictor["canaryTrafficPercent"] = json!(p);
    }
    let mut ann = json!({"serving.kserve.io/deploymentMode": "Serverless", "sandbox.rolloutctl.io/error-rate": "0.5%"});
    if let (Some(a), Some(extra)) = (ann.as_object_mut(), annotations.as_object()) {
        for (k, v) in extra {
            a.insert(k.clone(), v.clone());
        }
    }
    json!({"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
           "metadata": {"name": "sklearn-iris", "namespace": "kserve-test", "annotations": ann},
           "spec": {"predictor": predictor}})
}

impl World {
    async fn apply(&self, obj: Value) {
        self.isvc
            .api
            .patch(
                "sklearn-iris",
                &PatchParams::apply("e2e").force(),
                &Patch::Apply(obj),
            )
            .await
            .expect("apply");
    }

    async fn wait_settled(&self, pct: u8) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(o) = self.isvc.get(1).await {
                let c = cluster::observe(&o, "predictor");
                if c.ready && c.observed && c.canary_percent == pct {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "not settled at {pct}%");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// v1 rolled out, v2 at 10%, and Prometheus has seen both for a few seconds.
    async fn canary(&self, v2_annotations: Value) {
        self.apply(isvc_obj("gs://m/1", None, json!({}))).await;
        self.wait_settled(100).await;
        self.apply(isvc_obj("gs://m/2", Some(10), v2_annotations))
            .await;
        self.wait_settled(10).await;
        tokio::time::sleep(Duration::from_secs(6)).await;
    }

    fn policy_file(&self, text: &str) -> PathBuf {
        let p = self
            .dir
            .path()
            .join(format!("p{}.rollout", fastrand::u32(..)));
        std::fs::write(&p, text).expect("write policy");
        p
    }

    fn run(&self, policy: &Path, extra: &[&str], env: &[(&str, &str)]) -> Runner {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rolloutctl"));
        cmd.arg("run")
            .arg(policy)
            .arg("--kubeconfig")
            .arg(&self.sandbox.kubeconfig)
            .arg("--prometheus-url")
            .arg(&self.prom)
            .arg("--output")
            .arg("json")
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        Runner::spawn(cmd)
    }

    fn rolloutctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_rolloutctl"))
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.sandbox.kubeconfig)
            .arg("-n")
            .arg("kserve-test")
            .output()
            .expect("rolloutctl")
    }

    /// Runs `policy` on a healthy canary; `after` the 10% hold begins, the canary starts
    /// failing (30% of its requests return 500). Returns the runner and when the failure began.
    async fn failing_at_10_percent(&self, policy: &Path, after: Duration) -> (Runner, Instant) {
        self.canary(json!({})).await;
        let r = self.run(policy, &[], &[]);
        r.until(30, "the 10% hold", |d| {
            d["to"] == "holding" && d["traffic"] == 10
        })
        .await;
        tokio::time::sleep(after).await;
        let breach = Instant::now();
        self.sandbox.set_revision(
            V2,
            &RevisionControl {
                error_rate: Some(0.3),
                ..Default::default()
            },
        );
        (r, breach)
    }

    async fn obj(&self) -> DynamicObject {
        self.isvc.get(3).await.expect("isvc")
    }
}

/// A running `rolloutctl run`, its decision records collected as they come.
struct Runner {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
}

impl Runner {
    fn spawn(mut cmd: Command) -> Runner {
        let mut child = cmd.spawn().expect("spawn rolloutctl run");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().expect("stdout");
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    l.lock().expect("lock").push(v);
                }
            }
        });
        let err = child.stderr.take().expect("stderr");
        let e = stderr.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = e.lock().expect("lock");
                s.push_str(&line);
                s.push('\n');
            }
        });
        Runner {
            child,
            lines,
            stderr,
        }
    }

    /// Waits until a decision satisfies `f`; returns when it was seen.
    async fn until(&self, secs: u64, what: &str, f: impl Fn(&Value) -> bool) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if self.lines.lock().expect("lock").iter().any(&f) {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; stderr:\n{}",
                self.stderr.lock().expect("lock")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the process to exit (bounded); returns its exit code.
    async fn exit(&mut self, secs: u64) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "rolloutctl run did not exit within {secs}s; stderr:\n{}",
                    self.stderr.lock().expect("lock")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn decisions(&self) -> Vec<Value> {
        self.lines.lock().expect("lock").clone()
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn to(phase: &'static str) -> impl Fn(&Value) -> bool {
    move |d| d["to"] == phase
}

fn spec_percent(o: &DynamicObject) -> Option<i64> {
    o.data
        .pointer("/spec/predictor/canaryTrafficPercent")
        .and_then(Value::as_i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn healthy_canary_is_promoted_and_the_annotations_and_events_tell_the_story() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    // Credentials by reference: the token must never appear in logs, events or annotations.
    let text = policy("", STEPS, "", ON).replace(
        "timeout = 2s",
        "timeout = 2s\n    token_env = \"PROM_TOKEN\"",
    );
    let p = w.policy_file(&text);
    let secret = "s3cret-e2e-token-0123456789";
    let mut r = w.run(&p, &[], &[("PROM_TOKEN", secret), ("RUST_LOG", "debug")]);
    assert_eq!(
        r.exit(120).await,
        0,
        "promoted; stderr:\n{}",
        r.stderr.lock().expect("lock")
    );
    let obj = w.obj().await;
    assert_eq!(
        cluster::annotation(&obj, "rolloutctl.io/phase"),
        Some("promoted")
    );
    assert_eq!(
        cluster::annotation(&obj, "rolloutctl.io/canary-revision"),
        Some(V2)
    );
    assert_eq!(
        cluster::annotation(&obj, "rolloutctl.io/stable-revision"),
        Some(V1)
    );
    assert!(cluster::annotation(&obj, cluster::POLICY_HASH).is_some_and(|h| h.len() == 16));
    assert!(
        cluster::annotation(&obj, "rolloutctl.io/last-decision")
            .is_some_and(|d| d.contains("promoted"))
    );
    assert_eq!(
        obj.data["status"]["components"]["predictor"]["latestRolledoutRevision"],
        V2
    );
    // Every step in order, and a passing evaluation record with rule values.
    let ds = r.decisions();
    let mut steps: Vec<i64> = ds
        .iter()
        .map(|d| d["traffic"].as_i64().unwrap_or(-1))
        .collect();
    steps.dedup();
    assert_eq!(steps, vec![10, 25, 50, 100]);
    assert!(
        ds.iter()
            .any(|d| d["rules"][0]["verdict"] == "pass"
                && d["rules"][0]["when"][0]["lhs"].is_number())
    );
    // Events.
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
    // The token is nowhere.
    let logs = format!(
        "{}{}",
        r.stderr.lock().expect("lock"),
        serde_json::to_string(&ds).unwrap_or_default()
    );
    assert!(!logs.contains(secret), "the token leaked into the logs");
    assert!(
        !serde_json::to_string(
            &list
                .items
                .iter()
                .map(|e| e.note.clone())
                .collect::<Vec<_>>()
        )
        .unwrap_or_default()
        .contains(secret)
    );
    assert!(
        !serde_json::to_string(&obj.metadata.annotations)
            .unwrap_or_default()
            .contains(secret)
    );
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_5xx_regression_at_10_percent_is_rolled_back_fast() {
    let w = world(60.0).await;
    let p = w.policy_file(&policy("", STEPS, "", ON));
    let (mut r, breach) = w.failing_at_10_percent(&p, Duration::ZERO).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let rolled_back_at = loop {
        if let Some(o) = w.sandbox.get(
            rollout_sandbox::types::ids::ISVC,
            "kserve-test",
            "sklearn-iris",
        ) && o["spec"]["predictor"]["canaryTrafficPercent"] == 0
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
    // Fault -> window -> scrape -> evaluation -> patch: the 5 s window must first show > 5%
    // errors (about 1 s of 30% errors), then one scrape (1 s) and one evaluation (1 s).
    assert!(
        latency < Duration::from_secs(6),
        "breach to rollback took {:.2}s",
        latency.as_secs_f64()
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
        &RevisionControl {
            latency_p50_ms: Some(400.0),
            latency_p95_ms: Some(900.0),
            ..Default::default()
        },
    );
    r.until(30, "a pause", to("paused")).await;
    let paused = w.rolloutctl(&["status", "sklearn-iris"]);
    assert!(
        String::from_utf8_lossy(&paused.stdout).contains("paused"),
        "{}",
        String::from_utf8_lossy(&paused.stdout)
    );
    // Fixed; resume from another process.
    w.sandbox.set_revision(
        V2,
        &RevisionControl {
            latency_p50_ms: Some(40.0),
            latency_p95_ms: Some(120.0),
            ..Default::default()
        },
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(w.rolloutctl(&["resume", "sklearn-iris"]).status.success());
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
    assert!(w.rolloutctl(&["approve", "sklearn-iris"]).status.success());
    assert_eq!(r.exit(30).await, 0, "promoted after approval");
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killed_and_restarted_twenty_times_it_finishes_right_and_never_repeats_or_skips_a_step() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let steps = "    traffic 10%\n    hold 10s\n    traffic 25%\n    hold 10s\n    traffic 50%\n    hold 10s\n    promote";
    let p = w.policy_file(&policy("", steps, "", ON));
    // Record every canaryTrafficPercent the cluster is ever given.
    let seen = Arc::new(Mutex::new(vec![10i64]));
    let app = w.sandbox.app().clone();
    let s2 = seen.clone();
    let recorder = tokio::spawn(async move {
        loop {
            let v = rollout_sandbox::lock(&app)
                .store
                .get(&rollout_sandbox::store::Key::new(
                    rollout_sandbox::types::ids::ISVC,
                    "kserve-test",
                    "sklearn-iris",
                ))
                .ok()
                .and_then(|o| o["spec"]["predictor"]["canaryTrafficPercent"].as_i64());
            if let Some(v) = v {
                let mut s = s2.lock().expect("lock");
                if s.last() != Some(&v) {
                    s.push(v);
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut kills = 0;
    let code = loop {
        let mut r = w.run(&p, &["--wait"], &[]);
        if kills < 20 {
            let delay = 400 + fastrand::u64(..1600);
            tokio::time::sleep(Duration::from_millis(delay)).await;
            if r.child.try_wait().expect("wait").is_none() {
                // SIGKILL: no cleanup, the Lease stays held until it expires or is renewed by us.
                let _ = r.child.kill();
                let _ = r.child.wait();
                kills += 1;
                continue;
            }
        }
        break r.exit(180).await;
    };
    recorder.abort();
    assert!(kills >= 20, "only {kills} kills");
    assert_eq!(code, 0, "promoted in the end");
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(
        seen,
        vec![10, 25, 50, 100],
        "traffic given in order, no step repeated or skipped"
    );
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_stopped_mid_rollout_never_promotes() {
    let mut w = world(60.0).await;
    w.canary(json!({})).await;
    let p = w.policy_file(&policy("", STEPS, "", ON));
    let mut r = w.run(&p, &[], &[]);
    r.until(40, "the 25% hold", |d| {
        d["to"] == "holding" && d["traffic"] == 25
    })
    .await;
    if let Some(prom) = w.sandbox.prometheus.take() {
        prom.stop().await;
    }
    assert_eq!(
        r.exit(60).await,
        3,
        "rolled back by `on query_error hold 5s then rollback`"
    );
    let ds = r.decisions();
    assert!(ds.iter().any(|d| {
        d["failures"]
            .as_array()
            .is_some_and(|f| f.iter().any(|k| k == "query_error"))
    }));
    assert!(
        ds.iter().all(|d| d["traffic"].as_i64().unwrap_or(0) <= 25),
        "never promoted"
    );
    assert_eq!(spec_percent(&w.obj().await), Some(0));
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn injected_409s_and_500s_are_retried_or_re_decided() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let p = w.policy_file(&policy("", STEPS, "", ON));
    w.sandbox.set_faults(rollout_sandbox::Faults {
        fail_next: 3,
        fail_code: 409,
        fail_method: Some("PATCH".into()),
        ..Default::default()
    });
    let mut r = w.run(&p, &[], &[("RUST_LOG", "info")]);
    r.until(40, "the 25% step", |d| d["traffic"] == 25).await;
    w.sandbox.set_faults(rollout_sandbox::Faults {
        fail_next: 4,
        fail_code: 500,
        ..Default::default()
    });
    assert_eq!(
        r.exit(120).await,
        0,
        "promoted despite the faults; stderr:\n{}",
        r.stderr.lock().expect("lock")
    );
    assert!(
        r.stderr.lock().expect("lock").contains("409"),
        "the conflicts were seen"
    );
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standard_mode_is_refused_and_an_unready_canary_is_never_judged() {
    let w = world(60.0).await;
    // Standard mode: refused with a clear error, exit 5, nothing changed.
    w.apply(isvc_obj(
        "gs://m/1",
        None,
        json!({"serving.kserve.io/deploymentMode": "Standard"}),
    ))
    .await;
    let p = w.policy_file(&policy("", STEPS, "", ON));
    let mut r = w.run(&p, &[], &[]);
    assert_eq!(r.exit(30).await, 5);
    assert!(
        r.stderr.lock().expect("lock").contains("Standard mode"),
        "{}",
        r.stderr.lock().expect("lock")
    );
    w.isvc
        .api
        .delete("sklearn-iris", &Default::default())
        .await
        .expect("delete");
    // A canary that never becomes ready: never judged, rolled back at the settle timeout.
    w.apply(isvc_obj("gs://m/1", None, json!({}))).await;
    w.wait_settled(100).await;
    w.apply(isvc_obj(
        "gs://m/2",
        Some(10),
        json!({"sandbox.rolloutctl.io/fail-readiness": "true"}),
    ))
    .await;
    let p = w.policy_file(
        &policy("", STEPS, "", ON).replace("settle_timeout = 20s", "settle_timeout = 5s"),
    );
    let mut r = w.run(&p, &[], &[]);
    assert_eq!(r.exit(60).await, 3, "rolled back at the timeout");
    assert!(
        r.decisions().iter().all(|d| d["evaluated"] == false),
        "an unready canary was judged"
    );
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_runners_on_one_inferenceservice_exactly_one_acts() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let p = w.policy_file(&policy("", STEPS, "", ON));
    let mut a = w.run(&p, &[], &[]);
    let mut b = w.run(&p, &[], &[]);
    let (ca, cb) = (a.exit(120).await, b.exit(120).await);
    let mut codes = [ca, cb];
    codes.sort_unstable();
    assert_eq!(codes, [0, 5], "one promoted, the other refused");
    let refused = if ca == 5 { &a } else { &b };
    assert!(
        refused
            .stderr
            .lock()
            .expect("lock")
            .contains("another rolloutctl run")
    );
    assert!(
        refused.decisions().is_empty(),
        "the refused runner decided nothing"
    );
    w.sandbox.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dry_run_changes_nothing() {
    let w = world(60.0).await;
    w.canary(json!({})).await;
    let before = w.obj().await;
    let p = w.policy_file(
        &policy("", STEPS, "", ON).replace("settle_timeout = 20s", "settle_timeout = 4s"),
    );
    let mut r = w.run(&p, &["--dry-run"], &[]);
    let code = r.exit(60).await;
    assert_ne!(code, 0, "a dry run cannot promote");
    let ds = r.decisions();
    assert!(
        ds.iter().any(|d| d["evaluated"] == true),
        "decisions were made and logged"
    );
    let after = w.obj().await;
    assert_eq!(
        before.metadata.resource_version, after.metadata.resource_version,
        "the InferenceService was not written"
    );
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(w.client.clone(), "kserve-test");
    assert!(
        leases
            .list(&Default::default())
            .await
            .expect("leases")
            .items
            .is_empty(),
        "no Lease taken"
    );
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(w.client.clone(), "kserve-test");
    assert!(
        events
            .list(&Default::default())
            .await
            .expect("events")
            .items
            .is_empty(),
        "no Events"
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
    let out = Command::new(env!("CARGO_BIN_EXE_rolloutctl"))
        .args(["replay"])
        .arg(&p)
        .args([
            "--from",
            &format!("{:.3}", from as f64 / 1000.0),
            "--to",
            &format!("{:.3}", (live_rb + 10_000) as f64 / 1000.0),
        ])
        .args([
            "--canary",
            V2,
            "--stable",
            V1,
            "--prometheus-url",
            &w.prom,
            "--output",
            "json",
        ])
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
    // Tolerance: replay reads range-query samples at 1 s steps and ticks on its own clock, so its
    // evaluations are within about a second of the live ones; the decision must agree within 3 s.
    assert!(
        diff <= 3_000,
        "live rolled back at {live_rb}, replay at {replay_rb}"
    );
    // Verdicts of the evaluations at matching times agree.
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
    // Evaluations right at the breach may fall on either side of it: at least 70% agree.
    assert!(
        total >= 4 && same * 10 >= total * 7,
        "only {same} of {total} verdicts agree"
    );
    w.sandbox.shutdown().await;
}
