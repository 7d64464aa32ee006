//! Pure conversion of a 1Password item into a Kubernetes Secret.
//!
//! This is the one place that decides which keys and values a Secret gets. It reproduces what
//! the official operator (`pkg/kubernetessecrets/kubernetes_secrets_builder.go`, the version
//! with `--allow-empty-values`) writes for the same item:
//!
//! 1. every URL under its label; when several URLs give the same key, a primary URL wins, and
//!    otherwise the later one;
//! 2. every field under its label, a later field replacing an earlier URL or field with the same
//!    key (this is how equal labels in different sections behave);
//! 3. every file under its name, only when no URL, field or earlier file took that key.
//!
//! Labels and file names become keys with [`data_key`]. Empty values (URLs, fields and files)
//! are left out unless [`BuildOptions::allow_empty_values`] is set.
//!
//! Where the official operator would write a Secret that Kubernetes rejects, or behaves
//! randomly, we deliberately differ, and say so to the user through a [`KeyWarning`] or a
//! [`BuildError`] instead:
//! - a label that gives no valid key (empty, `.`, `..`, starting with `..`) is left out with a
//!   warning; the official operator leaves out only the empty ones and otherwise fails the whole
//!   Secret at the API server;
//! - URLs whose different labels give the same key: the official operator keeps one of them at
//!   random (it iterates a Go map); we apply the primary-else-later rule to the key;
//! - a name that cannot become a DNS-1123 subdomain, a malformed type and data over the 1 MiB
//!   limit are errors before anything is sent, where the official operator fails at the API.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fmt;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use crate::connect::model::{ItemUrl, ItemWithFiles};

pub mod items;
pub mod shape;
pub mod template;
pub use items::SourceItems;
pub use shape::Shape;

// Where they were first defined; tests and the fuzz target still name them here.
use crate::vocabulary::{ITEM_PATH_ANNOTATION, ITEM_VERSION_ANNOTATION, Reason};
/// Kubernetes refuses a Secret whose values add up to more than this (`MaxSecretSize`).
pub const MAX_SECRET_DATA_BYTES: usize = 1024 * 1024;
/// etcd's default `--max-request-bytes` (1.5 MiB): the API server cannot store a larger object
/// and answers `rpc error: ... larger than max` instead.
const ETCD_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// Kept free under [`ETCD_MAX_REQUEST_BYTES`] for what the API server and other writers add to a
/// Secret we write: uid, timestamps, their `managedFields` entries, labels and annotations.
const STORAGE_HEADROOM_BYTES: usize = 64 * 1024;
/// The largest Secret, as stored (see [`stored_size`]), that we send.
pub const MAX_STORED_SECRET_BYTES: usize = ETCD_MAX_REQUEST_BYTES - STORAGE_HEADROOM_BYTES;

/// Longest Secret name and longest data key Kubernetes accepts.
const MAX_NAME_LEN: usize = 253;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BuildOptions {
    /// Keep URLs, fields and files whose value is empty (`--allow-empty-values`).
    pub allow_empty_values: bool,
}

/// Where a key came from, to tell the user which part of the item to fix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeySource {
    Url,
    Field,
    File,
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeySource::Url => "URL",
            KeySource::Field => "field",
            KeySource::File => "file",
        })
    }
}

/// Something of the item that did not make it into the Secret as the user may expect. Carries
/// labels, names and keys, never values; its `Display` is meant for status messages.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyWarning {
    /// The label (or file name) gives no key Kubernetes accepts: it is empty once invalid
    /// characters are removed, or it is `.`, `..` or starts with `..`. Its value is left out.
    InvalidKey { source: KeySource, label: String },
    /// Several URLs or fields give this key; one is kept (a primary URL, else the later one;
    /// a field always replaces a URL).
    Overwritten { key: String },
    /// The file is left out because a URL, a field or an earlier file already gave this key.
    FileShadowed { file: String, key: String },
    /// A key of `spec.fixedData` replaced the item's key of the same name.
    FixedWins { key: String },
    /// An item's key under its `keyPrefix` is no valid key (too long, or a leading `..`).
    InvalidPrefixedKey { key: String },
    /// About one of the items of `spec.items`, by its name.
    InItem {
        item: String,
        warning: Box<KeyWarning>,
    },
}

impl KeyWarning {
    /// This warning, said of the item of `spec.items` called `name`.
    pub fn in_item(self, name: &str) -> KeyWarning {
        KeyWarning::InItem {
            item: name.to_owned(),
            warning: Box::new(self),
        }
    }
}

impl fmt::Display for KeyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyWarning::InvalidKey { source, label } => write!(
                f,
                "{source} {label:?} was skipped: it gives no valid Secret key \
                 (letters, digits, '-', '_' and '.', not starting with '..')"
            ),
            KeyWarning::Overwritten { key } => write!(
                f,
                "several URLs or fields give the key {key:?}; only one of them is kept"
            ),
            KeyWarning::FileShadowed { file, key } => write!(
                f,
                "file {file:?} was skipped: the key {key:?} is already taken by a URL, a field \
                 or another file"
            ),
            KeyWarning::FixedWins { key } => write!(
                f,
                "the item's key {key:?} was replaced by the spec.fixedData value of that key"
            ),
            KeyWarning::InvalidPrefixedKey { key } => write!(
                f,
                "the key {key:?} was skipped: with its keyPrefix it is no valid Secret key"
            ),
            KeyWarning::InItem { item, warning } => write!(f, "item {item:?}: {warning}"),
        }
    }
}

/// The data keys and values of an item, plus what the user should be told about it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretData {
    pub data: BTreeMap<String, Vec<u8>>,
    pub warnings: Vec<KeyWarning>,
}

impl SecretData {
    /// The size Kubernetes counts against [`MAX_SECRET_DATA_BYTES`]: the values only.
    pub fn total_bytes(&self) -> usize {
        self.data.values().map(Vec::len).sum()
    }
}

impl fmt::Debug for SecretData {
    // Keys only: the values are the secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretData")
            .field("keys", &self.data.keys().collect::<Vec<_>>())
            .field("warnings", &self.warnings)
            .finish()
    }
}

/// Why no Secret can be built. Never carries a secret value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error(
        "{name:?} cannot be made a valid Secret name (lower-case letters, digits, '-' and '.', \
         starting and ending with a letter or digit, at most 253 characters)"
    )]
    InvalidName { name: String },
    #[error(
        "{secret_type:?} is not a valid Secret type (at most 253 letters, digits, '-', '_', '.' \
         and '/', starting and ending with a letter or digit, e.g. kubernetes.io/tls)"
    )]
    InvalidType { secret_type: String },
    #[error(
        "the item's values add up to {bytes} bytes, more than the {MAX_SECRET_DATA_BYTES} bytes \
         a Secret can hold"
    )]
    TooLarge { bytes: usize },
    #[error(
        "the Secret would take about {bytes} bytes to store, more than the \
         {MAX_STORED_SECRET_BYTES} bytes the API server can store: its {keys} keys are counted \
         with their values, and again in the record of who owns each key; use fewer or shorter \
         labels, or split the item"
    )]
    StoredTooLarge { bytes: usize, keys: usize },
    #[error(
        "the item has no {kind} {reference:?} (a field is named by its label, or by \
         `<section label>.<label>`)"
    )]
    FieldNotFound { kind: KeySource, reference: String },
    #[error(
        "several {kind}s of the item match {reference:?}; name a field as \
         `<section label>.<label>`, or give the item's {kind}s distinct names"
    )]
    AmbiguousField { kind: KeySource, reference: String },
    #[error("the item's field {reference:?} is empty; spec.imagePullSecret needs a value")]
    EmptyField { reference: String },
    /// Built from the key, the line and the kind of problem only: never from minijinja's
    /// message, which can quote values.
    #[error(
        "spec.template.data key {key:?}{}: {problem}",
        line.map(|l| format!(", line {l}")).unwrap_or_default()
    )]
    Template {
        key: String,
        line: Option<usize>,
        problem: template::TemplateProblem,
    },
    #[error(
        "the key {key:?} of item {item:?} (under its keyPrefix) is also given by the main item \
         or another item of spec.items; a key has one source: change a keyPrefix, or leave one \
         out with excludes"
    )]
    KeyTwice { key: String, item: String },
    #[error("no item of spec.items is called {name:?}")]
    UnknownItem { name: String },
    #[error("item {item:?} of spec.items: {error}")]
    InItem {
        item: String,
        error: Box<BuildError>,
    },
}

impl BuildError {
    /// A bounded CamelCase reason, used for conditions, events and metrics.
    pub fn reason(&self) -> Reason {
        match self {
            BuildError::InvalidName { .. } => Reason::InvalidSecretName,
            BuildError::InvalidType { .. } => Reason::InvalidSecretType,
            BuildError::TooLarge { .. } | BuildError::StoredTooLarge { .. } => {
                Reason::SecretTooLarge
            }
            BuildError::FieldNotFound { .. } | BuildError::EmptyField { .. } => {
                Reason::FieldNotFound
            }
            BuildError::AmbiguousField { .. } => Reason::AmbiguousField,
            BuildError::Template { .. } => Reason::TemplateError,
            BuildError::KeyTwice { .. } | BuildError::UnknownItem { .. } => Reason::InvalidShape,
            BuildError::InItem { error, .. } => error.reason(),
        }
    }

    /// This error, said of the item of `spec.items` called `name` (`None`: the main item,
    /// which the error is already about).
    pub fn in_item(self, name: Option<&str>) -> BuildError {
        match name {
            None => self,
            Some(name) => BuildError::InItem {
                item: name.to_owned(),
                error: Box::new(self),
            },
        }
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

/// Kubernetes' `IsConfigMapKey`: what a Secret accepts as a data key.
pub fn is_valid_data_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_NAME_LEN
        && key.chars().all(is_key_char)
        && key != "."
        && !key.starts_with("..")
}

/// The data key for a label or file name: the label itself when it is already a valid key;
/// otherwise the label without invalid characters at either end, each inner run of characters
/// other than `[-._a-zA-Z0-9]` replaced by one `-`, cut to 253 bytes.
///
/// The result may still be invalid (empty, `.`, `..`, a leading `..`); see
/// [`is_valid_data_key`]. Same rule as the official operator.
pub fn data_key(label: &str) -> String {
    if is_valid_data_key(label) {
        return label.to_owned();
    }
    let mut key = String::with_capacity(label.len());
    let mut in_invalid_run = false;
    for c in label.trim_matches(|c| !is_key_char(c)).chars() {
        if is_key_char(c) {
            key.push(c);
            in_invalid_run = false;
        } else if !in_invalid_run {
            key.push('-');
            in_invalid_run = true;
        }
    }
    // Only ASCII is left, so any byte index is a char boundary.
    key.truncate(MAX_NAME_LEN);
    key
}

/// Kubernetes' `IsDNS1123Subdomain`.
pub fn is_dns1123_subdomain(name: &str) -> bool {
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        b.first().is_some_and(alnum)
            && b.last().is_some_and(alnum)
            && b.iter().all(|c| alnum(c) || *c == b'-')
    };
    !name.is_empty() && name.len() <= MAX_NAME_LEN && name.split('.').all(label_ok)
}

/// The Secret name for a requested name: kept when it is a valid DNS-1123 subdomain;
/// otherwise lower-cased, each run of characters other than `[a-z0-9.-]` replaced by one `-`,
/// cut to 253 bytes and trimmed of `-` and `.` at both ends (the official operator's rule).
///
/// An error when even that is not a valid name (e.g. empty, or `a..b`); the official operator
/// would send it and fail at the API server.
pub fn secret_name(name: &str) -> Result<String, BuildError> {
    if is_dns1123_subdomain(name) {
        return Ok(name.to_owned());
    }
    let mut out = String::with_capacity(name.len());
    let mut in_invalid_run = false;
    for c in name.chars() {
        // Go's `strings.ToLower` maps each rune to one rune (U+0130 `İ` becomes `i`); the first
        // char of Rust's full mapping is that same rune.
        let c = c.to_lowercase().next().unwrap_or(c);
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.' {
            out.push(c);
            in_invalid_run = false;
        } else if !in_invalid_run {
            out.push('-');
            in_invalid_run = true;
        }
    }
    out.truncate(MAX_NAME_LEN);
    let out = out.trim_matches(['-', '.']);
    if is_dns1123_subdomain(out) {
        Ok(out.to_owned())
    } else {
        Err(BuildError::InvalidName {
            name: name.to_owned(),
        })
    }
}

/// The Secret type for the OnePasswordItem's `type`: `Opaque` when unset or empty (as
/// Kubernetes defaults it), otherwise the type as written when it is well formed.
pub fn secret_type(cr_type: Option<&str>) -> Result<String, BuildError> {
    let t = match cr_type {
        None | Some("") => return Ok("Opaque".to_owned()),
        Some(t) => t,
    };
    let ok = t.len() <= MAX_NAME_LEN
        && t.starts_with(|c: char| c.is_ascii_alphanumeric())
        && t.ends_with(|c: char| c.is_ascii_alphanumeric())
        && t.chars().all(|c| is_key_char(c) || c == '/');
    if ok {
        Ok(t.to_owned())
    } else {
        Err(BuildError::InvalidType {
            secret_type: t.to_owned(),
        })
    }
}

/// About how many bytes a Secret takes once stored, as etcd's request limit counts them: the
/// object with its values as raw bytes (etcd holds them unencoded; the request carries them in
/// base64, but its body limit, 3 MiB, is never the one reached first), plus the `managedFields`
/// entry of our server-side apply, which names every data key, label, annotation and owner a
/// second time. With thousands of long keys the names alone can pass the limit while the values
/// are far under [`MAX_SECRET_DATA_BYTES`].
pub fn stored_size(secret: &Secret) -> usize {
    /// `"f:<key>":{},` per name in `managedFields`, and its entry's fixed part (manager,
    /// operation, apiVersion, time, `f:type`, the `f:metadata` wrappers).
    const PER_NAME: usize = 7;
    const ENTRY: usize = 256;
    /// Per data entry: the protobuf tags and lengths around a key and its value.
    const PER_ENTRY: usize = 8;
    let metadata = Secret {
        data: None,
        ..secret.clone()
    };
    let object = serde_json::to_vec(&metadata).map_or(usize::MAX, |body| body.len());
    let data = secret.data.iter().flatten();
    let values: usize = data
        .clone()
        .map(|(k, v)| k.len() + v.0.len() + PER_ENTRY)
        .sum();
    let meta = &secret.metadata;
    let names: usize = data
        .map(|(k, _)| k)
        .chain(meta.labels.iter().flatten().map(|(k, _)| k))
        .chain(meta.annotations.iter().flatten().map(|(k, _)| k))
        .chain(meta.owner_references.iter().flatten().map(|o| &o.uid))
        .map(|k| k.len() + PER_NAME + 2)
        .sum();
    object.saturating_add(values).saturating_add(names) + ENTRY
}

/// Refuses, before anything is sent, a Secret the API server could not store (see
/// [`stored_size`]).
pub fn check_stored_size(secret: &Secret) -> Result<(), BuildError> {
    let bytes = stored_size(secret);
    if bytes > MAX_STORED_SECRET_BYTES {
        return Err(BuildError::StoredTooLarge {
            bytes,
            keys: secret.data.as_ref().map_or(0, BTreeMap::len),
        });
    }
    Ok(())
}

/// The value of [`ITEM_PATH_ANNOTATION`]: ids, never titles.
pub fn item_path(vault_id: &str, item_id: &str) -> String {
    format!("vaults/{vault_id}/items/{item_id}")
}

/// Collects data and warnings, each warning once.
#[derive(Default)]
struct DataBuilder {
    out: SecretData,
}

impl DataBuilder {
    fn warn(&mut self, w: KeyWarning) {
        if !self.out.warnings.contains(&w) {
            self.out.warnings.push(w);
        }
    }

    /// The key for `label`, or `None` (with a warning) when it gives no valid key.
    fn key(&mut self, source: KeySource, label: &str) -> Option<String> {
        let key = data_key(label);
        if is_valid_data_key(&key) {
            Some(key)
        } else {
            self.warn(KeyWarning::InvalidKey {
                source,
                label: label.to_owned(),
            });
            None
        }
    }
}

/// The keys and values of an item (see the module documentation for the rules).
pub fn secret_data(item: &ItemWithFiles, opts: BuildOptions) -> SecretData {
    let keep = |value: &[u8]| opts.allow_empty_values || !value.is_empty();
    let mut b = DataBuilder::default();

    let mut urls: BTreeMap<String, &ItemUrl> = BTreeMap::new();
    for url in &item.item.urls {
        let Some(key) = b.key(KeySource::Url, &url.label) else {
            continue;
        };
        match urls.entry(key) {
            Entry::Vacant(e) => {
                e.insert(url);
            }
            Entry::Occupied(mut e) => {
                b.warn(KeyWarning::Overwritten {
                    key: e.key().clone(),
                });
                if url.primary || !e.get().primary {
                    e.insert(url);
                }
            }
        }
    }
    // The choice among URLs comes first, the empty check after: a primary URL without an
    // address hides the others, as in the official operator.
    for (key, url) in urls {
        if keep(url.href.as_bytes()) {
            b.out.data.insert(key, url.href.clone().into_bytes());
        }
    }

    for field in &item.item.fields {
        let Some(key) = b.key(KeySource::Field, &field.label) else {
            continue;
        };
        let value = field.value.as_deref().unwrap_or_default().as_bytes();
        if !keep(value) {
            continue;
        }
        if b.out.data.insert(key.clone(), value.to_vec()).is_some() {
            b.warn(KeyWarning::Overwritten { key });
        }
    }

    for file in &item.files {
        let Some(key) = b.key(KeySource::File, &file.name) else {
            continue;
        };
        if !keep(&file.content) {
            continue;
        }
        match b.out.data.entry(key) {
            Entry::Vacant(e) => {
                e.insert(file.content.clone());
            }
            Entry::Occupied(e) => {
                let key = e.key().clone();
                b.warn(KeyWarning::FileShadowed {
                    file: file.name.clone(),
                    key,
                });
            }
        }
    }
    b.out
}

/// Everything the desired Secret is made of.
#[derive(Clone, Debug)]
pub struct DesiredSecret<'a> {
    /// The requested name; made valid with [`secret_name`].
    pub name: &'a str,
    pub namespace: &'a str,
    /// The main item: the item-path and item-version annotations name it.
    pub item: &'a ItemWithFiles,
    /// The OnePasswordItem's `type`; see [`secret_type`].
    pub secret_type: Option<&'a str>,
    pub labels: BTreeMap<String, String>,
    /// Extra annotations; [`ITEM_PATH_ANNOTATION`] and [`ITEM_VERSION_ANNOTATION`] replace any
    /// of the same name.
    pub annotations: BTreeMap<String, String>,
    /// The objects the Secret belongs to (garbage collection removes it with the last one).
    pub owners: Vec<OwnerReference>,
    pub options: BuildOptions,
}

/// The whole desired Secret, ready to be sent as a server-side apply body (its serialised form
/// carries `apiVersion: v1` and `kind: Secret`). Deterministic: the same input gives the same
/// object. The warnings are those of [`secret_data`].
pub fn build_secret(d: &DesiredSecret<'_>) -> Result<(Secret, Vec<KeyWarning>), BuildError> {
    build_shaped_secret(d, &BTreeMap::new(), &Shape::default())
}

/// [`build_secret`], with the keys shaped by `shape` ([`shape::shaped_data`]) from `d.item`
/// and the other items of `shape.items`, by name (`named`).
pub fn build_shaped_secret(
    d: &DesiredSecret<'_>,
    named: &BTreeMap<String, ItemWithFiles>,
    shape: &Shape,
) -> Result<(Secret, Vec<KeyWarning>), BuildError> {
    let name = secret_name(d.name)?;
    let secret_type = secret_type(d.secret_type)?;
    let items = SourceItems {
        main: d.item,
        named,
    };
    let data = shape::shaped_data(items, d.options, shape)?;
    let bytes = data.total_bytes();
    if bytes > MAX_SECRET_DATA_BYTES {
        return Err(BuildError::TooLarge { bytes });
    }

    let item = &d.item.item;
    let mut annotations = d.annotations.clone();
    annotations.insert(
        ITEM_PATH_ANNOTATION.to_owned(),
        item_path(&item.vault.id, &item.id),
    );
    annotations.insert(ITEM_VERSION_ANNOTATION.to_owned(), item.version.to_string());

    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(d.namespace.to_owned()),
            labels: (!d.labels.is_empty()).then(|| d.labels.clone()),
            annotations: Some(annotations),
            owner_references: (!d.owners.is_empty()).then(|| d.owners.clone()),
            ..ObjectMeta::default()
        },
        type_: Some(secret_type),
        data: Some(
            data.data
                .into_iter()
                .map(|(k, v)| (k, ByteString(v)))
                .collect(),
        ),
        ..Secret::default()
    };
    Ok((secret, data.warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::model::{FileContent, FullItem};

    fn fixture(name: &str) -> FullItem {
        let json = match name {
            "login" => include_str!("../tests/fixtures/items/login.json"),
            "password" => include_str!("../tests/fixtures/items/password.json"),
            "database" => include_str!("../tests/fixtures/items/database.json"),
            "api-credential" => include_str!("../tests/fixtures/items/api-credential.json"),
            "document" => include_str!("../tests/fixtures/items/document.json"),
            "ssh-key" => include_str!("../tests/fixtures/items/ssh-key.json"),
            "secure-note" => include_str!("../tests/fixtures/items/secure-note.json"),
            "edge-labels" => include_str!("../tests/fixtures/items/edge-labels.json"),
            "official-urls" => include_str!("../tests/fixtures/items/official-urls.json"),
            "official-field-url-conflict" => {
                include_str!("../tests/fixtures/items/official-field-url-conflict.json")
            }
            "official-invalid-labels" => {
                include_str!("../tests/fixtures/items/official-invalid-labels.json")
            }
            "official-empty-values" => {
                include_str!("../tests/fixtures/items/official-empty-values.json")
            }
            other => panic!("no fixture {other}"),
        };
        serde_json::from_str(json).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
    }

    /// The item with the content of each of its files, as the Connect client hands it over.
    fn with_files(item: FullItem) -> ItemWithFiles {
        let files = item
            .files
            .iter()
            .map(|f| FileContent {
                id: f.id.clone(),
                name: f.name.clone(),
                content: match f.name.as_str() {
                    "kubeconfig.yaml" => {
                        include_bytes!("../tests/fixtures/items/files/kubeconfig.yaml").to_vec()
                    }
                    name => format!("content of {name}\n").into_bytes(),
                },
            })
            .collect();
        ItemWithFiles { item, files }
    }

    fn data_of(name: &str, allow_empty_values: bool) -> SecretData {
        secret_data(
            &with_files(fixture(name)),
            BuildOptions { allow_empty_values },
        )
    }

    fn as_text(data: &BTreeMap<String, Vec<u8>>) -> BTreeMap<&str, &str> {
        data.iter()
            .map(|(k, v)| (k.as_str(), std::str::from_utf8(v).unwrap()))
            .collect()
    }

    fn desired(item: &ItemWithFiles) -> DesiredSecret<'_> {
        DesiredSecret {
            name: "db-credentials",
            namespace: "apps",
            item,
            secret_type: None,
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            owners: Vec::new(),
            options: BuildOptions::default(),
        }
    }

    #[test]
    fn each_item_category_gives_the_keys_and_values_of_the_official_operator() {
        let kubeconfig = include_str!("../tests/fixtures/items/files/kubeconfig.yaml");
        let private_key = "-----BEGIN PRIVATE KEY-----\n\
            MC4CAQAwBQYDK2VwBCIEIFAKEfakeFAKEfakeFAKEfakeFAKEfakeFAKEfake0\n\
            -----END PRIVATE KEY-----\n";
        let table: &[(&str, &[(&str, &str)])] = &[
            (
                "login",
                &[
                    ("website", "https://github.com/login"),
                    ("username", "deploy-bot"),
                    ("password", "gh-Xq7#pW2vLm9!tR4z"),
                    (
                        "one-time-password",
                        "otpauth://totp/GitHub:deploy-bot?secret=JBSWY3DPEHPK3PXP&issuer=GitHub",
                    ),
                ],
            ),
            ("password", &[("password", "r3d1s-Mast3r-pa55")]),
            (
                "database",
                &[
                    ("type", "postgresql"),
                    ("server", "orders.db.internal"),
                    ("port", "5432"),
                    ("database", "orders"),
                    ("username", "orders_app"),
                    ("password", "pg-9Vd2!kQ#x"),
                    ("connection-options", "sslmode=require"),
                ],
            ),
            (
                "api-credential",
                &[
                    ("username", "billing-service"),
                    ("credential", "sk_live_51Hx9fakeFAKEfake00Qw"),
                    ("type", "bearer"),
                    ("valid-from", "1710410400"),
                    ("expires", "1773482400"),
                    ("hostname", "api.stripe.com"),
                ],
            ),
            ("document", &[("kubeconfig.yaml", kubeconfig)]),
            (
                "ssh-key",
                &[
                    ("private-key", private_key),
                    (
                        "public-key",
                        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKEfakeFAKEfake git-sync",
                    ),
                    (
                        "fingerprint",
                        "SHA256:fAkEfInGeRpRiNt0123456789abcdefghijklmnopq",
                    ),
                    ("key-type", "ed25519"),
                ],
            ),
            (
                "secure-note",
                &[("notesPlain", "CHECKOUT_V2=true\nDARK_MODE=false\n")],
            ),
        ];
        for (name, want) in table {
            let got = data_of(name, false);
            let want: BTreeMap<&str, &str> = want.iter().copied().collect();
            assert_eq!(as_text(&got.data), want, "{name}");
        }
    }

    #[test]
    fn otp_field_holds_the_otpauth_uri_not_the_current_code() {
        let data = data_of("login", false).data;
        let otp = std::str::from_utf8(&data["one-time-password"]).unwrap();
        assert!(otp.starts_with("otpauth://totp/"), "{otp}");
        assert!(!data.values().any(|v| v == b"492039"));
    }

    #[test]
    fn document_item_file_becomes_a_key_named_after_the_file() {
        let data = data_of("document", false).data;
        assert_eq!(data.keys().collect::<Vec<_>>(), ["kubeconfig.yaml"]);
    }

    #[test]
    fn official_urls_example_keeps_the_primary_url_and_other_labels() {
        let data = data_of("official-urls", false);
        let want = BTreeMap::from([
            ("key0", "value0"),
            ("key1", "value1"),
            ("support", "https://support.example.com"),
            ("website", "https://example.com"),
        ]);
        assert_eq!(as_text(&data.data), want);
    }

    #[test]
    fn field_overwrites_url_with_the_same_label() {
        let data = data_of("official-field-url-conflict", false);
        let want = BTreeMap::from([
            ("other-field", "other-value"),
            ("support", "https://support.example.com"),
            ("website", "field-value-for-website"),
        ]);
        assert_eq!(as_text(&data.data), want);
        assert!(data.warnings.contains(&KeyWarning::Overwritten {
            key: "website".into()
        }));
    }

    #[test]
    fn official_invalid_labels_example_gives_valid_keys() {
        let data = data_of("official-invalid-labels", false).data;
        let keys: Vec<&String> = data.keys().collect();
        assert_eq!(keys, ["label-w-th-invalid-ch-rs-", &"x".repeat(253)]);
        assert!(data.keys().all(|k| is_valid_data_key(k)));
    }

    #[test]
    fn empty_values_are_skipped_by_default_and_kept_with_the_option() {
        let skipped = data_of("official-empty-values", false).data;
        assert_eq!(
            as_text(&skipped),
            BTreeMap::from([("another-field", "value"), ("token", "secret-token")])
        );
        let kept = data_of("official-empty-values", true).data;
        assert_eq!(
            as_text(&kept),
            BTreeMap::from([
                ("another-field", "value"),
                ("empty-field-2", ""),
                ("runner-token", ""),
                ("token", "secret-token"),
            ])
        );
    }

    #[test]
    fn a_field_without_a_value_counts_as_empty() {
        let skipped = data_of("edge-labels", false).data;
        assert!(!skipped.contains_key("missing-value"));
        assert!(!skipped.contains_key("empty-token"));
        let kept = data_of("edge-labels", true).data;
        assert_eq!(kept["missing-value"], b"");
        assert_eq!(kept["empty-token"], b"");
    }

    #[test]
    fn label_with_spaces_becomes_dashed_key() {
        assert_eq!(data_key("api key"), "api-key");
        assert_eq!(
            data_key("label w%th invalid ch!rs-"),
            "label-w-th-invalid-ch-rs-"
        );
        assert_eq!(data_key("a  / b"), "a-b");
        assert_eq!(
            as_text(&data_of("edge-labels", false).data)["api-key"],
            "prod-api-key"
        );
    }

    #[test]
    fn valid_labels_are_kept_byte_for_byte() {
        for label in [
            "password",
            "notesPlain",
            "tls.crt",
            ".env",
            "_x",
            "-a-",
            "A.b_C-9",
        ] {
            assert_eq!(data_key(label), label);
        }
    }

    #[test]
    fn invalid_characters_at_both_ends_are_stripped_not_dashed() {
        assert_eq!(data_key("  padded label!  "), "padded-label");
        assert_eq!(data_key("(token)"), "token");
        assert_eq!(data_key("é clé secrète"), "cl-secr-te");
    }

    #[test]
    fn a_run_of_unicode_characters_becomes_one_dash() {
        assert_eq!(data_key("db ключ пароль x"), "db-x");
        assert_eq!(data_key("a😀😀b"), "a-b");
        assert_eq!(data_key("日本語キー"), "");
    }

    #[test]
    fn leading_single_dot_is_a_valid_key_but_double_dots_are_skipped_with_a_warning() {
        let data = data_of("edge-labels", false);
        assert_eq!(data.data[".env"], b"A=1\nB=2\n");
        for label in ["..hidden", ".."] {
            assert!(!data.data.contains_key(label));
            assert!(data.warnings.contains(&KeyWarning::InvalidKey {
                source: KeySource::Field,
                label: label.into()
            }));
        }
        assert!(!is_valid_data_key("."));
        assert_eq!(data_key(" ..x "), "..x");
        assert!(!is_valid_data_key(&data_key(" ..x ")));
    }

    #[test]
    fn empty_label_and_label_sanitising_to_empty_are_skipped_with_a_warning() {
        let data = data_of("edge-labels", false);
        assert!(!data.data.contains_key(""));
        for label in ["", "???", "日本語キー"] {
            assert!(
                data.warnings.contains(&KeyWarning::InvalidKey {
                    source: KeySource::Field,
                    label: label.into()
                }),
                "{label:?}: {:?}",
                data.warnings
            );
        }
        assert!(data.warnings.contains(&KeyWarning::InvalidKey {
            source: KeySource::Url,
            label: String::new()
        }));
        assert!(!data.data.values().any(|v| v == b"no-label"));
    }

    #[test]
    fn label_of_300_characters_is_cut_to_253() {
        assert_eq!(data_key(&"k".repeat(300)), "k".repeat(253));
        assert_eq!(
            data_key(&format!("{} tail", "k".repeat(300))),
            "k".repeat(253)
        );
        let data = data_of("edge-labels", false).data;
        assert_eq!(data[&"k".repeat(253)], b"long");
    }

    #[test]
    fn duplicate_labels_across_sections_keep_the_later_field() {
        let data = data_of("edge-labels", false);
        assert_eq!(data.data["password"], b"staging-pass");
        assert!(data.warnings.contains(&KeyWarning::Overwritten {
            key: "password".into()
        }));
    }

    #[test]
    fn primary_url_wins_and_otherwise_the_later_url_wins() {
        let data = data_of("edge-labels", false).data;
        assert_eq!(data["dashboard"], b"https://b.example");
        assert_eq!(data["docs"], b"https://docs-2.example");
    }

    #[test]
    fn file_is_shadowed_by_a_field_with_the_same_key() {
        let data = data_of("edge-labels", false);
        assert_eq!(data.data["ca.crt"], b"field-ca");
        assert!(data.warnings.contains(&KeyWarning::FileShadowed {
            file: "ca.crt".into(),
            key: "ca.crt".into()
        }));
    }

    #[test]
    fn file_takes_the_key_of_a_skipped_empty_field_unless_empty_values_are_allowed() {
        let skipped = data_of("edge-labels", false).data;
        assert_eq!(skipped["tls.key"], b"content of tls.key\n");
        let kept = data_of("edge-labels", true);
        assert_eq!(kept.data["tls.key"], b"");
        assert!(kept.warnings.contains(&KeyWarning::FileShadowed {
            file: "tls.key".into(),
            key: "tls.key".into()
        }));
    }

    #[test]
    fn invalid_file_name_is_sanitised_like_a_label() {
        let data = data_of("edge-labels", false).data;
        assert_eq!(data["my-cert.pem"], b"content of my cert.pem\n");
    }

    #[test]
    fn the_first_of_two_files_with_the_same_key_wins() {
        let mut item = with_files(fixture("document"));
        item.files.push(FileContent {
            id: "dddddddddddddddddddddddddd".into(),
            name: "kubeconfig.yaml".into(),
            content: b"second".to_vec(),
        });
        let data = secret_data(&item, BuildOptions::default());
        assert_ne!(data.data["kubeconfig.yaml"], b"second");
        assert_eq!(data.warnings.len(), 1, "{:?}", data.warnings);
    }

    #[test]
    fn empty_urls_and_files_follow_the_empty_values_option() {
        let mut item = with_files(fixture("document"));
        item.files[0].content.clear();
        item.item.urls.push(ItemUrl {
            label: "website".into(),
            primary: true,
            href: String::new(),
        });
        let skipped = secret_data(&item, BuildOptions::default()).data;
        assert!(skipped.is_empty(), "{:?}", skipped.keys());
        let kept = secret_data(
            &item,
            BuildOptions {
                allow_empty_values: true,
            },
        )
        .data;
        assert_eq!(
            kept.keys().collect::<Vec<_>>(),
            ["kubeconfig.yaml", "notesPlain", "website"]
        );
    }

    #[test]
    fn warnings_are_reported_once_and_never_carry_values() {
        let data = data_of("edge-labels", false);
        let mut unique = data.warnings.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), data.warnings.len());
        let text: String = data.warnings.iter().map(|w| format!("{w} {w:?}")).collect();
        for value in [
            "staging-pass",
            "prod-pass",
            "field-ca",
            "only-dots",
            "dot-dot",
        ] {
            assert!(!text.contains(value), "{value} in {text}");
        }
    }

    #[test]
    fn debug_of_secret_data_shows_keys_but_never_values() {
        let data = data_of("login", false);
        let printed = format!("{data:?} {data:#?}");
        assert!(printed.contains("password") && printed.contains("username"));
        for value in ["gh-Xq7#pW2vLm9!tR4z", "deploy-bot", "otpauth", "github.com"] {
            assert!(!printed.contains(value), "{value} in {printed}");
        }
    }

    #[test]
    fn valid_secret_names_are_kept() {
        for name in ["db-credentials", "a", "a.b-c", "0abc", &"a".repeat(253)] {
            assert_eq!(secret_name(name).unwrap(), name);
        }
    }

    #[test]
    fn secret_name_is_lower_cased_and_runs_of_invalid_characters_become_one_dash() {
        assert_eq!(
            secret_name("inV@l1d k8s secret%name").unwrap(),
            "inv-l1d-k8s-secret-name"
        );
        assert_eq!(secret_name("someName").unwrap(), "somename");
        assert_eq!(secret_name("My_DB__Creds").unwrap(), "my-db-creds");
        assert_eq!(secret_name("Prod DB (EU)").unwrap(), "prod-db-eu");
        assert_eq!(secret_name("Café Crème").unwrap(), "caf-cr-me");
    }

    #[test]
    fn secret_name_is_trimmed_of_dots_and_dashes_at_both_ends() {
        assert_eq!(secret_name(".hidden.").unwrap(), "hidden");
        assert_eq!(secret_name("--x--").unwrap(), "x");
        assert_eq!(secret_name("_.-Name-._").unwrap(), "name");
    }

    #[test]
    fn secret_name_of_300_characters_is_cut_to_253() {
        let name = secret_name(&"A".repeat(300)).unwrap();
        assert_eq!(name, "a".repeat(253));
        // The cut comes before the trim, as in the official operator.
        let name = secret_name(&format!("{}-{}", "a".repeat(252), "B".repeat(47))).unwrap();
        assert_eq!(name, "a".repeat(252));
    }

    #[test]
    fn secret_name_lower_cases_like_go() {
        // U+0130 lower-cases to a plain `i` in Go; U+212A (Kelvin sign) to `k`.
        assert_eq!(secret_name("İtem \u{212A}ey").unwrap(), "item-key");
    }

    #[test]
    fn secret_names_of_26_characters_like_item_ids_are_kept_or_lower_cased() {
        assert_eq!(
            secret_name("p7eflcy7f5mk7vg6zrzf5rjjyu").unwrap(),
            "p7eflcy7f5mk7vg6zrzf5rjjyu"
        );
        assert_eq!(
            secret_name("Orders Database Production").unwrap(),
            "orders-database-production"
        );
    }

    #[test]
    fn secret_name_that_cannot_be_made_valid_is_an_error() {
        for name in ["", "___", "..", "日本語", "a..b", "a.-b"] {
            assert_eq!(
                secret_name(name),
                Err(BuildError::InvalidName { name: name.into() }),
                "{name:?}"
            );
        }
    }

    #[test]
    fn secret_type_defaults_to_opaque() {
        assert_eq!(secret_type(None).unwrap(), "Opaque");
        assert_eq!(secret_type(Some("")).unwrap(), "Opaque");
        for t in [
            "Opaque",
            "kubernetes.io/tls",
            "kubernetes.io/dockerconfigjson",
            "bootstrap.kubernetes.io/token",
            "example.com/my_type",
        ] {
            assert_eq!(secret_type(Some(t)).unwrap(), t);
        }
    }

    #[test]
    fn malformed_secret_type_is_an_error() {
        let long = "a".repeat(254);
        for t in ["my type", "tls\n", "\tOpaque", "/x", "x/", &long] {
            assert_eq!(
                secret_type(Some(t)),
                Err(BuildError::InvalidType {
                    secret_type: t.into()
                }),
                "{t:?}"
            );
        }
    }

    #[test]
    fn built_secret_carries_kind_name_namespace_type_and_data() {
        let item = with_files(fixture("database"));
        let (secret, warnings) = build_secret(&desired(&item)).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let json = serde_json::to_value(&secret).unwrap();
        assert_eq!(json["apiVersion"], "v1");
        assert_eq!(json["kind"], "Secret");
        assert_eq!(json["metadata"]["name"], "db-credentials");
        assert_eq!(json["metadata"]["namespace"], "apps");
        assert_eq!(json["type"], "Opaque");
        assert_eq!(json["data"]["port"], "NTQzMg==");
        let data = secret.data.unwrap();
        assert_eq!(data["password"].0, b"pg-9Vd2!kQ#x");
        assert_eq!(data.len(), 7);
    }

    #[test]
    fn built_secret_name_and_type_follow_the_rules() {
        let item = with_files(fixture("database"));
        let d = DesiredSecret {
            name: "Orders_DB",
            secret_type: Some("kubernetes.io/basic-auth"),
            ..desired(&item)
        };
        let (secret, _) = build_secret(&d).unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("orders-db"));
        assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/basic-auth"));

        let bad_name = DesiredSecret {
            name: "???",
            ..desired(&item)
        };
        assert_eq!(
            build_secret(&bad_name).unwrap_err().reason(),
            "InvalidSecretName"
        );
        let bad_type = DesiredSecret {
            secret_type: Some("no spaces"),
            ..desired(&item)
        };
        assert_eq!(
            build_secret(&bad_type).unwrap_err().reason(),
            "InvalidSecretType"
        );
    }

    #[test]
    fn built_secret_annotations_name_the_item_by_ids_and_version_and_ours_win() {
        let item = with_files(fixture("database"));
        let d = DesiredSecret {
            labels: BTreeMap::from([("app".to_owned(), "orders".to_owned())]),
            annotations: BTreeMap::from([
                ("team".to_owned(), "payments".to_owned()),
                (ITEM_VERSION_ANNOTATION.to_owned(), "1".to_owned()),
                (
                    ITEM_PATH_ANNOTATION.to_owned(),
                    "vaults/x/items/y".to_owned(),
                ),
            ]),
            ..desired(&item)
        };
        let (secret, _) = build_secret(&d).unwrap();
        let annotations = secret.metadata.annotations.unwrap();
        assert_eq!(
            annotations,
            BTreeMap::from([
                (
                    ITEM_PATH_ANNOTATION.to_owned(),
                    "vaults/ionaiwtdvgclrixbt6ztpqcxnq/items/u2eap3gek8f6c6t3z1ojlixlkh".to_owned()
                ),
                (ITEM_VERSION_ANNOTATION.to_owned(), "12".to_owned()),
                ("team".to_owned(), "payments".to_owned()),
            ])
        );
        assert_eq!(secret.metadata.labels.unwrap()["app"], "orders");
        assert!(ITEM_PATH_ANNOTATION.starts_with(crate::vocabulary::ANNOTATION_PREFIX));
        assert!(ITEM_VERSION_ANNOTATION.starts_with(crate::vocabulary::ANNOTATION_PREFIX));
    }

    #[test]
    fn built_secret_has_the_owner_reference_it_is_given() {
        let item = with_files(fixture("password"));
        let owner = OwnerReference {
            api_version: "onepassword.com/v1".into(),
            kind: "OnePasswordItem".into(),
            name: "redis".into(),
            uid: "0b6f3c9e-7f40-4f57-9d7e-2d3c1c8f6a11".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let d = DesiredSecret {
            owners: vec![owner.clone()],
            ..desired(&item)
        };
        let (secret, _) = build_secret(&d).unwrap();
        assert_eq!(secret.metadata.owner_references, Some(vec![owner]));
        let (secret, _) = build_secret(&desired(&item)).unwrap();
        assert_eq!(secret.metadata.owner_references, None);
    }

    #[test]
    fn building_twice_gives_the_same_secret() {
        let item = with_files(fixture("edge-labels"));
        let a = serde_json::to_string(&build_secret(&desired(&item)).unwrap().0).unwrap();
        let b = serde_json::to_string(&build_secret(&desired(&item)).unwrap().0).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn too_large_item_is_an_error_that_carries_no_value() {
        let mut item = with_files(fixture("document"));
        item.files[0].content = vec![b'z'; MAX_SECRET_DATA_BYTES];
        item.item.fields.push(crate::connect::model::Field {
            label: "extra".into(),
            value: Some("x".into()),
            ..Default::default()
        });
        let err = build_secret(&desired(&item)).unwrap_err();
        assert_eq!(
            err,
            BuildError::TooLarge {
                bytes: MAX_SECRET_DATA_BYTES + 1
            }
        );
        assert_eq!(err.reason(), "SecretTooLarge");
        assert!(!err.to_string().contains("zzz"));

        item.item.fields.pop();
        assert!(build_secret(&desired(&item)).is_ok(), "exactly 1 MiB fits");
    }

    #[test]
    fn thousands_of_long_keys_are_too_large_to_store_though_their_values_are_small() {
        let mut item = with_files(fixture("document"));
        item.files.clear();
        // 5,000 keys of 250 characters, one byte each: 5 kB of values, 1.25 MB of names, and the
        // names once more in managedFields.
        item.item.fields = (0..5000)
            .map(|i| crate::connect::model::Field {
                label: format!("{i:0>250}"),
                value: Some("v".into()),
                ..Default::default()
            })
            .collect();
        let (secret, _) = build_secret(&desired(&item)).expect("the values are small");
        let err = check_stored_size(&secret).unwrap_err();
        assert_eq!(err.reason(), "SecretTooLarge");
        let BuildError::StoredTooLarge { bytes, keys } = err else {
            panic!("{err:?}")
        };
        assert_eq!(keys, 5000);
        assert!(bytes > 2 * 5000 * 250, "{bytes}");

        // Half as many fit.
        item.item.fields.truncate(2500);
        let (secret, _) = build_secret(&desired(&item)).unwrap();
        assert_eq!(check_stored_size(&secret), Ok(()));
    }

    #[test]
    fn one_mib_of_values_under_a_few_keys_can_be_stored() {
        let mut item = with_files(fixture("document"));
        item.files[0].content = vec![b'z'; MAX_SECRET_DATA_BYTES];
        let (secret, _) = build_secret(&desired(&item)).unwrap();
        assert_eq!(check_stored_size(&secret), Ok(()));
        let size = stored_size(&secret);
        assert!(
            (MAX_SECRET_DATA_BYTES..MAX_SECRET_DATA_BYTES + 4096).contains(&size),
            "{size}"
        );
        let err = BuildError::StoredTooLarge {
            bytes: size,
            keys: 1,
        };
        assert!(!err.to_string().contains("zzz"));
    }

    #[test]
    fn item_path_uses_ids() {
        assert_eq!(item_path("v1d", "i7d"), "vaults/v1d/items/i7d");
    }
}
