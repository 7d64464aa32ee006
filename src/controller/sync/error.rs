//! Why a sync failed, and what that means: the reason reported, and when to look again. Every
//! classification of a failure is here.

use std::time::Duration;

use crate::{connect::ConnectError, secret::BuildError, vocabulary::Reason};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    InvalidPath(#[from] crate::connect::InvalidItemPath),
    #[error("{0}")]
    Unsupported(String),
    /// The spec's shaping fields cannot be used as written (the message names keys, never values).
    #[error("{0}")]
    InvalidShape(String),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(
        "a Secret named {name:?} already exists and has no owner reference to this {asker}; it \
         is left as it is (delete or rename it to let the operator create its own; a Secret of an \
         earlier object of the same name is removed by the garbage collector shortly)"
    )]
    Conflict {
        name: String,
        /// The kind that asked for the Secret (`OnePasswordItem`, `Deployment`).
        asker: String,
    },
    #[error(
        "the Secret {name:?} has type {live:?} but {wanted:?} is wanted; a Secret's type cannot \
         change: delete the Secret and the operator will create it again"
    )]
    TypeChanged {
        name: String,
        live: String,
        wanted: String,
    },
    #[error("{0}")]
    VaultNotAllowed(crate::policy::Denied),
    #[error(
        "Connect served version {served} of the item, older than version {held} that Secret \
         {name:?} holds (a Connect replica that lags behind?); the Secret keeps version {held} \
         and the item is read again later"
    )]
    StaleItem {
        name: String,
        held: u64,
        served: u64,
    },
    #[error(
        "the Secret {name:?} was written {rewrites} times in a row for the same item version: \
         someone else keeps changing or deleting it (see its managedFields); not to fight \
         another writer, the operator leaves it alone for {}s", paused.as_secs()
    )]
    WriteConflict {
        name: String,
        rewrites: usize,
        paused: Duration,
    },
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    /// About one of the other items of the Secret (`spec.items`), by its name: reported with
    /// that failure's reason, and retried as it would be.
    #[error("item {item:?} of spec.items: {error}")]
    InItem { item: String, error: Box<SyncError> },
}

/// When a failed object is looked at again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Soon, with a backoff that grows with each failure in a row: the failure may pass by
    /// itself (Connect or the API server away, a lagging Connect replica).
    Backoff,
    /// After this pause, however many failures came before (it is the backoff already).
    After(Duration),
    /// At the next poll: a change in 1Password can fix it.
    Poll,
    /// When the object changes (or, through the poller, the item gets a new version).
    AwaitChange,
}

impl SyncError {
    /// The reason reported in the condition, the event and the metric.
    pub fn reason(&self) -> Reason {
        match self {
            SyncError::InItem { error, .. } => error.reason(),
            SyncError::InvalidPath(_) => Reason::InvalidItemPath,
            SyncError::Unsupported(_) => Reason::Unsupported,
            SyncError::InvalidShape(_) => Reason::InvalidShape,
            SyncError::Connect(e) => Reason::of_connect(e),
            SyncError::Build(e) => e.reason(),
            SyncError::Conflict { .. } => Reason::SecretConflict,
            SyncError::TypeChanged { .. } => Reason::SecretTypeImmutable,
            SyncError::VaultNotAllowed(_) => Reason::VaultNotAllowed,
            SyncError::StaleItem { .. } => Reason::StaleItemVersion,
            SyncError::WriteConflict { .. } => Reason::WriteConflict,
            SyncError::Kube(kube::Error::Api(status)) if status.code == 403 => {
                Reason::KubernetesForbidden
            }
            SyncError::Kube(_) if self.is_permanent() => Reason::SecretRejected,
            SyncError::Kube(_) => Reason::KubernetesError,
        }
    }

    /// When to look again. Transient failures retry with backoff; problems that a change in
    /// 1Password can fix are looked at again every poll; a bad spec, or a Secret that cannot be
    /// built or is refused as built, waits for the object to change (or, through the poller,
    /// for a new version of the item).
    pub fn retry(&self) -> Retry {
        if let SyncError::InItem { error, .. } = self {
            error.retry()
        } else if let SyncError::WriteConflict { paused, .. } = self {
            // Look again as soon as the pause is over, however many times the other writer made
            // us fail meanwhile.
            Retry::After(*paused + Duration::from_secs(1))
        } else if self.is_transient() {
            Retry::Backoff
        } else if self.needs_spec_change() || self.is_permanent() {
            Retry::AwaitChange
        } else {
            Retry::Poll
        }
    }

    /// Connect could not be asked (down, or the token refused): the poller is told, to wake
    /// the object when Connect is back rather than on every poll.
    pub fn is_outage(&self) -> bool {
        match self {
            SyncError::Connect(e) => is_outage(e),
            SyncError::InItem { error, .. } => error.is_outage(),
            _ => false,
        }
    }

    /// This error, said of the item of `spec.items` called `name`.
    pub fn in_item(self, name: &str) -> SyncError {
        SyncError::InItem {
            item: name.to_owned(),
            error: Box::new(self),
        }
    }

    /// Trying again would fail the same way until the item gets a new version or the object
    /// changes: the Secret cannot be built from the item, or the API server refuses it as built
    /// (400, 413, 422: e.g. `type: kubernetes.io/tls` on an item without `tls.crt`). Not
    /// retried (nor fetched again) before then.
    pub fn is_permanent(&self) -> bool {
        match self {
            SyncError::Build(_) => true,
            SyncError::Connect(e) => matches!(e, ConnectError::FileTooLarge { .. }),
            SyncError::Kube(kube::Error::Api(status)) => matches!(status.code, 400 | 413 | 422),
            SyncError::InItem { error, .. } => error.is_permanent(),
            _ => false,
        }
    }

    /// Worth retrying soon with backoff, as opposed to waiting for a change in 1Password or in
    /// the object.
    pub fn is_transient(&self) -> bool {
        match self {
            SyncError::Connect(e) => e.is_transient(),
            SyncError::Kube(_) => !self.is_permanent(),
            SyncError::StaleItem { .. } | SyncError::WriteConflict { .. } => true,
            SyncError::InItem { error, .. } => error.is_transient(),
            _ => false,
        }
    }

    /// Only a change of the object itself can fix it.
    pub fn needs_spec_change(&self) -> bool {
        match self {
            SyncError::InItem { error, .. } => error.needs_spec_change(),
            e => matches!(
                e,
                SyncError::InvalidPath(_)
                    | SyncError::Unsupported(_)
                    | SyncError::InvalidShape(_)
                    | SyncError::Build(_)
            ),
        }
    }
}

/// Connect cannot be asked at all: down, or the token refused.
pub fn is_outage(e: &ConnectError) -> bool {
    e.is_transient() || matches!(e, ConnectError::Unauthorized { .. })
}
