//! The official operator's way to find an item: title lookups with a SCIM filter, one path at a
//! time (`GetOnePasswordItemByPath` in `pkg/onepassword/items.go`, v1.12.0).
//!
//! The operator does not use it: it resolves every path against the catalog's listings, which
//! cost one request per vault per poll whatever the number of items. It is kept, behind the
//! `title-lookup` feature that only the tests turn on, because the client tests drive title
//! resolution, id lookups and file fetching over real HTTP through it.

use super::{
    client::{ConnectClient, segment},
    endpoint::Endpoint,
    error::ConnectError,
    model::{ItemSummary, ItemWithFiles, Vault, is_valid_id},
    path::ItemPath,
    resolve::{join_notes, resolve_item, resolve_vault, titles_equal_ignoring_case},
};

/// Where a title path resolved to, and what the user should know about how it was chosen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub vault_id: String,
    pub item_id: String,
    /// Set when a title matched several vaults or items and the oldest was chosen, as the
    /// official operator does.
    pub note: Option<String>,
}

impl ConnectClient {
    /// Vaults whose name is `title` ignoring case, as the official operator matches them
    /// (`strings.EqualFold` in `pkg/onepassword/client/connect/connect.go`, v1.12.0).
    pub async fn vaults_by_title(&self, title: &str) -> Result<Vec<Vault>, ConnectError> {
        let filter = title_filter(title);
        let vaults: Vec<Vault> = self
            .get_list(Endpoint::ListVaults, "v1/vaults", &[("filter", &filter)])
            .await?;
        Ok(vaults
            .into_iter()
            .filter(|v| titles_equal_ignoring_case(&v.name, title))
            .collect())
    }

    /// Items of a vault whose title is exactly `title`.
    pub async fn items_by_title(
        &self,
        vault_id: &str,
        title: &str,
    ) -> Result<Vec<ItemSummary>, ConnectError> {
        let path = format!("v1/vaults/{}/items", segment(vault_id));
        let filter = title_filter(title);
        let items: Vec<ItemSummary> = self
            .get_list(Endpoint::ListItems, &path, &[("filter", &filter)])
            .await?;
        Ok(items.into_iter().filter(|i| i.title == title).collect())
    }

    /// Resolves a path and fetches the item with its files, with the official operator's
    /// requests: a title lookup of the vault (then the string as an id), then the item by id if
    /// it looks like one (one request; a title lookup if Connect has no such item), else by
    /// title. Unlike the official operator, an error other than "not found" (bad token, Connect
    /// down) is returned as is instead of being retried as a title.
    pub async fn fetch_by_path(
        &self,
        path: &ItemPath,
    ) -> Result<(Resolved, ItemWithFiles), ConnectError> {
        let vaults = self.vaults_by_title(&path.vault).await?;
        let (vault_id, vault_note) = resolve_vault(&vaults, &path.vault)?;
        if is_valid_id(&path.item) {
            match self.get_item(&vault_id, &path.item).await {
                Ok(item) => {
                    let resolved = Resolved {
                        vault_id,
                        item_id: item.id.clone(),
                        note: vault_note,
                    };
                    return Ok((resolved, self.with_files(item).await?));
                }
                Err(ConnectError::ItemNotFound { .. } | ConnectError::BadRequest { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let items = self.items_by_title(&vault_id, &path.item).await?;
        let (chosen, item_note) = resolve_item(&items, &vault_id, &path.item)?;
        let item = self.fetch_item(&vault_id, &chosen.id).await?;
        let resolved = Resolved {
            vault_id,
            item_id: chosen.id.clone(),
            note: join_notes(vault_note, item_note),
        };
        Ok((resolved, item))
    }
}

/// A SCIM `title eq "…"` filter, with `\` and `"` escaped.
fn title_filter(title: &str) -> String {
    let escaped = title.replace('\\', "\\\\").replace('"', "\\\"");
    format!("title eq \"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn title_filter_escapes_quotes() {
        assert_eq!(title_filter("db"), r#"title eq "db""#);
        assert_eq!(title_filter(r#"a "b" \c"#), r#"title eq "a \"b\" \\c""#);
    }
}
