//! The official operator's own end-to-end manifests, applied unchanged, against this operator.
//!
//! `tests/fixtures/official/e2e-manifests/` holds the seven OnePasswordItems of the official
//! suite (1Password/onepassword-operator v1.12.0, `test/e2e/manifests/`). That suite
//! (`test/e2e/e2e_test.go`) applies them against the items of its test vault
//! `operator-acceptance-tests` and checks the Secrets; here a simulated vault holds equivalent
//! items (the same vault title, item titles, item id and field labels; values of our own), each
//! file is applied as it is with `kubectl apply -f`, and the same things are checked, with exact
//! data where the official suite only checks that a key exists or is not empty:
//! - `secret.yaml`: Secret `login` from item `test-login`: its fields, and its URLs under their
//!   labels, one `website` key (the primary URL's) beside `test-website`;
//! - `secret-vault-case.yaml`: the same item through the vault title in another case;
//! - `secret-26char-title.yaml`: an item whose title is 26 lowercase letters and digits, as an
//!   item id is, found by its title;
//! - `secret-by-uuid.yaml`: an item found by its id;
//! - `secret-with-file.yaml`: the item's file `test.txt` is a key with the file's content;
//! - `secret-for-update.yaml`: a new password of the item reaches the Secret;
//! - `secret-ignored.yaml`: the item has the `operator.1password.io:ignore-secret` tag, so its
//!   new password does not reach the Secret.
//!
//! Twice: under our CRD (the suite's shared control plane), and under the official v1.12.0 CRD
//! (cluster-wide, so on a control plane of the test's own), as a cluster that still has it sees.

use std::{collections::BTreeMap, path::Path};

use connect_sim::{ItemSpec, Seed, VaultSpec};
use k8s_openapi::api::core::v1::Secret;

use super::support::{
    OFFICIAL_CRD, POLL, TestEnv, data_of, has_data, has_item_version, map, secret_value,
};

const MANIFESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/official/e2e-manifests"
);
/// The official suite's test vault (`vaultName` in its `e2e_test.go`).
const VAULT: &str = "operator-acceptance-tests";
/// The item id `secret-by-uuid.yaml` names.
const ITEM_ID: &str = "a5x2mnd4rwiiiejsul2u424yv4";
/// The item title `secret-26char-title.yaml` names: shaped like an id, but no item's id.
const TITLE_26_CHARS: &str = "test26charlongitemtitle123";
const IGNORE_TAG: &str = "operator.1password.io:ignore-secret";

/// Which OnePasswordItem CRD the cluster has.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Crd {
    Ours,
    Official,
}

/// The test vault and the data each manifest's Secret must hold.
struct Vault {
    seed: Seed,
    /// Secret name -> its data, as first synced.
    want: BTreeMap<&'static str, BTreeMap<String, String>>,
}

/// A login item as the official test vault has them: a username and a password (what
/// `op item edit --generate-password` changes).
fn login(title: &str, password: &str) -> ItemSpec {
    ItemSpec::new(title)
        .username("operator-acceptance")
        .password(password)
}

fn vault() -> Vault {
    let mut want = BTreeMap::new();
    let mut vault = VaultSpec::new(VAULT);

    // `test-login`, for `secret.yaml` and `secret-vault-case.yaml`. Two URLs are labelled
    // `website`: the primary one gives the key, whatever their order.
    let password = secret_value("official-login");
    vault = vault.item(
        login("test-login", &password)
            .url("website", "https://other.acceptance.example", false)
            .url("website", "https://login.acceptance.example", true)
            .url("test-website", "https://test.acceptance.example", false),
    );
    let login_data = map(&[
        ("username", "operator-acceptance"),
        ("password", &password),
        ("website", "https://login.acceptance.example"),
        ("test-website", "https://test.acceptance.example"),
    ]);
    want.insert("login", login_data.clone());
    want.insert("login-case", login_data);

    for (title, secret, tags) in [
        ("secret-for-update", "secret-for-update", &[][..]),
        ("secret-ignored", "secret-ignored", &[IGNORE_TAG][..]),
        (TITLE_26_CHARS, "secret-26char-title", &[][..]),
    ] {
        let password = secret_value(&format!("official-{secret}"));
        let item = tags
            .iter()
            .fold(login(title, &password), |item, tag| item.tag(*tag));
        vault = vault.item(item);
        want.insert(
            secret,
            map(&[("username", "operator-acceptance"), ("password", &password)]),
        );
    }

    let password = secret_value("official-by-uuid");
    vault = vault.item(login("item-by-uuid", &password).id(ITEM_ID));
    want.insert(
        "secret-by-uuid",
        map(&[("username", "operator-acceptance"), ("password", &password)]),
    );

    let file = secret_value("official-test-txt");
    vault = vault.item(
        ItemSpec::new("secret-with-file")
            .username("operator-acceptance")
            .file("test.txt", &file),
    );
    want.insert(
        "secret-with-file",
        map(&[("username", "operator-acceptance"), ("test.txt", &file)]),
    );

    Vault {
        seed: Seed::new().vault(vault),
        want,
    }
}

/// `kubectl apply -f <file>` of one of the official manifests, as it is, in the test's
/// namespace (the manifests name none).
async fn apply_manifest(env: &TestEnv, file: &str) {
    let path = Path::new(MANIFESTS).join(file);
    assert!(path.is_file(), "{} is missing", path.display());
    env.kubectl(&["apply", "-f", &path.to_string_lossy()])
        .await
        .unwrap_or_else(|e| panic!("applying {file}: {e}"));
}

/// Waits until the item is Ready with this reason: the condition's `reason` under our CRD, the
/// message's lead under the official one (its status has no `reason`; no reason is a prefix of
/// another).
async fn wait_ready(env: &TestEnv, crd: Crd, name: &str, reason: &str) {
    match crd {
        Crd::Ours => {
            env.wait_ready(name, reason).await;
        }
        Crd::Official => env.wait_ready_message(name, "True", reason).await,
    }
}

/// The keys of a Secret that name a website.
fn website_keys(secret: &Secret) -> Vec<String> {
    data_of(secret)
        .into_keys()
        .filter(|k| k.contains("website"))
        .collect()
}

/// The official suite's cases, in its order, under the CRD the cluster has.
async fn the_official_cases_pass(
    mut env: TestEnv,
    crd: Crd,
    want: &BTreeMap<&str, BTreeMap<String, String>>,
) {
    env.start_operator(env.operator_config());
    // File, and the name of its OnePasswordItem and Secret.
    let manifests = [
        ("secret.yaml", "login"),
        ("secret-for-update.yaml", "secret-for-update"),
        ("secret-ignored.yaml", "secret-ignored"),
        ("secret-26char-title.yaml", "secret-26char-title"),
        ("secret-by-uuid.yaml", "secret-by-uuid"),
        ("secret-with-file.yaml", "secret-with-file"),
        ("secret-vault-case.yaml", "login-case"),
    ];
    for (file, _) in manifests {
        apply_manifest(&env, file).await;
    }
    let mut first = BTreeMap::new();
    for (file, name) in manifests {
        let reason = if name == "secret-ignored" {
            "Ignored"
        } else {
            "Synced"
        };
        wait_ready(&env, crd, name, reason).await;
        let synced = env
            .wait_secret(name, &format!("the data of {file}"), has_data(&want[name]))
            .await;
        first.insert(name, synced);
    }
    // One `website` key, beside `test-website`, in `login` and `login-case`.
    for secret in ["login", "login-case"] {
        assert_eq!(
            website_keys(&first[secret]),
            ["test-website", "website"],
            "{secret}"
        );
    }
    assert!(!data_of(&first["secret-with-file"])["test.txt"].is_empty());

    // A new password for both items, as `op item edit --generate-password` gives them.
    let updated = secret_value("official-secret-for-update-v2");
    env.sim
        .set_field(VAULT, "secret-for-update", "password", &updated)
        .unwrap();
    let ignored = secret_value("official-secret-ignored-v2");
    env.sim
        .set_field(VAULT, "secret-ignored", "password", &ignored)
        .unwrap();
    let mut want_updated = want["secret-for-update"].clone();
    want_updated.insert("password".into(), updated);
    env.wait_secret(
        "secret-for-update",
        "the new password",
        has_data(&want_updated),
    )
    .await;
    // The ignored item's new version is seen (its Secret's item-version follows, as the
    // official operator's does), and its data stays what it was, a poll interval later too
    // (the official suite waits one interval and two seconds).
    let version = env
        .sim
        .item(VAULT, "secret-ignored")
        .unwrap()
        .version
        .to_string();
    env.wait_secret(
        "secret-ignored",
        "the new item version",
        has_item_version(&version),
    )
    .await;
    tokio::time::sleep(POLL + std::time::Duration::from_secs(2)).await;
    let kept = env
        .secret("secret-ignored")
        .await
        .expect("Secret secret-ignored");
    assert_eq!(
        data_of(&kept),
        want["secret-ignored"],
        "the ignored item's data changed"
    );
    wait_ready(&env, crd, "secret-ignored", "Ignored").await;
    wait_ready(&env, crd, "secret-for-update", "Synced").await;
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_e2e_manifests_unchanged_give_the_secrets_the_official_suite_expects() {
    let Vault { seed, want } = vault();
    let env = TestEnv::new("official-e2e", seed).await;
    the_official_cases_pass(env, Crd::Ours, &want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_e2e_manifests_unchanged_pass_under_the_official_crd_too() {
    let Vault { seed, want } = vault();
    let env = TestEnv::with_own_control_plane("official-e2e-crd", seed).await;
    env.install_crd(OFFICIAL_CRD).await;
    the_official_cases_pass(env, Crd::Official, &want).await;
}
