//! `tollgate verify`: run Gatekeeper Suite files unchanged, as
//! `gator verify` does.

use std::path::{Path, PathBuf};

use crate::cli::exit;
use crate::cli::report::{Format, Report, render};
use crate::policy::gatekeeper::suite;

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

fn suite_files(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_file() {
        out.push(path.to_owned());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    entries.sort();
    for entry in entries {
        if entry.is_dir() {
            suite_files(&entry, out)?;
        } else if entry.extension().is_some_and(|e| e == "yaml" || e == "yml")
            && std::fs::read_to_string(&entry).is_ok_and(|t| t.contains("kind: Suite"))
        {
            out.push(entry);
        }
    }
    Ok(())
}

pub fn run(args: Args) -> u8 {
    let filter = match args.run.as_deref().map(regex::Regex::new).transpose() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("tollgate verify: --run: {e}");
            return exit::BROKEN;
        }
    };
    let mut files = Vec::new();
    for path in &args.paths {
        if let Err(e) = suite_files(path, &mut files) {
            eprintln!("tollgate verify: {}: {e}", path.display());
            return exit::BROKEN;
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
