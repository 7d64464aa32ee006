//! Everything that talks to, or describes, the 1Password Connect REST API: the client
//! (`client`), its wire types (`model`), item paths (`path`), how titles and ids resolve
//! (`resolve`), streamed listings (`listing`), the endpoint names the client's metrics and the
//! simulator's counts share (`endpoint`), and HMAC-SHA256 (`mac`). No Kubernetes in it: the
//! operator crate turns what it reads into Secrets.

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
