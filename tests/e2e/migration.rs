//! Switching a cluster from the official operator (1Password/onepassword-operator v1.12.0, built
//! from its Go module by `benches/official/build`) to this one: nothing stuck, failing or lost.
//!
//! The test has a control plane of its own, since it installs the official CRD (cluster-wide)
//! and later replaces it with ours.

use std::{collections::BTreeMap, path::Path, process::Command};

use connect_sim::{Seed, VaultSpec};
use k8s_openapi::api::apps::v1::Deployment;
use kube::{Api, ResourceExt};
use onepassword_secrets_operator::{
    controller::takeover::OFFICIAL_FINALIZER, crd::OnePasswordItem,
};

use super::support::{
    GC_TIMEOUT, OFFICIAL_CRD, OUR_CRD, OperatorId, TIMEOUT, TestEnv, data_of, has_data, map,
    secret_value, wait_for,
};
use super::{QUIET, item_manifest, login, wait_login_secret};

const VAULT: &str = "Migration";
/// What our operator logs, once, when it can write only the official operator's status.
const OFFICIAL_SHAPE_LOG: &str = "writing only the official operator's status";

/// The official operator's binary: `OPSYNC_OFFICIAL_OPERATOR` (set by `tests/run`), else built
/// by `benches/official/build` (about 4 min the first time, then cached). Fails the test when
/// it cannot be had: this test never skips.
fn official_operator() -> String {
    if let Some(path) = std::env::var_os("OPSYNC_OFFICIAL_OPERATOR").filter(|p| !p.is_empty()) {
        let path = path.to_string_lossy().into_owned();
        assert!(
            Path::new(&path).is_file(),
            "OPSYNC_OFFICIAL_OPERATOR={path} is not a file: build it with benches/official/build"
        );
        return path;
    }
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/official/build");
    let out = Command::new(&build)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", build.display()));
    assert!(
        out.status.success(),
        "benches/official/build failed ({}), and the migration test needs the official \
         operator (Go >= 1.24 and the Go module proxy, once): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout.lines().last().unwrap_or_default().trim().to_string();
    assert!(
        Path::new(&path).is_file(),
        "benches/official/build printed no binary path: {stdout}"
    );
    path
}

/// The official manager's command line. It exits unless it can read its namespace from the
/// in-cluster file (as `benches/compare` explains): it gets one in a private mount namespace.
fn official_command(binary: &str, namespace: &str) -> Vec<String> {
    [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &format!(
            "mount -t tmpfs opsync-e2e /var/run && d=/var/run/secrets/kubernetes.io/serviceaccount \
             && mkdir -p $d && echo {namespace} > $d/namespace && exec \"$0\" \"$@\""
        ),
        binary,
        "--metrics-bind-address=0",
        "--health-probe-bind-address=0",
    ]
    .map(String::from)
    .to_vec()
}

/// A Deployment that asks for Secret `secret` from `item` by annotations, uses it through
/// `envFrom`, and is restarted on change.
fn annotated_deployment(name: &str, item: &str, secret: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  annotations:
    operator.1password.io/item-path: "vaults/{VAULT}/items/{item}"
    operator.1password.io/item-name: "{secret}"
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
        envFrom: [{{secretRef: {{name: {secret}}}}}]
"#
    )
}

fn has_official_finalizer(obj: &impl ResourceExt) -> bool {
    obj.finalizers().iter().any(|f| f == OFFICIAL_FINALIZER)
}

/// Waits until the item (or, with `deployment`, the Deployment) does or does not carry the
/// official finalizer.
async fn wait_finalizer(env: &TestEnv, name: &str, deployment: bool, present: bool) {
    wait_for(
        &format!(
            "{} {name} {} the official finalizer",
            if deployment {
                "Deployment"
            } else {
                "OnePasswordItem"
            },
            if present { "to carry" } else { "to lose" }
        ),
        TIMEOUT,
        async || {
            let has = if deployment {
                has_official_finalizer(&env.get::<Deployment>(name).await)
            } else {
                has_official_finalizer(&env.item(name).await.ok_or("no such item")?)
            };
            (has == present)
                .then_some(())
                .ok_or(format!("finalizer present: {has}"))
        },
    )
    .await
}

/// Waits until the object is gone: not Terminating, deleted.
async fn wait_gone<K>(env: &TestEnv, name: &str)
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api = Api::<K>::namespaced(env.client.clone(), &env.ns);
    wait_for(
        &format!("{} {name} to be deleted", K::kind(&())),
        GC_TIMEOUT,
        async || match api.get_opt(name).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(o) => Err(format!(
                "still there (deleting: {}, finalizers: {:?})",
                o.meta().deletion_timestamp.is_some(),
                o.finalizers()
            )),
        },
    )
    .await
}

/// Every Secret of the namespace: uid and data.
async fn secrets(
    env: &TestEnv,
    names: &[&str],
) -> BTreeMap<String, (String, BTreeMap<String, String>)> {
    let mut all = BTreeMap::new();
    for name in names {
        let secret = env
            .secret(name)
            .await
            .unwrap_or_else(|| panic!("Secret {name} is missing"));
        all.insert(
            name.to_string(),
            (secret.uid().unwrap_or_default(), data_of(&secret)),
        );
    }
    all
}

async fn replica_sets(env: &TestEnv, names: &[&str]) -> BTreeMap<String, usize> {
    let mut all = BTreeMap::new();
    for name in names {
        let deployment: Deployment = env.get(name).await;
        let uid = deployment.uid().expect("a uid");
        all.insert(name.to_string(), env.replica_sets_of(&uid).await.len());
    }
    all
}

fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_switches_from_the_official_operator_with_nothing_stuck_failing_or_lost() {
    let official = tokio::task::spawn_blocking(official_operator)
        .await
        .expect("build task");
    let items = ["db", "api", "gone", "doomed"];
    let deployments = [("web", "web-db"), ("old-web", "old-web-db")];
    let mut passwords: BTreeMap<&str, String> = BTreeMap::new();
    let mut vault = VaultSpec::new(VAULT);
    for title in items.iter().chain(deployments.iter().map(|(_, s)| s)) {
        let password = secret_value(&format!("migration-{title}"));
        vault = vault.item(login(title, &password));
        passwords.insert(title, password);
    }
    let mut env = TestEnv::with_own_control_plane("migration", Seed::new().vault(vault)).await;
    env.install_crd(OFFICIAL_CRD).await;
    let want = |title: &str| map(&[("username", "app"), ("password", &passwords[title])]);

    // The official operator syncs the items and the annotated Deployments, and leaves its
    // finalizer on each.
    let mut theirs = env.operator_config().with_env("AUTO_RESTART", "true");
    theirs.command = Some(official_command(&official, &env.ns));
    let theirs: OperatorId = env.start_operator(theirs);
    let mut manifests: Vec<String> = items
        .iter()
        .map(|i| item_manifest(i, &format!("vaults/{VAULT}/items/{i}")))
        .collect();
    manifests.extend(
        deployments
            .iter()
            .map(|(name, secret)| annotated_deployment(name, secret, secret)),
    );
    env.apply(&manifests.join("---\n")).await.unwrap();
    for title in items.iter().chain(deployments.iter().map(|(_, s)| s)) {
        env.wait_secret(
            title,
            "made by the official operator",
            has_data(&want(title)),
        )
        .await;
    }
    for item in items {
        env.wait_ready_message(item, "True", "").await;
        wait_finalizer(&env, item, false, true).await;
    }
    for (name, _) in deployments {
        wait_finalizer(&env, name, true, true).await;
    }
    // A change while it runs: it updates the Secret and restarts the Deployment that uses it,
    // leaving its `last-restarted` annotation on the pod template.
    let web_db = secret_value("migration-web-db-v2");
    env.sim
        .set_field(VAULT, "web-db", "password", &web_db)
        .unwrap();
    wait_login_secret(&env, "web-db", "updated by the official operator", &web_db).await;
    let web: Deployment = env.get("web").await;
    wait_for(
        "the official operator to restart Deployment web",
        TIMEOUT,
        async || {
            let n = env.replica_sets_of(&web.uid().unwrap()).await.len();
            (n == 2).then_some(()).ok_or(format!("{n} ReplicaSet(s)"))
        },
    )
    .await;
    let web: Deployment = env.get("web").await;
    let template = web
        .spec
        .clone()
        .unwrap()
        .template
        .metadata
        .unwrap_or_default();
    assert!(
        template
            .annotations
            .unwrap_or_default()
            .contains_key("operator.1password.io/last-restarted"),
        "the official operator restarts with a last-restarted annotation"
    );
    let secret_names: Vec<&str> = items
        .iter()
        .copied()
        .chain(deployments.iter().map(|(_, s)| *s))
        .collect();
    let deployment_names: Vec<&str> = deployments.iter().map(|(d, _)| *d).collect();
    let before = secrets(&env, &secret_names).await;
    let replicas = replica_sets(&env, &deployment_names).await;
    assert_eq!(
        replicas,
        BTreeMap::from([("old-web".to_string(), 1), ("web".to_string(), 2)])
    );
    env.stop_operator(theirs);

    // While the operators are switched, an item is deleted in 1Password, and another loses a
    // field (the official operator would have dropped its key: ours does too, once).
    env.sim.delete_item(VAULT, "gone").unwrap();
    let mut api_item = env.sim.item(VAULT, "api").expect("item api");
    api_item.fields.retain(|f| f.label != "username");
    env.sim.put_item(VAULT, api_item).unwrap();

    // Ours, with the official CRD still installed: it writes the official status shape (the
    // reason leads the message), takes over the finalizers, and changes no Secret and rolls
    // no Deployment.
    let ours = env.start_operator(env.operator_config().with_env("AUTO_RESTART", "true"));
    for item in ["db", "api", "doomed"] {
        env.wait_ready_message(item, "True", "Synced: ").await;
    }
    env.wait_ready_message("gone", "False", "ItemNotFound: ")
        .await;
    for item in items {
        wait_finalizer(&env, item, false, false).await;
    }
    for name in &deployment_names {
        wait_finalizer(&env, name, true, false).await;
    }
    let api_password = map(&[("password", &passwords["api"])]);
    env.wait_secret(
        "api",
        "the key of the removed field gone",
        has_data(&api_password),
    )
    .await;
    tokio::time::sleep(QUIET).await;
    let mut after = secrets(&env, &secret_names).await;
    let api_after = after.remove("api").expect("Secret api");
    let mut before = before;
    let api_before = before.remove("api").expect("Secret api");
    assert_eq!(api_after.0, api_before.0, "Secret api was replaced");
    assert_eq!(
        after, before,
        "a Secret was replaced or its data changed at take-over"
    );
    assert_eq!(
        replica_sets(&env, &deployment_names).await,
        replicas,
        "a Deployment rolled at take-over"
    );
    let log = env.operator_log(ours);
    assert_eq!(
        count(&log, OFFICIAL_SHAPE_LOG),
        1,
        "said once: {OFFICIAL_SHAPE_LOG:?}"
    );
    assert!(
        log.contains("kubectl apply -f crds/onepassworditem.yaml"),
        "says how to upgrade"
    );
    assert_eq!(
        count(&log, "field not declared in schema"),
        0,
        "no status write refused"
    );
    assert_eq!(count(&log, "reconcile failed"), 0, "no reconcile failed");

    // Our CRD applied (the operator keeps running): the full status, reasons and ids included.
    env.install_crd(OUR_CRD).await;
    for item in ["db", "api", "doomed"] {
        let item: OnePasswordItem = env.wait_ready(item, "Synced").await;
        let status = item.status.expect("a status");
        assert!(
            status.item_id.is_some() && status.item_version.is_some(),
            "{status:?}"
        );
        assert_eq!(status.observed_generation, item.metadata.generation);
    }
    env.wait_ready("gone", "ItemNotFound").await;
    let log = env.operator_log(ours);
    assert_eq!(count(&log, OFFICIAL_SHAPE_LOG), 1, "not said again");
    assert_eq!(count(&log, "reconcile failed"), 0, "no reconcile failed");

    // Deletions complete. The item gets the official finalizer again first, as an official
    // operator still running somewhere would put it: ours removes it on deletion too.
    env.kubectl(&[
        "patch",
        "onepassworditem",
        "doomed",
        "--type=json",
        &format!(
            r#"-p=[{{"op": "add", "path": "/metadata/finalizers", "value": ["{OFFICIAL_FINALIZER}"]}}]"#
        ),
    ])
    .await
    .unwrap();
    env.kubectl(&["delete", "onepassworditem", "doomed", "--wait=false"])
        .await
        .unwrap();
    env.kubectl(&["delete", "deployment", "old-web", "--wait=false"])
        .await
        .unwrap();
    wait_gone::<OnePasswordItem>(&env, "doomed").await;
    wait_gone::<Deployment>(&env, "old-web").await;
    env.wait_secret_gone("doomed").await;
    env.wait_secret_gone("old-web-db").await;

    // Item changes flow again: the Secrets follow, and the Deployment using one rolls once.
    let rotated = secret_value("migration-web-db-rotated");
    env.sim
        .set_field(VAULT, "web-db", "password", &rotated)
        .unwrap();
    let rotated_db = secret_value("migration-db-rotated");
    env.sim
        .set_field(VAULT, "db", "password", &rotated_db)
        .unwrap();
    wait_login_secret(&env, "web-db", "the new password", &rotated).await;
    wait_login_secret(&env, "db", "the new password", &rotated_db).await;
    wait_for("Deployment web to roll once", TIMEOUT, async || {
        let n = env.replica_sets_of(&web.uid().unwrap()).await.len();
        (n == 3).then_some(()).ok_or(format!("{n} ReplicaSet(s)"))
    })
    .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        env.replica_sets_of(&web.uid().unwrap()).await.len(),
        3,
        "rolled once only"
    );
    assert_eq!(
        secrets(&env, &["gone"]).await["gone"],
        before["gone"],
        "Secret gone"
    );
    env.wait_secret("api", "unchanged", has_data(&api_password))
        .await;
    env.finish().await;
}
