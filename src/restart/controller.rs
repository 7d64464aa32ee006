//! Restarts Deployments, StatefulSets and DaemonSets once for each real change of the data of
//! a managed Secret they use (see [`super::rule`] for the decisions).
//!
//! Per scope (all namespaces, or each watched namespace), one watch on managed Secrets feeds a
//! store of their annotations (never their data) and wakes the workloads that use a Secret whose
//! digest changed; one controller per workload kind reconciles. A debounce lets Secrets written
//! together end in one reconcile, hence one rollout. Namespace annotations are read with a GET
//! (cached briefly), only when a change needs them: that asks for `get` on the watched
//! namespaces only, not for a cluster-wide Namespace watch.
//!
//! A workload's first record is not simply the Secrets as they are when it is first looked at
//! (seconds after it appears, the debounce included): the watches keep the revision at which
//! each Secret got its recent digests and at which each workload got its pod template, so a
//! change that came after the template's pods were made, but before the record, rolls it once.
//! That memory is per process: a change made in that window just before the operator restarts
//! is recorded without a rollout, as before.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt::Debug,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{
    FutureExt, StreamExt, TryStreamExt,
    channel::mpsc,
    future::{BoxFuture, Shared},
};
use k8s_openapi::{
    NamespaceResourceScope,
    api::{
        apps::v1::{DaemonSet, Deployment, StatefulSet},
        core::v1::{Namespace, PodTemplateSpec},
    },
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller, Predicate, WatchStreamExt,
        controller::{self, Action},
        events::EventType,
        predicates,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde::{Serialize, de::DeserializeOwned};

use super::{
    argo::{self, Rollout as ArgoRollout},
    governor::{self, Governance, Restarted, Rollout, Verdict, WorkloadRef},
    rule::{self, DigestMap, History, Plan, UNKNOWN_FINGERPRINT},
};
use crate::{
    controller::{
        CachedSecret, Context, SecretCache, SecretEvents, SecretFeed, SecretMeta,
        drop_managed_fields, events::MAX_NOTE, log_run_error, log_watch_error, scoped_api,
    },
    vocabulary::{
        AUTO_RESTART_ANNOTATION, DIGEST_ANNOTATION, FIELD_MANAGER, RESTARTED_FOR_ANNOTATION,
        RESUME_RESTARTS_ANNOTATION, Reason, SECRET_DIGESTS_ANNOTATION,
    },
};

/// Long enough for the Secrets of one sync pass to land together, short enough not to be noticed.
const DEBOUNCE: Duration = Duration::from_secs(2);
const NAMESPACE_CACHE_TTL: Duration = Duration::from_secs(30);
/// The first retry of a failed reconcile: most failures are conflicts with another writer of
/// the workload, which pass at once.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// A kind of workload whose pods can be rolled by changing its pod template.
pub trait Workload:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    const KIND: &'static str;
    fn pod_template(&self) -> Option<&PodTemplateSpec>;
    /// Where its rollout is, from its status.
    fn rollout(&self) -> Rollout;

    /// The value of our restart mark on it, if set: the pod-template annotation that rolls it.
    fn restarted_for(&self) -> Option<String> {
        self.pod_template()?
            .metadata
            .as_ref()?
            .annotations
            .as_ref()?
            .get(RESTARTED_FOR_ANNOTATION)
            .cloned()
    }

    /// The server-side apply body that records `record` and sets the restart mark to
    /// `restarted_for` (the value it has, when `restarting` is false).
    fn apply_body(
        &self,
        resource_version: Option<&str>,
        record: &str,
        restarted_for: Option<&str>,
        restarting: bool,
    ) -> serde_json::Value {
        let _ = restarting;
        rule::apply_body(
            &Self::api_version(&()),
            &Self::kind(&()),
            &self.name_any(),
            resource_version,
            record,
            restarted_for,
        )
    }
}

impl Workload for ArgoRollout {
    const KIND: &'static str = "Rollout";
    fn pod_template(&self) -> Option<&PodTemplateSpec> {
        self.spec.template.as_ref()
    }
    fn rollout(&self) -> Rollout {
        argo::rollout_state(self)
    }
    /// On the Rollout's metadata: a changed pod template would start a new revision.
    fn restarted_for(&self) -> Option<String> {
        self.annotations().get(RESTARTED_FOR_ANNOTATION).cloned()
    }
    fn apply_body(
        &self,
        resource_version: Option<&str>,
        record: &str,
        restarted_for: Option<&str>,
        restarting: bool,
    ) -> serde_json::Value {
        let now = jiff::Timestamp::now()
            .round(jiff::Unit::Second)
            .map(|t| t.to_string())
            .unwrap_or_default();
        // Kept as it is unless restarting, once ours (set with our restart mark).
        let restart_at = match (restarting, restarted_for) {
            (true, _) => Some(now.as_str()),
            (false, Some(_)) => self.spec.restart_at.as_deref(),
            (false, None) => None,
        };
        argo::apply_body(
            &self.name_any(),
            resource_version,
            record,
            restarted_for,
            restart_at,
        )
    }
}

impl Workload for Deployment {
    const KIND: &'static str = "Deployment";
    fn pod_template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    fn rollout(&self) -> Rollout {
        governor::deployment_rollout(self)
    }
}

impl Workload for StatefulSet {
    const KIND: &'static str = "StatefulSet";
    fn pod_template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    fn rollout(&self) -> Rollout {
        governor::statefulset_rollout(self)
    }
}

impl Workload for DaemonSet {
    const KIND: &'static str = "DaemonSet";
    fn pod_template(&self) -> Option<&PodTemplateSpec> {
        self.spec.as_ref().map(|s| &s.template)
    }
    fn rollout(&self) -> Rollout {
        governor::daemonset_rollout(self)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the workload has no namespace")]
    NoNamespace,
    #[error("the cache of managed Secrets stopped before it was filled")]
    SecretCacheGone,
    #[error("reading Namespace {namespace:?} failed: {source}")]
    Namespace {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading the workload failed: {0}")]
    Read(#[source] kube::Error),
    #[error("the workload changed while it was being annotated; trying again")]
    Conflict,
    #[error("annotating the workload failed: {0}")]
    Apply(#[source] kube::Error),
}

impl Error {
    /// A bounded CamelCase reason, for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::NoNamespace => "NoNamespace",
            Error::SecretCacheGone => "SecretCacheGone",
            Error::Namespace { .. } => "NamespaceReadFailed",
            Error::Read(_) => "WorkloadReadFailed",
            Error::Conflict => "Conflict",
            Error::Apply(_) => "ApplyFailed",
        }
    }
}

type ShutdownSignal = Shared<BoxFuture<'static, ()>>;
/// Wakes the workloads of one kind that use Secret `(namespace, name)`.
type Notify = Box<dyn Fn(&str, &str) + Send + Sync>;

/// What the watches of one scope keep, beside the context every controller shares.
struct Scope {
    shared: Arc<Context>,
    /// Managed Secrets of this scope: their digests, restart settings and owners (values are
    /// never fetched).
    secrets: SecretCache,
    /// The recent digests of each managed Secret of this scope, with their revisions.
    digests: Mutex<DigestTracker>,
    /// The revision at which each workload of this scope got its current pod template.
    templates: Mutex<TemplateRevisions>,
    /// Namespace -> (read at, its `auto-restart` annotation).
    namespaces: Mutex<HashMap<String, (Instant, Option<String>)>>,
    /// One for all scopes: the restart budget is cluster-wide.
    governor: Arc<Governor>,
}

/// The restarted workloads of every scope and kind, read from the workload stores, and what
/// this process adds to them: restarts written whose watch event has not come back yet, when a
/// rollout was first seen rolling (for `RESTART_ROLLOUT_TIMEOUT`), each changed Secret's recent
/// change times, and which workloads wait and why (for events on transitions and the gauges).
struct Governor {
    settings: Governance,
    /// Held from the admission of a restart to the end of its write, so that two reconciles
    /// never both take the last place of the budget.
    admission: tokio::sync::Mutex<()>,
    views: Mutex<Vec<View>>,
    written: Mutex<HashMap<WorkloadRef, (String, Instant)>>,
    rolling_since: Mutex<HashMap<WorkloadRef, (String, Instant)>>,
    changes: Mutex<HashMap<(String, String), Vec<Instant>>>,
    waiting: Mutex<HashMap<WorkloadRef, (&'static str, String)>>,
    /// (namespace, Secret, change/reason) already told to the Secret's owner, and when.
    told: Mutex<HashMap<(String, String, String), Instant>>,
}

/// One workload store, seen as the workloads the operator restarted: (workload, restarted-for,
/// rollout, record).
type View = Box<dyn Fn() -> Vec<(WorkloadRef, String, Rollout, DigestMap)> + Send + Sync>;

/// A restart written is taken as rolling until the watch shows it, for at most this long.
const WRITTEN_GRACE: Duration = Duration::from_secs(60);

impl Governor {
    fn new(settings: Governance) -> Self {
        Governor {
            settings,
            admission: tokio::sync::Mutex::new(()),
            views: Mutex::default(),
            written: Mutex::default(),
            rolling_since: Mutex::default(),
            changes: Mutex::default(),
            waiting: Mutex::default(),
            told: Mutex::default(),
        }
    }

    fn watch<K: Workload>(&self, store: Store<K>) {
        let view: View = Box::new(move || {
            store
                .state()
                .iter()
                .filter_map(|w| {
                    let restarted_for = live_restarted_for(&**w)?;
                    let record = w
                        .annotations()
                        .get(SECRET_DIGESTS_ANNOTATION)
                        .and_then(|r| rule::decode(r))
                        .unwrap_or_default();
                    Some((workload_ref(&**w)?, restarted_for, w.rollout(), record))
                })
                .collect()
        });
        self.views.lock().expect("views lock").push(view);
    }

    fn changed(&self, secret: &(String, String), at: Instant) {
        let mut changes = self.changes.lock().expect("changes lock");
        governor::remember_change(
            &self.settings,
            changes.entry(secret.clone()).or_default(),
            at,
        );
    }

    /// The workloads the operator restarted, as they are now.
    fn restarted(&self, now: Instant) -> Vec<Restarted> {
        let seen: Vec<_> = self
            .views
            .lock()
            .expect("views lock")
            .iter()
            .flat_map(|view| view())
            .collect();
        let mut written = self.written.lock().expect("written lock");
        written.retain(|_, (_, at)| now.saturating_duration_since(*at) < WRITTEN_GRACE);
        let mut since = self.rolling_since.lock().expect("rolling lock");
        let mut restarted: Vec<Restarted> = seen
            .into_iter()
            .map(|(workload, restarted_for, mut rollout, record)| {
                match written.get(&workload) {
                    Some((value, _)) if *value != restarted_for => rollout = Rollout::Rolling,
                    Some(_) => {
                        written.remove(&workload);
                    }
                    None => {}
                }
                if rollout == Rollout::Rolling {
                    let (value, start) = since
                        .entry(workload.clone())
                        .or_insert_with(|| (restarted_for.clone(), now));
                    if *value != restarted_for {
                        *value = restarted_for;
                        *start = now;
                    }
                    if now.saturating_duration_since(*start) > self.settings.rollout_timeout {
                        rollout = Rollout::Failed("RolloutTimeout");
                    }
                } else if rollout == Rollout::Done {
                    since.remove(&workload);
                }
                Restarted {
                    workload,
                    rollout,
                    record,
                }
            })
            .collect();
        // A restart written to a workload the stores do not show yet.
        for workload in written.keys() {
            if !restarted.iter().any(|r| r.workload == *workload) {
                restarted.push(Restarted {
                    workload: workload.clone(),
                    rollout: Rollout::Rolling,
                    record: DigestMap::new(),
                });
            }
        }
        restarted
    }

    /// Decides on a restart of `workload` for `secrets` (changed, auto-restart on), whose
    /// fingerprints are in `record`.
    fn admit(
        &self,
        ctx: &Scope,
        workload: &WorkloadRef,
        secrets: &[String],
        record: &str,
    ) -> Verdict {
        let now = Instant::now();
        let fingerprints = rule::decode(record).unwrap_or_default();
        let changes = self.changes.lock().expect("changes lock");
        let resumed: Vec<Option<String>> = secrets
            .iter()
            .map(|name| {
                let secret = ctx.secrets.get(&workload.namespace, name)?;
                secret.resume_restarts().map(str::to_string)
            })
            .collect();
        let asked: Vec<governor::Change<'_>> = secrets
            .iter()
            .zip(&resumed)
            .map(|(name, resumed)| governor::Change {
                secret: name,
                fingerprint: fingerprints.get(name).map_or("", String::as_str),
                changed_at: changes
                    .get(&(workload.namespace.clone(), name.clone()))
                    .map_or(&[][..], Vec::as_slice),
                resumed: resumed.as_deref(),
            })
            .collect();
        let restarted = self.restarted(now);
        let verdict = governor::admit(&self.settings, workload, &asked, &restarted, now);
        let rolling = restarted
            .iter()
            .filter(|r| r.rollout == Rollout::Rolling)
            .count();
        ctx.shared.metrics.set_restarts("rolling", rolling);
        verdict
    }

    /// Records that `workload` waits with `verdict` (or no longer waits: `None`); true when
    /// that is new for this restart (`restarted_for`), so an event is due.
    fn wait(
        &self,
        ctx: &Scope,
        workload: &WorkloadRef,
        verdict: Option<&Verdict>,
        restarted_for: &str,
    ) -> bool {
        let mut waiting = self.waiting.lock().expect("waiting lock");
        let new = match verdict {
            None | Some(Verdict::Go) => {
                waiting.remove(workload);
                false
            }
            Some(v) => {
                let now = (v.label(), restarted_for.to_string());
                waiting.insert(workload.clone(), now.clone()) != Some(now)
            }
        };
        for state in ["debounce", "queued", "blocked", "paused"] {
            let count = waiting.values().filter(|(s, _)| *s == state).count();
            ctx.shared.metrics.set_restarts(state, count);
        }
        new
    }

    /// Notes a restart just written.
    fn restarted_now(&self, workload: WorkloadRef, restarted_for: String) {
        let mut written = self.written.lock().expect("written lock");
        written.insert(workload, (restarted_for, Instant::now()));
    }
}

fn workload_ref<K: Workload>(w: &K) -> Option<WorkloadRef> {
    Some(WorkloadRef {
        kind: K::KIND,
        namespace: w.namespace()?,
        name: w.name_any(),
    })
}

/// How long a waiting restart sleeps before it asks again. A queued one asks often: rollouts
/// that end do not wake it (status changes wake nothing), its question is answered from the
/// caches, and the first to ask after a place frees takes it.
fn retry_after(verdict: &Verdict) -> Duration {
    match verdict {
        Verdict::Go => Duration::ZERO,
        Verdict::Debounce(left) => *left + Duration::from_millis(100),
        Verdict::Paused { left, .. } => {
            (*left + Duration::from_secs(1)).min(Duration::from_secs(60))
        }
        Verdict::Blocked { .. } => Duration::from_secs(15),
        Verdict::Queued { .. } => Duration::from_secs(3),
    }
}

/// The event for a workload that starts to wait, if that is worth telling.
fn waiting_event(
    verdict: &Verdict,
    namespace: &str,
    g: &Governance,
) -> Option<(EventType, Reason, String)> {
    match verdict {
        Verdict::Go | Verdict::Debounce(_) => None,
        Verdict::Queued {
            rolling,
            in_namespace,
        } => Some((
            EventType::Normal,
            Reason::RestartQueued,
            format!(
                "Restart queued: {rolling} workload(s) restarted by the operator are still rolling {} (RESTART_BUDGET{})",
                if *in_namespace {
                    "in this namespace"
                } else {
                    "in the cluster"
                },
                if *in_namespace { "_PER_NAMESPACE" } else { "" },
            ),
        )),
        Verdict::Blocked {
            secret,
            fingerprint,
            by,
            why,
        } => Some((
            EventType::Warning,
            Reason::RolloutBlocked,
            format!(
                "Restart for Secret {secret} held: {by}, restarted for the same change, failed its rollout ({why}). \
                 Fix it, change the item, or resume: kubectl annotate secret {secret} -n {namespace} \
                 {RESUME_RESTARTS_ANNOTATION}={fingerprint} --overwrite"
            ),
        )),
        Verdict::Paused { secret, .. } => Some((
            EventType::Warning,
            Reason::RestartsPaused,
            format!(
                "Restarts for Secret {secret} paused: it changed more than {} times within {}s; \
                 its data still follows the item; one restart follows once it has been stable for {}s",
                g.breaker_changes,
                g.breaker_period.as_secs(),
                g.breaker_period.as_secs(),
            ),
        )),
    }
}

/// Runs one scope per watched namespace (or one for all), each on the shared watch of that
/// scope's managed Secrets (`secrets`), until `shutdown` resolves, then lets running reconciles
/// finish.
pub async fn run(
    ctx: Arc<Context>,
    secrets: Vec<(Option<String>, SecretFeed)>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let shutdown: ShutdownSignal = shutdown.boxed().shared();
    let governor = Arc::new(Governor::new(ctx.config.governance));
    futures::future::join_all(secrets.into_iter().map(|(scope, feed)| {
        run_scope(ctx.clone(), governor.clone(), scope, feed, shutdown.clone())
    }))
    .await;
}

async fn run_scope(
    shared: Arc<Context>,
    governor: Arc<Governor>,
    scope: Option<String>,
    feed: SecretFeed,
    shutdown: ShutdownSignal,
) {
    let SecretFeed {
        cache: secrets,
        events,
    } = feed;
    let ctx = Arc::new(Scope {
        shared,
        secrets,
        digests: Mutex::default(),
        templates: Mutex::default(),
        namespaces: Mutex::default(),
        governor,
    });
    let scope = scope.as_deref();
    let (deployments, notify_deployments) =
        workload_controller::<Deployment>(&ctx, scope, shutdown.clone());
    let (statefulsets, notify_statefulsets) =
        workload_controller::<StatefulSet>(&ctx, scope, shutdown.clone());
    let (daemonsets, notify_daemonsets) =
        workload_controller::<DaemonSet>(&ctx, scope, shutdown.clone());
    let rollouts_notify: Arc<Mutex<Option<Notify>>> = Arc::default();
    let rollouts = argo_rollouts(
        ctx.clone(),
        scope.map(str::to_string),
        shutdown.clone(),
        rollouts_notify.clone(),
    );
    let notify_rollouts: Notify = Box::new(move |namespace, secret| {
        if let Some(notify) = rollouts_notify.lock().expect("notify lock").as_ref() {
            notify(namespace, secret);
        }
    });
    let secrets = watch_secrets(
        events,
        ctx.clone(),
        vec![
            notify_deployments,
            notify_statefulsets,
            notify_daemonsets,
            notify_rollouts,
        ],
        shutdown,
    );
    futures::join!(secrets, deployments, statefulsets, daemonsets, rollouts);
}

/// How often the operator looks whether Argo Rollouts has been installed.
const ARGO_RECHECK: Duration = Duration::from_secs(60);

/// Runs the Rollout controller once the API server serves `argoproj.io/v1alpha1` rollouts
/// (looked up through discovery now, then every [`ARGO_RECHECK`]); until then, nothing.
async fn argo_rollouts(
    ctx: Arc<Scope>,
    scope: Option<String>,
    shutdown: ShutdownSignal,
    notify: Arc<Mutex<Option<Notify>>>,
) {
    let client = &ctx.shared.client;
    loop {
        match client.list_api_group_resources(argo::GROUP_VERSION).await {
            Ok(list) if list.resources.iter().any(|r| r.name == "rollouts") => break,
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => tracing::debug!(error = %e, "cannot read the discovery of argoproj.io"),
        }
        tokio::select! {
            () = shutdown.clone() => return,
            () = tokio::time::sleep(ARGO_RECHECK) => {}
        }
    }
    tracing::info!("Argo Rollouts found: Rollouts are restarted through spec.restartAt");
    let (controller, rollout_notify) =
        workload_controller::<ArgoRollout>(&ctx, scope.as_deref(), shutdown);
    *notify.lock().expect("notify lock") = Some(rollout_notify);
    controller.await;
}

fn workload_controller<K: Workload>(
    ctx: &Arc<Scope>,
    scope: Option<&str>,
    shutdown: ShutdownSignal,
) -> (BoxFuture<'static, ()>, Notify) {
    let api: Api<K> = scoped_api(&ctx.shared.client, scope);
    let (reader, writer) = reflector::store();
    let templates = ctx.clone();
    // Status updates cannot change what we decide: only spec (generation) and annotations can.
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|w: &mut K| drop_managed_fields(w))
        .inspect_ok(move |event| {
            templates
                .templates
                .lock()
                .expect("templates lock")
                .observe(K::KIND, event)
        })
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation.combine(predicates::annotations),
            Default::default(),
        );
    let (tx, rx) = mpsc::unbounded();
    let notify = notifier(reader.clone(), tx);
    ctx.governor.watch(reader.clone());
    let controller = Controller::for_stream(stream, reader)
        .reconcile_on(rx)
        .with_config(controller::Config::default().debounce(DEBOUNCE))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::<K>, error_policy::<K>, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                log_run_error(K::KIND, &e);
            }
        });
    (controller.boxed(), notify)
}

fn notifier<K: Workload>(store: Store<K>, tx: mpsc::UnboundedSender<ObjectRef<K>>) -> Notify {
    Box::new(move |namespace, secret| {
        for workload in store.state() {
            if workload.namespace().as_deref() == Some(namespace) && uses(&*workload, secret) {
                // The receiver only goes away at shutdown.
                let _ = tx.unbounded_send(ObjectRef::from_obj(&*workload));
            }
        }
    })
}

fn uses<K: Workload>(workload: &K, secret: &str) -> bool {
    workload
        .pod_template()
        .is_some_and(|t| rule::secrets_used(t, workload.annotations()).contains(secret))
}

/// Wakes the workloads of a Secret whose digest changed, or that appeared or went away (the
/// shared watch has updated the Secret store before the event comes here). The first listing
/// wakes nobody: every workload is reconciled once at start anyway. A later re-listing (after a
/// watch gap) wakes only what differs.
async fn watch_secrets(
    events: SecretEvents,
    ctx: Arc<Scope>,
    notify: Vec<Notify>,
    shutdown: ShutdownSignal,
) {
    let stream = events.take_until(shutdown);
    let wake = |(namespace, name): (String, String)| {
        tracing::debug!(%namespace, secret = %name, "managed Secret changed");
        for n in &notify {
            n(&namespace, &name);
        }
    };
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                let woken = ctx.digests.lock().expect("digests lock").observe(&event);
                let now = Instant::now();
                woken.iter().for_each(|key| ctx.governor.changed(key, now));
                woken.into_iter().for_each(wake);
            }
            Err(e) => log_watch_error("restart (managed Secrets)", &e),
        }
    }
}

/// Which Secrets' digests changed, from the watch events, and when.
#[derive(Default)]
struct DigestTracker {
    /// (namespace, name) -> its last digests.
    seen: crate::controller::ByNamespace<History>,
    listed_once: bool,
    /// During a (re)listing: what was listed, and what changed (reported at its end, once the
    /// store holds the new state).
    listing: HashSet<(String, String)>,
    pending: Vec<(String, String)>,
}

impl DigestTracker {
    /// The Secrets whose workloads should be woken after `event`.
    fn observe(&mut self, event: &watcher::Event<SecretMeta>) -> Vec<(String, String)> {
        match event {
            watcher::Event::Init => {
                // `pending` is kept: a listing cut short already moved `seen` past those changes.
                self.listing.clear();
                Vec::new()
            }
            watcher::Event::InitApply(s) => {
                let key = key(s);
                self.listing.insert(key.clone());
                if self.update(key.clone(), s) && self.listed_once {
                    self.pending.push(key);
                }
                Vec::new()
            }
            watcher::Event::InitDone => {
                let listing = std::mem::take(&mut self.listing);
                let gone: Vec<(String, String)> = self
                    .seen
                    .iter()
                    .flat_map(|(ns, names)| {
                        names.keys().map(|name| (ns.to_string(), name.to_string()))
                    })
                    .filter(|k| !listing.contains(k))
                    .collect();
                for (ns, name) in &gone {
                    self.forget(ns, name);
                }
                let mut woken = std::mem::take(&mut self.pending);
                if self.listed_once {
                    woken.extend(gone);
                }
                self.listed_once = true;
                woken
            }
            watcher::Event::Apply(s) => {
                let key = key(s);
                if self.update(key.clone(), s) && self.listed_once {
                    vec![key]
                } else {
                    Vec::new()
                }
            }
            watcher::Event::Delete(s) => {
                let key = key(s);
                let known = self.forget(&key.0, &key.1);
                if known && self.listed_once {
                    vec![key]
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// Records the Secret's digest; true when it is new or differs.
    fn update(&mut self, key: (String, String), s: &SecretMeta) -> bool {
        let digest = s
            .annotations()
            .get(DIGEST_ANNOTATION)
            .map(String::as_str)
            .unwrap_or_default();
        let (namespace, name) = key;
        let names = self.seen.entry(namespace.into()).or_default();
        match names.get_mut(name.as_str()) {
            Some(history) => history.observe(revision(s), digest),
            None => {
                names.insert(name.into(), History::new(digest));
                true
            }
        }
    }

    /// Forgets a Secret; true when it was known.
    fn forget(&mut self, namespace: &str, name: &str) -> bool {
        let Some(names) = self.seen.get_mut(namespace) else {
            return false;
        };
        let known = names.remove(name).is_some();
        if names.is_empty() {
            self.seen.remove(namespace);
        }
        known
    }

    /// The digest Secret `(namespace, name)` held at `revision`: `Some(None)` when that is
    /// older than what is kept, `None` when the Secret is not known.
    fn digest_at(&self, key: &(String, String), revision: u64) -> Option<Option<&str>> {
        let (namespace, name) = key;
        let history = self.seen.get(namespace.as_str())?.get(name.as_str())?;
        Some(history.at(revision))
    }
}

/// An object's resourceVersion as the etcd revision it is (`None` if it is not a number).
fn revision(obj: &impl Resource) -> Option<u64> {
    obj.meta().resource_version.as_deref()?.parse().ok()
}

/// The revision at which each workload got the pod template it has, from the watch events: the
/// first event with a new `generation` is the change that made it, when the watch was there to
/// see it; otherwise (at start, after a watch gap) the revision of the listing, which is later.
#[derive(Default)]
struct TemplateRevisions {
    /// (kind, uid) -> (generation, revision).
    seen: HashMap<(&'static str, String), (i64, u64)>,
    /// (kind, uid) listed by the listing under way.
    listing: HashSet<(&'static str, String)>,
}

impl TemplateRevisions {
    fn observe<K: Resource>(&mut self, kind: &'static str, event: &watcher::Event<K>) {
        let entry = |w: &K| {
            let uid = w.meta().uid.clone()?;
            Some(((kind, uid), w.meta().generation?, revision(w)?))
        };
        match event {
            watcher::Event::Init => self.listing.retain(|(k, _)| *k != kind),
            watcher::Event::InitApply(w) | watcher::Event::Apply(w) => {
                let Some((key, generation, revision)) = entry(w) else {
                    return;
                };
                if matches!(event, watcher::Event::InitApply(_)) {
                    self.listing.insert(key.clone());
                }
                let known = self.seen.get(&key).is_some_and(|(g, _)| *g == generation);
                if !known {
                    self.seen.insert(key, (generation, revision));
                }
            }
            watcher::Event::InitDone => {
                let listing = &self.listing;
                self.seen
                    .retain(|key, _| key.0 != kind || listing.contains(key));
                self.listing.retain(|(k, _)| *k != kind);
            }
            watcher::Event::Delete(w) => {
                if let Some(uid) = w.meta().uid.clone() {
                    self.seen.remove(&(kind, uid));
                }
            }
        }
    }

    /// The revision at which `workload`'s current pod template came, if known.
    fn of<K: Workload>(&self, workload: &K) -> Option<u64> {
        let uid = workload.meta().uid.clone()?;
        let generation = workload.meta().generation?;
        let (seen_generation, revision) = self.seen.get(&(K::KIND, uid))?;
        (*seen_generation == generation).then_some(*revision)
    }
}

fn key(s: &SecretMeta) -> (String, String) {
    (s.namespace().unwrap_or_default(), s.name_any())
}

/// The key of a workload in the backoff: `restart/<Kind>/<ns>/<name>`.
fn workload_key<K: Workload>(w: &K) -> String {
    format!(
        "restart/{}/{}/{}",
        K::KIND,
        w.namespace().unwrap_or_default(),
        w.name_any()
    )
}

fn error_policy<K: Workload>(obj: Arc<K>, error: &Error, ctx: Arc<Scope>) -> Action {
    if matches!(error, Error::Conflict) {
        tracing::debug!(kind = K::KIND, namespace = obj.namespace(), name = %obj.name_any(), "{error}");
    } else {
        tracing::warn!(
            kind = K::KIND,
            namespace = obj.namespace(),
            name = %obj.name_any(),
            reason = error.reason(),
            error = %error,
            "restart reconcile failed"
        );
    }
    Action::requeue(ctx.shared.backoff.next(&workload_key(&*obj), FIRST_RETRY))
}

#[tracing::instrument(skip_all, fields(kind = K::KIND, namespace = obj.namespace(), name = %obj.name_any()))]
async fn reconcile<K: Workload>(obj: Arc<K>, ctx: Arc<Scope>) -> Result<Action, Error> {
    let result = reconcile_workload(&*obj, &ctx).await;
    if result.is_ok() {
        ctx.shared.backoff.reset(&workload_key(&*obj));
    }
    result
}

async fn reconcile_workload<K: Workload>(obj: &K, ctx: &Scope) -> Result<Action, Error> {
    if obj.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = obj.namespace().ok_or(Error::NoNamespace)?;
    // Deciding on a half-filled store would take missing Secrets for removed ones.
    ctx.secrets
        .wait_until_ready()
        .await
        .map_err(|_| Error::SecretCacheGone)?;
    let me = workload_ref(obj).ok_or(Error::NoNamespace)?;
    // A restart is first weighed on the caches: a waiting workload asks again and again, and
    // costs no API request for it.
    match decide(obj, &namespace, ctx, false).await? {
        Plan::Nothing => {
            ctx.governor.wait(ctx, &me, None, "");
            return Ok(Action::await_change());
        }
        Plan::Restart {
            record,
            restarted_for,
            secrets,
        } => {
            let verdict = ctx.governor.admit(ctx, &me, &secrets, &record);
            if verdict != Verdict::Go {
                return Ok(hold(ctx, obj, &me, &verdict, &restarted_for).await);
            }
        }
        Plan::Baseline(_) => {}
    }
    // The cache can lag behind our own last write; decide again on the object as it is, and
    // make the apply conditional on it (resourceVersion).
    let name = obj.name_any();
    let api: Api<K> = Api::namespaced(ctx.shared.client.clone(), &namespace);
    let Some(fresh) = api.get_opt(&name).await.map_err(Error::Read)? else {
        return Ok(Action::await_change());
    };
    let mut admitted = None;
    let (record, restarted_for, cause) = match decide(&fresh, &namespace, ctx, true).await? {
        Plan::Nothing => return Ok(Action::await_change()),
        Plan::Baseline(record) => (record, live_restarted_for(&fresh), None),
        Plan::Restart {
            record,
            restarted_for,
            secrets,
        } => {
            // Held until the write is done: the budget is checked and spent as one step.
            let guard = ctx.governor.admission.lock().await;
            let verdict = ctx.governor.admit(ctx, &me, &secrets, &record);
            if verdict != Verdict::Go {
                return Ok(hold(ctx, &fresh, &me, &verdict, &restarted_for).await);
            }
            admitted = Some(guard);
            (record, Some(restarted_for), Some(secrets))
        }
    };
    let body = fresh.apply_body(
        fresh.meta().resource_version.as_deref(),
        &record,
        restarted_for.as_deref(),
        cause.is_some(),
    );
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|e| match e {
        kube::Error::Api(status) if status.code == 409 => Error::Conflict,
        e => Error::Apply(e),
    })?;
    ctx.governor.wait(ctx, &me, None, "");
    if admitted.is_some() {
        let value = restarted_for.clone().unwrap_or_default();
        ctx.governor.restarted_now(me, value);
    }
    drop(admitted);
    match cause {
        None => tracing::debug!(record = %record, "recorded the Secrets the workload uses"),
        Some(secrets) => {
            tracing::info!(secrets = ?secrets, "restarted: Secret data changed");
            publish_restarted(ctx, &fresh, &secrets).await;
            ctx.shared.metrics.workload_restarted(K::KIND);
        }
    }
    Ok(Action::await_change())
}

/// A restart that must wait: an event when it starts waiting for this reason, and when to ask
/// again.
async fn hold<K: Workload>(
    ctx: &Scope,
    obj: &K,
    me: &WorkloadRef,
    verdict: &Verdict,
    restarted_for: &str,
) -> Action {
    tracing::debug!(waits = verdict.label(), "restart held");
    if ctx.governor.wait(ctx, me, Some(verdict), restarted_for)
        && let Some((type_, reason, note)) =
            waiting_event(verdict, &me.namespace, &ctx.governor.settings)
    {
        if type_ == EventType::Warning {
            tracing::warn!(reason = ?reason, "{note}");
        }
        let object = obj.object_ref(&());
        ctx.shared
            .publish(&object, "Restart", type_, reason, &note)
            .await;
    }
    match verdict {
        Verdict::Blocked {
            secret,
            fingerprint,
            by,
            why,
        } => {
            let note = format!(
                "Restarts for the new data of Secret {secret} are held: {by}, restarted for it, \
                 failed its rollout ({why}); they go on when the item changes again or the failed \
                 workload recovers (or: kubectl annotate secret {secret} -n {} \
                 {RESUME_RESTARTS_ANNOTATION}={fingerprint} --overwrite)",
                me.namespace
            );
            let told = (
                secret.as_str(),
                fingerprint.as_str(),
                Reason::RolloutBlocked,
            );
            tell_the_owner(ctx, &me.namespace, told, None, &note).await;
        }
        Verdict::Paused { secret, .. } => {
            let g = &ctx.governor.settings;
            let note = format!(
                "Secret {secret} changed more than {} times within {}s: the restarts it causes \
                 are paused (its data still follows the item) until it has been stable for {}s",
                g.breaker_changes,
                g.breaker_period.as_secs(),
                g.breaker_period.as_secs(),
            );
            // Once per pause, not once per change while it flaps.
            let told = (secret.as_str(), "", Reason::RestartsPaused);
            let again_after = Some(g.breaker_period);
            tell_the_owner(ctx, &me.namespace, told, again_after, &note).await;
        }
        _ => {}
    }
    Action::requeue(retry_after(verdict))
}

/// A Warning event on the object that asked for the Secret (its OnePasswordItem, or an
/// annotated Deployment), once per (Secret, change, reason), or again after `again_after`, so
/// that the item's own events say why its change has not reached every workload.
async fn tell_the_owner(
    ctx: &Scope,
    namespace: &str,
    (secret, change, reason): (&str, &str, Reason),
    again_after: Option<Duration>,
    note: &str,
) {
    let key = (
        namespace.to_string(),
        secret.to_string(),
        format!("{change}/{}", reason.as_str()),
    );
    {
        let mut told = ctx.governor.told.lock().expect("told lock");
        if told.len() > 10_000 {
            told.clear();
        }
        let now = Instant::now();
        let due = told
            .get(&key)
            .is_none_or(|at| again_after.is_some_and(|d| now.saturating_duration_since(*at) >= d));
        if !due {
            return;
        }
        told.insert(key, now);
    }
    let Some(stored) = ctx.secrets.get(namespace, secret) else {
        return;
    };
    for owner in stored.owners().iter().filter(|o| o.controller) {
        let object = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(owner.api_version.to_string()),
            kind: Some(owner.kind.to_string()),
            name: Some(owner.name.to_string()),
            namespace: Some(namespace.to_string()),
            uid: Some(owner.uid.to_string()),
            ..Default::default()
        };
        ctx.shared
            .publish(&object, "Restart", EventType::Warning, reason, note)
            .await;
    }
}

/// The plan for `obj` from the Secret store. `warn` logs invalid auto-restart values (done on
/// the final decision only, so each is logged once per change).
async fn decide<K: Workload>(
    obj: &K,
    namespace: &str,
    ctx: &Scope,
    warn: bool,
) -> Result<Plan, Error> {
    let Some(template) = obj.pod_template() else {
        return Ok(Plan::Nothing);
    };
    let used = rule::secrets_used(template, obj.annotations());
    let secrets: BTreeMap<String, Arc<CachedSecret>> = used
        .into_iter()
        .filter_map(|name| {
            let secret = ctx.secrets.get(namespace, &name)?;
            secret.digest().is_some().then_some((name, secret))
        })
        .collect();
    let current: DigestMap = secrets
        .iter()
        .filter_map(|(name, s)| Some((name.clone(), rule::fingerprint(s.digest()?))))
        .collect();
    let recorded = obj
        .annotations()
        .get(SECRET_DIGESTS_ANNOTATION)
        .map(String::as_str);
    // An unreadable record knows nothing (the plan replaces it, without a restart).
    let known = recorded.and_then(rule::decode).unwrap_or_default();
    let started_with = started_with(obj, namespace, ctx, &known, &current);
    let secret_setting = |name: &str| secrets.get(name).and_then(|s| s.auto_restart());
    let workload = workload_setting(obj);
    let changed = rule::changed_secrets(
        &rule::seen_by_pods(&known, &current, &started_with),
        &current,
    );
    let needs_namespace =
        workload.is_none() && changed.iter().any(|name| secret_setting(name).is_none());
    let namespace_value = if needs_namespace {
        namespace_setting(ctx, namespace).await?
    } else {
        None
    };
    Ok(rule::plan(recorded, &current, &started_with, |name| {
        let decision = rule::auto_restart(
            secret_setting(name),
            workload,
            namespace_value.as_deref(),
            ctx.shared.config.auto_restart,
        );
        if warn && decision.invalid {
            tracing::warn!(
                secret = name,
                level = %decision.decided_by,
                "the {AUTO_RESTART_ANNOTATION} annotation on the {} is not a boolean \
                 (true or false); taken as false",
                decision.decided_by
            );
        }
        decision.enabled
    }))
}

/// For each Secret in `current` that the record (`known`) does not hold, the fingerprint of
/// the data the workload's pods started with, when it differs from now: the data the Secret
/// held at the revision of the current pod template (pods are made after it), or
/// [`UNKNOWN_FINGERPRINT`] when that is older than the history kept. Without the revision of
/// the template (not seen by this process's watch), the workload's own resourceVersion stands
/// for it: it is later, so at worst a change made in between counts as seen by the pods, and
/// is not rolled out (as before this existed).
fn started_with<K: Workload>(
    obj: &K,
    namespace: &str,
    ctx: &Scope,
    known: &DigestMap,
    current: &DigestMap,
) -> DigestMap {
    let template_revision = ctx
        .templates
        .lock()
        .expect("templates lock")
        .of(obj)
        .or_else(|| revision(obj));
    let Some(template_revision) = template_revision else {
        return DigestMap::new();
    };
    let digests = ctx.digests.lock().expect("digests lock");
    current
        .iter()
        .filter(|(name, _)| !known.contains_key(*name))
        .filter_map(|(name, now)| {
            let key = (namespace.to_string(), name.clone());
            let then = match digests.digest_at(&key, template_revision)? {
                Some(digest) => rule::fingerprint(digest),
                None => UNKNOWN_FINGERPRINT.to_string(),
            };
            (then != *now).then(|| (name.clone(), then))
        })
        .collect()
}

/// The workload's own `auto-restart` annotation, else its pod template's.
fn workload_setting<K: Workload>(obj: &K) -> Option<&str> {
    rule::workload_setting(obj.annotations(), obj.pod_template())
}

/// The restart mark on a workload, if set (the pod-template annotation that rolls it; the
/// metadata annotation of an Argo Rollout).
pub fn live_restarted_for<K: Workload>(obj: &K) -> Option<String> {
    obj.restarted_for()
}

/// The Namespace's `auto-restart` annotation, read with a GET and kept for a short while.
/// A Namespace we may not read (403) or that is gone counts as unset.
async fn namespace_setting(ctx: &Scope, namespace: &str) -> Result<Option<String>, Error> {
    let cached = ctx
        .namespaces
        .lock()
        .expect("namespace cache lock")
        .get(namespace)
        .filter(|(at, _)| at.elapsed() < NAMESPACE_CACHE_TTL)
        .map(|(_, value)| value.clone());
    if let Some(value) = cached {
        return Ok(value);
    }
    let api: Api<Namespace> = Api::all(ctx.shared.client.clone());
    let value = match api.get_opt(namespace).await {
        Ok(ns) => ns.and_then(|ns| rule::setting(Some(ns.annotations())).map(str::to_string)),
        Err(kube::Error::Api(status)) if status.code == 403 => {
            tracing::warn!(
                %namespace,
                "may not read the Namespace (RBAC: get namespaces); its {AUTO_RESTART_ANNOTATION} \
                 annotation is not considered"
            );
            None
        }
        Err(source) => {
            return Err(Error::Namespace {
                namespace: namespace.to_string(),
                source,
            });
        }
    };
    let mut cache = ctx.namespaces.lock().expect("namespace cache lock");
    cache.retain(|_, (at, _)| at.elapsed() < NAMESPACE_CACHE_TTL);
    cache.insert(namespace.to_string(), (Instant::now(), value.clone()));
    Ok(value)
}

async fn publish_restarted<K: Workload>(ctx: &Scope, workload: &K, secrets: &[String]) {
    let note = restart_note(secrets);
    let object = workload.object_ref(&());
    let (type_, reason) = (EventType::Normal, Reason::Restarted);
    ctx.shared
        .publish(&object, "Restart", type_, reason, &note)
        .await;
}

/// `Restarted because Secret(s) a, b changed`, cut to fit an event note.
fn restart_note(secrets: &[String]) -> String {
    let mut listed = String::new();
    for (i, name) in secrets.iter().enumerate() {
        let separator = if i == 0 { "" } else { ", " };
        let rest = secrets.len() - i;
        // Room for this name and, if more follow, for " and N more".
        if listed.len() + separator.len() + name.len() + 40 > MAX_NOTE {
            listed.push_str(&format!(" and {rest} more"));
            break;
        }
        listed.push_str(separator);
        listed.push_str(name);
    }
    format!("Restarted because Secret(s) {listed} changed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::api::PartialObjectMetaExt;

    fn secret(namespace: &str, name: &str, digest: Option<&str>) -> SecretMeta {
        ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            annotations: digest
                .map(|d| BTreeMap::from([(DIGEST_ANNOTATION.to_string(), d.to_string())])),
            ..Default::default()
        }
        .into_response_partial()
    }

    fn k(namespace: &str, name: &str) -> (String, String) {
        (namespace.into(), name.into())
    }

    #[test]
    fn the_first_listing_wakes_nobody() {
        let mut t = DigestTracker::default();
        assert!(t.observe(&watcher::Event::Init).is_empty());
        assert!(
            t.observe(&watcher::Event::InitApply(secret("a", "db", Some("1"))))
                .is_empty()
        );
        assert!(t.observe(&watcher::Event::InitDone).is_empty());
    }

    #[test]
    fn a_changed_digest_wakes_its_workloads_and_an_unchanged_one_does_not() {
        let mut t = DigestTracker::default();
        t.observe(&watcher::Event::InitApply(secret("a", "db", Some("1"))));
        t.observe(&watcher::Event::InitDone);
        assert!(
            t.observe(&watcher::Event::Apply(secret("a", "db", Some("1"))))
                .is_empty(),
            "a metadata-only update is not a change"
        );
        assert_eq!(
            t.observe(&watcher::Event::Apply(secret("a", "db", Some("2")))),
            [k("a", "db")]
        );
    }

    #[test]
    fn new_and_deleted_secrets_wake_their_workloads() {
        let mut t = DigestTracker::default();
        t.observe(&watcher::Event::InitDone);
        let s = secret("a", "api", Some("1"));
        assert_eq!(
            t.observe(&watcher::Event::Apply(s.clone())),
            [k("a", "api")]
        );
        assert_eq!(t.observe(&watcher::Event::Delete(s)), [k("a", "api")]);
    }

    #[test]
    fn a_relisting_reports_changes_and_removals_only_when_it_is_done() {
        let mut t = DigestTracker::default();
        t.observe(&watcher::Event::InitApply(secret("a", "db", Some("1"))));
        t.observe(&watcher::Event::InitApply(secret("a", "same", Some("1"))));
        t.observe(&watcher::Event::InitApply(secret("a", "gone", Some("1"))));
        t.observe(&watcher::Event::InitDone);

        t.observe(&watcher::Event::Init);
        assert!(
            t.observe(&watcher::Event::InitApply(secret("a", "db", Some("2"))))
                .is_empty()
        );
        t.observe(&watcher::Event::InitApply(secret("a", "same", Some("1"))));
        let mut woken = t.observe(&watcher::Event::InitDone);
        woken.sort();
        assert_eq!(woken, [k("a", "db"), k("a", "gone")]);
    }

    #[test]
    fn a_relisting_cut_short_still_reports_what_it_saw_change() {
        let mut t = DigestTracker::default();
        t.observe(&watcher::Event::InitApply(secret("a", "db", Some("1"))));
        t.observe(&watcher::Event::InitDone);

        t.observe(&watcher::Event::Init);
        t.observe(&watcher::Event::InitApply(secret("a", "db", Some("2"))));
        t.observe(&watcher::Event::Init);
        t.observe(&watcher::Event::InitApply(secret("a", "db", Some("2"))));
        assert_eq!(t.observe(&watcher::Event::InitDone), [k("a", "db")]);
    }

    fn at_revision(mut s: SecretMeta, revision: &str) -> SecretMeta {
        s.metadata.resource_version = Some(revision.into());
        s
    }

    #[test]
    fn the_digest_history_tells_what_a_secret_held_at_a_revision() {
        let mut t = DigestTracker::default();
        t.observe(&watcher::Event::InitApply(at_revision(
            secret("a", "db", Some("1")),
            "40",
        )));
        t.observe(&watcher::Event::InitDone);
        t.observe(&watcher::Event::Apply(at_revision(
            secret("a", "db", Some("2")),
            "60",
        )));
        // Listed first: there from the start, whatever its resourceVersion.
        assert_eq!(t.digest_at(&k("a", "db"), 10), Some(Some("1")));
        assert_eq!(t.digest_at(&k("a", "db"), 59), Some(Some("1")));
        assert_eq!(t.digest_at(&k("a", "db"), 60), Some(Some("2")));
        assert_eq!(t.digest_at(&k("a", "other"), 60), None);
        t.observe(&watcher::Event::Delete(secret("a", "db", Some("2"))));
        assert_eq!(t.digest_at(&k("a", "db"), 60), None);
    }

    fn workload_at(uid: &str, generation: i64, revision: &str) -> Deployment {
        let mut d = deployment("metadata: { name: web }");
        d.metadata.uid = Some(uid.into());
        d.metadata.generation = Some(generation);
        d.metadata.resource_version = Some(revision.into());
        d
    }

    #[test]
    fn a_pod_template_counts_from_the_first_event_of_its_generation() {
        let mut t = TemplateRevisions::default();
        let kind = "Deployment";
        t.observe(kind, &watcher::Event::Init::<Deployment>);
        t.observe(
            kind,
            &watcher::Event::InitApply(workload_at("u1", 1, "100")),
        );
        t.observe(kind, &watcher::Event::InitDone::<Deployment>);
        t.observe(kind, &watcher::Event::Apply(workload_at("u2", 1, "120")));
        // Status updates (same generation) do not move it; a new template does.
        t.observe(kind, &watcher::Event::Apply(workload_at("u2", 1, "125")));
        assert_eq!(t.of(&workload_at("u2", 1, "125")), Some(120));
        t.observe(kind, &watcher::Event::Apply(workload_at("u2", 2, "130")));
        assert_eq!(t.of(&workload_at("u2", 2, "131")), Some(130));
        assert_eq!(t.of(&workload_at("u2", 3, "140")), None, "not seen yet");
        assert_eq!(t.of(&workload_at("u1", 1, "100")), Some(100));

        // A relisting keeps what it knew, and forgets what it no longer lists.
        t.observe(kind, &watcher::Event::Init::<Deployment>);
        t.observe(
            kind,
            &watcher::Event::InitApply(workload_at("u2", 2, "150")),
        );
        t.observe(kind, &watcher::Event::InitDone::<Deployment>);
        assert_eq!(t.of(&workload_at("u2", 2, "150")), Some(130));
        assert_eq!(t.of(&workload_at("u1", 1, "100")), None);
        t.observe(kind, &watcher::Event::Delete(workload_at("u2", 2, "160")));
        assert_eq!(t.of(&workload_at("u2", 2, "150")), None);
    }

    #[test]
    fn the_event_note_names_the_changed_secrets() {
        assert_eq!(
            restart_note(&["api".into(), "db".into()]),
            "Restarted because Secret(s) api, db changed"
        );
    }

    #[test]
    fn the_event_note_stays_under_the_size_limit() {
        let many: Vec<String> = (0..100)
            .map(|i| format!("secret-{i:03}-{}", "x".repeat(40)))
            .collect();
        let note = restart_note(&many);
        assert!(note.len() <= 1024, "{}", note.len());
        assert!(note.contains(" more changed"), "{note}");
    }

    fn deployment(yaml: &str) -> Deployment {
        serde_saphyr::from_str(yaml).expect("valid Deployment fixture")
    }

    #[test]
    fn the_live_restarted_for_is_read_from_the_pod_template() {
        let d = deployment(
            r#"
metadata: { name: web }
spec:
  selector: {}
  template:
    metadata: { annotations: { operator.1password.io/restarted-for: "abc" } }
"#,
        );
        assert_eq!(live_restarted_for(&d).as_deref(), Some("abc"));
        assert_eq!(
            live_restarted_for(&deployment("metadata: { name: web }")),
            None
        );
    }

    #[test]
    fn a_workload_uses_a_secret_named_in_its_template() {
        let d = deployment(
            r#"
metadata: { name: web }
spec:
  selector: {}
  template:
    spec:
      containers: [{ name: app, envFrom: [{ secretRef: { name: db } }] }]
"#,
        );
        assert!(uses(&d, "db"));
        assert!(!uses(&d, "api"));
    }

    // --- reconcile against a mocked API server ---

    mod api_server {
        use super::*;
        use crate::{
            controller::{
                Settings,
                testing::{self, Expect, Seen, assert_no_more_requests, serve},
            },
            vocabulary::{MANAGED_LABEL, MANAGED_VALUE},
        };
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
        use serde_json::{Value, json};

        struct Harness {
            ctx: Scope,
            handle: testing::ApiHandle,
        }

        fn harness(secrets: Vec<SecretMeta>, auto_restart_default: bool) -> Harness {
            let settings = Settings {
                auto_restart: auto_restart_default,
                ..testing::settings()
            };
            harness_with(secrets, settings)
        }

        fn harness_with(secrets: Vec<SecretMeta>, settings: Settings) -> Harness {
            let (client, handle) = testing::mock_client();
            Harness {
                ctx: Scope {
                    governor: Arc::new(Governor::new(settings.governance)),
                    shared: testing::context_with(client, settings),
                    secrets: SecretCache::listed(secrets),
                    digests: Mutex::default(),
                    templates: Mutex::default(),
                    namespaces: Mutex::default(),
                },
                handle,
            }
        }

        /// The restarts counted in the metrics.
        fn restarts(ctx: &Scope) -> usize {
            let text = ctx.shared.metrics.encode();
            let prefix = "onepassword_workload_restarts_total{kind=\"Deployment\"} ";
            let counted = text.lines().find_map(|l| l.strip_prefix(prefix));
            counted.map_or(0, |n| n.parse().unwrap())
        }

        fn managed(name: &str, digest: &str, auto_restart: Option<&str>) -> SecretMeta {
            let mut s = secret("apps", name, Some(digest));
            s.metadata.labels = Some(BTreeMap::from([(
                MANAGED_LABEL.to_string(),
                MANAGED_VALUE.to_string(),
            )]));
            if let Some(value) = auto_restart {
                s.annotations_mut()
                    .insert(AUTO_RESTART_ANNOTATION.into(), value.into());
            }
            s
        }

        /// Deployment `web` in `apps` using Secrets `db` (env) and `api` (volume).
        fn web(record: Option<&str>, restarted_for: Option<&str>) -> Deployment {
            let mut annotations = serde_json::Map::new();
            if let Some(r) = record {
                annotations.insert(SECRET_DIGESTS_ANNOTATION.into(), json!(r));
            }
            let mut template_annotations = serde_json::Map::new();
            if let Some(r) = restarted_for {
                template_annotations.insert(RESTARTED_FOR_ANNOTATION.into(), json!(r));
            }
            serde_json::from_value(json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": "web", "namespace": "apps", "resourceVersion": "7",
                    "uid": "d0d0", "annotations": annotations
                },
                "spec": {
                    "selector": { "matchLabels": { "app": "web" } },
                    "template": {
                        "metadata": { "labels": { "app": "web" }, "annotations": template_annotations },
                        "spec": {
                            "containers": [{
                                "name": "app", "image": "web",
                                "envFrom": [{ "secretRef": { "name": "db" } }]
                            }],
                            "volumes": [{ "name": "api", "secret": { "secretName": "api" } }]
                        }
                    }
                }
            }))
            .unwrap()
        }

        fn record(pairs: &[(&str, &str)]) -> String {
            rule::encode(
                &pairs
                    .iter()
                    .map(|(n, d)| (n.to_string(), rule::fingerprint(d)))
                    .collect(),
            )
        }

        const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/apps/deployments/web";
        const APPLY: &str = "/apis/apps/v1/namespaces/apps/deployments/web?&force=true&fieldManager=onepassword-secrets-operator";

        fn get(uri: &str, answer: Value) -> Expect {
            Expect::new("GET", uri, 200, answer)
        }
        fn apply() -> Expect {
            Expect::apply(DEPLOYMENT)
        }
        fn event() -> Expect {
            Expect::event("apps")
        }

        async fn reconcile_with(
            h: Harness,
            obj: &Deployment,
            script: Vec<Expect>,
        ) -> (Result<Action, Error>, Vec<Seen>, usize) {
            let server = tokio::spawn(serve(h.handle, script));
            let result = reconcile_workload(obj, &h.ctx).await;
            let (handle, seen) = server.await.unwrap();
            assert_no_more_requests(handle);
            (result, seen, restarts(&h.ctx))
        }

        #[tokio::test]
        async fn changed_secret_restarts_with_one_apply_of_both_annotations_and_one_event() {
            let old = record(&[("api", "v1:s:api1"), ("db", "v1:s:db1")]);
            let obj = web(Some(&old), None);
            let h = harness(
                vec![
                    managed("db", "v1:s:db2", Some("true")),
                    managed("api", "v1:s:api1", None),
                ],
                false,
            );
            let fresh = serde_json::to_value(&obj).unwrap();
            let script = vec![get(DEPLOYMENT, fresh), apply(), event()];
            let (result, seen, restarts) = reconcile_with(h, &obj, script).await;
            result.unwrap();
            let new = record(&[("api", "v1:s:api1"), ("db", "v1:s:db2")]);
            let current = rule::decode(&new).unwrap();
            assert_eq!(
                seen[1].2,
                json!({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {
                        "name": "web", "resourceVersion": "7",
                        "annotations": { SECRET_DIGESTS_ANNOTATION: new }
                    },
                    "spec": { "template": { "metadata": { "annotations": {
                        RESTARTED_FOR_ANNOTATION: rule::restarted_for(&current)
                    } } } }
                })
            );
            assert_eq!(seen[2].2["reason"], "Restarted");
            assert_eq!(seen[2].2["type"], "Normal");
            assert_eq!(seen[2].2["note"], "Restarted because Secret(s) db changed");
            assert_eq!(seen[2].2["regarding"]["kind"], "Deployment");
            assert_eq!(restarts, 1);
        }

        /// Restarts governed: only what the test names is on.
        fn governed(governance: Governance, others: Vec<Deployment>) -> Harness {
            let settings = Settings {
                governance,
                ..testing::settings()
            };
            let mut db = managed("db", "v1:s:db2", Some("true"));
            db.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "onepassword.com/v1".into(),
                kind: "OnePasswordItem".into(),
                name: "db".into(),
                uid: "0b0b".into(),
                controller: Some(true),
                ..Default::default()
            }]);
            let h = harness_with(vec![db], settings);
            let (store, mut writer) = reflector::store();
            writer.apply_watcher_event(&watcher::Event::Init);
            for d in others {
                writer.apply_watcher_event(&watcher::Event::InitApply(d));
            }
            writer.apply_watcher_event(&watcher::Event::InitDone);
            h.ctx.governor.watch::<Deployment>(store);
            h
        }

        /// Deployment `name` in `apps`, restarted by us for db at `digest`, its rollout as
        /// `status` says.
        fn restarted_other(name: &str, digest: &str, status: Value) -> Deployment {
            let mut d = web(Some(&record(&[("db", digest)])), Some("before"));
            d.metadata.name = Some(name.into());
            d.metadata.generation = Some(2);
            d.status = Some(serde_json::from_value(status).unwrap());
            d
        }

        fn rolling() -> Value {
            json!({ "observedGeneration": 1 })
        }

        fn past_deadline() -> Value {
            json!({
                "observedGeneration": 2, "replicas": 1, "updatedReplicas": 1,
                "conditions": [{
                    "type": "Progressing", "status": "False",
                    "reason": "ProgressDeadlineExceeded"
                }]
            })
        }

        fn budget(per_namespace: usize) -> Governance {
            Governance {
                budget_per_namespace: Some(per_namespace),
                ..Governance::off()
            }
        }

        #[tokio::test]
        async fn a_spent_budget_queues_the_restart_with_one_event_and_no_request_to_the_workload() {
            let obj = web(Some(&record(&[("db", "v1:s:db1")])), None);
            let others = vec![restarted_other("api", "v1:s:db2", rolling())];
            let h = governed(budget(1), others);
            let server = tokio::spawn(serve(h.handle, vec![event()]));
            let action = reconcile_workload(&obj, &h.ctx).await.unwrap();
            let (handle, seen) = server.await.unwrap();
            assert_no_more_requests(handle);
            assert_eq!(action, Action::requeue(Duration::from_secs(3)));
            assert_eq!(seen[0].2["reason"], "RestartQueued");
            assert_eq!(seen[0].2["type"], "Normal");
            assert_eq!(restarts(&h.ctx), 0);
            // Still queued: asked again, it says nothing more.
            let again = reconcile_workload(&obj, &h.ctx).await.unwrap();
            assert_eq!(again, Action::requeue(Duration::from_secs(3)));
            let text = h.ctx.shared.metrics.encode();
            assert!(
                text.contains("onepassword_restarts{state=\"queued\"} 1"),
                "{text}"
            );
            assert!(
                text.contains("onepassword_restarts{state=\"rolling\"} 1"),
                "{text}"
            );
        }

        #[tokio::test]
        async fn a_finished_rollout_frees_its_place_in_the_budget() {
            let obj = web(Some(&record(&[("db", "v1:s:db1")])), None);
            let done = json!({
                "observedGeneration": 2, "replicas": 1, "updatedReplicas": 1,
                "availableReplicas": 1
            });
            let others = vec![restarted_other("api", "v1:s:db2", done)];
            let h = governed(budget(1), others);
            let fresh = serde_json::to_value(&obj).unwrap();
            let script = vec![get(DEPLOYMENT, fresh), apply(), event()];
            let (result, seen, restarts) = reconcile_with(h, &obj, script).await;
            result.unwrap();
            assert_eq!(seen[2].2["reason"], "Restarted");
            assert_eq!(restarts, 1);
        }

        #[tokio::test]
        async fn a_failed_rollout_for_the_same_change_blocks_with_a_warning_that_says_how_to_resume()
         {
            let obj = web(Some(&record(&[("db", "v1:s:db1")])), None);
            let others = vec![restarted_other("api", "v1:s:db2", past_deadline())];
            let h = governed(Governance::off(), others);
            let server = tokio::spawn(serve(h.handle, vec![event(), event()]));
            let action = reconcile_workload(&obj, &h.ctx).await.unwrap();
            let (handle, seen) = server.await.unwrap();
            assert_no_more_requests(handle);
            assert_eq!(action, Action::requeue(Duration::from_secs(15)));
            // The item that asked for the Secret is told too, once.
            assert_eq!(seen[1].2["reason"], "RolloutBlocked");
            assert_eq!(seen[1].2["regarding"]["kind"], "OnePasswordItem");
            assert_eq!(seen[1].2["regarding"]["name"], "db");
            let again = reconcile_workload(&obj, &h.ctx).await.unwrap();
            assert_eq!(again, Action::requeue(Duration::from_secs(15)));
            assert_eq!(seen[0].2["reason"], "RolloutBlocked");
            assert_eq!(seen[0].2["type"], "Warning");
            let note = seen[0].2["note"].as_str().unwrap();
            let fingerprint = rule::fingerprint("v1:s:db2");
            assert!(note.contains("Deployment apps/api"), "{note}");
            assert!(note.contains("ProgressDeadlineExceeded"), "{note}");
            assert!(
                note.contains(&format!(
                    "kubectl annotate secret db -n apps {RESUME_RESTARTS_ANNOTATION}={fingerprint} --overwrite"
                )),
                "{note}"
            );
        }

        #[tokio::test]
        async fn a_failed_rollout_for_an_older_change_blocks_nothing() {
            let obj = web(Some(&record(&[("db", "v1:s:db1")])), None);
            let others = vec![restarted_other("api", "v1:s:db0", past_deadline())];
            let h = governed(Governance::off(), others);
            let fresh = serde_json::to_value(&obj).unwrap();
            let script = vec![get(DEPLOYMENT, fresh), apply(), event()];
            let (result, seen, _) = reconcile_with(h, &obj, script).await;
            result.unwrap();
            assert_eq!(seen[2].2["reason"], "Restarted");
        }

        #[tokio::test]
        async fn a_fresh_change_waits_for_the_debounce_window_without_a_request() {
            let obj = web(Some(&record(&[("db", "v1:s:db1")])), None);
            let governance = Governance {
                debounce: Duration::from_secs(10),
                ..Governance::off()
            };
            let h = governed(governance, vec![]);
            h.ctx
                .governor
                .changed(&("apps".into(), "db".into()), Instant::now());
            let server = tokio::spawn(serve(h.handle, vec![]));
            let action = reconcile_workload(&obj, &h.ctx).await.unwrap();
            let (handle, seen) = server.await.unwrap();
            assert_no_more_requests(handle);
            assert!(seen.is_empty());
            assert_ne!(action, Action::await_change());
        }

        #[test]
        fn a_restart_just_written_counts_as_rolling_until_the_watch_shows_it() {
            let g = Governor::new(Governance::off());
            let (store, mut writer) = reflector::store::<Deployment>();
            writer.apply_watcher_event(&watcher::Event::Init);
            writer.apply_watcher_event(&watcher::Event::InitDone);
            g.watch(store);
            let me = WorkloadRef {
                kind: "Deployment",
                namespace: "apps".into(),
                name: "web".into(),
            };
            g.restarted_now(me.clone(), "new".into());
            let seen = g.restarted(Instant::now());
            assert_eq!(seen.len(), 1);
            assert_eq!(seen[0].workload, me);
            assert_eq!(seen[0].rollout, Rollout::Rolling);
            // After the grace, the stores alone decide.
            assert!(g.restarted(Instant::now() + WRITTEN_GRACE).is_empty());
        }

        #[test]
        fn a_rollout_rolling_past_the_timeout_counts_as_failed() {
            let g = Governor::new(Governance::off());
            let (store, mut writer) = reflector::store::<Deployment>();
            writer.apply_watcher_event(&watcher::Event::Init);
            writer.apply_watcher_event(&watcher::Event::InitApply(restarted_other(
                "api",
                "v1:s:db2",
                rolling(),
            )));
            writer.apply_watcher_event(&watcher::Event::InitDone);
            g.watch(store);
            let t0 = Instant::now();
            assert_eq!(g.restarted(t0)[0].rollout, Rollout::Rolling);
            let late = t0 + Governance::off().rollout_timeout + Duration::from_secs(1);
            assert_eq!(
                g.restarted(late)[0].rollout,
                Rollout::Failed("RolloutTimeout")
            );
        }

        #[tokio::test]
        async fn an_unchanged_workload_makes_no_request() {
            let current = record(&[("api", "v1:s:api1"), ("db", "v1:s:db1")]);
            let obj = web(Some(&current), Some("abc"));
            let h = harness(
                vec![
                    managed("db", "v1:s:db1", Some("true")),
                    managed("api", "v1:s:api1", None),
                ],
                true,
            );
            let (result, seen, restarts) = reconcile_with(h, &obj, vec![]).await;
            result.unwrap();
            assert!(seen.is_empty());
            assert_eq!(restarts, 0);
        }

        #[tokio::test]
        async fn first_sight_applies_only_the_record() {
            let obj = web(None, None);
            let h = harness(vec![managed("db", "v1:s:db1", Some("true"))], true);
            let fresh = serde_json::to_value(&obj).unwrap();
            let (result, seen, restarts) =
                reconcile_with(h, &obj, vec![get(DEPLOYMENT, fresh), apply()]).await;
            result.unwrap();
            assert_eq!(
                seen[1].2,
                json!({
                    "apiVersion": "apps/v1", "kind": "Deployment",
                    "metadata": {
                        "name": "web", "resourceVersion": "7",
                        "annotations": { SECRET_DIGESTS_ANNOTATION: record(&[("db", "v1:s:db1")]) }
                    }
                })
            );
            assert_eq!(restarts, 0);
        }

        /// The digests the Secret watch saw: `db` listed with `v1:s:db1` and changed to
        /// `v1:s:db2` at revision 9.
        fn db_changed_at_revision_9(h: &Harness) {
            let mut digests = h.ctx.digests.lock().unwrap();
            let db = |digest: &str, revision: &str| {
                let mut s = managed("db", digest, Some("true"));
                s.metadata.resource_version = Some(revision.into());
                s
            };
            digests.observe(&watcher::Event::InitApply(db("v1:s:db1", "3")));
            digests.observe(&watcher::Event::InitDone);
            digests.observe(&watcher::Event::Apply(db("v1:s:db2", "9")));
        }

        #[tokio::test]
        async fn a_change_after_the_pods_were_made_and_before_the_first_record_restarts() {
            // `web` (resourceVersion 7) was made before `db` changed (9): its pods hold db1.
            let obj = web(None, None);
            let h = harness(vec![managed("db", "v1:s:db2", Some("true"))], false);
            db_changed_at_revision_9(&h);
            let fresh = serde_json::to_value(&obj).unwrap();
            let script = vec![get(DEPLOYMENT, fresh), apply(), event()];
            let (result, seen, restarts) = reconcile_with(h, &obj, script).await;
            result.unwrap();
            let new = record(&[("db", "v1:s:db2")]);
            assert_eq!(
                seen[1].2["metadata"]["annotations"][SECRET_DIGESTS_ANNOTATION],
                new
            );
            assert_eq!(
                seen[1].2["spec"]["template"]["metadata"]["annotations"][RESTARTED_FOR_ANNOTATION],
                rule::restarted_for(&rule::decode(&new).unwrap())
            );
            assert_eq!(restarts, 1);
        }

        #[tokio::test]
        async fn a_workload_made_after_the_change_only_records_it() {
            let mut obj = web(None, None);
            obj.metadata.resource_version = Some("10".into());
            let h = harness(vec![managed("db", "v1:s:db2", Some("true"))], false);
            db_changed_at_revision_9(&h);
            let fresh = serde_json::to_value(&obj).unwrap();
            let (result, seen, restarts) =
                reconcile_with(h, &obj, vec![get(DEPLOYMENT, fresh), apply()]).await;
            result.unwrap();
            assert!(seen[1].2.get("spec").is_none(), "only the record");
            assert_eq!(restarts, 0);
        }

        #[tokio::test]
        async fn a_baseline_keeps_the_restarted_for_already_on_the_template() {
            // `api` appears: record it, and re-apply the earlier restart value so that the
            // apply does not drop a field we own (which would roll the pods).
            let obj = web(Some(&record(&[("db", "v1:s:db1")])), Some("earlier"));
            let h = harness(
                vec![
                    managed("db", "v1:s:db1", None),
                    managed("api", "v1:s:api1", None),
                ],
                true,
            );
            let fresh = serde_json::to_value(&obj).unwrap();
            let (result, seen, restarts) =
                reconcile_with(h, &obj, vec![get(DEPLOYMENT, fresh), apply()]).await;
            result.unwrap();
            assert_eq!(
                seen[1].2["spec"]["template"]["metadata"]["annotations"][RESTARTED_FOR_ANNOTATION],
                "earlier"
            );
            assert_eq!(restarts, 0);
        }

        #[tokio::test]
        async fn the_decision_is_made_again_on_the_fresh_object() {
            // The cache says db changed, but the live object already records the change (our
            // own earlier write, not yet seen by the watch): nothing is written.
            let obj = web(Some(&record(&[("db", "v1:s:db1")])), None);
            let live = web(Some(&record(&[("db", "v1:s:db2")])), Some("x"));
            let h = harness(vec![managed("db", "v1:s:db2", Some("true"))], true);
            let fresh = serde_json::to_value(&live).unwrap();
            let (result, seen, restarts) =
                reconcile_with(h, &obj, vec![get(DEPLOYMENT, fresh)]).await;
            result.unwrap();
            assert_eq!(seen.len(), 1);
            assert_eq!(restarts, 0);
        }

        #[tokio::test]
        async fn the_namespace_annotation_decides_when_secret_and_workload_do_not() {
            let obj = web(Some(&record(&[("db", "v1:s:db1")])), None);
            let h = harness(vec![managed("db", "v1:s:db2", None)], false);
            let namespace = json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": { "name": "apps", "annotations": { AUTO_RESTART_ANNOTATION: "true" } }
            });
            let fresh = serde_json::to_value(&obj).unwrap();
            let script = vec![
                get("/api/v1/namespaces/apps", namespace),
                get(DEPLOYMENT, fresh),
                apply(),
                event(),
            ];
            let (result, seen, restarts) = reconcile_with(h, &obj, script).await;
            result.unwrap();
            assert!(seen[2].2["spec"].is_object(), "a restart");
            assert_eq!(restarts, 1);
        }

        #[tokio::test]
        async fn a_secret_annotation_decides_without_reading_the_namespace() {
            let obj = web(Some(&record(&[("db", "v1:s:db1")])), None);
            let h = harness(vec![managed("db", "v1:s:db2", Some("false"))], true);
            let fresh = serde_json::to_value(&obj).unwrap();
            let (result, seen, restarts) =
                reconcile_with(h, &obj, vec![get(DEPLOYMENT, fresh), apply()]).await;
            result.unwrap();
            assert!(seen[1].2.get("spec").is_none(), "only the record");
            assert_eq!(restarts, 0);
        }

        #[tokio::test]
        async fn a_conflict_is_retried_with_the_same_restarted_for() {
            let obj = web(Some(&record(&[("db", "v1:s:db1")])), None);
            let secrets = || vec![managed("db", "v1:s:db2", Some("true"))];
            let fresh = serde_json::to_value(&obj).unwrap();
            let conflict = Expect::failing("PATCH", APPLY, 409);
            let (result, first, restarts) = reconcile_with(
                harness(secrets(), false),
                &obj,
                vec![get(DEPLOYMENT, fresh.clone()), conflict],
            )
            .await;
            assert!(matches!(result, Err(Error::Conflict)), "{result:?}");
            assert_eq!(restarts, 0);
            let (result, retry, restarts) = reconcile_with(
                harness(secrets(), false),
                &obj,
                vec![get(DEPLOYMENT, fresh), apply(), event()],
            )
            .await;
            result.unwrap();
            assert_eq!(first[1].2, retry[1].2, "a retry applies the same body");
            assert_eq!(restarts, 1);
        }

        #[tokio::test]
        async fn a_workload_deleted_meanwhile_is_left_alone() {
            let obj = web(None, None);
            let h = harness(vec![managed("db", "v1:s:db1", None)], true);
            let not_found = Expect::failing("GET", DEPLOYMENT, 404);
            let (result, _, _) = reconcile_with(h, &obj, vec![not_found]).await;
            result.unwrap();
        }
    }
}
