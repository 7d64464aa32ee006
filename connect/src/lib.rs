//! Everything that talks to, or describes, the 1Password Connect REST API.

mod client;
mod endpoint;
mod error;
mod listing;
mod mac;
pub mod model;
mod path;
pub mod resolve;

pub use client::{
    ConfigError, ConnectClient, ConnectConfig, RequestObserver, Resolved, RetryPolicy, Token,
    install_crypto_provider,
};
pub use endpoint::Endpoint;
pub use error::ConnectError;
pub use mac::hmac_sha256;
pub use path::{InvalidItemPath, ItemPath};
