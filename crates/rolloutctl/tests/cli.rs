//! The `rolloutctl` binary as CI uses it: exit codes and every output format.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn rolloutctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rolloutctl"))
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .output()
        .expect("run rolloutctl")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const BAD: &str = "tests/corpus/invalid/R1003_unknown_metric_in_derived_metric.rollout";
const WARN: &str = "tests/corpus/invalid/R2001_rule_without_require.rollout";

#[test]
fn lint_exit_codes_tell_clean_problems_and_failure_apart() {
    assert_eq!(
        rolloutctl(&["lint", "policies", "examples"]).status.code(),
        Some(0)
    );
    assert_eq!(rolloutctl(&["lint", BAD]).status.code(), Some(1));
    assert_eq!(
        rolloutctl(&["lint", WARN]).status.code(),
        Some(0),
        "warnings alone pass"
    );
    assert_eq!(
        rolloutctl(&["lint", "--deny-warnings", WARN]).status.code(),
        Some(1)
    );
    assert_eq!(
        rolloutctl(&["lint", "no/such/file.rollout"]).status.code(),
        Some(2)
    );
    assert_eq!(
        rolloutctl(&["lint", "--format", "yaml", "policies"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(rolloutctl(&["lint"]).status.code(), Some(2));
}

#[test]
fn lint_reports_every_file_not_just_the_first_failure() {
    let out = rolloutctl(&["lint", "--format", "json", "tests/corpus/invalid"]);
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_str(&stdout(&out)).expect("json");
    let files: std::collections::BTreeSet<&str> = doc["diagnostics"]
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|d| d["file"].as_str())
        .collect();
    let on_disk = std::fs::read_dir(root().join("tests/corpus/invalid"))
        .expect("dir")
        .count();
    assert_eq!(files.len(), on_disk, "every invalid file is reported");
    assert_eq!(doc["files"].as_u64(), Some(on_disk as u64));
}

#[test]
fn human_output_has_code_snippet_help_and_summary() {
    let out = rolloutctl(&["lint", BAD]);
    let text = stdout(&out);
    assert!(text.contains("R1003"), "{text}");
    assert!(text.contains("unknown metric"), "{text}");
    assert!(text.contains("help:"), "{text}");
    assert!(text.contains("╭─[tests/corpus/invalid/R1003"), "{text}");
    assert!(
        text.contains("1 file checked: 1 error, 0 warnings"),
        "{text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "NO_COLOR output has no escape codes"
    );
}

#[test]
fn json_output_has_positions_and_counts() {
    let out = rolloutctl(&["lint", "--format", "json", BAD, WARN]);
    let doc: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(doc["errors"], 1);
    assert_eq!(doc["warnings"], 1);
    let d = &doc["diagnostics"][0];
    assert_eq!(d["code"], "R1003");
    assert_eq!(d["severity"], "error");
    assert!(d["line"].as_u64().expect("line") > 1);
    assert!(d["labels"][0]["text"].is_string());
    assert!(d["help"].as_str().is_some_and(|h| !h.is_empty()));
}

#[test]
fn sarif_output_has_the_2_1_0_shape() {
    let out = rolloutctl(&["lint", "--format", "sarif", BAD, WARN]);
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_str(&stdout(&out)).expect("json");
    assert_eq!(doc["version"], "2.1.0");
    assert!(
        doc["$schema"]
            .as_str()
            .expect("schema")
            .contains("sarif-2.1.0")
    );
    let runs = doc["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1);
    let driver = &runs[0]["tool"]["driver"];
    assert_eq!(driver["name"], "rolloutctl");
    let rules = driver["rules"].as_array().expect("rules");
    let ids: Vec<&str> = rules
        .iter()
        .map(|r| r["id"].as_str().expect("rule id"))
        .collect();
    for r in rules {
        assert!(r["shortDescription"]["text"].is_string());
        assert!(
            ["error", "warning", "note"]
                .contains(&r["defaultConfiguration"]["level"].as_str().expect("level"))
        );
    }
    let results = runs[0]["results"].as_array().expect("results");
    assert_eq!(results.len(), 2);
    for r in results {
        let id = r["ruleId"].as_str().expect("ruleId");
        let index = r["ruleIndex"].as_u64().expect("ruleIndex") as usize;
        assert_eq!(ids[index], id, "ruleIndex points at the rule");
        assert!(["error", "warning"].contains(&r["level"].as_str().expect("level")));
        assert!(r["message"]["text"].is_string());
        let loc = &r["locations"][0]["physicalLocation"];
        assert!(
            loc["artifactLocation"]["uri"]
                .as_str()
                .expect("uri")
                .ends_with(".rollout")
        );
        let region = &loc["region"];
        for k in ["startLine", "startColumn", "endLine", "endColumn"] {
            assert!(region[k].as_u64().expect(k) >= 1, "{k} is 1-based");
        }
        assert!(region["endLine"].as_u64() >= region["startLine"].as_u64());
    }
}

#[test]
fn github_output_is_workflow_commands() {
    let out = rolloutctl(&["lint", "--format", "github", BAD, WARN]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("::error file=tests/corpus/invalid/R1003"),
        "{text}"
    );
    assert!(
        lines[0].contains(",line=")
            && lines[0].contains(",col=")
            && lines[0].contains("title=R1003")
    );
    assert!(lines[1].starts_with("::warning file="), "{text}");
}

#[test]
fn fmt_check_rewrite_and_stdin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("p.rollout");
    let messy = "rollout \"m\" {  steps { traffic 10%\n hold 5m   # keep me\n promote } target { name = \"a\"  namespace = \"b\" } }";
    std::fs::write(&path, messy).expect("write");
    let p = path.to_str().expect("utf-8 path");
    assert_eq!(rolloutctl(&["fmt", "--check", p]).status.code(), Some(1));
    assert_eq!(
        std::fs::read_to_string(&path).expect("read"),
        messy,
        "--check writes nothing"
    );
    assert_eq!(rolloutctl(&["fmt", p]).status.code(), Some(0));
    let formatted = std::fs::read_to_string(&path).expect("read");
    assert!(
        formatted.contains("    hold 5m  # keep me\n"),
        "{formatted}"
    );
    assert_eq!(rolloutctl(&["fmt", "--check", p]).status.code(), Some(0));

    let mut child = Command::new(env!("CARGO_BIN_EXE_rolloutctl"))
        .args(["fmt", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(messy.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stdout(&out), formatted);

    std::fs::write(&path, "rollout \"x\" { steps { traffic } }").expect("write");
    assert_eq!(
        rolloutctl(&["fmt", p]).status.code(),
        Some(1),
        "syntax errors are problems"
    );
    assert_eq!(
        rolloutctl(&["fmt", "missing.rollout"]).status.code(),
        Some(2)
    );
}

#[test]
fn explain_prints_the_page() {
    let out = rolloutctl(&["explain", "R1003"]);
    assert_eq!(out.status.code(), Some(0));
    let page = std::fs::read_to_string(root().join("docs/diagnostics/R1003.md")).expect("page");
    assert_eq!(stdout(&out), page);
    assert_eq!(rolloutctl(&["explain", "r2001"]).status.code(), Some(0));
    assert_eq!(rolloutctl(&["explain", "R9999"]).status.code(), Some(2));
    let list = stdout(&rolloutctl(&["explain", "--list"]));
    assert!(list.lines().count() >= 40 && list.contains("R2007"));
}

#[test]
fn completions_and_help() {
    let out = rolloutctl(&["completions", "bash"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(stdout(&out).contains("rolloutctl"));
    let help = stdout(&rolloutctl(&["--help"]));
    assert!(
        help.contains("Exit codes:") && help.contains("Examples:"),
        "{help}"
    );
    let lint_help = stdout(&rolloutctl(&["lint", "--help"]));
    assert!(lint_help.contains("--deny-warnings") && lint_help.contains("sarif"));
}

#[test]
fn non_utf8_file_is_a_diagnostic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latin1.rollout");
    std::fs::write(&path, b"rollout \"caf\xe9\" {}").expect("write");
    let out = rolloutctl(&["lint", path.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("R0008"));
}

#[test]
fn plan_prints_text_json_and_mermaid() {
    // The seed's fixed rules: `plan` states a worst-case detection time for fixed rules.
    let p = "tests/promtool/seed.rollout";
    let text = stdout(&rolloutctl(&["plan", p]));
    assert!(
        text.contains("hold 5m")
            && text.contains("worst-case detection")
            && text.contains("CanaryHigherErrorRate"),
        "{text}"
    );
    let json: Value =
        serde_json::from_str(&stdout(&rolloutctl(&["plan", "--format", "json", p]))).expect("json");
    assert_eq!(json["steps"].as_array().map(Vec::len), Some(7));
    assert_eq!(json["min_total_s"], 1200.0, "three holds: 5m + 5m + 10m");
    assert!(
        json["steps"][1]["detection"][0][1]
            .as_f64()
            .is_some_and(|d| d > 0.0)
    );
    let mermaid = stdout(&rolloutctl(&["plan", "--format", "mermaid", p]));
    assert!(
        mermaid.starts_with("stateDiagram-v2\n")
            && mermaid.contains("--> RolledBack : CanaryHigherErrorRate"),
        "{mermaid}"
    );
    assert_eq!(
        rolloutctl(&["plan", BAD]).status.code(),
        Some(1),
        "an invalid policy is a problem"
    );
}

#[test]
fn simulate_exit_codes_follow_the_outcome() {
    let p = "policies/sklearn-iris-canary.rollout";
    let healthy = rolloutctl(&[
        "simulate",
        p,
        "--scenario",
        "examples/scenarios/healthy.yaml",
    ]);
    assert_eq!(healthy.status.code(), Some(0), "{}", stdout(&healthy));
    assert!(stdout(&healthy).contains("outcome: promoted"));
    let bad = rolloutctl(&[
        "simulate",
        p,
        "--scenario",
        "examples/scenarios/error-regression-10.yaml",
    ]);
    assert_eq!(bad.status.code(), Some(3), "rolled back");
    assert!(stdout(&bad).contains("detected"), "{}", stdout(&bad));
    let jsonl = stdout(&rolloutctl(&[
        "simulate",
        p,
        "--scenario",
        "examples/scenarios/error-regression-10.yaml",
        "--format",
        "jsonl",
    ]));
    let lines: Vec<Value> = jsonl
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert!(lines.len() > 5);
    assert!(
        lines
            .iter()
            .any(|d| d["rules"].as_array().is_some_and(|r| !r.is_empty())),
        "decision records carry rule verdicts"
    );
    assert_eq!(
        lines.last().map(|l| l["outcome"].clone()),
        Some(Value::from("rolled_back"))
    );
    let batch = stdout(&rolloutctl(&[
        "simulate",
        "--runs",
        "50",
        p,
        "--scenario",
        "examples/scenarios/error-regression-10.yaml",
    ]));
    assert!(
        batch.starts_with("50 runs:") && batch.contains("detection time"),
        "{batch}"
    );
    assert_eq!(
        rolloutctl(&["simulate", p, "--scenario", "no/such.yaml"])
            .status
            .code(),
        Some(2)
    );
}

#[test]
fn policy_tests_of_every_shipped_policy_pass() {
    let out = rolloutctl(&["test", "tests/policies"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for policy in std::fs::read_dir(root().join("policies"))
        .expect("policies")
        .flatten()
    {
        let name = policy
            .path()
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
            .expect("name");
        assert!(
            root()
                .join(format!("tests/policies/{name}.test.yaml"))
                .exists(),
            "policies/{name}.rollout has no tests/policies/{name}.test.yaml"
        );
    }
    assert!(text.contains(" passed, 0 failed"), "{text}");
}

#[test]
fn a_failing_policy_test_shows_a_timeline_diff() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("wrong.test.yaml");
    std::fs::write(
        &file,
        format!(
            "policy: {}\ntests:\n  - name: wrong on purpose\n    scenario: {}\n    expect:\n      outcome: promoted\n      timeline: [traffic 10%, traffic 25%, traffic 50%, promote, promoted]\n",
            root().join("policies/sklearn-iris-canary.rollout").display(),
            root().join("examples/scenarios/error-regression-10.yaml").display()
        ),
    )
    .expect("write");
    let out = rolloutctl(&["test", file.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("FAIL  wrong on purpose"), "{text}");
    assert!(
        text.contains("- traffic 25%") && text.contains("+ rollback"),
        "{text}"
    );
    assert!(text.contains("0 passed, 1 failed"), "{text}");
}

#[test]
fn sandbox_prints_its_endpoints_and_ctrl_c_leaves_no_processes() {
    use std::io::BufRead as _;
    assert!(
        std::process::Command::new("prometheus")
            .arg("--version")
            .output()
            .is_ok(),
        "Prometheus is required for this test (apt-get install -y prometheus)"
    );
    let dir = tempfile::tempdir().expect("dir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rolloutctl"))
        .args(["sandbox", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sandbox");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut text = String::new();
    let mut prom = None;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(url) = line.trim().strip_prefix("Prometheus") {
            prom = Some(url.trim().to_string());
        }
        text.push_str(&line);
        text.push('\n');
        if line.contains("curl -s") && line.contains("query") {
            break;
        }
    }
    assert!(
        text.contains("Kubernetes API   http://127.0.0.1:")
            && text.contains("kubeconfig")
            && text.contains("kubectl apply"),
        "{text}"
    );
    let prom = prom.expect("a Prometheus URL");
    assert!(prom.starts_with("http://127.0.0.1:"), "{prom}");
    let kubeconfig = dir.path().join("kubeconfig");
    assert!(kubeconfig.exists());
    // Ctrl-C.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let code = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s.code();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sandbox did not stop on Ctrl-C"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(code, Some(0));
    // No Prometheus left behind.
    let left = Command::new("pgrep")
        .args(["-f", &dir.path().display().to_string()])
        .output()
        .expect("pgrep");
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "processes left behind: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    let addr = prom.trim_start_matches("http://");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "Prometheus still listens on {addr}"
    );
}

fn export_rules(dir: &Path, format: &str) -> PathBuf {
    let out = dir.join(format!("seed-rules-{format}.yml"));
    let o = rolloutctl(&[
        "export",
        "prometheus-rules",
        "--format",
        format,
        "tests/promtool/seed.rollout",
        "--canary",
        "canary-rev",
        "--stable",
        "stable-rev",
        "-o",
        out.to_str().expect("path"),
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[test]
fn exported_rules_pass_promtool_check_and_the_promtool_unit_tests() {
    assert!(
        Command::new("promtool").arg("--version").output().is_ok(),
        "promtool is required (apt-get install -y prometheus)"
    );
    let dir = tempfile::tempdir().expect("dir");
    let rule_file = export_rules(dir.path(), "rule-file");
    let check = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rule_file)
        .output()
        .expect("promtool");
    assert!(
        check.status.success(),
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains("2 rules found"));
    // The PrometheusRule resource's spec is a rule file too.
    let cr = std::fs::read_to_string(export_rules(dir.path(), "prometheus-rule")).expect("read");
    assert!(
        cr.contains("apiVersion: monitoring.coreos.com/v1") && cr.contains("kind: PrometheusRule"),
        "{cr}"
    );
    assert!(cr.contains("alert: CanaryHigherErrorRate") && cr.contains("for: 2m"));
    // The unit tests in tests/promtool/: 1.6x fires after `for`, 1.4x does not; the same for latency.
    std::fs::copy(&rule_file, dir.path().join("seed-rules.yml")).expect("copy");
    for t in ["seed-error-rate.test.yml", "seed-latency.test.yml"] {
        let text = std::fs::read_to_string(root().join("tests/promtool").join(t)).expect("read");
        // promtool passes an empty file: each file must hold its two cases (fires, does not).
        assert_eq!(
            text.matches("\n  - name: ").count(),
            2,
            "{t}: two test cases"
        );
        std::fs::copy(root().join("tests/promtool").join(t), dir.path().join(t))
            .expect("copy test");
        let out = Command::new("promtool")
            .args(["test", "rules", t])
            .current_dir(dir.path())
            .output()
            .expect("promtool test");
        assert!(
            out.status.success(),
            "{t}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Without revisions an alert cannot be rendered.
    assert_eq!(
        rolloutctl(&[
            "export",
            "prometheus-rules",
            "policies/sklearn-iris-canary.rollout"
        ])
        .status
        .code(),
        Some(2)
    );
}

#[test]
fn grafana_dashboard_has_panels_and_every_promql_parses() {
    for policy in [
        "policies/sklearn-iris-canary.rollout",
        "policies/istio-recommender.rollout",
        "policies/low-traffic-fraud-model.rollout",
    ] {
        let out = rolloutctl(&["export", "grafana", policy]);
        assert_eq!(out.status.code(), Some(0));
        let d: Value = serde_json::from_str(&stdout(&out)).expect("dashboard json");
        assert!(
            d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
            "current Grafana schema"
        );
        assert!(
            d["title"]
                .as_str()
                .is_some_and(|t| t.contains("rolloutctl"))
        );
        let vars: Vec<&str> = d["templating"]["list"]
            .as_array()
            .expect("variables")
            .iter()
            .filter_map(|v| v["name"].as_str())
            .collect();
        assert_eq!(vars, vec!["datasource", "canary", "stable"]);
        // The revision variables list revisions in the preset's names (`use knative`: from
        // the queue-proxy's target_info; `use istio`: the revision's Deployment).
        let q = d["templating"]["list"][1]["query"]["query"]
            .as_str()
            .expect("query");
        let text = std::fs::read_to_string(root().join(policy)).expect("policy");
        let want = if text.contains("use istio") {
            "destination_workload)"
        } else if text.contains("use knative\n") {
            "label_values(target_info{"
        } else {
            "revision"
        };
        assert!(q.contains(want), "{policy}: {q}");
        let panels = d["panels"].as_array().expect("panels");
        assert!(
            panels.len() >= 2,
            "{policy}: a panel per metric and the traffic share"
        );
        let mut exprs = 0;
        for p in panels {
            assert_eq!(p["type"], "timeseries");
            assert!(p["gridPos"]["w"].as_u64().is_some() && p["id"].as_u64().is_some());
            for t in p["targets"].as_array().expect("targets") {
                let e = t["expr"].as_str().expect("expr");
                let concrete = e
                    .replace("$canary", "canary-rev")
                    .replace("$stable", "stable-rev");
                promql_parser::parser::parse(&concrete)
                    .unwrap_or_else(|err| panic!("{policy}: `{e}` is not PromQL: {err}"));
                exprs += 1;
            }
        }
        let first = &panels[0]["targets"];
        assert!(
            first.as_array().is_some_and(|t| t.len() >= 3),
            "canary, stable and a threshold: {first}"
        );
        assert!(exprs >= 4);
    }
}

#[test]
fn deploy_crd_yaml_is_what_the_types_generate() {
    let out = rolloutctl(&["crd"]);
    assert_eq!(out.status.code(), Some(0));
    let committed =
        std::fs::read_to_string(root().join("deploy/crd.yaml")).expect("deploy/crd.yaml");
    assert!(
        stdout(&out) == committed,
        "deploy/crd.yaml differs from the ModelRollout types; regenerate it with\n  cargo run -p rolloutctl -- crd > deploy/crd.yaml"
    );
    assert!(committed.contains("name: modelrollouts.rolloutctl.io"));
    assert!(committed.contains("- mro"));
    for col in ["Phase", "Step", "Traffic", "Canary", "Stable", "Age"] {
        assert!(
            committed.contains(&format!("name: {col}\n")),
            "printer column {col}"
        );
    }
    assert!(committed.contains("status: {}"), "status subresource");
}

/// Runs rolloutctl with a deadline; a hang is a failure, not a stuck CI job.
fn rolloutctl_within(secs: u64, args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rolloutctl"))
        .args(args)
        .current_dir(root())
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("rolloutctl {args:?} did not finish within {secs}s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

#[test]
fn only_regular_files_are_read_and_the_size_limit_applies_before_reading() {
    let dir = tempfile::tempdir().expect("dir");
    let fifo = dir.path().join("p.rollout");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .expect("mkfifo")
            .success()
    );
    let fifo = fifo.display().to_string();
    for args in [
        vec!["lint", fifo.as_str()],
        vec!["run", fifo.as_str(), "--kubeconfig", "/nonexistent"],
        vec![
            "simulate",
            "policies/demo-fast.rollout",
            "--scenario",
            fifo.as_str(),
        ],
        vec!["lint", "/dev/zero"],
    ] {
        let out = rolloutctl_within(10, &args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("not a regular file"),
            "{args:?}"
        );
    }
    // Over the limit: R0005 from the file's size, without reading it.
    let big = dir.path().join("big.rollout");
    let f = std::fs::File::create(&big).expect("create");
    f.set_len(2 * 1024 * 1024 + 7).expect("set_len");
    let out = rolloutctl_within(10, &["lint", &big.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("R0005")
            || String::from_utf8_lossy(&out.stderr).contains("R0005"),
        "{out:?}"
    );
}
