//! At default settings a change in 1Password reaches its Secret in seconds, while an idle
//! operator asks Connect for one vault list per change check and nothing else.

use std::time::{Duration, Instant};

use connect_sim::{Seed, VaultSpec};

use super::{item_manifest, login, sync_item};
use crate::support::{TestEnv, data_of, secret_value};

/// The default `CHANGE_CHECK_INTERVAL`.
const CHECK: Duration = Duration::from_secs(6);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_default_settings_a_change_arrives_in_seconds_and_idle_costs_one_vault_list_per_check() {
    let db = VaultSpec::new("E2E").item(login("db", &secret_value("first")));
    let seed = Seed::new().vault(db).vault(VaultSpec::new("Empty"));
    let mut env = TestEnv::new("propagation", seed).await;
    // The official operator's default poll interval; the change check left at its default.
    env.start_operator(env.operator_config().with_env("POLLING_INTERVAL", "600"));
    sync_item(&env, "db", "vaults/E2E/items/db").await;
    // Nothing else uses its vault, so only asking Connect would tell when its item appears:
    // that is for once per poll interval, not for every check.
    env.apply(&item_manifest("missing", "vaults/Empty/items/not-yet"))
        .await
        .unwrap();
    env.wait_ready("missing", "ItemNotFound").await;

    // Idle: a vault list per check, and no item listed or fetched.
    env.sim.reset_counts();
    let idle = Duration::from_secs(20);
    tokio::time::sleep(idle).await;
    let checks = env.sim.count("list_vaults");
    let expected = idle.as_secs() / CHECK.as_secs();
    assert!(
        (expected..=expected + 1).contains(&checks),
        "{checks} vault lists in {idle:?}, expected one per {CHECK:?}: {:?}",
        env.sim.counts()
    );
    assert_eq!(env.sim.total_requests(), checks, "{:?}", env.sim.counts());

    // Changes at random moments between checks each arrive within about one check.
    let mut lags = Vec::new();
    for n in 0..3 {
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..6_000))).await;
        env.sim.reset_counts();
        let password = secret_value(&format!("change-{n}"));
        env.sim
            .set_field("E2E", "db", "password", &password)
            .unwrap();
        let changed = Instant::now();
        env.wait_secret("db", "the new password", |s| {
            (data_of(s).get("password") == Some(&password))
                .then_some(())
                .ok_or_else(|| "still the old password".into())
        })
        .await;
        lags.push(changed.elapsed());
        assert_eq!(
            env.sim.count("list_items"),
            1,
            "one listing of the changed vault: {:?}",
            env.sim.counts()
        );
    }
    println!("changes reached the Secret in {lags:?}");
    for lag in &lags {
        assert!(
            *lag <= CHECK + Duration::from_secs(9),
            "a change took {lag:?} with a change check every {CHECK:?}: {lags:?}"
        );
    }
    env.finish().await;
}
