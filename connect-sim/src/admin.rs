//! `/__sim/…`: control of a running simulator over HTTP, for processes that do not hold the
//! [`Simulator`](super::Simulator) handle (benchmarks, demos). No token; not counted; faults never
//! apply. Bodies are JSON; errors are Connect-style `{"status": …, "message": …}`.
//!
//! | request | body | answer |
//! |---|---|---|
//! | `GET /__sim/counts` | | `{"total": 12, "endpoints": {"get_item": 3, …}}` |
//! | `POST /__sim/counts/reset` | | 204 |
//! | `GET /__sim/faults` | | the active faults |
//! | `POST /__sim/faults` | a fault, e.g. `{"kind": "status", "status": 500, "times": 2, "endpoint": "get_item", "path_prefix": "/v1/vaults/…"}` (kinds: `status`, `too_many_requests` + `retry_after_secs`, `timeout`, `delay` + `millis`, `drop_connection`, `malformed_json`, `lagging`: items as they were one change ago) | 204 |
//! | `POST /__sim/faults/clear` | | 204 |
//! | `POST /__sim/down` | `{"for_millis": 2000}` | 202, then stops accepting (and cuts open connections) about 100 ms later, for that long |
//! | `GET /__sim/vaults` | | every vault, whatever the tokens |
//! | `POST /__sim/vaults` | `{"name": "New", "id": null, "description": ""}` | the vault |
//! | `POST /__sim/items/put` | `{"vault": "<id or name>", "item": <item as in a seed file>}` (an `id` in the item replaces that item) | the item summary (no values) |
//! | `POST /__sim/items/set-field` | `{"vault": "<id or name>", "item": "<id or title>", "label": "password", "value": "new"}` | the item summary |
//! | `POST /__sim/items/set-file` | `{"vault": …, "item": …, "name": "key.pem", "content": "text"}` or `"base64": "…"` | the item summary |
//! | `POST /__sim/items/delete` | `{"vault": …, "item": …}` | 204 |
//! | `POST /__sim/tokens` | `{"token": "t", "vaults": "*"}` or `{"token": "t", "vaults": ["Demo"]}` | 204 |
//! | `POST /__sim/tokens/remove` | `{"token": "t"}` | 204 |
//!
//! Every change goes through the same rules as the handle's methods: versions and the vault's
//! `contentVersion` go up by one.

use std::time::Duration;

use axum::response::Response;
use base64::Engine;
use http::Method;
use serde::{Deserialize, de::DeserializeOwned};
use tokio::sync::oneshot;

use super::{
    api::Reply,
    faults::Fault,
    seed::ItemSpec,
    server::{Control, Shared, into_response, lock},
    store::{SimError, TokenAccess},
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemRef {
    vault: String,
    item: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetField {
    vault: String,
    item: String,
    label: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetFile {
    vault: String,
    item: String,
    name: String,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    base64: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutItem {
    vault: String,
    item: ItemSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddToken {
    token: String,
    vaults: TokenAccess,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveToken {
    token: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddVault {
    name: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Down {
    for_millis: u64,
}

/// The delay before going down, so the answer to `POST /__sim/down` gets out first.
const DOWN_GRACE: Duration = Duration::from_millis(100);

pub(super) async fn handle(
    shared: &std::sync::Arc<Shared>,
    method: &Method,
    path: &str,
    _query: Option<&str>,
    body: &[u8],
) -> Response {
    let reply = match route(shared, method, path, body) {
        Ok(reply) | Err(reply) => reply,
    };
    tracing::debug!(%method, %path, status = reply.status(), "admin request");
    into_response(reply)
}

fn route(
    shared: &std::sync::Arc<Shared>,
    method: &Method,
    path: &str,
    body: &[u8],
) -> Result<Reply, Reply> {
    let path = path.trim_end_matches('/');
    let get = *method == Method::GET;
    let post = *method == Method::POST;
    Ok(match path {
        "/__sim/counts" if get => {
            let counts = lock(&shared.counts);
            Reply::json(
                200,
                &serde_json::json!({ "total": counts.total(), "endpoints": counts.snapshot() }),
            )
        }
        "/__sim/counts/reset" if post => {
            lock(&shared.counts).reset();
            Reply::NoContent
        }
        "/__sim/faults" if get => Reply::json(200, &lock(&shared.faults).list()),
        "/__sim/faults" if post => {
            let fault: Fault = parse(body)?;
            lock(&shared.faults).add(fault);
            Reply::NoContent
        }
        "/__sim/faults/clear" if post => {
            lock(&shared.faults).clear();
            Reply::NoContent
        }
        "/__sim/down" if post => {
            let down: Down = parse(body)?;
            let control = shared.control.clone();
            tokio::spawn(async move {
                tokio::time::sleep(DOWN_GRACE).await;
                let (done, wait) = oneshot::channel();
                if control.send(Control::Down(done)).is_err() || wait.await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(down.for_millis)).await;
                let (done, wait) = oneshot::channel();
                if control.send(Control::Resume(done)).is_ok()
                    && let Ok(Err(e)) = wait.await
                {
                    tracing::error!(error = %e, "cannot listen again after going down");
                }
            });
            Reply::json(
                202,
                &serde_json::json!({ "down_for_millis": down.for_millis }),
            )
        }
        "/__sim/vaults" if get => {
            let store = lock(&shared.store);
            Reply::json(200, &store.vaults().collect::<Vec<_>>())
        }
        "/__sim/vaults" if post => {
            let add: AddVault = parse(body)?;
            let vault = lock(&shared.store)
                .add_vault(&add.name, add.id.as_deref(), &add.description)
                .map_err(error)?;
            Reply::json(200, &vault)
        }
        "/__sim/items/put" if post => {
            let put: PutItem = parse(body)?;
            let item = put.item.to_full_item().map_err(error)?;
            let item = lock(&shared.store)
                .put_item(&put.vault, item)
                .map_err(error)?;
            Reply::json(200, &item.summary())
        }
        "/__sim/items/set-field" if post => {
            let set: SetField = parse(body)?;
            let item = lock(&shared.store)
                .set_field(&set.vault, &set.item, &set.label, &set.value)
                .map_err(error)?;
            Reply::json(200, &item.summary())
        }
        "/__sim/items/set-file" if post => {
            let set: SetFile = parse(body)?;
            let content = match (set.content, set.base64) {
                (Some(_), Some(_)) => return Err(error(SimError::AmbiguousFile(set.name))),
                (Some(text), None) => text.into_bytes(),
                (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|_| error(SimError::InvalidBase64(set.name.clone())))?,
                (None, None) => Vec::new(),
            };
            let item = lock(&shared.store)
                .set_file(&set.vault, &set.item, &set.name, &content)
                .map_err(error)?;
            Reply::json(200, &item.summary())
        }
        "/__sim/items/delete" if post => {
            let item: ItemRef = parse(body)?;
            lock(&shared.store)
                .delete_item(&item.vault, &item.item)
                .map_err(error)?;
            Reply::NoContent
        }
        "/__sim/tokens" if post => {
            let add: AddToken = parse(body)?;
            lock(&shared.store)
                .add_token(&add.token, &add.vaults)
                .map_err(error)?;
            Reply::NoContent
        }
        "/__sim/tokens/remove" if post => {
            let remove: RemoveToken = parse(body)?;
            lock(&shared.store)
                .remove_token(&remove.token)
                .map_err(error)?;
            Reply::NoContent
        }
        _ => Reply::error(404, format!("no simulator admin endpoint {method} {path}")),
    })
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| Reply::error(400, format!("invalid body: {e}")))
}

fn error(e: SimError) -> Reply {
    let status = match e {
        SimError::VaultNotFound(_)
        | SimError::ItemNotFound(_)
        | SimError::FileNotFound(_)
        | SimError::UnknownToken => 404,
        SimError::Stopped => 503,
        _ => 400,
    };
    Reply::error(status, e.to_string())
}
