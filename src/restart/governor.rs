//! Governance of the restarts the operator causes, pure: a restart that [`super::rule`] asks
//! for still waits until
//! - the changed Secrets have been quiet for the debounce window (`RESTART_DEBOUNCE`), so that
//!   changes made close together restart once;
//! - no Secret it is for is flapping: one that changed more than `RESTART_BREAKER_CHANGES`
//!   times within `RESTART_BREAKER_PERIOD` stops causing restarts (its data still follows the
//!   item) until it has been stable for that period;
//! - no other workload that was restarted for the same change has a failed rollout (its
//!   Deployment's progress deadline exceeded, or not done within `RESTART_ROLLOUT_TIMEOUT`):
//!   the change is then blocked, until the item changes again, the failed workload recovers
//!   or goes away, or someone sets `operator.1password.io/resume-restarts` on the Secret to the
//!   change's fingerprint (the `RolloutBlocked` event gives the command);
//! - fewer than `RESTART_BUDGET` workloads restarted by the operator are still rolling, in the
//!   cluster and in the workload's namespace (`RESTART_BUDGET_PER_NAMESPACE`).
//!
//! What waits is not kept anywhere: a waiting workload's record still holds the old data, so
//! the rule asks for its restart again after an operator restart, and "rolling" and "failed"
//! are read from the workloads' own status. The queue survives the operator by construction.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};

use super::rule::DigestMap;

/// The knobs, as `Args` reads them. `Default` is the production default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Governance {
    /// A changed Secret must have been quiet this long before workloads restart for it.
    pub debounce: Duration,
    /// Workloads restarted by the operator that may be rolling at once, in the cluster and in
    /// one namespace (`None`: no limit).
    pub budget: Option<usize>,
    pub budget_per_namespace: Option<usize>,
    /// A rollout not done this long after the operator saw it start counts as failed.
    pub rollout_timeout: Duration,
    /// More changes than this within `breaker_period` pause restarts for the Secret (`0`: off).
    pub breaker_changes: usize,
    pub breaker_period: Duration,
}

impl Default for Governance {
    fn default() -> Self {
        Governance {
            debounce: Duration::from_secs(10),
            budget: Some(10),
            budget_per_namespace: Some(3),
            rollout_timeout: Duration::from_secs(600),
            breaker_changes: 5,
            breaker_period: Duration::from_secs(600),
        }
    }
}

impl Governance {
    /// No governance: every restart at once, as the official operator does.
    pub fn off() -> Self {
        Governance {
            debounce: Duration::ZERO,
            budget: None,
            budget_per_namespace: None,
            rollout_timeout: Duration::from_secs(600),
            breaker_changes: 0,
            breaker_period: Duration::ZERO,
        }
    }
}

/// Where a workload's rollout is, read from its status the way `kubectl rollout status` reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rollout {
    Done,
    Rolling,
    /// Why it failed: `ProgressDeadlineExceeded`, or `RolloutTimeout` (set by the controller).
    Failed(&'static str),
}

/// The rollout state of a Deployment.
pub fn deployment_rollout(d: &Deployment) -> Rollout {
    let Some(status) = d.status.as_ref() else {
        return Rollout::Rolling;
    };
    if status.observed_generation.unwrap_or(0) < d.metadata.generation.unwrap_or(0) {
        return Rollout::Rolling;
    }
    let deadline_exceeded = status.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if deadline_exceeded {
        return Rollout::Failed("ProgressDeadlineExceeded");
    }
    let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let done = updated >= wanted
        && status.replicas.unwrap_or(0) <= updated
        && status.available_replicas.unwrap_or(0) >= updated;
    if done {
        Rollout::Done
    } else {
        Rollout::Rolling
    }
}

/// The rollout state of a StatefulSet (`OnDelete` never rolls by itself: done).
pub fn statefulset_rollout(s: &StatefulSet) -> Rollout {
    let spec = s.spec.as_ref();
    let strategy = spec.and_then(|s| s.update_strategy.as_ref());
    if strategy.and_then(|u| u.type_.as_deref()) == Some("OnDelete") {
        return Rollout::Done;
    }
    let Some(status) = s.status.as_ref() else {
        return Rollout::Rolling;
    };
    if status.observed_generation.unwrap_or(0) < s.metadata.generation.unwrap_or(0) {
        return Rollout::Rolling;
    }
    let wanted = spec.and_then(|s| s.replicas).unwrap_or(1);
    if status.ready_replicas.unwrap_or(0) < wanted {
        return Rollout::Rolling;
    }
    let partition = strategy
        .and_then(|u| u.rolling_update.as_ref())
        .and_then(|r| r.partition)
        .unwrap_or(0);
    let done = if partition > 0 {
        status.updated_replicas.unwrap_or(0) >= wanted - partition
    } else {
        status.update_revision.is_some() && status.update_revision == status.current_revision
    };
    if done {
        Rollout::Done
    } else {
        Rollout::Rolling
    }
}

/// The rollout state of a DaemonSet (`OnDelete` never rolls by itself: done).
pub fn daemonset_rollout(d: &DaemonSet) -> Rollout {
    let strategy = d.spec.as_ref().and_then(|s| s.update_strategy.as_ref());
    if strategy.and_then(|u| u.type_.as_deref()) == Some("OnDelete") {
        return Rollout::Done;
    }
    let Some(status) = d.status.as_ref() else {
        return Rollout::Rolling;
    };
    if status.observed_generation.unwrap_or(0) < d.metadata.generation.unwrap_or(0) {
        return Rollout::Rolling;
    }
    let wanted = status.desired_number_scheduled;
    let done = status.updated_number_scheduled.unwrap_or(0) >= wanted
        && status.number_available.unwrap_or(0) >= wanted;
    if done {
        Rollout::Done
    } else {
        Rollout::Rolling
    }
}

/// A workload, as `kind/namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadRef {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// What the governor knows of one workload restarted by the operator (its pod template carries
/// our restart annotation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Restarted {
    pub workload: WorkloadRef,
    pub rollout: Rollout,
    /// The Secrets it was last restarted (or recorded) for, with their fingerprints.
    pub record: DigestMap,
}

/// One changed Secret a restart is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change<'a> {
    pub secret: &'a str,
    /// The fingerprint of its data now.
    pub fingerprint: &'a str,
    /// When this process saw its last changes (oldest first; empty: none seen, e.g. the change
    /// came before the operator started).
    pub changed_at: &'a [Instant],
    /// The value of its `resume-restarts` annotation, if set.
    pub resumed: Option<&'a str>,
}

/// What becomes of a restart the rule asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Go,
    /// Wait for the debounce window: ask again after this long.
    Debounce(Duration),
    /// The Secret is flapping: restarts for it are paused; ask again after this long.
    Paused {
        secret: String,
        left: Duration,
    },
    /// Another workload restarted for the same change failed its rollout.
    Blocked {
        secret: String,
        fingerprint: String,
        by: WorkloadRef,
        why: &'static str,
    },
    /// The budget is spent: `rolling` restarts of ours still roll (`in_namespace`: the
    /// namespace's budget, else the cluster's).
    Queued {
        rolling: usize,
        in_namespace: bool,
    },
}

impl Verdict {
    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Go => "go",
            Verdict::Debounce(_) => "debounce",
            Verdict::Paused { .. } => "paused",
            Verdict::Blocked { .. } => "blocked",
            Verdict::Queued { .. } => "queued",
        }
    }
}

/// Decides whether `workload` may restart now for `changes`, given the workloads the operator
/// restarted (read from the cluster) and the time now. In this order: debounce, breaker,
/// blocked, budget; the first that says wait decides.
pub fn admit(
    g: &Governance,
    workload: &WorkloadRef,
    changes: &[Change<'_>],
    restarted: &[Restarted],
    now: Instant,
) -> Verdict {
    let since = |at: &Instant| now.saturating_duration_since(*at);
    let debounce_left = changes
        .iter()
        .filter_map(|c| c.changed_at.last())
        .map(|last| g.debounce.saturating_sub(since(last)))
        .max()
        .unwrap_or_default();
    if !debounce_left.is_zero() {
        return Verdict::Debounce(debounce_left);
    }
    if g.breaker_changes > 0 {
        // Latched: tripped by a burst ending with the last change, and held until the Secret
        // has been stable for the period after it.
        for c in changes {
            let Some(last) = c.changed_at.last() else {
                continue;
            };
            let burst = c
                .changed_at
                .iter()
                .filter(|at| last.saturating_duration_since(**at) < g.breaker_period)
                .count();
            if since(last) < g.breaker_period && burst > g.breaker_changes {
                return Verdict::Paused {
                    secret: c.secret.to_string(),
                    left: g.breaker_period.saturating_sub(since(last)),
                };
            }
        }
    }
    for c in changes.iter().filter(|c| c.resumed != Some(c.fingerprint)) {
        let failed = restarted.iter().find_map(|r| match r.rollout {
            Rollout::Failed(why)
                if r.workload != *workload
                    && r.workload.namespace == workload.namespace
                    && r.record.get(c.secret).map(String::as_str) == Some(c.fingerprint) =>
            {
                Some((r, why))
            }
            _ => None,
        });
        if let Some((r, why)) = failed {
            return Verdict::Blocked {
                secret: c.secret.to_string(),
                fingerprint: c.fingerprint.to_string(),
                by: r.workload.clone(),
                why,
            };
        }
    }
    let rolling: Vec<&Restarted> = restarted
        .iter()
        .filter(|r| r.rollout == Rollout::Rolling && r.workload != *workload)
        .collect();
    if let Some(limit) = g.budget_per_namespace {
        let here = rolling
            .iter()
            .filter(|r| r.workload.namespace == workload.namespace)
            .count();
        if here >= limit {
            return Verdict::Queued {
                rolling: here,
                in_namespace: true,
            };
        }
    }
    if let Some(limit) = g.budget
        && rolling.len() >= limit
    {
        return Verdict::Queued {
            rolling: rolling.len(),
            in_namespace: false,
        };
    }
    Verdict::Go
}

/// The changes kept per Secret for the breaker: the last `breaker_changes + 1` within the
/// period are all it needs (and at least the last one, for the debounce).
pub fn remember_change(g: &Governance, changes: &mut Vec<Instant>, at: Instant) {
    changes.push(at);
    changes.retain(|t| at.saturating_duration_since(*t) < g.breaker_period.max(g.debounce));
    let keep = (g.breaker_changes + 1).max(1);
    if changes.len() > keep {
        changes.drain(..changes.len() - keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::{
        api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus},
        apimachinery::pkg::apis::meta::v1::ObjectMeta,
    };

    fn w(namespace: &str, name: &str) -> WorkloadRef {
        WorkloadRef {
            kind: "Deployment",
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn restarted(namespace: &str, name: &str, rollout: Rollout, fp: &str) -> Restarted {
        Restarted {
            workload: w(namespace, name),
            rollout,
            record: DigestMap::from([("db".to_string(), fp.to_string())]),
        }
    }

    fn change<'a>(fp: &'a str, at: &'a [Instant]) -> Change<'a> {
        Change {
            secret: "db",
            fingerprint: fp,
            changed_at: at,
            resumed: None,
        }
    }

    fn quiet() -> Governance {
        Governance {
            debounce: Duration::ZERO,
            breaker_changes: 0,
            ..Governance::default()
        }
    }

    #[test]
    fn a_change_waits_for_the_debounce_window_then_goes() {
        let g = Governance::default();
        let t0 = Instant::now();
        let at = [t0];
        let me = w("a", "web");
        assert_eq!(
            admit(
                &g,
                &me,
                &[change("f2", &at)],
                &[],
                t0 + Duration::from_secs(4)
            ),
            Verdict::Debounce(Duration::from_secs(6))
        );
        assert_eq!(
            admit(
                &g,
                &me,
                &[change("f2", &at)],
                &[],
                t0 + Duration::from_secs(10)
            ),
            Verdict::Go
        );
        // A change from before the operator started is not held back.
        assert_eq!(admit(&g, &me, &[change("f2", &[])], &[], t0), Verdict::Go);
    }

    #[test]
    fn a_flapping_secret_pauses_restarts_until_it_has_been_stable_for_the_period() {
        let g = Governance::default();
        let t0 = Instant::now();
        let mut at = Vec::new();
        for i in 0..6 {
            remember_change(&g, &mut at, t0 + Duration::from_secs(60 * i));
        }
        let last = t0 + Duration::from_secs(300);
        let me = w("a", "web");
        assert_eq!(
            admit(
                &g,
                &me,
                &[change("f", &at)],
                &[],
                last + Duration::from_secs(20)
            ),
            Verdict::Paused {
                secret: "db".into(),
                left: Duration::from_secs(580)
            }
        );
        // Latched: the oldest change leaving the period does not end the pause early.
        assert!(matches!(
            admit(
                &g,
                &me,
                &[change("f", &at)],
                &[],
                t0 + Duration::from_secs(610)
            ),
            Verdict::Paused { .. }
        ));
        // Stable for the period after the last change: one restart goes.
        assert_eq!(
            admit(
                &g,
                &me,
                &[change("f", &at)],
                &[],
                last + Duration::from_secs(600)
            ),
            Verdict::Go
        );
        // Five changes within the period are not flapping.
        let five = &at[1..];
        assert_eq!(
            admit(
                &g,
                &me,
                &[change("f", five)],
                &[],
                last + Duration::from_secs(20)
            ),
            Verdict::Go
        );
    }

    #[test]
    fn remembered_changes_are_bounded() {
        let g = Governance::default();
        let t0 = Instant::now();
        let mut at = Vec::new();
        for i in 0..1000 {
            remember_change(&g, &mut at, t0 + Duration::from_millis(i));
        }
        assert_eq!(at.len(), g.breaker_changes + 1);
        remember_change(&g, &mut at, t0 + Duration::from_secs(3600));
        assert_eq!(at.len(), 1);
    }

    #[test]
    fn a_failed_rollout_for_the_same_change_blocks_the_others_until_the_item_changes() {
        let g = quiet();
        let me = w("a", "web");
        let failed = [restarted(
            "a",
            "api",
            Rollout::Failed("ProgressDeadlineExceeded"),
            "f2",
        )];
        assert_eq!(
            admit(&g, &me, &[change("f2", &[])], &failed, Instant::now()),
            Verdict::Blocked {
                secret: "db".into(),
                fingerprint: "f2".into(),
                by: w("a", "api"),
                why: "ProgressDeadlineExceeded"
            }
        );
        let asks = |who: &WorkloadRef, fingerprint: &str| {
            admit(
                &g,
                who,
                &[change(fingerprint, &[])],
                &failed,
                Instant::now(),
            )
        };
        // A new change (a fix in 1Password) is not blocked by the failure of the old one.
        assert_eq!(asks(&me, "f3"), Verdict::Go);
        // Nor is the failed workload itself, nor a workload of another namespace.
        assert_eq!(asks(&w("a", "api"), "f2"), Verdict::Go);
        assert_eq!(asks(&w("b", "web"), "f2"), Verdict::Go);
    }

    #[test]
    fn resume_restarts_with_the_fingerprint_unblocks_that_change_only() {
        let g = quiet();
        let me = w("a", "web");
        let failed = [restarted(
            "a",
            "api",
            Rollout::Failed("RolloutTimeout"),
            "f2",
        )];
        let mut c = change("f2", &[]);
        c.resumed = Some("f2");
        assert_eq!(
            admit(&g, &me, std::slice::from_ref(&c), &failed, Instant::now()),
            Verdict::Go
        );
        c.resumed = Some("f1");
        assert!(matches!(
            admit(&g, &me, &[c], &failed, Instant::now()),
            Verdict::Blocked { .. }
        ));
    }

    #[test]
    fn the_budget_counts_rolling_restarts_in_the_namespace_and_in_the_cluster() {
        let g = Governance {
            budget: Some(3),
            budget_per_namespace: Some(2),
            ..quiet()
        };
        let now = Instant::now();
        let c = [change("f2", &[])];
        let two_here = [
            restarted("a", "x", Rollout::Rolling, "f2"),
            restarted("a", "y", Rollout::Rolling, "f2"),
            restarted("a", "z", Rollout::Done, "f2"),
        ];
        assert_eq!(
            admit(&g, &w("a", "web"), &c, &two_here, now),
            Verdict::Queued {
                rolling: 2,
                in_namespace: true
            }
        );
        // Its own rollout does not count against it (it is being asked again).
        assert_eq!(admit(&g, &w("a", "x"), &c, &two_here, now), Verdict::Go);
        let mut three = two_here.to_vec();
        three.push(restarted("b", "q", Rollout::Rolling, "f9"));
        assert_eq!(
            admit(&g, &w("c", "web"), &c, &three, now),
            Verdict::Queued {
                rolling: 3,
                in_namespace: false
            }
        );
        assert_eq!(admit(&g, &w("c", "web"), &c, &two_here, now), Verdict::Go);
        assert_eq!(
            admit(&Governance::off(), &w("a", "web"), &c, &three, now),
            Verdict::Go
        );
    }

    fn deployment(generation: i64, status: DeploymentStatus) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(2),
                ..Default::default()
            }),
            status: Some(status),
        }
    }

    #[test]
    fn a_deployment_rollout_reads_as_kubectl_rollout_status_reads_it() {
        let done = DeploymentStatus {
            observed_generation: Some(3),
            replicas: Some(2),
            updated_replicas: Some(2),
            available_replicas: Some(2),
            ..Default::default()
        };
        let stuck = DeploymentStatus {
            available_replicas: Some(0),
            conditions: Some(vec![DeploymentCondition {
                type_: "Progressing".into(),
                status: "False".into(),
                reason: Some("ProgressDeadlineExceeded".into()),
                ..Default::default()
            }]),
            ..done.clone()
        };
        let cases = [
            (3, done.clone(), Rollout::Done),
            (4, done.clone(), Rollout::Rolling),
            // Old pods left.
            (
                3,
                DeploymentStatus {
                    replicas: Some(3),
                    ..done.clone()
                },
                Rollout::Rolling,
            ),
            // Not all available.
            (
                3,
                DeploymentStatus {
                    available_replicas: Some(1),
                    ..done
                },
                Rollout::Rolling,
            ),
            (3, stuck, Rollout::Failed("ProgressDeadlineExceeded")),
        ];
        for (generation, status, want) in cases {
            assert_eq!(deployment_rollout(&deployment(generation, status)), want);
        }
        let mut no_status = deployment(1, DeploymentStatus::default());
        no_status.status = None;
        assert_eq!(deployment_rollout(&no_status), Rollout::Rolling);
    }
}
