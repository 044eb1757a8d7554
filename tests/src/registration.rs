//! Registering Tollgate with the apiserver as a validating and a mutating
//! webhook, the way a cluster would, and waiting until it is in effect.

use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use serde_json::{Value, json};

use crate::control_plane::ControlPlane;
use crate::wait::{self, Poll};

/// The name of both webhook configurations.
pub const CONFIGURATION_NAME: &str = "tollgate";
pub const VALIDATING_WEBHOOK: &str = "validate.tollgate.io";
pub const MUTATING_WEBHOOK: &str = "mutate.tollgate.io";

/// How long the apiserver may take to start calling a new configuration.
const IN_EFFECT_TIMEOUT: Duration = Duration::from_secs(30);

/// A privileged Pod in `default`: what the webhook must deny once it is in
/// effect.
const PROBE_POD: &str = r#"{
  "apiVersion": "v1",
  "kind": "Pod",
  "metadata": {"name": "tollgate-registration-probe", "namespace": "default", "labels": {"team": "ml"}},
  "spec": {"containers": [{
    "name": "probe",
    "image": "registry.example.com/ml/trainer:1.4.2",
    "securityContext": {"privileged": true},
    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "100m", "memory": "64Mi"}}
  }]}
}"#;

/// The rules both webhooks match: CREATE and UPDATE of workloads,
/// Services and Ingresses in any namespace.
fn rules() -> Value {
    json!([{
        "apiGroups": ["", "apps", "batch"],
        "apiVersions": ["*"],
        "operations": ["CREATE", "UPDATE"],
        "resources": [
            "pods", "deployments", "statefulsets", "daemonsets",
            "replicasets", "jobs", "cronjobs", "services"
        ],
        "scope": "*"
    }, {
        "apiGroups": ["networking.k8s.io"],
        "apiVersions": ["*"],
        "operations": ["CREATE", "UPDATE"],
        "resources": ["ingresses"],
        "scope": "*"
    }])
}

/// `matchConditions` that keep the requests of `users` and of anyone in
/// `groups` from being sent at all, as the chart renders them.
pub fn match_conditions(users: &[&str], groups: &[&str]) -> Value {
    json!([
        {
            "name": "not-an-exempt-user",
            "expression": format!("!(request.userInfo.username in {})", json!(users)),
        },
        {
            "name": "not-in-an-exempt-group",
            "expression": format!(
                "!has(request.userInfo.groups) || !request.userInfo.groups.exists(g, g in {})",
                json!(groups)
            ),
        },
    ])
}

fn webhook(name: &str, url: String, ca_bundle: Option<&str>) -> Value {
    // No namespaceSelector: the webhook's own exemptions are under test.
    let mut client_config = json!({"url": url});
    if let Some(ca_bundle) = ca_bundle {
        client_config["caBundle"] = json!(ca_bundle);
    }
    json!({
        "name": name,
        "clientConfig": client_config,
        "rules": rules(),
        // What the webhook exempts by default (its config's exemptUsers and
        // exemptGroups) is never sent.
        "matchConditions": match_conditions(
            &tollgate_webhook::config::DEFAULT_EXEMPT_USERS,
            &tollgate_webhook::config::DEFAULT_EXEMPT_GROUPS,
        ),
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "failurePolicy": "Fail",
        "timeoutSeconds": 5
    })
}

/// The ValidatingWebhookConfiguration and MutatingWebhookConfiguration for
/// webhooks at `mutate_url` and `validate_url` (full URLs) whose serving
/// certs `ca_pem` signed, as a `List`. Without `ca_pem` the configurations
/// have no `caBundle` (for a webhook that patches its own in).
pub fn configurations_at(mutate_url: &str, validate_url: &str, ca_pem: Option<&str>) -> Value {
    let ca_bundle = ca_pem.map(|pem| base64::engine::general_purpose::STANDARD.encode(pem));
    let mut mutate = webhook(
        MUTATING_WEBHOOK,
        mutate_url.to_owned(),
        ca_bundle.as_deref(),
    );
    mutate["reinvocationPolicy"] = json!("IfNeeded");
    let validate = webhook(
        VALIDATING_WEBHOOK,
        validate_url.to_owned(),
        ca_bundle.as_deref(),
    );
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": CONFIGURATION_NAME},
                "webhooks": [mutate]
            },
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": CONFIGURATION_NAME},
                "webhooks": [validate]
            }
        ]
    })
}

/// [`configurations_at`] for one webhook at `base_url`.
pub fn configurations(base_url: &str, ca_pem: &str) -> Value {
    let base_url = base_url.trim_end_matches('/');
    configurations_at(
        &format!("{base_url}/mutate"),
        &format!("{base_url}/validate"),
        Some(ca_pem),
    )
}

impl ControlPlane {
    /// Applies both webhook configurations, then waits until the apiserver
    /// calls the webhook: until a server-side dry run of a privileged Pod in
    /// `default` is denied by `validate.tollgate.io`.
    pub fn register_webhook(&self, base_url: &str, ca_pem: &str) -> anyhow::Result<()> {
        self.apply_json(&configurations(base_url, ca_pem))?;
        self.wait_webhook_in_effect()
    }

    /// Applies a manifest given as JSON.
    pub fn apply_json(&self, manifest: &Value) -> anyhow::Result<()> {
        let manifest = serde_json::to_string_pretty(manifest)?;
        self.kubectl(&["apply", "-f", "-"], Some(&manifest))
            .ok()
            .context("applying a manifest")?;
        Ok(())
    }

    /// Waits until a server-side dry run of a privileged Pod in `default` is
    /// denied by `validate.tollgate.io`.
    pub fn wait_webhook_in_effect(&self) -> anyhow::Result<()> {
        let denied = format!("admission webhook \"{VALIDATING_WEBHOOK}\" denied the request");
        wait::until(
            "the webhook to deny a privileged Pod (registration in effect)",
            IN_EFFECT_TIMEOUT,
            Duration::from_millis(500),
            || {
                let out = self.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(PROBE_POD));
                Ok(if !out.success && out.stderr.contains(&denied) {
                    Poll::Ready(())
                } else {
                    Poll::Pending(out.to_string())
                })
            },
        )
    }
}
