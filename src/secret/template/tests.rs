use super::*;
use crate::secret::shape::tests::{SECRET_VALUES, assert_no_value, item};

fn one(source: &str) -> Result<String, BuildError> {
    let templates = KeyedText(BTreeMap::from([("out".to_owned(), source.to_owned())]));
    let mut data = render(&templates, SourceItems::single(&item()))?;
    Ok(String::from_utf8(data.remove("out").unwrap()).unwrap())
}

fn problem(source: &str) -> (Option<usize>, TemplateProblem) {
    match one(source).unwrap_err() {
        BuildError::Template { key, line, problem } => {
            assert_eq!(key, "out");
            (line, problem)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn fields_sections_and_fields_by_id_read_as_in_the_official_operator() {
    assert_eq!(
        one("{{ Fields.username }}:{{ Fields['password'] }}").unwrap(),
        "octocat:ghp_token"
    );
    assert_eq!(
        one(r#"{{ Sections["prod"]["db-password"] }} {{ Sections.staging["db-password"] }}"#)
            .unwrap(),
        "s3cr3t-prod s3cr3t-staging"
    );
    // Fields without a section are in the section named "".
    assert_eq!(one(r#"{{ Sections[""].server }}"#).unwrap(), "ghcr.io");
    assert_eq!(one("{{ FieldsByID.p2 }}").unwrap(), "s3cr3t-staging");
}

#[test]
fn a_label_repeated_across_sections_is_the_later_field_in_fields() {
    assert_eq!(
        one("{{ Fields['db-password'] }}").unwrap(),
        "s3cr3t-staging"
    );
}

#[test]
fn files_urls_and_item_metadata_are_in_the_context() {
    assert_eq!(one("{{ Files['ca.pem'] }}").unwrap(), "CERT");
    assert_eq!(
        one("{{ URLs.website }} {{ URLs.docs }}").unwrap(),
        "https://ghcr.io https://docs.example"
    );
    assert_eq!(
        one("{{ Item.Title }} v{{ Item.Version }} {{ Item.ID }} {{ Item.VaultID }} {{ Item.Tags | length }}")
            .unwrap(),
        "ghcr v3 i1 v1 0"
    );
}

#[test]
fn a_binary_file_is_bytes_that_b64enc_takes() {
    let mut binary = item();
    binary.files[0].content = vec![0xff, 0x00, 0x80];
    let templates = KeyedText(BTreeMap::from([(
        "der".to_owned(),
        "{{ Files['ca.pem'] | b64enc }}".to_owned(),
    )]));
    assert_eq!(
        render(&templates, SourceItems::single(&binary)).unwrap()["der"],
        b"/wCA".to_vec()
    );
}

#[test]
fn the_filters_for_credentials() {
    assert_eq!(
        one("{{ Fields.username | b64enc }}").unwrap(),
        "b2N0b2NhdA=="
    );
    assert_eq!(one("{{ 'b2N0b2NhdA==' | b64dec }}").unwrap(), "octocat");
    assert_eq!(
        one("{{ 'a/b:c@d e~f.g_h-i' | urlencode }}").unwrap(),
        "a%2Fb%3Ac%40d%20e~f.g_h-i"
    );
    assert_eq!(
        one("{{ {'user': Fields.username, 'n': 1} | tojson }}").unwrap(),
        r#"{"n": 1, "user": "octocat"}"#
    );
    assert_eq!(one("{{ Fields.username | upper }}").unwrap(), "OCTOCAT");
    assert_eq!(one("{{ 'OctoCat' | lower }}").unwrap(), "octocat");
    assert_eq!(one("{{ '  x ' | trim }}").unwrap(), "x");
    assert_eq!(
        one("{{ Fields.missing | default('none') }}").unwrap(),
        "none"
    );
}

#[test]
fn output_is_data_never_escaped_and_keeps_its_last_newline() {
    let templates = KeyedText(BTreeMap::from([(
        "config.html".to_owned(),
        "<a href=\"{{ URLs.website }}\">&</a>\n".to_owned(),
    )]));
    assert_eq!(
        render(&templates, SourceItems::single(&item())).unwrap()["config.html"],
        b"<a href=\"https://ghcr.io\">&</a>\n".to_vec()
    );
}

#[test]
fn a_missing_name_is_an_error_not_empty_text() {
    assert_eq!(
        problem("a\n{{ Fields.missing }}"),
        (Some(2), TemplateProblem::Undefined)
    );
    assert_eq!(problem("{{ Nothing }}").1, TemplateProblem::Undefined);
    assert_eq!(
        problem("{% if Fields.missing %}{% endif %}").1,
        TemplateProblem::Undefined
    );
    // How an optional name is read.
    assert_eq!(
        one("{% if Fields.missing is defined %}x{% else %}y{% endif %}").unwrap(),
        "y"
    );
    assert_eq!(
        one("{{ Fields.missing | default('') | tojson }}").unwrap(),
        "\"\""
    );
}

#[test]
fn go_syntax_is_refused_with_how_to_write_it_here() {
    for (source, line) in [
        ("{{ .Fields.password }}", 1),
        ("user\n{{- index .Sections \"prod\" \"db-password\" }}", 2),
        ("{{ printf \"%s\" .Fields.username }}", 1),
    ] {
        assert_eq!(
            problem(source),
            (Some(line), TemplateProblem::GoSyntax),
            "{source}"
        );
    }
    let message = one("{{ .Fields.password }}").unwrap_err().to_string();
    assert!(message.contains("{{ Fields.x }}"), "{message}");
    assert!(message.contains(r#"{{ Sections["s"]["x"] }}"#), "{message}");
    assert_eq!(problem("{{ Fields.username ").1, TemplateProblem::Syntax);
}

#[test]
fn a_hostile_template_runs_out_of_fuel_quickly() {
    let started = std::time::Instant::now();
    for source in [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{{ 'x' * 10**8 }}",
        "{% set s = namespace(x='x') %}{% for i in range(60) %}{% set s.x = s.x ~ s.x %}{% endfor %}",
    ] {
        assert_eq!(problem(source).1, TemplateProblem::OutOfFuel, "{source}");
    }
    // minijinja refuses so long a range outright.
    assert_eq!(
        problem("{% for i in range(10**9) %}x{% endfor %}").1,
        TemplateProblem::Other("invalid operation".into())
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn output_over_the_secret_limit_stops() {
    // Under the fuel budget, but past 1 MiB: written in large pieces.
    let source = "{% set k = 'x' * 60000 %}{% for i in range(20) %}{{ k }}{% endfor %}";
    let (_, p) = problem(source);
    assert!(
        matches!(p, TemplateProblem::TooLarge | TemplateProblem::OutOfFuel),
        "{p:?}"
    );
}

#[test]
fn no_error_holds_a_value() {
    for source in [
        "{{ Fields.password | int }}",
        "{{ Fields.password + 1 }}",
        "{{ Fields.notes * Fields.notes }}",
        "{{ Fields[Fields.password] }}",
        "{{ Sections.prod[Fields.notes] }}",
        "{{ Fields.password | b64dec }}",
        "{{ Fields.password() }}",
        "{{ Fields.password.nope }}",
        "{{ Fields.password | nofilter }}",
        "{% if Fields.password is hunter2 %}{% endif %}",
        "{{ hunter2 }}",
        "{{ .Fields.hunter2 }}",
    ] {
        let err = one(source).unwrap_err();
        assert_no_value(&err.to_string());
        assert_no_value(&format!("{err:?}"));
        assert_eq!(err.reason(), crate::vocabulary::Reason::TemplateError);
    }
    // The test's values are really there to be leaked.
    assert!(SECRET_VALUES.contains(&"hunter2"));
}

#[test]
fn rendering_is_deterministic() {
    let source = "{% for k, v in Fields | items %}{{ k }}={{ v }};{% endfor %}\
                  {% for k in Sections %}{{ k }},{% endfor %}{{ Fields | tojson }}";
    let first = one(source).unwrap();
    for _ in 0..5 {
        assert_eq!(one(source).unwrap(), first);
    }
    assert!(
        first.starts_with("db-password=s3cr3t-staging;email="),
        "{first}"
    );
}

#[test]
fn check_finds_syntax_errors_without_the_item() {
    let templates = KeyedText(BTreeMap::from([
        ("ok".to_owned(), "{{ Fields.x }}".to_owned()),
        ("bad".to_owned(), "{% if %}".to_owned()),
    ]));
    match check(&templates).unwrap_err() {
        BuildError::Template { key, problem, .. } => {
            assert_eq!((key.as_str(), problem), ("bad", TemplateProblem::Syntax));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bcrypt_hash_matches_a_known_vector() {
    // From Python's bcrypt: $2b$04$EGdrhbKUv8Oc9vGiXX0HQOxSg445d458Muh7DAHskb6QbtCvdxcie.
    let b64 = GeneralPurpose::new(
        &base64::alphabet::BCRYPT,
        base64::engine::general_purpose::NO_PAD,
    );
    let salt: [u8; 16] = b64
        .decode("EGdrhbKUv8Oc9vGiXX0HQO")
        .unwrap()
        .try_into()
        .unwrap();
    assert_eq!(
        bcrypt_hash(b"correctbatteryhorsestapler", 4, salt),
        "$2y$04$EGdrhbKUv8Oc9vGiXX0HQOxSg445d458Muh7DAHskb6QbtCvdxcie"
    );
}

#[test]
fn htpasswd_is_deterministic_per_key_item_and_user() {
    let line = one("{{ Fields.username | htpasswd(Fields.password, 4) }}").unwrap();
    assert!(line.starts_with("octocat:$2y$04$"), "{line}");
    assert_eq!(line.len(), "octocat:".len() + 60);
    assert_eq!(
        one("{{ htpasswd(Fields.username, Fields.password, 4) }}").unwrap(),
        line
    );
    let other_user = one("{{ 'bob' | htpasswd(Fields.password, 4) }}").unwrap();
    assert_ne!(other_user[4..], line[8..]);
    let templates = KeyedText(BTreeMap::from([(
        "other-key".to_owned(),
        "{{ Fields.username | htpasswd(Fields.password, 4) }}".to_owned(),
    )]));
    assert_ne!(
        render(&templates, SourceItems::single(&item())).unwrap()["other-key"],
        line.as_bytes()
    );
}

#[test]
fn htpasswd_defaults_to_cost_10_and_refuses_more() {
    let line = one("{{ htpasswd('u', 'p') }}").unwrap();
    assert!(line.starts_with("u:$2y$10$"), "{line}");
    assert_eq!(
        problem("{{ htpasswd('u', Fields.password, 11) }}").1,
        TemplateProblem::Other("invalid operation".into())
    );
}

#[test]
fn htpasswd_is_called_a_bounded_number_of_times() {
    let calls = |n: usize| {
        format!("{{% for i in range({n}) %}}{{{{ htpasswd('u', 'p', 4) }}}}{{% endfor %}}")
    };
    assert!(one(&calls(HTPASSWD_MAX_CALLS)).is_ok());
    assert_eq!(
        problem(&calls(HTPASSWD_MAX_CALLS + 1)).1,
        TemplateProblem::Other("invalid operation".into())
    );
}

#[test]
fn items_of_spec_items_are_read_by_name_with_the_same_names() {
    let mut other = item();
    other.item.title = "payments".into();
    let named = BTreeMap::from([("payments".to_owned(), other)]);
    let main = item();
    let items = SourceItems {
        main: &main,
        named: &named,
    };
    let templates = KeyedText(BTreeMap::from([(
        "out".to_owned(),
        "{{ Item.Title }}/{{ Items.payments.Item.Title }}:{{ Items.payments.Fields.username }}"
            .to_owned(),
    )]));
    let out = render(&templates, items).unwrap();
    assert_eq!(
        String::from_utf8(out["out"].clone()).unwrap(),
        format!("{}/payments:octocat", main.item.title)
    );
    // Without spec.items, `Items` is there and empty.
    assert!(one("{{ Items | length }}").unwrap() == "0");
}
