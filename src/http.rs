//! The operations HTTP server: `/healthz` (liveness), `/readyz` (readiness) and `/metrics`.
//!
//! Like the official operator, metrics are usually served on `:8080` and the probes on `:8081`:
//! call [`serve`] once per listener with [`Routes::Metrics`] and [`Routes::Health`], or once
//! with [`Routes::All`] to serve everything on one address.

use std::{
    collections::BTreeMap,
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;

use crate::telemetry::Metrics;

/// The content type of the OpenMetrics text exposition format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the probes report. Cheap to clone; all clones share one state.
///
/// Liveness (`/healthz`) means that every task registered with [`Health::task`] still runs
/// (the controllers' watch-and-reconcile loops, the poller) and, for a task registered with a
/// staleness (the poller), that it called [`Alive::beat`] within it. A task that ended, or a
/// poller stuck in a cycle, fails it, and the kubelet restarts the pod. A follower that waits
/// for the leader Lease runs no controller, and is alive. Once the process is stopping
/// ([`Health::set_stopping`]), tasks that end are expected.
///
/// Readiness (`/readyz`) means Connect answered a heartbeat once ([`Health::set_ready`]): the
/// operator can do its job. It does not depend on leadership (a rolling update waits for the
/// new pod to be ready before it stops the old leader).
#[derive(Clone, Debug, Default)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Debug, Default)]
struct HealthInner {
    ready: AtomicBool,
    stopping: AtomicBool,
    tasks: Mutex<BTreeMap<String, TaskState>>,
}

#[derive(Debug)]
struct TaskState {
    last_beat: Instant,
    /// How long it may go without a beat; `None`: alive as long as it runs.
    staleness: Option<Duration>,
    running: bool,
}

/// A registered task's part of the liveness: it beats through it, and its drop (the task ended,
/// or panicked) says it stopped.
#[derive(Debug)]
pub struct Alive {
    health: Health,
    name: String,
}

impl Alive {
    /// Says the task is still making progress.
    pub fn beat(&self) {
        if let Some(task) = self.health.tasks().get_mut(&self.name) {
            task.last_beat = Instant::now();
        }
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        if let Some(task) = self.health.tasks().get_mut(&self.name) {
            task.running = false;
        }
    }
}

impl Health {
    /// Not ready, alive, with no task registered.
    pub fn new() -> Self {
        Self::default()
    }

    fn tasks(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, TaskState>> {
        self.inner.tasks.lock().expect("health lock")
    }

    /// Registers a task whose end fails liveness, and which must beat within `staleness` if
    /// one is given. Keep the returned [`Alive`] in the task.
    pub fn task(&self, name: impl Into<String>, staleness: Option<Duration>) -> Alive {
        let name = name.into();
        self.tasks().insert(
            name.clone(),
            TaskState {
                last_beat: Instant::now(),
                staleness,
                running: true,
            },
        );
        Alive {
            health: self.clone(),
            name,
        }
    }

    /// Runs `task` as registered under `name` (no staleness): alive while it runs.
    pub fn watch<F: Future>(
        &self,
        name: String,
        task: F,
    ) -> impl Future<Output = F::Output> + use<F> {
        let alive = self.task(name, None);
        async move {
            let output = task.await;
            drop(alive);
            output
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    /// The process is shutting down: tasks that end now are not a failure.
    pub fn set_stopping(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
    }

    /// `Ok` while every registered task runs and beats in time, else a one-line reason.
    pub fn liveness(&self) -> Result<(), String> {
        if self.inner.stopping.load(Ordering::Relaxed) {
            return Ok(());
        }
        let tasks = self.tasks();
        let failing: Vec<String> = tasks
            .iter()
            .filter_map(|(name, task)| {
                let silent = task.last_beat.elapsed();
                if !task.running {
                    Some(format!("{name} stopped"))
                } else if task.staleness.is_some_and(|limit| silent > limit) {
                    Some(format!(
                        "{name}: no progress for {}s (limit {}s)",
                        silent.as_secs(),
                        task.staleness.unwrap_or_default().as_secs()
                    ))
                } else {
                    None
                }
            })
            .collect();
        if failing.is_empty() {
            Ok(())
        } else {
            Err(failing.join("; "))
        }
    }

    /// `Ok` once [`Health::set_ready`]`(true)` was called, else a one-line reason.
    pub fn readiness(&self) -> Result<(), String> {
        if self.inner.ready.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("not ready: Connect has not answered a heartbeat yet".to_string())
        }
    }
}

/// Which endpoints a server mounts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routes {
    /// `/metrics` only.
    Metrics,
    /// `/healthz` and `/readyz`.
    Health,
    /// All three, for one address serving both.
    All,
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Health,
}

/// The router for `routes`; any other path answers 404.
pub fn router(routes: Routes, metrics: Metrics, health: Health) -> Router {
    let mut router = Router::new();
    if matches!(routes, Routes::Health | Routes::All) {
        router = router
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz));
    }
    if matches!(routes, Routes::Metrics | Routes::All) {
        router = router.route("/metrics", get(metrics_text));
    }
    router.with_state(AppState { metrics, health })
}

/// Binds `addr` (port 0 picks a free port) and returns the listener with the address it got.
pub async fn bind(addr: SocketAddr) -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Serves `routes` on `listener` until `shutdown` completes, then finishes the requests in
/// flight and returns.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    metrics: Metrics,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, ?routes, "serving operations HTTP");
    }
    axum::serve(listener, router(routes, metrics, health))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn healthz(State(state): State<AppState>) -> Response {
    probe(state.health.liveness())
}

async fn readyz(State(state): State<AppState>) -> Response {
    probe(state.health.readiness())
}

fn probe(result: Result<(), String>) -> Response {
    match result {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use tokio::{sync::oneshot, task::JoinHandle};

    use super::*;

    struct Server {
        base: String,
        stop: oneshot::Sender<()>,
        task: JoinHandle<io::Result<()>>,
    }

    async fn start(routes: Routes, metrics: Metrics, health: Health) -> Server {
        let (listener, addr) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, routes, metrics, health, async {
            let _ = stopped.await;
        }));
        Server {
            base: format!("http://{addr}"),
            stop,
            task,
        }
    }

    /// reqwest is built without a default TLS provider; these plain-HTTP tests still need one
    /// installed to build a client.
    fn client() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    }

    async fn get(url: String) -> (StatusCode, String, Option<String>) {
        let response = client().get(url).send().await.unwrap();
        let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string());
        (status, response.text().await.unwrap(), content_type)
    }

    #[tokio::test]
    async fn healthz_is_ok_while_the_process_serves() {
        let server = start(Routes::All, Metrics::new(), Health::new()).await;
        let (status, body, _) = get(format!("{}/healthz", server.base)).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    }

    #[tokio::test]
    async fn readyz_is_unavailable_until_set_ready() {
        let health = Health::new();
        let server = start(Routes::All, Metrics::new(), health.clone()).await;
        let (status, body, _) = get(format!("{}/readyz", server.base)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body.lines().count(), 1, "one-line reason: {body:?}");
        assert!(body.starts_with("not ready"), "{body}");

        health.set_ready(true);
        let (status, body, _) = get(format!("{}/readyz", server.base)).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    }

    #[tokio::test]
    async fn healthz_fails_when_a_task_makes_no_progress_within_its_staleness() {
        // Staleness long enough that the request after `beat()` is served within it even on a
        // loaded CI machine (100 ms failed there).
        let health = Health::new();
        let poller = health.task("poller", Some(Duration::from_secs(2)));
        let server = start(Routes::Health, Metrics::new(), health.clone()).await;
        tokio::time::sleep(Duration::from_millis(2200)).await;
        let (status, body, _) = get(format!("{}/healthz", server.base)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.starts_with("poller: no progress for 2s"), "{body}");

        poller.beat();
        let (status, _, _) = get(format!("{}/healthz", server.base)).await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn healthz_fails_once_a_controller_stopped_unless_the_process_is_stopping() {
        let health = Health::new();
        let server = start(Routes::Health, Metrics::new(), health.clone()).await;
        let (finish, finished) = oneshot::channel::<()>();
        let controller = tokio::spawn(health.watch("OnePasswordItem controller".into(), async {
            let _ = finished.await;
        }));
        let (status, _, _) = get(format!("{}/healthz", server.base)).await;
        assert_eq!(status, StatusCode::OK, "alive while it runs");

        finish.send(()).unwrap();
        controller.await.unwrap();
        let (status, body, _) = get(format!("{}/healthz", server.base)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "OnePasswordItem controller stopped\n");

        health.set_stopping();
        let (status, _, _) = get(format!("{}/healthz", server.base)).await;
        assert_eq!(status, StatusCode::OK, "tasks end on the way out");
    }

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics_text() {
        let metrics = Metrics::new();
        let server = start(Routes::Metrics, metrics.clone(), Health::new()).await;
        metrics.secret_written("item");
        metrics.connect_request("list_items", "200");

        let (status, body, content_type) = get(format!("{}/metrics", server.base)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(content_type.as_deref(), Some(OPENMETRICS_CONTENT_TYPE));
        assert!(
            body.contains("onepassword_secret_writes_total{controller=\"item\"} 1\n"),
            "{body}"
        );
        assert!(body.contains(
            "onepassword_connect_requests_total{endpoint=\"list_items\",status=\"200\"} 1\n"
        ));
        assert!(body.ends_with("# EOF\n"));
    }

    #[tokio::test]
    async fn unknown_paths_and_unmounted_routes_are_not_found() {
        let metrics_only = start(Routes::Metrics, Metrics::new(), Health::new()).await;
        let health_only = start(Routes::Health, Metrics::new(), Health::new()).await;
        for url in [
            format!("{}/nope", metrics_only.base),
            format!("{}/healthz", metrics_only.base),
            format!("{}/metrics", health_only.base),
            format!("{}/", health_only.base),
        ] {
            assert_eq!(get(url.clone()).await.0, StatusCode::NOT_FOUND, "{url}");
        }
    }

    #[tokio::test]
    async fn shutdown_stops_the_server_gracefully() {
        let server = start(Routes::All, Metrics::new(), Health::new()).await;
        assert_eq!(
            get(format!("{}/healthz", server.base)).await.0,
            StatusCode::OK
        );

        server.stop.send(()).unwrap();
        let result = tokio::time::timeout(Duration::from_secs(5), server.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
        assert!(result.is_ok(), "{result:?}");
        assert!(
            client()
                .get(format!("{}/healthz", server.base))
                .send()
                .await
                .is_err()
        );
    }
}
