//! `tollgate test`: run the `test_*` rules of Rego files, as `opa test` does.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::cli::report::{Format, Report, render};
use crate::cli::{exit, run_filter};
use crate::policy::rego_compat::Rewrite;
use crate::policy::sources_with_tests_from_dirs;
use crate::policy::testing::{Options, Progress, run_with};

/// How long `--bench` evaluates each test (Go's default benchtime, which
/// `opa test --bench` uses).
const BENCH_TIME: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Explain {
    /// Explain failing tests.
    Fails,
}

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
    /// Read files that do not say which Rego they are (no `import rego.v1`,
    /// no `if` or `contains`) as Rego v0, as `opa test --v0-compatible`.
    #[arg(long)]
    pub v0_compatible: bool,
    /// Say which Rego each file was read as, and what was rewritten (on
    /// standard error).
    #[arg(long, short)]
    pub verbose: bool,
    /// Benchmark each passing test (about a second each, one at a time) and
    /// report ns/op.
    #[arg(long)]
    pub bench: bool,
    /// Fail (exit 1) when no test ran.
    #[arg(long)]
    pub fail_on_empty: bool,
    /// The time limit of each test's evaluation, like `5s`, `500ms` or
    /// `1m`; `0` for none. Default 5s, 30s with --bench (as `opa test`).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Explain failing tests: the lines their evaluation reached, where the
    /// test stopped, and what it printed.
    #[arg(long, value_enum, value_name = "fails")]
    pub explain: Option<Explain>,
    /// Tests evaluated at once (default: the number of CPUs; benchmarks
    /// run one at a time).
    #[arg(long, short, value_name = "N")]
    pub parallel: Option<usize>,
}

/// `500ms`, `5s`, `1m`, or `0`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, like 5s or 500ms"))?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        _ => return Err(format!("{text:?}: the unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

fn describe(rewrite: &Rewrite) -> String {
    match rewrite {
        Rewrite::SeveralBodies { line, head_line } => format!(
            "line {line}: a further body of the rule on line {head_line}, read as a rule of its own"
        ),
        Rewrite::StatementEnd { line } => {
            format!(
                "line {line}: the expression ends at the newline (the next line starts with `(`)"
            )
        }
        Rewrite::NegatedCall { line } => format!(
            "line {line}: what OPA binds before a negation (a call's arguments, an operator's operands) is bound before the `not`"
        ),
    }
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
    let timeout = match args.timeout {
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        None if args.bench => Some(Duration::from_secs(30)),
        None => Some(Duration::from_secs(5)),
    };
    let terminal = std::io::stderr().is_terminal();
    let progress = terminal.then(|| {
        Progress(Arc::new(|done: usize, total: usize| {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\rtollgate test: {done}/{total} tests");
            if done == total {
                let _ = write!(err, "\r\x1b[K");
            }
            let _ = err.flush();
        }))
    });
    let options = Options {
        filter,
        coverage: args.coverage || args.threshold.is_some(),
        v0_compatible: args.v0_compatible,
        timeout,
        parallel: args
            .parallel
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        explain_fails: args.explain == Some(Explain::Fails),
        bench: args.bench.then_some(BENCH_TIME),
        progress,
    };
    let run = match run_with(&sources, &options) {
        Ok(run) => run,
        Err(e) => {
            eprintln!("tollgate test: {e}");
            return exit::BROKEN;
        }
    };
    if args.verbose {
        for file in &run.files {
            eprintln!(
                "tollgate test: {}: Rego {} ({})",
                file.file.display(),
                file.version.version,
                file.version.why
            );
            for rewrite in &file.rewrites {
                eprintln!("    {}", describe(rewrite));
            }
        }
    }
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
        if args.fail_on_empty {
            code = exit::FAILED;
        }
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_opa_writes_them() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5").unwrap_err().contains("unit"));
        assert!(parse_duration("5h").is_err());
    }
}
