//! Structural schemas of custom resources, applied as the apiextensions API server applies them
//! on every create and update (`k8s.io/apiextensions-apiserver`: `pkg/apiserver/schema/pruning`,
//! `pkg/apiserver/schema/defaulting`, `pkg/apiserver/validation`): unknown fields are pruned
//! unless `x-kubernetes-preserve-unknown-fields` keeps them, `null` in a non-nullable field is
//! dropped, defaults are filled in, then types, `required`, `enum`, bounds and lengths are
//! checked. A write that fails validation is a 422 and changes nothing. So a field a client
//! writes that the CRD does not declare disappears here as it does on a real cluster.

use serde_json::{Map, Value};

/// Prunes, defaults and validates `obj` (a whole object) against `schema` (the version's
/// `openAPIV3Schema`). Returns the field errors, each `path: message`.
pub fn apply(obj: &mut Value, schema: &Value) -> Vec<String> {
    let Some(root) = obj.as_object_mut() else {
        return vec!["<root>: Invalid value: must be an object".into()];
    };
    let mut errors = Vec::new();
    let props = schema["properties"].as_object();
    let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
    // apiVersion, kind and metadata are always kept; metadata is checked elsewhere.
    let keys: Vec<String> = root.keys().cloned().collect();
    for k in keys {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match props.and_then(|p| p.get(&k)) {
            Some(s) => {
                if let Some(v) = root.get_mut(&k) {
                    if v.is_null() && s["nullable"] != true {
                        root.remove(&k);
                        continue;
                    }
                    walk(v, s, &k, &mut errors);
                }
            }
            None if preserve => {}
            None => {
                root.remove(&k);
            }
        }
    }
    defaults(root, schema);
    required(root, schema, "", &mut errors);
    errors
}

fn defaults(m: &mut Map<String, Value>, schema: &Value) {
    if let Some(props) = schema["properties"].as_object() {
        for (k, s) in props {
            if !m.contains_key(k)
                && let Some(d) = s.get("default")
            {
                m.insert(k.clone(), d.clone());
            }
        }
    }
}

fn required(m: &Map<String, Value>, schema: &Value, path: &str, errors: &mut Vec<String>) {
    for r in schema["required"].as_array().into_iter().flatten() {
        if let Some(r) = r.as_str()
            && !m.contains_key(r)
        {
            errors.push(format!("{}: Required value", join(path, r)));
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        other => other.to_string(),
    }
}

fn walk(v: &mut Value, schema: &Value, path: &str, errors: &mut Vec<String>) {
    if v.is_null() {
        if schema["nullable"] != true {
            errors.push(format!(
                "{path}: Invalid value: \"null\": {path} in body must be of type {}: \"null\"",
                schema["type"].as_str().unwrap_or("object")
            ));
        }
        return;
    }
    if schema["x-kubernetes-int-or-string"] == true {
        if !matches!(type_name(v), "integer" | "string") {
            errors.push(format!(
                "{path}: Invalid value: {}: {path} in body must be of type integer or string",
                shown(v)
            ));
        }
        return;
    }
    if let Some(t) = schema["type"].as_str() {
        let actual = type_name(v);
        let ok = actual == t || (t == "number" && actual == "integer");
        if !ok {
            errors.push(format!(
                "{path}: Invalid value: \"{actual}\": {path} in body must be of type {t}: \"{actual}\""
            ));
            return;
        }
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        let list: Vec<String> = allowed.iter().map(shown).collect();
        errors.push(format!(
            "{path}: Unsupported value: {}: supported values: {}",
            shown(v),
            list.join(", ")
        ));
    }
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = schema["minimum"].as_f64()
                && x < min
            {
                errors.push(format!(
                    "{path}: Invalid value: {x}: {path} in body should be greater than or equal to {min}"
                ));
            }
            if let Some(max) = schema["maximum"].as_f64()
                && x > max
            {
                errors.push(format!(
                    "{path}: Invalid value: {x}: {path} in body should be less than or equal to {max}"
                ));
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(max) = schema["maxLength"].as_u64()
                && len > max
            {
                errors.push(format!(
                    "{path}: Too long: may not be more than {max} bytes"
                ));
            }
            if let Some(min) = schema["minLength"].as_u64()
                && len < min
            {
                errors.push(format!(
                    "{path}: Invalid value: \"{s}\": {path} in body should be at least {min} chars long"
                ));
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    walk(item, item_schema, &format!("{path}[{i}]"), errors);
                }
            }
        }
        Value::Object(m) => {
            let props = schema["properties"].as_object();
            let preserve = schema["x-kubernetes-preserve-unknown-fields"] == true;
            let additional = schema.get("additionalProperties");
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let sub = props.and_then(|p| p.get(&k)).or(match additional {
                    Some(Value::Object(_)) => additional,
                    _ => None,
                });
                match sub {
                    Some(s) => {
                        if m.get(&k).is_some_and(Value::is_null) && s["nullable"] != true {
                            m.remove(&k);
                            continue;
                        }
                        if let Some(x) = m.get_mut(&k) {
                            walk(x, s, &join(path, &k), errors);
                        }
                    }
                    None if preserve || additional == Some(&Value::Bool(true)) => {}
                    None => {
                        m.remove(&k);
                    }
                }
            }
            defaults(m, schema);
            required(m, schema, path, errors);
        }
        Value::Bool(_) | Value::Null => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["policy"], "properties": {
                "policy": {"type": "string", "maxLength": 5},
                "paused": {"type": "boolean", "default": false},
                "n": {"type": "integer", "minimum": 0, "maximum": 100},
                "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "maybe": {"type": "object", "nullable": true, "properties": {"a": {"type": "string"}}},
            }},
            "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
        }})
    }

    #[test]
    fn unknown_fields_are_pruned_and_kept_where_the_schema_says() {
        let mut o = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"}, "top": 1,
            "spec": {"policy": "p", "typo": 1, "open": {"any": {"thing": 1}}, "labels": {"a": "b"}},
            "status": {"phase": "x", "extra": true}});
        let errors = apply(&mut o, &schema());
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(o.get("top"), None);
        assert_eq!(o["spec"].get("typo"), None);
        assert_eq!(o["spec"]["open"]["any"]["thing"], 1);
        assert_eq!(o["spec"]["labels"]["a"], "b");
        assert_eq!(o["status"].get("extra"), None);
        assert_eq!(o["spec"]["paused"], false, "defaulted");
    }

    #[test]
    fn types_bounds_required_and_nulls() {
        let mut o = json!({"spec": {"policy": "toolong", "n": "5", "maybe": null, "paused": null}});
        let errors = apply(&mut o, &schema());
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("spec.policy: Too long")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("spec.n in body must be of type integer")),
            "{errors:?}"
        );
        assert_eq!(o["spec"]["maybe"], Value::Null, "nullable keeps null");
        assert_eq!(
            o["spec"]["paused"], false,
            "a null non-nullable field is dropped, then defaulted"
        );
        let mut o = json!({"spec": {"n": 101}});
        let errors = apply(&mut o, &schema());
        assert!(
            errors.contains(&"spec.policy: Required value".to_string()),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.contains("less than or equal to 100")),
            "{errors:?}"
        );
    }
}
