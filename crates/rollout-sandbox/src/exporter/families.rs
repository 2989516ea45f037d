//! Each stack's series families, line by line as its exporter writes them (the sources are
//! cited in [`super`]).

use std::fmt::Write as _;

use super::{Pod, Revision, Stack, histogram, labels};

pub(super) fn knative_118(out: &mut String, revisions: &[Revision<'_>], counts_only: bool) {
    let bounds = Stack::Knative118.bounds_ms();
    let series = |r: &Revision<'_>, code: u16| {
        let pod = r.pod;
        let instance = pod.instance(9091);
        let config = format!("{}-predictor", r.isvc);
        let code_s = code.to_string();
        let class = format!("{}xx", code / 100);
        labels(&[
            ("configuration_name", &config),
            ("container_name", "queue-proxy"),
            ("instance", &instance),
            ("job", "queue-proxy"),
            ("namespace_name", r.ns),
            ("pod_name", &pod.name),
            ("response_code", &code_s),
            ("response_code_class", &class),
            ("revision_name", r.name),
            ("service_name", &config),
        ])
    };
    out.push_str(
        "# HELP revision_app_request_count The number of requests that are routed to user-container\n# TYPE revision_app_request_count counter\n",
    );
    for r in revisions {
        for (code, c) in &r.codes {
            let _ = writeln!(
                out,
                "revision_app_request_count{{{}}} {}",
                series(r, *code),
                c.count
            );
        }
    }
    if counts_only {
        return;
    }
    out.push_str(
        "# HELP revision_app_request_latencies The response time in millisecond\n# TYPE revision_app_request_latencies histogram\n",
    );
    for r in revisions {
        for (code, c) in &r.codes {
            histogram(
                out,
                "revision_app_request_latencies",
                &series(r, *code),
                &bounds,
                c,
                1.0,
                false,
            );
        }
    }
}

/// The queue-proxy's resource, as `(attribute, value)` pairs with escaped names, sorted.
fn resource(r: &Revision<'_>, pod: &Pod) -> Vec<(&'static str, String)> {
    let svc = format!("{}-predictor", r.isvc);
    vec![
        ("k8s_container_name", "queue-proxy".to_string()),
        ("k8s_namespace_name", r.ns.to_string()),
        ("k8s_pod_name", pod.name.clone()),
        ("kn_configuration_name", svc.clone()),
        ("kn_revision_name", r.name.to_string()),
        ("kn_service_name", svc.clone()),
        ("service_instance_id", pod.name.clone()),
        ("service_name", svc),
        ("service_version", "unknown".to_string()),
        ("telemetry_sdk_language", "go".to_string()),
        ("telemetry_sdk_name", "opentelemetry".to_string()),
        ("telemetry_sdk_version", "1.39.0".to_string()),
    ]
}

pub(super) fn otel(out: &mut String, stack: Stack, revisions: &[Revision<'_>], counts_only: bool) {
    let bounds = stack.bounds_ms();
    let family = if stack == Stack::Knative119 {
        "kn_queueproxy_app_duration_seconds"
    } else {
        "kn_serving_invocation_duration_seconds"
    };
    let otlp = stack == Stack::Knative121Otlp;
    let _ = writeln!(
        out,
        "# HELP {family} The duration of task execution\n# TYPE {family} histogram"
    );
    for r in revisions {
        let pod = r.pod;
        let instance = pod.instance(9091);
        let res = resource(r, pod);
        for (code, c) in &r.codes {
            let code_s = code.to_string();
            let l = if otlp {
                // The resource promoted onto every sample (minus telemetry_sdk_*, which
                // the promotion list does not name); `job`/`instance` from service.name and
                // service.instance.id.
                let svc = format!("{}-predictor", r.isvc);
                let mut pairs: Vec<(&str, &str)> = vec![
                    ("http_response_status_code", &code_s),
                    ("instance", &pod.name),
                    ("job", &svc),
                ];
                pairs.extend(
                    res.iter()
                        .filter(|(k, _)| !k.starts_with("telemetry_sdk"))
                        .map(|(k, v)| (*k, v.as_str())),
                );
                labels(&pairs)
            } else {
                // otel_scope_schema_url and otel_scope_version are empty, so Prometheus drops
                // them; they are left out here.
                labels(&[
                    ("http_response_status_code", &code_s),
                    ("instance", &instance),
                    ("job", "queue-proxy"),
                    ("otel_scope_name", "knative.dev/serving/pkg/queue"),
                ])
            };
            histogram(out, family, &l, &bounds, c, 0.001, counts_only);
        }
    }
    out.push_str("# HELP target_info Target metadata\n# TYPE target_info gauge\n");
    for r in revisions {
        let pod = r.pod;
        let instance = pod.instance(9091);
        let res = resource(r, pod);
        let svc = format!("{}-predictor", r.isvc);
        let mut pairs: Vec<(&str, &str)> = if otlp {
            vec![("instance", &pod.name), ("job", &svc)]
        } else {
            vec![("instance", &instance), ("job", "queue-proxy")]
        };
        pairs.extend(
            res.iter()
                // Over OTLP, target_info holds the resource minus what became job/instance.
                .filter(|(k, _)| !otlp || !matches!(*k, "service_name" | "service_instance_id"))
                .map(|(k, v)| (*k, v.as_str())),
        );
        let _ = writeln!(out, "target_info{{{}}} 1", labels(&pairs));
    }
}

pub(super) fn istio(out: &mut String, revisions: &[Revision<'_>], counts_only: bool) {
    let bounds = Stack::Istio.bounds_ms();
    let series = |r: &Revision<'_>, code: u16| {
        let instance = r.pod.instance(15020);
        // Knative's revision Service is `<revision>-private`; a Standard predictor's Service
        // is its Deployment's name, its pods' `app` label `isvc.<deployment>`.
        let private = if r.standard {
            r.name.to_string()
        } else {
            format!("{}-private", r.name)
        };
        let app = if r.standard {
            format!("isvc.{}", r.name)
        } else {
            r.name.to_string()
        };
        let fqdn = format!("{private}.{}.svc.cluster.local", r.ns);
        let principal = format!("spiffe://cluster.local/ns/{}/sa/default", r.ns);
        // A Knative revision runs as the Deployment `<revision>-deployment`; a Standard-mode
        // predictor is its Deployment.
        let workload = if r.standard {
            r.name.to_string()
        } else {
            format!("{}-deployment", r.name)
        };
        let code_s = code.to_string();
        labels(&[
            ("connection_security_policy", "mutual_tls"),
            ("destination_app", &app),
            ("destination_canonical_revision", "latest"),
            ("destination_canonical_service", &app),
            ("destination_cluster", "Kubernetes"),
            ("destination_principal", &principal),
            ("destination_service", &fqdn),
            ("destination_service_name", &private),
            ("destination_service_namespace", r.ns),
            ("destination_workload", &workload),
            ("destination_workload_namespace", r.ns),
            ("instance", &instance),
            ("job", "istio-sidecars"),
            ("reporter", "destination"),
            ("request_protocol", "http"),
            ("response_code", &code_s),
            ("response_flags", "-"),
            ("source_app", "istio-ingressgateway"),
            ("source_canonical_revision", "latest"),
            ("source_canonical_service", "istio-ingressgateway"),
            ("source_cluster", "Kubernetes"),
            (
                "source_principal",
                "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account",
            ),
            ("source_version", "unknown"),
            ("source_workload", "istio-ingressgateway"),
            ("source_workload_namespace", "istio-system"),
        ])
    };
    out.push_str("# TYPE istio_requests_total counter\n");
    for r in revisions {
        for (code, c) in &r.codes {
            let _ = writeln!(
                out,
                "istio_requests_total{{{}}} {}",
                series(r, *code),
                c.count
            );
        }
    }
    out.push_str("# TYPE istio_request_duration_milliseconds histogram\n");
    for r in revisions {
        for (code, c) in &r.codes {
            histogram(
                out,
                "istio_request_duration_milliseconds",
                &series(r, *code),
                &bounds,
                c,
                1.0,
                counts_only,
            );
        }
    }
}
