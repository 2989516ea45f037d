use std::fmt;
use std::str::FromStr;

/// How serious a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A lint: the policy runs, but probably not as intended.
    Warning,
    /// The policy cannot be compiled or run.
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

macro_rules! registry {
    ($( $variant:ident = $code:literal, $sev:ident, $title:literal, $help:literal; )*) => {
        /// Every diagnostic code rolloutctl can emit. The one registry: codes, severities, titles and
        /// default help live here and nowhere else.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[non_exhaustive]
        pub enum Code {
            $(
                #[doc = $title]
                $variant,
            )*
        }

        impl Code {
            /// Every code, in registry order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];

            /// The stable spelling, e.g. `R1003`.
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $code,)* }
            }

            /// The default severity.
            pub fn severity(self) -> Severity {
                match self { $(Code::$variant => Severity::$sev,)* }
            }

            /// A short title for listings and SARIF rule descriptions.
            pub fn title(self) -> &'static str {
                match self { $(Code::$variant => $title,)* }
            }

            /// Help shown when a diagnostic carries no more specific help.
            pub fn default_help(self) -> &'static str {
                match self { $(Code::$variant => $help,)* }
            }
        }
    };
}

registry! {
    // R0xxx: syntax. Produced by rollout-syntax.
    Syntax = "R0001", Error, "syntax error",
        "check the statement against the language reference (docs/language.md)";
    UnterminatedString = "R0002", Error, "unterminated string",
        "close the string with `\"` on the same line, or use a `\"\"\"` raw string for multi-line text";
    InvalidEscape = "R0003", Error, "invalid escape sequence in a string",
        "valid escapes are `\\\\`, `\\\"`, `\\n`, `\\t` and `\\u{...}`; use a `\"\"\"` raw string to avoid escaping";
    MalformedQuantity = "R0004", Error, "malformed number, duration or percentage",
        "write the unit right after the number: `500ms`, `30s`, `5m`, `2h`, `1d`, `10%`";
    InputTooLarge = "R0005", Error, "input too large",
        "a policy file may be at most 1 MiB; split it or remove generated content";
    NestingTooDeep = "R0006", Error, "expression nested too deeply",
        "at most 64 levels of parentheses and prefix operators are allowed; name parts of the expression as derived metrics";
    ForeignSyntax = "R0007", Error, "syntax from another language",
        "rolloutctl's spelling is shown in the message; see docs/language.md";
    NotUtf8 = "R0008", Error, "file is not valid UTF-8",
        "save the policy as UTF-8";

    // R1xxx: semantic errors. Produced by rollout-policy.
    UnknownSetting = "R1001", Error, "unknown setting",
        "remove the setting or fix its spelling; the settings of each block are listed in docs/language.md";
    Duplicate = "R1002", Error, "duplicate definition",
        "each metric, rule, setting and failure handler may be defined once; rename or remove one of them";
    UnknownMetric = "R1003", Error, "unknown metric",
        "define the metric with `metric <name> { ... }` or `use` a preset that defines it";
    UnknownRule = "R1004", Error, "unknown rule in a step override",
        "a hold's override block may only refer to rules defined at the top level by name";
    MissingSetting = "R1005", Error, "required setting or section missing",
        "add the missing part; a policy needs `target { name namespace }`, `prometheus { url }` and `steps { ... }`";
    InvalidValue = "R1006", Error, "invalid value",
        "use a value of the kind the setting expects (shown in the message)";
    StepsNotIncreasing = "R1010", Error, "traffic steps not strictly increasing",
        "order traffic steps from small to large, each larger than the one before";
    TrafficOutOfRange = "R1011", Error, "traffic percentage out of range",
        "canary traffic steps must be between 1% and 99%; use `promote` to send 100% to the canary";
    NoPromotion = "R1012", Error, "steps never reach promotion",
        "end `steps` with `promote`";
    StepAfterPromote = "R1013", Error, "step after promote",
        "`promote` ends the rollout; move or remove the steps after it";
    ZeroDuration = "R1014", Error, "zero duration",
        "durations must be positive, e.g. `30s` or `5m`";
    UnitMismatch = "R1020", Error, "unit mismatch",
        "compare and combine quantities of the same kind: durations with durations (`200ms`), ratios with ratios or percentages (`5%`)";
    RatioAboveOne = "R1021", Error, "ratio threshold above 1",
        "ratios lie between 0 and 1: write `5%` or `0.05`, or compare with `1.5 * stable.<metric>` for a relative threshold";
    MissingUnit = "R1022", Error, "number without a unit",
        "add the unit of the quantity it is compared with, e.g. `200ms` for a latency";
    NotBoolean = "R1023", Error, "condition is not true/false",
        "a condition must be a comparison such as `canary.error_rate > 1.5 * stable.error_rate`, combined with `and`, `or`, `not`";
    UnknownPlaceholder = "R1030", Error, "unknown template placeholder",
        "PromQL templates may use ${revision}, ${namespace}, ${name}, ${component}, ${configuration}, ${window}";
    InvalidPromql = "R1031", Error, "invalid PromQL",
        "the template must be valid PromQL once placeholders are filled in; test it in the Prometheus UI";
    PlaceholderContext = "R1032", Error, "placeholder in the wrong place",
        "put label placeholders inside a quoted label value (`revision_name=\"${revision}\"`) and ${window} inside a range (`[${window}]`)";
    InlineCredential = "R1040", Error, "inline credential",
        "never write secrets in a policy: use `token_file`, `token_env`, or `basic_auth_file`";
    InvalidUrl = "R1041", Error, "invalid Prometheus URL",
        "write an absolute http:// or https:// URL without user name or password, e.g. \"http://prometheus.monitoring:9090\"";
    InvalidStatistical = "R1050", Error, "statistical rule of an unsupported form",
        "a `with confidence` rule compares a ratio of two counted metrics: `when canary.error_rate > 1.5 * stable.error_rate with confidence 95%`, and `detect` names a larger regression: `... with confidence 95% detect 2x`";
    MetricCycle = "R1051", Error, "derived metric refers to itself",
        "derived metrics must be built from other metrics without cycles";
    UnknownPreset = "R1052", Error, "unknown metric preset",
        "available presets: `knative` (Knative >= 1.21, what KServe 0.17-0.20 install), `knative_otlp`, `knative_1_19`, `knative_1_18` (KServe <= 0.16) and `istio`; docs/metrics.md says which one a cluster needs";
    MissingArm = "R1053", Error, "metric without canary/stable arm",
        "in rules, say which revision you mean: `canary.<metric>` or `stable.<metric>`";
    InvalidConfidence = "R1054", Error, "confidence out of range",
        "confidence must be a percentage between 50% and 99.99%, e.g. `95%`";
    DeadlineTooShort = "R1055", Error, "deadline shorter than the rollout",
        "raise `deadline` above the sum of the holds, or shorten the holds";
    InvalidOverride = "R1056", Error, "invalid statement in a step override",
        "an override may change `for`, `failures`, `window`, `require` and `action` of an existing rule, not its `when`";
    MissingCondition = "R1057", Error, "rule without condition",
        "add `when <condition>` to the rule";
    UnguardedCount = "R1058", Error, "count rule without a minimum-sample guard",
        "add `require canary.requests >= N`: a canary that receives no traffic has no errors, and would pass";

    // R2xxx: lint warnings. Produced by rollout-policy; `lint --deny-warnings` fails on them.
    NoMinSamples = "R2001", Warning, "rule without a minimum-sample guard",
        "add `require canary.requests >= N` so a handful of requests cannot decide the rollout";
    ForLongerThanHold = "R2002", Warning, "`for` longer than the hold it guards",
        "a rule that must breach for longer than the hold can never fire there: shorten `for` or lengthen the hold";
    RateWindowTooShort = "R2003", Warning, "rate window shorter than twice the scrape interval",
        "use a range of at least 2x (better 4x) the scrape interval, or `rate()` sees fewer than two samples";
    UnmeasuredStep = "R2004", Warning, "traffic step never measured",
        "follow each `traffic` step with a `hold` so the rules judge the canary at that percentage";
    InsecureTls = "R2005", Warning, "TLS verification disabled",
        "prefer `ca_file = \"...\"` over `insecure = true`";
    UnusedMetric = "R2006", Warning, "metric defined but never used",
        "remove the metric or use it in a rule";
    NoRollbackRule = "R2007", Warning, "no rule rolls back",
        "add a rule with `action rollback`, or the policy can only pause or warn on a bad canary";
}

impl Code {
    /// Parses `R1003` (case-insensitive).
    pub fn parse(s: &str) -> Option<Code> {
        Code::ALL
            .iter()
            .copied()
            .find(|c| c.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Code {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Code::parse(s).ok_or_else(|| format!("unknown diagnostic code `{s}`"))
    }
}

impl serde::Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_well_formed() {
        let mut seen = std::collections::HashSet::new();
        for c in Code::ALL {
            let s = c.as_str();
            assert!(seen.insert(s), "duplicate code {s}");
            assert_eq!(s.len(), 5);
            assert!(s.starts_with('R'));
            let class = &s[1..2];
            match c.severity() {
                Severity::Warning => assert_eq!(class, "2", "{s}: warnings are R2xxx"),
                Severity::Error => assert!(class == "0" || class == "1", "{s}: errors are R0/R1"),
            }
            assert_eq!(Code::parse(s), Some(*c));
            assert_eq!(Code::parse(&s.to_lowercase()), Some(*c));
        }
        assert_eq!(Code::parse("R9999"), None);
    }
}
