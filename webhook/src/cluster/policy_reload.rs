//! Recompiling the policy set when what it is built from changes: policy
//! ConfigMaps, ConstraintTemplates and constraints in the cluster, and objects synced for templates' `data.inventory`. Every
//! reload compiles everything afresh and swaps it in atomically; a set that
//! does not compile is logged and counted, and the last good one stays.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::ConfigMap;

use crate::config::Config;
use crate::metrics::ReloadLabels;
use crate::policy::gatekeeper::inventory::Inventory;
use crate::policy::{PolicySet, Source};
use crate::server::State;

pub struct PolicyReloader {
    config: Arc<Config>,
    state: Arc<State>,
    inputs: Mutex<Inputs>,
    /// Held from reading the inputs to swapping the compiled set: without
    /// it, a reload that read older inputs (an inventory change racing the
    /// first ConfigMap listing) could finish last and swap a stale set in,
    /// dropping the ConfigMaps' policies until the next change.
    reloading: Mutex<()>,
}

#[derive(Default)]
struct Inputs {
    configmaps: Vec<ConfigMap>,
    /// ConstraintTemplates and constraints from the cluster's custom
    /// resources, already checked one by one (`gatekeeper_resources`).
    cluster_resources: Vec<Source>,
    /// Synced objects by kind (`group/version/Kind`).
    synced: BTreeMap<String, Vec<serde_json::Value>>,
}

impl PolicyReloader {
    pub fn new(config: Arc<Config>, state: Arc<State>) -> Arc<PolicyReloader> {
        Arc::new(PolicyReloader {
            config,
            state,
            inputs: Mutex::default(),
            reloading: Mutex::new(()),
        })
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn set_configmaps(&self, configmaps: Vec<ConfigMap>) {
        if let Ok(mut inputs) = self.inputs.lock() {
            inputs.configmaps = configmaps;
        }
    }

    pub fn set_cluster_resources(&self, sources: Vec<Source>) {
        if let Ok(mut inputs) = self.inputs.lock() {
            inputs.cluster_resources = sources;
        }
    }

    /// The data document the policies are compiled with: the platform facts
    /// and `data.inventory`.
    pub fn data(&self) -> serde_json::Value {
        let mut inventory = Inventory::default();
        if let Ok(inputs) = self.inputs.lock() {
            for object in inputs.synced.values().flatten() {
                inventory.add(object.clone());
            }
        }
        let mut data = crate::serve::policy_data(&self.config);
        if let (Some(data), serde_json::Value::Object(inv)) =
            (data.as_object_mut(), inventory.to_data())
        {
            data.extend(inv);
        }
        data
    }

    /// Replaces the synced objects of one kind; returns how many kinds have
    /// been synced so far.
    pub fn set_synced(&self, kind: &str, objects: Vec<serde_json::Value>) -> usize {
        match self.inputs.lock() {
            Ok(mut inputs) => {
                inputs.synced.insert(kind.to_owned(), objects);
                inputs.synced.len()
            }
            Err(_) => 0,
        }
    }

    fn compile(&self) -> anyhow::Result<(PolicySet, Vec<String>)> {
        let (configmaps, cluster_resources, inventory) = {
            let inputs = self
                .inputs
                .lock()
                .map_err(|_| anyhow::anyhow!("policy inputs lock poisoned"))?;
            let mut inventory = Inventory::default();
            for object in inputs.synced.values().flatten() {
                inventory.add(object.clone());
            }
            (
                inputs.configmaps.clone(),
                inputs.cluster_resources.clone(),
                inventory,
            )
        };
        let (mut all, origin) = crate::serve::policy_sources(&self.config)?;
        let mut extra: Vec<Source> = configmaps
            .iter()
            .flat_map(super::policy_configmaps::sources)
            .collect();
        extra.sort_by(|a, b| a.path.cmp(&b.path));
        all.extend(extra);
        all.extend(cluster_resources);
        let mut data = crate::serve::policy_data(&self.config);
        if let (Some(data), serde_json::Value::Object(inv)) =
            (data.as_object_mut(), inventory.to_data())
        {
            data.extend(inv);
        }
        let set = PolicySet::compile_with_data(
            &all,
            &self.config.policies,
            Some(data),
            &format!("{origin}, policy ConfigMaps and cluster ConstraintTemplates"),
        )?;
        let names = configmaps
            .iter()
            .filter_map(|c| c.metadata.name.clone())
            .collect();
        Ok((set, names))
    }

    /// Compiles everything and swaps it in, or keeps the last good set
    /// (and says why).
    pub fn reload(&self) -> Result<(), String> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let metrics = &self.state.metrics;
        match self.compile() {
            Ok((set, configmaps)) => {
                tracing::info!(
                    configmaps = %configmaps.join(","),
                    policies = set.len(),
                    "policies reloaded"
                );
                for notice in set.notices() {
                    tracing::warn!(%notice, "policy load notice");
                }
                self.state.admission.replace_policies(set);
                self.state.set_reload_error(None);
                metrics
                    .policy_reloads
                    .get_or_create(&ReloadLabels { result: "success" })
                    .inc();
                Ok(())
            }
            Err(e) => {
                let error = format!("{e:#}");
                tracing::error!(
                    error = %error,
                    "policy reload failed; keeping the last good policies"
                );
                self.state.set_reload_error(Some(error.clone()));
                metrics
                    .policy_reloads
                    .get_or_create(&ReloadLabels { result: "failure" })
                    .inc();
                Err(error)
            }
        }
    }
}
