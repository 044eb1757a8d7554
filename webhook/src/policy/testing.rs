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

/// How to run a set of tests.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Only tests whose `<package>.<name>` matches.
    pub filter: Option<regex::Regex>,
    /// Record which lines of the policies the tests evaluated.
    pub coverage: bool,
}

/// Line coverage of one policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCoverage {
    pub file: String,
    pub covered: usize,
    /// Lines that hold evaluable code but were never evaluated.
    pub not_covered: Vec<u32>,
}

impl FileCoverage {
    pub fn lines(&self) -> usize {
        self.covered + self.not_covered.len()
    }
}

/// Coverage over the policy files (the `*_test.rego` files themselves are
/// left out: they would only pad the figure).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    pub files: Vec<FileCoverage>,
}

impl Coverage {
    /// Covered lines over evaluable lines, in percent; 100 when there are
    /// no evaluable lines.
    pub fn percent(&self) -> f64 {
        let (covered, lines) = self
            .files
            .iter()
            .fold((0, 0), |(c, l), f| (c + f.covered, l + f.lines()));
        percent(covered, lines)
    }
}

pub fn percent(covered: usize, lines: usize) -> f64 {
    if lines == 0 {
        100.0
    } else {
        covered as f64 * 100.0 / lines as f64
    }
}

/// Lines holding code: not blank, not a comment, not the package or an
/// import.
fn code_lines(text: &str) -> Vec<u32> {
    text.lines()
        .zip(1u32..)
        .filter(|(line, _)| {
            let t = line.trim();
            !(t.is_empty()
                || t.starts_with('#')
                || t.starts_with("package ")
                || t.starts_with("import "))
        })
        .map(|(_, n)| n)
        .collect()
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Run {
    pub results: Vec<TestResult>,
    pub coverage: Option<Coverage>,
}

impl Run {
    pub fn passed(&self) -> usize {
        self.count(|s| *s == Status::Pass)
    }
    pub fn failed(&self) -> usize {
        self.count(|s| *s == Status::Fail)
    }
    pub fn errors(&self) -> usize {
        self.count(|s| matches!(s, Status::Error(_)))
    }
    fn count(&self, f: impl Fn(&Status) -> bool) -> usize {
        self.results.iter().filter(|r| f(&r.status)).count()
    }
}

/// Compiles `sources` (policies and their tests together) and runs every
/// test rule, in file order.
pub fn run(sources: &[Source]) -> Result<Vec<TestResult>, LoadError> {
    run_with(sources, &Options::default()).map(|r| r.results)
}

/// Like [`run`], with a filter and optional coverage.
pub fn run_with(sources: &[Source], options: &Options) -> Result<Run, LoadError> {
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
            let wanted = options
                .filter
                .as_ref()
                .is_none_or(|f| f.is_match(&format!("{package}.{name}")));
            if wanted && declares_rule(&engine, source, name)? {
                cases.push(TestCase {
                    file: source.path.clone(),
                    line: source.text[..m.start()].lines().count() + 1,
                    package: package.clone(),
                    name: name.to_owned(),
                });
            }
        }
    }
    engine.set_enable_coverage(options.coverage);
    let results = cases
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
        .collect();
    let coverage = if options.coverage {
        let report = engine
            .get_coverage_report()
            .map_err(|e| LoadError::Compile(format!("coverage report: {e}")))?;
        let mut files: Vec<FileCoverage> = report
            .files
            .into_iter()
            .filter(|f| !f.path.ends_with("_test.rego"))
            .map(|f| FileCoverage {
                file: f.path,
                covered: f.covered.len(),
                not_covered: f.not_covered.into_iter().collect(),
            })
            .collect();
        // regorus leaves out modules no test evaluated at all; they are the
        // least covered of all, so count every code line of them as missed.
        for source in sources {
            let file = source.path.display().to_string();
            if file.ends_with("_test.rego") || files.iter().any(|f| f.file == file) {
                continue;
            }
            files.push(FileCoverage {
                file,
                covered: 0,
                not_covered: code_lines(&source.text),
            });
        }
        files.sort_by(|a, b| a.file.cmp(&b.file));
        Some(Coverage { files })
    } else {
        None
    };
    Ok(Run { results, coverage })
}
