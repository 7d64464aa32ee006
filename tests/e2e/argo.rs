//! Argo Rollouts: with Argo's published Rollout CRD installed (no Argo controller), a Rollout
//! that uses a managed Secret is restarted the Argo way, `spec.restartAt` set once per change,
//! its pod template never touched (that would start a new canary revision).

use connect_sim::{Seed, VaultSpec};
use onepassword_secrets_operator::{restart::argo::Rollout, vocabulary::RESTARTED_FOR_ANNOTATION};

use super::{QUIET, login, restarted_for, sync_item, wait_recorded};
use crate::support::{OUR_CRD, TIMEOUT, TestEnv, secret_value, wait_for};

const ROLLOUT: &str = r#"apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata:
  name: web
  annotations: {operator.1password.io/auto-restart: "true"}
spec:
  replicas: 1
  selector: {matchLabels: {app: web}}
  strategy: {canary: {steps: [{setWeight: 50}, {pause: {}}]}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: app
        image: registry.invalid/app:1
        envFrom: [{secretRef: {name: db}}]
"#;

/// The Rollout's `spec.restartAt` once it differs from `before`.
async fn wait_restart_at(env: &TestEnv, before: Option<&str>) -> Rollout {
    wait_for("spec.restartAt set anew", TIMEOUT, async || {
        let r: Rollout = env.get("web").await;
        match r.spec.restart_at.as_deref() {
            Some(at) if Some(at) != before => Ok(r),
            other => Err(format!("restartAt {other:?}")),
        }
    })
    .await
}

fn template_annotation(r: &Rollout) -> Option<String> {
    let template = r.spec.template.as_ref()?.metadata.as_ref()?;
    template
        .annotations
        .as_ref()?
        .get(RESTARTED_FOR_ANNOTATION)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_argo_rollout_gets_restart_at_once_per_change_and_its_template_is_never_touched() {
    let crd = std::env::var("OPSYNC_ARGO_ROLLOUT_CRD").expect(
        "OPSYNC_ARGO_ROLLOUT_CRD is not set: the path of Argo's Rollout CRD \
         (tests/envtest/argo-rollout-crd prints it; tests/run sets it)",
    );
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("db", &secret_value("db-v1"))));
    let mut env = TestEnv::with_own_control_plane("argo-rollout", seed).await;
    env.install_crd(OUR_CRD).await;
    env.install_large_crd(&crd).await;
    // The operator looks once at start (then every minute): let discovery serve it first.
    wait_for("the API server serving rollouts", TIMEOUT, async || {
        env.kubectl(&["get", "rollouts"]).await.map(|_| ())
    })
    .await;
    let config = env.operator_config().with_env("RESYNC_INTERVAL", "3");
    env.start_operator(config);
    sync_item(&env, "db", "vaults/E2E/items/db").await;
    env.apply(ROLLOUT).await.unwrap();
    let first: Rollout = wait_recorded(&env, "web", &["db"]).await;
    assert_eq!(
        first.spec.restart_at, None,
        "nothing restarted at first sight"
    );
    assert_eq!(restarted_for(&first), None);

    env.sim
        .set_field("E2E", "db", "password", &secret_value("db-v2"))
        .unwrap();
    let restarted = wait_restart_at(&env, None).await;
    let at = restarted.spec.restart_at.clone().unwrap();
    let mark = restarted_for(&restarted).expect("restarted-for on the Rollout's metadata");
    assert_eq!(
        template_annotation(&restarted),
        None,
        "the pod template is not touched"
    );
    assert_eq!(
        restarted.metadata.generation,
        first.metadata.generation.map(|g| g + 1),
        "one spec change"
    );
    // Once: polls and resyncs (every 3 s) change nothing more.
    tokio::time::sleep(QUIET).await;
    let after: Rollout = env.get("web").await;
    assert_eq!(after.spec.restart_at.as_deref(), Some(at.as_str()));
    assert_eq!(after.metadata.generation, restarted.metadata.generation);

    // The next change: once more, later.
    env.sim
        .set_field("E2E", "db", "password", &secret_value("db-v3"))
        .unwrap();
    let again = wait_restart_at(&env, Some(&at)).await;
    assert!(
        again.spec.restart_at.clone().unwrap() > at,
        "a later restartAt"
    );
    assert_ne!(restarted_for(&again), Some(mark));
    assert_eq!(template_annotation(&again), None);
    env.finish().await;
}
