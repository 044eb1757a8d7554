//! The load generator of `benches/proxy.sh`: wrk cannot present a client
//! certificate, and the proxy's inbound listener requires one. N keep-alive
//! HTTP/1.1 connections (over mTLS with `--certs`, else plaintext) each send
//! `GET` back to back for `--duration` seconds after `--warmup`; every
//! latency is recorded. One line of `key=value` results is printed.
//!
//! ```text
//! proxy-load certs DIR                  # CA, proxy/ (server) and client/ certificates
//! proxy-load --url https://localhost:15443/ --certs DIR/client -c 16 -d 10 --watch-pid PID
//! proxy-upstream --listen 127.0.0.1:8080
//! ```
//!
//! `--watch-pid` samples that process's resident memory (VmRSS) every
//! 100 ms during the measured part of the run and reports the largest.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tollgate_certs::issue::{Ca, LeafSpec};
use tollgate_certs::reload::{ExpectedServer, Files, IdentityStore};

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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Certs { dir }) = &cli.command {
        return write_certs(dir);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(run(cli))
}

fn write_certs(dir: &Path) -> anyhow::Result<()> {
    let ca = Ca::generate("proxy bench CA")?;
    for (name, id) in [
        ("proxy", "spiffe://cluster.local/ns/bench/sa/proxy"),
        ("client", "spiffe://cluster.local/ns/bench/sa/client"),
    ] {
        let mut spec = LeafSpec::workload(id, &["localhost".to_owned()]);
        spec.ips = vec![Ipv4Addr::LOCALHOST.into()];
        let leaf = ca.issue(&spec)?;
        let d = dir.join(name);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("tls.crt"), leaf.cert_pem)?;
        std::fs::write(d.join("tls.key"), leaf.key_pem)?;
        std::fs::write(d.join("ca.crt"), ca.cert_pem())?;
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    errors: u64,
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let url = cli.url.clone().context("--url is required")?;
    let tls = url.scheme_str() == Some("https");
    let host = url.host().context("the URL has no host")?.to_owned();
    let port = url.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let addr: SocketAddr = (host.as_str(), port)
        .to_socket_addrs()?
        .find(|a| a.is_ipv4())
        .context("the host does not resolve to IPv4")?;
    let connector = if tls {
        let dir = cli.certs.as_deref().context("https needs --certs")?;
        let store = IdentityStore::new(&Files::in_dir(dir).read()?, "proxy-load")?;
        let mut config = store.client_config(ExpectedServer::Name)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Some(TlsConnector::from(Arc::new(config)))
    } else {
        None
    };
    let path = url
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let authority = format!("{host}:{port}");
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
        let connector = connector.clone();
        let (host, path, authority) = (host.clone(), path.clone(), authority.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            'reconnect: while Instant::now() < end {
                let tcp = match TcpStream::connect(addr).await {
                    Ok(tcp) => tcp,
                    Err(_) => {
                        tally.errors += 1;
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let sender = match &connector {
                    Some(c) => {
                        let name = ServerName::try_from(host.clone())?;
                        let stream = match c.connect(name, tcp).await {
                            Ok(s) => s,
                            Err(_) => {
                                tally.errors += 1;
                                continue;
                            }
                        };
                        handshake(TokioIo::new(stream)).await
                    }
                    None => handshake(TokioIo::new(tcp)).await,
                };
                let Ok(mut sender) = sender else {
                    tally.errors += 1;
                    continue;
                };
                while Instant::now() < end {
                    let request = Request::get(path.as_str())
                        .header(http::header::HOST, authority.as_str())
                        .body(Empty::<Bytes>::new())?;
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

async fn handshake<I>(
    io: I,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}
