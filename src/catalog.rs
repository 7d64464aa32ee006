//! What we know about the vaults and items in 1Password, without their values: the vault list
//! and, for each vault in use, the item listing (ids, titles, versions).
//!
//! Both reconcilers and the poller read it. A reconcile resolves an item path against it and
//! compares the listed version with the Secret's, so a reconcile of an unchanged item costs no
//! Connect request. The poller refreshes it once per interval: one `GET /v1/vaults`, plus one
//! item listing per vault in use whose `contentVersion` moved.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Mutex;

use crate::connect::{
    ConnectClient, ConnectError, ItemPath,
    model::{ItemSummary, Vault},
    resolve::{join_notes, resolve_item, resolve_vault},
};
use crate::vocabulary::IGNORE_TAG;

/// Where an item path points now, according to the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolution {
    pub vault_id: String,
    pub item_id: String,
    /// The version in the vault's item listing.
    pub version: u64,
    /// Said when a title matched several vaults or items.
    pub note: Option<String>,
    /// The item carries the [`IGNORE_TAG`] tag in the listing.
    pub ignored: bool,
}

/// Why [`Catalog::resolve`] gave no resolution: Connect's answer, or the caller's refusal of
/// the vault.
#[derive(Debug)]
pub enum ResolveError<E> {
    Connect(ConnectError),
    Refused(E),
}

impl<E> From<ConnectError> for ResolveError<E> {
    fn from(e: ConnectError) -> Self {
        ResolveError::Connect(e)
    }
}

#[derive(Clone)]
struct Listing {
    items: Arc<Vec<ItemSummary>>,
    /// The vault's `contentVersion` when the listing was taken (0: unknown).
    content_version: u64,
    fetched: Instant,
}

/// When a cached copy is good enough.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fetch {
    /// Use the cache when there is one.
    IfMissing,
    /// A lookup missed: fetch again unless the copy is only a moment old.
    IfStale,
    /// A poll: always fetch.
    Always,
}

#[derive(Default)]
struct State {
    vaults: Option<(Arc<Vec<Vault>>, Instant)>,
    listings: HashMap<String, Listing>,
    /// Why the last poll could not list the vaults; `None` when it could.
    vaults_failure: Option<ConnectError>,
    /// Why the last poll could not list these vaults' items (their old listings are kept).
    listing_failures: HashMap<String, ConnectError>,
}

/// How a refresh went, for logs and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RefreshReport {
    /// Vaults whose item listing was fetched again (or tried: see `failed`).
    pub listed: Vec<String>,
    /// Vaults skipped because their `contentVersion` did not move.
    pub unchanged: usize,
    /// Vaults whose listing failed for a reason other than the vault being gone or revoked
    /// (Connect down, token refused): their items cannot be told to be current.
    pub failed: Vec<String>,
}

pub struct Catalog {
    client: ConnectClient,
    state: Mutex<State>,
    /// A lookup that misses in a listing older than this fetches the listing again, so an item
    /// created a moment ago is found without waiting for the next poll.
    miss_refresh_after: Duration,
}

impl Catalog {
    pub fn new(client: ConnectClient) -> Self {
        Catalog {
            client,
            state: Mutex::new(State::default()),
            miss_refresh_after: Duration::from_secs(1),
        }
    }

    pub fn client(&self) -> &ConnectClient {
        &self.client
    }

    /// [`Catalog::resolve_allowed`] with every vault allowed.
    pub async fn resolve(&self, path: &ItemPath) -> Result<Resolution, ConnectError> {
        self.resolve_allowed(path, |_, _| Ok::<(), std::convert::Infallible>(()))
            .await
            .map_err(|e| match e {
                ResolveError::Connect(e) => e,
                ResolveError::Refused(never) => match never {},
            })
    }

    /// Resolves an item path, fetching the vault list and the vault's listing only when they are
    /// not cached yet, or when the cached copy misses and is a few seconds old.
    ///
    /// `allow` is asked about the resolved vault (its id, and its title when listed) before the
    /// vault's items are listed: a caller that refuses learns nothing of what the vault holds,
    /// and the vault it approved is the one the item is read from (one lookup, under one lock).
    pub async fn resolve_allowed<E>(
        &self,
        path: &ItemPath,
        allow: impl FnOnce(&str, Option<&str>) -> Result<(), E>,
    ) -> Result<Resolution, ResolveError<E>> {
        let mut state = self.state.lock().await;
        let (vaults, vault_id, vault_note) = self.find_vault(&mut state, &path.vault).await?;
        let vault_name = vaults
            .iter()
            .find(|v| v.id == vault_id)
            .map(|v| v.name.as_str());
        allow(&vault_id, vault_name).map_err(ResolveError::Refused)?;
        let mut listing = self
            .listing(&mut state, &vault_id, Fetch::IfMissing)
            .await?;
        if let Err(e) = resolve_item(&listing, &vault_id, &path.item) {
            listing = self.listing(&mut state, &vault_id, Fetch::IfStale).await?;
            resolve_item(&listing, &vault_id, &path.item).map_err(|_| e)?;
        }
        let (item, item_note) = resolve_item(&listing, &vault_id, &path.item)?;
        Ok(Resolution {
            vault_id: vault_id.clone(),
            item_id: item.id.clone(),
            version: item.version,
            note: join_notes(vault_note, item_note),
            ignored: item.tags.iter().any(|t| t == IGNORE_TAG),
        })
    }

    /// The vault `reference` names (id and title note), from the cached vault list, or a fresh
    /// one when the cached copy misses and is a few seconds old; with the list it was found in.
    async fn find_vault(
        &self,
        state: &mut State,
        reference: &str,
    ) -> Result<(Arc<Vec<Vault>>, String, Option<String>), ConnectError> {
        let vaults = self.vaults(state, Fetch::IfMissing).await?;
        match resolve_vault(&vaults, reference) {
            Ok((id, note)) => Ok((vaults, id, note)),
            Err(e) => {
                let vaults = self.vaults(state, Fetch::IfStale).await?;
                let (id, note) = resolve_vault(&vaults, reference).map_err(|_| e)?;
                Ok((vaults, id, note))
            }
        }
    }

    /// Resolves against what is cached, without any request. `None` when the vault or its
    /// listing is not cached.
    pub async fn resolve_cached(
        &self,
        path: &ItemPath,
    ) -> Option<Result<Resolution, ConnectError>> {
        let state = self.state.lock().await;
        let (vaults, _) = state.vaults.as_ref()?;
        let (vault_id, vault_note) = match resolve_vault(vaults, &path.vault) {
            Ok(v) => v,
            Err(e) => return Some(Err(e)),
        };
        let listing = state.listings.get(&vault_id)?;
        Some(
            resolve_item(&listing.items, &vault_id, &path.item).map(|(item, item_note)| {
                Resolution {
                    vault_id: vault_id.clone(),
                    item_id: item.id.clone(),
                    version: item.version,
                    note: join_notes(vault_note, item_note),
                    ignored: item.tags.iter().any(|t| t == IGNORE_TAG),
                }
            }),
        )
    }

    /// Why the last poll could not tell whether what is cached for `vault_id` is current: the
    /// vault list or this vault's item listing failed. `None` when the last poll saw it (or
    /// there was no poll yet).
    pub async fn refresh_failure(&self, vault_id: &str) -> Option<ConnectError> {
        let state = self.state.lock().await;
        state
            .vaults_failure
            .clone()
            .or_else(|| state.listing_failures.get(vault_id).cloned())
    }

    /// One poll: lists vaults, then lists the items of each vault in `in_use` whose
    /// `contentVersion` changed since its last listing. With `verify`, one vault more is listed
    /// whatever its `contentVersion` says: the one whose listing is the oldest (the first by id
    /// among equals), so that repeated verifications go round every vault in use. A server
    /// that leaves `contentVersion` at 0 gets a listing every time. A vault list that fails is
    /// the error; a listing that fails keeps the vault's old listing, is named in
    /// `failed`, and the other vaults are listed all the same. Both are remembered until the
    /// next poll (see [`Catalog::refresh_failure`]).
    pub async fn refresh(
        &self,
        in_use: &HashSet<String>,
        verify: bool,
    ) -> Result<RefreshReport, ConnectError> {
        let mut state = self.state.lock().await;
        let vaults = match self.vaults(&mut state, Fetch::Always).await {
            Ok(vaults) => vaults,
            Err(e) => {
                state.vaults_failure = Some(e.clone());
                return Err(e);
            }
        };
        state.vaults_failure = None;
        let mut failures = HashMap::new();
        let mut report = RefreshReport::default();
        let mut ids: Vec<&String> = in_use.iter().collect();
        ids.sort();
        let unchanged: HashSet<&String> = ids
            .iter()
            .copied()
            .filter(|vault_id| {
                let listed = vaults
                    .iter()
                    .find(|v| &v.id == *vault_id)
                    .map(|v| v.content_version);
                let cached = state.listings.get(*vault_id).map(|l| l.content_version);
                matches!((listed, cached), (Some(now), Some(before)) if now != 0 && now == before)
            })
            .collect();
        let verified = verify
            .then(|| {
                ids.iter()
                    .copied()
                    .filter(|id| unchanged.contains(id))
                    .min_by_key(|id| state.listings.get(*id).map(|l| l.fetched))
            })
            .flatten();
        for vault_id in ids {
            if unchanged.contains(vault_id) && Some(vault_id) != verified {
                report.unchanged += 1;
                continue;
            }
            match self.listing(&mut state, vault_id, Fetch::Always).await {
                Ok(_) => report.listed.push(vault_id.clone()),
                // A vault that went away or was revoked: forget its listing so the items in it
                // fail to resolve and their reconcilers report why.
                Err(
                    ConnectError::VaultNotFound { .. }
                    | ConnectError::Forbidden { .. }
                    | ConnectError::NotFound { .. },
                ) => {
                    state.listings.remove(vault_id);
                    report.listed.push(vault_id.clone());
                }
                Err(e) => {
                    report.listed.push(vault_id.clone());
                    report.failed.push(vault_id.clone());
                    failures.insert(vault_id.clone(), e);
                }
            }
        }
        state.listing_failures = failures;
        // Listings of vaults no longer in use are dropped to keep memory to what is needed.
        state.listings.retain(|id, _| in_use.contains(id));
        Ok(report)
    }

    fn cached_is_enough(&self, fetch: Fetch, fetched: Instant) -> bool {
        match fetch {
            Fetch::IfMissing => true,
            Fetch::IfStale => fetched.elapsed() < self.miss_refresh_after,
            Fetch::Always => false,
        }
    }

    async fn vaults(
        &self,
        state: &mut State,
        fetch: Fetch,
    ) -> Result<Arc<Vec<Vault>>, ConnectError> {
        if let Some((vaults, fetched)) = &state.vaults
            && self.cached_is_enough(fetch, *fetched)
        {
            return Ok(vaults.clone());
        }
        let vaults = Arc::new(self.client.list_vaults().await?);
        state.vaults = Some((vaults.clone(), Instant::now()));
        Ok(vaults)
    }

    async fn listing(
        &self,
        state: &mut State,
        vault_id: &str,
        fetch: Fetch,
    ) -> Result<Arc<Vec<ItemSummary>>, ConnectError> {
        if let Some(listing) = state.listings.get(vault_id)
            && self.cached_is_enough(fetch, listing.fetched)
        {
            return Ok(listing.items.clone());
        }
        let mut items = self.client.list_items(vault_id).await?;
        items.iter_mut().for_each(keep_what_is_read);
        let items = Arc::new(items);
        let content_version = state
            .vaults
            .as_ref()
            .and_then(|(vaults, _)| vaults.iter().find(|v| v.id == vault_id))
            .map(|v| v.content_version)
            .unwrap_or(0);
        state.listings.insert(
            vault_id.to_string(),
            Listing {
                items: items.clone(),
                content_version,
                fetched: Instant::now(),
            },
        );
        Ok(items)
    }
}

/// Of a listed item, drops what the catalog never reads (a listing is kept for every vault in
/// use: 10,000 items are a few MB). Kept: the id, title and createdAt (a path resolves by id or
/// title, ties to the oldest), the version, and the tags ([`IGNORE_TAG`]).
fn keep_what_is_read(item: &mut ItemSummary) {
    item.vault.id = String::new();
    item.category = String::new();
    item.state = None;
    item.updated_at = None;
}
