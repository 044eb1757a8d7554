//! Pod Security Standards through a real kube-apiserver with Pod Security
//! Admission on (the default): in a namespace labelled
//! `pod-security.kubernetes.io/enforce: restricted`, a team's plain
//! Deployment gets no Pods from PSA alone, and runs once Tollgate's mutation
//! fills what `restricted` requires; a Pod asking for root is refused by
//! Tollgate, with the check's message, before PSA sees it.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::{Value, json};
use tollgate_e2e::registration::MUTATING_WEBHOOK;
use tollgate_e2e::wait::{self, Poll};
use tollgate_e2e::{ControlPlane, Webhook, fixture};

const NAMESPACE: &str = "app-ml-team";

const PLAIN_POD: &str = "apiVersion: v1
kind: Pod
metadata: {name: plain, labels: {app: plain}}
spec:
  containers:
    - {name: app, image: registry.example.com/ml/featurizer:0.9.1}
";

const ROOT_POD: &str = "apiVersion: v1
kind: Pod
metadata: {name: as-root, labels: {app: as-root}}
spec:
  securityContext: {runAsUser: 0}
  containers:
    - {name: app, image: registry.example.com/ml/featurizer:0.9.1}
";

fn apply(cp: &ControlPlane, manifest: &str) -> tollgate_e2e::Output {
    cp.kubectl(&["apply", "-n", NAMESPACE, "-f", "-"], Some(manifest))
}

fn get_json(cp: &ControlPlane, args: &[&str]) -> anyhow::Result<Value> {
    tollgate_e2e::get_json(cp, NAMESPACE, args)
}

/// Waits until the Deployment's ReplicaSet reports that PSA refused its Pods.
fn wait_refused_by_psa(cp: &ControlPlane) -> anyhow::Result<String> {
    wait::until(
        "the ReplicaSet to report its Pods refused by PodSecurity",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let sets = get_json(cp, &["replicasets", "-l", "app=featurizer"])?;
            let messages: Vec<String> = sets["items"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|rs| rs["status"]["conditions"].as_array().cloned())
                .flatten()
                .filter_map(|c| c["message"].as_str().map(str::to_owned))
                .collect();
            Ok(
                match messages
                    .into_iter()
                    .find(|m| m.contains("violates PodSecurity"))
                {
                    Some(m) => Poll::Ready(m),
                    None => Poll::Pending(sets.to_string()),
                },
            )
        },
    )
}

#[test]
fn restricted_namespace_psa_alone_then_tollgate_mutation() {
    let cp = ControlPlane::start().unwrap_or_else(|e| panic!("starting the control plane: {e:#}"));
    let config = "policies:\n  overrides:\n    allowed_registries:\n      parameters:\n        registries: [\"registry.example.com/\"]\n";
    let webhook =
        Webhook::start_for(&cp, config).unwrap_or_else(|e| panic!("starting tollgate: {e:#}"));
    let run = || -> anyhow::Result<()> {
        cp.kubectl(&["create", "namespace", NAMESPACE], None).ok()?;
        cp.kubectl(
            &[
                "label",
                "namespace",
                NAMESPACE,
                "pod-security.kubernetes.io/enforce=restricted",
            ],
            None,
        )
        .ok()?;

        // PSA alone (no webhook registered yet): a plain Pod is refused,
        // and a plain Deployment is stored but gets no Pods.
        let out = apply(&cp, PLAIN_POD);
        ensure!(
            !out.success
                && out
                    .stderr
                    .contains("violates PodSecurity \"restricted:latest\""),
            "PSA did not refuse a plain Pod: {out}"
        );
        apply(&cp, &fixture("mutation/deployment-unlabelled.yaml")).ok()?;
        let refusal = wait_refused_by_psa(&cp)?;
        ensure!(
            refusal.contains("runAsNonRoot != true"),
            "unexpected refusal: {refusal}"
        );
        let pods = get_json(&cp, &["pods", "-l", "app=featurizer"])?;
        ensure!(
            pods["items"].as_array().is_some_and(Vec::is_empty),
            "PSA admitted Pods: {pods}"
        );
        cp.kubectl(
            &[
                "delete",
                "deployment",
                "featurizer",
                "-n",
                NAMESPACE,
                "--wait",
            ],
            None,
        )
        .ok()?;

        // With Tollgate: the same Deployment's Pods are admitted, carrying
        // the fields `restricted` requires.
        cp.register_webhook(&webhook.base_url(), webhook.ca_pem())?;
        apply(&cp, &fixture("mutation/deployment-unlabelled.yaml")).ok()?;
        let names = cp
            .wait_for_pods(NAMESPACE, "app=featurizer", Duration::from_secs(60))
            .context("the Deployment's Pods were not created with the webhook on")?;
        let pod = get_json(&cp, &["pod", &names[0]])?;
        let spec = &pod["spec"];
        ensure!(
            spec["securityContext"]["runAsNonRoot"] == true
                && spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault",
            "no restricted pod securityContext: {spec}"
        );
        let sc = &spec["containers"][0]["securityContext"];
        ensure!(
            sc["allowPrivilegeEscalation"] == false && sc["capabilities"]["drop"] == json!(["ALL"]),
            "no restricted container securityContext: {sc}"
        );

        // A Pod asking for root is not "fixed": Tollgate refuses it with
        // the check's message, in the mutating phase, before PSA.
        let out = apply(&cp, ROOT_POD);
        let expected = format!(
            "admission webhook \"{MUTATING_WEBHOOK}\" denied the request: [run_as_non_root]"
        );
        ensure!(
            !out.success
                && out.stderr.contains(&expected)
                && out.stderr.contains(
                    "[run_as_user] violates PodSecurity \"restricted:latest\": runAsUser=0 (pod must not set runAsUser=0)"
                ),
            "the root Pod was not refused by Tollgate with the check's message: {out}"
        );
        Ok(())
    };
    if let Err(e) = run() {
        panic!("{e:#}\n\n{}\n\n{}", webhook.log_tail(40), cp.log_tails(15));
    }
}
