//! The object store: one global resourceVersion, objects by resource/namespace/name, a bounded
//! log of watch events, and the object semantics of the Kubernetes API server that clients rely
//! on: namespaces that must exist, metadata that must be well-formed, `generation`, optimistic
//! concurrency (409 on a stale resourceVersion), the status subresource, structural schemas of
//! custom resources, finalizers with `deletionTimestamp`, and garbage collection of dependents
//! through ownerReferences (`pkg/controller/garbagecollector`, background propagation).

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

use crate::errors::split_id;
pub use crate::errors::{ApiError, now_rfc3339, rfc3339};
use crate::patch::{leaf_paths, merge, remove_path};
use crate::types::{Registry, ResourceType, crd_status, ids};

/// Where an object lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// The resource's storage identity (`inferenceservices.serving.kserve.io`, `namespaces`).
    pub res: String,
    /// Namespace ("" for cluster-scoped).
    pub ns: String,
    /// Name.
    pub name: String,
}

impl Key {
    /// A key.
    pub fn new(res: &str, ns: &str, name: &str) -> Key {
        Key {
            res: res.into(),
            ns: ns.into(),
            name: name.into(),
        }
    }
}

/// One watch event.
#[derive(Clone, Debug)]
pub struct WatchEvent {
    /// The resourceVersion after the change.
    pub rv: u64,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    pub kind: &'static str,
    /// Which object.
    pub key: Key,
    /// The object after the change (before, for deletions, with the new resourceVersion).
    pub object: Value,
}

/// How many watch events are kept for clients resuming from an older resourceVersion.
const LOG_LEN: usize = 10_000;

/// The store.
#[derive(Debug)]
pub struct Store {
    rv: u64,
    uid: u64,
    objects: BTreeMap<Key, Value>,
    log: VecDeque<WatchEvent>,
    tx: broadcast::Sender<WatchEvent>,
    /// Server-side apply: leaf paths each field manager last applied, per object.
    applied: HashMap<(Key, String), Vec<Vec<String>>>,
    /// The served types.
    pub registry: Registry,
    /// Writes by clients that changed an object other than its status, per object (for
    /// tests and the demo: how often rolloutctl writes to an InferenceService).
    pub writes: BTreeMap<Key, u64>,
    /// Whether writes are counted in [`Store::writes`] (not while the emulated controllers
    /// write).
    pub counting: bool,
    /// The field manager of the write in progress (recorded in `metadata.managedFields`).
    pub manager: String,
}

impl Default for Store {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(4096);
        Store {
            rv: 1,
            uid: 0,
            objects: BTreeMap::new(),
            log: VecDeque::new(),
            tx,
            applied: HashMap::new(),
            registry: Registry::builtin(),
            writes: BTreeMap::new(),
            counting: true,
            manager: "kserve-controller".into(),
        }
    }
}

/// Whether `name` is a DNS-1123 subdomain (what most object names must be).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Checks what the API server's decoding and `ValidateObjectMeta` reject: annotations and
/// labels are `map[string]string` (anything else cannot be decoded: 400), label values are at
/// most 63 characters (422).
fn check_meta(t: &ResourceType, obj: &Value) -> Result<(), ApiError> {
    let meta = &obj["metadata"];
    for field in ["annotations", "labels"] {
        match meta.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                if let Some((k, v)) = m.iter().find(|(_, v)| !v.is_string()) {
                    return Err(ApiError::bad_request(format!(
                        "{} in version \"{}\" cannot be handled as a {}: json: cannot unmarshal {} into Go struct field ObjectMeta.metadata.{field} of type string (key {k})",
                        t.kind,
                        t.version,
                        t.kind,
                        json_kind(v)
                    )));
                }
                if field == "labels"
                    && let Some((k, _)) = m
                        .iter()
                        .find(|(_, v)| v.as_str().is_some_and(|s| s.len() > 63))
                {
                    return Err(ApiError::invalid(
                        &t.kind,
                        &t.group,
                        meta["name"].as_str().unwrap_or(""),
                        &[format!(
                            "metadata.labels: Invalid value: \"{k}\": must be no more than 63 characters"
                        )],
                    ));
                }
            }
            Some(_) => {
                return Err(ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: json: cannot unmarshal into Go struct field ObjectMeta.metadata.{field} of type map[string]string",
                    t.kind, t.version, t.kind
                )));
            }
        }
    }
    Ok(())
}

impl Store {
    /// The current resourceVersion.
    pub fn rv(&self) -> u64 {
        self.rv
    }

    /// The oldest resourceVersion a watch can resume from.
    pub fn oldest_rv(&self) -> u64 {
        self.log.front().map_or(self.rv, |e| e.rv - 1)
    }

    /// Subscribes to live events.
    pub fn subscribe(&self) -> broadcast::Receiver<WatchEvent> {
        self.tx.subscribe()
    }

    /// Logged events after `rv`.
    /// The objects changed after `rv` (newest first; from the log, which holds every recent
    /// change).
    pub fn keys_after(&self, rv: u64) -> Vec<Key> {
        self.log
            .iter()
            .rev()
            .take_while(|e| e.rv > rv)
            .map(|e| e.key.clone())
            .collect()
    }

    pub fn events_after(&self, rv: u64) -> Vec<WatchEvent> {
        self.log.iter().filter(|e| e.rv > rv).cloned().collect()
    }

    /// One object, borrowed.
    pub fn peek(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    /// One object.
    pub fn get(&self, key: &Key) -> Result<Value, ApiError> {
        self.objects
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(key))
    }

    /// Objects of a resource, optionally in one namespace.
    pub fn list(&self, res: &str, ns: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|(k, _)| k.res == res && ns.is_none_or(|n| k.ns == n))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Keys of a resource.
    pub fn keys(&self, res: &str) -> Vec<Key> {
        self.objects
            .keys()
            .filter(|k| k.res == res)
            .cloned()
            .collect()
    }

    fn bump(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    fn record(&mut self, kind: &'static str, key: Key, object: Value) {
        let ev = WatchEvent {
            rv: self.rv,
            kind,
            key,
            object,
        };
        self.log.push_back(ev.clone());
        while self.log.len() > LOG_LEN {
            self.log.pop_front();
        }
        let _ = self.tx.send(ev);
    }

    fn type_of(&self, key: &Key) -> Result<ResourceType, ApiError> {
        self.registry
            .by_id(&key.res)
            .cloned()
            .ok_or_else(|| ApiError::not_found(key))
    }

    /// Prunes, defaults and validates a custom resource against its type's schema.
    fn check_schema(&self, t: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
        if let Some(schema) = &t.schema {
            let errors = crate::schema::apply(obj, schema);
            if !errors.is_empty() {
                return Err(ApiError::invalid(
                    &t.kind,
                    &t.group,
                    obj["metadata"]["name"].as_str().unwrap_or(""),
                    &errors,
                ));
            }
        }
        Ok(())
    }

    /// Creates an object: its namespace must exist, its name must be free and valid.
    pub fn create(&mut self, key: Key, mut obj: Value) -> Result<Value, ApiError> {
        let t = self.type_of(&key)?;
        if t.namespaced {
            let ns = Key::new(ids::NAMESPACES, "", &key.ns);
            if !self.objects.contains_key(&ns) {
                return Err(ApiError {
                    code: 404,
                    reason: "NotFound",
                    message: format!("namespaces \"{}\" not found", key.ns),
                    details: Some(Box::new((
                        key.ns.clone(),
                        String::new(),
                        "namespaces".into(),
                    ))),
                    causes: Vec::new(),
                });
            }
        }
        if !valid_name(&key.name) {
            return Err(ApiError::invalid(
                &t.kind,
                &t.group,
                &key.name,
                &[format!(
                    "metadata.name: Invalid value: \"{}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
                    key.name
                )],
            ));
        }
        if self.objects.contains_key(&key) {
            let (group, plural) = split_id(&key.res);
            return Err(ApiError {
                code: 409,
                reason: "AlreadyExists",
                message: format!("{} \"{}\" already exists", key.res, key.name),
                details: Some(Box::new((key.name.clone(), group, plural))),
                causes: Vec::new(),
            });
        }
        check_meta(&t, &obj)?;
        let obj_map = ensure_object(&mut obj);
        obj_map.insert("apiVersion".into(), json!(t.api_version()));
        obj_map.insert("kind".into(), json!(t.kind));
        let meta = obj_map.entry("metadata").or_insert_with(|| json!({}));
        if !meta.is_object() {
            *meta = json!({});
        }
        meta["name"] = json!(key.name);
        if t.namespaced {
            meta["namespace"] = json!(key.ns);
        } else if let Some(m) = meta.as_object_mut() {
            m.remove("namespace");
        }
        if let Some(m) = meta.as_object_mut() {
            for f in [
                "managedFields",
                "deletionTimestamp",
                "generation",
                "resourceVersion",
            ] {
                m.remove(f);
            }
        }
        crate::managed::record(&json!({}), &mut obj, &self.manager, &now_rfc3339());
        if t.status_subresource && key.res != ids::CRDS {
            // A create through the main resource drops the status
            // (`customresource` strategy `PrepareForCreate`).
            if let Some(m) = obj.as_object_mut() {
                m.remove("status");
            }
        }
        self.check_schema(&t, &mut obj)?;
        if key.res == ids::CRDS {
            self.registry
                .register_crd(&obj)
                .map_err(|e| ApiError::invalid(&t.kind, &t.group, &key.name, &[e]))?;
            obj["status"] = crd_status(&obj, &now_rfc3339());
        }
        let rv = self.bump();
        self.uid += 1;
        let meta = &mut obj["metadata"];
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.uid));
        meta["creationTimestamp"] = json!(now_rfc3339());
        meta["resourceVersion"] = json!(rv.to_string());
        if t.generation {
            meta["generation"] = json!(1);
        }
        self.objects.insert(key.clone(), obj.clone());
        if self.counting {
            *self.writes.entry(key.clone()).or_default() += 1;
        }
        self.record("ADDED", key, obj.clone());
        Ok(obj)
    }

    /// Replaces an object (`PUT`). With `status_only`, only `.status` changes; otherwise
    /// everything but `.status` (for types with a status subresource). A
    /// `metadata.resourceVersion` in the body must match.
    pub fn replace(&mut self, key: &Key, new: Value, status_only: bool) -> Result<Value, ApiError> {
        self.modify(key, status_only, move |obj| {
            let rv = obj["metadata"]["resourceVersion"].clone();
            *obj = new;
            // An update without a resourceVersion is unconditional.
            if obj.pointer("/metadata/resourceVersion").is_none() && obj["metadata"].is_object() {
                obj["metadata"]["resourceVersion"] = rv;
            }
            Ok(())
        })
    }

    /// Applies a change computed by `f` to the current object (updates and patches). A
    /// `metadata.resourceVersion` in the result that differs from the current one is a 409,
    /// as the API server's update precondition.
    pub fn modify(
        &mut self,
        key: &Key,
        status_only: bool,
        f: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let t = self.type_of(key)?;
        if t.read_only {
            return Err(ApiError {
                code: 405,
                reason: "MethodNotAllowed",
                message: "the server does not allow this method on the requested resource".into(),
                details: None,
                causes: Vec::new(),
            });
        }
        let current = self.get(key)?;
        let mut obj = current.clone();
        f(&mut obj)?;
        if !obj.is_object() {
            return Err(ApiError::bad_request("the object must be a JSON object"));
        }
        if let Some(rv) = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            && Some(rv) != current["metadata"]["resourceVersion"].as_str()
        {
            return Err(ApiError::conflict(key));
        }
        check_meta(&t, &obj)?;
        if status_only {
            let status = obj.get("status").cloned();
            obj = current.clone();
            match status {
                Some(s) => obj["status"] = s,
                None => {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        } else {
            if t.status_subresource {
                match current.get("status") {
                    Some(s) => obj["status"] = s.clone(),
                    None => {
                        if let Some(m) = obj.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            let m = ensure_object(&mut obj);
            m.insert("apiVersion".into(), json!(t.api_version()));
            m.insert("kind".into(), json!(t.kind));
            if !m.get("metadata").is_some_and(Value::is_object) {
                m.insert("metadata".into(), json!({}));
            }
            for field in [
                "uid",
                "creationTimestamp",
                "generation",
                "namespace",
                "name",
                "deletionTimestamp",
            ] {
                match current["metadata"].get(field) {
                    Some(v) => obj["metadata"][field] = v.clone(),
                    None => {
                        if let Some(m) = obj["metadata"].as_object_mut() {
                            m.remove(field);
                        }
                    }
                }
            }
        }
        self.check_schema(&t, &mut obj)?;
        if key.res == ids::CRDS && !status_only {
            self.registry
                .register_crd(&obj)
                .map_err(|e| ApiError::invalid(&t.kind, &t.group, &key.name, &[e]))?;
            obj["status"] = crd_status(&obj, &now_rfc3339());
        }
        self.commit(key, &t, &current, obj, status_only)
    }

    fn commit(
        &mut self,
        key: &Key,
        t: &ResourceType,
        current: &Value,
        mut obj: Value,
        status_only: bool,
    ) -> Result<Value, ApiError> {
        // No change at all: no new resourceVersion, no event (as the API server does).
        let mut probe = obj.clone();
        probe["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        if probe == *current {
            return Ok(current.clone());
        }
        if t.generation && !status_only {
            // Generation counts changes to anything but metadata and status.
            let strip = |v: &Value| {
                let mut v = v.clone();
                if let Some(m) = v.as_object_mut() {
                    m.remove("metadata");
                    m.remove("status");
                }
                v
            };
            if strip(&obj) != strip(current) {
                let g = current["metadata"]["generation"].as_i64().unwrap_or(1);
                obj["metadata"]["generation"] = json!(g + 1);
            }
        }
        if !status_only {
            if self.counting {
                *self.writes.entry(key.clone()).or_default() += 1;
            }
            crate::managed::record(current, &mut obj, &self.manager, &now_rfc3339());
        } else if let Some(m) = current["metadata"].get("managedFields") {
            obj["metadata"]["managedFields"] = m.clone();
        }
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let finalized = obj["metadata"]["deletionTimestamp"].is_string()
            && obj["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty);
        self.objects.insert(key.clone(), obj.clone());
        self.record("MODIFIED", key.clone(), obj.clone());
        if finalized {
            // The last finalizer is gone: the object goes now.
            self.remove(key);
        }
        Ok(obj)
    }

    /// Deletes an object: with finalizers, marks it (`deletionTimestamp`) and keeps it until
    /// they are removed; without, removes it and its dependents.
    pub fn delete(&mut self, key: &Key) -> Result<Value, ApiError> {
        let t = self.type_of(key)?;
        if t.read_only {
            return Err(ApiError {
                code: 405,
                reason: "MethodNotAllowed",
                message: "the server does not allow this method on the requested resource".into(),
                details: None,
                causes: Vec::new(),
            });
        }
        let obj = self.get(key)?;
        let has_finalizers = obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if obj["metadata"]["deletionTimestamp"].is_string() {
                return Ok(obj);
            }
            let mut marked = obj.clone();
            marked["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            let rv = self.bump();
            marked["metadata"]["resourceVersion"] = json!(rv.to_string());
            self.objects.insert(key.clone(), marked.clone());
            self.record("MODIFIED", key.clone(), marked.clone());
            return Ok(marked);
        }
        self.remove(key).ok_or_else(|| ApiError::not_found(key))
    }

    /// Removes an object now, then what depends on it: the objects of a namespace, the custom
    /// resources of a CRD, and every object whose ownerReferences name it.
    fn remove(&mut self, key: &Key) -> Option<Value> {
        let mut obj = self.objects.remove(key)?;
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.applied.retain(|(k, _), _| k != key);
        self.record("DELETED", key.clone(), obj.clone());
        let mut dependents: Vec<Key> = Vec::new();
        if key.res == ids::NAMESPACES {
            dependents.extend(self.objects.keys().filter(|k| k.ns == key.name).cloned());
        }
        if key.res == ids::CRDS {
            let group = obj["spec"]["group"].as_str().unwrap_or("").to_string();
            let plural = obj["spec"]["names"]["plural"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let id = crate::types::id(&group, &plural);
            dependents.extend(self.objects.keys().filter(|k| k.res == id).cloned());
            self.registry.unregister(&group, &plural);
        }
        if let Some(uid) = obj["metadata"]["uid"].as_str() {
            dependents.extend(
                self.objects
                    .iter()
                    .filter(|(_, o)| {
                        o["metadata"]["ownerReferences"]
                            .as_array()
                            .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid))
                    })
                    .map(|(k, _)| k.clone()),
            );
        }
        for d in dependents {
            if self.objects.contains_key(&d) {
                let _ = self.delete(&d);
            }
        }
        Some(obj)
    }

    /// Server-side apply: creates the object if missing; otherwise merges the applied
    /// configuration and removes fields this manager applied before but no longer does.
    pub fn apply(
        &mut self,
        key: Key,
        manager: &str,
        applied: Value,
        status_only: bool,
    ) -> Result<(Value, bool), ApiError> {
        let paths = leaf_paths(&applied);
        let previous = self
            .applied
            .get(&(key.clone(), manager.to_string()))
            .cloned()
            .unwrap_or_default();
        let result = if self.objects.contains_key(&key) {
            let obj = self.modify(&key, status_only, |obj| {
                for p in previous.iter().filter(|p| !paths.contains(p)) {
                    if p.first().map(String::as_str) != Some("metadata") {
                        remove_path(obj, p);
                    }
                }
                let mut applied = applied.clone();
                // An applied configuration carries no precondition unless it names one.
                if let Some(m) = applied["metadata"].as_object_mut()
                    && !m.contains_key("resourceVersion")
                {
                    m.remove("resourceVersion");
                }
                merge(obj, &applied, false);
                Ok(())
            })?;
            (obj, false)
        } else {
            (self.create(key.clone(), applied)?, true)
        };
        self.applied.insert((key, manager.to_string()), paths);
        Ok(result)
    }

    /// Creates what a cluster has from the start (namespaces), ignoring what exists.
    pub fn seed(&mut self, key: Key, obj: Value) {
        if !self.objects.contains_key(&key) {
            let _ = self.create(key, obj);
        }
    }
}

fn ensure_object(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    match v {
        Value::Object(m) => m,
        _ => unreachable!("the value was just made an object"),
    }
}

/// How Go's JSON decoder names a value's kind in its errors.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}
