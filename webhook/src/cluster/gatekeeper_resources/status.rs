//! The `status` this replica writes on templates and constraints, in
//! Gatekeeper's shape: `created` and one `byPod` entry per replica (its
//! `id`, the generation it saw, the object's UID, `errors`), plus
//! `enforced` on constraints. Written by server-side apply on the status
//! subresource with a field manager per replica; `byPod` is a list keyed
//! by `id`, so each replica owns its own entry and they never overwrite
//! each other.

use serde_json::{Value, json};

use super::check::{ConstraintReport, StatusError, TemplateReport};
use crate::policy::gatekeeper::TEMPLATES_GROUP;

/// What this replica does, in Gatekeeper's `operations` terms.
const OPERATIONS: [&str; 1] = ["webhook"];

fn errors(errors: &[StatusError]) -> Option<Value> {
    (!errors.is_empty()).then(|| errors.iter().map(StatusError::to_json).collect())
}

/// The apply body of a template's status.
pub fn template(report: &TemplateReport, replica: &str, created: bool) -> Value {
    let mut by_pod = json!({
        "id": replica,
        "observedGeneration": report.generation,
        "templateUID": report.uid,
        "operations": OPERATIONS,
    });
    if let Some(errors) = errors(&report.errors) {
        by_pod["errors"] = errors;
    }
    json!({
        "apiVersion": format!("{TEMPLATES_GROUP}/v1"),
        "kind": "ConstraintTemplate",
        "metadata": {"name": report.name},
        "status": {"created": created, "byPod": [by_pod]},
    })
}

/// The apply body of a constraint's status: `enforced` when it is in the
/// policies in force.
pub fn constraint(report: &ConstraintReport, replica: &str, enforced: bool) -> Value {
    let mut by_pod = json!({
        "id": replica,
        "observedGeneration": report.generation,
        "constraintUID": report.uid,
        "operations": OPERATIONS,
        "enforced": enforced,
    });
    if let Some(errors) = errors(&report.errors) {
        by_pod["errors"] = errors;
    }
    json!({
        "apiVersion": report.api_version,
        "kind": report.kind,
        "metadata": {"name": report.name},
        "status": {"byPod": [by_pod]},
    })
}

/// This replica's id in `byPod`: `$POD_NAME` (the chart sets it), else
/// the host name.
pub fn replica_id() -> String {
    ["POD_NAME", "HOSTNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "tollgate".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_status_carries_the_replica_and_its_errors() {
        let report = TemplateReport {
            name: "demo".into(),
            uid: "u1".into(),
            generation: 3,
            errors: vec![StatusError {
                code: "ingest_error",
                message: "rego:4:1: unexpected }".into(),
                location: Some("rego:4:1".into()),
            }],
            in_force: None,
            kind: None,
        };
        let body = template(&report, "tollgate-0", false);
        assert_eq!(
            body["status"],
            json!({"created": false, "byPod": [{
                "id": "tollgate-0", "observedGeneration": 3, "templateUID": "u1",
                "operations": ["webhook"],
                "errors": [{"code": "ingest_error", "message": "rego:4:1: unexpected }", "location": "rego:4:1"}],
            }]})
        );
        let fine = TemplateReport {
            errors: vec![],
            ..report
        };
        assert!(
            template(&fine, "r", true)["status"]["byPod"][0]
                .get("errors")
                .is_none()
        );
    }
}
