//! A 1Password Connect simulator: a real HTTP(S) server serving the Connect API (spec 1.7.1) from
//! in-memory vaults and items, faithful enough for our client, the official Go SDK
//! (`connect-sdk-go`) and the official operator; with failures on demand and request counts.
//!
//! ```no_run
//! use connect_sim::{Fault, ItemSpec, Seed, Simulator, TokenAccess, VaultSpec};
//!
//! let sim = Simulator::start(
//!     Seed::new()
//!         .vault(VaultSpec::new("Demo").item(ItemSpec::new("db").username("admin").password("s3cret")))
//!         .token("tok", TokenAccess::All),
//! )?;
//! // OP_CONNECT_HOST=sim.url(), OP_CONNECT_TOKEN=tok
//! sim.set_field("Demo", "db", "password", "rotated")?; // version 2
//! sim.inject(Fault::internal_error().on("get_item").times(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! - `store`: the data and its rules (versions, ids, tokens); `api`: the Connect API over a store
//!   (routing, auth, ids, filters, files); `faults`: injected failures and counters; `seed`: the
//!   seed format; `server`: HTTP, connections, going down; `admin`: the `/__sim` endpoints (their
//!   table is in that module's documentation).
//! - Auth: `Authorization: Bearer <token>`; a missing or unknown token gets 401, a vault outside
//!   the token's grants 403 (also for an unknown id, as Connect scopes tokens to vault ids), except
//!   for a token granted every vault, which gets 404 for an unknown vault.
//! - The simulator runs on its own thread and runtime: its methods are synchronous and may be
//!   called from any thread or async context.

mod admin;
mod api;
mod faults;
mod seed;
mod server;
mod store;

use std::{
    collections::BTreeMap,
    io,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
};

use tokio::sync::oneshot;

pub use api::CONNECT_VERSION;
pub use faults::{Fault, FaultKind};
pub use seed::{FieldSpec, FileSpec, ItemSpec, SectionSpec, Seed, SeedError, UrlSpec, VaultSpec};
pub use store::{
    Access, MAX_INLINE_FILE_BYTES, SimError, Store, TokenAccess, View, content_path, new_id,
};

use onepassword_connect::model::{FullItem, ItemSummary, Vault};
use server::{Control, ServerThread, Shared, lock};

/// What [`Simulator::put_item`] takes: a wire item (files may carry base64 `content`; a file
/// without content keeps the content of the file with the same id) or an [`ItemSpec`].
#[derive(Clone, Debug)]
pub enum ItemInput {
    Full(FullItem),
    Spec(ItemSpec),
}

impl From<FullItem> for ItemInput {
    fn from(item: FullItem) -> Self {
        ItemInput::Full(item)
    }
}

impl From<ItemSpec> for ItemInput {
    fn from(item: ItemSpec) -> Self {
        ItemInput::Spec(item)
    }
}

/// A running simulator. Stops on [`shutdown`](Self::shutdown) or drop.
///
/// Vaults and items are named by id or by name/title (exact, the oldest on duplicates; vault
/// names also ignoring case) in every method.
pub struct Simulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: bool,
    server: Mutex<ServerThread>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("url", &self.url())
            .finish()
    }
}

impl Simulator {
    /// Serves on `127.0.0.1` on a free port.
    pub fn start(seed: Seed) -> io::Result<Simulator> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), seed)
    }

    pub fn start_on(addr: SocketAddr, seed: Seed) -> io::Result<Simulator> {
        Self::launch(addr, seed, None)
    }

    /// Serves HTTPS on `127.0.0.1` on a free port with this certificate chain and key (PEM);
    /// the certificate should name `127.0.0.1` (and `localhost`) for clients to accept it.
    pub fn start_tls(seed: Seed, cert_pem: &[u8], key_pem: &[u8]) -> io::Result<Simulator> {
        Self::start_tls_on(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            seed,
            cert_pem,
            key_pem,
        )
    }

    pub fn start_tls_on(
        addr: SocketAddr,
        seed: Seed,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> io::Result<Simulator> {
        let config = server::tls_config(cert_pem, key_pem)?;
        Self::launch(addr, seed, Some(Arc::new(config)))
    }

    fn launch(
        addr: SocketAddr,
        seed: Seed,
        tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
    ) -> io::Result<Simulator> {
        let mut store = Store::new();
        seed.apply(&mut store)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let is_tls = tls.is_some();
        let (shared, addr, server) = server::start(addr, store, tls)?;
        tracing::info!(url = %format_url(is_tls, addr), "Connect simulator started");
        Ok(Simulator {
            shared,
            addr,
            tls: is_tls,
            server: Mutex::new(server),
        })
    }

    /// `http://127.0.0.1:PORT` (or `https://…`); the API is under `/v1`.
    pub fn url(&self) -> String {
        format_url(self.tls, self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and closes every connection. Idempotent.
    pub fn shutdown(&self) {
        lock(&self.server).stop();
    }

    // ---- data ----

    pub fn add_vault(&self, name: &str) -> Vault {
        self.store()
            .add_vault(name, None, "")
            .expect("a generated vault id is always valid and unused")
    }

    pub fn vault(&self, vault: &str) -> Option<Vault> {
        self.store().vault(vault).ok().cloned()
    }

    pub fn vaults(&self) -> Vec<Vault> {
        self.store().vaults().cloned().collect()
    }

    pub fn item(&self, vault: &str, item: &str) -> Option<FullItem> {
        self.store().item(vault, item).ok().cloned()
    }

    /// The listing of a vault (no values).
    pub fn items(&self, vault: &str) -> Result<Vec<ItemSummary>, SimError> {
        self.store().summaries(vault)
    }

    /// Creates an item, or replaces the one with the same id: see [`Store::put_item`] for the
    /// version, `createdAt`/`updatedAt` and vault `contentVersion` rules.
    pub fn put_item(&self, vault: &str, item: impl Into<ItemInput>) -> Result<FullItem, SimError> {
        let item = match item.into() {
            ItemInput::Full(item) => item,
            ItemInput::Spec(spec) => spec.to_full_item()?,
        };
        self.store().put_item(vault, item)
    }

    /// Sets the first field with this label, or adds a `STRING` field; a new item version.
    pub fn set_field(
        &self,
        vault: &str,
        item: &str,
        label: &str,
        value: &str,
    ) -> Result<FullItem, SimError> {
        self.store().set_field(vault, item, label, value)
    }

    /// Replaces the content of the file with this name, or adds a file; a new item version.
    pub fn set_file(
        &self,
        vault: &str,
        item: &str,
        name: &str,
        content: impl AsRef<[u8]>,
    ) -> Result<FullItem, SimError> {
        self.store().set_file(vault, item, name, content.as_ref())
    }

    pub fn delete_item(&self, vault: &str, item: &str) -> Result<(), SimError> {
        self.store().delete_item(vault, item).map(|_| ())
    }

    // ---- tokens ----

    /// Adds a token, or changes what an existing one may read.
    pub fn add_token(&self, token: &str, access: TokenAccess) -> Result<(), SimError> {
        self.store().add_token(token, &access)
    }

    pub fn remove_token(&self, token: &str) -> Result<(), SimError> {
        self.store().remove_token(token)
    }

    pub fn grant(&self, token: &str, vault: &str) -> Result<(), SimError> {
        self.store().grant(token, vault)
    }

    /// Takes a vault from a token (a token that read every vault now reads every other one).
    pub fn revoke(&self, token: &str, vault: &str) -> Result<(), SimError> {
        self.store().revoke(token, vault)
    }

    pub fn tokens(&self) -> Vec<(String, Access)> {
        self.store()
            .tokens()
            .map(|(t, a)| (t.clone(), a.clone()))
            .collect()
    }

    // ---- faults ----

    /// Adds a fault; see [`Fault`] for the kinds and their scoping.
    pub fn inject(&self, fault: Fault) {
        lock(&self.shared.faults).add(fault);
    }

    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
    }

    /// Stops accepting connections (they are refused) and cuts every open one, as when Connect
    /// goes away. Returns once it is so.
    pub fn down(&self) -> io::Result<()> {
        let (done, wait) = oneshot::channel();
        self.control(Control::Down(done))?;
        futures::executor::block_on(wait).map_err(|_| stopped())
    }

    /// Listens again on the same address after [`down`](Self::down).
    pub fn resume(&self) -> io::Result<()> {
        let (done, wait) = oneshot::channel();
        self.control(Control::Resume(done))?;
        futures::executor::block_on(wait).map_err(|_| stopped())?
    }

    fn control(&self, order: Control) -> io::Result<()> {
        self.shared.control.send(order).map_err(|_| stopped())
    }

    // ---- counts ----

    /// Requests received by endpoint name: `list_vaults`, `get_vault`, `list_items`, `get_item`,
    /// `list_files`, `get_file`, `get_file_content`, `heartbeat`, `health`, `metrics`,
    /// `create_item`, `replace_item`, `delete_item`, `not_found`, `method_not_allowed`. Counted on
    /// arrival, whatever the answer (faults and auth failures included); `/__sim` not counted.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        lock(&self.shared.counts).snapshot()
    }

    /// Requests received by one endpoint.
    pub fn count(&self, endpoint: &str) -> u64 {
        self.counts().get(endpoint).copied().unwrap_or(0)
    }

    pub fn total_requests(&self) -> u64 {
        lock(&self.shared.counts).total()
    }

    pub fn reset_counts(&self) {
        lock(&self.shared.counts).reset();
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        lock(&self.shared.store)
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn format_url(tls: bool, addr: SocketAddr) -> String {
    format!("{}://{addr}", if tls { "https" } else { "http" })
}

fn stopped() -> io::Error {
    io::Error::other(SimError::Stopped)
}
