//! A Kubernetes operator that syncs 1Password items, read through 1Password Connect, into Secrets.
//! A drop-in replacement for the official Go operator (same CRD, annotations and env vars).

pub mod connect;
pub mod crd;
pub mod secret;
pub mod sim;
