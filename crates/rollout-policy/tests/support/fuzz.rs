//! Inputs for the no-panic properties: arbitrary Unicode with the characters and fragments the
//! template lexer and the checker treat specially (quotes, escapes, placeholders, brackets,
//! braces, durations), placed into PromQL templates and whole policies.

#![allow(dead_code)]

use proptest::prelude::*;

/// A fragment: any character, an escape of any character, or a piece of syntax.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<char>().prop_map(|c| c.to_string()),
        any::<char>().prop_map(|c| format!("\\{c}")),
        prop::sample::select(vec![
            "\"",
            "'",
            "`",
            "\\",
            "${revision}",
            "${namespace}",
            "${window}",
            "${",
            "}",
            "{",
            "[",
            "]",
            "(",
            ")",
            "=~",
            "!~",
            "=",
            ",",
            "é",
            "\u{0}",
            "\u{200b}",
            "🦀",
            "5m",
            "rate(",
            "sum by (le) (",
        ])
        .prop_map(str::to_string),
    ]
}

/// A template-like text of up to `n` fragments.
pub fn text(n: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(fragment(), 0..n).prop_map(|v| v.concat())
}

/// A whole policy with `query` as a metric's PromQL and `noise` in a rule.
pub fn policy(query: &str, noise: &str) -> String {
    let q = query.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        "rollout \"f\" {{\n  target {{\n    name = \"x\"\n    namespace = \"y\"\n  }}\n  prometheus {{\n    url = \"http://127.0.0.1:9090\"\n  }}\n  use knative\n  metric m {{\n    query = \"{q}\"\n    unit = count\n  }}\n  rule R {{\n    when canary.m > 1 {noise}\n    require canary.requests >= 10\n    action rollback\n  }}\n  steps {{\n    traffic 10%\n    hold 1m\n    promote\n  }}\n}}\n"
    )
}
