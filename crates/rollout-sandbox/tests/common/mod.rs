//! Helpers for sandbox tests: start a sandbox, run the machine's kubectl against it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use rollout_sandbox::{Config, Sandbox};

/// Settings for tests: no Prometheus, fast readiness and route programming.
pub fn fast() -> Config {
    Config {
        prometheus: false,
        ready_delay: Duration::from_millis(200),
        route_delay: Duration::from_millis(100),
        ..Config::default()
    }
}

/// Starts a sandbox with [`fast`] settings.
pub async fn sandbox() -> Sandbox {
    sandbox_with(fast()).await
}

/// Starts a sandbox.
pub async fn sandbox_with(config: Config) -> Sandbox {
    Sandbox::start(config).await.expect("start the sandbox")
}

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs kubectl with the sandbox's kubeconfig and a private cache directory.
pub struct Kubectl {
    kubeconfig: PathBuf,
    cache: tempfile::TempDir,
}

impl Kubectl {
    /// For a sandbox.
    pub fn new(s: &Sandbox) -> Kubectl {
        Kubectl {
            kubeconfig: s.kubeconfig.clone(),
            cache: tempfile::tempdir().expect("cache dir"),
        }
    }

    /// Runs `kubectl <args>`; panics with a clear message if kubectl is missing.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut args: Vec<&str> = args.to_vec();
        // kubectl before 1.27 (Debian's 1.20) validates only through OpenAPI v2, which the
        // sandbox does not serve; newer kubectl validates through the v3 document it does serve.
        if args.first() == Some(&"apply") && old_kubectl() {
            args.push("--validate=false");
        }
        std::process::Command::new("kubectl")
            .args(&args)
            .arg(format!("--cache-dir={}", self.cache.path().display()))
            .arg("--request-timeout=20s")
            .env("KUBECONFIG", &self.kubeconfig)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .current_dir(root())
            .output()
            .expect("kubectl must be installed (it is on this project's machines): run kubectl")
    }

    /// Runs and requires success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "kubectl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A JSONPath of the isvc.
    pub fn jsonpath(&self, name: &str, path: &str) -> String {
        self.ok(&["get", "isvc", name, "-o", &format!("jsonpath={path}")])
    }
}

/// Waits until `f` is true (polling every 100 ms), at most `secs`.
pub async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether the machine's kubectl is older than 1.27.
pub fn old_kubectl() -> bool {
    static OLD: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OLD.get_or_init(|| {
        let out = std::process::Command::new("kubectl")
            .args(["version", "--client", "-o", "json"])
            .output();
        let Ok(out) = out else { return false };
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["clientVersion"]["minor"]
            .as_str()
            .and_then(|m| m.trim_end_matches('+').parse::<u32>().ok())
            .is_some_and(|m| m < 27)
    })
}
