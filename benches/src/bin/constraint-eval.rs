//! Tollgate's side of the compute-only comparison in
//! benches/peers-admission.sh: the objects given, each as an
//! AdmissionRequest (CREATE), evaluated in-process against the templates
//! and constraints of `--dir`, as `gator bench` evaluates the same files.
//!
//! ```text
//! constraint-eval write --dir DIR [--constraints 30]   # the files both sides load
//! constraint-eval --dir DIR/gatekeeper --objects DIR/objects.yaml [--iterations 2000] [--threads 1,2]
//! constraint-eval inputs --objects FILE                # each object's policy input, a JSON line each
//! ```
//!
//! `--dir` may be given more than once, and any policy directory works:
//! the script also evaluates `policies/pod_security` (with `policies/lib`)
//! here and the same files with `opa bench`, given the input `inputs`
//! prints (`{"review": <AdmissionRequest>}`, what a policy sees without a
//! namespace: the Pod Security set then judges at `enforce: baseline`).
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
    /// The templates and constraints (a directory `write` made), or any
    /// policy directories.
    #[arg(long, num_args = 1..)]
    dir: Vec<PathBuf>,
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
    /// Prints, for each object of FILE, the input a policy gets for its
    /// CREATE: `{"name": NAME, "input": {"review": <AdmissionRequest>}}`.
    Inputs {
        #[arg(long)]
        objects: PathBuf,
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

/// The objects of a YAML file (several, separated by `---`).
fn objects(file: &Path) -> anyhow::Result<Vec<Value>> {
    let text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
    text.split("\n---\n")
        .filter(|doc| !doc.trim().is_empty())
        .map(|doc| Ok(yaml_serde::from_str(doc)?))
        .collect()
}

/// The AdmissionReview the apiserver would send for creating `object`.
fn admission_review(object: &Value, i: usize) -> anyhow::Result<Value> {
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
    Ok(review)
}

/// That review decoded as the webhook decodes it; the object's kind and
/// name.
fn request(object: &Value, i: usize) -> anyhow::Result<(Request, String, String)> {
    let review = admission_review(object, i)?;
    let kind = object["kind"].as_str().context("an object without kind")?;
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
    // As `tollgate` does: no backtrace for each error regorus builds.
    tollgate_webhook::policy::quiet_library_backtraces();
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Write { dir, constraints }) => return write(dir, *constraints),
        Some(Command::Inputs { objects: file }) => {
            for (i, object) in objects(file)?.iter().enumerate() {
                let review = admission_review(object, i)?;
                println!(
                    "{}",
                    json!({"name": object["metadata"]["name"],
                        "input": {"review": review["request"]}})
                );
            }
            return Ok(());
        }
        None => {}
    }
    ensure!(!cli.dir.is_empty(), "--dir is required");
    ensure!(!cli.objects.is_empty(), "--objects is required");
    let mut config = Config::default();
    config.policies.dirs = cli.dir.clone();
    let started = Instant::now();
    let set: PolicySet = tollgate_webhook::serve::load_policies(&config)?;
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;
    let mut reviews = Vec::new();
    for file in &cli.objects {
        for object in objects(file)? {
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
