//! Gatekeeper ConstraintTemplates and constraints as custom resources,
//! through a real kube-apiserver (`policies.watchConstraintTemplates`):
//! the chart's ConstraintTemplate CRD; a GitOps folder
//! (tests/fixtures/gatekeeper-crds) applied with `kubectl apply -f`
//! unchanged; the constraint CRDs the webhook creates; a workload denied
//! with the constraints' messages; a broken template's error, with its
//! line, in `status` while its last good version stays in force; a fix and
//! a deletion reloaded; and standing back once Gatekeeper's own webhook is
//! installed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use serde_json::Value;
use tollgate_e2e::control_plane::curl;
use tollgate_e2e::wait::{self, Poll};
use tollgate_e2e::{ControlPlane, Output, Webhook, binaries, fixtures_dir};

const TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(250);
const OWNER: &str = "[deployments-need-owner] Deployment unowned has no owner label: every workload names its owner";
const REPLICAS: &str = "[replicas-at-most-three] 5 replicas asked for, at most 3 allowed";

fn folder() -> PathBuf {
    fixtures_dir().join("gatekeeper-crds")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap_or_default()
}

struct Harness {
    cp: ControlPlane,
    webhook: Webhook,
}

impl Harness {
    fn kubectl(&self, args: &[&str]) -> Output {
        self.cp.kubectl(args, None)
    }

    fn get_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend(["-o", "json"]);
        let out = self.kubectl(&all).ok()?;
        Ok(serde_json::from_str(&out.stdout)?)
    }

    /// Applies `manifest` from stdin.
    fn apply_text(&self, manifest: &str) -> Output {
        self.cp.kubectl(&["apply", "-f", "-"], Some(manifest))
    }

    fn step(&self, name: &str, case: impl FnOnce(&Harness) -> anyhow::Result<()>) {
        let started = Instant::now();
        if let Err(err) = case(self) {
            panic!(
                "step {name} failed: {err:#}\n\n{}\n\n{}",
                self.webhook.log_tail(60),
                self.cp.log_tails(15)
            );
        }
        eprintln!("step {name}: ok in {:.1}s", started.elapsed().as_secs_f64());
    }

    /// Waits until `check` holds on a ConstraintTemplate's status.
    fn wait_template_status(
        &self,
        name: &str,
        what: &str,
        check: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        wait::until(what, TIMEOUT, POLL, || {
            let object = self.get_json(&["constrainttemplate", name])?;
            Ok(if check(&object["status"]) {
                Poll::Ready(object["status"].clone())
            } else {
                Poll::Pending(object["status"].to_string())
            })
        })
    }

    /// Waits until a server-side dry run of the workload is denied with
    /// exactly `lines`.
    fn wait_denied_with(&self, lines: &[&str]) -> anyhow::Result<()> {
        let workload = folder().join("workloads");
        wait::until(
            &format!("the workload to be denied with {lines:?}"),
            TIMEOUT,
            POLL,
            || {
                let out = self.kubectl(&["apply", "--dry-run=server", "-f", path(&workload)]);
                Ok(match denial(&out) {
                    Some(got) if got == lines => Poll::Ready(()),
                    _ => Poll::Pending(out.to_string()),
                })
            },
        )
    }
}

/// What `/readyz` says.
fn readyz(webhook: &Webhook) -> anyhow::Result<String> {
    get(webhook, "/readyz")
}

fn get(webhook: &Webhook, what: &str) -> anyhow::Result<String> {
    let ca = webhook.dir().join("readyz-ca.crt");
    std::fs::write(&ca, webhook.ca_pem())?;
    let url = format!("{}{what}", webhook.base_url());
    curl(&["-sS", "--max-time", "5", "--cacert", path(&ca), &url])
}

/// Whether `/metrics` has the exact sample line `line`.
fn has_metric(webhook: &Webhook, line: &str) -> anyhow::Result<bool> {
    Ok(get(webhook, "/metrics")?.lines().any(|l| l == line))
}

/// The lines of validate.tollgate.io's denial, sorted.
fn denial(out: &Output) -> Option<Vec<String>> {
    let (_, message) = out
        .stderr
        .split_once("admission webhook \"validate.tollgate.io\" denied the request: ")?;
    let mut lines: Vec<String> = message.trim().lines().map(str::to_owned).collect();
    lines.sort();
    Some(lines)
}

fn by_pod(status: &Value) -> Option<&Value> {
    status["byPod"].as_array()?.first()
}

#[test]
fn templates_and_constraints_as_custom_resources() {
    let cp = ControlPlane::start().unwrap_or_else(|e| panic!("starting the control plane: {e:#}"));
    let crds = binaries::workspace_root().join("charts/tollgate/crds");
    cp.kubectl(&["apply", "-f", path(&crds)], None)
        .ok()
        .and_then(|_| {
            cp.kubectl(
                &[
                    "wait",
                    "--for=condition=Established",
                    "--timeout=30s",
                    "crd/constrainttemplates.templates.gatekeeper.sh",
                ],
                None,
            )
            .ok()
        })
        .unwrap_or_else(|e| panic!("installing the chart's CRD: {e:#}"));
    // Validation only, so the denial is exactly the constraints'.
    // With the audit every 2 s: it writes the constraints' audit fields.
    let config = "ownNamespace: tollgate-system\naudit:\n  intervalSeconds: 2\n  reports: false\nmutate:\n  enabled: false\npolicies:\n  watchConstraintTemplates: true\n  overrides:\n    allowed_registries:\n      parameters:\n        registries: [\"registry.example.com/\"]\n";
    let webhook =
        Webhook::start_for(&cp, config).unwrap_or_else(|e| panic!("starting tollgate: {e:#}"));
    let h = Harness { cp, webhook };

    h.step("register the webhook", |h| {
        h.cp.register_webhook(&h.webhook.base_url(), h.webhook.ca_pem())?;
        h.kubectl(&["create", "namespace", "app-ml-team"]).ok()?;
        h.kubectl(&["create", "namespace", "tollgate-system"])
            .ok()?;
        // In before the constraints: what the audit finds later.
        let workload = std::fs::read_to_string(folder().join("workloads/deployment-unowned.yaml"))?;
        h.apply_text(&workload.replace("name: unowned", "name: legacy"))
            .ok()?;
        Ok(())
    });

    h.step(
        "kubectl apply -f the folder, retried until the constraint CRDs exist",
        |h| {
            // What a GitOps tool does: apply everything, retry what failed.
            // The templates go in at once; the constraints fail with "no
            // matches for kind" until the webhook's CRDs are established.
            let started = Instant::now();
            h.kubectl(&["apply", "-f", path(&folder().join("templates"))])
                .ok()?;
            let attempts = std::cell::Cell::new(0);
            wait::until("the constraints to be accepted", TIMEOUT, POLL, || {
                attempts.set(attempts.get() + 1);
                let out = h.kubectl(&["apply", "-f", path(&folder().join("constraints"))]);
                Ok(if out.success {
                    Poll::Ready(())
                } else {
                    Poll::Pending(out.to_string())
                })
            })?;
            eprintln!(
                "constraints accepted {:.1}s after the templates, attempt {}",
                started.elapsed().as_secs_f64(),
                attempts.get()
            );
            h.wait_denied_with(&[OWNER, REPLICAS])?;
            // The whole folder again, as a re-sync does: nothing changes, the
            // workload is refused.
            let out = h.kubectl(&["apply", "-R", "-f", path(&folder())]);
            ensure!(
                out.stdout.matches("unchanged").count() == 4,
                "templates and constraints should be unchanged: {out}"
            );
            ensure!(
                denial(&out) == Some(vec![OWNER.to_owned(), REPLICAS.to_owned()]),
                "the workload should be denied with both messages: {out}"
            );
            Ok(())
        },
    );

    h.step("the constraint CRDs are Gatekeeper's shape", |h| {
        let crd = h.get_json(&["crd", "k8srequiredowners.constraints.gatekeeper.sh"]);
        ensure!(crd.is_err(), "a plural other than Gatekeeper's");
        let crd = h.get_json(&["crd", "k8srequiredowner.constraints.gatekeeper.sh"])?;
        ensure!(crd["spec"]["scope"] == "Cluster", "{crd}");
        ensure!(
            crd["metadata"]["labels"]["gatekeeper.sh/constraint"] == "yes",
            "{}",
            crd["metadata"]
        );
        ensure!(
            crd["metadata"]["ownerReferences"][0]["name"] == "k8srequiredowner",
            "{}",
            crd["metadata"]
        );
        // The schema is the template's: a string where an integer belongs
        // is refused by the apiserver.
        let out = h.apply_text(
            "apiVersion: constraints.gatekeeper.sh/v1beta1\nkind: K8sMaxReplicas\nmetadata: {name: wrong}\nspec:\n  parameters: {max: three}\n",
        );
        ensure!(
            !out.success && out.stderr.contains("spec.parameters.max"),
            "{out}"
        );
        Ok(())
    });

    h.step(
        "statuses: created, byPod with this replica, enforced",
        |h| {
            for name in ["k8srequiredowner", "k8smaxreplicas"] {
                let status = h.wait_template_status(name, "created", |s| {
                    s["created"] == true
                        && by_pod(s)
                            .is_some_and(|p| p["errors"].is_null() && p["observedGeneration"] == 1)
                })?;
                let pod = by_pod(&status).context("no byPod")?;
                ensure!(
                    pod["id"].as_str().is_some_and(|id| !id.is_empty()),
                    "{status}"
                );
            }
            let constraint = h.get_json(&["k8smaxreplicas", "replicas-at-most-three"])?;
            ensure!(
                by_pod(&constraint["status"]).is_some_and(|p| p["enforced"] == true),
                "{}",
                constraint["status"]
            );
            Ok(())
        },
    );

    h.step(
        "the audit's fields on the constraints, beside the replicas' byPod",
        |h| {
            let status = wait::until("the audit's fields", TIMEOUT, POLL, || {
                let object = h.get_json(&["k8smaxreplicas", "replicas-at-most-three"])?;
                let status = &object["status"];
                Ok(if status["totalViolations"] == 1 {
                    Poll::Ready(status.clone())
                } else {
                    Poll::Pending(status.to_string())
                })
            })?;
            ensure!(
                status["violations"]
                    == serde_json::json!([{
                        "enforcementAction": "deny", "group": "apps", "version": "v1",
                        "kind": "Deployment", "namespace": "app-ml-team", "name": "legacy",
                        "message": "5 replicas asked for, at most 3 allowed",
                    }]),
                "{status:#}"
            );
            ensure!(
                status["auditTimestamp"]
                    .as_str()
                    .is_some_and(|t| t.ends_with('Z')),
                "{status:#}"
            );
            ensure!(
                by_pod(&status).is_some_and(|p| p["enforced"] == true),
                "the replica's entry stays: {status:#}"
            );
            Ok(())
        },
    );

    h.step("a constraint Tollgate cannot read: its error in status, the others still decide", |h| {
        h.apply_text(
            "apiVersion: constraints.gatekeeper.sh/v1beta1\nkind: K8sMaxReplicas\nmetadata: {name: blocking}\nspec:\n  enforcementAction: block\n  parameters: {max: 1}\n",
        )
        .ok()?;
        let status = wait::until("the constraint's error in status", TIMEOUT, POLL, || {
            let object = h.get_json(&["k8smaxreplicas", "blocking"])?;
            Ok(match by_pod(&object["status"]) {
                Some(pod) if pod["errors"].is_array() => Poll::Ready(pod.clone()),
                _ => Poll::Pending(object["status"].to_string()),
            })
        })?;
        ensure!(
            status["enforced"] == false
                && status["errors"][0]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("spec.enforcementAction: unsupported value \"block\"")),
            "{status}"
        );
        h.wait_denied_with(&[OWNER, REPLICAS])?;
        h.kubectl(&["delete", "k8smaxreplicas", "blocking"]).ok()?;
        Ok(())
    });

    let template = std::fs::read_to_string(folder().join("templates/k8smaxreplicas.yaml"))
        .unwrap_or_else(|e| panic!("{e}"));
    h.step(
        "a broken template: its error and line in status, its last good version in force",
        |h| {
            let broken = template.replace(
                "replicas > input.parameters.max\n",
                "replicas > input.parameters.max +\n",
            );
            ensure!(broken != template, "the fixture changed shape");
            h.apply_text(&broken).ok()?;
            let status = h.wait_template_status("k8smaxreplicas", "the error in status", |s| {
                by_pod(s).is_some_and(|p| p["observedGeneration"] == 2 && p["errors"].is_array())
            })?;
            let error = &by_pod(&status).context("no byPod")?["errors"][0];
            ensure!(error["code"] == "ingest_error", "{status}");
            let location = error["location"].as_str().unwrap_or_default();
            ensure!(
                location.starts_with("rego:") && location.split(':').count() == 3,
                "no line in {status}"
            );
            eprintln!("the broken template's status error: {}", error["message"]);
            ensure!(
                has_metric(
                    &h.webhook,
                    r#"tollgate_cluster_gatekeeper_objects{object="template",state="error"} 1"#
                )?,
                "the broken template is not counted"
            );
            // The last good version of the broken template, and the other
            // template, still decide.
            h.wait_denied_with(&[OWNER, REPLICAS])?;
            h.apply_text(&template).ok()?;
            h.wait_template_status("k8smaxreplicas", "the error cleared", |s| {
                by_pod(s).is_some_and(|p| p["observedGeneration"] == 3 && p["errors"].is_null())
            })?;
            Ok(())
        },
    );

    h.step("a changed template is reloaded, beside another replica's status", |h| {
        // Another replica's entry, applied as it would apply it: byPod is
        // keyed by id, so the two replicas' entries merge.
        h.cp.kubectl(
            &[
                "apply",
                "--server-side",
                "--subresource=status",
                "--field-manager=tollgate-other-replica",
                "-f",
                "-",
            ],
            Some(
                "apiVersion: templates.gatekeeper.sh/v1\nkind: ConstraintTemplate\nmetadata: {name: k8smaxreplicas}\nstatus:\n  byPod:\n  - {id: other-replica, observedGeneration: 3}\n",
            ),
        )
        .ok()?;
        let changed = template.replace("at most %v allowed", "at most %v permitted");
        h.apply_text(&changed).ok()?;
        h.wait_denied_with(&[OWNER, &REPLICAS.replace("allowed", "permitted")])?;
        let status = h.wait_template_status("k8smaxreplicas", "both replicas' entries", |s| {
            let ids: Vec<(&str, i64)> = s["byPod"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p["id"].as_str()?, p["observedGeneration"].as_i64()?)))
                .collect();
            ids.len() == 2 && ids.contains(&("other-replica", 3)) && ids.iter().any(|(_, g)| *g == 4)
        })?;
        eprintln!("byPod of two replicas: {}", status["byPod"]);
        h.apply_text(&template).ok()?;
        h.wait_denied_with(&[OWNER, REPLICAS])
    });

    h.step(
        "a deleted template: its constraints lifted, its CRD collected",
        |h| {
            h.kubectl(&["delete", "constrainttemplate", "k8srequiredowner"])
                .ok()?;
            h.wait_denied_with(&[REPLICAS])?;
            wait::until("the CRD to be garbage-collected", TIMEOUT, POLL, || {
                let out = h.kubectl(&["get", "crd", "k8srequiredowner.constraints.gatekeeper.sh"]);
                Ok(if out.is_not_found() {
                    Poll::Ready(())
                } else {
                    Poll::Pending(out.to_string())
                })
            })
        },
    );

    h.step("Gatekeeper's webhook installed: Tollgate stands back", |h| {
        h.apply_text(
            "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\nmetadata:\n  name: gatekeeper-validating-webhook-configuration\nwebhooks: []\n",
        )
        .ok()?;
        wait::until("/readyz to say why", Duration::from_secs(40), POLL, || {
            let body = readyz(&h.webhook)?;
            Ok(if body.contains("Gatekeeper's webhook is installed") {
                Poll::Ready(())
            } else {
                Poll::Pending(body)
            })
        })?;
        // The templates' policies are out of force (Gatekeeper enforces
        // them), and nothing is written: a new template gets no CRD.
        h.kubectl(&["apply", "--dry-run=server", "-f", path(&folder().join("workloads"))])
            .ok()
            .context("the workload should be admitted once Tollgate stands back")?;
        let owner = std::fs::read_to_string(folder().join("templates/k8srequiredowner.yaml"))?;
        h.apply_text(&owner).ok()?;
        std::thread::sleep(Duration::from_secs(5));
        ensure!(
            h.kubectl(&["get", "crd", "k8srequiredowner.constraints.gatekeeper.sh"])
                .is_not_found(),
            "a constraint CRD was written while Gatekeeper's webhook is installed"
        );
        let status = &h.get_json(&["constrainttemplate", "k8srequiredowner"])?["status"];
        ensure!(status.is_null(), "a status was written: {status}");
        ensure!(
            h.webhook.log().contains("standing back from Gatekeeper resources"),
            "no log line says why"
        );
        ensure!(
            has_metric(&h.webhook, "tollgate_gatekeeper_standing_back 1")?,
            "tollgate_gatekeeper_standing_back is not 1"
        );
        Ok(())
    });

    h.step("a replica started while Gatekeeper's webhook is installed refuses at once", |h| {
        let second = Webhook::start_for(&h.cp, config)?;
        let body = readyz(&second)?;
        ensure!(
            body.contains("ConstraintTemplates: not taking over")
                && body.contains(
                    "ValidatingWebhookConfiguration gatekeeper-validating-webhook-configuration exists"
                ),
            "{body}"
        );
        Ok(())
    });
}
