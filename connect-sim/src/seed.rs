//! What a simulator starts with: vaults, items and tokens, built in code or read from YAML/JSON.
//!
//! ```yaml
//! vaults:
//!   - name: Demo                      # required; `id` (26 chars of [a-z0-9]) and `description` optional
//!     items:
//!       - title: db                   # required; `id` optional
//!         category: LOGIN             # default LOGIN
//!         tags: [backend]
//!         urls: [{ href: "https://db.example", label: website, primary: true }]
//!         sections: [{ label: connection }]   # optional: a field's `section` creates it too
//!         fields:
//!           - { label: username, value: admin, purpose: USERNAME }
//!           - { label: password, value: s3cret, purpose: PASSWORD }   # type defaults to CONCEALED
//!           - { label: port, value: "5432", section: connection }    # type defaults to STRING
//!         files:
//!           - { name: ca.pem, content: "text content" }
//!           - { name: blob.bin, base64: "AAEC" }
//! tokens:                             # token -> vault names or ids, or "*" for every vault
//!   tok-demo: [Demo]
//!   tok-all: "*"
//! ```

use std::{collections::BTreeMap, fmt, path::Path};

use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::store::{SimError, Store, TokenAccess, new_id, section_id};
use onepassword_connect::model::{Field, File, FullItem, ItemUrl, Section, SectionRef};

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("cannot read the seed file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the seed is not valid YAML/JSON for a simulator seed: {0}")]
    Parse(String),
    #[error("in the seed, {context}: {error}")]
    Invalid { context: String, error: SimError },
}

/// The whole seed. See the module documentation for the file format.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vaults: Vec<VaultSpec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tokens: BTreeMap<String, TokenAccess>,
}

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Seed")
            .field("vaults", &self.vaults)
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl Seed {
    pub fn new() -> Self {
        Seed::default()
    }

    pub fn vault(mut self, vault: VaultSpec) -> Self {
        self.vaults.push(vault);
        self
    }

    pub fn token(mut self, token: impl Into<String>, access: TokenAccess) -> Self {
        self.tokens.insert(token.into(), access);
        self
    }

    /// Parses YAML (or JSON, which YAML reads too).
    pub fn from_yaml_str(text: &str) -> Result<Self, SeedError> {
        serde_saphyr::from_str(text).map_err(|e| SeedError::Parse(e.to_string()))
    }

    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, SeedError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| SeedError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml_str(&text)
    }

    /// Adds the seed's vaults, items and tokens to a store.
    pub fn apply(&self, store: &mut Store) -> Result<(), SeedError> {
        for vault in &self.vaults {
            let invalid = |error| SeedError::Invalid {
                context: format!("vault {:?}", vault.name),
                error,
            };
            let id = store
                .add_vault(&vault.name, vault.id.as_deref(), &vault.description)
                .map_err(invalid)?
                .id;
            for item in &vault.items {
                item.to_full_item()
                    .and_then(|full| store.put_item(&id, full))
                    .map_err(|error| SeedError::Invalid {
                        context: format!("vault {:?}, item {:?}", vault.name, item.title),
                        error,
                    })?;
            }
        }
        for (token, access) in &self.tokens {
            store
                .add_token(token, access)
                .map_err(|error| SeedError::Invalid {
                    context: "tokens".into(),
                    error,
                })?;
        }
        Ok(())
    }
}

impl Serialize for TokenAccess {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TokenAccess::All => s.serialize_str("*"),
            TokenAccess::Vaults(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for TokenAccess {
    /// `"*"`, one vault name, or a list of vault names or ids.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::One(s) if s == "*" => TokenAccess::All,
            Raw::One(s) => TokenAccess::Vaults(vec![s]),
            Raw::Many(v) => TokenAccess::Vaults(v),
        })
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<ItemSpec>,
}

impl VaultSpec {
    pub fn new(name: impl Into<String>) -> Self {
        VaultSpec {
            name: name.into(),
            ..Default::default()
        }
    }

    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    pub fn item(mut self, item: ItemSpec) -> Self {
        self.items.push(item);
        self
    }
}

/// An item as a user writes it: sections and fields refer to sections by label, files carry
/// their content. Also a builder: `ItemSpec::new("db").username("admin").password("s3cret")`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ItemSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub title: String,
    #[serde(default = "default_category")]
    pub category: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<UrlSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sections: Vec<SectionSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileSpec>,
    /// RFC 3339; now when not given. Lets a test decide which of two same-titled items is older.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

fn default_category() -> String {
    "LOGIN".into()
}

impl Default for ItemSpec {
    fn default() -> Self {
        ItemSpec {
            id: None,
            title: String::new(),
            category: default_category(),
            tags: Vec::new(),
            urls: Vec::new(),
            sections: Vec::new(),
            fields: Vec::new(),
            files: Vec::new(),
            created_at: None,
        }
    }
}

#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlSpec {
    pub href: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub label: String,
    #[serde(default)]
    pub primary: bool,
}

impl fmt::Debug for UrlSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UrlSpec")
            .field("label", &self.label)
            .field("primary", &self.primary)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SectionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub label: String,
}

#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub label: String,
    #[serde(default)]
    pub value: String,
    /// `STRING`, `CONCEALED`, `EMAIL`, `URL`, `OTP`, …; defaults to `CONCEALED` for a password,
    /// else `STRING`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub field_type: Option<String>,
    /// `USERNAME`, `PASSWORD` or `NOTES`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub purpose: String,
    /// The label (or id) of the item's section this field is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section: Option<String>,
}

impl fmt::Debug for FieldSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FieldSpec")
            .field("label", &self.label)
            .field("type", &self.field_type)
            .field("purpose", &self.purpose)
            .field("section", &self.section)
            .finish_non_exhaustive()
    }
}

impl FieldSpec {
    pub fn new(label: impl Into<String>, value: impl Into<String>) -> Self {
        FieldSpec {
            label: label.into(),
            value: value.into(),
            ..Default::default()
        }
    }

    pub fn field_type(mut self, field_type: impl Into<String>) -> Self {
        self.field_type = Some(field_type.into());
        self
    }

    pub fn purpose(mut self, purpose: impl Into<String>) -> Self {
        self.purpose = purpose.into();
        self
    }

    pub fn section(mut self, section: impl Into<String>) -> Self {
        self.section = Some(section.into());
        self
    }

    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

/// A file: its content as text (`content`) or as base64 (`base64`); empty when neither.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section: Option<String>,
}

impl fmt::Debug for FileSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileSpec")
            .field("name", &self.name)
            .field("section", &self.section)
            .finish_non_exhaustive()
    }
}

impl FileSpec {
    pub fn new(name: impl Into<String>, content: impl AsRef<[u8]>) -> Self {
        FileSpec {
            name: name.into(),
            base64: Some(base64::engine::general_purpose::STANDARD.encode(content)),
            ..Default::default()
        }
    }
}

impl ItemSpec {
    pub fn new(title: impl Into<String>) -> Self {
        ItemSpec {
            title: title.into(),
            ..Default::default()
        }
    }

    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    pub fn category(mut self, category: impl Into<String>) -> Self {
        self.category = category.into();
        self
    }

    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    pub fn url(mut self, label: impl Into<String>, href: impl Into<String>, primary: bool) -> Self {
        self.urls.push(UrlSpec {
            href: href.into(),
            label: label.into(),
            primary,
        });
        self
    }

    pub fn section(mut self, label: impl Into<String>) -> Self {
        self.sections.push(SectionSpec {
            id: None,
            label: label.into(),
        });
        self
    }

    /// A `STRING` field.
    pub fn field(self, label: impl Into<String>, value: impl Into<String>) -> Self {
        self.with_field(FieldSpec::new(label, value))
    }

    /// A `CONCEALED` field.
    pub fn concealed(self, label: impl Into<String>, value: impl Into<String>) -> Self {
        self.with_field(FieldSpec::new(label, value).field_type("CONCEALED"))
    }

    /// A field labelled `username` with purpose `USERNAME`.
    pub fn username(self, value: impl Into<String>) -> Self {
        self.with_field(FieldSpec::new("username", value).purpose("USERNAME"))
    }

    /// A concealed field labelled `password` with purpose `PASSWORD`.
    pub fn password(self, value: impl Into<String>) -> Self {
        self.with_field(FieldSpec::new("password", value).purpose("PASSWORD"))
    }

    /// A `STRING` field in a section (created if the item has none with that label).
    pub fn field_in(
        self,
        section: impl Into<String>,
        label: impl Into<String>,
        value: impl Into<String>,
    ) -> Self {
        self.with_field(FieldSpec::new(label, value).section(section))
    }

    pub fn with_field(mut self, field: FieldSpec) -> Self {
        self.fields.push(field);
        self
    }

    pub fn file(mut self, name: impl Into<String>, content: impl AsRef<[u8]>) -> Self {
        self.files.push(FileSpec::new(name, content));
        self
    }

    pub fn created_at(mut self, at: impl Into<String>) -> Self {
        self.created_at = Some(at.into());
        self
    }

    /// The item in Connect's shape, files carrying their content as base64 (what
    /// [`Store::put_item`] takes). Section ids are generated here so fields can point at them.
    pub fn to_full_item(&self) -> Result<FullItem, SimError> {
        let mut sections: Vec<Section> = self
            .sections
            .iter()
            .map(|s| Section {
                id: s.id.clone().unwrap_or_else(new_id),
                label: Some(s.label.clone()),
            })
            .collect();
        let mut section_ref = |reference: &Option<String>| {
            reference.as_ref().map(|r| {
                let id = section_id(&sections, r).unwrap_or_else(|| {
                    let id = new_id();
                    sections.push(Section {
                        id: id.clone(),
                        label: Some(r.clone()),
                    });
                    id
                });
                SectionRef { id }
            })
        };
        let fields = self
            .fields
            .iter()
            .map(|f| Field {
                id: f.id.clone().unwrap_or_default(),
                section: section_ref(&f.section),
                field_type: f.field_type.clone().unwrap_or_else(|| {
                    if f.purpose == "PASSWORD" {
                        "CONCEALED".into()
                    } else {
                        "STRING".into()
                    }
                }),
                purpose: f.purpose.clone(),
                label: f.label.clone(),
                value: Some(f.value.clone()),
                totp: None,
            })
            .collect();
        let mut files = Vec::with_capacity(self.files.len());
        for f in &self.files {
            let content = match (&f.content, &f.base64) {
                (Some(_), Some(_)) => return Err(SimError::AmbiguousFile(f.name.clone())),
                (Some(text), None) => base64::engine::general_purpose::STANDARD.encode(text),
                (None, Some(b64)) => b64.clone(),
                (None, None) => String::new(),
            };
            files.push(File {
                id: f.id.clone().unwrap_or_default(),
                name: f.name.clone(),
                section: section_ref(&f.section),
                content: Some(content),
                ..Default::default()
            });
        }
        Ok(FullItem {
            id: self.id.clone().unwrap_or_default(),
            title: self.title.clone(),
            category: self.category.clone(),
            urls: self
                .urls
                .iter()
                .map(|u| ItemUrl {
                    label: u.label.clone(),
                    primary: u.primary,
                    href: u.href.clone(),
                })
                .collect(),
            tags: self.tags.clone(),
            created_at: self.created_at.clone(),
            sections,
            fields,
            files,
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"
vaults:
  - name: Demo
    description: for the demo
    items:
      - title: db
        tags: [backend]
        urls: [{ href: "https://db.example", label: website, primary: true }]
        fields:
          - { label: username, value: admin, purpose: USERNAME }
          - { label: password, value: s3cret, purpose: PASSWORD }
          - { label: port, value: "5432", section: connection }
        files:
          - { name: ca.pem, content: "PEM" }
          - { name: blob.bin, base64: "AAEC" }
  - name: Other
    id: aaaaaaaaaaaaaaaaaaaaaaaaaa
tokens:
  tok-demo: [Demo]
  tok-one: Other
  tok-all: "*"
"#;

    #[test]
    fn a_yaml_seed_builds_vaults_items_and_tokens() {
        let seed = Seed::from_yaml_str(SEED).unwrap();
        let mut store = Store::new();
        seed.apply(&mut store).unwrap();

        let demo = store.vault("Demo").unwrap().clone();
        assert_eq!(demo.description, "for the demo");
        assert_eq!(
            store.vault("Other").unwrap().id,
            "aaaaaaaaaaaaaaaaaaaaaaaaaa"
        );

        let db = store.item("Demo", "db").unwrap().clone();
        assert_eq!(db.category, "LOGIN");
        assert_eq!(db.tags, ["backend"]);
        assert_eq!(db.urls[0].href, "https://db.example");
        let password = db.fields.iter().find(|f| f.label == "password").unwrap();
        assert_eq!(password.field_type, "CONCEALED");
        assert_eq!(password.value.as_deref(), Some("s3cret"));
        let port = db.fields.iter().find(|f| f.label == "port").unwrap();
        let section = port.section.as_ref().unwrap();
        assert_eq!(db.sections.len(), 1);
        assert_eq!(db.sections[0].id, section.id);
        assert_eq!(db.sections[0].label.as_deref(), Some("connection"));
        assert_eq!(port.field_type, "STRING");

        let (_, pem) = store.file(&demo.id, &db.id, &db.files[0].id).unwrap();
        assert_eq!(pem, b"PEM");
        let (_, blob) = store.file(&demo.id, &db.id, &db.files[1].id).unwrap();
        assert_eq!(blob, [0u8, 1, 2]);

        assert!(store.access("tok-demo").unwrap().allows(&demo.id));
        assert!(!store.access("tok-one").unwrap().allows(&demo.id));
        assert!(store.access("tok-all").unwrap().allows(&demo.id));
    }

    #[test]
    fn seeds_round_trip_through_yaml_and_json() {
        let seed = Seed::from_yaml_str(SEED).unwrap();
        let yaml = serde_saphyr::to_string(&seed).unwrap();
        assert_eq!(Seed::from_yaml_str(&yaml).unwrap(), seed);
        let json = serde_json::to_string(&seed).unwrap();
        assert_eq!(Seed::from_yaml_str(&json).unwrap(), seed);
    }

    #[test]
    fn mistakes_in_a_seed_are_reported() {
        assert!(matches!(
            Seed::from_yaml_str("vaults: [{ name: A, itmes: [] }]"),
            Err(SeedError::Parse(_))
        ));
        let unknown_vault = Seed::from_yaml_str("tokens: { t: [Nope] }").unwrap();
        assert!(matches!(
            unknown_vault.apply(&mut Store::new()),
            Err(SeedError::Invalid {
                error: SimError::VaultNotFound(_),
                ..
            })
        ));
        let bad_file = Seed::new().vault(VaultSpec::new("A").item(ItemSpec {
            files: vec![FileSpec {
                name: "f".into(),
                base64: Some("!!".into()),
                ..Default::default()
            }],
            ..ItemSpec::new("x")
        }));
        assert!(bad_file.apply(&mut Store::new()).is_err());
    }

    #[test]
    fn the_builder_makes_the_same_kind_of_item() {
        let seed = Seed::new()
            .vault(
                VaultSpec::new("Demo").item(
                    ItemSpec::new("db")
                        .username("admin")
                        .password("s3cret")
                        .field_in("connection", "port", "5432")
                        .file("ca.pem", "PEM")
                        .tag("backend"),
                ),
            )
            .token("t", TokenAccess::All);
        let mut store = Store::new();
        seed.apply(&mut store).unwrap();
        let db = store.item("Demo", "db").unwrap();
        assert_eq!(db.fields.len(), 3);
        assert_eq!(db.fields[0].id, "username");
        assert_eq!(db.files[0].size, 3);
    }

    #[test]
    fn debug_of_a_seed_shows_no_values_or_tokens() {
        let seed = Seed::from_yaml_str(SEED).unwrap();
        let printed = format!("{seed:?}");
        for secret in ["s3cret", "tok-demo", "PEM", "AAEC", "db.example"] {
            assert!(!printed.contains(secret), "{secret} in {printed}");
        }
    }
}
