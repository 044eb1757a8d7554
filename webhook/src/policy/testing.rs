//! Running Rego unit tests the way `opa test` does: every rule named
//! `test_*` in the loaded modules is evaluated; it passes when it is
//! defined and not `false`.
//!
//! regorus has no test runner. Candidates are found by scanning the text
//! for `test_` identifiers, and each is kept only if the module's parsed
//! rule heads declare it, so a name in a comment or a string is no test.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use regorus::{Engine, Value};

use super::load::{add_source, compile_message, declares_rule};
use super::{LoadError, Source};

/// One `test_*` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestCase {
    pub file: PathBuf,
    /// 1-based line of the rule's first definition.
    pub line: usize,
    /// `data.<package>`.
    pub package: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Pass,
    /// Undefined or false.
    Fail,
    /// The evaluation itself failed.
    Error(String),
}

#[derive(Debug, Clone)]
pub struct TestResult {
    pub case: TestCase,
    pub status: Status,
    pub duration: Duration,
}

/// Compiles `sources` (policies and their tests together) and runs every
/// test rule, in file order.
pub fn run(sources: &[Source]) -> Result<Vec<TestResult>, LoadError> {
    let candidate = regex::Regex::new(r"(?m)^(test_[A-Za-z0-9_]*)")
        .map_err(|e| LoadError::Compile(format!("test discovery pattern: {e}")))?;
    let mut engine = Engine::new();
    let mut cases = Vec::new();
    for source in sources {
        let package = add_source(&mut engine, source)?;
        let mut seen = std::collections::BTreeSet::new();
        for m in candidate.find_iter(&source.text) {
            let name = m.as_str();
            if !seen.insert(name.to_owned()) {
                continue;
            }
            if declares_rule(&engine, source, name)? {
                cases.push(TestCase {
                    file: source.path.clone(),
                    line: source.text[..m.start()].lines().count() + 1,
                    package: package.clone(),
                    name: name.to_owned(),
                });
            }
        }
    }
    Ok(cases
        .into_iter()
        .map(|case| {
            let started = Instant::now();
            engine.set_input(Value::Undefined);
            let status = match engine.eval_rule(format!("{}.{}", case.package, case.name)) {
                Ok(Value::Undefined | Value::Bool(false)) => Status::Fail,
                Ok(_) => Status::Pass,
                Err(e) => Status::Error(compile_message(&e.to_string())),
            };
            TestResult {
                case,
                status,
                duration: started.elapsed(),
            }
        })
        .collect())
}
