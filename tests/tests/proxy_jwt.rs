//! JWT validation through the real `tollgate-proxy`: tokens signed with
//! RSA, EC and Ed25519 keys made here, the JWKS served over HTTPS by a test
//! server. Valid tokens reach the app with claim headers (spoofed ones
//! stripped); each kind of bad token is refused with its own description;
//! gRPC gets UNAUTHENTICATED; a key rotation is picked up without a
//! restart; a JWKS outage is ridden out on the cached keys until the
//! configured staleness.

use std::time::{Duration, Instant};

use anyhow::ensure;
use base64::Engine as _;
use serde_json::{Value, json};
use tollgate_e2e::jwt::{JwksServer, SigningKey, jwk_set, now};
use tollgate_e2e::proxy::{Pki, Proxy, ProxyConfig, client, upstream};

const ISSUER: &str = "https://issuer.tollgate.test";

fn claims(extra: Value) -> Value {
    let mut c = json!({"iss": ISSUER, "aud": "flyteadmin", "sub": "alice", "team": "ml",
                       "exp": now() + 600, "jti": format!("{:?}", Instant::now())});
    for (k, v) in extra.as_object().into_iter().flatten() {
        c[k] = v.clone();
    }
    c
}

async fn refused(
    http: &reqwest::Client,
    port: u16,
    token: &str,
    description: &str,
) -> anyhow::Result<()> {
    let a = client::get_with_token(http, port, token).await?;
    ensure!(
        a.status == 401
            && a.www_authenticate.contains("error=\"invalid_token\"")
            && a.www_authenticate
                .contains(&format!("error_description=\"{description}")),
        "expected 401 {description:?}, got {} {:?}: {}",
        a.status,
        a.www_authenticate,
        a.body
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_validation_through_the_proxy() {
    if let Err(e) = run().await {
        panic!("{e:#}");
    }
}

async fn run() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let server_id = pki.workload("spiffe://cluster.local/ns/app/sa/app")?;
    let rsa = SigningKey::rsa("rsa-1")?;
    let ec = SigningKey::ec("ec-1")?;
    let ed = SigningKey::ed25519("ed-1")?;
    let jwks = JwksServer::start(&server_id, jwk_set(&[&rsa, &ec, &ed])).await?;
    let dir = tempfile::tempdir()?;
    let ca_file = pki.write_jwks_ca(dir.path())?;

    let app = upstream::http_app().await?;
    let mut config = ProxyConfig::new(app.port());
    config.client_auth = "off";
    config.extra = format!(
        "jwt:\n  providers:\n    main:\n      issuer: {ISSUER}\n      audiences: [flyteadmin]\n      algorithms: [RS256, ES256, EdDSA]\n      \
         jwks: {{url: {url}, caFile: {ca}, refreshIntervalSeconds: 3600, minRefetchIntervalSeconds: 1, maxStalenessSeconds: 4}}\n  \
         tokenSources: [{{header: authorization, prefix: 'Bearer '}}, {{header: flyte-authorization, prefix: 'Bearer '}}, {{cookie: tg}}]\n  \
         claimsToHeaders: {{sub: x-tollgate-sub, team: x-tollgate-team}}\n\
         routes: [{{pathPrefix: /healthz}}, {{pathPrefix: /, jwt: {{mode: required}}}}]\n",
        url = jwks.url(),
        ca = ca_file.display(),
    );
    let proxy = Proxy::start(&config, &server_id).await?;
    let ca = pki.ca.cert_pem();
    let http = client::reqwest(None, ca, proxy.inbound, false, false)?;
    let port = proxy.inbound;

    // Valid tokens of each key type reach the app with the claim headers;
    // headers the client set under those names are replaced or removed.
    for key in [&rsa, &ec, &ed] {
        let token = key.sign(&claims(json!({})));
        let a = client::get(
            &http,
            port,
            "/echo",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-tollgate-team", "platform-admins"),
            ],
        )
        .await?;
        ensure!(
            a.status == 200,
            "{:?} token refused: {} {}",
            key.alg,
            a.www_authenticate,
            a.body
        );
        let echoed: Value = serde_json::from_str(&a.body)?;
        ensure!(
            echoed["headers"]["x-tollgate-sub"] == "alice",
            "no sub header: {echoed}"
        );
        ensure!(
            echoed["headers"]["x-tollgate-team"] == "ml",
            "team header spoofed: {echoed}"
        );
    }
    let no_team = ec.sign(&claims(json!({"team": null})));
    let a = client::get(
        &http,
        port,
        "/echo",
        &[
            ("flyte-authorization", &format!("Bearer {no_team}")),
            ("x-tollgate-team", "platform-admins"),
        ],
    )
    .await?;
    let echoed: Value = serde_json::from_str(&a.body)?;
    // A null claim is no claim: the header is omitted, not the text "null".
    ensure!(
        a.status == 200 && echoed["headers"].get("x-tollgate-team").is_none(),
        "a spoofed or null claim header reached the app: {echoed}"
    );
    let cookie = client::get(
        &http,
        port,
        "/echo",
        &[(
            "cookie",
            &format!("a=b; tg={}", ec.sign(&claims(json!({})))),
        )],
    )
    .await?;
    ensure!(
        cookie.status == 200,
        "cookie token refused: {}",
        cookie.www_authenticate
    );

    // Each bad token, its own description.
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    refused(
        &http,
        port,
        &ec.sign(&claims(json!({"exp": now() - 3600}))),
        "token expired",
    )
    .await?;
    refused(
        &http,
        port,
        &ec.sign(&claims(json!({"nbf": now() + 3600}))),
        "token not yet valid",
    )
    .await?;
    refused(
        &http,
        port,
        &ec.sign(&claims(json!({"aud": "other"}))),
        "wrong audience",
    )
    .await?;
    refused(
        &http,
        port,
        &ec.sign(&claims(json!({"iss": "https://evil.test"}))),
        "unknown issuer",
    )
    .await?;
    let impostor = SigningKey::ec("ec-1")?;
    refused(
        &http,
        port,
        &impostor.sign(&claims(json!({}))),
        "bad signature",
    )
    .await?;
    let good = rsa.sign(&claims(json!({})));
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(claims(json!({"sub": "root"}))),
        parts[2]
    );
    refused(&http, port, &tampered, "bad signature").await?;
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(claims(json!({})))
    );
    refused(&http, port, &none, "alg none is not accepted").await?;
    // Algorithm confusion: HS256 keyed with the RSA public key.
    let confused = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims(json!({})),
        &jsonwebtoken::EncodingKey::from_secret(
            rsa.jwk["n"].as_str().unwrap_or_default().as_bytes(),
        ),
    )?;
    refused(&http, port, &confused, "algorithm HS256 is not allowed").await?;
    let huge = ec.sign(&claims(json!({"pad": "x".repeat(10_000)})));
    refused(&http, port, &huge, "token exceeds").await?;
    let missing = client::get(&http, port, "/echo", &[]).await?;
    ensure!(
        missing.status == 401 && missing.www_authenticate.starts_with("Bearer"),
        "no token: {} {:?}",
        missing.status,
        missing.www_authenticate
    );
    let health = client::get(&http, port, "/healthz", &[]).await?;
    ensure!(
        health.status == 200 && health.body == "ok",
        "the bypassed route did not reach the app: {} {}",
        health.status,
        health.body
    );

    // gRPC without a token: UNAUTHENTICATED.
    let grpc = client::reqwest(None, ca, port, true, false)?;
    let response = grpc
        .post(format!("https://localhost:{port}/tollgate.test.Echo/Unary"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(vec![0u8; 5])
        .send()
        .await?;
    let grpc_status = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure!(
        grpc_status == "16",
        "gRPC without a token: grpc-status {grpc_status:?}"
    );

    // Rotation: the JWKS gains a new key and tokens are signed with it
    // (once minRefetchIntervalSeconds has passed since the first fetch).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fetches_before = jwks.fetches();
    let rotated = SigningKey::ec("ec-2")?;
    jwks.replace(jwk_set(&[&rotated]));
    let a = client::get_with_token(&http, port, &rotated.sign(&claims(json!({})))).await?;
    ensure!(
        a.status == 200,
        "a token of the rotated key refused: {}",
        a.www_authenticate
    );
    ensure!(
        jwks.fetches() == fetches_before + 1,
        "expected exactly one refetch, saw {}",
        jwks.fetches() - fetches_before
    );

    // The JWKS goes down: the cached keys keep working until maxStaleness.
    jwks.stop();
    let down = Instant::now();
    let a = client::get_with_token(&http, port, &rotated.sign(&claims(json!({})))).await?;
    ensure!(
        a.status == 200,
        "cached keys not used while the JWKS is down: {}",
        a.www_authenticate
    );
    // An unknown kid while down: a refetch is tried, fails, the token is refused.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    refused(
        &http,
        port,
        &SigningKey::ec("ec-3")?.sign(&claims(json!({}))),
        "unknown signing key",
    )
    .await?;
    let stale_at = down + Duration::from_secs(5);
    tokio::time::sleep(stale_at.saturating_duration_since(Instant::now())).await;
    refused(
        &http,
        port,
        &rotated.sign(&claims(json!({}))),
        "signing keys unavailable",
    )
    .await?;

    let metrics = proxy.metrics().await?;
    for result in ["valid", "expired", "bad_signature", "bad_algorithm"] {
        ensure!(
            metrics.contains(&format!(
                "tollgate_jwt_validations_total{{result=\"{result}\"}}"
            )),
            "no {result} in /metrics"
        );
    }
    Ok(())
}

/// Issue 28: a token in the verified-token cache was accepted until its
/// `exp`, whatever happened to its key. The token here is the same string
/// every time (no unique `jti`), so the second request is a cache hit,
/// which `tollgate_jwt_cache_hits_total` shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_tokens_die_with_their_key_and_with_stale_keys() {
    if let Err(e) = cached_tokens().await {
        panic!("{e:#}");
    }
}

async fn cached_tokens() -> anyhow::Result<()> {
    const HITS: &str = "tollgate_jwt_cache_hits_total";
    let pki = Pki::new()?;
    let server_id = pki.workload("spiffe://cluster.local/ns/app/sa/app")?;
    let revoked = SigningKey::ec("revoked")?;
    let kept = SigningKey::ec("kept")?;
    let jwks = JwksServer::start(&server_id, jwk_set(&[&revoked, &kept])).await?;
    let dir = tempfile::tempdir()?;
    let ca_file = pki.write_jwks_ca(dir.path())?;
    let app = upstream::http_app().await?;
    let mut config = ProxyConfig::new(app.port());
    config.client_auth = "off";
    config.extra = format!(
        "jwt:\n  providers:\n    main:\n      issuer: {ISSUER}\n      algorithms: [ES256]\n      \
         jwks: {{url: {url}, caFile: {ca}, refreshIntervalSeconds: 1, minRefetchIntervalSeconds: 1, maxStalenessSeconds: 3}}\n\
         routes: [{{pathPrefix: /, jwt: {{mode: required}}}}]\n",
        url = jwks.url(),
        ca = ca_file.display(),
    );
    let proxy = Proxy::start(&config, &server_id).await?;
    let http = client::reqwest(None, pki.ca.cert_pem(), proxy.inbound, false, false)?;
    let port = proxy.inbound;
    let fixed =
        |key: &SigningKey| key.sign(&json!({"iss": ISSUER, "sub": "alice", "exp": now() + 600}));

    // Accepted twice, the second time from the cache.
    let token = fixed(&revoked);
    let hits = proxy.metric(HITS).await.unwrap_or(0.0);
    for _ in 0..2 {
        let a = client::get_with_token(&http, port, &token).await?;
        ensure!(a.status == 200, "refused: {}", a.www_authenticate);
    }
    ensure!(
        proxy.metric(HITS).await? == hits + 1.0,
        "the second request was not a cache hit"
    );

    // The key is revoked: after the next refresh the cached token is refused.
    jwks.replace(jwk_set(&[&kept]));
    wait_for_fetches(&jwks, 2).await?;
    refused(&http, port, &token, "unknown signing key").await?;

    // Staleness: another token, cached, then the endpoint goes down.
    let token = fixed(&kept);
    let hits = proxy.metric(HITS).await?;
    for _ in 0..2 {
        let a = client::get_with_token(&http, port, &token).await?;
        ensure!(a.status == 200, "refused: {}", a.www_authenticate);
    }
    ensure!(proxy.metric(HITS).await? == hits + 1.0, "no cache hit");
    jwks.stop();
    let down = Instant::now();
    loop {
        let a = client::get_with_token(&http, port, &token).await?;
        if a.status == 401 {
            ensure!(
                a.www_authenticate.contains("signing keys unavailable"),
                "refused for another cause: {}",
                a.www_authenticate
            );
            // maxStalenessSeconds (3) from the last good fetch, which was
            // at most one refresh interval (1 s) before the endpoint went.
            ensure!(
                down.elapsed() >= Duration::from_millis(1900),
                "refused {:?} after the endpoint went down, before the keys were stale",
                down.elapsed()
            );
            return Ok(());
        }
        ensure!(a.status == 200, "{} {}", a.status, a.www_authenticate);
        ensure!(
            down.elapsed() < Duration::from_secs(10),
            "the cached token is still accepted {:?} after its keys went stale",
            down.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the JWKS endpoint has served `more` further fetches: the
/// second one's start means the first one's answer has been stored (the
/// proxy fetches one at a time).
async fn wait_for_fetches(jwks: &JwksServer, more: usize) -> anyhow::Result<()> {
    let target = jwks.fetches() + more;
    let start = Instant::now();
    while jwks.fetches() < target {
        ensure!(
            start.elapsed() < Duration::from_secs(10),
            "the JWKS was not refetched"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
