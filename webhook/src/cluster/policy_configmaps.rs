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

use futures_util::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};

use crate::config::Config;
use crate::metrics::ReloadLabels;
use crate::policy::{PolicySet, Source};
use crate::server::State;

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

/// Compiles the directories' sources plus every ConfigMap's.
fn compile(config: &Config, configmaps: &[ConfigMap]) -> anyhow::Result<PolicySet> {
    let (mut all, origin) = crate::serve::policy_sources(config)?;
    let mut extra: Vec<Source> = configmaps.iter().flat_map(sources).collect();
    extra.sort_by(|a, b| a.path.cmp(&b.path));
    all.extend(extra);
    crate::serve::compile_policies(
        &all,
        config,
        &format!("{origin} and ConfigMaps labelled {LABEL}"),
    )
}

/// Watches the ConfigMaps of `namespace` until the process ends, reloading
/// `state`'s policies on every change. Marks the policies synced after the
/// first complete listing has been compiled (or failed to).
pub async fn watch(client: Client, namespace: String, config: Arc<Config>, state: Arc<State>) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let stream = watcher(api, watcher::Config::default().labels(LABEL)).default_backoff();
    futures_util::pin_mut!(stream);
    // The complete current set, keyed by name; rebuilt from scratch on Init.
    let mut current: std::collections::BTreeMap<String, ConfigMap> = Default::default();
    let mut buffer: std::collections::BTreeMap<String, ConfigMap> = Default::default();
    let mut initialised = false;
    while let Some(event) = stream.next().await {
        let mut changed = apply(event, &mut current, &mut buffer, &mut initialised, &state);
        // Take every event already waiting, so a burst reloads once.
        while let Some(Some(event)) = stream.next().now_or_never() {
            changed |= apply(event, &mut current, &mut buffer, &mut initialised, &state);
        }
        if changed && initialised {
            let configmaps: Vec<ConfigMap> = current.values().cloned().collect();
            reload(&config, &configmaps, &state);
            state.done_waiting(WAITING);
        }
    }
}

fn key(cm: &ConfigMap) -> String {
    cm.metadata.name.clone().unwrap_or_default()
}

/// Folds one watch event into the current set; whether it changed.
fn apply(
    event: Result<watcher::Event<ConfigMap>, watcher::Error>,
    current: &mut std::collections::BTreeMap<String, ConfigMap>,
    buffer: &mut std::collections::BTreeMap<String, ConfigMap>,
    initialised: &mut bool,
    state: &State,
) -> bool {
    match event {
        Ok(watcher::Event::Apply(cm)) => {
            current.insert(key(&cm), cm);
            true
        }
        Ok(watcher::Event::Delete(cm)) => current.remove(&key(&cm)).is_some(),
        Ok(watcher::Event::Init) => {
            buffer.clear();
            false
        }
        Ok(watcher::Event::InitApply(cm)) => {
            buffer.insert(key(&cm), cm);
            false
        }
        Ok(watcher::Event::InitDone) => {
            *current = std::mem::take(buffer);
            *initialised = true;
            true
        }
        Err(e) => {
            // The watcher retries by itself; say why it had to.
            tracing::warn!(error = %e, "watching policy ConfigMaps");
            state
                .metrics
                .policy_reloads
                .get_or_create(&ReloadLabels {
                    result: "watch_error",
                })
                .inc();
            false
        }
    }
}

fn reload(config: &Config, configmaps: &[ConfigMap], state: &State) {
    let names: Vec<String> = configmaps.iter().map(key).collect();
    match compile(config, configmaps) {
        Ok(set) => {
            tracing::info!(
                configmaps = %names.join(","),
                policies = set.len(),
                "policies reloaded"
            );
            for notice in set.notices() {
                tracing::warn!(%notice, "policy load notice");
            }
            state.admission.replace_policies(set);
            state
                .metrics
                .policy_reloads
                .get_or_create(&ReloadLabels { result: "success" })
                .inc();
        }
        Err(e) => {
            tracing::error!(
                configmaps = %names.join(","),
                error = %format!("{e:#}"),
                "policy reload failed; keeping the last good policies"
            );
            state
                .metrics
                .policy_reloads
                .get_or_create(&ReloadLabels { result: "failure" })
                .inc();
        }
    }
}
