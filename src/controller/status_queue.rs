//! OnePasswordItem status writes, made after the Secrets they describe.
//!
//! A reconcile hands the status it computed to the [`StatusQueue`] and returns: the Secret, which
//! workloads wait for, never waits behind a status write. Writers ([`run`]) take the queued
//! statuses in order, while no sync is in flight: when many Secrets are due at once (a start, a
//! change to every item) the API server spends its time on the Secrets first and the statuses
//! follow (each OnePasswordItem is written twice either way: its Secret and its status; a
//! status write, server-side apply to a custom resource, costs the API server more than a
//! Secret's, and writing them alongside made the Secrets of a cold start of 1,000 items take
//! 3.2 s against 1.7 s without). So that no status waits for ever behind an endless run of
//! syncs, one writer goes on anyway once the oldest status has waited [`PATIENCE`]. A sync that
//! waits for Connect ([`StatusQueue::aside`]) gives the API server nothing to do, so it does not
//! count meanwhile: a slow Connect does not hold back the statuses.
//!
//! Per object, only the newest status waits: a newer one replaces it, and one object's status is
//! never written by two writers at once, so the last write is the newest status. A write that
//! fails is tried again after a backoff, unless a newer status came meanwhile; a write the API
//! server took only in part (it lagged an update of the CRD) is made whole a second later.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet, VecDeque},
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use super::Context;
use crate::crd::OnePasswordItemStatus;

/// An object's namespace and name.
pub type Key = (String, String);

/// How long a status may wait for the syncs in flight to end before one writer writes anyway.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The statuses waiting to be written, and how many syncs are in flight.
#[derive(Default)]
pub struct StatusQueue {
    state: Mutex<State>,
    /// Something was queued, or a key became free again.
    queued: Notify,
    syncs: AtomicUsize,
    /// The last sync in flight ended.
    quiet: Notify,
}

#[derive(Default)]
struct State {
    /// The newest status of each object not written yet. Keys are shared with `ready` and
    /// `later` (up to one per object at a cold start: a copy each would be a third more).
    pending: HashMap<Arc<Key>, Pending>,
    /// The objects whose status may be written now, in the order they came; an entry whose
    /// status is gone or not marked ready is passed over.
    ready: VecDeque<Arc<Key>>,
    /// The objects being written.
    writing: HashSet<Key>,
    /// Retries, each from its instant.
    later: BinaryHeap<Reverse<(Instant, Arc<Key>)>>,
}

/// A status waiting to be written.
struct Pending {
    status: OnePasswordItemStatus,
    /// Since when one has waited.
    since: Instant,
    /// In `ready`: it may be written now.
    ready: bool,
}

impl State {
    fn make_ready(&mut self, key: &Key) -> bool {
        if self.writing.contains(key) {
            return false;
        }
        let Some((key, pending)) = self.pending.get_key_value(key) else {
            return false;
        };
        if pending.ready {
            return false;
        }
        let key = key.clone();
        self.pending.get_mut(&key).expect("pending").ready = true;
        self.ready.push_back(key);
        true
    }

    /// Moves the retries that are due into `ready`; returns when the next one is due.
    fn promote(&mut self, now: Instant) -> Option<Instant> {
        while let Some(Reverse((at, _))) = self.later.peek() {
            if *at > now {
                return Some(*at);
            }
            let Reverse((_, key)) = self.later.pop().expect("peeked");
            self.make_ready(&key);
        }
        None
    }

    /// Since when the first status that may be written now has waited.
    fn oldest(&mut self) -> Option<Instant> {
        while let Some(key) = self.ready.front() {
            match self.pending.get(key.as_ref()) {
                Some(p) if p.ready => return Some(p.since),
                _ => {
                    self.ready.pop_front();
                }
            }
        }
        None
    }

    fn take(&mut self) -> Option<(Key, OnePasswordItemStatus)> {
        while let Some(key) = self.ready.pop_front() {
            if !self.pending.get(key.as_ref()).is_some_and(|p| p.ready) {
                continue;
            }
            let (key, pending) = self.pending.remove_entry(key.as_ref()).expect("pending");
            let key = Arc::unwrap_or_clone(key);
            self.writing.insert(key.clone());
            return Some((key, pending.status));
        }
        None
    }
}

/// How a write ended, for [`StatusQueue::finish`].
#[derive(Debug, PartialEq)]
pub enum Written {
    Done,
    /// Try again after this long, unless a newer status came.
    Retry(Duration),
}

/// A sync in flight, until dropped.
pub struct Sync<'a>(&'a StatusQueue);

impl Drop for Sync<'_> {
    fn drop(&mut self) {
        self.0.leave();
    }
}

/// A sync in flight that waits for Connect, not the API server: not counted until dropped.
pub struct Aside<'a>(&'a StatusQueue);

impl Drop for Aside<'_> {
    fn drop(&mut self) {
        self.0.syncs.fetch_add(1, Ordering::AcqRel);
    }
}

impl StatusQueue {
    /// Queues `status` for the object, replacing any not yet written.
    pub fn push(&self, key: Key, status: OnePasswordItemStatus) {
        let mut state = self.state.lock().expect("status queue lock");
        match state.pending.get_mut(&key) {
            // It keeps its place and its wait.
            Some(pending) => pending.status = status,
            None => {
                let pending = Pending {
                    status,
                    since: Instant::now(),
                    ready: false,
                };
                state.pending.insert(Arc::new(key.clone()), pending);
            }
        }
        if state.make_ready(&key) {
            drop(state);
            self.queued.notify_one();
        }
    }

    /// The object is gone: its status is not written.
    pub fn forget(&self, key: &Key) {
        self.state
            .lock()
            .expect("status queue lock")
            .pending
            .remove(key);
    }

    /// Marks a sync in flight until the guard is dropped.
    pub fn sync(&self) -> Sync<'_> {
        self.syncs.fetch_add(1, Ordering::AcqRel);
        Sync(self)
    }

    /// Within a sync (it must hold [`StatusQueue::sync`]), a wait for Connect: the sync does
    /// not count until the guard is dropped, so one slow Connect request does not hold back
    /// every status.
    pub fn aside(&self) -> Aside<'_> {
        self.leave();
        Aside(self)
    }

    fn leave(&self) {
        if self.syncs.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.quiet.notify_waiters();
        }
    }

    /// The next status to write, as soon as there is one.
    pub async fn next(&self) -> (Key, OnePasswordItemStatus) {
        loop {
            let queued = self.queued.notified();
            tokio::pin!(queued);
            // Registered before looking, so a push between the look and the wait is not missed.
            queued.as_mut().enable();
            let next_retry = {
                let mut state = self.state.lock().expect("status queue lock");
                let next_retry = state.promote(Instant::now());
                if let Some(job) = state.take() {
                    if !state.ready.is_empty() {
                        // Another writer may take the next one.
                        self.queued.notify_one();
                    }
                    return job;
                }
                next_retry
            };
            match next_retry {
                Some(at) => {
                    tokio::select! {
                        _ = queued => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => queued.await,
            }
        }
    }

    /// Waits until no sync is in flight or, when `patient` is false, until the oldest status
    /// that may be written has waited [`PATIENCE`].
    pub async fn turn(&self, patient: bool) {
        loop {
            let quiet = self.quiet.notified();
            tokio::pin!(quiet);
            quiet.as_mut().enable();
            if self.syncs.load(Ordering::Acquire) == 0 {
                return;
            }
            let overdue = if patient {
                None
            } else {
                self.state
                    .lock()
                    .expect("status queue lock")
                    .oldest()
                    .map(|since| since + PATIENCE)
            };
            match overdue {
                Some(at) if at <= Instant::now() => return,
                Some(at) => {
                    tokio::select! {
                        _ = quiet => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None if patient => quiet.await,
                // Nothing to write yet: a status queued from now on is overdue no sooner than
                // `PATIENCE` from now.
                None => {
                    tokio::select! {
                        _ = quiet => {}
                        _ = tokio::time::sleep(PATIENCE) => {}
                    }
                }
            }
        }
    }

    /// The write of `key`'s `status` (from [`StatusQueue::next`]) ended.
    pub fn finish(&self, key: Key, status: OnePasswordItemStatus, written: Written) {
        let mut state = self.state.lock().expect("status queue lock");
        state.writing.remove(&key);
        if let Written::Retry(after) = written {
            // A newer status replaces the one that failed.
            if !state.pending.contains_key(&key) {
                let key = Arc::new(key);
                let pending = Pending {
                    status,
                    since: Instant::now(),
                    ready: false,
                };
                state.pending.insert(key.clone(), pending);
                state.later.push(Reverse((Instant::now() + after, key)));
                drop(state);
                // A writer waiting without a deadline learns of the retry.
                self.queued.notify_one();
                return;
            }
        }
        if state.make_ready(&key) {
            drop(state);
            self.queued.notify_one();
        }
    }
}

/// Writes what is queued now, one status after another (tests: what the writers would do).
#[cfg(test)]
pub async fn flush(ctx: &Context) {
    loop {
        let job = ctx.statuses.state.lock().expect("status queue lock").take();
        let Some((key, status)) = job else { return };
        write(ctx, key, status).await;
    }
}

/// Writes one status taken from the queue and tells the queue how it went.
async fn write(ctx: &Context, key: Key, status: OnePasswordItemStatus) {
    let written = super::item::write_queued_status(ctx, &key, &status).await;
    ctx.statuses.finish(key, status, written);
}

/// Writes the queued statuses until `shutdown`: `writers` writers, while no sync is in flight
/// (the first also once a status is overdue, see [`PATIENCE`]). What is still queued then is
/// written by the next start's reconciles, which find each status behind.
pub async fn run(ctx: Arc<Context>, writers: usize, shutdown: impl Future<Output = ()>) {
    let one = |first: bool| {
        let ctx = ctx.clone();
        async move {
            loop {
                ctx.statuses.turn(!first).await;
                let (key, status) = ctx.statuses.next().await;
                // The wait for a status may have outlasted the quiet.
                ctx.statuses.turn(!first).await;
                write(&ctx, key, status).await;
            }
        }
    };
    let all = futures::future::join_all((0..writers.max(1)).map(|i| one(i == 0)));
    tokio::select! {
        _ = all => {}
        _ = shutdown => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        ("apps".into(), name.into())
    }

    fn status(item: &str) -> OnePasswordItemStatus {
        OnePasswordItemStatus {
            item_id: Some(item.into()),
            ..Default::default()
        }
    }

    async fn next_now(queue: &StatusQueue) -> Option<(Key, OnePasswordItemStatus)> {
        tokio::time::timeout(Duration::from_millis(1), queue.next())
            .await
            .ok()
    }

    #[tokio::test(start_paused = true)]
    async fn statuses_come_in_order_and_a_newer_one_replaces_the_one_waiting() {
        let queue = StatusQueue::default();
        queue.push(key("a"), status("1"));
        queue.push(key("b"), status("1"));
        queue.push(key("a"), status("2"));
        assert_eq!(queue.state.lock().unwrap().pending.len(), 2);
        assert_eq!(next_now(&queue).await, Some((key("a"), status("2"))));
        assert_eq!(next_now(&queue).await, Some((key("b"), status("1"))));
        assert_eq!(next_now(&queue).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn an_object_being_written_is_not_taken_again_until_its_write_ends() {
        let queue = StatusQueue::default();
        queue.push(key("a"), status("1"));
        let (k, s) = next_now(&queue).await.unwrap();
        // A newer status while the first is on its way: it waits for it.
        queue.push(key("a"), status("2"));
        assert_eq!(next_now(&queue).await, None);
        queue.finish(k, s, Written::Done);
        assert_eq!(next_now(&queue).await, Some((key("a"), status("2"))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_write_is_tried_again_after_its_delay_unless_a_newer_status_came() {
        let queue = StatusQueue::default();
        queue.push(key("a"), status("1"));
        let (k, s) = next_now(&queue).await.unwrap();
        queue.finish(k, s, Written::Retry(Duration::from_secs(5)));
        assert_eq!(next_now(&queue).await, None);
        tokio::time::advance(Duration::from_secs(5)).await;
        let (k, s) = next_now(&queue).await.unwrap();
        assert_eq!((&k, &s), (&key("a"), &status("1")));

        queue.push(key("a"), status("2"));
        queue.finish(k, s, Written::Retry(Duration::from_secs(5)));
        assert_eq!(next_now(&queue).await, Some((key("a"), status("2"))));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            next_now(&queue).await,
            None,
            "the old status is not written"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_writer_wakes_for_a_retry_that_becomes_due() {
        let queue = Arc::new(StatusQueue::default());
        queue.push(key("a"), status("1"));
        let (k, s) = next_now(&queue).await.unwrap();
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.next().await }
        });
        tokio::task::yield_now().await;
        queue.finish(k, s, Written::Retry(Duration::from_secs(1)));
        let got = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(got, (key("a"), status("1")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_forgotten_object_is_not_written() {
        let queue = StatusQueue::default();
        queue.push(key("a"), status("1"));
        queue.forget(&key("a"));
        assert_eq!(next_now(&queue).await, None);
        assert!(queue.state.lock().unwrap().pending.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn an_object_forgotten_and_queued_again_is_written_once_and_never_while_being_written() {
        let queue = StatusQueue::default();
        queue.push(key("a"), status("1"));
        queue.forget(&key("a"));
        queue.push(key("a"), status("2"));
        queue.push(key("b"), status("1"));
        assert_eq!(next_now(&queue).await, Some((key("a"), status("2"))));
        // Queued while its write is on its way: it waits for the write's end.
        queue.push(key("a"), status("3"));
        assert_eq!(next_now(&queue).await, Some((key("b"), status("1"))));
        assert_eq!(next_now(&queue).await, None);
        queue.finish(key("a"), status("2"), Written::Done);
        assert_eq!(next_now(&queue).await, Some((key("a"), status("3"))));
        assert_eq!(next_now(&queue).await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn writers_wait_for_the_last_sync_in_flight() {
        let queue = Arc::new(StatusQueue::default());
        let first = queue.sync();
        let second = queue.sync();
        queue.push(key("a"), status("1"));
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { queue.turn(true).await }
        });
        drop(first);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(second);
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("quiet")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn one_writer_goes_on_once_a_status_has_waited_its_patience_behind_syncs() {
        let queue = Arc::new(StatusQueue::default());
        let _busy = queue.sync();
        let turn = |patient| {
            let queue = queue.clone();
            tokio::spawn(async move { queue.turn(patient).await })
        };
        // Nothing to write: no reason to go on.
        let idle = turn(false);
        tokio::time::sleep(PATIENCE * 2).await;
        assert!(!idle.is_finished());
        idle.abort();

        queue.push(key("a"), status("1"));
        tokio::time::sleep(PATIENCE / 2).await;
        let (impatient, patient) = (turn(false), turn(true));
        tokio::time::sleep(PATIENCE / 2 - Duration::from_millis(10)).await;
        assert!(!impatient.is_finished(), "not yet overdue");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(impatient.is_finished(), "overdue");
        // A newer status of the same object keeps its place in the line, and its age.
        queue.push(key("a"), status("2"));
        assert!(!patient.is_finished());
        tokio::time::timeout(Duration::from_millis(1), queue.turn(false))
            .await
            .expect("still overdue");
    }

    #[tokio::test(start_paused = true)]
    async fn a_sync_waiting_for_connect_does_not_hold_the_writers_back() {
        let queue = StatusQueue::default();
        let sync = queue.sync();
        let aside = queue.aside();
        tokio::time::timeout(Duration::from_millis(1), queue.turn(true))
            .await
            .expect("only a wait for Connect in flight");
        drop(aside);
        assert!(
            tokio::time::timeout(Duration::from_millis(1), queue.turn(true))
                .await
                .is_err(),
            "back to the API server"
        );
        drop(sync);
        tokio::time::timeout(Duration::from_millis(1), queue.turn(true))
            .await
            .expect("done");
    }
}
