//! The mutating webhook through a real kube-apiserver and
//! controller-manager: what is stored, and what the Pods created from it
//! carry, is what the team would have written had it known the platform's
//! rules.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::{Value, json};
use tollgate_e2e::{ControlPlane, Output, Webhook, fixture};

const NAMESPACE: &str = "app-ml-team";

fn get_json(cp: &ControlPlane, args: &[&str]) -> anyhow::Result<Value> {
    tollgate_e2e::get_json(cp, NAMESPACE, args)
}

fn apply(cp: &ControlPlane, name: &str, extra: &[&str]) -> Output {
    let mut args = vec!["apply", "-n", NAMESPACE];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-f", "-"]);
    cp.kubectl(&args, Some(&fixture(&format!("mutation/{name}"))))
}

fn check_pod_spec(spec: &Value, what: &str) -> anyhow::Result<()> {
    ensure!(
        spec["securityContext"]["runAsNonRoot"] == true
            && spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault",
        "{what}: no restricted pod securityContext: {spec}"
    );
    let c = &spec["containers"][0];
    ensure!(
        c["securityContext"]["allowPrivilegeEscalation"] == false
            && c["securityContext"]["capabilities"]["drop"] == json!(["ALL"]),
        "{what}: no restricted container securityContext: {c}"
    );
    ensure!(
        c["resources"]
            == json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}),
        "{what}: not the default resources: {}",
        c["resources"]
    );
    Ok(())
}

#[test]
fn mutations_through_real_apiserver() {
    let cp = ControlPlane::start().unwrap_or_else(|e| panic!("starting the control plane: {e:#}"));
    let config = "teams:\n  overrides:\n    ml:\n      quota: {gpu: \"2\"}\npolicies:\n  overrides:\n    allowed_registries:\n      parameters:\n        registries: [\"registry.example.com/\"]\n";
    let webhook =
        Webhook::start_for(&cp, config).unwrap_or_else(|e| panic!("starting tollgate: {e:#}"));
    let run = || -> anyhow::Result<()> {
        cp.register_webhook(&webhook.base_url(), webhook.ca_pem())?;
        cp.kubectl(&["create", "namespace", NAMESPACE], None).ok()?;

        // A Deployment with no team label, resources or security context.
        apply(&cp, "deployment-unlabelled.yaml", &[]).ok()?;
        let stored = get_json(&cp, &["deployment", "featurizer"])?;
        ensure!(
            stored["metadata"]["labels"]["team"] == "ml",
            "stored Deployment unlabelled: {}",
            stored["metadata"]
        );
        let template = &stored["spec"]["template"];
        ensure!(
            template["metadata"]["labels"]["team"] == "ml",
            "template unlabelled"
        );
        check_pod_spec(&template["spec"], "the stored Deployment's template")?;
        let pods = cp
            .wait_for_pods(NAMESPACE, "app=featurizer", Duration::from_secs(60))
            .context("the Deployment's Pods were not created")?;
        let pod = get_json(&cp, &["pod", &pods[0]])?;
        ensure!(
            pod["metadata"]["labels"]["team"] == "ml",
            "Pod unlabelled: {}",
            pod["metadata"]
        );
        check_pod_spec(&pod["spec"], "a Pod created from it")?;
        ensure!(
            pod["spec"]
                .get("tolerations")
                .is_none_or(|t| !t.to_string().contains("nvidia")),
            "a CPU Pod got GPU tolerations"
        );

        // GPU placement for the GPU Pod only.
        apply(&cp, "pod-gpu.yaml", &[]).ok()?;
        let gpu = get_json(&cp, &["pod", "train-gpu"])?;
        ensure!(
            gpu["spec"]["tolerations"]
                .as_array()
                .is_some_and(|t| t.contains(
                    &json!({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"})
                )),
            "the GPU Pod has no GPU toleration: {}",
            gpu["spec"]["tolerations"]
        );
        ensure!(
            gpu["spec"]["nodeSelector"] == json!({"nvidia.com/gpu.present": "true"}),
            "no GPU node selector"
        );
        apply(&cp, "pod-cpu.yaml", &[]).ok()?;
        let cpu = get_json(&cp, &["pod", "train-cpu"])?;
        ensure!(
            cpu["spec"].get("nodeSelector").is_none(),
            "the CPU Pod got a node selector: {}",
            cpu["spec"]
        );

        // A team without GPU quota is told so.
        cp.kubectl(&["create", "namespace", "app-data-team"], None)
            .ok()?;
        let out = cp.kubectl(
            &["apply", "-n", "app-data-team", "-f", "-"],
            Some(&fixture("mutation/pod-gpu.yaml")),
        );
        ensure!(
            !out.success
                && out.stderr.contains("[gpu_quota] container \"train\" requests 1 nvidia.com/gpu, but team \"data\" has a GPU quota of 0"),
            "a GPU Pod of a team without GPU quota was not refused: {out}"
        );

        // Another team's label is refused.
        let out = apply(&cp, "deployment-other-team.yaml", &[]);
        ensure!(
            !out.success && out.stderr.contains("[team_label] Deployment \"borrowed\" carries the label team=data, but its namespace belongs to team \"ml\""),
            "another team's label was not refused: {out}"
        );

        // A server-side dry run is mutated and validated, and creates nothing.
        let dry = cp.kubectl(
            &[
                "apply",
                "-n",
                NAMESPACE,
                "--dry-run=server",
                "-o",
                "json",
                "-f",
                "-",
            ],
            Some(&fixture("mutation/deployment-unlabelled.yaml").replace("featurizer", "dry")),
        );
        let dry = dry.ok()?;
        let shown: Value = serde_json::from_str(&dry.stdout)?;
        ensure!(
            shown["metadata"]["labels"]["team"] == "ml",
            "the dry run was not mutated: {}",
            shown["metadata"]
        );
        let get = cp.kubectl(&["get", "deployment", "dry", "-n", NAMESPACE], None);
        ensure!(
            get.is_not_found(),
            "the dry run created the Deployment: {get}"
        );
        Ok(())
    };
    if let Err(e) = run() {
        panic!("{e:#}\n\n{}\n\n{}", webhook.log_tail(40), cp.log_tails(15));
    }
}
