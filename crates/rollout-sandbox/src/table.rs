//! Server-side printing: the `meta.k8s.io/v1` Table `kubectl get` asks for (`as=Table`), with a
//! type's printer columns, as the apiextensions table convertor builds it
//! (`pkg/registry/customresource/tableconvertor`): NAME first, one cell per column from its
//! JSONPath, `date` columns as ages.

use serde_json::{Value, json};

use crate::jsonpath;
use crate::types::ResourceType;

/// Seconds since the epoch of an RFC 3339 timestamp (`YYYY-MM-DDTHH:MM:SS[.frac]Z`).
pub fn parse_rfc3339(t: &str) -> Option<u64> {
    let (date, time) = t.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.split('.').next()?;
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

/// A Kubernetes-style age (`45s`, `3m20s`, `5h`, `2d`), as `duration.HumanDuration` writes it.
pub fn age(created: &Value) -> Value {
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

fn cell(obj: &Value, type_: &str, path: &str) -> Value {
    let found = jsonpath::find(obj, path);
    let Some(first) = found.first() else {
        return Value::Null;
    };
    match type_ {
        "date" => age(first),
        "integer" => {
            if first.is_i64() || first.is_u64() {
                (*first).clone()
            } else {
                Value::Null
            }
        }
        "number" => {
            if first.is_number() {
                (*first).clone()
            } else {
                Value::Null
            }
        }
        "boolean" => {
            if first.is_boolean() {
                (*first).clone()
            } else {
                Value::Null
            }
        }
        _ => {
            let text: Vec<String> = found
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect();
            json!(text.join(","))
        }
    }
}

/// The Table of `items` of type `t`.
pub fn table(t: &ResourceType, items: &[Value], rv: u64) -> Value {
    let core_events = t.read_only && t.plural == "events";
    let mut cols = Vec::new();
    if !core_events {
        cols.push(json!({"name": "Name", "type": "string", "format": "name",
            "description": "Name must be unique within a namespace.", "priority": 0}));
    }
    for c in &t.columns {
        cols.push(json!({"name": c.name, "type": if c.type_ == "date" { "string" } else { c.type_.as_str() },
            "format": "", "description": c.name, "priority": c.priority}));
    }
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = Vec::new();
            if !core_events {
                cells.push(o["metadata"]["name"].clone());
            }
            for c in &t.columns {
                if core_events && c.name == "Object" {
                    cells.push(json!(format!(
                        "{}/{}",
                        o["involvedObject"]["kind"].as_str().unwrap_or("").to_lowercase(),
                        o["involvedObject"]["name"].as_str().unwrap_or("")
                    )));
                } else if core_events && c.name == "Last Seen" {
                    cells.push(age(&o["lastTimestamp"]));
                } else {
                    cells.push(cell(o, &c.type_, &c.json_path));
                }
            }
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": rv.to_string()},
           "columnDefinitions": cols, "rows": rows})
}
