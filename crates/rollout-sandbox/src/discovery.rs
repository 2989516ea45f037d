//! Discovery (`/version`, `/api`, `/api/v1`, `/apis`, `/apis/<group>/<version>`) and the OpenAPI
//! v3 documents kubectl reads before `apply`, built from the served types. Each group-version
//! document declares the `fieldValidation` parameter on its write operations, so kubectl 1.27+
//! leaves validation to the server (as it does against a real API server), and gives each kind
//! its schema (a custom resource's own, otherwise an open object).

use serde_json::{Value, json};

use crate::types::{Registry, ResourceType};

/// The sandbox's Kubernetes version, in the range kubectl's dispatcher accepts.
pub fn version() -> Value {
    json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0", "gitCommit": "rolloutctl-sandbox",
           "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23",
           "compiler": "gc", "platform": "linux/amd64"})
}

fn resource_entry(t: &ResourceType) -> Value {
    let verbs: Vec<&str> = if t.read_only {
        vec!["get", "list", "watch"]
    } else {
        vec![
            "create",
            "delete",
            "deletecollection",
            "get",
            "list",
            "patch",
            "update",
            "watch",
        ]
    };
    let mut e = json!({"name": t.plural, "singularName": t.singular, "namespaced": t.namespaced,
                       "kind": t.kind, "verbs": verbs});
    if !t.short_names.is_empty() {
        e["shortNames"] = json!(t.short_names);
    }
    if !t.categories.is_empty() {
        e["categories"] = json!(t.categories);
    }
    e
}

/// The discovery document at `segments`, if it is one.
pub fn document(reg: &Registry, segments: &[&str], host: &str) -> Option<Value> {
    let list = |group: &str, version: &str| -> Option<Value> {
        let types: Vec<&ResourceType> = reg
            .all()
            .filter(|t| t.group == group && t.version == version)
            .collect();
        if types.is_empty() {
            return None;
        }
        let mut resources = Vec::new();
        for t in types {
            resources.push(resource_entry(t));
            if t.status_subresource {
                resources.push(json!({"name": format!("{}/status", t.plural), "singularName": "",
                    "namespaced": t.namespaced, "kind": t.kind, "verbs": ["get", "patch", "update"]}));
            }
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
        )
    };
    match segments {
        ["api"] => Some(json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}]})),
        ["api", "v1"] => list("", "v1"),
        ["apis"] => {
            let groups: Vec<Value> = reg
                .groups()
                .into_iter()
                .filter(|(g, _)| !g.is_empty())
                .map(|(g, versions)| {
                    let vs: Vec<Value> = versions
                        .iter()
                        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                        .collect();
                    let preferred = vs.first().cloned().unwrap_or(Value::Null);
                    json!({"name": g, "versions": vs, "preferredVersion": preferred})
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        ["apis", group] => reg.groups().get(*group).map(|versions| {
            let vs: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
                .collect();
            json!({"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": vs.clone(),
                   "preferredVersion": vs.first().cloned().unwrap_or(Value::Null)})
        }),
        ["apis", group, version] => list(group, version),
        _ => None,
    }
}

fn schema_name(t: &ResourceType) -> String {
    let mut rev: Vec<&str> = t.group.split('.').rev().collect();
    if t.group.is_empty() {
        rev = vec!["io", "k8s", "api", "core"];
    }
    format!("{}.{}.{}", rev.join("."), t.version, t.kind)
}

/// The OpenAPI v3 document at `segments` (`/openapi/v3` or `/openapi/v3/<gv path>`).
pub fn openapi(reg: &Registry, segments: &[&str]) -> Option<Value> {
    match segments {
        ["openapi", "v3"] => {
            let mut paths = serde_json::Map::new();
            for (g, versions) in reg.groups() {
                for v in versions {
                    let p = if g.is_empty() {
                        format!("api/{v}")
                    } else {
                        format!("apis/{g}/{v}")
                    };
                    paths.insert(
                        p.clone(),
                        json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=SANDBOX{}", reg.all().count())}),
                    );
                }
            }
            Some(json!({"paths": paths}))
        }
        ["openapi", "v3", rest @ ..] => {
            let (group, version) = match rest {
                ["api", v] => ("", *v),
                ["apis", g, v] => (*g, *v),
                _ => return None,
            };
            let types: Vec<&ResourceType> = reg
                .all()
                .filter(|t| t.group == group && t.version == version)
                .collect();
            if types.is_empty() {
                return None;
            }
            let mut paths = serde_json::Map::new();
            let mut schemas = serde_json::Map::new();
            for t in types {
                let gvk = json!([{"group": t.group, "version": t.version, "kind": t.kind}]);
                let prefix = if t.group.is_empty() {
                    format!("/api/{}", t.version)
                } else {
                    format!("/apis/{}/{}", t.group, t.version)
                };
                let item = if t.namespaced {
                    format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", t.plural)
                } else {
                    format!("{prefix}/{}/{{name}}", t.plural)
                };
                let collection = item.trim_end_matches("/{name}").to_string();
                let params = json!([{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                                    {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                                    {"name": "dryRun", "in": "query", "schema": {"type": "string"}}]);
                let op = |action: &str| {
                    json!({"x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk[0],
                                               "parameters": params, "responses": {"200": {"description": "OK"}}})
                };
                paths.insert(item, json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}));
                paths.insert(collection, json!({"get": op("list"), "post": op("post")}));
                let mut schema = t.schema.clone().unwrap_or(json!({
                    "type": "object", "x-kubernetes-preserve-unknown-fields": true,
                    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}}));
                schema["x-kubernetes-group-version-kind"] = gvk;
                schemas.insert(schema_name(t), schema);
            }
            Some(
                json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.0"},
                        "paths": paths, "components": {"schemas": schemas}}),
            )
        }
        _ => None,
    }
}
