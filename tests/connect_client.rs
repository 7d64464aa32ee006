//! The Connect client and the catalog against the Connect simulator, over real HTTP: success,
//! every error class, retries, title ambiguity, files, TLS with a private CA, and a token that
//! never leaks.

use std::{collections::HashSet, time::Duration};

use connect_sim::{Fault, ItemSpec, Seed, Simulator, TokenAccess, VaultSpec};
use onepassword_secrets_operator::{
    catalog::Catalog,
    connect::{ConnectClient, ConnectConfig, ConnectError, ItemPath, RetryPolicy, Token},
};

const TOKEN: &str = "tok-eyJhbGciOiJFUzI1NiIsImtpZCI6InNlY3JldC10b2tlbiJ9";
const PROD_ONLY: &str = "tok-prod-only";

fn seed() -> Seed {
    Seed::new()
        .vault(
            VaultSpec::new("Prod")
                .item(
                    ItemSpec::new("db")
                        .username("admin")
                        .password("pw-value-1")
                        .created_at("2024-01-02T00:00:00Z"),
                )
                .item(
                    ItemSpec::new("dup")
                        .password("newer")
                        .created_at("2024-05-01T00:00:00Z"),
                )
                .item(
                    ItemSpec::new("dup")
                        .password("older")
                        .created_at("2023-05-01T00:00:00Z"),
                )
                .item(
                    ItemSpec::new("tls")
                        .file("tls.crt", b"CERT-BYTES".as_slice())
                        .file("big.bin", vec![7u8; 150 * 1024]),
                ),
        )
        .vault(VaultSpec::new("Staging").item(ItemSpec::new("db").password("staging-pw")))
        .token(TOKEN, TokenAccess::All)
        .token(PROD_ONLY, TokenAccess::vaults(["Prod"]))
}

/// A client with short timeouts and retries, so failure tests stay quick.
fn client(sim: &Simulator, token: &str) -> ConnectClient {
    let mut config = ConnectConfig::new(&sim.url(), Token::new(token)).unwrap();
    config.timeout = Duration::from_millis(800);
    config.retry = RetryPolicy {
        max_retries: 2,
        base_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        max_retry_after: Duration::from_secs(2),
    };
    ConnectClient::new(config).unwrap()
}

fn path(p: &str) -> ItemPath {
    ItemPath::parse(p).unwrap()
}

fn assert_no_token(text: &str) {
    assert!(!text.contains(TOKEN), "the token leaked: {text}");
    assert!(!text.contains("eyJhbGci"), "the token leaked: {text}");
}

#[tokio::test]
async fn fetches_an_item_by_titles_and_by_ids() {
    let sim = Simulator::start(seed()).unwrap();
    let c = client(&sim, TOKEN);
    let (resolved, item) = c
        .fetch_by_path(&path("vaults/Prod/items/db"))
        .await
        .unwrap();
    assert_eq!(item.item.title, "db");
    assert!(resolved.note.is_none());
    let password = item
        .item
        .fields
        .iter()
        .find(|f| f.label == "password")
        .unwrap();
    assert_eq!(password.value.as_deref(), Some("pw-value-1"));

    let by_id = format!("vaults/{}/items/{}", resolved.vault_id, resolved.item_id);
    let (again, _) = c.fetch_by_path(&path(&by_id)).await.unwrap();
    assert_eq!(again, resolved);
    // Vault by title (one listing with a filter), item by id (one GET).
    sim.reset_counts();
    let mixed = format!("vaults/Prod/items/{}", resolved.item_id);
    c.fetch_by_path(&path(&mixed)).await.unwrap();
    assert_eq!(sim.count("list_vaults"), 1);
    assert_eq!(sim.count("get_item"), 1);
    assert_eq!(sim.count("list_items"), 0);

    // A vault title matches ignoring case, as in the official operator.
    let (by_other_case, _) = c
        .fetch_by_path(&path("vaults/pROD/items/db"))
        .await
        .unwrap();
    assert_eq!(by_other_case, resolved);
}

#[tokio::test]
async fn duplicate_titles_resolve_to_the_oldest_and_say_so() {
    let sim = Simulator::start(seed()).unwrap();
    let c = client(&sim, TOKEN);
    let (resolved, item) = c
        .fetch_by_path(&path("vaults/Prod/items/dup"))
        .await
        .unwrap();
    let pw = item
        .item
        .fields
        .iter()
        .find(|f| f.label == "password")
        .unwrap();
    assert_eq!(pw.value.as_deref(), Some("older"));
    let note = resolved.note.unwrap();
    assert!(note.contains("2 items are titled \"dup\""), "{note}");
}

#[tokio::test]
async fn files_come_inline_in_one_request_and_large_ones_by_content_path() {
    let sim = Simulator::start(seed()).unwrap();
    let c = client(&sim, TOKEN);
    sim.reset_counts();
    let (_, item) = c
        .fetch_by_path(&path("vaults/Prod/items/tls"))
        .await
        .unwrap();
    let by_name = |n: &str| {
        item.files
            .iter()
            .find(|f| f.name == n)
            .unwrap()
            .content
            .clone()
    };
    assert_eq!(by_name("tls.crt"), b"CERT-BYTES");
    assert_eq!(by_name("big.bin"), vec![7u8; 150 * 1024]);
    // The listing with inline content is refused (413, one file is over 100 KB), so each file
    // is then downloaded from its content path.
    assert_eq!(sim.count("list_files"), 1);
    assert_eq!(sim.count("get_file_content"), 2);
}

#[tokio::test]
async fn small_files_cost_one_request_for_all_of_them() {
    let sim = Simulator::start(
        Seed::new()
            .vault(
                VaultSpec::new("V").item(
                    ItemSpec::new("certs")
                        .file("a.pem", b"A".as_slice())
                        .file("b.pem", b"B".as_slice())
                        .file("c.pem", b"C".as_slice()),
                ),
            )
            .token(TOKEN, TokenAccess::All),
    )
    .unwrap();
    let c = client(&sim, TOKEN);
    sim.reset_counts();
    let (_, item) = c
        .fetch_by_path(&path("vaults/V/items/certs"))
        .await
        .unwrap();
    assert_eq!(item.files.len(), 3);
    assert_eq!(sim.count("list_files"), 1);
    assert_eq!(sim.count("get_file_content"), 0);
}

#[tokio::test]
async fn each_error_class_is_told_apart() {
    let sim = Simulator::start(seed()).unwrap();
    let good = client(&sim, TOKEN);
    let cases: Vec<(ConnectError, &str)> = vec![
        (
            client(&sim, "wrong-token").list_vaults().await.unwrap_err(),
            "Unauthorized",
        ),
        (
            good.fetch_by_path(&path("vaults/Nope/items/db"))
                .await
                .unwrap_err(),
            "VaultNotFound",
        ),
        (
            good.fetch_by_path(&path("vaults/Prod/items/nope"))
                .await
                .unwrap_err(),
            "ItemNotFound",
        ),
        (
            good.get_item("not-an-id", "also-not").await.unwrap_err(),
            "BadRequest",
        ),
    ];
    for (err, reason) in cases {
        assert_eq!(err.reason(), reason, "{err}");
        assert!(!err.is_transient(), "{err}");
    }
    // A vault the token was not granted: 403.
    let staging = sim.vault("Staging").unwrap();
    let err = client(&sim, PROD_ONLY)
        .list_items(&staging.id)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "VaultForbidden", "{err}");
    // And a title lookup of it finds nothing, as for an unknown vault.
    let err = client(&sim, PROD_ONLY)
        .fetch_by_path(&path("vaults/Staging/items/db"))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "VaultNotFound", "{err}");
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_then_succeed() {
    let sim = Simulator::start(seed()).unwrap();
    let c = client(&sim, TOKEN);
    sim.inject(Fault::internal_error().on("list_vaults").times(2));
    sim.reset_counts();
    let vaults = c.list_vaults().await.unwrap();
    assert_eq!(vaults.len(), 2);
    assert_eq!(sim.count("list_vaults"), 3);
}

#[tokio::test]
async fn persistent_server_errors_give_up_after_the_retry_budget() {
    let sim = Simulator::start(seed()).unwrap();
    let c = client(&sim, TOKEN);
    sim.inject(Fault::internal_error().on("list_vaults"));
    sim.reset_counts();
    let err = c.list_vaults().await.unwrap_err();
    assert_eq!(err.reason(), "ConnectUnavailable", "{err}");
    assert!(err.is_transient());
    assert_eq!(sim.count("list_vaults"), 3, "one try and two retries");
}

#[tokio::test]
async fn rate_limits_honour_retry_after() {
    let sim = Simulator::start(seed()).unwrap();
    let c = client(&sim, TOKEN);
    sim.inject(Fault::too_many_requests(1).on("list_vaults").times(1));
    let started = std::time::Instant::now();
    c.list_vaults().await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "{:?}",
        started.elapsed()
    );

    // Longer than the client waits inside a request: the caller gets it back to requeue.
    sim.inject(Fault::too_many_requests(60).on("list_vaults").times(1));
    let err = c.list_vaults().await.unwrap_err();
    assert_eq!(
        err,
        ConnectError::RateLimited {
            retry_after: Some(Duration::from_secs(60))
        }
    );
}

#[tokio::test]
async fn a_slow_server_times_out() {
    let sim = Simulator::start(seed()).unwrap();
    let c = client(&sim, TOKEN);
    sim.inject(Fault::delay(Duration::from_secs(3)).on("list_vaults"));
    let started = std::time::Instant::now();
    let err = c.list_vaults().await.unwrap_err();
    assert!(matches!(err, ConnectError::Timeout(_)), "{err}");
    // Three attempts of 0.8 s plus small backoffs: bounded, not 9 s.
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn dropped_connections_and_a_server_that_is_down_are_unreachable() {
    let sim = Simulator::start(seed()).unwrap();
    let c = client(&sim, TOKEN);
    sim.inject(Fault::drop_connection().on("list_vaults"));
    let err = c.list_vaults().await.unwrap_err();
    assert_eq!(err.reason(), "ConnectUnavailable", "{err}");
    sim.clear_faults();

    sim.down().unwrap();
    let err = c.list_vaults().await.unwrap_err();
    assert!(matches!(err, ConnectError::Unreachable(_)), "{err}");
    assert_no_token(&err.to_string());
    sim.resume().unwrap();
    assert_eq!(c.list_vaults().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_malformed_body_is_a_bad_response() {
    let sim = Simulator::start(seed()).unwrap();
    let c = client(&sim, TOKEN);
    sim.inject(Fault::malformed_json().on("list_vaults").times(1));
    let err = c.list_vaults().await.unwrap_err();
    assert_eq!(err.reason(), "BadResponse", "{err}");
}

#[tokio::test]
async fn the_token_never_appears_in_errors_or_debug_output() {
    let sim = Simulator::start(seed()).unwrap();
    let c = client(&sim, TOKEN);
    assert_no_token(&format!("{c:?}"));
    sim.inject(Fault::internal_error().on("list_vaults"));
    let err = c.list_vaults().await.unwrap_err();
    assert_no_token(&format!("{err} {err:?}"));
    sim.clear_faults();
    let bad = client(&sim, &format!("{TOKEN}-revoked"));
    let err = bad.list_vaults().await.unwrap_err();
    assert_no_token(&format!("{err} {err:?} {bad:?}"));
}

#[tokio::test]
async fn tls_with_a_private_ca_works_only_when_the_ca_is_given() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/sim");
    let cert = std::fs::read(format!("{dir}/server.crt")).unwrap();
    let key = std::fs::read(format!("{dir}/server.key")).unwrap();
    let sim = Simulator::start_tls(seed(), &cert, &key).unwrap();
    assert!(sim.url().starts_with("https://"), "{}", sim.url());

    let ca_file = format!("{dir}/ca.crt");
    let url = sim.url();
    let env = |k: &str| match k {
        "OP_CONNECT_HOST" => Some(url.clone()),
        "OP_CONNECT_TOKEN" => Some(TOKEN.to_string()),
        "OP_CONNECT_CA_FILE" => Some(ca_file.clone()),
        _ => None,
    };
    let trusted = ConnectClient::new(ConnectConfig::from_env(env).unwrap()).unwrap();
    assert_eq!(trusted.list_vaults().await.unwrap().len(), 2);

    let mut untrusting = ConnectConfig::new(&sim.url(), Token::new(TOKEN)).unwrap();
    untrusting.retry.max_retries = 0;
    let err = ConnectClient::new(untrusting)
        .unwrap()
        .list_vaults()
        .await
        .unwrap_err();
    assert!(matches!(err, ConnectError::Unreachable(_)), "{err}");
}

#[tokio::test]
async fn an_idle_poll_costs_one_request_and_a_change_one_listing_more() {
    let sim = Simulator::start(seed()).unwrap();
    let catalog = Catalog::new(client(&sim, TOKEN));
    let db = catalog
        .resolve(&path("vaults/Prod/items/db"))
        .await
        .unwrap();
    let staging = catalog
        .resolve(&path("vaults/Staging/items/db"))
        .await
        .unwrap();
    let in_use: HashSet<String> = [db.vault_id.clone(), staging.vault_id.clone()].into();
    // Warm: the first refresh records each vault's contentVersion.
    catalog.refresh(&in_use, false).await.unwrap();

    sim.reset_counts();
    let report = catalog.refresh(&in_use, false).await.unwrap();
    assert_eq!(sim.total_requests(), 1, "{:?}", sim.counts());
    assert_eq!(report.unchanged, 2);

    sim.set_field("Prod", "db", "password", "pw-value-2")
        .unwrap();
    sim.reset_counts();
    let report = catalog.refresh(&in_use, false).await.unwrap();
    assert_eq!(report.listed, vec![db.vault_id.clone()]);
    assert_eq!(sim.counts().get("list_items"), Some(&1));
    assert_eq!(sim.total_requests(), 2);
    let now = catalog
        .resolve_cached(&path("vaults/Prod/items/db"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(now.version, db.version + 1);

    // A verifying cycle lists one unchanged vault more whatever contentVersion says, the one
    // listed longest ago: Staging (Prod was just listed), then Prod, then Staging again.
    for expected in [&staging.vault_id, &db.vault_id, &staging.vault_id] {
        sim.reset_counts();
        let report = catalog.refresh(&in_use, true).await.unwrap();
        assert_eq!(report.listed, vec![expected.clone()]);
        assert_eq!(report.unchanged, 1);
        assert_eq!(sim.total_requests(), 2, "{:?}", sim.counts());
    }
    // A vault listed for its change does not count as the verification.
    sim.set_field("Staging", "db", "password", "staging-pw-2")
        .unwrap();
    sim.reset_counts();
    let mut report = catalog.refresh(&in_use, true).await.unwrap();
    report.listed.sort();
    let mut both = vec![db.vault_id.clone(), staging.vault_id.clone()];
    both.sort();
    assert_eq!(report.listed, both);
}

#[tokio::test]
async fn a_poll_that_cannot_list_a_vault_is_remembered_for_that_vault_until_one_can() {
    let sim = Simulator::start(seed()).unwrap();
    let catalog = Catalog::new(client(&sim, TOKEN));
    let prod = catalog
        .resolve(&path("vaults/Prod/items/db"))
        .await
        .unwrap()
        .vault_id;
    let staged = catalog
        .resolve(&path("vaults/Staging/items/db"))
        .await
        .unwrap();
    let staging = staged.vault_id.clone();
    let in_use: HashSet<String> = [prod.clone(), staging.clone()].into();
    catalog.refresh(&in_use, false).await.unwrap();
    assert_eq!(catalog.refresh_failure(&prod).await, None);

    // The token is refused: the vault list fails, and with it every vault.
    sim.remove_token(TOKEN).unwrap();
    let err = catalog.refresh(&in_use, false).await.unwrap_err();
    assert_eq!(err.reason(), "Unauthorized");
    for vault in [&prod, &staging] {
        let failure = catalog.refresh_failure(vault).await.expect("remembered");
        assert_eq!(failure.reason(), "Unauthorized");
    }
    // What was cached is still there: the Secrets stay as they are.
    assert!(
        catalog
            .resolve_cached(&path("vaults/Prod/items/db"))
            .await
            .unwrap()
            .is_ok()
    );
    sim.add_token(TOKEN, TokenAccess::All).unwrap();
    catalog.refresh(&in_use, false).await.unwrap();
    assert_eq!(catalog.refresh_failure(&prod).await, None);

    // One vault's listing fails: that vault only; the other is listed all the same.
    sim.set_field("Prod", "db", "password", "pw-value-2")
        .unwrap();
    sim.set_field("Staging", "db", "password", "staging-pw-2")
        .unwrap();
    let mut fault = Fault::internal_error();
    fault.path_prefix = Some(format!("/v1/vaults/{prod}/items"));
    sim.inject(fault);
    let report = catalog.refresh(&in_use, false).await.unwrap();
    assert_eq!(report.failed, vec![prod.clone()]);
    assert_eq!(
        catalog.refresh_failure(&prod).await.map(|e| e.reason()),
        Some("ConnectUnavailable")
    );
    assert_eq!(catalog.refresh_failure(&staging).await, None);
    let now = catalog
        .resolve_cached(&path("vaults/Staging/items/db"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        now.version,
        staged.version + 1,
        "the healthy vault was listed"
    );
    sim.clear_faults();
    catalog.refresh(&in_use, false).await.unwrap();
    assert_eq!(catalog.refresh_failure(&prod).await, None);
}

#[tokio::test]
async fn a_new_item_is_found_without_waiting_for_a_poll() {
    let sim = Simulator::start(seed()).unwrap();
    let catalog = Catalog::new(client(&sim, TOKEN));
    catalog
        .resolve(&path("vaults/Prod/items/db"))
        .await
        .unwrap();
    sim.put_item("Prod", ItemSpec::new("fresh").password("x"))
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let found = catalog
        .resolve(&path("vaults/Prod/items/fresh"))
        .await
        .unwrap();
    assert_eq!(found.version, 1);
}

#[tokio::test]
async fn a_rotated_token_in_the_token_file_is_picked_up_without_a_restart() {
    let sim = Simulator::start(seed()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let (url, path) = (sim.url(), file.to_string_lossy().to_string());
    let env = |k: &str| match k {
        "OP_CONNECT_HOST" => Some(url.clone()),
        "OP_CONNECT_TOKEN_FILE" => Some(path.clone()),
        _ => None,
    };
    let c = ConnectClient::new(ConnectConfig::from_env(env).unwrap()).unwrap();
    assert_eq!(c.list_vaults().await.unwrap().len(), 2);

    // The old token is revoked and the mounted Secret now holds a new one.
    let rotated = "tok-rotated-7f3a";
    sim.add_token(rotated, TokenAccess::All).unwrap();
    sim.remove_token(TOKEN).unwrap();
    std::fs::write(&file, rotated).unwrap();
    assert_eq!(c.list_vaults().await.unwrap().len(), 2);
    assert_no_token(&format!("{c:?}"));
    assert!(!format!("{c:?}").contains(rotated));

    // A token that is refused and not replaced stays an Unauthorized error.
    sim.remove_token(rotated).unwrap();
    let err = c.list_vaults().await.unwrap_err();
    assert_eq!(err.reason(), "Unauthorized");
}

#[tokio::test]
async fn responses_and_files_over_the_size_limit_are_refused_without_holding_them() {
    let big = "x".repeat(200 * 1024);
    let sim = Simulator::start(
        Seed::new()
            .vault(
                VaultSpec::new("V")
                    .item(ItemSpec::new("huge").password(&big))
                    .item(ItemSpec::new("big-file").file("blob.bin", vec![1u8; 200 * 1024])),
            )
            .token(TOKEN, TokenAccess::All),
    )
    .unwrap();
    let mut config = ConnectConfig::new(&sim.url(), Token::new(TOKEN)).unwrap();
    config.max_body_bytes = 64 * 1024;
    let c = ConnectClient::new(config).unwrap();
    let err = c
        .fetch_by_path(&path("vaults/V/items/huge"))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "BadResponse", "{err}");
    assert!(err.to_string().contains("larger than"), "{err}");
    assert!(!err.to_string().contains("xxxxxx"), "{err}");
    // A file is refused from its listed size, before any download.
    sim.reset_counts();
    let err = c
        .fetch_by_path(&path("vaults/V/items/big-file"))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "ItemTooLarge", "{err}");
    assert_eq!(sim.count("get_file_content") + sim.count("list_files"), 0);
}

#[tokio::test]
async fn a_listing_over_the_body_limit_is_streamed_and_every_summary_kept() {
    // Long titles make 9,000 summaries weigh about 11 MB, over the 8 MiB body limit that every
    // listing used to hit (a vault of 45,000 real summaries is about 9.4 MB).
    let title = |i: usize| format!("item-{i:05}-{}", "t".repeat(1200));
    let mut vault = VaultSpec::new("Big");
    for i in 0..9_000 {
        vault = vault.item(ItemSpec::new(title(i)).password("pw"));
    }
    let sim = Simulator::start(Seed::new().vault(vault).token(TOKEN, TokenAccess::All)).unwrap();
    let c = ConnectClient::new(ConnectConfig::new(&sim.url(), Token::new(TOKEN)).unwrap()).unwrap();
    let vault_id = c.vaults_by_title("Big").await.unwrap()[0].id.clone();
    let items = c.list_items(&vault_id).await.unwrap();
    assert_eq!(items.len(), 9_000);
    let titles: HashSet<&str> = items.iter().map(|i| i.title.as_str()).collect();
    assert!((0..9_000).all(|i| titles.contains(title(i).as_str())));
    assert!(
        items
            .iter()
            .all(|i| i.vault.id == vault_id && i.version > 0)
    );
}

#[tokio::test]
async fn a_huge_or_malformed_element_of_a_listing_is_refused_cleanly() {
    let huge_title = format!("huge-{}", "h".repeat(1100 * 1024));
    let sim = Simulator::start(
        Seed::new()
            .vault(
                VaultSpec::new("V")
                    .item(ItemSpec::new("small").password("pw"))
                    .item(ItemSpec::new(&huge_title).password("pw")),
            )
            .token(TOKEN, TokenAccess::All),
    )
    .unwrap();
    let c = client(&sim, TOKEN);
    let vault_id = c.vaults_by_title("V").await.unwrap()[0].id.clone();
    // One summary over the per-element bound (1 MiB) fails the listing, without holding it.
    let err = c.list_items(&vault_id).await.unwrap_err();
    assert_eq!(err.reason(), "BadResponse", "{err}");
    assert!(
        err.to_string().contains("larger than 1048576 bytes"),
        "{err}"
    );
    assert!(!err.to_string().contains("hhhhhh"), "{err}");
    // A body cut short is refused too, and then the next listing reads fine.
    sim.inject(Fault::malformed_json().on("list_vaults").times(1));
    let err = c.list_vaults().await.unwrap_err();
    assert_eq!(err.reason(), "BadResponse", "{err}");
    assert_eq!(c.list_vaults().await.unwrap().len(), 1);
}
