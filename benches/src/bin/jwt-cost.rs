//! Per-request cost of the proxy's JWT and rate-limit layers, in-process:
//! verifying a token (RS256, ES256, EdDSA) with and without the
//! verified-token cache, and one rate-limit check (one hot key, and a
//! fresh key per request); and the JWKS's size (`--jwks-sweep`, default
//! 1, 10, 100, 1000, 10000 keys): loading the set, and an uncached ES256
//! verification with the set's first and its last key.
//!
//! cargo run --release -p tollgate-benches --bin jwt-cost [-- --iterations N] [--jwks-sweep 1,10,100,1000,10000]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use serde_json::json;
use tollgate_benches::sweep;
use tollgate_e2e::jwt::{SigningKey, jwk_set, now};
use tollgate_proxy::jwt::{JwtConfig, Verifier};
use tollgate_proxy::listener::ConnInfo;
use tollgate_proxy::ratelimit::{Checked, RateLimitConfig, RateLimitMetrics, RateLimits};
use tollgate_proxy::route::{RouteConfig, RouteTable};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 20_000)]
    iterations: u32,
    /// JWKS sizes, comma-separated (empty: skip).
    #[arg(long, default_value = "1,10,100,1000,10000")]
    jwks_sweep: String,
}

fn per_op(started: Instant, n: u32) -> f64 {
    started.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

fn verifier(jwks: &std::path::Path, cache_entries: usize) -> anyhow::Result<Verifier> {
    let yaml = format!(
        "providers:\n  main:\n    issuer: https://issuer.bench\n    audiences: [bench]\n    \
         algorithms: [RS256, ES256, EdDSA]\n    jwks: {{file: {}}}\ncacheEntries: {cache_entries}\n",
        jwks.display()
    );
    let config: JwtConfig = yaml_serde::from_str(&yaml)?;
    Verifier::new(&config).map_err(anyhow::Error::msg)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let n = args.iterations;
    let dir = tempfile::tempdir()?;
    let keys = [
        SigningKey::rsa("rsa")?,
        SigningKey::ec("ec")?,
        SigningKey::ed25519("ed")?,
    ];
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwk_set(&keys.iter().collect::<Vec<_>>()))?;
    let uncached = verifier(&path, 0)?;
    let cached = verifier(&path, 10_000)?;
    for jwks in uncached.jwks().iter().chain(cached.jwks().iter()) {
        jwks.refresh().await.map_err(anyhow::Error::msg)?;
    }

    println!("JWT verification, µs per request ({n} iterations, one thread):");
    println!("| alg | uncached | cached | speed-up |");
    println!("|---|---:|---:|---:|");
    for key in &keys {
        let claims = json!({"iss": "https://issuer.bench", "aud": "bench", "sub": "alice",
                            "team": "ml", "exp": now() + 3600});
        let token = key.sign(&claims);
        uncached
            .verify(&token, &[])
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let t = Instant::now();
        for _ in 0..n {
            black_box(uncached.verify(black_box(&token), &[]).await.is_ok());
        }
        let slow = per_op(t, n);
        cached
            .verify(&token, &[])
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let t = Instant::now();
        for _ in 0..n {
            black_box(cached.verify(black_box(&token), &[]).await.is_ok());
        }
        let fast = per_op(t, n);
        println!(
            "| {:?} | {slow:.2} | {fast:.3} | {:.0}× |",
            key.alg,
            slow / fast
        );
    }

    let routes: Vec<RouteConfig> = yaml_serde::from_str(
        "- {name: api, pathPrefix: /, rateLimit: {requestsPerSecond: 1000000000, burst: 1000000, key: {header: x-user}}}\n",
    )?;
    let table = RouteTable::new(&routes);
    let limits = RateLimits::new(
        &RateLimitConfig::default(),
        &table,
        RateLimitMetrics::default(),
    )
    .map_err(anyhow::Error::msg)?;
    let conn = Arc::new(ConnInfo {
        peer: "127.0.0.1:1000".parse()?,
        identity: None,
        facts: Default::default(),
    });
    let request = |user: String| {
        let mut r = http::Request::builder()
            .uri("/api")
            .header("x-user", user)
            .body(())
            .unwrap_or_default();
        r.extensions_mut().insert(conn.clone());
        // The route match the stack's route layer attaches.
        if let Some(route) = table.find("/api") {
            r.extensions_mut().insert(route.clone());
        }
        r
    };
    let hot = request("alice".into());
    let t = Instant::now();
    for _ in 0..n {
        black_box(matches!(limits.check(black_box(&hot)), Checked::Now(Ok(_))));
    }
    let one_key = per_op(t, n);
    let fresh: Vec<_> = (0..n).map(|i| request(format!("user-{i}"))).collect();
    let t = Instant::now();
    for r in &fresh {
        black_box(matches!(limits.check(black_box(r)), Checked::Now(Ok(_))));
    }
    let new_keys = per_op(t, n);
    println!(
        "\nRate-limit check, µs per request: one hot key {one_key:.3}, a new key each time {new_keys:.3}"
    );
    if !sweep::points::<usize>(&args.jwks_sweep)?.is_empty() {
        jwks_sweep(&args, dir.path()).await?;
    }
    Ok(())
}

/// Uncached ES256 verification against JWKS sets of growing size (every
/// key the same material under its own kid): the token of the first kid
/// and of the last, and the time to load the set.
async fn jwks_sweep(args: &Args, dir: &std::path::Path) -> anyhow::Result<()> {
    let mut key = SigningKey::ec("k0")?;
    let n = (args.iterations / 4).max(100);
    println!(
        "\nJWKS size: uncached ES256 verification, µs per request ({n} iterations), and loading the set (median of 5):"
    );
    println!("| keys in the set | load ms | first kid µs | last kid µs | last − first µs |");
    println!("|---:|---:|---:|---:|---:|");
    let claims = json!({"iss": "https://issuer.bench", "aud": "bench", "sub": "alice",
                        "exp": now() + 3600});
    for size in sweep::points::<usize>(&args.jwks_sweep)? {
        let keys: Vec<serde_json::Value> = (0..size)
            .map(|i| {
                let mut jwk = key.jwk.clone();
                jwk["kid"] = json!(format!("k{i}"));
                jwk
            })
            .collect();
        let path = dir.join(format!("jwks-{size}.json"));
        std::fs::write(&path, json!({ "keys": keys }).to_string())?;
        let verifier = verifier(&path, 0)?;
        let mut loads = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            for jwks in verifier.jwks().iter() {
                jwks.refresh().await.map_err(anyhow::Error::msg)?;
            }
            loads.push(t.elapsed().as_secs_f64() * 1e3);
        }
        loads.sort_by(f64::total_cmp);
        let mut per = [0.0; 2];
        for (slot, kid) in per.iter_mut().zip([0, size - 1]) {
            key.kid = format!("k{kid}");
            let token = key.sign(&claims);
            verifier
                .verify(&token, &[])
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let t = Instant::now();
            for _ in 0..n {
                black_box(verifier.verify(black_box(&token), &[]).await.is_ok());
            }
            *slot = per_op(t, n);
        }
        println!(
            "| {size} | {:.2} | {:.2} | {:.2} | {:+.2} |",
            loads[2],
            per[0],
            per[1],
            per[1] - per[0]
        );
    }
    Ok(())
}
