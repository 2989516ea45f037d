//! Request bodies in Kubernetes' protobuf encoding, which kubectl's typed commands send for
//! built-in types (`kubectl create namespace`, `kubectl create configmap`): the `k8s\0` magic,
//! a `runtime.Unknown` envelope (`k8s.io/apimachinery/pkg/runtime/generated.proto`) and the
//! object. Decoded here for the built-in types the sandbox stores: `ObjectMeta` for every type
//! (`pkg/apis/meta/v1/generated.proto`), plus a ConfigMap's data and a Namespace's finalizers
//! (`k8s.io/api/core/v1/generated.proto`). Anything else in the object is not kept.

use serde_json::{Map, Value, json};

const MAGIC: &[u8] = b"k8s\0";

/// A protobuf field: its number and its value.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn fields(b: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let tag = varint(b, &mut i)?;
        let (num, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => out.push((num, Field::Varint(varint(b, &mut i)?))),
            1 => i = i.checked_add(8)?,
            2 => {
                let len = usize::try_from(varint(b, &mut i)?).ok()?;
                let end = i.checked_add(len)?;
                out.push((num, Field::Bytes(b.get(i..end)?)));
                i = end;
            }
            5 => i = i.checked_add(4)?,
            _ => return None,
        }
    }
    (i == b.len()).then_some(out)
}

fn text(b: &[u8]) -> Value {
    Value::String(String::from_utf8_lossy(b).into_owned())
}

fn map_entry(b: &[u8]) -> Option<(String, Value)> {
    let mut k = String::new();
    let mut v = Value::String(String::new());
    for (n, f) in fields(b)? {
        if let Field::Bytes(x) = f {
            match n {
                1 => k = String::from_utf8_lossy(x).into_owned(),
                2 => v = text(x),
                _ => {}
            }
        }
    }
    Some((k, v))
}

fn object_meta(b: &[u8]) -> Option<Value> {
    let mut m = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = Vec::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(x)) => {
                m.insert("name".into(), text(x));
            }
            (2, Field::Bytes(x)) => {
                m.insert("generateName".into(), text(x));
            }
            (3, Field::Bytes(x)) => {
                m.insert("namespace".into(), text(x));
            }
            (6, Field::Bytes(x)) => {
                m.insert("resourceVersion".into(), text(x));
            }
            (11, Field::Bytes(x)) => {
                let (k, v) = map_entry(x)?;
                labels.insert(k, v);
            }
            (12, Field::Bytes(x)) => {
                let (k, v) = map_entry(x)?;
                annotations.insert(k, v);
            }
            (14, Field::Bytes(x)) => finalizers.push(text(x)),
            _ => {}
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    Some(Value::Object(m))
}

/// Decodes a protobuf request body into the JSON object it stands for.
pub fn decode(body: &[u8]) -> Option<Value> {
    let envelope = body.strip_prefix(MAGIC)?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, f) in fields(envelope)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (n, f) in fields(tm)? {
                    if let Field::Bytes(x) = f {
                        match n {
                            1 => api_version = String::from_utf8_lossy(x).into_owned(),
                            2 => kind = String::from_utf8_lossy(x).into_owned(),
                            _ => {}
                        }
                    }
                }
            }
            (2, Field::Bytes(x)) => raw = x,
            _ => {}
        }
    }
    let mut obj = json!({"apiVersion": api_version, "kind": kind});
    let mut data = Map::new();
    for (n, f) in fields(raw)? {
        match (n, f) {
            (1, Field::Bytes(x)) => obj["metadata"] = object_meta(x)?,
            (2, Field::Bytes(x)) if kind == "ConfigMap" => {
                let (k, v) = map_entry(x)?;
                data.insert(k, v);
            }
            (2, Field::Bytes(x)) if kind == "Namespace" => {
                let f: Vec<Value> = fields(x)?
                    .into_iter()
                    .filter_map(|(n, f)| match (n, f) {
                        (1, Field::Bytes(s)) => Some(text(s)),
                        _ => None,
                    })
                    .collect();
                obj["spec"] = json!({"finalizers": f});
            }
            (4, Field::Varint(v)) if kind == "ConfigMap" => obj["immutable"] = json!(v != 0),
            _ => {}
        }
    }
    if !data.is_empty() {
        obj["data"] = Value::Object(data);
    }
    Some(obj)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_field(n: u64, b: &[u8]) -> Vec<u8> {
        let mut out = vec![((n << 3) | 2) as u8, b.len() as u8];
        out.extend_from_slice(b);
        out
    }

    #[test]
    fn a_configmap_as_kubectl_sends_it() {
        let meta = [bytes_field(1, b"c"), bytes_field(3, b"team-a")].concat();
        let entry = [bytes_field(1, b"a"), bytes_field(2, b"b")].concat();
        let cm = [bytes_field(1, &meta), bytes_field(2, &entry)].concat();
        let tm = [bytes_field(1, b"v1"), bytes_field(2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), bytes_field(1, &tm), bytes_field(2, &cm)].concat();
        let v = decode(&body).expect("decodes");
        assert_eq!(v["kind"], "ConfigMap");
        assert_eq!(v["metadata"]["name"], "c");
        assert_eq!(v["metadata"]["namespace"], "team-a");
        assert_eq!(v["data"]["a"], "b");
        assert!(decode(b"k8s\0\xff").is_none(), "truncated input is refused");
        assert!(decode(b"{}").is_none());
    }
}
