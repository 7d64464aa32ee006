//! Prints the OnePasswordItem CRD:
//! `cargo run --bin crdgen > crds/onepassworditem.yaml`, and the same into
//! `config/crd/bases/onepassworditem.yaml` (a test fails when either is stale).

fn main() {
    print!("{}", onepassword_secrets_operator::crd::crd_yaml());
}
