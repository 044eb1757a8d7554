//! PEM chains, and one-shot rustls server configurations from PEM.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::Error;
use crate::reload::{ClientAuth, Files, IdentityStore, Material};

/// ALPN protocols both servers offer: h2 first, then HTTP/1.1.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Reads a certificate chain and private key from PEM files and builds a
/// rustls server configuration (ring provider, ALPN h2 + http/1.1).
pub fn server_config_from_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, Error> {
    let files = Files {
        cert: cert.to_owned(),
        key: key.to_owned(),
        ca: None,
    };
    let label = cert.display().to_string();
    IdentityStore::new(&files.read()?, &label)?.server_config(ClientAuth::Off)
}

/// Like [`server_config_from_files`], for PEM already in memory; `label`
/// names the source in errors.
pub fn server_config_from_pem(
    cert_pem: &str,
    key_pem: &str,
    label: &str,
) -> Result<Arc<ServerConfig>, Error> {
    let material = Material {
        cert_pem: cert_pem.to_owned(),
        key_pem: key_pem.to_owned(),
        ca_pem: None,
    };
    IdentityStore::new(&material, label)?.server_config(ClientAuth::Off)
}

/// Every certificate in `pem`; an error naming `path` when it has none.
pub(crate) fn parse_chain(pem: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
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

/// Each certificate of a PEM bundle as a PEM block of its own, in order.
pub fn split_bundle(pem: &str) -> Result<Vec<String>, Error> {
    Ok(parse_chain(pem, Path::new("certificate bundle"))?
        .iter()
        .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.as_ref().to_vec())))
        .collect())
}
