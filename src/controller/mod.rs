//! Controllers: reconcilers that keep Secrets and workloads in step with 1Password.
//!
//! - [`item`]: OnePasswordItem -> Secret of the same name (owner reference, status, events).
//! - [`deployment`]: Deployments annotated with `item-path` + `item-name` -> that Secret.
//! - [`poller`]: the poll loop that finds changed items and wakes the two above.
//! - [`restart`]: rolls workloads whose Secrets' data changed.
//! - [`sync`]: the fetch -> build -> apply pipeline the first two share.

pub mod deployment;
pub mod item;
pub mod poller;
pub mod restart;
pub mod sync;

use std::{collections::HashMap, sync::Mutex, time::Duration};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::{
    Api, Client, Resource,
    core::NamespaceResourceScope,
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
    },
};

use crate::{
    catalog::Catalog,
    connect::ItemPath,
    telemetry::{Metrics, ReconcileTimer},
};
use poller::{TargetKey, Tracked};
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
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub catalog: Catalog,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub config: Settings,
    pub registry: poller::Registry,
    failures: Mutex<HashMap<String, u32>>,
    reasons: Mutex<HashMap<String, &'static str>>,
    /// Whether each OnePasswordItem is Ready, for the `ready_items` gauge.
    ready: Mutex<HashMap<String, bool>>,
}

impl Context {
    pub fn new(client: Client, catalog: Catalog, metrics: Metrics, config: Settings) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            catalog,
            metrics,
            config,
            registry: poller::Registry::default(),
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

    pub fn reset_backoff(&self, key: &str) {
        self.failures.lock().expect("failures lock").remove(key);
    }

    /// Tells the poller what a reconcile of `key` saw: what to look after, and whether it
    /// resolved. A path that does not parse is nothing to poll for.
    pub fn track(&self, key: TargetKey, path: &str, outcome: &Result<Synced, SyncError>) {
        let Ok(path) = ItemPath::parse(path) else {
            self.registry.forget(&key);
            return;
        };
        let (resolved, version) = match outcome {
            Ok(s) => (
                Some((s.resolution.vault_id.clone(), s.resolution.item_id.clone())),
                Some(s.resolution.version),
            ),
            Err(_) => (None, None),
        };
        self.registry.track(
            key,
            Tracked {
                path,
                resolved,
                version,
            },
        );
    }

    /// Metrics, backoff and when to look again, after a sync of `key` by `controller`.
    /// Transient failures retry with backoff; problems that a change in 1Password can fix are
    /// looked at again every poll interval; a bad spec waits for the object to change.
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
                if e.is_transient() {
                    Action::requeue(self.backoff(key))
                } else if e.needs_spec_change() {
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
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(note, 1000)),
            action: "Sync".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, object).await {
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

    /// Remembers the last outcome reason of an object without a status of ours (a Deployment);
    /// true when it differs from the one before, so events are sent on transitions only.
    pub fn note_reason(&self, key: &str, reason: &'static str) -> bool {
        let mut reasons = self.reasons.lock().expect("reasons lock");
        reasons.insert(key.to_string(), reason) != Some(reason)
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
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
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
