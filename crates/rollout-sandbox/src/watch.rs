//! Watch streams: JSON lines `{"type", "object"}` from a resourceVersion (replayed from the
//! store's log) or from now (synthetic `ADDED` for existing objects), ending at `timeoutSeconds`,
//! and `410 Expired` for a version older than the log or a watcher that fell behind, as the API
//! server's watch cache answers (`staging/src/k8s.io/apiserver/pkg/storage/cacher`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::Response;
use serde_json::json;
use tokio_stream::StreamExt as _;

use crate::api::{Selectors, view};
use crate::store::{Key, WatchEvent};
use crate::types::{ResourceType, ids};
use crate::{App, lock, table};

fn expired(message: &str) -> Bytes {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": message, "reason": "Expired", "code": 410});
    Bytes::from(format!("{}\n", json!({"type": "ERROR", "object": status})))
}

/// A watch of type `t` in `ns` ("" for all namespaces).
pub async fn stream(
    app: App,
    t: ResourceType,
    ns: String,
    q: &HashMap<String, String>,
    selectors: Selectors,
    as_table: bool,
) -> Response {
    let core_events = t.read_only && t.plural == "events";
    let res = if core_events {
        ids::EVENTS.to_string()
    } else {
        t.id()
    };
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(1800)
        .min(3600);
    let from: Option<u64> = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .filter(|v| *v > 0);
    let relevant = {
        let res = res.clone();
        let ns = ns.clone();
        move |k: &Key| k.res == res && (ns.is_empty() || k.ns == ns)
    };
    let (initial, mut rx, too_old) = {
        let s = lock(&app);
        let rx = s.store.subscribe();
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
                    .list(&res, (!ns.is_empty()).then_some(ns.as_str()))
                    .into_iter()
                    .filter_map(|o| {
                        let name = o["metadata"]["name"].as_str()?.to_string();
                        let namespace = o["metadata"]["namespace"]
                            .as_str()
                            .unwrap_or("")
                            .to_string();
                        Some(WatchEvent {
                            rv,
                            kind: "ADDED",
                            key: Key::new(&res, &namespace, &name),
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
        let mut object = view(core_events, e.object.clone());
        if !selectors.matches(&object) {
            return None;
        }
        if as_table {
            // `kubectl get -w` asks for Table rows; each event carries a one-row table.
            object = table::table(&t, std::slice::from_ref(&object), e.rv);
        }
        Some(Bytes::from(format!(
            "{}\n",
            json!({"type": e.kind, "object": object})
        )))
    };
    tokio::spawn(async move {
        if too_old {
            let _ = tx.send(Ok(expired("too old resource version"))).await;
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
                        if e.rv <= last || !relevant(&e.key) {
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
                        let _ = tx.send(Ok(expired("watch fell behind"))).await;
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
