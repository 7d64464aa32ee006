//! 1Password cannot be watched, so it is polled. Each cycle (a change check, every
//! [`Schedule::check`]) costs one `GET /v1/vaults` plus one item listing per vault in use whose
//! `contentVersion` moved, whatever the number of items; the first cycle after each ten poll
//! intervals lists one vault more, the one listed longest ago, in case a server does not bump
//! `contentVersion` (so each vault of V is listed at least every 10 × V poll intervals, and an
//! idle poll interval costs 1.1 requests on average whatever V is). Only items whose
//! listed version or resolution changed are handed to their reconciler, which fetches them (one
//! item GET, plus one request for all of its files).
//!
//! An object whose Secret is made of several items (`spec.items`) is tracked with all of them:
//! their vaults are in use, and a new version of any of them wakes it; with nothing changed
//! that costs nothing more.
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

/// Every tenth poll interval, the vault in use listed longest ago is listed again, whatever
/// `contentVersion` says.
const VERIFY_EVERY: u32 = 10;

/// When the poller looks at Connect: a change check every `check`; what costs requests per
/// target or per vault (see [`Cycle`]) stays once per `poll` or per `verify` (ten poll
/// intervals), however often changes are checked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schedule {
    pub check: Duration,
    pub poll: Duration,
    pub verify: Duration,
}

/// What one check does besides the vault list, as [`Schedule::cycle`] says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cycle {
    /// The first check of a poll interval: targets whose vault has no listing kept ask Connect.
    pub poll: bool,
    /// The first check of ten poll intervals: the vault in use listed longest ago is listed
    /// again whatever its `contentVersion` says.
    pub verify: bool,
}

impl Schedule {
    /// `change_check` is `CHANGE_CHECK_INTERVAL`: zero turns the change check off (one check per
    /// poll interval, as before it existed). Otherwise it is the shortest gap between two
    /// checks: the poll interval is cut into as many equal checks as fit (600 s by 6 s: 100
    /// checks of 6 s; 10 s by 6 s: one of 10 s; 15 s by 6 s: two of 7.5 s), so that each poll
    /// interval begins with a check and none is paid for twice, and a check rarer than the
    /// poll interval, which would make the poll interval a lie, is the poll interval.
    pub fn new(poll_interval: Duration, change_check: Duration) -> Schedule {
        let checks = if change_check.is_zero() {
            1
        } else {
            (poll_interval.as_nanos() / change_check.as_nanos()).clamp(1, u32::MAX as u128) as u32
        };
        Schedule {
            check: poll_interval / checks,
            poll: poll_interval,
            verify: poll_interval.saturating_mul(VERIFY_EVERY),
        }
    }

    /// What the check at `at` does, the one before it having run at `previous` (both counted
    /// from the poller's start): each part comes at the first check of its period.
    pub fn cycle(&self, previous: Duration, at: Duration) -> Cycle {
        let crosses = |period: Duration| {
            let period = period.as_nanos().max(1);
            at.as_nanos() / period > previous.as_nanos() / period
        };
        Cycle {
            poll: crosses(self.poll),
            verify: crosses(self.verify),
        }
    }
}

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
    /// The other items of its Secret (`spec.items`), each seen as the main one is (their own
    /// `outage` and `extra` are unused): a new version of any of them wakes the object.
    pub extra: Vec<Tracked>,
}

impl Tracked {
    /// The vaults its items resolved to.
    fn vaults(&self) -> impl Iterator<Item = &String> {
        std::iter::once(self)
            .chain(&self.extra)
            .filter_map(|t| t.resolved.as_ref().map(|(vault, _)| vault))
    }
}

/// The objects the poller looks after; reconcilers keep it current.
#[derive(Default)]
pub struct Registry {
    /// Shared with the poll in progress: its copy of the registry costs a pointer per target.
    targets: Mutex<HashMap<TargetKey, Arc<Tracked>>>,
}

impl Registry {
    pub fn track(&self, key: TargetKey, tracked: Tracked) {
        self.targets
            .lock()
            .expect("registry lock")
            .insert(key, Arc::new(tracked));
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

    pub(super) fn snapshot(&self) -> Vec<(TargetKey, Arc<Tracked>)> {
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

/// Where the fresh catalog resolves a path: `(vault id, item id, version)`, an error when it
/// does not resolve, `None` when the vault's listing is not cached.
pub type Now = Option<Result<(String, String, u64), ()>>;

/// Should this target be reconciled after a refresh? `now` is the resolution against the fresh
/// catalog (`None`: not cached).
pub fn is_due(tracked: &Tracked, now: Now) -> bool {
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
pub fn is_due_after(tracked: &Tracked, affected: bool, now: Now) -> bool {
    if affected {
        // Once, to report the outage; its reconcile says so and records it.
        !tracked.outage
    } else {
        // Once more when it ends, to report it over.
        tracked.outage || is_due(tracked, now)
    }
}

/// Is the target woken by this cycle? As [`is_due_after`], except that a target whose item is
/// in no listing kept (it never resolved, and no resolved target uses its vault) can only find
/// out by asking Connect: it does so once per poll interval, not at every change check.
pub fn is_woken(tracked: &Tracked, affected: bool, now: Now, cycle: Cycle) -> bool {
    let unlisted = !affected && now.is_none() && tracked.resolved.is_none() && !tracked.outage;
    (cycle.poll || !unlisted) && is_due_after(tracked, affected, now)
}

/// [`is_woken`] for a target and the other items of its Secret (`extra`, in the order of
/// `tracked.extra`): a new version of any item wakes it. The others count only when the poll
/// saw their vaults (an outage wakes the target through its main item, once).
pub fn is_target_woken(
    tracked: &Tracked,
    affected: bool,
    now: Now,
    extra: Vec<Now>,
    cycle: Cycle,
) -> bool {
    is_woken(tracked, affected, now, cycle)
        || (!affected
            && tracked
                .extra
                .iter()
                .zip(extra)
                .any(|(other, now)| is_woken(other, false, now, cycle)))
}

/// One poll cycle. Returns how many targets were handed to their reconcilers.
pub async fn poll_once(ctx: &Context, triggers: &Triggers, cycle: Cycle) -> usize {
    let snapshot = ctx.registry.snapshot();
    ctx.metrics.set_managed_items(snapshot.len());
    if snapshot.is_empty() {
        return 0;
    }
    let started = Instant::now();
    let in_use: HashSet<String> = snapshot
        .iter()
        .flat_map(|(_, t)| t.vaults().cloned())
        .collect();
    let refreshed = ctx.catalog.refresh(&in_use, cycle.verify).await;
    let mut due = 0;
    for (key, tracked) in &snapshot {
        let affected = match &refreshed {
            Err(_) => true,
            Ok(report) => tracked.vaults().any(|vault| report.failed.contains(vault)),
        };
        let now = |path| async move {
            ctx.catalog
                .resolve_cached(path)
                .await
                .map(|r| r.map(|r| (r.vault_id, r.item_id, r.version)).map_err(drop))
        };
        let mut extra = Vec::new();
        let main = if affected {
            None
        } else {
            for other in &tracked.extra {
                extra.push(now(&other.path).await);
            }
            now(&tracked.path).await
        };
        if is_target_woken(tracked, affected, main, extra, cycle) {
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
    if report.listed.is_empty() && report.failed.is_empty() && due == 0 {
        // The usual cycle, every few seconds: not worth a line at `info`.
        tracing::debug!(targets = snapshot.len(), "poll cycle done");
        return due;
    }
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
/// check intervals (a cycle longer than the interval starts the next at once) and a margin for
/// the Connect requests of a cycle (each bounded by a timeout).
pub fn staleness(schedule: Schedule) -> Duration {
    schedule.check.saturating_mul(2) + Duration::from_secs(300)
}

/// Polls as `schedule` says until `shutdown` resolves; `alive` beats after each cycle (see
/// [`staleness`]).
pub async fn run(
    ctx: Arc<Context>,
    triggers: Triggers,
    schedule: Schedule,
    alive: Alive,
    shutdown: impl Future<Output = ()>,
) {
    let mut interval = tokio::time::interval(schedule.check);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; the reconcilers' first pass is the first look at Connect.
    let start = interval.tick().await;
    tokio::pin!(shutdown);
    let mut previous = Duration::ZERO;
    loop {
        // The tick's deadline, not the time it was noticed: checks land on exact multiples of
        // the check interval, so a poll interval begins exactly when it should.
        let at = tokio::select! {
            _ = &mut shutdown => break,
            tick = interval.tick() => tick - start,
        };
        let cycle = schedule.cycle(previous, at);
        previous = at;
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
            extra: Vec::new(),
        }
    }

    fn now(v: &str, i: &str, version: u64) -> Now {
        Some(Ok((v.into(), i.into(), version)))
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// The checks of `schedule` over `span` whose cycle `part` picks, as seconds from the start.
    fn checks(schedule: Schedule, span: Duration, part: fn(Cycle) -> bool) -> Vec<u64> {
        let count = span.as_nanos() / schedule.check.as_nanos();
        let mut previous = Duration::ZERO;
        let mut picked = Vec::new();
        for k in 1..=count as u32 {
            let at = schedule.check * k;
            if part(schedule.cycle(previous, at)) {
                picked.push(at.as_secs());
            }
            previous = at;
        }
        picked
    }

    fn verifications(schedule: Schedule, span: Duration) -> Vec<u64> {
        checks(schedule, span, |c| c.verify)
    }

    #[test]
    fn the_poll_interval_is_cut_into_equal_checks_no_shorter_than_the_check_interval() {
        let check = |poll, change| Schedule::new(secs(poll), change).check;
        assert_eq!(check(600, secs(6)), secs(6));
        // Off: one check per poll interval, as before there was a change check.
        assert_eq!(check(600, Duration::ZERO), secs(600));
        // Rarer than the poll interval: the poll interval.
        assert_eq!(check(2, secs(6)), secs(2));
        // 6 s does not divide 10 s: one check of 10 s, not 1.67 checks per poll interval.
        assert_eq!(check(10, secs(6)), secs(10));
        assert_eq!(check(15, secs(6)), Duration::from_millis(7_500));
        assert_eq!(check(60, secs(7)), Duration::from_nanos(60_000_000_000 / 8));
        assert_eq!(Schedule::new(secs(600), secs(6)).verify, secs(6000));
    }

    #[test]
    fn each_poll_interval_costs_one_vault_list_when_the_check_interval_does_not_fit_twice() {
        for poll in [10, 11, 15, 60, 600] {
            let schedule = Schedule::new(secs(poll), secs(6));
            let span = secs(poll * 20);
            let checks = span.as_nanos() / schedule.check.as_nanos();
            assert_eq!(
                checks % 20,
                0,
                "poll {poll}: a whole number of checks per interval"
            );
            assert!(schedule.check >= secs(6), "poll {poll}");
        }
    }

    #[test]
    fn the_verification_comes_once_per_ten_poll_intervals_however_often_changes_are_checked() {
        // 600 s polls, checks every 6 s: the 1,000th and 2,000th checks.
        let frequent = Schedule::new(secs(600), secs(6));
        assert_eq!(verifications(frequent, secs(12_000)), [6_000, 12_000]);
        // No change check: every tenth poll, as before.
        let polls = Schedule::new(secs(10), Duration::ZERO);
        assert_eq!(verifications(polls, secs(300)), [100, 200, 300]);
        let fitted = Schedule::new(secs(10), secs(7));
        assert_eq!(verifications(fitted, secs(210)), [100, 200]);
    }

    #[test]
    fn a_late_check_that_skipped_past_the_verification_still_does_it_and_only_once() {
        let schedule = Schedule::new(secs(600), secs(6));
        let verify = |previous, at| schedule.cycle(secs(previous), secs(at)).verify;
        // A slow cycle delays the next ticks past 6,000 s.
        assert!(verify(5_994, 6_010));
        assert!(!verify(6_010, 6_016));
        assert!(!verify(0, 6));
        assert!(verify(5_994, 6_000));
    }

    #[test]
    fn each_poll_interval_begins_with_one_check_and_every_check_is_one_without_the_change_check() {
        let frequent = Schedule::new(secs(60), secs(6));
        assert_eq!(checks(frequent, secs(180), |c| c.poll), [60, 120, 180]);
        let off = Schedule::new(secs(60), Duration::ZERO);
        assert_eq!(checks(off, secs(180), |c| c.poll), [60, 120, 180]);
        assert_eq!(checks(off, secs(1_200), |c| c.verify), [600, 1_200]);
    }

    #[test]
    fn a_target_whose_vault_has_no_listing_asks_connect_once_per_poll_interval_not_per_check() {
        let check = Cycle::default();
        let poll = Cycle {
            poll: true,
            verify: false,
        };
        let never_resolved = tracked(None, None);
        assert!(!is_woken(&never_resolved, false, None, check));
        assert!(is_woken(&never_resolved, false, None, poll));
        // It shows up in a listing kept for another target: at once.
        assert!(is_woken(&never_resolved, false, now("v", "i", 1), check));
        // An outage is reported, and its end, at the next check as before.
        assert!(is_woken(&never_resolved, true, None, check));
        let reporting = Tracked {
            outage: true,
            ..never_resolved
        };
        assert!(is_woken(&reporting, false, None, check));
        // A resolved target whose listing is gone finds out at once.
        assert!(is_woken(
            &tracked(Some(("v", "i")), Some(1)),
            false,
            None,
            check
        ));
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

#[cfg(test)]
mod extra_tests {
    use super::*;

    fn seen(item: &str, version: u64) -> Tracked {
        Tracked {
            path: ItemPath::parse(&format!("vaults/v/items/{item}")).unwrap(),
            resolved: Some(("v".into(), item.into())),
            version: Some(version),
            outage: false,
            extra: Vec::new(),
        }
    }

    fn now(item: &str, version: u64) -> Now {
        Some(Ok(("v".into(), item.into(), version)))
    }

    #[test]
    fn a_new_version_of_any_item_of_the_secret_wakes_its_object_and_nothing_else_does() {
        let tracked = Tracked {
            extra: vec![seen("db", 7), seen("cache", 2)],
            ..seen("main", 4)
        };
        let check = Cycle::default();
        let woken = |main, db, cache| {
            is_target_woken(
                &tracked,
                false,
                now("main", main),
                vec![now("db", db), now("cache", cache)],
                check,
            )
        };
        assert!(!woken(4, 7, 2));
        assert!(woken(5, 7, 2));
        assert!(woken(4, 8, 2));
        assert!(woken(4, 7, 3));
        // The other items' vaults are in use, so their listings are kept and refreshed.
        let vaults: Vec<&String> = tracked.vaults().collect();
        assert_eq!(vaults.len(), 3);
        // An outage wakes it once, through the main item, whatever the others say.
        let reporting = Tracked {
            outage: true,
            ..tracked.clone()
        };
        assert!(!is_target_woken(&reporting, true, None, Vec::new(), check));
    }

    #[test]
    fn another_item_that_never_resolved_asks_connect_once_per_poll_interval() {
        let missing = Tracked {
            resolved: None,
            version: None,
            ..seen("db", 0)
        };
        let tracked = Tracked {
            extra: vec![missing],
            ..seen("main", 4)
        };
        let poll = Cycle {
            poll: true,
            verify: false,
        };
        assert!(!is_target_woken(
            &tracked,
            false,
            now("main", 4),
            vec![None],
            Cycle::default()
        ));
        assert!(is_target_woken(
            &tracked,
            false,
            now("main", 4),
            vec![None],
            poll
        ));
        // It appears in a listing kept: at once.
        assert!(is_target_woken(
            &tracked,
            false,
            now("main", 4),
            vec![now("db", 1)],
            Cycle::default()
        ));
    }
}
