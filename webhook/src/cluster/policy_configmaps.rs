//! Policies from ConfigMaps labelled `tollgate.io/policy` in the webhook's
//! namespace: every data key ending in `.rego`, `.yaml` or `.yml` is a
//! policy source, beside the configured directories.
//!
//! The ConfigMaps are watched. On every change the whole set is compiled
//! afresh (directories plus ConfigMaps) and swapped in atomically; a set
//! that does not compile is reported (log, metric) and the last good one
//! stays in force.

use std::path::PathBuf;
use std::sync::Arc;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};

use super::policy_reload::PolicyReloader;
use super::watched_set::follow;
use crate::policy::Source;

/// What readiness waits for until the first listing is compiled.
pub const WAITING: &str = "policy ConfigMaps";

/// The label that marks a ConfigMap as holding policies.
pub const LABEL: &str = "tollgate.io/policy";

/// The sources a ConfigMap holds, named `configmap/<namespace>/<name>/<key>`.
pub fn sources(configmap: &ConfigMap) -> Vec<Source> {
    let namespace = configmap.metadata.namespace.as_deref().unwrap_or("");
    let name = configmap.metadata.name.as_deref().unwrap_or("");
    let mut out: Vec<Source> = configmap
        .data
        .iter()
        .flatten()
        .filter(|(key, _)| {
            [".rego", ".yaml", ".yml"]
                .iter()
                .any(|ext| key.ends_with(ext))
        })
        .filter(|(key, _)| !key.ends_with("_test.rego"))
        .map(|(key, text)| Source {
            path: PathBuf::from(format!("configmap/{namespace}/{name}/{key}")),
            text: text.clone(),
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Watches the ConfigMaps of `namespace` until the process ends, reloading
/// the policies on every change. Readiness stops waiting for them after
/// the first complete listing has been compiled (or failed to).
pub async fn watch(client: Client, namespace: String, reloader: Arc<PolicyReloader>) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let stream = watcher(api, watcher::Config::default().labels(LABEL)).default_backoff();
    let state = reloader.state();
    follow(stream, "policy ConfigMaps", state, |set| {
        reloader.set_configmaps(set.objects().cloned().collect());
        let _ = reloader.reload();
        state.done_waiting(WAITING);
    })
    .await;
}
