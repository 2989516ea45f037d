//! Field and label selectors of lists and watches (`fieldSelector=involvedObject.name=x`,
//! `labelSelector=team=a,!canary`), as the API server reads them.

use std::collections::HashMap;

use serde_json::Value;

/// One selector requirement.
#[derive(Clone, Debug)]
pub enum Req {
    /// `k=v` / `k==v`.
    Eq(String, String),
    /// `k!=v`.
    Ne(String, String),
    /// `k` (labels: exists).
    Exists(String),
    /// `!k` (labels: does not exist).
    NotExists(String),
}

fn parse_selector(s: &str) -> Vec<Req> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            if let Some((k, v)) = p.split_once("!=") {
                Req::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some(k) = p.strip_prefix('!') {
                Req::NotExists(k.trim().into())
            } else {
                Req::Exists(p.into())
            }
        })
        .collect()
}

/// Field and label selectors of a list or watch.
#[derive(Clone, Debug, Default)]
pub struct Selectors {
    fields: Vec<Req>,
    labels: Vec<Req>,
}

impl Selectors {
    /// The selectors of a query.
    pub fn of(q: &HashMap<String, String>) -> Selectors {
        Selectors {
            fields: q
                .get("fieldSelector")
                .map(|s| parse_selector(s))
                .unwrap_or_default(),
            labels: q
                .get("labelSelector")
                .map(|s| parse_selector(s))
                .unwrap_or_default(),
        }
    }

    /// Whether an object (as the client sees it) matches.
    pub fn matches(&self, obj: &Value) -> bool {
        let field = |k: &str| -> Option<String> {
            let mut cur = obj;
            for part in k.split('.') {
                cur = cur.get(part)?;
            }
            Some(match cur {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
        };
        let fields_ok = self.fields.iter().all(|r| match r {
            Req::Eq(k, v) => field(k).unwrap_or_default() == *v,
            Req::Ne(k, v) => field(k).unwrap_or_default() != *v,
            _ => true,
        });
        let label = |k: &str| obj["metadata"]["labels"][k].as_str().map(str::to_string);
        let labels_ok = self.labels.iter().all(|r| match r {
            Req::Eq(k, v) => label(k).as_deref() == Some(v.as_str()),
            Req::Ne(k, v) => label(k).as_deref() != Some(v.as_str()),
            Req::Exists(k) => label(k).is_some(),
            Req::NotExists(k) => label(k).is_none(),
        });
        fields_ok && labels_ok
    }
}
