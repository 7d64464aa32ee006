//! The one pipeline both reconcilers use to keep a Secret equal to a 1Password item:
//! resolve (catalog) -> look at the live Secret -> fetch the item only if needed -> build (pure)
//! -> server-side apply.
//!
//! Nothing here ever deletes or blanks a Secret: every failure returns before the write. It
//! writes only a Secret that names the asking object as an owner (by uid), never an older
//! version of the item than the Secret holds, never keys it does not own (someone else's keys
//! stay), and it stops writing a Secret that another writer keeps changing back
//! ([`super::write_rate`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Instant,
};

use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};

use super::{Context, write_rate::Paused};
use crate::{
    catalog::{Resolution, ResolveError},
    connect::{ConnectError, ItemPath, model::ItemWithFiles},
    digest::{hex, hmac_sha256},
    secret::{self, BuildError, DesiredSecret},
    vocabulary::{
        DIGEST_ANNOTATION, FIELD_MANAGER, IGNORE_TAG, ITEM_PATH_ANNOTATION,
        ITEM_VERSION_ANNOTATION, MANAGED_LABEL, MANAGED_VALUE, Reason,
    },
};

/// What to sync, whichever object asked for it.
#[derive(Clone, Debug)]
pub struct SyncTarget {
    pub namespace: String,
    /// The Secret's name (already a valid name; callers sanitise).
    pub name: String,
    pub path: ItemPath,
    pub secret_type: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub owners: Vec<OwnerReference>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Created,
    Updated,
    /// The Secret already held this version: nothing was fetched or written.
    Unchanged,
    /// Only labels, annotations or owners were written; the data is the same.
    MetadataOnly,
    /// The item carries the ignore tag; the existing Secret's data was left alone.
    Ignored,
}

#[derive(Clone, Debug)]
pub struct Synced {
    pub resolution: Resolution,
    /// The item version the Secret holds now.
    pub version: u64,
    pub change: Change,
    /// Things the user should know (skipped keys, duplicate titles); never values.
    pub warnings: Vec<String>,
    /// The item's `updatedAt`, when the item was fetched.
    pub updated_at: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    InvalidPath(#[from] crate::connect::InvalidItemPath),
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(
        "a Secret named {name:?} already exists and has no owner reference to this {asker}; it \
         is left as it is (delete or rename it to let the operator create its own; a Secret of an \
         earlier object of the same name is removed by the garbage collector shortly)"
    )]
    Conflict {
        name: String,
        /// The kind that asked for the Secret (`OnePasswordItem`, `Deployment`).
        asker: String,
    },
    #[error(
        "the Secret {name:?} has type {live:?} but {wanted:?} is wanted; a Secret's type cannot \
         change: delete the Secret and the operator will create it again"
    )]
    TypeChanged {
        name: String,
        live: String,
        wanted: String,
    },
    #[error("{0}")]
    VaultNotAllowed(crate::policy::Denied),
    #[error(
        "Connect served version {served} of the item, older than version {held} that Secret \
         {name:?} holds (a Connect replica that lags behind?); the Secret keeps version {held} \
         and the item is read again later"
    )]
    StaleItem {
        name: String,
        held: u64,
        served: u64,
    },
    #[error(
        "the Secret {name:?} was written {rewrites} times in a row for the same item version: \
         someone else keeps changing or deleting it (see its managedFields); not to fight \
         another writer, the operator leaves it alone for {}s", paused.as_secs()
    )]
    WriteConflict {
        name: String,
        rewrites: usize,
        paused: std::time::Duration,
    },
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
}

impl SyncError {
    /// A bounded CamelCase reason, used for conditions, events and metrics.
    pub fn reason(&self) -> Reason {
        match self {
            SyncError::InvalidPath(_) => Reason::InvalidItemPath,
            SyncError::Unsupported(_) => Reason::Unsupported,
            SyncError::Connect(e) => Reason::of_connect(e),
            SyncError::Build(e) => e.reason(),
            SyncError::Conflict { .. } => Reason::SecretConflict,
            SyncError::TypeChanged { .. } => Reason::SecretTypeImmutable,
            SyncError::VaultNotAllowed(_) => Reason::VaultNotAllowed,
            SyncError::StaleItem { .. } => Reason::StaleItemVersion,
            SyncError::WriteConflict { .. } => Reason::WriteConflict,
            SyncError::Kube(kube::Error::Api(status)) if status.code == 403 => {
                Reason::KubernetesForbidden
            }
            SyncError::Kube(_) if self.is_permanent() => Reason::SecretRejected,
            SyncError::Kube(_) => Reason::KubernetesError,
        }
    }

    /// Trying again would fail the same way until the item gets a new version or the object
    /// changes: the Secret cannot be built from the item, or the API server refuses it as built
    /// (400, 413, 422: e.g. `type: kubernetes.io/tls` on an item without `tls.crt`). Not
    /// retried (nor fetched again) before then.
    pub fn is_permanent(&self) -> bool {
        match self {
            SyncError::Build(_) => true,
            SyncError::Connect(e) => matches!(e, ConnectError::FileTooLarge { .. }),
            SyncError::Kube(kube::Error::Api(status)) => matches!(status.code, 400 | 413 | 422),
            _ => false,
        }
    }

    /// Worth retrying soon with backoff, as opposed to waiting for a change in 1Password or in
    /// the object.
    pub fn is_transient(&self) -> bool {
        match self {
            SyncError::Connect(e) => e.is_transient(),
            SyncError::Kube(_) => !self.is_permanent(),
            SyncError::StaleItem { .. } | SyncError::WriteConflict { .. } => true,
            _ => false,
        }
    }

    /// Only a change of the object itself can fix it.
    pub fn needs_spec_change(&self) -> bool {
        matches!(
            self,
            SyncError::InvalidPath(_) | SyncError::Unsupported(_) | SyncError::Build(_)
        )
    }
}

/// Is this live Secret one that `target` may write? Only when its owner references name one of
/// the target's owners by uid. Our label proves nothing (anyone who may create a Secret can set
/// it), so a Secret without such an owner reference is never written, and so never deleted with
/// the object either. A OnePasswordItem deleted and created again has a new uid: the garbage
/// collector removes the old one's Secret, and the new one then makes its own.
pub fn is_ours(live: &Secret, target: &SyncTarget) -> bool {
    live.owner_references().iter().any(|o| {
        target
            .owners
            .iter()
            .any(|t| !t.uid.is_empty() && t.uid == o.uid)
    })
}

/// The Secret of `target` exists and is someone else's: the message names the kind that asked.
fn conflict(target: &SyncTarget) -> SyncError {
    let asker = target.owners.first().map_or("object", |o| o.kind.as_str());
    SyncError::Conflict {
        name: target.name.clone(),
        asker: asker.to_string(),
    }
}

/// The keys under `path` (e.g. `f:metadata`, `f:labels`) of the fields our manager owns.
fn owned_keys(live: &Secret, path: &[&str]) -> BTreeSet<String> {
    live.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some(FIELD_MANAGER))
        .filter_map(|m| m.fields_v1.as_ref())
        .filter_map(|f| {
            path.iter()
                .try_fold(&f.0, |node, step| node.get(step))?
                .as_object()
                .cloned()
        })
        .flat_map(|o| o.into_iter().map(|(k, _)| k))
        .filter_map(|k| k.strip_prefix("f:").map(str::to_string))
        .collect()
}

/// The data of the keys our manager owns, as the live Secret holds it.
fn our_data(live: &Secret) -> BTreeMap<String, ByteString> {
    let ours = owned_keys(live, &["f:data"]);
    live.data
        .iter()
        .flatten()
        .filter(|(k, _)| ours.contains(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Whether the keys we own still hold what our last write put there: their HMAC equals the
/// digest we wrote with them. A value of ours changed by someone else (the field then belongs
/// to them) or a key of ours removed fails it; keys someone else added are theirs and do not
/// count.
fn our_data_intact(live: &Secret) -> bool {
    let Some(digest) = live.annotations().get(DIGEST_ANNOTATION) else {
        return false;
    };
    let Some(salt) = digest_salt(digest) else {
        return false;
    };
    let data = our_data(live).into_iter().map(|(k, v)| (k, v.0)).collect();
    data_digest(&salt, &data) == *digest
}

/// The labels and annotations we write besides those that depend on the data.
fn desired_metadata(target: &SyncTarget) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut labels = target.labels.clone();
    labels.insert(MANAGED_LABEL.into(), MANAGED_VALUE.into());
    // The item path, version and digest are ours to write from the item itself; a copy of the
    // Deployment's `item-path` (a title path) must not be compared with, or override, them.
    let annotations = target
        .annotations
        .iter()
        .filter(|(k, _)| !is_data_annotation(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (labels, annotations)
}

fn wanted_type(target: &SyncTarget) -> &str {
    match target.secret_type.as_deref() {
        None | Some("") => "Opaque",
        Some(t) => t,
    }
}

/// Why the live Secret cannot stay as it is without looking at the item's values, or `None`
/// when it can: it holds the listed version of the same item, the keys we wrote are as we
/// wrote them, and its metadata, type and owners are what we would write.
fn stale_because(
    live: &Secret,
    target: &SyncTarget,
    resolution: &Resolution,
) -> Option<&'static str> {
    let ann = live.annotations();
    let item_path = secret::item_path(&resolution.vault_id, &resolution.item_id);
    if ann.get(ITEM_PATH_ANNOTATION) != Some(&item_path) {
        return Some("it holds another item");
    }
    if ann.get(ITEM_VERSION_ANNOTATION) != Some(&resolution.version.to_string()) {
        return Some("the item has a new version");
    }
    if !ann.contains_key(DIGEST_ANNOTATION) {
        return Some("it has no data digest of ours");
    }
    if !our_data_intact(live) {
        return Some("the data we wrote was changed by someone else");
    }
    let (labels, annotations) = desired_metadata(target);
    let matches = |want: &BTreeMap<String, String>, have: &BTreeMap<String, String>, section| {
        want.iter().all(|(k, v)| have.get(k) == Some(v))
            // Nothing we wrote earlier is left over (a label removed from the item).
            && owned_keys(live, &["f:metadata", section])
                .iter()
                .all(|k| want.contains_key(k) || is_data_annotation(k))
    };
    if !matches(&labels, live.labels(), "f:labels") {
        return Some("its labels differ");
    }
    if !matches(&annotations, ann, "f:annotations") {
        return Some("its annotations differ");
    }
    let live_owners: BTreeSet<&str> = live
        .owner_references()
        .iter()
        .map(|o| o.uid.as_str())
        .collect();
    if !target
        .owners
        .iter()
        .all(|o| live_owners.contains(o.uid.as_str()))
    {
        return Some("an owner is missing");
    }
    None
}

fn is_data_annotation(key: &str) -> bool {
    key == ITEM_PATH_ANNOTATION || key == ITEM_VERSION_ANNOTATION || key == DIGEST_ANNOTATION
}

/// The version of item `vault_id`/`item_id` the live Secret holds, by its annotations; `None`
/// when it holds another item, or says nothing.
fn held_version(live: &Secret, vault_id: &str, item_id: &str) -> Option<u64> {
    let ann = live.annotations();
    if ann.get(ITEM_PATH_ANNOTATION)? != &secret::item_path(vault_id, item_id) {
        return None;
    }
    ann.get(ITEM_VERSION_ANNOTATION)?.parse().ok()
}

/// Refuses to go back: item versions only grow, so a version older than the one the Secret
/// holds comes from a Connect server that lags behind (one replica of several behind a load
/// balancer), and writing it would roll the Secret, and its workloads, back.
fn refuse_older(
    live: &Secret,
    target: &SyncTarget,
    vault_id: &str,
    item_id: &str,
    served: u64,
) -> Result<(), SyncError> {
    match held_version(live, vault_id, item_id) {
        Some(held) if served < held => Err(SyncError::StaleItem {
            name: target.name.clone(),
            held,
            served,
        }),
        _ => Ok(()),
    }
}

/// Brings the Secret of `target` in line with its item.
pub async fn sync(ctx: &Context, target: &SyncTarget) -> Result<Synced, SyncError> {
    // The policy is checked on the resolved vault alone, before the vault's items are listed:
    // a denied namespace learns nothing about what the vault holds.
    let policy = ctx.config.vault_policy.as_deref();
    let resolution = ctx
        .catalog
        .resolve_allowed(&target.path, |vault_id, vault_name| {
            policy.map_or(Ok(()), |p| p.check(&target.namespace, vault_id, vault_name))
        })
        .await
        .map_err(|e| match e {
            ResolveError::Connect(e) => SyncError::Connect(e),
            ResolveError::Refused(denied) => SyncError::VaultNotAllowed(denied),
        })?;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &target.namespace);
    let live = api.get_opt(&target.name).await?;
    if let Some(live) = &live {
        if !is_ours(live, target) {
            return Err(conflict(target));
        }
        let live_type = live.type_.as_deref().unwrap_or("Opaque");
        if live_type != wanted_type(target) {
            return Err(SyncError::TypeChanged {
                name: target.name.clone(),
                live: live_type.into(),
                wanted: wanted_type(target).into(),
            });
        }
        let (vault_id, item_id) = (&resolution.vault_id, &resolution.item_id);
        refuse_older(live, target, vault_id, item_id, resolution.version)?;
        if resolution.ignored {
            let held = (vault_id.clone(), item_id.clone(), resolution.version);
            return keep_ignored(ctx, &api, live, target, resolution, held, None).await;
        }
        let stale = stale_because(live, target, &resolution);
        if let Some(why) = stale {
            tracing::debug!(secret = %target.name, why, "fetching the item");
        } else {
            return Ok(Synced {
                version: resolution.version,
                resolution,
                change: Change::Unchanged,
                warnings: Vec::new(),
                updated_at: None,
            });
        }
    }

    // A Secret we keep writing back is left alone for a while: nothing is fetched or written.
    let listed_path = secret::item_path(&resolution.vault_id, &resolution.item_id);
    admit(ctx, target, &listed_path, resolution.version)?;
    let item = ctx
        .catalog
        .client()
        .fetch_item(&resolution.vault_id, &resolution.item_id)
        .await?;
    let version = item.item.version;
    let updated_at = item.item.updated_at.clone();
    if let Some(live) = &live {
        refuse_older(live, target, &item.item.vault.id, &item.item.id, version)?;
        if item.item.tags.iter().any(|t| t == IGNORE_TAG) {
            let held = (item.item.vault.id.clone(), item.item.id.clone(), version);
            return keep_ignored(ctx, &api, live, target, resolution, held, updated_at).await;
        }
    }

    let salt = live
        .as_ref()
        .and_then(|s| s.annotations().get(DIGEST_ANNOTATION))
        .and_then(|d| digest_salt(d))
        .unwrap_or_else(|| {
            let key = |message: &[u8]| ctx.catalog.client().token_mac(message);
            derived_salt(key, &target.namespace, &target.name)
        });
    let (secret, warnings) = build(target, &item, &salt, ctx.config.allow_empty_values)?;
    let leftovers = live
        .as_ref()
        .map(|l| leftovers_at_takeover(l, &secret))
        .unwrap_or_default();
    let data_changed =
        !leftovers.is_empty() || live.as_ref().is_none_or(|l| data_differs(l, &secret));
    let item_path = secret::item_path(&item.item.vault.id, &item.item.id);
    let applied = apply(ctx, &api, target, &secret, &item_path, version).await?;
    if !leftovers.is_empty() {
        remove_leftovers(ctx, &api, target, &applied, &leftovers).await?;
    }

    let change = match (&live, data_changed) {
        (None, _) => Change::Created,
        (Some(_), true) => Change::Updated,
        (Some(_), false) => Change::MetadataOnly,
    };
    let mut notes: Vec<String> = resolution.note.iter().cloned().collect();
    notes.extend(warnings);
    Ok(Synced {
        resolution,
        version,
        change,
        warnings: notes,
        updated_at,
    })
}

/// Whether writing version `version` of `item_path` to the target's Secret may go ahead, or the
/// Secret is being fought over and is left alone for a while.
fn admit(
    ctx: &Context,
    target: &SyncTarget,
    item_path: &str,
    version: u64,
) -> Result<(), SyncError> {
    let (namespace, name) = (&target.namespace, &target.name);
    ctx.write_rate
        .admit(namespace, name, item_path, version, Instant::now())
        .map_err(
            |Paused {
                 remaining,
                 rewrites,
             }| {
                tracing::warn!(
                    secret = %name,
                    rewrites,
                    paused_s = remaining.as_secs(),
                    "Secret written again and again for the same item version: another writer \
                     changes it back; leaving it alone for a while"
                );
                SyncError::WriteConflict {
                    name: name.clone(),
                    rewrites,
                    paused: remaining,
                }
            },
        )
}

/// Server-side apply of `secret` (with force: the fields we own hold what we say, whoever
/// changed them; fields others own, such as keys they added, stay theirs and stay as they are).
async fn apply(
    ctx: &Context,
    api: &Api<Secret>,
    target: &SyncTarget,
    secret: &Secret,
    item_path: &str,
    version: u64,
) -> Result<Secret, SyncError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let applied = api
        .patch(&target.name, &params, &Patch::Apply(secret))
        .await?;
    let (namespace, name) = (&target.namespace, &target.name);
    ctx.own_writes
        .record(namespace, name, applied.resource_version());
    ctx.write_rate
        .record(namespace, name, item_path, version, Instant::now());
    Ok(applied)
}

/// The keys of a Secret we take over that the item no longer has. A Secret of ours (by owner
/// reference) without our digest was last written by another operator: the official one,
/// which replaces the data whole on every change (`pkg/kubernetessecrets/kubernetes_secrets_builder.go`,
/// `CreateKubernetesSecretFromItem` updates `Data` as built). Its keys are not ours by
/// `managedFields`, so an apply would leave them for ever; they are removed once, as that
/// operator would have removed them. Once our digest is there, keys others add stay theirs.
fn leftovers_at_takeover(live: &Secret, desired: &Secret) -> Vec<String> {
    if live.annotations().contains_key(DIGEST_ANNOTATION) {
        return Vec::new();
    }
    let wanted = desired.data.as_ref();
    live.data
        .iter()
        .flatten()
        .map(|(k, _)| k)
        .filter(|k| wanted.is_none_or(|w| !w.contains_key(*k)))
        .cloned()
        .collect()
}

/// A JSON patch that removes `keys` from the data of the Secret as it was at
/// `resource_version`, and fails (test op) if it changed meanwhile.
fn leftover_removal(resource_version: &str, keys: &[String]) -> json_patch::Patch {
    // Secret keys hold no `~` nor `/`, but a JSON pointer escapes them all the same.
    let pointer = |k: &str| format!("/data/{}", k.replace('~', "~0").replace('/', "~1"));
    let mut ops = vec![serde_json::json!(
        {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version}
    )];
    ops.extend(
        keys.iter()
            .map(|k| serde_json::json!({"op": "remove", "path": pointer(k)})),
    );
    serde_json::from_value(serde_json::Value::Array(ops)).expect("a valid JSON patch")
}

/// Removes what [`leftovers_at_takeover`] found, right after our first apply. If the Secret
/// changed in between (someone else wrote it), the keys are left: our digest is there by then,
/// so they count as that writer's.
async fn remove_leftovers(
    ctx: &Context,
    api: &Api<Secret>,
    target: &SyncTarget,
    applied: &Secret,
    keys: &[String],
) -> Result<(), SyncError> {
    let Some(rv) = applied.resource_version() else {
        return Ok(());
    };
    let patch = leftover_removal(&rv, keys);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api
        .patch(&target.name, &params, &Patch::<()>::Json(patch))
        .await
    {
        Ok(done) => {
            tracing::info!(secret = %target.name, keys = ?keys, "removed keys the item no longer has from a Secret taken over from another operator");
            ctx.own_writes
                .record(&target.namespace, &target.name, done.resource_version());
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 422 || e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether writing `desired` changes the data: a value of ours differs, or a key we own goes.
fn data_differs(live: &Secret, desired: &Secret) -> bool {
    let live_data = live.data.as_ref();
    let wanted = desired.data.iter().flatten();
    let changed = wanted
        .clone()
        .any(|(k, v)| live_data.and_then(|d| d.get(k)) != Some(v));
    let wanted: BTreeSet<&String> = wanted.map(|(k, _)| k).collect();
    changed || our_data(live).keys().any(|k| !wanted.contains(k))
}

/// The item carries the ignore tag and its Secret exists: the data stays as it is. As the
/// official operator does (`pkg/onepassword/secret_update_handler.go`: with the tag it still
/// updates the Secret's `item-version` and `item-path` annotations), the annotations move to
/// `held` (vault id, item id, version). The data, and so its digest, do not change: nothing
/// rolls.
async fn keep_ignored(
    ctx: &Context,
    api: &Api<Secret>,
    live: &Secret,
    target: &SyncTarget,
    resolution: Resolution,
    held: (String, String, u64),
    updated_at: Option<String>,
) -> Result<Synced, SyncError> {
    let (vault_id, item_id, version) = held;
    let item_path = secret::item_path(&vault_id, &item_id);
    if held_version(live, &vault_id, &item_id) != Some(version) {
        admit(ctx, target, &item_path, version)?;
        let secret = annotations_moved(live, target, &item_path, version);
        apply(ctx, api, target, &secret, &item_path, version).await?;
    }
    Ok(Synced {
        resolution,
        version,
        change: Change::Ignored,
        warnings: vec![format!(
            "the item is tagged {IGNORE_TAG}: its changes are not synced"
        )],
        updated_at,
    })
}

/// What we apply to an ignored item's Secret: everything we own as it is (the data of our keys
/// included, with its digest), our labels and annotations, and the item path and version moved.
fn annotations_moved(live: &Secret, target: &SyncTarget, item_path: &str, version: u64) -> Secret {
    let (labels, mut annotations) = desired_metadata(target);
    annotations.insert(ITEM_PATH_ANNOTATION.into(), item_path.into());
    annotations.insert(ITEM_VERSION_ANNOTATION.into(), version.to_string());
    if let Some(digest) = live.annotations().get(DIGEST_ANNOTATION) {
        annotations.insert(DIGEST_ANNOTATION.into(), digest.clone());
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(target.name.clone()),
            namespace: Some(target.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(target.owners.clone()),
            ..Default::default()
        },
        type_: live.type_.clone(),
        data: Some(our_data(live)),
        ..Default::default()
    }
}

/// The desired Secret: the item's data plus our label and annotations, refused before anything
/// is sent when the API server could not store it.
fn build(
    target: &SyncTarget,
    item: &ItemWithFiles,
    salt: &str,
    allow_empty_values: bool,
) -> Result<(Secret, Vec<String>), BuildError> {
    let (labels, annotations) = desired_metadata(target);
    let desired = DesiredSecret {
        name: &target.name,
        namespace: &target.namespace,
        item,
        secret_type: target.secret_type.as_deref(),
        labels,
        annotations,
        owner: None,
        options: secret::BuildOptions { allow_empty_values },
    };
    let (mut secret, warnings) = secret::build_secret(&desired)?;
    secret.metadata.owner_references = Some(target.owners.clone());
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    secret
        .metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(DIGEST_ANNOTATION.into(), data_digest(salt, &data));
    secret::check_stored_size(&secret)?;
    let warnings = warnings.iter().map(ToString::to_string).collect();
    Ok((secret, warnings))
}

/// `v1:<salt>:<hmac>`: an HMAC-SHA256 of the data keyed by a secret per-Secret salt. It changes
/// exactly when the data changes, and, unlike a plain hash, it cannot be used to guess a weak
/// password by someone who sees it without seeing the salt (the restart annotation on pod
/// templates is derived from it).
pub fn data_digest(salt: &str, data: &BTreeMap<String, Vec<u8>>) -> String {
    let mut message = Vec::new();
    for (k, v) in data {
        message.extend_from_slice(&(k.len() as u64).to_be_bytes());
        message.extend_from_slice(k.as_bytes());
        message.extend_from_slice(&(v.len() as u64).to_be_bytes());
        message.extend_from_slice(v);
    }
    let mac = hmac_sha256(salt.as_bytes(), &message);
    format!("v1:{salt}:{}", hex(&mac[..16]))
}

fn digest_salt(digest: &str) -> Option<String> {
    let mut parts = digest.split(':');
    match (parts.next(), parts.next()) {
        (Some("v1"), Some(salt)) if salt.len() >= 16 => Some(salt.to_string()),
        _ => None,
    }
}

/// The salt of a Secret that has none yet (a new one, or one made again after it was deleted):
/// `key("opsync-digest-salt/<namespace>/<name>")`, where `key` is an HMAC keyed by the Connect
/// token. The same Secret gets the same salt each time it is made, so the same data gets the
/// same digest and its workloads do not roll; and the salt stays secret, so a digest seen on a
/// workload cannot be used to test guesses of a password. A Secret keeps the salt it has: a new
/// token changes only the salt of Secrets made after the change (one rollout if such a Secret
/// was deleted and made again across a token rotation).
pub fn derived_salt(key: impl Fn(&[u8]) -> [u8; 32], namespace: &str, name: &str) -> String {
    let mac = key(format!("opsync-digest-salt/{namespace}/{name}").as_bytes());
    hex(&mac[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
    use serde_json::json;

    #[test]
    fn digest_changes_with_data_and_salt_only() {
        let mut data = BTreeMap::from([("password".to_string(), b"hunter2".to_vec())]);
        let salt = "00112233445566778899aabbccddeeff";
        let a = data_digest(salt, &data);
        assert_eq!(a, data_digest(salt, &data));
        assert_eq!(digest_salt(&a).as_deref(), Some(salt));
        assert!(!a.contains("hunter2"));
        data.insert("password".into(), b"hunter3".to_vec());
        assert_ne!(a, data_digest(salt, &data));
        assert_ne!(a, data_digest("ffeeddccbbaa99887766554433221100", &data));
        // Key/value boundaries are part of the digest.
        let ab = BTreeMap::from([("ab".to_string(), b"c".to_vec())]);
        let a_bc = BTreeMap::from([("a".to_string(), b"bc".to_vec())]);
        assert_ne!(data_digest(salt, &ab), data_digest(salt, &a_bc));
        // So are key names, and keys with empty values.
        let renamed = BTreeMap::from([("password2".to_string(), b"hunter3".to_vec())]);
        assert_ne!(data_digest(salt, &data), data_digest(salt, &renamed));
        let mut with_empty = data.clone();
        with_empty.insert("alias".into(), Vec::new());
        assert_ne!(data_digest(salt, &data), data_digest(salt, &with_empty));
        assert_ne!(data_digest(salt, &BTreeMap::new()), data_digest(salt, &ab));
    }

    #[test]
    fn the_salt_of_a_new_secret_is_the_same_each_time_and_secret_to_the_token() {
        let token = |t: &'static [u8]| move |m: &[u8]| hmac_sha256(t, m);
        let salt = derived_salt(token(b"tok"), "ns", "db");
        // A Secret deleted and made again, by this process or the next one: the same salt, so
        // the same data gives the same digest.
        assert_eq!(salt, derived_salt(token(b"tok"), "ns", "db"));
        assert_eq!(salt.len(), 32);
        assert!(digest_salt(&format!("v1:{salt}:00")).is_some());
        // Another Secret, another namespace or another token: another salt.
        assert_ne!(salt, derived_salt(token(b"tok"), "ns", "db2"));
        assert_ne!(salt, derived_salt(token(b"tok"), "ns2", "db"));
        assert_ne!(salt, derived_salt(token(b"tok2"), "ns", "db"));
        // "a/b" + "c" and "a" + "b/c" are different Secrets.
        assert_ne!(
            derived_salt(token(b"tok"), "a", "b-c"),
            derived_salt(token(b"tok"), "a-b", "c")
        );
    }

    fn owner(kind: &str, uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "v1".into(),
            kind: kind.into(),
            name: "x".into(),
            uid: uid.into(),
            ..Default::default()
        }
    }

    fn target(owners: Vec<OwnerReference>) -> SyncTarget {
        SyncTarget {
            namespace: "ns".into(),
            name: "db".into(),
            path: ItemPath::parse("vaults/v/items/i").unwrap(),
            secret_type: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            owners,
        }
    }

    fn secret(owners: Vec<OwnerReference>, labelled: bool) -> Secret {
        let labels = labelled
            .then(|| BTreeMap::from([(MANAGED_LABEL.to_string(), MANAGED_VALUE.to_string())]));
        Secret {
            metadata: ObjectMeta {
                name: Some("db".into()),
                owner_references: Some(owners),
                labels,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn a_foreign_secret_is_never_ours_whatever_its_labels_say() {
        let t = target(vec![owner("OnePasswordItem", "u1")]);
        assert!(!is_ours(&secret(vec![], false), &t));
        assert!(!is_ours(
            &secret(vec![owner("Deployment", "d1")], false),
            &t
        ));
        // Our label is no proof: anyone who may create a Secret can set it.
        assert!(!is_ours(&secret(vec![], true), &t));
        // Ours by label, but owned by an annotated Deployment: the two flows do not fight.
        assert!(!is_ours(&secret(vec![owner("Deployment", "d1")], true), &t));
        // Owned by an earlier item of the same name: the garbage collector removes it.
        assert!(!is_ours(
            &secret(vec![owner("OnePasswordItem", "u0")], true),
            &t
        ));
        // A target without a uid owns nothing.
        let no_uid = target(vec![owner("OnePasswordItem", "")]);
        assert!(!is_ours(
            &secret(vec![owner("OnePasswordItem", "")], true),
            &no_uid
        ));
    }

    #[test]
    fn a_conflict_names_the_kind_that_asked_for_the_secret() {
        let for_deployment = conflict(&target(vec![owner("Deployment", "d1")])).to_string();
        assert!(
            for_deployment.contains("has no owner reference to this Deployment;"),
            "{for_deployment}"
        );
        let for_item = conflict(&target(vec![owner("OnePasswordItem", "i1")])).to_string();
        assert!(
            for_item.contains("has no owner reference to this OnePasswordItem;"),
            "{for_item}"
        );
    }

    #[test]
    fn a_secret_with_an_owner_reference_to_the_target_by_uid_is_ours() {
        let t = target(vec![owner("OnePasswordItem", "u1")]);
        // Created by the official operator: it owns the Secret through the same item.
        assert!(is_ours(
            &secret(vec![owner("OnePasswordItem", "u1")], false),
            &t
        ));
        // A Secret shared by Deployments: any one of them is enough.
        let shared = target(vec![owner("Deployment", "d1"), owner("Deployment", "d2")]);
        assert!(is_ours(
            &secret(vec![owner("Deployment", "d2")], true),
            &shared
        ));
    }

    const SALT: &str = "00112233445566778899aabbccddeeff";

    fn entry(manager: &str, fields: serde_json::Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Apply".into()),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        }
    }

    /// A Secret as our apply leaves it: our labels, annotations and data (`password`), owned by
    /// our manager.
    fn written_by_us(target: &SyncTarget, resolution: &Resolution) -> Secret {
        let data = BTreeMap::from([("password".to_string(), b"pw".to_vec())]);
        let mut annotations: BTreeMap<String, String> = desired_metadata(target).1;
        annotations.insert(
            ITEM_PATH_ANNOTATION.into(),
            secret::item_path(&resolution.vault_id, &resolution.item_id),
        );
        annotations.insert(
            ITEM_VERSION_ANNOTATION.into(),
            resolution.version.to_string(),
        );
        annotations.insert(DIGEST_ANNOTATION.into(), data_digest(SALT, &data));
        let (labels, _) = desired_metadata(target);
        let key_set = |m: &mut dyn Iterator<Item = &String>| {
            serde_json::Value::Object(m.map(|k| (format!("f:{k}"), json!({}))).collect())
        };
        let fields = json!({
            "f:data": key_set(&mut data.keys()),
            "f:metadata": {
                "f:labels": key_set(&mut labels.keys()),
                "f:annotations": key_set(&mut annotations.keys()),
            },
        });
        Secret {
            metadata: ObjectMeta {
                name: Some(target.name.clone()),
                labels: Some(labels),
                annotations: Some(annotations),
                owner_references: Some(target.owners.clone()),
                managed_fields: Some(vec![entry(FIELD_MANAGER, fields)]),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect()),
            ..Default::default()
        }
    }

    fn resolution(version: u64) -> Resolution {
        Resolution {
            vault_id: "vvvvvvvvvvvvvvvvvvvvvvvvvv".into(),
            item_id: "iiiiiiiiiiiiiiiiiiiiiiiiii".into(),
            version,
            note: None,
            ignored: false,
        }
    }

    #[test]
    fn keys_another_writer_added_are_theirs_and_leave_our_secret_as_it_is() {
        let t = target(vec![owner("OnePasswordItem", "u1")]);
        let r = resolution(4);
        let mut live = written_by_us(&t, &r);
        // The token controller fills in a service-account-token Secret.
        for key in ["token", "ca.crt", "namespace"] {
            live.data
                .as_mut()
                .unwrap()
                .insert(key.into(), ByteString(b"theirs".to_vec()));
        }
        live.metadata.managed_fields.as_mut().unwrap().push(entry(
            "kube-controller-manager",
            json!({"f:data": {"f:token": {}, "f:ca.crt": {}, "f:namespace": {}}}),
        ));
        assert!(our_data_intact(&live));
        assert_eq!(stale_because(&live, &t, &r), None);
        // Writing our data again would change nothing of it, and their keys are not ours.
        let mut desired = written_by_us(&t, &r);
        desired.metadata.managed_fields = None;
        assert!(!data_differs(&live, &desired));
    }

    #[test]
    fn a_value_of_ours_changed_or_removed_by_hand_is_seen_as_drift() {
        let t = target(vec![owner("OnePasswordItem", "u1")]);
        let r = resolution(4);
        // `kubectl edit` of our key: the value changes and its field moves to kubectl.
        let mut edited = written_by_us(&t, &r);
        edited
            .data
            .as_mut()
            .unwrap()
            .insert("password".into(), ByteString(b"by hand".to_vec()));
        let fields = edited.metadata.managed_fields.as_mut().unwrap();
        fields[0].fields_v1.as_mut().unwrap().0["f:data"] = json!({});
        fields.push(entry("kubectl-edit", json!({"f:data": {"f:password": {}}})));
        assert!(!our_data_intact(&edited));
        assert_eq!(
            stale_because(&edited, &t, &r),
            Some("the data we wrote was changed by someone else")
        );
        let desired = written_by_us(&t, &r);
        assert!(data_differs(&edited, &desired));
        // The key removed by hand.
        let mut removed = written_by_us(&t, &r);
        removed.data = Some(BTreeMap::new());
        assert!(!our_data_intact(&removed));
        assert!(data_differs(&removed, &desired));
        // A digest that is not ours to trust.
        let mut forged = written_by_us(&t, &r);
        forged
            .annotations_mut()
            .insert(DIGEST_ANNOTATION.into(), "v1:short:00".into());
        assert!(!our_data_intact(&forged));
    }

    #[test]
    fn a_secret_we_wrote_for_the_listed_version_needs_no_fetch_even_with_a_title_item_path() {
        // The Deployment flow copies the Deployment's annotations, including its title-based
        // item-path; the Secret holds the id-based one. That must not look like drift.
        let mut t = target(vec![owner("Deployment", "d1")]);
        t.annotations = BTreeMap::from([
            (
                ITEM_PATH_ANNOTATION.to_string(),
                "vaults/Demo/items/db".to_string(),
            ),
            (
                "operator.1password.io/item-name".to_string(),
                "web-db".to_string(),
            ),
        ]);
        let r = resolution(4);
        let live = written_by_us(&t, &r);
        assert_eq!(stale_because(&live, &t, &r), None);
        assert_eq!(
            stale_because(&live, &t, &resolution(5)),
            Some("the item has a new version")
        );
        let mut relabelled = t.clone();
        relabelled.labels.insert("team".into(), "a".into());
        assert_eq!(
            stale_because(&live, &relabelled, &r),
            Some("its labels differ")
        );
        let mut unlabelled = t.clone();
        unlabelled
            .annotations
            .remove("operator.1password.io/item-name");
        assert_eq!(
            stale_because(&live, &unlabelled, &r),
            Some("its annotations differ")
        );
    }

    #[test]
    fn an_older_version_of_the_same_item_is_refused_but_not_a_newer_one_or_another_item() {
        let t = target(vec![owner("OnePasswordItem", "u1")]);
        let r = resolution(4);
        let live = written_by_us(&t, &r);
        let refuse = |vault: &str, item: &str, served| refuse_older(&live, &t, vault, item, served);
        let err = refuse(&r.vault_id, &r.item_id, 3).unwrap_err();
        assert_eq!(err.reason(), "StaleItemVersion");
        assert!(
            err.is_transient(),
            "retried, never a wait for a spec change"
        );
        assert!(err.to_string().contains("version 3"), "{err}");
        assert!(refuse(&r.vault_id, &r.item_id, 4).is_ok());
        assert!(refuse(&r.vault_id, &r.item_id, 5).is_ok());
        // Another item (the item path changed): its versions are its own.
        assert!(refuse(&r.vault_id, "jjjjjjjjjjjjjjjjjjjjjjjjjj", 1).is_ok());
        // A Secret that says nothing about its version refuses nothing.
        let mut unannotated = live.clone();
        unannotated
            .annotations_mut()
            .remove(ITEM_VERSION_ANNOTATION);
        assert_eq!(held_version(&unannotated, &r.vault_id, &r.item_id), None);
    }

    #[test]
    fn an_ignored_items_secret_keeps_its_data_and_digest_and_moves_its_item_version() {
        let t = target(vec![owner("OnePasswordItem", "u1")]);
        let r = resolution(4);
        let mut live = written_by_us(&t, &r);
        // A key someone else added is not ours to apply.
        live.data
            .as_mut()
            .unwrap()
            .insert("added".into(), ByteString(b"x".to_vec()));
        let path = secret::item_path(&r.vault_id, &r.item_id);
        let moved = annotations_moved(&live, &t, &path, 6);
        assert_eq!(moved.data, Some(our_data(&live)));
        assert_eq!(
            moved.data.as_ref().unwrap().keys().collect::<Vec<_>>(),
            ["password"]
        );
        let ann = moved.annotations();
        assert_eq!(ann[ITEM_VERSION_ANNOTATION], "6");
        assert_eq!(ann[ITEM_PATH_ANNOTATION], path);
        assert_eq!(
            ann[DIGEST_ANNOTATION],
            live.annotations()[DIGEST_ANNOTATION]
        );
        assert_eq!(moved.labels()[MANAGED_LABEL], MANAGED_VALUE);
        assert_eq!(moved.owner_references(), t.owners.as_slice());
        assert_eq!(moved.type_.as_deref(), Some("Opaque"));
    }

    fn with_data(keys: &[&str], digest: Option<&str>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                annotations: digest
                    .map(|d| BTreeMap::from([(DIGEST_ANNOTATION.to_string(), d.to_string())])),
                ..Default::default()
            },
            data: Some(
                keys.iter()
                    .map(|k| (k.to_string(), ByteString(b"v".to_vec())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn keys_another_operator_left_are_removed_once_at_takeover_only() {
        let desired = with_data(&["password"], None);
        // Written by the official operator: no digest of ours. Its `username` goes.
        let theirs = with_data(&["password", "username"], None);
        assert_eq!(leftovers_at_takeover(&theirs, &desired), ["username"]);
        // Once ours, a key someone added is theirs and stays.
        let ours = with_data(&["password", "username"], Some("v1:salt:digest"));
        assert!(leftovers_at_takeover(&ours, &desired).is_empty());
        // Nothing left over: nothing to remove.
        assert!(leftovers_at_takeover(&with_data(&["password"], None), &desired).is_empty());
    }

    #[test]
    fn leftovers_are_removed_only_from_the_secret_as_applied() {
        let patch =
            serde_json::to_value(leftover_removal("42", &["a".into(), "b~c".into()])).unwrap();
        assert_eq!(
            patch,
            serde_json::json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": "42"},
                {"op": "remove", "path": "/data/a"},
                {"op": "remove", "path": "/data/b~0c"},
            ])
        );
    }
}
