//! The admission server over real HTTPS: a rustls server in-process, and
//! real clients (reqwest, curl) speaking to it on loopback.

mod common;

use common::Server;
use serde_json::{Value, json};

const COMPLIANT: &str = include_str!("../testdata/pod-compliant.json");
const PRIVILEGED: &str = include_str!("../testdata/pod-privileged.json");

fn review_in(namespace: &str, review: &str) -> String {
    let mut v: Value = serde_json::from_str(review).unwrap();
    v["request"]["namespace"] = json!(namespace);
    v.to_string()
}

#[tokio::test]
async fn a_compliant_pod_is_allowed_and_the_uid_echoed() {
    let server = Server::start("").await;
    let (status, body) = server.post("/validate", COMPLIANT).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {"uid": "0b4e6f55-8d1f-4a62-a1b8-3f1a9c2d7e10", "allowed": true}
        })
    );
    server.stop().await;
}

#[tokio::test]
async fn a_denial_names_every_violated_policy() {
    let server = Server::start("").await;
    let (status, body) = server.post("/validate", PRIVILEGED).await;
    assert_eq!(status, 200);
    let response = &body["response"];
    assert_eq!(response["uid"], "7c2a1f3e-52d4-4c1b-9e0a-6b8d4f2c1a99");
    assert_eq!(response["allowed"], false);
    assert_eq!(response["status"]["code"], 403);
    assert_eq!(
        response["status"]["message"],
        "[allowed_registries] container \"shell\" image \"evil.example.org/tools/shell:latest\" is not from an allowed registry (allowed: registry.k8s.io/, ghcr.io/, quay.io/, docker.io/library/)\n\
         [image_tag] container \"shell\" image \"evil.example.org/tools/shell:latest\" uses the mutable tag \"latest\"; pin a version or a digest\n\
         [privileged] violates PodSecurity \"baseline:latest\": privileged (container \"shell\" must not set securityContext.privileged=true)"
    );
    server.stop().await;
}

#[tokio::test]
async fn warn_mode_admits_with_warnings_and_dryrun_only_logs() {
    let server = Server::start(
        "policies:\n  overrides:\n    image_tag: {enforcement: warn}\n    allowed_registries: {enforcement: dryrun}\n    privileged: {enforcement: warn}\n",
    )
    .await;
    let (status, body) = server.post("/validate", PRIVILEGED).await;
    assert_eq!(status, 200);
    assert_eq!(body["response"]["allowed"], true);
    assert_eq!(
        body["response"]["warnings"],
        json!([
            "[image_tag] container \"shell\" image \"evil.example.org/tools/shell:latest\" uses the mutable tag \"latest\"; pin a version or a digest",
            "[privileged] violates PodSecurity \"baseline:latest\": privileged (container \"shell\" must not set securityContext.privileged=true)"
        ])
    );
    let (_, metrics) = server.get("/metrics").await;
    assert!(
        metrics.contains(
            "tollgate_policy_violations_total{policy=\"allowed_registries\",enforcement=\"dryrun\"} 1"
        ),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test]
async fn exempt_namespaces_are_admitted_unevaluated() {
    let server = Server::start("ownNamespace: tollgate-system\n").await;
    for namespace in ["kube-system", "tollgate-system"] {
        let (status, body) = server
            .post("/validate", review_in(namespace, PRIVILEGED))
            .await;
        assert_eq!(
            (status, &body["response"]["allowed"]),
            (200, &json!(true)),
            "{namespace}"
        );
    }
    let (_, body) = server
        .post("/validate", review_in("default", PRIVILEGED))
        .await;
    assert_eq!(body["response"]["allowed"], false);
    server.stop().await;
}

fn review_by(username: &str, groups: &[&str], review: &str) -> String {
    let mut v: Value = serde_json::from_str(review).unwrap();
    v["request"]["userInfo"] = json!({"username": username, "groups": groups});
    v.to_string()
}

#[tokio::test]
async fn exempt_requesters_are_admitted_unevaluated_and_unmutated() {
    let server = Server::start("policies:\n  exemptUsers: [system:serviceaccount:tollgate-system:tollgate-webhook]\n  exemptGroups: [system:nodes]\n").await;
    let exempt = [
        (
            "system:serviceaccount:tollgate-system:tollgate-webhook",
            vec!["system:serviceaccounts"],
        ),
        (
            "system:node:worker-1",
            vec!["system:nodes", "system:authenticated"],
        ),
    ];
    for (user, groups) in &exempt {
        for endpoint in ["/validate", "/mutate"] {
            let (status, body) = server
                .post(endpoint, review_by(user, groups, PRIVILEGED))
                .await;
            assert_eq!(status, 200);
            assert_eq!(
                body["response"]["allowed"], true,
                "{user} {endpoint}: {body}"
            );
            assert!(
                body["response"].get("patch").is_none(),
                "{user} {endpoint}: {body}"
            );
        }
    }
    // Anyone else, including a lookalike name, is evaluated.
    for (user, groups) in [
        ("alice", vec!["system:authenticated"]),
        ("system:node:worker-1", vec!["system:authenticated"]),
        (
            "system:serviceaccount:tollgate-system:tollgate-webhook-x",
            vec![],
        ),
    ] {
        let (_, body) = server
            .post("/validate", review_by(user, &groups, PRIVILEGED))
            .await;
        assert_eq!(body["response"]["allowed"], false, "{user}: {body}");
    }
    let (_, metrics) = server.get("/metrics").await;
    assert!(metrics.contains("decision=\"exempt\"} 2"), "{metrics}");
    server.stop().await;
}

fn review_of(object: &Value) -> String {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": tollgate_webhook::review::create_request_for(object),
    })
    .to_string()
}

#[tokio::test]
async fn mutate_returns_a_json_patch_and_the_mutated_object_mutates_to_nothing() {
    use base64::Engine as _;
    let server = Server::start("").await;
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/mutate");
    let mut fixtures: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 4);
    for path in fixtures {
        let object: Value = yaml_serde::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let (status, body) = server.post("/mutate", review_of(&object)).await;
        assert_eq!(status, 200);
        let response = &body["response"];
        assert_eq!(response["allowed"], true, "{}: {body}", path.display());
        assert_eq!(response["patchType"], "JSONPatch", "{}", path.display());
        let patch = base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().unwrap())
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
        let mut mutated = object.clone();
        json_patch::patch(&mut mutated, &patch).unwrap();

        let (_, again) = server.post("/mutate", review_of(&mutated)).await;
        assert_eq!(again["response"]["allowed"], true);
        assert!(
            again["response"].get("patch").is_none(),
            "{}: second pass patched: {again}",
            path.display()
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn malformed_reviews_get_400_naming_the_cause() {
    let server = Server::start("").await;
    let cases = [
        (
            "{\"apiVersion\": ",
            "body is not valid JSON: EOF while parsing a value at line 1 column 15",
        ),
        (
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
            "AdmissionReview has no \"request\" object",
        ),
        (
            r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{}}"#,
            "unsupported apiVersion \"admission.k8s.io/v1beta1\": expected \"admission.k8s.io/v1\"",
        ),
        (
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"kind":"Pod"}}}"#,
            "AdmissionReview request.operation: must be a string",
        ),
    ];
    for (body, error) in cases {
        let (status, answer) = server.post("/validate", body).await;
        assert_eq!((status, answer), (400, json!({ "error": error })), "{body}");
    }
    server.stop().await;
}

#[tokio::test]
async fn oversized_bodies_get_413_whether_declared_or_chunked() {
    let server = Server::start("limits:\n  maxBodyBytes: 4096\n").await;
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(10_000));
    let (status, answer) = server.post("/validate", big.clone()).await;
    assert_eq!(
        (status, answer),
        (
            413,
            json!({"error": "request body exceeds the limit of 4096 bytes"})
        )
    );

    // curl sends the body chunked, with no Content-Length to refuse early.
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &server.ca_pem).unwrap();
    let body_file = dir.path().join("big.json");
    std::fs::write(&body_file, &big).unwrap();
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&ca)
        .args([
            "-H",
            "Content-Type: application/json",
            "-H",
            "Transfer-Encoding: chunked",
            "--data-binary",
        ])
        .arg(format!("@{}", body_file.display()))
        .args(["-w", "\n%{http_code}", &server.url("/validate")])
        .output()
        .await
        .unwrap();
    let out = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        out,
        "{\"error\":\"request body exceeds the limit of 4096 bytes\"}\n413"
    );
    server.stop().await;
}

/// A body past the limit gets its 413 over h2 as over HTTP/1.1, declared
/// or not. The server used to answer without reading on, and h2 reset the
/// stream the client was still uploading on: curl saw "Stream error in the
/// HTTP/2 framing layer" and no 413, on most tries.
#[tokio::test]
async fn oversized_bodies_get_413_over_h2_too() {
    let server = Server::start("limits:\n  maxBodyBytes: 4096\n").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &server.ca_pem).unwrap();
    let body_file = dir.path().join("big.json");
    // Past the limit, within what is read on (twice the limit).
    std::fs::write(
        &body_file,
        format!("{{\"pad\": \"{}\"}}", "x".repeat(6_000)),
    )
    .unwrap();
    for protocol in ["--http2", "--http1.1"] {
        for chunked in [false, true] {
            for attempt in 0..10 {
                let mut curl = tokio::process::Command::new("curl");
                curl.args(["-sS", protocol, "--cacert"])
                    .arg(&ca)
                    .args(["-H", "Content-Type: application/json"]);
                if chunked {
                    curl.args(["-H", "Transfer-Encoding: chunked"]);
                }
                let output = curl
                    .arg("--data-binary")
                    .arg(format!("@{}", body_file.display()))
                    .args(["-w", "\n%{http_code}", &server.url("/validate")])
                    .output()
                    .await
                    .unwrap();
                assert_eq!(
                    String::from_utf8_lossy(&output.stdout),
                    "{\"error\":\"request body exceeds the limit of 4096 bytes\"}\n413",
                    "{protocol}, chunked {chunked}, try {attempt}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn health_readiness_metrics_and_unknown_routes() {
    let server = Server::start("").await;
    assert_eq!(server.get("/healthz").await, (200, "ok\n".into()));
    assert_eq!(server.get("/readyz").await, (200, "ready\n".into()));
    server.post("/validate", COMPLIANT).await;
    let (status, metrics) = server.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains(
            "tollgate_admission_requests_total{endpoint=\"validate\",operation=\"CREATE\",kind=\"Pod\",decision=\"allow\"} 1"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("tollgate_policies_loaded 23"), "{metrics}");
    assert_eq!(
        server.get("/nope").await,
        (404, "{\"error\":\"no route for /nope\"}".into())
    );
    assert_eq!(
        server.get("/validate").await,
        (405, "{\"error\":\"/validate does not accept GET\"}".into())
    );
    server.stop().await;
}

#[tokio::test]
async fn an_injected_workspace_pod_passes_every_bundled_policy() {
    use base64::Engine as _;
    let server = Server::start("").await;
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/mutate/workspace-jupyter.yaml"
    );
    let object: Value = yaml_serde::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let (_, body) = server.post("/mutate", review_of(&object)).await;
    let patch = base64::engine::general_purpose::STANDARD
        .decode(body["response"]["patch"].as_str().unwrap())
        .unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch).unwrap();
    let mut mutated = object.clone();
    json_patch::patch(&mut mutated, &patch).unwrap();
    let proxies = mutated["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == "tollgate-proxy")
        .count();
    assert_eq!(proxies, 1);
    let (status, verdict) = server.post("/validate", review_of(&mutated)).await;
    assert_eq!(status, 200);
    assert_eq!(verdict["response"]["allowed"], true, "{verdict}");
    assert!(verdict["response"].get("warnings").is_none(), "{verdict}");
    server.stop().await;
}
