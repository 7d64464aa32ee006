//! How an item path's titles and ids map to a vault and an item: the official operator's rules,
//! as pure functions over a vault list and an item listing.

use super::{
    ConnectError,
    model::{ItemSummary, Vault, is_valid_id, oldest},
};

/// Two optional notes as one.
pub fn join_notes(a: Option<String>, b: Option<String>) -> Option<String> {
    match (a, b) {
        (Some(a), Some(b)) => Some(format!("{a}; {b}")),
        (a, b) => a.or(b),
    }
}

/// Whether two titles are equal under Unicode simple case folding, as Go's `strings.EqualFold`
/// compares them (each character against the other's lower- and upper-case mapping).
pub fn titles_equal_ignoring_case(a: &str, b: &str) -> bool {
    let fold = |c: char| {
        (
            c.to_lowercase().collect::<String>(),
            c.to_uppercase().collect::<String>(),
        )
    };
    a.chars().count() == b.chars().count()
        && a.chars().zip(b.chars()).all(|(x, y)| {
            x == y || {
                let ((xl, xu), (yl, yu)) = (fold(x), fold(y));
                xl == yl || xu == yu
            }
        })
}

/// The vault a path's vault part names:
/// 1. an id-shaped reference (26 characters of `[a-z0-9]`) that is the id of a listed vault is
///    that vault, whatever other vaults are titled: a vault titled with another vault's id
///    cannot stand in for it (the official operator tries titles first; we differ on purpose,
///    so that an id in an item path or a vault policy always means that vault);
/// 2. otherwise the vaults whose title matches ignoring case, as the official operator matches
///    them (`strings.EqualFold` in `pkg/onepassword/client/connect/connect.go`, v1.12.0), the
///    oldest when several do (`getVaultID` in `pkg/onepassword/items.go`);
/// 3. otherwise an id-shaped reference is used as an id (a vault the listing does not show;
///    Connect answers for it when the item is read).
pub fn resolve_vault(
    vaults: &[Vault],
    vault: &str,
) -> Result<(String, Option<String>), ConnectError> {
    if is_valid_id(vault) && vaults.iter().any(|v| v.id == vault) {
        return Ok((vault.to_string(), None));
    }
    let matches: Vec<&Vault> = vaults
        .iter()
        .filter(|v| titles_equal_ignoring_case(&v.name, vault))
        .collect();
    if let Some(oldest) = oldest(
        matches.iter().copied(),
        |v| v.created_at.as_deref(),
        |v| &v.id,
    ) {
        let note = (matches.len() > 1).then(|| {
            format!(
                "{} vaults are titled {vault:?} (ignoring case); using the oldest, {}",
                matches.len(),
                oldest.id
            )
        });
        return Ok((oldest.id.clone(), note));
    }
    if is_valid_id(vault) {
        return Ok((vault.to_string(), None));
    }
    Err(ConnectError::VaultNotFound {
        message: format!("no vault titled {vault:?} is visible to the Connect token"),
    })
}

/// The item a path's item part names in a vault listing: an id-shaped string that is an item's
/// id first, then exact, case-sensitive title matches (the oldest when several). The official
/// operator does the same: `GetOnePasswordItemByPath` in `pkg/onepassword/items.go` (v1.12.0)
/// tries an id-shaped string as an id, then asks Connect for `title eq "<title>"`, which Connect
/// matches case-sensitively, and keeps the oldest.
pub fn resolve_item<'a>(
    items: &'a [ItemSummary],
    vault_id: &str,
    item: &str,
) -> Result<(&'a ItemSummary, Option<String>), ConnectError> {
    if is_valid_id(item)
        && let Some(found) = items.iter().find(|i| i.id == item)
    {
        return Ok((found, None));
    }
    let matches: Vec<&ItemSummary> = items.iter().filter(|i| i.title == item).collect();
    let Some(chosen) = oldest(
        matches.iter().copied(),
        |i| i.created_at.as_deref(),
        |i| &i.id,
    ) else {
        return Err(ConnectError::ItemNotFound {
            message: format!("no item with id or title {item:?} in vault {vault_id}"),
        });
    };
    let note = (matches.len() > 1).then(|| {
        format!(
            "{} items are titled {item:?} in vault {vault_id}; using the oldest, {}",
            matches.len(),
            chosen.id
        )
    });
    Ok((chosen, note))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::VaultRef;

    fn vault(id: &str, name: &str, created: &str) -> Vault {
        Vault {
            id: id.into(),
            name: name.into(),
            created_at: Some(created.into()),
            ..Default::default()
        }
    }

    fn item(id: &str, title: &str, created: &str, version: u64) -> ItemSummary {
        ItemSummary {
            id: id.into(),
            title: title.into(),
            vault: VaultRef { id: "v".into() },
            version,
            created_at: Some(created.into()),
            ..Default::default()
        }
    }

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccc";

    #[test]
    fn vault_titles_match_ignoring_case_and_the_oldest_of_duplicates_is_chosen() {
        let vaults = [
            vault(A, "Prod", "2024-03-01T00:00:00Z"),
            vault(B, "Prod", "2023-01-01T00:00:00Z"),
            vault(C, "Dev", "2022-01-01T00:00:00Z"),
        ];
        let (id, note) = resolve_vault(&vaults, "Prod").unwrap();
        assert_eq!(id, B);
        assert!(note.unwrap().contains("2 vaults are titled \"Prod\""));
        assert_eq!(
            resolve_vault(&vaults, "Dev").unwrap(),
            (C.to_string(), None)
        );
        // Titles match ignoring case, as the official operator compares them (EqualFold).
        assert_eq!(resolve_vault(&vaults, "prod").unwrap().0, B);
        assert_eq!(resolve_vault(&vaults, "DEV").unwrap().0, C);
        // An id-shaped string that is no title is used as an id, even if not listed.
        let other = "dddddddddddddddddddddddddd";
        assert_eq!(resolve_vault(&vaults, other).unwrap().0, other);
        let err = resolve_vault(&vaults, "Staging").unwrap_err();
        assert_eq!(err.reason(), "VaultNotFound");
    }

    #[test]
    fn the_official_e2e_mixed_case_vault_reference_resolves() {
        // test/e2e/manifests/secret-vault-case.yaml of the official operator.
        let vaults = [vault(
            A,
            "operator-acceptance-tests",
            "2024-01-01T00:00:00Z",
        )];
        assert_eq!(
            resolve_vault(&vaults, "Operator-Acceptance-Tests").unwrap(),
            (A.to_string(), None)
        );
    }

    #[test]
    fn a_vault_titled_with_another_vaults_id_cannot_stand_in_for_it() {
        // The impostor is older, so a title-first rule would pick it.
        let vaults = [
            vault(B, A, "2020-01-01T00:00:00Z"),
            vault(A, "Payments", "2024-01-01T00:00:00Z"),
        ];
        assert_eq!(resolve_vault(&vaults, A).unwrap(), (A.to_string(), None));
        // With no vault of that id listed, the title is what the reference names.
        let only_impostor = [vault(B, A, "2020-01-01T00:00:00Z")];
        assert_eq!(resolve_vault(&only_impostor, A).unwrap().0, B);
    }

    #[test]
    fn case_folding_is_per_character_like_go_equal_fold() {
        assert!(titles_equal_ignoring_case("Prod", "pROD"));
        assert!(titles_equal_ignoring_case("Ünïcode", "üNÏCODE"));
        assert!(titles_equal_ignoring_case("σ", "Σ"));
        assert!(!titles_equal_ignoring_case("straße", "STRASSE"));
        assert!(!titles_equal_ignoring_case("prod", "prod "));
        assert!(!titles_equal_ignoring_case("prod", "prd"));
    }

    #[test]
    fn item_id_then_title_then_oldest_duplicate() {
        let items = [
            item(A, "db", "2024-01-02T00:00:00Z", 3),
            item(B, "db", "2024-01-01T00:00:00Z", 7),
            item(C, A, "2020-01-01T00:00:00Z", 1),
        ];
        // An id wins even when another item is titled with that id.
        assert_eq!(resolve_item(&items, "v", A).unwrap().0.id, A);
        let (chosen, note) = resolve_item(&items, "v", "db").unwrap();
        assert_eq!((chosen.id.as_str(), chosen.version), (B, 7));
        assert!(note.unwrap().contains("using the oldest"));
        assert_eq!(
            resolve_item(&items, "v", "nope").unwrap_err().reason(),
            "ItemNotFound"
        );
        // An id-shaped string that is not an id falls back to the titles.
        let missing = "zzzzzzzzzzzzzzzzzzzzzzzzzz";
        assert!(resolve_item(&items, "v", missing).is_err());
    }
}
