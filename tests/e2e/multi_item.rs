//! Several items in one Secret (issue 15, `spec.items`): one item's keys merged under a prefix,
//! another picked by `data[].item`, each from its own vault. A change in any of them updates
//! the Secret and rolls an annotated Deployment exactly once; an item that goes missing leaves
//! the Secret as it was and says which one.

use std::collections::BTreeMap;

use connect_sim::{ItemSpec, Seed, VaultSpec};
use k8s_openapi::api::apps::v1::Deployment;
use onepassword_secrets_operator::vocabulary::ITEMS_ANNOTATION;

use super::{
    QUIET, deployment_using, login, replica_set_count, restarted_for, wait_recorded,
    wait_replica_sets,
};
use crate::support::{POLL, TestEnv, annotation, data_of, has_data, map, secret_value};

/// The main item `app` (E2E), the database `db` (Infra) under `db_`, and the cache's password
/// (E2E) picked by `data[].item`.
fn manifest(db_path: &str) -> String {
    format!(
        r#"apiVersion: onepassword.com/v1
kind: OnePasswordItem
metadata:
  name: app-config
  annotations: {{operator.1password.io/auto-restart: "true"}}
spec:
  itemPath: "vaults/E2E/items/app"
  items:
  - {{name: db, itemPath: "{db_path}", keyPrefix: db_}}
  - {{name: cache, itemPath: "vaults/E2E/items/cache"}}
  data:
  - {{key: APP_PASSWORD, field: password}}
  - {{key: CACHE_PASSWORD, item: cache, field: password}}
"#
    )
}

/// The passwords of the three items.
#[derive(Clone)]
struct Passwords {
    app: String,
    cache: String,
    db: String,
}

impl Passwords {
    fn new() -> Self {
        Passwords {
            app: secret_value("app-v1"),
            cache: secret_value("cache-v1"),
            db: secret_value("db-v1"),
        }
    }

    /// What the Secret holds with these passwords.
    fn expected(&self) -> BTreeMap<String, String> {
        map(&[
            ("APP_PASSWORD", &self.app),
            ("CACHE_PASSWORD", &self.cache),
            ("db_host", "db.internal"),
            ("db_password", &self.db),
        ])
    }
}

fn database(title: &str, password: &str) -> ItemSpec {
    ItemSpec::new(title)
        .category("DATABASE")
        .field("host", "db.internal")
        .password(password)
}

fn seed(p: &Passwords) -> Seed {
    Seed::new()
        .vault(
            VaultSpec::new("E2E")
                .item(login("app", &p.app))
                .item(login("cache", &p.cache)),
        )
        .vault(VaultSpec::new("Infra").item(database("db", &p.db)))
}

/// The Secret `app-config` synced, and Deployment `web` using it with its baseline recorded and
/// one ReplicaSet.
async fn synced_with_deployment(name: &str, p: &Passwords) -> (TestEnv, Deployment) {
    let mut env = TestEnv::new(name, seed(p)).await;
    env.start_operator(env.operator_config());
    env.apply(&manifest("vaults/Infra/items/db")).await.unwrap();
    env.wait_ready("app-config", "Synced").await;
    let want = p.expected();
    let secret = env
        .wait_secret("app-config", "the keys of three items", has_data(&want))
        .await;
    let keys: Vec<String> = data_of(&secret).into_keys().collect();
    assert_eq!(
        keys,
        ["APP_PASSWORD", "CACHE_PASSWORD", "db_host", "db_password"],
        "only the picked keys and the prefixed ones"
    );
    env.apply(&deployment_using("web", "app-config", None))
        .await
        .unwrap();
    let deployment: Deployment = wait_recorded(&env, "web", &["app-config"]).await;
    wait_replica_sets(&env, &deployment, 1).await;
    assert_eq!(restarted_for(&deployment), None);
    (env, deployment)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_in_any_item_of_a_secret_updates_it_and_rolls_its_deployment_once() {
    let mut p = Passwords::new();
    let (env, deployment) = synced_with_deployment("multi-item", &p).await;
    let infra = env.sim.vault("Infra").unwrap().id;
    let db = env.sim.item("Infra", "db").unwrap();
    let secret = env.secret("app-config").await.unwrap();
    let items = annotation(&secret, ITEMS_ANNOTATION).unwrap_or_default();
    assert!(
        items.starts_with("cache=vaults/")
            && items.contains(&format!(",db=vaults/{infra}/items/{}@1", db.id)),
        "{items}"
    );

    // Idle: one vault list per check, no listing and no item fetched again.
    env.sim.reset_counts();
    tokio::time::sleep(3 * POLL).await;
    assert_eq!(env.sim.count("get_item"), 0, "{:?}", env.sim.counts());
    assert_eq!(env.sim.count("list_items"), 0, "{:?}", env.sim.counts());
    assert!(env.sim.count("list_vaults") >= 2, "{:?}", env.sim.counts());

    // The prefixed item, in the other vault.
    p.db = secret_value("db-v2");
    env.sim.set_field("Infra", "db", "password", &p.db).unwrap();
    let want = p.expected();
    env.wait_secret("app-config", "the new db password", has_data(&want))
        .await;
    wait_replica_sets(&env, &deployment, 2).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(replica_set_count(&env, &deployment).await, 2, "one rollout");

    // The item picked by data[].item.
    p.cache = secret_value("cache-v2");
    env.sim
        .set_field("E2E", "cache", "password", &p.cache)
        .unwrap();
    let want = p.expected();
    let secret = env
        .wait_secret("app-config", "the new cache password", has_data(&want))
        .await;
    wait_replica_sets(&env, &deployment, 3).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(replica_set_count(&env, &deployment).await, 3, "one rollout");
    let items = annotation(&secret, ITEMS_ANNOTATION).unwrap_or_default();
    assert!(items.contains("@2,db=") && items.ends_with("@2"), "{items}");
    let item = env.item("app-config").await.unwrap();
    let message = item.ready_condition().unwrap().message.clone().unwrap();
    assert!(
        message.contains(", and as \"db\" version 2 of item "),
        "{message}"
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_second_item_leaves_the_secret_as_it_was_and_names_the_item() {
    let p = Passwords::new();
    let (env, deployment) = synced_with_deployment("multi-item-missing", &p).await;
    let before = env.secret("app-config").await.unwrap();

    env.apply(&manifest("vaults/Infra/items/no-such-db"))
        .await
        .unwrap();
    let item = env.wait_ready("app-config", "ItemNotFound").await;
    let message = item.ready_condition().unwrap().message.clone().unwrap();
    assert!(
        message.starts_with("item \"db\" of spec.items: "),
        "{message}"
    );
    for value in [&p.app, &p.cache, &p.db] {
        assert!(!message.contains(value.as_str()), "{message}");
    }
    tokio::time::sleep(QUIET).await;
    let after = env.secret("app-config").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        before.metadata.resource_version
    );
    assert_eq!(replica_set_count(&env, &deployment).await, 1);

    // It appears: the Secret is whole again, from the new path (same data: no rollout).
    env.sim
        .put_item("Infra", database("no-such-db", &p.db))
        .unwrap();
    env.wait_ready("app-config", "Synced").await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(replica_set_count(&env, &deployment).await, 1);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_several_items_sample_syncs_against_the_demo_seed() {
    let root = env!("CARGO_MANIFEST_DIR");
    let seed = Seed::from_file(format!("{root}/tests/fixtures/sim/demo.yaml")).unwrap();
    let mut env = TestEnv::new("multi-item-sample", seed).await;
    env.start_operator(env.operator_config());
    let sample = std::fs::read_to_string(format!("{root}/config/samples/shaping.yaml")).unwrap();
    env.apply(&sample).await.unwrap();
    env.wait_ready("app-env", "Synced").await;
    let secret = env
        .wait_secret("app-env", "the sample's keys", |s| {
            let keys: Vec<String> = data_of(s).into_keys().collect();
            let want = [
                "DB_PASSWORD",
                "PAYMENTS_API_KEY",
                "tls_ca.crt",
                "tls_id_ed25519.pub",
            ];
            (keys == want).then_some(()).ok_or(format!("keys {keys:?}"))
        })
        .await;
    let data = data_of(&secret);
    assert_eq!(data["DB_PASSWORD"], "demo-db-password");
    assert_eq!(data["PAYMENTS_API_KEY"], "demo-api-key-0123456789");
    assert!(data["tls_ca.crt"].starts_with("-----BEGIN CERTIFICATE-----\n"));
    env.finish().await;
}
