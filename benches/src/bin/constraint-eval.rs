//! Tollgate's side of the compute-only comparison in
//! benches/peers-admission.sh: the objects given, each as an
//! AdmissionRequest (CREATE), evaluated in-process against the templates
//! and constraints of `--dir`, as `gator bench` evaluates the same files.
//!
//! ```text
//! constraint-eval write --dir DIR [--constraints 30]   # the files both sides load
//! constraint-eval --dir DIR/gatekeeper --objects DIR/objects.yaml [--iterations 2000] [--threads 1,2]
//! ```
//!
//! A review is one object against every constraint; each is timed alone.
//! With T threads each evaluates `--iterations` rounds of all the objects;
//! reviews/s is all reviews over the wall time. Prints one JSON line per
//! thread count, and first the verdict on each object (denied or not, by
//! which constraints), which the script compares with Gatekeeper's.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::Instant;

use anyhow::{Context as _, ensure};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use tollgate_benches::constraints;
use tollgate_webhook::config::{Config, Enforcement};
use tollgate_webhook::policy::PolicySet;
use tollgate_webhook::review::Request;

#[derive(Parser)]
#[command(
    name = "constraint-eval",
    about = "Objects against Gatekeeper constraints, in-process"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The templates and constraints (a directory `write` made).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// YAML files of objects, several per file allowed (`---`).
    #[arg(long, num_args = 1..)]
    objects: Vec<PathBuf>,
    /// Rounds over all the objects, per thread.
    #[arg(long, default_value_t = 2000)]
    iterations: usize,
    /// Rounds first, not timed.
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Thread counts, comma-separated: a line each.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    threads: Vec<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Writes DIR/gatekeeper (templates and constraints, on the namespaces
    /// `bench-*`) and DIR/objects.yaml (a compliant and a violating Pod in
    /// `bench-compute`).
    Write {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 30)]
        constraints: usize,
    },
}

fn write(dir: &Path, count: usize) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    constraints::write_dir(dir, count, &["bench-*"])?;
    let mut docs = Vec::new();
    for mut pod in [
        constraints::compliant_pod("compliant"),
        constraints::violating_pod("violating"),
    ] {
        pod["metadata"]["namespace"] = json!("bench-compute");
        docs.push(yaml_serde::to_string(&pod)?);
    }
    std::fs::write(dir.join("objects.yaml"), docs.join("---\n"))?;
    Ok(())
}

/// The AdmissionRequest the apiserver would send for creating `object`,
/// decoded as the webhook decodes it; its kind and name.
fn request(object: &Value, i: usize) -> anyhow::Result<(Request, String, String)> {
    let kind = object["kind"].as_str().context("an object without kind")?;
    let (group, version) = match object["apiVersion"]
        .as_str()
        .unwrap_or("v1")
        .split_once('/')
    {
        Some((g, v)) => (g.to_owned(), v.to_owned()),
        None => (
            String::new(),
            object["apiVersion"].as_str().unwrap_or("v1").to_owned(),
        ),
    };
    let resource = format!("{}s", kind.to_lowercase());
    let review = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
    "request": {
        "uid": format!("bench-{i}"),
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": resource},
        "name": object["metadata"]["name"],
        "namespace": object["metadata"]["namespace"],
        "operation": "CREATE",
        "userInfo": {"username": "bench"},
        "object": object,
        "dryRun": false,
    }});
    Ok((
        Request::decode(&serde_json::to_vec(&review)?)?,
        kind.to_owned(),
        object["metadata"]["name"].as_str().unwrap_or("").to_owned(),
    ))
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Write { dir, constraints }) = &cli.command {
        return write(dir, *constraints);
    }
    let dir = cli.dir.as_ref().context("--dir is required")?;
    ensure!(!cli.objects.is_empty(), "--objects is required");
    let mut config = Config::default();
    config.policies.dirs = vec![dir.clone()];
    let started = Instant::now();
    let set: PolicySet = tollgate_webhook::serve::load_policies(&config)?;
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut reviews = Vec::new();
    for file in &cli.objects {
        let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
        for doc in text.split("\n---\n") {
            if doc.trim().is_empty() {
                continue;
            }
            let object: Value = yaml_serde::from_str(doc)?;
            reviews.push(request(&object, reviews.len())?);
        }
    }
    for (review, kind, name) in &reviews {
        let outcome = set.evaluate(&review.document, kind);
        let mut denied_by: Vec<&str> = outcome
            .findings
            .iter()
            .filter(|f| matches!(f.enforcement, Enforcement::Deny))
            .map(|f| f.policy.as_str())
            .collect();
        denied_by.sort_unstable();
        println!(
            "{}",
            json!({"object": name, "evaluated": outcome.evaluated,
                "denied": !denied_by.is_empty(), "denied_by": denied_by,
                "findings": outcome.findings.len(), "compile_ms": compile_ms})
        );
    }
    for &threads in &cli.threads {
        // Every thread warms up, then all start together with the clock.
        let ready = Barrier::new(threads + 1);
        let (mut latencies, wall_s): (Vec<u64>, f64) = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        for _ in 0..cli.warmup {
                            for (review, kind, _) in &reviews {
                                black_box(set.evaluate(&review.document, kind));
                            }
                        }
                        ready.wait();
                        let mut mine = Vec::with_capacity(cli.iterations * reviews.len());
                        for _ in 0..cli.iterations {
                            for (review, kind, _) in &reviews {
                                let t = Instant::now();
                                black_box(set.evaluate(&review.document, kind));
                                mine.push(t.elapsed().as_nanos() as u64);
                            }
                        }
                        mine
                    })
                })
                .collect();
            ready.wait();
            let wall = Instant::now();
            let all: Vec<u64> = handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect();
            (all, wall.elapsed().as_secs_f64())
        });
        latencies.sort_unstable();
        let n = latencies.len() as f64;
        println!(
            "{}",
            json!({"threads": threads, "reviews": n, "p50_us": percentile(&latencies, 0.5),
                "p99_us": percentile(&latencies, 0.99), "reviews_per_s": n / wall_s})
        );
    }
    Ok(())
}
