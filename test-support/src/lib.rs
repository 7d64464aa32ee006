//! What the end-to-end tests (`tests/e2e.rs`) and the packaging tests (`tests/packaging.rs`)
//! share: the control plane that `bash tests/run` starts (`OPSYNC_E2E_STATE_DIR`), its kubectl
//! and helm, namespaces, CRDs, the operator as a process, kubeconfigs for other identities, and
//! bounded waits.
//!
//! Nothing here knows the operator's types: the tests bring those.

use base64::Engine as _;

mod control_plane;
pub mod kubeconfig;
mod process;
mod wait;

pub use control_plane::{ControlPlane, env_value};
pub use process::{OperatorProcess, run, run_with_input};
pub use wait::{wait_for, wait_for_blocking};

/// `<prefix>-<6 hex digits>`: a name no other test or run uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Standard base64, as in a Secret's `data`.
pub fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The repository's root (the operator crate's folder).
pub fn repo_root() -> &'static std::path::Path {
    std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}
