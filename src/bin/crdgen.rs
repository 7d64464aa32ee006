//! Prints the OnePasswordItem CRD: `cargo run --bin crdgen > crds/onepassworditem.yaml`.

fn main() {
    print!("{}", onepassword_secrets_operator::crd::crd_yaml());
}
