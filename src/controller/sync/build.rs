//! The Secret we write, pure and whole: the item's keys and values ([`crate::secret`]), our
//! label, the annotations (item path, version, data digest), the owner references and the type,
//! all set here. The same input always gives the same object.

use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use kube::ResourceExt;

use super::{
    SyncTarget,
    plan::{Held, our_data},
};
use crate::{
    connect::model::ItemWithFiles,
    digest::{hex, hmac_sha256},
    secret::{self, BuildError, DesiredSecret},
    vocabulary::{
        DIGEST_ANNOTATION, ITEM_PATH_ANNOTATION, ITEM_VERSION_ANNOTATION, ITEMS_ANNOTATION,
        MANAGED_LABEL, MANAGED_VALUE, SHAPE_ANNOTATION,
    },
};

/// The desired Secret for the fetched `item` and the other items of `spec.items` (`named`),
/// with the warnings the user should see (keys left out, never values). Refused before
/// anything is sent when the API server could not store it.
pub fn build(
    target: &SyncTarget,
    item: &ItemWithFiles,
    named: &BTreeMap<String, ItemWithFiles>,
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
        owners: target.owners.clone(),
        options: secret::BuildOptions { allow_empty_values },
    };
    let (mut secret, warnings) = secret::build_shaped_secret(&desired, named, &target.shape)?;
    let held = Held::fetched(item).with_extra(
        named
            .iter()
            .map(|(name, item)| (name.clone(), Held::fetched(item)))
            .collect(),
    );
    if let Some(items) = held.items_annotation() {
        secret
            .annotations_mut()
            .insert(ITEMS_ANNOTATION.into(), items);
    }
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    secret
        .annotations_mut()
        .insert(DIGEST_ANNOTATION.into(), data_digest(salt, &data));
    secret::check_stored_size(&secret)?;
    let warnings = warnings.iter().map(ToString::to_string).collect();
    Ok((secret, warnings))
}

/// What we apply to an ignored item's Secret: everything we own as it is (the data of our keys
/// included, with its digest), our labels and annotations, and the item path and version moved
/// to `held`. The data, and so its digest, do not change: nothing rolls.
pub fn annotations_moved(live: &Secret, target: &SyncTarget, held: &Held) -> Secret {
    let (labels, mut annotations) = desired_metadata(target);
    annotations.insert(ITEM_PATH_ANNOTATION.into(), held.item_path());
    annotations.insert(ITEM_VERSION_ANNOTATION.into(), held.version.to_string());
    // The data stays as it is, and with it what the other items' annotation says of it.
    for key in [DIGEST_ANNOTATION, ITEMS_ANNOTATION] {
        if let Some(value) = live.annotations().get(key) {
            annotations.insert(key.into(), value.clone());
        }
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

/// The labels and annotations we write besides those that depend on the data.
pub(super) fn desired_metadata(
    target: &SyncTarget,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut labels = target.labels.clone();
    labels.insert(MANAGED_LABEL.into(), MANAGED_VALUE.into());
    // The item path, version and digest are ours to write from the item itself; a copy of the
    // Deployment's `item-path` (a title path) must not be compared with, or override, them.
    let mut annotations: BTreeMap<String, String> = target
        .annotations
        .iter()
        .filter(|(k, _)| !is_data_annotation(k) && k.as_str() != SHAPE_ANNOTATION)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    // A new shaping makes the Secret stale (`plan::stale_because` compares these annotations)
    // though the item has the same version; without shaping, nothing is added.
    if let Some(digest) = target.shape.digest() {
        annotations.insert(SHAPE_ANNOTATION.into(), digest);
    }
    (labels, annotations)
}

pub(super) fn wanted_type(target: &SyncTarget) -> &str {
    match target.secret_type.as_deref() {
        None | Some("") => "Opaque",
        Some(t) => t,
    }
}

/// The annotations that say what data the Secret holds.
pub(super) fn is_data_annotation(key: &str) -> bool {
    [
        ITEM_PATH_ANNOTATION,
        ITEM_VERSION_ANNOTATION,
        ITEMS_ANNOTATION,
        DIGEST_ANNOTATION,
    ]
    .contains(&key)
}

/// A JSON patch that removes `keys` from the data of the Secret as it was at
/// `resource_version`, and fails (test op) if it changed meanwhile.
pub fn leftover_removal(resource_version: &str, keys: &[String]) -> json_patch::Patch {
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

/// The salt of a digest we wrote.
pub(super) fn digest_salt(digest: &str) -> Option<String> {
    let mut parts = digest.split(':');
    match (parts.next(), parts.next()) {
        (Some("v1"), Some(salt)) if salt.len() >= 16 => Some(salt.to_string()),
        _ => None,
    }
}

/// The salt the live Secret's digest has: a Secret keeps its salt.
pub(super) fn salt_of(live: Option<&Secret>) -> Option<String> {
    digest_salt(live?.annotations().get(DIGEST_ANNOTATION)?)
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
