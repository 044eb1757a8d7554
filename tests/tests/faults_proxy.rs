//! Faults around the real `tollgate-proxy` (issue #11, item 4), each with
//! the exact outcome expected and the proxy still serving afterwards:
//!
//! - the JWKS endpoint hangs, then is down, then comes back with rotated
//!   keys: known keys keep verifying without waiting on it, an unknown
//!   `kid` gets a 401 within one fetch timeout, and the rotation is picked
//!   up once it is back (`proxy_jwt.rs` covers the refused-connection
//!   outage and the staleness bound);
//! - the app is killed mid-response (HTTP/1.1, h2, a gRPC server stream)
//!   and while requests wait for it: every client gets a clean error (502
//!   or a broken body, gRPC UNAVAILABLE) within a bound, never a hang and
//!   never a silently truncated "complete" response; the app started again
//!   on its port is served at once;
//! - the mounted certificate files break mid-run (garbage, a truncated
//!   PEM, a key of another certificate, a deleted file, a directory, an
//!   unreadable file where the tests are not root): the old certificate
//!   keeps being served (checked by serial over a real handshake), each
//!   refusal is counted and logged naming the file and the cause, and good
//!   files are picked up.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use futures_util::StreamExt as _;
use http::uri::PathAndQuery;
use serde_json::{Value, json};
use tollgate_certs::reload::Material;
use tollgate_e2e::jwt::{JwksServer, SigningKey, jwk_set, now};
use tollgate_e2e::proxy::client::{self, reqwest as https};
use tollgate_e2e::proxy::upstream::{self, Msg, SERVER_STREAM, UNARY};
use tollgate_e2e::proxy::{Pki, Proxy, ProxyConfig, write_certs};

const PROXY_ID: &str = "spiffe://cluster.local/ns/team-a/sa/workspace";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/team-b/sa/notebook";
const ISSUER: &str = "https://issuer.tollgate.test";

/// How long a client may wait for its error once the app is killed.
const ERROR_BOUND: Duration = Duration::from_secs(3);

/// Runs `f`; on error, panics with the error and the proxy's log.
fn check(result: anyhow::Result<()>) {
    if let Err(e) = result {
        panic!("{e:#}");
    }
}

// ---------------------------------------------------------------- JWKS --

fn claims() -> Value {
    json!({"iss": ISSUER, "aud": "flyteadmin", "sub": "alice",
           "exp": now() + 600, "jti": format!("{:?}", Instant::now())})
}

/// Status, `WWW-Authenticate` and how long the answer took.
async fn with_token(
    http: &reqwest::Client,
    port: u16,
    token: &str,
) -> anyhow::Result<(u16, String, Duration)> {
    let started = Instant::now();
    let answer = client::get_with_token(http, port, token).await?;
    Ok((answer.status, answer.www_authenticate, started.elapsed()))
}

/// A TCP endpoint that accepts connections and never answers (a hung
/// JWKS server, or a black-holing network path).
async fn black_hole(addr: SocketAddr) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let started = Instant::now();
    let listener = loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => anyhow::bail!("binding {addr}: {e}"),
        }
    };
    Ok(tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    }))
}

/// Waits until the proxy's log has `needle` at least `count` times.
async fn wait_log(proxy: &Proxy, needle: &str, count: usize) -> anyhow::Result<()> {
    let started = Instant::now();
    while proxy.log_text().matches(needle).count() < count {
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "no {needle:?} (x{count}) in the proxy's log:\n{}",
            proxy.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_hang_and_outage_keep_the_last_keys_and_rotation_resumes() {
    check(jwks_fault().await);
}

async fn jwks_fault() -> anyhow::Result<()> {
    const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
    let pki = Pki::new()?;
    let server_id = pki.workload("spiffe://cluster.local/ns/app/sa/app")?;
    let first = SigningKey::ec("ec-1")?;
    let jwks = JwksServer::start(&server_id, jwk_set(&[&first])).await?;
    let jwks_addr = jwks.addr;
    let dir = tempfile::tempdir()?;
    let ca_file = pki.write_jwks_ca(dir.path())?;
    let app = upstream::http_app().await?;
    let mut config = ProxyConfig::new(app.port());
    config.client_auth = "off";
    config.extra = format!(
        "jwt:\n  providers:\n    main:\n      issuer: {ISSUER}\n      audiences: [flyteadmin]\n      algorithms: [ES256]\n      \
         jwks: {{url: {url}, caFile: {ca}, refreshIntervalSeconds: 3600, minRefetchIntervalSeconds: 1, \
         maxStalenessSeconds: 3600, fetchTimeoutSeconds: {timeout}}}\n\
         routes: [{{pathPrefix: /, jwt: {{mode: required}}}}]\n",
        url = jwks.url(),
        ca = ca_file.display(),
        timeout = FETCH_TIMEOUT.as_secs(),
    );
    let proxy = Proxy::start(&config, &server_id).await?;
    let port = proxy.inbound;
    let http = https(None, pki.ca.cert_pem(), port, false, false)?;
    let good = first.sign(&claims());
    let (status, _, _) = with_token(&http, port, &good).await?;
    ensure!(status == 200, "a valid token before the fault: {status}");

    // The endpoint hangs: connections are accepted, never answered.
    jwks.stop();
    drop(jwks);
    let hole = black_hole(jwks_addr).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await; // past minRefetchInterval
    let unknown = SigningKey::ec("ec-unknown")?;
    // Unknown kids arriving while a refetch hangs, staggered: each waits
    // for at most one fetch timeout, never for a second fetch after the
    // one it found in flight failed.
    let mut refused = Vec::new();
    for delay_ms in [0u64, 400, 800, 1200] {
        let (http, token) = (http.clone(), unknown.sign(&claims()));
        refused.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            with_token(&http, port, &token).await
        }));
    }
    // Meanwhile the known key verifies without waiting on the endpoint.
    let mut known_worst = Duration::ZERO;
    for _ in 0..10 {
        let (status, challenge, took) = with_token(&http, port, &first.sign(&claims())).await?;
        ensure!(
            status == 200,
            "known key refused while the JWKS hangs: {status} {challenge}"
        );
        known_worst = known_worst.max(took);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(
        known_worst < Duration::from_secs(1),
        "a known key waited {known_worst:?} on the hung JWKS endpoint"
    );
    let mut unknown_worst = Duration::ZERO;
    for r in refused {
        let (status, challenge, took) = r.await??;
        ensure!(
            status == 401 && challenge.contains("error_description=\"unknown signing key"),
            "unknown kid while the JWKS hangs: {status} {challenge:?}"
        );
        unknown_worst = unknown_worst.max(took);
    }
    ensure!(
        unknown_worst <= FETCH_TIMEOUT + Duration::from_millis(1500),
        "an unknown kid waited {unknown_worst:?} for a JWKS that hangs \
         (fetch timeout {FETCH_TIMEOUT:?}): more than one fetch"
    );
    wait_log(&proxy, "no answer within", 1).await?;

    // Down: nothing listens. An unknown kid is refused at once.
    hole.abort();
    let _ = hole.await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, challenge, down_took) = with_token(&http, port, &unknown.sign(&claims())).await?;
    ensure!(
        status == 401 && challenge.contains("unknown signing key"),
        "unknown kid while the JWKS is down: {status} {challenge:?}"
    );
    ensure!(
        down_took < Duration::from_secs(1),
        "{down_took:?} to refuse with the JWKS down"
    );
    let (status, _, _) = with_token(&http, port, &good).await?;
    ensure!(status == 200, "cached token refused while the JWKS is down");
    let (ready, body) = proxy.admin_get("/ready").await?;
    ensure!(
        ready == 200,
        "/ready while the JWKS is down (keys cached): {ready} {body}"
    );

    // Back, with the keys rotated: the new key verifies on its first token,
    // the retired one no longer does.
    let rotated = SigningKey::ec("ec-2")?;
    let back = JwksServer::start_on(&server_id, jwk_set(&[&rotated]), jwks_addr).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let back_at = Instant::now();
    let (status, challenge, _) = with_token(&http, port, &rotated.sign(&claims())).await?;
    ensure!(
        status == 200,
        "rotated key refused after the JWKS came back: {status} {challenge:?}"
    );
    let rotation_ms = back_at.elapsed().as_millis();
    ensure!(back.fetches() >= 1, "the returned endpoint was never asked");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, challenge, _) = with_token(&http, port, &first.sign(&claims())).await?;
    ensure!(
        status == 401 && challenge.contains("unknown signing key"),
        "the retired key still verifies: {status} {challenge:?}"
    );
    let metrics = proxy.metrics().await?;
    let unknown_key = tollgate_e2e::proxy::metric_value(
        &metrics,
        r#"tollgate_jwt_validations_total{result="unknown_key"}"#,
    )
    .context("unknown_key not counted")?;
    ensure!(
        unknown_key >= 6.0,
        "unknown_key counted {unknown_key} times"
    );
    eprintln!(
        "jwks: known key during the hang <= {} ms; unknown kid refused in <= {} ms while hung \
         (fetch timeout {} ms), {} ms while down; rotated key accepted {} ms after the endpoint \
         returned",
        known_worst.as_millis(),
        unknown_worst.as_millis(),
        FETCH_TIMEOUT.as_millis(),
        down_took.as_millis(),
        rotation_ms
    );
    Ok(())
}

// ------------------------------------------------------------ upstream --

/// Waits until `app` has seen `n` requests.
async fn app_saw(app: &upstream::Server, n: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    while app.requests() < n {
        ensure!(
            started.elapsed() < Duration::from_secs(20),
            "the app saw {} requests, expected {n}",
            app.requests()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Reads `response`'s body until it fails; returns what was read and how
/// long after `killed` (once set) the failure came. A body that *ends*
/// (a truncated response passed off as complete) is an error.
async fn body_until_error(
    response: reqwest::Response,
    killed: &tokio::sync::watch::Receiver<Option<Instant>>,
) -> anyhow::Result<(usize, Duration, String)> {
    let mut stream = response.bytes_stream();
    let mut read = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Err(_) => anyhow::bail!("the body hung for 30 s after {read} bytes"),
            Ok(Some(Ok(chunk))) => read += chunk.len(),
            Ok(Some(Err(e))) => {
                let at = (*killed.borrow()).context("the body failed before the kill")?;
                return Ok((read, at.elapsed(), format!("{e:?}")));
            }
            Ok(None) => anyhow::bail!(
                "the body ended cleanly after {read} bytes although the app was killed mid-response"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_app_killed_mid_response_gives_clean_errors_and_its_restart_is_served() {
    check(http_app_killed().await);
}

async fn http_app_killed() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let me = pki.workload(CLIENT_ID)?;
    let ca = me.ca_pem.clone().unwrap_or_default();
    let app = upstream::http_app().await?;
    let app_addr = app.addr;
    let proxy = Proxy::start(&ProxyConfig::new(app.port()), &pki.workload(PROXY_ID)?).await?;
    let h1 = https(Some(&me), &ca, proxy.inbound, false, false)?;
    let h2 = https(Some(&me), &ca, proxy.inbound, true, false)?;
    let base = format!("https://localhost:{}", proxy.inbound);
    for c in [&h1, &h2] {
        let r = c.get(format!("{base}/echo")).send().await?;
        ensure!(r.status() == 200, "before the kill: {}", r.status());
    }

    // Two long responses streaming, two requests waiting for an answer.
    let (killed_tx, killed) = tokio::sync::watch::channel(None::<Instant>);
    let mut streams = Vec::new();
    for (name, c) in [("HTTP/1.1", &h1), ("h2", &h2)] {
        let r = c
            .get(format!("{base}/drip?chunks=100000&ms=20"))
            .send()
            .await?;
        ensure!(r.status() == 200, "{name} drip: {}", r.status());
        let killed = killed.clone();
        streams.push((
            name,
            tokio::spawn(async move { body_until_error(r, &killed).await }),
        ));
    }
    let seen = app.requests();
    let mut waiting = Vec::new();
    for (name, c) in [("HTTP/1.1", h1.clone()), ("h2", h2.clone())] {
        let url = format!("{base}/slow?ms=60000");
        let killed = killed.clone();
        waiting.push((
            name,
            tokio::spawn(async move {
                let r = c.get(url).send().await?;
                let at = (*killed.borrow()).context("answered before the kill")?;
                let took = at.elapsed();
                let reason = r
                    .headers()
                    .get("x-tollgate-reason")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                let status = r.status().as_u16();
                let body = r.text().await?;
                anyhow::Ok((status, reason, body, took))
            }),
        ));
    }
    app_saw(&app, seen + 2).await?;
    tokio::time::sleep(Duration::from_millis(200)).await; // a few chunks flow
    killed_tx.send(Some(Instant::now()))?;
    app.kill();

    let mut report = Vec::new();
    for (name, task) in streams {
        let (read, took, error) = task.await??;
        ensure!(read > 0, "{name}: nothing streamed before the kill");
        ensure!(
            took <= ERROR_BOUND,
            "{name}: the cut body failed only {took:?} after the kill ({error})"
        );
        report.push(format!("{name} body cut: error in {} ms", took.as_millis()));
    }
    for (name, task) in waiting {
        let (status, reason, body, took) = task.await??;
        ensure!(
            status == 502 && reason == "upstream-error",
            "{name}: a request waiting on the killed app got {status} {reason:?}: {body}"
        );
        ensure!(
            took <= ERROR_BOUND,
            "{name}: 502 only {took:?} after the kill"
        );
        report.push(format!("{name} waiting: 502 in {} ms", took.as_millis()));
    }

    // Down: refused at once. Then the app is back on its port, and the
    // very first request on each client is served.
    let r = h1.get(format!("{base}/echo")).send().await?;
    ensure!(
        r.status() == 503 && r.headers()["x-tollgate-reason"] == "upstream-unavailable",
        "with the app down: {}",
        r.status()
    );
    drop(app);
    let app = upstream::http_app_on(app_addr).await?;
    for (name, c) in [("HTTP/1.1", &h1), ("h2", &h2)] {
        for i in 0..20 {
            let r = c.get(format!("{base}/echo")).send().await?;
            ensure!(
                r.status() == 200,
                "{name}: request {i} after the restart: {} {:?}",
                r.status(),
                r.headers().get("x-tollgate-reason")
            );
        }
        let r = c.get(format!("{base}/drip?chunks=5&ms=1")).send().await?;
        ensure!(
            r.text().await? == "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n",
            "{name}: a whole stream after the restart"
        );
    }
    ensure!(app.requests() >= 42, "the restarted app was not used");
    let fivexx = proxy
        .metric(r#"tollgate_proxy_responses_total{direction="inbound",class="5xx"}"#)
        .await?;
    ensure!(fivexx >= 3.0, "5xx counted {fivexx}");
    eprintln!("upstream (HTTP): {}", report.join("; "));
    Ok(())
}

fn codec() -> tonic_prost::ProstCodec<Msg, Msg> {
    tonic_prost::ProstCodec::default()
}

fn msg(n: u64, text: &str) -> Msg {
    Msg {
        n,
        text: text.to_owned(),
    }
}

async fn grpc(
    channel: &tonic::transport::Channel,
) -> anyhow::Result<tonic::client::Grpc<tonic::transport::Channel>> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await?;
    Ok(grpc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_app_killed_mid_stream_gives_unavailable_and_its_restart_is_served() {
    check(grpc_app_killed().await);
}

async fn grpc_app_killed() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let me = pki.workload(CLIENT_ID)?;
    let app = upstream::grpc_app().await?;
    let app_addr = app.addr;
    let mut config = ProxyConfig::new(app.port());
    config.app_protocol = "h2c";
    let proxy = Proxy::start(&config, &pki.workload(PROXY_ID)?).await?;
    let channel = client::grpc_channel(&me, proxy.inbound).await?;
    let r = grpc(&channel)
        .await?
        .unary(
            tonic::Request::new(msg(1, "hi")),
            PathAndQuery::from_static(UNARY),
            codec(),
        )
        .await?;
    ensure!(r.into_inner() == msg(2, "hi"));

    // A server stream in flight, and a unary call waiting for its answer.
    let mut stream = grpc(&channel)
        .await?
        .server_streaming(
            tonic::Request::new(msg(100_000, "drip:20")),
            PathAndQuery::from_static(SERVER_STREAM),
            codec(),
        )
        .await?
        .into_inner();
    for i in 0..3 {
        let m = stream.message().await?.context("the stream ended early")?;
        ensure!(m.n == i, "message {i}: {m:?}");
    }
    let seen = app.requests();
    let pending_channel = channel.clone();
    let (killed_tx, killed) = tokio::sync::watch::channel(None::<Instant>);
    let pending = tokio::spawn(async move {
        let result = grpc(&pending_channel)
            .await?
            .unary(
                tonic::Request::new(msg(1, "sleep:60000")),
                PathAndQuery::from_static(UNARY),
                codec(),
            )
            .await;
        let at = (*killed.borrow()).context("answered before the kill")?;
        anyhow::Ok((result.map(|r| r.into_inner()), at.elapsed()))
    });
    app_saw(&app, seen + 1).await?;
    let killed_at = Instant::now();
    killed_tx.send(Some(killed_at))?;
    app.kill();

    let mut received = 3;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.message()).await {
            Err(_) => anyhow::bail!("the stream hung after the kill"),
            Ok(Ok(Some(_))) => received += 1,
            Ok(Ok(None)) => {
                anyhow::bail!("the stream ended OK after {received} messages: the kill was hidden")
            }
            Ok(Err(status)) => break status,
        }
    };
    let stream_took = killed_at.elapsed();
    ensure!(
        status.code() == tonic::Code::Unavailable,
        "the cut stream ended with {:?}: {status:?} (expected UNAVAILABLE)",
        status.code()
    );
    ensure!(
        stream_took <= ERROR_BOUND,
        "the cut stream failed only {stream_took:?} after the kill"
    );
    let (result, unary_took) = pending.await??;
    let unary_status = match result {
        Ok(m) => anyhow::bail!("the pending call was answered by a killed app: {m:?}"),
        Err(s) => s,
    };
    ensure!(
        unary_status.code() == tonic::Code::Unavailable,
        "the pending call ended with {unary_status:?}"
    );
    ensure!(
        unary_took <= ERROR_BOUND,
        "UNAVAILABLE only {unary_took:?} after the kill"
    );

    // Back on its port: served at once, a whole stream included.
    drop(app);
    let app = upstream::grpc_app_on(app_addr).await?;
    for i in 0..10 {
        let r = grpc(&channel)
            .await?
            .unary(
                tonic::Request::new(msg(i, "back")),
                PathAndQuery::from_static(UNARY),
                codec(),
            )
            .await
            .with_context(|| format!("call {i} after the restart"))?;
        ensure!(r.into_inner() == msg(i + 1, "back"));
    }
    let mut stream = grpc(&channel)
        .await?
        .server_streaming(
            tonic::Request::new(msg(50, "again")),
            PathAndQuery::from_static(SERVER_STREAM),
            codec(),
        )
        .await?
        .into_inner();
    let mut got = 0;
    while let Some(m) = stream.message().await? {
        ensure!(m.n == got);
        got += 1;
    }
    ensure!(got == 50, "{got} messages after the restart");
    ensure!(app.requests() >= 11, "the restarted app was not used");
    eprintln!(
        "upstream (gRPC): stream cut after {received} messages -> {:?} in {} ms ({}); \
         pending unary -> {:?} in {} ms ({})",
        status.code(),
        stream_took.as_millis(),
        status.message(),
        unary_status.code(),
        unary_took.as_millis(),
        unary_status.message()
    );
    Ok(())
}

// --------------------------------------------------------------- certs --

/// The serial of the certificate a new handshake with the proxy gets.
async fn served_serial(me: &Material, proxy: &Proxy) -> anyhow::Result<String> {
    let der = client::server_cert(me, proxy.inbound_addr()).await?;
    Ok(tollgate_certs::inspect::inspect_der(&der)?.serial)
}

fn serial_of(material: &Material) -> anyhow::Result<String> {
    Ok(tollgate_certs::inspect::inspect_pem(&material.cert_pem)?.serial)
}

/// Whether this process can read a file whose mode is 000 (it is root).
fn reads_despite_mode_000(dir: &std::path::Path) -> bool {
    let probe = dir.join(".mode-probe");
    let _ = std::fs::write(&probe, "x");
    let _ = std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o000));
    let readable = std::fs::read(&probe).is_ok();
    let _ = std::fs::remove_file(&probe);
    readable
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_certificate_files_keep_the_old_certificate_until_good_ones_arrive() {
    check(broken_cert_files().await);
}

async fn broken_cert_files() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let me = pki.workload(CLIENT_ID)?;
    let app = upstream::http_app().await?;
    let first = pki.workload(PROXY_ID)?;
    let proxy = Proxy::start(&ProxyConfig::new(app.port()), &first).await?;
    let dir = proxy.certs_dir.clone();
    let ca = me.ca_pem.clone().unwrap_or_default();
    let http = https(Some(&me), &ca, proxy.inbound, false, true)?;
    let url = format!("https://localhost:{}/echo", proxy.inbound);
    let serial = serial_of(&first)?;
    ensure!(served_serial(&me, &proxy).await? == serial);
    let failures = "tollgate_cert_rotation_failures_total";
    let other = pki.workload(PROXY_ID)?;
    let crt = dir.join("tls.crt");
    let key = dir.join("tls.key");
    let crt_name = crt.display().to_string();
    let key_name = key.display().to_string();

    type Fault = Box<dyn Fn(&std::path::Path) -> anyhow::Result<()>>;
    let mut faults: Vec<(&str, Fault, String)> = vec![
        (
            "tls.crt garbage",
            Box::new(|d| Ok(std::fs::write(d.join("tls.crt"), "not a certificate\n")?)),
            format!("{crt_name}: contains no certificate"),
        ),
        (
            "tls.crt truncated (disk full mid-write)",
            Box::new({
                let pem = other.cert_pem.clone();
                move |d| Ok(std::fs::write(d.join("tls.crt"), &pem[..pem.len() / 2])?)
            }),
            format!("{crt_name}: not valid PEM"),
        ),
        (
            "tls.key of another certificate",
            Box::new({
                let other = other.clone();
                let first = first.clone();
                move |d| {
                    write_certs(
                        d,
                        &Material {
                            key_pem: other.key_pem.clone(),
                            ..first.clone()
                        },
                    )
                }
            }),
            format!("certificate {crt_name} and key {key_name} do not form a usable TLS identity"),
        ),
        (
            "tls.key empty",
            Box::new(|d| Ok(std::fs::write(d.join("tls.key"), "")?)),
            format!("{key_name}: not valid PEM"),
        ),
        (
            "tls.crt deleted",
            Box::new(|d| Ok(std::fs::remove_file(d.join("tls.crt"))?)),
            format!("reading {crt_name}: No such file or directory"),
        ),
        (
            "tls.crt a directory",
            Box::new(|d| {
                let _ = std::fs::remove_file(d.join("tls.crt"));
                Ok(std::fs::create_dir(d.join("tls.crt"))?)
            }),
            format!("reading {crt_name}: Is a directory"),
        ),
    ];
    let root = reads_despite_mode_000(&dir);
    if !root {
        faults.push((
            "tls.key unreadable (mode 000)",
            Box::new(|d| {
                Ok(std::fs::set_permissions(
                    d.join("tls.key"),
                    std::fs::Permissions::from_mode(0o000),
                )?)
            }),
            format!("reading {key_name}: Permission denied"),
        ));
    }
    let restore = |d: &std::path::Path| -> anyhow::Result<()> {
        if d.join("tls.crt").is_dir() {
            std::fs::remove_dir(d.join("tls.crt"))?;
        }
        let _ = std::fs::set_permissions(d.join("tls.key"), std::fs::Permissions::from_mode(0o600));
        write_certs(d, &first)
    };

    for (what, fault, logged) in &faults {
        let before = proxy.metric(failures).await?;
        fault(&dir)?;
        let started = Instant::now();
        // Counted, and logged as a warning naming the file and the cause.
        let line = loop {
            let log = proxy.log_text();
            let line = log.lines().find(|l| {
                l.contains(logged.as_str()) && l.contains("keeping the current certificate")
            });
            if let Some(line) = line
                && proxy.metric(failures).await? > before
            {
                break line.to_owned();
            }
            ensure!(
                started.elapsed() < Duration::from_secs(10),
                "{what}: no failure counted, or no log line naming {logged:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let counted_ms = started.elapsed().as_millis();
        ensure!(line.contains("WARN"), "{what}: not a warning: {line}");
        // The old certificate is still served, to new handshakes too.
        for _ in 0..3 {
            ensure!(
                served_serial(&me, &proxy).await? == serial,
                "{what}: the served certificate changed"
            );
            let r = http.get(&url).send().await?;
            ensure!(r.status() == 200, "{what}: {}", r.status());
        }
        eprintln!("certs (proxy): {what}: counted in {counted_ms} ms, logged {logged:?}");
        restore(&dir)?;
    }
    if root {
        eprintln!("certs (proxy): running as root, mode 000 cannot deny reads: skipped");
    }

    // Good files arrive: picked up at the next poll.
    let next = pki.workload(PROXY_ID)?;
    let rotations = proxy.metric("tollgate_cert_rotations_total").await?;
    write_certs(&dir, &next)?;
    let started = Instant::now();
    while served_serial(&me, &proxy).await? != serial_of(&next)? {
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "the good files were never served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = http.get(&url).send().await?;
    ensure!(r.status() == 200, "after the rotation: {}", r.status());
    ensure!(proxy.metric("tollgate_cert_rotations_total").await? == rotations + 1.0);
    eprintln!(
        "certs (proxy): good files served {} ms after they were written",
        started.elapsed().as_millis()
    );
    Ok(())
}
