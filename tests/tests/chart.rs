//! The Helm chart (`charts/tollgate`), rendered and linted by Helm's own
//! engine (helm-python-sdk, through `tests/chart/render.py`), then applied to
//! a real kube-apiserver: the rendered webhook configurations, pointed at
//! the real `tollgate` binary out of cluster, make the apiserver call it for
//! workloads and Services in team namespaces and never for the excluded
//! ones; the webhook runs with the rendered config and with the chart's
//! ServiceAccount and RBAC (its token from the control plane), so missing
//! or excess permissions show.
//!
//! Needs `python3` with `pip install helm-python-sdk==0.2.2` (.ci/run
//! installs it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use base64::Engine as _;
use serde_json::{Value, json};
use tollgate_e2e::wait::{self, Poll};
use tollgate_e2e::{ControlPlane, Webhook, binaries, fixture, fixtures_dir, registration};

const RELEASE: &str = "tollgate";
const NAMESPACE: &str = "tollgate-system";
const TEAM_NAMESPACE: &str = "app-ml-team";
/// The e2e apiserver's version (tests/control-plane/go.mod): what the
/// chart is rendered for.
const KUBE_VERSION: &str = "v1.37.2";
/// The oldest release the chart supports (Chart.yaml's kubeVersion).
const OLDEST_KUBE_VERSION: &str = "v1.30.0";
const SERVICE_ACCOUNT: &str = "tollgate-webhook";
/// What the webhook configurations must keep away from the webhook.
const EXCLUDED: [&str; 4] = ["kube-system", "kube-public", "kube-node-lease", NAMESPACE];
/// The kinds `webhook/src/mutate/mod.rs` (`template_pointer`) mutates and
/// `policies/lib/workloads.rego` validates, as resources.
const WORKLOADS: [&str; 8] = [
    "pods",
    "replicationcontrollers",
    "deployments",
    "statefulsets",
    "daemonsets",
    "replicasets",
    "jobs",
    "cronjobs",
];
/// The rendered exempt users: the chart's defaults and its own
/// ServiceAccount.
const EXEMPT_USERS: [&str; 4] = [
    "system:kube-scheduler",
    "system:serviceaccount:kube-system:generic-garbage-collector",
    "system:serviceaccount:kube-system:namespace-controller",
    "system:serviceaccount:tollgate-system:tollgate-webhook",
];
/// Allowed by the bundled allowed_registries policy in both values files.
const IMAGE: &str = "registry.k8s.io/pause:3.9";

fn chart_dir() -> PathBuf {
    binaries::workspace_root().join("charts/tollgate")
}

fn all_enabled_values() -> PathBuf {
    chart_dir().join("ci/all-enabled-values.yaml")
}

/// What `render.py` printed.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

/// Runs `python3 tests/chart/render.py <args>`; panics with render.py's
/// message when Helm's engine is not installed.
fn render_py(args: &[&str]) -> Run {
    let root = binaries::workspace_root();
    let python = std::env::var_os("PYTHON").unwrap_or_else(|| "python3".into());
    let out = Command::new(&python)
        .arg(root.join("tests/chart/render.py"))
        .args(args)
        .current_dir(&root)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {python:?} tests/chart/render.py: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.code() == Some(3) {
        panic!("{stderr}");
    }
    Run {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    }
}

/// The chart rendered as release `tollgate` in `tollgate-system`, with the
/// values file (if any) and `set` (JSON, if any) for `kube_version`.
fn render(
    values: Option<&Path>,
    set: Option<&Value>,
    kube_version: &str,
    format: &str,
) -> anyhow::Result<String> {
    let chart = chart_dir().display().to_string();
    let mut args = vec![
        "render".to_owned(),
        chart,
        "--name".into(),
        RELEASE.into(),
        "--namespace".into(),
        NAMESPACE.into(),
        "--kube-version".into(),
        kube_version.into(),
        "--format".into(),
        format.into(),
    ];
    if let Some(values) = values {
        args.extend(["-f".into(), values.display().to_string()]);
    }
    if let Some(set) = set {
        args.extend(["--set-json".into(), set.to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = render_py(&args);
    ensure!(run.success, "render.py {args:?} failed:\n{}", run.stderr);
    Ok(run.stdout)
}

/// The rendered objects.
fn objects(values: Option<&Path>, set: Option<&Value>, kube_version: &str) -> Vec<Value> {
    let text = render(values, set, kube_version, "json").unwrap_or_else(|e| panic!("{e:#}"));
    serde_json::from_str(&text).expect("render.py --format json printed JSON")
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn try_find<'a>(objects: &'a [Value], kind: &str) -> Option<&'a Value> {
    objects.iter().find(|o| o["kind"] == kind)
}

/// The webhook config file in the rendered ConfigMap, parsed.
fn rendered_config(objects: &[Value]) -> Value {
    let text = find(objects, "ConfigMap", "tollgate-config")["data"]["config.yaml"]
        .as_str()
        .expect("config.yaml in the ConfigMap");
    yaml_serde::from_str(text).expect("config.yaml is YAML")
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect()
}

/// Every `resources` entry of a webhook's rules.
fn rule_resources(webhook: &Value) -> BTreeSet<String> {
    webhook["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| strings(&r["resources"]))
        .collect()
}

/// The RBAC rules of a (Cluster)Role for `resource`: verbs, and resourceNames.
fn rbac_rules(role: Option<&Value>, resource: &str) -> Vec<(BTreeSet<String>, Vec<String>)> {
    role.map(|r| r["rules"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default()
        .iter()
        .filter(|rule| strings(&rule["resources"]).iter().any(|r| r == resource))
        .map(|rule| {
            (
                strings(&rule["verbs"]).into_iter().collect(),
                strings(&rule["resourceNames"]),
            )
        })
        .collect()
}

fn set_of(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

// ---------------------------------------------------------------------------
// Offline: lint, schema, what is rendered.
// ---------------------------------------------------------------------------

#[test]
fn chart_lints_without_errors_or_warnings() {
    let chart = chart_dir().display().to_string();
    let all = all_enabled_values().display().to_string();
    for values in [None, Some(all.as_str())] {
        for kube_version in [None, Some(KUBE_VERSION), Some(OLDEST_KUBE_VERSION)] {
            let mut args = vec!["lint", chart.as_str(), "--strict"];
            if let Some(values) = values {
                args.extend(["-f", values]);
            }
            if let Some(version) = kube_version {
                args.extend(["--kube-version", version]);
            }
            let run = render_py(&args);
            let report: Value = serde_json::from_str(&run.stdout)
                .unwrap_or_else(|e| panic!("lint {args:?} printed no JSON ({e}):\n{}", run.stderr));
            let serious: Vec<&Value> = report["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["severity"].as_u64().unwrap_or(0) >= 2)
                .collect();
            assert!(
                run.success && serious.is_empty() && report["total_charts_linted"] == 1,
                "helm lint {args:?}: {report:#}\n{}",
                run.stderr
            );
        }
    }
}

#[test]
fn values_schema_rejects_bad_values_with_the_key_and_the_reason() {
    let cases = [
        (
            json!({"replicaCount": "two"}),
            "at '/replicaCount': got string, want integer",
        ),
        (
            json!({"admission": {"mutating": {"failurePolicy": "Deny"}}}),
            "at '/admission/mutating/failurePolicy': value must be one of 'Fail', 'Ignore'",
        ),
        (
            json!({"admission": {"timeoutSeconds": 45}}),
            "at '/admission/timeoutSeconds': maximum: got 45, want 30",
        ),
        (
            json!({"teams": {"labelkey": "team"}}),
            "at '/teams': additional properties 'labelkey' not allowed",
        ),
        (
            json!({"mutate": {"sidecar": {"ports": {"https": 70000}}}}),
            "at '/mutate/sidecar/ports/https': maximum: got 70,000, want 65,535",
        ),
    ];
    for (set, expected) in cases {
        let err = render(None, Some(&set), KUBE_VERSION, "yaml").expect_err("bad values rendered");
        let msg = format!("{err:#}");
        assert!(
            msg.contains("values.schema.json") && msg.contains(expected),
            "{set}: expected {expected:?} in:\n{msg}"
        );
    }
    // Beyond a schema: the webhook's own request budget must fit in the
    // apiserver's.
    let err = render(
        None,
        Some(&json!({"config": {"limits": {"requestTimeoutMs": 3000}}})),
        KUBE_VERSION,
        "yaml",
    )
    .expect_err("a request budget past timeoutSeconds rendered");
    assert!(
        format!("{err:#}").contains(
            "config.limits.requestTimeoutMs (3000) must be below admission.timeoutSeconds (3) * 1000"
        ),
        "{err:#}"
    );
}

#[test]
fn default_render_is_safe_and_least_privileged() {
    let objects = objects(None, None, KUBE_VERSION);

    let deployment = find(&objects, "Deployment", "tollgate-webhook");
    let spec = &deployment["spec"]["template"]["spec"];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    assert!(
        spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            .is_array(),
        "{spec:#}"
    );
    let container = &spec["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["scheme"], "HTTPS");
    assert_eq!(
        container["args"],
        json!(["serve", "--config", "/etc/tollgate/config.yaml"])
    );
    assert!(
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "POD_NAMESPACE"
                && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"),
        "{container:#}"
    );

    let pdb = find(&objects, "PodDisruptionBudget", "tollgate-webhook");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(pdb["spec"]["minAvailable"], 1);

    // Both webhook configurations.
    let mutating = &find(&objects, "MutatingWebhookConfiguration", RELEASE)["webhooks"][0];
    let validating = &find(&objects, "ValidatingWebhookConfiguration", RELEASE)["webhooks"][0];
    assert_eq!(mutating["name"], "mutate.tollgate.io");
    assert_eq!(validating["name"], "validate.tollgate.io");
    assert_eq!(mutating["reinvocationPolicy"], "IfNeeded");
    for webhook in [mutating, validating] {
        assert_eq!(webhook["sideEffects"], "None");
        assert_eq!(webhook["timeoutSeconds"], 3);
        assert_eq!(webhook["failurePolicy"], "Fail");
        assert_eq!(webhook["matchPolicy"], "Equivalent");
        assert_eq!(webhook["admissionReviewVersions"], json!(["v1"]));
        assert_eq!(
            webhook["namespaceSelector"]["matchExpressions"],
            json!([{"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": EXCLUDED}])
        );
        assert_eq!(
            webhook["matchConditions"],
            registration::match_conditions(&EXEMPT_USERS, &["system:nodes"])
        );
        assert!(
            webhook["clientConfig"].get("caBundle").is_none(),
            "the caBundle is the bootstrap's, never rendered: {webhook:#}"
        );
        assert_eq!(
            webhook["clientConfig"]["service"]["name"],
            "tollgate-webhook"
        );
    }
    assert_eq!(rule_resources(mutating), set_of(&WORKLOADS));
    let mut validated = set_of(&WORKLOADS);
    validated.insert("services".into());
    assert_eq!(rule_resources(validating), validated);

    // RBAC: namespaces, its own Secret and webhook configurations; nothing
    // for features that are off.
    let cluster_role = try_find(&objects, "ClusterRole");
    let role = try_find(&objects, "Role");
    // The second rule is the audit's (on by default): list only.
    assert_eq!(
        rbac_rules(cluster_role, "namespaces"),
        vec![
            (set_of(&["get", "list", "watch"]), vec![]),
            (set_of(&["list"]), vec![])
        ]
    );
    assert!(
        rbac_rules(cluster_role, "secrets").is_empty(),
        "the audit never lists Secrets"
    );
    assert!(rbac_rules(cluster_role, "resourcequotas").is_empty());
    assert!(rbac_rules(role, "configmaps").is_empty());
    assert_eq!(
        rbac_rules(cluster_role, "validatingwebhookconfigurations"),
        vec![
            (set_of(&["get", "patch"]), vec![RELEASE.to_owned()]),
            (set_of(&["list", "watch"]), vec![]),
        ]
    );
    assert_eq!(
        rbac_rules(role, "secrets"),
        vec![
            (set_of(&["create", "list", "watch"]), vec![]),
            (
                set_of(&["get", "update", "patch"]),
                vec!["tollgate-webhook-tls".to_owned()]
            ),
        ]
    );
    assert_eq!(role.unwrap()["metadata"]["namespace"], NAMESPACE);

    // The config.
    let config = rendered_config(&objects);
    assert_eq!(config["listen"], "0.0.0.0:8443");
    assert_eq!(
        config["certificates"],
        json!({
            "manage": true,
            "secretName": "tollgate-webhook-tls",
            "serviceName": "tollgate-webhook",
            "mutatingWebhookConfiguration": RELEASE,
            "validatingWebhookConfiguration": RELEASE,
        })
    );
    assert!(config.get("tls").is_none() && config.get("ownNamespace").is_none());
    // The webhook exempts exactly whom the apiserver does not send.
    assert_eq!(config["policies"]["exemptUsers"], json!(EXEMPT_USERS));
    assert_eq!(config["policies"]["exemptGroups"], json!(["system:nodes"]));
    assert_eq!(
        config["mutate"]["sidecar"]["image"],
        "ghcr.io/tollgate-dev/tollgate-proxy:0.1.0"
    );
    // Optional parts are off.
    for kind in ["ServiceMonitor", "Certificate", "Issuer"] {
        assert!(
            try_find(&objects, kind).is_none(),
            "{kind} rendered by default"
        );
    }
}

#[test]
fn all_enabled_render_switches_certificates_and_rbac_to_the_features() {
    let objects = objects(Some(&all_enabled_values()), None, KUBE_VERSION);
    let cluster_role = try_find(&objects, "ClusterRole");
    let role = try_find(&objects, "Role");
    assert_eq!(
        rbac_rules(cluster_role, "resourcequotas"),
        vec![(
            set_of(&["get", "list", "watch", "create", "patch", "delete"]),
            vec![]
        )]
    );
    assert_eq!(
        rbac_rules(cluster_role, "ingresses"),
        vec![
            (set_of(&["list", "watch"]), vec![]),
            (set_of(&["list"]), vec![])
        ]
    );
    assert_eq!(
        rbac_rules(role, "configmaps"),
        vec![(set_of(&["list", "watch"]), vec![])]
    );
    // cert-manager owns the certificate: no Secret or webhook access.
    assert!(rbac_rules(role, "secrets").is_empty());
    assert!(rbac_rules(cluster_role, "mutatingwebhookconfigurations").is_empty());
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        assert_eq!(
            find(&objects, kind, RELEASE)["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            "tollgate-system/tollgate-webhook"
        );
    }
    let certificate = find(&objects, "Certificate", "tollgate-webhook");
    assert_eq!(certificate["spec"]["secretName"], "tollgate-webhook-tls");
    assert_eq!(
        certificate["spec"]["dnsNames"],
        json!([
            "tollgate-webhook.tollgate-system.svc",
            "tollgate-webhook.tollgate-system.svc.cluster.local"
        ])
    );
    let config = rendered_config(&objects);
    assert_eq!(config["certificates"], json!({"manage": false}));
    assert_eq!(config["tls"]["certFile"], "/etc/tollgate/tls/tls.crt");
    assert_eq!(config["policies"]["watchConfigMaps"], true);
    assert_eq!(
        config["policies"]["sync"],
        json!([{"group": "networking.k8s.io", "version": "v1", "kind": "Ingress"}])
    );
    let deployment = find(&objects, "Deployment", "tollgate-webhook");
    assert!(
        deployment["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["secret"]["secretName"] == "tollgate-webhook-tls"),
        "{deployment:#}"
    );
    // The proxy's config, verbatim, in the release namespace and the listed one.
    let proxies: Vec<&Value> = objects
        .iter()
        .filter(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "tollgate-proxy")
        .collect();
    let namespaces: Vec<&Value> = proxies
        .iter()
        .map(|p| &p["metadata"]["namespace"])
        .collect();
    assert_eq!(namespaces, [NAMESPACE, TEAM_NAMESPACE]);
    let proxy_yaml: Value =
        yaml_serde::from_str(proxies[0]["data"]["proxy.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(
        proxy_yaml["jwt"]["providers"]["keycloak"]["issuer"],
        "https://sso.example.com/realms/ml"
    );
    // Policy ConfigMaps carry the label the webhook watches.
    for name in ["tollgate-policies", "tollgate-constraint-templates"] {
        assert_eq!(
            find(&objects, "ConfigMap", name)["metadata"]["labels"]["tollgate.io/policy"],
            "true"
        );
    }
    let dashboard = find(&objects, "ConfigMap", "tollgate-dashboard");
    let json_text = dashboard["data"]["tollgate.json"].as_str().unwrap();
    let dashboard: Value = serde_json::from_str(json_text).expect("the dashboard is JSON");
    let exprs = dashboard.to_string();
    for metric in [
        "tollgate_admission_requests_total",
        "tollgate_admission_duration_seconds_bucket",
        "tollgate_sidecar_injections_total",
        "tollgate_proxy_requests_total",
        "tollgate_proxy_request_duration_seconds_bucket",
        "tollgate_jwt_validations_total",
        "tollgate_ratelimit_limited_total",
        "tollgate_filter_failures_total",
        "tollgate_cert_expiry_timestamp_seconds",
        "tollgate_audit_violations",
        "tollgate_audit_last_run_timestamp_seconds",
        "tollgate_audit_runs_total",
    ] {
        assert!(exprs.contains(metric), "the dashboard lacks {metric}");
    }
}

// ---------------------------------------------------------------------------
// The rendered config in the real binary.
// ---------------------------------------------------------------------------

/// Starts `tollgate serve` on `config` as it would start in a pod (with
/// `$POD_NAMESPACE` and `$KUBERNETES_SERVICE_HOST`, but no service account
/// token) and returns what it printed if it exited within a few seconds.
fn serve_briefly(binary: &Path, config: &Path, home: &Path) -> anyhow::Result<Option<String>> {
    let log = home.join("serve.log");
    let mut child = Command::new(binary)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(config)
        .env("POD_NAMESPACE", NAMESPACE)
        .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        .env("KUBERNETES_SERVICE_PORT", "9")
        .env("KUBECONFIG", home.join("no-kubeconfig"))
        .env("HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        if child.try_wait()?.is_some() {
            return Ok(Some(std::fs::read_to_string(&log)?));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(None)
}

#[test]
fn rendered_configs_load_in_the_real_binary() {
    let binary = binaries::tollgate_binary().unwrap_or_else(|e| panic!("{e:#}"));
    let dir = tempfile::tempdir().unwrap();
    for (label, values) in [
        ("default", None),
        ("all-enabled", Some(all_enabled_values())),
    ] {
        let objects = objects(values.as_deref(), None, KUBE_VERSION);
        let mut config = rendered_config(&objects);
        let path = dir.path().join(format!("{label}-config.yaml"));
        let text = find(&objects, "ConfigMap", "tollgate-config")["data"]["config.yaml"]
            .as_str()
            .unwrap()
            .to_owned();
        std::fs::write(&path, &text).unwrap();
        let mut printed = serve_briefly(&binary, &path, dir.path()).unwrap();
        if let Some(out) = &printed
            && out.contains("unknown field `certificates`")
        {
            // The certificates section is being added to the binary by its
            // own issue; check everything else meanwhile.
            eprintln!(
                "chart: NOTE: {} does not know `certificates` yet; checking the {label} config without it",
                binary.display()
            );
            config.as_object_mut().unwrap().remove("certificates");
            std::fs::write(&path, yaml_serde::to_string(&config).unwrap()).unwrap();
            printed = serve_briefly(&binary, &path, dir.path()).unwrap();
        }
        // Past the config and the policies, the first thing serve does is
        // find the cluster, which fails here: no service account token.
        if let Some(out) = printed {
            let file_error = format!("{}: ", path.display());
            assert!(
                !out.contains(&file_error) && out.contains("cluster"),
                "the {label} config did not load:\n{out}\n--- config ---\n{text}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Against the real apiserver.
// ---------------------------------------------------------------------------

fn kubectl_ok(cp: &ControlPlane, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    Ok(cp.kubectl(args, stdin).ok()?.stdout)
}

fn get_json(cp: &ControlPlane, args: &[&str]) -> anyhow::Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = kubectl_ok(cp, &all, None)?;
    serde_json::from_str(&out).with_context(|| format!("kubectl {args:?} printed no JSON"))
}

/// A kubeconfig for the chart's ServiceAccount, with a token the apiserver
/// issued for it (TokenRequest, as a projected token in a pod): the webhook
/// runs with exactly the chart's RBAC.
fn service_account_kubeconfig(cp: &ControlPlane, dir: &Path) -> anyhow::Result<PathBuf> {
    let token = kubectl_ok(
        cp,
        &[
            "-n",
            NAMESPACE,
            "create",
            "token",
            SERVICE_ACCOUNT,
            "--duration=1h",
        ],
        None,
    )?;
    let token = token.trim();
    let admin = std::fs::read_to_string(cp.kubeconfig())?;
    let ca = admin
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority: "))
        .context("no certificate-authority in the admin kubeconfig")?;
    let path = dir.join("webhook-kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster:\n    server: {}\n    certificate-authority: {ca}\nusers:\n- name: webhook\n  user:\n    token: {}\ncontexts:\n- name: e2e\n  context: {{cluster: e2e, user: webhook}}\ncurrent-context: e2e\n",
            cp.server(),
            token
        ),
    )?;
    Ok(path)
}

fn pod(name: &str, labels: Value, container: Value) -> String {
    let mut c = json!({"name": "app", "image": IMAGE});
    if let (Some(c), Some(extra)) = (c.as_object_mut(), container.as_object()) {
        c.extend(extra.clone());
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [c]}
    })
    .to_string()
}

fn privileged_pod(name: &str) -> String {
    pod(
        name,
        json!({"app": name}),
        json!({"securityContext": {"privileged": true}}),
    )
}

/// `kubectl auth can-i <verb> <resource> [-n ns]` as the webhook.
fn can_i(cp: &ControlPlane, verb: &str, resource: &str, namespace: Option<&str>) -> bool {
    let who = format!("system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}");
    let mut args = vec!["auth", "can-i", verb, resource, "--as", &who];
    if let Some(ns) = namespace {
        args.extend(["-n", ns]);
    }
    cp.kubectl(&args, None).stdout.trim() == "yes"
}

/// Installs the chart (as `helm install` would send it) into a fresh
/// control plane, runs the webhook out of cluster with the rendered config
/// and the chart's RBAC, points the rendered webhook configurations at it,
/// and checks what the apiserver sends it.
fn install_and_admit(values: Option<&Path>) -> anyhow::Result<()> {
    let all_enabled = values.is_some();
    let cp = ControlPlane::start()?;
    let dir = tempfile::tempdir()?;

    kubectl_ok(&cp, &["create", "namespace", NAMESPACE], None)?;
    kubectl_ok(&cp, &["create", "namespace", TEAM_NAMESPACE], None)?;
    // The chart's crds/, which helm install applies before the templates.
    kubectl_ok(
        &cp,
        &[
            "apply",
            "-f",
            &chart_dir().join("crds").display().to_string(),
        ],
        None,
    )?;
    if all_enabled {
        kubectl_ok(
            &cp,
            &["apply", "-f", "-"],
            Some(&fixture("chart/crds.yaml")),
        )?;
        kubectl_ok(
            &cp,
            &[
                "wait",
                "--for=condition=established",
                "--timeout=60s",
                "crd/issuers.cert-manager.io",
                "crd/certificates.cert-manager.io",
                "crd/servicemonitors.monitoring.coreos.com",
            ],
            None,
        )?;
    }

    // The manifests, first as a server-side dry run (which creates nothing),
    // then for real.
    let manifests = render(values, None, KUBE_VERSION, "yaml")?;
    let objects = objects(values, None, KUBE_VERSION);
    kubectl_ok(
        &cp,
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&manifests),
    )
    .context("server-side dry run of the chart")?;
    ensure!(
        cp.kubectl(
            &["-n", NAMESPACE, "get", "deployment", "tollgate-webhook"],
            None
        )
        .is_not_found(),
        "the dry run created the Deployment"
    );
    kubectl_ok(&cp, &["apply", "-f", "-"], Some(&manifests)).context("applying the chart")?;
    for object in &objects {
        let kind = object["kind"].as_str().unwrap();
        let name = object["metadata"]["name"].as_str().unwrap();
        let mut args = vec!["get", kind, name];
        if let Some(ns) = object["metadata"]["namespace"].as_str() {
            args.extend(["-n", ns]);
        }
        kubectl_ok(&cp, &args, None).with_context(|| format!("{kind} {name} after apply"))?;
    }

    // RBAC as rendered, through the apiserver's own authorizer.
    let yes = |verb, resource, ns| can_i(&cp, verb, resource, ns);
    ensure!(yes("watch", "namespaces", None) && yes("get", "namespaces", None));
    ensure!(
        !yes("list", "secrets", Some("default")) && !yes("list", "secrets", Some(TEAM_NAMESPACE))
    );
    // The audit (on by default) lists what it judges, and does nothing else with it.
    ensure!(yes("list", "pods", Some(TEAM_NAMESPACE)) && !yes("get", "pods", Some(TEAM_NAMESPACE)));
    ensure!(
        !yes("create", "pods", Some(TEAM_NAMESPACE))
            && !yes("delete", "deployments", Some(TEAM_NAMESPACE))
    );
    ensure!(!yes(
        "delete",
        "validatingwebhookconfigurations/tollgate",
        None
    ));
    if all_enabled {
        ensure!(yes("create", "resourcequotas", Some(TEAM_NAMESPACE)));
        ensure!(yes("delete", "limitranges", Some(TEAM_NAMESPACE)));
        ensure!(yes("watch", "ingresses.networking.k8s.io", None));
        ensure!(yes("watch", "configmaps", Some(NAMESPACE)));
        ensure!(!yes("watch", "configmaps", Some("default")));
        ensure!(yes(
            "create",
            "customresourcedefinitions.apiextensions.k8s.io",
            None
        ));
        ensure!(yes(
            "watch",
            "constrainttemplates.templates.gatekeeper.sh",
            None
        ));
        ensure!(!yes(
            "update",
            "constrainttemplates.templates.gatekeeper.sh",
            None
        ));
        ensure!(!yes("get", "secrets/tollgate-webhook-tls", Some(NAMESPACE)));
        ensure!(!yes(
            "patch",
            "validatingwebhookconfigurations/tollgate",
            None
        ));
    } else {
        ensure!(!yes("create", "resourcequotas", Some(TEAM_NAMESPACE)));
        ensure!(!yes("watch", "configmaps", Some(NAMESPACE)));
        ensure!(!yes(
            "create",
            "customresourcedefinitions.apiextensions.k8s.io",
            None
        ));
        ensure!(yes(
            "patch",
            "validatingwebhookconfigurations/tollgate",
            None
        ));
        ensure!(yes("patch", "mutatingwebhookconfigurations/tollgate", None));
        ensure!(!yes(
            "patch",
            "validatingwebhookconfigurations/someone-else",
            None
        ));
        ensure!(yes(
            "update",
            "secrets/tollgate-webhook-tls",
            Some(NAMESPACE)
        ));
        ensure!(!yes("get", "secrets/someone-elses", Some(NAMESPACE)));
    }

    // The webhook: the rendered config, minus what only makes sense in a
    // pod (listen, TLS and certificates are the harness's; the cluster is
    // reached with the ServiceAccount's token). exemptNamespaces is emptied
    // so that only the webhook configurations can keep the excluded
    // namespaces away from it.
    let mut config = rendered_config(&objects);
    let map = config.as_object_mut().unwrap();
    for key in ["listen", "tls", "certificates"] {
        map.remove(key);
    }
    map.insert("ownNamespace".into(), NAMESPACE.into());
    map.insert(
        "cluster".into(),
        json!({"kubeconfig": service_account_kubeconfig(&cp, dir.path())?}),
    );
    config["policies"]["exemptNamespaces"] = json!([]);
    let webhook = Webhook::start_for(&cp, &yaml_serde::to_string(&config)?)?;
    let answered = || webhook.admission_requests();
    if all_enabled {
        // policies.watchConstraintTemplates with the chart's RBAC: a
        // template gets its constraint CRD and a status.
        let template = fixtures_dir().join("gatekeeper-crds/templates/k8smaxreplicas.yaml");
        kubectl_ok(&cp, &["apply", "-f", &template.display().to_string()], None)?;
        wait::until(
            "the template's CRD and status, written with the chart's RBAC",
            Duration::from_secs(30),
            Duration::from_millis(250),
            || {
                let out = cp.kubectl(
                    &[
                        "get",
                        "constrainttemplate",
                        "k8smaxreplicas",
                        "-o",
                        "jsonpath={.status.created}",
                    ],
                    None,
                );
                Ok(if out.success && out.stdout.trim() == "true" {
                    Poll::Ready(())
                } else {
                    Poll::Pending(format!("{out}\n{}", webhook.log_tail(10)))
                })
            },
        )?;
    }

    // The rendered webhook configurations, pointed at it.
    let ca_bundle = base64::engine::general_purpose::STANDARD.encode(webhook.ca_pem());
    let mut items = Vec::new();
    for (kind, path) in [
        ("MutatingWebhookConfiguration", "/mutate"),
        ("ValidatingWebhookConfiguration", "/validate"),
    ] {
        let mut object = find(&objects, kind, RELEASE).clone();
        for hook in object["webhooks"].as_array_mut().unwrap() {
            hook["clientConfig"] = json!({
                "url": format!("{}{path}", webhook.base_url()),
                "caBundle": ca_bundle,
            });
        }
        items.push(object);
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string();
    kubectl_ok(&cp, &["apply", "-f", "-"], Some(&list))?;
    let denied = "admission webhook \"validate.tollgate.io\" denied the request";
    wait::until(
        "the rendered webhook configurations to be in effect",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let out = cp.kubectl(
                &["-n", TEAM_NAMESPACE, "apply", "--dry-run=server", "-f", "-"],
                Some(&privileged_pod("probe")),
            );
            Ok(if !out.success && out.stderr.contains(denied) {
                Poll::Ready(())
            } else {
                Poll::Pending(out.to_string())
            })
        },
    )?;

    // Excluded namespaces: never sent to the webhook (which, with no
    // exemptions of its own, would deny these privileged pods).
    for ns in EXCLUDED {
        let before = answered()?;
        kubectl_ok(
            &cp,
            &["-n", ns, "create", "-f", "-"],
            Some(&privileged_pod("excluded")),
        )
        .with_context(|| format!("a privileged Pod in excluded namespace {ns}"))?;
        let after = answered()?;
        ensure!(
            before == after,
            "the apiserver called the webhook for namespace {ns} ({before} -> {after} requests)"
        );
        let stored = get_json(&cp, &["-n", ns, "get", "pod", "excluded"])?;
        ensure!(
            stored["metadata"]["labels"].get("team").is_none(),
            "mutated in {ns}: {stored}"
        );
    }

    // Exempt requesters (matchConditions): never sent. A kubelet and the
    // webhook's own ServiceAccount create privileged Pods in a team
    // namespace unjudged and unmutated; alice, with the same rights, is
    // sent and denied.
    let own = format!("{NAMESPACE}:{SERVICE_ACCOUNT}");
    let own_subject = format!("--serviceaccount={own}");
    cp.grant_pod_creation(
        TEAM_NAMESPACE,
        &["--group=system:nodes", "--user=alice", &own_subject],
    )?;
    let own_user = format!("--as=system:serviceaccount:{own}");
    for (name, who) in [
        (
            "by-kubelet",
            vec!["--as=system:node:worker-1", "--as-group=system:nodes"],
        ),
        ("by-webhook", vec![own_user.as_str()]),
    ] {
        cp.wait_allowed(&who, "create", "pods", TEAM_NAMESPACE)?;
        let before = answered()?;
        let mut args = vec!["-n", TEAM_NAMESPACE, "create", "-f", "-"];
        args.extend(&who);
        kubectl_ok(&cp, &args, Some(&privileged_pod(name)))
            .with_context(|| format!("a privileged Pod {who:?}"))?;
        let after = answered()?;
        ensure!(
            before == after,
            "the apiserver called the webhook for {who:?} ({before} -> {after} requests)"
        );
        let stored = get_json(&cp, &["-n", TEAM_NAMESPACE, "get", "pod", name])?;
        ensure!(
            stored["metadata"]["labels"].get("team").is_none(),
            "mutated {who:?}: {stored}"
        );
    }
    cp.wait_allowed(&["--as=alice"], "create", "pods", TEAM_NAMESPACE)?;
    let before = answered()?;
    let out = cp.kubectl(
        &["-n", TEAM_NAMESPACE, "create", "-f", "-", "--as=alice"],
        Some(&privileged_pod("by-alice")),
    );
    ensure!(!out.success && out.stderr.contains(denied), "{out}");
    ensure!(
        answered()? > before,
        "alice's Pod was not sent to the webhook"
    );

    // A team namespace: denied, mutated, injected.
    let before = answered()?;
    let out = cp.kubectl(
        &["-n", TEAM_NAMESPACE, "create", "-f", "-"],
        Some(&privileged_pod("privileged")),
    );
    ensure!(
        !out.success && out.stderr.contains(denied) && out.stderr.contains("[privileged]"),
        "{out}"
    );
    ensure!(
        answered()? > before,
        "the denial did not come from the webhook"
    );

    kubectl_ok(
        &cp,
        &["-n", TEAM_NAMESPACE, "create", "-f", "-"],
        Some(&pod("plain", json!({"app": "plain"}), json!({}))),
    )?;
    let stored = get_json(&cp, &["-n", TEAM_NAMESPACE, "get", "pod", "plain"])?;
    let container = &stored["spec"]["containers"][0];
    ensure!(stored["metadata"]["labels"]["team"] == "ml", "{stored}");
    ensure!(
        container["securityContext"]["allowPrivilegeEscalation"] == false
            && container["resources"]["limits"]["memory"].is_string(),
        "not mutated: {container}"
    );
    ensure!(
        !stored["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "tollgate-proxy"),
        "a non-workspace Pod got the proxy: {stored}"
    );

    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "trainer", "labels": {"app": "trainer"}},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "trainer"}},
            "template": {
                "metadata": {"labels": {"app": "trainer"}},
                "spec": {"containers": [{"name": "trainer", "image": IMAGE}]}
            }
        }
    });
    kubectl_ok(
        &cp,
        &["-n", TEAM_NAMESPACE, "create", "-f", "-"],
        Some(&deployment.to_string()),
    )?;
    let stored = get_json(&cp, &["-n", TEAM_NAMESPACE, "get", "deployment", "trainer"])?;
    ensure!(
        stored["metadata"]["labels"]["team"] == "ml"
            && stored["spec"]["template"]["metadata"]["labels"]["team"] == "ml",
        "the Deployment and its template were not labelled: {stored}"
    );

    let node_port = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "exposed"},
        "spec": {"type": "NodePort", "selector": {"app": "x"}, "ports": [{"port": 80}]}
    });
    let out = cp.kubectl(
        &["-n", TEAM_NAMESPACE, "create", "-f", "-"],
        Some(&node_port.to_string()),
    );
    ensure!(
        !out.success && out.stderr.contains("[service_type]"),
        "{out}"
    );

    let workspace_labels = json!({"tollgate.io/workspace": "alice", "owner": "alice"});
    kubectl_ok(
        &cp,
        &["-n", TEAM_NAMESPACE, "create", "-f", "-"],
        Some(&pod(
            "workspace",
            workspace_labels,
            json!({"ports": [{"containerPort": 8888}]}),
        )),
    )?;
    let stored = get_json(&cp, &["-n", TEAM_NAMESPACE, "get", "pod", "workspace"])?;
    // mode auto on a current apiserver: a native sidecar, the first init
    // container; a values file may force plain.
    let native = rendered_config(&objects)["mutate"]["sidecar"]["mode"] != "plain";
    let proxy = if native {
        Some(&stored["spec"]["initContainers"][0])
            .filter(|c| c["name"] == "tollgate-proxy" && c["restartPolicy"] == "Always")
    } else {
        stored["spec"]["containers"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == "tollgate-proxy"))
    }
    .with_context(|| format!("no proxy injected (native: {native}): {stored}"))?;
    let rendered = rendered_config(&objects);
    ensure!(
        proxy["image"] == rendered["mutate"]["sidecar"]["image"],
        "proxy image {} is not the chart's {}",
        proxy["image"],
        rendered["mutate"]["sidecar"]["image"]
    );
    ensure!(
        stored["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["configMap"]["name"] == "tollgate-proxy"),
        "the proxy's ConfigMap is not mounted: {stored}"
    );

    if all_enabled {
        // The extra Rego policy and the Gatekeeper template, both from the
        // chart's ConfigMaps (watched with the chart's RBAC).
        let out = cp.kubectl(
            &["-n", TEAM_NAMESPACE, "create", "-f", "-"],
            Some(&pod(
                "ownerless",
                json!({"tollgate.io/workspace": "bob"}),
                json!({}),
            )),
        );
        ensure!(
            !out.success && out.stderr.contains("[workspace_owner]"),
            "{out}"
        );
        let ingress = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress",
            "metadata": {"name": "sso"},
            "spec": {"rules": [{"host": "sso.example.com", "http": {"paths": [{
                "path": "/", "pathType": "Prefix",
                "backend": {"service": {"name": "x", "port": {"number": 80}}}
            }]}}]}
        });
        let out = cp.kubectl(
            &["-n", TEAM_NAMESPACE, "create", "-f", "-"],
            Some(&ingress.to_string()),
        );
        ensure!(
            !out.success
                && out
                    .stderr
                    .contains("ingress host sso.example.com is reserved"),
            "{out}"
        );
        // The team quota controller, with the chart's RBAC.
        let quota = wait::until(
            "the team ResourceQuota",
            Duration::from_secs(30),
            Duration::from_millis(500),
            || {
                let out = cp.kubectl(
                    &[
                        "-n",
                        TEAM_NAMESPACE,
                        "get",
                        "resourcequota",
                        "tollgate-team",
                        "-o",
                        "json",
                    ],
                    None,
                );
                Ok(if out.success {
                    Poll::Ready(out.stdout)
                } else {
                    Poll::Pending(out.stderr)
                })
            },
        )?;
        let quota: Value = serde_json::from_str(&quota)?;
        ensure!(
            quota["spec"]["hard"]["requests.nvidia.com/gpu"] == "8",
            "{quota}"
        );
    }

    let mut webhook = webhook;
    webhook.ensure_running()?;
    if std::env::var_os("TOLLGATE_E2E_VERBOSE").is_some() {
        eprintln!("{}", webhook.log_tail(40));
    }
    Ok(())
}

fn report(result: anyhow::Result<()>) {
    if let Err(e) = result {
        panic!("{e:#}");
    }
}

#[test]
fn default_chart_installs_and_its_webhooks_admit_through_the_real_apiserver() {
    report(install_and_admit(None));
}

#[test]
fn all_enabled_chart_installs_and_its_webhooks_admit_through_the_real_apiserver() {
    report(install_and_admit(Some(&all_enabled_values())));
}

#[test]
fn chart_readme_documents_every_value() {
    let run = render_py(&["values", &chart_dir().display().to_string()]);
    assert!(run.success, "{}", run.stderr);
    let values: Value = serde_json::from_str(&run.stdout).unwrap();
    let readme = std::fs::read_to_string(chart_dir().join("README.md")).unwrap();
    // Maps below these keys are data (labels, quantities), not settings.
    const DATA: [&str; 10] = [
        "labels",
        "annotations",
        "nodeSelector",
        "tlsConfig",
        "ports",
        "requests",
        "limits",
        "quota",
        "resources",
        "issuerRef",
    ];
    fn walk(value: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match value.as_object() {
            Some(map)
                if !map.is_empty()
                    && path.len() < 3
                    && !DATA.contains(&path.last().map(String::as_str).unwrap_or("")) =>
            {
                for (key, child) in map {
                    path.push(key.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
            _ => out.push(path.clone()),
        }
    }
    let mut paths = Vec::new();
    walk(&values, &mut Vec::new(), &mut paths);
    let missing: Vec<String> = paths
        .iter()
        .map(|p| p.join("."))
        .filter(|path| {
            let (parent, leaf) = path.rsplit_once('.').unwrap_or(("", path));
            !(readme.contains(&format!("`{path}`"))
                || readme.contains(&format!("`{path}."))
                || (!parent.is_empty()
                    && readme.contains(&format!("`{parent}."))
                    && readme.contains(&format!("`.{leaf}`"))))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "charts/tollgate/README.md's values table lacks {missing:?}"
    );
}
