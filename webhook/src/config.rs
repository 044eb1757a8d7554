//! The `tollgate serve` configuration: one YAML file, unknown keys rejected,
//! every error naming the path of the offending value.
//!
//! Every field has a default, so an empty file (or none, in dev mode) is a
//! working configuration; `config/example.yaml` documents them all and is
//! loaded by the tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::pod_security::PodSecurityDefaults;

/// Namespaces that are never evaluated unless the config says otherwise:
/// the control plane's own, so that the webhook can never lock it out.
pub const DEFAULT_EXEMPT_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// Requesters whose requests are never evaluated nor mutated unless the
/// config says otherwise: the scheduler, and the controllers that only
/// maintain objects others made (owner references, finalizers, deletion).
/// A policy added after an object was created must not block its garbage
/// collection. Never the controllers that create Pods (replicaset, job,
/// daemonset, statefulset): their Pods are what the webhook is for.
pub const DEFAULT_EXEMPT_USERS: [&str; 3] = [
    "system:kube-scheduler",
    "system:serviceaccount:kube-system:generic-garbage-collector",
    "system:serviceaccount:kube-system:namespace-controller",
];

/// Groups whose requests are never evaluated nor mutated unless the config
/// says otherwise: kubelets, which only write their own status and the
/// mirror Pods of static Pods already running on them.
pub const DEFAULT_EXEMPT_GROUPS: [&str; 1] = ["system:nodes"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Address the HTTPS server listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The serving certificate. Absent only in dev mode, which generates one.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The serving certificate managed in a Secret instead (bootstrap,
    /// rotation, caBundle patching).
    #[serde(default)]
    pub certificates: CertificatesConfig,
    #[serde(default)]
    pub policies: PoliciesConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The namespace the webhook itself runs in; it is exempt as well.
    /// Unset: `$POD_NAMESPACE` (the downward API), when that is set.
    #[serde(default)]
    pub own_namespace: Option<String>,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
    #[serde(default)]
    pub teams: TeamsConfig,
    #[serde(default)]
    pub mutate: MutateConfig,
    /// Distributed tracing (`trace.rs`, docs/observability.md): absent, off.
    #[serde(default)]
    pub tracing: Option<tollgate_otel::TracingConfig>,
    #[serde(default)]
    pub audit: AuditConfig,
}

/// The server's periodic audit of existing objects (`docs/audit.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditConfig {
    /// Seconds between passes; 0 turns the in-server audit off. It runs
    /// only with a cluster and `ownNamespace` (its Lease lives there).
    #[serde(default = "default_audit_interval")]
    pub interval_seconds: u64,
    /// Kinds audited for policies that name none and constraints that match
    /// every kind. Empty: Pods, workloads, Services, Ingresses, Namespaces
    /// and ConfigMaps.
    #[serde(default)]
    pub kinds: Vec<String>,
    /// Objects per list call.
    #[serde(default = "default_audit_page_size")]
    pub page_size: u32,
    /// Threads judging objects: one leaves the other cores to admission.
    #[serde(default = "default_one")]
    pub workers: usize,
    /// Results kept per report; the summary counts them all.
    #[serde(default = "default_audit_results")]
    pub max_results_per_report: usize,
    /// Violations logged per policy and pass.
    #[serde(default = "default_audit_log")]
    pub log_per_policy: usize,
    /// Violations listed in a cluster constraint's `status.violations`
    /// (Gatekeeper's `--constraint-violations-limit`, default 20);
    /// `status.totalViolations` counts them all.
    #[serde(default = "default_constraint_violations")]
    pub constraint_violations_limit: usize,
    /// Write OpenReports `Report`s (one per namespace, one
    /// `ClusterReport`).
    #[serde(default = "yes")]
    pub reports: bool,
    /// The Lease that lets one replica audit at a time.
    #[serde(default = "default_audit_lease")]
    pub lease_name: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            interval_seconds: default_audit_interval(),
            kinds: Vec::new(),
            page_size: default_audit_page_size(),
            workers: default_one(),
            max_results_per_report: default_audit_results(),
            log_per_policy: default_audit_log(),
            constraint_violations_limit: default_constraint_violations(),
            reports: true,
            lease_name: default_audit_lease(),
        }
    }
}

fn default_constraint_violations() -> usize {
    20
}

fn default_audit_interval() -> u64 {
    300
}
fn default_audit_page_size() -> u32 {
    500
}
fn default_one() -> usize {
    1
}
fn default_audit_results() -> usize {
    100
}
fn default_audit_log() -> usize {
    10
}
fn default_audit_lease() -> String {
    "tollgate-audit".to_owned()
}

/// Which team an object belongs to, and what each team gets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TeamsConfig {
    /// The label that names an object's (and a namespace's) team.
    #[serde(default = "default_team_label")]
    pub label_key: String,
    /// A namespace without the label belongs to the team this regex's
    /// `team` group captures.
    #[serde(default = "default_namespace_pattern")]
    pub namespace_pattern: String,
    /// Flyte namespaces (`<project>-<domain>`): project → team.
    #[serde(default)]
    pub flyte: FlyteConfig,
    /// Requesters in these groups may set another team's label.
    #[serde(default)]
    pub admin_groups: Vec<String>,
    /// What every team gets unless `overrides` says otherwise.
    #[serde(default)]
    pub defaults: TeamSettings,
    /// Per team, keyed by team name; unset fields fall back to `defaults`.
    #[serde(default)]
    pub overrides: BTreeMap<String, TeamOverride>,
    /// Keep a ResourceQuota and LimitRange named `tollgate-team` in every
    /// team namespace (needs the cluster).
    #[serde(default)]
    pub manage_quotas: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FlyteConfig {
    #[serde(default)]
    pub projects: BTreeMap<String, String>,
    #[serde(default = "default_flyte_domains")]
    pub domains: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TeamSettings {
    #[serde(default = "default_resources")]
    pub resources: ResourceDefaults,
    #[serde(default)]
    pub quota: Quota,
    /// The Pod Security Standards level of the team's namespaces that carry
    /// no `pod-security.kubernetes.io/*` labels.
    #[serde(default)]
    pub pod_security: PodSecurityDefaults,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TeamOverride {
    #[serde(default)]
    pub resources: Option<ResourceDefaults>,
    #[serde(default)]
    pub quota: Option<Quota>,
    #[serde(default)]
    pub pod_security: Option<PodSecurityDefaults>,
}

/// Requests and limits given to containers that declare none, by
/// resource name (`cpu`, `memory`), as Kubernetes quantities.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceDefaults {
    #[serde(default)]
    pub requests: BTreeMap<String, String>,
    #[serde(default)]
    pub limits: BTreeMap<String, String>,
}

/// A team's quota per namespace, as Kubernetes quantities.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Quota {
    #[serde(default = "default_quota_cpu")]
    pub cpu: String,
    #[serde(default = "default_quota_memory")]
    pub memory: String,
    /// `requests.nvidia.com/gpu`.
    #[serde(default = "default_quota_gpu")]
    pub gpu: String,
    #[serde(default = "default_quota_pods")]
    pub pods: String,
}

/// The mutating webhook's settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MutateConfig {
    /// Off: `/mutate` admits everything unchanged (validation only).
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub security: SecurityDefaults,
    #[serde(default)]
    pub gpu: GpuConfig,
    #[serde(default)]
    pub sidecar: SidecarConfig,
}

/// Injecting the Tollgate proxy into workspace pods (docs/sidecar.md has
/// the traffic contract).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SidecarConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A pod with this label (any value but "false") is a workspace.
    #[serde(default = "default_workspace_label")]
    pub workspace_label: String,
    /// Where a workspace's owner is written: `{label: KEY}` or
    /// `{annotation: KEY}`. Default: the workspace label's own value
    /// (`tollgate.io/workspace: ml-user-1`). A workspace without one is
    /// denied at admission.
    #[serde(default)]
    pub owner_from: Option<OwnerSource>,
    #[serde(default)]
    pub mode: SidecarMode,
    #[serde(default = "default_proxy_image")]
    pub image: String,
    #[serde(default)]
    pub ports: ProxyPorts,
    #[serde(default = "default_proxy_resources")]
    pub resources: ResourceDefaults,
    /// The Secret holding the workload certificate (tls.crt, tls.key, ca.crt).
    #[serde(default = "default_proxy_cert_secret")]
    pub cert_secret: String,
    /// Instead of `certSecret`, any volume source for the certificate, as
    /// in a pod spec (a `projected` volume, cert-manager's `csi` driver…).
    #[serde(default)]
    pub cert_volume: Option<serde_json::Value>,
    /// The ConfigMap holding the proxy's config (optional in the pod).
    #[serde(default = "default_proxy_config_map")]
    pub config_map: String,
}

/// Where a workspace pod names its owner.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub enum OwnerSource {
    Label(String),
    Annotation(String),
}

impl SidecarConfig {
    /// The owner's source, the workspace label by default.
    pub fn owner_source(&self) -> OwnerSource {
        self.owner_from
            .clone()
            .unwrap_or_else(|| OwnerSource::Label(self.workspace_label.clone()))
    }
}

/// `native`: an init container with `restartPolicy: Always` (Kubernetes
/// 1.29+), so Jobs and Flyte task pods complete; `plain`: an ordinary
/// container; `auto`: native when the apiserver is 1.29 or newer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SidecarMode {
    #[default]
    Auto,
    Native,
    Plain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyPorts {
    /// Inbound TLS, named `tollgate-https`: what Services target.
    #[serde(default = "default_https_port")]
    pub https: u16,
    /// `/live`, `/ready`, `/metrics`, named `tollgate-admin`.
    #[serde(default = "default_admin_port")]
    pub admin: u16,
    /// Outbound: the app talks to peers through localhost:<this>.
    #[serde(default = "default_outbound_port")]
    pub outbound: u16,
}

impl Default for ProxyPorts {
    fn default() -> Self {
        ProxyPorts {
            https: default_https_port(),
            admin: default_admin_port(),
            outbound: default_outbound_port(),
        }
    }
}

impl Default for SidecarConfig {
    fn default() -> Self {
        SidecarConfig {
            enabled: true,
            workspace_label: default_workspace_label(),
            owner_from: None,
            mode: SidecarMode::Auto,
            image: default_proxy_image(),
            ports: ProxyPorts::default(),
            resources: default_proxy_resources(),
            cert_secret: default_proxy_cert_secret(),
            cert_volume: None,
            config_map: default_proxy_config_map(),
        }
    }
}

fn default_workspace_label() -> String {
    "tollgate.io/workspace".into()
}
fn default_proxy_image() -> String {
    "ghcr.io/tollgate-dev/tollgate-proxy:0.1.0".into()
}
fn default_proxy_resources() -> ResourceDefaults {
    ResourceDefaults {
        requests: BTreeMap::from([
            ("cpu".into(), "50m".into()),
            ("memory".into(), "64Mi".into()),
        ]),
        limits: BTreeMap::from([
            ("cpu".into(), "500m".into()),
            ("memory".into(), "128Mi".into()),
        ]),
    }
}
fn default_proxy_cert_secret() -> String {
    "tollgate-proxy-tls".into()
}
fn default_proxy_config_map() -> String {
    "tollgate-proxy".into()
}
fn default_https_port() -> u16 {
    15443
}
fn default_admin_port() -> u16 {
    15000
}
fn default_outbound_port() -> u16 {
    15001
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecurityDefaults {
    /// Also default `readOnlyRootFilesystem: true` on containers.
    #[serde(default)]
    pub read_only_root_filesystem: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GpuConfig {
    /// The extended resource that marks a GPU request.
    #[serde(default = "default_gpu_resource")]
    pub resource: String,
    #[serde(default = "default_gpu_tolerations")]
    pub tolerations: Vec<Toleration>,
    #[serde(default = "default_gpu_node_selector")]
    pub node_selector: BTreeMap<String, String>,
}

/// A toleration, as in a pod spec.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Toleration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<TolerationOperator>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum TolerationOperator {
    Exists,
    Equal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl Default for TeamsConfig {
    fn default() -> Self {
        TeamsConfig {
            label_key: default_team_label(),
            namespace_pattern: default_namespace_pattern(),
            flyte: FlyteConfig::default(),
            admin_groups: Vec::new(),
            defaults: TeamSettings::default(),
            overrides: BTreeMap::new(),
            manage_quotas: false,
        }
    }
}

impl Default for FlyteConfig {
    fn default() -> Self {
        FlyteConfig {
            projects: BTreeMap::new(),
            domains: default_flyte_domains(),
        }
    }
}

impl Default for TeamSettings {
    fn default() -> Self {
        TeamSettings {
            resources: default_resources(),
            quota: Quota::default(),
            pod_security: PodSecurityDefaults::default(),
        }
    }
}

impl Default for Quota {
    fn default() -> Self {
        Quota {
            cpu: default_quota_cpu(),
            memory: default_quota_memory(),
            gpu: default_quota_gpu(),
            pods: default_quota_pods(),
        }
    }
}

impl Default for MutateConfig {
    fn default() -> Self {
        MutateConfig {
            enabled: true,
            security: SecurityDefaults::default(),
            gpu: GpuConfig::default(),
            sidecar: SidecarConfig::default(),
        }
    }
}

fn yes() -> bool {
    true
}

impl Default for GpuConfig {
    fn default() -> Self {
        GpuConfig {
            resource: default_gpu_resource(),
            tolerations: default_gpu_tolerations(),
            node_selector: default_gpu_node_selector(),
        }
    }
}

impl TeamsConfig {
    /// A team's resource defaults: its override, else the global ones.
    pub fn resources(&self, team: &str) -> &ResourceDefaults {
        self.overrides
            .get(team)
            .and_then(|o| o.resources.as_ref())
            .unwrap_or(&self.defaults.resources)
    }

    /// A team's Pod Security default: its override, else the global one;
    /// namespaces of no team get the global one.
    pub fn pod_security(&self, team: Option<&str>) -> &PodSecurityDefaults {
        team.and_then(|t| self.overrides.get(t))
            .and_then(|o| o.pod_security.as_ref())
            .unwrap_or(&self.defaults.pod_security)
    }

    /// A team's quota: its override, else the global one.
    pub fn quota(&self, team: &str) -> &Quota {
        self.overrides
            .get(team)
            .and_then(|o| o.quota.as_ref())
            .unwrap_or(&self.defaults.quota)
    }
}

fn default_team_label() -> String {
    "team".into()
}
fn default_namespace_pattern() -> String {
    "^app-(?P<team>[a-z0-9-]+)-team$".into()
}
fn default_flyte_domains() -> Vec<String> {
    ["development", "staging", "production"]
        .map(String::from)
        .to_vec()
}
fn default_resources() -> ResourceDefaults {
    ResourceDefaults {
        requests: BTreeMap::from([
            ("cpu".into(), "100m".into()),
            ("memory".into(), "128Mi".into()),
        ]),
        limits: BTreeMap::from([("cpu".into(), "1".into()), ("memory".into(), "1Gi".into())]),
    }
}
fn default_quota_cpu() -> String {
    "16".into()
}
fn default_quota_memory() -> String {
    "64Gi".into()
}
fn default_quota_gpu() -> String {
    "0".into()
}
fn default_quota_pods() -> String {
    "100".into()
}
fn default_gpu_resource() -> String {
    "nvidia.com/gpu".into()
}
fn default_gpu_tolerations() -> Vec<Toleration> {
    vec![Toleration {
        key: Some("nvidia.com/gpu".into()),
        operator: Some(TolerationOperator::Exists),
        value: None,
        effect: Some(TaintEffect::NoSchedule),
        toleration_seconds: None,
    }]
}
fn default_gpu_node_selector() -> BTreeMap<String, String> {
    BTreeMap::from([("nvidia.com/gpu.present".into(), "true".into())])
}

/// How to reach the API server, for the features that need it (the
/// namespace cache, policy ConfigMaps, team quotas).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterConfig {
    /// Talk to the cluster at all. Unset: when `kubeconfig` is set or the
    /// process runs in a pod (`$KUBERNETES_SERVICE_HOST`).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// A kubeconfig file. Unset: the in-cluster service account, or
    /// `$KUBECONFIG`.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
}

impl ClusterConfig {
    pub fn enabled(&self) -> bool {
        self.enabled.unwrap_or_else(|| {
            self.kubeconfig.is_some() || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// The webhook's own serving certificate, kept in a Secret in
/// `ownNamespace`: created when absent or invalid, renewed before it
/// expires, its CA patched into the webhook configurations' `caBundle`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertificatesConfig {
    /// On: manage the Secret (needs the cluster, and no `tls` files).
    #[serde(default)]
    pub manage: bool,
    #[serde(default = "default_cert_secret")]
    pub secret_name: String,
    /// The Service in front of the webhook: the certificate names
    /// `<service>.<namespace>.svc` and `<service>.<namespace>.svc.cluster.local`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Extra DNS names and IP addresses for the certificate (a webhook
    /// reached by `url`).
    #[serde(default)]
    pub extra_dns_names: Vec<String>,
    #[serde(default)]
    pub ip_addresses: Vec<std::net::IpAddr>,
    /// The configurations whose every webhook gets the `caBundle`.
    #[serde(default = "default_webhook_configuration")]
    pub mutating_webhook_configuration: String,
    #[serde(default = "default_webhook_configuration")]
    pub validating_webhook_configuration: String,
    #[serde(default = "default_ca_lifetime")]
    pub ca_lifetime_seconds: u64,
    #[serde(default = "default_leaf_lifetime")]
    pub leaf_lifetime_seconds: u64,
    /// Renew a certificate once this fraction of its lifetime has passed.
    #[serde(default = "default_renew_at")]
    pub renew_at: f64,
    /// How often the Secret is checked (and files re-read, with `tls`).
    #[serde(default = "default_check_interval")]
    pub check_interval_seconds: u64,
}

impl Default for CertificatesConfig {
    fn default() -> Self {
        CertificatesConfig {
            manage: false,
            secret_name: default_cert_secret(),
            service_name: default_service_name(),
            extra_dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            mutating_webhook_configuration: default_webhook_configuration(),
            validating_webhook_configuration: default_webhook_configuration(),
            ca_lifetime_seconds: default_ca_lifetime(),
            leaf_lifetime_seconds: default_leaf_lifetime(),
            renew_at: default_renew_at(),
            check_interval_seconds: default_check_interval(),
        }
    }
}

fn default_cert_secret() -> String {
    "tollgate-webhook-tls".into()
}
fn default_service_name() -> String {
    "tollgate-webhook".into()
}
fn default_webhook_configuration() -> String {
    "tollgate".into()
}
fn default_ca_lifetime() -> u64 {
    10 * 365 * 24 * 3600
}
fn default_leaf_lifetime() -> u64 {
    365 * 24 * 3600
}
fn default_renew_at() -> f64 {
    2.0 / 3.0
}
fn default_check_interval() -> u64 {
    60
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PoliciesConfig {
    /// Directories searched (recursively) for `.rego` files. Empty: the
    /// library bundled into the binary.
    #[serde(default)]
    pub dirs: Vec<PathBuf>,
    /// Requests for objects in these namespaces are admitted unevaluated.
    #[serde(default = "default_exempt")]
    pub exempt_namespaces: Vec<String>,
    /// Requests made by these users (`userInfo.username`) are admitted
    /// unevaluated and unmutated. The chart renders the same list into the
    /// webhook configurations' `matchConditions`, so that the apiserver
    /// does not send them at all.
    #[serde(default = "default_exempt_users")]
    pub exempt_users: Vec<String>,
    /// Likewise for requesters in any of these groups.
    #[serde(default = "default_exempt_groups")]
    pub exempt_groups: Vec<String>,
    /// Per-policy settings, keyed by policy name (`tollgate.<name>`).
    #[serde(default)]
    pub overrides: BTreeMap<String, PolicyOverride>,
    /// Also load policies from ConfigMaps labelled `tollgate.io/policy` in
    /// `ownNamespace`, watched and hot-reloaded.
    #[serde(default)]
    pub watch_config_maps: bool,
    /// Also load Gatekeeper ConstraintTemplates and constraints that live
    /// in the cluster as custom resources (`templates.gatekeeper.sh`,
    /// `constraints.gatekeeper.sh`), watched and hot-reloaded; the webhook
    /// creates each template's constraint CRD and writes their `status`.
    /// Refused while Gatekeeper's own webhook is installed.
    #[serde(default)]
    pub watch_constraint_templates: bool,
    /// Kinds whose objects Gatekeeper templates see as `data.inventory`
    /// (Gatekeeper's `Config` sync), watched.
    #[serde(default)]
    pub sync: Vec<SyncKind>,
    /// Wall-clock budget of one policy evaluation; past it the evaluation
    /// fails (and a `deny` policy denies).
    #[serde(default = "default_eval_timeout", with = "millis")]
    pub evaluation_timeout_ms: Duration,
    /// Outcomes kept for reviews that repeat exactly (an ArgoCD re-sync);
    /// 0 turns the cache off. See `policy::decision_cache`.
    #[serde(default = "default_decision_cache_entries")]
    pub decision_cache_entries: usize,
}

/// A kind to sync, as in Gatekeeper's `Config` (`syncOnly`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SyncKind {
    /// `""` for the core group.
    #[serde(default)]
    pub group: String,
    pub version: String,
    pub kind: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyOverride {
    #[serde(default)]
    pub enforcement: Option<Enforcement>,
    /// Passed to the policy as `input.parameters`.
    #[serde(default)]
    pub parameters: Option<serde_json::Value>,
}

/// What a violation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Enforcement {
    /// The request is denied.
    #[default]
    Deny,
    /// The request is admitted with a warning shown to the user.
    Warn,
    /// The request is admitted; the violation is only logged and counted.
    Dryrun,
}

impl Enforcement {
    pub fn as_str(self) -> &'static str {
        match self {
            Enforcement::Deny => "deny",
            Enforcement::Warn => "warn",
            Enforcement::Dryrun => "dryrun",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitsConfig {
    /// Largest request body accepted; larger gets 413.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Requests in flight at once; more wait (within the timeout).
    #[serde(default = "default_concurrency")]
    pub max_concurrent_requests: usize,
    /// Whole-request budget, including the wait for a concurrency slot.
    #[serde(default = "default_request_timeout", with = "millis")]
    pub request_timeout_ms: Duration,
    /// How long a TLS handshake may take, and a new connection may go
    /// without delivering a request head (slowloris).
    #[serde(default = "default_header_read_timeout", with = "millis")]
    pub header_read_timeout_ms: Duration,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

impl Default for PoliciesConfig {
    fn default() -> Self {
        PoliciesConfig {
            dirs: Vec::new(),
            exempt_namespaces: default_exempt(),
            exempt_users: default_exempt_users(),
            exempt_groups: default_exempt_groups(),
            overrides: BTreeMap::new(),
            watch_config_maps: false,
            watch_constraint_templates: false,
            sync: Vec::new(),
            evaluation_timeout_ms: default_eval_timeout(),
            decision_cache_entries: default_decision_cache_entries(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: default_max_body(),
            max_concurrent_requests: default_concurrency(),
            request_timeout_ms: default_request_timeout(),
            header_read_timeout_ms: default_header_read_timeout(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tracing: None,
            listen: default_listen(),
            tls: None,
            certificates: CertificatesConfig::default(),
            policies: PoliciesConfig::default(),
            limits: LimitsConfig::default(),
            own_namespace: None,
            log: LogConfig::default(),
            cluster: ClusterConfig::default(),
            teams: TeamsConfig::default(),
            mutate: MutateConfig::default(),
            audit: AuditConfig::default(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}
fn default_exempt() -> Vec<String> {
    DEFAULT_EXEMPT_NAMESPACES.map(String::from).to_vec()
}
fn default_exempt_users() -> Vec<String> {
    DEFAULT_EXEMPT_USERS.map(String::from).to_vec()
}
fn default_exempt_groups() -> Vec<String> {
    DEFAULT_EXEMPT_GROUPS.map(String::from).to_vec()
}
fn default_decision_cache_entries() -> usize {
    4096
}
fn default_eval_timeout() -> Duration {
    Duration::from_millis(500)
}
fn default_max_body() -> usize {
    // The apiserver's own limit on a request is 3 MiB of object; a review
    // carries the object and the old object, plus envelope.
    8 * 1024 * 1024
}
fn default_concurrency() -> usize {
    256
}
fn default_header_read_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_request_timeout() -> Duration {
    // Below the apiserver's usual webhook timeoutSeconds (the chart sets 3 s).
    Duration::from_millis(2500)
}

mod millis {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// A configuration that could not be used, with the cause and where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {path}: {message}")]
    Invalid {
        file: String,
        path: String,
        message: String,
    },
}

impl Config {
    /// Reads and checks the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses configuration text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Config::default());
        }
        let de = yaml_serde::Deserializer::from_str(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::Invalid {
                file: file.to_owned(),
                path: if path == "." {
                    "(top level)".into()
                } else {
                    path
                },
                message: without_own_path(&e.into_inner().to_string()),
            }
        })?;
        config.check(file)?;
        Ok(config)
    }

    fn check(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |path: &str, message: &str| ConfigError::Invalid {
            file: file.to_owned(),
            path: path.to_owned(),
            message: message.to_owned(),
        };
        if self.limits.max_body_bytes == 0 {
            return Err(invalid("limits.maxBodyBytes", "must be greater than 0"));
        }
        if let Some(tracing) = &self.tracing
            && let Err((path, message)) = tracing.check()
        {
            return Err(invalid(&format!("tracing.{path}"), &message));
        }
        if self.limits.max_concurrent_requests == 0 {
            return Err(invalid(
                "limits.maxConcurrentRequests",
                "must be greater than 0",
            ));
        }
        if self.limits.request_timeout_ms.is_zero() {
            return Err(invalid("limits.requestTimeoutMs", "must be greater than 0"));
        }
        match regex::Regex::new(&self.teams.namespace_pattern) {
            Ok(re) if re.capture_names().any(|n| n == Some("team")) => {}
            Ok(_) => {
                return Err(invalid(
                    "teams.namespacePattern",
                    "must have a named group `team`, e.g. ^app-(?P<team>[a-z0-9-]+)-team$",
                ));
            }
            Err(e) => return Err(invalid("teams.namespacePattern", &e.to_string())),
        }
        if let Some(source) = &self.mutate.sidecar.cert_volume {
            let mut volume = source.clone();
            if let Some(map) = volume.as_object_mut() {
                map.insert("name".into(), "tollgate-proxy-certs".into());
            }
            if let Err(e) =
                serde_path_to_error::deserialize::<_, k8s_openapi::api::core::v1::Volume>(volume)
            {
                return Err(invalid(
                    &format!("mutate.sidecar.certVolume.{}", e.path()),
                    &e.into_inner().to_string(),
                ));
            }
        }
        for (wanted, path) in [
            (self.policies.watch_config_maps, "policies.watchConfigMaps"),
            (
                self.policies.watch_constraint_templates,
                "policies.watchConstraintTemplates",
            ),
            (!self.policies.sync.is_empty(), "policies.sync"),
            (self.teams.manage_quotas, "teams.manageQuotas"),
            (self.certificates.manage, "certificates.manage"),
        ] {
            if wanted && !self.cluster.enabled() {
                return Err(invalid(
                    path,
                    "needs the cluster: run in a pod, or set cluster.kubeconfig",
                ));
            }
        }
        if self.policies.watch_config_maps && self.own_namespace().is_none() {
            return Err(invalid(
                "policies.watchConfigMaps",
                "needs the webhook's namespace: set ownNamespace (or $POD_NAMESPACE)",
            ));
        }
        let certs = &self.certificates;
        if certs.manage && self.tls.is_some() {
            return Err(invalid(
                "certificates.manage",
                "conflicts with tls: the certificate comes either from files or from the managed Secret",
            ));
        }
        if certs.manage && self.own_namespace().is_none() {
            return Err(invalid(
                "certificates.manage",
                "needs the webhook's namespace (for its Secret): set ownNamespace (or $POD_NAMESPACE)",
            ));
        }
        if !(certs.renew_at > 0.0 && certs.renew_at < 1.0) {
            return Err(invalid(
                "certificates.renewAt",
                "must be a fraction of the lifetime between 0 and 1 (e.g. 0.667)",
            ));
        }
        for (value, path) in [
            (
                certs.leaf_lifetime_seconds,
                "certificates.leafLifetimeSeconds",
            ),
            (certs.ca_lifetime_seconds, "certificates.caLifetimeSeconds"),
            (
                certs.check_interval_seconds,
                "certificates.checkIntervalSeconds",
            ),
        ] {
            if value == 0 {
                return Err(invalid(path, "must be greater than 0"));
            }
        }
        if certs.leaf_lifetime_seconds >= certs.ca_lifetime_seconds {
            return Err(invalid(
                "certificates.leafLifetimeSeconds",
                "must be shorter than certificates.caLifetimeSeconds",
            ));
        }
        if self.audit.page_size == 0 {
            return Err(invalid("audit.pageSize", "must be greater than 0"));
        }
        if self.audit.workers == 0 {
            return Err(invalid("audit.workers", "must be greater than 0"));
        }
        if self.audit.lease_name.is_empty() {
            return Err(invalid("audit.leaseName", "must not be empty"));
        }
        if self.policies.evaluation_timeout_ms.is_zero() {
            return Err(invalid(
                "policies.evaluationTimeoutMs",
                "must be greater than 0",
            ));
        }
        Ok(())
    }

    /// The namespace the webhook runs in: `ownNamespace`, else
    /// `$POD_NAMESPACE`.
    pub fn own_namespace(&self) -> Option<String> {
        let from_env = || {
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|n| !n.is_empty())
        };
        self.own_namespace.clone().or_else(from_env)
    }

    /// Every namespace whose requests are admitted unevaluated.
    pub fn exempt_namespaces(&self) -> Vec<String> {
        let mut all = self.policies.exempt_namespaces.clone();
        all.extend(self.own_namespace());
        all
    }
}

/// yaml_serde starts its message with its own (coarser) path; the error
/// already names the exact one.
fn without_own_path(message: &str) -> String {
    match message.split_once(": ") {
        Some((head, rest)) if !head.contains(' ') => rest.to_owned(),
        _ => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.yaml");
        let config = Config::load(&path).unwrap();
        assert_eq!(config.limits.max_body_bytes, 8 * 1024 * 1024);
        assert_eq!(
            config.policies.overrides["image_tag"].enforcement,
            Some(Enforcement::Warn)
        );
    }

    #[test]
    fn empty_config_is_all_defaults() {
        let config = Config::parse("", "empty").unwrap();
        assert_eq!(config.listen, default_listen());
        assert_eq!(
            config.exempt_namespaces(),
            vec!["kube-system", "kube-public", "kube-node-lease"]
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let err = Config::parse("limits:\n  maxBodyByte: 10\n", "t.yaml").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with(
                "t.yaml: limits.maxBodyByte: unknown field `maxBodyByte`, expected one of"
            ),
            "{msg}"
        );
    }

    #[test]
    fn bad_enforcement_value_is_named_with_its_path() {
        let err = Config::parse(
            "policies:\n  overrides:\n    privileged:\n      enforcement: block\n",
            "t.yaml",
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("t.yaml: policies.overrides.privileged.enforcement: unknown variant `block`, expected one of `deny`, `warn`, `dryrun`"),
            "{msg}"
        );
    }

    #[test]
    fn a_misspelt_taint_effect_is_named_with_its_path() {
        let err = Config::parse(
            "mutate:\n  gpu:\n    tolerations:\n    - key: nvidia.com/gpu\n      effect: NoSchedul\n",
            "t.yaml",
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with(
                "t.yaml: mutate.gpu.tolerations[0].effect: unknown variant `NoSchedul`, expected one of `NoSchedule`, `PreferNoSchedule`, `NoExecute`"
            ),
            "{err}"
        );
    }

    #[test]
    fn managed_certificates_are_checked() {
        let err = |yaml: &str| Config::parse(yaml, "c.yaml").unwrap_err().to_string();
        let managed = "ownNamespace: t\ncluster: {enabled: true}\ncertificates: {manage: true";
        assert!(Config::parse(&format!("{managed}}}"), "c.yaml").is_ok());
        assert!(
            err(&format!("{managed}}}\ntls: {{certFile: a, keyFile: b}}"))
                .contains("certificates.manage: conflicts with tls"),
        );
        assert!(err(&format!("{managed}, renewAt: 1.5}}")).contains("certificates.renewAt"));
        assert!(
            err(&format!("{managed}, leafLifetimeSeconds: 0}}"))
                .contains("certificates.leafLifetimeSeconds: must be greater than 0")
        );
        assert!(
            err("certificates: {manage: true}\ncluster: {enabled: false}")
                .contains("certificates.manage: needs the cluster")
        );
        assert!(err("certificates: {mange: true}").contains("certificates"));
    }

    #[test]
    fn watching_constraint_templates_needs_the_cluster() {
        let err = Config::parse(
            "certificates: {manage: false}\ncluster: {enabled: false}\npolicies: {watchConstraintTemplates: true}",
            "c.yaml",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "c.yaml: policies.watchConstraintTemplates: needs the cluster: run in a pod, or set cluster.kubeconfig"
        );
        let config = Config::parse(
            "certificates: {manage: false}\ncluster: {enabled: true}\npolicies: {watchConstraintTemplates: true}",
            "c.yaml",
        )
        .unwrap();
        assert!(config.policies.watch_constraint_templates);
    }

    #[test]
    fn a_namespace_pattern_without_a_team_group_is_refused() {
        let err =
            Config::parse("teams:\n  namespacePattern: \"^app-.*$\"\n", "t.yaml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.yaml: teams.namespacePattern: must have a named group `team`, e.g. ^app-(?P<team>[a-z0-9-]+)-team$"
        );
    }

    #[test]
    fn a_bad_certificate_volume_is_named_with_its_path() {
        let err = Config::parse(
            "mutate:\n  sidecar:\n    certVolume:\n      csi: {driver: 7}\n",
            "t.yaml",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("t.yaml: mutate.sidecar.certVolume.csi.driver: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn zero_limits_are_rejected() {
        let err = Config::parse("limits:\n  maxBodyBytes: 0\n", "t.yaml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.yaml: limits.maxBodyBytes: must be greater than 0"
        );
    }

    #[test]
    fn tracing_errors_name_their_path() {
        let err = |text: &str| Config::parse(text, "t.yaml").unwrap_err().to_string();
        assert_eq!(
            err("tracing:\n  otlp: http://c:4318/v1/traces\n  sampling: -1\n"),
            "t.yaml: tracing.sampling: -1 is not a ratio from 0.0 to 1.0"
        );
        assert!(
            err("tracing:\n  otlp: http://c:4318/v1/traces\n  endpoint: x\n")
                .starts_with("t.yaml: tracing.endpoint: unknown field `endpoint`"),
        );
        let ok = Config::parse("tracing:\n  otlp: http://c:4318/v1/traces\n", "t.yaml").unwrap();
        assert_eq!(ok.tracing.unwrap().sampling, 1.0);
        assert!(Config::parse("", "t.yaml").unwrap().tracing.is_none());
    }
}
