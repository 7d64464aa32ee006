//! Sync on demand: each new value of `operator.1password.io/force-sync`, on a OnePasswordItem or
//! on an annotated Deployment, fetches the item from Connect once though its version did not
//! move; the same value again fetches nothing, and the Secret's data (so its digest) stays.

use connect_sim::{Seed, VaultSpec};
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Secret};
use onepassword_secrets_operator::vocabulary::{
    DIGEST_ANNOTATION, FORCE_SYNC_ANNOTATION, FORCE_SYNCED_ANNOTATION,
};

use super::{
    annotated_deployment, deployment_using, login, replica_set_count, sync_item, wait_recorded,
    wait_replica_sets,
};
use crate::support::{POLL, TestEnv, annotation, secret_value};

/// Annotates `kind/name` with `annotations` (`key=value`, overwriting), waits until Secret
/// `secret` records `recorded` as the force-sync value handled, lets 2 poll intervals pass, and
/// returns the item GETs Connect saw meanwhile.
async fn item_gets_after(
    env: &TestEnv,
    kind: &str,
    name: &str,
    annotations: &[&str],
    secret: &str,
    recorded: &str,
) -> u64 {
    let before = env.sim.count("get_item");
    let mut args = vec!["annotate", "--overwrite", kind, name];
    args.extend(annotations);
    env.kubectl(&args).await.unwrap();
    env.wait_secret(secret, &format!("force-synced {recorded:?}"), |s| {
        let have = annotation(s, FORCE_SYNCED_ANNOTATION);
        (have == Some(recorded))
            .then_some(())
            .ok_or(format!("force-synced is {have:?}"))
    })
    .await;
    tokio::time::sleep(2 * POLL).await;
    env.sim.count("get_item") - before
}

fn digest(secret: &Secret) -> Option<String> {
    annotation(secret, DIGEST_ANNOTATION).map(str::to_string)
}

/// Runs the force-sync steps against `kind/name`, whose Secret `secret` is synced: a new
/// value fetches once (and a `ForceSynced` event says so), the same value again (with another change to the object, so it is
/// reconciled) fetches nothing, a new value fetches once more; the data never changes.
async fn force_sync_fetches_once_per_new_value(
    env: &TestEnv,
    kind: &str,
    name: &str,
    secret: &str,
) {
    tokio::time::sleep(2 * POLL).await;
    let data_digest = digest(&env.secret(secret).await.unwrap());
    let ask = |value: &str| format!("{FORCE_SYNC_ANNOTATION}={value}");

    let first = item_gets_after(env, kind, name, &[&ask("1")], secret, "1").await;
    assert_eq!(first, 1, "item GETs for a new force-sync value");
    env.wait_event(kind, name, "Normal", "ForceSynced").await;
    let again = item_gets_after(env, kind, name, &[&ask("1"), "note=touched"], secret, "1").await;
    assert_eq!(again, 0, "item GETs for the same force-sync value");
    let second = item_gets_after(env, kind, name, &[&ask("2")], secret, "2").await;
    assert_eq!(second, 1, "item GETs for another force-sync value");

    let after = env.secret(secret).await.unwrap();
    assert_eq!(digest(&after), data_digest, "the data did not change");
    assert_eq!(
        annotation(&after, FORCE_SYNC_ANNOTATION),
        None,
        "not copied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_sync_on_an_item_fetches_it_once_per_new_value_and_not_again_after_a_restart() {
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("db", &secret_value("db"))));
    let mut env = TestEnv::new("force-sync-item", seed).await;
    let operator = env.start_operator(env.operator_config());
    sync_item(&env, "db", "vaults/E2E/items/db").await;
    // A workload with auto-restart uses the Secret: a fetch that changes no data rolls nothing.
    env.apply(&deployment_using("web", "db", None))
        .await
        .unwrap();
    let web: Deployment = wait_recorded(&env, "web", &["db"]).await;
    wait_replica_sets(&env, &web, 1).await;
    force_sync_fetches_once_per_new_value(&env, "OnePasswordItem", "db", "db").await;
    assert_eq!(replica_set_count(&env, &web).await, 1, "rollouts");

    // What was handled is recorded on the Secret: a new process fetches nothing for it.
    let before = env.sim.count("get_item");
    env.restart_operator(operator);
    tokio::time::sleep(3 * POLL).await;
    env.wait_ready("db", "Synced").await;
    assert_eq!(
        env.sim.count("get_item") - before,
        0,
        "item GETs after a restart"
    );
    assert_eq!(replica_set_count(&env, &web).await, 1, "rollouts");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_sync_on_an_annotated_deployment_fetches_the_item_once_per_new_value() {
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("db", &secret_value("db"))));
    let mut env = TestEnv::new("force-sync-deployment", seed).await;
    env.start_operator(env.operator_config());
    env.apply(&annotated_deployment(
        "web",
        "vaults/E2E/items/db",
        "web-db",
    ))
    .await
    .unwrap();
    env.wait_secret("web-db", "made", |_| Ok(())).await;
    force_sync_fetches_once_per_new_value(&env, "Deployment", "web", "web-db").await;
    env.finish().await;
}
