//! Hostile input against the real `tollgate-proxy` binary: slowloris,
//! oversized heads, request smuggling, an h2 rapid-reset flood, WebSocket
//! frames over the cap and hostile JWTs. Each case asserts its exact outcome,
//! then that the proxy still serves a normal request and `/live` is 200.

use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tollgate_certs::reload::Material;
use tollgate_e2e::jwt::{JwksServer, SigningKey, jwk_set, now};
use tollgate_e2e::proxy::{Pki, Proxy, ProxyConfig, client, upstream};

const PROXY_ID: &str = "spiffe://cluster.local/ns/team-a/sa/workspace";
const CLIENT_ID: &str = "spiffe://cluster.local/ns/team-b/sa/notebook";

/// An HTTP/1.1 app that records `METHOD path` of every request it gets
/// (after reading its body) and answers 200 `ok`; `/slow*` answers after
/// 500 ms.
struct CountingApp {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
    /// `METHOD path cl=[…] te=[…] body=N`: the framing the app got.
    framing: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for CountingApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CountingApp {
    async fn start() -> CountingApp {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let framing = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let framing_log = framing.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let log = log.clone();
                let framing_log = framing_log.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        let framing_log = framing_log.clone();
                        async move {
                            let line = format!("{} {}", req.method(), req.uri().path());
                            let slow = req.uri().path().starts_with("/slow");
                            let values = |name| {
                                req.headers()
                                    .get_all(name)
                                    .iter()
                                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                                    .collect::<Vec<_>>()
                            };
                            let (cl, te) = (values("content-length"), values("transfer-encoding"));
                            let body = req.into_body().collect().await;
                            let body = body.map_or(usize::MAX, |b| b.to_bytes().len());
                            framing_log
                                .lock()
                                .unwrap()
                                .push(format!("{line} cl={cl:?} te={te:?} body={body}"));
                            log.lock().unwrap().push(line);
                            if slow {
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        CountingApp {
            port,
            seen,
            framing,
            task,
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    fn framing(&self) -> Vec<String> {
        self.framing.lock().unwrap().clone()
    }
}

struct Setup {
    proxy: Proxy,
    me: Material,
    ca: String,
}

async fn setup(app_port: u16, extra: &str) -> Setup {
    let pki = Pki::new().unwrap();
    let mut config = ProxyConfig::new(app_port);
    config.extra = extra.to_owned();
    let proxy = Proxy::start(&config, &pki.workload(PROXY_ID).unwrap())
        .await
        .unwrap();
    let me = pki.workload(CLIENT_ID).unwrap();
    let ca = me.ca_pem.clone().unwrap();
    Setup { proxy, me, ca }
}

impl Setup {
    fn tls(&self, alpn: &[&[u8]]) -> rustls::ClientConfig {
        client::tls_config(Some(&self.me), &self.ca, alpn).unwrap()
    }

    /// An h2 connection to the inbound listener with the h2 crate (which,
    /// unlike the proxy, does not cap what it sends), its driver spawned.
    async fn h2(
        &self,
    ) -> (
        h2::client::SendRequest<bytes::Bytes>,
        JoinHandle<Result<(), h2::Error>>,
    ) {
        let tls = client::connect(self.tls(&[b"h2"]), self.proxy.inbound_addr())
            .await
            .unwrap();
        let (send, conn) = h2::client::handshake(tls).await.unwrap();
        (send, tokio::spawn(conn))
    }

    /// A normal request over a new connection answers 200 and `/live` is 200.
    async fn still_serves(&self) {
        for h2 in [false, true] {
            let http =
                client::reqwest(Some(&self.me), &self.ca, self.proxy.inbound, h2, true).unwrap();
            let r = http
                .get(format!(
                    "https://localhost:{}/echo/after",
                    self.proxy.inbound
                ))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "h2={h2}");
        }
        assert_eq!(self.proxy.admin_get("/live").await.unwrap().0, 200);
    }

    /// Writes `bytes` on a new HTTP/1.1 TLS connection and reads until the
    /// proxy closes it (or 3 s pass): everything the proxy answered.
    async fn raw_h1(&self, bytes: &[u8]) -> String {
        let mut tls = client::connect(self.tls(&[b"http/1.1"]), self.proxy.inbound_addr())
            .await
            .unwrap();
        tls.write_all(bytes).await.unwrap();
        tls.flush().await.unwrap();
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut buf = [0u8; 4096];
        while let Ok(Ok(n)) = tokio::time::timeout_at(deadline.into(), tls.read(&mut buf)).await {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or_default()
}

/// Headers dribbled one byte every 100 ms: the proxy closes the connection
/// at `limits.headerReadTimeoutMs` (1 s here) and the app never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_at_the_header_read_timeout() {
    let app = CountingApp::start().await;
    let s = setup(app.port, "limits: {headerReadTimeoutMs: 1000}").await;
    let tls = client::connect(s.tls(&[b"http/1.1"]), s.proxy.inbound_addr())
        .await
        .unwrap();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        (start.elapsed(), String::from_utf8_lossy(&out).into_owned())
    });
    let head = b"GET /slowloris HTTP/1.1\r\nHost: localhost\r\nX-Dribble: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    for b in head {
        if reader.is_finished() || wr.write_all(&[*b]).await.is_err() || wr.flush().await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (closed_after, answer) = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("connection still open 5 s after the header read timeout")
        .unwrap();
    println!("slowloris: closed after {closed_after:?}, answer {answer:?}");
    assert!(
        closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(3),
        "closed after {closed_after:?}"
    );
    assert_eq!(answer, "", "no response is written to a slowloris client");
    assert!(app.seen().is_empty(), "{:?}", app.seen());
    s.still_serves().await;
    assert_eq!(app.seen(), ["GET /echo/after", "GET /echo/after"]);
}

/// A request head over `limits.maxHeaderBytes` (64 KiB by default): 431 on
/// HTTP/1.1; on h2 a 431 response on that stream; the app sees neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_headers_are_refused() {
    let app = CountingApp::start().await;
    let s = setup(app.port, "").await;
    let big = "x".repeat(70 * 1024);

    // HTTP/1.1, raw.
    let answer = s
        .raw_h1(format!("GET /big HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await;
    assert_eq!(
        status_line(&answer),
        "HTTP/1.1 431 Request Header Fields Too Large"
    );

    // h2, with the h2 crate (which, unlike the proxy, does not cap what it
    // sends).
    let (send, conn) = s.h2().await;
    let mut send = send.ready().await.unwrap();
    let req = Request::get(format!("https://localhost:{}/big", s.proxy.inbound))
        .header("x-big", big.as_str())
        .body(())
        .unwrap();
    let (response, _) = send.send_request(req, true).unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("no answer to an oversized h2 head");
    println!("h2 oversized head: {outcome:?}");
    assert_eq!(outcome.unwrap().status(), 431);
    // The connection itself survives: the next stream on it is served.
    let req = Request::get(format!("https://localhost:{}/small", s.proxy.inbound))
        .body(())
        .unwrap();
    let mut send = send.ready().await.unwrap();
    let (response, _) = send.send_request(req, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    drop(send);
    let _ = conn.await;

    assert_eq!(app.seen(), ["GET /small"]);
    s.still_serves().await;
}

/// An h2 head far over `limits.maxHeaderBytes` (a 200 KB header, sent as
/// a HEADERS frame and a dozen CONTINUATIONs) is refused on its stream
/// with 431, and the connection goes on serving: the h2 crate used to
/// close the whole connection (GOAWAY) once the block outgrew the header
/// list size the proxy announced, which was the limit itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_far_over_the_limit_costs_h2_only_its_stream() {
    let app = CountingApp::start().await;
    let s = setup(app.port, "").await;
    let (send, conn) = s.h2().await;
    for (size, expected) in [(200 * 1024, 431), (0, 200), (100 * 1024, 431), (0, 200)] {
        let mut send = send.clone().ready().await.unwrap();
        let mut req = Request::get(format!("https://localhost:{}/h{size}", s.proxy.inbound));
        if size > 0 {
            req = req.header("x-big", "x".repeat(size));
        }
        let (response, _) = send.send_request(req.body(()).unwrap(), true).unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), response)
            .await
            .unwrap_or_else(|_| panic!("no answer to a {size}-byte header"));
        assert_eq!(
            outcome
                .unwrap_or_else(|e| panic!("a {size}-byte header: {e:?}"))
                .status(),
            expected,
            "a {size}-byte header"
        );
    }
    drop(send);
    let _ = conn.await;
    assert_eq!(app.seen(), ["GET /h0", "GET /h0"]);
    s.still_serves().await;
}

/// A body over `limits.maxBodyBytes` is answered 413 over h2 as over
/// HTTP/1.1, declared or streamed, while the client (curl) is still
/// sending it. The proxy used to answer without reading on, and h2 reset
/// the stream under the upload: curl reported "Stream error in the HTTP/2
/// framing layer" and no 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_gets_its_413_over_h2_too() {
    let app = CountingApp::start().await;
    let s = setup(app.port, "limits: {maxBodyBytes: 4096}").await;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (cert, key, ca) = (
        file("client.crt", &s.me.cert_pem),
        file("client.key", &s.me.key_pem),
        file("ca.pem", &s.ca),
    );
    // Past the limit, within what is read on (twice the limit).
    let body = file("body", &"a".repeat(6_000));
    for protocol in ["--http2", "--http1.1"] {
        for chunked in [false, true] {
            for attempt in 0..10 {
                let mut curl = tokio::process::Command::new("curl");
                curl.args(["-sS", protocol, "--cacert"])
                    .arg(&ca)
                    .arg("--cert")
                    .arg(&cert)
                    .arg("--key")
                    .arg(&key);
                if chunked {
                    curl.args(["-H", "Transfer-Encoding: chunked"]);
                }
                let output = curl
                    .arg("--data-binary")
                    .arg(format!("@{}", body.display()))
                    .args(["-o", "/dev/null", "-w", "%{http_code}"])
                    .arg(format!("https://localhost:{}/upload", s.proxy.inbound))
                    .output()
                    .await
                    .unwrap();
                assert_eq!(
                    String::from_utf8_lossy(&output.stdout),
                    "413",
                    "{protocol}, chunked {chunked}, try {attempt}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
    }
    s.still_serves().await;
}

/// Ambiguous framing on HTTP/1.1, each followed by a smuggled second
/// request on the same connection:
/// - `Content-Length` with `Transfer-Encoding: chunked`: hyper follows RFC
///   9112 §6.3 (chunked wins, `Content-Length` is dropped) and closes the
///   connection after answering, so the bytes after the chunked body are
///   never read as a request. The app gets the first request, chunked,
///   with no `Content-Length`, and an empty body;
/// - two different `Content-Length`s, obs-fold, `Transfer-Encoding:
///   xchunked`: 400 and the connection closed, the app sees nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_smuggling_attempts_are_refused() {
    let app = CountingApp::start().await;
    let s = setup(app.port, "").await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let cl_and_te = format!(
        "POST /first HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
        5 + smuggled.len()
    );
    let answer = s.raw_h1(cl_and_te.as_bytes()).await;
    println!("content-length and transfer-encoding: {answer:?}");
    assert_eq!(status_line(&answer), "HTTP/1.1 200 OK");
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer:?}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "one answer only");
    assert_eq!(
        app.framing(),
        [r#"POST /first cl=[] te=["chunked"] body=0"#]
    );

    let refused = [
        (
            "two content-lengths",
            format!(
                "POST /first HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            ),
        ),
        (
            "obs-fold",
            format!(
                "POST /first HTTP/1.1\r\nHost: localhost\r\nX-Folded: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "transfer-encoding xchunked",
            format!(
                "POST /first HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
    ];
    for (name, request) in refused {
        let answer = s.raw_h1(request.as_bytes()).await;
        println!("{name}: {answer:?}");
        assert_eq!(status_line(&answer), "HTTP/1.1 400 Bad Request", "{name}");
        assert!(
            answer.contains("\r\nconnection: close\r\n"),
            "{name}: {answer:?}"
        );
        assert_eq!(
            answer.matches("HTTP/1.1 ").count(),
            1,
            "{name}: one answer only"
        );
    }
    assert_eq!(app.seen(), ["POST /first"]);
    s.still_serves().await;
    assert_eq!(
        app.seen(),
        ["POST /first", "GET /echo/after", "GET /echo/after"]
    );
}

/// Streams opened and reset at once, many times over one h2 connection:
/// h2 counts resets of streams not yet accepted and, past its bound, the
/// proxy answers GOAWAY ENHANCE_YOUR_CALM; the app sees a bounded share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_rapid_reset_flood_is_bounded() {
    let app = CountingApp::start().await;
    let s = setup(app.port, "").await;
    let (send, conn) = s.h2().await;
    let mut send = send.ready().await.unwrap();
    const FLOOD: usize = 10_000;
    let mut opened = 0;
    let mut stopped = None;
    for _ in 0..FLOOD {
        let req = Request::get(format!("https://localhost:{}/slow", s.proxy.inbound))
            .body(())
            .unwrap();
        match send.send_request(req, false) {
            Ok((_response, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                opened += 1;
            }
            Err(e) => {
                stopped = Some(e.to_string());
                break;
            }
        }
        match send.clone().ready().await {
            Ok(ready) => send = ready,
            Err(e) => {
                stopped = Some(e.to_string());
                break;
            }
        }
    }
    drop(send);
    let ended = tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("h2 connection still open after the flood")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let reached = app.seen().len();
    println!(
        "rapid reset: opened {opened}, stopped {stopped:?}, ended {ended:?}, app saw {reached}"
    );
    // The proxy ends the connection: GOAWAY ENHANCE_YOUR_CALM
    // ("too_many_resets"), or, when the client is still writing as the
    // proxy closes after its GOAWAY, a broken pipe.
    let e = ended.expect_err("the proxy should end the connection");
    assert!(
        (e.is_go_away() && e.is_remote() && e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM))
            || e.is_io(),
        "{e:?}"
    );
    assert!(opened < FLOOD, "opened {opened}");
    assert!(reached < opened, "app saw {reached} of {opened}");
    s.still_serves().await;
}

/// A WebSocket client's frames are held to `limits.maxWebSocketFrameBytes`
/// (1 MiB here): a 512 KiB frame passes both ways; a frame declaring 2 MiB
/// gets the client a close frame 1009 at once, and the proxy keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_over_the_cap_close_the_connection() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let app = upstream::http_app().await.unwrap();
    let s = setup(app.port(), "limits: {maxWebSocketFrameBytes: 1048576}").await;
    let tls = client::connect(s.tls(&[b"http/1.1"]), s.proxy.inbound_addr())
        .await
        .unwrap();
    let request = format!("wss://localhost:{}/ws", s.proxy.inbound)
        .into_client_request()
        .unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async(request, tls).await.unwrap();
    assert_eq!(response.status(), 101);
    let _hello = ws.next().await.unwrap().unwrap();
    let fits = Bytes::from(vec![0x5a; 512 << 10]);
    ws.send(Message::binary(fits.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(fits));

    // The head of a masked 2 MiB binary frame: the proxy refuses on the
    // declared length, before any payload, so none is sent.
    let mut head = vec![0x82, 0x80 | 127];
    head.extend((2u64 << 20).to_be_bytes());
    head.extend([1, 2, 3, 4]);
    let started = Instant::now();
    ws.get_mut().write_all(&head).await.unwrap();
    ws.get_mut().flush().await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the proxy answers an oversized frame within 10 s");
    match answer {
        Some(Ok(Message::Close(Some(frame)))) => {
            println!(
                "2 MiB frame: close {} {:?} after {:?}",
                u16::from(frame.code),
                frame.reason,
                started.elapsed()
            );
            assert_eq!(frame.code, CloseCode::Size);
        }
        other => panic!("expected close 1009, got {other:?}"),
    }
    s.still_serves().await;
}

/// A `kid` with path traversal is just an unknown key; a token over
/// `jwt.maxTokenBytes` is refused before parsing; one over the head limit
/// never reaches JWT validation (431).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_jwts_are_refused_precisely() {
    const ISSUER: &str = "https://issuer.tollgate.test";
    let app = CountingApp::start().await;
    let pki = Pki::new().unwrap();
    let server_id = pki
        .workload("spiffe://cluster.local/ns/app/sa/app")
        .unwrap();
    let good = SigningKey::rsa("rsa-1").unwrap();
    let jwks = JwksServer::start(&server_id, jwk_set(&[&good]))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = pki.write_jwks_ca(dir.path()).unwrap();
    let extra = format!(
        "jwt:\n  providers:\n    main:\n      issuer: {ISSUER}\n      audiences: [flyteadmin]\n      algorithms: [RS256]\n      \
         jwks: {{url: {url}, caFile: {ca}, refreshIntervalSeconds: 3600, minRefetchIntervalSeconds: 1}}\n\
         routes: [{{pathPrefix: /, jwt: {{mode: required}}}}]\n",
        url = jwks.url(),
        ca = ca_file.display(),
    );
    let s = setup(app.port, &extra).await;
    let http = client::reqwest(Some(&s.me), &s.ca, s.proxy.inbound, false, false).unwrap();
    let claims = serde_json::json!({"iss": ISSUER, "aud": "flyteadmin", "sub": "mallory", "exp": now() + 600});
    let send = |token: String| {
        let http = http.clone();
        let url = format!("https://localhost:{}/echo", s.proxy.inbound);
        async move {
            let r = http
                .get(url)
                .header("authorization", format!("Bearer {token}"))
                .send()
                .await
                .unwrap();
            let www = r
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            (r.status().as_u16(), www)
        }
    };

    let traversal = SigningKey::rsa("../../etc/passwd").unwrap();
    let (status, www) = send(traversal.sign(&claims)).await;
    println!("kid traversal: {status} {www}");
    assert_eq!(status, 401);
    assert!(
        www.contains(r#"error_description="unknown signing key '../../etc/passwd'""#),
        "{www}"
    );

    // 20 KiB: within the head limit, over maxTokenBytes (8192).
    let mut padded = claims.clone();
    padded["pad"] = "p".repeat(20 * 1024).into();
    let (status, www) = send(good.sign(&padded)).await;
    println!("20 KiB token: {status} {www}");
    assert_eq!(status, 401);
    assert!(
        www.contains(r#"error_description="token exceeds 8192 bytes""#),
        "{www}"
    );

    // 100 KiB: over maxHeaderBytes (64 KiB), refused by the HTTP layer
    // with 431 and a close. The proxy stops reading at the limit, so a
    // client still writing the rest of its head may get EPIPE or a reset
    // instead of reading the 431 (seen on a loaded machine); either way
    // the request never reaches the app (checked below).
    padded["pad"] = "p".repeat(100 * 1024).into();
    let big = http
        .get(format!("https://localhost:{}/echo", s.proxy.inbound))
        .header("authorization", format!("Bearer {}", good.sign(&padded)))
        .send()
        .await;
    match big {
        Ok(r) => {
            println!("100 KiB token: {}", r.status());
            assert_eq!(r.status(), 431);
        }
        Err(e) => {
            println!("100 KiB token: connection closed while sending ({e:?})");
            assert!(e.is_request() && !e.is_timeout(), "{e:?}");
        }
    }

    assert!(app.seen().is_empty(), "{:?}", app.seen());
    // Still serving: a valid token passes.
    let (status, _) = send(good.sign(&claims)).await;
    assert_eq!(status, 200);
    assert_eq!(app.seen(), ["GET /echo"]);
    assert_eq!(s.proxy.admin_get("/live").await.unwrap().0, 200);
}

/// Before the HTTP/1.1 header timeout can apply, hyper-util's auto builder
/// reads until it can tell HTTP/1.1 from the h2 preface, with no timeout of
/// its own: a client that sent nothing after the TLS handshake, or dribbled
/// `PRI * HTTP/2.0`, held its connection forever. (Failed before the fix in
/// `proxy/src/listener.rs`: both still open after 4 s.) Now closed at
/// `limits.headerReadTimeoutMs` when no request head has arrived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_or_preface_dribbling_connections_are_cut() {
    let app = CountingApp::start().await;
    let s = setup(app.port, "limits: {headerReadTimeoutMs: 1000}").await;
    type Case<'a> = (&'a str, &'a [u8], &'a [&'a [u8]]);
    let cases: [Case; 3] = [
        ("silent, ALPN http/1.1", b"", &[b"http/1.1"]),
        ("silent, ALPN h2", b"", &[b"h2"]),
        (
            "h2 preface dribbled",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n",
            &[b"http/1.1"],
        ),
    ];
    for (name, bytes, alpn) in cases {
        let tls = client::connect(s.tls(alpn), s.proxy.inbound_addr())
            .await
            .unwrap();
        let (mut rd, mut wr) = tokio::io::split(tls);
        let start = Instant::now();
        let reader = tokio::spawn(async move {
            let mut out = Vec::new();
            let _ = rd.read_to_end(&mut out).await;
            start.elapsed()
        });
        for b in bytes {
            if reader.is_finished() || wr.write_all(&[*b]).await.is_err() {
                break;
            }
            let _ = wr.flush().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let closed_after = tokio::time::timeout(Duration::from_secs(4), reader)
            .await
            .unwrap_or_else(|_| panic!("{name}: connection still open after 4 s"))
            .unwrap();
        println!("{name}: closed after {closed_after:?}");
        assert!(
            closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(3),
            "{name}: closed after {closed_after:?}"
        );
    }
    assert!(app.seen().is_empty(), "{:?}", app.seen());
    s.still_serves().await;
}
