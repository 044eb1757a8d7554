//! `tollgate verify`: run Gatekeeper Suite files unchanged, as
//! `gator verify` does.

use std::path::{Path, PathBuf};

use crate::cli::report::{Format, Report, render};
use crate::cli::{exit, run_filter};
use crate::policy::gatekeeper::suite;
use crate::walk::{files as files_under, has_extension};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Suite files, or directories searched recursively for YAML files
    /// holding a `kind: Suite`.
    #[arg(default_value = ".")]
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "pretty")]
    pub format: Format,
    /// Run only cases whose `<test>/<case>` matches this regex.
    #[arg(long, value_name = "REGEX")]
    pub run: Option<String>,
}

fn is_suite_file(path: &Path) -> bool {
    has_extension(path, &["yaml", "yml"])
        && std::fs::read_to_string(path).is_ok_and(|t| t.contains("kind: Suite"))
}

pub fn run(args: Args) -> u8 {
    let filter = match run_filter(args.run.as_deref(), "verify") {
        Ok(f) => f,
        Err(code) => return code,
    };
    let mut files = Vec::new();
    for path in &args.paths {
        match files_under(path, &is_suite_file) {
            Ok(found) => files.extend(found),
            Err(e) => {
                eprintln!("tollgate verify: {}: {e}", path.display());
                return exit::BROKEN;
            }
        }
    }
    let mut results = Vec::new();
    for file in &files {
        match suite::run(file, filter.as_ref()) {
            Ok(r) => results.extend(r),
            Err(e) => {
                eprintln!("tollgate verify: {e}");
                return exit::BROKEN;
            }
        }
    }
    let report = Report::from(results);
    print!("{}", render(&report, args.format));
    if report.cases.is_empty() {
        eprintln!("tollgate verify: no Suite cases found");
        return exit::FAILED;
    }
    if report.all_passed() {
        exit::OK
    } else {
        exit::FAILED
    }
}
