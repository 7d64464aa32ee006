//! Controllers: reconcilers that keep Secrets and workloads in step with 1Password.
//!
//! - [`item`]: OnePasswordItem -> Secret of the same name (owner reference, status, events).
//! - [`deployment`]: Deployments annotated with `item-path` + `item-name` -> that Secret.
//! - [`poller`]: the poll loop that finds changed items and wakes the two above.
//! - [`restart`]: rolls workloads whose Secrets' data changed.
//! - [`sync`]: the fetch -> build -> apply pipeline the first two share.
//! - [`write_rate`]: notices a Secret we keep writing again (another writer fights us).
//! - [`crd_probe`]: which status fields the installed CRD declares (ours or the official one).
//! - [`takeover`]: what the official operator leaves on objects (its finalizer), removed.

pub mod crd_probe;
pub mod deployment;
pub mod events;
pub mod item;
pub mod poller;
pub mod restart;
pub mod sync;
pub mod takeover;
pub mod write_rate;

use std::{collections::HashMap, sync::Mutex, time::Duration};

use futures::Stream;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::PartialObjectMeta,
    core::NamespaceResourceScope,
    runtime::{WatchStreamExt, controller::Action, events::EventType, watcher},
};

use crate::{
    catalog::{Catalog, Resolution},
    connect::{ConnectError, ItemPath},
    telemetry::{Metrics, ReconcileTimer},
};
use poller::{TargetKey, TargetKind, Tracked};
use sync::{Change, SyncError, Synced};

/// The one field manager every write of ours uses.
pub use crate::restart::{FIELD_MANAGER, parse_bool};

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
}

/// Shared by every reconcile.
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
    failures: Mutex<HashMap<String, u32>>,
    reasons: Mutex<HashMap<String, &'static str>>,
    /// Whether each OnePasswordItem is Ready, for the `ready_items` gauge.
    ready: Mutex<HashMap<String, bool>>,
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
            failures: Mutex::new(HashMap::new()),
            reasons: Mutex::new(HashMap::new()),
            ready: Mutex::new(HashMap::new()),
        }
    }

    /// The delay before retrying an object that failed `key`'s last reconcile: 5 s doubling
    /// to 5 min, so a Connect outage is not hammered by every item at once.
    pub fn backoff(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().expect("failures lock");
        let n = failures.entry(key.to_string()).or_insert(0);
        *n = n.saturating_add(1);
        let secs = 5u64.saturating_mul(1 << (*n - 1).min(6)).min(300);
        // Up to 20% jitter spreads the retries of many items that failed together.
        let jitter = rand::random::<u64>() % (secs / 5 + 1);
        Duration::from_secs(secs + jitter)
    }

    /// Forgets everything kept about an object that is gone: kube-runtime never reconciles a
    /// deleted object, so the watch tells us instead (see [`forget_deleted`]).
    pub fn forget_object(&self, kind: TargetKind, namespace: &str, name: &str) {
        let key = object_key(kind, namespace, name);
        self.registry.forget(&TargetKey {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        });
        self.failures.lock().expect("failures lock").remove(&key);
        self.reasons.lock().expect("reasons lock").remove(&key);
        if kind == TargetKind::Item {
            // The item's Secret has its name, and goes with it.
            self.own_writes.forget(namespace, name);
            self.note_ready(&key, None);
        }
    }

    pub fn reset_backoff(&self, key: &str) {
        self.failures.lock().expect("failures lock").remove(key);
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
    pub async fn settle(
        &self,
        key: TargetKey,
        path: &str,
        before: Option<Resolution>,
        outcome: Result<Synced, SyncError>,
    ) -> Result<Synced, SyncError> {
        let Ok(parsed) = ItemPath::parse(path) else {
            self.registry.forget(&key);
            return outcome;
        };
        let ids = |r: &Resolution| (r.vault_id.clone(), r.item_id.clone());
        let mut outage = matches!(&outcome, Err(SyncError::Connect(e)) if is_outage(e));
        let (outcome, resolved, version) = match outcome {
            Ok(synced) => {
                let resolved = Some(ids(&synced.resolution));
                let version = Some(synced.resolution.version);
                let asked_connect = !matches!(synced.change, Change::Unchanged | Change::Ignored);
                let failure = if asked_connect {
                    None
                } else {
                    self.catalog
                        .refresh_failure(&synced.resolution.vault_id)
                        .await
                };
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
            Err(e) => match (before, self.cached_resolution(path).await) {
                (Some(before), Some(after)) if before == after => {
                    (Err(e), Some(ids(&before)), Some(before.version))
                }
                // Resolved during the sync, at a version not known for sure: the poller keeps
                // the vault listed and wakes the object once more, which then knows it.
                (_, Some(after)) => (Err(e), Some(ids(&after)), None),
                (_, None) => (Err(e), None, None),
            },
        };
        self.registry.track(
            key,
            Tracked {
                path: parsed,
                resolved,
                version,
                outage,
            },
        );
        outcome
    }

    /// Metrics, backoff and when to look again, after a sync of `key` by `controller`.
    /// Transient failures retry with backoff; problems that a change in 1Password can fix are
    /// looked at again every poll interval; a bad spec, or a Secret that cannot be built or is
    /// refused as built, waits for the object to change (or, through the poller, for a new
    /// version of the item).
    pub fn after_sync(
        &self,
        controller: &'static str,
        key: &str,
        outcome: &Result<Synced, SyncError>,
        timer: ReconcileTimer,
    ) -> Action {
        match outcome {
            Ok(synced) => {
                self.reset_backoff(key);
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
                if let SyncError::WriteConflict { paused, .. } = e {
                    // The pause is the backoff: look again as soon as it is over, however many
                    // times the other writer made us fail meanwhile.
                    Action::requeue(*paused + Duration::from_secs(1))
                } else if e.is_transient() {
                    Action::requeue(self.backoff(key))
                } else if e.needs_spec_change() || e.is_permanent() {
                    Action::await_change()
                } else {
                    Action::requeue(self.config.poll_interval)
                }
            }
        }
    }

    /// Publishes an event on `object`; a failure to publish is logged, never fatal.
    pub async fn publish(
        &self,
        object: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        let event = events::Note {
            type_,
            action: "Sync",
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
        let mut all = self.ready.lock().expect("ready lock");
        match ready {
            Some(r) => all.insert(key.to_string(), r),
            None => all.remove(key),
        };
        let ready = all.values().filter(|r| **r).count();
        self.metrics.set_ready_items(ready, all.len() - ready);
    }

    /// Remembers the last outcome reason of an object without a status of ours (a Deployment),
    /// and returns the one before, so events are sent on transitions only.
    pub fn note_reason(&self, key: &str, reason: &'static str) -> Option<&'static str> {
        let mut reasons = self.reasons.lock().expect("reasons lock");
        reasons.insert(key.to_string(), reason)
    }
}

/// Connect could not be asked at all (down, failing, or refusing the token), as opposed to
/// answering that something is missing or not allowed.
pub fn is_outage(e: &ConnectError) -> bool {
    matches!(e, ConnectError::Unauthorized { .. }) || e.is_transient()
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

/// A Secret as the watches see it: metadata only. Values are read by a GET when a reconcile
/// needs them, never kept in a cache.
pub type SecretMeta = PartialObjectMeta<Secret>;

/// Watches the Secrets this operator manages (by label) in `scope`, metadata only (a metadata
/// watch never transfers values), with `managedFields` dropped before they are cached.
pub fn watch_managed_secrets(
    client: &Client,
    scope: Option<&str>,
) -> impl Stream<Item = Result<watcher::Event<SecretMeta>, watcher::Error>> + Send + 'static {
    let api: Api<SecretMeta> = scoped_api(client, scope);
    let managed = watcher::Config::default().labels(&format!(
        "{}={}",
        crate::restart::MANAGED_LABEL,
        crate::restart::MANAGED_VALUE
    ));
    watcher(api, managed)
        .default_backoff()
        .modify(|s: &mut SecretMeta| s.managed_fields_mut().clear())
}

/// The resourceVersion of each managed Secret as our last write left it. A watch event that
/// carries that same version is the echo of our own write: the Secret is exactly as we wrote
/// it, so there is nothing to reconcile (this saves a GET per write). Any later change by
/// anyone, a deletion included, has another version and goes through.
#[derive(Default)]
pub struct OwnWrites(Mutex<HashMap<(String, String), String>>);

impl OwnWrites {
    pub fn record(&self, namespace: &str, name: &str, resource_version: Option<String>) {
        let mut all = self.0.lock().expect("own writes lock");
        let key = (namespace.to_string(), name.to_string());
        match resource_version {
            Some(rv) => all.insert(key, rv),
            None => all.remove(&key),
        };
    }

    /// Whether `secret` is, as far as we know, exactly what we last wrote.
    pub fn is_echo(&self, secret: &SecretMeta) -> bool {
        let (Some(namespace), Some(rv)) = (
            secret.metadata.namespace.as_ref(),
            secret.metadata.resource_version.as_ref(),
        ) else {
            return false;
        };
        secret.metadata.deletion_timestamp.is_none()
            && self
                .0
                .lock()
                .expect("own writes lock")
                .get(&(namespace.clone(), secret.name_any()))
                == Some(rv)
    }

    /// Forgets Secrets no longer managed.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.record(namespace, name, None);
    }
}

/// Drops the watch events that are echoes of our own Secret writes (see [`OwnWrites`]);
/// deletions and (re)listings always go through.
pub fn skip_own_echoes<S>(
    events: S,
    ctx: std::sync::Arc<Context>,
) -> impl Stream<Item = Result<watcher::Event<SecretMeta>, watcher::Error>> + Send + 'static
where
    S: Stream<Item = Result<watcher::Event<SecretMeta>, watcher::Error>> + Send + 'static,
{
    use futures::TryStreamExt;
    events.try_filter(move |event| {
        let echo = matches!(event, watcher::Event::Apply(s) if ctx.own_writes.is_echo(s));
        std::future::ready(!echo)
    })
}

/// Drops the `Apply` events of objects whose [`fingerprint`] did not change: updates of status,
/// managedFields or resourceVersion alone (our own status writes, a rollout's progress), which
/// cannot change what a reconcile does. Listings (at start and after every watch gap) and
/// deletions always go through, so a gap is followed by a full pass that finds whatever
/// changed meanwhile (a Secret deleted while the watch was down, for one).
pub fn skip_unchanged<K, S>(
    events: S,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource + Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    use futures::TryStreamExt;
    let mut seen: HashMap<(String, String), u64> = HashMap::new();
    events.try_filter(move |event| {
        let pass = match event {
            watcher::Event::Apply(o) => {
                let print = fingerprint(o);
                seen.insert(key(o), print) != Some(print)
            }
            watcher::Event::InitApply(o) => {
                seen.insert(key(o), fingerprint(o));
                true
            }
            watcher::Event::Delete(o) => {
                seen.remove(&key(o));
                true
            }
            watcher::Event::Init | watcher::Event::InitDone => true,
        };
        std::future::ready(pass)
    })
}

fn key<K: Resource>(o: &K) -> (String, String) {
    (o.namespace().unwrap_or_default(), o.name_any())
}

/// What a reconcile reads of an object's metadata, plus its spec (through `generation`).
fn fingerprint<K: Resource>(o: &K) -> u64 {
    use std::hash::{Hash, Hasher};
    let meta = o.meta();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        &meta.uid,
        meta.generation,
        &meta.labels,
        &meta.annotations,
        meta.deletion_timestamp.as_ref().map(|t| t.0.as_second()),
    )
        .hash(&mut h);
    for owner in meta.owner_references.iter().flatten() {
        (&owner.uid, owner.controller).hash(&mut h);
    }
    h.finish()
}

/// Forgets the objects of `kind` that the watch of `scope` reports deleted, and, at the end of
/// each listing (at start and after a watch gap, when deletions may have been missed), those
/// it no longer lists. Keeps the poller's registry, the backoff and the gauges to objects that
/// exist.
pub fn forget_deleted<K, S>(
    events: S,
    ctx: std::sync::Arc<Context>,
    kind: TargetKind,
    scope: Option<String>,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource + Send + 'static,
    S: Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    use futures::TryStreamExt;
    let mut listed: std::collections::HashSet<(String, String)> = Default::default();
    events.inspect_ok(move |event| match event {
        watcher::Event::Init => listed.clear(),
        watcher::Event::InitApply(o) => {
            listed.insert(key(o));
        }
        watcher::Event::InitDone => {
            let gone: Vec<TargetKey> = ctx
                .registry
                .keys()
                .into_iter()
                .filter(|k| k.kind == kind)
                .filter(|k| scope.as_ref().is_none_or(|ns| *ns == k.namespace))
                .filter(|k| !listed.contains(&(k.namespace.clone(), k.name.clone())))
                .collect();
            for k in gone {
                ctx.forget_object(kind, &k.namespace, &k.name);
            }
            listed.clear();
        }
        watcher::Event::Delete(o) => {
            let (namespace, name) = key(o);
            ctx.forget_object(kind, &namespace, &name);
        }
        watcher::Event::Apply(_) => {}
    })
}

/// Logs an error a controller's run stream reports. A failed reconcile is logged by its
/// error policy already; a failed watch is said here: an expired one (410 Gone: the watcher
/// lists again and carries on), or one that fails (RBAC, API server away), retried with backoff.
pub fn log_run_error<E: std::error::Error>(
    controller: &str,
    error: &kube::runtime::controller::Error<E, watcher::Error>,
) {
    use kube::runtime::controller::Error;
    match error {
        Error::QueueError(e) => log_watch_error(controller, e),
        e => tracing::debug!(controller, error = %e, "reconcile did not complete"),
    }
}

/// A watch error: an expired watch (410 Gone: the watcher lists again and carries on) at info,
/// anything else (RBAC, API server away; retried with backoff) at warn.
pub fn log_watch_error(controller: &str, error: &watcher::Error) {
    match error {
        watcher::Error::WatchError(status) if status.code == 410 => {
            tracing::info!(controller, error = %error, "watch expired (410 Gone); listing again")
        }
        e => tracing::warn!(controller, error = %e, "watch failed; retrying with backoff"),
    }
}

/// An API for one namespace, or for all of them.
pub fn scoped_api<K>(client: &Client, scope: Option<&str>) -> Api<K>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
{
    match scope {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
mod watch_filter_tests {
    use super::*;
    use futures::StreamExt;
    use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::ObjectMeta};
    use kube::api::PartialObjectMetaExt;

    fn cm(name: &str, generation: i64, rv: &str, label: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                generation: Some(generation),
                resource_version: Some(rv.into()),
                labels: Some([("l".to_string(), label.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn names(events: Vec<watcher::Event<ConfigMap>>) -> Vec<String> {
        let stream = skip_unchanged(futures::stream::iter(events.into_iter().map(Ok)));
        futures::executor::block_on(stream.collect::<Vec<_>>())
            .into_iter()
            .map(|e| match e.unwrap() {
                watcher::Event::Apply(o) => {
                    format!("apply {}", o.metadata.resource_version.unwrap())
                }
                watcher::Event::InitApply(o) => {
                    format!("list {}", o.metadata.resource_version.unwrap())
                }
                watcher::Event::Delete(o) => {
                    format!("delete {}", o.metadata.resource_version.unwrap())
                }
                watcher::Event::Init => "init".into(),
                watcher::Event::InitDone => "done".into(),
            })
            .collect()
    }

    #[test]
    fn updates_that_change_nothing_a_reconcile_reads_are_dropped_but_listings_never_are() {
        use watcher::Event::*;
        let got = names(vec![
            Init,
            InitApply(cm("a", 1, "1", "x")),
            InitDone,
            Apply(cm("a", 1, "2", "x")), // status or resourceVersion only: dropped
            Apply(cm("a", 2, "3", "x")), // spec (generation)
            Apply(cm("a", 2, "4", "y")), // labels
            Init,
            InitApply(cm("a", 2, "5", "y")), // a listing after a gap: always
            InitDone,
            Delete(cm("a", 2, "6", "y")),
            Apply(cm("a", 2, "7", "y")), // made again: unknown, so it goes through
        ]);
        assert_eq!(
            got,
            [
                "init", "list 1", "done", "apply 3", "apply 4", "init", "list 5", "done",
                "delete 6", "apply 7"
            ]
        );
    }

    fn meta(name: &str, rv: &str) -> SecretMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            resource_version: Some(rv.into()),
            ..Default::default()
        }
        .into_response_partial()
    }

    #[test]
    fn only_the_version_our_last_write_left_is_an_echo() {
        let writes = OwnWrites::default();
        assert!(!writes.is_echo(&meta("db", "5")));
        writes.record("ns", "db", Some("5".into()));
        assert!(writes.is_echo(&meta("db", "5")));
        assert!(!writes.is_echo(&meta("db", "6")), "someone else's change");
        assert!(!writes.is_echo(&meta("other", "5")));
        writes.forget("ns", "db");
        assert!(!writes.is_echo(&meta("db", "5")));
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::connect::{ConnectClient, ConnectConfig};
    use std::sync::Arc;

    /// A context on `client` (a mock API server, usually), with a Connect client that is never
    /// called.
    pub(crate) fn context(client: Client) -> Arc<Context> {
        context_on(client, "http://127.0.0.1:9")
    }

    /// A context on `client` whose Connect client asks `connect_host`, without retries.
    pub(crate) fn context_on(client: Client, connect_host: &str) -> Arc<Context> {
        let mut config = ConnectConfig::from_env(|k| match k {
            "OP_CONNECT_HOST" => Some(connect_host.into()),
            "OP_CONNECT_TOKEN" => Some("token".into()),
            _ => None,
        })
        .unwrap();
        config.retry.max_retries = 0;
        let connect = ConnectClient::new(config).unwrap();
        Arc::new(Context::new(
            client,
            Catalog::new(connect),
            Metrics::new(),
            Settings {
                namespaces: Namespaces::All,
                poll_interval: Duration::from_secs(10),
                resync_interval: Duration::from_secs(3600),
                allow_empty_values: false,
                enable_annotations: false,
                auto_restart: false,
                concurrency: 1,
                vault_policy: None,
            },
        ))
    }
}

#[cfg(test)]
mod forget_tests {
    use super::*;
    use futures::StreamExt;
    use k8s_openapi::{api::core::v1::ConfigMap, apimachinery::pkg::apis::meta::v1::ObjectMeta};
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
            change: Change::Unchanged,
            warnings: vec![],
            updated_at: None,
        }
    }

    fn tracked(ctx: &Context, key: &TargetKey) -> Tracked {
        ctx.registry
            .snapshot()
            .into_iter()
            .find(|(k, _)| k == key)
            .expect("tracked")
            .1
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
        let outcome = ctx
            .settle(key.clone(), "vaults/v/items/i", None, Ok(unchanged("v")))
            .await;
        assert!(outcome.is_ok());
        assert!(!tracked(&ctx, &key).outage);

        // The poll cannot reach Connect (nothing listens on port 9).
        let in_use = ["v".to_string()].into();
        let err = ctx.catalog.refresh(&in_use, false).await.unwrap_err();
        assert_eq!(err.reason(), "ConnectUnavailable");
        let outcome = ctx
            .settle(key.clone(), "vaults/v/items/i", None, Ok(unchanged("v")))
            .await;
        let err = outcome.expect_err("an outage, not Synced");
        assert_eq!(err.reason(), "ConnectUnavailable");
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
        assert!(
            ctx.settle(key.clone(), "vaults/v/items/i", None, Ok(written))
                .await
                .is_ok()
        );
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
        let outcome = ctx
            .settle(key.clone(), "vaults/v/items/i", None, Ok(unchanged("v")))
            .await;
        let reason = outcome.expect_err("not Synced").reason();
        assert_eq!(reason, "VaultForbidden");
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
