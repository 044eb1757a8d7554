//! The real `tollgate-proxy` binary between real clients and real
//! upstream servers, for the `proxy_*` tests.
//!
//! - [`Pki`]: a CA and the workload certificates it signs (SPIFFE IDs).
//! - [`Proxy`]: the binary with a generated `proxy.yaml` and a mounted
//!   certificate directory on free loopback ports; killed on drop.
//! - [`upstream`]: the apps behind it: an HTTP/1.1 + h2c server (echo,
//!   streamed upload and download, slow answers, WebSocket echo) and a gRPC
//!   server (tonic, hand-written prost messages, no protoc).
//! - [`client`]: clients that present a workload certificate: reqwest
//!   (HTTP/1.1, h2), tonic, tokio-tungstenite, and a raw TLS handshake.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate_certs::issue::{Ca, LeafSpec};
use tollgate_certs::reload::Material;

use crate::binaries::proxy_binary;
use crate::ports::free_ports;
use crate::process::without_proxy;

/// A CA and the workload certificates it signs.
pub struct Pki {
    pub ca: Ca,
}

impl Pki {
    pub fn new() -> anyhow::Result<Pki> {
        Ok(Pki {
            ca: Ca::generate("tollgate-e2e workload CA")?,
        })
    }

    /// A workload certificate for `spiffe_id`, valid for `localhost` and
    /// 127.0.0.1, with the CA as trust bundle.
    pub fn workload(&self, spiffe_id: &str) -> anyhow::Result<Material> {
        let mut spec = LeafSpec::workload(spiffe_id, &["localhost".to_owned()]);
        spec.ips = vec![Ipv4Addr::LOCALHOST.into()];
        let leaf = self.ca.issue(&spec)?;
        Ok(Material {
            cert_pem: leaf.cert_pem,
            key_pem: leaf.key_pem,
            ca_pem: Some(self.ca.cert_pem().to_owned()),
        })
    }

    /// Writes the CA certificate to `dir/jwks-ca.crt`, for a proxy to
    /// trust a test JWKS server (`jwks.caFile`), and returns the path.
    pub fn write_jwks_ca(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("jwks-ca.crt");
        std::fs::write(&path, self.ca.cert_pem())?;
        Ok(path)
    }
}

/// Writes `material` as `tls.crt`, `tls.key`, `ca.crt` in `dir`, each file
/// replaced atomically (written aside, then renamed), as a Secret volume
/// update replaces them.
pub fn write_certs(dir: &Path, material: &Material) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let files = [
        ("tls.crt", material.cert_pem.as_str()),
        ("tls.key", material.key_pem.as_str()),
        ("ca.crt", material.ca_pem.as_deref().unwrap_or_default()),
    ];
    for (name, text) in files {
        let aside = dir.join(format!(".{name}.new"));
        std::fs::write(&aside, text).with_context(|| format!("writing {}", aside.display()))?;
        std::fs::rename(&aside, dir.join(name))?;
    }
    Ok(())
}

/// What the generated `proxy.yaml` says.
#[derive(Clone)]
pub struct ProxyConfig {
    pub app_port: u16,
    /// `http1` or `h2c`.
    pub app_protocol: &'static str,
    /// `required`, `optional` or `off`.
    pub client_auth: &'static str,
    pub drain_timeout_seconds: u64,
    /// More top-level YAML (routes, outbound, limits…).
    pub extra: String,
    /// Environment for the proxy, as the injector would set it
    /// (`TOLLGATE_WORKSPACE_OWNER`, `TOLLGATE_TEAM`…).
    pub env: Vec<(String, String)>,
}

impl ProxyConfig {
    pub fn new(app_port: u16) -> ProxyConfig {
        ProxyConfig {
            app_port,
            app_protocol: "http1",
            client_auth: "required",
            drain_timeout_seconds: 10,
            extra: String::new(),
            env: Vec::new(),
        }
    }
}

/// A running `tollgate-proxy`, killed on drop.
pub struct Proxy {
    child: Child,
    pub inbound: u16,
    pub admin: u16,
    pub outbound: u16,
    pub certs_dir: PathBuf,
    pub log: PathBuf,
    dir: tempfile::TempDir,
}

impl Proxy {
    /// Starts the proxy with `material` mounted as its certificate and
    /// waits until `/ready` answers 200.
    pub async fn start(config: &ProxyConfig, material: &Material) -> anyhow::Result<Proxy> {
        let mut proxy = Proxy::spawn(config, Some(material))?;
        proxy.wait_ready().await?;
        Ok(proxy)
    }

    /// Starts the proxy without waiting; `None`: the certificate directory
    /// starts empty.
    pub fn spawn(config: &ProxyConfig, material: Option<&Material>) -> anyhow::Result<Proxy> {
        let dir = tempfile::Builder::new()
            .prefix("tollgate-proxy-e2e-")
            .tempdir()?;
        let certs_dir = dir.path().join("certs");
        std::fs::create_dir_all(&certs_dir)?;
        if let Some(material) = material {
            write_certs(&certs_dir, material)?;
        }
        let [inbound, admin, outbound] = free_ports::<3>()?;
        let yaml = format!(
            "listeners:\n  inbound: {{address: 127.0.0.1, port: {inbound}, clientAuth: {auth}}}\n  \
             outbound: {{port: {outbound}}}\n  admin: {{address: 127.0.0.1, port: {admin}}}\n\
             app: {{port: {app}, protocol: {proto}}}\n\
             certs: {{dir: {certs}, reloadIntervalMs: 100}}\n\
             drainTimeoutSeconds: {drain}\n{extra}\n",
            auth = config.client_auth,
            app = config.app_port,
            proto = config.app_protocol,
            certs = certs_dir.display(),
            drain = config.drain_timeout_seconds,
            extra = config.extra,
        );
        let config_path = dir.path().join("proxy.yaml");
        std::fs::write(&config_path, yaml)?;
        let log = dir.path().join("proxy.log");
        let mut cmd = Command::new(proxy_binary()?);
        cmd.arg("--config").arg(&config_path);
        without_proxy(&mut cmd);
        for var in [
            "TOLLGATE_APP_PORT",
            "TOLLGATE_INBOUND_PORT",
            "TOLLGATE_ADMIN_PORT",
            "TOLLGATE_OUTBOUND_PORT",
            "TOLLGATE_WORKSPACE_OWNER",
            "TOLLGATE_TEAM",
            "TOLLGATE_WORKSPACE_SHARING",
        ] {
            cmd.env_remove(var);
        }
        cmd.envs(config.env.iter().map(|(k, v)| (k, v)));
        let out = std::fs::File::create(&log)?;
        cmd.env(
            "RUST_LOG",
            std::env::var("TOLLGATE_PROXY_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
        let child = cmd.spawn().context("starting tollgate-proxy")?;
        // Kept in the temporary directory; printed when a test fails.
        Ok(Proxy {
            child,
            inbound,
            admin,
            outbound,
            certs_dir,
            log,
            dir,
        })
    }

    /// Waits until `/ready` answers 200 (30 s at most).
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < Duration::from_secs(30) {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "tollgate-proxy exited early ({status}):\n{}",
                    self.log_text()
                );
            }
            match self.admin_get("/ready").await {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => last = format!("{code} {body}"),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!(
            "tollgate-proxy not ready after 30 s (last: {last}):\n{}",
            self.log_text()
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The proxy's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn inbound_addr(&self) -> SocketAddr {
        (Ipv4Addr::LOCALHOST, self.inbound).into()
    }

    /// `GET path` on the admin port: status and body.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        admin_request(self.admin, "GET", path).await
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = self.admin_get("/metrics").await?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        Ok(body)
    }

    /// The value of one sample in `/metrics`, e.g.
    /// `tollgate_proxy_requests_total{direction="inbound"}`.
    pub async fn metric(&self, sample: &str) -> anyhow::Result<f64> {
        let text = self.metrics().await?;
        metric_value(&text, sample).with_context(|| format!("{sample} not in /metrics:\n{text}"))
    }

    /// Resident memory now and at its peak, in KiB (`VmRSS`, `VmHWM`).
    pub fn memory_kib(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("{name} not in /proc/<pid>/status"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(
                start.elapsed() < timeout,
                "tollgate-proxy still running after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- tollgate-proxy log ---\n{}", self.log_text());
        }
    }
}

/// One HTTP/1.0 request to the admin port (no body): status and body.
pub async fn admin_request(port: u16, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut tcp = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await?;
    tcp.write_all(
        format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    let mut response = Vec::new();
    tcp.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP response: {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The value of `sample` (name and labels, exactly) in Prometheus text.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// A header's value as text (`None` when absent or not text).
pub fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub mod upstream {
    //! The apps behind the proxy.

    /// The values the echo app saw for a request header (the
    /// `header_values` of its answer).
    pub fn saw(echo: &serde_json::Value, name: &str) -> Vec<String> {
        echo["header_values"][name]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    use std::convert::Infallible;
    use std::net::{Ipv4Addr, SocketAddr};
    use std::pin::Pin;
    use std::time::Duration;

    use bytes::Bytes;
    use futures_util::{SinkExt, Stream, StreamExt};
    use http::{Request, Response, StatusCode};
    use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
    use hyper::body::{Frame, Incoming};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tonic::Status;
    use tonic::codec::Streaming;

    type Body = UnsyncBoxBody<Bytes, std::io::Error>;
    type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

    /// A server task, aborted on drop.
    pub struct Server {
        pub addr: SocketAddr,
        task: JoinHandle<()>,
        /// Set by [`Server::kill`]: every connection task ends.
        killed: tokio::sync::watch::Sender<bool>,
        requests: std::sync::Arc<std::sync::atomic::AtomicU64>,
    }

    impl Server {
        pub fn port(&self) -> u16 {
            self.addr.port()
        }

        /// Kills the app as a crash would: it stops listening and every
        /// open connection is closed at once, responses and streams in
        /// flight cut off. (Dropping a `Server` only stops the listener.)
        pub fn kill(&self) {
            let _ = self.killed.send(true);
            self.task.abort();
        }

        /// How many requests have reached the app's handler so far.
        pub fn requests(&self) -> u64 {
            self.requests.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn serve<S, F>(handler: S) -> anyhow::Result<Server>
    where
        S: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: std::future::Future<Output = Response<Body>> + Send + 'static,
    {
        serve_on((Ipv4Addr::LOCALHOST, 0).into(), handler).await
    }

    /// Binds `addr`, retrying for up to 10 s while it is still taken (an
    /// app started again on the port of one just killed).
    async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
        let started = std::time::Instant::now();
        loop {
            match TcpListener::bind(addr).await {
                Ok(listener) => return Ok(listener),
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse
                        && started.elapsed() < Duration::from_secs(10) =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(anyhow::anyhow!("binding {addr}: {e}")),
            }
        }
    }

    async fn serve_on<S, F>(addr: SocketAddr, handler: S) -> anyhow::Result<Server>
    where
        S: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: std::future::Future<Output = Response<Body>> + Send + 'static,
    {
        let listener = bind(addr).await?;
        let addr = listener.local_addr()?;
        let (killed, kill_rx) = tokio::sync::watch::channel(false);
        let requests = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                let counter = counter.clone();
                let mut kill_rx = kill_rx.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let f = handler(req);
                        async move { Ok::<_, Infallible>(f.await) }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                    // Killed: the connection (and its socket) is dropped.
                    tokio::select! {
                        _ = conn => {}
                        _ = kill_rx.wait_for(|k| *k) => {}
                    }
                });
            }
        });
        Ok(Server {
            addr,
            task,
            killed,
            requests,
        })
    }

    fn text(status: StatusCode, body: String) -> Response<Body> {
        let mut r = Response::new(
            Full::new(Bytes::from(body))
                .map_err(|e| match e {})
                .boxed_unsync(),
        );
        *r.status_mut() = status;
        r
    }

    fn query(req: &Request<Incoming>, key: &str) -> Option<u64> {
        req.uri()
            .query()?
            .split('&')
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))?
            .parse()
            .ok()
    }

    /// An HTTP/1.1 and h2c app:
    /// - `/echo`: JSON of the method, version and the headers it saw;
    /// - `/upload`: reads the body as it streams and answers its length;
    /// - `/download?bytes=N`: streams N bytes in 64 KiB chunks;
    /// - `/slow?ms=N`: answers after N ms;
    /// - `/drip?chunks=N&ms=M`: streams N lines (`chunk <i>`), M ms apart;
    /// - `/ws`: a WebSocket that first sends the `Host` and `Origin` it
    ///   saw (JSON, with every request header under `header_values`), then
    ///   echoes every message;
    /// - `/echo/<anything>` and `/api/<anything>` (a stand-in for
    ///   flyteadmin's REST API): as `/echo`, for tests that route by path
    ///   prefix. `/echo` answers also carry `header_values` (every request
    ///   header with all its values) and, for each request header
    ///   `x-echo-response-header: name=value`, the response header
    ///   `name: value`;
    /// - `/json`: a JSON document (`application/json`, no length) streamed
    ///   in [`JSON_CHUNKS`], 20 ms apart;
    /// - `/healthz`: 200 `ok`.
    pub async fn http_app() -> anyhow::Result<Server> {
        serve(|req: Request<Incoming>| async move { handle(req).await }).await
    }

    /// An auth service for filters that call out (`proxy_http_call`):
    /// `/check` answers by the `authorization` header: `Bearer good` 200
    /// `alice`; `Bearer slow` the same after 3 s; anything else (or none)
    /// 403 `bad token`.
    pub async fn auth_service() -> anyhow::Result<Server> {
        serve(|req: Request<Incoming>| async move {
            let auth = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            match (req.uri().path(), auth.as_str()) {
                ("/check", "Bearer good") => text(StatusCode::OK, "alice".into()),
                ("/check", "Bearer slow") => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    text(StatusCode::OK, "alice".into())
                }
                ("/check", _) => text(StatusCode::FORBIDDEN, "bad token".into()),
                _ => text(StatusCode::NOT_FOUND, "no such path".into()),
            }
        })
        .await
    }

    /// A log collector for filters that ship batches (`proxy_http_call`):
    /// keeps the body of every `POST /logs`, answers 204.
    pub async fn collector()
    -> anyhow::Result<(Server, std::sync::Arc<std::sync::Mutex<Vec<String>>>)> {
        let batches = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = batches.clone();
        let server = serve(move |req: Request<Incoming>| {
            let kept = kept.clone();
            async move {
                if req.method() != http::Method::POST || req.uri().path() != "/logs" {
                    return text(StatusCode::NOT_FOUND, "no such path".into());
                }
                let body = req.into_body().collect().await.map(|b| b.to_bytes());
                match body {
                    Ok(bytes) => {
                        kept.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&bytes).into_owned());
                        text(StatusCode::NO_CONTENT, String::new())
                    }
                    Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
                }
            }
        })
        .await?;
        Ok((server, batches))
    }

    /// [`http_app`] on `addr` (an app started again on its old port).
    pub async fn http_app_on(addr: SocketAddr) -> anyhow::Result<Server> {
        serve_on(
            addr,
            |req: Request<Incoming>| async move { handle(req).await },
        )
        .await
    }

    /// An app that routes as most web frameworks do: it decodes the path
    /// once (`%2F` and `%5C` included), takes a backslash for `/`, resolves dot
    /// segments and merges slashes (keeping a trailing slash). Every
    /// request is answered 200 with
    /// JSON `{"raw": <the path as received>, "resolved": <what it routes
    /// on>}`.
    pub async fn path_app() -> anyhow::Result<Server> {
        serve(|req: Request<Incoming>| async move {
            let raw = req.uri().path().to_owned();
            let decoded = percent_encoding::percent_decode_str(&raw)
                .decode_utf8_lossy()
                .replace('\\', "/");
            let mut resolved: Vec<&str> = Vec::new();
            for segment in decoded.split('/') {
                match segment {
                    "" | "." => {}
                    ".." => {
                        resolved.pop();
                    }
                    s => resolved.push(s),
                }
            }
            let mut resolved = format!("/{}", resolved.join("/"));
            if decoded.ends_with('/') && resolved.len() > 1 {
                resolved.push('/');
            }
            let body = serde_json::json!({"raw": raw, "resolved": resolved});
            text(StatusCode::OK, body.to_string())
        })
        .await
    }

    /// The chunks `/json` streams (together, one JSON document).
    pub const JSON_CHUNKS: [&str; 4] = [
        r#"{"user": "alice", "pass"#,
        r#"word": "hunter2", "profile": {"token": {"kind": "bearer", "value": "t0k"},"#,
        r#" "note": "keep \"me\""}, "sessions": [{"id": 1, "token": "abc"},"#,
        r#" {"id": 2, "token": null}], "count": 2}"#,
    ];

    /// Every header with all its values: `{"name": ["v1", "v2"]}`.
    pub fn header_values(headers: &http::HeaderMap) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (k, v) in headers {
            let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
            match map
                .entry(k.to_string())
                .or_insert_with(|| serde_json::Value::Array(Vec::new()))
            {
                serde_json::Value::Array(list) => list.push(value.into()),
                _ => unreachable!("only arrays are inserted"),
            }
        }
        serde_json::Value::Object(map)
    }

    async fn handle(mut req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        let path = if path.starts_with("/echo/") || path.starts_with("/api/") {
            "/echo"
        } else {
            path
        };
        match path {
            "/json" => {
                let stream = futures_util::stream::iter(JSON_CHUNKS).then(|chunk| async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(chunk.as_bytes())))
                });
                let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
                r.headers_mut().insert(
                    "content-type",
                    http::HeaderValue::from_static("application/json"),
                );
                r
            }
            "/echo" => {
                let headers: serde_json::Map<String, serde_json::Value> = req
                    .headers()
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned().into(),
                        )
                    })
                    .collect();
                let body = serde_json::json!({
                    "method": req.method().as_str(),
                    "version": format!("{:?}", req.version()),
                    "path": req.uri().path(),
                    "headers": headers,
                    "header_values": header_values(req.headers()),
                });
                let mut r = text(StatusCode::OK, body.to_string());
                for v in req.headers().get_all("x-echo-response-header") {
                    let Some((name, value)) = v.to_str().ok().and_then(|v| v.split_once('='))
                    else {
                        continue;
                    };
                    if let (Ok(name), Ok(value)) = (
                        http::HeaderName::from_bytes(name.trim().as_bytes()),
                        http::HeaderValue::from_str(value.trim()),
                    ) {
                        r.headers_mut().append(name, value);
                    }
                }
                r
            }
            "/upload" => {
                let mut body = req.into_body();
                let mut n: u64 = 0;
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                        Err(e) => return text(StatusCode::BAD_REQUEST, e.to_string()),
                    }
                }
                text(StatusCode::OK, n.to_string())
            }
            "/download" => {
                let total = query(&req, "bytes").unwrap_or(0);
                let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
                let stream = futures_util::stream::unfold(0u64, move |sent| {
                    let chunk = chunk.clone();
                    async move {
                        if sent >= total {
                            return None;
                        }
                        let n = (total - sent).min(chunk.len() as u64) as usize;
                        Some((
                            Ok::<_, std::io::Error>(Frame::data(chunk.slice(..n))),
                            sent + n as u64,
                        ))
                    }
                });
                Response::new(StreamBody::new(stream).boxed_unsync())
            }
            "/drip" => {
                let chunks = query(&req, "chunks").unwrap_or(10);
                let ms = query(&req, "ms").unwrap_or(100);
                let stream = futures_util::stream::iter(0..chunks).then(move |i| async move {
                    if i > 0 {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    Ok::<_, std::io::Error>(Frame::data(Bytes::from(format!("chunk {i}\n"))))
                });
                Response::new(StreamBody::new(stream).boxed_unsync())
            }
            "/healthz" => text(StatusCode::OK, "ok".into()),
            "/slow" => {
                let ms = query(&req, "ms").unwrap_or(1000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                text(StatusCode::OK, format!("slept {ms} ms"))
            }
            "/ws" => {
                let key = req
                    .headers()
                    .get("sec-websocket-key")
                    .map(|k| k.as_bytes().to_vec());
                let Some(key) = key else {
                    return text(StatusCode::BAD_REQUEST, "not a WebSocket request".into());
                };
                let seen = serde_json::json!({
                    "host": req.headers().get("host").and_then(|v| v.to_str().ok()),
                    "origin": req.headers().get("origin").and_then(|v| v.to_str().ok()),
                    "header_values": header_values(req.headers()),
                })
                .to_string();
                let on_upgrade = hyper::upgrade::on(&mut req);
                tokio::spawn(async move {
                    let Ok(upgraded) = on_upgrade.await else {
                        return;
                    };
                    let mut ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(upgraded),
                        Role::Server,
                        None,
                    )
                    .await;
                    if ws.send(Message::text(seen)).await.is_err() {
                        return;
                    }
                    while let Some(Ok(msg)) = ws.next().await {
                        if msg.is_close() {
                            return;
                        }
                        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                            return;
                        }
                    }
                });
                let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
                let mut r = text(StatusCode::SWITCHING_PROTOCOLS, String::new());
                let h = r.headers_mut();
                h.insert("connection", http::HeaderValue::from_static("upgrade"));
                h.insert("upgrade", http::HeaderValue::from_static("websocket"));
                if let Ok(v) = http::HeaderValue::from_str(&accept) {
                    h.insert("sec-websocket-accept", v);
                }
                r
            }
            other => text(StatusCode::NOT_FOUND, format!("no {other}")),
        }
    }

    /// The message of the gRPC test service `tollgate.test.Echo`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Msg {
        #[prost(uint64, tag = "1")]
        pub n: u64,
        #[prost(string, tag = "2")]
        pub text: String,
    }

    pub const UNARY: &str = "/tollgate.test.Echo/Unary";
    pub const SERVER_STREAM: &str = "/tollgate.test.Echo/ServerStream";
    pub const CLIENT_STREAM: &str = "/tollgate.test.Echo/ClientStream";
    pub const BIDI: &str = "/tollgate.test.Echo/Bidi";
    /// Unary: answers with the request metadata it got (`text`: JSON, as
    /// [`header_values`]; `n`: how many entries), and the response
    /// metadata `server: tollgate-e2e-grpc` and `x-app-name: echo`. Every
    /// method under [`FLYTE_ADMIN`] answers the same (a stand-in for
    /// flyteadmin).
    pub const HEADERS: &str = "/tollgate.test.Echo/Headers";
    /// The path prefix of flyteadmin's gRPC service.
    pub const FLYTE_ADMIN: &str = "/flyteidl.service.AdminService/";

    fn codec() -> tonic_prost::ProstCodec<Msg, Msg> {
        tonic_prost::ProstCodec::default()
    }

    type MsgStream = Pin<Box<dyn Stream<Item = Result<Msg, Status>> + Send>>;

    /// Unary: echoes `text`, `n + 1`; `text: "fail"` fails with
    /// INVALID_ARGUMENT and `text: "sleep:<ms>"` answers after <ms> ms.
    #[derive(Clone)]
    struct Unary;
    impl tonic::server::UnaryService<Msg> for Unary {
        type Response = Msg;
        type Future = BoxFuture<Result<tonic::Response<Msg>, Status>>;
        fn call(&mut self, request: tonic::Request<Msg>) -> Self::Future {
            Box::pin(async move {
                let m = request.into_inner();
                if m.text == "fail" {
                    return Err(Status::invalid_argument("asked to fail"));
                }
                if let Some(ms) = m.text.strip_prefix("sleep:").and_then(|ms| ms.parse().ok()) {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Ok(tonic::Response::new(Msg {
                    n: m.n + 1,
                    text: m.text,
                }))
            })
        }
    }

    /// Server streaming: `n` messages numbered 0..n, each with the
    /// request's `text`; `text: "drip:<ms>"` sends one every <ms> ms.
    #[derive(Clone)]
    struct ServerStream;
    impl tonic::server::ServerStreamingService<Msg> for ServerStream {
        type Response = Msg;
        type ResponseStream = MsgStream;
        type Future = BoxFuture<Result<tonic::Response<MsgStream>, Status>>;
        fn call(&mut self, request: tonic::Request<Msg>) -> Self::Future {
            Box::pin(async move {
                let m = request.into_inner();
                let text = m.text;
                // `drip:<ms>`: one message every <ms> ms.
                let every = text
                    .strip_prefix("drip:")
                    .and_then(|ms| ms.parse().ok())
                    .map(Duration::from_millis);
                let stream = futures_util::stream::iter(0..m.n).then(move |i| {
                    let text = text.clone();
                    async move {
                        if let Some(every) = every.filter(|_| i > 0) {
                            tokio::time::sleep(every).await;
                        }
                        Ok(Msg { n: i, text })
                    }
                });
                Ok(tonic::Response::new(Box::pin(stream) as MsgStream))
            })
        }
    }

    /// Client streaming: the count and the sum of `n`.
    #[derive(Clone)]
    struct ClientStream;
    impl tonic::server::ClientStreamingService<Msg> for ClientStream {
        type Response = Msg;
        type Future = BoxFuture<Result<tonic::Response<Msg>, Status>>;
        fn call(&mut self, request: tonic::Request<Streaming<Msg>>) -> Self::Future {
            Box::pin(async move {
                let mut stream = request.into_inner();
                let (mut count, mut sum) = (0u64, 0u64);
                while let Some(m) = stream.message().await? {
                    count += 1;
                    sum += m.n;
                }
                Ok(tonic::Response::new(Msg {
                    n: sum,
                    text: count.to_string(),
                }))
            })
        }
    }

    /// Bidi: echoes each message as it arrives.
    #[derive(Clone)]
    struct Bidi;
    impl tonic::server::StreamingService<Msg> for Bidi {
        type Response = Msg;
        type ResponseStream = MsgStream;
        type Future = BoxFuture<Result<tonic::Response<MsgStream>, Status>>;
        fn call(&mut self, request: tonic::Request<Streaming<Msg>>) -> Self::Future {
            Box::pin(async move {
                let stream = request.into_inner();
                Ok(tonic::Response::new(Box::pin(stream) as MsgStream))
            })
        }
    }

    /// [`HEADERS`].
    #[derive(Clone)]
    struct Headers;
    impl tonic::server::UnaryService<Msg> for Headers {
        type Response = Msg;
        type Future = BoxFuture<Result<tonic::Response<Msg>, Status>>;
        fn call(&mut self, request: tonic::Request<Msg>) -> Self::Future {
            Box::pin(async move {
                let headers = request.metadata().clone().into_headers();
                let mut response = tonic::Response::new(Msg {
                    n: headers.len() as u64,
                    text: header_values(&headers).to_string(),
                });
                let m = response.metadata_mut();
                m.insert(
                    "server",
                    tonic::metadata::MetadataValue::from_static("tollgate-e2e-grpc"),
                );
                m.insert(
                    "x-app-name",
                    tonic::metadata::MetadataValue::from_static("echo"),
                );
                Ok(response)
            })
        }
    }

    /// The `tollgate.test.Echo` gRPC service over h2c, with the routing
    /// that tonic's code generator would write.
    pub async fn grpc_app() -> anyhow::Result<Server> {
        grpc_app_on((Ipv4Addr::LOCALHOST, 0).into()).await
    }

    /// [`grpc_app`] on `addr` (an app started again on its old port).
    pub async fn grpc_app_on(addr: SocketAddr) -> anyhow::Result<Server> {
        serve_on(addr, |req: Request<Incoming>| async move {
            let mut grpc = tonic::server::Grpc::new(codec());
            let response = match req.uri().path() {
                UNARY => grpc.unary(Unary, req).await,
                SERVER_STREAM => grpc.server_streaming(ServerStream, req).await,
                CLIENT_STREAM => grpc.client_streaming(ClientStream, req).await,
                BIDI => grpc.streaming(Bidi, req).await,
                p if p == HEADERS || p.starts_with(FLYTE_ADMIN) => grpc.unary(Headers, req).await,
                _ => Status::unimplemented("no such method").into_http(),
            };
            response.map(|b| {
                b.map_err(|e| std::io::Error::other(e.to_string()))
                    .boxed_unsync()
            })
        })
        .await
    }
}

pub mod client {
    //! Clients that present a workload certificate.

    use std::net::{Ipv4Addr, SocketAddr};
    use std::sync::Arc;
    use std::time::Duration;

    use rustls::pki_types::{CertificateDer, ServerName};
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream;
    use tollgate_certs::reload::{ExpectedServer, IdentityStore, Material};

    /// A rustls client configuration presenting `material`'s certificate
    /// (`None`: no client certificate) and trusting `ca_pem`, verifying the
    /// server by name, with ALPN `alpn`.
    pub fn tls_config(
        material: Option<&Material>,
        ca_pem: &str,
        alpn: &[&[u8]],
    ) -> anyhow::Result<rustls::ClientConfig> {
        let mut config = match material {
            Some(m) => IdentityStore::new(m, "e2e client")?.client_config(ExpectedServer::Name)?,
            None => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
                    let cert: CertificateDer<'static> = cert?;
                    roots.add(cert)?;
                }
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()?
                .with_root_certificates(roots)
                .with_no_client_auth()
            }
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(config)
    }

    /// A reqwest client for `https://localhost:<port>` over `tls`. `h2`:
    /// ALPN h2 only; else http/1.1 only. `fresh`: a new connection (and
    /// handshake) per request.
    pub fn reqwest(
        material: Option<&Material>,
        ca_pem: &str,
        port: u16,
        h2: bool,
        fresh: bool,
    ) -> anyhow::Result<reqwest::Client> {
        let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config(material, ca_pem, alpn)?)
            .resolve("localhost", SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .no_proxy()
            .timeout(Duration::from_secs(120));
        if h2 {
            builder = builder.http2_prior_knowledge();
        } else {
            builder = builder.http1_only();
        }
        if fresh {
            builder = builder.pool_max_idle_per_host(0);
        }
        Ok(builder.build()?)
    }

    /// What a GET through the proxy answered.
    pub struct Answer {
        pub status: u16,
        /// The `WWW-Authenticate` challenge, empty if none.
        pub www_authenticate: String,
        pub body: String,
    }

    /// The `WWW-Authenticate` challenge of a response, empty if none.
    fn www_authenticate(headers: &http::HeaderMap) -> String {
        headers
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    /// GET `https://localhost:<port><path>` with `headers`, body read whole.
    pub async fn get(
        http: &reqwest::Client,
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Answer> {
        let mut request = http.get(format!("https://localhost:{port}{path}"));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let www_authenticate = www_authenticate(response.headers());
        Ok(Answer {
            status,
            www_authenticate,
            body: response.text().await?,
        })
    }

    /// GET `/echo` with `Authorization: Bearer <token>`.
    pub async fn get_with_token(
        http: &reqwest::Client,
        port: u16,
        token: &str,
    ) -> anyhow::Result<Answer> {
        let authorization = format!("Bearer {token}");
        get(http, port, "/echo", &[("authorization", &authorization)]).await
    }

    /// GET `path` exactly as written (reqwest, through the `url` crate,
    /// would resolve dot segments and decode `%2e` before sending), over
    /// HTTP/1.1 on a new TLS connection presenting `material` (`None`: no
    /// client certificate).
    pub async fn raw_get(
        material: Option<&Material>,
        ca_pem: &str,
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<Answer> {
        use http_body_util::BodyExt as _;
        let config = tls_config(material, ca_pem, &[b"http/1.1"])?;
        let tls = connect(config, SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        let driver = tokio::spawn(conn);
        let mut request = http::Request::get(path).header("host", format!("localhost:{port}"));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = send
            .send_request(request.body(http_body_util::Empty::<bytes::Bytes>::new())?)
            .await?;
        let status = response.status().as_u16();
        let www_authenticate = www_authenticate(response.headers());
        let body = response.into_body().collect().await?.to_bytes();
        driver.abort();
        Ok(Answer {
            status,
            www_authenticate,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// A TLS connection to `addr` as `localhost`.
    pub async fn connect(
        config: rustls::ClientConfig,
        addr: SocketAddr,
    ) -> anyhow::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost")?;
        Ok(TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?)
    }

    /// The leaf certificate the server at `addr` presents now.
    pub async fn server_cert(
        material: &Material,
        addr: SocketAddr,
    ) -> anyhow::Result<CertificateDer<'static>> {
        let ca = material.ca_pem.as_deref().unwrap_or_default();
        let stream = connect(tls_config(Some(material), ca, &[b"http/1.1"])?, addr).await?;
        let (_, conn) = stream.get_ref();
        conn.peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned())
            .ok_or_else(|| anyhow::anyhow!("no server certificate"))
    }

    /// A tonic channel to the proxy over mTLS (h2).
    pub async fn grpc_channel(
        material: &Material,
        port: u16,
    ) -> anyhow::Result<tonic::transport::Channel> {
        let ca = material.ca_pem.as_deref().unwrap_or_default();
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .identity(tonic::transport::Identity::from_pem(
                &material.cert_pem,
                &material.key_pem,
            ))
            .domain_name("localhost");
        let channel = tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{port}"))?
            .tls_config(tls)?
            .connect()
            .await?;
        Ok(channel)
    }
}
