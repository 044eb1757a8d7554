//! The Redis side of shared rate limits: one multiplexed connection, the
//! GCRA script (`gcra.lua`, run by SHA; the client reloads it on
//! `NOSCRIPT`), one timeout for every call, and a circuit breaker.
//!
//! The circuit opens after [`OPEN_AFTER`] failures in a row, or at once
//! when the connection itself fails; while it is open no request waits on
//! Redis (callers use their `failureMode`), and one background task
//! re-probes every `probeIntervalMs` (reconnecting, re-reading the password
//! file, `PING`) until Redis answers again.
//!
//! It must never hold a request longer than `redisTimeoutMs`, and never
//! sends a raw key value to Redis (callers hash it; see `shared.rs`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, Script};

/// Failures in a row (timeouts, server errors) that open the circuit.
pub const OPEN_AFTER: u32 = 3;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `timeout`, `connection`, `response`.
    pub kind: &'static str,
}

/// `tollgate_ratelimit_backend_errors_total{kind}`,
/// `tollgate_ratelimit_shared_latency_seconds` (one observation per Redis
/// call, so its `_count` is the number of round trips) and
/// `tollgate_ratelimit_backend_up` (1 while the circuit is closed).
#[derive(Clone)]
pub struct BackendMetrics {
    pub errors: Family<ErrorLabels, Counter>,
    pub latency: Histogram,
    pub up: Gauge,
}

impl Default for BackendMetrics {
    fn default() -> Self {
        BackendMetrics {
            errors: Family::default(),
            // 25 µs .. ~0.8 s
            latency: Histogram::new(exponential_buckets(0.000_025, 2.0, 16)),
            up: Gauge::default(),
        }
    }
}

impl BackendMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ratelimit_backend_errors",
            "Shared rate-limit calls to Redis that failed, by kind",
            self.errors.clone(),
        );
        registry.register(
            "ratelimit_shared_latency_seconds",
            "Round-trip time of shared rate-limit calls to Redis",
            self.latency.clone(),
        );
        registry.register(
            "ratelimit_backend_up",
            "1 while the shared rate-limit backend answers (circuit closed), 0 while requests use failureMode",
            self.up.clone(),
        );
    }
}

/// Where and how to reach Redis.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `redis://host:port[/db]` or `rediss://…` (TLS).
    pub url: String,
    pub username: Option<String>,
    /// Read at every (re)connect, so a rotated Secret is picked up.
    pub password_file: Option<PathBuf>,
    /// PEM roots for `rediss://`; default: the system's.
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    pub probe_interval: Duration,
}

/// Why a call did not give an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BackendError {
    #[error("the circuit is open (Redis failed recently; re-probing)")]
    Open,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connection: {0}")]
    Connection(String),
    #[error("Redis answered with an error: {0}")]
    Response(String),
}

struct Circuit {
    failures: u32,
    /// Set while open: since when, and the error that opened it.
    open_since: Option<(Instant, String)>,
}

pub struct Backend {
    endpoint: Endpoint,
    /// Where `/ready` says we connect (the URL without credentials).
    display: String,
    conn: ArcSwapOption<MultiplexedConnection>,
    script: Script,
    /// Fast path: `true` while calls may be made.
    closed: AtomicBool,
    circuit: Mutex<Circuit>,
    probing: AtomicBool,
    metrics: BackendMetrics,
}

impl Backend {
    /// A backend that starts open and connects in the background (the
    /// proxy serves from the first moment, in `failureMode` until Redis
    /// answers). Errors: an unusable URL or CA file.
    pub fn start(endpoint: Endpoint, metrics: BackendMetrics) -> Result<Arc<Backend>, String> {
        let info = endpoint
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("url: {e}"))?;
        if let Some(ca) = &endpoint.ca_file {
            std::fs::read(ca).map_err(|e| format!("caFile: {}: {e}", ca.display()))?;
        }
        if let Some(file) = &endpoint.password_file {
            std::fs::read_to_string(file)
                .map_err(|e| format!("passwordFile: {}: {e}", file.display()))?;
        }
        let display = info.addr().to_string();
        let backend = Arc::new(Backend {
            display,
            conn: ArcSwapOption::empty(),
            script: Script::new(include_str!("gcra.lua")),
            closed: AtomicBool::new(false),
            circuit: Mutex::new(Circuit {
                failures: 0,
                open_since: Some((Instant::now(), "not connected yet".into())),
            }),
            probing: AtomicBool::new(false),
            metrics,
            endpoint,
        });
        backend.metrics.up.set(0);
        backend.clone().probe_in_background(Duration::ZERO);
        Ok(backend)
    }

    pub fn timeout(&self) -> Duration {
        self.endpoint.timeout
    }

    /// Whether calls may be made now (the circuit is closed).
    pub fn usable(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// One line for `/ready`.
    pub fn status(&self) -> String {
        let circuit = self.circuit.lock().unwrap_or_else(|e| e.into_inner());
        match &circuit.open_since {
            None => format!("connected to {}", self.display),
            Some((since, why)) => format!(
                "degraded for {:.1}s: Redis at {} failed ({why}); re-probing every {:?}",
                since.elapsed().as_secs_f64(),
                self.display,
                self.endpoint.probe_interval
            ),
        }
    }

    /// Takes up to `wanted` tokens of the bucket `key` (GCRA, `interval_us`
    /// per token, `burst` at most): `(granted, µs until the next token)`.
    pub async fn acquire(
        self: &Arc<Self>,
        key: &str,
        interval_us: u64,
        burst: u32,
        wanted: u32,
    ) -> Result<(u32, u64), BackendError> {
        if !self.usable() {
            return Err(BackendError::Open);
        }
        let Some(conn) = self.conn.load_full() else {
            return Err(BackendError::Open);
        };
        let mut conn = (*conn).clone();
        let started = Instant::now();
        let mut invocation = self.script.prepare_invoke();
        invocation.key(key).arg(interval_us).arg(burst).arg(wanted);
        let call = invocation.invoke_async::<(i64, i64)>(&mut conn);
        let answer = tokio::time::timeout(self.endpoint.timeout, call).await;
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        let error = match answer {
            Ok(Ok((granted, wait))) => {
                self.succeeded();
                let granted = u32::try_from(granted.max(0)).unwrap_or(u32::MAX);
                return Ok((granted.min(wanted), u64::try_from(wait).unwrap_or(0)));
            }
            Ok(Err(e)) if is_connection_error(&e) => BackendError::Connection(e.to_string()),
            Ok(Err(e)) => BackendError::Response(e.to_string()),
            Err(_) => BackendError::Timeout(self.endpoint.timeout),
        };
        if self.failed(&error) {
            self.clone()
                .probe_in_background(self.endpoint.probe_interval);
        }
        Err(error)
    }

    fn succeeded(&self) {
        let mut circuit = self.circuit.lock().unwrap_or_else(|e| e.into_inner());
        circuit.failures = 0;
    }

    /// Counts a failure; `true` when it opened the circuit.
    fn failed(&self, error: &BackendError) -> bool {
        let kind = match error {
            BackendError::Open => return false,
            BackendError::Timeout(_) => "timeout",
            BackendError::Connection(_) => "connection",
            BackendError::Response(_) => "response",
        };
        self.metrics
            .errors
            .get_or_create(&ErrorLabels { kind })
            .inc();
        let mut circuit = self.circuit.lock().unwrap_or_else(|e| e.into_inner());
        circuit.failures += 1;
        let broken = matches!(error, BackendError::Connection(_));
        if broken {
            self.conn.store(None);
        }
        if (broken || circuit.failures >= OPEN_AFTER) && circuit.open_since.is_none() {
            tracing::warn!(
                redis = %self.display,
                error = %error,
                "shared rate limits degraded: Redis failed; using failureMode until it answers again"
            );
            circuit.open_since = Some((Instant::now(), error.to_string()));
            self.closed.store(false, Ordering::Release);
            self.metrics.up.set(0);
            return true;
        }
        false
    }

    fn open_now(&self) -> bool {
        let circuit = self.circuit.lock().unwrap_or_else(|e| e.into_inner());
        circuit.open_since.is_some()
    }

    /// Starts the prober unless it runs already; it re-checks the circuit
    /// after the first pause, so starting it twice is harmless.
    fn probe_in_background(self: Arc<Self>, first_pause: Duration) {
        if self.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        tokio::spawn(async move {
            let mut pause = first_pause;
            loop {
                tokio::time::sleep(pause).await;
                pause = self.endpoint.probe_interval;
                match self.probe().await {
                    Ok(()) => {
                        let mut circuit = self.circuit.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some((since, _)) = circuit.open_since.take() {
                            tracing::info!(
                                redis = %self.display,
                                degraded_for_s = since.elapsed().as_secs_f64(),
                                "shared rate limits restored: Redis answers"
                            );
                        }
                        circuit.failures = 0;
                        self.closed.store(true, Ordering::Release);
                        self.metrics.up.set(1);
                        break;
                    }
                    Err(e) => {
                        let mut circuit = self.circuit.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some((_, why)) = circuit.open_since.as_mut() {
                            *why = e;
                        }
                    }
                }
            }
            self.probing.store(false, Ordering::Release);
            // A failure that opened the circuit while we were closing it.
            if self.open_now() {
                self.clone()
                    .probe_in_background(self.endpoint.probe_interval);
            }
        });
    }

    /// Connects if needed, then `PING`s, within the timeout each.
    async fn probe(&self) -> Result<(), String> {
        let conn = match self.conn.load_full() {
            Some(conn) => conn,
            None => {
                let conn = tokio::time::timeout(self.endpoint.timeout * 10, self.connect())
                    .await
                    .map_err(|_| "connecting timed out".to_owned())??;
                let conn = Arc::new(conn);
                self.conn.store(Some(conn.clone()));
                conn
            }
        };
        let mut conn = (*conn).clone();
        let started = Instant::now();
        let ping_cmd = redis::cmd("PING");
        let ping = ping_cmd.query_async::<String>(&mut conn);
        let answer = tokio::time::timeout(self.endpoint.timeout, ping).await;
        self.metrics
            .latency
            .observe(started.elapsed().as_secs_f64());
        match answer {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                if is_connection_error(&e) {
                    self.conn.store(None);
                }
                Err(e.to_string())
            }
            Err(_) => Err(format!(
                "PING not answered within {:?}",
                self.endpoint.timeout
            )),
        }
    }

    async fn connect(&self) -> Result<MultiplexedConnection, String> {
        let mut info = self
            .endpoint
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| e.to_string())?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &self.endpoint.username {
            settings = settings.set_username(user);
        }
        if let Some(file) = &self.endpoint.password_file {
            let password = std::fs::read_to_string(file)
                .map_err(|e| format!("reading passwordFile {}: {e}", file.display()))?;
            settings = settings.set_password(password.trim_end_matches(['\r', '\n']));
        }
        info = info.set_redis_settings(settings);
        let client = match &self.endpoint.ca_file {
            Some(ca) => {
                let root_cert = std::fs::read(ca)
                    .map_err(|e| format!("reading caFile {}: {e}", ca.display()))?;
                Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root_cert),
                    },
                )
            }
            None => Client::open(info),
        }
        .map_err(|e| e.to_string())?;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.endpoint.timeout * 10))
            .set_response_timeout(Some(self.endpoint.timeout));
        client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| e.to_string())
    }
}

fn is_connection_error(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}
