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

/// The vault a path's vault part names: exact title matches first (the oldest when several),
/// then an id-shaped string as an id, as the official operator does.
pub fn resolve_vault(
    vaults: &[Vault],
    vault: &str,
) -> Result<(String, Option<String>), ConnectError> {
    let matches: Vec<&Vault> = vaults.iter().filter(|v| v.name == vault).collect();
    if let Some(oldest) = oldest(
        matches.iter().copied(),
        |v| v.created_at.as_deref(),
        |v| &v.id,
    ) {
        let note = (matches.len() > 1).then(|| {
            format!(
                "{} vaults are titled {vault:?}; using the oldest, {}",
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
/// id first, then exact title matches (the oldest when several).
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
    use crate::connect::model::VaultRef;

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
    fn vault_title_wins_over_an_id_and_the_oldest_of_duplicates_is_chosen() {
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
        // Titles match exactly, as the official operator compares them.
        assert!(resolve_vault(&vaults, "prod").is_err());
        // An id-shaped string that is no title is used as an id, even if not listed.
        let other = "dddddddddddddddddddddddddd";
        assert_eq!(resolve_vault(&vaults, other).unwrap().0, other);
        let err = resolve_vault(&vaults, "Staging").unwrap_err();
        assert_eq!(err.reason(), "VaultNotFound");
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
