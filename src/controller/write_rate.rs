//! Notices a Secret that we keep writing again with the same item version: someone else (another
//! controller, a policy engine, a GitOps tool pruning it) keeps changing or deleting what we
//! wrote, and we keep putting it back. Two writers that disagree never converge, so instead of
//! fighting, the operator stops writing that Secret for a while, doubles the pause each time the
//! fight resumes, and says so (`WriteConflict`). A write of a new item version is never a
//! rewrite: only the same version (item path and version) written again counts.
//!
//! Pure bookkeeping: the caller passes the time, so the rules are unit-tested without waiting.

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, Instant},
};

/// How far back rewrites are counted.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Rewrites of one version within [`WINDOW`] that are still a repair, not a fight: a few hand
/// edits, a label changed on the OnePasswordItem, a deleted Secret made again.
pub const REWRITES_ALLOWED: usize = 4;
/// The first pause; each later one within [`CALM`] doubles, up to [`MAX_PAUSE`].
pub const FIRST_PAUSE: Duration = Duration::from_secs(30);
pub const MAX_PAUSE: Duration = Duration::from_secs(15 * 60);
/// After this long without a rewrite, a Secret's history is forgotten.
pub const CALM: Duration = Duration::from_secs(30 * 60);

/// The Secret must not be written now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paused {
    /// How long until it may be written again.
    pub remaining: Duration,
    /// The same version written this many times in a row before the pause began.
    pub rewrites: usize,
}

/// What is kept of the writes of one Secret. Most Secrets are written once per item version
/// and never rewritten: for them, two numbers and a time.
#[derive(Debug)]
struct History {
    /// The item path and version of our last write, hashed ([`written`]).
    last: u64,
    last_write: Instant,
    /// Kept once the Secret has been rewritten.
    fight: Option<Box<Fight>>,
}

/// The rewrites of one Secret and the pauses they caused.
#[derive(Debug, Default)]
struct Fight {
    /// When the same version was written again, within [`WINDOW`].
    rewrites: VecDeque<Instant>,
    last_rewrite: Option<Instant>,
    /// Pauses since the Secret was last calm.
    strikes: u32,
    paused_until: Option<(Instant, usize)>,
}

/// The hash of a write of version `version` of `item_path`: the same for the same pair only
/// (a collision of two paths of one Secret is a 2^-64 chance).
fn written(item_path: &str, version: u64) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    (item_path, version).hash(&mut hasher);
    hasher.finish()
}

/// The writes of each Secret, as far as a fight can be told from them.
#[derive(Default)]
pub struct WriteRate {
    secrets: Mutex<super::ByNamespace<History>>,
}

impl WriteRate {
    /// Whether writing version `version` of item `item_path` to the Secret may go ahead at `now`.
    /// A rewrite past the allowance starts a pause and is refused.
    pub fn admit(
        &self,
        namespace: &str,
        name: &str,
        item_path: &str,
        version: u64,
        now: Instant,
    ) -> Result<(), Paused> {
        let mut secrets = self.secrets.lock().expect("write rate lock");
        let Some(h) = secrets.get_mut(namespace).and_then(|s| s.get_mut(name)) else {
            return Ok(());
        };
        let rewrite = h.last == written(item_path, version);
        let Some(f) = h.fight.as_deref_mut() else {
            return Ok(());
        };
        if let Some((until, rewrites)) = f.paused_until {
            if now < until {
                return Err(Paused {
                    remaining: until - now,
                    rewrites,
                });
            }
            f.paused_until = None;
        }
        if f.last_rewrite
            .is_some_and(|t| now.duration_since(t) >= CALM)
        {
            f.strikes = 0;
        }
        if !rewrite {
            return Ok(());
        }
        while f
            .rewrites
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            f.rewrites.pop_front();
        }
        // Once a Secret has been paused, one rewrite per window is let through to see whether
        // the other writer stopped; the next one pauses it again, for twice as long.
        let allowed = if f.strikes == 0 { REWRITES_ALLOWED } else { 1 };
        if f.rewrites.len() < allowed {
            return Ok(());
        }
        f.strikes += 1;
        let pause = FIRST_PAUSE
            .saturating_mul(1 << (f.strikes - 1).min(16))
            .min(MAX_PAUSE);
        let rewrites = f.rewrites.len() + 1;
        f.rewrites.clear();
        f.paused_until = Some((now + pause, rewrites));
        Err(Paused {
            remaining: pause,
            rewrites,
        })
    }

    /// Records a write of version `version` of `item_path` to the Secret at `now`.
    pub fn record(&self, namespace: &str, name: &str, item_path: &str, version: u64, now: Instant) {
        let mut secrets = self.secrets.lock().expect("write rate lock");
        let last = written(item_path, version);
        if let Some(h) = secrets.get_mut(namespace).and_then(|s| s.get_mut(name)) {
            if h.last == last {
                let f = h.fight.get_or_insert_default();
                f.rewrites.push_back(now);
                f.last_rewrite = Some(now);
            } else {
                h.last = last;
                if let Some(f) = h.fight.as_deref_mut() {
                    f.rewrites.clear();
                }
            }
            h.last_write = now;
            return;
        }
        // Memory stays bounded by the Secrets written lately.
        let remembered = |h: &History| {
            now.duration_since(h.last_write) < CALM
                || h.fight
                    .as_ref()
                    .and_then(|f| f.paused_until)
                    .is_some_and(|(until, _)| until > now)
        };
        secrets.retain(|_, names| {
            names.retain(|_, h| remembered(h));
            !names.is_empty()
        });
        let history = History {
            last,
            last_write: now,
            fight: None,
        };
        secrets
            .entry(namespace.into())
            .or_default()
            .insert(name.into(), history);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "vaults/v/items/i";

    /// Writes version `version` every `every` until a write is refused; the writes made.
    fn write_until_paused(
        rate: &WriteRate,
        now: &mut Instant,
        version: u64,
        every: Duration,
    ) -> (usize, Paused) {
        let mut writes = 0;
        loop {
            match rate.admit("ns", "db", PATH, version, *now) {
                Ok(()) => {
                    rate.record("ns", "db", PATH, version, *now);
                    writes += 1;
                }
                Err(paused) => return (writes, paused),
            }
            *now += every;
            assert!(writes < 1000, "never paused");
        }
    }

    #[test]
    fn new_versions_are_never_rewrites_however_often_they_come() {
        let rate = WriteRate::default();
        let mut now = Instant::now();
        for version in 1..100 {
            assert_eq!(rate.admit("ns", "db", PATH, version, now), Ok(()));
            rate.record("ns", "db", PATH, version, now);
            now += Duration::from_millis(100);
        }
        // Another item at the same version number is not a rewrite either.
        assert_eq!(rate.admit("ns", "db", "vaults/v/items/j", 99, now), Ok(()));
    }

    #[test]
    fn a_few_repairs_go_through_but_a_fight_is_paused_for_longer_each_time() {
        let rate = WriteRate::default();
        let mut now = Instant::now();
        let second = Duration::from_secs(1);
        let (writes, paused) = write_until_paused(&rate, &mut now, 7, second);
        // The first write and REWRITES_ALLOWED rewrites, then a pause.
        assert_eq!(writes, 1 + REWRITES_ALLOWED);
        assert_eq!(paused.remaining, FIRST_PAUSE);
        assert_eq!(paused.rewrites, REWRITES_ALLOWED + 1);
        // While paused, nothing is written, not even a new version.
        now += second;
        let refused = rate.admit("ns", "db", PATH, 8, now).unwrap_err();
        assert_eq!(refused.remaining, FIRST_PAUSE - second);
        // After the pause one rewrite goes through; the next pauses for twice as long.
        now += FIRST_PAUSE;
        let (writes, paused) = write_until_paused(&rate, &mut now, 7, second);
        assert_eq!((writes, paused.remaining), (1, 2 * FIRST_PAUSE));
        now += 2 * FIRST_PAUSE;
        let (writes, paused) = write_until_paused(&rate, &mut now, 7, second);
        assert_eq!((writes, paused.remaining), (1, 4 * FIRST_PAUSE));
        // The pause never exceeds MAX_PAUSE.
        for _ in 0..10 {
            now += paused.remaining.max(MAX_PAUSE);
            write_until_paused(&rate, &mut now, 7, second);
        }
        assert!(rate.admit("ns", "db", PATH, 7, now).unwrap_err().remaining <= MAX_PAUSE);
    }

    #[test]
    fn repairs_spread_out_in_time_never_pause_and_calm_forgets_past_fights() {
        let rate = WriteRate::default();
        let mut now = Instant::now();
        for _ in 0..50 {
            assert_eq!(rate.admit("ns", "db", PATH, 3, now), Ok(()));
            rate.record("ns", "db", PATH, 3, now);
            now += WINDOW / REWRITES_ALLOWED as u32;
        }
        let (_, paused) = write_until_paused(&rate, &mut now, 3, Duration::from_secs(1));
        assert_eq!(paused.remaining, FIRST_PAUSE);
        // Long after the fight, the allowance is back in full.
        now += CALM + FIRST_PAUSE;
        let (writes, _) = write_until_paused(&rate, &mut now, 3, Duration::from_secs(1));
        assert_eq!(writes, REWRITES_ALLOWED);
    }

    #[test]
    fn each_secret_has_its_own_count() {
        let rate = WriteRate::default();
        let mut now = Instant::now();
        write_until_paused(&rate, &mut now, 1, Duration::from_secs(1));
        assert!(rate.admit("ns", "db", PATH, 1, now).is_err());
        assert_eq!(rate.admit("ns", "other", PATH, 1, now), Ok(()));
        assert_eq!(rate.admit("other-ns", "db", PATH, 1, now), Ok(()));
    }
}
