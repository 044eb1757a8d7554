//! `tollgate serve`: load the config and the policies, then serve until a
//! termination signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;

use tollgate_certs::reload::{ClientAuth, Files, IdentityStore, watch_files};

use crate::admission::Admission;
use crate::cluster::serving_cert;
use crate::config::{Config, LogFormat, SidecarMode};
use crate::metrics::Metrics;
use crate::policy::{PolicySet, Source, bundled_sources, sources_from_dirs};
use crate::server::{self, State};

/// What the command line said.
pub struct Options {
    pub config: Option<PathBuf>,
    pub dev: bool,
    pub listen: Option<SocketAddr>,
}

/// Reads the config file, or the defaults when there is none.
pub fn load_config(options: &Options) -> anyhow::Result<Config> {
    let mut config = match &options.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(listen) = options.listen {
        config.listen = listen;
    }
    if options.dev {
        config.log.format = LogFormat::Pretty;
    }
    Ok(config)
}

/// The configured directories' sources (the bundled library when there
/// are none), and a phrase naming where they came from.
pub fn policy_sources(config: &Config) -> anyhow::Result<(Vec<Source>, String)> {
    if config.policies.dirs.is_empty() {
        return Ok((bundled_sources(), "the bundled library".to_owned()));
    }
    let dirs = &config.policies.dirs;
    let origin = dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ");
    Ok((sources_from_dirs(dirs)?, origin))
}

/// Compiles the configured policies (the bundled library when no
/// directories are configured).
pub fn load_policies(config: &Config) -> anyhow::Result<PolicySet> {
    let (sources, origin) = policy_sources(config)?;
    compile_policies(&sources, config, &origin)
}

/// Compiles `sources` with `config`'s overrides and platform facts.
pub fn compile_policies(
    sources: &[Source],
    config: &Config,
    origin: &str,
) -> anyhow::Result<PolicySet> {
    Ok(PolicySet::compile_with_data(
        sources,
        &config.policies,
        Some(policy_data(config)),
        origin,
    )?)
}

/// `data.tollgate.config`: what policies may know of the platform's
/// configuration (the teams' GPU quotas, for one).
pub fn policy_data(config: &Config) -> serde_json::Value {
    let teams = &config.teams;
    let gpu_quota: serde_json::Map<String, serde_json::Value> = teams
        .overrides
        .iter()
        .filter_map(|(team, o)| Some((team.clone(), o.quota.as_ref()?.gpu.clone().into())))
        .collect();
    serde_json::json!({
        "tollgate": {"config": {"teams": {
            "labelKey": teams.label_key,
            "gpuResource": config.mutate.gpu.resource,
            "gpuQuota": gpu_quota,
            "defaultGpuQuota": teams.defaults.quota.gpu,
        }}}
    })
}

/// Without a cluster connection no namespace's labels are known, so a
/// constraint with a `namespaceSelector` matches no namespaced object: the
/// warning that says so, naming the constraints, or `None`.
pub fn blind_namespace_selectors(policies: &PolicySet, connected: bool) -> Option<String> {
    if connected {
        return None;
    }
    let names: Vec<String> = policies
        .constraints()
        .filter(|c| c.matcher.namespace_selector.is_some())
        .map(|c| format!("{}/{}", c.kind, c.name))
        .collect();
    (!names.is_empty()).then(|| {
        format!(
            "{} evaluated without a cluster connection: namespace labels are unknown, so a \
             namespaceSelector matches no namespaced object (set cluster.kubeconfig, or run in a \
             cluster)",
            names.join(", ")
        )
    })
}

pub async fn run(options: Options, mut config: Config) -> anyhow::Result<()> {
    let policies = load_policies(&config)?;
    let client = if config.cluster.enabled() {
        Some(crate::cluster::client(&config.cluster).await?)
    } else {
        None
    };
    if let Some(warning) = blind_namespace_selectors(&policies, client.is_some()) {
        tracing::warn!(%warning, "constraints with a namespaceSelector");
    }
    config.mutate.sidecar.mode = sidecar_mode(config.mutate.sidecar.mode, client.as_ref()).await;
    let names: Vec<&str> = policies
        .policies()
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    tracing::info!(policies = %names.join(","), "policies compiled");

    let metrics = Arc::new(Metrics::new());
    let (identity, dev_files) =
        serving_identity(&config, options.dev, client.as_ref(), &metrics).await?;
    let tls = identity.server_config(ClientAuth::Off)?;
    let tracing_provider = match &config.tracing {
        Some(settings) => {
            let provider =
                tollgate_otel::provider(settings, "tollgate-webhook", metrics.trace.clone())
                    .map_err(anyhow::Error::msg)?;
            crate::trace::install(&provider);
            Some(provider)
        }
        None => None,
    };
    let admission = Admission::new(policies, &config, metrics.clone())?;
    let state = Arc::new(State::new(admission, metrics, &config.limits));
    if let Some(client) = client {
        let namespaces = crate::cluster::namespaces::NamespaceCache::start(
            client.clone(),
            state.metrics.clone(),
        );
        state.set_namespaces(namespaces.clone());
        state.wait_for("the namespace cache");
        let synced = state.clone();
        tokio::spawn(async move {
            namespaces.wait_synced().await;
            synced.done_waiting("the namespace cache");
        });
        let reloader = crate::cluster::policy_reload::PolicyReloader::new(
            Arc::new(config.clone()),
            state.clone(),
        );
        if config.policies.watch_config_maps {
            // Checked at config load: watching needs the webhook's namespace.
            let namespace = config.own_namespace().unwrap_or_default();
            state.wait_for(crate::cluster::policy_configmaps::WAITING);
            tokio::spawn(crate::cluster::policy_configmaps::watch(
                client.clone(),
                namespace,
                reloader.clone(),
            ));
        }
        if config.policies.watch_constraint_templates {
            state.wait_for(crate::cluster::gatekeeper_resources::WAITING);
            tokio::spawn(crate::cluster::gatekeeper_resources::run(
                client.clone(),
                reloader.clone(),
            ));
        }
        if !config.policies.sync.is_empty() {
            state.wait_for(crate::cluster::inventory_sync::WAITING);
            for kind in &config.policies.sync {
                tokio::spawn(crate::cluster::inventory_sync::watch(
                    client.clone(),
                    kind.clone(),
                    config.policies.sync.len(),
                    reloader.clone(),
                ));
            }
        }
        match (config.audit.interval_seconds, config.own_namespace()) {
            (0, _) => {}
            (_, Some(namespace)) => {
                tokio::spawn(crate::cluster::audit_loop::run(
                    client.clone(),
                    state.clone(),
                    config.audit.clone(),
                    namespace,
                ));
            }
            (_, None) => tracing::warn!(
                "audit.intervalSeconds is set but the in-server audit needs the webhook's \
                 namespace for its Lease (ownNamespace or $POD_NAMESPACE); it is off"
            ),
        }
        if config.teams.manage_quotas {
            tokio::spawn(crate::cluster::quota::run(client, config.teams.clone()));
        }
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "serving");
    if let Some(files) = &dev_files {
        println!("{}", crate::dev::banner(files, addr));
    }
    server::serve(listener, tls, state, &config.limits, shutdown_signal()).await?;
    if let Some(provider) = tracing_provider {
        // What is queued goes out, within the export timeout.
        let _ = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(std::time::Duration::from_secs(5))
        })
        .await;
    }
    if let Some(files) = dev_files {
        let _ = std::fs::remove_dir_all(files.dir);
    }
    tracing::info!("stopped");
    Ok(())
}

/// Where the serving certificate comes from: the managed Secret
/// (`certificates.manage`), the `tls` files (re-read every
/// `checkIntervalSeconds`), or in dev mode a throwaway CA's files.
async fn serving_identity(
    config: &Config,
    dev: bool,
    client: Option<&kube::Client>,
    metrics: &Metrics,
) -> anyhow::Result<(Arc<IdentityStore>, Option<crate::dev::DevFiles>)> {
    let certs = &config.certificates;
    if certs.manage {
        // Checked at config load: managing needs the cluster and a namespace.
        let (Some(client), Some(namespace)) = (client, config.own_namespace()) else {
            anyhow::bail!("certificates.manage needs the cluster and ownNamespace");
        };
        let settings = serving_cert::Settings::from_config(config, &namespace);
        let resync = settings.check_interval;
        let (controller, store, bundle) =
            serving_cert::ServingCert::bootstrap(client.clone(), settings, metrics.certs.clone())
                .await?;
        tokio::spawn(controller.run());
        tokio::spawn(crate::cluster::ca_bundle::keep_patched(
            client.clone(),
            certs.mutating_webhook_configuration.clone(),
            certs.validating_webhook_configuration.clone(),
            bundle,
            resync,
        ));
        return Ok((store, None));
    }
    let (tls, dev_files) = match &config.tls {
        Some(tls) => (tls.clone(), None),
        None => {
            anyhow::ensure!(
                dev,
                "config has no tls.certFile/tls.keyFile and certificates.manage is off; \
                 set one of them, or run with --dev for a throwaway certificate"
            );
            let dir = std::env::temp_dir().join(format!("tollgate-dev-{}", std::process::id()));
            let files = crate::dev::prepare(&dir).context("preparing dev-mode certificates")?;
            (files.tls.clone(), Some(files))
        }
    };
    let files = Files {
        cert: tls.cert_file,
        key: tls.key_file,
        ca: None,
    };
    let store =
        IdentityStore::with_metrics(&files.read()?, serving_cert::SERVING, metrics.certs.clone())?;
    let interval = std::time::Duration::from_secs(certs.check_interval_seconds);
    tokio::spawn(watch_files(store.clone(), files, interval));
    Ok((store, dev_files))
}

/// `auto` becomes `native` when the apiserver is 1.29 or newer (native
/// sidecars are on by default there), `plain` otherwise or without a
/// cluster.
async fn sidecar_mode(mode: SidecarMode, client: Option<&kube::Client>) -> SidecarMode {
    if mode != SidecarMode::Auto {
        return mode;
    }
    let Some(client) = client else {
        return SidecarMode::Plain;
    };
    match client.apiserver_version().await {
        Ok(info) => {
            let number = |s: &str| {
                s.trim_end_matches(|c: char| !c.is_ascii_digit())
                    .parse::<u32>()
                    .unwrap_or(0)
            };
            let native = (number(&info.major), number(&info.minor)) >= (1, 29);
            tracing::info!(
                version = %info.git_version,
                native,
                "sidecar mode resolved from the apiserver version"
            );
            if native {
                SidecarMode::Native
            } else {
                SidecarMode::Plain
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "apiserver version unknown; injecting plain sidecars");
            SidecarMode::Plain
        }
    }
}

/// Completes on SIGTERM (what Kubernetes sends) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoliciesConfig;

    fn gatekeeper(selector: &str) -> PolicySet {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/gatekeeper/requiredlabels"
        );
        let read = |name: &str| Source {
            path: PathBuf::from(format!("{dir}/{name}")),
            text: std::fs::read_to_string(format!("{dir}/{name}")).unwrap(),
        };
        let mut constraint = read("constraint.yaml");
        constraint.text = constraint.text.replace(
            "    namespaces: [\"app-*\"]\n",
            &format!("    namespaces: [\"app-*\"]\n{selector}"),
        );
        PolicySet::compile(
            &[read("template.yaml"), constraint],
            &PoliciesConfig::default(),
            "test",
        )
        .unwrap()
    }

    #[test]
    fn a_namespace_selector_without_a_cluster_is_warned_about() {
        // Issue 28: it silently matched nothing.
        let selected = gatekeeper("    namespaceSelector:\n      matchLabels: {team: ml}\n");
        let warning = blind_namespace_selectors(&selected, false).unwrap();
        assert!(
            warning.starts_with(
                "K8sRequiredLabels/deployments-need-team-and-owner evaluated without a cluster connection"
            ),
            "{warning}"
        );
        assert_eq!(blind_namespace_selectors(&selected, true), None);
        assert_eq!(blind_namespace_selectors(&gatekeeper(""), false), None);
    }
}
