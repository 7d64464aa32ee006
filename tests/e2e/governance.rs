//! Restart governance on the real control plane: the budget (at most K restarted workloads
//! rolling at once in a namespace, the rest queued, the queue kept across an operator restart),
//! the health gate (a failed rollout blocks the other restarts for the same change until a
//! person resumes them), and the circuit breaker (a flapping item stops causing restarts).
//!
//! There is no node here: pods stay Pending, so a restarted Deployment keeps rolling until the
//! test scales it to 0 (its rollout is then done) or its progress deadline passes (failed).
//! The same rules on a node, with pods that really become Ready, are the node tier's.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use connect_sim::{Seed, VaultSpec};
use k8s_openapi::api::apps::v1::Deployment;
use onepassword_secrets_operator::vocabulary::RESUME_RESTARTS_ANNOTATION;

use super::{QUIET, login, replica_set_count, restarted_for, sync_item, wait_recorded};
use crate::support::{OperatorId, TIMEOUT, TestEnv, secret_value, wait_for};

/// Deployment `name` (auto-restart on, one replica) using Secret `db` through `envFrom`, with
/// the given progress deadline.
fn deployment(name: &str, progress_deadline_s: u32) -> String {
    let with_deadline =
        format!("  replicas: 1\n  progressDeadlineSeconds: {progress_deadline_s}\n");
    super::deployment_using(name, "db", None).replacen("  replicas: 1\n", &with_deadline, 1)
}

/// A test namespace with item `db` synced and `count` Deployments `web-<i>` using it, each with
/// its baseline recorded and its first ReplicaSet; the operator runs with `env`.
async fn deployments_using_db(
    name: &str,
    count: usize,
    progress_deadline_s: u32,
    env_vars: &[(&str, &str)],
) -> (TestEnv, OperatorId, Vec<Deployment>) {
    let seed = Seed::new().vault(VaultSpec::new("E2E").item(login("db", &secret_value("db-v1"))));
    let mut env = TestEnv::new(name, seed).await;
    let mut config = env.operator_config();
    for (k, v) in env_vars {
        config = config.with_env(k, v);
    }
    let id = env.start_operator(config);
    sync_item(&env, "db", "vaults/E2E/items/db").await;
    let names: Vec<String> = (0..count).map(|i| format!("web-{i}")).collect();
    let manifests: Vec<String> = names
        .iter()
        .map(|n| deployment(n, progress_deadline_s))
        .collect();
    env.apply(&manifests.join("---\n")).await.unwrap();
    let mut deployments = Vec::new();
    for n in &names {
        let d: Deployment = wait_recorded(&env, n, &["db"]).await;
        super::wait_replica_sets(&env, &d, 1).await;
        deployments.push(d);
    }
    (env, id, deployments)
}

/// The Deployments the operator has restarted so far.
async fn restarted(env: &TestEnv, deployments: &[Deployment]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for d in deployments {
        let name = d.metadata.name.clone().unwrap();
        let live: Deployment = env.get(&name).await;
        if restarted_for(&live).is_some() {
            out.insert(name);
        }
    }
    out
}

/// Scales a Deployment to 0: with no pods to wait for, its rollout is done.
async fn finish_rollout(env: &TestEnv, name: &str) {
    env.kubectl(&["scale", "deployment", name, "--replicas=0"])
        .await
        .unwrap();
}

fn change_db(env: &TestEnv, version: &str) {
    env.sim
        .set_field("E2E", "db", "password", &secret_value(version))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_used_by_five_deployments_rolls_two_at_a_time_and_each_once_across_an_operator_restart()
 {
    let (mut env, id, deployments) = deployments_using_db(
        "restart-budget",
        5,
        600,
        &[
            ("RESTART_BUDGET_PER_NAMESPACE", "2"),
            ("RESTART_DEBOUNCE", "0"),
        ],
    )
    .await;
    let started = Instant::now();
    let mut timeline = Vec::new();
    change_db(&env, "db-v2");
    let mut done = BTreeSet::new();
    for (round, size) in [2, 2, 1].into_iter().enumerate() {
        let rolling = wait_for(
            &format!("round {round}: {size} Deployment(s) restarted and rolling"),
            TIMEOUT,
            async || {
                let now = restarted(&env, &deployments).await;
                let rolling: BTreeSet<String> = now.difference(&done).cloned().collect();
                assert!(
                    rolling.len() <= 2,
                    "more than 2 rolling at once: {rolling:?}"
                );
                (rolling.len() == size)
                    .then_some(rolling.clone())
                    .ok_or(format!("rolling: {rolling:?}"))
            },
        )
        .await;
        timeline.push(format!(
            "+{:>4.1}s restarted {rolling:?}",
            started.elapsed().as_secs_f64()
        ));
        if round == 0 {
            // The others wait, and say so.
            let waiting = deployments
                .iter()
                .map(|d| d.metadata.name.clone().unwrap())
                .find(|n| !rolling.contains(n))
                .unwrap();
            env.wait_event("Deployment", &waiting, "Normal", "RestartQueued")
                .await;
            // The queue is in the cluster: an operator killed mid-queue (SIGKILL) and started
            // again keeps it, and restarts nothing twice.
            env.kill_operator(id);
            let config = env
                .operator_config()
                .with_env("RESTART_BUDGET_PER_NAMESPACE", "2")
                .with_env("RESTART_DEBOUNCE", "0");
            env.start_operator(config);
            timeline.push(format!(
                "+{:>4.1}s operator killed (SIGKILL) and started again",
                started.elapsed().as_secs_f64()
            ));
        }
        tokio::time::sleep(QUIET).await;
        let now = restarted(&env, &deployments).await;
        let still: BTreeSet<String> = now.difference(&done).cloned().collect();
        assert_eq!(still, rolling, "no other restart while these roll");
        for name in &rolling {
            finish_rollout(&env, name).await;
        }
        timeline.push(format!(
            "+{:>4.1}s rollouts done {rolling:?}",
            started.elapsed().as_secs_f64()
        ));
        done.extend(rolling);
    }
    assert_eq!(done.len(), 5);
    for d in &deployments {
        assert_eq!(replica_set_count(&env, d).await, 2, "one rollout each");
    }
    eprintln!("budget 2, 5 Deployments:\n{}", timeline.join("\n"));
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rollout_blocks_the_other_restarts_for_that_change_until_a_person_resumes_them() {
    let (env, _, deployments) = deployments_using_db(
        "restart-blocked",
        3,
        5,
        &[
            ("RESTART_BUDGET_PER_NAMESPACE", "1"),
            ("RESTART_DEBOUNCE", "0"),
        ],
    )
    .await;
    change_db(&env, "db-v2");
    let first = wait_for("one Deployment restarted", TIMEOUT, async || {
        let now = restarted(&env, &deployments).await;
        (now.len() == 1)
            .then(|| now.iter().next().cloned().unwrap())
            .ok_or(format!("restarted: {now:?}"))
    })
    .await;
    let others: Vec<String> = deployments
        .iter()
        .map(|d| d.metadata.name.clone().unwrap())
        .filter(|n| *n != first)
        .collect();
    // Its pods never become Ready: past its 5 s progress deadline it has failed, and the
    // others are held with a Warning that names it and says how to resume.
    let note = wait_for("a RolloutBlocked event", TIMEOUT, async || {
        for name in &others {
            let events = env.events_for("Deployment", name).await;
            if let Some(e) = events
                .iter()
                .find(|e| e.reason.as_deref() == Some("RolloutBlocked"))
            {
                assert_eq!(e.type_.as_deref(), Some("Warning"));
                return Ok(e.note.clone().unwrap_or_default());
            }
        }
        Err("no RolloutBlocked event yet".to_string())
    })
    .await;
    assert!(
        note.contains(&format!("Deployment {}/{first}", env.ns)),
        "{note}"
    );
    assert!(note.contains("ProgressDeadlineExceeded"), "{note}");
    // The item whose change is held says so too.
    env.wait_event("OnePasswordItem", "db", "Warning", "RolloutBlocked")
        .await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        restarted(&env, &deployments).await,
        BTreeSet::from([first.clone()]),
        "held"
    );

    // The person resumes that change with the command the event gives.
    let fingerprint = note
        .split(&format!("{RESUME_RESTARTS_ANNOTATION}="))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the fingerprint in the note")
        .to_string();
    env.kubectl(&[
        "annotate",
        "--overwrite",
        "secret",
        "db",
        &format!("{RESUME_RESTARTS_ANNOTATION}={fingerprint}"),
    ])
    .await
    .unwrap();
    // One at a time (budget 1), each failing after its deadline, which frees the place.
    wait_for("every Deployment restarted", 2 * TIMEOUT, async || {
        let now = restarted(&env, &deployments).await;
        (now.len() == 3)
            .then_some(())
            .ok_or(format!("restarted: {now:?}"))
    })
    .await;
    for d in &deployments {
        assert_eq!(replica_set_count(&env, d).await, 2, "one rollout each");
    }
    env.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flapping_item_stops_causing_restarts_and_one_follows_once_it_is_stable() {
    let period = Duration::from_secs(20);
    let (env, _, deployments) = deployments_using_db(
        "restart-breaker",
        1,
        600,
        &[
            ("RESTART_DEBOUNCE", "0"),
            ("RESTART_BREAKER_CHANGES", "2"),
            ("RESTART_BREAKER_PERIOD", "20"),
        ],
    )
    .await;
    let web = &deployments[0];
    // A change every second for a minute (the operator sees one per check, every 2 s here).
    for i in 0..60 {
        change_db(&env, &format!("db-flap-{i}"));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    env.wait_event("Deployment", "web-0", "Warning", "RestartsPaused")
        .await;
    env.wait_event("OnePasswordItem", "db", "Warning", "RestartsPaused")
        .await;
    let during = replica_set_count(&env, web).await - 1;
    assert!(during <= 2, "{during} rollouts while flapping (breaker: 2)");
    // Stable for the period: exactly one more rollout, to the last data.
    let stable_at = Instant::now();
    super::wait_replica_sets(&env, web, during + 2).await;
    assert!(
        stable_at.elapsed() >= period - Duration::from_secs(4),
        "the rollout after the flapping came {:?} after it, within the period",
        stable_at.elapsed()
    );
    tokio::time::sleep(QUIET).await;
    assert_eq!(replica_set_count(&env, web).await, during + 2);
    env.finish().await;
}
