//! Lints every policy in `policies/` and `examples/` N times (default 200); for profiling with
//! `valgrind --tool=callgrind` or `perf`. Usage: `cargo run --release -p rollout-policy
//! --example lint_corpus -- 200`.

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let mut files = Vec::new();
    for dir in ["policies", "examples"] {
        let Ok(rd) = std::fs::read_dir(format!("{root}/{dir}")) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "rollout")
                && let Ok(t) = std::fs::read_to_string(&p)
            {
                files.push(rollout_diagnostics::SourceFile::new(
                    p.display().to_string(),
                    t,
                ));
            }
        }
    }
    let mut clean = 0;
    for _ in 0..n {
        for f in &files {
            clean += usize::from(rollout_policy::check_source(f).diagnostics.is_empty());
        }
    }
    println!("{clean} clean of {}", n * files.len());
}
