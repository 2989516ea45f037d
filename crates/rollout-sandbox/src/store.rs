//! The object store: one global resourceVersion, objects by resource/namespace/name, a bounded
//! log of watch events, server-side-apply bookkeeping, and the Kubernetes object semantics the
//! clients rely on (generation, conflicts, status subresource).

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

/// The resources the sandbox serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Res {
    /// `serving.kserve.io/v1beta1` InferenceService.
    Isvc,
    /// `coordination.k8s.io/v1` Lease.
    Lease,
    /// `events.k8s.io/v1` Event (also listed as core v1 events).
    Event,
    /// Core v1 Namespace (cluster-scoped).
    Namespace,
}

impl Res {
    /// API group ("" for core).
    pub fn group(self) -> &'static str {
        match self {
            Res::Isvc => "serving.kserve.io",
            Res::Lease => "coordination.k8s.io",
            Res::Event => "events.k8s.io",
            Res::Namespace => "",
        }
    }
    /// Version.
    pub fn version(self) -> &'static str {
        match self {
            Res::Isvc => "v1beta1",
            _ => "v1",
        }
    }
    /// `group/version` or `v1`.
    pub fn api_version(self) -> String {
        if self.group().is_empty() {
            self.version().to_string()
        } else {
            format!("{}/{}", self.group(), self.version())
        }
    }
    /// Plural.
    pub fn plural(self) -> &'static str {
        match self {
            Res::Isvc => "inferenceservices",
            Res::Lease => "leases",
            Res::Event => "events",
            Res::Namespace => "namespaces",
        }
    }
    /// Kind.
    pub fn kind(self) -> &'static str {
        match self {
            Res::Isvc => "InferenceService",
            Res::Lease => "Lease",
            Res::Event => "Event",
            Res::Namespace => "Namespace",
        }
    }
    /// `plural.group`, as in error messages.
    pub fn qualified(self) -> String {
        if self.group().is_empty() {
            self.plural().to_string()
        } else {
            format!("{}.{}", self.plural(), self.group())
        }
    }
    /// Finds a namespaced resource by group, version and plural.
    pub fn find(group: &str, version: &str, plural: &str) -> Option<Res> {
        [Res::Isvc, Res::Lease, Res::Event, Res::Namespace]
            .into_iter()
            .find(|r| r.group() == group && r.version() == version && r.plural() == plural)
    }
}

/// Where an object lives.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// Resource.
    pub res: Res,
    /// Namespace ("" for cluster-scoped).
    pub ns: String,
    /// Name.
    pub name: String,
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

/// A Kubernetes-style API error: HTTP code, reason, message.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// `NotFound`, `AlreadyExists`, `Conflict`, `Invalid`, `BadRequest`, ...
    pub reason: &'static str,
    /// Message.
    pub message: String,
    /// Name and kind for `details`.
    pub details: Option<(String, String, String)>,
}

impl ApiError {
    /// The `Status` body.
    pub fn status(&self) -> Value {
        let mut v = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some((name, group, kind)) = &self.details {
            v["details"] = json!({"name": name, "group": group, "kind": kind});
        }
        v
    }

    fn not_found(key: &Key) -> ApiError {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{} \"{}\" not found", key.res.qualified(), key.name),
            details: Some((
                key.name.clone(),
                key.res.group().into(),
                key.res.plural().into(),
            )),
        }
    }

    fn conflict(key: &Key) -> ApiError {
        ApiError {
            code: 409,
            reason: "Conflict",
            message: format!(
                "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                key.res.qualified(),
                key.name
            ),
            details: Some((
                key.name.clone(),
                key.res.group().into(),
                key.res.plural().into(),
            )),
        }
    }

    /// A 400 Bad Request.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
            details: None,
        }
    }
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
}

/// The current time as RFC 3339 (seconds).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

/// Seconds since the epoch as RFC 3339 (UTC).
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
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
        }
    }
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
    pub fn events_after(&self, rv: u64) -> Vec<WatchEvent> {
        self.log.iter().filter(|e| e.rv > rv).cloned().collect()
    }

    /// One object.
    pub fn get(&self, key: &Key) -> Result<Value, ApiError> {
        self.objects
            .get(key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(key))
    }

    /// Objects of a resource, optionally in one namespace.
    pub fn list(&self, res: Res, ns: Option<&str>) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|(k, _)| k.res == res && ns.is_none_or(|n| k.ns == n))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Keys of a resource.
    pub fn keys(&self, res: Res) -> Vec<Key> {
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

    /// Creates an object. `AlreadyExists` if the name is taken.
    pub fn create(&mut self, key: Key, mut obj: Value) -> Result<Value, ApiError> {
        if self.objects.contains_key(&key) {
            return Err(ApiError {
                code: 409,
                reason: "AlreadyExists",
                message: format!("{} \"{}\" already exists", key.res.qualified(), key.name),
                details: Some((
                    key.name.clone(),
                    key.res.group().into(),
                    key.res.plural().into(),
                )),
            });
        }
        let rv = self.bump();
        self.uid += 1;
        let obj_map = ensure_object(&mut obj);
        obj_map.insert("apiVersion".into(), json!(key.res.api_version()));
        obj_map.insert("kind".into(), json!(key.res.kind()));
        let meta = obj_map.entry("metadata").or_insert_with(|| json!({}));
        if !meta.is_object() {
            *meta = json!({});
        }
        meta["name"] = json!(key.name);
        if !key.ns.is_empty() {
            meta["namespace"] = json!(key.ns);
        }
        meta["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.uid));
        meta["creationTimestamp"] = json!(now_rfc3339());
        meta["resourceVersion"] = json!(rv.to_string());
        meta["generation"] = json!(1);
        if let Some(m) = meta.as_object_mut() {
            m.remove("managedFields");
        }
        self.objects.insert(key.clone(), obj.clone());
        self.record("ADDED", key, obj.clone());
        Ok(obj)
    }

    /// Replaces an object (`PUT`). With `status_only`, only `.status` changes; otherwise
    /// everything but `.status`. A `metadata.resourceVersion` in the body must match.
    pub fn replace(&mut self, key: &Key, new: Value, status_only: bool) -> Result<Value, ApiError> {
        let current = self.get(key)?;
        if let Some(rv) = new
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            && rv
                != current["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("")
        {
            return Err(ApiError::conflict(key));
        }
        // The same rules as a patch: the server keeps `.status` (or everything but `.status`)
        // and its own metadata.
        let (api_version, kind) = (key.res.api_version(), key.res.kind());
        self.modify(key, status_only, move |obj| {
            *obj = new;
            let m = ensure_object(obj);
            m.insert("apiVersion".into(), json!(api_version));
            m.insert("kind".into(), json!(kind));
            Ok(())
        })
    }

    /// Applies a change computed by `f` to the current object (patches), with the same rules.
    pub fn modify(
        &mut self,
        key: &Key,
        status_only: bool,
        f: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let current = self.get(key)?;
        let mut obj = current.clone();
        f(&mut obj)?;
        if status_only {
            let status = obj.get("status").cloned();
            obj = current.clone();
            obj["status"] = status.unwrap_or(json!({}));
        } else {
            match current.get("status") {
                Some(s) => obj["status"] = s.clone(),
                None => {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            for field in [
                "uid",
                "creationTimestamp",
                "generation",
                "namespace",
                "name",
            ] {
                if let Some(v) = current["metadata"].get(field) {
                    obj["metadata"][field] = v.clone();
                }
            }
        }
        self.commit(key, &current, obj)
    }

    fn commit(&mut self, key: &Key, current: &Value, mut obj: Value) -> Result<Value, ApiError> {
        // No change at all: no new resourceVersion, no event (as the API server does).
        let mut probe = obj.clone();
        probe["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
        if probe == *current {
            return Ok(current.clone());
        }
        if obj.get("spec") != current.get("spec") {
            let g = current["metadata"]["generation"].as_i64().unwrap_or(1);
            obj["metadata"]["generation"] = json!(g + 1);
        }
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.objects.insert(key.clone(), obj.clone());
        self.record("MODIFIED", key.clone(), obj.clone());
        Ok(obj)
    }

    /// Deletes an object.
    pub fn delete(&mut self, key: &Key) -> Result<Value, ApiError> {
        let mut obj = self
            .objects
            .remove(key)
            .ok_or_else(|| ApiError::not_found(key))?;
        let rv = self.bump();
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.applied.retain(|(k, _), _| k != key);
        self.record("DELETED", key.clone(), obj.clone());
        Ok(obj)
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
}

fn ensure_object(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = json!({});
    }
    v.as_object_mut()
        .expect("the value was just made an object")
}

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
fn leaf_paths(v: &Value) -> Vec<Vec<String>> {
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

fn remove_path(v: &mut Value, path: &[String]) {
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
