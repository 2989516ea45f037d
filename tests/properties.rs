//! Properties of the front end: formatting is idempotent and preserves the tree; random and
//! mutated inputs never panic and finish in bounded time; deep nesting is a diagnostic, not a
//! stack overflow (checked on 2 MiB threads, the size of tokio's and the test harness's).

use std::time::{Duration, Instant};

use proptest::prelude::*;
use rollout_diagnostics::{Code, SourceFile};
use rollout_tests::*;

/// Runs `f` on a thread with a 2 MiB stack and fails if it panics or takes too long.
fn on_small_stack<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let start = Instant::now();
    let handle = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(f)
        .expect("spawn");
    let out = handle
        .join()
        .expect("the front end panicked or overflowed its stack");
    assert!(
        start.elapsed() < limit,
        "took {:?}, limit {:?}",
        start.elapsed(),
        limit
    );
    out
}

fn strip_spans(s: &str) -> String {
    let re = regex::Regex::new(r"@\d+\.\.\d+").expect("regex");
    re.replace_all(s, "@").into_owned()
}

/// Format, reparse, format again: same tree (modulo spans), same text.
fn assert_fmt_properties(text: &str) {
    let src = SourceFile::new("input.rollout", text.to_string());
    let Ok(ast1) = rollout_syntax::parse(&src) else {
        return;
    };
    let f1 = rollout_syntax::format(&ast1, text);
    let src2 = SourceFile::new("formatted.rollout", f1.clone());
    let ast2 = match rollout_syntax::parse(&src2) {
        Ok(a) => a,
        Err(ds) => panic!(
            "formatted text does not parse:\n{}\n---\n{f1}",
            summary(&ds)
        ),
    };
    assert_eq!(
        strip_spans(&format!("{:?}", ast1.rollout)),
        strip_spans(&format!("{:?}", ast2.rollout)),
        "formatting changed the tree:\n{text}\n---\n{f1}"
    );
    let texts = |f: &rollout_syntax::ast::File| {
        f.comments
            .iter()
            .map(|c| c.text.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        texts(&ast1),
        texts(&ast2),
        "formatting lost or reordered comments"
    );
    let f2 = rollout_syntax::format(&ast2, &f1);
    assert_eq!(f1, f2, "formatting is not idempotent");
}

// ------------------------------------------------------------------------------------------
// Generators

fn ident() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_]{0,8}".prop_filter("not reserved", |s| {
        !["and", "or", "not", "true", "false"].contains(&s.as_str())
    })
}

fn quantity() -> impl Strategy<Value = String> {
    (
        0u32..5000,
        prop::option::of(0u32..100),
        prop::sample::select(vec!["", "", "%", "ms", "s", "m", "h"]),
    )
        .prop_map(|(i, f, u)| match f {
            Some(f) => format!("{i}.{f}{u}"),
            None => format!("{i}{u}"),
        })
}

fn expr() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        quantity(),
        (prop::sample::select(vec!["canary", "stable"]), ident())
            .prop_map(|(a, m)| format!("{a}.{m}")),
        ident(),
    ];
    leaf.prop_recursive(5, 40, 3, |inner| {
        prop_oneof![
            (
                inner.clone(),
                prop::sample::select(vec![
                    "+", "-", "*", "/", ">", ">=", "<", "<=", "==", "!=", "and", "or"
                ]),
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            inner.clone().prop_map(|a| format!("({a})")),
            inner.clone().prop_map(|a| format!("not {a}")),
            inner.prop_map(|a| format!("-{a}")),
        ]
    })
}

fn string_lit() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 ._:/${}#-]{0,20}".prop_map(|s| format!("\"{s}\"")),
        "[a-zA-Z0-9 ._:/#{}=-]{0,10}\"?[a-zA-Z0-9 ._:/#{}=-]{1,10}"
            .prop_map(|s| format!("\"\"\"{s}\"\"\"")),
        Just("\"esc \\\" \\\\ \\n \\t \\u{1F600}\"".to_string()),
    ]
}

fn setting() -> impl Strategy<Value = String> {
    (
        ident(),
        prop_oneof![string_lit(), quantity(), Just("true".to_string()), ident()],
    )
        .prop_map(|(k, v)| format!("{k} = {v}"))
}

fn rule() -> impl Strategy<Value = String> {
    (
        prop::option::of("[A-Z][A-Za-z]{0,10}"),
        expr(),
        prop::option::of(quantity()),
        prop::collection::vec(
            prop_oneof![
                quantity().prop_map(|q| format!("for {q}")),
                quantity().prop_map(|q| format!("window {q}")),
                (
                    quantity(),
                    prop::sample::select(vec!["", " consecutive", " total"])
                )
                    .prop_map(|(q, m)| format!("failures {q}{m}")),
                expr().prop_map(|e| format!("require {e}")),
                prop::sample::select(vec!["action rollback", "action pause", "action warn"])
                    .prop_map(String::from),
            ],
            0..4,
        ),
    )
        .prop_map(|(name, when, conf, stmts)| {
            let mut s = format!(
                "rule {}{{\n",
                name.map(|n| format!("{n} ")).unwrap_or_default()
            );
            match conf {
                Some(c) => s.push_str(&format!("when {when} with confidence {c}\n")),
                None => s.push_str(&format!("when {when}\n")),
            }
            for st in stmts {
                s.push_str(&st);
                s.push('\n');
            }
            s.push_str("}\n");
            s
        })
}

fn step() -> impl Strategy<Value = String> {
    prop_oneof![
        quantity().prop_map(|q| format!("traffic {q}")),
        quantity().prop_map(|q| format!("hold {q}")),
        (quantity(), expr(), quantity())
            .prop_map(|(a, e, m)| format!("hold {a} until {e} max {m} else pause")),
        (quantity(), rule()).prop_map(|(a, r)| format!("hold {a} {{\n{r}}}")),
        Just("approval".to_string()),
        quantity().prop_map(|q| format!("approval max {q} else rollback")),
        Just("promote".to_string()),
    ]
}

fn item() -> impl Strategy<Value = String> {
    prop_oneof![
        (
            prop::sample::select(vec!["target", "prometheus", "evaluation"]),
            prop::collection::vec(setting(), 0..4)
        )
            .prop_map(|(k, ss)| format!("{k} {{\n{}\n}}\n", ss.join("\n"))),
        ident().prop_map(|p| format!("use {p}\n")),
        (ident(), expr()).prop_map(|(n, e)| format!("metric {n} = {e}\n")),
        (ident(), prop::collection::vec(setting(), 0..3))
            .prop_map(|(n, ss)| format!("metric {n} {{\n{}\n}}\n", ss.join("\n"))),
        rule(),
        (
            prop::sample::select(vec!["no_data", "stale_data", "query_error", "inconclusive"]),
            prop::sample::select(vec![
                "rollback",
                "pause",
                "warn",
                "hold",
                "hold 2m then rollback"
            ])
        )
            .prop_map(|(k, r)| format!("on {k} {r}\n")),
        prop::collection::vec(step(), 0..6)
            .prop_map(|ss| format!("steps {{\n{}\n}}\n", ss.join("\n"))),
    ]
}

fn policy() -> impl Strategy<Value = String> {
    ("[a-z -]{0,12}", prop::collection::vec(item(), 0..7))
        .prop_map(|(name, items)| format!("rollout \"{name}\" {{\n{}}}\n", items.concat()))
}

/// Scrambles layout: line breaks become other whitespace, and comments are sprinkled in.
fn perturb(text: &str, seeds: &[u8]) -> String {
    let mut out = String::new();
    let mut k = 0usize;
    let mut next = || {
        k += 1;
        seeds.get(k % seeds.len().max(1)).copied().unwrap_or(0)
    };
    for line in text.lines() {
        out.push_str(&" ".repeat((next() % 5) as usize));
        out.push_str(line);
        match next() % 7 {
            0 => out.push_str("   # trailing note"),
            1 => out.push_str("\n// a leading comment\n"),
            2 => out.push_str("\n\n"),
            _ => {}
        }
        out.push('\n');
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn fmt_is_idempotent_and_preserves_the_tree(p in policy(), seeds in prop::collection::vec(any::<u8>(), 1..64)) {
        let text = perturb(&p, &seeds);
        // Generated policies are syntactically valid by construction (up to compat words).
        let src = SourceFile::new("gen", text.clone());
        if let Err(ds) = rollout_syntax::parse(&src) {
            let allowed = [Code::MalformedQuantity, Code::ForeignSyntax];
            prop_assert!(ds.iter().all(|d| allowed.contains(&d.code())), "generator produced invalid syntax:\n{}\n{}", summary(&ds), text);
            return Ok(());
        }
        assert_fmt_properties(&text);
    }

    #[test]
    fn mutated_inputs_never_panic(idx in 0usize..64, edits in prop::collection::vec((any::<u16>(), 0u8..4, "[ -~\n]{0,6}"), 1..6)) {
        let mut files = rollout_files("policies");
        files.extend(rollout_files("examples"));
        files.extend(rollout_files("tests/corpus"));
        let path = &files[idx % files.len()];
        let mut text = std::fs::read_to_string(path).expect("read");
        for (pos, kind, ins) in edits {
            let mut at = (pos as usize) % (text.len() + 1);
            while !text.is_char_boundary(at) { at -= 1; }
            match kind {
                0 => text.insert_str(at, &ins),
                1 => { let end = (at + ins.len() + 1).min(text.len()); let mut e = end; while !text.is_char_boundary(e) { e += 1; } text.replace_range(at..e, ""); }
                2 => { let chunk: String = text[at..].chars().take(12).collect(); text.insert_str(at, &chunk); }
                _ => text.insert_str(at, &"(".repeat(ins.len() * 20)),
            }
        }
        let t = text.clone();
        on_small_stack(Duration::from_secs(20), move || {
            let src = SourceFile::new("mutated", t);
            let checked = rollout_policy::check_source(&src);
            for d in &checked.diagnostics {
                assert!(d.span().end <= src.text().len() + 1);
            }
        });
        assert_fmt_properties(&text);
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let text = String::from_utf8_lossy(&bytes).into_owned();
        on_small_stack(Duration::from_secs(20), move || {
            let _ = rollout_policy::check_source(&SourceFile::new("random", text));
        });
    }
}

#[test]
fn corpus_files_have_the_fmt_properties() {
    let mut files = rollout_files("policies");
    files.extend(rollout_files("examples"));
    files.extend(rollout_files("tests/corpus"));
    for path in files {
        assert_fmt_properties(&std::fs::read_to_string(path).expect("read"));
    }
}

fn policy_with_condition(cond: &str) -> String {
    format!(
        "rollout \"deep\" {{\n  target {{\n    name = \"a\"\n    namespace = \"b\"\n  }}\n  prometheus {{\n    url = \"http://127.0.0.1:9090\"\n  }}\n  use knative\n  rule R {{\n    when {cond}\n    require canary.requests >= 1\n  }}\n  steps {{\n    traffic 10%\n    hold 1m\n    promote\n  }}\n}}\n"
    )
}

fn assert_nesting_diagnostic(cond: String) {
    let text = policy_with_condition(&cond);
    let ds = on_small_stack(Duration::from_secs(60), move || {
        lint(&SourceFile::new("deep", text))
    });
    assert_eq!(codes(&ds), vec![Code::NestingTooDeep], "{}", summary(&ds));
}

#[test]
fn deep_parentheses_are_a_diagnostic() {
    for depth in [65, 300, 10_000, 200_000] {
        assert_nesting_diagnostic(format!(
            "{}canary.error_rate{} > 0.1",
            "(".repeat(depth),
            ")".repeat(depth)
        ));
    }
}

#[test]
fn long_prefix_chains_are_a_diagnostic() {
    assert_nesting_diagnostic(format!("{}canary.error_rate > 0.1", "not ".repeat(100_000)));
    assert_nesting_diagnostic(format!("canary.error_rate > {}1%", "-".repeat(100_000)));
}

#[test]
fn long_operator_chains_are_a_diagnostic() {
    assert_nesting_diagnostic(format!(
        "canary.error_rate > 0.001{}",
        " + 0.001".repeat(50_000)
    ));
}

#[test]
fn nesting_at_the_limit_is_accepted() {
    let depth = rollout_syntax::MAX_DEPTH - 2;
    let text = policy_with_condition(&format!(
        "{}canary.error_rate{} > 0.1",
        "(".repeat(depth),
        ")".repeat(depth)
    ));
    let ds = on_small_stack(Duration::from_secs(60), move || {
        lint(&SourceFile::new("deep", text))
    });
    assert!(ds.is_empty(), "{}", summary(&ds));
}
