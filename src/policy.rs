//! The vault policy: which namespaces may read which vaults.
//!
//! One Connect token usually reaches many vaults, and without a policy any namespace that can
//! create a OnePasswordItem can copy any of them into a Secret it can read. The policy is a
//! file (`VAULT_POLICY_FILE`, a ConfigMap in the Helm chart) of rules; when it is set, a
//! namespace may read a vault only if some rule lists both. Everything else is denied.
//!
//! ```yaml
//! rules:
//!   - namespaces: [payments, "payments-*"]   # names, `prefix*` globs, or "*"
//!     vaults: [Payments, 4ymzpiwdmqvwbcjmujyvqzkuxu]   # vault names or ids, or "*"
//!   - namespaces: ["*"]
//!     vaults: [Shared]
//! ```
//!
//! The check is made against the vault an item path resolved to (its id and its real title),
//! never against the text of the path. Vault names are compared exactly; an exact pattern
//! shaped like an id (26 characters of `[a-z0-9]`) matches only the vault with that id, never
//! a vault titled that way. Ids never change when a vault is renamed, so they are the safer
//! choice.

use std::{fmt, path::Path};

use serde::Deserialize;

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultPolicy {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    namespaces: Vec<Pattern>,
    vaults: Vec<Pattern>,
}

/// `*` (anything), `prefix*`, or an exact name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
struct Pattern(String);

impl TryFrom<String> for Pattern {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let star = s.find('*');
        if s.is_empty() {
            return Err("an empty pattern matches nothing; remove it".into());
        }
        if star.is_some_and(|i| i != s.len() - 1) {
            return Err(format!(
                "{s:?}: `*` may only end a pattern (`*` or `prefix*`)"
            ));
        }
        Ok(Pattern(s))
    }
}

impl Pattern {
    /// An exact pattern shaped like a 1Password id (26 characters of `[a-z0-9]`).
    fn is_id(&self) -> bool {
        crate::connect::model::is_valid_id(&self.0)
    }

    fn matches(&self, value: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => value.starts_with(prefix),
            None => self.0 == value,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read the vault policy {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the vault policy {path} is not valid: {message}")]
    Invalid { path: String, message: String },
}

/// Why a namespace may not read a vault; the text goes into the item's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub namespace: String,
    pub vault: String,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the vault policy does not allow namespace {:?} to read vault {}; \
             ask the operator's administrators to add a rule",
            self.namespace, self.vault
        )
    }
}

impl VaultPolicy {
    /// Reads and checks the policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|message| PolicyError::Invalid {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let policy: VaultPolicy = serde_saphyr::from_str(text).map_err(|e| e.to_string())?;
        for (i, rule) in policy.rules.iter().enumerate() {
            if rule.namespaces.is_empty() || rule.vaults.is_empty() {
                return Err(format!(
                    "rule {} lists no namespaces or no vaults, so it allows nothing",
                    i + 1
                ));
            }
        }
        Ok(policy)
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// Whether `namespace` may read the vault with this id (and name, when known).
    pub fn check(
        &self,
        namespace: &str,
        vault_id: &str,
        vault_name: Option<&str>,
    ) -> Result<(), Denied> {
        // An exact id-shaped pattern names a vault by id only: a vault someone titled with
        // another vault's id must not pass as that vault.
        let vault_matches = |p: &Pattern| {
            p.matches(vault_id) || (!p.is_id() && vault_name.is_some_and(|n| p.matches(n)))
        };
        let allowed = self.rules.iter().any(|r| {
            r.namespaces.iter().any(|p| p.matches(namespace)) && r.vaults.iter().any(vault_matches)
        });
        if allowed {
            return Ok(());
        }
        Err(Denied {
            namespace: namespace.to_string(),
            vault: match vault_name {
                Some(name) => format!("{name:?} ({vault_id})"),
                None => vault_id.to_string(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
rules:
  - namespaces: [payments, "payments-*"]
    vaults: [Payments, vaultid00000000000000000000]
  - namespaces: ["*"]
    vaults: [Shared]
  - namespaces: [platform]
    vaults: ["*"]
"#;

    fn policy() -> VaultPolicy {
        VaultPolicy::parse(POLICY).unwrap()
    }

    #[test]
    fn a_namespace_reads_the_vaults_its_rules_list_by_name_or_id() {
        let p = policy();
        assert!(p.check("payments", "v-pay", Some("Payments")).is_ok());
        assert!(p.check("payments-eu", "v-pay", Some("Payments")).is_ok());
        assert!(
            p.check("payments", "vaultid00000000000000000000", None)
                .is_ok()
        );
        assert!(p.check("anyone", "v-shared", Some("Shared")).is_ok());
        assert!(p.check("platform", "v-any", Some("Anything")).is_ok());
    }

    #[test]
    fn anything_not_listed_is_denied() {
        let p = policy();
        let denied = p.check("web", "v-pay", Some("Payments")).unwrap_err();
        assert_eq!(denied.namespace, "web");
        assert!(denied.to_string().contains("\"Payments\" (v-pay)"));
        // A prefix glob is a prefix, not a substring; names are exact.
        assert!(p.check("my-payments", "v-pay", Some("Payments")).is_err());
        assert!(p.check("payments", "v-pay", Some("payments")).is_err());
        assert!(p.check("payments", "v-pay", None).is_err());
        // An empty rule list denies everything.
        let none = VaultPolicy::parse("rules: []").unwrap();
        assert!(none.check("platform", "v", Some("Shared")).is_err());
    }

    #[test]
    fn an_id_pattern_matches_the_vault_with_that_id_and_never_a_vault_titled_so() {
        let id = "4ymzpiwdmqvwbcjmujyvqzkuxu";
        let p = VaultPolicy::parse(&format!(
            "rules:\n  - namespaces: [team-a]\n    vaults: [{id}]\n"
        ))
        .unwrap();
        assert!(p.check("team-a", id, Some("Payments")).is_ok());
        assert!(p.check("team-a", id, None).is_ok());
        let impostor = "zzzzzzzzzzzzzzzzzzzzzzzzzz";
        assert!(p.check("team-a", impostor, Some(id)).is_err());
    }

    #[test]
    fn invalid_policies_are_refused_with_the_reason() {
        for (text, why) in [
            (
                "rules:\n  - namespaces: [a]\n    vaults: []\n",
                "allows nothing",
            ),
            (
                "rules:\n  - namespaces: [\"a*b\"]\n    vaults: [x]\n",
                "may only end",
            ),
            (
                "rules:\n  - namespaces: [\"\"]\n    vaults: [x]\n",
                "empty pattern",
            ),
            (
                "rules:\n  - namespace: [a]\n    vaults: [x]\n",
                "unknown field",
            ),
            ("allow: everything\n", "unknown field"),
            ("rules: nope\n", "expected sequence"),
        ] {
            let e = VaultPolicy::parse(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let e = VaultPolicy::load(Path::new("/nonexistent/policy.yaml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/policy.yaml"));
    }
}
