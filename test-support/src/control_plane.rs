//! The Kubernetes control plane of `tests/envtest/start`: where it is, its kubectl and helm,
//! and what tests do with them (namespaces, CRDs, envtest scripts).

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
};

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

use crate::{repo_root, run, run_with_input};

/// A control plane started by `tests/envtest/start` in a state directory.
#[derive(Debug)]
pub struct ControlPlane {
    pub state_dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
    pub helm: PathBuf,
    /// Started by one test for itself ([`ControlPlane::start_own`]), and stopped when it ends.
    own: bool,
}

impl ControlPlane {
    /// The control plane that `bash tests/run` started (`OPSYNC_E2E_STATE_DIR`), read once per
    /// test process. Fails the test, never skips it, when there is none.
    pub fn shared() -> &'static ControlPlane {
        static SHARED: OnceLock<Result<ControlPlane, String>> = OnceLock::new();
        match SHARED.get_or_init(ControlPlane::from_env) {
            Ok(control_plane) => control_plane,
            Err(e) => panic!("{e}"),
        }
    }

    /// The control plane of `OPSYNC_E2E_STATE_DIR`.
    pub fn from_env() -> Result<ControlPlane, String> {
        let state_dir = std::env::var_os("OPSYNC_E2E_STATE_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .ok_or(
                "OPSYNC_E2E_STATE_DIR is not set: the end-to-end and packaging tests need the \
                 Kubernetes control plane (and its kubectl and helm) that `bash tests/run` \
                 starts. Run `bash tests/run` (or start one with `tests/envtest/start <dir>` and \
                 set OPSYNC_E2E_STATE_DIR=<dir>).",
            )?;
        ControlPlane::in_state_dir(state_dir)
    }

    /// A control plane of the caller's own, started with `tests/envtest/start` (a few seconds,
    /// the binaries being those `bash tests/run` built) in a fresh directory under `parent`.
    /// [`ControlPlane::stop`] stops it.
    pub fn start_own(name: &str, parent: &Path) -> Result<ControlPlane, String> {
        fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
        let state_dir = parent.join(format!("{name}-{:08x}", rand::random::<u32>()));
        let start = repo_root().join("tests/envtest/start");
        let out = Command::new(&start)
            .arg(&state_dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", start.display()))?;
        if !out.status.success() {
            let _ = Command::new(start.with_file_name("stop"))
                .arg(&state_dir)
                .output();
            return Err(format!(
                "tests/envtest/start {} failed ({}): {}",
                state_dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let mut control_plane = ControlPlane::in_state_dir(state_dir)?;
        control_plane.own = true;
        Ok(control_plane)
    }

    /// Whether a test started it for itself.
    pub fn is_own(&self) -> bool {
        self.own
    }

    /// Stops a control plane of [`ControlPlane::start_own`] and removes its state, logs
    /// included unless the test failed.
    pub fn stop(&self) {
        assert!(self.own, "only a test's own control plane is stopped");
        let stop = repo_root().join("tests/envtest/stop");
        let stopped = Command::new(&stop)
            .arg(&self.state_dir)
            .stdin(Stdio::null())
            .output();
        match stopped {
            Ok(out) if out.status.success() => {
                if !std::thread::panicking() {
                    let _ = fs::remove_dir_all(&self.state_dir);
                }
            }
            other => eprintln!(
                "stopping the control plane in {} failed: {other:?}",
                self.state_dir.display()
            ),
        }
    }

    fn in_state_dir(state_dir: PathBuf) -> Result<ControlPlane, String> {
        let env_file = state_dir.join("env");
        let env = fs::read_to_string(&env_file).map_err(|e| {
            format!(
                "cannot read {} ({e}): is the control plane of OPSYNC_E2E_STATE_DIR running? \
                 Run `bash tests/run`.",
                env_file.display()
            )
        })?;
        let bin_dir = env_value(&env, "ENVTEST_BIN_DIR")
            .map(PathBuf::from)
            .ok_or_else(|| format!("{} sets no ENVTEST_BIN_DIR", env_file.display()))?;
        let kubeconfig = env_value(&env, "KUBECONFIG")
            .map(PathBuf::from)
            .unwrap_or_else(|| state_dir.join("kubeconfig"));
        let control_plane = ControlPlane {
            kubectl: bin_dir.join("kubectl"),
            helm: bin_dir.join("helm"),
            kubeconfig,
            state_dir,
            own: false,
        };
        for file in [
            &control_plane.kubectl,
            &control_plane.helm,
            &control_plane.kubeconfig,
        ] {
            if !file.exists() {
                return Err(format!(
                    "{} is missing; run `bash tests/run`",
                    file.display()
                ));
            }
        }
        Ok(control_plane)
    }

    /// A Kubernetes client with the admin's credentials.
    pub async fn client(&self) -> Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig).expect("read the kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("a client configuration from the kubeconfig");
        Client::try_from(config).expect("a Kubernetes client")
    }

    /// The admin's kubeconfig, as text.
    pub fn admin_kubeconfig(&self) -> String {
        fs::read_to_string(&self.kubeconfig).expect("read the kubeconfig")
    }

    /// kubectl as the admin, with its cache in the state directory and nothing read from the
    /// test's environment: add the arguments and run it.
    pub fn kubectl_command(&self) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.env_remove("KUBECONFIG")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.state_dir.join("kubectl-cache"));
        cmd
    }

    /// Runs kubectl (blocking), in `namespace` if given, with `stdin` if given; stdout on
    /// success, stderr (and stdout) on failure.
    pub fn kubectl(
        &self,
        namespace: Option<&str>,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, String> {
        let mut cmd = self.kubectl_command();
        cmd.arg("--request-timeout=30s");
        if let Some(ns) = namespace {
            cmd.args(["--namespace", ns]);
        }
        cmd.args(args);
        run_with_input(cmd, stdin)
    }

    /// Runs helm (blocking) as the admin, its cache, config and data in the state directory
    /// (nothing in the user's home).
    pub fn helm(&self, args: &[&str]) -> Result<String, String> {
        let home = self.state_dir.join("helm");
        let mut cmd = Command::new(&self.helm);
        cmd.env_remove("KUBECONFIG")
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args);
        run(cmd)
    }

    /// Creates a namespace, labelled `opsync-e2e=true` so that a person can tell what tests
    /// left behind.
    pub fn create_namespace(&self, name: &str) -> Result<(), String> {
        let namespace = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"opsync-e2e": "true"}},
        });
        self.kubectl(None, &["create", "-f", "-"], Some(&namespace.to_string()))
            .map(drop)
            .map_err(|e| format!("cannot create namespace {name}: {e}"))
    }

    /// Deletes a namespace without waiting for what is in it to go.
    pub fn delete_namespace(&self, name: &str) -> Result<(), String> {
        self.kubectl(None, &["delete", "namespace", name, "--wait=false"], None)
            .map(drop)
    }

    /// Waits until the CRD `name` (`<plural>.<group>`) is established: served by the API
    /// server.
    pub fn wait_established(&self, name: &str) -> Result<(), String> {
        self.kubectl(
            None,
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{name}"),
            ],
            None,
        )
        .map(drop)
    }

    /// Runs a script of `tests/envtest` (`restart-apiserver`, ...) against this control plane.
    pub fn envtest(&self, script: &str) -> Result<(), String> {
        let mut cmd = Command::new(repo_root().join("tests/envtest").join(script));
        cmd.arg(&self.state_dir);
        run(cmd).map(drop)
    }
}

/// `export KEY=value` in a file written by `tests/envtest/start` (bash `%q` quoting).
pub fn env_value(env: &str, key: &str) -> Option<String> {
    env.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("export ")?.strip_prefix(key)?;
        let value = rest.strip_prefix('=')?;
        let value = value
            .strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .map(str::to_string)
            .unwrap_or_else(|| value.replace('\\', ""));
        Some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_values_are_read_as_bash_wrote_them() {
        let env = "# Written by tests/envtest/start\n\
                   export KUBECONFIG=/tmp/opsync-e2e.x/kubeconfig\n\
                   export ENVTEST_BIN_DIR='/root/.cache/opsync envtest/bin'\n\
                   export APISERVER_URL=https://127.0.0.1:6443\n\
                   export ODD=a\\ b\n";
        assert_eq!(
            env_value(env, "KUBECONFIG").as_deref(),
            Some("/tmp/opsync-e2e.x/kubeconfig")
        );
        assert_eq!(
            env_value(env, "ENVTEST_BIN_DIR").as_deref(),
            Some("/root/.cache/opsync envtest/bin")
        );
        assert_eq!(env_value(env, "ODD").as_deref(), Some("a b"));
        assert_eq!(env_value(env, "APISERVER"), None);
        assert_eq!(env_value(env, "MISSING"), None);
    }
}
