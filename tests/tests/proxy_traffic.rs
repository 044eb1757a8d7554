//! The real `tollgate-proxy` between real clients and real apps, all over
//! mTLS with certificates minted here: HTTP/1.1 and h2, identities, gRPC
//! in all four modes (one stream held open past 30 s), WebSocket, large
//! streamed bodies in bounded memory, error mapping, and the outbound
//! listener's mTLS origination.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::uri::PathAndQuery;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tollgate_e2e::ports::free_port;
use tollgate_e2e::proxy::client::{self, reqwest as https};
use tollgate_e2e::proxy::upstream::{self, BIDI, CLIENT_STREAM, Msg, SERVER_STREAM, UNARY};
use tollgate_e2e::proxy::{Pki, Proxy, ProxyConfig};

const PROXY_ID: &str = "spiffe://cluster.local/ns/team-a/sa/workspace";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/team-b/sa/notebook";
const FLYTE_ID: &str = "spiffe://cluster.local/ns/flyte/sa/flytepropeller";

fn echo_json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_h2_requests_pass_with_their_headers() {
    let pki = Pki::new().unwrap();
    let app = upstream::http_app().await.unwrap();
    let proxy = Proxy::start(
        &ProxyConfig::new(app.port()),
        &pki.workload(PROXY_ID).unwrap(),
    )
    .await
    .unwrap();
    let me = pki.workload(CLIENT_ID).unwrap();
    let ca = me.ca_pem.clone().unwrap();
    let url = format!("https://localhost:{}/echo?q=1", proxy.inbound);

    // HTTP/1.1
    let h1 = https(Some(&me), &ca, proxy.inbound, false, false).unwrap();
    let r = h1
        .get(&url)
        .header("origin", "https://workspace.example.com")
        .header("x-custom", "kept")
        .header("connection", "x-hop")
        .header("x-hop", "dropped")
        .header("x-forwarded-for", "10.1.2.3")
        .header("x-tollgate-peer-identity", "spiffe://spoofed/ns/x/sa/y")
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), http::Version::HTTP_11);
    assert_eq!(r.status(), 200);
    let seen = echo_json(&r.text().await.unwrap());
    let h = &seen["headers"];
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(h["host"], format!("localhost:{}", proxy.inbound));
    assert_eq!(h["origin"], "https://workspace.example.com");
    assert_eq!(h["x-custom"], "kept");
    assert!(h.get("x-hop").is_none(), "{h}");
    assert_eq!(h["x-forwarded-for"], "10.1.2.3, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["x-tollgate-peer-identity"], CLIENT_ID);

    // h2 (ALPN), translated to HTTP/1.1 for the app; Host from :authority.
    let h2 = https(Some(&me), &ca, proxy.inbound, true, false).unwrap();
    let r = h2.get(&url).send().await.unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let seen = echo_json(&r.text().await.unwrap());
    assert_eq!(seen["version"], "HTTP/1.1");
    assert_eq!(
        seen["headers"]["host"],
        format!("localhost:{}", proxy.inbound)
    );
    let r = h2
        .post(format!("https://localhost:{}/upload", proxy.inbound))
        .body(vec![7u8; 100_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "100000");

    let inbound = r#"{direction="inbound"}"#;
    assert!(
        proxy
            .metric(&format!("tollgate_proxy_requests_total{inbound}"))
            .await
            .unwrap()
            >= 3.0
    );
    assert!(
        proxy
            .metric(r#"tollgate_proxy_responses_total{direction="inbound",class="2xx"}"#)
            .await
            .unwrap()
            >= 3.0
    );
    assert!(
        proxy
            .metric(&format!("tollgate_proxy_request_bytes_total{inbound}"))
            .await
            .unwrap()
            >= 100_000.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identities_are_enforced() {
    let pki = Pki::new().unwrap();
    let app = upstream::http_app().await.unwrap();
    let mut config = ProxyConfig::new(app.port());
    config.extra =
        "routes:\n- pathPrefix: /admin/\n  allowedIdentities: [\"spiffe://cluster.local/ns/flyte/sa/*\"]\n"
            .to_owned();
    let proxy = Proxy::start(&config, &pki.workload(PROXY_ID).unwrap())
        .await
        .unwrap();
    let ca = pki.ca.cert_pem().to_owned();
    let team_b = pki.workload(CLIENT_ID).unwrap();
    let flyte = pki.workload(FLYTE_ID).unwrap();
    let base = format!("https://localhost:{}", proxy.inbound);

    // No client certificate on a `required` listener: refused in the handshake.
    let anonymous = https(None, &ca, proxy.inbound, false, false).unwrap();
    let err = anonymous
        .get(format!("{base}/echo"))
        .send()
        .await
        .expect_err("a client without a certificate must be refused");
    assert!(err.is_connect() || err.is_request(), "{err:?}");
    assert!(
        proxy
            .metric(r#"tollgate_proxy_tls_handshake_failures_total{direction="inbound"}"#)
            .await
            .unwrap()
            >= 1.0
    );

    // A certificate from another CA: refused too.
    let stranger_pki = Pki::new().unwrap();
    let stranger = stranger_pki.workload(FLYTE_ID).unwrap();
    let c = https(Some(&stranger), &ca, proxy.inbound, false, false).unwrap();
    assert!(c.get(format!("{base}/echo")).send().await.is_err());

    // An identity the route does not allow: 403 with the reason.
    let c = https(Some(&team_b), &ca, proxy.inbound, false, false).unwrap();
    let r = c.get(format!("{base}/admin/users")).send().await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-tollgate-reason"], "identity-not-allowed");
    assert!(r.text().await.unwrap().contains(CLIENT_ID));
    // The same peer elsewhere passes.
    let r = c.get(format!("{base}/echo")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // An allowed identity reaches the app (which has no /admin/users: 404
    // from the app, without a reason header).
    let c = https(Some(&flyte), &ca, proxy.inbound, true, false).unwrap();
    let r = c.get(format!("{base}/admin/users")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers().get("x-tollgate-reason").is_none());

    // An `optional` listener lets a client without a certificate in, but
    // not onto a route with an allow-list.
    config.client_auth = "optional";
    let optional = Proxy::start(&config, &pki.workload(PROXY_ID).unwrap())
        .await
        .unwrap();
    let anonymous = https(None, &ca, optional.inbound, false, false).unwrap();
    let base = format!("https://localhost:{}", optional.inbound);
    let r = anonymous.get(format!("{base}/echo")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = anonymous
        .get(format!("{base}/admin/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.headers()["x-tollgate-reason"], "identity-required");
}

async fn grpc(
    channel: &tonic::transport::Channel,
) -> tonic::client::Grpc<tonic::transport::Channel> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    grpc
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streams_with_one_held_open_past_30s() {
    let pki = Pki::new().unwrap();
    let app = upstream::grpc_app().await.unwrap();
    let mut config = ProxyConfig::new(app.port());
    config.app_protocol = "h2c";
    let proxy = Proxy::start(&config, &pki.workload(PROXY_ID).unwrap())
        .await
        .unwrap();
    let me = pki.workload(CLIENT_ID).unwrap();
    let channel = client::grpc_channel(&me, proxy.inbound).await.unwrap();

    // Unary, and an error status from the app passing through intact.
    let r = grpc(&channel)
        .await
        .unary(
            tonic::Request::new(msg(41, "hi")),
            PathAndQuery::from_static(UNARY),
            codec(),
        )
        .await
        .unwrap();
    assert_eq!(r.into_inner(), msg(42, "hi"));
    let status = grpc(&channel)
        .await
        .unary(
            tonic::Request::new(msg(0, "fail")),
            PathAndQuery::from_static(UNARY),
            codec(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(status.message(), "asked to fail");

    // Server streaming.
    let mut stream = grpc(&channel)
        .await
        .server_streaming(
            tonic::Request::new(msg(100, "s")),
            PathAndQuery::from_static(SERVER_STREAM),
            codec(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        got.push(m.n);
    }
    assert_eq!(got, (0..100).collect::<Vec<_>>());

    // Client streaming.
    let outgoing = futures_util::stream::iter((1..=50).map(|n| msg(n, "c")));
    let r = grpc(&channel)
        .await
        .client_streaming(
            tonic::Request::new(outgoing),
            PathAndQuery::from_static(CLIENT_STREAM),
            codec(),
        )
        .await
        .unwrap();
    assert_eq!(r.into_inner(), msg(1275, "50"));

    // Bidi, held open for 33 s with a message every 3 s: no default
    // timeout of the proxy may cut it.
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(4);
    let outgoing =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let mut incoming = grpc(&channel)
        .await
        .streaming(
            tonic::Request::new(outgoing),
            PathAndQuery::from_static(BIDI),
            codec(),
        )
        .await
        .unwrap()
        .into_inner();
    let start = Instant::now();
    let mut n = 0;
    while start.elapsed() < Duration::from_secs(33) {
        tx.send(msg(n, "bidi")).await.unwrap();
        let echoed = incoming
            .message()
            .await
            .unwrap()
            .expect("stream ended early");
        assert_eq!(echoed, msg(n, "bidi"));
        n += 1;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    drop(tx);
    assert!(incoming.message().await.unwrap().is_none());
    assert!(n >= 11, "{n}");
    assert!(start.elapsed() >= Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_keeps_host_and_origin_and_stays_open() {
    let pki = Pki::new().unwrap();
    let app = upstream::http_app().await.unwrap();
    let proxy = Proxy::start(
        &ProxyConfig::new(app.port()),
        &pki.workload(PROXY_ID).unwrap(),
    )
    .await
    .unwrap();
    let me = pki.workload(CLIENT_ID).unwrap();
    let ca = me.ca_pem.clone().unwrap();
    // Browsers speak WebSocket over HTTP/1.1 (ALPN http/1.1).
    let tls = client::connect(
        client::tls_config(Some(&me), &ca, &[b"http/1.1"]).unwrap(),
        proxy.inbound_addr(),
    )
    .await
    .unwrap();
    let mut request = format!("wss://localhost:{}/ws", proxy.inbound)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "origin",
        http::HeaderValue::from_static("https://code.team-a.example.com"),
    );
    let (mut ws, response) = tokio_tungstenite::client_async(request, tls).await.unwrap();
    assert_eq!(response.status(), 101);

    let first = ws.next().await.unwrap().unwrap();
    let seen = echo_json(first.to_text().unwrap());
    assert_eq!(seen["host"], format!("localhost:{}", proxy.inbound));
    assert_eq!(seen["origin"], "https://code.team-a.example.com");
    assert_eq!(
        proxy
            .metric(r#"tollgate_proxy_upgraded_connections{direction="inbound"}"#)
            .await
            .unwrap(),
        1.0
    );

    // Messages both ways, with idle pauses in between, for about 12 s.
    for i in 0..4 {
        let text = format!("message {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
        let big = Bytes::from(vec![i as u8; 1 << 20]);
        ws.send(Message::binary(big.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    ws.close(None).await.unwrap();
    assert!(
        proxy
            .metric(r#"tollgate_proxy_request_bytes_total{direction="inbound"}"#)
            .await
            .unwrap()
            >= 4.0 * (1 << 20) as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_in_bounded_memory() {
    const SIZE: u64 = 128 * 1024 * 1024;
    let pki = Pki::new().unwrap();
    let app = upstream::http_app().await.unwrap();
    let proxy = Proxy::start(
        &ProxyConfig::new(app.port()),
        &pki.workload(PROXY_ID).unwrap(),
    )
    .await
    .unwrap();
    let me = pki.workload(CLIENT_ID).unwrap();
    let ca = me.ca_pem.clone().unwrap();
    let (rss_before, _) = proxy.memory_kib().unwrap();

    // Upload over HTTP/1.1, chunked, generated as it is sent.
    let chunk = Bytes::from(vec![b'u'; 256 * 1024]);
    let chunks = (SIZE / chunk.len() as u64) as usize;
    let body =
        futures_util::stream::iter(std::iter::repeat_n(chunk, chunks).map(Ok::<_, std::io::Error>));
    let h1 = https(Some(&me), &ca, proxy.inbound, false, false).unwrap();
    let r = h1
        .post(format!("https://localhost:{}/upload", proxy.inbound))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), SIZE.to_string());

    // Download over h2, read as it arrives.
    let h2 = https(Some(&me), &ca, proxy.inbound, true, false).unwrap();
    let mut r = h2
        .get(format!(
            "https://localhost:{}/download?bytes={SIZE}",
            proxy.inbound
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut received = 0u64;
    while let Some(chunk) = r.chunk().await.unwrap() {
        received += chunk.len() as u64;
    }
    assert_eq!(received, SIZE);

    let (rss_after, peak) = proxy.memory_kib().unwrap();
    eprintln!("proxy RSS: {rss_before} KiB before, {rss_after} KiB after, peak {peak} KiB");
    // 256 MiB went through; buffering even one body whole would show.
    assert!(
        peak < rss_before + 48 * 1024,
        "peak RSS {peak} KiB vs {rss_before} KiB before the transfers"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_map_to_statuses_and_grpc_codes() {
    let pki = Pki::new().unwrap();
    let me = pki.workload(CLIENT_ID).unwrap();
    let ca = me.ca_pem.clone().unwrap();

    // Nothing listens on the app port: 503, and UNAVAILABLE for gRPC.
    let dead = Proxy::start(
        &ProxyConfig::new(free_port().unwrap()),
        &pki.workload(PROXY_ID).unwrap(),
    )
    .await
    .unwrap();
    let c = https(Some(&me), &ca, dead.inbound, false, false).unwrap();
    let r = c
        .get(format!("https://localhost:{}/echo", dead.inbound))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-tollgate-reason"], "upstream-unavailable");
    let channel = client::grpc_channel(&me, dead.inbound).await.unwrap();
    let status = grpc(&channel)
        .await
        .unary(
            tonic::Request::new(msg(1, "x")),
            PathAndQuery::from_static(UNARY),
            codec(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("unavailable"), "{status:?}");

    // A slow app with a response-headers timeout: 504; a body over the cap: 413.
    let app = upstream::http_app().await.unwrap();
    let mut config = ProxyConfig::new(app.port());
    config.extra = "timeouts: {responseHeadersMs: 300}\nlimits: {maxBodyBytes: 1000}\n".into();
    let proxy = Proxy::start(&config, &pki.workload(PROXY_ID).unwrap())
        .await
        .unwrap();
    let c = https(Some(&me), &ca, proxy.inbound, false, false).unwrap();
    let base = format!("https://localhost:{}", proxy.inbound);
    let r = c.get(format!("{base}/slow?ms=2000")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert_eq!(r.headers()["x-tollgate-reason"], "upstream-timeout");
    let r = c
        .post(format!("{base}/upload"))
        .body(vec![0u8; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["x-tollgate-reason"], "body-too-large");
    let r = c
        .post(format!("{base}/upload"))
        .body(vec![0u8; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "1000");
    assert!(
        proxy
            .metric(r#"tollgate_proxy_responses_total{direction="inbound",class="5xx"}"#)
            .await
            .unwrap()
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_originates_mtls_to_the_expected_identity() {
    let pki = Pki::new().unwrap();
    let app = upstream::http_app().await.unwrap();
    // The peer: another proxy in front of the app, requiring mTLS.
    let peer = Proxy::start(
        &ProxyConfig::new(app.port()),
        &pki.workload(FLYTE_ID).unwrap(),
    )
    .await
    .unwrap();
    // The workspace's proxy: its outbound listener sends `flyteadmin.flyte.svc`
    // to the peer (expecting the peer's SPIFFE ID) and `impostor.svc` to the
    // same peer while expecting another identity.
    let mut config = ProxyConfig::new(free_port().unwrap());
    config.extra = format!(
        "outbound:\n  upstreams:\n\
         \x20 - host: flyteadmin.flyte.svc\n    address: 127.0.0.1:{port}\n    serverName: localhost\n    identities: [\"spiffe://cluster.local/ns/flyte/sa/*\"]\n\
         \x20 - host: impostor.svc\n    address: 127.0.0.1:{port}\n    serverName: localhost\n    identities: [\"spiffe://cluster.local/ns/flyte/sa/flyteadmin\"]\n",
        port = peer.inbound
    );
    let workspace = Proxy::start(&config, &pki.workload(PROXY_ID).unwrap())
        .await
        .unwrap();
    let outbound = format!("http://127.0.0.1:{}", workspace.outbound);

    for h2c in [false, true] {
        let mut builder = reqwest::Client::builder().no_proxy();
        builder = if h2c {
            builder.http2_prior_knowledge()
        } else {
            builder.http1_only()
        };
        let c = builder.build().unwrap();
        let r = c
            .get(format!("{outbound}/echo"))
            .header("host", "flyteadmin.flyte.svc")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "h2c: {h2c}");
        let seen = echo_json(&r.text().await.unwrap());
        // The peer verified the workspace proxy's client certificate.
        assert_eq!(seen["headers"]["x-tollgate-peer-identity"], PROXY_ID);
        assert_eq!(seen["headers"]["host"], "flyteadmin.flyte.svc");
        assert_eq!(seen["headers"]["x-forwarded-for"], "127.0.0.1, 127.0.0.1");

        let r = c
            .get(format!("{outbound}/echo"))
            .header("host", "impostor.svc")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 502);
        assert_eq!(r.headers()["x-tollgate-reason"], "upstream-tls");

        let r = c
            .get(format!("{outbound}/echo"))
            .header("host", "unknown.svc")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        assert_eq!(r.headers()["x-tollgate-reason"], "no-upstream");
    }
}
