//! What a reconcile keeps between calls, per object: the context's copy of each rollout's
//! state (used only while the object still holds what this context wrote), its compiled
//! machine, failure counts for the backoff, how each rollout ended, Prometheus clients, the
//! Event recorder and the Lease this driver must hold to write.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::{Client, ResourceExt as _};
use rollout_api::{ModelRollout, ModelRolloutStatus};
use rollout_engine::{Decision, Machine, Outcome, State};
use rollout_policy::Policy;

use crate::Millis;
use crate::error::Error;
use crate::fanout::Fanout;
use crate::isvc::{self, Isvc};
use crate::lease::LeaseHandle;
use crate::metrics::Prom;
use crate::telemetry::Telemetry;

/// How a rollout ended, for whoever drives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// It reached (or had reached) an outcome.
    Finished(Outcome, String),
    /// It cannot go on; the message says why and what to do.
    Stopped(String),
    /// The InferenceService it rolls out is gone.
    TargetGone(String),
}

/// Receives every decision record with its rollout (`namespace/name`).
pub type Sink = Box<dyn FnMut(&str, &Decision) + Send>;

/// What the context remembers of one rollout between reconciles.
pub(crate) struct Memo {
    pub(crate) uid: String,
    /// `status.state` as last written or read: the context's copy is used only while the
    /// object still holds exactly this.
    pub(crate) persisted: Option<rollout_api::StateText>,
    pub(crate) state: State,
    pub(crate) written_at: Millis,
    /// The hash of the policy text last checked ([`Context::source_hash`]), its compiled
    /// machine and its fingerprint.
    pub(crate) checked: Option<(u64, Machine, rollout_api::PolicyFingerprint)>,
    /// Consecutive failed reconciles (for the backoff).
    pub(crate) failures: u32,
    /// The rollout was read again from the API server since: `state` is not used.
    pub(crate) superseded: bool,
    /// In a dry run: the status that would have been written.
    pub(crate) dry: Option<ModelRolloutStatus>,
}

/// Everything a reconcile needs besides the object.
pub struct Context {
    /// The Kubernetes client.
    pub client: Client,
    /// This driver's identity (Event `reportingInstance`, Lease holder).
    pub holder: String,
    /// A Prometheus URL overriding the policies'.
    pub prometheus_url: Option<String>,
    /// Evaluate and report; write nothing to the cluster.
    pub dry_run: bool,
    /// The Lease this driver must hold to write (none in a dry run).
    pub lease: Option<LeaseHandle>,
    pub(crate) sink: Mutex<Sink>,
    pub(crate) memo: Mutex<HashMap<String, Memo>>,
    proms: Mutex<HashMap<String, Prom>>,
    pub(crate) recorder: Recorder,
    ends: Mutex<HashMap<String, End>>,
    measured: Mutex<HashMap<String, Measured>>,
    conflicts: Mutex<HashMap<String, u32>>,
    /// The Lease epoch at which each rollout was last read from the API server itself.
    read_at: Mutex<HashMap<String, u64>>,
    /// Where query latencies and errors are counted (a controller's `/metrics`).
    pub(crate) telemetry: Option<Arc<Telemetry>>,
    /// Queries shared among rollouts (a controller's); none: each rollout asks its own.
    pub(crate) fanout: Option<Arc<Fanout>>,
    /// InferenceServices as a controller's watches have them; none: every read is a GET.
    targets: Option<isvc::Cache>,
    /// Rollouts whose next InferenceService read goes to the API server (first sight, after
    /// an InferenceService write or a 409 on one).
    target_fresh: Mutex<HashSet<String>>,
    /// The resourceVersion of each rollout's last status write by this driver.
    written_rv: Mutex<HashMap<String, String>>,
    /// Keys the hash of policy texts (random per process, so texts cannot be made to collide).
    hasher: std::hash::RandomState,
}

/// The measurements of the last decision of a rollout.
struct Measured {
    at: Millis,
    keys: Vec<rollout_engine::QueryKey>,
    revisions: (String, String),
    observations: rollout_engine::Observations,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("holder", &self.holder)
            .field("dry_run", &self.dry_run)
            .finish()
    }
}

impl Context {
    /// A context. `on_decision` gets every decision record with its rollout (`ns/name`).
    pub fn new(
        client: Client,
        holder: &str,
        prometheus_url: Option<String>,
        dry_run: bool,
        lease: Option<LeaseHandle>,
        on_decision: Sink,
    ) -> Context {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: "rolloutctl".into(),
                instance: Some(holder.chars().take(128).collect()),
            },
        );
        Context {
            client,
            holder: holder.to_string(),
            prometheus_url,
            dry_run,
            lease,
            sink: Mutex::new(on_decision),
            memo: Mutex::new(HashMap::new()),
            proms: Mutex::new(HashMap::new()),
            recorder,
            ends: Mutex::new(HashMap::new()),
            measured: Mutex::new(HashMap::new()),
            conflicts: Mutex::new(HashMap::new()),
            read_at: Mutex::new(HashMap::new()),
            telemetry: None,
            fanout: None,
            targets: None,
            target_fresh: Mutex::new(HashSet::new()),
            written_rv: Mutex::new(HashMap::new()),
            hasher: std::hash::RandomState::new(),
        }
    }

    /// Reads InferenceServices from `cache` where its copy may be decided on
    /// ([`Context::read_target`]).
    #[must_use]
    pub fn with_targets(mut self, cache: isvc::Cache) -> Context {
        self.targets = Some(cache);
        self
    }

    /// The InferenceService of rollout `key`, and whether it is the watch's copy. The watch's
    /// copy is used only while the rollout's own copy is trusted ([`Context::cache_trusted`])
    /// and this driver has not written the InferenceService or met a 409 on it since it last
    /// read it from the API server; otherwise, and when the watch does not have it, a GET.
    pub(crate) async fn read_target(
        &self,
        key: &str,
        target: &Isvc,
    ) -> Result<(Arc<kube::api::DynamicObject>, bool), kube::Error> {
        if let Some(cache) = &self.targets
            && self.cache_trusted(key)
            && self.target_fresh.lock().is_ok_and(|f| !f.contains(key))
            && let Some(o) = cache.get(&target.namespace, &target.name)
        {
            return Ok((o, true));
        }
        let o = target.get().await?;
        if let Ok(mut f) = self.target_fresh.lock() {
            f.remove(key);
        }
        Ok((Arc::new(o), false))
    }

    /// The hash a policy text is remembered by.
    pub(crate) fn source_hash(&self, text: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, text)
    }

    fn target_changed(&self, key: &str) {
        if self.targets.is_some()
            && let Ok(mut f) = self.target_fresh.lock()
        {
            f.insert(key.to_string());
        }
    }

    /// Shares queries among the rollouts of this context ([`Fanout`]).
    #[must_use]
    pub fn with_fanout(mut self, fanout: Arc<Fanout>) -> Context {
        self.fanout = Some(fanout);
        self
    }

    /// Counts Prometheus query latencies and errors in `telemetry`.
    #[must_use]
    pub fn with_telemetry(mut self, telemetry: Arc<Telemetry>) -> Context {
        self.telemetry = Some(telemetry);
        self
    }

    /// How the rollout `ns/name` ended, once it has.
    pub fn end(&self, key: &str) -> Option<End> {
        self.ends.lock().ok().and_then(|e| e.get(key).cloned())
    }

    /// The measurements taken for the same queries within `interval`, if any.
    pub(crate) fn reuse(
        &self,
        key: &str,
        keys: &[rollout_engine::QueryKey],
        revisions: &(String, String),
        now: Millis,
        interval: Millis,
    ) -> Option<rollout_engine::Observations> {
        let m = self.measured.lock().ok()?;
        let last = m.get(key)?;
        (!keys.is_empty()
            && last.keys == keys
            && last.revisions == *revisions
            && now.saturating_sub(last.at) < interval)
            .then(|| last.observations.clone())
    }

    /// Keeps the measurements of a decision.
    pub(crate) fn remember(
        &self,
        key: &str,
        keys: Vec<rollout_engine::QueryKey>,
        revisions: (String, String),
        at: Millis,
        observations: rollout_engine::Observations,
    ) {
        if let Ok(mut m) = self.measured.lock() {
            m.insert(
                key.to_string(),
                Measured {
                    at,
                    keys,
                    revisions,
                    observations,
                },
            );
        }
    }

    /// The delay before an InferenceService write that met a 409 is made again: doubling from
    /// 100 ms to 6.4 s, jittered, until a write of that rollout succeeds ([`Context::wrote`]).
    pub(crate) fn conflicted(&self, key: &str) -> Duration {
        self.target_changed(key);
        let n = self.conflicts.lock().map_or(1, |mut c| {
            let n = c.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        });
        let ms = 100u64 << n.min(6);
        Duration::from_millis(ms + fastrand::u64(..=ms / 4))
    }

    /// An InferenceService write of a rollout succeeded.
    pub(crate) fn wrote(&self, key: &str) {
        self.target_changed(key);
        if let Ok(mut c) = self.conflicts.lock() {
            c.remove(key);
        }
    }

    /// Whether the watch's copy of a rollout may be decided on: not before it was read from
    /// the API server once, after a 409 on it, or after this driver took its Lease back from
    /// another runner (it may have slept through that runner's work). A dry run writes
    /// nothing and drives an object it holds in memory (there may be none on the server), so
    /// its copy is always the one to decide on.
    pub(crate) fn cache_trusted(&self, key: &str) -> bool {
        if self.dry_run {
            return true;
        }
        let epoch = self.lease.as_ref().map_or(0, LeaseHandle::epoch);
        self.read_at
            .lock()
            .is_ok_and(|m| m.get(key).copied() == Some(epoch))
    }

    /// This driver wrote the rollout's status; the API server answered with `rv`.
    pub(crate) fn wrote_rollout(&self, key: &str, rv: Option<String>) {
        if let Ok(mut w) = self.written_rv.lock() {
            match rv {
                Some(rv) => w.insert(key.to_string(), rv),
                None => w.remove(key),
            };
        }
    }

    /// Whether `mr` (the watch's copy) is at least as new as this driver's last status write
    /// of it: the copy carries that write's resourceVersion, or this driver has not written it
    /// since it last read it. A watch that lags behind a write (or a change by someone else
    /// since) sends the reconcile to the API server for the object, instead of deciding on the
    /// lagging copy and losing the write to a 409.
    pub(crate) fn newest_written(&self, key: &str, mr: &ModelRollout) -> bool {
        self.written_rv.lock().is_ok_and(|w| {
            w.get(key)
                .is_none_or(|rv| mr.metadata.resource_version.as_ref() == Some(rv))
        })
    }

    /// A rollout was read from the API server: the state and measurements remembered of it
    /// before are not used again.
    pub(crate) fn read_fresh(&self, key: &str) {
        let epoch = self.lease.as_ref().map_or(0, LeaseHandle::epoch);
        if let Ok(mut m) = self.memo.lock()
            && let Some(m) = m.get_mut(key)
        {
            // The remembered state is not used again (the backoff's failure count is kept).
            m.superseded = true;
        }
        self.forget(key);
        self.target_changed(key);
        if let Ok(mut w) = self.written_rv.lock() {
            w.remove(key);
        }
        if let Ok(mut m) = self.read_at.lock() {
            m.insert(key.to_string(), epoch);
        }
    }

    /// A write met a 409: read the rollout from the API server before the next decision.
    pub(crate) fn distrust(&self, key: &str) {
        if let Ok(mut m) = self.read_at.lock() {
            m.remove(key);
        }
    }

    /// The Lease term of this driver (0 without a Lease).
    pub(crate) fn term(&self) -> Option<i64> {
        self.lease.as_ref().map(LeaseHandle::term)
    }

    /// Drops the measurements kept for a rollout's decision.
    pub(crate) fn forget(&self, key: &str) {
        if let Ok(mut m) = self.measured.lock() {
            m.remove(key);
        }
    }

    pub(crate) fn set_end(&self, key: &str, end: End) {
        if let Ok(mut e) = self.ends.lock() {
            e.insert(key.to_string(), end);
        }
    }

    pub(crate) fn prom(&self, p: &Policy) -> Result<Prom, String> {
        let url = self
            .prometheus_url
            .clone()
            .unwrap_or_else(|| p.prometheus.url.clone());
        let key = crate::metrics::identity(&url, &p.prometheus.auth);
        if let Some(c) = self.proms.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(c);
        }
        let c = Prom::for_policy(p, Some(&url))?;
        if let Ok(mut m) = self.proms.lock() {
            m.insert(key, c.clone());
        }
        Ok(c)
    }

    pub(crate) fn may_write(&self) -> Result<(), Error> {
        match &self.lease {
            Some(l) if !l.held() => Err(Error::LeaseLost {
                lease: l.lock.name.clone(),
                holder: l.lost_to(),
            }),
            _ => Ok(()),
        }
    }

    pub(crate) fn with_memo<T>(&self, key: &str, f: impl FnOnce(Option<&mut Memo>) -> T) -> T {
        match self.memo.lock() {
            Ok(mut m) => f(m.get_mut(key)),
            Err(_) => f(None),
        }
    }
}

pub(crate) fn truncate_bytes(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// The retry delay after a failed reconcile: bounded, jittered, doubling.
pub fn error_policy(mr: Arc<ModelRollout>, err: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("{}/{}", mr.namespace().unwrap_or_default(), mr.name_any());
    let failures = ctx.with_memo(&key, |m| {
        m.map_or(1, |m| {
            m.failures = m.failures.saturating_add(1);
            m.failures
        })
    });
    let base: u64 = if matches!(err, Error::Conflict(_)) {
        100
    } else {
        500
    };
    let ms = (base << failures.min(6)).min(30_000);
    let jitter = fastrand::u64(..=ms / 4);
    tracing::warn!(rollout = %key, error = %err, retry_in_ms = ms + jitter, "reconcile failed");
    Action::requeue(Duration::from_millis(ms + jitter))
}
