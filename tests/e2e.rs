//! End-to-end tests: the operator binary, run as a process against a real Kubernetes control
//! plane (etcd, kube-apiserver, kube-controller-manager) and a Connect simulator, checked the way
//! a user would check it with kubectl. Run them with `bash tests/run`, which starts the control
//! plane and sets `OPSYNC_E2E_STATE_DIR`; without it they fail.

#[path = "e2e/argo.rs"]
mod argo;
#[path = "e2e/force_sync.rs"]
mod force_sync;
#[path = "e2e/governance.rs"]
mod governance;
#[path = "e2e/multi_item.rs"]
mod multi_item;
#[path = "e2e/propagation.rs"]
mod propagation;
#[path = "e2e/safety.rs"]
mod safety;
#[path = "e2e/shaping.rs"]
mod shaping;
#[path = "e2e/support.rs"]
mod support;

#[path = "e2e/migration.rs"]
mod migration;
#[path = "e2e/official.rs"]
mod official;

use std::time::{Duration, Instant};

use connect_sim::{Fault, ItemSpec, Seed, Simulator, TokenAccess, VaultSpec};
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, StatefulSet},
    coordination::v1::Lease,
};
use kube::{Api, ResourceExt};
use onepassword_secrets_operator::{
    restart::{
        controller::{Workload, live_restarted_for},
        rule::{self as restart, DigestMap},
    },
    vocabulary::{
        DIGEST_ANNOTATION, ITEM_PATH_ANNOTATION, ITEM_VERSION_ANNOTATION, SECRET_DIGESTS_ANNOTATION,
    },
};
use opsync_test_support::b64;
use support::{
    POLL, StallingProxy, TestEnv, annotation, api_server_addr, data_of, has_data, has_item_version,
    map, remember_secret, secret_value, wait_for,
};

/// Long enough for several poll cycles and the restart debounce: what did not happen by then
/// is not going to.
const QUIET: Duration = Duration::from_secs(3 * POLL.as_secs() + 3);

/// A OnePasswordItem as a user writes it.
fn item_manifest(name: &str, path: &str) -> String {
    format!(
        "apiVersion: onepassword.com/v1\n\
         kind: OnePasswordItem\n\
         metadata:\n  name: {name}\n\
         spec:\n  itemPath: \"{path}\"\n"
    )
}

/// A login item with a password unique to the test.
/// Applies OnePasswordItem `name` for `path` and waits until it is `Synced`.
async fn sync_item(env: &TestEnv, name: &str, path: &str) {
    env.apply(&item_manifest(name, path)).await.unwrap();
    env.wait_ready(name, "Synced").await;
}

fn login(title: &str, password: &str) -> ItemSpec {
    ItemSpec::new(title).username("app").password(password)
}

/// The pod-template annotation that rolls a workload, if set.
fn restarted_for<K: Workload>(workload: &K) -> Option<String> {
    live_restarted_for(workload)
}

/// Waits until the workload has recorded (annotation `secret-digests`) these Secrets: the
/// baseline against which later changes count.
async fn wait_recorded<K: Workload>(env: &TestEnv, name: &str, secrets: &[&str]) -> K {
    wait_for(
        &format!("{} {name} to record the Secrets {secrets:?}", K::KIND),
        support::TIMEOUT,
        async || {
            let workload: K = env.get(name).await;
            let record = annotation(&workload, SECRET_DIGESTS_ANNOTATION).unwrap_or_default();
            if secrets
                .iter()
                .all(|s| record.split(',').any(|e| e.starts_with(&format!("{s}="))))
            {
                Ok(workload)
            } else {
                Err(format!("recorded: {record:?}"))
            }
        },
    )
    .await
}

/// Waits until the Deployment has exactly `count` ReplicaSets: one per rollout.
async fn wait_replica_sets(env: &TestEnv, deployment: &Deployment, count: usize) {
    let uid = deployment.uid().expect("a uid");
    wait_for(
        &format!(
            "{count} ReplicaSet(s) of Deployment {}",
            deployment.name_any()
        ),
        support::TIMEOUT,
        async || {
            let n = env.replica_sets_of(&uid).await.len();
            (n == count)
                .then_some(())
                .ok_or(format!("{n} ReplicaSet(s)"))
        },
    )
    .await
}

fn annotated_deployment(name: &str, path: &str, secret: &str) -> String {
    deployment_asking(name, path, secret, false)
}

/// A Deployment that asks for Secret `secret` from item `path` by annotations on its metadata
/// or, with `on_template`, on its pod template.
fn deployment_asking(name: &str, path: &str, secret: &str, on_template: bool) -> String {
    let ask = format!(
        r#"annotations: {{operator.1password.io/item-path: "{path}", operator.1password.io/item-name: "{secret}"}}"#
    );
    let (on_metadata, on_template) = if on_template {
        (String::new(), format!(", {ask}"))
    } else {
        (format!("\n  {ask}"), String::new())
    };
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}{on_metadata}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}{on_template}}}
    spec:
      containers:
      - name: app
        image: registry.invalid/app:1
"#
    )
}

/// A Deployment with `auto-restart: "true"` that uses Secret `env_from` through `envFrom` and,
/// if given, Secret `volume` through a volume.
fn deployment_using(name: &str, env_from: &str, volume: Option<&str>) -> String {
    let volume = volume
        .map(|v| {
            format!(
                "        volumeMounts: [{{name: creds, mountPath: /creds}}]\n      \
                 volumes: [{{name: creds, secret: {{secretName: {v}}}}}]\n"
            )
        })
        .unwrap_or_default();
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  annotations:
    operator.1password.io/auto-restart: "true"
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - name: app
        image: registry.invalid/app:1
        envFrom: [{{secretRef: {{name: {env_from}}}}}]
{volume}"#
    )
}

/// Waits until the item's Secret holds `password`.
async fn wait_password(env: &TestEnv, secret: &str, password: &str) {
    env.wait_secret(secret, "the new password", |s| {
        (data_of(s).get("password").map(String::as_str) == Some(password))
            .then_some(())
            .ok_or_else(|| "not the expected password".into())
    })
    .await;
}

/// Waits until Secret `secret` holds exactly the login item `username: app`, `password`.
async fn wait_login_secret(env: &TestEnv, secret: &str, what: &str, password: &str) {
    let want = map(&[("username", "app"), ("password", password)]);
    env.wait_secret(secret, what, has_data(&want)).await;
}

/// The number of ReplicaSets of the Deployment now.
async fn replica_set_count(env: &TestEnv, deployment: &Deployment) -> usize {
    env.replica_sets_of(&deployment.uid().unwrap()).await.len()
}

/// A Deployment `web` that uses Secret `db` (auto-restart on), its baseline recorded and its
/// first ReplicaSet made, with OnePasswordItems `db` and `other`; resyncs every 3 s, none of
/// which may roll it.
async fn deployment_using_db(name: &str) -> (TestEnv, Deployment) {
    let seed = Seed::new().vault(
        VaultSpec::new("E2E")
            .item(login("db", &secret_value("db-v1")))
            .item(login("other", &secret_value("other-v1"))),
    );
    let mut env = TestEnv::new(name, seed).await;
    let config = env.operator_config().with_env("RESYNC_INTERVAL", "3");
    env.start_operator(config);
    env.apply(&format!(
        "{}---\n{}",
        item_manifest("db", "vaults/E2E/items/db"),
        item_manifest("other", "vaults/E2E/items/other")
    ))
    .await
    .unwrap();
    env.wait_ready("db", "Synced").await;
    env.wait_ready("other", "Synced").await;
    env.apply(&deployment_using("web", "db", None))
        .await
        .unwrap();
    let deployment: Deployment = wait_recorded(&env, "web", &["db"]).await;
    wait_replica_sets(&env, &deployment, 1).await;
    assert_eq!(restarted_for(&deployment), None);
    (env, deployment)
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_official_item_manifest_yields_a_ready_secret_with_the_items_fields() {
    let password = secret_value("db-password");
    let docker = format!(
        r#"{{"auths":{{"registry.example":{{"auth":"{}"}}}}}}"#,
        b64(&format!("robot:{}", secret_value("registry")))
    );
    remember_secret(&docker);
    let key = secret_value("tls-key");
    let seed = Seed::new().vault(
        VaultSpec::new("E2E")
            .item(
                login("db", &password)
                    .field_in("connection", "host", "db.internal")
                    .field_in("connection", "port", "5432")
                    .url("website", "https://db.example", true),
            )
            .item(
                ItemSpec::new("registry")
                    .category("SECURE_NOTE")
                    .concealed(".dockerconfigjson", &docker),
            )
            .item(
                ItemSpec::new("tls")
                    .category("DOCUMENT")
                    .file("tls.key", &key)
                    .file("ca.crt", "-----BEGIN CERTIFICATE-----\n"),
            ),
    );
    let mut env = TestEnv::new("official-manifest", seed).await;
    let vault = env.sim.vault("E2E").unwrap().id;
    let db = env.sim.item("E2E", "db").unwrap();
    let registry = env.sim.item("E2E", "registry").unwrap();
    env.start_operator(env.operator_config());

    // As in the official operator's README: titles, or ids, and a top-level `type`.
    let manifests = format!(
        "{}---\n{}---\n{}---\n\
         apiVersion: onepassword.com/v1\n\
         kind: OnePasswordItem\n\
         type: kubernetes.io/dockerconfigjson\n\
         metadata:\n  name: registry-pull\n\
         spec:\n  itemPath: \"vaults/E2E/items/registry\"\n",
        item_manifest("db-credentials", "vaults/E2E/items/db"),
        item_manifest(
            "registry-opaque",
            &format!("vaults/{vault}/items/{}", registry.id)
        ),
        item_manifest("tls", "vaults/E2E/items/tls"),
    );
    env.apply(&manifests).await.unwrap();

    let item = env.wait_ready("db-credentials", "Synced").await;
    let want = map(&[
        ("username", "app"),
        ("password", &password),
        ("host", "db.internal"),
        ("port", "5432"),
        ("website", "https://db.example"),
    ]);
    let secret = env
        .wait_secret("db-credentials", "the item's fields", has_data(&want))
        .await;
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    assert_eq!(
        annotation(&secret, ITEM_PATH_ANNOTATION),
        Some(format!("vaults/{vault}/items/{}", db.id).as_str())
    );
    assert_eq!(annotation(&secret, ITEM_VERSION_ANNOTATION), Some("1"));
    let owners = secret.owner_references();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(owners[0].api_version, "onepassword.com/v1");
    assert_eq!(owners[0].kind, "OnePasswordItem");
    assert_eq!(owners[0].name, "db-credentials");
    assert_eq!(Some(&owners[0].uid), item.metadata.uid.as_ref());
    let status = item.status.as_ref().unwrap();
    assert_eq!(status.vault_id.as_deref(), Some(vault.as_str()));
    assert_eq!(status.item_id.as_deref(), Some(db.id.as_str()));
    assert_eq!(status.item_version, Some(1));
    assert_eq!(item.ready_condition().unwrap().observed_generation, Some(1));

    env.wait_ready("registry-pull", "Synced").await;
    env.wait_ready("registry-opaque", "Synced").await;
    let docker_data = map(&[(".dockerconfigjson", &docker)]);
    let pull = env
        .wait_secret("registry-pull", "the docker config", has_data(&docker_data))
        .await;
    assert_eq!(
        pull.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );
    let opaque = env
        .wait_secret(
            "registry-opaque",
            "the docker config",
            has_data(&docker_data),
        )
        .await;
    assert_eq!(opaque.type_.as_deref(), Some("Opaque"));

    // Files are keys too, and a file changed in 1Password reaches the Secret.
    env.wait_ready("tls", "Synced").await;
    let mut files = map(&[
        ("tls.key", &key),
        ("ca.crt", "-----BEGIN CERTIFICATE-----\n"),
    ]);
    env.wait_secret("tls", "the item's files", has_data(&files))
        .await;
    let new_key = secret_value("tls-key-2");
    env.sim.set_file("E2E", "tls", "tls.key", &new_key).unwrap();
    files.insert("tls.key".into(), new_key);
    env.wait_secret("tls", "the new file", has_data(&files))
        .await;

    // The printer columns, as `kubectl get opi` shows them.
    let table = env.kubectl(&["get", "opi"]).await.unwrap();
    let rows: Vec<Vec<&str>> = table
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows[0], ["NAME", "READY", "REASON", "AGE"], "{table}");
    for name in ["db-credentials", "registry-opaque", "registry-pull", "tls"] {
        let row = rows.iter().find(|r| r[0] == name).expect(&table);
        assert_eq!(row[1..3], ["True", "Synced"], "{table}");
    }
    let wide = env.kubectl(&["get", "opi", "-o", "wide"]).await.unwrap();
    assert!(
        wide.contains("PATH") && wide.contains("vaults/E2E/items/db"),
        "{wide}"
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_change_reaches_its_secret_within_about_one_poll_interval() {
    let first = secret_value("first");
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("db", &first)));
    let mut env = TestEnv::new("item-change", seed).await;
    env.start_operator(env.operator_config());
    sync_item(&env, "db", "vaults/E2E/items/db").await;

    // Idle polls look at the listings only: no item is fetched again.
    env.sim.reset_counts();
    tokio::time::sleep(3 * POLL).await;
    assert_eq!(env.sim.count("get_item"), 0, "{:?}", env.sim.counts());
    assert!(env.sim.count("list_vaults") >= 2, "{:?}", env.sim.counts());

    let second = secret_value("second");
    env.sim.set_field("E2E", "db", "password", &second).unwrap();
    let changed = Instant::now();
    let secret = env
        .wait_secret("db", "the new password", |s| {
            (data_of(s).get("password") == Some(&second))
                .then_some(())
                .ok_or_else(|| "still the old password".into())
        })
        .await;
    let lag = changed.elapsed();
    println!("the change reached the Secret in {lag:?}");
    assert!(
        lag <= 2 * POLL + Duration::from_secs(2),
        "the change took {lag:?} with a poll interval of {POLL:?}"
    );
    assert_eq!(annotation(&secret, ITEM_VERSION_ANNOTATION), Some("2"));
    wait_for("status.itemVersion 2", support::TIMEOUT, async || {
        let item = env.item("db").await.unwrap();
        let version = item.status.and_then(|s| s.item_version);
        (version == Some(2))
            .then_some(())
            .ok_or(format!("itemVersion {version:?}"))
    })
    .await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_edited_or_deleted_by_hand_is_repaired_and_goes_with_its_item() {
    let password = secret_value("db-password");
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("db", &password)));
    let mut env = TestEnv::new("repair-and-gc", seed).await;
    env.start_operator(env.operator_config());
    sync_item(&env, "db", "vaults/E2E/items/db").await;
    let want = map(&[("username", "app"), ("password", &password)]);
    let original = env.wait_secret("db", "the item", has_data(&want)).await;

    // A value edited by hand is put back.
    let patch = format!(r#"{{"data":{{"password":"{}"}}}}"#, b64("edited-by-hand"));
    env.kubectl(&["patch", "secret", "db", "--type=merge", "-p", &patch])
        .await
        .unwrap();
    env.wait_secret("db", "the password put back", has_data(&want))
        .await;

    // A key added by hand is not ours: it stays (another writer's keys are never fought over),
    // and ours are kept as the item says.
    let patch = format!(r#"{{"data":{{"added":"{}"}}}}"#, b64("by hand"));
    env.kubectl(&["patch", "secret", "db", "--type=merge", "-p", &patch])
        .await
        .unwrap();
    let mut with_added = want.clone();
    with_added.insert("added".into(), "by hand".into());
    env.wait_secret("db", "the added key kept", has_data(&with_added))
        .await;
    tokio::time::sleep(2 * POLL).await;
    env.wait_secret("db", "the added key still there", has_data(&with_added))
        .await;

    // A Secret deleted by hand comes back.
    env.kubectl(&["delete", "secret", "db"]).await.unwrap();
    let again = env
        .wait_secret("db", "a new Secret with the item's data", |s| {
            if s.uid() == original.uid() {
                return Err("still the old Secret".into());
            }
            has_data(&want)(s)
        })
        .await;
    assert_eq!(again.owner_references()[0].kind, "OnePasswordItem");

    // An item deleted and at once created again ends with a Secret owned by the new one: the
    // garbage collector removes the old item's Secret (the new item does not adopt it: no
    // owner reference to the new uid), then the new item makes its own.
    env.kubectl(&["delete", "onepassworditem", "db", "--wait=false"])
        .await
        .unwrap();
    env.apply(&item_manifest("db", "vaults/E2E/items/db"))
        .await
        .unwrap();
    let recreated = env.item("db").await.unwrap();
    let owned_by_new = |s: &k8s_openapi::api::core::v1::Secret| {
        has_data(&want)(s)?;
        let owners: Vec<&str> = s
            .owner_references()
            .iter()
            .map(|o| o.uid.as_str())
            .collect();
        (owners == [recreated.uid().unwrap().as_str()])
            .then_some(())
            .ok_or(format!("owners {owners:?}"))
    };
    wait_for(
        "Secret db: owned by the new item",
        support::GC_TIMEOUT,
        async || {
            let s = env.secret("db").await.ok_or("no such Secret")?;
            owned_by_new(&s)
        },
    )
    .await;
    env.wait_ready("db", "Synced").await;
    tokio::time::sleep(2 * POLL).await;
    env.wait_secret("db", "still owned by the new item", owned_by_new)
        .await;

    // Deleting the item garbage-collects its Secret.
    env.kubectl(&["delete", "onepassworditem", "db"])
        .await
        .unwrap();
    env.wait_secret_gone("db").await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_annotated_deployment_gets_its_secret_until_its_annotations_or_itself_go() {
    let password = secret_value("db-password");
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("db", &password)));
    let mut env = TestEnv::new("annotated-deployment", seed).await;
    env.start_operator(env.operator_config());
    let manifest = annotated_deployment("web", "vaults/E2E/items/db", "web-db");
    env.apply(&manifest).await.unwrap();
    let deployment: Deployment = env.get("web").await;

    let want = map(&[("username", "app"), ("password", &password)]);
    let secret = env.wait_secret("web-db", "the item", has_data(&want)).await;
    let owners = secret.owner_references();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert_eq!(
        (owners[0].kind.as_str(), owners[0].name.as_str()),
        ("Deployment", "web")
    );
    assert_eq!(Some(&owners[0].uid), deployment.metadata.uid.as_ref());

    // Reconciles of an unchanged Deployment (its status moves, polls pass) fetch nothing.
    env.sim.reset_counts();
    tokio::time::sleep(3 * POLL).await;
    assert_eq!(env.sim.count("get_item"), 0, "{:?}", env.sim.counts());

    // Another item-name: the Secret of the new name replaces the old one.
    env.kubectl(&[
        "annotate",
        "deployment",
        "web",
        "--overwrite",
        "operator.1password.io/item-name=web-db-renamed",
    ])
    .await
    .unwrap();
    env.wait_secret("web-db-renamed", "the item", has_data(&want))
        .await;
    env.wait_secret_gone("web-db").await;
    env.apply(&manifest).await.unwrap();
    env.wait_secret("web-db", "the item", has_data(&want)).await;
    env.wait_secret_gone("web-db-renamed").await;

    // Without the annotations, the Secret goes.
    env.kubectl(&[
        "annotate",
        "deployment",
        "web",
        "operator.1password.io/item-path-",
        "operator.1password.io/item-name-",
    ])
    .await
    .unwrap();
    env.wait_secret_gone("web-db").await;

    // Annotated again, it comes back; deleting the Deployment garbage-collects it.
    env.apply(&manifest).await.unwrap();
    env.wait_secret("web-db", "the item again", has_data(&want))
        .await;
    env.kubectl(&["delete", "deployment", "web"]).await.unwrap();
    env.wait_secret_gone("web-db").await;

    // The annotations may sit on the pod template instead, as the official operator reads them.
    let on_template = deployment_asking("api", "vaults/E2E/items/db", "api-db", true);
    env.apply(&on_template).await.unwrap();
    env.wait_secret(
        "api-db",
        "made for the pod template's annotations",
        has_data(&want),
    )
    .await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_asked_for_on_the_pod_template_is_kept_whatever_else_the_deployment_is_annotated_with()
 {
    let password = secret_value("db-password");
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("db", &password)));
    let mut env = TestEnv::new("template-request", seed).await;
    env.start_operator(env.operator_config());
    env.apply(&deployment_asking(
        "web",
        "vaults/E2E/items/db",
        "web-db",
        true,
    ))
    .await
    .unwrap();
    let want = map(&[("username", "app"), ("password", &password)]);
    let made = env.wait_secret("web-db", "the item", has_data(&want)).await;
    let kept = |what: &'static str| {
        let uid = made.uid();
        let env = &env;
        async move {
            tokio::time::sleep(QUIET).await;
            let secret = env.secret("web-db").await;
            assert_eq!(
                secret.as_ref().and_then(|s| s.uid()),
                uid,
                "the Secret did not stay as it was after {what}"
            );
        }
    };

    // The documented auto-restart annotation on the metadata once deleted the Secret at once.
    env.kubectl(&[
        "annotate",
        "deployment",
        "web",
        "operator.1password.io/auto-restart=true",
    ])
    .await
    .unwrap();
    kept("auto-restart on the metadata").await;

    // Half a pair on the metadata is unclear: said in an event, and nothing is deleted.
    env.kubectl(&[
        "annotate",
        "deployment",
        "web",
        "operator.1password.io/item-name=web-db",
    ])
    .await
    .unwrap();
    env.wait_event("Deployment", "web", "Warning", "Unsupported")
        .await;
    kept("half a pair on the metadata").await;
    env.kubectl(&[
        "annotate",
        "deployment",
        "web",
        "operator.1password.io/item-name-",
    ])
    .await
    .unwrap();
    kept("the half pair removed").await;

    // Asking for nothing at all, clearly, still releases it.
    env.kubectl(&[
        "patch",
        "deployment",
        "web",
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/spec/template/metadata/annotations"}]"#,
    ])
    .await
    .unwrap();
    env.wait_secret_gone("web-db").await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_rolls_exactly_once_per_change_of_a_secret_it_uses() {
    let (env, deployment) = deployment_using_db("rollout-once").await;

    // A change of the Secret it uses: one rollout.
    env.sim
        .set_field("E2E", "db", "password", &secret_value("db-v2"))
        .unwrap();
    wait_replica_sets(&env, &deployment, 2).await;
    let rolled: Deployment = env.get("web").await;
    let first_restart = restarted_for(&rolled).expect("the restarted-for annotation");
    tokio::time::sleep(QUIET).await;
    assert_eq!(replica_set_count(&env, &deployment).await, 2);
    let after: Deployment = env.get("web").await;
    assert_eq!(restarted_for(&after).as_ref(), Some(&first_restart));
    assert_eq!(after.metadata.generation, rolled.metadata.generation);

    // The next change: exactly one more.
    env.sim
        .set_field("E2E", "db", "password", &secret_value("db-v3"))
        .unwrap();
    wait_replica_sets(&env, &deployment, 3).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(replica_set_count(&env, &deployment).await, 3);
    let last: Deployment = env.get("web").await;
    assert_ne!(restarted_for(&last).as_ref(), Some(&first_restart));
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_before_a_new_deployment_is_first_looked_at_rolls_it_once() {
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("db", &secret_value("db-v1"))));
    let mut env = TestEnv::new("rollout-first-sight", seed).await;
    let operator = env.start_operator(env.operator_config());
    sync_item(&env, "db", "vaults/E2E/items/db").await;

    // The operator is frozen (as one slow to look) while the Deployment appears, the
    // controller-manager makes its first ReplicaSet (whose pods start with db-v1), and the
    // item changes. It then writes the change and records the Deployment's baseline in the
    // same few seconds: the pods must not be left with db-v1.
    env.pause_operator(operator);
    env.apply(&deployment_using("web", "db", None))
        .await
        .unwrap();
    let deployment: Deployment = env.get("web").await;
    wait_replica_sets(&env, &deployment, 1).await;
    let v2 = secret_value("db-v2");
    env.sim.set_field("E2E", "db", "password", &v2).unwrap();
    env.resume_operator(operator);
    wait_password(&env, "db", &v2).await;
    wait_replica_sets(&env, &deployment, 2).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(replica_set_count(&env, &deployment).await, 2);

    // The pod template is the one for the data the Secret holds now.
    let web: Deployment = env.get("web").await;
    let secret = env.secret("db").await.expect("the Secret");
    let digest = annotation(&secret, DIGEST_ANNOTATION).expect("a data digest");
    let current = DigestMap::from([("db".to_string(), restart::fingerprint(digest))]);
    assert_eq!(
        annotation(&web, SECRET_DIGESTS_ANNOTATION),
        Some(restart::encode(&current).as_str())
    );
    assert_eq!(restarted_for(&web), Some(restart::restarted_for(&current)));
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_does_not_roll_for_an_item_it_does_not_use_or_for_unchanged_data() {
    let (env, deployment) = deployment_using_db("no-rollout").await;

    // A change of an item it does not use.
    let other = secret_value("other-v2");
    env.sim
        .set_field("E2E", "other", "password", &other)
        .unwrap();
    wait_password(&env, "other", &other).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(replica_set_count(&env, &deployment).await, 1);

    // A new version of its item with the same data (saved unchanged).
    let same = data_of(&env.secret("db").await.unwrap())["password"].clone();
    let saved = env.sim.set_field("E2E", "db", "password", &same).unwrap();
    let version = saved.version.to_string();
    env.wait_secret("db", "the new item version", has_item_version(&version))
        .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(replica_set_count(&env, &deployment).await, 1);
    let after: Deployment = env.get("web").await;
    assert_eq!(restarted_for(&after), None);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_restart_rolls_nothing_and_a_change_made_while_it_was_down_rolls_once() {
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("db", &secret_value("db-v1"))));
    let mut env = TestEnv::new("rollout-operator-restart", seed).await;
    let operator = env.start_operator(env.operator_config());
    sync_item(&env, "db", "vaults/E2E/items/db").await;
    env.apply(&deployment_using("web", "db", None))
        .await
        .unwrap();
    let deployment: Deployment = wait_recorded(&env, "web", &["db"]).await;
    wait_replica_sets(&env, &deployment, 1).await;
    env.sim
        .set_field("E2E", "db", "password", &secret_value("db-v2"))
        .unwrap();
    wait_replica_sets(&env, &deployment, 2).await;

    // A restarted operator looks at everything again and rolls nothing.
    let operator = env.restart_operator(operator);
    env.wait_log(operator, "poll cycle done").await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(replica_set_count(&env, &deployment).await, 2);

    // A change made while no operator runs: synced at start, and one rollout.
    env.stop_operator(operator);
    let v3 = secret_value("db-v3");
    env.sim.set_field("E2E", "db", "password", &v3).unwrap();
    let operator = env.restart_operator(operator);
    wait_password(&env, "db", &v3).await;
    wait_replica_sets(&env, &deployment, 3).await;
    env.wait_log(operator, "poll cycle done").await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(replica_set_count(&env, &deployment).await, 3);

    // Killed (SIGKILL) about when it syncs a change: the next one converges and rolls once.
    let v4 = secret_value("db-v4");
    env.sim.set_field("E2E", "db", "password", &v4).unwrap();
    tokio::time::sleep(POLL).await;
    env.kill_operator(operator);
    let operator = env.start_operator(env.operator_config());
    wait_password(&env, "db", &v4).await;
    wait_replica_sets(&env, &deployment, 4).await;
    env.wait_log(operator, "poll cycle done").await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(replica_set_count(&env, &deployment).await, 4);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_restart_follows_the_most_specific_annotation() {
    let seed = Seed::new().vault(
        VaultSpec::new("E2E")
            .item(login("db", &secret_value("db-v1")))
            .item(login("api", &secret_value("api-v1"))),
    );
    let mut env = TestEnv::new("auto-restart-levels", seed).await;
    env.kubectl(&[
        "annotate",
        "namespace",
        &env.ns,
        "operator.1password.io/auto-restart=true",
    ])
    .await
    .unwrap();
    env.start_operator(env.operator_config());
    sync_item(&env, "db", "vaults/E2E/items/db").await;
    // `api`: an annotated Deployment with its own Secret, restarted as the Namespace says.
    // `opted-out`: uses `db` but says no itself.
    let opted_out = deployment_using("opted-out", "db", None).replace(
        "operator.1password.io/auto-restart: \"true\"",
        "operator.1password.io/auto-restart: \"false\"",
    );
    env.apply(&format!(
        "{}---\n{opted_out}",
        annotated_deployment("api", "vaults/E2E/items/api", "api-creds")
    ))
    .await
    .unwrap();
    let api: Deployment = wait_recorded(&env, "api", &["api-creds"]).await;
    let out: Deployment = wait_recorded(&env, "opted-out", &["db"]).await;
    wait_replica_sets(&env, &api, 1).await;
    wait_replica_sets(&env, &out, 1).await;
    let out_record = annotation(&out, SECRET_DIGESTS_ANNOTATION)
        .unwrap()
        .to_string();

    env.sim
        .set_field("E2E", "api", "password", &secret_value("api-v2"))
        .unwrap();
    env.sim
        .set_field("E2E", "db", "password", &secret_value("db-v2"))
        .unwrap();
    wait_replica_sets(&env, &api, 2).await;
    // The opted-out Deployment only takes note of the new data.
    wait_for(
        "opted-out to record the new data",
        support::TIMEOUT,
        async || {
            let d: Deployment = env.get("opted-out").await;
            let record = annotation(&d, SECRET_DIGESTS_ANNOTATION).unwrap_or_default();
            (record != out_record)
                .then_some(())
                .ok_or("the same record".to_string())
        },
    )
    .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(replica_set_count(&env, &out).await, 1);
    assert_eq!(replica_set_count(&env, &api).await, 2);
    let out_after: Deployment = env.get("opted-out").await;
    assert_eq!(restarted_for(&out_after), None);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_secrets_of_one_deployment_changed_together_roll_it_once() {
    let seed = Seed::new().vault(
        VaultSpec::new("E2E")
            .item(login("a", &secret_value("a-v1")))
            .item(login("b", &secret_value("b-v1"))),
    );
    let mut env = TestEnv::new("rollout-two-secrets", seed).await;
    env.start_operator(env.operator_config());
    env.apply(&format!(
        "{}---\n{}",
        item_manifest("a", "vaults/E2E/items/a"),
        item_manifest("b", "vaults/E2E/items/b")
    ))
    .await
    .unwrap();
    env.wait_ready("a", "Synced").await;
    env.wait_ready("b", "Synced").await;
    env.apply(&deployment_using("web", "a", Some("b")))
        .await
        .unwrap();
    let deployment: Deployment = wait_recorded(&env, "web", &["a", "b"]).await;
    wait_replica_sets(&env, &deployment, 1).await;

    // Connect fails while both items change, so the next poll sees both changes at once.
    env.sim.inject(Fault::status(503).under("/v1/vaults"));
    let (a2, b2) = (secret_value("a-v2"), secret_value("b-v2"));
    env.sim.set_field("E2E", "a", "password", &a2).unwrap();
    env.sim.set_field("E2E", "b", "password", &b2).unwrap();
    env.sim.clear_faults();
    wait_password(&env, "a", &a2).await;
    wait_password(&env, "b", &b2).await;
    wait_replica_sets(&env, &deployment, 2).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        env.replica_sets_of(&deployment.uid().unwrap()).await.len(),
        2
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulsets_and_daemonsets_are_restarted_once_per_change() {
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("db", &secret_value("db-v1"))));
    let mut env = TestEnv::new("restart-sts-ds", seed).await;
    env.start_operator(env.operator_config());
    // Here auto-restart comes from the item (copied to its Secret), not from the workloads.
    env.apply(
        "apiVersion: onepassword.com/v1\n\
         kind: OnePasswordItem\n\
         metadata:\n  name: db\n  annotations:\n    operator.1password.io/auto-restart: \"true\"\n\
         spec:\n  itemPath: \"vaults/E2E/items/db\"\n",
    )
    .await
    .unwrap();
    env.wait_ready("db", "Synced").await;
    env.apply(
        r#"apiVersion: apps/v1
kind: StatefulSet
metadata: {name: cache}
spec:
  serviceName: cache
  replicas: 1
  selector: {matchLabels: {app: cache}}
  template:
    metadata: {labels: {app: cache}}
    spec:
      containers:
      - name: cache
        image: registry.invalid/cache:1
        volumeMounts: [{name: creds, mountPath: /creds}]
      volumes: [{name: creds, secret: {secretName: db}}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers:
      - name: agent
        image: registry.invalid/agent:1
        env:
        - name: DB_PASSWORD
          valueFrom: {secretKeyRef: {name: db, key: password}}
"#,
    )
    .await
    .unwrap();
    let sts: StatefulSet = wait_recorded(&env, "cache", &["db"]).await;
    let ds: DaemonSet = wait_recorded(&env, "agent", &["db"]).await;
    assert_eq!(restarted_for(&sts), None);
    assert_eq!(restarted_for(&ds), None);

    env.sim
        .set_field("E2E", "db", "password", &secret_value("db-v2"))
        .unwrap();
    let sts_rolled = wait_for("the StatefulSet restarted", support::TIMEOUT, async || {
        let sts: StatefulSet = env.get("cache").await;
        restarted_for(&sts)
            .map(|_| sts)
            .ok_or("no restarted-for yet".to_string())
    })
    .await;
    let ds_rolled = wait_for("the DaemonSet restarted", support::TIMEOUT, async || {
        let ds: DaemonSet = env.get("agent").await;
        restarted_for(&ds)
            .map(|_| ds)
            .ok_or("no restarted-for yet".to_string())
    })
    .await;
    assert_eq!(
        sts_rolled.metadata.generation,
        sts.metadata.generation.map(|g| g + 1)
    );
    assert_eq!(
        ds_rolled.metadata.generation,
        ds.metadata.generation.map(|g| g + 1)
    );

    tokio::time::sleep(QUIET).await;
    let sts_after: StatefulSet = env.get("cache").await;
    let ds_after: DaemonSet = env.get("agent").await;
    assert_eq!(
        sts_after.metadata.generation,
        sts_rolled.metadata.generation
    );
    assert_eq!(ds_after.metadata.generation, ds_rolled.metadata.generation);
    assert_eq!(restarted_for(&sts_after), restarted_for(&sts_rolled));
    assert_eq!(restarted_for(&ds_after), restarted_for(&ds_rolled));
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_secret_of_the_same_name_is_left_alone_and_reported_as_a_conflict() {
    let password = secret_value("db-password");
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("db", &password)));
    let mut env = TestEnv::new("secret-conflict", seed).await;
    env.kubectl(&[
        "create",
        "secret",
        "generic",
        "db",
        "--from-literal=password=mine",
    ])
    .await
    .unwrap();
    let foreign = env.secret("db").await.unwrap();
    env.start_operator(env.operator_config());
    env.apply(&item_manifest("db", "vaults/E2E/items/db"))
        .await
        .unwrap();

    env.wait_ready("db", "SecretConflict").await;
    env.wait_event("OnePasswordItem", "db", "Warning", "SecretConflict")
        .await;
    tokio::time::sleep(2 * POLL).await;
    // One event for the transition, not one per retry.
    let conflicts: Vec<_> = env
        .events_for("OnePasswordItem", "db")
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("SecretConflict"))
        .collect();
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert!(conflicts[0].series.is_none(), "{conflicts:?}");
    let after = env.secret("db").await.unwrap();
    assert_eq!(after.resource_version(), foreign.resource_version());
    assert_eq!(data_of(&after), map(&[("password", "mine")]));
    assert!(after.owner_references().is_empty());

    // Once the foreign Secret is gone, the operator makes its own.
    env.kubectl(&["delete", "secret", "db"]).await.unwrap();
    env.wait_ready("db", "Synced").await;
    wait_login_secret(&env, "db", "the item", &password).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paths_and_missing_vaults_or_items_are_reported_with_their_reason() {
    let password = secret_value("db-password");
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("db", &password)));
    let mut env = TestEnv::new("error-reasons", seed).await;
    env.start_operator(env.operator_config());

    // The CRD's pattern turns away what is not a path at all.
    let rejected = env
        .apply(&item_manifest("not-a-path", "foo/bar"))
        .await
        .expect_err("kubectl apply accepted itemPath foo/bar");
    assert!(rejected.contains("spec.itemPath"), "{rejected}");
    assert!(env.item("not-a-path").await.is_none());

    env.apply(&format!(
        "{}---\n{}---\n{}",
        item_manifest("trailing-space", "vaults/E2E/items/db "),
        item_manifest("no-vault", "vaults/Nowhere/items/db"),
        item_manifest("no-item", "vaults/E2E/items/later"),
    ))
    .await
    .unwrap();
    env.wait_ready("trailing-space", "InvalidItemPath").await;
    env.wait_ready("no-vault", "VaultNotFound").await;
    env.wait_ready("no-item", "ItemNotFound").await;
    let table = env.kubectl(&["get", "opi"]).await.unwrap();
    for (name, reason) in [
        ("trailing-space", "InvalidItemPath"),
        ("no-vault", "VaultNotFound"),
        ("no-item", "ItemNotFound"),
    ] {
        let row = table
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|r| r[0] == name)
            .expect(&table);
        assert_eq!(row[1..3], ["False", reason], "{table}");
        assert!(env.secret(name).await.is_none(), "a Secret {name} was made");
    }

    // A Deployment that asks for a missing item is told so by a Warning event.
    env.apply(&annotated_deployment(
        "lost",
        "vaults/E2E/items/nope",
        "lost-db",
    ))
    .await
    .unwrap();
    env.wait_event("Deployment", "lost", "Warning", "ItemNotFound")
        .await;
    assert!(env.secret("lost-db").await.is_none());

    // Missing items are looked for again: one created later is synced.
    let later = secret_value("later");
    env.sim
        .put_item("E2E", ItemSpec::new("later").password(&later))
        .unwrap();
    env.wait_ready("no-item", "Synced").await;
    env.wait_secret(
        "no-item",
        "the new item",
        has_data(&map(&[("password", &later)])),
    )
    .await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_with_a_bad_token_reports_unauthorized() {
    let seed =
        Seed::new().vault(VaultSpec::new("E2E").item(login("db", &secret_value("db-password"))));
    let mut env = TestEnv::new("bad-token", seed).await;
    let mut config = env.operator_config();
    config.token = "not-a-valid-token".into();
    env.start_operator(config);
    env.apply(&item_manifest("db", "vaults/E2E/items/db"))
        .await
        .unwrap();
    env.wait_ready("db", "Unauthorized").await;
    assert!(env.secret("db").await.is_none());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_connect_is_down_or_failing_the_secret_is_kept_and_it_recovers_after() {
    let v1 = secret_value("v1");
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("db", &v1)));
    let mut env = TestEnv::new("connect-down", seed).await;
    env.start_operator(env.operator_config());
    sync_item(&env, "db", "vaults/E2E/items/db").await;
    let mut kept = env
        .wait_secret(
            "db",
            "the item",
            has_data(&map(&[("username", "app"), ("password", &v1)])),
        )
        .await;

    for (round, outage) in ["refused", "500"].into_iter().enumerate() {
        match outage {
            "refused" => env.sim.down().unwrap(),
            _ => env.sim.inject(Fault::internal_error()),
        }
        // The item changes meanwhile; a label on the item makes the Secret need a write, hence
        // the item, hence Connect.
        let next = secret_value(&format!("v{}", round + 2));
        env.sim.set_field("E2E", "db", "password", &next).unwrap();
        env.kubectl(&[
            "label",
            "opi",
            "db",
            &format!("e2e-touch={round}"),
            "--overwrite",
        ])
        .await
        .unwrap();
        env.wait_ready("db", "ConnectUnavailable").await;
        tokio::time::sleep(2 * POLL).await;
        let during = env.secret("db").await.unwrap();
        assert_eq!(
            during.resource_version(),
            kept.resource_version(),
            "the Secret was written while Connect was {outage}"
        );
        assert_eq!(data_of(&during), data_of(&kept));

        if outage == "refused" {
            env.sim.resume().unwrap();
        } else {
            env.sim.clear_faults();
        }
        env.wait_ready("db", "Synced").await;
        kept = env
            .wait_secret("db", "the new password and label", |s| {
                let label = s.labels().get("e2e-touch");
                if label != Some(&round.to_string()) {
                    return Err(format!("label e2e-touch is {label:?}"));
                }
                has_data(&map(&[("username", "app"), ("password", &next)]))(s)
            })
            .await;
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_token_is_refused_or_connect_is_down_synced_objects_say_so_and_recover() {
    let v1 = secret_value("v1");
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("db", &v1)));
    let mut env = TestEnv::new("outage-status", seed).await;
    env.start_operator(env.operator_config());
    env.apply(&format!(
        "{}---\n{}",
        item_manifest("db", "vaults/E2E/items/db"),
        annotated_deployment("web", "vaults/E2E/items/db", "web-db"),
    ))
    .await
    .unwrap();
    let synced = env.wait_ready("db", "Synced").await;
    let kept = env
        .wait_secret(
            "db",
            "the item",
            has_data(&map(&[("username", "app"), ("password", &v1)])),
        )
        .await;
    env.wait_secret("web-db", "made for the Deployment", |_| Ok(()))
        .await;

    // The token is revoked and nothing else happens: no fetch is due, only polls see it.
    env.sim.remove_token(support::TOKEN).unwrap();
    let refused = env.wait_ready("db", "Unauthorized").await;
    let ready = refused.ready_condition().unwrap();
    let message = ready.message.as_deref().unwrap();
    assert!(message.contains("holds version"), "{message}");
    assert_eq!(
        refused.status.as_ref().unwrap().item_version,
        synced.status.as_ref().unwrap().item_version,
        "the status still says what the Secret holds"
    );
    env.wait_event("OnePasswordItem", "db", "Warning", "Unauthorized")
        .await;
    env.wait_event("Deployment", "web", "Warning", "Unauthorized")
        .await;
    tokio::time::sleep(2 * POLL).await;
    let during = env.secret("db").await.unwrap();
    assert_eq!(during.resource_version(), kept.resource_version());
    // Said once, not on every poll.
    let warnings = |events: Vec<k8s_openapi::api::events::v1::Event>| {
        events
            .iter()
            .filter(|e| e.reason.as_deref() == Some("Unauthorized"))
            .count()
    };
    assert_eq!(warnings(env.events_for("OnePasswordItem", "db").await), 1);

    env.sim.add_token(support::TOKEN, TokenAccess::All).unwrap();
    env.wait_ready("db", "Synced").await;
    env.wait_event("OnePasswordItem", "db", "Normal", "Synced")
        .await;
    env.wait_event("Deployment", "web", "Normal", "Synced")
        .await;
    let after = env.secret("db").await.unwrap();
    assert_eq!(after.resource_version(), kept.resource_version());

    // Connect goes away while the item changes: the same, and the change lands after.
    env.sim.down().unwrap();
    let v2 = secret_value("v2");
    env.sim.set_field("E2E", "db", "password", &v2).unwrap();
    env.wait_ready("db", "ConnectUnavailable").await;
    env.sim.resume().unwrap();
    env.wait_ready("db", "Synced").await;
    wait_login_secret(&env, "db", "the change", &v2).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_the_api_server_refuses_is_not_fetched_again_until_the_item_or_the_object_changes()
{
    let pw = secret_value("pw");
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("cert", &pw)));
    let mut env = TestEnv::new("permanent-failure", seed).await;
    env.start_operator(env.operator_config());
    // A TLS Secret needs tls.crt and tls.key; the item has neither.
    env.apply(&format!(
        "{}type: kubernetes.io/tls\n",
        item_manifest("cert", "vaults/E2E/items/cert")
    ))
    .await
    .unwrap();
    env.wait_ready("cert", "SecretRejected").await;
    // The first reconcile had nothing cached to say which version failed: the next poll may
    // look once more. After that, nothing.
    tokio::time::sleep(2 * POLL).await;
    let fetched = env.sim.count("get_item");
    assert!((1..=2).contains(&fetched), "{fetched} fetches");
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        env.sim.count("get_item"),
        fetched,
        "the item was fetched again with nothing changed"
    );
    assert!(env.secret("cert").await.is_none());

    // The object changes: one more try.
    env.kubectl(&["label", "opi", "cert", "e2e-touch=1"])
        .await
        .unwrap();
    wait_for("one more fetch", support::TIMEOUT, async || {
        let now = env.sim.count("get_item");
        (now > fetched)
            .then_some(now)
            .ok_or(format!("{now} fetches"))
    })
    .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(env.sim.count("get_item"), fetched + 1);

    // The item changes: fetched again, and now it works.
    let (crt, key) = (secret_value("crt"), secret_value("key"));
    env.sim.set_field("E2E", "cert", "tls.crt", &crt).unwrap();
    env.sim.set_field("E2E", "cert", "tls.key", &key).unwrap();
    env.wait_ready("cert", "Synced").await;
    let secret = env
        .wait_secret(
            "cert",
            "the TLS Secret",
            has_data(&map(&[
                ("username", "app"),
                ("password", &pw),
                ("tls.crt", &crt),
                ("tls.key", &key),
            ])),
        )
        .await;
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skipped_field_is_said_in_the_status_and_one_event_and_still_after_a_restart() {
    let password = secret_value("pw");
    let seed = Seed::new().vault(
        VaultSpec::new("E2E").item(login("db", &password).field("***", secret_value("odd"))),
    );
    let mut env = TestEnv::new("skipped-field-warning", seed).await;
    let operator = env.start_operator(env.operator_config());
    env.apply(&item_manifest("db", "vaults/E2E/items/db"))
        .await
        .unwrap();
    let skipped = "field \"***\" was skipped";
    let message_of = |item: &onepassword_secrets_operator::crd::OnePasswordItem| {
        item.ready_condition()
            .and_then(|c| c.message.clone())
            .unwrap_or_default()
    };
    let synced = env.wait_ready("db", "Synced").await;
    assert!(
        message_of(&synced).contains(skipped),
        "{}",
        message_of(&synced)
    );
    env.wait_event("OnePasswordItem", "db", "Warning", "SyncWarning")
        .await;

    // A new operator fetches nothing (the Secret holds the listed version) and keeps saying it.
    let operator = env.restart_operator(operator);
    env.wait_log(operator, "poll cycle done").await;
    tokio::time::sleep(QUIET).await;
    let item = env.item("db").await.unwrap();
    assert!(message_of(&item).contains(skipped), "{}", message_of(&item));
    assert_eq!(
        item.ready_condition().unwrap().last_transition_time,
        synced.ready_condition().unwrap().last_transition_time
    );
    let events = env.events_for("OnePasswordItem", "db").await;
    let said = events
        .iter()
        .filter(|e| e.reason.as_deref() == Some("SyncWarning"))
        .count();
    assert_eq!(said, 1, "the warning is an event once, on the transition");
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_leaves_alone_the_namespaces_it_does_not_watch() {
    let password = secret_value("db-password");
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("db", &password)));
    let mut env = TestEnv::new("watch-namespace", seed).await;
    let other = env.create_namespace("b").await;
    env.start_operator(env.operator_config());
    let item = item_manifest("db", "vaults/E2E/items/db");
    let deployment = annotated_deployment("web", "vaults/E2E/items/db", "web-db");
    for ns in [env.ns.clone(), other.clone()] {
        env.apply_in(&ns, &format!("{item}---\n{deployment}"))
            .await
            .unwrap();
    }
    env.wait_ready("db", "Synced").await;
    env.wait_secret("web-db", "made for the Deployment", |_| Ok(()))
        .await;

    tokio::time::sleep(QUIET).await;
    let untouched = env.item_in(&other, "db").await.unwrap();
    assert!(untouched.status.is_none(), "{:?}", untouched.status);
    assert!(env.secret_in(&other, "db").await.is_none());
    assert!(env.secret_in(&other, "web-db").await.is_none());

    // The same objects are fine: an operator that watches that namespace syncs them.
    let mut config = env.operator_config();
    config.namespaces = vec![other.clone()];
    env.start_operator(config);
    env.wait_ready_in(&other, "db", "Synced").await;
    let want = map(&[("username", "app"), ("password", &password)]);
    wait_for(
        "Secrets in the other namespace",
        support::TIMEOUT,
        async || {
            for name in ["db", "web-db"] {
                let secret = env
                    .secret_in(&other, name)
                    .await
                    .ok_or(format!("no {name}"))?;
                has_data(&want)(&secret)?;
            }
            Ok(())
        },
    )
    .await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_deleted_ignored_or_revoked_in_1password_leaves_its_secret_as_it_was() {
    let (db, cache, api) = (
        secret_value("db-v1"),
        secret_value("cache-v1"),
        secret_value("api-v1"),
    );
    let seed = Seed::new()
        .vault(
            VaultSpec::new("E2E")
                .item(login("db", &db))
                .item(login("cache", &cache).tag("operator.1password.io:ignore-secret")),
        )
        .vault(VaultSpec::new("Team").item(login("api", &api)));
    let mut env = TestEnv::new("deleted-ignored-revoked", seed).await;
    let team = env.sim.vault("Team").unwrap().id;
    env.start_operator(env.operator_config());
    env.apply(&format!(
        "{}---\n{}---\n{}",
        item_manifest("db", "vaults/E2E/items/db"),
        item_manifest("cache", "vaults/E2E/items/cache"),
        item_manifest("api", &format!("vaults/{team}/items/api")),
    ))
    .await
    .unwrap();
    // An ignored item still gets its Secret once; its changes are not synced after that, and
    // its status says so from then on.
    let mut kept = Vec::new();
    for (name, password, reason) in [
        ("db", &db, "Synced"),
        ("cache", &cache, "Ignored"),
        ("api", &api, "Synced"),
    ] {
        env.wait_ready(name, reason).await;
        let want = map(&[("username", "app"), ("password", password)]);
        kept.push(env.wait_secret(name, "the item", has_data(&want)).await);
    }

    env.sim.delete_item("E2E", "db").unwrap();
    env.sim
        .set_field("E2E", "cache", "password", &secret_value("cache-v2"))
        .unwrap();
    env.sim.revoke(support::TOKEN, "Team").unwrap();
    env.wait_ready("db", "ItemNotFound").await;
    env.wait_ready("cache", "Ignored").await;
    env.wait_ready("api", "VaultForbidden").await;
    // As with the official operator (pkg/onepassword/secret_update_handler.go), an ignored
    // item's Secret keeps its data but its item-version annotation follows the item.
    let cache_version = env.sim.item("E2E", "cache").unwrap().version.to_string();
    let moved = env
        .wait_secret(
            "cache",
            "the new item version",
            has_item_version(&cache_version),
        )
        .await;
    tokio::time::sleep(2 * POLL).await;
    for kept in kept {
        let now = env
            .secret(&kept.name_any())
            .await
            .expect("the Secret is kept");
        if kept.name_any() == "cache" {
            assert_eq!(data_of(&now), data_of(&kept));
            assert_eq!(now.resource_version(), moved.resource_version());
            let digest = "operator.1password.io/data-digest";
            assert_eq!(annotation(&now, digest), annotation(&kept, digest));
        } else {
            assert_eq!(now.resource_version(), kept.resource_version());
        }
    }
    let cache_item = env.item("cache").await.unwrap();
    assert_eq!(
        cache_item.ready_condition().unwrap().reason.as_deref(),
        Some("Ignored")
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_sharing_a_secret_keep_it_until_the_last_one_goes() {
    let password = secret_value("db-password");
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("db", &password)));
    let mut env = TestEnv::new("shared-secret", seed).await;
    env.start_operator(env.operator_config());
    env.apply(&format!(
        "{}---\n{}",
        annotated_deployment("web", "vaults/E2E/items/db", "shared-db"),
        annotated_deployment("worker", "vaults/E2E/items/db", "shared-db"),
    ))
    .await
    .unwrap();
    let owners_of = |s: &k8s_openapi::api::core::v1::Secret| -> Vec<String> {
        let mut names: Vec<String> = s
            .owner_references()
            .iter()
            .map(|o| o.name.clone())
            .collect();
        names.sort();
        names
    };
    env.wait_secret("shared-db", "owned by both Deployments", |s| {
        has_data(&map(&[("username", "app"), ("password", &password)]))(s)?;
        let owners = owners_of(s);
        (owners == ["web", "worker"])
            .then_some(())
            .ok_or(format!("owners {owners:?}"))
    })
    .await;

    env.kubectl(&["delete", "deployment", "web"]).await.unwrap();
    env.wait_secret("shared-db", "owned by worker only", |s| {
        let owners = owners_of(s);
        (owners == ["worker"])
            .then_some(())
            .ok_or(format!("owners {owners:?}"))
    })
    .await;
    tokio::time::sleep(2 * POLL).await;
    assert!(
        env.secret("shared-db").await.is_some(),
        "the Secret went with the first Deployment"
    );

    env.kubectl(&["delete", "deployment", "worker"])
        .await
        .unwrap();
    env.wait_secret_gone("shared-db").await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_reads_connect_over_tls_with_a_token_file_and_serves_probes_and_metrics() {
    let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sim");
    let password = secret_value("db-password");
    let seed = || Seed::new().vault(VaultSpec::new("E2E").item(login("db", &password)));
    let mut env = TestEnv::new("tls-and-probes", seed()).await;
    let tls = Simulator::start_tls(
        seed().token(support::TOKEN, TokenAccess::All),
        &std::fs::read(format!("{fixtures}/server.crt")).unwrap(),
        &std::fs::read(format!("{fixtures}/server.key")).unwrap(),
    )
    .unwrap();
    let token_dir = tempfile::tempdir().unwrap();
    let token_file = token_dir.path().join("token");
    std::fs::write(&token_file, format!("{}\n", support::TOKEN)).unwrap();
    let (metrics, health) = (free_port(), free_port());
    let mut config = env
        .operator_config()
        .with_env("OP_CONNECT_CA_FILE", &format!("{fixtures}/ca.crt"))
        .with_env("OP_CONNECT_TOKEN_FILE", &token_file.display().to_string())
        .with_env("METRICS_BIND_ADDRESS", &format!("127.0.0.1:{metrics}"))
        .with_env("HEALTH_PROBE_BIND_ADDRESS", &format!("127.0.0.1:{health}"));
    config.connect_host = tls.url();
    config.token = String::new();
    env.start_operator(config);
    sync_item(&env, "db", "vaults/E2E/items/db").await;
    wait_login_secret(&env, "db", "the item, read over TLS", &password).await;
    assert!(tls.count("get_item") >= 1, "{:?}", tls.counts());
    assert_eq!(env.sim.total_requests(), 0, "the plain simulator was asked");

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let get = async |port: u16, path: &str| -> Result<(u16, String), String> {
        let response = http
            .get(format!("http://127.0.0.1:{port}{path}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        Ok((status, response.text().await.map_err(|e| e.to_string())?))
    };
    for path in ["/healthz", "/readyz"] {
        wait_for(
            &format!("{path} to answer 200"),
            support::TIMEOUT,
            async || match get(health, path).await? {
                (200, _) => Ok(()),
                (status, body) => Err(format!("{status}: {body}")),
            },
        )
        .await;
    }
    let (status, text) = get(metrics, "/metrics").await.unwrap();
    assert_eq!(status, 200, "{text}");
    for series in [
        "onepassword_secret_writes_total{controller=\"item\"} 1",
        "onepassword_connect_requests_total{endpoint=\"get_item\",status=\"200\"}",
    ] {
        assert!(text.contains(series), "no {series} in:\n{text}");
    }
    assert!(
        !text.contains(&password) && !text.contains(support::TOKEN),
        "the metrics hold a secret"
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_of_a_onepassworditem_reach_its_secret() {
    let (db, api) = (secret_value("db"), secret_value("api"));
    let docker = format!(r#"{{"auths":{{"r.example":{{"auth":"{}"}}}}}}"#, b64(&db));
    remember_secret(&docker);
    let seed = Seed::new().vault(
        VaultSpec::new("E2E")
            .item(login("db", &db))
            .item(login("api", &api))
            .item(ItemSpec::new("registry").concealed(".dockerconfigjson", &docker)),
    );
    let mut env = TestEnv::new("item-edits", seed).await;
    env.start_operator(env.operator_config().with_env("ENABLE_ANNOTATIONS", "true"));
    env.apply(
        "apiVersion: onepassword.com/v1\n\
         kind: OnePasswordItem\n\
         metadata:\n  name: creds\n  labels: {team: a, tier: backend}\n  \
         annotations: {example.com/owner: team-a}\n\
         spec:\n  itemPath: \"vaults/E2E/items/db\"\n",
    )
    .await
    .unwrap();
    env.wait_ready("creds", "Synced").await;
    // With ENABLE_ANNOTATIONS, the item's annotations are copied, and removed with it.
    let secret = env
        .wait_secret("creds", "the item's annotation", |s| {
            (annotation(s, "example.com/owner") == Some("team-a"))
                .then_some(())
                .ok_or_else(|| "no example.com/owner annotation".into())
        })
        .await;
    assert_eq!(
        annotation(&secret, "kubectl.kubernetes.io/last-applied-configuration"),
        None
    );
    env.kubectl(&["annotate", "opi", "creds", "example.com/owner-"])
        .await
        .unwrap();
    env.wait_secret("creds", "the annotation removed", |s| {
        annotation(s, "example.com/owner")
            .is_none()
            .then_some(())
            .ok_or_else(|| "example.com/owner is still there".into())
    })
    .await;
    let labels_are = |want: &'static [(&'static str, &'static str)]| {
        move |s: &k8s_openapi::api::core::v1::Secret| {
            let have: Vec<(&str, &str)> = s
                .labels()
                .iter()
                .filter(|(k, _)| !k.starts_with("operator.1password.io/"))
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            (have == want)
                .then_some(())
                .ok_or(format!("labels {have:?}"))
        }
    };
    env.wait_secret(
        "creds",
        "the item's labels",
        labels_are(&[("team", "a"), ("tier", "backend")]),
    )
    .await;

    // Labels changed and removed on the item follow on the Secret.
    env.kubectl(&["label", "opi", "creds", "team=b", "tier-", "--overwrite"])
        .await
        .unwrap();
    env.wait_secret("creds", "the new labels", labels_are(&[("team", "b")]))
        .await;

    // Another itemPath: the Secret holds the other item.
    let api_item = env.sim.item("E2E", "api").unwrap();
    env.kubectl(&[
        "patch",
        "opi",
        "creds",
        "--type=merge",
        "-p",
        r#"{"spec":{"itemPath":"vaults/E2E/items/api"}}"#,
    ])
    .await
    .unwrap();
    env.wait_secret("creds", "the other item", |s| {
        has_data(&map(&[("username", "app"), ("password", &api)]))(s)?;
        let path = annotation(s, ITEM_PATH_ANNOTATION).unwrap_or_default();
        path.ends_with(&format!("/items/{}", api_item.id))
            .then_some(())
            .ok_or(format!("item-path {path}"))
    })
    .await;
    let item = env.wait_ready("creds", "Synced").await;
    assert_eq!(
        item.ready_condition().unwrap().observed_generation,
        item.metadata.generation
    );
    assert_eq!(item.status.unwrap().item_id, Some(api_item.id.clone()));

    // Another type: a Secret's type cannot change, so the operator says so and waits...
    env.kubectl(&[
        "patch",
        "opi",
        "creds",
        "--type=merge",
        "-p",
        r#"{"type":"kubernetes.io/dockerconfigjson","spec":{"itemPath":"vaults/E2E/items/registry"}}"#,
    ])
    .await
    .unwrap();
    env.wait_ready("creds", "SecretTypeImmutable").await;
    let kept = env.secret("creds").await.unwrap();
    assert_eq!(kept.type_.as_deref(), Some("Opaque"));
    assert_eq!(data_of(&kept).get("password"), Some(&api));
    // ... until the Secret is deleted; then it is made with the new type.
    env.kubectl(&["delete", "secret", "creds"]).await.unwrap();
    env.wait_ready("creds", "Synced").await;
    let secret = env
        .wait_secret(
            "creds",
            "the docker config",
            has_data(&map(&[(".dockerconfigjson", &docker)])),
        )
        .await;
    assert_eq!(
        secret.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );
    env.finish().await;
}

/// Restarting the API server leaves kube-controller-manager idle for a minute or more (its
/// informers back off), which would slow down or fail the tests that run after it. libtest
/// starts tests in name order, so this one's name sorts last; the exclusive lock waits for the
/// tests still running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_api_server_restarted_mid_run_the_operator_reconnects_and_converges() {
    let password = secret_value("before");
    let seed = Seed::new().vault(
        VaultSpec::new("E2E")
            .item(login("db", &password))
            .item(login("new", &secret_value("new"))),
    );
    let mut env = TestEnv::exclusive("apiserver-restart", seed).await;
    let id = env.start_operator(env.operator_config());
    sync_item(&env, "db", "vaults/E2E/items/db").await;

    // The operator is frozen while objects change and the API server restarts: when it wakes,
    // its watches resume from resource versions the new API server's cache no longer has, and
    // are answered 410 Gone (expired). It must list again and catch up, not stall or crash.
    env.pause_operator(id);
    env.kubectl(&["delete", "secret", "db"]).await.unwrap();
    env.apply(&item_manifest("new", "vaults/E2E/items/new"))
        .await
        .unwrap();
    env.envtest("restart-apiserver").await;
    env.resume_operator(id);
    env.wait_log(id, "watch expired (410 Gone); listing again")
        .await;
    // What changed while it was away: the deleted Secret is made again, the new item synced.
    wait_login_secret(&env, "db", "made again after the watch expired", &password).await;
    env.wait_ready("new", "Synced").await;

    // 1Password changes reach the Secret (status writes and Secret writes work).
    let after = secret_value("after");
    env.sim.set_field("E2E", "db", "password", &after).unwrap();
    wait_login_secret(&env, "db", "the change made after the restart", &after).await;
    // The Secret watch is back: a deleted Secret is made again.
    env.kubectl(&["delete", "secret", "db"]).await.unwrap();
    wait_login_secret(&env, "db", "made again", &after).await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_replicas_only_the_leader_writes_and_a_follower_takes_over_when_it_dies() {
    let first = secret_value("leader-v1");
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("db", &first)));
    let mut env = TestEnv::new("leader-election", seed).await;
    let replica = |name: &str| {
        env.operator_config()
            .with_env("LEADER_ELECT", "true")
            .with_env("POD_NAMESPACE", &env.ns)
            .with_env("POD_NAME", name)
    };
    let (config_a, config_b, config_c) = (
        replica("replica-a"),
        replica("replica-b"),
        replica("replica-c"),
    );
    let a = env.start_operator(config_a);
    env.wait_log(a, "became the leader").await;
    let b = env.start_operator(config_b);
    env.wait_log(b, "another replica leads").await;

    sync_item(&env, "db", "vaults/E2E/items/db").await;
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
    let lease = leases
        .get("onepassword-secrets-operator-leader")
        .await
        .unwrap();
    let holder = lease.spec.and_then(|s| s.holder_identity);
    assert_eq!(holder.as_deref(), Some("replica-a"));

    // The leader dies without releasing the Lease: the follower takes over once it expires
    // (15 s) and syncs a change made meanwhile.
    env.kill_operator(a);
    let second = secret_value("leader-v2");
    env.sim.set_field("E2E", "db", "password", &second).unwrap();
    let killed = Instant::now();
    env.wait_log(b, "became the leader").await;
    let want = map(&[("username", "app"), ("password", &second)]);
    env.wait_secret(
        "db",
        "the change, synced by the new leader",
        has_data(&want),
    )
    .await;
    assert!(
        killed.elapsed() < Duration::from_secs(30),
        "{:?}",
        killed.elapsed()
    );

    // A leader that shuts down cleanly releases the Lease: a new replica leads at once.
    let c = env.start_operator(config_c);
    env.wait_log(c, "another replica leads").await;
    env.stop_operator(b);
    let stopped = Instant::now();
    env.wait_log(c, "became the leader").await;
    assert!(
        stopped.elapsed() < Duration::from_secs(8),
        "{:?}",
        stopped.elapsed()
    );
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_api_connection_stalls_steps_down_before_a_follower_takes_over() {
    let first = secret_value("stall-v1");
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("db", &first)));
    let mut env = TestEnv::new("leader-stall", seed).await;
    // The leader reaches the API server through a proxy the test can stall; the follower
    // goes direct.
    let proxy = StallingProxy::start(api_server_addr()).await;
    let replica = |name: &str| {
        env.operator_config()
            .with_env("LEADER_ELECT", "true")
            .with_env("POD_NAMESPACE", &env.ns)
            .with_env("POD_NAME", name)
    };
    let config_a = replica("replica-a").with_env(
        "KUBECONFIG",
        &env.kubeconfig_through(&proxy).display().to_string(),
    );
    let config_b = replica("replica-b");
    let a = env.start_operator(config_a);
    env.wait_log(a, "became the leader").await;
    let b = env.start_operator(config_b);
    env.wait_log(b, "another replica leads").await;
    sync_item(&env, "db", "vaults/E2E/items/db").await;

    // The leader's connections hang: its renewals neither succeed nor fail. It must step down
    // (exit) by its renew deadline, before the follower may take over.
    proxy.freeze();
    let frozen = Instant::now();
    let second = secret_value("stall-v2");
    env.sim.set_field("E2E", "db", "password", &second).unwrap();
    let (exited_after, status) = wait_for(
        "the stalled leader to step down",
        Duration::from_secs(30),
        async || {
            let follower_leads = env.operator_log(b).contains("became the leader");
            match env.exited(a) {
                Some(status) => Ok((frozen.elapsed(), status)),
                None if follower_leads => Err(
                    "the follower leads while the stalled leader still runs: two writers"
                        .to_string(),
                ),
                None => Err("the stalled leader still runs".to_string()),
            }
        },
    )
    .await;
    assert!(
        !env.operator_log(b).contains("became the leader"),
        "the follower took over before the stalled leader stepped down"
    );
    assert!(!status.success(), "{status}");
    assert!(
        env.operator_log(a).contains("renew deadline"),
        "{}",
        env.operator_log(a)
    );
    assert!(exited_after < Duration::from_secs(13), "{exited_after:?}");

    // The follower takes over by its own clock (15 s without a change of the Lease) and syncs
    // the change made meanwhile.
    env.wait_log(b, "became the leader").await;
    let took_over = frozen.elapsed();
    assert!(took_over >= exited_after, "{took_over:?} {exited_after:?}");
    let want = map(&[("username", "app"), ("password", &second)]);
    env.wait_secret(
        "db",
        "the change, synced by the new leader",
        has_data(&want),
    )
    .await;
    let leases: Api<Lease> = Api::namespaced(env.client.clone(), &env.ns);
    let lease = leases
        .get("onepassword-secrets-operator-leader")
        .await
        .unwrap();
    let holder = lease.spec.and_then(|s| s.holder_identity);
    assert_eq!(holder.as_deref(), Some("replica-b"));
    drop(proxy);
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_policy_lets_a_namespace_read_only_the_vaults_it_allows() {
    let seed = Seed::new()
        .vault(VaultSpec::new("Team").item(login("db", &secret_value("team-db"))))
        .vault(VaultSpec::new("Payroll").item(login("salaries", &secret_value("payroll"))));
    let mut env = TestEnv::new("vault-policy", seed).await;
    let policy = env.test_file(
        "vault-policy.yaml",
        &format!("rules:\n  - namespaces: [{}]\n    vaults: [Team]\n", env.ns),
    );
    env.start_operator(
        env.operator_config()
            .with_env("VAULT_POLICY_FILE", &policy.display().to_string()),
    );

    // Denied: the condition and a Warning event say so, no Secret is made, and the vault's
    // items are never listed or read (the namespace learns nothing about them).
    env.apply(&format!(
        "{}---\n{}",
        item_manifest("payroll", "vaults/Payroll/items/salaries"),
        annotated_deployment("web", "vaults/Payroll/items/salaries", "web-payroll"),
    ))
    .await
    .unwrap();
    let denied = env.wait_ready("payroll", "VaultNotAllowed").await;
    let message = denied.ready_condition().unwrap().message.clone().unwrap();
    assert!(
        message.contains("Payroll") && message.contains(&env.ns),
        "{message}"
    );
    env.wait_event("OnePasswordItem", "payroll", "Warning", "VaultNotAllowed")
        .await;
    env.wait_event("Deployment", "web", "Warning", "VaultNotAllowed")
        .await;
    assert!(env.secret("payroll").await.is_none());
    assert!(env.secret("web-payroll").await.is_none());
    assert_eq!(env.sim.count("list_items"), 0, "{:?}", env.sim.counts());
    assert_eq!(env.sim.count("get_item"), 0, "{:?}", env.sim.counts());

    // Allowed: synced as usual.
    sync_item(&env, "db", "vaults/Team/items/db").await;

    // A policy the operator cannot read or understand stops it at start, saying why.
    for (name, text) in [
        (
            "bad-policy.yaml",
            "rules:\n  - namespaces: [a]\n    vault: [Team]\n",
        ),
        ("missing-policy.yaml", ""),
    ] {
        let path = env.test_file(name, text);
        if text.is_empty() {
            std::fs::remove_file(&path).unwrap();
        }
        let id = env.start_operator(
            env.operator_config()
                .with_env("VAULT_POLICY_FILE", &path.display().to_string()),
        );
        let status = env.wait_exit(id).await;
        assert!(!status.success(), "{name}: {status}");
        let log = env.operator_log(id);
        assert!(log.contains("vault policy") && log.contains(name), "{log}");
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_short_of_rbac_says_so_stays_up_and_recovers_when_granted() {
    let password = secret_value("rbac");
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("db", &password)));
    let mut env = TestEnv::new("reduced-rbac", seed).await;
    let user = format!("opsync-limited-{}", env.ns);
    // Enough to read items and write their status, but not to write Secrets, and nothing at
    // all on Deployments.
    let role = |secret_verbs: &str, apps: bool| {
        let mut yaml = format!(
            "apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: limited
rules:
  - apiGroups: [onepassword.com]
    resources: [onepassworditems]
    verbs: [get, list, watch]
  - apiGroups: [onepassword.com]
    resources: [onepassworditems/status]
    verbs: [get, patch, update]
  - apiGroups: [\"\"]
    resources: [secrets]
    verbs: [{secret_verbs}]
  - apiGroups: [events.k8s.io]
    resources: [events]
    verbs: [create, patch]
"
        );
        if apps {
            yaml.push_str(
                "  - apiGroups: [apps]
    resources: [deployments, statefulsets, daemonsets]
    verbs: [get, list, watch, patch]
",
            );
        }
        yaml
    };
    env.apply(&format!(
        "{}---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: limited\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: limited}}\n\
         subjects: [{{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}]\n",
        role("get, list, watch", false)
    ))
    .await
    .unwrap();
    let kubeconfig = env.kubeconfig_as(&user);
    let id = env.start_operator(
        env.operator_config()
            .with_env("KUBECONFIG", &kubeconfig.display().to_string()),
    );
    env.apply(&format!(
        "{}---\n{}",
        item_manifest("db", "vaults/E2E/items/db"),
        annotated_deployment("web", "vaults/E2E/items/db", "web-db"),
    ))
    .await
    .unwrap();
    let item = env.wait_ready("db", "KubernetesForbidden").await;
    let message = item.ready_condition().unwrap().message.clone().unwrap();
    assert!(message.contains("forbidden"), "{message}");
    env.wait_log(id, "watch failed; retrying with backoff")
        .await;
    assert!(env.secret("db").await.is_none());

    // Granted: the same process converges, the Deployment's Secret included.
    env.apply(&role(
        "get, list, watch, create, patch, update, delete",
        true,
    ))
    .await
    .unwrap();
    let want = map(&[("username", "app"), ("password", &password)]);
    env.wait_ready("db", "Synced").await;
    env.wait_secret("db", "made once allowed", has_data(&want))
        .await;
    env.wait_secret("web-db", "made once allowed", has_data(&want))
        .await;
    env.finish().await;
}
