//! Whether Gatekeeper's own webhook is installed. While it is, Tollgate
//! does not take over templates and constraints: two controllers would
//! fight over each constraint CRD and each status. Recognised by the
//! configuration's name in Gatekeeper's manifests and chart, or by a webhook
//! served by Gatekeeper's Service, whatever the configuration is called.

use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use kube::api::ListParams;
use kube::{Api, Client};

/// The name of Gatekeeper's validating webhook configuration.
pub const GATEKEEPER_CONFIGURATION: &str = "gatekeeper-validating-webhook-configuration";
/// The Service Gatekeeper's webhook is served by.
pub const GATEKEEPER_SERVICE: &str = "gatekeeper-webhook-service";

/// Why `configurations` show Gatekeeper's webhook installed, or `None`.
pub fn gatekeeper_webhook(configurations: &[ValidatingWebhookConfiguration]) -> Option<String> {
    configurations.iter().find_map(|c| {
        let name = c.metadata.name.as_deref().unwrap_or("");
        if name == GATEKEEPER_CONFIGURATION {
            return Some(format!("ValidatingWebhookConfiguration {name} exists"));
        }
        c.webhooks.iter().flatten().find_map(|w| {
            let service = w.client_config.service.as_ref()?;
            (service.name == GATEKEEPER_SERVICE).then(|| {
                format!(
                    "webhook {} of ValidatingWebhookConfiguration {name} is served by Service \
                     {}/{GATEKEEPER_SERVICE}",
                    w.name, service.namespace
                )
            })
        })
    })
}

/// Lists the validating webhook configurations and says whether
/// Gatekeeper's webhook is among them.
pub async fn check(client: &Client) -> Result<Option<String>, kube::Error> {
    let api: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    let list = api.list(&ListParams::default()).await?;
    Ok(gatekeeper_webhook(&list.items))
}

/// What the operator reads (`/readyz`, the log) while Tollgate stands back.
pub fn refusal(why: &str) -> String {
    format!(
        "not taking over ConstraintTemplates and constraints: Gatekeeper's webhook is installed \
         ({why}). Two controllers would fight over the constraint CRDs and statuses; uninstall \
         Gatekeeper (its webhook configuration) or set policies.watchConstraintTemplates: false. \
         Checked again every {}s",
        super::RECHECK.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn configuration(value: serde_json::Value) -> ValidatingWebhookConfiguration {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn gatekeeper_is_recognised_by_name_or_by_service() {
        let by_name = configuration(json!({
            "metadata": {"name": GATEKEEPER_CONFIGURATION},
            "webhooks": [],
        }));
        let by_service = configuration(json!({
            "metadata": {"name": "renamed"},
            "webhooks": [{
                "name": "validation.gatekeeper.sh",
                "clientConfig": {"service": {"name": GATEKEEPER_SERVICE, "namespace": "gatekeeper-system"}},
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
            }],
        }));
        let ours = configuration(json!({
            "metadata": {"name": "tollgate"},
            "webhooks": [{
                "name": "validate.tollgate.io",
                "clientConfig": {"service": {"name": "tollgate", "namespace": "tollgate-system"}},
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
            }],
        }));
        assert_eq!(
            gatekeeper_webhook(std::slice::from_ref(&by_name)).unwrap(),
            "ValidatingWebhookConfiguration gatekeeper-validating-webhook-configuration exists"
        );
        assert_eq!(
            gatekeeper_webhook(&[ours.clone(), by_service]).unwrap(),
            "webhook validation.gatekeeper.sh of ValidatingWebhookConfiguration renamed is served \
             by Service gatekeeper-system/gatekeeper-webhook-service"
        );
        assert_eq!(gatekeeper_webhook(&[ours]), None);
    }
}
