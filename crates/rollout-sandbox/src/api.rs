//! The Kubernetes API slice: discovery, OpenAPI v3 for `kubectl apply`, CRUD, watch, the patch
//! types, the status subresource, Table output, and the sandbox's control endpoints.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio_stream::StreamExt as _;

use crate::App;
use crate::store::{ApiError, Key, Res, WatchEvent};

fn json_response(code: u16, v: &Value) -> Response {
    let mut r = (
        StatusCode::from_u16(code).unwrap_or(StatusCode::OK),
        v.to_string(),
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(e: &ApiError) -> Response {
    json_response(e.code, &e.status())
}

fn query(uri: &Uri) -> HashMap<String, String> {
    // Tolerates empty pairs (`?&watch=true`), as clients send them.
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(
                    std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                    16,
                ) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The sandbox's Kubernetes version, in the range kubectl's dispatcher accepts.
fn version() -> Value {
    json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0", "gitCommit": "rolloutctl-sandbox",
           "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23",
           "compiler": "gc", "platform": "linux/amd64"})
}

fn resource_entry(res: Res, short: &[&str]) -> Value {
    json!({"name": res.plural(), "singularName": res.kind().to_lowercase(), "namespaced": res != Res::Namespace,
           "kind": res.kind(), "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
           "shortNames": short})
}

fn discovery(segments: &[&str], host: &str) -> Option<Value> {
    Some(match segments {
        ["api"] => json!({"kind": "APIVersions", "versions": ["v1"],
                          "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]}),
        ["api", "v1"] => json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            resource_entry(Res::Namespace, &["ns"]),
            {"name": "events", "singularName": "event", "namespaced": true, "kind": "Event", "verbs": ["get", "list", "watch"], "shortNames": ["ev"]},
        ]}),
        ["apis"] => {
            let group = |g: &str, v: &str| {
                json!({"name": g, "versions": [{"groupVersion": format!("{g}/{v}"), "version": v}],
                                                 "preferredVersion": {"groupVersion": format!("{g}/{v}"), "version": v}})
            };
            json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                group("serving.kserve.io", "v1beta1"), group("coordination.k8s.io", "v1"), group("events.k8s.io", "v1")]})
        }
        ["apis", "serving.kserve.io", "v1beta1"] => {
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "serving.kserve.io/v1beta1",
            "resources": [resource_entry(Res::Isvc, &["isvc"]),
                          {"name": "inferenceservices/status", "singularName": "", "namespaced": true, "kind": "InferenceService", "verbs": ["get", "patch", "update"]}]})
        }
        ["apis", "coordination.k8s.io", "v1"] => {
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "coordination.k8s.io/v1",
            "resources": [resource_entry(Res::Lease, &[])]})
        }
        ["apis", "events.k8s.io", "v1"] => {
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "events.k8s.io/v1",
            "resources": [resource_entry(Res::Event, &["ev"])]})
        }
        _ => return None,
    })
}

fn openapi(segments: &[&str]) -> Option<Value> {
    match segments {
        ["openapi", "v3"] => Some(json!({"paths": {"apis/serving.kserve.io/v1beta1": {
            "serverRelativeURL": "/openapi/v3/apis/serving.kserve.io/v1beta1?hash=ROLLOUTCTL0001"}}})),
        ["openapi", "v3", "apis", "serving.kserve.io", "v1beta1"] => Some(json!({
            "openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
            "paths": {"/apis/serving.kserve.io/v1beta1/namespaces/{namespace}/inferenceservices/{name}": {
                "patch": {"x-kubernetes-action": "patch",
                          "x-kubernetes-group-version-kind": {"group": "serving.kserve.io", "version": "v1beta1", "kind": "InferenceService"},
                          "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                                         {"name": "fieldManager", "in": "query", "schema": {"type": "string"}}],
                          "responses": {"200": {"description": "OK"}}}}},
            "components": {"schemas": {"io.kserve.serving.v1beta1.InferenceService": {"type": "object",
                "x-kubernetes-group-version-kind": [{"group": "serving.kserve.io", "kind": "InferenceService", "version": "v1beta1"}],
                "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}}})),
        _ => None,
    }
}

/// A core v1 Event from an events.k8s.io/v1 Event, so `kubectl get events` shows it.
fn core_event(e: &Value) -> Value {
    let time = e["eventTime"]
        .as_str()
        .or(e["metadata"]["creationTimestamp"].as_str())
        .unwrap_or("")
        .to_string();
    let last = e
        .pointer("/series/lastObservedTime")
        .and_then(Value::as_str)
        .map_or(time.clone(), str::to_string);
    json!({
        "apiVersion": "v1", "kind": "Event", "metadata": e["metadata"],
        "involvedObject": e["regarding"], "reason": e["reason"], "message": e["note"], "type": e["type"],
        "source": {"component": e["reportingController"]}, "reportingComponent": e["reportingController"],
        "reportingInstance": e["reportingInstance"], "action": e["action"],
        "firstTimestamp": time, "lastTimestamp": last, "eventTime": e["eventTime"],
        "count": e.pointer("/series/count").cloned().unwrap_or(json!(1)),
    })
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

/// Seconds since the epoch of an RFC 3339 timestamp written by the store (`YYYY-MM-DDTHH:MM:SSZ`).
fn parse_rfc3339(t: &str) -> Option<u64> {
    let (date, time) = t.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut h = time.split(':').map(|x| x.parse::<i64>().ok());
    let (hh, mm, ss) = (h.next()??, h.next()??, h.next()??);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

/// A Kubernetes-style age: `45s`, `3m20s`, `5h10m`, `2d`.
fn age(created: &Value) -> Value {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let Some(t) = created.as_str().and_then(parse_rfc3339) else {
        return Value::Null;
    };
    let s = now.saturating_sub(t);
    json!(match s {
        0..=119 => format!("{s}s"),
        120..=599 => format!("{}m{}s", s / 60, s % 60),
        600..=10_799 => format!("{}m", s / 60),
        10_800..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    })
}

fn col(name: &str, ty: &str) -> Value {
    json!({"name": name, "type": ty, "format": if name == "Name" { "name" } else { "" }, "description": name, "priority": 0})
}

/// Computes a Table row's cells from an object.
type Cells = Box<dyn Fn(&Value) -> Vec<Value>>;

fn table(res: Res, core_events: bool, items: &[Value], rv: u64) -> Value {
    let (cols, cells): (Vec<Value>, Cells) = if core_events {
        (
            vec![
                col("Last Seen", "string"),
                col("Type", "string"),
                col("Reason", "string"),
                col("Object", "string"),
                col("Message", "string"),
            ],
            Box::new(|e: &Value| {
                vec![
                    e["lastTimestamp"].clone(),
                    e["type"].clone(),
                    e["reason"].clone(),
                    json!(format!(
                        "{}/{}",
                        e["involvedObject"]["kind"]
                            .as_str()
                            .unwrap_or("")
                            .to_lowercase(),
                        e["involvedObject"]["name"].as_str().unwrap_or("")
                    )),
                    e["message"].clone(),
                ]
            }),
        )
    } else if res == Res::Isvc {
        (
            vec![
                col("Name", "string"),
                col("URL", "string"),
                col("Ready", "string"),
                col("Prev", "integer"),
                col("Latest", "integer"),
                col("PrevRolledoutRevision", "string"),
                col("LatestReadyRevision", "string"),
                col("Age", "string"),
            ],
            Box::new(|o: &Value| {
                let traffic = o
                    .pointer("/status/components/predictor/traffic")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let prev = traffic.iter().find(|t| t["tag"] == "prev");
                let latest = traffic.iter().find(|t| t["latestRevision"] == true);
                let ready = o
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                    .map(|c| c["status"].clone());
                vec![
                    o["metadata"]["name"].clone(),
                    o.pointer("/status/url").cloned().unwrap_or(Value::Null),
                    ready.unwrap_or(Value::Null),
                    prev.map_or(Value::Null, |t| t["percent"].clone()),
                    latest.map_or(Value::Null, |t| t["percent"].clone()),
                    prev.map_or(Value::Null, |t| t["revisionName"].clone()),
                    latest.map_or(Value::Null, |t| t["revisionName"].clone()),
                    age(&o["metadata"]["creationTimestamp"]),
                ]
            }),
        )
    } else {
        (
            vec![col("Name", "string"), col("Age", "string")],
            Box::new(|o: &Value| {
                vec![
                    o["metadata"]["name"].clone(),
                    age(&o["metadata"]["creationTimestamp"]),
                ]
            }),
        )
    };
    let rows: Vec<Value> = items
        .iter()
        .map(|o| json!({"cells": cells(o), "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}}))
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv.to_string()}, "columnDefinitions": cols, "rows": rows})
}

/// A field selector's constraints (`metadata.name=x,metadata.namespace=y`).
fn field_selector(q: &HashMap<String, String>) -> Vec<(String, String)> {
    q.get("fieldSelector")
        .map(|s| {
            s.split(',')
                .filter_map(|p| {
                    p.split_once('=').map(|(k, v)| {
                        (
                            k.trim_end_matches('=').trim().to_string(),
                            v.trim_start_matches('=').trim().to_string(),
                        )
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn matches(obj: &Value, selector: &[(String, String)]) -> bool {
    selector.iter().all(|(k, v)| match k.as_str() {
        "metadata.name" => obj["metadata"]["name"].as_str() == Some(v),
        "metadata.namespace" => obj["metadata"]["namespace"].as_str() == Some(v),
        _ => true,
    })
}

/// Handles every request to the API server.
pub async fn handle(
    app: App,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let segments: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_string();
    let q = query(&uri);
    if segments == ["version"] {
        return json_response(200, &version());
    }
    if let Some(d) = discovery(&segments, &host) {
        return json_response(200, &d);
    }
    if segments.first() == Some(&"openapi") {
        return match openapi(&segments) {
            Some(d) => json_response(200, &d),
            None => error(&ApiError {
                code: 404,
                reason: "NotFound",
                message: "the server could not find the requested resource".into(),
                details: None,
            }),
        };
    }
    if segments.first() == Some(&"_sandbox") {
        return crate::control(&app, &method, &segments[1..], &body);
    }
    // Injected faults apply to resource requests only.
    let (delay, fail) = {
        let mut s = crate::lock(&app);
        let delay = s.faults.delay_ms;
        let applies = s.faults.fail_next > 0
            && s.faults
                .fail_method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()));
        let fail = if applies {
            s.faults.fail_next -= 1;
            Some(s.faults.fail_code)
        } else {
            None
        };
        (delay, fail)
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if let Some(code) = fail {
        let (reason, message) = if code == 409 {
            (
                "Conflict",
                "Operation cannot be fulfilled: the object has been modified (injected by the sandbox)",
            )
        } else {
            (
                "InternalError",
                "Internal error occurred: injected by the sandbox",
            )
        };
        return error(&ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
        });
    }
    route(app, method, &segments, &q, &headers, body).await
}

async fn route(
    app: App,
    method: Method,
    seg: &[&str],
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let not_found = || {
        error(&ApiError {
            code: 404,
            reason: "NotFound",
            message: "the server could not find the requested resource".into(),
            details: None,
        })
    };
    // Core: namespaces and events.
    match seg {
        ["api", "v1", "namespaces"] => {
            return collection(app, Res::Namespace, "", method, q, headers, body, false).await;
        }
        ["api", "v1", "namespaces", ns] if method == Method::GET => {
            let key = Key {
                res: Res::Namespace,
                ns: String::new(),
                name: (*ns).to_string(),
            };
            let obj = crate::lock(&app).store.get(&key).unwrap_or_else(|_| {
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "resourceVersion": "1"}, "status": {"phase": "Active"}})
            });
            return json_response(200, &obj);
        }
        ["api", "v1", "namespaces", ns, "events"] => {
            return collection(app, Res::Event, ns, method, q, headers, body, true).await;
        }
        ["api", "v1", "events"] => {
            return collection(app, Res::Event, "", method, q, headers, body, true).await;
        }
        _ => {}
    }
    let (res, ns, name, status) = match seg {
        ["apis", g, v, plural] => match Res::find(g, v, plural) {
            Some(r) => (r, "", None, false),
            None => return not_found(),
        },
        ["apis", g, v, "namespaces", ns, plural] => match Res::find(g, v, plural) {
            Some(r) => (r, *ns, None, false),
            None => return not_found(),
        },
        ["apis", g, v, "namespaces", ns, plural, name] => match Res::find(g, v, plural) {
            Some(r) => (r, *ns, Some(*name), false),
            None => return not_found(),
        },
        ["apis", g, v, "namespaces", ns, plural, name, "status"]
            if *plural == "inferenceservices" =>
        {
            match Res::find(g, v, plural) {
                Some(r) => (r, *ns, Some(*name), true),
                None => return not_found(),
            }
        }
        _ => return not_found(),
    };
    match name {
        None => collection(app, res, ns, method, q, headers, body, false).await,
        Some(name) => item(
            &app,
            Key {
                res,
                ns: ns.to_string(),
                name: name.to_string(),
            },
            status,
            method,
            q,
            headers,
            &body,
        ),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

#[allow(clippy::too_many_arguments)]
async fn collection(
    app: App,
    res: Res,
    ns: &str,
    method: Method,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
    core_events: bool,
) -> Response {
    let selector = field_selector(q);
    if method == Method::POST && !core_events {
        let obj = match parse_json(&body) {
            Ok(o) => o,
            Err(e) => return error(&e),
        };
        let name = obj["metadata"]["name"]
            .as_str()
            .map(str::to_string)
            .or_else(|| {
                obj["metadata"]["generateName"]
                    .as_str()
                    .map(|g| format!("{g}{:05x}", fastrand::u32(..0xfffff)))
            });
        let Some(name) = name else {
            return error(&ApiError {
                code: 422,
                reason: "Invalid",
                message: "metadata.name: Required value".into(),
                details: None,
            });
        };
        let key = Key {
            res,
            ns: ns.to_string(),
            name,
        };
        let result = crate::write(&app, |s| s.store.create(key.clone(), obj));
        return match result {
            Ok(o) => json_response(201, &o),
            Err(e) => error(&e),
        };
    }
    if method != Method::GET {
        return error(&ApiError {
            code: 405,
            reason: "MethodNotAllowed",
            message: format!("{method} is not supported here"),
            details: None,
        });
    }
    let watch = q.get("watch").is_some_and(|v| v == "true" || v == "1");
    if watch {
        return watch_stream(
            app,
            res,
            ns.to_string(),
            q,
            selector,
            core_events,
            wants_table(headers),
        )
        .await;
    }
    let s = crate::lock(&app);
    let rv = s.store.rv();
    let mut items: Vec<Value> = s
        .store
        .list(res, (!ns.is_empty()).then_some(ns))
        .into_iter()
        .filter(|o| matches(o, &selector))
        .collect();
    drop(s);
    if core_events {
        items = items.iter().map(core_event).collect();
    }
    if wants_table(headers) {
        return json_response(200, &table(res, core_events, &items, rv));
    }
    let (api_version, kind) = if core_events {
        ("v1".to_string(), "EventList".to_string())
    } else {
        (res.api_version(), format!("{}List", res.kind()))
    };
    json_response(
        200,
        &json!({"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
    )
}

async fn watch_stream(
    app: App,
    res: Res,
    ns: String,
    q: &HashMap<String, String>,
    selector: Vec<(String, String)>,
    core_events: bool,
    as_table: bool,
) -> Response {
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800)
        .min(3600);
    let from: Option<u64> = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0);
    let (initial, mut rx, expired) = {
        let s = crate::lock(&app);
        let rx = s.store.subscribe();
        let relevant = |k: &Key| k.res == res && (ns.is_empty() || k.ns == ns);
        match from {
            Some(rv) if rv < s.store.oldest_rv() => (Vec::new(), rx, true),
            Some(rv) => (
                s.store
                    .events_after(rv)
                    .into_iter()
                    .filter(|e| relevant(&e.key))
                    .collect::<Vec<_>>(),
                rx,
                false,
            ),
            None => {
                let rv = s.store.rv();
                let evs = s
                    .store
                    .list(res, (!ns.is_empty()).then_some(ns.as_str()))
                    .into_iter()
                    .filter_map(|o| {
                        let name = o["metadata"]["name"].as_str()?.to_string();
                        Some(WatchEvent {
                            rv,
                            kind: "ADDED",
                            key: Key {
                                res,
                                ns: o["metadata"]["namespace"]
                                    .as_str()
                                    .unwrap_or("")
                                    .to_string(),
                                name,
                            },
                            object: o,
                        })
                    })
                    .collect();
                (evs, rx, false)
            }
        }
    };
    let (tx, out_rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(256);
    let line = move |e: &WatchEvent| -> Option<Bytes> {
        if !matches(&e.object, &selector) {
            return None;
        }
        let mut object = if core_events {
            core_event(&e.object)
        } else {
            e.object.clone()
        };
        if as_table {
            // `kubectl get -w` asks for Table rows; each event carries a one-row table.
            object = table(res, core_events, std::slice::from_ref(&object), e.rv);
        }
        Some(Bytes::from(format!(
            "{}\n",
            json!({"type": e.kind, "object": object})
        )))
    };
    tokio::spawn(async move {
        if expired {
            let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                "message": "too old resource version", "reason": "Expired", "code": 410});
            let _ = tx
                .send(Ok(Bytes::from(format!(
                    "{}\n",
                    json!({"type": "ERROR", "object": status})
                ))))
                .await;
            return;
        }
        let mut last = 0;
        for e in &initial {
            last = last.max(e.rv);
            if let Some(b) = line(e)
                && tx.send(Ok(b)).await.is_err()
            {
                return;
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                ev = rx.recv() => match ev {
                    Ok(e) => {
                        if e.rv <= last || e.key.res != res || (!ns.is_empty() && e.key.ns != ns) {
                            continue;
                        }
                        last = e.rv;
                        if let Some(b) = line(&e)
                            && tx.send(Ok(b)).await.is_err() {
                                return;
                            }
                    }
                    // A watcher that fell behind must relist, as with a real API server.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                            "message": "watch fell behind", "reason": "Expired", "code": 410});
                        let _ = tx.send(Ok(Bytes::from(format!("{}\n", json!({"type": "ERROR", "object": status}))))).await;
                        return;
                    }
                    Err(_) => return,
                },
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(out_rx).map(|x| x);
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

fn item(
    app: &App,
    key: Key,
    status: bool,
    method: Method,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let result: Result<(Value, u16), ApiError> = match method {
        Method::GET => {
            let r = crate::lock(app).store.get(&key);
            if let Ok(obj) = &r
                && wants_table(headers)
                && !status
            {
                let rv = crate::lock(app).store.rv();
                return json_response(200, &table(key.res, false, std::slice::from_ref(obj), rv));
            }
            r.map(|o| (o, 200))
        }
        Method::DELETE => crate::write(app, |s| s.store.delete(&key)).map(|o| (o, 200)),
        Method::PUT => parse_json(body)
            .and_then(|obj| crate::write(app, |s| s.store.replace(&key, obj, status)))
            .map(|o| (o, 200)),
        Method::PATCH => patch(app, &key, status, &content_type, q, body),
        _ => Err(ApiError {
            code: 405,
            reason: "MethodNotAllowed",
            message: format!("{method} is not supported here"),
            details: None,
        }),
    };
    match result {
        Ok((o, code)) => json_response(code, &o),
        Err(e) => error(&e),
    }
}

fn patch(
    app: &App,
    key: &Key,
    status: bool,
    content_type: &str,
    q: &HashMap<String, String>,
    body: &[u8],
) -> Result<(Value, u16), ApiError> {
    let patch = parse_json(body)?;
    match content_type {
        "application/merge-patch+json" => {
            let rv = patch.pointer("/metadata/resourceVersion").and_then(Value::as_str).map(str::to_string);
            crate::write(app, |s| {
                if let Some(rv) = &rv {
                    let current = s.store.get(key)?;
                    if current["metadata"]["resourceVersion"].as_str() != Some(rv.as_str()) {
                        return Err(ApiError {
                            code: 409,
                            reason: "Conflict",
                            message: format!("Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again", key.res.qualified(), key.name),
                            details: Some((key.name.clone(), key.res.group().into(), key.res.plural().into())),
                        });
                    }
                }
                s.store.modify(key, status, |obj| {
                    crate::store::merge(obj, &patch, false);
                    Ok(())
                })
            })
            .map(|o| (o, 200))
        }
        "application/json-patch+json" => crate::write(app, |s| s.store.modify(key, status, |obj| crate::store::json_patch(obj, &patch))).map(|o| (o, 200)),
        "application/strategic-merge-patch+json" if key.res == Res::Isvc => Err(ApiError {
            code: 415,
            reason: "UnsupportedMediaType",
            message: "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".into(),
            details: None,
        }),
        "application/strategic-merge-patch+json" => crate::write(app, |s| {
            s.store.modify(key, status, |obj| {
                crate::store::merge(obj, &patch, false);
                Ok(())
            })
        })
        .map(|o| (o, 200)),
        "application/apply-patch+yaml" => {
            let Some(manager) = q.get("fieldManager").filter(|m| !m.is_empty()) else {
                return Err(ApiError::bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"));
            };
            let manager = manager.clone();
            crate::write(app, |s| s.store.apply(key.clone(), &manager, patch, status)).map(|(o, created)| (o, if created { 201 } else { 200 }))
        }
        other => Err(ApiError {
            code: 415,
            reason: "UnsupportedMediaType",
            message: format!("unsupported patch content type `{other}`"),
            details: None,
        }),
    }
}
