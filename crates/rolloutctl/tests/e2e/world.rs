//! The world of the end-to-end tests: a sandbox (with the ModelRollout CRD installed, as on a
//! cluster with rolloutctl) and a real Prometheus, `rolloutctl` as a separate process, and
//! ways to watch what reaches the InferenceService.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use rollout_api::ModelRollout;
use rollout_runner::isvc::{self, Isvc};
use rollout_sandbox::types::ids;
use rollout_sandbox::{Config, RevisionControl, Sandbox};
use serde_json::{Value, json};

pub const V1: &str = "sklearn-iris-predictor-00001";
pub const V2: &str = "sklearn-iris-predictor-00002";

/// A fast policy for the sandbox: 1 s scrapes and evaluations, 5 s windows.
pub fn policy(extra_rules: &str, steps: &str, evaluation_extra: &str, on: &str) -> String {
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

pub const STEPS: &str = "    traffic 10%\n    hold 6s\n    traffic 25%\n    hold 6s\n    traffic 50%\n    hold 6s\n    promote";
pub const ON: &str = "  on no_data hold 5s then rollback\n  on stale_data hold 5s then rollback\n  on query_error hold 5s then rollback\n  on inconclusive hold 20s then rollback\n";

pub struct World {
    pub sandbox: Sandbox,
    pub prom: String,
    pub client: kube::Client,
    pub isvc: Isvc,
    pub dir: tempfile::TempDir,
}

pub async fn world(rps: f64) -> World {
    world_on(rps, rollout_sandbox::exporter::Stack::default()).await
}

/// [`world`] with the sandbox exporting `stack`'s request metrics.
pub async fn world_on(rps: f64, stack: rollout_sandbox::exporter::Stack) -> World {
    assert!(
        rollout_sandbox::prometheus::which("prometheus").is_some(),
        "Prometheus is required: {}",
        rollout_sandbox::prometheus::INSTALL_HINT
    );
    let sandbox = Sandbox::start(Config {
        rps,
        ready_delay: Duration::from_millis(300),
        route_delay: Duration::from_millis(200),
        crds: vec![rollout_api::crd_json()],
        metrics: stack,
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

pub fn isvc_obj(uri: &str, canary: Option<u8>, annotations: Value) -> Value {
    isvc_named("sklearn-iris", uri, canary, annotations)
}

/// The InferenceService `name` in kserve-test.
pub fn isvc_named(name: &str, uri: &str, canary: Option<u8>, annotations: Value) -> Value {
    let mut predictor = json!({"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}});
    if let Some(p) = canary {
        predictor["canaryTrafficPercent"] = json!(p);
    }
    let mut ann = json!({"serving.kserve.io/deploymentMode": "Knative", "sandbox.rolloutctl.io/error-rate": "0.5%"});
    if let (Some(a), Some(extra)) = (ann.as_object_mut(), annotations.as_object()) {
        for (k, v) in extra {
            a.insert(k.clone(), v.clone());
        }
    }
    json!({"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
           "metadata": {"name": name, "namespace": "kserve-test", "annotations": ann},
           "spec": {"predictor": predictor}})
}

impl World {
    pub async fn apply(&self, obj: Value) {
        self.apply_to("sklearn-iris", obj).await;
    }

    /// Server-side applies the InferenceService `name`.
    pub async fn apply_to(&self, name: &str, obj: Value) {
        self.isvc
            .api
            .patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(obj))
            .await
            .expect("apply");
    }

    pub async fn wait_settled(&self, pct: u8) {
        self.wait_settled_of("sklearn-iris", pct).await;
    }

    /// Waits until the InferenceService `name` is ready with the canary at `pct`.
    pub async fn wait_settled_of(&self, name: &str, pct: u8) {
        let target = Isvc::new(self.client.clone(), "kserve-test", name);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(o) = target.get().await {
                let c = isvc::observe(&o, "predictor");
                if c.ready && c.observed && c.canary_percent == pct {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{name} not settled at {pct}%");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// v1 rolled out, v2 at 10%, and Prometheus has seen both for a few seconds.
    pub async fn canary(&self, v2_annotations: Value) {
        self.canary_of("sklearn-iris", v2_annotations).await;
    }

    /// [`World::canary`] for the InferenceService `name`.
    pub async fn canary_of(&self, name: &str, v2_annotations: Value) {
        self.apply_to(name, isvc_named(name, "gs://m/1", None, json!({})))
            .await;
        self.wait_settled_of(name, 100).await;
        self.apply_to(name, isvc_named(name, "gs://m/2", Some(10), v2_annotations))
            .await;
        self.wait_settled_of(name, 10).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }

    /// `rolloutctl controller` on this sandbox (leader Lease in kserve-test, metrics on a free
    /// loopback port, printed on standard error).
    pub fn controller(&self, holder: &str, extra: &[&str]) -> Runner {
        self.controller_via(Some(&self.prom), holder, extra)
    }

    /// [`World::controller`] with `prom` overriding the policies' Prometheus (none: each
    /// policy's own).
    pub fn controller_via(&self, prom: Option<&str>, holder: &str, extra: &[&str]) -> Runner {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rolloutctl"));
        cmd.arg("controller")
            .arg("--kubeconfig")
            .arg(&self.sandbox.kubeconfig);
        if let Some(p) = prom {
            cmd.arg("--prometheus-url").arg(p);
        }
        cmd.args(["--metrics-addr", "127.0.0.1:0"])
            .args(["--leader-election-namespace", "kserve-test"])
            .args(["--holder", holder])
            .args(extra)
            .env_remove("POD_NAMESPACE")
            .env_remove("POD_NAME")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Runner::spawn(cmd)
    }

    pub fn policy_file(&self, text: &str) -> PathBuf {
        let p = self
            .dir
            .path()
            .join(format!("p{}.rollout", fastrand::u32(..)));
        std::fs::write(&p, text).expect("write policy");
        p
    }

    pub fn run(&self, policy: &Path, extra: &[&str], env: &[(&str, &str)]) -> Runner {
        self.run_via(&self.prom, policy, extra, env)
    }

    /// `rolloutctl run` with another Prometheus URL (a proxy in front of the real one).
    pub fn run_via(
        &self,
        prom: &str,
        policy: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Runner {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rolloutctl"));
        cmd.arg("run")
            .arg(policy)
            .arg("--kubeconfig")
            .arg(&self.sandbox.kubeconfig)
            .arg("--prometheus-url")
            .arg(prom)
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

    /// `rolloutctl doctor` on `policy` against this sandbox and its Prometheus: its exit code
    /// and report.
    pub fn doctor(&self, policy: &Path) -> (Option<i32>, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_rolloutctl"))
            .arg("doctor")
            .arg(policy)
            .arg("--kubeconfig")
            .arg(&self.sandbox.kubeconfig)
            .arg("--prometheus-url")
            .arg(&self.prom)
            .output()
            .expect("rolloutctl doctor");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    pub fn rolloutctl(&self, args: &[&str]) -> std::process::Output {
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
    pub async fn failing_at_10_percent(&self, policy: &Path, after: Duration) -> (Runner, Instant) {
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

    pub async fn obj(&self) -> DynamicObject {
        self.isvc.get().await.expect("isvc")
    }

    /// Sets the canary's `canaryTrafficPercent` to `percent` as field manager `who` (someone
    /// by hand, a GitOps sync), then waits up to 10 s until a driver has put it back to
    /// `expected`: how long that took.
    pub async fn set_by_hand_until_restored(
        &self,
        who: &str,
        percent: i64,
        expected: i64,
    ) -> Duration {
        self.isvc
            .api
            .patch(
                "sklearn-iris",
                &PatchParams {
                    field_manager: Some(who.into()),
                    ..Default::default()
                },
                &Patch::Merge(json!({"spec": {"predictor": {"canaryTrafficPercent": percent}}})),
            )
            .await
            .expect("patch");
        let changed = Instant::now();
        let deadline = changed + Duration::from_secs(10);
        while spec_percent(&self.obj().await) != Some(expected) {
            assert!(Instant::now() < deadline, "not restored within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        changed.elapsed()
    }

    /// The note of the `OutOfBandTraffic` Event in kserve-test, waited for up to 5 s.
    pub async fn out_of_band_note(&self) -> String {
        let events: Api<k8s_openapi::api::events::v1::Event> =
            Api::namespaced(self.client.clone(), "kserve-test");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let list = events.list(&Default::default()).await.expect("events");
            if let Some(n) = list
                .items
                .iter()
                .find(|e| e.reason.as_deref() == Some("OutOfBandTraffic"))
                .and_then(|e| e.note.clone())
            {
                return n;
            }
            assert!(Instant::now() < deadline, "no OutOfBandTraffic Event");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The ModelRollout.
    pub async fn rollout(&self) -> ModelRollout {
        self.rollout_of("sklearn-iris").await
    }

    /// The ModelRollout `name`.
    pub async fn rollout_of(&self, name: &str) -> ModelRollout {
        let api: Api<ModelRollout> = Api::namespaced(self.client.clone(), "kserve-test");
        api.get(name).await.expect("ModelRollout")
    }

    /// Waits until the ModelRollout `name` is in `phase`.
    pub async fn until_phase(&self, name: &str, phase: &str, secs: u64) {
        let api: Api<ModelRollout> = Api::namespaced(self.client.clone(), "kserve-test");
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let now = api.get_opt(name).await.ok().flatten();
            let got = now
                .as_ref()
                .and_then(|m| m.status.as_ref())
                .and_then(|s| s.phase.clone());
            if got.as_deref() == Some(phase) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} not {phase} within {secs}s (now {got:?})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Client writes to the InferenceService so far.
    pub fn isvc_writes(&self) -> u64 {
        self.sandbox
            .writes(ids::ISVC, "kserve-test", "sklearn-iris")
    }

    /// Records every `canaryTrafficPercent` the InferenceService is given, until dropped.
    pub fn record_traffic(&self) -> TrafficLog {
        self.record_traffic_of("sklearn-iris")
    }

    /// [`World::record_traffic`] for the InferenceService `name`.
    pub fn record_traffic_of(&self, name: &str) -> TrafficLog {
        let key = rollout_sandbox::store::Key::new(ids::ISVC, "kserve-test", name);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        // Every stored change, from the store's own event stream: a value that lived for a
        // millisecond (traffic set by hand and restored at once) is recorded too.
        let (mut rx, now) = {
            let s = rollout_sandbox::lock(self.sandbox.app());
            (s.store.subscribe(), s.store.get(&key).ok())
        };
        let percent =
            |o: &serde_json::Value| o["spec"]["predictor"]["canaryTrafficPercent"].as_i64();
        let push = move |v: Option<i64>| {
            if let Some(v) = v {
                let mut s = s2.lock().expect("lock");
                if s.last() != Some(&v) {
                    s.push(v);
                }
            }
        };
        push(now.as_ref().and_then(percent));
        let task = tokio::spawn(async move {
            loop {
                match rx.recv().await {
                    Ok(ev) if ev.key == key => push(percent(&ev.object)),
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        panic!("the traffic log lagged {n} store events behind")
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        TrafficLog { seen, task }
    }
}

/// The `canaryTrafficPercent` values given, in order.
pub struct TrafficLog {
    seen: Arc<Mutex<Vec<i64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TrafficLog {
    pub fn values(&self) -> Vec<i64> {
        assert!(
            !self.task.is_finished(),
            "the traffic log stopped (it lagged behind the store's events)"
        );
        self.seen.lock().expect("lock").clone()
    }
}

impl Drop for TrafficLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A running `rolloutctl run`, its decision records collected as they come.
pub struct Runner {
    pub child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
    pub stderr: Arc<Mutex<String>>,
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
    pub async fn until(&self, secs: u64, what: &str, f: impl Fn(&Value) -> bool) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if self.lines.lock().expect("lock").iter().any(&f) {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the process to exit (bounded); returns its exit code.
    pub async fn exit(&mut self, secs: u64) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                return status.code().unwrap_or(-1);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let lines = self.decisions();
                let last: Vec<String> = lines
                    .iter()
                    .rev()
                    .take(5)
                    .rev()
                    .map(Value::to_string)
                    .collect();
                panic!(
                    "rolloutctl run did not exit within {secs}s; last decisions:\n{}\nstderr:\n{}",
                    last.join("\n"),
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn decisions(&self) -> Vec<Value> {
        self.lines.lock().expect("lock").clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("lock").clone()
    }

    /// Sends a signal (SIGKILL, SIGTERM, SIGSTOP, SIGCONT) to the process.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status();
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn to(phase: &'static str) -> impl Fn(&Value) -> bool {
    move |d| d["to"] == phase
}

pub fn spec_percent(o: &DynamicObject) -> Option<i64> {
    o.data
        .pointer("/spec/predictor/canaryTrafficPercent")
        .and_then(Value::as_i64)
}

pub fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A plain HTTP/1.0 GET of a loopback URL; the body.
pub async fn http_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    s.write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out).to_string();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Instant queries Prometheus has answered so far (its own `prometheus_http_requests_total`).
pub async fn prometheus_queries(prom: &str) -> u64 {
    let body = http_get(&format!("{prom}/metrics")).await;
    body.lines()
        .filter(|l| {
            l.starts_with("prometheus_http_requests_total{")
                && l.contains("handler=\"/api/v1/query\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
