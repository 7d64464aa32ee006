//! A Kubernetes operator that syncs 1Password items, read through 1Password Connect, into Secrets.
//! A drop-in replacement for the official Go operator (same CRD, annotations and env vars).
//!
//! The Connect client lives in its own crate (`connect/`, no Kubernetes in it); `connect` names
//! it here so that the operator's modules say `crate::connect::...`.

pub use onepassword_connect as connect;

pub mod catalog;
pub mod config;
pub mod controller;
pub mod crd;
pub mod digest;
pub mod http;
pub mod leader;
pub mod policy;
pub mod restart;
pub mod secret;
pub mod telemetry;
pub mod vocabulary;
