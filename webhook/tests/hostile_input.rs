//! Hostile AdmissionReviews over real HTTPS: each case asserts the exact
//! status and a message naming the cause, and that the server still answers
//! a normal review afterwards.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::Server;
use serde_json::{Value, json};

const COMPLIANT: &str = include_str!("../testdata/pod-compliant.json");
const COMPLIANT_UID: &str = "0b4e6f55-8d1f-4a62-a1b8-3f1a9c2d7e10";
const MIB: usize = 1024 * 1024;

/// The server still answers a normal review, on both endpoints.
async fn assert_still_serving(server: &Server, after: &str) {
    for endpoint in ["/validate", "/mutate"] {
        let (status, body) = server.post(endpoint, COMPLIANT).await;
        assert_eq!(status, 200, "{endpoint} after {after}: {body}");
        assert_eq!(body["response"]["uid"], COMPLIANT_UID, "after {after}");
        assert_eq!(body["response"]["allowed"], true, "after {after}: {body}");
    }
}

/// A v1 AdmissionReview envelope around `request`.
fn review(request: Value) -> String {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": request,
    })
    .to_string()
}

/// The request the apiserver sends for creating `object` in `namespace`.
fn create(namespace: &str, object: &Value) -> Value {
    let mut request = tollgate_webhook::review::create_request_for(object);
    request["uid"] = json!("hostile-uid");
    request["namespace"] = json!(namespace);
    request["dryRun"] = json!(false);
    request
}

fn error(message: &str) -> Value {
    json!({ "error": message })
}

/// Posts `body` to `/validate` and `/mutate`, asserting the same status and
/// error on both, then that the server keeps serving.
async fn assert_refused(server: &Server, case: &str, body: String, status: u16, message: &str) {
    for endpoint in ["/validate", "/mutate"] {
        let (got, answer) = server.post(endpoint, body.clone()).await;
        assert_eq!(
            (got, answer),
            (status, error(message)),
            "{case} on {endpoint}"
        );
    }
    assert_still_serving(server, case).await;
}

#[tokio::test]
async fn truncated_json_is_400_naming_the_position() {
    let server = Server::start("").await;
    let whole = COMPLIANT.trim_end();
    for cut in [1, whole.len() / 3, whole.len() / 2, whole.len() - 1] {
        let truncated = &whole[..cut];
        let (status, answer) = server.post("/validate", truncated.to_owned()).await;
        assert_eq!(status, 400, "cut at {cut}");
        let message = answer["error"].as_str().unwrap();
        assert!(
            message.starts_with("body is not valid JSON: EOF while parsing"),
            "cut at {cut}: {message}"
        );
        assert_still_serving(&server, &format!("truncated at byte {cut}")).await;
    }
    assert_refused(
        &server,
        "truncated review",
        whole[..whole.len() - 1].to_owned(),
        400,
        &format!(
            "body is not valid JSON: EOF while parsing an object at line {} column 0",
            whole.lines().count()
        ),
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_body_over_max_body_bytes_is_413() {
    let server = Server::start("limits:\n  maxBodyBytes: 65536\n").await;
    let huge = format!("{{\"pad\": \"{}\"}}", "x".repeat(MIB));
    assert_refused(
        &server,
        "1 MiB body",
        huge,
        413,
        "request body exceeds the limit of 65536 bytes",
    )
    .await;
    // One byte over the limit; exactly at it is read (and then judged).
    let at_limit = format!("{{\"pad\": \"{}\"}}", "x".repeat(65536 - 11));
    assert_eq!(at_limit.len(), 65536);
    assert_refused(
        &server,
        "body at the limit",
        at_limit.clone(),
        400,
        "unsupported apiVersion \"\": expected \"admission.k8s.io/v1\"",
    )
    .await;
    assert_refused(
        &server,
        "body one byte over",
        format!("{at_limit} "),
        413,
        "request body exceeds the limit of 65536 bytes",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn deeply_nested_json_is_400_not_a_stack_overflow() {
    let server = Server::start("").await;
    let depth = 100_000;
    let bare = "[".repeat(depth);
    assert_refused(
        &server,
        "100,000 levels of [",
        bare.clone(),
        400,
        "body is not valid JSON: recursion limit exceeded at line 1 column 128",
    )
    .await;
    // Closed properly, and inside an otherwise valid review's object.
    let closed = format!("{}{}", bare, "]".repeat(depth));
    let prefix = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE","object":{"metadata":{"name":"deep"},"spec":"#;
    let nested = format!("{prefix}{closed}}}}}}}");
    // The parser is already 3 levels deep at the spec: the 125th `[` is
    // the 128th level.
    let column = prefix.len() + 125;
    assert_refused(
        &server,
        "nesting inside request.object",
        nested,
        400,
        &format!("body is not valid JSON: recursion limit exceeded at line 1 column {column}"),
    )
    .await;
    let objects = "{\"a\":".repeat(depth);
    assert_refused(
        &server,
        "100,000 levels of {",
        objects,
        400,
        "body is not valid JSON: recursion limit exceeded at line 1 column 636",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn wrong_types_are_400_naming_the_field() {
    let server = Server::start("").await;
    let pod: Value = serde_json::from_str::<Value>(COMPLIANT).unwrap()["request"].clone();

    let mut uid_number = pod.clone();
    uid_number["uid"] = json!(42);
    assert_refused(
        &server,
        "uid a number",
        review(uid_number),
        400,
        "AdmissionReview request.uid: must be a string",
    )
    .await;

    let mut object_string = pod.clone();
    object_string["object"] = json!("not an object");
    assert_refused(
        &server,
        "object a string",
        review(object_string),
        400,
        "AdmissionReview request.object: must be an object",
    )
    .await;

    let mut kind_string = pod.clone();
    kind_string["kind"] = json!("Pod");
    assert_refused(
        &server,
        "kind a string",
        review(kind_string),
        400,
        "AdmissionReview request.kind: must be an object with group, version and kind",
    )
    .await;

    let mut dry_run_string = pod.clone();
    dry_run_string["dryRun"] = json!("yes");
    assert_refused(
        &server,
        "dryRun a string",
        review(dry_run_string),
        400,
        "AdmissionReview request.dryRun: must be a boolean",
    )
    .await;

    assert_refused(
        &server,
        "request an array",
        review(json!([])),
        400,
        "AdmissionReview request.(request): must be an object",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_missing_or_empty_uid_is_400_naming_it() {
    let server = Server::start("").await;
    let mut request: Value = serde_json::from_str::<Value>(COMPLIANT).unwrap()["request"].clone();
    request.as_object_mut().unwrap().remove("uid");
    assert_refused(
        &server,
        "missing uid",
        review(request.clone()),
        400,
        "AdmissionReview request.uid: must be a string",
    )
    .await;
    request["uid"] = json!("");
    assert_refused(
        &server,
        "empty uid",
        review(request),
        400,
        "AdmissionReview request.uid: must not be empty",
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn an_unknown_kind_is_admitted_unpatched() {
    let server = Server::start("").await;
    let widget = json!({
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w", "namespace": "app-ml-team"},
        "spec": {"privileged": true, "image": "evil.example.org/x:latest"},
    });
    let body = review(create("app-ml-team", &widget));
    for endpoint in ["/validate", "/mutate"] {
        let (status, answer) = server.post(endpoint, body.clone()).await;
        assert_eq!(status, 200, "{endpoint}");
        assert_eq!(
            answer,
            json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {"uid": "hostile-uid", "allowed": true}
            }),
            "{endpoint}"
        );
    }
    assert_still_serving(&server, "an unknown kind").await;
    server.stop().await;
}

fn config_map(bytes: usize) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "big", "namespace": "app-ml-team"},
        "data": {"blob": "x".repeat(bytes)},
    })
}

#[tokio::test]
async fn a_10_mib_config_map_is_413_under_the_default_limit() {
    // The default limit is 8 MiB (README: over limits.maxBodyBytes is 413).
    let server = Server::start("").await;
    assert_refused(
        &server,
        "10 MiB ConfigMap",
        review(create("app-ml-team", &config_map(10 * MIB))),
        413,
        &format!("request body exceeds the limit of {} bytes", 8 * MIB),
    )
    .await;
    server.stop().await;
}

#[tokio::test]
async fn a_10_mib_config_map_within_a_raised_limit_is_admitted() {
    let server = Server::start("limits:\n  maxBodyBytes: 16777216\n").await;
    let body = review(create("app-ml-team", &config_map(10 * MIB)));
    assert!(body.len() > 10 * MIB);
    for endpoint in ["/validate", "/mutate"] {
        let (status, answer) = server.post(endpoint, body.clone()).await;
        assert_eq!(
            (status, answer),
            (
                200,
                json!({
                    "apiVersion": "admission.k8s.io/v1",
                    "kind": "AdmissionReview",
                    "response": {"uid": "hostile-uid", "allowed": true}
                })
            ),
            "{endpoint}"
        );
    }
    assert_still_serving(&server, "a 10 MiB ConfigMap").await;
    server.stop().await;
}

/// Mutates `object` in `namespace`, applies the returned patch to it, and
/// returns the patch and the result.
async fn mutate_and_apply(server: &Server, namespace: &str, object: &Value) -> (Value, Value) {
    let (status, body) = server
        .post("/mutate", review(create(namespace, object)))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["response"]["allowed"], true, "{body}");
    assert_eq!(body["response"]["patchType"], "JSONPatch", "{body}");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(body["response"]["patch"].as_str().unwrap())
        .unwrap();
    let patch_json: Value = serde_json::from_slice(&patch).unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut mutated = object.clone();
    json_patch::patch(&mut mutated, &patch).unwrap();
    // Mutating the result again changes nothing.
    let (_, again) = server
        .post("/mutate", review(create(namespace, &mutated)))
        .await;
    assert_eq!(again["response"]["allowed"], true, "{again}");
    assert!(again["response"].get("patch").is_none(), "{again}");
    (patch_json, mutated)
}

fn patch_paths(patch: &Value) -> Vec<&str> {
    patch
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["path"].as_str().unwrap())
        .collect()
}

fn unicode_labels() -> Value {
    json!({
        "app.kubernetes.io/name": "trainer",
        "a~b": "tilde",
        "ключ": "значение",
        "例え/ラベル": "値",
        "emoji-🚀": "✓",
        "rtl-\u{202e}": "\u{0}nul",
    })
}

#[tokio::test]
async fn unicode_and_escaped_label_keys_produce_applicable_patches() {
    // The team label key itself needs both RFC 6901 escapes.
    let server = Server::start("teams:\n  labelKey: tollgate.io/a~b\n").await;
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "ユニコード",
            "namespace": "app-ml-team",
            "labels": unicode_labels(),
            "annotations": {"a/b~c": "d", "注釈/キー": "🙂"},
        },
        "spec": {
            "containers": [{
                "name": "main",
                "image": "registry.k8s.io/pause:3.9",
                "resources": {"limits": {"nvidia.com/gpu": "1"}},
            }],
            "nodeSelector": {"kubernetes.io/arch": "amd64"},
        },
    });
    let (patch, mutated) = mutate_and_apply(&server, "app-ml-team", &pod).await;
    let paths = patch_paths(&patch);
    assert!(
        paths.contains(&"/metadata/labels/tollgate.io~1a~0b"),
        "{patch}"
    );
    assert!(
        paths.contains(&"/spec/nodeSelector/nvidia.com~1gpu.present"),
        "{patch}"
    );
    let mut labels = unicode_labels();
    labels["tollgate.io/a~b"] = json!("ml");
    assert_eq!(mutated["metadata"]["labels"], labels);
    assert_eq!(
        mutated["metadata"]["annotations"],
        pod["metadata"]["annotations"]
    );
    assert_eq!(
        mutated["spec"]["nodeSelector"],
        json!({"kubernetes.io/arch": "amd64", "nvidia.com/gpu.present": "true"})
    );
    assert_eq!(mutated["metadata"]["name"], "ユニコード");

    // A Deployment: the workload's labels and its template's both.
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d", "namespace": "app-ml-team", "labels": unicode_labels()},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "trainer"}},
            "template": {
                "metadata": {"labels": unicode_labels()},
                "spec": {"containers": [{"name": "main", "image": "registry.k8s.io/pause:3.9"}]},
            },
        },
    });
    let (patch, mutated) = mutate_and_apply(&server, "app-ml-team", &deployment).await;
    let paths = patch_paths(&patch);
    for path in [
        "/metadata/labels/tollgate.io~1a~0b",
        "/spec/template/metadata/labels/tollgate.io~1a~0b",
    ] {
        assert!(paths.contains(&path), "{path}: {patch}");
    }
    assert_eq!(mutated["metadata"]["labels"], labels);
    assert_eq!(mutated["spec"]["template"]["metadata"]["labels"], labels);

    // And validation of the unicode-labelled pod neither panics nor errs.
    let (status, body) = server
        .post("/validate", review(create("app-ml-team", &mutated)))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_still_serving(&server, "unicode labels").await;
    server.stop().await;
}

#[tokio::test]
async fn nesting_just_under_the_limit_is_judged_normally() {
    let server = Server::start("").await;
    let mut request: Value = serde_json::from_str::<Value>(COMPLIANT).unwrap()["request"].clone();
    // The review, request and object are 3 levels; 124 more make 127.
    let deep: Value =
        serde_json::from_str(&format!("{}1{}", "[".repeat(124), "]".repeat(124))).unwrap();
    request["object"]["deep"] = deep;
    let (status, body) = server.post("/validate", review(request.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["response"]["allowed"], true, "{body}");
    let (status, body) = server.post("/mutate", review(request)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["response"]["allowed"], true, "{body}");
    assert_still_serving(&server, "nesting at 127 levels").await;
    server.stop().await;
}

#[tokio::test]
async fn label_values_of_the_wrong_type_fail_closed() {
    let server = Server::start("").await;
    let mut request: Value = serde_json::from_str::<Value>(include_str!(
        "../testdata/pod-compliant.json"
    ))
    .unwrap()["request"]
        .clone();
    request["object"]["metadata"]["labels"] = json!({"team": 5, "app": null});
    let (status, body) = server.post("/validate", review(request.clone())).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["response"]["allowed"], false, "{body}");
    assert_eq!(body["response"]["status"]["code"], 403, "{body}");
    let message = body["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("[team_label] policy failed to evaluate: "),
        "{message}"
    );
    // Not a pod template the mutator can read: left for the apiserver,
    // which refuses it, to judge.
    let (status, body) = server.post("/mutate", review(request)).await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {"uid": COMPLIANT_UID, "allowed": true}
            })
        )
    );
    assert_still_serving(&server, "label values of the wrong type").await;
    server.stop().await;
}

/// A TLS connection to the server, trusting its CA, with nothing sent yet.
async fn tls_connect(server: &Server) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(server.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// A client that completes the TLS handshake and then sends nothing, or
/// dribbles the start of the h2 preface, is disconnected at
/// `limits.headerReadTimeoutMs`: hyper-util's HTTP/1-or-h2 detection has
/// no timeout of its own, so before the fix such a connection was held
/// forever (slowloris).
#[tokio::test]
async fn a_connection_that_sends_no_request_is_closed_at_the_header_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start("limits:\n  headerReadTimeoutMs: 500\n").await;
    for (case, sent) in [
        ("silent", &b""[..]),
        ("h2 preface dribble", &b"PRI * HT"[..]),
    ] {
        let mut tls = tls_connect(&server).await;
        tls.write_all(sent).await.unwrap();
        tls.flush().await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{case}: connection still open after 10 s"));
        let elapsed = started.elapsed();
        println!("{case}: closed after {elapsed:?} ({read:?})");
        assert!(matches!(read, Ok(0) | Err(_)), "{case}: {read:?}");
        assert!(elapsed >= Duration::from_millis(400), "{case}: {elapsed:?}");
    }
    assert_still_serving(&server, "connections that sent no request").await;
}
