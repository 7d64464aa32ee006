//! The watches' plumbing: which Secrets are watched and how, which watch events are dropped
//! before they wake a reconcile (our own writes' echoes, updates that change nothing a reconcile
//! reads), and what is forgotten when an object goes.

use std::{collections::HashMap, future::Future, sync::Mutex};

use futures::Stream;
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::PartialObjectMeta,
    core::NamespaceResourceScope,
    runtime::{WatchStreamExt, watcher},
};

use super::{
    Context,
    poller::{TargetKey, TargetKind},
    secret_cache::{CacheWriter, SecretCache, secret_cache},
};

/// A Secret as the watches see it: metadata only. Values are read by a GET when a reconcile
/// needs them, never kept in a cache.
pub type SecretMeta = PartialObjectMeta<Secret>;

/// Watches the Secrets this operator manages (by label) in `scope`, metadata only (a metadata
/// watch never transfers values), with `managedFields` dropped before they are cached.
fn watch_managed_secrets(
    client: &Client,
    scope: Option<&str>,
) -> impl Stream<Item = Result<watcher::Event<SecretMeta>, watcher::Error>> + Send + 'static {
    let api: Api<SecretMeta> = scoped_api(client, scope);
    let managed = watcher::Config::default().labels(&format!(
        "{}={}",
        crate::vocabulary::MANAGED_LABEL,
        crate::vocabulary::MANAGED_VALUE
    ));
    watcher(api, managed)
        .default_backoff()
        .modify(drop_managed_fields)
}

/// The events of the shared watch of managed Secrets, as one controller receives them
/// ([`SecretWatch::subscribe`]). Watch errors are logged by the watch itself, never passed on.
pub type SecretEvents =
    futures::stream::BoxStream<'static, Result<watcher::Event<SecretMeta>, watcher::Error>>;

/// What a controller gets of the shared watch of managed Secrets ([`SecretWatch::feed`]).
pub struct SecretFeed {
    /// The shared cache of what is read of them, updated before an event is passed on.
    pub cache: SecretCache,
    /// The events, in order.
    pub events: SecretEvents,
}

/// How many events a subscriber may lag behind before the watch waits for it.
const SUBSCRIBER_BUFFER: usize = 256;

/// The managed Secrets of one scope, watched once for every controller that needs them (the
/// OnePasswordItem, Deployment and restart controllers): one watch connection, one decoding of
/// each event, and one cache ([`SecretCache`]) instead of one each.
///
/// The cache keeps what its readers read and nothing more: owner references (which Deployment
/// or item owns a Secret), and of the annotations only the data digest and the two restart
/// settings, in a compact record. The events passed on carry the same annotations, and no
/// labels. The cache is updated before a subscriber receives the event, so a controller woken
/// by it reads the new state.
pub struct SecretWatch {
    scope: Option<String>,
    cache: SecretCache,
    writer: CacheWriter,
    subscribers: Vec<futures::channel::mpsc::Sender<watcher::Event<SecretMeta>>>,
}

impl SecretWatch {
    /// A watch of `scope` (`None`: all namespaces), to be subscribed to and then [run].
    ///
    /// [run]: SecretWatch::run
    pub fn new(scope: Option<String>) -> Self {
        let (cache, writer) = secret_cache();
        SecretWatch {
            scope,
            cache,
            writer,
            subscribers: Vec::new(),
        }
    }

    /// The shared cache and a subscription, for a controller that reads both.
    pub fn feed(&mut self) -> SecretFeed {
        SecretFeed {
            cache: self.cache.clone(),
            events: self.subscribe(),
        }
    }

    /// Every event of the watch, listings included, in order. Take them all before [run].
    ///
    /// [run]: SecretWatch::run
    pub fn subscribe(&mut self) -> SecretEvents {
        use futures::StreamExt;
        let (tx, rx) = futures::channel::mpsc::channel(SUBSCRIBER_BUFFER);
        self.subscribers.push(tx);
        rx.map(Ok).boxed()
    }

    /// Watches until `shutdown`, then ends every subscriber's stream. A failed watch is logged
    /// and retried with backoff; a subscriber that went away is dropped.
    pub async fn run(self, client: Client, shutdown: impl Future<Output = ()> + Send) {
        use futures::StreamExt;
        let SecretWatch {
            scope,
            writer,
            subscribers,
            ..
        } = self;
        let events = watch_managed_secrets(&client, scope.as_deref())
            .modify(keep_what_is_read)
            .take_until(shutdown);
        pass_on(events, writer, subscribers).await;
    }
}

/// Caches each event of `events` through `writer`, then hands it to every subscriber in turn.
async fn pass_on(
    events: impl Stream<Item = Result<watcher::Event<SecretMeta>, watcher::Error>>,
    mut writer: CacheWriter,
    mut subscribers: Vec<futures::channel::mpsc::Sender<watcher::Event<SecretMeta>>>,
) {
    use futures::{SinkExt, StreamExt};
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                log_watch_error("managed Secrets", &e);
                continue;
            }
        };
        writer.apply(&event);
        let mut gone = Vec::new();
        for (i, subscriber) in subscribers.iter_mut().enumerate() {
            if subscriber.send(event.clone()).await.is_err() {
                gone.push(i);
            }
        }
        for i in gone.into_iter().rev() {
            subscribers.remove(i);
        }
    }
}

/// Of a managed Secret's metadata, drops what no reader of the shared cache reads.
fn keep_what_is_read(secret: &mut SecretMeta) {
    use crate::vocabulary::{
        AUTO_RESTART_ANNOTATION, DIGEST_ANNOTATION, RESUME_RESTARTS_ANNOTATION,
    };
    secret.metadata.labels = None;
    drop_annotations(secret, |k| {
        k == DIGEST_ANNOTATION || k == AUTO_RESTART_ANNOTATION || k == RESUME_RESTARTS_ANNOTATION
    });
}

/// The resourceVersion of each managed Secret as our last write left it. A watch event that
/// carries that same version is the echo of our own write: the Secret is exactly as we wrote
/// it, so there is nothing to reconcile (this saves a GET per write). Any later change by
/// anyone, a deletion included, has another version and goes through.
///
/// The echo can arrive before the answer to the write that caused it, so a write is marked as
/// on its way ([`OwnWrites::begin`]) before it is sent. An update event meanwhile is held back,
/// its version kept; when the answer comes ([`Flight::land`]), the events the watch delivered
/// after our own (it delivers in order) were someone else's later changes, and the Secret is
/// marked to be looked at again ([`OwnWrites::take_missed`]). Those delivered before ours
/// changed a Secret our write then rewrote: nothing is lost by dropping them.
#[derive(Default)]
pub struct OwnWrites(Mutex<super::ByNamespace<Written>>);

/// What is known of our writes to one Secret.
#[derive(Default)]
struct Written {
    /// The resourceVersion our last write left.
    version: Option<Box<str>>,
    /// Our writes sent and not yet answered.
    on_its_way: u32,
    /// The versions of the update events held back meanwhile, in the watch's order.
    held: Vec<String>,
    /// An event held back was a change after ours (or our write failed): look again.
    missed: bool,
}

impl OwnWrites {
    fn with<T>(&self, namespace: &str, name: &str, f: impl FnOnce(&mut Written) -> T) -> T {
        let mut all = self.0.lock().expect("own writes lock");
        // Keys are made only for a Secret not known yet (a namespace, then a name).
        if !all.contains_key(namespace) {
            all.insert(namespace.into(), HashMap::new());
        }
        let names = all.get_mut(namespace).expect("just made");
        if !names.contains_key(name) {
            names.insert(name.into(), Written::default());
        }
        let written = names.get_mut(name).expect("just made");
        let out = f(written);
        if written.version.is_none() && written.on_its_way == 0 && !written.missed {
            names.remove(name);
            if names.is_empty() {
                all.remove(namespace);
            }
        }
        out
    }

    /// Remembers the version a write of ours left (`None`: forget it).
    pub fn record(&self, namespace: &str, name: &str, resource_version: Option<String>) {
        self.with(namespace, name, |w| {
            w.version = resource_version.map(String::into_boxed_str)
        });
    }

    /// Marks a write to `name` as on its way; the returned [`Flight`] lands it with the answer
    /// (dropped without one, the write counts as failed).
    pub fn begin<'a>(&'a self, namespace: &'a str, name: &'a str) -> Flight<'a> {
        self.with(namespace, name, |w| w.on_its_way += 1);
        Flight {
            writes: self,
            namespace,
            name,
            landed: false,
        }
    }

    fn land(&self, namespace: &str, name: &str, resource_version: Option<String>) {
        self.with(namespace, name, |w| {
            w.on_its_way = w.on_its_way.saturating_sub(1);
            match &resource_version {
                // Anything after our own echo came later than our write.
                Some(rv) => {
                    if let Some(ours) = w.held.iter().position(|h| h == rv) {
                        w.missed |= ours + 1 < w.held.len();
                    }
                }
                // A failed write changed nothing: whatever came meanwhile is someone else's.
                None => w.missed |= !w.held.is_empty(),
            }
            if let Some(rv) = resource_version {
                w.version = Some(rv.into_boxed_str());
            }
            if w.on_its_way == 0 {
                w.held.clear();
            }
        });
    }

    /// Whether an update of `name` was held back while a write of ours was on its way, and came
    /// after it (or the write failed): the Secret must be looked at again. Asking clears it.
    pub fn take_missed(&self, namespace: &str, name: &str) -> bool {
        self.with(namespace, name, |w| std::mem::take(&mut w.missed))
    }

    /// Whether `secret` is, as far as we know, exactly what we last wrote, or an update that
    /// came while a write of ours was on its way (held back; see [`OwnWrites`]).
    pub fn is_echo(&self, secret: &SecretMeta) -> bool {
        let (Some(namespace), Some(rv)) = (
            secret.metadata.namespace.as_ref(),
            secret.metadata.resource_version.as_ref(),
        ) else {
            return false;
        };
        if secret.metadata.deletion_timestamp.is_some() {
            return false;
        }
        let all = &mut *self.0.lock().expect("own writes lock");
        let name = secret.name_any();
        let Some(w) = all
            .get_mut(namespace.as_str())
            .and_then(|names| names.get_mut(name.as_str()))
        else {
            return false;
        };
        if w.on_its_way > 0 {
            // Each controller's watch sees the event: keep each version once, in the order seen.
            if !w.held.contains(rv) {
                w.held.push(rv.clone());
            }
            return true;
        }
        w.version.as_deref() == Some(rv.as_str())
    }

    /// Whether this process wrote `name` (and has not forgotten it since).
    pub fn knows(&self, namespace: &str, name: &str) -> bool {
        self.0
            .lock()
            .expect("own writes lock")
            .get(namespace)
            .and_then(|names| names.get(name))
            .is_some_and(|w| w.version.is_some())
    }

    /// Forgets Secrets no longer managed.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.record(namespace, name, None);
    }
}

/// A write of ours on its way (see [`OwnWrites::begin`]).
#[must_use = "a flight lands with the write's answer"]
pub struct Flight<'a> {
    writes: &'a OwnWrites,
    namespace: &'a str,
    name: &'a str,
    landed: bool,
}

impl Flight<'_> {
    /// The write's answer: the version it left, `None` when it failed.
    pub fn land(mut self, resource_version: Option<String>) {
        self.landed = true;
        self.writes
            .land(self.namespace, self.name, resource_version);
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        if !self.landed {
            self.writes.land(self.namespace, self.name, None);
        }
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
    let mut seen: super::ByNamespace<u64> = Default::default();
    events.try_filter(move |event| {
        // The fingerprint `o` had before.
        let mut note = |o: &K, print: u64| {
            let (namespace, name) = key(o);
            let names = seen.entry(namespace.into()).or_default();
            names.insert(name.into(), print)
        };
        let pass = match event {
            watcher::Event::Apply(o) => {
                let print = fingerprint(o);
                note(o, print) != Some(print)
            }
            watcher::Event::InitApply(o) => {
                note(o, fingerprint(o));
                true
            }
            watcher::Event::Delete(o) => {
                let (namespace, name) = key(o);
                if let Some(names) = seen.get_mut(namespace.as_str()) {
                    names.remove(name.as_str());
                    if names.is_empty() {
                        seen.remove(namespace.as_str());
                    }
                }
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
            // Not cleared: dropped, with the table a whole listing made.
            listed = Default::default();
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

/// Drops an object's `managedFields` before it is cached, buffer and all (a cleared `Vec` would
/// keep its allocation: some hundred bytes per cached object).
pub fn drop_managed_fields<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

/// Keeps of a cached object's annotations those `keep` accepts; an annotation map left empty
/// is dropped too (an empty map keeps its allocation, about half a kilobyte).
pub fn drop_annotations<K: Resource>(object: &mut K, keep: impl Fn(&str) -> bool) {
    let meta = object.meta_mut();
    if let Some(a) = meta.annotations.as_mut() {
        a.retain(|k, _| keep(k));
        if a.is_empty() {
            meta.annotations = None;
        }
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
mod watch_filter_tests {
    use super::*;
    use futures::StreamExt;
    use k8s_openapi::{
        api::core::v1::ConfigMap,
        apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    };
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

    #[tokio::test]
    async fn the_shared_watch_caches_an_event_before_every_subscriber_gets_it() {
        use futures::StreamExt;
        let mut watch = SecretWatch::new(None);
        let mut first = watch.feed();
        let second = watch.subscribe();
        let gone = watch.subscribe();
        drop(gone); // a controller that stopped holds nobody back
        let SecretWatch {
            writer,
            subscribers,
            ..
        } = watch;
        let events = futures::stream::iter(vec![
            Ok(watcher::Event::Init),
            Ok(watcher::Event::InitApply(meta("a", "1"))),
            Ok(watcher::Event::InitApply(meta("c", "1"))),
            Ok(watcher::Event::InitDone),
            Err(watcher::Error::NoResourceVersion),
            Ok(watcher::Event::Apply(meta("b", "2"))),
            Ok(watcher::Event::Delete(meta("a", "3"))),
        ]);
        let passing = tokio::spawn(pass_on(events, writer, subscribers));
        let mut seen = Vec::new();
        while let Some(event) = first.events.next().await {
            let in_cache = |name: &str| first.cache.get("ns", name).is_some();
            seen.push(match event.unwrap() {
                watcher::Event::Init => "init".to_string(),
                watcher::Event::InitApply(s) => format!("list {}", s.name_any()),
                watcher::Event::InitDone => format!("done, c cached: {}", in_cache("c")),
                watcher::Event::Apply(s) => {
                    format!("apply {}, cached: {}", s.name_any(), in_cache("b"))
                }
                watcher::Event::Delete(s) => {
                    format!("delete {}, cached: {}", s.name_any(), in_cache("a"))
                }
            });
        }
        passing.await.unwrap();
        assert_eq!(
            seen,
            [
                "init",
                "list a",
                "list c",
                "done, c cached: true",
                "apply b, cached: true",
                "delete a, cached: false"
            ],
            "in order, errors logged and not passed on, the cache updated first (the check \
             reads objects that no later event changes: the watch may run ahead)"
        );
        let second: Vec<_> = second.collect().await;
        assert_eq!(second.len(), 6, "every subscriber gets every event");
    }

    #[test]
    fn the_events_passed_on_keep_owners_and_the_restart_annotations_only() {
        let mut secret = meta("a", "1");
        secret.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
        secret.metadata.annotations = Some(
            [
                crate::vocabulary::DIGEST_ANNOTATION,
                crate::vocabulary::AUTO_RESTART_ANNOTATION,
                crate::vocabulary::RESUME_RESTARTS_ANNOTATION,
                "kubectl.kubernetes.io/last-applied-configuration",
            ]
            .map(|k| (k.to_string(), "v".to_string()))
            .into(),
        );
        secret.metadata.owner_references = Some(vec![Default::default()]);
        keep_what_is_read(&mut secret);
        assert_eq!(secret.metadata.labels, None);
        assert_eq!(secret.metadata.annotations.unwrap().len(), 3);
        assert_eq!(secret.metadata.owner_references.unwrap().len(), 1);

        let mut foreign = meta("b", "1");
        foreign.metadata.annotations = Some([("note".to_string(), "v".to_string())].into());
        foreign.metadata.managed_fields = Some(vec![Default::default()]);
        keep_what_is_read(&mut foreign);
        drop_managed_fields(&mut foreign);
        assert_eq!(foreign.metadata.annotations, None, "no empty map kept");
        assert_eq!(foreign.metadata.managed_fields, None);
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

    #[test]
    fn an_echo_before_the_answer_is_held_back_and_nothing_is_missed() {
        let writes = OwnWrites::default();
        let flight = writes.begin("ns", "db");
        assert!(!writes.knows("ns", "db"), "nothing written yet");
        // Both controllers' watches see it.
        assert!(writes.is_echo(&meta("db", "7")));
        assert!(writes.is_echo(&meta("db", "7")));
        flight.land(Some("7".into()));
        assert!(!writes.take_missed("ns", "db"));
        assert!(writes.knows("ns", "db"));
        assert!(writes.is_echo(&meta("db", "7")));
        assert!(
            !writes.is_echo(&meta("db", "8")),
            "later changes go through again"
        );
    }

    #[test]
    fn a_change_after_our_echo_while_the_write_was_on_its_way_is_looked_at_again() {
        let writes = OwnWrites::default();
        let flight = writes.begin("ns", "db");
        assert!(writes.is_echo(&meta("db", "7")));
        assert!(writes.is_echo(&meta("db", "9")), "held back");
        flight.land(Some("7".into()));
        assert!(writes.take_missed("ns", "db"));
        assert!(!writes.take_missed("ns", "db"), "asking clears it");
    }

    #[test]
    fn a_change_before_our_write_is_dropped_since_the_write_rewrote_it() {
        let writes = OwnWrites::default();
        writes.record("ns", "db", Some("5".into()));
        let flight = writes.begin("ns", "db");
        assert!(
            writes.is_echo(&meta("db", "6")),
            "someone else's, just before ours"
        );
        flight.land(Some("7".into()));
        assert!(!writes.take_missed("ns", "db"));
        // Our echo comes after the answer, as usual.
        assert!(writes.is_echo(&meta("db", "7")));
    }

    #[test]
    fn a_failed_or_abandoned_write_hands_back_what_came_meanwhile() {
        let writes = OwnWrites::default();
        writes.record("ns", "db", Some("5".into()));
        let flight = writes.begin("ns", "db");
        assert!(writes.is_echo(&meta("db", "6")));
        flight.land(None);
        assert!(writes.take_missed("ns", "db"));
        assert!(
            writes.is_echo(&meta("db", "5")),
            "the last write we know of is kept"
        );

        let flight = writes.begin("ns", "db");
        assert!(writes.is_echo(&meta("db", "8")));
        drop(flight); // a reconcile cancelled mid-write
        assert!(writes.take_missed("ns", "db"));
        assert!(
            !writes.is_echo(&meta("db", "8")),
            "no write on its way: nothing held"
        );

        let flight = writes.begin("ns", "db");
        flight.land(None);
        assert!(
            !writes.take_missed("ns", "db"),
            "nothing came: nothing to look at"
        );
    }

    #[test]
    fn a_deletion_mark_is_never_held_back() {
        let writes = OwnWrites::default();
        let _flight = writes.begin("ns", "db");
        let mut deleting = meta("db", "9");
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert!(!writes.is_echo(&deleting));
    }
}
