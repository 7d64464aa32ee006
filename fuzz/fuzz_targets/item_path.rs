//! `ItemPath::parse` on arbitrary text: it never panics, and what it accepts is a well-formed
//! path that prints back as the input, parses again to the same value and passes the CRD's
//! pattern (so a path that skips the schema, e.g. in a Deployment annotation, is no looser).

#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use onepassword_secrets_operator::connect::ItemPath;
use onepassword_secrets_operator::crd::ITEM_PATH_PATTERN;

static PATTERN: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(ITEM_PATH_PATTERN).expect("the CRD's pattern compiles"));

fuzz_target!(|data: &[u8]| {
    // Lossy, so that invalid UTF-8 still reaches the parser as text with U+FFFD in it.
    let path = String::from_utf8_lossy(data);
    let parsed = match ItemPath::parse(&path) {
        Ok(parsed) => parsed,
        Err(err) => {
            // The error names the path it refuses and says what is expected.
            assert_eq!(err.path, path);
            assert!(err.to_string().contains("expected vaults/"), "{err}");
            return;
        }
    };

    // Both parts are what the parser promises: not empty, no white space at either end, no
    // leading `/`, no control character.
    for part in [&parsed.vault, &parsed.item] {
        assert!(!part.is_empty(), "{parsed:?}");
        assert_eq!(part.trim(), part.as_str(), "{parsed:?}");
        assert!(!part.starts_with('/'), "{parsed:?}");
        assert!(!part.chars().any(char::is_control), "{parsed:?}");
    }
    // The vault runs up to the last `/items/`, so the item holds no `/items/` of its own.
    assert!(!parsed.item.contains("/items/"), "{parsed:?}");

    // The display form is the input, and parses to the same value.
    let printed = parsed.to_string();
    assert_eq!(printed, path);
    assert_eq!(ItemPath::parse(&printed).as_ref(), Ok(&parsed));

    // The API server would have let it through too.
    assert!(
        PATTERN.is_match(&path),
        "{path:?} is parsed but fails the CRD pattern"
    );
});
