//! The operations HTTP server: `/healthz` (liveness), `/readyz` (readiness) and `/metrics`.
//!
//! Like the official operator, metrics are usually served on `:8080` and the probes on `:8081`:
//! call [`serve`] once per listener with [`Routes::Metrics`] and [`Routes::Health`], or once
//! with [`Routes::All`] to serve everything on one address.

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
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

/// How long liveness tolerates no [`Health::heartbeat`] by default.
pub const DEFAULT_STALENESS: Duration = Duration::from_secs(5 * 60);

/// What the probes report. Cheap to clone; all clones share one state.
///
/// Liveness means the process serves HTTP and the controllers' main loop called
/// [`Health::heartbeat`] within the staleness limit (counted from creation until the first
/// heartbeat). Readiness means the caller said [`Health::set_ready`]`(true)`, once the informers
/// synced.
#[derive(Clone, Debug)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Debug)]
struct HealthInner {
    ready: AtomicBool,
    /// Milliseconds from `created` to the last heartbeat.
    last_heartbeat_ms: AtomicU64,
    created: Instant,
    staleness: Duration,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Not ready, alive, with the default staleness of 5 minutes.
    pub fn new() -> Self {
        Self::with_staleness(DEFAULT_STALENESS)
    }

    /// Liveness fails once no heartbeat came for longer than `staleness`.
    pub fn with_staleness(staleness: Duration) -> Self {
        Health {
            inner: Arc::new(HealthInner {
                ready: AtomicBool::new(false),
                last_heartbeat_ms: AtomicU64::new(0),
                created: Instant::now(),
                staleness,
            }),
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    /// Called by the main loop to show it still runs.
    pub fn heartbeat(&self) {
        let ms = u64::try_from(self.inner.created.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.inner
            .last_heartbeat_ms
            .fetch_max(ms, Ordering::Relaxed);
    }

    /// `Ok` while heartbeats are fresh, else a one-line reason.
    pub fn liveness(&self) -> Result<(), String> {
        let last = Duration::from_millis(self.inner.last_heartbeat_ms.load(Ordering::Relaxed));
        let silent = self.inner.created.elapsed().saturating_sub(last);
        if silent > self.inner.staleness {
            return Err(format!(
                "no heartbeat from the controllers for {}s (limit {}s)",
                silent.as_secs(),
                self.inner.staleness.as_secs()
            ));
        }
        Ok(())
    }

    /// `Ok` once [`Health::set_ready`]`(true)` was called, else a one-line reason.
    pub fn readiness(&self) -> Result<(), String> {
        if self.inner.ready.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err("not ready: waiting for the controllers' caches to sync".to_string())
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
    async fn healthz_fails_without_a_recent_heartbeat() {
        // Staleness long enough that the request after `heartbeat()` is served within it even
        // on a loaded CI machine (100 ms failed there).
        let health = Health::with_staleness(Duration::from_secs(2));
        let server = start(Routes::Health, Metrics::new(), health.clone()).await;
        tokio::time::sleep(Duration::from_millis(2200)).await;
        let (status, body, _) = get(format!("{}/healthz", server.base)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            body.starts_with("no heartbeat from the controllers"),
            "{body}"
        );

        health.heartbeat();
        let (status, _, _) = get(format!("{}/healthz", server.base)).await;
        assert_eq!(status, StatusCode::OK);
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
