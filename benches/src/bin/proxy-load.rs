//! The load generator of `benches/proxy.sh`: wrk cannot present a client
//! certificate, and the proxy's inbound listener requires one. N keep-alive
//! HTTP/1.1 connections (over mTLS with `--certs`, else plaintext) each send
//! `GET` back to back for `--duration` seconds after `--warmup`; every
//! latency is recorded. One line of `key=value` results is printed.
//!
//! ```text
//! proxy-load certs DIR                  # CA, proxy/ (server) and client/ certificates
//! proxy-load jwt DIR                    # JWKS, PEM public keys and tokens (RS256, ES256)
//! proxy-load --url https://localhost:15443/ --certs DIR/client -c 16 -d 10 --watch-pid PID
//! proxy-upstream --listen 127.0.0.1:8080
//! ```
//!
//! `--watch-pid` samples that process's resident memory (VmRSS) every
//! 100 ms during the measured part of the run and reports the largest.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use tollgate_benches::client::{Sender, Target, tls_config, write_certs};
use tollgate_benches::jwt::write_fixtures;
use tollgate_benches::procfs::rss_kib;

#[derive(Parser)]
#[command(
    name = "proxy-load",
    about = "HTTP/1.1 keep-alive load over mTLS (or plaintext), with latency percentiles",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// http:// or https:// URL to GET.
    #[arg(long, required = true)]
    url: Option<Uri>,
    /// Directory with tls.crt, tls.key, ca.crt: the client certificate
    /// presented and the CA the server is verified against (https only).
    #[arg(long)]
    certs: Option<PathBuf>,
    /// Keep-alive connections.
    #[arg(long, short = 'c', default_value_t = 1)]
    connections: usize,
    /// Measured seconds.
    #[arg(long, short = 'd', default_value_t = 10)]
    duration: u64,
    /// Unmeasured seconds first.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// A process whose peak VmRSS during the measured part is reported.
    #[arg(long)]
    watch_pid: Option<u32>,
    /// Tokio worker threads of the generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Writes a CA and two workload certificates: DIR/proxy (the proxy's
    /// serving and client identity) and DIR/client (the load generator's).
    Certs { dir: PathBuf },
    /// Writes JWT fixtures: jwks.json (an RS256 and an ES256 key), their
    /// public keys as PEM (rs256.pub.pem, es256.pub.pem) and a token signed
    /// by each (rs256.token, es256.token; iss https://issuer.bench, aud
    /// bench, sub alice).
    Jwt {
        dir: PathBuf,
        /// Seconds the tokens stay valid.
        #[arg(long, default_value_t = 7 * 86400)]
        lifetime: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Certs { dir }) => return write_certs(dir),
        Some(Command::Jwt { dir, lifetime }) => return write_fixtures(dir, *lifetime),
        None => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(run(cli))
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let url = cli.url.clone().context("--url is required")?;
    let tls = match &cli.certs {
        Some(dir) if url.scheme_str() == Some("https") => Some(tls_config(
            &dir.join("ca.crt"),
            Some((&dir.join("tls.crt"), &dir.join("tls.key"))),
            false,
        )?),
        None if url.scheme_str() == Some("https") => anyhow::bail!("https needs --certs"),
        _ => None,
    };
    let target = Target::new(&url, tls)?;
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(cli.warmup);
    let end = measure_from + Duration::from_secs(cli.duration);

    let peak = cli.watch_pid.map(|pid| {
        tokio::spawn(async move {
            let mut peak = 0u64;
            tokio::time::sleep_until(measure_from.into()).await;
            while Instant::now() < end {
                peak = peak.max(rss_kib(pid).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        })
    });

    let mut tasks = Vec::new();
    for _ in 0..cli.connections {
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            'reconnect: while Instant::now() < end {
                let mut sender = match target.connect(false).await {
                    Ok(c) => match c.sender {
                        Sender::Http1(s) => s,
                        Sender::Http2(_) => unreachable!("asked for HTTP/1.1"),
                    },
                    Err(_) => {
                        tally.errors += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                while Instant::now() < end {
                    let request = Request::get(target.path.as_str())
                        .header(http::header::HOST, target.authority.as_str())
                        .body(Full::<Bytes>::default())?;
                    let sent = Instant::now();
                    let ok = match sender.send_request(request).await {
                        Ok(r) => {
                            let status = r.status();
                            r.into_body().collect().await.is_ok() && status.is_success()
                        }
                        Err(_) => false,
                    };
                    let done = Instant::now();
                    if sent >= measure_from && done <= end {
                        if ok {
                            let us = (done - sent).as_micros().min(u32::MAX as u128) as u32;
                            tally.latencies_us.push(us);
                        } else {
                            tally.errors += 1;
                        }
                    }
                    if !ok || sender.ready().await.is_err() {
                        continue 'reconnect;
                    }
                }
            }
            Ok::<_, anyhow::Error>(tally)
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        let tally = t.await??;
        all.latencies_us.extend(tally.latencies_us);
        all.errors += tally.errors;
    }
    let peak = match peak {
        Some(task) => Some(task.await?),
        None => None,
    };
    all.latencies_us.sort_unstable();
    let n = all.latencies_us.len();
    let pct = |p: f64| -> f64 {
        if n == 0 {
            return 0.0;
        }
        let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
        all.latencies_us[i] as f64 / 1000.0
    };
    println!(
        "requests={n} rps={:.0} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} errors={} peak_rss_kib={}",
        n as f64 / cli.duration as f64,
        pct(0.50),
        pct(0.99),
        pct(1.0),
        all.errors,
        peak.map_or("-".to_owned(), |p| p.to_string()),
    );
    Ok(())
}
