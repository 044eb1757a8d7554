//! `proxy_http_call`: the named clusters filters may call (the `clusters`
//! of the `filters` section), the calls a callback made, and sending them.
//!
//! A call is checked when the filter makes it (the cluster exists, the
//! request names `:method`, `:path` and `:authority`, the filter's calls
//! in flight are under `maxCalloutsInFlight`) and sent once the callback
//! returns; its answer, or its failure, goes back to the filter's root
//! context as `proxy_on_http_call_response`. As in Envoy, a failed call
//! (refused, reset, timed out, an answer over `maxResponseBytes`) is
//! delivered with no headers, no body and no trailers.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Limited};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde::Deserialize;
use tollgate_certs::reload::{ExpectedServer, IdentityStore};
use tollgate_certs::spiffe::IdPattern;

use super::host::Headers;
use crate::body::{self, ProxyBody};

/// A cluster as configured:
///
/// ```yaml
/// clusters:
///   auth:
///     address: 127.0.0.1:9001     # host:port
///     tls: none                   # none (default) | mtls: the workload identity
///     serverName: auth.team-ml    # mtls: the name the server's certificate must carry
///     identities: []              # mtls: or SPIFFE ID patterns it must match
///     timeoutMs: 5000             # the longest a call may take (a call asking less gets less)
///     maxResponseBytes: 1048576   # a longer answer fails the call
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterConfig {
    pub address: String,
    #[serde(default)]
    pub tls: ClusterTls,
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default)]
    pub identities: Vec<String>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub max_response_bytes: Option<usize>,
}

/// How a cluster is reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterTls {
    /// Plain HTTP/1.1 (a local service).
    #[default]
    None,
    /// TLS presenting the workload's certificate; the server is checked
    /// against the workload CA, by name or SPIFFE ID.
    Mtls,
}

/// Default and bounds.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1 << 20;
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

enum ClusterClient {
    Plain(Client<HttpConnector, ProxyBody>),
    Tls(Client<HttpsConnector<HttpConnector>, ProxyBody>),
}

/// One cluster, ready to call.
pub struct Cluster {
    pub name: String,
    address: String,
    tls: bool,
    client: ClusterClient,
    timeout: Duration,
    max_response_bytes: usize,
}

/// The clusters of one load, by name, and the per-filter bound on calls in
/// flight.
#[derive(Default)]
pub struct Clusters {
    by_name: HashMap<String, Arc<Cluster>>,
    pub max_in_flight: usize,
    /// Where calls made outside a request (from `proxy_on_tick`) run.
    pub runtime: Option<tokio::runtime::Handle>,
}

impl Clusters {
    /// Builds the clients. `mtls` clusters need the workload identity
    /// (`checking`: `--check`, where none is loaded and nothing is called:
    /// they are checked only).
    pub fn build(
        config: &BTreeMap<String, ClusterConfig>,
        max_in_flight: Option<usize>,
        identity: Option<&Arc<IdentityStore>>,
        checking: bool,
    ) -> Result<Clusters, String> {
        let mut by_name = HashMap::new();
        for (name, c) in config {
            let at = format!("filters.clusters.{name}");
            let (host, _) = crate::config::split_host_port(&c.address)
                .ok_or_else(|| format!("{at}.address: {:?} is not host:port", c.address))?;
            let mut http = HttpConnector::new();
            http.set_nodelay(true);
            http.set_connect_timeout(Some(Duration::from_secs(2)));
            let mut builder = Client::builder(TokioExecutor::new());
            builder
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(8);
            let client = match c.tls {
                ClusterTls::None => ClusterClient::Plain(builder.build(http)),
                ClusterTls::Mtls if identity.is_none() && checking => {
                    for p in &c.identities {
                        IdPattern::parse(p).map_err(|e| format!("{at}.identities: {p:?}: {e}"))?;
                    }
                    ClusterClient::Plain(builder.build(http))
                }
                ClusterTls::Mtls => {
                    let store = identity.ok_or_else(|| {
                        format!("{at}.tls: mtls needs the workload identity (certs)")
                    })?;
                    let expected = if c.identities.is_empty() {
                        ExpectedServer::Name
                    } else {
                        let mut patterns = Vec::new();
                        for p in &c.identities {
                            patterns.push(
                                IdPattern::parse(p)
                                    .map_err(|e| format!("{at}.identities: {p:?}: {e}"))?,
                            );
                        }
                        ExpectedServer::Spiffe(patterns)
                    };
                    let tls = store
                        .client_config(expected)
                        .map_err(|e| format!("{at}: TLS client configuration: {e}"))?;
                    let server = c.server_name.clone().unwrap_or_else(|| host.to_owned());
                    let server_name = rustls::pki_types::ServerName::try_from(server.clone())
                        .map_err(|e| format!("{at}.serverName: {server:?}: {e}"))?;
                    http.enforce_http(false);
                    let connector = HttpsConnectorBuilder::new()
                        .with_tls_config(tls)
                        .https_only()
                        .with_server_name_resolver(FixedServerNameResolver::new(server_name))
                        .enable_http1()
                        .enable_http2()
                        .wrap_connector(http);
                    ClusterClient::Tls(builder.build(connector))
                }
            };
            by_name.insert(
                name.clone(),
                Arc::new(Cluster {
                    name: name.clone(),
                    address: c.address.clone(),
                    tls: c.tls == ClusterTls::Mtls,
                    client,
                    timeout: c
                        .timeout_ms
                        .map(Duration::from_millis)
                        .unwrap_or(DEFAULT_TIMEOUT),
                    max_response_bytes: c.max_response_bytes.unwrap_or(DEFAULT_MAX_RESPONSE_BYTES),
                }),
            );
        }
        Ok(Clusters {
            by_name,
            max_in_flight: max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
            runtime: tokio::runtime::Handle::try_current().ok(),
        })
    }

    pub fn get(&self, name: &str) -> Option<Arc<Cluster>> {
        self.by_name.get(name).cloned()
    }
}

/// One of a filter's calls in flight; dropping it frees its place.
pub struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    /// A place among `max`, or `None` when all are taken.
    pub fn take(counter: &Arc<AtomicUsize>, max: usize) -> Option<InFlight> {
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight(counter.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A call a callback made (sent when the callback returns).
pub struct HttpCallout {
    pub token: u32,
    pub cluster: Arc<Cluster>,
    /// Pseudo-headers (`:method`, `:path`, `:authority`) and headers.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The guest's timeout (0: the cluster's).
    pub timeout: Duration,
    pub _place: InFlight,
}

/// What a call brought back.
#[derive(Default, Debug, Clone)]
pub struct CallResponse {
    /// `:status` first.
    pub headers: Headers,
    pub body: Vec<u8>,
    pub trailers: Headers,
}

/// Why a call brought nothing back (the filter gets an empty answer).
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error("timed out after {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

impl CallError {
    /// The `outcome` label.
    pub fn outcome(&self) -> &'static str {
        match self {
            CallError::Timeout(_) => "timeout",
            CallError::Failed(_) => "failed",
        }
    }
}

/// How a call ended: its answer, or why it failed.
pub type CallOutcome = Result<CallResponse, CallError>;

/// A finished call.
pub struct Answer {
    pub token: u32,
    pub cluster: String,
    pub outcome: CallOutcome,
}

impl HttpCallout {
    /// Sends the call.
    pub async fn send(self) -> Answer {
        let limit = if self.timeout.is_zero() {
            self.cluster.timeout
        } else {
            self.timeout.min(self.cluster.timeout)
        };
        let outcome = match tokio::time::timeout(limit, self.exchange()).await {
            Ok(outcome) => outcome.map_err(CallError::Failed),
            Err(_) => Err(CallError::Timeout(limit)),
        };
        Answer {
            token: self.token,
            cluster: self.cluster.name.clone(),
            outcome,
        }
    }

    async fn exchange(&self) -> Result<CallResponse, String> {
        let pseudo = |name: &str| {
            self.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let method = Method::from_bytes(pseudo(":method").unwrap_or("GET").as_bytes())
            .map_err(|e| format!(":method: {e}"))?;
        let path = pseudo(":path").unwrap_or("/");
        let scheme = if self.cluster.tls { "https" } else { "http" };
        let uri: Uri = format!("{scheme}://{}{path}", self.cluster.address)
            .parse()
            .map_err(|e| format!(":path {path:?}: {e}"))?;
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(authority) = pseudo(":authority") {
            request = request.header(http::header::HOST, authority);
        }
        for (k, v) in self.headers.iter().filter(|(k, _)| !k.starts_with(':')) {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("{k}: {e}"))?;
            let value = HeaderValue::from_str(v).map_err(|e| format!("{k}: {e}"))?;
            request = request.header(name, value);
        }
        let request = request
            .body(body::full(Bytes::from(self.body.clone())))
            .map_err(|e| e.to_string())?;
        let response = match &self.cluster.client {
            ClusterClient::Plain(c) => c.request(request).await,
            ClusterClient::Tls(c) => c.request(request).await,
        }
        .map_err(|e| format!("cluster {}: {e:#}", self.cluster.name))?;
        let (parts, body) = response.into_parts();
        let collected = Limited::new(body, self.cluster.max_response_bytes)
            .collect()
            .await
            .map_err(|e| format!("cluster {}: reading the answer: {e}", self.cluster.name))?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        Ok(CallResponse {
            headers: Headers {
                pseudo: vec![(":status".into(), parts.status.as_str().to_owned())],
                map: parts.headers,
            },
            body: collected.to_bytes().to_vec(),
            trailers: Headers {
                pseudo: Vec::new(),
                map: trailers,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_in_flight_are_bounded_and_freed_with_the_call() {
        let counter = Arc::new(AtomicUsize::new(0));
        let a = InFlight::take(&counter, 2).unwrap();
        let _b = InFlight::take(&counter, 2).unwrap();
        assert!(
            InFlight::take(&counter, 2).is_none(),
            "a third place of two"
        );
        drop(a);
        assert!(InFlight::take(&counter, 2).is_some(), "a freed place");
        assert_eq!(counter.load(Ordering::Acquire), 1);
    }

    #[test]
    fn clusters_are_checked_where_they_are_configured() {
        let parse = |text: &str| {
            crate::filters::FiltersConfig::parse(text, std::path::Path::new("f.yaml")).unwrap()
        };
        let bad = parse("clusters: {auth: {address: auth-without-port}}");
        let e = bad.check().unwrap_err();
        assert!(e.contains("filters.clusters.auth.address"), "{e}");
        let e = parse("maxCalloutsInFlight: 0").check().unwrap_err();
        assert!(e.contains("maxCalloutsInFlight"), "{e}");

        let mtls = parse("clusters: {auth: {address: 'auth:443', tls: mtls}}");
        mtls.check().unwrap();
        let e = Clusters::build(&mtls.clusters, None, None, false)
            .err()
            .unwrap();
        assert!(e.contains("needs the workload identity"), "{e}");
        // --check has no identity loaded: the cluster is checked only.
        let checked = Clusters::build(&mtls.clusters, Some(3), None, true).unwrap();
        assert!(checked.get("auth").is_some());
        assert_eq!(checked.max_in_flight, 3);
        let e = Clusters::build(
            &parse("clusters: {a: {address: 'a:1', tls: mtls, identities: ['no-spiffe']}}")
                .clusters,
            None,
            None,
            true,
        )
        .err()
        .unwrap();
        assert!(e.contains("filters.clusters.a.identities"), "{e}");
    }
}
