//! Rendering diagnostics: miette for people, JSON, SARIF 2.1.0 and GitHub annotations for tools.

use std::fmt::Write as _;
use std::io::IsTerminal as _;

use miette::{GraphicalReportHandler, GraphicalTheme};
use rollout_diagnostics::{Code, Diagnostic, Severity};
use serde_json::{Value, json};

type Report<'a> = &'a [(String, Vec<Diagnostic>)];

fn handler() -> GraphicalReportHandler {
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        && std::io::stdout().is_terminal();
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    GraphicalReportHandler::new_themed(theme).with_width(100)
}

/// One diagnostic, rendered for a person.
pub fn human_one(d: &Diagnostic) -> String {
    let mut out = String::new();
    if handler().render_report(&mut out, d).is_err() {
        out = format!("{}[{}]: {}\n", d.severity(), d.code(), d.message());
    }
    out.push('\n');
    out
}

/// Every diagnostic and a summary line.
pub fn human(report: Report<'_>, files: usize) -> String {
    let mut out = String::new();
    let (mut errors, mut warnings) = (0, 0);
    for (_, ds) in report {
        for d in ds {
            out.push_str(&human_one(d));
            match d.severity() {
                Severity::Error => errors += 1,
                Severity::Warning => warnings += 1,
            }
        }
    }
    let _ = writeln!(
        out,
        "{files} file{} checked: {errors} error{}, {warnings} warning{}",
        plural(files),
        plural(errors),
        plural(warnings)
    );
    out
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn position(d: &Diagnostic) -> (usize, usize, usize, usize) {
    let span = d.span();
    match d.source_file() {
        Some(src) => {
            let a = src.line_col(span.start);
            let b = src.line_col(span.end);
            (a.line, a.column, b.line, b.column)
        }
        None => (1, 1, 1, 1),
    }
}

/// One JSON document with every diagnostic.
pub fn json(report: Report<'_>, files: usize) -> String {
    let mut diags = Vec::new();
    for (file, ds) in report {
        for d in ds {
            let labels: Vec<Value> = d
                .labels()
                .iter()
                .map(|l| {
                    let lc = d.source_file().map(|s| s.line_col(l.span.start));
                    json!({
                        "start": l.span.start,
                        "end": l.span.end,
                        "line": lc.map(|p| p.line),
                        "column": lc.map(|p| p.column),
                        "text": l.text,
                    })
                })
                .collect();
            let (line, column, end_line, end_column) = position(d);
            diags.push(json!({
                "file": file,
                "code": d.code().as_str(),
                "severity": d.severity(),
                "message": d.message(),
                "help": d.help_text(),
                "line": line,
                "column": column,
                "end_line": end_line,
                "end_column": end_column,
                "labels": labels,
            }));
        }
    }
    let count = |s: Severity| {
        report
            .iter()
            .flat_map(|(_, ds)| ds)
            .filter(|d| d.severity() == s)
            .count()
    };
    let doc = json!({
        "files": files,
        "errors": count(Severity::Error),
        "warnings": count(Severity::Warning),
        "diagnostics": diags,
    });
    format!(
        "{}\n",
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    )
}

fn level(s: Severity) -> &'static str {
    match s {
        Severity::Error => "error",
        Severity::Warning => "warning",
    }
}

/// SARIF 2.1.0: one run, every registry code as a rule.
pub fn sarif(report: Report<'_>) -> String {
    let rules: Vec<Value> = Code::ALL
        .iter()
        .map(|c| {
            json!({
                "id": c.as_str(),
                "name": c.title(),
                "shortDescription": {"text": c.title()},
                "fullDescription": {"text": c.title()},
                "help": {"text": c.default_help()},
                "helpUri": format!("https://example.invalid/rolloutctl/docs/diagnostics/{}.md", c.as_str()),
                "defaultConfiguration": {"level": level(c.severity())},
            })
        })
        .collect();
    let mut results = Vec::new();
    for (file, ds) in report {
        for d in ds {
            let (line, column, end_line, end_column) = position(d);
            let index = Code::ALL.iter().position(|c| *c == d.code()).unwrap_or(0);
            results.push(json!({
                "ruleId": d.code().as_str(),
                "ruleIndex": index,
                "level": level(d.severity()),
                "message": {"text": format!("{} ({})", d.message(), d.help_text())},
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": {"uri": file.replace('\\', "/")},
                        "region": {
                            "startLine": line,
                            "startColumn": column,
                            "endLine": end_line,
                            "endColumn": end_column.max(if end_line == line { column + 1 } else { 1 }),
                        }
                    }
                }],
            }));
        }
    }
    let doc = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "rolloutctl",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": "https://example.invalid/rolloutctl",
                "rules": rules,
            }},
            "results": results,
        }],
    });
    format!(
        "{}\n",
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    )
}

/// GitHub Actions workflow commands (`::error file=...::message`).
pub fn github(report: Report<'_>) -> String {
    let mut out = String::new();
    for (file, ds) in report {
        for d in ds {
            let (line, column, end_line, end_column) = position(d);
            let _ = writeln!(
                out,
                "::{} file={},line={line},col={column},endLine={end_line},endColumn={end_column},title={}::{}",
                level(d.severity()),
                escape_property(file),
                escape_property(&format!("{} {}", d.code(), d.code().title())),
                escape_data(&format!("{} (help: {})", d.message(), d.help_text())),
            );
        }
    }
    out
}

fn escape_data(s: &str) -> String {
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

fn hms(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

fn value(v: Option<f64>) -> String {
    match v {
        None => "n/a".into(),
        Some(x) if x != 0.0 && x.abs() < 0.01 => format!("{x:.5}"),
        Some(x) => format!("{x:.3}"),
    }
}

/// One decision as a few lines of text.
pub fn decision(d: &rollout_engine::Decision) -> String {
    let mut out = format!(
        "{}  {:<17} {:<22} traffic {:>3}%  {:<14} {}\n",
        hms(d.at),
        d.to,
        d.step_label,
        d.traffic,
        d.action,
        d.reason
    );
    for r in &d.rules {
        let cmp = r
            .when
            .iter()
            .map(|c| format!("{} {} {}", value(c.lhs), c.op.as_str(), value(c.rhs)))
            .collect::<Vec<_>>()
            .join(", ");
        let test = r.test.as_ref().map_or(String::new(), |t| {
            format!(
                "  p={:.2e} (alpha {:.2e}, look {}) canary {}/{}",
                t.p_value, t.alpha, t.look, t.canary.0, t.canary.1
            )
        });
        let _ = writeln!(
            out,
            "            {:<24} {:<12} {}{}{}",
            r.rule,
            format!("{:?}", r.verdict).to_lowercase(),
            cmp,
            test,
            if r.acted {
                format!("  -> {}", r.action.keyword())
            } else {
                String::new()
            }
        );
    }
    out
}

/// The timeline of a simulated run: every decision that did something, then the outcome.
pub fn timeline(r: &rollout_engine::sim::RunResult) -> String {
    let mut out = String::new();
    for d in &r.decisions {
        if d.action == "wait" && !d.evaluated && d.from == d.to {
            continue;
        }
        out.push_str(&decision(d));
    }
    let _ = writeln!(
        out,
        "\noutcome: {} at {}{}",
        r.outcome.as_str(),
        hms(r.end),
        r.end_reason
            .as_ref()
            .map_or(String::new(), |x| format!(" ({x})"))
    );
    if let Some(d) = r.detection() {
        let _ = writeln!(out, "detected {} after the regression began", hms(d));
    }
    out
}

/// A Monte Carlo summary.
pub fn batch(s: &rollout_engine::sim::BatchSummary) -> String {
    let pct = |n: usize| 100.0 * n as f64 / s.runs.max(1) as f64;
    let mut out = format!(
        "{} runs: promoted {:.1}%, rolled back {:.1}%, aborted {:.1}%, failed {:.1}%, stalled {:.1}%\n",
        s.runs,
        pct(s.promoted),
        pct(s.rolled_back),
        pct(s.aborted),
        pct(s.failed),
        pct(s.stalled)
    );
    if s.acted_before_onset > 0 {
        let _ = writeln!(
            out,
            "acted before the regression began: {:.1}%",
            pct(s.acted_before_onset)
        );
    }
    if !s.detection_s.is_empty() {
        let p = |q| {
            s.detection_percentile(q)
                .map_or("n/a".to_string(), |v| format!("{v:.0}s"))
        };
        let _ = writeln!(
            out,
            "detection time ({} runs): p50 {}, p90 {}, p99 {}, max {}",
            s.detection_s.len(),
            p(50.0),
            p(90.0),
            p(99.0),
            p(100.0)
        );
    }
    out
}
