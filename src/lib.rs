//! A Kubernetes operator that syncs 1Password items, read through 1Password Connect, into Secrets.
//! A drop-in replacement for the official Go operator (same CRD, annotations and env vars).

pub mod catalog;
pub mod config;
pub mod connect;
pub mod controller;
pub mod crd;
pub mod digest;
pub mod http;
pub mod leader;
pub mod policy;
pub mod restart;
pub mod secret;
pub mod sim;
pub mod telemetry;
pub mod vocabulary;
