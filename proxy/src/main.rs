//! `tollgate-proxy`: the sidecar. See `docs/proxy.md`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tollgate_proxy::config::{Config, DEFAULT_CONFIG_PATH, LogFormat};

#[derive(Parser)]
#[command(
    name = "tollgate-proxy",
    version,
    about = "Tollgate's sidecar proxy: mTLS, identities, HTTP/1.1, h2, gRPC and WebSocket forwarding"
)]
struct Cli {
    /// The YAML configuration (see proxy/config/example.yaml). Default:
    /// /etc/tollgate-proxy/config/proxy.yaml when it exists, else the
    /// built-in defaults.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The directory holding tls.crt, tls.key and ca.crt, overriding the
    /// config's certs.dir (default /etc/tollgate-proxy/certs).
    #[arg(long)]
    certs: Option<PathBuf>,
    /// Check the configuration (and the environment overrides) and exit.
    /// WASM filters are loaded, instantiated and configured as at start.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match load(&cli) {
        Ok(config) => config,
        Err(e) => return fail(&e),
    };
    if cli.check {
        let file = config_file(&cli)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(defaults)".into());
        if let Err(e) = config.check_filters(&file) {
            return fail(&e.into());
        }
        println!("tollgate-proxy: configuration OK");
        return ExitCode::SUCCESS;
    }
    init_logging(config.log.format);
    let workers = config.runtime.worker_threads();
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&anyhow::Error::new(e).context("starting the async runtime")),
    };
    tracing::info!(
        workers,
        flavor = if workers == 1 {
            "current-thread"
        } else {
            "multi-thread"
        },
        "async runtime started"
    );
    match runtime.block_on(tollgate_proxy::run::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// The configuration file `load` reads, if any.
fn config_file(cli: &Cli) -> Option<PathBuf> {
    match &cli.config {
        Some(path) => Some(path.clone()),
        None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
    }
}

fn load(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => {
            let default = Path::new(DEFAULT_CONFIG_PATH);
            if default.exists() {
                Config::load(default)?
            } else {
                Config::default()
            }
        }
    };
    config
        .apply_env(|name| std::env::var(name).ok())
        .context("applying the sidecar environment")?;
    if let Some(certs) = &cli.certs {
        config.certs.dir = certs.clone();
    }
    Ok(config)
}

fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("tollgate-proxy: {error:#}");
    ExitCode::FAILURE
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Pretty => builder.compact().init(),
    }
}
