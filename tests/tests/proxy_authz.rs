//! Authorization through the real `tollgate-proxy`, with the environment
//! the injector gives a workspace's proxy:
//!
//! - a workspace (the default profile, the token in a cookie): its owner
//!   and an admin get in, a teammate and a stranger get the 403 naming the
//!   rule class and no claim; a browser without a token is sent to the
//!   login URL with its own URL, an API client gets the 401; a WebSocket
//!   upgrade is decided as the page is;
//! - a Flyte-like gRPC service (tonic, h2c behind mTLS): a member of the
//!   team passes, a non-member gets PERMISSION_DENIED, a deny rule beats
//!   membership;
//! - every decision counted in `tollgate_authz_decisions_total`.

use std::time::Instant;

use anyhow::{Context as _, ensure};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tollgate_e2e::jwt::{JwksServer, SigningKey, jwk_set, now};
use tollgate_e2e::proxy::upstream::{FLYTE_ADMIN, Msg};
use tollgate_e2e::proxy::{Pki, Proxy, ProxyConfig, client, upstream};

const ISSUER: &str = "https://issuer.tollgate.test";
const LOGIN: &str = "https://login.tollgate.test/oauth2/start";

fn token(key: &SigningKey, user: &str, groups: &[&str]) -> String {
    key.sign(&json!({
        "iss": ISSUER, "aud": "tollgate", "sub": format!("id-{user}"),
        "preferred_username": user, "groups": groups,
        "exp": now() + 600, "jti": format!("{user}-{:?}", Instant::now()),
    }))
}

fn jwt_section(jwks: &JwksServer, ca: &std::path::Path, sources: &str, extra: &str) -> String {
    format!(
        "jwt:\n  providers:\n    corp:\n      issuer: {ISSUER}\n      audiences: [tollgate]\n      algorithms: [RS256]\n      \
         jwks: {{url: {url}, caFile: {ca}}}\n  tokenSources: {sources}\n{extra}",
        url = jwks.url(),
        ca = ca.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_through_the_proxy() {
    if let Err(e) = run().await {
        panic!("{e:#}");
    }
}

async fn run() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let server_id = pki.workload("spiffe://cluster.local/ns/app-ml-team/sa/workspace")?;
    let key = SigningKey::rsa("corp-1")?;
    let jwks = JwksServer::start(&server_id, jwk_set(&[&key])).await?;
    let dir = tempfile::tempdir()?;
    let ca_file = pki.write_jwks_ca(dir.path())?;
    workspace(&pki, &server_id, &key, &jwks, &ca_file).await?;
    flyte(&pki, &server_id, &key, &jwks, &ca_file).await?;
    Ok(())
}

/// A reqwest client that shows redirects rather than following them.
fn browser_like(ca: &str, port: u16) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(client::tls_config(None, ca, &[b"http/1.1"])?)
        .resolve(
            "localhost",
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        )
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

async fn workspace(
    pki: &Pki,
    server_id: &tollgate_certs::reload::Material,
    key: &SigningKey,
    jwks: &JwksServer,
    ca_file: &std::path::Path,
) -> anyhow::Result<()> {
    let app = upstream::http_app().await?;
    let mut config = ProxyConfig::new(app.port());
    config.client_auth = "off";
    config.env = vec![
        ("TOLLGATE_WORKSPACE_OWNER".into(), "ml-user-1".into()),
        ("TOLLGATE_TEAM".into(), "ml".into()),
    ];
    config.extra = jwt_section(
        jwks,
        ca_file,
        "[{cookie: tollgate_token}]",
        &format!("  browserLogin: {{url: '{LOGIN}', redirectParam: rd}}\n"),
    ) + "routes:\n\
         - {pathPrefix: /healthz}\n\
         - name: workspace\n  pathPrefix: /\n  jwt: {mode: required}\n  \
           authorization: {workspace: {adminGroups: [platform-admins]}}\n";
    let proxy = Proxy::start(&config, server_id).await?;
    let ca = pki.ca.cert_pem();
    let http = browser_like(ca, proxy.inbound)?;
    let port = proxy.inbound;
    let url = |path: &str| format!("https://localhost:{port}{path}");
    let cookie = |t: &str| format!("tollgate_token={t}");

    let owner = token(key, "ml-user-1", &["ml"]);
    let admin = token(key, "ops-1", &["platform-admins"]);
    let teammate = token(key, "ml-user-2", &["ml"]);
    let stranger = token(key, "data-user-7", &["data"]);
    for (who, t) in [("the owner", &owner), ("an admin", &admin)] {
        let r = http
            .get(url("/echo"))
            .header("cookie", cookie(t))
            .send()
            .await?;
        ensure!(r.status() == 200, "{who} was refused: {}", r.status());
    }
    for (who, t, name) in [
        ("a teammate (not shared)", &teammate, "ml-user-2"),
        ("a stranger", &stranger, "data-user-7"),
    ] {
        let r = http
            .get(url("/lab"))
            .header("cookie", cookie(t))
            .header("accept", "text/html")
            .send()
            .await?;
        let status = r.status();
        let reason = r.headers().get("x-tollgate-reason").cloned();
        let body = r.text().await?;
        ensure!(
            status == 403
                && reason.as_ref().is_some_and(|v| v == "authz-not-allowed")
                && body == "forbidden: no allow rule of route workspace matched\n"
                && !body.contains(name),
            "{who}: expected the 403 naming the rule class, got {status} {reason:?} {body:?}"
        );
    }

    // No token: a browser goes to log in and comes back here; an API
    // client gets the 401 it can act on.
    let r = http
        .get(url("/lab/tree?path=a%20b"))
        .header("accept", "text/html,application/xhtml+xml")
        .send()
        .await?;
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure!(
        r.status() == 302
            && location
                == format!(
                    "{LOGIN}?rd=https%3A%2F%2Flocalhost%3A{port}%2Flab%2Ftree%3Fpath%3Da%2520b"
                ),
        "a browser without a token: {} {location:?}",
        r.status()
    );
    let expired = key.sign(&json!({
        "iss": ISSUER, "aud": "tollgate", "sub": "id-ml-user-1",
        "preferred_username": "ml-user-1", "exp": now() - 3600,
    }));
    let r = http
        .get(url("/lab"))
        .header("cookie", cookie(&expired))
        .header("accept", "text/html")
        .send()
        .await?;
    ensure!(
        r.status() == 302,
        "a browser whose session expired is not sent to log in: {}",
        r.status()
    );
    let r = http
        .get(url("/api/contents"))
        .header("accept", "application/json")
        .send()
        .await?;
    ensure!(
        r.status() == 401 && r.headers()["x-tollgate-reason"] == "jwt-missing",
        "an API client without a token: {}",
        r.status()
    );

    // The WebSocket upgrade is decided as the page is.
    let ws = |t: Option<&str>| {
        let mut request = format!("wss://localhost:{port}/ws")
            .into_client_request()
            .unwrap();
        if let Some(t) = t {
            request
                .headers_mut()
                .insert("cookie", cookie(t).parse().unwrap());
        }
        async {
            let tls = client::connect(
                client::tls_config(None, ca, &[b"http/1.1"])?,
                proxy.inbound_addr(),
            )
            .await?;
            anyhow::Ok(match tokio_tungstenite::client_async(request, tls).await {
                Ok((_, response)) => response.status().as_u16(),
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    response.status().as_u16()
                }
                Err(e) => return Err(e.into()),
            })
        }
    };
    ensure!(ws(Some(&owner)).await? == 101, "the owner's WebSocket");
    ensure!(ws(Some(&stranger)).await? == 403, "a stranger's WebSocket");
    ensure!(ws(None).await? == 401, "a WebSocket without a token");

    let metrics = proxy.metrics().await?;
    for (sample, at_least) in [
        (
            "tollgate_authz_decisions_total{route=\"workspace\",decision=\"allow\",rule=\"owner\"}",
            2.0,
        ),
        (
            "tollgate_authz_decisions_total{route=\"workspace\",decision=\"allow\",rule=\"admin\"}",
            1.0,
        ),
        (
            "tollgate_authz_decisions_total{route=\"workspace\",decision=\"deny\",rule=\"no-allow-match\"}",
            3.0,
        ),
    ] {
        let value = tollgate_e2e::proxy::metric_value(&metrics, sample).unwrap_or(0.0);
        ensure!(value >= at_least, "{sample} = {value}, want >= {at_least}");
    }
    Ok(())
}

async fn flyte(
    pki: &Pki,
    server_id: &tollgate_certs::reload::Material,
    key: &SigningKey,
    jwks: &JwksServer,
    ca_file: &std::path::Path,
) -> anyhow::Result<()> {
    let app = upstream::grpc_app().await?;
    let mut config = ProxyConfig::new(app.port());
    config.app_protocol = "h2c";
    config.env = vec![("TOLLGATE_TEAM".into(), "ml".into())];
    let service = FLYTE_ADMIN.trim_end_matches('/');
    config.extra = jwt_section(
        jwks,
        ca_file,
        "[{header: authorization, prefix: 'Bearer '}]",
        "",
    ) + &format!(
        "routes:\n\
         - name: flyteadmin\n  pathPrefix: {service}\n  jwt: {{mode: required}}\n  \
           authorization:\n    rules:\n\
         \x20   - {{name: team, when: [{{claim: groups, contains: {{env: TOLLGATE_TEAM}}}}]}}\n\
         \x20   - {{name: no-project-deletes, action: deny, when: [{{path: {{exact: {service}/DeleteProject}}}}]}}\n"
    );
    let proxy = Proxy::start(&config, server_id).await?;
    let me = pki.workload("spiffe://cluster.local/ns/flyte/sa/flytepropeller")?;
    let channel = client::grpc_channel(&me, proxy.inbound).await?;
    let call = |method: &'static str, t: String| {
        let channel = channel.clone();
        async move {
            let mut grpc = tonic::client::Grpc::new(channel);
            grpc.ready().await?;
            let mut request = tonic::Request::new(Msg {
                n: 1,
                text: "list".into(),
            });
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse()?);
            let path: http::uri::PathAndQuery = format!("{FLYTE_ADMIN}{method}").parse()?;
            anyhow::Ok(
                grpc.unary(
                    request,
                    path,
                    tonic_prost::ProstCodec::<Msg, Msg>::default(),
                )
                .await,
            )
        }
    };
    let member = token(key, "ml-user-2", &["ml", "gpu-users"]);
    let outsider = token(key, "data-user-7", &["data"]);
    let ok = call("ListExecutions", member.clone()).await?;
    ensure!(ok.is_ok(), "a team member was refused: {:?}", ok.err());
    let refused = call("ListExecutions", outsider)
        .await?
        .err()
        .context("a non-member passed")?;
    ensure!(
        refused.code() == tonic::Code::PermissionDenied
            && refused.message() == "forbidden: no allow rule of route flyteadmin matched"
            && refused
                .metadata()
                .get("x-tollgate-reason")
                .is_some_and(|v| v == "authz-not-allowed"),
        "a non-member: {refused:?}"
    );
    let denied = call("DeleteProject", member)
        .await?
        .err()
        .context("a deny rule did not refuse a member")?;
    ensure!(
        denied.code() == tonic::Code::PermissionDenied
            && denied
                .metadata()
                .get("x-tollgate-reason")
                .is_some_and(|v| v == "authz-denied"),
        "a denied call: {denied:?}"
    );
    let metrics = proxy.metrics().await?;
    for sample in [
        "tollgate_authz_decisions_total{route=\"flyteadmin\",decision=\"allow\",rule=\"team\"} 1",
        "tollgate_authz_decisions_total{route=\"flyteadmin\",decision=\"deny\",rule=\"no-allow-match\"} 1",
        "tollgate_authz_decisions_total{route=\"flyteadmin\",decision=\"deny\",rule=\"no-project-deletes\"} 1",
    ] {
        ensure!(metrics.contains(sample), "{sample} missing from\n{metrics}");
    }
    Ok(())
}
