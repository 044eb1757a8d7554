//! Gatekeeper `Suite` files (`test.gatekeeper.sh/v1alpha1`), run as
//! `gator verify` runs them: each test names a template and a constraint,
//! each case an object (a plain object or a whole AdmissionReview),
//! optional inventory objects, and assertions on the violations.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use regorus::Value;
use serde::Deserialize;

use super::inventory::Inventory;
use super::{Constraint, GatekeeperError, Template, yaml_documents};

#[derive(Debug, Deserialize)]
struct Suite {
    kind: String,
    #[serde(default)]
    tests: Vec<SuiteTest>,
}

#[derive(Debug, Deserialize)]
struct SuiteTest {
    name: String,
    template: PathBuf,
    constraint: PathBuf,
    #[serde(default)]
    cases: Vec<SuiteCase>,
}

#[derive(Debug, Deserialize)]
struct SuiteCase {
    name: String,
    object: PathBuf,
    #[serde(default)]
    inventory: Vec<PathBuf>,
    #[serde(default)]
    assertions: Vec<Assertion>,
}

#[derive(Debug, Deserialize)]
struct Assertion {
    #[serde(default)]
    violations: Option<Expected>,
    #[serde(default)]
    message: Option<String>,
}

/// `violations: yes | no | N`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Expected {
    Count(usize),
    Word(String),
}

/// One case's result.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub suite: PathBuf,
    pub test: String,
    pub case: String,
    pub outcome: CaseOutcome,
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaseOutcome {
    Pass,
    /// An assertion did not hold.
    Fail(String),
    /// The case could not be run: a file, a template, an evaluation.
    Error(String),
}

/// Whether a parsed document is a Suite.
pub fn is_suite(object: &serde_json::Value) -> bool {
    object.get("kind").and_then(|k| k.as_str()) == Some("Suite")
        && object
            .get("apiVersion")
            .and_then(|v| v.as_str())
            .is_some_and(|v| v.starts_with("test.gatekeeper.sh/"))
}

fn read_documents(path: &Path) -> Result<Vec<serde_json::Value>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    yaml_documents(&text, &path.display().to_string()).map_err(|e| e.to_string())
}

/// Runs every case of the suite in `path` whose `<test>/<case>` matches
/// `filter`.
pub fn run(path: &Path, filter: Option<&regex::Regex>) -> Result<Vec<CaseResult>, GatekeeperError> {
    let origin = path.display().to_string();
    let documents = read_documents(path).map_err(|e| GatekeeperError::new(&origin, e))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let warmup = crate::policy::warmup_request();
    let mut results = Vec::new();
    for document in documents.into_iter().filter(is_suite) {
        let suite: Suite = serde_path_to_error::deserialize(document)
            .map_err(|e| GatekeeperError::new(&origin, format!("{}: {}", e.path(), e.inner())))?;
        debug_assert_eq!(suite.kind, "Suite");
        for test in &suite.tests {
            let prepared = prepare(base, test, &warmup);
            for case in &test.cases {
                if filter.is_some_and(|f| !f.is_match(&format!("{}/{}", test.name, case.name))) {
                    continue;
                }
                let started = Instant::now();
                let outcome = match &prepared {
                    Ok((template, constraint)) => run_case(base, template, constraint, case),
                    Err(e) => CaseOutcome::Error(e.clone()),
                };
                results.push(CaseResult {
                    suite: path.to_owned(),
                    test: test.name.clone(),
                    case: case.name.clone(),
                    outcome,
                    duration: started.elapsed(),
                });
            }
        }
    }
    Ok(results)
}

fn first<T>(
    path: &Path,
    what: &str,
    parse: impl Fn(&serde_json::Value) -> Option<Result<T, GatekeeperError>>,
) -> Result<T, String> {
    read_documents(path)?
        .iter()
        .find_map(parse)
        .ok_or_else(|| format!("{}: no {what} in it", path.display()))?
        .map_err(|e| e.to_string())
}

fn prepare(
    base: &Path,
    test: &SuiteTest,
    warmup: &Value,
) -> Result<(super::CompiledTemplate, Constraint), String> {
    let template_path = base.join(&test.template);
    let template = first(&template_path, "ConstraintTemplate", |o| {
        Template::is_template(o)
            .then(|| Template::from_object(o, &template_path.display().to_string()))
    })?;
    let compiled = template.compile(warmup).map_err(|e| e.to_string())?;
    let constraint_path = base.join(&test.constraint);
    let constraint = first(&constraint_path, "constraint", |o| {
        Constraint::is_constraint(o)
            .then(|| Constraint::from_object(o, &constraint_path.display().to_string()))
    })?;
    if constraint.kind != template.kind {
        return Err(format!(
            "{}: constraint kind {} does not match the template's kind {}",
            constraint_path.display(),
            constraint.kind,
            template.kind
        ));
    }
    constraint
        .check_against(&template)
        .map_err(|e| e.to_string())?;
    Ok((compiled, constraint))
}

/// The AdmissionRequest for a case's object: the `request` of an
/// AdmissionReview as it is, or a CREATE of a plain object.
fn request_for(object: &serde_json::Value) -> serde_json::Value {
    if object.get("kind").and_then(|k| k.as_str()) == Some("AdmissionReview") {
        return object.get("request").cloned().unwrap_or_default();
    }
    crate::review::create_request_for(object)
}

fn run_case(
    base: &Path,
    template: &super::CompiledTemplate,
    constraint: &Constraint,
    case: &SuiteCase,
) -> CaseOutcome {
    let object_path = base.join(&case.object);
    let object = match read_documents(&object_path).and_then(|d| {
        d.into_iter()
            .next()
            .ok_or_else(|| format!("{}: empty", object_path.display()))
    }) {
        Ok(o) => o,
        Err(e) => return CaseOutcome::Error(e),
    };
    let mut inventory = Inventory::default();
    for path in &case.inventory {
        match read_documents(&base.join(path)) {
            Ok(docs) => docs.into_iter().for_each(|d| inventory.add(d)),
            Err(e) => return CaseOutcome::Error(e),
        }
    }
    let request = match Value::from_json_str(&request_for(&object).to_string()) {
        Ok(r) => r,
        Err(e) => return CaseOutcome::Error(format!("{}: {e}", object_path.display())),
    };
    let messages: Vec<String> = if constraint.matcher.applies(&request, &inventory) {
        let mut engine = template.engine();
        if !inventory.is_empty() {
            let data = Value::from_json_str(&inventory.to_data().to_string())
                .and_then(|d| engine.add_data(d));
            if let Err(e) = data {
                return CaseOutcome::Error(format!("inventory: {e}"));
            }
        }
        match template.evaluate(&mut engine, &request, &constraint.parameters) {
            Ok(v) => v.into_iter().map(|v| v.msg).collect(),
            Err(e) => return CaseOutcome::Error(e),
        }
    } else {
        Vec::new()
    };
    for (i, assertion) in case.assertions.iter().enumerate() {
        if let Err(why) = check(assertion, &messages) {
            return CaseOutcome::Fail(format!(
                "assertion {}: {why}; violations: {:?}",
                i + 1,
                messages
            ));
        }
    }
    CaseOutcome::Pass
}

fn check(assertion: &Assertion, messages: &[String]) -> Result<(), String> {
    let pattern = match &assertion.message {
        Some(p) => Some(regex::Regex::new(p).map_err(|e| format!("message regex: {e}"))?),
        None => None,
    };
    let matching = messages
        .iter()
        .filter(|m| pattern.as_ref().is_none_or(|p| p.is_match(m)))
        .count();
    let about = pattern
        .as_ref()
        .map(|p| format!(" matching /{p}/"))
        .unwrap_or_default();
    let expected = assertion
        .violations
        .clone()
        .unwrap_or(Expected::Word("yes".into()));
    let ok = match &expected {
        Expected::Count(n) => matching == *n,
        Expected::Word(w) if w == "yes" => matching > 0,
        Expected::Word(w) if w == "no" => matching == 0,
        Expected::Word(w) => return Err(format!("violations: {w:?} is not yes, no or a number")),
    };
    if ok {
        Ok(())
    } else {
        let want = match expected {
            Expected::Count(n) => n.to_string(),
            Expected::Word(w) if w == "yes" => "at least one".into(),
            Expected::Word(_) => "no".into(),
        };
        Err(format!(
            "expected {want} violation(s){about}, got {matching}"
        ))
    }
}
