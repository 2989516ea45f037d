//! No input makes the template lexer or the checker panic: every input gets a template, a
//! diagnostic, or a clean policy (10,000 cases each here; `cargo bench -p rollout-policy
//! --bench fuzz_million` runs a million).

mod support;

use proptest::prelude::*;
use rollout_diagnostics::SourceFile;
use rollout_policy::template::Template;

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn templates_of_any_unicode_and_escapes_parse_or_explain(t in support::fuzz::text(24)) {
        let _ = Template::parse(&t);
    }

    #[test]
    fn policies_with_any_template_check_or_explain(q in support::fuzz::text(16), noise in support::fuzz::text(6)) {
        let checked = rollout_policy::check_source(&SourceFile::new("f.rollout", support::fuzz::policy(&q, &noise)));
        prop_assert!(checked.policy.is_some() || !checked.diagnostics.is_empty(), "neither a policy nor a diagnostic");
    }
}

#[test]
fn the_reported_escape_is_a_diagnostic_not_a_panic() {
    // `\é` inside a string of a PromQL template (issue 10, case 8).
    assert!(Template::parse("x{a=\"\\é\"}").is_ok());
    let src = SourceFile::new(
        "f.rollout",
        support::fuzz::policy("sum(x{a=\"\\é${revision}\"})", ""),
    );
    let _ = rollout_policy::check_source(&src);
}
