//! The item-to-Secret conversion on arbitrary Connect item JSON (`GET /v1/vaults/{v}/items/{i}`).
//!
//! The input is read as a [`FullItem`]; input that is not such JSON is dropped. Each file's
//! content is its inline base64 `content`, decoded as the Connect client does (an item whose
//! inline content is not base64 is refused by the client, so it is dropped here too), or else
//! `size` filler bytes, as the content endpoint would send; the filler is capped in total just
//! above the 1 MiB Secret limit, so the fuzzer can reach the size check without allocating
//! much. The item's title is the requested Secret name and its first tag, if any, the requested
//! type, so the name and type rules are fuzzed too. Both values of `allow_empty_values` are
//! tried.
//!
//! Checked for every input: nothing panics; a built Secret has only keys Kubernetes accepts
//! (`[-._a-zA-Z0-9]+`, at most 253 bytes, not `.`, `..` or starting with `..`), values adding up
//! to at most 1 MiB, each key and value taken from a URL, field or file of the item, no empty
//! value unless allowed, a valid name, the requested type, the item's ids and version in its
//! annotations, and the same result when built again; an error says why, truthfully; and no
//! value ever shows in a warning, an error or a `Debug` print.

#![no_main]

use std::collections::BTreeMap;

use base64::Engine;
use libfuzzer_sys::fuzz_target;
use onepassword_secrets_operator::connect::model::{FileContent, FullItem, ItemWithFiles};
use onepassword_secrets_operator::secret::{
    BuildError, BuildOptions, DesiredSecret, MAX_SECRET_DATA_BYTES, build_secret, data_key,
    secret_data, secret_name,
};
use onepassword_secrets_operator::vocabulary::{ITEM_PATH_ANNOTATION, ITEM_VERSION_ANNOTATION};

/// Filler bytes for files without inline content, over all files of one input.
const FILLER_BUDGET: u64 = MAX_SECRET_DATA_BYTES as u64 + 1;

/// Marks the values planted by [`with_marked_values`].
const MARK: &str = "FUZZSECRET";

fuzz_target!(|data: &[u8]| {
    let Ok(item) = serde_json::from_slice::<FullItem>(data) else {
        return;
    };
    let Some(item) = with_files(item) else {
        return;
    };
    for allow_empty_values in [false, true] {
        check(&item, BuildOptions { allow_empty_values });
        // Only when the input cannot already hold the marks by itself.
        if !data.windows(MARK.len()).any(|w| w == MARK.as_bytes()) {
            check_no_value_shows(&item, BuildOptions { allow_empty_values });
        }
    }
});

/// The item with the content of each of its files, as the Connect client hands it over; `None`
/// where the client would fail.
fn with_files(item: FullItem) -> Option<ItemWithFiles> {
    let mut budget = FILLER_BUDGET;
    let mut files = Vec::with_capacity(item.files.len());
    for file in &item.files {
        let content = match file.content.as_deref() {
            Some(b64) => base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()?,
            None => {
                let len = file.size.min(budget);
                budget -= len;
                vec![b'x'; len as usize]
            }
        };
        files.push(FileContent {
            id: file.id.clone(),
            name: file.name.clone(),
            content,
        });
    }
    Some(ItemWithFiles { item, files })
}

fn desired(item: &ItemWithFiles, options: BuildOptions) -> DesiredSecret<'_> {
    DesiredSecret {
        name: &item.item.title,
        namespace: "fuzz",
        item,
        secret_type: item.item.tags.first().map(String::as_str),
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        owners: Vec::new(),
        options,
    }
}

/// Kubernetes' `IsConfigMapKey`, written out again rather than taken from the crate.
fn is_config_map_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && key != "."
        && key != ".."
        && !key.starts_with("..")
}

/// Kubernetes' `IsDNS1123Subdomain`, written out again.
fn is_dns1123_subdomain(name: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            let b = label.as_bytes();
            b.first().is_some_and(|&c| alnum(c))
                && b.last().is_some_and(|&c| alnum(c))
                && b.iter().all(|&c| alnum(c) || c == b'-')
        })
}

/// Every (key, value) the URLs, fields and files of the item could give.
fn candidates(item: &ItemWithFiles) -> Vec<(String, Vec<u8>)> {
    let urls = item
        .item
        .urls
        .iter()
        .map(|u| (data_key(&u.label), u.href.as_bytes().to_vec()));
    let fields = item.item.fields.iter().map(|f| {
        let value = f.value.as_deref().unwrap_or_default();
        (data_key(&f.label), value.as_bytes().to_vec())
    });
    let files = item
        .files
        .iter()
        .map(|f| (data_key(&f.name), f.content.clone()));
    urls.chain(fields).chain(files).collect()
}

fn check(item: &ItemWithFiles, options: BuildOptions) {
    let d = desired(item, options);
    let expected = secret_data(item, options);
    let (secret, warnings) = match build_secret(&d) {
        Ok(built) => built,
        Err(err) => {
            match &err {
                BuildError::InvalidName { name } => {
                    assert_eq!(name, d.name);
                    assert!(secret_name(d.name).is_err());
                    assert!(!is_dns1123_subdomain(d.name));
                }
                BuildError::InvalidType { secret_type } => {
                    assert_eq!(Some(secret_type.as_str()), d.secret_type);
                }
                BuildError::TooLarge { bytes } => {
                    assert_eq!(*bytes, expected.total_bytes());
                    assert!(
                        *bytes > MAX_SECRET_DATA_BYTES,
                        "{bytes} bytes is not too large"
                    );
                }
                // The stored size is checked on the whole Secret, after build_secret.
                BuildError::StoredTooLarge { .. } => panic!("build_secret checks values only"),
                // This target builds unshaped Secrets: no reference to a field can fail.
                BuildError::FieldNotFound { .. }
                | BuildError::AmbiguousField { .. }
                | BuildError::EmptyField { .. }
                | BuildError::Template { .. }
                | BuildError::KeyTwice { .. }
                | BuildError::UnknownItem { .. }
                | BuildError::InItem { .. } => panic!("a shaping error without shaping"),
            }
            assert!(!err.reason().as_str().is_empty());
            return;
        }
    };

    // The data: valid keys, within the limit, the same as `secret_data`.
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    for key in data.keys() {
        assert!(is_config_map_key(key), "{key:?} is not a valid Secret key");
    }
    let total: usize = data.values().map(Vec::len).sum();
    assert!(
        total <= MAX_SECRET_DATA_BYTES,
        "{total} bytes in the Secret"
    );
    assert_eq!(data, expected.data);
    assert_eq!(warnings, expected.warnings);

    // Each key and value comes from a part of the item, and no value is empty unless allowed.
    let parts = candidates(item);
    for (key, value) in &data {
        assert!(
            parts.iter().any(|(k, v)| k == key && v == value),
            "{key:?} and its value come from no URL, field or file"
        );
        assert!(
            options.allow_empty_values || !value.is_empty(),
            "{key:?} is empty"
        );
    }
    // Every field with a valid key and a value that may be kept is there (a later field or a
    // file may share its key, so only the key is checked).
    for field in &item.item.fields {
        let key = data_key(&field.label);
        let empty = field.value.as_deref().unwrap_or_default().is_empty();
        if is_config_map_key(&key) && (options.allow_empty_values || !empty) {
            assert!(data.contains_key(&key), "field {key:?} is missing");
        }
    }

    // The metadata.
    let meta = &secret.metadata;
    let name = meta.name.as_deref().expect("a name");
    assert!(is_dns1123_subdomain(name), "{name:?} is not a valid name");
    if is_dns1123_subdomain(d.name) {
        assert_eq!(name, d.name);
    }
    assert_eq!(meta.namespace.as_deref(), Some("fuzz"));
    let want_type = match d.secret_type {
        None | Some("") => "Opaque",
        Some(t) => t,
    };
    assert_eq!(secret.type_.as_deref(), Some(want_type));
    let annotations = meta.annotations.as_ref().expect("annotations");
    assert_eq!(
        annotations[ITEM_PATH_ANNOTATION],
        format!("vaults/{}/items/{}", item.item.vault.id, item.item.id)
    );
    assert_eq!(
        annotations[ITEM_VERSION_ANNOTATION],
        item.item.version.to_string()
    );

    // Deterministic, and serialisable as an apply body.
    let again = build_secret(&d).expect("built once, so built again");
    assert_eq!(again, (secret.clone(), warnings));
    let json = serde_json::to_value(&secret).expect("a Secret serialises");
    assert_eq!(json["kind"], "Secret");
    assert_eq!(json["apiVersion"], "v1");
}

/// The item with each non-empty value replaced by a distinct mark: the same keys and the same
/// warnings (they depend on labels and on which values are empty, never on the values), and no
/// mark in any warning, error or `Debug` print.
fn check_no_value_shows(item: &ItemWithFiles, options: BuildOptions) {
    let marked = with_marked_values(item);
    let original = secret_data(item, options);
    let data = secret_data(&marked, options);
    assert_eq!(
        data.data.keys().collect::<Vec<_>>(),
        original.data.keys().collect::<Vec<_>>()
    );
    assert_eq!(data.warnings, original.warnings);

    let d = desired(&marked, options);
    let mut printed = format!("{data:?} {marked:?} {marked:#?} {d:?}");
    for warning in &data.warnings {
        printed.push_str(&format!(" {warning} {warning:?}"));
    }
    match build_secret(&d) {
        Ok((_, warnings)) => {
            for warning in &warnings {
                printed.push_str(&format!(" {warning} {warning:?}"));
            }
        }
        Err(err) => printed.push_str(&format!(" {err} {err:?}")),
    }
    assert!(!printed.contains(MARK), "a value shows in: {printed}");
}

fn with_marked_values(item: &ItemWithFiles) -> ItemWithFiles {
    let mut n = 0;
    let mut next_mark = || {
        n += 1;
        format!("{MARK}{n}")
    };
    let mut marked = item.clone();
    let strings = marked
        .item
        .urls
        .iter_mut()
        .map(|u| &mut u.href)
        .chain(
            marked
                .item
                .fields
                .iter_mut()
                .flat_map(|f| f.value.as_mut().into_iter().chain(f.totp.as_mut())),
        )
        .chain(
            marked
                .item
                .files
                .iter_mut()
                .filter_map(|f| f.content.as_mut()),
        );
    for value in strings {
        if !value.is_empty() {
            *value = next_mark();
        }
    }
    for file in &mut marked.files {
        if !file.content.is_empty() {
            file.content = next_mark().into_bytes();
        }
    }
    marked
}
