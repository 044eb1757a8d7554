//! The audit through a real kube-apiserver: objects that got in while
//! admission only warned are found by `tollgate audit` and by the server's
//! periodic pass, with their team and namespace; the pass's OpenReports
//! Reports are created, updated when an object is fixed, and agree with
//! the CLI and the metrics.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::{Value, json};
use tollgate_e2e::registration::configurations;
use tollgate_e2e::{ControlPlane, Webhook, fixture, wait};

const ML: &str = "app-ml-team";
const DATA: &str = "app-data-team";
/// Every bundled deny policy set to warn, so that violating objects get in
/// (with a warning), as during a rollout before switching to deny.
const WARN_ONLY: &str = r#"
ownNamespace: tollgate-system
audit:
  intervalSeconds: 2
  maxResultsPerReport: 50
policies:
  overrides:
    image_tag: {enforcement: warn}
    team_label: {enforcement: warn}
    resource_limits: {enforcement: warn}
    service_type: {enforcement: warn}
    allowed_registries: {enforcement: warn}
"#;

fn objects() -> String {
    let pod_latest = |ns: &str, name: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": {"team": "x"}},
            "spec": {"containers": [{"name": "c", "image": "registry.example.com/app:latest",
                "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}}}]}})
    };
    let service = |ns: &str, name: &str, kind: &str| {
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"type": kind, "ports": [{"port": 80}]}})
    };
    let cronjob = json!({"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "nightly", "namespace": DATA, "labels": {"team": "data"}},
        "spec": {"schedule": "0 3 * * *", "suspend": true, "jobTemplate": {"spec": {"template": {
            "spec": {"restartPolicy": "Never", "containers": [{"name": "c",
                "image": "registry.example.com/etl:latest",
                "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}}}]}}}}}});
    let items = vec![
        pod_latest(ML, "notebook"),
        service(ML, "exposed", "NodePort"),
        service(ML, "internal", "ClusterIP"),
        cronjob,
        service(DATA, "api", "ClusterIP"),
    ];
    serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": items}))
        .unwrap_or_default()
}

/// `tollgate audit` against the control plane, as JSON, and its exit code.
fn cli_audit(
    cp: &ControlPlane,
    config: Option<&std::path::Path>,
    extra: &[&str],
) -> anyhow::Result<(i32, Value)> {
    cli_audit_as(cp.kubeconfig(), config, extra)
}

/// `tollgate audit` with the credentials of `kubeconfig`.
fn cli_audit_as(
    kubeconfig: &std::path::Path,
    config: Option<&std::path::Path>,
    extra: &[&str],
) -> anyhow::Result<(i32, Value)> {
    let mut command = Command::new(tollgate_e2e::binaries::tollgate_binary()?);
    command.args(["audit", "--format", "json", "--kubeconfig"]);
    command.arg(kubeconfig);
    if let Some(config) = config {
        command.arg("--config").arg(config);
    }
    command.args(extra);
    let out = command.output().context("running tollgate audit")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: Value = serde_json::from_str(&stdout).with_context(|| {
        format!(
            "tollgate audit printed no JSON: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((out.status.code().unwrap_or(-1), json))
}

/// (policy, kind, namespace/name, team) of every listed violation.
fn violations(audit: &Value) -> BTreeSet<(String, String, String, String)> {
    let mut out = BTreeSet::new();
    for policy in audit["policies"].as_array().into_iter().flatten() {
        for e in policy["listed"].as_array().into_iter().flatten() {
            out.insert((
                policy["policy"].as_str().unwrap_or("").to_owned(),
                e["kind"].as_str().unwrap_or("").to_owned(),
                format!(
                    "{}/{}",
                    e["namespace"].as_str().unwrap_or(""),
                    e["name"].as_str().unwrap_or("")
                ),
                e["team"].as_str().unwrap_or("").to_owned(),
            ));
        }
    }
    out
}

fn set(items: &[(&str, &str, &str, &str)]) -> BTreeSet<(String, String, String, String)> {
    items
        .iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
        .collect()
}

/// The namespace's report, or `None` while there is none.
fn report(cp: &ControlPlane, namespace: &str) -> Option<Value> {
    let out = cp.kubectl(
        &[
            "get",
            "reports.openreports.io",
            "tollgate-audit",
            "-n",
            namespace,
            "-o",
            "json",
        ],
        None,
    );
    out.success
        .then(|| serde_json::from_str(&out.stdout).ok())
        .flatten()
}

/// Results of `policy` in a report, by `kind namespace/name`.
fn report_subjects(report: &Value, policy: &str) -> BTreeSet<String> {
    report["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["policy"] == policy)
        .flat_map(|r| r["resources"].as_array().cloned().unwrap_or_default())
        .map(|s| {
            format!(
                "{} {}/{}",
                s["kind"].as_str().unwrap_or(""),
                s["namespace"].as_str().unwrap_or(""),
                s["name"].as_str().unwrap_or("")
            )
        })
        .collect()
}

fn metric(text: &str, policy: &str, team: &str) -> Option<f64> {
    text.lines()
        .find(|l| {
            l.starts_with("tollgate_audit_violations{")
                && l.contains(&format!("policy=\"{policy}\""))
                && l.contains(&format!("team=\"{team}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn the_audit_finds_what_got_in_and_reports_it() -> anyhow::Result<()> {
    let mut cp = ControlPlane::start()?;
    for ns in [ML, DATA, "tollgate-system"] {
        cp.kubectl(&["create", "namespace", ns], None).ok()?;
    }
    let crds =
        tollgate_e2e::binaries::workspace_root().join("charts/tollgate/crds/openreports.yaml");
    cp.kubectl(&["apply", "-f", &crds.display().to_string()], None)
        .ok()?;
    cp.kubectl(
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=30s",
            "crd/reports.openreports.io",
            "crd/clusterreports.openreports.io",
        ],
        None,
    )
    .ok()?;

    let webhook = Webhook::start_for(&cp, WARN_ONLY)?;
    // The validating webhook only: mutation would fix what is audited.
    let validating = configurations(&webhook.base_url(), webhook.ca_pem())["items"][1].clone();
    cp.apply_json(&validating)?;
    wait::until(
        "the webhook to warn on a latest tag",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let out = cp.kubectl(
                &["apply", "--dry-run=server", "-n", ML, "-f", "-"],
                Some(&fixture("pod-latest-tag.yaml")),
            );
            Ok(if out.success && out.stderr.contains("image_tag") {
                wait::Poll::Ready(())
            } else {
                wait::Poll::Pending(out.to_string())
            })
        },
    )?;
    let applied = cp.kubectl(&["apply", "-f", "-"], Some(&objects())).ok()?;
    ensure!(
        applied.stderr.contains("Warning"),
        "admission warned: {applied}"
    );

    // The CLI, restricted to two policies for an exact answer.
    let (code, found) = cli_audit(
        &cp,
        Some(webhook.config_path()),
        &["--policy", "image_tag", "--policy", "service_type"],
    )?;
    let expected = set(&[
        ("image_tag", "Pod", "app-ml-team/notebook", "ml"),
        ("image_tag", "CronJob", "app-data-team/nightly", "data"),
        ("service_type", "Service", "app-ml-team/exposed", "ml"),
    ]);
    ensure!(
        violations(&found) == expected,
        "tollgate audit found {:#?}, expected {expected:#?}",
        violations(&found)
    );
    ensure!(code == 0, "only warn policies violated: exit 0, got {code}");
    // With the bundled enforcement (deny), the same finding fails.
    let (code, _) = cli_audit(&cp, None, &["--policy", "image_tag", "--namespace", DATA])?;
    ensure!(
        code == 1,
        "a deny policy with violations exits 1, got {code}"
    );

    // The server's pass: reports in both namespaces, matching the CLI.
    let (_, all) = cli_audit(&cp, Some(webhook.config_path()), &["--limit", "1000"])?;
    let ml = wait::until(
        "the audit's Report in app-ml-team",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            Ok(match report(&cp, ML) {
                Some(r) if !report_subjects(&r, "service_type").is_empty() => wait::Poll::Ready(r),
                other => wait::Poll::Pending(format!("{other:?}\n{}", webhook.log_tail(20))),
            })
        },
    )?;
    let data = report(&cp, DATA).context("the audit's Report in app-data-team")?;
    ensure!(
        report_subjects(&ml, "image_tag")
            == BTreeSet::from(["Pod app-ml-team/notebook".to_owned()]),
        "{ml:#}"
    );
    ensure!(
        report_subjects(&data, "image_tag")
            == BTreeSet::from(["CronJob app-data-team/nightly".to_owned()]),
        "{data:#}"
    );
    for (namespace, report) in [(ML, &ml), (DATA, &data)] {
        let cli: u64 = all["policies"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|p| p["owners"].as_array().cloned().unwrap_or_default())
            .filter(|o| o["namespace"] == namespace)
            .filter_map(|o| o["count"].as_u64())
            .sum();
        let summary = &report["summary"];
        let reported = ["fail", "warn"]
            .iter()
            .filter_map(|k| summary[k].as_u64())
            .sum::<u64>();
        ensure!(
            cli == reported,
            "{namespace}: the CLI counts {cli} violations, the report {reported}: {summary}"
        );
        let team = report["results"][0]["properties"]["team"]
            .as_str()
            .unwrap_or("");
        ensure!(
            namespace.contains(team) && !team.is_empty(),
            "results carry the team: {report:#}"
        );
    }
    let text = webhook.metrics()?;
    ensure!(
        metric(&text, "image_tag", "ml") == Some(1.0),
        "tollgate_audit_violations for image_tag/ml:\n{text}"
    );
    ensure!(
        metric(&text, "service_type", "ml") == Some(1.0),
        "tollgate_audit_violations for service_type/ml"
    );
    ensure!(
        text.contains("tollgate_audit_last_run_timestamp_seconds"),
        "the last run's time is exported"
    );

    // Fixing the Service updates the report and the metric.
    let version = ml["metadata"]["resourceVersion"].clone();
    cp.kubectl(&["delete", "service", "exposed", "-n", ML], None)
        .ok()?;
    wait::until(
        "the report to drop the fixed Service",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            Ok(match report(&cp, ML) {
                Some(r) if report_subjects(&r, "service_type").is_empty() => wait::Poll::Ready(r),
                other => wait::Poll::Pending(format!("{other:?}")),
            })
        },
    )?;
    wait::until(
        "the metric to drop the fixed Service",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let text = webhook.metrics()?;
            Ok(match metric(&text, "service_type", "ml") {
                None => wait::Poll::Ready(()),
                Some(v) => wait::Poll::Pending(format!("still {v}")),
            })
        },
    )?;
    // Unchanged passes leave the report alone: no write, no new version.
    let before =
        report(&cp, DATA).context("app-data-team's report")?["metadata"]["resourceVersion"].clone();
    std::thread::sleep(Duration::from_secs(5));
    let after =
        report(&cp, DATA).context("app-data-team's report")?["metadata"]["resourceVersion"].clone();
    ensure!(
        before == after,
        "an unchanged report is not rewritten ({before} -> {after})"
    );
    ensure!(version != Value::Null, "reports carry a resourceVersion");

    // A kind the credentials may not list is named and skipped; the rest
    // is audited.
    let kubeconfig = limited_kubeconfig(&cp)?;
    let (_, found) = cli_audit_as(
        &kubeconfig,
        Some(webhook.config_path()),
        &["--policy", "image_tag"],
    )?;
    let skipped: Vec<String> = found["skippedKinds"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k.as_str().map(str::to_owned))
        .collect();
    ensure!(
        skipped.len() == 1 && skipped[0].starts_with("CronJob: no permission to list"),
        "the CronJobs it may not list, named once: {skipped:?}"
    );
    ensure!(
        violations(&found) == set(&[("image_tag", "Pod", "app-ml-team/notebook", "ml")]),
        "the Pods are still audited: {:#?}",
        violations(&found)
    );

    // The API server goes away: passes fail, counted and logged; the last
    // good figures stay, and so does the report once it is back.
    let failures = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("tollgate_audit_runs_total{result=\"failure\"}"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let before = failures(&webhook.metrics()?);
    cp.stop_apiserver();
    wait::until(
        "a failed pass to be counted",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let text = webhook.metrics()?;
            Ok(if failures(&text) > before {
                wait::Poll::Ready(())
            } else {
                wait::Poll::Pending(webhook.log_tail(5))
            })
        },
    )?;
    let text = webhook.metrics()?;
    ensure!(
        metric(&text, "image_tag", "ml") == Some(1.0),
        "the last good figures stay while the API server is away:\n{text}"
    );
    let log = webhook.log();
    ensure!(
        log.contains("audit pass failed") || log.contains("the Lease could not be had"),
        "the failed pass is logged"
    );
    cp.start_apiserver()?;
    let kept = report(&cp, DATA).context("app-data-team's report after the outage")?;
    ensure!(
        kept["metadata"]["resourceVersion"] == after,
        "the last good report is kept as it was: {kept:#}"
    );
    Ok(())
}

/// A kubeconfig for a ServiceAccount that may list everything the audit
/// wants but CronJobs.
fn limited_kubeconfig(cp: &ControlPlane) -> anyhow::Result<std::path::PathBuf> {
    let rbac = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: auditor, namespace: tollgate-system}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: auditor-without-cronjobs}
rules:
- apiGroups: [""]
  resources: [pods, services, configmaps, namespaces, replicationcontrollers]
  verbs: [list]
- apiGroups: [apps]
  resources: [deployments, statefulsets, daemonsets, replicasets]
  verbs: [list]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [list]
- apiGroups: [networking.k8s.io]
  resources: [ingresses]
  verbs: [list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: auditor-without-cronjobs}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: auditor-without-cronjobs}
subjects:
- {kind: ServiceAccount, name: auditor, namespace: tollgate-system}
"#;
    cp.kubectl(&["apply", "-f", "-"], Some(rbac)).ok()?;
    let token = cp
        .kubectl(
            &["create", "token", "auditor", "-n", "tollgate-system"],
            None,
        )
        .ok()?
        .stdout
        .trim()
        .to_owned();
    let path = cp.dir().join("auditor.kubeconfig");
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {
            "server": cp.server(),
            "certificate-authority": cp.ca_file(),
        }}],
        "users": [{"name": "auditor", "user": {"token": token}}],
        "contexts": [{"name": "auditor", "context": {"cluster": "test", "user": "auditor"}}],
        "current-context": "auditor",
    });
    std::fs::write(&path, serde_json::to_string(&kubeconfig)?)?;
    Ok(path)
}
