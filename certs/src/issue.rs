//! Issuing a CA and the server certificates it signs.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::Error;

/// Default lifetime of a CA: 10 years.
pub const CA_LIFETIME: Duration = Duration::days(3650);
/// Default lifetime of a leaf: 1 year.
pub const LEAF_LIFETIME: Duration = Duration::days(365);

/// A certificate authority (ECDSA P-256) that can sign leaf certificates.
pub struct Ca {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A signed leaf certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    /// Generates a new self-signed CA named `common_name`.
    pub fn generate(common_name: &str) -> Result<Ca, Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_LIFETIME);
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM: what clients trust (a webhook's `caBundle`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a server certificate for the given DNS names and IP addresses.
    pub fn issue_server(&self, dns_names: &[String], ips: &[IpAddr]) -> Result<Leaf, Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(dns_names.first().map_or("tollgate", String::as_str));
        params.subject_alt_names = dns_names
            .iter()
            .map(|d| Ok(SanType::DnsName(d.clone().try_into()?)))
            .chain(ips.iter().map(|ip| Ok(SanType::IpAddress(*ip))))
            .collect::<Result<_, rcgen::Error>>()?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        validity(&mut params, LEAF_LIFETIME);
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Tollgate");
    dn
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    // Back-date a little so that clocks that lag behind still accept it.
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + lifetime;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issues_a_server_certificate_that_rustls_accepts() {
        let ca = Ca::generate("test CA").unwrap();
        let leaf = ca
            .issue_server(&["localhost".into()], &["127.0.0.1".parse().unwrap()])
            .unwrap();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        crate::tls::server_config_from_pem(&leaf.cert_pem, &leaf.key_pem, "test").unwrap();
    }
}
