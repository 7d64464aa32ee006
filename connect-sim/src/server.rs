//! The HTTP side: a runtime on its own thread, an accept loop that can stop and resume accepting,
//! connections that can be cut from a handler, and the request pipeline (count, fault, answer,
//! version header).
//!
//! The simulator owns its runtime so it works the same under a `#[tokio::test]` (current-thread)
//! runtime, a plain `#[test]`, or a benchmark harness, and so its synchronous handle methods can
//! wait for the server without deadlocking a caller's runtime.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, Weak,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, Request, State, connect_info::Connected},
    http::{HeaderValue, StatusCode, header},
    response::Response,
    serve::{IncomingStream, Listener},
};
use futures::task::AtomicWaker;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, mpsc, oneshot},
};
use tokio_rustls::{TlsAcceptor, rustls};

use super::{
    admin,
    api::{self, CONNECT_VERSION, Query, Reply, Route},
    faults::{Counts, FaultKind, Faults},
    store::{Store, View},
};

/// Largest request body read (item writes, admin calls).
const MAX_REQUEST_BODY: usize = 16 * 1024 * 1024;

/// A handshake that takes longer than this is abandoned.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the handle and the server share.
pub(super) struct Shared {
    pub store: Mutex<Store>,
    pub faults: Mutex<Faults>,
    pub counts: Mutex<Counts>,
    pub connections: Connections,
    pub control: mpsc::UnboundedSender<Control>,
}

/// Orders for the accept loop.
pub(super) enum Control {
    /// Close the listener and every open connection.
    Down(oneshot::Sender<()>),
    /// Bind the same address again.
    Resume(oneshot::Sender<io::Result<()>>),
}

/// One connection's kill switch. Killing makes every read and write on the connection fail, so
/// hyper drops it without sending anything more.
#[derive(Default)]
pub(super) struct ConnState {
    killed: AtomicBool,
    /// A [`SimStream`] exists for this connection and has not been dropped.
    open: AtomicBool,
    read: AtomicWaker,
    write: AtomicWaker,
    on_kill: Notify,
}

impl ConnState {
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.read.wake();
        self.write.wake();
        self.on_kill.notify_waiters();
    }

    fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// Resolves once the connection is killed (for handlers waiting out a delay).
    pub async fn killed(&self) {
        loop {
            let notified = self.on_kill.notified();
            if self.is_killed() {
                return;
            }
            notified.await;
        }
    }
}

/// Every open connection, so going down can cut them all.
#[derive(Default)]
pub(super) struct Connections {
    live: Mutex<Vec<Weak<ConnState>>>,
}

/// How long going down waits for cut connections to be closed.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

impl Connections {
    fn register(&self) -> Arc<ConnState> {
        let state = Arc::new(ConnState::default());
        let mut live = lock(&self.live);
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&state));
        state
    }

    /// Kills every connection and returns those still open.
    pub fn kill_all(&self) -> Vec<Arc<ConnState>> {
        let killed: Vec<_> = lock(&self.live)
            .drain(..)
            .filter_map(|conn| conn.upgrade())
            .collect();
        for conn in &killed {
            conn.kill();
        }
        killed
    }

    /// Kills every connection and waits (a little) until their sockets are closed, so a client
    /// that sends right after sees a closed connection rather than a late answer.
    async fn kill_all_and_wait(&self) {
        let killed = self.kill_all();
        let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
        while killed.iter().any(|c| c.open.load(Ordering::SeqCst))
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// What a handler knows about its connection.
#[derive(Clone)]
pub(super) struct ConnInfo {
    pub remote: SocketAddr,
    pub state: Arc<ConnState>,
}

impl std::fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.remote.fmt(f)
    }
}

impl Connected<IncomingStream<'_, SimListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, SimListener>) -> Self {
        stream.remote_addr().clone()
    }
}

enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// A TCP or TLS stream with a kill switch.
pub(super) struct SimStream {
    io: Io,
    state: Arc<ConnState>,
}

impl SimStream {
    fn new(io: Io, state: Arc<ConnState>) -> Self {
        state.open.store(true, Ordering::SeqCst);
        SimStream { io, state }
    }
}

impl Drop for SimStream {
    fn drop(&mut self) {
        self.state.open.store(false, Ordering::SeqCst);
    }
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection cut by the simulator",
    )
}

macro_rules! delegate {
    ($this:ident, $cx:ident, $waker:ident, |$s:ident| $call:expr) => {{
        $this.state.$waker.register($cx.waker());
        if $this.state.is_killed() {
            return Poll::Ready(Err(aborted()));
        }
        match &mut $this.io {
            Io::Plain(tcp) => {
                let $s = Pin::new(tcp);
                $call
            }
            Io::Tls(tls) => {
                let $s = Pin::new(tls.as_mut());
                $call
            }
        }
    }};
}

impl AsyncRead for SimStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        delegate!(this, cx, read, |s| s.poll_read(cx, buf))
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        delegate!(this, cx, write, |s| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        delegate!(this, cx, write, |s| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(tcp) => tcp.is_write_vectored(),
            Io::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        delegate!(this, cx, write, |s| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        delegate!(this, cx, write, |s| s.poll_shutdown(cx))
    }
}

/// Hands axum the connections the accept loop accepted (and, for TLS, finished the handshake of).
pub(super) struct SimListener {
    incoming: mpsc::Receiver<(SimStream, ConnInfo)>,
    local: ConnInfo,
}

impl Listener for SimListener {
    type Io = SimStream;
    type Addr = ConnInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(conn) => conn,
            // The accept loop is gone: the runtime is shutting down.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local.clone())
    }
}

/// The server thread, stopped by [`ServerThread::stop`] or on drop.
pub(super) struct ServerThread {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerThread {
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Binds `addr` (synchronously, so the caller gets bind errors and the real port), then serves
/// on a new thread with its own runtime.
pub(super) fn start(
    addr: SocketAddr,
    store: Store,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> io::Result<(Arc<Shared>, SocketAddr, ServerThread)> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("connect-sim")
        .enable_all()
        .build()?;
    let (control, control_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        store: Mutex::new(store),
        faults: Mutex::new(Faults::default()),
        counts: Mutex::new(Counts::default()),
        connections: Connections::default(),
        control,
    });
    let (stop, stopped) = oneshot::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server_shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name("connect-sim".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let (conn_tx, conn_rx) = mpsc::channel(64);
                let acceptor = Acceptor {
                    addr,
                    tls: tls.map(TlsAcceptor::from),
                    shared: server_shared.clone(),
                    incoming: conn_tx,
                };
                tokio::spawn(acceptor.run(listener, control_rx));
                let sim_listener = SimListener {
                    incoming: conn_rx,
                    local: ConnInfo {
                        remote: addr,
                        state: Arc::new(ConnState::default()),
                    },
                };
                let app =
                    router(server_shared.clone()).into_make_service_with_connect_info::<ConnInfo>();
                tokio::spawn(axum::serve(sim_listener, app).into_future());
                let _ = ready_tx.send(Ok(()));
                let _ = stopped.await;
                server_shared.connections.kill_all();
            });
            // Cancels every task: handlers in a delay, open connections, the accept loop.
            runtime.shutdown_timeout(Duration::from_secs(2));
        })?;
    ready_rx
        .recv()
        .map_err(|_| io::Error::other("the simulator thread ended before serving"))??;
    Ok((
        shared,
        addr,
        ServerThread {
            stop: Some(stop),
            thread: Some(thread),
        },
    ))
}

struct Acceptor {
    addr: SocketAddr,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    incoming: mpsc::Sender<(SimStream, ConnInfo)>,
}

impl Acceptor {
    async fn run(self, listener: TcpListener, mut control: mpsc::UnboundedReceiver<Control>) {
        let mut listener = Some(listener);
        loop {
            let order = match &listener {
                Some(l) => tokio::select! {
                    accepted = l.accept() => {
                        match accepted {
                            Ok((tcp, remote)) => self.admit(tcp, remote),
                            Err(e) => {
                                // Out of file descriptors and the like: wait rather than spin.
                                tracing::warn!(error = %e, "accept failed");
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                        }
                        continue;
                    }
                    order = control.recv() => order,
                },
                None => control.recv().await,
            };
            match order {
                Some(Control::Down(done)) => {
                    listener = None;
                    self.shared.connections.kill_all_and_wait().await;
                    tracing::info!(addr = %self.addr, "simulator down: not accepting connections");
                    let _ = done.send(());
                }
                Some(Control::Resume(done)) => {
                    let result = match listener {
                        Some(_) => Ok(()),
                        None => bind(self.addr).map(|l| {
                            listener = Some(l);
                            tracing::info!(addr = %self.addr, "simulator up again");
                        }),
                    };
                    let _ = done.send(result);
                }
                None => return,
            }
        }
    }

    fn admit(&self, tcp: TcpStream, remote: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let state = self.shared.connections.register();
        let info = ConnInfo {
            remote,
            state: state.clone(),
        };
        let incoming = self.incoming.clone();
        match &self.tls {
            None => {
                let stream = SimStream::new(Io::Plain(tcp), state);
                // The channel is bounded; waiting here would stall accepting, so hand over
                // from a task.
                tokio::spawn(async move {
                    let _ = incoming.send((stream, info)).await;
                });
            }
            Some(tls) => {
                let tls = tls.clone();
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(tcp));
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            let stream = SimStream::new(Io::Tls(Box::new(stream)), state);
                            let _ = incoming.send((stream, info)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(error = %e, %remote, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// A rustls server configuration from PEM certificate chain and private key.
pub(super) fn tls_config(cert_pem: &[u8], key_pem: &[u8]) -> io::Result<rustls::ServerConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{what}: {e}"))
    };
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("certificate PEM", &e))?;
    if certs.is_empty() {
        return Err(invalid("certificate PEM", &"no certificate found"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| invalid("key PEM", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS versions", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid("certificate and key", &e))?;
    // The server speaks HTTP/1.1 only.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .fallback(handle)
        .with_state(shared)
        .layer(axum::middleware::map_response(add_version_header))
}

async fn add_version_header(mut response: Response) -> Response {
    response.headers_mut().insert(
        "1Password-Connect-Version",
        HeaderValue::from_static(CONNECT_VERSION),
    );
    response
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(conn): ConnectInfo<ConnInfo>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    if path.starts_with("/__sim/") || path == "/__sim" {
        let body = match axum::body::to_bytes(body, MAX_REQUEST_BODY).await {
            Ok(body) => body,
            Err(_) => return into_response(Reply::error(413, "request body too large")),
        };
        return admin::handle(&shared, &parts.method, &path, parts.uri.query(), &body).await;
    }

    let route = Route::parse(&parts.method, &path);
    let endpoint = route.endpoint();
    lock(&shared.counts).record(endpoint);
    let plan = lock(&shared.faults).plan(endpoint, &path);
    if !plan.delay.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(plan.delay) => {}
            // Going down or shutting down cuts the wait short; nothing is sent.
            _ = conn.state.killed() => return Response::new(Body::empty()),
        }
    }
    let body = match axum::body::to_bytes(body, MAX_REQUEST_BODY).await {
        Ok(body) => body,
        Err(_) => return into_response(Reply::error(413, "request body too large")),
    };

    let reply = match plan.action {
        Some(FaultKind::DropConnection) => {
            tracing::debug!(%path, endpoint, remote = %conn.remote, "fault: dropping the connection");
            conn.state.kill();
            // Never sent: writing to a killed connection fails and hyper closes it.
            return Response::new(Body::empty());
        }
        Some(FaultKind::Status { status, message }) => Reply::error(
            status,
            message.unwrap_or_else(|| default_message(status).into()),
        ),
        Some(FaultKind::TooManyRequests { retry_after_secs }) => {
            let mut response = into_response(Reply::error(429, "Too many requests"));
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            return response;
        }
        Some(FaultKind::Timeout) => Reply::error(408, default_message(408)),
        Some(FaultKind::Lagging) => answer(
            &shared,
            &route,
            &parts.headers,
            parts.uri.query(),
            &body,
            View::Lagging,
        ),
        Some(FaultKind::Delay { .. }) | Some(FaultKind::MalformedJson) | None => {
            let reply = answer(
                &shared,
                &route,
                &parts.headers,
                parts.uri.query(),
                &body,
                View::Current,
            );
            if plan.action == Some(FaultKind::MalformedJson) {
                truncate(reply)
            } else {
                reply
            }
        }
    };
    tracing::debug!(method = %parts.method, %path, endpoint, status = reply.status(), "request");
    into_response(reply)
}

fn answer(
    shared: &Shared,
    route: &Route,
    headers: &http::HeaderMap,
    query: Option<&str>,
    body: &Bytes,
    view: View,
) -> Reply {
    if *route == Route::Metrics {
        return Reply::Text {
            status: 200,
            body: metrics_text(&lock(&shared.counts)),
        };
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    api::respond_seen(
        &mut lock(&shared.store),
        token,
        route,
        &Query::parse(query),
        body,
        view,
    )
}

fn default_message(status: u16) -> &'static str {
    match status {
        408 => "Request timed out: the server is still syncing (simulated)",
        429 => "Too many requests (simulated)",
        500 => "Internal server error (simulated)",
        502 => "Bad gateway (simulated)",
        503 => "Service unavailable (simulated)",
        _ => "Simulated failure",
    }
}

/// The reply with its body cut in half: what a client sees from a broken proxy or a server that
/// died while writing.
fn truncate(reply: Reply) -> Reply {
    let cut = |mut body: Vec<u8>| {
        body.truncate(body.len() / 2);
        if body.is_empty() {
            body.push(b'{');
        }
        body
    };
    match reply {
        Reply::Json { status, body } => Reply::Json {
            status,
            body: cut(body),
        },
        Reply::Text { status, body } => Reply::Text {
            status,
            body: String::from_utf8_lossy(&cut(body.into_bytes())).into_owned(),
        },
        Reply::File { name, content } => Reply::File {
            name,
            content: cut(content),
        },
        Reply::NoContent => Reply::Json {
            status: 200,
            body: b"{".to_vec(),
        },
    }
}

fn metrics_text(counts: &Counts) -> String {
    let mut text = String::from(
        "# HELP connect_sim_requests_total Requests received by the Connect simulator.\n\
         # TYPE connect_sim_requests_total counter\n",
    );
    for (endpoint, n) in counts.snapshot() {
        text.push_str(&format!(
            "connect_sim_requests_total{{endpoint=\"{endpoint}\"}} {n}\n"
        ));
    }
    text
}

pub(super) fn into_response(reply: Reply) -> Response {
    let status =
        |code: u16| StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (code, content_type, body, disposition) = match reply {
        Reply::Json { status, body } => (status, "application/json", body, None),
        Reply::Text { status, body } => {
            (status, "text/plain; charset=utf-8", body.into_bytes(), None)
        }
        Reply::File { name, content } => {
            let name = name.replace(['"', '\\', '\r', '\n'], "_");
            (
                200,
                "application/octet-stream",
                content,
                Some(format!("attachment; filename=\"{name}\"")),
            )
        }
        Reply::NoContent => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::NO_CONTENT;
            return response;
        }
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status(code);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(value) = disposition.and_then(|d| HeaderValue::try_from(d).ok()) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}
