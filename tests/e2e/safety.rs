//! Never delete, overwrite, roll back, loop, or roll a workload without a data change: a Secret
//! we do not own by owner reference, a Secret another controller writes too, a Secret made again
//! after a deletion, a Connect replica that lags, and an item too large to store.

use std::time::{Duration, Instant};

use connect_sim::{Fault, ItemSpec, Seed, VaultSpec};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use onepassword_secrets_operator::vocabulary::{DIGEST_ANNOTATION, ITEM_VERSION_ANNOTATION};

use super::{
    QUIET, b64, deployment_using_db, item_manifest, login, replica_set_count, sync_item,
    wait_password, wait_replica_sets,
};
use crate::support::{
    POLL, TestEnv, annotation, data_of, has_data, has_item_version, map, secret_value,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_with_our_label_but_no_owner_reference_is_never_written_nor_deleted() {
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("db", &secret_value("db"))));
    let mut env = TestEnv::new("forged-label", seed).await;
    // Anyone who may create a Secret can set our label.
    env.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: db\n  labels:\n    \
         operator.1password.io/managed-by: onepassword-secrets-operator\n\
         data:\n  password: {}\n",
        b64("mine")
    ))
    .await
    .unwrap();
    let foreign = env.secret("db").await.unwrap();
    env.start_operator(env.operator_config());
    env.apply(&item_manifest("db", "vaults/E2E/items/db"))
        .await
        .unwrap();
    env.wait_ready("db", "SecretConflict").await;
    tokio::time::sleep(2 * POLL).await;
    let kept = env.secret("db").await.unwrap();
    assert_eq!(kept.resource_version(), foreign.resource_version());
    assert_eq!(data_of(&kept), map(&[("password", "mine")]));

    // Deleting the item does not take the Secret with it.
    env.kubectl(&["delete", "onepassworditem", "db"])
        .await
        .unwrap();
    tokio::time::sleep(QUIET).await;
    let after = env.secret("db").await.expect("the Secret is still there");
    assert_eq!(after.resource_version(), foreign.resource_version());
    env.finish().await;
}

/// The Secret's resourceVersion and the simulator's item GETs, over `span`.
async fn writes_and_fetches_over(env: &TestEnv, name: &str, span: Duration) -> (bool, u64) {
    let before = env.secret(name).await.unwrap().resource_version();
    let gets = env.sim.count("get_item");
    tokio::time::sleep(span).await;
    let after = env.secret(name).await.unwrap().resource_version();
    (before != after, env.sim.count("get_item") - gets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_token_secret_is_filled_by_the_token_controller_without_a_write_loop() {
    let password = secret_value("sa");
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("sa", &password)));
    let mut env = TestEnv::new("sa-token-loop", seed).await;
    env.start_operator(env.operator_config().with_env("ENABLE_ANNOTATIONS", "true"));
    env.apply(
        "apiVersion: onepassword.com/v1\nkind: OnePasswordItem\nmetadata:\n  name: sa\n  \
         annotations:\n    kubernetes.io/service-account.name: default\n\
         type: kubernetes.io/service-account-token\n\
         spec:\n  itemPath: \"vaults/E2E/items/sa\"\n",
    )
    .await
    .unwrap();
    // kube-controller-manager's token controller adds its keys; ours stay.
    env.wait_secret("sa", "the token controller's keys and ours", |s| {
        let data = data_of(s);
        let theirs = ["token", "ca.crt", "namespace"]
            .iter()
            .all(|k| data.contains_key(*k));
        (theirs && data.get("password") == Some(&password))
            .then_some(())
            .ok_or(format!("keys {:?}", data.keys().collect::<Vec<_>>()))
    })
    .await;
    env.wait_ready("sa", "Synced").await;
    tokio::time::sleep(2 * POLL).await;
    // Quiet: no write of the Secret and no fetch of the item for 10 s (it was about 30 writes a
    // second and 117 item GETs in 10 s when we removed the keys and the token controller added
    // them back).
    let (written, fetched) = writes_and_fetches_over(&env, "sa", Duration::from_secs(10)).await;
    assert!(!written, "the Secret was written again");
    assert_eq!(fetched, 0, "item GETs at Connect");
    env.wait_ready("sa", "Synced").await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_another_writer_keeps_changing_is_left_alone_for_a_while_and_reported() {
    let password = secret_value("db");
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("db", &password)));
    let mut env = TestEnv::new("write-fight", seed).await;
    env.start_operator(env.operator_config());
    sync_item(&env, "db", "vaults/E2E/items/db").await;
    let gets = env.sim.count("get_item");

    // Another controller sets the password to its own value, again and again.
    let api: Api<Secret> = Api::namespaced(env.client.clone(), &env.ns);
    let fighter = {
        let api = api.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let mut writes = 0u32;
            while started.elapsed() < Duration::from_secs(15) {
                let patch =
                    serde_json::json!({"data": {"password": b64(&format!("theirs-{writes}"))}});
                let params = PatchParams::default();
                if api
                    .patch("db", &params, &Patch::Merge(&patch))
                    .await
                    .is_ok()
                {
                    writes += 1;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            writes
        })
    };
    env.wait_ready("db", "WriteConflict").await;
    let fighter_writes = fighter.await.unwrap();
    assert!(
        fighter_writes > 20,
        "{fighter_writes} writes by the other writer"
    );
    // A few repairs, then nothing: not one item fetch per write of the other writer.
    let fetched = env.sim.count("get_item") - gets;
    assert!(
        fetched <= 6,
        "{fetched} item GETs for {fighter_writes} writes"
    );
    let (written, fetched) = writes_and_fetches_over(&env, "db", 2 * POLL).await;
    assert!(
        !written && fetched == 0,
        "written: {written}, fetched {fetched}"
    );

    // Once the other writer stopped and the pause is over, the value is put back.
    env.wait_ready("db", "Synced").await;
    env.wait_secret("db", "the password put back", |s| {
        (data_of(s).get("password") == Some(&password))
            .then_some(())
            .ok_or_else(|| "not the item's password".into())
    })
    .await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_deleted_by_hand_comes_back_with_the_same_digest_and_rolls_nothing() {
    let (env, deployment) = deployment_using_db("recreated-same-digest").await;
    let original = env.secret("db").await.unwrap();
    let digest = annotation(&original, DIGEST_ANNOTATION)
        .expect("a digest")
        .to_string();
    env.kubectl(&["delete", "secret", "db"]).await.unwrap();
    let again = env
        .wait_secret("db", "made again", |s| {
            (s.uid() != original.uid())
                .then_some(())
                .ok_or_else(|| "still the old Secret".into())
        })
        .await;
    assert_eq!(annotation(&again, DIGEST_ANNOTATION), Some(digest.as_str()));
    assert_eq!(data_of(&again), data_of(&original));

    tokio::time::sleep(QUIET).await;
    assert_eq!(replica_set_count(&env, &deployment).await, 1);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_connect_replica_never_rolls_a_secret_back() {
    let (env, deployment) = deployment_using_db("lagging-replica").await;
    let v2 = secret_value("db-v2");
    env.sim.set_field("E2E", "db", "password", &v2).unwrap();
    wait_password(&env, "db", &v2).await;
    wait_replica_sets(&env, &deployment, 2).await;
    let holds_v2 = |s: &Secret| {
        has_data(&map(&[("username", "app"), ("password", &v2)]))(s)?;
        has_item_version("2")(s)
    };

    // The listing comes from a replica one change behind: it says version 1.
    env.sim.inject(Fault::lagging());
    env.sim
        .set_field("E2E", "other", "password", &secret_value("other-v2"))
        .unwrap();
    env.wait_ready("db", "StaleItemVersion").await;
    holds_v2(&env.secret("db").await.unwrap()).unwrap();
    env.sim.clear_faults();
    env.wait_ready("db", "Synced").await;

    // The listing is current but the item GET lags: a repair must not write version 1 either.
    env.sim.inject(Fault::lagging().on("get_item"));
    let patch = format!(r#"{{"data":{{"password":"{}"}}}}"#, b64("edited-by-hand"));
    env.kubectl(&["patch", "secret", "db", "--type=merge", "-p", &patch])
        .await
        .unwrap();
    env.wait_ready("db", "StaleItemVersion").await;
    let now = env.secret("db").await.unwrap();
    assert_eq!(annotation(&now, ITEM_VERSION_ANNOTATION), Some("2"));
    env.sim.clear_faults();
    env.wait_secret("db", "version 2 put back", holds_v2).await;
    env.wait_ready("db", "Synced").await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(replica_set_count(&env, &deployment).await, 2);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_with_thousands_of_long_keys_is_refused_as_too_large_before_sending() {
    let huge = (0..5000).fold(ItemSpec::new("huge"), |item, i| {
        item.field(format!("{i:0>250}"), "v")
    });
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(huge));
    let mut env = TestEnv::new("too-many-keys", seed).await;
    env.start_operator(env.operator_config());
    env.apply(&item_manifest("huge", "vaults/E2E/items/huge"))
        .await
        .unwrap();
    let item = env.wait_ready("huge", "SecretTooLarge").await;
    let message = item.ready_condition().unwrap().message.clone().unwrap();
    assert!(message.contains("5000 keys"), "{message}");
    assert!(env.secret("huge").await.is_none());
    env.finish().await;
}
