//! `data.inventory`: objects synced from the cluster, in Gatekeeper's
//! layout, for templates that compare an object with others (unique
//! ingress hosts, say).
//!
//! ```text
//! data.inventory.namespace[<namespace>][<apiVersion>][<kind>][<name>]
//! data.inventory.cluster[<apiVersion>][<kind>][<name>]
//! ```

use std::collections::BTreeMap;

use super::matching::{Labels, NamespaceLabels};

/// Objects by apiVersion, kind and name.
type ByVersionKindName = BTreeMap<String, BTreeMap<String, BTreeMap<String, serde_json::Value>>>;

/// A set of objects, and the namespace labels they reveal.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    namespaced: BTreeMap<String, ByVersionKindName>,
    cluster: ByVersionKindName,
}

impl Inventory {
    pub fn add(&mut self, object: serde_json::Value) {
        let get = |p: &str| {
            object
                .pointer(p)
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned()
        };
        let (api_version, kind, name, namespace) = (
            get("/apiVersion"),
            get("/kind"),
            get("/metadata/name"),
            get("/metadata/namespace"),
        );
        let by_kind = if namespace.is_empty() {
            self.cluster.entry(api_version).or_default()
        } else {
            self.namespaced
                .entry(namespace)
                .or_default()
                .entry(api_version)
                .or_default()
        };
        by_kind.entry(kind).or_default().insert(name, object);
    }

    pub fn is_empty(&self) -> bool {
        self.namespaced.is_empty() && self.cluster.is_empty()
    }

    /// `{"inventory": {...}}`, to add as data.
    pub fn to_data(&self) -> serde_json::Value {
        serde_json::json!({
            "inventory": {
                "namespace": self.namespaced,
                "cluster": self.cluster,
            }
        })
    }
}

impl NamespaceLabels for Inventory {
    fn labels(&self, namespace: &str) -> Option<Labels> {
        let ns = self.cluster.get("v1")?.get("Namespace")?.get(namespace)?;
        let labels = ns.pointer("/metadata/labels")?.as_object()?;
        Some(
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect(),
        )
    }
}
