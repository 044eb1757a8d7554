//! The proxy's lifecycle: admin server first (so probes answer), then the
//! workload certificate (waited for, then watched for rotation), then the
//! inbound and outbound listeners; on SIGTERM, SIGINT or `POST /shutdown`,
//! the drain (see [`crate::drain`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tollgate_certs::reload::{Files, IdentityStore, watch_files};

use crate::admin::{self, Admin, Health};
use crate::config::Config;
use crate::drain::{Shutdown, Tracker};
use crate::forward::Forward;
use crate::jwt::{JwtLayer, Verifier};
use crate::listener::{self, http_builder};
use crate::metrics::{Direction, Metrics};
use crate::ratelimit::{RateLimitLayer, RateLimits};
use crate::route::RouteTable;
use crate::stack::{self, Policies};

/// The `cert` label of the workload certificate's metrics.
const CERT_LABEL: &str = "workload";

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the {what} listener on {addr}"))
}

/// Runs the proxy until it is told to stop and has drained.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::new(shutdown.clone()));

    let admin_addr = SocketAddr::new(config.listeners.admin.address, config.listeners.admin.port);
    let admin_listener = bind(admin_addr, "admin").await?;
    tokio::spawn(admin::serve(
        admin_listener,
        Arc::new(Admin {
            health: health.clone(),
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            log_probes: config.access_log.health_probes,
        }),
    ));
    spawn_signal_handler(shutdown.clone())?;

    let files = Files::in_dir(&config.certs.dir);
    let interval = Duration::from_millis(config.certs.reload_interval_ms);
    let Some(store) = load_certificates(&files, &metrics, interval, &shutdown).await else {
        return Ok(());
    };
    health.done("certificates");
    tokio::spawn(watch_files(store.clone(), files, interval));

    let tunnels = Tracker::new();
    let handshake_timeout = Duration::from_millis(config.limits.tls_handshake_timeout_ms);
    let first_request_timeout = Duration::from_millis(config.limits.header_read_timeout_ms);
    let inbound = &config.listeners.inbound;
    let inbound_addr = SocketAddr::new(inbound.address, inbound.port);
    let tls = store
        .server_config(inbound.client_auth.into())
        .context("building the inbound TLS configuration")?;
    let inbound_listener = bind(inbound_addr, "inbound").await?;
    let tracing = start_tracing(&config, &metrics)?;
    let traced = tracing.as_ref().map(crate::trace::Tracing::new);
    let forward =
        Forward::to_app(&config, metrics.inbound.clone(), tunnels.clone()).traced(traced.clone());
    let routes = config.route_table()?;
    let inbound_stack = stack::build(
        &config,
        Direction::Inbound,
        metrics.inbound.clone(),
        routes.clone(),
        inbound_policies(&config, &routes, &metrics, &health, &store)?,
        forward,
        traced.clone(),
    );
    let mut served = vec![tokio::spawn(listener::serve(
        inbound_listener,
        Some(TlsAcceptor::from(tls)),
        handshake_timeout,
        first_request_timeout,
        inbound_stack,
        http_builder(&config),
        metrics.inbound.clone(),
        shutdown.clone(),
    ))];

    let outbound_addr = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), config.listeners.outbound.port);
    if config.listeners.outbound.enabled {
        let outbound_listener = bind(outbound_addr, "outbound").await?;
        let forward =
            Forward::to_upstreams(&config, &store, metrics.outbound.clone(), tunnels.clone())?
                .traced(traced.clone());
        let outbound_stack = stack::build(
            &config,
            Direction::Outbound,
            metrics.outbound.clone(),
            RouteTable::default(),
            Policies::none(),
            forward,
            traced.clone(),
        );
        served.push(tokio::spawn(listener::serve(
            outbound_listener,
            None,
            handshake_timeout,
            first_request_timeout,
            outbound_stack,
            http_builder(&config),
            metrics.outbound.clone(),
            shutdown.clone(),
        )));
    }
    health.done("listeners");
    let env = |name: &str| std::env::var(name).ok();
    tracing::info!(
        inbound = %inbound_addr,
        client_auth = ?inbound.client_auth,
        outbound = %if config.listeners.outbound.enabled { outbound_addr.to_string() } else { "off".into() },
        admin = %admin_addr,
        app = %format!("{}:{} ({:?})", config.app.address, config.app.port, config.app.protocol),
        identity = %store.current().leaf.subject,
        pod = env("POD_NAME"),
        namespace = env("POD_NAMESPACE"),
        service_account = env("SERVICE_ACCOUNT"),
        profile = config.profile.as_deref(),
        tracing = config.tracing.as_ref().map(|t| format!("{} (sampling {})", t.otlp, t.sampling)),
        "tollgate-proxy serving"
    );

    shutdown.triggered().await;
    let grace = config.drain_timeout();
    tracing::info!(
        ?grace,
        "draining: not accepting; letting requests and streams in flight finish"
    );
    let drained = async {
        for task in served {
            let _ = task.await;
        }
        tunnels.idle().await;
    };
    match tokio::time::timeout(grace, drained).await {
        Ok(()) => tracing::info!("drained; exiting"),
        Err(_) => tracing::warn!(
            upgraded = tunnels.active(),
            "drain timeout passed; closing the connections left"
        ),
    }
    if let Some(provider) = tracing {
        // Sends what is queued, within the export timeout; off the runtime
        // (the batch processor's thread exports on it meanwhile).
        let flushed = tokio::task::spawn_blocking(move || {
            provider.shutdown_with_timeout(Duration::from_secs(5))
        })
        .await;
        if let Ok(Err(e)) = flushed {
            tracing::warn!(error = %e, "flushing spans at exit failed");
        }
    }
    Ok(())
}

/// The tracer provider, exporting, when `tracing:` is configured.
fn start_tracing(
    config: &Config,
    metrics: &Metrics,
) -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    let Some(settings) = &config.tracing else {
        return Ok(None);
    };
    tollgate_otel::provider(settings, "tollgate-proxy", metrics.trace.clone())
        .map(Some)
        .map_err(anyhow::Error::msg)
}

/// The inbound listener's policy layers (JWT, rate limits, filters), with
/// their background work started: JWKS refreshes, rate-limit purges,
/// filter reloads. Readiness waits for the first JWKS fetch and the first
/// filter load.
fn inbound_policies(
    config: &Config,
    routes: &RouteTable,
    metrics: &Metrics,
    health: &Arc<Health>,
    store: &Arc<IdentityStore>,
) -> anyhow::Result<Policies> {
    let mut policies = Policies::none();
    if let Some(jwt) = config.jwt.as_ref().filter(|j| !j.providers.is_empty()) {
        let verifier = Verifier::new(jwt)
            .map_err(anyhow::Error::msg)?
            .with_cache_hits(metrics.jwt.cache_hits.clone());
        let verifier = Arc::new(verifier);
        let key_sets = verifier.jwks();
        if !key_sets.is_empty() {
            health.wait_for("JWKS");
            for set in &key_sets {
                tokio::spawn(set.clone().keep_fresh());
            }
            let health = health.clone();
            tokio::spawn(async move {
                while !key_sets.iter().all(|s| s.is_loaded()) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                health.done("JWKS");
            });
        }
        policies.jwt =
            JwtLayer::new(jwt, verifier, metrics.jwt.clone()).map_err(anyhow::Error::msg)?;
    }
    if routes.routes().iter().any(|r| r.rate_limit.is_some()) {
        let settings = config.rate_limit.clone().unwrap_or_default();
        let limits = RateLimits::new(&settings, routes, metrics.rate_limit.clone())
            .map_err(anyhow::Error::msg)?;
        tokio::spawn(limits.clone().purge_idle());
        if limits.shared_status().is_some() {
            let limits = limits.clone();
            health.add_detail(Arc::new(move || limits.shared_status()));
        }
        policies.rate_limit = RateLimitLayer::new(limits);
    }
    policies.authz = crate::authz::AuthzLayer::new(routes, &metrics.authz);
    policies.filters = crate::filters::layer_for(config.filters.as_ref(), Some(store.clone()));
    if let Some(host) = policies.filters.host().cloned() {
        health.wait_for("filters");
        let health = health.clone();
        tokio::spawn(async move {
            while !host.status().loaded {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            health.done("filters");
        });
    }
    Ok(policies)
}

/// Reads the mounted certificate, retrying until it loads (readiness says
/// what it waits for meanwhile). `None`: shut down before it did.
async fn load_certificates(
    files: &Files,
    metrics: &Metrics,
    interval: Duration,
    shutdown: &Shutdown,
) -> Option<Arc<IdentityStore>> {
    let mut last_error = String::new();
    loop {
        let loaded = files
            .read()
            .and_then(|m| IdentityStore::with_metrics(&m, CERT_LABEL, metrics.certs.clone()));
        match loaded {
            Ok(store) => return Some(store),
            Err(e) => {
                let e = e.to_string();
                if e != last_error {
                    tracing::warn!(error = %e, "workload certificate not loadable yet; retrying");
                    last_error = e;
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = shutdown.triggered() => return None,
        }
    }
}

fn spawn_signal_handler(shutdown: Shutdown) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        shutdown.trigger();
    });
    Ok(())
}
