//! Certificates for Tollgate's two servers.
//!
//! - [`issue`]: a CA and the leaf certificates it signs (rcgen).
//! - [`tls`]: turning PEM files into a rustls server configuration.
//!
//! Inspection, rotation and the hot-reloading resolver arrive with the
//! certificates issue; both the webhook and the proxy will use them from here.

pub mod issue;
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
    #[error("certificate {cert} and key {key} do not form a usable TLS identity: {source}")]
    Identity {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
        source: rustls::Error,
    },
}
