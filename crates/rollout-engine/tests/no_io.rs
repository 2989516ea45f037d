//! The engine performs no IO: its dependency tree has no async runtime, Kubernetes client, HTTP or
//! networking crate, and its source never reads a clock, a socket, a file or a process.

use std::path::Path;

#[test]
fn dependency_tree_has_no_io_crates() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "--edges",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let crates: Vec<&str> = tree
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        crates.contains(&"rollout-engine") && crates.contains(&"rollout-policy"),
        "{tree}"
    );
    for banned in [
        "tokio",
        "async-std",
        "mio",
        "kube",
        "kube-client",
        "k8s-openapi",
        "hyper",
        "reqwest",
        "h2",
        "http",
        "prometheus-http-query",
        "rustls",
        "openssl",
        "socket2",
        "tracing",
        "chrono",
        "time",
    ] {
        assert!(
            !crates.contains(&banned),
            "the engine depends on `{banned}`:\n{tree}"
        );
    }
}

#[test]
fn source_reads_no_clock_socket_file_or_process() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in std::fs::read_dir(&src).expect("src") {
        let path = entry.expect("entry").path();
        let code: String = std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let text = code;
        for banned in [
            "SystemTime",
            "Instant::now",
            "std::net",
            "std::fs",
            "std::process",
            "std::env",
            "thread::sleep",
            "File::open",
            "File::create",
        ] {
            assert!(!text.contains(banned), "{} uses `{banned}`", path.display());
        }
    }
}
