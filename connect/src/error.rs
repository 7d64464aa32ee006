use std::time::Duration;

/// What went wrong talking to Connect. Messages come from Connect's error bodies or from our own
/// wording; they never contain the token or an item's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// 401: the token is missing, malformed, expired or revoked.
    #[error("Connect rejected the token (401): {message}")]
    Unauthorized { message: String },
    /// 403: the token is valid but not granted this vault.
    #[error("the Connect token has no access to this vault (403): {message}")]
    Forbidden { message: String },
    /// 404 on a vault, or no vault with that title.
    #[error("vault not found: {message}")]
    VaultNotFound { message: String },
    /// 404 on an item, or no item with that title.
    #[error("item not found: {message}")]
    ItemNotFound { message: String },
    /// 404 on a file, or on a path that is not part of the API.
    #[error("not found (404): {message}")]
    NotFound { message: String },
    /// 400: Connect refused the request as malformed (e.g. an id of the wrong shape).
    #[error("Connect refused the request ({status}): {message}")]
    BadRequest { status: u16, message: String },
    /// 429, with the delay Connect asked for, if any.
    #[error("Connect is rate limiting requests (429){}", retry_after_text(.retry_after))]
    RateLimited { retry_after: Option<Duration> },
    /// 5xx, or 408 while Connect is still syncing after a start.
    #[error("Connect answered {status}: {message}")]
    Server { status: u16, message: String },
    /// No answer within the request timeout.
    #[error("Connect did not answer within {0:?}")]
    Timeout(Duration),
    /// Connection refused, reset, DNS or TLS failure.
    #[error("cannot reach Connect: {0}")]
    Unreachable(String),
    /// A file is larger than we accept (a Secret holds at most 1 MiB in all).
    #[error("file {file:?} is {size} bytes, more than the {limit} bytes allowed")]
    FileTooLarge { file: String, size: u64, limit: u64 },
    /// A 2xx whose body is not what the API describes.
    #[error("Connect sent a response we cannot read: {0}")]
    BadResponse(String),
}

fn retry_after_text(d: &Option<Duration>) -> String {
    d.map(|d| format!(", retry after {}s", d.as_secs()))
        .unwrap_or_default()
}

impl ConnectError {
    /// A bounded, machine-readable name for metrics labels and condition reasons.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectError::Unauthorized { .. } => "Unauthorized",
            ConnectError::Forbidden { .. } => "VaultForbidden",
            ConnectError::VaultNotFound { .. } => "VaultNotFound",
            ConnectError::ItemNotFound { .. } => "ItemNotFound",
            ConnectError::NotFound { .. } => "NotFound",
            ConnectError::BadRequest { .. } => "BadRequest",
            ConnectError::RateLimited { .. } => "RateLimited",
            ConnectError::Server { .. }
            | ConnectError::Timeout(_)
            | ConnectError::Unreachable(_) => "ConnectUnavailable",
            ConnectError::BadResponse(_) => "BadResponse",
            ConnectError::FileTooLarge { .. } => "ItemTooLarge",
        }
    }

    /// Worth retrying the same request soon: the server or the network may recover by itself.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            ConnectError::RateLimited { .. }
                | ConnectError::Server { .. }
                | ConnectError::Timeout(_)
                | ConnectError::Unreachable(_)
                | ConnectError::BadResponse(_)
        )
    }
}
