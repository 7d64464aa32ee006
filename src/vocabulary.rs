//! The operator's vocabulary: every name it writes on, or reads from, Kubernetes objects, and
//! the one list of reasons its conditions, events and metrics speak in.
//!
//! The annotations are those of the official operator (`item-path`, `item-name`,
//! `item-version`, `auto-restart`) plus our own (`items`, `data-digest`, `secret-digests`,
//! `restarted-for`, `force-sync`, `force-synced`); all are under [`ANNOTATION_PREFIX`].

use crate::connect::ConnectError;

/// The prefix of every annotation the operator reads or writes.
pub const ANNOTATION_PREFIX: &str = "operator.1password.io";
/// On a Deployment: the item to make a Secret from. On a Secret we write:
/// `vaults/<vaultId>/items/<itemId>` of the item it was built from.
pub const ITEM_PATH_ANNOTATION: &str = "operator.1password.io/item-path";
/// On a workload (metadata or pod template): the name of the Secret made for it.
pub const ITEM_NAME_ANNOTATION: &str = "operator.1password.io/item-name";
/// On a Secret we write: the item version it holds, in decimal.
pub const ITEM_VERSION_ANNOTATION: &str = "operator.1password.io/item-version";
/// On a Secret we write from a OnePasswordItem with `spec.items`: each of those items it holds,
/// as `<name>=vaults/<vaultId>/items/<itemId>@<version>`, sorted by name and joined by `,`.
/// Absent without `spec.items` (the item-path and item-version annotations say the rest).
pub const ITEMS_ANNOTATION: &str = "operator.1password.io/items";
/// `true`/`false` on a Secret, a workload or a Namespace; the most specific one wins.
pub const AUTO_RESTART_ANNOTATION: &str = "operator.1password.io/auto-restart";
/// On a Secret we write: opaque, changes exactly when the Secret's data changes.
pub const DIGEST_ANNOTATION: &str = "operator.1password.io/data-digest";
/// On a Secret we write from a shaped OnePasswordItem: opaque, changes exactly when the shaping
/// fields of its spec change (so a new shaping rewrites the Secret though the item is the same).
pub const SHAPE_ANNOTATION: &str = "operator.1password.io/shape-digest";
/// On a workload's metadata: the last seen fingerprints of the managed Secrets it uses.
pub const SECRET_DIGESTS_ANNOTATION: &str = "operator.1password.io/secret-digests";
/// On a workload's pod template: changing it is what rolls the pods.
pub const RESTARTED_FOR_ANNOTATION: &str = "operator.1password.io/restarted-for";
/// On a workload's pod template: the official operator's restart stamp (read, never written).
pub const LAST_RESTARTED_ANNOTATION: &str = "operator.1password.io/last-restarted";
/// On a OnePasswordItem or an annotated Deployment, any value: each new value makes the
/// operator fetch the item from Connect again once, as External Secrets' `force-sync` does.
pub const FORCE_SYNC_ANNOTATION: &str = "operator.1password.io/force-sync";
/// On a Secret we write: the `force-sync` value last handled, so the same value again, a poll
/// or an operator restart fetches nothing more.
pub const FORCE_SYNCED_ANNOTATION: &str = "operator.1password.io/force-synced";
/// On a managed Secret, set by a person: restarts blocked by a failed rollout go on for the
/// change whose fingerprint this is (the `RolloutBlocked` event gives the exact command).
pub const RESUME_RESTARTS_ANNOTATION: &str = "operator.1password.io/resume-restarts";

/// Label on every Secret the operator manages. It proves nothing (ownership is by owner
/// reference); it only narrows our Secret watches.
pub const MANAGED_LABEL: &str = "operator.1password.io/managed-by";
pub const MANAGED_VALUE: &str = "onepassword-secrets-operator";

/// The one field manager of every write the operator makes (and the events' reporter).
pub const FIELD_MANAGER: &str = "onepassword-secrets-operator";

/// Items with this tag are not updated once their Secret exists (official operator behaviour).
pub const IGNORE_TAG: &str = "operator.1password.io:ignore-secret";

/// Go's `strconv.ParseBool` after lower-casing, as the official operator reads these
/// annotations: `1`, `t`, `true`, `0`, `f`, `false` in any case.
pub fn parse_bool(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" => Some(true),
        "0" | "f" | "false" => Some(false),
        _ => None,
    }
}

/// Declares [`Reason`] with its text: the variant's name, so a reason cannot be spelled two ways.
macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Why an object is (or is not) in step: the `reason` of a `Ready` condition, of an event,
        /// and the `reason` label of the error metric. A closed set, so labels stay bounded.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $name,)*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];

            /// The CamelCase word written in conditions, events and metric labels.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)*
                }
            }
        }
    };
}

reasons! {
    // Conditions that say all is well.
    /// The Secret holds the item's current version.
    Synced,
    /// The item has the ignore tag: its Secret's data is no longer updated.
    Ignored,
    // Events that say what was done.
    SecretCreated,
    SecretUpdated,
    /// A Deployment's Secret was written.
    SecretSynced,
    /// Something the user should know (a key left out, an ambiguous title).
    SyncWarning,
    /// A workload was rolled because a Secret it uses changed.
    Restarted,
    /// The item was fetched again because a new `force-sync` value asked for it.
    ForceSynced,
    /// A restart waits: the restart budget is spent (workloads restarted by the operator are
    /// still rolling).
    RestartQueued,
    /// A restart is held: another workload restarted for the same change failed its rollout.
    RolloutBlocked,
    /// Restarts for a Secret are paused: it changes too often (the circuit breaker).
    RestartsPaused,
    // Failures: the object's spec.
    InvalidItemPath,
    Unsupported,
    /// The shaping fields of the spec are inconsistent (a bad key, a reserved label).
    InvalidShape,
    // Failures: the Secret cannot be built, or is refused as built.
    InvalidSecretName,
    InvalidSecretType,
    SecretTooLarge,
    SecretRejected,
    /// A field, file or URL the spec's shaping names is not in the item (or is empty).
    FieldNotFound,
    /// A reference of the spec's shaping matches several fields, files or URLs.
    AmbiguousField,
    /// A key of `spec.template.data` cannot be rendered (syntax, an undefined value, too much
    /// work); the message names the key and line, never a value.
    TemplateError,
    // Failures: the Secret that is there.
    SecretConflict,
    SecretTypeImmutable,
    StaleItemVersion,
    WriteConflict,
    VaultNotAllowed,
    // Failures: Connect.
    Unauthorized,
    VaultForbidden,
    VaultNotFound,
    ItemNotFound,
    NotFound,
    BadRequest,
    RateLimited,
    ConnectUnavailable,
    BadResponse,
    ItemTooLarge,
    // Failures: the API server.
    KubernetesForbidden,
    KubernetesError,
}

impl Reason {
    /// The reason of a failure to talk to Connect.
    pub fn of_connect(error: &ConnectError) -> Reason {
        match error {
            ConnectError::Unauthorized { .. } => Reason::Unauthorized,
            ConnectError::Forbidden { .. } => Reason::VaultForbidden,
            ConnectError::VaultNotFound { .. } => Reason::VaultNotFound,
            ConnectError::ItemNotFound { .. } => Reason::ItemNotFound,
            ConnectError::NotFound { .. } => Reason::NotFound,
            ConnectError::BadRequest { .. } => Reason::BadRequest,
            ConnectError::RateLimited { .. } => Reason::RateLimited,
            ConnectError::Server { .. }
            | ConnectError::Timeout(_)
            | ConnectError::Unreachable(_) => Reason::ConnectUnavailable,
            ConnectError::BadResponse(_) => Reason::BadResponse,
            ConnectError::FileTooLarge { .. } => Reason::ItemTooLarge,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{collections::HashSet, time::Duration};

    #[test]
    fn every_reason_has_a_label_of_its_own() {
        let labels: HashSet<&str> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), Reason::ALL.len());
        for label in labels {
            assert!(
                label.chars().all(|c| c.is_ascii_alphanumeric())
                    && label.starts_with(|c: char| c.is_ascii_uppercase()),
                "{label} is CamelCase"
            );
        }
        // The two the hand-written list of metric labels once missed.
        assert_eq!(Reason::KubernetesForbidden.as_str(), "KubernetesForbidden");
        assert_eq!(Reason::VaultNotAllowed.as_str(), "VaultNotAllowed");
    }

    #[test]
    fn a_connect_failure_has_the_reason_connect_gives_it() {
        let message = || "m".to_string();
        let errors = [
            ConnectError::Unauthorized { message: message() },
            ConnectError::Forbidden { message: message() },
            ConnectError::VaultNotFound { message: message() },
            ConnectError::ItemNotFound { message: message() },
            ConnectError::NotFound { message: message() },
            ConnectError::BadRequest {
                status: 400,
                message: message(),
            },
            ConnectError::RateLimited { retry_after: None },
            ConnectError::Server {
                status: 503,
                message: message(),
            },
            ConnectError::Timeout(Duration::from_secs(1)),
            ConnectError::Unreachable(message()),
            ConnectError::FileTooLarge {
                file: "f".into(),
                size: 2,
                limit: 1,
            },
            ConnectError::BadResponse(message()),
        ];
        for e in errors {
            assert_eq!(Reason::of_connect(&e).as_str(), e.reason(), "{e:?}");
        }
    }

    #[test]
    fn parse_bool_accepts_what_the_official_operator_accepts() {
        for yes in ["1", "t", "T", "true", "TRUE", "True"] {
            assert_eq!(parse_bool(yes), Some(true), "{yes}");
        }
        for no in ["0", "f", "F", "false", "FALSE", "False"] {
            assert_eq!(parse_bool(no), Some(false), "{no}");
        }
        for bad in ["", "yes", "no", "on", "2", " true"] {
            assert_eq!(parse_bool(bad), None, "{bad:?}");
        }
    }
}
