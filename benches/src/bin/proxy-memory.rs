//! The proxy's resident memory against what it is made to remember (issue
//! #12 item 3), through the real release binary:
//!
//! - **rate-limit keys**: two proxies with the same route (`key: {header:
//!   x-key}`, no purge during the run) get the same requests; one sees a
//!   new key on every request, the other one key throughout. Their RSS is
//!   read at each checkpoint (default 10k, 100k, 300k, 1M requests); the
//!   difference over the keys is the memory a key costs;
//! - **JWKS keys**: a proxy per size (default 1, 10, 100, 1000, 10000 keys
//!   in `jwks.file`; RSA 2048 and EC P-256 sets), idle after start and
//!   after `--jwt-requests` requests with a token signed by the set's last
//!   key (so its lookup walks the whole set), against the one-key set.
//!
//! ```text
//! cargo run --release -p tollgate-benches --bin proxy-memory [-- --keys 10000,100000,300000,1000000 --jwks 1,10,100,1000,10000]
//! ```
//!
//! `TOLLGATE_PROXY_BIN` picks the proxy (default: `tollgate-proxy` beside
//! this binary, the release build). Clients: one h2 connection over mTLS
//! per proxy, `--in-flight` requests at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use bytes::Bytes;
use clap::Parser;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tollgate_benches::sweep;
use tollgate_certs::reload::Material;
use tollgate_e2e::jwt::{SigningKey, now};
use tollgate_e2e::proxy::{Pki, Proxy, ProxyConfig, client, upstream};

#[derive(Parser)]
#[command(
    name = "proxy-memory",
    about = "tollgate-proxy's RSS against rate-limit keys and JWKS size"
)]
struct Cli {
    /// Checkpoints of the rate-limit sweep: requests (= distinct keys) sent
    /// so far, comma-separated, ascending (empty: skip).
    #[arg(long, default_value = "10000,100000,300000,1000000")]
    keys: String,
    /// Sizes of the JWKS sweep, comma-separated (empty: skip).
    #[arg(long, default_value = "1,10,100,1000,10000")]
    jwks: String,
    /// Requests with a token per JWKS proxy.
    #[arg(long, default_value_t = 2000)]
    jwt_requests: u64,
    /// Requests in flight per client.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
}

type Sender = http2::SendRequest<Empty<Bytes>>;

/// Two fresh proxies with the same config differ by up to this much RSS
/// (KiB): a smaller difference says nothing per key.
const NOISE_KIB: f64 = 512.0;

/// One h2 connection over mTLS to the proxy's inbound listener.
async fn connect(material: &Material, ca: &str, port: u16) -> anyhow::Result<Sender> {
    let config = client::tls_config(Some(material), ca, &[b"h2"])?;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    tcp.set_nodelay(true)?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?;
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Sends requests `from..to` with `header(i)` set, `in_flight` at once;
/// every answer must be 200.
async fn send_range(
    sender: &Sender,
    from: u64,
    to: u64,
    in_flight: usize,
    header: impl Fn(u64) -> (&'static str, String) + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(from));
    let header = Arc::new(header);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let (mut sender, next, header) = (sender.clone(), next.clone(), header.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= to {
                    return Ok::<_, anyhow::Error>(());
                }
                let (name, value) = header(i);
                let request = Request::get("https://localhost/download?bytes=0")
                    .header(name, value)
                    .body(Empty::new())?;
                sender.ready().await?;
                let response = sender.send_request(request).await?;
                let status = response.status();
                response.into_body().collect().await?;
                ensure!(status == StatusCode::OK, "request {i}: {status}");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn settle_rss(proxy: &Proxy) -> anyhow::Result<u64> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(proxy.memory_kib()?.0)
}

async fn ratelimit_sweep(cli: &Cli, pki: &Pki, material: &Material) -> anyhow::Result<()> {
    let app = upstream::http_app().await?;
    let mut config = ProxyConfig::new(app.port());
    // No purge during the sweep: every key stays tracked.
    config.extra = "rateLimit:\n  purgeIntervalSeconds: 86400\nroutes:\n\
         - {name: keys, pathPrefix: /, rateLimit: {requestsPerSecond: 1000000, burst: 1000000, key: {header: x-key}}}\n"
        .into();
    let distinct = Proxy::start(&config, material).await?;
    let single = Proxy::start(&config, material).await?;
    let ca = pki.ca.cert_pem();
    let to_distinct = connect(material, ca, distinct.inbound).await?;
    let to_single = connect(material, ca, single.inbound).await?;
    // The same connection warm-up for both, then the baseline readings.
    send_range(&to_distinct, 0, 100, cli.in_flight, |_| {
        ("x-key", "warm".into())
    })
    .await?;
    send_range(&to_single, 0, 100, cli.in_flight, |_| {
        ("x-key", "warm".into())
    })
    .await?;
    let (d0, s0) = (settle_rss(&distinct).await?, settle_rss(&single).await?);
    println!(
        "\nRate-limit keys: RSS of two proxies given the same requests, one a new `x-key` per request, the other one key; no purge during the run.\n"
    );
    println!(
        "| requests (= keys) | RSS, a new key each | RSS, one key | difference | per key | requests/s (new keys) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    println!(
        "| 0 | {:.1} MiB | {:.1} MiB | – | – | – |",
        mib(d0),
        mib(s0)
    );
    let mut sent = 0;
    for checkpoint in sweep::points::<u64>(&cli.keys)? {
        ensure!(
            checkpoint > sent,
            "--keys must be ascending: {checkpoint} after {sent}"
        );
        let started = Instant::now();
        send_range(&to_distinct, sent, checkpoint, cli.in_flight, |i| {
            ("x-key", format!("key-{i:08}"))
        })
        .await?;
        let rate = (checkpoint - sent) as f64 / started.elapsed().as_secs_f64();
        send_range(&to_single, sent, checkpoint, cli.in_flight, |_| {
            ("x-key", "key-00000000".into())
        })
        .await?;
        sent = checkpoint;
        let (d, s) = (settle_rss(&distinct).await?, settle_rss(&single).await?);
        let diff = (d as f64 - d0 as f64) - (s as f64 - s0 as f64);
        println!(
            "| {checkpoint} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.0} B | {rate:.0} |",
            mib(d),
            mib(s),
            diff / 1024.0,
            diff * 1024.0 / checkpoint as f64
        );
    }
    let checked = distinct
        .metric("tollgate_ratelimit_allowed_total{route=\"keys\"}")
        .await?;
    ensure!(
        checked >= sent as f64,
        "the rate limiter saw {checked} requests, expected {sent}"
    );
    Ok(())
}

/// A JWKS of `n` keys like `base` (same key material, kids `k0`..): the
/// token signed by `base` is given the last kid.
fn jwks_of(base: &SigningKey, n: usize) -> String {
    let keys: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            let mut jwk = base.jwk.clone();
            jwk["kid"] = json!(format!("k{i}"));
            jwk
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

async fn jwks_sweep(cli: &Cli, pki: &Pki, material: &Material) -> anyhow::Result<()> {
    let app = upstream::http_app().await?;
    let dir = tempfile::tempdir()?;
    println!(
        "\nJWKS size: a proxy per set (`jwks.file`, every key the same material under its own kid), RSS idle once ready and after {} requests with a token signed by the set's last key (verified once, then cached).\n",
        cli.jwt_requests
    );
    println!(
        "| keys | alg | JWKS file | RSS idle | after requests | idle − 1 key | per key | ready in |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for (alg, mut key) in [
        ("RS256", SigningKey::rsa("k0")?),
        ("ES256", SigningKey::ec("k0")?),
    ] {
        let mut base = None;
        for n in sweep::points::<usize>(&cli.jwks)? {
            let path = dir.path().join(format!("jwks-{alg}-{n}.json"));
            let set = jwks_of(&key, n);
            std::fs::write(&path, &set)?;
            key.kid = format!("k{}", n - 1);
            let token = key.sign(&json!({"iss": "https://issuer.bench", "aud": "bench",
                "sub": "alice", "exp": now() + 3600}));
            let mut config = ProxyConfig::new(app.port());
            config.extra = format!(
                "jwt:\n  providers:\n    bench:\n      issuer: https://issuer.bench\n      \
                 audiences: [bench]\n      algorithms: [{alg}]\n      jwks: {{file: {}}}\n\
                 routes:\n    - {{pathPrefix: /, jwt: {{mode: required}}}}\n",
                path.display()
            );
            let started = Instant::now();
            let proxy = Proxy::start(&config, material).await?;
            let ready = started.elapsed();
            let idle = settle_rss(&proxy).await?;
            let sender = connect(material, pki.ca.cert_pem(), proxy.inbound).await?;
            let auth = format!("Bearer {token}");
            send_range(&sender, 0, cli.jwt_requests, cli.in_flight, move |_| {
                ("authorization", auth.clone())
            })
            .await
            .with_context(|| format!("{alg}, {n} keys"))?;
            let after = settle_rss(&proxy).await?;
            let first = *base.get_or_insert(idle);
            let diff = idle as f64 - first as f64;
            println!(
                "| {n} | {alg} | {:.1} KiB | {:.1} MiB | {:.1} MiB | {:+.2} MiB | {} | {:.0} ms |",
                set.len() as f64 / 1024.0,
                mib(idle),
                mib(after),
                diff / 1024.0,
                if n == 1 {
                    "–".into()
                } else if diff.abs() < NOISE_KIB {
                    "(noise)".into()
                } else {
                    format!("{:.0} B", diff * 1024.0 / (n - 1) as f64)
                },
                ready.as_secs_f64() * 1e3
            );
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if std::env::var_os("TOLLGATE_PROXY_BIN").is_none() {
        let bin = std::env::current_exe()?
            .parent()
            .context("no directory")?
            .join("tollgate-proxy");
        ensure!(
            bin.exists(),
            "{} is missing: cargo build --release -p tollgate-proxy",
            bin.display()
        );
        // SAFETY: no other thread exists yet (the runtime is built below).
        unsafe { std::env::set_var("TOLLGATE_PROXY_BIN", bin) };
    }
    if std::env::var_os("TOLLGATE_PROXY_LOG").is_none() {
        // SAFETY: as above.
        unsafe { std::env::set_var("TOLLGATE_PROXY_LOG", "warn") };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let pki = Pki::new()?;
        let material = pki.workload("spiffe://cluster.local/ns/bench/sa/client")?;
        println!(
            "proxy-memory: {}, {} CPUs; RSS is VmRSS read 0.5 s after each step",
            std::env::var("TOLLGATE_PROXY_BIN").unwrap_or_default(),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        if !sweep::points::<u64>(&cli.keys)?.is_empty() {
            ratelimit_sweep(&cli, &pki, &material).await?;
        }
        if !sweep::points::<usize>(&cli.jwks)?.is_empty() {
            jwks_sweep(&cli, &pki, &material).await?;
        }
        Ok(())
    })
}
