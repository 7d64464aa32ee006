//! The decisions of a sync, pure: from the live Secret (if any) and which version of which item
//! there is, what to do; and, once the desired Secret is built, what writing it changes. No I/O.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::ResourceExt;

use super::{
    Change, SyncError, SyncTarget,
    build::{data_digest, desired_metadata, digest_salt, is_data_annotation, wanted_type},
};
use crate::{
    catalog::Resolution,
    connect::model::ItemWithFiles,
    secret,
    vocabulary::{
        DIGEST_ANNOTATION, FIELD_MANAGER, FORCE_SYNCED_ANNOTATION, ITEM_PATH_ANNOTATION,
        ITEM_VERSION_ANNOTATION, ITEMS_ANNOTATION,
    },
};

/// Which version of which item: as the listing says, or as fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    pub vault_id: String,
    pub item_id: String,
    pub version: u64,
    /// The other items of the Secret (`spec.items`), by name; their own `extra` is empty.
    pub extra: BTreeMap<String, Held>,
}

impl Held {
    pub fn listed(resolution: &Resolution) -> Self {
        Held {
            vault_id: resolution.vault_id.clone(),
            item_id: resolution.item_id.clone(),
            version: resolution.version,
            extra: BTreeMap::new(),
        }
    }

    pub fn fetched(item: &ItemWithFiles) -> Self {
        Held {
            vault_id: item.item.vault.id.clone(),
            item_id: item.item.id.clone(),
            version: item.item.version,
            extra: BTreeMap::new(),
        }
    }

    /// With the other items of the Secret, by name.
    pub fn with_extra(self, extra: BTreeMap<String, Held>) -> Self {
        Held { extra, ..self }
    }

    /// The value of the item-path annotation: ids, never titles.
    pub fn item_path(&self) -> String {
        secret::item_path(&self.vault_id, &self.item_id)
    }

    /// The value of the items annotation ([`ITEMS_ANNOTATION`]); `None` without other items,
    /// so a Secret of one item carries exactly the annotations it always did.
    pub fn items_annotation(&self) -> Option<String> {
        (!self.extra.is_empty()).then(|| {
            self.extra
                .iter()
                .map(|(name, held)| format!("{name}={}@{}", held.item_path(), held.version))
                .collect::<Vec<_>>()
                .join(",")
        })
    }
}

/// The other items a live Secret says it holds, by name: their item path and version, as
/// [`Held::items_annotation`] wrote them (an entry it cannot read is left out).
fn recorded_items(live: &Secret) -> BTreeMap<&str, (&str, u64)> {
    let Some(value) = live.annotations().get(ITEMS_ANNOTATION) else {
        return BTreeMap::new();
    };
    value
        .split(',')
        .filter_map(|entry| {
            let (name, held) = entry.split_once('=')?;
            let (path, version) = held.rsplit_once('@')?;
            Some((name, (path, version.parse().ok()?)))
        })
        .collect()
}

/// Where the version looked at comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The catalog's listing: the item itself has not been fetched.
    Listed,
    /// The item, fetched.
    Fetched,
}

/// What to do with the target's Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// It holds the listed version, as we wrote it, with the metadata we would write: nothing
    /// to fetch or write.
    UpToDate,
    /// The item carries the ignore tag and the Secret exists: its data stays as it is. As the
    /// official operator does (`pkg/onepassword/secret_update_handler.go`), its item-path and
    /// item-version annotations still move, when they differ (`move_annotations`).
    KeepIgnored { move_annotations: bool },
    /// The Secret is missing or stale (`why`): fetch the item.
    Fetch { why: &'static str },
    /// Build the Secret from the fetched item and apply it.
    Write,
}

/// The one decision of a sync, taken on the listing first (it may be [`Plan::UpToDate`], and
/// Connect is asked nothing), then again on the fetched item (never `UpToDate` nor `Fetch`).
///
/// It refuses to write a Secret that is not ours ([`is_ours`]), whose type would change, or
/// that holds a newer version of the same item than `held`.
pub fn plan(
    live: Option<&Secret>,
    target: &SyncTarget,
    held: &Held,
    ignored: bool,
    seen: Seen,
) -> Result<Plan, SyncError> {
    let Some(live) = live else {
        return Ok(match seen {
            Seen::Listed => Plan::Fetch {
                why: "there is no Secret yet",
            },
            Seen::Fetched => Plan::Write,
        });
    };
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
    refuse_older(live, target, held)?;
    if ignored {
        let move_annotations = held_version(live, held) != Some(held.version);
        return Ok(Plan::KeepIgnored { move_annotations });
    }
    Ok(match (seen, stale_because(live, target, held)) {
        (Seen::Fetched, _) => Plan::Write,
        (Seen::Listed, None) => Plan::UpToDate,
        (Seen::Listed, Some(why)) => Plan::Fetch { why },
    })
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
pub(super) fn conflict(target: &SyncTarget) -> SyncError {
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
pub(super) fn our_data(live: &Secret) -> BTreeMap<String, ByteString> {
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
pub(super) fn our_data_intact(live: &Secret) -> bool {
    let Some(digest) = live.annotations().get(DIGEST_ANNOTATION) else {
        return false;
    };
    let Some(salt) = digest_salt(digest) else {
        return false;
    };
    let data = our_data(live).into_iter().map(|(k, v)| (k, v.0)).collect();
    data_digest(&salt, &data) == *digest
}

/// Why the live Secret cannot stay as it is without looking at the item's values, or `None`
/// when it can: it holds the listed version of the same item, the keys we wrote are as we
/// wrote them, and its metadata, type and owners are what we would write.
pub(super) fn stale_because(
    live: &Secret,
    target: &SyncTarget,
    held: &Held,
) -> Option<&'static str> {
    let ann = live.annotations();
    if ann.get(ITEM_PATH_ANNOTATION) != Some(&held.item_path()) {
        return Some("it holds another item");
    }
    if ann.get(ITEM_VERSION_ANNOTATION) != Some(&held.version.to_string()) {
        return Some("the item has a new version");
    }
    if ann.get(ITEMS_ANNOTATION) != held.items_annotation().as_ref() {
        return Some("another item of spec.items is new or has a new version");
    }
    if !ann.contains_key(DIGEST_ANNOTATION) {
        return Some("it has no data digest of ours");
    }
    if !our_data_intact(live) {
        return Some("the data we wrote was changed by someone else");
    }
    if force_sync_asked(Some(live), target) {
        return Some("a sync was asked for (force-sync)");
    }
    let (labels, annotations) = desired_metadata(target);
    let matches = |want: &BTreeMap<String, String>, have: &BTreeMap<String, String>, section| {
        want.iter().all(|(k, v)| have.get(k) == Some(v))
            // Nothing we wrote earlier is left over (a label removed from the item). A
            // `force-sync` removed asks for nothing: its record stays until the next write.
            && owned_keys(live, &["f:metadata", section])
                .iter()
                .all(|k| want.contains_key(k) || is_data_annotation(k) || k == FORCE_SYNCED_ANNOTATION)
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

/// Whether the target asks for `force-sync` values the live Secret (if any) has not handled.
pub(super) fn force_sync_asked(live: Option<&Secret>, target: &SyncTarget) -> bool {
    let asked = target.annotations.get(FORCE_SYNCED_ANNOTATION);
    asked.is_some() && live.and_then(|l| l.annotations().get(FORCE_SYNCED_ANNOTATION)) != asked
}

/// The version of `held`'s item the live Secret holds, by its annotations; `None` when it holds
/// another item, or says nothing.
pub(super) fn held_version(live: &Secret, held: &Held) -> Option<u64> {
    let ann = live.annotations();
    if ann.get(ITEM_PATH_ANNOTATION)? != &held.item_path() {
        return None;
    }
    ann.get(ITEM_VERSION_ANNOTATION)?.parse().ok()
}

/// Refuses to go back: item versions only grow, so a version older than the one the Secret
/// holds comes from a Connect server that lags behind (one replica of several behind a load
/// balancer), and writing it would roll the Secret, and its workloads, back.
pub(super) fn refuse_older(
    live: &Secret,
    target: &SyncTarget,
    held: &Held,
) -> Result<(), SyncError> {
    let older = |in_secret: Option<u64>, served: u64| match in_secret {
        Some(in_secret) if served < in_secret => Err(SyncError::StaleItem {
            name: target.name.clone(),
            held: in_secret,
            served,
        }),
        _ => Ok(()),
    };
    older(held_version(live, held), held.version)?;
    let recorded = recorded_items(live);
    for (name, item) in &held.extra {
        let in_secret = recorded
            .get(name.as_str())
            .filter(|(path, _)| *path == item.item_path())
            .map(|(_, version)| *version);
        older(in_secret, item.version).map_err(|e| e.in_item(name))?;
    }
    Ok(())
}

/// What applying `desired` over `live` changes, and the keys a Secret taken over from another
/// operator still has that the item no longer has (see `leftovers_at_takeover`).
pub fn effect_of_write(live: Option<&Secret>, desired: &Secret) -> (Change, Vec<String>) {
    let Some(live) = live else {
        return (Change::Created, Vec::new());
    };
    let leftovers = leftovers_at_takeover(live, desired);
    let change = if !leftovers.is_empty() || data_differs(live, desired) {
        Change::Updated
    } else {
        Change::MetadataOnly
    };
    (change, leftovers)
}

/// The keys of a Secret we take over that the item no longer has. A Secret of ours (by owner
/// reference) without our digest was last written by another operator: the official one,
/// which replaces the data whole on every change (`pkg/kubernetessecrets/kubernetes_secrets_builder.go`,
/// `CreateKubernetesSecretFromItem` updates `Data` as built). Its keys are not ours by
/// `managedFields`, so an apply would leave them for ever; they are removed once, as that
/// operator would have removed them. Once our digest is there, keys others add stay theirs.
pub(super) fn leftovers_at_takeover(live: &Secret, desired: &Secret) -> Vec<String> {
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

/// Whether writing `desired` changes the data: a value of ours differs, or a key we own goes.
pub(super) fn data_differs(live: &Secret, desired: &Secret) -> bool {
    let live_data = live.data.as_ref();
    let wanted = desired.data.iter().flatten();
    let changed = wanted
        .clone()
        .any(|(k, v)| live_data.and_then(|d| d.get(k)) != Some(v));
    let wanted: BTreeSet<&String> = wanted.map(|(k, _)| k).collect();
    changed || our_data(live).keys().any(|k| !wanted.contains(k))
}
