//! The shared cache of the managed Secrets ([`SecretCache`]): for each, only what its readers
//! read, in a compact record, not the Secret's metadata as the watch delivers it.
//!
//! At 10,000 Secrets a cache of `PartialObjectMeta` cost about 15 MB: a whole `ObjectMeta` per
//! Secret, and an annotation map (a ~540-B B-tree node) for the three annotations kept. A
//! [`CachedSecret`] is a few hundred bytes (benches/README.md, "Memory at N=10,000").

use std::sync::{Arc, RwLock};

use kube::{ResourceExt, runtime::watcher};
use tokio::sync::watch;

use super::SecretMeta;
use crate::vocabulary::{AUTO_RESTART_ANNOTATION, DIGEST_ANNOTATION, RESUME_RESTARTS_ANNOTATION};

/// What the readers of the cache know of one managed Secret: the annotations they read (the
/// data digest and the two restart settings), its owner references, and its uid and
/// resourceVersion (the preconditions of a deletion).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CachedSecret {
    uid: Option<Box<str>>,
    resource_version: Option<Box<str>>,
    digest: Option<Box<str>>,
    auto_restart: Option<Box<str>>,
    resume_restarts: Option<Box<str>>,
    owners: Box<[Owner]>,
}

/// An owner reference of a cached Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub api_version: Box<str>,
    pub kind: Box<str>,
    pub name: Box<str>,
    pub uid: Box<str>,
    /// The managing controller (`controller: true`).
    pub controller: bool,
}

impl CachedSecret {
    /// The record of `secret`'s metadata.
    pub fn of(secret: &SecretMeta) -> Self {
        let annotation = |key: &str| secret.annotations().get(key).map(|v| v.as_str().into());
        let field = |v: &Option<String>| v.as_deref().map(Box::from);
        CachedSecret {
            uid: field(&secret.metadata.uid),
            resource_version: field(&secret.metadata.resource_version),
            digest: annotation(DIGEST_ANNOTATION),
            auto_restart: annotation(AUTO_RESTART_ANNOTATION),
            resume_restarts: annotation(RESUME_RESTARTS_ANNOTATION),
            owners: secret
                .owner_references()
                .iter()
                .map(|o| Owner {
                    api_version: o.api_version.as_str().into(),
                    kind: o.kind.as_str().into(),
                    name: o.name.as_str().into(),
                    uid: o.uid.as_str().into(),
                    controller: o.controller == Some(true),
                })
                .collect(),
        }
    }

    pub fn uid(&self) -> Option<&str> {
        self.uid.as_deref()
    }

    pub fn resource_version(&self) -> Option<&str> {
        self.resource_version.as_deref()
    }

    /// The digest of its data ([`DIGEST_ANNOTATION`]), when written.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// Its `auto-restart` setting, when set (an empty value means unset).
    pub fn auto_restart(&self) -> Option<&str> {
        self.auto_restart.as_deref().filter(|v| !v.is_empty())
    }

    /// Its [`RESUME_RESTARTS_ANNOTATION`], when set.
    pub fn resume_restarts(&self) -> Option<&str> {
        self.resume_restarts.as_deref()
    }

    pub fn owners(&self) -> &[Owner] {
        &self.owners
    }
}

type Records = super::ByNamespace<Arc<CachedSecret>>;

/// The managed Secrets of one scope, as last listed and watched; cheap to clone, all clones see
/// the same cache. Filled by a [`CacheWriter`] from the watch's events.
#[derive(Clone)]
pub struct SecretCache {
    records: Arc<RwLock<Records>>,
    ready: watch::Receiver<bool>,
}

/// Applies the watch's events to a [`SecretCache`].
pub struct CacheWriter {
    records: Arc<RwLock<Records>>,
    ready: watch::Sender<bool>,
    /// A listing in progress: it replaces the cache when it is complete.
    listing: Option<Records>,
}

/// An empty cache, not ready until its writer has applied a whole listing.
pub fn secret_cache() -> (SecretCache, CacheWriter) {
    let records = Arc::new(RwLock::new(Records::new()));
    let (tx, rx) = watch::channel(false);
    let cache = SecretCache {
        records: records.clone(),
        ready: rx,
    };
    let writer = CacheWriter {
        records,
        ready: tx,
        listing: None,
    };
    (cache, writer)
}

/// The cache ended before it was ever filled (its writer is gone).
#[derive(Debug, thiserror::Error)]
#[error("the cache of managed Secrets ended before its first listing")]
pub struct CacheGone;

fn insert(records: &mut Records, secret: &SecretMeta) {
    let namespace = secret.namespace().unwrap_or_default();
    records
        .entry(namespace.into())
        .or_default()
        .insert(secret.name_any().into(), Arc::new(CachedSecret::of(secret)));
}

impl CacheWriter {
    /// Applies one watch event: a listing replaces the whole cache when it is complete (and
    /// makes the cache ready), an update replaces one record, a deletion removes it.
    pub fn apply(&mut self, event: &watcher::Event<SecretMeta>) {
        match event {
            watcher::Event::Init => self.listing = Some(Records::new()),
            watcher::Event::InitApply(secret) => {
                insert(self.listing.get_or_insert_default(), secret);
            }
            watcher::Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                *self.records.write().expect("secret cache lock") = listed;
                self.ready.send_replace(true);
            }
            watcher::Event::Apply(secret) => {
                insert(
                    &mut self.records.write().expect("secret cache lock"),
                    secret,
                );
            }
            watcher::Event::Delete(secret) => {
                let namespace = secret.namespace().unwrap_or_default();
                let mut records = self.records.write().expect("secret cache lock");
                if let Some(names) = records.get_mut(namespace.as_str()) {
                    names.remove(secret.name_any().as_str());
                    if names.is_empty() {
                        records.remove(namespace.as_str());
                    }
                }
            }
        }
    }
}

impl SecretCache {
    /// A ready cache of `secrets`, for tests.
    #[cfg(test)]
    pub fn listed(secrets: impl IntoIterator<Item = SecretMeta>) -> Self {
        let (cache, mut writer) = secret_cache();
        writer.apply(&watcher::Event::Init);
        for s in secrets {
            writer.apply(&watcher::Event::InitApply(s));
        }
        writer.apply(&watcher::Event::InitDone);
        // Once ready, a cache stays ready without its writer.
        cache
    }

    /// Secret `name` of `namespace`, when cached.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<CachedSecret>> {
        let records = self.records.read().expect("secret cache lock");
        records.get(namespace)?.get(name).cloned()
    }

    /// The cached Secrets of `namespace`, by name.
    pub fn in_namespace(&self, namespace: &str) -> Vec<(String, Arc<CachedSecret>)> {
        let records = self.records.read().expect("secret cache lock");
        records
            .get(namespace)
            .into_iter()
            .flatten()
            .map(|(name, s)| (name.to_string(), s.clone()))
            .collect()
    }

    /// Returns once a whole listing is cached; an error if the writer went away before that.
    pub async fn wait_until_ready(&self) -> Result<(), CacheGone> {
        let mut ready = self.ready.clone();
        ready
            .wait_for(|r| *r)
            .await
            .map(|_| ())
            .map_err(|_| CacheGone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

    fn secret(namespace: &str, name: &str, digest: &str) -> SecretMeta {
        use kube::api::PartialObjectMetaExt;
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            annotations: Some(
                [
                    (DIGEST_ANNOTATION.to_string(), digest.to_string()),
                    (AUTO_RESTART_ANNOTATION.to_string(), String::new()),
                    ("other".to_string(), "x".to_string()),
                ]
                .into(),
            ),
            owner_references: Some(vec![OwnerReference {
                api_version: "onepassword.com/v1".into(),
                kind: "OnePasswordItem".into(),
                name: name.into(),
                uid: "u1".into(),
                controller: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        }
        .into_response_partial()
    }

    #[test]
    fn a_record_keeps_the_digest_the_restart_settings_and_the_owners() {
        let record = CachedSecret::of(&secret("apps", "db", "v1:a"));
        assert_eq!(record.digest(), Some("v1:a"));
        // Empty means unset.
        assert_eq!(record.auto_restart(), None);
        assert_eq!(record.resume_restarts(), None);
        let owner = &record.owners()[0];
        assert_eq!(
            (&*owner.kind, &*owner.name, &*owner.uid, owner.controller),
            ("OnePasswordItem", "db", "u1", true)
        );
    }

    #[tokio::test]
    async fn a_listing_replaces_the_cache_when_complete_and_updates_follow() {
        let (cache, mut writer) = secret_cache();
        writer.apply(&watcher::Event::Init);
        writer.apply(&watcher::Event::InitApply(secret("apps", "db", "v1:a")));
        // Not ready, and nothing visible, until the listing is done.
        assert!(cache.get("apps", "db").is_none());
        assert!(
            tokio::time::timeout(
                std::time::Duration::from_millis(10),
                cache.wait_until_ready()
            )
            .await
            .is_err()
        );
        writer.apply(&watcher::Event::InitDone);
        cache.wait_until_ready().await.unwrap();
        assert_eq!(cache.get("apps", "db").unwrap().digest(), Some("v1:a"));
        writer.apply(&watcher::Event::Apply(secret("apps", "db", "v1:b")));
        writer.apply(&watcher::Event::Apply(secret("apps", "api", "v1:c")));
        assert_eq!(cache.get("apps", "db").unwrap().digest(), Some("v1:b"));
        assert_eq!(cache.in_namespace("apps").len(), 2);
        writer.apply(&watcher::Event::Delete(secret("apps", "db", "v1:b")));
        assert!(cache.get("apps", "db").is_none());
        // A relisting drops what it no longer holds.
        writer.apply(&watcher::Event::Init);
        writer.apply(&watcher::Event::InitDone);
        assert!(cache.in_namespace("apps").is_empty());
        // Once ready, it stays ready without its writer.
        drop(writer);
        cache.wait_until_ready().await.unwrap();
    }

    #[tokio::test]
    async fn a_writer_gone_before_the_first_listing_ends_the_wait() {
        let (cache, writer) = secret_cache();
        drop(writer);
        assert!(cache.wait_until_ready().await.is_err());
    }
}
