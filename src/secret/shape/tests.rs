use super::*;
use crate::connect::model::{FileContent, FullItem};
use crate::crd::ItemSource;

pub(in crate::secret) const SECRET_VALUES: &[&str] =
    &["hunter2", "s3cr3t-prod", "s3cr3t-staging", "ghp_token"];

/// A Login item for a registry, with a label repeated across two sections and one file.
pub(in crate::secret) fn item() -> ItemWithFiles {
    let item: FullItem = serde_json::from_value(serde_json::json!({
        "id": "i1", "title": "ghcr", "vault": {"id": "v1"}, "category": "LOGIN", "version": 3,
        "urls": [
            {"label": "website", "primary": true, "href": "https://ghcr.io"},
            {"label": "docs", "href": "https://docs.example"}
        ],
        "sections": [{"id": "s1", "label": "prod"}, {"id": "s2", "label": "staging"}],
        "fields": [
            {"id": "username", "type": "STRING", "purpose": "USERNAME", "label": "username", "value": "octocat"},
            {"id": "password", "type": "CONCEALED", "purpose": "PASSWORD", "label": "password", "value": "ghp_token"},
            {"id": "server", "type": "STRING", "label": "server", "value": "ghcr.io"},
            {"id": "email", "type": "EMAIL", "label": "email", "value": "octo@example.com"},
            {"id": "p1", "section": {"id": "s1"}, "type": "CONCEALED", "label": "db-password", "value": "s3cr3t-prod"},
            {"id": "p2", "section": {"id": "s2"}, "type": "CONCEALED", "label": "db-password", "value": "s3cr3t-staging"},
            {"id": "n", "type": "STRING", "label": "notes", "value": "hunter2"}
        ],
        "files": [{"id": "f1", "name": "ca.pem", "size": 4, "content_path": "/x"}]
    }))
    .unwrap();
    ItemWithFiles {
        item,
        files: vec![FileContent {
            id: "f1".into(),
            name: "ca.pem".into(),
            content: b"CERT".to_vec(),
        }],
    }
}

fn field(key: &str, field: &str) -> SecretKeyRef {
    SecretKeyRef {
        key: key.into(),
        field: Some(field.into()),
        ..Default::default()
    }
}

fn shaped(shape: &Shape) -> Result<SecretData, BuildError> {
    shaped_data(SourceItems::single(&item()), BuildOptions::default(), shape)
}

fn keys(data: &SecretData) -> Vec<&str> {
    data.data.keys().map(String::as_str).collect()
}

fn text<'a>(data: &'a SecretData, key: &str) -> &'a str {
    std::str::from_utf8(&data.data[key]).unwrap()
}

pub(in crate::secret) fn assert_no_value(message: &str) {
    for v in SECRET_VALUES {
        assert!(!message.contains(v), "{message:?} holds a value");
    }
}

fn image_pull(config: ImagePullSecretConfig) -> Shape {
    Shape {
        image_pull: Some(config),
        ..Default::default()
    }
}

#[test]
fn no_shaping_gives_the_official_keys() {
    let plain = super::super::secret_data(&item(), BuildOptions::default());
    assert_eq!(shaped(&Shape::default()).unwrap(), plain);
    assert_eq!(Shape::default().digest(), None);
}

#[test]
fn image_pull_secret_builds_a_sorted_dockerconfigjson_with_auth() {
    let data = shaped(&image_pull(ImagePullSecretConfig {
        email_field: Some("email".into()),
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(keys(&data), [DOCKER_CONFIG_JSON_KEY]);
    // base64("octocat:ghp_token")
    assert_eq!(
        text(&data, DOCKER_CONFIG_JSON_KEY),
        r#"{"auths":{"ghcr.io":{"auth":"b2N0b2NhdDpnaHBfdG9rZW4=","email":"octo@example.com","password":"ghp_token","username":"octocat"}}}"#
    );
}

#[test]
fn dockerconfigjson_is_what_the_api_server_validates() {
    // The API server's `ValidateSecret` for this type: the key is there and its value is JSON
    // (it unmarshals into `DockerConfigJSON`, a map of `auths`).
    let data = shaped(&image_pull(Default::default())).unwrap();
    let parsed: serde_json::Value =
        serde_json::from_slice(&data.data[DOCKER_CONFIG_JSON_KEY]).unwrap();
    let entry = &parsed["auths"]["ghcr.io"];
    assert!(entry.is_object(), "{parsed}");
    let auth = base64::engine::general_purpose::STANDARD
        .decode(entry["auth"].as_str().unwrap())
        .unwrap();
    assert_eq!(auth, b"octocat:ghp_token");
    assert!(entry.get("email").is_none());
}

#[test]
fn the_registry_may_be_a_url_of_the_item() {
    let data = shaped(&image_pull(ImagePullSecretConfig {
        registry_field: Some("website".into()),
        ..Default::default()
    }))
    .unwrap();
    assert!(text(&data, DOCKER_CONFIG_JSON_KEY).contains(r#"{"auths":{"https://ghcr.io":"#));
}

#[test]
fn a_missing_image_pull_field_names_the_label_and_no_value() {
    let err = shaped(&image_pull(ImagePullSecretConfig {
        password_field: Some("token".into()),
        ..Default::default()
    }))
    .unwrap_err();
    assert_eq!(err.reason(), crate::vocabulary::Reason::FieldNotFound);
    let message = err.to_string();
    assert!(message.contains("\"token\""), "{message}");
    assert_no_value(&message);
}

#[test]
fn an_empty_image_pull_field_is_refused() {
    let mut it = item();
    it.item.fields[0].value = Some(String::new());
    let err = shaped_data(
        SourceItems::single(&it),
        BuildOptions::default(),
        &image_pull(Default::default()),
    )
    .unwrap_err();
    assert_eq!(
        err,
        BuildError::EmptyField {
            reference: "username".into()
        }
    );
}

#[test]
fn data_selects_and_renames_fields_files_and_urls() {
    let shape = Shape {
        data: vec![
            field("REGISTRY_TOKEN", "password"),
            SecretKeyRef {
                key: "ca.crt".into(),
                file: Some("ca.pem".into()),
                ..Default::default()
            },
            SecretKeyRef {
                key: "endpoint".into(),
                url: Some("website".into()),
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let data = shaped(&shape).unwrap();
    assert_eq!(keys(&data), ["REGISTRY_TOKEN", "ca.crt", "endpoint"]);
    assert_eq!(text(&data, "REGISTRY_TOKEN"), "ghp_token");
    assert_eq!(text(&data, "ca.crt"), "CERT");
    assert_eq!(text(&data, "endpoint"), "https://ghcr.io");
}

#[test]
fn a_label_repeated_across_sections_needs_its_section() {
    let err = shaped(&Shape {
        data: vec![field("db", "db-password")],
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(err.reason(), crate::vocabulary::Reason::AmbiguousField);
    assert_no_value(&err.to_string());
    for (reference, value) in [
        ("prod.db-password", "s3cr3t-prod"),
        ("staging.db-password", "s3cr3t-staging"),
    ] {
        let data = shaped(&Shape {
            data: vec![field("db", reference)],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(text(&data, "db"), value);
    }
}

#[test]
fn a_missing_reference_is_field_not_found_naming_it() {
    for r in [
        field("x", "nope"),
        field("x", "qa.db-password"),
        SecretKeyRef {
            key: "x".into(),
            file: Some("missing.pem".into()),
            ..Default::default()
        },
        SecretKeyRef {
            key: "x".into(),
            url: Some("wiki".into()),
            ..Default::default()
        },
    ] {
        let err = shaped(&Shape {
            data: vec![r.clone()],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(err.reason(), crate::vocabulary::Reason::FieldNotFound);
        let reference = r.field.or(r.file).or(r.url).unwrap();
        assert!(err.to_string().contains(&reference), "{err}");
        assert_no_value(&err.to_string());
    }
}

#[test]
fn includes_and_excludes_filter_the_default_keys() {
    let only = |includes: &[&str], excludes: &[&str]| {
        let shape = Shape {
            includes: includes.iter().map(|s| s.to_string()).collect(),
            excludes: excludes.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        keys(&shaped(&shape).unwrap())
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(only(&["user*", "pass*"], &[]), ["password", "username"]);
    assert_eq!(
        only(&[], &["notes", "*.pem", "d*"]),
        ["email", "password", "server", "username", "website"]
    );
    assert_eq!(only(&["*"], &["*"]), Vec::<String>::new());
}

#[test]
fn includes_add_default_keys_beside_the_listed_ones() {
    let shape = Shape {
        data: vec![field("token", "password")],
        includes: vec!["user?ame".into()],
        ..Default::default()
    };
    assert_eq!(keys(&shaped(&shape).unwrap()), ["token", "username"]);
}

#[test]
fn fixed_data_sits_beside_item_data_and_wins_with_a_warning() {
    let shape = Shape {
        data: vec![field("sshPrivateKey", "password")],
        fixed_data: KeyedText(BTreeMap::from([
            ("type".to_string(), "git".to_string()),
            ("url".to_string(), "git@github.com:org/repo".to_string()),
        ])),
        ..Default::default()
    };
    let data = shaped(&shape).unwrap();
    assert_eq!(keys(&data), ["sshPrivateKey", "type", "url"]);
    assert_eq!(text(&data, "type"), "git");
    assert!(data.warnings.is_empty());

    let over = Shape {
        fixed_data: KeyedText(BTreeMap::from([("username".into(), "bot".into())])),
        ..Default::default()
    };
    let data = shaped(&over).unwrap();
    assert_eq!(text(&data, "username"), "bot");
    assert!(data.warnings.contains(&KeyWarning::FixedWins {
        key: "username".into()
    }));
}

#[test]
fn shaping_twice_gives_the_same_bytes() {
    let shape = Shape {
        data: vec![field("a", "prod.db-password"), field("b", "username")],
        includes: vec!["*".into()],
        fixed_data: KeyedText(BTreeMap::from([("z".into(), "1".into())])),
        image_pull: Some(Default::default()),
        ..Default::default()
    };
    assert_eq!(shaped(&shape).unwrap(), shaped(&shape).unwrap());
    assert_eq!(shape.digest(), shape.clone().digest());
}

#[test]
fn the_shape_digest_changes_with_the_shaping() {
    let a = Shape {
        data: vec![field("a", "password")],
        ..Default::default()
    };
    let b = Shape {
        data: vec![field("b", "password")],
        ..Default::default()
    };
    assert!(a.digest().is_some());
    assert_ne!(a.digest(), b.digest());
}

/// `validate` refuses `shape` with a message holding `needle`.
fn refused(shape: Shape, needle: &str) {
    let message = shape.validate().unwrap_err();
    assert!(message.contains(needle), "{message}");
}

#[test]
fn validate_refuses_bad_keys_and_sources_naming_the_key() {
    refused(
        Shape {
            data: vec![SecretKeyRef {
                key: "k".into(),
                field: Some("a".into()),
                url: Some("b".into()),
                ..Default::default()
            }],
            ..Default::default()
        },
        "exactly one",
    );
    refused(
        Shape {
            data: vec![field("no/slash", "a")],
            ..Default::default()
        },
        "\"no/slash\"",
    );
    refused(
        Shape {
            data: vec![field("k", "a"), field("k", "b")],
            ..Default::default()
        },
        "twice",
    );
    refused(
        Shape {
            data: vec![field("k", "a")],
            fixed_data: KeyedText(BTreeMap::from([("k".into(), "hunter2".into())])),
            ..Default::default()
        },
        "also in spec.data",
    );
    refused(
        Shape {
            image_pull: Some(Default::default()),
            fixed_data: KeyedText(BTreeMap::from([(
                DOCKER_CONFIG_JSON_KEY.into(),
                "{}".into(),
            )])),
            ..Default::default()
        },
        "imagePullSecret",
    );
    assert!(Shape::default().validate().is_ok());
}

#[test]
fn reserved_label_and_annotation_keys_are_refused() {
    let keys = |k: &str| vec![k.to_string()];
    assert!(check_not_reserved("spec.secretLabels", &keys("team")).is_ok());
    assert!(check_not_reserved("spec.secretLabels", &keys("example.com/team")).is_ok());
    for k in [
        "operator.1password.io/managed-by",
        "operator.1password.io/auto-restart",
    ] {
        let message = check_not_reserved("spec.secretAnnotations", &keys(k)).unwrap_err();
        assert!(message.contains(k), "{message}");
    }
}

#[test]
fn debug_of_a_shape_shows_fixed_and_template_keys_but_not_their_text() {
    let shape = Shape {
        fixed_data: KeyedText(BTreeMap::from([("token".into(), "hunter2".into())])),
        template: templated(&[("dsn", "literal-hunter2 {{ Fields.password }}")]),
        ..Default::default()
    };
    let debug = format!("{shape:?}");
    assert!(
        debug.contains("token") && debug.contains("dsn") && !debug.contains("hunter2"),
        "{debug}"
    );
}

#[test]
fn globs_match_stars_and_question_marks() {
    for (p, t) in [
        ("*", ""),
        ("*", "abc"),
        ("a*", "abc"),
        ("*c", "abc"),
        ("a?c", "abc"),
        ("a*b*c", "a-b-b-c"),
        ("tls.*", "tls.crt"),
    ] {
        assert!(glob_match(p, t), "{p} {t}");
    }
    for (p, t) in [("a", "ab"), ("?", ""), ("a*d", "abc"), ("tls.*", "tlsXcrt")] {
        assert!(!glob_match(p, t), "{p} {t}");
    }
}

#[test]
fn a_hostile_glob_stays_fast() {
    let pattern = "*a".repeat(100) + "b";
    let text = "a".repeat(253);
    let started = std::time::Instant::now();
    assert!(!glob_match(&pattern, &text));
    assert!(started.elapsed() < std::time::Duration::from_millis(200));
}

fn templated(pairs: &[(&str, &str)]) -> KeyedText {
    KeyedText(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

#[test]
fn template_keys_replace_the_default_keys_unless_includes_brings_them_back() {
    let dsn = "postgres://{{ Fields.username }}:{{ Fields.password | urlencode }}@db:5432/app";
    let shape = Shape {
        template: templated(&[("DSN", dsn)]),
        ..Default::default()
    };
    let data = shaped(&shape).unwrap();
    assert_eq!(keys(&data), ["DSN"]);
    assert_eq!(
        text(&data, "DSN"),
        "postgres://octocat:ghp_token@db:5432/app"
    );
    let with_includes = Shape {
        includes: vec!["user*".into()],
        ..shape
    };
    assert_eq!(keys(&shaped(&with_includes).unwrap()), ["DSN", "username"]);
}

#[test]
fn template_keys_sit_after_data_and_image_pull_and_before_fixed_data() {
    let shape = Shape {
        data: vec![field("user", "username")],
        image_pull: Some(Default::default()),
        template: templated(&[("t", "{{ Fields.server }}")]),
        ..Default::default()
    };
    let data = shaped(&shape).unwrap();
    assert_eq!(keys(&data), [DOCKER_CONFIG_JSON_KEY, "t", "user"]);
    assert_eq!(text(&data, "t"), "ghcr.io");
}

#[test]
fn a_template_key_may_not_repeat_a_data_key_nor_a_fixed_key_a_template_key() {
    refused(
        Shape {
            data: vec![field("k", "password")],
            template: templated(&[("k", "{{ Fields.username }}")]),
            ..Default::default()
        },
        "spec.template.data: key \"k\" is also in",
    );
    refused(
        Shape {
            template: templated(&[("k", "x")]),
            fixed_data: KeyedText(BTreeMap::from([("k".into(), "y".into())])),
            ..Default::default()
        },
        "spec.fixedData: key \"k\"",
    );
    refused(
        Shape {
            template: templated(&[("no/slash", "x")]),
            ..Default::default()
        },
        "spec.template.data: \"no/slash\"",
    );
    refused(
        Shape {
            image_pull: Some(Default::default()),
            template: templated(&[(DOCKER_CONFIG_JSON_KEY, "{}")]),
            ..Default::default()
        },
        "imagePullSecret",
    );
}

/// A Database item, the second item of a Secret.
fn database() -> ItemWithFiles {
    let item: FullItem = serde_json::from_value(serde_json::json!({
        "id": "i2", "title": "db", "vault": {"id": "v2"}, "category": "DATABASE", "version": 9,
        "fields": [
            {"id": "u", "type": "STRING", "label": "username", "value": "app"},
            {"id": "p", "type": "CONCEALED", "label": "password", "value": "pg-s3cr3t"},
            {"id": "h", "type": "STRING", "label": "host", "value": "db.internal"}
        ]
    }))
    .unwrap();
    ItemWithFiles {
        item,
        files: Vec::new(),
    }
}

fn source(name: &str, key_prefix: Option<&str>) -> ItemSource {
    ItemSource {
        name: name.into(),
        item_path: format!("vaults/v/items/{name}"),
        key_prefix: key_prefix.map(String::from),
    }
}

fn from(item: &str, key: &str, label: &str) -> SecretKeyRef {
    SecretKeyRef {
        item: Some(item.into()),
        ..field(key, label)
    }
}

/// Shapes the test item and the database, called `db`.
fn shaped_with_db(shape: &Shape) -> Result<SecretData, BuildError> {
    let (main, named) = (item(), BTreeMap::from([("db".to_string(), database())]));
    let items = SourceItems {
        main: &main,
        named: &named,
    };
    shaped_data(items, BuildOptions::default(), shape)
}

#[test]
fn a_key_prefix_adds_every_key_of_the_other_item_under_it_beside_the_main_items() {
    let shape = Shape {
        items: vec![source("db", Some("db_"))],
        ..Default::default()
    };
    let data = shaped_with_db(&shape).unwrap();
    let main = shaped(&Shape::default()).unwrap();
    for (key, value) in &main.data {
        assert_eq!(&data.data[key], value);
    }
    assert_eq!(text(&data, "db_password"), "pg-s3cr3t");
    assert_eq!(text(&data, "db_host"), "db.internal");
    assert_eq!(data.data.len(), main.data.len() + 3);
    // Includes and excludes see the prefixed names.
    let filtered = Shape {
        includes: vec!["db_*".into()],
        excludes: vec!["db_host".into()],
        ..shape
    };
    assert_eq!(
        keys(&shaped_with_db(&filtered).unwrap()),
        ["db_password", "db_username"]
    );
}

#[test]
fn a_data_entry_takes_its_value_from_the_item_it_names() {
    let shape = Shape {
        items: vec![source("db", None)],
        data: vec![
            from("db", "DB_PASSWORD", "password"),
            field("REGISTRY_TOKEN", "password"),
        ],
        ..Default::default()
    };
    let data = shaped_with_db(&shape).unwrap();
    // Without a prefix, the other item gives only what is picked from it.
    assert_eq!(keys(&data), ["DB_PASSWORD", "REGISTRY_TOKEN"]);
    assert_eq!(text(&data, "DB_PASSWORD"), "pg-s3cr3t");
    assert_eq!(text(&data, "REGISTRY_TOKEN"), "ghp_token");
}

#[test]
fn a_key_given_by_two_items_is_refused_naming_the_key_and_no_value() {
    // The main item's `username` and the database's, both unprefixed.
    let against_main = Shape {
        items: vec![source("db", Some(""))],
        ..Default::default()
    };
    // Two prefixes that give the same keys.
    let mut named = BTreeMap::from([("db".to_string(), database())]);
    named.insert("db2".into(), database());
    let main = item();
    let twice = Shape {
        items: vec![source("db", Some("x_")), source("db2", Some("x_"))],
        ..Default::default()
    };
    for err in [
        shaped_with_db(&against_main).unwrap_err(),
        shaped_data(
            SourceItems {
                main: &main,
                named: &named,
            },
            BuildOptions::default(),
            &twice,
        )
        .unwrap_err(),
    ] {
        assert_eq!(err.reason(), crate::vocabulary::Reason::InvalidShape);
        let message = err.to_string();
        assert!(
            message.contains("key \"") && message.contains("of item \"db"),
            "{message}"
        );
        assert_no_value(&message);
        assert!(!message.contains("pg-s3cr3t"), "{message}");
    }
    // The same refusal every time: the first key in order, whatever the order of spec.items.
    assert_eq!(
        shaped_with_db(&against_main).unwrap_err(),
        shaped_with_db(&against_main).unwrap_err()
    );
    // An explicit data key replaces a default one, as it does for the main item.
    let explicit = Shape {
        items: vec![source("db", Some("db_"))],
        data: vec![field("db_password", "password")],
        includes: vec!["*".into()],
        ..Default::default()
    };
    assert_eq!(
        text(&shaped_with_db(&explicit).unwrap(), "db_password"),
        "ghp_token"
    );
}

#[test]
fn the_shape_digest_covers_templates_and_is_unchanged_without_them() {
    let base = Shape {
        data: vec![field("a", "password")],
        ..Default::default()
    };
    // No `template` in what is hashed: shaped Secrets written before templates keep their digest.
    assert!(
        serde_json::to_value(&base)
            .unwrap()
            .get("template")
            .is_none()
    );
    let t1 = Shape {
        template: templated(&[("t", "{{ Fields.username }}")]),
        ..base.clone()
    };
    let t2 = Shape {
        template: templated(&[("t", "{{ Fields.username | upper }}")]),
        ..base.clone()
    };
    assert!(!t1.is_default());
    let digests = [base.digest(), t1.digest(), t2.digest()];
    assert!(digests[0] != digests[1] && digests[1] != digests[2]);
    assert_eq!(t1.digest(), t1.clone().digest());
}

#[test]
fn a_template_error_stops_the_build_and_names_the_key() {
    let shape = Shape {
        template: templated(&[("good", "x"), ("bad", "ok\n{{ Fields.password | int }}")]),
        ..Default::default()
    };
    let err = shaped(&shape).unwrap_err();
    assert_eq!(err.reason(), crate::vocabulary::Reason::TemplateError);
    let message = err.to_string();
    assert!(
        message.starts_with("spec.template.data key \"bad\", line 2: "),
        "{message}"
    );
    assert_no_value(&message);
}

#[test]
fn a_missing_field_of_another_item_names_the_item_and_the_label() {
    let err = shaped_with_db(&Shape {
        items: vec![source("db", None)],
        data: vec![from("db", "x", "port")],
        ..Default::default()
    })
    .unwrap_err();
    assert_eq!(err.reason(), crate::vocabulary::Reason::FieldNotFound);
    let message = err.to_string();
    assert!(
        message.starts_with("item \"db\" of spec.items: "),
        "{message}"
    );
    assert!(message.contains("\"port\""), "{message}");
}

#[test]
fn validate_refuses_bad_or_repeated_item_names_bad_prefixes_and_unknown_items() {
    let bad = |shape: Shape, needle: &str| {
        let message = shape.validate().unwrap_err();
        assert!(message.contains(needle), "{message}");
    };
    for name in ["", "1db", "db-main", "db.x", &"a".repeat(64)] {
        bad(
            Shape {
                items: vec![source(name, None)],
                ..Default::default()
            },
            &format!("{name:?}"),
        );
    }
    bad(
        Shape {
            items: vec![source("db", None), source("db", Some("x_"))],
            ..Default::default()
        },
        "given twice",
    );
    for prefix in ["a/b", "..x", "a b"] {
        bad(
            Shape {
                items: vec![source("db", Some(prefix))],
                ..Default::default()
            },
            &format!("{prefix:?}"),
        );
    }
    bad(
        Shape {
            items: vec![source("db", None)],
            data: vec![from("cache", "k", "password")],
            ..Default::default()
        },
        "\"cache\"",
    );
    let ok = Shape {
        items: vec![source("db", Some("")), source("_Cache2", Some(".x-"))],
        data: vec![from("db", "k", "password")],
        ..Default::default()
    };
    assert!(ok.validate().is_ok());
    assert!(ok.digest().is_some());
}

#[test]
fn shaping_several_items_twice_gives_the_same_bytes() {
    let shape = Shape {
        items: vec![source("db", Some("db_"))],
        data: vec![from("db", "a", "host"), field("b", "username")],
        includes: vec!["*".into()],
        ..Default::default()
    };
    assert_eq!(
        shaped_with_db(&shape).unwrap(),
        shaped_with_db(&shape).unwrap()
    );
    let other_prefix = Shape {
        items: vec![source("db", Some("pg_"))],
        ..shape.clone()
    };
    assert_ne!(shape.digest(), other_prefix.digest());
}
