use std::time::Duration;

use rollout_sandbox::{Config, Sandbox};

use super::Exit;
use crate::cli::SandboxArgs;

pub fn run(args: &SandboxArgs) -> Exit {
    let rt = match super::runtime() {
        Ok(rt) => rt,
        Err(e) => return e,
    };
    rt.block_on(async {
        let config = Config {
            api_port: args.api_port,
            exporter_port: args.exporter_port,
            rps: args.rps,
            ready_delay: Duration::from_secs_f64(args.ready_delay.max(0.0)),
            prometheus: !args.no_prometheus,
            dir: args.dir.clone(),
            crds: vec![rollout_api::crd_json()],
            analytic: args.analytic,
            tick: if args.analytic {
                Duration::from_secs(1)
            } else {
                Duration::from_millis(100)
            },
            scrape_interval_s: args.scrape_interval.clamp(1, 60),
            metrics: rollout_sandbox::exporter::Stack::parse(&args.metrics).unwrap_or_default(),
            ..Config::default()
        };
        let sandbox = match Sandbox::start(config).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot start the sandbox: {e}");
                return Exit::Usage;
            }
        };
        let kc = sandbox.kubeconfig.display().to_string();
        println!("rolloutctl sandbox is running (Ctrl-C stops everything)\n");
        println!("  Kubernetes API   {}", sandbox.api_url);
        println!("  kubeconfig       {kc}");
        println!(
            "  metrics          {}/metrics ({}; `use {}` in a policy)",
            sandbox.exporter_url,
            args.metrics,
            preset_for(&args.metrics)
        );
        println!("  predict          {}/v1/models/sklearn-iris:predict", sandbox.exporter_url);
        match (&sandbox.prometheus, &sandbox.prometheus_note) {
            (Some(p), _) => println!("  Prometheus       {}", p.url),
            (None, Some(note)) => println!("  Prometheus       not started: {note}"),
            (None, None) => {}
        }
        println!("\nTry:");
        println!("  export KUBECONFIG={kc}");
        println!("  kubectl apply -f examples/kserve/sklearn-iris-v1.yaml");
        println!("  kubectl get isvc");
        println!("  kubectl get modelrollouts      # the ModelRollout CRD is installed, as on a cluster with rolloutctl");
        println!("  kubectl apply -f examples/kserve/sklearn-iris-v2.yaml");
        println!("  kubectl patch isvc sklearn-iris --type=merge -p '{{\"spec\":{{\"predictor\":{{\"canaryTrafficPercent\":25}}}}}}'");
        println!("  curl -s -X POST {}/v1/models/sklearn-iris:predict -d '{{\"instances\":[[6.8,2.8,4.8,1.4]]}}'", sandbox.exporter_url);
        if let Some(p) = &sandbox.prometheus {
            println!(
                "  curl -s '{}/api/v1/query' --data-urlencode 'query={}'",
                p.url,
                rps_query(&args.metrics)
            );
        }
        let _ = tokio::signal::ctrl_c().await;
        println!("\nstopping…");
        sandbox.shutdown().await;
        Exit::Ok
    })
}

/// The policy preset that reads a stack's metrics.
fn preset_for(stack: &str) -> &'static str {
    match stack {
        "knative-1.21-otlp" => "knative_otlp",
        "knative-1.19" => "knative_1_19",
        "knative-1.18" => "knative_1_18",
        "istio" => "istio",
        _ => "knative",
    }
}

/// Requests per second by revision, in a stack's names.
fn rps_query(stack: &str) -> &'static str {
    match stack {
        "knative-1.21-otlp" => {
            "sum by (kn_revision_name) (rate(kn_serving_invocation_duration_seconds_count[30s]))"
        }
        "knative-1.19" => {
            "sum by (kn_revision_name) (rate(kn_queueproxy_app_duration_seconds_count[30s]) * on (job, instance) group_left (kn_revision_name) target_info)"
        }
        "knative-1.18" => "sum by (revision_name) (rate(revision_app_request_count[30s]))",
        "istio" => {
            "sum by (destination_workload) (rate(istio_requests_total{reporter=\"destination\"}[30s]))"
        }
        _ => {
            "sum by (kn_revision_name) (rate(kn_serving_invocation_duration_seconds_count[30s]) * on (job, instance) group_left (kn_revision_name) target_info)"
        }
    }
}
