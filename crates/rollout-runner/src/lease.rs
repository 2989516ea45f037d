//! One driver per ModelRollout: a `coordination.k8s.io/v1` Lease named `rolloutctl-<name>` in
//! its namespace, taken with optimistic concurrency and renewed by its own task at a third of
//! its duration, whatever the policy's evaluation interval. The reconcile asks
//! [`LeaseHandle::held`] before every write; a runner that could not renew in time stops
//! writing before another can take the Lease.
//!
//! A controller drives many rollouts without renewing a Lease for each: it marks a rollout's
//! Lease as delegated to its own leader Lease ([`delegated_holder`]), and [`driver`] judges
//! such a Lease live exactly while that leader Lease is.
//!
//! Fencing: the Lease's `leaseTransitions` is this runner's term. A runner that finds, on a
//! renewal, that another runner held the Lease meanwhile (a new term) bumps its epoch; the
//! reconcile then forgets what it remembered and reads the ModelRollout again before it decides,
//! and every status write carries the term, so a write from an older term is refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use kube::Client;
use kube::api::{Api, PostParams};

use crate::isvc::conflict;

/// The Lease's name for a ModelRollout.
pub fn lease_name(rollout: &str) -> String {
    format!("rolloutctl-{rollout}")
}

/// The ModelRollout a per-rollout Lease name belongs to.
pub fn rollout_of(lease: &str) -> Option<&str> {
    lease.strip_prefix("rolloutctl-")
}

/// The label every Lease rolloutctl creates carries, so a controller can watch just those.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "rolloutctl");

/// The holder identity of a per-rollout Lease that a controller drives: it is live exactly
/// while the controller's leader Lease `namespace/name` is (a fleet of rollouts costs no
/// per-rollout renewals).
pub fn delegated_holder(namespace: &str, name: &str) -> String {
    format!("controller:{namespace}/{name}")
}

/// The leader Lease a delegated holder identity names.
pub fn delegation(holder: &str) -> Option<(&str, &str)> {
    holder.strip_prefix("controller:")?.split_once('/')
}

/// Who drives a rollout by its Lease now (`None`: nobody): the Lease's live holder, or, for
/// a Lease delegated to a controller, that controller's leader while its Lease is live.
pub async fn driver(client: &Client, lease: &Lease) -> Result<Option<String>, kube::Error> {
    let holder = lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .unwrap_or_default();
    match delegation(holder) {
        Some((ns, name)) => {
            let leaders: Api<Lease> = Api::namespaced(client.clone(), ns);
            Ok(leaders
                .get_opt(name)
                .await?
                .as_ref()
                .and_then(live_holder)
                .map(|h| format!("the rolloutctl controller {h} (leader Lease {ns}/{name})")))
        }
        None => Ok(live_holder(lease)),
    }
}

/// A Lease held by one runner.
#[derive(Clone)]
pub struct LeaseLock {
    client: Client,
    api: Api<Lease>,
    /// The Lease's name.
    pub name: String,
    /// Who this runner is.
    pub holder: String,
    /// How long it is valid without renewal.
    pub duration: Duration,
    /// The owner a Lease this lock creates gets (garbage-collected with it).
    owner: Option<OwnerReference>,
}

impl std::fmt::Debug for LeaseLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseLock")
            .field("name", &self.name)
            .field("holder", &self.holder)
            .field("duration", &self.duration)
            .finish_non_exhaustive()
    }
}

/// The outcome of trying to take the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseResult {
    /// Taken (or renewed), in this term (`leaseTransitions`).
    Held(i64),
    /// Someone else holds it.
    HeldBy(String),
}

fn micro_now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// Who holds a Lease now (`None`: nobody, or it expired).
pub fn live_holder(lease: &Lease) -> Option<String> {
    let spec = lease.spec.as_ref()?;
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty())?;
    let renewed = spec.renew_time.as_ref()?;
    let age = k8s_openapi::jiff::Timestamp::now().duration_since(renewed.0);
    let limit = i128::from(spec.lease_duration_seconds.unwrap_or(15)) * 1000;
    (age.as_millis() <= limit).then_some(holder)
}

impl LeaseLock {
    /// The lock of the ModelRollout `rollout` in `namespace`.
    pub fn new(
        client: Client,
        namespace: &str,
        rollout: &str,
        holder: &str,
        duration: Duration,
    ) -> LeaseLock {
        LeaseLock::named(client, namespace, &lease_name(rollout), holder, duration)
    }

    /// The lock of the Lease `name` in `namespace` (a controller's leader election).
    pub fn named(
        client: Client,
        namespace: &str,
        name: &str,
        holder: &str,
        duration: Duration,
    ) -> LeaseLock {
        LeaseLock {
            api: Api::namespaced(client.clone(), namespace),
            client,
            name: name.to_string(),
            holder: holder.to_string(),
            duration,
            owner: None,
        }
    }

    /// A Lease this lock creates is owned by `owner` (deleted with it).
    #[must_use]
    pub fn owned_by(mut self, owner: Option<OwnerReference>) -> LeaseLock {
        self.owner = owner;
        self
    }

    /// Who drives the rollout by this Lease now, if anyone (see [`driver`]).
    pub async fn holder(&self) -> Result<Option<String>, kube::Error> {
        match self.api.get_opt(&self.name).await? {
            Some(l) => driver(&self.client, &l).await,
            None => Ok(None),
        }
    }

    /// Takes or renews the Lease: create (409 AlreadyExists: it exists), else replace with the
    /// read resourceVersion when it is ours or expired (409 Conflict: lost the race).
    pub async fn acquire(&self) -> Result<LeaseResult, kube::Error> {
        let spec = LeaseSpec {
            holder_identity: Some(self.holder.clone()),
            lease_duration_seconds: Some(i32::try_from(self.duration.as_secs()).unwrap_or(15)),
            acquire_time: Some(micro_now()),
            renew_time: Some(micro_now()),
            ..Default::default()
        };
        let lease = Lease {
            metadata: kube::api::ObjectMeta {
                name: Some(self.name.clone()),
                labels: Some([(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string())].into()),
                owner_references: self.owner.clone().map(|o| vec![o]),
                ..Default::default()
            },
            spec: Some(spec.clone()),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(_) => return Ok(LeaseResult::Held(0)),
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(e),
        }
        let current = self.api.get(&self.name).await?;
        let cur_spec = current.spec.clone().unwrap_or_default();
        let holder = cur_spec.holder_identity.clone().unwrap_or_default();
        if holder != self.holder
            && let Some(other) = driver(&self.client, &current).await?
        {
            return Ok(LeaseResult::HeldBy(other));
        }
        let mut next = current.clone();
        next.metadata
            .labels
            .get_or_insert_default()
            .insert(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string());
        let transitions =
            cur_spec.lease_transitions.unwrap_or(0) + i32::from(holder != self.holder);
        next.spec = Some(LeaseSpec {
            lease_transitions: Some(transitions),
            acquire_time: if holder == self.holder {
                cur_spec.acquire_time
            } else {
                Some(micro_now())
            },
            ..spec
        });
        match self
            .api
            .replace(&self.name, &PostParams::default(), &next)
            .await
        {
            Ok(_) => Ok(LeaseResult::Held(i64::from(transitions))),
            Err(e) if conflict(&e) => {
                Ok(LeaseResult::HeldBy("another runner (lost the race)".into()))
            }
            Err(e) => Err(e),
        }
    }

    /// Releases the Lease if this runner holds it (best effort).
    pub async fn release(&self) {
        if let Ok(current) = self.api.get(&self.name).await
            && current
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.holder.as_str())
        {
            let mut next = current.clone();
            if let Some(s) = next.spec.as_mut() {
                s.holder_identity = None;
                s.renew_time = None;
            }
            let _ = self
                .api
                .replace(&self.name, &PostParams::default(), &next)
                .await;
        }
    }

    /// Keeps the (taken) Lease renewed by a task of its own, every third of its duration.
    /// `term` is the one [`LeaseLock::acquire`] returned.
    pub fn keep(self, term: i64) -> LeaseHandle {
        let every = self.duration / 3;
        self.keep_every(term, every)
    }

    /// Keeps the (taken) Lease renewed every `every` (a controller's leader renews more
    /// often than a runner, so one slow renewal does not cost it the Lease).
    pub fn keep_every(self, term: i64, every: Duration) -> LeaseHandle {
        let valid_until = Arc::new(AtomicU64::new(crate::now_ms() + margin(self.duration)));
        let lost_to = Arc::new(std::sync::Mutex::new(None));
        let term_now = Arc::new(AtomicI64::new(term));
        let epoch = Arc::new(AtomicU64::new(0));
        let (v, l, t, ep, lock) = (
            valid_until.clone(),
            lost_to.clone(),
            term_now.clone(),
            epoch.clone(),
            self.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let asked = crate::now_ms();
                match lock.acquire().await {
                    Ok(LeaseResult::Held(term)) => {
                        if t.swap(term, Ordering::SeqCst) != term {
                            // Another runner held the Lease in between (this one slept or
                            // was cut off): what it remembers may be stale.
                            ep.fetch_add(1, Ordering::SeqCst);
                            tracing::warn!(lease = %lock.name, term, "took the Lease back after another runner held it; the rollout is read again before any decision");
                        }
                        v.store(asked + margin(lock.duration), Ordering::SeqCst)
                    }
                    Ok(LeaseResult::HeldBy(h)) => {
                        v.store(0, Ordering::SeqCst);
                        if let Ok(mut g) = l.lock() {
                            *g = Some(h.clone());
                        }
                        tracing::warn!(holder = %h, lease = %lock.name, "lost the Lease");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, lease = %lock.name, "could not renew the Lease; retrying")
                    }
                }
            }
        });
        LeaseHandle {
            lock: self,
            valid_until,
            lost_to,
            term: term_now,
            epoch,
            task: Arc::new(task),
        }
    }
}

/// How long after a successful renewal this runner may still write: the Lease's duration less
/// a safety margin, so it stops before another runner may take it.
fn margin(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(15_000) * 2 / 3
}

/// A Lease kept renewed.
#[derive(Clone, Debug)]
pub struct LeaseHandle {
    /// The lock.
    pub lock: LeaseLock,
    valid_until: Arc<AtomicU64>,
    lost_to: Arc<std::sync::Mutex<Option<String>>>,
    term: Arc<AtomicI64>,
    epoch: Arc<AtomicU64>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl LeaseHandle {
    /// Whether this runner may write now.
    pub fn held(&self) -> bool {
        crate::now_ms() < self.valid_until.load(Ordering::SeqCst)
    }

    /// The Lease term this runner holds (`leaseTransitions` when it last took or renewed it).
    pub fn term(&self) -> i64 {
        self.term.load(Ordering::SeqCst)
    }

    /// How many times this runner took the Lease back after another held it.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// Who took the Lease, if it was lost to another runner.
    pub fn lost_to(&self) -> Option<String> {
        self.lost_to.lock().ok().and_then(|g| g.clone())
    }

    /// Stops renewing and releases the Lease.
    pub async fn release(&self) {
        self.task.abort();
        self.valid_until.store(0, Ordering::SeqCst);
        self.lock.release().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delegated_holder_names_its_leader_lease_and_nothing_else_is_delegated() {
        let h = delegated_holder("rolloutctl-system", "rolloutctl-controller");
        assert_eq!(
            delegation(&h),
            Some(("rolloutctl-system", "rolloutctl-controller"))
        );
        assert_eq!(delegation("host-123"), None);
        assert_eq!(delegation("controller:no-slash"), None);
        assert_eq!(
            rollout_of(&lease_name("sklearn-iris")),
            Some("sklearn-iris")
        );
        assert_eq!(rollout_of("kube-scheduler"), None);
    }

    #[test]
    fn a_lease_is_live_until_its_duration_has_passed_to_the_millisecond() {
        let lease = |age_ms: i64| Lease {
            metadata: Default::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some("a".into()),
                lease_duration_seconds: Some(4),
                renew_time: Some(MicroTime(
                    k8s_openapi::jiff::Timestamp::now()
                        - k8s_openapi::jiff::SignedDuration::from_millis(age_ms),
                )),
                ..Default::default()
            }),
        };
        assert_eq!(live_holder(&lease(3_000)), Some("a".into()));
        // 4.6 s old: whole seconds would still call it live.
        assert_eq!(live_holder(&lease(4_600)), None);
    }
}
