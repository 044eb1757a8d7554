//! `tollgate audit`: what existing objects violate, before a policy is
//! switched to `deny`. From the cluster (a kubeconfig, listed page by
//! page) or from manifest files, judged by the same configuration and
//! policies as the webhook. Exit 1 when a `deny` policy has violations.

use std::collections::BTreeSet;
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::admission::Admission;
use crate::audit::Subject;
use crate::audit::judge::Judges;
use crate::audit::kinds::{DEFAULT_KINDS, wanted};
use crate::audit::tally::{Entry, Tally};
use crate::cli::exit;
use crate::cli::report::{Case, Report};
use crate::cluster::audit_list::{PassOptions, Progress, audit_cluster};
use crate::config::{Config, Enforcement};
use crate::metrics::Metrics;
use crate::policy::PolicySet;
use crate::policy::gatekeeper::matching::NamespaceLabels as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Pretty,
    Json,
    Junit,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifests to audit instead of the cluster: files, directories
    /// (searched recursively for YAML and JSON) or `-` for standard input.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    /// The cluster to audit. Unset: the config's `cluster.kubeconfig`,
    /// else `$KUBECONFIG` or the in-cluster service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The webhook's configuration (policies, exemptions, teams).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// With `-f`: YAML file(s) of Namespace objects, for namespace labels.
    #[arg(long)]
    pub namespaces: Vec<PathBuf>,
    /// Only these policies or constraints (repeatable).
    #[arg(long = "policy")]
    pub policies: Vec<String>,
    /// Only objects in this namespace (and no cluster-scoped ones).
    #[arg(long, short = 'n')]
    pub namespace: Option<String>,
    #[arg(long, value_enum, default_value = "pretty")]
    pub format: Format,
    /// Violations listed per policy; the counts are always complete.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Objects per list call.
    #[arg(long, default_value_t = 500)]
    pub page_size: u32,
    /// Threads judging objects. Unset: the machine's cores.
    #[arg(long)]
    pub workers: Option<usize>,
}

pub fn run(args: Args) -> u8 {
    match audit(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tollgate audit: {e}");
            exit::BROKEN
        }
    }
}

fn audit(args: &Args) -> Result<u8, String> {
    let mut config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::default(),
    };
    let policies = crate::serve::load_policies(&config).map_err(|e| format!("{e:#}"))?;
    let only: Option<BTreeSet<String>> =
        (!args.policies.is_empty()).then(|| args.policies.iter().cloned().collect());
    if let Some(only) = &only {
        let known = policy_names(&policies);
        if let Some(unknown) = only.iter().find(|p| !known.iter().any(|(n, _)| n == *p)) {
            return Err(format!(
                "--policy {unknown}: no such policy or constraint is loaded"
            ));
        }
    }
    let names = policy_names(&policies);
    let defaults = if config.audit.kinds.is_empty() {
        DEFAULT_KINDS.iter().map(|k| k.to_string()).collect()
    } else {
        config.audit.kinds.clone()
    };
    let kinds = wanted(&policies, &defaults, only.as_ref());
    let admission = Arc::new(
        Admission::new(policies, &config, Arc::new(Metrics::new())).map_err(|e| e.to_string())?,
    );
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let started = Instant::now();
    let progress = Spinner::new();
    let mut tally = if args.files.is_empty() {
        if let Some(path) = &args.kubeconfig {
            config.cluster.kubeconfig = Some(path.clone());
        }
        let options = PassOptions {
            page_size: args.page_size,
            workers,
            per_policy_cap: args.limit,
            per_namespace_cap: 0,
            namespace: args.namespace.clone(),
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| format!("starting the runtime: {e}"))?;
        runtime.block_on(async {
            let client = crate::cluster::client(&config.cluster)
                .await
                .map_err(|e| format!("{e:#}"))?;
            let mut show = |p: Progress<'_>| progress.show(&p);
            audit_cluster(&client, admission, &kinds, &options, &mut show)
                .await
                .map_err(|e| e.to_string())
        })?
    } else {
        audit_files(args, admission, workers)?
    };
    progress.clear();
    if let Some(only) = &only {
        tally.policies.retain(|name, _| only.contains(name));
    }
    let elapsed = started.elapsed();
    let chosen: Vec<(String, Enforcement)> = names
        .into_iter()
        .filter(|(n, _)| only.as_ref().is_none_or(|o| o.contains(n)))
        .collect();
    let text = match args.format {
        Format::Pretty => pretty(&tally, elapsed),
        Format::Json => to_json(&tally, elapsed) + "\n",
        Format::Junit => crate::cli::report::render(
            &junit_report(&tally, &chosen, elapsed),
            crate::cli::report::Format::Junit,
        ),
    };
    // A reader that went away (`| head`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
    Ok(if tally.has_deny_violations() {
        exit::FAILED
    } else {
        exit::OK
    })
}

/// Every loaded policy and constraint, with its enforcement.
fn policy_names(policies: &PolicySet) -> Vec<(String, Enforcement)> {
    policies
        .policies()
        .iter()
        .map(|p| (p.name.clone(), p.enforcement))
        .chain(
            policies
                .constraints()
                .map(|c| (c.name.clone(), c.enforcement)),
        )
        .collect()
}

fn audit_files(args: &Args, admission: Arc<Admission>, workers: usize) -> Result<Tally, String> {
    let objects = crate::cli::review::read_objects(&args.files)?;
    let mut namespaces = crate::policy::gatekeeper::inventory::Inventory::default();
    for object in crate::cli::review::read_objects(&args.namespaces)?
        .into_iter()
        .chain(objects.iter().cloned())
    {
        if object.get("kind").and_then(|k| k.as_str()) == Some("Namespace") {
            namespaces.add(object);
        }
    }
    let mut labels = std::collections::HashMap::new();
    for object in &objects {
        let ns = Subject::of(object).namespace;
        if !ns.is_empty()
            && !labels.contains_key(&ns)
            && let Some(l) = namespaces.labels(&ns)
        {
            labels.insert(ns, l);
        }
    }
    let objects: Vec<_> = objects
        .into_iter()
        .filter(|o| {
            args.namespace
                .as_ref()
                .is_none_or(|n| Subject::of(o).namespace == *n)
        })
        .collect();
    let judges = Judges::start(admission, Arc::new(labels), workers);
    let mut tally = Tally::new(args.limit, 0);
    for (subject, verdict) in judges.judge_page(objects) {
        tally.record(subject, verdict);
    }
    Ok(tally)
}

/// A progress line on standard error, when it is a terminal.
struct Spinner {
    on: bool,
}

impl Spinner {
    fn new() -> Spinner {
        Spinner {
            on: std::io::stderr().is_terminal(),
        }
    }

    fn show(&self, p: &Progress<'_>) {
        if self.on {
            eprint!(
                "\r\x1b[Kaudit: {} {} listed ({}/{} kinds done)",
                p.kind, p.listed, p.kinds_done, p.kinds
            );
        }
    }

    fn clear(&self) {
        if self.on {
            eprint!("\r\x1b[K");
        }
    }
}

fn owner(team: &str, namespace: &str) -> String {
    match (team.is_empty(), namespace.is_empty()) {
        (_, true) => "cluster-scoped".to_owned(),
        (true, false) => format!("no team, namespace {namespace}"),
        (false, false) => format!("team {team}, namespace {namespace}"),
    }
}

fn entry_line(e: &Entry) -> String {
    let error = if e.error { "error: " } else { "" };
    format!("{}: {error}{}", e.subject.describe(), e.message)
}

fn pretty(tally: &Tally, elapsed: Duration) -> String {
    let mut out = String::new();
    for (policy, t) in &tally.policies {
        out.push_str(&format!(
            "{policy} ({}): {} violations, {} errors\n",
            t.enforcement.as_str(),
            t.violations,
            t.errors
        ));
        for ((team, namespace), count) in &t.by_owner {
            out.push_str(&format!("  {}: {count}\n", owner(team, namespace)));
        }
        for e in &t.listed {
            out.push_str(&format!("    {}\n", entry_line(e)));
        }
        let unlisted = (t.violations + t.errors).saturating_sub(t.listed.len() as u64);
        if unlisted > 0 {
            out.push_str(&format!("    … and {unlisted} more (--limit)\n"));
        }
    }
    for kind in &tally.skipped_kinds {
        out.push_str(&format!("skipped {kind}\n"));
    }
    for (subject, cause) in &tally.unreadable {
        out.push_str(&format!(
            "could not judge {}: {cause}\n",
            subject.describe()
        ));
    }
    let deny = tally
        .policies
        .values()
        .filter(|p| p.enforcement == Enforcement::Deny && p.violations + p.errors > 0)
        .count();
    out.push_str(&format!(
        "{} objects audited ({} exempt) in {:.1} s: {} policies with violations, {deny} of them deny\n",
        tally.judged,
        tally.exempt,
        elapsed.as_secs_f64(),
        tally.policies.len()
    ));
    out
}

fn to_json(tally: &Tally, elapsed: Duration) -> String {
    let policies: Vec<_> = tally
        .policies
        .iter()
        .map(|(policy, t)| {
            json!({
                "policy": policy,
                "enforcement": t.enforcement.as_str(),
                "violations": t.violations,
                "errors": t.errors,
                "owners": t.by_owner.iter().map(|((team, namespace), count)| json!({
                    "team": team, "namespace": namespace, "count": count,
                })).collect::<Vec<_>>(),
                "listed": t.listed.iter().map(|e| json!({
                    "apiVersion": e.subject.api_version,
                    "kind": e.subject.kind,
                    "namespace": e.subject.namespace,
                    "name": e.subject.name,
                    "team": e.team,
                    "message": e.message,
                    "error": e.error,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    serde_json::to_string_pretty(&json!({
        "judged": tally.judged,
        "exempt": tally.exempt,
        "seconds": elapsed.as_secs_f64(),
        "policies": policies,
        "skippedKinds": tally.skipped_kinds,
        "unreadable": tally.unreadable.iter().map(|(s, cause)| json!({
            "object": s.describe(), "cause": cause,
        })).collect::<Vec<_>>(),
    }))
    .unwrap_or_default()
}

/// One JUnit case per policy: a failure listing its violations.
fn junit_report(tally: &Tally, policies: &[(String, Enforcement)], elapsed: Duration) -> Report {
    use crate::policy::gatekeeper::suite::CaseOutcome;
    let cases = policies
        .iter()
        .map(|(name, enforcement)| {
            let outcome = match tally.policies.get(name) {
                None => CaseOutcome::Pass,
                Some(t) => {
                    let mut text = format!(
                        "{} violations, {} errors ({})\n",
                        t.violations,
                        t.errors,
                        enforcement.as_str()
                    );
                    for e in &t.listed {
                        text.push_str(&entry_line(e));
                        text.push('\n');
                    }
                    if t.violations == 0 {
                        CaseOutcome::Error(text)
                    } else {
                        CaseOutcome::Fail(text)
                    }
                }
            };
            Case {
                file: "tollgate audit".to_owned(),
                line: None,
                group: enforcement.as_str().to_owned(),
                name: name.clone(),
                outcome,
                duration: elapsed / policies.len().max(1) as u32,
                bench: None,
            }
        })
        .collect();
    Report {
        cases,
        coverage: None,
    }
}
