//! Packaging: the Helm chart (`charts/onepassword-secrets-operator`) and the kustomize config
//! (`config/`), checked with the pinned helm and kubectl against the control plane that
//! `bash tests/run` starts (`OPSYNC_E2E_STATE_DIR`). The chart's RBAC is checked by running the
//! operator as the chart's ServiceAccount (impersonated) against a Connect simulator.
//!
//! These tests share the API server with the end-to-end suite: every release and namespace has a
//! unique name, and nothing cluster-scoped that others use (the CRD) is ever deleted. The CRD is
//! replaced, by one test at a time (`CRD_LOCK`), and ours is installed again when it ends.
//!
//! The control plane, kubectl, helm, the operator process and the waits are those of the
//! end-to-end tests: the `opsync-test-support` crate (`test-support/`).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    sync::{OnceLock, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::{Duration, Instant},
};

use base64::Engine as _;
use connect_sim::{Seed, Simulator};
use opsync_test_support::{
    ControlPlane, OperatorProcess, b64, kubeconfig, unique, wait_for_blocking,
};
use serde_json::{Value, json};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const CHART: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/charts/onepassword-secrets-operator"
);
const OPERATOR_BIN: &str = env!("CARGO_BIN_EXE_onepassword-operator");
const CRD_NAME: &str = "onepassworditems.onepassword.com";
const OUR_CRD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/onepassworditem.yaml");
const OFFICIAL_CRD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/official/onepassworditem-crd-v1.12.0.yaml"
);
/// How long to wait for the operator or the cluster to do something.
const TIMEOUT: Duration = Duration::from_secs(60);
/// What `connect-sim` and the demo seed accept.
const DEMO_TOKEN: &str = "demo-token";

// ---- the tools ----

/// Where these tests write files (kubeconfigs, probes, changed charts).
fn scratch() -> &'static Path {
    static SCRATCH: OnceLock<PathBuf> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("packaging");
        fs::create_dir_all(&dir).expect("create the scratch directory");
        dir
    })
}

/// helm against the control plane of `OPSYNC_E2E_STATE_DIR`.
fn helm(args: &[&str]) -> Result<String, String> {
    ControlPlane::shared().helm(args)
}

/// kubectl against the control plane of `OPSYNC_E2E_STATE_DIR`.
fn kubectl(args: &[&str]) -> Result<String, String> {
    ControlPlane::shared().kubectl(None, args, None)
}

/// An object as JSON, or `None` when it does not exist.
fn get(kind: &str, name: &str, ns: Option<&str>) -> Option<Value> {
    let mut args = vec!["get", kind, name, "-o", "json", "--ignore-not-found"];
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    // Reads are retried for a while: an end-to-end test may be restarting the API server.
    let mut tries = 0;
    let out = loop {
        match kubectl(&args) {
            Ok(out) => break out,
            Err(e) if tries >= 20 => panic!("{e}"),
            Err(_) => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    };
    (!out.trim().is_empty()).then(|| serde_json::from_str(&out).expect("kubectl JSON"))
}

fn must_get(kind: &str, name: &str, ns: Option<&str>) -> Value {
    get(kind, name, ns).unwrap_or_else(|| {
        panic!(
            "{kind} {name} does not exist{}",
            ns.map(|n| format!(" in {n}")).unwrap_or_default()
        )
    })
}

/// Polls `check` until it says `Ok`; fails the test after `TIMEOUT` with its last answer.
fn wait_for<T>(what: &str, check: impl FnMut() -> Result<T, String>) -> T {
    wait_for_blocking(what, TIMEOUT, check)
}

/// Prints how long a test took when it ends (`cargo test -- --show-output`).
struct Timed(&'static str, Instant);

impl Timed {
    fn start(name: &'static str) -> Timed {
        Timed(name, Instant::now())
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        println!("{}: {:.1}s", self.0, self.1.elapsed().as_secs_f64());
    }
}

// ---- things to clean up, pass or fail ----

/// Namespaces created by a test, deleted when it ends.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn create(prefix: &str) -> (Namespaces, String) {
        let mut namespaces = Namespaces(Vec::new());
        let name = namespaces.add(prefix);
        (namespaces, name)
    }

    fn add(&mut self, prefix: &str) -> String {
        let name = unique(prefix);
        ControlPlane::shared()
            .create_namespace(&name)
            .unwrap_or_else(|e| panic!("{e}"));
        self.0.push(name.clone());
        name
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = ControlPlane::shared().delete_namespace(ns);
        }
    }
}

/// A Helm release, uninstalled when the test ends (if the test did not already).
struct Release {
    name: String,
    ns: String,
}

impl Release {
    /// Installs the chart without the CRD (`crds.enabled=false`): the CRD belongs to one release
    /// at a time, and these tests run side by side. Hold `our_crd()` while it is installed.
    fn install(name: &str, ns: &str, values: &[&str]) -> Release {
        let mut args = vec!["--set", "crds.enabled=false"];
        args.extend(values);
        Release::install_owning_the_crd(name, ns, &args)
    }

    /// Installs the chart with its CRD (the CRD must be free to take: hold a `CrdWriter`).
    fn install_owning_the_crd(name: &str, ns: &str, values: &[&str]) -> Release {
        let mut args = vec!["install", name, CHART, "--namespace", ns];
        args.extend(values);
        helm(&args).unwrap_or_else(|e| panic!("{e}"));
        Release {
            name: name.into(),
            ns: ns.into(),
        }
    }

    /// The chart's base name for objects of this release.
    fn fullname(&self) -> String {
        format!("{}-onepassword-secrets-operator", self.name)
    }

    fn uninstall(&self) {
        helm(&["uninstall", &self.name, "--namespace", &self.ns, "--wait"])
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = helm(&[
            "uninstall",
            &self.name,
            "--namespace",
            &self.ns,
            "--ignore-not-found",
        ]);
    }
}

/// The operator as a process; stopped when dropped (SIGTERM, then SIGKILL), and its log shown
/// if the test failed.
struct Operator(OperatorProcess);

impl Operator {
    /// Fails at once when the API server refused the operator something: the RBAC is short.
    fn assert_nothing_forbidden(&self) {
        if let Some(line) = self
            .0
            .log()
            .lines()
            .find(|l| l.to_ascii_lowercase().contains("forbidden"))
        {
            panic!("the chart's RBAC refused the operator something: {line}");
        }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.0.stop();
        if std::thread::panicking() {
            eprintln!("{}", self.0.log_tail(200));
        }
    }
}

// ---- the CRD, shared by every test ----

/// The OnePasswordItem CRD is cluster-wide and the tests run side by side: a test that replaces
/// it holds this lock for writing (`CrdWriter`); a test that needs ours (it installs the chart,
/// creates items, runs the operator) holds it for reading (`our_crd`). Whenever no writer holds
/// it, our CRD is installed and served.
static CRD_LOCK: RwLock<()> = RwLock::new(());

/// Our CRD, installed and served, and no test replacing it while the guard lives.
fn our_crd() -> RwLockReadGuard<'static, ()> {
    // A fresh control plane has no CRD yet: the first reader installs it, as a writer would.
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| drop(CrdWriter::lock()));
    CRD_LOCK.read().unwrap_or_else(PoisonError::into_inner)
}

/// The CRD to replace at will; ours is put back when the guard drops, pass or fail (declare it
/// first in a test, so that it drops last, after the releases and namespaces).
struct CrdWriter {
    _guard: RwLockWriteGuard<'static, ()>,
}

impl CrdWriter {
    fn lock() -> CrdWriter {
        CrdWriter {
            _guard: CRD_LOCK.write().unwrap_or_else(PoisonError::into_inner),
        }
    }
}

impl Drop for CrdWriter {
    fn drop(&mut self) {
        // Server-side and forced: fields that Helm or kubectl's client-side apply set become
        // ours, whatever the test left.
        let restored = kubectl(&["apply", "--server-side", "--force-conflicts", "-f", OUR_CRD])
            .and_then(|_| wait_until_our_crd_is_served());
        match restored {
            Ok(()) => {}
            Err(e) if std::thread::panicking() => eprintln!("putting our CRD back failed: {e}"),
            Err(e) => panic!("putting our CRD back failed: {e}"),
        }
    }
}

/// Waits until the API server serves our schema, not just stores it: a dry run of an item with
/// a malformed `itemPath` is refused by our CRD's pattern (the official CRD has none).
fn wait_until_our_crd_is_served() -> Result<(), String> {
    ControlPlane::shared().wait_established(CRD_NAME)?;
    let probe = scratch().join(unique("crd-probe") + ".yaml");
    fs::write(
        &probe,
        "apiVersion: onepassword.com/v1\nkind: OnePasswordItem\nmetadata:\n  name: crd-probe\n  \
         namespace: default\nspec:\n  itemPath: not-a-path\n",
    )
    .map_err(|e| e.to_string())?;
    let path = probe.to_string_lossy().into_owned();
    let started = Instant::now();
    let outcome = loop {
        match kubectl(&["create", "--dry-run=server", "-f", &path]) {
            Err(e) if e.contains("itemPath") => break Ok(()),
            other if started.elapsed() > TIMEOUT => {
                break Err(format!(
                    "the API server still does not check itemPath against our pattern: {other:?}"
                ));
            }
            _ => std::thread::sleep(Duration::from_millis(250)),
        }
    };
    let _ = fs::remove_file(&probe);
    outcome
}

/// Puts a CRD from a file in place of whatever is installed (a PUT: its labels and annotations
/// are the file's, as on a cluster that never saw Helm), and waits until it is established.
fn replace_crd(file: &str) {
    let verb = if get("crd", CRD_NAME, None).is_some() {
        "replace"
    } else {
        "create"
    };
    kubectl(&[verb, "-f", file]).unwrap_or_else(|e| panic!("{e}"));
    ControlPlane::shared()
        .wait_established(CRD_NAME)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// The schema of a status field in a CRD as the API server returns it (`Null` when undeclared).
fn status_field<'a>(crd: &'a Value, field: &str) -> &'a Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
        [field]
}

/// The commands of the chart README's "Taking over an existing CRD", for this release: what
/// users are told to run is what the test runs.
fn takeover_commands(release: &str, ns: &str) -> Vec<Vec<String>> {
    let readme = fs::read_to_string(format!("{CHART}/README.md")).unwrap();
    let section = readme
        .split_once("### Taking over an existing CRD")
        .expect("the chart README has a section \"Taking over an existing CRD\"")
        .1;
    let block = section
        .split_once("```sh\n")
        .and_then(|(_, rest)| rest.split_once("```"))
        .expect("that section has a sh block")
        .0;
    block
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let words: Vec<String> = line
                .split_whitespace()
                .map(|w| w.replace("<release>", release).replace("<namespace>", ns))
                .collect();
            assert_eq!(words[0], "kubectl", "not a kubectl command: {line}");
            words[1..].to_vec()
        })
        .collect()
}

/// Copies a directory tree (the chart, to make a changed version of it).
fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

// ---- rendered manifests ----

/// `helm template` with these extra arguments: the manifests as JSON.
fn render(args: &[&str]) -> Result<Vec<Value>, String> {
    let mut all = vec!["template", "rel", CHART, "--namespace", "ops"];
    all.extend(args);
    let out = helm(&all)?;
    Ok(parse_documents(&out))
}

fn parse_documents(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).expect("rendered YAML parses");
    docs.into_iter().filter(|doc| !doc.is_null()).collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {}", names(docs)))
}

fn find_in<'a>(docs: &'a [Value], kind: &str, name: &str, ns: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            d["kind"] == kind && d["metadata"]["name"] == name && d["metadata"]["namespace"] == ns
        })
        .unwrap_or_else(|| panic!("no {kind} {ns}/{name} in {}", names(docs)))
}

fn names(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| {
            format!(
                "{} {}/{}",
                d["kind"].as_str().unwrap_or("?"),
                d["metadata"]["namespace"].as_str().unwrap_or(""),
                d["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn kinds(docs: &[Value]) -> BTreeSet<String> {
    docs.iter()
        .map(|d| d["kind"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// The operator container's environment: name -> the EnvVar.
fn env_of(deployment: &Value) -> BTreeMap<String, Value> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("the container has env")
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_string(), e.clone()))
        .collect()
}

/// A plain environment variable's value (the API server drops an empty `value`).
fn env_text(deployment: &Value, name: &str) -> Option<String> {
    let var = env_of(deployment).remove(name)?;
    match var["value"].as_str() {
        Some(value) => Some(value.to_string()),
        None => var.get("valueFrom").is_none().then(String::new),
    }
}

/// RBAC rules as comparable (apiGroup, resource, verb, resourceName) tuples.
fn rule_set(rules: &Value) -> BTreeSet<(String, String, String, String)> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut set = BTreeSet::new();
    for rule in rules.as_array().expect("rules") {
        let names = strings(&rule["resourceNames"]);
        let names = if names.is_empty() {
            vec![String::new()]
        } else {
            names
        };
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    for name in &names {
                        set.insert((group.clone(), resource.clone(), verb.clone(), name.clone()));
                    }
                }
            }
        }
    }
    set
}

// ---- identities ----

/// What `kubectl auth can-i` says for the operator's ServiceAccount.
fn can_i(sa_ns: &str, sa: &str, query: &[&str]) -> bool {
    let user = format!("--as=system:serviceaccount:{sa_ns}:{sa}");
    let group = format!("--as-group=system:serviceaccounts:{sa_ns}");
    let mut args = vec!["auth", "can-i"];
    args.extend(query);
    args.extend([
        user.as_str(),
        "--as-group=system:serviceaccounts",
        group.as_str(),
    ]);
    // can-i exits 1 for "no": read its answer, not its status.
    let out = ControlPlane::shared()
        .kubectl_command()
        .args(&args)
        .output()
        .expect("run kubectl auth can-i");
    match String::from_utf8_lossy(&out.stdout).trim() {
        "yes" => true,
        "no" => false,
        other => panic!(
            "kubectl {} answered {other:?}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn assert_can(sa_ns: &str, sa: &str, yes: &[&[&str]], no: &[&[&str]]) {
    let mut wrong = Vec::new();
    for query in yes {
        if !can_i(sa_ns, sa, query) {
            wrong.push(format!("may not {}", query.join(" ")));
        }
    }
    for query in no {
        if can_i(sa_ns, sa, query) {
            wrong.push(format!("may {}", query.join(" ")));
        }
    }
    assert!(
        wrong.is_empty(),
        "ServiceAccount {sa_ns}/{sa}: {}",
        wrong.join("; ")
    );
}

/// A kubeconfig with the admin's credentials that impersonates a ServiceAccount (as the API
/// server sees a pod's token: the user and its two groups).
fn impersonating_kubeconfig(sa_ns: &str, sa: &str, file: &Path) {
    let config = kubeconfig::impersonating(
        &ControlPlane::shared().admin_kubeconfig(),
        &format!("system:serviceaccount:{sa_ns}:{sa}"),
        &[
            "system:serviceaccounts".to_string(),
            format!("system:serviceaccounts:{sa_ns}"),
        ],
    );
    fs::write(file, config).expect("write the kubeconfig");
}

fn secret_key(secret: &Value, key: &str) -> Option<String> {
    let encoded = secret["data"][key].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    String::from_utf8(bytes).ok()
}

fn ready_reason(item: &Value) -> Option<(String, String)> {
    item["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .map(|c| {
            (
                c["status"].as_str().unwrap_or("").to_string(),
                c["reason"].as_str().unwrap_or("").to_string(),
            )
        })
}

// ---- the tests ----

#[test]
fn chart_renders_the_crd_unless_disabled_and_keeps_it_unless_told() {
    let _timed = Timed::start("chart_renders_the_crd_unless_disabled_and_keeps_it_unless_told");
    let mut generated: Value =
        serde_saphyr::from_str(&fs::read_to_string(OUR_CRD).unwrap()).unwrap();

    // By default: the generated CRD, with the chart's labels and the keep policy.
    let docs = render(&[]).unwrap();
    let crd = find(&docs, "CustomResourceDefinition", CRD_NAME);
    let labels = &crd["metadata"]["labels"];
    assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm");
    assert_eq!(labels["app.kubernetes.io/instance"], "rel");
    assert_eq!(
        labels["app.kubernetes.io/name"],
        "onepassword-secrets-operator"
    );
    assert_eq!(
        crd["metadata"]["annotations"],
        json!({"helm.sh/resource-policy": "keep"})
    );
    let mut without_helm_parts = crd.clone();
    let metadata = without_helm_parts["metadata"].as_object_mut().unwrap();
    metadata.remove("labels");
    metadata.remove("annotations");
    assert_eq!(without_helm_parts, generated);

    // crds.keep=false: uninstalling deletes it (no annotation at all).
    let docs = render(&["--set", "crds.keep=false"]).unwrap();
    let crd = find(&docs, "CustomResourceDefinition", CRD_NAME);
    assert!(crd["metadata"].get("annotations").is_none(), "{crd}");
    generated["metadata"]["labels"] = crd["metadata"]["labels"].clone();
    assert_eq!(crd, &generated);

    // crds.enabled=false: no CRD, everything else as before.
    let with = render(&[]).unwrap();
    let without = render(&["--set", "crds.enabled=false"]).unwrap();
    assert!(
        !kinds(&without).contains("CustomResourceDefinition"),
        "{}",
        names(&without)
    );
    let others: Vec<&Value> = with
        .iter()
        .filter(|d| d["kind"] != "CustomResourceDefinition")
        .collect();
    assert_eq!(others, without.iter().collect::<Vec<_>>());
    let err = render(&["--set-string", "crds.enabled=no"]).expect_err("a string for crds.enabled");
    assert!(err.contains("schema") && err.contains("enabled"), "{err}");
}

#[test]
fn every_chart_value_has_a_default_a_type_and_a_line_in_the_readme() {
    let _timed = Timed::start("every_chart_value_has_a_default_a_type_and_a_line_in_the_readme");
    let schema: Value =
        serde_json::from_str(&fs::read_to_string(format!("{CHART}/values.schema.json")).unwrap())
            .unwrap();
    let values: Value =
        serde_saphyr::from_str(&fs::read_to_string(format!("{CHART}/values.yaml")).unwrap())
            .unwrap();
    let readme = fs::read_to_string(format!("{CHART}/README.md")).unwrap();

    // The values the schema defines, down to its leaves (Kubernetes objects such as
    // `resources` are leaves: their fields are Kubernetes').
    fn leaves(schema: &Value, path: &str, out: &mut Vec<String>) {
        match schema["properties"].as_object() {
            Some(props) => {
                assert_eq!(
                    schema["additionalProperties"],
                    json!(false),
                    "{path}: an object the chart defines must refuse unknown keys"
                );
                for (key, sub) in props {
                    let sub_path = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    leaves(sub, &sub_path, out);
                }
            }
            None => out.push(path.to_string()),
        }
    }
    let mut paths = Vec::new();
    leaves(&schema, "", &mut paths);
    let mut problems = Vec::new();
    for path in paths.iter().filter(|p| *p != "global") {
        let pointer = format!("/{}", path.replace('.', "/"));
        if values.pointer(&pointer).is_none() {
            problems.push(format!("{path} has no default in values.yaml"));
        }
        if !readme.contains(&format!("`{path}`")) {
            problems.push(format!("{path} is not documented in README.md"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(paths.len() > 50, "only {} values found", paths.len());
}

#[test]
fn chart_lints_and_renders_for_each_kind_of_install() {
    let _timed = Timed::start("chart_lints_and_renders_for_each_kind_of_install");
    let credentials = scratch().join("1password-credentials.json");
    fs::write(
        &credentials,
        r#"{"verifier":{"salt":"made-up"},"version":"2"}"#,
    )
    .unwrap();
    let credentials_arg = format!("connect.credentials={}", credentials.display());
    let setups: Vec<(&str, Vec<&str>)> = vec![
        ("defaults", vec![]),
        (
            "watchNamespace list",
            vec!["--set", "operator.watchNamespace={apps,jobs}"],
        ),
        (
            "connect.create",
            vec![
                "--set",
                "connect.create=true",
                "--set-file",
                &credentials_arg,
            ],
        ),
        (
            "tls trust, token value, monitoring, network policies",
            vec![
                "--set",
                "operator.tls.trust.secret=connect-ca",
                "--set",
                "operator.token.value=made-up-token",
                "--set",
                "serviceMonitor.enabled=true",
                "--set",
                "networkPolicy.enabled=true",
                "--set",
                "networkPolicy.egress[0].to[0].ipBlock.cidr=10.0.0.1/32",
            ],
        ),
    ];
    for (what, args) in &setups {
        let mut lint = vec!["lint", "--strict", CHART];
        lint.extend(args);
        helm(&lint).unwrap_or_else(|e| panic!("helm lint, {what}: {e}"));
        render(args).unwrap_or_else(|e| panic!("helm template, {what}: {e}"));
    }

    // A vault policy: a ConfigMap the operator can parse, mounted where VAULT_POLICY_FILE
    // says, and a checksum that rolls the pod when it changes.
    let policy_args = [
        "--set",
        "operator.vaultPolicy.enabled=true",
        "--set",
        "operator.vaultPolicy.rules[0].namespaces={payments,payments-*}",
        "--set",
        "operator.vaultPolicy.rules[0].vaults={Payments}",
    ];
    let docs = render(&policy_args).unwrap();
    let config_map = find(
        &docs,
        "ConfigMap",
        "rel-onepassword-secrets-operator-vault-policy",
    );
    let text = config_map["data"]["vault-policy.yaml"].as_str().unwrap();
    let policy = onepassword_secrets_operator::policy::VaultPolicy::parse(text)
        .unwrap_or_else(|e| panic!("the chart's policy does not parse: {e}\n{text}"));
    assert!(policy.check("payments-eu", "v1", Some("Payments")).is_ok());
    assert!(policy.check("web", "v1", Some("Payments")).is_err());
    let deployment = find(&docs, "Deployment", "rel-onepassword-secrets-operator");
    let file = env_of(deployment)["VAULT_POLICY_FILE"]["value"]
        .as_str()
        .unwrap()
        .to_string();
    let mount = deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "vault-policy")
        .expect("the policy is mounted");
    assert_eq!(
        file,
        format!("{}/vault-policy.yaml", mount["mountPath"].as_str().unwrap())
    );
    assert!(
        deployment["spec"]["template"]["metadata"]["annotations"]["checksum/vault-policy"]
            .is_string()
    );

    // Defaults: cluster-wide RBAC (plus the leader election Role), the official defaults, a
    // hardened pod.
    let docs = render(&[]).unwrap();
    assert_eq!(
        kinds(&docs),
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
        .map(String::from)
        .into(),
        "{}",
        names(&docs)
    );
    let deployment = find(&docs, "Deployment", "rel-onepassword-secrets-operator");
    let env = env_of(deployment);
    for (name, value) in [
        ("OP_CONNECT_HOST", "http://onepassword-connect:8080"),
        ("WATCH_NAMESPACE", ""),
        ("POLLING_INTERVAL", "600"),
        ("CHANGE_CHECK_INTERVAL", "6"),
        ("AUTO_RESTART", "false"),
        ("RESTART_DEBOUNCE", "10"),
        ("RESTART_BUDGET", "10"),
        ("RESTART_BUDGET_PER_NAMESPACE", "3"),
        ("RESTART_ROLLOUT_TIMEOUT", "600"),
        ("RESTART_BREAKER_CHANGES", "5"),
        ("RESTART_BREAKER_PERIOD", "600"),
        ("ALLOW_EMPTY_VALUES", "false"),
        ("ENABLE_ANNOTATIONS", "false"),
        ("LOG_LEVEL", "info"),
        ("LOG_FORMAT", "text"),
        ("METRICS_BIND_ADDRESS", ":8080"),
        ("HEALTH_PROBE_BIND_ADDRESS", ":8081"),
        ("LEADER_ELECT", "true"),
    ] {
        assert_eq!(env[name]["value"], value, "{name}");
    }
    assert_eq!(
        env["OP_CONNECT_TOKEN"]["valueFrom"]["secretKeyRef"],
        json!({"name": "onepassword-token", "key": "token"})
    );
    assert!(!env.contains_key("OP_CONNECT_CA_FILE"));
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["serviceAccountName"],
        "rel-onepassword-secrets-operator"
    );
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "onepassword-secrets-operator:0.1.0");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "RollingUpdate");
    let role = find(&docs, "ClusterRole", "rel-onepassword-secrets-operator");
    let rules = rule_set(&role["rules"]);
    assert!(rules.contains(&("".into(), "secrets".into(), "list".into(), "".into())));
    assert!(rules.contains(&("".into(), "namespaces".into(), "get".into(), "".into())));
    assert!(
        !rules
            .iter()
            .any(|(_, r, v, _)| r == "namespaces" && v != "get"),
        "namespaces: get only"
    );
    let service = find(&docs, "Service", "rel-onepassword-secrets-operator-metrics");
    assert_eq!(service["spec"]["ports"][0]["port"], 8080);

    // A watchNamespace list: Roles in those namespaces, and only `get` on those Namespaces
    // cluster-wide.
    let docs = render(&["--set", "operator.watchNamespace={apps,jobs}"]).unwrap();
    let deployment = find(&docs, "Deployment", "rel-onepassword-secrets-operator");
    assert_eq!(
        env_text(deployment, "WATCH_NAMESPACE").as_deref(),
        Some("apps,jobs")
    );
    let cluster_role = find(&docs, "ClusterRole", "rel-onepassword-secrets-operator");
    assert_eq!(
        rule_set(&cluster_role["rules"]),
        [
            ("", "namespaces", "get", "apps"),
            ("", "namespaces", "get", "jobs"),
            (
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                "get",
                CRD_NAME
            ),
            (
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                "list",
                CRD_NAME
            ),
            (
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                "watch",
                CRD_NAME
            ),
        ]
        .map(|(g, r, v, n)| (g.into(), r.into(), v.into(), n.into()))
        .into()
    );
    for ns in ["apps", "jobs"] {
        let role = find_in(&docs, "Role", "rel-onepassword-secrets-operator", ns);
        let mut namespaced = rules.clone();
        namespaced.retain(|(_, r, _, _)| r != "namespaces" && r != "customresourcedefinitions");
        assert_eq!(rule_set(&role["rules"]), namespaced, "Role in {ns}");
        let binding = find_in(&docs, "RoleBinding", "rel-onepassword-secrets-operator", ns);
        assert_eq!(
            binding["subjects"],
            json!([{"kind": "ServiceAccount", "name": "rel-onepassword-secrets-operator", "namespace": "ops"}])
        );
    }

    // connect.create: Connect's Deployment, Service and credentials, as the official chart.
    let docs = render(&[
        "--set",
        "connect.create=true",
        "--set-file",
        &credentials_arg,
    ])
    .unwrap();
    let connect = find(&docs, "Deployment", "onepassword-connect");
    let containers = connect["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    let images: Vec<&str> = containers
        .iter()
        .map(|c| c["image"].as_str().unwrap())
        .collect();
    assert_eq!(
        images,
        [
            "1password/connect-api:1.7.3",
            "1password/connect-sync:1.7.3"
        ]
    );
    let ports: Vec<&Value> = containers
        .iter()
        .map(|c| &c["ports"][0]["containerPort"])
        .collect();
    assert_eq!(ports, [&json!(8080), &json!(8081)]);
    let service = find(&docs, "Service", "onepassword-connect");
    assert_eq!(service["spec"]["ports"][0]["port"], 8080);
    let secret = find(&docs, "Secret", "op-credentials");
    let stored = secret["stringData"]["1password-credentials.json"]
        .as_str()
        .unwrap();
    assert_eq!(stored, b64(&fs::read_to_string(&credentials).unwrap()));

    // A bare host name (the official chart's form) becomes a URL.
    let docs = render(&["--set", "connect.host=connect.vault.svc"]).unwrap();
    let deployment = find(&docs, "Deployment", "rel-onepassword-secrets-operator");
    assert_eq!(
        env_text(deployment, "OP_CONNECT_HOST").as_deref(),
        Some("http://connect.vault.svc:8080")
    );

    // TLS trust, a token value, monitoring and network policies.
    let docs = render(&setups[3].1).unwrap();
    let deployment = find(&docs, "Deployment", "rel-onepassword-secrets-operator");
    assert_eq!(
        env_text(deployment, "OP_CONNECT_CA_FILE").as_deref(),
        Some("/etc/onepassword-operator/trust/ca.crt")
    );
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "connect-ca");
    assert_eq!(
        pod["containers"][0]["volumeMounts"][0]["mountPath"],
        "/etc/onepassword-operator/trust"
    );
    assert!(
        deployment["spec"]["template"]["metadata"]["annotations"]["checksum/token"].is_string(),
        "a new token value rolls the operator"
    );
    let token = find(&docs, "Secret", "onepassword-token");
    assert_eq!(token["stringData"]["token"], "made-up-token");
    find(&docs, "ServiceMonitor", "rel-onepassword-secrets-operator");
    let policy = find(&docs, "NetworkPolicy", "rel-onepassword-secrets-operator");
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));

    // A duration string for the polling interval goes through as is.
    let docs = render(&["--set", "operator.pollingInterval=10m"]).unwrap();
    let deployment = find(&docs, "Deployment", "rel-onepassword-secrets-operator");
    assert_eq!(
        env_text(deployment, "POLLING_INTERVAL").as_deref(),
        Some("10m")
    );
}

#[test]
fn chart_schema_refuses_typos_and_wrong_types() {
    let _timed = Timed::start("chart_schema_refuses_typos_and_wrong_types");
    for (what, args, expect) in [
        (
            "a typo",
            vec!["--set", "operatr.autoRestart=true"],
            "operatr",
        ),
        (
            "a typo one level down",
            vec!["--set", "operator.autoRestrat=true"],
            "autoRestrat",
        ),
        (
            "a string for a boolean",
            vec!["--set-string", "operator.autoRestart=yes"],
            "autoRestart",
        ),
        (
            "nonsense for the polling interval",
            vec!["--set", "operator.pollingInterval=soon"],
            "pollingInterval",
        ),
        (
            "a string for the namespace list",
            vec!["--set", "operator.watchNamespace=apps"],
            "watchNamespace",
        ),
        (
            "an unknown log level",
            vec!["--set", "operator.logLevel=verbose"],
            "logLevel",
        ),
    ] {
        let err = render(&args).expect_err(what);
        assert!(
            err.contains("schema") && err.contains(expect),
            "{what}: helm template failed, but not for the schema: {err}"
        );
    }
    let err = render(&[
        "--set",
        "connect.credentials=a",
        "--set",
        "connect.credentials_base64=YQ==",
    ])
    .expect_err("both credentials");
    assert!(err.contains("not both"), "{err}");

    // helm install refuses it too, before it touches the cluster.
    let (_namespaces, ns) = Namespaces::create("pkg-typo");
    let release = unique("pkg-typo");
    let err = helm(&[
        "install",
        &release,
        CHART,
        "--namespace",
        &ns,
        "--set",
        "operatr.autoRestart=true",
    ])
    .expect_err("helm install with a typo");
    assert!(err.contains("schema") && err.contains("operatr"), "{err}");
    assert!(helm(&["status", &release, "--namespace", &ns]).is_err());
}

#[test]
fn chart_installs_upgrades_and_uninstalls_cluster_wide() {
    let _timed = Timed::start("chart_installs_upgrades_and_uninstalls_cluster_wide");
    let _crd = our_crd();
    let (_namespaces, ns) = Namespaces::create("pkg-install");
    let credentials = scratch().join("install-credentials.json");
    fs::write(
        &credentials,
        r#"{"verifier":{"salt":"made-up"},"version":"2"}"#,
    )
    .unwrap();
    let credentials_arg = format!("connect.credentials={}", credentials.display());
    let release = Release::install(
        &unique("pkg"),
        &ns,
        &[
            "--set",
            "connect.create=true",
            "--set-file",
            &credentials_arg,
            "--set",
            "operator.tls.trust.secret=connect-ca",
            "--set",
            "networkPolicy.enabled=true",
        ],
    );
    let name = release.fullname();

    let crd = must_get("crd", CRD_NAME, None);
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["opi"]));
    must_get("serviceaccount", &name, Some(&ns));
    let role = must_get("clusterrole", &name, None);
    assert!(rule_set(&role["rules"]).contains(&(
        "".into(),
        "secrets".into(),
        "watch".into(),
        "".into()
    )));
    let binding = must_get("clusterrolebinding", &name, None);
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": name, "namespace": ns}])
    );
    let deployment = must_get("deployment", &name, Some(&ns));
    assert_eq!(
        env_text(&deployment, "WATCH_NAMESPACE").as_deref(),
        Some("")
    );
    assert_eq!(
        env_text(&deployment, "POLLING_INTERVAL").as_deref(),
        Some("600")
    );
    assert_eq!(
        env_text(&deployment, "OP_CONNECT_CA_FILE").as_deref(),
        Some("/etc/onepassword-operator/trust/ca.crt")
    );
    assert_eq!(
        env_of(&deployment)["OP_CONNECT_TOKEN"]["valueFrom"]["secretKeyRef"]["name"],
        "onepassword-token"
    );
    let service = must_get("service", &format!("{name}-metrics"), Some(&ns));
    assert_eq!(service["spec"]["ports"][0]["port"], 8080);
    must_get("deployment", "onepassword-connect", Some(&ns));
    must_get("service", "onepassword-connect", Some(&ns));
    must_get("secret", "op-credentials", Some(&ns));
    must_get("networkpolicy", &name, Some(&ns));
    must_get("networkpolicy", "onepassword-connect", Some(&ns));

    // Cluster-wide: what the operator needs in every namespace, nothing more.
    assert_can(
        &ns,
        &name,
        &[
            &["list", "secrets", "--all-namespaces"],
            &[
                "watch",
                "onepassworditems.onepassword.com",
                "--all-namespaces",
            ],
            &["patch", "deployments.apps", "-n", "default"],
            &["patch", "onepassworditems.onepassword.com", "-n", "default"],
            &["get", "namespaces/default"],
            &[
                "watch",
                "customresourcedefinitions.apiextensions.k8s.io/onepassworditems.onepassword.com",
            ],
        ],
        &[
            &["list", "namespaces"],
            &["list", "configmaps", "--all-namespaces"],
            &["update", "secrets", "-n", "default"],
            &["create", "clusterroles.rbac.authorization.k8s.io"],
            &[
                "update",
                "onepassworditems.onepassword.com",
                "-n",
                "default",
            ],
            &["list", "customresourcedefinitions.apiextensions.k8s.io"],
        ],
    );

    helm(&[
        "upgrade",
        &release.name,
        CHART,
        "--namespace",
        &ns,
        "--reuse-values",
        "--set",
        "operator.pollingInterval=30",
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    let deployment = must_get("deployment", &name, Some(&ns));
    assert_eq!(
        env_text(&deployment, "POLLING_INTERVAL").as_deref(),
        Some("30")
    );
    assert_eq!(
        env_text(&deployment, "OP_CONNECT_CA_FILE").as_deref(),
        Some("/etc/onepassword-operator/trust/ca.crt"),
        "--reuse-values kept the other values"
    );

    release.uninstall();
    let metrics = format!("{name}-metrics");
    let here = Some(ns.as_str());
    for (kind, object, object_ns) in [
        ("deployment", name.as_str(), here),
        ("deployment", "onepassword-connect", here),
        ("service", metrics.as_str(), here),
        ("service", "onepassword-connect", here),
        ("serviceaccount", name.as_str(), here),
        ("secret", "op-credentials", here),
        ("networkpolicy", name.as_str(), here),
        ("networkpolicy", "onepassword-connect", here),
        ("clusterrole", name.as_str(), None),
        ("clusterrolebinding", name.as_str(), None),
    ] {
        assert!(
            get(kind, object, object_ns).is_none(),
            "{kind} {object} is still there after helm uninstall"
        );
    }
    must_get("crd", CRD_NAME, None);
}

#[test]
fn chart_rbac_lets_the_operator_work_in_its_namespaces_and_nowhere_else() {
    let _timed =
        Timed::start("chart_rbac_lets_the_operator_work_in_its_namespaces_and_nowhere_else");
    let _crd = our_crd();
    let (mut namespaces, ns) = Namespaces::create("pkg-rbac-op");
    let apps = namespaces.add("pkg-rbac-apps");
    let release = Release::install(
        &unique("pkg"),
        &ns,
        &[
            "--set",
            &format!("operator.watchNamespace={{{apps}}}"),
            "--set",
            "operator.pollingInterval=2",
            "--set",
            "operator.logLevel=debug",
            "--set",
            &format!("operator.token.value={DEMO_TOKEN}"),
        ],
    );
    must_get("role", &release.fullname(), Some(&apps));
    must_get("rolebinding", &release.fullname(), Some(&apps));

    // The operator's environment is the chart's, except where it runs: Connect is a local
    // simulator, no ports are opened.
    let sim = Simulator::start(
        Seed::from_file(Path::new(ROOT).join("tests/fixtures/sim/demo.yaml"))
            .expect("the demo seed"),
    )
    .expect("start the Connect simulator");
    let deployment = must_get("deployment", &release.fullname(), Some(&ns));
    let sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("a serviceAccountName")
        .to_string();
    let mut env = BTreeMap::new();
    for (name, var) in env_of(&deployment) {
        let value = if let Some(key_ref) = var["valueFrom"]["secretKeyRef"].as_object() {
            let secret = must_get("secret", key_ref["name"].as_str().unwrap(), Some(&ns));
            secret_key(&secret, key_ref["key"].as_str().unwrap()).expect("the referenced key")
        } else if let Some(field) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match field {
                "metadata.namespace" => ns.clone(),
                _ => "packaging-test-pod".to_string(),
            }
        } else {
            var["value"].as_str().unwrap_or("").to_string()
        };
        env.insert(name, value);
    }
    assert_eq!(env["OP_CONNECT_TOKEN"], DEMO_TOKEN);
    assert_eq!(env["WATCH_NAMESPACE"], apps);
    env.insert("OP_CONNECT_HOST".into(), sim.url());
    env.insert("METRICS_BIND_ADDRESS".into(), "0".into());
    env.insert("HEALTH_PROBE_BIND_ADDRESS".into(), "0".into());

    let dir = scratch().join(&release.name);
    fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    impersonating_kubeconfig(&ns, &sa, &kubeconfig);
    let log = dir.join("operator.log");
    let mut operator = Operator(OperatorProcess::start(
        OPERATOR_BIN,
        &[],
        &kubeconfig,
        &env,
        log,
    ));

    kubectl(&[
        "apply",
        "-k",
        &format!("{ROOT}/config/samples"),
        "-n",
        &apps,
    ])
    .unwrap_or_else(|e| panic!("{e}"));

    // A OnePasswordItem becomes a Secret, and says so.
    for item in ["db-credentials", "registry-pull"] {
        wait_for(&format!("OnePasswordItem {item} Ready"), || {
            operator.assert_nothing_forbidden();
            let obj = get("onepassworditem", item, Some(&apps)).ok_or("no such item")?;
            match ready_reason(&obj) {
                Some((status, reason)) if status == "True" && reason == "Synced" => Ok(()),
                other => Err(format!("Ready: {other:?}")),
            }
        });
    }
    let secret = must_get("secret", "db-credentials", Some(&apps));
    assert_eq!(
        secret_key(&secret, "password").as_deref(),
        Some("demo-db-password")
    );
    let pull = must_get("secret", "registry-pull", Some(&apps));
    assert_eq!(pull["type"], "kubernetes.io/dockerconfigjson");

    // The annotated Deployment gets its Secret, and the restart controller records it.
    wait_for("Secret web-db", || {
        operator.assert_nothing_forbidden();
        get("secret", "web-db", Some(&apps)).ok_or("no such Secret".to_string())
    });
    wait_for("Deployment web records the Secrets it uses", || {
        operator.assert_nothing_forbidden();
        let web = must_get("deployment", "web", Some(&apps));
        let digests = web["metadata"]["annotations"]["operator.1password.io/secret-digests"]
            .as_str()
            .unwrap_or("");
        digests
            .contains("web-db")
            .then_some(())
            .ok_or(format!("secret-digests: {digests:?}"))
    });

    // An item change updates both Secrets and rolls the auto-restart Deployment.
    let rotated = unique("rotated-db-password");
    sim.set_field("Demo", "db", "password", &rotated)
        .expect("change the item");
    for name in ["db-credentials", "web-db"] {
        wait_for(&format!("Secret {name} has the new password"), || {
            operator.assert_nothing_forbidden();
            let secret = get("secret", name, Some(&apps)).ok_or("no such Secret")?;
            (secret_key(&secret, "password").as_deref() == Some(rotated.as_str()))
                .then_some(())
                .ok_or("the old password".to_string())
        });
    }
    wait_for("Deployment web restarted", || {
        operator.assert_nothing_forbidden();
        let web = must_get("deployment", "web", Some(&apps));
        web["spec"]["template"]["metadata"]["annotations"]["operator.1password.io/restarted-for"]
            .as_str()
            .map(|_| ())
            .ok_or("no restarted-for annotation".to_string())
    });

    operator.0.stop();
    let log = operator.0.log();
    assert!(
        log.contains("restarted"),
        "the log does not tell of the restart"
    );
    operator.assert_nothing_forbidden();
    for value in ["demo-db-password", rotated.as_str(), DEMO_TOKEN] {
        assert!(!log.contains(value), "the operator log contains a secret");
    }

    // And nothing beyond what it needs.
    let items = "onepassworditems.onepassword.com";
    let apps_namespace = format!("namespaces/{apps}");
    let crd = format!("customresourcedefinitions.apiextensions.k8s.io/{CRD_NAME}");
    assert_can(
        &ns,
        &sa,
        &[
            &["watch", items, "-n", &apps],
            &["patch", items, "--subresource=status", "-n", &apps],
            &["patch", items, "-n", &apps],
            &["watch", &crd],
            &["list", "secrets", "-n", &apps],
            &["create", "secrets", "-n", &apps],
            &["patch", "secrets", "-n", &apps],
            &["delete", "secrets", "-n", &apps],
            &["patch", "deployments.apps", "-n", &apps],
            &["patch", "statefulsets.apps", "-n", &apps],
            &["patch", "daemonsets.apps", "-n", &apps],
            &["create", "events.events.k8s.io", "-n", &apps],
            &["get", &apps_namespace],
            &["create", "leases.coordination.k8s.io", "-n", &ns],
            &[
                "update",
                "leases.coordination.k8s.io/onepassword-secrets-operator-leader",
                "-n",
                &ns,
            ],
        ],
        &[
            &["list", "configmaps", "-n", &apps],
            &["create", "pods", "-n", &apps],
            &["update", "secrets", "-n", &apps],
            &["delete", "deployments.apps", "-n", &apps],
            &["list", "customresourcedefinitions.apiextensions.k8s.io"],
            &["update", &crd],
            &["get", "secrets", "-n", "kube-system"],
            &["get", "secrets", "-n", &ns],
            &["list", "secrets", "--all-namespaces"],
            &["list", items, "--all-namespaces"],
            &["list", "namespaces"],
            &["get", "namespaces/kube-system"],
            &["create", "clusterroles.rbac.authorization.k8s.io"],
            &[
                "update",
                "leases.coordination.k8s.io/someone-else",
                "-n",
                &ns,
            ],
            &["create", "leases.coordination.k8s.io", "-n", &apps],
        ],
    );

    release.uninstall();
    assert!(get("role", &release.fullname(), Some(&apps)).is_none());
    assert!(get("clusterrole", &release.fullname(), None).is_none());
}

#[test]
fn chart_takes_over_the_official_crd_keeps_it_current_and_leaves_it_on_uninstall() {
    let _timed = Timed::start(
        "chart_takes_over_the_official_crd_keeps_it_current_and_leaves_it_on_uninstall",
    );
    let _crd = CrdWriter::lock();
    let (_namespaces, ns) = Namespaces::create("pkg-crd");

    // A cluster as the official operator's chart leaves it: its CRD, and OnePasswordItems.
    replace_crd(OFFICIAL_CRD);
    let official = must_get("crd", CRD_NAME, None);
    assert!(status_field(&official, "itemId").is_null(), "{official}");
    let item_file = scratch().join(format!("{ns}-item.yaml"));
    fs::write(
        &item_file,
        format!(
            "apiVersion: onepassword.com/v1\nkind: OnePasswordItem\nmetadata:\n  name: db\n  \
             namespace: {ns}\nspec:\n  itemPath: vaults/Demo/items/db\n"
        ),
    )
    .unwrap();
    kubectl(&["create", "-f", &item_file.to_string_lossy()]).unwrap_or_else(|e| panic!("{e}"));
    let item_uid = must_get("onepassworditem", "db", Some(&ns))["metadata"]["uid"].clone();
    let item_kept = |when: &str| {
        let item = get("onepassworditem", "db", Some(&ns))
            .unwrap_or_else(|| panic!("the OnePasswordItem is gone {when}"));
        assert_eq!(
            item["metadata"]["uid"], item_uid,
            "a new OnePasswordItem {when}"
        );
    };
    let crd_uid = official["metadata"]["uid"].clone();

    // Helm will not adopt a CRD it does not own, and installs nothing.
    let name = unique("pkg-crd");
    let err = helm(&["install", &name, CHART, "--namespace", &ns])
        .expect_err("helm install over a CRD Helm does not own");
    assert!(err.contains("invalid ownership metadata"), "{err}");
    assert!(helm(&["status", &name, "--namespace", &ns]).is_err());

    // The README's one-time step, then the install brings the CRD to ours in place.
    let commands = takeover_commands(&name, &ns);
    assert_eq!(commands.len(), 2, "{commands:?}");
    for command in &commands {
        let args: Vec<&str> = command.iter().map(String::as_str).collect();
        kubectl(&args).unwrap_or_else(|e| panic!("{e}"));
    }
    let release = Release::install_owning_the_crd(&name, &ns, &[]);
    let crd = must_get("crd", CRD_NAME, None);
    assert_eq!(crd["metadata"]["uid"], crd_uid, "the CRD was recreated");
    for field in ["itemId", "vaultId", "itemVersion", "observedGeneration"] {
        assert!(
            !status_field(&crd, field).is_null(),
            "no status.{field}: {crd}"
        );
    }
    let columns: Vec<&str> = crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["Ready", "Reason", "Age", "Path"]);
    assert_eq!(
        crd["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "Helm"
    );
    assert_eq!(
        crd["metadata"]["labels"]["app.kubernetes.io/instance"],
        *name
    );
    let annotations = &crd["metadata"]["annotations"];
    assert_eq!(annotations["helm.sh/resource-policy"], "keep");
    assert_eq!(annotations["meta.helm.sh/release-name"], *name);
    item_kept("after the install");

    // A newer chart whose CRD changed: `helm upgrade` applies the change.
    let newer = scratch().join(&name).join("newer-chart");
    copy_dir(Path::new(CHART), &newer);
    let mut changed = onepassword_secrets_operator::crd::crd();
    let newer_description = "The id of the item the item path resolved to (newer chart).";
    changed.spec.versions[0]
        .schema
        .as_mut()
        .and_then(|s| s.open_api_v3_schema.as_mut())
        .and_then(|s| s.properties.as_mut())
        .and_then(|p| p.get_mut("status"))
        .and_then(|s| s.properties.as_mut())
        .and_then(|p| p.get_mut("itemId"))
        .expect("our CRD declares status.itemId")
        .description = Some(newer_description.into());
    fs::write(
        newer.join("templates/crd.yaml"),
        onepassword_secrets_operator::crd::helm_template(&changed),
    )
    .unwrap();
    let upgrade = |chart: &Path, values: &[&str]| {
        let chart = chart.to_string_lossy();
        let mut args = vec![
            "upgrade",
            name.as_str(),
            &*chart,
            "--namespace",
            ns.as_str(),
            "--reuse-values",
        ];
        args.extend(values);
        helm(&args).unwrap_or_else(|e| panic!("{e}"));
    };
    upgrade(&newer, &[]);
    let crd = must_get("crd", CRD_NAME, None);
    assert_eq!(
        status_field(&crd, "itemId")["description"],
        newer_description
    );

    // A hand edit (here: a field removed) is undone by the next upgrade, back to this chart.
    kubectl(&[
        "patch",
        "crd",
        CRD_NAME,
        "--type=json",
        "-p",
        r#"[{"op": "remove", "path": "/spec/versions/0/schema/openAPIV3Schema/properties/status/properties/itemId"}]"#,
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(status_field(&must_get("crd", CRD_NAME, None), "itemId").is_null());
    upgrade(Path::new(CHART), &[]);
    let crd = must_get("crd", CRD_NAME, None);
    let ours: Value = serde_saphyr::from_str(&fs::read_to_string(OUR_CRD).unwrap()).unwrap();
    assert_eq!(
        status_field(&crd, "itemId"),
        status_field(&ours, "itemId"),
        "the upgrade did not restore status.itemId"
    );
    item_kept("after the upgrades");

    // crds.enabled=false on the owning release leaves the CRD (it says keep); true again adopts
    // it back (it still names this release).
    upgrade(Path::new(CHART), &["--set", "crds.enabled=false"]);
    assert_eq!(must_get("crd", CRD_NAME, None)["metadata"]["uid"], crd_uid);
    upgrade(Path::new(CHART), &["--set", "crds.enabled=true"]);
    let manifest = helm(&["get", "manifest", &name, "--namespace", &ns]).unwrap();
    assert!(
        manifest.contains("kind: CustomResourceDefinition"),
        "{manifest}"
    );

    // helm uninstall leaves the CRD and the OnePasswordItems.
    release.uninstall();
    let crd = must_get("crd", CRD_NAME, None);
    assert_eq!(
        crd["metadata"]["uid"], crd_uid,
        "helm uninstall deleted the CRD"
    );
    item_kept("after helm uninstall");
}

/// The namespace `config/default` creates, and the name of its ClusterRole and binding.
const KUSTOMIZE_NAMESPACE: &str = "onepassword-operator";
const KUSTOMIZE_CLUSTER_KINDS: [&str; 2] = ["clusterrolebinding", "clusterrole"];

/// Removes what `kubectl apply -k config/default` made, except the CRD that others use.
struct KustomizeCleanup;

impl Drop for KustomizeCleanup {
    fn drop(&mut self) {
        for kind in KUSTOMIZE_CLUSTER_KINDS {
            let _ = kubectl(&["delete", kind, KUSTOMIZE_NAMESPACE, "--ignore-not-found"]);
        }
        let _ = kubectl(&[
            "delete",
            "namespace",
            KUSTOMIZE_NAMESPACE,
            "--ignore-not-found",
            "--timeout=120s",
        ]);
    }
}

#[test]
fn kustomize_config_applies_and_matches_the_chart() {
    let _timed = Timed::start("kustomize_config_applies_and_matches_the_chart");
    // The kustomize RBAC is the chart's cluster-wide RBAC.
    let rendered = kubectl(&["kustomize", &format!("{ROOT}/config/default")])
        .unwrap_or_else(|e| panic!("{e}"));
    let docs = parse_documents(&rendered);
    let role = find(&docs, "ClusterRole", "onepassword-operator");
    let chart = render(&[]).unwrap();
    let chart_role = find(&chart, "ClusterRole", "rel-onepassword-secrets-operator");
    assert_eq!(
        rule_set(&role["rules"]),
        rule_set(&chart_role["rules"]),
        "config/rbac/role.yaml and the chart's ClusterRole differ"
    );
    let crd = find(&docs, "CustomResourceDefinition", CRD_NAME);
    assert_eq!(
        crd["spec"],
        find(&chart, "CustomResourceDefinition", CRD_NAME)["spec"]
    );

    // Applied for real: a server-side dry run cannot create objects in a namespace it only
    // pretends to create. A namespace left terminating by an earlier run goes first. Applying
    // config/default replaces the CRD (with an equal one, but by another manager).
    let _crd = CrdWriter::lock();
    let _cleanup = KustomizeCleanup;
    wait_for(
        "no terminating onepassword-operator namespace",
        || match get("namespace", KUSTOMIZE_NAMESPACE, None) {
            Some(ns) if ns["status"]["phase"] == "Terminating" => Err("terminating".to_string()),
            _ => Ok(()),
        },
    );
    kubectl(&["apply", "-k", &format!("{ROOT}/config/default")]).unwrap_or_else(|e| panic!("{e}"));
    for (kind, name) in [
        ("serviceaccount", "onepassword-operator"),
        ("deployment", "onepassword-operator"),
    ] {
        must_get(kind, name, Some(KUSTOMIZE_NAMESPACE));
    }
    for kind in KUSTOMIZE_CLUSTER_KINDS {
        must_get(kind, KUSTOMIZE_NAMESPACE, None);
    }
    let deployment = must_get(
        "deployment",
        "onepassword-operator",
        Some(KUSTOMIZE_NAMESPACE),
    );
    assert_eq!(
        env_of(&deployment)["OP_CONNECT_TOKEN"]["valueFrom"]["secretKeyRef"],
        json!({"name": "onepassword-token", "key": "token"})
    );
    assert_can(
        KUSTOMIZE_NAMESPACE,
        "onepassword-operator",
        &[&["list", "secrets", "--all-namespaces"]],
        &[
            &["list", "configmaps", "--all-namespaces"],
            &["list", "namespaces"],
        ],
    );
    // Applying it again changes nothing that fails.
    kubectl(&[
        "apply",
        "-k",
        &format!("{ROOT}/config/default"),
        "--dry-run=server",
    ])
    .unwrap_or_else(|e| panic!("{e}"));

    // The samples are valid for this API server.
    let (_namespaces, ns) = Namespaces::create("pkg-samples");
    let out = kubectl(&[
        "apply",
        "-k",
        &format!("{ROOT}/config/samples"),
        "--dry-run=server",
        "-n",
        &ns,
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    for object in [
        "onepassworditem.onepassword.com/db-credentials",
        "onepassworditem.onepassword.com/registry-pull",
        "deployment.apps/web",
    ] {
        assert!(out.contains(object), "{object} not in: {out}");
    }
}
