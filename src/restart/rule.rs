//! When to restart a workload because a Secret it uses changed: the whole rule, pure, no I/O.
//!
//! A workload records on itself (annotation [`SECRET_DIGESTS_ANNOTATION`]) a fingerprint of the
//! data of each managed Secret it uses, as last seen. Comparing that record with the Secrets as
//! they are now says whether anything changed. A restart writes the new record and, in the same
//! server-side apply, a pod-template annotation whose value is derived from the new record only.
//! The same state always gives the same value, so a retry, a resync or an operator restart
//! re-applies what is already there and never rolls the workload a second time.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, EnvFromSource, EnvVar, PodTemplateSpec};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::vocabulary::{
    AUTO_RESTART_ANNOTATION, ITEM_NAME_ANNOTATION, RESTARTED_FOR_ANNOTATION,
    SECRET_DIGESTS_ANNOTATION, parse_bool,
};

/// Secret name -> fingerprint of its data digest, sorted by name.
pub type DigestMap = BTreeMap<String, String>;

/// What to write on a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The record matches the Secrets: write nothing.
    Nothing,
    /// Write only the record (first sight, Secrets added or removed, or changes with
    /// auto-restart off). An empty string means the record goes away.
    Baseline(String),
    /// Write the record and roll the pods.
    Restart {
        record: String,
        restarted_for: String,
        /// The changed Secrets, with auto-restart on, that caused it.
        secrets: Vec<String>,
    },
}

/// The names of the Secrets a pod template uses in a way a restart refreshes: environment
/// variables (`env[].valueFrom.secretKeyRef`, `envFrom[].secretRef`) of containers, init
/// containers and ephemeral containers, `secret` volumes, projected `secret` sources, and the
/// `operator.1password.io/item-name` annotation of the workload or of its pod template.
/// `imagePullSecrets` are left out: restarting pods does not help a failed image pull.
pub fn secrets_used(
    template: &PodTemplateSpec,
    workload_annotations: &BTreeMap<String, String>,
) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    let template_annotations = template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref());
    for annotations in [Some(workload_annotations), template_annotations]
        .into_iter()
        .flatten()
    {
        // The Secret made for the annotation has the name made valid the same way.
        if let Some(name) = annotations.get(ITEM_NAME_ANNOTATION).map(|n| n.trim())
            && !name.is_empty()
            && let Ok(name) = crate::secret::secret_name(name)
        {
            used.insert(name);
        }
    }
    let Some(spec) = template.spec.as_ref() else {
        return used;
    };
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .map(|c: &Container| (c.env.as_deref(), c.env_from.as_deref()));
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| (c.env.as_deref(), c.env_from.as_deref()));
    for (env, env_from) in containers.chain(ephemeral) {
        used.extend(
            env.unwrap_or_default()
                .iter()
                .filter_map(|e: &EnvVar| e.value_from.as_ref()?.secret_key_ref.as_ref())
                .map(|r| r.name.clone()),
        );
        used.extend(
            env_from
                .unwrap_or_default()
                .iter()
                .filter_map(|e: &EnvFromSource| e.secret_ref.as_ref())
                .map(|r| r.name.clone()),
        );
    }
    for volume in spec.volumes.iter().flatten() {
        if let Some(name) = volume.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            used.insert(name);
        }
        let projected = volume.projected.as_ref().and_then(|p| p.sources.as_ref());
        used.extend(
            projected
                .into_iter()
                .flatten()
                .filter_map(|s| s.secret.as_ref())
                .map(|s| s.name.clone()),
        );
    }
    used.retain(|name| !name.is_empty());
    used
}

/// A short, one-way fingerprint of a Secret's data digest. The digest itself is not copied onto
/// workloads: whoever can read a Deployment need not be able to read its Secrets' digests.
pub fn fingerprint(digest: &str) -> String {
    short_sha256(digest.as_bytes())
}

/// `name=fingerprint,name2=fingerprint2`, sorted by name. Secret names cannot contain `=` or
/// `,`, and fingerprints are hex.
pub fn encode(map: &DigestMap) -> String {
    let entries: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
    entries.join(",")
}

/// The map written by [`encode`]; `None` when the text is not one (someone edited it).
pub fn decode(text: &str) -> Option<DigestMap> {
    if text.is_empty() {
        return Some(DigestMap::new());
    }
    text.split(',')
        .map(|entry| {
            let (name, value) = entry.split_once('=')?;
            (!name.is_empty() && !value.is_empty() && !value.contains('='))
                .then(|| (name.to_string(), value.to_string()))
        })
        .collect()
}

/// The pod-template annotation value for a restart into `current`: a function of `current`
/// alone, so re-applying it for the same state changes nothing.
pub fn restarted_for(current: &DigestMap) -> String {
    short_sha256(encode(current).as_bytes())
}

/// Names present in both maps whose fingerprints differ.
pub fn changed_secrets(recorded: &DigestMap, current: &DigestMap) -> Vec<String> {
    current
        .iter()
        .filter(|(name, value)| recorded.get(*name).is_some_and(|old| old != *value))
        .map(|(name, _)| name.clone())
        .collect()
}

/// Decides what to write on a workload, given its recorded annotation (`None`: absent), the
/// fingerprints of the managed Secrets it uses now, what its pods started with for Secrets the
/// record does not hold yet (see [`seen_by_pods`]), and whether auto-restart is on for a
/// Secret. `enabled` is asked only about Secrets whose data changed.
pub fn plan(
    recorded: Option<&str>,
    current: &DigestMap,
    started_with: &DigestMap,
    enabled: impl Fn(&str) -> bool,
) -> Plan {
    let record = encode(current);
    let known = match recorded {
        None if current.is_empty() => return Plan::Nothing,
        None => DigestMap::new(),
        // An unreadable record is replaced, never taken as a change: no restart on a guess.
        Some(text) => match decode(text) {
            Some(known) if &known == current => return Plan::Nothing,
            Some(known) => known,
            None => return Plan::Baseline(record),
        },
    };
    let seen = seen_by_pods(&known, current, started_with);
    let secrets: Vec<String> = changed_secrets(&seen, current)
        .into_iter()
        .filter(|name| enabled(name))
        .collect();
    if secrets.is_empty() {
        return Plan::Baseline(record);
    }
    Plan::Restart {
        restarted_for: restarted_for(current),
        record,
        secrets,
    }
}

/// What the workload's pods hold, as far as is known: the record, and for a Secret it does not
/// hold yet (first sight of the workload, or a Secret newly used), what the pods of the current
/// pod template started with when that is known to differ from now (`started_with`). Without
/// that, a change made between the workload's creation and its first record would be recorded
/// as the baseline and never rolled out.
pub fn seen_by_pods(known: &DigestMap, current: &DigestMap, started_with: &DigestMap) -> DigestMap {
    let mut seen = known.clone();
    for name in current.keys().filter(|name| !known.contains_key(*name)) {
        if let Some(then) = started_with.get(name) {
            seen.insert(name.clone(), then.clone());
        }
    }
    seen
}

/// The fingerprint standing for data the pods started with that is no longer known: it
/// differs from every real one, so it counts as a change.
pub const UNKNOWN_FINGERPRINT: &str = "unknown";

/// The last data digests of one Secret, each with the resourceVersion at which the Secret got
/// it. resourceVersions are etcd revisions, ordered across objects of one API server, so they
/// tell whether a workload's pod template (whose revision is known) came before or after the
/// Secret's data changed. The first digest seen counts as there from the start: a Secret
/// created after a workload's pods is one they waited for, and an operator starting up
/// (re)records what is there without taking it for a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    /// `(since, digest)`, oldest first; never empty.
    entries: Vec<(u64, String)>,
}

/// Digests kept per Secret: enough for changes that follow each other before a workload is
/// first looked at (a few seconds).
const HISTORY_LEN: usize = 4;

impl History {
    pub fn new(digest: &str) -> Self {
        History {
            entries: vec![(0, digest.to_string())],
        }
    }

    pub fn current(&self) -> &str {
        &self.entries[self.entries.len() - 1].1
    }

    /// Records the digest seen at `revision`; true when it differs from the current one. A
    /// revision that is not a number cannot be ordered: the digest then starts a new history.
    pub fn observe(&mut self, revision: Option<u64>, digest: &str) -> bool {
        if self.current() == digest {
            return false;
        }
        match revision {
            Some(revision) => {
                self.entries.push((revision, digest.to_string()));
                if self.entries.len() > HISTORY_LEN {
                    self.entries.remove(0);
                }
            }
            None => *self = History::new(digest),
        }
        true
    }

    /// The digest the Secret held at `revision`; `None` when that is older than what is kept.
    pub fn at(&self, revision: u64) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(since, _)| *since <= revision)
            .map(|(_, digest)| digest.as_str())
    }
}

/// Where an auto-restart decision came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Secret,
    Workload,
    Namespace,
    /// `AUTO_RESTART`, the operator's default.
    Default,
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Level::Secret => "Secret",
            Level::Workload => "workload",
            Level::Namespace => "Namespace",
            Level::Default => "AUTO_RESTART",
        })
    }
}

/// An auto-restart decision and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AutoRestart {
    pub enabled: bool,
    pub decided_by: Level,
    /// The deciding annotation was not a boolean; it counts as `false`.
    pub invalid: bool,
}

/// The `auto-restart` annotation value in `annotations`, when set: an empty value means unset.
pub fn setting(annotations: Option<&BTreeMap<String, String>>) -> Option<&str> {
    annotations?
        .get(AUTO_RESTART_ANNOTATION)
        .map(String::as_str)
        .filter(|v| !v.is_empty())
}

/// A workload's `auto-restart` setting: its metadata's, else its pod template's.
pub fn workload_setting<'a>(
    metadata: &'a BTreeMap<String, String>,
    template: Option<&'a PodTemplateSpec>,
) -> Option<&'a str> {
    setting(Some(metadata)).or_else(|| {
        setting(
            template
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref()),
        )
    })
}

/// The `auto-restart` setting for a (workload, Secret) pair: the first one set among the
/// Secret's, the workload's ([`workload_setting`]) and the Namespace's (each read with
/// [`setting`]), else the default (`AUTO_RESTART`). An invalid value counts as `false`, as in
/// the official operator.
pub fn auto_restart(
    secret: Option<&str>,
    workload: Option<&str>,
    namespace: Option<&str>,
    default: bool,
) -> AutoRestart {
    let levels = [
        (Level::Secret, secret),
        (Level::Workload, workload),
        (Level::Namespace, namespace),
    ];
    for (level, value) in levels {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            let parsed = parse_bool(value);
            return AutoRestart {
                enabled: parsed.unwrap_or(false),
                decided_by: level,
                invalid: parsed.is_none(),
            };
        }
    }
    AutoRestart {
        enabled: default,
        decided_by: Level::Default,
        invalid: false,
    }
}

/// The server-side apply body for a workload: only our annotations. `record` empty removes the
/// record. `restarted_for` is the new value for a restart, or the value already on the pod
/// template otherwise: an apply that left it out would drop a field we own, change the pod
/// template and roll the pods. `resource_version` makes the apply fail with a conflict when the
/// workload changed since it was read, instead of acting on stale state.
pub fn apply_body(
    api_version: &str,
    kind: &str,
    name: &str,
    resource_version: Option<&str>,
    record: &str,
    restarted_for: Option<&str>,
) -> Value {
    let mut metadata = json!({ "name": name });
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    if !record.is_empty() {
        metadata["annotations"] = json!({ SECRET_DIGESTS_ANNOTATION: record });
    }
    let mut body = json!({ "apiVersion": api_version, "kind": kind, "metadata": metadata });
    if let Some(value) = restarted_for {
        body["spec"] = json!({
            "template": { "metadata": { "annotations": { RESTARTED_FOR_ANNOTATION: value } } }
        });
    }
    body
}

fn short_sha256(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> DigestMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn template(yaml: &str) -> PodTemplateSpec {
        serde_saphyr::from_str(yaml).expect("valid pod template fixture")
    }

    fn used(yaml: &str, workload_annotations: &[(&str, &str)]) -> Vec<String> {
        secrets_used(&template(yaml), &map(workload_annotations))
            .into_iter()
            .collect()
    }

    /// The plan for a workload whose pods hold what its record says (or, without a record,
    /// what the Secrets hold now).
    fn plan_from_record(
        recorded: Option<&str>,
        current: &DigestMap,
        enabled: impl Fn(&str) -> bool,
    ) -> Plan {
        plan(recorded, current, &DigestMap::new(), enabled)
    }

    const ALWAYS: fn(&str) -> bool = |_| true;
    const NEVER: fn(&str) -> bool = |_| false;

    // --- which Secrets a workload uses ---

    #[test]
    fn env_and_env_from_of_containers_count() {
        let yaml = r#"
spec:
  containers:
    - name: app
      env:
        - name: PASSWORD
          valueFrom: { secretKeyRef: { name: db, key: password } }
        - name: PLAIN
          value: x
        - name: FROM_CM
          valueFrom: { configMapKeyRef: { name: settings, key: k } }
      envFrom:
        - secretRef: { name: api }
        - configMapRef: { name: other }
"#;
        assert_eq!(used(yaml, &[]), ["api", "db"]);
    }

    #[test]
    fn init_containers_count() {
        let yaml = r#"
spec:
  containers: [{ name: app }]
  initContainers:
    - name: migrate
      env:
        - name: URL
          valueFrom: { secretKeyRef: { name: migrations, key: url } }
      envFrom: [{ secretRef: { name: init-env } }]
"#;
        assert_eq!(used(yaml, &[]), ["init-env", "migrations"]);
    }

    #[test]
    fn ephemeral_containers_count() {
        let yaml = r#"
spec:
  containers: [{ name: app }]
  ephemeralContainers:
    - name: debug
      envFrom: [{ secretRef: { name: debug-env } }]
"#;
        assert_eq!(used(yaml, &[]), ["debug-env"]);
    }

    #[test]
    fn secret_volumes_and_projected_sources_count() {
        let yaml = r#"
spec:
  containers: [{ name: app }]
  volumes:
    - name: certs
      secret: { secretName: tls }
    - name: bundle
      projected:
        sources:
          - secret: { name: projected-one }
          - configMap: { name: not-a-secret }
          - secret: { name: projected-two }
          - serviceAccountToken: { path: token }
    - name: cm
      configMap: { name: cm-volume }
    - name: scratch
      emptyDir: {}
"#;
        assert_eq!(used(yaml, &[]), ["projected-one", "projected-two", "tls"]);
    }

    #[test]
    fn image_pull_secrets_do_not_count() {
        let yaml = r#"
spec:
  imagePullSecrets: [{ name: registry }]
  containers: [{ name: app, image: private/app }]
"#;
        assert!(used(yaml, &[]).is_empty());
    }

    #[test]
    fn item_name_annotation_on_the_workload_counts() {
        let yaml = "spec: { containers: [{ name: app }] }";
        let annotations = [(ITEM_NAME_ANNOTATION, "from-1password")];
        assert_eq!(used(yaml, &annotations), ["from-1password"]);
    }

    #[test]
    fn item_name_annotation_on_the_pod_template_counts() {
        let yaml = r#"
metadata:
  annotations:
    operator.1password.io/item-name: " templated "
spec: { containers: [{ name: app }] }
"#;
        assert_eq!(used(yaml, &[]), ["templated"]);
    }

    #[test]
    fn an_item_name_is_made_a_valid_secret_name_as_the_secret_was() {
        let yaml = "spec: { containers: [{ name: app }] }";
        assert_eq!(
            used(yaml, &[(ITEM_NAME_ANNOTATION, "My Database_Login")]),
            ["my-database-login"]
        );
    }

    #[test]
    fn an_empty_item_name_annotation_is_ignored() {
        let yaml = "spec: { containers: [{ name: app }] }";
        assert!(used(yaml, &[(ITEM_NAME_ANNOTATION, "  ")]).is_empty());
    }

    #[test]
    fn a_secret_used_several_ways_is_listed_once() {
        let yaml = r#"
spec:
  containers:
    - name: app
      envFrom: [{ secretRef: { name: db } }]
  volumes:
    - { name: db, secret: { secretName: db } }
"#;
        assert_eq!(used(yaml, &[(ITEM_NAME_ANNOTATION, "db")]), ["db"]);
    }

    #[test]
    fn a_template_without_a_spec_uses_nothing() {
        assert!(used("metadata: { labels: { app: x } }", &[]).is_empty());
    }

    // --- the record ---

    #[test]
    fn encoding_is_sorted_and_round_trips() {
        let m = map(&[("zeta", "02"), ("alpha", "01")]);
        assert_eq!(encode(&m), "alpha=01,zeta=02");
        assert_eq!(decode(&encode(&m)), Some(m));
    }

    #[test]
    fn the_empty_map_encodes_to_the_empty_string() {
        assert_eq!(encode(&DigestMap::new()), "");
        assert_eq!(decode(""), Some(DigestMap::new()));
    }

    #[test]
    fn a_mangled_record_does_not_decode() {
        for text in ["garbage", "a=1,", "=1", "a=", "a=1=2", ",a=1"] {
            assert_eq!(decode(text), None, "{text:?}");
        }
    }

    #[test]
    fn fingerprints_are_short_hex_and_do_not_contain_the_digest() {
        let digest = "v1:0123456789abcdef0123456789abcdef:fedcba9876543210fedcba9876543210";
        let fp = fingerprint(digest);
        assert_eq!(fp.len(), 16);
        assert!(fp.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(!digest.contains(&fp));
        assert_ne!(fingerprint("v1:salt:a"), fingerprint("v1:salt:b"));
    }

    #[test]
    fn restarted_for_is_stable_across_releases() {
        // Changing this function rolls every workload that restarts next: keep it stable.
        assert_eq!(restarted_for(&map(&[("db", "01")])), "e25dd4b2ecbe93eb");
    }

    // --- the plan ---

    #[test]
    fn first_sight_is_a_baseline_without_restart() {
        let current = map(&[("db", "01")]);
        assert_eq!(
            plan_from_record(None, &current, ALWAYS),
            Plan::Baseline("db=01".into())
        );
    }

    #[test]
    fn a_workload_using_no_managed_secret_and_without_record_is_left_alone() {
        assert_eq!(
            plan_from_record(None, &DigestMap::new(), ALWAYS),
            Plan::Nothing
        );
    }

    #[test]
    fn a_resync_with_nothing_changed_is_nothing() {
        let current = map(&[("api", "0a"), ("db", "01")]);
        assert_eq!(
            plan_from_record(Some("api=0a,db=01"), &current, ALWAYS),
            Plan::Nothing
        );
    }

    #[test]
    fn one_changed_secret_restarts_once() {
        let before = map(&[("db", "01")]);
        let after = map(&[("db", "02")]);
        let first = plan_from_record(Some(&encode(&before)), &after, ALWAYS);
        let Plan::Restart {
            record,
            restarted_for: value,
            secrets,
        } = first
        else {
            panic!("expected a restart, got {first:?}");
        };
        assert_eq!(record, "db=02");
        assert_eq!(value, restarted_for(&after));
        assert_eq!(secrets, ["db"]);
        // Once the record is written, the same state asks for nothing more.
        assert_eq!(
            plan_from_record(Some(&record), &after, ALWAYS),
            Plan::Nothing
        );
    }

    #[test]
    fn a_retry_of_the_same_state_yields_the_same_restarted_for() {
        let after = map(&[("db", "02")]);
        let first = plan_from_record(Some("db=01"), &after, ALWAYS);
        let retry = plan_from_record(Some("db=01"), &after, ALWAYS);
        assert_eq!(first, retry);
        assert!(matches!(first, Plan::Restart { .. }));
    }

    #[test]
    fn two_secrets_changing_together_give_one_restart() {
        let current = map(&[("api", "0b"), ("db", "02"), ("same", "05")]);
        let result = plan_from_record(Some("api=0a,db=01,same=05"), &current, ALWAYS);
        assert_eq!(
            result,
            Plan::Restart {
                record: "api=0b,db=02,same=05".into(),
                restarted_for: restarted_for(&current),
                secrets: vec!["api".into(), "db".into()],
            }
        );
    }

    #[test]
    fn an_added_secret_is_a_baseline() {
        let current = map(&[("api", "0a"), ("db", "01")]);
        assert_eq!(
            plan_from_record(Some("db=01"), &current, ALWAYS),
            Plan::Baseline("api=0a,db=01".into())
        );
    }

    #[test]
    fn a_removed_secret_is_a_baseline() {
        let current = map(&[("db", "01")]);
        assert_eq!(
            plan_from_record(Some("api=0a,db=01"), &current, ALWAYS),
            Plan::Baseline("db=01".into())
        );
    }

    #[test]
    fn removing_the_last_secret_clears_the_record() {
        assert_eq!(
            plan_from_record(Some("db=01"), &DigestMap::new(), ALWAYS),
            Plan::Baseline(String::new())
        );
    }

    #[test]
    fn a_change_with_auto_restart_off_only_updates_the_record() {
        let current = map(&[("db", "02")]);
        assert_eq!(
            plan_from_record(Some("db=01"), &current, NEVER),
            Plan::Baseline("db=02".into())
        );
    }

    #[test]
    fn only_secrets_with_auto_restart_on_are_named_as_the_cause() {
        let current = map(&[("api", "0b"), ("db", "02")]);
        let result = plan_from_record(Some("api=0a,db=01"), &current, |name| name == "db");
        assert!(
            matches!(&result, Plan::Restart { secrets, .. } if secrets == &["db"]),
            "{result:?}"
        );
    }

    #[test]
    fn auto_restart_is_asked_only_about_changed_secrets() {
        let current = map(&[("api", "0a"), ("db", "02"), ("new", "03")]);
        let asked = std::cell::RefCell::new(Vec::new());
        plan_from_record(Some("api=0a,db=01"), &current, |name| {
            asked.borrow_mut().push(name.to_string());
            true
        });
        assert_eq!(asked.into_inner(), ["db"]);
    }

    #[test]
    fn a_change_together_with_an_added_secret_restarts_and_records_both() {
        let current = map(&[("api", "0a"), ("db", "02")]);
        let result = plan_from_record(Some("db=01"), &current, ALWAYS);
        assert!(
            matches!(&result, Plan::Restart { record, .. } if record == "api=0a,db=02"),
            "{result:?}"
        );
    }

    #[test]
    fn a_mangled_record_is_replaced_without_restart() {
        let current = map(&[("db", "02")]);
        assert_eq!(
            plan_from_record(Some("not a record"), &current, ALWAYS),
            Plan::Baseline("db=02".into())
        );
        assert_eq!(
            plan_from_record(Some("not a record"), &DigestMap::new(), ALWAYS),
            Plan::Baseline(String::new())
        );
    }

    #[test]
    fn a_change_back_to_an_earlier_state_restarts_with_that_states_value() {
        let a = map(&[("db", "01")]);
        let b = map(&[("db", "02")]);
        let to_b = plan_from_record(Some(&encode(&a)), &b, ALWAYS);
        let back_to_a = plan_from_record(Some(&encode(&b)), &a, ALWAYS);
        assert!(
            matches!(to_b, Plan::Restart { ref restarted_for, .. } if *restarted_for == super::restarted_for(&b))
        );
        assert!(
            matches!(back_to_a, Plan::Restart { ref restarted_for, .. } if *restarted_for == super::restarted_for(&a))
        );
    }

    #[test]
    fn first_sight_restarts_when_the_pods_started_with_other_data() {
        // The data changed after the pods were made and before the workload was first seen.
        let current = map(&[("api", "0a"), ("db", "02")]);
        let started_with = map(&[("db", "01")]);
        assert_eq!(
            plan(None, &current, &started_with, ALWAYS),
            Plan::Restart {
                record: "api=0a,db=02".into(),
                restarted_for: restarted_for(&current),
                secrets: vec!["db".into()],
            }
        );
        // Once recorded, nothing more: exactly one rollout.
        assert_eq!(
            plan(Some("api=0a,db=02"), &current, &started_with, ALWAYS),
            Plan::Nothing
        );
        // With auto-restart off, only the record.
        assert_eq!(
            plan(None, &current, &started_with, NEVER),
            Plan::Baseline("api=0a,db=02".into())
        );
        // Pods that started with what is there now: a baseline.
        assert_eq!(
            plan(None, &current, &map(&[("db", "02")]), ALWAYS),
            Plan::Baseline("api=0a,db=02".into())
        );
    }

    #[test]
    fn a_newly_used_secret_that_changed_after_the_pods_started_restarts() {
        let current = map(&[("api", "0b"), ("db", "01")]);
        let result = plan(Some("db=01"), &current, &map(&[("api", "0a")]), ALWAYS);
        assert!(
            matches!(&result, Plan::Restart { secrets, .. } if secrets == &["api"]),
            "{result:?}"
        );
        // What the pods started with never overrides the record.
        assert_eq!(
            plan(
                Some("api=0b,db=01"),
                &current,
                &map(&[("api", "0a"), ("db", "00")]),
                ALWAYS
            ),
            Plan::Nothing
        );
        let unknown = map(&[("api", UNKNOWN_FINGERPRINT)]);
        assert!(matches!(
            plan(Some("db=01"), &current, &unknown, ALWAYS),
            Plan::Restart { .. }
        ));
    }

    // --- the digest history of a Secret ---

    #[test]
    fn the_first_digest_counts_from_the_start_and_changes_from_their_revision() {
        let mut h = History::new("d1");
        assert_eq!(h.at(0), Some("d1"));
        assert!(!h.observe(Some(50), "d1"), "the same digest is no change");
        assert!(h.observe(Some(100), "d2"));
        assert!(h.observe(Some(120), "d3"));
        assert_eq!(h.current(), "d3");
        assert_eq!(h.at(99), Some("d1"));
        assert_eq!(h.at(100), Some("d2"));
        assert_eq!(h.at(119), Some("d2"));
        assert_eq!(h.at(500), Some("d3"));
    }

    #[test]
    fn the_history_is_bounded_and_says_when_it_no_longer_knows() {
        let mut h = History::new("d0");
        for i in 1..=10u64 {
            h.observe(Some(i * 10), &format!("d{i}"));
        }
        assert_eq!(h.at(100), Some("d10"));
        assert_eq!(h.at(75), Some("d7"));
        assert_eq!(h.at(5), None, "older than what is kept");
    }

    #[test]
    fn a_revision_that_is_not_a_number_starts_the_history_again() {
        let mut h = History::new("d1");
        h.observe(Some(100), "d2");
        assert!(h.observe(None, "d3"));
        assert_eq!(h.at(0), Some("d3"));
    }

    // --- auto-restart settings ---

    #[test]
    fn a_workload_setting_is_its_metadatas_else_its_pod_templates_and_empty_is_unset() {
        let on_template = template(
            r#"
metadata: { annotations: { operator.1password.io/auto-restart: "true" } }
"#,
        );
        let metadata = |value: &str| map(&[(AUTO_RESTART_ANNOTATION, value)]);
        let both = metadata("false");
        assert_eq!(workload_setting(&both, Some(&on_template)), Some("false"));
        let empty = metadata("");
        assert_eq!(workload_setting(&empty, Some(&on_template)), Some("true"));
        assert_eq!(workload_setting(&empty, None), None);
        assert_eq!(setting(Some(&metadata(""))), None);
    }

    /// (secret, workload, namespace, default) -> (enabled, decided by, invalid)
    type Row = (
        Option<&'static str>,
        Option<&'static str>,
        Option<&'static str>,
        bool,
        bool,
        Level,
        bool,
    );

    #[test]
    fn auto_restart_precedence_table() {
        use Level::*;
        let table: &[Row] = &[
            (None, None, None, false, false, Default, false),
            (None, None, None, true, true, Default, false),
            (None, None, Some("true"), false, true, Namespace, false),
            (None, None, Some("false"), true, false, Namespace, false),
            (
                None,
                Some("true"),
                Some("false"),
                false,
                true,
                Workload,
                false,
            ),
            (
                None,
                Some("false"),
                Some("true"),
                true,
                false,
                Workload,
                false,
            ),
            (
                Some("true"),
                Some("false"),
                Some("false"),
                false,
                true,
                Secret,
                false,
            ),
            (
                Some("false"),
                Some("true"),
                Some("true"),
                true,
                false,
                Secret,
                false,
            ),
            // Empty means unset: the next level decides.
            (Some(""), Some(""), Some("t"), false, true, Namespace, false),
            (Some(""), None, None, true, true, Default, false),
            // Invalid counts as false and does not fall through.
            (Some("yes"), Some("true"), None, true, false, Secret, true),
            (
                None,
                Some("sure"),
                Some("true"),
                true,
                false,
                Workload,
                true,
            ),
            (None, None, Some("enabled"), true, false, Namespace, true),
        ];
        for &(secret, workload, namespace, default, enabled, level, invalid) in table {
            let got = auto_restart(secret, workload, namespace, default);
            assert_eq!(
                got,
                AutoRestart {
                    enabled,
                    decided_by: level,
                    invalid
                },
                "secret={secret:?} workload={workload:?} namespace={namespace:?} default={default}"
            );
        }
    }

    // --- the apply body ---

    #[test]
    fn a_restart_body_holds_only_our_two_annotations() {
        let body = apply_body(
            "apps/v1",
            "Deployment",
            "web",
            Some("42"),
            "db=02",
            Some("0b2ed7b36d7fd3d9"),
        );
        assert_eq!(
            body,
            json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": "web",
                    "resourceVersion": "42",
                    "annotations": { SECRET_DIGESTS_ANNOTATION: "db=02" }
                },
                "spec": { "template": { "metadata": { "annotations": {
                    RESTARTED_FOR_ANNOTATION: "0b2ed7b36d7fd3d9"
                } } } }
            })
        );
    }

    #[test]
    fn a_baseline_body_without_an_earlier_restart_has_no_spec() {
        let body = apply_body("apps/v1", "StatefulSet", "db", None, "db=01", None);
        assert_eq!(
            body,
            json!({
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": { "name": "db", "annotations": { SECRET_DIGESTS_ANNOTATION: "db=01" } }
            })
        );
    }

    #[test]
    fn an_empty_record_is_left_out_so_the_apply_removes_it() {
        let body = apply_body("apps/v1", "DaemonSet", "agent", None, "", Some("abc"));
        assert!(body["metadata"].get("annotations").is_none());
        assert_eq!(
            body["spec"]["template"]["metadata"]["annotations"][RESTARTED_FOR_ANNOTATION],
            "abc"
        );
    }
}
