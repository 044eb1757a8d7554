//! Issue #27, the webhook: kube-apiserver with its tracing on (OTLP to a
//! real Jaeger) sends `traceparent` to Tollgate, which continues the
//! trace: a `kubectl apply` of a Deployment is one trace in which the
//! apiserver's webhook call has Tollgate's spans — decode, namespace
//! lookup, the policies, each policy by name — beneath it.

use std::time::Duration;

use tollgate_e2e::jaeger::{self, Jaeger};
use tollgate_e2e::{ControlPlane, Webhook, fixture};

const NAMESPACE: &str = "app-ml-team";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubectl_apply_is_one_trace_through_the_apiserver_into_the_policies() {
    let jaeger = Jaeger::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tracing_config = dir.path().join("apiserver-tracing.yaml");
    std::fs::write(
        &tracing_config,
        format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: TracingConfiguration\n\
             endpoint: 127.0.0.1:{}\nsamplingRatePerMillion: 1000000\n",
            jaeger.otlp_grpc_port
        ),
    )
    .unwrap();
    let otlp = jaeger.otlp_traces_url();
    let (cp, webhook) = tokio::task::spawn_blocking(move || {
        let cp = ControlPlane::start_with_apiserver_args(vec![format!(
            "--tracing-config-file={}",
            tracing_config.display()
        )])
        .unwrap_or_else(|e| panic!("starting the control plane: {e:#}"));
        let webhook = Webhook::start(&format!(
            "tracing:\n  otlp: {otlp}\n  sampling: 1.0\n  batchDelayMs: 100\n\
             policies:\n  overrides:\n    allowed_registries:\n      parameters:\n        \
             registries: [\"registry.example.com/\"]\n"
        ))
        .unwrap_or_else(|e| panic!("starting tollgate: {e:#}"));
        cp.register_webhook(&webhook.base_url(), webhook.ca_pem())
            .unwrap();
        cp.wait_webhook_in_effect().unwrap();
        let out = cp.kubectl(&["create", "namespace", NAMESPACE], None);
        assert!(out.success, "{out}");
        (cp, webhook)
    })
    .await
    .unwrap();

    let out = cp.kubectl(
        &["apply", "-n", NAMESPACE, "-f", "-"],
        Some(&fixture("deployment-trainer.yaml")),
    );
    assert!(out.success, "{out}\n{}", webhook.log_tail(30));

    // The decision log line of the Deployment's validation has the trace.
    let log = webhook.log();
    let line = log
        .lines()
        .find(|l| {
            l.contains("admission decision")
                && l.contains("\"kind\":\"Deployment\"")
                && l.contains("\"endpoint\":\"validate\"")
                && l.contains("trace_id")
        })
        .unwrap_or_else(|| panic!("no traced decision line for the Deployment:\n{log}"));
    let decision: serde_json::Value = serde_json::from_str(line).unwrap();
    let trace_id = decision["fields"]["trace_id"]
        .as_str()
        .or_else(|| decision["trace_id"].as_str())
        .unwrap_or_else(|| panic!("no trace_id in {line}"))
        .to_owned();

    let trace = jaeger
        .wait_for_trace(&trace_id, Duration::from_secs(30), |t| {
            let spans = jaeger::spans(t);
            spans.iter().any(|s| s.service == "apiserver")
                && spans.iter().any(|s| s.name.starts_with("policy "))
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", jaeger.log_text()));
    let spans = jaeger::spans(&trace);
    let by_id = |id: &str| spans.iter().find(|s| s.span_id == id);
    let policy = spans
        .iter()
        .find(|s| s.name.starts_with("policy ") && s.service == "tollgate-webhook")
        .unwrap_or_else(|| panic!("no policy span: {spans:#?}"));
    assert!(policy.tag("tollgate.policy.name").is_some());
    assert!(policy.tag("tollgate.policy.decision").is_some());
    // policy → evaluate policies → the webhook's server span → the
    // apiserver's call of the webhook.
    let evaluate = by_id(policy.parent.as_deref().unwrap()).expect("its parent is in the trace");
    assert_eq!(evaluate.name, "evaluate policies");
    let server = by_id(evaluate.parent.as_deref().unwrap()).expect("the server span");
    assert_eq!(server.service, "tollgate-webhook");
    assert_eq!(server.kind.as_deref(), Some("server"));
    let caller = by_id(
        server
            .parent
            .as_deref()
            .expect("the server span has a parent"),
    )
    .unwrap_or_else(|| panic!("the webhook's parent is not in the trace: {spans:#?}"));
    assert_eq!(caller.service, "apiserver", "{caller:#?}");
    for name in ["decode", "namespace lookup"] {
        assert!(
            spans
                .iter()
                .any(|s| s.name == name && s.parent.as_deref() == Some(server.span_id.as_str())),
            "no {name} span under the server span: {spans:#?}"
        );
    }
    let names: Vec<String> = spans
        .iter()
        .map(|s| format!("{}: {}", s.service, s.name))
        .collect();
    eprintln!("the trace of kubectl apply: {names:#?}");
    drop(webhook);
    drop(cp);
}
