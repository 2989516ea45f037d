//! The checker: AST in, checked [`Policy`] and diagnostics out.
//!
//! It reports every problem it can find in one pass (it does not stop at the first), so `lint`
//! shows all of them. A policy is produced only when there is no error.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rollout_diagnostics::{Code, Diagnostic, SourceFile, Span};
use rollout_syntax::ast;

use crate::model::*;
use crate::presets;
use crate::suggest::did_you_mean;
use crate::template::{Context, Template, TemplateError, Var, Vars};

pub(crate) struct Checker<'a> {
    pub src: &'a SourceFile,
    pub diags: Vec<Diagnostic>,
}

/// The kind of value a setting takes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Duration,
    Bool,
    Int,
    Word(&'static [&'static str]),
}

const TARGET_KEYS: &[(&str, Kind)] = &[
    ("name", Kind::Str),
    ("namespace", Kind::Str),
    (
        "component",
        Kind::Word(&["predictor", "transformer", "explainer"]),
    ),
];
const PROMETHEUS_KEYS: &[(&str, Kind)] = &[
    ("url", Kind::Str),
    ("token_file", Kind::Str),
    ("token_env", Kind::Str),
    ("basic_auth_file", Kind::Str),
    ("ca_file", Kind::Str),
    ("insecure", Kind::Bool),
    ("scrape_interval", Kind::Duration),
    ("timeout", Kind::Duration),
];
const EVALUATION_KEYS: &[(&str, Kind)] = &[
    ("interval", Kind::Duration),
    ("window", Kind::Duration),
    ("deadline", Kind::Duration),
    ("passes", Kind::Int),
    ("stale_after", Kind::Duration),
    ("settle_timeout", Kind::Duration),
];
const METRIC_KEYS: &[(&str, Kind)] = &[
    ("query", Kind::Str),
    (
        "unit",
        Kind::Word(&["ratio", "percent", "ms", "s", "count", "rps"]),
    ),
    ("description", Kind::Str),
];
const CREDENTIAL_KEYS: &[&str] = &[
    "token",
    "bearer_token",
    "password",
    "basic_auth",
    "api_key",
    "apikey",
    "secret",
    "username",
    "user",
    "authorization",
];

/// A checked setting value.
#[derive(Clone, Debug)]
enum Val {
    Str(String),
    Duration(Duration),
    Bool(bool),
    Int(u32),
    Word(String),
}

/// Settings of one block after checking: key -> (value, span of the value).
type Settings = HashMap<&'static str, (Val, Span)>;

/// What a path resolves to: (arm, metric id, kind if the metric checked out), or the known
/// names when it is unknown (`None` when the path's shape is wrong).
type Resolved = Result<(Option<Arm>, usize, Option<Dim>), Option<Vec<String>>>;

/// Whether an expression is a rule condition (arms required) or a derived metric (no arms).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Rule,
    Derived,
}

/// The metrics by id while checking: a failed definition keeps its name (so references to it
/// are not reported again as unknown) but has no metric.
pub(crate) struct Table {
    /// An unknown preset was used: unknown names may be its metrics, so they are not reported.
    incomplete: bool,
    names: Vec<String>,
    metrics: Vec<Option<Metric>>,
}

/// A metric while checking: definition not yet resolved.
struct PendingMetric<'f> {
    name: String,
    span: Span,
    name_span: Span,
    origin: Origin,
    def: PendingDef<'f>,
}

enum PendingDef<'f> {
    Query {
        template: Template,
        unit: Unit,
        /// Span of the query string, for PromQL diagnostics.
        query_span: Span,
    },
    Derived(&'f ast::Expr),
    PresetRatio(&'static str, &'static str),
    /// The definition had errors (already reported).
    Failed,
}

impl<'a> Checker<'a> {
    fn err(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    fn loc(&self, span: Span) -> Location {
        Location {
            span,
            line: self.src.line_col(span.start).line,
        }
    }

    pub(crate) fn check(&mut self, file: &ast::File) -> Option<Policy> {
        let r = &file.rollout;
        let mut blocks: HashMap<ast::BlockKind, &ast::SettingsBlock> = HashMap::new();
        let mut uses: Vec<&ast::UseDecl> = Vec::new();
        let mut metric_decls: Vec<&ast::MetricDecl> = Vec::new();
        let mut rule_decls: Vec<&ast::RuleDecl> = Vec::new();
        let mut ons: Vec<&ast::OnDecl> = Vec::new();
        let mut steps: Option<&ast::StepsDecl> = None;
        for item in &r.items {
            match item {
                ast::Item::Block(b) => {
                    if let Some(prev) = blocks.get(&b.kind) {
                        let prev_span = prev.keyword_span;
                        self.err(
                            Diagnostic::new(
                                Code::Duplicate,
                                format!("`{}` is declared twice", b.kind.keyword()),
                                b.keyword_span,
                                "second declaration",
                            )
                            .with_label(prev_span, "first declared here")
                            .with_help(format!(
                                "merge the two `{}` blocks into one",
                                b.kind.keyword()
                            )),
                        );
                    } else {
                        blocks.insert(b.kind, b);
                    }
                }
                ast::Item::Use(u) => uses.push(u),
                ast::Item::Metric(m) => metric_decls.push(m),
                ast::Item::Rule(rd) => rule_decls.push(rd),
                ast::Item::On(o) => ons.push(o),
                ast::Item::Steps(s) => {
                    if let Some(prev) = steps {
                        let prev_span = prev.keyword_span;
                        self.err(
                            Diagnostic::new(
                                Code::Duplicate,
                                "`steps` is declared twice",
                                s.keyword_span,
                                "second declaration",
                            )
                            .with_label(prev_span, "first declared here")
                            .with_help("a policy has one `steps` block; merge them"),
                        );
                    } else {
                        steps = Some(s);
                    }
                }
            }
        }
        let name_span = r.name.span;
        let target = self.target(blocks.get(&ast::BlockKind::Target).copied(), name_span);
        let prometheus =
            self.prometheus(blocks.get(&ast::BlockKind::Prometheus).copied(), name_span);
        let evaluation = self.evaluation(blocks.get(&ast::BlockKind::Evaluation).copied());
        let (metric_table, metrics_ok) = self.metrics(&uses, &metric_decls, prometheus.as_ref());
        let rules = self.rules(&rule_decls, &metric_table, &evaluation);
        let failure = self.failure_policy(&ons);
        let steps_checked = match steps {
            Some(s) => self.steps(s, &metric_table, &rules),
            None => {
                self.err(
                    Diagnostic::new(
                        Code::MissingSetting,
                        "the policy has no `steps`",
                        name_span,
                        "this rollout has no steps",
                    )
                    .with_help("add `steps { traffic 10% hold 5m promote }`"),
                );
                None
            }
        };
        if r.name.value.trim().is_empty() {
            self.err(
                Diagnostic::new(
                    Code::InvalidValue,
                    "the rollout's name is empty",
                    name_span,
                    "empty name",
                )
                .with_help("name the rollout, e.g. `rollout \"sklearn-iris-canary\" { ... }`"),
            );
        }
        let metrics: Option<Vec<Metric>> = if metrics_ok {
            metric_table.metrics.into_iter().collect()
        } else {
            None
        };
        let (Some(target), Some(prometheus), Some(metrics), Some(rules), Some(steps_checked)) =
            (target, prometheus, metrics, rules, steps_checked)
        else {
            return None;
        };
        let policy = Policy {
            name: r.name.value.clone(),
            target,
            prometheus,
            evaluation,
            metrics,
            rules,
            failure,
            steps: steps_checked,
        };
        crate::lints::run(self, &policy, file, steps);
        self.deadline(
            &policy,
            name_span,
            blocks.get(&ast::BlockKind::Evaluation).copied(),
        );
        let has_error = self
            .diags
            .iter()
            .any(|d| d.severity() == rollout_diagnostics::Severity::Error);
        (!has_error).then_some(policy)
    }

    // ---------------------------------------------------------------------------------------
    // Settings

    fn settings(
        &mut self,
        block: &ast::SettingsBlock,
        keys: &'static [(&'static str, Kind)],
    ) -> Settings {
        self.settings_list(&block.settings, keys, block.kind.keyword())
    }

    fn settings_list(
        &mut self,
        list: &[ast::Setting],
        keys: &'static [(&'static str, Kind)],
        block: &str,
    ) -> Settings {
        let mut out: Settings = HashMap::new();
        let mut seen: HashMap<&str, Span> = HashMap::new();
        for s in list {
            let key = s.key.name.as_str();
            if CREDENTIAL_KEYS.contains(&key) {
                self.err(
                    Diagnostic::new(
                        Code::InlineCredential,
                        format!("`{key}` would put a credential in the policy"),
                        s.span,
                        "credential written inline",
                    )
                    .with_help(
                        "reference the secret instead: `token_file = \"/var/run/secrets/prometheus/token\"`, `token_env = \"PROM_TOKEN\"` or `basic_auth_file = \"...\"`",
                    ),
                );
                continue;
            }
            let Some(&(static_key, kind)) = keys.iter().find(|(k, _)| *k == key) else {
                let names: Vec<&str> = keys.iter().map(|(k, _)| *k).collect();
                let help = match did_you_mean(key, &names) {
                    Some(s) => format!("did you mean `{s}`? `{block}` takes: {}", names.join(", ")),
                    None => format!("`{block}` takes: {}", names.join(", ")),
                };
                self.err(
                    Diagnostic::new(
                        Code::UnknownSetting,
                        format!("unknown setting `{key}` in `{block}`"),
                        s.key.span,
                        "unknown setting",
                    )
                    .with_help(help),
                );
                continue;
            };
            if let Some(prev) = seen.get(key) {
                let prev = *prev;
                self.err(
                    Diagnostic::new(
                        Code::Duplicate,
                        format!("`{key}` is set twice"),
                        s.key.span,
                        "set again here",
                    )
                    .with_label(prev, "first set here")
                    .with_help("remove one of the two settings"),
                );
                continue;
            }
            seen.insert(static_key, s.key.span);
            if let Some(v) = self.value(&s.value, kind, key) {
                out.insert(static_key, (v, s.value.span()));
            }
        }
        out
    }

    fn value(&mut self, v: &ast::Value, kind: Kind, key: &str) -> Option<Val> {
        let expected = match kind {
            Kind::Str => "a string in double quotes".to_string(),
            Kind::Duration => "a duration such as `30s` or `5m`".to_string(),
            Kind::Bool => "`true` or `false`".to_string(),
            Kind::Int => "a whole number".to_string(),
            Kind::Word(ws) => format!(
                "one of {}",
                ws.iter()
                    .map(|w| format!("`{w}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let got = match (kind, v) {
            (Kind::Str, ast::Value::Str(s)) => return Some(Val::Str(s.value.clone())),
            (Kind::Bool, ast::Value::Bool(b, _)) => return Some(Val::Bool(*b)),
            (Kind::Duration, ast::Value::Quantity(q)) => {
                return self.duration(q, key).map(Val::Duration);
            }
            (Kind::Int, ast::Value::Quantity(q)) if q.unit.is_none() => {
                return self.count(q, key).map(Val::Int);
            }
            (Kind::Word(ws), ast::Value::Ident(i)) if ws.contains(&i.name.as_str()) => {
                return Some(Val::Word(i.name.clone()));
            }
            (Kind::Word(ws), ast::Value::Str(s)) if ws.contains(&s.value.as_str()) => {
                return Some(Val::Word(s.value.clone()));
            }
            (_, ast::Value::Str(_)) => "a string",
            (_, ast::Value::Quantity(q)) if q.unit.is_none() => "a plain number",
            (_, ast::Value::Quantity(q)) if q.unit == Some(ast::UnitSuffix::Percent) => {
                "a percentage"
            }
            (_, ast::Value::Quantity(_)) => "a duration",
            (_, ast::Value::Bool(..)) => "`true`/`false`",
            (_, ast::Value::Ident(i)) => {
                let mut d = Diagnostic::new(
                    Code::InvalidValue,
                    format!("`{key}` expects {expected}, found `{}`", i.name),
                    i.span,
                    format!("expected {expected}"),
                );
                if let Kind::Word(ws) = kind {
                    if let Some(s) = did_you_mean(&i.name, ws) {
                        d = d.with_help(format!("did you mean `{s}`?"));
                    }
                } else if kind == Kind::Str {
                    d = d.with_help(format!("quote it: `{key} = \"{}\"`", i.name));
                }
                self.err(d);
                return None;
            }
        };
        let mut d = Diagnostic::new(
            Code::InvalidValue,
            format!("`{key}` expects {expected}, found {got}"),
            v.span(),
            format!("expected {expected}"),
        );
        if kind == Kind::Duration
            && let ast::Value::Quantity(q) = v
        {
            d = d.with_help(format!("add a unit: `{}s` or `{}m`", q.digits, q.digits));
        }
        self.err(d);
        None
    }

    /// A positive duration from a quantity with a time unit.
    fn duration(&mut self, q: &ast::Quantity, what: &str) -> Option<Duration> {
        match q.as_millis() {
            Some(0) => {
                self.err(Diagnostic::new(
                    Code::ZeroDuration,
                    format!("`{what}` is zero"),
                    q.span,
                    "zero duration",
                ));
                None
            }
            Some(ms) => Some(Duration::from_millis(ms)),
            None => {
                let found = if q.unit == Some(ast::UnitSuffix::Percent) {
                    "a percentage"
                } else {
                    "a plain number"
                };
                self.err(
                    Diagnostic::new(
                        Code::InvalidValue,
                        format!("`{what}` expects a duration such as `30s` or `5m`, found {found}"),
                        q.span,
                        "expected a duration",
                    )
                    .with_help(format!("add a unit: `{}s` or `{}m`", q.digits, q.digits)),
                );
                None
            }
        }
    }

    /// A whole number >= 1.
    fn count(&mut self, q: &ast::Quantity, what: &str) -> Option<u32> {
        if q.unit.is_none() && q.value >= 1.0 && q.value.fract() == 0.0 && q.value <= 1_000_000.0 {
            return Some(q.value as u32);
        }
        self.err(Diagnostic::new(
            Code::InvalidValue,
            format!(
                "`{what}` expects a whole number of at least 1, found `{}`",
                q.text()
            ),
            q.span,
            "expected a whole number >= 1",
        ));
        None
    }

    fn target(&mut self, block: Option<&ast::SettingsBlock>, name_span: Span) -> Option<Target> {
        let Some(block) = block else {
            self.err(
                Diagnostic::new(
                    Code::MissingSetting,
                    "the policy has no `target`",
                    name_span,
                    "this rollout has no target",
                )
                .with_help(
                    "add `target { name = \"<inferenceservice>\" namespace = \"<namespace>\" }`",
                ),
            );
            return None;
        };
        let s = self.settings(block, TARGET_KEYS);
        let name = self.required_str(&s, "name", block);
        let namespace = self.required_str(&s, "namespace", block);
        for (key, v) in [("name", &name), ("namespace", &namespace)] {
            if let (Some(v), Some((_, span))) = (v, s.get(key))
                && !is_dns_label(v)
                && !(key == "name" && is_dns_subdomain(v))
            {
                self.err(
                        Diagnostic::new(Code::InvalidValue, format!("`{v}` is not a valid Kubernetes {key}"), *span, "not a DNS-1123 name")
                            .with_help("use lowercase letters, digits and `-`, starting and ending with a letter or digit (at most 63 characters)"),
                    );
            }
        }
        let component = match s.get("component") {
            Some((Val::Word(w), _)) => match w.as_str() {
                "transformer" => Component::Transformer,
                "explainer" => Component::Explainer,
                _ => Component::Predictor,
            },
            _ => Component::Predictor,
        };
        Some(Target {
            name: name?,
            namespace: namespace?,
            component,
        })
    }

    fn required_str(
        &mut self,
        s: &Settings,
        key: &str,
        block: &ast::SettingsBlock,
    ) -> Option<String> {
        match s.get(key) {
            Some((Val::Str(v), _)) => Some(v.clone()),
            Some(_) => None,
            None => {
                self.err(
                    Diagnostic::new(
                        Code::MissingSetting,
                        format!("`{}` needs `{key}`", block.kind.keyword()),
                        block.keyword_span,
                        format!("no `{key}` here"),
                    )
                    .with_help(format!(
                        "add `{key} = \"...\"` to `{}`",
                        block.kind.keyword()
                    )),
                );
                None
            }
        }
    }

    fn prometheus(
        &mut self,
        block: Option<&ast::SettingsBlock>,
        name_span: Span,
    ) -> Option<PrometheusSource> {
        let Some(block) = block else {
            self.err(
                Diagnostic::new(
                    Code::MissingSetting,
                    "the policy has no `prometheus` source",
                    name_span,
                    "no metrics source",
                )
                .with_help("add `prometheus { url = \"http://prometheus.monitoring:9090\" }`"),
            );
            return None;
        };
        let s = self.settings(block, PROMETHEUS_KEYS);
        let url = self.required_str(&s, "url", block);
        if let (Some(u), Some((_, span))) = (&url, s.get("url")) {
            self.check_url(u, *span);
        }
        let get_str = |k: &str| match s.get(k) {
            Some((Val::Str(v), _)) => Some(v.clone()),
            _ => None,
        };
        let auth = Auth {
            token_file: get_str("token_file"),
            token_env: get_str("token_env"),
            basic_auth_file: get_str("basic_auth_file"),
            ca_file: get_str("ca_file"),
            insecure: matches!(s.get("insecure"), Some((Val::Bool(true), _))),
        };
        if let Some((_, span)) = s
            .get("insecure")
            .filter(|(v, _)| matches!(v, Val::Bool(true)))
        {
            self.err(Diagnostic::new(
                Code::InsecureTls,
                "TLS certificate verification is disabled",
                *span,
                "`insecure = true`",
            ));
        }
        let dur = |k: &str| match s.get(k) {
            Some((Val::Duration(d), _)) => Some(*d),
            _ => None,
        };
        Some(PrometheusSource {
            url: url?,
            auth,
            scrape_interval: dur("scrape_interval"),
            timeout: dur("timeout").unwrap_or(Duration::from_secs(10)),
        })
    }

    fn check_url(&mut self, url: &str, span: Span) {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        let Some(rest) = rest else {
            self.err(Diagnostic::new(
                Code::InvalidUrl,
                format!("`{url}` is not an http:// or https:// URL"),
                span,
                "not an absolute http(s) URL",
            ));
            return;
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if userinfo.contains(':') {
                self.err(
                    Diagnostic::new(
                        Code::InlineCredential,
                        "the URL contains a password",
                        span,
                        "credential in the URL",
                    )
                    .with_help(
                        "remove `user:password@` from the URL and use `basic_auth_file = \"...\"`",
                    ),
                );
            } else {
                self.err(Diagnostic::new(
                    Code::InvalidUrl,
                    "the URL contains a user name",
                    span,
                    "user name in the URL",
                ));
            }
            return;
        }
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        let port_ok = authority.rsplit_once(':').is_none_or(|(_, p)| {
            authority.ends_with(']') || (!p.is_empty() && p.parse::<u16>().is_ok())
        });
        if host.is_empty() || !port_ok || authority.contains(char::is_whitespace) {
            self.err(Diagnostic::new(
                Code::InvalidUrl,
                format!("`{url}` has no valid host"),
                span,
                "invalid host or port",
            ));
        }
    }

    fn evaluation(&mut self, block: Option<&ast::SettingsBlock>) -> Evaluation {
        let s = block
            .map(|b| self.settings(b, EVALUATION_KEYS))
            .unwrap_or_default();
        let dur = |k: &str, default: Duration| match s.get(k) {
            Some((Val::Duration(d), _)) => *d,
            _ => default,
        };
        let interval = dur("interval", Duration::from_secs(30));
        Evaluation {
            interval,
            window: dur("window", Duration::from_secs(60)),
            deadline: dur("deadline", Duration::from_secs(24 * 3600)),
            passes: match s.get("passes") {
                Some((Val::Int(n), _)) => *n,
                _ => 2,
            },
            stale_after: dur("stale_after", interval * 2),
            settle_timeout: dur("settle_timeout", Duration::from_secs(600)),
        }
    }

    fn deadline(&mut self, p: &Policy, name_span: Span, block: Option<&ast::SettingsBlock>) {
        let min_total: Duration = p
            .steps
            .iter()
            .map(|s| match &s.kind {
                StepKind::Hold(h) => h.min,
                _ => Duration::ZERO,
            })
            .sum();
        if p.evaluation.deadline < min_total {
            let span = block
                .and_then(|b| b.settings.iter().find(|s| s.key.name == "deadline"))
                .map_or(name_span, |s| s.value.span());
            self.err(
                Diagnostic::new(
                    Code::DeadlineTooShort,
                    format!(
                        "the deadline ({}) is shorter than the holds alone ({})",
                        human(p.evaluation.deadline),
                        human(min_total)
                    ),
                    span,
                    "deadline too short",
                )
                .with_help("raise `deadline`, or shorten the holds; a rollout that reaches its deadline rolls back"),
            );
        }
    }

    // ---------------------------------------------------------------------------------------
    // Metrics

    fn metrics(
        &mut self,
        uses: &[&ast::UseDecl],
        decls: &[&'_ ast::MetricDecl],
        prom: Option<&PrometheusSource>,
    ) -> (Table, bool) {
        let mut pending: Vec<PendingMetric<'_>> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut used_presets: HashMap<&str, Span> = HashMap::new();
        let mut ok = true;
        for u in uses {
            let name = u.preset.name.as_str();
            if let Some(prev) = used_presets.get(name) {
                let prev = *prev;
                self.err(
                    Diagnostic::new(
                        Code::Duplicate,
                        format!("`use {name}` appears twice"),
                        u.span,
                        "again here",
                    )
                    .with_label(prev, "first here")
                    .with_help("remove the second `use`"),
                );
                continue;
            }
            let Some(defs) = presets::parsed(name) else {
                let all = presets::PRESETS.join(", ");
                let help = match did_you_mean(name, &presets::PRESETS) {
                    Some(s) => format!("did you mean `{s}`? available presets: {all}"),
                    None => format!(
                        "available presets: {all} (docs/metrics.md says which one a cluster needs)"
                    ),
                };
                self.err(
                    Diagnostic::new(
                        Code::UnknownPreset,
                        format!("unknown preset `{name}`"),
                        u.preset.span,
                        "unknown preset",
                    )
                    .with_help(help),
                );
                ok = false;
                continue;
            };
            used_presets.insert(
                presets::PRESETS
                    .iter()
                    .find(|p| **p == name)
                    .copied()
                    .unwrap_or("knative"),
                u.span,
            );
            let origin = Origin::Preset(
                presets::PRESETS
                    .iter()
                    .find(|p| **p == name)
                    .copied()
                    .unwrap_or("knative"),
            );
            for (pm, template) in defs {
                let pdef = match template {
                    // The one derived preset metric: error_rate = errors / requests.
                    None => PendingDef::PresetRatio("errors", "requests"),
                    Some(template) => PendingDef::Query {
                        template: template.clone(),
                        unit: pm.unit,
                        query_span: u.span,
                    },
                };
                let m = PendingMetric {
                    name: pm.name.to_string(),
                    span: u.span,
                    name_span: u.preset.span,
                    origin,
                    def: pdef,
                };
                // A later preset replaces an earlier one's metric of the same name.
                match index.get(pm.name) {
                    Some(&i) => pending[i] = m,
                    None => {
                        index.insert(pm.name.to_string(), pending.len());
                        pending.push(m);
                    }
                }
            }
        }
        let mut user_seen: HashMap<String, Span> = HashMap::new();
        for d in decls {
            let name = d.name.name.clone();
            if let Some(prev) = user_seen.get(&name) {
                let prev = *prev;
                self.err(
                    Diagnostic::new(
                        Code::Duplicate,
                        format!("metric `{name}` is defined twice"),
                        d.name.span,
                        "defined again here",
                    )
                    .with_label(prev, "first defined here")
                    .with_help("rename or remove one of the definitions"),
                );
                ok = false;
                continue;
            }
            user_seen.insert(name.clone(), d.name.span);
            let def = match &d.def {
                ast::MetricDef::Derived(e) => Some(PendingDef::Derived(e)),
                ast::MetricDef::Query(settings) => self.query_metric(d, settings),
            };
            let def = def.unwrap_or_else(|| {
                ok = false;
                PendingDef::Failed
            });
            let m = PendingMetric {
                name: name.clone(),
                span: d.span,
                name_span: d.name.span,
                origin: Origin::User,
                def,
            };
            match index.get(&name) {
                Some(&i) => pending[i] = m,
                None => {
                    index.insert(name, pending.len());
                    pending.push(m);
                }
            }
        }
        // Resolve derived metrics in dependency order (Kahn's algorithm: no recursion, so a long
        // chain of derived metrics cannot overflow the stack).
        let n = pending.len();
        let mut deps: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, m) in pending.iter().enumerate() {
            match &m.def {
                PendingDef::Derived(e) => {
                    let mut names = Vec::new();
                    collect_paths(e, &mut names);
                    for path in names {
                        if let [one] = path
                            && let Some(&j) = index.get(&one.name)
                            && !deps[i].contains(&j)
                        {
                            deps[i].push(j);
                        }
                    }
                }
                PendingDef::PresetRatio(a, b) => {
                    for x in [a, b] {
                        if let Some(&j) = index.get(*x) {
                            deps[i].push(j);
                        }
                    }
                }
                PendingDef::Query { .. } | PendingDef::Failed => {}
            }
        }
        let mut remaining: Vec<usize> = deps.iter().map(Vec::len).collect();
        let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (i, ds) in deps.iter().enumerate() {
            for &j in ds {
                dependents[j].push(i);
            }
        }
        let mut queue: Vec<usize> = (0..n).filter(|&i| remaining[i] == 0).collect();
        let mut order = Vec::with_capacity(n);
        while let Some(i) = queue.pop() {
            order.push(i);
            for &k in &dependents[i] {
                remaining[k] -= 1;
                if remaining[k] == 0 {
                    queue.push(k);
                }
            }
        }
        let in_cycle: HashSet<usize> = (0..n).filter(|&i| remaining[i] > 0).collect();
        for &i in &in_cycle {
            let m = &pending[i];
            self.err(
                Diagnostic::new(
                    Code::MetricCycle,
                    format!("metric `{}` depends on itself", m.name),
                    m.name_span,
                    "part of a cycle",
                )
                .with_help("derived metrics must be built from query metrics without cycles"),
            );
            ok = false;
        }
        // Build in dependency order; ids are the positions in `pending`.
        let mut built: Vec<Option<Metric>> = (0..n).map(|_| None).collect();
        let mut dims: Vec<Option<Dim>> = vec![None; n];
        for &i in &order {
            let m = &pending[i];
            let (kind, unit, dim) = match &m.def {
                PendingDef::Failed => continue,
                PendingDef::Query {
                    template,
                    unit,
                    query_span,
                } => {
                    // Preset templates are fixed and valid (unit-tested in `presets`); only user
                    // templates are parsed as PromQL here.
                    if m.origin == Origin::User {
                        self.check_promql(&m.name, template, *query_span, prom);
                    }
                    (MetricKind::Query(template.clone()), *unit, unit.dim())
                }
                PendingDef::PresetRatio(a, b) => {
                    let (Some(&ia), Some(&ib)) = (index.get(*a), index.get(*b)) else {
                        continue;
                    };
                    (
                        MetricKind::Derived(MetricExpr::Arith(
                            ArithOp::Div,
                            Box::new(MetricExpr::Metric(ia)),
                            Box::new(MetricExpr::Metric(ib)),
                        )),
                        Unit::Ratio,
                        Dim::Ratio,
                    )
                }
                PendingDef::Derived(e) => {
                    let Some((me, dim)) = self.derived(e, &index, &dims, &pending) else {
                        ok = false;
                        continue;
                    };
                    if dim == Dim::Bool {
                        self.err(
                            Diagnostic::new(
                                Code::NotBoolean,
                                format!("metric `{}` is a condition, not a value", m.name),
                                e.span,
                                "a condition",
                            )
                            .with_help(
                                "a derived metric computes a number; put comparisons in rules",
                            ),
                        );
                        ok = false;
                        continue;
                    }
                    let unit = match dim {
                        Dim::Time => Unit::S,
                        Dim::Count => Unit::Count,
                        Dim::Rate => Unit::Rps,
                        _ => Unit::Ratio,
                    };
                    (MetricKind::Derived(me), unit, dim)
                }
            };
            dims[i] = Some(dim);
            built[i] = Some(Metric {
                name: m.name.clone(),
                unit,
                dim,
                kind,
                origin: m.origin,
                span: m.span,
            });
        }
        let ok = ok && built.iter().all(Option::is_some);
        (
            Table {
                incomplete: uses
                    .iter()
                    .any(|u| presets::parsed(&u.preset.name).is_none()),
                names: pending.into_iter().map(|m| m.name).collect(),
                metrics: built,
            },
            ok,
        )
    }

    fn query_metric(
        &mut self,
        d: &ast::MetricDecl,
        settings: &[ast::Setting],
    ) -> Option<PendingDef<'static>> {
        let s = self.settings_list(settings, METRIC_KEYS, "metric");
        let query = match s.get("query") {
            Some((Val::Str(q), span)) => Some((q.clone(), *span)),
            Some(_) => None,
            None => {
                self.err(
                    Diagnostic::new(Code::MissingSetting, format!("metric `{}` needs a `query`", d.name.name), d.name.span, "no query")
                        .with_help("add `query = \"<PromQL>\"`, or define it from other metrics: `metric x = a / b`"),
                );
                None
            }
        };
        let unit = match s.get("unit") {
            Some((Val::Word(w), _)) => Unit::parse(w),
            Some(_) => None,
            None => {
                self.err(
                    Diagnostic::new(
                        Code::MissingSetting,
                        format!("metric `{}` needs a `unit`", d.name.name),
                        d.name.span,
                        "no unit",
                    )
                    .with_help("add `unit = ratio`, `percent`, `ms`, `s`, `count` or `rps`"),
                );
                None
            }
        };
        let (query, query_span) = query?;
        let unit = unit?;
        match Template::parse(&query) {
            Ok(template) => Some(PendingDef::Query {
                template,
                unit,
                query_span,
            }),
            Err(errors) => {
                for e in errors {
                    match e {
                        TemplateError::Unknown { name, offset } => {
                            let names: Vec<&str> = Var::ALL.iter().map(|v| v.as_str()).collect();
                            let help = match did_you_mean(&name, &names) {
                                Some(s) => format!(
                                    "did you mean `${{{s}}}`? placeholders: {}",
                                    placeholder_list()
                                ),
                                None => format!("placeholders: {}", placeholder_list()),
                            };
                            let span = self.string_span(query_span, offset, name.len() + 3);
                            self.err(
                                Diagnostic::new(
                                    Code::UnknownPlaceholder,
                                    format!("unknown placeholder `${{{name}}}`"),
                                    span,
                                    "unknown placeholder",
                                )
                                .with_help(help),
                            );
                        }
                        TemplateError::Unterminated { offset } => {
                            let span = self.string_span(query_span, offset, 2);
                            self.err(Diagnostic::new(
                                Code::UnknownPlaceholder,
                                "placeholder `${` is never closed",
                                span,
                                "no closing `}`",
                            ));
                        }
                    }
                }
                None
            }
        }
    }

    /// Maps an offset inside a string's value to a source span (exact for raw strings and for
    /// strings without escapes; otherwise the whole string).
    fn string_span(&self, string_span: Span, offset: usize, len: usize) -> Span {
        let text = self.src.slice(string_span);
        let (open, close) = if text.starts_with("\"\"\"") {
            (3, 3)
        } else {
            (1, 1)
        };
        let inner = text
            .get(open..text.len().saturating_sub(close))
            .unwrap_or("");
        if open == 3 || !inner.contains('\\') {
            let start = string_span.start + open + offset;
            Span::new(start, (start + len).min(string_span.end))
        } else {
            string_span
        }
    }

    fn check_promql(
        &mut self,
        name: &str,
        t: &Template,
        span: Span,
        prom: Option<&PrometheusSource>,
    ) {
        let mut context_ok = true;
        for (var, ctx, offset) in t.vars() {
            let bad = match (var, ctx) {
                (Var::Window, Context::Range) => None,
                (Var::Window, _) => {
                    Some("`${window}` must be inside a range such as `[${window}]`".to_string())
                }
                (_, Context::Str { .. } | Context::Regex { .. }) => None,
                (_, Context::Raw) => Some(format!(
                    "`${{{}}}` inside a backtick string cannot be escaped; use double quotes",
                    var.as_str()
                )),
                (_, _) => Some(format!(
                    "`${{{}}}` must be inside a quoted label value, e.g. `revision_name=\"${{{}}}\"`",
                    var.as_str(),
                    var.as_str()
                )),
            };
            if let Some(msg) = bad {
                context_ok = false;
                let sp = self.string_span(span, offset, var.as_str().len() + 3);
                self.err(Diagnostic::new(
                    Code::PlaceholderContext,
                    msg,
                    sp,
                    "placeholder in the wrong place",
                ));
            }
        }
        if !context_ok {
            return;
        }
        let sample = Vars {
            mode: Default::default(),
            revision: "sample-predictor-00001",
            namespace: "sample-ns",
            name: "sample",
            component: "predictor",
            window: WINDOW_SENTINEL,
        };
        self.validate_promql(name, t, span, prom, &sample);
    }

    #[cfg(not(feature = "promql"))]
    fn validate_promql(
        &mut self,
        _: &str,
        _: &Template,
        _: Span,
        _: Option<&PrometheusSource>,
        _: &Vars<'_>,
    ) {
    }

    #[cfg(feature = "promql")]
    fn validate_promql(
        &mut self,
        name: &str,
        t: &Template,
        span: Span,
        prom: Option<&PrometheusSource>,
        sample: &Vars<'_>,
    ) {
        let rendered = t.render(sample);
        match promql_parser::parser::parse(&rendered) {
            Err(e) => {
                let first = e.lines().next().unwrap_or("").trim().to_string();
                self.err(
                    Diagnostic::new(
                        Code::InvalidPromql,
                        format!("query of metric `{name}` is not valid PromQL: {first}"),
                        span,
                        "invalid PromQL",
                    )
                    .with_help(format!(
                        "after filling in placeholders the query reads: {rendered}"
                    )),
                );
            }
            Ok(expr) => {
                use promql_parser::parser::value::ValueType;
                match expr.value_type() {
                    ValueType::Vector | ValueType::Scalar => {}
                    other => {
                        let what = if other == ValueType::Matrix {
                            "a range vector"
                        } else {
                            "a string"
                        };
                        self.err(
                            Diagnostic::new(Code::InvalidPromql, format!("query of metric `{name}` returns {what}, not a number"), span, "not a number per revision")
                                .with_help("wrap range selectors in a function such as `rate(...)` or `increase(...)` and aggregate with `sum(...)`"),
                        );
                        return;
                    }
                }
                // Literal ranges only: `${window}` ranges are checked once, on the windows
                // themselves (see `check_windows`).
                if let Some(scrape) = prom.and_then(|p| p.scrape_interval) {
                    let mut ranges = Vec::new();
                    collect_ranges(&expr, &mut ranges);
                    if let Some(r) = ranges
                        .into_iter()
                        .filter(|r| *r != WINDOW_SENTINEL && *r < scrape * 2)
                        .min()
                    {
                        self.err(Diagnostic::new(
                            Code::RateWindowTooShort,
                            format!(
                                "metric `{name}` uses a {} range, less than twice the {} scrape interval",
                                human(r),
                                human(scrape)
                            ),
                            span,
                            "range too short for the scrape interval",
                        ));
                    }
                }
            }
        }
    }

    fn derived(
        &mut self,
        e: &ast::Expr,
        index: &HashMap<String, usize>,
        dims: &[Option<Dim>],
        pending: &[PendingMetric<'_>],
    ) -> Option<(MetricExpr, Dim)> {
        let typed = self.typed(e, Ctx::Derived, &|path: &[ast::Ident]| {
            let [one] = path else { return Err(None) };
            match index.get(&one.name) {
                Some(&j) => Ok((None, j, dims[j])),
                None => Err(Some(
                    pending.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
                )),
            }
        })?;
        Some((to_metric_expr(&typed.0), typed.1))
    }

    // ---------------------------------------------------------------------------------------
    // Expressions

    /// Types an expression. `resolve` maps a path to (arm, metric id, metric dim).
    fn typed(
        &mut self,
        e: &ast::Expr,
        ctx: Ctx,
        resolve: &dyn Fn(&[ast::Ident]) -> Resolved,
    ) -> Option<(Expr, Dim)> {
        use ast::ExprKind as K;
        match &e.kind {
            K::Number(q) => Some(match q.unit {
                None => (Expr::Const(q.value), Dim::Scalar),
                Some(ast::UnitSuffix::Percent) => (Expr::Const(q.value / 100.0), Dim::Ratio),
                Some(ast::UnitSuffix::Times) => (Expr::Const(q.value), Dim::Scalar),
                Some(u) => (
                    Expr::Const(q.value * u.millis().unwrap_or(1) as f64 / 1000.0),
                    Dim::Time,
                ),
            }),
            K::Paren(x) => self.typed(x, ctx, resolve),
            K::Path(path) => self.path(e, path, ctx, resolve),
            K::Unary(ast::UnaryOp::Neg, x) => {
                let (x, d) = self.typed(x, ctx, resolve)?;
                if d == Dim::Bool {
                    self.err(
                        Diagnostic::new(
                            Code::NotBoolean,
                            "`-` applies to numbers, not conditions",
                            e.span,
                            "negated condition",
                        )
                        .with_help("use `not` to negate a condition"),
                    );
                    return None;
                }
                Some((Expr::Neg(Box::new(x)), d))
            }
            K::Unary(ast::UnaryOp::Not, x) => {
                let (x, d) = self.typed(x, ctx, resolve)?;
                if d != Dim::Bool {
                    self.err(Diagnostic::new(
                        Code::NotBoolean,
                        format!("`not` applies to conditions, but this is {}", d.describe()),
                        e.span,
                        "not a condition",
                    ));
                    return None;
                }
                Some((Expr::Not(Box::new(x)), Dim::Bool))
            }
            K::Binary(op, a, b) => {
                let ta = self.typed(a, ctx, resolve);
                let tb = self.typed(b, ctx, resolve);
                let ((xa, da), (xb, db)) = (ta?, tb?);
                self.binary(*op, e, a, b, xa, da, xb, db, ctx)
            }
        }
    }

    fn path(
        &mut self,
        e: &ast::Expr,
        path: &[ast::Ident],
        ctx: Ctx,
        resolve: &dyn Fn(&[ast::Ident]) -> Resolved,
    ) -> Option<(Expr, Dim)> {
        let text = path
            .iter()
            .map(|i| i.name.as_str())
            .collect::<Vec<_>>()
            .join(".");
        match resolve(path) {
            Ok((arm, id, dim)) => {
                let dim = dim?;
                Some((
                    Expr::Metric {
                        arm: arm.unwrap_or(Arm::Canary),
                        metric: id,
                    },
                    dim,
                ))
            }
            Err(Some(known)) => {
                let metric = path.last().map_or("", |i| i.name.as_str());
                let span = path.last().map_or(e.span, |i| i.span);
                let names: Vec<&str> = known.iter().map(String::as_str).collect();
                let help = match did_you_mean(metric, &names) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None if names.is_empty() => {
                        "no metrics are defined: add `use knative` or a `metric` declaration"
                            .to_string()
                    }
                    None => format!("defined metrics: {}", names.join(", ")),
                };
                self.err(
                    Diagnostic::new(
                        Code::UnknownMetric,
                        format!("unknown metric `{metric}`"),
                        span,
                        "not defined",
                    )
                    .with_help(help),
                );
                None
            }
            Err(None) => {
                match ctx {
                    Ctx::Rule => {
                        let msg = if path.len() == 1 {
                            format!("`{text}` needs an arm: `canary.{text}` or `stable.{text}`")
                        } else {
                            format!("`{text}` is not `canary.<metric>` or `stable.<metric>`")
                        };
                        self.err(Diagnostic::new(
                            Code::MissingArm,
                            msg,
                            e.span,
                            "which revision?",
                        ));
                    }
                    Ctx::Derived => {
                        self.err(
                            Diagnostic::new(Code::InvalidValue, format!("`{text}`: derived metrics refer to other metrics by name only"), e.span, "not a metric name")
                                .with_help("a derived metric is computed for each arm separately: write `errors / requests`, not `canary.errors / ...`"),
                        );
                    }
                }
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn binary(
        &mut self,
        op: ast::BinaryOp,
        e: &ast::Expr,
        a: &ast::Expr,
        b: &ast::Expr,
        xa: Expr,
        da: Dim,
        xb: Expr,
        db: Dim,
        ctx: Ctx,
    ) -> Option<(Expr, Dim)> {
        use ast::BinaryOp as B;
        let bx = |x: Expr| Box::new(x);
        match op {
            B::And | B::Or => {
                for (d, x) in [(da, a), (db, b)] {
                    if d != Dim::Bool {
                        self.err(Diagnostic::new(
                            Code::NotBoolean,
                            format!(
                                "`{}` combines conditions, but this is {}",
                                op.as_str(),
                                d.describe()
                            ),
                            x.span,
                            "not a condition",
                        ));
                        return None;
                    }
                }
                Some((
                    if op == B::And {
                        Expr::And(bx(xa), bx(xb))
                    } else {
                        Expr::Or(bx(xa), bx(xb))
                    },
                    Dim::Bool,
                ))
            }
            _ if op.is_comparison() => {
                if da == Dim::Bool || db == Dim::Bool {
                    let x = if da == Dim::Bool { a } else { b };
                    self.err(
                        Diagnostic::new(
                            Code::NotBoolean,
                            format!(
                                "`{}` compares numbers, but this is a condition",
                                op.as_str()
                            ),
                            x.span,
                            "a condition",
                        )
                        .with_help("combine comparisons with `and` / `or`: `a > b and b > c`"),
                    );
                    return None;
                }
                self.unify(op.as_str(), e, a, b, da, db)?;
                // A ratio compared with a constant above 1 can never (or always) hold.
                for (d, other) in [(da, &xb), (db, &xa)] {
                    if d == Dim::Ratio
                        && let Some(v) = const_value(other)
                        && v > 1.0
                    {
                        let other_span = if std::ptr::eq(other, &xb) {
                            b.span
                        } else {
                            a.span
                        };
                        self.err(
                            Diagnostic::new(
                                Code::RatioAboveOne,
                                format!(
                                    "a ratio is compared with {}, which is above 1",
                                    trim_float(v)
                                ),
                                other_span,
                                "above 1 (100%)",
                            )
                            .with_label(
                                if std::ptr::eq(other, &xb) {
                                    a.span
                                } else {
                                    b.span
                                },
                                "a ratio between 0 and 1",
                            ),
                        );
                        return None;
                    }
                }
                let cmp = match op {
                    B::Gt => CmpOp::Gt,
                    B::Ge => CmpOp::Ge,
                    B::Lt => CmpOp::Lt,
                    B::Le => CmpOp::Le,
                    B::Eq => CmpOp::Eq,
                    _ => CmpOp::Ne,
                };
                Some((Expr::Cmp(cmp, bx(xa), bx(xb)), Dim::Bool))
            }
            B::Add | B::Sub => {
                let d = self.unify(op.as_str(), e, a, b, da, db)?;
                let aop = if op == B::Add {
                    ArithOp::Add
                } else {
                    ArithOp::Sub
                };
                Some((Expr::Arith(aop, bx(xa), bx(xb)), d))
            }
            B::Mul => {
                let d = match (da, db) {
                    (Dim::Bool, _) | (_, Dim::Bool) => return self.bool_arith(op, a, b, da),
                    (Dim::Scalar, x) | (x, Dim::Scalar) => x,
                    (Dim::Ratio, x) | (x, Dim::Ratio) => x,
                    (Dim::Rate, Dim::Time) | (Dim::Time, Dim::Rate) => Dim::Count,
                    _ => return self.mismatch("*", e, a, b, da, db),
                };
                Some((Expr::Arith(ArithOp::Mul, bx(xa), bx(xb)), d))
            }
            _ => {
                let d = match (da, db) {
                    (Dim::Bool, _) | (_, Dim::Bool) => return self.bool_arith(op, a, b, da),
                    (Dim::Count, Dim::Count) if ctx == Ctx::Derived => Dim::Ratio,
                    (x, y) if x == y => Dim::Scalar,
                    (x, Dim::Scalar) => x,
                    (Dim::Scalar, Dim::Ratio) => Dim::Scalar,
                    (x, Dim::Ratio) => x,
                    (Dim::Count, Dim::Time) => Dim::Rate,
                    (Dim::Count, Dim::Rate) => Dim::Time,
                    _ => return self.mismatch("/", e, a, b, da, db),
                };
                Some((Expr::Arith(ArithOp::Div, bx(xa), bx(xb)), d))
            }
        }
    }

    fn bool_arith(
        &mut self,
        op: ast::BinaryOp,
        a: &ast::Expr,
        b: &ast::Expr,
        da: Dim,
    ) -> Option<(Expr, Dim)> {
        let x = if da == Dim::Bool { a } else { b };
        self.err(Diagnostic::new(
            Code::NotBoolean,
            format!(
                "`{}` applies to numbers, but this is a condition",
                op.as_str()
            ),
            x.span,
            "a condition",
        ));
        None
    }

    /// The common kind of two operands of `+`, `-` or a comparison.
    fn unify(
        &mut self,
        op: &str,
        e: &ast::Expr,
        a: &ast::Expr,
        b: &ast::Expr,
        da: Dim,
        db: Dim,
    ) -> Option<Dim> {
        match (da, db) {
            (x, y) if x == y => Some(x),
            (Dim::Scalar, x @ (Dim::Ratio | Dim::Count | Dim::Rate))
            | (x @ (Dim::Ratio | Dim::Count | Dim::Rate), Dim::Scalar) => Some(x),
            (Dim::Scalar, Dim::Time) | (Dim::Time, Dim::Scalar) => {
                let (num, other) = if da == Dim::Scalar { (a, b) } else { (b, a) };
                let text = self.src.slice(num.span).to_string();
                self.err(
                    Diagnostic::new(
                        Code::MissingUnit,
                        format!("`{text}` has no unit, but is used with a duration"),
                        num.span,
                        "no unit",
                    )
                    .with_label(other.span, "a duration")
                    .with_help(format!("write the unit: `{text}ms` or `{text}s`")),
                );
                None
            }
            _ => self.mismatch(op, e, a, b, da, db),
        }
    }

    fn mismatch<T>(
        &mut self,
        op: &str,
        _e: &ast::Expr,
        a: &ast::Expr,
        b: &ast::Expr,
        da: Dim,
        db: Dim,
    ) -> Option<T> {
        self.err(
            Diagnostic::new(
                Code::UnitMismatch,
                format!("`{op}` with {} and {}", da.describe(), db.describe()),
                b.span,
                db.describe(),
            )
            .with_label(a.span, da.describe()),
        );
        None
    }

    // ---------------------------------------------------------------------------------------
    // Rules

    fn rule_resolver<'m>(metrics: &'m Table) -> impl Fn(&[ast::Ident]) -> Resolved + 'm {
        move |path: &[ast::Ident]| {
            let [arm, metric] = path else {
                return Err(None);
            };
            let arm = match arm.name.as_str() {
                "canary" => Arm::Canary,
                "stable" => Arm::Stable,
                _ => return Err(None),
            };
            match metrics.names.iter().position(|n| *n == metric.name) {
                Some(id) => Ok((Some(arm), id, metrics.metrics[id].as_ref().map(|m| m.dim))),
                // Already reported as an unknown preset; the name may come from it.
                None if metrics.incomplete => Ok((Some(arm), 0, None)),
                None => Err(Some(metrics.names.clone())),
            }
        }
    }

    fn condition(&mut self, e: &ast::Expr, metrics: &Table, what: &str) -> Option<Expr> {
        let resolve = Self::rule_resolver(metrics);
        let (x, d) = self.typed(e, Ctx::Rule, &resolve)?;
        if d != Dim::Bool {
            self.err(
                Diagnostic::new(
                    Code::NotBoolean,
                    format!("{what} must be a condition, but this is {}", d.describe()),
                    e.span,
                    "not a condition",
                )
                .with_help("compare it: e.g. `canary.error_rate > 1.5 * stable.error_rate`"),
            );
            return None;
        }
        Some(x)
    }

    fn rules(
        &mut self,
        decls: &[&ast::RuleDecl],
        metrics: &Table,
        eval: &Evaluation,
    ) -> Option<Vec<Rule>> {
        let mut names: HashMap<String, Span> = HashMap::new();
        let mut out = Vec::new();
        let mut ok = true;
        for (i, d) in decls.iter().enumerate() {
            let name = match &d.name {
                Some(n) => {
                    if let Some(prev) = names.get(&n.name) {
                        let prev = *prev;
                        self.err(
                            Diagnostic::new(
                                Code::Duplicate,
                                format!("rule `{}` is defined twice", n.name),
                                n.span,
                                "defined again here",
                            )
                            .with_label(prev, "first defined here")
                            .with_help("give each rule its own name"),
                        );
                        ok = false;
                    }
                    names.insert(n.name.clone(), n.span);
                    n.name.clone()
                }
                None => format!("rule-{}", i + 1),
            };
            match self.rule(d, name, metrics, eval) {
                Some(r) => out.push(r),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn rule(
        &mut self,
        d: &ast::RuleDecl,
        name: String,
        metrics: &Table,
        eval: &Evaluation,
    ) -> Option<Rule> {
        #[allow(clippy::type_complexity)]
        let mut when: Option<(
            &ast::Expr,
            Option<&ast::Quantity>,
            Option<&ast::Quantity>,
            Span,
        )> = None;
        let mut guards = Vec::new();
        let mut persistence = None;
        let mut failures = None;
        let mut window = None;
        let mut action = None;
        let mut ok = true;
        let mut seen: HashMap<&'static str, Span> = HashMap::new();
        for st in &d.stmts {
            let key = match st {
                ast::RuleStmt::When { .. } => "when",
                ast::RuleStmt::For(..) => "for",
                ast::RuleStmt::Failures { .. } => "failures",
                ast::RuleStmt::Require(..) => "require",
                ast::RuleStmt::Action(..) => "action",
                ast::RuleStmt::Window(..) => "window",
            };
            if key != "require" {
                if let Some(prev) = seen.get(key) {
                    let prev = *prev;
                    self.err(
                        Diagnostic::new(
                            Code::Duplicate,
                            format!("`{key}` appears twice in rule `{name}`"),
                            st.span(),
                            "again here",
                        )
                        .with_label(prev, "first here")
                        .with_help(if key == "when" {
                            "combine the conditions with `or`, or write two rules"
                        } else {
                            "keep one of them"
                        }),
                    );
                    ok = false;
                    continue;
                }
                seen.insert(key, st.span());
            }
            match st {
                ast::RuleStmt::When {
                    cond,
                    confidence,
                    detect,
                    span,
                } => when = Some((cond, confidence.as_ref(), detect.as_ref(), *span)),
                ast::RuleStmt::Require(e, _) => match self.condition(e, metrics, "`require`") {
                    Some(x) => guards.push(x),
                    None => ok = false,
                },
                ast::RuleStmt::For(q, _) => {
                    persistence = self.duration(q, "for").or_else(|| {
                        ok = false;
                        None
                    })
                }
                ast::RuleStmt::Window(q, _) => {
                    window = self.duration(q, "window").or_else(|| {
                        ok = false;
                        None
                    })
                }
                ast::RuleStmt::Failures { count, mode, .. } => {
                    failures = self
                        .count(count, "failures")
                        .map(|n| (n, *mode))
                        .or_else(|| {
                            ok = false;
                            None
                        })
                }
                ast::RuleStmt::Action(a, _) => action = Some(Action::from(a.action)),
            }
        }
        let Some((cond_ast, confidence, detect, _)) = when else {
            let span = d.name.as_ref().map_or(d.span, |n| n.span);
            self.err(Diagnostic::new(
                Code::MissingCondition,
                format!("rule `{name}` has no `when` condition"),
                span,
                "no `when`",
            ));
            return None;
        };
        let condition = self.condition(cond_ast, metrics, "`when`");
        let statistical = match (confidence, &condition) {
            (Some(c), Some(cond)) => self.statistical(cond_ast, cond, c, detect, metrics),
            _ => None,
        };
        if !ok || condition.is_none() || (confidence.is_some() && statistical.is_none()) {
            return None;
        }
        let (failures, mode) = failures.unwrap_or((1, None));
        Some(Rule {
            name,
            condition: condition?,
            statistical,
            guards,
            persistence: persistence.unwrap_or(Duration::ZERO),
            failures,
            failure_mode: match mode {
                Some(ast::FailureMode::Total) => FailureMode::Total,
                _ => FailureMode::Consecutive,
            },
            window: window.unwrap_or(eval.window),
            action: action.unwrap_or(Action::Rollback),
            location: self.loc(d.span),
        })
    }

    fn statistical(
        &mut self,
        e: &ast::Expr,
        cond: &Expr,
        c: &ast::Quantity,
        detect: Option<&ast::Quantity>,
        metrics: &Table,
    ) -> Option<Statistical> {
        let confidence = match c.unit {
            Some(ast::UnitSuffix::Percent) => c.value / 100.0,
            None if c.value < 1.0 => c.value,
            _ => f64::NAN,
        };
        if !(0.5..=0.9999).contains(&confidence) {
            self.err(Diagnostic::new(
                Code::InvalidConfidence,
                format!("confidence `{}` is out of range", c.text()),
                c.span,
                "between 50% and 99.99%",
            ));
            return None;
        }
        let bad = |this: &mut Self, why: &str| {
            this.err(Diagnostic::new(
                Code::InvalidStatistical,
                format!("`with confidence` cannot judge this condition: {why}"),
                e.span,
                "unsupported statistical form",
            ));
            None
        };
        let Expr::Cmp(CmpOp::Gt | CmpOp::Ge, lhs, rhs) = cond else {
            return bad(self, "it must be `canary.<ratio> > ...`");
        };
        let Expr::Metric {
            arm: Arm::Canary,
            metric,
        } = **lhs
        else {
            return bad(self, "the left side must be `canary.<ratio>`");
        };
        let baseline = match &**rhs {
            Expr::Metric {
                arm: Arm::Stable,
                metric: m,
            } if *m == metric => StatBaseline::Relative { factor: 1.0 },
            Expr::Arith(ArithOp::Mul, k, s) | Expr::Arith(ArithOp::Mul, s, k)
                if matches!(**s, Expr::Metric { arm: Arm::Stable, metric: m } if m == metric)
                    && const_value(k).is_some() =>
            {
                StatBaseline::Relative {
                    factor: const_value(k).unwrap_or(1.0),
                }
            }
            other => match const_value(other) {
                Some(t) => StatBaseline::Absolute { threshold: t },
                None => {
                    return bad(
                        self,
                        "the right side must be `K * stable.<same ratio>`, `stable.<same ratio>` or a constant",
                    );
                }
            },
        };
        let m = metrics.metrics.get(metric).and_then(Option::as_ref)?;
        let MetricKind::Derived(MetricExpr::Arith(ArithOp::Div, num, den)) = &m.kind else {
            return bad(
                self,
                &format!(
                    "`{}` is not a ratio of two counted metrics (`errors / requests`)",
                    m.name
                ),
            );
        };
        let (MetricExpr::Metric(num), MetricExpr::Metric(den)) = (&**num, &**den) else {
            return bad(
                self,
                &format!("`{}` is not a ratio of two counted metrics", m.name),
            );
        };
        let unit = |i: usize| {
            metrics
                .metrics
                .get(i)
                .and_then(Option::as_ref)
                .map(|m| m.unit)
        };
        if unit(*num) != Some(Unit::Count) || unit(*den) != Some(Unit::Count) {
            return bad(
                self,
                &format!(
                    "`{}` divides metrics that are not counts (`unit = count`)",
                    m.name
                ),
            );
        }
        let detect = match detect {
            None => None,
            Some(d) => Some(self.detect(d, baseline)?),
        };
        Some(Statistical {
            ratio: metric,
            numerator: *num,
            denominator: *den,
            baseline,
            confidence,
            detect,
        })
    }

    /// `detect Nx` (relative: a factor above the rule's) or `detect P%` (absolute: a rate above
    /// the rule's threshold, below 100%).
    fn detect(&mut self, d: &ast::Quantity, baseline: StatBaseline) -> Option<f64> {
        let (value, floor, want) = match baseline {
            StatBaseline::Relative { factor } => (
                (d.unit == Some(ast::UnitSuffix::Times)).then_some(d.value),
                factor,
                format!("a factor above the rule's {factor}, e.g. `detect 2x`"),
            ),
            StatBaseline::Absolute { threshold } => (
                (d.unit == Some(ast::UnitSuffix::Percent)).then_some(d.value / 100.0),
                threshold,
                format!(
                    "a rate above the rule's {}% and below 100%, e.g. `detect {}%`",
                    threshold * 100.0,
                    (threshold * 200.0).min(99.0)
                ),
            ),
        };
        match value {
            Some(v)
                if v > floor
                    && v < 1.0e6
                    && (v < 1.0 || matches!(baseline, StatBaseline::Relative { .. })) =>
            {
                Some(v)
            }
            _ => {
                self.err(Diagnostic::new(
                    Code::InvalidStatistical,
                    format!(
                        "`detect {}` is not a regression this rule can exclude",
                        d.text()
                    ),
                    d.span,
                    want,
                ));
                None
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Failure handling

    fn failure_policy(&mut self, ons: &[&ast::OnDecl]) -> FailurePolicy {
        let default_hold = Response::Hold {
            limit: Some((Duration::from_secs(120), Action::Rollback)),
        };
        let mut fp = FailurePolicy {
            no_data: default_hold,
            stale_data: default_hold,
            query_error: default_hold,
            inconclusive: Response::Hold { limit: None },
        };
        let mut seen: HashMap<ast::FailureKind, Span> = HashMap::new();
        for o in ons {
            if let Some(prev) = seen.get(&o.kind) {
                let prev = *prev;
                self.err(
                    Diagnostic::new(
                        Code::Duplicate,
                        format!("`on {}` is declared twice", o.kind.keyword()),
                        o.kind_span,
                        "again here",
                    )
                    .with_label(prev, "first here")
                    .with_help("keep one response per kind of failure"),
                );
                continue;
            }
            seen.insert(o.kind, o.kind_span);
            let resp = match &o.response {
                ast::OnResponse::Act(a) => Response::Act(a.action.into()),
                ast::OnResponse::Hold { limit: None, .. } => Response::Hold { limit: None },
                ast::OnResponse::Hold {
                    limit: Some((d, a)),
                    ..
                } => match self.duration(d, "hold") {
                    Some(d) => Response::Hold {
                        limit: Some((d, a.action.into())),
                    },
                    None => continue,
                },
            };
            match o.kind {
                ast::FailureKind::NoData => fp.no_data = resp,
                ast::FailureKind::StaleData => fp.stale_data = resp,
                ast::FailureKind::QueryError => fp.query_error = resp,
                ast::FailureKind::Inconclusive => fp.inconclusive = resp,
            }
        }
        fp
    }

    // ---------------------------------------------------------------------------------------
    // Steps

    fn steps(
        &mut self,
        decl: &ast::StepsDecl,
        metrics: &Table,
        rules: &Option<Vec<Rule>>,
    ) -> Option<Vec<Step>> {
        let mut out = Vec::new();
        let mut ok = true;
        let mut last_traffic: Option<(f64, Span)> = None;
        let mut promoted: Option<Span> = None;
        for step in &decl.steps {
            let sp = step.span();
            if let Some(p) = promoted {
                self.err(
                    Diagnostic::new(
                        Code::StepAfterPromote,
                        "step after `promote`",
                        sp,
                        "never reached",
                    )
                    .with_label(p, "the rollout ends here"),
                );
                ok = false;
                continue;
            }
            let kind = match step {
                ast::Step::Traffic(q, _) => {
                    if q.unit != Some(ast::UnitSuffix::Percent) {
                        self.err(
                            Diagnostic::new(
                                Code::InvalidValue,
                                format!("`traffic` expects a percentage, found `{}`", q.text()),
                                q.span,
                                "expected a percentage",
                            )
                            .with_help(format!("write `traffic {}%`", q.digits)),
                        );
                        ok = false;
                        continue;
                    }
                    let v = q.value;
                    if v >= 100.0 || v <= 0.0 || v.fract() != 0.0 {
                        let help = if v >= 100.0 {
                            "send all traffic to the canary with `promote`"
                        } else if v <= 0.0 {
                            "traffic 0% sends nothing to the canary; steps start at 1% or more"
                        } else {
                            "canary traffic is a whole percentage (KServe's canaryTrafficPercent is an integer)"
                        };
                        self.err(
                            Diagnostic::new(
                                Code::TrafficOutOfRange,
                                format!("traffic {} is outside 1%..99%", q.text()),
                                q.span,
                                "out of range",
                            )
                            .with_help(help),
                        );
                        ok = false;
                        continue;
                    }
                    if let Some((prev, prev_span)) = last_traffic
                        && v <= prev
                    {
                        self.err(
                            Diagnostic::new(
                                Code::StepsNotIncreasing,
                                format!(
                                    "traffic {} does not increase from {}%",
                                    q.text(),
                                    trim_float(prev)
                                ),
                                q.span,
                                "not larger than the step before",
                            )
                            .with_label(prev_span, "previous traffic step"),
                        );
                        ok = false;
                    }
                    last_traffic = Some((v, q.span));
                    StepKind::Traffic { percent: v as u8 }
                }
                ast::Step::Promote(s) => {
                    promoted = Some(*s);
                    StepKind::Promote
                }
                ast::Step::Approval { max, .. } => {
                    let (max, otherwise) = match max {
                        None => (None, Action::Rollback),
                        Some((d, a)) => {
                            let d = self.duration(d, "approval max");
                            if d.is_none() {
                                ok = false;
                            }
                            let a = match a {
                                Some(a) if a.action == ast::Action::Warn => {
                                    self.err(
                                        Diagnostic::new(
                                            Code::InvalidValue,
                                            "`else warn` would continue without approval",
                                            a.span,
                                            "not allowed here",
                                        )
                                        .with_help("use `else rollback` or `else pause`"),
                                    );
                                    ok = false;
                                    Action::Rollback
                                }
                                Some(a) => a.action.into(),
                                None => Action::Rollback,
                            };
                            (d, a)
                        }
                    };
                    StepKind::Approval { max, otherwise }
                }
                ast::Step::Hold(h) => match self.hold(h, metrics, rules) {
                    Some(h) => StepKind::Hold(h),
                    None => {
                        ok = false;
                        continue;
                    }
                },
            };
            out.push(Step {
                kind,
                location: self.loc(sp),
            });
        }
        if promoted.is_none() {
            let end = Span::new(decl.span.end.saturating_sub(1), decl.span.end);
            self.err(
                Diagnostic::new(
                    Code::NoPromotion,
                    "the steps never promote the canary",
                    decl.keyword_span,
                    "no `promote` step",
                )
                .with_label(end, "add `promote` before this `}`"),
            );
            ok = false;
        }
        ok.then_some(out)
    }

    fn hold(&mut self, h: &ast::Hold, metrics: &Table, rules: &Option<Vec<Rule>>) -> Option<Hold> {
        let mut ok = true;
        let min = match &h.duration {
            Some(q) => self.duration(q, "hold").or_else(|| {
                ok = false;
                None
            }),
            None => None,
        };
        if h.duration.is_none() && h.until.is_none() {
            self.err(
                Diagnostic::new(
                    Code::InvalidValue,
                    "`hold` needs a duration or a traffic condition",
                    h.span,
                    "hold for how long?",
                )
                .with_help("write `hold 5m` or `hold until canary.requests >= 2000 max 30m`"),
            );
            return None;
        }
        let until = match &h.until {
            Some(u) => {
                let cond = self.condition(&u.cond, metrics, "`until`");
                let max = self.duration(&u.max, "max");
                let otherwise = match u.otherwise {
                    Some(a) if a.action == ast::Action::Warn => {
                        self.err(
                            Diagnostic::new(
                                Code::InvalidValue,
                                "`else warn` would advance without enough measurement",
                                a.span,
                                "not allowed here",
                            )
                            .with_help("use `else rollback` (the default) or `else pause`"),
                        );
                        ok = false;
                        Action::Rollback
                    }
                    Some(a) => a.action.into(),
                    None => Action::Rollback,
                };
                if let (Some(min), Some(max)) = (min, max)
                    && max < min
                {
                    self.err(Diagnostic::new(
                        Code::InvalidValue,
                        format!(
                            "`max {}` is shorter than the hold's minimum {}",
                            human(max),
                            human(min)
                        ),
                        u.max.span,
                        "shorter than the minimum",
                    ));
                    ok = false;
                }
                match (cond, max) {
                    (Some(condition), Some(max)) => Some(HoldUntil {
                        condition,
                        max,
                        otherwise,
                    }),
                    _ => {
                        ok = false;
                        None
                    }
                }
            }
            None => None,
        };
        let mut overrides = Vec::new();
        let mut seen: HashMap<String, Span> = HashMap::new();
        for o in &h.overrides {
            let Some(name) = &o.name else {
                self.err(
                    Diagnostic::new(
                        Code::UnknownRule,
                        "an override must name the rule it changes",
                        o.span,
                        "which rule?",
                    )
                    .with_help(
                        "write `rule <Name> { action rollback }` with the name of a top-level rule",
                    ),
                );
                ok = false;
                continue;
            };
            if let Some(prev) = seen.get(&name.name) {
                let prev = *prev;
                self.err(
                    Diagnostic::new(
                        Code::Duplicate,
                        format!("rule `{}` is overridden twice in this hold", name.name),
                        name.span,
                        "again here",
                    )
                    .with_label(prev, "first here"),
                );
                ok = false;
                continue;
            }
            seen.insert(name.name.clone(), name.span);
            let Some(rules) = rules else {
                ok = false;
                continue;
            };
            let Some(rule) = rules.iter().position(|r| r.name == name.name) else {
                let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
                let help = match did_you_mean(&name.name, &names) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("rules: {}", names.join(", ")),
                };
                self.err(
                    Diagnostic::new(
                        Code::UnknownRule,
                        format!("no rule named `{}` to override", name.name),
                        name.span,
                        "unknown rule",
                    )
                    .with_help(help),
                );
                ok = false;
                continue;
            };
            let mut ov = RuleOverride {
                rule,
                persistence: None,
                failures: None,
                window: None,
                guards: Vec::new(),
                action: None,
            };
            for st in &o.stmts {
                match st {
                    ast::RuleStmt::When { span, .. } => {
                        self.err(
                            Diagnostic::new(Code::InvalidOverride, "an override cannot change a rule's `when`", *span, "not allowed in an override")
                                .with_help("define a new top-level rule instead, or change `for`, `failures`, `window`, `require` or `action` here"),
                        );
                        ok = false;
                    }
                    ast::RuleStmt::For(q, _) => ov.persistence = self.duration(q, "for"),
                    ast::RuleStmt::Window(q, _) => ov.window = self.duration(q, "window"),
                    ast::RuleStmt::Failures { count, mode, .. } => {
                        ov.failures = self.count(count, "failures").map(|n| {
                            (
                                n,
                                if *mode == Some(ast::FailureMode::Total) {
                                    FailureMode::Total
                                } else {
                                    FailureMode::Consecutive
                                },
                            )
                        })
                    }
                    ast::RuleStmt::Require(e, _) => {
                        if let Some(x) = self.condition(e, metrics, "`require`") {
                            ov.guards.push(x);
                        } else {
                            ok = false;
                        }
                    }
                    ast::RuleStmt::Action(a, _) => ov.action = Some(a.action.into()),
                }
            }
            overrides.push(ov);
        }
        ok.then_some(Hold {
            min: min.unwrap_or(Duration::ZERO),
            until,
            overrides,
        })
    }
}

/// The window rendered into `${window}` when validating a template: a duration no one writes, so
/// ranges that come from `${window}` can be told apart from literal ones.
const WINDOW_SENTINEL: Duration = Duration::from_millis(7_919_993);

fn placeholder_list() -> String {
    Var::ALL
        .iter()
        .map(|v| format!("${{{}}}", v.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn collect_paths<'e>(e: &'e ast::Expr, out: &mut Vec<&'e [ast::Ident]>) {
    match &e.kind {
        ast::ExprKind::Path(p) => out.push(p),
        ast::ExprKind::Number(_) => {}
        ast::ExprKind::Unary(_, x) | ast::ExprKind::Paren(x) => collect_paths(x, out),
        ast::ExprKind::Binary(_, a, b) => {
            collect_paths(a, out);
            collect_paths(b, out);
        }
    }
}

#[cfg(feature = "promql")]
fn collect_ranges(e: &promql_parser::parser::Expr, out: &mut Vec<Duration>) {
    use promql_parser::parser::Expr as P;
    match e {
        P::MatrixSelector(m) => out.push(m.range),
        P::Subquery(s) => {
            out.push(s.range);
            collect_ranges(&s.expr, out);
        }
        P::Aggregate(a) => {
            collect_ranges(&a.expr, out);
            if let Some(p) = &a.param {
                collect_ranges(p, out);
            }
        }
        P::Unary(u) => collect_ranges(&u.expr, out),
        P::Binary(b) => {
            collect_ranges(&b.lhs, out);
            collect_ranges(&b.rhs, out);
        }
        P::Paren(p) => collect_ranges(&p.expr, out),
        P::Call(c) => {
            for a in &c.args.args {
                collect_ranges(a, out);
            }
        }
        _ => {}
    }
}

/// The value of a constant expression.
pub(crate) fn const_value(e: &Expr) -> Option<f64> {
    match e {
        Expr::Const(v) => Some(*v),
        Expr::Neg(x) => const_value(x).map(|v| -v),
        Expr::Arith(op, a, b) => {
            let (a, b) = (const_value(a)?, const_value(b)?);
            Some(match op {
                ArithOp::Add => a + b,
                ArithOp::Sub => a - b,
                ArithOp::Mul => a * b,
                ArithOp::Div => a / b,
            })
        }
        _ => None,
    }
}

fn to_metric_expr(e: &Expr) -> MetricExpr {
    match e {
        Expr::Metric { metric, .. } => MetricExpr::Metric(*metric),
        Expr::Neg(x) => MetricExpr::Neg(Box::new(to_metric_expr(x))),
        Expr::Arith(op, a, b) => MetricExpr::Arith(
            *op,
            Box::new(to_metric_expr(a)),
            Box::new(to_metric_expr(b)),
        ),
        Expr::Const(v) => MetricExpr::Const(*v),
        // Derived metrics are checked to be numeric before conversion.
        Expr::Cmp(..) | Expr::And(..) | Expr::Or(..) | Expr::Not(..) => MetricExpr::Const(f64::NAN),
    }
}

fn trim_float(v: f64) -> String {
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A duration as people write it in policies: `90s`, `5m`, `1h30m`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut s = ms / 1000;
    let mut out = String::new();
    for (unit, secs) in [("d", 86_400u128), ("h", 3600), ("m", 60), ("s", 1)] {
        if s >= secs {
            out.push_str(&format!("{}{unit}", s / secs));
            s %= secs;
        }
    }
    if out.is_empty() {
        "0s".to_string()
    } else {
        out
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}
