//! `rolloutctl controller`: every ModelRollout in scope, behind a leader Lease, with its own
//! `/metrics`, `/healthz` and `/readyz`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use rollout_runner::fleet::{self, FleetConfig, FleetEnd, Health};
use rollout_runner::telemetry::Telemetry;

use super::Exit;
use crate::cli::ControllerArgs;

pub fn run(args: &ControllerArgs) -> Exit {
    super::on_cluster(
        args.kubeconfig.as_deref(),
        args.context.as_deref(),
        "rolloutctl-controller",
        async |client| {
            let telemetry = Arc::new(Telemetry::new());
            let health = Arc::new(Health::default());
            let listener = match tokio::net::TcpListener::bind(&args.metrics_addr).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: cannot listen on {}: {e}", args.metrics_addr);
                    return Exit::Usage;
                }
            };
            if let Ok(a) = listener.local_addr() {
                eprintln!("serving /metrics, /healthz and /readyz on http://{a}");
            }
            // The leader Lease gets a connection of its own: its renewals never wait behind the
            // rollouts' requests.
            let lease_client = match super::connect_as(
                args.kubeconfig.as_deref(),
                args.context.as_deref(),
                "rolloutctl-controller",
            )
            .await
            {
                Ok(c) => c,
                Err(e) => return e,
            };
            let server = tokio::spawn(serve(listener, telemetry.clone(), health.clone()));
            let cfg = FleetConfig {
                namespaces: args.namespaces.clone(),
                leader_namespace: args
                    .leader_election_namespace
                    .clone()
                    .unwrap_or_else(|| "rolloutctl-system".into()),
                leader_lease: args.leader_election_name.clone(),
                holder: args
                    .holder
                    .clone()
                    .unwrap_or_else(super::run::default_holder),
                lease_duration: Duration::from_secs(args.lease_duration.clamp(3, 3600)),
                prometheus_url: args.prometheus_url.clone(),
                query_tick: Duration::from_millis(args.query_tick_ms.min(60_000)),
                lease_client: Some(lease_client),
                concurrency: args.concurrency,
                telemetry,
                health,
                on_decision: Box::new(|key, d| {
                    let mut v = serde_json::to_value(d).unwrap_or_default();
                    if let Some(o) = v.as_object_mut() {
                        o.insert("rollout".into(), key.into());
                    }
                    println!("{v}");
                }),
            };
            let end = fleet::run(client, cfg).await;
            server.abort();
            match end {
                FleetEnd::Interrupted(sig) => {
                    eprintln!(
                        "stopped by {}: the leader Lease is released; a standby replica takes over",
                        if sig == 15 { "SIGTERM" } else { "SIGINT" }
                    );
                    if sig == 15 {
                        Exit::Terminated
                    } else {
                        Exit::Interrupted
                    }
                }
                FleetEnd::LostLeadership(to) => {
                    eprintln!(
                        "error: lost the leader Lease to {to}; stopping (restart to stand by)"
                    );
                    Exit::Failed
                }
                FleetEnd::Failed(why) => {
                    eprintln!("error: {why}");
                    Exit::Failed
                }
            }
        },
    )
}

async fn serve(listener: tokio::net::TcpListener, telemetry: Arc<Telemetry>, health: Arc<Health>) {
    let (h1, h2) = (health.clone(), health);
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let t = telemetry.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        t.encode(),
                    )
                }
            }),
        )
        .route(
            "/healthz",
            get(move || {
                let ok = h1.live();
                async move { probe(ok) }
            }),
        )
        .route(
            "/readyz",
            get(move || {
                let ok = h2.ready();
                async move { probe(ok) }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "the metrics server stopped");
    }
}

fn probe(ok: bool) -> impl IntoResponse {
    if ok {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
