//! Kubeconfigs made from the admin's: the same credentials through another address, or acting
//! as another identity (impersonation), so an operator gets exactly the RBAC bound to it.

use serde_json::Value;

fn parse(kubeconfig: &str) -> Value {
    serde_saphyr::from_str(kubeconfig).expect("kubeconfig YAML")
}

fn print(kubeconfig: &Value) -> String {
    serde_saphyr::to_string(kubeconfig).expect("kubeconfig YAML")
}

/// The API server's URL (the first cluster's `server`).
pub fn server(kubeconfig: &str) -> String {
    parse(kubeconfig)["clusters"][0]["cluster"]["server"]
        .as_str()
        .expect("a server in the kubeconfig")
        .to_string()
}

/// The kubeconfig with every cluster's `server` set to `server`.
pub fn with_server(kubeconfig: &str, server: &str) -> String {
    let mut config = parse(kubeconfig);
    for entry in config["clusters"]
        .as_array_mut()
        .expect("kubeconfig clusters")
    {
        entry["cluster"]["server"] = server.into();
    }
    print(&config)
}

/// The kubeconfig with every user acting as `user` (`as`) and, when `groups` is not empty, in
/// those groups (`as-groups`).
pub fn impersonating(kubeconfig: &str, user: &str, groups: &[String]) -> String {
    let mut config = parse(kubeconfig);
    for entry in config["users"].as_array_mut().expect("kubeconfig users") {
        let credentials = entry["user"].as_object_mut().expect("a user entry");
        credentials.insert("as".into(), user.into());
        if !groups.is_empty() {
            credentials.insert("as-groups".into(), groups.into());
        }
    }
    print(&config)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As `tests/envtest/start` writes it (with a shorter CA).
    const ADMIN: &str = "\
apiVersion: v1
kind: Config
clusters:
- name: envtest
  cluster:
    server: https://127.0.0.1:36443
    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUJkekNDQVIyZ0F3SUJBZ0lVRmFrZUZha2VGYWtlRmFrZUZha2VGYWtlRmFrZUZha2V3Q2dZSUtvWkl6ajBFQXdJd0ZERVNNQkFHQTFVRUF3d0paVzUyZEdWemRDMWpZVEFlRncweU5qQXhNREV3TURBd01EQmFGdzB6TmpBeE1ERXdNREF3TURCYQotLS0tLUVORCBDRVJUSUZJQ0FURS0tLS0tCg==
contexts:
- name: envtest
  context:
    cluster: envtest
    user: admin
current-context: envtest
users:
- name: admin
  user:
    token: 0123456789abcdef
";

    fn read(kubeconfig: &str) -> kube::config::Kubeconfig {
        kube::config::Kubeconfig::from_yaml(kubeconfig).expect("a kubeconfig kube reads")
    }

    #[test]
    fn the_server_is_read_and_replaced() {
        assert_eq!(server(ADMIN), "https://127.0.0.1:36443");
        let through = with_server(ADMIN, "https://127.0.0.1:4000");
        assert_eq!(server(&through), "https://127.0.0.1:4000");
        let config = read(&through);
        assert_eq!(config.current_context.as_deref(), Some("envtest"));
        let auth = config.auth_infos[0].auth_info.as_ref().unwrap();
        assert!(auth.token.is_some());
        let cluster = config.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(
            cluster.certificate_authority_data.as_deref(),
            read(ADMIN).clusters[0]
                .cluster
                .as_ref()
                .unwrap()
                .certificate_authority_data
                .as_deref()
        );
    }

    #[test]
    fn a_real_sized_ca_survives_the_round_trip() {
        let ca = "LS0tQ0VSVA".repeat(200);
        let admin = ADMIN.replace("LS0tLS1CRUdJTiBDRVJU", &ca);
        let through = read(&with_server(&admin, "https://127.0.0.1:4000"));
        let data = through.clusters[0].cluster.as_ref().unwrap();
        assert!(
            data.certificate_authority_data
                .as_ref()
                .unwrap()
                .starts_with(&ca)
        );
    }

    #[test]
    fn impersonation_keeps_the_credentials_and_adds_the_identity() {
        let groups = [
            "system:serviceaccounts".to_string(),
            "system:serviceaccounts:ns".into(),
        ];
        let config = read(&impersonating(
            ADMIN,
            "system:serviceaccount:ns:op",
            &groups,
        ));
        let auth = config.auth_infos[0].auth_info.as_ref().unwrap();
        assert!(auth.token.is_some());
        assert_eq!(
            auth.impersonate.as_deref(),
            Some("system:serviceaccount:ns:op")
        );
        assert_eq!(auth.impersonate_groups.as_deref(), Some(&groups[..]));

        let config = read(&impersonating(ADMIN, "someone", &[]));
        let auth = config.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(auth.impersonate.as_deref(), Some("someone"));
        assert_eq!(auth.impersonate_groups, None);
    }
}
