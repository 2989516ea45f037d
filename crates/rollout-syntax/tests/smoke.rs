use rollout_diagnostics::SourceFile;

#[test]
fn seed_policy_parses_and_formats() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../policies/sklearn-iris-canary.rollout")).unwrap();
    let src = SourceFile::new("seed", text.clone());
    let f = rollout_syntax::parse(&src).unwrap();
    let out = rollout_syntax::format(&f, &text);
    println!("{out}");
    assert_eq!(out, text);
}
