//! The simulator's data: vaults, items with the content of their files, and tokens with the vaults
//! each may read. Plain data and rules, no I/O; the HTTP side lives in `api.rs` and `server.rs`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use base64::Engine;
use rand::Rng;

use onepassword_connect::model::{
    Field, File, FullItem, ItemSummary, Section, Vault, VaultRef, is_valid_id,
};

/// Largest file (in bytes) that `inline_files=true` embeds; Connect's `OP_MAX_INLINE_FILE_SIZE_KB`
/// defaults to 100.
pub const MAX_INLINE_FILE_BYTES: u64 = 100 * 1024;

/// A fresh Connect-style id: 26 characters of `[a-z0-9]`.
pub fn new_id() -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..26)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// The current time as RFC 3339, to the millisecond (Connect's precision is finer; millisecond
/// keeps items created in one test distinguishable by `createdAt`).
pub fn now() -> String {
    let ts = jiff::Timestamp::now();
    ts.round(jiff::Unit::Millisecond).unwrap_or(ts).to_string()
}

/// The path Connect gives in `content_path`, and that serves a file's raw content.
pub fn content_path(vault_id: &str, item_id: &str, file_id: &str) -> String {
    format!("/v1/vaults/{vault_id}/items/{item_id}/files/{file_id}/content")
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("vault {0} not found")]
    VaultNotFound(String),
    #[error("item {0} not found")]
    ItemNotFound(String),
    #[error("file {0} not found")]
    FileNotFound(String),
    #[error("{0:?} is not a valid id (26 characters of [a-z0-9])")]
    InvalidId(String),
    #[error("id {0} is already used")]
    DuplicateId(String),
    #[error("the file {0:?} has content that is not valid base64")]
    InvalidBase64(String),
    #[error("the file {0:?} has both `content` and `base64`; give one")]
    AmbiguousFile(String),
    /// Tokens are not printed: even a simulator's tokens end up in logs.
    #[error("no such token")]
    UnknownToken,
    #[error("the simulator is not running")]
    Stopped,
}

/// Which vaults a token may read, as given by a user: vault names or ids, or all of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenAccess {
    /// Every vault, including vaults added later (`"*"` in a seed file).
    All,
    /// These vaults, by name or id.
    Vaults(Vec<String>),
}

impl TokenAccess {
    pub fn vaults<I, S>(vaults: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        TokenAccess::Vaults(vaults.into_iter().map(Into::into).collect())
    }
}

/// Which vaults a token may read, resolved to vault ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Access {
    All,
    Vaults(BTreeSet<String>),
}

impl Access {
    pub fn allows(&self, vault_id: &str) -> bool {
        match self {
            Access::All => true,
            Access::Vaults(ids) => ids.contains(vault_id),
        }
    }
}

struct VaultState {
    vault: Vault,
    items: Vec<ItemState>,
}

struct ItemState {
    /// As served by `GET item`: `content_path` set, no inline `content`.
    item: FullItem,
    /// The content of `item.files[i]`.
    contents: Vec<Vec<u8>>,
    /// The item as it was before its last change, for [`View::Lagging`].
    previous: Option<Box<ItemState>>,
}

impl ItemState {
    fn seen(&self, view: View) -> &ItemState {
        match (view, &self.previous) {
            (View::Lagging, Some(previous)) => previous,
            _ => self,
        }
    }
}

/// Which state of the items a request is answered from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum View {
    #[default]
    Current,
    /// What a Connect replica one change behind serves (behind a load balancer, a replica
    /// that lags): every item as it was before its last change; an item never changed since
    /// it was created is served as it is.
    Lagging,
}

/// All vaults, items and tokens. Vaults and items keep their creation order, which is also the
/// order of listings.
#[derive(Default)]
pub struct Store {
    vaults: Vec<VaultState>,
    tokens: BTreeMap<String, Access>,
}

impl fmt::Debug for Store {
    // Item values and tokens stay out of `Debug`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let vaults: Vec<_> = self
            .vaults
            .iter()
            .map(|v| (&v.vault.name, v.items.len()))
            .collect();
        f.debug_struct("Store")
            .field("vaults", &vaults)
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl Store {
    pub fn new() -> Self {
        Store::default()
    }

    // ---- vaults ----

    /// Adds a vault. `id` is generated when `None`.
    pub fn add_vault(
        &mut self,
        name: &str,
        id: Option<&str>,
        description: &str,
    ) -> Result<Vault, SimError> {
        let id = match id {
            Some(id) if !is_valid_id(id) => return Err(SimError::InvalidId(id.to_string())),
            Some(id) if self.id_in_use(id) => return Err(SimError::DuplicateId(id.to_string())),
            Some(id) => id.to_string(),
            None => self.fresh_id(),
        };
        let at = now();
        let vault = Vault {
            id,
            name: name.to_string(),
            description: description.to_string(),
            attribute_version: 1,
            content_version: 1,
            items: 0,
            vault_type: "USER_CREATED".into(),
            created_at: Some(at.clone()),
            updated_at: Some(at),
        };
        self.vaults.push(VaultState {
            vault: vault.clone(),
            items: Vec::new(),
        });
        Ok(vault)
    }

    /// Every vault, in creation order.
    pub fn vaults(&self) -> impl Iterator<Item = &Vault> {
        self.vaults.iter().map(|v| &v.vault)
    }

    pub fn vault_by_id(&self, id: &str) -> Option<&Vault> {
        self.vaults
            .iter()
            .find(|v| v.vault.id == id)
            .map(|v| &v.vault)
    }

    /// A vault by id, else by exact name, else by name ignoring case; the oldest on duplicates.
    pub fn vault(&self, reference: &str) -> Result<&Vault, SimError> {
        self.vault_index(reference).map(|i| &self.vaults[i].vault)
    }

    fn vault_index(&self, reference: &str) -> Result<usize, SimError> {
        let by = |f: &dyn Fn(&Vault) -> bool| self.vaults.iter().position(|v| f(&v.vault));
        by(&|v| v.id == reference)
            .or_else(|| by(&|v| v.name == reference))
            .or_else(|| by(&|v| v.name.eq_ignore_ascii_case(reference)))
            .ok_or_else(|| SimError::VaultNotFound(reference.to_string()))
    }

    // ---- items ----

    /// The items of a vault (by id), in creation order; `None` if there is no such vault.
    pub fn items_by_vault_id(&self, vault_id: &str) -> Option<impl Iterator<Item = &FullItem>> {
        self.items_seen(vault_id, View::Current)
    }

    /// [`Store::items_by_vault_id`] as `view` sees them.
    pub fn items_seen(
        &self,
        vault_id: &str,
        view: View,
    ) -> Option<impl Iterator<Item = &FullItem>> {
        self.vaults
            .iter()
            .find(|v| v.vault.id == vault_id)
            .map(move |v| v.items.iter().map(move |i| &i.seen(view).item))
    }

    /// The listing view of a vault's items.
    pub fn summaries(&self, vault_reference: &str) -> Result<Vec<ItemSummary>, SimError> {
        let v = self.vault_index(vault_reference)?;
        Ok(self.vaults[v]
            .items
            .iter()
            .map(|i| i.item.summary())
            .collect())
    }

    /// An item by id, else by exact title (the oldest on duplicates), in a vault given by id or name.
    pub fn item(&self, vault_reference: &str, item_reference: &str) -> Result<&FullItem, SimError> {
        let (v, i) = self.item_index(vault_reference, item_reference)?;
        Ok(&self.vaults[v].items[i].item)
    }

    pub fn item_by_ids(&self, vault_id: &str, item_id: &str) -> Option<&FullItem> {
        self.item_seen(vault_id, item_id, View::Current)
    }

    /// [`Store::item_by_ids`] as `view` sees it.
    pub fn item_seen(&self, vault_id: &str, item_id: &str, view: View) -> Option<&FullItem> {
        self.items_seen(vault_id, view)?.find(|i| i.id == item_id)
    }

    fn item_state(
        &self,
        vault_id: &str,
        item_id: &str,
        view: View,
    ) -> Result<&ItemState, SimError> {
        Ok(self
            .vaults
            .iter()
            .find(|v| v.vault.id == vault_id)
            .ok_or_else(|| SimError::VaultNotFound(vault_id.to_string()))?
            .items
            .iter()
            .find(|i| i.item.id == item_id)
            .ok_or_else(|| SimError::ItemNotFound(item_id.to_string()))?
            .seen(view))
    }

    /// A file and its content; ids only, as the API takes them.
    pub fn file(
        &self,
        vault_id: &str,
        item_id: &str,
        file_id: &str,
    ) -> Result<(&File, &[u8]), SimError> {
        self.file_seen(vault_id, item_id, file_id, View::Current)
    }

    /// [`Store::file`] as `view` sees it.
    pub fn file_seen(
        &self,
        vault_id: &str,
        item_id: &str,
        file_id: &str,
        view: View,
    ) -> Result<(&File, &[u8]), SimError> {
        let state = self.item_state(vault_id, item_id, view)?;
        let at = state
            .item
            .files
            .iter()
            .position(|f| f.id == file_id)
            .ok_or_else(|| SimError::FileNotFound(file_id.to_string()))?;
        Ok((&state.item.files[at], &state.contents[at]))
    }

    /// The files of an item with their contents.
    pub fn files(&self, vault_id: &str, item_id: &str) -> Option<Vec<(&File, &[u8])>> {
        self.files_seen(vault_id, item_id, View::Current)
    }

    /// [`Store::files`] as `view` sees them.
    pub fn files_seen(
        &self,
        vault_id: &str,
        item_id: &str,
        view: View,
    ) -> Option<Vec<(&File, &[u8])>> {
        let state = self.item_state(vault_id, item_id, view).ok()?;
        Some(
            state
                .item
                .files
                .iter()
                .zip(state.contents.iter().map(Vec::as_slice))
                .collect(),
        )
    }

    fn item_index(
        &self,
        vault_reference: &str,
        item_reference: &str,
    ) -> Result<(usize, usize), SimError> {
        let v = self.vault_index(vault_reference)?;
        let items = &self.vaults[v].items;
        let i = items
            .iter()
            .position(|i| i.item.id == item_reference)
            .or_else(|| items.iter().position(|i| i.item.title == item_reference))
            .ok_or_else(|| SimError::ItemNotFound(item_reference.to_string()))?;
        Ok((v, i))
    }

    /// Creates an item, or replaces the item of the same id in that vault.
    ///
    /// A new item gets version 1 (an empty id is generated; `createdAt` is kept if given); a
    /// replaced one gets the old version + 1 and keeps its `createdAt`, whatever the input says.
    /// Either way the vault's `contentVersion` goes up by one. Files take their content from
    /// their base64 `content`, else from the existing file of the same id, else are empty.
    /// Fields, sections and files without an id get one.
    pub fn put_item(
        &mut self,
        vault_reference: &str,
        mut item: FullItem,
    ) -> Result<FullItem, SimError> {
        let v = self.vault_index(vault_reference)?;
        let vault_id = self.vaults[v].vault.id.clone();
        if item.id.is_empty() {
            item.id = self.fresh_id();
        } else if !is_valid_id(&item.id) {
            return Err(SimError::InvalidId(item.id));
        }
        let existing = self.vaults[v]
            .items
            .iter()
            .position(|i| i.item.id == item.id);
        if existing.is_none() && self.id_in_use(&item.id) {
            return Err(SimError::DuplicateId(item.id));
        }

        let mut contents = Vec::with_capacity(item.files.len());
        for file in &mut item.files {
            let content = match file.content.take() {
                Some(b64) => base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|_| SimError::InvalidBase64(file.name.clone()))?,
                None => existing
                    .and_then(|at| {
                        let old = &self.vaults[v].items[at];
                        let pos = old.item.files.iter().position(|f| f.id == file.id)?;
                        Some(old.contents[pos].clone())
                    })
                    .unwrap_or_default(),
            };
            contents.push(content);
        }

        let at = now();
        match existing {
            Some(pos) => {
                let old = &self.vaults[v].items[pos].item;
                item.version = old.version + 1;
                item.created_at = old.created_at.clone();
                item.updated_at = Some(at.clone());
            }
            None => {
                item.version = 1;
                item.created_at = item.created_at.or_else(|| Some(at.clone()));
                item.updated_at = item.updated_at.or_else(|| item.created_at.clone());
            }
        }
        item.vault = VaultRef {
            id: vault_id.clone(),
        };
        item.state = None;
        self.normalize(&mut item, &contents);

        let state = ItemState {
            item: item.clone(),
            contents,
            previous: None,
        };
        let vault = &mut self.vaults[v];
        match existing {
            Some(pos) => {
                // One version of history is enough for a replica one change behind.
                let mut old = std::mem::replace(&mut vault.items[pos], state);
                old.previous = None;
                vault.items[pos].previous = Some(Box::new(old));
            }
            None => vault.items.push(state),
        }
        Self::bump_vault(vault, at);
        Ok(item)
    }

    /// Sets the value of the first field with this label, or adds a `STRING` field with it.
    pub fn set_field(
        &mut self,
        vault_reference: &str,
        item_reference: &str,
        label: &str,
        value: &str,
    ) -> Result<FullItem, SimError> {
        let (v, i) = self.item_index(vault_reference, item_reference)?;
        let mut item = self.vaults[v].items[i].item.clone();
        match item.fields.iter_mut().find(|f| f.label == label) {
            Some(field) => field.value = Some(value.to_string()),
            None => item.fields.push(Field {
                label: label.to_string(),
                field_type: "STRING".into(),
                value: Some(value.to_string()),
                ..Default::default()
            }),
        }
        let vault_id = self.vaults[v].vault.id.clone();
        self.put_item(&vault_id, item)
    }

    /// Replaces the content of the item's file with this name, or adds a file.
    pub fn set_file(
        &mut self,
        vault_reference: &str,
        item_reference: &str,
        name: &str,
        content: &[u8],
    ) -> Result<FullItem, SimError> {
        let (v, i) = self.item_index(vault_reference, item_reference)?;
        let mut item = self.vaults[v].items[i].item.clone();
        let encoded = base64::engine::general_purpose::STANDARD.encode(content);
        match item.files.iter_mut().find(|f| f.name == name) {
            Some(file) => file.content = Some(encoded),
            None => item.files.push(File {
                name: name.to_string(),
                content: Some(encoded),
                ..Default::default()
            }),
        }
        let vault_id = self.vaults[v].vault.id.clone();
        self.put_item(&vault_id, item)
    }

    pub fn delete_item(
        &mut self,
        vault_reference: &str,
        item_reference: &str,
    ) -> Result<FullItem, SimError> {
        let (v, i) = self.item_index(vault_reference, item_reference)?;
        let vault = &mut self.vaults[v];
        let removed = vault.items.remove(i);
        Self::bump_vault(vault, now());
        Ok(removed.item)
    }

    fn bump_vault(vault: &mut VaultState, at: String) {
        vault.vault.content_version += 1;
        vault.vault.items = vault.items.len() as u64;
        vault.vault.updated_at = Some(at);
    }

    /// Fills in what Connect always sends: ids, field types, file sizes and content paths.
    fn normalize(&self, item: &mut FullItem, contents: &[Vec<u8>]) {
        if item.category.is_empty() {
            item.category = "CUSTOM".into();
        }
        for section in &mut item.sections {
            if section.id.is_empty() {
                section.id = new_id();
            }
        }
        let mut used: BTreeSet<String> = item
            .fields
            .iter()
            .filter(|f| !f.id.is_empty())
            .map(|f| f.id.clone())
            .collect();
        for field in &mut item.fields {
            if field.id.is_empty() {
                field.id = field_id(&field.purpose, &used);
                used.insert(field.id.clone());
            }
            if field.field_type.is_empty() {
                field.field_type = "STRING".into();
            }
        }
        for (file, content) in item.files.iter_mut().zip(contents) {
            if file.id.is_empty() {
                file.id = new_id();
            }
            file.size = content.len() as u64;
            file.content_path = content_path(&item.vault.id, &item.id, &file.id);
        }
    }

    fn id_in_use(&self, id: &str) -> bool {
        self.vaults
            .iter()
            .any(|v| v.vault.id == id || v.items.iter().any(|i| i.item.id == id))
    }

    fn fresh_id(&self) -> String {
        loop {
            let id = new_id();
            if !self.id_in_use(&id) {
                return id;
            }
        }
    }

    // ---- tokens ----

    /// Adds a token, or replaces what an existing one may read.
    pub fn add_token(&mut self, token: &str, access: &TokenAccess) -> Result<(), SimError> {
        let access = self.resolve(access)?;
        self.tokens.insert(token.to_string(), access);
        Ok(())
    }

    pub fn remove_token(&mut self, token: &str) -> Result<(), SimError> {
        self.tokens
            .remove(token)
            .map(|_| ())
            .ok_or(SimError::UnknownToken)
    }

    /// Lets a token read one more vault (no-op for a token that reads all vaults).
    pub fn grant(&mut self, token: &str, vault_reference: &str) -> Result<(), SimError> {
        let id = self.vault(vault_reference)?.id.clone();
        match self.tokens.get_mut(token).ok_or(SimError::UnknownToken)? {
            Access::All => {}
            Access::Vaults(ids) => {
                ids.insert(id);
            }
        }
        Ok(())
    }

    /// Takes one vault from a token. A token that reads all vaults is narrowed to every current
    /// vault but this one.
    pub fn revoke(&mut self, token: &str, vault_reference: &str) -> Result<(), SimError> {
        let id = self.vault(vault_reference)?.id.clone();
        let every: BTreeSet<String> = self.vaults().map(|v| v.id.clone()).collect();
        let access = self.tokens.get_mut(token).ok_or(SimError::UnknownToken)?;
        if *access == Access::All {
            *access = Access::Vaults(every);
        }
        if let Access::Vaults(ids) = access {
            ids.remove(&id);
        }
        Ok(())
    }

    pub fn access(&self, token: &str) -> Option<&Access> {
        self.tokens.get(token)
    }

    pub fn tokens(&self) -> impl Iterator<Item = (&String, &Access)> {
        self.tokens.iter()
    }

    fn resolve(&self, access: &TokenAccess) -> Result<Access, SimError> {
        match access {
            TokenAccess::All => Ok(Access::All),
            TokenAccess::Vaults(refs) => refs
                .iter()
                .map(|r| self.vault(r).map(|v| v.id.clone()))
                .collect::<Result<_, _>>()
                .map(Access::Vaults),
        }
    }
}

/// Built-in fields of Login and Password items have well-known ids in 1Password; other fields get
/// random ones.
fn field_id(purpose: &str, used: &BTreeSet<String>) -> String {
    let known = match purpose {
        "USERNAME" => Some("username"),
        "PASSWORD" => Some("password"),
        "NOTES" => Some("notesPlain"),
        _ => None,
    };
    match known {
        Some(id) if !used.contains(id) => id.to_string(),
        _ => new_id(),
    }
}

/// The section of a field, by id, if the item has one with that label or id.
pub fn section_id(sections: &[Section], reference: &str) -> Option<String> {
    sections
        .iter()
        .find(|s| s.id == reference)
        .or_else(|| {
            sections
                .iter()
                .find(|s| s.label.as_deref() == Some(reference))
        })
        .map(|s| s.id.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(title: &str) -> FullItem {
        FullItem {
            title: title.into(),
            category: "LOGIN".into(),
            fields: vec![
                Field {
                    label: "username".into(),
                    purpose: "USERNAME".into(),
                    value: Some("admin".into()),
                    ..Default::default()
                },
                Field {
                    label: "password".into(),
                    purpose: "PASSWORD".into(),
                    field_type: "CONCEALED".into(),
                    value: Some("hunter2".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn store_with_vault() -> (Store, String) {
        let mut store = Store::new();
        let vault = store.add_vault("Demo", None, "").unwrap();
        (store, vault.id)
    }

    #[test]
    fn generated_ids_have_the_connect_shape() {
        for _ in 0..100 {
            assert!(is_valid_id(&new_id()));
        }
    }

    #[test]
    fn a_new_item_starts_at_version_1_and_gets_ids_and_timestamps() {
        let (mut store, vault) = store_with_vault();
        let item = store.put_item(&vault, login("db")).unwrap();
        assert!(is_valid_id(&item.id));
        assert_eq!(item.version, 1);
        assert_eq!(item.vault.id, vault);
        assert_eq!(item.fields[0].id, "username");
        assert_eq!(item.fields[1].id, "password");
        assert_eq!(item.fields[0].field_type, "STRING");
        let created = item.created_at.clone().unwrap();
        assert!(created.parse::<jiff::Timestamp>().is_ok(), "{created}");
        assert_eq!(item.updated_at, item.created_at);
    }

    #[test]
    fn every_change_bumps_the_item_version_and_the_vault_content_version() {
        let (mut store, vault) = store_with_vault();
        let before = store.vault(&vault).unwrap().content_version;
        let item = store.put_item(&vault, login("db")).unwrap();
        assert_eq!(store.vault(&vault).unwrap().content_version, before + 1);
        assert_eq!(store.vault(&vault).unwrap().items, 1);

        let changed = store.set_field(&vault, "db", "password", "new").unwrap();
        assert_eq!(changed.version, 2);
        assert_eq!(changed.created_at, item.created_at);
        assert_eq!(changed.fields[1].value.as_deref(), Some("new"));
        assert_eq!(store.vault(&vault).unwrap().content_version, before + 2);

        let mut replaced = changed.clone();
        replaced.title = "db2".into();
        replaced.version = 77;
        let replaced = store.put_item(&vault, replaced).unwrap();
        assert_eq!(replaced.version, 3);
        assert_eq!(store.summaries(&vault).unwrap().len(), 1);

        let with_file = store.set_file(&vault, &item.id, "a.txt", b"hello").unwrap();
        assert_eq!(with_file.version, 4);
        store.delete_item(&vault, &item.id).unwrap();
        let v = store.vault(&vault).unwrap();
        assert_eq!((v.content_version, v.items), (before + 5, 0));
    }

    #[test]
    fn set_field_adds_a_field_when_the_label_is_new() {
        let (mut store, vault) = store_with_vault();
        store.put_item(&vault, login("db")).unwrap();
        let item = store.set_field(&vault, "db", "host", "db.local").unwrap();
        let host = item.fields.iter().find(|f| f.label == "host").unwrap();
        assert!(is_valid_id(&host.id));
        assert_eq!(host.value.as_deref(), Some("db.local"));
    }

    #[test]
    fn files_keep_their_content_across_replacements_and_get_a_content_path() {
        let (mut store, vault) = store_with_vault();
        let item = store.put_item(&vault, login("db")).unwrap();
        let item = store.set_file(&vault, &item.id, "key.pem", b"PEM").unwrap();
        let file = item.files[0].clone();
        assert_eq!(file.size, 3);
        assert_eq!(
            file.content_path,
            format!(
                "/v1/vaults/{vault}/items/{}/files/{}/content",
                item.id, file.id
            )
        );
        assert_eq!(file.content, None);

        let replaced = store.put_item(&vault, item.clone()).unwrap();
        let (_, content) = store.file(&vault, &replaced.id, &file.id).unwrap();
        assert_eq!(content, b"PEM");

        let item = store
            .set_file(&vault, &item.id, "key.pem", b"NEW PEM")
            .unwrap();
        assert_eq!(item.files.len(), 1);
        assert_eq!(item.files[0].size, 7);
        assert_eq!(
            store.file(&vault, &item.id, "nosuchfileaaaaaaaaaaaaaaaa"),
            Err(SimError::FileNotFound("nosuchfileaaaaaaaaaaaaaaaa".into()))
        );
    }

    #[test]
    fn ids_are_checked_and_never_reused() {
        let (mut store, vault) = store_with_vault();
        let mut bad = login("db");
        bad.id = "NOT-AN-ID".into();
        assert_eq!(
            store.put_item(&vault, bad),
            Err(SimError::InvalidId("NOT-AN-ID".into()))
        );
        let mut clash = login("db");
        clash.id = vault.clone();
        assert_eq!(
            store.put_item(&vault, clash),
            Err(SimError::DuplicateId(vault.clone()))
        );
        assert!(matches!(
            store.add_vault("Other", Some(&vault), ""),
            Err(SimError::DuplicateId(_))
        ));
    }

    #[test]
    fn references_resolve_by_id_then_name_and_duplicates_pick_the_oldest() {
        let (mut store, vault) = store_with_vault();
        let first = store.put_item(&vault, login("db")).unwrap();
        let _second = store.put_item(&vault, login("db")).unwrap();
        assert_eq!(store.item("Demo", "db").unwrap().id, first.id);
        assert_eq!(store.item("demo", &first.id).unwrap().id, first.id);
        assert_eq!(
            store.item("Demo", "nope").unwrap_err(),
            SimError::ItemNotFound("nope".into())
        );
        assert_eq!(
            store.item("Nope", "db").unwrap_err(),
            SimError::VaultNotFound("Nope".into())
        );
    }

    #[test]
    fn token_access_resolves_names_and_can_be_granted_and_revoked() {
        let (mut store, a) = store_with_vault();
        let b = store.add_vault("Other", None, "").unwrap().id;
        store
            .add_token("t", &TokenAccess::vaults(["Demo"]))
            .unwrap();
        assert!(store.access("t").unwrap().allows(&a));
        assert!(!store.access("t").unwrap().allows(&b));
        store.grant("t", "Other").unwrap();
        assert!(store.access("t").unwrap().allows(&b));
        store.revoke("t", &a).unwrap();
        assert!(!store.access("t").unwrap().allows(&a));

        store.add_token("all", &TokenAccess::All).unwrap();
        store.revoke("all", "Demo").unwrap();
        assert_eq!(
            store.access("all"),
            Some(&Access::Vaults([b.clone()].into()))
        );
        assert_eq!(
            store.add_token("x", &TokenAccess::vaults(["Missing"])),
            Err(SimError::VaultNotFound("Missing".into()))
        );
        store.remove_token("t").unwrap();
        assert_eq!(store.access("t"), None);
        assert_eq!(store.remove_token("t"), Err(SimError::UnknownToken));
    }

    #[test]
    fn debug_shows_no_values_or_tokens() {
        let (mut store, vault) = store_with_vault();
        store.put_item(&vault, login("db")).unwrap();
        store.add_token("secret-token", &TokenAccess::All).unwrap();
        let printed = format!("{store:?}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("secret-token"),
            "{printed}"
        );
    }
}
