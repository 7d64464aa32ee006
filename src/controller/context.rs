//! The one context every reconcile shares: the Kubernetes client, the catalog of Connect
//! listings, the event sink, the metrics, the settings, the backoff, and what the poller and the
//! watches need to know of each object.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Client,
    runtime::{controller::Action, events::EventType},
};

use super::{
    crd_probe, events,
    poller::{self, TargetKey, TargetKind, Tracked},
    sync::{self, Change, Retry, SyncError, SyncTarget, Synced},
    watch::OwnWrites,
    write_rate,
};
use crate::{
    catalog::{Catalog, Resolution},
    connect::ItemPath,
    telemetry::{Metrics, ReconcileTimer},
    vocabulary::{FIELD_MANAGER, Reason},
};

/// Which namespaces the operator watches (`WATCH_NAMESPACE`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Namespaces {
    All,
    Only(Vec<String>),
}

impl Namespaces {
    /// `WATCH_NAMESPACE`: comma separated; unset or empty means all namespaces.
    pub fn parse(value: Option<&str>) -> Self {
        let list: Vec<String> = value
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if list.is_empty() {
            Namespaces::All
        } else {
            let mut list = list;
            list.sort();
            list.dedup();
            Namespaces::Only(list)
        }
    }

    /// `None` stands for all namespaces.
    pub fn scopes(&self) -> Vec<Option<String>> {
        match self {
            Namespaces::All => vec![None],
            Namespaces::Only(list) => list.iter().cloned().map(Some).collect(),
        }
    }

    pub fn contains(&self, namespace: &str) -> bool {
        match self {
            Namespaces::All => true,
            Namespaces::Only(list) => list.iter().any(|n| n == namespace),
        }
    }
}

/// Settings the reconcilers need.
#[derive(Clone, Debug)]
pub struct Settings {
    pub namespaces: Namespaces,
    pub poll_interval: Duration,
    /// How often an unchanged object is reconciled anyway (a safety net; changes are seen
    /// through watches and the poller).
    pub resync_interval: Duration,
    pub allow_empty_values: bool,
    pub enable_annotations: bool,
    pub auto_restart: bool,
    /// Reconciles running at once, per controller.
    pub concurrency: u16,
    /// `VAULT_POLICY_FILE`: which namespaces may read which vaults (`None`: all may).
    pub vault_policy: Option<std::sync::Arc<crate::policy::VaultPolicy>>,
    /// Debounce, budget, rollout health and breaker of the restarts the operator causes.
    pub governance: crate::restart::governor::Governance,
}

/// The first retry of a failed sync: Connect or the API server away is not hammered by every
/// item at once.
pub const FIRST_RETRY: Duration = Duration::from_secs(5);

/// How soon an object is reconciled again when a change to its Secret came while our write was
/// on its way (its watch event held back; see [`OwnWrites`]).
pub const RECHECK_AFTER: Duration = Duration::from_secs(1);

/// The delays before retrying objects whose reconciles fail in a row, each object on its own:
/// from a first delay, doubling up to [`Backoff::MAX`] (backon's exponential backoff), plus up
/// to 20% jitter so that many objects that failed together do not all retry together.
#[derive(Default)]
pub struct Backoff(Mutex<HashMap<String, ExponentialBackoff>>);

impl Backoff {
    pub const MAX: Duration = Duration::from_secs(300);

    /// The delay before the next retry of `key`, whose first retry waits `first`.
    pub fn next(&self, key: &str, first: Duration) -> Duration {
        let mut all = self.0.lock().expect("backoff lock");
        let delays = all.entry(key.to_string()).or_insert_with(|| {
            ExponentialBuilder::new()
                .with_min_delay(first)
                .with_max_delay(Self::MAX)
                .with_factor(2.0)
                .without_max_times()
                .build()
        });
        let delay = delays.next().unwrap_or(Self::MAX);
        delay + delay.mul_f64(rand::random::<f64>() / 5.0)
    }

    /// `key` reconciled fine (or is gone): its next failure starts from the first delay again.
    pub fn reset(&self, key: &str) {
        self.0.lock().expect("backoff lock").remove(key);
    }
}

/// Shared by every reconcile of every controller.
pub struct Context {
    pub client: Client,
    pub catalog: Catalog,
    pub events: events::EventSink,
    pub metrics: Metrics,
    pub config: Settings,
    pub registry: poller::Registry,
    /// The Secrets as we last wrote them, to skip the watch events of our own writes.
    pub own_writes: OwnWrites,
    /// How often each Secret was written again with the same version (a fight with a writer).
    pub write_rate: write_rate::WriteRate,
    /// The status fields the installed OnePasswordItem CRD declares.
    pub status_schema: std::sync::Arc<crd_probe::StatusSchema>,
    /// The delay before retrying each object whose reconciles keep failing.
    pub backoff: Backoff,
    /// The OnePasswordItem statuses not written yet.
    pub statuses: super::status_queue::StatusQueue,
    reasons: Mutex<HashMap<String, Reason>>,
    /// The objects whose Secret changed while our write was on its way: reconciled again soon.
    rechecks: Mutex<HashSet<String>>,
    /// Whether each OnePasswordItem is Ready, for the `ready_items` gauge.
    ready: Mutex<Readiness>,
}

/// Whether each OnePasswordItem is Ready, by a 64-bit hash of its key (a gauge needs no more:
/// a collision, a 2^-64 chance, would miscount one object), and how many are.
#[derive(Default)]
struct Readiness {
    by_object: HashMap<u64, bool>,
    ready: usize,
}

impl Context {
    pub fn new(client: Client, catalog: Catalog, metrics: Metrics, config: Settings) -> Self {
        Context {
            events: events::EventSink::new(client.clone(), FIELD_MANAGER),
            client,
            catalog,
            metrics,
            config,
            registry: poller::Registry::default(),
            own_writes: OwnWrites::default(),
            write_rate: write_rate::WriteRate::default(),
            status_schema: Default::default(),
            backoff: Backoff::default(),
            statuses: Default::default(),
            reasons: Mutex::new(HashMap::new()),
            rechecks: Mutex::new(HashSet::new()),
            ready: Mutex::default(),
        }
    }

    /// Forgets everything kept about an object that is gone: kube-runtime never reconciles a
    /// deleted object, so the watch tells us instead (see [`super::forget_deleted`]).
    pub fn forget_object(&self, kind: TargetKind, namespace: &str, name: &str) {
        let key = object_key(kind, namespace, name);
        self.registry.forget(&TargetKey {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        });
        self.backoff.reset(&key);
        self.reasons.lock().expect("reasons lock").remove(&key);
        if kind == TargetKind::Item {
            // The item's Secret has its name, and goes with it.
            self.own_writes.forget(namespace, name);
            self.note_ready(&key, None);
        }
    }

    /// Syncs `target` (or reports why the asking object gives none) and tells the poller what
    /// came of it ([`Context::settle`]): the pipeline of every reconcile that asks for a Secret.
    pub async fn sync_tracked(
        &self,
        key: TargetKey,
        path: &str,
        target: Result<SyncTarget, SyncError>,
    ) -> Result<Synced, SyncError> {
        let before = self.cached_resolution(path).await;
        let mut extra = Vec::new();
        let paths = target.as_ref().ok().and_then(|t| t.extra_paths().ok());
        for (name, path) in paths.into_iter().flatten() {
            let before = self
                .catalog
                .resolve_cached(&path)
                .await
                .and_then(Result::ok);
            extra.push((name.to_owned(), path, before));
        }
        let secret = target
            .as_ref()
            .ok()
            .map(|t| (t.namespace.clone(), t.name.clone()));
        let outcome = match target {
            // Status writes wait while Secrets are being written (see `status_queue`).
            Ok(target) => {
                let _in_flight = self.statuses.sync();
                sync::sync(self, &target).await
            }
            Err(e) => Err(e),
        };
        if let Some((namespace, name)) = &secret
            && self.own_writes.take_missed(namespace, name)
        {
            let object = object_key(key.kind, &key.namespace, &key.name);
            self.rechecks.lock().expect("rechecks lock").insert(object);
        }
        let extra = self.extra_tracked(extra, &outcome).await;
        self.settle(key, path, before, outcome, extra).await
    }

    /// What the poller keeps of the other items of a Secret (`spec.items`, each by name, path
    /// and resolution before the sync): as for the main item ([`Context::settle`]), where each
    /// resolved and at which listed version.
    async fn extra_tracked(
        &self,
        before: Vec<(String, ItemPath, Option<Resolution>)>,
        outcome: &Result<Synced, SyncError>,
    ) -> Vec<Tracked> {
        let mut tracked = Vec::new();
        for (name, path, before) in before {
            let synced = outcome.as_ref().ok().and_then(|s| s.extra.get(&name));
            let (resolved, version) = match synced {
                Some((r, _)) => (Some(ids(r)), Some(r.version)),
                None => {
                    let after = self
                        .catalog
                        .resolve_cached(&path)
                        .await
                        .and_then(Result::ok);
                    seen_after_failure(before, after)
                }
            };
            tracked.push(Tracked {
                path,
                resolved,
                version,
                outage: false,
                extra: Vec::new(),
            });
        }
        tracked
    }

    /// Where the catalog says `path` points now, without asking Connect. Taken before a sync,
    /// it lets [`Context::settle`] track a failure at the version it failed on.
    pub async fn cached_resolution(&self, path: &str) -> Option<Resolution> {
        let path = ItemPath::parse(path).ok()?;
        self.catalog.resolve_cached(&path).await?.ok()
    }

    /// What the reconcile of `key` reports, and what the poller is told about it.
    ///
    /// An outcome that asked Connect nothing (the Secret already held the listed version, or
    /// the item is ignored) is only as fresh as the last poll: when that poll could not refresh
    /// the item's vault, the reason is reported instead (Ready False, `Unauthorized`,
    /// `ConnectUnavailable`, ...); the Secret is kept as it is.
    ///
    /// The poller is told where the path resolved, also when the sync failed after resolving
    /// it (`before` is [`Context::cached_resolution`] taken before the sync, its version kept
    /// when the catalog still says the same): it then wakes the object only when the item gets
    /// a new version, not on every poll. A path that does not parse is nothing to poll for.
    /// `extra` is what it saw of the other items of the Secret ([`Context::extra_tracked`]).
    pub async fn settle(
        &self,
        key: TargetKey,
        path: &str,
        before: Option<Resolution>,
        outcome: Result<Synced, SyncError>,
        extra: Vec<Tracked>,
    ) -> Result<Synced, SyncError> {
        let Ok(parsed) = ItemPath::parse(path) else {
            self.registry.forget(&key);
            return outcome;
        };
        let mut outage = outcome.as_ref().is_err_and(SyncError::is_outage);
        let (outcome, resolved, version) = match outcome {
            Ok(synced) => {
                let resolved = Some(ids(&synced.resolution));
                let version = Some(synced.resolution.version);
                let asked_connect = !matches!(synced.change, Change::Unchanged | Change::Ignored);
                // The vault of any of its items (`spec.items` too) that the last poll missed.
                let mut failure = None;
                if !asked_connect {
                    let items = std::iter::once(&synced.resolution)
                        .chain(synced.extra.values().map(|(r, _)| r));
                    for r in items {
                        failure = failure.or(self.catalog.refresh_failure(&r.vault_id).await);
                    }
                }
                match failure {
                    Some(e) => {
                        // Whatever the poll's failure was: the poller wakes it again when the
                        // poll works, not on every failed poll.
                        outage = true;
                        (Err(SyncError::Connect(e)), resolved, version)
                    }
                    None => (Ok(synced), resolved, version),
                }
            }
            Err(e) => {
                let (resolved, version) =
                    seen_after_failure(before, self.cached_resolution(path).await);
                (Err(e), resolved, version)
            }
        };
        self.registry.track(
            key,
            Tracked {
                path: parsed,
                resolved,
                version,
                outage,
                extra,
            },
        );
        outcome
    }

    /// Metrics, backoff and when to look again ([`SyncError::retry`]), after a sync of `key` by
    /// `controller`. Success looks again at the resync interval (the poller wakes it sooner
    /// when the item changes).
    pub fn after_sync(
        &self,
        controller: &'static str,
        key: &str,
        outcome: &Result<Synced, SyncError>,
        timer: ReconcileTimer,
    ) -> Action {
        let action = match outcome {
            Ok(synced) => {
                self.backoff.reset(key);
                if matches!(synced.change, Change::Created | Change::Updated) {
                    self.metrics.secret_written(controller);
                    if let Some(lag) = synced.updated_at.as_deref().and_then(lag_since) {
                        self.metrics.sync_lag(lag);
                    }
                }
                timer.finish(Ok(()));
                Action::requeue(self.config.resync_interval)
            }
            Err(e) => {
                timer.finish(Err(e.reason()));
                match e.retry() {
                    Retry::After(pause) => Action::requeue(pause),
                    Retry::Backoff => Action::requeue(self.backoff.next(key, FIRST_RETRY)),
                    Retry::AwaitChange => Action::await_change(),
                    Retry::Poll => Action::requeue(self.config.poll_interval),
                }
            }
        };
        if self.rechecks.lock().expect("rechecks lock").remove(key) {
            return Action::requeue(RECHECK_AFTER);
        }
        action
    }

    /// Publishes an event on `object` about `action` (`Sync`, `Restart`); a failure to publish
    /// is logged, never fatal.
    pub async fn publish(
        &self,
        object: &ObjectReference,
        action: &str,
        type_: EventType,
        reason: Reason,
        note: &str,
    ) {
        let event = events::Note {
            type_,
            action,
            reason,
            note,
        };
        if let Err(e) = self.events.publish(object, &event).await {
            tracing::debug!(error = %e, "cannot publish event");
        }
    }

    /// Records whether the OnePasswordItem `key` is Ready (`None`: it is gone) and updates the
    /// `ready_items` gauge.
    pub fn note_ready(&self, key: &str, ready: Option<bool>) {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        let key = hasher.finish();
        let mut all = self.ready.lock().expect("ready lock");
        let before = match ready {
            Some(r) => all.by_object.insert(key, r),
            None => all.by_object.remove(&key),
        };
        all.ready =
            all.ready + usize::from(ready == Some(true)) - usize::from(before == Some(true));
        let not_ready = all.by_object.len() - all.ready;
        self.metrics.set_ready_items(all.ready, not_ready);
    }

    /// Remembers the last outcome reason of an object without a status of ours (a Deployment),
    /// and returns the one before, so events are sent on transitions only.
    pub fn note_reason(&self, key: &str, reason: Reason) -> Option<Reason> {
        let mut reasons = self.reasons.lock().expect("reasons lock");
        reasons.insert(key.to_string(), reason)
    }
}

/// How long ago an RFC 3339 time was, if it is in the past.
pub fn lag_since(updated_at: &str) -> Option<Duration> {
    let then: k8s_openapi::jiff::Timestamp = updated_at.parse().ok()?;
    let lag = k8s_openapi::jiff::Timestamp::now().duration_since(then);
    Duration::try_from(lag).ok()
}

/// At most `max` bytes of `s`, cut on a character boundary, with an ellipsis when cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    // The result, ellipsis included, fits in `max` bytes.
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The key of an object in the backoff, reason and ready maps: `item/<ns>/<name>` or
/// `deployment/<ns>/<name>`.
pub fn object_key(kind: TargetKind, namespace: &str, name: &str) -> String {
    match kind {
        TargetKind::Item => format!("item/{namespace}/{name}"),
        TargetKind::Deployment => format!("deployment/{namespace}/{name}"),
    }
}

fn ids(r: &Resolution) -> (String, String) {
    (r.vault_id.clone(), r.item_id.clone())
}

/// Where the poller takes a path to resolve after a failed sync, and at which version: the
/// version is known when the catalog said the same before and after the sync.
fn seen_after_failure(
    before: Option<Resolution>,
    after: Option<Resolution>,
) -> (Option<(String, String)>, Option<u64>) {
    match (before, after) {
        (Some(before), Some(after)) if before == after => {
            (Some(ids(&before)), Some(before.version))
        }
        // Resolved during the sync, at a version not known for sure: the poller keeps the
        // vault listed and wakes the object once more, which then knows it.
        (_, Some(after)) => (Some(ids(&after)), None),
        (_, None) => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_from_its_first_delay_up_to_five_minutes_with_a_little_jitter() {
        let backoff = Backoff::default();
        let first = Duration::from_secs(5);
        let delays: Vec<Duration> = (0..9).map(|_| backoff.next("a", first)).collect();
        let base = [5, 10, 20, 40, 80, 160, 300, 300, 300].map(Duration::from_secs);
        for (delay, base) in delays.iter().zip(base) {
            assert!(
                *delay >= base && *delay <= base.mul_f64(1.2),
                "{delay:?} for {base:?}"
            );
        }
        // Each object on its own; a success starts it again.
        assert!(backoff.next("b", Duration::from_secs(1)) < Duration::from_secs(2));
        backoff.reset("a");
        assert!(backoff.next("a", first) < Duration::from_secs(7));
    }

    #[test]
    fn watch_namespace_is_a_comma_separated_list_and_empty_means_all() {
        assert_eq!(Namespaces::parse(None), Namespaces::All);
        assert_eq!(Namespaces::parse(Some(" ")), Namespaces::All);
        assert_eq!(Namespaces::parse(Some(",")), Namespaces::All);
        assert_eq!(
            Namespaces::parse(Some("b, a,,b")),
            Namespaces::Only(vec!["a".into(), "b".into()])
        );
        assert!(Namespaces::parse(Some("a")).contains("a"));
        assert!(!Namespaces::parse(Some("a")).contains("b"));
    }
}

#[cfg(test)]
mod forget_tests {
    use super::*;
    use crate::controller::{forget_deleted, testing};
    use futures::StreamExt;
    use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::ObjectMeta};
    use kube::runtime::watcher;
    use std::sync::Arc;

    fn context() -> Arc<Context> {
        context_on("http://127.0.0.1:9")
    }

    fn context_on(connect_host: &str) -> Arc<Context> {
        let (service, _handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        testing::context_on(Client::new(service, "default"), connect_host)
    }

    #[tokio::test]
    async fn the_ready_gauge_counts_each_object_once_as_it_is_now() {
        let ctx = context();
        let gauge = |ctx: &Context| {
            let text = ctx.metrics.encode();
            let count = |ready: &str| {
                let prefix = format!("onepassword_ready_items{{ready=\"{ready}\"}} ");
                text.lines()
                    .find_map(|l| l.strip_prefix(&prefix))
                    .map(|n| n.parse::<u64>().unwrap())
            };
            (count("true"), count("false"))
        };
        ctx.note_ready("item/a/x", Some(true));
        ctx.note_ready("item/a/y", Some(false));
        ctx.note_ready("item/a/x", Some(true));
        assert_eq!(gauge(&ctx), (Some(1), Some(1)));
        ctx.note_ready("item/a/y", Some(true));
        assert_eq!(gauge(&ctx), (Some(2), Some(0)));
        ctx.note_ready("item/a/x", None);
        ctx.note_ready("item/a/gone", None);
        assert_eq!(gauge(&ctx), (Some(1), Some(0)));
        ctx.note_ready("item/a/y", Some(false));
        assert_eq!(gauge(&ctx), (Some(0), Some(1)));
    }

    fn unchanged(vault: &str) -> Synced {
        Synced {
            resolution: Resolution {
                vault_id: vault.into(),
                item_id: "i".into(),
                version: 3,
                note: None,
                ignored: false,
            },
            version: 3,
            extra: Default::default(),
            change: Change::Unchanged,
            warnings: vec![],
            updated_at: None,
            forced: false,
        }
    }

    /// Settles a sync of `key` (for `vaults/v/items/i`, one item) that came to `synced`.
    async fn settle(ctx: &Context, key: &TargetKey, synced: Synced) -> Result<Synced, SyncError> {
        let path = "vaults/v/items/i";
        ctx.settle(key.clone(), path, None, Ok(synced), Vec::new())
            .await
    }

    fn tracked(ctx: &Context, key: &TargetKey) -> Tracked {
        ctx.registry
            .snapshot()
            .into_iter()
            .find(|(k, _)| k == key)
            .expect("tracked")
            .1
            .as_ref()
            .clone()
    }

    #[tokio::test]
    async fn after_a_poll_that_could_not_reach_connect_a_secret_at_the_listed_version_is_not_called_synced()
     {
        let ctx = context();
        let key = TargetKey {
            kind: TargetKind::Item,
            namespace: "a".into(),
            name: "db".into(),
        };
        // No poll yet: the Secret holds the listed version, and that is all there is to know.
        let outcome = settle(&ctx, &key, unchanged("v")).await;
        assert!(outcome.is_ok());
        assert!(!tracked(&ctx, &key).outage);

        // The poll cannot reach Connect (nothing listens on port 9).
        let in_use = ["v".to_string()].into();
        let err = ctx.catalog.refresh(&in_use, false).await.unwrap_err();
        assert_eq!(err.reason(), "ConnectUnavailable");
        let outcome = settle(&ctx, &key, unchanged("v")).await;
        let err = outcome.expect_err("an outage, not Synced");
        assert_eq!(err.reason(), Reason::ConnectUnavailable);
        let t = tracked(&ctx, &key);
        assert!(
            t.outage,
            "the poller is told, to wake it when Connect is back"
        );
        assert_eq!(t.resolved, Some(("v".into(), "i".into())));
        assert_eq!(t.version, Some(3));

        // A Secret written from a fresh fetch is current whatever the last poll said.
        let mut written = unchanged("v");
        written.change = Change::Updated;
        assert!(settle(&ctx, &key, written).await.is_ok());
        assert!(!tracked(&ctx, &key).outage);
    }

    #[tokio::test]
    async fn a_write_conflict_is_looked_at_again_when_its_pause_is_over_not_after_a_backoff() {
        let ctx = context();
        let conflict = || {
            Err(SyncError::WriteConflict {
                name: "db".into(),
                rewrites: 5,
                paused: Duration::from_secs(30),
            })
        };
        // However many failures came before (each would grow a backoff).
        for _ in 0..20 {
            let timer = ctx.metrics.reconcile_started("item");
            let action = ctx.after_sync("item", "a/db", &conflict(), timer);
            assert_eq!(action, Action::requeue(Duration::from_secs(31)));
        }
    }

    #[tokio::test]
    async fn a_poll_refused_for_any_reason_is_reported_once_not_on_every_poll() {
        use connect_sim::{Fault, Seed, Simulator};
        let sim = Simulator::start(Seed::new()).unwrap();
        let ctx = context_on(&sim.url());
        let key = TargetKey {
            kind: TargetKind::Item,
            namespace: "a".into(),
            name: "db".into(),
        };
        // Not an outage by its kind (Connect answered), but the poll could not say whether
        // the Secret is current all the same.
        sim.inject(Fault::status(403).on("list_vaults"));
        let in_use = ["v".to_string()].into();
        ctx.catalog.refresh(&in_use, false).await.unwrap_err();
        let outcome = settle(&ctx, &key, unchanged("v")).await;
        let reason = outcome.expect_err("not Synced").reason();
        assert_eq!(reason, Reason::VaultForbidden);
        let t = tracked(&ctx, &key);
        assert!(
            t.outage,
            "woken again when the poll works, not on every poll"
        );
        assert!(!poller::is_due_after(&t, true, None));
    }

    fn obj(ns: &str, name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn track(ctx: &Context, ns: &str, name: &str) {
        ctx.registry.track(
            TargetKey {
                kind: TargetKind::Item,
                namespace: ns.into(),
                name: name.into(),
            },
            Tracked {
                path: ItemPath::parse("vaults/v/items/i").unwrap(),
                resolved: None,
                version: None,
                outage: false,
                extra: Vec::new(),
            },
        );
    }

    fn names(ctx: &Context) -> Vec<String> {
        let mut keys: Vec<String> = ctx
            .registry
            .keys()
            .into_iter()
            .map(|k| format!("{}/{}", k.namespace, k.name))
            .collect();
        keys.sort();
        keys
    }

    #[tokio::test]
    async fn deleted_objects_and_objects_a_listing_no_longer_has_are_forgotten_in_their_scope() {
        use watcher::Event::*;
        let ctx = context();
        for (ns, name) in [
            ("a", "kept"),
            ("a", "gone"),
            ("a", "deleted"),
            ("b", "other"),
        ] {
            track(&ctx, ns, name);
        }
        let events = vec![
            Init,
            InitApply(obj("a", "kept")),
            InitApply(obj("a", "deleted")),
            InitDone,
            Delete(obj("a", "deleted")),
        ];
        let stream = forget_deleted(
            futures::stream::iter(events.into_iter().map(Ok)),
            ctx.clone(),
            TargetKind::Item,
            Some("a".into()),
        );
        let passed = stream.collect::<Vec<_>>().await;
        assert_eq!(passed.len(), 5, "every event goes on to the controller");
        // Namespace b is another scope's business.
        assert_eq!(names(&ctx), ["a/kept", "b/other"]);
    }
}
