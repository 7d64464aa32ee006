//! Controllers: reconcilers that keep Secrets and workloads in step with 1Password.
//!
//! - [`item`]: OnePasswordItem -> Secret of the same name (owner reference, status, events).
//! - [`deployment`]: Deployments annotated with `item-path` + `item-name` -> that Secret.
//! - [`sync`]: the observe -> plan -> build -> apply pipeline the first two share.
//! - [`context`]: the one context every controller shares (client, catalog, event sink,
//!   metrics, settings, backoff).
//! - [`watch`]: which watch events wake a reconcile, and what is forgotten when objects go.
//! - [`poller`]: the poll loop that finds changed items and wakes the two above.
//! - [`status_queue`]: OnePasswordItem statuses, written after the Secrets they describe.
//! - restarts of workloads whose Secrets' data changed: [`crate::restart`].
//! - [`write_rate`]: notices a Secret we keep writing again (another writer fights us).
//! - [`crd_probe`]: which status fields the installed CRD declares (ours or the official one).
//! - [`takeover`]: what the official operator leaves on objects (its finalizer), removed.
//! - [`events`]: Kubernetes events, written without a cache.

pub mod context;
pub mod crd_probe;
pub mod deployment;
pub mod events;
pub mod item;
pub mod poller;
pub mod secret_cache;
pub mod status_queue;
pub mod sync;
pub mod takeover;
pub mod watch;
pub mod write_rate;

pub use context::{Context, Namespaces, Settings, lag_since, object_key, truncate};
pub use secret_cache::{CachedSecret, SecretCache};

/// Something kept per namespaced object: namespace -> name -> value. Looked up with `&str`s,
/// and each namespace's name stored once rather than in every key.
pub(crate) type ByNamespace<T> =
    std::collections::HashMap<Box<str>, std::collections::HashMap<Box<str>, T>>;
pub use watch::{
    OwnWrites, SecretEvents, SecretFeed, SecretMeta, SecretWatch, drop_annotations,
    drop_managed_fields, forget_deleted, log_run_error, log_watch_error, scoped_api,
    skip_own_echoes, skip_unchanged,
};

/// Test support: a context on a mocked API server, and the API-server verifier.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::{
        catalog::Catalog,
        connect::{ConnectClient, ConnectConfig},
        telemetry::Metrics,
    };
    use http::{Request, Response};
    use kube::{Client, client::Body};
    use serde_json::{Value, json};
    use std::{sync::Arc, time::Duration};
    use tower_test::mock::Handle;

    /// The test side of a mocked API server.
    pub(crate) type ApiHandle = Handle<Request<Body>, Response<Body>>;

    /// A client whose every request goes to the returned handle.
    pub(crate) fn mock_client() -> (Client, ApiHandle) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(service, "default"), handle)
    }

    /// One request the API server expects, and the answer it gives.
    pub(crate) struct Expect {
        pub method: &'static str,
        /// The URI must start with this (path and, when given, query: `fieldManager` included).
        pub uri: String,
        pub status: u16,
        /// `null`: the request's body is sent back (as the API server does for an apply).
        pub answer: Value,
        /// Run once the request came, before it is answered (what else happens meanwhile);
        /// it may change the answer.
        pub meanwhile: Option<Meanwhile>,
    }

    /// What happens while a request waits for its answer; it may change the answer.
    pub(crate) type Meanwhile = Box<dyn FnOnce(&mut Value) + Send>;

    impl Expect {
        pub(crate) fn new(method: &'static str, uri: &str, status: u16, answer: Value) -> Self {
            Expect {
                method,
                uri: uri.into(),
                status,
                answer,
                meanwhile: None,
            }
        }

        /// The same, with `f` run before the answer goes back.
        pub(crate) fn meanwhile(mut self, f: impl FnOnce(&mut Value) + Send + 'static) -> Self {
            self.meanwhile = Some(Box::new(f));
            self
        }

        /// A server-side apply with our field manager, answered with its own body.
        pub(crate) fn apply(path: &str) -> Self {
            let uri = format!(
                "{path}?&force=true&fieldManager={}",
                crate::vocabulary::FIELD_MANAGER
            );
            Expect::new("PATCH", &uri, 200, Value::Null)
        }

        /// An event created in `namespace`.
        pub(crate) fn event(namespace: &str) -> Self {
            let uri = format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events");
            Expect::new("POST", &uri, 201, Value::Null)
        }

        /// A request answered with a `Status` of `code`.
        pub(crate) fn failing(method: &'static str, uri: &str, code: u16) -> Self {
            let reason = match code {
                403 => "Forbidden",
                404 => "NotFound",
                409 => "Conflict",
                422 => "Invalid",
                _ => "InternalError",
            };
            let status = json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": format!("answered {code}"), "reason": reason, "code": code
            });
            Expect::new(method, uri, code, status)
        }
    }

    /// A request as received: method, URI, JSON body (`null` when empty).
    pub(crate) type Seen = (String, String, Value);

    /// The API server verifier: answers `script` in order, asserting each request's method and
    /// URI, and returns what it saw, for the bodies to be asserted.
    pub(crate) async fn serve(
        mut handle: ApiHandle,
        script: Vec<Expect>,
    ) -> (ApiHandle, Vec<Seen>) {
        let mut seen = Vec::new();
        for expect in script {
            // A script that expects more than the reconcile sends fails here, not hangs.
            let (request, respond) =
                tokio::time::timeout(std::time::Duration::from_secs(10), handle.next_request())
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "no request came where the script expected {} {}",
                            expect.method, expect.uri
                        )
                    })
                    .expect("a request");
            let method = request.method().to_string();
            let uri = request.uri().to_string();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            assert_eq!(method, expect.method, "{uri}");
            assert!(
                uri.starts_with(&expect.uri),
                "{uri} should start with {}",
                expect.uri
            );
            let mut answer = if expect.answer.is_null() {
                body.clone()
            } else {
                expect.answer
            };
            if let Some(meanwhile) = expect.meanwhile {
                meanwhile(&mut answer);
            }
            respond.send_response(
                Response::builder()
                    .status(expect.status)
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
            seen.push((method, uri, body));
        }
        (handle, seen)
    }

    pub(crate) fn assert_no_more_requests(mut handle: ApiHandle) {
        use futures::FutureExt;
        if let Some(Some((request, _))) = handle.next_request().now_or_never() {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }

    /// A context on `client` (a mock API server, usually), with a Connect client that is never
    /// called.
    pub(crate) fn context(client: Client) -> Arc<Context> {
        context_on(client, "http://127.0.0.1:9")
    }

    /// A context on `client` whose Connect client asks `connect_host`, without retries.
    pub(crate) fn context_on(client: Client, connect_host: &str) -> Arc<Context> {
        build(client, connect_host, settings())
    }

    /// A context on `client` with `settings`, with a Connect client that is never called.
    pub(crate) fn context_with(client: Client, settings: Settings) -> Arc<Context> {
        build(client, "http://127.0.0.1:9", settings)
    }

    /// All namespaces, a 10 s poll, nothing optional on.
    pub(crate) fn settings() -> Settings {
        Settings {
            namespaces: Namespaces::All,
            poll_interval: Duration::from_secs(10),
            resync_interval: Duration::from_secs(3600),
            allow_empty_values: false,
            enable_annotations: false,
            auto_restart: false,
            concurrency: 1,
            vault_policy: None,
            governance: crate::restart::governor::Governance::off(),
        }
    }

    fn build(client: Client, connect_host: &str, settings: Settings) -> Arc<Context> {
        let mut config = ConnectConfig::from_env(|k| match k {
            "OP_CONNECT_HOST" => Some(connect_host.into()),
            "OP_CONNECT_TOKEN" => Some("token".into()),
            _ => None,
        })
        .unwrap();
        config.retry.max_retries = 0;
        let connect = ConnectClient::new(config).unwrap();
        Arc::new(Context::new(
            client,
            Catalog::new(connect),
            Metrics::new(),
            settings,
        ))
    }
}
