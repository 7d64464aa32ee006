//! An HTTP client for the 1Password Connect REST API with bounded timeouts, retries on transient
//! failures, and a token that never leaves the `Authorization` header.

use std::{fmt, sync::Arc, time::Duration};

use base64::Engine;
use rand::Rng;
use reqwest::{StatusCode, header};
use serde::de::DeserializeOwned;
use url::Url;

use super::{
    endpoint::Endpoint,
    error::ConnectError,
    listing::{ArrayReader, ListError, ListLimits, parse_element},
    mac::hmac_sha256,
    model::{ErrorBody, File, FileContent, FullItem, ItemSummary, ItemWithFiles, Vault},
};

/// The Connect token. Its `Debug` and `Display` never show the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(value: impl Into<String>) -> Self {
        Token(value.into().trim().to_string())
    }

    fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// When and how often to retry a GET.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 disables retries).
    pub max_retries: u32,
    /// The first backoff ceiling; each retry doubles it, up to `max_delay`. The actual delay is
    /// drawn uniformly between half the ceiling and the ceiling, so many operators do not retry
    /// in step. (Retries inside one request; a failed reconcile's retry is the operator's.)
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// A 429 whose `Retry-After` is longer than this is not waited for inside a request: the
    /// error goes back to the caller, which requeues instead of holding a worker.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

/// Settings for [`ConnectClient`].
#[derive(Clone)]
pub struct ConnectConfig {
    /// `OP_CONNECT_HOST`, e.g. `http://onepassword-connect:8080`. It may carry credentials
    /// (`http://user:pass@host`): it is only ever printed redacted
    /// ([`ConnectClient::host`], `Debug`).
    pub host: Url,
    pub token: Token,
    /// Whole-request timeout, including reading the body.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub retry: RetryPolicy,
    /// PEM bundle of extra CA certificates trusted for an `https` host (`OP_CONNECT_CA_FILE`).
    pub ca_bundle_pem: Option<Vec<u8>>,
    /// Largest response body accepted, listings aside; bounds memory whatever Connect sends.
    pub max_body_bytes: usize,
    /// Listings (vaults, a vault's items) are read as a stream, one element at a time, so their
    /// size is not bounded by `max_body_bytes`: at most this many elements...
    pub max_list_elements: usize,
    /// ...of at most this many bytes each.
    pub max_list_element_bytes: usize,
    /// Where the token was read from (`OP_CONNECT_TOKEN_FILE`): read again when Connect refuses
    /// the token, so a rotated token in a mounted Secret is picked up without a restart.
    pub token_file: Option<std::path::PathBuf>,
}

impl fmt::Debug for ConnectConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectConfig")
            .field("host", &redact_url(&self.host))
            .field("token", &self.token)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("retry", &self.retry)
            .field("ca_bundle", &self.ca_bundle_pem.as_ref().map(|_| "<pem>"))
            .field("max_body_bytes", &self.max_body_bytes)
            .field("max_list_elements", &self.max_list_elements)
            .field("max_list_element_bytes", &self.max_list_element_bytes)
            .field("token_file", &self.token_file)
            .finish()
    }
}

impl ConnectConfig {
    pub fn new(host: &str, token: Token) -> Result<Self, ConfigError> {
        Ok(ConnectConfig {
            host: parse_host(host)?,
            token,
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            ca_bundle_pem: None,
            max_body_bytes: 8 * 1024 * 1024,
            // A summary is a few hundred bytes; a listing of a million of them (far above any
            // real vault) holds a few hundred MB once parsed, the bound for a hostile server.
            max_list_elements: 1_000_000,
            max_list_element_bytes: 1024 * 1024,
            token_file: None,
        })
    }

    /// Reads `OP_CONNECT_HOST`, and the token from `OP_CONNECT_TOKEN` or from the file named by
    /// `OP_CONNECT_TOKEN_FILE`, and a CA bundle from the file named by `OP_CONNECT_CA_FILE`.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let host = get("OP_CONNECT_HOST")
            .filter(|h| !h.trim().is_empty())
            .ok_or(ConfigError::Missing("OP_CONNECT_HOST"))?;
        let (token, token_file) = match (get("OP_CONNECT_TOKEN"), get("OP_CONNECT_TOKEN_FILE")) {
            (Some(t), _) if !t.trim().is_empty() => (Token::new(t), None),
            (_, Some(path)) if !path.trim().is_empty() => {
                let path = std::path::PathBuf::from(path.trim());
                let raw = std::fs::read_to_string(&path)
                    .map_err(|e| ConfigError::File("OP_CONNECT_TOKEN_FILE", e.to_string()))?;
                (Token::new(raw), Some(path))
            }
            _ => return Err(ConfigError::Missing("OP_CONNECT_TOKEN")),
        };
        if token.is_empty() {
            return Err(ConfigError::Missing("OP_CONNECT_TOKEN"));
        }
        let mut config = ConnectConfig::new(&host, token)?;
        config.token_file = token_file;
        if let Some(path) = get("OP_CONNECT_CA_FILE").filter(|p| !p.trim().is_empty()) {
            let pem = std::fs::read(path.trim())
                .map_err(|e| ConfigError::File("OP_CONNECT_CA_FILE", e.to_string()))?;
            config.ca_bundle_pem = Some(pem);
        }
        Ok(config)
    }
}

/// A URL for logs, errors and `Debug`: any `user:password@` becomes `<redacted>@`, and the
/// query and fragment are left out (`OP_CONNECT_HOST` may carry credentials).
fn redact_url(url: &Url) -> String {
    let mut shown = format!("{}://", url.scheme());
    if !url.username().is_empty() || url.password().is_some() {
        shown.push_str("<redacted>@");
    }
    shown.push_str(url.host_str().unwrap_or_default());
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    shown
}

/// [`redact_url`] for a string that may not even parse: everything between `://` and the last
/// `@` is hidden, and so is anything after `?` or `#`.
fn redact_host_text(host: &str) -> String {
    let host = host.trim();
    if let Ok(url) = Url::parse(host)
        && url.host().is_some()
    {
        return redact_url(&url);
    }
    let start = host.find("://").map_or(0, |i| i + 3);
    let mut shown = match host[start..].rfind('@') {
        Some(at) => format!("{}<redacted>@{}", &host[..start], &host[start + at + 1..]),
        None => host.to_string(),
    };
    if let Some(cut) = shown.find(['?', '#']) {
        shown.truncate(cut);
    }
    shown
}

fn parse_host(host: &str) -> Result<Url, ConfigError> {
    let bad = || ConfigError::InvalidHost(redact_host_text(host));
    let mut url = Url::parse(host.trim()).map_err(|_| bad())?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad());
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is not set")]
    Missing(&'static str),
    #[error("cannot read the file named by {0}: {1}")]
    File(&'static str, String),
    #[error(
        "OP_CONNECT_HOST {0:?} is not a URL like http://onepassword-connect:8080 (scheme http or https and a host)"
    )]
    InvalidHost(String),
    #[error("the CA bundle is not valid PEM: {0}")]
    InvalidCaBundle(String),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

/// Called once per HTTP attempt with the endpoint and the outcome: the status code as text, or
/// `timeout` / `error` when no response came. Used for metrics.
pub type RequestObserver = Arc<dyn Fn(Endpoint, &str) + Send + Sync>;

#[derive(Clone)]
pub struct ConnectClient {
    http: reqwest::Client,
    config: Arc<ConnectConfig>,
    /// The token in use: the configured one, or a newer one read from `token_file`.
    token: Arc<std::sync::RwLock<Token>>,
    observer: Option<RequestObserver>,
}

impl fmt::Debug for ConnectClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectClient")
            .field("host", &redact_url(&self.config.host))
            .field("token", &self.current_token())
            .finish()
    }
}

/// Installs the `ring` TLS provider for the process (kube-rs uses it too). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl ConnectClient {
    pub fn new(config: ConnectConfig) -> Result<Self, ConfigError> {
        install_crypto_provider();
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!(
                "onepassword-secrets-operator/",
                env!("CARGO_PKG_VERSION")
            ))
            .pool_idle_timeout(Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = &config.ca_bundle_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ConfigError::InvalidCaBundle(e.to_string()))?;
            if certs.is_empty() {
                return Err(ConfigError::InvalidCaBundle("no certificate found".into()));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .build()
            .map_err(|e| ConfigError::Http(e.to_string()))?;
        Ok(ConnectClient {
            http,
            token: Arc::new(std::sync::RwLock::new(config.token.clone())),
            config: Arc::new(config),
            observer: None,
        })
    }

    pub fn with_observer(mut self, observer: RequestObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The Connect URL for logs: credentials in it are redacted.
    pub fn host(&self) -> String {
        redact_url(&self.config.host)
    }

    /// All vaults the token can read.
    pub async fn list_vaults(&self) -> Result<Vec<Vault>, ConnectError> {
        self.get_list(Endpoint::ListVaults, "v1/vaults", &[]).await
    }

    /// Every item of a vault, without field values: one request, whatever the vault's size,
    /// read as a stream (see `max_list_elements`).
    pub async fn list_items(&self, vault_id: &str) -> Result<Vec<ItemSummary>, ConnectError> {
        let path = format!("v1/vaults/{}/items", segment(vault_id));
        self.get_list(Endpoint::ListItems, &path, &[]).await
    }

    pub async fn get_item(&self, vault_id: &str, item_id: &str) -> Result<FullItem, ConnectError> {
        let path = format!("v1/vaults/{}/items/{}", segment(vault_id), segment(item_id));
        self.get_json(Endpoint::GetItem, &path, &[]).await
    }

    /// The files of an item; with `inline`, small files carry their content (base64).
    async fn list_files(
        &self,
        vault_id: &str,
        item_id: &str,
        inline: bool,
    ) -> Result<Vec<File>, ConnectError> {
        let path = format!(
            "v1/vaults/{}/items/{}/files",
            segment(vault_id),
            segment(item_id)
        );
        let query: &[(&str, &str)] = if inline {
            &[("inline_files", "true")]
        } else {
            &[]
        };
        self.get_json(Endpoint::ListFiles, &path, query).await
    }

    /// The raw content of a file, from the `content_path` Connect gave for it.
    async fn file_content(&self, file: &File) -> Result<Vec<u8>, ConnectError> {
        let path = file.content_path.trim_start_matches('/');
        if !path.starts_with("v1/vaults/") || path.contains("..") {
            return Err(ConnectError::BadResponse(format!(
                "file {} has an unexpected content_path",
                file.id
            )));
        }
        self.get_bytes(Endpoint::GetFileContent, path, &[]).await
    }

    /// `GET /heartbeat`: is Connect up at all (no token needed).
    pub async fn heartbeat(&self) -> Result<(), ConnectError> {
        self.get_bytes(Endpoint::Heartbeat, "heartbeat", &[])
            .await
            .map(drop)
    }

    /// Fetches an item and the content of its files.
    ///
    /// Files cost one request for all of them (`inline_files=true`) instead of one per file; a
    /// file too large to inline, or a server that does not inline, falls back to its content
    /// endpoint.
    pub async fn fetch_item(
        &self,
        vault_id: &str,
        item_id: &str,
    ) -> Result<ItemWithFiles, ConnectError> {
        let item = self.get_item(vault_id, item_id).await?;
        self.with_files(item).await
    }

    pub(crate) async fn with_files(&self, item: FullItem) -> Result<ItemWithFiles, ConnectError> {
        if item.files.is_empty() {
            return Ok(ItemWithFiles {
                item,
                files: Vec::new(),
            });
        }
        let limit = self.config.max_body_bytes as u64;
        if let Some(big) = item.files.iter().find(|f| f.size > limit) {
            return Err(ConnectError::FileTooLarge {
                file: big.name.clone(),
                size: big.size,
                limit,
            });
        }
        let inlined = match self.list_files(&item.vault.id, &item.id, true).await {
            Ok(files) => files,
            // 413: at least one file is too large to inline; fetch each one by itself.
            Err(ConnectError::BadRequest { status: 413, .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut files = Vec::with_capacity(item.files.len());
        for file in &item.files {
            let inline = inlined
                .iter()
                .find(|f| f.id == file.id)
                .and_then(|f| f.content.as_deref());
            let content = match inline {
                Some(b64) => base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|_| {
                        ConnectError::BadResponse(format!(
                            "file {} has content that is not base64",
                            file.id
                        ))
                    })?,
                None => self.file_content(file).await?,
            };
            files.push(FileContent {
                id: file.id.clone(),
                name: file.name.clone(),
                content,
            });
        }
        Ok(ItemWithFiles { item, files })
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, ConnectError> {
        let body = self.get_bytes(endpoint, path, query).await?;
        serde_json::from_slice(&body).map_err(|e| {
            // serde's message names the position and the expected type, never the content.
            ConnectError::BadResponse(format!("{}: {e}", endpoint.as_str()))
        })
    }

    async fn get_bytes(
        &self,
        endpoint: Endpoint,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Vec<u8>, ConnectError> {
        let (limit, timeout) = (self.config.max_body_bytes, self.config.timeout);
        self.get_with_retries(endpoint, path, query, |response| {
            read_body(response, endpoint, limit, timeout)
        })
        .await
    }

    /// A JSON array read as it arrives, one element at a time: the body is never held whole.
    pub(crate) async fn get_list<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Vec<T>, ConnectError> {
        let limits = ListLimits {
            max_elements: self.config.max_list_elements,
            max_element_bytes: self.config.max_list_element_bytes,
        };
        let timeout = self.config.timeout;
        self.get_with_retries(endpoint, path, query, |response| {
            read_list(response, endpoint, limits, timeout)
        })
        .await
    }

    /// Sends a GET and reads a successful response with `read`, retrying transient failures
    /// (of the request or of reading its body) with backoff.
    async fn get_with_retries<T, Read, Reading>(
        &self,
        endpoint: Endpoint,
        path: &str,
        query: &[(&str, &str)],
        read: Read,
    ) -> Result<T, ConnectError>
    where
        Read: Fn(reqwest::Response) -> Reading,
        Reading: Future<Output = Result<T, ConnectError>>,
    {
        let mut url = self
            .config
            .host
            .join(path)
            .map_err(|e| ConnectError::BadResponse(format!("cannot build a URL: {e}")))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let policy = self.config.retry;
        let mut attempt = 0;
        let mut token_reread = false;
        loop {
            let result = match self.send_once(endpoint, &url).await {
                Ok(response) => read(response).await,
                Err(e) => Err(e),
            };
            let err = match result {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            if matches!(err, ConnectError::Unauthorized { .. })
                && !token_reread
                && self.reload_token()
            {
                token_reread = true;
                continue;
            }
            let delay = match &err {
                _ if attempt >= policy.max_retries => None,
                ConnectError::RateLimited {
                    retry_after: Some(after),
                } => (*after <= policy.max_retry_after).then_some(*after),
                ConnectError::RateLimited { retry_after: None }
                | ConnectError::Server { .. }
                | ConnectError::Timeout(_)
                | ConnectError::Unreachable(_) => Some(backoff(&policy, attempt)),
                _ => None,
            };
            let Some(delay) = delay else { return Err(err) };
            tracing::debug!(
                endpoint = endpoint.as_str(),
                attempt,
                delay_ms = delay.as_millis() as u64,
                reason = err.reason(),
                "retrying Connect request"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// HMAC-SHA256 of `message` keyed by the token in use: a value only a holder of the token
    /// can compute, stable while the token is (the digest salt of a new Secret). The token
    /// itself never leaves the client.
    pub fn token_mac(&self, message: &[u8]) -> [u8; 32] {
        hmac_sha256(self.current_token().expose().as_bytes(), message)
    }

    fn current_token(&self) -> Token {
        self.token.read().expect("token lock").clone()
    }

    /// Reads the token file again; true when it holds a new token, now in use.
    fn reload_token(&self) -> bool {
        let Some(path) = &self.config.token_file else {
            return false;
        };
        let Ok(raw) = std::fs::read_to_string(path) else {
            return false;
        };
        let fresh = Token::new(raw);
        let mut token = self.token.write().expect("token lock");
        if fresh.is_empty() || *token == fresh {
            return false;
        }
        tracing::info!("the Connect token file holds a new token; using it");
        *token = fresh;
        true
    }

    /// One GET: the response when its status is a success, else the error its status and body
    /// tell.
    async fn send_once(
        &self,
        endpoint: Endpoint,
        url: &Url,
    ) -> Result<reqwest::Response, ConnectError> {
        let token = self.current_token();
        let sent = self
            .http
            .get(url.clone())
            .bearer_auth(token.expose())
            .header(header::ACCEPT, "application/json")
            .send()
            .await;
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => {
                let timeout = e.is_timeout();
                self.observe(endpoint, if timeout { "timeout" } else { "error" });
                return Err(transport_error(e, self.config.timeout));
            }
        };
        let status = response.status();
        self.observe(endpoint, status.as_str());
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        // An error body is a short JSON message: read at most this much of it.
        const ERROR_BODY_LIMIT: usize = 64 * 1024;
        let mut body = Vec::new();
        // The status already tells what happened; a broken error body changes nothing.
        while let Ok(Some(chunk)) = response.chunk().await {
            let room = ERROR_BODY_LIMIT - body.len();
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() == ERROR_BODY_LIMIT {
                break;
            }
        }
        Err(status_error(status, &body, retry_after))
    }

    fn observe(&self, endpoint: Endpoint, outcome: &str) {
        if let Some(observer) = &self.observer {
            observer(endpoint, outcome);
        }
    }
}

/// A whole body, refused once it grows past `limit` bytes (without holding more than that).
async fn read_body(
    mut response: reqwest::Response,
    endpoint: Endpoint,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, ConnectError> {
    let too_large = || {
        ConnectError::BadResponse(format!(
            "{}: response larger than {limit} bytes",
            endpoint.as_str()
        ))
    };
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(e, timeout))?
    {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A JSON array body, deserialised element by element as the chunks arrive.
async fn read_list<T: DeserializeOwned>(
    mut response: reqwest::Response,
    endpoint: Endpoint,
    limits: ListLimits,
    timeout: Duration,
) -> Result<Vec<T>, ConnectError> {
    let bad = |e: ListError| ConnectError::BadResponse(format!("{}: {e}", endpoint.as_str()));
    let mut reader = ArrayReader::new(limits);
    let mut elements = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(e, timeout))?
    {
        reader
            .feed(&chunk, &mut |index, bytes| {
                elements.push(parse_element(index, bytes)?);
                Ok(())
            })
            .map_err(bad)?;
    }
    reader.finish().map_err(bad)?;
    Ok(elements)
}

/// A path segment, percent-encoded so a title-shaped id cannot change the URL's structure.
pub(crate) fn segment(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let ceiling = policy
        .base_delay
        .saturating_mul(2u32.saturating_pow(attempt))
        .min(policy.max_delay);
    let millis = ceiling.as_millis().max(1) as u64;
    Duration::from_millis(rand::rng().random_range(millis / 2..=millis))
}

fn transport_error(e: reqwest::Error, timeout: Duration) -> ConnectError {
    if e.is_timeout() {
        return ConnectError::Timeout(timeout);
    }
    // The URL may carry credentials (`OP_CONNECT_HOST`), and is noise in a status message
    // anyway: leave it out, keep the cause chain.
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    ConnectError::Unreachable(message)
}

fn status_error(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> ConnectError {
    let message = serde_json::from_slice::<ErrorBody>(body)
        .ok()
        .map(|b| b.message)
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("unexpected status")
                .to_string()
        });
    let code = status.as_u16();
    match code {
        401 => ConnectError::Unauthorized { message },
        403 => ConnectError::Forbidden { message },
        404 if message.starts_with("vault") => ConnectError::VaultNotFound { message },
        404 if message.starts_with("item") => ConnectError::ItemNotFound { message },
        404 => ConnectError::NotFound { message },
        429 => ConnectError::RateLimited { retry_after },
        408 | 500..=599 => ConnectError::Server {
            status: code,
            message,
        },
        _ => ConnectError::BadRequest {
            status: code,
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_never_shows_in_debug() {
        let token = Token::new("eyJhbGciOiJFUzI1NiIsInNecret");
        let config = ConnectConfig::new("http://connect:8080", token.clone()).unwrap();
        let client = ConnectClient::new(config.clone()).unwrap();
        for printed in [
            format!("{token:?}"),
            format!("{config:?}"),
            format!("{config:#?}"),
            format!("{client:?}"),
        ] {
            assert!(!printed.contains("eyJhbGci"), "{printed}");
        }
    }

    #[test]
    fn credentials_in_the_host_never_show_in_debug_errors_or_the_host_for_logs() {
        let host = "http://opuser:hunter2-pw@connect:8080/base?key=qs-secret";
        let config = ConnectConfig::new(host, Token::new("t")).unwrap();
        let client = ConnectClient::new(config.clone()).unwrap();
        let printed = [
            format!("{config:?}"),
            format!("{config:#?}"),
            format!("{client:?}"),
            client.host(),
        ];
        for text in &printed {
            assert!(
                !text.contains("hunter2") && !text.contains("opuser"),
                "{text}"
            );
            assert!(!text.contains("qs-secret"), "{text}");
        }
        assert_eq!(client.host(), "http://<redacted>@connect:8080/base/");
        assert_eq!(
            redact_url(&parse_host("https://connect:8443").unwrap()),
            "https://connect:8443/"
        );
        // Hosts that do not parse are refused, and their credentials still never show.
        for bad in [
            "ftp://opuser:hunter2-pw@connect",
            "http://opuser:hunter2-pw@connect:port",
            "http://opuser:hunter2/pw@connect:8080",
            "opuser:hunter2-pw@connect",
        ] {
            let e = parse_host(bad).unwrap_err();
            for text in [e.to_string(), format!("{e:?}")] {
                assert!(
                    !text.contains("hunter2") && !text.contains("opuser"),
                    "{text}"
                );
                assert!(text.contains("<redacted>@connect"), "{text}");
            }
        }
    }

    #[test]
    fn host_gets_a_trailing_slash_and_must_be_http() {
        let ok = |h: &str| parse_host(h).unwrap().to_string();
        assert_eq!(ok("http://connect:8080"), "http://connect:8080/");
        assert_eq!(ok("https://c.example/prefix"), "https://c.example/prefix/");
        assert_eq!(ok(" http://c:8080/ "), "http://c:8080/");
        for bad in ["connect:8080", "ftp://c", "", "not a url"] {
            assert!(parse_host(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn config_from_env_reads_token_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "tok-from-file\n").unwrap();
        let path = path.to_string_lossy().to_string();
        let env = |k: &str| match k {
            "OP_CONNECT_HOST" => Some("http://connect:8080".to_string()),
            "OP_CONNECT_TOKEN_FILE" => Some(path.clone()),
            _ => None,
        };
        let config = ConnectConfig::from_env(env).unwrap();
        assert_eq!(config.token.expose(), "tok-from-file");
    }

    #[test]
    fn config_from_env_names_what_is_missing() {
        let none = |_: &str| None;
        assert_eq!(
            ConnectConfig::from_env(none).unwrap_err(),
            ConfigError::Missing("OP_CONNECT_HOST")
        );
        let host_only = |k: &str| (k == "OP_CONNECT_HOST").then(|| "http://c:1".to_string());
        assert_eq!(
            ConnectConfig::from_env(host_only).unwrap_err(),
            ConfigError::Missing("OP_CONNECT_TOKEN")
        );
    }

    #[test]
    fn segments_cannot_escape_their_place_in_the_url() {
        assert_eq!(segment("a/../b c"), "a%2F..%2Fb%20c");
    }

    #[test]
    fn status_codes_map_to_error_classes() {
        let body = |m: &str| {
            serde_json::to_vec(&ErrorBody {
                status: 0,
                message: m.into(),
            })
            .unwrap()
        };
        let cases: Vec<(u16, Vec<u8>, &str)> = vec![
            (401, body("Invalid token signature"), "Unauthorized"),
            (403, body("vault x is not in scope"), "VaultForbidden"),
            (404, body("vault x not found"), "VaultNotFound"),
            (404, body("item x not found"), "ItemNotFound"),
            (404, body("file x not found"), "NotFound"),
            (400, body("Invalid Item UUID"), "BadRequest"),
            (429, Vec::new(), "RateLimited"),
            (500, b"<html>oops".to_vec(), "ConnectUnavailable"),
            (503, Vec::new(), "ConnectUnavailable"),
        ];
        for (code, body, reason) in cases {
            let e = status_error(StatusCode::from_u16(code).unwrap(), &body, None);
            assert_eq!(e.reason(), reason, "{code}: {e}");
        }
    }

    #[test]
    fn backoff_grows_and_stays_bounded() {
        let p = RetryPolicy::default();
        for attempt in 0..20 {
            let d = backoff(&p, attempt);
            assert!(d <= p.max_delay, "{d:?}");
            assert!(d >= p.base_delay.min(p.max_delay) / 2, "{d:?}");
        }
    }
}
