//! Everything that talks to the API server, through `kube`.
//!
//! - [`policy_configmaps`]: policies from ConfigMaps, watched and
//!   hot-reloaded.
//! - [`gatekeeper_resources`]: ConstraintTemplates and constraints as
//!   custom resources: constraint CRDs, statuses, hot reload.
//! - [`inventory_sync`]: objects synced into templates' `data.inventory`.
//! - [`policy_reload`]: recompiling policies when those inputs change.
//! - [`namespaces`]: every Namespace's labels, from a reflector.
//! - [`quota`]: the team quota controller (a ResourceQuota and a
//!   LimitRange in every team namespace).
//! - [`serving_cert`]: the webhook's own certificate in a Secret:
//!   bootstrap, rotation, CA rollover.
//! - [`audit_list`]: an audit pass over the cluster, page by page.
//! - [`audit_loop`]: the server's periodic audit, one replica at a time
//!   (a Lease), with metrics, log lines and reports.
//! - [`audit_reports`]: OpenReports `Report`s of a pass.
//! - [`ca_bundle`]: the webhook configurations' `caBundle`, kept patched.

pub mod audit_list;
pub mod audit_loop;
pub mod audit_reports;
pub mod ca_bundle;
pub mod gatekeeper_resources;
pub mod inventory_sync;
pub mod namespaces;
pub mod policy_configmaps;
pub mod policy_reload;
pub mod quota;
pub mod serving_cert;
pub mod watched_set;

use crate::config::ClusterConfig;

/// A client for the cluster: from `cluster.kubeconfig` when the config
/// names one, else in-cluster (service account) or `$KUBECONFIG`.
pub async fn client(config: &ClusterConfig) -> anyhow::Result<kube::Client> {
    use anyhow::Context as _;
    let client_config = match &config.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("using kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("finding the cluster (no in-cluster service account, no $KUBECONFIG)")?,
    };
    kube::Client::try_from(client_config).context("building the Kubernetes client")
}
