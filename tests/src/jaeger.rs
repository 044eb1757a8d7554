//! A real Jaeger v2 (`cmd/jaeger`, built from its Go module by
//! `tests/jaeger/build.sh`) on loopback: in-memory storage, OTLP over HTTP
//! and gRPC, the query API and UI on a port of its own. Killed on drop; it
//! can be stopped and started again on the same ports (the fault tests),
//! losing what it held.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::ports::free_ports;
use crate::process::{Process, without_proxy};

pub struct Jaeger {
    /// OTLP/HTTP receiver.
    pub otlp_http_port: u16,
    /// OTLP/gRPC receiver.
    pub otlp_grpc_port: u16,
    /// Query API and UI.
    pub query_port: u16,
    health_port: u16,
    process: Option<Process>,
    dir: tempfile::TempDir,
    starts: u32,
}

impl Jaeger {
    /// Builds (first use) and starts Jaeger, waiting until it is healthy.
    pub async fn start() -> anyhow::Result<Jaeger> {
        let [
            otlp_http_port,
            otlp_grpc_port,
            query_port,
            health_port,
            query_grpc,
        ] = free_ports()?;
        let dir = tempfile::Builder::new()
            .prefix("tollgate-jaeger-e2e-")
            .tempdir()?;
        let config = format!(
            r#"service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_query:
    storage:
      traces: mem
    http:
      endpoint: 127.0.0.1:{query_port}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
  jaeger_storage:
    backends:
      mem:
        memory:
          max_traces: 100000
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:{health_port}
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc_port}
      http:
        endpoint: 127.0.0.1:{otlp_http_port}
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: mem
"#
        );
        std::fs::write(dir.path().join("jaeger.yaml"), config)?;
        let mut jaeger = Jaeger {
            otlp_http_port,
            otlp_grpc_port,
            query_port,
            health_port,
            process: None,
            dir,
            starts: 0,
        };
        jaeger.restart().await?;
        Ok(jaeger)
    }

    /// The OTLP/HTTP traces URL, as the proxy's `tracing.otlp` takes it.
    pub fn otlp_traces_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/traces", self.otlp_http_port)
    }

    /// The query API and UI's base URL.
    pub fn query_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.query_port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join(format!("jaeger-{}.log", self.starts))
    }

    /// The log of the current (or last) run.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Starts Jaeger again on the same ports (empty: in-memory storage).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let bin = tokio::task::spawn_blocking(crate::binaries::jaeger_binary).await??;
        self.starts += 1;
        let mut cmd = Command::new(bin);
        cmd.arg("--config").arg(self.dir.path().join("jaeger.yaml"));
        without_proxy(&mut cmd);
        self.process = Some(Process::spawn("jaeger", cmd, &self.log())?);
        let started = Instant::now();
        let health = format!("http://127.0.0.1:{}/status", self.health_port);
        loop {
            if http_get(&health)
                .await
                .is_ok_and(|(status, _)| status == 200)
                && http_get(&format!("{}/api/services", self.query_url()))
                    .await
                    .is_ok_and(|(status, _)| status == 200)
            {
                return Ok(());
            }
            if let Some(p) = self.process.as_mut() {
                // The log dies with the test's temporary directory: quote it.
                p.ensure_running()
                    .map_err(|e| anyhow::anyhow!("{e:#}\n\n{}", p.log_tail(20)))?;
            }
            if started.elapsed() > Duration::from_secs(30) {
                anyhow::bail!(
                    "jaeger was not healthy within 30 s ({})",
                    self.log().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills Jaeger (SIGKILL): the collector gone, as in an outage.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// `GET /api/traces/<id>`: the trace's spans as Jaeger's API gives
    /// them (`data[0].spans`, `data[0].processes`), or `None` while it
    /// does not have the trace.
    pub async fn trace(&self, trace_id: &str) -> anyhow::Result<Option<serde_json::Value>> {
        let (status, body) =
            http_get(&format!("{}/api/traces/{trace_id}", self.query_url())).await?;
        if status == 404 {
            return Ok(None);
        }
        anyhow::ensure!(status == 200, "GET /api/traces/{trace_id}: {status} {body}");
        let value: serde_json::Value =
            serde_json::from_str(&body).context("parsing Jaeger's answer")?;
        Ok(value["data"].get(0).cloned())
    }

    /// Waits until Jaeger holds trace `trace_id` with at least one span
    /// for which `want` holds, returning the trace.
    pub async fn wait_for_trace(
        &self,
        trace_id: &str,
        timeout: Duration,
        want: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<serde_json::Value> {
        let started = Instant::now();
        loop {
            if let Some(trace) = self.trace(trace_id).await?
                && want(&trace)
            {
                return Ok(trace);
            }
            if started.elapsed() > timeout {
                anyhow::bail!(
                    "Jaeger has no trace {trace_id} as wanted within {timeout:?}; it holds: {:?}",
                    self.trace(trace_id).await?
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The spans of a trace from [`Jaeger::trace`] with their service names.
pub fn spans(trace: &serde_json::Value) -> Vec<Span> {
    let processes = &trace["processes"];
    trace["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let tag = |key: &str| {
                s["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|t| t["key"] == key)
                    .map(|t| match &t["value"] {
                        serde_json::Value::String(v) => v.clone(),
                        other => other.to_string(),
                    })
            };
            let process = s["processID"].as_str().unwrap_or_default();
            Span {
                span_id: s["spanID"].as_str().unwrap_or_default().to_owned(),
                parent: s["references"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| r["refType"] == "CHILD_OF")
                    .and_then(|r| r["spanID"].as_str())
                    .map(str::to_owned),
                name: s["operationName"].as_str().unwrap_or_default().to_owned(),
                service: processes[process]["serviceName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                kind: tag("span.kind"),
                tags: s["tags"].clone(),
                raw: s.clone(),
            }
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct Span {
    pub span_id: String,
    pub parent: Option<String>,
    pub name: String,
    pub service: String,
    /// `server`, `client`, `internal`.
    pub kind: Option<String>,
    pub tags: serde_json::Value,
    pub raw: serde_json::Value,
}

impl Span {
    /// A tag's value as text.
    pub fn tag(&self, key: &str) -> Option<String> {
        self.tags
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["key"] == key)
            .map(|t| match &t["value"] {
                serde_json::Value::String(v) => v.clone(),
                other => other.to_string(),
            })
    }
}

/// A GET on loopback (Jaeger's API).
pub async fn http_get(url: &str) -> anyhow::Result<(u16, String)> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    let response = client.get(url).send().await?;
    let status = response.status().as_u16();
    Ok((status, response.text().await?))
}
