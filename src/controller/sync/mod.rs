//! The one pipeline both reconcilers use to keep a Secret equal to a 1Password item:
//!
//! 1. observe: where the item path resolves (the catalog, without asking Connect when it is
//!    cached) and the live Secret (not read for a new item: see [`SyncTarget::presumed_absent`]);
//! 2. [`plan`]: what to do, pure: nothing (up to date), refuse (someone else's Secret, a type
//!    change, an older version), keep an ignored item's data, or fetch the item;
//! 3. fetch the item, and [`plan`] again on what was fetched;
//! 4. [`build`]: the whole Secret, pure (data, labels, annotations, digest, owners);
//! 5. [`apply`]: server-side apply, with one field manager;
//!
//! then the reconciler writes the status from the [`Synced`] or [`SyncError`] returned;
//! [`error`] says what each failure means (its reason, and when to look again).
//!
//! Nothing here ever deletes or blanks a Secret: every failure returns before the write. It
//! writes only a Secret that names the asking object as an owner (by uid), never an older
//! version of the item than the Secret holds, never keys it does not own (someone else's keys
//! stay), and it stops writing a Secret that another writer keeps changing back
//! ([`super::write_rate`]).

pub mod apply;
pub mod build;
pub mod error;
pub mod plan;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use k8s_openapi::{api::core::v1::Secret, apimachinery::pkg::apis::meta::v1::OwnerReference};
use kube::Api;

use super::Context;
use crate::{
    catalog::{Resolution, ResolveError},
    connect::{ItemPath, model::ItemWithFiles},
    vocabulary::{FORCE_SYNC_ANNOTATION, FORCE_SYNCED_ANNOTATION, IGNORE_TAG},
};
pub use error::{Retry, SyncError};
use plan::{Held, Plan, Seen};

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
    /// Which keys the Secret gets ([`crate::secret::shape`]); none asked for on a Deployment.
    pub shape: crate::secret::Shape,
    /// Nothing has synced this target yet, so its Secret is most likely absent: it is created
    /// without being read first, by an apply that fails on any Secret of that name
    /// ([`apply::create`]). One that exists after all turns the sync into the usual read, plan
    /// and write. Saves a GET per new Secret (a third of a cold start's API requests).
    pub presumed_absent: bool,
}

impl SyncTarget {
    /// The other items of the Secret (`spec.items`): each name with its path.
    pub fn extra_paths(&self) -> Result<Vec<(&str, ItemPath)>, SyncError> {
        self.shape
            .items
            .iter()
            .map(|source| {
                ItemPath::parse(&source.item_path)
                    .map(|path| (source.name.as_str(), path))
                    .map_err(|e| SyncError::from(e).in_item(&source.name))
            })
            .collect()
    }

    /// Asks for the item to be fetched again once per new `force-sync` value: `asked` are the
    /// values on the objects that ask for this Secret (empty ones ask for nothing; several
    /// Deployments sharing a Secret each count, so none undoes another's). The values go in
    /// the Secret's `force-synced` annotation: [`plan::plan`] fetches while the Secret does not
    /// carry them, and the write that follows the fetch records them. The record lives on the
    /// Secret rather than in a status because a Deployment has no status of ours and the
    /// official CRD's status holds only conditions; it is written in the same apply as the
    /// data, so it says exactly that the fetch was made and its result applied, and it
    /// survives an operator restart. The `force-sync` annotation itself is never copied.
    pub fn force_sync<'a>(&mut self, asked: impl IntoIterator<Item = &'a str>) {
        self.annotations.remove(FORCE_SYNC_ANNOTATION);
        let values: std::collections::BTreeSet<&str> = asked
            .into_iter()
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        if !values.is_empty() {
            let joined = values.into_iter().collect::<Vec<_>>().join(",");
            self.annotations
                .insert(FORCE_SYNCED_ANNOTATION.into(), joined);
        }
    }
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
    /// The other items of the Secret (`spec.items`) by name: where each resolved, and the
    /// version the Secret holds now.
    pub extra: BTreeMap<String, (Resolution, u64)>,
    pub change: Change,
    /// Things the user should know (skipped keys, duplicate titles); never values.
    pub warnings: Vec<String>,
    /// The item's `updatedAt`, when the item was fetched.
    pub updated_at: Option<String>,
    /// The item was fetched because a new `force-sync` value asked for it.
    pub forced: bool,
}

impl Synced {
    /// What to tell the user once a `force-sync` request was handled; `None` when none was.
    pub fn force_synced_note(&self) -> Option<String> {
        let data = match self.change {
            Change::Created | Change::Updated => "changed",
            _ => "unchanged",
        };
        self.forced.then(|| {
            format!(
                "Fetched the item again as force-sync asked: version {}, data {data}",
                self.version
            )
        })
    }
}

/// Brings the Secret of `target` in line with its item.
pub async fn sync(ctx: &Context, target: &SyncTarget) -> Result<Synced, SyncError> {
    if target.presumed_absent {
        match sync_pass(ctx, target, Read::Skip).await? {
            Pass::Done(synced) => return Ok(synced),
            Pass::Exists => {
                tracing::debug!(secret = %target.name, "a Secret of that name exists: reading it");
            }
        }
    }
    match sync_pass(ctx, target, Read::Live).await? {
        Pass::Done(synced) => Ok(synced),
        Pass::Exists => unreachable!("a pass that read the Secret never presumes it absent"),
    }
}

/// Whether a pass reads the live Secret, or presumes there is none.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Read {
    Live,
    Skip,
}

enum Pass {
    Done(Synced),
    /// The Secret presumed absent exists: nothing was written.
    Exists,
}

async fn sync_pass(ctx: &Context, target: &SyncTarget, read: Read) -> Result<Pass, SyncError> {
    let (resolution, extra, live) = observe(ctx, target, read).await?;
    let live = live.as_ref();
    let listed = Held::listed(&resolution).with_extra(
        extra
            .iter()
            .map(|(name, r)| (name.clone(), Held::listed(r)))
            .collect(),
    );
    let with_versions = |held: &Held| {
        extra
            .iter()
            .map(|(name, r)| (name.clone(), (r.clone(), held.extra[name].version)))
            .collect()
    };
    match plan::plan(live, target, &listed, resolution.ignored, Seen::Listed)? {
        Plan::UpToDate => {
            return Ok(Pass::Done(Synced {
                version: resolution.version,
                extra: with_versions(&listed),
                resolution,
                change: Change::Unchanged,
                warnings: Vec::new(),
                updated_at: None,
                forced: false,
            }));
        }
        Plan::KeepIgnored { move_annotations } => {
            keep_ignored(ctx, live, target, &listed, move_annotations).await?;
            return Ok(Pass::Done(ignored(resolution, listed.version, None)));
        }
        Plan::Fetch { why } => tracing::debug!(secret = %target.name, why, "fetching the item"),
        Plan::Write => {}
    }

    let forced = plan::force_sync_asked(live, target);
    // A Secret we keep writing back is left alone for a while: nothing is fetched or written.
    apply::admit(ctx, target, &listed)?;
    let client = ctx.catalog.client();
    let aside = ctx.statuses.aside();
    let item = client
        .fetch_item(&resolution.vault_id, &resolution.item_id)
        .await?;
    let mut named: BTreeMap<String, ItemWithFiles> = BTreeMap::new();
    for (name, r) in &extra {
        let fetched = client
            .fetch_item(&r.vault_id, &r.item_id)
            .await
            .map_err(|e| SyncError::from(e).in_item(name))?;
        named.insert(name.clone(), fetched);
    }
    drop(aside);
    let fetched = Held::fetched(&item).with_extra(
        named
            .iter()
            .map(|(name, item)| (name.clone(), Held::fetched(item)))
            .collect(),
    );
    let updated_at = item.item.updated_at.clone();
    let tagged = item.item.tags.iter().any(|t| t == IGNORE_TAG);
    if let Plan::KeepIgnored { move_annotations } =
        plan::plan(live, target, &fetched, tagged, Seen::Fetched)?
    {
        keep_ignored(ctx, live, target, &fetched, move_annotations).await?;
        return Ok(Pass::Done(ignored(resolution, fetched.version, updated_at)));
    }

    let salt = build::salt_of(live).unwrap_or_else(|| {
        let key = |message: &[u8]| ctx.catalog.client().token_mac(message);
        build::derived_salt(key, &target.namespace, &target.name)
    });
    let (secret, warnings) =
        build::build(target, &item, &named, &salt, ctx.config.allow_empty_values)?;
    let (change, leftovers) = plan::effect_of_write(live, &secret);
    let api = secrets(ctx, target);
    let applied = match read {
        Read::Live => apply::apply(ctx, &api, target, &secret, &fetched).await?,
        Read::Skip => match apply::create(ctx, &api, target, &secret, &fetched).await? {
            Some(applied) => applied,
            None => return Ok(Pass::Exists),
        },
    };
    if !leftovers.is_empty() {
        apply::remove_leftovers(ctx, &api, target, &applied, &leftovers).await?;
    }
    let mut notes: Vec<String> = resolution.note.iter().cloned().collect();
    notes.extend(
        extra
            .iter()
            .filter_map(|(name, r)| Some(format!("item {name:?}: {}", r.note.as_ref()?))),
    );
    notes.extend(warnings);
    Ok(Pass::Done(Synced {
        extra: with_versions(&fetched),
        resolution,
        version: fetched.version,
        change,
        warnings: notes,
        updated_at,
        forced,
    }))
}

/// Where the target's item paths resolve (the main one, then those of `spec.items` by name),
/// each checked against the vault policy, and the live Secret. The policy is checked on the
/// resolved vault alone, before the vault's items are listed: a denied namespace learns nothing
/// about what the vault holds.
async fn observe(
    ctx: &Context,
    target: &SyncTarget,
    read: Read,
) -> Result<(Resolution, BTreeMap<String, Resolution>, Option<Secret>), SyncError> {
    // Waiting for Connect (or for a poll's listing) gives the API server nothing to do: status
    // writes may go on meanwhile.
    let aside = ctx.statuses.aside();
    let resolution = resolve(ctx, target, &target.path).await?;
    let mut extra = BTreeMap::new();
    for (name, path) in target.extra_paths()? {
        let resolved = resolve(ctx, target, &path)
            .await
            .map_err(|e| e.in_item(name))?;
        extra.insert(name.to_owned(), resolved);
    }
    drop(aside);
    let live = match read {
        Read::Live => secrets(ctx, target).get_opt(&target.name).await?,
        Read::Skip => None,
    };
    Ok((resolution, extra, live))
}

async fn resolve(
    ctx: &Context,
    target: &SyncTarget,
    path: &ItemPath,
) -> Result<Resolution, SyncError> {
    let policy = ctx.config.vault_policy.as_deref();
    ctx.catalog
        .resolve_allowed(path, |vault_id, vault_name| {
            policy.map_or(Ok(()), |p| p.check(&target.namespace, vault_id, vault_name))
        })
        .await
        .map_err(|e| match e {
            ResolveError::Connect(e) => SyncError::Connect(e),
            ResolveError::Refused(denied) => SyncError::VaultNotAllowed(denied),
        })
}

fn secrets(ctx: &Context, target: &SyncTarget) -> Api<Secret> {
    Api::namespaced(ctx.client.clone(), &target.namespace)
}

/// The ignored item's Secret (the plan keeps only one that exists) keeps its data; its
/// annotations move to `held` when they differ.
async fn keep_ignored(
    ctx: &Context,
    live: Option<&Secret>,
    target: &SyncTarget,
    held: &Held,
    move_annotations: bool,
) -> Result<(), SyncError> {
    if let (true, Some(live)) = (move_annotations, live) {
        apply::admit(ctx, target, held)?;
        let secret = build::annotations_moved(live, target, held);
        apply::apply(ctx, &secrets(ctx, target), target, &secret, held).await?;
    }
    Ok(())
}

fn ignored(resolution: Resolution, version: u64, updated_at: Option<String>) -> Synced {
    Synced {
        resolution,
        version,
        extra: BTreeMap::new(),
        change: Change::Ignored,
        warnings: vec![format!(
            "the item is tagged {IGNORE_TAG}: its changes are not synced"
        )],
        updated_at,
        forced: false,
    }
}
