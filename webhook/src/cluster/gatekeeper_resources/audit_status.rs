//! The audit's results on the constraints served as custom resources, as
//! Gatekeeper's audit writes them: `status.auditTimestamp`,
//! `status.totalViolations` and `status.violations` (the first
//! `audit.constraintViolationsLimit` of them). Written by server-side apply
//! on the status subresource under a field manager of its own, so the
//! replicas' `byPod` entries and the audit's fields never overwrite each
//! other; a constraint is written only when its results changed.

use std::collections::HashMap;

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};

use super::check::constraint_origin;
use super::reconcile::constraint_resource;
use super::takeover;
use crate::audit::tally::Tally;
use crate::policy::PolicySet;
use crate::policy::gatekeeper::CONSTRAINTS_GROUP;

/// The field manager of the audit's status fields.
const MANAGER: &str = "tollgate-audit";

/// The status apply bodies of the cluster constraints in `policies`, keyed
/// by `<kind>/<name>`. Constraints loaded from files are not in the
/// cluster and get none.
pub fn bodies(
    policies: &PolicySet,
    tally: &Tally,
    limit: usize,
    unix: i64,
) -> Vec<(String, Value)> {
    let timestamp = Timestamp::from_second(unix)
        .unwrap_or(Timestamp::UNIX_EPOCH)
        .to_string();
    policies
        .constraints()
        .filter(|c| c.origin == constraint_origin(&c.kind, &c.name))
        .map(|c| {
            let found = tally.policies.get(&c.name);
            let violations: Vec<Value> = found
                .into_iter()
                .flat_map(|t| t.listed.iter())
                .filter(|e| !e.error)
                .take(limit)
                .map(|e| {
                    let (group, version) = match e.subject.api_version.rsplit_once('/') {
                        Some((group, version)) => (group, version),
                        None => ("", e.subject.api_version.as_str()),
                    };
                    let mut v = json!({
                        "enforcementAction": e.enforcement.as_str(),
                        "group": group,
                        "version": version,
                        "kind": e.subject.kind,
                        "name": e.subject.name,
                        "message": e.message,
                    });
                    if !e.subject.namespace.is_empty() {
                        v["namespace"] = e.subject.namespace.clone().into();
                    }
                    v
                })
                .collect();
            let body = json!({
                "apiVersion": format!("{CONSTRAINTS_GROUP}/v1beta1"),
                "kind": c.kind,
                "metadata": {"name": c.name},
                "status": {
                    "auditTimestamp": timestamp,
                    "totalViolations": found.map_or(0, |t| t.violations),
                    "violations": violations,
                },
            });
            (format!("{}/{}", c.kind, c.name), body)
        })
        .collect()
}

/// What one write of the statuses did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub updated: usize,
    pub unchanged: usize,
}

/// Writes the audit's fields on the cluster constraints, remembering what
/// it wrote in `last` (the timestamp aside) so an unchanged result is not
/// written again. Nothing is written while Gatekeeper's webhook is
/// installed: the constraints are Gatekeeper's then.
pub async fn write(
    client: &Client,
    bodies: Vec<(String, Value)>,
    last: &mut HashMap<String, Value>,
) -> Result<Written, kube::Error> {
    let mut written = Written::default();
    if bodies.is_empty() {
        return Ok(written);
    }
    if takeover::check(client).await?.is_some() {
        return Ok(written);
    }
    let manager = PatchParams::apply(MANAGER).force();
    for (key, body) in bodies {
        let mut content = body["status"].clone();
        if let Some(status) = content.as_object_mut() {
            status.remove("auditTimestamp");
        }
        if last.get(&key) == Some(&content) {
            written.unchanged += 1;
            continue;
        }
        let kind = body["kind"].as_str().unwrap_or_default();
        let name = body["metadata"]["name"].as_str().unwrap_or_default();
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &constraint_resource(kind));
        match api.patch_status(name, &manager, &Patch::Apply(&body)).await {
            Ok(_) => {
                last.insert(key, content);
                written.updated += 1;
            }
            // Deleted since the pass began.
            Err(kube::Error::Api(e)) if e.code == 404 => {
                last.remove(&key);
            }
            Err(e) => {
                last.remove(&key);
                return Err(e);
            }
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::admission::Audited;
    use crate::audit::Subject;
    use crate::config::{Enforcement, PoliciesConfig};
    use crate::policy::Source;
    use crate::policy::{Finding, Outcome};

    const TEMPLATE: &str = r#"{"apiVersion": "templates.gatekeeper.sh/v1", "kind": "ConstraintTemplate",
      "metadata": {"name": "k8smaxreplicas"},
      "spec": {"crd": {"spec": {"names": {"kind": "K8sMaxReplicas"},
          "validation": {"openAPIV3Schema": {"properties": {"max": {"type": "integer"}}}}}},
        "targets": [{"target": "admission.k8s.gatekeeper.sh", "rego":
          "package k8smaxreplicas\nviolation[{\"msg\": \"too many\"}] { input.review.object.spec.replicas > input.parameters.max }"}]}}"#;

    fn constraint(name: &str) -> String {
        format!(
            r#"{{"apiVersion": "constraints.gatekeeper.sh/v1beta1", "kind": "K8sMaxReplicas",
              "metadata": {{"name": "{name}"}}, "spec": {{"parameters": {{"max": 3}}}}}}"#
        )
    }

    fn deployment(namespace: &str, name: &str) -> Subject {
        Subject {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: namespace.into(),
            name: name.into(),
            uid: String::new(),
        }
    }

    #[test]
    fn cluster_constraints_get_gatekeepers_audit_fields_capped() {
        let sources = vec![
            Source {
                path: PathBuf::from("constrainttemplate/k8smaxreplicas.yaml"),
                text: TEMPLATE.into(),
            },
            Source {
                path: PathBuf::from("constraint/K8sMaxReplicas/in-cluster.yaml"),
                text: constraint("in-cluster"),
            },
            Source {
                path: PathBuf::from("constraint/K8sMaxReplicas/clean.yaml"),
                text: constraint("clean"),
            },
            Source {
                path: PathBuf::from("/etc/tollgate/policies/from-file.yaml"),
                text: constraint("from-file"),
            },
        ];
        let set = PolicySet::compile(&sources, &PoliciesConfig::default(), "test")
            .expect("the template and constraints compile");
        let mut tally = Tally::new(10, 10);
        for i in 0..3 {
            tally.record(
                deployment("app-ml-team", &format!("d{i}")),
                Ok(Some(Audited {
                    team: Some("ml".into()),
                    outcome: Outcome {
                        findings: vec![Finding {
                            policy: "in-cluster".into(),
                            enforcement: Enforcement::Deny,
                            message: "too many".into(),
                            error: false,
                        }],
                        evaluated: 1,
                        failed: false,
                    },
                })),
            );
        }
        let bodies: HashMap<String, Value> =
            bodies(&set, &tally, 2, 1_700_000_000).into_iter().collect();
        assert_eq!(
            bodies.len(),
            2,
            "the constraint from a file gets none: {bodies:?}"
        );
        let status = &bodies["K8sMaxReplicas/in-cluster"]["status"];
        assert_eq!(status["auditTimestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(status["totalViolations"], 3);
        assert_eq!(
            status["violations"],
            json!([
                {"enforcementAction": "deny", "group": "apps", "version": "v1",
                 "kind": "Deployment", "namespace": "app-ml-team", "name": "d0",
                 "message": "too many"},
                {"enforcementAction": "deny", "group": "apps", "version": "v1",
                 "kind": "Deployment", "namespace": "app-ml-team", "name": "d1",
                 "message": "too many"},
            ])
        );
        let clean = &bodies["K8sMaxReplicas/clean"]["status"];
        assert_eq!(
            (&clean["totalViolations"], &clean["violations"]),
            (&json!(0), &json!([]))
        );
    }
}
