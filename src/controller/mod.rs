//! Controllers: reconcilers that keep Secrets and workloads in step with 1Password.
//!
//! - [`item`]: OnePasswordItem -> Secret of the same name (owner reference, status, events).
//! - [`deployment`]: Deployments annotated with `item-path` + `item-name` -> that Secret.
//! - [`poller`]: the poll loop that finds changed items and wakes the two above.
//! - restarts of workloads whose Secrets' data changed: [`crate::restart`].
//! - [`sync`]: the observe -> plan -> build -> apply pipeline the first two share.
//! - [`write_rate`]: notices a Secret we keep writing again (another writer fights us).
//! - [`crd_probe`]: which status fields the installed CRD declares (ours or the official one).
//! - [`takeover`]: what the official operator leaves on objects (its finalizer), removed.

pub mod context;
pub mod crd_probe;
pub mod deployment;
pub mod events;
pub mod item;
pub mod poller;
pub mod sync;
pub mod takeover;
pub mod watch;
pub mod write_rate;

// The path tests/e2e names the restart controller by.
pub use crate::restart::controller as restart;

pub use context::{Context, Namespaces, Settings, lag_since, object_key, truncate};
/// The one field manager every write of ours uses.
pub use crate::vocabulary::{FIELD_MANAGER, parse_bool};
pub use watch::{
    OwnWrites, SecretMeta, forget_deleted, log_run_error, log_watch_error, scoped_api,
    skip_own_echoes, skip_unchanged, watch_managed_secrets,
};

#[cfg(test)]
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use crate::{
        catalog::Catalog,
        connect::{ConnectClient, ConnectConfig},
        telemetry::Metrics,
    };
    use kube::Client;
    use std::time::Duration;
    use std::sync::Arc;

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
