//! `spec.itemPath`: `vaults/<vault title or id>/items/<item title or id>`.

use std::fmt;

/// A parsed item path. Each part is either a Connect id or a title; which one is decided when the
/// path is resolved against Connect's listings (see [`crate::resolve`]).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ItemPath {
    pub vault: String,
    pub item: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{path:?} is not a valid item path: {reason}; expected vaults/<vault title or id>/items/<item title or id>"
)]
pub struct InvalidItemPath {
    pub path: String,
    pub reason: &'static str,
}

impl ItemPath {
    /// Parses an item path.
    ///
    /// Titles may contain `/` (the official operator's pattern `vaults/(.*)/items/(.*)` is greedy,
    /// so the vault part runs up to the last `/items/`); we keep that, but unlike it we require the
    /// path to start with `vaults/` and both parts to be non-empty and free of surrounding spaces
    /// and control characters, so a typo gives a clear error rather than a lookup of a wrong title.
    pub fn parse(path: &str) -> Result<Self, InvalidItemPath> {
        let bad = |reason| InvalidItemPath {
            path: path.to_string(),
            reason,
        };
        let rest = path
            .strip_prefix("vaults/")
            .ok_or_else(|| bad("it must start with \"vaults/\""))?;
        let at = rest
            .rfind("/items/")
            .ok_or_else(|| bad("it has no \"/items/\" part"))?;
        let (vault, item) = (&rest[..at], &rest[at + "/items/".len()..]);
        for part in [vault, item] {
            if part.is_empty() {
                return Err(bad("the vault and the item must not be empty"));
            }
            if part.trim() != part {
                return Err(bad("a part starts or ends with white space"));
            }
            if part.starts_with('/') {
                return Err(bad("a part starts with \"/\""));
            }
            if part.chars().any(char::is_control) {
                return Err(bad("it contains control characters"));
            }
        }
        Ok(ItemPath {
            vault: vault.to_string(),
            item: item.to_string(),
        })
    }
}

impl fmt::Display for ItemPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vaults/{}/items/{}", self.vault, self.item)
    }
}

impl fmt::Debug for ItemPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ItemPath({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_titles_and_ids() {
        let cases = [
            ("vaults/Prod/items/db", "Prod", "db"),
            (
                "vaults/ionaiwtdvgclrixbt6ztpqcxnq/items/p7eflcy7f5mk7vg6zrzf5rjjyu",
                "ionaiwtdvgclrixbt6ztpqcxnq",
                "p7eflcy7f5mk7vg6zrzf5rjjyu",
            ),
            (
                "vaults/My Vault/items/Postgres admin",
                "My Vault",
                "Postgres admin",
            ),
            ("vaults/team/a/items/x/y", "team/a", "x/y"),
            ("vaults/a/items/b/items/c", "a/items/b", "c"),
            ("vaults/Ünïcødé/items/🔑", "Ünïcødé", "🔑"),
        ];
        for (path, vault, item) in cases {
            let p = ItemPath::parse(path).unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!((p.vault.as_str(), p.item.as_str()), (vault, item), "{path}");
            assert_eq!(p.to_string(), path);
        }
    }

    #[test]
    fn rejects_malformed_paths_with_a_reason() {
        for path in [
            "",
            "vaults/",
            "vaults//items/x",
            "vaults/x/items/",
            "vault/x/items/y",
            "x/vaults/a/items/b",
            "vaults/a/item/b",
            "vaults/ a/items/b",
            "vaults/a/items/b ",
            "vaults/a\n/items/b",
            "vaults///items/a",
            "vaults/a/items//b",
        ] {
            let err = ItemPath::parse(path).expect_err(path);
            assert!(err.to_string().contains("expected vaults/"), "{err}");
        }
    }
}
