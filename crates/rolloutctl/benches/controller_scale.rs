//! The controller at fleet scale: N InferenceServices with a canary at 10% in the sandbox (its
//! analytic data plane), a real Prometheus scraping them, N ModelRollouts at a 10 s evaluation
//! interval, and `rolloutctl controller` as its own process. Reports, per size: the
//! controller's RSS and CPU share, Prometheus queries per second and per evaluation interval,
//! API writes per rollout per hour, the delay between a rollout's due time and its reconcile
//! (p50/p95), and how long one breaching canary among them takes to be rolled back.
//!
//! `cargo bench -p rolloutctl --bench controller_scale -- 100 1000 10000` (sizes as arguments;
//! `scripts/bench-controller` runs it). Measured numbers go to docs/performance.md.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use rollout_api::ModelRollout;
use rollout_runner::isvc::{self, Isvc};
use rollout_sandbox::{Config, RevisionControl, Sandbox};
use serde_json::{Value, json};

const NAMESPACES: usize = 10;
const INTERVAL_S: u64 = 10;
const SCRAPE_S: u64 = 5;
/// How long each size is measured once every rollout holds.
const MEASURE: Duration = Duration::from_secs(60);

/// From this size on, the sandbox exports no latency histogram and the policy has no latency
/// rule: 20,000 revisions' histograms (540,000 series every 5 s) saturate this machine's
/// Prometheus, and the bench would measure Prometheus, not the controller.
const COUNTS_ONLY_FROM: usize = 5000;

fn policy(ns: &str, name: &str, prom: &str, latency: bool) -> String {
    let slow = if latency {
        "  rule Slow {\n    when canary.latency_p95 > 3 * stable.latency_p95 and canary.latency_p95 > 1s\n    require canary.requests >= 20\n    action rollback\n  }\n"
    } else {
        ""
    };
    format!(
        r#"rollout "{name}" {{
  target {{
    name = "{name}"
    namespace = "{ns}"
  }}
  prometheus {{
    url = "{prom}"
    scrape_interval = {SCRAPE_S}s
    timeout = 10s
  }}
  evaluation {{
    interval = {INTERVAL_S}s
    window = 30s
    deadline = 4h
    stale_after = 60s
    settle_timeout = 10m
  }}
  use knative
  rule CanaryErrors {{
    when canary.error_rate > 5%
    require canary.requests >= 20
    action rollback
  }}
{slow}  on no_data hold 2m then rollback
  on stale_data hold 2m then rollback
  on query_error hold 2m then rollback
  on inconclusive hold 10m then rollback
  steps {{
    traffic 10%
    hold 2h
    promote
  }}
}}
"#
    )
}

fn isvc(ns: &str, name: &str, uri: &str, canary: Option<u8>) -> Value {
    let mut predictor = json!({"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}});
    if let Some(p) = canary {
        predictor["canaryTrafficPercent"] = json!(p);
    }
    json!({"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
           "metadata": {"name": name, "namespace": ns,
                        "annotations": {"serving.kserve.io/deploymentMode": "Knative"}},
           "spec": {"predictor": predictor}})
}

/// (utime + stime in seconds, RSS MiB, peak RSS MiB) of a process.
fn proc_usage(pid: u32) -> (f64, f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; index 11 and 12 after the name.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (cpu, kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// The body of `GET http://<addr>/metrics` (empty when it cannot be read).
async fn get(addr: &str) -> String {
    rollout_sandbox::prometheus::http_get(addr, "/metrics")
        .await
        .map(|(_, body)| body)
        .unwrap_or_default()
}

fn series_value(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The cumulative buckets of a histogram: (upper bound, count).
fn buckets(metrics: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, v) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v.trim().parse().ok()?))
        })
        .collect()
}

/// A quantile of the observations between two snapshots of a histogram (linear within a bucket).
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let d: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let b = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, n)| *n);
            (*le, n - b)
        })
        .collect();
    let total = d.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let want = q * total;
    let mut lo = (0.0, 0.0);
    for (le, n) in &d {
        if *n >= want {
            if le.is_infinite() {
                return Some(lo.0);
            }
            let frac = if n - lo.1 > 0.0 {
                (want - lo.1) / (n - lo.1)
            } else {
                1.0
            };
            return Some(lo.0 + frac * (le - lo.0));
        }
        lo = (*le, *n);
    }
    None
}

struct Controller {
    child: Child,
    metrics: String,
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
    }
}

fn holding(metrics: &str) -> usize {
    metrics
        .lines()
        .filter(|l| l.starts_with("rolloutctl_rollout_info{") && l.contains("phase=\"holding\""))
        .count()
}

async fn size(n: usize) -> Result<String, String> {
    let latency = n < COUNTS_ONLY_FROM;
    let sandbox = Sandbox::start(Config {
        latency_histograms: latency,
        rps: 20.0,
        ready_delay: Duration::ZERO,
        route_delay: Duration::from_millis(100),
        crds: vec![rollout_api::crd_json()],
        analytic: true,
        tick: Duration::from_secs(1),
        scrape_interval_s: SCRAPE_S,
        ..Config::default()
    })
    .await
    .map_err(|e| format!("sandbox: {e}"))?;
    let prom = sandbox
        .prometheus
        .as_ref()
        .map(|p| p.url.clone())
        .ok_or_else(|| format!("Prometheus: {:?}", sandbox.prometheus_note))?;
    let client = rollout_runner::client(Some(&sandbox.kubeconfig), None).await?;
    let namespaces: Vec<String> = (0..NAMESPACES).map(|i| format!("fleet-{i}")).collect();
    let nsapi: Api<Namespace> = Api::all(client.clone());
    for ns in &namespaces {
        let obj: Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns}})).map_err(|e| e.to_string())?;
        nsapi
            .create(&PostParams::default(), &obj)
            .await
            .map_err(|e| format!("namespace {ns}: {e}"))?;
    }
    let targets: Vec<(String, String)> = (0..n)
        .map(|i| (namespaces[i % NAMESPACES].clone(), format!("model-{i}")))
        .collect();
    let t_setup = Instant::now();
    let apply = |uri: &'static str, canary: Option<u8>| {
        let client = client.clone();
        futures_util::stream::iter(targets.clone())
            .map(move |(ns, name)| {
                let api = Isvc::new(client.clone(), &ns, &name).api;
                async move {
                    api.patch(
                        &name,
                        &PatchParams::apply("bench").force(),
                        &Patch::Apply(isvc(&ns, &name, uri, canary)),
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("{ns}/{name}: {e}"))
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
    };
    let settled = |pct: u8| {
        let deadline = Instant::now() + Duration::from_secs(600);
        let sandbox = &sandbox;
        let targets = &targets;
        async move {
            loop {
                let missing = targets
                    .iter()
                    .filter(|(ns, name)| {
                        let Some(v) = sandbox.isvc(ns, name) else {
                            return true;
                        };
                        let Ok(o) = serde_json::from_value::<DynamicObject>(v) else {
                            return true;
                        };
                        let c = isvc::observe(&o, "predictor");
                        !(c.ready && c.observed && c.canary_percent == pct)
                    })
                    .count();
                if missing == 0 {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err(format!("{missing} InferenceServices not settled at {pct}%"));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    for r in apply("gs://m/1", None).await {
        r?;
    }
    settled(100).await?;
    for r in apply("gs://m/2", Some(10)).await {
        r?;
    }
    settled(10).await?;
    // Two scrapes of both revisions before the rollouts start.
    tokio::time::sleep(Duration::from_secs(2 * SCRAPE_S + 1)).await;
    let policies: Vec<_> = targets
        .iter()
        .map(|(ns, name)| {
            let text = policy(ns, name, &prom, latency);
            let p = rollout_runner::policy::check(&format!("{name}.rollout"), &text)
                .map_err(|e| format!("the bench policy for {ns}/{name}: {e}"))?;
            Ok::<_, String>((ns.clone(), name.clone(), p, text))
        })
        .collect::<Result<_, _>>()?;
    let created = futures_util::stream::iter(policies)
        .map(|(ns, name, p, text)| {
            let client = client.clone();
            async move {
                let owner = Isvc::new(client.clone(), &ns, &name)
                    .get()
                    .await
                    .map_err(|e| e.to_string())?;
                let api: Api<ModelRollout> = Api::namespaced(client, &ns);
                api.patch(
                    &name,
                    &PatchParams::apply("bench").force(),
                    &Patch::Apply(rollout_runner::run::desired(&p, &text, &owner)),
                )
                .await
                .map(|_| ())
                .map_err(|e| format!("ModelRollout {ns}/{name}: {e}"))
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    for r in created {
        r?;
    }
    let setup_s = t_setup.elapsed().as_secs_f64();

    let port = rollout_sandbox::prometheus::free_port().map_err(|e| e.to_string())?;
    let log = std::fs::File::create(std::env::temp_dir().join(format!("bench-controller-{n}.log")))
        .map_err(|e| e.to_string())?;
    // `BENCH_CONTROLLER_PREFIX="heaptrack -o /tmp/ht"` runs the controller under a profiler
    // (its RSS and CPU columns then measure the profiler too).
    let prefix = std::env::var("BENCH_CONTROLLER_PREFIX").unwrap_or_default();
    let mut words: Vec<String> = prefix.split_whitespace().map(str::to_string).collect();
    words.push(env!("CARGO_BIN_EXE_rolloutctl").to_string());
    let child = Command::new(&words[0])
        .args(&words[1..])
        .args(["controller", "--leader-election-namespace", "fleet-0"])
        // `BENCH_CONTROLLER_ARGS="--concurrency 128"`: other settings than the defaults.
        .args(
            std::env::var("BENCH_CONTROLLER_ARGS")
                .unwrap_or_default()
                .split_whitespace(),
        )
        .arg("--metrics-addr")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--kubeconfig")
        .arg(&sandbox.kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("rolloutctl controller: {e}"))?;
    let ctl = Controller {
        child,
        metrics: format!("127.0.0.1:{port}"),
    };
    let pid = ctl.child.id();
    let t_start = Instant::now();
    let deadline = t_start + Duration::from_secs(900);
    loop {
        let m = get(&ctl.metrics).await;
        if holding(&m) == n {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {n} rollouts holding after 900 s",
                holding(&m)
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let start_s = t_start.elapsed().as_secs_f64();
    // One interval to settle, then the measurement.
    tokio::time::sleep(Duration::from_secs(INTERVAL_S)).await;
    let agent = "rolloutctl-controller";
    let writes = |s: &Sandbox| -> u64 {
        ["POST", "PUT", "PATCH", "DELETE"]
            .iter()
            .map(|m| s.request_count(agent, m))
            .sum()
    };
    let reads = |s: &Sandbox| s.request_count(agent, "GET");
    let m0 = get(&ctl.metrics).await;
    let (cpu0, _, _) = proc_usage(pid);
    let (w0, r0) = (writes(&sandbox), reads(&sandbox));
    let t0 = Instant::now();
    let mut rss_max: f64 = 0.0;
    while t0.elapsed() < MEASURE {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_max = rss_max.max(proc_usage(pid).1);
    }
    let secs = t0.elapsed().as_secs_f64();
    let m1 = get(&ctl.metrics).await;
    let (cpu1, rss, hwm) = proc_usage(pid);
    let (w1, r1) = (writes(&sandbox), reads(&sandbox));
    let q = "rolloutctl_prometheus_query_duration_seconds_count";
    let queries = series_value(&m1, q) - series_value(&m0, q);
    let qerr = series_value(&m1, "rolloutctl_prometheus_query_errors_total")
        - series_value(&m0, "rolloutctl_prometheus_query_errors_total");
    let delay = "rolloutctl_evaluation_delay_seconds";
    let (b0, b1) = (buckets(&m0, delay), buckets(&m1, delay));
    let p50 = quantile(&b0, &b1, 0.5);
    let p95 = quantile(&b0, &b1, 0.95);
    let evaluations = b1.last().map_or(0.0, |l| l.1) - b0.last().map_or(0.0, |l| l.1);
    let still = holding(&m1);
    // What one ModelRollout weighs (JSON bytes), the part the controller caches per rollout.
    {
        let (ns0, name0) = &targets[0];
        let api: Api<ModelRollout> = Api::namespaced(client.clone(), ns0);
        if let Ok(mr) = api.get(name0).await {
            let v = serde_json::to_value(&mr).unwrap_or_default();
            let size = |v: &Value| serde_json::to_string(v).map_or(0, |t| t.len());
            let mut parts: Vec<String> = Vec::new();
            for (k, x) in v["status"].as_object().into_iter().flatten() {
                parts.push(format!("status.{k} {}", size(x)));
            }
            eprintln!(
                "<!-- ModelRollout {ns0}/{name0}: {} B JSON; spec {}; metadata {}; {} -->",
                size(&v),
                size(&v["spec"]),
                size(&v["metadata"]),
                parts.join(", ")
            );
        }
    }

    // One breach among them: the canary of model-0 becomes slow (p95 6 s), or, without the
    // latency histogram, fails every request (its 5xx series is new: `increase` needs two
    // scrapes of it).
    let (bns, bname) = &targets[0];
    let canary = format!("{bname}-predictor-00002");
    let breach = Instant::now();
    sandbox.set_revision(
        &canary,
        &if latency {
            RevisionControl {
                latency_p50_ms: Some(3000.0),
                latency_p95_ms: Some(6000.0),
                ..Default::default()
            }
        } else {
            RevisionControl {
                error_rate: Some(1.0),
                ..Default::default()
            }
        },
    );
    let rollback_s = loop {
        let pct = sandbox.isvc(bns, bname).and_then(|v| {
            v.pointer("/spec/predictor/canaryTrafficPercent")
                .and_then(Value::as_i64)
        });
        if pct == Some(0) {
            break Some(breach.elapsed().as_secs_f64());
        }
        if breach.elapsed() > Duration::from_secs(120) {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(ctl);
    sandbox.shutdown().await;
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    Ok(format!(
        "| {n}{} | {setup_s:.0} | {start_s:.0} | {rss:.0} ({hwm:.0} peak) | {:.1}% | {:.1} | {:.1} | {qerr:.0} | {:.1} | {:.1} | {} | {} | {:.0} | {} |\n\
         <!-- n={n} measured {secs:.1}s: queries {queries}, due reconciles {evaluations}, holding {still}, writes {}, reads {}, rss max {rss_max:.0} -->",
        if latency { "" } else { " (counts only)" },
        100.0 * (cpu1 - cpu0) / secs,
        queries / secs,
        queries / secs * INTERVAL_S as f64,
        (w1 - w0) as f64 / n as f64 * 3600.0 / secs,
        (r1 - r0) as f64 / n as f64 * 3600.0 / secs,
        fmt(p50),
        fmt(p95),
        evaluations / secs * INTERVAL_S as f64,
        fmt(rollback_s),
        w1 - w0,
        r1 - r0,
    ))
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() { vec![100] } else { sizes };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "| rollouts | setup s | all holding after s | controller RSS MiB | controller CPU | queries/s | queries per 10 s interval | query errors | API writes per rollout-hour | API reads per rollout-hour | eval delay p50 s | eval delay p95 s | due reconciles per interval | breach to rollback s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for n in sizes {
        match rt.block_on(size(n)) {
            Ok(row) => println!("{row}"),
            Err(e) => println!("| {n} | failed: {e} |"),
        }
    }
}
