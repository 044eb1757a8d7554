//! The cost of WASM filters per request, in-process: the request and
//! response heads through no chain, a chain of one filter, and of three,
//! in the same run; plus instantiation and the loop-stop latency; and the
//! cost against the response body's size (`--body-sizes`, default 0, 1 KiB,
//! 64 KiB, 1 MiB: a JSON document streamed in 16 KiB frames) with no chain,
//! `header_transform` (no body callbacks: the body streams past it) and
//! `json_redact` (buffers the body, rewrites it), interleaved.
//!
//! `--callouts`: the cost of one `proxy_http_call` per request to a local
//! auth service (`as_auth`, on the AssemblyScript SDK: the request waits
//! for the answer), against no filter and against `as_header` (the same
//! SDK, no call), interleaved, on a 2-worker runtime that also runs the
//! auth service.
//!
//! ```text
//! cargo run --release -p tollgate-benches --bin filter-cost [-- --requests 20000] [--body-sizes 0,1024,65536,1048576] [--only-bodies] [--callouts]
//! ```
//! It builds the filters with `filters/build.sh` (clang + lld) and, for
//! `--callouts`, `filters/third-party/build.sh` (node + npm).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use tollgate_proxy::body;
use tollgate_proxy::filters::layer::{Filtered, begin_request, filter_request, filter_response};
use tollgate_proxy::filters::{ChainSet, FilterHost, FilterMetrics, FiltersConfig, FiltersLayer};

fn wasm_dir() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = root.join("target/filters");
    let status = std::process::Command::new("bash")
        .arg(root.join("filters/build.sh"))
        .arg(&out)
        .status()?;
    anyhow::ensure!(status.success(), "filters/build.sh failed");
    Ok(out)
}

fn host(dir: &Path, chain: &[(&str, &str, &str)]) -> anyhow::Result<std::sync::Arc<FilterHost>> {
    host_with(dir, "", chain)
}

/// [`host`] with `extra` YAML (clusters) and each filter's root id as
/// its module's name.
fn host_with(
    dir: &Path,
    extra: &str,
    chain: &[(&str, &str, &str)],
) -> anyhow::Result<std::sync::Arc<FilterHost>> {
    let mut yaml = format!("{extra}maxInstances: 64\nchains:\n  bench:\n");
    for (name, module, config) in chain {
        yaml.push_str(&format!(
            "      - name: {name}\n        module: {}\n        config: '{config}'\n        rootId: {module}\n",
            dir.join(format!("{module}.wasm")).display()
        ));
    }
    if chain.is_empty() {
        yaml = "chains: {}\n".into();
    }
    let config =
        FiltersConfig::parse(&yaml, Path::new("bench.yaml")).map_err(anyhow::Error::msg)?;
    let host = FilterHost::start(&config, FilterMetrics::new(), None);
    if let Some(e) = host.status().last_error {
        anyhow::bail!("{e}");
    }
    Ok(host)
}

/// The route match the proxy's route layer attaches: it runs `bench`.
fn route() -> std::sync::Arc<tollgate_proxy::route::Route> {
    static ROUTE: std::sync::OnceLock<std::sync::Arc<tollgate_proxy::route::Route>> =
        std::sync::OnceLock::new();
    ROUTE
        .get_or_init(|| {
            let routes: Vec<tollgate_proxy::route::RouteConfig> =
                yaml_serde::from_str("[{pathPrefix: /, filters: bench}]").expect("bench route");
            tollgate_proxy::route::RouteTable::new(&routes).routes()[0].clone()
        })
        .clone()
}

/// The bench request, routed to the `bench` chain when `set` loads one
/// (the no-filter baseline's route names no chain: naming one that is not
/// loaded fails closed).
fn request(set: &ChainSet) -> Request<body::ProxyBody> {
    let builder = Request::builder();
    let builder = if set.chain("bench").is_some() {
        builder.extension(route())
    } else {
        builder
    };
    builder
        .uri("/api/v1/executions/ml-prod/development/x")
        .header("host", "flyteadmin.flyte.svc")
        .header("user-agent", "bench")
        .header("accept", "application/json")
        .header("x-request-id", "0123456789abcdef")
        .header("x-old", "1")
        .body(body::empty())
        .expect("request")
}

/// Mean time per request through `host`'s chain (request and response
/// heads), over `n` requests after a warm-up.
fn per_request(host: &std::sync::Arc<FilterHost>, n: u32) -> anyhow::Result<Duration> {
    let layer = FiltersLayer::new(host.clone());
    let once = || -> anyhow::Result<()> {
        let set = host.current();
        let Ok((req, run)) = filter_request(&set, request(&set), &layer) else {
            anyhow::bail!("request refused");
        };
        std::hint::black_box(&req);
        let response = Response::builder()
            .header("content-type", "text/plain")
            .header("server", "app")
            .body(body::full("ok"))?;
        let response = match run {
            Some(run) => filter_response(run, response),
            None => response,
        };
        std::hint::black_box(response);
        Ok(())
    };
    for _ in 0..n / 10 {
        once()?;
    }
    let started = Instant::now();
    for _ in 0..n {
        once()?;
    }
    Ok(started.elapsed() / n)
}

/// A body that yields its chunks one frame each, as a stream off the
/// network does.
struct Chunked(VecDeque<Bytes>);

impl Body for Chunked {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

/// A JSON document of exactly `size` bytes (0: no body): records with a
/// `password` and a `token` for json_redact to replace.
fn json_document(size: usize) -> Vec<u8> {
    if size == 0 {
        return Vec::new();
    }
    let mut doc = String::from("[");
    let mut i = 0;
    loop {
        let record = format!(
            r#"{}{{"id":{i},"user":"user-{i}","password":"hunter2","profile":{{"team":"ml","token":"t0k-{i}"}}}}"#,
            if i == 0 { "" } else { "," }
        );
        if doc.len() + record.len() + 1 > size {
            break;
        }
        doc.push_str(&record);
        i += 1;
    }
    while doc.len() + 1 < size {
        doc.push(' ');
    }
    doc.push(']');
    doc.into_bytes()
}

const FRAME: usize = 16 * 1024;

/// Mean time per request through `host`'s chain with a JSON response body
/// of `doc` (streamed in [`FRAME`]s and read to its end), over `n`
/// requests after a warm-up; and the last response body.
fn per_request_with_body(
    rt: &tokio::runtime::Runtime,
    host: &std::sync::Arc<FilterHost>,
    doc: &Bytes,
    n: u32,
) -> anyhow::Result<(Duration, Bytes)> {
    let layer = FiltersLayer::new(host.clone());
    let mut last = Bytes::new();
    let mut once = || -> anyhow::Result<()> {
        let set = host.current();
        let Ok((req, run)) = filter_request(&set, request(&set), &layer) else {
            anyhow::bail!("request refused");
        };
        std::hint::black_box(&req);
        let chunks: VecDeque<Bytes> = (0..doc.len())
            .step_by(FRAME)
            .map(|at| doc.slice(at..(at + FRAME).min(doc.len())))
            .collect();
        let response = Response::builder()
            .header("content-type", "application/json")
            .header("content-length", doc.len())
            .body(Chunked(chunks).boxed_unsync())?;
        let response = match run {
            Some(run) => filter_response(run, response),
            None => response,
        };
        let body = rt
            .block_on(response.into_body().collect())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        last = body.to_bytes();
        Ok(())
    };
    for _ in 0..(n / 10).max(2) {
        once()?;
    }
    let started = Instant::now();
    for _ in 0..n {
        once()?;
    }
    Ok((started.elapsed() / n, last))
}

/// The body-size table: no chain, header_transform, json_redact.
fn body_sizes(dir: &Path, sizes: &[usize], requests: u32) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let headers = r#"{"request": {"set": {"x-env": "prod"}}, "response": {"set": {"cache-control": "no-store"}}}"#;
    let redact = r#"{"fields": ["password", "token"]}"#;
    let chains = [
        host(dir, &[])?,
        host(dir, &[("headers", "header_transform", headers)])?,
        host(dir, &[("redact", "json_redact", redact)])?,
    ];
    println!(
        "\nResponse body size (a JSON document, 16 KiB frames, read to its end), µs per request, mean of 3 interleaved rounds:\n"
    );
    println!(
        "| body | requests per round | no filter | header_transform | added | json_redact | added | json_redact MB/s |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &size in sizes {
        let doc = Bytes::from(json_document(size));
        // Fewer requests for large bodies: about 64 MiB per round.
        let n = ((64 << 20) / size.max(1)).clamp(50, requests as usize) as u32;
        let mut totals = [Duration::ZERO; 3];
        let mut redacted = Bytes::new();
        for _ in 0..3 {
            for (i, h) in chains.iter().enumerate() {
                let (t, last) = per_request_with_body(&rt, h, &doc, n)?;
                totals[i] += t;
                if i == 2 {
                    redacted = last;
                }
            }
        }
        if size > 0 {
            let text = String::from_utf8_lossy(&redacted);
            anyhow::ensure!(
                text.contains("[REDACTED]") && !text.contains("hunter2"),
                "json_redact did not redact the {size}-byte document"
            );
        }
        let [none, headers_t, redact_t] = totals.map(|d| d.as_secs_f64() * 1e6 / 3.0);
        let label = match size {
            0 => "0".to_owned(),
            s if s % (1 << 20) == 0 => format!("{} MiB", s >> 20),
            s if s % 1024 == 0 => format!("{} KiB", s >> 10),
            s => format!("{s} B"),
        };
        println!(
            "| {label} | {n} | {none:.2} | {headers_t:.2} | {:+.2} | {redact_t:.2} | {:+.2} | {} |",
            headers_t - none,
            redact_t - none,
            if size > 0 {
                format!("{:.0}", size as f64 / (redact_t - none).max(0.001))
            } else {
                "–".into()
            }
        );
    }
    Ok(())
}

/// A refusal's status and body, for the error.
async fn refusal(response: Response<body::ProxyBody>) -> String {
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    format!("{status} {}", body.trim())
}

/// Per-request times (request head through the chain, waiting on calls
/// where the filter calls out, then the response head), `n` requests after
/// a warm-up: (mean, p50, p99).
async fn per_request_async(
    host: &std::sync::Arc<FilterHost>,
    n: u32,
) -> anyhow::Result<(Duration, Duration, Duration)> {
    let layer = FiltersLayer::new(host.clone());
    let mut times = Vec::with_capacity(n as usize);
    for i in 0..n + n / 10 {
        let started = Instant::now();
        let set = host.current();
        let mut req = request(&set);
        req.headers_mut().insert(
            "authorization",
            http::HeaderValue::from_static("Bearer good"),
        );
        let forwarded = match begin_request(&set, req, &layer) {
            Ok(Filtered::Ready(f)) => f,
            Ok(Filtered::Waiting(w)) => match w.resume().await {
                Ok(f) => f,
                Err(r) => anyhow::bail!("refused: {}", refusal(*r).await),
            },
            Err(r) => anyhow::bail!("refused: {}", refusal(*r).await),
        };
        let (req, run) = forwarded;
        std::hint::black_box(&req);
        let response = Response::builder()
            .header("content-type", "text/plain")
            .body(body::full("ok"))?;
        let response = match run {
            Some(run) => filter_response(run, response),
            None => response,
        };
        std::hint::black_box(response);
        if i >= n / 10 {
            times.push(started.elapsed());
        }
    }
    Ok(summary(times))
}

/// (mean, p50, p99) of per-request times.
fn summary(mut times: Vec<Duration>) -> (Duration, Duration, Duration) {
    let mean = times.iter().sum::<Duration>() / times.len().max(1) as u32;
    times.sort();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    (mean, at(0.5), at(0.99))
}

/// The call `as_auth` makes, from a pooled hyper client on the same
/// runtime, with no filter: what the call itself costs.
async fn direct_calls(port: u16, n: u32) -> anyhow::Result<(Duration, Duration, Duration)> {
    use hyper_util::client::legacy::Client;
    let client: Client<_, http_body_util::Empty<Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut times = Vec::with_capacity(n as usize);
    for i in 0..n + n / 10 {
        let started = Instant::now();
        let request = Request::get(format!("http://127.0.0.1:{port}/check"))
            .header("authorization", "Bearer good")
            .body(http_body_util::Empty::new())?;
        let response = client.request(request).await?;
        anyhow::ensure!(
            response.status() == 200,
            "auth service: {}",
            response.status()
        );
        std::hint::black_box(response.into_body().collect().await?);
        if i >= n / 10 {
            times.push(started.elapsed());
        }
    }
    Ok(summary(times))
}

/// `--callouts`: no filter, `as_header`, `as_auth` (one call per request).
fn callouts(dir: &Path, n: u32) -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = std::process::Command::new("bash")
        .arg(root.join("filters/third-party/build.sh"))
        .arg(dir)
        .status()?;
    anyhow::ensure!(status.success(), "filters/third-party/build.sh failed");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let auth = tollgate_e2e::proxy::upstream::auth_service().await?;
        let clusters = format!("clusters: {{auth: {{address: '127.0.0.1:{}'}}}}\n", auth.port());
        let none = host(dir, &[])?;
        let header = host_with(dir, "", &[("as-header", "as_header", "x")])?;
        let calls = host_with(dir, &clusters, &[("as-auth", "as_auth", "auth")])?;
        let mut sums = [(Duration::ZERO, Duration::ZERO, Duration::ZERO); 4];
        let mut add = |i: usize, (mean, p50, p99): (Duration, Duration, Duration)| {
            sums[i].0 += mean;
            sums[i].1 += p50;
            sums[i].2 += p99;
        };
        for _ in 0..3 {
            for (i, h) in [&none, &header, &calls].iter().enumerate() {
                add(i, per_request_async(h, n).await?);
            }
            add(3, direct_calls(auth.port(), n).await?);
        }
        let us = |d: Duration| d.as_secs_f64() * 1e6 / 3.0;
        println!("requests per measurement: {n} (x3, interleaved; figures: means of the three)");
        for (label, (mean, p50, p99)) in [
            "no filter",
            "as_header (AssemblyScript SDK, no call)",
            "as_auth (one proxy_http_call, waited on)",
            "the same call from a hyper client alone",
        ]
        .iter()
        .zip(sums)
        {
            println!(
                "{label:<42} mean {:>8.2} µs  p50 {:>8.2} µs  p99 {:>8.2} µs  (+{:.2} µs mean over no filter)",
                us(mean),
                us(p50),
                us(p99),
                us(mean.saturating_sub(sums[0].0))
            );
        }
        println!("auth service requests: {}", auth.requests());
        Ok(())
    })
}

fn main() -> anyhow::Result<()> {
    let arg = |name: &str| std::env::args().skip_while(|a| a != name).nth(1);
    let n: u32 = arg("--requests")
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let sizes: Vec<usize> = arg("--body-sizes")
        .unwrap_or_else(|| "0,1024,65536,1048576".into())
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()?;
    let dir = wasm_dir()?;
    if std::env::args().any(|a| a == "--callouts") {
        return callouts(&dir, n);
    }
    if std::env::args().any(|a| a == "--only-bodies") {
        return body_sizes(&dir, &sizes, n);
    }
    let headers = r#"{"request": {"rename": {"x-old": "x-new"}, "set": {"x-env": "prod"}}, "response": {"set": {"cache-control": "no-store"}, "remove": ["server"]}}"#;
    let none = host(&dir, &[])?;
    let one = host(&dir, &[("headers", "header_transform", headers)])?;
    let three = host(
        &dir,
        &[
            ("headers-1", "header_transform", headers),
            ("headers-2", "header_transform", headers),
            ("headers-3", "header_transform", headers),
        ],
    )?;
    // Interleave the runs so drift hits all three alike.
    let mut results = [Duration::ZERO; 3];
    for _ in 0..3 {
        for (i, h) in [&none, &one, &three].iter().enumerate() {
            results[i] += per_request(h, n)?;
        }
    }
    let [none_t, one_t, three_t] = results.map(|d| d / 3);
    println!("requests per measurement: {n} (x3, interleaved)");
    println!(
        "no filter:      {:>8.2} µs/request",
        none_t.as_secs_f64() * 1e6
    );
    println!(
        "1 filter:       {:>8.2} µs/request  (+{:.2} µs)",
        one_t.as_secs_f64() * 1e6,
        (one_t.saturating_sub(none_t)).as_secs_f64() * 1e6
    );
    println!(
        "3 filters:      {:>8.2} µs/request  (+{:.2} µs)",
        three_t.as_secs_f64() * 1e6,
        (three_t.saturating_sub(none_t)).as_secs_f64() * 1e6
    );

    // Instantiation (pooling allocator) + _initialize + vm_start + configure.
    let set = one.current();
    let filter = set
        .chain("bench")
        .ok_or_else(|| anyhow::anyhow!("no bench chain loaded"))?
        .filters[0]
        .clone();
    let k = 2_000u32;
    let started = Instant::now();
    for _ in 0..k {
        let instance = filter.checkout().map_err(|e| anyhow::anyhow!("{e}"))?;
        drop(instance); // not returned: the next checkout instantiates anew
        // (the pool is empty after its one warm instance is taken)
    }
    println!(
        "instantiate:    {:>8.2} µs (new instance, started and configured)",
        (started.elapsed() / k).as_secs_f64() * 1e6
    );

    // Loop-stop latency with the defaults (50 ms bound, 10 ms ticks).
    let spin = host(&dir, &[("spin", "loop", "{}")])?;
    let layer = FiltersLayer::new(spin.clone());
    let mut worst = Duration::ZERO;
    let mut total = Duration::ZERO;
    for _ in 0..10 {
        let req = Request::builder()
            .uri("/")
            .header("x-fault", "1")
            .body(body::empty())?;
        let started = Instant::now();
        let refused = filter_request(&spin.current(), req, &layer).is_err();
        let took = started.elapsed();
        anyhow::ensure!(refused, "the looping filter was not stopped");
        worst = worst.max(took);
        total += took;
    }
    println!(
        "loop stopped:   {:>8.1} ms mean, {:.1} ms worst (bound 50 ms, tick 10 ms)",
        (total / 10).as_secs_f64() * 1e3,
        worst.as_secs_f64() * 1e3
    );
    if !sizes.is_empty() {
        body_sizes(&dir, &sizes, n)?;
    }
    Ok(())
}
