//! Which status fields the installed OnePasswordItem CRD declares, so that the status we write is
//! one the API server takes under either CRD.
//!
//! A cluster that swapped the official operator's Helm chart for ours keeps the official CRD
//! until it is taken over (Helm never upgrades the CRDs in a chart's `crds/`, where the official
//! chart has it; ours renders it as a template, but adopts an existing one only on request).
//! That CRD (`config/crd/bases/
//! onepassword.com_onepassworditems.yaml` in 1Password/onepassword-operator v1.12.0, copied in
//! `tests/fixtures/official/`) declares only `status.conditions[].{type, status,
//! lastTransitionTime, message}`, and server-side apply refuses any other field with a 500
//! ("field not declared in schema"). So the operator reads the CRD at start and whenever it
//! changes, and writes only what it declares; under the official CRD the reason leads the
//! message (`ItemNotFound: ...`). When the CRD cannot be read (RBAC), the full status is tried
//! and a schema rejection makes the operator fall back to the official shape for good. A
//! rejection of fields the CRD we read declares is the API server lagging a CRD update by a
//! moment: that write is made in the official shape and the whole status again shortly.

use std::{
    collections::BTreeSet,
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use futures::{Stream, StreamExt};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray,
};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use serde_json::Value;
use tokio::sync::watch;

use crate::crd::{GROUP, OnePasswordItemCondition, OnePasswordItemStatus, PLURAL, VERSION};

/// The API server's message when an applied field is not in the CRD's schema.
const NOT_DECLARED: &str = "field not declared in schema";

/// How to get our CRD installed, told when the richer status is unavailable.
const HOW_TO_UPGRADE: &str = "apply this operator's CRD to get reasons, observedGeneration and \
    the resolved item ids in the status: `kubectl apply -f crds/onepassworditem.yaml`, or let \
    this operator's Helm release own it (chart README, \"Taking over an existing CRD\"); the \
    official chart never upgrades the CRD it installed";

/// The fields of one level of the status the CRD declares.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Declared {
    /// Anything: what our CRD declares is all we write, or the schema keeps unknown fields.
    Any,
    Only(BTreeSet<String>),
}

impl Declared {
    fn of(schema: Option<&JSONSchemaProps>) -> Declared {
        match schema {
            None => Declared::Only(BTreeSet::new()),
            Some(s) if s.x_kubernetes_preserve_unknown_fields == Some(true) => Declared::Any,
            Some(s) => Declared::Only(
                s.properties
                    .iter()
                    .flatten()
                    .map(|(k, _)| k.clone())
                    .collect(),
            ),
        }
    }

    fn has(&self, field: &str) -> bool {
        match self {
            Declared::Any => true,
            Declared::Only(fields) => fields.contains(field),
        }
    }

    fn prune(&self, object: &mut serde_json::Map<String, Value>) {
        object.retain(|k, _| self.has(k));
    }
}

/// The status fields a OnePasswordItem CRD declares: of `status`, and of each condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusFields {
    status: Declared,
    condition: Declared,
}

impl Default for StatusFields {
    /// Before the CRD is known: everything (our CRD), until the API server says otherwise.
    fn default() -> Self {
        StatusFields {
            status: Declared::Any,
            condition: Declared::Any,
        }
    }
}

impl StatusFields {
    /// What the official operator's CRD declares, the shape every version of it accepts.
    pub fn official() -> Self {
        let set = |names: &[&str]| Declared::Only(names.iter().map(|n| n.to_string()).collect());
        StatusFields {
            status: set(&["conditions"]),
            condition: set(&["type", "status", "lastTransitionTime", "message"]),
        }
    }

    /// The fields the CRD's served `v1` schema declares. A CRD without that version (it could
    /// not be the one we read) is taken as declaring everything.
    pub fn from_crd(crd: &CustomResourceDefinition) -> Self {
        let Some(version) = crd.spec.versions.iter().find(|v| v.name == VERSION) else {
            return StatusFields::default();
        };
        let root = version
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref());
        if root.is_some_and(|r| r.x_kubernetes_preserve_unknown_fields == Some(true)) {
            return StatusFields::default();
        }
        let status = root.and_then(|r| r.properties.as_ref()?.get("status"));
        let condition = status
            .and_then(|s| s.properties.as_ref()?.get("conditions"))
            .and_then(|c| match c.items.as_ref()? {
                JSONSchemaPropsOrArray::Schema(s) => Some(s.as_ref()),
                JSONSchemaPropsOrArray::Schemas(all) => all.first(),
            });
        StatusFields {
            status: Declared::of(status),
            condition: match (&Declared::of(status), condition) {
                // `conditions` kept as is (preserved unknown fields) or declared as any object.
                (Declared::Any, None) => Declared::Any,
                (_, c) => Declared::of(c),
            },
        }
    }

    /// Whether every field this operator writes is declared (our CRD, or a later one).
    pub fn is_full(&self) -> bool {
        let full = full_status();
        let status = serde_json::to_value(&full).expect("a status is JSON");
        let condition = serde_json::to_value(&full.conditions[0]).expect("a condition is JSON");
        let all =
            |v: &Value, d: &Declared| v.as_object().into_iter().flatten().all(|(k, _)| d.has(k));
        all(&status, &self.status) && all(&condition, &self.condition)
    }

    /// `status` with only the fields declared here. When conditions have no `reason`, it leads
    /// the message instead (`ItemNotFound: no item ...`), so users still see it.
    pub fn project(&self, status: &OnePasswordItemStatus) -> OnePasswordItemStatus {
        let mut value = serde_json::to_value(status).expect("a status is JSON");
        let object = value.as_object_mut().expect("a status is an object");
        self.status.prune(object);
        for condition in object
            .get_mut("conditions")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let Some(condition) = condition.as_object_mut() else {
                continue;
            };
            if !self.condition.has("reason")
                && self.condition.has("message")
                && let Some(Value::String(reason)) = condition.get("reason").cloned()
            {
                let message = match condition.get("message") {
                    Some(Value::String(m)) if !m.is_empty() => format!("{reason}: {m}"),
                    _ => reason,
                };
                condition.insert("message".into(), Value::String(message));
            }
            self.condition.prune(condition);
        }
        serde_json::from_value(value).expect("a pruned status is still a status")
    }
}

/// A status with every field we write, to tell which ones a CRD lacks.
fn full_status() -> OnePasswordItemStatus {
    OnePasswordItemStatus {
        conditions: vec![OnePasswordItemCondition {
            type_: "Ready".into(),
            status: "True".into(),
            last_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            )),
            message: Some(String::new()),
            reason: Some(String::new()),
            observed_generation: Some(0),
        }],
        observed_generation: Some(0),
        vault_id: Some(String::new()),
        item_id: Some(String::new()),
        item_version: Some(0),
    }
}

/// The reason of a condition: its `reason`, or, under a CRD without one, the CamelCase word
/// that [`StatusFields::project`] put at the front of the message.
pub fn reason_of(condition: &OnePasswordItemCondition) -> Option<String> {
    if let Some(reason) = &condition.reason {
        return Some(reason.clone());
    }
    let (word, _) = condition.message.as_deref()?.split_once(": ")?;
    let camel = word.starts_with(|c: char| c.is_ascii_uppercase())
        && word.chars().all(|c| c.is_ascii_alphanumeric());
    camel.then(|| word.to_string())
}

/// Whether the API server refused a status because the CRD does not declare some of its fields.
pub fn is_schema_rejection(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(s) if s.message.contains(NOT_DECLARED))
}

/// What a refused status write means for the next try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// From now on only the official operator's shape is written: try again at once in it.
    Reshaped,
    /// The CRD we read declares the fields; the API server has not caught up with it yet: what
    /// we write is unchanged, and the whole status is worth writing again shortly.
    Lagging,
    /// Nothing smaller to fall back to: trying again cannot help.
    Final,
}

/// Where the fields we write now come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// Nothing known yet: everything is tried.
    Assumed,
    /// Read from the installed CRD.
    Crd,
    /// The API server refused a field and the CRD could not be read: the official shape.
    Rejection,
}

/// The status fields to write, shared by the item reconcilers and kept current by [`run`].
pub struct StatusSchema {
    current: watch::Sender<(StatusFields, Source)>,
    /// Whether the log already says that the richer status is unavailable.
    told: AtomicBool,
}

impl Default for StatusSchema {
    fn default() -> Self {
        StatusSchema {
            current: watch::Sender::new((StatusFields::default(), Source::Assumed)),
            told: AtomicBool::new(false),
        }
    }
}

impl StatusSchema {
    /// The fields to write now.
    pub fn fields(&self) -> StatusFields {
        self.current.borrow().0.clone()
    }

    /// Takes what the installed CRD declares; says so in the log when it changes what we write.
    pub fn learn(&self, crd: &CustomResourceDefinition) {
        let fields = StatusFields::from_crd(crd);
        let mut first = false;
        let changed = self.current.send_if_modified(|(current, source)| {
            first = *source != Source::Crd;
            let changed = *current != fields;
            *current = fields.clone();
            *source = Source::Crd;
            changed
        });
        if !(changed || first) {
            return;
        }
        if fields.is_full() {
            self.told.store(false, Ordering::Relaxed);
            tracing::info!(
                "the installed OnePasswordItem CRD is this operator's: statuses carry reasons and item ids"
            );
        } else {
            self.warn_official(
                "the installed OnePasswordItem CRD declares fewer status fields than this \
                 operator writes (it is the official operator's CRD, or an old one)",
            );
        }
    }

    /// The API server refused a status field. When we could not read the CRD, write only the
    /// official operator's shape from now on (until the CRD says otherwise). When we did read it
    /// and it declares the field, the API server has not yet caught up with a CRD that was just
    /// updated (it rebuilds its schema for custom resources a moment after the CRD's watch event):
    /// what we write is unchanged.
    pub fn reject(&self) -> Refusal {
        let official = StatusFields::official();
        let mut lagging = false;
        let changed = self.current.send_if_modified(|(current, source)| {
            if *current == official {
                return false;
            }
            if *source == Source::Crd {
                lagging = true;
                return false;
            }
            *current = official.clone();
            *source = Source::Rejection;
            true
        });
        if lagging {
            tracing::debug!(
                "the API server refused status fields the installed OnePasswordItem CRD declares: \
                 it has not yet caught up with the CRD's new schema; the status is written again \
                 shortly"
            );
            return Refusal::Lagging;
        }
        if changed {
            self.warn_official(
                "the API server refused status fields this operator writes (not declared in \
                 the OnePasswordItem CRD's schema)",
            );
            return Refusal::Reshaped;
        }
        Refusal::Final
    }

    /// Says once (until our CRD is seen) that the richer status is unavailable, and how to get it.
    fn warn_official(&self, why: &str) {
        if self.told.swap(true, Ordering::Relaxed) {
            return;
        }
        tracing::warn!(
            "{why}: writing only the official operator's status (conditions with type, status, \
             lastTransitionTime and message; the reason leads the message); {HOW_TO_UPGRADE}"
        );
    }

    /// A `()` each time the fields to write change, for the item controllers to write every
    /// status again.
    pub fn changes(&self) -> impl Stream<Item = ()> + Send + 'static {
        let mut rx = self.current.subscribe();
        rx.mark_unchanged();
        futures::stream::unfold(rx, |mut rx| async move {
            rx.changed().await.ok()?;
            Some(((), rx))
        })
    }
}

/// Watches the OnePasswordItem CRD (by name, so RBAC may name it) and keeps `schema` current.
/// A CRD that cannot be read (forbidden) is said once; writes then fall back on a rejection.
pub async fn run(
    client: Client,
    schema: Arc<StatusSchema>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let name = format!("{PLURAL}.{GROUP}");
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut told = false;
    let events = watcher(api, config).default_backoff().take_until(shutdown);
    futures::pin_mut!(events);
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(crd) | watcher::Event::InitApply(crd)) => schema.learn(&crd),
            Ok(_) => {}
            Err(e) if !told => {
                told = true;
                tracing::warn!(error = %e, crd = %name, "cannot read the OnePasswordItem CRD (the operator needs get, list and watch on it); statuses fall back to the official operator's shape if the API server refuses ours; retrying with backoff");
            }
            Err(e) => tracing::debug!(error = %e, "reading the OnePasswordItem CRD failed again"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::OnePasswordItemCondition;

    const OFFICIAL_CRD: &str = include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/official/onepassworditem-crd-v1.12.0.yaml"
    ));

    fn official_crd() -> CustomResourceDefinition {
        serde_saphyr::from_str(OFFICIAL_CRD).expect("the official CRD parses")
    }

    fn not_found() -> OnePasswordItemStatus {
        OnePasswordItemStatus {
            conditions: vec![OnePasswordItemCondition {
                type_: "Ready".into(),
                status: "False".into(),
                last_transition_time: None,
                message: Some("no item \"db\" in vault \"Prod\"".into()),
                reason: Some("ItemNotFound".into()),
                observed_generation: Some(2),
            }],
            observed_generation: Some(2),
            vault_id: Some("v".into()),
            item_id: Some("i".into()),
            item_version: Some(3),
        }
    }

    #[test]
    fn the_official_crd_declares_the_official_shape_and_ours_declares_everything() {
        let official = StatusFields::from_crd(&official_crd());
        assert_eq!(official, StatusFields::official());
        assert!(!official.is_full());
        let ours = StatusFields::from_crd(&crate::crd::crd());
        assert!(ours.is_full());
        assert!(StatusFields::default().is_full());
    }

    #[test]
    fn under_the_official_crd_only_declared_fields_are_written_and_the_reason_leads_the_message() {
        let projected = StatusFields::official().project(&not_found());
        assert_eq!(
            serde_json::to_value(&projected).unwrap(),
            serde_json::json!({"conditions": [{
                "type": "Ready",
                "status": "False",
                "message": "ItemNotFound: no item \"db\" in vault \"Prod\"",
            }]})
        );
        assert_eq!(
            reason_of(&projected.conditions[0]).as_deref(),
            Some("ItemNotFound")
        );
        // Projecting what was read back changes nothing: no write on the next reconcile.
        let fields = StatusFields::official();
        assert_eq!(fields.project(&projected), projected);
    }

    #[test]
    fn under_our_crd_the_status_is_written_whole() {
        let fields = StatusFields::from_crd(&crate::crd::crd());
        assert_eq!(fields.project(&not_found()), not_found());
    }

    #[test]
    fn a_message_of_the_official_operator_is_not_taken_for_a_reason() {
        let condition = OnePasswordItemCondition {
            type_: "Ready".into(),
            status: "False".into(),
            message: Some("failed to retrieve item: status 404".into()),
            ..Default::default()
        };
        assert_eq!(reason_of(&condition), None);
    }

    #[test]
    fn a_rejection_falls_back_to_the_official_shape_once_and_a_crd_read_overrides_it() {
        let schema = StatusSchema::default();
        assert!(schema.fields().is_full());
        assert_eq!(
            schema.reject(),
            Refusal::Reshaped,
            "the first rejection changes the shape"
        );
        assert_eq!(schema.fields(), StatusFields::official());
        assert_eq!(
            schema.reject(),
            Refusal::Final,
            "nothing left to fall back to"
        );
        schema.learn(&serde_saphyr::from_str(&crate::crd::crd_yaml()).unwrap());
        assert!(schema.fields().is_full());
    }

    #[test]
    fn a_rejection_right_after_our_crd_was_read_is_the_api_server_lagging_not_a_reason_to_shrink() {
        // Seen in the migration test: the CRD is replaced by ours, its watch event arrives,
        // and the API server still validates status writes against the official schema for a
        // moment. Falling back then would keep the official shape for good.
        let schema = StatusSchema::default();
        schema.learn(&official_crd());
        schema.learn(&serde_saphyr::from_str(&crate::crd::crd_yaml()).unwrap());
        assert_eq!(schema.reject(), Refusal::Lagging);
        assert!(
            schema.fields().is_full(),
            "what the CRD declares still holds"
        );
        schema.learn(&official_crd());
        assert_eq!(schema.reject(), Refusal::Final);
    }

    #[test]
    fn schema_rejections_are_told_apart_from_other_errors() {
        let api = |code, message: &str| {
            kube::Error::Api(
                kube::core::Status::failure(message, "InternalError")
                    .with_code(code)
                    .boxed(),
            )
        };
        assert!(is_schema_rejection(&api(
            500,
            "failed to create typed patch object: .status.itemId: field not declared in schema"
        )));
        assert!(!is_schema_rejection(&api(
            500,
            "etcdserver: request timed out"
        )));
        assert!(!is_schema_rejection(&api(403, "forbidden")));
    }
}
