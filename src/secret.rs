//! Pure conversion of a 1Password item into a Kubernetes Secret.
