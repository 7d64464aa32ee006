//! The pure steps of the pipeline, from plain objects: the plan and the build.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, ObjectMeta, OwnerReference},
};
use kube::ResourceExt;
use serde_json::json;

use super::{
    Change, SyncTarget,
    build::{
        annotations_moved, data_digest, derived_salt, desired_metadata, digest_salt,
        leftover_removal,
    },
    plan::{
        Held, Plan, Seen, conflict, data_differs, effect_of_write, held_version, is_ours,
        leftovers_at_takeover, our_data, our_data_intact, plan, refuse_older, stale_because,
    },
};
use crate::{
    connect::ItemPath,
    digest::hmac_sha256,
    vocabulary::{
        DIGEST_ANNOTATION, FIELD_MANAGER, FORCE_SYNC_ANNOTATION, FORCE_SYNCED_ANNOTATION,
        ITEM_PATH_ANNOTATION, ITEM_VERSION_ANNOTATION, ITEMS_ANNOTATION, MANAGED_LABEL,
        MANAGED_VALUE,
    },
};

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
        shape: Default::default(),
        presumed_absent: false,
    }
}

fn secret(owners: Vec<OwnerReference>, labelled: bool) -> Secret {
    let labels =
        labelled.then(|| BTreeMap::from([(MANAGED_LABEL.to_string(), MANAGED_VALUE.to_string())]));
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
fn written_by_us(target: &SyncTarget, held: &Held) -> Secret {
    let data = BTreeMap::from([("password".to_string(), b"pw".to_vec())]);
    let mut annotations: BTreeMap<String, String> = desired_metadata(target).1;
    annotations.insert(ITEM_PATH_ANNOTATION.into(), held.item_path());
    annotations.insert(ITEM_VERSION_ANNOTATION.into(), held.version.to_string());
    if let Some(items) = held.items_annotation() {
        annotations.insert(ITEMS_ANNOTATION.into(), items);
    }
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

fn resolution(version: u64) -> Held {
    Held {
        vault_id: "vvvvvvvvvvvvvvvvvvvvvvvvvv".into(),
        item_id: "iiiiiiiiiiiiiiiiiiiiiiiiii".into(),
        version,
        extra: Default::default(),
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

fn forced(values: &[&str]) -> SyncTarget {
    let mut t = target(vec![owner("OnePasswordItem", "o1")]);
    t.force_sync(values.iter().copied());
    t
}

#[test]
fn a_new_force_sync_value_fetches_the_item_once_though_its_version_did_not_move() {
    let r = resolution(4);
    let live = written_by_us(&target(vec![owner("OnePasswordItem", "o1")]), &r);
    let asked = forced(&["1"]);
    let fetch = Plan::Fetch {
        why: "a sync was asked for (force-sync)",
    };
    assert_eq!(
        plan(Some(&live), &asked, &r, false, Seen::Listed).unwrap(),
        fetch
    );
    // The write after the fetch records the value: the same value again fetches nothing.
    let recorded = written_by_us(&asked, &r);
    assert_eq!(
        recorded.annotations().get(FORCE_SYNCED_ANNOTATION),
        Some(&"1".to_string())
    );
    assert_eq!(
        plan(Some(&recorded), &asked, &r, false, Seen::Listed).unwrap(),
        Plan::UpToDate
    );
    // A new value fetches once more.
    assert_eq!(
        plan(Some(&recorded), &forced(&["2"]), &r, false, Seen::Listed).unwrap(),
        fetch
    );
    // The annotation removed (or emptied) asks for nothing: its record stays, and is no drift.
    for gone in [forced(&[]), forced(&["  "])] {
        assert_eq!(
            plan(Some(&recorded), &gone, &r, false, Seen::Listed).unwrap(),
            Plan::UpToDate
        );
    }
    // An ignored item's data is never rewritten: nothing to fetch for.
    assert_eq!(
        plan(Some(&live), &asked, &r, true, Seen::Listed).unwrap(),
        Plan::KeepIgnored {
            move_annotations: false
        }
    );
}

#[test]
fn force_sync_values_of_several_askers_are_recorded_together_and_never_copied() {
    let mut t = target(vec![owner("Deployment", "d1"), owner("Deployment", "d2")]);
    t.annotations
        .insert(FORCE_SYNC_ANNOTATION.into(), "b".into());
    t.force_sync(["b", "a", "b", ""]);
    assert_eq!(t.annotations.get(FORCE_SYNC_ANNOTATION), None);
    assert_eq!(
        t.annotations
            .get(FORCE_SYNCED_ANNOTATION)
            .map(String::as_str),
        Some("a,b")
    );
    // Each sharer's value is in the record: one of them reconciled alone is up to date.
    let r = resolution(4);
    let live = written_by_us(&t, &r);
    assert_eq!(stale_because(&live, &t, &r), None);
}

#[test]
fn a_new_shaping_makes_the_secret_stale_though_the_item_is_the_same() {
    let t = target(vec![owner("OnePasswordItem", "o1")]);
    let r = resolution(4);
    let live = written_by_us(&t, &r);
    assert_eq!(stale_because(&live, &t, &r), None);
    let mut shaped = t.clone();
    shaped.shape.includes = vec!["pass*".into()];
    assert_eq!(
        stale_because(&live, &shaped, &r),
        Some("its annotations differ")
    );
    let live = written_by_us(&shaped, &r);
    assert_eq!(stale_because(&live, &shaped, &r), None);
    let mut reshaped = shaped.clone();
    reshaped.shape.includes = vec!["user*".into()];
    assert_eq!(
        stale_because(&live, &reshaped, &r),
        Some("its annotations differ")
    );
    // Back to no shaping: the annotation we wrote is left over, so the Secret is stale.
    assert_eq!(stale_because(&live, &t, &r), Some("its annotations differ"));
}

#[test]
fn writing_a_new_shaping_of_the_same_version_is_not_a_rewrite() {
    let t = target(vec![owner("OnePasswordItem", "o1")]);
    let r = resolution(4);
    assert_eq!(super::apply::written_as(&t, &r), r.item_path());
    let mut shaped = t.clone();
    shaped.shape.includes = vec!["pass*".into()];
    let mut reshaped = shaped.clone();
    reshaped.shape.includes = vec!["user*".into()];
    let rate = crate::controller::write_rate::WriteRate::default();
    let now = std::time::Instant::now();
    for s in [&t, &shaped, &reshaped, &t, &shaped, &reshaped] {
        let what = super::apply::written_as(s, &r);
        assert!(rate.admit("ns", "db", &what, 4, now).is_ok());
        rate.record("ns", "db", &what, 4, now);
    }
}

#[test]
fn an_older_version_of_the_same_item_is_refused_but_not_a_newer_one_or_another_item() {
    let t = target(vec![owner("OnePasswordItem", "u1")]);
    let r = resolution(4);
    let live = written_by_us(&t, &r);
    let refuse = |vault: &str, item: &str, served| {
        let held = Held {
            vault_id: vault.into(),
            item_id: item.into(),
            version: served,
            extra: Default::default(),
        };
        refuse_older(&live, &t, &held)
    };
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
    assert_eq!(held_version(&unannotated, &r), None);
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
    let path = r.item_path();
    let moved = annotations_moved(&live, &t, &Held { version: 6, ..r });
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
    let patch = serde_json::to_value(leftover_removal("42", &["a".into(), "b~c".into()])).unwrap();
    assert_eq!(
        patch,
        serde_json::json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": "42"},
            {"op": "remove", "path": "/data/a"},
            {"op": "remove", "path": "/data/b~0c"},
        ])
    );
}

#[test]
fn without_a_secret_the_plan_fetches_the_item_then_writes_it() {
    let t = target(vec![owner("OnePasswordItem", "u1")]);
    let r = resolution(4);
    let listed = plan(None, &t, &r, false, Seen::Listed).unwrap();
    assert_eq!(
        listed,
        Plan::Fetch {
            why: "there is no Secret yet"
        }
    );
    // An ignored item without a Secret gets one made once.
    assert_eq!(
        plan(None, &t, &r, true, Seen::Fetched).unwrap(),
        Plan::Write
    );
}

#[test]
fn a_secret_we_wrote_for_the_listed_version_is_up_to_date_and_a_new_version_is_fetched() {
    let t = target(vec![owner("OnePasswordItem", "u1")]);
    let live = written_by_us(&t, &resolution(4));
    let plan_for = |version, seen| plan(Some(&live), &t, &resolution(version), false, seen);
    assert_eq!(plan_for(4, Seen::Listed).unwrap(), Plan::UpToDate);
    assert_eq!(
        plan_for(5, Seen::Listed).unwrap(),
        Plan::Fetch {
            why: "the item has a new version"
        }
    );
    // Once fetched, it is written, even at the version it holds (the fetch was asked for).
    assert_eq!(plan_for(4, Seen::Fetched).unwrap(), Plan::Write);
    assert_eq!(plan_for(5, Seen::Fetched).unwrap(), Plan::Write);
    // An older version is never written back, whether listed or fetched.
    for seen in [Seen::Listed, Seen::Fetched] {
        assert_eq!(plan_for(3, seen).unwrap_err().reason(), "StaleItemVersion");
    }
}

#[test]
fn the_plan_refuses_someone_elses_secret_and_a_type_change_before_anything_is_fetched() {
    let t = target(vec![owner("OnePasswordItem", "u1")]);
    let r = resolution(4);
    let foreign = written_by_us(&target(vec![owner("OnePasswordItem", "u0")]), &r);
    let err = plan(Some(&foreign), &t, &r, false, Seen::Listed).unwrap_err();
    assert_eq!(err.reason(), "SecretConflict");
    let mut tls = t.clone();
    tls.secret_type = Some("kubernetes.io/tls".into());
    let live = written_by_us(&t, &r);
    let err = plan(Some(&live), &tls, &r, false, Seen::Listed).unwrap_err();
    assert_eq!(err.reason(), "SecretTypeImmutable");
    assert!(err.to_string().contains("\"Opaque\""), "{err}");
}

#[test]
fn an_ignored_items_secret_is_kept_and_its_annotations_move_only_to_a_new_version() {
    let t = target(vec![owner("OnePasswordItem", "u1")]);
    let live = written_by_us(&t, &resolution(4));
    for seen in [Seen::Listed, Seen::Fetched] {
        assert_eq!(
            plan(Some(&live), &t, &resolution(4), true, seen).unwrap(),
            Plan::KeepIgnored {
                move_annotations: false
            }
        );
        assert_eq!(
            plan(Some(&live), &t, &resolution(6), true, seen).unwrap(),
            Plan::KeepIgnored {
                move_annotations: true
            }
        );
    }
}

#[test]
fn a_write_is_a_creation_an_update_of_the_data_or_of_its_metadata_only() {
    let t = target(vec![owner("OnePasswordItem", "u1")]);
    let r = resolution(4);
    let desired = {
        let mut s = written_by_us(&t, &r);
        s.metadata.managed_fields = None;
        s
    };
    assert_eq!(effect_of_write(None, &desired), (Change::Created, vec![]));
    let live = written_by_us(&t, &r);
    assert_eq!(
        effect_of_write(Some(&live), &desired),
        (Change::MetadataOnly, vec![])
    );
    let mut new_password = desired.clone();
    new_password
        .data
        .as_mut()
        .unwrap()
        .insert("password".into(), ByteString(b"new".to_vec()));
    assert_eq!(
        effect_of_write(Some(&live), &new_password),
        (Change::Updated, vec![])
    );
    // Taken over from the official operator (no digest of ours): its extra key goes.
    let theirs = with_data(&["password", "username"], None);
    assert_eq!(
        effect_of_write(Some(&theirs), &with_data(&["password"], None)),
        (Change::Updated, vec!["username".to_string()])
    );
}

/// The main item at `version`, with other items of `spec.items` at theirs.
fn with_items(version: u64, items: &[(&str, &str, u64)]) -> Held {
    resolution(version).with_extra(
        items
            .iter()
            .map(|(name, item, version)| {
                let held = Held {
                    item_id: (*item).into(),
                    ..resolution(*version)
                };
                (name.to_string(), held)
            })
            .collect(),
    )
}

/// A target with `spec.items` of these names (their paths do not matter to the plan).
fn target_with_items(names: &[&str]) -> SyncTarget {
    let mut t = target(vec![owner("OnePasswordItem", "u1")]);
    t.shape.items = names
        .iter()
        .map(|name| crate::crd::ItemSource {
            name: name.to_string(),
            item_path: format!("vaults/v/items/{name}"),
            key_prefix: None,
        })
        .collect();
    t
}

#[test]
fn the_items_annotation_names_each_other_item_by_ids_and_version_and_is_absent_without_them() {
    assert_eq!(resolution(4).items_annotation(), None);
    let held = with_items(4, &[("redis", "r", 2), ("db", "d", 7)]);
    assert_eq!(
        held.items_annotation().as_deref(),
        Some(
            "db=vaults/vvvvvvvvvvvvvvvvvvvvvvvvvv/items/d@7,\
             redis=vaults/vvvvvvvvvvvvvvvvvvvvvvvvvv/items/r@2"
        )
    );
    // A Secret of one item is written with exactly the annotations it always had.
    let t = target(vec![owner("OnePasswordItem", "u1")]);
    let live = written_by_us(&t, &resolution(4));
    assert!(!live.annotations().contains_key(ITEMS_ANNOTATION));
}

#[test]
fn a_secret_of_several_items_is_up_to_date_only_while_every_item_has_the_version_it_holds() {
    let t = target_with_items(&["db", "redis"]);
    let held = with_items(4, &[("db", "d", 7), ("redis", "r", 2)]);
    let live = written_by_us(&t, &held);
    let plan_for = |held: &Held| plan(Some(&live), &t, held, false, Seen::Listed).unwrap();
    assert_eq!(plan_for(&held), Plan::UpToDate);
    let moved = "another item of spec.items is new or has a new version";
    for changed in [
        with_items(4, &[("db", "d", 8), ("redis", "r", 2)]),
        with_items(4, &[("db", "d", 7), ("redis", "r", 3)]),
        // A title that now resolves to another item.
        with_items(4, &[("db", "e", 7), ("redis", "r", 2)]),
        // An item added to, or taken from, spec.items.
        with_items(4, &[("db", "d", 7)]),
        with_items(4, &[("db", "d", 7), ("redis", "r", 2), ("s3", "s", 1)]),
    ] {
        assert_eq!(plan_for(&changed), Plan::Fetch { why: moved });
    }
    assert_eq!(
        plan_for(&with_items(5, &[("db", "d", 7), ("redis", "r", 2)])),
        Plan::Fetch {
            why: "the item has a new version"
        }
    );
}

#[test]
fn an_older_version_of_another_item_is_refused_naming_it() {
    let t = target_with_items(&["db"]);
    let live = written_by_us(&t, &with_items(4, &[("db", "d", 7)]));
    let err = refuse_older(&live, &t, &with_items(4, &[("db", "d", 6)])).unwrap_err();
    assert_eq!(err.reason(), "StaleItemVersion");
    assert!(err.is_transient());
    assert!(
        err.to_string().starts_with("item \"db\" of spec.items: "),
        "{err}"
    );
    assert!(refuse_older(&live, &t, &with_items(4, &[("db", "d", 8)])).is_ok());
    // Another item under that name: its versions are its own.
    assert!(refuse_older(&live, &t, &with_items(4, &[("db", "e", 1)])).is_ok());
}

#[test]
fn a_new_version_of_another_item_is_a_change_not_a_rewrite_of_the_same_write() {
    let t = target_with_items(&["db"]);
    let rate = crate::controller::write_rate::WriteRate::default();
    let now = std::time::Instant::now();
    for version in 1..=8 {
        let held = with_items(4, &[("db", "d", version)]);
        let what = super::apply::written_as(&t, &held);
        assert!(rate.admit("ns", "db", &what, 4, now).is_ok());
        rate.record("ns", "db", &what, 4, now);
    }
}

#[test]
fn an_ignored_main_items_secret_keeps_what_it_says_of_the_other_items() {
    let t = target_with_items(&["db"]);
    let live = written_by_us(&t, &with_items(4, &[("db", "d", 7)]));
    let moved = annotations_moved(&live, &t, &resolution(5));
    assert_eq!(
        moved.annotations().get(ITEMS_ANNOTATION),
        live.annotations().get(ITEMS_ANNOTATION)
    );
    assert_eq!(moved.annotations()[ITEM_VERSION_ANNOTATION], "5");
}
