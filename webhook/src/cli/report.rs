//! Rendering test results for people (`pretty`), programs (`json`) and CI
//! systems (`junit`, the JUnit XML that Jenkins, GitLab and GitHub read).

use std::collections::BTreeMap;
use std::io::Cursor;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesText, Event};
use serde_json::json;

use crate::policy::testing::{Coverage, Run, Status, TestResult, percent};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Pretty,
    Json,
    Junit,
}

pub fn render(run: &Run, format: Format) -> String {
    match format {
        Format::Pretty => pretty(run),
        Format::Json => json(run),
        Format::Junit => junit(run),
    }
}

fn label(status: &Status) -> &'static str {
    match status {
        Status::Pass => "PASS",
        Status::Fail => "FAIL",
        Status::Error(_) => "ERROR",
    }
}

fn ms(r: &TestResult) -> f64 {
    r.duration.as_secs_f64() * 1000.0
}

fn pretty(run: &Run) -> String {
    let mut out = String::new();
    for r in &run.results {
        out.push_str(&format!(
            "{} {}:{}: {}.{} ({:.2} ms)\n",
            label(&r.status),
            r.case.file.display(),
            r.case.line,
            r.case.package,
            r.case.name,
            ms(r)
        ));
        if let Status::Error(e) = &r.status {
            for line in e.lines() {
                out.push_str(&format!("    {line}\n"));
            }
        }
    }
    out.push_str(&format!(
        "{} tests: {} passed, {} failed, {} errors\n",
        run.results.len(),
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

fn json(run: &Run) -> String {
    let results: Vec<_> = run
        .results
        .iter()
        .map(|r| {
            let mut v = json!({
                "file": r.case.file.display().to_string(),
                "line": r.case.line,
                "package": r.case.package,
                "name": r.case.name,
                "status": label(&r.status).to_lowercase(),
                "duration_ms": ms(r),
            });
            if let Status::Error(e) = &r.status {
                v["error"] = json!(e);
            }
            v
        })
        .collect();
    let mut doc = json!({
        "results": results,
        "summary": {
            "total": run.results.len(),
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
fn junit(run: &Run) -> String {
    let mut by_file: BTreeMap<String, Vec<&TestResult>> = BTreeMap::new();
    for r in &run.results {
        by_file
            .entry(r.case.file.display().to_string())
            .or_default()
            .push(r);
    }
    let secs = |rs: &[&TestResult]| rs.iter().map(|r| r.duration.as_secs_f64()).sum::<f64>();
    let all: Vec<&TestResult> = run.results.iter().collect();
    let mut w = Writer::new_with_indent(Cursor::new(Vec::new()), b' ', 2);
    let result: std::io::Result<()> = (|| {
        w.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
        w.create_element("testsuites")
            .with_attributes([
                ("name", "tollgate test"),
                ("tests", run.results.len().to_string().as_str()),
                ("failures", run.failed().to_string().as_str()),
                ("errors", run.errors().to_string().as_str()),
                ("time", format!("{:.6}", secs(&all)).as_str()),
            ])
            .write_inner_content(|w| {
                for (file, results) in &by_file {
                    let failures = results.iter().filter(|r| r.status == Status::Fail).count();
                    let errors = results
                        .iter()
                        .filter(|r| matches!(r.status, Status::Error(_)))
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
                                let case = w.create_element("testcase").with_attributes([
                                    ("name", r.case.name.as_str()),
                                    ("classname", r.case.package.as_str()),
                                    ("file", file.as_str()),
                                    ("line", r.case.line.to_string().as_str()),
                                    ("time", format!("{:.6}", r.duration.as_secs_f64()).as_str()),
                                ]);
                                match &r.status {
                                    Status::Pass => {
                                        case.write_empty()?;
                                    }
                                    Status::Fail => {
                                        case.write_inner_content(|w| {
                                            w.create_element("failure")
                                                .with_attributes([
                                                    ("message", "test rule was undefined or false"),
                                                    ("type", "fail"),
                                                ])
                                                .write_empty()?;
                                            Ok(())
                                        })?;
                                    }
                                    Status::Error(e) => {
                                        let first = e.lines().next().unwrap_or("");
                                        case.write_inner_content(|w| {
                                            w.create_element("error")
                                                .with_attributes([
                                                    ("message", first),
                                                    ("type", "error"),
                                                ])
                                                .write_text_content(BytesText::new(e))?;
                                            Ok(())
                                        })?;
                                    }
                                }
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
