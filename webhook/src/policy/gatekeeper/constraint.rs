//! Constraints: instances of a template's kind, with parameters, a match
//! and an enforcement action.

use regorus::Value;

use super::matching::Match;
use super::{CONSTRAINTS_GROUP, GatekeeperError, api_group};
use crate::config::Enforcement;

#[derive(Debug, Clone)]
pub struct Constraint {
    /// The template kind it instantiates.
    pub kind: String,
    /// `metadata.name`: the name violations are reported under.
    pub name: String,
    pub enforcement: Enforcement,
    pub matcher: Match,
    /// `spec.parameters`, as the template's `input.parameters`.
    pub parameters: Value,
    /// Whether `spec.parameters` was given at all.
    pub has_parameters: bool,
    pub origin: String,
}

impl Constraint {
    /// Whether a parsed object is a constraint.
    pub fn is_constraint(object: &serde_json::Value) -> bool {
        object
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .is_some_and(|v| api_group(v) == CONSTRAINTS_GROUP)
    }

    pub fn from_object(
        object: &serde_json::Value,
        origin: &str,
    ) -> Result<Constraint, GatekeeperError> {
        let kind = object
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_owned();
        let name = object
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or("")
            .to_owned();
        let fail =
            |message: String| GatekeeperError::new(format!("{origin}: {kind} {name}"), message);
        if kind.is_empty() || name.is_empty() {
            return Err(fail("kind and metadata.name are required".into()));
        }
        let spec = object.get("spec").cloned().unwrap_or_default();
        let enforcement = match spec.get("enforcementAction").and_then(|a| a.as_str()) {
            None | Some("deny") => Enforcement::Deny,
            Some("warn") => Enforcement::Warn,
            Some("dryrun") => Enforcement::Dryrun,
            Some(other) => {
                return Err(fail(format!(
                    "spec.enforcementAction: unsupported value {other:?} (expected deny, warn or dryrun)"
                )));
            }
        };
        let matcher = match spec.get("match") {
            None => Match::default(),
            Some(m) => serde_path_to_error::deserialize::<_, Match>(m)
                .map_err(|e| fail(format!("spec.match.{}: {}", e.path(), e.inner())))?,
        };
        let has_parameters = spec.get("parameters").is_some_and(|p| !p.is_null());
        let parameters = match spec.get("parameters") {
            None | Some(serde_json::Value::Null) => Value::new_object(),
            Some(p) => Value::from_json_str(&p.to_string())
                .map_err(|e| fail(format!("spec.parameters: {e}")))?,
        };
        Ok(Constraint {
            kind,
            name,
            enforcement,
            matcher,
            parameters,
            has_parameters,
            origin: origin.to_owned(),
        })
    }

    /// Whether `template` (of this constraint's kind) accepts this
    /// constraint as Gatekeeper does: parameters need a template that
    /// declares their schema. Without one, Gatekeeper's constraint CRD has
    /// no `spec.parameters`; the apiserver drops them and `gator verify`
    /// rejects the constraint ("unknown fields: [spec.parameters]"). Loading
    /// them anyway would judge with parameters Gatekeeper never sees.
    pub fn check_against(&self, template: &super::Template) -> Result<(), GatekeeperError> {
        if self.has_parameters && !template.parameters_schema {
            return Err(GatekeeperError::new(
                format!("{}: {} {}", self.origin, self.kind, self.name),
                format!(
                    "spec.parameters: unknown field: ConstraintTemplate {} ({}) declares no \
                     parameters schema (spec.crd.spec.validation.openAPIV3Schema), so Gatekeeper's \
                     constraint CRD has no spec.parameters and drops them",
                    template.name, template.origin
                ),
            ));
        }
        Ok(())
    }
}
