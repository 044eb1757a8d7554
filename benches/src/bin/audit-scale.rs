//! The audit at scale (issue #19): `--pods` Pods and `--deployments`
//! Deployments created in the real kube-apiserver (the e2e harness's
//! control plane), over `--namespaces` team namespaces, then audited by
//! `tollgate audit` against the bundled policies plus `--constraints`
//! Gatekeeper constraints (made from the fixture templates in
//! tests/fixtures/gatekeeper), beside a bare list of the same objects in
//! the same run (the same discovery, kinds, page size and JSON conversion,
//! judging nothing). The ratio audit/list is the figure.
//!
//! A third of the Pods and Deployments violate something (a `latest`
//! tag, no limits, privileged); the Deployments are paused, so the
//! controller makes no ReplicaSets and the counts stay as created. The
//! Pods are stored and stay Pending (no scheduler, no kubelet).
//!
//! Peak RSS and wall time of the audit come from `/usr/bin/time`. Runs
//! alternate list and audit; the medians are reported.
//!
//! ```text
//! benches/audit.sh                     # builds, runs this, then the admission-under-audit part
//! audit-scale [--pods 10000] [--deployments 2000] [--namespaces 20] [--constraints 30] [--runs 3] [--workers 2]
//! ```
//!
//! With `--keep-dir DIR`, the kubeconfig and the config are written there
//! and the control plane stays up until stdin closes (benches/audit.sh
//! measures admission while an audit runs against it).

use std::io::Read as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, ensure};
use clap::Parser;
use futures_util::StreamExt as _;
use kube::api::{Api, DynamicObject, PostParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};
use tollgate_benches::constraints;
use tollgate_e2e::ControlPlane;
use tollgate_webhook::audit::kinds::{DEFAULT_KINDS, wanted};
use tollgate_webhook::cluster::audit_list::list_only;

#[derive(Parser)]
#[command(
    name = "audit-scale",
    about = "tollgate audit against a bare list, at scale"
)]
struct Args {
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    #[arg(long, default_value_t = 2_000)]
    deployments: usize,
    #[arg(long, default_value_t = 20)]
    namespaces: usize,
    #[arg(long, default_value_t = 30)]
    constraints: usize,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// `tollgate audit --workers`.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    #[arg(long, default_value_t = 500)]
    page_size: u32,
    /// Write the kubeconfig and config here and keep the control plane up
    /// until stdin closes.
    #[arg(long)]
    keep_dir: Option<PathBuf>,
}

fn container(image: &str, limits: bool, privileged: bool) -> Value {
    let mut c = json!({"name": "app", "image": image,
        "securityContext": {"privileged": privileged}});
    if limits {
        c["resources"] = json!({"limits": {"cpu": "500m", "memory": "256Mi"},
            "requests": {"cpu": "100m", "memory": "128Mi"}});
    }
    c
}

/// The `i`th object's pod spec: compliant, or breaking one rule.
fn pod_spec(i: usize) -> Value {
    let (image, limits, privileged) = match i % 6 {
        0 => ("registry.example.com/ml/trainer:latest", true, false),
        1 => ("registry.example.com/ml/trainer:1.4.2", false, false),
        2 => ("registry.example.com/ml/trainer:1.4.2", true, true),
        _ => ("registry.example.com/ml/trainer:1.4.2", true, false),
    };
    json!({"containers": [container(image, limits, privileged)]})
}

fn namespace_name(n: usize) -> String {
    format!("app-t{n}-team")
}

async fn create_all(client: &kube::Client, args: &Args) -> anyhow::Result<()> {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    // Where benches/audit.sh's webhook keeps its audit Lease.
    let system = serde_json::from_value(json!({"metadata": {"name": "tollgate-system"}}))?;
    namespaces.create(&PostParams::default(), &system).await?;
    for n in 0..args.namespaces {
        let ns = serde_json::from_value(json!({"metadata": {"name": namespace_name(n),
            "labels": {"team": format!("t{n}")}}}))?;
        namespaces.create(&PostParams::default(), &ns).await?;
    }
    let pods = ApiResource::erase::<k8s_openapi::api::core::v1::Pod>(&());
    let deployments = ApiResource::erase::<k8s_openapi::api::apps::v1::Deployment>(&());
    let mut jobs = Vec::new();
    for i in 0..args.pods {
        let ns = namespace_name(i % args.namespaces);
        let object = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("pod-{i}"), "namespace": ns,
                "labels": {"app": "trainer", "team": format!("t{}", i % args.namespaces)}},
            "spec": pod_spec(i)});
        jobs.push((pods.clone(), ns, object));
    }
    for i in 0..args.deployments {
        let ns = namespace_name(i % args.namespaces);
        let labels = json!({"app": format!("d{i}"), "team": format!("t{}", i % args.namespaces)});
        let object = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": format!("deploy-{i}"), "namespace": ns, "labels": labels},
            "spec": {"paused": true, "replicas": 1, "selector": {"matchLabels": {"app": format!("d{i}")}},
                "template": {"metadata": {"labels": labels}, "spec": pod_spec(i)}}});
        jobs.push((deployments.clone(), ns, object));
    }
    let started = Instant::now();
    let total = jobs.len();
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(jobs)
        .map(|(resource, ns, object)| {
            let client = client.clone();
            async move {
                let api: Api<DynamicObject> = Api::namespaced_with(client, &ns, &resource);
                let object: DynamicObject = serde_json::from_value(object)?;
                api.create(&PostParams::default(), &object).await?;
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for r in results {
        r?;
    }
    eprintln!(
        "audit-scale: created {total} objects in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    // As `tollgate` does: no backtrace for each error regorus builds.
    tollgate_webhook::policy::quiet_library_backtraces();
    let args = Args::parse();
    let cp = ControlPlane::start()?;
    let work = tempfile::tempdir()?;
    let dir = args
        .keep_dir
        .clone()
        .unwrap_or_else(|| work.path().to_owned());
    std::fs::create_dir_all(&dir)?;
    // Every constraint on Pods and Deployments in the team namespaces.
    let gk = constraints::write_dir(&dir, args.constraints, &["app-*"])?;
    let config = dir.join("tollgate.yaml");
    let policies = tollgate_e2e::binaries::workspace_root().join("policies");
    std::fs::write(
        &config,
        yaml_serde::to_string(&json!({
            "policies": {"dirs": [&policies, &gk]},
            "cluster": {"kubeconfig": cp.kubeconfig()},
        }))?,
    )?;
    std::fs::write(dir.join("dirs.json"), json!([policies, gk]).to_string())?;
    let runtime = tokio::runtime::Runtime::new()?;
    let client = runtime.block_on(async {
        let kubeconfig = kube::config::Kubeconfig::read_from(cp.kubeconfig())?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        anyhow::Ok(kube::Client::try_from(config)?)
    })?;
    runtime.block_on(create_all(&client, &args))?;

    let loaded = tollgate_webhook::config::Config::load(&config)?;
    let set = tollgate_webhook::serve::load_policies(&loaded)?;
    let kinds = wanted(
        &set,
        &DEFAULT_KINDS
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>(),
        None,
    );
    let tollgate = std::env::var("TOLLGATE_BIN")
        .map(PathBuf::from)
        .or_else(|_| Ok::<_, anyhow::Error>(std::env::current_exe()?.with_file_name("tollgate")))?;
    let (mut lists, mut audits, mut rss) = (Vec::new(), Vec::new(), Vec::new());
    let mut judged = 0;
    let mut listed = 0;
    let mut violations = 0;
    for run in 0..args.runs {
        let started = Instant::now();
        listed = runtime.block_on(list_only(&client, &kinds, args.page_size))?;
        lists.push(started.elapsed().as_secs_f64());
        let timing = dir.join("time.txt");
        let out = Command::new("/usr/bin/time")
            .args(["-f", "%e %M", "-o"])
            .arg(&timing)
            .arg(&tollgate)
            .args(["audit", "--format", "json", "--config"])
            .arg(&config)
            .args([
                "--workers",
                &args.workers.to_string(),
                "--page-size",
                &args.page_size.to_string(),
            ])
            .output()
            .context("running /usr/bin/time tollgate audit")?;
        let report: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("tollgate audit: {}", String::from_utf8_lossy(&out.stderr)))?;
        judged = report["judged"].as_u64().unwrap_or(0);
        violations = report["policies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["violations"].as_u64())
            .sum::<u64>();
        let time = std::fs::read_to_string(&timing)?;
        // `Command exited with non-zero status 1` comes first when a deny
        // policy has violations (exit 1, as expected here).
        let mut fields = time.lines().last().unwrap_or("").split_whitespace();
        let seconds: f64 = fields.next().context("time: seconds")?.parse()?;
        let kib: f64 = fields.next().context("time: max RSS")?.parse()?;
        audits.push(seconds);
        rss.push(kib / 1024.0);
        eprintln!(
            "audit-scale: run {}: list {listed} objects {:.2} s, audit {judged} objects {seconds:.2} s, peak RSS {:.1} MiB",
            run + 1,
            lists[run],
            kib / 1024.0
        );
    }
    ensure!(
        judged >= (args.pods + args.deployments) as u64,
        "the audit judged {judged} objects, fewer than were created"
    );
    let (list, audit, peak) = (median(&mut lists), median(&mut audits), median(&mut rss));
    println!(
        "| objects listed | bare list (s) | tollgate audit (s) | audit / list | peak RSS (MiB) | objects judged | violations found |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {listed} | {list:.2} | {audit:.2} | {:.1}× | {peak:.1} | {judged} | {violations} |",
        audit / list
    );
    println!();
    println!(
        "Policies: the bundled set ({} policies) and {} Gatekeeper constraints over {} templates; `--workers {}`, page size {}; medians of {} runs.",
        set.policies().len(),
        set.constraints().count(),
        set.templates().len(),
        args.workers,
        args.page_size,
        args.runs
    );
    if let Some(keep) = &args.keep_dir {
        std::fs::write(
            keep.join("kubeconfig.path"),
            cp.kubeconfig().display().to_string(),
        )?;
        eprintln!("audit-scale: control plane kept up until stdin closes");
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
    }
    Ok(())
}
