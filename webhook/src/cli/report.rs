//! Rendering results for people (`pretty`), programs (`json`) and CI
//! systems (`junit`, the JUnit XML that Jenkins, GitLab and GitHub read).
//! `tollgate test` and `tollgate verify` both report through here.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::time::Duration;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesText, Event};
use serde_json::json;

use crate::policy::gatekeeper::suite::{CaseOutcome, CaseResult};
use crate::policy::testing::{Bench, Coverage, Run, Status, percent};

/// One test case, whatever ran it.
#[derive(Debug, Clone)]
pub struct Case {
    /// The file that defines it.
    pub file: String,
    pub line: Option<usize>,
    /// The Rego package, or the suite test's name (JUnit's classname).
    pub group: String,
    pub name: String,
    pub outcome: CaseOutcome,
    pub duration: Duration,
    /// `tollgate test --bench`.
    pub bench: Option<Bench>,
}

/// Cases and, for Rego tests, coverage.
#[derive(Debug, Default)]
pub struct Report {
    pub cases: Vec<Case>,
    pub coverage: Option<Coverage>,
}

impl Report {
    fn count(&self, f: impl Fn(&CaseOutcome) -> bool) -> usize {
        self.cases.iter().filter(|c| f(&c.outcome)).count()
    }
    pub fn passed(&self) -> usize {
        self.count(|o| *o == CaseOutcome::Pass)
    }
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, CaseOutcome::Fail(_)))
    }
    pub fn errors(&self) -> usize {
        self.count(|o| matches!(o, CaseOutcome::Error(_)))
    }
    pub fn all_passed(&self) -> bool {
        self.passed() == self.cases.len()
    }
}

impl From<Run> for Report {
    fn from(run: Run) -> Report {
        Report {
            cases: run
                .results
                .into_iter()
                .map(|r| Case {
                    file: r.case.file.display().to_string(),
                    line: Some(r.case.line),
                    group: r.case.package,
                    name: r.case.name,
                    outcome: match (r.status, r.explanation) {
                        (Status::Pass, _) => CaseOutcome::Pass,
                        (Status::Fail, explanation) => CaseOutcome::Fail(format!(
                            "test rule was undefined or false{}",
                            explanation.map(|e| format!("\n{e}")).unwrap_or_default()
                        )),
                        (Status::Error(e), explanation) => CaseOutcome::Error(format!(
                            "{e}{}",
                            explanation.map(|e| format!("\n{e}")).unwrap_or_default()
                        )),
                    },
                    duration: r.duration,
                    bench: r.bench,
                })
                .collect(),
            coverage: run.coverage,
        }
    }
}

impl From<Vec<CaseResult>> for Report {
    fn from(results: Vec<CaseResult>) -> Report {
        Report {
            cases: results
                .into_iter()
                .map(|r| Case {
                    file: r.suite.display().to_string(),
                    line: None,
                    group: r.test,
                    name: r.case,
                    outcome: r.outcome,
                    duration: r.duration,
                    bench: None,
                })
                .collect(),
            coverage: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Pretty,
    Json,
    Junit,
}

pub fn render(run: &Report, format: Format) -> String {
    match format {
        Format::Pretty => pretty(run),
        Format::Json => json(run),
        Format::Junit => junit(run),
    }
}

fn label(outcome: &CaseOutcome) -> &'static str {
    match outcome {
        CaseOutcome::Pass => "PASS",
        CaseOutcome::Fail(_) => "FAIL",
        CaseOutcome::Error(_) => "ERROR",
    }
}

fn message(outcome: &CaseOutcome) -> Option<&str> {
    match outcome {
        CaseOutcome::Pass => None,
        CaseOutcome::Fail(m) | CaseOutcome::Error(m) => Some(m),
    }
}

fn location(c: &Case) -> String {
    match c.line {
        Some(line) => format!("{}:{line}", c.file),
        None => c.file.clone(),
    }
}

fn ms(r: &Case) -> f64 {
    r.duration.as_secs_f64() * 1000.0
}

fn pretty(run: &Report) -> String {
    let mut out = String::new();
    for c in &run.cases {
        out.push_str(&format!(
            "{} {}: {}/{} ({:.2} ms)",
            label(&c.outcome),
            location(c),
            c.group,
            c.name,
            ms(c)
        ));
        if let Some(b) = &c.bench {
            out.push_str(&format!(
                "  {:.0} ns/op ({} runs)",
                b.ns_per_op, b.iterations
            ));
        }
        out.push('\n');
        if let Some(m) = message(&c.outcome) {
            for line in m.lines() {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out.push_str(&format!(
        "{} tests: {} passed, {} failed, {} errors\n",
        run.cases.len(),
        run.passed(),
        run.failed(),
        run.errors()
    ));
    if let Some(coverage) = &run.coverage {
        out.push_str(&pretty_coverage(coverage));
    }
    out
}

fn pretty_coverage(coverage: &Coverage) -> String {
    let mut out = String::from("coverage:\n");
    for f in &coverage.files {
        out.push_str(&format!(
            "  {:6.1}%  {:>4}/{:<4} {}",
            percent(f.covered, f.lines()),
            f.covered,
            f.lines(),
            f.file
        ));
        if !f.not_covered.is_empty() {
            let lines: Vec<String> = f.not_covered.iter().map(u32::to_string).collect();
            out.push_str(&format!("  (not covered: {})", lines.join(",")));
        }
        out.push('\n');
    }
    out.push_str(&format!("  {:6.1}%  total\n", coverage.percent()));
    out
}

fn json(run: &Report) -> String {
    let results: Vec<_> = run
        .cases
        .iter()
        .map(|c| {
            let mut v = json!({
                "file": c.file,
                "line": c.line,
                "group": c.group,
                "name": c.name,
                "status": label(&c.outcome).to_lowercase(),
                "duration_ms": ms(c),
            });
            if let Some(m) = message(&c.outcome) {
                v["message"] = json!(m);
            }
            if let Some(b) = &c.bench {
                v["ns_per_op"] = json!(b.ns_per_op);
                v["iterations"] = json!(b.iterations);
            }
            v
        })
        .collect();
    let mut doc = json!({
        "results": results,
        "summary": {
            "total": run.cases.len(),
            "passed": run.passed(),
            "failed": run.failed(),
            "errors": run.errors(),
        },
    });
    if let Some(c) = &run.coverage {
        doc["coverage"] = json!({
            "percent": c.percent(),
            "files": c.files.iter().map(|f| json!({
                "file": f.file,
                "covered": f.covered,
                "lines": f.lines(),
                "percent": percent(f.covered, f.lines()),
                "not_covered": f.not_covered,
            })).collect::<Vec<_>>(),
        });
    }
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

/// One `<testsuite>` per file, one `<testcase>` per test; a failure is a
/// `<failure>`, an evaluation error an `<error>` with the message as text.
fn junit(run: &Report) -> String {
    let mut by_file: BTreeMap<String, Vec<&Case>> = BTreeMap::new();
    for c in &run.cases {
        by_file.entry(c.file.clone()).or_default().push(c);
    }
    let secs = |rs: &[&Case]| rs.iter().map(|r| r.duration.as_secs_f64()).sum::<f64>();
    let all: Vec<&Case> = run.cases.iter().collect();
    let mut w = Writer::new_with_indent(Cursor::new(Vec::new()), b' ', 2);
    let result: std::io::Result<()> = (|| {
        w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
        w.create_element("testsuites")
            .with_attributes([
                ("name", "tollgate test"),
                ("tests", run.cases.len().to_string().as_str()),
                ("failures", run.failed().to_string().as_str()),
                ("errors", run.errors().to_string().as_str()),
                ("time", format!("{:.6}", secs(&all)).as_str()),
            ])
            .write_inner_content(|w| {
                for (file, results) in &by_file {
                    let failures = results
                        .iter()
                        .filter(|r| matches!(r.outcome, CaseOutcome::Fail(_)))
                        .count();
                    let errors = results
                        .iter()
                        .filter(|r| matches!(r.outcome, CaseOutcome::Error(_)))
                        .count();
                    w.create_element("testsuite")
                        .with_attributes([
                            ("name", file.as_str()),
                            ("tests", results.len().to_string().as_str()),
                            ("failures", failures.to_string().as_str()),
                            ("errors", errors.to_string().as_str()),
                            ("skipped", "0"),
                            ("time", format!("{:.6}", secs(results)).as_str()),
                        ])
                        .write_inner_content(|w| {
                            for r in results {
                                let line = r.line.map(|l| l.to_string()).unwrap_or_default();
                                let mut attributes = vec![
                                    ("name", r.name.as_str()),
                                    ("classname", r.group.as_str()),
                                    ("file", file.as_str()),
                                ];
                                if r.line.is_some() {
                                    attributes.push(("line", line.as_str()));
                                }
                                let time = format!("{:.6}", r.duration.as_secs_f64());
                                attributes.push(("time", time.as_str()));
                                let case = w.create_element("testcase").with_attributes(attributes);
                                let (tag, text) = match &r.outcome {
                                    CaseOutcome::Pass => {
                                        case.write_empty()?;
                                        continue;
                                    }
                                    CaseOutcome::Fail(m) => ("failure", m),
                                    CaseOutcome::Error(m) => ("error", m),
                                };
                                let first = text.lines().next().unwrap_or("");
                                case.write_inner_content(|w| {
                                    w.create_element(tag)
                                        .with_attributes([("message", first), ("type", tag)])
                                        .write_text_content(BytesText::new(text))?;
                                    Ok(())
                                })?;
                            }
                            Ok(())
                        })?;
                }
                Ok(())
            })?;
        Ok(())
    })();
    if let Err(e) = result {
        // Writing into memory does not fail; say so loudly if it ever does.
        return format!("<!-- junit report failed: {e} -->\n");
    }
    let mut text = String::from_utf8_lossy(&w.into_inner().into_inner()).into_owned();
    text.push('\n');
    text
}
