//! Sidecar injection through a real kube-apiserver and controller-manager:
//! workspace Pods get exactly one proxy, opted-out and exempt Pods none,
//! re-applying a workspace Deployment rolls nothing, and an injected Pod
//! passes the bundled policies (server-side dry run).

use std::time::Duration;

use anyhow::{Context as _, ensure};
use serde_json::Value;
use tollgate_e2e::{ControlPlane, Webhook, fixture};

const NAMESPACE: &str = "app-ml-team";

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
        ensure!(
            proxies(&pod) == 1,
            "expected one tollgate-proxy in {}",
            pod["spec"]
        );
        let proxy = pod["spec"]["containers"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "tollgate-proxy"))
            .context("no proxy container (plain mode on a 1.20 apiserver)")?;
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
        ensure!(
            pod["metadata"]["annotations"]["tollgate.io/injected"].is_string(),
            "no status annotation"
        );

        // The template was never touched, so re-applying rolls nothing.
        apply(NAMESPACE, "workspace-deployment.yaml", &[]).ok()?;
        std::thread::sleep(Duration::from_secs(2));
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
