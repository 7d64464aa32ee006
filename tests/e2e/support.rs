//! The end-to-end harness: the control plane `bash tests/run` starts (`OPSYNC_E2E_STATE_DIR`), a
//! Connect simulator and a namespace per test, the operator binary as a process, kubectl for what
//! a user would type, a `kube::Client` for the checks, and bounded polling. What the packaging
//! tests use too (the control plane, kubectl, the operator process, waits) is in the
//! `opsync-test-support` crate (`test-support/`); this module adds the operator's world to it.
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
    process::ExitStatus,
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use connect_sim::{Seed, Simulator, TokenAccess};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::{apps::v1::ReplicaSet, core::v1::Secret, events::v1::Event};
use kube::{Api, Client, Resource, ResourceExt, api::ListParams};
use onepassword_secrets_operator::{crd::OnePasswordItem, vocabulary::ITEM_VERSION_ANNOTATION};
pub use opsync_test_support::wait_for;
use opsync_test_support::{ControlPlane, OperatorProcess, kubeconfig, unique};
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

/// The shared control plane, with our CRD installed and established (once per test process).
/// Fails the test, never skips it, when there is none.
fn cluster() -> &'static ControlPlane {
    static CRD: OnceLock<Result<(), String>> = OnceLock::new();
    let cluster = ControlPlane::shared();
    let installed =
        CRD.get_or_init(|| install_crd_with(cluster, &["apply", "--server-side", "-f", OUR_CRD]));
    if let Err(e) = installed {
        panic!("{e}");
    }
    cluster
}

/// Installs a OnePasswordItem CRD (ours, or another one) with `kubectl <args>` and waits until
/// it is served.
fn install_crd_with(cluster: &ControlPlane, args: &[&str]) -> Result<(), String> {
    cluster
        .kubectl(None, args, None)
        .map_err(|e| format!("installing the CRD failed: {e}"))?;
    cluster
        .wait_established(CRD_NAME)
        .map_err(|e| format!("the CRD did not become Established: {e}"))
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

/// A running operator process and how it was started; stopped on drop.
struct Operator {
    config: OperatorConfig,
    process: OperatorProcess,
}

impl Operator {
    fn spawn(config: OperatorConfig, log: PathBuf, cluster: &ControlPlane) -> Operator {
        let (program, args) = match &config.command {
            Some(command) => (command[0].as_str(), &command[1..]),
            None => (OPERATOR_BIN, &[][..]),
        };
        let env = [
            ("OP_CONNECT_HOST", config.connect_host.clone()),
            ("OP_CONNECT_TOKEN", config.token.clone()),
            ("WATCH_NAMESPACE", config.namespaces.join(",")),
            ("POLLING_INTERVAL", POLL.as_secs().to_string()),
            ("METRICS_BIND_ADDRESS", "0".into()),
            ("HEALTH_PROBE_BIND_ADDRESS", "0".into()),
            ("LOG_LEVEL", "debug".into()),
            // Shorter than the default 10 s, so that `QUIET` (what did not happen by then is
            // not going to) still outlasts it; the governance tests set their own.
            ("RESTART_DEBOUNCE", "2".into()),
        ]
        .map(|(k, v)| (k.to_string(), v))
        .into_iter()
        .chain(config.env.iter().cloned());
        let process = OperatorProcess::start(program, args, &cluster.kubeconfig, env, log);
        Operator { config, process }
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
    cluster: &'static ControlPlane,
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
        let parent = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-control-planes");
        let cluster =
            tokio::task::spawn_blocking(move || ControlPlane::start_own(&name_owned, &parent))
                .await
                .expect("control plane task")
                .unwrap_or_else(|e| panic!("{e}"));
        // Lives as long as the test process, as the shared one does (a few hundred bytes).
        let cluster: &'static ControlPlane = Box::leak(Box::new(cluster));
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
        cluster: &'static ControlPlane,
    ) -> TestEnv {
        let client = cluster.client().await;
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
        let name = unique(&name);
        let (cluster, created) = (self.cluster, name.clone());
        tokio::task::spawn_blocking(move || cluster.create_namespace(&created))
            .await
            .expect("kubectl task")
            .unwrap_or_else(|e| panic!("{e}"));
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
        let operator = &mut self.operators[id.0].process;
        let log = operator.log_path().display().to_string();
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
        self.operators[id.0].process.kill();
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
        self.operators[id.0].process.signal(signal);
    }

    /// Waits for an operator to exit by itself (a configuration it refuses) and returns how.
    pub async fn wait_exit(&mut self, id: OperatorId) -> ExitStatus {
        let started = Instant::now();
        loop {
            let process = &mut self.operators[id.0].process;
            assert!(process.is_running(), "the operator was started");
            if let Some(status) = process.exited() {
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
        self.operators[id.0].process.exited()
    }

    /// A kubeconfig with the admin's credentials that reaches the API server through `proxy`.
    pub fn kubeconfig_through(&self, proxy: &StallingProxy) -> PathBuf {
        let admin = cluster().admin_kubeconfig();
        self.test_file(
            &format!("kubeconfig-through-{}", proxy.addr().port()),
            &kubeconfig::with_server(&admin, &format!("https://{}", proxy.addr())),
        )
    }

    /// The operator's log so far.
    pub fn operator_log(&self, id: OperatorId) -> String {
        self.operators[id.0].process.log()
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
        let admin = self.cluster.admin_kubeconfig();
        self.test_file(
            &format!("kubeconfig-as-{user}"),
            &kubeconfig::impersonating(&admin, user, &[]),
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
            let (log, file) = (operator.process.log(), operator.process.log_path());
            assert!(
                !log.contains(TOKEN),
                "the operator log {} contains the Connect token",
                file.display()
            );
            for value in &values {
                assert!(
                    !log.contains(value.as_str()),
                    "the operator log {} contains a secret value",
                    file.display()
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
        if self.cluster.is_own() {
            self.cluster.stop();
            return;
        }
        for ns in &self.namespaces {
            let _ = self.cluster.delete_namespace(ns);
        }
    }

    /// `kubectl apply -f <file>` of a OnePasswordItem CRD (absolute path), as a user would, on
    /// the test's own control plane, and waits until it is served.
    pub async fn install_crd(&self, file: &str) {
        self.install_crd_by(file, &["apply", "-f"]).await
    }

    /// Installs a CRD too large for `kubectl apply`'s last-applied annotation (256 KiB), such
    /// as Argo's Rollout CRD, with a server-side apply.
    pub async fn install_large_crd(&self, file: &str) {
        self.install_crd_by(file, &["apply", "--server-side", "-f"])
            .await
    }

    async fn install_crd_by(&self, file: &str, verb: &[&str]) {
        assert!(
            self.cluster.is_own(),
            "the CRD is changed only on a test's own control plane"
        );
        let cluster = self.cluster;
        let args: Vec<String> = verb
            .iter()
            .map(|a| a.to_string())
            .chain([file.into()])
            .collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            install_crd_with(cluster, &args)
        })
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
        let (cluster, script) = (self.cluster, script.to_string());
        tokio::task::spawn_blocking(move || cluster.envtest(&script))
            .await
            .expect("envtest task")
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Waits until the operator's log contains `needle` (e.g. it got as far as a poll cycle).
    pub async fn wait_log(&self, id: OperatorId, needle: &str) {
        let log = self.operators[id.0].process.log_path().to_path_buf();
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
            let _ = write!(out, "\n{}", operator.process.log_tail(300));
        }
        out
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        for operator in &mut self.operators {
            operator.process.stop();
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
    let server = kubeconfig::server(&cluster().admin_kubeconfig());
    let url = url::Url::parse(&server).expect("the server is a URL");
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
