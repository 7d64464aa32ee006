//! Prints the OnePasswordItem CRD:
//! `cargo run --bin crdgen > crds/onepassworditem.yaml`, and the same into
//! `config/crd/bases/` and `charts/onepassword-secrets-operator/crds/` (`make crds` writes all
//! three; a test fails when any is stale).

fn main() {
    print!("{}", onepassword_secrets_operator::crd::crd_yaml());
}
