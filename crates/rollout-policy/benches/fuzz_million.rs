//! A million no-panic cases for the template lexer and the checker (the CI test runs 10,000):
//! `cargo bench -p rollout-policy --bench fuzz_million`. Prints the cases run and the time.

#[path = "../tests/support/fuzz.rs"]
mod fuzz;

use proptest::test_runner::{Config, TestRunner};
use rollout_diagnostics::SourceFile;
use rollout_policy::template::Template;

fn main() {
    let cases: u32 = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let started = std::time::Instant::now();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let r = runner.run(&fuzz::text(24), |t| {
        let _ = Template::parse(&t);
        Ok(())
    });
    println!(
        "templates: {cases} cases, {:?}: {}",
        started.elapsed(),
        if r.is_ok() { "no panic" } else { "FAILED" }
    );
    let started = std::time::Instant::now();
    let policies = cases;
    let mut runner = TestRunner::new(Config {
        cases: policies,
        failure_persistence: None,
        ..Config::default()
    });
    let r2 = runner.run(&(fuzz::text(16), fuzz::text(6)), |(q, noise)| {
        let _ =
            rollout_policy::check_source(&SourceFile::new("f.rollout", fuzz::policy(&q, &noise)));
        Ok(())
    });
    println!(
        "policies: {policies} cases, {:?}: {}",
        started.elapsed(),
        if r2.is_ok() { "no panic" } else { "FAILED" }
    );
    if let Err(e) = &r {
        eprintln!("{e}");
    }
    if let Err(e) = &r2 {
        eprintln!("{e}");
    }
    if r.is_err() || r2.is_err() {
        std::process::exit(1);
    }
}
