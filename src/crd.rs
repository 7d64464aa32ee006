//! The `OnePasswordItem` custom resource (`onepassword.com/v1`), compatible with the official
//! operator's CRD: same group, version, kind, `spec.itemPath`, top-level `type`, and
//! `status.conditions`. We add `reason` and `observedGeneration` to conditions, a few status
//! fields, printer columns and a pattern on `itemPath`.
//!
//! kube's `CustomResource` derive cannot express a field beside `spec` (the official CRD's
//! top-level `type`), so the resource type and its CRD are written out here.

use std::{borrow::Cow, collections::BTreeMap};

use k8s_openapi::{
    apiextensions_apiserver::pkg::apis::apiextensions::v1::{
        CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
        CustomResourceDefinitionSpec, CustomResourceDefinitionVersion,
        CustomResourceSubresourceStatus, CustomResourceSubresources, CustomResourceValidation,
        JSONSchemaProps,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::{Resource, core::NamespaceResourceScope};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const GROUP: &str = "onepassword.com";
pub const VERSION: &str = "v1";
pub const KIND: &str = "OnePasswordItem";
pub const PLURAL: &str = "onepassworditems";

/// The pattern `spec.itemPath` must match; the same rule as [`crate::connect::ItemPath::parse`]
/// for what a schema can express.
pub const ITEM_PATH_PATTERN: &str = r"^vaults/[^\s/][^\n]*/items/[^\s/][^\n]*$";

/// A 1Password item to sync into a Secret of the same name and namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OnePasswordItem {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: OnePasswordItemSpec,
    /// The Secret's type, e.g. `kubernetes.io/dockerconfigjson`; `Opaque` when empty.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub secret_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<OnePasswordItemStatus>,
}

/// Which 1Password item to sync, and how its Secret is shaped.
///
/// With none of the shaping fields (`items`, `data`, `includes`, `excludes`, `template`, `fixedData`,
/// `secretLabels`, `secretAnnotations`, `imagePullSecret`) the Secret holds every URL, field and
/// file of the item under its label, as with the official operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OnePasswordItemSpec {
    /// The item, as `vaults/<vault title or id>/items/<item title or id>`. A title that several
    /// vaults or items share resolves to the oldest one, as in the official operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^vaults/[^\s/][^\n]*/items/[^\s/][^\n]*$"))]
    pub item_path: Option<String>,
    /// More items whose values go into the same Secret (like several `remoteRef`s of External
    /// Secrets). Each has a `name`, by which a `data` entry (`item: <name>`) picks one of its
    /// fields, files or URLs; with a `keyPrefix`, all of its keys are added under that prefix.
    /// `itemPath` stays the Secret's main item. The Secret is rewritten when any of them changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<ItemSource>,
    /// Secret keys rendered from templates over the item (`data`: key to template). The field
    /// of an unreleased revision of the official operator (0730a79), which uses Go templates;
    /// here they are Jinja templates, with the same names less Go's leading dot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<SecretTemplate>,
    /// Build a `kubernetes.io/dockerconfigjson` Secret from the item's fields: its one key,
    /// `.dockerconfigjson`, holds `{"auths": {<registry>: {username, password, email, auth}}}`.
    /// The Secret's `type` becomes `kubernetes.io/dockerconfigjson` (any other `type` is refused).
    /// The fields of an unreleased revision of the official operator (0730a79).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<ImagePullSecretConfig>,
    /// Only these keys, each taken from one field, file or URL of the item (like External
    /// Secrets' `spec.data`). When set, the item's other fields, files and URLs are left out,
    /// unless `includes` brings some back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data: Vec<SecretKeyRef>,
    /// Keep only the default keys (one per URL, field and file, named after its label) that
    /// match one of these globs (`*` any run of characters, `?` one character), like Vault
    /// Secrets Operator's `includes`. With `data` or `imagePullSecret`, the default keys are
    /// left out unless they match one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub includes: Vec<String>,
    /// Leave out the default keys that match one of these globs (after `includes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
    /// Keys with fixed text values, written beside the item's keys (e.g. an Argo CD repository
    /// Secret's `type: git` and `url`). A fixed key wins over an item key of the same name (a
    /// warning says so); it may not repeat a key of `data`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fixed_data: BTreeMap<String, String>,
    /// Labels set on the Secret, beside those copied from this object. Keys under
    /// `operator.1password.io/` are the operator's and are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_labels: BTreeMap<String, String>,
    /// Annotations set on the Secret. Keys under `operator.1password.io/` are the operator's and
    /// are refused (set `auto-restart` on this object instead).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_annotations: BTreeMap<String, String>,
}

/// One more item of the Secret (`spec.items`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ItemSource {
    /// How `data[].item` names this item: a letter or `_`, then letters, digits and `_` (at most
    /// 63), unique among `items`.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"))]
    pub name: String,
    /// The item, as `vaults/<vault title or id>/items/<item title or id>`, resolved as
    /// `spec.itemPath` is (the same vault rules apply).
    #[schemars(regex(pattern = r"^vaults/[^\s/][^\n]*/items/[^\s/][^\n]*$"))]
    pub item_path: String,
    /// When set, every URL, field and file of this item is added under this prefix followed by
    /// its usual key (e.g. `db_` gives `db_password`; `""` keeps the keys as they are, like
    /// External Secrets' `dataFrom`), filtered by `includes` and `excludes` like the main item's
    /// keys. A key given twice (by two items, or by this item and the main one) is refused.
    /// When unset, the item gives only what `data` entries pick from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
}

/// One key of the Secret and where its value comes from: exactly one of `field`, `file`, `url`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret data key (letters, digits, `-`, `_`, `.`).
    pub key: String,
    /// A field, by its label, or `<section label>.<field label>` when the label is in several
    /// sections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// A file attached to the item, by its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// A URL of the item, by its label (a primary URL wins over others of the same label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The `name` of one of `spec.items` to take the value from; the main item (`itemPath`)
    /// when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<String>,
}

/// Secret keys rendered from templates (in no released official operator; see `template`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecretTemplate {
    /// Secret key to a Jinja template (minijinja) whose output is the key's value. A template
    /// reads `Fields` (label to value; a repeated label gives the later field), `Sections`
    /// (section label, then field label; fields without a section under ""), `FieldsByID`,
    /// `Files` (name to content), `URLs` (label to address) and `Item` (`Title`, `Version`,
    /// `Tags`, `ID`, `VaultID`), e.g. `Fields.password` or `Sections["db"]["host"]` between
    /// double braces. Filters beside Jinja's: `b64enc`, `b64dec`, `urlencode`, `tojson`,
    /// `htpasswd`. A name the item lacks is an error (use the `default` filter for an optional
    /// one), as is a template that does too much work; the item is then not Ready
    /// (`TemplateError`, naming the key and line, never a value). With templates, the item's
    /// other fields are left out unless `includes` brings some back; a key may not repeat a key
    /// of `spec.data`, and `fixedData` may not repeat a template key. Go syntax (a leading dot,
    /// `index`) is refused with how to write it here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<BTreeMap<String, String>>,
}

/// Which fields of the item make up the `.dockerconfigjson`. Each names a field by its label
/// (or `<section label>.<field label>`); the defaults suit a Login item with a `server` field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImagePullSecretConfig {
    /// The registry host, e.g. `ghcr.io`: a field, else a URL, with this label. Default `server`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_field: Option<String>,
    /// The user name. Default `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_field: Option<String>,
    /// The password or token. Default `password`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_field: Option<String>,
    /// The e-mail address; none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_field: Option<String>,
}

/// What the operator last did with this item.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OnePasswordItemStatus {
    /// `Ready` is the only condition type.
    #[serde(default)]
    pub conditions: Vec<OnePasswordItemCondition>,
    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The id of the vault the item path resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault_id: Option<String>,
    /// The id of the item the item path resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_id: Option<String>,
    /// The item version the Secret holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_version: Option<i64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OnePasswordItemCondition {
    /// Type of condition: `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Status of the condition, one of True, False, Unknown.
    pub status: String,
    /// Last time the condition transit from one status to another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
    /// Human-readable message indicating details about last transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Machine-readable reason in CamelCase, e.g. `Synced`, `ItemNotFound`, `SecretConflict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The `metadata.generation` the condition was set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl OnePasswordItem {
    pub fn ready_condition(&self) -> Option<&OnePasswordItemCondition> {
        self.status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "Ready")
    }
}

impl Resource for OnePasswordItem {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        PLURAL.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

fn schema_of<T: JsonSchema>() -> serde_json::Value {
    let generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(schemars::transform::AddNullable::default())
        .with_transform(kube::core::schema::StructuralSchemaRewriter)
        .into_generator();
    let mut schema = serde_json::to_value(generator.into_root_schema_for::<T>())
        .expect("schemars output is JSON");
    if let Some(obj) = schema.as_object_mut() {
        obj.remove("title");
    }
    unwrap_descriptions(&mut schema);
    schema
}

/// Joins the lines of each paragraph of every `description` (doc comments are wrapped at 100
/// columns; `kubectl explain` wraps again, and kept line breaks would leave ragged text). A
/// blank line still separates paragraphs, and a line starting with `- ` stays a list item.
fn unwrap_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                match v {
                    serde_json::Value::String(text) if key == "description" => {
                        *text = unwrap_paragraphs(text);
                    }
                    _ => unwrap_descriptions(v),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unwrap_descriptions),
        _ => {}
    }
}

fn unwrap_paragraphs(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| {
            let mut out = String::new();
            for (i, line) in paragraph.lines().enumerate() {
                if i > 0 {
                    out.push(if line.starts_with("- ") { '\n' } else { ' ' });
                }
                out.push_str(line.trim_end());
            }
            out
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The CustomResourceDefinition, as `crdgen` prints it into `crds/`.
pub fn crd() -> CustomResourceDefinition {
    let mut status = schema_of::<OnePasswordItemStatus>();
    // Condition timestamps are RFC 3339 strings (schemars sees `Time` as an opaque string).
    status["properties"]["conditions"]["items"]["properties"]["lastTransitionTime"] = serde_json::json!({
        "description": "Last time the condition transit from one status to another.",
        "format": "date-time",
        "type": "string"
    });
    let root = serde_json::json!({
        "description": "A 1Password item synced into a Kubernetes Secret of the same name.",
        "type": "object",
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": schema_of::<OnePasswordItemSpec>(),
            "type": {
                "description": "Kubernetes secret type. More info: https://kubernetes.io/docs/concepts/configuration/secret/#secret-types",
                "type": "string"
            },
            "status": status,
        }
    });
    let schema: JSONSchemaProps =
        serde_json::from_value(root).expect("the CRD schema is valid JSONSchemaProps");
    let column = |name: &str, type_: &str, path: &str, priority: Option<i32>| {
        CustomResourceColumnDefinition {
            name: name.into(),
            type_: type_.into(),
            json_path: path.into(),
            priority,
            ..Default::default()
        }
    };
    CustomResourceDefinition {
        metadata: ObjectMeta {
            name: Some(format!("{PLURAL}.{GROUP}")),
            ..Default::default()
        },
        spec: CustomResourceDefinitionSpec {
            group: GROUP.into(),
            names: CustomResourceDefinitionNames {
                kind: KIND.into(),
                list_kind: Some(format!("{KIND}List")),
                plural: PLURAL.into(),
                singular: Some("onepassworditem".into()),
                short_names: Some(vec!["opi".into()]),
                categories: None,
            },
            scope: "Namespaced".into(),
            versions: vec![CustomResourceDefinitionVersion {
                name: VERSION.into(),
                served: true,
                storage: true,
                schema: Some(CustomResourceValidation {
                    open_api_v3_schema: Some(schema),
                }),
                subresources: Some(CustomResourceSubresources {
                    status: Some(CustomResourceSubresourceStatus(serde_json::json!({}))),
                    scale: None,
                }),
                additional_printer_columns: Some(vec![
                    column(
                        "Ready",
                        "string",
                        r#".status.conditions[?(@.type=="Ready")].status"#,
                        None,
                    ),
                    column(
                        "Reason",
                        "string",
                        r#".status.conditions[?(@.type=="Ready")].reason"#,
                        None,
                    ),
                    column("Age", "date", ".metadata.creationTimestamp", None),
                    column("Path", "string", ".spec.itemPath", Some(1)),
                ]),
                ..Default::default()
            }],
            ..Default::default()
        },
        status: None,
    }
}

/// The CRD as YAML, with a header saying how it was made.
pub fn crd_yaml() -> String {
    let body = serde_saphyr::to_string(&crd()).expect("a CRD serialises to YAML");
    format!("# Generated by `cargo run --bin crdgen`; do not edit.\n---\n{body}")
}

/// The CRD as the Helm chart's `templates/crd.yaml` (`crdgen --helm`): rendered when
/// `crds.enabled`, with the chart's labels, and kept by `helm uninstall` when `crds.keep`.
///
/// A template rather than the chart's `crds/` folder because Helm installs what is in `crds/`
/// once and never upgrades it; a template is upgraded with the release.
pub fn crd_helm_template() -> String {
    helm_template(&crd())
}

/// Wraps a CRD in the chart's template: the same body as `crd_yaml`, plus the Helm parts in
/// `metadata`. Public so that a test can build the template of another CRD (an older version).
pub fn helm_template(crd: &CustomResourceDefinition) -> String {
    let mut crd = crd.clone();
    // The chart sets these; what the CRD itself carries would be lost in the template.
    crd.metadata.labels = None;
    crd.metadata.annotations = None;
    let body = serde_saphyr::to_string(&crd).expect("a CRD serialises to YAML");
    assert!(
        !body.contains("{{"),
        "the CRD contains `{{{{`, which Helm would read as a template action"
    );
    // serde_saphyr writes the fields in declaration order: apiVersion, kind, metadata (the name
    // alone now), spec.
    let (head, spec) = body
        .split_once("\nspec:\n")
        .expect("a serialised CRD has a top-level spec");
    assert!(
        head.ends_with(&format!(
            "metadata:\n  name: {}",
            crd.metadata.name.unwrap_or_default()
        )),
        "the metadata of a serialised CRD is its name alone: {head}"
    );
    format!(
        "{{{{/* Generated by `cargo run --bin crdgen -- --helm`; do not edit (`make crds`). */}}}}\n\
         {{{{- if .Values.crds.enabled }}}}\n\
         {head}\n  \
         labels:\n    \
         {{{{- include \"opsync.labels\" . | nindent 4 }}}}\n  \
         {{{{- if .Values.crds.keep }}}}\n  \
         annotations:\n    \
         # helm uninstall leaves the CRD, and with it every OnePasswordItem and its Secret.\n    \
         helm.sh/resource-policy: keep\n  \
         {{{{- end }}}}\n\
         spec:\n{spec}\
         {{{{- end }}}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_manifest_with_top_level_type_parses() {
        let yaml = r#"
apiVersion: onepassword.com/v1
kind: OnePasswordItem
type: kubernetes.io/dockerconfigjson
metadata:
  name: regcred
  namespace: apps
spec:
  itemPath: "vaults/Infra/items/ghcr"
"#;
        let item: OnePasswordItem = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(
            item.secret_type.as_deref(),
            Some("kubernetes.io/dockerconfigjson")
        );
        assert_eq!(
            item.spec.item_path.as_deref(),
            Some("vaults/Infra/items/ghcr")
        );
    }

    #[test]
    fn item_path_pattern_agrees_with_the_parser_on_common_paths() {
        // The schema pattern and the parser must accept the same everyday paths.
        let re_src = ITEM_PATH_PATTERN;
        let crd = crd_yaml();
        assert!(crd.contains("pattern:"), "{crd}");
        assert!(crd.contains(&re_src.replace('\\', "\\\\")) || crd.contains(re_src));
        for ok in [
            "vaults/Prod/items/db",
            "vaults/a b/items/c d",
            "vaults/x/y/items/z",
        ] {
            assert!(crate::connect::ItemPath::parse(ok).is_ok());
        }
    }

    #[test]
    fn crd_has_the_official_names_and_our_columns() {
        let crd = crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("onepassworditems.onepassword.com")
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        let v = &crd.spec.versions[0];
        let cols: Vec<_> = v
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(cols, ["Ready", "Reason", "Age", "Path"]);
        let schema = v
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap();
        let props = schema.properties.as_ref().unwrap();
        assert!(props.contains_key("type") && props.contains_key("spec"));
    }

    #[test]
    fn checked_in_crds_are_up_to_date() {
        for (file, generated) in [
            ("crds/onepassworditem.yaml", crd_yaml()),
            ("config/crd/bases/onepassworditem.yaml", crd_yaml()),
            (
                "charts/onepassword-secrets-operator/templates/crd.yaml",
                crd_helm_template(),
            ),
        ] {
            let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
            let on_disk = std::fs::read_to_string(path).unwrap_or_default();
            assert!(on_disk == generated, "{file} is stale: run `make crds`");
        }
        let chart_crds = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/charts/onepassword-secrets-operator/crds"
        );
        assert!(
            !std::path::Path::new(chart_crds).exists(),
            "the chart has a crds/ folder again: Helm never upgrades it; the CRD is templates/crd.yaml"
        );
    }

    #[test]
    fn descriptions_are_paragraphs_kubectl_explain_can_wrap() {
        let yaml = crd_yaml();
        let crd: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        let mut seen = 0;
        let mut stack = vec![&crd];
        while let Some(v) = stack.pop() {
            match v {
                serde_json::Value::Object(map) => {
                    if let Some(serde_json::Value::String(d)) = map.get("description") {
                        seen += 1;
                        for paragraph in d.split("\n\n") {
                            assert!(
                                paragraph.lines().skip(1).all(|l| l.starts_with("- ")),
                                "a line break inside a paragraph: {paragraph:?}"
                            );
                        }
                    }
                    stack.extend(map.values());
                }
                serde_json::Value::Array(items) => stack.extend(items),
                _ => {}
            }
        }
        assert!(seen > 20, "{seen} descriptions");
        assert_eq!(
            unwrap_paragraphs("a\nb\n\nc\n- d\n- e"),
            "a b\n\nc\n- d\n- e"
        );
    }

    #[test]
    fn helm_template_is_the_crd_inside_the_chart_switches() {
        let template = crd_helm_template();
        let lines: Vec<&str> = template.lines().collect();
        assert_eq!(lines[1], "{{- if .Values.crds.enabled }}");
        assert_eq!(lines.last(), Some(&"{{- end }}"));
        assert!(template.contains("  {{- if .Values.crds.keep }}\n  annotations:\n"));
        assert!(template.contains("    helm.sh/resource-policy: keep\n"));
        // Without the Helm lines, what is left is the CRD `crdgen` prints.
        let plain: String = template
            .lines()
            .skip(1)
            .filter(|l| {
                let t = l.trim_start();
                let helm_only = ["{{", "#", "helm.sh/"].iter().any(|p| t.starts_with(p))
                    || t == "labels:"
                    || t == "annotations:";
                !helm_only
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(
            format!("# Generated by `cargo run --bin crdgen`; do not edit.\n---\n{plain}"),
            crd_yaml()
        );
    }
}
