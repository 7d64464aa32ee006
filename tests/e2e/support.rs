//! The end-to-end harness: the control plane `bash tests/run` starts (`OPSYNC_E2E_STATE_DIR`), a
//! Connect simulator and a namespace per test, the operator binary as a process, kubectl for what
//! a user would type, a `kube::Client` for the checks, and bounded polling.
//!
//! Every test holds the API server lock: shared, or exclusive for the test that restarts the API
//! server; a test that changes what is cluster-wide (a CRD) starts a control plane of its own
//! ([`TestEnv::with_own_control_plane`]). Operators are stopped (SIGTERM, then SIGKILL) when their test ends, pass or fail; a
//! failing test prints the operators' logs and the objects of its namespace.

use std::{
    collections::BTreeMap,
    fmt::{Debug, Write as _},
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use connect_sim::{Seed, Simulator, TokenAccess};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::{
    apps::v1::ReplicaSet,
    core::v1::{Namespace, Secret},
    events::v1::Event,
};
use kube::{
    Api, Client, Config, Resource, ResourceExt,
    api::{ListParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use onepassword_secrets_operator::{crd::OnePasswordItem, secret::ITEM_VERSION_ANNOTATION};
use serde::de::DeserializeOwned;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `POLLING_INTERVAL` of every operator the tests start.
pub const POLL: Duration = Duration::from_secs(2);
/// How long to wait for something that should happen (a sync, a garbage collection, a rollout).
pub const TIMEOUT: Duration = Duration::from_secs(45);
/// How long to wait for the garbage collector of kube-controller-manager, whose retries back off
/// when an owner changed under it.
pub const GC_TIMEOUT: Duration = Duration::from_secs(90);
/// The Connect token every simulator accepts for every vault.
pub const TOKEN: &str = "e2e-connect-token-zq7vx3kp";

/// Our CRD, as `make crds` generates it.
pub const OUR_CRD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/onepassworditem.yaml");
/// The official operator's CRD (v1.12.0), the one a migrating cluster still has.
pub const OFFICIAL_CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/official/onepassworditem-crd-v1.12.0.yaml"
);
const CRD_NAME: &str = "onepassworditems.onepassword.com";
const OPERATOR_BIN: &str = env!("CARGO_BIN_EXE_onepassword-operator");
/// SIGTERM, then this long for a graceful stop, then SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Tests that only use the API server share it; the one that restarts it takes it alone.
static API_SERVER: RwLock<()> = RwLock::const_new(());

/// Every secret value a test put into a simulator: no operator log may contain one.
static SEEDED_VALUES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A distinctive secret value (`<label>-<random hex>`), remembered for the log leak check.
pub fn secret_value(label: &str) -> String {
    let value = format!("{label}-{:016x}", rand::random::<u64>());
    remember_secret(&value);
    value
}

/// Adds a value to the log leak check.
pub fn remember_secret(value: &str) {
    SEEDED_VALUES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(value.to_string());
}

/// The control plane started by `tests/envtest/start`.
struct Cluster {
    state_dir: PathBuf,
    kubeconfig: PathBuf,
    kubectl: PathBuf,
    /// Started by one test for itself, and stopped when it ends.
    own: bool,
}

static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// The control plane, with the CRD installed and established (once per test process). Fails
/// the test, never skips it, when there is none.
fn cluster() -> &'static Cluster {
    let cluster = CLUSTER.get_or_init(|| {
        let cluster = Cluster::from_env()?;
        cluster.install_crd()?;
        Ok(cluster)
    });
    match cluster {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

impl Cluster {
    fn from_env() -> Result<Cluster, String> {
        let state_dir = std::env::var_os("OPSYNC_E2E_STATE_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .ok_or(
                "OPSYNC_E2E_STATE_DIR is not set: the end-to-end tests need the Kubernetes control \
                 plane that `bash tests/run` starts. Run `bash tests/run` (or start one with \
                 `tests/envtest/start <dir>` and set OPSYNC_E2E_STATE_DIR=<dir>).",
            )?;
        Cluster::in_state_dir(state_dir)
    }

    /// A control plane of the caller's own, started with `tests/envtest/start` (a few seconds,
    /// the binaries being those `bash tests/run` built) in a fresh directory under
    /// `target/tmp`. [`Cluster::stop`] stops it.
    fn start_own(name: &str) -> Result<Cluster, String> {
        let parent = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("e2e-control-planes");
        fs::create_dir_all(&parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
        let state_dir = parent.join(format!("{name}-{:08x}", rand::random::<u32>()));
        let start = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/envtest/start");
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
        let mut cluster = Cluster::in_state_dir(state_dir)?;
        cluster.own = true;
        Ok(cluster)
    }

    /// Stops a control plane of [`Cluster::start_own`] and removes its state, logs included
    /// unless the test failed.
    fn stop(&self) {
        assert!(self.own, "only a test's own control plane is stopped");
        let stop = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/envtest/stop");
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

    fn in_state_dir(state_dir: PathBuf) -> Result<Cluster, String> {
        let env_file = state_dir.join("env");
        let env = fs::read_to_string(&env_file).map_err(|e| {
            format!(
                "cannot read {} ({e}): is the control plane of OPSYNC_E2E_STATE_DIR running? \
                 Run `bash tests/run`.",
                env_file.display()
            )
        })?;
        let bin_dir = env_value(&env, "ENVTEST_BIN_DIR")
            .ok_or_else(|| format!("{} sets no ENVTEST_BIN_DIR", env_file.display()))?;
        let kubectl = PathBuf::from(bin_dir).join("kubectl");
        let kubeconfig = state_dir.join("kubeconfig");
        for file in [&kubectl, &kubeconfig] {
            if !file.exists() {
                return Err(format!(
                    "{} is missing; run `bash tests/run`",
                    file.display()
                ));
            }
        }
        Ok(Cluster {
            state_dir,
            kubeconfig,
            kubectl,
            own: false,
        })
    }

    fn install_crd(&self) -> Result<(), String> {
        self.install_crd_with(&["apply", "--server-side", "-f", OUR_CRD])
    }

    /// Installs a OnePasswordItem CRD (ours, or another one) with `kubectl <args>` and waits
    /// until it is served.
    fn install_crd_with(&self, args: &[&str]) -> Result<(), String> {
        self.kubectl(None, args, None)
            .map_err(|e| format!("installing the CRD failed: {e}"))?;
        self.kubectl(
            None,
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{CRD_NAME}"),
            ],
            None,
        )
        .map_err(|e| format!("the CRD did not become Established: {e}"))?;
        Ok(())
    }

    /// Runs kubectl (blocking); stdout on success, stderr (and stdout) on failure.
    fn kubectl(
        &self,
        namespace: Option<&str>,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, String> {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(self.state_dir.join("kubectl-cache"))
            .arg("--request-timeout=20s");
        if let Some(ns) = namespace {
            cmd.args(["--namespace", ns]);
        }
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.kubectl.display()))?;
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            pipe.write_all(input.as_bytes())
                .map_err(|e| format!("writing kubectl's stdin: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("waiting for kubectl: {e}"))?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            Ok(stdout)
        } else {
            Err(format!(
                "kubectl {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr),
                stdout
            ))
        }
    }
}

/// `export KEY=value` in a file written by `tests/envtest/start` (bash `%q` quoting).
fn env_value(env: &str, key: &str) -> Option<String> {
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

/// Polls `check` every 250 ms until it returns `Ok`, failing the test after `timeout` with what
/// the last check said.
pub async fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(e) => e,
        };
        if started.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last check: {last}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Which operator a test started, to stop or restart it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OperatorId(usize);

/// How to run the operator. [`TestEnv::operator_config`] gives the usual one.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// `WATCH_NAMESPACE`.
    pub namespaces: Vec<String>,
    pub connect_host: String,
    pub token: String,
    /// More environment variables (they win over the defaults).
    pub env: Vec<(String, String)>,
    /// Another program to run instead of this operator (the official one), with its arguments.
    pub command: Option<Vec<String>>,
}

impl OperatorConfig {
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// A running operator process; stopped on drop.
struct Operator {
    config: OperatorConfig,
    child: Option<Child>,
    log: PathBuf,
}

impl Operator {
    fn spawn(config: OperatorConfig, log: PathBuf, cluster: &Cluster) -> Operator {
        let file = fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let (program, args) = match &config.command {
            Some(command) => (command[0].as_str(), &command[1..]),
            None => (OPERATOR_BIN, &[][..]),
        };
        let mut cmd = Command::new(program);
        cmd.args(args);
        // Nothing from the test's environment (KUBECONFIG, in-cluster variables, RUST_LOG, ...).
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_default())
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("OP_CONNECT_HOST", &config.connect_host)
            .env("OP_CONNECT_TOKEN", &config.token)
            .env("WATCH_NAMESPACE", config.namespaces.join(","))
            .env("POLLING_INTERVAL", POLL.as_secs().to_string())
            .env("METRICS_BIND_ADDRESS", "0")
            .env("HEALTH_PROBE_BIND_ADDRESS", "0")
            .env("LOG_LEVEL", "debug")
            .envs(config.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log file handle"))
            .stderr(file);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program}: {e}"));
        Operator {
            config,
            child: Some(child),
            log,
        }
    }

    /// SIGTERM, up to [`STOP_GRACE`] to exit, then SIGKILL. `None` when it was already stopped.
    fn stop(&mut self) -> Option<(ExitStatus, Duration)> {
        let mut child = self.child.take()?;
        let started = Instant::now();
        if let Ok(Some(status)) = child.try_wait() {
            return Some((status, Duration::ZERO));
        }
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        while started.elapsed() < STOP_GRACE {
            if let Ok(Some(status)) = child.try_wait() {
                return Some((status, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let status = child.wait().expect("wait for the killed operator");
        Some((status, started.elapsed()))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.stop();
    }
}

enum ApiServerLock {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
    /// The test's own control plane: no other test uses it.
    Own,
}

/// One test's world: its namespace(s), its simulator, its operators.
pub struct TestEnv {
    pub name: String,
    /// The test's namespace (operators watch it by default).
    pub ns: String,
    pub client: Client,
    pub sim: Simulator,
    cluster: &'static Cluster,
    namespaces: Vec<String>,
    operators: Vec<Operator>,
    log_dir: PathBuf,
    started: Instant,
    finished: bool,
    // Declared last: released after the operators are stopped.
    _lock: ApiServerLock,
}

impl TestEnv {
    /// A test that shares the API server with the others.
    pub async fn new(name: &str, seed: Seed) -> TestEnv {
        let lock = ApiServerLock::Shared(API_SERVER.read().await);
        Self::create(name, seed, lock).await
    }

    /// A test that disturbs the API server: no other test runs meanwhile.
    pub async fn exclusive(name: &str, seed: Seed) -> TestEnv {
        let lock = ApiServerLock::Exclusive(API_SERVER.write().await);
        Self::create(name, seed, lock).await
    }

    /// A test with a control plane of its own (started here, stopped when the test ends), with
    /// no CRD installed: for a test that changes what is cluster-wide, such as the CRD.
    pub async fn with_own_control_plane(name: &str, seed: Seed) -> TestEnv {
        let name_owned = name.to_string();
        let cluster = tokio::task::spawn_blocking(move || Cluster::start_own(&name_owned))
            .await
            .expect("control plane task")
            .unwrap_or_else(|e| panic!("{e}"));
        // Lives as long as the test process, as the shared one does (a few hundred bytes).
        let cluster: &'static Cluster = Box::leak(Box::new(cluster));
        Self::create_on(name, seed, ApiServerLock::Own, cluster).await
    }

    async fn create(name: &str, seed: Seed, lock: ApiServerLock) -> TestEnv {
        let cluster = tokio::task::spawn_blocking(cluster)
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        Self::create_on(name, seed, lock, cluster).await
    }

    async fn create_on(
        name: &str,
        seed: Seed,
        lock: ApiServerLock,
        cluster: &'static Cluster,
    ) -> TestEnv {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kubeconfig = Kubeconfig::read_from(&cluster.kubeconfig).expect("read the kubeconfig");
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("a client configuration from the kubeconfig");
        let client = Client::try_from(config).expect("a Kubernetes client");
        let sim = Simulator::start(seed.token(TOKEN, TokenAccess::All))
            .expect("start the Connect simulator");
        let log_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("e2e-logs")
            .join(name);
        let _ = fs::remove_dir_all(&log_dir);
        fs::create_dir_all(&log_dir).expect("create the log directory");
        let mut env = TestEnv {
            name: name.to_string(),
            ns: String::new(),
            client,
            sim,
            cluster,
            namespaces: Vec::new(),
            operators: Vec::new(),
            log_dir,
            started: Instant::now(),
            finished: false,
            _lock: lock,
        };
        env.ns = env.create_namespace("").await;
        env
    }

    /// Creates a namespace named after the test (plus `suffix`), removed when the test ends.
    pub async fn create_namespace(&mut self, suffix: &str) -> String {
        let slug: String = self
            .name
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(36)
            .collect();
        let mut name = format!("e2e-{}", slug.trim_matches('-'));
        if !suffix.is_empty() {
            name.push('-');
            name.push_str(suffix);
        }
        let name = format!("{name}-{:06x}", rand::random::<u32>() & 0xff_ffff);
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"opsync-e2e": "true"}},
        }))
        .expect("a Namespace");
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e}"));
        self.namespaces.push(name.clone());
        name
    }

    /// The usual operator: watches the test's namespace, talks to its simulator.
    pub fn operator_config(&self) -> OperatorConfig {
        OperatorConfig {
            namespaces: vec![self.ns.clone()],
            connect_host: self.sim.url(),
            token: TOKEN.into(),
            env: Vec::new(),
            command: None,
        }
    }

    pub fn start_operator(&mut self, config: OperatorConfig) -> OperatorId {
        let id = OperatorId(self.operators.len());
        let log = self.log_dir.join(format!("operator-{}.log", id.0));
        self.operators
            .push(Operator::spawn(config, log, self.cluster));
        id
    }

    /// Stops an operator gracefully and checks that it exited cleanly and promptly.
    pub fn stop_operator(&mut self, id: OperatorId) {
        let operator = &mut self.operators[id.0];
        let log = operator.log.display().to_string();
        if let Some((status, took)) = operator.stop() {
            assert!(
                status.success(),
                "operator {} did not exit cleanly on SIGTERM: {status} after {took:?} (log: {log})",
                id.0
            );
        }
    }

    /// Kills an operator with SIGKILL, as a crash or a lost node would.
    pub fn kill_operator(&mut self, id: OperatorId) {
        if let Some(mut child) = self.operators[id.0].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes an operator (SIGSTOP): its connections stay open but it reads nothing, as a
    /// process stuck or starved would. [`TestEnv::resume_operator`] lets it go on.
    pub fn pause_operator(&mut self, id: OperatorId) {
        self.signal_operator(id, "-STOP");
    }

    pub fn resume_operator(&mut self, id: OperatorId) {
        self.signal_operator(id, "-CONT");
    }

    fn signal_operator(&mut self, id: OperatorId, signal: &str) {
        let child = self.operators[id.0]
            .child
            .as_ref()
            .expect("the operator is running");
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Waits for an operator to exit by itself (a configuration it refuses) and returns how.
    pub async fn wait_exit(&mut self, id: OperatorId) -> ExitStatus {
        let started = Instant::now();
        loop {
            let child = self.operators[id.0]
                .child
                .as_mut()
                .expect("the operator was started");
            if let Some(status) = child.try_wait().expect("wait for the operator") {
                self.operators[id.0].child = None;
                return status;
            }
            assert!(
                started.elapsed() < TIMEOUT,
                "the operator is still running after {TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How an operator exited, if it has (it is then no longer stopped at the end of the test).
    pub fn exited(&mut self, id: OperatorId) -> Option<ExitStatus> {
        let operator = &mut self.operators[id.0];
        let status = operator
            .child
            .as_mut()?
            .try_wait()
            .expect("wait for the operator")?;
        operator.child = None;
        Some(status)
    }

    /// A kubeconfig with the admin's credentials that reaches the API server through `proxy`.
    pub fn kubeconfig_through(&self, proxy: &StallingProxy) -> PathBuf {
        let admin = fs::read_to_string(&cluster().kubeconfig).expect("read the kubeconfig");
        let mut config: serde_yaml::Value = serde_yaml::from_str(&admin).expect("kubeconfig YAML");
        for entry in config["clusters"]
            .as_sequence_mut()
            .expect("kubeconfig clusters")
        {
            entry["cluster"]["server"] = format!("https://{}", proxy.addr()).into();
        }
        self.test_file(
            &format!("kubeconfig-through-{}", proxy.addr().port()),
            &serde_yaml::to_string(&config).expect("kubeconfig YAML"),
        )
    }

    /// The operator's log so far.
    pub fn operator_log(&self, id: OperatorId) -> String {
        fs::read_to_string(&self.operators[id.0].log).unwrap_or_default()
    }

    /// A file in this test's log directory (kept after the run, with the operator logs).
    pub fn test_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.log_dir.join(name);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// A kubeconfig with the admin's credentials that acts as `user` (impersonation), so the
    /// operator gets exactly the RBAC bound to that user.
    pub fn kubeconfig_as(&self, user: &str) -> PathBuf {
        let admin = fs::read_to_string(&self.cluster.kubeconfig).expect("read the kubeconfig");
        let mut config: serde_yaml::Value = serde_yaml::from_str(&admin).expect("kubeconfig YAML");
        for entry in config["users"].as_sequence_mut().expect("kubeconfig users") {
            entry["user"]
                .as_mapping_mut()
                .expect("a user entry")
                .insert("as".into(), user.into());
        }
        self.test_file(
            &format!("kubeconfig-as-{user}"),
            &serde_yaml::to_string(&config).expect("kubeconfig YAML"),
        )
    }

    /// Stops an operator and starts it again with the same configuration (and a new log file).
    pub fn restart_operator(&mut self, id: OperatorId) -> OperatorId {
        self.stop_operator(id);
        let config = self.operators[id.0].config.clone();
        self.start_operator(config)
    }

    /// Stops every operator, checks that none of them logged a secret value, removes the
    /// namespaces, and records the test's duration. Call it at the end of every test.
    pub async fn finish(mut self) {
        for i in 0..self.operators.len() {
            self.stop_operator(OperatorId(i));
        }
        let values = SEEDED_VALUES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for operator in &self.operators {
            let log = fs::read_to_string(&operator.log).unwrap_or_default();
            assert!(
                !log.contains(TOKEN),
                "the operator log {} contains the Connect token",
                operator.log.display()
            );
            for value in &values {
                assert!(
                    !log.contains(value.as_str()),
                    "the operator log {} contains a secret value",
                    operator.log.display()
                );
            }
        }
        // Nor may what the operator wrote where anyone with read access to the namespace looks:
        // events, and the status (and metadata) of the OnePasswordItems.
        for ns in &self.namespaces {
            let events = Api::<Event>::namespaced(self.client.clone(), ns)
                .list(&ListParams::default())
                .await
                .expect("list Events");
            let items = Api::<OnePasswordItem>::namespaced(self.client.clone(), ns)
                .list(&ListParams::default())
                .await
                .expect("list OnePasswordItems");
            let events = serde_json::to_string(&events.items).expect("events as JSON");
            let statuses: Vec<_> = items.items.iter().map(|i| &i.status).collect();
            let statuses = serde_json::to_string(&statuses).expect("statuses as JSON");
            for value in &values {
                assert!(
                    !events.contains(value.as_str()),
                    "an event in {ns} contains a secret value"
                );
                assert!(
                    !statuses.contains(value.as_str()),
                    "a OnePasswordItem status in {ns} contains a secret value"
                );
            }
        }
        self.finished = true;
        self.delete_namespaces();
        let took = self.started.elapsed();
        println!("{}: {:.1}s", self.name, took.as_secs_f64());
        if let Some(path) = std::env::var_os("OPSYNC_E2E_TIMINGS") {
            let line = format!("{:7.1}s  {}\n", took.as_secs_f64(), self.name);
            let _ = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| f.write_all(line.as_bytes()));
        }
    }

    /// Removes the test's namespaces, or its own control plane with everything in it.
    fn delete_namespaces(&self) {
        if self.cluster.own {
            self.cluster.stop();
            return;
        }
        for ns in &self.namespaces {
            let _ = self
                .cluster
                .kubectl(None, &["delete", "namespace", ns, "--wait=false"], None);
        }
    }

    /// `kubectl apply -f <file>` of a OnePasswordItem CRD (absolute path), as a user would, on
    /// the test's own control plane, and waits until it is served.
    pub async fn install_crd(&self, file: &str) {
        assert!(
            self.cluster.own,
            "the CRD is changed only on a test's own control plane"
        );
        let (cluster, file) = (self.cluster, file.to_string());
        tokio::task::spawn_blocking(move || cluster.install_crd_with(&["apply", "-f", &file]))
            .await
            .expect("kubectl task")
            .unwrap_or_else(|e| panic!("{e}"));
    }

    // ---- kubectl ----

    /// `kubectl <args>` in the test's namespace.
    pub async fn kubectl(&self, args: &[&str]) -> Result<String, String> {
        self.kubectl_in(&self.ns, args, None).await
    }

    /// `kubectl apply -f -` of `yaml` in the test's namespace.
    pub async fn apply(&self, yaml: &str) -> Result<String, String> {
        self.apply_in(&self.ns, yaml).await
    }

    pub async fn apply_in(&self, ns: &str, yaml: &str) -> Result<String, String> {
        self.kubectl_in(ns, &["apply", "-f", "-"], Some(yaml)).await
    }

    pub async fn kubectl_in(
        &self,
        ns: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, String> {
        let ns = ns.to_string();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let stdin = stdin.map(str::to_string);
        let cluster = self.cluster;
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            cluster.kubectl(Some(&ns), &args, stdin.as_deref())
        })
        .await
        .expect("kubectl task")
    }

    /// Runs a script of `tests/envtest` against the control plane.
    pub async fn envtest(&self, script: &str) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/envtest")
            .join(script);
        let state = self.cluster.state_dir.clone();
        let out = tokio::task::spawn_blocking(move || Command::new(&path).arg(&state).output())
            .await
            .expect("envtest task")
            .unwrap_or_else(|e| panic!("cannot run tests/envtest/{script}: {e}"));
        assert!(
            out.status.success(),
            "tests/envtest/{script} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until the operator's log contains `needle` (e.g. it got as far as a poll cycle).
    pub async fn wait_log(&self, id: OperatorId, needle: &str) {
        let log = self.operators[id.0].log.clone();
        wait_for(
            &format!("{needle:?} in {}", log.display()),
            TIMEOUT,
            async || {
                let text = fs::read_to_string(&log).map_err(|e| e.to_string())?;
                text.contains(needle)
                    .then_some(())
                    .ok_or_else(|| "not yet".to_string())
            },
        )
        .await
    }

    // ---- reading objects ----

    /// A namespaced object of the test's namespace, which must exist.
    pub async fn get<K>(&self, name: &str) -> K
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Debug,
    {
        Api::<K>::namespaced(self.client.clone(), &self.ns)
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("reading {} {name}: {e}", K::kind(&())))
    }

    pub async fn secret(&self, name: &str) -> Option<Secret> {
        self.secret_in(&self.ns, name).await
    }

    pub async fn secret_in(&self, ns: &str, name: &str) -> Option<Secret> {
        Api::<Secret>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("reading Secret {ns}/{name}: {e}"))
    }

    pub async fn item(&self, name: &str) -> Option<OnePasswordItem> {
        self.item_in(&self.ns, name).await
    }

    pub async fn item_in(&self, ns: &str, name: &str) -> Option<OnePasswordItem> {
        Api::<OnePasswordItem>::namespaced(self.client.clone(), ns)
            .get_opt(name)
            .await
            .unwrap_or_else(|e| panic!("reading OnePasswordItem {ns}/{name}: {e}"))
    }

    /// Waits until the Secret exists and `check` accepts it.
    pub async fn wait_secret(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Secret) -> Result<(), String>,
    ) -> Secret {
        wait_for(&format!("Secret {name}: {what}"), TIMEOUT, async || {
            let secret = self.secret(name).await.ok_or("no such Secret")?;
            check(&secret).map(|()| secret)
        })
        .await
    }

    pub async fn wait_secret_gone(&self, name: &str) {
        wait_for(
            &format!("Secret {name} to be deleted"),
            GC_TIMEOUT,
            async || match self.secret(name).await {
                None => Ok(()),
                Some(s) => Err(format!(
                    "it still exists (owners: {:?})",
                    s.owner_references()
                        .iter()
                        .map(|o| format!("{}/{}", o.kind, o.name))
                        .collect::<Vec<_>>()
                )),
            },
        )
        .await
    }

    /// Waits until the item's Ready condition has this reason (and status `True` for `Synced`
    /// and `Ignored`, `False` otherwise).
    pub async fn wait_ready(&self, name: &str, reason: &str) -> OnePasswordItem {
        self.wait_ready_in(&self.ns, name, reason).await
    }

    pub async fn wait_ready_in(&self, ns: &str, name: &str, reason: &str) -> OnePasswordItem {
        let status = if matches!(reason, "Synced" | "Ignored") {
            "True"
        } else {
            "False"
        };
        wait_for(
            &format!("OnePasswordItem {name}: Ready={status} reason {reason}"),
            TIMEOUT,
            async || {
                let item = self.item_in(ns, name).await.ok_or("no such item")?;
                match item.ready_condition() {
                    // A condition about an earlier generation says nothing of the object as it
                    // is now (right after an edit it is still the old one).
                    Some(c)
                        if c.observed_generation.is_some()
                            && c.observed_generation != item.metadata.generation =>
                    {
                        Err(format!(
                            "Ready describes generation {:?}, the object is at {:?}",
                            c.observed_generation, item.metadata.generation
                        ))
                    }
                    Some(c) if c.status == status && c.reason.as_deref() == Some(reason) => {
                        Ok(item)
                    }
                    Some(c) => Err(format!(
                        "Ready={} reason {:?}: {:?}",
                        c.status, c.reason, c.message
                    )),
                    None => Err("no Ready condition".into()),
                }
            },
        )
        .await
    }

    /// Waits until the item's Ready condition has this status and a message starting with
    /// `prefix`: how to check it under the official CRD too, whose status has no `reason` (our
    /// operator then leads the message with it, e.g. `Synced: ...`).
    pub async fn wait_ready_message(&self, name: &str, status: &str, prefix: &str) {
        wait_for(
            &format!("OnePasswordItem {name}: Ready={status}, message {prefix:?}..."),
            TIMEOUT,
            async || {
                let item = self.item(name).await.ok_or("no such item")?;
                let ready = item.ready_condition().ok_or("no Ready condition")?;
                let message = ready.message.as_deref().unwrap_or_default();
                (ready.status == status && message.starts_with(prefix))
                    .then_some(())
                    .ok_or(format!("Ready={}: {message:?}", ready.status))
            },
        )
        .await
    }

    /// ReplicaSets owned by the Deployment with this uid.
    pub async fn replica_sets_of(&self, deployment_uid: &str) -> Vec<ReplicaSet> {
        Api::<ReplicaSet>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default())
            .await
            .expect("list ReplicaSets")
            .items
            .into_iter()
            .filter(|rs| {
                rs.owner_references()
                    .iter()
                    .any(|o| o.uid == deployment_uid)
            })
            .collect()
    }

    /// Events (events.k8s.io/v1) about the object of this kind and name.
    pub async fn events_for(&self, kind: &str, name: &str) -> Vec<Event> {
        Api::<Event>::namespaced(self.client.clone(), &self.ns)
            .list(&ListParams::default())
            .await
            .expect("list Events")
            .items
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some(kind) && r.name.as_deref() == Some(name)
                })
            })
            .collect()
    }

    /// Waits for an event of `type_` and `reason` about the object `kind`/`name`.
    pub async fn wait_event(&self, kind: &str, name: &str, type_: &str, reason: &str) {
        wait_for(
            &format!("a {type_} event {reason} on {kind} {name}"),
            TIMEOUT,
            async || {
                let events = self.events_for(kind, name).await;
                events
                    .iter()
                    .any(|e| {
                        e.type_.as_deref() == Some(type_) && e.reason.as_deref() == Some(reason)
                    })
                    .then_some(())
                    .ok_or(format!("{} other event(s)", events.len()))
            },
        )
        .await
    }

    /// What a failing test prints: the objects of its namespaces and its operators' logs.
    fn report(&self) -> String {
        let mut out = String::new();
        for ns in &self.namespaces {
            let objects = self
                .cluster
                .kubectl(
                    Some(ns),
                    &[
                        "get",
                        "onepassworditems,secrets,deployments,replicasets,statefulsets,daemonsets",
                        "-o",
                        "wide",
                        "--show-labels",
                    ],
                    None,
                )
                .unwrap_or_else(|e| e);
            let events = self
                .cluster
                .kubectl(
                    Some(ns),
                    &["get", "events", "--sort-by=.lastTimestamp"],
                    None,
                )
                .unwrap_or_else(|e| e);
            let _ = write!(
                out,
                "\n===== namespace {ns}\n{objects}\n===== events in {ns}\n{events}"
            );
        }
        for operator in &self.operators {
            let log = fs::read_to_string(&operator.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(300)..];
            let _ = write!(
                out,
                "\n===== {} (last {} of {} lines)\n{}\n",
                operator.log.display(),
                tail.len(),
                lines.len(),
                tail.join("\n")
            );
        }
        out
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for operator in &mut self.operators {
            operator.stop();
        }
        if !self.finished {
            if std::thread::panicking() {
                eprintln!("{}", self.report());
            }
            self.delete_namespaces();
        }
    }
}

/// A Secret's data as text.
pub fn data_of(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect()
}

/// Checks that a Secret's `item-version` annotation is `version`.
pub fn has_item_version(version: &str) -> impl Fn(&Secret) -> Result<(), String> {
    let version = version.to_string();
    move |secret| {
        let found = annotation(secret, ITEM_VERSION_ANNOTATION);
        (found == Some(version.as_str()))
            .then_some(())
            .ok_or(format!("item-version {found:?}"))
    }
}

/// An annotation of an object, if set.
pub fn annotation<'a>(obj: &'a impl ResourceExt, key: &str) -> Option<&'a str> {
    obj.annotations().get(key).map(String::as_str)
}

/// A Secret whose data is exactly `want`.
pub fn has_data(want: &BTreeMap<String, String>) -> impl Fn(&Secret) -> Result<(), String> {
    let want = want.clone();
    move |secret| {
        let have = data_of(secret);
        let differ: Vec<&String> = have
            .keys()
            .chain(want.keys())
            .filter(|k| have.get(*k) != want.get(*k))
            .collect();
        if differ.is_empty() {
            Ok(())
        } else {
            Err(format!("the data differs at keys {differ:?}"))
        }
    }
}

/// `BTreeMap` of string pairs.
pub fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The API server's address (`host:port` of the kubeconfig's server).
pub fn api_server_addr() -> String {
    let admin = fs::read_to_string(&cluster().kubeconfig).expect("read the kubeconfig");
    let config: serde_yaml::Value = serde_yaml::from_str(&admin).expect("kubeconfig YAML");
    let server = config["clusters"][0]["cluster"]["server"]
        .as_str()
        .expect("a server in the kubeconfig");
    let url = url::Url::parse(server).expect("the server is a URL");
    format!(
        "{}:{}",
        url.host_str().expect("a host"),
        url.port_or_known_default().expect("a port")
    )
}

/// A TCP proxy on 127.0.0.1 that a test can stall: once [`StallingProxy::freeze`] is called,
/// it stops passing bytes either way on every connection (and on new ones), as a hung network
/// path or a stuck load balancer would, while the connections stay open. TLS passes through
/// untouched, so a client behind it talks to the real server.
pub struct StallingProxy {
    addr: std::net::SocketAddr,
    frozen: tokio::sync::watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl StallingProxy {
    pub async fn start(upstream: String) -> StallingProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let (frozen, _) = tokio::sync::watch::channel(false);
        let watch = frozen.subscribe();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, watch) = (upstream.clone(), watch.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        pass(client_read, server_write, watch.clone()),
                        pass(server_read, client_write, watch),
                    );
                });
            }
        });
        StallingProxy {
            addr,
            frozen,
            accept,
        }
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// From now on nothing passes. What the proxy holds then is never delivered: dropped, it
    /// closes every connection.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// Copies bytes from `from` to `to`, holding them while the proxy is frozen.
async fn pass(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
