//! `rolloutctl controller`: every ModelRollout in scope driven by one process, with
//! kube-runtime's `Controller` (watches, a work queue, never two reconciles of one object at
//! once, a requeue at the engine's next wake-up), behind a leader Lease.
//!
//! One rollout, one driver: before it reconciles a rollout, the controller marks the rollout's
//! own Lease (`rolloutctl-<name>`, the one `rolloutctl run` takes) as delegated to its leader
//! Lease ([`lease::delegated_holder`]). Such a Lease is live exactly while the leader Lease is,
//! so a fleet costs one renewal, not one per rollout; `run` refuses it while the controller
//! lives, and the controller leaves alone a rollout whose Lease a live `run` holds. Both take
//! the Lease with resourceVersion-guarded writes, so exactly one of them wins a race.
//!
//! Each reconcile is the one of [`reconcile::reconcile_once`], on a context whose Lease is the
//! leader Lease: a replica that stops renewing stops writing before a standby can take over,
//! and the standby reads every rollout from the API server before it decides (fencing).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, DynamicObject};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, Resource as _, ResourceExt as _};
use rollout_api::ModelRollout;

use crate::context::{Context, Sink};
use crate::error::Error;
use crate::fanout::Fanout;
use crate::isvc;
use crate::lease::{self, LeaseHandle, LeaseLock, LeaseResult, MANAGED_BY};
use crate::signals::Signals;
use crate::telemetry::{InfoLabels, RolloutLabels, Telemetry};
use crate::{Millis, now_ms, reconcile};

/// The leader Lease's default name.
pub const LEADER_LEASE: &str = "rolloutctl-controller";

/// What `rolloutctl controller` was asked to do.
pub struct FleetConfig {
    /// The namespaces to reconcile (empty: all).
    pub namespaces: Vec<String>,
    /// Where the leader Lease lives.
    pub leader_namespace: String,
    /// The leader Lease's name.
    pub leader_lease: String,
    /// This replica's identity.
    pub holder: String,
    /// How long the leader Lease is valid without renewal.
    pub lease_duration: Duration,
    /// A Prometheus URL overriding the policies'.
    pub prometheus_url: Option<String>,
    /// A client of its own for the leader Lease, so that its renewals never queue behind the
    /// rollouts' requests (none: the main client).
    pub lease_client: Option<Client>,
    /// How many rollouts are reconciled at once (per namespace scope).
    pub concurrency: u16,
    /// How long one shared query answers for every rollout asking it ([`crate::fanout`]);
    /// zero: every rollout asks its own queries.
    pub query_tick: Duration,
    /// Metrics of this process.
    pub telemetry: Arc<Telemetry>,
    /// Liveness and readiness of this process.
    pub health: Arc<Health>,
    /// Receives every decision record with its rollout (`namespace/name`).
    pub on_decision: Sink,
}

impl std::fmt::Debug for FleetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetConfig")
            .field("namespaces", &self.namespaces)
            .field("leader_namespace", &self.leader_namespace)
            .field("leader_lease", &self.leader_lease)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

/// How `rolloutctl controller` ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FleetEnd {
    /// A signal (the number), after releasing the leader Lease.
    Interrupted(i32),
    /// Another replica took the leader Lease (this one could not renew in time).
    LostLeadership(String),
    /// It could not go on.
    Failed(String),
}

/// What `/healthz` and `/readyz` answer.
#[derive(Debug, Default)]
pub struct Health {
    beat: AtomicU64,
    ready: AtomicBool,
    leader: AtomicBool,
}

impl Health {
    /// The main loop is alive.
    fn beat(&self) {
        self.beat.store(now_ms(), Ordering::SeqCst);
    }

    /// Live: the main loop beat within the last 30 s.
    pub fn live(&self) -> bool {
        now_ms().saturating_sub(self.beat.load(Ordering::SeqCst)) < 30_000
    }

    /// Ready: the API server answered the leader election, and, on the leader, the caches
    /// are filled. A standby is ready (it serves its metrics and waits).
    pub fn ready(&self) -> bool {
        self.live() && self.ready.load(Ordering::SeqCst)
    }

    /// Whether this replica is the leader.
    pub fn leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }
}

/// Who may drive a rollout now.
#[derive(Debug, PartialEq, Eq)]
enum Claim {
    /// This controller already did.
    Ours,
    /// This controller just took it over: read the rollout afresh.
    Taken,
    /// Another process does.
    Elsewhere(String),
}

/// The controller's shared state, handed to every reconcile.
struct Fleet {
    ctx: Arc<Context>,
    client: Client,
    delegated: String,
    /// The rolloutctl Leases per watched namespace (`""`: all).
    leases: HashMap<String, Store<Lease>>,
    telemetry: Arc<Telemetry>,
    /// When each rollout is due again (ms), for the queue depth and the evaluation delay.
    due: Mutex<HashMap<String, Millis>>,
    /// The rollouts this controller drives.
    driving: Mutex<HashSet<String>>,
    lease_duration: Duration,
}

impl Fleet {
    fn store(&self, ns: &str) -> Option<&Store<Lease>> {
        self.leases.get(ns).or_else(|| self.leases.get(""))
    }

    /// Marks the rollout's Lease as delegated to this controller, unless another process
    /// drives it.
    async fn claim(&self, mr: &ModelRollout) -> Result<Claim, Error> {
        let ns = mr.namespace().unwrap_or_default();
        let name = lease::lease_name(&mr.name_any());
        let holder_of = |l: &Lease| {
            l.spec
                .as_ref()
                .and_then(|s| s.holder_identity.clone())
                .unwrap_or_default()
        };
        if let Some(store) = self.store(&ns)
            && let Some(l) = store.get(&ObjectRef::new(&name).within(&ns))
        {
            let h = holder_of(&l);
            if h == self.delegated {
                return Ok(Claim::Ours);
            }
            // A runner renewing its Lease (a cached copy errs on the side of "still held").
            if lease::delegation(&h).is_none()
                && let Some(who) = lease::live_holder(&l)
            {
                return Ok(Claim::Elsewhere(who));
            }
        }
        // The cache says someone else (or nobody): take it as `run` does, with this
        // controller's delegated identity (a Lease it creates goes with its ModelRollout).
        let lock = LeaseLock::named(
            self.client.clone(),
            &ns,
            &name,
            &self.delegated,
            self.lease_duration,
        )
        .owned_by(mr.owner_ref(&()));
        match lock.acquire().await {
            Ok(LeaseResult::Held(_)) => Ok(Claim::Taken),
            Ok(LeaseResult::HeldBy(who)) => Ok(Claim::Elsewhere(who)),
            Err(e) => Err(Error::kube(format!("taking Lease {ns}/{name}"), e)),
        }
    }

    fn set_driving(&self, key: &str, on: bool) {
        if let Ok(mut d) = self.driving.lock() {
            let changed = if on {
                d.insert(key.to_string())
            } else {
                d.remove(key)
            };
            if changed {
                self.telemetry
                    .rollouts
                    .set(i64::try_from(d.len()).unwrap_or(i64::MAX));
            }
        }
    }

    /// Rollouts due and not yet reconciled.
    fn queue_depth(&self) -> i64 {
        let now = now_ms();
        self.due.lock().map_or(0, |d| {
            i64::try_from(d.values().filter(|&&t| t <= now).count()).unwrap_or(i64::MAX)
        })
    }
}

fn labels_of(mr: &ModelRollout) -> RolloutLabels {
    RolloutLabels {
        namespace: mr.namespace().unwrap_or_default(),
        modelrollout: mr.name_any(),
    }
}

/// Reconciles one ModelRollout for the controller: claims it, then the one reconcile.
async fn reconcile_fleet(mr: Arc<ModelRollout>, fleet: Arc<Fleet>) -> Result<Action, Error> {
    let key = format!("{}/{}", mr.namespace().unwrap_or_default(), mr.name_any());
    let started = Instant::now();
    let now = now_ms();
    if let Some(due) = fleet.due.lock().ok().and_then(|mut d| d.remove(&key))
        && now >= due
    {
        fleet.telemetry.delay((now - due) as f64 / 1000.0);
    }
    if mr.metadata.deletion_timestamp.is_some() {
        fleet.set_driving(&key, false);
        fleet.telemetry.forget(&labels_of(&mr));
        return Ok(Action::await_change());
    }
    match fleet.claim(&mr).await? {
        Claim::Ours => {}
        Claim::Taken => {
            tracing::info!(rollout = %key, "driving this rollout");
            fleet.ctx.distrust(&key);
        }
        Claim::Elsewhere(who) => {
            tracing::debug!(rollout = %key, %who, "driven by another process; left alone");
            fleet.set_driving(&key, false);
            fleet.telemetry.forget(&labels_of(&mr));
            // The Lease watch brings it back when that driver lets go.
            return Ok(Action::requeue(fleet.lease_duration));
        }
    }
    fleet.set_driving(&key, true);
    let result = reconcile::reconcile_once(&mr, &fleet.ctx).await;
    fleet
        .telemetry
        .reconciled(started.elapsed().as_secs_f64(), result.is_err());
    let status = mr.status.clone().unwrap_or_default();
    fleet.telemetry.info(InfoLabels {
        namespace: mr.namespace().unwrap_or_default(),
        modelrollout: mr.name_any(),
        inferenceservice: mr.name_any(),
        canary_revision: status.canary_revision.clone().unwrap_or_default(),
        stable_revision: status.stable_revision.clone().unwrap_or_default(),
        phase: fleet
            .telemetry
            .phase(&labels_of(&mr))
            .or(status.phase.clone())
            .unwrap_or_else(|| "pending".into()),
    });
    let next = result?;
    if let Some(d) = next
        && let Ok(mut due) = fleet.due.lock()
    {
        due.insert(
            key,
            now_ms().saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        );
    }
    Ok(next.map_or_else(Action::await_change, Action::requeue))
}

fn error_fleet(mr: Arc<ModelRollout>, err: &Error, fleet: Arc<Fleet>) -> Action {
    reconcile::error_policy(mr, err, fleet.ctx.clone())
}

/// Takes the leader Lease (a standby waits here), then reconciles every ModelRollout in scope
/// until a signal or until the Lease is lost.
pub async fn run(client: Client, cfg: FleetConfig) -> FleetEnd {
    let mut signals = Signals::new();
    let FleetConfig {
        namespaces,
        leader_namespace,
        leader_lease,
        holder,
        lease_duration,
        prometheus_url,
        query_tick,
        lease_client,
        concurrency,
        telemetry,
        health,
        on_decision,
    } = cfg;
    health.beat();
    let lock = LeaseLock::named(
        lease_client.unwrap_or_else(|| client.clone()),
        &leader_namespace,
        &leader_lease,
        &holder,
        lease_duration,
    );
    // A standby polls often, so it takes over soon after the leader's Lease expires.
    let poll = Duration::from_millis(500);
    let mut standby_of = None;
    let term = loop {
        let attempt = tokio::select! {
            r = lock.acquire() => r,
            s = signals.recv() => return FleetEnd::Interrupted(s),
        };
        health.beat();
        match attempt {
            Ok(LeaseResult::Held(term)) => break term,
            Ok(LeaseResult::HeldBy(h)) => {
                health.ready.store(true, Ordering::SeqCst);
                if standby_of.as_ref() != Some(&h) {
                    tracing::info!(leader = %h, lease = %format!("{leader_namespace}/{leader_lease}"), "standby: another replica leads");
                    standby_of = Some(h);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot take the leader Lease; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            s = signals.recv() => return FleetEnd::Interrupted(s),
        }
    };
    // The leader renews often (a fifth of the duration), so that a renewal lost to a slow
    // API server leaves time for the next before a standby may take over.
    let handle = lock.keep_every(term, lease_duration / 5);
    health.leader.store(true, Ordering::SeqCst);
    telemetry.leader.set(1);
    tracing::info!(term, lease = %format!("{leader_namespace}/{leader_lease}"), "leading");
    let end = tokio::select! {
        end = lead(client, namespaces, &leader_namespace, &leader_lease, &holder, &handle, (prometheus_url, query_tick, concurrency), telemetry.clone(), health.clone(), on_decision) => end,
        s = signals.recv() => FleetEnd::Interrupted(s),
    };
    telemetry.leader.set(0);
    health.leader.store(false, Ordering::SeqCst);
    if matches!(end, FleetEnd::Interrupted(_)) {
        handle.release().await;
    }
    end
}

#[allow(clippy::too_many_arguments)]
async fn lead(
    client: Client,
    namespaces: Vec<String>,
    leader_namespace: &str,
    leader_lease: &str,
    holder: &str,
    handle: &LeaseHandle,
    (prometheus_url, query_tick, concurrency): (Option<String>, Duration, u16),
    telemetry: Arc<Telemetry>,
    health: Arc<Health>,
    mut on_decision: Sink,
) -> FleetEnd {
    let scopes: Vec<String> = if namespaces.is_empty() {
        vec![String::new()]
    } else {
        namespaces
    };
    let t = telemetry.clone();
    let sink: Sink = Box::new(move |key, d| {
        if let Some((ns, name)) = key.split_once('/') {
            t.decision(
                &RolloutLabels {
                    namespace: ns.into(),
                    modelrollout: name.into(),
                },
                d,
            );
        }
        on_decision(key, d);
    });
    let mut ctx = Context::new(
        client.clone(),
        holder,
        prometheus_url,
        false,
        Some(handle.clone()),
        sink,
    )
    .with_telemetry(telemetry.clone());
    if !query_tick.is_zero() {
        ctx = ctx.with_fanout(Arc::new(Fanout::new(query_tick)));
    }
    let managed = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    // The rolloutctl Leases, cached: a claim that is already ours costs no API call.
    let mut leases = HashMap::new();
    let mut caches = Vec::new();
    for ns in &scopes {
        let api: Api<Lease> = scoped(&client, ns);
        let (reader, writer) = reflector::store();
        let stream = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default().labels(&managed)).modify(strip),
        )
        .default_backoff()
        .touched_objects();
        caches.push(tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            while stream.next().await.is_some() {}
        }));
        leases.insert(ns.clone(), reader);
    }
    for store in leases.values() {
        let ready = tokio::time::timeout(Duration::from_secs(30), store.wait_until_ready());
        if ready.await.is_err() {
            caches.iter().for_each(tokio::task::JoinHandle::abort);
            return FleetEnd::Failed("the Lease cache did not fill within 30 s".into());
        }
    }
    // The InferenceServices, cached: an evaluation reads its target from the watch
    // (`isvc::Cache`), and a change to one brings its rollout back.
    let mut targets = isvc::Cache::default();
    let mut target_streams = Vec::new();
    for ns in &scopes {
        let api: Api<DynamicObject> = match ns.as_str() {
            "" => Api::all_with(client.clone(), &isvc::resource()),
            ns => Api::namespaced_with(client.clone(), ns, &isvc::resource()),
        };
        let writer = reflector::store::Writer::new(isvc::resource());
        targets.insert(ns, writer.as_reader());
        target_streams.push(
            reflector::reflector(
                writer,
                watcher(api, watcher::Config::default()).modify(isvc::slim),
            )
            .applied_objects(),
        );
    }
    let ctx = Arc::new(ctx.with_targets(targets));
    let fleet = Arc::new(Fleet {
        ctx,
        client: client.clone(),
        delegated: lease::delegated_holder(leader_namespace, leader_lease),
        leases,
        telemetry: telemetry.clone(),
        due: Mutex::new(HashMap::new()),
        driving: Mutex::new(HashSet::new()),
        lease_duration: handle.lock.duration,
    });
    let controllers = scopes.iter().zip(target_streams).map(|(ns, isvcs)| {
        let mrs: Api<ModelRollout> = scoped(&client, ns);
        let (reader, writer) = reflector::store();
        // Only a change of the spec (an operator verb, a policy edit) or a deletion brings a
        // rollout back early: its status is this controller's own writing, and reacting to
        // it would reconcile every rollout once more per status write.
        let mrs = reflector::reflector(
            writer,
            watcher(mrs, watcher::Config::default()).modify(strip),
        )
        .applied_objects()
        .predicate_filter(
            |mr: &ModelRollout| {
                Some(std::hash::BuildHasher::hash_one(
                    &std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default(),
                    (
                        mr.metadata.generation,
                        mr.metadata.deletion_timestamp.is_some(),
                    ),
                ))
            },
            kube::runtime::PredicateConfig::default(),
        );
        let lease_api: Api<Lease> = scoped(&client, ns);
        let leader = (leader_namespace.to_string(), leader_lease.to_string());
        // As `Controller::new`, with the cached objects slimmed (`strip`).
        Controller::for_stream(mrs, reader)
            // Bounded: a burst (a restart with thousands of rollouts due) queues here instead of
            // flooding the API server and Prometheus.
            .with_config(
                kube::runtime::controller::Config::default().concurrency(concurrency.max(1)),
            )
            // A ModelRollout is named after its InferenceService.
            .watches_stream_with(
                isvcs,
                |o| Some(ObjectRef::<ModelRollout>::new(&o.name_any()).within(&o.namespace()?)),
                isvc::resource(),
            )
            // A runner letting go of a rollout's Lease brings the rollout back.
            .watches(
                lease_api,
                watcher::Config::default().labels(&managed),
                move |l| {
                    let ns = l.namespace()?;
                    // The leader Lease's renewals are not a rollout's.
                    if (ns.as_str(), l.name_any().as_str())
                        == (leader.0.as_str(), leader.1.as_str())
                    {
                        return None;
                    }
                    let name = lease::rollout_of(&l.name_any())?.to_string();
                    Some(ObjectRef::<ModelRollout>::new(&name).within(&ns))
                },
            )
            .run(reconcile_fleet, error_fleet, fleet.clone())
            .boxed()
    });
    let mut merged = futures_util::stream::select_all(controllers);
    health.ready.store(true, Ordering::SeqCst);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let end = loop {
        tokio::select! {
            item = merged.next() => match item {
                None => break FleetEnd::Failed("the controller stopped".into()),
                Some(Err(controller::Error::ObjectNotFound(r))) => {
                    tracing::debug!(rollout = %r, "deleted");
                }
                Some(Err(e)) => tracing::debug!(error = %e, "reconcile"),
                Some(Ok(_)) => {}
            },
            _ = tick.tick() => {
                health.beat();
                fleet.telemetry.queue_depth.set(fleet.queue_depth());
                if !handle.held() {
                    break FleetEnd::LostLeadership(handle.lost_to().unwrap_or_else(|| "nobody (renewals failed)".into()));
                }
            }
        }
    };
    caches.iter().for_each(tokio::task::JoinHandle::abort);
    end
}

/// What the caches keep of an object: all but `managedFields`, which no reconcile reads from
/// a cached copy (the out-of-band traffic check reads it from the API server) and which is
/// often the largest part of an object. A status written back from a stripped copy leaves the
/// server's managedFields as they are: an update without the field keeps them
/// (<https://kubernetes.io/docs/reference/using-api/server-side-apply/#clearing-managedfields>).
/// kube-rs recommends this for memory (`WatchStreamExt::modify`).
fn strip<K: kube::Resource>(o: &mut K) {
    o.meta_mut().managed_fields = None;
}

fn scoped<K>(client: &Client, ns: &str) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match ns {
        "" => Api::all(client.clone()),
        ns => Api::namespaced(client.clone(), ns),
    }
}
