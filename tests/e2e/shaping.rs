//! Shaping the Secret (issue 15): a `.dockerconfigjson` from a Login item's fields that the API
//! server accepts and a Pod can name, only the listed keys under chosen names, fixed data and
//! labels beside the item's data, and keys rendered from templates.

use connect_sim::{ItemSpec, Seed, VaultSpec};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use onepassword_secrets_operator::crd::OnePasswordItem;
use serde_json::Value;

use super::{b64, login};
use crate::support::{TestEnv, data_of, has_data, map, secret_value};

/// A OnePasswordItem for `vaults/E2E/items/<item>` with `shaping` (YAML, indented by two)
/// appended to its spec, and `extra` at the top level.
fn shaped_manifest(name: &str, item: &str, shaping: &str, extra: &str) -> String {
    format!(
        "apiVersion: onepassword.com/v1\nkind: OnePasswordItem\nmetadata:\n  name: {name}\n\
         {extra}spec:\n  itemPath: \"vaults/E2E/items/{item}\"\n{shaping}"
    )
}

fn ready_message(item: &OnePasswordItem) -> String {
    let ready = item.ready_condition().expect("a Ready condition");
    ready.message.clone().unwrap_or_default()
}

fn keys(secret: &Secret) -> Vec<String> {
    data_of(secret).into_keys().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_pull_secret_from_login_fields_is_accepted_and_usable_by_a_pod() {
    let token = secret_value("ghcr-token");
    let registry = ItemSpec::new("ghcr")
        .field("server", "ghcr.io")
        .username("robot")
        .password(&token);
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(registry));
    let mut env = TestEnv::new("shape-pull", seed).await;
    env.start_operator(env.operator_config());
    env.apply(&shaped_manifest(
        "regcred",
        "ghcr",
        "  imagePullSecret: {}\n",
        "",
    ))
    .await
    .unwrap();
    env.wait_ready("regcred", "Synced").await;

    let secret = env.secret("regcred").await.unwrap();
    assert_eq!(
        secret.type_.as_deref(),
        Some("kubernetes.io/dockerconfigjson")
    );
    assert_eq!(keys(&secret), [".dockerconfigjson"]);
    let config: Value = serde_json::from_str(&data_of(&secret)[".dockerconfigjson"]).unwrap();
    let entry = &config["auths"]["ghcr.io"];
    assert_eq!(entry["username"], "robot");
    assert_eq!(entry["password"], token.as_str());
    assert_eq!(entry["auth"], b64(&format!("robot:{token}")).as_str());

    // The API server accepts a Pod that pulls with it.
    let pod = env.test_file(
        "pod.yaml",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: pulls\n  namespace: {}\nspec:\n  \
             imagePullSecrets: [{{name: regcred}}]\n  \
             containers: [{{name: app, image: ghcr.io/example/app:1}}]\n",
            env.ns
        ),
    );
    env.kubectl(&["create", "--dry-run=server", "-f", pod.to_str().unwrap()])
        .await
        .unwrap();

    // A field the shaping names but the item lacks: not Ready, naming the label, not a value.
    env.apply(&shaped_manifest(
        "no-token",
        "ghcr",
        "  imagePullSecret:\n    passwordField: token\n",
        "",
    ))
    .await
    .unwrap();
    let message = ready_message(&env.wait_ready("no-token", "FieldNotFound").await);
    assert!(message.contains("\"token\""), "{message}");
    assert!(!message.contains(&token), "{message}");
    assert!(env.secret("no-token").await.is_none());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_listed_keys_are_written_and_a_new_shaping_rewrites_the_secret() {
    let prod = secret_value("prod");
    let staging = secret_value("staging");
    let password = secret_value("app");
    let db = login("db", &password)
        .field_in("prod", "db-password", &prod)
        .field_in("staging", "db-password", &staging)
        .url("console", "https://db.example", true)
        .file("ca.pem", "CERT");
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(db));
    let mut env = TestEnv::new("shape-select", seed).await;
    env.start_operator(env.operator_config());
    let selected = "  data:\n  \
                    - {key: DB_PASSWORD, field: prod.db-password}\n  \
                    - {key: DB_USER, field: username}\n  \
                    - {key: ca.crt, file: ca.pem}\n  \
                    - {key: endpoint, url: console}\n";
    env.apply(&shaped_manifest("db", "db", selected, ""))
        .await
        .unwrap();
    env.wait_ready("db", "Synced").await;
    env.wait_secret(
        "db",
        "only the listed keys",
        has_data(&map(&[
            ("DB_PASSWORD", &prod),
            ("DB_USER", "app"),
            ("ca.crt", "CERT"),
            ("endpoint", "https://db.example"),
        ])),
    )
    .await;

    // The item is the same; the shaping changes: the Secret follows.
    env.apply(&shaped_manifest(
        "db",
        "db",
        "  includes: [\"user*\", \"pass*\"]\n",
        "",
    ))
    .await
    .unwrap();
    env.wait_secret(
        "db",
        "the included default keys",
        has_data(&map(&[("password", &password), ("username", "app")])),
    )
    .await;

    // A label repeated across sections needs its section.
    env.apply(&shaped_manifest(
        "db",
        "db",
        "  data:\n  - {key: DB_PASSWORD, field: db-password}\n",
        "",
    ))
    .await
    .unwrap();
    env.wait_ready("db", "AmbiguousField").await;
    env.apply(&shaped_manifest(
        "db",
        "db",
        "  data:\n  - {key: DB_PASSWORD, field: qa.db-password}\n",
        "",
    ))
    .await
    .unwrap();
    let message = ready_message(&env.wait_ready("db", "FieldNotFound").await);
    assert!(message.contains("qa.db-password"), "{message}");
    for value in [&prod, &staging, &password] {
        assert!(!message.contains(value.as_str()), "{message}");
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_data_and_labels_sit_beside_the_items_data() {
    let key = secret_value("ssh-key");
    let repo = ItemSpec::new("repo").concealed("private key", &key);
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(repo));
    let mut env = TestEnv::new("shape-fixed", seed).await;
    env.start_operator(env.operator_config());
    // An Argo CD repository Secret.
    let shaping = "  data:\n  - {key: sshPrivateKey, field: private key}\n  \
                   fixedData:\n    type: git\n    url: git@github.com:example/repo.git\n  \
                   secretLabels:\n    argocd.argoproj.io/secret-type: repository\n  \
                   secretAnnotations:\n    example.com/owner: platform\n";
    env.apply(&shaped_manifest("repo", "repo", shaping, ""))
        .await
        .unwrap();
    env.wait_ready("repo", "Synced").await;
    let secret = env
        .wait_secret(
            "repo",
            "item and fixed data",
            has_data(&map(&[
                ("sshPrivateKey", &key),
                ("type", "git"),
                ("url", "git@github.com:example/repo.git"),
            ])),
        )
        .await;
    assert_eq!(
        secret
            .labels()
            .get("argocd.argoproj.io/secret-type")
            .map(String::as_str),
        Some("repository")
    );
    assert_eq!(
        secret
            .annotations()
            .get("example.com/owner")
            .map(String::as_str),
        Some("platform")
    );

    // Our own keys are refused, and the Secret stays as it was.
    let reserved = format!("{shaping}    operator.1password.io/item-version: \"99\"\n");
    env.apply(&shaped_manifest("repo", "repo", &reserved, ""))
        .await
        .unwrap();
    env.wait_ready("repo", "InvalidShape").await;
    let kept = env.secret("repo").await.unwrap();
    assert_eq!(kept.resource_version(), secret.resource_version());
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shaping_sample_syncs_against_the_demo_seed() {
    let root = env!("CARGO_MANIFEST_DIR");
    let seed = Seed::from_file(format!("{root}/tests/fixtures/sim/demo.yaml")).unwrap();
    let mut env = TestEnv::new("shape-sample", seed).await;
    env.start_operator(env.operator_config());
    let sample = std::fs::read_to_string(format!("{root}/config/samples/shaping.yaml")).unwrap();
    env.apply(&sample).await.unwrap();
    env.wait_ready("db-env", "Synced").await;
    env.wait_secret(
        "db-env",
        "the sample's keys",
        has_data(&map(&[
            ("DB_USER", "app"),
            ("DB_PASSWORD", "demo-db-password"),
            ("DB_HOST", "postgres.demo.svc"),
            ("DB_PORT", "5432"),
            ("DB_URL", "https://db.demo.example"),
            (
                "DATABASE_URL",
                "postgres://app:demo-db-password@postgres.demo.svc:5432/app?sslmode=require",
            ),
            ("DB_SSLMODE", "require"),
        ])),
    )
    .await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_key_is_rendered_and_an_edited_template_rewrites_the_secret() {
    // Characters a URL's user part cannot hold as they are.
    let password = format!("{}/@:x", secret_value("dsn"));
    let db = login("db", &password);
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(db));
    let mut env = TestEnv::new("shape-template", seed).await;
    env.start_operator(env.operator_config());
    let dsn = "postgres://{{ Fields.username }}:{{ Fields.password | urlencode }}@db:5432/app";
    let templated = |template: &str| format!("  template:\n    data:\n      DSN: '{template}'\n");
    let encoded = password
        .replace('/', "%2F")
        .replace('@', "%40")
        .replace(':', "%3A");
    // The item stays the same while the template changes: the Secret follows.
    for (what, query) in [
        ("the rendered DSN", ""),
        ("the edited template's", "?sslmode=require"),
    ] {
        env.apply(&shaped_manifest(
            "db",
            "db",
            &templated(&format!("{dsn}{query}")),
            "",
        ))
        .await
        .unwrap();
        env.wait_ready("db", "Synced").await;
        let expected = format!("postgres://app:{encoded}@db:5432/app{query}");
        let secret = env
            .wait_secret("db", what, has_data(&map(&[("DSN", &expected)])))
            .await;
        // With a template, the item's own keys are left out.
        assert_eq!(keys(&secret), ["DSN"]);
    }
    let rewritten = env.secret("db").await.unwrap();

    // A template that fails on the value: not Ready, naming the key and line, never the value;
    // the Secret stays as it was.
    env.apply(&shaped_manifest(
        "db",
        "db",
        &templated("{{ Fields.password | int }}"),
        "",
    ))
    .await
    .unwrap();
    let message = ready_message(&env.wait_ready("db", "TemplateError").await);
    assert!(message.contains("\"DSN\", line 1"), "{message}");
    assert!(!message.contains(&password), "{message}");
    for event in env.events_for("OnePasswordItem", "db").await {
        let note = event.note.unwrap_or_default();
        assert!(!note.contains(&password), "{note}");
    }
    let kept = env.secret("db").await.unwrap();
    assert_eq!(kept.resource_version(), rewritten.resource_version());

    // Go syntax: refused with how to write it here.
    env.apply(&shaped_manifest(
        "db",
        "db",
        &templated("{{ .Fields.password }}"),
        "",
    ))
    .await
    .unwrap();
    env.wait_ready_message(
        "db",
        "False",
        "spec.template.data key \"DSN\", line 1: syntax error: this is Go template syntax",
    )
    .await;
    env.finish().await;
}
