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

/// Namespaces that are never evaluated unless the config says otherwise:
/// the control plane's own, so that the webhook can never lock it out.
pub const DEFAULT_EXEMPT_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    /// Address the HTTPS server listens on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The serving certificate. Absent only in dev mode, which generates one.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
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
}

/// How to reach the API server, for the features that need it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterConfig {
    /// A kubeconfig file. Unset: the in-cluster service account, or
    /// `$KUBECONFIG`.
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
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
    /// Per-policy settings, keyed by policy name (`tollgate.<name>`).
    #[serde(default)]
    pub overrides: BTreeMap<String, PolicyOverride>,
    /// Also load policies from ConfigMaps labelled `tollgate.io/policy` in
    /// `ownNamespace`, watched and hot-reloaded.
    #[serde(default)]
    pub watch_config_maps: bool,
    /// Wall-clock budget of one policy evaluation; past it the evaluation
    /// fails (and a `deny` policy denies).
    #[serde(default = "default_eval_timeout", with = "millis")]
    pub evaluation_timeout_ms: Duration,
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
            overrides: BTreeMap::new(),
            watch_config_maps: false,
            evaluation_timeout_ms: default_eval_timeout(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_body_bytes: default_max_body(),
            max_concurrent_requests: default_concurrency(),
            request_timeout_ms: default_request_timeout(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: default_listen(),
            tls: None,
            policies: PoliciesConfig::default(),
            limits: LimitsConfig::default(),
            own_namespace: None,
            log: LogConfig::default(),
            cluster: ClusterConfig::default(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}
fn default_exempt() -> Vec<String> {
    DEFAULT_EXEMPT_NAMESPACES.map(String::from).to_vec()
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
        if self.limits.max_concurrent_requests == 0 {
            return Err(invalid(
                "limits.maxConcurrentRequests",
                "must be greater than 0",
            ));
        }
        if self.limits.request_timeout_ms.is_zero() {
            return Err(invalid("limits.requestTimeoutMs", "must be greater than 0"));
        }
        if self.policies.watch_config_maps && self.own_namespace().is_none() {
            return Err(invalid(
                "policies.watchConfigMaps",
                "needs the webhook's namespace: set ownNamespace (or $POD_NAMESPACE)",
            ));
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
    fn zero_limits_are_rejected() {
        let err = Config::parse("limits:\n  maxBodyBytes: 0\n", "t.yaml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "t.yaml: limits.maxBodyBytes: must be greater than 0"
        );
    }
}
