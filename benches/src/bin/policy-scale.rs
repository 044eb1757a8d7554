//! How the policy engine scales with what policy authors load, without
//! HTTP (the HTTP figures are webhook.sh's):
//!
//! - `tollgate test` on the bundled library: discovery, compilation and
//!   every test, in-process and as the release binary;
//! - one Pod evaluated against 30 Gatekeeper constraints (30 templates,
//!   each its own engine), beside the bundled native set;
//! - a Deployment through `/mutate` and then `/validate` (decode, decide,
//!   encode, and applying the patch in between, as the apiserver does).
//!
//! ```text
//! cargo run --release -p tollgate-benches --bin policy-scale -- [--runs 15]
//! ```

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tollgate_webhook::admission::{Admission, Endpoint};
use tollgate_webhook::config::Config;
use tollgate_webhook::metrics::Metrics;
use tollgate_webhook::policy::testing::{Options, run_with};
use tollgate_webhook::policy::{PolicySet, Source, bundled_sources, sources_with_tests_from_dirs};
use tollgate_webhook::review::Request;

const COMPLIANT: &[u8] = include_bytes!("../../../webhook/testdata/pod-compliant.json");
const DEPLOYMENT: &[u8] = include_bytes!("../../../webhook/testdata/deployment-compliant.json");

#[derive(Parser)]
struct Cli {
    /// Runs (or batches) per row; the median is reported.
    #[arg(long, default_value_t = 15)]
    runs: usize,
    /// Length of one batch of request evaluations, in milliseconds.
    #[arg(long, default_value_t = 500)]
    batch_ms: u64,
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

/// 30 templates: the fixtures' templates renamed apart (kind and package),
/// each with one constraint that matches Pods.
fn thirty_templates() -> anyhow::Result<Vec<Source>> {
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
    for i in 0..30 {
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let batch = Duration::from_millis(cli.batch_ms);
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
    let templates = PolicySet::compile(&thirty_templates()?, &config.policies, "30 templates")?;
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
    let admission = Admission::new(
        PolicySet::compile(&bundled_sources(), &config.policies, "bundled")?,
        &config,
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
    Ok(())
}
