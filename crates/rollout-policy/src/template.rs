//! PromQL templates: a query with `${placeholder}`s that the runner fills per arm.
//!
//! A template is split once, when the policy is checked, into literal text and placeholders,
//! each placeholder with the PromQL context it sits in. Rendering escapes every value for its
//! context, so no label value can change the shape of the query:
//!
//! * inside a quoted string after `=` / `!=`: a PromQL string literal (Go escaping);
//! * inside a quoted string after `=~` / `!~`: regex metacharacters are escaped first, so the
//!   value matches only itself;
//! * inside a range `[...]`: only `${window}` is allowed and it renders as a duration.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

/// A placeholder a template may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Var {
    /// The arm's revision name, e.g. `sklearn-iris-predictor-00002`.
    Revision,
    /// The InferenceService's namespace.
    Namespace,
    /// The InferenceService's name.
    Name,
    /// The component (`predictor`).
    Component,
    /// The Knative configuration / service name: `<name>-<component>`.
    Configuration,
    /// The arm's Deployment: `<revision>-deployment` in Knative mode, the predictor's own
    /// Deployment (its revision) in Standard mode.
    Workload,
    /// The query window, as a PromQL duration.
    Window,
}

impl Var {
    /// Every placeholder.
    pub const ALL: [Var; 7] = [
        Var::Revision,
        Var::Namespace,
        Var::Name,
        Var::Component,
        Var::Configuration,
        Var::Workload,
        Var::Window,
    ];

    /// The placeholder's name inside `${...}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Var::Revision => "revision",
            Var::Namespace => "namespace",
            Var::Name => "name",
            Var::Component => "component",
            Var::Configuration => "configuration",
            Var::Workload => "workload",
            Var::Window => "window",
        }
    }

    fn parse(s: &str) -> Option<Var> {
        Var::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// Where in the PromQL text a placeholder sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Context {
    /// Inside a string literal delimited by `quote`, used as an exact value.
    Str {
        /// `"` or `'`.
        quote: char,
    },
    /// Inside a string literal used as a regular expression (after `=~` or `!~`).
    Regex {
        /// `"` or `'`.
        quote: char,
    },
    /// Inside a range or subquery `[...]`.
    Range,
    /// Anywhere else (only valid for nothing: reported by the checker).
    Bare,
    /// Inside a backtick raw string (cannot be escaped: reported by the checker).
    Raw,
}

/// A piece of a template.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Segment {
    /// Literal PromQL text.
    Text(String),
    /// A placeholder and its context. `offset` is its byte offset in the template text.
    Var {
        /// Which placeholder.
        var: Var,
        /// Where it sits.
        context: Context,
        /// Byte offset of `${` in the template.
        offset: usize,
    },
}

/// A problem found while splitting a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TemplateError {
    /// `${name}` with an unknown name, at byte `offset`.
    Unknown {
        /// The name as written.
        name: String,
        /// Byte offset of `${`.
        offset: usize,
    },
    /// `${` without `}`.
    Unterminated {
        /// Byte offset of `${`.
        offset: usize,
    },
}

/// A split PromQL template.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Template {
    /// The template as written.
    pub text: String,
    /// Literal text and placeholders, in order.
    pub segments: Vec<Segment>,
}

/// How KServe runs the arms, which decides what `${workload}` is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Knative Services: a revision runs as the Deployment `<revision>-deployment`.
    #[default]
    Knative,
    /// Raw Deployments (KServe's Standard mode): the revision *is* the predictor's Deployment,
    /// `<isvc>-predictor` or `<isvc>-<name>-predictor`.
    Standard,
}

/// Values to fill a template with.
#[derive(Clone, Debug)]
pub struct Vars<'a> {
    /// Revision name of the arm (in Standard mode: its Deployment).
    pub revision: &'a str,
    /// How the arms run.
    pub mode: Mode,
    /// Namespace.
    pub namespace: &'a str,
    /// InferenceService name.
    pub name: &'a str,
    /// Component.
    pub component: &'a str,
    /// Query window.
    pub window: Duration,
}

impl Template {
    /// Splits a template. Errors are reported for every bad placeholder.
    pub fn parse(text: &str) -> Result<Template, Vec<TemplateError>> {
        let mut segments = Vec::new();
        let mut errors = Vec::new();
        let mut lit = String::new();
        let bytes = text.as_bytes();
        // Lexical state of the PromQL text around the placeholders.
        let mut quote: Option<u8> = None;
        let mut regex = false;
        let mut bracket = 0usize;
        let mut last_op = String::new();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b == b'$' && bytes.get(i + 1) == Some(&b'{') {
                let Some(close) = text[i + 2..].find('}') else {
                    errors.push(TemplateError::Unterminated { offset: i });
                    lit.push_str(&text[i..]);
                    break;
                };
                let name = &text[i + 2..i + 2 + close];
                match Var::parse(name.trim()) {
                    Some(var) => {
                        if !lit.is_empty() {
                            segments.push(Segment::Text(std::mem::take(&mut lit)));
                        }
                        let context = match quote {
                            Some(b'`') => Context::Raw,
                            Some(q) if regex => Context::Regex { quote: q as char },
                            Some(q) => Context::Str { quote: q as char },
                            None if bracket > 0 => Context::Range,
                            None => Context::Bare,
                        };
                        segments.push(Segment::Var {
                            var,
                            context,
                            offset: i,
                        });
                    }
                    None => errors.push(TemplateError::Unknown {
                        name: name.to_string(),
                        offset: i,
                    }),
                }
                i += 2 + close + 1;
                continue;
            }
            // Advance the lexical state by one character.
            let ch_len = text[i..].chars().next().map_or(1, char::len_utf8);
            match quote {
                Some(q) => {
                    if b == b'\\' && q != b'`' {
                        // The escape and the whole character it escapes (which may be several
                        // bytes: `\é`), never a slice inside a character.
                        let next = text[i + 1..].chars().next().map_or(0, char::len_utf8);
                        lit.push_str(&text[i..i + 1 + next]);
                        i += 1 + next;
                        continue;
                    }
                    if b == q {
                        quote = None;
                    }
                }
                None => match b {
                    b'"' | b'\'' | b'`' => {
                        quote = Some(b);
                        regex = last_op == "=~" || last_op == "!~";
                    }
                    b'[' => bracket += 1,
                    b']' => bracket = bracket.saturating_sub(1),
                    b'=' | b'!' | b'~' => {
                        if last_op.len() >= 2 || !matches!(last_op.as_str(), "" | "=" | "!") {
                            last_op.clear();
                        }
                        last_op.push(b as char);
                    }
                    b' ' | b'\t' | b'\n' | b'\r' => {}
                    _ => last_op.clear(),
                },
            }
            lit.push_str(&text[i..i + ch_len]);
            i += ch_len;
        }
        if !lit.is_empty() {
            segments.push(Segment::Text(lit));
        }
        if errors.is_empty() {
            Ok(Template {
                text: text.to_string(),
                segments,
            })
        } else {
            Err(errors)
        }
    }

    /// The placeholders used, in order.
    pub fn vars(&self) -> impl Iterator<Item = (Var, Context, usize)> + '_ {
        self.segments.iter().filter_map(|s| match s {
            Segment::Var {
                var,
                context,
                offset,
            } => Some((*var, *context, *offset)),
            Segment::Text(_) => None,
        })
    }

    /// Fills the template, escaping every value for its context.
    pub fn render(&self, vars: &Vars<'_>) -> String {
        let mut out = String::with_capacity(self.text.len() + 64);
        let configuration = format!("{}-{}", vars.name, vars.component);
        let workload = match vars.mode {
            Mode::Knative => format!("{}-deployment", vars.revision),
            Mode::Standard => vars.revision.to_string(),
        };
        for seg in &self.segments {
            match seg {
                Segment::Text(t) => out.push_str(t),
                Segment::Var { var, context, .. } => {
                    let value = match var {
                        Var::Revision => vars.revision,
                        Var::Namespace => vars.namespace,
                        Var::Name => vars.name,
                        Var::Component => vars.component,
                        Var::Configuration => configuration.as_str(),
                        Var::Workload => workload.as_str(),
                        Var::Window => {
                            out.push_str(&promql_duration(vars.window));
                            continue;
                        }
                    };
                    match context {
                        Context::Str { quote } => escape_string(&mut out, value, *quote),
                        Context::Regex { quote } => {
                            escape_string(&mut out, &escape_regex(value), *quote)
                        }
                        // The checker rejects these contexts; render something that cannot
                        // match rather than raw text.
                        Context::Range | Context::Bare | Context::Raw => {
                            out.push_str("__rolloutctl_invalid_placeholder__")
                        }
                    }
                }
            }
        }
        out
    }
}

/// Escapes a value for the inside of a PromQL string literal (Go escaping).
pub fn escape_string(out: &mut String, value: &str, quote: char) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// Escapes RE2 metacharacters so the value matches only itself.
pub fn escape_regex(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A PromQL duration literal: `1m`, `30s` or `500ms`.
pub fn promql_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        "1ms".to_string()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(rev: &str) -> Vars<'_> {
        Vars {
            mode: Default::default(),
            revision: rev,
            namespace: "ns",
            name: "svc",
            component: "predictor",
            window: Duration::from_secs(60),
        }
    }

    #[test]
    fn contexts_are_detected() {
        let t = Template::parse(
            r#"sum(rate(x{a="${revision}", b=~'${name}', c!~"${namespace}"}[${window}])) + ${component}"#,
        )
        .expect("valid");
        let ctx: Vec<_> = t.vars().map(|(v, c, _)| (v, c)).collect();
        assert_eq!(
            ctx,
            vec![
                (Var::Revision, Context::Str { quote: '"' }),
                (Var::Name, Context::Regex { quote: '\'' }),
                (Var::Namespace, Context::Regex { quote: '"' }),
                (Var::Window, Context::Range),
                (Var::Component, Context::Bare),
            ]
        );
    }

    #[test]
    fn unknown_and_unterminated_placeholders_are_errors() {
        let errs = Template::parse("x{a=\"${rev}\"} + ${window").expect_err("invalid");
        assert_eq!(
            errs,
            vec![
                TemplateError::Unknown {
                    name: "rev".into(),
                    offset: 5
                },
                TemplateError::Unterminated { offset: 16 }
            ]
        );
    }

    #[test]
    fn values_are_escaped_for_their_context() {
        let t =
            Template::parse(r#"x{a="${revision}",b=~"${revision}"}[${window}]"#).expect("valid");
        let out = t.render(&vars("a\"b\\c.d"));
        assert_eq!(out, r#"x{a="a\"b\\c.d",b=~"a\"b\\\\c\\.d"}[1m]"#);
    }

    #[test]
    fn escaped_quotes_inside_strings_do_not_end_them() {
        let t = Template::parse(r#"x{a="q\"${revision}"}"#).expect("valid");
        assert_eq!(
            t.vars().next().map(|v| v.1),
            Some(Context::Str { quote: '"' })
        );
    }

    #[test]
    fn durations_render_in_the_largest_exact_unit() {
        assert_eq!(promql_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(promql_duration(Duration::from_secs(90)), "90s");
        assert_eq!(promql_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(promql_duration(Duration::from_secs(120)), "2m");
    }
}
