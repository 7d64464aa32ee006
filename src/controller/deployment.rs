//! Deployments annotated with `operator.1password.io/item-path` and
//! `operator.1password.io/item-name` get that Secret, as with the official operator.
//!
//! The Secret is owned by every Deployment that asks for it (same name, same path), through
//! owner references: it is garbage collected when the last of them is deleted, with no
//! finalizer to hang a namespace deletion. Removing the annotations from a Deployment, or
//! changing its `item-name`, removes its owner reference from the Secret it no longer asks for,
//! and that Secret when no owner is left and no Deployment names it any more. A request that
//! cannot be read for sure (half a pair) makes nothing and deletes nothing.

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
    CachedSecret, Context, SecretCache,
    poller::{TargetKey, TargetKind},
    scoped_api,
    sync::{self, Change, SyncError, SyncTarget},
    takeover,
};
use crate::{
    connect::ItemPath,
    secret,
    vocabulary::{
        ANNOTATION_PREFIX, AUTO_RESTART_ANNOTATION, FORCE_SYNC_ANNOTATION, ITEM_NAME_ANNOTATION,
        ITEM_PATH_ANNOTATION, LAST_RESTARTED_ANNOTATION, RESTARTED_FOR_ANNOTATION, Reason,
        SECRET_DIGESTS_ANNOTATION,
    },
};

/// Annotations that describe the workload's restarts, not the Secret: the official operator's
/// restart stamp and our restart controller's record. Never read as a request nor copied to a
/// Secret (the record changes with every Secret change, which would rewrite the Secret).
const WORKLOAD_ANNOTATIONS: &[&str] = &[
    LAST_RESTARTED_ANNOTATION,
    SECRET_DIGESTS_ANNOTATION,
    RESTARTED_FOR_ANNOTATION,
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("releasing the Secret failed: {0}")]
    Release(#[source] kube::Error),
    #[error("reading the Deployment failed: {0}")]
    Read(#[source] kube::Error),
    #[error("the cache of Deployments stopped before it was filled")]
    DeploymentCacheGone,
    #[error("the Secret changed while it was being released; looking again")]
    SecretChanged,
    #[error("removing the official operator's finalizer failed: {0}")]
    Finalizer(#[source] kube::Error),
    #[error("the object has no namespace")]
    NoNamespace,
}

/// What the watches of one scope keep, beside the context every controller shares.
struct Scope {
    shared: Arc<Context>,
    /// Every Deployment of the scope (to find the others that ask for the same Secret).
    deployments: Store<Deployment>,
    /// The managed Secrets of the scope, their owners (to release those no longer asked for).
    secrets: SecretCache,
}

/// What a Deployment asks for through `item-path` and `item-name`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Request {
    /// Neither annotation, on its metadata nor on its pod template.
    Nothing,
    /// Secret `name` (as written; not yet made a valid name) from item `path`, and the
    /// `operator.1password.io/*` annotations found beside the pair, to copy to the Secret.
    Secret {
        path: String,
        name: String,
        annotations: BTreeMap<String, String>,
    },
    /// Half a pair, or an empty value: no Secret can be made, and none may be released on a
    /// guess. `name` is the `item-name` given, if any.
    Unclear { why: String, name: Option<String> },
}

impl Request {
    /// The valid Secret name this request names, made or not.
    fn names(&self) -> Option<String> {
        let name = match self {
            Request::Nothing => return None,
            Request::Secret { name, .. } => name,
            Request::Unclear { name, .. } => name.as_ref()?,
        };
        secret::secret_name(name).ok()
    }
}

/// The `operator.1password.io/*` annotations of one annotation map, without those that
/// describe the workload's restarts.
fn op_annotations(annotations: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
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
}

/// What `deployment` asks for. Like the official operator, the request is read from the
/// Deployment's metadata, or from its pod template when the metadata has none
/// (`GetAnnotationsForDeployment` in `pkg/onepassword/annotations.go`, called by `Reconcile` in
/// `internal/controller/deployment_controller.go`). Which place holds the request is decided
/// by the pair itself: another `operator.1password.io/*` key on the metadata (`auto-restart`,
/// one of ours, an unknown one) never hides a pair on the pod template, so adding one can
/// neither drop nor delete a Secret. A pair with a part missing or empty is
/// [`Request::Unclear`]: the official operator makes no Secret then, and deletes none.
fn request_of(deployment: &Deployment) -> Request {
    let on_metadata = deployment.metadata.annotations.as_ref();
    let on_template = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref());
    let has_pair_key = |annotations: Option<&BTreeMap<String, String>>| {
        annotations.is_some_and(|a| {
            a.contains_key(ITEM_PATH_ANNOTATION) || a.contains_key(ITEM_NAME_ANNOTATION)
        })
    };
    let (source, place) = if has_pair_key(on_metadata) {
        (on_metadata, "metadata")
    } else if has_pair_key(on_template) {
        (on_template, "pod template")
    } else {
        return Request::Nothing;
    };
    let annotations = op_annotations(source);
    let value = |key: &str| {
        annotations
            .get(key)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    match (value(ITEM_PATH_ANNOTATION), value(ITEM_NAME_ANNOTATION)) {
        (Some(path), Some(name)) => Request::Secret {
            path,
            name,
            annotations,
        },
        (path, name) => {
            let what = match (&path, &name) {
                (Some(_), _) => format!(
                    "{ITEM_PATH_ANNOTATION} is set but {ITEM_NAME_ANNOTATION} is missing or empty"
                ),
                (None, Some(_)) => format!(
                    "{ITEM_NAME_ANNOTATION} is set but {ITEM_PATH_ANNOTATION} is missing or empty"
                ),
                (None, None) => {
                    format!("{ITEM_PATH_ANNOTATION} and {ITEM_NAME_ANNOTATION} are empty")
                }
            };
            Request::Unclear {
                why: format!(
                    "on the Deployment's {place}, {what}: no Secret is made for it, and none is \
                     deleted, until both are set or both are removed"
                ),
                name,
            }
        }
    }
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
        .filter_map(|d| match request_of(d) {
            Request::Secret {
                path, name: asked, ..
            } => (secret::secret_name(&asked).ok()? == name).then_some((d.as_ref(), path)),
            _ => None,
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
    secrets: super::SecretFeed,
    trigger: UnboundedReceiver<ObjectRef<Deployment>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let deployments: Api<Deployment> = scoped_api(&ctx.client, scope.as_deref());
    // Owned Secrets: their owners are all that is read (the shared cache's records).
    let secret_cache = secrets.cache;
    let secret_stream = super::skip_own_echoes(secrets.events, ctx.clone()).touched_objects();
    // Every Deployment of the scope is cached: keep what the reconcile reads (metadata and
    // spec), not managedFields or status.
    let (deployment_store, writer) = reflector::store();
    let deployments = watcher(deployments, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|d: &mut Deployment| {
            super::drop_managed_fields(d);
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
    let dctx = Arc::new(Scope {
        shared: ctx.clone(),
        deployments: controller.store(),
        secrets: secret_cache,
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

fn error_policy(obj: Arc<Deployment>, error: &Error, dctx: Arc<Scope>) -> Action {
    tracing::warn!(deployment = %obj.name_any(), error = %error, "Deployment reconcile failed");
    Action::requeue(
        dctx.shared
            .backoff
            .next(&key_of(&obj), super::context::FIRST_RETRY),
    )
}

fn key_of(d: &Deployment) -> String {
    super::object_key(
        TargetKind::Deployment,
        &d.namespace().unwrap_or_default(),
        &d.name_any(),
    )
}

#[tracing::instrument(skip_all, fields(namespace = obj.namespace(), deployment = %obj.name_any()))]
async fn reconcile(obj: Arc<Deployment>, dctx: Arc<Scope>) -> Result<Action, Error> {
    let ctx = &dctx.shared;
    let namespace = obj.namespace().ok_or(Error::NoNamespace)?;
    let key = TargetKey {
        kind: TargetKind::Deployment,
        namespace: namespace.clone(),
        name: obj.name_any(),
    };
    // A Deployment the official operator handled carries its finalizer, which nothing else
    // would remove: its deletion would hang.
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    takeover::take_over(&api, obj.as_ref())
        .await
        .map_err(Error::Finalizer)?;
    let request = if obj.meta().deletion_timestamp.is_some() {
        Request::Nothing
    } else {
        request_of(&obj)
    };
    let (path, asked_name, annotations) = match request {
        Request::Nothing => {
            ctx.registry.forget(&key);
            release(&dctx, &obj, &namespace, None).await?;
            return Ok(Action::await_change());
        }
        // Neither made nor released: the Secret it may have is kept as it is.
        Request::Unclear { why, .. } => {
            ctx.registry.forget(&key);
            let outcome = Err(SyncError::Unsupported(why));
            report(ctx, &obj, "", &outcome).await;
            return Ok(Action::await_change());
        }
        Request::Secret {
            path,
            name,
            annotations,
        } => (path, name, annotations),
    };
    let timer = ctx.metrics.reconcile_started("deployment");
    let all = dctx.deployments.state();
    let target = target_for(&all, &obj, &namespace, &path, &asked_name, annotations);
    let outcome = ctx.sync_tracked(key, &path, target).await;
    report(ctx, &obj, &asked_name, &outcome).await;
    if outcome.is_ok() {
        // After a change of item-name, the Secret of the old name is no longer asked for.
        let kept = secret::secret_name(&asked_name).ok();
        release(&dctx, &obj, &namespace, kept.as_deref()).await?;
    }
    Ok(ctx.after_sync("deployment", &key_of(&obj), &outcome, timer))
}

/// A Deployment has no status of ours: events say what happened, once per change of reason.
async fn report(
    ctx: &Context,
    obj: &Deployment,
    asked_name: &str,
    outcome: &Result<sync::Synced, SyncError>,
) {
    let reason = match outcome {
        Ok(_) => Reason::Synced,
        Err(e) => e.reason(),
    };
    let previous = ctx.note_reason(&key_of(obj), reason);
    let mut events = Vec::new();
    if let Some(note) = outcome
        .as_ref()
        .ok()
        .and_then(sync::Synced::force_synced_note)
    {
        events.push((EventType::Normal, Reason::ForceSynced, note));
    }
    match outcome {
        Ok(s) if matches!(s.change, Change::Created | Change::Updated) => {
            events.push((
                EventType::Normal,
                Reason::SecretSynced,
                format!("Secret {asked_name:?} holds item version {}", s.version),
            ));
            // Warnings are found when the item is fetched: said with the write they go with.
            if !s.warnings.is_empty() {
                events.push((
                    EventType::Warning,
                    Reason::SyncWarning,
                    s.warnings.join("; "),
                ));
            }
        }
        Ok(s) if previous.is_some_and(|p| p != reason) => events.push((
            EventType::Normal,
            Reason::Synced,
            format!("Secret {asked_name:?} holds item version {}", s.version),
        )),
        Err(e) if previous != Some(reason) => {
            events.push((EventType::Warning, e.reason(), e.to_string()))
        }
        _ => {}
    }
    for (type_, reason, note) in events {
        ctx.publish(&obj.object_ref(&()), "Sync", type_, reason, &note)
            .await;
    }
    if let Err(e) = outcome {
        tracing::info!(reason = %e.reason(), error = %e, "Secret for Deployment not synced");
    }
}

/// What `obj`'s request asks for, among all the Deployments of the scope (`all`), checked
/// before anything is fetched. The Secret is owned by every Deployment that asks for it.
fn target_for(
    all: &[Arc<Deployment>],
    obj: &Deployment,
    namespace: &str,
    path: &str,
    asked_name: &str,
    annotations: BTreeMap<String, String>,
) -> Result<SyncTarget, SyncError> {
    let path = ItemPath::parse(path)?;
    let name = secret::secret_name(asked_name)?;
    let askers = askers(all, namespace, &name);
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
    let sharing: Vec<&Deployment> = askers
        .iter()
        .filter(|(_, p)| *p == path.to_string())
        .map(|(d, _)| *d)
        .collect();
    let mut owners: Vec<OwnerReference> = sharing.iter().map(|d| owner_reference(d)).collect();
    if owners.is_empty() {
        owners.push(owner_reference(obj));
    }
    // Every sharer's `force-sync` value counts, so two of them never undo each other's record.
    let forced: Vec<String> = sharing
        .iter()
        .filter_map(|d| match request_of(d) {
            Request::Secret { annotations, .. } => annotations.get(FORCE_SYNC_ANNOTATION).cloned(),
            _ => None,
        })
        .chain(annotations.get(FORCE_SYNC_ANNOTATION).cloned())
        .collect();
    let annotations: BTreeMap<String, String> = annotations
        .into_iter()
        .filter(|(k, v)| k != AUTO_RESTART_ANNOTATION || crate::vocabulary::parse_bool(v).is_some())
        .collect();
    let mut target = SyncTarget {
        namespace: namespace.to_string(),
        name,
        path,
        secret_type: None,
        labels: BTreeMap::new(),
        annotations,
        owners,
        shape: Default::default(),
        presumed_absent: false,
    };
    target.force_sync(forced.iter().map(String::as_str));
    Ok(target)
}

/// Why a Secret that only `uid`'s Deployment owns, and that its last reconcile found it no
/// longer asks for, must be kept; `None` when it is proven that nothing asks for it: the
/// Deployment as it is now (`live`, `None` when gone) clearly asks for nothing or for another
/// Secret, and no other Deployment of the namespace names it (even in an unclear request).
fn kept_because(
    name: &str,
    uid: &str,
    live: Option<&Deployment>,
    all: &[Arc<Deployment>],
) -> Option<&'static str> {
    let Some(live) = live.filter(|d| d.meta().deletion_timestamp.is_none()) else {
        return Some("the Deployment is going: garbage collection removes the Secret after it");
    };
    match request_of(live) {
        Request::Nothing => {}
        request @ Request::Secret { .. } if request.names().as_deref() != Some(name) => {}
        Request::Secret { .. } => return Some("the Deployment asks for it again"),
        Request::Unclear { .. } => return Some("the Deployment's request is unclear"),
    }
    let namespace = live.namespace();
    let named_by_another = all.iter().any(|d| {
        d.uid().as_deref() != Some(uid)
            && d.namespace() == namespace
            && d.meta().deletion_timestamp.is_none()
            && request_of(d).names().as_deref() == Some(name)
    });
    named_by_another.then_some("another Deployment names it")
}

/// The Deployment no longer asks for a Secret (annotations removed or renamed, or being
/// deleted): drop its owner reference from the Secrets it owns but `keep`, and delete a Secret
/// left with no owner once [`kept_because`] finds no reason to keep it.
async fn release(
    dctx: &Scope,
    obj: &Deployment,
    namespace: &str,
    keep: Option<&str>,
) -> Result<(), Error> {
    let Some(uid) = obj.uid() else { return Ok(()) };
    let api: Api<Secret> = Api::namespaced(dctx.shared.client.clone(), namespace);
    let owned: Vec<(String, Arc<CachedSecret>)> = dctx
        .secrets
        .in_namespace(namespace)
        .into_iter()
        .filter(|(name, _)| keep.is_none_or(|keep| name != keep))
        .filter(|(_, s)| s.owners().iter().any(|o| *o.uid == uid))
        .collect();
    // Read once, when a deletion is considered: the Deployment as it is now, not as cached.
    let mut live: Option<Option<Deployment>> = None;
    for (name, secret) in owned {
        let owners = secret.owners();
        if owners.iter().all(|o| *o.uid == uid) {
            if obj.meta().deletion_timestamp.is_some() {
                // Garbage collection removes it once the Deployment is gone.
                continue;
            }
            // Other Deployments are looked at only once all of them are known.
            dctx.deployments
                .wait_until_ready()
                .await
                .map_err(|_| Error::DeploymentCacheGone)?;
            if live.is_none() {
                let deployments: Api<Deployment> =
                    Api::namespaced(dctx.shared.client.clone(), namespace);
                live = Some(
                    deployments
                        .get_opt(&obj.name_any())
                        .await
                        .map_err(Error::Read)?,
                );
            }
            let live = live.as_ref().and_then(Option::as_ref);
            let all = dctx.deployments.state();
            if let Some(why) = kept_because(&name, &uid, live, &all) {
                tracing::info!(secret = %name, why, "Secret kept");
                continue;
            }
            // Only the Secret as we saw it: a change since (a new owner) makes this a 409.
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: secret.uid().map(str::to_string),
                    resource_version: secret.resource_version().map(str::to_string),
                }),
                ..Default::default()
            };
            match api.delete(&name, &params).await {
                Ok(_) => tracing::info!(secret = %name, "deleted Secret no Deployment asks for"),
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                // Looked at again with the Secret as it is now (our own writes wake nothing).
                Err(kube::Error::Api(e)) if e.code == 409 => return Err(Error::SecretChanged),
                Err(e) => return Err(Error::Release(e)),
            }
        } else if let Some(index) = owners.iter().position(|o| *o.uid == uid) {
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
    use crate::controller::SecretMeta;
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

    fn asks(path: &str, name: &str) -> (String, String) {
        (path.to_string(), name.to_string())
    }

    /// `(path, name)` of a clear request, else what `request_of` said.
    fn pair(d: &Deployment) -> Result<(String, String), Request> {
        match request_of(d) {
            Request::Secret { path, name, .. } => Ok((path, name)),
            other => Err(other),
        }
    }

    #[test]
    fn the_request_comes_from_metadata_first_then_from_the_pod_template() {
        let d = deployment(
            "web",
            &[
                (ITEM_PATH_ANNOTATION, "vaults/a/items/b"),
                (ITEM_NAME_ANNOTATION, "web-db"),
                ("other", "x"),
            ],
            &[(ITEM_NAME_ANNOTATION, "ignored")],
        );
        assert_eq!(pair(&d), Ok(asks("vaults/a/items/b", "web-db")));
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
        assert_eq!(pair(&t), Ok(asks("vaults/a/items/b", "from-template")));
        let Request::Secret { annotations, .. } = request_of(&t) else {
            panic!("a request");
        };
        assert!(!annotations.contains_key(LAST_RESTARTED_ANNOTATION));
        assert!(!annotations.contains_key(SECRET_DIGESTS_ANNOTATION));
        assert_eq!(
            request_of(&deployment("web", &[("other", "x")], &[])),
            Request::Nothing
        );
    }

    #[test]
    fn another_operator_annotation_on_the_metadata_never_hides_a_request_on_the_pod_template() {
        // `kubectl annotate deploy web operator.1password.io/auto-restart=true` once deleted
        // the Secret of a request on the pod template.
        let template = [
            (ITEM_PATH_ANNOTATION, "vaults/a/items/b"),
            (ITEM_NAME_ANNOTATION, "web-db"),
        ];
        for key in [
            AUTO_RESTART_ANNOTATION,
            SECRET_DIGESTS_ANNOTATION,
            LAST_RESTARTED_ANNOTATION,
            "operator.1password.io/something-new",
        ] {
            let d = deployment("web", &[(key, "true")], &template);
            assert_eq!(
                pair(&d),
                Ok(asks("vaults/a/items/b", "web-db")),
                "with {key}"
            );
        }
    }

    #[test]
    fn half_a_pair_or_an_empty_value_is_unclear_not_nothing() {
        let unclear = |meta: &[(&str, &str)], template: &[(&str, &str)]| match request_of(
            &deployment("web", meta, template),
        ) {
            Request::Unclear { why, name } => (why, name),
            other => panic!("{meta:?} {template:?}: {other:?}"),
        };
        let (why, name) = unclear(&[(ITEM_NAME_ANNOTATION, "web-db")], &[]);
        assert_eq!(name.as_deref(), Some("web-db"));
        assert!(why.contains("metadata"), "{why}");
        assert!(
            why.contains(&format!("{ITEM_PATH_ANNOTATION} is missing")),
            "{why}"
        );
        let (why, name) = unclear(&[], &[(ITEM_PATH_ANNOTATION, "vaults/a/items/b")]);
        assert_eq!(name, None);
        assert!(why.contains("pod template"), "{why}");
        // Half a pair on the metadata is not completed from the pod template.
        unclear(
            &[(ITEM_PATH_ANNOTATION, "vaults/a/items/b")],
            &[(ITEM_NAME_ANNOTATION, "web-db")],
        );
        let (_, name) = unclear(
            &[
                (ITEM_PATH_ANNOTATION, " "),
                (ITEM_NAME_ANNOTATION, "web-db"),
            ],
            &[],
        );
        assert_eq!(name.as_deref(), Some("web-db"));
        unclear(
            &[(ITEM_PATH_ANNOTATION, ""), (ITEM_NAME_ANNOTATION, "")],
            &[],
        );
    }

    #[test]
    fn a_secret_is_released_only_when_nothing_asks_for_it() {
        let path = "vaults/a/items/b";
        let web = |meta: &[(&str, &str)]| deployment("web", meta, &[]);
        let uid = "uid-web";
        let nothing = web(&[]);
        let other_name = web(&[
            (ITEM_PATH_ANNOTATION, path),
            (ITEM_NAME_ANNOTATION, "renamed"),
        ]);
        assert_eq!(kept_because("web-db", uid, Some(&nothing), &[]), None);
        assert_eq!(kept_because("web-db", uid, Some(&other_name), &[]), None);

        // The Deployment as it is now asks for it, is unclear, or is going.
        let again = web(&[
            (ITEM_PATH_ANNOTATION, path),
            (ITEM_NAME_ANNOTATION, "Web-DB"),
        ]);
        assert!(kept_because("web-db", uid, Some(&again), &[]).is_some());
        let unclear = web(&[(ITEM_PATH_ANNOTATION, path)]);
        assert!(kept_because("web-db", uid, Some(&unclear), &[]).is_some());
        assert!(kept_because("web-db", uid, None, &[]).is_some());
        let mut going = nothing.clone();
        going.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:00:00Z".parse().unwrap(),
            ));
        assert!(kept_because("web-db", uid, Some(&going), &[]).is_some());

        // Another Deployment names it, even in an unclear request.
        let worker = |meta: &[(&str, &str)]| Arc::new(deployment("worker", meta, &[]));
        let asking = worker(&[
            (ITEM_PATH_ANNOTATION, path),
            (ITEM_NAME_ANNOTATION, "web-db"),
        ]);
        let half = worker(&[(ITEM_NAME_ANNOTATION, "web-db")]);
        let elsewhere = worker(&[
            (ITEM_PATH_ANNOTATION, path),
            (ITEM_NAME_ANNOTATION, "worker-db"),
        ]);
        assert!(kept_because("web-db", uid, Some(&nothing), &[asking]).is_some());
        assert!(kept_because("web-db", uid, Some(&nothing), &[half]).is_some());
        let cached_self = Arc::new(again.clone());
        assert_eq!(
            kept_because("web-db", uid, Some(&nothing), &[elsewhere, cached_self]),
            None,
            "its own stale cache entry does not count as another Deployment"
        );
    }

    /// The whole reconcile against a mocked API server and a simulated Connect server.
    mod reconcile_verifier {
        use super::*;
        use crate::{
            controller::testing::{self, Expect, Seen, assert_no_more_requests, serve},
            vocabulary::{FIELD_MANAGER, MANAGED_LABEL, MANAGED_VALUE},
        };
        use connect_sim::{ItemSpec, Seed, Simulator, TokenAccess, VaultSpec};
        use kube::{api::PartialObjectMetaExt, runtime::watcher};
        use serde_json::json;

        const SECRET: &str = "/api/v1/namespaces/apps/secrets/web-db";
        const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/apps/deployments/web";

        fn asking() -> Deployment {
            deployment(
                "web",
                &[
                    (ITEM_PATH_ANNOTATION, "vaults/Prod/items/db"),
                    (ITEM_NAME_ANNOTATION, "web-db"),
                ],
                &[],
            )
        }

        /// A store holding `objects`, listed.
        fn store_of<K>(objects: Vec<K>) -> Store<K>
        where
            K: Resource<DynamicType = ()> + Clone + 'static,
        {
            let (store, mut writer) = reflector::store();
            writer.apply_watcher_event(&watcher::Event::Init);
            for o in objects {
                writer.apply_watcher_event(&watcher::Event::InitApply(o));
            }
            writer.apply_watcher_event(&watcher::Event::InitDone);
            store
        }

        /// Reconciles `obj` among `deployments`, the managed Secrets being `secrets`, with the
        /// API server answering `script`.
        async fn reconcile_with(
            obj: Deployment,
            deployments: Vec<Deployment>,
            secrets: Vec<SecretMeta>,
            script: Vec<Expect>,
        ) -> (Result<Action, Error>, Vec<Seen>) {
            let item = ItemSpec::new("db").password("hunter2");
            let seed = Seed::new()
                .vault(VaultSpec::new("Prod").item(item))
                .token("token", TokenAccess::All);
            let sim = Simulator::start(seed).unwrap();
            let (client, handle) = testing::mock_client();
            let scope = Arc::new(Scope {
                shared: testing::context_on(client, &sim.url()),
                deployments: store_of(deployments),
                secrets: SecretCache::listed(secrets),
            });
            let server = tokio::spawn(serve(handle, script));
            let result = reconcile(Arc::new(obj), scope).await;
            let (handle, seen) = server.await.unwrap();
            assert_no_more_requests(handle);
            (result, seen)
        }

        #[tokio::test]
        async fn an_annotated_deployment_gets_its_secret_applied_with_an_owner_reference_to_it_and_one_synced_event()
         {
            let obj = asking();
            let script = vec![
                Expect::failing("GET", SECRET, 404),
                Expect::apply(SECRET),
                Expect::event("apps"),
            ];
            let (result, seen) = reconcile_with(obj.clone(), vec![obj], vec![], script).await;
            result.unwrap();
            let (method, uri, secret) = &seen[1];
            assert_eq!(method, "PATCH");
            assert!(
                uri.contains(&format!("fieldManager={FIELD_MANAGER}")),
                "{uri}"
            );
            assert_eq!(secret["data"], json!({"password": "aHVudGVyMg=="}));
            let meta = &secret["metadata"];
            assert_eq!(
                meta["ownerReferences"],
                json!([{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "uid-web"}]),
                "an owner, not the controller: Deployments may share it"
            );
            assert_eq!(meta["labels"][MANAGED_LABEL], MANAGED_VALUE);
            assert_eq!(meta["annotations"][ITEM_NAME_ANNOTATION], "web-db");
            let path = meta["annotations"][ITEM_PATH_ANNOTATION].as_str().unwrap();
            assert!(
                path.starts_with("vaults/") && !path.contains("Prod"),
                "the ids the Secret holds, not the Deployment's title path: {path}"
            );
            let event = &seen[2].2;
            assert_eq!(event["reason"], "SecretSynced");
            assert_eq!(event["regarding"]["kind"], "Deployment");
        }

        #[tokio::test]
        async fn a_deployment_that_no_longer_asks_deletes_its_secret_only_as_it_was_seen() {
            let obj = deployment("web", &[], &[]);
            let secret = ObjectMeta {
                name: Some("web-db".into()),
                namespace: Some("apps".into()),
                uid: Some("s-uid".into()),
                resource_version: Some("5".into()),
                owner_references: Some(vec![owner_reference(&obj)]),
                ..Default::default()
            }
            .into_response_partial::<Secret>();
            let live = serde_json::to_value(&obj).unwrap();
            let gone = json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "web-db", "namespace": "apps"}});
            let script = vec![
                // The Deployment as it is now, not as cached, decides.
                Expect::new("GET", DEPLOYMENT, 200, live),
                Expect::new("DELETE", SECRET, 200, gone),
            ];
            let (result, seen) = reconcile_with(obj.clone(), vec![obj], vec![secret], script).await;
            assert_eq!(result.unwrap(), Action::await_change());
            assert_eq!(
                seen[1].2["preconditions"],
                json!({"uid": "s-uid", "resourceVersion": "5"}),
                "a Secret changed since (a new owner) is not deleted"
            );
        }

        #[tokio::test]
        async fn half_a_pair_makes_no_request_but_one_warning_event() {
            let obj = deployment("web", &[(ITEM_NAME_ANNOTATION, "web-db")], &[]);
            let script = vec![Expect::event("apps")];
            let (result, seen) = reconcile_with(obj.clone(), vec![obj], vec![], script).await;
            assert_eq!(result.unwrap(), Action::await_change());
            assert_eq!(seen[0].2["type"], "Warning");
            assert_eq!(seen[0].2["reason"], "Unsupported");
        }
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
