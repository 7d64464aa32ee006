//! Wire types of the 1Password Connect REST API (`connect-openapi.yaml`, spec 1.7.1).
//!
//! Only what the operator and the simulator need is modelled; unknown JSON members are ignored on
//! input. Every type that can carry a secret value (`Field`, `File`, `FullItem`) has a hand-written
//! `Debug` that prints labels and ids but never values or file content.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Connect ids are 26 characters of `[a-z0-9]`.
pub fn is_valid_id(s: &str) -> bool {
    s.len() == 26
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The oldest candidate by `createdAt` (RFC 3339); ties and missing dates fall back to the id,
/// so the choice is stable from one call to the next. The official operator picks the oldest
/// when several vaults or items share a title.
pub fn oldest<'a, T: 'a>(
    candidates: impl IntoIterator<Item = &'a T>,
    created_at: impl Fn(&T) -> Option<&str>,
    id: impl Fn(&T) -> &str,
) -> Option<&'a T> {
    candidates.into_iter().min_by_key(|t| {
        let ts = created_at(t).and_then(|s| s.parse::<jiff::Timestamp>().ok());
        // Candidates without a date sort after dated ones.
        (ts.is_none(), ts, id(t).to_string())
    })
}

/// `{ "status": 404, "message": "item … not found" }`
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub message: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Vault {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default)]
    pub attribute_version: u64,
    #[serde(default)]
    pub content_version: u64,
    #[serde(default)]
    pub items: u64,
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub vault_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaultRef {
    pub id: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionRef {
    #[serde(default)]
    pub id: String,
}

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemUrl {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub label: String,
    #[serde(default)]
    pub primary: bool,
    pub href: String,
}

impl fmt::Debug for ItemUrl {
    // URLs can embed credentials (`https://user:pass@host`), so the href is not printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ItemUrl")
            .field("label", &self.label)
            .field("primary", &self.primary)
            .field("href", &"<redacted>")
            .finish()
    }
}

/// An item as returned by `GET /v1/vaults/{id}/items` (no fields, no values).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemSummary {
    pub id: String,
    #[serde(default)]
    pub title: String,
    pub vault: VaultRef,
    #[serde(default)]
    pub category: String,
    #[serde(default)]
    pub version: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Section {
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section: Option<SectionRef>,
    #[serde(default, rename = "type")]
    pub field_type: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub purpose: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// One-time-password fields carry the current code here; never used for Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totp: Option<String>,
}

impl fmt::Debug for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Field")
            .field("id", &self.id)
            .field("section", &self.section)
            .field("type", &self.field_type)
            .field("purpose", &self.purpose)
            .field("label", &self.label)
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct File {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub content_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section: Option<SectionRef>,
    /// Base64 content, present only with `inline_files=true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

impl fmt::Debug for File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("File")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("size", &self.size)
            .field("content_path", &self.content_path)
            .field("content", &self.content.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A full item, `GET /v1/vaults/{vault}/items/{item}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FullItem {
    pub id: String,
    #[serde(default)]
    pub title: String,
    pub vault: VaultRef,
    #[serde(default)]
    pub category: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<ItemUrl>,
    #[serde(default)]
    pub favorite: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default)]
    pub version: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_edited_by: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sections: Vec<Section>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<Field>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<File>,
}

impl FullItem {
    /// The listing view of this item.
    pub fn summary(&self) -> ItemSummary {
        ItemSummary {
            id: self.id.clone(),
            title: self.title.clone(),
            vault: self.vault.clone(),
            category: self.category.clone(),
            version: self.version,
            tags: self.tags.clone(),
            state: self.state.clone(),
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
        }
    }
}

/// An item with the content of each of its files, ready to be turned into a Secret.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ItemWithFiles {
    pub item: FullItem,
    /// File contents in the order of `item.files`.
    pub files: Vec<FileContent>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct FileContent {
    pub id: String,
    pub name: String,
    pub content: Vec<u8>,
}

impl fmt::Debug for FileContent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileContent")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("len", &self.content.len())
            .finish()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceDependency {
    #[serde(default)]
    pub service: String,
    #[serde(default)]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub dependencies: Vec<ServiceDependency>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_26_lowercase_alphanumerics() {
        assert!(is_valid_id("ionaiwtdvgclrixbt6ztpqcxnq"));
        assert!(!is_valid_id("IONAIWTDVGCLRIXBT6ZTPQCXNQ"));
        assert!(!is_valid_id("ionaiwtdvgclrixbt6ztpqcxn"));
        assert!(!is_valid_id("ionaiwtdvgclrixbt6ztpqcx-q"));
    }

    #[test]
    fn oldest_uses_created_at_then_id() {
        let items = [
            ("b", Some("2024-01-02T00:00:00Z")),
            ("a", None),
            ("c", Some("2024-01-01T00:00:00+01:00")),
            ("d", Some("2024-01-01T00:00:00Z")),
        ];
        let got = oldest(&items, |i| i.1, |i| i.0).unwrap();
        assert_eq!(got.0, "c");
    }

    #[test]
    fn debug_of_an_item_never_shows_values_or_file_content() {
        let item = FullItem {
            id: "p7eflcy7f5mk7vg6zrzf5rjjyu".into(),
            title: "db".into(),
            vault: VaultRef {
                id: "ionaiwtdvgclrixbt6ztpqcxnq".into(),
            },
            urls: vec![ItemUrl {
                label: "website".into(),
                primary: true,
                href: "https://admin:hunter2-url@db.example".into(),
            }],
            fields: vec![Field {
                id: "password".into(),
                label: "password".into(),
                field_type: "CONCEALED".into(),
                value: Some("hunter2-field".into()),
                ..Default::default()
            }],
            files: vec![File {
                id: "6r65pjq33banznomn7q22sj44e".into(),
                name: "key.pem".into(),
                content: Some("aHVudGVyMi1maWxl".into()),
                ..Default::default()
            }],
            ..Default::default()
        };
        let with_files = ItemWithFiles {
            item,
            files: vec![FileContent {
                id: "6r65pjq33banznomn7q22sj44e".into(),
                name: "key.pem".into(),
                content: b"hunter2-file".to_vec(),
            }],
        };
        let printed = format!("{with_files:?} {with_files:#?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("aHVudGVyMi1maWxl"), "{printed}");
        assert!(printed.contains("password") && printed.contains("key.pem"));
    }
}
