//! The patch types of the API server: JSON merge patch (RFC 7386), JSON patch (RFC 6902), and the
//! bookkeeping server-side apply needs (the leaf paths a field manager applied).

use serde_json::{Value, json};

use crate::store::ApiError;

/// RFC 7386 JSON merge patch (`null` deletes). With `keep_nulls`, nulls are stored instead.
pub fn merge(target: &mut Value, patch: &Value, keep_nulls: bool) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() && !keep_nulls {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(Value::Null), v, keep_nulls);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// RFC 6902 JSON patch: `add`, `remove`, `replace`, `test` (and `copy`/`move`).
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), ApiError> {
    let ops = ops
        .as_array()
        .ok_or_else(|| ApiError::bad_request("a JSON patch is an array of operations"))?;
    for op in ops {
        let kind = op["op"].as_str().unwrap_or("");
        let path = op["path"].as_str().unwrap_or("");
        let bad = || ApiError {
            code: 422,
            reason: "Invalid",
            message: format!("json patch {kind} {path}: path not found"),
            details: None,
            causes: Vec::new(),
        };
        match kind {
            "add" | "replace" => {
                let (parent, last) = split_pointer(path);
                let p = target.pointer_mut(&parent).ok_or_else(bad)?;
                match p {
                    Value::Object(m) => {
                        if kind == "replace" && !m.contains_key(&last) {
                            return Err(bad());
                        }
                        m.insert(last, op["value"].clone());
                    }
                    Value::Array(a) => {
                        let i = if last == "-" {
                            a.len()
                        } else {
                            last.parse().map_err(|_| bad())?
                        };
                        if kind == "add" && i <= a.len() {
                            a.insert(i, op["value"].clone());
                        } else if i < a.len() {
                            a[i] = op["value"].clone();
                        } else {
                            return Err(bad());
                        }
                    }
                    _ => return Err(bad()),
                }
            }
            "remove" => {
                let (parent, last) = split_pointer(path);
                let p = target.pointer_mut(&parent).ok_or_else(bad)?;
                match p {
                    Value::Object(m) => {
                        m.remove(&last).ok_or_else(bad)?;
                    }
                    Value::Array(a) => {
                        let i: usize = last.parse().map_err(|_| bad())?;
                        if i >= a.len() {
                            return Err(bad());
                        }
                        a.remove(i);
                    }
                    _ => return Err(bad()),
                }
            }
            "test" => {
                if target.pointer(path) != Some(&op["value"]) {
                    return Err(ApiError {
                        code: 422,
                        reason: "Invalid",
                        message: format!("json patch test {path} failed"),
                        details: None,
                        causes: Vec::new(),
                    });
                }
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unsupported JSON patch operation `{other}`"
                )));
            }
        }
    }
    Ok(())
}

fn split_pointer(path: &str) -> (String, String) {
    match path.rfind('/') {
        Some(i) => (
            path[..i].to_string(),
            path[i + 1..].replace("~1", "/").replace("~0", "~"),
        ),
        None => (String::new(), path.to_string()),
    }
}

/// Leaf paths of an applied configuration (objects descend; arrays and scalars are leaves).
pub fn leaf_paths(v: &Value) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    fn walk(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    prefix.push(k.clone());
                    walk(x, prefix, out);
                    prefix.pop();
                }
            }
            _ => out.push(prefix.clone()),
        }
    }
    walk(v, &mut Vec::new(), &mut out);
    out
}

pub fn remove_path(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for p in parents {
        match cur.get_mut(p.as_str()) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Value::Object(m) = cur {
        m.remove(last);
    }
}
