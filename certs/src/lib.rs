//! Certificates for Tollgate's two servers, the webhook and the proxy.
//!
//! - [`issue`]: a CA and the leaf certificates it signs (rcgen): serving
//!   certificates with DNS and IP SANs, workload certificates with a SPIFFE
//!   URI SAN.
//! - [`inspect`]: reading certificates back (x509-parser): validity, names,
//!   key type, and whether they chain to a CA.
//! - [`spiffe`]: a peer's SPIFFE ID and allow-list patterns.
//! - [`reload`]: the identity store behind both servers' rustls configs,
//!   replaced atomically for new connections (from files or a Secret).
//! - [`metrics`]: expiry and rotation metrics.
//! - [`tls`]: PEM parsing and one-shot server configurations.

pub mod inspect;
pub mod issue;
pub mod metrics;
pub mod reload;
pub mod spiffe;
pub mod tls;

/// What can go wrong with a certificate, named by cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("reading {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid PEM: {source}")]
    Pem {
        path: std::path::PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{path}: contains no certificate")]
    NoCertificate { path: std::path::PathBuf },
    #[error("not a valid X.509 certificate: {0}")]
    Parse(String),
    #[error("certificate {cert} and key {key} do not form a usable TLS identity: {source}")]
    Identity {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
        source: rustls::Error,
    },
    #[error("building the TLS configuration: {0}")]
    Config(rustls::Error),
}
