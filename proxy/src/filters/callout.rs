//! `proxy_http_call` and `proxy_grpc_call` (unary): the named clusters
//! filters may call (the `clusters` of the `filters` section), the calls a
//! callback made, and sending them.
//!
//! A call is checked when the filter makes it (the cluster exists, the
//! request names `:method`, `:path` and `:authority`, the filter's calls
//! in flight are under `maxCalloutsInFlight`) and sent once the callback
//! returns; its answer, or its failure, goes back to the filter's root
//! context as `proxy_on_http_call_response`. As in Envoy, a failed call
//! (refused, reset, timed out, an answer over `maxResponseBytes`) is
//! delivered with no headers, no body and no trailers.
//!
//! A gRPC call goes to the same clusters over h2 (prior knowledge on a
//! plain cluster, ALPN on an mTLS one), framed and read by tonic's client
//! with a codec that passes the guest's message bytes through; its answer
//! goes back as `proxy_on_grpc_receive_initial_metadata`,
//! `proxy_on_grpc_receive` and `proxy_on_grpc_close` (the status, as
//! `proxy_get_status` then reads it). A call that reached no server closes
//! with UNAVAILABLE, one that timed out with DEADLINE_EXCEEDED.

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

#[derive(Clone)]
enum ClusterClient {
    Plain(Client<HttpConnector, ProxyBody>),
    Tls(Client<HttpsConnector<HttpConnector>, ProxyBody>),
}

impl ClusterClient {
    fn request(&self, request: Request<ProxyBody>) -> hyper_util::client::legacy::ResponseFuture {
        match self {
            ClusterClient::Plain(c) => c.request(request),
            ClusterClient::Tls(c) => c.request(request),
        }
    }
}

/// One cluster, ready to call.
pub struct Cluster {
    pub name: String,
    address: String,
    tls: bool,
    client: ClusterClient,
    /// For gRPC: h2 only on a plain cluster (the mTLS client negotiates
    /// it).
    grpc: ClusterClient,
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
            let mut h2 = builder.clone();
            h2.http2_only(true);
            let plain_grpc = ClusterClient::Plain(h2.build(http.clone()));
            let (client, grpc) = match c.tls {
                ClusterTls::None => (ClusterClient::Plain(builder.build(http)), plain_grpc),
                ClusterTls::Mtls if identity.is_none() && checking => {
                    for p in &c.identities {
                        IdPattern::parse(p).map_err(|e| format!("{at}.identities: {p:?}: {e}"))?;
                    }
                    (ClusterClient::Plain(builder.build(http)), plain_grpc)
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
                    let tls = ClusterClient::Tls(builder.build(connector));
                    (tls.clone(), tls)
                }
            };
            by_name.insert(
                name.clone(),
                Arc::new(Cluster {
                    name: name.clone(),
                    address: c.address.clone(),
                    tls: c.tls == ClusterTls::Mtls,
                    client,
                    grpc,
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

/// What a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// `proxy_http_call`.
    Http,
    /// `proxy_grpc_call` (unary).
    Grpc,
}

impl CallKind {
    /// Where a failure delivering its answer is counted.
    pub fn phase(self) -> super::instance::Phase {
        match self {
            CallKind::Http => super::instance::Phase::HttpCallResponse,
            CallKind::Grpc => super::instance::Phase::GrpcCallResponse,
        }
    }
}

/// A call a callback made (sent when the callback returns).
pub struct Callout {
    pub token: u32,
    pub kind: CallKind,
    pub cluster: Arc<Cluster>,
    /// HTTP: pseudo-headers (`:method`, `:path`, `:authority`) and
    /// headers. gRPC: `:path` (`/service/method`) and the initial metadata.
    pub headers: Vec<(String, String)>,
    /// HTTP: the body. gRPC: the message, serialised by the guest.
    pub body: Vec<u8>,
    /// The guest's timeout (0: the cluster's).
    pub timeout: Duration,
    pub _place: InFlight,
}

/// What a call brought back.
#[derive(Default, Debug, Clone)]
pub struct CallResponse {
    /// HTTP: `:status` first. gRPC: the response metadata (trailing
    /// metadata included: tonic's unary client merges them).
    pub headers: Headers,
    /// HTTP: the body. gRPC: the answer's message (none unless OK).
    pub body: Vec<u8>,
    pub trailers: Headers,
    /// gRPC: the status `proxy_on_grpc_close` carries.
    pub grpc_status: Option<GrpcStatus>,
}

/// A gRPC call's status, as `proxy_get_status` answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcStatus {
    pub code: u32,
    pub message: String,
}

/// gRPC status codes the host gives calls that brought nothing back.
pub const GRPC_DEADLINE_EXCEEDED: u32 = 4;
pub const GRPC_UNAVAILABLE: u32 = 14;

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
    pub kind: CallKind,
    pub cluster: String,
    pub outcome: CallOutcome,
}

impl Answer {
    /// The `outcome` label of the call's metric.
    pub fn outcome_label(&self) -> &'static str {
        match &self.outcome {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        }
    }

    /// What the filter is handed: an HTTP call that failed brings nothing
    /// (as in Envoy); a gRPC one brings the status its close carries.
    pub fn response(self) -> Option<CallResponse> {
        match (self.kind, self.outcome) {
            (_, Ok(response)) => Some(response),
            (CallKind::Http, Err(_)) => None,
            (CallKind::Grpc, Err(e)) => Some(CallResponse {
                grpc_status: Some(GrpcStatus {
                    code: match e {
                        CallError::Timeout(_) => GRPC_DEADLINE_EXCEEDED,
                        CallError::Failed(_) => GRPC_UNAVAILABLE,
                    },
                    message: e.to_string(),
                }),
                ..CallResponse::default()
            }),
        }
    }
}

impl Callout {
    /// Sends the call.
    pub async fn send(self) -> Answer {
        let limit = if self.timeout.is_zero() {
            self.cluster.timeout
        } else {
            self.timeout.min(self.cluster.timeout)
        };
        let exchange = async {
            match self.kind {
                CallKind::Http => self.exchange().await,
                CallKind::Grpc => self.exchange_grpc(limit).await,
            }
        };
        let outcome = match tokio::time::timeout(limit, exchange).await {
            Ok(outcome) => outcome.map_err(CallError::Failed),
            Err(_) => Err(CallError::Timeout(limit)),
        };
        Answer {
            token: self.token,
            kind: self.kind,
            cluster: self.cluster.name.clone(),
            outcome,
        }
    }

    /// A unary gRPC call: tonic frames the message and reads the answer
    /// (its status from the trailers or a trailers-only answer); the
    /// transport is the cluster's client. A status the server sent is an
    /// answer; one tonic made from a transport error is a failed call.
    async fn exchange_grpc(&self, limit: Duration) -> Result<CallResponse, String> {
        let path = self
            .headers
            .iter()
            .find(|(k, _)| k == ":path")
            .map(|(_, v)| v.as_str())
            .unwrap_or("/");
        let path =
            http::uri::PathAndQuery::try_from(path).map_err(|e| format!(":path {path:?}: {e}"))?;
        let scheme = if self.cluster.tls { "https" } else { "http" };
        let origin: Uri = format!("{scheme}://{}", self.cluster.address)
            .parse()
            .map_err(|e| format!("cluster {}: {e}", self.cluster.name))?;
        let mut metadata = http::HeaderMap::new();
        for (k, v) in self.headers.iter().filter(|(k, _)| !k.starts_with(':')) {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("{k}: {e}"))?;
            let value = HeaderValue::from_str(v).map_err(|e| format!("{k}: {e}"))?;
            metadata.append(name, value);
        }
        let mut request = tonic::Request::new(Bytes::from(self.body.clone()));
        *request.metadata_mut() = tonic::metadata::MetadataMap::from_headers(metadata);
        request.set_timeout(limit);
        let mut grpc =
            tonic::client::Grpc::with_origin(GrpcTransport(self.cluster.grpc.clone()), origin)
                .max_decoding_message_size(self.cluster.max_response_bytes);
        grpc.ready()
            .await
            .map_err(|e| format!("cluster {}: {e}", self.cluster.name))?;
        match grpc.unary(request, path, RawCodec).await {
            Ok(response) => {
                let (metadata, message, _) = response.into_parts();
                Ok(CallResponse {
                    headers: Headers {
                        pseudo: Vec::new(),
                        map: metadata.into_headers(),
                    },
                    body: message.to_vec(),
                    trailers: Headers::default(),
                    grpc_status: Some(GrpcStatus {
                        code: 0,
                        message: String::new(),
                    }),
                })
            }
            Err(status) if std::error::Error::source(&status).is_some() => {
                Err(format!("cluster {}: {status}", self.cluster.name))
            }
            Err(status) => Ok(CallResponse {
                headers: Headers {
                    pseudo: Vec::new(),
                    map: status.metadata().clone().into_headers(),
                },
                body: Vec::new(),
                trailers: Headers::default(),
                grpc_status: Some(GrpcStatus {
                    code: status.code() as u32,
                    message: status.message().to_owned(),
                }),
            }),
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
        let response = self
            .cluster
            .client
            .request(request)
            .await
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
            grpc_status: None,
        })
    }
}

/// The cluster's client as the transport tonic's client drives.
struct GrpcTransport(ClusterClient);

impl tower::Service<Request<tonic::body::Body>> for GrpcTransport {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper_util::client::legacy::Error;
    type Future = hyper_util::client::legacy::ResponseFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        self.0
            .request(request.map(|b| b.map_err(tower::BoxError::from).boxed_unsync()))
    }
}

/// Passes the guest's serialised message through, and hands it the
/// answer's: tonic does the gRPC framing, the guest the protobuf.
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put(dst, item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Bytes>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_grpc_call_closes_with_the_status_envoy_gives_it() {
        let answer = |kind, outcome| Answer {
            token: 1,
            kind,
            cluster: "c".into(),
            outcome,
        };
        let timeout = CallError::Timeout(Duration::from_millis(300));
        let failed = CallError::Failed("connection refused".into());
        assert!(
            answer(CallKind::Http, Err(timeout.clone()))
                .response()
                .is_none(),
            "a failed HTTP call brings nothing"
        );
        let status = |e| {
            answer(CallKind::Grpc, Err(e))
                .response()
                .and_then(|r| r.grpc_status)
                .unwrap()
        };
        assert_eq!(status(timeout).code, GRPC_DEADLINE_EXCEEDED);
        let unavailable = status(failed);
        assert_eq!(unavailable.code, GRPC_UNAVAILABLE);
        assert_eq!(unavailable.message, "connection refused");
        assert_eq!(
            answer(CallKind::Grpc, Err(CallError::Failed("x".into()))).outcome_label(),
            "failed"
        );
    }

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
