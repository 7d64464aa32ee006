//! The one pipeline both reconcilers use to keep a Secret equal to a 1Password item:
//! resolve (catalog) -> look at the live Secret -> fetch the item only if needed -> build (pure)
//! -> server-side apply -> drop keys someone else added.
//!
//! Nothing here ever deletes or blanks a Secret: every failure returns before the write.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::OwnerReference};
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use serde_json::json;

use super::{Context, FIELD_MANAGER};
use crate::{
    catalog::{IGNORE_TAG, Resolution},
    connect::{ConnectError, ItemPath, model::ItemWithFiles},
    restart::{DIGEST_ANNOTATION, MANAGED_LABEL, MANAGED_VALUE},
    secret::{self, BuildError, DesiredSecret, ITEM_PATH_ANNOTATION, ITEM_VERSION_ANNOTATION},
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
    /// The item carries the ignore tag; the existing Secret was left alone.
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
        "a Secret named {name:?} already exists and is not managed by this OnePasswordItem; \
         it is left as it is (delete or rename it to let the operator create its own)"
    )]
    Conflict { name: String },
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
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
}

impl SyncError {
    /// A bounded CamelCase reason, used for conditions, events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SyncError::InvalidPath(_) => "InvalidItemPath",
            SyncError::Unsupported(_) => "Unsupported",
            SyncError::Connect(e) => e.reason(),
            SyncError::Build(e) => e.reason(),
            SyncError::Conflict { .. } => "SecretConflict",
            SyncError::TypeChanged { .. } => "SecretTypeImmutable",
            SyncError::VaultNotAllowed(_) => "VaultNotAllowed",
            SyncError::Kube(kube::Error::Api(status)) if status.code == 403 => {
                "KubernetesForbidden"
            }
            SyncError::Kube(_) if self.is_permanent() => "SecretRejected",
            SyncError::Kube(_) => "KubernetesError",
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

/// Is this live Secret one that `target` may write? Ours when one of its owners is one of the
/// target's owners, or when it carries our label and every owner is of the same kind as the
/// target's (a OnePasswordItem that was deleted and created again). Anything else belongs to
/// someone else and is never overwritten.
pub fn is_ours(live: &Secret, target: &SyncTarget) -> bool {
    let owners = live.owner_references();
    if owners
        .iter()
        .any(|o| target.owners.iter().any(|t| t.uid == o.uid))
    {
        return true;
    }
    let labelled = live.labels().get(MANAGED_LABEL).map(String::as_str) == Some(MANAGED_VALUE);
    let kinds: BTreeSet<&str> = target.owners.iter().map(|o| o.kind.as_str()).collect();
    labelled && owners.iter().all(|o| kinds.contains(o.kind.as_str()))
}

/// Fields of `f:data` owned by a manager other than ours: someone edited the data by hand.
fn data_touched_by_others(live: &Secret) -> bool {
    live.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() != Some(FIELD_MANAGER))
        .filter_map(|m| m.fields_v1.as_ref())
        .any(|f| {
            f.0.get("f:data")
                .and_then(|d| d.as_object())
                .is_some_and(|d| d.keys().any(|k| k.starts_with("f:")))
        })
}

/// The keys of a `f:metadata.f:<section>` our manager owns.
fn our_metadata_keys(live: &Secret, section: &str) -> BTreeSet<String> {
    live.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some(FIELD_MANAGER))
        .filter_map(|m| m.fields_v1.as_ref())
        .filter_map(|f| f.0.get("f:metadata")?.get(section)?.as_object().cloned())
        .flat_map(|o| o.into_iter().map(|(k, _)| k))
        .filter_map(|k| k.strip_prefix("f:").map(str::to_string))
        .collect()
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
/// when it can: it holds the listed version of the same item, its data was written only by us,
/// and its metadata, type and owners are what we would write.
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
    if data_touched_by_others(live) {
        return Some("its data was edited by someone else");
    }
    let (labels, annotations) = desired_metadata(target);
    let matches = |want: &BTreeMap<String, String>, have: &BTreeMap<String, String>, section| {
        want.iter().all(|(k, v)| have.get(k) == Some(v))
            // Nothing we wrote earlier is left over (a label removed from the item).
            && our_metadata_keys(live, section)
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

/// Brings the Secret of `target` in line with its item.
pub async fn sync(ctx: &Context, target: &SyncTarget) -> Result<Synced, SyncError> {
    // The policy is checked on the vault alone, before the vault's items are listed: a denied
    // namespace learns nothing about what the vault holds.
    if let Some(policy) = &ctx.config.vault_policy {
        let (vault_id, vault_name) = ctx.catalog.vault(&target.path.vault).await?;
        policy
            .check(&target.namespace, &vault_id, vault_name.as_deref())
            .map_err(SyncError::VaultNotAllowed)?;
    }
    let resolution = ctx.catalog.resolve(&target.path).await?;
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &target.namespace);
    let live = api.get_opt(&target.name).await?;
    if let Some(live) = &live {
        if !is_ours(live, target) {
            return Err(SyncError::Conflict {
                name: target.name.clone(),
            });
        }
        let live_type = live.type_.as_deref().unwrap_or("Opaque");
        if live_type != wanted_type(target) {
            return Err(SyncError::TypeChanged {
                name: target.name.clone(),
                live: live_type.into(),
                wanted: wanted_type(target).into(),
            });
        }
        if resolution.ignored {
            return Ok(ignored(live, resolution, None));
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

    let item = ctx
        .catalog
        .client()
        .fetch_item(&resolution.vault_id, &resolution.item_id)
        .await?;
    let version = item.item.version;
    let updated_at = item.item.updated_at.clone();
    if let Some(live) = &live
        && item.item.tags.iter().any(|t| t == IGNORE_TAG)
    {
        return Ok(ignored(live, resolution, updated_at));
    }

    let salt = live
        .as_ref()
        .and_then(|s| s.annotations().get(DIGEST_ANNOTATION))
        .and_then(|d| digest_salt(d))
        .unwrap_or_else(new_salt);
    let (secret, warnings) = build(target, &item, &salt, ctx.config.allow_empty_values)?;
    let data_changed = live.as_ref().is_none_or(|l| l.data != secret.data);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let applied = api
        .patch(&target.name, &params, &Patch::Apply(&secret))
        .await?;
    let written = drop_foreign_keys(&api, &applied, &secret).await?;
    ctx.own_writes
        .record(&target.namespace, &target.name, written);

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

/// The item carries the ignore tag and its Secret exists: the Secret keeps what it holds.
fn ignored(live: &Secret, resolution: Resolution, updated_at: Option<String>) -> Synced {
    let held = live
        .annotations()
        .get(ITEM_VERSION_ANNOTATION)
        .and_then(|v| v.parse().ok())
        .unwrap_or(resolution.version);
    Synced {
        resolution,
        version: held,
        change: Change::Ignored,
        warnings: vec![format!(
            "the item is tagged {IGNORE_TAG}: its changes are not synced"
        )],
        updated_at,
    }
}

/// The desired Secret: the item's data plus our label and annotations.
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
    let warnings = warnings.iter().map(ToString::to_string).collect();
    Ok((secret, warnings))
}

/// Keys in the live Secret that we did not write (someone added them by hand, or another
/// writer owns them): server-side apply leaves them, so they are removed here.
/// Returns the resourceVersion of the Secret as finally written.
async fn drop_foreign_keys(
    api: &Api<Secret>,
    applied: &Secret,
    desired: &Secret,
) -> Result<Option<String>, kube::Error> {
    let wanted: BTreeSet<&String> = desired.data.iter().flatten().map(|(k, _)| k).collect();
    let extra: Vec<&String> = applied
        .data
        .iter()
        .flatten()
        .map(|(k, _)| k)
        .filter(|k| !wanted.contains(k))
        .collect();
    if extra.is_empty() {
        return Ok(applied.resource_version());
    }
    let mut ops = vec![json!({
        "op": "test",
        "path": "/metadata/resourceVersion",
        "value": applied.resource_version(),
    })];
    for key in extra {
        ops.push(json!({"op": "remove", "path": format!("/data/{}", pointer_escape(key))}));
    }
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).expect("valid JSON patch");
    let patched = api
        .patch(
            &applied.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await?;
    Ok(patched.resource_version())
}

fn pointer_escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// `v1:<salt>:<hmac>`: an HMAC-SHA256 of the data keyed by a random per-Secret salt. It changes
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

fn new_salt() -> String {
    let bytes: [u8; 16] = rand::random();
    hex(&bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        FieldsV1, ManagedFieldsEntry, ObjectMeta,
    };

    #[test]
    fn hmac_matches_rfc_4231_test_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

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
    fn a_foreign_secret_is_never_ours() {
        let t = target(vec![owner("OnePasswordItem", "u1")]);
        assert!(!is_ours(&secret(vec![], false), &t));
        assert!(!is_ours(
            &secret(vec![owner("Deployment", "d1")], false),
            &t
        ));
        // Ours by label, but owned by an annotated Deployment: the two flows do not fight.
        assert!(!is_ours(&secret(vec![owner("Deployment", "d1")], true), &t));
    }

    #[test]
    fn a_secret_owned_by_the_target_or_labelled_by_a_recreated_item_is_ours() {
        let t = target(vec![owner("OnePasswordItem", "u1")]);
        // Created by the official operator: it owns the Secret through the same item.
        assert!(is_ours(
            &secret(vec![owner("OnePasswordItem", "u1")], false),
            &t
        ));
        // The item was deleted and created again: a new uid, the same kind, our label.
        assert!(is_ours(
            &secret(vec![owner("OnePasswordItem", "u0")], true),
            &t
        ));
    }

    #[test]
    fn data_edited_by_kubectl_is_detected_from_managed_fields() {
        let mut s = secret(vec![], true);
        let entry = |manager: &str, fields: serde_json::Value| ManagedFieldsEntry {
            manager: Some(manager.into()),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        };
        s.metadata.managed_fields = Some(vec![entry(
            FIELD_MANAGER,
            json!({"f:data": {"f:password": {}}, "f:metadata": {"f:labels": {"f:a": {}}}}),
        )]);
        assert!(!data_touched_by_others(&s));
        assert_eq!(
            our_metadata_keys(&s, "f:labels"),
            BTreeSet::from(["a".to_string()])
        );
        s.metadata
            .managed_fields
            .as_mut()
            .unwrap()
            .push(entry("kubectl-edit", json!({"f:data": {"f:password": {}}})));
        assert!(data_touched_by_others(&s));
    }

    /// A Secret as our apply leaves it: our labels, annotations and data, owned by our manager.
    fn written_by_us(target: &SyncTarget, resolution: &Resolution) -> Secret {
        let mut annotations: BTreeMap<String, String> = desired_metadata(target).1;
        annotations.insert(
            ITEM_PATH_ANNOTATION.into(),
            secret::item_path(&resolution.vault_id, &resolution.item_id),
        );
        annotations.insert(
            ITEM_VERSION_ANNOTATION.into(),
            resolution.version.to_string(),
        );
        annotations.insert(
            DIGEST_ANNOTATION.into(),
            "v1:00112233445566778899aabbccddeeff:ab".into(),
        );
        let (labels, _) = desired_metadata(target);
        let key_set = |m: &BTreeMap<String, String>| {
            serde_json::Value::Object(m.keys().map(|k| (format!("f:{k}"), json!({}))).collect())
        };
        let fields = json!({
            "f:data": {"f:password": {}},
            "f:metadata": {"f:labels": key_set(&labels), "f:annotations": key_set(&annotations)},
        });
        Secret {
            metadata: ObjectMeta {
                name: Some(target.name.clone()),
                labels: Some(labels),
                annotations: Some(annotations),
                owner_references: Some(target.owners.clone()),
                managed_fields: Some(vec![ManagedFieldsEntry {
                    manager: Some(FIELD_MANAGER.into()),
                    operation: Some("Apply".into()),
                    fields_v1: Some(FieldsV1(fields)),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
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
    fn json_pointer_escapes_slash_and_tilde() {
        assert_eq!(pointer_escape("a/b~c"), "a~1b~0c");
    }
}
