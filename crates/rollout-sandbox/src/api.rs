//! The Kubernetes API: routing of every request (core and group paths, namespaced and
//! cluster-scoped, the status subresource), CRUD, the patch types, field and label selectors,
//! Table output, and the webhooks KServe puts in front of InferenceService writes.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

pub use crate::select::Selectors;
use crate::store::{ApiError, Key};
use crate::types::{ResourceType, ids};
use crate::{App, admission, discovery, lock, table, watch};

/// A JSON response.
pub fn json_response(code: u16, v: &Value) -> Response {
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

/// An error response (a `Status` body).
pub fn error(e: &ApiError) -> Response {
    json_response(e.code, &e.status())
}

fn not_found() -> Response {
    error(&ApiError {
        code: 404,
        reason: "NotFound",
        message: "the server could not find the requested resource".into(),
        details: None,
        causes: Vec::new(),
    })
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

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

/// A core v1 Event from an events.k8s.io/v1 Event (one storage, two views, as in the API
/// server), so `kubectl get events` and `kubectl describe` show it.
pub fn core_event(e: &Value) -> Value {
    let time = e["eventTime"]
        .as_str()
        .or(e["metadata"]["creationTimestamp"].as_str())
        .unwrap_or("")
        .to_string();
    let last = e
        .pointer("/series/lastObservedTime")
        .and_then(Value::as_str)
        .map_or(time.clone(), str::to_string);
    let mut metadata = e["metadata"].clone();
    metadata["resourceVersion"] = e["metadata"]["resourceVersion"].clone();
    json!({
        "apiVersion": "v1", "kind": "Event", "metadata": metadata,
        "involvedObject": e["regarding"], "reason": e["reason"], "message": e["note"], "type": e["type"],
        "source": {"component": e["reportingController"]}, "reportingComponent": e["reportingController"],
        "reportingInstance": e["reportingInstance"], "action": e["action"],
        "firstTimestamp": time, "lastTimestamp": last, "eventTime": e["eventTime"],
        "count": e.pointer("/series/count").cloned().unwrap_or(json!(1)),
    })
}

/// A resolved request path.
struct Target {
    /// The field manager of a write: the request's `fieldManager`, else from the user agent.
    manager: String,
    t: ResourceType,
    ns: String,
    name: Option<String>,
    status: bool,
}

fn resolve(app: &App, seg: &[&str]) -> Option<Target> {
    let s = lock(app);
    let reg = &s.store.registry;
    let find = |g: &str, v: &str, p: &str| reg.find(g, v, p).cloned();
    let (t, ns, name, sub): (ResourceType, &str, Option<&str>, Option<&str>) = match seg {
        // Core: /api/v1/namespaces/<name>[/status] is the Namespace itself.
        ["api", "v1", "namespaces", name] => (find("", "v1", "namespaces")?, "", Some(name), None),
        ["api", "v1", "namespaces", name, "status"] => (
            find("", "v1", "namespaces")?,
            "",
            Some(name),
            Some("status"),
        ),
        ["api", "v1", plural] => (find("", "v1", plural)?, "", None, None),
        ["api", "v1", plural, name] => (find("", "v1", plural)?, "", Some(name), None),
        ["api", "v1", "namespaces", ns, plural] => (find("", "v1", plural)?, ns, None, None),
        ["api", "v1", "namespaces", ns, plural, name] => {
            (find("", "v1", plural)?, ns, Some(name), None)
        }
        ["api", "v1", "namespaces", ns, plural, name, sub] => {
            (find("", "v1", plural)?, ns, Some(name), Some(sub))
        }
        ["apis", g, v, "namespaces", ns, plural] => (find(g, v, plural)?, ns, None, None),
        ["apis", g, v, "namespaces", ns, plural, name] => {
            (find(g, v, plural)?, ns, Some(name), None)
        }
        ["apis", g, v, "namespaces", ns, plural, name, sub] => {
            (find(g, v, plural)?, ns, Some(name), Some(sub))
        }
        ["apis", g, v, plural] => (find(g, v, plural)?, "", None, None),
        ["apis", g, v, plural, name] => (find(g, v, plural)?, "", Some(name), None),
        ["apis", g, v, plural, name, sub] => (find(g, v, plural)?, "", Some(name), Some(sub)),
        _ => return None,
    };
    if name.is_some() && t.namespaced == ns.is_empty() {
        return None;
    }
    if name.is_none() && !t.namespaced && !ns.is_empty() {
        return None;
    }
    let status = match sub {
        None => false,
        Some("status") if t.status_subresource => true,
        Some(_) => return None,
    };
    Some(Target {
        manager: String::new(),
        t,
        ns: ns.to_string(),
        name: name.map(str::to_string),
        status,
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
        return json_response(200, &discovery::version());
    }
    if segments.first() == Some(&"_sandbox") {
        return crate::control::handle(&app, &method, &segments[1..], &body);
    }
    {
        let s = lock(&app);
        if let Some(d) = discovery::document(&s.store.registry, &segments, &host) {
            return json_response(200, &d);
        }
        if segments.first() == Some(&"openapi") {
            return match discovery::openapi(&s.store.registry, &segments) {
                Some(d) => json_response(200, &d),
                None => not_found(),
            };
        }
    }
    let is_watch = q.get("watch").is_some_and(|v| v == "true" || v == "1");
    // Injected faults apply to resource requests only.
    let (delay, fail) = {
        let mut s = lock(&app);
        let agent = headers
            .get(header::USER_AGENT)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        s.record_request(method.as_str(), &path, is_watch, agent);
        let f = &s.faults;
        let applies = f.fail_next > 0
            && f.fail_method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method.as_str()))
            && (!f.fail_watch || is_watch)
            && f.fail_path.as_deref().is_none_or(|p| path.contains(p));
        let delay = f.delay_ms;
        let fail = if applies {
            s.faults.fail_next -= 1;
            s.faults.failed += 1;
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
        let (reason, message) = match code {
            409 => (
                "Conflict",
                "Operation cannot be fulfilled: the object has been modified (injected by the sandbox)",
            ),
            403 => (
                "Forbidden",
                "forbidden: the sandbox denies this request (injected)",
            ),
            _ => (
                "InternalError",
                "Internal error occurred: injected by the sandbox",
            ),
        };
        return error(&ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            causes: Vec::new(),
        });
    }
    let Some(mut target) = resolve(&app, &segments) else {
        return not_found();
    };
    // As the API server derives it (`managedfields.go`): the fieldManager parameter, else the
    // user agent up to its first `/`.
    target.manager = q
        .get("fieldManager")
        .filter(|m| !m.is_empty())
        .cloned()
        .unwrap_or_else(|| {
            headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .and_then(|u| u.split('/').next())
                .filter(|u| !u.is_empty())
                .unwrap_or("unknown")
                .to_string()
        });
    // kubectl's typed commands send built-in objects as protobuf; anything else not JSON is a
    // 415.
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut body = body;
    if !body.is_empty() && (content_type.contains("protobuf") || content_type.contains("cbor")) {
        match crate::protobuf::decode(&body) {
            Some(v) if content_type.contains("protobuf") => body = Bytes::from(v.to_string()),
            _ => {
                return error(&ApiError {
                    code: 415,
                    reason: "UnsupportedMediaType",
                    message: format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type})"
                    ),
                    details: None,
                    causes: Vec::new(),
                });
            }
        }
    }
    match &target.name {
        None if is_watch && method == Method::GET => {
            watch::stream(
                app,
                target.t,
                target.ns,
                &q,
                Selectors::of(&q),
                wants_table(&headers),
            )
            .await
        }
        None => collection(&app, &target, &method, &q, &headers, &body),
        Some(_) => item(&app, &target, &method, &q, &headers, &body),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))
}

/// The storage behind a type and the view of its objects (core events are a view).
fn storage(t: &ResourceType) -> (String, bool) {
    if t.read_only && t.plural == "events" {
        (ids::EVENTS.to_string(), true)
    } else {
        (t.id(), false)
    }
}

/// Objects as the client sees them.
pub fn view(core_events: bool, o: Value) -> Value {
    if core_events { core_event(&o) } else { o }
}

/// The `deploy.defaultDeploymentMode` of the `inferenceservice-config` ConfigMap.
fn default_mode(s: &crate::Shared) -> String {
    s.store
        .get(&Key::new(
            ids::CONFIGMAPS,
            "kserve",
            "inferenceservice-config",
        ))
        .ok()
        .and_then(|c| c["data"]["deploy"].as_str().map(str::to_string))
        .and_then(|d| serde_json::from_str::<Value>(&d).ok())
        .and_then(|d| d["defaultDeploymentMode"].as_str().map(str::to_string))
        .unwrap_or_else(|| "Serverless".into())
}

/// KServe's webhooks, for InferenceService writes through the main resource.
fn admit(
    s: &crate::Shared,
    key: &Key,
    old: Option<&Value>,
    obj: &mut Value,
) -> Result<(), ApiError> {
    if key.res == ids::ISVC {
        admission::default(obj, &default_mode(s));
        admission::validate(old, obj)?;
    }
    Ok(())
}

fn collection(
    app: &App,
    target: &Target,
    method: &Method,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let t = &target.t;
    let (res, core_events) = storage(t);
    if *method == Method::POST {
        if t.read_only {
            return error(&ApiError {
                code: 405,
                reason: "MethodNotAllowed",
                message: "the server does not allow this method on the requested resource".into(),
                details: None,
                causes: Vec::new(),
            });
        }
        let mut obj = match parse_json(body) {
            Ok(o) => o,
            Err(e) => return error(&e),
        };
        if let Some(ns) = obj["metadata"]["namespace"].as_str()
            && !target.ns.is_empty()
            && ns != target.ns
        {
            return error(&ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let name = obj["metadata"]["name"]
            .as_str()
            .map(str::to_string)
            .or_else(|| {
                obj["metadata"]["generateName"]
                    .as_str()
                    .map(|g| format!("{g}{:05x}", fastrand::u32(..0xfffff)))
            });
        let Some(name) = name else {
            return error(&ApiError::invalid(
                &t.kind,
                &t.group,
                "",
                &["metadata.name: Required value: name or generateName is required".into()],
            ));
        };
        let key = Key::new(&res, &target.ns, &name);
        let result = crate::write_as(app, &target.manager, |s| {
            admit(s, &key, None, &mut obj)?;
            s.store.create(key.clone(), obj)
        });
        return match result {
            Ok(o) => json_response(201, &o),
            Err(e) => error(&e),
        };
    }
    if *method != Method::GET {
        return error(&ApiError {
            code: 405,
            reason: "MethodNotAllowed",
            message: format!("{method} is not supported here"),
            details: None,
            causes: Vec::new(),
        });
    }
    let selectors = Selectors::of(q);
    let s = lock(app);
    let rv = s.store.rv();
    let items: Vec<Value> = s
        .store
        .list(&res, (!target.ns.is_empty()).then_some(target.ns.as_str()))
        .into_iter()
        .map(|o| view(core_events, o))
        .filter(|o| selectors.matches(o))
        .collect();
    drop(s);
    if wants_table(headers) {
        return json_response(200, &table::table(t, &items, rv));
    }
    json_response(
        200,
        &json!({"kind": format!("{}List", t.kind), "apiVersion": t.api_version(),
                "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
    )
}

fn item(
    app: &App,
    target: &Target,
    method: &Method,
    q: &HashMap<String, String>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let t = &target.t;
    let (res, core_events) = storage(t);
    let key = Key::new(&res, &target.ns, target.name.as_deref().unwrap_or(""));
    let status = target.status;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let result: Result<(Value, u16), ApiError> = match *method {
        Method::GET => {
            let s = lock(app);
            match s.store.get(&key) {
                Ok(obj) if wants_table(headers) && !status => {
                    let rv = s.store.rv();
                    return json_response(200, &table::table(t, &[view(core_events, obj)], rv));
                }
                r => r.map(|o| (view(core_events, o), 200)),
            }
        }
        Method::DELETE => {
            crate::write_as(app, &target.manager, |s| s.store.delete(&key)).map(|o| (o, 200))
        }
        Method::PUT => parse_json(body)
            .and_then(|mut obj| {
                crate::write_as(app, &target.manager, |s| {
                    if !status {
                        let old = s.store.get(&key).ok();
                        admit(s, &key, old.as_ref(), &mut obj)?;
                    }
                    s.store.replace(&key, obj, status)
                })
            })
            .map(|o| (o, 200)),
        Method::PATCH => patch(
            app,
            &target.manager,
            t,
            &key,
            status,
            &content_type,
            q,
            body,
        ),
        _ => Err(ApiError {
            code: 405,
            reason: "MethodNotAllowed",
            message: format!("{method} is not supported here"),
            details: None,
            causes: Vec::new(),
        }),
    };
    match result {
        Ok((o, code)) => json_response(code, &o),
        Err(e) => error(&e),
    }
}

#[allow(clippy::too_many_arguments)]
fn patch(
    app: &App,
    manager: &str,
    t: &ResourceType,
    key: &Key,
    status: bool,
    content_type: &str,
    q: &HashMap<String, String>,
    body: &[u8],
) -> Result<(Value, u16), ApiError> {
    let patch = parse_json(body)?;
    let custom = t.schema.is_some();
    let apply_change = |s: &mut crate::Shared, f: &dyn Fn(&mut Value) -> Result<(), ApiError>| {
        let old = s.store.get(key).ok();
        let default = default_mode(s);
        s.store.modify(key, status, |obj| {
            f(obj)?;
            if !status && key.res == ids::ISVC {
                admission::default(obj, &default);
                admission::validate(old.as_ref(), obj)?;
            }
            Ok(())
        })
    };
    match content_type {
        "application/merge-patch+json" => crate::write_as(app, manager, |s| {
            apply_change(s, &|obj| {
                crate::patch::merge(obj, &patch, false);
                Ok(())
            })
        })
        .map(|o| (o, 200)),
        "application/json-patch+json" => crate::write_as(app, manager, |s| {
            apply_change(s, &|obj| crate::patch::json_patch(obj, &patch))
        })
        .map(|o| (o, 200)),
        // Custom resources have no strategic merge patch (`customresource_handler.go`).
        "application/strategic-merge-patch+json" if custom => Err(ApiError {
            code: 415,
            reason: "UnsupportedMediaType",
            message: "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml".into(),
            details: None,
            causes: Vec::new(),
        }),
        "application/strategic-merge-patch+json" => crate::write_as(app, manager, |s| {
            apply_change(s, &|obj| {
                crate::patch::merge(obj, &patch, false);
                Ok(())
            })
        })
        .map(|o| (o, 200)),
        "application/apply-patch+yaml" => {
            let Some(manager) = q.get("fieldManager").filter(|m| !m.is_empty()) else {
                return Err(ApiError::bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"));
            };
            let manager = manager.clone();
            crate::write_as(app, &manager, |s| {
                let mut applied = patch.clone();
                if !status && key.res == ids::ISVC {
                    let old = s.store.get(key).ok();
                    admit(s, key, old.as_ref(), &mut applied)?;
                }
                s.store.apply(key.clone(), &manager, applied, status)
            })
            .map(|(o, created)| (o, if created { 201 } else { 200 }))
        }
        other => Err(ApiError {
            code: 415,
            reason: "UnsupportedMediaType",
            message: format!("unsupported patch content type `{other}`"),
            details: None,
            causes: Vec::new(),
        }),
    }
}
