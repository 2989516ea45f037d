//! A local stand-in for a KServe cluster, judged by real clients.
//!
//! This crate's one job is to be a faithful enough KServe cluster on loopback: a slice of the
//! Kubernetes API (discovery, OpenAPI v3, CRUD, watch, merge/JSON/apply patches, status
//! subresource, Table output) that the machine's `kubectl` and kube-rs accept; the KServe
//! controller's revision, readiness, traffic-split and rolled-out bookkeeping; a data plane that
//! routes synthetic requests by the split and exports Knative queue-proxy metrics; a real
//! Prometheus scraping them when one is installed; and fault injection for the runner's tests.
//! What it emulates faithfully and what it does not is in `docs/sandbox.md`.

pub mod admission;
pub mod api;
mod cluster;
pub mod control;
pub mod dataplane;
pub mod discovery;
pub mod errors;
pub mod exporter;
pub mod jsonpath;
pub mod knative;
pub mod kserve;
pub mod kserve_crd;
pub mod managed;
pub mod owned;
pub mod patch;
pub mod prometheus;
pub mod propagation;
pub mod protobuf;
pub mod schema;
pub mod select;
pub mod standard;
pub mod store;
pub mod table;
pub mod types;
pub mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cluster::{generate, reconcile_all, reconcile_touched, seed};
pub use crate::control::{RevisionControl, set_revision};
use crate::kserve::{Behaviour, Controller};
use crate::store::{ApiError, Key, Store};
use crate::types::ids;

/// Settings of a sandbox.
#[derive(Clone, Debug)]
pub struct Config {
    /// API server port (0: a free port).
    pub api_port: u16,
    /// Exporter / predict port (0: a free port).
    pub exporter_port: u16,
    /// How long a new revision takes to become ready.
    pub ready_delay: Duration,
    /// How long the ingress takes to program a traffic change (Ready is Unknown meanwhile).
    pub route_delay: Duration,
    /// Requests per second per InferenceService (annotation `sandbox.rolloutctl.io/rps` overrides).
    pub rps: f64,
    /// Behaviour of revisions without behaviour annotations.
    pub behaviour: Behaviour,
    /// Random seed of the load generator.
    pub seed: u64,
    /// Start Prometheus when it is on PATH.
    pub prometheus: bool,
    /// Default namespace in the kubeconfig.
    pub namespace: String,
    /// Where to write the kubeconfig and Prometheus's data (a fresh temporary directory if `None`).
    pub dir: Option<PathBuf>,
    /// CustomResourceDefinitions applied at start (as a cluster with those tools installed).
    pub crds: Vec<Value>,
    /// Count requests analytically: each tick adds the expected requests, errors and latency
    /// buckets of every revision's share (fractional counters), instead of simulating each
    /// request. What many InferenceServices at once need (the scale benchmark); the series,
    /// their names and labels are the same.
    pub analytic: bool,
    /// How often the emulated controllers and the data plane run.
    pub tick: Duration,
    /// Prometheus's scrape interval, whole seconds.
    pub scrape_interval_s: u64,
    /// Export the latency histogram (Knative's `revision_app_request_latencies`). Off only for
    /// load too large for one machine's Prometheus (the 10,000-InferenceService benchmark:
    /// 540,000 histogram series scraped every 5 s saturate a 2-core machine); a policy with a
    /// latency rule then has no data, as it would on a cluster without the histogram.
    pub latency_histograms: bool,
    /// Whose request metrics the exporter serves, in that stack's names, units, buckets and
    /// labels (default: the Knative that KServe 0.17–0.20 install).
    pub metrics: exporter::Stack,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            api_port: 0,
            exporter_port: 0,
            ready_delay: Duration::from_secs(1),
            route_delay: Duration::from_millis(300),
            rps: 20.0,
            behaviour: Behaviour::default(),
            seed: 1,
            prometheus: true,
            namespace: "kserve-test".into(),
            dir: None,
            crds: Vec::new(),
            analytic: false,
            tick: Duration::from_millis(100),
            scrape_interval_s: 1,
            latency_histograms: true,
            metrics: exporter::Stack::default(),
        }
    }
}

/// Injected faults.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Fail this many of the next resource requests.
    pub fail_next: u32,
    /// With this HTTP code (500, 409, 422 or 403; never 429/503/504, which clients retry many
    /// times).
    pub fail_code: u16,
    /// Only requests with this method (e.g. `PATCH`).
    pub fail_method: Option<String>,
    /// Only watch requests (a Role without `watch` gets a 403 on every one).
    pub fail_watch: bool,
    /// Only requests whose path contains this.
    pub fail_path: Option<String>,
    /// Requests failed so far (read back).
    pub failed: u64,
    /// Delay every resource request by this many milliseconds.
    pub delay_ms: u64,
    /// The exporter answers 503 (Prometheus sees the target down and the series go stale).
    pub exporter_down: bool,
}

/// Everything behind the sandbox's servers.
#[derive(Debug)]
pub struct Shared {
    /// Objects.
    pub store: Store,
    /// KServe controller state.
    pub controller: Controller,
    /// Data-plane metrics.
    pub metrics: dataplane::Metrics,
    /// Injected faults.
    pub faults: Faults,
    /// Settings.
    pub config: Config,
    /// The last resource requests, oldest first (at most [`REQUEST_LOG`]).
    pub requests: std::collections::VecDeque<Request>,
    /// Every resource request so far, by (`User-Agent`, method): not bounded like the log.
    pub request_counts: HashMap<(String, String), u64>,
    rng: fastrand::Rng,
}

/// How many resource requests the sandbox remembers.
pub const REQUEST_LOG: usize = 100_000;

/// One resource request, as an audit log records it.
#[derive(Clone, Debug)]
pub struct Request {
    /// When it arrived.
    pub at: std::time::Instant,
    /// HTTP method.
    pub method: String,
    /// Path, without the query.
    pub path: String,
    /// A watch.
    pub watch: bool,
    /// The client's `User-Agent` (which process made it).
    pub agent: String,
}

impl Shared {
    fn record_request(&mut self, method: &str, path: &str, watch: bool, agent: &str) {
        if self.requests.len() >= REQUEST_LOG {
            self.requests.pop_front();
        }
        *self
            .request_counts
            .entry((agent.to_string(), method.to_string()))
            .or_insert(0) += 1;
        self.requests.push_back(Request {
            at: std::time::Instant::now(),
            method: method.to_string(),
            path: path.to_string(),
            watch,
            agent: agent.to_string(),
        });
    }
}

/// The shared state.
pub type App = Arc<Mutex<Shared>>;

/// Locks the shared state (a poisoned lock is recovered: the state stays consistent per call).
pub fn lock(app: &App) -> MutexGuard<'_, Shared> {
    app.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs a write, then lets the controllers reconcile what it concerns.
pub fn write<T>(
    app: &App,
    f: impl FnOnce(&mut Shared) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    write_as(app, "sandbox", f)
}

/// [`write`], recorded in `managedFields` as the field manager `manager`.
pub fn write_as<T>(
    app: &App,
    manager: &str,
    f: impl FnOnce(&mut Shared) -> Result<T, ApiError>,
) -> Result<T, ApiError> {
    let mut s = lock(app);
    let rv = s.store.rv();
    s.store.manager = manager.to_string();
    let r = f(&mut s);
    s.store.manager = "kserve-controller".into();
    let r = r?;
    let touched = s.store.keys_after(rv);
    reconcile_touched(&mut s, &touched);
    Ok(r)
}

/// A running sandbox. Dropping it stops its servers and Prometheus.
#[derive(Debug)]
pub struct Sandbox {
    /// `http://127.0.0.1:<port>` of the API server.
    pub api_url: String,
    /// `http://127.0.0.1:<port>` of the exporter and predict endpoint.
    pub exporter_url: String,
    /// The kubeconfig written for the API server.
    pub kubeconfig: PathBuf,
    /// The running Prometheus, if started.
    pub prometheus: Option<prometheus::Prometheus>,
    /// Why Prometheus was not started, if it was not.
    pub prometheus_note: Option<String>,
    app: App,
    dir: PathBuf,
    own_dir: bool,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Sandbox {
    /// Starts the API server, the controller and data-plane loop, the exporter and (when asked
    /// and installed) Prometheus.
    pub async fn start(config: Config) -> std::io::Result<Sandbox> {
        let (dir, own_dir) = match &config.dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (d.clone(), false)
            }
            None => {
                let d = std::env::temp_dir().join(format!(
                    "rolloutctl-sandbox-{}-{}",
                    std::process::id(),
                    fastrand::u64(..)
                ));
                std::fs::create_dir_all(&d)?;
                (d, true)
            }
        };
        let app: App = Arc::new(Mutex::new(Shared {
            store: Store::default(),
            controller: Controller::default(),
            metrics: dataplane::Metrics::counting(config.metrics, !config.latency_histograms),
            faults: Faults::default(),
            requests: std::collections::VecDeque::new(),
            request_counts: HashMap::new(),
            rng: fastrand::Rng::with_seed(config.seed),
            config: config.clone(),
        }));
        seed(&mut lock(&app));
        let api_listener =
            tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], config.api_port)))
                .await?;
        let api_addr = api_listener.local_addr()?;
        let exp_listener =
            tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], config.exporter_port)))
                .await?;
        let exp_addr = exp_listener.local_addr()?;
        let mut tasks = Vec::new();
        let a = app.clone();
        let api = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let a = a.clone();
                async move { api::handle(a, method, uri, headers, body).await }
            },
        );
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(api_listener, api).await;
        }));
        let a = app.clone();
        let exporter = axum::Router::new().fallback(move |method: Method, uri: Uri| {
            let a = a.clone();
            async move { exporter(&a, &method, &uri) }
        });
        tasks.push(tokio::spawn(async move {
            let _ = axum::serve(exp_listener, exporter).await;
        }));
        let a = app.clone();
        let tick = config.tick.max(Duration::from_millis(10));
        tasks.push(tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            loop {
                interval.tick().await;
                let mut s = lock(&a);
                reconcile_all(&mut s);
                generate(&mut s, tick);
            }
        }));
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            kubeconfig_text(&format!("http://{api_addr}"), &config.namespace),
        )?;
        let exporter_url = format!("http://{exp_addr}");
        let (prometheus, prometheus_note) = if config.prometheus {
            match prometheus::Prometheus::start(
                &dir.join("prometheus"),
                &exp_addr.to_string(),
                config.scrape_interval_s,
            )
            .await
            {
                Ok(p) => (Some(p), None),
                Err(e) => (None, Some(e)),
            }
        } else {
            (None, Some("not requested".into()))
        };
        Ok(Sandbox {
            api_url: format!("http://{api_addr}"),
            exporter_url,
            kubeconfig,
            prometheus,
            prometheus_note,
            app,
            dir,
            own_dir,
            tasks,
        })
    }

    /// The shared state, for in-process tests and tools.
    pub fn app(&self) -> &App {
        &self.app
    }

    /// Injects faults.
    pub fn set_faults(&self, f: Faults) {
        lock(&self.app).faults = f;
    }

    /// Changes a revision live.
    pub fn set_revision(&self, name: &str, c: &RevisionControl) {
        set_revision(&self.app, name, c);
    }

    /// An object, for assertions (`res` is a storage identity such as [`types::ids::ISVC`]).
    pub fn get(&self, res: &str, ns: &str, name: &str) -> Option<Value> {
        lock(&self.app).store.get(&Key::new(res, ns, name)).ok()
    }

    /// An InferenceService, for assertions.
    pub fn isvc(&self, ns: &str, name: &str) -> Option<Value> {
        self.get(ids::ISVC, ns, name)
    }

    /// Forces a new revision of an InferenceService from outside it (a ServingRuntime or
    /// KServe configuration change).
    pub fn retemplate(&self, ns: &str, name: &str) -> bool {
        control::retemplate(&self.app, ns, name)
    }

    /// The resource requests received since `t` (from the bounded request log).
    pub fn requests_since(&self, t: std::time::Instant) -> Vec<Request> {
        lock(&self.app)
            .requests
            .iter()
            .filter(|r| r.at >= t)
            .cloned()
            .collect()
    }

    /// How many resource requests with this method clients whose `User-Agent` starts with
    /// `agent` made so far.
    pub fn request_count(&self, agent: &str, method: &str) -> u64 {
        lock(&self.app)
            .request_counts
            .iter()
            .filter(|((a, m), _)| a.starts_with(agent) && m == method)
            .map(|(_, n)| n)
            .sum()
    }

    /// Resource requests failed by injected faults so far.
    pub fn failed(&self) -> u64 {
        lock(&self.app).faults.failed
    }

    /// Client writes (creates, updates, patches other than status) to an object so far.
    pub fn writes(&self, res: &str, ns: &str, name: &str) -> u64 {
        lock(&self.app)
            .store
            .writes
            .get(&Key::new(res, ns, name))
            .copied()
            .unwrap_or(0)
    }

    /// Stops everything: servers, loops and Prometheus; removes its temporary directory.
    pub async fn shutdown(mut self) {
        if let Some(p) = self.prometheus.take() {
            p.stop().await;
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if self.own_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn exporter(app: &App, method: &Method, uri: &Uri) -> Response {
    let path = uri.path();
    if method == Method::GET && path == "/metrics" {
        let s = lock(app);
        if s.faults.exporter_down {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "exporter stopped by the sandbox",
            )
                .into_response();
        }
        // The counters are copied under the lock and written out after it, so that a large
        // exposition does not hold up the API server.
        let snapshot = s.metrics.clone();
        drop(s);
        let mut r = snapshot.exposition().into_response();
        r.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        return r;
    }
    // KServe V1 protocol: POST /v1/models/<name>:predict[?namespace=<ns>]
    if method == Method::POST
        && let Some(model) = path
            .strip_prefix("/v1/models/")
            .and_then(|p| p.strip_suffix(":predict"))
    {
        let ns = uri
            .query()
            .and_then(|q| q.split('&').find_map(|p| p.strip_prefix("namespace=")))
            .map(str::to_string);
        let mut s = lock(app);
        let key = s
            .store
            .keys(ids::ISVC)
            .into_iter()
            .find(|k| k.name == model && ns.as_deref().is_none_or(|n| k.ns == n));
        let Some(key) = key else {
            return (
                StatusCode::NOT_FOUND,
                json!({"error": format!("model {model} not found")}).to_string(),
            )
                .into_response();
        };
        let traffic = s.controller.serving(&key.ns, &key.name);
        let Some(rev) = dataplane::pick(&mut s.rng, &traffic).map(str::to_string) else {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "no ready revision"}).to_string(),
            )
                .into_response();
        };
        let b = s.controller.behaviour(&rev);
        let o = dataplane::sample(&mut s.rng, &b);
        s.metrics.record(&key.ns, &key.name, &rev, o);
        let body = if o.code == 200 {
            json!({"predictions": [1], "revision": rev})
        } else {
            json!({"error": "injected failure", "revision": rev})
        };
        return (
            StatusCode::from_u16(o.code).unwrap_or(StatusCode::OK),
            body.to_string(),
        )
            .into_response();
    }
    (StatusCode::NOT_FOUND, "not found").into_response()
}

/// A kubeconfig for an API server over plain HTTP.
pub fn kubeconfig_text(server: &str, namespace: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: sandbox\n  cluster:\n    server: {server}\ncontexts:\n- name: sandbox\n  context:\n    cluster: sandbox\n    user: sandbox\n    namespace: {namespace}\ncurrent-context: sandbox\nusers:\n- name: sandbox\n  user: {{}}\n"
    )
}
