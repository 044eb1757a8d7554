//! Policies from ConfigMaps labelled `tollgate.io/policy`, watched through
//! a real kube-apiserver: a new ConfigMap is enforced without a restart, a
//! broken one is refused while the last good set stays in force, and a
//! deleted one stops being enforced.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::json;
use tollgate_e2e::{ControlPlane, Output, Webhook, fixture, fixtures_dir, wait};

const NAMESPACE: &str = "tollgate-system";
const DENIAL: &str = r#"[pods-need-owner] you must provide labels: {"owner"}"#;
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

fn configmap(rego_template: &str) -> String {
    let constraint = r#"apiVersion: constraints.gatekeeper.sh/v1beta1
kind: K8sRequiredLabels
metadata:
  name: pods-need-owner
spec:
  match:
    kinds:
      - apiGroups: [""]
        kinds: ["Pod"]
  parameters:
    labels:
      - key: owner
"#;
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "required-labels",
            "namespace": NAMESPACE,
            "labels": {"tollgate.io/policy": "true"}
        },
        "data": {
            "template.yaml": rego_template,
            "constraint.yaml": constraint,
        }
    })
    .to_string()
}

fn dry_run_compliant_pod(cp: &ControlPlane) -> Output {
    cp.kubectl(
        &["apply", "--dry-run=server", "-n", "app-ml-team", "-f", "-"],
        Some(&fixture("pod-compliant.yaml")),
    )
}

fn wait_until(cp: &ControlPlane, what: &str, denied: bool) -> anyhow::Result<()> {
    wait::until(what, RELOAD_TIMEOUT, Duration::from_millis(250), || {
        let out = dry_run_compliant_pod(cp);
        let is_denied = !out.success && out.stderr.contains(DENIAL);
        Ok(if is_denied == denied {
            wait::Poll::Ready(())
        } else {
            wait::Poll::Pending(out.to_string())
        })
    })
}

#[test]
fn policies_from_configmaps_are_hot_reloaded() {
    let cp = ControlPlane::start().unwrap_or_else(|e| panic!("starting the control plane: {e:#}"));
    let config = format!(
        "ownNamespace: {NAMESPACE}\npolicies:\n  watchConfigMaps: true\n  overrides:\n    allowed_registries:\n      parameters:\n        registries: [\"registry.example.com/\"]\n"
    );
    let webhook =
        Webhook::start_for(&cp, &config).unwrap_or_else(|e| panic!("starting tollgate: {e:#}"));
    let run = || -> anyhow::Result<()> {
        cp.register_webhook(&webhook.base_url(), webhook.ca_pem())?;
        for ns in [NAMESPACE, "app-ml-team"] {
            cp.kubectl(&["create", "namespace", ns], None).ok()?;
        }
        dry_run_compliant_pod(&cp)
            .ok()
            .context("before any ConfigMap, the compliant Pod is admitted")?;

        let template = std::fs::read_to_string(
            fixtures_dir().join("gatekeeper/requiredlabels/template.yaml"),
        )?;
        cp.kubectl(&["apply", "-f", "-"], Some(&configmap(&template)))
            .ok()?;
        wait_until(&cp, "the ConfigMap's constraint to be enforced", true)?;

        let broken = template.replace("count(missing) > 0", "count(missing) >");
        ensure!(broken != template, "the fixture changed shape");
        cp.kubectl(&["apply", "-f", "-"], Some(&configmap(&broken)))
            .ok()?;
        wait::until(
            "the broken ConfigMap to be refused",
            RELOAD_TIMEOUT,
            Duration::from_millis(250),
            || {
                let log = webhook.log_tail(50);
                Ok(
                    if log.contains("policy reload failed; keeping the last good policies") {
                        wait::Poll::Ready(())
                    } else {
                        wait::Poll::Pending(log)
                    },
                )
            },
        )?;
        let out = dry_run_compliant_pod(&cp);
        ensure!(
            !out.success && out.stderr.contains(DENIAL),
            "the last good policies were not kept: {out}"
        );

        cp.kubectl(
            &["delete", "configmap", "required-labels", "-n", NAMESPACE],
            None,
        )
        .ok()?;
        wait_until(
            &cp,
            "the deleted ConfigMap's constraint to be lifted",
            false,
        )?;
        Ok(())
    };
    if let Err(e) = run() {
        panic!("{e:#}\n\n{}\n\n{}", webhook.log_tail(40), cp.log_tails(15));
    }
}
