//! Checking templates and constraints one by one, so that one broken object
//! is reported on its own `status` and never takes the others' policies
//! down with it. A template that breaks keeps its last good version in
//! force (as Gatekeeper keeps the last template it ingested); a constraint
//! that does not parse is left out. Pure: no cluster here.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use crate::policy::Source;
use crate::policy::gatekeeper::{Constraint, GatekeeperError, Template};

/// One error on an object's `status.byPod[].errors`, in Gatekeeper's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusError {
    /// `ingest_error` (the template does not parse or compile),
    /// `create_error` (its CRD could not be written), `parse_error` (a
    /// constraint), `reload_error` (the whole set did not compile).
    pub code: &'static str,
    pub message: String,
    /// Where in the template's Rego: `rego:3:5`, `libs[0]:2:1`.
    pub location: Option<String>,
}

impl StatusError {
    pub fn to_json(&self) -> Value {
        let mut out = serde_json::json!({"code": self.code, "message": self.message});
        if let Some(location) = &self.location {
            out["location"] = location.clone().into();
        }
        out
    }
}

/// What the checks found for one template.
#[derive(Debug, Clone)]
pub struct TemplateReport {
    pub name: String,
    pub uid: String,
    pub generation: i64,
    pub errors: Vec<StatusError>,
    /// The version in force: this one, or the last good one of the same
    /// object when this one is broken; `None` when neither.
    pub in_force: Option<Value>,
    /// The constraint kind of the version in force.
    pub kind: Option<String>,
}

/// What the checks found for one constraint.
#[derive(Debug, Clone)]
pub struct ConstraintReport {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub uid: String,
    pub generation: i64,
    pub errors: Vec<StatusError>,
}

/// The source name of a template from the cluster, in messages.
pub fn template_origin(name: &str) -> String {
    format!("constrainttemplate/{name}.yaml")
}

fn meta<'a>(object: &'a Value, field: &str) -> &'a str {
    object
        .pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn generation(object: &Value) -> i64 {
    object
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// The error of a template as its status shows it: the message (which
/// starts with the Rego location when there is one) and the location.
fn ingest_error(name: &str, error: &GatekeeperError) -> StatusError {
    let prefix = format!("{}[{name}].", template_origin(name));
    let message = error
        .message
        .strip_prefix(&prefix)
        .unwrap_or(&error.message)
        .to_owned();
    let location = message
        .split_once(": ")
        .map(|(head, _)| head)
        .filter(|head| {
            let mut parts = head.rsplitn(3, ':');
            let numbers = parts
                .by_ref()
                .take(2)
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
            numbers
                && parts
                    .next()
                    .is_some_and(|p| p == "rego" || p.starts_with("libs["))
        })
        .map(str::to_owned);
    StatusError {
        code: "ingest_error",
        message,
        location,
    }
}

/// Remembers each template's last good version between checks, and the
/// outcome of each version checked (a template is compiled again only
/// when its spec changed: a new generation or UID).
#[derive(Default)]
pub struct Checker {
    /// By name: the last version that compiled.
    last_good: BTreeMap<String, Value>,
    /// By name: the UID and generation last checked, and its error.
    checked: BTreeMap<String, (String, i64, Option<StatusError>)>,
}

impl Checker {
    /// Parses and compiles each template on its own (with `warmup` and
    /// `data` as the policy set will). Two templates of one kind: the first
    /// by name keeps it, the other is an error.
    pub fn templates(
        &mut self,
        objects: &[Value],
        warmup: &regorus::Value,
        data: Option<&regorus::Value>,
    ) -> Vec<TemplateReport> {
        let mut objects: Vec<&Value> = objects.iter().collect();
        objects.sort_by_key(|o| meta(o, "name").to_owned());
        self.last_good
            .retain(|name, _| objects.iter().any(|o| meta(o, "name") == name));
        self.checked
            .retain(|name, _| objects.iter().any(|o| meta(o, "name") == name));
        let mut reports: Vec<TemplateReport> = Vec::new();
        for object in objects {
            let name = meta(object, "name").to_owned();
            let uid = meta(object, "uid").to_owned();
            let generation = generation(object);
            let error = match self.checked.get(&name) {
                Some((u, g, error)) if *u == uid && *g == generation => error.clone(),
                _ => {
                    let origin = template_origin(&name);
                    let error = Template::from_object(object, &origin)
                        .and_then(|t| t.compile_with_data(warmup, data))
                        .err()
                        .map(|e| ingest_error(&name, &e));
                    if error.is_none() {
                        self.last_good.insert(name.clone(), object.clone());
                    }
                    self.checked
                        .insert(name.clone(), (uid.clone(), generation, error.clone()));
                    error
                }
            };
            let mut errors: Vec<StatusError> = error.into_iter().collect();
            let mut in_force = self
                .last_good
                .get(&name)
                .filter(|good| meta(good, "uid") == uid)
                .cloned();
            let mut kind = in_force.as_ref().and_then(|o| {
                o.pointer("/spec/crd/spec/names/kind")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
            if let Some(k) = &kind
                && let Some(other) = reports.iter().find(|r| r.kind.as_ref() == Some(k))
            {
                errors.push(StatusError {
                    code: "ingest_error",
                    message: format!(
                        "kind {k} is already defined by ConstraintTemplate {}",
                        other.name
                    ),
                    location: None,
                });
                in_force = None;
                kind = None;
            }
            reports.push(TemplateReport {
                name,
                uid,
                generation,
                errors,
                in_force,
                kind,
            });
        }
        reports
    }
}

/// Parses each constraint on its own.
pub fn constraints(objects: &[Value]) -> Vec<ConstraintReport> {
    objects
        .iter()
        .map(|object| {
            let kind = object
                .get("kind")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let name = meta(object, "name").to_owned();
            let errors = match Constraint::from_object(object, &constraint_origin(&kind, &name)) {
                Ok(_) => Vec::new(),
                Err(e) => vec![StatusError {
                    code: "parse_error",
                    message: e.message,
                    location: None,
                }],
            };
            ConstraintReport {
                api_version: object
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                kind,
                name,
                uid: meta(object, "uid").to_owned(),
                generation: generation(object),
                errors,
            }
        })
        .collect()
}

pub fn constraint_origin(kind: &str, name: &str) -> String {
    format!("constraint/{kind}/{name}.yaml")
}

/// The policy sources: every template in force and every constraint that
/// parsed (of a kind in force).
pub fn sources(
    templates: &[TemplateReport],
    constraints: &[(ConstraintReport, &Value)],
) -> Vec<Source> {
    // What the loader reads: apiVersion, kind, metadata.name and spec (not
    // managedFields, nor kubectl's copy of the whole object in an
    // annotation).
    let text = |v: &Value| {
        let lean = serde_json::json!({
            "apiVersion": v["apiVersion"],
            "kind": v["kind"],
            "metadata": {"name": v["metadata"]["name"]},
            "spec": v["spec"],
        });
        serde_json::to_string(&lean).unwrap_or_default()
    };
    let mut out: Vec<Source> = templates
        .iter()
        .filter_map(|t| {
            Some(Source {
                path: PathBuf::from(template_origin(&t.name)),
                text: text(t.in_force.as_ref()?),
            })
        })
        .collect();
    out.extend(
        constraints
            .iter()
            .filter(|(report, _)| report.errors.is_empty())
            .map(|(report, object)| Source {
                path: PathBuf::from(constraint_origin(&report.kind, &report.name)),
                text: text(object),
            }),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(name: &str, uid: &str, kind: &str, rego: &str) -> Value {
        json!({
            "apiVersion": "templates.gatekeeper.sh/v1",
            "kind": "ConstraintTemplate",
            "metadata": {"name": name, "uid": uid, "generation": 2},
            "spec": {
                "crd": {"spec": {"names": {"kind": kind}}},
                "targets": [{"target": "admission.k8s.gatekeeper.sh", "rego": rego}],
            },
        })
    }

    const GOOD: &str = "package demo\nviolation[{\"msg\": \"no\"}] {\n  input.review.object.metadata.labels.bad\n}\n";
    const BROKEN: &str = "package demo\nviolation[{\"msg\": \"no\"}] {\n  input.review.object.metadata.labels.bad ==\n}\n";

    fn check(checker: &mut Checker, objects: &[Value]) -> Vec<TemplateReport> {
        checker.templates(objects, &crate::policy::warmup_request(), None)
    }

    #[test]
    fn a_broken_template_is_reported_with_its_line_and_keeps_its_last_good_version() {
        let mut checker = Checker::default();
        let good = template("demo", "u1", "Demo", GOOD);
        let reports = check(&mut checker, std::slice::from_ref(&good));
        assert!(reports[0].errors.is_empty(), "{:?}", reports[0].errors);
        assert_eq!(reports[0].kind.as_deref(), Some("Demo"));

        // A changed spec is a new generation.
        let mut broken = template("demo", "u1", "Demo", BROKEN);
        broken["metadata"]["generation"] = 3.into();
        let reports = check(&mut checker, std::slice::from_ref(&broken));
        let error = &reports[0].errors[0];
        assert_eq!(error.code, "ingest_error");
        assert!(
            error.message.starts_with("rego:2:26: expecting }"),
            "{}",
            error.message
        );
        assert_eq!(error.location.as_deref(), Some("rego:2:26"));
        assert_eq!(reports[0].in_force.as_ref(), Some(&good));
        // Checked again unchanged (a status write, another object's
        // change): the same outcome, from the cache.
        let again = check(&mut checker, std::slice::from_ref(&broken));
        assert_eq!(again[0].errors, reports[0].errors);
        assert_eq!(again[0].in_force.as_ref(), Some(&good));

        // Deleted and created again broken: nothing old is in force.
        let recreated = template("demo", "u2", "Demo", BROKEN);
        let reports = check(&mut checker, &[recreated]);
        assert!(reports[0].in_force.is_none());
        assert_eq!(reports[0].kind, None);
    }

    #[test]
    fn one_broken_template_leaves_the_others_in_force_and_a_kind_is_defined_once() {
        let mut checker = Checker::default();
        let reports = check(
            &mut checker,
            &[
                template("b-broken", "u1", "Broken", BROKEN),
                template("a-good", "u2", "Good", GOOD),
                template("c-same-kind", "u3", "Good", GOOD),
            ],
        );
        let names: Vec<(&str, bool, usize)> = reports
            .iter()
            .map(|r| (r.name.as_str(), r.in_force.is_some(), r.errors.len()))
            .collect();
        assert_eq!(
            names,
            [
                ("a-good", true, 0),
                ("b-broken", false, 1),
                ("c-same-kind", false, 1)
            ]
        );
        assert_eq!(
            reports[2].errors[0].message,
            "kind Good is already defined by ConstraintTemplate a-good"
        );
        let sources = sources(&reports, &[]);
        assert_eq!(sources.len(), 1);
        assert_eq!(
            sources[0].path,
            PathBuf::from("constrainttemplate/a-good.yaml")
        );
    }

    #[test]
    fn a_constraint_that_does_not_parse_is_reported_and_left_out() {
        let bad = json!({
            "apiVersion": "constraints.gatekeeper.sh/v1beta1",
            "kind": "Demo",
            "metadata": {"name": "x", "uid": "c1", "generation": 1},
            "spec": {"enforcementAction": "block"},
        });
        let good = json!({
            "apiVersion": "constraints.gatekeeper.sh/v1beta1",
            "kind": "Demo",
            "metadata": {"name": "y", "uid": "c2", "generation": 1, "managedFields": [{"manager": "kubectl"}]},
        });
        let reports = constraints(&[bad.clone(), good.clone()]);
        assert_eq!(
            reports[0].errors[0].message,
            "spec.enforcementAction: unsupported value \"block\" (expected deny, warn or dryrun)"
        );
        assert!(reports[1].errors.is_empty());
        let pairs = [(reports[0].clone(), &bad), (reports[1].clone(), &good)];
        let sources = sources(&[], &pairs);
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].path, PathBuf::from("constraint/Demo/y.yaml"));
        assert_eq!(
            sources[0].text,
            r#"{"apiVersion":"constraints.gatekeeper.sh/v1beta1","kind":"Demo","metadata":{"name":"y"},"spec":null}"#
        );
    }
}
