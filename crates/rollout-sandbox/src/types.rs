//! The resource types the API server serves: the built-in slice (namespaces, config maps,
//! service accounts, events, leases, RBAC, CustomResourceDefinitions) and every type a
//! CustomResourceDefinition registers, with the names, scope, printer columns and schema that
//! discovery, OpenAPI, Table output and validation read.
//!
//! Custom resources are registered the way the apiextensions API server does it
//! (`k8s.io/apiextensions-apiserver` `pkg/apiserver/customresource_handler.go`): one served
//! type per served version, a status subresource when `subresources.status` is present, the
//! version's `additionalPrinterColumns` (or NAME and AGE) and its `openAPIV3Schema`.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// One printer column: a name, a type (`string`, `integer`, `number`, `boolean`, `date`), a
/// JSONPath into the object and a priority (0: shown by `kubectl get`; 1: with `-o wide`).
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    /// Header.
    pub name: String,
    /// OpenAPI type.
    pub type_: String,
    /// JSONPath (`.status.phase`).
    pub json_path: String,
    /// 0 or more.
    pub priority: i64,
}

impl Column {
    fn new(name: &str, type_: &str, json_path: &str) -> Column {
        Column {
            name: name.into(),
            type_: type_.into(),
            json_path: json_path.into(),
            priority: 0,
        }
    }
}

/// A served resource type.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceType {
    /// API group (`""` for core).
    pub group: String,
    /// Version.
    pub version: String,
    /// Plural (`inferenceservices`).
    pub plural: String,
    /// Singular.
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names (`isvc`).
    pub short_names: Vec<String>,
    /// Categories (`all`, `kserve`).
    pub categories: Vec<String>,
    /// Whether `/status` is a subresource (writes to the main resource keep `.status`).
    pub status_subresource: bool,
    /// Whether `metadata.generation` is kept (custom resources and CRDs).
    pub generation: bool,
    /// Printer columns after NAME.
    pub columns: Vec<Column>,
    /// The structural schema of custom resources (`openAPIV3Schema`).
    pub schema: Option<Value>,
    /// Read-only view (core v1 events over events.k8s.io storage).
    pub read_only: bool,
}

impl ResourceType {
    /// `group/version` or `v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural.group` (the storage identity; `plural` for core).
    pub fn id(&self) -> String {
        id(&self.group, &self.plural)
    }

    /// `plural.group` as in error messages.
    pub fn qualified(&self) -> String {
        self.id()
    }

    fn builtin(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        ResourceType {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: kind.to_lowercase(),
            kind: kind.into(),
            namespaced,
            short_names: Vec::new(),
            categories: Vec::new(),
            status_subresource: false,
            generation: false,
            columns: vec![Column::new("Age", "date", ".metadata.creationTimestamp")],
            schema: None,
            read_only: false,
        }
    }
}

/// The storage identity of a resource: `plural.group`, or `plural` for core.
pub fn id(group: &str, plural: &str) -> String {
    if group.is_empty() {
        plural.to_string()
    } else {
        format!("{plural}.{group}")
    }
}

/// Storage identities of the types the sandbox's own logic reads.
pub mod ids {
    /// Namespaces.
    pub const NAMESPACES: &str = "namespaces";
    /// ConfigMaps.
    pub const CONFIGMAPS: &str = "configmaps";
    /// events.k8s.io Events (also served read-only as core v1 events).
    pub const EVENTS: &str = "events.events.k8s.io";
    /// Core v1 events, a view of [`EVENTS`].
    pub const CORE_EVENTS: &str = "events";
    /// Leases.
    pub const LEASES: &str = "leases.coordination.k8s.io";
    /// CustomResourceDefinitions.
    pub const CRDS: &str = "customresourcedefinitions.apiextensions.k8s.io";
    /// InferenceServices.
    pub const ISVC: &str = "inferenceservices.serving.kserve.io";
}

/// Every served type, by (group, version, plural), with one storage per `plural.group`.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    types: BTreeMap<(String, String, String), ResourceType>,
}

impl Registry {
    /// The built-in slice of the Kubernetes API.
    pub fn builtin() -> Registry {
        let mut r = Registry::default();
        let mut ns = ResourceType::builtin("", "v1", "namespaces", "Namespace", false);
        ns.short_names = vec!["ns".into()];
        ns.columns = vec![
            Column::new("Status", "string", ".status.phase"),
            Column::new("Age", "date", ".metadata.creationTimestamp"),
        ];
        r.add(ns);
        let mut cm = ResourceType::builtin("", "v1", "configmaps", "ConfigMap", true);
        cm.short_names = vec!["cm".into()];
        r.add(cm);
        let mut sa = ResourceType::builtin("", "v1", "serviceaccounts", "ServiceAccount", true);
        sa.short_names = vec!["sa".into()];
        r.add(sa);
        let mut core_events = ResourceType::builtin("", "v1", "events", "Event", true);
        core_events.short_names = vec!["ev".into()];
        core_events.read_only = true;
        core_events.columns = vec![
            Column::new("Last Seen", "string", ".lastTimestamp"),
            Column::new("Type", "string", ".type"),
            Column::new("Reason", "string", ".reason"),
            Column::new("Object", "string", ".involvedObject.name"),
            Column::new("Message", "string", ".message"),
        ];
        r.add(core_events);
        let mut ev = ResourceType::builtin("events.k8s.io", "v1", "events", "Event", true);
        ev.short_names = vec!["ev".into()];
        r.add(ev);
        // Stored and served as the API server does; nothing runs them (no kubelet, no
        // kube-proxy): enough for `kubectl apply -k deploy/`.
        let mut svc = ResourceType::builtin("", "v1", "services", "Service", true);
        svc.short_names = vec!["svc".into()];
        r.add(svc);
        let mut deploy = ResourceType::builtin("apps", "v1", "deployments", "Deployment", true);
        deploy.short_names = vec!["deploy".into()];
        deploy.status_subresource = true;
        deploy.generation = true;
        r.add(deploy);
        // Pods as the Deployment controller makes them (nothing runs them), and the Gateway
        // API's HTTPRoute as KServe writes it (Standard mode with `enableGatewayApi`).
        let mut pods = ResourceType::builtin("", "v1", "pods", "Pod", true);
        pods.short_names = vec!["po".into()];
        pods.status_subresource = true;
        r.add(pods);
        let mut route = ResourceType::builtin(
            "gateway.networking.k8s.io",
            "v1",
            "httproutes",
            "HTTPRoute",
            true,
        );
        route.generation = true;
        r.add(route);
        let mut lease = ResourceType::builtin("coordination.k8s.io", "v1", "leases", "Lease", true);
        lease.columns = vec![
            Column::new("Holder", "string", ".spec.holderIdentity"),
            Column::new("Age", "date", ".metadata.creationTimestamp"),
        ];
        r.add(lease);
        for (plural, kind, namespaced) in [
            ("roles", "Role", true),
            ("rolebindings", "RoleBinding", true),
            ("clusterroles", "ClusterRole", false),
            ("clusterrolebindings", "ClusterRoleBinding", false),
        ] {
            let mut t =
                ResourceType::builtin("rbac.authorization.k8s.io", "v1", plural, kind, namespaced);
            t.columns = vec![Column::new(
                "Created At",
                "date",
                ".metadata.creationTimestamp",
            )];
            r.add(t);
        }
        let mut crd = ResourceType::builtin(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
        );
        crd.short_names = vec!["crd".into(), "crds".into()];
        crd.status_subresource = true;
        crd.generation = true;
        crd.columns = vec![Column::new(
            "Created At",
            "date",
            ".metadata.creationTimestamp",
        )];
        r.add(crd);
        r
    }

    fn add(&mut self, t: ResourceType) {
        self.types
            .insert((t.group.clone(), t.version.clone(), t.plural.clone()), t);
    }

    /// The type served at `group/version/plural`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .get(&(group.to_string(), version.to_string(), plural.to_string()))
    }

    /// The type of a storage identity (any served version).
    pub fn by_id(&self, id: &str) -> Option<&ResourceType> {
        self.types.values().find(|t| t.id() == id)
    }

    /// Every served type.
    pub fn all(&self) -> impl Iterator<Item = &ResourceType> {
        self.types.values()
    }

    /// Groups and their versions, for discovery (`""` is core).
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut g: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for t in self.types.values() {
            let v = g.entry(t.group.clone()).or_default();
            if !v.contains(&t.version) {
                v.push(t.version.clone());
            }
        }
        g
    }

    /// Registers the types a CustomResourceDefinition defines (replacing earlier ones of it).
    pub fn register_crd(&mut self, crd: &Value) -> Result<Vec<ResourceType>, String> {
        let types = crd_types(crd)?;
        if let Some(first) = types.first() {
            let (group, plural) = (first.group.clone(), first.plural.clone());
            self.unregister(&group, &plural);
        }
        for t in &types {
            self.add(t.clone());
        }
        Ok(types)
    }

    /// Removes the types of `plural.group`.
    pub fn unregister(&mut self, group: &str, plural: &str) {
        self.types
            .retain(|(g, _, p), _| !(g == group && p == plural));
    }
}

/// The types a CustomResourceDefinition (`apiextensions.k8s.io/v1`) defines, after the checks
/// the apiextensions validation makes that matter here (`pkg/apis/apiextensions/validation`).
pub fn crd_types(crd: &Value) -> Result<Vec<ResourceType>, String> {
    let spec = &crd["spec"];
    let group = spec["group"]
        .as_str()
        .filter(|g| g.contains('.'))
        .ok_or("spec.group: Invalid value: should be a domain with at least one dot")?;
    let names = &spec["names"];
    let plural = names["plural"]
        .as_str()
        .filter(|p| !p.is_empty())
        .ok_or("spec.names.plural: Required value")?;
    let kind = names["kind"]
        .as_str()
        .filter(|k| !k.is_empty())
        .ok_or("spec.names.kind: Required value")?;
    let name = crd["metadata"]["name"].as_str().unwrap_or("");
    if name != format!("{plural}.{group}") {
        return Err(format!(
            "metadata.name: Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
        ));
    }
    let namespaced = match spec["scope"].as_str() {
        Some("Namespaced") => true,
        Some("Cluster") => false,
        _ => return Err("spec.scope: Unsupported value: must be Namespaced or Cluster".into()),
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    };
    let versions = spec["versions"]
        .as_array()
        .filter(|v| !v.is_empty())
        .ok_or(
            "spec.versions: Invalid value: must have exactly one version marked as storage version",
        )?;
    if versions.iter().filter(|v| v["storage"] == true).count() != 1 {
        return Err(
            "spec.versions: Invalid value: must have exactly one version marked as storage version"
                .into(),
        );
    }
    let mut out = Vec::new();
    for v in versions.iter().filter(|v| v["served"] == true) {
        let version = v["name"]
            .as_str()
            .ok_or("spec.versions[].name: Required value")?;
        let schema = v.pointer("/schema/openAPIV3Schema").cloned();
        if schema.is_none() {
            return Err(format!(
                "spec.versions[{version}].schema.openAPIV3Schema: Required value: schemas are required"
            ));
        }
        let mut columns: Vec<Column> = v["additionalPrinterColumns"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| Column {
                name: c["name"].as_str().unwrap_or("").to_string(),
                type_: c["type"].as_str().unwrap_or("string").to_string(),
                json_path: c["jsonPath"].as_str().unwrap_or("").to_string(),
                priority: c["priority"].as_i64().unwrap_or(0),
            })
            .collect();
        if columns.is_empty() {
            // Without additionalPrinterColumns the server prints NAME and AGE.
            columns = vec![Column::new("Age", "date", ".metadata.creationTimestamp")];
        }
        out.push(ResourceType {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
            singular: names["singular"]
                .as_str()
                .map_or_else(|| kind.to_lowercase(), str::to_string),
            kind: kind.to_string(),
            namespaced,
            short_names: strings(&names["shortNames"]),
            categories: strings(&names["categories"]),
            status_subresource: v.pointer("/subresources/status").is_some(),
            generation: true,
            columns,
            schema,
            read_only: false,
        });
    }
    Ok(out)
}

/// The CRD status the apiextensions controllers write once the names are accepted and the
/// type is served (`pkg/controller/establish`, `pkg/controller/status`).
pub fn crd_status(crd: &Value, now: &str) -> Value {
    let cond = |t: &str, reason: &str, message: &str| json!({"type": t, "status": "True", "reason": reason, "message": message, "lastTransitionTime": now});
    let stored: Vec<Value> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == true)
        .map(|v| v["name"].clone())
        .collect();
    json!({
        "acceptedNames": crd["spec"]["names"],
        "conditions": [
            cond("NamesAccepted", "NoConflicts", "no conflicts found"),
            cond("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": stored,
    })
}
