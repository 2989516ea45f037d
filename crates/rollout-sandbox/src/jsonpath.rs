//! The JSONPath subset printer columns use (`k8s.io/client-go/util/jsonpath`): fields
//! (`.status.phase`), indexes (`[0]`), wildcards (`[*]`) and filters comparing a field with a
//! string, number or boolean (`[?(@.type=='Ready')]`, `[?(@.latestRevision==true)]`).

use serde_json::Value;

#[derive(Debug, PartialEq)]
enum Seg {
    Field(String),
    Index(usize),
    All,
    Filter(Vec<String>, Value),
}

fn parse(path: &str) -> Option<Vec<Seg>> {
    let p = path.trim().trim_start_matches('{').trim_end_matches('}');
    let mut out = Vec::new();
    let b = p.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'.' => {
                let start = i + 1;
                let mut j = start;
                while j < b.len() && b[j] != b'.' && b[j] != b'[' {
                    j += 1;
                }
                if j > start {
                    out.push(Seg::Field(p[start..j].to_string()));
                }
                i = j;
            }
            b'[' => {
                let end = p[i..].find(']')? + i;
                let inner = &p[i + 1..end];
                if inner == "*" {
                    out.push(Seg::All);
                } else if let Some(f) = inner.strip_prefix("?(").and_then(|f| f.strip_suffix(')')) {
                    let (lhs, rhs) = f.split_once("==")?;
                    let fields: Vec<String> = lhs
                        .trim()
                        .strip_prefix('@')?
                        .split('.')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect();
                    let rhs = rhs.trim();
                    let value = if let Some(s) = rhs
                        .strip_prefix('\'')
                        .and_then(|s| s.strip_suffix('\''))
                        .or_else(|| rhs.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
                    {
                        Value::String(s.to_string())
                    } else {
                        serde_json::from_str(rhs).ok()?
                    };
                    out.push(Seg::Filter(fields, value));
                } else {
                    out.push(Seg::Index(inner.trim().parse().ok()?));
                }
                i = end + 1;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Every value `path` selects in `obj` (none for an unparsable path).
pub fn find<'a>(obj: &'a Value, path: &str) -> Vec<&'a Value> {
    let Some(segs) = parse(path) else {
        return Vec::new();
    };
    let mut cur = vec![obj];
    for s in &segs {
        let mut next = Vec::new();
        for v in cur {
            match s {
                Seg::Field(f) => next.extend(v.get(f.as_str())),
                Seg::Index(i) => next.extend(v.get(*i)),
                Seg::All => match v {
                    Value::Array(a) => next.extend(a.iter()),
                    Value::Object(m) => next.extend(m.values()),
                    _ => {}
                },
                Seg::Filter(fields, want) => {
                    for item in v.as_array().into_iter().flatten() {
                        let got = fields.iter().try_fold(item, |x, f| x.get(f.as_str()));
                        if got == Some(want) {
                            next.push(item);
                        }
                    }
                }
            }
        }
        cur = next;
    }
    cur
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn kserve_printer_columns_select_what_they_name() {
        let o = json!({"status": {"conditions": [{"type": "PredictorReady", "status": "False"}, {"type": "Ready", "status": "True"}],
            "components": {"predictor": {"traffic": [
                {"latestRevision": true, "percent": 10, "revisionName": "a-00002"},
                {"latestRevision": false, "percent": 90, "revisionName": "a-00001", "tag": "prev"}]}}}});
        assert_eq!(
            find(&o, ".status.conditions[?(@.type=='Ready')].status"),
            vec![&json!("True")]
        );
        assert_eq!(
            find(
                &o,
                ".status.components.predictor.traffic[?(@.latestRevision==true)].percent"
            ),
            vec![&json!(10)]
        );
        assert_eq!(
            find(
                &o,
                ".status.components.predictor.traffic[?(@.tag==\"prev\")].revisionName"
            ),
            vec![&json!("a-00001")]
        );
        assert_eq!(
            find(&o, ".status.components.predictor.traffic[1].percent"),
            vec![&json!(90)]
        );
        assert_eq!(
            find(&o, ".status.components.predictor.traffic[*].percent").len(),
            2
        );
        assert!(find(&o, ".status.missing").is_empty());
        assert!(find(&o, "status[").is_empty());
    }
}
