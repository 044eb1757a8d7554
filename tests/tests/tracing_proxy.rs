//! Issue #27, the proxy: W3C trace context through the real
//! `tollgate-proxy` to an app that echoes headers, spans exported over
//! OTLP to a real Jaeger v2 (built from its Go module), and Jaeger
//! stopped mid-run.

use std::time::{Duration, Instant};

use tollgate_e2e::jaeger::{self, Jaeger};
use tollgate_e2e::proxy::client::reqwest as https;
use tollgate_e2e::proxy::upstream;
use tollgate_e2e::proxy::{Pki, Proxy, ProxyConfig};

const PROXY_ID: &str = "spiffe://cluster.local/ns/team-a/sa/workspace";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/team-b/sa/notebook";

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

fn echo_json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn traced_config(app_port: u16, otlp: &str, extra: &str) -> ProxyConfig {
    let mut config = ProxyConfig::new(app_port);
    config.extra = format!(
        "routes:\n- pathPrefix: /echo\n  name: echo\n\
         tracing:\n  otlp: {otlp}\n  sampling: 1.0\n  batchDelayMs: 100\n  exportTimeoutMs: 3000\n{extra}"
    );
    config
}

/// The one header value the echo app saw.
fn seen(echo: &serde_json::Value, name: &str) -> Option<String> {
    match &echo["headers"][name] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(a) => a.first().and_then(|v| v.as_str()).map(str::to_owned),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_reaches_the_app_and_the_spans_reach_jaeger() {
    let jaeger = Jaeger::start().await.unwrap();
    let pki = Pki::new().unwrap();
    let app = upstream::http_app().await.unwrap();
    let proxy = Proxy::start(
        &traced_config(app.port(), &jaeger.otlp_traces_url(), ""),
        &pki.workload(PROXY_ID).unwrap(),
    )
    .await
    .unwrap();
    let me = pki.workload(CLIENT_ID).unwrap();
    let ca = me.ca_pem.clone().unwrap();
    let client = https(Some(&me), &ca, proxy.inbound, false, false).unwrap();
    let url = format!("https://localhost:{}/echo/x", proxy.inbound);

    // With a traceparent: the app sees the same trace, a new parent (the
    // proxy's client span), and the tracestate.
    let r = client
        .get(&url)
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .header("tracestate", "vendor=abc")
        .header("x-request-id", "req-from-client")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "req-from-client");
    let echo = echo_json(&r.text().await.unwrap());
    let traceparent = seen(&echo, "traceparent").expect("the app sees a traceparent");
    let parts: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(parts.len(), 4, "{traceparent}");
    assert_eq!(parts[1], TRACE_ID, "same trace: {traceparent}");
    assert_ne!(parts[2], PARENT_ID, "a new parent span: {traceparent}");
    assert_eq!(parts[3], "01", "sampled, as its parent: {traceparent}");
    assert_eq!(seen(&echo, "tracestate").as_deref(), Some("vendor=abc"));
    assert_eq!(
        seen(&echo, "x-request-id").as_deref(),
        Some("req-from-client")
    );

    // Jaeger holds the proxy's server span (child of the caller's span)
    // and its client span (the app's parent).
    let trace = jaeger
        .wait_for_trace(TRACE_ID, Duration::from_secs(20), |t| {
            jaeger::spans(t).len() >= 2
        })
        .await
        .unwrap();
    let spans = jaeger::spans(&trace);
    let server = spans
        .iter()
        .find(|s| s.kind.as_deref() == Some("server"))
        .unwrap_or_else(|| panic!("no server span: {spans:#?}"));
    let client_span = spans
        .iter()
        .find(|s| s.kind.as_deref() == Some("client"))
        .unwrap_or_else(|| panic!("no client span: {spans:#?}"));
    assert_eq!(server.service, "tollgate-proxy");
    assert_eq!(server.parent.as_deref(), Some(PARENT_ID));
    assert_eq!(server.name, "GET /echo");
    assert_eq!(server.tag("http.route").as_deref(), Some("/echo"));
    assert_eq!(server.tag("http.request.method").as_deref(), Some("GET"));
    assert_eq!(
        server.tag("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        server.tag("tollgate.peer.identity").as_deref(),
        Some(CLIENT_ID)
    );
    assert_eq!(client_span.parent.as_deref(), Some(server.span_id.as_str()));
    assert_eq!(
        client_span.span_id, parts[2],
        "the app's parent is the client span"
    );
    assert_eq!(
        client_span.tag("http.response.status_code").as_deref(),
        Some("200")
    );

    // Without one: a new trace, and an x-request-id the app and the
    // client both see; the access log line carries both IDs.
    let r = client.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let echo = echo_json(&r.text().await.unwrap());
    assert_eq!(
        seen(&echo, "x-request-id").as_deref(),
        Some(request_id.as_str())
    );
    let traceparent = seen(&echo, "traceparent").expect("a new trace is started");
    let new_trace = traceparent.split('-').nth(1).unwrap().to_owned();
    assert_ne!(new_trace, TRACE_ID);
    jaeger
        .wait_for_trace(&new_trace, Duration::from_secs(20), |t| {
            jaeger::spans(t).iter().any(|s| s.parent.is_none())
        })
        .await
        .unwrap();
    let log = proxy.log_text();
    let line = log
        .lines()
        .find(|l| l.contains(&request_id))
        .unwrap_or_else(|| panic!("no access line with {request_id}:\n{log}"));
    assert!(line.contains(&new_trace), "{line}");
    assert!(
        log.contains(&format!("\"trace_id\":\"{TRACE_ID}\"")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_parent_is_honoured_and_tracing_off_passes_context_through() {
    let jaeger = Jaeger::start().await.unwrap();
    let pki = Pki::new().unwrap();
    let app = upstream::http_app().await.unwrap();
    let me = pki.workload(CLIENT_ID).unwrap();
    let ca = me.ca_pem.clone().unwrap();

    // Sampling 100 %, but the parent says "not sampled": nothing exported,
    // the context still goes on (flag 00).
    let proxy = Proxy::start(
        &traced_config(app.port(), &jaeger.otlp_traces_url(), ""),
        &pki.workload(PROXY_ID).unwrap(),
    )
    .await
    .unwrap();
    let client = https(Some(&me), &ca, proxy.inbound, false, false).unwrap();
    let unsampled = "5bf92f3577b34da6a3ce929d0e0e4736";
    let r = client
        .get(format!("https://localhost:{}/echo", proxy.inbound))
        .header("traceparent", format!("00-{unsampled}-{PARENT_ID}-00"))
        .send()
        .await
        .unwrap();
    let echo = echo_json(&r.text().await.unwrap());
    let tp = seen(&echo, "traceparent").unwrap();
    assert!(
        tp.starts_with(&format!("00-{unsampled}-")) && tp.ends_with("-00"),
        "{tp}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(jaeger.trace(unsampled).await.unwrap().is_none());
    drop(proxy);

    // Tracing off: the header reaches the app untouched; the request
    // still gets an ID.
    let proxy = Proxy::start(
        &ProxyConfig::new(app.port()),
        &pki.workload(PROXY_ID).unwrap(),
    )
    .await
    .unwrap();
    let client = https(Some(&me), &ca, proxy.inbound, false, false).unwrap();
    let incoming = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    let r = client
        .get(format!("https://localhost:{}/echo", proxy.inbound))
        .header("traceparent", &incoming)
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("x-request-id"));
    let echo = echo_json(&r.text().await.unwrap());
    assert_eq!(seen(&echo, "traceparent"), Some(incoming));
    assert!(seen(&echo, "x-request-id").is_some());
}

/// Jaeger killed under load: requests keep flowing and stay fast, the
/// spans that cannot be delivered are counted as dropped. (The p99
/// against tracing off is measured in benches/proxy-tracing.sh, not here:
/// too noisy for a test on a shared 2-core machine.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jaeger_stopped_mid_run_drops_and_counts_spans_without_blocking() {
    let mut jaeger = Jaeger::start().await.unwrap();
    let pki = Pki::new().unwrap();
    let app = upstream::http_app().await.unwrap();
    let proxy = Proxy::start(
        &traced_config(
            app.port(),
            &jaeger.otlp_traces_url(),
            "  maxQueuedSpans: 64\n  maxBatchSpans: 16\n",
        ),
        &pki.workload(PROXY_ID).unwrap(),
    )
    .await
    .unwrap();
    let me = pki.workload(CLIENT_ID).unwrap();
    let ca = me.ca_pem.clone().unwrap();
    let client = https(Some(&me), &ca, proxy.inbound, false, false).unwrap();
    let url = format!("https://localhost:{}/echo", proxy.inbound);
    for _ in 0..20 {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
    }
    let exported = wait_metric(&proxy, "tollgate_trace_spans_exported_total", |v| v >= 40.0).await;
    assert!(exported >= 40.0);

    jaeger.stop();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for _ in 0..400 {
        let t = Instant::now();
        assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
        slowest = slowest.max(t.elapsed());
    }
    let elapsed = started.elapsed();
    // Never waiting on the collector: no request took anywhere near the
    // export timeout (3 s).
    assert!(slowest < Duration::from_millis(1500), "slowest {slowest:?}");
    let dropped = wait_metric(&proxy, "tollgate_trace_spans_dropped_total", |v| v >= 100.0).await;
    eprintln!(
        "400 requests with Jaeger down in {elapsed:?}, slowest {slowest:?}; dropped {dropped}"
    );

    // Back: spans flow again.
    jaeger.restart().await.unwrap();
    let before = proxy
        .metric("tollgate_trace_spans_exported_total")
        .await
        .unwrap();
    let mut delivered = false;
    for _ in 0..50 {
        client.get(&url).send().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if proxy
            .metric("tollgate_trace_spans_exported_total")
            .await
            .unwrap()
            > before
        {
            delivered = true;
            break;
        }
    }
    assert!(delivered, "no span exported after Jaeger came back");
}

async fn wait_metric(proxy: &Proxy, name: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let started = Instant::now();
    loop {
        let v = proxy.metric(name).await.unwrap_or(0.0);
        if ok(v) {
            return v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{name} stayed at {v}:\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
