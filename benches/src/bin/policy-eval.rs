//! In-process cost of the admission path, without HTTP: decoding a review,
//! and evaluating the bundled policies under the two engine strategies that
//! `PolicySet` offers:
//!
//! - `evaluate`: each thread keeps a clone of the prepared engine and reuses
//!   it across requests (what the server does);
//! - `evaluate_on_clone`: a fresh clone of the prepared engine per request.
//!
//! Each measurement warms up, then runs `--batches` batches of `--batch-ms`
//! each and reports the median batch (with the fastest and slowest). With
//! several `--threads` values, every thread runs the same loop at once on
//! its own review copy, which shows what the strategies cost when requests
//! are evaluated concurrently.
//!
//! ```text
//! cargo run --release -p tollgate-benches --bin policy-eval -- [--batches 7] [--batch-ms 1000] [--threads 1,2] [--only evaluate]
//! ```

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use tollgate_webhook::admission::{Admission, Endpoint};
use tollgate_webhook::config::Config;
use tollgate_webhook::metrics::Metrics;
use tollgate_webhook::pod_security::{NamespacePolicy, PodSecurityDefaults};
use tollgate_webhook::policy::gatekeeper::matching::NoNamespaces;
use tollgate_webhook::policy::{PolicySet, bundled_sources};
use tollgate_webhook::review::Request;

const COMPLIANT: &[u8] = include_bytes!("../../../webhook/testdata/pod-compliant.json");
const PRIVILEGED: &[u8] = include_bytes!("../../../webhook/testdata/pod-privileged.json");

#[derive(Parser)]
#[command(
    name = "policy-eval",
    about = "Per-request cost of decoding and of the policy engine's strategies"
)]
struct Cli {
    /// Measured batches per row; the median is reported.
    #[arg(long, default_value_t = 7)]
    batches: usize,
    /// Length of one batch, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    batch_ms: u64,
    /// Warm-up before each row, in milliseconds.
    #[arg(long, default_value_t = 500)]
    warmup_ms: u64,
    /// Thread counts to run the engine strategies at (comma-separated).
    /// Default: 1 and the available parallelism.
    #[arg(long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// Runs only the measurements whose name contains this (for profiling).
    #[arg(long)]
    only: Option<String>,
}

/// Timings of one row: µs per operation per thread, one per batch.
struct Row {
    name: String,
    threads: usize,
    per_op_us: Vec<f64>,
    /// Operations per second across all threads, one per batch.
    throughput: Vec<f64>,
    /// CPU time other processes used while the batches ran, in % of one
    /// CPU (`None` where /proc is not readable).
    other_cpu: Option<f64>,
}

/// `--features mimalloc`: issue 22's allocator way in.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How a subset's policies are evaluated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    PerPolicy,
    Grouped,
    Bytecode,
}

fn main() -> anyhow::Result<()> {
    // As `tollgate` does: no backtrace for each error regorus builds.
    tollgate_webhook::policy::quiet_library_backtraces();
    let cli = Cli::parse();
    ensure!(cli.batches >= 1, "--batches must be at least 1");
    let parallelism = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = if cli.threads.is_empty() {
        let mut t = vec![1, parallelism];
        t.dedup();
        t
    } else {
        cli.threads.clone()
    };

    let config = Config::default();
    let compile = || {
        PolicySet::compile(&bundled_sources(), &config.policies, "bundled")
            .context("compiling the bundled policies")
    };
    let started = Instant::now();
    let set = Arc::new(compile()?);
    let compile_ms = started.elapsed().as_secs_f64() * 1e3;

    let compliant = Request::decode(COMPLIANT).context("decoding pod-compliant.json")?;
    let privileged = Request::decode(PRIVILEGED).context("decoding pod-privileged.json")?;
    check_strategies_agree(&set, &compliant, &privileged)?;
    let policies = set.evaluate(&compliant.document, &compliant.kind).evaluated;

    let measure = Measure {
        batches: cli.batches,
        batch: Duration::from_millis(cli.batch_ms),
        warmup: Duration::from_millis(cli.warmup_ms),
        only: cli.only.clone(),
    };
    let mut rows = Vec::new();
    // Decoding shares nothing between threads: the control for how well
    // this machine runs the same work on several threads at once.
    for &n in &threads {
        rows.extend(
            measure.run("decode (Request::decode, compliant Pod)", n, |_| {
                move || {
                    black_box(Request::decode(black_box(COMPLIANT)).ok());
                }
            }),
        );
    }
    // Each thread decodes its own copy of the review, as each request does in
    // the server, so that the threads share no document.
    let decode = |bytes: &[u8]| Request::decode(bytes).expect("checked above");
    for (label, bytes) in [("compliant", COMPLIANT), ("privileged", PRIVILEGED)] {
        for &n in &threads {
            rows.extend(measure.run(
                &format!("evaluate: thread-local clone of the shared engine ({label})"),
                n,
                |_| {
                    let (set, review) = (set.clone(), decode(bytes));
                    move || {
                        black_box(set.evaluate(&review.document, &review.kind));
                    }
                },
            ));
            rows.extend(measure.run(
                &format!("evaluate_on_clone: clone of the shared engine per request ({label})"),
                n,
                |_| {
                    let (set, review) = (set.clone(), decode(bytes));
                    move || {
                        black_box(set.evaluate_on_clone(&review.document, &review.kind));
                    }
                },
            ));
            // The control for sharing: every thread compiles its own set, so
            // no engine state (reference counts included) is shared at all.
            rows.extend(measure.run(
                &format!("evaluate: thread-local, each thread compiles its own set ({label})"),
                n,
                |_| {
                    let (set, review) = (compile().expect("compiled above"), decode(bytes));
                    move || {
                        black_box(set.evaluate(&review.document, &review.kind));
                    }
                },
            ));
        }
    }
    // The Pod Security Standards at `restricted` (issue 29), in a namespace
    // labelled pod-security.kubernetes.io/enforce=restricted, on the
    // compliant Pod with what the mutation fills for restricted: the
    // pod_security set alone, the whole bundled set, and the bundled set
    // without pod_security (the library before the set existed).
    let (restricted, namespace) = restricted_pod()?;
    let in_set = |p: &Path| p.components().any(|c| c.as_os_str() == "pod_security");
    let is_lib = |p: &Path| p.parent().is_some_and(|d| d.ends_with("lib"));
    type Keep<'a> = &'a dyn Fn(&Path) -> bool;
    let subsets: [(&str, Keep); 3] = [
        ("bundled set without pod_security", &|p| !in_set(p)),
        ("pod_security set", &|p| in_set(p) || is_lib(p)),
        ("bundled set", &|_| true),
    ];
    // Each subset three ways: one eval_rule per policy (before issue 22);
    // the policies evaluated together by parameter group, on the
    // interpreter (the server's way); and the groups compiled to regorus's
    // bytecode VM, which the server does not use: it decides some requests
    // wrongly (webhook/src/policy/bytecode.rs).
    let ways = [
        ("one eval_rule per policy", Way::PerPolicy),
        ("grouped", Way::Grouped),
        (
            "grouped, bytecode VM (not used: wrong answers)",
            Way::Bytecode,
        ),
    ];
    for ((label, keep), (way, how)) in subsets
        .into_iter()
        .flat_map(|s| ways.into_iter().map(move |w| (s, w)))
    {
        let sources: Vec<_> = bundled_sources()
            .into_iter()
            .filter(|s| keep(&s.path))
            .collect();
        let compiled = PolicySet::compile(&sources, &config.policies, label)
            .with_context(|| format!("compiling the {label}"))?;
        let subset = Arc::new(match how {
            Way::PerPolicy => compiled.ungrouped(),
            Way::Grouped => compiled,
            Way::Bytecode => {
                let groups = compiled.group_count();
                let (set, on_vm) = compiled.with_bytecode();
                ensure!(
                    on_vm == groups,
                    "{on_vm} of {groups} groups of the {label} compiled to bytecode"
                );
                set
            }
        });
        let outcome = subset.evaluate_in_namespace(
            &restricted.document,
            &restricted.kind,
            &NoNamespaces,
            &namespace,
        );
        ensure!(
            outcome.findings.is_empty(),
            "the restricted Pod is not compliant under the {label}: {:?}",
            outcome.findings
        );
        let name = format!(
            "evaluate, enforce=restricted namespace: {label} ({} policies apply), {way}",
            outcome.evaluated
        );
        for &n in &threads {
            rows.extend(measure.run(&name, n, |_| {
                let (set, review, namespace) =
                    (subset.clone(), decode(&restricted.bytes), namespace.clone());
                move || {
                    black_box(set.evaluate_in_namespace(
                        &review.document,
                        &review.kind,
                        &NoNamespaces,
                        &namespace,
                    ));
                }
            }));
        }
    }
    // The whole in-process request path of the server's endpoints: decode,
    // decide (/validate: policies; /mutate: the mutations), count, encode.
    // Every iteration sends the same review, so the decision cache is off
    // for these rows (a fresh evaluation each time) and on for the last one
    // (an ArgoCD re-sync: the same review again).
    let mut uncached = Config::default();
    uncached.policies.decision_cache_entries = 0;
    let admission = Arc::new(
        Admission::new(compile()?, &uncached, Arc::new(Metrics::new()))
            .context("building the admission handler")?,
    );
    let cached = Arc::new(
        Admission::new(compile()?, &config, Arc::new(Metrics::new()))
            .context("building the admission handler")?,
    );
    for (name, endpoint, admission) in [
        (
            "/validate: decode + decide + encode (compliant)",
            Endpoint::Validate,
            &admission,
        ),
        (
            "/mutate: decode + decide + encode (compliant)",
            Endpoint::Mutate,
            &admission,
        ),
        (
            "/validate: decode + decide + encode (compliant), repeated review: decision cache hit",
            Endpoint::Validate,
            &cached,
        ),
    ] {
        for &n in &threads {
            let admission = admission.clone();
            rows.extend(measure.run(name, n, move |_| {
                let admission = admission.clone();
                move || {
                    let request = Request::decode(black_box(COMPLIANT)).expect("decodes");
                    let response = admission.decide(endpoint, &request, None);
                    black_box(response.encode());
                }
            }));
        }
    }

    println!(
        "policy-eval: {} bundled policies apply to a Pod; compiled in {compile_ms:.1} ms; \
         {} batches x {} ms after {} ms warm-up; available parallelism {parallelism}; \
         other CPU: CPU time other processes used during the row, in % of one CPU",
        policies, cli.batches, cli.batch_ms, cli.warmup_ms
    );
    println!();
    println!(
        "| measurement | threads | µs/op (median) | µs/policy | p90 µs/op | min–max µs/op | ops/s (all threads) | other CPU |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in &rows {
        let per_op = median(&row.per_op_us);
        let per_policy = if row.name.starts_with("evaluate") {
            format!("{:.1}", per_op / policies as f64)
        } else {
            "–".to_owned()
        };
        let (lo, hi) = min_max(&row.per_op_us);
        let other = row
            .other_cpu
            .map_or_else(|| "?".to_owned(), |o| format!("{o:.0}%"));
        println!(
            "| {} | {} | {:.1} | {} | {:.1} | {:.1}–{:.1} | {:.0} | {} |",
            row.name,
            row.threads,
            per_op,
            per_policy,
            p90(&row.per_op_us),
            lo,
            hi,
            median(&row.throughput),
            other
        );
    }
    Ok(())
}

/// pod-compliant.json with what the mutation fills for `restricted`
/// (seccomp RuntimeDefault, capabilities dropped), and the policies'
/// `input.namespace` of a namespace labelled enforce=restricted.
fn restricted_pod() -> anyhow::Result<(Restricted, regorus::Value)> {
    let mut review: serde_json::Value = serde_json::from_slice(COMPLIANT)?;
    let spec = &mut review["request"]["object"]["spec"];
    spec["securityContext"]["seccompProfile"] = serde_json::json!({"type": "RuntimeDefault"});
    spec["containers"][0]["securityContext"]["capabilities"] = serde_json::json!({"drop": ["ALL"]});
    let bytes = serde_json::to_vec(&review)?;
    let request = Request::decode(&bytes).context("decoding the restricted Pod")?;
    let labels = BTreeMap::from([(
        "pod-security.kubernetes.io/enforce".to_owned(),
        "restricted".to_owned(),
    )]);
    let namespace = NamespacePolicy::resolve(Some(&labels), &PodSecurityDefaults::default())
        .input(&request.namespace, Some(&labels));
    Ok((
        Restricted {
            bytes,
            document: request.document,
            kind: request.kind,
        },
        namespace,
    ))
}

struct Restricted {
    bytes: Vec<u8>,
    document: regorus::Value,
    kind: String,
}

/// Both strategies must give the same findings, and a reused engine must
/// not carry one request's result into the next.
fn check_strategies_agree(
    set: &PolicySet,
    compliant: &Request,
    privileged: &Request,
) -> anyhow::Result<()> {
    let clean = set.evaluate_on_clone(&compliant.document, &compliant.kind);
    ensure!(
        clean.findings.is_empty(),
        "pod-compliant.json is denied: {:?}",
        clean.findings
    );
    let dirty = set.evaluate_on_clone(&privileged.document, &privileged.kind);
    ensure!(
        !dirty.findings.is_empty(),
        "pod-privileged.json has no findings"
    );
    for _ in 0..3 {
        let a = set.evaluate(&privileged.document, &privileged.kind);
        ensure!(
            a.findings == dirty.findings,
            "thread-local engine disagrees on the privileged Pod"
        );
        let b = set.evaluate(&compliant.document, &compliant.kind);
        ensure!(
            b.findings.is_empty(),
            "thread-local engine carried findings into the compliant Pod: {:?}",
            b.findings
        );
    }
    Ok(())
}

struct Measure {
    batches: usize,
    batch: Duration,
    warmup: Duration,
    only: Option<String>,
}

impl Measure {
    /// Runs `make(thread_index)()` in a loop on `threads` threads at once.
    fn run<M, F>(&self, name: &str, threads: usize, make: M) -> Option<Row>
    where
        M: Fn(usize) -> F,
        F: FnMut() + Send + 'static,
    {
        if self
            .only
            .as_ref()
            .is_some_and(|only| !name.contains(only.as_str()))
        {
            return None;
        }
        eprintln!("policy-eval: {name}, {threads} thread(s)");
        let cpu_before = cpu_ticks();
        let started = Instant::now();
        let mut per_op_us = Vec::with_capacity(self.batches);
        let mut throughput = Vec::with_capacity(self.batches);
        let barrier = Arc::new(Barrier::new(threads));
        let (batches, batch, warmup) = (self.batches, self.batch, self.warmup);
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let mut op = make(i);
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    barrier.wait();
                    timed_loop(&mut op, warmup);
                    let mut counts = Vec::with_capacity(batches);
                    for _ in 0..batches {
                        barrier.wait();
                        counts.push(timed_loop(&mut op, batch));
                    }
                    counts
                })
            })
            .collect();
        let counts: Vec<Vec<(u64, Duration)>> = handles
            .into_iter()
            .map(|h| h.join().expect("benchmark thread panicked"))
            .collect();
        let other_cpu = cpu_before.zip(cpu_ticks()).map(|((b0, s0), (b1, s1))| {
            let other = (b1 - b0) as f64 - (s1 - s0) as f64;
            (other / (started.elapsed().as_secs_f64() * CLOCK_TICKS) * 100.0).max(0.0)
        });
        for b in 0..batches {
            let ops: u64 = counts.iter().map(|c| c[b].0).sum();
            let busy: f64 = counts.iter().map(|c| c[b].1.as_secs_f64()).sum();
            let wall = counts
                .iter()
                .map(|c| c[b].1.as_secs_f64())
                .fold(0.0, f64::max);
            per_op_us.push(busy * 1e6 / ops as f64);
            throughput.push(ops as f64 / wall);
        }
        Some(Row {
            name: name.to_owned(),
            threads,
            per_op_us,
            throughput,
            other_cpu,
        })
    }
}

/// USER_HZ, the unit of /proc's CPU times: 100 on every Linux platform
/// that Rust targets.
const CLOCK_TICKS: f64 = 100.0;

/// CPU time (in clock ticks) that the whole machine and this process have
/// used so far, from /proc; `None` where that is not readable.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| cpu.get(i)).sum();
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = own.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime: fields 14 and 15, the 12th and 13th after the name.
    let own = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((busy, own))
}

/// Calls `op` until `length` has passed; returns the calls and the time.
fn timed_loop(op: &mut impl FnMut(), length: Duration) -> (u64, Duration) {
    let started = Instant::now();
    let mut n = 0;
    loop {
        op();
        n += 1;
        let elapsed = started.elapsed();
        if elapsed >= length {
            return (n, elapsed);
        }
    }
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// The 90th percentile of the batches (nearest rank): issue 22's goal is
/// stated at it.
fn p90(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (sorted.len() as f64 * 0.9).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn min_max(values: &[f64]) -> (f64, f64) {
    values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}
