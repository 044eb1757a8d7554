//! How the policy engine scales with what policy authors load, without
//! HTTP (the HTTP figures are webhook.sh's):
//!
//! - `tollgate test` on the bundled library: discovery, compilation and
//!   every test, in-process and as the release binary;
//! - one Pod evaluated against 30 Gatekeeper constraints (30 templates,
//!   each its own engine), beside the bundled native set;
//! - a Deployment through `/mutate` and then `/validate` (decode, decide,
//!   encode, and applying the patch in between, as the apiserver does);
//! - the sweep: one Pod review against N loaded policies (`--sweep`, default
//!   1, 10, 50, 100), N native Rego policies (copies of the bundled
//!   workload policies, each in its own package) and N Gatekeeper
//!   templates (the fixtures' templates, each with a constraint matching
//!   Pods), every one of them evaluated: compile time and µs per review.
//!
//! ```text
//! cargo run --release -p tollgate-benches --bin policy-scale -- [--runs 15] [--sweep 1,10,50,100] [--only-sweep]
//! policy-scale write --kind native|templates --count N --dir DIR   # the set the sweep loads, as files
//! ```
//!
//! `benches/policy-scale.sh` serves each generated set with `tollgate serve`
//! and measures it over HTTPS.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tollgate_benches::sweep::points;
use tollgate_webhook::admission::{Admission, Endpoint};
use tollgate_webhook::config::Config;
use tollgate_webhook::metrics::Metrics;
use tollgate_webhook::policy::testing::{Options, run_with};
use tollgate_webhook::policy::{PolicySet, Source, bundled_sources, sources_with_tests_from_dirs};
use tollgate_webhook::review::Request;

const COMPLIANT: &[u8] = include_bytes!("../../../webhook/testdata/pod-compliant.json");
const DEPLOYMENT: &[u8] = include_bytes!("../../../webhook/testdata/deployment-compliant.json");

#[derive(Parser)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Runs (or batches) per row; the median is reported.
    #[arg(long, default_value_t = 15)]
    runs: usize,
    /// Length of one batch of request evaluations, in milliseconds.
    #[arg(long, default_value_t = 500)]
    batch_ms: u64,
    /// Policy counts of the sweep, comma-separated (empty: no sweep).
    #[arg(long, default_value = "1,10,50,100")]
    sweep: String,
    /// Only the sweep.
    #[arg(long)]
    only_sweep: bool,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Writes the policy set the sweep loads for N into DIR (for
    /// `tollgate serve` with `policies.dirs: [DIR]`).
    Write {
        #[arg(long)]
        kind: Kind,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Kind {
    /// Copies of the bundled workload policies (and their library).
    Native,
    /// Gatekeeper ConstraintTemplates, each with one constraint.
    Templates,
}

/// `n` native policies: the bundled policies that apply to Pods, cycled,
/// each copy in its own package (`tollgate.<name>_n<i>`), plus the
/// library they import.
fn native_policies(n: usize) -> anyhow::Result<Vec<Source>> {
    let bundled = bundled_sources();
    let (lib, policies): (Vec<Source>, Vec<Source>) = bundled
        .into_iter()
        .partition(|s| s.path.components().any(|c| c.as_os_str() == "lib"));
    // service_type matches only Services.
    let bases: Vec<(String, String)> = policies
        .iter()
        .filter_map(|s| {
            let name = s.path.file_stem()?.to_str()?.to_owned();
            (name != "service_type").then(|| (name, s.text.clone()))
        })
        .collect();
    anyhow::ensure!(!bases.is_empty(), "no bundled workload policies");
    let mut out = lib;
    for i in 0..n {
        let (name, text) = &bases[i % bases.len()];
        let package = format!("package tollgate.{name}\n");
        anyhow::ensure!(
            text.contains(&package),
            "policies/{name}.rego does not declare {package:?}"
        );
        out.push(Source {
            path: format!("p{i:03}_{name}.rego").into(),
            text: text.replace(&package, &format!("package tollgate.{name}_n{i}\n")),
        });
    }
    Ok(out)
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn median(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(|a, b| a.total_cmp(b));
    (xs[xs.len() / 2], xs[0], xs[xs.len() - 1])
}

/// µs per call of `f`, median of `runs` batches of `batch`.
fn per_op(runs: usize, batch: Duration, mut f: impl FnMut()) -> (f64, f64, f64) {
    let warm = Instant::now();
    while warm.elapsed() < batch {
        f();
    }
    let mut samples = Vec::new();
    for _ in 0..runs {
        let (start, mut n) = (Instant::now(), 0u64);
        while start.elapsed() < batch {
            f();
            n += 1;
        }
        samples.push(start.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    median(samples)
}

/// `n` templates: the fixtures' templates renamed apart (kind and package),
/// each with one constraint that matches Pods.
fn templates(n: usize) -> anyhow::Result<Vec<Source>> {
    let dir = root().join("tests/fixtures/gatekeeper");
    let bases = [
        "requiredlabels",
        "allowedrepos",
        "containerlimits",
        "privileged",
        "hostnamespaces",
        "immutableteam",
    ];
    let mut out = Vec::new();
    for i in 0..n {
        let base = bases[i % bases.len()];
        let template = std::fs::read_to_string(dir.join(base).join("template.yaml"))?;
        let constraint = std::fs::read_to_string(dir.join(base).join("constraint.yaml"))?;
        let kind_line = template
            .lines()
            .find(|l| l.trim_start().starts_with("kind: K8s"))
            .context("no kind")?
            .trim()
            .trim_start_matches("kind: ")
            .to_owned();
        let package_line = template
            .lines()
            .find(|l| l.trim_start().starts_with("package k8s"))
            .context("no package")?
            .trim()
            .trim_start_matches("package ")
            .to_owned();
        let (kind, package) = (format!("{kind_line}N{i}"), format!("{package_line}n{i}"));
        let template = template
            .replace(&format!("kind: {kind_line}"), &format!("kind: {kind}"))
            .replace(
                &format!("package {package_line}"),
                &format!("package {package}"),
            )
            .replace("name: k8s", &format!("name: n{i}k8s"));
        // Every constraint matches Pods, so all 30 are evaluated.
        let params = constraint
            .split("parameters:")
            .nth(1)
            .map(|p| format!("  parameters:{p}"))
            .unwrap_or_default();
        let constraint = format!(
            "apiVersion: constraints.gatekeeper.sh/v1beta1\nkind: {kind}\nmetadata:\n  name: c{i}\nspec:\n  match:\n    kinds:\n      - apiGroups: [\"\"]\n        kinds: [\"Pod\"]\n{params}"
        );
        out.push(Source {
            path: format!("t{i}.yaml").into(),
            text: format!("{template}\n---\n{constraint}"),
        });
    }
    Ok(out)
}

fn policy_set(kind: Kind, n: usize) -> anyhow::Result<Vec<Source>> {
    match kind {
        Kind::Native => native_policies(n),
        Kind::Templates => templates(n),
    }
}

/// One Pod review against N native policies and against N templates: the
/// compile time (median of `runs`) and µs per review.
fn sweep(cli: &Cli, batch: Duration) -> anyhow::Result<()> {
    let review = Request::decode(COMPLIANT)?;
    let config = Config::default();
    println!(
        "\nOne Pod review (webhook/testdata/pod-compliant.json) against N loaded policies, in-process, one thread; median of {} batches of {} ms:\n",
        cli.runs, cli.batch_ms
    );
    println!(
        "| kind | N | evaluated | compile ms | µs per review | min–max µs | µs per policy | × N=1 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let bundled = PolicySet::compile(&bundled_sources(), &config.policies, "bundled")?;
    let evaluated = bundled.evaluate(&review.document, "Pod").evaluated;
    let (m, lo, hi) = per_op(cli.runs, batch, || {
        black_box(bundled.evaluate(&review.document, "Pod"));
    });
    println!(
        "| the bundled library (reference) | {} | {evaluated} | – | {m:.1} | {lo:.1}–{hi:.1} | {:.1} | – |",
        bundled.policies().len(),
        m / evaluated.max(1) as f64
    );
    for kind in [Kind::Native, Kind::Templates] {
        let mut first = None;
        for n in points::<usize>(&cli.sweep)? {
            let sources = policy_set(kind, n)?;
            let mut compile = Vec::new();
            let mut set = None;
            for _ in 0..cli.runs.clamp(1, 5) {
                let start = Instant::now();
                set = Some(PolicySet::compile(&sources, &config.policies, "sweep")?);
                compile.push(start.elapsed().as_secs_f64() * 1e3);
            }
            let set = set.context("no compile")?;
            let (compile_ms, _, _) = median(compile);
            let evaluated = set.evaluate(&review.document, "Pod").evaluated;
            anyhow::ensure!(
                evaluated == n,
                "{kind:?} {n}: {evaluated} policies evaluated, expected all {n}"
            );
            let (m, lo, hi) = per_op(cli.runs, batch, || {
                black_box(set.evaluate(&review.document, "Pod"));
            });
            let base = *first.get_or_insert(m);
            println!(
                "| {} | {n} | {evaluated} | {compile_ms:.1} | {m:.1} | {lo:.1}–{hi:.1} | {:.1} | {:.1}× |",
                match kind {
                    Kind::Native => "native Rego",
                    Kind::Templates => "Gatekeeper templates",
                },
                m / n as f64,
                m / base
            );
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // As `tollgate` does: no backtrace for each error regorus builds.
    tollgate_webhook::policy::quiet_library_backtraces();
    let cli = Cli::parse();
    if let Some(Command::Write { kind, count, dir }) = &cli.command {
        std::fs::create_dir_all(dir)?;
        for source in policy_set(*kind, *count)? {
            let path = dir.join(
                source
                    .path
                    .file_name()
                    .context("a generated source has no file name")?,
            );
            std::fs::write(&path, &source.text)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(());
    }
    let batch = Duration::from_millis(cli.batch_ms);
    if cli.only_sweep {
        return sweep(&cli, batch);
    }
    println!("| measurement | median | min–max |");
    println!("|---|---:|---:|");

    // tollgate test, in-process.
    let sources = sources_with_tests_from_dirs(&[root().join("policies")])?;
    let mut ms = Vec::new();
    let mut tests = 0;
    for _ in 0..cli.runs {
        let start = Instant::now();
        let run = run_with(
            &sources,
            &Options {
                filter: None,
                coverage: true,
                ..Options::default()
            },
        )?;
        tests = run.results.len();
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let (m, lo, hi) = median(ms);
    println!(
        "| `tollgate test policies --coverage` in-process ({tests} tests) | {m:.1} ms | {lo:.1}–{hi:.1} ms |"
    );

    // tollgate test, the release binary (process start included).
    let bin = root().join("target/release/tollgate");
    if bin.exists() {
        let mut ms = Vec::new();
        for _ in 0..cli.runs {
            let start = Instant::now();
            let out = std::process::Command::new(&bin)
                .args(["test", "policies", "--coverage", "--threshold", "90"])
                .current_dir(root())
                .output()?;
            anyhow::ensure!(out.status.success(), "tollgate test failed");
            ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
        let (m, lo, hi) = median(ms);
        println!(
            "| `tollgate test policies --coverage --threshold 90`, release binary | {m:.1} ms | {lo:.1}–{hi:.1} ms |"
        );
    }

    let review = Request::decode(COMPLIANT)?;
    let config = Config::default();
    let native = PolicySet::compile(&bundled_sources(), &config.policies, "bundled")?;
    let (m, lo, hi) = per_op(cli.runs, batch, || {
        black_box(native.evaluate(&review.document, "Pod"));
    });
    println!(
        "| Pod vs the bundled library ({} policies) | {m:.1} µs | {lo:.1}–{hi:.1} µs |",
        native.policies().len()
    );

    let start = Instant::now();
    let templates = PolicySet::compile(&templates(30)?, &config.policies, "30 templates")?;
    let compile_ms = start.elapsed().as_secs_f64() * 1e3;
    let evaluated = templates.evaluate(&review.document, "Pod").evaluated;
    let (m, lo, hi) = per_op(cli.runs, batch, || {
        black_box(templates.evaluate(&review.document, "Pod"));
    });
    println!(
        "| Pod vs 30 Gatekeeper constraints ({evaluated} evaluated; compiled in {compile_ms:.0} ms) | {m:.1} µs ({:.1} µs/constraint) | {lo:.1}–{hi:.1} µs |",
        m / evaluated.max(1) as f64
    );

    // A Deployment through /mutate, the patch applied, then /validate.
    // The same Deployment every iteration: a fresh evaluation each time,
    // not the decision cache's answer.
    let mut uncached = config.clone();
    uncached.policies.decision_cache_entries = 0;
    let admission = Admission::new(
        PolicySet::compile(&bundled_sources(), &config.policies, "bundled")?,
        &uncached,
        Arc::new(Metrics::new()),
    )?;
    let text = std::str::from_utf8(DEPLOYMENT)?;
    let mut check = None;
    let (m, lo, hi) = per_op(cli.runs, batch, || {
        let request = Request::decode(text.as_bytes()).expect("valid review");
        let mutated = admission.decide(Endpoint::Mutate, &request, None);
        let mut review: serde_json::Value = serde_json::from_str(text).expect("json");
        if let Some(patch) = &mutated.patch {
            let patch: json_patch::Patch = serde_json::from_slice(patch).expect("patch");
            json_patch::patch(&mut review["request"]["object"], &patch).expect("applies");
        }
        let body = mutated.encode();
        let request = Request::decode(review.to_string().as_bytes()).expect("valid review");
        let validated = admission.decide(Endpoint::Validate, &request, None);
        check = Some((mutated.patch.is_some(), validated.allowed));
        black_box((body, validated.encode()));
    });
    let (patched, allowed) = check.context("no run")?;
    anyhow::ensure!(
        patched && allowed,
        "the Deployment was not patched and allowed"
    );
    println!(
        "| Deployment: /mutate (patch) then /validate (allowed), decode to encode | {m:.1} µs | {lo:.1}–{hi:.1} µs |"
    );
    if !points::<usize>(&cli.sweep)?.is_empty() {
        sweep(&cli, batch)?;
    }
    Ok(())
}
