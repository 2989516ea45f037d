//! `metadata.managedFields`, as the API server keeps them (`k8s.io/apimachinery/pkg/util/managedfields`,
//! `structured-merge-diff`): for every write, the leaf fields it set are owned by its field
//! manager (the `fieldManager` of the request, else one derived from the user agent) and
//! removed from every other manager's set, in the `FieldsV1` form (`{"f:spec": {"f:predictor":
//! {"f:canaryTrafficPercent": {}}}}`). This is how a runner names who changed a field it did not
//! write. Arrays are owned whole (no list-map keys).

use serde_json::{Map, Value, json};

/// Leaf paths (under `spec`, `metadata.labels`, `metadata.annotations` and other top-level
/// fields but `status` and `metadata`'s bookkeeping) whose value differs between two objects.
fn changed(before: &Value, after: &Value) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    fn walk(
        a: Option<&Value>,
        b: Option<&Value>,
        path: &mut Vec<String>,
        out: &mut Vec<Vec<String>>,
    ) {
        match (a, b) {
            (Some(Value::Object(x)), Some(Value::Object(y))) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    path.push(k.clone());
                    walk(x.get(k), y.get(k), path, out);
                    path.pop();
                }
            }
            (_, Some(Value::Object(y))) if !y.is_empty() => {
                for (k, v) in y {
                    path.push(k.clone());
                    walk(None, Some(v), path, out);
                    path.pop();
                }
            }
            (x, y) if x != y && y.is_some() => out.push(path.clone()),
            _ => {}
        }
    }
    for (k, v) in after.as_object().into_iter().flatten() {
        match k.as_str() {
            "status" | "apiVersion" | "kind" => {}
            "metadata" => {
                for field in ["labels", "annotations", "finalizers", "ownerReferences"] {
                    let mut path = vec!["metadata".to_string(), field.to_string()];
                    walk(
                        before["metadata"].get(field),
                        v.get(field),
                        &mut path,
                        &mut out,
                    );
                }
            }
            _ => {
                let mut path = vec![k.clone()];
                walk(before.get(k), Some(v), &mut path, &mut out);
            }
        }
    }
    out
}

fn insert(set: &mut Map<String, Value>, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let entry = set.entry(format!("f:{first}")).or_insert_with(|| json!({}));
    if let Value::Object(m) = entry {
        insert(m, rest);
    }
}

fn remove(set: &mut Map<String, Value>, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let k = format!("f:{first}");
    if rest.is_empty() {
        set.remove(&k);
        return;
    }
    if let Some(Value::Object(m)) = set.get_mut(&k) {
        remove(m, rest);
        if m.is_empty() {
            set.remove(&k);
        }
    }
}

/// Records the write from `before` to `after` by `manager` in `after`'s managedFields.
pub fn record(before: &Value, after: &mut Value, manager: &str, time: &str) {
    let paths = changed(before, after);
    let mut entries: Vec<Value> = before["metadata"]["managedFields"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if paths.is_empty() {
        after["metadata"]["managedFields"] = json!(entries);
        return;
    }
    for e in entries.iter_mut() {
        if e["manager"] != manager
            && let Some(set) = e["fieldsV1"].as_object_mut()
        {
            for p in &paths {
                remove(set, p);
            }
        }
    }
    entries.retain(|e| {
        e["manager"] == manager || e["fieldsV1"].as_object().is_some_and(|s| !s.is_empty())
    });
    let api_version = after["apiVersion"].clone();
    let idx = entries.iter().position(|e| e["manager"] == manager);
    let idx = match idx {
        Some(i) => i,
        None => {
            entries.push(
                json!({"manager": manager, "operation": "Update", "apiVersion": api_version,
                                "fieldsType": "FieldsV1", "fieldsV1": {}}),
            );
            entries.len() - 1
        }
    };
    entries[idx]["time"] = json!(time);
    if let Some(set) = entries[idx]["fieldsV1"].as_object_mut() {
        for p in &paths {
            insert(set, p);
        }
    }
    after["metadata"]["managedFields"] = json!(entries);
}

/// The manager that owns a field (a path such as `["spec", "predictor", "canaryTrafficPercent"]`).
pub fn owner<'a>(obj: &'a Value, path: &[&str]) -> Option<&'a str> {
    obj["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find_map(|e| {
            let mut cur = &e["fieldsV1"];
            for p in path {
                cur = cur.get(format!("f:{p}"))?;
            }
            e["manager"].as_str()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_writer_of_a_field_owns_it() {
        let a = json!({"metadata": {"name": "x"}, "spec": {"predictor": {"canaryTrafficPercent": 10, "model": {"storageUri": "s"}}}});
        let mut b = a.clone();
        record(&json!({}), &mut b, "kubectl-client-side-apply", "t0");
        assert_eq!(
            owner(&b, &["spec", "predictor", "canaryTrafficPercent"]),
            Some("kubectl-client-side-apply")
        );
        let mut c = b.clone();
        c["spec"]["predictor"]["canaryTrafficPercent"] = json!(25);
        record(&b, &mut c, "rolloutctl", "t1");
        assert_eq!(
            owner(&c, &["spec", "predictor", "canaryTrafficPercent"]),
            Some("rolloutctl")
        );
        assert_eq!(
            owner(&c, &["spec", "predictor", "model", "storageUri"]),
            Some("kubectl-client-side-apply")
        );
    }
}
