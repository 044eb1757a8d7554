//! Serving TLS with rustls from PEM certificates and keys.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::Error;

/// ALPN protocols both servers offer: h2 first, then HTTP/1.1.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Reads a certificate chain and private key from PEM files and builds a
/// rustls server configuration (ring provider, ALPN h2 + http/1.1).
pub fn server_config_from_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, Error> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })
    };
    identity(&read(cert)?, cert, &read(key)?, key)
}

/// Like [`server_config_from_files`], for PEM already in memory; `label`
/// names the source in errors.
pub fn server_config_from_pem(
    cert_pem: &str,
    key_pem: &str,
    label: &str,
) -> Result<Arc<ServerConfig>, Error> {
    let path = Path::new(label);
    identity(cert_pem, path, key_pem, path)
}

fn identity(
    cert_pem: &str,
    cert: &Path,
    key_pem: &str,
    key: &Path,
) -> Result<Arc<ServerConfig>, Error> {
    let chain = parse_chain(cert_pem, cert)?;
    let key_der =
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| Error::Pem {
            path: key.to_owned(),
            source,
        })?;
    build(chain, key_der).map_err(|source| Error::Identity {
        cert: cert.to_owned(),
        key: key.to_owned(),
        source,
    })
}

fn parse_chain(pem: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| Error::Pem {
            path: path.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(Error::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(chain)
}

fn build(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
