//! The command-line interface: every subcommand and flag, with help text.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

const AFTER_HELP: &str = "\
Exit codes:
  0  success (lint: no problems; fmt --check: already formatted; simulate: promoted)
  1  the command ran and found problems (lint errors, or warnings with --deny-warnings;
     files that fmt --check would change; failing policy tests; an invalid policy)
  2  the command could not run (bad arguments, unreadable file)
  3  run/simulate/demo: the canary was rolled back
  4  run/simulate: an operator aborted
  5  run/simulate/demo: the rollout failed (infrastructure: cluster or Prometheus unusable,
     preflight refused, Lease held by another runner); controller: cannot run, or lost the
     leader Lease; apply: the cluster refused
  6  simulate: the rollout did not end (paused, waiting, or out of simulated time)
  7  run: the InferenceService was deleted during the rollout
  130/143  run, controller: stopped by SIGINT/SIGTERM after releasing the Lease (the rollout
     stays where it is; `rolloutctl run` again, or the controller, resumes it)

Examples:
  rolloutctl lint policies/
  rolloutctl lint --format sarif policies/ > rolloutctl.sarif
  rolloutctl fmt --check policies/
  rolloutctl explain R2001
  rolloutctl plan --format mermaid policies/sklearn-iris-canary.rollout
  rolloutctl simulate policies/sklearn-iris-canary.rollout --scenario examples/scenarios/healthy.yaml
  rolloutctl test tests/policies/
  rolloutctl completions bash > /etc/bash_completion.d/rolloutctl";

/// Declarative canary rollouts for KServe InferenceServices.
///
/// A `.rollout` policy says how to move traffic to a new model revision (10% -> 25% -> 50% ->
/// 100%), which metrics judge it against the stable revision, and when to roll back.
#[derive(Debug, Parser)]
#[command(name = "rolloutctl", version, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check policies for errors and lint warnings (for CI)
    #[command(
        after_help = "Examples:\n  rolloutctl lint policies/\n  rolloutctl lint --deny-warnings --format github policies/ examples/"
    )]
    Lint(LintArgs),
    /// Format policies in the canonical layout (comments are kept)
    #[command(
        after_help = "Examples:\n  rolloutctl fmt policies/\n  rolloutctl fmt --check policies/\n  cat p.rollout | rolloutctl fmt -"
    )]
    Fmt(FmtArgs),
    /// Explain a diagnostic code, with an example and the fix
    #[command(after_help = "Examples:\n  rolloutctl explain R1003\n  rolloutctl explain --list")]
    Explain(ExplainArgs),
    /// Show what a policy will do: steps, durations, detection times, exposure
    #[command(
        after_help = "Examples:\n  rolloutctl plan policies/sklearn-iris-canary.rollout\n  rolloutctl plan --format mermaid policies/sklearn-iris-canary.rollout"
    )]
    Plan(PlanArgs),
    /// Run a policy against a simulated canary on virtual time
    #[command(
        after_help = "Examples:\n  rolloutctl simulate policies/sklearn-iris-canary.rollout --scenario examples/scenarios/error-regression-10.yaml\n  rolloutctl simulate --runs 1000 policies/low-traffic-fraud-model.rollout --scenario examples/scenarios/low-traffic-2x.yaml"
    )]
    Simulate(SimulateArgs),
    /// Run policy unit tests (`*.test.yaml`)
    #[command(after_help = "Examples:\n  rolloutctl test tests/policies/")]
    Test(TestArgs),
    /// Run a rollout against a live InferenceService and Prometheus
    #[command(
        after_help = "Examples:\n  rolloutctl run policies/sklearn-iris-canary.rollout\n  rolloutctl run --kubeconfig ~/.kube/prod --context ml policies/sklearn-iris-canary.rollout --output json\n  rolloutctl run --dry-run policies/sklearn-iris-canary.rollout\n\nExit codes: 0 promoted, 1 policy error, 2 bad arguments, 3 rolled back, 4 aborted by an operator,\n5 failed (infrastructure, preflight, Lease held, target missing), 130/143 stopped by a signal.\nA rollout that already ended reports its outcome: a rolled-back canary is not rolled out again\nwithout `rolloutctl retry`."
    )]
    Run(RunArgs),
    /// Reconcile every ModelRollout in the cluster (or in the given namespaces), with leader election
    #[command(
        after_help = "Examples:\n  rolloutctl controller\n  rolloutctl controller --namespace team-a --namespace team-b --metrics-addr 127.0.0.1:8080\n\nServes /metrics, /healthz and /readyz on --metrics-addr. One replica leads (Lease\n<leader-election-namespace>/rolloutctl-controller); the others wait and take over when its Lease\nexpires. Exit codes: 5 cannot run or lost the leader Lease, 130/143 stopped by a signal after\nreleasing the Lease."
    )]
    Controller(ControllerArgs),
    /// Create or update ModelRollouts from policy files (checked first); the controller does the rest
    #[command(
        after_help = "Examples:\n  rolloutctl apply policies/sklearn-iris-canary.rollout\n  rolloutctl apply --dry-run policies/\n\nExit codes: 0 applied (or nothing to change), 1 a policy has errors (nothing is applied),\n2 bad arguments, 5 the cluster refused."
    )]
    Apply(ApplyArgs),
    /// Show a rollout's phase, step, traffic, revisions, last decision, conditions and history
    Status(OperatorArgs),
    /// Pass the approval gate the rollout waits at
    Approve(ApproveArgs),
    /// Pause a running rollout
    Pause(OperatorArgs),
    /// Resume a paused rollout
    Resume(OperatorArgs),
    /// Roll a rollout back now (if no runner is alive, rolloutctl performs the rollback itself)
    Abort(AbortArgs),
    /// Promote a rollout now, skipping its remaining steps
    Promote(OperatorArgs),
    /// Roll out a rolled-back, aborted or failed canary revision again, or restart a paused rollout
    Retry(OperatorArgs),
    /// The whole story on a local sandbox: a healthy canary promoted, a bad one rolled back
    Demo(DemoArgs),
    /// Export a policy as Prometheus alerting rules or a Grafana dashboard
    #[command(
        after_help = "Examples:\n  rolloutctl export prometheus-rules policies/sklearn-iris-canary.rollout --canary sklearn-iris-canary-predictor-00002 --stable sklearn-iris-canary-predictor-00001\n  rolloutctl export prometheus-rules --format rule-file ... > rules.yml && promtool check rules rules.yml\n  rolloutctl export grafana policies/sklearn-iris-canary.rollout > dashboard.json"
    )]
    Export(ExportArgs),
    /// Evaluate a policy against Prometheus history, tick by tick, as the runner would have
    #[command(
        after_help = "Examples:\n  rolloutctl replay policies/sklearn-iris-canary.rollout --from 2026-11-24T10:00:00Z --to 2026-11-24T11:00:00Z --canary sklearn-iris-canary-predictor-00002 --stable sklearn-iris-canary-predictor-00001"
    )]
    Replay(ReplayArgs),
    /// Check that a policy can drive its InferenceService here: mode, component, Prometheus, every metric's series for the stable revision (and which preset matches when they are missing), misplaced canary fields. Changes nothing
    #[command(
        after_help = "Examples:\n  rolloutctl doctor policies/sklearn-iris-canary.rollout\n  rolloutctl doctor my.rollout --manifest isvc.yaml --prometheus-url http://127.0.0.1:9090\n\nExit codes: 0 every check passed (warnings allowed), 1 a check failed, 2 the command could not run."
    )]
    Doctor(DoctorArgs),
    /// Run a local KServe stand-in (Kubernetes API, controller, data plane, Prometheus)
    #[command(
        after_help = "Examples:\n  rolloutctl sandbox\n  rolloutctl sandbox --api-port 6443 --rps 50"
    )]
    Sandbox(SandboxArgs),
    /// Print the ModelRollout CustomResourceDefinition (`rolloutctl crd | kubectl apply -f -`)
    Crd,
    /// Print shell completions
    Completions(CompletionsArgs),
}

/// `run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The policy
    pub policy: PathBuf,
    /// kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-cluster)
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context
    #[arg(long)]
    pub context: Option<String>,
    /// Prometheus URL, overriding the policy's
    #[arg(long, env = "ROLLOUTCTL_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
    /// Evaluate and log every decision; change nothing in the cluster
    #[arg(long)]
    pub dry_run: bool,
    /// `live` on a terminal, `json` (one decision record per line) otherwise
    #[arg(long, value_enum, default_value_t = RunOutput::Auto)]
    pub output: RunOutput,
    /// Wait while another runner holds this rollout's Lease, instead of exiting
    #[arg(long)]
    pub wait: bool,
    /// When the rolloutctl controller drives this rollout, follow it to its end (printing each
    /// change of phase, step, traffic and decision) instead of refusing; writes nothing
    #[arg(long)]
    pub watch: bool,
    /// This runner's identity (default: hostname and process id)
    #[arg(long)]
    pub holder: Option<String>,
    /// How long the Lease is valid without renewal, in seconds (renewed every third of it)
    #[arg(long, default_value_t = 15)]
    pub lease_duration: u64,
}

/// `controller`.
#[derive(Debug, clap::Args)]
pub struct ControllerArgs {
    /// Reconcile ModelRollouts in this namespace only (repeatable; default: all namespaces)
    #[arg(long = "namespace", short = 'n')]
    pub namespaces: Vec<String>,
    /// Where to serve /metrics, /healthz and /readyz
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: String,
    /// The namespace of the leader Lease (default: POD_NAMESPACE, else `rolloutctl-system`)
    #[arg(long, env = "POD_NAMESPACE")]
    pub leader_election_namespace: Option<String>,
    /// The leader Lease's name (one per shard of controllers)
    #[arg(long, default_value = "rolloutctl-controller")]
    pub leader_election_name: String,
    /// This replica's identity (default: POD_NAME, else hostname and process id)
    #[arg(long, env = "POD_NAME")]
    pub holder: Option<String>,
    /// How long the leader Lease is valid without renewal, in seconds
    #[arg(long, default_value_t = 15)]
    pub lease_duration: u64,
    /// Prometheus URL, overriding the policies'
    #[arg(long, env = "ROLLOUTCTL_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
    /// One shared Prometheus query answers every rollout asking it for this long, in
    /// milliseconds (at most a tenth of a rollout's interval); 0: each rollout asks its own
    #[arg(long, default_value_t = 1000)]
    pub query_tick_ms: u64,
    /// How many rollouts are reconciled at once (per `--namespace`): enough for the number of
    /// rollouts divided by their interval, times a reconcile's duration
    #[arg(long, default_value_t = 32)]
    pub concurrency: u16,
    /// kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-cluster)
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context
    #[arg(long)]
    pub context: Option<String>,
}

/// `apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// Policy files or directories of them
    #[arg(required = true)]
    pub policies: Vec<PathBuf>,
    /// Show what would change; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// kubeconfig file (default: KUBECONFIG, ~/.kube/config, or in-cluster)
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context
    #[arg(long)]
    pub context: Option<String>,
}

/// Output of `run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunOutput {
    /// `live` on a terminal, `json` otherwise
    Auto,
    /// The live view
    Live,
    /// One JSON decision record per line
    Json,
}

/// The operator verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorVerb {
    /// `status`
    Status,
    /// `approve`
    Approve,
    /// `pause`
    Pause,
    /// `resume`
    Resume,
    /// `abort`
    Abort,
    /// `promote`
    Promote,
    /// `retry`
    Retry,
}

/// Arguments of the operator verbs.
#[derive(Debug, clap::Args)]
pub struct OperatorArgs {
    /// The ModelRollout (named after its InferenceService)
    pub name: String,
    /// Namespace (default: the kubeconfig's)
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// kubeconfig file
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// kubeconfig context
    #[arg(long)]
    pub context: Option<String>,
}

/// `approve`.
#[derive(Debug, clap::Args)]
pub struct ApproveArgs {
    /// The rollout.
    #[command(flatten)]
    pub target: OperatorArgs,
    /// Approve this gate (1-based step) ahead of time instead of the one the rollout waits at
    #[arg(long)]
    pub step: Option<u32>,
}

/// `abort`.
#[derive(Debug, clap::Args)]
pub struct AbortArgs {
    /// The rollout.
    #[command(flatten)]
    pub target: OperatorArgs,
    /// With no runner alive: how long to wait for KServe to confirm the rollback, in seconds
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
}

/// `demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Keep the sandbox running after the demo until Ctrl-C
    #[arg(long)]
    pub keep: bool,
}

/// What `export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportWhat {
    /// Alerting rules (a PrometheusRule resource, or a rule file)
    PrometheusRules,
    /// A Grafana dashboard (JSON)
    Grafana,
}

/// Formats of `export prometheus-rules`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RulesFormat {
    /// A `monitoring.coreos.com/v1` PrometheusRule (Prometheus Operator)
    PrometheusRule,
    /// A plain Prometheus rule file (`groups:`), as `promtool check rules` reads
    RuleFile,
}

/// `export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// What to export
    #[arg(value_enum)]
    pub what: ExportWhat,
    /// The policy
    pub policy: PathBuf,
    /// The canary revision the alerts watch
    #[arg(long)]
    pub canary: Option<String>,
    /// The stable revision the alerts compare with
    #[arg(long)]
    pub stable: Option<String>,
    /// Format of prometheus-rules
    #[arg(long, value_enum, default_value_t = RulesFormat::PrometheusRule)]
    pub format: RulesFormat,
    /// Write to this file instead of standard output
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

/// `replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The policy
    pub policy: PathBuf,
    /// Start: RFC 3339 (2026-11-29T04:00:00Z) or unix seconds
    #[arg(long)]
    pub from: String,
    /// End: RFC 3339 or unix seconds
    #[arg(long)]
    pub to: String,
    /// The canary revision (default: the ModelRollout's `status.canaryRevision`)
    #[arg(long)]
    pub canary: Option<String>,
    /// The stable revision (default: the ModelRollout's `status.stableRevision`)
    #[arg(long)]
    pub stable: Option<String>,
    /// Prometheus URL, overriding the policy's
    #[arg(long, env = "ROLLOUTCTL_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
    /// kubeconfig to read the revisions from
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// `live` on a terminal, `json` otherwise
    #[arg(long, value_enum, default_value_t = RunOutput::Auto)]
    pub output: RunOutput,
}

/// `doctor`.
#[derive(Debug, clap::Args)]
pub struct DoctorArgs {
    /// The policy
    pub policy: PathBuf,
    /// InferenceService manifests (YAML, several documents allowed) to check for misplaced fields
    #[arg(long)]
    pub manifest: Vec<PathBuf>,
    /// Prometheus URL, overriding the policy's
    #[arg(long, env = "ROLLOUTCTL_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
    /// kubeconfig (default: KUBECONFIG, ~/.kube/config or in-cluster)
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
}

/// The stacks `sandbox --metrics` takes (the sandbox's `exporter::STACK_NAMES`; a test holds
/// them equal, and a production build has no sandbox to ask).
pub const SANDBOX_STACKS: [&str; 5] = [
    "knative-1.21",
    "knative-1.21-otlp",
    "knative-1.19",
    "knative-1.18",
    "istio",
];

#[cfg(all(test, feature = "sandbox"))]
#[test]
fn sandbox_stacks_are_the_sandbox_s() {
    assert_eq!(SANDBOX_STACKS, rollout_sandbox::exporter::STACK_NAMES);
}

/// `sandbox`.
#[derive(Debug, clap::Args)]
pub struct SandboxArgs {
    /// API server port (default: a free port)
    #[arg(long, default_value_t = 0)]
    pub api_port: u16,
    /// Exporter and predict endpoint port (default: a free port)
    #[arg(long, default_value_t = 0)]
    pub exporter_port: u16,
    /// Requests per second per InferenceService
    #[arg(long, default_value_t = 20.0)]
    pub rps: f64,
    /// Seconds a new revision takes to become ready
    #[arg(long, default_value_t = 1.0)]
    pub ready_delay: f64,
    /// Do not start Prometheus
    #[arg(long)]
    pub no_prometheus: bool,
    /// Count requests analytically (expected counts per revision each tick) instead of
    /// simulating each one: for many InferenceServices at once
    #[arg(long)]
    pub analytic: bool,
    /// Prometheus's scrape interval, in seconds
    #[arg(long, default_value_t = 1)]
    pub scrape_interval: u64,
    /// Whose request metrics to export: knative-1.21 (what KServe 0.17-0.20 install; revision
    /// in target_info), knative-1.21-otlp (pushed over OTLP, revision on every series),
    /// knative-1.19 (1.19.0-1.19.7 and 1.20.0 names), knative-1.18 (OpenCensus names), istio
    #[arg(long, default_value = "knative-1.21", value_parser = clap::builder::PossibleValuesParser::new(SANDBOX_STACKS))]
    pub metrics: String,
    /// Where to write the kubeconfig and Prometheus data (default: a temporary directory)
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// `plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The policy
    pub policy: PathBuf,
    /// Output format
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub format: PlanFormat,
}

/// Output formats of `plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    /// A table for people
    Text,
    /// JSON
    Json,
    /// A Mermaid state diagram
    Mermaid,
}

/// `simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// The policy
    pub policy: PathBuf,
    /// The scenario (YAML; see examples/scenarios/)
    #[arg(long)]
    pub scenario: PathBuf,
    /// Run a Monte Carlo batch of this many rollouts (seeds seed, seed+1, ...)
    #[arg(long)]
    pub runs: Option<usize>,
    /// Override the scenario's seed
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output format of a single run
    #[arg(long, value_enum, default_value_t = SimFormat::Text)]
    pub format: SimFormat,
}

/// Output formats of `simulate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SimFormat {
    /// A timeline for people
    Text,
    /// One JSON decision record per line, then a summary line
    Jsonl,
}

/// `test`.
#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Test files or directories (searched recursively for `*.test.yaml`)
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// `lint`.
#[derive(Debug, clap::Args)]
pub struct LintArgs {
    /// Policy files or directories (searched recursively for `*.rollout`)
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Output format
    #[arg(long, value_enum, default_value_t = LintFormat::Human)]
    pub format: LintFormat,
    /// Exit 1 when there are warnings, not only errors
    #[arg(long)]
    pub deny_warnings: bool,
}

/// Output formats of `lint`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LintFormat {
    /// Rendered diagnostics with source snippets
    Human,
    /// One JSON document
    Json,
    /// SARIF 2.1.0, for code scanning
    Sarif,
    /// GitHub Actions workflow annotations
    Github,
}

/// `fmt`.
#[derive(Debug, clap::Args)]
pub struct FmtArgs {
    /// Policy files or directories; `-` reads standard input and writes standard output
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Do not write; exit 1 if any file is not formatted
    #[arg(long)]
    pub check: bool,
}

/// `explain`.
#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// A diagnostic code such as R1003
    #[arg(required_unless_present = "list")]
    pub code: Option<String>,
    /// List every code with its title
    #[arg(long)]
    pub list: bool,
}

/// `completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}
