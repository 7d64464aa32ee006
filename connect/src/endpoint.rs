//! The Connect API's endpoints and their names: one table for the client's metrics and the
//! simulator's counts and fault scoping, so that a name in a test means the same request on both
//! sides.

/// An endpoint of the Connect REST API (spec 1.7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// `GET /v1/vaults`
    ListVaults,
    /// `GET /v1/vaults/{vault}`
    GetVault,
    /// `GET /v1/vaults/{vault}/items`
    ListItems,
    /// `POST /v1/vaults/{vault}/items`
    CreateItem,
    /// `GET /v1/vaults/{vault}/items/{item}`
    GetItem,
    /// `PUT /v1/vaults/{vault}/items/{item}`
    ReplaceItem,
    /// `DELETE /v1/vaults/{vault}/items/{item}`
    DeleteItem,
    /// `GET /v1/vaults/{vault}/items/{item}/files`
    ListFiles,
    /// `GET /v1/vaults/{vault}/items/{item}/files/{file}`
    GetFile,
    /// `GET /v1/vaults/{vault}/items/{item}/files/{file}/content`
    GetFileContent,
    /// `GET /heartbeat`
    Heartbeat,
    /// `GET /health`
    Health,
    /// `GET /metrics`
    Metrics,
}

impl Endpoint {
    /// A bounded, stable name (a metrics label, a simulator count key).
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ListVaults => "list_vaults",
            Endpoint::GetVault => "get_vault",
            Endpoint::ListItems => "list_items",
            Endpoint::CreateItem => "create_item",
            Endpoint::GetItem => "get_item",
            Endpoint::ReplaceItem => "replace_item",
            Endpoint::DeleteItem => "delete_item",
            Endpoint::ListFiles => "list_files",
            Endpoint::GetFile => "get_file",
            Endpoint::GetFileContent => "get_file_content",
            Endpoint::Heartbeat => "heartbeat",
            Endpoint::Health => "health",
            Endpoint::Metrics => "metrics",
        }
    }
}
