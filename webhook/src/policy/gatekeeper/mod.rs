//! Gatekeeper ConstraintTemplates and their constraints, run unchanged.
//!
//! - [`template`]: parsing `templates.gatekeeper.sh` ConstraintTemplates
//!   (v1, v1beta1) and compiling each into its own engine (two templates
//!   may declare the same package), Rego v0 unless the template says v1.
//! - [`constraint`]: parsing constraints: parameters, enforcementAction.
//! - [`matching`]: `spec.match`, applied outside Rego as Gatekeeper does.
//! - [`builtins`]: deprecated OPA builtins that library templates still
//!   call and regorus lacks.
//! - [`inventory`]: `data.inventory`, the synced objects templates may read.

pub mod builtins;
pub mod constraint;
pub mod inventory;
pub mod matching;
pub mod suite;
pub mod template;

pub use constraint::Constraint;
pub use template::{CompiledTemplate, Template};

/// What can be wrong with a template or a constraint, naming which.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{source_name}: {message}")]
pub struct GatekeeperError {
    /// `file` or `file: ConstraintTemplate <name>` and the like.
    pub source_name: String,
    pub message: String,
}

impl GatekeeperError {
    pub fn new(source_name: impl Into<String>, message: impl Into<String>) -> Self {
        GatekeeperError {
            source_name: source_name.into(),
            message: message.into(),
        }
    }
}

/// The API groups of Gatekeeper's objects.
pub const TEMPLATES_GROUP: &str = "templates.gatekeeper.sh";
pub const CONSTRAINTS_GROUP: &str = "constraints.gatekeeper.sh";

/// The group of an `apiVersion` (`""` for the core group).
pub fn api_group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(group, _)| group)
}

/// Every document of a multi-document YAML text, as JSON values. Empty
/// documents (a stray `---`) are skipped.
pub fn yaml_documents(text: &str, origin: &str) -> Result<Vec<serde_json::Value>, GatekeeperError> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for (i, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let value = serde_json::Value::deserialize(document).map_err(|e| {
            GatekeeperError::new(format!("{origin}: document {}", i + 1), e.to_string())
        })?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

/// Templates and constraints found in YAML sources, compiled and linked.
#[derive(Default)]
pub struct Loaded {
    pub templates: Vec<CompiledTemplate>,
    /// Each with the index of its template.
    pub constraints: Vec<(Constraint, usize)>,
    pub notices: Vec<String>,
}

/// Reads every ConstraintTemplate and constraint in `sources` (other
/// documents are left alone: test suites and sample objects often sit
/// beside them), compiles each template and links each constraint to its
/// template by kind. A constraint whose kind no template defines, or two
/// templates of one kind, is an error.
pub fn load(
    sources: &[crate::policy::Source],
    warmup: &regorus::Value,
    data: Option<&regorus::Value>,
) -> Result<Loaded, GatekeeperError> {
    let mut templates = Vec::new();
    let mut constraints = Vec::new();
    for source in sources {
        let origin = source.path.display().to_string();
        for object in yaml_documents(&source.text, &origin)? {
            if Template::is_template(&object) {
                templates.push(Template::from_object(&object, &origin)?);
            } else if Constraint::is_constraint(&object) {
                constraints.push(Constraint::from_object(&object, &origin)?);
            }
        }
    }
    let mut loaded = Loaded::default();
    for template in templates {
        if let Some(other) = loaded
            .templates
            .iter()
            .find(|t| t.template.kind == template.kind)
        {
            return Err(GatekeeperError::new(
                format!("{}: ConstraintTemplate {}", template.origin, template.name),
                format!(
                    "kind {} is already defined by ConstraintTemplate {} in {}",
                    template.kind, other.template.name, other.template.origin
                ),
            ));
        }
        loaded.notices.extend(template.notices.iter().cloned());
        loaded
            .templates
            .push(template.compile_with_data(warmup, data)?);
    }
    for constraint in constraints {
        let Some(index) = loaded
            .templates
            .iter()
            .position(|t| t.template.kind == constraint.kind)
        else {
            return Err(GatekeeperError::new(
                format!(
                    "{}: {} {}",
                    constraint.origin, constraint.kind, constraint.name
                ),
                format!("no ConstraintTemplate defines kind {}", constraint.kind),
            ));
        };
        if loaded
            .constraints
            .iter()
            .any(|(c, _): &(Constraint, usize)| {
                c.kind == constraint.kind && c.name == constraint.name
            })
        {
            return Err(GatekeeperError::new(
                format!(
                    "{}: {} {}",
                    constraint.origin, constraint.kind, constraint.name
                ),
                "defined twice".to_owned(),
            ));
        }
        constraint.check_against(&loaded.templates[index].template)?;
        loaded.constraints.push((constraint, index));
    }
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Source;

    const TEMPLATE: &str = "apiVersion: templates.gatekeeper.sh/v1\nkind: ConstraintTemplate\nmetadata: {name: k8sdemo}\nspec:\n  crd: {spec: {names: {kind: K8sDemo}SCHEMA}}\n  targets:\n  - target: admission.k8s.gatekeeper.sh\n    rego: |\n      package k8sdemo\n      violation[{\"msg\": \"x\"}] { input.parameters.on }\n";

    fn load_with(schema: &str, parameters: &str) -> Result<Loaded, GatekeeperError> {
        let constraint = format!(
            "apiVersion: constraints.gatekeeper.sh/v1beta1\nkind: K8sDemo\nmetadata: {{name: demo}}\nspec: {{{parameters}}}\n"
        );
        let sources = [
            Source {
                path: "template.yaml".into(),
                text: TEMPLATE.replace("SCHEMA", schema),
            },
            Source {
                path: "constraint.yaml".into(),
                text: constraint,
            },
        ];
        let warmup = regorus::Value::from_json_str(r#"{"operation": "CREATE"}"#).unwrap();
        load(&sources, &warmup, None)
    }

    /// Gatekeeper's constraint CRD has no `spec.parameters` when the
    /// template declares no schema (gator verify: "unknown fields:
    /// [spec.parameters]"); loading them judged with parameters Gatekeeper
    /// never sees.
    #[test]
    fn parameters_need_the_templates_schema_as_in_gatekeeper() {
        let err = load_with("", "parameters: {on: true}")
            .err()
            .expect("parameters without a schema are refused");
        assert_eq!(err.source_name, "constraint.yaml: K8sDemo demo");
        assert!(
            err.message.starts_with(
                "spec.parameters: unknown field: ConstraintTemplate k8sdemo (template.yaml) declares no parameters schema"
            ),
            "{}",
            err.message
        );
        assert_eq!(load_with("", "").unwrap().constraints.len(), 1);
        let schema = ", validation: {openAPIV3Schema: {properties: {on: {type: boolean}}}}";
        assert_eq!(
            load_with(schema, "parameters: {on: true}")
                .unwrap()
                .constraints
                .len(),
            1
        );
    }
}
