//! Documentation tests: every complete policy in the docs lints clean, and every diagnostic page's
//! example produces exactly its code while its fix lints clean.

use rollout_diagnostics::{Code, SourceFile};
use rollout_tests::*;

fn check_blocks(doc: &str) -> usize {
    let text = std::fs::read_to_string(root().join(doc)).unwrap_or_else(|e| panic!("{doc}: {e}"));
    let mut n = 0;
    for (info, body, line) in code_blocks(&text) {
        if info != "rollout" {
            continue;
        }
        n += 1;
        let src = SourceFile::new(format!("{doc}:{line}"), body.clone());
        let ds = lint(&src);
        assert!(
            ds.is_empty(),
            "{doc} block at line {line} should lint clean:\n{}",
            render(&ds)
        );
        let ast = rollout_syntax::parse(&src).expect("parses");
        assert_eq!(
            rollout_syntax::format(&ast, &body),
            body,
            "{doc} block at line {line} is not canonically formatted"
        );
    }
    n
}

#[test]
fn language_reference_examples_lint_clean() {
    let n = check_blocks("docs/language.md");
    assert!(
        n >= 5,
        "docs/language.md should have complete examples, found {n}"
    );
}

#[test]
fn readme_examples_lint_clean() {
    check_blocks("README.md");
}

#[test]
fn every_diagnostic_page_example_produces_its_code() {
    for code in Code::ALL {
        let path = root().join(format!("docs/diagnostics/{}.md", code.as_str()));
        let text =
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(
            text.starts_with(&format!("# {}: ", code.as_str())),
            "{code}: page title"
        );
        let example = text
            .split("## Example")
            .nth(1)
            .and_then(|s| s.split("## Fix").next())
            .unwrap_or("");
        let fix = text.split("## Fix").nth(1).unwrap_or("");
        let blocks = code_blocks(example);
        let rollout_example = blocks.iter().find(|b| b.0 == "rollout");
        match rollout_example {
            Some((_, body, _)) => {
                let ds = lint(&SourceFile::new(format!("{code}.md example"), body.clone()));
                assert_eq!(codes(&ds), vec![*code], "{code} example:\n{}", summary(&ds));
            }
            None => assert!(
                matches!(code, Code::InputTooLarge | Code::NotUtf8),
                "{code}: the Example section needs a ```rollout block"
            ),
        }
        let fixes = code_blocks(fix);
        let (_, body, _) = fixes
            .iter()
            .find(|b| b.0 == "rollout")
            .unwrap_or_else(|| panic!("{code}: the Fix section needs a ```rollout block"));
        let ds = lint(&SourceFile::new(format!("{code}.md fix"), body.clone()));
        assert!(
            ds.is_empty(),
            "{code} fix should lint clean:\n{}",
            summary(&ds)
        );
    }
}

/// Every preset's queries, as `docs/metrics.md` lists them: `name  query` per line.
fn preset_listing(preset: &str) -> String {
    rollout_policy::presets::preset(preset)
        .unwrap_or_else(|| panic!("preset {preset}"))
        .into_iter()
        .map(|(m, q)| format!("{:<12} {q}", m.name))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn docs_metrics_lists_every_preset_with_its_queries_as_they_are() {
    let text = std::fs::read_to_string(root().join("docs/metrics.md")).expect("docs/metrics.md");
    let missing: Vec<String> = rollout_policy::presets::PRESETS
        .iter()
        .map(|p| (p, format!("```text\n{}\n```", preset_listing(p))))
        .filter(|(_, block)| !text.contains(block))
        .map(|(p, block)| format!("`use {p}`:\n{block}"))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/metrics.md should list these presets' queries exactly as:\n{}",
        missing.join("\n")
    );
}
