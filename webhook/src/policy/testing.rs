//! Running Rego unit tests the way `opa test` does: every rule named
//! `test_*` in the loaded modules is evaluated; it passes when it is
//! defined and not `false`.
//!
//! regorus has no test runner. Candidates are found by scanning the text
//! for `test_` identifiers, and each is kept only if the module's parsed
//! rule heads declare it, so a name in a comment or a string is no test.
//!
//! Each file is read as Rego v0 or v1 by itself ([`rego_compat::version`]),
//! rewritten where regorus would read it otherwise than OPA
//! ([`rego_compat::normalise`]), and a run with any v0 file gets the
//! builtins Gatekeeper templates get (the deprecated ones and OPA's
//! `sprintf`), as `opa test --v0-compatible` has them.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};

use super::load::{compile_message, declares_rule};
use super::rego_compat::{self, Detected, RegoVersion, Rewrite};
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
    /// `--explain fails`: what regorus can tell of a failing test's
    /// evaluation.
    pub explanation: Option<String>,
    /// `--bench`: the test's cost.
    pub bench: Option<Bench>,
}

/// A benchmark of one test: evaluated `iterations` times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bench {
    pub iterations: u64,
    pub ns_per_op: f64,
}

/// Called after each test with (done, total).
#[derive(Clone)]
pub struct Progress(pub Arc<dyn Fn(usize, usize) + Send + Sync>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

/// How to run a set of tests.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Only tests whose `<package>.<name>` matches.
    pub filter: Option<regex::Regex>,
    /// Record which lines of the policies the tests evaluated.
    pub coverage: bool,
    /// Files that do not say which Rego they are are v0
    /// (`opa test --v0-compatible`); otherwise v1.
    pub v0_compatible: bool,
    /// The time limit of one test's evaluation; none when `None`.
    pub timeout: Option<Duration>,
    /// Tests evaluated at once, each thread on its own clone of the
    /// prepared engine; 0 or 1 is one at a time. Benchmarks run one at a
    /// time.
    pub parallel: usize,
    /// Explain each failing test.
    pub explain_fails: bool,
    /// Benchmark each passing test for this long.
    pub bench: Option<Duration>,
    pub progress: Option<Progress>,
}

/// How a file was read.
#[derive(Debug, Clone)]
pub struct FileMode {
    pub file: PathBuf,
    pub version: Detected,
    pub rewrites: Vec<Rewrite>,
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
    /// Every file, in load order, with the Rego it was read as.
    pub files: Vec<FileMode>,
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

/// The engine with every source added, the tests found, and how each file
/// was read.
struct Prepared {
    engine: Engine,
    cases: Vec<TestCase>,
    files: Vec<FileMode>,
}

fn prepare(sources: &[Source], options: &Options) -> Result<Prepared, LoadError> {
    let candidate = regex::Regex::new(r"(?m)^(test_[A-Za-z0-9_]*)")
        .map_err(|e| LoadError::Compile(format!("test discovery pattern: {e}")))?;
    let default = if options.v0_compatible {
        RegoVersion::V0
    } else {
        RegoVersion::V1
    };
    let mut engine = Engine::new();
    let mut cases = Vec::new();
    let mut files = Vec::new();
    for source in sources {
        let label = source.path.display().to_string();
        let version = rego_compat::detect(&label, &source.text, default);
        let normalised = rego_compat::normalise(&label, &source.text, version.version)
            .map_err(|e| LoadError::Compile(e.to_string()))?;
        engine.set_rego_v0(version.version == RegoVersion::V0);
        let package = engine
            .add_policy(label.clone(), normalised.text)
            .map_err(|e| {
                let mut message = compile_message(&e.to_string());
                if !options.v0_compatible && version.why.starts_with("the default") {
                    message.push_str(
                        "\n(this file has no `import rego.v1`, `if` or `contains`: if it is Rego v0, run with --v0-compatible)",
                    );
                }
                LoadError::Compile(message)
            })?;
        files.push(FileMode {
            file: source.path.clone(),
            version,
            rewrites: normalised.rewrites,
        });
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
    if files.iter().any(|f| f.version.version == RegoVersion::V0) {
        super::gatekeeper::builtins::register(&mut engine)
            .map_err(|e| LoadError::Compile(format!("registering v0 builtins: {e}")))?;
    }
    if let Some(limit) = options.timeout {
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit,
            check_interval: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN),
        });
    }
    engine.set_enable_coverage(options.coverage);
    Ok(Prepared {
        engine,
        cases,
        files,
    })
}

/// Like [`run`], with the [`Options`].
pub fn run_with(sources: &[Source], options: &Options) -> Result<Run, LoadError> {
    let Prepared {
        engine,
        cases,
        files,
    } = prepare(sources, options)?;
    let threads = if options.bench.is_some() {
        1
    } else {
        options.parallel.clamp(1, cases.len().max(1))
    };
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let total = cases.len();
    let worker = |mut engine: Engine| {
        let mut out = Vec::new();
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            let Some(case) = cases.get(index) else {
                break;
            };
            let result = run_case(&mut engine, case, &cases, sources, options);
            let finished = done.fetch_add(1, Ordering::Relaxed) + 1;
            if let Some(progress) = &options.progress {
                (progress.0)(finished, total);
            }
            out.push((index, result));
        }
        (out, engine)
    };
    let mut outputs = Vec::new();
    if threads == 1 {
        outputs.push(worker(engine));
    } else {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let engine = engine.clone();
                    scope.spawn(|| worker(engine))
                })
                .collect();
            for handle in handles {
                // A worker only panics on a bug in regorus; carry it on.
                match handle.join() {
                    Ok(output) => outputs.push(output),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
        });
    }
    let mut indexed: Vec<(usize, TestResult)> = Vec::with_capacity(total);
    let mut engines = Vec::with_capacity(outputs.len());
    for (results, engine) in outputs {
        indexed.extend(results);
        engines.push(engine);
    }
    indexed.sort_by_key(|(i, _)| *i);
    let results = indexed.into_iter().map(|(_, r)| r).collect();
    let coverage = if options.coverage {
        Some(coverage(&engines, sources)?)
    } else {
        None
    };
    Ok(Run {
        results,
        coverage,
        files,
    })
}

fn evaluate(engine: &mut Engine, case: &TestCase) -> Status {
    engine.set_input(Value::Undefined);
    match engine.eval_rule(format!("{}.{}", case.package, case.name)) {
        Ok(Value::Undefined | Value::Bool(false)) => Status::Fail,
        Ok(_) => Status::Pass,
        Err(e) => Status::Error(compile_message(&e.to_string())),
    }
}

fn run_case(
    engine: &mut Engine,
    case: &TestCase,
    all: &[TestCase],
    sources: &[Source],
    options: &Options,
) -> TestResult {
    let started = Instant::now();
    let status = evaluate(engine, case);
    let duration = started.elapsed();
    let explanation = (options.explain_fails && status != Status::Pass)
        .then(|| explain(engine, case, all, sources));
    let bench = match (options.bench, &status) {
        (Some(time), Status::Pass) => Some(bench(engine, case, time)),
        _ => None,
    };
    TestResult {
        case: case.clone(),
        status,
        duration,
        explanation,
        bench,
    }
}

/// Evaluates `case` until `time` has passed (at least once).
fn bench(engine: &mut Engine, case: &TestCase, time: Duration) -> Bench {
    let rule = format!("{}.{}", case.package, case.name);
    let started = Instant::now();
    let mut iterations = 0u64;
    while iterations == 0 || started.elapsed() < time {
        engine.set_input(Value::Undefined);
        let _ = engine.eval_rule(rule.clone());
        iterations += 1;
    }
    Bench {
        iterations,
        ns_per_op: started.elapsed().as_nanos() as f64 / iterations as f64,
    }
}

/// What regorus can tell of a failing test. It keeps no trace of an
/// evaluation as OPA's `--explain` shows it (only `trace()` notes, when
/// asked), so this evaluates the test again on a clone with coverage and
/// `print` gathering on: the lines the evaluation reached in each file,
/// the last line of the test itself that it reached (where it stopped
/// being true), and what it printed.
fn explain(engine: &Engine, case: &TestCase, all: &[TestCase], sources: &[Source]) -> String {
    let mut engine = engine.clone();
    engine.clear_coverage_data();
    engine.set_enable_coverage(true);
    engine.set_gather_prints(true);
    let _ = evaluate(&mut engine, case);
    let mut out = String::from(
        "explanation (regorus keeps no evaluation trace; this is the test's coverage):\n",
    );
    let file = case.file.display().to_string();
    // The test's own lines: from its head to the next test of its file.
    let end = all
        .iter()
        .filter(|c| c.file == case.file && c.line > case.line)
        .map(|c| c.line)
        .min()
        .unwrap_or(usize::MAX);
    if let Ok(report) = engine.get_coverage_report() {
        for f in &report.files {
            if f.covered.is_empty() {
                continue;
            }
            let lines: Vec<u32> = f.covered.iter().copied().collect();
            out.push_str(&format!("  reached {}: lines {}\n", f.path, ranges(&lines)));
            if f.path == file
                && let Some(last) = f
                    .covered
                    .iter()
                    .copied()
                    .filter(|&l| (l as usize) > case.line && (l as usize) < end)
                    .max()
            {
                // The line as written, not as rewritten for regorus.
                let written = sources
                    .iter()
                    .find(|s| s.path == case.file)
                    .map_or(f.code.as_str(), |s| s.text.as_str());
                let code = written.lines().nth(last as usize - 1).unwrap_or("").trim();
                out.push_str(&format!("  the test stopped at {file}:{last}: {code}\n"));
            }
        }
    }
    if let Ok(prints) = engine.take_prints() {
        for line in prints {
            out.push_str(&format!("  print: {line}\n"));
        }
    }
    out
}

/// `1-3,5,7-9`.
fn ranges(lines: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let start = lines[i];
        let mut end = start;
        while i + 1 < lines.len() && lines[i + 1] == end + 1 {
            i += 1;
            end = lines[i];
        }
        out.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    out.join(",")
}

/// Coverage of every engine that ran tests, merged: a line is covered when
/// any covered it.
fn coverage(engines: &[Engine], sources: &[Source]) -> Result<Coverage, LoadError> {
    use std::collections::{BTreeMap, BTreeSet};
    let mut merged: BTreeMap<String, (BTreeSet<u32>, BTreeSet<u32>)> = BTreeMap::new();
    for engine in engines {
        let report = engine
            .get_coverage_report()
            .map_err(|e| LoadError::Compile(format!("coverage report: {e}")))?;
        for f in report.files {
            if f.path.ends_with("_test.rego") {
                continue;
            }
            let entry = merged.entry(f.path).or_default();
            entry.0.extend(f.covered);
            entry.1.extend(f.not_covered);
        }
    }
    let mut files: Vec<FileCoverage> = merged
        .into_iter()
        .map(|(file, (covered, not_covered))| FileCoverage {
            file,
            covered: covered.len(),
            not_covered: not_covered.difference(&covered).copied().collect(),
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
    Ok(Coverage { files })
}
