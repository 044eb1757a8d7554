//! The audit's reports in the cluster: one OpenReports `Report`
//! (`openreports.io/v1alpha1`, the format Kyverno and Kubewarden moved to)
//! per namespace, and one `ClusterReport` for cluster-scoped objects.
//!
//! Report volume is what took clusters down with other engines' per-object
//! reports, so: one object per namespace, results capped per report with
//! the complete counts in `summary`, and a write only when the content
//! changed (timestamps aside) — a quiet cluster costs one LIST per pass.

use std::collections::BTreeMap;

use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

use crate::audit::tally::{Entry, NamespaceTally, Tally};
use crate::config::Enforcement;

pub const GROUP: &str = "openreports.io";
pub const VERSION: &str = "v1alpha1";
/// The name of Tollgate's report in each namespace, and of its
/// ClusterReport.
pub const NAME: &str = "tollgate-audit";
const MANAGER: &str = "tollgate-audit";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "tollgate");
/// How many results a report left out (the summary counts them).
const OMITTED: &str = "tollgate.io/results-omitted";

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// What changed in the cluster's reports after a pass.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub created_or_updated: usize,
    pub unchanged: usize,
    pub deleted: usize,
}

fn result_of(e: &Entry) -> &'static str {
    match (e.error, e.enforcement) {
        (true, _) => "error",
        (false, Enforcement::Deny) => "fail",
        (false, _) => "warn",
    }
}

/// The report's content (everything under the object but metadata): what
/// is compared to decide whether to write. `timestamp` is left out here
/// and added to the results written.
fn content(tally: &NamespaceTally, cap: usize) -> Value {
    let results: Vec<Value> = tally
        .results
        .iter()
        .take(cap)
        .map(|e| {
            let mut subject = json!({
                "apiVersion": e.subject.api_version,
                "kind": e.subject.kind,
                "name": e.subject.name,
                "uid": e.subject.uid,
            });
            if !e.subject.namespace.is_empty() {
                subject["namespace"] = e.subject.namespace.clone().into();
            }
            let mut properties = json!({"enforcement": e.enforcement.as_str()});
            if let Some(team) = &e.team {
                properties["team"] = team.clone().into();
            }
            json!({
                "source": "tollgate",
                "policy": e.policy,
                "result": result_of(e),
                "scored": true,
                "message": e.message,
                "resources": [subject],
                "properties": properties,
            })
        })
        .collect();
    json!({
        "source": "tollgate",
        "configuration": {"limits": {"maxResults": cap}},
        "summary": {
            "pass": tally.pass,
            "fail": tally.fail,
            "warn": tally.warn,
            "error": tally.error,
            "skip": 0,
        },
        "results": results,
    })
}

/// `content` of a report as read back, timestamps removed.
fn existing_content(object: &DynamicObject) -> Value {
    let mut data = object.data.clone();
    if let Some(results) = data.get_mut("results").and_then(|r| r.as_array_mut()) {
        for r in results {
            if let Some(map) = r.as_object_mut() {
                map.remove("timestamp");
            }
        }
    }
    let keep = ["source", "configuration", "summary", "results"];
    let map: serde_json::Map<String, Value> = data
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| keep.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut value = Value::Object(map);
    // Absent means empty, as the API server may omit an empty list.
    if value.get("results").is_none() {
        value["results"] = json!([]);
    }
    value
}

fn omitted(tally: &NamespaceTally, cap: usize) -> u64 {
    (tally.fail + tally.warn + tally.error).saturating_sub(tally.results.len().min(cap) as u64)
}

/// Writes a pass's reports: creates or updates those whose content
/// changed, leaves the others, and deletes Tollgate's reports in
/// namespaces the pass found nothing in.
pub async fn write(
    client: &Client,
    tally: &Tally,
    cap: usize,
    now_unix: i64,
) -> Result<Written, kube::Error> {
    let mut written = Written::default();
    let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
    let reports = resource("Report", "reports");
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &reports);
    let mut existing: BTreeMap<String, Value> = BTreeMap::new();
    for object in all
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        if object.metadata.name.as_deref() == Some(NAME) {
            let namespace = object.metadata.namespace.clone().unwrap_or_default();
            existing.insert(namespace, existing_content(&object));
        }
    }
    let clusters = resource("ClusterReport", "clusterreports");
    let cluster_api: Api<DynamicObject> = Api::all_with(client.clone(), &clusters);
    if let Some(object) = cluster_api.get_opt(NAME).await? {
        existing.insert(String::new(), existing_content(&object));
    }
    let params = PatchParams::apply(MANAGER).force();
    for (namespace, ns_tally) in &tally.namespaces {
        let wanted = content(ns_tally, cap);
        if existing.remove(namespace).as_ref() == Some(&wanted) {
            written.unchanged += 1;
            continue;
        }
        let mut object = wanted;
        if let Some(results) = object["results"].as_array_mut() {
            for r in results {
                r["timestamp"] = json!({"seconds": now_unix, "nanos": 0});
            }
        }
        let (api, kind) = if namespace.is_empty() {
            (cluster_api.clone(), "ClusterReport")
        } else {
            (
                Api::namespaced_with(client.clone(), namespace, &reports),
                "Report",
            )
        };
        let mut metadata = json!({
            "name": NAME,
            "labels": {MANAGED_BY.0: MANAGED_BY.1},
            "annotations": {OMITTED: omitted(ns_tally, cap).to_string()},
        });
        if !namespace.is_empty() {
            metadata["namespace"] = namespace.clone().into();
        }
        object["apiVersion"] = format!("{GROUP}/{VERSION}").into();
        object["kind"] = kind.into();
        object["metadata"] = metadata;
        api.patch(NAME, &params, &Patch::Apply(&object)).await?;
        written.created_or_updated += 1;
    }
    // Namespaces with a report of ours and nothing judged this pass (every
    // object gone, or no longer of an audited kind).
    for namespace in existing.keys() {
        let api: Api<DynamicObject> = if namespace.is_empty() {
            cluster_api.clone()
        } else {
            Api::namespaced_with(client.clone(), namespace, &reports)
        };
        match api.delete(NAME, &DeleteParams::default()).await {
            Ok(_) => written.deleted += 1,
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Subject;

    fn entry(policy: &str, enforcement: Enforcement, error: bool) -> Entry {
        Entry {
            policy: policy.into(),
            enforcement,
            subject: Subject {
                api_version: "v1".into(),
                kind: "Pod".into(),
                namespace: "app-ml-team".into(),
                name: "p".into(),
                uid: "u".into(),
            },
            team: Some("ml".into()),
            message: "no".into(),
            error,
        }
    }

    #[test]
    fn a_report_read_back_compares_equal_to_what_was_written() {
        let tally = NamespaceTally {
            pass: 3,
            fail: 1,
            warn: 1,
            error: 1,
            results: vec![
                entry("a", Enforcement::Deny, false),
                entry("b", Enforcement::Warn, false),
                entry("c", Enforcement::Deny, true),
            ],
        };
        let wanted = content(&tally, 2);
        assert_eq!(
            wanted["results"].as_array().map(Vec::len),
            Some(2),
            "capped"
        );
        assert_eq!(wanted["summary"]["fail"], 1);
        assert_eq!(omitted(&tally, 2), 1);
        let results: Vec<&str> = wanted["results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["result"].as_str())
            .collect();
        assert_eq!(results, ["fail", "warn"]);
        // As the API server returns it: with metadata, timestamps, status.
        let mut stored = wanted.clone();
        for r in stored["results"].as_array_mut().into_iter().flatten() {
            r["timestamp"] = json!({"seconds": 1, "nanos": 0});
        }
        stored["apiVersion"] = "openreports.io/v1alpha1".into();
        stored["kind"] = "Report".into();
        stored["metadata"] =
            json!({"name": NAME, "namespace": "app-ml-team", "resourceVersion": "7"});
        let object: DynamicObject = serde_json::from_value(stored).expect("a DynamicObject");
        assert_eq!(existing_content(&object), wanted);
        let mut fixed = tally.clone();
        fixed.fail = 0;
        fixed.pass = 4;
        fixed.results.remove(0);
        assert_ne!(existing_content(&object), content(&fixed, 2));
    }

    #[test]
    fn an_empty_report_read_back_without_results_is_unchanged() {
        let tally = NamespaceTally {
            pass: 2,
            ..Default::default()
        };
        let mut stored = content(&tally, 10);
        stored.as_object_mut().map(|m| m.remove("results"));
        stored["apiVersion"] = "openreports.io/v1alpha1".into();
        stored["kind"] = "Report".into();
        stored["metadata"] = json!({"name": NAME, "namespace": "x"});
        let object: DynamicObject = serde_json::from_value(stored).expect("a DynamicObject");
        assert_eq!(existing_content(&object), content(&tally, 10));
    }
}
