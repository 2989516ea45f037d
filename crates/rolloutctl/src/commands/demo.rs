use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use rollout_engine::Outcome;
use rollout_runner::cluster::{self, Isvc};
use rollout_runner::{RunConfig, RunEnd};
use rollout_sandbox::{Config, Sandbox};
use serde_json::{Value, json};

use super::Exit;
use crate::cli::DemoArgs;
use crate::live::Live;

const POLICY: &str = include_str!("../../../../policies/demo-fast.rollout");

fn isvc(uri: &str, error_rate: &str, canary: Option<u8>) -> Value {
    let mut predictor = json!({"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}});
    if let Some(p) = canary {
        predictor["canaryTrafficPercent"] = json!(p);
    }
    json!({
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "sklearn-iris", "namespace": "kserve-test",
                     "annotations": {"serving.kserve.io/deploymentMode": "Serverless", "sandbox.rolloutctl.io/error-rate": error_rate}},
        "spec": {"predictor": predictor},
    })
}

async fn deploy(isvc_api: &Isvc, obj: Value, want_percent: u8, what: &str) -> Result<(), String> {
    isvc_api
        .api
        .patch(
            "sklearn-iris",
            &PatchParams::apply("rolloutctl-demo").force(),
            &Patch::Apply(obj),
        )
        .await
        .map_err(|e| format!("cannot deploy {what}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(o) = isvc_api.get(3).await {
            let c = cluster::observe(&o, "predictor");
            if c.ready && c.observed && c.canary_percent == want_percent {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!("{what} did not become ready within 30s"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn run(args: &DemoArgs) -> Exit {
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => return e,
    };
    rt.block_on(async {
        let started = Instant::now();
        let sandbox = match Sandbox::start(Config { rps: 50.0, ..Config::default() }).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot start the sandbox: {e}");
                return Exit::Failed;
            }
        };
        let Some(prom) = sandbox.prometheus.as_ref().map(|p| p.url.clone()) else {
            eprintln!("error: the demo needs Prometheus: {}", sandbox.prometheus_note.clone().unwrap_or_default());
            eprintln!("       {}", rollout_sandbox::prometheus::INSTALL_HINT);
            sandbox.shutdown().await;
            return Exit::Failed;
        };
        println!("== sandbox: Kubernetes API {}, Prometheus {prom}", sandbox.api_url);
        println!("   kubeconfig {}", sandbox.kubeconfig.display());
        let client = match rollout_runner::client(Some(&sandbox.kubeconfig), None).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: {e}");
                return Exit::Failed;
            }
        };
        let target = Isvc::new(client.clone(), "kserve-test", "sklearn-iris");
        let checked = rollout_policy::check_source(&rollout_diagnostics::SourceFile::new("policies/demo-fast.rollout", POLICY));
        let Some(policy) = checked.policy else {
            eprintln!("error: the demo policy does not check");
            return Exit::Problems;
        };
        let result = async {
            println!("\n== deploying sklearn-iris v1 (revision 00001)");
            deploy(&target, isvc("gs://kfserving-examples/models/sklearn/1.0/model", "0.5%", None), 100, "v1").await?;
            let mut outcomes = Vec::new();
            for (label, uri, errors, expect) in [
                ("v2, a healthy canary", "gs://kfserving-examples/models/sklearn/1.0/model-2", "0.5%", Outcome::Promoted),
                ("v3, a bad canary (10% of its requests fail)", "gs://kfserving-examples/models/sklearn/1.0/model-3", "10%", Outcome::RolledBack),
            ] {
                println!("\n== deploying {label} at 10%, then `rolloutctl run policies/demo-fast.rollout`\n");
                deploy(&target, isvc(uri, errors, Some(10)), 10, label).await?;
                // Let Prometheus scrape the new revision a few times.
                tokio::time::sleep(Duration::from_secs(3)).await;
                let t0 = Instant::now();
                let mut view = Live::new();
                let cfg = RunConfig {
                    policy: policy.clone(),
                    policy_hash: rollout_runner::policy_hash(POLICY),
                    prometheus_url: Some(prom.clone()),
                    dry_run: false,
                    holder: "rolloutctl-demo".into(),
                    wait_for_lease: false,
                    on_decision: Box::new(move |d| view.show(d)),
                };
                let end = rollout_runner::run(client.clone(), cfg).await;
                let took = t0.elapsed().as_secs_f64();
                match end {
                    RunEnd::Outcome(o) => {
                        println!("\n   → {} in {took:.0}s (expected: {})", o.as_str(), expect.as_str());
                        outcomes.push((o, expect));
                    }
                    RunEnd::Refused(why) => return Err(why),
                }
            }
            Ok::<_, String>(outcomes)
        }
        .await;
        let exit = match result {
            Ok(outcomes) if outcomes.iter().all(|(o, e)| o == e) => {
                println!("\n== done in {:.0}s: v2 promoted, v3 rolled back", started.elapsed().as_secs_f64());
                Exit::Ok
            }
            Ok(_) => {
                eprintln!("\nerror: the demo did not end as expected");
                Exit::Failed
            }
            Err(e) => {
                eprintln!("error: {e}");
                Exit::Failed
            }
        };
        if args.keep {
            println!("\nthe sandbox keeps running; export KUBECONFIG={} and try `kubectl get isvc`; Ctrl-C stops it", sandbox.kubeconfig.display());
            let _ = tokio::signal::ctrl_c().await;
        }
        sandbox.shutdown().await;
        exit
    })
}
