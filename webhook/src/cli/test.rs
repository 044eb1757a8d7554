//! `tollgate test`: run the `test_*` rules of Rego files, as `opa test` does.

use std::path::PathBuf;

use crate::cli::report::{Format, Report, render};
use crate::cli::{exit, run_filter};
use crate::policy::sources_with_tests_from_dirs;
use crate::policy::testing::{Options, run_with};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files or directories (searched recursively for .rego files).
    #[arg(default_value = ".")]
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "pretty")]
    pub format: Format,
    /// Report line coverage of the policies (test files excluded).
    #[arg(long)]
    pub coverage: bool,
    /// Fail when total coverage is below this percentage (implies --coverage).
    #[arg(long, value_name = "PERCENT")]
    pub threshold: Option<f64>,
    /// Run only tests whose `data.<package>.<name>` matches this regex.
    #[arg(long, value_name = "REGEX")]
    pub run: Option<String>,
}

pub fn run(args: Args) -> u8 {
    let filter = match run_filter(args.run.as_deref(), "test") {
        Ok(f) => f,
        Err(code) => return code,
    };
    let sources = match sources_with_tests_from_dirs(&args.paths) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("tollgate test: {e}");
            return exit::BROKEN;
        }
    };
    let options = Options {
        filter,
        coverage: args.coverage || args.threshold.is_some(),
    };
    let run = match run_with(&sources, &options) {
        Ok(run) => run,
        Err(e) => {
            eprintln!("tollgate test: {e}");
            return exit::BROKEN;
        }
    };
    let report = Report::from(run);
    print!("{}", render(&report, args.format));
    let mut code = if report.all_passed() {
        exit::OK
    } else {
        exit::FAILED
    };
    if let (Some(threshold), Some(coverage)) = (args.threshold, &report.coverage) {
        let total = coverage.percent();
        if total < threshold {
            eprintln!("tollgate test: coverage {total:.1}% is below the threshold of {threshold}%");
            code = exit::FAILED;
        }
    }
    if report.cases.is_empty() {
        eprintln!("tollgate test: no test_* rules found");
    }
    code
}
