//! Faults around the real `tollgate serve` (issue #11, item 4), each with
//! the exact outcome expected and the webhook still serving afterwards:
//!
//! - kube-apiserver is killed and started again (etcd keeps the data)
//!   while the webhook runs: it stays ready (by design, see
//!   docs/architecture.md) and says why it is degraded; while it cannot
//!   reach the apiserver and its namespace cache may be stale, requests
//!   are refused with the cause, never labelled on a guess; a namespace
//!   relabelled or created right after the restart gets the right team at
//!   once, and the cache is current again within seconds;
//! - the serving certificate files break mid-run: the old certificate
//!   keeps being served, each refusal is counted and logged naming the
//!   file and the cause, and good files are picked up;
//! - a policy ConfigMap is replaced by Rego that does not compile while
//!   clients hammer `/validate` directly and through the apiserver: the
//!   last good set keeps deciding (zero wrong allows or denies),
//!   `/readyz`, the metrics and the log name the failed reload, and the
//!   fixed ConfigMap takes effect.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use serde_json::{Value, json};
use tollgate_certs::issue::Ca;
use tollgate_e2e::binaries::workspace_root;
use tollgate_e2e::control_plane::served_serial;
use tollgate_e2e::proxy::client::tls_config;
use tollgate_e2e::proxy::metric_value;
use tollgate_e2e::{ControlPlane, Webhook, fixtures_dir};

/// The registries the test Pods use (the fixture's and the real
/// AdmissionReview's) are the allowed ones.
const REGISTRIES: &str = "
policies:
  overrides:
    allowed_registries:
      parameters:
        registries: [\"registry.example.com/\", \"registry.k8s.io/\"]
";

/// A real AdmissionReview (as the apiserver sends it) for a compliant Pod
/// named `name` in `namespace`; `labels` replace the Pod's labels.
fn review(namespace: &str, name: &str, labels: Value) -> anyhow::Result<Value> {
    let path = workspace_root().join("webhook/testdata/pod-compliant.json");
    let mut review: Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let request = &mut review["request"];
    request["uid"] = json!(format!("{name}-{}", unique()));
    request["name"] = json!(name);
    request["namespace"] = json!(namespace);
    request["object"]["metadata"]["name"] = json!(name);
    request["object"]["metadata"]["namespace"] = json!(namespace);
    request["object"]["metadata"]["labels"] = labels;
    Ok(review)
}

fn unique() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A compliant Pod manifest (`tests/fixtures/pod-compliant.yaml`) named
/// `name`; `labels` replace its labels.
fn pod(name: &str, labels: Value) -> anyhow::Result<Value> {
    let mut pod: Value = yaml_serde::from_str(&tollgate_e2e::fixture("pod-compliant.yaml"))?;
    pod["metadata"]["name"] = json!(name);
    pod["metadata"]["labels"] = labels;
    Ok(pod)
}

/// HTTPS to the webhook, trusting its CA.
struct Direct {
    client: reqwest::Client,
    base: String,
}

impl Direct {
    fn new(webhook: &Webhook) -> anyhow::Result<Direct> {
        Direct::with_ca(&webhook.base_url(), webhook.ca_pem())
    }

    fn with_ca(base: &str, ca_pem: &str) -> anyhow::Result<Direct> {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config(None, ca_pem, &[b"h2", b"http/1.1"])?)
            .no_proxy()
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Direct {
            client,
            base: base.to_owned(),
        })
    }

    async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let r = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await?;
        Ok((r.status().as_u16(), r.text().await?))
    }

    /// The value of one sample of `/metrics`, 0 when absent.
    async fn metric(&self, sample: &str) -> anyhow::Result<f64> {
        let (_, text) = self.get("/metrics").await?;
        Ok(metric_value(&text, sample).unwrap_or(0.0))
    }

    /// POSTs `review` to `/mutate` or `/validate`; the AdmissionResponse.
    async fn review(&self, endpoint: &str, review: &Value) -> anyhow::Result<Value> {
        let r = self
            .client
            .post(format!("{}{endpoint}", self.base))
            .json(review)
            .send()
            .await?;
        let status = r.status();
        let body = r.text().await?;
        ensure!(status == 200, "{endpoint} answered {status}: {body}");
        let out: Value = serde_json::from_str(&body)?;
        ensure!(
            out["response"]["uid"] == review["request"]["uid"],
            "uid not echoed: {body}"
        );
        Ok(out["response"].clone())
    }
}

/// The team label a `/mutate` response's patch sets on the Pod.
fn patched_team(response: &Value) -> anyhow::Result<Option<String>> {
    use base64::Engine as _;
    let Some(patch) = response["patch"].as_str() else {
        return Ok(None);
    };
    let patch: Value =
        serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(patch)?)?;
    for op in patch.as_array().into_iter().flatten() {
        let path = op["path"].as_str().unwrap_or_default();
        if path == "/metadata/labels/team" {
            return Ok(op["value"].as_str().map(str::to_owned));
        }
        if path == "/metadata/labels" {
            return Ok(op["value"]["team"].as_str().map(str::to_owned));
        }
    }
    Ok(None)
}

/// The apiserver's REST API with the admin token: server-side dry runs.
struct Api {
    client: reqwest::Client,
    server: String,
    token: String,
}

/// What the apiserver answered a create: the object, or a refusal.
enum Created {
    Object(Value),
    Refused { code: u16, message: String },
}

impl Api {
    fn new(cp: &ControlPlane) -> anyhow::Result<Api> {
        let ca = std::fs::read_to_string(cp.ca_file())?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config(None, &ca, &[b"http/1.1"])?)
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Api {
            client,
            server: cp.server().to_owned(),
            token: cp.token().to_owned(),
        })
    }

    /// `PATCH`es namespace `name`'s labels (a JSON merge patch); the
    /// status code.
    async fn label_namespace(&self, name: &str, labels: Value) -> anyhow::Result<u16> {
        let r = self
            .client
            .patch(format!("{}/api/v1/namespaces/{name}", self.server))
            .bearer_auth(&self.token)
            .header("content-type", "application/merge-patch+json")
            .body(json!({"metadata": {"labels": labels}}).to_string())
            .send()
            .await?;
        Ok(r.status().as_u16())
    }

    /// `POST /api/v1/namespaces`: namespace `name` with `labels`.
    async fn create_namespace(&self, name: &str, labels: Value) -> anyhow::Result<u16> {
        let namespace = json!({"apiVersion": "v1", "kind": "Namespace",
                               "metadata": {"name": name, "labels": labels}});
        let r = self
            .client
            .post(format!("{}/api/v1/namespaces", self.server))
            .bearer_auth(&self.token)
            .json(&namespace)
            .send()
            .await?;
        Ok(r.status().as_u16())
    }

    /// `POST /api/v1/namespaces/<ns>/pods?dryRun=All`.
    async fn dry_run_pod(&self, namespace: &str, pod: &Value) -> anyhow::Result<Created> {
        let r = self
            .client
            .post(format!(
                "{}/api/v1/namespaces/{namespace}/pods?dryRun=All",
                self.server
            ))
            .bearer_auth(&self.token)
            .json(pod)
            .send()
            .await?;
        let code = r.status().as_u16();
        let body: Value = serde_json::from_str(&r.text().await?)?;
        Ok(if code == 201 || code == 200 {
            Created::Object(body)
        } else {
            Created::Refused {
                code,
                message: body["message"].as_str().unwrap_or_default().to_owned(),
            }
        })
    }
}

/// Runs `f` with the webhook's and the control plane's logs on failure.
fn report(result: anyhow::Result<()>, webhook: Option<&Webhook>, cp: Option<&ControlPlane>) {
    if let Err(e) = result {
        panic!(
            "{e:#}\n\n{}\n\n{}",
            webhook.map(|w| w.log_tail(40)).unwrap_or_default(),
            cp.map(|c| c.log_tails(15)).unwrap_or_default()
        );
    }
}

/// Runs a blocking closure off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

// ------------------------------------------------- apiserver restart --

const RELABELLED: &str = "faults-relabelled";
const CREATED_AFTER: &str = "faults-created-after";
const CURRENT: &str = "tollgate_namespace_cache_current";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_restart_never_labels_for_the_wrong_team_and_the_cache_resyncs() {
    let cp = blocking(ControlPlane::start)
        .await
        .unwrap_or_else(|e| panic!("starting the control plane: {e:#}"));
    let cp = Arc::new(std::sync::Mutex::new(cp));
    let (webhook, result) = {
        let c = cp.clone();
        let webhook = blocking(move || -> anyhow::Result<Webhook> {
            let cp = c.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            // In the initial listing.
            cp.kubectl(&["create", "namespace", RELABELLED], None)
                .ok()?;
            cp.kubectl(&["label", "namespace", RELABELLED, "team=alpha"], None)
                .ok()?;
            let webhook = Webhook::start_for(&cp, REGISTRIES)?;
            cp.register_webhook(&webhook.base_url(), webhook.ca_pem())?;
            Ok(webhook)
        })
        .await
        .unwrap_or_else(|e| panic!("starting tollgate: {e:#}"));
        let result = apiserver_restart(&cp, &webhook).await;
        (webhook, result)
    };
    let cp = cp.lock().unwrap_or_else(|e| e.into_inner());
    report(result, Some(&webhook), Some(&cp));
}

async fn apiserver_restart(
    cp: &Arc<std::sync::Mutex<ControlPlane>>,
    webhook: &Webhook,
) -> anyhow::Result<()> {
    let direct = Direct::new(webhook)?;
    let api = Api::new(&*cp.lock().map_err(|_| anyhow::anyhow!("poisoned"))?)?;
    let unlabelled = json!({"app": "trainer"});
    // The team a created Pod got; `REFUSED` for the webhook's clear
    // refusal when it could not read the namespace (an acceptable answer).
    const REFUSED: &str = "<refused: namespace unreadable>";
    let team_of = |created: Created| -> anyhow::Result<String> {
        match created {
            Created::Object(pod) => pod["metadata"]["labels"]["team"]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("no team label: {pod}")),
            Created::Refused { code: 503, message }
                if message.contains("[namespace] cannot read the labels of namespace") =>
            {
                Ok(REFUSED.to_owned())
            }
            Created::Refused { code, message } => anyhow::bail!("refused ({code}): {message}"),
        }
    };
    let created = api
        .dry_run_pod(RELABELLED, &pod("p", unlabelled.clone())?)
        .await?;
    ensure!(team_of(created)? == "alpha", "before the restart");
    ensure!(
        direct.metric(CURRENT).await? == 1.0,
        "cache not current at start"
    );

    // The apiserver goes down.
    {
        let mut cp = cp.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        cp.stop_apiserver();
    }
    let down_at = Instant::now();
    let noticed = loop {
        let (status, body) = direct.get("/readyz").await?;
        ensure!(
            status == 200,
            "/readyz with the apiserver down: {status} {body}"
        );
        if body.contains("namespace cache: re-listing after a watch error") {
            break down_at.elapsed();
        }
        ensure!(
            down_at.elapsed() < Duration::from_secs(20),
            "the lost watch never showed in /readyz: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(direct.metric(CURRENT).await? == 0.0, "cache still current");

    // What another apiserver replica would send meanwhile: refused with
    // the cause, for a namespace the cache knew and for one it never saw.
    for (namespace, endpoint) in [
        (RELABELLED, "/mutate"),
        ("app-ghost-team", "/mutate"),
        (RELABELLED, "/validate"),
    ] {
        let started = Instant::now();
        let response = direct
            .review(endpoint, &review(namespace, "p", unlabelled.clone())?)
            .await?;
        let message = response["status"]["message"].as_str().unwrap_or_default();
        ensure!(
            response["allowed"] == false
                && response["status"]["code"] == 503
                && message.starts_with(&format!(
                    "[namespace] cannot read the labels of namespace \"{namespace}\""
                ))
                && message.contains("the API server")
                && response.get("patch").is_none_or(Value::is_null),
            "{endpoint} in {namespace} with the apiserver down: {response}"
        );
        ensure!(
            started.elapsed() < Duration::from_secs(3),
            "the refusal took {:?}",
            started.elapsed()
        );
    }
    // An exempt namespace needs no labels: still admitted.
    let response = direct
        .review("/mutate", &review("kube-system", "p", unlabelled.clone())?)
        .await?;
    ensure!(response["allowed"] == true, "kube-system: {response}");
    // A real outage: long enough for the watch's retries to back off fully.
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(down_at.elapsed())).await;

    // Back. As soon as it takes requests, before the webhook's watch can
    // have caught up (it retries every few seconds), a namespace is
    // relabelled and another created with its label.
    {
        let c = cp.clone();
        blocking(move || {
            c.lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .spawn_apiserver()
        })
        .await?;
    }
    let spawned_at = Instant::now();
    let down_for = down_at.elapsed();
    loop {
        // Errors and 5xx while it starts: try again.
        if let Ok(200) = api
            .label_namespace(RELABELLED, json!({"team": "beta"}))
            .await
        {
            break;
        }
        ensure!(
            spawned_at.elapsed() < Duration::from_secs(60),
            "the restarted apiserver never took the relabel"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = api
        .create_namespace(CREATED_AFTER, json!({"team": "gamma"}))
        .await?;
    ensure!(status == 201, "creating {CREATED_AFTER}: {status}");
    let relabelled_at = spawned_at.elapsed();
    // While the cache is stale (from the watch's failure until its new
    // listing is in), every lookup asks the API server: a Pod gets its
    // namespace's team as it is now, strictly. A Pod admitted after the
    // new listing is in may, for the few milliseconds the watch takes to
    // deliver a relabel, see the old team, as with any informer; that lag
    // is tolerated for 2 s after the relabel, and counted.
    let gap = direct.metric(CURRENT).await? == 0.0;
    let mut checks = 0;
    let mut during_gap = 0;
    let mut lagging = 0;
    let mut refused = 0;
    let mut current_at = None;
    let resynced = loop {
        for (namespace, team) in [(RELABELLED, "beta"), (CREATED_AFTER, "gamma")] {
            let created = api
                .dry_run_pod(namespace, &pod(&format!("p{checks}"), unlabelled.clone())?)
                .await?;
            let got = team_of(created)?;
            checks += 1;
            // It only turns current once here: stale after the answer
            // means stale while it was decided.
            let stale = direct.metric(CURRENT).await? == 0.0;
            during_gap += usize::from(stale);
            if got == team {
                continue;
            }
            if got == REFUSED {
                refused += 1;
                continue;
            }
            let lag = !stale && spawned_at.elapsed() < relabelled_at + Duration::from_secs(2);
            ensure!(
                lag,
                "a Pod in {namespace} got team {got:?}, not {team:?} (check {checks}, {:?} after \
                 the apiserver was started again, cache stale: {stale})",
                spawned_at.elapsed()
            );
            lagging += 1;
        }
        if direct.metric(CURRENT).await? == 1.0 {
            let at = *current_at.get_or_insert(spawned_at.elapsed());
            if spawned_at.elapsed() > relabelled_at + Duration::from_secs(2) {
                break at;
            }
        }
        ensure!(
            spawned_at.elapsed() < Duration::from_secs(60),
            "the namespace cache never re-listed after the restart"
        );
    };
    let restart = {
        let c = cp.clone();
        blocking(move || -> anyhow::Result<Duration> {
            c.lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .wait_apiserver_ready()?;
            Ok(spawned_at.elapsed())
        })
        .await?
    };
    let (status, body) = direct.get("/readyz").await?;
    ensure!(
        status == 200 && body == "ready\n",
        "/readyz after the resync: {status} {body:?}"
    );

    // Current again: answered from the cache, with the labels set after
    // the restart, and no more API calls.
    let api_before = direct
        .metric(r#"tollgate_namespace_lookups_total{source="api"}"#)
        .await?;
    let cache_before = direct
        .metric(r#"tollgate_namespace_lookups_total{source="cache"}"#)
        .await?;
    for (namespace, team) in [(RELABELLED, "beta"), (CREATED_AFTER, "gamma")] {
        let response = direct
            .review("/mutate", &review(namespace, "p", unlabelled.clone())?)
            .await?;
        ensure!(
            response["allowed"] == true && patched_team(&response)?.as_deref() == Some(team),
            "{namespace} from the resynced cache: {response}"
        );
    }
    ensure!(
        direct
            .metric(r#"tollgate_namespace_lookups_total{source="api"}"#)
            .await?
            == api_before,
        "lookups still go to the API server after the resync"
    );
    ensure!(
        direct
            .metric(r#"tollgate_namespace_lookups_total{source="cache"}"#)
            .await?
            == cache_before + 2.0
    );
    let log = webhook.log();
    ensure!(
        log.contains("watching namespaces failed; lookups ask the API server")
            && log.contains("namespace cache re-listed"),
        "the outage and the resync are not in the log"
    );
    eprintln!(
        "apiserver restart: down {:.1}s (watch loss in /readyz after {} ms); restarted: relabel \
         taken after {:.1}s (cache still stale then: {gap}), cache current after {:.1}s, \
         /readyz ok after {:.1}s; {checks} Pods checked, {during_gap} decided while the cache \
         was stale; none labelled wrong, {refused} refused{}",
        down_for.as_secs_f64(),
        noticed.as_millis(),
        relabelled_at.as_secs_f64(),
        resynced.as_secs_f64(),
        restart.as_secs_f64(),
        if lagging > 0 {
            format!(" ({lagging} before the watch delivered the relabel)")
        } else {
            String::new()
        }
    );
    Ok(())
}

// ------------------------------------------------------- cert files --

fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let aside = path.with_extension("new");
    std::fs::write(&aside, text)?;
    std::fs::rename(&aside, path)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_serving_certificate_files_keep_the_old_certificate() {
    let webhook = blocking(|| Webhook::start("certificates:\n  checkIntervalSeconds: 1\n"))
        .await
        .unwrap_or_else(|e| panic!("starting tollgate: {e:#}"));
    let result = broken_cert_files(&webhook).await;
    report(result, Some(&webhook), None);
}

async fn broken_cert_files(webhook: &Webhook) -> anyhow::Result<()> {
    let direct = Direct::new(webhook)?;
    let base = webhook.base_url();
    let crt = webhook.dir().join("tls.crt");
    let key = webhook.dir().join("tls.key");
    let (crt_name, key_name) = (crt.display().to_string(), key.display().to_string());
    let good_crt = std::fs::read_to_string(&crt)?;
    let good_key = std::fs::read_to_string(&key)?;
    let serial = blocking({
        let base = base.clone();
        move || served_serial(&base, None)
    })
    .await?;
    let other_ca = Ca::generate("another CA")?;
    let other = other_ca.issue_server(&["localhost".into()], &["127.0.0.1".parse()?])?;
    let failures = "tollgate_cert_rotation_failures_total";
    let compliant = review("app-ml-team", "p", json!({"app": "a", "team": "ml"}))?;

    type Fault<'a> = Box<dyn Fn() -> anyhow::Result<()> + 'a>;
    let faults: Vec<(&str, Fault, String)> = vec![
        (
            "tls.crt garbage",
            Box::new(|| write_atomically(&crt, "garbage\n")),
            format!("{crt_name}: contains no certificate"),
        ),
        (
            "tls.crt truncated",
            Box::new(|| write_atomically(&crt, &other.cert_pem[..other.cert_pem.len() / 2])),
            format!("{crt_name}: not valid PEM"),
        ),
        (
            "tls.key of another certificate",
            Box::new(|| write_atomically(&key, &other.key_pem)),
            format!("certificate {crt_name} and key {key_name} do not form a usable TLS identity"),
        ),
        (
            "tls.key deleted",
            Box::new(|| Ok(std::fs::remove_file(&key)?)),
            format!("reading {key_name}: No such file or directory"),
        ),
        (
            "tls.crt a directory",
            Box::new(|| {
                std::fs::remove_file(&crt)?;
                Ok(std::fs::create_dir(&crt)?)
            }),
            format!("reading {crt_name}: Is a directory"),
        ),
    ];
    let restore = || -> anyhow::Result<()> {
        if crt.is_dir() {
            std::fs::remove_dir(&crt)?;
        }
        write_atomically(&crt, &good_crt)?;
        write_atomically(&key, &good_key)
    };
    for (what, fault, logged) in &faults {
        let before = direct.metric(failures).await?;
        fault()?;
        let started = Instant::now();
        loop {
            let log = webhook.log();
            let line = log.lines().find(|l| {
                l.contains(logged.as_str()) && l.contains("keeping the current certificate")
            });
            if line.is_some() && direct.metric(failures).await? > before {
                break;
            }
            ensure!(
                started.elapsed() < Duration::from_secs(15),
                "{what}: no failure counted, or no log line naming {logged:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let counted_ms = started.elapsed().as_millis();
        let now = blocking({
            let base = base.clone();
            move || served_serial(&base, None)
        })
        .await?;
        ensure!(now == serial, "{what}: the served certificate changed");
        let response = direct.review("/validate", &compliant).await?;
        ensure!(response["allowed"] == true, "{what}: {response}");
        eprintln!("certs (webhook): {what}: counted and logged in {counted_ms} ms: {logged:?}");
        restore()?;
    }

    // Good files, from another CA: served from the next check on.
    let next = other_ca.issue_server(&["localhost".into()], &["127.0.0.1".parse()?])?;
    let next_serial = tollgate_certs::inspect::inspect_pem(&next.cert_pem)?.serial;
    let rotations = direct.metric("tollgate_cert_rotations_total").await?;
    write_atomically(&key, &next.key_pem)?;
    write_atomically(&crt, &next.cert_pem)?;
    let started = Instant::now();
    loop {
        let now = blocking({
            let base = base.clone();
            move || served_serial(&base, None)
        })
        .await?;
        if now == next_serial {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(15),
            "the good files were never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let direct = Direct::with_ca(&base, other_ca.cert_pem())?;
    let response = direct.review("/validate", &compliant).await?;
    ensure!(
        response["allowed"] == true,
        "after the rotation: {response}"
    );
    ensure!(direct.metric("tollgate_cert_rotations_total").await? >= rotations + 1.0);
    eprintln!(
        "certs (webhook): good files served {} ms after they were written",
        started.elapsed().as_millis()
    );
    Ok(())
}

// ------------------------------------------------ broken policy reload --

const SYSTEM: &str = "tollgate-system";
const TEAM: &str = "app-ml-team";
const CONFIGMAP_KEY: &str = "configmap/tollgate-system/owner-label/template.yaml";

/// The requiredlabels template and a constraint requiring `owner` on
/// Pods, denying with `message`; `rego_edit` breaks the template.
fn configmap(message: &str, rego_edit: impl Fn(String) -> String) -> anyhow::Result<String> {
    let template =
        std::fs::read_to_string(fixtures_dir().join("gatekeeper/requiredlabels/template.yaml"))?;
    let constraint = format!(
        "apiVersion: constraints.gatekeeper.sh/v1beta1
kind: K8sRequiredLabels
metadata:
  name: pods-need-owner
spec:
  match:
    kinds:
      - apiGroups: [\"\"]
        kinds: [\"Pod\"]
  parameters:
    message: \"{message}\"
    labels:
      - key: owner
"
    );
    Ok(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "owner-label",
            "namespace": SYSTEM,
            "labels": {"tollgate.io/policy": "true"}
        },
        "data": {"template.yaml": rego_edit(template), "constraint.yaml": constraint}
    })
    .to_string())
}

/// What the load saw, per phase.
#[derive(Default)]
struct Tally {
    /// By phase: decisions, wrong ones, errors.
    decisions: [AtomicUsize; 3],
    wrong: [AtomicUsize; 3],
    errors: [AtomicUsize; 3],
    /// Denials carrying the fixed ConfigMap's message.
    fixed_seen: AtomicUsize,
    /// Decisions made through the apiserver (dry-run creates).
    through_apiserver: AtomicUsize,
    examples: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn record(&self, phase: usize, outcome: anyhow::Result<(bool, String)>, compliant: bool) {
        match outcome {
            Ok((allowed, message)) => {
                self.decisions[phase].fetch_add(1, Ordering::Relaxed);
                let right = if compliant {
                    allowed
                } else {
                    !allowed && (message.contains(OLD_MESSAGE) || message.contains(NEW_MESSAGE))
                };
                if message.contains(NEW_MESSAGE) {
                    self.fixed_seen.fetch_add(1, Ordering::Relaxed);
                }
                if !right {
                    self.wrong[phase].fetch_add(1, Ordering::Relaxed);
                    self.example(format!(
                        "phase {phase}: {} Pod allowed={allowed}: {message}",
                        if compliant { "compliant" } else { "violating" }
                    ));
                }
            }
            Err(e) => {
                self.errors[phase].fetch_add(1, Ordering::Relaxed);
                self.example(format!("phase {phase}: error {e:#}"));
            }
        }
    }

    fn example(&self, what: String) {
        if let Ok(mut e) = self.examples.lock()
            && e.len() < 5
        {
            e.push(what);
        }
    }

    fn sum(counts: &[AtomicUsize; 3]) -> usize {
        counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }
}

const OLD_MESSAGE: &str = "owner label required (v1)";
const NEW_MESSAGE: &str = "owner label required (v2)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_policy_configmap_under_load_keeps_the_last_good_set() {
    let started = blocking(|| -> anyhow::Result<(ControlPlane, Webhook)> {
        let cp = ControlPlane::start()?;
        for ns in [SYSTEM, TEAM] {
            cp.kubectl(&["create", "namespace", ns], None).ok()?;
        }
        let webhook = Webhook::start_for(
            &cp,
            &format!("ownNamespace: {SYSTEM}\n{REGISTRIES}  watchConfigMaps: true\n"),
        )?;
        cp.register_webhook(&webhook.base_url(), webhook.ca_pem())?;
        Ok((cp, webhook))
    })
    .await
    .unwrap_or_else(|e| panic!("starting: {e:#}"));
    let (cp, webhook) = started;
    let cp = Arc::new(cp);
    let result = broken_policy(&cp, &webhook).await;
    report(result, Some(&webhook), Some(&cp));
}

async fn kubectl_apply(cp: &Arc<ControlPlane>, manifest: String) -> anyhow::Result<()> {
    let cp = cp.clone();
    blocking(move || {
        cp.kubectl(&["apply", "-f", "-"], Some(&manifest))
            .ok()
            .map(|_| ())
    })
    .await
}

async fn broken_policy(cp: &Arc<ControlPlane>, webhook: &Webhook) -> anyhow::Result<()> {
    let direct = Arc::new(Direct::new(webhook)?);
    let api = Arc::new(Api::new(cp)?);
    let good = json!({"app": "a", "team": "ml", "owner": "alice"});
    let bad = json!({"app": "a", "team": "ml"});

    // The good policy, in force before the load starts.
    kubectl_apply(cp, configmap(OLD_MESSAGE, |t| t)?).await?;
    let started = Instant::now();
    loop {
        let r = direct
            .review("/validate", &review(TEAM, "p", bad.clone())?)
            .await?;
        if r["allowed"] == false
            && r["status"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(OLD_MESSAGE))
        {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the ConfigMap's policy never took effect: {r}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The load: direct /validate calls and server-side dry runs, each
    // alternating a compliant and a violating Pod.
    let tally = Arc::new(Tally::default());
    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for worker in 0..3 {
        let (direct, tally, phase, stop) =
            (direct.clone(), tally.clone(), phase.clone(), stop.clone());
        let (good, bad) = (good.clone(), bad.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let compliant = i.is_multiple_of(2);
                let labels = if compliant { &good } else { &bad };
                let outcome = async {
                    let r = direct
                        .review(
                            "/validate",
                            &review(TEAM, &format!("w{worker}-{i}"), labels.clone())?,
                        )
                        .await?;
                    let message = r["status"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    anyhow::Ok((r["allowed"] == true, message))
                }
                .await;
                tally.record(phase.load(Ordering::Relaxed), outcome, compliant);
                i += 1;
            }
        }));
    }
    {
        let (api, tally, phase, stop) = (api.clone(), tally.clone(), phase.clone(), stop.clone());
        let (good, bad) = (good.clone(), bad.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let compliant = i.is_multiple_of(2);
                let labels = if compliant { &good } else { &bad };
                let outcome = async {
                    let pod = pod(&format!("api-{i}"), labels.clone())?;
                    Ok(match api.dry_run_pod(TEAM, &pod).await? {
                        Created::Object(_) => (true, String::new()),
                        Created::Refused { code, message } => {
                            ensure!(
                                message
                                    .contains("admission webhook \"validate.tollgate.io\" denied"),
                                "refused ({code}) by something else: {message}"
                            );
                            (false, message)
                        }
                    })
                }
                .await;
                tally.through_apiserver.fetch_add(1, Ordering::Relaxed);
                tally.record(phase.load(Ordering::Relaxed), outcome, compliant);
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Broken: the template's Rego does not compile.
    let failures = r#"tollgate_policy_reloads_total{result="failure"}"#;
    let successes = r#"tollgate_policy_reloads_total{result="success"}"#;
    let failed_before = direct.metric(failures).await?;
    phase.store(1, Ordering::Relaxed);
    let broken_at = Instant::now();
    kubectl_apply(
        cp,
        configmap(NEW_MESSAGE, |t| {
            t.replace("count(missing) > 0", "count(missing) >")
        })?,
    )
    .await?;
    let readyz = loop {
        // The counter first: the webhook records the error that /readyz
        // shows before it counts the failure, so a count seen here means
        // the /readyz read next shows it (read the other way round, the
        // failure could land between the two reads).
        let failed = direct.metric(failures).await? > failed_before;
        let (status, body) = direct.get("/readyz").await?;
        if failed {
            ensure!(
                status == 200,
                "/readyz after a failed reload: {status} {body}"
            );
            break body;
        }
        ensure!(
            broken_at.elapsed() < Duration::from_secs(30),
            "the broken ConfigMap was never refused"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let refused_after = broken_at.elapsed();
    ensure!(
        readyz.starts_with(
            "ready\npolicies: the last reload failed; the last good set is in force: "
        ) && readyz.contains(CONFIGMAP_KEY),
        "/readyz does not name the failed reload: {readyz:?}"
    );
    let log = webhook.log();
    let line = log
        .lines()
        .find(|l| l.contains("policy reload failed; keeping the last good policies"))
        .context("no log line for the failed reload")?;
    ensure!(
        line.contains(CONFIGMAP_KEY),
        "the log line does not name the policy: {line}"
    );
    // Under load with the broken ConfigMap in place for a while.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Fixed: the new message takes over, and readiness forgets the failure.
    let succeeded_before = direct.metric(successes).await?;
    phase.store(2, Ordering::Relaxed);
    let fixed_at = Instant::now();
    kubectl_apply(cp, configmap(NEW_MESSAGE, |t| t)?).await?;
    while tally.fixed_seen.load(Ordering::Relaxed) < 10 {
        ensure!(
            fixed_at.elapsed() < Duration::from_secs(30),
            "the fixed ConfigMap never took effect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fixed_after = fixed_at.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await?;
    }
    ensure!(direct.metric(successes).await? > succeeded_before);
    let (status, body) = direct.get("/readyz").await?;
    ensure!(
        status == 200 && body == "ready\n",
        "/readyz after the fix: {status} {body:?}"
    );

    let count = |c: &[AtomicUsize; 3]| {
        c.iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect::<Vec<_>>()
    };
    let examples = tally.examples.lock().map(|e| e.clone()).unwrap_or_default();
    ensure!(
        Tally::sum(&tally.wrong) == 0 && Tally::sum(&tally.errors) == 0,
        "wrong decisions {:?}, errors {:?} (by phase: good, broken, fixed): {examples:#?}",
        count(&tally.wrong),
        count(&tally.errors)
    );
    let decisions = count(&tally.decisions);
    ensure!(
        decisions.iter().all(|&d| d >= 10),
        "too little load per phase: {decisions:?}"
    );
    eprintln!(
        "broken policy: decisions by phase (good, broken, fixed) {decisions:?} ({} through the \
         apiserver), wrong 0, errors 0; refused {} ms after the apply, fix in force {} ms after \
         its apply; /readyz said {:?}",
        tally.through_apiserver.load(Ordering::Relaxed),
        refused_after.as_millis(),
        fixed_after.as_millis(),
        readyz.lines().nth(1).unwrap_or_default()
    );
    Ok(())
}
