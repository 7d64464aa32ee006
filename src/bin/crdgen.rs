//! Prints the OnePasswordItem CRD: `cargo run --bin crdgen > crds/onepassworditem.yaml`, and
//! the same into `config/crd/bases/`. With `--helm`, prints it as the Helm chart's
//! `charts/onepassword-secrets-operator/templates/crd.yaml` (behind `crds.enabled`, with the
//! chart's labels and `crds.keep`). `make crds` writes all three; a test fails when any is stale.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        [] => print!("{}", onepassword_secrets_operator::crd::crd_yaml()),
        ["--helm"] => print!("{}", onepassword_secrets_operator::crd::crd_helm_template()),
        _ => {
            eprintln!("usage: crdgen [--helm]");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
