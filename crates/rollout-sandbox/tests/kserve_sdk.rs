//! A real client no one here wrote: KServe's canary walkthrough and the flows of its e2e tests
//! `test_canary.py` and `test_canary_raw_deployment.py` (Standard mode), through the `kserve` Python SDK (0.20.0, with kubernetes 32.0.1), against
//! the sandbox (`tests/python/kserve_sdk.py`). `scripts/test` creates the virtual environment
//! (`target/kserve-venv`); `KSERVE_SDK_PYTHON` names another interpreter that has them.

mod common;

use common::*;

fn python() -> std::path::PathBuf {
    let p = std::env::var_os("KSERVE_SDK_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root().join("target/kserve-venv/bin/python"));
    assert!(
        p.exists(),
        "{} is missing: the kserve SDK test needs a Python with kserve==0.20.0 and kubernetes==32.0.1; `scripts/test` creates it (python3 -m venv target/kserve-venv && target/kserve-venv/bin/pip install kserve==0.20.0 kubernetes==32.0.1)",
        p.display()
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kserves_canary_walkthrough_and_e2e_flow_pass_through_the_kserve_sdk() {
    let py = python();
    let version = std::process::Command::new(&py)
        .args(["-c", "from importlib.metadata import version; print(version(\"kserve\"), version(\"kubernetes\"))"])
        .output()
        .expect("python");
    let versions = String::from_utf8_lossy(&version.stdout).to_string();
    assert_eq!(
        versions.trim(),
        "0.20.0 32.0.1",
        "the pinned SDK versions: {versions}{}",
        String::from_utf8_lossy(&version.stderr)
    );
    let s = sandbox().await;
    let out = tokio::process::Command::new(&py)
        .arg(root().join("crates/rollout-sandbox/tests/python/kserve_sdk.py"))
        .env("KUBECONFIG", &s.kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(240), out)
        .await
        .expect("the SDK run finished within 240 s")
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the kserve SDK run failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for pass in [
        "PASS walkthrough docs/samples/v1beta1/rollout",
        "PASS test_canary.py flow: isvc-canary",
        "PASS test_canary.py flow: isvc-canary-runtime",
        "PASS test_canary_raw_deployment.py flow: isvc-raw-canary",
    ] {
        assert!(stdout.contains(pass), "{pass} missing:\n{stdout}");
    }
    s.shutdown().await;
}
