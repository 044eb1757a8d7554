//! Sidecar injection through a real kube-apiserver and controller-manager:
//! on a current apiserver (`mode: auto` resolves to native) workspace Pods
//! and a Job's Pod get exactly one proxy, as the first init container with
//! `restartPolicy: Always`, and the apiserver stores it so; opted-out and
//! exempt Pods get none; re-applying changes nothing; an injected Pod passes
//! the bundled policies (server-side dry run). A workspace's proxy is told
//! its owner (the workspace label's value) and its team (the namespace's);
//! a workspace Deployment naming no owner is refused with how to name one.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::{Value, json};
use tollgate_e2e::wait::{self, Poll};
use tollgate_e2e::{ControlPlane, Webhook, fixture};

const NAMESPACE: &str = "app-ml-team";

/// The proxy of a Pod injected in native mode: the first init container,
/// restartable, and no plain container of that name.
fn native_proxy<'a>(pod: &'a Value, what: &str) -> anyhow::Result<&'a Value> {
    ensure!(
        proxies(pod) == 1,
        "{what}: expected one tollgate-proxy in {}",
        pod["spec"]
    );
    let first = &pod["spec"]["initContainers"][0];
    ensure!(
        first["name"] == "tollgate-proxy" && first["restartPolicy"] == "Always",
        "{what}: the proxy is not the first init container with restartPolicy Always \
         (a plain sidecar?): {}",
        pod["spec"]
    );
    Ok(first)
}

fn proxies(pod: &Value) -> usize {
    ["containers", "initContainers"]
        .iter()
        .flat_map(|list| pod["spec"][list].as_array().into_iter().flatten())
        .filter(|c| c["name"] == "tollgate-proxy")
        .count()
}

#[test]
fn sidecar_injection_through_real_apiserver() {
    let cp = ControlPlane::start().unwrap_or_else(|e| panic!("starting the control plane: {e:#}"));
    let config = "mutate:\n  sidecar:\n    image: registry.example.com/tollgate/proxy:0.1.0\npolicies:\n  overrides:\n    allowed_registries:\n      parameters:\n        registries: [\"registry.example.com/\"]\n";
    let webhook =
        Webhook::start_for(&cp, config).unwrap_or_else(|e| panic!("starting tollgate: {e:#}"));
    let get = |kind: &str, name: &str, ns: &str| -> anyhow::Result<Value> {
        let out = cp
            .kubectl(&["get", kind, name, "-n", ns, "-o", "json"], None)
            .ok()?;
        serde_json::from_str(&out.stdout).context("kubectl printed no JSON")
    };
    let apply = |ns: &str, name: &str, extra: &[&str]| {
        let mut args = vec!["apply", "-n", ns];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-f", "-"]);
        cp.kubectl(&args, Some(&fixture(&format!("sidecar/{name}"))))
    };
    let run = || -> anyhow::Result<()> {
        cp.register_webhook(&webhook.base_url(), webhook.ca_pem())?;
        cp.kubectl(&["create", "namespace", NAMESPACE], None).ok()?;

        apply(NAMESPACE, "workspace-deployment.yaml", &[]).ok()?;
        let pods = cp
            .wait_for_pods(NAMESPACE, "app=code-alice", Duration::from_secs(60))
            .context("the workspace Deployment's Pods were not created")?;
        let pod = get("pod", &pods[0], NAMESPACE)?;
        let proxy = native_proxy(&pod, "the workspace Deployment's Pod")?;
        ensure!(
            proxy["ports"][0]["name"] == "tollgate-https",
            "ports: {}",
            proxy["ports"]
        );
        ensure!(
            proxy["env"].as_array().is_some_and(|e| e
                .iter()
                .any(|v| v["name"] == "TOLLGATE_APP_PORT" && v["value"] == "8080")),
            "the app port is not passed on: {}",
            proxy["env"]
        );
        let env = |name: &str| {
            proxy["env"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == name)
                .map(|v| v["value"].clone())
        };
        ensure!(
            env("TOLLGATE_WORKSPACE_OWNER") == Some(json!("ml-user-1"))
                && env("TOLLGATE_TEAM") == Some(json!("ml")),
            "the workspace's owner and team are not passed on: {}",
            proxy["env"]
        );
        let refused = apply(NAMESPACE, "workspace-no-owner-deployment.yaml", &[]);
        ensure!(
            !refused.success
                && refused.stderr.contains("denied the request")
                && refused.stderr.contains(
                    "the pod template of Deployment \"code-nobody\" is a workspace \
                     (label tollgate.io/workspace) but names no owner"
                )
                && refused
                    .stderr
                    .contains("for example `tollgate.io/workspace: ml-user-1`"),
            "a workspace Deployment without an owner was not refused with the message: {refused}"
        );
        ensure!(
            cp.kubectl(&["get", "deployment", "code-nobody", "-n", NAMESPACE], None)
                .is_not_found(),
            "the ownerless workspace Deployment was stored"
        );
        ensure!(
            pod["metadata"]["annotations"]["tollgate.io/injected"].is_string(),
            "no status annotation"
        );

        // The template was never touched, so re-applying changes nothing:
        // the Deployment keeps its generation, and once the controller has
        // observed it (an event, not a sleep) there is still one ReplicaSet.
        let before = get("deployment", "code-alice", NAMESPACE)?;
        apply(NAMESPACE, "workspace-deployment.yaml", &[]).ok()?;
        let generation = before["metadata"]["generation"].clone();
        wait::until(
            "the deployment controller to observe the re-applied Deployment",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                let now = get("deployment", "code-alice", NAMESPACE)?;
                ensure!(
                    now["metadata"]["generation"] == generation,
                    "re-applying changed the Deployment (generation {generation} -> {})",
                    now["metadata"]["generation"]
                );
                Ok(if now["status"]["observedGeneration"] == generation {
                    Poll::Ready(())
                } else {
                    Poll::Pending(now["status"].to_string())
                })
            },
        )?;
        let sets = cp
            .kubectl(
                &[
                    "get",
                    "replicasets",
                    "-n",
                    NAMESPACE,
                    "-l",
                    "app=code-alice",
                    "-o",
                    "name",
                ],
                None,
            )
            .ok()?;
        ensure!(
            sets.stdout.lines().count() == 1,
            "re-applying created a ReplicaSet: {}",
            sets.stdout
        );
        let again = get("pod", &pods[0], NAMESPACE)?;
        ensure!(
            again["metadata"]["resourceVersion"] == pod["metadata"]["resourceVersion"],
            "re-applying the Deployment changed its Pod: {} -> {}",
            pod["spec"],
            again["spec"]
        );

        // A Job's Pod: the native sidecar lets the Job complete (no kubelet
        // runs here, so the stored spec is what is checked).
        apply(NAMESPACE, "task-job.yaml", &[]).ok()?;
        let job = get("job", "train-step", NAMESPACE)?;
        ensure!(
            proxies(&json!({"spec": job["spec"]["template"]["spec"]})) == 0,
            "the Job's template was injected; only its Pods should be: {}",
            job["spec"]["template"]
        );
        let pods = cp
            .wait_for_pods(NAMESPACE, "job-name=train-step", Duration::from_secs(60))
            .context("the Job's Pod was not created")?;
        let pod = get("pod", &pods[0], NAMESPACE)?;
        native_proxy(&pod, "the Job's Pod")?;
        ensure!(
            pod["spec"]["containers"].as_array().map(Vec::len) == Some(1)
                && pod["spec"]["containers"][0]["name"] == "task",
            "the Job's Pod should run only its task container: {}",
            pod["spec"]["containers"]
        );

        apply(NAMESPACE, "opted-out-pod.yaml", &[]).ok()?;
        ensure!(
            proxies(&get("pod", "scratch", NAMESPACE)?) == 0,
            "the opted-out Pod got a proxy"
        );

        cp.kubectl(
            &["apply", "-n", "kube-system", "-f", "-"],
            Some(&fixture("sidecar/workspace-pod.yaml")),
        )
        .ok()?;
        ensure!(
            proxies(&get("pod", "notebook", "kube-system")?) == 0,
            "a Pod in an exempt namespace got a proxy"
        );

        // An injected Pod passes every bundled policy, dry run included.
        let dry = apply(
            NAMESPACE,
            "workspace-pod.yaml",
            &["--dry-run=server", "-o", "json"],
        )
        .ok()?;
        let shown: Value = serde_json::from_str(&dry.stdout)?;
        ensure!(
            proxies(&shown) == 1,
            "the dry run was not injected: {}",
            shown["spec"]
        );
        ensure!(
            cp.kubectl(&["get", "pod", "notebook", "-n", NAMESPACE], None)
                .is_not_found(),
            "the dry run created the Pod"
        );

        // For real, then again: the second apply is a no-op.
        apply(NAMESPACE, "workspace-pod.yaml", &[]).ok()?;
        let first = get("pod", "notebook", NAMESPACE)?;
        native_proxy(&first, "the workspace Pod")?;
        let again = apply(NAMESPACE, "workspace-pod.yaml", &[]).ok()?;
        let second = get("pod", "notebook", NAMESPACE)?;
        ensure!(
            again.stdout.contains("unchanged")
                && second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"],
            "re-applying the workspace Pod changed it: {again}"
        );

        let out = apply(NAMESPACE, "bad-override-pod.yaml", &[]);
        ensure!(
            !out.success
                && out.stderr.contains("[sidecar] annotation tollgate.io/proxy-memory: \"a lot\" is not a Kubernetes quantity"),
            "a bad override was not refused: {out}"
        );
        Ok(())
    };
    if let Err(e) = run() {
        panic!("{e:#}\n\n{}\n\n{}", webhook.log_tail(40), cp.log_tails(15));
    }
}
