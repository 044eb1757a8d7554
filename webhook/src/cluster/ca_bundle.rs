//! Keeping the `caBundle` of the webhook's own configurations equal to the
//! CAs its serving certificate chains to.
//!
//! Both configurations are watched by name: when one appears, when someone
//! resets or edits its `caBundle`, or when the bundle itself changes (a CA
//! rollover), every webhook in it whose `caBundle` differs is patched. The
//! patch is a strategic merge keyed by webhook name, so webhooks added or
//! reordered meanwhile are never mixed up.

use std::fmt::Debug;
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::sync::watch;

/// A webhook configuration kind: its webhooks' names and `caBundle`s.
pub trait WebhookConfiguration:
    Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    const KIND: &'static str;
    fn bundles(&self) -> Vec<(String, Option<Vec<u8>>)>;
}

impl WebhookConfiguration for MutatingWebhookConfiguration {
    const KIND: &'static str = "MutatingWebhookConfiguration";
    fn bundles(&self) -> Vec<(String, Option<Vec<u8>>)> {
        self.webhooks
            .iter()
            .flatten()
            .map(|w| {
                (
                    w.name.clone(),
                    w.client_config.ca_bundle.clone().map(|b| b.0),
                )
            })
            .collect()
    }
}

impl WebhookConfiguration for ValidatingWebhookConfiguration {
    const KIND: &'static str = "ValidatingWebhookConfiguration";
    fn bundles(&self) -> Vec<(String, Option<Vec<u8>>)> {
        self.webhooks
            .iter()
            .flatten()
            .map(|w| {
                (
                    w.name.clone(),
                    w.client_config.ca_bundle.clone().map(|b| b.0),
                )
            })
            .collect()
    }
}

/// Keeps both named configurations patched with the bundle `bundle`
/// carries, until the process ends; besides reacting to changes, checks
/// them every `resync` (a patch that failed is retried then).
pub async fn keep_patched(
    client: Client,
    mutating: String,
    validating: String,
    bundle: watch::Receiver<String>,
    resync: Duration,
) {
    tokio::join!(
        keep::<MutatingWebhookConfiguration>(client.clone(), mutating, bundle.clone(), resync),
        keep::<ValidatingWebhookConfiguration>(client, validating, bundle, resync),
    );
}

async fn keep<K: WebhookConfiguration>(
    client: Client,
    name: String,
    mut bundle: watch::Receiver<String>,
    resync: Duration,
) {
    let mut ticker = tokio::time::interval(resync);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let api: Api<K> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api.clone(), config)
        .default_backoff()
        .applied_objects()
        .boxed();
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(object)) => {
                    let want = bundle.borrow().clone();
                    ensure(&api, &name, &object, &want).await;
                }
                Some(Err(e)) => tracing::warn!(kind = K::KIND, %name, error = %e, "watching the webhook configuration"),
                None => return,
            },
            changed = bundle.changed() => {
                if changed.is_err() {
                    return;
                }
                let want = bundle.borrow_and_update().clone();
                recheck(&api, &name, &want).await;
            }
            _ = ticker.tick() => {
                let want = bundle.borrow().clone();
                recheck(&api, &name, &want).await;
            }
        }
    }
}

async fn recheck<K: WebhookConfiguration>(api: &Api<K>, name: &str, want: &str) {
    match api.get_opt(name).await {
        Ok(Some(object)) => ensure(api, name, &object, want).await,
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(kind = K::KIND, %name, error = %e, "reading the webhook configuration");
        }
    }
}

/// Patches every webhook of `object` whose `caBundle` is not `want`.
async fn ensure<K: WebhookConfiguration>(api: &Api<K>, name: &str, object: &K, want: &str) {
    let stale: Vec<String> = object
        .bundles()
        .into_iter()
        .filter(|(_, have)| have.as_deref() != Some(want.as_bytes()))
        .map(|(webhook, _)| webhook)
        .collect();
    if stale.is_empty() || want.is_empty() {
        return;
    }
    let patch = json!({"webhooks": stale.iter().map(|webhook| json!({
        "name": webhook,
        "clientConfig": {"caBundle": k8s_openapi::ByteString(want.as_bytes().to_vec())},
    })).collect::<Vec<_>>()});
    match api
        .patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
    {
        Ok(_) => {
            tracing::info!(kind = K::KIND, %name, webhooks = %stale.join(","), "caBundle patched")
        }
        Err(e) => {
            tracing::warn!(kind = K::KIND, %name, error = %e, "patching caBundle failed; retrying on the next change")
        }
    }
}
