//! OnePasswordItem -> a Secret of the same name, owned by the item (deleting the item garbage
//! collects the Secret), with a `Ready` condition and events that say what is wrong.

use std::{collections::BTreeMap, future::Future, sync::Arc};

use futures::{StreamExt, channel::mpsc::UnboundedReceiver};
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{OwnerReference, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::{self, Action},
        events::EventType,
        reflector::{self, ObjectRef},
        watcher,
    },
};
use serde_json::json;

use super::{
    Context,
    crd_probe::{self, Refusal, StatusFields},
    poller::{TargetKey, TargetKind},
    scoped_api,
    status_queue::{self, Written},
    sync::{Change, SyncError, SyncTarget, Synced},
    takeover, truncate,
};
use crate::{
    connect::ItemPath,
    crd::{OnePasswordItem, OnePasswordItemCondition, OnePasswordItemStatus},
    secret::{
        self, Shape,
        shape::{DOCKER_CONFIG_JSON_TYPE, check_not_reserved},
    },
    vocabulary::{
        AUTO_RESTART_ANNOTATION, FIELD_MANAGER, FORCE_SYNC_ANNOTATION, MANAGED_LABEL, Reason,
    },
};

/// Labels of the item that are not copied to its Secret: Argo CD tracks resources by them, and a
/// Secret carrying the item's instance label is pruned as an orphan (official operator #96).
const LABELS_NOT_COPIED: &[&str] = &["app.kubernetes.io/instance", "argocd.argoproj.io/instance"];
const ANNOTATIONS_NOT_COPIED: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("writing the status failed: {0}")]
    Status(#[source] kube::Error),
    #[error("removing the official operator's finalizer failed: {0}")]
    Finalizer(#[source] kube::Error),
    #[error("the object has no namespace")]
    NoNamespace,
}

/// Runs the controller for one scope (`None`: all namespaces) until `shutdown`.
pub async fn run(
    ctx: Arc<Context>,
    scope: Option<String>,
    secrets: super::SecretEvents,
    trigger: UnboundedReceiver<ObjectRef<OnePasswordItem>>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let items: Api<OnePasswordItem> = scoped_api(&ctx.client, scope.as_deref());
    // The cached items need no managedFields; the owned Secrets come from the shared watch.
    let (store, writer) = reflector::store();
    // Status writes (ours) need no reconcile; spec, labels and annotations do.
    let items = watcher(items, watcher::Config::default())
        .default_backoff()
        .modify(|i: &mut OnePasswordItem| {
            super::drop_managed_fields(i);
            super::drop_annotations(i, |k| !ANNOTATIONS_NOT_COPIED.contains(&k));
        })
        .reflect(writer);
    let items = super::forget_deleted(items, ctx.clone(), TargetKind::Item, scope.clone());
    let items = super::skip_unchanged(items).touched_objects();
    let secrets = super::skip_own_echoes(secrets, ctx.clone()).touched_objects();
    Controller::for_stream(items, store)
        .owns_stream(secrets)
        .reconcile_on(trigger)
        // The installed CRD changed what status we can write: write every status again.
        .reconcile_all_on(ctx.status_schema.changes())
        .with_config(controller::Config::default().concurrency(ctx.config.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                super::log_run_error("OnePasswordItem", &e);
            }
        })
        .await;
}

fn error_policy(obj: Arc<OnePasswordItem>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(item = %obj.name_any(), error = %error, "OnePasswordItem reconcile failed");
    Action::requeue(ctx.backoff.next(&key_of(&obj), super::context::FIRST_RETRY))
}

fn key_of(obj: &OnePasswordItem) -> String {
    super::object_key(
        TargetKind::Item,
        &obj.namespace().unwrap_or_default(),
        &obj.name_any(),
    )
}

#[tracing::instrument(skip_all, fields(namespace = obj.namespace(), item = %obj.name_any()))]
async fn reconcile(obj: Arc<OnePasswordItem>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = obj.namespace().ok_or(Error::NoNamespace)?;
    let key = TargetKey {
        kind: TargetKind::Item,
        namespace: namespace.clone(),
        name: obj.name_any(),
    };
    // An item the official operator handled carries its finalizer, which nothing else would
    // remove: its deletion would hang.
    let api: Api<OnePasswordItem> = Api::namespaced(ctx.client.clone(), &namespace);
    takeover::take_over(&api, obj.as_ref())
        .await
        .map_err(Error::Finalizer)?;
    if obj.meta().deletion_timestamp.is_some() {
        // The Secret goes with it through its owner reference; nothing to clean up here.
        ctx.statuses
            .forget(&(key.namespace.clone(), key.name.clone()));
        ctx.registry.forget(&key);
        ctx.note_ready(&key_of(&obj), None);
        return Ok(Action::await_change());
    }
    let timer = ctx.metrics.reconcile_started("item");
    let path = obj.spec.item_path.as_deref().unwrap_or_default();
    let target = target_for(&obj, &namespace, ctx.config.enable_annotations).map(|mut t| {
        // Nothing has synced an item without a status, unless this process wrote its Secret
        // and the status write that followed failed.
        t.presumed_absent = obj.status.is_none() && !ctx.own_writes.knows(&namespace, &t.name);
        t
    });
    let outcome = ctx.sync_tracked(key, path, target).await;

    // The status is written after the Secret, by the status writers: a Secret never waits
    // behind a status (see [`super::status_queue`]).
    let status = desired_status(&obj, &outcome, Timestamp::now());
    if obj.status.as_ref() != Some(&ctx.status_schema.fields().project(&status)) {
        ctx.statuses
            .push((namespace.clone(), obj.name_any()), status.clone());
    }
    publish_events(&ctx, &obj, &outcome, &status).await;

    if let Err(e) = &outcome {
        tracing::info!(reason = %e.reason(), error = %e, "OnePasswordItem not synced");
    }
    ctx.note_ready(&key_of(&obj), Some(outcome.is_ok()));
    Ok(ctx.after_sync("item", &key_of(&obj), &outcome, timer))
}

/// What the item asks for, checked before anything is fetched.
pub fn target_for(
    obj: &OnePasswordItem,
    namespace: &str,
    enable_annotations: bool,
) -> Result<SyncTarget, SyncError> {
    let path = ItemPath::parse(obj.spec.item_path.as_deref().unwrap_or_default())?;
    let shape = Shape::of(&obj.spec);
    shape.validate().map_err(SyncError::InvalidShape)?;
    // A template that does not compile is reported before the item is fetched.
    crate::secret::template::check(&shape.template)?;
    let secret_type = shaped_type(obj, &shape)?;
    let mut labels: BTreeMap<String, String> = obj
        .labels()
        .iter()
        .filter(|(k, _)| !LABELS_NOT_COPIED.contains(&k.as_str()) && k.as_str() != MANAGED_LABEL)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut annotations = BTreeMap::new();
    if enable_annotations {
        annotations.extend(
            obj.annotations()
                .iter()
                .filter(|(k, _)| !ANNOTATIONS_NOT_COPIED.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
    if let Some(value) = obj.annotations().get(AUTO_RESTART_ANNOTATION) {
        if crate::vocabulary::parse_bool(value).is_none() {
            return Err(SyncError::Unsupported(format!(
                "annotation {AUTO_RESTART_ANNOTATION} is {value:?}; it must be true or false"
            )));
        }
        annotations.insert(AUTO_RESTART_ANNOTATION.into(), value.clone());
    }
    let spec = &obj.spec;
    check_not_reserved("spec.secretLabels", spec.secret_labels.keys())
        .and_then(|()| check_not_reserved("spec.secretAnnotations", spec.secret_annotations.keys()))
        .map_err(SyncError::InvalidShape)?;
    labels.extend(spec.secret_labels.clone());
    annotations.extend(spec.secret_annotations.clone());
    let mut target = SyncTarget {
        namespace: namespace.to_string(),
        name: obj.name_any(),
        path,
        secret_type: Some(secret_type),
        labels,
        annotations,
        owners: vec![owner_reference(obj)],
        shape,
        // Decided by `reconcile`, which knows what this process wrote.
        presumed_absent: false,
    };
    target.force_sync(
        obj.annotations()
            .get(FORCE_SYNC_ANNOTATION)
            .map(String::as_str),
    );
    target.extra_paths()?;
    Ok(target)
}

/// The Secret's type: as `type` says, except that `imagePullSecret` makes it
/// `kubernetes.io/dockerconfigjson` and refuses any other.
fn shaped_type(obj: &OnePasswordItem, shape: &Shape) -> Result<String, SyncError> {
    let asked = secret::secret_type(obj.secret_type.as_deref())?;
    match (&shape.image_pull, asked.as_str()) {
        (None, _) => Ok(asked),
        (Some(_), "Opaque" | DOCKER_CONFIG_JSON_TYPE) => Ok(DOCKER_CONFIG_JSON_TYPE.into()),
        (Some(_), other) => Err(SyncError::InvalidShape(format!(
            "spec.imagePullSecret makes a {DOCKER_CONFIG_JSON_TYPE} Secret, but type is {other:?}"
        ))),
    }
}

fn owner_reference(obj: &OnePasswordItem) -> OwnerReference {
    OwnerReference {
        api_version: OnePasswordItem::api_version(&()).into(),
        kind: OnePasswordItem::kind(&()).into(),
        name: obj.name_any(),
        uid: obj.uid().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: None,
    }
}

/// The status a reconcile outcome calls for. Pure: `now` is used only when the Ready status
/// flips, so an unchanged outcome yields an identical status and no write.
///
/// The Ready message says what the Secret holds, with what the user should know about it
/// (keys skipped, titles matching several items; never values). Those warnings are found only
/// when the item is fetched, so they are carried over from the previous message for as long as
/// the Secret holds the same version of the same item: through reconciles that fetch nothing,
/// operator restarts, and failures (whose message ends with what the Secret still holds).
pub fn desired_status(
    obj: &OnePasswordItem,
    outcome: &Result<Synced, SyncError>,
    now: Timestamp,
) -> OnePasswordItemStatus {
    let previous = obj.status.clone().unwrap_or_default();
    let name = obj.name_any();
    let previous_held = obj
        .ready_condition()
        .and_then(|c| c.message.as_deref())
        .and_then(|m| held_part(m, &name));
    let (ready, reason, message) = match outcome {
        Ok(s) => {
            let reason = synced_reason(s);
            let head = held_head(&name, s);
            let carried = previous_held.filter(|held| {
                s.change == Change::Unchanged
                    && s.warnings.is_empty()
                    && (*held == head || held.starts_with(&format!("{head}; ")))
            });
            let message = match carried {
                Some(held) => held.to_string(),
                None => {
                    let mut message = head;
                    for w in &s.warnings {
                        message.push_str("; ");
                        message.push_str(w);
                    }
                    message
                }
            };
            (true, reason, message)
        }
        // Someone else's Secret holds nothing of ours.
        Err(e @ SyncError::Conflict { .. }) => (false, e.reason(), e.to_string()),
        Err(e) => {
            let message = match previous_held {
                Some(held) => format!("{e}. Left as it was: {held}"),
                None => e.to_string(),
            };
            (false, e.reason(), message)
        }
    };
    let status = if ready { "True" } else { "False" };
    let old_ready = obj.ready_condition();
    let last_transition_time = match old_ready {
        Some(c) if c.status == status && c.last_transition_time.is_some() => {
            c.last_transition_time.clone()
        }
        _ => Some(Time(now)),
    };
    let condition = OnePasswordItemCondition {
        type_: "Ready".into(),
        status: status.into(),
        last_transition_time,
        message: Some(truncate(&message, 1024)),
        reason: Some(reason.as_str().into()),
        observed_generation: obj.metadata.generation,
    };
    let mut conditions: Vec<OnePasswordItemCondition> = previous
        .conditions
        .iter()
        .filter(|c| c.type_ != "Ready")
        .cloned()
        .collect();
    conditions.insert(0, condition);
    let (vault_id, item_id, item_version) = match outcome {
        Ok(s) => (
            Some(s.resolution.vault_id.clone()),
            Some(s.resolution.item_id.clone()),
            Some(s.version as i64),
        ),
        // The Secret still holds what it held: keep saying so.
        Err(_) => (previous.vault_id, previous.item_id, previous.item_version),
    };
    OnePasswordItemStatus {
        conditions,
        observed_generation: obj.metadata.generation,
        vault_id,
        item_id,
        item_version,
    }
}

/// The Ready reason of a sync that went through. A Secret just made for an ignored item is
/// Ignored from the start: later changes of the item will not reach it.
fn synced_reason(s: &Synced) -> Reason {
    if s.change == Change::Ignored || s.resolution.ignored {
        Reason::Ignored
    } else {
        Reason::Synced
    }
}

/// Whether a status write is done, or must be made again shortly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum StatusWrite {
    Done,
    /// The API server had not yet caught up with a CRD update and took only the official
    /// operator's shape: the whole status is written again shortly.
    Again,
}

/// Writes `status`, or as much of it as the installed CRD declares. A refusal for fields the
/// CRD does not declare (a CRD we could not read) makes every later write use the official
/// operator's shape, and this one is tried once more in it; never more. A refusal of fields the
/// CRD we read declares (the API server lagging a CRD update by a moment) has this write made
/// in the official shape and the whole status written again shortly.
async fn write_status(
    ctx: &Context,
    name: &str,
    namespace: &str,
    status: &OnePasswordItemStatus,
) -> Result<StatusWrite, Error> {
    let api: Api<OnePasswordItem> = Api::namespaced(ctx.client.clone(), namespace);
    let official = StatusFields::official();
    let mut fields = ctx.status_schema.fields();
    let mut lagging = false;
    for _ in 0..2 {
        let body = json!({
            "apiVersion": OnePasswordItem::api_version(&()),
            "kind": OnePasswordItem::kind(&()),
            "status": fields.project(status),
        });
        let written = api
            .patch_status(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await;
        match written {
            Ok(_) => break,
            Err(e) if crd_probe::is_schema_rejection(&e) => {
                lagging |= ctx.status_schema.reject() == Refusal::Lagging;
                if fields == official {
                    if !lagging {
                        // Retrying cannot help: the status is left as it is until the next
                        // reconcile.
                        tracing::warn!(
                            "the API server refuses even the official operator's status shape; \
                             the status is not written"
                        );
                    }
                    break;
                }
                fields = official.clone();
            }
            Err(e) => return Err(Error::Status(e)),
        }
    }
    Ok(if lagging {
        StatusWrite::Again
    } else {
        StatusWrite::Done
    })
}

/// Writes a status the queue handed over ([`super::status_queue::run`]): a failed write is tried
/// again with the object's backoff, one the API server lagging took in part a second later; the
/// status of an object that is gone is dropped.
pub(super) async fn write_queued_status(
    ctx: &Context,
    (namespace, name): &status_queue::Key,
    status: &OnePasswordItemStatus,
) -> Written {
    let backoff_key = format!(
        "status/{}",
        super::object_key(TargetKind::Item, namespace, name)
    );
    match write_status(ctx, name, namespace, status).await {
        Ok(StatusWrite::Done) => {
            ctx.backoff.reset(&backoff_key);
            Written::Done
        }
        Ok(StatusWrite::Again) => Written::Retry(super::context::RECHECK_AFTER),
        Err(Error::Status(kube::Error::Api(e))) if e.code == 404 => Written::Done,
        Err(e) => {
            let after = ctx.backoff.next(&backoff_key, super::context::FIRST_RETRY);
            tracing::warn!(%namespace, item = %name, error = %e, retry_in_s = after.as_secs(), "cannot write the OnePasswordItem status; trying again");
            Written::Retry(after)
        }
    }
}

/// The start of a Ready message that says which version of which item the Secret holds, and
/// of each other item of `spec.items`, by name (the status fields name the main item only).
fn held_head(name: &str, s: &Synced) -> String {
    let mut head = format!(
        "Secret {name:?} holds version {} of item {} in vault {}",
        s.version, s.resolution.item_id, s.resolution.vault_id
    );
    for (item, (r, version)) in &s.extra {
        head.push_str(&format!(
            ", and as {item:?} version {version} of item {} in vault {}",
            r.item_id, r.vault_id
        ));
    }
    head
}

/// The part of a Ready message that says what the Secret holds (its head and the warnings
/// after it), wherever it is: the whole message when Ready, after the error otherwise. The
/// last match is taken; user text in a warning cannot forge one, as it is always quoted with
/// its `"` escaped, and the head's `"` is not.
fn held_part<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    let start = format!("Secret {name:?} holds version ");
    message.rfind(&start).map(|i| &message[i..])
}

/// The warnings of a Ready message: what follows the head of its held part.
fn warnings_of<'a>(message: &'a str, name: &str) -> &'a str {
    held_part(message, name)
        .and_then(|held| held.split_once("; "))
        .map_or("", |(_, warnings)| warnings)
}

/// Events only on transitions: a change of the Ready reason, a Secret written (except the
/// first one of a new item, which its Ready condition says), or warnings that differ from
/// those the previous status carried.
async fn publish_events(
    ctx: &Context,
    obj: &OnePasswordItem,
    outcome: &Result<Synced, SyncError>,
    status: &OnePasswordItemStatus,
) {
    let old_ready = obj.ready_condition();
    // Under the official CRD a condition has no reason of its own: it leads the message.
    let old_reason = old_ready.and_then(crd_probe::reason_of);
    let old_reason = old_reason.as_deref();
    let new_ready = status.conditions.iter().find(|c| c.type_ == "Ready");
    let mut events = Vec::new();
    match outcome {
        Ok(s) => {
            match s.change {
                // The first Secret of a new item is said by its Ready condition alone: an
                // event per item at a cold start of N items is N writes nobody reads (and a
                // third of the API requests a new Secret costs). A Secret made again, after
                // someone deleted it, is news.
                Change::Created if old_ready.is_none() => {}
                Change::Created => events.push((
                    EventType::Normal,
                    Reason::SecretCreated,
                    format!("Created Secret again from item version {}", s.version),
                )),
                Change::Updated => events.push((
                    EventType::Normal,
                    Reason::SecretUpdated,
                    format!("Updated Secret to item version {}", s.version),
                )),
                _ if old_reason.is_some_and(|old| synced_reason(s) != old) => events.push((
                    EventType::Normal,
                    synced_reason(s),
                    format!("Secret holds item version {}", s.version),
                )),
                _ => {}
            }
            if let Some(note) = s.force_synced_note() {
                events.push((EventType::Normal, Reason::ForceSynced, note));
            }
            let name = obj.name_any();
            let message_of = |c: Option<&OnePasswordItemCondition>| {
                c.and_then(|c| c.message.clone()).unwrap_or_default()
            };
            let (old_message, new_message) = (message_of(old_ready), message_of(new_ready));
            let warnings = warnings_of(&new_message, &name);
            if s.change != Change::Ignored
                && !warnings.is_empty()
                && warnings != warnings_of(&old_message, &name)
            {
                events.push((
                    EventType::Warning,
                    Reason::SyncWarning,
                    warnings.to_string(),
                ));
            }
        }
        Err(e) if old_reason != Some(e.reason().as_str()) => {
            events.push((EventType::Warning, e.reason(), e.to_string()))
        }
        Err(_) => {}
    }
    for (type_, reason, note) in events {
        ctx.publish(&obj.object_ref(&()), "Sync", type_, reason, &note)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Resolution;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn item(path: &str) -> OnePasswordItem {
        OnePasswordItem {
            metadata: ObjectMeta {
                name: Some("db".into()),
                namespace: Some("apps".into()),
                uid: Some("uid-1".into()),
                generation: Some(2),
                labels: Some(BTreeMap::from([
                    ("team".to_string(), "a".to_string()),
                    ("app.kubernetes.io/instance".to_string(), "x".to_string()),
                ])),
                annotations: Some(BTreeMap::from([
                    (AUTO_RESTART_ANNOTATION.to_string(), "true".to_string()),
                    ("note".to_string(), "n".to_string()),
                ])),
                ..Default::default()
            },
            spec: crate::crd::OnePasswordItemSpec {
                item_path: Some(path.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn synced(version: u64) -> Synced {
        Synced {
            resolution: Resolution {
                vault_id: "v".into(),
                item_id: "i".into(),
                version,
                note: None,
                ignored: false,
            },
            version,
            extra: Default::default(),
            change: Change::Updated,
            warnings: vec![],
            updated_at: None,
            forced: false,
        }
    }

    #[test]
    fn target_copies_labels_and_the_auto_restart_annotation_and_owns_the_secret() {
        let t = target_for(&item("vaults/Prod/items/db"), "apps", false).unwrap();
        assert_eq!(t.name, "db");
        assert_eq!(t.secret_type.as_deref(), Some("Opaque"));
        assert_eq!(t.labels, BTreeMap::from([("team".into(), "a".into())]));
        assert_eq!(
            t.annotations,
            BTreeMap::from([(AUTO_RESTART_ANNOTATION.into(), "true".into())])
        );
        assert_eq!(t.owners[0].uid, "uid-1");
        assert_eq!(t.owners[0].kind, "OnePasswordItem");
        let with_annotations = target_for(&item("vaults/Prod/items/db"), "apps", true).unwrap();
        assert_eq!(
            with_annotations.annotations.get("note").map(String::as_str),
            Some("n")
        );
    }

    #[test]
    fn a_bad_item_path_a_bad_template_or_a_bad_restart_value_is_refused_before_any_fetch() {
        let err = target_for(&item("Prod/db"), "apps", false).unwrap_err();
        assert_eq!(err.reason(), "InvalidItemPath");
        assert!(err.needs_spec_change());
        let mut templated = item("vaults/Prod/items/db");
        templated.spec.template = Some(crate::crd::SecretTemplate {
            data: Some([("dsn".to_owned(), "{{ .Fields.password }}".to_owned())].into()),
        });
        assert_eq!(
            target_for(&templated, "apps", false).unwrap_err().reason(),
            "TemplateError"
        );
        let mut bad_restart = item("vaults/Prod/items/db");
        bad_restart
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(AUTO_RESTART_ANNOTATION.into(), "yes".into());
        assert!(target_for(&bad_restart, "apps", false).is_err());
    }

    #[test]
    fn image_pull_secret_makes_the_type_dockerconfigjson_and_refuses_another() {
        let mut obj = item("vaults/Prod/items/ghcr");
        obj.spec.image_pull_secret = Some(Default::default());
        let t = target_for(&obj, "apps", false).unwrap();
        assert_eq!(t.secret_type.as_deref(), Some(DOCKER_CONFIG_JSON_TYPE));
        assert!(!t.shape.is_default());
        obj.secret_type = Some("kubernetes.io/tls".into());
        let err = target_for(&obj, "apps", false).unwrap_err();
        assert_eq!(err.reason(), "InvalidShape");
        assert!(err.needs_spec_change());
    }

    #[test]
    fn secret_labels_and_annotations_are_added_and_ours_are_refused() {
        let mut obj = item("vaults/Prod/items/db");
        obj.spec.secret_labels = BTreeMap::from([("tier".into(), "db".into())]);
        obj.spec.secret_annotations = BTreeMap::from([("owner".into(), "ops".into())]);
        let t = target_for(&obj, "apps", false).unwrap();
        assert_eq!(t.labels.get("tier").map(String::as_str), Some("db"));
        assert_eq!(t.annotations.get("owner").map(String::as_str), Some("ops"));
        // Labels and annotations alone are not shaping of the data.
        assert!(t.shape.is_default());
        obj.spec
            .secret_labels
            .insert(MANAGED_LABEL.into(), "me".into());
        let err = target_for(&obj, "apps", false).unwrap_err();
        assert_eq!(err.reason(), "InvalidShape");
        assert!(err.to_string().contains(MANAGED_LABEL), "{err}");
    }

    #[test]
    fn other_items_are_checked_before_any_fetch_and_the_ready_message_names_each() {
        let mut obj = item("vaults/Prod/items/app");
        obj.spec.items = vec![crate::crd::ItemSource {
            name: "db".into(),
            item_path: "Prod/db".into(),
            key_prefix: None,
        }];
        let err = target_for(&obj, "apps", false).unwrap_err();
        assert_eq!(err.reason(), "InvalidItemPath");
        assert!(err.needs_spec_change());
        assert!(
            err.to_string().starts_with("item \"db\" of spec.items: "),
            "{err}"
        );
        obj.spec.items[0].item_path = "vaults/Prod/items/db".into();
        obj.spec.data = vec![crate::crd::SecretKeyRef {
            key: "k".into(),
            field: Some("password".into()),
            item: Some("cache".into()),
            ..Default::default()
        }];
        let err = target_for(&obj, "apps", false).unwrap_err();
        assert_eq!(err.reason(), "InvalidShape");
        assert!(err.to_string().contains("\"cache\""), "{err}");
        obj.spec.data[0].item = Some("db".into());
        assert!(target_for(&obj, "apps", false).is_ok());

        let mut s = synced(3);
        let db = Resolution {
            vault_id: "w".into(),
            item_id: "d".into(),
            version: 7,
            note: None,
            ignored: false,
        };
        s.extra.insert("db".into(), (db, 7));
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let status = desired_status(&obj, &Ok(s), t0);
        assert_eq!(
            ready_message(&status),
            "Secret \"db\" holds version 3 of item i in vault v, and as \"db\" version 7 of \
             item d in vault w"
        );
        // The status fields name the main item, as they always did.
        assert_eq!(status.item_id.as_deref(), Some("i"));
    }

    #[test]
    fn a_force_sync_handled_is_told_with_the_version_and_whether_the_data_changed() {
        let mut s = synced(4);
        assert_eq!(s.force_synced_note(), None);
        s.forced = true;
        assert_eq!(
            s.force_synced_note().as_deref(),
            Some("Fetched the item again as force-sync asked: version 4, data changed")
        );
        s.change = Change::MetadataOnly;
        assert!(s.force_synced_note().unwrap().ends_with("data unchanged"));
    }

    #[test]
    fn status_is_stable_for_the_same_outcome_so_nothing_is_rewritten() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let mut obj = item("vaults/Prod/items/db");
        let first = desired_status(&obj, &Ok(synced(3)), t0);
        assert_eq!(first.conditions[0].status, "True");
        assert_eq!(first.conditions[0].reason.as_deref(), Some("Synced"));
        assert_eq!(first.item_version, Some(3));
        assert_eq!(first.observed_generation, Some(2));
        obj.status = Some(first.clone());
        assert_eq!(desired_status(&obj, &Ok(synced(3)), t1), first);
    }

    #[test]
    fn a_failure_keeps_what_the_secret_holds_and_flips_the_transition_time() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let mut obj = item("vaults/Prod/items/db");
        obj.status = Some(desired_status(&obj, &Ok(synced(3)), t0));
        let err = SyncError::Connect(crate::connect::ConnectError::Timeout(
            std::time::Duration::from_secs(15),
        ));
        let status = desired_status(&obj, &Err(err), t1);
        let ready = &status.conditions[0];
        assert_eq!(ready.status, "False");
        assert_eq!(ready.reason.as_deref(), Some("ConnectUnavailable"));
        assert_eq!(ready.last_transition_time, Some(Time(t1)));
        assert_eq!(status.item_version, Some(3));
    }

    mod api_server {
        use super::*;
        use http::{Request, Response};
        use kube::client::Body;
        use serde_json::Value;

        type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

        /// Answers one status apply of item `db` with `code` and `message`; returns its body.
        async fn answer_status_apply(handle: &mut Handle, code: u16, message: &str) -> Value {
            let (request, respond) = handle.next_request().await.expect("a status apply");
            assert_eq!(request.method(), http::Method::PATCH);
            assert_eq!(
                request.uri().path(),
                "/apis/onepassword.com/v1/namespaces/apps/onepassworditems/db/status"
            );
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap();
            let answer = if code == 200 {
                json!({"apiVersion": "onepassword.com/v1", "kind": "OnePasswordItem",
                       "metadata": {"name": "db", "namespace": "apps"}, "status": body["status"]})
            } else {
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                       "message": message, "reason": "InternalError", "code": code})
            };
            respond.send_response(
                Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
            body
        }

        #[tokio::test]
        async fn a_status_refused_for_undeclared_fields_is_written_in_the_official_shape_and_never_retried_in_ours()
         {
            let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let ctx = crate::controller::testing::context(kube::Client::new(service, "default"));
            let obj = item("vaults/Prod/items/db");
            let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
            let status = desired_status(&obj, &Ok(synced(3)), t0);
            let server = tokio::spawn(async move {
                // The official CRD: the full status is refused with a 500.
                let first = answer_status_apply(
                    &mut handle,
                    500,
                    "failed to create typed patch object: .status.itemId: field not declared in schema",
                )
                .await;
                assert_eq!(first["status"]["itemId"], "i");
                // Tried once more, in the official shape, and taken.
                let second = answer_status_apply(&mut handle, 200, "").await;
                // A later write goes straight to the official shape.
                let third = answer_status_apply(&mut handle, 200, "").await;
                (second, third, handle)
            });
            let first = write_status(&ctx, "db", "apps", &status).await.unwrap();
            assert_eq!(first, StatusWrite::Done, "nothing more to write");
            write_status(&ctx, "db", "apps", &status).await.unwrap();
            let (second, third, mut handle) = server.await.unwrap();
            let official = json!({"conditions": [{
                "type": "Ready",
                "status": "True",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
                "message": "Synced: Secret \"db\" holds version 3 of item i in vault v",
            }]});
            assert_eq!(second["status"], official);
            assert_eq!(third["status"], official);
            use futures::FutureExt;
            assert!(
                handle.next_request().now_or_never().is_none(),
                "no further request"
            );
        }

        #[tokio::test]
        async fn a_status_refused_right_after_our_crd_was_read_is_written_smaller_then_whole_shortly()
         {
            let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
            let ctx = crate::controller::testing::context(kube::Client::new(service, "default"));
            ctx.status_schema
                .learn(&serde_saphyr::from_str(&crate::crd::crd_yaml()).unwrap());
            let obj = item("vaults/Prod/items/db");
            let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
            let status = desired_status(&obj, &Ok(synced(3)), t0);
            let server = tokio::spawn(async move {
                // The API server still validates against the CRD it had a moment ago.
                answer_status_apply(
                    &mut handle,
                    500,
                    "failed to create typed patch object: .status.itemId: field not declared in schema",
                )
                .await;
                // Made again at once in the official shape, which it takes.
                let smaller = answer_status_apply(&mut handle, 200, "").await;
                let retried = answer_status_apply(&mut handle, 200, "").await;
                (smaller, retried, handle)
            });
            let first = write_status(&ctx, "db", "apps", &status).await.unwrap();
            assert_eq!(
                first,
                StatusWrite::Again,
                "the whole status follows shortly"
            );
            assert!(ctx.status_schema.fields().is_full());
            let second = write_status(&ctx, "db", "apps", &status).await.unwrap();
            assert_eq!(second, StatusWrite::Done);
            let (smaller, retried, mut handle) = server.await.unwrap();
            assert_eq!(smaller["status"].get("itemId"), None, "the official shape");
            assert_eq!(retried["status"]["itemId"], "i", "the full shape again");
            use futures::FutureExt;
            assert!(
                handle.next_request().now_or_never().is_none(),
                "no further request"
            );
        }
    }

    /// The whole reconcile against a mocked API server and a simulated Connect server.
    mod reconcile_verifier {
        use super::*;
        use crate::{
            controller::testing::{self, Expect, Seen, assert_no_more_requests, serve},
            vocabulary::{DIGEST_ANNOTATION, ITEM_PATH_ANNOTATION},
        };
        use connect_sim::{ItemSpec, Seed, Simulator, TokenAccess, VaultSpec};
        use serde_json::Value;
        use std::time::Duration;

        const VAULT: &str = "vvvvvvvvvvvvvvvvvvvvvvvvvv";
        const ITEM: &str = "iiiiiiiiiiiiiiiiiiiiiiiiii";
        const SECRET: &str = "/api/v1/namespaces/apps/secrets/db";
        const STATUS: &str = "/apis/onepassword.com/v1/namespaces/apps/onepassworditems/db/status";

        fn connect() -> Simulator {
            let item = ItemSpec::new("db").id(ITEM).password("hunter2");
            let vault = VaultSpec::new("Prod").id(VAULT).item(item);
            let seed = Seed::new().vault(vault).token("token", TokenAccess::All);
            Simulator::start(seed).unwrap()
        }

        /// Reconciles `item("vaults/Prod/items/db")` with the API server answering `script`.
        async fn reconcile_with(script: Vec<Expect>) -> (Result<Action, Error>, Vec<Seen>) {
            reconcile_obj_with(item("vaults/Prod/items/db"), script).await
        }

        async fn reconcile_obj_with(
            obj: OnePasswordItem,
            script: Vec<Expect>,
        ) -> (Result<Action, Error>, Vec<Seen>) {
            let sim = connect();
            let (client, handle) = testing::mock_client();
            let ctx = testing::context_on(client, &sim.url());
            let server = tokio::spawn(serve(handle, script));
            let result = reconcile(Arc::new(obj), ctx.clone()).await;
            status_queue::flush(&ctx).await;
            let (handle, seen) = server.await.unwrap();
            assert_no_more_requests(handle);
            (result, seen)
        }

        #[tokio::test]
        async fn a_new_item_is_applied_as_a_secret_it_owns_then_its_status_is_ready_and_no_event_is_written()
         {
            // Two API requests for a new Secret: an apply that creates it (and would fail on
            // any existing Secret), the status. Its Ready condition says it was made; an event
            // would be another write nobody reads.
            let script = vec![Expect::apply(SECRET), Expect::apply(STATUS)];
            let (result, seen) = reconcile_with(script).await;
            assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(3600)));

            let (method, uri, secret) = &seen[0];
            assert_eq!(method, "PATCH");
            assert!(
                uri.contains(&format!("fieldManager={FIELD_MANAGER}")),
                "{uri}"
            );
            assert_eq!(secret["apiVersion"], "v1");
            assert_eq!(secret["kind"], "Secret");
            assert_eq!(secret["type"], "Opaque");
            assert_eq!(secret["data"], json!({"password": "aHVudGVyMg=="}));
            let meta = &secret["metadata"];
            assert_eq!(meta["name"], "db");
            assert_eq!(meta["namespace"], "apps");
            assert_eq!(
                meta["resourceVersion"], "1",
                "a precondition no existing Secret meets"
            );
            assert_eq!(
                meta["labels"],
                json!({"team": "a", "operator.1password.io/managed-by": "onepassword-secrets-operator"}),
                "the Argo CD instance label is not copied"
            );
            assert_eq!(
                meta["ownerReferences"],
                json!([{"apiVersion": "onepassword.com/v1", "kind": "OnePasswordItem",
                        "name": "db", "uid": "uid-1", "controller": true}])
            );
            let annotations = &meta["annotations"];
            assert_eq!(
                annotations[ITEM_PATH_ANNOTATION],
                format!("vaults/{VAULT}/items/{ITEM}")
            );
            assert_eq!(annotations[AUTO_RESTART_ANNOTATION], "true");
            let digest = annotations[DIGEST_ANNOTATION].as_str().unwrap();
            assert!(
                digest.starts_with("v1:") && !digest.contains("hunter2"),
                "{digest}"
            );

            let status = &seen[1].2["status"];
            assert_eq!(status["conditions"][0]["type"], "Ready");
            assert_eq!(status["conditions"][0]["status"], "True");
            assert_eq!(status["conditions"][0]["reason"], "Synced");
            assert_eq!(status["itemId"], ITEM);
        }

        #[tokio::test]
        async fn a_change_to_the_secret_while_its_apply_is_on_its_way_is_looked_at_again_within_a_second()
         {
            use crate::controller::context::RECHECK_AFTER;
            use kube::api::PartialObjectMetaExt;
            let resync = || Action::requeue(Duration::from_secs(3600));
            // The events the watch delivers before the apply (which leaves version 5) is
            // answered, in order, and what the reconcile asks for then.
            let cases: [(&[&str], Action); 4] = [
                (&["5"], resync()),                            // our own echo, early
                (&["4", "5"], resync()), // someone's change before ours: rewritten
                (&["5", "6"], Action::requeue(RECHECK_AFTER)), // after ours: looked at again
                (&["4"], resync()),      // before ours; our echo comes later
            ];
            for (events, expected) in cases {
                let sim = connect();
                let (client, handle) = testing::mock_client();
                let ctx = testing::context_on(client, &sim.url());
                let watch = ctx.clone();
                let apply = Expect::apply(SECRET).meanwhile(move |answer| {
                    answer["metadata"]["resourceVersion"] = "5".into();
                    for rv in events {
                        let event = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                            name: Some("db".into()),
                            namespace: Some("apps".into()),
                            resource_version: Some(rv.to_string()),
                            ..Default::default()
                        }
                        .into_response_partial::<k8s_openapi::api::core::v1::Secret>();
                        assert!(watch.own_writes.is_echo(&event), "held back: {rv}");
                    }
                });
                let server = tokio::spawn(serve(handle, vec![apply, Expect::apply(STATUS)]));
                let result = reconcile(Arc::new(item("vaults/Prod/items/db")), ctx.clone()).await;
                status_queue::flush(&ctx).await;
                assert_no_more_requests(server.await.unwrap().0);
                assert_eq!(result.unwrap(), expected, "{events:?}");
                assert!(ctx.own_writes.knows("apps", "db"));
            }
        }

        /// An item this operator synced before: its status says so.
        fn synced_item(path: &str) -> OnePasswordItem {
            let mut obj = item(path);
            obj.status = Some(OnePasswordItemStatus {
                conditions: vec![OnePasswordItemCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    reason: Some("Synced".into()),
                    message: Some("Secret \"db\" holds version 1".into()),
                    ..Default::default()
                }],
                ..Default::default()
            });
            obj
        }

        #[tokio::test]
        async fn a_secret_made_again_after_a_deletion_is_said_by_an_event() {
            let obj = synced_item("vaults/Prod/items/db");
            let script = vec![
                Expect::failing("GET", SECRET, 404),
                Expect::apply(SECRET),
                Expect::event("apps"),
                Expect::apply(STATUS),
            ];
            let (result, seen) = reconcile_obj_with(obj, script).await;
            result.unwrap();
            let event = &seen[2].2;
            assert_eq!(event["type"], "Normal");
            assert_eq!(event["reason"], "SecretCreated");
            assert_eq!(event["action"], "Sync");
            assert_eq!(event["regarding"]["kind"], "OnePasswordItem");
            assert!(
                event["note"]
                    .as_str()
                    .unwrap()
                    .starts_with("Created Secret again"),
                "{event}"
            );
        }

        #[tokio::test]
        async fn a_secret_of_that_name_that_is_not_ours_is_never_written_and_the_item_says_secret_conflict()
         {
            let foreign = json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "db", "namespace": "apps", "uid": "s1"},
                "data": {"password": "dGhlaXJz"}});
            // A new item's Secret is created without a read; the API server refuses the
            // create (the precondition), the Secret is read, and it is not ours.
            let script = vec![
                Expect::failing("PATCH", SECRET, 409),
                Expect::new("GET", SECRET, 200, foreign),
                Expect::event("apps"),
                Expect::apply(STATUS),
            ];
            let (result, seen) = reconcile_with(script).await;
            // Looked at again at the next poll: the other Secret may go.
            assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(10)));
            assert_eq!(seen[0].2["metadata"]["resourceVersion"], "1");
            let ready = &seen[3].2["status"]["conditions"][0];
            assert_eq!(ready["status"], "False");
            assert_eq!(ready["reason"], "SecretConflict");
            let event = &seen[2].2;
            assert_eq!(event["type"], "Warning");
            assert_eq!(event["reason"], "SecretConflict");
            assert!(
                event["note"]
                    .as_str()
                    .unwrap()
                    .contains("no owner reference to this OnePasswordItem"),
                "{event}"
            );
        }

        #[tokio::test]
        async fn an_ignored_items_secret_keeps_its_data_and_digest_and_only_its_item_version_moves()
        {
            let tagged = ItemSpec::new("db")
                .id(ITEM)
                .password("new")
                .tag(crate::vocabulary::IGNORE_TAG);
            let vault = VaultSpec::new("Prod").id(VAULT).item(tagged);
            let sim = Simulator::start(Seed::new().vault(vault).token("token", TokenAccess::All))
                .unwrap();
            let (client, handle) = testing::mock_client();
            let ctx = testing::context_on(client, &sim.url());
            // Written by us at version 0, with "old" as the password.
            let live = json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "db", "namespace": "apps",
                    "ownerReferences": [{"apiVersion": "onepassword.com/v1",
                        "kind": "OnePasswordItem", "name": "db", "uid": "uid-1"}],
                    "annotations": {ITEM_PATH_ANNOTATION: format!("vaults/{VAULT}/items/{ITEM}"),
                        "operator.1password.io/item-version": "0",
                        DIGEST_ANNOTATION: "v1:00112233445566778899aabbccddeeff:0011"},
                    "managedFields": [{"manager": FIELD_MANAGER, "operation": "Apply",
                        "fieldsType": "FieldsV1", "fieldsV1": {"f:data": {"f:password": {}}}}]},
                "data": {"password": "b2xk"}});
            let script = vec![
                Expect::new("GET", SECRET, 200, live),
                Expect::apply(SECRET),
                // Synced before, ignored now: an event says so.
                Expect::event("apps"),
                Expect::apply(STATUS),
            ];
            let server = tokio::spawn(serve(handle, script));
            let obj = Arc::new(synced_item("vaults/Prod/items/db"));
            reconcile(obj, ctx.clone()).await.unwrap();
            status_queue::flush(&ctx).await;
            let (handle, seen) = server.await.unwrap();
            assert_no_more_requests(handle);
            let secret = &seen[1].2;
            assert_eq!(
                secret["data"],
                json!({"password": "b2xk"}),
                "the old data stays"
            );
            let annotations = &secret["metadata"]["annotations"];
            assert_eq!(annotations["operator.1password.io/item-version"], "1");
            assert_eq!(
                annotations[DIGEST_ANNOTATION], "v1:00112233445566778899aabbccddeeff:0011",
                "the digest, and so the workloads, do not move"
            );
            let ready = &seen[3].2["status"]["conditions"][0];
            assert_eq!(ready["reason"], "Ignored");
            assert_eq!(ready["status"], "True");
        }

        #[tokio::test]
        async fn a_secret_already_holding_the_listed_version_costs_one_get_and_no_write() {
            // The first pass writes it; the API server's copy is what the second pass reads.
            let sim = connect();
            let (client, handle) = testing::mock_client();
            let ctx = testing::context_on(client, &sim.url());
            let first = vec![Expect::apply(SECRET), Expect::apply(STATUS)];
            let server = tokio::spawn(serve(handle, first));
            let mut obj = item("vaults/Prod/items/db");
            reconcile(Arc::new(obj.clone()), ctx.clone()).await.unwrap();
            status_queue::flush(&ctx).await;
            let (handle, seen) = server.await.unwrap();
            let mut written: Value = seen[0].2.clone();
            written["metadata"]["resourceVersion"] = json!("7");
            // As the API server stores it: our manager owns the keys it applied.
            written["metadata"]["managedFields"] = json!([{
                "manager": FIELD_MANAGER, "operation": "Apply", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:data": {"f:password": {}}, "f:metadata": {
                    "f:labels": {"f:team": {}, "f:operator.1password.io/managed-by": {}},
                    "f:annotations": written["metadata"]["annotations"].as_object().unwrap()
                        .keys().map(|k| (format!("f:{k}"), json!({}))).collect::<serde_json::Map<_, _>>(),
                }},
            }]);
            obj.status = serde_json::from_value(seen[1].2["status"].clone()).unwrap();

            let server = tokio::spawn(serve(
                handle,
                vec![Expect::new("GET", SECRET, 200, written)],
            ));
            let action = reconcile(Arc::new(obj), ctx).await.unwrap();
            let (handle, _) = server.await.unwrap();
            assert_no_more_requests(handle);
            assert_eq!(action, Action::requeue(Duration::from_secs(3600)));
        }

        #[tokio::test]
        async fn an_item_without_status_whose_secret_exists_reads_it_after_the_refused_create_and_writes_nothing()
         {
            // A Secret this operator wrote, as a new process meets it with the item's status
            // lost: the create is refused, the Secret read, and it already holds the item.
            let sim = connect();
            let (client, handle) = testing::mock_client();
            let ctx = testing::context_on(client, &sim.url());
            let server = tokio::spawn(serve(
                handle,
                vec![Expect::apply(SECRET), Expect::apply(STATUS)],
            ));
            reconcile(Arc::new(item("vaults/Prod/items/db")), ctx.clone())
                .await
                .unwrap();
            status_queue::flush(&ctx).await;
            let (_, seen) = server.await.unwrap();
            let mut written: Value = seen[0].2.clone();
            written["metadata"]["resourceVersion"] = json!("7");
            written["metadata"]["managedFields"] = json!([{
                "manager": FIELD_MANAGER, "operation": "Apply", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:data": {"f:password": {}}},
            }]);

            let (client, handle) = testing::mock_client();
            let ctx = testing::context_on(client, &sim.url());
            let server = tokio::spawn(serve(
                handle,
                vec![
                    Expect::failing("PATCH", SECRET, 409),
                    Expect::new("GET", SECRET, 200, written),
                    Expect::apply(STATUS),
                ],
            ));
            let action = reconcile(Arc::new(item("vaults/Prod/items/db")), ctx.clone())
                .await
                .unwrap();
            status_queue::flush(&ctx).await;
            let (handle, seen) = server.await.unwrap();
            assert_no_more_requests(handle);
            assert_eq!(action, Action::requeue(Duration::from_secs(3600)));
            assert_eq!(seen[2].2["status"]["conditions"][0]["reason"], "Synced");
        }
    }

    fn fetched_with_warnings(version: u64, warnings: &[&str]) -> Synced {
        Synced {
            warnings: warnings.iter().map(|w| w.to_string()).collect(),
            ..synced(version)
        }
    }

    fn unchanged(version: u64) -> Synced {
        Synced {
            change: Change::Unchanged,
            ..synced(version)
        }
    }

    fn ready_message(status: &OnePasswordItemStatus) -> &str {
        status.conditions[0].message.as_deref().unwrap()
    }

    const SKIPPED: &str = "field \"\u{1f600}\" was skipped: it gives no valid Secret key";

    #[test]
    fn warnings_found_at_a_fetch_stay_while_the_secret_holds_that_version_even_through_a_failure() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let mut obj = item("vaults/Prod/items/db");
        let fetched = desired_status(&obj, &Ok(fetched_with_warnings(3, &[SKIPPED])), t0);
        assert!(ready_message(&fetched).ends_with(SKIPPED), "{fetched:?}");
        assert_eq!(warnings_of(ready_message(&fetched), "db"), SKIPPED);

        // A reconcile that fetches nothing (or a new operator reading the status it left)
        // says the same, so nothing is written again.
        obj.status = Some(fetched.clone());
        assert_eq!(desired_status(&obj, &Ok(unchanged(3)), t1), fetched);

        // Connect refuses the token: the message says why, then what the Secret still holds.
        let refused = SyncError::Connect(crate::connect::ConnectError::Unauthorized {
            message: "Invalid token".into(),
        });
        let failed = desired_status(&obj, &Err(refused), t1);
        let message = ready_message(&failed);
        assert!(
            message.starts_with("Connect rejected the token"),
            "{message}"
        );
        assert!(message.contains("holds version 3"), "{message}");
        assert_eq!(warnings_of(message, "db"), SKIPPED);
        obj.status = Some(failed.clone());
        let refused = SyncError::Connect(crate::connect::ConnectError::Unauthorized {
            message: "Invalid token".into(),
        });
        assert_eq!(desired_status(&obj, &Err(refused), t1), failed, "stable");

        // Back: the same warnings, with no fetch.
        let back = desired_status(&obj, &Ok(unchanged(3)), t1);
        assert_eq!(ready_message(&back), ready_message(&fetched));
        assert_eq!(back.conditions[0].status, "True");

        // A new version is fetched: its own warnings (here none) replace them.
        obj.status = Some(back);
        let next = desired_status(&obj, &Ok(fetched_with_warnings(4, &[])), t1);
        assert_eq!(warnings_of(ready_message(&next), "db"), "");
        obj.status = Some(next.clone());
        assert_eq!(desired_status(&obj, &Ok(unchanged(4)), t1), next);
    }

    #[test]
    fn a_warning_quoting_a_head_cannot_pass_for_what_the_secret_holds() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut obj = item("vaults/Prod/items/db");
        // A label that reads like a head is quoted, its `"` escaped.
        let forged = format!(
            "field {:?} was skipped",
            "x; Secret \"db\" holds version 9 of item i in vault v; evil"
        );
        let first = desired_status(&obj, &Ok(fetched_with_warnings(3, &[&forged])), t0);
        assert!(ready_message(&first).contains("holds version 3"));
        assert_eq!(warnings_of(ready_message(&first), "db"), forged);
        obj.status = Some(first.clone());
        let failed = desired_status(
            &obj,
            &Err(SyncError::Connect(crate::connect::ConnectError::Timeout(
                std::time::Duration::from_secs(15),
            ))),
            t0,
        );
        obj.status = Some(failed);
        assert_eq!(desired_status(&obj, &Ok(unchanged(3)), t0), first);
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let s = "é".repeat(600);
        let cut = truncate(&s, 1024);
        assert!(cut.len() <= 1024 + '…'.len_utf8());
        assert!(cut.ends_with('…'));
    }
}
