//! The cost of WASM filters per request, in-process: the request and
//! response heads through no chain, a chain of one filter, and of three,
//! in the same run; plus instantiation and the loop-stop latency.
//!
//! ```text
//! cargo run --release -p tollgate-benches --bin filter-cost [-- --requests 20000]
//! ```
//! It builds the filters with `filters/build.sh` (clang + lld).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use http::{Request, Response};
use tollgate_proxy::body;
use tollgate_proxy::filters::layer::{filter_request, filter_response};
use tollgate_proxy::filters::{FilterHost, FilterMetrics, FiltersConfig, FiltersLayer};

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
    let mut yaml = String::from("maxInstances: 64\nroutes:\n  - pathPrefix: /\n    chain:\n");
    for (name, module, config) in chain {
        yaml.push_str(&format!(
            "      - name: {name}\n        module: {}\n        config: '{config}'\n",
            dir.join(format!("{module}.wasm")).display()
        ));
    }
    if chain.is_empty() {
        yaml = "routes: []\n".into();
    }
    let config =
        FiltersConfig::parse(&yaml, Path::new("bench.yaml")).map_err(anyhow::Error::msg)?;
    let host = FilterHost::start(&config, FilterMetrics::new());
    if let Some(e) = host.status().last_error {
        anyhow::bail!("{e}");
    }
    Ok(host)
}

fn request() -> Request<body::ProxyBody> {
    Request::builder()
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
        let Ok((req, run)) = filter_request(&set, request(), &layer) else {
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

fn main() -> anyhow::Result<()> {
    let n: u32 = std::env::args()
        .skip_while(|a| a != "--requests")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let dir = wasm_dir()?;
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
    let filter = set.routes[0].1.filters[0].clone();
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
    Ok(())
}
