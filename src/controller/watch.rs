//! The watches' plumbing: which Secrets are watched and how, which watch events are dropped
//! before they wake a reconcile (our own writes' echoes, updates that change nothing a reconcile
//! reads), and what is forgotten when an object goes.

use std::{collections::HashMap, sync::Mutex};

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
};

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
        crate::vocabulary::MANAGED_LABEL,
        crate::vocabulary::MANAGED_VALUE
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

    /// Whether this process wrote `name` (and has not forgotten it since).
    pub fn knows(&self, namespace: &str, name: &str) -> bool {
        self.0
            .lock()
            .expect("own writes lock")
            .contains_key(&(namespace.to_string(), name.to_string()))
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
