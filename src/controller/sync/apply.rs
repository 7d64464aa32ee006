//! The writes of a sync: server-side apply of the built Secret with our one field manager, and,
//! once at take-over, the removal of keys another operator left.

use std::time::Instant;

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};

use super::{SyncError, SyncTarget, build::leftover_removal, plan::Held};
use crate::{
    controller::{Context, write_rate::Paused},
    vocabulary::FIELD_MANAGER,
};

/// Whether writing `held` to the target's Secret may go ahead, or the Secret is being fought
/// over and is left alone for a while.
pub fn admit(ctx: &Context, target: &SyncTarget, held: &Held) -> Result<(), SyncError> {
    let (namespace, name) = (&target.namespace, &target.name);
    ctx.write_rate
        .admit(
            namespace,
            name,
            &written_as(target, held),
            held.version,
            Instant::now(),
        )
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
/// The write is remembered: its watch event is our own echo (even when it comes before the
/// answer), and its rate tells a fight.
pub async fn apply(
    ctx: &Context,
    api: &Api<Secret>,
    target: &SyncTarget,
    secret: &Secret,
    held: &Held,
) -> Result<Secret, SyncError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let (namespace, name) = (&target.namespace, &target.name);
    // Its echo may come before its answer.
    let flight = ctx.own_writes.begin(namespace, name);
    let applied = api.patch(name, &params, &Patch::Apply(secret)).await;
    flight.land(applied.as_ref().ok().and_then(|a| a.resource_version()));
    let applied = applied?;
    ctx.write_rate.record(
        namespace,
        name,
        &written_as(target, held),
        held.version,
        Instant::now(),
    );
    Ok(applied)
}

/// A resourceVersion no object ever has: etcd starts at revision 1 and the first write is 2.
const NEVER_A_VERSION: &str = "1";

/// Creates `secret` where none of that name is expected; `None` when one exists, which is
/// left exactly as it is. The same apply as [`apply`] (our field manager owns every field we
/// set, as a later apply needs to drop keys), with a resourceVersion as a precondition: the
/// API server ignores it when it creates the object, and refuses the write (409 Conflict)
/// when an object of that name exists, whoever made it, since none has that version.
pub async fn create(
    ctx: &Context,
    api: &Api<Secret>,
    target: &SyncTarget,
    secret: &Secret,
    held: &Held,
) -> Result<Option<Secret>, SyncError> {
    let mut secret = secret.clone();
    secret.metadata.resource_version = Some(NEVER_A_VERSION.into());
    match apply(ctx, api, target, &secret, held).await {
        Ok(applied) => Ok(Some(applied)),
        Err(SyncError::Kube(kube::Error::Api(e))) if e.code == 409 => Ok(None),
        Err(e) => Err(e),
    }
}

/// What a write is of, for telling a fight from a change: the items, and the shaping, so that
/// writing a new shaping, or a new version of another item, is never counted as a rewrite.
pub(super) fn written_as(target: &SyncTarget, held: &Held) -> String {
    let mut what = held.item_path();
    // A new version of another item of the Secret is a change too.
    if let Some(items) = held.items_annotation() {
        what = format!("{what}+{items}");
    }
    match target.shape.digest() {
        Some(shape) => format!("{what}#{shape}"),
        None => what,
    }
}

/// Removes the keys another operator left (see [`super::plan::effect_of_write`]), right
/// after our first apply. If the Secret changed in between (someone else wrote it), the keys
/// are left: our digest is there by then, so they count as that writer's.
pub async fn remove_leftovers(
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
    let flight = ctx.own_writes.begin(&target.namespace, &target.name);
    let done = api
        .patch(&target.name, &params, &Patch::<()>::Json(patch))
        .await;
    flight.land(done.as_ref().ok().and_then(|d| d.resource_version()));
    match done {
        Ok(_) => {
            tracing::info!(secret = %target.name, keys = ?keys, "removed keys the item no longer has from a Secret taken over from another operator");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 422 || e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
