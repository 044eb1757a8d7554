//! Tests against the real filters in `filters/`, compiled by
//! `filters/build.sh` (cached by source hash, so reruns are instant).

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tower::{Layer, ServiceExt};

use super::config::FiltersConfig;
use super::instance::Phase;
use super::layer::FiltersLayer;
use super::metrics::FilterMetrics;
use super::properties::{Claims, FilterClaims};
use super::reload::FilterHost;
use crate::body::{self, ProxyBody};

/// Builds the filters once per test process, under a lock so parallel
/// test binaries build once.
pub fn wasm_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let mut root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        if !root.join("filters/build.sh").exists() {
            // Compiled from elsewhere: this file is proxy/src/filters/tests.rs.
            if let Some(r) = Path::new(file!()).ancestors().nth(4) {
                root = r.to_owned();
            }
        }
        let out = std::env::var_os("CARGO_TARGET_DIR")
            .map(|d| root.join(d))
            .unwrap_or_else(|| root.join("target"))
            .join("filters");
        std::fs::create_dir_all(&out).expect("creating the filters output directory");
        let lock = std::fs::File::create(out.join(".lock")).expect("creating the build lock");
        lock.lock().expect("locking the filters build");
        let status = std::process::Command::new("bash")
            .arg(root.join("filters/build.sh"))
            .arg(&out)
            .status()
            .expect("running filters/build.sh (needs: apt-get install -y clang lld)");
        assert!(status.success(), "filters/build.sh failed");
        out
    })
    .clone()
}

pub fn wasm(name: &str) -> PathBuf {
    wasm_dir().join(format!("{name}.wasm"))
}

fn host(yaml: &str) -> (Arc<FilterHost>, FilterMetrics) {
    let config = FiltersConfig::parse(yaml, Path::new("test.yaml")).expect("test config parses");
    let metrics = FilterMetrics::new();
    let host = FilterHost::start(&config, metrics.clone(), None);
    assert_eq!(host.status().last_error, None, "load failed");
    (host, metrics)
}

fn route(filters: &str) -> String {
    format!(
        "maxInstances: 16\nmemoryLimitBytes: 4194304\ncallbackTimeoutMs: 50\nepochTickMs: 10\nchains:\n  main:\n{filters}"
    )
}

fn filter(name: &str, module: &str, failure: &str, config: &str) -> String {
    format!(
        "      - name: {name}\n        module: {}\n        failure: {failure}\n        config: {config}\n",
        wasm(module).display()
    )
}

/// Sends `request` through the layer to an upstream that echoes the
/// request headers it got as `x-upstream-saw-<name>` response headers and
/// answers with `upstream`.
async fn through(
    host: &Arc<FilterHost>,
    request: Request<ProxyBody>,
    upstream: impl Fn() -> Response<ProxyBody> + Clone + Send + Sync + 'static,
) -> Response<ProxyBody> {
    let inner = tower::service_fn(move |req: Request<ProxyBody>| {
        let upstream = upstream.clone();
        async move {
            let mut response = upstream();
            for (k, v) in req.headers() {
                if let Ok(name) =
                    http::HeaderName::from_bytes(format!("x-upstream-saw-{k}").as_bytes())
                {
                    response.headers_mut().append(name, v.clone());
                }
            }
            response.headers_mut().insert(
                "x-upstream-path",
                http::HeaderValue::from_str(req.uri().path()).unwrap(),
            );
            Ok::<_, Infallible>(response)
        }
    });
    FiltersLayer::new(host.clone())
        .layer(inner)
        .oneshot(request)
        .await
        .unwrap()
}

/// A request whose route match (`route.rs`) names the chain `main`.
fn get(path: &str) -> http::request::Builder {
    let routes: Vec<crate::route::RouteConfig> =
        yaml_serde::from_str("[{pathPrefix: /, filters: main}]").unwrap();
    let table = crate::route::RouteTable::new(&routes);
    Request::builder()
        .uri(path)
        .header("host", "app.local")
        .extension(table.routes()[0].clone())
}

fn ok() -> Response<ProxyBody> {
    Response::new(body::full("ok"))
}

async fn text(response: Response<ProxyBody>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn header_transform_applies_its_config() {
    let config = r#"'{"request": {"rename": {"x-old": "x-new"}, "remove": ["x-drop"], "set": {"x-env": "prod"}, "add": {"x-via": "tollgate"}}, "response": {"set": {"cache-control": "no-store"}, "remove": ["server"]}}'"#;
    let (host, metrics) = host(&route(&filter(
        "headers",
        "header_transform",
        "closed",
        config,
    )));
    let request = get("/api/x")
        .header("x-old", "v1")
        .header("x-drop", "gone")
        .header("x-env", "dev")
        .header("x-via", "client")
        .body(body::empty())
        .unwrap();
    let response = through(&host, request, || {
        Response::builder()
            .header("server", "app")
            .body(body::full("ok"))
            .unwrap()
    })
    .await;
    let h = response.headers();
    assert_eq!(h["x-upstream-saw-x-new"], "v1");
    assert!(h.get("x-upstream-saw-x-old").is_none());
    assert!(h.get("x-upstream-saw-x-drop").is_none());
    assert_eq!(h["x-upstream-saw-x-env"], "prod");
    let via: Vec<_> = h.get_all("x-upstream-saw-x-via").iter().collect();
    assert_eq!(via, ["client", "tollgate"]);
    assert_eq!(h["cache-control"], "no-store");
    assert!(h.get("server").is_none());
    assert_eq!(text(response).await, "ok");
    // gRPC and WebSocket handshakes are requests like others.
    let grpc = get("/pkg.Svc/Method")
        .method("POST")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body::full(vec![0u8, 0, 0, 0, 0]))
        .unwrap();
    let response = through(&host, grpc, ok).await;
    assert_eq!(response.headers()["x-upstream-saw-x-env"], "prod");
    let ws = get("/ws")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(body::empty())
        .unwrap();
    let response = through(&host, ws, ok).await;
    assert_eq!(response.headers()["x-upstream-saw-x-env"], "prod");
    assert_eq!(response.headers()["x-upstream-saw-upgrade"], "websocket");
    assert!(
        metrics
            .encode()
            .contains("tollgate_filter_duration_seconds_count{filter=\"headers\"} 3")
    );
}

struct TestClaims(serde_json::Map<String, serde_json::Value>);
impl Claims for TestClaims {
    fn claim(&self, name: &str) -> Option<&serde_json::Value> {
        self.0.get(name)
    }
    fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(self.0.clone())
    }
}

fn with_team(mut builder: http::request::Builder, team: &str) -> http::request::Builder {
    let mut claims = serde_json::Map::new();
    claims.insert("team".into(), team.into());
    claims.insert("sub".into(), "alice".into());
    if let Some(ext) = builder.extensions_mut() {
        ext.insert(FilterClaims(Arc::new(TestClaims(claims))));
    }
    builder
}

#[tokio::test]
async fn flyte_tenant_admits_and_rejects() {
    let config = r#"'{"teams": {"ml": ["ml-research", "ml-prod"], "platform": ["*"]}}'"#;
    let (host, _) = host(&route(&filter("tenant", "flyte_tenant", "closed", config)));

    // REST path, project of the team: admitted, team header set (a
    // client-sent one replaced).
    let request = with_team(get("/api/v1/executions/ml-prod/development/x"), "ml")
        .header("x-tollgate-team", "spoofed")
        .body(body::empty())
        .unwrap();
    let response = through(&host, request, ok).await;
    assert_eq!(response.status(), StatusCode::OK);
    let teams: Vec<_> = response
        .headers()
        .get_all("x-upstream-saw-x-tollgate-team")
        .iter()
        .collect();
    assert_eq!(teams, ["ml"]);

    // Another team's project: 403.
    let request = with_team(get("/api/v1/executions/finance/development/x"), "ml")
        .body(body::empty())
        .unwrap();
    let response = through(&host, request, ok).await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        response.headers()["x-tollgate-reason"],
        "flyte_tenant_project_denied"
    );
    assert_eq!(
        text(response).await,
        "project finance does not belong to team ml\n"
    );

    // gRPC with project metadata: PERMISSION_DENIED (7), trailers-only.
    let request = with_team(get("/flyteidl.service.AdminService/CreateExecution"), "ml")
        .method("POST")
        .header("content-type", "application/grpc")
        .header("project", "finance")
        .body(body::full(vec![0u8; 5]))
        .unwrap();
    let response = through(&host, request, ok).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["grpc-status"], "7");
    assert_eq!(response.headers()["content-type"], "application/grpc");

    // gRPC, allowed project; a wildcard team.
    for (team, project) in [("ml", "ml-research"), ("platform", "anything")] {
        let request = with_team(get("/flyteidl.service.AdminService/CreateExecution"), team)
            .method("POST")
            .header("content-type", "application/grpc")
            .header("project", project)
            .body(body::full(vec![0u8; 5]))
            .unwrap();
        let response = through(&host, request, ok).await;
        assert!(
            response.headers().get("grpc-status").is_none(),
            "{team}/{project}"
        );
        assert_eq!(response.headers()["x-upstream-saw-x-tollgate-team"], team);
    }

    // No verified claim: 403.
    let response = through(
        &host,
        get("/api/v1/projects/ml-prod").body(body::empty()).unwrap(),
        ok,
    )
    .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        response.headers()["x-tollgate-reason"],
        "flyte_tenant_no_team"
    );
}

#[tokio::test]
async fn json_redact_rewrites_a_streamed_body() {
    let config = r#"'{"fields": ["password", "token"]}'"#;
    let (host, _) = host(&route(&filter("redact", "json_redact", "closed", config)));
    let chunks = [
        r#"{"user": "alice", "pass"#,
        r#"word": "hunter2", "nested": {"token": {"a": [1,2]}, "keep": "x\"y"},"#,
        r#" "list": [{"password": null}]}"#,
    ];
    let upstream = move || {
        let frames: Vec<Result<Frame<Bytes>, tower::BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        Response::builder()
            .header("content-type", "application/json")
            .header("content-length", "999")
            .body(StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync())
            .unwrap()
    };
    let response = through(
        &host,
        get("/users/1").body(body::empty()).unwrap(),
        upstream,
    )
    .await;
    assert!(response.headers().get("content-length").is_none());
    assert_eq!(
        text(response).await,
        r#"{"user":"alice","password":"[REDACTED]","nested":{"token":"[REDACTED]","keep":"x\"y"},"list":[{"password":"[REDACTED]"}]}"#
    );
    // Not JSON: streamed through untouched.
    let response = through(&host, get("/page").body(body::empty()).unwrap(), || {
        Response::builder()
            .header("content-type", "text/plain")
            .body(body::full("password: hunter2"))
            .unwrap()
    })
    .await;
    assert_eq!(text(response).await, "password: hunter2");
}

/// A route naming a chain the current load lacks (a reloaded `file` that
/// dropped it) fails closed; a route naming none, or no route, passes.
#[tokio::test]
async fn a_route_whose_chain_is_not_loaded_fails_closed() {
    let yaml = route(&filter(
        "headers",
        "header_transform",
        "open",
        r#"'{"response": {"set": {"x-filtered": "yes"}}}'"#,
    ));
    let (host, _) = host(&yaml);
    let routes: Vec<crate::route::RouteConfig> =
        yaml_serde::from_str("[{pathPrefix: /gone, filters: gone}, {pathPrefix: /plain}]").unwrap();
    let table = crate::route::RouteTable::new(&routes);
    let at = |path: &str| {
        let mut request = Request::builder().uri(path).body(body::empty()).unwrap();
        if let Some(route) = table.find(path) {
            request.extensions_mut().insert(route.clone());
        }
        request
    };
    let response = through(&host, at("/gone/x"), ok).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["x-tollgate-reason"], "filter-failed");
    for path in ["/plain", "/unrouted"] {
        let response = through(&host, at(path), ok).await;
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        assert!(!response.headers().contains_key("x-filtered"), "{path}");
    }
}

#[tokio::test]
async fn a_looping_filter_is_stopped_within_its_bound() {
    let yaml = route(&(filter("spin", "loop", "closed", "'{}'")));
    let (host, metrics) = host(&yaml);
    let started = Instant::now();
    let response = through(
        &host,
        get("/").header("x-fault", "1").body(body::empty()).unwrap(),
        ok,
    )
    .await;
    let took = started.elapsed();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["x-tollgate-reason"], "filter-failed");
    assert!(took < Duration::from_millis(200), "stopped after {took:?}");
    assert_eq!(
        metrics.failures_of("spin", "timeout", Phase::RequestHeaders),
        1
    );
    // Other requests keep flowing through a fresh instance.
    let response = through(&host, get("/").body(body::empty()).unwrap(), ok).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["x-upstream-saw-x-fault-instance-requests"],
        "1"
    );
    eprintln!("loop stopped after {took:?}");
}

#[tokio::test]
async fn trapping_and_oom_filters_fail_closed_or_skip_open() {
    let yaml = route(&format!(
        "{}{}{}{}",
        filter("trap-open", "trap", "open", "'{}'"),
        filter("oom-open", "oom", "open", "'{}'"),
        filter(
            "headers",
            "header_transform",
            "closed",
            r#"'{"request": {"set": {"x-after": "yes"}}}'"#
        ),
        filter("trap-closed", "trap", "closed", "'{}'"),
    ));
    let (host, metrics) = host(&yaml);
    // Warm: each instance counts its requests.
    for n in 1..=2 {
        let response = through(&host, get("/").body(body::empty()).unwrap(), ok).await;
        assert_eq!(response.status(), StatusCode::OK);
        let seen: Vec<_> = response
            .headers()
            .get_all("x-upstream-saw-x-fault-instance-requests")
            .iter()
            .collect();
        assert_eq!(seen, [n.to_string().as_str()]);
    }
    // Faulting: the open ones are skipped, the closed one fails it.
    let response = through(
        &host,
        get("/").header("x-fault", "1").body(body::empty()).unwrap(),
        ok,
    )
    .await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        text(response)
            .await
            .contains("filter trap-closed failed: trapped")
    );
    assert_eq!(
        metrics.failures_of("trap-open", "trap", Phase::RequestHeaders),
        1
    );
    assert_eq!(
        metrics.failures_of("oom-open", "oom", Phase::RequestHeaders),
        1
    );
    assert_eq!(
        metrics.failures_of("trap-closed", "trap", Phase::RequestHeaders),
        1
    );
    // The trapped instances were discarded: fresh ones count from 1.
    let response = through(&host, get("/").body(body::empty()).unwrap(), ok).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-upstream-saw-x-after"], "yes");
    let text = metrics.encode();
    assert!(
        text.contains(
            "tollgate_filter_failures_total{filter=\"oom-open\",reason=\"oom\",phase=\"request_headers\"} 1"
        ),
        "{text}"
    );

    // gRPC requests failing closed get UNAVAILABLE.
    let request = get("/pkg.Svc/M")
        .method("POST")
        .header("content-type", "application/grpc")
        .header("x-fault", "1")
        .body(body::full(vec![0u8; 5]))
        .unwrap();
    let response = through(&host, request, ok).await;
    assert_eq!(response.headers()["grpc-status"], "14");
}

#[tokio::test]
async fn out_of_bounds_pointers_get_invalid_memory_access() {
    let (host, _) = host(&route(&filter("oob", "oob", "closed", "'{}'")));
    let response = through(&host, get("/").body(body::empty()).unwrap(), ok).await;
    let h = response.headers();
    for call in [
        "log",
        "pairs",
        "size",
        "replace",
        "set-pairs",
        "property",
        "time",
    ] {
        assert_eq!(
            h[format!("x-upstream-saw-x-status-{call}").as_str()],
            "06",
            "{call}"
        );
    }
    assert_eq!(h["x-upstream-saw-x-status-bad-map"], "02");
}

/// Guest metrics and shared data are capped per filter: past a cap the
/// call gets INTERNAL_FAILURE (10), counted, and the request goes on.
#[tokio::test]
async fn guest_metrics_and_shared_data_are_capped_per_filter() {
    let yaml = format!(
        "maxGuestMetrics: 2\nmaxSharedDataKeys: 2\nmaxSharedDataValueBytes: 100\n{}",
        route(&filter("caps", "caps", "closed", "'{}'"))
    );
    let (host, metrics) = host(&yaml);
    let send = |headers: &[(&str, &str)]| {
        let mut request = get("/");
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        through(&host, request.body(body::empty()).unwrap(), ok)
    };
    let status = |r: &Response<ProxyBody>, call: &str| {
        r.headers()[format!("x-upstream-saw-x-status-{call}").as_str()]
            .to_str()
            .unwrap()
            .to_owned()
    };
    for name in ["a", "b", "a"] {
        let r = send(&[("x-metric", name)]).await;
        assert_eq!(
            status(&r, "metric"),
            "00",
            "{name}: defined, or found again"
        );
    }
    let r = send(&[("x-metric", "c")]).await;
    assert_eq!(r.status(), 200, "the request goes on");
    assert_eq!(status(&r, "metric"), "10", "a third metric");
    for key in ["k1", "k2", "k1"] {
        let r = send(&[("x-key", key), ("x-size", "100")]).await;
        assert_eq!(status(&r, "set"), "00", "{key}");
    }
    let r = send(&[("x-key", "k3"), ("x-size", "1")]).await;
    assert_eq!(status(&r, "set"), "10", "a third key");
    let r = send(&[("x-key", "k1"), ("x-size", "101")]).await;
    assert_eq!(status(&r, "set"), "10", "a value over the cap");
    assert_eq!(metrics.failures_of("caps", "metric-limit", Phase::Limit), 1);
    assert_eq!(
        metrics.failures_of("caps", "shared-data-limit", Phase::Limit),
        2
    );
}

#[tokio::test]
async fn reload_swaps_and_a_corrupt_module_keeps_the_previous_chain() {
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("f.wasm");
    std::fs::copy(wasm("header_transform"), &module).unwrap();
    let cfg = dir.path().join("filters.yaml");
    let write_cfg = |value: &str| {
        std::fs::write(
            &cfg,
            format!(
                "maxInstances: 16\nchains:\n  main:\n      - name: h\n        module: {}\n        config: '{{\"request\": {{\"set\": {{\"x-v\": \"{value}\"}}}}}}'\n",
                module.display()
            ),
        )
        .unwrap();
    };
    write_cfg("1");
    let (host, _) = host(&format!("file: {}\n", cfg.display()));
    let saw = |host: Arc<FilterHost>| async move {
        let r = through(&host, get("/").body(body::empty()).unwrap(), ok).await;
        (
            r.status(),
            r.headers()
                .get("x-upstream-saw-x-v")
                .map(|v| v.to_str().unwrap().to_owned()),
        )
    };
    assert_eq!(saw(host.clone()).await, (StatusCode::OK, Some("1".into())));
    assert_eq!(host.reload(), Ok(false));

    // Config change: swapped.
    write_cfg("2");
    assert_eq!(host.reload(), Ok(true));
    assert_eq!(saw(host.clone()).await, (StatusCode::OK, Some("2".into())));
    let generation = host.status().generation;

    // Corrupt module: previous chain kept, error reported.
    std::fs::write(&module, b"\0asm\x01\0\0\0garbage").unwrap();
    let err = host.reload().unwrap_err();
    assert!(err.contains("compiling"), "{err}");
    let status = host.status();
    assert_eq!(status.generation, generation);
    assert!(status.last_error.unwrap().contains("f.wasm"));
    assert_eq!(saw(host.clone()).await, (StatusCode::OK, Some("2".into())));

    // A module that refuses its configuration: the same.
    std::fs::copy(wasm("json_redact"), &module).unwrap();
    let err = host.reload().unwrap_err();
    assert!(err.contains("configuration refused"), "{err}");

    // Fixed: swapped again, error cleared.
    std::fs::copy(wasm("header_transform"), &module).unwrap();
    assert_eq!(host.reload(), Ok(true));
    assert_eq!(host.status().last_error, None);
}

#[test]
fn a_poisoned_run_fails_closed_on_the_response() {
    // Issue 28: when a run's lock was poisoned, the response skipped the
    // filters, `failure: closed` ones included.
    use super::layer::{filter_request, filter_response};
    for (failure, expected) in [
        ("closed", StatusCode::SERVICE_UNAVAILABLE),
        ("open", StatusCode::OK),
    ] {
        let (host, _) = host(&route(&filter(
            "headers",
            "header_transform",
            failure,
            r#"'{"response": {"set": {"x-filtered": "yes"}}}'"#,
        )));
        let layer = FiltersLayer::new(host.clone());
        let request = get("/").body(body::empty()).unwrap();
        let Ok((_, Some(run))) = filter_request(&host.current(), request, &layer) else {
            panic!("no run");
        };
        let poisoner = run.clone();
        let _ = std::thread::spawn(move || {
            let _guard = poisoner.lock();
            panic!("poisoning the run on purpose");
        })
        .join();
        assert!(run.is_poisoned());
        let response = filter_response(run, ok());
        assert_eq!(response.status(), expected, "failure: {failure}");
        if failure == "closed" {
            assert_eq!(response.headers()["x-tollgate-reason"], "filter-failed");
        }
    }
}

#[test]
fn swapping_under_load_fails_no_request() {
    use super::layer::{filter_request, filter_response};
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("f.wasm");
    std::fs::copy(wasm("header_transform"), &module).unwrap();
    let yaml = format!(
        "maxInstances: 64\nchains:\n  main:\n      - name: h\n        module: {}\n        config: '{{\"request\": {{\"set\": {{\"x-v\": \"a\"}}}}}}'\n",
        module.display()
    );
    let (host, metrics) = host(&yaml);
    let stop = Arc::new(AtomicBool::new(false));
    let layer = FiltersLayer::new(host.clone());
    let workers: Vec<_> = (0..3)
        .map(|_| {
            let host = host.clone();
            let stop = stop.clone();
            let layer = layer.clone();
            std::thread::spawn(move || {
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let set = host.current();
                    let request = get("/").body(body::empty()).unwrap();
                    let (forwarded, run) = match filter_request(&set, request, &layer) {
                        Ok(forwarded) => forwarded,
                        Err(refused) => panic!(
                            "request refused during a swap: {refused:?}\n{}",
                            host.metrics().encode()
                        ),
                    };
                    assert_eq!(forwarded.headers()["x-v"], "a");
                    let response = filter_response(run.unwrap(), ok());
                    assert_eq!(response.status(), StatusCode::OK);
                    n += 1;
                }
                n
            })
        })
        .collect();
    for i in 0..6 {
        let src = if i % 2 == 0 {
            "json_redact"
        } else {
            "header_transform"
        };
        // json_redact refuses this config: those swaps fail and keep the chain.
        std::fs::copy(wasm(src), &module).unwrap();
        let _ = host.reload();
        std::thread::sleep(Duration::from_millis(30));
    }
    stop.store(true, Ordering::Relaxed);
    let total: u32 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(total > 0);
    assert!(
        !metrics.encode().contains("filter_failures_total{"),
        "{}",
        metrics.encode()
    );
}

#[test]
fn abi_0_2_0_modules_load_and_unknown_abis_do_not() {
    let runtime = super::module::Runtime::new(super::config::EngineLimits {
        memory_limit_bytes: 4 << 20,
        max_instances: 4,
        epoch_tick_ms: 10,
    })
    .unwrap();
    let bytes = std::fs::read(wasm("header_transform")).unwrap();
    assert!(runtime.prepare(&bytes, None).is_ok());
    let sha = super::module::sha256_hex(&bytes);
    assert!(runtime.prepare(&bytes, Some(&sha)).is_ok());
    let wrong = "0".repeat(64);
    assert!(
        runtime
            .prepare(&bytes, Some(&wrong))
            .unwrap_err()
            .contains("expected")
    );
    // Rename the marker export in the binary: 0.2.1 → 0.2.0 stays accepted,
    // 0.1.0 is refused with a clear message.
    let swap = |from: &[u8], to: &[u8]| {
        let mut b = bytes.clone();
        let at = b.windows(from.len()).position(|w| w == from).unwrap();
        b[at..at + from.len()].copy_from_slice(to);
        b
    };
    assert!(
        runtime
            .prepare(
                &swap(b"proxy_abi_version_0_2_1", b"proxy_abi_version_0_2_0"),
                None
            )
            .is_ok()
    );
    let err = runtime
        .prepare(
            &swap(b"proxy_abi_version_0_2_1", b"proxy_abi_version_0_1_0"),
            None,
        )
        .unwrap_err();
    assert!(
        err.contains("unsupported ABI proxy_abi_version_0_1_0"),
        "{err}"
    );
}

/// `plugin_identity` with `rootId`, `vmId` and `config` (issue #21).
fn identity_filter(name: &str, failure: &str, root_id: &str, config: &str) -> String {
    format!(
        "{}        rootId: {root_id:?}\n        vmId: vm-7\n",
        filter(name, "plugin_identity", failure, config)
    )
}

#[tokio::test]
async fn root_id_vm_id_and_name_are_answered_as_envoy_does() {
    let yaml = route(&identity_filter("ident", "closed", "as_header", "ok"));
    let (host, _) = host(&yaml);
    let response = through(
        &host,
        get("/")
            .header("user-agent", "t/1")
            .body(body::empty())
            .unwrap(),
        ok,
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let h = response.headers();
    assert_eq!(h["x-upstream-saw-x-plugin-name"], "ident");
    assert_eq!(h["x-upstream-saw-x-plugin-root-id"], "as_header");
    assert_eq!(h["x-upstream-saw-x-plugin-vm-id"], "vm-7");
    assert_eq!(h["x-upstream-saw-x-request-useragent"], "t/1");
    // Without a connection there is no TLS version: NOT_FOUND, no header.
    assert!(h.get("x-upstream-saw-x-connection-tls-version").is_none());

    // Envoy's defaults: an empty root id and VM id, still answered.
    let yaml = route(&filter("ident", "plugin_identity", "closed", "ok"));
    let (defaults, _) = self::host(&yaml);
    let response = through(&defaults, get("/").body(body::empty()).unwrap(), ok).await;
    assert_eq!(response.headers()["x-upstream-saw-x-plugin-root-id"], "");
    assert_eq!(response.headers()["x-upstream-saw-x-plugin-vm-id"], "");
}

/// Issue #21: a filter whose root context could not be created (as the
/// AssemblyScript SDK does with a root id it does not know: proc_exit in
/// proxy_on_context_create) failed its first load; every request got a
/// 503 naming "filters", and `tollgate_filter_failures_total` stayed 0.
#[tokio::test]
async fn a_filter_failing_its_first_start_is_named_and_counted_per_request() {
    for (root_id, reason, phase) in [
        ("exit-on-root-create", "proc-exit", Phase::RootContextCreate),
        ("trap-on-root-create", "trap", Phase::RootContextCreate),
        ("refuse-vm-start", "configure", Phase::VmStart),
    ] {
        let yaml = route(&identity_filter("as-filter", "closed", root_id, "ok"));
        let config = FiltersConfig::parse(&yaml, Path::new("t.yaml")).unwrap();
        let metrics = FilterMetrics::new();
        let host = FilterHost::start(&config, metrics.clone(), None);
        let error = host.status().last_error.expect("the load fails");
        assert!(error.contains("\"as-filter\""), "{error}");
        assert!(error.contains(&format!("(in {phase})")), "{error}");
        for n in 1..=3 {
            let response = through(&host, get("/").body(body::empty()).unwrap(), ok).await;
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()["x-tollgate-reason"], "filter-failed");
            let body = text(response).await;
            assert!(
                body.starts_with("filter as-filter failed"),
                "{root_id}: {body}"
            );
            assert_eq!(
                metrics.failures_of("as-filter", reason, phase),
                n,
                "{root_id}"
            );
        }
        let text = metrics.encode();
        assert!(
            text.contains(&format!(
                "tollgate_filter_failures_total{{filter=\"as-filter\",reason=\"{reason}\",phase=\"{phase}\"}} 3"
            )),
            "{text}"
        );
    }
    // Open: the request passes, and the failure still counts.
    let yaml = route(&identity_filter(
        "as-open",
        "open",
        "exit-on-root-create",
        "ok",
    ));
    let config = FiltersConfig::parse(&yaml, Path::new("t.yaml")).unwrap();
    let metrics = FilterMetrics::new();
    let host = FilterHost::start(&config, metrics.clone(), None);
    let response = through(&host, get("/").body(body::empty()).unwrap(), ok).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        metrics.failures_of("as-open", "proc-exit", Phase::RootContextCreate),
        1
    );
}

#[tokio::test]
async fn a_stream_context_that_cannot_be_created_is_counted_in_its_phase() {
    let yaml = route(&identity_filter(
        "ctx",
        "closed",
        "exit-on-context-create",
        "ok",
    ));
    let (host, metrics) = host(&yaml);
    for n in 1..=2 {
        let response = through(&host, get("/").body(body::empty()).unwrap(), ok).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            text(response)
                .await
                .contains("filter ctx failed: called proc_exit(3)")
        );
        assert_eq!(
            metrics.failures_of("ctx", "proc-exit", Phase::ContextCreate),
            n
        );
    }
}

/// Issue #21: `--check` accepted a configuration the filter refuses at
/// proxy_on_configure. It now starts every filter with its configuration.
#[test]
fn check_starts_each_filter_with_its_configuration() {
    let section = |root_id: &str, config: &str| -> serde_json::Value {
        let yaml = route(&identity_filter("as-check", "closed", root_id, config));
        yaml_serde::from_str(&yaml).unwrap()
    };
    assert_eq!(super::check_section(&section("as_header", "ok")), Ok(()));
    let (path, message) = super::check_section(&section("as_header", "refuse")).unwrap_err();
    assert_eq!(path, "filters.chains.main[0]");
    assert!(message.contains("filter \"as-check\""), "{message}");
    assert!(
        message.contains("proxy_on_configure returned false (in configure)"),
        "{message}"
    );
    let (_, message) = super::check_section(&section("exit-on-root-create", "ok")).unwrap_err();
    assert!(
        message.contains("called proc_exit(255) (in root_context_create)"),
        "{message}"
    );
    // A module that is not there is named too.
    let missing: serde_json::Value =
        yaml_serde::from_str("chains: {main: [{name: gone, module: /nonexistent/gone.wasm}]}")
            .unwrap();
    let (path, message) = super::check_section(&missing).unwrap_err();
    assert_eq!(path, "filters.chains.main[0]");
    assert!(message.contains("\"gone\""), "{message}");
}

/// Issue #21: `proxy_set_tick_period_milliseconds` was UNIMPLEMENTED. The
/// root context now gets `proxy_on_tick`, no more often than
/// `minTickPeriodMs`, and request instances see what it did through
/// shared data.
#[tokio::test]
async fn ticks_reach_the_root_context_bounded_by_the_minimum_period() {
    let yaml = format!(
        "minTickPeriodMs: 50\n{}",
        route(&filter("ticker", "ticker", "closed", r#"'{"tickMs": 1}'"#))
    );
    let (host, metrics) = host(&yaml);
    let ticks = async || -> u64 {
        let response = through(&host, get("/").body(body::empty()).unwrap(), ok).await;
        assert_eq!(response.status(), StatusCode::OK);
        response.headers()["x-upstream-saw-x-ticks"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let started = Instant::now();
    let first = ticks().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let later = ticks().await;
    let elapsed = started.elapsed();
    let ran = later - first;
    // Asked for every 1 ms; granted every 50 ms at most.
    let most = elapsed.as_millis() as u64 / 50 + 1;
    assert!(ran >= 2, "{ran} ticks in {elapsed:?}");
    assert!(
        ran <= most,
        "{ran} ticks in {elapsed:?}: more than one per 50 ms"
    );
    assert!(!metrics.encode().contains("filter_failures_total{"));
    // The ticking instance serves no request: the pool's instance does.
    assert!(host.current().chains["main"].filters[0].idle() >= 1);
}
