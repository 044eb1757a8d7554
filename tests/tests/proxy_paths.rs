//! Path tricks through the real `tollgate-proxy` (issue 28): before the fix,
//! every route table matched `starts_with` on the raw path and forwarded it
//! unchanged, and 11 of the 12 tricks below reached an app that decodes
//! and resolves paths as most frameworks do, past the check meant for the
//! path it resolved.
//!
//! Each path must be refused, or normalised and then checked; and
//! whatever reaches the app must be a fixed point of the app's own
//! resolution (the app routes on exactly the path the proxy checked).
//! The corpus: the issue's twelve, plus encoded-dot, mixed-case escape,
//! backslash and `..;` variants in the style of Envoy's path-normalisation
//! tests and OWASP's path-traversal lists.

use anyhow::{bail, ensure};
use serde_json::{Value, json};
use tollgate_e2e::jwt::{SigningKey, jwk_set, now};
use tollgate_e2e::proxy::{Pki, Proxy, ProxyConfig, client, upstream};

const ISSUER: &str = "https://issuer.tollgate.test";
const ADMIN_ID: &str = "spiffe://cluster.local/ns/flyte/sa/propeller";
const OTHER_ID: &str = "spiffe://cluster.local/ns/team-a/sa/default";

/// What a path must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// 400 `bad-path`: refused by normalisation.
    BadPath,
    /// 403: normalised onto `/admin/…`, whose allow-list refuses the peer.
    Forbidden,
    /// 401: normalised off the `/healthz` bypass onto a required route.
    Unauthenticated,
    /// 200 from the app, which resolved it to this path.
    App(&'static str),
}

use Expect::*;

/// With a valid token, as a peer the `/admin/` route does not allow.
const WRONG_IDENTITY: &[(&str, Expect)] = &[
    // The issue's six.
    ("/%61dmin/x", Forbidden),
    ("//admin/x", Forbidden),
    ("/./admin/x", Forbidden),
    ("/x/../admin/x", Forbidden),
    ("/admin%2fx", BadPath),
    ("/ADMIN/x/../../admin/x", Forbidden),
    // Encoded dots and mixed forms.
    ("/%2e/admin/x", Forbidden),
    ("/x/%2e%2e/admin/x", Forbidden),
    ("/x/%2E%2e/admin/x", Forbidden),
    ("/x/.%2e/admin/x", Forbidden),
    ("/%2fadmin/x", BadPath),
    ("/x/..%2fadmin/x", BadPath),
    ("/x/..%5cadmin/x", BadPath),
    ("/..%5c..%5cadmin/x", BadPath),
    ("/x/..;/admin/x", BadPath),
    ("/x/.%00./admin/x", BadPath),
    ("/%41%44%4d%49%4e/../admin/x", Forbidden),
    ("///admin///x", Forbidden),
    ("/admin", Forbidden),
    ("/admin/", Forbidden),
    // Controls: what the route does not cover passes, decoded.
    ("/administrator", App("/administrator")),
    ("/public/%7euser/./x", App("/public/~user/x")),
    ("/adm%69n2/x", App("/admin2/x")),
];

/// Without any token: `/healthz` is the only bypass.
const NO_TOKEN: &[(&str, Expect)] = &[
    // The issue's five.
    ("/healthz/../data", Unauthenticated),
    ("/healthz/%2e%2e/data", Unauthenticated),
    ("/healthz%2f..%2fdata", BadPath),
    ("/healthz/..%2fdata", BadPath),
    ("/healthzX", Unauthenticated),
    // Encoded dots and mixed forms.
    ("/healthz/.%2e/data", Unauthenticated),
    ("/healthz/%2E./data", Unauthenticated),
    ("/healthz/%2e%2E/%2e%2e/data", Unauthenticated),
    ("/healthz/./../data", Unauthenticated),
    ("/healthz//../../data", Unauthenticated),
    ("/healthz/..%5cdata", BadPath),
    ("/healthz/..;/data", BadPath),
    ("/healthz/%2e%2e%2fdata", BadPath),
    ("/healthz%00/../data", BadPath),
    ("/healthz/%zz", BadPath),
    ("/%68ealthz/../data", Unauthenticated),
    // Controls: the bypass itself, normalised forms of it.
    ("/healthz", App("/healthz")),
    ("/healthz/", App("/healthz/")),
    ("/healthz/live", App("/healthz/live")),
    ("/%68ealthz/./live", App("/healthz/live")),
    ("/x/../healthz", App("/healthz")),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_tricks_are_refused_or_normalised_then_checked() {
    if let Err(e) = run().await {
        panic!("{e:#}");
    }
}

async fn run() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let server_id = pki.workload("spiffe://cluster.local/ns/app/sa/app")?;
    let admin = pki.workload(ADMIN_ID)?;
    let other = pki.workload(OTHER_ID)?;
    let key = SigningKey::ec("ec-1")?;
    let dir = tempfile::tempdir()?;
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, jwk_set(&[&key]))?;

    let app = upstream::path_app().await?;
    let mut config = ProxyConfig::new(app.port());
    config.extra = format!(
        "routes:\n\
         - pathPrefix: /admin/\n  allowedIdentities: [\"spiffe://cluster.local/ns/flyte/sa/*\"]\n  jwt: {{mode: required}}\n\
         - pathPrefix: /healthz\n\
         - pathPrefix: /\n  jwt: {{mode: required}}\n\
         jwt:\n  providers:\n    main:\n      issuer: {ISSUER}\n      algorithms: [ES256]\n      \
         jwks: {{file: {jwks}}}\n",
        jwks = jwks.display(),
    );
    let proxy = Proxy::start(&config, &server_id).await?;
    let ca = pki.ca.cert_pem();
    let token = key.sign(&json!({"iss": ISSUER, "sub": "alice", "exp": now() + 600}));
    let bearer = format!("Bearer {token}");
    let authorization = [("authorization", bearer.as_str())];

    // The admin route is reachable for the identity it allows, so the
    // 403s below are the allow-list's doing.
    let allowed =
        client::raw_get(Some(&admin), ca, proxy.inbound, "/admin/x", &authorization).await?;
    ensure!(
        allowed.status == 200,
        "the allowed peer: {} {}",
        allowed.status,
        allowed.body
    );

    let mut failures = Vec::new();
    for (cases, headers, what) in [
        (
            WRONG_IDENTITY,
            &authorization[..],
            "a valid token, the wrong identity",
        ),
        (NO_TOKEN, &[][..], "no token"),
    ] {
        for &(path, expect) in cases {
            let a = client::raw_get(Some(&other), ca, proxy.inbound, path, headers).await?;
            if let Err(e) = judge(path, expect, a.status, &a.body) {
                failures.push(format!("{what}: {e}"));
            }
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} paths:\n{}\n--- proxy log ---\n{}",
            failures.len(),
            WRONG_IDENTITY.len() + NO_TOKEN.len(),
            failures.join("\n"),
            proxy.log_text()
        );
    }
    let metrics = proxy.metrics().await?;
    ensure!(
        metrics.contains(r#"tollgate_proxy_responses_total{direction="inbound",class="4xx"}"#),
        "no 4xx counted"
    );
    Ok(())
}

fn judge(path: &str, expect: Expect, status: u16, body: &str) -> anyhow::Result<()> {
    let seen: Option<Value> = (status == 200)
        .then(|| serde_json::from_str(body).ok())
        .flatten();
    if let Some(seen) = &seen {
        // Whatever reaches the app is a fixed point of its resolution: it
        // routes on the very path the proxy checked.
        ensure!(
            seen["raw"] == seen["resolved"],
            "{path:?}: the app received {} and resolved it to {}",
            seen["raw"],
            seen["resolved"]
        );
        let resolved = seen["resolved"].as_str().unwrap_or_default();
        ensure!(
            !(resolved == "/admin" || resolved.starts_with("/admin/")),
            "{path:?} reached the app as {resolved} past the /admin/ allow-list"
        );
    }
    let ok = match expect {
        BadPath => status == 400 && body.contains("bad path"),
        Forbidden => status == 403,
        Unauthenticated => status == 401,
        App(resolved) => seen.as_ref().is_some_and(|s| s["resolved"] == resolved),
    };
    ensure!(ok, "{path:?}: expected {expect:?}, got {status} {body}");
    Ok(())
}
