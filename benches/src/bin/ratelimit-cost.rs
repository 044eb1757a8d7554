//! The rate limiter's own cost per request, in-process: the local GCRA
//! against the shared one (`rateLimit.shared`, a real Redis), one key, at a
//! steady rate below the limit (so the shared limiter spends tokens it
//! reserved in batches, refilled in the background). Each check is timed
//! on its own; the loop pauses every 10 checks to hold the rate, which is
//! when background refills run (one thread, as in a pod with one core). Prints p50/p99/mean per check, how many
//! checks had to wait for Redis, and Redis calls per 1,000 checks (from
//! the proxy's own `tollgate_ratelimit_shared_latency_seconds_count`).
//!
//! ratelimit-cost --redis redis://127.0.0.1:6379 [--checks 200000] [--rate 200000]
//!
//! `benches/ratelimit-shared.sh` runs it against its Redis.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use tollgate_proxy::listener::ConnInfo;
use tollgate_proxy::metrics::Metrics;
use tollgate_proxy::ratelimit::{Checked, RateLimitConfig, RateLimits};
use tollgate_proxy::route::{RouteConfig, RouteTable};

#[derive(Parser)]
struct Args {
    /// The Redis of the shared limit.
    #[arg(long)]
    redis: String,
    /// Checks per limiter.
    #[arg(long, default_value_t = 200_000)]
    checks: u64,
    /// Checks per second (below the limit of 1,000,000/s).
    #[arg(long, default_value_t = 200_000.0)]
    rate: f64,
}

struct Result {
    histogram: Histogram<u64>,
    waited: u64,
    refused: u64,
}

async fn measure(limits: &Arc<RateLimits>, request: &http::Request<()>, args: &Args) -> Result {
    let mut histogram = Histogram::<u64>::new(3).expect("histogram");
    let (mut waited, mut refused) = (0, 0);
    let chunk = 10;
    let pause = Duration::from_secs_f64(chunk as f64 / args.rate);
    let started = Instant::now();
    let mut i = 0;
    while i < args.checks {
        for _ in 0..chunk {
            let t = Instant::now();
            let allowed = match limits.check(black_box(request)) {
                Checked::Now(r) => r.is_ok(),
                Checked::Later(f) => {
                    waited += 1;
                    f.await.is_ok()
                }
            };
            histogram.saturating_record(t.elapsed().as_nanos() as u64);
            refused += u64::from(!allowed);
        }
        i += chunk;
        // Hold the rate; background refills run meanwhile.
        let due = started + pause.mul_f64((i / chunk) as f64);
        tokio::time::sleep_until(due.into()).await;
    }
    Result {
        histogram,
        waited,
        refused,
    }
}

fn calls(metrics: &Metrics) -> f64 {
    metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix("tollgate_ratelimit_shared_latency_seconds_count "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let routes: Vec<RouteConfig> = yaml_serde::from_str(
        "- {name: local, pathPrefix: /local, rateLimit: {requestsPerSecond: 1000000, burst: 100000, key: {header: x-user}}}\n\
         - {name: shared, pathPrefix: /shared, rateLimit: {requestsPerSecond: 1000000, burst: 100000, key: {header: x-user}, shared: true}}\n",
    )?;
    let table = RouteTable::new(&routes);
    let config: RateLimitConfig = yaml_serde::from_str(&format!(
        "shared: {{url: \"{}\", keyPrefix: ratelimit-cost-{}}}",
        args.redis,
        std::process::id()
    ))?;
    let metrics = Metrics::new();
    let limits =
        RateLimits::new(&config, &table, metrics.rate_limit.clone()).map_err(anyhow::Error::msg)?;
    let conn = Arc::new(ConnInfo {
        peer: "127.0.0.1:1000".parse()?,
        identity: None,
        facts: Default::default(),
    });
    let request = |path: &str| {
        let mut r = http::Request::builder()
            .uri(path)
            .header("x-user", "bench")
            .body(())
            .unwrap_or_default();
        r.extensions_mut().insert(conn.clone());
        if let Some(route) = table.find(path) {
            r.extensions_mut().insert(route.clone());
        }
        r
    };
    // Connected (the backend starts in failureMode and probes at once).
    let started = Instant::now();
    while !metrics.encode().contains("tollgate_ratelimit_backend_up 1") {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(5),
            "not connected to {} within 5 s",
            args.redis
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (local_req, shared_req) = (request("/local"), request("/shared"));
    // Warm-up, then both limiters measured alternately, twice.
    measure(
        &limits,
        &local_req,
        &Args {
            checks: 10_000,
            ..args.clone_args()
        },
    )
    .await;
    measure(
        &limits,
        &shared_req,
        &Args {
            checks: 10_000,
            ..args.clone_args()
        },
    )
    .await;
    let calls_before = calls(&metrics);
    let local = measure(&limits, &local_req, &args).await;
    let shared = measure(&limits, &shared_req, &args).await;
    let shared_calls = calls(&metrics) - calls_before;
    println!(
        "ratelimit-cost: {} checks per limiter at {:.0}/s, one key, limit 1,000,000/s burst 100,000 (batch {})",
        args.checks,
        args.rate,
        tollgate_proxy::ratelimit::shared::MAX_BATCH
    );
    println!(
        "| limiter | p50 ns | p99 ns | p99.9 ns | mean ns | waited for Redis | refused | Redis calls per 1,000 checks |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, r, calls) in [("local", &local, 0.0), ("shared", &shared, shared_calls)] {
        println!(
            "| {name} | {} | {} | {} | {:.0} | {} | {} | {:.2} |",
            r.histogram.value_at_quantile(0.5),
            r.histogram.value_at_quantile(0.99),
            r.histogram.value_at_quantile(0.999),
            r.histogram.mean(),
            r.waited,
            r.refused,
            calls / args.checks as f64 * 1000.0
        );
    }
    println!(
        "added by sharing: p50 {:+} ns, p99 {:+} ns",
        shared.histogram.value_at_quantile(0.5) as i64
            - local.histogram.value_at_quantile(0.5) as i64,
        shared.histogram.value_at_quantile(0.99) as i64
            - local.histogram.value_at_quantile(0.99) as i64
    );
    Ok(())
}

impl Args {
    fn clone_args(&self) -> Args {
        Args {
            redis: self.redis.clone(),
            checks: self.checks,
            rate: self.rate,
        }
    }
}
