//! Corpus tests: every valid policy lints clean and is canonically formatted; every invalid
//! corpus file produces exactly the code in its name, and its rendering is snapshotted.

use rollout_diagnostics::{Code, SourceFile};
use rollout_tests::*;

#[test]
fn valid_files_lint_clean_and_are_formatted() {
    let mut files = rollout_files("policies");
    files.extend(rollout_files("examples"));
    files.extend(rollout_files("tests/corpus/valid"));
    assert!(
        files.len() >= 8,
        "expected the policies, examples and valid corpus, found {}",
        files.len()
    );
    for path in files {
        let src = source(&path);
        let ds = lint(&src);
        assert!(
            ds.is_empty(),
            "{} should lint clean:\n{}",
            src.name(),
            render(&ds)
        );
        let ast = rollout_syntax::parse(&src).expect("parses");
        let formatted = rollout_syntax::format(&ast, src.text());
        assert_eq!(
            formatted,
            src.text(),
            "{} is not canonically formatted (run `rolloutctl fmt`)",
            src.name()
        );
    }
}

#[test]
fn every_policy_compiles_to_a_policy() {
    for path in rollout_files("policies") {
        let src = source(&path);
        let checked = rollout_policy::check_source(&src);
        let policy = checked
            .policy
            .unwrap_or_else(|| panic!("{} has no policy", src.name()));
        assert!(matches!(
            policy.steps.last().map(|s| &s.kind),
            Some(rollout_policy::model::StepKind::Promote)
        ));
    }
}

/// Codes whose input cannot live in a text corpus file; they have generated tests below.
const GENERATED: [Code; 2] = [Code::InputTooLarge, Code::NotUtf8];

#[test]
fn invalid_files_produce_exactly_their_code() {
    let files = rollout_files("tests/corpus/invalid");
    let mut covered = Vec::new();
    for path in &files {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let code = Code::parse(&stem[..5.min(stem.len())])
            .unwrap_or_else(|| panic!("{stem}: corpus file names start with a code"));
        covered.push(code);
        let src = source(path);
        let ds = lint(&src);
        assert_eq!(codes(&ds), vec![code], "{}:\n{}", src.name(), summary(&ds));
        for d in &ds {
            let span = d.span();
            assert!(
                span.end <= src.text().len(),
                "{}: span out of range",
                src.name()
            );
            assert!(!d.help_text().is_empty());
        }
        insta::with_settings!({snapshot_path => "snapshots", prepend_module_to_snapshot => false}, {
            insta::assert_snapshot!(stem.to_string(), render(&ds));
        });
    }
    for code in Code::ALL {
        if !GENERATED.contains(code) {
            assert!(covered.contains(code), "no invalid corpus file for {code}");
        }
    }
}

#[test]
fn oversized_input_is_rejected_with_r0005() {
    let seed =
        std::fs::read_to_string(root().join("policies/sklearn-iris-canary.rollout")).expect("seed");
    let mut text = seed.clone();
    while text.len() <= rollout_syntax::MAX_INPUT_BYTES {
        text.push_str("# padding padding padding padding padding padding padding padding\n");
    }
    let ds = lint(&SourceFile::new("big.rollout", text));
    assert_eq!(codes(&ds), vec![Code::InputTooLarge], "{}", summary(&ds));
}

#[test]
fn invalid_utf8_is_rejected_with_r0008() {
    let mut bytes = b"rollout \"x\" { # caf".to_vec();
    bytes.push(0xe9);
    bytes.extend_from_slice(b"\n}\n");
    let d = rollout_syntax::decode("latin1.rollout", bytes).expect_err("not UTF-8");
    assert_eq!(d.code(), Code::NotUtf8);
    assert_eq!(d.span().start, 19);
}
