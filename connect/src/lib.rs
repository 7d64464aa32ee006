//! Everything that talks to, or describes, the 1Password Connect REST API.

mod client;
mod endpoint;
mod error;
mod listing;
#[cfg(feature = "title-lookup")]
mod lookup;
mod mac;
pub mod model;
mod path;
pub mod resolve;

pub use client::{
    ConfigError, ConnectClient, ConnectConfig, RequestObserver, RetryPolicy, Token,
    install_crypto_provider,
};
pub use endpoint::Endpoint;
pub use error::ConnectError;
#[cfg(feature = "title-lookup")]
pub use lookup::Resolved;
pub use mac::hmac_sha256;
pub use path::{InvalidItemPath, ItemPath};
