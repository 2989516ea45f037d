use std::time::{Duration, Instant};

use kube::api::{Api, Patch, PatchParams};
use rollout_api::ModelRollout;
use rollout_engine::Outcome;
use rollout_runner::isvc::{self, Isvc};
use rollout_runner::{RunConfig, RunEnd};
use rollout_sandbox::types::ids;
use rollout_sandbox::{Config, Sandbox};
use serde_json::{Value, json};

use super::Exit;
use crate::cli::DemoArgs;
use crate::live::Live;

const POLICY: &str = include_str!("../../../../policies/demo-fast.rollout");

fn isvc_obj(uri: &str, error_rate: &str, canary: Option<u8>) -> Value {
    let mut predictor = json!({"model": {"modelFormat": {"name": "sklearn"}, "storageUri": uri}});
    if let Some(p) = canary {
        predictor["canaryTrafficPercent"] = json!(p);
    }
    json!({
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": "sklearn-iris", "namespace": "kserve-test",
                     "annotations": {"serving.kserve.io/deploymentMode": "Knative", "sandbox.rolloutctl.io/error-rate": error_rate}},
        "spec": {"predictor": predictor},
    })
}

async fn deploy(target: &Isvc, obj: Value, want_percent: u8, what: &str) -> Result<(), String> {
    target
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
        if let Ok(o) = target.get().await {
            let c = isvc::observe(&o, "predictor");
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

/// `kubectl get modelrollouts`, as its printer columns show it.
async fn show_rollouts(client: &kube::Client) {
    let api: Api<ModelRollout> = Api::namespaced(client.clone(), "kserve-test");
    let Ok(list) = api.list(&Default::default()).await else {
        return;
    };
    println!("\n   $ kubectl get modelrollouts -n kserve-test");
    println!(
        "   {:<14}{:<14}{:<6}{:<9}{:<32}STABLE",
        "NAME", "PHASE", "STEP", "TRAFFIC", "CANARY"
    );
    for mr in list.items {
        let s = mr.status.unwrap_or_default();
        println!(
            "   {:<14}{:<14}{:<6}{:<9}{:<32}{}",
            mr.metadata.name.unwrap_or_default(),
            s.phase.unwrap_or_default(),
            s.step_progress.unwrap_or_default(),
            s.traffic.map(|t| t.to_string()).unwrap_or_default(),
            s.canary_revision.unwrap_or_default(),
            s.stable_revision.unwrap_or_default()
        );
    }
}

fn revision_facts(sandbox: &Sandbox) -> (Value, Value, String) {
    let o = sandbox
        .isvc("kserve-test", "sklearn-iris")
        .unwrap_or_default();
    (
        o["metadata"]["annotations"].clone(),
        o["metadata"]["labels"].clone(),
        o["status"]["components"]["predictor"]["latestCreatedRevision"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    )
}

pub fn run(args: &DemoArgs) -> Exit {
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => return e,
    };
    rt.block_on(async {
        let started = Instant::now();
        let config = Config { rps: 50.0, crds: vec![rollout_api::crd_json()], ..Config::default() };
        let sandbox = match Sandbox::start(config).await {
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
            deploy(&target, isvc_obj("gs://kfserving-examples/models/sklearn/1.0/model", "0.5%", None), 100, "v1").await?;
            let mut outcomes = Vec::new();
            for (label, uri, errors, expect) in [
                ("v2, a healthy canary", "gs://kfserving-examples/models/sklearn/1.0/model-2", "0.5%", Outcome::Promoted),
                ("v3, a bad canary (10% of its requests fail)", "gs://kfserving-examples/models/sklearn/1.0/model-3", "10%", Outcome::RolledBack),
            ] {
                println!("\n== deploying {label} at 10%, then `rolloutctl run policies/demo-fast.rollout`\n");
                deploy(&target, isvc_obj(uri, errors, Some(10)), 10, label).await?;
                // Let Prometheus scrape the new revision a few times.
                tokio::time::sleep(Duration::from_secs(3)).await;
                let before = revision_facts(&sandbox);
                let writes_before = sandbox.writes(ids::ISVC, "kserve-test", "sklearn-iris");
                let t0 = Instant::now();
                let mut view = Live::new();
                let cfg = RunConfig {
                    text: POLICY.to_string(),
                    policy: policy.clone(),
                    prometheus_url: Some(prom.clone()),
                    dry_run: false,
                    holder: "rolloutctl-demo".into(),
                    wait_for_lease: false,
                    lease_duration: Duration::from_secs(15),
                    on_decision: Box::new(move |d| view.show(d)),
                };
                let end = rollout_runner::run::run(client.clone(), cfg).await;
                let took = t0.elapsed().as_secs_f64();
                let after = revision_facts(&sandbox);
                let writes = sandbox.writes(ids::ISVC, "kserve-test", "sklearn-iris") - writes_before;
                match end {
                    RunEnd::Outcome(o, _) => {
                        println!("\n   → {} in {took:.0}s (expected: {})", o.as_str(), expect.as_str());
                        println!(
                            "   the InferenceService was written {writes} times (canaryTrafficPercent only); its annotations and labels are {}, its latest revision is still {}",
                            if (&before.0, &before.1) == (&after.0, &after.1) { "unchanged" } else { "CHANGED" },
                            after.2
                        );
                        if before.2 != after.2 {
                            return Err(format!("the rollout created revision {} (was {})", after.2, before.2));
                        }
                        outcomes.push((o, expect));
                    }
                    RunEnd::Refused(why) | RunEnd::DrivenByController(why) => return Err(why),
                    RunEnd::Interrupted(_) => return Err("interrupted".into()),
                    RunEnd::TargetGone(why) => return Err(why),
                }
                show_rollouts(&client).await;
            }
            Ok::<_, String>(outcomes)
        }
        .await;
        let exit = match result {
            Ok(outcomes) if outcomes.iter().all(|(o, e)| o == e) => {
                println!("\n== done in {:.0}s: v2 promoted, v3 rolled back; `rolloutctl status sklearn-iris -n kserve-test` shows the history", started.elapsed().as_secs_f64());
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
            println!("\nthe sandbox keeps running; export KUBECONFIG={} and try `kubectl get isvc,modelrollouts -n kserve-test`; Ctrl-C stops it", sandbox.kubeconfig.display());
            let _ = tokio::signal::ctrl_c().await;
        }
        sandbox.shutdown().await;
        exit
    })
}
