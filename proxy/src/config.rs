//! The proxy's configuration: one YAML file (`proxy.yaml`), unknown keys
//! refused, every error naming the path of the offending value, every field
//! defaulted. `config/example.yaml` documents them all; a unit test loads it.
//!
//! The sidecar contract's environment variables (`TOLLGATE_APP_PORT`,
//! `TOLLGATE_INBOUND_PORT`, `TOLLGATE_ADMIN_PORT`, `TOLLGATE_OUTBOUND_PORT`,
//! `TOLLGATE_PROFILE`, and `TOLLGATE_EXPECTED_REPLICAS` for
//! `rateLimit.shared.expectedReplicas`) override the file: the injector
//! sets them per pod.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tollgate_certs::reload::ClientAuth;
use tollgate_certs::spiffe::IdPattern;

pub use crate::route::RouteConfig;
use crate::route::RouteTable;

/// Where the injector mounts the config.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/tollgate-proxy/config/proxy.yaml";
/// Where the injector mounts the workload certificate.
pub const DEFAULT_CERTS_DIR: &str = "/etc/tollgate-proxy/certs";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    #[serde(default)]
    pub listeners: Listeners,
    /// The app this sidecar fronts, on localhost.
    #[serde(default)]
    pub app: AppConfig,
    /// The inbound listener's one route table (`route.rs`): first
    /// `pathPrefix` match wins, and the route carries every policy of the
    /// request. No match: any peer the listener's `clientAuth` let in, no
    /// JWT check, no rate limit, no filters.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// How inbound paths are normalised before any route sees them
    /// (`path.rs`); the normalised path is forwarded.
    #[serde(default)]
    pub paths: crate::path::PathConfig,
    /// Where the outbound listener sends requests, by `Host`.
    #[serde(default)]
    pub outbound: OutboundConfig,
    #[serde(default)]
    pub certs: CertsConfig,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// On SIGTERM (or `POST /shutdown`): how long requests and streams in
    /// flight may take to finish before the proxy closes them and exits.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout_seconds: u64,
    #[serde(default)]
    pub access_log: AccessLogConfig,
    #[serde(default)]
    pub log: LogConfig,
    /// The async runtime's shape (`runtime.workers`).
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// JWT validation on the inbound listener (`jwt/config.rs`).
    #[serde(default)]
    pub jwt: Option<crate::jwt::JwtConfig>,
    /// Rate limits on the inbound listener (`ratelimit/`).
    #[serde(default)]
    pub rate_limit: Option<crate::ratelimit::RateLimitConfig>,
    /// WASM filters: `crate::filters::FiltersConfig` (docs/filters.md);
    /// absent, `[]` or `{}`: none.
    #[serde(default)]
    pub filters: Option<serde_json::Value>,
    /// Distributed tracing (`trace/`): absent, off.
    #[serde(default)]
    pub tracing: Option<crate::trace::TracingConfig>,
    /// The JWT/rate-limit profile; `$TOLLGATE_PROFILE` sets it.
    #[serde(default)]
    pub profile: Option<String>,
    /// The environment variables the routes' authorization rules read,
    /// captured by [`Config::apply_env`] (never from the file).
    #[serde(skip)]
    pub env: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Listeners {
    #[serde(default)]
    pub inbound: InboundListener,
    #[serde(default)]
    pub outbound: OutboundListener,
    #[serde(default)]
    pub admin: AdminListener,
}

/// The TLS listener Services target (port name `tollgate-https`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InboundListener {
    #[serde(default = "any_address")]
    pub address: IpAddr,
    /// `$TOLLGATE_INBOUND_PORT` overrides.
    #[serde(default = "default_inbound_port")]
    pub port: u16,
    /// `required`: mTLS between workloads; `optional`: verified when
    /// presented; `off`: no client certificates (browsers via an ingress).
    #[serde(default)]
    pub client_auth: ClientAuthMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuthMode {
    #[default]
    Required,
    Optional,
    Off,
}

impl From<ClientAuthMode> for ClientAuth {
    fn from(mode: ClientAuthMode) -> ClientAuth {
        match mode {
            ClientAuthMode::Required => ClientAuth::Required,
            ClientAuthMode::Optional => ClientAuth::Optional,
            ClientAuthMode::Off => ClientAuth::Off,
        }
    }
}

/// Plaintext HTTP/1.1 and h2c from the app, on 127.0.0.1 only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutboundListener {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// `$TOLLGATE_OUTBOUND_PORT` overrides.
    #[serde(default = "default_outbound_port")]
    pub port: u16,
}

/// `/live`, `/ready`, `/metrics`, `POST /shutdown` (plain HTTP).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AdminListener {
    #[serde(default = "any_address")]
    pub address: IpAddr,
    /// `$TOLLGATE_ADMIN_PORT` overrides.
    #[serde(default = "default_admin_port")]
    pub port: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AppConfig {
    #[serde(default = "localhost")]
    pub address: IpAddr,
    /// `$TOLLGATE_APP_PORT` overrides.
    #[serde(default = "default_app_port")]
    pub port: u16,
    /// `http1`: HTTP/1.1 to the app (h2 requests are translated);
    /// `h2c`: HTTP/2 without TLS (gRPC apps).
    #[serde(default)]
    pub protocol: AppProtocol,
    /// Idle pooled connections to the app, per protocol.
    #[serde(default = "default_pool_max_idle")]
    pub pool_max_idle: usize,
    #[serde(default = "default_pool_idle_timeout")]
    pub pool_idle_timeout_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    #[default]
    Http1,
    H2c,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutboundConfig {
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
}

/// A peer the app reaches through the outbound listener, over mTLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamConfig {
    /// The request `Host` (port ignored, case-insensitive) that selects
    /// this upstream, e.g. `flyteadmin.flyte.svc`.
    pub host: String,
    /// `host:port` to connect to; default `<host>:443`.
    #[serde(default)]
    pub address: Option<String>,
    /// TLS server name (SNI); default the host part of `address`.
    #[serde(default)]
    pub server_name: Option<String>,
    /// The server's SPIFFE ID must match one of these. Empty: the server's
    /// certificate must name `serverName` instead.
    #[serde(default)]
    pub identities: Vec<String>,
    /// `auto`: ALPN (h2 when the server offers it); `http1`; `h2`.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    #[default]
    Auto,
    Http1,
    H2,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertsConfig {
    /// `tls.crt`, `tls.key`, `ca.crt`; `--certs` overrides.
    #[serde(default = "default_certs_dir")]
    pub dir: PathBuf,
    /// How often the files are checked for a rotation.
    #[serde(default = "default_reload_interval")]
    pub reload_interval_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Limits {
    /// Request head size (HTTP/1.1 read buffer, HTTP/2 header list);
    /// over it: 431, on HTTP/1.1 and on its own h2 stream alike (an h2 head
    /// over four times it closes the connection).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Request body cap, streamed (never buffered): a body past it is
    /// answered 413, after the rest (up to as much again) is read and
    /// thrown away, so a client still sending sees the answer; past twice
    /// it the stream is cut. Absent: no limit.
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// How long a client may take to send an HTTP/1.1 request head
    /// (slowloris).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_ms: u64,
    /// How long a TLS handshake may take.
    #[serde(default = "default_handshake_timeout")]
    pub tls_handshake_timeout_ms: u64,
    /// Largest payload of one WebSocket frame a client may send on an
    /// upgraded connection; a larger one closes the connection with 1009
    /// before any of its payload reaches the app. `null`: no cap.
    #[serde(default = "default_max_websocket_frame")]
    pub max_web_socket_frame_bytes: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Timeouts {
    /// Connecting to the app or an upstream.
    #[serde(default = "default_connect_timeout")]
    pub connect_ms: u64,
    /// From a request to its response headers (bodies and streams are
    /// never cut). Absent: none, so long polls and gRPC streams live.
    #[serde(default)]
    pub response_headers_ms: Option<u64>,
    /// Close an upgraded connection (WebSocket) idle this long in both
    /// directions. Absent: never.
    #[serde(default)]
    pub upgrade_idle_seconds: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogConfig {
    /// One JSON line per request, on stderr with the other logs.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Paths never logged (health probes that pass through the proxy).
    #[serde(default = "default_excluded_paths")]
    pub exclude_paths: Vec<String>,
    /// Log the admin server's probes (`/live`, `/ready`, `/metrics`) too.
    #[serde(default)]
    pub health_probes: bool,
}

/// How many threads serve connections.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuntimeConfig {
    /// Worker threads. Absent or 0: one per CPU the process may use (its
    /// affinity and cgroup quota count). 1 (and so the default on one
    /// CPU, a sidecar's usual limit): a single-threaded runtime, where a
    /// request, its upstream call and its response never change threads;
    /// `benches/peers.sh` measured it against one multi-thread worker.
    #[serde(default)]
    pub workers: usize,
}

impl RuntimeConfig {
    /// The number of worker threads to start.
    pub fn worker_threads(&self) -> usize {
        match self.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Json,
    Pretty,
}

fn yes() -> bool {
    true
}
fn any_address() -> IpAddr {
    IpAddr::V4(Ipv4Addr::UNSPECIFIED)
}
fn localhost() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}
fn default_inbound_port() -> u16 {
    15443
}
fn default_admin_port() -> u16 {
    15000
}
fn default_outbound_port() -> u16 {
    15001
}
fn default_app_port() -> u16 {
    8080
}
fn default_pool_max_idle() -> usize {
    64
}
fn default_pool_idle_timeout() -> u64 {
    90
}
fn default_certs_dir() -> PathBuf {
    PathBuf::from(DEFAULT_CERTS_DIR)
}
fn default_reload_interval() -> u64 {
    1000
}
fn default_max_header_bytes() -> usize {
    64 * 1024
}
fn default_header_read_timeout() -> u64 {
    10_000
}
fn default_max_websocket_frame() -> Option<u64> {
    // tungstenite's own default frame cap.
    Some(16 << 20)
}
fn default_handshake_timeout() -> u64 {
    10_000
}
fn default_connect_timeout() -> u64 {
    2_000
}
fn default_drain_timeout() -> u64 {
    20
}
fn default_excluded_paths() -> Vec<String> {
    ["/healthz", "/readyz", "/livez"].map(String::from).to_vec()
}

macro_rules! default_from_serde {
    ($($t:ty),*) => {$(
        impl Default for $t {
            fn default() -> Self {
                // Every field has a serde default, so `{}` always parses.
                serde_json::from_value(serde_json::json!({}))
                    .unwrap_or_else(|e| unreachable!("{}: {e}", stringify!($t)))
            }
        }
    )*};
}
default_from_serde!(
    Config,
    InboundListener,
    OutboundListener,
    AdminListener,
    AppConfig,
    CertsConfig,
    Limits,
    Timeouts,
    AccessLogConfig
);

/// A configuration that cannot be used, by cause and path.
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
    #[error("environment variable {name}: {message}")]
    Env { name: &'static str, message: String },
    #[error("{path}: {message}")]
    Unresolved { path: String, message: String },
}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses and checks configuration text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let config = if text.trim().is_empty() {
            Config::default()
        } else {
            let de = yaml_serde::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let path = e.path().to_string();
                ConfigError::Invalid {
                    file: file.to_owned(),
                    path: match path.as_str() {
                        "." => "(top level)".into(),
                        "?" => "(YAML syntax)".into(),
                        _ => path,
                    },
                    message: without_own_path(&e.into_inner().to_string()),
                }
            })?
        };
        config.check(file)?;
        Ok(config)
    }

    /// Applies the sidecar contract's environment variables, as `get`
    /// reads them.
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let port = |name: &'static str| -> Result<Option<u16>, ConfigError> {
            match get(name) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => match v.trim().parse::<u16>() {
                    Ok(p) if p > 0 => Ok(Some(p)),
                    _ => Err(ConfigError::Env {
                        name,
                        message: format!("{v:?} is not a port (1-65535)"),
                    }),
                },
            }
        };
        if let Some(p) = port("TOLLGATE_APP_PORT")? {
            self.app.port = p;
        }
        if let Some(p) = port("TOLLGATE_INBOUND_PORT")? {
            self.listeners.inbound.port = p;
        }
        if let Some(p) = port("TOLLGATE_ADMIN_PORT")? {
            self.listeners.admin.port = p;
        }
        if let Some(p) = port("TOLLGATE_OUTBOUND_PORT")? {
            self.listeners.outbound.port = p;
        }
        if let Some(profile) = get("TOLLGATE_PROFILE").filter(|p| !p.trim().is_empty()) {
            self.profile = Some(profile.trim().to_owned());
        }
        let mut names: Vec<String> = vec![
            crate::authz::config::SHARING_ENV.into(),
            crate::authz::config::TEAM_ENV.into(),
        ];
        for route in &self.routes {
            for (name, _) in route.authorization.iter().flat_map(|a| a.env_references()) {
                names.push(name);
            }
        }
        for name in names {
            if let Some(value) = get(&name) {
                self.env.insert(name, value);
            }
        }
        // A rule reading a variable that is not there stops the proxy now,
        // naming the rule, rather than letting it compare with nothing.
        self.route_table()?;
        let replicas_env = crate::ratelimit::shared::REPLICAS_ENV;
        if let Some(v) = get(replicas_env).filter(|v| !v.trim().is_empty()) {
            let replicas = match v.trim().parse::<u32>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(ConfigError::Env {
                        name: replicas_env,
                        message: format!("{v:?} is not a replica count (1 or more)"),
                    });
                }
            };
            if let Some(shared) = self.rate_limit.as_mut().and_then(|r| r.shared.as_mut()) {
                shared.expected_replicas = replicas;
            }
        }
        Ok(())
    }

    /// What `--check` adds to the load's checks: every WASM filter is
    /// instantiated and configured as the proxy would at start, so a
    /// configuration the filter itself refuses (`proxy_on_configure`
    /// returning false, a trap or `proc_exit` while starting) is a config
    /// error naming the filter.
    pub fn check_filters(&self, file: &str) -> Result<(), ConfigError> {
        let Some(section) = &self.filters else {
            return Ok(());
        };
        crate::filters::check_section(section).map_err(|(path, message)| ConfigError::Invalid {
            file: file.to_owned(),
            path,
            message,
        })
    }

    fn check(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |path: String, message: String| ConfigError::Invalid {
            file: file.to_owned(),
            path,
            message,
        };
        self.refuse_legacy_routes(file)?;
        if let Some(jwt) = &self.jwt {
            jwt.check()
                .map_err(|(path, message)| invalid(format!("jwt.{path}"), message))?;
        }
        if let Some(rate_limit) = &self.rate_limit {
            rate_limit
                .check()
                .map_err(|(path, message)| invalid(format!("rateLimit.{path}"), message))?;
        }
        if let Some(tracing) = &self.tracing {
            tracing
                .check()
                .map_err(|(path, message)| invalid(format!("tracing.{path}"), message))?;
        }
        if let Some(section) = &self.filters {
            crate::filters::FiltersConfig::from_section(section)
                .map_err(|(path, message)| invalid(path, message))?;
        }
        self.check_routes()
            .map_err(|(path, message)| invalid(path, message))?;
        for (i, up) in self.outbound.upstreams.iter().enumerate() {
            if up.host.trim().is_empty() {
                return Err(invalid(
                    format!("outbound.upstreams[{i}].host"),
                    "must not be empty".into(),
                ));
            }
            if let Some(addr) = &up.address
                && split_host_port(addr).is_none()
            {
                return Err(invalid(
                    format!("outbound.upstreams[{i}].address"),
                    format!("{addr:?} is not host:port"),
                ));
            }
            for (j, p) in up.identities.iter().enumerate() {
                if let Err(e) = IdPattern::parse(p) {
                    return Err(invalid(
                        format!("outbound.upstreams[{i}].identities[{j}]"),
                        e.to_string(),
                    ));
                }
            }
        }
        for (path, value) in [
            (
                "limits.headerReadTimeoutMs",
                self.limits.header_read_timeout_ms,
            ),
            (
                "limits.tlsHandshakeTimeoutMs",
                self.limits.tls_handshake_timeout_ms,
            ),
            ("timeouts.connectMs", self.timeouts.connect_ms),
            ("certs.reloadIntervalMs", self.certs.reload_interval_ms),
        ] {
            if value == 0 {
                return Err(invalid(path.into(), "must be greater than 0".into()));
            }
        }
        if self.limits.max_header_bytes < 8192 {
            return Err(invalid(
                "limits.maxHeaderBytes".into(),
                "must be at least 8192".into(),
            ));
        }
        if self.limits.max_header_bytes > u32::MAX as usize {
            return Err(invalid(
                "limits.maxHeaderBytes".into(),
                "must be at most 4294967295".into(),
            ));
        }
        if self.timeouts.response_headers_ms == Some(0) {
            return Err(invalid(
                "timeouts.responseHeadersMs".into(),
                "must be greater than 0 (or absent for none)".into(),
            ));
        }
        if self.timeouts.upgrade_idle_seconds == Some(0) {
            return Err(invalid(
                "timeouts.upgradeIdleSeconds".into(),
                "must be greater than 0 (or absent for none)".into(),
            ));
        }
        Ok(())
    }

    /// The per-section route tables of earlier versions are refused, with
    /// the one table that decides as they did in the message.
    fn refuse_legacy_routes(&self, file: &str) -> Result<(), ConfigError> {
        // A `filters.routes` that does not parse as the old form is left
        // to `check`, which names its path.
        let filters: Vec<crate::filters::config::RouteFilters> = self
            .filters
            .as_ref()
            .and_then(|f| f.get("routes"))
            .and_then(|routes| serde_json::from_value(routes.clone()).ok())
            .unwrap_or_default();
        let tables = crate::route::legacy::Tables {
            identity: &self.routes,
            jwt: self.jwt.as_ref().map_or(&[], |j| &j.routes),
            rate_limit: self.rate_limit.as_ref().map_or(&[], |r| &r.routes),
            filters: &filters,
        };
        let path = if !tables.jwt.is_empty() {
            "jwt.routes"
        } else if !tables.rate_limit.is_empty() {
            "rateLimit.routes"
        } else if !tables.filters.is_empty() {
            "filters.routes"
        } else {
            return Ok(());
        };
        Err(ConfigError::Invalid {
            file: file.to_owned(),
            path: path.to_owned(),
            message: crate::route::legacy::message(&tables),
        })
    }

    /// Checks the route table; errors are `(path, message)`.
    fn check_routes(&self) -> Result<(), (String, String)> {
        let chains = self.filters.as_ref().and_then(|f| {
            crate::filters::FiltersConfig::from_section(f)
                .ok()
                .flatten()
        });
        for (i, route) in self.routes.iter().enumerate() {
            let at = |field: &str| format!("routes[{i}].{field}");
            crate::path::check_prefix(&route.path_prefix).map_err(|m| (at("pathPrefix"), m))?;
            if self.routes[..i].iter().any(|r| r.name() == route.name()) {
                let field = if route.name.is_some() {
                    "name"
                } else {
                    "pathPrefix"
                };
                return Err((
                    at(field),
                    format!(
                        "{:?} names another route too; give one a distinct name",
                        route.name()
                    ),
                ));
            }
            for (j, p) in route.allowed_identities.iter().flatten().enumerate() {
                IdPattern::parse(p)
                    .map_err(|e| (at(&format!("allowedIdentities[{j}]")), e.to_string()))?;
            }
            if let Some(jwt) = &route.jwt {
                jwt.check(self.jwt.as_ref())
                    .map_err(|(path, m)| (at(&format!("jwt.{path}")), m))?;
            }
            if let Some(limit) = &route.rate_limit {
                limit
                    .check()
                    .map_err(|(path, m)| (at(&format!("rateLimit.{path}")), m))?;
                if limit.shared && self.rate_limit.as_ref().is_none_or(|r| r.shared.is_none()) {
                    return Err((
                        at("rateLimit.shared"),
                        "needs rateLimit.shared at the top level (the Redis to share it in)".into(),
                    ));
                }
            }
            if let Some(authz) = &route.authorization {
                authz.check().map_err(|(path, m)| {
                    let field = if path.is_empty() {
                        "authorization".to_owned()
                    } else {
                        format!("authorization.{path}")
                    };
                    (at(&field), m)
                })?;
            }
            // Chains in a `filters.file` may change on reload; a route
            // naming one that is missing then fails closed.
            match (&route.filters, &chains) {
                (None, _) => {}
                (Some(_), None) => {
                    return Err((
                        at("filters"),
                        "names a chain, but no filters are configured".into(),
                    ));
                }
                (Some(name), Some(f)) if f.file.is_none() && !f.chains.contains_key(name) => {
                    return Err((
                        at("filters"),
                        format!("no chain named {name:?} in filters.chains"),
                    ));
                }
                (Some(_), Some(_)) => {}
            }
        }
        Ok(())
    }

    /// The route table, patterns parsed (checked at load), authorization
    /// rules resolved against the environment [`Config::apply_env`] read.
    pub fn route_table(&self) -> Result<RouteTable, ConfigError> {
        RouteTable::with_env(&self.routes, &|name| self.env.get(name).cloned())
            .map_err(|(path, message)| ConfigError::Unresolved { path, message })
    }

    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_seconds)
    }
}

impl UpstreamConfig {
    /// `host:port` to connect to.
    pub fn address(&self) -> String {
        self.address
            .clone()
            .unwrap_or_else(|| format!("{}:443", self.host))
    }

    /// The TLS server name.
    pub fn server_name(&self) -> String {
        match &self.server_name {
            Some(name) => name.clone(),
            None => {
                let address = self.address();
                split_host_port(&address)
                    .map(|(h, _)| h.to_owned())
                    .unwrap_or(address)
            }
        }
    }

    pub fn patterns(&self) -> Vec<IdPattern> {
        self.identities
            .iter()
            .filter_map(|p| IdPattern::parse(p).ok())
            .collect()
    }
}

/// `host:port`, with `[v6]:port` for IPv6.
pub fn split_host_port(address: &str) -> Option<(&str, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port = port.parse::<u16>().ok().filter(|p| *p > 0)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(':') && !address.starts_with('[') {
        return None;
    }
    Some((host, port))
}

/// yaml_serde starts its messages with the path, which is given apart.
fn without_own_path(message: &str) -> String {
    match message.split_once(": ") {
        Some((head, rest)) if !head.contains(' ') => rest.to_owned(),
        _ => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/example.yaml")
    }

    #[test]
    fn example_loads_and_matches_the_defaults() {
        let example = Config::load(&example_path()).unwrap();
        let defaults = Config::default();
        // The example spells out every default, plus one route and one
        // upstream to show their shape.
        assert_eq!(
            example.listeners.inbound.port,
            defaults.listeners.inbound.port
        );
        assert_eq!(
            example.listeners.inbound.client_auth,
            defaults.listeners.inbound.client_auth
        );
        assert_eq!(example.listeners.admin.port, 15000);
        assert_eq!(example.listeners.outbound.port, 15001);
        assert_eq!(example.app.port, defaults.app.port);
        assert_eq!(example.app.protocol, defaults.app.protocol);
        assert_eq!(
            example.limits.max_header_bytes,
            defaults.limits.max_header_bytes
        );
        assert_eq!(
            example.limits.max_body_bytes,
            defaults.limits.max_body_bytes
        );
        assert_eq!(example.timeouts.connect_ms, defaults.timeouts.connect_ms);
        assert_eq!(example.timeouts.response_headers_ms, None);
        assert_eq!(example.timeouts.upgrade_idle_seconds, None);
        assert_eq!(
            example.drain_timeout_seconds,
            defaults.drain_timeout_seconds
        );
        assert_eq!(
            example.access_log.exclude_paths,
            defaults.access_log.exclude_paths
        );
        assert_eq!(example.certs.dir, defaults.certs.dir);
        assert_eq!(example.paths, defaults.paths);
        let routes = example.route_table().unwrap();
        assert_eq!(routes.routes().len(), 2);
        assert_eq!(routes.routes()[0].name, "flyteadmin");
        assert!(
            routes.routes()[0].allowed.as_ref().unwrap()[0]
                .matches("spiffe://cluster.local/ns/flyte/sa/flytepropeller")
        );
        assert_eq!(
            example.outbound.upstreams[0].server_name(),
            "flyteadmin.flyte.svc"
        );
    }

    /// The chart's `proxy.config` (its default and the all-enabled CI
    /// values) is rendered verbatim as proxy.yaml: it must load.
    #[test]
    fn the_charts_proxy_configs_load() {
        let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/tollgate");
        for values in ["values.yaml", "ci/all-enabled-values.yaml"] {
            let text = std::fs::read_to_string(chart.join(values)).unwrap();
            let values: serde_json::Value = yaml_serde::from_str(&text).unwrap();
            let proxy = yaml_serde::to_string(&values["proxy"]["config"]).unwrap();
            Config::parse(&proxy, "proxy.config")
                .unwrap_or_else(|e| panic!("{}: {e}\n{proxy}", chart.display()));
        }
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let c = Config::parse("", "proxy.yaml").unwrap();
        assert_eq!(c.listeners.inbound.port, 15443);
        assert_eq!(c.listeners.inbound.client_auth, ClientAuthMode::Required);
        assert!(c.access_log.enabled);
        assert!(c.routes.is_empty());
    }

    #[test]
    fn errors_name_the_path() {
        let err = |text: &str| Config::parse(text, "proxy.yaml").unwrap_err().to_string();
        let e = err("listeners:\n  inbound:\n    clientAuth: requird\n");
        assert!(
            e.starts_with("proxy.yaml: listeners.inbound.clientAuth: unknown variant `requird`"),
            "{e}"
        );
        let e = err("app:\n  prot: h2c\n");
        assert!(
            e.starts_with("proxy.yaml: app.prot: unknown field `prot`"),
            "{e}"
        );
        let e = err(
            "routes:\n- pathPrefix: /api\n  allowedIdentities: [\"spiffe://x/ns/a\", \"x/y\"]\n",
        );
        assert!(
            e.starts_with("proxy.yaml: routes[0].allowedIdentities[1]: SPIFFE ID pattern"),
            "{e}"
        );
        let e = err("routes:\n- pathPrefix: /a/../admin\n");
        assert!(
            e.starts_with("proxy.yaml: routes[0].pathPrefix: \"/a/../admin\" is not a normalised path; write \"/admin\""),
            "{e}"
        );
        let e = err("tracing:\n  otlp: http://c:4318/v1/traces\n  sampling: 2\n");
        assert!(
            e.starts_with("proxy.yaml: tracing.sampling: 2 is not a ratio from 0.0 to 1.0"),
            "{e}"
        );
        let e = err("tracing:\n  otlp: grpc://c:4317\n");
        assert!(e.starts_with("proxy.yaml: tracing.otlp: "), "{e}");
        let e = err("tracing:\n  otlp: http://c:4318/v1/traces\n  sample: 1\n");
        assert!(
            e.starts_with("proxy.yaml: tracing.sample: unknown field `sample`"),
            "{e}"
        );
        let ok = Config::parse("tracing:\n  otlp: http://c:4318/v1/traces\n", "p").unwrap();
        assert_eq!(ok.tracing.unwrap().sampling, 1.0);
        let e = err("paths:\n  escapedSlashes: drop\n");
        assert!(
            e.starts_with("proxy.yaml: paths.escapedSlashes: unknown variant"),
            "{e}"
        );
        let e = err("jwt:\n  issuer: x\n");
        assert!(
            e.starts_with("proxy.yaml: jwt.issuer: unknown field `issuer`"),
            "{e}"
        );
        let e =
            err("jwt:\n  providers:\n    p: {issuer: i, algorithms: [none], jwks: {file: /j}}\n");
        assert!(
            e.starts_with("proxy.yaml: jwt.providers.p.algorithms[0]: `none`"),
            "{e}"
        );
        // The route table: each concern's errors under its route.
        for (yaml, start) in [
            (
                "routes:\n- {pathPrefix: /, rateLimit: {requestsPerSecond: -1}}\n",
                "proxy.yaml: routes[0].rateLimit.requestsPerSecond",
            ),
            (
                "routes:\n- {pathPrefix: /, rateLimit: {requestsPerSecond: 5, shared: true}}\n",
                "proxy.yaml: routes[0].rateLimit.shared: needs rateLimit.shared",
            ),
            (
                "rateLimit: {shared: {url: \"http://redis:6379\"}}\n",
                "proxy.yaml: rateLimit.shared.url: \"http://redis:6379\" is not a Redis URL",
            ),
            (
                "routes:\n- {pathPrefix: /, jwt: {mode: required}}\n",
                "proxy.yaml: routes[0].jwt.mode: needs",
            ),
            (
                "routes:\n- {pathPrefix: /, filters: web}\nfilters: {chains: {}}\n",
                "proxy.yaml: routes[0].filters: no chain named \"web\"",
            ),
            (
                "routes:\n- {name: a, pathPrefix: /a}\n- {name: a, pathPrefix: /b}\n",
                "proxy.yaml: routes[1].name: \"a\" names",
            ),
        ] {
            let e = err(yaml);
            assert!(e.starts_with(start), "{e}");
        }
        let e = err("limits:\n  maxHeaderBytes: 100\n");
        assert!(e.starts_with("proxy.yaml: limits.maxHeaderBytes"), "{e}");
        let e = err("outbound:\n  upstreams:\n  - host: a\n    address: nope\n");
        assert!(
            e.starts_with("proxy.yaml: outbound.upstreams[0].address"),
            "{e}"
        );
        let e = err("app:\n  port: 70000\n");
        assert!(e.starts_with("proxy.yaml: app.port:"), "{e}");
        // Policy sections may be present and empty.
        Config::parse("jwt: {}\nrateLimit:\nfilters: []\n", "p").unwrap();
    }

    /// Each per-section `routes` of earlier versions is refused, and the
    /// message holds the one table that decides as they did, which loads.
    #[test]
    fn old_per_section_routes_are_refused_with_the_new_form() {
        let jwt = "jwt:\n  providers:\n    p: {issuer: i, jwks: {file: /j}}\n";
        for (old, path, shown) in [
            (
                format!("{jwt}  routes:\n  - {{pathPrefix: /healthz, mode: bypass}}\n  - {{pathPrefix: /, mode: required, providers: [p]}}\n"),
                "jwt.routes",
                vec!["pathPrefix: /healthz", "mode: required", "- p"],
            ),
            (
                "rateLimit:\n  routes:\n  - {name: api, pathPrefix: /api/, requestsPerSecond: 5, burst: 10, key: {claim: sub}}\n".to_owned(),
                "rateLimit.routes",
                vec!["name: api", "pathPrefix: /api", "requestsPerSecond: 5", "claim: sub"],
            ),
            (
                "filters:\n  routes:\n  - pathPrefix: /echo\n    chain: [{name: h, module: /h.wasm, failure: open}]\n".to_owned(),
                "filters.routes",
                vec!["chains:", "chain0:", "module: /h.wasm", "filters: chain0"],
            ),
        ] {
            let e = Config::parse(&old, "proxy.yaml").unwrap_err();
            let ConfigError::Invalid { path: at, message, .. } = &e else {
                panic!("{e}");
            };
            assert_eq!(at, path, "{e}");
            assert!(message.contains("one top-level `routes` table"), "{e}");
            for text in shown {
                assert!(message.contains(text), "{text:?} missing from: {e}");
            }
        }
    }

    /// The new form the refusal shows decides as the old tables did: the
    /// tables' different prefixes and orders become one table, deepest
    /// prefix first, and that table loads once the old keys go.
    #[test]
    fn the_new_form_shown_merges_the_old_tables_exactly() {
        let old = r#"
routes:
- {pathPrefix: /admin/, allowedIdentities: ['spiffe://td/ns/ops/**']}
jwt:
  providers:
    p: {issuer: i, jwks: {file: /j}}
  routes:
  - {pathPrefix: /healthz, mode: bypass}
  - {pathPrefix: /, mode: required}
rateLimit:
  routes:
  - {name: all, pathPrefix: /, requestsPerSecond: 9}
"#;
        let e = Config::parse(old, "proxy.yaml").unwrap_err().to_string();
        let shown = e.split_once(":\n").map(|(_, yaml)| yaml).unwrap();
        let mut new: serde_json::Value = yaml_serde::from_str(shown).unwrap();
        new["jwt"] =
            serde_json::json!({"providers": {"p": {"issuer": "i", "jwks": {"file": "/j"}}}});
        let config: Config = Config::parse(&yaml_serde::to_string(&new).unwrap(), "new").unwrap();
        let table = config.route_table().unwrap();
        let at = |path: &str| table.find(path).unwrap();
        let admin = at("/admin/x");
        assert!(admin.allowed.is_some());
        assert_eq!(
            admin.jwt.as_ref().unwrap().mode,
            crate::jwt::config::Mode::Required
        );
        assert_eq!(admin.rate_limit.as_ref().unwrap().requests_per_second, 9.0);
        let health = at("/healthz");
        assert!(health.allowed.is_none() && health.jwt.is_none());
        assert!(health.rate_limit.is_some());
        let other = at("/data");
        assert!(other.allowed.is_none() && other.jwt.is_some() && other.rate_limit.is_some());
    }

    /// One match carries every concern of the request.
    #[test]
    fn one_route_match_carries_identity_jwt_rate_limit_and_filters() {
        let yaml = r#"
routes:
- name: api
  pathPrefix: /api
  allowedIdentities: ['spiffe://td/ns/web/**']
  jwt: {mode: optional, providers: [p]}
  rateLimit: {requestsPerSecond: 5, burst: 7, key: {spiffe: true}}
  filters: web
- {pathPrefix: /}
jwt:
  providers:
    p: {issuer: i, jwks: {file: /j}}
filters:
  chains:
    web: [{name: h, module: /h.wasm}]
"#;
        let config = Config::parse(yaml, "proxy.yaml").unwrap();
        let table = config.route_table().unwrap();
        let route = table.find("/api/v1").unwrap();
        assert_eq!(route.name, "api");
        assert!(route.allowed.as_ref().unwrap()[0].matches("spiffe://td/ns/web/sa/x"));
        let jwt = route.jwt.as_ref().unwrap();
        assert_eq!(
            (jwt.mode, &jwt.providers[..]),
            (crate::jwt::config::Mode::Optional, &["p".to_owned()][..])
        );
        assert_eq!(route.rate_limit.as_ref().unwrap().burst, Some(7));
        assert_eq!(route.filters.as_deref(), Some("web"));
        // The rest: every concern at its no-match default.
        let rest = table.find("/x").unwrap();
        assert!(rest.allowed.is_none() && rest.jwt.is_none());
        assert!(rest.rate_limit.is_none() && rest.filters.is_none());
    }

    #[test]
    fn environment_overrides_ports() {
        let mut c = Config::default();
        let env = |name: &str| match name {
            "TOLLGATE_APP_PORT" => Some("8888".to_owned()),
            "TOLLGATE_INBOUND_PORT" => Some("9443".to_owned()),
            "TOLLGATE_ADMIN_PORT" => Some("9000".to_owned()),
            "TOLLGATE_OUTBOUND_PORT" => Some("9001".to_owned()),
            "TOLLGATE_PROFILE" => Some("jupyter".to_owned()),
            _ => None,
        };
        c.apply_env(env).unwrap();
        assert_eq!(
            (
                c.app.port,
                c.listeners.inbound.port,
                c.listeners.admin.port,
                c.listeners.outbound.port
            ),
            (8888, 9443, 9000, 9001)
        );
        assert_eq!(c.profile.as_deref(), Some("jupyter"));
        let e = c
            .apply_env(|n| (n == "TOLLGATE_APP_PORT").then(|| "http".to_owned()))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable TOLLGATE_APP_PORT: \"http\" is not a port (1-65535)"
        );
    }

    #[test]
    fn expected_replicas_from_the_environment() {
        let mut c = Config::parse(
            "rateLimit: {shared: {url: \"redis://r:6379\", expectedReplicas: 2}}\n",
            "p",
        )
        .unwrap();
        c.apply_env(|n| (n == "TOLLGATE_EXPECTED_REPLICAS").then(|| "5".to_owned()))
            .unwrap();
        let shared = c.rate_limit.as_ref().unwrap().shared.as_ref().unwrap();
        assert_eq!(shared.expected_replicas, 5);
        let e = c
            .apply_env(|n| (n == "TOLLGATE_EXPECTED_REPLICAS").then(|| "0".to_owned()))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable TOLLGATE_EXPECTED_REPLICAS: \"0\" is not a replica count (1 or more)"
        );
    }

    #[test]
    fn host_port() {
        assert_eq!(split_host_port("a.svc:443"), Some(("a.svc", 443)));
        assert_eq!(split_host_port("[::1]:80"), Some(("::1", 80)));
        assert_eq!(split_host_port("a.svc"), None);
        assert_eq!(split_host_port("::1:80"), None);
    }
}
