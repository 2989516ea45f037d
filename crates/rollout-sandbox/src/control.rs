//! The sandbox's control interface, next to the API (`/_sandbox/...` on the API port): fault
//! injection, live changes to a revision's behaviour, revisions forced from outside an
//! InferenceService, and a view of the emulation's state.
//!
//! - `POST /_sandbox/faults` with [`crate::Faults`];
//! - `POST /_sandbox/revisions/<revision>` with [`RevisionControl`];
//! - `POST /_sandbox/inferenceservices/<namespace>/<name>/retemplate`: a new revision, as a
//!   ServingRuntime or `inferenceservice-config` change makes;
//! - `GET /_sandbox/state`: revisions, client writes per object, injected failures.

use std::time::Instant;

use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{App, Faults, lock, reconcile_all};

/// A live change to one revision.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub struct RevisionControl {
    /// Make it fail (or pass) readiness.
    pub failing: Option<bool>,
    /// New error rate (0..1).
    pub error_rate: Option<f64>,
    /// New median latency, ms.
    pub latency_p50_ms: Option<f64>,
    /// New 95th percentile latency, ms.
    pub latency_p95_ms: Option<f64>,
}

/// Applies a [`RevisionControl`].
pub fn set_revision(app: &App, name: &str, c: &RevisionControl) {
    let mut s = lock(app);
    if let Some(f) = c.failing {
        s.controller.failing.retain(|r| r != name);
        if f {
            s.controller.failing.push(name.to_string());
        }
    }
    if c.error_rate.is_some() || c.latency_p50_ms.is_some() || c.latency_p95_ms.is_some() {
        let mut b = s.controller.behaviour(name);
        if let Some(e) = c.error_rate {
            b.error_rate = e.clamp(0.0, 1.0);
        }
        if let Some(v) = c.latency_p50_ms {
            b.p50_ms = v.max(0.1);
        }
        if let Some(v) = c.latency_p95_ms {
            b.p95_ms = v.max(b.p50_ms);
        }
        s.controller.overrides.insert(name.to_string(), b);
    }
    reconcile_all(&mut s);
}

/// Forces a new revision of an InferenceService from outside it.
pub fn retemplate(app: &App, ns: &str, name: &str) -> bool {
    let mut s = lock(app);
    let ok = s.controller.retemplate(ns, name);
    reconcile_all(&mut s);
    ok
}

/// The emulation's state, as `GET /_sandbox/state` shows it.
pub fn state(app: &App) -> Value {
    let s = lock(app);
    let revisions: Vec<Value> = s
        .controller
        .revisions(Instant::now())
        .into_iter()
        .map(|(name, ready)| {
            json!({"name": name, "ready": ready, "behaviour": {"error_rate": s.controller.behaviour(&name).error_rate}})
        })
        .collect();
    let writes: Vec<Value> = s
        .store
        .writes
        .iter()
        .map(|(k, n)| json!({"resource": k.res, "namespace": k.ns, "name": k.name, "writes": n}))
        .collect();
    json!({"resourceVersion": s.store.rv(), "revisions": revisions, "writes": writes,
           "exporter_down": s.faults.exporter_down, "injected_failures": s.faults.failed})
}

/// Handles `/_sandbox/<seg...>`.
pub fn handle(app: &App, method: &Method, seg: &[&str], body: &[u8]) -> Response {
    let ok = |v: Value| (StatusCode::OK, v.to_string()).into_response();
    let bad =
        |m: String| (StatusCode::BAD_REQUEST, json!({"error": m}).to_string()).into_response();
    match (method, seg) {
        (&Method::POST, ["faults"]) => match serde_json::from_slice::<Faults>(body) {
            Ok(mut f) => {
                if f.fail_next > 0 && !matches!(f.fail_code, 403 | 409 | 422 | 500) {
                    f.fail_code = 500;
                }
                lock(app).faults = f;
                ok(json!({"ok": true}))
            }
            Err(e) => bad(e.to_string()),
        },
        (&Method::POST, ["revisions", name]) => {
            match serde_json::from_slice::<RevisionControl>(body) {
                Ok(c) => {
                    set_revision(app, name, &c);
                    ok(json!({"ok": true}))
                }
                Err(e) => bad(e.to_string()),
            }
        }
        (&Method::POST, ["inferenceservices", ns, name, "retemplate"]) => {
            if retemplate(app, ns, name) {
                ok(json!({"ok": true}))
            } else {
                (
                    StatusCode::NOT_FOUND,
                    json!({"error": "no such InferenceService"}).to_string(),
                )
                    .into_response()
            }
        }
        (&Method::GET, ["state"]) => ok(state(app)),
        _ => (StatusCode::NOT_FOUND, "unknown sandbox control endpoint").into_response(),
    }
}
