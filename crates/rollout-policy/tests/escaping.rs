//! Any label value survives as a literal: rendered into a template and parsed back by a real
//! PromQL parser, it is exactly the value (exact matchers) or matches exactly the value (regex
//! matchers), so no value can change the shape of a query.

use std::time::Duration;

use proptest::prelude::*;
use rollout_policy::template::{Template, Vars};

fn matchers(q: &str) -> Vec<promql_parser::label::Matcher> {
    match promql_parser::parser::parse(q) {
        Ok(promql_parser::parser::Expr::VectorSelector(vs)) => vs.matchers.matchers,
        other => panic!("`{q}` did not parse to one selector: {other:?}"),
    }
}

fn vars(v: &str) -> Vars<'_> {
    Vars {
        mode: Default::default(),
        revision: v,
        namespace: "ns",
        name: "svc",
        component: "predictor",
        window: Duration::from_secs(60),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn exact_matcher_values_survive(v in "\\PC{0,40}", quote in prop::sample::select(vec!['"', '\''])) {
        let t = Template::parse(&format!("x{{revision_name={quote}${{revision}}{quote}, other=\"y\"}}")).expect("template");
        let q = t.render(&vars(&v));
        let ms = matchers(&q);
        prop_assert_eq!(ms.len(), 2, "the value added or removed matchers: {}", q);
        let m = ms.iter().find(|m| m.name == "revision_name").expect("matcher");
        prop_assert_eq!(&m.value, &v);
        prop_assert!(m.is_match(&v));
    }

    #[test]
    fn regex_matcher_values_match_only_themselves(v in "[a-z0-9.*+?()|\\[\\]{}^$\\\\-]{1,20}") {
        let t = Template::parse("x{revision_name=~\"${revision}\"}").expect("template");
        let q = t.render(&vars(&v));
        let ms = matchers(&q);
        prop_assert_eq!(ms.len(), 1);
        prop_assert!(ms[0].is_match(&v), "{} does not match {}", q, v);
        let longer = format!("{v}x");
        prop_assert!(!ms[0].is_match(&longer), "{} also matches {}", q, longer);
    }
}
