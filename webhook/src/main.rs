//! `tollgate`: the admission webhook server and the policy authors' CLI.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tollgate_webhook::config::LogFormat;
use tollgate_webhook::serve::{self, Options};

/// See the `mimalloc` feature in Cargo.toml.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "tollgate",
    version,
    about = "Tollgate admission webhook and policy tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the admission webhook over HTTPS.
    Serve {
        /// The YAML configuration (see webhook/config/example.yaml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Development mode: generate a throwaway CA and serving certificate
        /// when the config names none, log for humans, and print sample
        /// requests to paste.
        #[arg(long)]
        dev: bool,
        /// Listen address, overriding the config's `listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Run the test_* rules of Rego files, as `opa test` does.
    Test(tollgate_webhook::cli::test::Args),
    /// Run Gatekeeper Suite files (ConstraintTemplates, constraints and cases), as `gator verify` does.
    Verify(tollgate_webhook::cli::verify::Args),
    /// Review manifests offline, as the webhook would admit them (exit 1 on any denial).
    Review(tollgate_webhook::cli::review::Args),
    /// Audit what existing objects violate (the cluster, or manifests), grouped by policy and team (exit 1 when a deny policy has violations).
    Audit(tollgate_webhook::cli::audit::Args),
    /// Inspect a certificate (file or Secret), or issue one for local testing.
    Certs(tollgate_webhook::cli::certs::Args),
}

fn main() -> ExitCode {
    tollgate_webhook::policy::quiet_library_backtraces();
    let cli = Cli::parse();
    match cli.command {
        Command::Test(args) => ExitCode::from(tollgate_webhook::cli::test::run(args)),
        Command::Verify(args) => ExitCode::from(tollgate_webhook::cli::verify::run(args)),
        Command::Review(args) => ExitCode::from(tollgate_webhook::cli::review::run(args)),
        Command::Audit(args) => ExitCode::from(tollgate_webhook::cli::audit::run(args)),
        Command::Certs(args) => ExitCode::from(tollgate_webhook::cli::certs::run(args)),
        Command::Serve {
            config,
            dev,
            listen,
        } => {
            let options = Options {
                config,
                dev,
                listen,
            };
            let config = match serve::load_config(&options) {
                Ok(config) => config,
                Err(e) => return fail(&e),
            };
            init_logging(config.log.format);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fail(&e.into()),
            };
            match runtime.block_on(serve::run(options, config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(&e),
            }
        }
    }
}

fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("tollgate: {error:#}");
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
