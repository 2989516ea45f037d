//! The runner: reconciles ModelRollouts against live InferenceServices and Prometheus.
//!
//! This crate's one job is IO around the engine. Its [`reconcile::reconcile`] function reads a
//! ModelRollout (policy, intents, the engine's state in its status), the InferenceService and
//! Prometheus, feeds the engine, writes the status (guarded by the ModelRollout's
//! resourceVersion) and then the one thing rolloutctl ever writes to an InferenceService,
//! `canaryTrafficPercent`. It never decides anything itself. [`run`] drives one ModelRollout
//! in-process for `rolloutctl run`; [`fleet`] drives every ModelRollout in scope for
//! `rolloutctl controller`, behind a leader Lease; [`operate`] is what the operator verbs do.

pub mod context;
pub mod doctor;
pub mod error;
pub mod fanout;
pub mod fleet;
pub mod intents;
pub mod isvc;
pub mod lease;
pub mod lifecycle;
pub mod measure;
pub mod metrics;
pub mod operate;
pub mod policy;
pub mod preflight;
pub mod reconcile;
pub mod record;
pub mod replay;
pub mod run;
pub mod secret;
pub mod share;
pub mod signals;
pub mod standard;
pub mod status;
pub mod telemetry;
pub mod traffic;

use std::time::{SystemTime, UNIX_EPOCH};

use kube::Client;

pub use error::Error;
pub use run::{RunConfig, RunEnd};

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// The time as the runner sees it (ms since the epoch).
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A Kubernetes client by the usual rules: an explicit kubeconfig (and context), else
/// `KUBECONFIG` / `~/.kube/config`, else the in-cluster service account.
pub async fn client(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
) -> Result<Client, String> {
    client_as(kubeconfig, context, "rolloutctl").await
}

/// [`client`], sending `User-Agent: <agent>/<version>` (so audit logs, and the API server's
/// field managers, tell the controller from a `run` or an operator verb).
pub async fn client_as(
    kubeconfig: Option<&std::path::Path>,
    context: Option<&str>,
    agent: &str,
) -> Result<Client, String> {
    let opts = kube::config::KubeConfigOptions {
        context: context.map(str::to_string),
        ..Default::default()
    };
    let config = match kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &opts)
                .await
                .map_err(|e| e.to_string())?
        }
        None if context.is_some() => kube::Config::from_kubeconfig(&opts)
            .await
            .map_err(|e| e.to_string())?,
        None => kube::Config::infer().await.map_err(|e| e.to_string())?,
    };
    let mut config = config;
    if let Ok(v) =
        reqwest::header::HeaderValue::from_str(&format!("{agent}/{}", env!("CARGO_PKG_VERSION")))
    {
        config.headers.push((reqwest::header::USER_AGENT, v));
    }
    Client::try_from(config).map_err(|e| e.to_string())
}

/// What the unit tests share.
#[cfg(test)]
pub(crate) mod testing {
    use rollout_engine::{Phase, STATE_VERSION, State};

    /// A state at `phase` and step index `step`, rolling `canary` out against `stable` at
    /// `traffic`%.
    pub fn state(phase: Phase, step: usize, (canary, stable): (&str, &str), traffic: u8) -> State {
        State {
            version: STATE_VERSION,
            phase,
            step,
            started_at: Some(1),
            canary_revision: Some(canary.into()),
            stable_revision: Some(stable.into()),
            traffic,
            rules: Vec::new(),
            failing_since: [None; 4],
            passes: 0,
            last_eval: None,
            unready_since: None,
            evaluations: 0,
        }
    }
}
