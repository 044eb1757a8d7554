//! Issue 9's acceptance tests: proxy-wasm filters compiled from `filters/`
//! (by `filters/build.sh`) running in the real `tollgate-proxy` between
//! real clients and apps, over mTLS.
//!
//! - `header_transform` renames, removes, sets and adds request and
//!   response headers on HTTP/1.1, h2, gRPC and a WebSocket handshake;
//! - `flyte_tenant` admits a team's own Flyte projects (the verified JWT
//!   team claim forwarded as metadata) and refuses others: 403, or
//!   PERMISSION_DENIED for gRPC;
//! - `json_redact` redacts fields of a JSON response streamed in chunks;
//! - `loop`, `trap` and `oom` fail their requests (closed: 503 / gRPC 14)
//!   or are skipped (open) within the CPU bound, while other routes keep
//!   answering, the proxy stays up and `/metrics` counts every failure;
//! - a `.wasm` swapped under load changes the behaviour with no failed
//!   request, and swaps do not leak pool slots; a corrupt one keeps the
//!   previous chain and shows on `/ready`, which stays 200;
//! - a module that fails its very first load keeps `/ready` at 503 and its
//!   route failing closed, until the file is fixed.
//!
//! The tests need `clang` and `lld` (`filters/build.sh`). Run alone, the
//! binary takes about 2 s once the proxy is built.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::uri::PathAndQuery;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tollgate_e2e::binaries::{target_dir, workspace_root};
use tollgate_e2e::jwt::{JwksServer, SigningKey, jwk_set, now};
use tollgate_e2e::proxy::client::{self, reqwest as https};
use tollgate_e2e::proxy::upstream::{self, FLYTE_ADMIN, HEADERS, JSON_CHUNKS, Msg, UNARY, saw};
use tollgate_e2e::proxy::{Pki, Proxy, ProxyConfig, header};
use tonic::metadata::MetadataValue;

const PROXY_ID: &str = "spiffe://cluster.local/ns/flyte/sa/flyteadmin";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/team-ml/sa/notebook";
const ISSUER: &str = "https://issuer.tollgate.test";

/// `filters/build.sh` into `<target>/filters`, once per test process,
/// under the lock the proxy's unit tests take too.
fn built_filters() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = target_dir().join("filters");
        std::fs::create_dir_all(&out).expect("creating the filters output directory");
        let lock = std::fs::File::create(out.join(".lock")).expect("creating the build lock");
        lock.lock().expect("locking the filters build");
        let status = std::process::Command::new("bash")
            .arg(workspace_root().join("filters/build.sh"))
            .arg(&out)
            .status()
            .expect("running filters/build.sh (needs: apt-get install -y clang lld)");
        assert!(status.success(), "filters/build.sh failed");
        out
    })
    .clone()
}

/// `<name>.wasm` copied into `dir` as `<as_name>` (the proxy watches its
/// own copy, untouched by a concurrent rebuild).
fn module(dir: &Path, name: &str, as_name: &str) -> PathBuf {
    let to = dir.join(as_name);
    std::fs::copy(built_filters().join(format!("{name}.wasm")), &to)
        .unwrap_or_else(|e| panic!("copying {name}.wasm: {e}"));
    to
}

/// One filter of a chain, as `proxy.yaml` names it.
fn filter(name: &str, module: &Path, failure: &str, config: Value) -> Value {
    json!({"name": name, "module": module, "failure": failure, "config": config})
}

/// The `filters` section (JSON is YAML): `settings` plus a chain per
/// route, and the route table that runs them.
fn filters_section(settings: Value, routes: &[(&str, Vec<Value>)]) -> String {
    filtered_routes(settings, routes, &json!({}), &[])
}

/// [`filters_section`] whose filtered routes also carry `each` (a `jwt`,
/// say), with `more` routes after them.
fn filtered_routes(
    settings: Value,
    routes: &[(&str, Vec<Value>)],
    each: &Value,
    more: &[Value],
) -> String {
    let mut section = settings;
    let mut table = Vec::new();
    for (i, (prefix, chain)) in routes.iter().enumerate() {
        let name = format!("chain{i}");
        section["chains"][&name] = json!(chain);
        let mut route = each.clone();
        route["pathPrefix"] = json!(prefix);
        route["filters"] = json!(name);
        table.push(route);
    }
    table.extend_from_slice(more);
    format!("filters: {section}\nroutes: {}\n", Value::Array(table))
}

fn echo_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn codec() -> tonic_prost::ProstCodec<Msg, Msg> {
    tonic_prost::ProstCodec::default()
}

async fn grpc_client(
    material: &tollgate_certs::reload::Material,
    port: u16,
) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = client::grpc_channel(material, port).await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    grpc
}

/// A unary call to `path` with `metadata`.
async fn unary(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    path: &str,
    metadata: &[(&'static str, &str)],
    msg: Msg,
) -> Result<tonic::Response<Msg>, tonic::Status> {
    let mut request = tonic::Request::new(msg);
    for (k, v) in metadata {
        request
            .metadata_mut()
            .append(*k, MetadataValue::try_from(*v).unwrap());
    }
    grpc.ready().await.unwrap();
    grpc.unary(request, PathAndQuery::try_from(path).unwrap(), codec())
        .await
}

fn msg(n: u64, text: &str) -> Msg {
    Msg {
        n,
        text: text.to_owned(),
    }
}

/// header_transform's configuration in these tests.
fn transform_config() -> Value {
    json!({
        "request": {"rename": {"x-old": "x-new"}, "remove": ["x-drop"],
                    "set": {"x-env": "prod"}, "add": {"x-via": "tollgate"}},
        "response": {"rename": {"x-app-name": "x-renamed"}, "remove": ["server"],
                     "set": {"x-filtered": "header_transform"}, "add": {"cache-control": "no-store"}},
    })
}

/// What a client sends for header_transform to work on.
const CLIENT_HEADERS: [(&str, &str); 5] = [
    ("x-old", "v1"),
    ("x-drop", "gone"),
    ("x-env", "dev"),
    ("x-via", "client"),
    ("x-keep", "kept"),
];

/// The request side of [`transform_config`], as the app saw it.
fn assert_request_transformed(echo: &Value, what: &str) {
    assert_eq!(saw(echo, "x-new"), ["v1"], "{what}: {echo}");
    assert!(saw(echo, "x-old").is_empty(), "{what}: {echo}");
    assert!(saw(echo, "x-drop").is_empty(), "{what}: {echo}");
    assert_eq!(saw(echo, "x-env"), ["prod"], "{what}: {echo}");
    assert_eq!(saw(echo, "x-via"), ["client", "tollgate"], "{what}: {echo}");
    assert_eq!(saw(echo, "x-keep"), ["kept"], "{what}: {echo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_transform_on_http_grpc_and_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let headers = module(dir.path(), "header_transform", "header_transform.wasm");
    let pki = Pki::new().unwrap();
    let server_id = pki.workload(PROXY_ID).unwrap();
    let me = pki.workload(CLIENT_ID).unwrap();
    let ca = me.ca_pem.clone().unwrap();
    let chain = || vec![filter("headers", &headers, "closed", transform_config())];

    // HTTP app (HTTP/1.1 to the app) and gRPC app (h2c), one proxy each.
    let http_app = upstream::http_app().await.unwrap();
    let grpc_app = upstream::grpc_app().await.unwrap();
    // json_redact too on gRPC and WebSocket: its body callbacks wrap the
    // bodies (which it leaves alone: not JSON), and trailers and the
    // upgrade must still pass.
    let redact = module(dir.path(), "json_redact", "json_redact.wasm");
    let with_redact = || {
        let mut chain = chain();
        chain.push(filter(
            "redact",
            &redact,
            "closed",
            json!({"fields": ["text"]}),
        ));
        chain
    };
    let mut config = ProxyConfig::new(http_app.port());
    config.extra = filters_section(json!({}), &[("/echo/", chain()), ("/ws", with_redact())]);
    let mut grpc_config = ProxyConfig::new(grpc_app.port());
    grpc_config.app_protocol = "h2c";
    let grpc_chain = with_redact();
    grpc_config.extra = filters_section(json!({}), &[("/tollgate.test.Echo/", grpc_chain)]);
    let (proxy, grpc_proxy) = tokio::join!(
        Proxy::start(&config, &server_id),
        Proxy::start(&grpc_config, &server_id)
    );
    let (proxy, grpc_proxy) = (proxy.unwrap(), grpc_proxy.unwrap());

    // HTTP/1.1 and h2 clients.
    for h2 in [false, true] {
        let http = https(Some(&me), &ca, proxy.inbound, h2, false).unwrap();
        let mut request = http.get(format!("https://localhost:{}/echo/h", proxy.inbound));
        for (k, v) in CLIENT_HEADERS {
            request = request.header(k, v);
        }
        let r = request
            .header("x-echo-response-header", "server=app")
            .header("x-echo-response-header", "x-app-name=echo")
            .header("x-echo-response-header", "x-app-kept=yes")
            .send()
            .await
            .unwrap();
        let what = if h2 { "h2" } else { "HTTP/1.1" };
        assert_eq!(r.status(), 200, "{what}");
        let h = r.headers().clone();
        assert_eq!(header(&h, "server"), None, "{what}: {h:?}");
        assert_eq!(header(&h, "x-app-name"), None, "{what}: {h:?}");
        assert_eq!(header(&h, "x-renamed"), Some("echo"), "{what}: {h:?}");
        assert_eq!(header(&h, "x-app-kept"), Some("yes"), "{what}: {h:?}");
        assert_eq!(
            header(&h, "x-filtered"),
            Some("header_transform"),
            "{what}: {h:?}"
        );
        assert_eq!(header(&h, "cache-control"), Some("no-store"), "{what}");
        assert_request_transformed(&echo_json(&r.text().await.unwrap()), what);
    }
    // Route prefixes match whole segments (Gateway API `PathPrefix`): the
    // `/echo/` route covers `/echo` itself, so it is filtered too.
    let http = https(Some(&me), &ca, proxy.inbound, false, false).unwrap();
    let r = http
        .get(format!("https://localhost:{}/echo", proxy.inbound))
        .send()
        .await
        .unwrap();
    assert_eq!(header(r.headers(), "x-filtered"), Some("header_transform"));
    // A path outside the filtered routes is untouched.
    let r = http
        .get(format!("https://localhost:{}/api/x", proxy.inbound))
        .header("x-old", "v1")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("x-filtered").is_none());
    let echo = echo_json(&r.text().await.unwrap());
    assert_eq!(saw(&echo, "x-old"), ["v1"]);
    assert!(saw(&echo, "x-env").is_empty());

    // gRPC (tonic, h2 end to end): the service sees the transformed
    // metadata, the client the transformed response metadata, and the
    // messages pass untouched.
    let mut grpc = grpc_client(&me, grpc_proxy.inbound).await;
    let response = unary(&mut grpc, HEADERS, &CLIENT_HEADERS, msg(0, ""))
        .await
        .unwrap();
    let m = response.metadata().clone().into_headers();
    assert_eq!(header(&m, "server"), None, "{m:?}");
    assert_eq!(header(&m, "x-app-name"), None, "{m:?}");
    assert_eq!(header(&m, "x-renamed"), Some("echo"), "{m:?}");
    assert_eq!(header(&m, "x-filtered"), Some("header_transform"));
    assert_eq!(header(&m, "cache-control"), Some("no-store"));
    let echo = json!({"header_values": echo_json(&response.into_inner().text)});
    assert_request_transformed(&echo, "gRPC");
    assert_eq!(saw(&echo, "content-type"), ["application/grpc"]);
    let response = unary(&mut grpc, UNARY, &[("x-drop", "x")], msg(41, "hello"))
        .await
        .unwrap();
    assert_eq!(response.into_inner(), msg(42, "hello"));
    grpc.ready().await.unwrap();
    let response = grpc
        .server_streaming(
            tonic::Request::new(msg(5, "s")),
            PathAndQuery::from_static(upstream::SERVER_STREAM),
            codec(),
        )
        .await
        .unwrap();
    let m = response.metadata().clone().into_headers();
    assert_eq!(header(&m, "x-filtered"), Some("header_transform"));
    let mut stream = response.into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        got.push(m.n);
    }
    assert_eq!(got, [0, 1, 2, 3, 4]);
    let status = unary(&mut grpc, UNARY, &[], msg(0, "fail"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");

    // WebSocket: the handshake is transformed both ways, then messages flow.
    let tls = client::connect(
        client::tls_config(Some(&me), &ca, &[b"http/1.1"]).unwrap(),
        proxy.inbound_addr(),
    )
    .await
    .unwrap();
    let mut request = format!("wss://localhost:{}/ws", proxy.inbound)
        .into_client_request()
        .unwrap();
    for (k, v) in CLIENT_HEADERS {
        request
            .headers_mut()
            .append(k, http::HeaderValue::from_static(v));
    }
    let (mut ws, response) = tokio_tungstenite::client_async(request, tls).await.unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(
        header(response.headers(), "x-filtered"),
        Some("header_transform")
    );
    let first = ws.next().await.unwrap().unwrap();
    let echo = echo_json(first.to_text().unwrap());
    assert_request_transformed(&echo, "WebSocket");
    assert_eq!(saw(&echo, "upgrade"), ["websocket"]);
    for i in 0..3 {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
    }
    let big = bytes::Bytes::from(vec![7u8; 256 << 10]);
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    ws.close(None).await.unwrap();

    for p in [&proxy, &grpc_proxy] {
        let count = p
            .metric(r#"tollgate_filter_duration_seconds_count{filter="headers"}"#)
            .await
            .unwrap();
        assert!(count >= 2.0, "{count}");
    }
}

fn token(key: &SigningKey, team: &str) -> String {
    key.sign(
        &json!({"iss": ISSUER, "aud": "flyteadmin", "sub": "alice", "team": team,
                     "exp": now() + 600}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flyte_tenant_admits_the_teams_projects_and_denies_others() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = module(dir.path(), "flyte_tenant", "flyte_tenant.wasm");
    let pki = Pki::new().unwrap();
    let server_id = pki.workload(PROXY_ID).unwrap();
    let me = pki.workload(CLIENT_ID).unwrap();
    let ca = me.ca_pem.clone().unwrap();
    let key = SigningKey::ec("ec-1").unwrap();
    let jwks = JwksServer::start(&server_id, jwk_set(&[&key]))
        .await
        .unwrap();
    let ca_file = pki.write_jwks_ca(dir.path()).unwrap();
    let jwt = format!(
        "jwt:\n  providers:\n    main:\n      issuer: {ISSUER}\n      audiences: [flyteadmin]\n      algorithms: [ES256]\n      \
         jwks: {{url: {url}, caFile: {ca}, refreshIntervalSeconds: 3600}}\n  \
         tokenSources: [{{header: authorization, prefix: 'Bearer '}}, {{header: flyte-authorization, prefix: 'Bearer '}}]\n",
        url = jwks.url(),
        ca = ca_file.display(),
    );
    let tenant_config = json!({
        "claim": "team", "header": "x-tollgate-team", "projectHeader": "project",
        "teams": {"ml": ["ml-research", "ml-prod"], "platform": ["*"]},
    });
    let chain = vec![filter("tenant", &tenant, "closed", tenant_config)];

    let http_app = upstream::http_app().await.unwrap();
    let grpc_app = upstream::grpc_app().await.unwrap();
    let mut config = ProxyConfig::new(http_app.port());
    // JWT optional on /api/ and the admin service, filtered on one of them.
    let optional = json!({"jwt": {"mode": "optional"}});
    let optional_at = |prefix: &str| json!({"pathPrefix": prefix, "jwt": {"mode": "optional"}});
    config.extra = format!(
        "{jwt}{}",
        filtered_routes(
            json!({}),
            &[("/api/v1/", chain.clone())],
            &optional,
            &[optional_at("/api/"), optional_at(FLYTE_ADMIN)]
        )
    );
    let mut grpc_config = ProxyConfig::new(grpc_app.port());
    grpc_config.app_protocol = "h2c";
    grpc_config.extra = format!(
        "{jwt}{}",
        filtered_routes(
            json!({}),
            &[(FLYTE_ADMIN, chain)],
            &optional,
            &[optional_at("/api/")]
        )
    );
    let (proxy, grpc_proxy) = tokio::join!(
        Proxy::start(&config, &server_id),
        Proxy::start(&grpc_config, &server_id)
    );
    let (proxy, grpc_proxy) = (proxy.unwrap(), grpc_proxy.unwrap());
    let (ml, platform) = (token(&key, "ml"), token(&key, "platform"));

    // REST.
    let http = https(Some(&me), &ca, proxy.inbound, false, false).unwrap();
    let get = |path: &str, token: Option<&str>| {
        let mut request = http
            .get(format!("https://localhost:{}{path}", proxy.inbound))
            .header("x-tollgate-team", "platform");
        if let Some(t) = token {
            request = request.header("authorization", format!("Bearer {t}"));
        }
        request.send()
    };
    for (path, token, team) in [
        ("/api/v1/executions/ml-prod/development/e1", &ml, "ml"),
        ("/api/v1/projects/ml-research", &ml, "ml"),
        (
            "/api/v1/executions/anything/development/e1",
            &platform,
            "platform",
        ),
    ] {
        let r = get(path, Some(token)).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let echo = echo_json(&r.text().await.unwrap());
        // The verified team, never the client's.
        assert_eq!(saw(&echo, "x-tollgate-team"), [team], "{path}: {echo}");
    }
    let r = get("/api/v1/executions/finance/development/e1", Some(&ml))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        header(r.headers(), "x-tollgate-reason"),
        Some("flyte_tenant_project_denied")
    );
    assert_eq!(
        r.text().await.unwrap(),
        "project finance does not belong to team ml\n"
    );
    let r = get("/api/v1/projects/ml-prod", None).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        header(r.headers(), "x-tollgate-reason"),
        Some("flyte_tenant_no_team")
    );

    // gRPC: the project in metadata (Flyte's `flyte-authorization` header
    // carries the token).
    let mut grpc = grpc_client(&me, grpc_proxy.inbound).await;
    let create = format!("{FLYTE_ADMIN}CreateExecution");
    let bearer = format!("Bearer {ml}");
    let response = unary(
        &mut grpc,
        &create,
        &[
            ("flyte-authorization", &bearer),
            ("project", "ml-prod"),
            ("x-tollgate-team", "platform"),
        ],
        msg(1, ""),
    )
    .await
    .unwrap();
    let echo = json!({"header_values": echo_json(&response.into_inner().text)});
    assert_eq!(saw(&echo, "x-tollgate-team"), ["ml"], "{echo}");
    assert_eq!(saw(&echo, "project"), ["ml-prod"], "{echo}");

    let status = unary(
        &mut grpc,
        &create,
        &[("flyte-authorization", &bearer), ("project", "finance")],
        msg(1, ""),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains("project finance does not belong to team ml"),
        "{status:?}"
    );
    let status = unary(&mut grpc, &create, &[("project", "ml-prod")], msg(1, ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    // The wildcard team may use any project.
    let bearer = format!("Bearer {platform}");
    let response = unary(
        &mut grpc,
        &create,
        &[("authorization", &bearer), ("project", "finance")],
        msg(1, ""),
    )
    .await
    .unwrap();
    let echo = json!({"header_values": echo_json(&response.into_inner().text)});
    assert_eq!(saw(&echo, "x-tollgate-team"), ["platform"], "{echo}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_redact_redacts_a_streamed_response() {
    let dir = tempfile::tempdir().unwrap();
    let redact = module(dir.path(), "json_redact", "json_redact.wasm");
    let pki = Pki::new().unwrap();
    let me = pki.workload(CLIENT_ID).unwrap();
    let ca = me.ca_pem.clone().unwrap();
    let app = upstream::http_app().await.unwrap();
    let mut config = ProxyConfig::new(app.port());
    let redact_config = json!({"fields": ["password", "token"], "replacement": "[hidden]"});
    config.extra = filters_section(
        json!({}),
        &[
            (
                "/json",
                vec![filter("redact", &redact, "closed", redact_config.clone())],
            ),
            (
                "/echo/",
                vec![filter("redact", &redact, "closed", redact_config)],
            ),
        ],
    );
    let proxy = Proxy::start(&config, &pki.workload(PROXY_ID).unwrap())
        .await
        .unwrap();
    let expected = r#"{"user":"alice","password":"[hidden]","profile":{"token":"[hidden]","note":"keep \"me\""},"sessions":[{"id":1,"token":"[hidden]"},{"id":2,"token":"[hidden]"}],"count":2}"#;
    // The app's document really is split across its chunks.
    let original: Value = serde_json::from_str(&JSON_CHUNKS.concat()).unwrap();
    assert_eq!(original["password"], "hunter2");
    assert!(
        JSON_CHUNKS
            .iter()
            .all(|c| serde_json::from_str::<Value>(c).is_err())
    );
    for h2 in [false, true] {
        let http = https(Some(&me), &ca, proxy.inbound, h2, false).unwrap();
        let r = http
            .get(format!("https://localhost:{}/json", proxy.inbound))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            header(r.headers(), "content-type"),
            Some("application/json")
        );
        assert_eq!(r.text().await.unwrap(), expected, "h2: {h2}");

        // A JSON answer with a Content-Length (the echo, made JSON): the
        // length changes with the redaction, and the client still gets a
        // well-framed body.
        let r = http
            .get(format!("https://localhost:{}/echo/me", proxy.inbound))
            .header("x-echo-response-header", "content-type=application/json")
            .header("token", "s3cret")
            .header("x-user", "alice")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        assert!(!text.contains("s3cret"), "{text}");
        let echo = echo_json(&text);
        assert_eq!(echo["headers"]["token"], "[hidden]", "{echo}");
        assert_eq!(echo["header_values"]["token"], "[hidden]", "{echo}");
        assert_eq!(saw(&echo, "x-user"), ["alice"]);
    }
}

/// Requests one path in a loop until `stop`: every failure (a status
/// other than 200, or an error) is recorded, and the slowest answer.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<(u64, Duration)>>,
    failures: Arc<Mutex<Vec<String>>>,
    seen: Arc<Mutex<Vec<(Instant, Value)>>>,
}

impl Load {
    fn start(http: &reqwest::Client, url: String, workers: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..workers)
            .map(|_| {
                let (http, url) = (http.clone(), url.clone());
                let (stop, failures, seen) = (stop.clone(), failures.clone(), seen.clone());
                tokio::spawn(async move {
                    let (mut n, mut slowest) = (0u64, Duration::ZERO);
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let outcome = async {
                            let r = http.get(&url).send().await.map_err(|e| e.to_string())?;
                            let status = r.status();
                            let text = r.text().await.map_err(|e| e.to_string())?;
                            if status != 200 {
                                return Err(format!("{status}: {text}"));
                            }
                            serde_json::from_str::<Value>(&text).map_err(|e| e.to_string())
                        }
                        .await;
                        slowest = slowest.max(started.elapsed());
                        n += 1;
                        match outcome {
                            Ok(echo) => seen.lock().unwrap().push((Instant::now(), echo)),
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                    }
                    (n, slowest)
                })
            })
            .collect();
        Load {
            stop,
            tasks,
            failures,
            seen,
        }
    }

    /// Stops: requests made, the slowest, the failures.
    async fn finish(self) -> (u64, Duration, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut total, mut slowest) = (0, Duration::ZERO);
        for task in self.tasks {
            let (n, s) = task.await.unwrap();
            total += n;
            slowest = slowest.max(s);
        }
        let failures = self.failures.lock().unwrap().clone();
        (total, slowest, failures)
    }
}

const TIMEOUT_MS: u64 = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulting_filters_fail_closed_or_open_and_the_proxy_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new().unwrap();
    let me = pki.workload(CLIENT_ID).unwrap();
    let ca = me.ca_pem.clone().unwrap();
    let app = upstream::http_app().await.unwrap();
    let after = module(dir.path(), "header_transform", "header_transform.wasm");
    let after = |name: &str| {
        filter(
            name,
            &after,
            "closed",
            json!({"request": {"set": {"x-after": "yes"}}}),
        )
    };
    let mut routes = Vec::new();
    let mut prefixes = Vec::new();
    for fault in ["loop", "trap", "oom"] {
        let wasm = module(dir.path(), fault, &format!("{fault}.wasm"));
        for mode in ["closed", "open"] {
            let name = format!("{fault}-{mode}");
            prefixes.push(format!("/echo/{name}/"));
            routes.push(vec![
                filter(&name, &wasm, mode, json!({})),
                after(&format!("after-{name}")),
            ]);
        }
    }
    let mut section: Vec<(&str, Vec<Value>)> =
        prefixes.iter().map(String::as_str).zip(routes).collect();
    section.push(("/echo/ok/", vec![after("after-ok")]));
    let mut config = ProxyConfig::new(app.port());
    config.extra = filters_section(
        json!({"callbackTimeoutMs": TIMEOUT_MS, "epochTickMs": 10,
               "memoryLimitBytes": 4 << 20, "maxInstances": 24}),
        &section,
    );
    let proxy = Proxy::start(&config, &pki.workload(PROXY_ID).unwrap())
        .await
        .unwrap();
    let base = format!("https://localhost:{}", proxy.inbound);
    let http = https(Some(&me), &ca, proxy.inbound, false, false).unwrap();
    let h2 = https(Some(&me), &ca, proxy.inbound, true, false).unwrap();

    // A steady load on a healthy route throughout.
    let load = Load::start(&http, format!("{base}/echo/ok/x"), 2);
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Every fault, closed and open, one after the other.
    let faults = ["loop", "trap", "oom"].into_iter().flat_map(|fault| {
        ["closed", "open"]
            .into_iter()
            .map(move |mode| (fault, mode))
    });
    let runs = faults.map(|(fault, mode)| {
        let (http, url) = (http.clone(), format!("{base}/echo/{fault}-{mode}/x"));
        async move {
            let started = Instant::now();
            let r = http.get(&url).header("x-fault", "1").send().await.unwrap();
            let took = started.elapsed();
            let status = r.status().as_u16();
            let reason = header(r.headers(), "x-tollgate-reason").map(str::to_owned);
            (fault, mode, took, status, reason, r.text().await.unwrap())
        }
    });
    let mut results = Vec::new();
    for run in runs {
        results.push(run.await);
    }
    let mut loop_latency = Vec::new();
    for (fault, mode, took, status, reason, body) in results {
        let name = format!("{fault}-{mode}");
        if mode == "closed" {
            assert_eq!(status, 503, "{name}: {body}");
            assert_eq!(reason.as_deref(), Some("filter-failed"), "{name}");
            assert!(
                body.contains(&format!("filter {name} failed")),
                "{name}: {body}"
            );
        } else {
            // Skipped: the request passes, the rest of the chain runs.
            assert_eq!(status, 200, "{name}: {body}");
            let echo = echo_json(&body);
            assert_eq!(saw(&echo, "x-fault"), ["1"], "{name}");
            assert_eq!(saw(&echo, "x-after"), ["yes"], "{name}");
        }
        if fault == "loop" {
            // Stopped by the CPU bound: not before it, and well within 1 s.
            assert!(
                took >= Duration::from_millis(TIMEOUT_MS * 9 / 10),
                "{name} answered after {took:?}"
            );
            assert!(took < Duration::from_secs(1), "{name} took {took:?}");
            loop_latency.push(took);
        } else {
            assert!(took < Duration::from_secs(1), "{name} took {took:?}");
        }
    }
    eprintln!("loop requests answered after {loop_latency:?} (bound {TIMEOUT_MS} ms)");

    // gRPC requests failing closed get UNAVAILABLE.
    let r = h2
        .post(format!("{base}/echo/trap-closed/pkg.Svc/Method"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("x-fault", "1")
        .body(vec![0u8; 5])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(r.headers(), "grpc-status"), Some("14"));
    assert_eq!(
        header(r.headers(), "x-tollgate-reason"),
        Some("filter-failed")
    );

    // A filter that keeps failing is re-instantiated each time, never
    // leaked: more failures than the pool has slots, then a fresh instance.
    let repeated = 30;
    for _ in 0..repeated {
        let r = http
            .get(format!("{base}/echo/trap-closed/x"))
            .header("x-fault", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503);
    }
    for fault in ["loop", "trap", "oom"] {
        let r = http
            .get(format!("{base}/echo/{fault}-closed/x"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{fault}");
        let echo = echo_json(&r.text().await.unwrap());
        assert_eq!(saw(&echo, "x-fault-instance-requests"), ["1"], "{fault}");
    }

    let (total, slowest, failures) = load.finish().await;
    assert!(failures.is_empty(), "healthy route failed: {failures:?}");
    assert!(total > 10, "only {total} requests on the healthy route");
    eprintln!("healthy route: {total} requests, slowest {slowest:?}");

    // The proxy is up, and counted every failure.
    assert_eq!(proxy.admin_get("/live").await.unwrap().0, 200);
    let metrics = proxy.metrics().await.unwrap();
    let failures = |name: &str, reason: &str| {
        tollgate_e2e::proxy::metric_value(
            &metrics,
            &format!(
                r#"tollgate_filter_failures_total{{filter="{name}",reason="{reason}",phase="request_headers"}}"#
            ),
        )
        .unwrap_or(0.0)
    };
    for (fault, reason) in [("loop", "timeout"), ("trap", "trap"), ("oom", "oom")] {
        for mode in ["closed", "open"] {
            let expected = match (fault, mode) {
                ("trap", "closed") => 2.0 + repeated as f64,
                _ => 1.0,
            };
            let name = format!("{fault}-{mode}");
            assert_eq!(failures(&name, reason), expected, "{name}:\n{metrics}");
        }
    }
    let created = tollgate_e2e::proxy::metric_value(
        &metrics,
        r#"tollgate_filter_instances_created_total{filter="trap-closed"}"#,
    )
    .unwrap();
    assert!(created >= repeated as f64 + 2.0, "{created}");
    let log = proxy.log_text();
    assert!(log.contains("filter failed"), "no failure logged");
}

/// `/ready`'s status and body.
async fn ready(proxy: &Proxy) -> (u16, String) {
    proxy.admin_get("/ready").await.unwrap()
}

/// Waits (5 s at most) until `check` holds; the time it took.
async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

/// Replaces `to` atomically with `bytes` (written aside, renamed), as a
/// volume update does.
fn replace(to: &Path, bytes: &[u8]) {
    let aside = to.with_extension("wasm.new");
    std::fs::write(&aside, bytes).unwrap();
    std::fs::rename(&aside, to).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_and_a_corrupt_module() {
    let dir = tempfile::tempdir().unwrap();
    let hot = module(dir.path(), "header_transform", "hot.wasm");
    let pki = Pki::new().unwrap();
    let me = pki.workload(CLIENT_ID).unwrap();
    let ca = me.ca_pem.clone().unwrap();
    let app = upstream::http_app().await.unwrap();
    let mut config = ProxyConfig::new(app.port());
    // Both header_transform and the fault filters accept this config.
    let hot_config = json!({"request": {"set": {"x-version": "one"}}, "always": false});
    config.extra = filters_section(
        // Few pool slots: swaps that leaked instances would exhaust them.
        json!({"reloadIntervalMs": 100, "maxInstances": 8}),
        &[("/echo/", vec![filter("hot", &hot, "closed", hot_config)])],
    );
    let proxy = Proxy::start(&config, &pki.workload(PROXY_ID).unwrap())
        .await
        .unwrap();
    let (status, body) = ready(&proxy).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("filters: generation 1, 1 loaded: hot@"),
        "{body}"
    );
    let http = https(Some(&me), &ca, proxy.inbound, false, false).unwrap();
    let url = format!("https://localhost:{}/echo/hot", proxy.inbound);
    let load = Load::start(&http, url, 4);
    let seen = load.seen.clone();
    let newest = move || seen.lock().unwrap().last().cloned();
    until("the first requests", async || newest().is_some()).await;
    assert_eq!(saw(&newest().unwrap().1, "x-version"), ["one"]);

    // Swap in another module under load (trap.wasm, which does not trap
    // without `x-fault`: it counts its requests instead).
    let swapped = Instant::now();
    replace(
        &hot,
        &std::fs::read(built_filters().join("trap.wasm")).unwrap(),
    );
    let observed = until("the new module's behaviour", async || {
        newest().is_some_and(|(at, echo)| {
            at > swapped
                && saw(&echo, "x-version").is_empty()
                && !saw(&echo, "x-fault-instance-requests").is_empty()
        })
    })
    .await;
    eprintln!("swapped module observed {observed:?} after the file was replaced");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = ready(&proxy).await;
    assert_eq!(status, 200);
    assert!(
        body.contains("filters: generation 2, 1 loaded: hot@"),
        "{body}"
    );
    assert!(!body.contains("failed"), "{body}");

    // A corrupt module: the previous chain stays, the error is on /ready.
    let corrupted = Instant::now();
    replace(&hot, b"\0asm\x01\0\0\0 not really a module");
    let reported = until("the reload error on /ready", async || {
        ready(&proxy).await.1.contains("last reload failed")
    })
    .await;
    eprintln!("corrupt module reported {reported:?} after the file was replaced");
    let (status, body) = ready(&proxy).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("filters: generation 2"), "{body}");
    assert!(body.contains("hot.wasm"), "{body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (at, echo) = newest().unwrap();
    assert!(at > corrupted + Duration::from_millis(250));
    assert!(
        !saw(&echo, "x-fault-instance-requests").is_empty(),
        "{echo}"
    );

    // Fixed: header_transform again, the error cleared; then swapped back
    // and forth, more times than the pool has slots.
    let header_transform = std::fs::read(built_filters().join("header_transform.wasm")).unwrap();
    let trap = std::fs::read(built_filters().join("trap.wasm")).unwrap();
    for round in 0..10 {
        let swapped = Instant::now();
        let is_trap = round % 2 == 1;
        replace(&hot, if is_trap { &trap } else { &header_transform });
        until("the swapped module's behaviour", async || {
            newest().is_some_and(|(at, echo)| {
                at > swapped
                    && (saw(&echo, "x-version") == ["one"]) != is_trap
                    && saw(&echo, "x-fault-instance-requests").is_empty() != is_trap
            })
        })
        .await;
        // Distinct mtimes for the next swap's stamp.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (total, slowest, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed: {failures:?}",
        failures.len()
    );
    eprintln!("reload under load: {total} requests, none failed, slowest {slowest:?}");
    let (status, body) = ready(&proxy).await;
    assert_eq!(status, 200);
    assert!(body.contains("filters: generation 12"), "{body}");
    assert!(!body.contains("failed"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_load_that_fails_fails_closed_until_the_module_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let late = dir.path().join("late.wasm");
    std::fs::write(&late, b"not wasm at all").unwrap();
    let pki = Pki::new().unwrap();
    let me = pki.workload(CLIENT_ID).unwrap();
    let ca = me.ca_pem.clone().unwrap();
    let app = upstream::http_app().await.unwrap();
    let mut config = ProxyConfig::new(app.port());
    config.extra = filters_section(
        json!({"reloadIntervalMs": 100}),
        &[(
            "/echo/",
            vec![filter(
                "late",
                &late,
                "closed",
                json!({"request": {"set": {"x-version": "fixed"}}}),
            )],
        )],
    );
    let proxy = Proxy::spawn(&config, Some(&pki.workload(PROXY_ID).unwrap())).unwrap();
    until("/ready naming the filters", async || {
        matches!(proxy.admin_get("/ready").await, Ok((503, body)) if body.contains("last reload failed"))
    })
    .await;
    let (_, body) = ready(&proxy).await;
    assert!(body.contains("not ready: "), "{body}");
    assert!(body.contains("filters"), "{body}");
    assert!(body.contains("late.wasm"), "{body}");

    // Meanwhile the filtered route fails closed; others pass.
    let http = https(Some(&me), &ca, proxy.inbound, false, false).unwrap();
    let base = format!("https://localhost:{}", proxy.inbound);
    let r = http.get(format!("{base}/echo/x")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(
        header(r.headers(), "x-tollgate-reason"),
        Some("filter-failed")
    );
    // `/echo/` covers `/echo` (whole segments), so that fails closed too;
    // a path outside the route passes.
    let r = http.get(format!("{base}/echo")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let r = http.get(format!("{base}/api/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // Fixed: loaded, ready, applied.
    replace(
        &late,
        &std::fs::read(built_filters().join("header_transform.wasm")).unwrap(),
    );
    until("/ready", async || ready(&proxy).await.0 == 200).await;
    let (_, body) = ready(&proxy).await;
    assert!(
        body.contains("filters: generation 1, 1 loaded: late@"),
        "{body}"
    );
    assert!(!body.contains("failed"), "{body}");
    let r = http.get(format!("{base}/echo/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        saw(&echo_json(&r.text().await.unwrap()), "x-version"),
        ["fixed"]
    );
}
