//! Shared limits: one GCRA bucket per key across every replica, held in
//! Redis, with the hot path kept local.
//!
//! Each replica reserves tokens from Redis in batches (`gcra.lua`, atomic
//! per key) and spends them locally; a request waits on Redis only when
//! its key has no local tokens left, and a refill starts in the background
//! when a key runs low, so at a steady rate requests never wait. When Redis
//! grants fewer tokens than asked (the shared bucket is drained), the
//! replica asks again only once a batch could have accrued, and refuses
//! locally meanwhile: Redis sees at most `replicas / (batch × interval)`
//! calls per second per key, whatever the offered load.
//!
//! **Accuracy.** Redis's GCRA admits at most `rate × W + burst` tokens in
//! any window `W`; a replica holds at most `batch` tokens it has not spent.
//! So `R` replicas admit at most `rate × W + burst + R × batch` in any
//! window: the overshoot bound. The default batch is `burst /
//! expectedReplicas` (at least 1, at most [`MAX_BATCH`]), which keeps it
//! within one extra burst while `R <= expectedReplicas`. Tokens a replica
//! reserved but never spent are lost (undershoot, at most `R × batch` per
//! purge interval).
//!
//! **Failure.** Redis down, slow, or the circuit open (`backend.rs`): a
//! request that would wait on Redis waits at most `redisTimeoutMs`, then
//! follows `failureMode`: `local` (a local GCRA at `rate /
//! expectedReplicas`, burst likewise), `allow`, or `deny` (503).
//!
//! Keys in Redis are `{keyPrefix}:{route}:{hash}`, the hash being the first
//! 128 bits of SHA-256 of the key value: never a raw token, email or IP.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use prometheus_client::metrics::counter::Counter;
use serde::Deserialize;
use tokio::sync::watch;

use super::backend::{Backend, BackendMetrics, Endpoint};

/// The largest default batch: at a steady rate, one Redis call per
/// `MAX_BATCH × 3/4` requests (refills start at a quarter left).
pub const MAX_BATCH: u32 = 200;

/// The environment variable that sets `expectedReplicas` (the chart fills
/// it through the Downward API); it overrides the file.
pub const REPLICAS_ENV: &str = "TOLLGATE_EXPECTED_REPLICAS";

/// `rateLimit.shared`: where the shared buckets live and what to do
/// without them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SharedConfig {
    /// `redis://host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    #[serde(default)]
    pub username: Option<String>,
    /// A file holding the password (a mounted Secret); re-read on
    /// every reconnect.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM roots for `rediss://`; default: the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The one timeout of every call and probe: no request waits longer
    /// on Redis (connecting, in the background, may take 10×).
    #[serde(default = "default_timeout")]
    pub redis_timeout_ms: u64,
    /// How often an open circuit re-probes Redis.
    #[serde(default = "default_probe")]
    pub probe_interval_ms: u64,
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// Replicas sharing each limit; `failureMode: local` limits each at
    /// `rate / expectedReplicas`. `$TOLLGATE_EXPECTED_REPLICAS` overrides.
    #[serde(default = "one")]
    pub expected_replicas: u32,
    /// Names this service's keys in a Redis shared with others.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// Tokens reserved per Redis call; default `burst / expectedReplicas`,
    /// 1 to 200.
    #[serde(default)]
    pub batch: Option<u32>,
}

fn default_timeout() -> u64 {
    25
}
fn default_probe() -> u64 {
    500
}
fn one() -> u32 {
    1
}
fn default_prefix() -> String {
    "tollgate".into()
}

/// What a shared limit does while Redis cannot answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FailureMode {
    /// A local limit at `rate / expectedReplicas`.
    #[default]
    Local,
    /// Let every request through.
    Allow,
    /// Refuse every request (503).
    Deny,
}

impl FailureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::Local => "local",
            FailureMode::Allow => "allow",
            FailureMode::Deny => "deny",
        }
    }
}

impl SharedConfig {
    /// Checks what serde cannot; errors are `(path under shared, message)`.
    pub fn check(&self) -> Result<(), (String, String)> {
        let scheme = self.url.split("://").next().unwrap_or_default();
        if !self.url.contains("://") || !matches!(scheme, "redis" | "rediss") {
            return Err((
                "url".into(),
                format!(
                    "{:?} is not a Redis URL (redis://host:port or rediss://host:port)",
                    self.url
                ),
            ));
        }
        redis::IntoConnectionInfo::into_connection_info(self.url.as_str())
            .map_err(|e| ("url".into(), e.to_string()))?;
        if self.redis_timeout_ms == 0 {
            return Err(("redisTimeoutMs".into(), "must be greater than 0".into()));
        }
        if self.probe_interval_ms == 0 {
            return Err(("probeIntervalMs".into(), "must be greater than 0".into()));
        }
        if self.expected_replicas == 0 {
            return Err(("expectedReplicas".into(), "must be at least 1".into()));
        }
        if self.batch == Some(0) {
            return Err(("batch".into(), "must be at least 1".into()));
        }
        if self.key_prefix.is_empty() {
            return Err(("keyPrefix".into(), "must not be empty".into()));
        }
        Ok(())
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            url: self.url.clone(),
            username: self.username.clone(),
            password_file: self.password_file.clone(),
            ca_file: self.ca_file.clone(),
            timeout: Duration::from_millis(self.redis_timeout_ms),
            probe_interval: Duration::from_millis(self.probe_interval_ms),
        }
    }

    /// The connection every shared route uses.
    pub fn start(&self, metrics: BackendMetrics) -> Result<Arc<Backend>, String> {
        Backend::start(self.endpoint(), metrics).map_err(|e| format!("rateLimit.shared.{e}"))
    }

    /// Tokens per Redis call for a route with `burst`.
    pub fn batch_for(&self, burst: u32) -> u32 {
        match self.batch {
            Some(batch) => batch,
            None => (burst / self.expected_replicas).clamp(1, MAX_BATCH),
        }
    }
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Allowed; `Some(n)`: `n` tokens are still guaranteed to this key here.
    Allowed(Option<u32>),
    /// Refused; retry after this long.
    Limited(Duration),
    /// `failureMode: deny` while Redis cannot answer.
    Unavailable,
}

enum Step {
    Done(Outcome),
    Wait(watch::Receiver<()>),
    Degraded,
}

#[derive(Default)]
struct Reservation {
    /// Tokens reserved in Redis, not yet spent.
    tokens: u32,
    /// No call to Redis before this (the shared bucket was drained), and
    /// with no tokens left, requests are refused until then.
    not_before: Option<Instant>,
    /// The call in flight, if any; its sender is dropped when it ends.
    fetching: Option<watch::Receiver<()>>,
    /// Used since the last purge.
    used: bool,
}

type Fallback = RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock>;

/// One route's shared limit.
pub struct SharedLimit {
    /// `{keyPrefix}:{route}:`
    prefix: String,
    interval: Duration,
    interval_us: u64,
    burst: u32,
    batch: u32,
    low_water: u32,
    keys: Mutex<HashMap<String, Reservation>>,
    backend: Arc<Backend>,
    mode: FailureMode,
    fallback: Fallback,
    clock: DefaultClock,
    /// Decisions taken by `failureMode`.
    degraded: Counter,
}

impl SharedLimit {
    pub fn new(
        config: &SharedConfig,
        backend: Arc<Backend>,
        route: &str,
        rate: f64,
        burst: u32,
        degraded: Counter,
    ) -> Result<Arc<SharedLimit>, String> {
        let interval = Duration::from_secs_f64(1.0 / rate);
        let replicas = f64::from(config.expected_replicas);
        let local_burst = (f64::from(burst) / replicas).ceil().max(1.0) as u32;
        let local = Quota::with_period(Duration::from_secs_f64(replicas / rate))
            .ok_or("rate too high")?
            .allow_burst(NonZeroU32::new(local_burst).unwrap_or(NonZeroU32::MIN));
        let batch = config.batch_for(burst);
        Ok(Arc::new(SharedLimit {
            prefix: format!("{}:{route}:", config.key_prefix),
            interval,
            interval_us: u64::try_from(interval.as_micros())
                .unwrap_or(u64::MAX)
                .max(1),
            burst,
            batch,
            low_water: batch / 4,
            keys: Mutex::new(HashMap::new()),
            backend,
            mode: config.failure_mode,
            fallback: RateLimiter::keyed(local),
            clock: DefaultClock::default(),
            degraded,
        }))
    }

    pub fn batch(&self) -> u32 {
        self.batch
    }

    pub fn mode(&self) -> FailureMode {
        self.mode
    }

    /// The longest a request waits on Redis.
    pub fn timeout(&self) -> Duration {
        self.backend.timeout()
    }

    /// The Redis key of a key value: never the value itself.
    pub fn redis_key(&self, key: &str) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let mut out = self.prefix.clone();
        for b in &digest.as_ref()[..16] {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// Decides without waiting when it can; `None`: the request must wait
    /// for Redis ([`SharedLimit::decide`]).
    pub fn try_decide(self: &Arc<Self>, key: &str) -> Option<Outcome> {
        match self.step(key, true) {
            Step::Done(outcome) => Some(outcome),
            Step::Degraded => Some(self.degraded(key)),
            Step::Wait(_) => None,
        }
    }

    /// Decides, waiting on Redis until `deadline` at most.
    pub async fn decide(self: Arc<Self>, key: String, deadline: Instant) -> Outcome {
        match self.step(&key, true) {
            Step::Done(outcome) => return outcome,
            Step::Degraded => return self.degraded(&key),
            Step::Wait(mut fetch) => {
                let _ = tokio::time::timeout_at(deadline.into(), fetch.changed()).await;
            }
        }
        match self.step(&key, false) {
            Step::Done(outcome) => outcome,
            Step::Degraded | Step::Wait(_) => self.degraded(&key),
        }
    }

    fn step(self: &Arc<Self>, key: &str, may_fetch: bool) -> Step {
        let now = Instant::now();
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        let r = match keys.get_mut(key) {
            Some(r) => r,
            None => keys.entry(key.to_owned()).or_default(),
        };
        r.used = true;
        let gated = r.not_before.is_some_and(|t| now < t);
        if r.tokens > 0 {
            r.tokens -= 1;
            let left = r.tokens;
            if left <= self.low_water && r.fetching.is_none() && !gated && self.backend.usable() {
                self.start_fetch(r, key, self.batch - left);
            }
            return Step::Done(Outcome::Allowed(Some(left)));
        }
        if let Some(fetch) = &r.fetching {
            return if may_fetch {
                Step::Wait(fetch.clone())
            } else {
                Step::Degraded
            };
        }
        if gated {
            let wait = r.not_before.map_or(self.interval, |t| t - now);
            return Step::Done(Outcome::Limited(wait));
        }
        if !may_fetch || !self.backend.usable() {
            return Step::Degraded;
        }
        Step::Wait(self.start_fetch(r, key, self.batch))
    }

    fn start_fetch(
        self: &Arc<Self>,
        r: &mut Reservation,
        key: &str,
        wanted: u32,
    ) -> watch::Receiver<()> {
        let (done, fetch) = watch::channel(());
        r.fetching = Some(fetch.clone());
        let this = self.clone();
        let key = key.to_owned();
        tokio::spawn(async move {
            let answer = this
                .backend
                .acquire(&this.redis_key(&key), this.interval_us, this.burst, wanted)
                .await;
            let now = Instant::now();
            let mut keys = this.keys.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(r) = keys.get_mut(&key) {
                r.fetching = None;
                if let Ok((granted, wait_us)) = answer {
                    r.tokens += granted;
                    // Drained: ask again once a batch could have accrued.
                    r.not_before = (granted < wanted).then(|| {
                        now + Duration::from_micros(wait_us)
                            + this.interval.saturating_mul(this.batch.saturating_sub(1))
                    });
                }
            }
            drop(done);
        });
        fetch
    }

    fn degraded(&self, key: &str) -> Outcome {
        self.degraded.inc();
        match self.mode {
            FailureMode::Allow => Outcome::Allowed(None),
            FailureMode::Deny => Outcome::Unavailable,
            FailureMode::Local => match self.fallback.check_key(&key.to_owned()) {
                Ok(()) => Outcome::Allowed(Some(0)),
                Err(not_until) => Outcome::Limited(not_until.wait_time_from(self.clock.now())),
            },
        }
    }

    /// Drops keys unused since the last purge (with their reserved
    /// tokens); returns how many are left.
    pub fn purge(&self) -> usize {
        self.fallback.retain_recent();
        self.fallback.shrink_to_fit();
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        keys.retain(|_, r| {
            let keep = r.used || r.fetching.is_some();
            r.used = false;
            keep
        });
        keys.shrink_to_fit();
        keys.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> SharedConfig {
        yaml_serde::from_str(yaml).unwrap()
    }

    #[test]
    fn config_errors_name_the_field() {
        let bad = |yaml: &str| config(yaml).check().unwrap_err().0;
        assert_eq!(bad("{url: 'http://x'}"), "url");
        assert_eq!(
            bad("{url: 'redis://x', redisTimeoutMs: 0}"),
            "redisTimeoutMs"
        );
        assert_eq!(
            bad("{url: 'redis://x', expectedReplicas: 0}"),
            "expectedReplicas"
        );
        assert_eq!(bad("{url: 'redis://x', batch: 0}"), "batch");
        let ok = config("{url: 'redis://127.0.0.1:6379'}");
        ok.check().unwrap();
        assert_eq!(ok.failure_mode, FailureMode::Local);
        assert_eq!(ok.expected_replicas, 1);
        assert!(
            yaml_serde::from_str::<SharedConfig>("{url: 'redis://x', failureMode: open}").is_err()
        );
    }

    #[test]
    fn default_batch_keeps_the_overshoot_within_one_burst() {
        let c = config("{url: 'redis://x', expectedReplicas: 3}");
        assert_eq!(c.batch_for(20), 6);
        assert_eq!(c.batch_for(2), 1);
        assert_eq!(c.batch_for(100_000), MAX_BATCH);
        let explicit = config("{url: 'redis://x', batch: 500}");
        assert_eq!(explicit.batch_for(10), 500);
        for burst in [1, 5, 20, 99, 600] {
            assert!(3 * c.batch_for(burst) <= burst.max(3), "burst {burst}");
        }
    }

    #[tokio::test]
    async fn redis_keys_carry_the_route_and_a_hash_never_the_value() {
        let c = config("{url: 'redis://127.0.0.1:1', keyPrefix: svc}");
        let backend = c.start(BackendMetrics::default()).unwrap();
        let limit = SharedLimit::new(&c, backend, "api", 10.0, 10, Counter::default()).unwrap();
        let key = limit.redis_key("claim:alice@example.com");
        assert!(key.starts_with("svc:api:"), "{key}");
        assert!(!key.contains("alice"), "{key}");
        assert_eq!(key.len(), "svc:api:".len() + 32);
        assert_ne!(key, limit.redis_key("claim:bob@example.com"));
    }

    #[tokio::test]
    async fn without_redis_local_failure_mode_limits_at_the_replicas_share() {
        // Nothing listens on port 1: the circuit starts open and stays so.
        let c = config("{url: 'redis://127.0.0.1:1', expectedReplicas: 4}");
        let backend = c.start(BackendMetrics::default()).unwrap();
        let limit = SharedLimit::new(&c, backend, "api", 40.0, 8, Counter::default()).unwrap();
        let admitted = (0..20)
            .filter(|_| matches!(limit.try_decide("k"), Some(Outcome::Allowed(_))))
            .count();
        assert_eq!(admitted, 2, "burst 8 / 4 replicas");
        let deny = config("{url: 'redis://127.0.0.1:1', failureMode: deny}");
        let backend = deny.start(BackendMetrics::default()).unwrap();
        let limit = SharedLimit::new(&deny, backend, "api", 40.0, 8, Counter::default()).unwrap();
        assert_eq!(limit.try_decide("k"), Some(Outcome::Unavailable));
    }
}
