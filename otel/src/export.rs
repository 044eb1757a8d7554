//! Getting spans out: the SDK's sampler and batch span processor in front
//! of the OTLP/HTTP (protobuf) exporter, which posts through the proxy's
//! own hyper client (no second HTTP stack), with a bound on the spans
//! waiting and every span that does not reach the collector counted.
//!
//! The batch processor runs its exports on a thread of its own and never
//! on the request path. [`Bounded`] admits a finished span only while
//! fewer than `maxQueuedSpans` are waiting or being sent; past that the
//! span is dropped and counted at once (the SDK's own queue-full drops are
//! not observable, so the bound is kept here, equal to the SDK's queue so
//! that queue never fills). [`Counted`] counts each batch as exported or,
//! when the collector refused it or did not answer in time, as dropped.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry::Context;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, Span, SpanData,
    SpanExporter, SpanProcessor,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

use crate::config::TracingConfig;

/// `tollgate_trace_spans_{exported,dropped}_total`.
#[derive(Clone, Debug, Default)]
pub struct TraceMetrics {
    pub exported: Counter,
    pub dropped: Counter,
}

impl TraceMetrics {
    pub fn register(registry: &mut Registry) -> TraceMetrics {
        let metrics = TraceMetrics::default();
        registry.register(
            "trace_spans_exported",
            "Spans the collector accepted",
            metrics.exported.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans dropped: the export queue was full, or the collector failed or was too slow",
            metrics.dropped.clone(),
        );
        metrics
    }
}

/// The tracer provider for `config`, exporting from now on. Must be
/// called inside the tokio runtime (exports run on it).
/// `service` names the spans unless the config does.
pub fn provider(
    config: &TracingConfig,
    service: &'static str,
    metrics: TraceMetrics,
) -> Result<SdkTracerProvider, String> {
    let timeout = Duration::from_millis(config.export_timeout_ms);
    let client = HyperExport {
        client: Client::builder(TokioExecutor::new()).build({
            let mut c = HttpConnector::new();
            c.set_connect_timeout(Some(timeout));
            c.set_nodelay(true);
            c
        }),
        runtime: tokio::runtime::Handle::current(),
        timeout,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(config.otlp.clone())
        .with_timeout(timeout)
        .with_http_client(client)
        .build()
        .map_err(|e| format!("tracing.otlp: {e}"))?;
    let waiting = Arc::new(AtomicUsize::new(0));
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(config.max_queued_spans)
        .with_max_export_batch_size(config.max_batch_spans)
        .with_scheduled_delay(Duration::from_millis(config.batch_delay_ms))
        .build();
    let processor = BatchSpanProcessor::builder(Counted {
        inner: exporter,
        waiting: waiting.clone(),
        metrics: metrics.clone(),
    })
    .with_batch_config(batch)
    .build();
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(
            config
                .service_name
                .clone()
                .unwrap_or_else(|| service.to_owned()),
        )
        .with_attributes(
            [
                ("k8s.pod.name", "POD_NAME"),
                ("k8s.namespace.name", "POD_NAMESPACE"),
            ]
            .into_iter()
            .filter_map(|(key, env)| {
                std::env::var(env)
                    .ok()
                    .map(|v| opentelemetry::KeyValue::new(key, v))
            }),
        )
        .build();
    Ok(SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sampling,
        ))))
        .with_span_processor(Bounded {
            inner: processor,
            waiting,
            bound: config.max_queued_spans,
            metrics,
        })
        .with_resource(resource)
        .build())
}

/// Admits a finished span to the batch processor only under the bound.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    waiting: Arc<AtomicUsize>,
    bound: usize,
    metrics: TraceMetrics,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.bound {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.metrics.dropped.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what happened to each batch.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    waiting: Arc<AtomicUsize>,
    metrics: TraceMetrics,
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.waiting.fetch_sub(n, Ordering::AcqRel);
        match &result {
            Ok(()) => {
                self.metrics.exported.inc_by(n as u64);
            }
            Err(e) => {
                self.metrics.dropped.inc_by(n as u64);
                tracing::debug!(error = %e, spans = n, "span export failed; spans dropped");
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter's HTTP client: a hyper-util client driven on the proxy's
/// runtime (the batch processor's thread only waits for the result), each
/// request bounded by the export timeout.
#[derive(Debug, Clone)]
struct HyperExport {
    client: Client<HttpConnector, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    timeout: Duration,
}

type HttpResult = Result<http::Response<Bytes>, opentelemetry_http::HttpError>;

impl opentelemetry_http::HttpClient for HyperExport {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: http::Request<Bytes>,
    ) -> Pin<Box<dyn Future<Output = HttpResult> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        let client = self.client.clone();
        let timeout = self.timeout;
        let task = self.runtime.spawn(async move {
            let exchange = async {
                let response = client.request(request.map(Full::new)).await?;
                let (parts, body) = response.into_parts();
                // A collector's answer is small; a huge one is refused.
                let body = http_body_util::Limited::new(body, 1 << 20)
                    .collect()
                    .await?
                    .to_bytes();
                Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(result) => result,
                Err(_) => Err(format!("the collector did not answer within {timeout:?}").into()),
            }
        });
        Box::pin(async move {
            match task.await {
                Ok(result) => result,
                Err(e) => Err(format!("export task failed: {e}").into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};

    fn config(otlp: String) -> TracingConfig {
        serde_json::from_value(serde_json::json!({
            "otlp": otlp,
            "maxQueuedSpans": 4,
            "maxBatchSpans": 2,
            "batchDelayMs": 10_000,
            "exportTimeoutMs": 500,
        }))
        .unwrap()
    }

    /// A collector that is down: spans past the bound are dropped at once
    /// (the request path never waits), the rest when their export fails;
    /// every one is counted, none twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_to_a_down_collector_are_all_counted_as_dropped() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let metrics = TraceMetrics::default();
        let provider = provider(
            &config(format!("http://127.0.0.1:{port}/v1/traces")),
            "test",
            metrics.clone(),
        )
        .unwrap();
        let tracer = provider.tracer("t");
        let started = std::time::Instant::now();
        for _ in 0..10 {
            tracer.start("request").end();
        }
        assert!(started.elapsed() < Duration::from_millis(100));
        assert!(
            metrics.dropped.get() >= 6,
            "over the bound of 4: {}",
            metrics.dropped.get()
        );
        tokio::task::spawn_blocking(move || {
            let _ = provider.shutdown_with_timeout(Duration::from_secs(5));
        })
        .await
        .unwrap();
        assert_eq!(metrics.dropped.get(), 10);
        assert_eq!(metrics.exported.get(), 0);
    }

    #[test]
    fn only_http_collectors_and_ratios_are_accepted() {
        assert!(config("http://c:4318/v1/traces".into()).check().is_ok());
        let e = config("https://c:4318/v1/traces".into())
            .check()
            .unwrap_err();
        assert_eq!(e.0, "otlp");
        let mut c = config("http://c:4318/v1/traces".into());
        c.sampling = 1.5;
        assert_eq!(c.check().unwrap_err().0, "sampling");
        c.sampling = 0.5;
        c.max_batch_spans = 8;
        assert_eq!(c.check().unwrap_err().0, "maxBatchSpans");
    }
}
