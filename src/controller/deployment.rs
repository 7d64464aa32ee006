//! Deployments annotated with `operator.1password.io/item-path` and
//! `operator.1password.io/item-name` get that Secret, as with the official operator.
//!
//! The Secret is owned by every Deployment that asks for it (same name, same path), through
//! owner references: it is garbage collected when the last of them is deleted, with no
//! finalizer to hang a namespace deletion. Removing the annotations from a Deployment, or
//! changing its `item-name`, removes its owner reference from the Secret it no longer asks for,
//! and that Secret when no owner is left.

use std::{collections::BTreeMap, future::Future, sync::Arc};

use futures::{StreamExt, channel::mpsc::UnboundedReceiver};
use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Secret},
    apimachinery::pkg::apis::meta::v1::OwnerReference,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, Preconditions},
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        events::EventType,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use serde_json::json;

use super::{
    Context, SecretMeta,
    poller::{TargetKey, TargetKind},
    scoped_api,
    sync::{self, Change, SyncError, SyncTarget},
};
use crate::{
    connect::ItemPath,
    restart::{
        AUTO_RESTART_ANNOTATION, ITEM_NAME_ANNOTATION, RESTARTED_FOR_ANNOTATION,
        SECRET_DIGESTS_ANNOTATION,
    },
    secret::{self, ANNOTATION_PREFIX, ITEM_PATH_ANNOTATION},
};

/// Annotations that describe the workload's restarts, not the Secret: the official operator's
/// restart stamp and our restart controller's record. Never read as a request nor copied to a
/// Secret (the record changes with every Secret change, which would rewrite the Secret).
const LAST_RESTARTED_ANNOTATION: &str = "operator.1password.io/last-restarted";
const WORKLOAD_ANNOTATIONS: &[&str] = &[
    LAST_RESTARTED_ANNOTATION,
    SECRET_DIGESTS_ANNOTATION,
    RESTARTED_FOR_ANNOTATION,
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("releasing the Secret failed: {0}")]
    Release(#[source] kube::Error),
    #[error("the object has no namespace")]
    NoNamespace,
}

struct DeploymentContext {
    ctx: Arc<Context>,
    deployments: Store<Deployment>,
    secrets: Store<SecretMeta>,
}

/// The `operator.1password.io/*` annotations of a Deployment, read from its metadata or, when
/// it has none there, from its pod template, as the official operator does.
pub fn op_annotations(deployment: &Deployment) -> BTreeMap<String, String> {
    let pick = |annotations: Option<&BTreeMap<String, String>>| -> BTreeMap<String, String> {
        annotations
            .into_iter()
            .flatten()
            .filter(|(k, _)| {
                k.strip_prefix(ANNOTATION_PREFIX)
                    .is_some_and(|rest| rest.starts_with('/'))
                    && !WORKLOAD_ANNOTATIONS.contains(&k.as_str())
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let own = pick(deployment.metadata.annotations.as_ref());
    if !own.is_empty() {
        return own;
    }
    pick(
        deployment
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref()),
    )
}

/// `(item path, secret name)` a Deployment asks for, if it asks for one.
fn request_of(deployment: &Deployment) -> Option<(String, String)> {
    let ann = op_annotations(deployment);
    let path = ann.get(ITEM_PATH_ANNOTATION)?.trim();
    let name = ann.get(ITEM_NAME_ANNOTATION)?.trim();
    (!path.is_empty() && !name.is_empty()).then(|| (path.to_string(), name.to_string()))
}

fn owner_reference(deployment: &Deployment) -> OwnerReference {
    OwnerReference {
        api_version: Deployment::api_version(&()).into(),
        kind: Deployment::kind(&()).into(),
        name: deployment.name_any(),
        uid: deployment.uid().unwrap_or_default(),
        controller: None,
        block_owner_deletion: None,
    }
}

/// The Deployments in `namespace` that ask for Secret `name`, oldest first (ties by name).
fn askers<'a>(
    all: &'a [Arc<Deployment>],
    namespace: &str,
    name: &str,
) -> Vec<(&'a Deployment, String)> {
    let mut found: Vec<(&Deployment, String)> = all
        .iter()
        .filter(|d| {
            d.namespace().as_deref() == Some(namespace) && d.meta().deletion_timestamp.is_none()
        })
        .filter_map(|d| {
            let (path, asked) = request_of(d)?;
            (secret::secret_name(&asked).ok()? == name).then_some((d.as_ref(), path))
        })
        .collect();
    found.sort_by(|a, b| {
        let key = |d: &Deployment| {
            (
                d.metadata.creation_timestamp.clone().map(|t| t.0),
                d.name_any(),
            )
        };
        key(a.0).cmp(&key(b.0))
    });
    found
}

/// Runs the controller for one scope (`None`: all namespaces) until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    scope: Option<String>,
    trigger: UnboundedReceiver<ObjectRef<Deployment>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let deployments: Api<Deployment> = scoped_api(&ctx.client, scope.as_deref());
    // Owned Secrets: owners and labels are all that is needed (metadata only, no values).
    let (secret_store, writer) = reflector::store();
    let secret_stream = super::watch_managed_secrets(&ctx.client, scope.as_deref())
        .modify(|s| {
            s.metadata.labels = None;
            s.metadata.annotations = None;
        })
        .reflect(writer);
    let secret_stream = super::skip_own_echoes(secret_stream, ctx.clone()).touched_objects();
    // Every Deployment of the scope is cached: keep what the reconcile reads (metadata and
    // spec), not managedFields or status.
    let (deployment_store, writer) = reflector::store();
    let deployments = watcher(deployments, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|d: &mut Deployment| {
            d.managed_fields_mut().clear();
            d.status = None;
        })
        .reflect(writer);
    // Rollout progress (status) changes nothing here; spec and annotations do.
    let deployments = super::forget_deleted(
        deployments,
        ctx.clone(),
        TargetKind::Deployment,
        scope.clone(),
    );
    let deployments = super::skip_unchanged(deployments).touched_objects();
    let controller = Controller::for_stream(deployments, deployment_store);
    let dctx = Arc::new(DeploymentContext {
        ctx: ctx.clone(),
        deployments: controller.store(),
        secrets: secret_store,
    });
    controller
        .owns_stream(secret_stream)
        .reconcile_on(trigger)
        .with_config(controller::Config::default().concurrency(ctx.config.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, dctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                super::log_run_error("Deployment", &e);
            }
        })
        .await;
}

fn error_policy(obj: Arc<Deployment>, error: &Error, dctx: Arc<DeploymentContext>) -> Action {
    tracing::warn!(deployment = %obj.name_any(), error = %error, "Deployment reconcile failed");
    Action::requeue(dctx.ctx.backoff(&key_of(&obj)))
}

fn key_of(d: &Deployment) -> String {
    super::object_key(
        TargetKind::Deployment,
        &d.namespace().unwrap_or_default(),
        &d.name_any(),
    )
}

#[tracing::instrument(skip_all, fields(namespace = obj.namespace(), deployment = %obj.name_any()))]
async fn reconcile(obj: Arc<Deployment>, dctx: Arc<DeploymentContext>) -> Result<Action, Error> {
    let ctx = &dctx.ctx;
    let namespace = obj.namespace().ok_or(Error::NoNamespace)?;
    let key = TargetKey {
        kind: TargetKind::Deployment,
        namespace: namespace.clone(),
        name: obj.name_any(),
    };
    let request = request_of(&obj).filter(|_| obj.meta().deletion_timestamp.is_none());
    let Some((path, asked_name)) = request else {
        ctx.registry.forget(&key);
        release(&dctx, &obj, &namespace, None).await?;
        return Ok(Action::await_change());
    };
    let timer = ctx.metrics.reconcile_started("deployment");
    let before = ctx.cached_resolution(&path).await;
    let outcome = sync_deployment(&dctx, &obj, &namespace, &path, &asked_name).await;
    let outcome = ctx.settle(key, &path, before, outcome).await;
    // A Deployment has no status of ours: events say what happened, once per change of reason.
    let reason = match &outcome {
        Ok(_) => "Synced",
        Err(e) => e.reason(),
    };
    let previous = ctx.note_reason(&key_of(&obj), reason);
    let mut events = Vec::new();
    match &outcome {
        Ok(s) if matches!(s.change, Change::Created | Change::Updated) => {
            events.push((
                EventType::Normal,
                "SecretSynced",
                format!("Secret {asked_name:?} holds item version {}", s.version),
            ));
            // Warnings are found when the item is fetched: said with the write they go with.
            if !s.warnings.is_empty() {
                events.push((EventType::Warning, "SyncWarning", s.warnings.join("; ")));
            }
        }
        Ok(s) if previous.is_some_and(|p| p != reason) => events.push((
            EventType::Normal,
            "Synced",
            format!("Secret {asked_name:?} holds item version {}", s.version),
        )),
        Err(e) if previous != Some(reason) => {
            events.push((EventType::Warning, e.reason(), e.to_string()))
        }
        _ => {}
    }
    for (type_, reason, note) in events {
        ctx.publish(&obj.object_ref(&()), type_, reason, &note)
            .await;
    }
    match &outcome {
        // After a change of item-name, the Secret of the old name is no longer asked for.
        Ok(_) => {
            let kept = secret::secret_name(&asked_name).ok();
            release(&dctx, &obj, &namespace, kept.as_deref()).await?;
        }
        Err(e) => {
            tracing::info!(reason = e.reason(), error = %e, "Secret for Deployment not synced")
        }
    }
    Ok(ctx.after_sync("deployment", &key_of(&obj), &outcome, timer))
}

async fn sync_deployment(
    dctx: &DeploymentContext,
    obj: &Deployment,
    namespace: &str,
    path: &str,
    asked_name: &str,
) -> Result<sync::Synced, SyncError> {
    let path = ItemPath::parse(path)?;
    let name = secret::secret_name(asked_name)?;
    let all = dctx.deployments.state();
    let askers = askers(&all, namespace, &name);
    // Several Deployments may share the Secret when they ask for the same item; the oldest
    // one's path decides when they disagree, and the others are told.
    if let Some((first, first_path)) = askers.first()
        && first.uid() != obj.uid()
        && *first_path != path.to_string()
    {
        return Err(SyncError::Unsupported(format!(
            "Deployment {:?} asks for Secret {name:?} from another item ({first_path}); \
             give this Deployment another item-name",
            first.name_any()
        )));
    }
    let mut owners: Vec<OwnerReference> = askers
        .iter()
        .filter(|(_, p)| *p == path.to_string())
        .map(|(d, _)| owner_reference(d))
        .collect();
    if owners.is_empty() {
        owners.push(owner_reference(obj));
    }
    let ann = op_annotations(obj);
    let annotations: BTreeMap<String, String> = ann
        .into_iter()
        .filter(|(k, v)| k != AUTO_RESTART_ANNOTATION || super::parse_bool(v).is_some())
        .collect();
    let target = SyncTarget {
        namespace: namespace.to_string(),
        name,
        path,
        secret_type: None,
        labels: BTreeMap::new(),
        annotations,
        owners,
    };
    sync::sync(&dctx.ctx, &target).await
}

/// The Deployment no longer asks for a Secret (annotations removed or renamed, or being
/// deleted): drop its owner reference from the Secrets it owns but `keep`, and delete a Secret
/// left with no owner.
async fn release(
    dctx: &DeploymentContext,
    obj: &Deployment,
    namespace: &str,
    keep: Option<&str>,
) -> Result<(), Error> {
    let Some(uid) = obj.uid() else { return Ok(()) };
    let api: Api<Secret> = Api::namespaced(dctx.ctx.client.clone(), namespace);
    let owned: Vec<Arc<SecretMeta>> = dctx
        .secrets
        .state()
        .into_iter()
        .filter(|s| s.namespace().as_deref() == Some(namespace))
        .filter(|s| keep.is_none_or(|name| s.name_any() != name))
        .filter(|s| s.owner_references().iter().any(|o| o.uid == uid))
        .collect();
    for secret in owned {
        let name = secret.name_any();
        let owners = secret.owner_references();
        if owners.iter().all(|o| o.uid == uid) {
            if obj.meta().deletion_timestamp.is_some() {
                // Garbage collection removes it once the Deployment is gone.
                continue;
            }
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: secret.uid(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => tracing::info!(secret = %name, "deleted Secret no Deployment asks for"),
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(Error::Release(e)),
            }
        } else if let Some(index) = owners.iter().position(|o| o.uid == uid) {
            let patch: json_patch::Patch = serde_json::from_value(json!([
                {"op": "test", "path": format!("/metadata/ownerReferences/{index}/uid"), "value": uid},
                {"op": "remove", "path": format!("/metadata/ownerReferences/{index}")},
            ]))
            .expect("valid JSON patch");
            match api
                .patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409 | 422) => {}
                Err(e) => return Err(Error::Release(e)),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::{apps::v1::DeploymentSpec, core::v1::PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn deployment(name: &str, meta: &[(&str, &str)], template: &[(&str, &str)]) -> Deployment {
        let map = |pairs: &[(&str, &str)]| {
            Some(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        Deployment {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("apps".into()),
                uid: Some(format!("uid-{name}")),
                annotations: map(meta),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        annotations: map(template),
                        ..Default::default()
                    }),
                    spec: None,
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn annotations_come_from_metadata_first_then_from_the_pod_template() {
        let d = deployment(
            "web",
            &[
                (ITEM_PATH_ANNOTATION, "vaults/a/items/b"),
                (ITEM_NAME_ANNOTATION, "web-db"),
                ("other", "x"),
            ],
            &[(ITEM_NAME_ANNOTATION, "ignored")],
        );
        assert_eq!(
            request_of(&d),
            Some(("vaults/a/items/b".into(), "web-db".into()))
        );
        let t = deployment(
            "web",
            &[("other", "x")],
            &[
                (ITEM_PATH_ANNOTATION, "vaults/a/items/b"),
                (ITEM_NAME_ANNOTATION, "from-template"),
                (LAST_RESTARTED_ANNOTATION, "t"),
                (SECRET_DIGESTS_ANNOTATION, "web-db=0123456789abcdef"),
            ],
        );
        assert_eq!(request_of(&t).unwrap().1, "from-template");
        assert!(!op_annotations(&t).contains_key(LAST_RESTARTED_ANNOTATION));
        assert!(!op_annotations(&t).contains_key(SECRET_DIGESTS_ANNOTATION));
        assert_eq!(
            request_of(&deployment("web", &[(ITEM_NAME_ANNOTATION, "x")], &[])),
            None
        );
    }

    #[test]
    fn deployments_asking_for_the_same_secret_are_found_oldest_first() {
        let ask = |name: &str, secret: &str, path: &str| {
            Arc::new(deployment(
                name,
                &[(ITEM_PATH_ANNOTATION, path), (ITEM_NAME_ANNOTATION, secret)],
                &[],
            ))
        };
        let all = vec![
            ask("b", "shared", "vaults/a/items/x"),
            ask("a", "shared", "vaults/a/items/x"),
            ask("c", "Shared", "vaults/a/items/x"),
            ask("d", "other", "vaults/a/items/x"),
        ];
        let names: Vec<String> = askers(&all, "apps", "shared")
            .iter()
            .map(|(d, _)| d.name_any())
            .collect();
        // "Shared" sanitises to "shared" too.
        assert_eq!(names, ["a", "b", "c"]);
        assert!(askers(&all, "other-ns", "shared").is_empty());
    }
}
