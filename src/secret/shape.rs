//! Shaping: which keys of an item a Secret gets, under which names, and what is added beside
//! them. Pure, like the rest of [`crate::secret`]; the spec fields are those of
//! [`crate::crd::OnePasswordItemSpec`].
//!
//! The keys, in the order they are laid down (a later step replaces a key of an earlier one):
//! 1. the default keys (every URL, field and file under its label, [`super::secret_data`]),
//!    unless `data`, `imagePullSecret` or `template.data` is set and `includes` is not; only those matching an
//!    `includes` glob when there are any, and never those matching an `excludes` glob;
//! 2. the default keys of each item of `items` that has a `keyPrefix`, under that prefix,
//!    filtered by `includes` and `excludes` in the same way (but always asked for); a key that
//!    is already there (from the main item or another prefix) is refused, not replaced, since
//!    which one should win cannot be told from the spec;
//! 3. each key of `data`, from the one field, file or URL it names, in the main item or the
//!    item of `items` it names (an explicit key replaces a default one, as in step 1);
//! 4. `.dockerconfigjson`, from the fields of the main item `imagePullSecret` names;
//! 5. each key of `template.data`, rendered over the main item and `Items.<name>`
//!    ([`super::template`]);
//! 6. each key of `fixedData`, as written (with a warning when it replaces an item key).
//!
//! Errors name the reference (a label, a key), never a value.

use std::collections::BTreeMap;

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

use super::{
    BuildError, BuildOptions, KeySource, KeyWarning, SecretData, SourceItems, is_key_char,
    is_valid_data_key,
};
use crate::{
    connect::model::{Field, ItemWithFiles},
    crd::{ImagePullSecretConfig, ItemSource, OnePasswordItemSpec, SecretKeyRef},
    digest::hex,
    vocabulary::ANNOTATION_PREFIX,
};

/// The key of a `kubernetes.io/dockerconfigjson` Secret.
pub const DOCKER_CONFIG_JSON_KEY: &str = ".dockerconfigjson";
pub const DOCKER_CONFIG_JSON_TYPE: &str = "kubernetes.io/dockerconfigjson";

/// The shaping a OnePasswordItem asks for; the default is none (the official operator's keys).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Shape {
    /// The other items (`spec.items`). Their paths are part of the shaping: a new path, name or
    /// prefix rewrites the Secret.
    pub items: Vec<ItemSource>,
    pub data: Vec<SecretKeyRef>,
    pub includes: Vec<String>,
    pub excludes: Vec<String>,
    // Fixed values are the user's own text from the spec, not 1Password's; still, they are
    // never logged (the `Debug` of `SyncTarget` prints this struct), so only keys are shown.
    pub fixed_data: KeyedText,
    pub image_pull: Option<ImagePullSecretConfig>,
    /// `template.data`. Left out of the digest when empty, so that the digest of a shape
    /// without templates is the one it had before templates existed.
    #[serde(skip_serializing_if = "KeyedText::is_empty")]
    pub template: KeyedText,
}

/// Text by key from the spec (`fixedData`, `template.data`), with a `Debug` that shows keys
/// only.
#[derive(Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct KeyedText(pub BTreeMap<String, String>);

impl KeyedText {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for KeyedText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

impl Shape {
    /// The shaping fields of a spec.
    pub fn of(spec: &OnePasswordItemSpec) -> Self {
        Shape {
            items: spec.items.clone(),
            data: spec.data.clone(),
            includes: spec.includes.clone(),
            excludes: spec.excludes.clone(),
            fixed_data: KeyedText(spec.fixed_data.clone()),
            image_pull: spec.image_pull_secret.clone(),
            template: KeyedText(
                spec.template
                    .as_ref()
                    .and_then(|t| t.data.clone())
                    .unwrap_or_default(),
            ),
        }
    }

    pub fn is_default(&self) -> bool {
        *self == Shape::default()
    }

    /// Opaque, and changes exactly when the shaping does: written on the Secret so that a
    /// change of shaping alone (the item unchanged) makes the Secret stale. `None` without
    /// shaping, so an unshaped Secret is written as before.
    pub fn digest(&self) -> Option<String> {
        if self.is_default() {
            return None;
        }
        let json = serde_json::to_vec(self).expect("a shape serialises to JSON");
        Some(format!("v1:{}", hex(&Sha256::digest(&json)[..16])))
    }

    /// Checks what can be checked without the item: each of `items` has a valid, unique name
    /// and a valid prefix; each `data` entry names a valid key, exactly one source and a known
    /// item; no key is given twice, a template key repeats no `data` key, and a fixed key
    /// repeats neither. The message names keys and references only. (Whether the templates
    /// compile is [`super::template::check`].)
    pub fn validate(&self) -> Result<(), String> {
        let mut names = BTreeMap::new();
        for source in &self.items {
            check_item_name(&source.name)?;
            if names.insert(source.name.as_str(), ()).is_some() {
                return Err(format!(
                    "spec.items: name {:?} is given twice; each item needs its own",
                    source.name
                ));
            }
            if let Some(prefix) = &source.key_prefix {
                check_prefix(&source.name, prefix)?;
            }
        }
        let mut keys = BTreeMap::new();
        for r in &self.data {
            if let Some(name) = &r.item
                && !names.contains_key(name.as_str())
            {
                return Err(format!(
                    "spec.data: key {:?} takes its value from item {name:?}, which is not one \
                     of spec.items",
                    r.key
                ));
            }
            let sources = [&r.field, &r.file, &r.url]
                .iter()
                .filter(|s| s.is_some())
                .count();
            if sources != 1 {
                return Err(format!(
                    "spec.data: key {:?} must name exactly one of field, file or url",
                    r.key
                ));
            }
            check_key("spec.data", &r.key)?;
            if keys.insert(r.key.as_str(), ()).is_some() {
                return Err(format!("spec.data: key {:?} is listed twice", r.key));
            }
        }
        // Template keys are laid down like those of `data`: neither may repeat the other, and
        // fixed keys may repeat neither.
        for (field, keys_of) in [
            ("spec.template.data", &self.template),
            ("spec.fixedData", &self.fixed_data),
        ] {
            for key in keys_of.0.keys() {
                check_key(field, key)?;
                if keys.insert(key.as_str(), ()).is_some() {
                    return Err(format!(
                        "{field}: key {key:?} is also in spec.data or spec.template.data; a key \
                         has one source"
                    ));
                }
                if self.image_pull.is_some() && key == DOCKER_CONFIG_JSON_KEY {
                    return Err(format!(
                        "{field}: key {key:?} is the one spec.imagePullSecret builds"
                    ));
                }
            }
        }
        Ok(())
    }
}

fn check_key(field: &str, key: &str) -> Result<(), String> {
    if is_valid_data_key(key) {
        Ok(())
    } else {
        Err(format!(
            "{field}: {key:?} is not a valid Secret key (letters, digits, '-', '_' and '.', \
             not starting with '..')"
        ))
    }
}

/// The longest `spec.items` name.
const MAX_ITEM_NAME_LEN: usize = 63;

/// An item's name is an identifier, so that a template can say `Items.<name>`.
fn check_item_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= MAX_ITEM_NAME_LEN;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "spec.items: name {name:?} is not valid (a letter or '_', then letters, digits and \
             '_', at most {MAX_ITEM_NAME_LEN})"
        ))
    }
}

/// A prefix is the start of a key: key characters, not starting with `..` (a key may not).
fn check_prefix(name: &str, prefix: &str) -> Result<(), String> {
    if prefix.chars().all(is_key_char) && !prefix.starts_with("..") {
        Ok(())
    } else {
        Err(format!(
            "spec.items: keyPrefix {prefix:?} of item {name:?} is not the start of a valid \
             Secret key (letters, digits, '-', '_' and '.', not starting with '..')"
        ))
    }
}

/// Refuses a label or annotation key of ours in `secretLabels` or `secretAnnotations`.
pub fn check_not_reserved<'a>(
    field: &str,
    keys: impl IntoIterator<Item = &'a String>,
) -> Result<(), String> {
    match keys
        .into_iter()
        .find(|k| k.split('/').next() == Some(ANNOTATION_PREFIX))
    {
        Some(k) => Err(format!(
            "{field}: {k:?} is reserved for the operator ({ANNOTATION_PREFIX}/*)"
        )),
        None => Ok(()),
    }
}

/// The keys and values of `items` shaped by `shape` (see the module documentation).
pub fn shaped_data(
    items: SourceItems<'_>,
    opts: BuildOptions,
    shape: &Shape,
) -> Result<SecretData, BuildError> {
    let defaults = super::secret_data(items.main, opts);
    if shape.is_default() {
        return Ok(defaults);
    }
    let mut out = SecretData::default();
    let kept = |key: &str| {
        (shape.includes.is_empty() || shape.includes.iter().any(|g| glob_match(g, key)))
            && !shape.excludes.iter().any(|g| glob_match(g, key))
    };
    let explicit =
        !shape.data.is_empty() || shape.image_pull.is_some() || !shape.template.is_empty();
    if !explicit || !shape.includes.is_empty() {
        out.warnings = defaults.warnings;
        out.data = defaults.data.into_iter().filter(|(k, _)| kept(k)).collect();
    }
    for source in &shape.items {
        let Some(prefix) = &source.key_prefix else {
            continue;
        };
        let item = named(items, &source.name)?;
        let theirs = super::secret_data(item, opts);
        out.warnings
            .extend(theirs.warnings.into_iter().map(|w| w.in_item(&source.name)));
        for (key, value) in theirs.data {
            let key = format!("{prefix}{key}");
            if !kept(&key) {
                continue;
            }
            if !is_valid_data_key(&key) {
                out.warnings.push(
                    KeyWarning::InvalidPrefixedKey { key: key.clone() }.in_item(&source.name),
                );
                continue;
            }
            if out.data.insert(key.clone(), value).is_some() {
                return Err(BuildError::KeyTwice {
                    key,
                    item: source.name.clone(),
                });
            }
        }
    }
    for r in &shape.data {
        let item = match &r.item {
            None => items.main,
            Some(name) => named(items, name)?,
        };
        let value = value_of(item, r).map_err(|e| e.in_item(r.item.as_deref()))?;
        out.data.insert(r.key.clone(), value);
    }
    if let Some(config) = &shape.image_pull {
        out.data.insert(
            DOCKER_CONFIG_JSON_KEY.into(),
            docker_config_json(items.main, config)?,
        );
    }
    if !shape.template.is_empty() {
        out.data
            .extend(super::template::render(&shape.template, items)?);
    }
    for (key, value) in &shape.fixed_data.0 {
        if out
            .data
            .insert(key.clone(), value.clone().into_bytes())
            .is_some()
        {
            out.warnings
                .push(KeyWarning::FixedWins { key: key.clone() });
        }
    }
    Ok(out)
}

/// The item of `spec.items` called `name`, as fetched.
fn named<'a>(items: SourceItems<'a>, name: &str) -> Result<&'a ItemWithFiles, BuildError> {
    items
        .get(Some(name))
        .ok_or_else(|| BuildError::UnknownItem {
            name: name.to_owned(),
        })
}

/// The value a `data` entry names.
fn value_of(item: &ItemWithFiles, r: &SecretKeyRef) -> Result<Vec<u8>, BuildError> {
    if let Some(label) = &r.field {
        return Ok(field(item, label)?
            .value
            .clone()
            .unwrap_or_default()
            .into_bytes());
    }
    if let Some(name) = &r.file {
        let mut files = item.files.iter().filter(|f| f.name == *name);
        return match (files.next(), files.next()) {
            (Some(f), None) => Ok(f.content.clone()),
            (None, _) => Err(not_found(KeySource::File, name)),
            (Some(_), Some(_)) => Err(ambiguous(KeySource::File, name)),
        };
    }
    let label = r.url.as_deref().unwrap_or_default();
    url(item, label)?.ok_or_else(|| not_found(KeySource::Url, label))
}

/// The href of the URL labelled `label`: the primary one when several have that label.
fn url(item: &ItemWithFiles, label: &str) -> Result<Option<Vec<u8>>, BuildError> {
    let urls: Vec<_> = item.item.urls.iter().filter(|u| u.label == label).collect();
    let chosen = match urls.as_slice() {
        [] => return Ok(None),
        [one] => *one,
        many => match many
            .iter()
            .filter(|u| u.primary)
            .collect::<Vec<_>>()
            .as_slice()
        {
            [primary] => **primary,
            _ => return Err(ambiguous(KeySource::Url, label)),
        },
    };
    Ok(Some(chosen.href.clone().into_bytes()))
}

/// The field a reference names: by label, else by `<section label>.<label>`. A reference that
/// matches several fields is refused rather than resolved by order.
fn field<'a>(item: &'a ItemWithFiles, reference: &str) -> Result<&'a Field, BuildError> {
    let fields = &item.item.fields;
    let by_label: Vec<&Field> = fields.iter().filter(|f| f.label == reference).collect();
    let matches = if by_label.is_empty() {
        let section_label = |f: &Field| {
            let id = &f.section.as_ref()?.id;
            item.item
                .sections
                .iter()
                .find(|s| s.id == *id)?
                .label
                .clone()
        };
        fields
            .iter()
            .filter(|f| {
                section_label(f).is_some_and(|s| {
                    reference
                        .strip_prefix(s.as_str())
                        .and_then(|rest| rest.strip_prefix('.'))
                        == Some(f.label.as_str())
                })
            })
            .collect()
    } else {
        by_label
    };
    match matches.as_slice() {
        [one] => Ok(one),
        [] => Err(not_found(KeySource::Field, reference)),
        _ => Err(ambiguous(KeySource::Field, reference)),
    }
}

fn not_found(kind: KeySource, reference: &str) -> BuildError {
    BuildError::FieldNotFound {
        kind,
        reference: reference.to_owned(),
    }
}

fn ambiguous(kind: KeySource, reference: &str) -> BuildError {
    BuildError::AmbiguousField {
        kind,
        reference: reference.to_owned(),
    }
}

/// `{"auths":{<registry>:{"auth":…,"email":…,"password":…,"username":…}}}`, keys sorted, as
/// `kubectl create secret docker-registry` writes it; `auth` is base64 of `username:password`.
fn docker_config_json(
    item: &ItemWithFiles,
    config: &ImagePullSecretConfig,
) -> Result<Vec<u8>, BuildError> {
    // The registry of a Login item is often its website: a URL of that label will do.
    let required = |reference: Option<&String>, default: &str, or_url: bool| {
        let reference = reference.map_or(default, String::as_str);
        let value = match field(item, reference) {
            Ok(f) => f.value.clone().unwrap_or_default().into_bytes(),
            Err(BuildError::FieldNotFound { .. }) if or_url => {
                url(item, reference)?.ok_or_else(|| not_found(KeySource::Field, reference))?
            }
            Err(e) => return Err(e),
        };
        let value = String::from_utf8(value).unwrap_or_default();
        if value.trim().is_empty() {
            return Err(BuildError::EmptyField {
                reference: reference.to_owned(),
            });
        }
        Ok(value)
    };
    let registry = required(config.registry_field.as_ref(), "server", true)?;
    let username = required(config.username_field.as_ref(), "username", false)?;
    let password = required(config.password_field.as_ref(), "password", false)?;
    let mut entry = BTreeMap::new();
    if let Some(reference) = &config.email_field {
        let email = field(item, reference)?.value.clone().unwrap_or_default();
        if !email.is_empty() {
            entry.insert("email", email);
        }
    }
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    entry.insert("auth", auth);
    entry.insert("username", username);
    entry.insert("password", password);
    let auths = BTreeMap::from([(registry.trim().to_owned(), entry)]);
    let config = BTreeMap::from([("auths", auths)]);
    Ok(serde_json::to_vec(&config).expect("string maps serialise to JSON"))
}

/// A glob over a key: `*` matches any run of characters (none included), `?` one character;
/// everything else matches itself. Iterative, with one backtrack point: linear in practice,
/// at worst the product of the two lengths (both short: keys are at most 253 bytes).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

// Its item and secret values serve the template tests too.
#[cfg(test)]
pub(super) mod tests;
