//! A constraint's `spec.match`, applied outside Rego as Gatekeeper does:
//! kinds, namespaces, excludedNamespaces, labelSelector, namespaceSelector,
//! scope and name.

use std::collections::BTreeMap;

use regorus::Value;
use serde::Deserialize;

/// `spec.match`. Every criterion present must hold.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Match {
    #[serde(default)]
    pub kinds: Vec<KindSpec>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub excluded_namespaces: Vec<String>,
    #[serde(default)]
    pub label_selector: Option<LabelSelector>,
    #[serde(default)]
    pub namespace_selector: Option<LabelSelector>,
    #[serde(default)]
    pub scope: Scope,
    #[serde(default)]
    pub name: Option<String>,
    /// Gatekeeper's `source` (Original/Generated/All): only admission
    /// requests reach us, so any value matches them.
    #[serde(default)]
    pub source: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KindSpec {
    #[serde(default)]
    pub api_groups: Vec<String>,
    #[serde(default)]
    pub kinds: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum Scope {
    #[default]
    #[serde(rename = "*")]
    All,
    Cluster,
    Namespaced,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

pub type Labels = BTreeMap<String, String>;

/// Where namespace labels come from (the cluster's namespace cache, or the
/// Namespace objects of an offline run).
pub trait NamespaceLabels {
    fn labels(&self, namespace: &str) -> Option<Labels>;
}

/// No namespace is known.
pub struct NoNamespaces;

impl NamespaceLabels for NoNamespaces {
    fn labels(&self, _: &str) -> Option<Labels> {
        None
    }
}

impl LabelSelector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    Operator::In => value.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }
}

/// Gatekeeper's wildcard: a leading or trailing `*` matches any prefix or
/// suffix; otherwise the names must be equal.
pub fn wildcard(pattern: &str, name: &str) -> bool {
    if let Some(suffix) = pattern.strip_prefix('*') {
        name.ends_with(suffix)
    } else if let Some(prefix) = pattern.strip_suffix('*') {
        name.starts_with(prefix)
    } else {
        pattern == name
    }
}

fn string(v: &Value) -> &str {
    match v {
        Value::String(s) => s,
        _ => "",
    }
}

fn labels_of(object: &Value) -> Labels {
    match &object["metadata"]["labels"] {
        Value::Object(map) => map
            .iter()
            .filter_map(|(k, v)| match (k, v) {
                (Value::String(k), Value::String(v)) => Some((k.to_string(), v.to_string())),
                _ => None,
            })
            .collect(),
        _ => Labels::new(),
    }
}

impl Match {
    /// Whether the AdmissionRequest `review` is in scope.
    pub fn applies(&self, review: &Value, namespaces: &dyn NamespaceLabels) -> bool {
        let group = string(&review["kind"]["group"]);
        let kind = string(&review["kind"]["kind"]);
        // The object as it is, or as it was for a DELETE.
        let object = match &review["object"] {
            Value::Object(_) => &review["object"],
            _ => &review["oldObject"],
        };
        let is_namespace = group.is_empty() && kind == "Namespace";
        // The request's namespace, else the object's own (a Suite's sample
        // or an offline manifest may carry one without a request).
        let namespace = match string(&review["namespace"]) {
            "" if is_namespace => string(&object["metadata"]["name"]),
            "" => string(&object["metadata"]["namespace"]),
            ns => ns,
        };
        // As Gatekeeper (pkg/mutation/match): an object without a namespace
        // is cluster-scoped as far as matching knows, and neither
        // `namespaces`, `excludedNamespaces` nor `namespaceSelector` can
        // disqualify it — a namespaced object that names no namespace
        // (a Suite sample, a manifest for `kubectl apply -n`) included.
        // Only `scope: Namespaced` leaves it out.
        let has_namespace = !is_namespace && !namespace.is_empty();

        let kind_ok = self.kinds.is_empty()
            || self.kinds.iter().any(|k| {
                (k.api_groups.is_empty() || k.api_groups.iter().any(|g| g == "*" || g == group))
                    && (k.kinds.is_empty() || k.kinds.iter().any(|k| k == "*" || k == kind))
            });
        let scope_ok = match self.scope {
            Scope::All => true,
            Scope::Cluster => !has_namespace,
            Scope::Namespaced => has_namespace,
        };
        let namespaces_ok = self.namespaces.is_empty()
            || namespace.is_empty()
            || self.namespaces.iter().any(|p| wildcard(p, namespace));
        let excluded = !namespace.is_empty()
            && self
                .excluded_namespaces
                .iter()
                .any(|p| wildcard(p, namespace));
        let name = match string(&review["name"]) {
            "" => string(&object["metadata"]["name"]),
            n => n,
        };
        let name_ok = self.name.as_deref().is_none_or(|p| wildcard(p, name));
        let labels_ok = self
            .label_selector
            .as_ref()
            .is_none_or(|s| s.matches(&labels_of(object)));
        let namespace_selector_ok = self.namespace_selector.as_ref().is_none_or(|s| {
            if is_namespace {
                s.matches(&labels_of(object))
            } else if namespace.is_empty() {
                true
            } else {
                s.matches(&namespaces.labels(namespace).unwrap_or_default())
            }
        });
        kind_ok
            && scope_ok
            && namespaces_ok
            && !excluded
            && name_ok
            && labels_ok
            && namespace_selector_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(group: &str, kind: &str, namespace: &str, labels: &str) -> Value {
        Value::from_json_str(&format!(
            r#"{{"kind": {{"group": "{group}", "version": "v1", "kind": "{kind}"}},
                "namespace": "{namespace}", "name": "x", "operation": "CREATE",
                "object": {{"metadata": {{"name": "x", "labels": {labels}}}}}}}"#
        ))
        .unwrap()
    }

    fn parse(yaml: &str) -> Match {
        yaml_serde::from_str(yaml).unwrap()
    }

    struct Ns;
    impl NamespaceLabels for Ns {
        fn labels(&self, ns: &str) -> Option<Labels> {
            (ns == "app-ml-team").then(|| Labels::from([("team".into(), "ml".into())]))
        }
    }

    #[test]
    fn kinds_match_by_group_and_kind() {
        let m = parse(
            "kinds:\n- apiGroups: [\"apps\"]\n  kinds: [\"Deployment\"]\n- apiGroups: [\"\"]\n  kinds: [\"Pod\"]\n",
        );
        assert!(m.applies(&review("apps", "Deployment", "a", "{}"), &NoNamespaces));
        assert!(m.applies(&review("", "Pod", "a", "{}"), &NoNamespaces));
        assert!(!m.applies(&review("batch", "Deployment", "a", "{}"), &NoNamespaces));
        let any = parse("kinds:\n- apiGroups: [\"*\"]\n  kinds: [\"*\"]\n");
        assert!(any.applies(&review("batch", "Job", "a", "{}"), &NoNamespaces));
    }

    #[test]
    fn namespaces_and_exclusions_take_wildcards() {
        let m = parse("namespaces: [\"app-*\"]\nexcludedNamespaces: [\"*-sandbox\"]\n");
        assert!(m.applies(&review("", "Pod", "app-ml-team", "{}"), &NoNamespaces));
        assert!(!m.applies(&review("", "Pod", "app-ml-sandbox", "{}"), &NoNamespaces));
        assert!(!m.applies(&review("", "Pod", "default", "{}"), &NoNamespaces));
    }

    #[test]
    fn an_object_without_a_namespace_is_not_disqualified_by_namespaces() {
        // Gatekeeper's namespacesMatch: "If we don't have a namespace, we
        // can't disqualify the match". gator reports the violation of a
        // Suite's namespace-less Pod under `namespaces: [default]`.
        let m = parse("namespaces: [default]\nexcludedNamespaces: [kube-system]\n");
        assert!(m.applies(&review("", "Pod", "", "{}"), &NoNamespaces));
        assert!(m.applies(&review("", "ClusterRole", "", "{}"), &NoNamespaces));
        assert!(!m.applies(&review("", "Pod", "other", "{}"), &NoNamespaces));
        let selector = parse("namespaceSelector:\n  matchLabels: {team: ml}\n");
        assert!(selector.applies(&review("", "Pod", "", "{}"), &Ns));
        assert!(!parse("scope: Namespaced\n").applies(&review("", "Pod", "", "{}"), &NoNamespaces));
        // The object's own namespace stands in for the request's.
        let object_ns = Value::from_json_str(
            r#"{"kind": {"group": "", "version": "v1", "kind": "Pod"}, "namespace": "",
                "object": {"metadata": {"name": "x", "namespace": "other"}}}"#,
        )
        .unwrap();
        assert!(!m.applies(&object_ns, &NoNamespaces));
    }

    #[test]
    fn label_and_namespace_selectors() {
        let m = parse(
            "labelSelector:\n  matchExpressions:\n  - {key: tier, operator: In, values: [web]}\nnamespaceSelector:\n  matchLabels: {team: ml}\n",
        );
        assert!(m.applies(&review("", "Pod", "app-ml-team", r#"{"tier": "web"}"#), &Ns));
        assert!(!m.applies(&review("", "Pod", "app-ml-team", r#"{"tier": "db"}"#), &Ns));
        assert!(!m.applies(&review("", "Pod", "other", r#"{"tier": "web"}"#), &Ns));
    }

    #[test]
    fn scope_separates_cluster_and_namespaced_objects() {
        let cluster = parse("scope: Cluster\n");
        assert!(cluster.applies(
            &review("rbac.authorization.k8s.io", "ClusterRole", "", "{}"),
            &NoNamespaces
        ));
        assert!(!cluster.applies(&review("", "Pod", "a", "{}"), &NoNamespaces));
        let namespaced = parse("scope: Namespaced\n");
        assert!(namespaced.applies(&review("", "Pod", "a", "{}"), &NoNamespaces));
    }

    #[test]
    fn unknown_match_fields_and_operators_are_refused() {
        assert!(yaml_serde::from_str::<Match>("kind: [Pod]\n").is_err());
        assert!(
            yaml_serde::from_str::<Match>(
                "labelSelector:\n  matchExpressions:\n  - {key: a, operator: Within}\n"
            )
            .is_err()
        );
    }
}
