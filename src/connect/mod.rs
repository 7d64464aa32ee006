//! Everything that talks to, or describes, the 1Password Connect REST API.

mod client;
mod error;
mod listing;
pub mod model;
mod path;
pub mod resolve;

pub use client::{
    ConfigError, ConnectClient, ConnectConfig, Endpoint, RequestObserver, Resolved, RetryPolicy,
    Token, install_crypto_provider,
};
pub use error::ConnectError;
pub use path::{InvalidItemPath, ItemPath};
