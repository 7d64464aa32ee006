//! 1Password cannot be watched, so it is polled. Each cycle costs one `GET /v1/vaults` plus one
//! item listing per vault in use whose `contentVersion` moved (every vault in use on every
//! tenth cycle, in case a server does not bump it), whatever the number of items. Only items
//! whose listed version or resolution changed are handed to their reconciler, which fetches
//! them (one item GET, plus one request for all of its files).
//!
//! A reconcile whose Secret holds the listed version asks Connect nothing, so a poll that
//! cannot refresh a vault (Connect down, token refused) must tell the objects that depend on
//! it: it wakes them once when the failure starts and once when it ends, and their reconcile
//! reads the failure from the catalog ([`crate::catalog::Catalog::refresh_failure`]).

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::channel::mpsc::UnboundedSender;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::reflector::ObjectRef;

use super::Context;
use crate::{connect::ItemPath, crd::OnePasswordItem, http::Alive};

/// Every tenth cycle lists every vault in use, whatever `contentVersion` says.
const FULL_LISTING_EVERY: u64 = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TargetKind {
    Item,
    Deployment,
}

/// An object that asked for a Secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetKey {
    pub kind: TargetKind,
    pub namespace: String,
    pub name: String,
}

/// What its last reconcile saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracked {
    pub path: ItemPath,
    /// `(vault id, item id)` when the path resolved.
    pub resolved: Option<(String, String)>,
    /// The listed version the reconcile looked at.
    pub version: Option<u64>,
    /// Its reconcile reported that Connect could not be asked (down, or the token refused), or
    /// that the last poll could not refresh its vault.
    pub outage: bool,
}

/// The objects the poller looks after; reconcilers keep it current.
#[derive(Default)]
pub struct Registry {
    targets: Mutex<HashMap<TargetKey, Tracked>>,
}

impl Registry {
    pub fn track(&self, key: TargetKey, tracked: Tracked) {
        self.targets
            .lock()
            .expect("registry lock")
            .insert(key, tracked);
    }

    pub fn forget(&self, key: &TargetKey) {
        self.targets.lock().expect("registry lock").remove(key);
    }

    pub fn len(&self) -> usize {
        self.targets.lock().expect("registry lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn keys(&self) -> Vec<TargetKey> {
        self.targets
            .lock()
            .expect("registry lock")
            .keys()
            .cloned()
            .collect()
    }

    pub(super) fn snapshot(&self) -> Vec<(TargetKey, Tracked)> {
        let targets = self.targets.lock().expect("registry lock");
        let mut all: Vec<_> = targets
            .iter()
            .map(|(k, t)| (k.clone(), t.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// Channels into the controllers, one per watched scope (`None`: all namespaces).
#[derive(Default)]
pub struct Triggers {
    pub items: HashMap<Option<String>, UnboundedSender<ObjectRef<OnePasswordItem>>>,
    pub deployments: HashMap<Option<String>, UnboundedSender<ObjectRef<Deployment>>>,
}

impl Triggers {
    fn send(&self, key: &TargetKey) {
        fn pick<'a, T>(
            map: &'a HashMap<Option<String>, UnboundedSender<T>>,
            ns: &str,
        ) -> Option<&'a UnboundedSender<T>> {
            map.get(&Some(ns.to_string())).or_else(|| map.get(&None))
        }
        match key.kind {
            TargetKind::Item => {
                if let Some(tx) = pick(&self.items, &key.namespace) {
                    let _ = tx.unbounded_send(ObjectRef::new(&key.name).within(&key.namespace));
                }
            }
            TargetKind::Deployment => {
                if let Some(tx) = pick(&self.deployments, &key.namespace) {
                    let _ = tx.unbounded_send(ObjectRef::new(&key.name).within(&key.namespace));
                }
            }
        }
    }
}

/// Should this target be reconciled after a refresh? `now` is the resolution against the fresh
/// catalog (`None`: not cached).
pub fn is_due(tracked: &Tracked, now: Option<Result<(String, String, u64), ()>>) -> bool {
    match now {
        Some(Ok((vault, item, version))) => {
            tracked.resolved.as_ref() != Some(&(vault, item)) || tracked.version != Some(version)
        }
        // It resolved before and does not now: its reconciler reports why.
        Some(Err(())) => tracked.resolved.is_some(),
        // The vault's listing is not in the catalog: it was dropped (deleted or revoked), or
        // the target never resolved. Either way its reconciler finds out.
        None => true,
    }
}

/// Should this target be reconciled after a poll? `affected`: the poll could not refresh the
/// vault it resolved to (or the vault list). `now` as in [`is_due`], when the poll succeeded
/// for it.
pub fn is_due_after(
    tracked: &Tracked,
    affected: bool,
    now: Option<Result<(String, String, u64), ()>>,
) -> bool {
    if affected {
        // Once, to report the outage; its reconcile says so and records it.
        !tracked.outage
    } else {
        // Once more when it ends, to report it over.
        tracked.outage || is_due(tracked, now)
    }
}

/// One poll cycle. Returns how many targets were handed to their reconcilers.
pub async fn poll_once(ctx: &Context, triggers: &Triggers, cycle: u64) -> usize {
    let snapshot = ctx.registry.snapshot();
    ctx.metrics.set_managed_items(snapshot.len());
    if snapshot.is_empty() {
        return 0;
    }
    let started = Instant::now();
    let in_use: HashSet<String> = snapshot
        .iter()
        .filter_map(|(_, t)| t.resolved.as_ref().map(|(v, _)| v.clone()))
        .collect();
    let full = cycle > 0 && cycle.is_multiple_of(FULL_LISTING_EVERY);
    let refreshed = ctx.catalog.refresh(&in_use, full).await;
    let mut due = 0;
    for (key, tracked) in &snapshot {
        let affected = match &refreshed {
            Err(_) => true,
            Ok(report) => tracked
                .resolved
                .as_ref()
                .is_some_and(|(vault, _)| report.failed.contains(vault)),
        };
        let now = if affected {
            None
        } else {
            ctx.catalog
                .resolve_cached(&tracked.path)
                .await
                .map(|r| r.map(|r| (r.vault_id, r.item_id, r.version)).map_err(drop))
        };
        if is_due_after(tracked, affected, now) {
            triggers.send(key);
            due += 1;
        }
    }
    let report = match refreshed {
        Ok(report) => report,
        Err(e) => {
            tracing::warn!(reason = e.reason(), error = %e, due, "poll: cannot refresh from Connect; Secrets stay as they are");
            ctx.metrics.poll_cycle(started.elapsed(), 1);
            return due;
        }
    };
    for vault in &report.failed {
        tracing::warn!(vault = %vault, "poll: cannot list the vault's items; its Secrets stay as they are");
    }
    let requests = 1 + report.listed.len();
    ctx.metrics.poll_cycle(started.elapsed(), requests as u64);
    tracing::info!(
        targets = snapshot.len(),
        vaults_listed = report.listed.len(),
        vaults_unchanged = report.unchanged,
        vaults_failed = report.failed.len(),
        due,
        connect_requests = requests,
        "poll cycle done"
    );
    due
}

/// How long the poller may go without finishing a cycle before the liveness probe fails: two
/// intervals (a cycle longer than the interval starts the next at once) and a margin for the
/// Connect requests of a cycle (each bounded by a timeout).
pub fn staleness(poll_interval: Duration) -> Duration {
    poll_interval.saturating_mul(2) + Duration::from_secs(300)
}

/// Polls every `ctx.config.poll_interval` until `shutdown` resolves; `alive` beats after each
/// cycle (see [`staleness`]).
pub async fn run(
    ctx: Arc<Context>,
    triggers: Triggers,
    alive: Alive,
    shutdown: impl Future<Output = ()>,
) {
    let mut interval = tokio::time::interval(ctx.config.poll_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; the reconcilers' first pass is the first look at Connect.
    interval.tick().await;
    tokio::pin!(shutdown);
    let mut cycle: u64 = 0;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = interval.tick() => {}
        }
        cycle += 1;
        poll_once(&ctx, &triggers, cycle).await;
        alive.beat();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracked(resolved: Option<(&str, &str)>, version: Option<u64>) -> Tracked {
        Tracked {
            path: ItemPath::parse("vaults/v/items/i").unwrap(),
            resolved: resolved.map(|(a, b)| (a.into(), b.into())),
            version,
            outage: false,
        }
    }

    fn now(v: &str, i: &str, version: u64) -> Option<Result<(String, String, u64), ()>> {
        Some(Ok((v.into(), i.into(), version)))
    }

    #[test]
    fn an_unchanged_item_is_not_due() {
        assert!(!is_due(
            &tracked(Some(("v", "i")), Some(3)),
            now("v", "i", 3)
        ));
    }

    #[test]
    fn a_new_version_or_a_new_resolution_is_due() {
        assert!(is_due(
            &tracked(Some(("v", "i")), Some(3)),
            now("v", "i", 4)
        ));
        // A title now points at another item (renamed, or an older duplicate appeared).
        assert!(is_due(
            &tracked(Some(("v", "i")), Some(3)),
            now("v", "j", 3)
        ));
    }

    #[test]
    fn an_item_that_disappears_is_due_once_and_a_failed_one_waits_until_it_resolves() {
        assert!(is_due(&tracked(Some(("v", "i")), Some(3)), Some(Err(()))));
        assert!(!is_due(&tracked(None, None), Some(Err(()))));
        assert!(is_due(&tracked(None, None), now("v", "i", 1)));
        assert!(is_due(&tracked(None, None), None));
        assert!(is_due(&tracked(Some(("v", "i")), Some(1)), None));
    }

    #[test]
    fn a_failed_poll_wakes_each_affected_target_once_and_again_once_when_it_ends() {
        let synced = tracked(Some(("v", "i")), Some(3));
        let reporting = Tracked {
            outage: true,
            ..synced.clone()
        };
        // The poll could not refresh its vault: woken to report it, then left alone.
        assert!(is_due_after(&synced, true, None));
        assert!(!is_due_after(&reporting, true, None));
        // The poll works again: woken once to report the recovery, even with nothing changed.
        assert!(is_due_after(&reporting, false, now("v", "i", 3)));
        assert!(!is_due_after(&synced, false, now("v", "i", 3)));
        assert!(is_due_after(&synced, false, now("v", "i", 4)));
    }
}
