//! ConstraintTemplates: parsing and compiling.

use regorus::{Engine, Value};

use super::{GatekeeperError, TEMPLATES_GROUP, api_group, builtins};
use crate::policy::load::compile_message;
use crate::policy::rego_compat::{self, RegoVersion};

/// The admission target, the only one Gatekeeper has for Kubernetes.
const ADMISSION_TARGET: &str = "admission.k8s.gatekeeper.sh";

/// A ConstraintTemplate's Rego, as parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// `metadata.name`.
    pub name: String,
    /// `spec.crd.spec.names.kind`: the kind of its constraints.
    pub kind: String,
    pub rego: String,
    pub libs: Vec<String>,
    /// `code[].source.version: v1`; library templates are v0.
    pub rego_v1: bool,
    /// The file it came from.
    pub origin: String,
    /// What was skipped (CEL code blocks), for the user to know.
    pub notices: Vec<String>,
    /// Whether `spec.crd.spec.validation.openAPIV3Schema` is set. Without
    /// it Gatekeeper's constraint CRD has no `spec.parameters` at all, so
    /// its constraints can have none.
    pub parameters_schema: bool,
}

/// A template compiled into its own prepared engine.
#[derive(Clone)]
pub struct CompiledTemplate {
    pub template: Template,
    /// `data.<package>` of its Rego.
    pub package: String,
    /// `data.<package>.violation`.
    pub rule: String,
    pub(crate) engine: Engine,
}

fn text<'a>(v: &'a serde_json::Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

impl Template {
    /// Whether a parsed object is a ConstraintTemplate.
    pub fn is_template(object: &serde_json::Value) -> bool {
        api_group(text(object, &["apiVersion"]).unwrap_or("")) == TEMPLATES_GROUP
    }

    pub fn from_object(
        object: &serde_json::Value,
        origin: &str,
    ) -> Result<Template, GatekeeperError> {
        let name = text(object, &["metadata", "name"])
            .unwrap_or_default()
            .to_owned();
        let fail = |message: String| {
            let which = if name.is_empty() {
                "ConstraintTemplate".to_owned()
            } else {
                format!("ConstraintTemplate {name}")
            };
            GatekeeperError::new(format!("{origin}: {which}"), message)
        };
        if text(object, &["kind"]) != Some("ConstraintTemplate") {
            return Err(fail(format!(
                "kind {:?} in group {TEMPLATES_GROUP}: expected ConstraintTemplate",
                text(object, &["kind"]).unwrap_or("")
            )));
        }
        if name.is_empty() {
            return Err(fail("metadata.name is missing".into()));
        }
        let kind = text(object, &["spec", "crd", "spec", "names", "kind"])
            .filter(|k| !k.is_empty())
            .ok_or_else(|| fail("spec.crd.spec.names.kind is missing".into()))?
            .to_owned();
        let targets = object
            .pointer("/spec/targets")
            .and_then(|t| t.as_array())
            .ok_or_else(|| fail("spec.targets is missing".into()))?;
        let target = targets
            .iter()
            .find(|t| text(t, &["target"]) == Some(ADMISSION_TARGET))
            .ok_or_else(|| fail(format!("no target {ADMISSION_TARGET:?} in spec.targets")))?;
        let strings = |v: Option<&serde_json::Value>| -> Vec<String> {
            v.and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut notices = Vec::new();
        let mut rego = text(target, &["rego"]).unwrap_or("").to_owned();
        let mut libs = strings(target.get("libs"));
        let mut rego_v1 = false;
        let mut cel = None;
        for (i, code) in target
            .get("code")
            .and_then(|c| c.as_array())
            .into_iter()
            .flatten()
            .enumerate()
        {
            match text(code, &["engine"]) {
                Some("Rego") => {
                    let source = code.get("source").cloned().unwrap_or_default();
                    rego = text(&source, &["rego"]).unwrap_or("").to_owned();
                    libs = strings(source.get("libs"));
                    rego_v1 = text(&source, &["version"]) == Some("v1");
                }
                Some(engine) => {
                    if engine == "K8sNativeValidation" {
                        cel = Some(i);
                    }
                    notices.push(format!(
                    "{origin}: ConstraintTemplate {name}: code[{i}] engine {engine} is not supported and was skipped"
                    ))
                }
                None => return Err(fail(format!("code[{i}].engine is missing"))),
            }
        }
        if let (Some(i), true) = (cel, rego.trim().is_empty()) {
            return Err(fail(format!(
                "CEL-only templates are not supported yet: code[{i}] is engine K8sNativeValidation and no code block or `rego` holds Rego"
            )));
        }
        if rego.trim().is_empty() {
            return Err(fail(
                "no Rego: neither targets[].rego nor a code block with engine Rego".into(),
            ));
        }
        let parameters_schema = object
            .pointer("/spec/crd/spec/validation/openAPIV3Schema")
            .is_some_and(|s| !s.is_null());
        Ok(Template {
            name,
            kind,
            rego,
            libs,
            rego_v1,
            origin: origin.to_owned(),
            notices,
            parameters_schema,
        })
    }

    /// Compiles the template into its own engine and evaluates it once
    /// against `warmup` (an AdmissionRequest) so that a missing builtin is
    /// reported now rather than on the first request.
    pub fn compile(&self, warmup: &Value) -> Result<CompiledTemplate, GatekeeperError> {
        self.compile_with_data(warmup, None)
    }

    /// Like [`Template::compile`], with a data document (`data.inventory`).
    pub fn compile_with_data(
        &self,
        warmup: &Value,
        data: Option<&Value>,
    ) -> Result<CompiledTemplate, GatekeeperError> {
        let fail = |message: String| {
            GatekeeperError::new(
                format!("{}: ConstraintTemplate {}", self.origin, self.name),
                message,
            )
        };
        let mut engine = Engine::new();
        engine.set_rego_v0(!self.rego_v1);
        builtins::register(&mut engine).map_err(|e| fail(e.to_string()))?;
        if let Some(data) = data {
            engine
                .add_data(data.clone())
                .map_err(|e| fail(format!("data: {e}")))?;
        }
        let label = |part: &str| format!("{}[{}].{part}", self.origin, self.name);
        let version = if self.rego_v1 {
            RegoVersion::V1
        } else {
            RegoVersion::V0
        };
        // Rewritten where regorus reads OPA's Rego otherwise; lines kept.
        let add = |engine: &mut Engine, label: String, text: &str| {
            let normalised =
                rego_compat::normalise(&label, text, version).map_err(|e| fail(e.to_string()))?;
            engine
                .add_policy(label, normalised.text)
                .map_err(|e| fail(compile_message(&e.to_string())))
        };
        let package = add(&mut engine, label("rego"), &self.rego)?;
        for (i, lib) in self.libs.iter().enumerate() {
            add(&mut engine, label(&format!("libs[{i}]")), lib)?;
        }
        let rule = format!("{package}.violation");
        engine.set_input(input(warmup, &Value::new_object()));
        let result = engine
            .eval_rule(rule.clone())
            .map_err(|e| fail(compile_message(&e.to_string())))?;
        violations(&result).map_err(fail)?;
        Ok(CompiledTemplate {
            template: self.clone(),
            package,
            rule,
            engine,
        })
    }
}

/// Gatekeeper's input: the AdmissionRequest and the constraint's parameters.
pub fn input(review: &Value, parameters: &Value) -> Value {
    crate::policy::evaluate_input(review, parameters)
}

/// One violation: its message and optional details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub msg: String,
    pub details: Option<String>,
}

/// The elements of `violation[{"msg": msg, "details": d}]`.
pub fn violations(result: &Value) -> Result<Vec<Violation>, String> {
    let set = match result {
        Value::Undefined => return Ok(Vec::new()),
        Value::Set(set) => set,
        _ => return Err("violation must be a set of {\"msg\": ...} objects".into()),
    };
    set.iter()
        .map(|v| match &v["msg"] {
            Value::String(msg) => Ok(Violation {
                msg: msg.to_string(),
                details: match &v["details"] {
                    Value::Undefined => None,
                    d => d.to_json_str().ok(),
                },
            }),
            _ => Err(format!(
                "violation element has no string \"msg\": {}",
                v.to_json_str().unwrap_or_default()
            )),
        })
        .collect()
}

impl CompiledTemplate {
    /// Evaluates on `engine` (a clone of this template's) with `data`
    /// already set as the caller wants.
    pub fn evaluate(
        &self,
        engine: &mut Engine,
        review: &Value,
        parameters: &Value,
    ) -> Result<Vec<Violation>, String> {
        engine.set_input(input(review, parameters));
        let result = engine
            .eval_rule(self.rule.clone())
            .map_err(|e| compile_message(&e.to_string()))?;
        violations(&result)
    }

    /// A clone of the prepared engine.
    pub fn engine(&self) -> Engine {
        self.engine.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(yaml: &str) -> Result<Template, GatekeeperError> {
        let object: serde_json::Value = yaml_serde::from_str(yaml).unwrap();
        Template::from_object(&object, "t.yaml")
    }

    const HEAD: &str = "apiVersion: templates.gatekeeper.sh/v1\nkind: ConstraintTemplate\nmetadata: {name: k8sdemo}\nspec:\n  crd: {spec: {names: {kind: K8sDemo}}}\n";

    #[test]
    fn a_template_without_a_kind_is_named_in_the_error() {
        let err = template("apiVersion: templates.gatekeeper.sh/v1\nkind: ConstraintTemplate\nmetadata: {name: k8sdemo}\nspec:\n  targets: []\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.yaml: ConstraintTemplate k8sdemo: spec.crd.spec.names.kind is missing"
        );
    }

    #[test]
    fn cel_blocks_are_skipped_with_a_notice_and_v1_is_honoured() {
        let t = template(&format!(
            "{HEAD}  targets:\n  - target: admission.k8s.gatekeeper.sh\n    code:\n    - engine: K8sNativeValidation\n      source: {{validations: []}}\n    - engine: Rego\n      source:\n        version: v1\n        rego: |\n          package demo\n          violation contains {{\"msg\": \"x\"}} if input.review.object.bad\n"
        ))
        .unwrap();
        assert!(t.rego_v1);
        assert_eq!(
            t.notices,
            [
                "t.yaml: ConstraintTemplate k8sdemo: code[0] engine K8sNativeValidation is not supported and was skipped"
            ]
        );
        let compiled = t.compile(&crate::policy::warmup_request()).unwrap();
        assert_eq!(compiled.rule, "data.demo.violation");
    }

    #[test]
    fn a_cel_only_template_is_named_not_skipped() {
        let err = template(&format!(
            "{HEAD}  targets:\n  - target: admission.k8s.gatekeeper.sh\n    code:\n    - engine: K8sNativeValidation\n      source: {{validations: [{{expression: \"true\"}}]}}\n"
        ))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.yaml: ConstraintTemplate k8sdemo: CEL-only templates are not supported yet: code[0] is engine K8sNativeValidation and no code block or `rego` holds Rego"
        );
    }

    #[test]
    fn v0_templates_are_normalised_and_get_opas_sprintf() {
        let t = template(&format!(
            "{HEAD}  targets:\n  - target: admission.k8s.gatekeeper.sh\n    rego: |\n      package demo\n      violation[{{\"msg\": msg}}] {{\n        input.review.object.a\n        msg := sprintf(\"a %v %v\", [1])\n      }} {{\n        input.review.object.b\n        (1 + 1) == 2\n        msg := \"b\"\n      }}\n"
        ))
        .unwrap();
        let compiled = t.compile(&crate::policy::warmup_request()).unwrap();
        let review = Value::from_json_str(r#"{"object": {"a": true, "b": true}}"#).unwrap();
        let mut engine = compiled.engine();
        let mut messages: Vec<String> = compiled
            .evaluate(&mut engine, &review, &Value::new_object())
            .unwrap()
            .into_iter()
            .map(|v| v.msg)
            .collect();
        messages.sort();
        assert_eq!(messages, ["a 1 %!v(MISSING)", "b"]);
    }

    #[test]
    fn a_missing_builtin_is_named_at_compile_time() {
        let t = template(&format!(
            "{HEAD}  targets:\n  - target: admission.k8s.gatekeeper.sh\n    rego: |\n      package demo\n      violation[{{\"msg\": msg}}] {{\n        msg := crypto.x509.parse_certificates(input.review.object.data.cert)\n      }}\n"
        ))
        .unwrap();
        let err = t
            .compile(&crate::policy::warmup_request())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with("t.yaml: ConstraintTemplate k8sdemo: t.yaml[k8sdemo].rego:3:")
                && err.contains("crypto.x509.parse_certificates"),
            "{err}"
        );
    }

    #[test]
    fn a_syntax_error_points_into_the_templates_rego() {
        let t = template(&format!(
            "{HEAD}  targets:\n  - target: admission.k8s.gatekeeper.sh\n    rego: |\n      package demo\n      violation[{{\"msg\": msg}}] {{\n        msg := \n      }}\n"
        ))
        .unwrap();
        let err = t
            .compile(&crate::policy::warmup_request())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.starts_with(
                "t.yaml: ConstraintTemplate k8sdemo: t.yaml[k8sdemo].rego:2:25: expecting }\n"
            ),
            "{err}"
        );
    }
}
