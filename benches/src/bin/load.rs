//! `load`: an HTTP load generator for the benchmarks, closed-loop (maximum
//! throughput at a fixed number of connections) or open-loop (a fixed rate,
//! latency measured from each request's intended send time), HTTP/1.1
//! keep-alive or h2, plaintext, TLS or mTLS. `load --help` explains it all.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http::header::{HOST, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedSender;
use tollgate_benches::client::{Body, Sender, Target, tls_config};
use tollgate_benches::procfs;

const ABOUT: &str = "HTTP load generator: closed-loop maximum throughput, or open-loop fixed-rate \
latency corrected for coordinated omission; HTTP/1.1 keep-alive or h2; plaintext, TLS or mTLS";

const LONG_ABOUT: &str = "\
HTTP load generator for Tollgate's benchmarks: closed-loop maximum throughput, or
open-loop fixed-rate latency corrected for coordinated omission; HTTP/1.1
keep-alive or h2; plaintext, TLS or mTLS.

CLOSED LOOP (no --rate): CONCURRENCY workers (default: CONNECTIONS) each send a
request, wait for the whole response, and send the next at once. The result is
the maximum throughput at that concurrency; a request's latency is its own
service time (send to last body byte). Requests that start before the end of
the warm-up or finish after the end of the run are not counted.

OPEN LOOP (--rate RPS): requests are scheduled at fixed intervals, 1/RPS apart,
from the start of the warm-up to the end of the run, whatever the server does.
Each is sent at its intended time by a free worker (a connection for HTTP/1.1,
a stream slot for h2); when every worker is busy, requests queue, and each
request's latency is measured from its INTENDED send time, so time spent
queueing behind a slow response counts (the correction for coordinated
omission that wrk2 and `oha -q --latency-correction` make). Requests scheduled
during the warm-up are not counted; those scheduled in the measured part are
counted even when they finish after it (the drain: up to --timeout). A request
that cannot be sent within --timeout of its intended time counts as a timeout.
A pacer thread releases each request at its intended time (nanosleep with
the timer slack at 1 ns: tokio's timers tick every 1 ms); how late requests
were sent after their intended time is reported as send_delay_us (the
generator's own lag: it counts toward latency). Pin the generator (taskset) to
a CPU that the server does not use.

CONNECTIONS: HTTP/1.1 has one request in flight per connection, so CONCURRENCY
is CONNECTIONS. With --http2, CONCURRENCY workers (default CONNECTIONS) share
CONNECTIONS connections round-robin: -c 2 --concurrency 16 is 8 streams in
flight on each of 2 connections. All connections are opened before the warm-up;
a connection that fails is reopened by the next request on it (the reconnect
counts toward that request's latency).

TLS: an https URL needs --ca (the CA that signed the server's certificate; the
server is verified against the URL's host name or IP). --cert and --key present
a client certificate (mTLS). ALPN offers only h2 (--http2) or only http/1.1.
rustls with ring, TLS 1.3 preferred; the negotiated version, cipher suite and
key exchange group are printed.

OUTPUT: a human-readable summary on stdout; with --json FILE (or -), one JSON
object:
  url, http ('1.1'|'2'), mode ('closed'|'open'), connections, concurrency,
  rate (null in closed loop), duration_s, warmup_s, tls (null for http),
  requests (counted: ok + errors), ok, achieved_rps (ok responses completed
  within the measured part / its duration), drained (open loop: counted
  requests that finished after the measured part),
  errors {total, status, connect, io, timeout}, warmup_errors {...},
  first_errors {kind: message}, status_counts {code: n} (all counted responses),
  latency_us {p50, p90, p99, p99_9, max, mean} (open loop: from intended send),
  send_delay_us {p50, p99, max} (open loop; null in closed loop),
  windows [{t_s, rps, p50_us, p99_us, errors}] (by completion time, --window
  seconds each; the last may be shorter),
  cpu {interval_s, self_s, machine_busy_s, other_s, other_pct} over the measured
  part: the generator's CPU seconds, the whole machine's busy CPU seconds, and
  what neither the generator nor a watched process used (other processes,
  steal), other_pct in % of one CPU,
  and with --watch-pid: watched [{pid, cpu_s, rss_kib {start, end, peak},
  hwm_kib}] per process, and cpu_s and rss_kib {start, end, peak} summed over
  the watched processes (cpu: utime+stime from /proc/PID/stat over the
  measured part; rss: VmRSS at its start, its end, and the peak of 100 ms
  samples; hwm: VmHWM, the peak since the process started).

Errors: status (a response whose status is not --expect-status), connect (TCP,
TLS or HTTP handshake), io (the connection failed mid-request), timeout (no
complete response within --timeout of sending, or not sent within --timeout of
its intended time).

EXIT STATUS: 0 when every request, warm-up included, was answered with the
expected status; 1 when any error occurred (the results are still printed and
written); 2 for bad arguments.

EXAMPLES:
  load --url http://127.0.0.1:8080/ -c 16 --duration 5
  load --url https://localhost:15443/ --ca certs/client/ca.crt \\
       --cert certs/client/tls.crt --key certs/client/tls.key \\
       --http2 -c 2 --concurrency 16 --rate 5000 --duration 10 --json out.json \\
       --watch-pid $(pgrep -n tollgate-proxy)";

#[derive(Parser)]
#[command(name = "load", about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    /// http:// or https:// URL to request.
    #[arg(long)]
    url: Uri,
    /// Request method.
    #[arg(long, default_value = "GET")]
    method: Method,
    /// Request body, sent with every request (Content-Length set).
    #[arg(long, value_name = "FILE")]
    body_file: Option<PathBuf>,
    /// A request header, `name: value`; repeatable. `Host` defaults to the
    /// URL's authority.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// PEM CA certificate(s) the server's certificate must chain to (https).
    #[arg(long, value_name = "CA.pem")]
    ca: Option<PathBuf>,
    /// PEM client certificate chain to present (mTLS); needs --key.
    #[arg(long, value_name = "C.pem", requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, value_name = "K.pem", requires = "cert")]
    key: Option<PathBuf>,
    /// h2 (ALPN h2 over TLS, prior knowledge over plaintext) instead of
    /// HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// Connections, all opened before the warm-up.
    #[arg(short = 'c', long, default_value_t = 1, value_name = "CONNECTIONS")]
    connections: usize,
    /// Requests in flight at most (h2 only: spread over the connections);
    /// default CONNECTIONS.
    #[arg(long)]
    concurrency: Option<usize>,
    /// Open loop: requests per second on a fixed schedule. Without it: closed
    /// loop.
    #[arg(long, value_name = "RPS")]
    rate: Option<f64>,
    /// Measured seconds.
    #[arg(short = 'd', long, default_value_t = 10.0, value_name = "SECS")]
    duration: f64,
    /// Seconds of load before the measured part, not counted.
    #[arg(long, default_value_t = 2.0, value_name = "SECS")]
    warmup: f64,
    /// Length of the per-window breakdown, seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    window: f64,
    /// A request's limit, seconds (`--help`: Errors).
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    timeout: f64,
    /// The status every response must have.
    #[arg(long, default_value_t = 200, value_name = "STATUS")]
    expect_status: u16,
    /// A process whose CPU time and memory are reported over the measured
    /// part; repeatable (e.g. nginx's master and workers).
    #[arg(long = "watch-pid", value_name = "PID")]
    watch_pids: Vec<u32>,
    /// Writes the results as one JSON object to this file (`-`: stdout).
    #[arg(long, value_name = "OUT.json")]
    json: Option<PathBuf>,
    /// Tokio worker threads of the generator.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() {
    let cli = Cli::parse();
    let code = match start(cli) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("load: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// `Ok(false)`: the run completed with errors.
fn start(cli: Cli) -> anyhow::Result<bool> {
    for (name, v) in [
        ("--duration", cli.duration),
        ("--window", cli.window),
        ("--timeout", cli.timeout),
    ] {
        if !(v.is_finite() && v > 0.0) {
            bail!("{name} must be a positive number of seconds");
        }
    }
    if !(cli.warmup.is_finite() && cli.warmup >= 0.0) {
        bail!("--warmup must be 0 or more seconds");
    }
    if let Some(rate) = cli.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        bail!("--rate must be a positive number of requests per second");
    }
    if cli.connections == 0 {
        bail!("-c must be at least 1");
    }
    let concurrency = cli.concurrency.unwrap_or(cli.connections);
    if concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if !cli.http2 && concurrency != cli.connections {
        bail!("HTTP/1.1 has one request in flight per connection: --concurrency must equal -c");
    }
    let expect = StatusCode::from_u16(cli.expect_status).context("--expect-status")?;
    let tls = match (&cli.ca, &cli.cert, &cli.key) {
        (Some(ca), cert, key) => Some(tls_config(
            ca,
            cert.as_deref().zip(key.as_deref()),
            cli.http2,
        )?),
        (None, None, None) => None,
        (None, _, _) => bail!("--cert and --key need --ca"),
    };
    let target = Target::new(&cli.url, tls)?;
    let body = match &cli.body_file {
        Some(f) => Bytes::from(std::fs::read(f).with_context(|| format!("{}", f.display()))?),
        None => Bytes::new(),
    };
    let mut headers = HeaderMap::new();
    for h in &cli.headers {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("-H {h:?}: expected `name: value`"))?;
        headers.append(
            HeaderName::from_bytes(name.trim().as_bytes()).with_context(|| format!("-H {h:?}"))?,
            HeaderValue::from_str(value.trim()).with_context(|| format!("-H {h:?}"))?,
        );
    }
    let uri: Uri = if cli.http2 {
        cli.url.clone()
    } else {
        if !headers.contains_key(HOST) {
            headers.insert(HOST, HeaderValue::from_str(&target.authority)?);
        }
        target.path.parse()?
    };
    let template = Template {
        method: cli.method.clone(),
        uri,
        headers,
        body,
        version: if cli.http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(run(cli, concurrency, expect, target, template))
}

/// What every request is made from.
struct Template {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    version: Version,
}

impl Template {
    fn request(&self) -> Request<Body> {
        let mut r = Request::new(Full::new(self.body.clone()));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        *r.version_mut() = self.version;
        r
    }
}

/// What all workers share.
struct Shared {
    target: Target,
    template: Template,
    expect: StatusCode,
    timeout: Duration,
    /// Open loop: requests per second.
    rate: Option<f64>,
    /// Open loop: the intended send times, from the pacer thread.
    queue: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Instant>>,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    window: Duration,
    windows: usize,
    /// h2: the connections, shared by the workers round-robin.
    h2: Vec<tokio::sync::Mutex<Option<http2::SendRequest<Body>>>>,
    tls: OnceLock<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Kind {
    Status,
    Connect,
    Io,
    Timeout,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Status, Kind::Connect, Kind::Io, Kind::Timeout];

    fn name(self) -> &'static str {
        match self {
            Kind::Status => "status",
            Kind::Connect => "connect",
            Kind::Io => "io",
            Kind::Timeout => "timeout",
        }
    }
}

struct Failure {
    kind: Kind,
    message: String,
}

impl Failure {
    fn new(kind: Kind, message: impl std::fmt::Display) -> Failure {
        Failure {
            kind,
            message: message.to_string(),
        }
    }
}

/// An answered request: its status, or why there is none.
type Outcome = Result<StatusCode, Failure>;

#[derive(Default, Clone, Copy)]
struct Errors([u64; 4]);

impl Errors {
    fn add(&mut self, kind: Kind) {
        self.0[kind as usize] += 1;
    }

    fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    fn merge(&mut self, other: &Errors) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }

    fn json(&self) -> Value {
        let mut m = serde_json::Map::new();
        m.insert("total".into(), self.total().into());
        for k in Kind::ALL {
            m.insert(k.name().into(), self.0[k as usize].into());
        }
        Value::Object(m)
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to an hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

struct Window {
    latency: Histogram<u64>,
    ok: u64,
    errors: u64,
}

/// One worker's results, merged at the end.
struct Tally {
    latency: Histogram<u64>,
    /// Open loop: how late the generator sent each counted request.
    send_delay: Histogram<u64>,
    windows: Vec<Window>,
    ok: u64,
    /// ok responses that completed within the measured part.
    ok_in_time: u64,
    errors: Errors,
    warmup_errors: Errors,
    drained: u64,
    first_errors: BTreeMap<Kind, String>,
    statuses: BTreeMap<u16, u64>,
}

impl Tally {
    fn new(windows: usize) -> Tally {
        Tally {
            latency: histogram(),
            send_delay: histogram(),
            windows: (0..windows)
                .map(|_| Window {
                    latency: histogram(),
                    ok: 0,
                    errors: 0,
                })
                .collect(),
            ok: 0,
            ok_in_time: 0,
            errors: Errors::default(),
            warmup_errors: Errors::default(),
            drained: 0,
            first_errors: BTreeMap::new(),
            statuses: BTreeMap::new(),
        }
    }

    /// Counts one request: `from` is its intended send time (open loop) or
    /// its send time (closed loop), `done` when it completed or failed.
    fn record(&mut self, sh: &Shared, from: Instant, done: Instant, outcome: &Outcome) {
        let failure = match outcome {
            Ok(status) if *status == sh.expect => None,
            Ok(status) => Some(Failure::new(
                Kind::Status,
                format!("status {status}, expected {}", sh.expect),
            )),
            Err(f) => Some(Failure::new(f.kind, &f.message)),
        };
        if let Some(f) = &failure {
            self.first_errors
                .entry(f.kind)
                .or_insert_with(|| f.message.clone());
        }
        if from < sh.measure_from {
            if let Some(f) = failure {
                self.warmup_errors.add(f.kind);
            }
            return;
        }
        if done > sh.end {
            if sh.rate.is_none() {
                // Closed loop: a request cut off by the end is not counted.
                return;
            }
            self.drained += 1;
        }
        if let Ok(status) = outcome {
            *self.statuses.entry(status.as_u16()).or_default() += 1;
        }
        let us = (done - from).as_micros().clamp(1, u64::MAX as u128) as u64;
        let window = (done < sh.end).then(|| {
            let i = ((done - sh.measure_from).as_secs_f64() / sh.window.as_secs_f64()) as usize;
            i.min(sh.windows - 1)
        });
        match failure {
            None => {
                self.ok += 1;
                self.latency.saturating_record(us);
                if let Some(i) = window {
                    self.ok_in_time += 1;
                    self.windows[i].ok += 1;
                    self.windows[i].latency.saturating_record(us);
                }
            }
            Some(f) => {
                self.errors.add(f.kind);
                if let Some(i) = window {
                    self.windows[i].errors += 1;
                }
            }
        }
    }

    fn record_send_delay(&mut self, delay: Duration) {
        self.send_delay
            .saturating_record(delay.as_micros().min(u64::MAX as u128) as u64);
    }

    fn merge(&mut self, other: Tally) {
        self.latency.add(&other.latency).expect("same bounds");
        self.send_delay.add(&other.send_delay).expect("same bounds");
        for (a, b) in self.windows.iter_mut().zip(other.windows) {
            a.latency.add(&b.latency).expect("same bounds");
            a.ok += b.ok;
            a.errors += b.errors;
        }
        self.ok += other.ok;
        self.ok_in_time += other.ok_in_time;
        self.errors.merge(&other.errors);
        self.warmup_errors.merge(&other.warmup_errors);
        self.drained += other.drained;
        for (k, m) in other.first_errors {
            self.first_errors.entry(k).or_insert(m);
        }
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
    }
}

/// A worker's way to its connection.
enum Conn {
    /// HTTP/1.1: the worker's own connection, `None` until (re)opened.
    Http1(Option<http1::SendRequest<Body>>),
    /// h2: this index in `Shared::h2`.
    Http2(usize),
}

async fn run(
    cli: Cli,
    concurrency: usize,
    expect: StatusCode,
    target: Target,
    template: Template,
) -> anyhow::Result<bool> {
    // Every connection is opened before the schedule starts.
    let mut first = Vec::new();
    for _ in 0..cli.connections {
        let c = target.connect(cli.http2).await?;
        first.push(c);
    }
    let tls = first.first().and_then(|c| c.tls.clone());
    let mut h1 = Vec::new();
    let mut h2 = Vec::new();
    for c in first {
        match c.sender {
            Sender::Http1(s) => h1.push(Some(s)),
            Sender::Http2(s) => h2.push(tokio::sync::Mutex::new(Some(s))),
        }
    }
    let duration = Duration::from_secs_f64(cli.duration);
    let window = Duration::from_secs_f64(cli.window);
    let windows = (cli.duration / cli.window).ceil().max(1.0) as usize;
    // A few milliseconds for the workers to be spawned.
    let start = Instant::now() + Duration::from_millis(5);
    let measure_from = start + Duration::from_secs_f64(cli.warmup);
    let end = measure_from + duration;
    let (schedule, queue) = tokio::sync::mpsc::unbounded_channel();
    let pacer = cli.rate.map(|rate| {
        std::thread::Builder::new()
            .name("pacer".into())
            .spawn(move || pace(rate, start, end, schedule))
    });
    let shared = Arc::new(Shared {
        target,
        template,
        expect,
        timeout: Duration::from_secs_f64(cli.timeout),
        rate: cli.rate,
        queue: tokio::sync::Mutex::new(queue),
        start,
        measure_from,
        end,
        window,
        windows,
        h2,
        tls: OnceLock::new(),
    });
    if let Some(t) = tls {
        let _ = shared.tls.set(t);
    }

    let sampler = tokio::spawn(sample(cli.watch_pids.clone(), measure_from, end));
    let mut workers = Vec::new();
    let mut h1 = h1.into_iter();
    for w in 0..concurrency {
        let conn = if cli.http2 {
            Conn::Http2(w % cli.connections)
        } else {
            Conn::Http1(h1.next().flatten())
        };
        let sh = shared.clone();
        workers.push(tokio::spawn(async move {
            if sh.rate.is_some() {
                open_loop(&sh, conn).await
            } else {
                closed_loop(&sh, conn).await
            }
        }));
    }
    let mut tally = Tally::new(windows);
    for w in workers {
        tally.merge(w.await?);
    }
    let sampled = sampler.await?;
    if let Some(pacer) = pacer {
        pacer?
            .join()
            .map_err(|_| anyhow::anyhow!("the pacer thread panicked"))?;
    }

    let report = report(&cli, concurrency, &shared, &tally, &sampled);
    // Ignore a closed stdout (`| head`): the JSON file is still written.
    let _ = std::io::stdout().write_all(human(&report).as_bytes());
    if let Some(path) = &cli.json {
        let text = serde_json::to_string_pretty(&report)? + "\n";
        if path.as_os_str() == "-" {
            std::io::stdout().write_all(text.as_bytes())?;
        } else {
            std::fs::write(path, text).with_context(|| format!("{}", path.display()))?;
        }
    }
    Ok(tally.errors.total() + tally.warmup_errors.total() == 0)
}

async fn closed_loop(sh: &Shared, mut conn: Conn) -> Tally {
    let mut tally = Tally::new(sh.windows);
    tokio::time::sleep_until(sh.start.into()).await;
    while Instant::now() < sh.end {
        let sent = Instant::now();
        let outcome = send(sh, &mut conn).await;
        let done = Instant::now();
        let failed = matches!(&outcome, Err(f) if f.kind == Kind::Connect || f.kind == Kind::Io);
        tally.record(sh, sent, done, &outcome);
        if failed {
            // Do not spin on a server that refuses or drops connections.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tally
}

/// Open loop: releases each request's intended send time, 1/rate apart
/// from `start` to `end`, into the workers' queue at that time. A thread of
/// its own that sleeps with the kernel's timer slack lowered to 1 ns, so a
/// request is released within microseconds of its time (tokio's timer wheel
/// has 1 ms ticks); every request already due is released at once.
fn pace(rate: f64, start: Instant, end: Instant, queue: UnboundedSender<Instant>) {
    // The default slack is 50 µs. A thread may lower its own, through
    // /proc/TID (not listed, but there); /proc/thread-self names the TID.
    if let Ok(link) = std::fs::read_link("/proc/thread-self")
        && let Some(tid) = link.file_name()
    {
        let _ = std::fs::write(Path::new("/proc").join(tid).join("timerslack_ns"), "1");
    }
    let mut k = 0u64;
    loop {
        let intended = start + Duration::from_secs_f64(k as f64 / rate);
        if intended >= end {
            return;
        }
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        if queue.send(intended).is_err() {
            return;
        }
        k += 1;
    }
}

async fn open_loop(sh: &Shared, mut conn: Conn) -> Tally {
    let mut tally = Tally::new(sh.windows);
    loop {
        let Some(intended) = sh.queue.lock().await.recv().await else {
            // The schedule is over and its queue is empty.
            return tally;
        };
        let now = Instant::now();
        if now > intended + sh.timeout {
            // Queued past its limit: it would time out whatever the server did.
            let outcome = Err(Failure::new(
                Kind::Timeout,
                "not sent within --timeout of its intended time",
            ));
            tally.record(sh, intended, now, &outcome);
            continue;
        }
        if intended >= sh.measure_from {
            tally.record_send_delay(now - intended);
        }
        let outcome = send(sh, &mut conn).await;
        tally.record(sh, intended, Instant::now(), &outcome);
    }
}

/// One request on the worker's connection, (re)opening it when needed; the
/// response body is read to its end.
async fn send(sh: &Shared, conn: &mut Conn) -> Outcome {
    match conn {
        Conn::Http1(slot) => {
            // A connection the server closed after its last response (say
            // `Connection: close`) is replaced; that is no error.
            if let Some(sender) = slot.as_mut()
                && sender.ready().await.is_err()
            {
                *slot = None;
            }
            if slot.is_none() {
                *slot = Some(open_http1(sh).await?);
            }
            let sender = slot.as_mut().expect("opened above");
            let result = tokio::time::timeout(sh.timeout, async {
                sender
                    .ready()
                    .await
                    .map_err(|e| Failure::new(Kind::Io, e))?;
                exchange(sender.send_request(sh.template.request())).await
            })
            .await
            .unwrap_or_else(|_| Err(Failure::new(Kind::Timeout, "no response within --timeout")));
            if result.is_err() {
                // Never reuse a connection that failed or may still carry
                // the late response.
                *slot = None;
            }
            result
        }
        Conn::Http2(i) => {
            let mut sender = {
                let mut slot = sh.h2[*i].lock().await;
                match slot.as_ref() {
                    Some(s) if !s.is_closed() => s.clone(),
                    _ => {
                        *slot = None;
                        let c = sh
                            .target
                            .connect(true)
                            .await
                            .map_err(|e| Failure::new(Kind::Connect, format!("{e:#}")))?;
                        let Sender::Http2(s) = c.sender else {
                            unreachable!("asked for h2")
                        };
                        slot.insert(s).clone()
                    }
                }
            };
            tokio::time::timeout(sh.timeout, async {
                sender
                    .ready()
                    .await
                    .map_err(|e| Failure::new(Kind::Io, e))?;
                exchange(sender.send_request(sh.template.request())).await
            })
            .await
            .unwrap_or_else(|_| Err(Failure::new(Kind::Timeout, "no response within --timeout")))
        }
    }
}

async fn open_http1(sh: &Shared) -> Result<http1::SendRequest<Body>, Failure> {
    let c = sh
        .target
        .connect(false)
        .await
        .map_err(|e| Failure::new(Kind::Connect, format!("{e:#}")))?;
    if let Some(t) = c.tls {
        let _ = sh.tls.set(t);
    }
    match c.sender {
        Sender::Http1(s) => Ok(s),
        Sender::Http2(_) => unreachable!("asked for HTTP/1.1"),
    }
}

async fn exchange(
    response: impl Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>,
) -> Outcome {
    let response = response.await.map_err(|e| Failure::new(Kind::Io, e))?;
    let status = response.status();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| Failure::new(Kind::Io, format!("reading the body: {e}")))?;
    Ok(status)
}

/// /proc readings over the measured part.
#[derive(Default)]
struct Sampled {
    interval_s: f64,
    self_cpu_s: Option<f64>,
    machine_busy_s: Option<f64>,
    watched: Vec<Watched>,
    /// Peak of the watched processes' summed RSS.
    sum_peak_kib: u64,
}

#[derive(Default, Clone)]
struct Watched {
    pid: u32,
    cpu_s: Option<f64>,
    rss_start: Option<u64>,
    rss_end: Option<u64>,
    rss_peak: u64,
    hwm: Option<u64>,
}

async fn sample(pids: Vec<u32>, from: Instant, end: Instant) -> Sampled {
    tokio::time::sleep_until(from.into()).await;
    let t0 = Instant::now();
    let self0 = procfs::self_cpu_seconds();
    let busy0 = procfs::machine_busy_seconds();
    let cpu0: Vec<Option<f64>> = pids.iter().map(|&p| procfs::cpu_seconds(p)).collect();
    let mut watched: Vec<Watched> = pids
        .iter()
        .map(|&pid| {
            let rss = procfs::rss_kib(pid);
            Watched {
                pid,
                rss_start: rss,
                rss_peak: rss.unwrap_or(0),
                ..Watched::default()
            }
        })
        .collect();
    let mut sum_peak = watched.iter().map(|w| w.rss_peak).sum::<u64>();
    while Instant::now() + Duration::from_millis(100) < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut sum = 0;
        for w in &mut watched {
            let rss = procfs::rss_kib(w.pid).unwrap_or(0);
            w.rss_peak = w.rss_peak.max(rss);
            sum += rss;
        }
        sum_peak = sum_peak.max(sum);
    }
    tokio::time::sleep_until(end.into()).await;
    let interval_s = t0.elapsed().as_secs_f64();
    let self_cpu_s = procfs::self_cpu_seconds().zip(self0).map(|(b, a)| b - a);
    let machine_busy_s = procfs::machine_busy_seconds()
        .zip(busy0)
        .map(|(b, a)| b - a);
    let mut sum = 0;
    for (w, c0) in watched.iter_mut().zip(cpu0) {
        w.cpu_s = procfs::cpu_seconds(w.pid).zip(c0).map(|(b, a)| b - a);
        w.rss_end = procfs::rss_kib(w.pid);
        w.hwm = procfs::hwm_kib(w.pid);
        let rss = w.rss_end.unwrap_or(0);
        w.rss_peak = w.rss_peak.max(rss);
        sum += rss;
    }
    Sampled {
        interval_s,
        self_cpu_s,
        machine_busy_s,
        watched,
        sum_peak_kib: sum_peak.max(sum),
    }
}

fn pct(h: &Histogram<u64>, q: f64) -> u64 {
    if h.is_empty() {
        0
    } else {
        h.value_at_quantile(q)
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn report(cli: &Cli, concurrency: usize, sh: &Shared, t: &Tally, s: &Sampled) -> Value {
    let windows: Vec<Value> = t
        .windows
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let t_s = i as f64 * cli.window;
            let len = (cli.duration - t_s).min(cli.window);
            json!({
                "t_s": round3(t_s),
                "rps": round3(w.ok as f64 / len),
                "p50_us": pct(&w.latency, 0.50),
                "p99_us": pct(&w.latency, 0.99),
                "errors": w.errors,
            })
        })
        .collect();
    let watched_cpu: Option<f64> = s.watched.iter().map(|w| w.cpu_s).sum();
    let other = s
        .machine_busy_s
        .zip(s.self_cpu_s)
        .map(|(busy, own)| (busy - own - watched_cpu.unwrap_or(0.0)).max(0.0));
    let mut v = json!({
        "url": cli.url.to_string(),
        "http": if cli.http2 { "2" } else { "1.1" },
        "mode": if cli.rate.is_some() { "open" } else { "closed" },
        "connections": cli.connections,
        "concurrency": concurrency,
        "rate": cli.rate,
        "duration_s": cli.duration,
        "warmup_s": cli.warmup,
        "tls": sh.tls.get(),
        "requests": t.ok + t.errors.total(),
        "ok": t.ok,
        "achieved_rps": round3(t.ok_in_time as f64 / cli.duration),
        "drained": t.drained,
        "errors": t.errors.json(),
        "warmup_errors": t.warmup_errors.json(),
        "first_errors": t.first_errors.iter().map(|(k, m)| (k.name().to_owned(), Value::from(m.clone()))).collect::<serde_json::Map<_, _>>(),
        "status_counts": t.statuses.iter().map(|(k, n)| (k.to_string(), Value::from(*n))).collect::<serde_json::Map<_, _>>(),
        "latency_us": {
            "p50": pct(&t.latency, 0.50),
            "p90": pct(&t.latency, 0.90),
            "p99": pct(&t.latency, 0.99),
            "p99_9": pct(&t.latency, 0.999),
            "max": t.latency.max(),
            "mean": round3(t.latency.mean()),
        },
        "send_delay_us": if cli.rate.is_some() {
            json!({
                "p50": pct(&t.send_delay, 0.50),
                "p99": pct(&t.send_delay, 0.99),
                "max": t.send_delay.max(),
            })
        } else {
            Value::Null
        },
        "windows": windows,
        "cpu": {
            "interval_s": round3(s.interval_s),
            "self_s": s.self_cpu_s.map(round3),
            "machine_busy_s": s.machine_busy_s.map(round3),
            "other_s": other.map(round3),
            "other_pct": other.map(|o| round3(o / s.interval_s * 100.0)),
        },
    });
    if !s.watched.is_empty() {
        let sum = |f: fn(&Watched) -> Option<u64>| -> Option<u64> { s.watched.iter().map(f).sum() };
        v["watched"] = s
            .watched
            .iter()
            .map(|w| {
                json!({
                    "pid": w.pid,
                    "cpu_s": w.cpu_s.map(round3),
                    "rss_kib": {"start": w.rss_start, "end": w.rss_end, "peak": w.rss_peak},
                    "hwm_kib": w.hwm,
                })
            })
            .collect();
        v["cpu_s"] = watched_cpu.map(round3).into();
        v["rss_kib"] = json!({
            "start": sum(|w| w.rss_start),
            "end": sum(|w| w.rss_end),
            "peak": s.sum_peak_kib,
        });
    }
    v
}

/// The human-readable summary.
fn human(r: &Value) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mode = match r["rate"].as_f64() {
        Some(rate) => format!("open loop at {rate} requests/s"),
        None => "closed loop".to_owned(),
    };
    let _ = writeln!(
        out,
        "load: {} HTTP/{} {} connection(s), concurrency {}, {}, {} s after {} s of warm-up",
        r["url"].as_str().unwrap_or(""),
        r["http"].as_str().unwrap_or(""),
        r["connections"],
        r["concurrency"],
        mode,
        r["duration_s"],
        r["warmup_s"],
    );
    if let Some(tls) = r["tls"].as_str() {
        let _ = writeln!(out, "tls: {tls}");
    }
    let e = &r["errors"];
    let _ = writeln!(
        out,
        "requests {}  ok {}  achieved {} requests/s  drained {}",
        r["requests"], r["ok"], r["achieved_rps"], r["drained"]
    );
    let _ = writeln!(
        out,
        "errors {} (status {}, connect {}, io {}, timeout {}); in the warm-up {}",
        e["total"], e["status"], e["connect"], e["io"], e["timeout"], r["warmup_errors"]["total"]
    );
    if let Some(m) = r["first_errors"].as_object() {
        for (k, v) in m {
            let _ = writeln!(out, "  first {k} error: {}", v.as_str().unwrap_or(""));
        }
    }
    let l = &r["latency_us"];
    let from = if r["rate"].is_null() {
        "send to last byte"
    } else {
        "intended send time to last byte"
    };
    let _ = writeln!(out, "latency µs ({from}):");
    if !r["send_delay_us"].is_null() {
        let d = &r["send_delay_us"];
        let _ = writeln!(
            out,
            "  (requests were sent after their intended time by p50 {} µs, p99 {} µs, max {} µs)",
            d["p50"], d["p99"], d["max"]
        );
    }
    let _ = writeln!(
        out,
        "  {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "p50", "p90", "p99", "p99.9", "max", "mean"
    );
    // serde_json's Display ignores widths: format each value first.
    let f = |v: &Value| v.to_string();
    let _ = writeln!(
        out,
        "  {:>8} {:>8} {:>8} {:>8} {:>8} {:>8.1}",
        f(&l["p50"]),
        f(&l["p90"]),
        f(&l["p99"]),
        f(&l["p99_9"]),
        f(&l["max"]),
        l["mean"].as_f64().unwrap_or(0.0)
    );
    let _ = writeln!(
        out,
        "  {:>8} {:>10} {:>8} {:>8} {:>7}",
        "window s", "requests/s", "p50 µs", "p99 µs", "errors"
    );
    for w in r["windows"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {:>8} {:>10.0} {:>8} {:>8} {:>7}",
            f(&w["t_s"]),
            w["rps"].as_f64().unwrap_or(0.0),
            f(&w["p50_us"]),
            f(&w["p99_us"]),
            f(&w["errors"])
        );
    }
    let c = &r["cpu"];
    let _ = writeln!(
        out,
        "cpu over {} s: generator {} s, machine busy {} s, other {} s ({}% of a CPU)",
        c["interval_s"], c["self_s"], c["machine_busy_s"], c["other_s"], c["other_pct"]
    );
    for w in r["watched"].as_array().into_iter().flatten() {
        let req = r["requests"].as_f64().unwrap_or(0.0);
        let per100k = match w["cpu_s"].as_f64() {
            Some(cpu) if req > 0.0 => format!("{:.2}", cpu / req * 100_000.0),
            _ => "-".into(),
        };
        let _ = writeln!(
            out,
            "pid {}: cpu {} s ({} s per 100k requests), rss KiB start {} end {} peak {} (hwm {})",
            w["pid"],
            w["cpu_s"],
            per100k,
            w["rss_kib"]["start"],
            w["rss_kib"]["end"],
            w["rss_kib"]["peak"],
            w["hwm_kib"]
        );
    }
    out
}
