//! Properties of the pure parts, checked on generated input: the item path parser, the key and
//! name rules, and the item-to-Secret conversion. A short run (a few seconds); no regression files
//! are written.

use std::collections::BTreeMap;

use onepassword_secrets_operator::connect::ItemPath;
use onepassword_secrets_operator::connect::model::{
    Field, File, FileContent, FullItem, ItemUrl, ItemWithFiles, VaultRef,
};
use onepassword_secrets_operator::crd::{
    ITEM_PATH_PATTERN, ImagePullSecretConfig, ItemSource, SecretKeyRef,
};
use onepassword_secrets_operator::secret::shape::{KeyedText, Shape, glob_match, shaped_data};
use onepassword_secrets_operator::secret::{
    BuildError, BuildOptions, DesiredSecret, SourceItems, build_secret, data_key,
    is_dns1123_subdomain, is_valid_data_key, secret_data, secret_name,
};
use proptest::prelude::*;
use proptest::test_runner::Config;

fn config() -> Config {
    Config {
        cases: 256,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Labels as people write them: valid keys, spaces and punctuation, dots, unicode, empty.
fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._-]{0,12}",
        "[ a-zA-Z0-9._/@:-]{0,12}",
        "\\.{0,3}[a-z]{0,3}",
        "\\PC{0,12}",
        Just(String::new()),
    ]
}

/// Values long enough to be spotted in `Debug` output, or empty.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![1 => Just(String::new()), 4 => "\\PC{0,24}"]
}

fn item() -> impl Strategy<Value = ItemWithFiles> {
    let url = (label(), any::<bool>(), value()).prop_map(|(label, primary, href)| ItemUrl {
        label,
        primary,
        href,
    });
    let field = (label(), proptest::option::of(value())).prop_map(|(label, value)| Field {
        label,
        value,
        ..Field::default()
    });
    let file = (label(), proptest::collection::vec(any::<u8>(), 0..48));
    (
        proptest::collection::vec(url, 0..5),
        proptest::collection::vec(field, 0..8),
        proptest::collection::vec(file, 0..4),
    )
        .prop_map(|(urls, fields, files)| {
            let ids: Vec<String> = (0..files.len()).map(|i| format!("file{i}")).collect();
            ItemWithFiles {
                item: FullItem {
                    id: "p7eflcy7f5mk7vg6zrzf5rjjyu".into(),
                    vault: VaultRef {
                        id: "ionaiwtdvgclrixbt6ztpqcxnq".into(),
                    },
                    version: 3,
                    urls,
                    fields,
                    files: files
                        .iter()
                        .zip(&ids)
                        .map(|((name, content), id)| File {
                            id: id.clone(),
                            name: name.clone(),
                            size: content.len() as u64,
                            ..File::default()
                        })
                        .collect(),
                    ..FullItem::default()
                },
                files: files
                    .into_iter()
                    .zip(ids)
                    .map(|((name, content), id)| FileContent { id, name, content })
                    .collect(),
            }
        })
}

/// Every key a part of the item could give, with whether that part's value is empty and whether
/// the part is a URL.
fn keys_of_parts(item: &ItemWithFiles) -> Vec<(String, bool, bool)> {
    let urls = item
        .item
        .urls
        .iter()
        .map(|u| (data_key(&u.label), u.href.is_empty(), true));
    let fields = item.item.fields.iter().map(|f| {
        let empty = f.value.as_deref().unwrap_or_default().is_empty();
        (data_key(&f.label), empty, false)
    });
    let files = item
        .files
        .iter()
        .map(|f| (data_key(&f.name), f.content.is_empty(), false));
    urls.chain(fields).chain(files).collect()
}

fn desired(item: &ItemWithFiles, allow_empty_values: bool) -> DesiredSecret<'_> {
    DesiredSecret {
        name: "db-credentials",
        namespace: "apps",
        item,
        secret_type: None,
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        owners: Vec::new(),
        options: BuildOptions { allow_empty_values },
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn item_path_parse_never_panics_and_what_it_accepts_prints_back_the_same(
        path in prop_oneof![
            "\\PC{0,40}",
            "vaults/[^\n]{0,12}/items/[^\n]{0,12}",
            "(vaults|items|/| |a|\t|\n){0,10}",
        ]
    ) {
        if let Ok(parsed) = ItemPath::parse(&path) {
            prop_assert_eq!(parsed.to_string(), path.clone());
            prop_assert_eq!(ItemPath::parse(&parsed.to_string()), Ok(parsed));
        }
    }

    #[test]
    fn item_paths_made_of_two_valid_parts_are_accepted_as_those_parts(
        vault in "[A-Za-z0-9_][A-Za-z0-9 _/-]{0,10}[A-Za-z0-9_]",
        item in "[A-Za-z0-9_][A-Za-z0-9 _-]{0,10}[A-Za-z0-9_]",
    ) {
        let parsed = ItemPath::parse(&format!("vaults/{vault}/items/{item}"));
        prop_assert_eq!(parsed.map(|p| (p.vault, p.item)), Ok((vault, item)));
    }

    #[test]
    fn data_key_never_panics_and_gives_a_valid_key_or_nothing(label in label()) {
        let key = data_key(&label);
        prop_assert!(key.is_empty() || key.len() <= 253, "{} bytes", key.len());
        if is_valid_data_key(&label) {
            prop_assert_eq!(&key, &label);
        }
        if is_valid_data_key(&key) {
            prop_assert_eq!(data_key(&key), key);
        }
    }

    #[test]
    fn long_labels_give_keys_of_at_most_253_bytes(label in "[a-z ]{240,300}") {
        let key = data_key(&label);
        prop_assert!(key.len() <= 253, "{} bytes", key.len());
    }

    #[test]
    fn secret_name_never_panics_and_gives_a_valid_name_that_it_keeps(
        name in prop_oneof!["\\PC{0,30}", "[a-zA-Z0-9._ -]{0,30}", "[a-z.-]{250,260}"]
    ) {
        match secret_name(&name) {
            Ok(out) => {
                prop_assert!(is_dns1123_subdomain(&out), "{:?} from {:?}", out, name);
                prop_assert_eq!(secret_name(&out), Ok(out.clone()));
            }
            Err(err) => prop_assert_eq!(err, BuildError::InvalidName { name }),
        }
    }

    #[test]
    fn secret_data_gives_valid_keys_only_from_parts_kept_and_the_same_each_time(
        item in item(),
        allow_empty_values in any::<bool>(),
    ) {
        let options = BuildOptions { allow_empty_values };
        let data = secret_data(&item, options);
        prop_assert_eq!(&secret_data(&item.clone(), options), &data);

        let parts = keys_of_parts(&item);
        for (key, value) in &data.data {
            prop_assert!(is_valid_data_key(key), "{:?}", key);
            let mut from = parts.iter().filter(|(k, _, _)| k == key);
            prop_assert!(from.clone().next().is_some(), "{:?} comes from no part", key);
            if !allow_empty_values {
                prop_assert!(!value.is_empty(), "{:?} is empty", key);
                prop_assert!(from.any(|(_, empty, _)| !empty), "{:?}", key);
            }
        }
        // Every field or file with a valid key and a value it may keep gives its key. Not so
        // every URL: a primary URL without an address hides the others, as in the official
        // operator.
        for (key, empty, url) in parts {
            if !url && is_valid_data_key(&key) && (allow_empty_values || !empty) {
                prop_assert!(data.data.contains_key(&key), "{:?} is missing", key);
            }
        }
    }

    #[test]
    fn build_secret_holds_exactly_the_secret_data_or_says_why_not(
        item in item(),
        allow_empty_values in any::<bool>(),
    ) {
        let d = desired(&item, allow_empty_values);
        let expected = secret_data(&item, d.options);
        match build_secret(&d) {
            Ok((secret, warnings)) => {
                let data: BTreeMap<String, Vec<u8>> = secret
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                prop_assert_eq!(data, expected.data);
                prop_assert_eq!(warnings, expected.warnings);
            }
            Err(err) => prop_assert_eq!(err, BuildError::TooLarge { bytes: expected.total_bytes() }),
        }
    }

    #[test]
    fn debug_of_an_item_never_shows_a_value(item in item()) {
        let printed = format!("{item:?} {item:#?} {:?}", item.item);
        let urls = item.item.urls.iter().map(|u| u.href.clone());
        let fields = item.item.fields.iter().filter_map(|f| f.value.clone());
        for value in urls.chain(fields) {
            // Short values may appear by chance among labels and ids.
            if value.chars().count() >= 6 && !item_labels_contain(&item, &value) {
                prop_assert!(!printed.contains(&value), "{:?} in {}", value, printed);
            }
        }
        for file in &item.files {
            if let Ok(text) = std::str::from_utf8(&file.content)
                && text.chars().count() >= 6
                && !item_labels_contain(&item, text)
            {
                prop_assert!(!printed.contains(text), "{:?} in {}", text, printed);
            }
        }
    }
}

/// A shaping whose references are labels as people write them (often not in the item).
fn shape() -> impl Strategy<Value = Shape> {
    let reference = (0..3u8, label()).prop_map(|(kind, label)| {
        let mut r = SecretKeyRef::default();
        match kind {
            0 => r.field = Some(label),
            1 => r.file = Some(label),
            _ => r.url = Some(label),
        }
        r
    });
    let data = proptest::collection::btree_map("[a-zA-Z_]{1,8}", reference, 0..4).prop_map(|m| {
        m.into_iter()
            .map(|(key, r)| SecretKeyRef { key, ..r })
            .collect::<Vec<_>>()
    });
    let globs = proptest::collection::vec("[a-z.*?]{0,5}", 0..3);
    let fixed = proptest::collection::btree_map("[0-9]{1,4}", value(), 0..3);
    let pull = proptest::option::of((label(), label(), label()).prop_map(|(r, u, p)| {
        ImagePullSecretConfig {
            registry_field: Some(r),
            username_field: Some(u),
            password_field: Some(p),
            email_field: None,
        }
    }));
    let templates = proptest::collection::btree_map("tpl-[a-z]{1,4}", template(), 0..3);
    (data, globs.clone(), globs, fixed, pull, templates).prop_map(
        |(data, includes, excludes, fixed, image_pull, templates)| Shape {
            items: Vec::new(),
            data,
            includes,
            excludes,
            fixed_data: KeyedText(fixed),
            image_pull,
            template: KeyedText(templates),
        },
    )
}

/// A Jinja string literal of `text`.
fn literal(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

/// Templates as people write them, and mistaken ones: each over a label that may or may not
/// be in the item, through a filter or an operation that may fail on the value.
fn template() -> impl Strategy<Value = String> {
    let use_of = prop_oneof![
        Just("{{ Fields[L] }}"),
        Just("{{ Fields[L] | urlencode }}"),
        Just("{{ Fields[L] | b64enc }}"),
        Just("{{ Fields[L] | b64dec }}"),
        Just("{{ Fields[L] | int }}"),
        Just("{{ Fields[L] + 1 }}"),
        Just("{{ Fields[Fields[L]] }}"),
        Just("{{ Files[L] | b64enc }}"),
        Just("{{ URLs[L] | default('none') }}"),
        Just("{{ .Fields.L }}"),
        Just("{% for k, v in Fields | items %}{{ k }}={{ v | tojson }};{% endfor %}"),
    ];
    prop_oneof![
        4 => (use_of, label()).prop_map(|(t, l)| t.replace('L', &literal(&l))),
        1 => "\\PC{0,24}",
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn shaping_is_deterministic_keeps_listed_keys_and_errors_carry_no_value(
        item in item(),
        shape in shape(),
    ) {
        prop_assume!(shape.validate().is_ok());
        let first = shaped_data(SourceItems::single(&item), BuildOptions::default(), &shape);
        prop_assert_eq!(&first, &shaped_data(SourceItems::single(&item), BuildOptions::default(), &shape));
        match first {
            Ok(data) => {
                for key in shape.data.iter().map(|r| &r.key).chain(shape.fixed_data.0.keys()) {
                    prop_assert!(data.data.contains_key(key), "{:?} is missing", key);
                }
                for (key, value) in &shape.fixed_data.0 {
                    prop_assert_eq!(&data.data[key], value.as_bytes());
                }
            }
            Err(err) => {
                let printed = format!("{err} {err:?}");
                for value in secret_values(&item) {
                    if value.chars().count() >= 6
                        && !item_labels_contain(&item, &value)
                        && !shape.template.0.values().any(|t| t.contains(&value))
                    {
                        prop_assert!(!printed.contains(&value), "{:?} in {}", value, printed);
                    }
                }
            }
        }
    }

    #[test]
    fn a_hostile_template_ends_within_its_fuel(
        outer in 1u64..10_000_000,
        inner in 1u64..10_000_000,
        times in 1u64..1_000_000_000,
        item in item(),
    ) {
        let hostile = [
            format!("{{% for i in range({outer}) %}}{{% for j in range({inner}) %}}{{{{ i * j }}}}{{% endfor %}}{{% endfor %}}"),
            format!("{{{{ 'xy' * {times} }}}}"),
            format!("{{% set ns = namespace(s='ab') %}}{{% for i in range({outer}) %}}{{% set ns.s = ns.s ~ ns.s %}}{{% endfor %}}{{{{ ns.s | length }}}}"),
        ];
        for source in hostile {
            let shape = Shape {
                template: KeyedText(BTreeMap::from([("t".to_owned(), source.clone())])),
                ..Shape::default()
            };
            let started = std::time::Instant::now();
            let result = shaped_data(SourceItems::single(&item), BuildOptions::default(), &shape);
            prop_assert!(
                started.elapsed() < std::time::Duration::from_secs(2),
                "{} took {:?}", source, started.elapsed()
            );
            if let Err(err) = result {
                prop_assert_eq!(err.reason().as_str(), "TemplateError");
            }
        }
    }

    #[test]
    fn several_items_shape_deterministically_and_refuse_a_repeated_key_by_name(
        main in item(),
        other in item(),
        prefix in prop_oneof![Just(String::new()), "[a-z.]{1,3}"],
    ) {
        let shape = Shape {
            items: vec![ItemSource {
                name: "other".into(),
                item_path: "vaults/v/items/o".into(),
                key_prefix: Some(prefix.clone()),
            }],
            ..Shape::default()
        };
        let named = BTreeMap::from([("other".to_string(), other.clone())]);
        let items = SourceItems { main: &main, named: &named };
        let opts = BuildOptions::default();
        let first = shaped_data(items, opts, &shape);
        prop_assert_eq!(&first, &shaped_data(items, opts, &shape));
        let mut want = secret_data(&main, opts).data;
        let theirs: Vec<(String, Vec<u8>)> = secret_data(&other, opts)
            .data
            .into_iter()
            .map(|(k, v)| (format!("{prefix}{k}"), v))
            .filter(|(k, _)| is_valid_data_key(k))
            .collect();
        let shared = theirs.iter().map(|(k, _)| k).find(|k| want.contains_key(*k)).cloned();
        match first {
            Ok(data) => {
                prop_assert_eq!(shared, None);
                want.extend(theirs);
                prop_assert_eq!(data.data, want);
            }
            Err(BuildError::KeyTwice { key, item }) => {
                prop_assert_eq!(Some(key), shared);
                prop_assert_eq!(item, "other");
            }
            Err(e) => prop_assert!(false, "{}", e),
        }
    }

    #[test]
    fn a_glob_without_wildcards_matches_only_itself_and_a_star_matches_all(
        pattern in "[a-z.]{0,8}",
        text in "[a-z.]{0,8}",
    ) {
        prop_assert_eq!(glob_match(&pattern, &text), pattern == text);
        prop_assert!(glob_match("*", &text));
        let prefixed = (format!("{pattern}*"), format!("{pattern}{text}"));
        prop_assert!(glob_match(&prefixed.0, &prefixed.1));
    }
}

/// The values of an item's fields and URLs, and its files as text.
fn secret_values(item: &ItemWithFiles) -> Vec<String> {
    let fields = item.item.fields.iter().filter_map(|f| f.value.clone());
    let urls = item.item.urls.iter().map(|u| u.href.clone());
    let files = item
        .files
        .iter()
        .filter_map(|f| String::from_utf8(f.content.clone()).ok());
    fields.chain(urls).chain(files).collect()
}

/// Whether a value is also a label, name or id of the item, where printing it is expected.
fn item_labels_contain(item: &ItemWithFiles, value: &str) -> bool {
    let names = item
        .item
        .urls
        .iter()
        .map(|u| u.label.as_str())
        .chain(item.item.fields.iter().map(|f| f.label.as_str()))
        .chain(item.files.iter().map(|f| f.name.as_str()))
        .chain([item.item.id.as_str(), item.item.vault.id.as_str()]);
    names.into_iter().any(|n| n.contains(value)) || "ItemWithFiles FullItem Field".contains(value)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn what_the_parser_accepts_also_matches_the_crd_pattern(
        vault in prop_oneof!["\\PC{0,10}", "[a-z/ ][a-z/ ]{0,7}"],
        item in prop_oneof!["\\PC{0,10}", "[a-z/ ][a-z/ ]{0,7}"],
    ) {
        let pattern = regex::Regex::new(ITEM_PATH_PATTERN).unwrap();
        let path = format!("vaults/{vault}/items/{item}");
        if ItemPath::parse(&path).is_ok() {
            prop_assert!(pattern.is_match(&path), "{:?} is parsed but fails the pattern", path);
        }
    }
}

/// Found by the property above: the parser took `/` as the first character of the vault or the
/// item, which the CRD's pattern refuses (so a path that bypasses the schema, e.g. in a
/// Deployment's annotation, looked up a title starting with `/`).
#[test]
fn a_part_starting_with_a_slash_is_refused_by_the_parser_as_by_the_crd_pattern() {
    let pattern = regex::Regex::new(ITEM_PATH_PATTERN).unwrap();
    for path in ["vaults///items/a", "vaults//x/items/a", "vaults/a/items//b"] {
        assert!(!pattern.is_match(path), "{path}");
        assert!(ItemPath::parse(path).is_err(), "{path} is parsed");
    }
}
