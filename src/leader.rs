//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several replicas only one
//! writes. The leader renews the Lease every `renew_every`; a replica takes it over once it has
//! not been renewed for `lease_duration`. A leader that cannot renew within `lease_duration`
//! steps down (the process exits and restarts as a follower), so two writers never overlap for
//! longer than the clock skew between nodes. On a graceful shutdown the leader releases the Lease
//! so a follower takes over at once.
//!
//! Failover after a crash takes at most `lease_duration + retry_every` (17 s by default).

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    Api, Client,
    api::{PostParams, ResourceExt},
};

#[derive(Clone, Debug)]
pub struct LeaderConfig {
    pub namespace: String,
    pub lease_name: String,
    /// This replica's name in the Lease (the pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
    pub retry_every: Duration,
}

impl LeaderConfig {
    pub fn new(namespace: &str, identity: &str) -> Self {
        LeaderConfig {
            namespace: namespace.into(),
            lease_name: "onepassword-secrets-operator-leader".into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            retry_every: Duration::from_secs(2),
        }
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

/// Pure: what to do with a Lease seen at `now`.
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
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
    let duration = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(15).into());
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    match renewed {
        Some(at) if at + duration > now => Decision::Wait,
        _ => Decision::TakeOver,
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
}

impl Elector {
    pub fn new(client: Client, config: LeaderConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
        }
    }

    /// Returns once this replica holds the Lease.
    pub async fn acquire(&self) -> Result<(), LeaderError> {
        let mut waiting_logged = false;
        loop {
            match self.try_hold().await {
                Ok(true) => {
                    tracing::info!(identity = %self.config.identity, lease = %self.config.lease_name, "became the leader");
                    return Ok(());
                }
                Ok(false) if !waiting_logged => {
                    tracing::info!(lease = %self.config.lease_name, "another replica leads; waiting");
                    waiting_logged = true;
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read or write the leader Lease"),
            }
            tokio::time::sleep(self.config.retry_every).await;
        }
    }

    /// Renews until leadership is lost (another replica took the Lease, or it could not be
    /// renewed for `lease_duration`), then returns. Cancel the future to stop renewing.
    pub async fn hold(&self) {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.config.renew_every).await;
            match self.try_hold().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!("another replica took the leader Lease");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the leader Lease");
                    if last_renewed.elapsed() >= self.config.lease_duration {
                        tracing::error!("the leader Lease could not be renewed in time");
                        return;
                    }
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
        let now = Timestamp::now();
        let existing = self.api.get_opt(&self.config.lease_name).await?;
        let decision = decide(
            existing.as_ref().and_then(|l| l.spec.as_ref()),
            &self.config.identity,
            now,
        );
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

    fn spec(holder: Option<&str>, renewed: Option<&str>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            lease_duration_seconds: Some(15),
            renew_time: renewed.map(|t| MicroTime(t.parse().unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn a_missing_free_or_expired_lease_is_taken_over() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        assert_eq!(decide(None, "me", now), Decision::TakeOver);
        assert_eq!(
            decide(Some(&spec(None, None)), "me", now),
            Decision::TakeOver
        );
        let stale = spec(Some("other"), Some("2026-01-01T00:00:40Z"));
        assert_eq!(decide(Some(&stale), "me", now), Decision::TakeOver);
    }

    #[test]
    fn a_lease_renewed_recently_by_another_replica_is_waited_for() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let fresh = spec(Some("other"), Some("2026-01-01T00:00:50Z"));
        assert_eq!(decide(Some(&fresh), "me", now), Decision::Wait);
    }

    #[test]
    fn our_own_lease_is_renewed() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let ours = spec(Some("me"), Some("2026-01-01T00:00:00Z"));
        assert_eq!(decide(Some(&ours), "me", now), Decision::Renew);
    }
}
