//! Rate limiting: the third layer of the inbound pipeline, after JWT.
//!
//! Each route has a GCRA limit (governor): `requestsPerSecond` sustained,
//! `burst` at once, per key. The key is the verified JWT subject or another
//! claim, the peer's SPIFFE ID, the client IP (from the connection; from
//! `X-Forwarded-For` only when the connection comes from a trusted hop), a
//! header, or one global bucket. A request that cannot be keyed (no token
//! on an optional route, say) falls back to its client IP.
//!
//! Limited requests get 429 with `Retry-After` and the IETF httpapi
//! draft's (draft-ietf-httpapi-ratelimit-headers) `RateLimit-Policy` /
//! `RateLimit` fields (gRPC requests get `grpc-status: 8`); allowed ones
//! carry both when `quotaHeaders` is set. The policy states the sustained
//! rate as `q` requests per `w` whole seconds (the draft has no sub-second
//! window), with the burst as `tollgate-burst`; `RateLimit` states `r`, the
//! requests this key may send at once now, and `t`, the whole seconds
//! until more are available. A client that sends no more than `r` before
//! waiting `t`, or paces at `q` per `w`, is never refused. Idle keys are
//! purged every `purgeIntervalSeconds`, so a flood of distinct keys cannot
//! grow memory without bound.
//!
//! A route with `shared: true` counts against one bucket across all
//! replicas, in Redis (`shared.rs`, `backend.rs`); see docs/proxy.md for
//! its accuracy bound and failure modes.
//!
//! The limits themselves are per route, in the one route table
//! (`route.rs`); a request's bucket is its route match's.
//!
//! ```yaml
//! rateLimit:
//!   trustedHops: [10.0.0.0/8]     # peers whose X-Forwarded-For is believed
//!   purgeIntervalSeconds: 30
//!   shared: {url: "redis://redis:6379", failureMode: local, expectedReplicas: 3}
//! routes:
//!   - {name: api, pathPrefix: /api, rateLimit: {requestsPerSecond: 50, burst: 100, key: {claim: sub}, shared: true}}
//!   - {name: all, pathPrefix: /, rateLimit: {requestsPerSecond: 500, burst: 1000, key: {clientIp: true}}}
//! ```

pub mod backend;
pub mod shared;

use std::future::{Future, Ready, ready};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::Either;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use http::{HeaderMap, HeaderValue, Request, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tower::{Layer, Service};

use crate::jwt::Verified;
use crate::listener::ConnInfo;

use self::backend::{Backend, BackendMetrics};
use self::shared::{Outcome, SharedConfig, SharedLimit};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitConfig {
    /// Peers (IP networks, `a.b.c.d/n`) whose `X-Forwarded-For` is used for
    /// the client IP; from anyone else it is ignored.
    #[serde(default)]
    pub trusted_hops: Vec<String>,
    /// How often idle keys are dropped.
    #[serde(default = "default_purge")]
    pub purge_interval_seconds: u64,
    /// Add `RateLimit` (remaining quota) to allowed responses.
    #[serde(default)]
    pub quota_headers: bool,
    /// Redis, for routes whose limit is `shared: true` (`shared.rs`).
    #[serde(default)]
    pub shared: Option<SharedConfig>,
    /// The per-section table of earlier versions: refused at load, with
    /// the equivalent top-level `routes` in the message (`route::legacy`).
    #[serde(default)]
    pub routes: Vec<RateRoute>,
}

fn default_purge() -> u64 {
    30
}

impl Default for RateLimitConfig {
    /// As `rateLimit: {}` reads: routes may limit without the section.
    fn default() -> Self {
        RateLimitConfig {
            trusted_hops: Vec::new(),
            purge_interval_seconds: default_purge(),
            quota_headers: false,
            shared: None,
            routes: Vec::new(),
        }
    }
}

/// A `rateLimit.routes` entry of earlier versions (refused; see
/// `route::legacy`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateRoute {
    pub name: String,
    pub path_prefix: String,
    pub requests_per_second: f64,
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(default)]
    pub key: KeyConfig,
}

/// A route's `rateLimit`: its GCRA bucket, named by the route.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteLimit {
    pub requests_per_second: f64,
    /// Requests allowed at once; default: one second's worth.
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(default)]
    pub key: KeyConfig,
    /// One bucket per key across every replica, in Redis
    /// (`rateLimit.shared`); default: this replica's own.
    #[serde(default)]
    pub shared: bool,
}

/// What a request is counted against, as written: exactly one of
/// `claim: <name>`, `spiffe: true`, `clientIp: true`, `header: <name>`,
/// `global: true`. Nothing set: global.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KeyConfig {
    #[serde(default)]
    pub claim: Option<String>,
    #[serde(default)]
    pub spiffe: bool,
    #[serde(default)]
    pub client_ip: bool,
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub global: bool,
}

/// What a request is counted against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    /// A verified JWT claim (`sub`, a team claim…).
    Claim(String),
    /// The peer's SPIFFE ID.
    Spiffe,
    /// The client IP.
    ClientIp,
    /// A request header.
    Header(String),
    /// One bucket for everyone.
    Global,
}

impl KeyConfig {
    pub fn key(&self) -> Result<Key, String> {
        let mut set = Vec::new();
        if let Some(c) = &self.claim {
            set.push(Key::Claim(c.clone()));
        }
        if self.spiffe {
            set.push(Key::Spiffe);
        }
        if self.client_ip {
            set.push(Key::ClientIp);
        }
        if let Some(h) = &self.header {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(format!("{h:?} is not a header name"));
            }
            set.push(Key::Header(h.to_ascii_lowercase()));
        }
        if self.global {
            set.push(Key::Global);
        }
        match set.len() {
            0 => Ok(Key::Global),
            1 => Ok(set.remove(0)),
            _ => Err("set exactly one of claim, spiffe, clientIp, header, global".into()),
        }
    }
}

impl Key {
    /// As written in a route's `rateLimit.key`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Key::Claim(c) => serde_json::json!({ "claim": c }),
            Key::Spiffe => serde_json::json!({ "spiffe": true }),
            Key::ClientIp => serde_json::json!({ "clientIp": true }),
            Key::Header(h) => serde_json::json!({ "header": h }),
            Key::Global => serde_json::json!({ "global": true }),
        }
    }
}

impl RouteLimit {
    /// Checks what serde cannot; errors are `(path under the route's
    /// rateLimit, message)`.
    pub fn check(&self) -> Result<(), (String, String)> {
        if !(self.requests_per_second.is_finite() && self.requests_per_second > 0.0) {
            return Err((
                "requestsPerSecond".into(),
                "must be a positive number".into(),
            ));
        }
        if self.burst == Some(0) {
            return Err(("burst".into(), "must be at least 1".into()));
        }
        self.key.key().map_err(|m| ("key".into(), m))?;
        Ok(())
    }
}

impl RateLimitConfig {
    /// Checks what serde cannot; errors are `(path under rateLimit, message)`.
    pub fn check(&self) -> Result<(), (String, String)> {
        for (i, hop) in self.trusted_hops.iter().enumerate() {
            parse_net(hop).ok_or_else(|| {
                (
                    format!("trustedHops[{i}]"),
                    format!("{hop:?} is not an IP network (a.b.c.d/n or an address)"),
                )
            })?;
        }
        if self.purge_interval_seconds == 0 {
            return Err((
                "purgeIntervalSeconds".into(),
                "must be greater than 0".into(),
            ));
        }
        if let Some(shared) = &self.shared {
            shared
                .check()
                .map_err(|(p, m)| (format!("shared.{p}"), m))?;
        }
        Ok(())
    }
}

/// A network and prefix length.
type Net = (IpAddr, u8);

fn parse_net(text: &str) -> Option<Net> {
    let (addr, len) = match text.split_once('/') {
        Some((a, l)) => (a.parse::<IpAddr>().ok()?, l.parse::<u8>().ok()?),
        None => {
            let a = text.parse::<IpAddr>().ok()?;
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

fn contains((net, len): Net, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

/// `tollgate_ratelimit_allowed_total{route}`, `tollgate_ratelimit_limited_total{route}`,
/// `tollgate_ratelimit_keys{route}`, `tollgate_ratelimit_degraded_total{route}`
/// (shared limits decided by `failureMode`), and the Redis backend's
/// (`backend.rs`).
#[derive(Clone, Default)]
pub struct RateLimitMetrics {
    allowed: Family<RouteLabels, Counter>,
    limited: Family<RouteLabels, Counter>,
    keys: Family<RouteLabels, prometheus_client::metrics::gauge::Gauge>,
    degraded: Family<RouteLabels, Counter>,
    pub backend: BackendMetrics,
}

impl RateLimitMetrics {
    /// Registers into a registry prefixed `tollgate`.
    pub fn register(registry: &mut Registry) -> RateLimitMetrics {
        let m = RateLimitMetrics::default();
        registry.register(
            "ratelimit_allowed",
            "Requests a rate limit let through, by route",
            m.allowed.clone(),
        );
        registry.register(
            "ratelimit_limited",
            "Requests refused with 429, by route",
            m.limited.clone(),
        );
        registry.register(
            "ratelimit_keys",
            "Keys tracked after the last purge, by route",
            m.keys.clone(),
        );
        registry.register(
            "ratelimit_degraded",
            "Shared-limit decisions taken by failureMode while Redis could not answer, by route",
            m.degraded.clone(),
        );
        m.backend.register(registry);
        m
    }
}

type Limiter =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

struct Bucket {
    /// The route's name.
    name: String,
    key: Key,
    labels: RouteLabels,
    limiter: Limiter,
    /// Set for `shared: true`: the Redis-backed bucket, used instead of
    /// `limiter`.
    shared: Option<Arc<SharedLimit>>,
    policy: HeaderValue,
    /// Whole seconds until one more token at most (`t` of `RateLimit`).
    next_token_seconds: u64,
}

/// All routes' limiters, by route index (`None`: the route is not limited).
pub struct RateLimits {
    buckets: Vec<Option<Bucket>>,
    /// Redis, when a route's limit is shared.
    backend: Option<Arc<Backend>>,
    trusted: Vec<Net>,
    quota_headers: bool,
    purge_every: Duration,
    metrics: RateLimitMetrics,
    clock: DefaultClock,
}

/// A refused request: what the 429 (or, for `unavailable`, 503) carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", if *unavailable { format!("rate limit {route} cannot be checked (shared backend down, failureMode deny); retry after {retry_after_seconds}s") } else { format!("rate limit {route} exceeded; retry after {retry_after_seconds}s") })]
pub struct Limited {
    pub route: String,
    pub retry_after_seconds: u64,
    /// Refused because a shared limit's backend is down and its
    /// `failureMode` is `deny`, not because the client exceeded it.
    pub unavailable: bool,
    /// `RateLimit-Policy` and `RateLimit` field values.
    pub policy: String,
    pub state: String,
}

/// `(q, w)` of `RateLimit-Policy`: `q` requests per `w` whole seconds,
/// the sustained rate. The smallest common window where the rate is a
/// whole number of requests; else the first where rounding down loses
/// under 1 %. Never above the rate, so a client pacing at `q` per `w` is
/// never refused.
pub fn quota_window(rate: f64) -> (u64, u64) {
    const WINDOWS: [u64; 19] = [
        1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30, 60, 120, 300, 600, 900, 1800, 3600, 86400,
    ];
    for w in WINDOWS {
        let q = rate * w as f64;
        if q >= 1.0 && (q - q.round()).abs() < 1e-6 {
            return (q.round() as u64, w);
        }
    }
    for w in WINDOWS {
        let q = (rate * w as f64).floor();
        if q >= 100.0 {
            return (q as u64, w);
        }
    }
    (((rate * 86400.0).floor().max(1.0)) as u64, 86400)
}

/// Whole seconds, rounded up, at least 1.
fn whole_seconds(d: Duration) -> u64 {
    (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
}

/// What an allowed request's response gets: `RateLimit-Policy` and
/// `RateLimit` (`None`: nothing).
pub type Fields = Option<(HeaderValue, HeaderValue)>;

/// A rate-limit decision: now, or once Redis answered (shared limits
/// whose key has no tokens reserved here).
pub enum Checked {
    /// `Ok(fields)`: allowed; `Err`: refused.
    Now(Result<Fields, Limited>),
    Later(Pin<Box<dyn Future<Output = Result<Fields, Limited>> + Send>>),
}

impl RateLimits {
    /// The buckets of every route in `table` with a `rateLimit`. Shared
    /// limits connect to Redis in the background (they follow
    /// `failureMode` until it answers), so this must run inside the
    /// runtime when one is configured.
    pub fn new(
        config: &RateLimitConfig,
        table: &crate::route::RouteTable,
        metrics: RateLimitMetrics,
    ) -> Result<Arc<RateLimits>, String> {
        config
            .check()
            .map_err(|(path, message)| format!("rateLimit.{path}: {message}"))?;
        let any_shared = table
            .routes()
            .iter()
            .any(|r| r.rate_limit.as_ref().is_some_and(|l| l.shared));
        let backend = match (&config.shared, any_shared) {
            (Some(shared), true) => Some(shared.start(metrics.backend.clone())?),
            _ => None,
        };
        let buckets = table
            .routes()
            .iter()
            .map(|route| {
                let Some(limit) = &route.rate_limit else {
                    return Ok(None);
                };
                let name = &route.name;
                limit
                    .check()
                    .map_err(|(path, m)| format!("route {name}: rateLimit.{path}: {m}"))?;
                let burst = limit
                    .burst
                    .unwrap_or_else(|| limit.requests_per_second.ceil().max(1.0) as u32);
                let period = Duration::from_secs_f64(1.0 / limit.requests_per_second);
                let quota = Quota::with_period(period)
                    .ok_or_else(|| format!("route {name}: rateLimit: rate too high"))?
                    .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
                let labels = RouteLabels {
                    route: name.clone(),
                };
                let shared = match (limit.shared, &config.shared, &backend) {
                    (false, _, _) => None,
                    (true, Some(settings), Some(backend)) => Some(
                        SharedLimit::new(
                            settings,
                            backend.clone(),
                            name,
                            limit.requests_per_second,
                            burst,
                            metrics.degraded.get_or_create(&labels).clone(),
                        )
                        .map_err(|m| format!("route {name}: rateLimit: {m}"))?,
                    ),
                    (true, _, _) => {
                        return Err(format!(
                            "route {name}: rateLimit.shared: needs rateLimit.shared (the Redis to share it in)"
                        ));
                    }
                };
                let (q, w) = quota_window(limit.requests_per_second);
                let policy = format!("\"{name}\";q={q};w={w};tollgate-burst={burst}");
                Ok(Some(Bucket {
                    key: limit.key.key()?,
                    labels,
                    limiter: RateLimiter::keyed(quota)
                        .with_middleware::<StateInformationMiddleware>(),
                    shared,
                    policy: HeaderValue::from_str(&policy)
                        .map_err(|_| format!("route name {name:?} cannot name a rate limit"))?,
                    next_token_seconds: whole_seconds(period),
                    name: name.clone(),
                }))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Arc::new(RateLimits {
            buckets,
            backend,
            trusted: config
                .trusted_hops
                .iter()
                .filter_map(|h| parse_net(h))
                .collect(),
            quota_headers: config.quota_headers,
            purge_every: Duration::from_secs(config.purge_interval_seconds),
            metrics,
            clock: DefaultClock::default(),
        }))
    }

    /// The shared backend's state, for `/ready` (`None`: no shared limit).
    pub fn shared_status(&self) -> Option<String> {
        let backend = self.backend.as_ref()?;
        let mode = self
            .buckets
            .iter()
            .flatten()
            .find_map(|b| b.shared.as_ref())
            .map(|s| s.mode().as_str())
            .unwrap_or_default();
        Some(format!(
            "rate limits: shared in Redis: {} (failureMode {mode})",
            backend.status()
        ))
    }

    /// Drops idle keys every `purgeIntervalSeconds`, until dropped.
    pub async fn purge_idle(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(self.purge_every);
        loop {
            ticker.tick().await;
            self.purge();
        }
    }

    /// Drops keys whose buckets are full again (nothing to remember), and
    /// shared keys unused since the last purge.
    pub fn purge(&self) {
        for b in self.buckets.iter().flatten() {
            b.limiter.retain_recent();
            b.limiter.shrink_to_fit();
            let shared_keys = b.shared.as_ref().map(|s| s.purge());
            b.metrics_keys(&self.metrics, shared_keys);
        }
    }

    /// Counts the request against its route match's bucket (`route.rs`).
    /// `Ok(Some(fields))`: allowed, with the `RateLimit-Policy` and
    /// `RateLimit` values to add; `Ok(None)`: no route, no limit on it, or
    /// no header wanted; `Err`: refused.
    pub fn check<B>(self: &Arc<Self>, request: &Request<B>) -> Checked {
        let Some((index, bucket)) = crate::route::matched(request.extensions())
            .and_then(|route| Some((route.index, self.buckets.get(route.index)?.as_ref()?)))
        else {
            return Checked::Now(Ok(None));
        };
        let key = self.key(&bucket.key, request);
        let Some(shared) = &bucket.shared else {
            return Checked::Now(match bucket.limiter.check_key(&key) {
                Ok(snapshot) => Ok(self.allowed(bucket, Some(snapshot.remaining_burst_capacity()))),
                Err(not_until) => {
                    Err(self.limited(bucket, not_until.wait_time_from(self.clock.now())))
                }
            });
        };
        if let Some(outcome) = shared.try_decide(&key) {
            return Checked::Now(self.outcome(bucket, outcome));
        }
        let deadline = Instant::now() + shared.timeout();
        let (this, shared) = (self.clone(), shared.clone());
        Checked::Later(Box::pin(async move {
            let outcome = shared.decide(key, deadline).await;
            let bucket = this.buckets[index]
                .as_ref()
                .expect("bucket of a matched route");
            this.outcome(bucket, outcome)
        }))
    }

    fn outcome(&self, bucket: &Bucket, outcome: Outcome) -> Result<Fields, Limited> {
        match outcome {
            Outcome::Allowed(remaining) => Ok(self.allowed(bucket, remaining)),
            Outcome::Limited(wait) => Err(self.limited(bucket, wait)),
            Outcome::Unavailable => {
                let mut limited = self.limited(bucket, Duration::from_secs(1));
                limited.unavailable = true;
                Err(limited)
            }
        }
    }

    fn allowed(&self, bucket: &Bucket, remaining: Option<u32>) -> Fields {
        self.metrics.allowed.get_or_create(&bucket.labels).inc();
        let remaining = remaining.filter(|_| self.quota_headers)?;
        let state = format!(
            "\"{}\";r={remaining};t={}",
            bucket.name, bucket.next_token_seconds
        );
        Some((
            bucket.policy.clone(),
            HeaderValue::from_str(&state).unwrap_or_else(|_| HeaderValue::from_static("")),
        ))
    }

    fn limited(&self, bucket: &Bucket, wait: Duration) -> Limited {
        self.metrics.limited.get_or_create(&bucket.labels).inc();
        let retry = whole_seconds(wait);
        Limited {
            route: bucket.name.clone(),
            retry_after_seconds: retry,
            unavailable: false,
            policy: bucket.policy.to_str().unwrap_or_default().to_owned(),
            state: format!("\"{}\";r=0;t={retry}", bucket.name),
        }
    }

    fn key<B>(&self, key: &Key, request: &Request<B>) -> String {
        let conn = request.extensions().get::<Arc<ConnInfo>>();
        let by = match key {
            Key::Global => return "global".into(),
            Key::Claim(claim) => request
                .extensions()
                .get::<Arc<Verified>>()
                .and_then(|v| v.claim_text(claim))
                .map(|v| format!("claim:{v}")),
            Key::Spiffe => conn
                .and_then(|c| c.identity.as_deref())
                .map(|id| format!("spiffe:{id}")),
            Key::Header(name) => request
                .headers()
                .get(name.as_str())
                .map(|v| format!("header:{}", String::from_utf8_lossy(v.as_bytes()))),
            Key::ClientIp => None,
        };
        by.unwrap_or_else(|| {
            let peer = conn.map(|c| c.peer.ip());
            format!(
                "ip:{}",
                client_ip(peer, request.headers(), &self.trusted)
                    .map_or_else(|| "unknown".into(), |ip| ip.to_string())
            )
        })
    }
}

impl Bucket {
    fn metrics_keys(&self, metrics: &RateLimitMetrics, shared_keys: Option<usize>) {
        let keys = shared_keys.unwrap_or_else(|| self.limiter.len());
        metrics
            .keys
            .get_or_create(&self.labels)
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
    }
}

/// The client's address: the peer, or — when the peer is a trusted hop —
/// the rightmost `X-Forwarded-For` entry that is not itself trusted.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted: &[Net]) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| contains(*net, ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let forwarded: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    Some(
        forwarded
            .into_iter()
            .rev()
            .find(|ip| !is_trusted(*ip))
            .unwrap_or(peer),
    )
}

/// Adds the headers of a refused request to its response (429 or gRPC).
pub fn add_limited_headers(headers: &mut HeaderMap, limited: &Limited) {
    let put = |headers: &mut HeaderMap, name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    put(
        headers,
        "retry-after",
        &limited.retry_after_seconds.to_string(),
    );
    put(headers, "ratelimit-policy", &limited.policy);
    put(headers, "ratelimit", &limited.state);
}

#[derive(Clone)]
pub struct RateLimitLayer {
    /// `None`: no limits configured.
    limits: Option<Arc<RateLimits>>,
}

impl RateLimitLayer {
    pub fn new(limits: Arc<RateLimits>) -> RateLimitLayer {
        RateLimitLayer {
            limits: Some(limits),
        }
    }

    pub fn disabled() -> RateLimitLayer {
        RateLimitLayer { limits: None }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = CheckRate<S>;
    fn layer(&self, inner: S) -> CheckRate<S> {
        CheckRate {
            inner,
            limits: self.limits.clone(),
        }
    }
}

#[derive(Clone)]
pub struct CheckRate<S> {
    inner: S,
    limits: Option<Arc<RateLimits>>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> Service<Request<B>> for CheckRate<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: From<Limited>,
    B: Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Either<
        Ready<Result<Response<RB>, S::Error>>,
        Either<WithHeader<S::Future>, BoxFuture<Result<Response<RB>, S::Error>>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let checked = match &self.limits {
            Some(limits) => limits.check(&request),
            None => Checked::Now(Ok(None)),
        };
        match checked {
            Checked::Now(Err(limited)) => Either::Left(ready(Err(limited.into()))),
            Checked::Now(Ok(headers)) => {
                if headers.is_some() {
                    crate::trace::note(&request, "tollgate.ratelimit.decision", "allowed");
                }
                Either::Right(Either::Left(WithHeader {
                    inner: self.inner.call(request),
                    headers,
                }))
            }
            Checked::Later(decision) => {
                // The ready service handles this request; a clone waits
                // for the next.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Either::Right(Either::Right(Box::pin(async move {
                    let headers = decision.await?;
                    crate::trace::note(&request, "tollgate.ratelimit.decision", "allowed");
                    WithHeader {
                        inner: inner.call(request),
                        headers,
                    }
                    .await
                })))
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner future, adding `RateLimit-Policy` and `RateLimit` to its
    /// response.
    pub struct WithHeader<F> {
        #[pin]
        inner: F,
        headers: Option<(HeaderValue, HeaderValue)>,
    }
}

impl<F, RB, E> std::future::Future for WithHeader<F>
where
    F: std::future::Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<RB>, E>;
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Ready(Ok(mut response)) => {
                if let Some((policy, state)) = this.headers.take() {
                    response.headers_mut().insert("ratelimit-policy", policy);
                    response.headers_mut().insert("ratelimit", state);
                }
                Poll::Ready(Ok(response))
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Limits for the route table `routes` (YAML), and the table.
    fn limits(routes: &str) -> (Arc<RateLimits>, crate::route::RouteTable) {
        let configs: Vec<crate::route::RouteConfig> = yaml_serde::from_str(routes).unwrap();
        let table = crate::route::RouteTable::new(&configs);
        let limits = RateLimits::new(
            &RateLimitConfig::default(),
            &table,
            RateLimitMetrics::default(),
        )
        .unwrap();
        (limits, table)
    }

    impl Checked {
        fn now(self) -> Result<Fields, Limited> {
            match self {
                Checked::Now(r) => r,
                Checked::Later(_) => panic!("a local limit decided later"),
            }
        }
    }

    /// A request with its route match in `table` attached, as the stack's
    /// route layer does.
    fn routed(
        table: &crate::route::RouteTable,
        path: &str,
        peer: &str,
        headers: &[(&str, &str)],
    ) -> Request<()> {
        let mut r = request(path, peer, headers);
        if let Some(route) = table.find(path) {
            r.extensions_mut().insert(route.clone());
        }
        r
    }

    fn request(path: &str, peer: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut r = Request::builder().uri(path);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let mut r = r.body(()).unwrap();
        r.extensions_mut().insert(Arc::new(ConnInfo {
            peer: format!("{peer}:1000").parse().unwrap(),
            identity: None,
            facts: Default::default(),
        }));
        r
    }

    #[test]
    fn burst_then_refused_with_retry_after_and_keys_are_isolated() {
        let (l, table) = limits(
            "- {name: api, pathPrefix: /api, rateLimit: {requestsPerSecond: 1, burst: 3, key: {header: x-user}}}\n- {pathPrefix: /other}\n",
        );
        let alice = || routed(&table, "/api/x", "10.0.0.1", &[("x-user", "alice")]);
        for _ in 0..3 {
            l.check(&alice()).now().unwrap();
        }
        let refused = l.check(&alice()).now().unwrap_err();
        assert_eq!(refused.route, "api");
        assert_eq!(refused.retry_after_seconds, 1);
        assert_eq!(refused.policy, "\"api\";q=1;w=1;tollgate-burst=3");
        assert_eq!(refused.state, "\"api\";r=0;t=1");
        // Another key is untouched; an unlimited path too.
        l.check(&routed(&table, "/api/x", "10.0.0.1", &[("x-user", "bob")]))
            .now()
            .unwrap();
        l.check(&routed(
            &table,
            "/other",
            "10.0.0.1",
            &[("x-user", "alice")],
        ))
        .now()
        .unwrap();
    }

    #[test]
    fn policy_states_the_sustained_rate_in_whole_seconds_never_above_it() {
        // The bug: 50/s with burst 10 was advertised as q=10;w=1.
        assert_eq!(quota_window(50.0), (50, 1));
        assert_eq!(quota_window(0.5), (1, 2));
        assert_eq!(quota_window(2.5), (5, 2));
        assert_eq!(quota_window(400.0 / 3.0), (400, 3));
        assert_eq!(quota_window(1.0 / 60.0), (1, 60));
        for rate in [0.001, 0.3, 7.7, 33.3, 99.99, 1234.5678] {
            let (q, w) = quota_window(rate);
            let advertised = q as f64 / w as f64;
            assert!(advertised <= rate * (1.0 + 1e-9), "{rate}: {q}/{w}");
            assert!(advertised >= rate * 0.99 || q == 1, "{rate}: {q}/{w}");
        }
    }

    #[test]
    fn allowed_answers_carry_policy_and_remaining_when_asked() {
        let configs: Vec<crate::route::RouteConfig> = yaml_serde::from_str(
            "- {name: api, pathPrefix: /, rateLimit: {requestsPerSecond: 50, burst: 10, key: {header: x-user}}}\n",
        )
        .unwrap();
        let table = crate::route::RouteTable::new(&configs);
        let config: RateLimitConfig = yaml_serde::from_str("quotaHeaders: true").unwrap();
        let l = RateLimits::new(&config, &table, RateLimitMetrics::default()).unwrap();
        let Checked::Now(Ok(Some((policy, state)))) =
            l.check(&routed(&table, "/", "10.0.0.1", &[("x-user", "a")]))
        else {
            panic!("not allowed with fields");
        };
        assert_eq!(policy, "\"api\";q=50;w=1;tollgate-burst=10");
        assert_eq!(state, "\"api\";r=9;t=1");
    }

    #[test]
    fn forwarded_for_only_from_trusted_hops() {
        let trusted = vec![parse_net("10.0.0.0/8").unwrap()];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.1.1.1".parse().unwrap());
        let ip = |peer: &str| {
            client_ip(Some(peer.parse().unwrap()), &h, &trusted)
                .unwrap()
                .to_string()
        };
        assert_eq!(ip("10.2.2.2"), "203.0.113.9");
        assert_eq!(
            ip("198.51.100.7"),
            "198.51.100.7",
            "untrusted peer: header ignored"
        );
    }

    #[test]
    fn idle_keys_are_purged() {
        let (l, table) = limits(
            "- {name: all, pathPrefix: /, rateLimit: {requestsPerSecond: 1000, burst: 1, key: {header: k}}}\n",
        );
        for i in 0..1000 {
            let _ = l.check(&routed(&table, "/", "10.0.0.1", &[("k", &i.to_string())]));
        }
        assert_eq!(l.buckets[0].as_ref().unwrap().limiter.len(), 1000);
        std::thread::sleep(Duration::from_millis(20));
        l.purge();
        assert_eq!(l.buckets[0].as_ref().unwrap().limiter.len(), 0);
    }

    #[test]
    fn config_errors_name_the_path() {
        let bad = |yaml: &str| {
            yaml_serde::from_str::<RateLimitConfig>(yaml)
                .unwrap()
                .check()
                .unwrap_err()
                .0
        };
        let limit: RouteLimit = yaml_serde::from_str("{requestsPerSecond: 0}").unwrap();
        assert_eq!(limit.check().unwrap_err().0, "requestsPerSecond");
        assert_eq!(bad("trustedHops: [10.0.0.0/40]\n"), "trustedHops[0]");
    }
}
