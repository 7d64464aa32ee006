//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several replicas only one
//! writes. It follows client-go's `leaderelection` (the timings controller-runtime uses):
//!
//! - The leader renews the Lease every `retry_period`. Each attempt is bounded in time, and if
//!   no renewal succeeded within `renew_deadline` (counted from when the last successful attempt
//!   *started*, so before the API server wrote it) the leader steps down: the process exits at
//!   once and restarts as a follower. A renewal stuck on a hung connection cannot keep it in
//!   charge.
//! - A follower never reads the leader's timestamps to judge expiry (clocks differ between
//!   nodes): it records, on its own monotonic clock, when it last saw the Lease change (its
//!   `resourceVersion`), and takes it over only once it has seen no change for the Lease's
//!   `leaseDurationSeconds`. It saw the last renewal no earlier than the leader sent it, so the
//!   leader has stepped down `lease_duration - renew_deadline` (5 s) before any follower can
//!   take over: two writers never overlap.
//! - On a graceful shutdown the leader releases the Lease, so a follower takes over at once.
//!
//! Failover after a crash takes at most `lease_duration + retry_period` (17 s by default).
//!
//! We keep our own elector rather than `kube-lease-manager` (looked at again for issue 13).
//! Its release 0.13.1 fits our kube 5 and k8s-openapi 0.29, but it judges expiry from the
//! `renewTime` written in the Lease plus `leaseDurationSeconds` against this node's wall clock
//! (`SystemTime::now()` in its `state.rs`), so a clock skew between nodes shortens or stretches
//! the lease, and it bounds neither a renewal in time nor how long a leader goes on without one
//! (the process exiting at the renew deadline, before any follower may take over, is our
//! fencing). Those are the faults this module exists to rule out; adopting it would give them
//! back for about 250 lines saved.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{PostParams, ResourceExt},
};
use tokio::time::Instant;

#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    /// This replica's name in the Lease (the pod name).
    pub identity: String,
    /// How long followers wait, after they last saw the Lease change, before taking it over.
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal; must be shorter than
    /// `lease_duration`.
    pub renew_deadline: Duration,
    /// How often the leader renews, and followers look at the Lease.
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// client-go's and controller-runtime's defaults: 15 s, 10 s, 2 s.
    pub fn new(namespace: &str, identity: &str) -> Self {
        LeaderConfig {
            namespace: namespace.into(),
            lease_name: "onepassword-secrets-operator-leader".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// The Kubernetes client settings for Lease calls: no single call may outlast the renew
    /// deadline (kube's default leaves reads unbounded).
    pub fn lease_client_config(&self, mut config: kube::Config) -> kube::Config {
        let bound = self.renew_deadline / 2;
        config.connect_timeout = Some(bound);
        config.read_timeout = Some(bound);
        config.write_timeout = Some(bound);
        config.reset_reader_on_write = true;
        config
    }
}

/// What the Lease says, and what we should do about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it.
    TakeOver,
    /// Someone else holds it and renewed it recently: wait.
    Wait,
}

/// Pure: what to do with a Lease that this replica has seen unchanged for `unchanged_for` (on
/// its own clock). The timestamps in the Lease are never compared with our clock.
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, unchanged_for: Duration) -> Decision {
    let Some(spec) = spec else {
        return Decision::TakeOver;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == identity {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    let seconds = spec.lease_duration_seconds.unwrap_or(15).max(1);
    if unchanged_for >= Duration::from_secs(seconds as u64) {
        Decision::TakeOver
    } else {
        Decision::Wait
    }
}

/// When this replica first saw the Lease in its current state (its `resourceVersion`).
#[derive(Clone, Debug, Default)]
pub struct Observer {
    last: Option<(String, Instant)>,
}

impl Observer {
    /// Records a sighting of the Lease at `now`; returns how long it has been unchanged.
    pub fn observe(&mut self, version: &str, now: Instant) -> Duration {
        match &self.last {
            Some((seen, since)) if seen == version => now.saturating_duration_since(*since),
            _ => {
                self.last = Some((version.to_string(), now));
                Duration::ZERO
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("Lease API error: {0}")]
    Kube(#[from] kube::Error),
}

pub struct Elector {
    api: Api<Lease>,
    config: LeaderConfig,
    observer: std::sync::Mutex<Observer>,
}

/// Why the leader stepped down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SteppedDown {
    /// Another replica holds the Lease.
    TakenOver,
    /// No renewal succeeded within the renew deadline.
    RenewDeadline,
}

impl Elector {
    /// `client` should come from [`LeaderConfig::lease_client_config`].
    pub fn new(client: Client, config: LeaderConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observer: Default::default(),
        }
    }

    /// Returns once this replica holds the Lease, with when the winning attempt started (what
    /// [`Elector::hold`] counts the renew deadline from).
    pub async fn acquire(&self) -> Result<Instant, LeaderError> {
        let mut waiting_logged = false;
        loop {
            let started = Instant::now();
            let attempt = tokio::time::timeout(self.config.renew_deadline, self.try_hold());
            match attempt.await {
                Ok(Ok(true)) => {
                    tracing::info!(identity = %self.config.identity, lease = %self.config.lease_name, "became the leader");
                    return Ok(started);
                }
                Ok(Ok(false)) if !waiting_logged => {
                    tracing::info!(lease = %self.config.lease_name, "another replica leads; waiting");
                    waiting_logged = true;
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot read or write the leader Lease"),
                Err(_) => tracing::warn!("reading or writing the leader Lease timed out"),
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// Renews every `retry_period` until leadership is lost: another replica took the Lease, or
    /// no renewal succeeded within `renew_deadline` of `renewed` (when the last successful
    /// attempt started). Returns at the deadline itself, even while a renewal is still hanging.
    pub async fn hold(&self, mut renewed: Instant) -> SteppedDown {
        loop {
            let deadline = renewed + self.config.renew_deadline;
            let attempt = async {
                tokio::time::sleep(self.config.retry_period).await;
                let started = Instant::now();
                (started, self.try_hold().await)
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok((started, Ok(true))) => renewed = started,
                Ok((_, Ok(false))) => {
                    tracing::error!("another replica took the leader Lease");
                    return SteppedDown::TakenOver;
                }
                Ok((_, Err(e))) => tracing::warn!(error = %e, "cannot renew the leader Lease"),
                Err(_) => {
                    tracing::error!(
                        renew_deadline_s = self.config.renew_deadline.as_secs(),
                        "the leader Lease could not be renewed within the renew deadline; stepping down"
                    );
                    return SteppedDown::RenewDeadline;
                }
            }
        }
    }

    /// Gives the Lease up so a follower takes over without waiting for it to expire.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.config.lease_name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(&self.config.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        let name = lease.name_any();
        if let Err(e) = self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            tracing::debug!(error = %e, "cannot release the leader Lease");
        }
    }

    /// One attempt to hold the Lease; `Ok(true)` when we hold it afterwards. Writes are
    /// conditional on the `resourceVersion` read, so two replicas never both win.
    async fn try_hold(&self) -> Result<bool, LeaderError> {
        let existing = self.api.get_opt(&self.config.lease_name).await?;
        let unchanged_for = match &existing {
            Some(lease) => self.observer.lock().expect("observer lock").observe(
                &lease.resource_version().unwrap_or_default(),
                Instant::now(),
            ),
            None => Duration::ZERO,
        };
        let decision = decide(
            existing.as_ref().and_then(|l| l.spec.as_ref()),
            &self.config.identity,
            unchanged_for,
        );
        // Written for humans and other tools; never read back to judge expiry.
        let now = Timestamp::now();
        if decision == Decision::Wait {
            return Ok(false);
        }
        let duration_secs = self.config.lease_duration.as_secs() as i32;
        let result = match existing {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.lease_name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.config.identity.clone()),
                        lease_duration_seconds: Some(duration_secs),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..Default::default()
                    }),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                let spec = lease.spec.get_or_insert_with(Default::default);
                if decision == Decision::TakeOver {
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                    spec.acquire_time = Some(MicroTime(now));
                }
                spec.holder_identity = Some(self.config.identity.clone());
                spec.lease_duration_seconds = Some(duration_secs);
                spec.renew_time = Some(MicroTime(now));
                let name = lease.name_any();
                self.api
                    .replace(&name, &PostParams::default(), &lease)
                    .await
            }
        };
        match result {
            Ok(_) => Ok(true),
            // Someone else wrote first: not ours this round.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(15),
            // A leader whose clock runs far ahead: its timestamps must not matter.
            renew_time: Some(MicroTime("2099-01-01T00:00:00Z".parse().unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn a_missing_or_free_lease_is_taken_over() {
        assert_eq!(decide(None, "me", Duration::ZERO), Decision::TakeOver);
        assert_eq!(
            decide(Some(&spec(None)), "me", Duration::ZERO),
            Decision::TakeOver
        );
    }

    #[test]
    fn another_replicas_lease_expires_by_our_clock_not_by_its_timestamps() {
        let held = spec(Some("other"));
        assert_eq!(
            decide(Some(&held), "me", Duration::from_secs(14)),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&held), "me", Duration::from_secs(15)),
            Decision::TakeOver
        );
        let mut past = held.clone();
        past.renew_time = Some(MicroTime("2000-01-01T00:00:00Z".parse().unwrap()));
        assert_eq!(decide(Some(&past), "me", Duration::ZERO), Decision::Wait);
    }

    #[test]
    fn our_own_lease_is_renewed() {
        assert_eq!(
            decide(Some(&spec(Some("me"))), "me", Duration::from_secs(60)),
            Decision::Renew
        );
    }

    #[test]
    fn the_observer_counts_from_when_it_first_saw_each_version() {
        let t0 = Instant::now();
        let mut observer = Observer::default();
        assert_eq!(observer.observe("1", t0), Duration::ZERO);
        let later = t0 + Duration::from_secs(9);
        assert_eq!(observer.observe("1", later), Duration::from_secs(9));
        // A renewal (a new version) starts the count again.
        assert_eq!(observer.observe("2", later), Duration::ZERO);
        assert_eq!(
            observer.observe("2", later + Duration::from_secs(3)),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn the_leader_steps_down_before_a_follower_may_take_over() {
        let config = LeaderConfig::new("ns", "me");
        assert!(config.renew_deadline + config.retry_period <= config.lease_duration);
        let client =
            config.lease_client_config(kube::Config::new("http://127.0.0.1:1".parse().unwrap()));
        assert!(
            client
                .read_timeout
                .is_some_and(|t| t < config.renew_deadline)
        );
        assert!(
            client
                .write_timeout
                .is_some_and(|t| t < config.renew_deadline)
        );
    }

    /// A renewal that hangs for ever (an API connection that stalls) must not keep the leader
    /// in charge: `hold` returns at the renew deadline.
    #[tokio::test]
    async fn a_leader_whose_renewals_hang_steps_down_at_the_renew_deadline() {
        let (service, _handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        // Nobody answers the mock: every request hangs.
        let client = Client::new(service, "ns");
        let config = LeaderConfig {
            renew_deadline: Duration::from_millis(600),
            retry_period: Duration::from_millis(100),
            ..LeaderConfig::new("ns", "me")
        };
        let elector = Elector::new(client, config.clone());
        let started = Instant::now();
        let outcome = tokio::time::timeout(Duration::from_secs(10), elector.hold(started))
            .await
            .expect("the leader stepped down");
        assert_eq!(outcome, SteppedDown::RenewDeadline);
        let took = started.elapsed();
        assert!(
            took >= config.renew_deadline && took < Duration::from_secs(2),
            "{took:?}"
        );
    }
}
