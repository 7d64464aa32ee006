//! The operator process: reads its configuration, then runs the controllers, the poller and
//! the operations HTTP server until SIGTERM or Ctrl-C.

/// jemalloc: less memory kept than glibc's malloc after the peaks of a cold start, and fast
/// under musl too (Cargo.toml).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::{process::ExitCode, sync::Arc};

use clap::Parser;
use futures::channel::mpsc;
use onepassword_secrets_operator::{
    catalog::Catalog,
    config::{Args, parse_bind_address},
    connect::{ConnectClient, ConnectConfig},
    controller::{self, Context, Settings, poller::Triggers},
    http::{self, Health},
    leader::{Elector, LeaderConfig},
    policy::VaultPolicy,
    restart,
    telemetry::{self, Metrics},
};
use tokio_util::sync::CancellationToken;

/// How long tasks may take to finish after SIGTERM before they are stopped.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(e) = telemetry::init_logging(args.effective_log_format(), args.effective_log_level())
    {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    // A panic message may hold values (`expect` prints the error): only its location and
    // literal messages are printed.
    telemetry::install_panic_hook();
    let ignored = args.ignored.given();
    if !ignored.is_empty() {
        tracing::warn!(
            flags = %ignored.join(" "),
            "flags of the official operator accepted but without effect here (metrics are served over plain HTTP)"
        );
    }
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let metrics = Metrics::new();
    let connect = connect_client(&metrics)?;
    let namespaces = args.namespaces();
    if namespaces == controller::Namespaces::All {
        tracing::info!("WATCH_NAMESPACE is empty: watching all namespaces");
    }
    let kube_config = kube::Config::infer().await.map_err(|e| {
        format!("cannot build a Kubernetes client (kubeconfig or in-cluster config): {e}")
    })?;
    let client = kube::Client::try_from(with_api_timeouts(kube_config.clone()))
        .map_err(|e| format!("cannot build a Kubernetes client: {e}"))?;
    let settings = Settings {
        namespaces: namespaces.clone(),
        poll_interval: args.polling_interval,
        resync_interval: args.resync_interval,
        allow_empty_values: args.allow_empty_values,
        enable_annotations: args.enable_annotations,
        auto_restart: args.auto_restart,
        concurrency: args.max_concurrent_reconciles,
        governance: args.governance(),
        vault_policy: match &args.vault_policy_file {
            None => None,
            Some(path) => {
                let policy = VaultPolicy::load(path).map_err(|e| e.to_string())?;
                tracing::info!(file = %path.display(), rules = policy.rule_count(), "vault policy loaded: namespaces read only the vaults it allows");
                Some(Arc::new(policy))
            }
        },
    };
    let schedule =
        controller::poller::Schedule::new(args.polling_interval, args.change_check_interval);
    tracing::info!(
        connect = %connect.host(),
        poll_interval_s = args.polling_interval.as_secs(),
        change_check_interval_s = schedule.check.as_secs_f64(),
        auto_restart = args.auto_restart,
        namespaces = ?namespaces,
        "starting"
    );
    let ctx = Arc::new(Context::new(
        client.clone(),
        Catalog::new(connect.clone()),
        metrics.clone(),
        settings,
    ));
    let stop = CancellationToken::new();
    tokio::spawn(cancel_on_signal(stop.clone()));
    let shutdown = || stop.clone().cancelled_owned();
    let health = Health::new();

    let mut tasks = tokio::task::JoinSet::new();
    let metrics_addr = parse_bind_address(&args.metrics_bind_address)?;
    let health_addr = parse_bind_address(&args.health_probe_bind_address)?;
    let servers = match (metrics_addr, health_addr) {
        (Some(m), Some(h)) if m == h => vec![(m, http::Routes::All)],
        (m, h) => [(m, http::Routes::Metrics), (h, http::Routes::Health)]
            .into_iter()
            .filter_map(|(addr, routes)| addr.map(|a| (a, routes)))
            .collect(),
    };
    for (addr, routes) in servers {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let server = http::serve(
            listener,
            routes,
            metrics.clone(),
            health.clone(),
            shutdown(),
        );
        tasks.spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(error = %e, "operations HTTP server stopped");
            }
        });
    }

    // Probes do not depend on leadership: a follower is alive and ready (a rolling update waits
    // for the new pod to be ready before it stops the old leader). Liveness follows the tasks
    // registered below; tasks that end after the signal are expected.
    tasks.spawn({
        let (health, stop) = (health.clone(), stop.clone());
        async move {
            stop.cancelled().await;
            health.set_stopping();
        }
    });
    tasks.spawn(ready_when_connect_answers(
        connect,
        health.clone(),
        shutdown(),
    ));

    // With --leader-elect, only the Lease holder runs the controllers; the others serve probes
    // and metrics and wait.
    let elector = if args.leader_elect {
        let leader = leader_config()?;
        let lease_client = kube::Client::try_from(leader.lease_client_config(kube_config))
            .map_err(|e| format!("cannot build a Kubernetes client: {e}"))?;
        let elector = Arc::new(Elector::new(lease_client, leader));
        let renewed = tokio::select! {
            acquired = elector.acquire() => acquired.map_err(|e| e.to_string())?,
            _ = stop.cancelled() => return Ok(()),
        };
        // Renewals go on while the tasks drain after a signal, so the renew deadline holds
        // then too; they stop just before the Lease is released.
        let holder = elector.clone();
        let holding = tokio::spawn(async move {
            holder.hold(renewed).await;
            // As controller-runtime does: exit now rather than shut down gracefully, so no
            // write is sent after the renew deadline, before a follower may take over. The
            // pod restarts as a follower.
            tracing::error!("lost the leader Lease; exiting so a restart comes back as a follower");
            std::process::exit(1);
        });
        Some((elector, holding))
    } else {
        None
    };

    let mut triggers = Triggers::default();
    let mut restart_feeds = Vec::new();
    for scope in namespaces.scopes() {
        let (tx, rx) = mpsc::unbounded();
        triggers.items.insert(scope.clone(), tx);
        let name = |kind: &str| match &scope {
            Some(ns) => format!("{kind} controller ({ns})"),
            None => format!("{kind} controller"),
        };
        // One watch of the scope's managed Secrets for the three controllers that read them.
        let mut secrets = controller::SecretWatch::new(scope.clone());
        tasks.spawn(health.watch(
            name("OnePasswordItem"),
            controller::item::run(
                ctx.clone(),
                scope.clone(),
                secrets.subscribe(),
                rx,
                shutdown(),
            ),
        ));
        let (tx, rx) = mpsc::unbounded();
        triggers.deployments.insert(scope.clone(), tx);
        tasks.spawn(health.watch(
            name("Deployment"),
            controller::deployment::run(ctx.clone(), scope.clone(), secrets.feed(), rx, shutdown()),
        ));
        restart_feeds.push((scope.clone(), secrets.feed()));
        tasks.spawn(health.watch(
            name("managed Secret watch"),
            secrets.run(client.clone(), shutdown()),
        ));
    }
    tasks.spawn(health.watch(
        "OnePasswordItem CRD watch".into(),
        controller::crd_probe::run(client.clone(), ctx.status_schema.clone(), shutdown()),
    ));
    let poller = health.task("poller", Some(controller::poller::staleness(schedule)));
    tasks.spawn(controller::poller::run(
        ctx.clone(),
        triggers,
        schedule,
        poller,
        shutdown(),
    ));
    tasks.spawn(health.watch(
        "status writers".into(),
        controller::status_queue::run(
            ctx.clone(),
            usize::from(args.max_concurrent_reconciles),
            shutdown(),
        ),
    ));
    tasks.spawn(health.watch(
        "restart controller".into(),
        restart::controller::run(ctx.clone(), restart_feeds, shutdown()),
    ));

    // After the signal, tasks get a few seconds to finish what they are doing; a controller
    // stopped before its first listing completed may otherwise wait for it forever.
    let grace = async {
        stop.cancelled().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::pin!(grace);
    let mut aborted = false;
    loop {
        tokio::select! {
            next = tasks.join_next() => match next {
                None => break,
                Some(Err(e)) if !e.is_cancelled() => return Err(format!("a task failed: {e}")),
                Some(_) => {}
            },
            _ = &mut grace, if !aborted => {
                tracing::warn!(tasks = tasks.len(), "tasks still running after the shutdown grace period; stopping them");
                tasks.abort_all();
                aborted = true;
            }
        }
    }
    if let Some((elector, holding)) = elector {
        holding.abort();
        // Wait for the renewal in flight, if any, to be dropped before the release is written.
        let _ = holding.await;
        elector.release().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Bounds on every API call of the main client. kube leaves reads unbounded by default; watches
/// last up to 290 s (kube-runtime's server-side timeout, which it also enforces on its side), so
/// a read that is silent for longer than that is a dead connection. The Lease has its own,
/// shorter, bounds ([`LeaderConfig::lease_client_config`]).
fn with_api_timeouts(mut config: kube::Config) -> kube::Config {
    config.connect_timeout = Some(std::time::Duration::from_secs(10));
    config.read_timeout = Some(std::time::Duration::from_secs(300));
    config.write_timeout = Some(std::time::Duration::from_secs(30));
    // The read timeout counts from each request, not from when a pooled connection went idle.
    config.reset_reader_on_write = true;
    config
}

/// The Lease lives in the operator's namespace (`POD_NAMESPACE`, or the service account's);
/// the holder is named after the pod (`POD_NAME`, or the host name).
fn leader_config() -> Result<LeaderConfig, String> {
    let namespace = std::env::var("POD_NAMESPACE")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/var/run/secrets/kubernetes.io/serviceaccount/namespace").ok()
        })
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .ok_or("--leader-elect needs POD_NAMESPACE (the namespace of the leader Lease)")?;
    let identity = std::env::var("POD_NAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("onepassword-operator-{}", std::process::id()));
    Ok(LeaderConfig::new(&namespace, &identity))
}

fn connect_client(metrics: &Metrics) -> Result<ConnectClient, String> {
    let env = |k: &str| std::env::var(k).ok();
    if let Some(why) = onepassword_secrets_operator::config::unsupported_official_setting(env) {
        return Err(why);
    }
    let config = ConnectConfig::from_env(env).map_err(|e| format!("Connect configuration: {e}"))?;
    let metrics = metrics.clone();
    let client = ConnectClient::new(config)
        .map_err(|e| format!("Connect configuration: {e}"))?
        .with_observer(Arc::new(move |endpoint, status| {
            metrics.connect_request(endpoint.as_str(), status)
        }));
    Ok(client)
}

/// Cancels `stop` on SIGTERM or Ctrl-C; every task watches it and stops gracefully.
async fn cancel_on_signal(stop: CancellationToken) {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
    stop.cancel();
}

/// Readiness: the operator can do its job once Connect has answered a heartbeat.
async fn ready_when_connect_answers(
    connect: ConnectClient,
    health: Health,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        match connect.heartbeat().await {
            Ok(()) => {
                health.set_ready(true);
                return;
            }
            Err(e) => {
                tracing::warn!(reason = e.reason(), error = %e, "Connect does not answer its heartbeat yet")
            }
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {}
        }
    }
}
