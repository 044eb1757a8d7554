//! Reading a certificate back (x509-parser): validity, names, issuer and
//! key type, and the checks `tollgate certs inspect` fails on.

use std::fmt;

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::Error;

/// What a certificate says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<String>,
    pub uris: Vec<String>,
    pub key_type: String,
    pub is_ca: bool,
}

/// Why a certificate cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Expired { not_after: OffsetDateTime },
    NotYetValid { not_before: OffsetDateTime },
    NotSignedByCa { ca: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Expired { not_after } => write!(f, "expired at {not_after}"),
            Problem::NotYetValid { not_before } => write!(f, "not valid before {not_before}"),
            Problem::NotSignedByCa { ca } => {
                write!(f, "does not chain to the given CA ({ca})")
            }
        }
    }
}

impl CertInfo {
    /// The fraction of the validity period that has passed at `now`
    /// (below 0 before it starts, above 1 after it ends).
    pub fn elapsed_fraction(&self, now: OffsetDateTime) -> f64 {
        let total = (self.not_after - self.not_before).as_seconds_f64();
        if total <= 0.0 {
            return 1.0;
        }
        (now - self.not_before).as_seconds_f64() / total
    }

    /// Expired or not yet valid at `now`.
    pub fn validity_problem(&self, now: OffsetDateTime) -> Option<Problem> {
        if now > self.not_after {
            Some(Problem::Expired {
                not_after: self.not_after,
            })
        } else if now < self.not_before {
            Some(Problem::NotYetValid {
                not_before: self.not_before,
            })
        } else {
            None
        }
    }
}

/// Every certificate in a PEM bundle, in order.
pub fn parse_pem_chain(pem: &str) -> Result<Vec<CertificateDer<'static>>, Error> {
    crate::tls::parse_chain(pem, std::path::Path::new("certificate"))
}

/// The first certificate of a PEM bundle.
pub fn inspect_pem(pem: &str) -> Result<CertInfo, Error> {
    let chain = parse_pem_chain(pem)?;
    inspect_der(&chain[0])
}

/// One DER certificate.
pub fn inspect_der(der: &CertificateDer<'_>) -> Result<CertInfo, Error> {
    let cert = parse(der)?;
    let mut info = CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string(),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
        uris: Vec::new(),
        key_type: key_type(&cert),
        is_ca: cert.is_ca(),
    };
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => info.dns_names.push((*d).to_owned()),
                GeneralName::URI(u) => info.uris.push((*u).to_owned()),
                GeneralName::IPAddress(bytes) => info.ip_addresses.push(ip_string(bytes)),
                _ => {}
            }
        }
    }
    Ok(info)
}

/// Whether `leaf` is signed by one of the CAs in `ca_pem`; `Ok(None)` when
/// it is, the problem otherwise.
pub fn check_signed_by(leaf: &CertificateDer<'_>, ca_pem: &str) -> Result<Option<Problem>, Error> {
    let leaf = parse(leaf)?;
    let cas = parse_pem_chain(ca_pem)?;
    let mut names = Vec::new();
    for ca_der in &cas {
        let ca = parse(ca_der)?;
        if ca.subject() == leaf.issuer() && leaf.verify_signature(Some(ca.public_key())).is_ok() {
            return Ok(None);
        }
        names.push(ca.subject().to_string());
    }
    Ok(Some(Problem::NotSignedByCa {
        ca: names.join("; "),
    }))
}

/// Everything wrong with the first certificate of `pem` at `now`, checked
/// against `ca_pem` when given.
pub fn problems(
    pem: &str,
    ca_pem: Option<&str>,
    now: OffsetDateTime,
) -> Result<Vec<Problem>, Error> {
    let chain = parse_pem_chain(pem)?;
    let info = inspect_der(&chain[0])?;
    let mut found: Vec<Problem> = info.validity_problem(now).into_iter().collect();
    if let Some(ca_pem) = ca_pem {
        found.extend(check_signed_by(&chain[0], ca_pem)?);
    }
    Ok(found)
}

fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, Error> {
    X509Certificate::from_der(der.as_ref())
        .map(|(_, cert)| cert)
        .map_err(|e| Error::Parse(e.to_string()))
}

fn key_type(cert: &X509Certificate<'_>) -> String {
    match cert.public_key().parsed() {
        Ok(PublicKey::EC(point)) => {
            let curve = cert
                .public_key()
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| match oid.to_id_string().as_str() {
                    "1.2.840.10045.3.1.7" => "P-256".to_owned(),
                    "1.3.132.0.34" => "P-384".to_owned(),
                    "1.3.132.0.35" => "P-521".to_owned(),
                    other => other.to_owned(),
                })
                .unwrap_or_else(|| format!("{} bits", point.key_size()));
            format!("ECDSA {curve}")
        }
        Ok(PublicKey::RSA(rsa)) => format!("RSA {} bits", rsa.key_size()),
        Ok(PublicKey::DSA(_)) => "DSA".to_owned(),
        Ok(PublicKey::GostR3410(_) | PublicKey::GostR3410_2012(_)) => "GOST".to_owned(),
        Ok(PublicKey::Unknown(_)) | Err(_) => {
            let oid = cert.public_key().algorithm.algorithm.to_id_string();
            match oid.as_str() {
                "1.3.101.112" => "Ed25519".to_owned(),
                other => other.to_owned(),
            }
        }
    }
}

fn ip_string(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => {
            let octets: [u8; 4] = bytes.try_into().unwrap_or_default();
            std::net::IpAddr::from(octets).to_string()
        }
        16 => {
            let octets: [u8; 16] = bytes.try_into().unwrap_or_default();
            std::net::IpAddr::from(octets).to_string()
        }
        _ => format!("{bytes:02x?}"),
    }
}

#[cfg(test)]
mod tests {
    use time::Duration;

    use super::*;
    use crate::issue::{Ca, LeafSpec};

    #[test]
    fn reads_names_validity_and_key_type() {
        let ca = Ca::generate("test CA").unwrap();
        let spec = LeafSpec::server(&["a.example".into()], &["10.0.0.1".parse().unwrap()]);
        let leaf = ca.issue(&spec).unwrap();
        let info = inspect_pem(&leaf.cert_pem).unwrap();
        assert_eq!(info.dns_names, vec!["a.example"]);
        assert_eq!(info.ip_addresses, vec!["10.0.0.1"]);
        assert!(info.subject.contains("CN=a.example"), "{}", info.subject);
        assert!(info.issuer.contains("CN=test CA"), "{}", info.issuer);
        assert_eq!(info.key_type, "ECDSA P-256");
        assert!(!info.is_ca);
        assert!(inspect_pem(ca.cert_pem()).unwrap().is_ca);
        let days = (info.not_after - info.not_before).whole_days();
        assert_eq!(days, 365, "a year and the five-minute back-dating");
    }

    #[test]
    fn detects_expired_not_yet_valid_and_wrong_ca() {
        let ca = Ca::generate("test CA").unwrap();
        let other = Ca::generate("other CA").unwrap();
        let leaf = ca
            .issue(&LeafSpec::server(&["x".into()], &[]).with_lifetime(Duration::hours(1)))
            .unwrap();
        let now = OffsetDateTime::now_utc();
        assert_eq!(
            problems(&leaf.cert_pem, Some(ca.cert_pem()), now).unwrap(),
            vec![]
        );
        let later = now + Duration::hours(2);
        assert!(matches!(
            problems(&leaf.cert_pem, None, later).unwrap()[..],
            [Problem::Expired { .. }]
        ));
        let earlier = now - Duration::hours(1);
        assert!(matches!(
            problems(&leaf.cert_pem, None, earlier).unwrap()[..],
            [Problem::NotYetValid { .. }]
        ));
        let wrong = problems(&leaf.cert_pem, Some(other.cert_pem()), now).unwrap();
        assert!(matches!(&wrong[..], [Problem::NotSignedByCa { ca }] if ca.contains("other CA")));
        // A bundle of old and new CAs accepts leaves of either.
        let bundle = format!("{}{}", other.cert_pem(), ca.cert_pem());
        assert_eq!(
            problems(&leaf.cert_pem, Some(&bundle), now).unwrap(),
            vec![]
        );
    }

    #[test]
    fn elapsed_fraction_tracks_the_lifetime() {
        let ca = Ca::generate("test CA").unwrap();
        let leaf = ca
            .issue(&LeafSpec::server(&["x".into()], &[]).with_lifetime(Duration::hours(3)))
            .unwrap();
        let info = inspect_pem(&leaf.cert_pem).unwrap();
        let at = info.not_before + (info.not_after - info.not_before) * 2 / 3;
        assert!((info.elapsed_fraction(at) - 2.0 / 3.0).abs() < 0.01);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(inspect_pem("").is_err());
        assert!(
            inspect_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").is_err()
        );
    }
}
