//! The CustomResourceDefinition of a template's constraints, as Gatekeeper
//! generates it: group `constraints.gatekeeper.sh`, the template's kind,
//! its plural the kind in lower case, cluster-scoped, served at `v1beta1`
//! (stored), `v1alpha1` and `v1` with one schema, a status subresource.
//! `spec.parameters` is the template's `openAPIV3Schema`; `spec.match` and
//! `spec.enforcementAction` are Gatekeeper's own fields. A pure function of
//! the template object, so it is unit-tested without a cluster.

use serde_json::{Value, json};

use crate::policy::gatekeeper::{CONSTRAINTS_GROUP, TEMPLATES_GROUP};

/// The label Gatekeeper puts on constraint CRDs (kept, so tools that list
/// constraint kinds by it find ours too).
pub const CONSTRAINT_LABEL: &str = "gatekeeper.sh/constraint";

/// The versions constraints are served at; the first is stored.
pub const VERSIONS: [&str; 3] = ["v1beta1", "v1alpha1", "v1"];

/// `<plural>.constraints.gatekeeper.sh`.
pub fn crd_name(kind: &str) -> String {
    format!("{}.{CONSTRAINTS_GROUP}", plural(kind))
}

/// Gatekeeper's plural (and singular) of a constraint kind.
pub fn plural(kind: &str) -> String {
    kind.to_lowercase()
}

/// The constraint CRD for `template` (a ConstraintTemplate object with
/// `metadata.uid`), owned by it so that deleting the template deletes the
/// CRD and its constraints. An error names what is missing.
pub fn constraint_crd(template: &Value) -> Result<Value, String> {
    let name = template
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or("metadata.name is missing")?;
    let uid = template
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .ok_or("metadata.uid is missing")?;
    let names = template
        .pointer("/spec/crd/spec/names")
        .ok_or("spec.crd.spec.names is missing")?;
    let kind = names
        .get("kind")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .ok_or("spec.crd.spec.names.kind is missing")?;
    let plural = plural(kind);
    let mut crd_names = json!({
        "kind": kind,
        "listKind": format!("{kind}List"),
        "plural": plural,
        "singular": plural,
        "categories": ["constraint", "constraints"],
    });
    if let Some(short) = names.get("shortNames").filter(|s| s.is_array()) {
        crd_names["shortNames"] = short.clone();
    }
    let schema = version_schema(template.pointer("/spec/crd/spec/validation"))?;
    let versions: Vec<Value> = VERSIONS
        .iter()
        .enumerate()
        .map(|(i, version)| {
            json!({
                "name": version,
                "served": true,
                "storage": i == 0,
                "schema": {"openAPIV3Schema": schema},
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "enforcement-action", "type": "string",
                     "jsonPath": ".spec.enforcementAction"},
                    {"name": "age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
            })
        })
        .collect();
    Ok(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{plural}.{CONSTRAINTS_GROUP}"),
            "labels": {
                CONSTRAINT_LABEL: "yes",
                "app.kubernetes.io/managed-by": "tollgate",
            },
            "ownerReferences": [{
                "apiVersion": format!("{TEMPLATES_GROUP}/v1"),
                "kind": "ConstraintTemplate",
                "name": name,
                "uid": uid,
                "controller": true,
            }],
        },
        "spec": {
            "group": CONSTRAINTS_GROUP,
            "names": crd_names,
            "scope": "Cluster",
            "versions": versions,
        },
    }))
}

/// The whole object's schema: `spec.parameters` from the template,
/// `spec.match` and `spec.enforcementAction`, and a status the replicas
/// each own one `byPod` entry of (a list keyed by `id`, so server-side
/// apply merges the replicas' entries).
fn version_schema(validation: Option<&Value>) -> Result<Value, String> {
    // No schema, no `parameters` (as Gatekeeper's CreateSchema): the
    // apiserver drops any given, and the loader refuses them.
    let parameters = match validation.and_then(|v| v.get("openAPIV3Schema")) {
        None | Some(Value::Null) => None,
        Some(Value::Object(schema)) => {
            let mut schema = schema.clone();
            schema.entry("type").or_insert_with(|| "object".into());
            // Gatekeeper's legacySchema: the parameters are kept as given
            // even where the schema does not describe them.
            if validation.and_then(|v| v.get("legacySchema")) == Some(&Value::Bool(true)) {
                schema.insert("x-kubernetes-preserve-unknown-fields".into(), true.into());
            }
            Some(Value::Object(schema))
        }
        Some(_) => return Err("spec.crd.spec.validation.openAPIV3Schema must be an object".into()),
    };
    let mut spec = json!({
        "match": match_schema(),
        "enforcementAction": {"type": "string"},
        "scopedEnforcementActions": {
            "type": "array",
            "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
        },
    });
    if let Some(parameters) = parameters {
        spec["parameters"] = parameters;
    }
    Ok(json!({
        "type": "object",
        "properties": {
            "metadata": {
                "type": "object",
                "properties": {
                    // Gatekeeper's limit: the name is a label value in its
                    // metrics and audit results.
                    "name": {"type": "string", "maxLength": 63},
                },
            },
            "spec": {"type": "object", "properties": spec},
            "status": status_schema(&[
                ("enforced", json!({"type": "boolean"})),
                ("constraintUID", json!({"type": "string"})),
            ]),
        },
    }))
}

fn strings() -> Value {
    json!({"type": "array", "items": {"type": "string"}})
}

fn label_selector() -> Value {
    json!({
        "type": "object",
        "properties": {
            "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
            "matchExpressions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {"type": "string"},
                        "operator": {"type": "string"},
                        "values": strings(),
                    },
                },
            },
        },
    })
}

/// `spec.match`: typed where Tollgate reads it (its parsing, with errors
/// naming the field, is the check that counts), open for the rest.
fn match_schema() -> Value {
    json!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "properties": {
            "kinds": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"apiGroups": strings(), "kinds": strings()},
                },
            },
            "namespaces": strings(),
            "excludedNamespaces": strings(),
            "labelSelector": label_selector(),
            "namespaceSelector": label_selector(),
            "scope": {"type": "string", "enum": ["*", "Cluster", "Namespaced"]},
            "name": {"type": "string"},
        },
    })
}

/// A `status` with `byPod` entries keyed by `id`, each with `extra`
/// fields beside `id`, `observedGeneration`, `operations` and `errors`.
pub fn status_schema(extra: &[(&str, Value)]) -> Value {
    let mut by_pod = json!({
        "type": "object",
        "required": ["id"],
        "x-kubernetes-preserve-unknown-fields": true,
        "properties": {
            "id": {"type": "string"},
            "observedGeneration": {"type": "integer", "format": "int64"},
            "operations": strings(),
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "location": {"type": "string"},
                    },
                },
            },
        },
    });
    for (name, schema) in extra {
        by_pod["properties"][*name] = schema.clone();
    }
    json!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "properties": {
            "byPod": {
                "type": "array",
                "items": by_pod,
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["id"],
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(validation: Value) -> Value {
        json!({
            "apiVersion": "templates.gatekeeper.sh/v1",
            "kind": "ConstraintTemplate",
            "metadata": {"name": "k8srequiredlabels", "uid": "u-1"},
            "spec": {"crd": {"spec": {
                "names": {"kind": "K8sRequiredLabels", "shortNames": ["rl"]},
                "validation": validation,
            }}},
        })
    }

    #[test]
    fn the_crd_is_named_and_owned_as_gatekeeper_does() {
        let crd = constraint_crd(&template(json!({}))).unwrap();
        assert_eq!(
            crd["metadata"]["name"],
            "k8srequiredlabels.constraints.gatekeeper.sh"
        );
        assert_eq!(crd["spec"]["names"]["kind"], "K8sRequiredLabels");
        assert_eq!(crd["spec"]["names"]["plural"], "k8srequiredlabels");
        assert_eq!(crd["spec"]["names"]["shortNames"], json!(["rl"]));
        assert_eq!(crd["spec"]["scope"], "Cluster");
        assert_eq!(crd["metadata"]["labels"][CONSTRAINT_LABEL], "yes");
        assert_eq!(crd["metadata"]["ownerReferences"][0]["uid"], "u-1");
        let versions = crd["spec"]["versions"].as_array().unwrap();
        let stored: Vec<&str> = versions
            .iter()
            .filter(|v| v["storage"] == true)
            .map(|v| v["name"].as_str().unwrap())
            .collect();
        assert_eq!(stored, ["v1beta1"]);
        assert_eq!(versions.len(), 3);
        // No schema: no parameters, as in Gatekeeper's CRD (the apiserver
        // drops any given).
        let spec = &versions[0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert!(spec["properties"].get("parameters").is_none(), "{spec}");
        assert!(spec["properties"].get("match").is_some());
    }

    #[test]
    fn the_parameters_schema_is_the_templates() {
        let schema =
            json!({"properties": {"labels": {"type": "array", "items": {"type": "string"}}}});
        let crd = constraint_crd(&template(json!({"openAPIV3Schema": schema}))).unwrap();
        let parameters = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["parameters"];
        assert_eq!(parameters["type"], "object");
        assert_eq!(
            parameters["properties"]["labels"]["items"]["type"],
            "string"
        );
        assert!(
            parameters
                .get("x-kubernetes-preserve-unknown-fields")
                .is_none()
        );
        let legacy = constraint_crd(&template(
            json!({"legacySchema": true, "openAPIV3Schema": {"properties": {}}}),
        ))
        .unwrap();
        assert_eq!(
            legacy["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
                ["parameters"]["x-kubernetes-preserve-unknown-fields"],
            true
        );
    }

    #[test]
    fn a_template_without_a_kind_is_refused_naming_the_field() {
        let mut t = template(json!({}));
        t["spec"]["crd"]["spec"]["names"] = json!({});
        assert_eq!(
            constraint_crd(&t).unwrap_err(),
            "spec.crd.spec.names.kind is missing"
        );
    }
}
