//! Argo Rollouts (`argoproj.io/v1alpha1` `Rollout`): restarted the Argo way, by setting
//! `spec.restartAt` (what `kubectl argo rollouts restart` does), not by changing the pod
//! template, which would start a new revision through the Rollout's canary or blue-green
//! steps. Our `restarted-for` value goes on the Rollout's metadata instead.
//!
//! No dependency on Argo: the type holds only the fields we read, and its controller runs only
//! once the API server serves `rollouts.argoproj.io` (looked up through discovery, which any
//! client may read).

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::CustomResource;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::governor::Rollout as RolloutState;
use crate::vocabulary::{RESTARTED_FOR_ANNOTATION, SECRET_DIGESTS_ANNOTATION};

/// The part of an Argo Rollout's spec we read (unknown fields are ignored).
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize)]
#[kube(
    group = "argoproj.io",
    version = "v1alpha1",
    kind = "Rollout",
    namespaced,
    status = "RolloutStatus",
    schema = "disabled"
)]
pub struct RolloutSpec {
    /// Absent when the Rollout points at a Deployment (`workloadRef`): then nothing here uses
    /// a Secret, and that Deployment is restarted as any other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<PodTemplateSpec>,
    #[serde(default, rename = "restartAt", skip_serializing_if = "Option::is_none")]
    pub restart_at: Option<String>,
}

/// The part of an Argo Rollout's status we read.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct RolloutStatus {
    /// `Healthy`, `Progressing`, `Paused` or `Degraded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// The `restartAt` whose restart Argo finished.
    #[serde(
        default,
        rename = "restartedAt",
        skip_serializing_if = "Option::is_none"
    )]
    pub restarted_at: Option<String>,
}

/// The API group version whose discovery says whether Argo Rollouts is installed.
pub const GROUP_VERSION: &str = "argoproj.io/v1alpha1";

/// Where a Rollout's restart is: done once Argo reports it healthy with the restart we asked
/// for finished (`status.restartedAt` caught up with `spec.restartAt`); failed when degraded.
pub fn rollout_state(r: &Rollout) -> RolloutState {
    let status = r.status.as_ref();
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Degraded") => RolloutState::Failed("Degraded"),
        Some("Healthy") => {
            let asked = r.spec.restart_at.as_deref();
            let finished = status.and_then(|s| s.restarted_at.as_deref());
            // RFC 3339 times in UTC with the same precision compare as text.
            if asked.is_none_or(|a| finished.is_some_and(|f| f >= a)) {
                RolloutState::Done
            } else {
                RolloutState::Rolling
            }
        }
        _ => RolloutState::Rolling,
    }
}

/// The server-side apply body for a Rollout: the record and `restarted-for` on its metadata,
/// and `spec.restartAt`: `now` for a restart, else the value it has (so that an apply that
/// only records does not drop a field we own).
pub fn apply_body(
    name: &str,
    resource_version: Option<&str>,
    record: &str,
    restarted_for: Option<&str>,
    restart_at: Option<&str>,
) -> Value {
    let mut annotations = serde_json::Map::new();
    if !record.is_empty() {
        annotations.insert(SECRET_DIGESTS_ANNOTATION.into(), json!(record));
    }
    if let Some(value) = restarted_for {
        annotations.insert(RESTARTED_FOR_ANNOTATION.into(), json!(value));
    }
    let mut metadata = json!({ "name": name });
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    if !annotations.is_empty() {
        metadata["annotations"] = Value::Object(annotations);
    }
    let mut body = json!({ "apiVersion": GROUP_VERSION, "kind": "Rollout", "metadata": metadata });
    if let Some(at) = restart_at {
        body["spec"] = json!({ "restartAt": at });
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(
        phase: Option<&str>,
        restart_at: Option<&str>,
        restarted_at: Option<&str>,
    ) -> Rollout {
        let mut r = Rollout::new(
            "web",
            RolloutSpec {
                template: None,
                restart_at: restart_at.map(str::to_string),
            },
        );
        r.status = Some(RolloutStatus {
            phase: phase.map(str::to_string),
            restarted_at: restarted_at.map(str::to_string),
        });
        r
    }

    #[test]
    fn a_rollout_is_done_when_healthy_with_the_asked_restart_finished() {
        let at = "2026-12-03T10:00:00Z";
        assert_eq!(
            rollout_state(&rollout(Some("Healthy"), None, None)),
            RolloutState::Done
        );
        assert_eq!(
            rollout_state(&rollout(Some("Healthy"), Some(at), None)),
            RolloutState::Rolling
        );
        assert_eq!(
            rollout_state(&rollout(Some("Healthy"), Some(at), Some(at))),
            RolloutState::Done
        );
        assert_eq!(
            rollout_state(&rollout(Some("Progressing"), Some(at), Some(at))),
            RolloutState::Rolling
        );
        assert_eq!(
            rollout_state(&rollout(Some("Degraded"), Some(at), None)),
            RolloutState::Failed("Degraded")
        );
        let mut no_status = rollout(None, None, None);
        no_status.status = None;
        assert_eq!(rollout_state(&no_status), RolloutState::Rolling);
    }

    #[test]
    fn a_restart_sets_restart_at_and_never_touches_the_pod_template() {
        let body = apply_body(
            "web",
            Some("7"),
            "db=ab",
            Some("f1"),
            Some("2026-12-03T10:00:00Z"),
        );
        assert_eq!(
            body,
            json!({
                "apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
                "metadata": {
                    "name": "web", "resourceVersion": "7",
                    "annotations": {
                        SECRET_DIGESTS_ANNOTATION: "db=ab", RESTARTED_FOR_ANNOTATION: "f1"
                    }
                },
                "spec": { "restartAt": "2026-12-03T10:00:00Z" }
            })
        );
        let record_only = apply_body("web", None, "db=ab", None, None);
        assert!(record_only.get("spec").is_none());
    }
}
